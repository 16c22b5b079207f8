"""One ruler: the weight error of a tile, and how much work is done at a time.

Both ways of measuring a strategy -- the batched hot path over a population of programs
(:func:`gpuwpo.objective.tnmse_from_programs`) and the converter path over repeats of one
converter (:func:`gpuwpo.simulate.converter_errors`, behind baselines, ``evaluate`` and
``tnmse_over_time``) -- reduce with :func:`weight_error` (the hot path with its fused form,
:func:`scaled_weight_error`) and split their work with
:func:`plan_chunks` under :func:`default_memory_budget`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["weight_error", "error_gain", "scaled_weight_error", "plan_chunks",
           "default_memory_budget", "chunk_budgets", "CPU_MEMORY_BUDGET",
           "CPU_LAYERS_BUDGET"]

#: Bytes of one layer's candidates the CPU works on at a time. Kept cache-sized: elementwise
#: passes over data that stays in cache are several times faster than passes over main memory.
#: A measured choice (bench/README.md, "memory budget"); torch.compile's fused loops prefer 8x
#: larger chunks.
CPU_MEMORY_BUDGET = 2 * 2**20
#: Bytes of a whole chunk on the CPU when it spans several layers (a network's search): each
#: layer's part stays within :data:`CPU_MEMORY_BUDGET`, and stacking layers in one chunk spends
#: the per-call overhead once for all of them (bench/README.md, "memory budget").
CPU_LAYERS_BUDGET = 8 * CPU_MEMORY_BUDGET


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


def default_memory_budget(device: torch.device, *, compiled: bool = False) -> int:
    """Bytes at a time: half the free memory on CUDA, cache-sized on the CPU.

    On the CPU the eager path's figure is one layer's cache-sized working set; a chunk that
    stacks several layers may take :data:`CPU_LAYERS_BUDGET` (see :func:`chunk_budgets`).
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return CPU_MEMORY_BUDGET * (8 if compiled else 1)


def chunk_budgets(device: torch.device, memory_budget: int | None = None, *,
                  compiled: bool = False) -> tuple[int, int]:
    """(chunk budget, per-layer item budget) in bytes for the hot path over layers x items.

    The eager CPU path keeps each layer's items within :data:`CPU_MEMORY_BUDGET` (measured:
    more candidates of one layer per pass is slower there) but stacks layers up to
    :data:`CPU_LAYERS_BUDGET`, which spends the per-chunk overhead once for several layers.
    Elsewhere (CUDA, torch.compile) both are :func:`default_memory_budget`. A budget given by
    the caller caps both.
    """
    default = default_memory_budget(device, compiled=compiled)
    if memory_budget is not None:
        return int(memory_budget), min(int(memory_budget), default)
    if device.type == "cuda" or compiled:
        return default, default
    return CPU_LAYERS_BUDGET, default


def plan_chunks(B: int, P: int, *, bytes_per_item: int, memory_budget: int,
                align: int = 1, item_budget: int | None = None) -> tuple[int, int]:
    """(layers, items) per chunk so that layers * items * bytes_per_item fits the budget.

    Item chunks are multiples of ``align`` (a noise block) and at least one block; layer chunks
    shrink first only when a single block of every layer does not fit. At least one of each.
    ``item_budget`` (default ``memory_budget``) also caps one layer's items * bytes_per_item.
    """
    min_items = min(P, align)
    layer_chunk = max(1, min(B, memory_budget // max(1, bytes_per_item * min_items)))
    chunk = max(min_items, memory_budget // max(1, bytes_per_item * layer_chunk))
    if item_budget is not None:
        chunk = min(chunk, max(min_items, int(item_budget) // max(1, bytes_per_item)))
    if align > 1:
        chunk = max(align, chunk // align * align)
    return layer_chunk, min(chunk, P)
