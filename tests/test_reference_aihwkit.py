"""gpuwpo against the reference toolkit itself (aihwkit 1.1.0), not against transcriptions of it.

* Exactly, with the same standard normals: the PCM device model's three methods, the readout
  periphery's forward pass, the converters and the strategy-space decode.
* In distribution: the TNMSE of standard converters and decoded CustomPair programs under
  ``physics="aihwkit"``, through the converter path and the batched hot path, against the
  reference's own ``loss_weights`` on the same tile, for both readouts and three compensations.
  Means must agree within 4 standard errors. The same test, applied to ``physics="device"``,
  rejects it (the negative control that shows the test has power).
* The mapping: a columnwise :class:`gpuwpo.device.mapping.Recipe` against aihwkit's tile with
  ``mapping.weight_scaling_omega = 1``, ``weight_scaling_columnwise = True`` (its inference
  presets' and example 33's deployment), both readouts, global and per-column compensation; the
  layer-wise recipe does not match that tile (the negative control).

Skipped without aihwkit (``pip install --no-deps aihwkit==1.1.0 requests protobuf``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("aihwkit")

from aihwkit.inference.converter import wpo as ref_wpo  # noqa: E402
from aihwkit.inference.noise.pcm import CustomDriftPCMLikeNoiseModel as RefCustomDrift  # noqa: E402
from aihwkit.inference.noise.pcm import PCMLikeNoiseModel as RefPCM  # noqa: E402
from aihwkit.simulator.configs import TorchInferenceRPUConfig  # noqa: E402
from aihwkit.simulator.tiles.analog_mvm import AnalogMVM  # noqa: E402

import gpuwpo  # noqa: E402
from tests._aihwkit import (  # noqa: E402
    COMPENSATIONS,
    READOUTS,
    gpuwpo_compensation,
    reference_converter,
    reference_tnmse_samples,
    z_score,
)

pytestmark = pytest.mark.slow

T_STEPS = (1.0, 3600.0, 2592000.0)
OUT, IN = 16, 128  # the test tile [out_features, in_features]
N_SAMPLES = 40  # programmings per side: standard errors of ~0.5-1 % of the mean
Z_AGREE = 4.0


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------
# the device model, exactly


def test_pcm_methods_equal_the_reference_with_the_same_normals():
    g = torch.rand(4, 500, generator=_gen(0)) * 30.0  # beyond g_max too
    g[0, :5] = 0.0
    for kwargs in ({}, {"prog_noise_scale": 1.5, "read_noise_scale": 0.7, "drift_scale": 1.3},
                   {"prog_coeff": [0.5, 1.0, -0.3], "g_max": 40.0}):
        ref = RefPCM(g_max=kwargs.get("g_max", 25.0),
                     **{k: v for k, v in kwargs.items() if k != "g_max"})
        ours = gpuwpo.PCMLikeNoiseModel(**kwargs)
        torch.manual_seed(1)
        want_prog = ref.apply_programming_noise_to_conductance(g.clone())
        torch.manual_seed(1)
        z = torch.randn_like(g)
        got_prog = ours.apply_programming_noise_to_conductance(g, z=z)
        fast_prog = ours.program(ours.prepare_targets(g), z)
        torch.testing.assert_close(got_prog, want_prog, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(fast_prog, want_prog, rtol=1e-6, atol=1e-6)

        torch.manual_seed(2)
        want_nu = ref.generate_drift_coefficients(g.clone())
        torch.manual_seed(2)
        z = torch.randn_like(g)
        torch.testing.assert_close(ours.generate_drift_coefficients(g, z=z), want_nu)
        torch.testing.assert_close(ours.drift_coefficients(ours.prepare_targets(g), z), want_nu)

        for t in (0.0, 1.0, 86400.0, 3.15e7):
            torch.manual_seed(3)
            want = ref.apply_drift_noise_to_conductance(want_prog, want_nu, t)
            torch.manual_seed(3)
            z = torch.randn_like(g)
            torch.testing.assert_close(
                ours.apply_drift_noise_to_conductance(want_prog, want_nu, t, z=z), want,
                rtol=2e-6, atol=1e-6)
            torch.testing.assert_close(ours.drift_and_read(want_prog, want_nu, t, z), want,
                                       rtol=2e-6, atol=1e-6)


def test_custom_drift_equals_the_reference_with_the_same_normals():
    table = {"g_lst": [0.0, 5.0, 12.0, 25.0], "nu_mean_lst": [0.1, 0.07, 0.05, 0.04],
             "nu_std_lst": [0.03, 0.02, 0.02, 0.01]}
    ref = RefCustomDrift(table, g_converter=reference_converter(
        gpuwpo.DualPairConductanceConverter()))
    ours = gpuwpo.CustomDriftPCMLikeNoiseModel(table)
    g = torch.rand(1000, generator=_gen(4)) * 25.0
    torch.manual_seed(5)
    want = ref.generate_drift_coefficients(g.clone())  # the reference clips its argument
    torch.manual_seed(5)
    z = torch.randn_like(g)
    torch.testing.assert_close(ours.generate_drift_coefficients(g, z=z), want)
    torch.testing.assert_close(ours.drift_coefficients(ours.prepare_targets(g), z), want)


def test_readout_periphery_equals_the_reference_forward_pass():
    """The default periphery's one pass: the reference's noisy, quantised, bounded MVM of eye."""
    io = TorchInferenceRPUConfig().forward
    tile = torch.randn(OUT, IN, generator=_gen(6)) * 0.3
    torch.manual_seed(7)
    want = AnalogMVM.matmul(tile, torch.eye(IN), io, is_test=True)  # [in, out]
    torch.manual_seed(7)
    z = torch.randn(IN, OUT)  # the reference's draw, in its layout
    got = gpuwpo.GlobalDriftCompensation.aihwkit_default().readout(tile, z=z.T, tile_ndim=2)
    torch.testing.assert_close(got, want.T, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------
# converters and decode, directly against aihwkit's objects

CONVERTERS = [
    gpuwpo.SinglePairConductanceConverter(0.0, 25.0),
    gpuwpo.SinglePairConductanceConverter(2.0, 20.0),
    gpuwpo.DualPairConductanceConverter([1.0, 3.0], 0.0, 25.0),
    gpuwpo.NPairConductanceConverter([1.0, 2.0, 4.0], 1.0, 25.0),
]


@pytest.mark.parametrize("conv", CONVERTERS, ids=repr)
def test_pair_converters_equal_the_reference(conv):
    _assert_converts_like_the_reference(conv, torch.randn(OUT, IN, generator=_gen(8)) * 0.2,
                                        rtol=1e-6, atol=1e-5, back_rtol=1e-5)


def _assert_converts_like_the_reference(conv, w, *, rtol, atol, back_rtol):
    """Conductances and (noisy) conductances back to weights, ours against aihwkit's."""
    ref = reference_converter(conv)
    g_ref, p_ref = ref.convert_to_conductances(w)
    g, params = conv.convert_to_conductances(w)
    torch.testing.assert_close(g, torch.stack(g_ref), rtol=rtol, atol=atol)
    noisy = (g + torch.rand(g.shape, generator=_gen(9))).clamp(min=0.0)
    torch.testing.assert_close(conv.convert_back_to_weights(noisy, params),
                               ref.convert_back_to_weights(list(noisy.clone()), p_ref),
                               rtol=back_rtol, atol=1e-6)


def _decoded_program(f_lst, symmetric, seed, m=0.7):
    space = gpuwpo.StrategySpace(f_lst, 0.0, 25.0, symmetric=symmetric)
    gen = _gen(seed)
    while True:
        conv = space.to_converter(torch.rand(space.dim, generator=gen, dtype=torch.float64), m,
                                  invertibility_test=False)
        if bool(conv.check_invertibility()):
            return conv


def test_custom_pair_and_fusion_equal_the_reference():
    w = torch.randn(OUT, IN, generator=_gen(10)) * 0.2
    for conv in (_decoded_program([None, None], True, 1), _decoded_program([1.0, 3.0], False, 2),
                 _decoded_program([None, None, None], True, 3)):
        _assert_converts_like_the_reference(conv, w, rtol=1e-5, atol=1e-4, back_rtol=1e-4)
    _assert_converts_like_the_reference(gpuwpo.FusionConductanceConverter(30.0), w, rtol=1e-6,
                                        atol=1e-5, back_rtol=1e-4)


@pytest.mark.parametrize("f_lst, symmetric, use_max_kw, g_err", [
    ([None, None], True, False, 0.0),
    ([None, None], False, False, 0.0),
    ([1.0, 3.0], True, True, 0.0),
    ([None, 2.0, None], False, False, 0.5),
    ([None], True, False, 0.0),
])
def test_decode_equals_the_reference_denormalize(f_lst, symmetric, use_max_kw, g_err):
    space = gpuwpo.StrategySpace(f_lst, 1.0, 25.0, symmetric=symmetric, use_max_kw=use_max_kw,
                                 g_err=g_err)
    m = 0.37
    d = {"f_lst": list(f_lst), "f_min": space.f_min, "f_max": space.f_max,
         "use_max_kw": use_max_kw, "g_min": 1.0, "g_max": 25.0, "g_err": g_err,
         "symmetric": symmetric,
         "max_abs_weight_unitless": torch.tensor(m, dtype=torch.float64),
         "weights_discretized_unitless": torch.linspace(-m, m, space.grid_size,
                                                        dtype=torch.float64)}
    x = torch.rand(20, space.dim, generator=_gen(13), dtype=torch.float64)
    f, g_lst, _ = space.decode(x, torch.tensor(m, dtype=torch.float64))
    for i in range(x.shape[0]):
        f_ref, g_ref = ref_wpo.denormalize(x[i].numpy().copy(), d)
        np.testing.assert_allclose(f[i].numpy(), np.array(f_ref, dtype=np.float64), rtol=1e-12)
        np.testing.assert_allclose(g_lst[i].numpy(), np.array(g_ref, dtype=np.float64),
                                   rtol=1e-7, atol=1e-6)  # linspace vs exact grid


# ------------------------------------------------------------------------------------------
# TNMSE in distribution, against the reference's loss_weights


@pytest.fixture(scope="module")
def tile_objective():
    """Heavy-tailed weights (a Student-t-like ratio, max|w| ~ 1, so that the default readout's
    output noise of 0.06 matters) for a tile [OUT, IN]."""
    gen = _gen(14)
    raw = torch.randn(OUT * IN, generator=gen) / torch.rand(OUT * IN, generator=gen).sqrt()
    return raw * 0.05


def _objective(raw, space, physics, readout, comp):
    """An objective that keeps exactly the weights ``raw`` as its (shuffled) [OUT, IN] tile."""
    return gpuwpo.TNMSEObjective(raw, gpuwpo.PCMLikeNoiseModel(g_max=space.g_max),
                                 gpuwpo_compensation(readout, comp), T_STEPS, space,
                                 test_in_features=IN, test_out_features=OUT, physics=physics,
                                 kernel="torch")


def _converter_samples(conv, tile, physics, readout, comp, seed):
    """TNMSE samples [N_SAMPLES] of a converter or Recipe on ``tile`` [OUT, IN]."""
    g_max = getattr(conv, "converter", conv).g_max
    eff = gpuwpo.simulate_weights(tile, conv, gpuwpo.PCMLikeNoiseModel(g_max=g_max),
                                  T_STEPS, gpuwpo_compensation(readout, comp), repeats=N_SAMPLES,
                                  generator=_gen(seed), physics=physics)
    err = (10.0 * (eff - tile) / tile.abs().max()).square()
    return err.mean((-2, -1)).mean(-1).double()  # [repeats]


STANDARD = [
    ("dualpair-1-1", gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0)),
    ("dualpair-1-3", gpuwpo.DualPairConductanceConverter([1.0, 3.0], 0.0, 25.0)),
    ("singlepair-2-25", gpuwpo.SinglePairConductanceConverter(2.0, 25.0)),
    ("npair-1-2-4", gpuwpo.NPairConductanceConverter([1.0, 2.0, 4.0], 0.0, 25.0)),
]
DECODED = [("sym-K2", [None, None], True, 21), ("asym-K2", [1.0, None], False, 22),
           ("sym-K3", [None, None, None], True, 23)]
CASES = [(r, c) for r in READOUTS for c in COMPENSATIONS]


@pytest.mark.parametrize("readout, comp", CASES)
@pytest.mark.parametrize("name, conv", STANDARD, ids=[n for n, _ in STANDARD])
def test_standard_converters_match_the_reference_loss(tile_objective, name, conv, readout,
                                                      comp):
    space = gpuwpo.StrategySpace([None, None], conv.g_min, conv.g_max)
    tile = _objective(tile_objective, space, "aihwkit", readout, comp).test_weights[0]
    tile = tile.reshape(OUT, IN)
    ref = reference_tnmse_samples(conv, tile, T_STEPS, readout, comp, N_SAMPLES, seed=31)
    ours = _converter_samples(conv, tile, "aihwkit", readout, comp, seed=32)
    assert abs(z_score(ours, ref)) < Z_AGREE, (ours.mean(), ref.mean())


@pytest.mark.parametrize("readout, comp", CASES)
@pytest.mark.parametrize("name, f_lst, symmetric, seed", DECODED, ids=[d[0] for d in DECODED])
def test_decoded_programs_match_the_reference_loss_in_both_paths(tile_objective, name, f_lst,
                                                                 symmetric, seed, readout, comp):
    space = gpuwpo.StrategySpace(f_lst, 0.0, 25.0, symmetric=symmetric)
    obj = _objective(tile_objective, space, "aihwkit", readout, comp)
    tile = obj.test_weights[0].reshape(OUT, IN)
    gen = _gen(seed)
    while True:  # a random point of the space whose program is invertible
        x = torch.rand(space.dim, generator=gen)
        conv = space.to_converter(x, obj.max_abs_weight[0], invertibility_test=False)
        if bool(conv.check_invertibility()):
            break
    ref = reference_tnmse_samples(conv, tile, T_STEPS, readout, comp, N_SAMPLES, seed=33)
    converter_path = _converter_samples(conv, tile, "aihwkit", readout, comp, seed=34)
    hot_path = obj(x.reshape(1, 1, -1).expand(1, N_SAMPLES, -1), 35,
                   common_random_numbers=False)[0].double()
    assert abs(z_score(converter_path, ref)) < Z_AGREE, (converter_path.mean(), ref.mean())
    assert abs(z_score(hot_path, ref)) < Z_AGREE, (hot_path.mean(), ref.mean())


def test_fusion_matches_the_reference_loss(tile_objective):
    conv = gpuwpo.FusionConductanceConverter(40.0)
    tile = tile_objective.reshape(OUT, IN)
    for readout in READOUTS:
        ref = reference_tnmse_samples(conv, tile, T_STEPS, readout, "global", 30, seed=36)
        ours = _converter_samples(conv, tile, "aihwkit", readout, "global", seed=37)
        assert abs(z_score(ours, ref)) < Z_AGREE, (readout, ours.mean(), ref.mean())


def test_bound_management_matches_the_reference_loss():
    """Weights up to 20 clip at the output bound 12: the reference reads them again, halved."""
    gen = _gen(38)
    tile = torch.randn(OUT, IN, generator=gen)
    tile = tile / tile.abs().max() * 20.0
    conv = gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0)
    for comp in ("global", "per-column"):
        ref = reference_tnmse_samples(conv, tile, T_STEPS, "default", comp, N_SAMPLES, seed=39)
        ours = _converter_samples(conv, tile, "aihwkit", "default", comp, seed=40)
        assert abs(z_score(ours, ref)) < Z_AGREE, (comp, ours.mean(), ref.mean())
        # The periphery is doing something here: without bound management clipping would
        # distort the readout badly.
        assert gpuwpo.GlobalDriftCompensation.aihwkit_default().bound_management


@pytest.mark.parametrize("name, conv, readout, comp", [
    ("dualpair-1-3", STANDARD[1][1], "ideal", "per-column"),
    ("singlepair-2-25", STANDARD[2][1], "default", "global"),
    ("npair-1-2-4", STANDARD[3][1], "ideal", "global"),
])
def test_negative_control_the_same_test_rejects_the_device_physics(tile_objective, name, conv,
                                                                   readout, comp):
    space = gpuwpo.StrategySpace([None, None], conv.g_min, conv.g_max)
    tile = _objective(tile_objective, space, "device", readout, comp).test_weights[0]
    tile = tile.reshape(OUT, IN)
    ref = reference_tnmse_samples(conv, tile, T_STEPS, readout, comp, N_SAMPLES, seed=31)
    device = _converter_samples(conv, tile, "device", readout, comp, seed=32)
    aihwkit = _converter_samples(conv, tile, "aihwkit", readout, comp, seed=32)
    assert abs(z_score(device, ref)) > Z_AGREE, (device.mean(), ref.mean())
    assert abs(z_score(aihwkit, ref)) < Z_AGREE


# ------------------------------------------------------------------------------------------
# gpuwpo.aihwkit


def test_rpu_config_translation_and_refusals():
    from gpuwpo.aihwkit import to_aihwkit_rpu_config

    nm = gpuwpo.PCMLikeNoiseModel(g_max=30.0, prog_coeff=[0.3, 1.5, -1.0], drift_scale=0.9)
    conv = gpuwpo.DualPairConductanceConverter([1.0, 2.0], 0.0, 25.0)
    cfg = to_aihwkit_rpu_config(nm, conv, gpuwpo.GlobalDriftCompensation.aihwkit_default())
    assert not cfg.forward.is_perfect
    assert cfg.noise_model.g_max == 30.0 and cfg.noise_model.prog_coeff_g_max_reference == 30.0
    assert cfg.noise_model.drift_scale == 0.9 and cfg.mapping.weight_scaling_omega == 0.0
    assert type(cfg.drift_compensation).__name__ == "GlobalDriftCompensation"
    cfg = to_aihwkit_rpu_config(nm, conv, gpuwpo.GlobalDriftCompensation(exact_reference=True))
    assert cfg.forward.is_perfect
    assert type(cfg.drift_compensation).__name__ == "GlobalDriftCompensationWithExactReference"
    with pytest.raises(ValueError, match="no periphery equal"):
        to_aihwkit_rpu_config(nm, conv, gpuwpo.GlobalDriftCompensation(readout_noise=0.1))
    with pytest.raises(ValueError, match="per-column compensation with an exact reference"):
        to_aihwkit_rpu_config(nm, conv, gpuwpo.PerColumnDriftCompensation(exact_reference=True))
    batched = gpuwpo.DualPairConductanceConverter(torch.tensor([[1.0, 1.0], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="batch shape"):
        reference_converter(batched)


def test_judge_leaves_the_global_generator_alone():
    from gpuwpo.aihwkit import judge_tnmse

    state = torch.random.get_rng_state()
    tile = torch.randn(4, 16, generator=_gen(50)) * 0.1
    a = judge_tnmse(gpuwpo.DualPairConductanceConverter(), tile, [1.0], gpuwpo.PCMLikeNoiseModel(),
                    repeats=3, seed=1)
    b = judge_tnmse(gpuwpo.DualPairConductanceConverter(), tile, [1.0], gpuwpo.PCMLikeNoiseModel(),
                    repeats=3, seed=1)
    assert torch.equal(a, b) and torch.equal(torch.random.get_rng_state(), state)


# ------------------------------------------------------------------------------------------
# The columnwise mapping against aihwkit's columnwise tile


@pytest.fixture(scope="module")
def rows_tile(tile_objective):
    """The heavy-tailed tile [OUT, IN] with rows a decade apart: where one scale per layer and
    one per row differ by far."""
    return tile_objective.reshape(OUT, IN) * torch.logspace(-1, 0, OUT).unsqueeze(1)


@pytest.fixture
def one_thread(keep_threads):
    # Tiles of 2,048 weights: on a busy 2-core machine OpenMP's threads cost more than the work.
    torch.set_num_threads(1)


def _judged(recipe, tile, readout, comp, seed):
    """The reference's TNMSE samples [N_SAMPLES] of a converter or Recipe (its mapping set on
    aihwkit's tile) on ``tile``."""
    from gpuwpo.aihwkit import judge_tnmse

    return judge_tnmse(recipe, tile, T_STEPS, gpuwpo.PCMLikeNoiseModel(),
                       gpuwpo_compensation(readout, comp), repeats=N_SAMPLES, seed=seed)


MAPPED = [("dualpair-1-1", lambda: gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0)),
          ("custompair", lambda: _decoded_program([None, None], True, 24))]
MAPPED_CASES = [(r, c) for r in READOUTS for c in ("global", "per-column")]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("readout, comp", MAPPED_CASES)
@pytest.mark.parametrize("name, make", MAPPED, ids=[n for n, _ in MAPPED])
def test_columnwise_recipes_match_aihwkits_columnwise_tile(rows_tile, name, make, readout,
                                                            comp):
    from gpuwpo.device.mapping import Recipe

    recipe = Recipe(make(), "columnwise")
    ref = _judged(recipe, rows_tile, readout, comp, seed=41)
    ours = _converter_samples(recipe, rows_tile, "aihwkit", readout, comp, seed=42)
    assert abs(z_score(ours, ref)) < Z_AGREE, (ours.mean(), ref.mean())


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("readout, comp", [("ideal", "global"), ("default", "per-column")])
def test_negative_control_the_layerwise_recipe_is_not_aihwkits_columnwise_tile(rows_tile,
                                                                              readout, comp):
    from gpuwpo.device.mapping import Recipe

    conv = MAPPED[0][1]()
    ref = _judged(Recipe(conv, "columnwise"), rows_tile, readout, comp, seed=41)
    layer = _converter_samples(Recipe(conv, "layer"), rows_tile, "aihwkit", readout, comp,
                               seed=42)
    assert abs(z_score(layer, ref)) > Z_AGREE, (layer.mean(), ref.mean())
    # ... and aihwkit's own layer-wise tile is what the layer-wise recipe is.
    ref_layer = _judged(conv, rows_tile, readout, comp, seed=43)
    assert abs(z_score(layer, ref_layer)) < Z_AGREE


def test_mapping_translation_both_ways_and_refusals():
    from aihwkit.simulator.configs import TorchInferenceRPUConfig

    from gpuwpo.aihwkit import (
        from_aihwkit_rpu_config,
        mapping_from_aihwkit,
        to_aihwkit_rpu_config,
    )
    from gpuwpo.device.mapping import Recipe

    nm, conv = gpuwpo.PCMLikeNoiseModel(), gpuwpo.DualPairConductanceConverter()
    cfg = to_aihwkit_rpu_config(nm, conv, mapping="columnwise")
    assert cfg.mapping.weight_scaling_omega == 1.0 and cfg.mapping.weight_scaling_columnwise
    assert from_aihwkit_rpu_config(cfg).mapping == "columnwise"
    cfg = to_aihwkit_rpu_config(nm, Recipe(conv, "columnwise"))
    assert mapping_from_aihwkit(cfg) == "columnwise"
    cfg = to_aihwkit_rpu_config(nm, conv)
    assert cfg.mapping.weight_scaling_omega == 0.0
    noise_model, compensation, mapping = from_aihwkit_rpu_config(cfg)
    assert mapping == "layer" and isinstance(compensation, gpuwpo.GlobalDriftCompensation)
    with pytest.raises(ValueError, match="mapping is 'columnwise', not 'layer'"):
        to_aihwkit_rpu_config(nm, Recipe(conv, "columnwise"), mapping="layer")
    # Example 33's mapping: learned output scales start at 1 and are reset when weights are set.
    cfg = TorchInferenceRPUConfig()
    cfg.mapping.weight_scaling_omega = 1.0
    cfg.mapping.weight_scaling_columnwise = True
    cfg.mapping.learn_out_scaling = True
    cfg.mapping.out_scaling_columnwise = True
    assert mapping_from_aihwkit(cfg) == "columnwise"
    cfg.mapping.weight_scaling_omega = 0.5
    with pytest.raises(ValueError, match="weight_scaling_omega=0.5 is not modelled"):
        from_aihwkit_rpu_config(cfg)
    cfg.mapping.weight_scaling_omega = 1.0
    cfg.mapping.weight_scaling_columnwise = False
    with pytest.raises(ValueError, match="one scale for the whole tile"):
        mapping_from_aihwkit(cfg)
    cfg.mapping.weight_scaling_omega = 0.0  # no scaling: the columnwise flag does nothing
    assert mapping_from_aihwkit(cfg) == "layer"


def test_judge_keeps_a_tile_beyond_aihwkits_split_size_whole():
    """A columnwise tile split along its inputs would scale each block's rows on their own:
    the judge's layer holds the whole tile on one aihwkit tile."""
    from gpuwpo.aihwkit import judge_tnmse
    from gpuwpo.device.mapping import Recipe

    tile = torch.randn(3, 600, generator=_gen(51)) * torch.tensor([[0.1], [1.0], [0.3]])
    values = judge_tnmse(Recipe(gpuwpo.DualPairConductanceConverter(), "columnwise"), tile,
                         [1.0], gpuwpo.PCMLikeNoiseModel(), repeats=2, seed=1)
    assert values.shape == (2,) and bool(torch.isfinite(values).all())
