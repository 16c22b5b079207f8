"""Tests of drift compensation (gpuwpo/compensation.py), ideal and with a readout periphery."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gpuwpo.device.compensation import GlobalDriftCompensation, PerColumnDriftCompensation


def ref_alpha(w_prog, w_t, scale=None):
    """alpha = max(mean|W_prog|, eps) / max(mean|W_t|, eps), eps = 1e-4 max|W|, plain numpy."""
    eps = 1e-4 * (np.abs(w_prog).max() if scale is None else scale)
    return max(np.abs(w_prog).mean(), eps) / max(np.abs(w_t).mean(), eps)


def _weights(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_ideal_alpha_equals_formula():
    comp = GlobalDriftCompensation()
    assert comp.is_ideal
    w_prog = _weights(200, seed=1)
    w_t = 0.7 * w_prog + 0.05 * _weights(200, seed=2)
    alpha = comp.alpha(w_prog, w_t)
    assert alpha.shape == (1,) and alpha.dtype == torch.float64
    assert alpha.item() == pytest.approx(ref_alpha(w_prog.numpy(), w_t.numpy()), rel=1e-14)


def test_floor_protects_an_empty_tile():
    comp = GlobalDriftCompensation()
    w_prog = torch.full((10,), 0.5, dtype=torch.float64)
    # The floor is 1e-4 of the tile's max|W| (of the programmed weights when no ideal ones).
    assert comp.alpha(w_prog, torch.zeros(10, dtype=torch.float64)).item() == pytest.approx(
        0.5 / (0.5e-4)
    )
    w_ideal = torch.full((10,), 2.0, dtype=torch.float64)
    assert comp.alpha(w_prog, torch.zeros(10, dtype=torch.float64),
                      w_ideal=w_ideal).item() == pytest.approx(0.5 / 2e-4)
    # An all-zero tile: alpha 1, never NaN.
    assert comp.alpha(torch.zeros(10), torch.zeros(10)).item() == 1.0
    assert comp.alpha(torch.zeros(10), torch.full((10,), 2e-5)).item() == pytest.approx(0.0)


@pytest.mark.parametrize("comp", [GlobalDriftCompensation(),
                                  GlobalDriftCompensation(exact_reference=True),
                                  PerColumnDriftCompensation()],
                         ids=["global", "exact-reference", "per-column"])
def test_alpha_does_not_depend_on_the_weights_units(comp):
    # A nearly empty readout (below the reference's absolute 1e-4) in weights of any scale.
    w = _weights(6, 40, seed=11)
    w_t = w * 1e-7  # a readout whose mean is below the floor: the floor decides alpha
    want = comp.alpha(w, w_t, tile_ndim=2, w_ideal=w)
    assert float(want.max()) < 1e6  # floored (without the floor alpha would be 1e7)
    for scale in (1e-30, 1e-12, 1e-8, 1e-4, 1e4, 1e8, 1e30):
        got = comp.alpha(w * scale, w_t * scale, tile_ndim=2, w_ideal=w * scale)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_batched_equals_looped():
    comp = GlobalDriftCompensation()
    w_prog = _weights(4, 3, 50, seed=3)  # [P, rows, cols]
    w_t = w_prog * torch.rand(5, 4, 1, 1, dtype=torch.float64) + 0.01 * _weights(5, 4, 3, 50)
    for tile_ndim in (1, 2):
        alpha = comp.alpha(w_prog, w_t, tile_ndim=tile_ndim)
        expected_shape = (5, 4, 3, 1) if tile_ndim == 1 else (5, 4, 1, 1)
        assert alpha.shape == expected_shape
        assert (alpha * w_t).shape == w_t.shape
        for t in range(5):
            for p in range(4):
                if tile_ndim == 2:
                    want = ref_alpha(w_prog[p].numpy(), w_t[t, p].numpy())
                    assert alpha[t, p, 0, 0].item() == pytest.approx(want, rel=1e-13)
                else:
                    for r in range(3):
                        want = ref_alpha(w_prog[p, r].numpy(), w_t[t, p, r].numpy())
                        assert alpha[t, p, r, 0].item() == pytest.approx(want, rel=1e-13)


def test_per_column_takes_one_alpha_per_output_row():
    comp = PerColumnDriftCompensation()
    w_prog = _weights(6, 40, seed=4)  # [out_features, in_features]
    scale = torch.linspace(0.5, 1.0, 6, dtype=torch.float64).reshape(6, 1)
    w_t = w_prog * scale
    alpha = comp.alpha(w_prog, w_t, tile_ndim=2)  # tile_ndim is ignored
    assert alpha.shape == (6, 1)
    torch.testing.assert_close(alpha, 1.0 / scale, rtol=1e-13, atol=0)
    # Batched over time: [T, out, in] -> [T, out, 1], each equal to the plain formula.
    w_t = w_prog * torch.tensor([1.0, 0.8, 0.5], dtype=torch.float64).reshape(3, 1, 1)
    w_t = w_t + 0.01 * _weights(3, 6, 40, seed=5)
    alpha = comp.alpha(w_prog, w_t)
    assert alpha.shape == (3, 6, 1)
    for t in range(3):
        for r in range(6):
            want = ref_alpha(w_prog[r].numpy(), w_t[t, r].numpy())
            assert alpha[t, r, 0].item() == pytest.approx(want, rel=1e-13)
    # A global alpha over the same matrix is one number, not per row.
    assert GlobalDriftCompensation().alpha(w_prog, w_t, tile_ndim=2).shape == (3, 1, 1)
    with pytest.raises(ValueError, match="out_features"):
        comp.alpha(w_prog[0], w_t[0, 0])


def test_quantisation_and_clipping():
    w_prog = torch.tensor([0.04, -0.13, 0.27, -0.61, 0.9, 0.0], dtype=torch.float64)
    w_t = 0.8 * w_prog
    comp = GlobalDriftCompensation(readout_step=0.1)
    assert not comp.is_ideal
    read_p, read_t = np.round(w_prog.numpy() / 0.1) * 0.1, np.round(w_t.numpy() / 0.1) * 0.1
    assert comp.alpha(w_prog, w_t).item() == pytest.approx(ref_alpha(read_p, read_t), rel=1e-13)
    torch.testing.assert_close(comp.readout(w_prog), torch.from_numpy(read_p))

    comp = GlobalDriftCompensation(readout_bound=0.5)
    read_p, read_t = np.clip(w_prog.numpy(), -0.5, 0.5), np.clip(w_t.numpy(), -0.5, 0.5)
    assert comp.alpha(w_prog, w_t).item() == pytest.approx(ref_alpha(read_p, read_t), rel=1e-13)

    # Both: quantise first, then clip (0.9 -> 0.9 -> 0.5; a bound off the step grid stays exact).
    comp = GlobalDriftCompensation(readout_step=0.2, readout_bound=0.5)
    read = comp.readout(w_prog).numpy()
    np.testing.assert_allclose(read, np.clip(np.round(w_prog.numpy() / 0.2) * 0.2, -0.5, 0.5))
    assert read.max() == 0.5


def test_readout_noise_is_independent_for_reference_and_time_t():
    comp = GlobalDriftCompensation(readout_noise=0.05)
    w = _weights(8, 64, seed=6)
    gen = torch.Generator().manual_seed(0)
    alpha = comp.alpha(w, w, gen)
    # Same weights, but two independent noisy readouts: alpha is not exactly 1.
    assert alpha.shape == (8, 1) and (alpha != 1.0).all()
    # Same seed, same answer; another seed, another answer.
    assert torch.equal(alpha, comp.alpha(w, w, torch.Generator().manual_seed(0)))
    assert not torch.equal(alpha, comp.alpha(w, w, torch.Generator().manual_seed(1)))


def test_readout_with_explicit_draws():
    comp = GlobalDriftCompensation(readout_noise=0.1, readout_step=0.05, readout_bound=0.3)
    w = torch.tensor([0.01, -0.2, 0.28, -0.5], dtype=torch.float64)
    z = torch.tensor([1.0, -0.5, 0.4, 2.0], dtype=torch.float64)
    expected = np.clip(np.round((w.numpy() + 0.1 * z.numpy()) / 0.05) * 0.05, -0.3, 0.3)
    np.testing.assert_allclose(comp.readout(w, z=z).numpy(), expected, rtol=1e-14)


def _expected_abs(w, s):
    """E|w + s z| for z standard normal (folded normal mean), elementwise over the array w."""
    from scipy.stats import norm

    return s * math.sqrt(2 / math.pi) * np.exp(-(w**2) / (2 * s**2)) + w * (
        1 - 2 * norm.cdf(-w / s)
    )


def test_noisy_periphery_biases_alpha_towards_one():
    # Small weights drifted to half: the ideal alpha is 2, but output noise of 0.06 dominates
    # the readout, so both means are mostly noise and alpha is pulled towards 1.
    n, repeats, noise = 10_240, 64, 0.06
    w_prog = torch.rand(n, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    w_prog = (w_prog - 0.5) * 0.2
    w_t = 0.5 * w_prog
    assert GlobalDriftCompensation().alpha(w_prog, w_t).item() == pytest.approx(2.0)

    comp = GlobalDriftCompensation(readout_noise=noise)
    alphas = comp.alpha(
        w_prog.expand(repeats, n), w_t.expand(repeats, n), torch.Generator().manual_seed(8)
    ).flatten()
    predicted = (
        _expected_abs(w_prog.numpy(), noise).mean() / _expected_abs(w_t.numpy(), noise).mean()
    )
    assert 1.0 < predicted < 1.5  # the bias is large ...
    mean, sem = alphas.mean().item(), alphas.std().item() / math.sqrt(repeats)
    assert abs(mean - predicted) < 4 * sem + 1e-3  # ... and the periphery realises it


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_inputs(dtype):
    for comp in (GlobalDriftCompensation(), GlobalDriftCompensation(0.01, 0.01, 1.0)):
        w = torch.randn(3, 10, dtype=dtype)
        assert comp.alpha(w, w * 0.9).dtype == dtype
        assert PerColumnDriftCompensation(0.01).alpha(w, w).dtype == dtype


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"readout_noise": -0.1}, "readout_noise"),
        ({"readout_noise": float("nan")}, "readout_noise"),
        ({"readout_step": -0.01}, "readout_step"),
        ({"readout_step": float("inf")}, "readout_step"),
        ({"readout_bound": 0.0}, "readout_bound"),
        ({"readout_bound": -1.0}, "readout_bound"),
        ({"readout_bound": "1"}, "readout_bound"),
    ],
)
@pytest.mark.parametrize("cls", [GlobalDriftCompensation, PerColumnDriftCompensation])
def test_validation(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_tile_ndim_validation():
    comp = GlobalDriftCompensation()
    w = torch.ones(2, 3)
    for bad in (0, 3, 1.5):
        with pytest.raises(ValueError, match="tile_ndim"):
            comp.alpha(w, w, tile_ndim=bad)


def test_is_ideal_and_repr():
    assert GlobalDriftCompensation().is_ideal and PerColumnDriftCompensation().is_ideal
    for kwargs in ({"readout_noise": 0.06}, {"readout_step": 0.01}, {"readout_bound": 1.0}):
        assert not GlobalDriftCompensation(**kwargs).is_ideal
    r = repr(PerColumnDriftCompensation(readout_noise=0.06, readout_bound=2.0))
    assert r.startswith("PerColumnDriftCompensation(") and "0.06" in r and "2.0" in r
