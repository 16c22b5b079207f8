"""The scipy backend: :func:`scipy.optimize.differential_evolution` on the same objective.

Vectorized (x arrives as [D, S]) with deferred updating; layers are searched one after another.
It is the reference the torch engine is tested against, and slow on purpose of being scipy.
It has no parent re-evaluation (``noise_robust``), no checkpoints and no other algorithm: given
explicitly, those options are refused (:data:`accepts`). scipy's own polish is off; the
optimizer's polish and validation apply to every backend alike.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ...rng import mix64
from ..de import de_init
from ..options import SearchOptions, de_accepts
from .base import IntermediateResult, SearchOutcome, SearchProblem, notify

__all__ = ["search", "accepts"]

def accepts(options: SearchOptions) -> frozenset[str]:
    """The search options this backend honours: the DE's, nothing more."""
    return de_accepts(options)


def search(problem: SearchProblem, options: SearchOptions, *,
           progress: Callable[[IntermediateResult], None] | None = None) -> SearchOutcome:
    """scipy's differential evolution, one layer after another.

    The callback receives an :class:`IntermediateResult` after every generation of the layer
    being searched: layers already searched hold their answer, layers not yet started hold NaN
    and an infinite loss. Returning True or raising StopIteration stops the whole run.
    """
    from scipy.optimize import differential_evolution

    o = options
    B, D = problem.num_layers, problem.dim
    init = o.x_init
    if isinstance(init, torch.Tensor):
        init = init.detach().cpu().double().numpy()
    x0_np = None if o.x0 is None else torch.as_tensor(o.x0).detach().cpu().double().numpy()
    answer_x = torch.full((B, D), float("nan"), dtype=torch.float64)
    answer_f = torch.full((B,), float("inf"), dtype=torch.float64)
    converged = torch.zeros(B, dtype=torch.bool)
    histories: list[list[float]] = [[] for _ in range(B)]
    nit_total, nfev, messages, results = 0, 0, [], []
    calls_base = 0
    stopped = False
    for b in range(B):
        calls = [0, 0]  # loss calls, candidates

        def func(x: np.ndarray, b=b, calls=calls, base=calls_base) -> np.ndarray:
            # scipy hands [D, S]; the loss wants [B, P, D]: evaluate this layer's row only.
            cand = torch.as_tensor(np.atleast_2d(x.T), dtype=problem.dtype, device=problem.device)
            if problem.supports_layers:
                layer = torch.tensor([b], device=problem.device)
                out = problem.loss(cand.unsqueeze(0), base + calls[0], layers=layer)[0]
            else:
                out = problem.loss(cand.unsqueeze(0).expand(B, -1, -1), base + calls[0])[b]
            calls[0] += 1
            calls[1] += cand.shape[0]
            return out.detach().double().cpu().numpy()

        def make_callback(b: int, calls: list[int], before: int):
            # scipy passes the OptimizeResult only to a callable whose one parameter is named
            # intermediate_result: no extra (default) arguments, hence the factory.
            def cb(intermediate_result) -> bool:
                nonlocal stopped
                histories[b].append(float(intermediate_result.fun))
                answer_x[b] = torch.as_tensor(intermediate_result.x)
                answer_f[b] = float(intermediate_result.fun)
                g = len(histories[b])
                info = IntermediateResult(g, answer_x.clone(), answer_f.clone(),
                                          _history(histories, g), before + calls[1],
                                          converged.clone())
                stopped = notify(o.callback, progress, info)
                return stopped

            return cb

        layer_init = init if isinstance(init, str) or init.ndim == 2 else init[b]
        layer_x0 = None if x0_np is None else (x0_np if x0_np.ndim == 1 else x0_np[b])
        if layer_x0 is not None and layer_x0.ndim == 2:
            # Several warm starts (seeds): scipy takes one x0, so they go into the initial
            # population, drawn as the torch backend draws it, replacing its first members.
            first = de_init(dim=D, num_layers=1, popsize=o.popsize,
                            init=layer_init if isinstance(layer_init, str)
                            else torch.as_tensor(layer_init),
                            x0=torch.as_tensor(layer_x0).unsqueeze(0), seed=mix64(o.seed, b),
                            dtype=torch.float64)
            layer_init, layer_x0 = first.population[0].numpy(), None
        res = differential_evolution(
            func, [(0.0, 1.0)] * D, strategy=o.strategy, maxiter=o.maxiter, popsize=o.popsize,
            tol=o.tol, atol=o.atol, mutation=o.mutation, recombination=o.recombination,
            rng=np.random.default_rng(mix64(o.seed, b)), polish=False, init=layer_init,
            x0=layer_x0, callback=make_callback(b, calls, nfev), vectorized=True,
            updating="deferred",
        )
        calls_base += calls[0]
        results.append(res)
        answer_x[b] = torch.as_tensor(res.x)
        answer_f[b] = float(res.fun)
        converged[b] = bool(res.success) and not stopped
        nit_total = max(nit_total, int(res.nit))
        nfev += calls[1]  # candidates, whatever scipy counts in vectorized mode
        messages.append(str(res.message))
        if stopped:
            break
    width = max(1, max(len(h) for h in histories))
    # Layers never searched (the callback stopped the run first) answer the cube's centre.
    answer_x = torch.nan_to_num(answer_x, nan=0.5)
    stop = "callback" if stopped else ("converged" if bool(converged.all()) else "maxiter")
    return SearchOutcome(
        x=answer_x.to(device=problem.device, dtype=problem.dtype),
        fun=answer_f.to(device=problem.device, dtype=problem.dtype),
        nit=nit_total, nfev=nfev, converged=converged, stop_reason=stop,
        message="; ".join(messages), history=_history(histories, width),
        extra={"scipy_results": results},
    )


def _history(histories: list[list[float]], width: int) -> torch.Tensor:
    """[B, width] of the layers' per-generation values: a finished layer's last value carried
    on, a layer not yet started infinite."""
    out = torch.full((len(histories), width), float("inf"), dtype=torch.float64)
    for b, h in enumerate(histories):
        if h:
            k = min(len(h), width)
            out[b, :k] = torch.as_tensor(h[:k])
            out[b, k:] = h[k - 1]
    return out
