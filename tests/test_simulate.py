"""Tests of whole-tile weight simulation (gpuwpo/simulate.py).

What they guard: the output layout [repeats, T, *w]; determinism through the generator; that
with the noise switched off the pipeline is exactly the converter's round trip; the drift
compensation invariant; that the programmed devices are the ones that drift and are read (a
hand-written loop over explicit draws reproduces it bit for bit); that every time step is
programmed afresh; and, statistically, the TNMSE of the DualPair baseline against an
independent numpy implementation of docs/DESIGN.md section 2. The converter path: it is
the batched physics of all times in one call, bit for bit; a sample of rows
(``sample_rows``, what ``gpuwpo evaluate`` uses for large layers) estimates the whole layer
within its standard error in both physics and compensations, the standard error is honest,
and a sample converted without the layer's largest row (the negative control) is biased.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gpuwpo import (
    CustomPairConductanceConverter,
    DualPairConductanceConverter,
    FusionConductanceConverter,
    GlobalDriftCompensation,
    NPairConductanceConverter,
    PCMLikeNoiseModel,
    PerColumnDriftCompensation,
    SinglePairConductanceConverter,
    simulate_weights,
    student_t_weights,
)
from gpuwpo.device.physics import PHYSICS, ConverterConversion, program_and_read
from gpuwpo.device.simulate import (
    SAMPLE_WEIGHTS,
    converter_errors,
    program_drift_read,
    sample_device_noise,
    sample_rows_for,
)

T_STEPS = [1.0, 3600.0, 86400.0 * 30]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _weights(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype)


def _custom_pair() -> CustomPairConductanceConverter:
    # A two-pair program that is linear in the weight (invertible): pair 0 carries 3/4 of the
    # weight, pair 1 (f = 2) the rest.
    w = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    g0 = 12.0 * w
    g1 = 2.0 * w
    rows = [g0.clamp(min=0), (-g0).clamp(min=0), g1.clamp(min=0), (-g1).clamp(min=0)]
    return CustomPairConductanceConverter([1.0, 2.0], torch.stack(rows), 0.0, 25.0)


CONVERTERS = {
    "single": lambda: SinglePairConductanceConverter(),
    "dual": lambda: DualPairConductanceConverter([1.0, 3.0]),
    "npair": lambda: NPairConductanceConverter([1.0, 2.0, 4.0], g_min=0.5, g_max=20.0),
    "custom": _custom_pair,
    "fusion": lambda: FusionConductanceConverter(40.0),
}


def _noise_off() -> PCMLikeNoiseModel:
    return PCMLikeNoiseModel(prog_noise_scale=0.0, read_noise_scale=0.0, drift_scale=0.0)


@pytest.mark.parametrize("name", sorted(CONVERTERS))
@pytest.mark.parametrize("shape", [(37,), (6, 11)])
def test_shape_determinism_and_dtype(name, shape):
    conv = CONVERTERS[name]()
    w = _weights(*shape, seed=1)
    nm = PCMLikeNoiseModel()
    out = simulate_weights(w, conv, nm, T_STEPS, repeats=3, generator=_gen(5))
    assert out.shape == (3, len(T_STEPS), *shape)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    again = simulate_weights(w, conv, nm, T_STEPS, repeats=3, generator=_gen(5))
    assert torch.equal(out, again)
    other = simulate_weights(w, conv, nm, T_STEPS, repeats=3, generator=_gen(6))
    assert not torch.equal(out, other)
    out64 = simulate_weights(w.double(), conv, nm, T_STEPS, repeats=2, generator=_gen(5))
    assert out64.dtype == torch.float64 and out64.shape == (2, len(T_STEPS), *shape)


def test_scalar_time_and_bad_arguments():
    w = _weights(20)
    out = simulate_weights(w, SinglePairConductanceConverter(), PCMLikeNoiseModel(), 60.0,
                           generator=_gen(0))
    assert out.shape == (1, 1, 20)
    with pytest.raises(ValueError, match="repeats"):
        simulate_weights(w, SinglePairConductanceConverter(), PCMLikeNoiseModel(), 1.0, repeats=0)
    with pytest.raises(ValueError, match="t_steps"):
        simulate_weights(w, SinglePairConductanceConverter(), PCMLikeNoiseModel(), [-1.0])
    with pytest.raises(ValueError, match="empty"):
        simulate_weights(torch.zeros(0), SinglePairConductanceConverter(), PCMLikeNoiseModel(),
                         1.0)


@pytest.mark.parametrize("name", sorted(CONVERTERS))
def test_without_noise_equals_round_trip(name):
    conv = CONVERTERS[name]()
    w = _weights(6, 11, seed=2, dtype=torch.float64)
    g, params = conv.convert_to_conductances(w)
    round_trip = conv.convert_back_to_weights(g, params)
    out = simulate_weights(w, conv, _noise_off(), T_STEPS, repeats=2, generator=_gen(0))
    # No drift and no noise: W_t == W_prog, so alpha is exactly 1 and nothing else changes.
    assert torch.equal(out, round_trip.expand_as(out))


@pytest.mark.parametrize("name", ["single", "dual", "npair", "custom"])
@pytest.mark.parametrize("comp", ["global", "column"])
def test_drift_only_compensation_invariant(name, comp):
    conv = CONVERTERS[name]()
    w = _weights(6, 11, seed=3, dtype=torch.float64)
    g, params = conv.convert_to_conductances(w)
    w_prog = conv.convert_back_to_weights(g, params)
    nm = PCMLikeNoiseModel(prog_noise_scale=0.0, read_noise_scale=0.0, drift_scale=1.0)
    if comp == "global":
        out = simulate_weights(w, conv, nm, T_STEPS, repeats=3, generator=_gen(1))
        want = w_prog.abs().mean().expand(3, len(T_STEPS))
        got = out.abs().mean((-2, -1))
    else:
        out = simulate_weights(w, conv, nm, T_STEPS, PerColumnDriftCompensation(), repeats=3,
                               generator=_gen(1))
        want = w_prog.abs().mean(-1).expand(3, len(T_STEPS), 6)
        got = out.abs().mean(-1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    # ...and drift really happened: the uncompensated weights shrink, so alpha > 1 was applied.
    assert not torch.allclose(out, w_prog.expand_as(out))


def test_hand_written_loop_over_explicit_draws():
    """simulate_weights == program, drift, read the SAME devices, drawn in a documented order."""
    conv = DualPairConductanceConverter([1.0, 2.0])
    w = _weights(4, 9, seed=4, dtype=torch.float64)
    nm = PCMLikeNoiseModel()
    repeats = 2
    out = simulate_weights(w, conv, nm, T_STEPS, repeats=repeats, generator=_gen(11))

    g, params = conv.convert_to_conductances(w)  # [2K, 4, 9]
    noise = sample_device_noise((repeats, len(T_STEPS), g.shape[0], w.numel()),
                                generator=_gen(11), dtype=w.dtype)
    for r in range(repeats):
        for i, t in enumerate(T_STEPS):
            z = [n[r, i].reshape(g.shape) for n in noise]
            g_prog = nm.apply_programming_noise_to_conductance(g, z=z[0])
            nu = nm.generate_drift_coefficients(g, z=z[1])
            g_t = nm.apply_drift_noise_to_conductance(g_prog, nu, t, z=z[2])
            w_prog = conv.convert_back_to_weights(g_prog, params)
            w_t = conv.convert_back_to_weights(g_t, params)
            alpha = w_prog.abs().mean() / w_t.abs().mean()
            torch.testing.assert_close(out[r, i], alpha * w_t, rtol=1e-12, atol=1e-14)


def test_programmed_devices_are_the_ones_read():
    """At t = 0 without read noise the result is programming noise alone (alpha = 1).

    If drift and read started again from the targets instead of the programmed devices, the
    programming noise would vanish from the result.
    """
    conv = SinglePairConductanceConverter()
    w = _weights(50, seed=5, dtype=torch.float64)
    nm = PCMLikeNoiseModel(read_noise_scale=0.0)
    out = simulate_weights(w, conv, nm, [0.0], repeats=2, generator=_gen(3))
    g, params = conv.convert_to_conductances(w)
    noise = sample_device_noise((2, 1, 2, 50), generator=_gen(3), dtype=w.dtype)
    g_prog = nm.apply_programming_noise_to_conductance(g, z=noise.z_prog[:, 0])  # [2, 2, 50]
    w_prog = conv.convert_back_to_weights(g_prog, params)
    torch.testing.assert_close(out[:, 0], w_prog, rtol=1e-13, atol=1e-15)
    assert (out[:, 0] - w).abs().max() > 1e-3  # programming noise is there


def test_each_time_step_is_programmed_afresh():
    conv = DualPairConductanceConverter()
    w = _weights(64, seed=6)
    nm = PCMLikeNoiseModel(read_noise_scale=0.0, drift_scale=0.0)
    out = simulate_weights(w, conv, nm, [60.0, 60.0, 60.0], repeats=2, generator=_gen(0))
    # Same time, no drift, no read noise: only fresh programming noise can tell them apart.
    for r in range(2):
        assert not torch.allclose(out[r, 0], out[r, 1])
        assert not torch.allclose(out[r, 1], out[r, 2])
    assert not torch.allclose(out[0, 0], out[1, 0])


def test_program_drift_read_layout():
    nm = PCMLikeNoiseModel()
    g = torch.full((3, 4, 7), 10.0)
    t = torch.tensor([0.0, 10.0])
    g_prog, g_t = program_drift_read(g, nm, t, generator=_gen(0))
    assert g_prog.shape == g_t.shape == (3, 2, 4, 7)
    with pytest.raises(ValueError, match="time axis"):
        program_drift_read(g, nm, t, time_dim=-2)


# ------------------------------------------------------------------------------------------
# Statistical check against an independent numpy implementation of docs/DESIGN.md section 2
# ------------------------------------------------------------------------------------------


def _numpy_dual_pair_tnmse(w: np.ndarray, t: float, repeats: int, seed: int) -> np.ndarray:
    """TNMSE per repeat of DualPair f = [1, 1], g in [0, 25] uS, written from the formulas."""
    rng = np.random.default_rng(seed)
    g_max, span = 25.0, 25.0
    m = np.abs(w).max()
    scale = 2 * span / m
    a = np.abs(w) * scale
    d0 = np.clip(a, 0, span)
    d1 = np.clip(a - span, 0, span)
    pos, neg = w > 0, w < 0
    g = np.stack([np.where(pos, d0, 0), np.where(neg, d0, 0),
                  np.where(pos, d1, 0), np.where(neg, d1, 0)])  # [4, N]
    c0, c1, c2 = 0.26348, 1.9650, -1.1731
    x = g / g_max
    sigma_prog = (c0 + c1 * x + c2 * x**2) * g_max / 25.0
    g_rel = np.maximum(np.abs(g) / g_max, 1e-7)
    mu = np.clip(-0.0155 * np.log(g_rel) + 0.0244, 0.049, 0.1)
    sig = np.clip(-0.0125 * np.log(g_rel) - 0.0059, 0.008, 0.045)
    t0, t_read = 20.0, 250e-9
    tp = t + t0
    losses = np.empty(repeats)
    for r in range(repeats):
        gp = np.maximum(0, g + sigma_prog * rng.standard_normal(g.shape))
        nu = np.abs(mu + sig * rng.standard_normal(g.shape))
        gd = gp * (tp / t0) ** (-nu)
        q = np.minimum(0.2, 0.0088 / np.maximum((np.abs(gp) / g_max) ** 0.65, 1e-3))
        s_read = q * math.sqrt(math.log((tp + t_read) / (2 * t_read)))
        gt = np.maximum(0, gd + np.abs(gd) * s_read * rng.standard_normal(g.shape))
        w_prog = ((gp[0] - gp[1]) + (gp[2] - gp[3])) / scale
        w_t = ((gt[0] - gt[1]) + (gt[2] - gt[3])) / scale
        eps = 1e-4 * m  # the floor is relative to max|W|
        alpha = max(np.abs(w_prog).mean(), eps) / max(np.abs(w_t).mean(), eps)
        losses[r] = np.mean((10 * (alpha * w_t - w) / m) ** 2)
    return losses


def test_dual_pair_tnmse_matches_independent_numpy():
    w64 = _weights(2000, seed=7, dtype=torch.float64)
    repeats = 200
    eff = simulate_weights(w64, DualPairConductanceConverter(), PCMLikeNoiseModel(), [1.0],
                           GlobalDriftCompensation(), repeats=repeats, generator=_gen(8))
    m = w64.abs().max()
    ours = (10 * (eff[:, 0] - w64) / m).square().mean(-1).numpy()
    ref = _numpy_dual_pair_tnmse(w64.numpy(), 1.0, repeats, seed=9)
    se = math.sqrt(ours.var(ddof=1) / repeats + ref.var(ddof=1) / repeats)
    # Means agree within 4 standard errors of their difference (a 6e-5 false-alarm rate)...
    assert abs(ours.mean() - ref.mean()) < 4 * se, (ours.mean(), ref.mean(), se)
    # ...and so does the spread: the relative standard error of a sample std is ~1/sqrt(2n).
    ratio = ours.std(ddof=1) / ref.std(ddof=1)
    assert abs(ratio - 1) < 4 * math.sqrt(2 / (2 * repeats)), ratio


# ------------------------------------------------------------------------------------------
# The converter path: one time step at a time, and sampled rows (gpuwpo evaluate)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("physics", PHYSICS)
@pytest.mark.parametrize("name", ["dual", "custom", "fusion"])
def test_the_simulation_is_the_physics_of_all_times_in_one_call_bit_for_bit(physics, name):
    # What simulate_weights and the converter path compute: program_and_read of all times in
    # one broadcast call, then the compensation, bit for bit (a loop over the times would
    # round differently in a few last bits: vectorised and scalar tails of exp/pow differ).
    conv = CONVERTERS[name]()
    w = _weights(6, 11, seed=12)
    nm = PCMLikeNoiseModel()
    t = torch.tensor(T_STEPS)
    tiles = ConverterConversion(conv, w.shape)
    g, params = tiles.to_conductances(w)
    noise = sample_device_noise((3, len(T_STEPS), *g.shape), generator=_gen(13))
    w_prog, w_t = program_and_read(physics, tiles, params, nm.prepare_targets(g), nm,
                                   t.reshape(-1, 1, 1), *noise)
    batched = GlobalDriftCompensation().alpha(w_prog, w_t, tile_ndim=2, w_ideal=w) * w_t
    out = simulate_weights(w, conv, nm, T_STEPS, repeats=3, generator=_gen(13), physics=physics)
    assert torch.equal(out, batched)


def _outlier_layer(rows: int = 120, cols: int = 24) -> torch.Tensor:
    """Heavy-tailed weights whose row 7 holds values 3x the rest (an outlier output, as in
    transformers): the row that sets the layer's max|W|."""
    w = student_t_weights((rows, cols), generator=_gen(21)) * 0.05
    w[7] *= 3.0
    return w


def _mean_and_se(errors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return errors.mean(-2), errors.std(-2) / math.sqrt(errors.shape[-2])


@pytest.mark.parametrize("physics, comp", [
    ("device", "global"),
    pytest.param("device", "column", marks=pytest.mark.slow),
    pytest.param("aihwkit", "global", marks=pytest.mark.slow),
    pytest.param("aihwkit", "column", marks=pytest.mark.slow),
])
def test_a_sample_of_rows_estimates_the_whole_layer_within_its_standard_error(physics, comp):
    w = _outlier_layer()
    convs = [DualPairConductanceConverter(), _custom_pair()]
    compensation = PerColumnDriftCompensation() if comp == "column" else None
    kw = dict(compensation=compensation, physics=physics)
    times = [1.0, 31536000.0]  # the alpha of a year's drift is where a biased sample shows
    full = converter_errors(w, convs, PCMLikeNoiseModel(), times, repeats=24, generator=1,
                            **kw)
    sampled = converter_errors(w, convs, PCMLikeNoiseModel(), times, repeats=64, generator=2,
                               sample_rows=12, **kw)
    (fm, fs), (sm, ss) = _mean_and_se(full), _mean_and_se(sampled)
    z = (sm - fm) / torch.sqrt(fs**2 + ss**2)
    assert float(z.abs().max()) < 4.0, z  # 4 comparisons at 4 SE: a 3e-4 false alarm
    # The paired difference of the two converters too.
    (fd, fds), (sd, sds) = (_mean_and_se(e[1] - e[0]) for e in (full, sampled))
    assert float(((sd - fd) / torch.sqrt(fds**2 + sds**2)).abs().max()) < 4.0
    # The sample is a real one: its figures spread more than the whole layer's.
    assert bool((ss > fs).all())


def test_a_sample_without_the_layers_largest_row_is_biased():
    # Negative control: the same rows drawn, but converted on their own (without the anchor
    # rows), take their own max|W| as the scale, and the estimate misses the layer's by far.
    w = _outlier_layer()
    conv = DualPairConductanceConverter()
    full = converter_errors(w, conv, PCMLikeNoiseModel(), T_STEPS, repeats=40, generator=1)
    naive = torch.stack([converter_errors(
        w[torch.randperm(w.shape[0], generator=_gen(100 + r))[:12]], conv, PCMLikeNoiseModel(),
        T_STEPS, repeats=1, generator=200 + r)[0] for r in range(24)])
    (fm, fs), (nm_, ns) = _mean_and_se(full), _mean_and_se(naive)
    z = (nm_ - fm) / torch.sqrt(fs**2 + ns**2)
    assert float(z.abs().min()) > 6.0, z


@pytest.mark.slow
def test_the_standard_error_of_a_sampled_estimate_is_honest():
    # Over independent evaluations, the spread of the sampled means is what each reports as
    # its standard error (ratio 1; its own sampling error is ~12 % here).
    w = _outlier_layer(60, 8)
    means, ses = [], []
    for seed in range(40):
        e = converter_errors(w, DualPairConductanceConverter(), PCMLikeNoiseModel(), [3600.0],
                             repeats=8, generator=seed, sample_rows=6)[:, 0]
        means.append(float(e.mean()))
        ses.append(float(e.std() / math.sqrt(8)))
    ratio = np.std(means, ddof=1) / np.mean(ses)
    assert 0.6 < ratio < 1.5, ratio


def test_sampled_rows_are_shared_by_the_converters_and_independent_of_chunking():
    w = _outlier_layer()
    conv = _custom_pair()
    both = converter_errors(w, [conv, conv], PCMLikeNoiseModel(), T_STEPS, repeats=10,
                            generator=3, sample_rows=9)
    assert torch.equal(both[0], both[1])  # the same rows and the same noise, repeat by repeat
    small = converter_errors(w, conv, PCMLikeNoiseModel(), T_STEPS, repeats=10, generator=3,
                             sample_rows=9, memory_budget=1)
    assert torch.equal(small, both[0])
    other_layer = converter_errors(w, conv, PCMLikeNoiseModel(), T_STEPS, repeats=10,
                                   generator=3, sample_rows=9, layer_id=1)
    assert not torch.equal(other_layer, both[0])


def test_sample_rows_arguments():
    w = _outlier_layer()
    nm = PCMLikeNoiseModel()
    for bad in (0, 120, 500, 2.5, True):
        with pytest.raises(ValueError, match="sample_rows"):
            converter_errors(w, DualPairConductanceConverter(), nm, [1.0], sample_rows=bad)
    with pytest.raises(ValueError, match="2-D"):
        converter_errors(w[0], DualPairConductanceConverter(), nm, [1.0], sample_rows=3)
    assert sample_rows_for((1536, 384), SAMPLE_WEIGHTS) == 86
    assert sample_rows_for((384, 1536), SAMPLE_WEIGHTS) == 22
    assert sample_rows_for((64, 512), SAMPLE_WEIGHTS) is None  # 64 rows: the whole layer
    assert sample_rows_for((10_000_000,), 100) is None  # one axis: no rows to sample
    assert sample_rows_for((100, 10), 25) == 3
    with pytest.raises(ValueError, match="weights"):
        sample_rows_for((100, 10), 0)
