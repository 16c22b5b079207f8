"""Tests of test-weight sampling (gpuwpo/sampling.py)."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from gpuwpo.device.sampling import downsample_weight_distribution, shuffle_weights


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def ref_resample(x, m):
    """np.interp of the sorted values at m evenly spaced ranks (plain numpy)."""
    s = np.sort(np.asarray(x, dtype=np.float64).ravel())
    return np.interp(np.linspace(0, s.size - 1, m), np.arange(s.size), s)


@pytest.mark.parametrize("n,shape", [(1000, (37,)), (10_240, (512, 20)), (5, 17), (40, (3, 4, 5))])
def test_sorted_output_equals_np_interp(n, shape):
    x = torch.randn(n, generator=_gen(n), dtype=torch.float64) ** 3  # skewed, heavy-tailed
    out = downsample_weight_distribution(x, shape, _gen(0))
    shape = (shape,) if isinstance(shape, int) else shape
    assert out.shape == shape and out.dtype == torch.float64
    m = int(np.prod(shape))
    got = np.sort(out.numpy().ravel())
    np.testing.assert_allclose(got, ref_resample(x.numpy(), m), rtol=1e-12, atol=1e-14)
    # End points exactly kept.
    assert got[0] == x.min().item() and got[-1] == x.max().item()


def test_input_shape_is_irrelevant_and_same_size_is_a_permutation():
    x = torch.randn(6, 7, 8, generator=_gen(1))
    out = downsample_weight_distribution(x, (8, 42), _gen(2))
    assert torch.equal(torch.sort(out.flatten()).values, torch.sort(x.flatten()).values)


def test_output_is_shuffled_and_seeded():
    x = torch.linspace(-1, 1, 5000)
    a = downsample_weight_distribution(x, 500, _gen(3))
    assert torch.equal(a, downsample_weight_distribution(x, 500, _gen(3)))
    b = downsample_weight_distribution(x, 500, _gen(4))
    assert not torch.equal(a, b) and torch.equal(torch.sort(a).values, torch.sort(b).values)
    assert not torch.equal(a, torch.sort(a).values)  # not left in rank order


def test_degenerate_sizes():
    x = torch.tensor([3.0, -2.0, 7.0])
    assert downsample_weight_distribution(x, 1).item() == -2.0  # linspace(0, n-1, 1) = [0]
    out = downsample_weight_distribution(torch.tensor([[4.5]]), (2, 3))
    assert torch.equal(out, torch.full((2, 3), 4.5))
    out = downsample_weight_distribution(x, 2, _gen(0))
    assert sorted(out.tolist()) == [-2.0, 7.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_is_kept(dtype):
    # bfloat16 takes the torch.sort path, the others numpy's: both must give the same answer.
    x = torch.randn(999, generator=_gen(5)).to(dtype)
    out = downsample_weight_distribution(x, (10, 10), _gen(6))
    assert out.dtype == dtype and out.device == x.device
    expected = torch.from_numpy(ref_resample(x.double().numpy(), 100)).to(dtype)
    # Equal up to the double rounding float64 -> dtype.
    torch.testing.assert_close(torch.sort(out.flatten()).values, expected)


def test_gradient_carrying_input_is_accepted():
    x = torch.randn(100, requires_grad=True)
    assert downsample_weight_distribution(x, 10).shape == (10,)


@pytest.mark.parametrize(
    "weights,shape,err,match",
    [
        (torch.empty(0), 10, ValueError, "empty"),
        (torch.tensor([1.0, float("nan"), 2.0]), 10, ValueError, "finite"),
        (torch.tensor([1.0, float("inf")]), 10, ValueError, "finite"),
        (torch.tensor([-float("inf"), 1.0]), 10, ValueError, "finite"),
        (torch.ones(5), 0, ValueError, "shape"),
        (torch.ones(5), -3, ValueError, "shape"),
        (torch.ones(5), (3, 0), ValueError, "shape"),
        (torch.ones(5), (), ValueError, "shape"),
        (torch.ones(5), 2.5, ValueError, "shape"),
        (torch.ones(5), True, ValueError, "shape"),
        (torch.arange(5), 3, TypeError, "floating"),
        ([1.0, 2.0], 3, TypeError, "Tensor"),
    ],
)
def test_errors(weights, shape, err, match):
    with pytest.raises(err, match=match):
        downsample_weight_distribution(weights, shape)


@pytest.mark.slow
def test_hundred_million_elements():
    # Sorted order known in advance (a monotone ramp, scrambled by a transpose), so the
    # answer can be checked without a second 100M-element sort.
    n, m = 100_000_000, 10_240
    ramp = torch.linspace(-1.0, 1.0, n)
    x = ramp.view(10_000, 10_000).t().contiguous()
    del ramp
    out = downsample_weight_distribution(x, (512, 20), _gen(7))
    assert out.shape == (512, 20) and out.dtype == torch.float32
    s = torch.sort(out.flatten()).values
    assert s[0].item() == -1.0 and s[-1].item() == 1.0
    torch.testing.assert_close(s, torch.linspace(-1.0, 1.0, m), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------
def test_shuffle_is_a_permutation_with_the_same_shape():
    x = torch.randn(10, 30, generator=_gen(8), dtype=torch.float64)
    y = shuffle_weights(x, _gen(9))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(torch.sort(y.flatten()).values, torch.sort(x.flatten()).values)
    assert not torch.equal(x, y)
    # Elements move across rows too (not a per-row shuffle).
    assert not torch.equal(torch.sort(y, dim=1).values, torch.sort(x, dim=1).values)
    assert torch.equal(y, shuffle_weights(x, _gen(9)))
    assert not torch.equal(y, shuffle_weights(x, _gen(10)))
    ints = torch.arange(12).reshape(3, 4)
    assert torch.equal(shuffle_weights(ints, _gen(0)).flatten().sort().values, torch.arange(12))


def test_shuffle_is_uniform_over_permutations():
    x = torch.arange(4)
    gen = _gen(11)
    counts = Counter(tuple(shuffle_weights(x, gen).tolist()) for _ in range(2400))
    assert set(counts) == set(itertools.permutations(range(4)))
    # 24 cells of expectation 100: each within 4.5 binomial standard deviations.
    sd = (2400 * (1 / 24) * (23 / 24)) ** 0.5
    assert all(abs(c - 100) < 4.5 * sd for c in counts.values())
