"""Tests of gpuwpo.search.strategy.StrategySpace against a scalar transcription of docs/DESIGN.md
4."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from gpuwpo.search.strategy import StrategySpace


def decode_scalar(x, f_lst, m, *, g_min, g_max, nbins, symmetric, g_err, f_min, f_max,
                  use_max_kw):
    """docs/DESIGN.md section 4 for one candidate, in Python floats and loops (the spec)."""
    x = list(x)
    f = list(f_lst)
    for k in range(len(f)):
        if f[k] is None:
            f[k] = f_min + x.pop(0) * (f_max - f_min)
    x_kw = 1.0 if use_max_kw else x.pop(0)
    n_pairs = len(f)
    span = [f_k * (g_max - g_min) for f_k in f]
    w_us_max = (0.05 + 0.95 * x_kw) * sum(span)
    k_w = w_us_max / m
    grid_len = 2 * nbins - 1
    n = nbins if symmetric else grid_len
    assert len(x) == n * (2 * n_pairs - 1)
    blocks = [x[b * n:(b + 1) * n] for b in range(2 * n_pairs - 1)]
    w_grid = [-m + 2.0 * m * i / (grid_len - 1) for i in range(grid_len)]
    g = [[None] * grid_len for _ in range(2 * n_pairs)]
    for i in range(n):
        c = k_w * w_grid[i]
        for j in range(n_pairs):
            rest = sum(span[j + 1:])
            lo = max(c - rest, -span[j])
            hi = min(c + rest, span[j])
            x_delta = blocks[2 * j + 1][i] if j < n_pairs - 1 else 1.0
            fd = lo + x_delta * (hi - lo)
            c = c - fd
            d = fd / f[j]
            low = g_min + max(d, 0.0) - g_err
            high = g_max + min(d, 0.0) + g_err
            gp = low + blocks[2 * j][i] * (high - low)
            gp = min(max(gp, g_min), g_max)
            gm = min(max(gp - d, g_min), g_max)
            g[2 * j][i] = gp
            g[2 * j + 1][i] = gm
            if symmetric:
                # Mirror from the decoded values: the centre ends up with G+ and G- exchanged.
                g[2 * j][grid_len - 1 - i] = gm
                g[2 * j + 1][grid_len - 1 - i] = gp
    return f, g, k_w


def space_kwargs(space: StrategySpace) -> dict:
    return dict(g_min=space.g_min, g_max=space.g_max, nbins=space.nbins,
                symmetric=space.symmetric, g_err=space.g_err, f_min=space.f_min,
                f_max=space.f_max, use_max_kw=space.use_max_kw)


F_LISTS = [
    [1.0],
    [None],
    [1.0, 3.0],
    [None, 2.0],
    [0.5, None, None],
    [None, None, None, None],
    [1.0, 2.0, 4.0, 8.0],
]


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("use_max_kw", [True, False])
@pytest.mark.parametrize("f_lst", F_LISTS, ids=str)
def test_decode_matches_scalar_transcription(f_lst, symmetric, use_max_kw):
    rng = random.Random(hash((str(f_lst), symmetric, use_max_kw)) % 2**32)
    for g_err, g_min, g_max, nbins in [(0.0, 0.0, 25.0, 6), (1.5, 0.5, 20.0, 4),
                                       (6.0, 2.0, 30.0, 2)]:
        space = StrategySpace(f_lst, g_min=g_min, g_max=g_max, nbins=nbins,
                              symmetric=symmetric, g_err=g_err, use_max_kw=use_max_kw)
        x = torch.rand(5, space.dim, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(rng.randrange(2**31)))
        # Corners of the hypercube exercise the clipping and the windows' edges.
        x[0] = 0.0
        x[1] = 1.0
        ms = torch.tensor([0.3, 1.0, 2.5, 0.07, 12.0], dtype=torch.float64)
        f, g_lst, k_w = space.decode(x, ms)
        for p in range(x.shape[0]):
            f_ref, g_ref, k_ref = decode_scalar(x[p].tolist(), f_lst, float(ms[p]),
                                                **space_kwargs(space))
            torch.testing.assert_close(f[p], torch.tensor(f_ref, dtype=torch.float64),
                                       rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(g_lst[p], torch.tensor(g_ref, dtype=torch.float64),
                                       rtol=1e-10, atol=1e-10)
            assert math.isclose(float(k_w[p]), k_ref, rel_tol=1e-12)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("f_lst", F_LISTS, ids=str)
def test_exact_targets_and_conductance_range(f_lst, symmetric):
    space = StrategySpace(f_lst, g_min=1.0, g_max=21.0, nbins=5, symmetric=symmetric)
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(3, 64, space.dim, dtype=torch.float64, generator=gen)
    m = torch.tensor([[0.2], [1.0], [7.0]], dtype=torch.float64)
    f, g_lst, k_w = space.decode(x, m)
    realised = (f.unsqueeze(-1) * (g_lst[..., 0::2, :] - g_lst[..., 1::2, :])).sum(-2)
    target = k_w.unsqueeze(-1) * space.grid(m.expand(3, 64))
    torch.testing.assert_close(realised, target, rtol=0.0, atol=1e-10)
    assert bool((g_lst >= 1.0).all()) and bool((g_lst <= 21.0).all())


def test_conductances_in_range_with_g_err():
    space = StrategySpace([None, 2.0, None], g_min=0.0, g_max=25.0, g_err=5.0, symmetric=False)
    x = torch.rand(4000, space.dim, generator=torch.Generator().manual_seed(3))
    x[:100] = torch.randint(0, 2, (100, space.dim), generator=torch.Generator().manual_seed(4))
    _, g_lst, _ = space.decode(x, 0.8)
    assert float(g_lst.min()) >= 0.0 and float(g_lst.max()) <= 25.0
    assert float(g_lst.min()) == 0.0 and float(g_lst.max()) == 25.0  # g_err reaches the clip


def test_symmetric_mirror_and_centre_exchange():
    space = StrategySpace([1.0, 3.0], nbins=4, symmetric=True)
    x = torch.rand(10, space.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, g_lst, _ = space.decode(x, 1.0)
    g_plus, g_minus = g_lst[..., 0::2, :], g_lst[..., 1::2, :]
    # Mirror: off the centre, G+ at L-1-i is G- at i (and so G- at L-1-i is G+ at i).
    c = space.nbins - 1
    off_centre = [i for i in range(space.grid_size) if i != c]
    torch.testing.assert_close(g_plus.flip(-1)[..., off_centre], g_minus[..., off_centre],
                               rtol=0, atol=0)
    # Centre point (target 0), pair 0: its window is [-span_0, span_0] = [-25, 25] uS since the
    # later pair can absorb anything. Coordinates: [x_kw, x_g pair 0, x_delta pair 0, x_g pair 1].
    n = space.num_points
    x_g, x_delta = float(x[0, 1 + c]), float(x[0, 1 + n + c])
    d = -25.0 + x_delta * 50.0
    gp = max(d, 0.0) + x_g * ((25.0 + min(d, 0.0)) - max(d, 0.0))
    assert float(g_lst[0, 1, c]) == pytest.approx(gp)  # the decoded G+ sits in the G- row
    assert float(g_lst[0, 0, c]) == pytest.approx(gp - d)


def test_symmetric_grid_is_exactly_antisymmetric():
    space = StrategySpace([1.0], nbins=6)
    for dtype in (torch.float32, torch.float64):
        w = space.grid(torch.tensor(0.37, dtype=dtype))
        assert w.dtype == dtype and w.shape == (11,)
        assert float(w[5]) == 0.0
        torch.testing.assert_close(w, -w.flip(-1), rtol=0, atol=0)
        torch.testing.assert_close(w, torch.linspace(-0.37, 0.37, 11, dtype=dtype))


@pytest.mark.parametrize(
    "f_lst,nbins,symmetric,use_max_kw",
    list(itertools.product([[1.0], [None, 1.0], [None, None, 2.0, None]], [2, 6, 9],
                           [True, False], [True, False])),
)
def test_dim_formula(f_lst, nbins, symmetric, use_max_kw):
    space = StrategySpace(f_lst, nbins=nbins, symmetric=symmetric, use_max_kw=use_max_kw)
    k = len(f_lst)
    grid_len = 2 * nbins - 1
    n = nbins if symmetric else grid_len
    expected = n * (2 * k - 1) + f_lst.count(None) + (0 if use_max_kw else 1)
    assert space.dim == expected
    assert space.num_pairs == k and space.grid_size == grid_len
    assert space.num_free_f == f_lst.count(None) and space.num_points == n
    assert space.bounds == [(0.0, 1.0)] * expected
    assert space.bounds_tensor.shape == (expected, 2)
    assert bool((space.bounds_tensor[:, 0] == 0).all() and (space.bounds_tensor[:, 1] == 1).all())


def test_batched_shapes_with_per_layer_m():
    space = StrategySpace([None, 1.0, 2.0], nbins=6, symmetric=False)
    layers, pop = 3, 7
    x = torch.rand(layers, pop, space.dim, generator=torch.Generator().manual_seed(5))
    m = torch.tensor([[0.1], [1.0], [4.0]])
    f, g_lst, k_w = space.decode(x, m)
    assert f.shape == (layers, pop, 3)
    assert g_lst.shape == (layers, pop, 6, 11)
    assert k_w.shape == (layers, pop)
    # Each layer decodes as if alone with its own M.
    for b in range(layers):
        f_b, g_b, k_b = space.decode(x[b], float(m[b]))
        torch.testing.assert_close(f[b], f_b)
        torch.testing.assert_close(g_lst[b], g_b)
        torch.testing.assert_close(k_w[b], k_b)
    # A single point decodes to unbatched shapes.
    f1, g1, k1 = space.decode(x[0, 0], 1.0)
    assert f1.shape == (3,) and g1.shape == (6, 11) and k1.shape == ()


def test_k_w_range_and_use_max_kw():
    space = StrategySpace([1.0, 2.0])
    x = torch.zeros(2, space.dim, dtype=torch.float64)
    x[1, 0] = 1.0  # x_kw
    _, _, k_w = space.decode(x, 0.5)
    total = 3.0 * 25.0
    torch.testing.assert_close(k_w, torch.tensor([0.05 * total, total], dtype=torch.float64)
                               / 0.5)
    space_max = StrategySpace([1.0, 2.0], use_max_kw=True)
    _, _, k_max = space_max.decode(torch.zeros(space_max.dim), 0.5)
    assert float(k_max) == pytest.approx(total / 0.5)


def test_free_f_range_and_order():
    space = StrategySpace([None, 7.0, None], f_min=0.5, f_max=4.5)
    x = torch.full((space.dim,), 0.5, dtype=torch.float64)
    x[0], x[1] = 0.0, 1.0
    f, _, _ = space.decode(x, 1.0)
    torch.testing.assert_close(f, torch.tensor([0.5, 7.0, 4.5], dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_follows_dtype(dtype):
    space = StrategySpace([None, 1.0], g_err=0.5)
    x = torch.rand(4, space.dim, dtype=dtype, generator=torch.Generator().manual_seed(0))
    for m in (1.0, torch.tensor(1.0, dtype=torch.float32), torch.ones(4, dtype=torch.float64)):
        f, g_lst, k_w = space.decode(x, m)
        assert f.dtype == g_lst.dtype == k_w.dtype == dtype
        assert f.device == x.device
    assert space.grid(1.0, dtype=torch.float64).dtype == torch.float64


def test_validate_false_skips_checks_but_decodes_the_same():
    space = StrategySpace([1.0, None])
    x = torch.rand(6, space.dim, generator=torch.Generator().manual_seed(2))
    for a, b in zip(space.decode(x, 0.7), space.decode(x, 0.7, validate=False)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(f_lst=[]), "empty"),
        (dict(f_lst=[1.0, 0.0]), r"f_lst\[1\]"),
        (dict(f_lst=[-2.0]), r"f_lst\[0\]"),
        (dict(f_lst=[float("nan")]), r"f_lst\[0\]"),
        (dict(f_lst=["a"]), r"f_lst\[0\]"),
        (dict(f_lst=1.0), "f_lst"),
        (dict(f_lst=[1.0], g_min=25.0, g_max=25.0), "g_min"),
        (dict(f_lst=[1.0], g_min=30.0), "g_min"),
        (dict(f_lst=[1.0], g_min=-1.0), "g_min"),
        (dict(f_lst=[1.0], g_max=float("inf")), "g_max"),
        (dict(f_lst=[1.0], nbins=1), "nbins"),
        (dict(f_lst=[1.0], nbins=3.0), "nbins"),
        (dict(f_lst=[None], f_min=5.0, f_max=5.0), "f_min"),
        (dict(f_lst=[None], f_min=0.0), "f_min"),
        (dict(f_lst=[1.0], g_err=-0.1), "g_err"),
        (dict(f_lst=[1.0], g_err=25.5), "g_err"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StrategySpace(**kwargs)


def test_decode_validation():
    space = StrategySpace([1.0, None])
    x = torch.full((3, space.dim), 0.5)
    with pytest.raises(ValueError, match=rf"\[\.\.\., {space.dim}\]"):
        space.decode(x[:, 1:], 1.0)
    with pytest.raises(ValueError, match="shape"):
        space.decode(torch.tensor(0.5), 1.0)
    for bad in (-1e-6, 1.0 + 1e-6, float("nan")):
        y = x.clone()
        y[1, 3] = bad
        with pytest.raises(ValueError, match="unit hypercube"):
            space.decode(y, 1.0)
    for bad_m in (0.0, -1.0, float("nan"), float("inf"), torch.tensor([1.0, 0.0, 1.0])):
        with pytest.raises(ValueError, match="max_abs_weight"):
            space.decode(x, bad_m)
    with pytest.raises(ValueError, match="max_abs_weight"):
        space.decode(x, "1.0")
    with pytest.raises(ValueError, match="broadcast"):
        space.decode(x, torch.ones(2))
    with pytest.raises(ValueError, match="broadcast"):
        space.decode(x, torch.ones(2, 3))  # would broadcast the output, not to x's batch
    with pytest.raises(ValueError, match="max_abs_weight"):
        space.grid(0.0)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("f_lst", F_LISTS, ids=str)
def test_to_converter_programs_are_invertible(f_lst, symmetric):
    converters = pytest.importorskip("gpuwpo.device.converters")
    space = StrategySpace(f_lst, g_min=0.5, g_max=25.0, symmetric=symmetric)
    x = torch.rand(2, 5, space.dim, dtype=torch.float64,
                   generator=torch.Generator().manual_seed(11))
    x[0, 0] = 0.0  # corners of the hypercube too
    x[0, 1] = 1.0
    m = torch.tensor([[0.5], [2.0]], dtype=torch.float64)
    # invertibility_test=True: the constructor itself rejects a non-invertible program.
    conv = space.to_converter(x, m)
    assert isinstance(conv, converters.CustomPairConductanceConverter)
    ok = conv.check_invertibility()
    assert ok.shape == (2, 5) and bool(ok.all())
    f, g_lst, _ = space.decode(x, m)
    torch.testing.assert_close(conv.f_lst, f, rtol=0, atol=0)
    torch.testing.assert_close(conv.g_lst, g_lst, rtol=0, atol=0)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(
    "f_space, f_npair",
    [([None, None], [1.0, 1.0]), ([1.0, 3.0], [1.0, 3.0]), ([None], [1.0]),
     ([None, 2.0, None], [1.0, 2.0, 0.5])],
)
def test_encode_npair_reproduces_the_npair_converter_at_the_grid_points(
        symmetric, f_space, f_npair):
    """The baseline's own program is a point of the space (the search's warm start)."""
    from gpuwpo.device.converters import NPairConductanceConverter

    space = StrategySpace(f_space, 0.0, 25.0, symmetric=symmetric)
    x = space.encode_npair(f_npair)
    assert x.shape == (space.dim,) and bool(((x >= 0) & (x <= 1)).all())
    m = 0.37
    f, g_lst, _ = space.decode(x, m)
    torch.testing.assert_close(f, torch.tensor(f_npair, dtype=f.dtype))
    grid = space.grid(m, dtype=torch.float64)
    expected, _ = NPairConductanceConverter(f_npair, 0.0, 25.0).convert_to_conductances(grid)
    torch.testing.assert_close(g_lst, expected, atol=1e-9, rtol=0)


def test_encode_npair_rejects_what_the_space_cannot_express():
    space = StrategySpace([1.0, None], 0.0, 25.0)
    with pytest.raises(ValueError, match="differs"):
        space.encode_npair([2.0, 1.0])
    with pytest.raises(ValueError, match="outside"):
        space.encode_npair([1.0, 9.0])
    with pytest.raises(ValueError, match="needs 2"):
        space.encode_npair([1.0])


# ------------------------------------------------------------------------------------------
# The searched clip: one more coordinate, at the end of x
# ------------------------------------------------------------------------------------------


def test_the_clip_coordinate_is_last_and_leaves_the_reference_coordinates_alone():
    plain = StrategySpace([None, None])
    space = StrategySpace([None, None], clip_range=(0.4, 0.9))
    assert space.dim == plain.dim + 1 and space.searches_clip and not plain.searches_clip
    x = torch.rand(7, plain.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x_c = torch.tensor([0.0, 1.0, 0.5, 0.25, 0.75, 0.1, 0.9], dtype=torch.float64)
    f, g, k_w, clip = space.decode(torch.cat([x, x_c[:, None]], -1), 0.8, return_clip=True)
    f0, g0, k0 = plain.decode(x, 0.8)
    # The programs are the reference's, whatever the clip (only where their grid lies moves).
    assert torch.equal(f, f0) and torch.equal(g, g0) and torch.equal(k_w, k0)
    # c = low + x_c (high - low), the ends exactly.
    assert clip[0] == 0.4 and clip[1] == 0.9
    torch.testing.assert_close(clip, 0.4 + 0.5 * x_c, rtol=0, atol=1e-15)
    # Without a range the clip is the fixed one.
    assert torch.equal(StrategySpace([None], clip=0.7).clips(torch.zeros(3, 8)),
                       torch.full((3,), 0.7))


def test_a_clip_point_becomes_a_clipping_converter():
    space = StrategySpace([None, None], clip_range=(0.5, 1.0))
    x = space.encode_npair([1.0, 4.0], 1.0, clip=0.6)
    assert float(space.clips(x)) == pytest.approx(0.6, abs=1e-12)
    conv = space.to_converter(x, 1.0)
    assert conv.clip == pytest.approx(0.6, abs=1e-12)
    assert space.to_converter(x, 1.0, clip=1.0).clip == 1.0  # the same program unclipped
    # The top of the range encodes to exactly 1 (an unclipped start is unclipped).
    top = space.encode_npair([1.0, 4.0])
    assert float(top[-1]) == 1.0 and space.to_converter(top, 1.0).clip == 1.0
    # A converter holds one clip: points of different clips are refused together.
    with pytest.raises(ValueError, match="different clips"):
        space.to_converter(torch.stack([x, top]), 1.0)
    with pytest.raises(ValueError, match="outside the clip_range"):
        space.encode_npair([1.0, 4.0], 1.0, clip=0.3)
    with pytest.raises(ValueError, match="fixed"):
        StrategySpace([None, None]).encode_npair([1.0, 4.0], 1.0, clip=0.5)


def test_the_standard_starts_cover_a_few_clips_within_the_range():
    plain = StrategySpace([None, None])
    points, labels = plain.standard_starts()
    space = StrategySpace([None, None], clip_range=(0.5, 1.0))
    assert space.start_clips() == [1.0, 0.8, 0.6]
    clipped, clip_labels = space.standard_starts()
    assert clipped.shape == (3 * points.shape[0], space.dim)
    assert len(set(clip_labels)) == len(clip_labels)
    # Each start under each clip: the unclipped ones are the plain space's, labelled alike.
    unclipped = [i for i, label in enumerate(clip_labels) if "clip=" not in label]
    assert [clip_labels[i] for i in unclipped] == labels
    assert torch.equal(clipped[unclipped, :-1], points)
    assert bool((clipped[unclipped, -1] == 1).all())
    assert sum("clip=0.6" in label for label in clip_labels) == points.shape[0]
    # A range that excludes the offered clips starts at its top (the least clipping).
    assert StrategySpace([None], clip_range=(0.3, 0.5)).start_clips() == [0.5]
    assert StrategySpace([None], clip_range=(0.5, 0.9)).start_clips() == [0.9, 0.8, 0.6]


@pytest.mark.parametrize("bad", [(0.0, 0.5), (0.6, 0.5), (0.5, 1.2), (0.5,), 0.5, "0.5, 1",
                                 (float("nan"), 1.0), (True, 1.0)])
def test_a_bad_clip_range_is_refused(bad):
    with pytest.raises(ValueError, match="clip_range"):
        StrategySpace([None, None], clip_range=bad)


def test_a_fixed_clip_and_a_searched_one_are_refused_together():
    with pytest.raises(ValueError, match="not both"):
        StrategySpace([None, None], clip=0.5, clip_range=(0.4, 1.0))
