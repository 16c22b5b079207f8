"""The scipy backend: :func:`scipy.optimize.differential_evolution` on the same objective.

Vectorized (x arrives as [D, S]) with deferred updating; layers are searched one after another.
It is the reference the torch engine is tested against, and slow on purpose of being scipy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .base import ProgressInfo, SearchOutcome, SearchProblem

__all__ = ["search"]


def _make_callback(history: list, progress, callback):
    # scipy passes the OptimizeResult only to a callable whose one parameter is named
    # intermediate_result, so the closure must not take extra (default) arguments.
    def cb(intermediate_result):
        history.append(float(intermediate_result.fun))
        if progress is not None:
            progress(ProgressInfo(len(history), torch.tensor([min(history)]), 0))
        return bool(callback(intermediate_result)) if callback is not None else False

    return cb


def search(
    problem: SearchProblem,
    *,
    strategy: str = "best1bin",
    popsize: int = 100,
    maxiter: int = 200,
    tol: float = 0.0,
    atol: float = 0.02,
    mutation: float | tuple[float, float] = 0.1,
    recombination: float = 0.3,
    seed: int = 100,
    init: str | torch.Tensor = "latinhypercube",
    x0: torch.Tensor | None = None,
    callback: Callable | None = None,
    progress: Callable[[ProgressInfo], None] | None = None,
    scipy_polish: bool = True,
    **unused,
) -> SearchOutcome:
    """scipy's differential evolution, one layer after another.

    ``callback(intermediate_result)`` is scipy's (an OptimizeResult per generation) and may stop
    the run by returning True or raising StopIteration. ``scipy_polish`` is scipy's own
    L-BFGS-B polish on the (noisy) loss.
    """
    from scipy.optimize import differential_evolution

    if unused:
        raise TypeError(f"the scipy backend does not take {', '.join(sorted(unused))}")
    B, D = problem.num_layers, problem.dim
    xs, funs, histories, converged = [], [], [], []
    nit_total, nfev, messages = 0, 0, []
    results = []
    calls_base = 0
    if isinstance(init, torch.Tensor):
        init = init.detach().cpu().double().numpy()
    x0_np = None if x0 is None else torch.as_tensor(x0).detach().cpu().double().numpy()
    for b in range(B):
        calls = [0, 0]  # calls, candidates
        history: list[float] = []

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

        cb = _make_callback(history, progress, callback)

        layer_init = init if isinstance(init, str) or init.ndim == 2 else init[b]
        layer_x0 = None if x0_np is None else (x0_np if x0_np.ndim == 1 else x0_np[b])
        res = differential_evolution(
            func, [(0.0, 1.0)] * D, strategy=strategy, maxiter=maxiter, popsize=popsize,
            tol=tol, atol=atol, mutation=mutation, recombination=recombination,
            rng=np.random.default_rng(seed + b), polish=scipy_polish, init=layer_init,
            x0=layer_x0, callback=cb, vectorized=True, updating="deferred",
        )
        calls_base += calls[0]
        results.append(res)
        xs.append(torch.as_tensor(res.x))
        funs.append(float(res.fun))
        histories.append(history)
        converged.append(bool(res.success))
        nit_total = max(nit_total, int(res.nit))
        nfev += calls[1]  # candidates, whatever scipy counts in vectorized mode
        messages.append(str(res.message))
    width = max(len(h) for h in histories)
    hist = torch.full((B, width), float("nan"), dtype=torch.float64)
    for b, h in enumerate(histories):
        if h:
            hist[b, : len(h)] = torch.as_tensor(h)
            hist[b, len(h):] = h[-1]
    stop = "converged" if all(converged) else "maxiter"
    if any("callback" in m.lower() for m in messages):
        stop = "callback"
    return SearchOutcome(
        x=torch.stack(xs).to(device=problem.device, dtype=problem.dtype),
        fun=torch.tensor(funs, dtype=problem.dtype, device=problem.device),
        nit=nit_total, nfev=nfev, converged=torch.tensor(converged), stop_reason=stop,
        message="; ".join(messages), history=hist, extra={"scipy_results": results},
    )
