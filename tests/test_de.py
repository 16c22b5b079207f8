"""Tests of the torch differential-evolution engine (gpuwpo.search.de)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import differential_evolution, rosen
from scipy.stats import chisquare, ks_2samp

from gpuwpo.search.de import (
    STRATEGIES,
    _crossover_mask,
    _select_samples,
    de_ask,
    de_init,
    de_minimize,
    de_tell,
    population_size,
    state_from_dict,
    state_to_dict,
)

LOW, HIGH = -2.0, 2.0  # Rosenbrock bounds, the same for scipy and for the unit-cube map


def rosen_unit(u: torch.Tensor) -> torch.Tensor:
    """1 + Rosenbrock of u [..., D] in the unit cube mapped to [LOW, HIGH]^D."""
    x = LOW + (HIGH - LOW) * u
    return 1.0 + (100.0 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1.0 - x[..., :-1]) ** 2).sum(-1)


def sphere(u: torch.Tensor) -> torch.Tensor:
    """Sphere with its minimum (0) at 0.3 in every coordinate, away from the cube's centre."""
    return ((u - 0.3) ** 2).sum(-1)


# ----------------------------------------------------------------------------------------------
# equivalence in distribution with scipy


@pytest.mark.slow
def test_distribution_matches_scipy_and_negative_control_is_rejected():
    seeds = 200
    common = dict(popsize=10, tol=0.01, recombination=0.7, maxiter=1000)
    scipy_nit, scipy_fun = [], []
    for seed in range(seeds):
        res = differential_evolution(
            lambda x: 1.0 + rosen(x), [(LOW, HIGH)] * 4, strategy="best1bin",
            mutation=(0.5, 1.0), updating="deferred", vectorized=True, polish=False,
            init="latinhypercube", rng=seed, **common,
        )
        scipy_nit.append(res.nit)
        scipy_fun.append(res.fun)

    def torch_run(mutation):
        # the layer axis carries the 200 independent seeds: one tensor program
        res = de_minimize(
            rosen_unit, dim=4, num_layers=seeds, strategy="best1bin", mutation=mutation,
            init="latinhypercube", seed=12345, dtype=torch.float64, **common,
        )
        return res.nit_layer.numpy(), res.fun.numpy()

    nit, fun = torch_run((0.5, 1.0))
    p_nit = ks_2samp(scipy_nit, nit).pvalue
    p_fun = ks_2samp(scipy_fun, fun).pvalue
    assert p_nit > 0.01 and p_fun > 0.01, (p_nit, p_fun)

    # without dithering the engine is a different algorithm: the test must see it
    nit, fun = torch_run(0.5)
    p_nit = ks_2samp(scipy_nit, nit).pvalue
    p_fun = ks_2samp(scipy_fun, fun).pvalue
    assert min(p_nit, p_fun) < 0.01, (p_nit, p_fun)


def test_convergence_is_not_tested_before_the_first_generation_as_in_scipy():
    # a population of identical members has std(E) = 0 from the start; scipy still runs one
    # generation (nit = 1) before it tests convergence
    init = np.full((6, 3), 0.5)
    res_scipy = differential_evolution(
        lambda x: (x**2).sum(0), [(0.0, 1.0)] * 3, init=init, polish=False,
        updating="deferred", vectorized=True, rng=0,
    )
    res = de_minimize(lambda u: (u**2).sum(-1), init=torch.tensor(init), seed=0)
    assert res.nit == res_scipy.nit == 1
    assert res.success and res.stop_reason == "converged"
    assert res.nfev.tolist() == [12]  # initial population + one generation of trials


# ----------------------------------------------------------------------------------------------
# strategies, crossover, mutation, bounds


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_improves_a_sphere(strategy):
    res = de_minimize(sphere, dim=5, num_layers=3, popsize=8, strategy=strategy, seed=1,
                      maxiter=60, dtype=torch.float64)
    history = res.history
    assert history.shape == (3, res.nit)
    # deferred selection is elitist: the best energy never increases
    assert bool((history[:, 1:] <= history[:, :-1]).all())
    # and it gets well below the best of the initial population (about 0.05 for S = 40)
    assert bool((res.fun < 2e-3).all()), res.fun
    assert bool((sphere(res.x) == res.fun).all())


def _uniforms(*shapes, seed: int = 0) -> list[torch.Tensor]:
    """Uniforms in [0, 1) (float64) of the given shapes, what the DE's helpers take."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(shape, generator=generator, dtype=torch.float64) for shape in shapes]


def _is_cyclic_run(rows: torch.Tensor) -> torch.Tensor:
    """[N] whether the True entries of each bool row [N, D] form one run, cyclically."""
    starts = rows & ~torch.roll(rows, 1, dims=-1)
    return rows.all(-1) | (starts.sum(-1) == 1)


def test_exponential_crossover_copies_one_cyclic_run_with_geometric_length():
    cr, dim = 0.6, 6
    mask = _crossover_mask(False, cr, *_uniforms((200, 100), (200, 100, dim)))
    rows = mask.reshape(-1, dim)
    assert bool(_is_cyclic_run(rows).all())
    # the run starts anywhere, uniformly (wrap-around runs exist) ...
    assert bool((rows[:, 0] & rows[:, -1] & ~rows.all(-1)).any())
    assert rows.double().mean(0).std() < 0.01
    # ... and its length is min(D, 1 + Geometric): P(L >= k) = cr^(k - 1)
    length = rows.sum(-1).double()
    for k in range(1, dim + 1):
        assert float((length >= k).double().mean()) == pytest.approx(cr ** (k - 1), abs=0.015)


def test_binomial_crossover_takes_at_least_one_coordinate_and_each_with_probability_cr():
    cr, dim = 0.3, 4
    mask = _crossover_mask(True, cr, *_uniforms((50, 40), (50, 40, dim)))
    assert bool(mask.any(-1).all())
    # each coordinate: cr, plus the fill point (1/D) when the draw failed
    expected = cr + (1 - cr) / dim
    assert float(mask.double().mean()) == pytest.approx(expected, abs=0.01)
    cr0 = _crossover_mask(True, 0.0, *_uniforms((50, 40), (50, 40, dim), seed=1))
    assert bool((cr0.sum(-1) == 1).all())


def test_samples_are_distinct_not_the_candidate_and_uniform():
    layers, size, count = 2000, 7, 5
    (u,) = _uniforms((layers, size, count))
    samples = _select_samples(u)
    assert samples.shape == (layers, size, count)
    candidate = torch.arange(size)[None, :, None]
    assert bool((samples != candidate).all())
    ordered = samples.sort(-1).values
    assert bool((ordered[..., 1:] != ordered[..., :-1]).all())
    # each sample position, for each candidate, is uniform over the S - 1 other members
    for k in range(count):
        counts = torch.nn.functional.one_hot(samples[..., k], size).sum(0)  # [candidate, index]
        off = counts[~torch.eye(size, dtype=torch.bool)].reshape(size, size - 1)
        assert chisquare(off.numpy(), axis=1).pvalue.min() > 1e-3


def _grid_state(num_layers: int, size: int, mutation):
    """Members on the grid 0.5 + j h (D = 1), best member at 0.5, recombination 1."""
    h = 1.0 / (2 * size)
    grid = 0.5 + h * (torch.arange(size, dtype=torch.float64) - size // 2)
    state = de_init(init=grid[:, None].expand(num_layers, size, 1), strategy="best1bin",
                    mutation=mutation, recombination=1.0, seed=3)
    x, state = de_ask(state)
    energies = (x[..., 0] - 0.5).abs()
    return de_tell(state, x, energies), h


def _recover_scale(trial: torch.Tensor, best: float, h: float, size: int) -> float:
    """The one F with trial - best = F h k, k integer, for every trial of a layer (D = 1)."""
    v = (trial - best) / h
    vmax = float(v.abs().max())
    found = [
        vmax / k for k in range(1, size)
        if 0.0 <= vmax / k < 2.0
        and bool(((v / (vmax / k)) - (v / (vmax / k)).round()).abs().max() < 1e-6)
    ]
    assert found, "the trials of a layer are not explained by one mutation constant"
    return found[0]


def test_dithering_draws_one_mutation_per_generation_and_layer():
    size, layers = 20, 6
    state, h = _grid_state(layers, size, (0.5, 1.0))
    scales = []
    for _ in range(2):
        trials, state = de_ask(state)
        # best1 with recombination 1: trial = best + F (x_r0 - x_r1) = 0.5 + F h k
        scales.append([_recover_scale(trials[b, :, 0], 0.5, h, size) for b in range(layers)])
        # reject every trial so that the grid stays as it is
        inf = torch.full((layers, size), math.inf, dtype=torch.float64)
        state = de_tell(state, trials, inf)
    scales = np.array(scales)
    assert ((scales >= 0.5) & (scales < 1.0)).all()
    assert len(np.unique(scales.round(9))) == scales.size  # new per generation and per layer

    state, h = _grid_state(2, size, 0.7)
    trials, _ = de_ask(state)
    assert _recover_scale(trials[0, :, 0], 0.5, h, size) == pytest.approx(0.7)


def test_escaped_coordinates_are_resampled_not_clipped():
    # large mutation around members near the faces: many mutant coordinates leave the cube
    init = torch.rand(4, 30, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    init = torch.where(init < 0.5, init * 0.05, 1 - init * 0.05)
    state = de_init(init=init, strategy="rand2bin", mutation=1.9, recombination=1.0, seed=0)
    x, state = de_ask(state)
    state = de_tell(state, x, sphere(x))
    trials, _ = de_ask(state)
    assert bool(((trials >= 0) & (trials <= 1)).all())
    assert int(((trials == 0) | (trials == 1)).sum()) == 0  # clipping would pile them up here
    # resampled coordinates are uniform: a good share lands in the middle of the cube
    middle = float(((trials > 0.25) & (trials < 0.75)).double().mean())
    assert 0.2 < middle < 0.5


# ----------------------------------------------------------------------------------------------
# initialisation


def test_population_size_and_initialisations():
    assert population_size(4, 10) == 40
    assert population_size(1, 2) == 5
    assert population_size(3, 5, "sobol") == 16
    for init in ("latinhypercube", "random", "sobol"):
        state = de_init(dim=3, num_layers=2, popsize=5, init=init, seed=0)
        size = 16 if init == "sobol" else 15
        assert state.population.shape == (2, size, 3)
        assert bool(((state.population >= 0) & (state.population < 1)).all())
        assert not bool((state.population[0] == state.population[1]).all())
    # latin hypercube: every coordinate has exactly one member in each of the S strata
    state = de_init(dim=3, num_layers=4, popsize=5, seed=0)
    strata = (state.population * 15).floor().sort(dim=1).values
    assert bool((strata == torch.arange(15.0)[None, :, None]).all())


def test_x0_replaces_member_zero():
    x0 = torch.tensor([0.1, 0.2, 0.9])
    state = de_init(dim=3, num_layers=2, x0=x0, seed=0)
    assert bool((state.population[:, 0] == x0).all())
    x0b = torch.rand(2, 3, generator=torch.Generator().manual_seed(1))
    state = de_init(init=torch.full((6, 3), 0.5), x0=x0b, seed=0)  # B from x0
    assert bool((state.population[:, 0] == x0b).all())
    assert bool((state.population[:, 1:] == 0.5).all())
    # a warm start at the optimum is kept as the best
    res = de_minimize(sphere, dim=3, x0=torch.full((3,), 0.3), seed=0, maxiter=2)
    assert float(res.fun[0]) == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# convergence, freezing, callback


def test_converged_layers_are_frozen():
    weights = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)

    def fn(u):
        # layer 0 is flat: std(E) = 0 after its first generation
        return weights[:, None] * sphere(u)

    snapshots = []

    def callback(intermediate):
        snapshots.append(
            (intermediate.population.clone(), intermediate.population_energies.clone())
        )

    res = de_minimize(fn, dim=3, num_layers=3, popsize=5, seed=0, maxiter=20, callback=callback,
                      dtype=torch.float64)
    assert bool(res.converged[0]) and res.nit_layer[0] == 1
    size = 15
    assert res.nfev[0] == 2 * size
    assert res.nfev[1] == size * (1 + int(res.nit_layer[1]))
    first_pop, first_energies = snapshots[0]
    for pop, energies in snapshots[1:]:
        assert bool((pop[0] == first_pop[0]).all())
        assert bool((energies[0] == first_energies[0]).all())
    assert bool((res.history[0] == res.history[0, 0]).all())
    # the other layers kept moving
    assert not bool((snapshots[-1][0][1] == first_pop[1]).all())


@pytest.mark.parametrize("how", ["true", "stop_iteration"])
def test_callback_can_stop_the_run(how):
    seen = []

    def callback(intermediate):
        seen.append(intermediate.nit)
        assert intermediate.x.shape == (2, 3) and intermediate.fun.shape == (2,)
        assert intermediate.converged.shape == (2,) and intermediate.stop_reason == "in progress"
        if intermediate.nit == 3:
            if how == "true":
                return True
            raise StopIteration

    res = de_minimize(sphere, dim=3, num_layers=2, seed=0, callback=callback)
    assert seen == [1, 2, 3]
    assert res.nit == 3 and res.stop_reason == "callback" and not res.success
    assert res.message == "callback function requested stop early"


def test_maxiter_stops_with_scipys_count():
    res = de_minimize(sphere, dim=3, num_layers=2, seed=0, maxiter=4, tol=0.0)
    assert res.nit == 4 and res.stop_reason == "maxiter" and not res.success
    assert res.history.shape == (2, 4) and res.nit_layer.tolist() == [4, 4]


# ----------------------------------------------------------------------------------------------
# checkpoint


def test_state_round_trip_is_identity():
    state = de_init(dim=3, num_layers=2, seed=0, mutation=0.8)
    x, state = de_ask(state)
    state = de_tell(state, x, sphere(x))
    tensors, meta = state_to_dict(state)
    restored = state_from_dict(tensors, json.loads(json.dumps(meta)))
    for name, value in state._asdict().items():
        other = getattr(restored, name)
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), name
        else:
            assert value == other, name


@pytest.mark.parametrize("reevaluate_parents", [False, True])
def test_interrupted_saved_restored_run_ends_exactly_like_an_uninterrupted_one(reevaluate_parents):
    kwargs = dict(dim=4, num_layers=3, popsize=6, seed=42, maxiter=200, dtype=torch.float64,
                  reevaluate_parents=reevaluate_parents)
    full = de_minimize(rosen_unit, **kwargs)
    assert full.nit > 10

    first = de_minimize(rosen_unit, callback=lambda r: r.nit == 7, **kwargs)
    assert first.nit == 7
    tensors, meta = state_to_dict(first.state)
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    buffer.seek(0)
    restored = state_from_dict(torch.load(buffer), json.loads(json.dumps(meta)))
    rest = de_minimize(rosen_unit, state=restored, maxiter=kwargs["maxiter"],
                       reevaluate_parents=reevaluate_parents)

    assert rest.nit == full.nit and rest.stop_reason == full.stop_reason
    for name in ("x", "fun", "nfev", "nit_layer", "converged", "history", "population",
                 "population_energies"):
        assert torch.equal(getattr(rest, name), getattr(full, name)), name


# ----------------------------------------------------------------------------------------------
# noise-robust selection


def test_tell_with_parent_energies_compares_against_fresh_parents():
    state = de_init(dim=2, num_layers=2, popsize=3, seed=0, dtype=torch.float64)
    x, state = de_ask(state)
    state = de_tell(state, x, sphere(x))
    trials, state = de_ask(state)
    g = torch.Generator().manual_seed(5)
    trial_e = torch.rand(2, 6, generator=g, dtype=torch.float64)
    parent_e = torch.rand(2, 6, generator=g, dtype=torch.float64)
    new = de_tell(state, trials, trial_e, parent_energies=parent_e)
    expected = torch.where(trial_e <= parent_e, trial_e, parent_e)
    # same multiset of energies (promotion only permutes), stale energies are gone
    assert torch.equal(new.energies.sort(1).values, expected.sort(1).values)
    assert torch.equal(new.energies[:, 0], expected.min(1).values)
    pick = torch.where((trial_e <= parent_e)[..., None], trials, state.population)
    assert torch.equal(new.population.sort(1).values, pick.sort(1).values)


def test_reevaluate_parents_shares_one_call_and_optimises_a_noisy_objective():
    noise = torch.Generator().manual_seed(7)
    shapes = []

    def noisy(u):
        shapes.append(tuple(u.shape))
        return sphere(u) + 1e-3 * torch.randn(u.shape[:2], generator=noise, dtype=u.dtype)

    res = de_minimize(noisy, dim=3, num_layers=2, popsize=5, seed=0, maxiter=40, tol=0.0,
                      reevaluate_parents=True, dtype=torch.float64)
    assert shapes[0] == (2, 15, 3) and set(shapes[1:]) == {(2, 30, 3)}
    assert res.nfev.tolist() == [15 + 30 * 40] * 2
    assert bool((sphere(res.x) < 5e-3).all())


# ----------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(strategy="best3bin"), "unknown strategy 'best3bin'"),
        (dict(popsize=0), "popsize must be an integer >= 1, got 0"),
        (dict(popsize=0, init=torch.full((6, 3), 0.5)), "popsize must be an integer >= 1"),
        (dict(mutation=2.0), r"mutation must lie in \[0, 2\), got 2.0"),
        (dict(mutation=-0.1), r"mutation must lie in \[0, 2\), got -0.1"),
        (dict(mutation=(0.9, 0.5)), r"low <= high, got \(0.9, 0.5\)"),
        (dict(mutation=(0.5, 2.5)), r"mutation must lie in \[0, 2\), got \(0.5, 2.5\)"),
        (dict(recombination=1.5), r"recombination must lie in \[0, 1\], got 1.5"),
        (dict(maxiter=0), "maxiter must be an integer >= 1, got 0"),
        (dict(tol=-1e-3), "tol must be >= 0, got -0.001"),
        (dict(atol=-1.0), "atol must be >= 0, got -1.0"),
        (dict(init="halton"), "unknown init 'halton'"),
        (dict(init=torch.full((4, 3), 0.5)), r"got \(4, 3\)"),
        (dict(init=torch.full((6, 2), 0.5)), r"got \(6, 2\)"),
        (dict(init=torch.full((6, 3), 1.5)), r"unit cube .* \[1.5, 1.5\]"),
        (dict(x0=torch.full((3,), -0.5)), "x0 must lie in the unit cube"),
        (dict(x0=torch.full((4,), 0.5)), r"x0 must have shape \[3\]"),
    ],
)
def test_bad_arguments_are_rejected_with_the_bad_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        de_minimize(sphere, **{"dim": 3, **kwargs})


def test_bad_objective_shape_is_reported():
    with pytest.raises(RuntimeError, match=r"got \[2\]"):
        de_minimize(lambda u: sphere(u)[:, 0], dim=3, num_layers=2)


@pytest.mark.cuda
def test_runs_on_cuda_and_checkpoints():
    res = de_minimize(sphere, dim=3, num_layers=2, seed=0, maxiter=30, device="cuda")
    assert res.x.device.type == "cuda" and res.population.device.type == "cuda"
    tensors, meta = state_to_dict(res.state)
    restored = state_from_dict(tensors, meta)
    a, _ = de_ask(res.state)
    b, _ = de_ask(restored)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------
# per-layer randomness: a layer's search does not depend on the layers beside it


def _layer_objective(ids):
    """Rosenbrock shifted per layer id: each layer its own function, keyed by its id."""
    shift = 0.05 * torch.as_tensor(ids, dtype=torch.float64)[:, None, None]
    return lambda u: rosen_unit((u + shift).clamp(0, 1))


@pytest.mark.parametrize("init", ["latinhypercube", "random", "sobol"])
def test_a_subset_of_layers_runs_exactly_as_in_the_whole(init):
    kwargs = dict(dim=3, popsize=5, init=init, seed=7, maxiter=60, tol=0.01,
                  mutation=(0.5, 1.0), dtype=torch.float64, reevaluate_parents=True)
    whole = de_minimize(_layer_objective(range(5)), num_layers=5, **kwargs)
    assert 1 < int(whole.nit_layer.min()) < whole.nit  # layers converge at different times
    for subset in ([0, 2], [4, 1, 3], [3]):
        part = de_minimize(_layer_objective(subset), num_layers=len(subset), layer_ids=subset,
                           **kwargs)
        assert part.state.layer_ids.tolist() == subset
        rows = torch.tensor(subset)
        for name in ("x", "fun", "nit_layer", "nfev", "converged", "population",
                     "population_energies"):
            assert torch.equal(getattr(part, name), getattr(whole, name)[rows]), name
        # the part stops when its own layers have converged; the whole's history goes on with
        # their frozen best, and their generators did not move after they froze
        assert torch.equal(part.history, whole.history[rows, : part.nit])
        assert bool((whole.history[rows, part.nit - 1:] == part.history[:, -1:]).all())
        assert part.nit == int(whole.nit_layer[rows].max())
        assert torch.equal(part.state.rng_state, whole.state.rng_state[rows])


def test_layer_ids_key_the_streams_and_are_checked():
    a = de_init(dim=2, num_layers=3, seed=1, popsize=5)
    b = de_init(dim=2, seed=1, popsize=5, layer_ids=[2, 0])  # B from the ids
    assert torch.equal(b.population, a.population[[2, 0]])
    assert not torch.equal(de_init(dim=2, num_layers=3, seed=2, popsize=5).population,
                           a.population)
    g = torch.Generator().manual_seed(3)
    before = g.get_state()
    c = de_init(dim=2, num_layers=3, seed=g, popsize=5)
    assert torch.equal(g.get_state(), before)  # the caller's generator is not advanced
    assert torch.equal(de_init(dim=2, num_layers=3, seed=g, popsize=5).population, c.population)
    with pytest.raises(ValueError, match="distinct"):
        de_init(dim=2, num_layers=2, seed=0, layer_ids=[1, 1])
    with pytest.raises(ValueError, match="one per layer"):
        de_init(dim=2, num_layers=2, seed=0, layer_ids=[0, 1, 2])
    with pytest.raises(ValueError, match="one per layer"):
        de_init(dim=2, num_layers=2, seed=0, layer_ids=[0.0, 1.0])


def test_a_state_of_the_one_generator_format_is_refused():
    tensors, meta = state_to_dict(de_init(dim=2, num_layers=2, seed=0))
    old = {k: v for k, v in tensors.items() if k != "layer_ids"}
    old["rng_state"] = torch.Generator().manual_seed(0).get_state()
    with pytest.raises(ValueError, match="older gpuwpo"):
        state_from_dict(old, meta)
