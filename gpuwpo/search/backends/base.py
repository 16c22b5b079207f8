"""What every search backend receives and returns, and what its callback sees.

What a search reports means the same in every backend (torch, scipy, EvoTorch's DE, CMA-ES,
SNES and GA), defined here once:

* A **generation**: every layer still searching proposes one batch of candidates and evaluates
  it (a layer's first generation also evaluates its initial population, as in scipy). A layer
  that has converged stops; the others go on.
* ``nit`` (and the callback's ``generation``): the generations run, the most that any layer
  ran. The callback is called once after each, with 1, 2, 3, ...; a run of any number of layers
  with ``maxiter`` and no convergence reports ``nit == maxiter`` whichever backend ran it.
* ``x[b]``: layer b's **incumbent**, the point the backend would return if it stopped now: the
  member of the layer's current population that its algorithm ranks best (the DE's member 0;
  the GA's best member; CMA-ES's and SNES's best of the latest sampled population), in the
  unit cube.
* ``fun[b]``: the incumbent's loss **on the noise of layer b's latest evaluation** (its last
  loss call): its value in that call when it was among the call's candidates, otherwise it is
  evaluated once more with that call's number, i.e. on the same noise
  (:func:`incumbent_loss`). It is one noisy draw, never a minimum over draws: a point kept for
  one lucky draw is measured again in the next generation, so ``fun`` does not grow optimistic
  with the length of the search (it is optimistic only by the choice within one call).
* ``history[b, g - 1]``: ``fun[b]`` after generation g (g = 1 .. nit); once layer b has stopped
  it repeats its last value.
* ``nfev``: candidates evaluated, all layers together, the incumbents' extra evaluations
  included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["SearchProblem", "SearchOutcome", "IntermediateResult", "LayerEvaluations",
           "Lockstep", "incumbent_loss", "layer_loss", "notify"]


@dataclass(frozen=True)
class SearchProblem:
    """A batched loss to minimise over the unit hypercube [0, 1]^D, one search per layer.

    Attributes:
        loss: ``loss(x, call, layers=None)`` maps candidates x [B, P, D] to losses [B, P].
            ``call`` numbers the evaluations of a run (0, 1, 2, ...); the loss draws its noise
            from a seed derived from it, so that a resumed run sees the same noise as an
            uninterrupted one. One call shares its noise by all candidates of a layer (common
            random numbers): a candidate's loss does not depend on the other candidates of the
            call, so a backend may evaluate a further point on a past call's noise by calling
            again with that call's number (:func:`incumbent_loss`). With ``layers`` (a 1-D
            integer tensor of layer indices) x holds only those layers, [len(layers), P, D],
            and each gets exactly the loss it would get in a call with every layer: backends
            use it to skip converged layers, when ``supports_layers`` says the loss takes it.
        num_layers: B.
        dim: D.
        device, dtype: where and in what precision the loss computes.
        supports_layers: whether ``loss`` takes ``layers``.
        layer_ids: [B] the layers' ids in the whole network (None: 0 .. B-1), which key the
            searches' own randomness (the stream ``"search"``, :mod:`gpuwpo.rng`) as they key
            the loss's noise, so that a search over some of a network's layers runs each as
            the whole search does.
    """

    loss: Callable[[Tensor, int], Tensor]
    num_layers: int
    dim: int
    device: torch.device
    dtype: torch.dtype = torch.float32
    supports_layers: bool = False
    layer_ids: tuple[int, ...] | None = None

    def layer_id(self, b: int) -> int:
        """The id of layer ``b`` (its index when the problem has no ``layer_ids``)."""
        return int(b) if self.layer_ids is None else int(self.layer_ids[b])


def layer_loss(problem: SearchProblem, x: Tensor, call: int, layers: Tensor) -> Tensor:
    """The losses of some layers' candidates in evaluation ``call``: x [n, P, D] -> [n, P].

    ``layers`` [n] are the rows' layer indices (0 .. B-1). A loss that takes ``layers`` gets
    only those rows; one that does not gets every layer (the other rows hold the first row's
    candidates, whose losses are dropped), and each row keeps its own layer's loss.
    """
    layers = torch.as_tensor(layers, device=problem.device).reshape(-1)
    if problem.supports_layers:
        out = problem.loss(x, call, layers=layers)
    else:
        full = x[:1].expand(problem.num_layers, -1, -1).clone()
        full[layers] = x
        out = problem.loss(full, call)[layers]
    out = torch.as_tensor(out).to(device=x.device)
    if tuple(out.shape) != tuple(x.shape[:2]):
        raise RuntimeError(f"the loss must give losses of shape {list(x.shape[:2])} for "
                           f"candidates {list(x.shape)}, got {list(out.shape)}")
    return out


def incumbent_loss(problem: SearchProblem, x: Tensor, call: int, layers: Tensor,
                   candidates: Tensor, losses: Tensor) -> tuple[Tensor, int]:
    """The incumbents' losses on the noise of evaluation ``call`` (the definition of ``fun``).

    Args:
        problem: the search problem.
        x: [n, D] one incumbent per row.
        call: the number of the rows' latest evaluation.
        layers: [n] the rows' layer indices (0 .. B-1).
        candidates: [n, P, D] what that evaluation evaluated, and ``losses`` [n, P] its result.

    Returns:
        ``(fun [n], evaluated)``: an incumbent found among its row's candidates takes its loss
        from there; the others are evaluated with the number ``call`` again (one candidate
        each, ``evaluated`` of them, in one loss call).
    """
    layers = torch.as_tensor(layers, device=x.device).reshape(-1)
    same = (candidates == x[:, None]).all(-1)  # [n, P]
    found = same.any(-1)
    first = same.to(torch.int8).argmax(-1)  # the first match (any, when none)
    fun = torch.gather(losses, 1, first[:, None])[:, 0].clone()
    missing = (~found).nonzero().squeeze(1)
    if missing.numel():
        fun[missing] = layer_loss(problem, x[missing, None], call,
                                  layers[missing])[:, 0].to(fun.dtype)
    return fun, int(missing.numel())


@dataclass(frozen=True)
class IntermediateResult:
    """What every backend's callback (and progress hook) receives after every generation.

    The meaning is the module's, the same for every backend.

    Attributes:
        generation: generations completed (the module's ``nit``).
        x: [B, D] each layer's incumbent (unit cube).
        fun: [B] its in-search loss on the noise of the layer's latest evaluation (normalised:
            (TNMSE - baseline) / baseline + margin; one noisy draw).
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
    """What a backend found and how (the module's meanings).

    Attributes:
        x: [B, D] each layer's incumbent (unit cube).
        fun: [B] its loss on the noise of the layer's latest evaluation (one noisy draw).
        nit: generations run.
        nfev: candidates evaluated (all layers together).
        converged: [B] bool, the backend's own convergence test.
        stop_reason: "converged", "maxiter" or "callback".
        message: human-readable.
        history: [B, nit] ``fun`` after each generation (as the callback saw it).
        extra: backend-specific details (e.g. the searchers).
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


class LayerEvaluations:
    """One layer's loss calls in a search that steps each layer on its own (scipy, EvoTorch):
    numbered 0, 1, 2, ... per layer (its noise keyed by the layer's id, so a layer searched alone
    sees what it sees beside others), the latest one kept to measure the incumbent on.

    Attributes:
        calls: loss calls so far (the number of the next one).
        nfev: candidates evaluated, the incumbents' extra evaluations included.
        latest: the latest call's candidates [P, D] and losses [P] (None before the first).
    """

    def __init__(self, problem: SearchProblem, b: int) -> None:
        self.problem, self.b = problem, int(b)
        self.calls = 0
        self.nfev = 0
        self.latest: tuple[Tensor, Tensor] | None = None

    def __call__(self, x: Tensor) -> Tensor:
        """The losses [P] of candidates x [P, D] (the problem's dtype and device) in the next
        call."""
        out = layer_loss(self.problem, x.unsqueeze(0), self.calls, torch.tensor([self.b]))[0]
        self.calls += 1
        self.nfev += x.shape[0]
        self.latest = (x, out)
        return out

    def measure(self, x: Tensor) -> Tensor:
        """The layer's ``fun``: the loss of its incumbent x [D] on the latest call's noise
        (:func:`incumbent_loss`)."""
        x = x.to(device=self.problem.device, dtype=self.problem.dtype)
        candidates, losses = self.latest
        fun, evaluated = incumbent_loss(self.problem, x[None], self.calls - 1,
                                        torch.tensor([self.b]), candidates[None], losses[None])
        self.nfev += evaluated
        return fun[0]


@dataclass
class Lockstep:
    """What B per-layer searches report, stepped one generation at a time (the module's
    meanings); the loop of the backends that keep one searcher per layer.

    Attributes:
        x: [B, D] the incumbents; fun: [B] their losses; history: ``fun`` after each
            generation; converged: [B] bool; nit: generations run; stop_reason: "maxiter"
            until the run converges or the callback stops it.
    """

    x: Tensor
    fun: Tensor
    history: list[Tensor]
    converged: Tensor
    nit: int = 0
    stop_reason: str = "maxiter"

    @classmethod
    def start(cls, problem: SearchProblem, dtype: torch.dtype | None = None,
              device: torch.device | str | None = None) -> Lockstep:
        """Before the first generation: the cube's centre, an infinite loss, no history."""
        B, D = problem.num_layers, problem.dim
        dtype = problem.dtype if dtype is None else dtype
        device = problem.device if device is None else device
        return cls(torch.full((B, D), 0.5, dtype=dtype, device=device),
                   torch.full((B,), float("inf"), dtype=dtype, device=device), [],
                   torch.zeros(B, dtype=torch.bool, device=device))

    def run(self, step: Callable[[int], tuple[Tensor, bool]],
            evaluations: Sequence[LayerEvaluations], *, maxiter: int,
            callback: Callable | None, progress: Callable | None,
            after: Callable[[Lockstep], None] | None = None) -> None:
        """Generations until ``maxiter``, convergence of every layer or the callback's stop.

        Args:
            step: ``step(b)`` runs one generation of layer b's searcher and returns its
                incumbent [D] and whether the layer has now converged (it then stops).
            evaluations: the layers' :class:`LayerEvaluations` (their ``fun`` and ``nfev``).
            maxiter: generations in all (counting those already run, ``nit``).
            callback, progress: as :func:`notify` takes them, after every generation.
            after: called after every generation, before the callback (e.g. a checkpoint).
        """
        while self.nit < maxiter and self.stop_reason != "converged":
            x, fun, converged = self.x.clone(), self.fun.clone(), self.converged.clone()
            for b, layer in enumerate(evaluations):
                if not bool(converged[b]):
                    incumbent, done = step(b)
                    x[b] = incumbent.to(x)
                    fun[b] = layer.measure(x[b]).to(fun)
                    converged[b] = bool(done)
            self.x, self.fun, self.converged = x, fun, converged
            self.nit += 1
            self.history.append(fun)
            if after is not None:
                after(self)
            info = IntermediateResult(self.nit, x, fun, torch.stack(self.history, dim=1),
                                      sum(layer.nfev for layer in evaluations), converged.clone())
            if notify(callback, progress, info):
                self.stop_reason = "callback"
                return
            if bool(converged.all()):
                self.stop_reason = "converged"
                return

    def outcome(self, problem: SearchProblem, evaluations: Sequence[LayerEvaluations],
                message: str, extra: dict) -> SearchOutcome:
        """The :class:`SearchOutcome` of the run so far, in the problem's dtype and device."""
        where = dict(device=problem.device, dtype=problem.dtype)
        return SearchOutcome(
            x=self.x.to(**where), fun=self.fun.to(**where), nit=self.nit,
            nfev=sum(layer.nfev for layer in evaluations), converged=self.converged.clone(),
            stop_reason=self.stop_reason, message=message,
            history=torch.stack(self.history, dim=1).to(**where), extra=extra)
