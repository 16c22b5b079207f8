"""The run's settings record: what decides what a network run finds, as JSON.

A results file's ``settings`` (and a checkpoint's fingerprint) is this record. This module owns
it: its defaults (:func:`default_physics`), writing it (:func:`run_record`), reading it back
(:func:`physics_from_settings`, :func:`options_from_settings`,
:func:`optimize_kwargs_from_settings`, which ``gpuwpo optimize --config`` repeats a run with)
and the fingerprint a checkpoint compares
(:func:`gpuwpo.search.checkpoint.fingerprint_from_settings` of it).

Keys: ``f_lst``, ``t_steps``, ``backend``, ``per_layer``, ``hierarchical``, ``include``,
``exclude``, ``options`` (every :class:`gpuwpo.search.options.SearchOptions` that decides what a
run finds) and ``explicit`` (which of them were given), ``noise_model``, ``baseline``,
``compensation`` (registry records, :mod:`gpuwpo.registry`), ``symmetric``, ``g_min``, ``g_max``,
``nbins``, ``device``, ``physics``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..device.physics import PHYSICS
from ..device.simulate import DEFAULT_TIMES, as_time_tensor
from ..registry import from_dict, to_dict
from ..search.options import SearchOptions

__all__ = ["run_record", "default_physics", "physics_from_settings", "options_from_settings",
           "optimize_kwargs_from_settings", "upgrade_record", "RETIRED_OPTIONS"]

# Options earlier versions recorded that no longer exist (the seeds replaced the warm start).
RETIRED_OPTIONS = ("warm_start_baseline",)


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (tensors -> lists, tuples -> lists), or raise TypeError."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().double().tolist() if value.is_floating_point() \
            else value.detach().cpu().tolist()
    # A JSON round trip normalises tuples to lists, so saved and loaded settings compare equal.
    return json.loads(json.dumps(value, allow_nan=False))


#: Options that do not decide what a run finds (where it saves, what it prints, hooks).
_UNRECORDED = ("callback", "checkpoint", "checkpoint_every", "resume", "disp")


def run_record(*, f_lst, t_steps, backend, per_layer, include, exclude, options: SearchOptions,
              noise_model, baseline, compensation, space, device, physics,
              hierarchical: bool = False) -> dict:
    """The JSON record of everything that decides what a run finds (results files' settings).

    Read back by :func:`physics_from_settings` and :func:`optimize_kwargs_from_settings`
    (``gpuwpo optimize --config``)."""
    recorded = {name: _jsonable(value) for name, value in options.as_dict().items()
                if name not in _UNRECORDED}
    return _jsonable({
        "f_lst": [None if f is None else float(f) for f in f_lst],
        "t_steps": as_time_tensor(t_steps, dtype=torch.float64).tolist(),
        "backend": backend,
        "per_layer": bool(per_layer),
        "hierarchical": bool(hierarchical),
        "include": include if include is None or isinstance(include, str) else list(include),
        "exclude": exclude if exclude is None or isinstance(exclude, str) else list(exclude),
        "options": recorded,
        "explicit": sorted(options.explicit - set(_UNRECORDED)),
        "noise_model": to_dict(noise_model),
        "baseline": to_dict(baseline),
        "compensation": to_dict(compensation),
        "symmetric": space.symmetric,
        "g_min": space.g_min,
        "g_max": space.g_max,
        "nbins": space.nbins,
        "device": str(device),
        "physics": physics,
    })



def default_physics() -> tuple[Any, Any]:
    """(noise model, baseline converter): PCMLikeNoiseModel(g_max=25), DualPair [1, 1] 0..25 uS."""
    from ..device.converters import DualPairConductanceConverter
    from ..device.noise import PCMLikeNoiseModel

    return (PCMLikeNoiseModel(g_max=25.0),
            DualPairConductanceConverter(f_lst=[1.0, 1.0], g_min=0.0, g_max=25.0))


def upgrade_record(rec: Mapping[str, Any], kind: str) -> dict[str, Any]:
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
    :data:`DEFAULT_TIMES`, ``"device"``). Classes are looked up in gpuwpo's registry only
    (:mod:`gpuwpo.registry`): a file never names code to run.

    Raises:
        ValueError: an unknown class or a malformed record, naming the file (when ``path`` is
            given) and the field.
    """
    from ..device.compensation import GlobalDriftCompensation

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
            built[kind] = from_dict(upgrade_record(rec, kind), what=f"settings.{kind}")
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}{err}") from None
    t_steps = settings.get("t_steps", list(DEFAULT_TIMES))
    if not isinstance(t_steps, list) or not t_steps or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) for t in t_steps):
        raise ValueError(f"{where}settings.t_steps must be a non-empty list of seconds, got "
                         f"{t_steps!r}")
    physics = settings.get("physics", "device")
    if physics not in PHYSICS:
        raise ValueError(f"{where}results file records an unknown physics {physics!r}; this "
                         f"gpuwpo knows {', '.join(PHYSICS)}")
    return {**built, "t_steps": [float(t) for t in t_steps], "physics": physics}


def options_from_settings(settings: Mapping[str, Any], where: str):
    """The :class:`gpuwpo.options.SearchOptions` that ``settings["options"]`` records."""
    recorded = settings["options"]
    if not isinstance(recorded, Mapping):
        raise ValueError(f"{where}settings.options must be an object")
    explicit = settings.get("explicit", [])
    if not isinstance(explicit, list) or not all(isinstance(k, str) for k in explicit):
        raise ValueError(f"{where}settings.explicit must be a list of option names")
    recorded = {k: v for k, v in recorded.items() if k not in RETIRED_OPTIONS}
    explicit = [k for k in explicit if k not in RETIRED_OPTIONS]
    if "seeds" in recorded:  # the option's name before version 4 of gpuwpo's records
        recorded["standard_starts"] = recorded.pop("seeds")
    explicit = ["standard_starts" if k == "seeds" else k for k in explicit]
    if "standard_starts" not in recorded:
        # Written before the search was seeded: repeat it unseeded.
        recorded["standard_starts"] = False
    unknown = sorted(set(recorded) - set(SearchOptions.names()))
    if unknown:
        raise ValueError(f"{where}settings.options has unknown option(s) {', '.join(unknown)}")
    values = {k: (tuple(v) if k == "mutation" and isinstance(v, list) else v)
              for k, v in recorded.items()}
    for key in ("x0", "x_init"):
        if isinstance(values.get(key), list):
            try:
                values[key] = torch.tensor(values[key], dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"{where}settings.options.{key} must be a list of numbers (or "
                                 f"of equally long lists of them)") from None
            if not bool(torch.isfinite(values[key]).all()):
                raise ValueError(f"{where}settings.options.{key} holds numbers that are not "
                                 f"finite")
    try:
        return SearchOptions(**values, explicit=frozenset(explicit))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}settings.options: {' '.join(str(err).split())}") from None


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
    where = f"{path}: " if path is not None else ""
    if "options" not in settings:
        raise ValueError(f"{where}the results file does not record its options (written by an "
                         "older gpuwpo); it cannot be repeated exactly")
    physics = physics_from_settings(settings, path=path)
    options = options_from_settings(settings, where)
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
