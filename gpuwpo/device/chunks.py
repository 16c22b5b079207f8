"""How much work is done at a time: memory budgets and the chunking of layers x items.

The batched hot path (:func:`gpuwpo.search.objective.tnmse_from_programs`, items = candidates)
and the converter path (:func:`gpuwpo.device.simulate.converter_errors`, items = repeats) split
their work with :func:`plan_chunks` under :func:`default_memory_budget` / :func:`chunk_budgets`.
"""

from __future__ import annotations

import torch

__all__ = ["plan_chunks", "default_memory_budget", "chunk_budgets", "CPU_MEMORY_BUDGET",
           "CPU_LAYERS_BUDGET"]

#: Bytes of one layer's candidates the CPU works on at a time. Kept cache-sized: elementwise
#: passes over data that stays in cache are several times faster than passes over main memory.
#: A measured choice (docs/RESULTS.md, "Speed"); torch.compile's fused loops prefer 8x
#: larger chunks.
CPU_MEMORY_BUDGET = 2 * 2**20
#: Bytes of a whole chunk on the CPU when it spans several layers (a network's search): each
#: layer's part stays within :data:`CPU_MEMORY_BUDGET`, and stacking layers in one chunk spends
#: the per-call overhead once for all of them (docs/RESULTS.md, "Speed").
CPU_LAYERS_BUDGET = 8 * CPU_MEMORY_BUDGET


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
