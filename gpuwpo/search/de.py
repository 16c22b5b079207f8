"""Differential evolution in torch, in EvoTorch's functional style, batched over layers.

The whole state of a search is one immutable :class:`DEState` (plain tensors and Python
scalars, so a checkpoint is "save the tuple"); :func:`de_init` makes it, :func:`de_ask` returns
the candidates to evaluate and :func:`de_tell` returns the next state. :func:`de_minimize` is the
driver loop.

The leftmost dimension is the LAYER axis ``B``: ``B`` independent searches (one per layer of a
network, or one per random seed) run as one tensor program. Shapes used throughout::

    B  layers (independent searches)
    S  population size (the same for every layer)
    D  dimension of the search space; everything lives in the unit cube [0, 1]^D,
       the caller maps it to its own bounds

    population [B, S, D]   energies [B, S]   trials [B, S, D]

Semantics follow scipy's ``DifferentialEvolutionSolver`` with ``updating="deferred"`` and
``vectorized=True`` (scipy/optimize/_differentialevolution.py), so that a run of this engine and a
run of scipy with another seed are draws from the same distribution:

* mutation formulas of the strategies ``best1``, ``rand1``, ``currenttobest1``, ``randtobest1``,
  ``best2``, ``rand2``; the samples are distinct from each other and from the candidate (they may
  include the best member, index 0, as in scipy);
* binomial crossover with one guaranteed coordinate (scipy's ``fill_point``), exponential
  crossover as a cyclic run of coordinates starting at ``fill_point``;
* ``mutation=(low, high)`` is dithered once per generation (per layer: layers are independent
  searches), uniform in ``[low, high)``;
* coordinates that leave [0, 1] are re-sampled uniformly (``_ensure_constraint``), not clipped;
* a trial replaces its parent when its energy is ``<=`` the parent's; the best member is then
  swapped to index 0 (``_promote_lowest_energy``);
* convergence ``std(E) <= atol + tol * |mean(E)|`` (ddof = 0) is tested after each generation,
  never before the first one; a run that has not converged after ``maxiter`` generations stops
  with ``nit == maxiter``.

Differences from scipy, all deliberate:

* each layer converges on its own and is then frozen (its population and energies stop
  changing, it stops counting function evaluations); the run ends when every layer has converged;
* ``nfev`` counts candidates evaluated per layer (scipy's vectorized mode counts calls);
* optional noise-robust selection (``parent_energies`` in :func:`de_tell`,
  ``reevaluate_parents`` in :func:`de_minimize`): parents are re-evaluated in the same call (same
  noise) as their trials and compared with them (common random numbers);
* every layer draws its randomness from its own generator, the stream ``"search"`` of
  ``(seed, layer id)`` (:func:`gpuwpo.rng.stream_seed`), and a frozen layer draws nothing: a
  layer's search is the same whichever other layers run beside it, so a network's layers may be
  split over processes or machines (:mod:`gpuwpo.network.distributed`) and give bit for bit the
  results of one search;
* arguments out of range raise instead of being sorted or clipped (``mutation=(high, low)``, an
  ``init`` population outside the unit cube);
* no polishing, constraints, integrality or ``maxfun``.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..rng import draw_seed, stream_generator

__all__ = [
    "STRATEGIES",
    "check_de_settings",
    "check_mutation",
    "DEResult",
    "DEState",
    "de_ask",
    "de_init",
    "de_minimize",
    "de_tell",
    "population_size",
    "state_from_dict",
    "state_to_dict",
]

# strategy name -> number of distinct samples its mutation needs (scipy draws 5 and uses a prefix)
_NUM_SAMPLES = {
    "best1": 2,
    "rand1": 3,
    "currenttobest1": 2,
    "randtobest1": 3,
    "best2": 4,
    "rand2": 5,
}
STRATEGIES: tuple[str, ...] = tuple(f"{m}{c}" for m in _NUM_SAMPLES for c in ("bin", "exp"))
_INITS = ("latinhypercube", "random", "sobol")

MESSAGES = {
    "converged": "Optimization terminated successfully.",
    "maxiter": "Maximum number of iterations has been exceeded.",
    "callback": "callback function requested stop early",
    "in progress": "in progress",
}


class DEState(NamedTuple):
    """The whole state of ``B`` independent differential-evolution searches.

    Every field is a tensor or a plain Python scalar, so that the state can be saved with
    :func:`state_to_dict` and continued exactly with :func:`state_from_dict`.

    Attributes:
        population: [B, S, D] members in the unit cube; after every :func:`de_tell`, member 0 of
            each layer is its best.
        energies: [B, S] energies of the population (``+inf`` until first evaluated).
        converged: [B] bool; a converged layer is frozen.
        nit_layer: [B] int64, generations each layer has run (stops growing once it converged:
            scipy's ``nit`` of that layer).
        nfev: [B] int64, candidates evaluated for each layer while it was not frozen.
        history: [B, nit] best energy of each layer after each generation.
        rng_state: [B, R] uint8, row b the ``torch.Generator.get_state()`` of layer b's
            generator (on the device of ``population``), from which all of layer b's randomness
            is drawn.
        layer_ids: [B] int64, the layers' ids (their index in the whole network), the keys of
            their generators' seeds.
        nit: generations run so far (all layers together).
        evaluated: whether the initial population has energies yet.
        strategy: one of :data:`STRATEGIES`.
        mutation_low, mutation_high: the mutation constant, or its dithering range.
        dither: whether the mutation constant is drawn from ``[mutation_low, mutation_high)``
            once per generation and layer.
        recombination: crossover probability in [0, 1].
        tol, atol: relative and absolute convergence tolerances.
    """

    population: Tensor
    energies: Tensor
    converged: Tensor
    nit_layer: Tensor
    nfev: Tensor
    history: Tensor
    rng_state: Tensor
    layer_ids: Tensor
    nit: int
    evaluated: bool
    strategy: str
    mutation_low: float
    mutation_high: float
    dither: bool
    recombination: float
    tol: float
    atol: float

    @property
    def best_x(self) -> Tensor:
        """[B, D] best member of each layer (by the latest energies)."""
        return self.population[:, 0]

    @property
    def best_fun(self) -> Tensor:
        """[B] best energy of each layer (by the latest energies)."""
        return self.energies[:, 0]


@dataclass(frozen=True)
class DEResult:
    """What a run of :func:`de_minimize` did; also what the callback receives each generation.

    Attributes:
        x: [B, D] best member of each layer, in the unit cube.
        fun: [B] its energy. With ``reevaluate_parents`` this is the energy of the latest
            evaluation (one noise draw), not a minimum over draws.
        nit: generations run (all layers together, scipy's counting).
        nit_layer: [B] generations each layer ran before it converged (or ``nit``).
        nfev: [B] candidates evaluated per layer (frozen layers stop counting).
        converged: [B] bool.
        success: ``True`` when every layer converged.
        stop_reason: ``"converged"``, ``"maxiter"``, ``"callback"`` or ``"in progress"``.
        message: human-readable form of ``stop_reason`` (scipy's wording).
        history: [B, nit] best energy of each layer after each generation.
        population: [B, S, D]; population_energies: [B, S].
        state: the final :class:`DEState`, to save or to continue from.
    """

    x: Tensor
    fun: Tensor
    nit: int
    nit_layer: Tensor
    nfev: Tensor
    converged: Tensor
    success: bool
    stop_reason: str
    message: str
    history: Tensor
    population: Tensor
    population_energies: Tensor
    state: DEState


# ----------------------------------------------------------------------------------------------
# validation


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")


def check_mutation(mutation: float | Sequence[float]) -> tuple[float, float, bool]:
    """Return (low, high, dither) for a mutation constant or a (low, high) dithering range."""
    if isinstance(mutation, (int, float)) and not isinstance(mutation, bool):
        values, dither = (float(mutation),), False
    elif isinstance(mutation, Sequence) and not isinstance(mutation, str) and len(mutation) == 2:
        values, dither = (float(mutation[0]), float(mutation[1])), True
    else:
        raise ValueError(f"mutation must be a number or a (low, high) pair, got {mutation!r}")
    for v in values:
        if not (0.0 <= v < 2.0):  # also rejects nan
            raise ValueError(f"mutation must lie in [0, 2), got {mutation!r}")
    if dither and values[0] > values[1]:
        raise ValueError(f"mutation (low, high) needs low <= high, got {mutation!r}")
    return values[0], values[-1], dither


def check_de_settings(
    *, strategy: str, recombination: float, tol: float, atol: float
) -> None:
    """A ValueError naming the bad value among the DE settings every DE engine shares (the torch
    engine here and the EvoTorch DE): the strategy, recombination in [0, 1], tol and atol >= 0."""
    _check_strategy(strategy)
    if not (0.0 <= recombination <= 1.0):
        raise ValueError(f"recombination must lie in [0, 1], got {recombination!r}")
    if not tol >= 0.0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    if not atol >= 0.0:
        raise ValueError(f"atol must be >= 0, got {atol!r}")


def _check_layer_ids(layer_ids, num_layers: int) -> Tensor:
    """[B] int64 on the CPU: the given ids (distinct integers), or 0 .. B-1."""
    if layer_ids is None:
        return torch.arange(num_layers, dtype=torch.int64)
    ids = torch.as_tensor(layer_ids).detach().cpu().reshape(-1)
    if ids.is_floating_point() or ids.dtype == torch.bool or ids.numel() != num_layers:
        raise ValueError(f"layer_ids must be {num_layers} integers (one per layer), got "
                         f"{layer_ids!r}")
    ids = ids.to(torch.int64)
    if ids.unique().numel() != num_layers:
        raise ValueError(f"layer_ids must be distinct, got {ids.tolist()}")
    return ids


def population_size(dim: int, popsize: int = 15, init: str = "latinhypercube") -> int:
    """Population size scipy uses for a string ``init``: ``max(5, popsize * dim)``.

    For ``init="sobol"`` scipy rounds it up to the next power of two (Sobol' points keep their
    balance properties only for powers of two), and so do we.
    """
    if isinstance(popsize, bool) or not isinstance(popsize, int) or popsize < 1:
        raise ValueError(f"popsize must be an integer >= 1, got {popsize!r}")
    size = max(5, popsize * dim)
    if init == "sobol":
        size = 2 ** math.ceil(math.log2(size))
    return size


# ----------------------------------------------------------------------------------------------
# randomness


def _base_seed(seed: int | torch.Generator | None) -> int:
    # gpuwpo.rng's meanings: an int is used whole, a generator gives one draw (from a copy: the
    # caller's generator is not advanced), None is fresh entropy.
    if isinstance(seed, torch.Generator):
        copy = torch.Generator(device=seed.device)
        copy.set_state(seed.get_state())
        return draw_seed(copy)
    if seed is None:
        return secrets.randbits(64)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, a torch.Generator or None, got "
                        f"{type(seed).__name__}")
    return seed


def _layer_states(seed: int | torch.Generator | None, layer_ids: Sequence[int],
                  device: torch.device) -> Tensor:
    """[B, R] uint8: the initial state of each layer's generator: the run's stream "search",
    keyed by the layer id."""
    base = _base_seed(seed)
    return torch.stack([stream_generator(base, "search", int(i), device=device).get_state()
                        for i in layer_ids])


def _draw(rng_state: Tensor, rows: Sequence[int], n: int, device: torch.device,
          dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """n uniforms in [0, 1) per layer in ``rows`` from its own generator.

    Returns ``(u [B, n], rng_state)``: rows not drawn are zeros and keep their generator state,
    so a layer's stream advances by the same amount whichever layers draw beside it. One draw
    per layer: on a GPU that is B small launches per generation, against an objective that
    evaluates [B, S, T, 2K, N].
    """
    u = torch.zeros((rng_state.shape[0], n), device=device, dtype=dtype)
    if not rows:
        return u, rng_state
    rng_state = rng_state.clone()
    generator = torch.Generator(device=device)
    for b in rows:
        # a copy: torch reads a generator state from the start of its storage, not the view's
        generator.set_state(rng_state[b].clone())
        u[b].uniform_(generator=generator)
        rng_state[b] = generator.get_state()
    return u, rng_state


def _uniform_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision of a search's uniforms: float64 for a float64 search, else float32 (the
    population's own precision; half the generator's work)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _index(u: Tensor, high: int) -> Tensor:
    """Integers uniform in [0, high) from uniforms u in [0, 1) (rounding up to ``high`` in
    float32 is clamped away)."""
    return (u * high).floor().to(torch.int64).clamp_(max=high - 1)


# ----------------------------------------------------------------------------------------------
# init


def _init_population(
    kind: str, size: int, dim: int, rng_state: Tensor, device: torch.device, dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """The initial population [B, S, D] of a string ``init``, each layer from its own stream;
    returns it with the advanced generator states."""
    rows = list(range(rng_state.shape[0]))
    precision = _uniform_dtype(dtype)
    if kind == "random":
        u, rng_state = _draw(rng_state, rows, size * dim, device, precision)
        return u.reshape(-1, size, dim).to(dtype), rng_state
    if kind == "latinhypercube":
        # one uniform draw in each of S equal segments per coordinate, then an independent random
        # permutation of the segments per coordinate (scipy's init_population_lhs)
        u, rng_state = _draw(rng_state, rows, 2 * size * dim, device, precision)
        u = u.reshape(-1, 2, size, dim)
        segments = torch.arange(size, device=device, dtype=dtype) / size
        samples = u[:, 0].to(dtype) / size + segments[:, None]
        order = torch.argsort(u[:, 1], dim=1, stable=True)
        return torch.gather(samples, 1, order), rng_state
    # sobol: one scrambled engine per layer (layers are independent searches); the scrambling
    # seed comes from the layer's stream so that the run stays reproducible from `seed`
    u, rng_state = _draw(rng_state, rows, 1, device)
    seeds = (u[:, 0] * 2**53).to(torch.int64).tolist()
    draws = [
        torch.quasirandom.SobolEngine(dim, scramble=True, seed=s).draw(size, dtype=torch.float64)
        for s in seeds
    ]
    return torch.stack(draws).to(device=device, dtype=dtype), rng_state


def de_init(
    *,
    dim: int | None = None,
    num_layers: int | None = None,
    popsize: int = 15,
    init: str | Tensor = "latinhypercube",
    x0: Tensor | None = None,
    strategy: str = "best1bin",
    mutation: float | tuple[float, float] = (0.5, 1.0),
    recombination: float = 0.7,
    tol: float = 0.01,
    atol: float = 0.0,
    seed: int | torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    layer_ids: Sequence[int] | Tensor | None = None,
) -> DEState:
    """Make the initial state of ``num_layers`` independent searches in [0, 1]^dim.

    Args:
        dim: D, the dimension; may be left out when ``init`` is a tensor.
        num_layers: B, the number of independent searches (default 1, or ``init``'s/``x0``'s
            leading dimension).
        popsize: population multiplier; S = ``max(5, popsize * D)`` for a string ``init``
            (rounded up to a power of two for ``"sobol"``, as scipy does).
        init: ``"latinhypercube"``, ``"random"``, ``"sobol"``, or a population [S, D] (the same
            for every layer) or [B, S, D] in the unit cube, S >= 5.
        x0: [D] or [B, D] warm start in the unit cube; replaces member 0 of the initial
            population (also when ``init`` is a tensor, as in scipy). [B, W, D]: W warm starts
            per layer (W <= S), replacing members 0 .. W-1 (a search's standard starts).
        strategy: one of :data:`STRATEGIES`.
        mutation: constant in [0, 2), or ``(low, high)`` to dither once per generation.
        recombination: crossover probability in [0, 1].
        tol, atol: a layer converges when ``std(E) <= atol + tol * |mean(E)|``.
        seed: int, a ``torch.Generator`` (one seed is drawn from a copy of it) or ``None``
            (fresh entropy). Layer b's randomness comes from its own generator (on ``device``):
            the stream ``"search"`` of ``(seed, layer_ids[b])`` (:data:`gpuwpo.rng.STREAMS`).
        device, dtype: default to those of ``init``/``x0`` when tensors, else CPU and torch's
            default dtype.
        layer_ids: [B] distinct ids of the layers (default 0 .. B-1): a search over some of a
            network's layers, given their ids in the whole network, runs each of them exactly
            as the search over all of them does.

    Returns:
        A state whose energies are ``+inf`` and ``evaluated`` is False: the first
        :func:`de_ask` returns the initial population to evaluate.
    """
    check_de_settings(strategy=strategy, recombination=recombination, tol=tol, atol=atol)
    mutation_low, mutation_high, dither = check_mutation(mutation)
    population_size(1, popsize)  # validates popsize whatever the init
    if num_layers is None and isinstance(x0, Tensor) and x0.dim() >= 2:
        num_layers = int(x0.shape[0])
    if num_layers is None and layer_ids is not None:
        num_layers = int(torch.as_tensor(layer_ids).numel())
    ref = init if isinstance(init, Tensor) else x0
    if device is None:
        device = ref.device if isinstance(ref, Tensor) else torch.device("cpu")
    device = torch.device(device)
    if dtype is None:
        dtype = ref.dtype if isinstance(ref, Tensor) and ref.is_floating_point() else None
        dtype = dtype or torch.get_default_dtype()

    if isinstance(init, str):
        if init not in _INITS:
            raise ValueError(f"unknown init {init!r}; expected one of {_INITS} or a tensor")
        if dim is None:
            if x0 is None:
                raise ValueError("dim is required when init is a string and x0 is not given")
            dim = int(torch.as_tensor(x0).shape[-1])
        num_layers = 1 if num_layers is None else num_layers
        if dim < 1 or num_layers < 1:
            raise ValueError(f"dim and num_layers must be >= 1, got {dim} and {num_layers}")
        size = population_size(dim, popsize, init)
        layer_ids = _check_layer_ids(layer_ids, num_layers)
        rng_state = _layer_states(seed, layer_ids.tolist(), device)
        population, rng_state = _init_population(init, size, dim, rng_state, device, dtype)
    else:
        population = torch.as_tensor(init).to(device=device, dtype=dtype)
        ok_shape = population.dim() in (2, 3) and population.shape[-2] >= 5
        if dim is not None and population.shape[-1] != dim:
            ok_shape = False
        if population.dim() == 3 and num_layers is not None:
            ok_shape = ok_shape and population.shape[0] == num_layers
        if not ok_shape:
            raise ValueError(
                f"init population must have shape [S, D] or [B, S, D] with S >= 5"
                f" (dim={dim}, num_layers={num_layers}), got {tuple(population.shape)}"
            )
        if not bool(((population >= 0) & (population <= 1)).all()):
            raise ValueError(
                "init population must lie in the unit cube [0, 1]; found values in"
                f" [{population.min().item()}, {population.max().item()}]"
            )
        if population.dim() == 2:
            population = population.expand(num_layers or 1, -1, -1)
        population = population.clone()
        num_layers, size, dim = population.shape
        layer_ids = _check_layer_ids(layer_ids, num_layers)
        rng_state = _layer_states(seed, layer_ids.tolist(), device)

    if x0 is not None:
        x0 = torch.as_tensor(x0).to(device=device, dtype=dtype)
        ok = x0.shape in ((dim,), (num_layers, dim)) or (
            x0.dim() == 3 and x0.shape[0] == num_layers and x0.shape[2] == dim
            and 1 <= x0.shape[1] <= size)
        if not ok:
            raise ValueError(
                f"x0 must have shape [{dim}], [{num_layers}, {dim}] or [{num_layers}, W, {dim}] "
                f"with 1 <= W <= {size} (the population), got {tuple(x0.shape)}"
            )
        if not bool(((x0 >= 0) & (x0 <= 1)).all()):
            raise ValueError(f"x0 must lie in the unit cube [0, 1], got values in "
                             f"[{x0.min().item()}, {x0.max().item()}]")
        if x0.dim() == 3:
            population[:, : x0.shape[1]] = x0
        else:
            population[:, 0] = x0

    return DEState(
        population=population,
        energies=torch.full((num_layers, size), math.inf, device=device, dtype=dtype),
        converged=torch.zeros(num_layers, dtype=torch.bool, device=device),
        nit_layer=torch.zeros(num_layers, dtype=torch.int64, device=device),
        nfev=torch.zeros(num_layers, dtype=torch.int64, device=device),
        history=torch.empty((num_layers, 0), device=device, dtype=dtype),
        rng_state=rng_state,
        layer_ids=layer_ids.to(device),
        nit=0,
        evaluated=False,
        strategy=strategy,
        mutation_low=mutation_low,
        mutation_high=mutation_high,
        dither=dither,
        recombination=float(recombination),
        tol=float(tol),
        atol=float(atol),
    )


# ----------------------------------------------------------------------------------------------
# ask


def _select_samples(u: Tensor) -> Tensor:
    """[B, S, count] member indices, distinct from each other and from the candidate (its row),
    from uniforms u [B, S, count] in [0, 1).

    Equivalent in distribution to scipy's shuffle-and-drop-the-candidate: sample k is uniform
    over the S - 1 - k indices not yet taken. An index drawn from [0, S - 1 - k) is mapped to
    the u-th index not taken by stepping over the taken ones in ascending order. This costs
    O(B S count^2), not O(B S^2) as a full permutation per candidate would.
    """
    num_layers, size, count = u.shape
    candidate = torch.arange(size, device=u.device).expand(num_layers, size)
    taken = candidate[..., None]  # [B, S, k + 1], kept sorted ascending
    samples = []
    for k in range(count):
        index = _index(u[..., k], size - 1 - k)
        for j in range(k + 1):
            index = index + (index >= taken[..., j]).to(index.dtype)
        samples.append(index)
        taken = torch.sort(torch.cat([taken, index[..., None]], dim=-1), dim=-1).values
    return torch.stack(samples, dim=-1)


def _mutant(strategy: str, population: Tensor, samples: Tensor, scale: Tensor) -> Tensor:
    """scipy's mutation formulas. population [B, S, D], samples [B, S, n], scale [B]."""
    num_layers, size, dim = population.shape
    f = scale[:, None, None]

    def pick(i: int) -> Tensor:
        index = samples[..., i, None].expand(num_layers, size, dim)
        return torch.gather(population, 1, index)

    best = population[:, :1]
    if strategy == "best1":
        return best + f * (pick(0) - pick(1))
    if strategy == "rand1":
        return pick(0) + f * (pick(1) - pick(2))
    if strategy == "randtobest1":
        bprime = pick(0)
        bprime = bprime + f * (best - bprime)
        return bprime + f * (pick(1) - pick(2))
    if strategy == "currenttobest1":
        return population + f * (best - population + pick(0) - pick(1))
    if strategy == "best2":
        return best + f * (pick(0) + pick(1) - pick(2) - pick(3))
    if strategy == "rand2":
        return pick(0) + f * (pick(1) + pick(2) - pick(3) - pick(4))
    raise AssertionError(strategy)


def _crossover_mask(binomial: bool, recombination: float, u_fill: Tensor, u_cross: Tensor
                    ) -> Tensor:
    """[B, S, D] bool: which coordinates of each trial come from the mutant, from uniforms
    u_fill [B, S] (the fill point) and u_cross [B, S, D] in [0, 1)."""
    dim = u_cross.shape[-1]
    fill_point = _index(u_fill, dim)
    crossovers = u_cross < recombination
    coordinate = torch.arange(dim, device=u_cross.device)
    if binomial:
        # the fill point guarantees at least one coordinate from the mutant
        return crossovers | (coordinate == fill_point[..., None])
    # exponential: a cyclic run of coordinates starting at fill_point, continued while the
    # successive draws pass (the first always does), at most D long -- scipy's while loop
    crossovers[..., 0] = True
    run_length = torch.cumprod(crossovers.to(torch.int64), dim=-1).sum(dim=-1)
    offset = (coordinate - fill_point[..., None]) % dim
    return offset < run_length[..., None]


def de_ask(state: DEState) -> tuple[Tensor, DEState]:
    """Candidates to evaluate next, and the state with its generator advanced.

    Before the initial population has energies (``state.evaluated`` is False) this returns the
    population itself. Afterwards it returns one trial per member, all made from the current
    population (deferred updating): mutation, crossover with the parent, then coordinates
    outside [0, 1] re-sampled uniformly.

    Args:
        state: the current state.

    Returns:
        ``(trials, state)``: trials [B, S, D] in the unit cube; pass them to :func:`de_tell`
        together with the returned state.
    """
    if not state.evaluated:
        return state.population, state
    population = state.population
    num_layers, size, dim = population.shape
    base = state.strategy[:-3]
    count = _NUM_SAMPLES[base]
    # One draw per searching layer from its own stream, laid out as: the mutation constant's
    # dither (1), the samples (S x count), the fill points (S), the crossover draws (S x D) and
    # the re-sampled coordinates (S x D). Frozen layers draw nothing.
    rows = (~state.converged).nonzero().squeeze(1).tolist()
    u, rng_state = _draw(state.rng_state, rows, 1 + size * (count + 1 + 2 * dim),
                         population.device, _uniform_dtype(population.dtype))
    u_dither, u_samples, u_fill, u_cross, u_out = u.split(
        [1, size * count, size, size * dim, size * dim], dim=1)
    dtype = population.dtype
    if state.dither:
        # one mutation constant per generation (and per layer: layers are independent runs)
        scale = state.mutation_low + (state.mutation_high - state.mutation_low) * \
            u_dither[:, 0].to(dtype)
    else:
        scale = torch.full((num_layers,), state.mutation_low, device=population.device,
                           dtype=dtype)
    samples = _select_samples(u_samples.reshape(num_layers, size, count))
    bprime = _mutant(base, population, samples, scale)
    mask = _crossover_mask(state.strategy.endswith("bin"), state.recombination, u_fill,
                           u_cross.reshape(num_layers, size, dim))
    trials = torch.where(mask, bprime, population)
    # scipy re-samples escaped coordinates instead of clipping: clipping would pile mass on the
    # faces of the cube
    outside = (trials < 0) | (trials > 1)
    trials = torch.where(outside, u_out.reshape(num_layers, size, dim).to(dtype), trials)
    return trials, state._replace(rng_state=rng_state)


# ----------------------------------------------------------------------------------------------
# tell


def _promote_lowest_energy(population: Tensor, energies: Tensor, active: Tensor):
    """Swap each active layer's lowest-energy member into index 0 (first minimum on ties)."""
    num_layers, size = energies.shape
    lowest = torch.where(active, torch.argmin(energies, dim=1), 0)
    order = torch.arange(size, device=energies.device).repeat(num_layers, 1)
    order.scatter_(1, lowest[:, None], 0)
    order[:, 0] = lowest
    energies = torch.gather(energies, 1, order)
    population = torch.gather(population, 1, order[..., None].expand_as(population))
    return population, energies


def _check_energies(name: str, energies: Tensor, shape: tuple[int, int]) -> None:
    if tuple(energies.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(energies.shape)}")


def de_tell(
    state: DEState,
    trials: Tensor,
    trial_energies: Tensor,
    parent_energies: Tensor | None = None,
) -> DEState:
    """The next state, given the energies of what :func:`de_ask` returned.

    Layers that had already converged are frozen: nothing of theirs changes (their energies may
    be anything, e.g. not computed).

    Args:
        state: the state returned by :func:`de_ask`.
        trials: [B, S, D] the candidates :func:`de_ask` returned.
        trial_energies: [B, S] their energies.
        parent_energies: optional [B, S] energies of the current population evaluated in the
            same call (same noise) as the trials. When given, each trial is compared with its
            re-evaluated parent and the state keeps the fresh values: with a noisy objective this
            stops a lucky draw from being kept forever (common random numbers).

    Returns:
        The next state. On the first call (initial population) only the energies are set and the
        best member promoted; no generation is counted and convergence is not tested, as in
        scipy. Afterwards a generation: selection (trial kept when ``<=`` its parent), promotion
        of the best to index 0, convergence test; ``nit`` grows by one.
    """
    population, energies = state.population, state.energies
    num_layers, size, dim = population.shape
    if tuple(trials.shape) != (num_layers, size, dim):
        raise ValueError(
            f"trials must have shape {[num_layers, size, dim]}, got {list(trials.shape)}"
        )
    _check_energies("trial_energies", trial_energies, (num_layers, size))
    trial_energies = trial_energies.to(energies.dtype)
    active = ~state.converged

    if not state.evaluated:
        population, energies = _promote_lowest_energy(trials, trial_energies, active)
        return state._replace(
            population=population,
            energies=energies,
            nfev=state.nfev + size * active,
            evaluated=True,
        )

    per_candidate = 1
    if parent_energies is not None:
        _check_energies("parent_energies", parent_energies, (num_layers, size))
        energies = torch.where(active[:, None], parent_energies.to(energies.dtype), energies)
        per_candidate = 2
    accept = (trial_energies <= energies) & active[:, None]
    population = torch.where(accept[..., None], trials, population)
    energies = torch.where(accept, trial_energies, energies)
    population, energies = _promote_lowest_energy(population, energies, active)

    # scipy: not converged while any energy is infinite; std with ddof=0
    std = energies.std(dim=1, correction=0)
    threshold = state.atol + state.tol * energies.mean(dim=1).abs()
    finite = torch.isfinite(energies).all(dim=1)
    converged = state.converged | (active & finite & (std <= threshold))
    return state._replace(
        population=population,
        energies=energies,
        converged=converged,
        nit_layer=state.nit_layer + active,
        nfev=state.nfev + per_candidate * size * active,
        history=torch.cat([state.history, energies[:, :1]], dim=1),
        nit=state.nit + 1,
    )


# ----------------------------------------------------------------------------------------------
# checkpoint


_TENSOR_FIELDS = (
    "population", "energies", "converged", "nit_layer", "nfev", "history", "rng_state",
    "layer_ids",
)


def state_to_dict(state: DEState) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split a state into tensors (for torch.save / safetensors) and JSON-able metadata.

    The layers' generator states ([B, R] uint8) and ids are among the tensors, so a restored
    state continues the exact same run.
    """
    tensors = {name: getattr(state, name) for name in _TENSOR_FIELDS}
    meta = {
        name: getattr(state, name) for name in DEState._fields if name not in _TENSOR_FIELDS
    }
    meta["rng_device_type"] = state.population.device.type
    return tensors, meta


def state_from_dict(
    tensors: dict[str, Tensor], meta: dict[str, Any], device: torch.device | str | None = None
) -> DEState:
    """Inverse of :func:`state_to_dict`; ``device`` moves the tensors (generator states are
    device-type specific, so a state saved on CUDA continues only on CUDA)."""
    rng = tensors.get("rng_state")
    if "layer_ids" not in tensors or rng is None or rng.dim() != 2:
        raise ValueError("this search state was saved by an older gpuwpo, whose DE drew every "
                         "layer's randomness from one generator; it cannot be continued")
    fields = {name: tensors[name] for name in _TENSOR_FIELDS}
    if not (fields["rng_state"].shape[0] == fields["layer_ids"].shape[0]
            == fields["population"].shape[0]):
        raise ValueError(f"inconsistent search state: {fields['population'].shape[0]} layers, "
                         f"{fields['layer_ids'].shape[0]} ids, {fields['rng_state'].shape[0]} "
                         f"generator states")
    if device is not None:
        device = torch.device(device)
        fields = {
            name: t if name == "rng_state" else t.to(device) for name, t in fields.items()
        }
    if fields["population"].device.type != meta["rng_device_type"]:
        raise ValueError(
            f"the generator state was saved on {meta['rng_device_type']!r} and cannot drive a"
            f" search on {fields['population'].device.type!r}"
        )
    fields["rng_state"] = fields["rng_state"].to("cpu", torch.uint8)
    for name in DEState._fields:
        if name not in _TENSOR_FIELDS:
            fields[name] = meta[name]
    return DEState(**fields)


# ----------------------------------------------------------------------------------------------
# driver


def _result(state: DEState, stop_reason: str) -> DEResult:
    return DEResult(
        x=state.best_x,
        fun=state.best_fun,
        nit=state.nit,
        nit_layer=state.nit_layer,
        nfev=state.nfev,
        converged=state.converged,
        success=bool(state.converged.all()),
        stop_reason=stop_reason,
        message=MESSAGES[stop_reason],
        history=state.history,
        population=state.population,
        population_energies=state.energies,
        state=state,
    )


def _evaluate(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    energies = torch.as_tensor(fn(x))
    if tuple(energies.shape) != tuple(x.shape[:2]):
        raise RuntimeError(
            f"fn must map x {list(x.shape)} to energies {list(x.shape[:2])},"
            f" got {list(energies.shape)}"
        )
    return energies.to(device=x.device)


def de_minimize(
    fn: Callable[[Tensor], Tensor],
    *,
    maxiter: int = 1000,
    callback: Callable[[DEResult], bool | None] | None = None,
    reevaluate_parents: bool = False,
    state: DEState | None = None,
    **init: Any,
) -> DEResult:
    """Minimise ``B`` independent objectives over [0, 1]^D by differential evolution.

    Args:
        fn: energies [B, S'] = fn(x [B, S', D]); layer b of x belongs to objective b. It is
            called with every layer, converged ones included (their energies are ignored). It
            draws its own noise, if any.
        maxiter: stop after this many generations in total (counting those already in
            ``state``), as scipy's ``maxiter``.
        callback: called after every generation with a :class:`DEResult` (``stop_reason`` "in
            progress"); returning True or raising StopIteration stops the run.
        reevaluate_parents: call ``fn`` once per generation on ``cat([population, trials], 1)``
            ([B, 2S, D]) so that parents and trials share that call's noise, and select on those
            values (see :func:`de_tell`). False: plain scipy DE, ``fn`` on the trials only.
        state: continue this state (e.g. one restored with :func:`state_from_dict`) instead of
            starting a new one.
        **init: the keywords of :func:`de_init` (dim, num_layers, popsize, init, x0, strategy,
            mutation, recombination, tol, atol, seed, device, dtype) when no ``state`` is given.

    Returns:
        A :class:`DEResult`; ``result.state`` can be saved and continued.
    """
    if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter < 1:
        raise ValueError(f"maxiter must be an integer >= 1, got {maxiter!r}")
    if state is None:
        state = de_init(**init)
    elif init:
        raise TypeError(f"de_minimize takes a state or de_init's keywords, not both: "
                        f"{', '.join(sorted(init))}")
    if not state.evaluated:
        x, state = de_ask(state)
        state = de_tell(state, x, _evaluate(fn, x))

    size = state.population.shape[1]
    while True:
        if bool(state.converged.all()):
            stop_reason = "converged"
            break
        if state.nit >= maxiter:
            stop_reason = "maxiter"
            break
        trials, state = de_ask(state)
        if reevaluate_parents:
            energies = _evaluate(fn, torch.cat([state.population, trials], dim=1))
            state = de_tell(state, trials, energies[:, size:], parent_energies=energies[:, :size])
        else:
            state = de_tell(state, trials, _evaluate(fn, trials))
        if callback is not None:
            try:
                stop = bool(callback(_result(state, "in progress")))
            except StopIteration:
                stop = True
            if stop:
                stop_reason = "callback"
                break
    return _result(state, stop_reason)
