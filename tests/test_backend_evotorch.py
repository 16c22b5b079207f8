"""Tests of the EvoTorch backend (gpuwpo.search.backends.evotorch_backend)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("evotorch")

from gpuwpo.search.backends import run_search  # noqa: E402
from gpuwpo.search.backends.base import IntermediateResult, SearchOutcome, SearchProblem  # noqa: E402
from gpuwpo.search.backends.evotorch_backend import ALGORITHMS, reflect_unit  # noqa: E402
from gpuwpo.search.de import STRATEGIES  # noqa: E402

# one optimum per layer, away from the cube's centre and from each other
CENTRES = torch.tensor([[0.3, 0.7, 0.2, 0.9], [0.6, 0.1, 0.5, 0.4]])
B, D = CENTRES.shape


class Sphere:
    """Shifted sphere per layer, loss(x [B, P, D], call) -> [B, P]; records what it was given.

    With ``noise > 0`` a per-call, per-layer offset plus per-candidate jitter is drawn from a
    generator seeded by ``call``, as the real objective does.
    """

    def __init__(self, centres: torch.Tensor = CENTRES, noise: float = 0.0):
        self.centres = centres
        self.noise = noise
        self.calls: list[int] = []
        self.shapes: list[tuple[int, ...]] = []
        self.first_best: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, call: int) -> torch.Tensor:
        self.calls.append(call)
        self.shapes.append(tuple(x.shape))
        loss = ((x - self.centres[:, None]) ** 2).sum(-1)
        if self.first_best is None:
            self.first_best = loss.min(dim=1).values
        if self.noise > 0:
            g = torch.Generator().manual_seed(1000 + call)
            loss = loss + self.noise * torch.rand(x.shape[:2], generator=g)
        return loss

    def problem(self) -> SearchProblem:
        return SearchProblem(self, self.centres.shape[0], self.centres.shape[1],
                             torch.device("cpu"))


def search(problem, **kwargs):
    """The evotorch backend through run_search, options as keywords."""
    progress = kwargs.pop("progress", None)
    return run_search("evotorch", problem, progress=progress, **kwargs)


FAST = dict(popsize=10, maxiter=60, seed=3)
# settings under which each algorithm should pin the sphere's optimum
SOLVING = {
    "de": dict(mutation=(0.5, 1.0), recombination=0.7, atol=0.0, tol=0.0),
    "cmaes": {},
    "snes": {},
    "ga": dict(mutation=0.02),
}


# ----------------------------------------------------------------------------------------------
# reflection


def test_reflect_unit_is_identity_inside_and_maps_everything_into_the_cube():
    inside = torch.rand(1000, dtype=torch.float64)
    inside[:3] = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    assert torch.equal(reflect_unit(inside), inside)
    x = 20 * torch.randn(10_000, dtype=torch.float64)
    y = reflect_unit(x)
    assert bool(((y >= 0) & (y <= 1)).all())
    # a triangle wave: even and 2-periodic, so a step out of the cube is mirrored back
    torch.testing.assert_close(reflect_unit(-x), y)
    torch.testing.assert_close(reflect_unit(x + 4.0), y)
    torch.testing.assert_close(reflect_unit(torch.tensor([1.25, -0.25, 2.5])),
                               torch.tensor([0.75, 0.25, 0.5]))


# ----------------------------------------------------------------------------------------------
# every algorithm


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_solves_the_sphere_in_the_cube(algorithm):
    sphere = Sphere()
    out = search(sphere.problem(), algorithm=algorithm, **FAST, **SOLVING[algorithm])
    assert isinstance(out, SearchOutcome)
    assert out.x.shape == (B, D) and out.fun.shape == (B,) and out.converged.shape == (B,)
    assert out.history.shape == (B, out.nit) and 1 <= out.nit <= FAST["maxiter"]
    assert out.x.device == torch.device("cpu") and out.x.dtype == torch.float32
    assert bool(((out.x >= 0) & (out.x <= 1)).all())
    # fun is the loss at the reported (reflected) x; the elitist searches (DE, GA) never lose
    # their best, so on a noiseless loss their history never gets worse (CMA-ES and SNES report
    # the best of each new sample, which may)
    torch.testing.assert_close(out.fun, ((out.x - CENTRES) ** 2).sum(-1))
    if algorithm in ("de", "ga"):
        assert bool((out.history[:, 1:] <= out.history[:, :-1]).all())
    torch.testing.assert_close(out.history[:, -1], out.fun)
    # each layer is its own search numbering its evaluations 0, 1, 2, ...; a loss that does not
    # take `layers` gets every row and the layer keeps its own. Single candidates are
    # incumbents measured again on a past call's noise (its number repeated).
    searched = [c for c, s in zip(sphere.calls, sphere.shapes) if s[1] > 1]
    per_layer = len(searched) // B
    assert sorted(searched) == sorted(list(range(per_layer)) * B)
    assert out.extra["calls"] == len(searched)
    assert set(sphere.calls) == set(searched)
    assert all(s[0] == B and s[2] == D for s in sphere.shapes)
    assert out.nfev == sum(s[1] for s in sphere.shapes)
    # far below the best of the first population
    factor = 1e-2 if algorithm == "ga" else 1e-3
    assert bool((out.fun < factor * sphere.first_best).all()), (out.fun, sphere.first_best)
    tol = 0.05 if algorithm == "ga" else 2e-3
    torch.testing.assert_close(out.x, CENTRES, atol=tol, rtol=0)


def test_population_size_is_popsize_times_dim_for_every_algorithm():
    for algorithm in ALGORITHMS:
        sphere = Sphere()
        robust = {"noise_robust": False} if algorithm in ("de", "ga") else {}
        search(sphere.problem(), algorithm=algorithm, popsize=3, maxiter=2, **robust)
        # (one candidate: an incumbent measured again on its generation's noise)
        sizes = {s[1] for s in sphere.shapes} - {1}
        assert sizes == {3 * D}, (algorithm, sizes)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_same_seed_same_result_other_seed_other_result(algorithm):
    runs = [search(Sphere(noise=0.01).problem(), algorithm=algorithm, popsize=5, maxiter=8,
                   seed=s) for s in (11, 11, 12)]
    assert torch.equal(runs[0].x, runs[1].x) and torch.equal(runs[0].history, runs[1].history)
    assert not torch.equal(runs[0].x, runs[2].x)


def test_layers_are_independent_searches():
    """Layer 0 of a two-layer run is the one-layer run with the same seed: no row mix-up."""
    both = search(Sphere().problem(), algorithm="de", popsize=5, maxiter=10, seed=7)
    alone = search(Sphere(CENTRES[:1]).problem(), algorithm="de", popsize=5, maxiter=10, seed=7)
    torch.testing.assert_close(both.x[:1], alone.x, rtol=0, atol=0)
    # The two-layer run goes on while layer 1 searches; layer 0's history then repeats its best.
    n = alone.history.shape[1]
    torch.testing.assert_close(both.history[:1, :n], alone.history, rtol=0, atol=0)
    assert bool((both.history[0, n:] == alone.history[0, -1]).all())
    # Layer b draws from the stream "search" keyed by its id: a one-layer search (id 0) of the
    # second layer's problem is not the second layer's search.
    second = search(Sphere(CENTRES[1:]).problem(), algorithm="de", popsize=5, maxiter=10, seed=7)
    assert not torch.equal(both.history[1:], second.history)


# ----------------------------------------------------------------------------------------------
# the DE


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_de_strategies_run_and_improve(strategy):
    sphere = Sphere()
    out = search(sphere.problem(), algorithm="de", strategy=strategy, popsize=5, maxiter=25,
                 mutation=(0.5, 1.0), recombination=0.7, atol=0.0)
    assert out.nit == 25 and out.stop_reason == "maxiter"
    assert bool((out.fun < 0.2 * sphere.first_best).all())


def test_de_converges_with_scipys_test_and_freezes_converged_layers():
    sphere = Sphere()
    out = search(sphere.problem(), algorithm="de", popsize=5, maxiter=200, atol=1e-2,
                 mutation=(0.5, 1.0), recombination=0.7)
    assert out.stop_reason == "converged" and bool(out.converged.all())
    for s in out.extra["searchers"]:
        energies = s.state.energies[0]
        assert float(energies.std(correction=0)) <= 1e-2
    # a layer that converged first stops counting candidates
    per_call = sum(s[1] for s in sphere.shapes)
    assert out.nfev <= per_call * B


def test_de_noise_robust_reevaluates_parents_in_the_same_call():
    sphere = Sphere()
    search(sphere.problem(), algorithm="de", popsize=5, maxiter=3, noise_robust=True)
    # per layer: init, then parents + trials in one call
    assert [s[1] for s in sphere.shapes] == [20, 40] * B + [40] * 2 * B
    sphere = Sphere()
    search(sphere.problem(), algorithm="de", popsize=5, maxiter=3, noise_robust=False)
    # (single candidates: incumbents measured again on the generation's noise)
    assert [s[1] for s in sphere.shapes if s[1] > 1] == [20] * 4 * B


def test_x0_and_init_population_are_used():
    x0 = CENTRES.clone()
    out = search(Sphere().problem(), algorithm="de", popsize=5, maxiter=1, x0=x0)
    assert torch.equal(out.x, x0) and bool((out.fun == 0).all())
    out = search(Sphere().problem(), algorithm="cmaes", popsize=5, maxiter=20, x0=x0)
    torch.testing.assert_close(out.x, x0, atol=0.05, rtol=0)
    init = CENTRES[:, None].expand(B, 6, D) + 0.0  # every member at the optimum
    out = search(Sphere().problem(), algorithm="ga", maxiter=1, x_init=init)
    torch.testing.assert_close(out.fun, torch.zeros(B), atol=1e-3, rtol=0)


# ----------------------------------------------------------------------------------------------
# callback, progress, errors


@pytest.mark.parametrize("how", ["true", "stopiteration"])
@pytest.mark.parametrize("algorithm", ["de", "cmaes"])
def test_callback_stops_at_that_generation(algorithm, how):
    seen = []

    def callback(info):
        assert isinstance(info, IntermediateResult)
        seen.append(info.generation)
        assert info.x.shape == (B, D) and info.fun.shape == (B,)
        assert info.history.shape == (B, info.generation)
        if info.generation == 3:
            if how == "true":
                return True
            raise StopIteration

    progress: list[IntermediateResult] = []
    out = search(Sphere().problem(), algorithm=algorithm, popsize=5, maxiter=50,
                 callback=callback, progress=progress.append)
    assert seen == [1, 2, 3] and out.nit == 3 and out.history.shape == (B, 3)
    assert out.stop_reason == "callback" and "callback" in out.message
    assert [p.generation for p in progress] == [1, 2, 3]
    assert progress[-1].nfev == out.nfev and torch.equal(progress[-1].fun, out.fun)


def test_unknown_algorithm_and_keyword_and_bad_values_raise():
    problem = Sphere().problem()
    with pytest.raises(ValueError, match="unknown algorithm 'pso'.*de, cmaes, snes, ga"):
        search(problem, algorithm="pso")
    # The DE checkpoints (tests/test_checkpoint.py); the others keep their state in objects.
    with pytest.raises(ValueError, match="evotorch backend cannot honour checkpoint"):
        search(problem, algorithm="cmaes", checkpoint="somewhere")
    with pytest.raises(ValueError, match="cannot honour strategy='best2bin'"):
        search(problem, algorithm="cmaes", strategy="best2bin")
    with pytest.raises(ValueError, match="strategy"):
        search(problem, strategy="best3bin")
    with pytest.raises(ValueError, match="maxiter"):
        search(problem, maxiter=0)
    with pytest.raises(ValueError, match="x0"):
        search(problem, x0=torch.full((D,), 2.0))
    with pytest.raises(ValueError, match="give x0"):
        search(problem, algorithm="snes", x_init=torch.rand(8, D))


def test_a_failing_loss_raises_instead_of_hanging():
    def loss(x, call):
        if call == 2:
            raise FloatingPointError("boom")
        return x.sum(-1)

    problem = SearchProblem(loss, 3, D, torch.device("cpu"))
    for algorithm in ("de", "cmaes"):
        with pytest.raises(FloatingPointError, match="boom"):
            search(problem, algorithm=algorithm, popsize=2, maxiter=10)


def test_run_search_dispatches_to_evotorch():
    out = run_search("evotorch", Sphere().problem(), algorithm="snes", popsize=3, maxiter=2)
    assert out.nit == 2 and out.stop_reason == "maxiter" and not bool(out.converged.any())


def test_a_layer_is_evaluated_on_its_own_at_the_reflection():
    calls = []

    def loss(x, call, layers=None):
        calls.append((tuple(x.shape), call, None if layers is None else layers.tolist()))
        rows = CENTRES if layers is None else CENTRES[layers]
        return ((reflect_unit(x) - rows[:, None]) ** 2).sum(-1)

    problem = SearchProblem(loss, B, D, torch.device("cpu"), supports_layers=True)
    out = search(problem, algorithm="snes", popsize=2, maxiter=2, seed=1)
    assert all(shape[0] == 1 and layers in ([0], [1]) for shape, _, layers in calls)
    assert bool(((out.x >= 0) & (out.x <= 1)).all())
    # Each layer counts its own evaluations: the same noise keys whatever the other layers do.
    assert sorted(c for _, c, layers in calls if layers == [1]) == [0, 1]


def test_missing_evotorch_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "evotorch", None)  # makes `import evotorch` fail
    with pytest.raises(ImportError, match="pip install evotorch"):
        search(Sphere().problem(), maxiter=1)
