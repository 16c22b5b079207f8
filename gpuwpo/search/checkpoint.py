"""Checkpoints: one file that holds a run's search state and what the run is.

A checkpoint is ONE safetensors file, written to a temporary file beside it, flushed to disk and
moved into place with ``os.replace``: a reader sees the previous checkpoint or the new one,
never a mix of two. It holds

* the search state of each *stage* of the run as tensors and JSON (no pickle): a plain run has
  one stage; a hierarchical :func:`gpuwpo.optimize_network` run has two, ``"global"`` (the pooled
  search) and ``"layers"`` (the per-layer search started from it);
* the run's *fingerprint*, everything that decides what the run finds: ``gpuwpo_version``,
  ``weights`` (a SHA-256 digest of every searched layer's name, dtype, shape and bytes),
  ``physics`` (physics, noise model, baseline, compensation, times, significance factors,
  symmetry, conductance range), ``settings`` (backend, device, layers selected, the search
  options) and ``seed``; the file format's version is in the header;
* a SHA-256 digest of all of the above, so that a flipped byte anywhere is found.

Resuming compares the fingerprint field by field and refuses the first that differs, naming it
(``physics.t_steps``, ``settings.options.popsize``, ``seed``, ...); a file that is truncated,
corrupted or not a checkpoint is refused naming its path. Options that do not change what a run
finds may differ on resume: ``checkpoint``, ``checkpoint_every``, ``resume``, ``callback``,
``disp``, and ``maxiter`` (to extend a run, or end it sooner, but not before the generation the
checkpoint holds; not in a hierarchical run, where it also splits the budget between its two
searches). A resumed run then ends exactly as an uninterrupted run with its settings would.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._files import atomic_write

__all__ = [
    "FORMAT",
    "VERSION",
    "CHANGEABLE_OPTIONS",
    "Checkpoint",
    "Checkpointing",
    "Stage",
    "PeriodicCheckpoint",
    "digest",
    "PHYSICS_FIELDS",
    "UNRECORDED_OPTIONS",
    "physics_record",
    "options_record",
    "run_fingerprint",
    "search_fingerprint",
    "read_checkpoint",
    "write_checkpoint",
    "check_target",
]

FORMAT = "gpuwpo-checkpoint"
#: Version 1 was two files in a directory (de_state.safetensors + de_state.json).
VERSION = 2

#: Options that never decide what a run finds (where it saves, what it prints, its hooks): a
#: record leaves them out (:func:`options_record`).
UNRECORDED_OPTIONS = ("checkpoint", "checkpoint_every", "resume", "callback", "disp")
#: Options that may differ between a checkpointed run and its resumption: those, and
#: ``maxiter`` only outside hierarchical runs (see the module's docstring).
CHANGEABLE_OPTIONS = (*UNRECORDED_OPTIONS, "maxiter")

_KEY = "gpuwpo_checkpoint"  # the safetensors metadata entry holding the JSON document
_DIGEST = "sha256"  # the metadata entry holding the digest


# --------------------------------------------------------------------------------------------
# Digests and fingerprints
# --------------------------------------------------------------------------------------------


def _update(h, name: str, t: Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(json.dumps([name, str(t.dtype).removeprefix("torch."), list(t.shape)]).encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy())


def digest(named: Mapping[str, Tensor]) -> str:
    """SHA-256 (hex) of tensors by name, in the mapping's order: names, dtypes, shapes, bytes."""
    h = hashlib.sha256()
    for name, t in named.items():
        _update(h, str(name), torch.as_tensor(t))
    return h.hexdigest()


def _plain(value: Any) -> Any:
    """``value`` as plain JSON types (a JSON round trip: tuples become lists)."""
    return json.loads(json.dumps(value, allow_nan=False))


#: The fields of a run's ``physics`` part (:func:`physics_record`): what is simulated.
PHYSICS_FIELDS = ("physics", "noise_model", "baseline", "compensation", "t_steps", "f_lst",
                  "symmetric", "g_min", "g_max")


def physics_record(*, physics: str, noise_model, baseline, compensation, t_steps,
                   f_lst: Sequence[float | None], space) -> dict[str, Any]:
    """The physics a run simulates, as plain JSON: the fields :data:`PHYSICS_FIELDS`.

    Args:
        physics: ``"device"`` or ``"aihwkit"``.
        noise_model, baseline, compensation: registered objects (:mod:`gpuwpo.registry`),
            written as their registry records.
        t_steps: [T] inference times in seconds (a sequence or a tensor), written as floats.
        f_lst: the significance factors, None where the search chooses one.
        space: the :class:`gpuwpo.search.strategy.StrategySpace` (its ``symmetric``, ``g_min``
            and ``g_max`` in uS).
    """
    from ..device.simulate import as_time_tensor
    from ..registry import to_dict

    return _plain({
        "physics": physics,
        "noise_model": to_dict(noise_model),
        "baseline": to_dict(baseline),
        "compensation": to_dict(compensation),
        "t_steps": as_time_tensor(t_steps, dtype=torch.float64).tolist(),
        "f_lst": [None if f is None else float(f) for f in f_lst],
        "symmetric": bool(space.symmetric),
        "g_min": float(space.g_min),
        "g_max": float(space.g_max),
    })


def options_record(options) -> dict[str, Any]:
    """Every option of a :class:`gpuwpo.search.options.SearchOptions` that decides what a run
    finds (all but :data:`UNRECORDED_OPTIONS`), as plain JSON: tensors (``x0``, ``x_init``) as
    nested lists of float64 values, tuples as lists."""
    def plain(value: Any) -> Any:
        if isinstance(value, Tensor):
            value = value.detach().cpu()
            return value.double().tolist() if value.is_floating_point() else value.tolist()
        return value

    return _plain({name: plain(value) for name, value in options.as_dict().items()
                   if name not in UNRECORDED_OPTIONS})


def run_fingerprint(weights_digest: str, *, physics: Mapping[str, Any],
                    settings: Mapping[str, Any], options: Mapping[str, Any],
                    maxiter_changeable: bool = True) -> dict:
    """What a run is, as its checkpoints record and compare it (see the module's docstring).

    Args:
        weights_digest: :func:`digest` of the searched weights.
        physics: :func:`physics_record` (or the same fields of a run's record).
        settings: the rest of what decides what the run finds (backend, device, ...), plain JSON.
        options: :func:`options_record` of the run's options; the seed becomes the
            fingerprint's own field, and the options that may change on resume
            (:data:`CHANGEABLE_OPTIONS`) are left out.
        maxiter_changeable: False where ``maxiter`` decides more than when the run ends (a
            hierarchical network run splits it between its two searches).
    """
    from .. import __version__

    options = dict(_plain(options))
    changeable = set(CHANGEABLE_OPTIONS) - (set() if maxiter_changeable else {"maxiter"})
    seed = options.pop("seed", None)
    options = {k: v for k, v in options.items() if k not in changeable}
    return {"gpuwpo_version": __version__, "weights": weights_digest,
            "physics": _plain(dict(physics)), "settings": {**_plain(dict(settings)),
                                                         "options": options},
            "seed": seed}


def search_fingerprint(problem, options, backend: str) -> dict:
    """What a search run by a backend alone is (``run_search`` with the options ``checkpoint`` or
    ``resume``): the problem's shape, the backend and the options. The loss itself is a function
    and cannot be fingerprinted; :class:`gpuwpo.WeightProgrammingOptimizer` fingerprints the
    weights and the physics behind it."""
    from .. import __version__

    opts = {}
    for name, value in options.as_dict().items():
        if name in CHANGEABLE_OPTIONS or name == "seed":
            continue
        if name in ("x0", "x_init") and value is not None and not isinstance(value, str):
            value = digest({name: torch.as_tensor(value)})
        opts[name] = list(value) if isinstance(value, tuple) else value
    layer_ids = getattr(problem, "layer_ids", None)
    return {"gpuwpo_version": __version__,
            "problem": {"num_layers": problem.num_layers, "dim": problem.dim,
                        "dtype": str(problem.dtype), "device": str(problem.device),
                        "layer_ids": None if layer_ids is None else list(layer_ids)},
            "settings": {"backend": backend, "options": opts}, "seed": options.seed}


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_difference(saved: Any, current: Any, where: str) -> tuple[str, Any, Any] | None:
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in [*current, *(k for k in saved if k not in current)]:
            name = f"{where}.{key}" if where else str(key)
            if key not in saved or key not in current:
                return name, saved.get(key, "(absent)"), current.get(key, "(absent)")
            found = _first_difference(saved[key], current[key], name)
            if found:
                return found
        return None
    return None if saved == current else (where, saved, current)


def _refuse_difference(path: Path, saved: Any, current: Any, where: str = "") -> None:
    found = _first_difference(_plain(saved), _plain(current), where)
    if found is not None:
        name, a, b = found
        verb = "differ" if name == "weights" else "differs"
        raise ValueError(f"checkpoint {path} is of another run: {name} {verb} (checkpoint "
                         f"{_short(a)}, this run {_short(b)}); resume with the run's own "
                         f"weights, physics, settings and seed, or start afresh without resume")


# --------------------------------------------------------------------------------------------
# The file
# --------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """The content of a checkpoint file.

    Attributes:
        fingerprint: what the run is (see the module's docstring).
        stages: stage name -> ``(tensors, meta)``: the stage's state as tensors and a JSON-able
            dict, in the order the run reached them.
    """

    fingerprint: dict
    stages: dict[str, tuple[dict[str, Tensor], dict]] = field(default_factory=dict)


def _document_digest(document: Mapping, tensors: Mapping[str, Tensor]) -> str:
    h = hashlib.sha256(json.dumps(document, sort_keys=True, allow_nan=False).encode())
    for name in sorted(tensors):
        _update(h, name, tensors[name])
    return h.hexdigest()


def write_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (one file; the old one stays whole until the
    new one is complete on disk)."""
    from safetensors.torch import save

    path = Path(path)
    tensors: dict[str, Tensor] = {}
    stages: dict[str, dict] = {}
    for stage, (stage_tensors, meta) in checkpoint.stages.items():
        if "/" in stage:
            raise ValueError(f"checkpoint stage names hold no '/', got {stage!r}")
        for name, t in stage_tensors.items():
            tensors[f"{stage}/{name}"] = t.detach().to("cpu").contiguous()
        stages[stage] = {"meta": meta, "tensors": sorted(stage_tensors)}
    document = _plain({"format": FORMAT, "version": VERSION,
                       "fingerprint": checkpoint.fingerprint, "stages": stages})
    metadata = {_KEY: json.dumps(document, allow_nan=False),
                _DIGEST: _document_digest(document, tensors)}
    # An unnamed temporary file renamed into place (gpuwpo._files): a kill at any moment leaves
    # the old checkpoint whole and no stray file behind.
    atomic_write(path, save(tensors, metadata))


def _header(raw: bytes) -> dict | None:
    """The safetensors header of ``raw`` as a dict, or None when it has none."""
    if len(raw) < 8:
        return None
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        return None
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def _is_checkpoint_header(header: dict | None) -> bool:
    meta = header.get("__metadata__") if header is not None else None
    return isinstance(meta, dict) and _KEY in meta


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`write_checkpoint`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a file that is not a gpuwpo checkpoint, one of another format version, or a
            torn or corrupted one (the message names ``path``).
    """
    from safetensors.torch import load

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a directory, not a gpuwpo checkpoint file (a "
                         f"checkpoint of format version 1? this gpuwpo reads version {VERSION}; "
                         f"start afresh)")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}") from None
    except OSError as err:
        raise ValueError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    header = _header(raw)
    torn = f"checkpoint {path} is torn or corrupted"
    if header is None:
        raise ValueError(f"{path} is not a gpuwpo checkpoint, or a torn or corrupted one: its "
                         f"header is unreadable")
    if not _is_checkpoint_header(header):
        raise ValueError(f"{path} is not a gpuwpo checkpoint (a safetensors file without "
                         f"gpuwpo's record)")
    meta = header["__metadata__"]
    try:
        document = json.loads(meta[_KEY])
    except (TypeError, ValueError):
        raise ValueError(f"{torn}: its record is not JSON") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{torn}: its record does not say format {FORMAT!r}")
    if document.get("version") != VERSION:
        raise ValueError(f"checkpoint {path} has format version {document.get('version')!r}; "
                         f"this gpuwpo reads version {VERSION}")
    try:
        tensors = load(raw)
    except Exception as err:  # safetensors' own error type; never a traceback for a bad file
        raise ValueError(f"{torn}: its tensors cannot be read ({type(err).__name__})") from None
    if meta.get(_DIGEST) != _document_digest(document, tensors):
        raise ValueError(f"{torn}: its content does not match its SHA-256 digest")
    fingerprint, stages = document.get("fingerprint"), document.get("stages")
    if not isinstance(fingerprint, dict) or not isinstance(stages, dict):
        raise ValueError(f"{torn}: its record has no fingerprint or no stages")
    out = Checkpoint(fingerprint=fingerprint)
    for stage, entry in stages.items():
        names = entry.get("tensors") if isinstance(entry, dict) else None
        if not isinstance(names, list) or not isinstance(entry.get("meta"), dict) or not all(
                isinstance(n, str) and f"{stage}/{n}" in tensors for n in names):
            raise ValueError(f"{torn}: stage {stage!r} is incomplete")
        out.stages[stage] = ({n: tensors[f"{stage}/{n}"] for n in names}, entry["meta"])
    return out


def check_target(path: str | os.PathLike, *, resume: str | os.PathLike | None = None) -> Path:
    """Check, before any work, that a checkpoint can be written to ``path``: its directory
    exists, and ``path`` is not a directory nor an existing file other than a gpuwpo checkpoint
    (never overwrite someone's data, an input least of all)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a directory; give a file name such as run.ckpt")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint {path}: the directory {directory} does not exist")
    if path.exists() and (resume is None or os.path.abspath(resume) != os.path.abspath(path)):
        try:
            with open(path, "rb") as fh:
                head = fh.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else 0
                size = os.fstat(fh.fileno()).st_size
                raw = head + fh.read(n) if 0 < n <= size - 8 else head
        except OSError as err:
            raise ValueError(f"cannot read {path}: {err.strerror or err}") from None
        if not _is_checkpoint_header(_header(raw)):
            raise ValueError(f"{path} exists and is not a gpuwpo checkpoint; refusing to "
                             f"overwrite it (give another checkpoint path)")
    return path


# --------------------------------------------------------------------------------------------
# A run's checkpointing
# --------------------------------------------------------------------------------------------


class Checkpointing:
    """One run's checkpoints: where they go, what the run resumes from, the run's fingerprint.

    Args:
        path: where to save (None: do not save).
        every: save every this many generations (and at the end of each stage, and when the run
            is interrupted by KeyboardInterrupt).
        resume: a checkpoint to continue (None: start afresh). Its fingerprint must equal
            ``fingerprint``, field by field.
        fingerprint: what this run is (:func:`run_fingerprint`).
    """

    def __init__(self, path: str | os.PathLike | None, every: int,
                 resume: str | os.PathLike | None, fingerprint: Mapping[str, Any]) -> None:
        for name, value in (("checkpoint", path), ("resume", resume)):
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise ValueError(f"{name} must be a file path, got {value!r}")
        self.fingerprint = _plain(dict(fingerprint))
        self.path = None if path is None else check_target(path, resume=resume)
        self.every = int(every)
        self.resume = None if resume is None else Path(resume)
        self.stages: dict[str, tuple[dict[str, Tensor], dict]] = {}
        if self.resume is not None:
            saved = read_checkpoint(self.resume)
            _refuse_difference(self.resume, saved.fingerprint, self.fingerprint)
            self.stages = dict(saved.stages)

    @classmethod
    def from_options(cls, options, fingerprint: Mapping[str, Any]) -> Checkpointing | None:
        """From a :class:`gpuwpo.search.options.SearchOptions` (None when it neither saves nor
        resumes)."""
        if options.checkpoint is None and options.resume is None:
            return None
        return cls(options.checkpoint, options.checkpoint_every, options.resume, fingerprint)

    def stage(self, name: str, identity: Mapping[str, Any] | None = None) -> Stage:
        """The handle of stage ``name``; ``identity``: what else the stage's own search depends
        on (e.g. its warm starts), compared on resume like the fingerprint."""
        return Stage(self, name, _plain(dict(identity or {})))


class Stage:
    """One search of a run: what it resumes from and where it saves (see
    :meth:`Checkpointing.stage`)."""

    def __init__(self, run: Checkpointing, name: str, identity: dict) -> None:
        self.run, self.name, self.identity = run, name, identity

    @property
    def every(self) -> int:
        return self.run.every

    @property
    def saves(self) -> bool:
        return self.run.path is not None

    @property
    def source(self) -> Path | None:
        """The checkpoint this stage resumes from (None: it starts afresh)."""
        return self.run.resume if self.name in self.run.stages and self.run.resume else None

    def resumed(self) -> tuple[dict[str, Tensor], dict] | None:
        """The stage's saved ``(tensors, meta)`` when the run resumes one, else None."""
        saved = self.run.stages.get(self.name)
        if saved is None or self.run.resume is None:
            return None
        tensors, meta = saved
        _refuse_difference(self.run.resume, meta.get("identity", {}), self.identity,
                           f"stage {self.name}")
        return tensors, meta

    def save(self, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
        """Record the stage's state and write the run's checkpoint (every stage so far)."""
        if self.run.path is None:
            return
        self.run.stages[self.name] = (dict(tensors), {**meta, "identity": self.identity})
        write_checkpoint(self.run.path, Checkpoint(self.run.fingerprint, dict(self.run.stages)))


class PeriodicCheckpoint:
    """The save loop of a search stage, written once for every backend that checkpoints.

    A backend runs its generations inside ``with PeriodicCheckpoint(...) as saves:``, calls
    :meth:`generation` at the end of every complete generation with the state to continue from,
    and :meth:`finish` with its final state. The stage is saved

    * every ``stage.every`` generations (numbered over the whole run, so a resumed run saves at
      the generations the uninterrupted one does),
    * at the end (:meth:`finish`), and
    * when a KeyboardInterrupt leaves the ``with`` block: the last complete generation (before
      the first one, the state the stage resumed from), so that Ctrl-C loses nothing and a
      resumed run continues where it stopped. The interrupt then goes on up.

    Args:
        stage: the stage to save (None, or a stage of a run that does not save: nothing is
            saved and the calls cost nothing).
        record: ``record(state) -> (tensors, meta)``, the backend's own record of its state
            (the inverse of its restore).
        resumed: the state the stage resumed from (None when it starts afresh).
    """

    def __init__(self, stage: Stage | None,
                 record: Callable[[Any], tuple[Mapping[str, Tensor], Mapping[str, Any]]],
                 resumed: Any = None) -> None:
        self.stage = stage
        self.record = record
        self.saves = stage is not None and stage.saves
        self._latest = resumed if self.saves else None

    def generation(self, nit: int, state: Any) -> None:
        """The run has completed generation ``nit`` (of the whole run) and is at ``state``."""
        if not self.saves:
            return
        self._latest = state
        if nit % self.stage.every == 0:
            self.stage.save(*self.record(state))

    def finish(self, state: Any) -> None:
        """The stage's search has ended at ``state``: save it."""
        if self.saves:
            self.stage.save(*self.record(state))

    def __enter__(self) -> PeriodicCheckpoint:
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if kind is not None and issubclass(kind, KeyboardInterrupt) and self._latest is not None:
            self.stage.save(*self.record(self._latest))
        return False  # the interrupt (or any error) goes on up
