"""``gpuwpo optimize --config FILE``: a TOML file of settings, or a results file whose run is
repeated, read into the values :func:`gpuwpo.network.settings.merge_settings` merges with the
flags.

A TOML config names the settings as the flags do, with underscores
(:data:`gpuwpo.network.settings.CONFIG_KEYS`, ``global`` for ``--global``), and any search option
(:class:`gpuwpo.search.options.SearchOptions`: e.g. ``mapping = "columnwise"``,
``baseline_mapping = "layer"``, ``clip_range = [0.5, 1.0]``); ``noise_model``, ``baseline`` and
``compensation`` may be tables: a registry record of the object itself (any class of
:mod:`gpuwpo.registry`, e.g. a CustomDriftPCMLikeNoiseModel with its drift table). Every value's
type is checked here, before any work, naming the file and the setting.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..device.mapping import MAPPINGS
from ..device.physics import PHYSICS
from ..network.settings import COMPENSATIONS, CONFIG_KEYS, READOUTS, config_from_settings
from ..registry import from_dict
from .arguments import SEED_MAX, parse_clip_range, parse_f_lst, parse_g_range, parse_times

__all__ = ["read_config"]

# Config keys that may also be a table: a registry record of the object itself.
_RECORD_KEYS = ("noise_model", "baseline", "compensation")


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The settings a config file gives, checked: a results file's run
    (:func:`gpuwpo.network.settings.config_from_settings`) when ``path`` ends in ``.json``,
    else a TOML file's values (tables as the objects they describe, times and significance
    factors as lists, the conductance range as a pair).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not TOML, an unknown setting or a bad value (naming the file and the
            setting), or a results file that does not record its run.
    """
    from ..io import load_result
    from ..search.options import SearchOptions

    if str(path).lower().endswith(".json"):
        return config_from_settings(load_result(path).settings, path=path)
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"no config file at {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a TOML config: {err}") from None
    known = (set(CONFIG_KEYS) - {"global_strategy"}) | set(SearchOptions.names()) | {"global"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(known))}")
    values = dict(data)
    if "global" in values:
        values["global_strategy"] = values.pop("global")
    for key in _RECORD_KEYS:
        if isinstance(values.get(key), dict):
            values[key] = from_dict(values[key], what=f"{path}: setting {key}")
        elif key == "noise_model" and key in values:
            raise ValueError(f"{path}: setting noise_model must be a table with a 'class'")
    converters = {"times": lambda v: parse_times(v if isinstance(v, str)
                                                 else ",".join(map(str, _listed(v)))),
                  "f_lst": lambda v: parse_f_lst(v if isinstance(v, str)
                                                 else ",".join(map(str, _listed(v)))),
                  "g_range": lambda v: parse_g_range(v if isinstance(v, str)
                                                     else ",".join(map(str, v))),
                  "clip_range": lambda v: parse_clip_range(v if isinstance(v, str)
                                                           else ",".join(map(str, _listed(v)))),
                  "mutation": lambda v: tuple(v) if isinstance(v, list) else v}
    for key, convert in converters.items():
        if key in values:
            try:
                values[key] = convert(values[key])
            except (argparse.ArgumentTypeError, TypeError, ValueError) as err:
                raise ValueError(f"{path}: setting {key}: {err}") from None
    _check_config_types(path, values)
    _check_options(path, values)
    return values


def _listed(value) -> list:
    if not isinstance(value, list) or not value:
        raise ValueError(f"give a non-empty list or a comma-separated string, got {value!r}")
    return value


def _check_config_types(path: str | os.PathLike, values: dict) -> None:
    """The type of every TOML setting that is not a search option (:func:`_check_options`),
    before any work: ``symmetric = "no"`` must not read as true."""
    def need(key: str, what: str) -> None:
        name = "global" if key == "global_strategy" else key
        raise ValueError(f"{path}: setting {name} must be {what}, got {values[key]!r}")

    for key in ("global_strategy", "hierarchical", "symmetric"):
        if key in values and not isinstance(values[key], bool):
            need(key, "true or false")
    for key in ("include", "exclude"):
        v = values.get(key)
        if key in values and not (isinstance(v, str) or (
                isinstance(v, list) and all(isinstance(p, str) for p in v))):
            need(key, "a regular expression or a list of them")
    for key, choices in (("physics", PHYSICS), ("readout", READOUTS), ("device", ("cpu", "cuda")),
                         ("mapping", MAPPINGS), ("baseline_mapping", MAPPINGS)):
        if key in values and values[key] not in choices:
            need(key, f"one of {', '.join(choices)}")
    if "backend" in values and not isinstance(values["backend"], str):
        need("backend", "the name of a backend")
    if "baseline" in values and not (isinstance(values["baseline"], str)
                                     or hasattr(values["baseline"], "convert_to_conductances")):
        need("baseline", "a spec such as dualpair:1,3 or a table of a converter")
    if "compensation" in values and isinstance(values["compensation"], str) and \
            values["compensation"] not in COMPENSATIONS:
        need("compensation", f"one of {', '.join(COMPENSATIONS)} or a table")
    elif "compensation" in values and not isinstance(values["compensation"], str) and \
            not hasattr(values["compensation"], "alpha"):
        need("compensation", f"one of {', '.join(COMPENSATIONS)} or a table")
    size = values.get("test_size")
    if "test_size" in values and not (isinstance(size, list) and len(size) == 2 and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in size)):
        need("test_size", "two integers >= 1, [IN, OUT]")
    seed = values.get("seed")
    if "seed" in values and (isinstance(seed, bool) or not isinstance(seed, int)
                             or not 0 <= seed <= SEED_MAX):
        need("seed", f"an integer from 0 to {SEED_MAX}")


def _check_options(path: str | os.PathLike, values: dict) -> None:
    """The search options a config gives, checked together as the run will take them."""
    from ..search.options import SearchOptions

    options = {k: v for k, v in values.items() if k in SearchOptions.names()}
    if "test_size" in values:
        options["test_in_features"], options["test_out_features"] = values["test_size"]
    try:
        SearchOptions.from_kwargs(options, what=f"{path}")
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {' '.join(str(err).split())}") from None
