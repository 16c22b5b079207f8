"""Whole-network search, one pipeline: plan the run as tasks, run them, assemble one result.

:func:`optimize_network` finds programming strategies for the layers of a model
(:func:`gpuwpo.network.layers.select_weights`): one per layer, all layers in ONE search whose
layer axis is the batch axis, so that a network costs about as much as its largest layer
(``per_layer=True``); or one global strategy, the published paper's setting (Mackin et al.
2022), searched on the layers' weights pooled into one distribution, each layer normalised by its
own max|W|, which each layer then takes or leaves for its baseline (``per_layer=False``); or the
pooled strategy first, then every layer's search starting from it (``hierarchical=True``).

1. **Plan** the tasks (:mod:`gpuwpo.network.executors`): the pooled ``"global"`` task where
   there is one, then the ``"layers"`` tasks: one holding every layer in this process, or parts
   of the network (``distributed=``), each with its rows of the test tiles made once, here.
2. **Run** them on the executor, the pooled task first: its strategy is the warm start
   ``"global"`` of every layer task.
3. **Assemble** one :class:`NetworkResult` in the model's order, whatever the executor.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..checks import check_weights
from ..device.mapping import Recipe, to_tile
from ..search.checkpoint import Checkpointing, digest
from ..search.objective import TNMSEObjective
from ..search.optimizer import LAYERWISE_BASELINE
from ..search.options import SearchOptions
from ..search.selection import Choice, choose_per_layer
from ..search.tiles import TestTile, check_importance, search_tiles
from .executors import CheckpointFor, InProcess, Task, TaskResult, TaskSettings
from .layers import as_matrix, select_weights
from .result import LayerResult, NetworkResult
from .settings import fingerprint_from_settings, run_record

__all__ = ["optimize_network", "HIERARCHICAL_DEFAULT"]

#: Default of ``hierarchical`` in :func:`optimize_network` (docs/RESULTS.md, "Defaults").
HIERARCHICAL_DEFAULT = False

def optimize_network(
    model_or_weights: nn.Module | Mapping[str, Tensor],
    noise_model,
    t_steps: Sequence[float] | Tensor,
    g_converter_baseline,
    f_lst: Sequence[float | None],
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    per_layer: bool = True,
    backend: str = "torch",
    device: torch.device | str | None = None,
    physics: str = "device",
    hierarchical: bool | None = None,
    distributed=None,
    *,
    key: str | None = None,
    importance: Mapping[str, Tensor] | None = None,
    **optimizer_kwargs,
) -> NetworkResult:
    """Find programming strategies for the layers of a network in one search.

    Every layer's answer is chosen by validated TNMSE among the search's contenders and the
    baseline converter itself (:mod:`gpuwpo.search.selection`): a layer gets a strategy only where
    it beats the baseline with confidence, and otherwise keeps the baseline's own program
    (``LayerResult.chosen == "baseline"``, ``success`` False; the summary says so).

    Args:
        model_or_weights: an ``nn.Module``, a state_dict or a mapping name -> tensor; the
            layers are chosen by :func:`select_weights` (Linear, Conv and RNN matrices by default:
            :mod:`gpuwpo.network.layers`).
        noise_model: the PCM device model.
        t_steps: inference times [T] in seconds after programming.
        g_converter_baseline: the standard converter to beat (e.g. DualPair f=[1, 1], 0..25 uS).
        f_lst: significance factors of the pairs (numbers, or None to optimise), e.g.
            ``[None, None]``.
        include, exclude: regular expressions on the layer names (``re.search``).
        key: for a checkpoint that holds several dicts of tensors (``model`` and
            ``ema_model``, ...), the dotted path of the one to program
            (:func:`gpuwpo.network.layers.find_state_dict`).
        importance: activation-aware error (opt-in): layer name -> the energies ``E[x_j^2]``
            of its input columns, ``[in]`` in the order of its matrix as mapped
            (:func:`gpuwpo.network.layers.as_matrix`; a Conv's unrolled patches), or ``[out,
            in]`` one per weight; :func:`gpuwpo.calibrate` measures them on a calibration
            batch. Each named layer's test tile is drawn by its energies, so that its search,
            baseline and choice measure the energy-weighted error (:mod:`gpuwpo.search.tiles`,
            "Drawn by importance", says what that estimate is); a layer it does not name
            counts every weight alike. The settings record which layers and a digest of the
            energies (:func:`gpuwpo.network.settings.importance_record`). None or ``{}``: off.
        per_layer: True: one strategy per layer, all layers in one batched search; False: one
            global strategy from the pooled, per-layer-normalised weight distribution, which
            each layer then takes or leaves for its baseline.
        backend: "torch", "evotorch" or "scipy".
        device: where the objective runs (None: CUDA when available).
        physics: "device" or "aihwkit" (see :mod:`gpuwpo.device.physics`); recorded in the
            settings.
        hierarchical: with ``per_layer`` and several layers, first search one global strategy
            on the pooled distribution (``maxiter`` generations of one layer), then start every
            layer's search from it (beside the standard starts) with
            ``maxiter - ceil(maxiter / B)`` generations, so that the total number of candidates
            stays that of a plain per-layer search. None: :data:`HIERARCHICAL_DEFAULT`.
        distributed: where the searches run (:mod:`gpuwpo.network.executors`): None, in this
            process; a :class:`gpuwpo.RayCluster`: the layers are sharded over its workers
            (:mod:`gpuwpo.network.distributed`), with the same result as the run in this
            process (``wall_time`` aside); a :class:`gpuwpo.network.executors.InProcess` with
            tasks: the sharded code path here.
        **optimizer_kwargs: passed to :class:`gpuwpo.WeightProgrammingOptimizer` (popsize,
            maxiter, seed, validation_repeats, symmetric, compensation, options, ...).
            ``checkpoint``, ``checkpoint_every`` and ``resume`` save and continue the whole run
            in one file (both searches of a hierarchical run; :mod:`gpuwpo.search.checkpoint`),
            fingerprinted by the selected weights and the settings record.

    Returns:
        A :class:`NetworkResult`, one :class:`LayerResult` per layer in the model's order.

    Raises:
        ValueError: no layer matches, a layer has NaN/inf or all-zero weights, a bad optimizer
            argument (named in the message), an importance naming a layer that is not
            selected or of the wrong size (naming it), or, for a sharded run, ``per_layer=False``, a
            backend other than ``"torch"`` or an option it cannot honour (``callback``,
            ``checkpoint``, ``resume``).
        TypeError: an unknown optimizer argument.
    """
    start = time.perf_counter()
    executor = InProcess() if distributed is None else distributed

    # -- 1. Plan ------------------------------------------------------------------------------
    kwargs = dict(optimizer_kwargs)
    settings = TaskSettings(
        f_lst=list(f_lst), noise_model=noise_model, t_steps=t_steps,
        baseline=g_converter_baseline, symmetric=kwargs.pop("symmetric", True),
        compensation=kwargs.pop("compensation", None), physics=physics, backend=backend,
        device=executor.default_device if device is None else str(device))
    options = SearchOptions.given(kwargs.pop("options", None), kwargs,
                                  what="optimize_network")
    hierarchical = HIERARCHICAL_DEFAULT if hierarchical is None else hierarchical
    if not isinstance(hierarchical, bool):
        raise ValueError(f"hierarchical must be True, False or None, got {hierarchical!r}")
    if executor.sharded:
        _refuse_for_shards(per_layer, backend, options)
    weights = select_weights(model_or_weights, include, exclude, key=key)
    names = list(weights)
    energies = _importance(importance, weights)
    pooled_search = not per_layer or (hierarchical and len(names) > 1)  # a "global" task

    def record(ran) -> dict:
        # ``ran``: an optimizer of the run, or a task's result (the same four attributes).
        return run_record(
            f_lst=f_lst, t_steps=t_steps, backend=backend, per_layer=per_layer,
            include=include, exclude=exclude, options=options, noise_model=noise_model,
            baseline=g_converter_baseline, compensation=ran.compensation, space=ran.space,
            device=ran.device, physics=ran.physics, hierarchical=bool(per_layer and hierarchical),
            importance=energies)

    pooled_task, layer_tasks = None, []
    if pooled_search:
        pooled = _pooled(weights, options.mapping)
        # The pooled weights are already the tiles' (each layer's, or each row's, over its own
        # max): one distribution without rows, searched as it is (layer-wise for both).
        pooled_options = options.replace(mapping="layer", baseline_mapping="layer")
        pooled_energy = None if energies is None else [_pooled_importance(weights, energies)]
        pooled_task = Task("global", (0,), _tiles(settings, pooled, pooled_options, pooled_energy)
                           if executor.sharded else pooled, pooled_options,
                           importance=None if executor.sharded else pooled_energy)
    if per_layer:
        layer_options = options
        if pooled_search:
            # The pooled search takes one layer's share of the candidates.
            layer_options = options.replace(
                maxiter=max(1, options.maxiter - math.ceil(options.maxiter / len(names))))
        layer_tasks = _layer_tasks(executor, settings, weights, layer_options, energies)

    # -- 2. Run -------------------------------------------------------------------------------
    checkpoint = None if executor.sharded else _whole_run_checkpoint(options, weights, record)
    pooled_result, results = None, []
    executor.start()
    try:
        if pooled_task is not None:
            (pooled_result,) = executor.run_tasks(settings, [pooled_task], "global", checkpoint)
            warm = {"global": pooled_result.start[0]}
            layer_tasks = [dataclasses.replace(task, warm=warm) for task in layer_tasks]
        if layer_tasks:
            results = executor.run_tasks(settings, layer_tasks, "layers", checkpoint)
    finally:
        executor.stop()

    # -- 3. Assemble --------------------------------------------------------------------------
    final = results or [pooled_result]  # the searches whose generations the result reports
    nit, margin = max(res.nit for res in final), float(options.loss_margin)
    if per_layer:
        rows = {layer: (res, row) for res in results for row, layer in enumerate(res.layers)}
        layers = []
        for b, name in enumerate(names):
            res, row = rows[b]
            # A task stops when its own layers have converged; the one search of all layers
            # would have gone on with their frozen best, which their history then repeats.
            history = res.history[row] + res.history[row][-1:] * (nit - len(res.history[row]))
            layers.append(LayerResult.from_choice(
                name, weights[name].shape, res.choices[row], res.recipes[row], history,
                margin))
    else:
        choices, recipe = _choose_pooled(pooled_result, weights, settings, options, energies)
        baseline = Recipe(g_converter_baseline, options.baseline_mapping)
        layers = [LayerResult.from_choice(
            name, weights[name].shape, choice, baseline if choice.kept_baseline else recipe,
            pooled_result.history[0], margin) for name, choice in zip(names, choices)]
    return NetworkResult.from_layers(
        layers, settings=record(final[0]), nit=nit,
        nfev=sum(res.nfev for res in (pooled_result, *results) if res is not None),
        wall_time=time.perf_counter() - start,
        stop_reason=_stop_reason([res.stop_reason for res in final]))


# --------------------------------------------------------------------------------------------
# The plan's parts
# --------------------------------------------------------------------------------------------



#: Options a sharded run cannot honour (named when given).
_NOT_SHARDED = {
    "callback": "a callback would run on the workers; watch the run with RayCluster(on_event=...)",
    "checkpoint": "every task checkpoints on its own (checkpoint_every sets how often); a "
                  "checkpoint of the whole distributed run is not supported",
    "resume": "every task checkpoints on its own; a distributed run cannot be resumed from a "
              "file",
}


def _refuse_for_shards(per_layer: bool, backend: str, options: SearchOptions) -> None:
    """Refuse, before any work, what a run in parts cannot honour."""
    if not per_layer:
        raise ValueError("a distributed run shards a network's layers; per_layer=False searches "
                         "one pooled strategy: run it without distributed=")
    if backend != "torch":
        raise ValueError(f"a distributed run uses the torch engine on every worker, not the "
                         f"{backend!r} backend")
    for name, why in _NOT_SHARDED.items():
        if getattr(options, name) is not None:
            raise ValueError(f"a distributed run cannot honour {name}={getattr(options, name)!r}"
                             f": {why}")


def _importance(importance, weights: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    """The run's input energies by layer name, each checked against its layer (None: none).

    Raises:
        TypeError: ``importance`` is not a mapping name -> energies.
        ValueError: a name that is not a selected layer (naming it and the layers), energies of
            the wrong size or values (:func:`gpuwpo.search.tiles.check_importance`).
    """
    if importance is None:
        return None
    if not isinstance(importance, Mapping):
        raise TypeError(f"importance must be a mapping layer name -> input energies (e.g. "
                        f"gpuwpo.calibrate(model, inputs)), got {type(importance).__name__}")
    unknown = [str(k) for k in importance if k not in weights]
    if unknown:
        raise ValueError(f"importance names {', '.join(map(repr, unknown))}, not among the "
                         f"selected layers ({', '.join(map(repr, weights))})")
    energies = {}
    for name in weights:  # the layers' order
        if name in importance and importance[name] is not None:
            value = importance[name]
            value = torch.from_numpy(value) if not isinstance(value, Tensor) and hasattr(
                value, "dtype") else value
            check_importance(value, as_matrix(weights[name]), f"layer {name!r}")
            energies[name] = value
    return energies or None


def _pooled_importance(weights: Mapping[str, Tensor], energies: Mapping[str, Tensor]) -> Tensor:
    """The pooled distribution's importance [N] (:func:`_pooled`'s order): each weight's input
    energy over its layer's mean, so that every layer keeps its share of the pool (its number
    of weights) and within it its weights count with their inputs; 1 for a layer without."""
    parts = []
    for name, w in weights.items():
        e = check_importance(energies.get(name), as_matrix(w), f"layer {name!r}")
        e = torch.ones(w.numel(), dtype=torch.float64) if e is None else e.reshape(-1)
        parts.append(e / e.mean())
    return torch.cat(parts)


def _pooled(weights: Mapping[str, Tensor], mapping: str) -> Tensor:
    """The layers' tile weights as one distribution [N]: under the layer-wise mapping each layer
    normalised by its own max|W|, so that no layer dominates through its scale; under the
    columnwise mapping each row of each layer (as the crossbar holds it,
    :func:`gpuwpo.network.layers.as_matrix`) by its own max|w|, which is what the converter
    programs there (:func:`gpuwpo.device.mapping.to_tile`)."""
    layers = [check_weights(w, f"layer {name!r}", allow_all_zero=False)
              for name, w in weights.items()]
    if mapping == "columnwise":
        tiles = [to_tile(as_matrix(w.detach()), mapping)[0] for w in layers]
    else:
        tiles = [w / w.abs().max() for w in layers]
    return torch.cat([t.reshape(-1).to("cpu", torch.float32) for t in tiles])


def _tiles(settings: TaskSettings, searched, options: SearchOptions,
           importance=None) -> TestTile:
    """The test tiles of ``searched``, made once on the driver (on the CPU, as every run makes
    them; with the torch kernel, as the driver does not search), drawn by ``importance``
    where it is given."""
    return settings.optimizer(searched, dataclasses.replace(options, kernel="torch"),
                              "cpu", importance=importance).objective.tiles


def _layer_tasks(executor, settings: TaskSettings, weights: Mapping[str, Tensor],
                 options: SearchOptions, energies: Mapping[str, Tensor] | None = None
                 ) -> list[Task]:
    """The ``"layers"`` tasks: in one process one task searching the weights themselves (its
    optimizer makes their tiles where it runs, drawn by ``energies`` where given); sharded,
    each task its rows of the test tiles made once for all layers, and its rows of the
    per-layer options."""
    num_layers = len(weights)
    if not executor.sharded:
        return [Task("layers", tuple(range(num_layers)), weights, options, importance=energies)]
    plan = executor.plan(num_layers)
    if sorted(i for ids in plan for i in ids) != list(range(num_layers)):
        raise ValueError(f"the tasks' layers {plan} are not a partition of the {num_layers} "
                         f"layers")
    tiles = _tiles(settings, weights, options, energies)
    return [Task("layers", tuple(ids), tiles.select(ids), _cut(options, ids, num_layers))
            for ids in plan]


def _cut(options: SearchOptions, layers: Sequence[int], total: int) -> SearchOptions:
    """The options of a task holding ``layers`` of ``total``: per-layer warm starts (``x0``
    ``[total, D]``, ``x_init`` ``[total, S, D]``) cut to its rows."""
    changes = {}
    for name, dims in (("x0", 2), ("x_init", 3)):
        value = getattr(options, name)
        if isinstance(value, Tensor) and value.dim() == dims and value.shape[0] == total:
            changes[name] = value[list(layers)]
    return dataclasses.replace(options, **changes) if changes else options


def _whole_run_checkpoint(options: SearchOptions, weights: Mapping[str, Tensor],
                          record: Callable[..., dict]) -> CheckpointFor | None:
    """The run's one checkpoint (stages ``"global"``, ``"layers"``), or None when the options
    neither save nor resume: opened by the first search's optimizer (the settings record needs
    what it resolves), so a file to resume is checked against the run's fingerprint (the
    selected weights and the settings record) before any search."""
    if options.checkpoint is None and options.resume is None:
        return None
    opened: list[Checkpointing | None] = []

    def open_for(optimizer) -> Checkpointing | None:
        if not opened:
            fingerprint = fingerprint_from_settings(record(optimizer), digest(weights))
            opened.append(Checkpointing.from_options(options, fingerprint))
        return opened[0]

    return open_for


# --------------------------------------------------------------------------------------------
# The result's parts
# --------------------------------------------------------------------------------------------


def _choose_pooled(pooled: TaskResult, weights: Mapping[str, Tensor], settings: TaskSettings,
                   options: SearchOptions, energies: Mapping[str, Tensor] | None = None
                   ) -> tuple[list[Choice], Recipe | None]:
    """Each layer's validated choice between the pooled strategy (under the run's mapping) and
    its baseline (under the baseline's mapping, with the layer-wise baseline measured beside it
    where that is another), and the pooled recipe (None where the pooled search kept the
    baseline); each layer on its tile drawn by its ``energies`` where given."""
    rows = "columnwise" in (options.mapping, options.baseline_mapping)
    searched = weights
    if energies is not None:
        # The tiles the objective makes of the weights, drawn by importance.
        searched = search_tiles(weights, pooled.space, options, device=pooled.device,
                                rows=rows, importance=energies)
    objective = TNMSEObjective(
        searched, settings.noise_model, pooled.compensation, settings.t_steps, pooled.space,
        test_in_features=options.test_in_features, test_out_features=options.test_out_features,
        memory_budget=options.memory_budget, kernel=options.kernel, device=pooled.device,
        seed=options.seed, physics=pooled.physics, mapping=options.mapping,
        # The layers' tiles as a per-layer run of these options makes them.
        tile_rows=rows)
    # A CustomPair program lives on a grid scaled by the converted weights' own max|W| (each
    # row's under the columnwise mapping), so the pooled strategy is every layer's program as
    # it is.
    recipe = None if pooled.choices[0].kept_baseline else Recipe(pooled.converters[0],
                                                                  options.mapping)
    contenders = [[] if recipe is None else [("global", recipe)] for _ in weights]
    baseline = Recipe(settings.baseline, options.baseline_mapping)
    references = {} if baseline.mapping == "layer" else {
        LAYERWISE_BASELINE: Recipe(settings.baseline, "layer")}
    choices = choose_per_layer(objective, contenders, baseline,
                               repeats=options.validation_repeats, seed=options.seed,
                               references=references)
    return choices, recipe


def _stop_reason(reasons: Sequence[str]) -> str:
    """Why searches stopped, together: a callback's stop before the budget's end before
    convergence (they converged when every one did)."""
    if len(set(reasons)) == 1:
        return reasons[0]
    return next((r for r in ("callback", "maxiter") if r in reasons), "converged")
