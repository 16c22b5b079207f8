"""Tests of the PCM device model (gpuwpo/noise.py) against transcriptions of docs/DESIGN.md 2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gpuwpo.device.noise import CustomDriftPCMLikeNoiseModel, PCMLikeNoiseModel

DEFAULT_C = (0.26348, 1.9650, -1.1731)

# 0, tiny (every clip engaged), mid-range, exactly g_max, above g_max (sigma_prog turns negative).
G_VALUES = [0.0, 1e-9, 1e-4, 0.01, 0.2, 0.5, 3.0, 12.5, 24.0, 25.0, 30.0, 60.0]


# ------------------------------------------------------------------------------------------
# plain-Python transcriptions of the formulas (one element at a time, float64)
def ref_prog(g, z, c, g_max, g_ref, scale):
    x = g / g_max
    sigma = (c[0] + c[1] * x + c[2] * x**2) * g_max / g_ref
    return max(0.0, g + scale * sigma * z)


def ref_mu_sigma(g, g_max):
    g_rel = max(abs(g) / g_max, 1e-7)
    mu = min(max(-0.0155 * math.log(g_rel) + 0.0244, 0.049), 0.1)
    sigma = min(max(-0.0125 * math.log(g_rel) - 0.0059, 0.008), 0.045)
    return mu, sigma


def ref_nu(g, z, g_max, drift_scale):
    mu, sigma = ref_mu_sigma(g, g_max)
    return abs(mu + sigma * z) * drift_scale


def ref_drift(g_p, nu, t, z, g_max, t_0, t_read, read_scale):
    tp = t + t_0
    g_d = g_p * (tp / t_0) ** (-nu) if tp > t_0 else g_p
    q = min(0.2, 0.0088 / max((abs(g_p) / g_max) ** 0.65, 1e-3))
    sigma_read = q * math.sqrt(math.log((tp + t_read) / (2 * t_read)))
    return max(0.0, g_d + abs(g_d) * read_scale * sigma_read * z)


def _t64(values):
    return torch.tensor(values, dtype=torch.float64)


MODEL_CASES = [
    ({}, DEFAULT_C, 25.0, 25.0),
    ({"g_max": 40.0}, DEFAULT_C, 40.0, 25.0),
    ({"prog_coeff": [0.5, 1.0, -0.3], "g_max": 40.0}, (0.5, 1.0, -0.3), 40.0, 40.0),
    (
        {"prog_coeff": (0.5, 1.0, -0.3), "g_max": 40.0, "prog_coeff_g_max_reference": 10.0},
        (0.5, 1.0, -0.3),
        40.0,
        10.0,
    ),
    ({"prog_noise_scale": 2.5, "read_noise_scale": 0.3, "drift_scale": 1.7}, DEFAULT_C, 25.0, 25.0),
]


# ------------------------------------------------------------------------------------------
# exact formulas with explicit draws
@pytest.mark.parametrize("kwargs,coeff,g_max,g_ref", MODEL_CASES)
def test_programming_noise_matches_formula(kwargs, coeff, g_max, g_ref):
    model = PCMLikeNoiseModel(**kwargs)
    assert model.prog_coeff == pytest.approx(coeff)
    assert model.g_ref == g_ref
    assert model.prog_coeff_g_max_reference == g_ref
    rng = np.random.default_rng(1)
    g = np.array(G_VALUES + [g_max, 2 * g_max])
    z = rng.standard_normal(g.size)
    z[0], z[1] = -3.0, -50.0  # push tiny conductances below zero: the clamp must engage
    out = model.apply_programming_noise_to_conductance(_t64(g), z=_t64(z))
    expected = [
        ref_prog(gi, zi, coeff, g_max, g_ref, model.prog_noise_scale) for gi, zi in zip(g, z)
    ]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-13, atol=1e-15)
    assert (out >= 0).all() and out[1] == 0.0


@pytest.mark.parametrize("kwargs,coeff,g_max,g_ref", MODEL_CASES)
def test_drift_coefficients_match_formula(kwargs, coeff, g_max, g_ref):
    model = PCMLikeNoiseModel(**kwargs)
    rng = np.random.default_rng(2)
    g = np.array(G_VALUES + [g_max, -5.0])  # |g| is used, so a negative g is legal
    z = rng.standard_normal(g.size)
    z[3] = -10.0  # mu + sigma z < 0: the |.| must fold it back
    mu, sigma = model.drift_mean_std(_t64(g))
    expected = [ref_mu_sigma(gi, g_max) for gi in g]
    np.testing.assert_allclose(mu.numpy(), [e[0] for e in expected], rtol=1e-13)
    np.testing.assert_allclose(sigma.numpy(), [e[1] for e in expected], rtol=1e-13)
    nu = model.generate_drift_coefficients(_t64(g), z=_t64(z))
    expected_nu = [ref_nu(gi, zi, g_max, model.drift_scale) for gi, zi in zip(g, z)]
    np.testing.assert_allclose(nu.numpy(), expected_nu, rtol=1e-13)
    # The clips are engaged at both ends (otherwise this test would not cover them).
    assert mu[1] == 0.1 and sigma[1] == 0.045
    assert mu[-3] == 0.049 and sigma[-3] == 0.008


@pytest.mark.parametrize("kwargs,coeff,g_max,g_ref", MODEL_CASES)
@pytest.mark.parametrize("t", [0.0, 1.0, 25.0, 3600.0, 3.15e7])
def test_drift_and_read_noise_match_formula(kwargs, coeff, g_max, g_ref, t):
    model = PCMLikeNoiseModel(**kwargs)
    rng = np.random.default_rng(3)
    # Around g_cap = g_max (0.044)^(1/0.65), below which Q is capped (the fused path floors
    # g at half of it before its logarithm): on both sides of the cap and of the floor.
    g_cap = g_max * 0.044 ** (1 / 0.65)
    g_p = np.array(G_VALUES + [g_max] + [g_cap * k for k in (0.3, 0.49, 0.51, 0.9, 0.999,
                                                              1.001, 1.1, 2.0)])
    nu = rng.uniform(0.0, 0.6, g_p.size)  # large nu: Q from g_p and from g_d would differ
    z = rng.standard_normal(g_p.size)
    z[len(G_VALUES) - 1] = -200.0  # drive one conductance below zero: the final clamp must engage
    expected = [
        ref_drift(gi, ni, t, zi, g_max, model.t_0, model.t_read, model.read_noise_scale)
        for gi, ni, zi in zip(g_p, nu, z)
    ]
    out = model.apply_drift_noise_to_conductance(_t64(g_p), _t64(nu), t, z=_t64(z))
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-15)
    # A tensor time gives the same numbers as a float time.
    out_tensor_t = model.apply_drift_noise_to_conductance(
        _t64(g_p), _t64(nu), torch.tensor(t, dtype=torch.float64), z=_t64(z)
    )
    np.testing.assert_allclose(out_tensor_t.numpy(), expected, rtol=1e-12, atol=1e-15)


def test_custom_t0_and_t_read_enter_the_formula():
    model = PCMLikeNoiseModel(t_0=5.0, t_read=1e-6, g_max=10.0)
    g_p, nu, z = np.array([1.0, 4.0, 9.0]), np.array([0.05, 0.1, 0.2]), np.array([0.3, -1.2, 2.0])
    out = model.apply_drift_noise_to_conductance(_t64(g_p), _t64(nu), 100.0, z=_t64(z))
    expected = [ref_drift(a, b, 100.0, c, 10.0, 5.0, 1e-6, 1.0) for a, b, c in zip(g_p, nu, z)]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)


def test_zero_time_means_no_drift():
    model = PCMLikeNoiseModel(read_noise_scale=0.0)
    g_p = torch.linspace(0.0, 25.0, 11, dtype=torch.float64)
    nu = torch.full_like(g_p, 0.5)
    torch.testing.assert_close(model.apply_drift_noise_to_conductance(g_p, nu, 0.0), g_p)
    # Tensor times: t <= 0 (t' <= t_0) leaves g_p as it is; (t'/t_0)^-nu would amplify it.
    t = torch.tensor([0.0, -5.0, 100.0], dtype=torch.float64).reshape(3, 1)
    out = model.apply_drift_noise_to_conductance(g_p, nu, t)
    torch.testing.assert_close(out[0], g_p, rtol=0, atol=0)
    torch.testing.assert_close(out[1], g_p, rtol=0, atol=0)
    torch.testing.assert_close(out[2], g_p * (120.0 / 20.0) ** -0.5)
    # Read noise is still present at t = 0 (t' = t_0 > 0).
    noisy = PCMLikeNoiseModel().apply_drift_noise_to_conductance(
        g_p, nu, 0.0, z=torch.ones_like(g_p)
    )
    assert (noisy[1:] > g_p[1:]).all()


def test_zero_scales_switch_noise_off():
    model = PCMLikeNoiseModel(prog_noise_scale=0.0, read_noise_scale=0.0, drift_scale=0.0)
    g = torch.rand(50, dtype=torch.float64) * 25
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(model.apply_programming_noise_to_conductance(g, gen), g)
    nu = model.generate_drift_coefficients(g, gen)
    assert torch.equal(nu, torch.zeros_like(g))
    assert torch.allclose(model.apply_drift_noise_to_conductance(g, nu, 1e6, gen), g)


def test_negative_float_time_is_rejected():
    model = PCMLikeNoiseModel()
    with pytest.raises(ValueError, match="t_inference"):
        model.apply_drift_noise_to_conductance(torch.ones(3), torch.ones(3) * 0.05, -1.0)


# ------------------------------------------------------------------------------------------
# shapes, broadcasting, dtypes, generators
def test_tensor_time_broadcasts_over_batch_dims():
    model = PCMLikeNoiseModel()
    gen = torch.Generator().manual_seed(4)
    g_p = torch.rand(4, 8, generator=gen, dtype=torch.float64) * 25  # [2K, N]
    nu = model.generate_drift_coefficients(g_p, gen)
    t = torch.tensor([0.0, 1.0, 3600.0], dtype=torch.float64).reshape(3, 1, 1)  # [T, 1, 1]
    out = model.apply_drift_noise_to_conductance(g_p, nu, t, gen)
    assert out.shape == (3, 4, 8)
    # The slices are the per-time calls with the same draws.
    z = torch.randn(3, 4, 8, generator=gen, dtype=torch.float64)
    out = model.apply_drift_noise_to_conductance(g_p, nu, t, z=z)
    for i, ti in enumerate([0.0, 1.0, 3600.0]):
        one = model.apply_drift_noise_to_conductance(g_p, nu, ti, z=z[i])
        torch.testing.assert_close(out[i], one, rtol=1e-12, atol=0)
    # Batch dims on nu as well: [P, 2K, N] nu against [T, 1, 1, 1] times.
    nu_p = model.generate_drift_coefficients(g_p.expand(5, 4, 8), gen)
    out = model.apply_drift_noise_to_conductance(g_p, nu_p, t.reshape(3, 1, 1, 1), gen)
    assert out.shape == (3, 5, 4, 8)
    assert not torch.equal(out[1, 0], out[1, 1])  # independent draws per candidate


def test_batch_inputs_keep_shape_and_draw_independently():
    model = PCMLikeNoiseModel()
    gen = torch.Generator().manual_seed(5)
    g = torch.full((2, 3, 4, 5), 10.0)
    gp = model.apply_programming_noise_to_conductance(g, gen)
    nu = model.generate_drift_coefficients(g, gen)
    assert gp.shape == nu.shape == g.shape
    assert gp.unique().numel() == g.numel() and nu.unique().numel() == g.numel()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_follows_input_dtype(dtype):
    model = CustomDriftPCMLikeNoiseModel(
        {"g_lst": [0.0, 25.0], "nu_mean_lst": [0.1, 0.05], "nu_std_lst": [0.02, 0.01]}
    )
    for m in (PCMLikeNoiseModel(), model):
        g = torch.linspace(0, 25, 7, dtype=dtype)
        z64 = torch.ones(7, dtype=torch.float64)  # the draws' dtype must not promote
        assert m.apply_programming_noise_to_conductance(g).dtype == dtype
        assert m.apply_programming_noise_to_conductance(g, z=z64).dtype == dtype
        nu = m.generate_drift_coefficients(g, z=z64)
        assert nu.dtype == dtype and all(x.dtype == dtype for x in m.drift_mean_std(g))
        assert m.apply_drift_noise_to_conductance(g, nu, 10.0).dtype == dtype
        t = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
        assert m.apply_drift_noise_to_conductance(g, nu, t).dtype == dtype


def test_float32_agrees_with_float64():
    model = PCMLikeNoiseModel()
    g = torch.linspace(0, 30, 31, dtype=torch.float64)
    z = torch.randn(31, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    t = torch.tensor([[3.15e7]], dtype=torch.float64)
    for dtype in (torch.float32,):
        a = model.apply_drift_noise_to_conductance(g, 0.05 + 0 * g, t, z=z)
        b = model.apply_drift_noise_to_conductance(g.to(dtype), 0.05 + 0 * g.to(dtype), t, z=z)
        torch.testing.assert_close(b.double(), a, rtol=1e-5, atol=1e-5)


def test_same_seed_same_draws():
    model = PCMLikeNoiseModel()
    g = torch.rand(100) * 25

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        gp = model.apply_programming_noise_to_conductance(g, gen)
        nu = model.generate_drift_coefficients(g, gen)
        return model.apply_drift_noise_to_conductance(gp, nu, 100.0, gen)

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_prepared_step_equals_the_three_methods():
    table = {"g_lst": [0.0, 5.0, 25.0], "nu_mean_lst": [0.1, 0.06, 0.04], "nu_std_lst": [0.03] * 3}
    for model in (
        PCMLikeNoiseModel(prog_noise_scale=1.3, drift_scale=0.8),
        CustomDriftPCMLikeNoiseModel(table),
    ):
        gen = torch.Generator().manual_seed(9)
        g = torch.rand(2, 4, 16, generator=gen, dtype=torch.float64) * 30.0
        # Zeros, and both sides of g_cap (below it Q is capped; the fused path floors g at
        # half of it before its logarithm) and of that floor.
        g_cap = model.g_max * 0.044 ** (1 / 0.65)
        g.view(-1)[:10] = torch.tensor([0.0, 0.0, 1e-9, 0.3 * g_cap, 0.49 * g_cap, 0.51 * g_cap,
                                        0.9 * g_cap, 0.999 * g_cap, 1.001 * g_cap, 2 * g_cap])
        z1, z2, z3 = (torch.randn(2, 4, 16, generator=gen, dtype=torch.float64) for _ in range(3))
        prepared = model.prepare_targets(g)
        for t in (0.0, 3600.0):
            g_prog, g_t = model.program_drift_read_step(prepared, t, z1, z2, z3)
            want_prog = model.apply_programming_noise_to_conductance(g, z=z1)
            nu = model.generate_drift_coefficients(g, z=z2)
            want_t = model.apply_drift_noise_to_conductance(want_prog, nu, t, z=z3)
            torch.testing.assert_close(g_prog, want_prog, rtol=1e-15, atol=0)
            torch.testing.assert_close(g_t, want_t, rtol=1e-15, atol=0)
        # Drawn from the generator when no z is given: reproducible per seed.
        a = model.program_drift_read_step(
            prepared, 10.0, generator=torch.Generator().manual_seed(1)
        )
        b = model.program_drift_read_step(
            prepared, 10.0, generator=torch.Generator().manual_seed(1)
        )
        assert all(torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------------------------------
# statistics with the model's own draws
N_STAT = 200_000


def test_programming_noise_statistics():
    model = PCMLikeNoiseModel(g_max=40.0)
    g = torch.full((N_STAT,), 10.0, dtype=torch.float64)
    gp = model.apply_programming_noise_to_conductance(g, torch.Generator().manual_seed(10))
    x = 10.0 / 40.0
    sigma = (DEFAULT_C[0] + DEFAULT_C[1] * x + DEFAULT_C[2] * x**2) * 40.0 / 25.0
    r = ((gp - g) / sigma).numpy()
    assert abs(r.mean()) < 4 / math.sqrt(N_STAT)
    assert abs(r.std() - 1.0) < 4 / math.sqrt(2 * N_STAT)


def _folded_normal_mean(mu, sigma):
    phi = 0.5 * math.erfc(mu / (sigma * math.sqrt(2)))  # P(mu + sigma z < 0)
    return sigma * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * sigma**2)) + mu * (1 - 2 * phi)


@pytest.mark.parametrize("g_value", [0.05, 2.0, 25.0])
def test_drift_coefficient_is_folded_normal(g_value):
    model = PCMLikeNoiseModel(drift_scale=1.5)
    g = torch.full((N_STAT,), g_value, dtype=torch.float64)
    nu = model.generate_drift_coefficients(g, torch.Generator().manual_seed(11)).numpy()
    mu, sigma = ref_mu_sigma(g_value, 25.0)
    mean = 1.5 * _folded_normal_mean(mu, sigma)
    second_moment = 1.5**2 * (mu**2 + sigma**2)  # folding leaves E[nu^2] unchanged
    assert (nu >= 0).all()
    assert abs(nu.mean() - mean) < 4 * nu.std() / math.sqrt(N_STAT)
    assert abs((nu**2).mean() - second_moment) < 4 * (nu**2).std() / math.sqrt(N_STAT)


def test_read_noise_statistics():
    model = PCMLikeNoiseModel()
    g_p = torch.full((N_STAT,), 5.0, dtype=torch.float64)
    nu = torch.zeros_like(g_p)
    t = 3600.0
    g_t = model.apply_drift_noise_to_conductance(g_p, nu, t, torch.Generator().manual_seed(12))
    sigma_read = (0.0088 / (5.0 / 25.0) ** 0.65) * math.sqrt(
        math.log((t + 20.0 + 250e-9) / (2 * 250e-9))
    )
    r = ((g_t - g_p) / (g_p * sigma_read)).numpy()
    assert abs(r.mean()) < 4 / math.sqrt(N_STAT)
    assert abs(r.std() - 1.0) < 4 / math.sqrt(2 * N_STAT)


# ------------------------------------------------------------------------------------------
# custom drift tables
def test_custom_table_interpolates_like_np_interp():
    table = {
        "g_lst": [0.5, 2.0, 2.5, 10.0, 20.0],
        "nu_mean_lst": [0.09, 0.07, 0.08, 0.05, 0.03],
        "nu_std_lst": [0.03, 0.02, 0.025, 0.01, 0.0],
    }
    model = CustomDriftPCMLikeNoiseModel(table, g_max=20.0, drift_scale=0.7)
    assert model.is_custom_drift and not PCMLikeNoiseModel().is_custom_drift
    # Outside the table (clipped), on the nodes, between nodes.
    g = np.array([0.0, 0.5, 1.0, 2.0, 2.2, 2.5, 7.3, 10.0, 19.9, 20.0, 35.0])
    mu, sigma = model.drift_mean_std(_t64(g).reshape(1, -1, 1))
    assert mu.shape == (1, g.size, 1)
    np.testing.assert_allclose(
        mu.flatten().numpy(), np.interp(g, table["g_lst"], table["nu_mean_lst"]), rtol=1e-13
    )
    np.testing.assert_allclose(
        sigma.flatten().numpy(), np.interp(g, table["g_lst"], table["nu_std_lst"]), atol=1e-15
    )
    z = np.linspace(-3, 3, g.size)
    nu = model.generate_drift_coefficients(_t64(g), z=_t64(z)).numpy()
    expected = 0.7 * np.abs(
        np.interp(g, table["g_lst"], table["nu_mean_lst"])
        + np.interp(g, table["g_lst"], table["nu_std_lst"]) * z
    )
    np.testing.assert_allclose(nu, expected, rtol=1e-13)


def test_custom_table_sampling_default_curves_equals_default_model():
    default = PCMLikeNoiseModel()
    g_tab = torch.linspace(0.0, 25.0, 4001, dtype=torch.float64)
    mu_tab, sigma_tab = default.drift_mean_std(g_tab)
    custom = CustomDriftPCMLikeNoiseModel(
        {"g_lst": g_tab.tolist(), "nu_mean_lst": mu_tab.tolist(), "nu_std_lst": sigma_tab.tolist()}
    )
    gen = torch.Generator().manual_seed(13)
    g = torch.rand(3, 1000, generator=gen, dtype=torch.float64) * 25.0
    z = torch.randn(3, 1000, generator=gen, dtype=torch.float64)
    # Linear interpolation of the log-shaped curves on a 6.25 nS grid: error below 2e-4.
    for a, b in zip(custom.drift_mean_std(g), default.drift_mean_std(g)):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-4)
    torch.testing.assert_close(
        custom.generate_drift_coefficients(g, z=z),
        default.generate_drift_coefficients(g, z=z),
        rtol=0,
        atol=1e-3,
    )
    # Programming and read noise are inherited unchanged.
    torch.testing.assert_close(
        custom.apply_programming_noise_to_conductance(g, z=z),
        default.apply_programming_noise_to_conductance(g, z=z),
    )


# ------------------------------------------------------------------------------------------
# validation
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"g_max": 0.0}, "g_max"),
        ({"g_max": -25.0}, "g_max"),
        ({"g_max": float("nan")}, "g_max"),
        ({"t_read": 0.0}, "t_read"),
        ({"t_0": 0.0}, "t_0"),
        ({"t_0": -1.0}, "t_0"),
        ({"prog_noise_scale": -0.1}, "prog_noise_scale"),
        ({"read_noise_scale": -1.0}, "read_noise_scale"),
        ({"drift_scale": -1.0}, "drift_scale"),
        ({"drift_scale": float("inf")}, "drift_scale"),
        ({"prog_coeff": [0.1, 0.2]}, "prog_coeff"),
        ({"prog_coeff": [0.1, 0.2, 0.3, 0.4]}, "prog_coeff"),
        ({"prog_coeff": [0.1, float("nan"), 0.3]}, r"prog_coeff\[1\]"),
        ({"prog_coeff": "abc"}, "prog_coeff"),
        ({"prog_coeff_g_max_reference": 0.0}, "prog_coeff_g_max_reference"),
        ({"g_max": "25"}, "g_max"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PCMLikeNoiseModel(**kwargs)
    table = {"g_lst": [0.0, 25.0], "nu_mean_lst": [0.1, 0.05], "nu_std_lst": [0.02, 0.01]}
    with pytest.raises(ValueError, match=match):
        CustomDriftPCMLikeNoiseModel(table, **kwargs)


GOOD = {"g_lst": [0.0, 10.0, 25.0], "nu_mean_lst": [0.1, 0.06, 0.05], "nu_std_lst": [0.02] * 3}


@pytest.mark.parametrize(
    "change,match",
    [
        ({"g_lst": None}, "missing"),
        ({"nu_std_lst": None}, "missing"),
        ({"nu_mean_lst": [0.1, 0.06]}, "same length"),
        ({"g_lst": [0.0], "nu_mean_lst": [0.1], "nu_std_lst": [0.01]}, "at least 2"),
        ({"g_lst": [0.0, 25.0, 10.0]}, "ascending"),
        ({"g_lst": [0.0, 10.0, 10.0]}, "ascending"),
        ({"g_lst": [-1.0, 10.0, 25.0]}, ">= 0"),
        ({"nu_std_lst": [0.02, -0.01, 0.02]}, "nu_std_lst"),
        ({"nu_mean_lst": [0.1, float("nan"), 0.05]}, "non-finite"),
        ({"g_lst": [0.0, 10.0, float("inf")]}, "non-finite"),
        ({"nu_mean_lst": ["a", 0.06, 0.05]}, "list of numbers"),
    ],
)
def test_custom_table_validation(change, match):
    table = {**GOOD, **change}
    table = {k: v for k, v in table.items() if v is not None}
    with pytest.raises(ValueError, match=match):
        CustomDriftPCMLikeNoiseModel(table)


def test_custom_table_must_be_a_mapping():
    with pytest.raises(ValueError, match="dict"):
        CustomDriftPCMLikeNoiseModel([[0.0, 25.0], [0.1, 0.05], [0.02, 0.01]])


def test_repr_names_the_parameters():
    r = repr(PCMLikeNoiseModel(g_max=40.0, drift_scale=0.5))
    assert r.startswith("PCMLikeNoiseModel(") and "g_max=40.0" in r and "drift_scale=0.5" in r
    assert "g_lst" in repr(CustomDriftPCMLikeNoiseModel(GOOD))


# ------------------------------------------------------------------------------------------
# the fused hot path: in place, with work buffers, bit for bit the out-of-place sequence
def _targets_with_edges(model, shape=(2, 3, 4, 64), seed=21) -> torch.Tensor:
    """float32 targets with zeros and both sides of the read noise's cap and floor."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.rand(shape, generator=gen) * 30.0
    g_cap = model.g_max * 0.044 ** (1 / 0.65)
    g.view(-1)[:11] = torch.tensor([0.0, 0.0, 1e-9, 0.3 * g_cap, 0.49 * g_cap, 0.51 * g_cap,
                                    0.9 * g_cap, 0.999 * g_cap, 1.001 * g_cap, 2 * g_cap, 25.0])
    return g


def _out_of_place_step(model, g, z1, z2, z3, t):
    """The fused path's operations as they were written before it went in place: one new
    tensor per operation, in the same order (the specification of its numbers, float32)."""
    if isinstance(model, CustomDriftPCMLikeNoiseModel):
        mu, sigma = model.drift_mean_std(g)
    else:
        log_g_rel = torch.log(torch.clamp(g.abs() / model.g_max, min=1e-7))
        mu = torch.clamp(-0.0155 * log_g_rel + 0.0244, min=0.049, max=0.1)
        sigma = torch.clamp(-0.0125 * log_g_rel - 0.0059, min=0.008, max=0.045)
    c0, c1, c2 = model.prog_coeff
    x = g / model.g_max
    std = model.prog_noise_scale * ((c0 + x * (c1 + x * c2)) * (model.g_max / model.g_ref))
    g_p = torch.addcmul(g, std, z1).clamp_(min=0.0)
    nu = torch.addcmul(mu, sigma, z2).abs_()
    nu = nu if model.drift_scale == 1.0 else nu.mul_(model.drift_scale)
    log_ratio = math.log1p(t / model.t_0)
    read_factor = math.sqrt(math.log((t + model.t_0 + model.t_read) / (2.0 * model.t_read)))
    g_d = torch.mul(nu, -log_ratio).exp_() * g_p
    c = 0.0088 * model.g_max**0.65
    g_floor = 0.5 * (c / 0.2) ** (1.0 / 0.65)
    q = torch.clamp(g_p, min=g_floor).log_().mul_(-0.65).exp_().clamp_(max=0.2 / c) * z3
    g_t = (q.mul_(read_factor * (model.read_noise_scale * c)).add_(1.0) * g_d).clamp_(min=0.0)
    return g_p, g_t


@pytest.mark.parametrize("model", [
    PCMLikeNoiseModel(),
    PCMLikeNoiseModel(prog_noise_scale=1.3, drift_scale=0.8, read_noise_scale=0.7, g_max=40.0),
    CustomDriftPCMLikeNoiseModel({"g_lst": [0.0, 5.0, 25.0], "nu_mean_lst": [0.1, 0.06, 0.04],
                                  "nu_std_lst": [0.03, 0.02, 0.01]}),
], ids=["default", "scaled", "custom-drift"])
def test_fused_path_is_the_out_of_place_sequence_bit_for_bit(model):
    g = _targets_with_edges(model)
    gen = torch.Generator().manual_seed(5)
    # Shared draws (size-1 candidate axis), as the objective's common random numbers give them.
    z1, z2, z3 = (torch.randn(2, 1, 4, 64, generator=gen) for _ in range(3))
    prepared = model.prepare_targets(g)
    work = [torch.empty_like(g) for _ in range(3)]
    for t in (0.0, 1.0, 3600.0, 3.2e7):
        want_prog, want_t = _out_of_place_step(model, g, z1, z2, z3, t)
        for buffers in (None, work):
            out = (None,) * 3 if buffers is None else buffers
            g_p = model.program(prepared, z1, out=out[0])
            nu = model.drift_coefficients(prepared, z2, out=out[1])
            g_t = model.drift_and_read(g_p, nu, t, z3, out=out[2], overwrite=True)
            assert torch.equal(g_p, want_prog) and torch.equal(g_t, want_t)
            if buffers is not None:  # the results live in the caller's buffers
                assert g_p.data_ptr() == work[0].data_ptr()
                assert g_t.data_ptr() == work[2].data_ptr()
        # Without overwrite the caller's nu is left as it was.
        nu = model.drift_coefficients(prepared, z2)
        kept = nu.clone()
        model.drift_and_read(model.program(prepared, z1), nu, t, z3)
        assert torch.equal(nu, kept)
    # Negative control: the same formula with another, mathematically equal order of operations
    # (q as a power instead of exp(-0.65 ln g)) differs at float32 rounding: the comparison
    # above sees rounding, not just formulas.
    g_p, want_t = _out_of_place_step(model, g, z1, z2, z3, 3600.0)
    nu = torch.addcmul(prepared.drift_mu, prepared.drift_sigma, z2).abs_()
    nu = nu if model.drift_scale == 1.0 else nu.mul_(model.drift_scale)
    c = 0.0088 * model.g_max**0.65
    q = torch.pow(torch.clamp(g_p, min=0.5 * (c / 0.2) ** (1 / 0.65)), -0.65).clamp_(max=0.2 / c)
    rf = math.sqrt(math.log((3600.0 + model.t_0 + model.t_read) / (2.0 * model.t_read)))
    other = (torch.exp(-math.log1p(3600.0 / model.t_0) * nu) * g_p
             * (1.0 + q * z3 * (rf * model.read_noise_scale * c))).clamp_(min=0.0)
    torch.testing.assert_close(other, want_t, rtol=1e-5, atol=1e-6)
    assert not torch.equal(other, want_t)


def test_buffers_that_do_not_fit_are_not_used():
    """A work buffer of the wrong shape or dtype, or one that is an input, is ignored: the
    result is a new tensor with the same values."""
    model = PCMLikeNoiseModel()
    g = _targets_with_edges(model, shape=(1, 2, 4, 16))
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(1, 2, 4, 16, generator=gen)
    prepared = model.prepare_targets(g)
    want = model.program(prepared, z)
    for bad in (torch.empty(1, 2, 4, 15), torch.empty(1, 2, 4, 16, dtype=torch.float64), g):
        before = bad.clone()
        got = model.program(prepared, z, out=bad)
        assert torch.equal(got, want) and got.data_ptr() != bad.data_ptr()
        assert torch.equal(bad, before)


def test_generic_path_ignores_buffers_and_keeps_nu():
    """A model whose physics methods are overridden takes the generic path: the buffers and
    ``overwrite`` change nothing there, and its own formulas are used."""

    class Doubled(PCMLikeNoiseModel):
        def apply_drift_noise_to_conductance(self, g_prog, nu, t_inference, generator=None, *,
                                             z=None):
            return 2.0 * super().apply_drift_noise_to_conductance(g_prog, nu, t_inference,
                                                                  generator, z=z)

    model, plain = Doubled(), PCMLikeNoiseModel()
    g = _targets_with_edges(model, shape=(1, 1, 4, 32))
    gen = torch.Generator().manual_seed(8)
    z1, z2, z3 = (torch.randn(1, 1, 4, 32, generator=gen) for _ in range(3))
    prepared = model.prepare_targets(g)
    g_p = model.program(prepared, z1)
    nu = model.drift_coefficients(prepared, z2)
    kept = nu.clone()
    out = torch.full_like(g, -1.0)
    g_t = model.drift_and_read(g_p, nu, 3600.0, z3, out=out, overwrite=True)
    assert torch.equal(nu, kept) and torch.all(out == -1.0)
    want = 2.0 * plain.apply_drift_noise_to_conductance(g_p, kept, 3600.0, z=z3)
    assert torch.equal(g_t, want)


def test_time_check_is_traceable_and_still_refuses_bad_times():
    model = PCMLikeNoiseModel()
    g = torch.full((4,), 10.0)
    nu = torch.full((4,), 0.05)
    z = torch.zeros(4)
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="t_inference"):
            model.drift_and_read(g, nu.clone(), bad, z)
    with pytest.raises(ValueError, match="t_inference"):
        model.drift_and_read(g, nu.clone(), True, z)
    # An int time is a time: the same result as the float.
    assert torch.equal(model.drift_and_read(g, nu.clone(), 60, z),
                       model.drift_and_read(g, nu.clone(), 60.0, z))
