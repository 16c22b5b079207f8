"""Tests of whole-tile weight simulation (gpuwpo/simulate.py).

What they guard: the output layout [repeats, T, *w]; determinism through the generator; that
with the noise switched off the pipeline is exactly the converter's round trip; the drift
compensation invariant; that the programmed devices are the ones that drift and are read (a
hand-written loop over explicit draws reproduces it bit for bit); that every time step is
programmed afresh; and, statistically, the TNMSE of the DualPair baseline against an
independent numpy implementation of docs/DESIGN.md section 2.
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
)
from gpuwpo.device.simulate import program_drift_read, sample_device_noise

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
