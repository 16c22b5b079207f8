"""Layer-sharded search on Ray: a network's layers spread over workers, one result back.

A :class:`RayCluster` is an executor of the network pipeline (:mod:`gpuwpo.network.executors`).
:func:`gpuwpo.optimize_network` plans the tasks (the driver makes the layers' test tiles once,
on the CPU, and cuts them into tasks of a few layers each, more tasks than workers:
``layers_per_task``, default about four tasks per worker; a hierarchical run's pooled search is
a task of its own, run first) and assembles one result: bit for bit the run's in one process
with the same seed (``wall_time`` aside), since every random number a layer's search draws is
keyed by the layer's id. The cluster runs the tasks:

* A queue on the driver keeps one task running on each worker; when a task ends (its layers
  converged, or reached ``maxiter``), the next queued one takes its place, so no worker idles
  while work waits. Each task runs its layers' whole pipeline with the torch engine
  (:func:`gpuwpo.network.executors.run_task`: baseline, standard starts, search, polish,
  validated choice).
* Fault tolerance: every task saves its search state every ``checkpoint_every`` generations
  (:mod:`gpuwpo.search.checkpoint`) and streams the checkpoint to the driver, which keeps the
  latest one per task (it owns those objects, so they outlive the worker). When a worker dies
  (killed, out of memory, its node lost), the driver queues the task again with its latest
  checkpoint: the run loses only that task's progress since its checkpoint, and ends with the
  same result. An error raised by the search itself is not retried: it stops the run.

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

from ..search.checkpoint import Checkpointing, Stage, digest
from .executors import Task, TaskResult, TaskSettings, run_task

__all__ = ["RayCluster", "ShardEvent"]


# --------------------------------------------------------------------------------------------
# What happens to a task, and a task on a worker
# --------------------------------------------------------------------------------------------


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


def _fingerprint(task: Task) -> dict:
    """What a task's own checkpoints are of: its layers, their test tiles and the seed."""
    from .. import __version__

    return {"gpuwpo_version": __version__, "layers": list(task.layers),
            "weights": digest({"tiles": task.searched.weights}), "seed": task.options.seed}


def _run_on_worker(settings: TaskSettings, task: Task, resume: bytes | None,
                   emit: Callable[[int, bytes], None]) -> TaskResult:
    """Run one task on a worker, its search state saved every ``checkpoint_every`` generations
    to a file of its own and each save handed to ``emit(generation, bytes)``; ``resume``: the
    bytes of the task's latest checkpoint, to continue from."""
    with tempfile.TemporaryDirectory(prefix="gpuwpo-task-") as tmp:
        path = Path(tmp) / "task.ckpt"
        if resume is not None:
            path.write_bytes(resume)
        run = _ForwardingCheckpointing(path, task.options.checkpoint_every,
                                       path if resume is not None else None, _fingerprint(task),
                                       emit)
        return run_task(settings, task, lambda optimizer: run)


def _task_stream(settings: TaskSettings, task: Task, resume: bytes | None, threads: int):
    """The Ray task: runs the task in a thread and streams its checkpoints, then its
    result, to the driver (objects a streaming task yields belong to the driver, so they
    outlive the worker)."""
    import queue
    import threading

    torch.set_num_threads(threads)
    messages: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            torch.set_num_threads(threads)
            result = _run_on_worker(settings, task, resume,
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

    #: A cluster runs parts of a network (:mod:`gpuwpo.network.executors`).
    sharded = True

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

    def run_tasks(self, settings: TaskSettings, tasks: Sequence[Task], stage: str,
                  checkpoint: None = None) -> list[TaskResult]:
        """Run ``tasks`` (of ``stage``) on the workers, at most :attr:`num_workers` at once, the
        next queued one starting as soon as one ends; a task whose worker died runs again from
        its latest checkpoint. Returns the tasks' results in the tasks' order.

        ``checkpoint``: None (each task checkpoints on its own, every ``checkpoint_every``
        generations; a checkpoint of the whole run is refused before any work)."""
        import ray
        from ray.exceptions import RayError, RayTaskError

        if checkpoint is not None:
            raise ValueError("a Ray cluster's tasks checkpoint on their own; it takes no "
                             "checkpoint of the whole run")
        # The workers print no progress bars.
        tasks = [dataclasses.replace(task, options=dataclasses.replace(task.options, disp=False))
                 for task in tasks]

        remote = ray.remote(_task_stream).options(
            num_returns="streaming", max_retries=0, num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker)
        settings_ref = ray.put(settings)
        queue = deque(range(len(tasks)))
        running: dict[Any, int] = {}
        latest: dict[int, tuple[int, bytes]] = {}  # task -> (generation, checkpoint)
        attempts = [0] * len(tasks)
        results: list[TaskResult | None] = [None] * len(tasks)
        pids: dict[int, int | None] = {}

        def event(kind: str, i: int, **kw) -> None:
            self._emit(ShardEvent(kind, i, tasks[i].layers, stage, attempts[i], pid=pids.get(i),
                                  **kw))

        try:
            while queue or running:
                while queue and len(running) < self.num_workers:
                    i = queue.popleft()
                    resume = latest[i][1] if i in latest else None
                    stream = remote.remote(settings_ref, tasks[i], resume,
                                           self.threads_per_worker)
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


def _chunks(num_layers: int, size: int) -> list[list[int]]:
    return [list(range(i, min(num_layers, i + size))) for i in range(0, num_layers, size)]
