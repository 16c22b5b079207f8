"""Results files (JSON): write them, read them back checked, and where one may be written.

A results file is one JSON object::

    {"format": "gpuwpo-result", "version": 4, "settings": {...}, "total_tnmse": ...,
     "total_baseline_tnmse": ..., "nit": ..., "nfev": ..., "wall_time": ..., "stop_reason": ...,
     "layers": [{"name", "shape", "mapping", "f_dtype", "g_dtype", "f_lst", "g_lst", "g_min",
                 "g_max", ["clip",] "tnmse", "tnmse_ci95", "baseline_tnmse", "baseline_ci95",
                 ["layerwise_baseline_tnmse", "layerwise_baseline_ci95",] "history", "chosen",
                 "success"}, ...]}

A layer that keeps the baseline converter holds ``"converter": {registry record}`` instead of
the CustomPair program's f_lst/g_lst/g_min/g_max. A layer's recipe is its converter (the clip
inside a clipping program) under its ``mapping`` (``"layer"`` or ``"columnwise"``,
:mod:`gpuwpo.device.mapping`); ``layerwise_baseline_*`` are the baseline under the layer-wise
mapping on the answer's noise, where the run measured them.

``settings`` is the run's record (:mod:`gpuwpo.network.settings`): everything that decides what
the run finds (the options and which were given, the strategies' and the baseline's mappings
among them, the noise model, baseline and compensation as registry records, see
:mod:`gpuwpo.registry`). Version 4 adds each layer's mapping and the layer-wise baseline's
figures; version 3 each layer's validated choice. Versions 1 to 3 are read too (their layers
are layer-wise, with no layer-wise baseline figure; those of versions 1 and 2 are strategies,
"search"), and so are records whose options still say ``seeds`` (now ``standard_starts``) or
have no mappings (layer-wise for both, :data:`gpuwpo.network.settings.RECORDLESS_OPTIONS`).

Floats are written by Python's json, which prints the shortest repr that reads back to the same
float64; tensors are stored as nested lists of float64 values converted from the tensors' own
values (float32 -> float64 is exact) with their dtype, so every value round-trips bit for bit.
Files are written atomically (:func:`gpuwpo._files.atomic_write`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..device.converters import CustomPairConductanceConverter
from ..device.mapping import MAPPINGS
from ..device.physics import PHYSICS
from ..network.result import LayerResult, NetworkResult
from ..network.settings import options_from_settings, upgrade_record
from ..registry import from_dict, to_dict
from .common import existing_file, one_line, same_file, show

__all__ = ["save_result", "load_result", "is_results_file", "check_output_file",
           "result_to_json_bytes", "RESULT_FORMAT", "RESULT_VERSION", "MAX_RESULT_BYTES"]

RESULT_FORMAT = "gpuwpo-result"
RESULT_VERSION = 4
# Versions this gpuwpo reads: 1 recorded the physics as attribute snapshots, 2 as registry
# records with every option of the run, 3 each layer's validated choice (a layer may hold the
# baseline converter itself), 4 each layer's mapping and the layer-wise baseline's figures.
_READABLE_VERSIONS = (1, 2, 3, 4)
# The first version whose layers record their mapping.
_MAPPING_VERSION = 4


_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
           "float64": torch.float64}


def _dtype_name(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _layer_to_json(layer: LayerResult) -> dict[str, Any]:
    conv = layer.converter
    figures = {
        "tnmse": float(layer.tnmse),
        "tnmse_ci95": [float(v) for v in layer.tnmse_ci95],
        "baseline_tnmse": float(layer.baseline_tnmse),
        "baseline_ci95": [float(v) for v in layer.baseline_ci95],
        # Only a run that measured the layer-wise baseline records it.
        **({"layerwise_baseline_tnmse": float(layer.layerwise_baseline_tnmse),
            "layerwise_baseline_ci95": [float(v) for v in layer.layerwise_baseline_ci95]}
           if layer.layerwise_baseline_tnmse is not None else {}),
        "history": [float(v) for v in layer.history],
        "chosen": str(layer.chosen),
        "success": bool(layer.success),
    }
    if not isinstance(conv, CustomPairConductanceConverter):
        return {"name": layer.name, "shape": [int(s) for s in layer.shape],
                "mapping": str(layer.mapping), "converter": to_dict(conv), **figures}
    if conv.f_lst.ndim != 1 or conv.g_lst.ndim != 2:
        raise ValueError(f"layer {layer.name!r}: a results file holds one program per layer, got "
                         f"a batched converter (batch shape {tuple(conv.batch_shape)})")
    return {
        "name": layer.name,
        "shape": [int(s) for s in layer.shape],
        "mapping": str(layer.mapping),
        "f_dtype": _dtype_name(conv.f_lst),
        "g_dtype": _dtype_name(conv.g_lst),
        # float64 holds every float16/bfloat16/float32 value exactly, and json writes float64
        # exactly (shortest round-tripping repr).
        "f_lst": conv.f_lst.detach().cpu().double().tolist(),
        "g_lst": conv.g_lst.detach().cpu().double().tolist(),
        "g_min": float(conv.g_min),
        "g_max": float(conv.g_max),
        # Only a program that clips says so: files of programs on the full grid are unchanged.
        **({"clip": float(conv.clip)} if conv.clip != 1.0 else {}),
        **figures,
    }


def _result_to_json(result: NetworkResult) -> dict[str, Any]:
    return {
        "format": RESULT_FORMAT,
        "version": RESULT_VERSION,
        "settings": result.settings,
        "total_tnmse": float(result.total_tnmse),
        "total_baseline_tnmse": float(result.total_baseline_tnmse),
        "nit": int(result.nit),
        "nfev": int(result.nfev),
        "wall_time": float(result.wall_time),
        "stop_reason": str(result.stop_reason),
        "layers": [_layer_to_json(layer) for layer in result.layers],
    }


def _first_non_finite(value: Any, where: str) -> str | None:
    """The JSON path of the first NaN or infinite number in ``value``, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is {value!r}"
    if isinstance(value, Mapping):
        for k, v in value.items():
            found = _first_non_finite(v, f"{where}.{k}" if where else str(k))
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _first_non_finite(v, f"{where}[{i}]")
            if found:
                return found
    return None


def result_to_json_bytes(result: NetworkResult) -> bytes:
    """The bytes :func:`save_result` writes (UTF-8 JSON), checked: finite numbers only.

    Raises:
        TypeError: ``result`` is not a :class:`NetworkResult`.
        ValueError: a layer holds a batched converter, or a NaN or infinite number (naming the
            field), or a value JSON cannot hold.
    """
    if not isinstance(result, NetworkResult):
        raise TypeError(f"save_result takes a NetworkResult, got {type(result).__name__}")
    data = _result_to_json(result)
    bad = _first_non_finite(data, "")
    if bad:
        raise ValueError(f"the result cannot be saved: {bad}; a results file holds only finite "
                         f"numbers (NaN or infinity would be silently wrong, and is not JSON)")
    try:
        text = json.dumps(data, indent=1, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"the result cannot be saved as JSON: {one_line(err)}") from None
    return (text + "\n").encode("utf-8")


def save_result(result: NetworkResult, path: str | os.PathLike) -> None:
    """Write ``result`` to ``path`` as JSON, atomically (the old file, if any, stays whole).

    Nothing but a results file is ever replaced: an existing file at ``path`` that is not a
    gpuwpo results file, a directory or anything that is not a regular file is refused. The
    result is checked (and turned into JSON) before the disk is touched: NaN or infinite
    figures are refused, never written. The file is written by :func:`gpuwpo._files.
    atomic_write`: readers see the old file or the new one, never half a file, even if the
    process dies mid-write, no temporary file is left behind, and a replaced file keeps its
    permissions.

    Raises:
        TypeError: ``result`` is not a :class:`NetworkResult`.
        ValueError: a layer holds a batched converter, a value is not finite or JSON cannot
            write it, or ``path`` is something other than a results file.
        OSError: the directory does not exist or cannot be written.
    """
    from .._files import atomic_write

    data = result_to_json_bytes(result)  # built first: a bad result fails before the disk
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give a file name such as "
                         f"{path / 'results.json'}")
    if os.path.lexists(path) and not is_results_file(path):
        raise ValueError(f"{path} exists and is not a gpuwpo results file; refusing to "
                         f"overwrite it (remove it or choose another name)")
    atomic_write(path, data)


#: The largest results file read (a results file holds a few numbers per layer: even a network
#: of thousands of layers stays far below; anything larger is refused before it is read).
MAX_RESULT_BYTES = 256 * 2**20


class _Fields:
    """Reads the fields of a results file, each checked, every error naming file and field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> ValueError:
        return ValueError(f"{self.path}: {where} {problem}")

    def need(self, obj: Mapping, key: str, where: str) -> Any:
        if key not in obj:
            raise ValueError(f"{self.path}: not a valid gpuwpo results file: {where} has no "
                             f"{key!r}")
        return obj[key]

    def number(self, value: Any, what: str, *, minimum: float | None = None,
               positive: bool = False) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
            math.isfinite(value)
        ok = ok and (minimum is None or value >= minimum) and (not positive or value > 0)
        if not ok:
            need = "a finite number" + (" > 0" if positive else "") + (
                f" >= {minimum:g}" if minimum is not None else "")
            raise self.fail(what, f"must be {need}, got {show(value)}")
        return float(value)

    def integer(self, value: Any, what: str, *, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(what, f"must be an integer >= {minimum}, got {show(value)}")
        return int(value)

    def string(self, value: Any, what: str) -> str:
        if not isinstance(value, str):
            raise self.fail(what, f"must be a string, got {show(value)}")
        return value

    def boolean(self, value: Any, what: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(what, f"must be true or false, got {show(value)}")
        return value

    def pair(self, value: Any, what: str) -> tuple[float, float]:
        if not isinstance(value, list) or len(value) != 2:
            raise self.fail(what, f"must be a list of two numbers, got {show(value)}")
        lo, hi = (self.number(v, f"{what}[{i}]") for i, v in enumerate(value))
        if lo > hi:
            raise self.fail(what, f"must be an interval [low, high], got {show(value)}")
        return lo, hi

    def numbers(self, value: Any, what: str, *, minimum: float | None = None) -> list[float]:
        if not isinstance(value, list):
            raise self.fail(what, f"must be a list of numbers, got {show(value)}")
        return [self.number(v, f"{what}[{i}]", minimum=minimum) for i, v in enumerate(value)]

    def shape(self, value: Any, what: str) -> tuple[int, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(what, f"must be a non-empty list of sizes, got {show(value)}")
        return tuple(self.integer(v, f"{what}[{i}]", minimum=1) for i, v in enumerate(value))

    def tensor(self, values: Any, dtype_name: Any, what: str, ndim: int) -> Tensor:
        if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
            raise self.fail(what, f"has unknown dtype {show(dtype_name)} (known: "
                                  f"{', '.join(_DTYPES)})")
        rows = values if ndim == 2 else [values]
        if not isinstance(values, list) or not values or not all(
                isinstance(r, list) and r and len(r) == len(rows[0]) for r in rows):
            shape = "a non-empty list of numbers" if ndim == 1 else \
                "a non-empty list of equally long, non-empty lists of numbers"
            raise self.fail(what, f"must be {shape}")
        for i, row in enumerate(rows):
            for j, v in enumerate(row):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                        not math.isfinite(v):
                    at = f"[{j}]" if ndim == 1 else f"[{i}][{j}]"
                    raise self.fail(f"{what}{at}", f"must be a finite number, got {show(v)}")
        t = torch.tensor(values, dtype=torch.float64).to(_DTYPES[dtype_name])
        if not bool(torch.isfinite(t).all()):
            raise self.fail(what, f"has values out of the range of {dtype_name}")
        return t


def _layer_from_json(obj: Any, i: int, read: _Fields, version: int) -> LayerResult:
    where = f"layers[{i}]"
    if not isinstance(obj, Mapping):
        raise read.fail(where, f"must be an object, got {show(obj)}")
    name = read.string(read.need(obj, "name", where), f"{where}.name")
    if not name:
        raise read.fail(f"{where}.name", "is empty")
    shape = read.shape(read.need(obj, "shape", where), f"{where}.shape")
    if "converter" in obj:
        conv = _record(obj["converter"], f"{where}.converter", read, strict=version >= 3)
        if not hasattr(conv, "convert_to_conductances"):
            raise read.fail(f"{where}.converter", f"is a {type(conv).__name__}, not a converter")
    else:
        conv = _program_from_json(obj, name, where, read)
    chosen = read.string(obj.get("chosen", "search"), f"{where}.chosen")
    success = read.boolean(obj.get("success", True), f"{where}.success")
    mapping, layerwise, layerwise_ci = _recipe_fields(obj, where, read, version)
    return LayerResult(
        name=name, shape=shape, converter=conv, mapping=mapping,
        layerwise_baseline_tnmse=layerwise, layerwise_baseline_ci95=layerwise_ci,
        tnmse=read.number(read.need(obj, "tnmse", where), f"{where}.tnmse", minimum=0.0),
        tnmse_ci95=read.pair(read.need(obj, "tnmse_ci95", where), f"{where}.tnmse_ci95"),
        baseline_tnmse=read.number(read.need(obj, "baseline_tnmse", where),
                                   f"{where}.baseline_tnmse", positive=True),
        baseline_ci95=read.pair(read.need(obj, "baseline_ci95", where),
                                f"{where}.baseline_ci95"),
        history=read.numbers(read.need(obj, "history", where), f"{where}.history", minimum=0.0),
        chosen=chosen, success=success,
    )


def _recipe_fields(obj: Mapping, where: str, read: _Fields, version: int
                   ) -> tuple[str, float | None, tuple[float, float] | None]:
    """A layer's mapping and its layer-wise baseline's figures (None, None where the run did not
    measure them); a file before version 4 is layer-wise, without the figures."""
    fields = ("mapping", "layerwise_baseline_tnmse", "layerwise_baseline_ci95")
    if version < _MAPPING_VERSION:
        newer = [key for key in fields if key in obj]
        if newer:  # a field this version never wrote: the file was edited or mislabelled
            raise read.fail(f"{where}.{newer[0]}", f"is a field of version "
                                                   f"{_MAPPING_VERSION}; this file says version "
                                                   f"{version}")
        return "layer", None, None
    mapping = read.need(obj, "mapping", where)
    if mapping not in MAPPINGS:
        raise read.fail(f"{where}.mapping", f"must be one of {', '.join(map(repr, MAPPINGS))}, "
                                            f"got {show(mapping)}")
    given = [key for key in fields[1:] if key in obj]
    if len(given) == 1:
        missing = next(key for key in fields[1:] if key not in obj)
        raise read.fail(where, f"has {given[0]!r} without {missing!r}: a results file records "
                               f"the layer-wise baseline's TNMSE with its interval")
    if not given:
        return str(mapping), None, None
    return (str(mapping),
            read.number(obj["layerwise_baseline_tnmse"], f"{where}.layerwise_baseline_tnmse",
                        positive=True),
            read.pair(obj["layerwise_baseline_ci95"], f"{where}.layerwise_baseline_ci95"))


def _program_from_json(obj: Mapping, name: str, where: str, read: _Fields
                       ) -> CustomPairConductanceConverter:
    f = read.tensor(read.need(obj, "f_lst", where), obj.get("f_dtype", "float64"),
                    f"{where}.f_lst", 1)
    g = read.tensor(read.need(obj, "g_lst", where), obj.get("g_dtype", "float64"),
                    f"{where}.g_lst", 2)
    g_min = read.number(read.need(obj, "g_min", where), f"{where}.g_min")
    g_max = read.number(read.need(obj, "g_max", where), f"{where}.g_max")
    clip = read.number(obj.get("clip", 1.0), f"{where}.clip")
    try:
        # The check is cheap and catches a hand-edited or corrupted table.
        return CustomPairConductanceConverter(f, g, g_min, g_max, clip=clip)
    except (ValueError, TypeError, RuntimeError) as err:
        raise read.fail(where, f"({name!r}) holds an invalid program: {one_line(err)}") \
            from None


def _record(rec: Any, what: str, read: _Fields, *, strict: bool, kind: str | None = None):
    """The object a registry record in the file describes; ``strict``: every field present."""
    if not isinstance(rec, Mapping):
        raise read.fail(what, f"must be an object with a 'class', got {show(rec)}")
    if kind is not None:
        rec = upgrade_record(rec, kind)
    try:
        obj = from_dict(rec, what=what)
        missing = [k for k in to_dict(obj) if k not in rec] if strict else []
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError,
            OverflowError) as err:
        raise ValueError(f"{read.path}: {one_line(err)}") from None
    if missing:
        raise read.fail(what, f"({rec['class']}) has no {missing[0]!r}: a results file "
                              f"records every field")
    return obj


def _check_settings(settings: Mapping, read: _Fields, version: int) -> None:
    """The types of what ``settings`` records (absent fields are allowed: older files)."""
    if "t_steps" in settings:
        times = read.numbers(settings["t_steps"], "settings.t_steps", minimum=0.0)
        if not times:
            raise read.fail("settings.t_steps", "is empty: a run has at least one time")
    if "f_lst" in settings:
        f = settings["f_lst"]
        if not isinstance(f, list) or not f or not all(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                              and math.isfinite(v) and v > 0) for v in f):
            raise read.fail("settings.f_lst", f"must be a non-empty list of significance "
                                              f"factors (> 0) or nulls, got {show(f)}")
    if "physics" in settings and settings["physics"] not in PHYSICS:
        raise read.fail("settings.physics", f"is {show(settings['physics'])}; this gpuwpo "
                                            f"knows {', '.join(PHYSICS)}")
    for key in ("per_layer", "hierarchical", "symmetric"):
        if key in settings and settings[key] is not None:
            read.boolean(settings[key], f"settings.{key}")
    for key in ("backend", "device"):
        if settings.get(key) is not None:
            read.string(settings[key], f"settings.{key}")
    for key in ("include", "exclude"):
        v = settings.get(key)
        if v is not None and not isinstance(v, str) and not (
                isinstance(v, list) and all(isinstance(p, str) for p in v)):
            raise read.fail(f"settings.{key}", f"must be a pattern or a list of them, got "
                                               f"{show(v)}")
    for kind in ("noise_model", "baseline", "compensation"):
        if settings.get(kind) is not None:
            _record(settings[kind], f"settings.{kind}", read, strict=version >= 2, kind=kind)
    if "explicit" in settings and not (isinstance(settings["explicit"], list) and all(
            isinstance(k, str) for k in settings["explicit"])):
        raise read.fail("settings.explicit", "must be a list of option names")
    if "options" in settings:
        options_from_settings(settings, f"{read.path}: ")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"holds {name}, which is not a number (JSON has no {name})")


def _read_json(path: Path, what: str) -> Any:
    """The JSON document in ``path``, or a ValueError in gpuwpo's words naming the file."""
    size = path.stat().st_size
    if size > MAX_RESULT_BYTES:
        raise ValueError(f"{path}: not a gpuwpo {what} ({size} bytes; a {what} is at most "
                         f"{MAX_RESULT_BYTES} bytes)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a gpuwpo {what} (not UTF-8 text)") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a gpuwpo {what} (not valid JSON: {err.msg} at line "
                         f"{err.lineno} column {err.colno})") from None
    except RecursionError:
        raise ValueError(f"{path}: not a gpuwpo {what} (JSON nested too deeply)") from None
    except ValueError as err:  # NaN/Infinity tokens, integers too long to read
        raise ValueError(f"{path}: not a valid gpuwpo {what}: it {one_line(err)}") from None


def load_result(path: str | os.PathLike) -> NetworkResult:
    """Read a results file written by :func:`save_result` (exactly the saved values).

    The file is checked against the format before anything is built from it: every field has
    its type and range (finite numbers, figures >= 0, integers where counts are, strings, lists
    of the right lengths), programs and registry records are rebuilt and checked, and NaN or
    infinite values are refused.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, not a gpuwpo results file, a version this gpuwpo cannot read, or
            a missing/malformed field (the message names the file and the field).
    """
    path = existing_file(path, "results file")
    data = _read_json(path, "results file")
    if not isinstance(data, Mapping) or data.get("format") != RESULT_FORMAT:
        found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(f"{path}: not a gpuwpo results file (format {show(found)}, expected "
                         f"{RESULT_FORMAT!r})")
    version = data.get("version")
    if isinstance(version, bool) or version not in _READABLE_VERSIONS:
        newer = isinstance(version, int) and not isinstance(version, bool) and \
            version > RESULT_VERSION
        hint = " (written by a newer gpuwpo: upgrade to read it)" if newer else ""
        raise ValueError(f"{path}: results file version {show(version)} is not supported; this "
                         f"gpuwpo reads versions {', '.join(map(str, _READABLE_VERSIONS))}{hint}")
    read = _Fields(path)
    layers = read.need(data, "layers", "the file")
    if not isinstance(layers, list):
        raise read.fail("layers", "must be a list")
    if not layers:
        raise read.fail("layers", "is empty: a results file holds at least one layer")
    settings = read.need(data, "settings", "the file")
    if not isinstance(settings, dict):
        raise read.fail("settings", "must be an object")
    _check_settings(settings, read, version)
    parsed = [_layer_from_json(obj, i, read, version) for i, obj in enumerate(layers)]
    seen: dict[str, int] = {}
    for i, layer in enumerate(parsed):
        if layer.name in seen:
            raise read.fail(f"layers[{i}].name", f"{layer.name!r} repeats layers"
                                                 f"[{seen[layer.name]}]'s")
        seen[layer.name] = i
    return NetworkResult(
        layers=parsed,
        settings=settings,
        total_tnmse=read.number(read.need(data, "total_tnmse", "the file"), "total_tnmse",
                                minimum=0.0),
        total_baseline_tnmse=read.number(read.need(data, "total_baseline_tnmse", "the file"),
                                         "total_baseline_tnmse", positive=True),
        nit=read.integer(read.need(data, "nit", "the file"), "nit"),
        nfev=read.integer(read.need(data, "nfev", "the file"), "nfev"),
        wall_time=read.number(read.need(data, "wall_time", "the file"), "wall_time",
                              minimum=0.0),
        stop_reason=read.string(read.need(data, "stop_reason", "the file"), "stop_reason"),
    )


def is_results_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file holding a gpuwpo results file (of any version).

    Only the format tag is looked at (a file this gpuwpo cannot fully read is still one, and
    may be replaced by a new one); a file larger than :data:`MAX_RESULT_BYTES`, not UTF-8 JSON
    or without the tag is not.
    """
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > MAX_RESULT_BYTES:
            return False
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, Mapping) and data.get("format") == RESULT_FORMAT


def check_output_file(path: str | os.PathLike, *, inputs: Sequence[str | os.PathLike] = (),
                      what: str = "--out") -> Path:
    """Where a results file will be written, checked before any work is done.

    Refused (``what`` names the flag or argument in the message): a path that names a
    directory (an existing one, or one written with a trailing separator: give the file's
    name, e.g. ``dir/results.json``), a directory that does not exist or in which no file can be
    created, an existing file that is not a gpuwpo results file (nothing else is ever
    overwritten), and any of ``inputs`` (the files the run reads).

    Returns:
        The path.

    Raises:
        ValueError, FileNotFoundError, PermissionError: naming ``what`` and the path.
    """
    from .._files import check_writable_dir

    text = os.fspath(path)
    if text.endswith(os.sep) or (os.altsep and text.endswith(os.altsep)) or os.path.isdir(text):
        raise ValueError(f"{what} {text} names a directory; give a file name such as "
                         f"{os.path.join(text, 'results.json')}")
    path = Path(text)
    for given in inputs:
        if given is not None and same_file(path, Path(os.fspath(given))):
            raise ValueError(f"{what} {text} is also an input of this run ({os.fspath(given)}); "
                             f"refusing to overwrite it")
    check_writable_dir(path.parent if str(path.parent) else Path("."), f"{what} {text}")
    if os.path.lexists(path):
        if not path.is_file():
            raise ValueError(f"{what} {text} exists and is not a regular file; refusing to "
                             f"replace it")
        if not is_results_file(path):
            raise ValueError(f"{what} {text} exists and is not a gpuwpo results file; refusing "
                             f"to overwrite it (remove it or choose another name)")
    return path
