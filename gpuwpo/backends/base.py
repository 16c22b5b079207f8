"""What every search backend receives and returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["SearchProblem", "SearchOutcome", "ProgressInfo"]


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
    """

    loss: Callable[[Tensor, int], Tensor]
    num_layers: int
    dim: int
    device: torch.device
    dtype: torch.dtype = torch.float32
    supports_layers: bool = False


@dataclass(frozen=True)
class ProgressInfo:
    """Handed to the progress hook after every generation."""

    generation: int
    best: Tensor  # [B] best loss of each layer so far
    nfev: int


@dataclass
class SearchOutcome:
    """What a backend found and how.

    Attributes:
        x: [B, D] best candidate per layer (unit cube).
        fun: [B] its in-search loss (optimistic: the minimum over noisy evaluations).
        nit: generations run.
        nfev: candidates evaluated (all layers together).
        converged: [B] bool, the backend's own convergence test.
        stop_reason: "converged", "maxiter", "callback" or the backend's message.
        message: human-readable.
        history: [B, nit] best loss of each layer after each generation.
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
