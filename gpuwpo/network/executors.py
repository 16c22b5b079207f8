"""Where a network run's searches run: tasks, their results, and the in-process executor.

:func:`gpuwpo.optimize_network` plans a run as *tasks* (:class:`Task`, run by :func:`run_task`):
a search of some of the network's layers (stage ``"layers"``) or of their pooled weights (stage
``"global"``). An *executor* runs them: :class:`InProcess` here, one after another;
:class:`gpuwpo.RayCluster` (:mod:`gpuwpo.network.distributed`) on the workers of a Ray cluster.
An executor has ``sharded`` (False: one task of every layer searching their weights, here, with
every backend, callback and the run's checkpoint; True: tasks are parts of the network, each
searching its rows of the test tiles made once for all layers, with the torch engine),
``default_device`` (where tasks search when ``device`` is not given; None: CUDA when available),
``plan(num_layers)`` (the layers of each task), ``start()``, ``stop()`` and
``run_tasks(settings, tasks, stage, checkpoint)`` (one :class:`TaskResult` per task, in order).
Every random number a layer's search draws is keyed by the layer's id, so any partition gives,
bit for bit, the result of one search of all layers (``tests/test_distributed.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..search.checkpoint import Checkpointing
from ..search.optimizer import WeightProgrammingOptimizer
from ..search.options import SearchOptions
from ..search.selection import Choice
from ..search.tiles import TestTile
from .result import single_program

__all__ = ["TaskSettings", "Task", "TaskResult", "CheckpointFor", "run_task", "tiles_on",
           "InProcess"]

#: Given a task's optimizer, the checkpointing of which its search is the stage ``task.stage``
#: (the run's one file in one process, a task's own on a worker), or None.
CheckpointFor = Callable[[WeightProgrammingOptimizer], Checkpointing | None]


@dataclass(frozen=True)
class TaskSettings:
    """What every task of a run shares (sent to a cluster once): the physics, the baseline, the
    backend and where the searches run (None: CUDA when available)."""

    f_lst: list
    noise_model: Any
    t_steps: Any
    baseline: Any
    symmetric: bool
    compensation: Any
    physics: str
    backend: str
    device: str | None

    def optimizer(self, searched, options: SearchOptions,
                  device: torch.device | str | None = None,
                  importance=None) -> WeightProgrammingOptimizer:
        """The optimizer of ``searched`` (weights, or test tiles) with ``options``, on ``device``
        (default :attr:`device`); ``importance``: the layers' input energies (weights only:
        :class:`gpuwpo.WeightProgrammingOptimizer`), or None."""
        return WeightProgrammingOptimizer(
            searched, self.f_lst, self.noise_model, self.t_steps, self.baseline,
            symmetric=self.symmetric, backend=self.backend,
            device=self.device if device is None else device, compensation=self.compensation,
            physics=self.physics, options=options, importance=importance)


@dataclass(frozen=True)
class Task:
    """One search of a run.

    Attributes:
        stage: ``"global"`` (the pooled search) or ``"layers"``.
        layers: the network ids of its layers (``(0,)`` for the pooled search).
        searched: what its optimizer searches: a mapping name -> weights or the pooled weights
            ``[N]`` (in one process), or the task's test tiles (on the CPU, their layer ids
            kept; a sharded run).
        options: its search options (per-layer warm starts cut to its layers).
        warm: label -> a point ``[D]`` to start from besides the standard starts (the pooled
            search's strategy, ``"global"``), or None.
        importance: the input energies its test tiles are drawn by (activation-aware error,
            :mod:`gpuwpo.search.tiles`): where ``searched`` is weights, as
            :class:`gpuwpo.WeightProgrammingOptimizer` takes them (a mapping name -> energies,
            or one entry per layer); None: none, or tiles already drawn by them.
    """

    stage: str
    layers: tuple[int, ...]
    searched: Any
    options: SearchOptions
    warm: dict[str, Tensor] | None = None
    importance: Any = None


@dataclass
class TaskResult:
    """What a task found, per layer in the task's order (plain values and CPU tensors).

    Attributes:
        layers: the network ids of its layers.
        choices: each layer's validated choice (:class:`gpuwpo.search.selection.Choice`).
        converters: each layer's answer: a single program, or the baseline converter itself.
        recipes: the same with their mappings (:class:`gpuwpo.device.mapping.Recipe`: a kept
            baseline under the baseline's mapping).
        start: ``[B, D]`` each layer's strategy to start another search from: the chosen point,
            or the search's own answer where the layer kept the baseline.
        history: each layer's in-search best TNMSE after each generation.
        nit, nfev, stop_reason: the search's generations, candidates and why it stopped.
        space, compensation, physics, device: what the search ran with (the settings record's
            part that the optimizer resolves).
    """

    layers: tuple[int, ...]
    choices: list[Choice]
    converters: list
    start: Tensor
    history: list[list[float]]
    nit: int
    nfev: int
    stop_reason: str
    space: Any
    compensation: Any
    physics: str
    device: str
    recipes: list = dataclasses.field(default_factory=list)


def tiles_on(tiles: TestTile, device: torch.device) -> TestTile:
    """The tiles on ``device``, their row scales and grid positions computed there from the test
    weights (as a run on that device computes them: under the tiles' mapping, on the grid over
    ``clip`` x the tile weights' max|W|; :meth:`gpuwpo.search.tiles.TestTile.to`)."""
    return tiles.to(device)


def run_task(settings: TaskSettings, task: Task,
             checkpoint: CheckpointFor | None = None) -> TaskResult:
    """Run one task where it is called: its layers' whole pipeline (baseline, standard starts,
    search, polish, validated choice; :meth:`gpuwpo.WeightProgrammingOptimizer.run_optimizer`).

    Args:
        settings, task: what to run.
        checkpoint: see :data:`CheckpointFor`; None: as the options say.
    """
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    searched = task.searched
    if isinstance(searched, TestTile):
        searched = tiles_on(searched, device)
    opt = settings.optimizer(searched, task.options, device, importance=task.importance)
    run = None if checkpoint is None else checkpoint(opt)
    opt.run_optimizer(task.warm, checkpoint=run, stage=task.stage)
    res = opt.result
    chosen = torch.isfinite(res.x).all(-1, keepdim=True)  # NaN rows: the baseline was kept
    return TaskResult(
        layers=tuple(task.layers), choices=list(res.choices),
        converters=[single_program(conv) for conv in res.converters],
        start=torch.where(chosen, res.x, res.search_x).cpu(),
        history=[[float(v) for v in h] for h in res.history.tolist()], nit=int(res.nit),
        nfev=int(res.nfev), stop_reason=str(res.stop_reason), space=opt.space,
        compensation=opt.compensation, physics=opt.physics, device=str(opt.device),
        recipes=[single_program(recipe) for recipe in res.recipes])


class InProcess:
    """Runs a network's tasks in this process, one after another.

    Args:
        tasks: None (what :func:`gpuwpo.optimize_network` runs by default): ONE task of every
            layer, whose layer axis is the batch axis of one search, so that a network costs
            about as much as its largest layer; every backend and option is honoured, and the
            options ``checkpoint``/``resume`` save and continue the whole run in one file.
            Or the layers of each task, a partition of the network's layers: the sharded code
            path of :class:`gpuwpo.RayCluster` without Ray (each task searches its rows of the
            test tiles made once for all layers), for tests and debugging; it honours what a
            Ray cluster honours, and its result equals the single search's bit for bit.
    """

    def __init__(self, tasks: Sequence[Sequence[int]] | None = None) -> None:
        self.tasks = None if tasks is None else [[int(i) for i in t] for t in tasks]
        self.sharded = self.tasks is not None
        self.default_device = None  # as one search: CUDA when available

    def plan(self, num_layers: int) -> list[list[int]]:
        """The layers of each task: the given partition, or all layers in one task."""
        return self.tasks if self.tasks is not None else [list(range(num_layers))]

    def start(self) -> InProcess:
        return self

    def stop(self) -> None:
        pass

    def run_tasks(self, settings: TaskSettings, tasks: Sequence[Task], stage: str,
                  checkpoint: CheckpointFor | None = None) -> list[TaskResult]:
        """Run ``tasks`` (of ``stage``) here, in order; ``checkpoint`` as for :func:`run_task`."""
        return [run_task(settings, task, checkpoint) for task in tasks]
