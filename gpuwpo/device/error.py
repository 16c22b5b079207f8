"""One ruler: the weight error of a tile (docs/DESIGN.md section 5).

Both ways of measuring a strategy -- the batched hot path over a population of programs
(:func:`gpuwpo.search.objective.tnmse_from_programs`) and the converter path over repeats of one
converter (:func:`gpuwpo.device.simulate.converter_errors`, behind baselines, ``evaluate`` and
``tnmse_over_time``) -- reduce with :func:`weight_error` (the hot path with its fused form,
:func:`scaled_weight_error`); :mod:`gpuwpo.device.chunks` says how much of that work is done at
a time.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["weight_error", "error_gain", "scaled_weight_error"]

def weight_error(w_eff: Tensor, w: Tensor, max_abs_weight: Tensor | float,
                 amplification: float = 10.0, *, tile_ndim: int = 2,
                 inplace: bool = False) -> Tensor:
    """``E = mean over the tile of (amplification (w_eff - w) / M)^2`` (docs/DESIGN.md 5).

    Args:
        w_eff: effective (compensated) weights ``[..., *tile]``.
        w: the ideal weights, broadcastable to ``w_eff``.
        max_abs_weight: M, broadcastable to ``[...]`` (the tile's own max|W|).
        amplification: the factor 10 of the definition.
        tile_ndim: how many trailing dimensions form the tile.
        inplace: overwrite ``w_eff`` (the hot path's largest temporary).

    Returns:
        ``[...]``: E of every tile. The TNMSE is its mean over the time steps.
    """
    diff = w_eff.sub_(w) if inplace else w_eff - w
    # Scaled by amplification / M before squaring: the squares stay O(1) whatever the weights'
    # units (squaring first overflows float32 for weights ~1e20 and underflows for ~1e-20).
    gain = error_gain(max_abs_weight, amplification, tile_ndim, like=diff)
    if diff.shape == torch.broadcast_shapes(diff.shape, gain.shape):
        diff.mul_(gain)
    else:
        diff = diff * gain
    return scaled_weight_error(diff, 0.0, tile_ndim=tile_ndim, inplace=True)


def error_gain(max_abs_weight: Tensor | float, amplification: float, tile_ndim: int, *,
               like: Tensor) -> Tensor:
    """``amplification / M`` shaped ``[..., 1 x tile_ndim]`` to multiply tiles by."""
    gain = amplification / torch.as_tensor(max_abs_weight, dtype=like.dtype, device=like.device)
    return gain.reshape(*gain.shape, *([1] * tile_ndim))


def scaled_weight_error(w_eff_scaled: Tensor, w_scaled: Tensor | float, *, tile_ndim: int = 2,
                        inplace: bool = False) -> Tensor:
    """:func:`weight_error` of tiles already multiplied by :func:`error_gain` (both of them).

    The hot path folds the gain into the compensation's multiplication (``w_t * (alpha *
    gain)``), so that scaling before squaring costs no extra pass over the tiles.
    """
    diff = w_eff_scaled.sub_(w_scaled) if inplace else w_eff_scaled - w_scaled
    return diff.square_().mean(dim=tuple(range(-tile_ndim, 0)))
