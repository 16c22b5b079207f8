"""Test-weight sampling: resample a layer's weight distribution to a fixed tile size.

A layer's weights (any size, up to hundreds of millions) are represented in the objective by a
fixed number of test weights (e.g. a 512 x 20 tile) with the same distribution: the sorted
weights are linearly interpolated at evenly spaced ranks (the extremes kept, so the tile has the
layer's max |w|), then shuffled so that no tile position is tied to a rank.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..rng import make_generator

__all__ = ["downsample_weight_distribution", "shuffle_weights"]

# Output elements interpolated per step: bounds the int64/float64 temporaries to a few tens of
# MB whatever the requested size.
_CHUNK = 1 << 21

# dtypes that numpy sorts natively (see _sorted_values).
_NUMPY_SORTABLE = (torch.float16, torch.float32, torch.float64)


def _normalize_shape(shape: int | tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, int) and not isinstance(shape, bool) else shape
    try:
        dims = tuple(dims)
    except TypeError as err:
        raise ValueError(f"shape must be an int or a tuple of ints, got {shape!r}") from err
    if not dims or any(
        isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d <= 0 for d in dims
    ):
        raise ValueError(f"shape must be a positive int or a tuple of positive ints, got {shape!r}")
    return tuple(int(d) for d in dims)


def _sorted_values(flat: torch.Tensor) -> torch.Tensor:
    """Ascending copy of the 1-D tensor ``flat`` (NaN, if any, sorts last)."""
    if flat.device.type == "cpu" and flat.dtype in _NUMPY_SORTABLE:
        # On the CPU numpy's in-place sort is about twice as fast as torch.sort and builds no
        # int64 index tensor (8 bytes per element): one copy of the data in all.
        values = flat.numpy().copy()
        values.sort()
        return torch.from_numpy(values)
    return torch.sort(flat).values


def downsample_weight_distribution(
    weights: torch.Tensor,
    shape: int | tuple[int, ...],
    generator: torch.Generator | int | None = None,
) -> torch.Tensor:
    """Resample the distribution of ``weights`` to ``prod(shape)`` values, shuffled.

    The ``n`` weights are flattened and sorted; output ``j`` (of ``m = prod(shape)``) is the
    linear interpolation of the sorted values at rank ``j (n - 1) / (m - 1)`` (np.interp
    semantics), so the first value is the minimum and the last the maximum; ``m = 1`` gives the
    minimum. Works for ``m > n`` too (upsampling). The result is then shuffled with
    ``torch.randperm(m, generator=generator)`` and reshaped to ``shape``.

    Memory: one sorted copy of the weights plus the output; the ranks are computed exactly in
    integer arithmetic, chunk by chunk, never as a float64 copy of the input.

    Args:
        weights: floating tensor of any shape (``n`` elements), finite.
        shape: output shape, an int or a tuple of positive ints.
        generator: source of the shuffle: a generator (on the weights' device), an int seed,
            or None for fresh entropy (:mod:`gpuwpo.rng`; torch's global generator is never
            used).

    Returns:
        tensor of shape ``shape``, dtype and device of ``weights``.

    Raises:
        ValueError: on empty or non-finite weights, or a non-positive shape.
        TypeError: on non-floating weights.
    """
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"weights must be a torch.Tensor, got {type(weights).__name__}")
    if not weights.is_floating_point():
        raise TypeError(f"weights must be a floating tensor, got {weights.dtype}")
    out_shape = _normalize_shape(shape)
    n = weights.numel()
    if n == 0:
        raise ValueError("weights is empty; cannot resample an empty distribution")
    m = math.prod(out_shape)

    sorted_w = _sorted_values(weights.detach().reshape(-1))
    # After sorting, -inf is first and +inf / NaN are last: two element reads check them all.
    lo, hi = sorted_w[0].item(), sorted_w[-1].item()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"weights must be finite, found values in [{lo}, {hi}] (NaN or inf)")
    sorted_w = sorted_w.to(weights.device)

    out = torch.empty(m, dtype=weights.dtype, device=weights.device)
    # Interpolate in float64 (chunk-sized temporaries only); MPS has no float64.
    calc_dtype = torch.float32 if weights.device.type == "mps" else torch.float64
    denom = max(m - 1, 1)
    for start in range(0, m, _CHUNK):
        j = torch.arange(start, min(start + _CHUNK, m), device=weights.device, dtype=torch.int64)
        # Exact rank j (n-1)/(m-1) = i0 + rem/(m-1): integer arithmetic keeps the end points
        # exactly on the first and last sorted values.
        q = j * (n - 1)
        i0 = torch.div(q, denom, rounding_mode="floor")
        frac = (q - i0 * denom).to(calc_dtype) / denom
        i1 = torch.clamp(i0 + 1, max=n - 1)
        v0 = sorted_w[i0].to(calc_dtype)
        v1 = sorted_w[i1].to(calc_dtype)
        # v0 (1 - f) + v1 f is exact at f = 0 and f = 1 (unlike v0 + f (v1 - v0)).
        out[start : start + j.numel()] = (v0 * (1.0 - frac) + v1 * frac).to(weights.dtype)
    del sorted_w

    return shuffle_weights(out, generator).reshape(out_shape)


def shuffle_weights(
    weights: torch.Tensor, generator: torch.Generator | int | None = None
) -> torch.Tensor:
    """A random permutation of the elements of ``weights``, in its shape, dtype and device.

    Args:
        weights: tensor of any shape.
        generator: source of ``torch.randperm``: a generator (on the weights' device), an int
            seed, or None for fresh entropy (:mod:`gpuwpo.rng`).

    Returns:
        tensor of ``weights.shape`` holding the same multiset of values.
    """
    flat = weights.reshape(-1)
    gen = make_generator(generator, weights.device)
    perm = torch.randperm(flat.numel(), generator=gen, device=weights.device)
    return flat[perm].reshape(weights.shape)
