"""The EvoTorch backend: the objective as EvoTorch ``Problem`` objects, searched by EvoTorch.

``algorithm`` picks the searcher:

* ``"de"``: differential evolution written as an EvoTorch ``SearchAlgorithm`` (with
  ``SinglePopulationAlgorithmMixin``). Its ``_step()`` is one generation of the torch engine
  (:func:`gpuwpo.search.de.de_ask` / :func:`gpuwpo.search.de.de_tell` on a one-layer state):
  scipy's mutation
  strategies, binomial/exponential crossover, escaped coordinates re-sampled into [0, 1],
  selection ``trial <= parent``, scipy's convergence test ``std(E) <= atol + tol * |mean(E)|``.
* ``"cmaes"``: :class:`evotorch.algorithms.CMAES`.
* ``"snes"``: :class:`evotorch.algorithms.SNES`.
* ``"ga"``: :class:`evotorch.algorithms.GeneticAlgorithm` with simulated binary cross-over
  (tournaments of 4, ``eta=20``, as many children as parents) and Gaussian mutation of standard
  deviation ``mutation``.

Layers. EvoTorch's ``Problem`` is one search, gpuwpo's objective is B searches (one per layer).
Each layer gets its own ``Problem`` (with its own seeded generator and its own count of
evaluations) and its own searcher; every generation steps the searchers of the layers still
searching one after another, each evaluating its own layer's candidates (``loss(x, call,
layers=[b])``: every layer's noise is keyed by its id, so a layer searched on its own gets exactly
what it gets beside the others). A layer's randomness is the run's stream ``"search"`` keyed by
its id (:func:`gpuwpo.rng.stream_seed`): the DE's (and the GA's initial population) exactly as
the torch engine draws it, EvoTorch's own generator under one further key. A plain loop, no
threads: the result depends only on ``seed``.

The unit hypercube. CMA-ES, SNES and the GA search R^D (they refuse a ``Problem`` with hard
bounds). Every candidate is therefore evaluated at its reflection into [0, 1] (a triangle wave,
:func:`reflect_unit`: identity inside the cube, mirror images outside), and the reported ``x``
is the reflected point. The DE never leaves the cube, so for it the reflection does nothing.

Population size: ``max(5, popsize * D)`` for all four (scipy's rule; the DE and GA additionally
round up to a power of two for ``init="sobol"``), so that a generation costs the same whatever
the algorithm. That is far above CMA-ES's default ``4 + 3 ln D``, which is fine: large
populations make CMA-ES more robust to noise and the cost is in the loss, not in CMA-ES's
O(P D^2) update.

What is reported: the meanings of :mod:`gpuwpo.search.backends.base`, as in every backend.
``x[b]`` is layer b's incumbent (the DE's member 0; the GA's best member; CMA-ES's and SNES's
best of the generation's sampled population, reflected into the cube), ``fun[b]`` its loss on
the noise of the layer's latest evaluation (measured again on that noise when the incumbent was
not among its candidates: never a best-ever lucky draw), ``history[b, g - 1]`` ``fun[b]`` after
generation g. Only the DE has a convergence test (``converged``; a converged layer stops
searching and the run ends when all have); CMA-ES, SNES and the GA run ``maxiter`` generations
unless the callback stops them. Checkpoints (:mod:`gpuwpo.search.checkpoint`): the DE's state
(each layer's DE state, its ``Problem``'s count of evaluations, the incumbents' figures) is saved
as the torch backend's is, and a resumed DE ends exactly as the uninterrupted one; CMA-ES, SNES
and the GA keep their state in EvoTorch's objects and refuse ``checkpoint`` and ``resume``.

EvoTorch is imported lazily: the rest of gpuwpo works without it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from functools import cache

import torch
from torch import Tensor

from ...rng import stream_seed
from ..checkpoint import Checkpointing, PeriodicCheckpoint, Stage, search_fingerprint
from ..de import (
    MESSAGES,
    check_de_settings,
    check_mutation,
    de_ask,
    de_init,
    de_tell,
    population_size,
    state_from_dict,
    state_to_dict,
)
from ..options import SearchOptions
from .base import (
    IntermediateResult,
    LayerEvaluations,
    Lockstep,
    SearchOutcome,
    SearchProblem,
)

__all__ = ["ALGORITHMS", "accepts", "reflect_unit", "search"]

ALGORITHMS: tuple[str, ...] = ("de", "cmaes", "snes", "ga")

#: The further key of a layer's stream ``"search"`` that seeds EvoTorch's own generator (its
#: ``Problem``'s: CMA-ES's and SNES's samples, the GA's operators), apart from the stream the
#: DE state and the initial population draw from.
_EVOTORCH_KEY = 1


def reflect_unit(x: Tensor) -> Tensor:
    """Reflect x [...] from R into [0, 1] (a triangle wave of period 2).

    ``y = x mod 2``, then ``y -> 2 - y`` where ``y > 1``: the identity on [0, 1], continuous,
    and a point that steps out of the cube by ``e`` lands ``e`` inside it, so that an unbounded
    searcher sees a landscape without walls or flat plateaus.
    """
    y = torch.remainder(x, 2.0)
    return torch.where(y > 1.0, 2.0 - y, y)


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


@cache
def _classes():
    """The EvoTorch subclasses, made on first use so that importing gpuwpo needs no EvoTorch."""
    _import_evotorch()
    from evotorch import Problem, SolutionBatch
    from evotorch.algorithms.searchalgorithm import (
        SearchAlgorithm,
        SinglePopulationAlgorithmMixin,
    )

    class LayerProblem(Problem):
        """One layer of a :class:`SearchProblem`, evaluated at the candidates' reflection."""

        def __init__(self, problem: SearchProblem, layer: int, seed: int):
            super().__init__(
                "min", solution_length=problem.dim, initial_bounds=(0.0, 1.0),
                dtype=problem.dtype, device=problem.device, seed=seed,
                store_solution_stats=False,  # (overriding _evaluate_batch makes it vectorized)
            )
            self._problem = problem
            # The layer's numbered loss calls, and its incumbent measured on the latest one.
            self.evaluations = LayerEvaluations(problem, layer)

        def _evaluate_batch(self, batch: SolutionBatch) -> None:
            x = reflect_unit(batch.values.as_subclass(Tensor)).to(self._problem.dtype)
            losses = self.evaluations(x).to(device=self._problem.device,
                                            dtype=self._problem.dtype)
            batch.set_evals(losses.to(self.eval_dtype))

    class DifferentialEvolution(SearchAlgorithm, SinglePopulationAlgorithmMixin):
        """scipy-style differential evolution as an EvoTorch search algorithm (one layer).

        The state is a one-layer :class:`gpuwpo.search.de.DEState` (B = 1); ``_step()`` is one
        generation of :func:`gpuwpo.search.de.de_ask` / :func:`gpuwpo.search.de.de_tell`, with the
        candidates
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
            """The one-layer :class:`gpuwpo.search.de.DEState`."""
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

    return LayerProblem, DifferentialEvolution


_COMMON = frozenset({"popsize", "maxiter", "seed", "x_init", "x0", "callback", "algorithm"})
_PER_ALGORITHM = {
    "de": frozenset({"strategy", "mutation", "recombination", "tol", "atol", "noise_robust"}),
    "ga": frozenset({"mutation", "noise_robust"}),
    "cmaes": frozenset(),
    "snes": frozenset(),
}

#: Initial standard deviation of CMA-ES's and SNES's distribution (unit-cube units).
STDEV_INIT = 0.25


#: What the DE alone honours: its state is tensors, saved and continued exactly.
_CHECKPOINTS = frozenset({"checkpoint", "checkpoint_every", "resume"})

#: What a stage of this backend holds (its meta's ``kind``).
_KIND = "evotorch-de"


def accepts(options: SearchOptions) -> frozenset[str]:
    """The search options this backend honours with ``options.algorithm``."""
    return (_COMMON | _PER_ALGORITHM.get(options.algorithm, frozenset())
            | (_CHECKPOINTS if options.algorithm == "de" else frozenset()))


def _record(snapshot: dict) -> tuple[dict[str, Tensor], dict]:
    """A DE run's state at the end of a generation as a checkpoint stage's tensors and meta."""
    tensors: dict[str, Tensor] = {}
    metas = []
    for b, state in enumerate(snapshot["states"]):
        t, meta = state_to_dict(state)
        tensors.update({f"{b}.{name}": value for name, value in t.items()})
        metas.append(meta)
    tensors.update({
        "calls": torch.tensor(snapshot["calls"], dtype=torch.int64),
        "nfev": torch.tensor(snapshot["nfev"], dtype=torch.int64),
        "x": snapshot["x"], "fun": snapshot["fun"],
        "history": torch.stack(snapshot["history"], dim=1), "converged": snapshot["converged"],
    })
    return tensors, {"kind": _KIND, "nit": snapshot["nit"], "states": metas}


def _restore(path, stage: str, tensors: dict, meta: dict, problem: SearchProblem) -> dict:
    """The snapshot :func:`_record` saved, on the problem's device; a ValueError naming ``path``
    when it is not one of this problem."""
    B, D = problem.num_layers, problem.dim
    where = f"checkpoint {path}: stage {stage!r}"
    if meta.get("kind") != _KIND:
        raise ValueError(f"{where} holds no evotorch DE state (kind {meta.get('kind')!r})")
    try:
        metas, nit = meta["states"], int(meta["nit"])
        states = []
        for b in range(B):
            prefix = f"{b}."
            layer = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            states.append(state_from_dict(layer, metas[b], device=problem.device))
        dev = problem.device
        snapshot = {
            "states": states, "calls": [int(v) for v in tensors["calls"]],
            "nfev": [int(v) for v in tensors["nfev"]],
            "x": tensors["x"].to(dev), "fun": tensors["fun"].to(dev),
            "history": list(tensors["history"].to(dev).unbind(1)),
            "converged": tensors["converged"].to(dev), "nit": nit,
        }
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise ValueError(f"{where} is not a DE state of this search ({err})") from None
    if (len(metas) != B or tuple(tensors["x"].shape) != (B, D)
            or tuple(tensors["fun"].shape) != (B,)
            or tuple(tensors["history"].shape) != (B, nit)
            or any(s.population.shape[::2] != (1, D) for s in states)):
        raise ValueError(f"{where} holds a search of another shape, not B={B}, D={D}")
    return snapshot


def search(
    problem: SearchProblem,
    options: SearchOptions,
    *,
    progress: Callable[[IntermediateResult], None] | None = None,
    stage: Stage | None = None,
) -> SearchOutcome:
    """Search every layer of ``problem`` with an EvoTorch algorithm, one searcher per layer.

    Options used: ``algorithm`` ("de", "cmaes", "snes" or "ga"); ``popsize`` (P = ``max(5,
    popsize * D)`` for every algorithm); ``maxiter``; ``seed`` (layer b's searcher and its
    ``Problem`` draw from the stream ``"search"`` of ``seed`` keyed by the layer's id, any seed
    whole); ``x_init`` (initial
    population of the DE and the GA; CMA-ES and SNES start from a distribution and refuse a
    tensor); ``x0`` ([D] or [B, D]: member 0 of the DE's/GA's population, the centre of
    CMA-ES's/SNES's distribution, default the cube's centre); the DE's ``strategy``,
    ``mutation``, ``recombination``, ``tol``, ``atol``; the GA's Gaussian mutation standard
    deviation is the middle of ``mutation``; ``noise_robust`` (DE: parents re-evaluated with
    their trials; GA: EvoTorch's ``re_evaluate``); ``callback`` (an :class:`IntermediateResult`
    after every generation; True or StopIteration stops the run); the DE's ``checkpoint``,
    ``checkpoint_every`` and ``resume`` (or ``stage``, a stage of a checkpointed run, as in the
    torch backend): saved every ``checkpoint_every`` generations, at the end and on
    KeyboardInterrupt (:class:`gpuwpo.search.checkpoint.PeriodicCheckpoint`).

    Returns:
        A :class:`SearchOutcome` with the meanings of :mod:`gpuwpo.search.backends.base`
        (``extra["searchers"]``: the B EvoTorch algorithms).
    """
    o = options
    algorithm = o.algorithm
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    check_de_settings(strategy=o.strategy, recombination=o.recombination, tol=o.tol, atol=o.atol)
    mutation_low, mutation_high, _ = check_mutation(o.mutation)
    B, D = problem.num_layers, problem.dim
    init, x0 = o.x_init, o.x0
    if isinstance(init, Tensor):
        if algorithm in ("cmaes", "snes"):
            raise ValueError(f"{algorithm} starts from a distribution, not an init population;"
                             " give x0 (its centre) instead")
        init = init.to(device=problem.device, dtype=problem.dtype)
        if init.dim() == 3 and init.shape[0] != B:
            raise ValueError(f"init must have shape [P, D] or [{B}, P, D], got {tuple(init.shape)}")
    else:
        population_size(D, o.popsize, init)  # validates popsize and init
    if x0 is not None:
        x0 = torch.as_tensor(x0).to(device=problem.device, dtype=problem.dtype)
        if x0.shape not in ((D,), (B, D)) and not (
                x0.dim() == 3 and x0.shape[0] == B and x0.shape[2] == D):
            raise ValueError(f"x0 must have shape [{D}], [{B}, {D}] or [{B}, W, {D}], got "
                             f"{tuple(x0.shape)}")
        if not bool(((x0 >= 0) & (x0 <= 1)).all()):
            raise ValueError("x0 must lie in the unit cube [0, 1]")

    checkpoint = stage
    if checkpoint is None and algorithm == "de":
        run = Checkpointing.from_options(o, search_fingerprint(problem, o, "evotorch"))
        checkpoint = None if run is None else run.stage("search")
    saved = None if checkpoint is None else checkpoint.resumed()
    restored = None
    if saved is not None:
        restored = _restore(checkpoint.source, checkpoint.name, *saved, problem)
        if restored["nit"] > o.maxiter:
            raise ValueError(f"checkpoint {checkpoint.source} is at generation "
                             f"{restored['nit']}, past maxiter={o.maxiter}; resume with "
                             f"maxiter >= {restored['nit']}")

    _import_evotorch()
    from evotorch.algorithms import CMAES, SNES, GeneticAlgorithm
    from evotorch.operators import GaussianMutation, SimulatedBinaryCrossOver

    LayerProblem, DifferentialEvolution = _classes()

    def layer_state(b: int):
        # de_init validates init/x0 and draws the initial population from the layer's seed
        layer_init = init if isinstance(init, str) or init.dim() == 2 else init[b]
        layer_x0 = None if x0 is None else (
            x0 if x0.dim() == 1 else x0[b] if x0.dim() == 2 else x0[b].unsqueeze(0))
        return de_init(
            dim=D, num_layers=1, popsize=o.popsize, init=layer_init, x0=layer_x0,
            strategy=o.strategy, mutation=o.mutation, recombination=o.recombination, tol=o.tol,
            atol=o.atol, seed=o.seed, device=problem.device, dtype=problem.dtype,
            layer_ids=[problem.layer_id(b)],
        )

    def make_searcher(evo_problem, b: int):
        if algorithm == "de":
            state = layer_state(b) if restored is None else restored["states"][b]
            return DifferentialEvolution(evo_problem, state=state, noise_robust=o.noise_robust)
        if algorithm == "ga":
            start = layer_state(b).population[0]
            ga = GeneticAlgorithm(
                evo_problem,
                operators=[
                    SimulatedBinaryCrossOver(evo_problem, tournament_size=4, eta=20.0),
                    GaussianMutation(evo_problem, stdev=0.5 * (mutation_low + mutation_high)),
                ],
                popsize=start.shape[0], re_evaluate=o.noise_robust,
            )
            ga.population.set_values(start)
            return ga
        centre = torch.full((D,), 0.5, device=problem.device, dtype=problem.dtype)
        if x0 is not None:
            # The first warm start (a given one, else the best-ranked standard start) centres
            # the distribution.
            centre = x0 if x0.dim() == 1 else (x0[b] if x0.dim() == 2 else x0[b, 0])
        searcher_class = CMAES if algorithm == "cmaes" else SNES
        with warnings.catch_warnings():
            # EvoTorch's CMAES copy-constructs a tensor with torch.tensor(); not ours to fix
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")
            return searcher_class(evo_problem, stdev_init=STDEV_INIT,
                                  popsize=population_size(D, o.popsize),
                                  center_init=centre.tolist())

    with _quiet_problem_setup():
        layer_problems = [
            LayerProblem(problem, b, stream_seed(o.seed, "search", problem.layer_id(b),
                                                 _EVOTORCH_KEY))
            for b in range(B)]
        searchers = [make_searcher(layer_problems[b], b) for b in range(B)]
    evaluations = [p.evaluations for p in layer_problems]
    run = Lockstep.start(problem)
    if restored is not None:
        for layer, calls, nfev in zip(evaluations, restored["calls"], restored["nfev"]):
            layer.calls, layer.nfev = calls, nfev
        run = Lockstep(restored["x"].to(problem.dtype), restored["fun"].to(problem.dtype),
                       list(restored["history"]), restored["converged"], restored["nit"])
        if bool(run.converged.all()):
            run.stop_reason = "converged"  # as the run that saved it stopped

    def step(b: int) -> tuple[Tensor, bool]:
        """One generation of layer b: its incumbent [D] in the cube, as its algorithm ranks its
        population, and whether it has converged (the DE's test; the others have none)."""
        searcher = searchers[b]
        searcher.step()
        if algorithm == "de":
            return searcher.state.population[0, 0], bool(searcher.state.converged.all())
        population = searcher.population
        evals = population.evals[:, 0].as_subclass(Tensor)
        best = int(torch.nan_to_num(evals, nan=float("inf")).argmin())
        return reflect_unit(population.values[best].as_subclass(Tensor)), False

    def snapshot(run: Lockstep) -> dict:
        # The DE run at the end of a generation (DE states are never mutated in place:
        # references suffice).
        return {"states": [s.state for s in searchers],
                "calls": [layer.calls for layer in evaluations],
                "nfev": [layer.nfev for layer in evaluations],
                "x": run.x, "fun": run.fun, "history": list(run.history),
                "converged": run.converged.clone(), "nit": run.nit}

    saver = PeriodicCheckpoint(checkpoint, _record,
                               None if restored is None else snapshot(run))
    with saver:
        run.run(step, evaluations, maxiter=o.maxiter, callback=o.callback, progress=progress,
                after=(lambda r: saver.generation(r.nit, snapshot(r))) if saver.saves else None)
    if saver.saves:
        saver.finish(snapshot(run))
    return run.outcome(problem, evaluations, MESSAGES[run.stop_reason],
                       {"searchers": searchers,
                        "calls": sum(layer.calls for layer in evaluations),
                        "algorithm": algorithm})
