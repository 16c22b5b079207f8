"""What every search backend receives and returns, and what its callback sees."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["SearchProblem", "SearchOutcome", "IntermediateResult", "notify"]


@dataclass(frozen=True)
class SearchProblem:
    """A batched loss to minimise over the unit hypercube [0, 1]^D, one search per layer.

    Attributes:
        loss: ``loss(x, call, layers=None)`` maps candidates x [B, P, D] to losses [B, P].
            ``call`` numbers the evaluations of a run (0, 1, 2, ...); the loss draws its noise
            from a seed derived from it, so that a resumed run sees the same noise as an
            uninterrupted one. One call shares its noise by all candidates of a layer (common
            random numbers). With ``layers`` (a 1-D integer tensor of layer indices) x holds
            only those layers, [len(layers), P, D], and each gets exactly the loss it would get
            in a call with every layer: backends use it to skip converged layers, when
            ``supports_layers`` says the loss takes it.
        num_layers: B.
        dim: D.
        device, dtype: where and in what precision the loss computes.
        supports_layers: whether ``loss`` takes ``layers``.
        layer_ids: [B] the layers' ids in the whole network (None: 0 .. B-1), which key the
            searches' own randomness (:func:`gpuwpo.search.de.de_init`) as they key the loss's
            noise, so
            that a search over some of a network's layers runs each as the whole search does.
    """

    loss: Callable[[Tensor, int], Tensor]
    num_layers: int
    dim: int
    device: torch.device
    dtype: torch.dtype = torch.float32
    supports_layers: bool = False
    layer_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class IntermediateResult:
    """What every backend's callback (and progress hook) receives after every generation.

    The same meaning for every backend: ``x`` and ``fun`` are what the backend would return if
    it stopped now (its current answer) and ``history`` is ``fun`` after each generation.

    Attributes:
        generation: generations completed.
        x: [B, D] each layer's current answer (unit cube).
        fun: [B] its in-search loss (normalised: (TNMSE - baseline) / baseline + margin;
            optimistic: a noisy evaluation).
        history: [B, generation] ``fun`` after each generation.
        nfev: candidates evaluated so far, all layers together.
        converged: [B] bool, the backend's own convergence test (False where it has none).
    """

    generation: int
    x: Tensor
    fun: Tensor
    history: Tensor
    nfev: int
    converged: Tensor


def notify(callback: Callable | None, progress: Callable | None,
           info: IntermediateResult) -> bool:
    """Hand ``info`` to the progress hook and the callback; True when the callback stops the
    run (by returning True or raising StopIteration)."""
    if progress is not None:
        progress(info)
    if callback is None:
        return False
    try:
        return bool(callback(info))
    except StopIteration:
        return True


@dataclass
class SearchOutcome:
    """What a backend found and how.

    Attributes:
        x: [B, D] each layer's answer (unit cube).
        fun: [B] its in-search loss (optimistic: a noisy evaluation).
        nit: generations run.
        nfev: candidates evaluated (all layers together).
        converged: [B] bool, the backend's own convergence test.
        stop_reason: "converged", "maxiter" or "callback".
        message: human-readable.
        history: [B, nit] ``fun`` after each generation (as the callback saw it).
        extra: backend-specific details (e.g. scipy's result objects).
    """

    x: Tensor
    fun: Tensor
    nit: int
    nfev: int
    converged: Tensor
    stop_reason: str
    message: str
    history: Tensor
    extra: dict = field(default_factory=dict)
