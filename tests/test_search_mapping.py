"""The search under a mapping (docs/DESIGN.md section 5c): test tiles of rows with their own
scales, the objective's per-row gain against its per-candidate reference and the converter path,
the searched clip, and a choice whose baseline is what users deploy."""

from __future__ import annotations

import math

import pytest
import torch

import gpuwpo
from gpuwpo.device.mapping import Recipe, row_scales
from gpuwpo.device.simulate import DeviceNoise, converter_errors, sample_device_noise
from gpuwpo.io import load_result, save_result
from gpuwpo.search.objective import TNMSEObjective
from gpuwpo.search.options import SearchOptions
from gpuwpo.search.reference import reference_tnmse
from gpuwpo.search.tiles import TestTile

T_STEPS = (1.0, 86400.0, 365 * 86400.0)
OUT, IN = 8, 32  # a small test tile: N = 256


pytestmark = pytest.mark.usefixtures("one_thread_module")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _scaled_rows(shape=(48, 80), seed=0) -> torch.Tensor:
    """Heavy-tailed rows of scales spread over 1.5 decades, as trained layers' output rows."""
    w = gpuwpo.student_t_weights(shape, generator=_gen(seed))
    return w * torch.logspace(-1.5, 0, shape[0]).reshape(-1, *([1] * (len(shape) - 1)))


def _dual() -> gpuwpo.DualPairConductanceConverter:
    return gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0)


# ------------------------------------------------------------------------------------------
# Test tiles of rows
# ------------------------------------------------------------------------------------------


def test_tiles_by_rows_keep_each_rows_scale_and_the_layers_max():
    w = _scaled_rows()
    tiles = TestTile.from_layers([w], 11, shape=(OUT, IN), mapping="columnwise", seed=3)
    assert tiles.rows and tiles.mapping == "columnwise"
    tile = tiles.tile(0)
    layer_max = w.abs().amax(1).sort().values
    # Rows at the midpoints of OUT equal strata of the layer's row maxima, the top one the row
    # of the layer's max|W|: each tile row keeps its layer row's extremes, so its scale.
    ranks = [int((i + 0.5) * 48 / OUT) for i in range(OUT - 1)] + [47]
    torch.testing.assert_close(tile.abs().amax(1), layer_max[ranks], rtol=0, atol=0)
    assert float(tiles.max_abs_weight[0]) == float(w.abs().max())
    torch.testing.assert_close(tiles.row_scales[0], row_scales(tile, "columnwise"), rtol=0,
                               atol=0)
    # The tile weights are w / s: every row's largest magnitude is 1, the grid's half-width 1.
    mapped = tiles.tile_weights[0].reshape(OUT, IN)
    assert bool((mapped.abs().amax(1) == 1).all()) and float(tiles.grid_max[0]) == 1.0
    # Negative control: a tile by distribution mixes the rows, and its rows' scales are not
    # the layer's (nearly every one holds a weight of the largest rows).
    by_distribution = TestTile.from_layers([w], 11, shape=(OUT, IN), seed=3)
    assert not by_distribution.rows and by_distribution.row_scales is None
    spread = by_distribution.tile(0).abs().amax(1)
    assert float(spread.min()) > 4 * float(tile.abs().amax(1).min())


def test_tiles_by_rows_are_deterministic_and_a_conv_weight_is_its_matrix():
    conv = _scaled_rows((24, 3, 3, 3), seed=1)
    a = TestTile.from_layers({"conv": conv}, 11, shape=(OUT, IN), mapping="columnwise", seed=5)
    b = TestTile.from_layers({"conv": conv}, 11, shape=(OUT, IN), mapping="columnwise", seed=5)
    c = TestTile.from_layers({"conv": conv}, 11, shape=(OUT, IN), mapping="columnwise", seed=6)
    assert torch.equal(a.weights, b.weights)
    # Another seed shuffles the rows' values otherwise, but picks the same rows.
    assert not torch.equal(a.weights, c.weights)
    assert torch.equal(a.row_scales, c.row_scales)
    # A Conv weight [out, in, k, k] is the crossbar's [out, in * k * k]: its rows are filters.
    filters = conv.reshape(24, -1).abs().amax(1).sort().values
    assert set(a.row_scales.flatten().tolist()) <= set(filters.tolist())
    # Whole, the tile of a conv weight is its matrix.
    whole = TestTile.from_layers([conv], 11, shape=None, mapping="columnwise")
    assert whole.shape == (24, 27)


def test_tiles_travel_with_their_rows_and_positions():
    from gpuwpo.network.executors import tiles_on

    layers = [_scaled_rows(seed=s) for s in range(3)]
    tiles = TestTile.from_layers(layers, 11, shape=(OUT, IN), mapping="columnwise", clip=0.7)
    picked = tiles.select([2, 0])
    moved = tiles_on(picked, torch.device("cpu"))
    assert moved.layer_ids == (2, 0) and moved.mapping == "columnwise" and moved.clip == 0.7
    for name in ("weights", "max_abs_weight", "idx", "frac", "row_scales", "tile_weights"):
        assert torch.equal(getattr(moved, name), getattr(picked, name)), name
    # The same rows under the layer-wise mapping: the grid over the layer's max|W|.
    layer = tiles.with_mapping("layer", clip=1.0)
    assert layer.row_scales is None and torch.equal(layer.weights, tiles.weights)
    assert torch.equal(layer.grid_max, tiles.max_abs_weight)
    # Rows cannot be made up afterwards.
    with pytest.raises(ValueError, match="rows"):
        TestTile.from_layers(layers, 11, shape=(OUT, IN)).with_mapping("columnwise")
    with pytest.raises(ValueError, match="rows"):
        TestTile.from_layers(layers, 11, shape=(OUT, IN), mapping="columnwise", rows=False)


# ------------------------------------------------------------------------------------------
# The objective under a mapping
# ------------------------------------------------------------------------------------------


def _objective(mapping="columnwise", *, physics="device", clip=1.0, clip_range=None,
               compensation=None, f_lst=(None, None), layers=None, **kwargs) -> TNMSEObjective:
    space = gpuwpo.StrategySpace(list(f_lst), clip=clip, clip_range=clip_range)
    return TNMSEObjective(
        [_scaled_rows()] if layers is None else layers, gpuwpo.PCMLikeNoiseModel(),
        compensation, T_STEPS, space, test_in_features=IN, test_out_features=OUT, kernel="torch",
        physics=physics, mapping=mapping, tile_rows=True, **kwargs)


def _programs(obj: TNMSEObjective, x: torch.Tensor):
    """(f, g_lst, clip or None) of candidates x [B, P, D], as the objective decodes them."""
    f, g_lst, _, clip = obj.space.decode(x, obj.tiles.tile_max.reshape(-1, 1),
                                         return_clip=True)
    return f, g_lst, clip if obj.space.searches_clip else None


COMPENSATIONS = {
    "global": None,
    "per-column": gpuwpo.PerColumnDriftCompensation(),
    "exact-reference": gpuwpo.GlobalDriftCompensation(exact_reference=True),
}


@pytest.mark.parametrize("clip", ["none", "fixed", "searched"])
@pytest.mark.parametrize("physics", ["device", "aihwkit"])
@pytest.mark.parametrize("mapping", ["columnwise", "layer"])
@pytest.mark.parametrize("compensation", sorted(COMPENSATIONS))
def test_the_batched_objective_is_its_per_candidate_reference(mapping, physics, clip,
                                                              compensation):
    # The reference maps each candidate's tile by hand, as aihwkit deploys it: under the
    # per-column mapping each row clipped at c s_i and scaled to it, then converted, programmed,
    # read, compensated and scaled back; the error against the layer's weights over its M.
    kw = {"none": {}, "fixed": {"clip": 0.6}, "searched": {"clip_range": (0.4, 1.0)}}[clip]
    obj = _objective(mapping, physics=physics, compensation=COMPENSATIONS[compensation], **kw)
    P, T, N = 3, len(T_STEPS), obj.num_test_weights
    x = torch.rand(1, P, obj.dim, generator=_gen(1))
    noise = sample_device_noise((1, P, T, 4, N), generator=_gen(2))
    f, g_lst, c = _programs(obj, x)
    batched = obj.evaluate_programs(f, g_lst, noise=noise, clip=c)[0]
    ref = torch.tensor([reference_tnmse(obj, 0, x[0, p], noise=DeviceNoise(*(z[0, p] for z in
                                                                             noise)))
                        for p in range(P)], dtype=torch.float32)
    torch.testing.assert_close(batched, ref, rtol=2e-5, atol=0)
    if clip == "searched":  # the objective's own call decodes the same clips
        assert torch.equal(obj(x, 9), obj.evaluate_programs(f, g_lst, 9, clip=c))


def test_per_column_with_rows_at_one_scale_is_the_layerwise_objective_bit_for_bit():
    # Every row's largest magnitude is the layer's (1): the mapping changes nothing, and the two
    # code paths agree to the bit (w / 1 and gain x 1 are exact).
    w = gpuwpo.student_t_weights((16, IN), generator=_gen(4))
    w = w / w.abs().amax(1, keepdim=True)
    x = torch.rand(1, 5, gpuwpo.StrategySpace([None, None]).dim, generator=_gen(5))
    for kw in ({}, {"compensation": gpuwpo.PerColumnDriftCompensation()}):
        per_column = _objective("columnwise", layers=[w], **kw)
        layer = _objective("layer", layers=[w], **kw)
        assert torch.equal(per_column(x, 3), layer(x, 3))
    # Negative control: rows of different scales are not.
    scaled = w * torch.linspace(0.2, 1, 16)[:, None]
    assert not torch.allclose(_objective("columnwise", layers=[scaled])(x, 3),
                              _objective("layer", layers=[scaled])(x, 3), rtol=0.05)


@pytest.mark.parametrize("crn", [True, False])
def test_chunks_change_nothing_under_a_mapping_and_a_searched_clip(crn):
    layers = [_scaled_rows(seed=s) for s in range(2)]
    whole = _objective(layers=layers, clip_range=(0.4, 1.0), common_random_numbers=crn)
    parts = _objective(layers=layers, clip_range=(0.4, 1.0), common_random_numbers=crn,
                       memory_budget=3 * 4 * 12 * OUT * IN * 4)  # a few candidates at a time
    x = torch.rand(2, 19, whole.dim, generator=_gen(6))
    assert torch.equal(whole(x, 8), parts(x, 8))
    # ... and a layer alone gets what it gets beside the other.
    assert torch.equal(whole.select_layers([1])(x[[1]], 8), whole(x, 8)[[1]])


@pytest.mark.parametrize("physics", ["device", "aihwkit"])
def test_the_objective_measures_what_the_converter_path_measures(physics):
    """A candidate's TNMSE in the hot path and its recipe's on the converter path agree in
    distribution (different draws), with a searched clip and the reference's readout periphery
    (whose noise is absolute: the tile's units matter)."""
    comp = gpuwpo.GlobalDriftCompensation.aihwkit_default()
    obj = _objective(physics=physics, clip_range=(0.4, 1.0), compensation=comp)
    x = obj.space.encode_npair([1.0, 3.0], 1.0, clip=0.6).float()
    repeats = 48
    mean, sem = obj.validate(x.reshape(1, -1), repeats=repeats, generator=11)
    conv = obj.space.to_converter(x, 1.0)
    assert conv.clip == pytest.approx(0.6)

    def path(recipe):
        e = converter_errors(obj.tiles.tile(0), recipe, obj.noise_model, obj.t_steps,
                             compensation=comp, physics=physics, repeats=repeats, generator=12)
        e = e.double().mean(-1)
        return float(e.mean()), float(e.std() / math.sqrt(repeats))

    p_mean, p_sem = path(Recipe(conv, "columnwise"))
    assert abs(float(mean[0]) - p_mean) < 4.5 * math.hypot(float(sem[0]), p_sem)
    # Negative control: the same program layer-wise is another figure altogether.
    l_mean, l_sem = path(Recipe(conv, "layer"))
    assert abs(float(mean[0]) - l_mean) > 10 * math.hypot(float(sem[0]), l_sem)


def test_the_objective_checks_its_tiles_mapping():
    tiles = TestTile.from_layers([_scaled_rows()], 11, shape=(OUT, IN), mapping="columnwise")
    space = gpuwpo.StrategySpace([None, None])
    with pytest.raises(ValueError, match="mapping"):
        TNMSEObjective(tiles, gpuwpo.PCMLikeNoiseModel(), None, T_STEPS, space)
    with pytest.raises(ValueError, match="mapping must be one of"):
        _objective("rows")
    obj = TNMSEObjective(tiles, gpuwpo.PCMLikeNoiseModel(), None, T_STEPS, space,
                         mapping="columnwise")
    assert obj.mapping == "columnwise" and "mapping='columnwise'" in repr(obj)


# ------------------------------------------------------------------------------------------
# Options and the optimizer
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(mapping="per-row"), "mapping must be one of"),
    (dict(baseline_mapping="rows"), "baseline_mapping must be one of"),
    (dict(clip_range=(0.9, 0.5)), "clip_range"),
    (dict(clip_range=(0.0, 1.0)), "clip_range"),
    (dict(clip_range=(0.5, 1.0), clip=0.5), "not both"),
])
def test_bad_mapping_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SearchOptions(**kwargs)


def test_the_defaults_are_what_users_deploy():
    o = SearchOptions()
    assert (o.mapping, o.baseline_mapping, o.clip_range) == ("columnwise", "columnwise", None)
    assert SearchOptions(clip_range=[0.5, 1]).clip_range == (0.5, 1.0)


SMALL = dict(test_in_features=64, test_out_features=16, baseline_iterations=8,
             validation_repeats=12, popsize=2, maxiter=2, polish=False, disp=False,
             device="cpu")


def _run(weights, f_lst=(None, None), baseline=None, **kwargs):
    opt = gpuwpo.WeightProgrammingOptimizer(
        weights, list(f_lst), gpuwpo.PCMLikeNoiseModel(), T_STEPS,
        _dual() if baseline is None else baseline, **{**SMALL, **kwargs})
    opt.run_optimizer()
    return opt


def test_the_default_run_compares_with_the_per_column_baseline_and_reports_the_layerwise_gain():
    opt = _run([_scaled_rows(seed=s) for s in range(2)])
    r = opt.result
    assert opt.objective.tiles.rows
    assert opt.baseline.mapping == "columnwise" and r.baseline.mapping == "columnwise"
    assert "against DualPair f=[1, 1], per-column mapping" in r.summary()
    assert "vs layer" in r.summary()
    # The loss's baseline is the per-column one, on the same tiles.
    base, _ = opt.get_loss_baseline()
    per_column, _ = opt.objective.evaluate_converter(Recipe(_dual(), "columnwise"), 8,
                                                     gpuwpo.rng.stream_seed(100, "baseline"))
    layer_wise, _ = opt.objective.evaluate_converter(_dual(), 8,
                                                     gpuwpo.rng.stream_seed(100, "baseline"))
    assert torch.equal(base, per_column) and bool((layer_wise > 2 * base).all())
    # The layer-wise baseline on the answer's noise: far worse, so a far larger gain.
    assert bool((r.layerwise_baseline_tnmse > 2 * r.baseline_tnmse).all())
    assert bool((r.layerwise_improvement > r.improvement).all())
    lo, hi = r.layerwise_baseline_ci95.unbind(-1)
    assert bool(((lo < r.layerwise_baseline_tnmse) & (r.layerwise_baseline_tnmse < hi)).all())
    # One recipe per layer, its converter the converter, its mapping the mapping.
    assert [rc.converter for rc in r.recipes] == r.converters
    assert r.mappings == [rc.mapping for rc in r.recipes]
    for b, c in enumerate(r.choices):
        if c.kept_baseline:
            assert r.recipes[b] is opt.baseline


def test_a_layerwise_run_is_the_reference_optimisers():
    # Both mappings layer-wise: tiles by distribution, no other contenders, no references;
    # the layer-wise figures are the baseline's own.
    opt = _run(_scaled_rows(), mapping="layer", baseline_mapping="layer")
    r = opt.result
    assert not opt.objective.tiles.rows and opt.contender_mappings == ("layer",)
    assert r.mappings == ["layer"] and r.choices[0].references == {}
    assert not any(label.endswith((", layer", ", columnwise")) for label in r.choices[0].figures)
    assert torch.equal(r.layerwise_baseline_tnmse, r.baseline_tnmse)
    assert "against DualPair f=[1, 1], layer-wise mapping" in r.summary()
    assert "vs layer" not in r.summary()


def test_against_a_layerwise_baseline_the_per_column_mapping_wins_big():
    # What gpuwpo compared with before it modelled the mapping: DualPair layer-wise. The
    # per-column converters compete (the baseline converter itself under that mapping too),
    # and on rows of different scales the answer maps per column.
    opt = _run(_scaled_rows(), baseline_mapping="layer")
    r = opt.result
    figures = r.choices[0].figures
    assert "baseline converter, columnwise" in figures
    assert figures["baseline converter, columnwise"][0] < 0.5 * figures["baseline"][0]
    assert r.mappings == ["columnwise"] and float(r.improvement[0]) > 0.5
    assert r.choices[0].references == {}  # the baseline is the layer-wise one
    assert torch.equal(r.layerwise_baseline_tnmse, r.baseline_tnmse)
    if r.chosen[0] == "baseline converter, columnwise":  # no point of the space, no baseline
        assert not bool(torch.isfinite(r.x[0]).any()) and not bool(r.kept_baseline[0])


def _heavy_rows(seed=2) -> torch.Tensor:
    """Rows with one weight far out each: a grid over each row's max wastes its levels."""
    gen = _gen(seed)
    w = gpuwpo.student_t_weights((64, 256), df=3, generator=gen)
    far = torch.randint(0, 256, (64,), generator=gen)
    w[torch.arange(64), far] = 60 * w.std() * torch.sign(torch.randn(64, generator=gen))
    return w


def test_a_searched_clip_wins_where_clipping_pays_and_is_left_where_it_does_not():
    # One pair: its levels are few, and clipping each row's outlier gives the rest more of them.
    single = gpuwpo.SinglePairConductanceConverter(0.0, 25.0)
    clipped = _run(_heavy_rows(), [None], single, clip_range=(0.2, 1.0), maxiter=3,
                   test_in_features=256)
    r = clipped.result
    assert clipped.space.dim == gpuwpo.StrategySpace([None]).dim + 1
    assert r.mappings == ["columnwise"] and r.converters[0].clip < 0.95
    assert float(r.improvement[0]) > 0.15, r.summary()
    # The unclipped standard converters compete beside the clipped search (under both
    # mappings), so a clip is never forced: on Gaussian rows, clipping at 0.2-0.3 of each row's
    # max only loses, and the answer does not clip.
    gauss = torch.randn(64, 256, generator=_gen(3))
    never = _run(gauss, clip_range=(0.2, 0.3), test_in_features=256).result
    labels = set(never.choices[0].figures)
    assert {label for label in labels if label.startswith("start: ") and
            label.endswith((", columnwise", ", layer"))}
    assert getattr(never.converters[0], "clip", 1.0) == 1.0
    assert float(never.improvement[0]) >= 0.0


@pytest.mark.slow
def test_no_answer_is_worse_than_the_per_column_baseline_at_a_tiny_budget():
    """The never-worse rule under the defaults, judged on noise the choice never saw."""
    layers = [_scaled_rows((40, 48), seed=s) for s in range(5)]
    opt = _run(layers, popsize=1, maxiter=1, standard_starts=False, validation_repeats=24)
    r = opt.result
    for b, recipe in enumerate(r.recipes):
        e = converter_errors(opt.objective.tiles.tile(b), [opt.baseline, recipe],
                             opt.noise_model, opt.objective.t_steps, repeats=96,
                             generator=4321, layer_id=b).double().mean(-1)
        d = e[1] - e[0]
        assert float(d.mean() - 3 * d.std() / math.sqrt(96)) <= 0, (b, r.chosen[b])


# ------------------------------------------------------------------------------------------
# Standard converters the grid cannot express
# ------------------------------------------------------------------------------------------


def _optimizer(**options) -> gpuwpo.WeightProgrammingOptimizer:
    return gpuwpo.WeightProgrammingOptimizer(
        _scaled_rows(), [None, None], gpuwpo.PCMLikeNoiseModel(), list(T_STEPS), _dual(),
        test_in_features=IN, test_out_features=OUT, **options)


def test_standard_converters_between_grid_points_compete_as_themselves():
    opt = _optimizer()
    offered = dict(opt.inexact_standard_converters())
    # nbins = 6: the grid's step is 0.2 of max|W|. NPair f=[1, F] changes slope at 1/(1 + F):
    # on the grid for F = 1 (the baseline), 1.5 and 4; between grid points for F = 2, 3, 5.
    assert list(offered) == ["NPair f=[1, 2]", "NPair f=[1, 3]", "NPair f=[1, 5]"]
    w = _scaled_rows(seed=9)[:5].double()
    space = opt.space
    for label, program in offered.items():
        F = float(label.split(", ")[1].rstrip("]"))
        exact = gpuwpo.NPairConductanceConverter([1.0, F], 0.0, 25.0)
        assert isinstance(program, gpuwpo.CustomPairConductanceConverter)
        g_program, p_program = program.convert_to_conductances(w)
        g_exact, p_exact = exact.convert_to_conductances(w)
        torch.testing.assert_close(g_program.to(g_exact), g_exact, rtol=0, atol=1e-9)
        torch.testing.assert_close(program.convert_back_to_weights(g_program, p_program).to(w),
                                   w, rtol=0, atol=1e-6)
        # Negative control: the start of the same name, interpolated on the space's grid, is
        # another program (by several uS between the grid points).
        start = space.to_converter(space.encode_npair([1.0, F]), 1.0, invertibility_test=False)
        g_start, _ = start.convert_to_conductances(w)
        assert float((g_start.to(g_exact) - g_exact).abs().max()) > 1.0
    # None without the standard starts.
    assert _optimizer(standard_starts=False).inexact_standard_converters() == []


def test_the_choice_offers_them_and_a_file_holds_the_one_it_takes(tmp_path):
    opt = _optimizer(popsize=2, maxiter=2, polish=False, validation_repeats=8,
                     baseline_iterations=8)
    opt.run_optimizer()
    r = opt.result
    labels = list(r.choices[0].figures)
    for F in (2, 3, 5):
        assert f"standard: NPair f=[1, {F}], columnwise" in labels
    # A results file holds such an answer (a CustomPair program on its own grid).
    net = gpuwpo.optimize_network({"l.weight": _scaled_rows()}, gpuwpo.PCMLikeNoiseModel(),
                                  list(T_STEPS), _dual(), [None, None], popsize=2, maxiter=2,
                                  polish=False, validation_repeats=16, baseline_iterations=8,
                                  test_in_features=IN, test_out_features=OUT, disp=False)
    # Here (heavy-tailed rows) the exact NPair f=[1, 3] beats the search, its starts and the
    # baseline on fresh noise, by some 15 % of TNMSE.
    (layer,) = net.layers
    assert layer.chosen == "standard: NPair f=[1, 3], columnwise" and layer.improvement > 0.05
    assert layer.converter.g_lst.shape == (4, 9)  # slope changes at +-0.25: a grid of 9
    path = tmp_path / "r.json"
    save_result(net, path)
    assert load_result(path).layers == net.layers
