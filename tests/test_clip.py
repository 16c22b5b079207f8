"""Programs that clip: the grid on clip * max|W| (a gpuwpo extension of the reference's space).

The invariant: a CustomPair program with ``clip`` is the reference's converter applied to the
weights clipped at ``clip * max|W|``; the objective's hot path and the converter path agree on
it; the error is always measured against the unclipped weights; the baseline is never clipped,
so the never-worse choice still holds.
"""

from __future__ import annotations

import math

import pytest
import torch

import gpuwpo
from gpuwpo.device.converters import CustomPairConductanceConverter
from gpuwpo.io import load_result, save_result
from gpuwpo.registry import from_dict, to_dict
from gpuwpo.search.objective import TNMSEObjective
from gpuwpo.search.options import SearchOptions
from gpuwpo.search.strategy import StrategySpace

T_STEPS = (1.0, 86400.0, 31536000.0)


def _heavy(shape=(64, 96), seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = gpuwpo.student_t_weights(shape, df=3, generator=gen)
    w.view(-1)[0] = 40 * w.std()  # one weight far out, as in large trained layers
    return w


def _programs(space: StrategySpace, n: int, seed: int = 1):
    x = torch.rand(n, space.dim, generator=torch.Generator().manual_seed(seed),
                   dtype=torch.float64)
    f, g, _ = space.decode(x, 1.0)
    return f, g


@pytest.mark.parametrize("clip", [1.0, 0.7, 0.3])
def test_a_clipping_program_is_the_reference_converter_on_clipped_weights(clip):
    space = StrategySpace([None, None])
    f, g = _programs(space, 5)
    w = _heavy().double()
    c = clip * w.abs().max()
    clipped = CustomPairConductanceConverter(f, g, clip=clip, invertibility_test=False)
    plain = CustomPairConductanceConverter(f, g, invertibility_test=False)
    cond, params = clipped.convert_to_conductances(w)
    want, want_params = plain.convert_to_conductances(w.clamp(-c, c))
    assert torch.equal(cond, want)
    assert torch.equal(params["scale"], want_params["scale"])
    back = clipped.convert_back_to_weights(cond, params)
    torch.testing.assert_close(back, w.clamp(-c, c).expand_as(back), rtol=1e-9, atol=1e-12)
    if clip < 1:  # the weights beyond the grid come back at its ends
        assert float(back.abs().max()) == pytest.approx(float(c), rel=1e-9)


def test_clip_one_is_the_reference_converter_and_its_record_is_unchanged():
    f, g = _programs(StrategySpace([None, None]), 1)
    a = CustomPairConductanceConverter(f[0], g[0], invertibility_test=False)
    b = CustomPairConductanceConverter(f[0], g[0], invertibility_test=False, clip=1.0)
    w = _heavy()
    assert torch.equal(a.convert_to_conductances(w)[0], b.convert_to_conductances(w)[0])
    assert "clip" not in to_dict(b)  # records of the reference's programs are unchanged
    assert "clip" not in repr(b)


def test_a_clip_is_recorded_and_read_back():
    f, g = _programs(StrategySpace([None, None]), 1)
    conv = CustomPairConductanceConverter(f[0], g[0], invertibility_test=False, clip=0.5)
    again = from_dict(to_dict(conv))
    assert again.clip == 0.5 and "clip=0.5" in repr(again)
    w = _heavy()
    assert torch.equal(conv.convert_to_conductances(w)[0], again.convert_to_conductances(w)[0])


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, float("nan"), float("inf"), True, "0.5"])
def test_a_bad_clip_is_refused_everywhere(bad):
    f, g = _programs(StrategySpace([None, None]), 1)
    with pytest.raises(ValueError, match="clip"):
        CustomPairConductanceConverter(f[0], g[0], clip=bad)
    with pytest.raises(ValueError, match="clip"):
        StrategySpace([None, None], clip=bad)
    with pytest.raises(ValueError, match="clip"):
        SearchOptions(clip=bad)


def test_a_clipping_program_is_not_exported_to_aihwkit_as_if_it_did_not_clip():
    f, g = _programs(StrategySpace([None, None]), 1)
    conv = CustomPairConductanceConverter(f[0], g[0], invertibility_test=False, clip=0.5)
    with pytest.raises(ValueError, match="no clip"):
        conv.to_aihwkit()
    plain = conv.without_clip()
    assert plain.clip == 1.0 and torch.equal(plain.g_lst, conv.g_lst)
    # On weights already clipped at c, the plain program converts them as the clipping one
    # converts the originals.
    w = _heavy()
    c = 0.5 * w.abs().max()
    assert torch.equal(plain.convert_to_conductances(w.clamp(-c, c))[0],
                       conv.convert_to_conductances(w)[0])


def test_the_invertibility_check_tests_the_table_not_the_clip():
    space = StrategySpace([None, None], clip=0.3)
    x = space.standard_starts()[0]
    conv = space.to_converter(x, 1.0)  # would raise if the clip made it "not invertible"
    assert conv.clip == 0.3 and bool(conv.check_invertibility().all())


def test_hot_path_and_converter_path_agree_on_clipping_programs():
    """The objective's batched TNMSE of a clipping program against the same program as a
    converter (the validation's ruler): the same quantity, so equal within their errors; and
    both differ from the unclipped program's (the test has power)."""
    w = _heavy((32, 48))
    noise = gpuwpo.PCMLikeNoiseModel()
    repeats = 200
    means = {}
    for clip in (0.5, 1.0):
        space = StrategySpace([None, None], clip=clip)
        obj = TNMSEObjective([w], noise, None, T_STEPS, space, test_in_features=48,
                             test_out_features=32)
        x = space.standard_starts()[0][3:4]  # one N-pair seed
        hot, hot_sem = obj.validate(x, repeats=repeats, generator=3)
        conv = space.to_converter(x[0], obj.max_abs_weight[0])
        path, path_sem = obj.evaluate_converter(conv, repeats, generator=4)
        se = math.sqrt(float(hot_sem[0]) ** 2 + float(path_sem[0]) ** 2)
        assert abs(float(hot[0] - path[0])) < 4 * se, (clip, hot, path, se)
        means[clip] = (float(hot[0]), se)
    (clipped, se_c), (full, se_f) = means[0.5], means[1.0]
    assert abs(clipped - full) > 8 * math.hypot(se_c, se_f)


def test_physics_aihwkit_searches_a_clip_and_its_hot_path_agrees_with_the_converter_path():
    """physics="aihwkit" takes a clip (the reference's tile holding weights clipped before it,
    see below): the objective's batched figure of a clipping program and the converter path's
    are the same quantity, so equal within their errors."""
    w = _heavy((32, 48))
    space = StrategySpace([None, None], clip=0.5)
    obj = TNMSEObjective([w], gpuwpo.PCMLikeNoiseModel(), None, T_STEPS, space,
                         physics="aihwkit", test_in_features=48, test_out_features=32)
    x = space.standard_starts()[0][3:4]
    hot, hot_sem = obj.validate(x, repeats=100, generator=3)
    conv = space.to_converter(x[0], obj.max_abs_weight[0])
    assert conv.clip == 0.5
    path, path_sem = obj.evaluate_converter(conv, 100, generator=4)
    se = math.sqrt(float(hot_sem[0]) ** 2 + float(path_sem[0]) ** 2)
    assert abs(float(hot[0] - path[0])) < 4 * se, (hot, path, se)


@pytest.mark.parametrize("comp", [None, gpuwpo.PerColumnDriftCompensation(),
                                  gpuwpo.GlobalDriftCompensation.aihwkit_default(),
                                  gpuwpo.GlobalDriftCompensation(exact_reference=True)],
                         ids=["global", "column", "default-periphery", "exact"])
def test_a_clip_in_physics_aihwkit_is_the_tile_holding_clipped_weights(comp, monkeypatch):
    """The converter path's clipping program in the reference's physics is, draw for draw, the
    reference's tile holding the weights clipped at clip * max|W| and programmed with the
    program without its clip: the programmed weights are converted again without the clip
    (which a clipping converter would apply again: the negative control)."""
    w = _heavy((24, 40))
    f, g = _programs(StrategySpace([None, None]), 1)
    conv = CustomPairConductanceConverter(f[0], g[0], invertibility_test=False, clip=0.5)
    c = 0.5 * w.abs().max()
    kw = dict(repeats=3, generator=7, physics="aihwkit")
    got = gpuwpo.simulate_weights(w, conv, gpuwpo.PCMLikeNoiseModel(), T_STEPS, comp, **kw)
    want = gpuwpo.simulate_weights(w.clamp(-c, c), conv.without_clip(),
                                   gpuwpo.PCMLikeNoiseModel(), T_STEPS, comp, **kw)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # The error is against the unclipped weights: the clipped ones' largest weights are lost.
    err = gpuwpo.device.simulate.converter_errors(w, conv, gpuwpo.PCMLikeNoiseModel(), T_STEPS,
                                                  compensation=comp, physics="aihwkit",
                                                  repeats=3, generator=7)
    by_hand = (10.0 * (want - w) / w.abs().max()).square().mean((-2, -1))
    assert float(err.mean()) == pytest.approx(float(by_hand.mean()), rel=0.3)
    # Negative control: converting the programmed weights again with the clip clips them twice.
    from gpuwpo.device import physics

    class ClipsTwice(physics.ConverterConversion):
        def reconvert(self, w_prog):
            return self.to_conductances(w_prog)

    monkeypatch.setattr(gpuwpo.device.simulate, "ConverterConversion", ClipsTwice)
    twice = gpuwpo.simulate_weights(w, conv, gpuwpo.PCMLikeNoiseModel(), T_STEPS, comp, **kw)
    assert not torch.allclose(twice, want, rtol=1e-2, atol=0.0)


def test_the_triton_kernel_declines_a_clip():
    space = StrategySpace([None, None], clip=0.5)
    obj = TNMSEObjective([_heavy()], gpuwpo.PCMLikeNoiseModel(), None, T_STEPS, space,
                         test_in_features=32, test_out_features=8)
    assert "clip" in obj._kernel_supported()


def _run(layers, clip, tmp_path=None):
    return gpuwpo.optimize_network(
        layers, gpuwpo.PCMLikeNoiseModel(), T_STEPS,
        gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0), [None, None],
        per_layer=True, popsize=2, maxiter=2, validation_repeats=12, baseline_iterations=12,
        polish=False, disp=False, clip=clip, test_in_features=128, test_out_features=80,
        # A fixed clip in the reference optimiser's setting (one scale per layer, for the
        # strategies and the baseline); the searched clip under the per-column mapping:
        # tests/test_search_mapping.py.
        mapping="layer", baseline_mapping="layer")


def test_a_clipping_search_gains_on_heavy_tails_and_never_loses(tmp_path):
    # A clipped weight costs (10 (|w| - c) / max|W|)^2 of the tile's sum, so clipping pays off
    # only on a tile of many weights: 10,240 here, as the default tile.
    gen = torch.Generator().manual_seed(5)
    layers = {"heavy.weight": _heavy((128, 96), seed=2),
              # Gaussian weights clipped at 0.2 of their largest: far too much clipped.
              "light.weight": torch.randn(128, 96, generator=gen)}
    plain = _run(layers, 1.0)
    clipped_too_far = _run({"light.weight": layers["light.weight"]}, 0.2)
    clipped = _run({"heavy.weight": layers["heavy.weight"]}, 0.5)
    heavy_plain, heavy = plain.layers[0], clipped.layers[0]
    assert heavy.converter.clip == 0.5 and heavy.chosen != "baseline"
    assert heavy.improvement > heavy_plain.improvement + 0.15, (heavy, heavy_plain)
    # Never worse: the baseline is not clipped, so where clipping only hurts it is kept.
    light = clipped_too_far.layers[0]
    assert light.chosen == "baseline" and light.tnmse == light.baseline_tnmse
    assert clipped.settings["options"]["clip"] == 0.5
    # The clip travels with the results file, and programming a model applies it.
    path = tmp_path / "r.json"
    save_result(clipped, path)
    again = load_result(path)
    assert again.layers[0].converter.clip == 0.5
    w = layers["heavy.weight"]
    assert torch.equal(again.layers[0].converter.convert_to_conductances(w)[0],
                       heavy.converter.convert_to_conductances(w)[0])


# ------------------------------------------------------------------------------------------
# Against aihwkit itself: its tiles holding the weights clipped (skipped without aihwkit)

AIHWKIT_OUT, AIHWKIT_IN = 16, 128
AIHWKIT_SAMPLES = 40  # programmings a side


@pytest.fixture
def one_thread(keep_threads):
    # aihwkit's tiles and these small tiles reduce tiny tensors: on a busy 2-core machine
    # OpenMP's threads cost far more than the work.
    torch.set_num_threads(1)


def _aihwkit_tile() -> torch.Tensor:
    """Heavy-tailed rows whose scales span a decade [16, 128] (max|W| ~ 1, so that the default
    readout's output noise of 0.06 matters)."""
    gen = torch.Generator().manual_seed(14)
    n = AIHWKIT_OUT * AIHWKIT_IN
    raw = torch.randn(n, generator=gen) / torch.rand(n, generator=gen).sqrt()
    tile = raw.reshape(AIHWKIT_OUT, AIHWKIT_IN) * torch.logspace(-1, 0, AIHWKIT_OUT)[:, None]
    return tile / tile.abs().max()


def _clipping_program(clip: float) -> CustomPairConductanceConverter:
    space = StrategySpace([None, None])
    conv = space.to_converter(space.encode_npair([1.0, 2.0]), 1.0)
    return CustomPairConductanceConverter(conv.f_lst, conv.g_lst, 0.0, 25.0, clip=clip)


def _gpuwpo_samples(recipe, tile, comp, seed):
    eff = gpuwpo.simulate_weights(tile, recipe, gpuwpo.PCMLikeNoiseModel(), T_STEPS, comp,
                                  repeats=AIHWKIT_SAMPLES, generator=seed, physics="aihwkit")
    return (10.0 * (eff - tile) / tile.abs().max()).square().mean((-2, -1)).mean(-1).double()


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("mapping", ["layer", "columnwise"])
@pytest.mark.parametrize("readout", ["ideal", "default"])
@pytest.mark.parametrize("comp", ["global", "per-column", "exact"])
def test_a_clip_in_physics_aihwkit_equals_aihwkit_judging_clipped_weights(mapping, readout,
                                                                        comp):
    """gpuwpo's converter path (physics="aihwkit") of a clipping program against aihwkit's own
    tile holding the weights clipped at clip * max|W| (per row under the columnwise mapping,
    which then scales each row to its clipped max), programmed with the program without its
    clip, the error against the unclipped weights (gpuwpo.aihwkit.judge_tnmse): equal means
    within 4 standard errors, 40 programmings a side."""
    pytest.importorskip("aihwkit")
    from gpuwpo.aihwkit import judge_tnmse
    from gpuwpo.device.mapping import Recipe
    from tests._aihwkit import gpuwpo_compensation, z_score

    tile = _aihwkit_tile()
    recipe = Recipe(_clipping_program(0.6), mapping)
    compensation = gpuwpo_compensation(readout, comp)
    ref = judge_tnmse(recipe, tile, T_STEPS, gpuwpo.PCMLikeNoiseModel(), compensation,
                      repeats=AIHWKIT_SAMPLES, seed=1)
    ours = _gpuwpo_samples(recipe, tile, compensation, 2)
    assert abs(z_score(ours, ref)) < 4.0, (float(ours.mean()), float(ref.mean()))
    # Negative control: the same program judged without its clip is another figure.
    plain = _gpuwpo_samples(Recipe(recipe.converter.without_clip(), mapping), tile,
                            compensation, 3)
    assert abs(z_score(plain, ref)) > 4.0


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_the_columnwise_clip_reads_the_tile_in_aihwkits_units():
    """Negative control of the tile's units: with the tile w / s (the program's grid end at
    clip, not at 1) the default periphery's output noise is relatively larger, and the figure
    departs from aihwkit's deployment of the clipped rows."""
    pytest.importorskip("aihwkit")
    import gpuwpo.device.simulate as simulate
    from gpuwpo.aihwkit import judge_tnmse
    from gpuwpo.device.mapping import Recipe, to_tile
    from tests._aihwkit import gpuwpo_compensation, z_score

    tile = _aihwkit_tile()
    recipe = Recipe(_clipping_program(0.5), "columnwise")
    compensation = gpuwpo_compensation("default", "exact")
    ref = judge_tnmse(recipe, tile, T_STEPS, gpuwpo.PCMLikeNoiseModel(), compensation,
                      repeats=AIHWKIT_SAMPLES, seed=1)
    ours = _gpuwpo_samples(recipe, tile, compensation, 2)
    assert abs(z_score(ours, ref)) < 4.0
    original = simulate.recipe_tile
    simulate.recipe_tile = lambda w, r: to_tile(w, r.mapping)
    try:
        unscaled = _gpuwpo_samples(recipe, tile, compensation, 2)
    finally:
        simulate.recipe_tile = original
    assert abs(z_score(unscaled, ref)) > 4.0, (float(unscaled.mean()), float(ref.mean()))


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_judging_clipped_weights_is_the_references_loss_step_for_step():
    """judge_tnmse's loop for a clipping program (aihwkit's loss_weights with the error against
    other weights than the layer holds) is loss_weights itself when the two are the same."""
    pytest.importorskip("aihwkit")
    from aihwkit.inference.converter import wpo as ref_wpo
    from aihwkit.nn import AnalogLinear

    from gpuwpo.aihwkit import _loss_against, to_aihwkit_rpu_config

    tile = _aihwkit_tile()
    cfg = to_aihwkit_rpu_config(gpuwpo.PCMLikeNoiseModel(), gpuwpo.DualPairConductanceConverter(),
                                mapping="columnwise")
    weights = tile.T.contiguous()
    with torch.random.fork_rng():
        torch.manual_seed(5)
        model = AnalogLinear(AIHWKIT_IN, AIHWKIT_OUT, bias=False, rpu_config=cfg).eval()
        theirs = float(ref_wpo.loss_weights(model, list(T_STEPS), weights, weights.abs().max(),
                                            1.0, 0.0, get_baseline=True))
        torch.manual_seed(5)
        model = AnalogLinear(AIHWKIT_IN, AIHWKIT_OUT, bias=False, rpu_config=cfg).eval()
        ours = _loss_against(model, list(T_STEPS), weights, weights)
    assert ours == pytest.approx(theirs, rel=1e-5)
