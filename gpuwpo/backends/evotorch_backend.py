"""The EvoTorch backend: the objective as EvoTorch ``Problem`` objects, searched by EvoTorch.

``algorithm`` picks the searcher:

* ``"de"``: differential evolution written as an EvoTorch ``SearchAlgorithm`` (with
  ``SinglePopulationAlgorithmMixin``). Its ``_step()`` is one generation of the torch engine
  (:func:`gpuwpo.de.de_ask` / :func:`gpuwpo.de.de_tell` on a one-layer state): scipy's mutation
  strategies, binomial/exponential crossover, escaped coordinates re-sampled into [0, 1],
  selection ``trial <= parent``, scipy's convergence test ``std(E) <= atol + tol * |mean(E)|``.
* ``"cmaes"``: :class:`evotorch.algorithms.CMAES`.
* ``"snes"``: :class:`evotorch.algorithms.SNES`.
* ``"ga"``: :class:`evotorch.algorithms.GeneticAlgorithm` with simulated binary cross-over
  (tournaments of 4, ``eta=20``, as many children as parents) and Gaussian mutation of standard
  deviation ``mutation``.

Layers. EvoTorch's ``Problem`` is one search, gpuwpo's objective is B searches (one per layer)
that it evaluates together. Each layer gets its own ``Problem`` (with its own seeded generator)
and its own searcher, and the B searchers run *in lockstep*: every generation each searcher's
``step()`` runs in a worker thread; when its ``Problem`` is asked to evaluate a batch it hands the
batch to a shared rendezvous and waits; once every layer still searching has handed in a batch
(or finished its step), ONE call of ``problem.loss`` on a [B, P, D] tensor evaluates all of them
and each thread takes its row back. So a generation costs the same single batched loss call as
in the torch backend, not B calls, and no layer is evaluated on another layer's behalf. Rows of
layers that do not take part (a converged DE layer, or a layer whose batch is smaller) are filled
with the cube's centre and their losses dropped. The threads only wait on each other (the loss
runs in one of them at a time), so the result does not depend on thread scheduling: the same
``seed`` gives the same result.

The unit hypercube. CMA-ES, SNES and the GA search R^D (they refuse a ``Problem`` with hard
bounds). Every candidate is therefore evaluated at its reflection into [0, 1] (a triangle wave,
:func:`reflect_unit`: identity inside the cube, mirror images outside), and the reported ``x``
is the reflected point. The DE never leaves the cube, so for it the reflection does nothing.

Population size: ``max(5, popsize * D)`` for all four (scipy's rule; the DE and GA additionally
round up to a power of two for ``init="sobol"``), so that a generation costs the same whatever
the algorithm. That is far above CMA-ES's default ``4 + 3 ln D``, which is fine: large
populations make CMA-ES more robust to noise and the cost is in the loss, not in CMA-ES's
O(P D^2) update.

What is reported. ``x``/``fun`` are the best candidate evaluated in the whole run and its loss
(the optimistic figure: with a noisy loss it is a lucky draw; validate with fresh noise).
``history[b, g]`` is layer b's best after generation g. Only the DE has a convergence test
(``converged``; a converged layer stops searching and the run ends when all have); CMA-ES, SNES
and the GA run ``maxiter`` generations unless the callback stops them.

Several machines (EvoTorch's Ray actors). An EvoTorch ``Problem`` built with ``num_actors=n``
(and, for the GPU objective, ``num_gpus_per_actor=1``, i.e. one actor per GPU; or
``num_actors="num_gpus"``) ships the objective to n Ray actors, possibly on other machines of a
Ray cluster, and splits each population between them. This backend does not do that itself: its
lockstep rendezvous needs all layers' candidates in one process, and the noise seed (the ``call``
counter) lives in this process. To spread a large search over several GPUs, use
:func:`layer_problem` to build one layer's objective as a plain (non-lockstep) EvoTorch
``Problem`` and pass ``num_actors``/``num_gpus_per_actor`` to it, e.g.::

    p = layer_problem(problem, layer=0, seed=1, num_actors="num_gpus")
    searcher = evotorch.algorithms.CMAES(p, stdev_init=0.25, popsize=2000)
    searcher.run(200)

Each actor then evaluates its share of the population for that layer (on the layer's row of a
[B, P', D] tensor, so B - 1 rows are wasted work: worth it only when the objective is much
dearer than that) and draws the noise of its own ``call`` counter. Ray is started by EvoTorch on
first evaluation; nothing here starts it by default.

EvoTorch is imported lazily: the rest of gpuwpo works without it.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from torch import Tensor

from ..de import (
    MESSAGES,
    _check_common,
    _check_mutation,
    de_ask,
    de_init,
    de_tell,
    population_size,
)
from .base import ProgressInfo, SearchOutcome, SearchProblem

__all__ = ["ALGORITHMS", "EvoTorchIntermediate", "layer_problem", "reflect_unit", "search"]

ALGORITHMS: tuple[str, ...] = ("de", "cmaes", "snes", "ga")


def reflect_unit(x: Tensor) -> Tensor:
    """Reflect x [...] from R into [0, 1] (a triangle wave of period 2).

    ``y = x mod 2``, then ``y -> 2 - y`` where ``y > 1``: the identity on [0, 1], continuous,
    and a point that steps out of the cube by ``e`` lands ``e`` inside it, so that an unbounded
    searcher sees a landscape without walls or flat plateaus.
    """
    y = torch.remainder(x, 2.0)
    return torch.where(y > 1.0, 2.0 - y, y)


@dataclass(frozen=True)
class EvoTorchIntermediate:
    """What the callback receives after every generation.

    Attributes:
        x: [B, D] best candidate of each layer so far (unit cube).
        fun: [B] its loss.
        nit: generations run.
        nfev: candidates evaluated so far (all layers together).
        history: [B, nit] best loss of each layer after each generation.
        searchers: the B EvoTorch search algorithms (one per layer), to inspect their status.
    """

    x: Tensor
    fun: Tensor
    nit: int
    nfev: int
    history: Tensor
    searchers: list


def _import_evotorch():
    try:
        import evotorch  # noqa: F401
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the evotorch backend needs EvoTorch, which is not installed: pip install evotorch"
        ) from error


@contextmanager
def _quiet_problem_setup():
    """Silence EvoTorch's INFO lines about a new Problem's dtype and device while building them:
    with one Problem per layer they would be 3 B lines of noise per search."""
    logger = logging.getLogger("evotorch.core")
    level = logger.level
    logger.setLevel(max(logging.WARNING, level))
    try:
        yield
    finally:
        logger.setLevel(level)


class _Aborted(Exception):
    """Raised in a layer's thread when another layer's thread failed."""


class _Lockstep:
    """Rendezvous that evaluates the batches of all layers in one call of the loss.

    Each layer's thread calls :meth:`evaluate` with its candidates [P_b, D] and blocks; when every
    layer still running a step has either handed in a batch or left (finished its step), the last
    one to arrive calls ``loss`` once on [B, max P_b, D] and wakes the others. It also keeps the
    call counter (the noise seed), the candidate count and the best candidate of each layer.
    """

    def __init__(self, problem: SearchProblem):
        self._problem = problem
        B, D = problem.num_layers, problem.dim
        self.calls = 0
        self.nfev = 0
        self.best_x = torch.full((B, D), float("nan"), device=problem.device, dtype=problem.dtype)
        self.best_f = torch.full((B,), float("inf"), device=problem.device, dtype=problem.dtype)
        self._cond = threading.Condition()
        self._running: set[int] = set()
        self._pending: dict[int, Tensor] = {}
        self._results: dict[int, Tensor] = {}
        self._round = 0
        self._failed = False

    # -- called from the layers' threads

    def evaluate(self, layer: int, values: Tensor) -> Tensor:
        """Losses [P_b] of layer ``layer``'s candidates ``values`` [P_b, D], at their reflection."""
        with self._cond:
            if self._failed:
                raise _Aborted
            self._pending[layer] = values
            ticket = self._round
            self._flush_if_ready()
            while self._round == ticket and not self._failed:
                self._cond.wait()
            if layer in self._results:
                return self._results.pop(layer)
            raise _Aborted

    def _leave(self, layer: int) -> None:
        with self._cond:
            self._running.discard(layer)
            self._flush_if_ready()

    def _fail(self) -> None:
        with self._cond:
            self._failed = True
            self._cond.notify_all()

    def _flush_if_ready(self) -> None:
        # under self._cond: every running layer is waiting for its batch -> one loss call
        if self._failed or not self._pending or set(self._pending) != self._running:
            return
        pending, self._pending = self._pending, {}
        try:
            self._results.update(self._evaluate_all(pending))
        except BaseException:
            self._failed = True
            self._cond.notify_all()
            raise
        self._round += 1
        self._cond.notify_all()

    def _evaluate_all(self, pending: dict[int, Tensor]) -> dict[int, Tensor]:
        problem = self._problem
        B, D = problem.num_layers, problem.dim
        size = max(v.shape[0] for v in pending.values())
        # layers not taking part get the cube's centre: any valid point will do, its loss is dropped
        x = torch.full((B, size, D), 0.5, device=problem.device, dtype=problem.dtype)
        valid = torch.zeros((B, size), dtype=torch.bool, device=problem.device)
        for b, values in pending.items():
            x[b, : values.shape[0]] = reflect_unit(values.to(x))
            valid[b, : values.shape[0]] = True
        losses = torch.as_tensor(problem.loss(x, self.calls))
        self.calls += 1
        if tuple(losses.shape) != (B, size):
            raise RuntimeError(
                f"the loss must map x {[B, size, D]} to losses {[B, size]},"
                f" got {list(losses.shape)}"
            )
        losses = losses.to(device=problem.device, dtype=problem.dtype)
        self.nfev += sum(v.shape[0] for v in pending.values())
        # best so far, without a device sync: NaN counts as worse than anything
        masked = torch.where(valid & ~torch.isnan(losses), losses, float("inf"))
        row_best, where = masked.min(dim=1)
        better = row_best < self.best_f
        candidate = torch.gather(x, 1, where[:, None, None].expand(B, 1, D))[:, 0]
        self.best_x = torch.where(better[:, None], candidate, self.best_x)
        self.best_f = torch.where(better, row_best, self.best_f)
        return {b: losses[b, : v.shape[0]] for b, v in pending.items()}

    # -- called from the main thread

    def run_generation(
        self, steps: dict[int, Callable[[], Any]], pool: ThreadPoolExecutor | None
    ) -> None:
        """Run ``steps[b]()`` for every layer b given, all at once, and wait for them."""
        with self._cond:
            self._running = set(steps)
            self._pending, self._results, self._failed = {}, {}, False
        if pool is None or len(steps) == 1:
            for layer, step in steps.items():  # one layer: nothing to wait for, no thread
                self._run_layer(layer, step)
            return
        futures = [pool.submit(self._run_layer, b, step) for b, step in steps.items()]
        errors = [f.exception() for f in futures]
        real = [e for e in errors if e is not None and not isinstance(e, _Aborted)]
        if real:
            raise real[0]
        if any(e is not None for e in errors):  # pragma: no cover - aborted with no cause
            raise RuntimeError("a layer's search was aborted")

    def _run_layer(self, layer: int, step: Callable[[], Any]) -> None:
        try:
            step()
        except BaseException:
            self._fail()
            raise
        finally:
            self._leave(layer)


@cache
def _classes():
    """The EvoTorch subclasses, made on first use so that importing gpuwpo needs no EvoTorch."""
    _import_evotorch()
    from evotorch import Problem, SolutionBatch
    from evotorch.algorithms.searchalgorithm import (
        SearchAlgorithm,
        SinglePopulationAlgorithmMixin,
    )

    class LockstepLayerProblem(Problem):
        """One layer of a :class:`SearchProblem`, evaluated through the shared rendezvous."""

        def __init__(self, lockstep: _Lockstep, layer: int, problem: SearchProblem, seed: int):
            super().__init__(
                "min", solution_length=problem.dim, initial_bounds=(0.0, 1.0),
                dtype=problem.dtype, device=problem.device, seed=seed,
                store_solution_stats=False,  # (overriding _evaluate_batch makes it vectorized)
            )
            self._lockstep = lockstep
            self._layer = layer

        def _evaluate_batch(self, batch: SolutionBatch) -> None:
            batch.set_evals(self._lockstep.evaluate(self._layer, batch.values))

    class StandaloneLayerProblem(Problem):
        """One layer of a :class:`SearchProblem` on its own (see :func:`layer_problem`)."""

        def __init__(self, problem: SearchProblem, layer: int, seed: int | None, **kwargs):
            super().__init__(
                "min", solution_length=problem.dim, initial_bounds=(0.0, 1.0),
                dtype=problem.dtype, device=kwargs.pop("device", problem.device), seed=seed,
                **kwargs,
            )
            self._loss = problem.loss
            self._num_layers = problem.num_layers
            self._layer = layer
            self._calls = 0

        def _evaluate_batch(self, batch: SolutionBatch) -> None:
            x = reflect_unit(batch.values)
            # the loss wants every layer: this layer's candidates in every row, keep row `layer`
            full = x.unsqueeze(0).expand(self._num_layers, -1, -1)
            losses = torch.as_tensor(self._loss(full, self._calls))[self._layer]
            self._calls += 1
            batch.set_evals(losses.to(device=batch.device, dtype=self.eval_dtype))

    class DifferentialEvolution(SearchAlgorithm, SinglePopulationAlgorithmMixin):
        """scipy-style differential evolution as an EvoTorch search algorithm (one layer).

        The state is a one-layer :class:`gpuwpo.de.DEState` (B = 1); ``_step()`` is one
        generation of :func:`gpuwpo.de.de_ask` / :func:`gpuwpo.de.de_tell`, with the candidates
        evaluated by the problem's batch evaluation. The first step also evaluates the initial
        population (scipy does that before generation 1). With ``noise_robust`` the parents are
        re-evaluated in the same batch (same noise) as their trials and selection compares
        those values (common random numbers).
        """

        def __init__(self, problem: Problem, *, state, noise_robust: bool = True):
            SearchAlgorithm.__init__(self, problem)
            if state.population.shape[0] != 1:
                raise ValueError("DifferentialEvolution drives a one-layer DEState")
            self._state = state
            self._noise_robust = bool(noise_robust)
            self._population = SolutionBatch(
                problem, popsize=state.population.shape[1], empty=True
            )
            self._population.set_values(state.population[0])
            SinglePopulationAlgorithmMixin.__init__(self)

        @property
        def population(self) -> SolutionBatch:
            """The current population (member 0 is the best once evaluated)."""
            return self._population

        @property
        def state(self):
            """The one-layer :class:`gpuwpo.de.DEState`."""
            return self._state

        @property
        def is_terminated(self) -> bool:
            """Whether scipy's convergence test has passed."""
            return bool(self._state.converged.all())

        def _energies(self, values: Tensor) -> Tensor:
            """[1, N] losses of values [N, D] through the problem's batch evaluation."""
            batch = SolutionBatch(self.problem, popsize=values.shape[0], empty=True)
            batch.set_values(values)
            self.problem.evaluate(batch)
            # evals is EvoTorch's ReadOnlyTensor: keep that subclass out of the DE state
            return batch.evals[:, 0].as_subclass(Tensor).to(values.dtype)[None]

        def _step(self) -> None:
            state = self._state
            if not state.evaluated:
                x, state = de_ask(state)
                state = de_tell(state, x, self._energies(x[0]))
            trials, state = de_ask(state)
            if self._noise_robust:
                size = trials.shape[1]
                energies = self._energies(torch.cat([state.population[0], trials[0]]))
                state = de_tell(
                    state, trials, energies[:, size:], parent_energies=energies[:, :size]
                )
            else:
                state = de_tell(state, trials, self._energies(trials[0]))
            self._state = state
            self._population.set_values(state.population[0])
            self._population.set_evals(state.energies[0].to(self._population.evals.dtype))

    return LockstepLayerProblem, StandaloneLayerProblem, DifferentialEvolution


def layer_problem(problem: SearchProblem, layer: int, *, seed: int | None = None, **kwargs):
    """One layer of ``problem`` as a stand-alone EvoTorch ``Problem`` (minimise, length D).

    Candidates are evaluated at their reflection into the unit cube (:func:`reflect_unit`), so
    any EvoTorch searcher may be used on it. ``kwargs`` go to ``evotorch.Problem`` (e.g.
    ``num_actors``, ``num_gpus_per_actor``, ``actor_config``; ``device`` defaults to the
    objective's). Each evaluation calls ``problem.loss`` with this layer's candidates in every
    row of [B, P, D] and keeps row ``layer``: B - 1 rows are wasted, the price of not needing the
    other layers. :func:`search` does not use it (it evaluates all layers in one call).
    """
    if not 0 <= layer < problem.num_layers:
        raise ValueError(f"layer must lie in [0, {problem.num_layers}), got {layer}")
    return _classes()[1](problem, layer, seed, **kwargs)


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
    init: str | Tensor = "latinhypercube",
    x0: Tensor | None = None,
    callback: Callable[[EvoTorchIntermediate], bool | None] | None = None,
    progress: Callable[[ProgressInfo], None] | None = None,
    algorithm: str = "de",
    noise_robust: bool = True,
    stdev_init: float = 0.25,
    **unused,
) -> SearchOutcome:
    """Search every layer of ``problem`` with an EvoTorch algorithm, all layers in lockstep.

    Args:
        problem: the objective (B layers, dimension D, device, dtype).
        strategy, mutation, recombination, tol, atol: the DE's (as in scipy). ``mutation`` is
            also the GA's Gaussian mutation standard deviation (the middle of a dithering
            range). All are validated whatever the algorithm.
        popsize: population multiplier: P = ``max(5, popsize * D)`` for every algorithm.
        maxiter: generations at most.
        seed: layer b's searcher (its ``Problem``'s generator and the DE's) is seeded with
            ``seed + b``; the same seed gives the same result.
        init: initial population of the DE and the GA: ``"latinhypercube"``, ``"random"``,
            ``"sobol"`` or a tensor [P, D] / [B, P, D] in the unit cube. CMA-ES and SNES start
            from a distribution instead and refuse a tensor.
        x0: [D] or [B, D] warm start in the unit cube: member 0 of the DE's/GA's population, the
            centre of CMA-ES's/SNES's distribution (default: the cube's centre).
        callback: called after every generation with an :class:`EvoTorchIntermediate`;
            returning True or raising StopIteration stops the run.
        progress: called after every generation with a :class:`ProgressInfo`.
        algorithm: ``"de"``, ``"cmaes"``, ``"snes"`` or ``"ga"``.
        noise_robust: DE: parents re-evaluated with their trials (common random numbers); GA:
            EvoTorch's ``re_evaluate`` (parents re-evaluated every generation).
        stdev_init: initial standard deviation of CMA-ES's and SNES's distribution (unit-cube
            units).

    Returns:
        A :class:`SearchOutcome`: ``x`` [B, D] and ``fun`` [B] the best candidate evaluated
        (reflected into the cube) and its loss, ``history`` [B, nit], ``nfev`` candidates
        evaluated, ``converged`` [B] (DE only; False for the others),
        ``extra["searchers"]`` the B EvoTorch algorithms and ``extra["calls"]`` the number of
        loss calls.
    """
    if unused:
        raise TypeError(f"the evotorch backend does not take {', '.join(sorted(unused))}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter < 1:
        raise ValueError(f"maxiter must be an integer >= 1, got {maxiter!r}")
    _check_common(strategy=strategy, recombination=recombination, tol=tol, atol=atol)
    mutation_low, mutation_high, _ = _check_mutation(mutation)
    if not stdev_init > 0:
        raise ValueError(f"stdev_init must be > 0, got {stdev_init!r}")
    B, D = problem.num_layers, problem.dim
    if isinstance(init, Tensor):
        if algorithm in ("cmaes", "snes"):
            raise ValueError(f"{algorithm} starts from a distribution, not an init population;"
                             " give x0 (its centre) instead")
        init = init.to(device=problem.device, dtype=problem.dtype)
        if init.dim() == 3 and init.shape[0] != B:
            raise ValueError(f"init must have shape [P, D] or [{B}, P, D], got {tuple(init.shape)}")
    else:
        population_size(D, popsize, init)  # validates popsize
    if x0 is not None:
        x0 = torch.as_tensor(x0).to(device=problem.device, dtype=problem.dtype)
        if x0.shape not in ((D,), (B, D)):
            raise ValueError(f"x0 must have shape [{D}] or [{B}, {D}], got {tuple(x0.shape)}")
        if not bool(((x0 >= 0) & (x0 <= 1)).all()):
            raise ValueError(f"x0 must lie in the unit cube [0, 1], got {x0.tolist()}")

    _import_evotorch()
    from evotorch.algorithms import CMAES, SNES, GeneticAlgorithm
    from evotorch.operators import GaussianMutation, SimulatedBinaryCrossOver

    LockstepLayerProblem, _, DifferentialEvolution = _classes()
    lockstep = _Lockstep(problem)

    def layer_state(b: int):
        # de_init validates init/x0 and draws the initial population from the layer's seed
        layer_init = init if isinstance(init, str) or init.dim() == 2 else init[b]
        layer_x0 = None if x0 is None else (x0 if x0.dim() == 1 else x0[b])
        return de_init(
            dim=D, num_layers=1, popsize=popsize, init=layer_init, x0=layer_x0,
            strategy=strategy, mutation=mutation, recombination=recombination, tol=tol,
            atol=atol, seed=seed + b, device=problem.device, dtype=problem.dtype,
        )

    def make_searcher(b: int):
        evo_problem = LockstepLayerProblem(lockstep, b, problem, seed + b)
        if algorithm == "de":
            return DifferentialEvolution(evo_problem, state=layer_state(b),
                                         noise_robust=noise_robust)
        if algorithm == "ga":
            start = layer_state(b).population[0]
            ga = GeneticAlgorithm(
                evo_problem,
                operators=[
                    SimulatedBinaryCrossOver(evo_problem, tournament_size=4, eta=20.0),
                    GaussianMutation(evo_problem, stdev=0.5 * (mutation_low + mutation_high)),
                ],
                popsize=start.shape[0], re_evaluate=noise_robust,
            )
            ga.population.set_values(start)
            return ga
        size = population_size(D, popsize)
        centre = torch.full((D,), 0.5, device=problem.device, dtype=problem.dtype)
        if x0 is not None:
            centre = x0 if x0.dim() == 1 else x0[b]
        searcher_class = CMAES if algorithm == "cmaes" else SNES
        with warnings.catch_warnings():
            # EvoTorch's CMAES copy-constructs a tensor with torch.tensor(); not ours to fix
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")
            return searcher_class(evo_problem, stdev_init=stdev_init, popsize=size,
                                  center_init=centre.tolist())

    with _quiet_problem_setup():
        searchers = [make_searcher(b) for b in range(B)]
    history: list[Tensor] = []
    active = list(range(B))
    converged = torch.zeros(B, dtype=torch.bool, device=problem.device)
    stop_reason = "maxiter"
    nit = 0
    # every layer blocks on the others inside a generation: one thread per layer is needed
    pool = None
    if B > 1:
        pool = ThreadPoolExecutor(max_workers=B, thread_name_prefix="gpuwpo-evotorch")
    try:
        while nit < maxiter:
            lockstep.run_generation({b: searchers[b].step for b in active}, pool)
            nit += 1
            history.append(lockstep.best_f.clone())
            if algorithm == "de":
                converged = torch.cat([s.state.converged for s in searchers])
                active = [b for b in range(B) if not bool(converged[b])]
            if progress is not None:
                progress(ProgressInfo(nit, lockstep.best_f.clone(), lockstep.nfev))
            if callback is not None:
                info = EvoTorchIntermediate(
                    x=lockstep.best_x.clone(), fun=lockstep.best_f.clone(), nit=nit,
                    nfev=lockstep.nfev, history=torch.stack(history, dim=1), searchers=searchers,
                )
                try:
                    stop = bool(callback(info))
                except StopIteration:
                    stop = True
                if stop:
                    stop_reason = "callback"
                    break
            if not active:
                stop_reason = "converged"
                break
    finally:
        if pool is not None:
            pool.shutdown(wait=True)

    return SearchOutcome(
        x=lockstep.best_x, fun=lockstep.best_f, nit=nit, nfev=lockstep.nfev,
        converged=converged, stop_reason=stop_reason, message=MESSAGES[stop_reason],
        history=torch.stack(history, dim=1),
        extra={"searchers": searchers, "calls": lockstep.calls, "algorithm": algorithm},
    )
