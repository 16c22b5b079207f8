"""The command line's parser: its sub-commands and flags, and the types that read flag values.

Everything here only parses: values come out as plain Python values named as a TOML config
names them (:data:`gpuwpo.network.settings.CONFIG_KEYS` and the search options), and
:func:`given_settings` / :func:`given_physics` hand on exactly the flags given (the flags that a
config or a results file may also supply are absent unless given), for
:func:`gpuwpo.network.settings.merge_settings` to merge.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from typing import Any

from ..device.mapping import MAPPINGS
from ..device.physics import PHYSICS
from ..network.settings import COMPENSATIONS, CONFIG_KEYS, PHYSICS_SPECS, READOUTS

__all__ = ["build_parser", "parse_times", "parse_f_lst", "parse_g_range", "parse_seed",
           "parse_clip", "parse_clip_range", "SEED_MAX", "COMMANDS", "given_settings",
           "given_physics"]

_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "day": 86400.0, "days": 86400.0,
          "w": 604800.0, "mo": 2592000.0, "month": 2592000.0, "y": 31536000.0,
          "year": 31536000.0}


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


def parse_clip(text: str) -> float:
    """A clipping fraction in (0, 1] (``--clip``)."""
    from ..checks import check_clip

    try:
        return check_clip(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None


def parse_clip_range(text: str) -> tuple[float, float]:
    """``LOW,HIGH``: the range of the searched clip fraction, ``0 < LOW <= HIGH <= 1``
    (``--clip-range``)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot read the clip range {text!r}: give LOW,HIGH, "
                                         f"fractions of max|W|, e.g. 0.5,1") from None
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 < low <= high <= 1.0):
        raise argparse.ArgumentTypeError(f"the clip range {text!r} must have "
                                         f"0 < LOW <= HIGH <= 1")
    return low, high


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


_MAPPING_HELP = ("layer = one scale for the layer (the reference's optimiser); columnwise = each "
                 "output row scaled to its own max|w| before the converter and back in digital "
                 "(aihwkit's weight_scaling_omega=1, weight_scaling_columnwise=True, which its "
                 "inference presets deploy)")


def _add_baseline_mapping(p: argparse.ArgumentParser, default: str) -> None:
    """``--baseline-mapping``: the mapping the baseline converter is programmed with; absent
    unless given (a config or a results file may supply it)."""
    p.add_argument("--baseline-mapping", choices=MAPPINGS, default=argparse.SUPPRESS,
                   help=f"how the baseline's weights reach its converter (default {default}): "
                        + _MAPPING_HELP)


def _add_key(p: argparse.ArgumentParser) -> None:
    """``--key``: which dict of tensors a checkpoint's weights are, where several could be."""
    p.add_argument("--key", metavar="A.B", default=None,
                   help="the dotted path of the weights inside a checkpoint that holds several "
                        "dicts of tensors (e.g. model or state_dict_ema); found by itself "
                        "where there is one")


def _add_repeats_and_seed(p: argparse.ArgumentParser, repeats: int | None, what: str, *,
                          at_least_two: bool = False) -> None:
    p.add_argument("--repeats", type=_at_least_two if at_least_two else _positive_int,
                   metavar="N", default=repeats,
                   help=what + ("" if repeats is None else f" (default {repeats})"))
    p.add_argument("--seed", type=parse_seed, default=0, metavar="N",
                   help="random seed, 0 .. 2**64 - 1 (default 0)")


#: sub-command -> (one-line help, description), in the order ``gpuwpo --help`` lists them; the
#: handlers are :data:`gpuwpo.cli.commands.HANDLERS`.
COMMANDS = {
    "layers": ("list the layers a weights file would program, and what is skipped",
               "List the tensors of WEIGHTS that optimize would program (name, shape, shape as "
               "mapped on the crossbar, kind, weights, max|W|/std), then those it leaves "
               "digital and why (biases, norms, embeddings, ...). WEIGHTS may be a checkpoint "
               "as training scripts write it, a sharded checkpoint's index or a directory."),
    "optimize": ("find strategies for the layers in a weights file",
                 "Find a weight-programming strategy per layer (or one global strategy) that "
                 "beats the baseline converter, and print the per-layer summary."),
    "evaluate": ("TNMSE over time: baseline vs optimised",
                 "Simulate every layer of WEIGHTS programmed with the baseline and with the "
                 "strategies of RESULTS, and print the weight error (TNMSE) at each time, per "
                 "layer and overall."),
    "plot": ("figures of a results file (PNG)",
             "Programming curves and convergence of RESULTS; with --weights also the "
             "weight-error distributions over time."),
    "example": ("train a small CNN on digits and run the whole flow",
                "Train a small CNN on scikit-learn's digits (it loses several points of test "
                "accuracy to a year of PCM drift under the baseline), optimise its layers' "
                "programming, and print test accuracy at 1 s .. 1 year for the baseline and "
                "the optimised strategies, paired, with the points the strategies win back."),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``gpuwpo`` command (sub-commands layers, optimize, evaluate,
    plot, example)."""
    from .. import __version__
    from ..search.options import SearchOptions

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
    weights_help = ("weights: .safetensors, .pt/.pth/.bin/.ckpt (a state_dict or a checkpoint "
                    "holding one, read with weights_only=True), a sharded checkpoint's "
                    ".index.json, .npy, .npz, or a directory holding one (e.g. a Hugging Face "
                    "model's)")
    include_help = ("program only the layers whose name matches (re.search; repeatable); a "
                    "tensor skipped by default (a bias, a norm, an embedding) is programmed "
                    "when a pattern matches its whole name")
    exclude_help = "leave the tensors whose name matches digital (re.search; repeatable)"
    keep = argparse.SUPPRESS
    commands = {}
    for name, (summary, description) in COMMANDS.items():
        commands[name] = sub.add_parser(name, help=summary, description=description)

    p = commands["layers"]
    p.add_argument("weights", metavar="WEIGHTS", help=weights_help)
    p.add_argument("--include", action="append", metavar="REGEX",
                   help=include_help)
    p.add_argument("--exclude", action="append", metavar="REGEX", help=exclude_help)
    _add_key(p)

    p = commands["optimize"]
    p.add_argument("weights", metavar="WEIGHTS", help=weights_help)
    _add_key(p)
    p.add_argument("--config", metavar="FILE", default=keep,
                   help="settings from a TOML file, or a results file whose run is repeated "
                        "exactly; flags given override it")
    p.add_argument("--include", action="append", metavar="REGEX", default=keep,
                   help=include_help)
    p.add_argument("--exclude", action="append", metavar="REGEX", default=keep,
                   help=exclude_help)
    p.add_argument("--global", dest="global_strategy", action="store_true", default=keep,
                   help="one strategy for all layers (the paper's setting) instead of one each")
    p.add_argument("--hierarchical", action=argparse.BooleanOptionalAction, default=keep,
                   help="per layer: search one pooled global strategy first and start every "
                        "layer from it (default: off; docs/RESULTS.md 'Defaults')")
    p.add_argument("--no-standard-starts", dest="standard_starts", action="store_false",
                   default=keep, help="do not start the search from the standard converters "
                                      "(docs/RESULTS.md 'Defaults')")
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
    p.add_argument("--clip", type=parse_clip, metavar="FRACTION", default=keep,
                   help="program the weights clipped at FRACTION x max|W| (0 < FRACTION <= 1; "
                        "default 1, no clipping, the reference's converters): a gpuwpo "
                        "extension for heavy-tailed layers, docs/GUIDE.md 'Clipping'")
    p.add_argument("--mapping", choices=MAPPINGS, default=keep,
                   help=f"how the strategies' weights reach their converters (default "
                        f"{defaults.mapping}): " + _MAPPING_HELP)
    _add_baseline_mapping(p, defaults.baseline_mapping)
    p.add_argument("--clip-range", type=parse_clip_range, metavar="LOW,HIGH", default=keep,
                   help="search a clip fraction per layer in [LOW, HIGH] (0 < LOW <= HIGH <= 1; "
                        "of each row's max|w| under the columnwise mapping, of max|W| under "
                        "layer) jointly with the program (default: no clip searched); the "
                        "unclipped baseline stays among the contenders")
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
    p.add_argument("weights", metavar="WEIGHTS", help="the weights it was made for (a file, "
                                                      "an index or a directory)")
    _add_key(p)
    p.add_argument("--times", type=parse_times, default=None, metavar="T,T",
                   help=times_help.replace("default 1,3600,86400,2592000,31536000 (1 s .. 1 "
                                           "year)", "default: the results file's times"))
    _add_repeats_and_seed(p, 10, "programmings per layer and time (>= 2: the table gives "
                               "standard errors)", at_least_two=True)
    p.add_argument("--full", action="store_true",
                   help="simulate every weight (default: a layer of more than 32768 weights is "
                        "estimated from a fresh sample of whole rows per programming)")
    _add_physics_flags(p, recorded=True)
    _add_baseline_mapping(p, "the results file's")
    p.add_argument("--quiet", **quiet)

    p = commands["plot"]
    p.add_argument("results", metavar="RESULTS", help="results file of 'gpuwpo optimize'")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the PNG files")
    p.add_argument("--weights", metavar="WEIGHTS", help="the weights file (for weight errors)")
    _add_key(p)
    _add_repeats_and_seed(p, 3, "programmings pooled in each weight-error histogram")
    _add_physics_flags(p, recorded=True)
    _add_baseline_mapping(p, "the results file's")

    p = commands["example"]
    from ..example import DEFAULT_REPEATS as example_repeats
    p.add_argument("--quick", action="store_true", help="a tiny budget (seconds; for tests)")
    p.add_argument("--out", metavar="DIR", help="write the results and figures into DIR")
    _add_repeats_and_seed(p, None, "paired programmings per time and strategy (default "
                                   f"{example_repeats}, quick 3)")
    p.add_argument("--backend", default="torch", help="search backend (default torch)")
    _add_physics_flags(p, recorded=False)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.commands = commands  # name -> sub-parser: main() points errors to its --help
    return parser




def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings ``optimize``'s flags give: only the flags given, by the names of
    :data:`gpuwpo.network.settings.CONFIG_KEYS` and of the search options (``--quiet`` gives
    ``disp``), for :func:`gpuwpo.network.settings.merge_settings`."""
    from ..search.options import SearchOptions

    keys = {*CONFIG_KEYS, *SearchOptions.names()}
    given = {k: v for k, v in vars(args).items() if k in keys}
    if "quiet" in vars(args):
        given["disp"] = not args.quiet
    return given


def given_physics(args: argparse.Namespace) -> dict[str, Any]:
    """The PHYSICS flags given (:data:`gpuwpo.network.settings.PHYSICS_SPECS`), for
    :func:`gpuwpo.network.settings.merge_physics`."""
    return {k: v for k, v in vars(args).items() if k in PHYSICS_SPECS}
