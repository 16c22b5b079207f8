"""The scipy backend: scipy's differential evolution on the same objective, layers in lockstep.

Each layer is one ``scipy.optimize.differential_evolution`` search (vectorized: x arrives as
[D, S]; deferred updating), driven generation by generation through scipy's own solver object
(``DifferentialEvolutionSolver``, one ``next()`` per generation, the loop of its ``solve()``):
every generation steps the layers still searching one after another, so the run counts its
generations, calls its callback and reports ``x``, ``fun`` and ``history`` as the other backends
do (:mod:`gpuwpo.search.backends.base`). A layer's search is exactly scipy's
``differential_evolution`` with the same arguments and generator (the stream ``"search"`` of
the seed keyed by the layer's id), and numbers its own loss calls 0, 1, 2, ..., so a layer
searched alone is the one searched beside others. It is the reference the torch engine is tested
against, and slow on purpose of being scipy.

It has no parent re-evaluation (``noise_robust``), no checkpoints and no other algorithm: given
explicitly, those options are refused (:data:`accepts`). scipy keeps a member's first (noisy)
energy, so its incumbent is measured again on the latest generation's noise whenever it was not
among that generation's trials (the meaning of ``fun``). scipy's own polish is off; the
optimizer's polish and validation apply to every backend alike.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack

import numpy as np
import torch

from ...rng import stream_seed
from ..de import MESSAGES, de_init
from ..options import SearchOptions, de_accepts
from .base import (
    IntermediateResult,
    LayerEvaluations,
    Lockstep,
    SearchOutcome,
    SearchProblem,
)

__all__ = ["search", "accepts"]


def accepts(options: SearchOptions) -> frozenset[str]:
    """The search options this backend honours: the DE's, nothing more."""
    return de_accepts(options)


def _solver_class():
    """scipy's ``DifferentialEvolutionSolver``: the object behind ``differential_evolution``,
    which steps one generation per ``next()``."""
    try:
        from scipy.optimize._differentialevolution import DifferentialEvolutionSolver
    except ImportError as error:  # pragma: no cover - depends on the scipy version
        raise ImportError("the scipy backend needs scipy's DifferentialEvolutionSolver "
                          "(scipy.optimize._differentialevolution), which this scipy does not "
                          "have; install scipy >= 1.15") from error
    return DifferentialEvolutionSolver


def _scipy_loss(layer: LayerEvaluations) -> Callable[[np.ndarray], np.ndarray]:
    """The layer's loss as scipy calls it in vectorized mode: x [D, S] -> [S]."""
    p = layer.problem

    def func(x: np.ndarray) -> np.ndarray:
        cand = torch.as_tensor(np.atleast_2d(x.T), dtype=p.dtype, device=p.device)
        return layer(cand).detach().double().cpu().numpy()

    return func


def search(problem: SearchProblem, options: SearchOptions, *,
           progress: Callable[[IntermediateResult], None] | None = None) -> SearchOutcome:
    """scipy's differential evolution, every layer one generation at a time.

    The callback receives an :class:`IntermediateResult` after every generation (every layer
    still searching has run it); returning True or raising StopIteration stops the run. A layer
    converges by scipy's test (``std(E) <= atol + tol * |mean(E)|``, never before its first
    generation) and then stops; the run ends when every layer has, or after ``maxiter``
    generations.
    """
    o = options
    B, D = problem.num_layers, problem.dim
    init = o.x_init
    if isinstance(init, torch.Tensor):
        init = init.detach().cpu().double().numpy()
    x0_np = None if o.x0 is None else torch.as_tensor(o.x0).detach().cpu().double().numpy()
    solver_class = _solver_class()
    layers = [LayerEvaluations(problem, b) for b in range(B)]
    solvers = []
    run = Lockstep.start(problem, dtype=torch.float64, device="cpu")
    with ExitStack() as stack:
        for b in range(B):
            layer_init = init if isinstance(init, str) or init.ndim == 2 else init[b]
            layer_x0 = None if x0_np is None else (x0_np if x0_np.ndim == 1 else x0_np[b])
            if layer_x0 is not None and layer_x0.ndim == 2:
                # Several warm starts (the standard starts): scipy takes one x0, so they go into
                # the initial population, drawn as the torch backend draws it, replacing its
                # first members.
                first = de_init(dim=D, num_layers=1, popsize=o.popsize,
                                init=layer_init if isinstance(layer_init, str)
                                else torch.as_tensor(layer_init),
                                x0=torch.as_tensor(layer_x0).unsqueeze(0), seed=o.seed,
                                layer_ids=[problem.layer_id(b)], dtype=torch.float64)
                layer_init, layer_x0 = first.population[0].numpy(), None
            solvers.append(stack.enter_context(solver_class(
                _scipy_loss(layers[b]), [(0.0, 1.0)] * D, strategy=o.strategy,
                maxiter=o.maxiter, popsize=o.popsize, tol=o.tol, atol=o.atol,
                mutation=o.mutation, recombination=o.recombination,
                rng=np.random.default_rng(stream_seed(o.seed, "search", problem.layer_id(b))),
                polish=False, init=layer_init, x0=layer_x0, updating="deferred",
                vectorized=True)))

        def step(b: int) -> tuple[torch.Tensor, bool]:
            # One generation (the first also evaluates the initial population), then scipy's
            # convergence test, as its solve() does.
            next(solvers[b])
            return torch.as_tensor(solvers[b].x), bool(solvers[b].converged())

        run.run(step, layers, maxiter=o.maxiter, callback=o.callback, progress=progress)
    return run.outcome(problem, layers, MESSAGES[run.stop_reason],
                       {"solvers": solvers, "calls": sum(layer.calls for layer in layers)})
