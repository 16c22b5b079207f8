"""Layer-sharded search on Ray: a network's layers spread over workers, one result back.

The layers of a network are independent searches, and every random number a layer's search
draws is keyed by the layer's id (its index in the whole network): the objective's noise
(:mod:`gpuwpo.search.objective`), the DE's own randomness (:mod:`gpuwpo.search.de`), the seeds'
ranking, the
polish and the final choice (:mod:`gpuwpo.search.selection`). A search over some of the layers
therefore runs each of them exactly as the search over all of them does, and
:func:`optimize_network` with ``distributed=RayCluster(...)`` returns, bit for bit, the
:class:`gpuwpo.NetworkResult` of the single-process run with the same seed (``wall_time``
aside).

How a run goes:

* The driver selects the layers and builds their test tiles once (on the CPU), then cuts the
  layers into *tasks* of a few layers each, more tasks than workers
  (``layers_per_task``; default about four tasks per worker).
* A queue on the driver keeps one task running on each worker; when a task ends (its layers
  converged, or reached ``maxiter``), the next queued one takes its place, so no worker idles
  while work waits. Each task runs the whole per-layer pipeline of
  :meth:`gpuwpo.WeightProgrammingOptimizer.run_optimizer` on its layers with the torch engine:
  baseline, seeds, search, polish, validated choice.
* Hierarchical runs (``hierarchical=True``): the pooled global search runs first, once, as a
  task of its own; its strategy is then every layer task's warm start.
* Fault tolerance: every task saves its search state every ``checkpoint_every`` generations
  (:mod:`gpuwpo.search.checkpoint`) and streams the checkpoint to the driver, which keeps the latest
  one per task (it owns those objects, so they outlive the worker). When a worker dies (killed,
  out of memory, its node lost), the driver queues the task again with its latest checkpoint: the
  run loses only that task's progress since its checkpoint, and ends with the same result.
  An error raised by the search itself is not retried: it stops the run.

Ray is imported only when a cluster starts: ``import gpuwpo`` does not import it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..device.converters import grid_interpolation
from ..search.checkpoint import Checkpointing, Stage, digest
from ..search.tiles import TestTile

__all__ = ["RayCluster", "ShardEvent", "optimize_network_distributed", "run_task"]

#: Options that a distributed run cannot honour (named when given).
_REFUSED = {
    "callback": "a callback would run on the workers; watch the run with RayCluster(on_event=...)",
    "checkpoint": "every task checkpoints on its own (checkpoint_every sets how often); a "
                  "checkpoint of the whole distributed run is not supported",
    "resume": "every task checkpoints on its own; a distributed run cannot be resumed from a "
              "file",
}


# --------------------------------------------------------------------------------------------
# What a task is and what it returns
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Common:
    """What every task of a run shares (sent to the cluster once)."""

    f_lst: list
    noise_model: Any
    t_steps: Any
    baseline: Any
    symmetric: bool
    compensation: Any
    physics: str
    device: str | None


@dataclass(frozen=True)
class _Task:
    """One task: some layers' test tiles (CPU, their network ids kept) and their options."""

    index: int
    tiles: TestTile
    options: Any  # SearchOptions
    warm: dict | None = None

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.tiles.layer_ids)


@dataclass(frozen=True)
class ShardEvent:
    """What happened to a task, for ``RayCluster(on_event=...)``.

    Attributes:
        kind: ``"start"`` (a worker took the task), ``"checkpoint"`` (its search state is saved
            at ``generation``), ``"done"``, or ``"retry"`` (its worker died: ``error`` says how;
            the task is queued again from its latest checkpoint, ``generation``, None when it
            had none).
        task: the task's index; layers: the network ids of its layers; stage: ``"global"`` (the
            pooled search of a hierarchical run) or ``"layers"``.
        attempt: 0 for the first run of the task, 1 after the first retry, ...
        pid: the worker process's id (on its node) when known.
        generation: the checkpoint's generation (``"checkpoint"``, ``"retry"``).
        error: the failure (``"retry"``).
    """

    kind: str
    task: int
    layers: tuple[int, ...]
    stage: str
    attempt: int
    pid: int | None = None
    generation: int | None = None
    error: str | None = None


def _tiles_on(tiles: TestTile, device: torch.device) -> TestTile:
    """The tiles on ``device``, their grid positions computed there (as a single-process run on
    that device computes them from the same test weights)."""
    if tiles.weights.device == device:
        return tiles
    weights = tiles.weights.to(device)
    m = weights.abs().amax(-1)
    idx, frac = grid_interpolation(weights, m, tiles.grid_size)
    return dataclasses.replace(tiles, weights=weights, max_abs_weight=m, idx=idx, frac=frac)


class _ForwardingStage(Stage):
    """A checkpoint stage that hands every saved file's bytes to its run's ``emit``."""

    def save(self, tensors, meta) -> None:
        super().save(tensors, meta)
        state = meta.get("state", {}) if isinstance(meta, Mapping) else {}
        self.run.emit(int(state.get("nit", 0)), Path(self.run.path).read_bytes())


class _ForwardingCheckpointing(Checkpointing):
    """A task's checkpoints: a file on the worker, each save also sent to the driver."""

    def __init__(self, path, every, resume, fingerprint, emit) -> None:
        super().__init__(path, every, resume, fingerprint)
        self.emit = emit

    def stage(self, name, identity=None) -> Stage:
        base = super().stage(name, identity)
        return _ForwardingStage(self, base.name, base.identity)


def _fingerprint(task: _Task) -> dict:
    from .. import __version__

    return {"gpuwpo_version": __version__, "layers": list(task.layers),
            "weights": digest({"tiles": task.tiles.weights}), "seed": task.options.seed}


def run_task(common: _Common, task: _Task, resume: bytes | None = None,
             emit: Callable[[int, bytes], None] | None = None) -> dict:
    """Run one task where it is called: its layers' whole per-layer pipeline.

    Args:
        common, task: what to run.
        resume: the bytes of the task's latest checkpoint, to continue from.
        emit: called with ``(generation, checkpoint bytes)`` after every checkpoint.

    Returns:
        The task's result (plain tensors and lists, on the CPU).
    """
    from ..search.optimizer import WeightProgrammingOptimizer
    from .result import single_program

    device = torch.device(common.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    opt = WeightProgrammingOptimizer(
        _tiles_on(task.tiles, device), common.f_lst, common.noise_model, common.t_steps,
        common.baseline, symmetric=common.symmetric, backend="torch", device=device,
        compensation=common.compensation, physics=common.physics, options=task.options)
    with tempfile.TemporaryDirectory(prefix="gpuwpo-task-") as tmp:
        path = Path(tmp) / "task.ckpt"
        if resume is not None:
            path.write_bytes(resume)
        run = _ForwardingCheckpointing(path, task.options.checkpoint_every,
                                       path if resume is not None else None, _fingerprint(task),
                                       emit or (lambda generation, data: None))
        opt.run_optimizer(task.warm, checkpoint=run, stage="layers")
    res = opt.result
    return {
        "layers": list(task.layers),
        "x": res.x.cpu(), "search_x": res.search_x.cpu(),
        "converters": [single_program(conv) for conv in res.converters],
        "chosen": list(res.chosen),
        "tnmse": res.tnmse, "tnmse_ci95": res.tnmse_ci95,
        "baseline_tnmse": res.baseline_tnmse, "baseline_ci95": res.baseline_ci95,
        "layer_success": res.layer_success, "history": res.history.cpu(),
        "nit": int(res.nit), "nfev": int(res.nfev), "stop_reason": str(res.stop_reason),
        "device": str(opt.device), "threads": torch.get_num_threads(),
    }


def _task_stream(common: _Common, task: _Task, resume: bytes | None, threads: int):
    """The Ray task: runs :func:`run_task` in a thread and streams its checkpoints, then its
    result, to the driver (objects a streaming task yields belong to the driver, so they
    outlive the worker)."""
    import queue
    import threading

    torch.set_num_threads(threads)
    messages: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            torch.set_num_threads(threads)
            result = run_task(common, task, resume,
                              lambda g, data: messages.put(("checkpoint", (g, data))))
            messages.put(("done", result))
        except BaseException as err:  # noqa: BLE001 -- handed to the driver as the task's error
            messages.put(("error", err))

    yield {"kind": "start", "pid": os.getpid()}
    thread = threading.Thread(target=work, name="gpuwpo-task", daemon=True)
    thread.start()
    while True:
        kind, item = messages.get()
        if kind == "checkpoint":
            yield {"kind": "checkpoint", "generation": item[0], "data": item[1]}
        elif kind == "done":
            thread.join()
            yield {"kind": "done", "result": item}
            return
        else:
            thread.join()
            raise item


# --------------------------------------------------------------------------------------------
# Where tasks run
# --------------------------------------------------------------------------------------------


class RayCluster:
    """Where a distributed :func:`gpuwpo.optimize_network` runs: workers of a Ray cluster.

    Args:
        address: a running cluster's address (``"auto"``, or its head's ``"host:6379"``, from
            a machine of the cluster); None starts a local cluster on this machine for the run
            and stops it afterwards. When Ray is already initialised in this process, that
            cluster is used (and left running).
        workers: tasks running at once (None: one per GPU when ``gpus_per_worker`` > 0, else
            one per ``cpus_per_worker`` CPUs of the cluster).
        gpus_per_worker: GPUs per worker, 0 (CPU workers) or 1 (one GPU each; the search runs
            on it).
        cpus_per_worker: CPUs each worker reserves.
        threads_per_worker: torch threads of each worker (None: ``cpus_per_worker``).
        layers_per_task: layers per task (None: about four tasks per worker, so that workers
            whose layers converged early take queued work).
        max_retries: how often a task whose worker died is run again (from its latest
            checkpoint) before the run fails.
        on_event: called on the driver with a :class:`ShardEvent` as tasks start, checkpoint,
            end and are retried (progress; tests use it to kill a worker).

    Used as a context manager, the cluster is started once for several runs::

        with gpuwpo.RayCluster(workers=2) as cluster:
            result = gpuwpo.optimize_network(model, ..., distributed=cluster)

    ``startup_s`` is the time Ray took to start (or connect), measured apart from the runs.
    """

    def __init__(self, address: str | None = None, workers: int | None = None,
                 gpus_per_worker: int = 0, cpus_per_worker: int = 1,
                 threads_per_worker: int | None = None, layers_per_task: int | None = None,
                 max_retries: int = 3,
                 on_event: Callable[[ShardEvent], None] | None = None) -> None:
        for name, value, low in (("workers", workers, 1), ("cpus_per_worker", cpus_per_worker, 1),
                                 ("threads_per_worker", threads_per_worker, 1),
                                 ("layers_per_task", layers_per_task, 1),
                                 ("max_retries", max_retries, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < low):
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if gpus_per_worker not in (0, 1) or isinstance(gpus_per_worker, bool):
            raise ValueError(f"gpus_per_worker must be 0 or 1, got {gpus_per_worker!r}")
        if address is not None and not isinstance(address, str):
            raise ValueError(f"address must be a string or None, got {address!r}")
        self.address = address
        self.workers = workers
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker
        self.threads_per_worker = threads_per_worker or cpus_per_worker
        self.layers_per_task = layers_per_task
        self.max_retries = max_retries
        self.on_event = on_event
        self.startup_s: float | None = None
        self._owned = False  # whether this object initialised Ray (and shuts it down)
        self._depth = 0

    def __repr__(self) -> str:
        return (f"RayCluster(address={self.address!r}, workers={self.workers}, "
                f"gpus_per_worker={self.gpus_per_worker}, cpus_per_worker={self.cpus_per_worker})")

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> RayCluster:
        """Start (or connect to) the cluster; a no-op when this object already did."""
        if self._depth:
            self._depth += 1
            return self
        import ray

        t0 = time.perf_counter()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            if self.address is None:
                workers = self.workers or self._local_workers()
                kwargs["num_cpus"] = workers * self.cpus_per_worker
                if self.gpus_per_worker == 0:
                    kwargs["num_gpus"] = 0
                ray.init(**kwargs)
            else:
                ray.init(address=self.address, **kwargs)
            self._owned = True
        self.startup_s = time.perf_counter() - t0
        self._depth = 1
        try:
            self._check_resources(ray.cluster_resources())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the local cluster (or disconnect) when :meth:`start` started it."""
        self._depth = max(0, self._depth - 1)
        if self._depth:
            return
        if self._owned:
            import ray

            self._owned = False
            ray.shutdown()

    def __enter__(self) -> RayCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _local_workers(self) -> int:
        if self.gpus_per_worker:
            count = torch.cuda.device_count()
            if count < 1:
                raise ValueError("gpus_per_worker=1 but this machine has no CUDA device")
            return count
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        return max(1, cpus // self.cpus_per_worker)

    def _check_resources(self, resources: Mapping[str, float]) -> None:
        cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
        if self.gpus_per_worker and gpus < self.gpus_per_worker:
            raise ValueError(f"gpus_per_worker={self.gpus_per_worker} but the cluster has "
                             f"{gpus:g} GPU(s)")
        if cpus < self.cpus_per_worker:
            raise ValueError(f"cpus_per_worker={self.cpus_per_worker} but the cluster has "
                             f"{cpus:g} CPU(s)")
        if self.workers is None:
            by = gpus // self.gpus_per_worker if self.gpus_per_worker else \
                cpus // self.cpus_per_worker
            self._resolved_workers = max(1, int(by))
        else:
            self._resolved_workers = self.workers

    @property
    def default_device(self) -> str:
        """Where the workers search when ``device`` is not given: "cuda" on GPU workers, else
        "cpu" (CPU workers never take a GPU that may be another worker's)."""
        return "cuda" if self.gpus_per_worker else "cpu"

    @property
    def num_workers(self) -> int:
        """Tasks running at once (known once the cluster has started)."""
        return getattr(self, "_resolved_workers", None) or self.workers or 1

    # -- running tasks -------------------------------------------------------------------------
    def plan(self, num_layers: int) -> list[list[int]]:
        """The layers of each task: consecutive runs of ``layers_per_task`` layers (default
        about four tasks per worker)."""
        size = self.layers_per_task or max(1, math.ceil(num_layers / (4 * self.num_workers)))
        return _chunks(num_layers, size)

    def _emit(self, event: ShardEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def run_tasks(self, common: _Common, tasks: Sequence[_Task], stage: str) -> list[dict]:
        """Run ``tasks`` on the workers, at most :attr:`num_workers` at once, the next queued
        one starting as soon as one ends; a task whose worker died runs again from its latest
        checkpoint. Returns the tasks' results in the tasks' order."""
        import ray
        from ray.exceptions import RayError, RayTaskError

        remote = ray.remote(_task_stream).options(
            num_returns="streaming", max_retries=0, num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker)
        common_ref = ray.put(common)
        queue = deque(range(len(tasks)))
        running: dict[Any, int] = {}
        latest: dict[int, tuple[int, bytes]] = {}  # task -> (generation, checkpoint)
        attempts = [0] * len(tasks)
        results: list[dict | None] = [None] * len(tasks)
        pids: dict[int, int | None] = {}

        def event(kind: str, i: int, **kw) -> None:
            self._emit(ShardEvent(kind, i, tasks[i].layers, stage, attempts[i], pid=pids.get(i),
                                  **kw))

        try:
            while queue or running:
                while queue and len(running) < self.num_workers:
                    i = queue.popleft()
                    resume = latest[i][1] if i in latest else None
                    stream = remote.remote(common_ref, tasks[i], resume, self.threads_per_worker)
                    running[stream] = i
                ready, _ = ray.wait(list(running), num_returns=1)
                stream = ready[0]
                i = running[stream]
                try:
                    message = ray.get(next(stream))
                except StopIteration:
                    del running[stream]
                    if results[i] is None:  # ended without a result: run it again
                        self._retry(i, attempts, latest, queue, event, "the task's stream ended")
                    continue
                except RayTaskError as err:  # the search itself failed: no retry
                    raise err.as_instanceof_cause() from None
                except RayError as err:  # the worker (or its node) died
                    del running[stream]
                    self._retry(i, attempts, latest, queue, event, f"{type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''}")
                    continue
                kind = message["kind"]
                if kind == "start":
                    pids[i] = message["pid"]
                    event("start", i, generation=latest[i][0] if i in latest else None)
                elif kind == "checkpoint":
                    # The latest checkpoint only: what the task resumes from if its worker dies.
                    latest[i] = (message["generation"], message["data"])
                    event("checkpoint", i, generation=message["generation"])
                elif kind == "done":
                    results[i] = message["result"]
                    latest.pop(i, None)
                    event("done", i)
        finally:
            for stream in running:
                try:
                    ray.cancel(stream, force=True)
                except Exception:  # noqa: BLE001 -- best effort on the way out
                    pass
        return results  # type: ignore[return-value]

    def _retry(self, i, attempts, latest, queue, event, why: str) -> None:
        if attempts[i] >= self.max_retries:
            raise RuntimeError(f"the task {i} failed {attempts[i] + 1} times, its worker "
                               f"dying; last: {why}")
        event("retry", i, generation=latest[i][0] if i in latest else None, error=why)
        attempts[i] += 1
        queue.appendleft(i)


class _InProcess:
    """Runs the tasks one after another in this process (the sharded code path without Ray:
    what tests and debugging use). ``tasks``: the layers of each task, any partition of the
    network's layers (default: one task per layer)."""

    def __init__(self, tasks: Sequence[Sequence[int]] | None = None) -> None:
        self.tasks = None if tasks is None else [list(t) for t in tasks]
        self.num_workers = 1
        self.default_device = None  # as a single-process run: CUDA when available

    def plan(self, num_layers: int) -> list[list[int]]:
        return self.tasks or _chunks(num_layers, 1)

    def start(self):
        return self

    def stop(self) -> None:
        pass

    def run_tasks(self, common: _Common, tasks: Sequence[_Task], stage: str) -> list[dict]:
        return [run_task(common, task) for task in tasks]


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _chunks(num_layers: int, size: int) -> list[list[int]]:
    return [list(range(i, min(num_layers, i + size))) for i in range(0, num_layers, size)]


def _rows(value, ids: Sequence[int], num_layers: int, per_layer_dims: int):
    """A per-layer option (x0 [B, D], x_init [B, S, D]) cut to the task's layers."""
    if isinstance(value, Tensor) and value.dim() == per_layer_dims and \
            value.shape[0] == num_layers:
        return value[list(ids)]
    return value


def optimize_network_distributed(
    cluster,
    model_or_weights,
    noise_model,
    t_steps,
    g_converter_baseline,
    f_lst,
    include=None,
    exclude=None,
    per_layer: bool = True,
    backend: str = "torch",
    device=None,
    physics: str = "device",
    hierarchical: bool | None = None,
    **optimizer_kwargs,
):
    """:func:`gpuwpo.optimize_network` with its layers sharded over ``cluster``'s workers.

    The arguments are optimize_network's; see this module's docstring for how the run goes.
    The result equals the single-process run's (``wall_time`` aside).

    Raises:
        ValueError: ``per_layer=False`` (one pooled search: nothing to shard), a backend other
            than ``"torch"``, or an option a distributed run cannot honour (``callback``,
            ``checkpoint``, ``resume``), besides optimize_network's own errors.
    """
    from ..search.optimizer import WeightProgrammingOptimizer
    from ..search.options import SearchOptions
    from .layers import select_weights
    from .pipeline import HIERARCHICAL_DEFAULT, _interval, _pooled, _weighted
    from .result import LayerResult, NetworkResult
    from .settings import run_record

    start = time.perf_counter()
    if not per_layer:
        raise ValueError("a distributed run shards a network's layers; per_layer=False searches "
                         "one pooled strategy: run it without distributed=")
    if backend != "torch":
        raise ValueError(f"a distributed run uses the torch engine on every worker, not the "
                         f"{backend!r} backend")
    kwargs = dict(optimizer_kwargs)
    symmetric = kwargs.pop("symmetric", True)
    compensation = kwargs.pop("compensation", None)
    given = kwargs.pop("options", None)
    if given is None:
        options = SearchOptions.from_kwargs(kwargs)
    elif not isinstance(given, SearchOptions):
        raise TypeError(f"options must be a gpuwpo.search.options.SearchOptions, got "
                        f"{type(given).__name__}")
    else:
        SearchOptions.from_kwargs(kwargs)  # names the unknown ones
        options = given.replace(**kwargs) if kwargs else given
    for name, why in _REFUSED.items():
        if getattr(options, name) is not None:
            raise ValueError(f"a distributed run cannot honour {name}={getattr(options, name)!r}"
                             f": {why}")
    hierarchical = HIERARCHICAL_DEFAULT if hierarchical is None else hierarchical
    if not isinstance(hierarchical, bool):
        raise ValueError(f"hierarchical must be True, False or None, got {hierarchical!r}")
    weights = select_weights(model_or_weights, include, exclude)
    names = list(weights)
    sizes = [w.numel() for w in weights.values()]
    num_layers = len(names)

    def driver_optimizer(searched, opts):
        # On the driver only the test tiles (made on the CPU, as every run makes them) and the
        # checks are wanted: the torch kernel, whatever the workers run.
        return WeightProgrammingOptimizer(
            searched, f_lst, noise_model, t_steps, g_converter_baseline, symmetric=symmetric,
            backend=backend, device="cpu", compensation=compensation, physics=physics,
            options=dataclasses.replace(opts, kernel="torch"))

    opt = driver_optimizer(weights, options)
    common = _Common(list(f_lst), noise_model, t_steps, g_converter_baseline, symmetric,
                     opt.compensation, physics,
                     cluster.default_device if device is None else str(device))

    def task_options(opts, ids, total):
        # What the workers run: no progress bar; per-layer options cut to the task's layers.
        return dataclasses.replace(opts, disp=False, x0=_rows(opts.x0, ids, total, 2),
                                   x_init=_rows(opts.x_init, ids, total, 3))

    cluster.start()
    try:
        extra_nfev, warm, layer_options = 0, None, options
        if hierarchical and num_layers > 1:
            pooled = driver_optimizer(_pooled(weights), options)
            (res,) = cluster.run_tasks(
                common, [_Task(0, pooled.objective.tiles, task_options(options, [0], 1))],
                "global")
            extra_nfev = res["nfev"]
            x = res["x"][0]
            warm = {"global": res["search_x"][0] if not bool(torch.isfinite(x).all()) else x}
            layer_options = options.replace(
                maxiter=max(1, options.maxiter - math.ceil(options.maxiter / num_layers)))
        plan = cluster.plan(num_layers)
        if sorted(i for ids in plan for i in ids) != list(range(num_layers)):
            raise ValueError(f"the tasks' layers {plan} are not a partition of the "
                             f"{num_layers} layers")
        tasks = [_Task(i, opt.objective.tiles.select(ids),
                       task_options(layer_options, ids, num_layers), warm)
                 for i, ids in enumerate(plan)]
        results = cluster.run_tasks(common, tasks, "layers")
    finally:
        cluster.stop()

    # One result, in the network's order, as the single-process run assembles it.
    per_layer_rows: dict[int, tuple[dict, int]] = {}
    for res in results:
        for row, layer in enumerate(res["layers"]):
            per_layer_rows[layer] = (res, row)
    nit = max(res["nit"] for res in results)
    layers = []
    for b, name in enumerate(names):
        res, row = per_layer_rows[b]
        history = [float(v) for v in res["history"][row].tolist()]
        # A task stops when its own layers have converged; the whole search would have gone on
        # with their frozen best, which is what their history then repeats.
        history += history[-1:] * (nit - len(history))
        layers.append(LayerResult(
            name=name, shape=tuple(int(s) for s in weights[name].shape),
            converter=res["converters"][row], tnmse=float(res["tnmse"].tolist()[row]),
            tnmse_ci95=_interval(res["tnmse_ci95"][row]),
            baseline_tnmse=float(res["baseline_tnmse"].tolist()[row]),
            baseline_ci95=_interval(res["baseline_ci95"][row]), history=history,
            chosen=res["chosen"][row], success=bool(res["layer_success"][row])))
    reasons = {res["stop_reason"] for res in results}
    stop_reason = next((r for r in ("callback", "maxiter") if r in reasons), "converged")
    settings = run_record(
        f_lst=f_lst, t_steps=t_steps, backend=backend, per_layer=per_layer, include=include,
        exclude=exclude, options=options, noise_model=noise_model,
        baseline=g_converter_baseline, compensation=opt.compensation, space=opt.space,
        device=results[0]["device"], physics=opt.physics,
        hierarchical=bool(per_layer and hierarchical))
    return NetworkResult(
        layers=layers, settings=settings,
        total_tnmse=_weighted([layer.tnmse for layer in layers], sizes),
        total_baseline_tnmse=_weighted([layer.baseline_tnmse for layer in layers], sizes),
        nit=nit, nfev=sum(res["nfev"] for res in results) + extra_nfev,
        wall_time=time.perf_counter() - start, stop_reason=stop_reason)

