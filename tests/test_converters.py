"""Tests for gpuwpo.converters: round trips, known values, np.interp / sklearn agreement, errors."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LinearRegression

from gpuwpo.device.converters import (
    CustomPairConductanceConverter,
    DualPairConductanceConverter,
    FusionConductanceConverter,
    NPairConductanceConverter,
    SinglePairConductanceConverter,
    grid_interpolation,
    interpolate_programs,
)

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pair_converters():
    return [
        SinglePairConductanceConverter(),
        SinglePairConductanceConverter(g_min=3.0, g_max=20.0),
        DualPairConductanceConverter(),
        DualPairConductanceConverter([1.0, 3.0], g_min=1.0, g_max=25.0),
        NPairConductanceConverter([0.5, 1.0, 2.0, 4.0], g_min=0.5, g_max=30.0),
        # a batch of NPair converters, batch shape (2, 3)
        NPairConductanceConverter(0.2 + torch.rand(2, 3, 3, generator=_gen(1), dtype=F64)),
    ]


def _linear_program(k_w, f, g_min=0.0, g_max=25.0, L=11, x=None):
    """Decode an invertible program (docs/DESIGN.md section 4, g_err = 0, no mirroring).

    k_w ``[...]`` (uS per unit weight at M = 1), f ``[K]``, x ``[..., L, K, 2]`` in [0, 1]
    (x_g, x_delta). Returns g_lst ``[..., 2K, L]`` whose net curve is k_w * w_grid.
    """
    f = torch.as_tensor(f, dtype=F64)
    k = f.shape[0]
    k_w = torch.as_tensor(k_w, dtype=F64)
    w_grid = torch.linspace(-1.0, 1.0, L, dtype=F64)
    if x is None:
        x = torch.full((*k_w.shape, L, k, 2), 0.5, dtype=F64)
    c = k_w[..., None] * w_grid  # [..., L]
    span = f * (g_max - g_min)
    rows = []
    for j in range(k):
        rest = span[j + 1 :].sum()
        lo = torch.clamp(c - rest, min=-span[j])
        hi = torch.clamp(c + rest, max=span[j])
        x_delta = x[..., j, 1] if j < k - 1 else torch.ones_like(c)
        fd = lo + x_delta * (hi - lo)
        c = c - fd
        d = fd / f[j]
        low = g_min + d.clamp(min=0)
        gp = low + x[..., j, 0] * (g_max + d.clamp(max=0) - low)
        g_plus = gp.clamp(g_min, g_max)
        rows += [g_plus, (g_plus - d).clamp(g_min, g_max)]
    return torch.stack(rows, dim=-2)


# ------------------------------------------------------------------------------------------
# Pair converters: round trips, ranges, known values
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("conv", _pair_converters(), ids=repr)
@pytest.mark.parametrize("shape", [(17,), (6, 9), (2, 3, 4)])
def test_pair_round_trip_and_range(conv, shape):
    w = torch.randn(shape, generator=_gen(2), dtype=F64)
    g, params = conv.convert_to_conductances(w)
    batch = tuple(conv.batch_shape)
    assert g.shape == (*batch, conv.num_devices, *shape)
    assert params["scale"].shape == batch
    torch.testing.assert_close(conv.convert_back_to_weights(g, params), w.expand(*batch, *shape))
    assert g.min() >= conv.g_min and g.max() <= conv.g_max
    # one device of every pair stays at g_min: the positive one for w < 0, the negative for w > 0
    g_plus, g_minus = g.unflatten(len(batch), (-1, 2)).unbind(len(batch) + 1)
    assert torch.all(g_plus[..., w < 0] == conv.g_min)
    assert torch.all(g_minus[..., w > 0] == conv.g_min)
    # max|W| uses the whole range: sum_k f_k (g_max - g_min) at the largest weight
    span = conv.f_lst.sum(-1) * (conv.g_max - conv.g_min)
    torch.testing.assert_close(params["scale"] * w.abs().max(), span.expand(batch))


def test_pair_all_zero_weights():
    w = torch.zeros(4, 5, dtype=F64)
    conv = DualPairConductanceConverter(g_min=2.0)
    g, params = conv.convert_to_conductances(w)
    assert torch.all(g == 2.0)
    assert torch.all(conv.convert_back_to_weights(g, params) == 0)


@pytest.mark.parametrize("g_min, g_max", [(0.0, 25.0), (5.0, 25.0)])
def test_single_pair_known_values(g_min, g_max):
    w = torch.tensor([-1.0, -0.5, 0.0, 0.25, 0.5], dtype=F64)
    g, params = SinglePairConductanceConverter(g_min=g_min, g_max=g_max).convert_to_conductances(w)
    span = g_max - g_min
    assert params["scale"].item() == pytest.approx(span)
    expected_plus = g_min + span * torch.tensor([0, 0, 0, 0.25, 0.5], dtype=F64)
    expected_minus = g_min + span * torch.tensor([1, 0.5, 0, 0, 0], dtype=F64)
    torch.testing.assert_close(g, torch.stack([expected_plus, expected_minus]))


def test_dual_pair_known_values_low_significance_fills_first():
    # f = [1, 2], 0..25 uS: scale = 75 uS per unit at max|W| = 1, |W_us| = 75, 15, 22.5, 45.
    # Pair 0 takes min(|W_us|, 25); pair 1 takes (|W_us| - 25) / 2 once pair 0 is full.
    w = torch.tensor([-1.0, -0.2, 0.3, 0.6], dtype=F64)
    g, params = DualPairConductanceConverter([1.0, 2.0]).convert_to_conductances(w)
    assert params["scale"].item() == pytest.approx(75.0)
    expected = torch.tensor(
        [
            [0.0, 0.0, 22.5, 25.0],  # G+_0
            [25.0, 15.0, 0.0, 0.0],  # G-_0
            [0.0, 0.0, 0.0, 10.0],  # G+_1
            [25.0, 0.0, 0.0, 0.0],  # G-_1
        ],
        dtype=F64,
    )
    torch.testing.assert_close(g, expected)


def test_npair_batch_equals_loop():
    f = 0.1 + torch.rand(3, 2, 3, generator=_gen(3), dtype=F64)
    w = torch.randn(5, 7, generator=_gen(4), dtype=F64)
    g, params = NPairConductanceConverter(f, g_min=1.0).convert_to_conductances(w)
    for i in range(3):
        for j in range(2):
            conv = NPairConductanceConverter(f[i, j].tolist(), g_min=1.0)
            g_ij, p_ij = conv.convert_to_conductances(w)
            torch.testing.assert_close(g[i, j], g_ij)
            torch.testing.assert_close(params["scale"][i, j], p_ij["scale"])


@pytest.mark.parametrize("conv", _pair_converters()[2:], ids=repr)
def test_convert_back_with_extra_leading_dims(conv):
    w = torch.randn(4, 6, generator=_gen(5), dtype=F64)
    g, params = conv.convert_to_conductances(w)
    noisy = g + torch.randn(3, 2, *g.shape, generator=_gen(6), dtype=F64)  # [repeats, T, ...]
    back = conv.convert_back_to_weights(noisy, params)
    assert back.shape == (3, 2, *conv.batch_shape, 4, 6)
    for r in range(3):
        for t in range(2):
            torch.testing.assert_close(
                back[r, t], conv.convert_back_to_weights(noisy[r, t], params)
            )
    # and the formula itself: sum_k f_k (G+_k - G-_k) / scale, for one slice by hand
    f = params["f"].reshape(-1, conv.num_pairs)[0]
    scale = params["scale"].reshape(-1)[0]
    slice_g = noisy[1, 0].reshape(-1, conv.num_devices, 4, 6)[0]
    by_hand = sum(f[k] * (slice_g[2 * k] - slice_g[2 * k + 1]) for k in range(conv.num_pairs))
    torch.testing.assert_close(back[1, 0].reshape(-1, 4, 6)[0], by_hand / scale)


@pytest.mark.parametrize(
    "make",
    [
        SinglePairConductanceConverter,
        DualPairConductanceConverter,
        lambda: NPairConductanceConverter([1.0, 2.0, 4.0]),
        lambda: CustomPairConductanceConverter([1.0], _linear_program(20.0, [1.0])),
        FusionConductanceConverter,
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_dtype_follows_weights(make, dtype):
    conv = make()
    w = torch.randn(3, 8, generator=_gen(7)).to(dtype)
    g, params = conv.convert_to_conductances(w)
    assert g.dtype == dtype
    assert all(v.dtype == dtype for v in params.values() if isinstance(v, torch.Tensor))
    back = conv.convert_back_to_weights(g, params)
    assert back.dtype == dtype
    tol = 1e-12 if dtype == F64 else 1e-5
    torch.testing.assert_close(back, w, atol=tol, rtol=tol)


# ------------------------------------------------------------------------------------------
# Grid interpolation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("L", [2, 5, 11])
def test_grid_interpolation_matches_np_interp(L):
    m = 0.8
    w = torch.cat(
        [
            torch.empty(40, dtype=F64).uniform_(-1.2, 1.2, generator=_gen(8)),  # incl. beyond M
            torch.linspace(-m, m, L, dtype=F64),  # exactly on the grid points
        ]
    )
    tables = torch.rand(3, 4, L, generator=_gen(9), dtype=F64) * 25
    idx, frac = grid_interpolation(w, m, L)
    assert idx.dtype == torch.int64 and idx.shape == w.shape and frac.shape == w.shape
    assert idx.min() >= 0 and idx.max() <= L - 2
    assert frac.min() >= 0 and frac.max() <= 1
    out = interpolate_programs(tables, idx, frac)
    assert out.shape == (3, 4, w.numel())
    xp = np.linspace(-m, m, L)
    for i in range(3):
        for r in range(4):
            expected = np.interp(w.numpy(), xp, tables[i, r].numpy())
            np.testing.assert_allclose(out[i, r].numpy(), expected, rtol=1e-12, atol=1e-12)


def test_grid_interpolation_per_leading_index_max():
    # one grid per layer: weights [B, N], M [B]; programs [B, P, R, L] against weights [B, 1, N]
    L = 7
    w = torch.randn(2, 30, generator=_gen(10), dtype=F64)
    m = w.abs().amax(-1)
    idx, frac = grid_interpolation(w, m, L)
    tables = torch.rand(2, 3, 4, L, generator=_gen(11), dtype=F64)
    out = interpolate_programs(tables, idx[:, None], frac[:, None])
    assert out.shape == (2, 3, 4, 30)
    for b in range(2):
        xp = np.linspace(-m[b].item(), m[b].item(), L)
        for p in range(3):
            for r in range(4):
                expected = np.interp(w[b].numpy(), xp, tables[b, p, r].numpy())
                np.testing.assert_allclose(out[b, p, r].numpy(), expected, rtol=1e-12, atol=1e-12)


def test_grid_interpolation_errors():
    w = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="L"):
        grid_interpolation(w, 1.0, 1)
    with pytest.raises(ValueError, match="max_abs_weight"):
        grid_interpolation(w, torch.ones(4), 5)


# ------------------------------------------------------------------------------------------
# CustomPair
# ------------------------------------------------------------------------------------------


def test_custom_pair_matches_np_interp_reference():
    g_lst = _linear_program(30.0, [1.0, 2.0], L=9, x=torch.rand(9, 2, 2, generator=_gen(12)))
    conv = CustomPairConductanceConverter([1.0, 2.0], g_lst.tolist())
    w = torch.randn(5, 6, generator=_gen(13), dtype=F64)
    g, params = conv.convert_to_conductances(w)
    m = w.abs().max().item()
    xp = np.linspace(-m, m, 9)
    for r in range(4):
        np.testing.assert_allclose(g[r].numpy(), np.interp(w.numpy(), xp, g_lst[r].numpy()))
    net = (g_lst[0] - g_lst[1]) + 2.0 * (g_lst[2] - g_lst[3])
    assert params["scale"].item() == pytest.approx(net.abs().max().item() / m)
    torch.testing.assert_close(conv.convert_back_to_weights(g, params), w)


@pytest.mark.parametrize("batched_f", [True, False])
def test_custom_pair_batch_equals_loop(batched_f):
    L, K = 11, 2
    gen = _gen(14)
    f = (
        0.5 + torch.rand(3, 4, K, generator=gen, dtype=F64)
        if batched_f
        else torch.tensor([1.0, 3.0], dtype=F64)
    )
    g_lst = 25 * torch.rand(3, 4, 2 * K, L, generator=gen, dtype=F64)  # arbitrary programs
    w = torch.randn(2, 3, 5, generator=gen, dtype=F64)
    conv = CustomPairConductanceConverter(f, g_lst, invertibility_test=False)
    assert conv.batch_shape == (3, 4)
    g, params = conv.convert_to_conductances(w)
    assert g.shape == (3, 4, 2 * K, 2, 3, 5)
    back = conv.convert_back_to_weights(g, params)
    ok = conv.check_invertibility()
    # scale = max over the grid of |sum_k f_k (G+_k - G-_k)| / max|W|, also for programs whose
    # net curve is not symmetric
    net = (f[..., :, None] * (g_lst[..., 0::2, :] - g_lst[..., 1::2, :])).sum(-2)
    torch.testing.assert_close(params["scale"], net.abs().amax(-1) / w.abs().max())
    assert ok.shape == (3, 4) and ok.dtype == torch.bool
    for i in range(3):
        for j in range(4):
            f_ij = (f[i, j] if batched_f else f).tolist()
            one = CustomPairConductanceConverter(
                f_ij, g_lst[i, j].tolist(), invertibility_test=False
            )
            g_ij, p_ij = one.convert_to_conductances(w)
            torch.testing.assert_close(g[i, j], g_ij)
            torch.testing.assert_close(params["scale"][i, j], p_ij["scale"])
            torch.testing.assert_close(back[i, j], one.convert_back_to_weights(g_ij, p_ij))
            assert bool(ok[i, j]) == bool(one.check_invertibility())


def test_custom_pair_round_trip_batch_of_decoded_programs():
    gen = _gen(15)
    # W_us_max = (0.05 + 0.95 x_kw) * sum_k f_k (g_max - g_min), as the strategy space decodes
    k_w = (0.05 + 0.95 * torch.rand(3, 4, generator=gen, dtype=F64)) * 3 * 24.0
    x = torch.rand(3, 4, 11, 2, 2, generator=gen, dtype=F64)
    g_lst = _linear_program(k_w, [1.0, 2.0], g_min=1.0, x=x)
    conv = CustomPairConductanceConverter(torch.tensor([1.0, 2.0]), g_lst, g_min=1.0)
    assert bool(conv.check_invertibility().all())
    for shape in [(13,), (4, 5), (2, 3, 4)]:
        w = torch.randn(shape, generator=gen, dtype=F64)
        g, params = conv.convert_to_conductances(w)
        assert g.min() >= 1.0 and g.max() <= 25.0
        torch.testing.assert_close(conv.convert_back_to_weights(g, params), w.expand(3, 4, *shape))
        torch.testing.assert_close(params["scale"] * w.abs().max(), k_w)


def test_custom_pair_equal_to_dual_pair():
    # DualPair f = [1, 1]: its kink (pair 0 full) is at |w| = max/2, a grid point when L = 5,
    # so the piecewise-linear program reproduces the conductances themselves, not only W.
    dual = DualPairConductanceConverter([1.0, 1.0], g_min=2.0)
    grid_g, _ = dual.convert_to_conductances(torch.linspace(-1, 1, 5, dtype=F64))
    custom = CustomPairConductanceConverter([1.0, 1.0], grid_g.tolist(), g_min=2.0)
    w = torch.randn(6, 7, generator=_gen(16), dtype=F64)
    g_d, p_d = dual.convert_to_conductances(w)
    g_c, p_c = custom.convert_to_conductances(w)
    torch.testing.assert_close(g_c, g_d)
    torch.testing.assert_close(p_c["scale"], p_d["scale"])
    torch.testing.assert_close(custom.convert_back_to_weights(g_c, p_c), w)
    # unequal f: conductances differ between grid points, the weights still come back
    dual = DualPairConductanceConverter([1.0, 2.0])
    grid_g, _ = dual.convert_to_conductances(torch.linspace(-1, 1, 11, dtype=F64))
    custom = CustomPairConductanceConverter([1.0, 2.0], grid_g)
    g_c, p_c = custom.convert_to_conductances(w)
    torch.testing.assert_close(custom.convert_back_to_weights(g_c, p_c), w)


def test_custom_pair_invertibility():
    L = 5
    good = [[0.0, 0.0, 0.0, 5.0, 10.0], [10.0, 5.0, 0.0, 0.0, 0.0]]
    non_monotone = [[0.0, 0.0, 3.0, 5.0, 10.0], [10.0, 5.0, 0.0, 0.0, 0.0]]
    zero = [[4.0] * L, [4.0] * L]
    decreasing = [good[1], good[0]]
    CustomPairConductanceConverter([1.0], good)  # accepted
    for bad in (non_monotone, zero, decreasing):
        with pytest.raises(ValueError, match="not invertible"):
            CustomPairConductanceConverter([1.0], bad)
    # a kink between grid points cannot exist, but a curve off the line at one grid point is
    # caught even where aihwkit's 5-point test (-1, -0.5, 0, 0.5, 1) would not look
    # (grid -1, -0.8, ..., 1: the net curve is 0 instead of 1 at w = 0.2 only)
    off_grid = [[0, 0, 0, 0, 0, 0, 0, 2.0, 3, 4, 5], [5, 4, 3, 2, 1, 0, 0, 0, 0, 0, 0]]
    with pytest.raises(ValueError, match="not invertible"):
        CustomPairConductanceConverter([1.0], off_grid)
    batch = torch.tensor([good, non_monotone, zero, good, decreasing], dtype=F64)
    conv = CustomPairConductanceConverter([1.0], batch, invertibility_test=False)
    assert conv.check_invertibility().tolist() == [True, False, False, True, False]
    with pytest.raises(ValueError, match=r"3 of 5, at batch indices \[\[1\], \[2\], \[4\]\]"):
        CustomPairConductanceConverter([1.0], batch)


# ------------------------------------------------------------------------------------------
# Fusion
# ------------------------------------------------------------------------------------------


def _fusion_weights():
    w = torch.randn(6, 9, generator=_gen(17), dtype=F64)
    w[2] = 0.5  # constant row: constant conductances, zero-variance feature
    w[4] = 0.0  # all-zero row
    w[5, ::2] *= -1
    return w


def test_fusion_conductances_and_round_trip():
    conv = FusionConductanceConverter(g_max=30)
    w = torch.randn(5, 8, generator=_gen(18), dtype=F64)
    g, params = conv.convert_to_conductances(w)
    assert g.shape == (1, 5, 8) and conv.num_devices == 1
    torch.testing.assert_close(g.amax(-1), torch.full((1, 5), 30.0, dtype=F64))
    torch.testing.assert_close(g[0], w.abs() * 30.0 / w.abs().amax(-1, keepdim=True))
    torch.testing.assert_close(conv.convert_back_to_weights(g, params), w)
    w1 = torch.randn(12, generator=_gen(19), dtype=F64)  # 1-D: one row
    g1, p1 = conv.convert_to_conductances(w1)
    assert g1.max().item() == pytest.approx(30.0)
    torch.testing.assert_close(conv.convert_back_to_weights(g1, p1), w1)


def test_fusion_slope_matches_sklearn():
    conv = FusionConductanceConverter()
    w = _fusion_weights()
    g, params = conv.convert_to_conductances(w)
    assert g.min() >= 0 and g.max() <= 40.0
    noisy = (g + 2.0 * torch.randn(2, 3, *g.shape, generator=_gen(20), dtype=F64)).clamp(min=0)
    back = conv.convert_back_to_weights(noisy, params)
    assert back.shape == (2, 3, 6, 9)
    sign = torch.sign(w).numpy()
    for r in range(2):
        for t in range(3):
            for row in range(6):
                x = sign[row] * noisy[r, t, 0, row].numpy()
                coef = LinearRegression().fit(x.reshape(-1, 1), w[row].numpy()).coef_[0]
                np.testing.assert_allclose(back[r, t, row].numpy(), coef * x, atol=1e-12)
    # sklearn's answer for the zero-variance rows (constant, all zero) is slope 0
    assert torch.all(conv.convert_back_to_weights(g, params)[[2, 4]] == 0)


def test_ols_slope_zero_variance_despite_round_off():
    from gpuwpo.device.converters import _ols_slope

    # mean(7 x 0.1) != 0.1 in floating point: centring by the mean alone leaves round-off that a
    # naive cov/var turns into an arbitrary slope; a constant feature must give slope 0
    x = torch.full((2, 7), 0.1, dtype=F64)
    x[1] = 33.3
    y = torch.randn(2, 7, generator=_gen(23), dtype=F64)
    assert torch.all(_ols_slope(x, y) == 0)
    x = torch.randn(4, 7, generator=_gen(24), dtype=F64) + 100.0  # large offset, small spread
    expected = [
        LinearRegression().fit(x[i, :, None].numpy(), y[0].numpy()).coef_[0] for i in range(4)
    ]
    np.testing.assert_allclose(_ols_slope(x, y[0]).numpy(), expected, rtol=1e-9)


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SinglePairConductanceConverter(g_min=25.0, g_max=25.0), "g_min=25.0"),
        (lambda: SinglePairConductanceConverter(g_min=10.0, g_max=5.0), "smaller than g_max"),
        (lambda: DualPairConductanceConverter(g_min=-1.0), "g_min must be non-negative.*-1.0"),
        (lambda: NPairConductanceConverter(g_max=float("nan")), "g_max must be finite"),
        (lambda: DualPairConductanceConverter([1.0, 2.0, 3.0]), r"two.*\[1.0, 2.0, 3.0\]"),
        (lambda: DualPairConductanceConverter([1.0]), "two significance factors"),
        (lambda: NPairConductanceConverter([1.0, 0.0]), r"positive.*\[1.0, 0.0\]"),
        (lambda: NPairConductanceConverter([1.0, -2.0]), "positive"),
        (lambda: NPairConductanceConverter([float("nan")]), "finite"),
        (lambda: NPairConductanceConverter([]), "at least one"),
        (lambda: CustomPairConductanceConverter([1.0, 1.0], [[0, 1], [1, 0]]), "4 rows"),
        (lambda: CustomPairConductanceConverter([1.0], [[0.0], [1.0]]), "L = 1"),
        (lambda: CustomPairConductanceConverter([1.0], [[0, 1], [1]]), "same length"),
        (lambda: CustomPairConductanceConverter([1.0], [[0, float("nan")], [1, 0]]), "NaN"),
        (lambda: CustomPairConductanceConverter([1.0], [[0, -1.0], [1, 0]]), "non-negative"),
        (lambda: CustomPairConductanceConverter([0.0], [[0, 1.0], [1, 0]]), "positive"),
        (
            lambda: CustomPairConductanceConverter(torch.ones(3, 1), torch.ones(4, 2, 5)),
            "broadcast",
        ),
        (lambda: FusionConductanceConverter(g_max=5), "within \\[10, 40\\].*5"),
        (lambda: FusionConductanceConverter(g_max=45.0), "45.0"),
    ],
)
def test_constructor_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "conv",
    [
        SinglePairConductanceConverter(),
        NPairConductanceConverter([1.0, 2.0, 3.0]),
        CustomPairConductanceConverter([1.0], [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]),
        FusionConductanceConverter(),
    ],
    ids=repr,
)
def test_conversion_errors(conv):
    for bad in (float("nan"), float("inf"), -float("inf")):
        w = torch.randn(3, 4, generator=_gen(21))
        w[1, 2] = bad
        with pytest.raises(ValueError, match="finite"):
            conv.convert_to_conductances(w)
    with pytest.raises(ValueError, match="empty"):
        conv.convert_to_conductances(torch.zeros(0, 3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        conv.convert_to_conductances([[0.1, 0.2]])
    g, params = conv.convert_to_conductances(torch.randn(3, 4, generator=_gen(22)))
    with pytest.raises(ValueError, match="shape"):
        conv.convert_back_to_weights(g[..., :3], params)  # weight axes do not match
    with pytest.raises(ValueError, match="shape"):
        conv.convert_back_to_weights(torch.cat([g, g], dim=-3), params)  # wrong device count
    with pytest.raises(ValueError, match="params must hold"):
        conv.convert_back_to_weights(g, {})
