"""Results files (JSON) and weight files (.safetensors, .pt/.pth, .npy, .npz).

A results file is one JSON object::

    {"format": "gpuwpo-result", "version": 2, "settings": {...}, "total_tnmse": ...,
     "total_baseline_tnmse": ..., "nit": ..., "nfev": ..., "wall_time": ..., "stop_reason": ...,
     "layers": [{"name", "shape", "f_dtype", "g_dtype", "f_lst", "g_lst", "g_min", "g_max",
                 "tnmse", "tnmse_ci95", "baseline_tnmse", "baseline_ci95", "history",
                 "chosen", "success"}, ...]}

A layer that keeps the baseline converter holds ``"converter": {registry record}`` instead of
the CustomPair program's f_lst/g_lst/g_min/g_max.

``settings`` records everything that decides what the run finds (the options and which were
given, the noise model, baseline and compensation as registry records, see
:mod:`gpuwpo.registry`). Version 3 adds each layer's validated choice; versions 1 and 2 are
read too (their layers are strategies, "search").

Floats are written by Python's json, which prints the shortest repr that reads back to the same
float64; tensors are stored as nested lists of float64 values converted from the tensors' own
values (float32 -> float64 is exact) with their dtype, so every value round-trips bit for bit.
Files are written atomically: a temporary file in the same directory, then ``os.replace``.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .converters import CustomPairConductanceConverter
from .network import LayerResult, NetworkResult
from .physics import PHYSICS
from .registry import from_dict, to_dict
from .simulate import DEFAULT_TIMES as _DEFAULT_TIMES

__all__ = ["save_result", "load_result", "load_weights", "physics_from_settings",
           "optimize_kwargs_from_settings", "default_physics",
           "RESULT_FORMAT", "RESULT_VERSION"]

RESULT_FORMAT = "gpuwpo-result"
RESULT_VERSION = 3
# Versions this gpuwpo reads: 1 recorded the physics as attribute snapshots, 2 as registry
# records with every option of the run, 3 each layer's validated choice (a layer may hold the
# baseline converter itself).
_READABLE_VERSIONS = (1, 2, 3)
# Options earlier versions recorded that no longer exist (the seeds replaced the warm start).
_RETIRED_OPTIONS = ("warm_start_baseline",)

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
           "float64": torch.float64}


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def _dtype_name(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _layer_to_json(layer: LayerResult) -> dict[str, Any]:
    conv = layer.converter
    figures = {
        "tnmse": float(layer.tnmse),
        "tnmse_ci95": [float(v) for v in layer.tnmse_ci95],
        "baseline_tnmse": float(layer.baseline_tnmse),
        "baseline_ci95": [float(v) for v in layer.baseline_ci95],
        "history": [float(v) for v in layer.history],
        "chosen": str(layer.chosen),
        "success": bool(layer.success),
    }
    if not isinstance(conv, CustomPairConductanceConverter):
        return {"name": layer.name, "shape": [int(s) for s in layer.shape],
                "converter": to_dict(conv), **figures}
    if conv.f_lst.ndim != 1 or conv.g_lst.ndim != 2:
        raise ValueError(f"layer {layer.name!r}: a results file holds one program per layer, got "
                         f"a batched converter (batch shape {tuple(conv.batch_shape)})")
    return {
        "name": layer.name,
        "shape": [int(s) for s in layer.shape],
        "f_dtype": _dtype_name(conv.f_lst),
        "g_dtype": _dtype_name(conv.g_lst),
        # float64 holds every float16/bfloat16/float32 value exactly, and json writes float64
        # exactly (shortest round-tripping repr).
        "f_lst": conv.f_lst.detach().cpu().double().tolist(),
        "g_lst": conv.g_lst.detach().cpu().double().tolist(),
        "g_min": float(conv.g_min),
        "g_max": float(conv.g_max),
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


def save_result(result: NetworkResult, path: str | os.PathLike) -> None:
    """Write ``result`` to ``path`` as JSON, atomically (the old file, if any, stays whole).

    The JSON is written to a temporary file in the same directory (same file system), flushed to
    disk, then moved over ``path`` with ``os.replace``: readers see the old file or the new
    one, never half a file, even if the process dies mid-write.

    Raises:
        TypeError: ``result`` is not a :class:`NetworkResult`.
        ValueError: a layer holds a batched converter, or a value JSON cannot write.
    """
    if not isinstance(result, NetworkResult):
        raise TypeError(f"save_result takes a NetworkResult, got {type(result).__name__}")
    path = Path(path)
    data = _result_to_json(result)  # built first: a bad result fails before touching the disk
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _need(obj: Mapping, key: str, where: str, path: Path) -> Any:
    if key not in obj:
        raise ValueError(f"{path}: not a valid gpuwpo results file: {where} has no {key!r}")
    return obj[key]


def _tensor(values: Any, dtype_name: str, what: str, path: Path) -> Tensor:
    if dtype_name not in _DTYPES:
        raise ValueError(f"{path}: {what} has unknown dtype {dtype_name!r}")
    try:
        t = torch.tensor(values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path}: {what} is not a numeric array: {err}") from err
    return t.to(_DTYPES[dtype_name])


def _pair(values: Any, what: str, path: Path) -> tuple[float, float]:
    if not isinstance(values, list) or len(values) != 2:
        raise ValueError(f"{path}: {what} must be a list of two numbers, got {values!r}")
    return float(values[0]), float(values[1])


def _layer_from_json(obj: Any, i: int, path: Path) -> LayerResult:
    where = f"layers[{i}]"
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: {where} must be an object")
    name = _need(obj, "name", where, path)
    if "converter" in obj:
        try:
            conv = from_dict(obj["converter"], what=f"{where}.converter")
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {where}.converter ({name!r}): {err}") from err
    else:
        conv = _program_from_json(obj, name, where, path)
    chosen = obj.get("chosen", "search")
    success = obj.get("success", True)
    if not isinstance(chosen, str) or not isinstance(success, bool):
        raise ValueError(f"{path}: {where}: 'chosen' must be a string and 'success' true or "
                         f"false, got {chosen!r} and {success!r}")
    return LayerResult(
        name=str(name),
        shape=tuple(int(s) for s in _need(obj, "shape", where, path)),
        converter=conv,
        tnmse=float(_need(obj, "tnmse", where, path)),
        tnmse_ci95=_pair(_need(obj, "tnmse_ci95", where, path), f"{where}.tnmse_ci95", path),
        baseline_tnmse=float(_need(obj, "baseline_tnmse", where, path)),
        baseline_ci95=_pair(_need(obj, "baseline_ci95", where, path),
                            f"{where}.baseline_ci95", path),
        history=[float(v) for v in _need(obj, "history", where, path)],
        chosen=chosen, success=success,
    )


def _program_from_json(obj: Mapping, name: Any, where: str, path: Path
                       ) -> CustomPairConductanceConverter:
    f = _tensor(_need(obj, "f_lst", where, path), obj.get("f_dtype", "float64"),
                f"{where}.f_lst", path)
    g = _tensor(_need(obj, "g_lst", where, path), obj.get("g_dtype", "float64"),
                f"{where}.g_lst", path)
    try:
        # The check is cheap and catches a hand-edited or corrupted table.
        conv = CustomPairConductanceConverter(f, g, float(_need(obj, "g_min", where, path)),
                                              float(_need(obj, "g_max", where, path)))
    except ValueError as err:
        raise ValueError(f"{path}: {where} ({name!r}) holds an invalid program: {err}") from err
    return conv


def load_result(path: str | os.PathLike) -> NetworkResult:
    """Read a results file written by :func:`save_result` (exactly the saved values).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, not a gpuwpo results file, a version this gpuwpo cannot read, or
            a missing/malformed field (the message names the file and the field).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {path}")
    try:
        with path.open(encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a gpuwpo results file (not valid JSON: {err})") from err
    if not isinstance(data, Mapping) or data.get("format") != RESULT_FORMAT:
        found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(f"{path}: not a gpuwpo results file (format {found!r}, expected "
                         f"{RESULT_FORMAT!r})")
    version = data.get("version")
    if version not in _READABLE_VERSIONS:
        newer = isinstance(version, int) and version > RESULT_VERSION
        hint = " (written by a newer gpuwpo: upgrade to read it)" if newer else ""
        raise ValueError(f"{path}: results file version {version!r} is not supported; this "
                         f"gpuwpo reads versions {', '.join(map(str, _READABLE_VERSIONS))}{hint}")
    layers = _need(data, "layers", "the file", path)
    if not isinstance(layers, list):
        raise ValueError(f"{path}: 'layers' must be a list")
    settings = _need(data, "settings", "the file", path)
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: 'settings' must be an object")
    return NetworkResult(
        layers=[_layer_from_json(obj, i, path) for i, obj in enumerate(layers)],
        settings=settings,
        total_tnmse=float(_need(data, "total_tnmse", "the file", path)),
        total_baseline_tnmse=float(_need(data, "total_baseline_tnmse", "the file", path)),
        nit=int(_need(data, "nit", "the file", path)),
        nfev=int(_need(data, "nfev", "the file", path)),
        wall_time=float(_need(data, "wall_time", "the file", path)),
        stop_reason=str(_need(data, "stop_reason", "the file", path)),
    )


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


def _numeric_tensor(value: Any, name: str, path: Path) -> Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iuf":
            raise ValueError(f"{path}: array {name!r} is not numeric (dtype {value.dtype})")
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{path}: tensor {name!r} is not a real number tensor "
                             f"(dtype {value.dtype})")
        return value
    raise ValueError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor; a "
                     f"weights file must hold only named numeric tensors")


def load_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read named weight tensors from a file, on the CPU.

    Formats, by extension:

    * ``.safetensors``: every tensor in the file.
    * ``.pt`` / ``.pth``: a state_dict (a dict name -> tensor) read with
      ``torch.load(..., weights_only=True)``: never arbitrary unpickling, so a file holding a
      pickled model or other objects is refused.
    * ``.npy``: one array, returned as ``{"weight": tensor}``.
    * ``.npz``: every array, by its name (read without pickle).

    Returns:
        name -> tensor (real-valued: float or integer dtypes).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unknown extension, an unreadable file, or content that is not named
            numeric tensors (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    ext = path.suffix.lower()
    if ext == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw: Mapping[str, Any] = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{path}: not a readable .safetensors file: {err}") from err
    elif ext in (".pt", ".pth"):
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
            raise ValueError(
                f"{path}: cannot be read as a state_dict with torch.load(weights_only=True) "
                f"(only tensors and plain containers are allowed, never arbitrary objects; save "
                f"model.state_dict(), not the model): {err}"
            ) from err
        if not isinstance(raw, Mapping):
            raise ValueError(f"{path}: holds a {type(raw).__name__}, not a state_dict (a dict "
                             f"name -> tensor); save model.state_dict()")
    elif ext == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"{path}: not a readable numeric .npy file: {err}") from err
        raw = {"weight": array}
    elif ext == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                raw = {name: archive[name] for name in archive.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path}: not a readable numeric .npz file: {err}") from err
    else:
        raise ValueError(f"{path}: unknown weights file extension {ext!r}; use .safetensors, "
                         f".pt, .pth, .npy or .npz")
    if not raw:
        raise ValueError(f"{path}: holds no tensors")
    out = {}
    for name, value in raw.items():
        if not isinstance(name, str):
            raise ValueError(f"{path}: tensor names must be strings, got {name!r}")
        out[name] = _numeric_tensor(value, name, path)
    return out


def default_physics() -> tuple[Any, Any]:
    """(noise model, baseline converter): PCMLikeNoiseModel(g_max=25), DualPair [1, 1] 0..25 uS."""
    from .converters import DualPairConductanceConverter
    from .noise import PCMLikeNoiseModel

    return (PCMLikeNoiseModel(g_max=25.0),
            DualPairConductanceConverter(f_lst=[1.0, 1.0], g_min=0.0, g_max=25.0))


def _legacy_record(rec: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """A version-1 settings record (attribute snapshots) as a registry record."""
    rec = dict(rec)
    if kind == "noise_model" and "g_ref" in rec:
        rec["prog_coeff_g_max_reference"] = rec.pop("g_ref")
    if kind == "baseline" and rec.get("class") in ("SinglePairConductanceConverter",
                                                   "FusionConductanceConverter"):
        rec.pop("f_lst", None)
    if kind == "baseline" and rec.get("class") == "FusionConductanceConverter":
        rec.pop("g_min", None)
    return rec


def physics_from_settings(settings: Mapping[str, Any], *,
                          path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Rebuild what a results file's ``settings`` record: noise model, baseline, compensation.

    Returns a dict with ``noise_model``, ``baseline``, ``compensation``, ``t_steps`` and
    ``physics``; a part the settings do not record falls back to the defaults
    (PCMLikeNoiseModel(g_max=25), DualPair f=[1, 1] 0..25 uS, ideal global compensation,
    :data:`_DEFAULT_TIMES`, ``"device"``). Classes are looked up in gpuwpo's registry only
    (:mod:`gpuwpo.registry`): a file never names code to run.

    Raises:
        ValueError: an unknown class or a malformed record, naming the file (when ``path`` is
            given) and the field.
    """
    from .compensation import GlobalDriftCompensation

    where = f"{path}: " if path is not None else ""
    noise_model, baseline = default_physics()
    built: dict[str, Any] = {"noise_model": noise_model, "baseline": baseline,
                             "compensation": GlobalDriftCompensation()}
    for kind in ("noise_model", "baseline", "compensation"):
        rec = settings.get(kind)
        if rec is None:
            continue
        if not isinstance(rec, Mapping):
            raise ValueError(f"{where}settings.{kind} must be an object, got "
                             f"{type(rec).__name__}")
        try:
            built[kind] = from_dict(_legacy_record(rec, kind), what=f"settings.{kind}")
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}{err}") from None
    t_steps = settings.get("t_steps", list(_DEFAULT_TIMES))
    if not isinstance(t_steps, list) or not t_steps or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) for t in t_steps):
        raise ValueError(f"{where}settings.t_steps must be a non-empty list of seconds, got "
                         f"{t_steps!r}")
    physics = settings.get("physics", "device")
    if physics not in PHYSICS:
        raise ValueError(f"{where}results file records an unknown physics {physics!r}; this "
                         f"gpuwpo knows {', '.join(PHYSICS)}")
    return {**built, "t_steps": [float(t) for t in t_steps], "physics": physics}


def optimize_kwargs_from_settings(settings: Mapping[str, Any], *,
                                  path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Everything :func:`gpuwpo.optimize_network` needs to repeat the run a results file records.

    Returns the keyword arguments (noise_model, t_steps, g_converter_baseline, f_lst, include,
    exclude, per_layer, hierarchical, backend, physics, compensation, symmetric and ``options``: a
    :class:`gpuwpo.options.SearchOptions` with the recorded values and the same options marked
    as given). Only version-2 settings record all of it.

    Raises:
        ValueError: settings that do not record a run (naming the file and the field).
    """
    from .options import SearchOptions

    where = f"{path}: " if path is not None else ""
    if "options" not in settings:
        raise ValueError(f"{where}the results file does not record its options (written by an "
                         "older gpuwpo); it cannot be repeated exactly")
    physics = physics_from_settings(settings, path=path)
    recorded = settings["options"]
    if not isinstance(recorded, Mapping):
        raise ValueError(f"{where}settings.options must be an object")
    explicit = settings.get("explicit", [])
    if not isinstance(explicit, list) or not all(isinstance(k, str) for k in explicit):
        raise ValueError(f"{where}settings.explicit must be a list of option names")
    recorded = {k: v for k, v in recorded.items() if k not in _RETIRED_OPTIONS}
    explicit = [k for k in explicit if k not in _RETIRED_OPTIONS]
    if "seeds" not in recorded:
        # Written before the search was seeded: repeat it unseeded.
        recorded["seeds"] = False
    unknown = sorted(set(recorded) - set(SearchOptions.names()))
    if unknown:
        raise ValueError(f"{where}settings.options has unknown option(s) {', '.join(unknown)}")
    values = {k: (tuple(v) if k == "mutation" and isinstance(v, list) else v)
              for k, v in recorded.items()}
    if isinstance(values.get("x0"), list):
        values["x0"] = torch.tensor(values["x0"], dtype=torch.float64)
    if isinstance(values.get("x_init"), list):
        values["x_init"] = torch.tensor(values["x_init"], dtype=torch.float64)
    try:
        options = SearchOptions(**values, explicit=frozenset(explicit))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}settings.options: {err}") from None
    f_lst = settings.get("f_lst")
    if not isinstance(f_lst, list) or not f_lst:
        raise ValueError(f"{where}settings.f_lst must be a list of significance factors")
    return {
        "noise_model": physics["noise_model"], "t_steps": physics["t_steps"],
        "g_converter_baseline": physics["baseline"], "f_lst": f_lst,
        "include": settings.get("include"), "exclude": settings.get("exclude"),
        "per_layer": bool(settings.get("per_layer", True)),
        "hierarchical": bool(settings.get("hierarchical", False)),
        "backend": settings.get("backend", "torch"), "physics": physics["physics"],
        "compensation": physics["compensation"],
        "symmetric": bool(settings.get("symmetric", True)), "options": options,
    }
