"""The ``gpuwpo`` command line: optimise, evaluate and plot weight-programming strategies.

    gpuwpo optimize WEIGHTS [--config FILE] [--include REGEX] [--exclude REGEX] [--global]
                    [--backend B] [--popsize N] [--maxiter N] [--seed N] [--f-lst None,None]
                    [--times 1,3600,...] [PHYSICS] [--out results.json] [--plots DIR]
                    [--checkpoint FILE [--checkpoint-every N]] [--resume FILE] ...
    gpuwpo evaluate RESULTS WEIGHTS [--times ...] [--repeats N] [PHYSICS]
    gpuwpo plot RESULTS --out DIR [--weights WEIGHTS] [PHYSICS]
    gpuwpo example [--quick] [--out DIR] [PHYSICS]

    PHYSICS: [--physics device|aihwkit] [--baseline SPEC] [--g-range MIN,MAX]
             [--readout ideal|aihwkit] [--compensation global|exact-reference|per-column]
             [--device cpu|cuda]

WEIGHTS is a .safetensors, .pt/.pth (a state_dict, read with weights_only=True), .npy or .npz
file. The baseline everything is compared with is, by default, a DualPair converter f=[1, 1],
0..25 uS, under the PCM noise model with g_max the top of the conductance range, read through an
ideal periphery in the device physics; evaluate and plot use what the results file records,
and every PHYSICS flag given overrides it. ``--config`` reads a TOML file of settings (the
flags' names with underscores, and any option of :class:`gpuwpo.search.options.SearchOptions`) or a
results file, whose run ``optimize`` then repeats exactly; flags given override it.

Bad input (a missing or unreadable file, no matching layer, NaN weights, a bad option, an
output that cannot or must not be written) prints one line ``gpuwpo: error: ...`` to stderr and
exits with status 2, before any work is done where it can be known then; Ctrl-C at any moment
prints ``gpuwpo: interrupted`` and exits with status 130. A results file is written atomically
(never half a file, no temporary file left behind), only over a results file, never over an
input (README "Errors and safety").
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence

import torch

from .checks import check_weights
from .device.physics import PHYSICS
from .device.simulate import DEFAULT_TIMES, tnmse_over_time
from .network.settings import default_physics, physics_from_settings
from .registry import from_dict, to_dict
from .rng import make_generator

__all__ = ["main", "build_parser", "parse_times", "parse_f_lst", "parse_g_range",
           "parse_baseline", "make_compensation"]

_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "day": 86400.0, "days": 86400.0,
          "w": 604800.0, "mo": 2592000.0, "month": 2592000.0, "y": 31536000.0,
          "year": 31536000.0}

#: Exceptions that mean "bad input" (the library raises these with a message naming the
#: problem); anything else is a bug and keeps its traceback.
_USER_ERRORS = (ValueError, TypeError, ImportError, OSError)


class _OneLineParser(argparse.ArgumentParser):
    """argparse with errors on one line (``gpuwpo: error: ...``), status 2, like ours."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"gpuwpo: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


# --------------------------------------------------------------------------------------------
# Argument types
# --------------------------------------------------------------------------------------------


def parse_times(text: str) -> list[float]:
    """Comma-separated inference times in seconds, e.g. ``"1,3600,86400"`` or ``"1s,1h,1y"``.

    Units (optional, after the number): s, min, h, d, w, mo (30 days), y (365 days).
    """
    times = []
    for item in text.split(","):
        item = item.strip()
        m = re.fullmatch(r"([0-9.eE+-]+)\s*([a-z]*)", item)
        if not m or (m.group(2) and m.group(2) not in _UNITS):
            raise argparse.ArgumentTypeError(
                f"cannot read time {item!r}: give seconds (e.g. 3600) or a number with a unit "
                f"({', '.join(_UNITS)})")
        try:
            value = float(m.group(1)) * _UNITS.get(m.group(2) or "s", 1.0)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"cannot read time {item!r}: {err}") from err
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"time {item!r} must be finite and >= 0 seconds")
        times.append(value)
    return times


def parse_f_lst(text: str) -> list[float | None]:
    """Significance factors, comma separated: numbers fix them, ``None`` lets the search choose.

    ``"None,None"`` (two free pairs), ``"1,3"`` (fixed), ``"1,None"``.
    """
    out: list[float | None] = []
    for item in text.split(","):
        item = item.strip()
        if item.lower() in ("none", "free", "?"):
            out.append(None)
            continue
        try:
            value = float(item)
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"significance factor {item!r} is neither a number nor None") from err
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"significance factor {item!r} must be > 0")
        out.append(value)
    return out


def _clip_fraction(text: str) -> float:
    from .checks import check_clip

    try:
        return check_clip(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None


def _positive_int(text: str, minimum: int = 1) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from err
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= {minimum}")
    return value


def _at_least_two(text: str) -> int:
    """A number of repeats that has a standard error (one repeat has no spread)."""
    try:
        return _positive_int(text, 2)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 2 (a standard error "
                                         "needs at least two repeats)") from None


#: Seeds are 64-bit: used whole (gpuwpo.rng hashes them), never truncated.
SEED_MAX = 2**64 - 1


def parse_seed(text: str) -> int:
    """A random seed: an integer from 0 to 2**64 - 1, used whole (decimal, or 0x... hex)."""
    try:
        value = int(str(text).strip(), 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed {text!r} is not an integer") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"seed {text!r} is out of range: seeds are 64-bit "
                                         f"integers from 0 to {SEED_MAX}")
    return value


# --------------------------------------------------------------------------------------------
# Physics from flags: baseline spec, conductance range, readout, compensation
# --------------------------------------------------------------------------------------------

READOUTS = ("ideal", "aihwkit")
COMPENSATIONS = ("global", "exact-reference", "per-column")


def parse_g_range(text: str) -> tuple[float, float]:
    """``MIN,MAX`` in micro-Siemens, e.g. ``0,25``."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        low, high = (float(p) for p in parts)
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"cannot read the conductance range {text!r}: give MIN,MAX in uS, e.g. 0,25") from err
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low < high):
        raise argparse.ArgumentTypeError(f"the conductance range {text!r} must have "
                                         "0 <= MIN < MAX")
    return low, high


def parse_baseline(spec: str, g_range: tuple[float, float] = (0.0, 25.0)):
    """A baseline converter from a spec and a conductance range (uS).

    Specs: ``dualpair`` (f = 1, 1) or ``dualpair:F0,F1``; ``single``; ``npair:F0,F1,...``;
    ``fusion`` (one device per weight; its g_max is the top of the range).
    """
    from .device import converters

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
    """The drift compensation ``kind`` read through the ``readout`` periphery."""
    from .device.compensation import GlobalDriftCompensation, PerColumnDriftCompensation

    if kind not in COMPENSATIONS:
        raise ValueError(f"unknown compensation {kind!r}; choose one of {', '.join(COMPENSATIONS)}")
    if readout not in READOUTS:
        raise ValueError(f"unknown readout {readout!r}; choose one of {', '.join(READOUTS)}")
    cls = PerColumnDriftCompensation if kind == "per-column" else GlobalDriftCompensation
    exact = kind == "exact-reference"
    return cls.aihwkit_default(exact_reference=exact) if readout == "aihwkit" \
        else cls(exact_reference=exact)


def _physics(args: argparse.Namespace, recorded: Mapping | None = None) -> dict:
    """Noise model, baseline, compensation and physics: flags given, else recorded, else defaults.

    ``recorded``: what a results file records
    (:func:`gpuwpo.network.settings.physics_from_settings`).
    """
    from .device.noise import PCMLikeNoiseModel

    given = vars(args)
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
    return out


# --------------------------------------------------------------------------------------------
# --config: a TOML file of settings or a results file
# --------------------------------------------------------------------------------------------

#: Config keys that are not SearchOptions (flags' names with underscores).
_CONFIG_FLAGS = ("times", "f_lst", "include", "exclude", "global_strategy", "backend", "device",
                 "physics", "baseline", "g_range", "readout", "compensation", "test_size",
                 "noise_model", "symmetric")
# Config keys that may also be a table: a registry record of the object itself (any class of
# gpuwpo.registry, e.g. a CustomDriftPCMLikeNoiseModel with its drift table).
_RECORD_KEYS = ("noise_model", "baseline", "compensation")


def _read_config(path: str) -> tuple[str, dict]:
    """("results", optimize kwargs) for a results file, ("toml", values) for a TOML file."""
    from .io import load_result
    from .network.settings import optimize_kwargs_from_settings

    if str(path).lower().endswith(".json"):
        result = load_result(path)
        return "results", optimize_kwargs_from_settings(result.settings, path=path)
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
    from .search.options import SearchOptions

    known = set(_CONFIG_FLAGS) | set(SearchOptions.names()) | {"global"}
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
                  "mutation": lambda v: tuple(v) if isinstance(v, list) else v}
    for key, convert in converters.items():
        if key in values:
            try:
                values[key] = convert(values[key])
            except (argparse.ArgumentTypeError, TypeError, ValueError) as err:
                raise ValueError(f"{path}: setting {key}: {err}") from None
    _check_config_types(path, values)
    return "toml", values


def _listed(value) -> list:
    if not isinstance(value, list) or not value:
        raise ValueError(f"give a non-empty list or a comma-separated string, got {value!r}")
    return value


def _check_config_types(path: str, values: dict) -> None:
    """The type of every TOML setting that is not a SearchOptions (those check themselves),
    before any work: ``symmetric = "no"`` must not read as true."""
    def need(key: str, what: str) -> None:
        name = "global" if key == "global_strategy" else key
        raise ValueError(f"{path}: setting {name} must be {what}, got {values[key]!r}")

    for key in ("global_strategy", "symmetric"):
        if key in values and not isinstance(values[key], bool):
            need(key, "true or false")
    for key in ("include", "exclude"):
        v = values.get(key)
        if key in values and not (isinstance(v, str) or (
                isinstance(v, list) and all(isinstance(p, str) for p in v))):
            need(key, "a regular expression or a list of them")
    for key, choices in (("physics", PHYSICS), ("readout", READOUTS), ("device", ("cpu", "cuda"))):
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


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def _say(args: argparse.Namespace, text: str) -> None:
    """A progress message (stdout), silenced by --quiet; results are always printed."""
    if not getattr(args, "quiet", False):
        print(text, flush=True)


def _check_device(device: str | None) -> str | None:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine (use --device cpu)")
    return device


#: The figures a plots directory receives (``_write_plots``).
_FIGURES = ("programming_curves.png", "convergence.png", "weight_errors.png")
#: What ``gpuwpo example --out DIR`` writes into DIR (gpuwpo.example).
_EXAMPLE_FILES = ("digits_result.json", "digits_mlp.pt", "accuracy_over_time.png", *_FIGURES)


def _same_path(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _check_out_file(path: str | None, inputs: Sequence[str | None], what: str = "--out"
                    ) -> None:
    """Fail before any work, not after it, when a results file cannot or must not be written."""
    from .io import check_output_file

    if path is not None:
        check_output_file(path, inputs=[p for p in inputs if p], what=what)


def _check_out_dir(path: str | None, inputs: Sequence[str | None], what: str,
                   files: Sequence[str]) -> None:
    """Fail before any work when the directory ``path`` cannot receive ``files``.

    It is a directory or can be made one (its nearest existing ancestor is a directory in which
    files can be created), and none of the files it will receive is an input or a directory.
    """
    from ._files import check_writable_dir

    if path is None:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{what} {path} exists and is not a directory")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    check_writable_dir(existing, f"{what} {path}")
    for name in files:
        target = os.path.join(path, name)
        if os.path.isdir(target):
            raise ValueError(f"{what} {path}: {target} is a directory; it would be replaced by "
                             f"a file")
        for given in inputs:
            if given and _same_path(target, given):
                raise ValueError(f"{what} {path} would overwrite {target}, which this run "
                                 f"also reads or writes; choose another directory")


#: optimize's flags that are SearchOptions, and their option names.
_OPTION_FLAGS = {"popsize": "popsize", "maxiter": "maxiter", "seed": "seed",
                 "baseline_iterations": "baseline_iterations",
                 "validation_repeats": "validation_repeats", "kernel": "kernel",
                 "standard_starts": "standard_starts", "clip": "clip"}


def _optimize_settings(args: argparse.Namespace) -> dict:
    """Everything optimize runs with: config first, then the flags given (which win)."""
    from .search.options import SearchOptions

    given = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    base: dict = {}
    options = SearchOptions()
    recorded = None
    if "config" in given:
        kind, values = _read_config(given.pop("config"))
        if kind == "results":
            options = values.pop("options")
            recorded = {"noise_model": values.pop("noise_model"),
                        "baseline": values.pop("g_converter_baseline"),
                        "compensation": values.pop("compensation"),
                        "physics": values.pop("physics")}
            values["times"] = values.pop("t_steps")
            values["global_strategy"] = not values.pop("per_layer")
            base = values
        else:
            option_values = {k: values.pop(k) for k in list(values)
                             if k in SearchOptions.names()}
            if "test_size" in values:
                option_values["test_in_features"], option_values["test_out_features"] = \
                    values.pop("test_size")
            options = SearchOptions.from_kwargs(option_values, what="the config")
            base = values
    # Flags given on the command line win over the config.
    changes = {name: given.pop(flag) for flag, name in _OPTION_FLAGS.items() if flag in given}
    changes.update({name: given.pop(name) for name in ("checkpoint", "checkpoint_every", "resume")
                    if name in given})
    if "resume" in changes and "checkpoint" not in changes and options.checkpoint is None:
        # A resumed run keeps saving where it was saved: interrupted again, it loses nothing.
        changes["checkpoint"] = changes["resume"]
    if "test_size" in given:
        changes["test_in_features"], changes["test_out_features"] = given.pop("test_size")
    if "quiet" in given:
        changes["disp"] = not given["quiet"]
    options = options.replace(**changes) if changes else options
    base.update(given)
    # The physics: recorded (results config), objects from the TOML's tables, then specs/flags.
    objects = {k: base.pop(k) for k in _RECORD_KEYS
               if k in base and not isinstance(base[k], str)}
    if objects:
        recorded = {**(recorded or {}), **objects}
        if "baseline" in objects:
            recorded["baseline"] = objects["baseline"]
    phys_args = argparse.Namespace(**{k: base[k] for k in ("physics", "baseline", "g_range",
                                                            "readout", "compensation")
                                      if k in base})
    return {"options": options, "physics": _physics(phys_args, recorded),
            "times": base.get("times", list(DEFAULT_TIMES)),
            "f_lst": base.get("f_lst", [None, None]), "include": base.get("include"),
            "exclude": base.get("exclude"),
            "per_layer": not base.get("global_strategy", False),
            "hierarchical": base.get("hierarchical"),
            "backend": base.get("backend", "torch"), "symmetric": base.get("symmetric", True),
            "device": base.get("device")}


def _check_checkpoint(options, out: str | None) -> None:
    """Before any work: the checkpoint to resume is whole, the one to save can be written."""
    from .search.checkpoint import check_target, read_checkpoint

    if options.resume is not None:
        read_checkpoint(options.resume)
    if options.checkpoint is not None:
        check_target(options.checkpoint, resume=options.resume)
        if out and os.path.abspath(out) == os.path.abspath(options.checkpoint):
            raise ValueError(f"--out and --checkpoint both name {out}; give two files")


def _ray_cluster(args: argparse.Namespace):
    """The RayCluster of ``--ray [ADDRESS] --workers N --gpus-per-worker G``, or None."""
    address = getattr(args, "ray", None)
    workers, gpus = getattr(args, "workers", None), getattr(args, "gpus_per_worker", None)
    if address is None:
        if workers is not None or gpus is not None:
            raise ValueError("--workers and --gpus-per-worker shard the layers over Ray "
                             "workers: give --ray too")
        return None
    from .network.distributed import RayCluster

    return RayCluster(address=address or None, workers=workers, gpus_per_worker=gpus or 0)


def _cmd_optimize(args: argparse.Namespace) -> int:
    from .io import load_weights, save_result
    from .network import optimize_network, select_weights
    from .search.backends import BACKENDS

    run = _optimize_settings(args)
    if run["backend"] not in BACKENDS:
        raise ValueError(f"unknown backend {run['backend']!r}; choose one of "
                         f"{', '.join(BACKENDS)}")
    device = _check_device(run["device"])
    _check_test_size(run["options"])
    out, plots = getattr(args, "out", None), getattr(args, "plots", None)
    inputs = [args.weights, getattr(args, "config", None), run["options"].resume]
    _check_out_file(out, inputs)
    _check_out_dir(plots, [*inputs, out], "--plots", _FIGURES)
    _check_checkpoint(run["options"], getattr(args, "out", None))
    weights = load_weights(args.weights)
    # Select here so that a typo in --include fails at once, naming the layers.
    selected = select_weights(weights, run["include"], run["exclude"])
    for name, w in selected.items():  # NaN, complex, all zeros: named with the file, at once
        check_weights(w, f"{args.weights}: the weights of layer {name!r}", allow_all_zero=False)
    phys = run["physics"]
    if not getattr(args, "quiet", False):
        total = sum(w.numel() for w in selected.values())
        _say(args, f"{len(selected)} layer(s), {total} weights: {', '.join(selected)}")
    cluster = _ray_cluster(args)
    result = optimize_network(
        weights, phys["noise_model"], run["times"], phys["baseline"], run["f_lst"],
        include=run["include"], exclude=run["exclude"], per_layer=run["per_layer"],
        hierarchical=run["hierarchical"], backend=run["backend"], device=device,
        physics=phys["physics"],
        compensation=phys["compensation"], symmetric=run["symmetric"], options=run["options"],
        distributed=cluster,
    )
    if cluster is not None:
        _say(args, f"ray: {cluster.num_workers} worker(s); the cluster took "
                   f"{cluster.startup_s:.1f} s to start or connect")
    print(result.summary())
    if out:
        save_result(result, out)
        _say(args, f"wrote {out}")
    if plots:
        for path in _write_plots(result, plots, selected, repeats=2, seed=run["options"].seed):
            _say(args, f"wrote {path}")
    return 0


def _check_test_size(options) -> None:
    """A test tile too large to allocate is refused before any work (gpuwpo.search.tiles)."""
    from .search.tiles import MAX_TEST_WEIGHTS

    size_in, size_out = options.test_in_features, options.test_out_features
    if size_in is not None and size_in * size_out > MAX_TEST_WEIGHTS:
        raise ValueError(f"--test-size {size_in} {size_out}: {size_in * size_out} test weights "
                         f"per layer, more than the {MAX_TEST_WEIGHTS} gpuwpo allows")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .io import load_result, load_weights

    result = load_result(args.results)
    weights = load_weights(args.weights)
    recorded = physics_from_settings(result.settings, path=args.results)
    phys = _physics(args, recorded)
    t_steps = args.times if getattr(args, "times", None) is not None else recorded["t_steps"]
    _check_device(getattr(args, "device", None))
    device = getattr(args, "device", None) or "cpu"
    sizes, base_rows, opt_rows = [], [], []
    gen = make_generator(args.seed)
    layers = result.layers
    try:
        from tqdm.auto import tqdm

        layers = tqdm(layers, desc="evaluate", unit="layer", leave=False, disable=args.quiet)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        pass
    lines = []
    for layer in layers:
        if layer.name not in weights:
            raise ValueError(f"{args.weights} has no tensor {layer.name!r} (the results file's "
                             f"layer); it holds {list(weights)[:10]}")
        w = weights[layer.name]
        if tuple(w.shape) != tuple(layer.shape):
            raise ValueError(f"{args.weights}: {layer.name!r} has shape {tuple(w.shape)}, the "
                             f"results file was made for {tuple(layer.shape)}")
        w = check_weights(w, f"{args.weights}: the weights of layer {layer.name!r}",
                          allow_all_zero=False).to(device)
        kw = dict(repeats=args.repeats, compensation=phys["compensation"], generator=gen,
                  physics=phys["physics"])
        base = tnmse_over_time(w, phys["baseline"], phys["noise_model"], t_steps, **kw)
        opt = tnmse_over_time(w, layer.converter, phys["noise_model"], t_steps, **kw)
        sizes.append(w.numel())
        base_rows.append(base)
        opt_rows.append(opt)
        lines.append(_table(f"{layer.name} {tuple(layer.shape)}", t_steps, base, opt))
    # Overall: layers weighted by their number of weights (the network's total weight error).
    share = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)

    def combine(rows):
        mean = sum(s * r[0].double() for s, r in zip(share, rows))
        sem = sum((s * r[1].double()) ** 2 for s, r in zip(share, rows)).sqrt()
        return mean, sem

    overall = _table("overall (weighted by layer size)", t_steps, combine(base_rows),
                     combine(opt_rows))
    print(f"TNMSE over time in physics={phys['physics']!r}, {args.repeats} programmings per "
          f"layer and time (mean +- standard error; lower is better)")
    print("\n\n".join([*lines, overall]))
    return 0


def _table(title: str, t_steps: Sequence[float], base, opt) -> str:
    from .plots import time_label

    (bm, bs), (om, osem) = base, opt

    def gain(b: float, o: float) -> str:
        return f"{100 * (1 - o / b):6.1f}%" if b > 0 else f"{'n/a':>7}"

    rows = [title, f"  {'time':>10} {'baseline':>20} {'optimised':>20} {'gain':>7}"]
    for i, t in enumerate(t_steps):
        rows.append(f"  {time_label(t):>10} {float(bm[i]):10.5f} +- {float(bs[i]):<7.5f}"
                    f"{float(om[i]):10.5f} +- {float(osem[i]):<7.5f}"
                    f"{gain(float(bm[i]), float(om[i]))}")
    n = len(t_steps)
    b_all, o_all = float(bm.mean()), float(om.mean())
    b_se = float((bs.double() ** 2).sum().sqrt()) / n
    o_se = float((osem.double() ** 2).sum().sqrt()) / n
    rows.append(f"  {'TNMSE':>10} {b_all:10.5f} +- {b_se:<7.5f}{o_all:10.5f} +- {o_se:<7.5f}"
                f"{gain(b_all, o_all)}")
    return "\n".join(rows)


def _write_plots(result, out_dir: str, weights: Mapping[str, torch.Tensor] | None, *,
                 repeats: int = 2, seed: int = 0, phys: Mapping | None = None,
                 source: str | None = None) -> list[str]:
    """The figures of a result into ``out_dir``; returns the paths written.

    ``phys``: the physics of the weight-error figure (default: what the result records);
    ``source``: the results file the result was read from (named in errors).
    """
    from . import plots

    recorded = physics_from_settings(result.settings, path=source)
    phys = recorded if phys is None else phys
    os.makedirs(out_dir, exist_ok=True)
    written = []
    path = os.path.join(out_dir, "programming_curves.png")
    plots.programming_curves(result, phys["baseline"], path=path)
    written.append(path)
    path = os.path.join(out_dir, "convergence.png")
    plots.convergence(result, path=path)
    written.append(path)
    if weights is not None:
        path = os.path.join(out_dir, "weight_errors.png")
        plots.weight_error_histograms(result, weights, recorded["t_steps"],
                                      noise_model=phys["noise_model"], baseline=phys["baseline"],
                                      compensation=phys["compensation"],
                                      physics=phys["physics"], repeats=repeats, seed=seed,
                                      path=path)
        written.append(path)
    plots._pyplot().close("all")  # a long-lived process must not keep every figure alive
    return written


def _cmd_plot(args: argparse.Namespace) -> int:
    from .io import load_result, load_weights

    _check_device(getattr(args, "device", None))
    _check_out_dir(args.out, [args.results, getattr(args, "weights", None)], "--out", _FIGURES)
    result = load_result(args.results)
    weights = load_weights(args.weights) if getattr(args, "weights", None) else None
    for layer in result.layers if weights is not None else []:
        if layer.name not in weights:
            raise ValueError(f"{args.weights} has no tensor {layer.name!r} (a layer of "
                             f"{args.results}); it holds {list(weights)[:10]}")
        if tuple(weights[layer.name].shape) != tuple(layer.shape):
            raise ValueError(f"{args.weights}: {layer.name!r} has shape "
                             f"{tuple(weights[layer.name].shape)}, {args.results} was made for "
                             f"{tuple(layer.shape)}")
        check_weights(weights[layer.name], f"{args.weights}: the weights of layer {layer.name!r}",
                      allow_all_zero=False)
    phys = _physics(args, physics_from_settings(result.settings, path=args.results))
    for path in _write_plots(result, args.out, weights, repeats=args.repeats, seed=args.seed,
                             phys=phys, source=args.results):
        print(f"wrote {path}")
    return 0


def _cmd_example(args: argparse.Namespace) -> int:
    from .example import run_example

    phys = _physics(args)
    out = getattr(args, "out", None)
    _check_out_dir(out, [], "--out", _EXAMPLE_FILES)
    if out is not None and os.path.lexists(os.path.join(out, "digits_result.json")):
        # An earlier example's results are replaced; anything else of that name is refused.
        _check_out_file(os.path.join(out, "digits_result.json"), [], "--out")
    run_example(quick=args.quick, out_dir=out, seed=args.seed,
                repeats=getattr(args, "repeats", None), backend=args.backend,
                device=_check_device(getattr(args, "device", None)), progress=not args.quiet,
                physics=phys["physics"], noise_model=phys["noise_model"],
                baseline=phys["baseline"], compensation=phys["compensation"])
    return 0


# --------------------------------------------------------------------------------------------
# Parser and entry point
# --------------------------------------------------------------------------------------------


def _add_physics_flags(p: argparse.ArgumentParser, recorded: bool) -> None:
    """The PHYSICS flags; absent unless given (so a config or results file can supply them)."""
    where = "the results file's" if recorded else "device"
    p.add_argument("--physics", choices=PHYSICS, default=argparse.SUPPRESS,
                   help=f"what is simulated (default {where}): device = the programmed devices "
                        "drift and are read, as on a chip; aihwkit = the reference toolkit's "
                        "inference tile (the programmed weights are converted again before "
                        "they drift)")
    p.add_argument("--baseline", metavar="SPEC", default=argparse.SUPPRESS,
                   help="the converter to beat: dualpair[:F0,F1] (default dualpair:1,1), single, "
                        "npair:F0,F1,... or fusion" + (" (default: the results file's)"
                                                       if recorded else ""))
    p.add_argument("--g-range", type=parse_g_range, metavar="MIN,MAX", default=argparse.SUPPRESS,
                   help="the devices' conductance range in uS (default 0,25); also the PCM "
                        "model's g_max")
    p.add_argument("--readout", choices=READOUTS, default=argparse.SUPPRESS,
                   help="the drift compensation's readout: ideal (default) or aihwkit (the "
                        "reference's default forward periphery: noise, quantisation, bounds)")
    p.add_argument("--compensation", choices=COMPENSATIONS, default=argparse.SUPPRESS,
                   help="drift compensation (default global)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=argparse.SUPPRESS,
                   help="where to compute (default: cuda when available for optimize, else cpu)")


def _add_repeats_and_seed(p: argparse.ArgumentParser, repeats: int | None, what: str, *,
                          at_least_two: bool = False) -> None:
    p.add_argument("--repeats", type=_at_least_two if at_least_two else _positive_int,
                   metavar="N", default=repeats,
                   help=what + ("" if repeats is None else f" (default {repeats})"))
    p.add_argument("--seed", type=parse_seed, default=0, metavar="N",
                   help="random seed, 0 .. 2**64 - 1 (default 0)")


#: sub-command -> (handler, one-line help, description), in the order ``gpuwpo --help`` lists them
_COMMANDS = {
    "optimize": (_cmd_optimize, "find strategies for the layers in a weights file",
                 "Find a weight-programming strategy per layer (or one global strategy) that "
                 "beats the baseline converter, and print the per-layer summary."),
    "evaluate": (_cmd_evaluate, "TNMSE over time: baseline vs optimised",
                 "Simulate every layer of WEIGHTS programmed with the baseline and with the "
                 "strategies of RESULTS, and print the weight error (TNMSE) at each time, per "
                 "layer and overall."),
    "plot": (_cmd_plot, "figures of a results file (PNG)",
             "Programming curves and convergence of RESULTS; with --weights also the "
             "weight-error distributions over time."),
    "example": (_cmd_example, "train a small MLP on digits and run the whole flow",
                "Train a 64-64-32-10 MLP on scikit-learn's digits, optimise its layers' "
                "programming, and print test accuracy at 1 s .. 1 year for the baseline and "
                "the optimised strategies."),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``gpuwpo`` command (sub-commands optimize, evaluate, plot,
    example)."""
    from . import __version__
    from .search.options import SearchOptions

    defaults = SearchOptions()
    parser = _OneLineParser(
        prog="gpuwpo",
        description="Find, evaluate and plot weight-programming strategies for PCM analogue "
                    "in-memory computing hardware.",
    )
    parser.add_argument("--version", action="version", version=f"gpuwpo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    times_help = ("inference times, comma separated, in seconds or with a unit (s, min, h, d, "
                  "w, mo, y); default 1,3600,86400,2592000,31536000 (1 s .. 1 year)")
    quiet = dict(action="store_true", help="no progress bar or messages")
    keep = argparse.SUPPRESS
    commands = {}
    for name, (func, summary, description) in _COMMANDS.items():
        commands[name] = sub.add_parser(name, help=summary, description=description)
        commands[name].set_defaults(func=func)

    p = commands["optimize"]
    p.add_argument("weights", metavar="WEIGHTS",
                   help="weights file: .safetensors, .pt/.pth (state_dict), .npy or .npz")
    p.add_argument("--config", metavar="FILE", default=keep,
                   help="settings from a TOML file, or a results file whose run is repeated "
                        "exactly; flags given override it")
    p.add_argument("--include", action="append", metavar="REGEX", default=keep,
                   help="program only layers whose name matches (repeatable)")
    p.add_argument("--exclude", action="append", metavar="REGEX", default=keep,
                   help="skip layers whose name matches (repeatable)")
    p.add_argument("--global", dest="global_strategy", action="store_true", default=keep,
                   help="one strategy for all layers (the paper's setting) instead of one each")
    p.add_argument("--hierarchical", action=argparse.BooleanOptionalAction, default=keep,
                   help="per layer: search one pooled global strategy first and start every "
                        "layer from it (default: off; README 'Defaults')")
    p.add_argument("--no-standard-starts", dest="standard_starts", action="store_false",
                   default=keep, help="do not start the search from the standard converters "
                                      "(README 'Defaults')")
    p.add_argument("--backend", metavar="NAME", default=keep,
                   help="search backend: torch (default), evotorch or scipy")
    p.add_argument("--kernel", choices=("auto", "torch", "compile", "triton"), default=keep,
                   help="objective implementation: auto (Triton on CUDA, else torch), torch, "
                        "compile (torch.compile: fused passes after a one-off compilation), "
                        "triton")
    p.add_argument("--popsize", type=_positive_int, metavar="N", default=keep,
                   help=f"population size multiplier (population = popsize x D; default "
                        f"{defaults.popsize})")
    p.add_argument("--maxiter", type=_positive_int, metavar="N", default=keep,
                   help=f"generations (default {defaults.maxiter})")
    p.add_argument("--seed", type=parse_seed, metavar="N", default=keep,
                   help=f"random seed, 0 .. 2**64 - 1 (default {defaults.seed})")
    p.add_argument("--f-lst", type=parse_f_lst, metavar="F,F", default=keep,
                   help="significance factors, numbers or None to optimise (default None,None)")
    p.add_argument("--times", type=parse_times, metavar="T,T", default=keep, help=times_help)
    p.add_argument("--baseline-iterations", type=_positive_int, metavar="N", default=keep,
                   help=f"programmings averaged for the baseline's TNMSE (default "
                        f"{defaults.baseline_iterations})")
    p.add_argument("--validation-repeats", type=_positive_int, metavar="N", default=keep,
                   help=f"programmings to validate the answer with fresh noise (default "
                        f"{defaults.validation_repeats})")
    p.add_argument("--clip", type=_clip_fraction, metavar="FRACTION", default=keep,
                   help="program the weights clipped at FRACTION x max|W| (0 < FRACTION <= 1; "
                        "default 1, no clipping, the reference's converters): a gpuwpo "
                        "extension for heavy-tailed layers, README 'Clipping'")
    p.add_argument("--test-size", type=_positive_int, nargs=2, metavar=("IN", "OUT"),
                   default=keep,
                   help=f"test tile per layer (default {defaults.test_in_features} "
                        f"{defaults.test_out_features})")
    _add_physics_flags(p, recorded=False)
    p.add_argument("--out", metavar="FILE", help="write the results (JSON, atomically)")
    p.add_argument("--plots", metavar="DIR", help="write the figures (PNG) into DIR")
    p.add_argument("--checkpoint", metavar="FILE", default=keep,
                   help="save the search's state into FILE (one file, replaced atomically) every "
                        "--checkpoint-every generations, at the end of each search and on "
                        "Ctrl-C")
    p.add_argument("--checkpoint-every", type=_positive_int, metavar="N", default=keep,
                   help=f"generations between checkpoints (default {defaults.checkpoint_every})")
    p.add_argument("--resume", metavar="FILE", default=keep,
                   help="continue the run saved in FILE, given the same weights and settings "
                        "(anything else is refused, naming it), and keep saving into FILE "
                        "unless --checkpoint names another; it ends exactly as the "
                        "uninterrupted run")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="shard the layers over Ray workers (the same result as one process); "
                        "without ADDRESS a local cluster is started and stopped (put --ray "
                        "after WEIGHTS, or write --ray=ADDRESS)")
    p.add_argument("--workers", type=_positive_int, metavar="N",
                   help="with --ray: workers running at once (default: one per GPU with "
                        "--gpus-per-worker 1, else one per CPU)")
    p.add_argument("--gpus-per-worker", type=int, choices=(0, 1), metavar="G",
                   help="with --ray: 1 runs each worker on a GPU of its own, 0 (default) on CPUs")
    p.add_argument("--quiet", **quiet)

    p = commands["evaluate"]
    p.add_argument("results", metavar="RESULTS", help="results file of 'gpuwpo optimize'")
    p.add_argument("weights", metavar="WEIGHTS", help="the weights file it was made for")
    p.add_argument("--times", type=parse_times, default=None, metavar="T,T",
                   help=times_help.replace("default 1,3600,86400,2592000,31536000 (1 s .. 1 "
                                           "year)", "default: the results file's times"))
    _add_repeats_and_seed(p, 10, "programmings per layer and time (>= 2: the table gives "
                               "standard errors)", at_least_two=True)
    _add_physics_flags(p, recorded=True)
    p.add_argument("--quiet", **quiet)

    p = commands["plot"]
    p.add_argument("results", metavar="RESULTS", help="results file of 'gpuwpo optimize'")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the PNG files")
    p.add_argument("--weights", metavar="WEIGHTS", help="the weights file (for weight errors)")
    _add_repeats_and_seed(p, 3, "programmings pooled in each weight-error histogram")
    _add_physics_flags(p, recorded=True)

    p = commands["example"]
    p.add_argument("--quick", action="store_true", help="a tiny budget (seconds; for tests)")
    p.add_argument("--out", metavar="DIR", help="write the results and figures into DIR")
    _add_repeats_and_seed(p, None, "noise repeats per time and strategy (default 10, quick 3)")
    p.add_argument("--backend", default="torch", help="search backend (default torch)")
    _add_physics_flags(p, recorded=False)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.commands = commands  # name -> sub-parser: main() points errors to its --help
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gpuwpo`` command line; returns the exit status (0 ok, 2 bad input, 130 Ctrl-C).

    Bad input (the library's ValueError, TypeError, ImportError, FileNotFoundError and other
    OSErrors) prints one line ``gpuwpo: error: ...`` to stderr, without a traceback; Ctrl-C at
    any moment prints ``gpuwpo: interrupted`` (while the command starts too: gpuwpo._startup).
    """
    from . import _startup

    try:
        _startup.uninstall()  # from here on Ctrl-C is a KeyboardInterrupt, handled below
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # pointed to the sub-command's --help, where its flags are listed
            parser.commands.get(args.command, parser).error(
                f"unrecognized arguments: {' '.join(extra)}")
        return int(args.func(args))
    except KeyboardInterrupt:
        return _interrupted()
    except _USER_ERRORS as err:
        if _startup.interrupted:  # Ctrl-C that surfaced as another error (gpuwpo._startup)
            return _interrupted()
        sys.stderr.write(f"gpuwpo: error: {_one_line(err)}\n")
        return 2
    except Exception:
        if _startup.interrupted:
            return _interrupted()
        raise


def run() -> None:
    """The console script and ``python -m gpuwpo``: :func:`main`, then exit with its status.

    After Ctrl-C the status is 130 every time. Python's own exit would, at random, turn it into
    death by SIGINT instead: when the interrupt lands inside a module being imported lazily
    mid-search, CPython records it as unhandled even though :func:`main` caught it, and kills
    itself with SIGINT on the way out. By then everything is written and closed (results files
    atomically, checkpoints, a local Ray cluster in its ``finally``), so the process flushes its
    streams and leaves at once.
    """
    status = main()
    if status == 130:
        import os

        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(130)
    raise SystemExit(status)


def _interrupted() -> int:
    """One line for Ctrl-C, with a second Ctrl-C ignored while it is written."""
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        sys.stderr.write("gpuwpo: interrupted\n")
        sys.stderr.flush()
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    return 130


if __name__ == "__main__":
    run()
