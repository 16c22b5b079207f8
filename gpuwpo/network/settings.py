"""The run's settings record: what decides what a network run finds, as JSON.

A results file's ``settings`` is this record, and a checkpoint's fingerprint is derived from it.
This module owns it:

* writing it (:func:`run_record`) and its defaults (:func:`default_physics`);
* reading it back (:func:`physics_from_settings`, :func:`options_from_settings`,
  :func:`optimize_kwargs_from_settings`), records of older versions included
  (:func:`upgrade_record`, :data:`RETIRED_OPTIONS`);
* the fingerprint a checkpoint of the run compares (:func:`fingerprint_from_settings`, built by
  the search layer's :func:`gpuwpo.search.checkpoint.run_fingerprint` from the record's parts);
* merging a config (a TOML file's values, or a results file's record through
  :func:`config_from_settings`) with the values the command line's flags give
  (:func:`merge_settings`, :func:`merge_physics`): the command line only parses.

Keys: ``f_lst``, ``t_steps``, ``backend``, ``per_layer``, ``hierarchical``, ``include``,
``exclude``, ``options`` (every :class:`gpuwpo.search.options.SearchOptions` that decides what a
run finds, the strategies' ``mapping``, the baseline's ``baseline_mapping`` and the searched
``clip_range`` among them) and ``explicit`` (which of them were given), ``noise_model``,
``baseline``, ``compensation`` (registry records, :mod:`gpuwpo.registry`), ``symmetric``,
``g_min``, ``g_max``, ``nbins``, ``device``, ``physics``; and ``importance`` only for a run whose
test tiles were drawn by its layers' input energies (activation-aware error,
:func:`importance_record`: which layers, and a digest of the energies, never the energies
themselves), so that a checkpoint of such a run resumes only with the same energies and a
repeat from the record (:func:`optimize_kwargs_from_settings`) needs them given again.

A record written before the mapping was modelled has no ``mapping``, ``baseline_mapping`` or
``clip_range`` among its options: its run was layer-wise for both, unclipped unless its fixed
``clip`` says otherwise (:data:`RECORDLESS_OPTIONS`), and it repeats so, whatever today's
defaults are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from ..device.physics import PHYSICS
from ..device.simulate import DEFAULT_TIMES
from ..registry import from_dict, to_dict
from ..search.checkpoint import (
    PHYSICS_FIELDS,
    UNRECORDED_OPTIONS,
    digest,
    options_record,
    physics_record,
    run_fingerprint,
)
from ..search.options import SearchOptions

__all__ = ["run_record", "importance_record", "fingerprint_from_settings", "default_physics",
           "physics_from_settings",
           "options_from_settings", "mappings_from_settings", "optimize_kwargs_from_settings",
           "upgrade_record", "RETIRED_OPTIONS", "RECORDLESS_OPTIONS", "READOUTS",
           "COMPENSATIONS", "PHYSICS_SPECS", "CONFIG_KEYS", "parse_baseline",
           "make_compensation", "merge_physics", "config_from_settings", "merge_settings"]

# Options earlier versions recorded that no longer exist (the standard starts replaced the warm
# start).
RETIRED_OPTIONS = ("warm_start_baseline",)

#: Options that records written before they existed lack, and what such a record's run used:
#: every run before the mapping was modelled programmed one scale per layer (its strategies and
#: its baseline) and searched no clip. Filled in when a record is read, so an old run repeats
#: exactly whatever today's defaults are.
RECORDLESS_OPTIONS = {"mapping": "layer", "baseline_mapping": "layer", "clip_range": None}


def importance_record(importance: Mapping[str, Any]) -> dict[str, Any]:
    """What a run's settings record of the input energies its test tiles were drawn by:
    ``{"layers": [names, in the mapping's order], "digest": SHA-256 hex}``, the digest of the
    energies as float64 (:func:`gpuwpo.search.checkpoint.digest`: names, shapes, values), so
    that the same energies in any float dtype record the same."""
    tensors = {str(k): torch.as_tensor(v).detach().to("cpu", torch.float64).contiguous()
               for k, v in importance.items()}
    return {"layers": list(tensors), "digest": digest(tensors)}


def run_record(*, f_lst, t_steps, backend, per_layer, include, exclude, options: SearchOptions,
              noise_model, baseline, compensation, space, device, physics,
              hierarchical: bool = False, importance: Mapping[str, Any] | None = None) -> dict:
    """The JSON record of everything that decides what a run finds (results files' settings).

    ``importance``: the input energies by layer name the run's tiles were drawn by, recorded by
    :func:`importance_record` (the key is absent for a run without, so that its record, and its
    checkpoints' fingerprint, are what they always were).

    Read back by :func:`physics_from_settings` and :func:`optimize_kwargs_from_settings`
    (``gpuwpo optimize --config``)."""
    phys = physics_record(physics=physics, noise_model=noise_model, baseline=baseline,
                          compensation=compensation, t_steps=t_steps, f_lst=f_lst, space=space)
    extra = {} if importance is None else {"importance": importance_record(importance)}
    return {
        "f_lst": phys["f_lst"],
        "t_steps": phys["t_steps"],
        "backend": backend,
        "per_layer": bool(per_layer),
        "hierarchical": bool(hierarchical),
        "include": include if include is None or isinstance(include, str) else list(include),
        "exclude": exclude if exclude is None or isinstance(exclude, str) else list(exclude),
        "options": options_record(options),
        "explicit": sorted(options.explicit - set(UNRECORDED_OPTIONS)),
        **{k: phys[k] for k in ("noise_model", "baseline", "compensation", "symmetric",
                                "g_min", "g_max")},
        "nbins": int(space.nbins),
        "device": str(device),
        "physics": phys["physics"],
        **extra,
    }


def fingerprint_from_settings(settings: Mapping[str, Any], weights_digest: str) -> dict:
    """A network run's fingerprint (what its checkpoints compare) from its settings record
    (:func:`run_record`) and the :func:`gpuwpo.search.checkpoint.digest` of its weights.

    The record's :data:`gpuwpo.search.checkpoint.PHYSICS_FIELDS` are the fingerprint's
    ``physics``, its options its ``settings.options`` (less those that may change on resume;
    ``maxiter`` may not in a hierarchical run, where it splits the budget between the two
    searches), the rest its ``settings``; which options were given explicitly does not matter.
    """
    record = dict(settings)
    options = record.pop("options", {})
    record.pop("explicit", None)
    physics = {k: record.pop(k) for k in PHYSICS_FIELDS if k in record}
    return run_fingerprint(weights_digest, physics=physics, settings=record, options=options,
                           maxiter_changeable=not record.get("hierarchical"))


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
    for key, value in RECORDLESS_OPTIONS.items():
        recorded.setdefault(key, value)
    unknown = sorted(set(recorded) - set(SearchOptions.names()))
    if unknown:
        raise ValueError(f"{where}settings.options has unknown option(s) {', '.join(unknown)}")
    # JSON has no tuples: the pairs come back as lists.
    values = {k: (tuple(v) if k in ("mutation", "clip_range") and isinstance(v, list) else v)
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


def mappings_from_settings(settings: Mapping[str, Any], *,
                           path: str | os.PathLike | None = None) -> dict[str, str]:
    """The mappings a run's record says: ``{"mapping", "baseline_mapping"}`` (the strategies'
    and the baseline's, :data:`gpuwpo.device.mapping.MAPPINGS`).

    A record without them (written before the mapping was modelled, or without options at all:
    version 1) means ``"layer"`` for both (:data:`RECORDLESS_OPTIONS`).

    Raises:
        ValueError: a recorded mapping that is not one of the mappings, naming the file (when
            ``path`` is given) and the field.
    """
    from ..device.mapping import MAPPINGS

    where = f"{path}: " if path is not None else ""
    options = settings.get("options")
    options = options if isinstance(options, Mapping) else {}
    out = {}
    for key in ("mapping", "baseline_mapping"):
        value = options.get(key, RECORDLESS_OPTIONS[key])
        if value not in MAPPINGS:
            raise ValueError(f"{where}settings.options.{key} is {value!r}; this gpuwpo knows "
                             f"{', '.join(map(repr, MAPPINGS))}")
        out[key] = str(value)
    return out


def optimize_kwargs_from_settings(settings: Mapping[str, Any], *,
                                  path: str | os.PathLike | None = None,
                                  importance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything :func:`gpuwpo.optimize_network` needs to repeat the run a results file records.

    Returns the keyword arguments (noise_model, t_steps, g_converter_baseline, f_lst, include,
    exclude, per_layer, hierarchical, backend, physics, compensation, symmetric and ``options``: a
    :class:`gpuwpo.options.SearchOptions` with the recorded values and the same options marked
    as given; and ``importance`` for a run that recorded one). Only version-2 settings record
    all of it.

    Args:
        importance: the input energies (name -> tensor) of a run whose record says its tiles
            were drawn by them; a record holds only their digest (:func:`importance_record`),
            so such a run repeats only with the same energies given again.

    Raises:
        ValueError: settings that do not record a run (naming the file and the field); a run
            drawn by importance without the energies, or with others (their digests differ);
            energies for a run that had none.
    """
    where = f"{path}: " if path is not None else ""
    recorded = settings.get("importance")
    if recorded is not None:
        if not isinstance(recorded, Mapping) or not isinstance(recorded.get("digest"), str):
            raise ValueError(f"{where}settings.importance must be an object with a digest")
        if importance is None:
            raise ValueError(
                f"{where}the run drew its test tiles by its layers' input energies (importance "
                f"of {len(recorded.get('layers') or [])} layer(s), digest "
                f"{recorded['digest'][:12]}...); the results file records only their digest: "
                f"repeat it in Python with the same energies (gpuwpo.optimize_network(..., "
                f"importance=...))")
        given = importance_record(importance)["digest"]
        if given != recorded["digest"]:
            raise ValueError(f"{where}the energies given are not the ones the run drew its "
                             f"test tiles by (digest {given[:12]}... against the recorded "
                             f"{recorded['digest'][:12]}...)")
    elif importance is not None:
        raise ValueError(f"{where}the run drew its test tiles without importance; repeat it "
                         f"without energies")
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
        **({} if importance is None else {"importance": dict(importance)}),
    }


# --------------------------------------------------------------------------------------------
# A config merged with the command line's flags
# --------------------------------------------------------------------------------------------

#: Readout peripheries of the drift compensation: ideal, or the reference's default forward one.
READOUTS = ("ideal", "aihwkit")
#: Drift compensations by name (:func:`make_compensation`).
COMPENSATIONS = ("global", "exact-reference", "per-column")
#: The physics as plain values (the command line's PHYSICS flags, a TOML config's strings):
#: ``physics`` (a name of :data:`gpuwpo.device.physics.PHYSICS`), ``baseline`` (a spec,
#: :func:`parse_baseline`), ``g_range`` ((min, max) in uS), ``readout`` (:data:`READOUTS`),
#: ``compensation`` (:data:`COMPENSATIONS`).
PHYSICS_SPECS = ("physics", "baseline", "g_range", "readout", "compensation")
#: A run's settings besides the search options (whose names are
#: :meth:`gpuwpo.search.options.SearchOptions.names`), as a TOML config and the command line's
#: flags name them (flags with underscores): :data:`PHYSICS_SPECS`; ``noise_model`` (an object;
#: ``baseline`` and ``compensation`` may be objects too); ``times`` (seconds), ``f_lst``,
#: ``include``, ``exclude``, ``global_strategy`` (one strategy for all layers), ``hierarchical``,
#: ``backend``, ``device``, ``symmetric``, ``test_size`` ([IN, OUT]: the options
#: test_in_features, test_out_features).
CONFIG_KEYS = (*PHYSICS_SPECS, "noise_model", "times", "f_lst", "include", "exclude",
               "global_strategy", "hierarchical", "backend", "device", "symmetric", "test_size")
_OBJECTS = ("noise_model", "baseline", "compensation")  # settings that may be objects


def parse_baseline(spec: str, g_range: tuple[float, float] = (0.0, 25.0)):
    """A baseline converter from a spec and a conductance range (uS).

    Specs: ``dualpair`` (f = 1, 1) or ``dualpair:F0,F1``; ``single``; ``npair:F0,F1,...``;
    ``fusion`` (one device per weight; its g_max is the top of the range).

    Raises:
        ValueError: an unknown spec or factors that are not numbers, naming the spec.
    """
    from ..device import converters

    kind, _, args = str(spec).strip().partition(":")
    kind = kind.lower()
    g_min, g_max = g_range

    def factors() -> list[float]:
        try:
            f = [float(v) for v in args.split(",")] if args else []
        except ValueError as err:
            raise ValueError(f"baseline {spec!r}: significance factors must be numbers") from err
        return f

    if kind == "single" and not args:
        return converters.SinglePairConductanceConverter(g_min, g_max)
    if kind == "dualpair":
        return converters.DualPairConductanceConverter(factors() or [1.0, 1.0], g_min, g_max)
    if kind == "npair" and args:
        return converters.NPairConductanceConverter(factors(), g_min, g_max)
    if kind == "fusion" and not args:
        return converters.FusionConductanceConverter(g_max)
    raise ValueError(f"unknown baseline {spec!r}; use dualpair[:F0,F1], single, "
                     "npair:F0,F1,... or fusion")


def make_compensation(kind: str = "global", readout: str = "ideal"):
    """The drift compensation ``kind`` (:data:`COMPENSATIONS`) read through the ``readout``
    periphery (:data:`READOUTS`)."""
    from ..device.compensation import GlobalDriftCompensation, PerColumnDriftCompensation

    if kind not in COMPENSATIONS:
        raise ValueError(f"unknown compensation {kind!r}; choose one of {', '.join(COMPENSATIONS)}")
    if readout not in READOUTS:
        raise ValueError(f"unknown readout {readout!r}; choose one of {', '.join(READOUTS)}")
    cls = PerColumnDriftCompensation if kind == "per-column" else GlobalDriftCompensation
    exact = kind == "exact-reference"
    return cls.aihwkit_default(exact_reference=exact) if readout == "aihwkit" \
        else cls(exact_reference=exact)


def merge_physics(given: Mapping[str, Any], recorded: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Noise model, baseline, compensation and physics: given values first, then recorded ones,
    then the defaults (:func:`default_physics`, ideal global compensation, ``"device"``).

    Args:
        given: plain values, each present only when given (:data:`PHYSICS_SPECS`). A
            ``g_range`` alone moves the recorded baseline (the same kind) onto the new range,
            and makes the noise model PCMLikeNoiseModel(g_max = the top of the range), as
            aihwkit derives it; a ``readout`` or ``compensation`` alone keeps the other part of
            the recorded compensation.
        recorded: objects (what a results file records, :func:`physics_from_settings`, or a
            config's tables): any of ``noise_model``, ``baseline``, ``compensation`` and the
            name ``physics``.

    Returns:
        ``{"noise_model", "baseline", "compensation", "physics"}``.

    Raises:
        ValueError: an unknown key, physics, baseline spec, readout or compensation.
    """
    from ..device.noise import PCMLikeNoiseModel

    unknown = sorted(set(given) - set(PHYSICS_SPECS))
    if unknown:
        raise ValueError(f"unknown physics setting(s) {', '.join(unknown)}; known: "
                         f"{', '.join(PHYSICS_SPECS)}")
    noise_model, baseline = default_physics()
    out = {"noise_model": noise_model, "baseline": baseline,
           "compensation": make_compensation(), "physics": "device"}
    if recorded is not None:
        out.update({k: recorded[k] for k in out if k in recorded})
    current = out["baseline"]
    g_range = given.get("g_range") or (float(current.g_min), float(current.g_max))
    if "baseline" in given:
        out["baseline"] = parse_baseline(given["baseline"], g_range)
    elif "g_range" in given:
        # The same kind of baseline on the new range (its record with the range replaced).
        rec = to_dict(current)
        rec.update({k: v for k, v in zip(("g_min", "g_max"), g_range) if k in rec})
        out["baseline"] = from_dict(rec, what="the baseline")
    if "g_range" in given:
        # The devices' range: the noise model's g_max is its top (as aihwkit derives it).
        out["noise_model"] = PCMLikeNoiseModel(g_max=g_range[1])
    if "readout" in given or "compensation" in given:
        current = out["compensation"]
        kind = given.get("compensation") or (
            "per-column" if type(current).__name__ == "PerColumnDriftCompensation"
            else "exact-reference" if current.exact_reference else "global")
        readout = given.get("readout") or ("ideal" if current.is_ideal else "aihwkit")
        out["compensation"] = make_compensation(kind, readout)
    if "physics" in given:
        out["physics"] = given["physics"]
    if out["physics"] not in PHYSICS:
        raise ValueError(f"unknown physics {out['physics']!r}; choose one of "
                         f"{', '.join(PHYSICS)}")
    return out


def config_from_settings(settings: Mapping[str, Any], *,
                         path: str | os.PathLike | None = None) -> dict[str, Any]:
    """A results file's record as a config for :func:`merge_settings`: the run it records.

    Its ``options`` is the recorded :class:`gpuwpo.search.options.SearchOptions` whole (the
    values and which were given), so that merged with no flags the run repeats exactly.

    Raises:
        ValueError: settings that do not record a run (:func:`optimize_kwargs_from_settings`).
    """
    run = optimize_kwargs_from_settings(settings, path=path)
    return {"options": run["options"], "times": run["t_steps"], "f_lst": run["f_lst"],
            "include": run["include"], "exclude": run["exclude"],
            "global_strategy": not run["per_layer"], "hierarchical": run["hierarchical"],
            "backend": run["backend"], "symmetric": run["symmetric"],
            "physics": run["physics"], "noise_model": run["noise_model"],
            "baseline": run["g_converter_baseline"], "compensation": run["compensation"]}


def merge_settings(given: Mapping[str, Any], config: Mapping[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Everything a network run runs with: the given values (the command line's flags) over a
    config's over the defaults.

    Args:
        given: plain values by the names of :data:`CONFIG_KEYS` and of the search options; only
            those given.
        config: the same (a TOML file's values), or :func:`config_from_settings` of a results
            file (whose ``options`` is a whole SearchOptions); None: no config.

    The options given in either (``test_size`` sets test_in_features and test_out_features)
    are marked explicit. A run that resumes a checkpoint and names none to save keeps saving
    into the one it resumes: interrupted again, it loses nothing.

    Returns:
        The keyword arguments of :func:`gpuwpo.optimize_network` (noise_model, t_steps,
        g_converter_baseline, f_lst, include, exclude, per_layer, hierarchical, backend, physics,
        compensation, symmetric, options, device), as :func:`optimize_kwargs_from_settings`
        returns them (plus ``device``).

    Raises:
        ValueError: an unknown setting or backend, a bad option or physics value (naming it).
    """
    from ..search.backends import BACKENDS

    config = dict(config or {})
    options = config.pop("options", None)
    if options is not None and not isinstance(options, SearchOptions):
        raise TypeError(f"a config's options must be a SearchOptions, got "
                        f"{type(options).__name__}")
    names = set(SearchOptions.names())
    for source, what in ((config, "the config"), (given, "the given settings")):
        unknown = sorted(set(source) - names - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"{what} hold(s) unknown setting(s) {', '.join(unknown)}")
    merged = {**config, **given}
    changes = {k: v for k, v in merged.items() if k in names}
    if "test_size" in merged:
        changes["test_in_features"], changes["test_out_features"] = merged["test_size"]
    options = SearchOptions() if options is None else options
    if "resume" in changes and changes.get("checkpoint", options.checkpoint) is None:
        changes["checkpoint"] = changes["resume"]
    options = options.replace(**changes) if changes else options
    if isinstance(merged.get("noise_model"), str):
        raise ValueError(f"noise_model must be a noise model (a table with a 'class' in a "
                         f"config), got {merged['noise_model']!r}")
    # Objects (a results file's, a config's tables) are what the given specs modify: a
    # --baseline spec takes the range of the config's baseline, a --readout its compensation.
    objects = {k: v for source in (config, given) for k, v in source.items()
               if k in _OBJECTS and not isinstance(v, str)}
    physics = merge_physics({k: merged[k] for k in PHYSICS_SPECS
                             if k in merged and isinstance(merged[k], (str, tuple, list))},
                            objects)
    backend = merged.get("backend", "torch")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return {"noise_model": physics["noise_model"],
            "t_steps": list(merged.get("times", DEFAULT_TIMES)),
            "g_converter_baseline": physics["baseline"],
            "f_lst": list(merged.get("f_lst", [None, None])),
            "include": merged.get("include"), "exclude": merged.get("exclude"),
            "per_layer": not merged.get("global_strategy", False),
            "hierarchical": merged.get("hierarchical"), "backend": backend,
            "physics": physics["physics"], "compensation": physics["compensation"],
            "symmetric": merged.get("symmetric", True), "options": options,
            "device": merged.get("device")}
