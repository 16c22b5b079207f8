"""The ``gpuwpo`` command line: optimise, evaluate and plot weight-programming strategies.

    gpuwpo optimize WEIGHTS [--include REGEX] [--exclude REGEX] [--global] [--backend B]
                    [--device D] [--popsize N] [--maxiter N] [--seed N] [--out results.json]
                    [--plots DIR] [--f-lst None,None] [--times 1,3600,...] ...
    gpuwpo evaluate RESULTS WEIGHTS [--times ...] [--repeats N]
    gpuwpo plot RESULTS --out DIR [--weights WEIGHTS]
    gpuwpo example [--quick] [--out DIR]

WEIGHTS is a .safetensors, .pt/.pth (a state_dict, read with weights_only=True), .npy or .npz
file. The baseline everything is compared with is a DualPair converter f=[1, 1], 0..25 uS, under
the PCM noise model with g_max = 25 uS (unless a results file records otherwise).

Bad input (a missing or unreadable file, no matching layer, NaN weights, a bad option) prints
one line ``gpuwpo: error: ...`` to stderr and exits with status 2; a results file is written
atomically (a temporary file moved into place), never half a file.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence

import torch

from .io import default_physics, physics_from_settings
from .physics import PHYSICS
from .rng import make_generator
from .simulate import DEFAULT_TIMES, tnmse_over_time

__all__ = ["main", "build_parser", "parse_times", "parse_f_lst"]

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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


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


def _check_out_dir(path: str | None, what: str) -> None:
    """Fail before a long search, not after it, when an output cannot be written."""
    if path is None:
        return
    directory = os.path.dirname(os.path.abspath(path)) if what == "file" else path
    if what == "file" and os.path.isdir(path):
        raise ValueError(f"--out {path} is a directory; give a file name such as results.json")
    if what == "file" and not os.path.isdir(directory):
        raise FileNotFoundError(f"--out {path}: the directory {directory} does not exist")
    if what == "dir" and os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--plots {path} exists and is not a directory")


def _cmd_optimize(args: argparse.Namespace) -> int:
    from .backends import BACKENDS
    from .io import load_weights, save_result
    from .network import optimize_network, select_weights

    if args.backend not in BACKENDS:
        raise ValueError(f"unknown backend {args.backend!r}; choose one of {', '.join(BACKENDS)}")
    device = _check_device(args.device)
    _check_out_dir(args.out, "file")
    _check_out_dir(args.plots, "dir")
    weights = load_weights(args.weights)
    # Select (and check) here so that a typo in --include fails at once, naming the layers.
    selected = select_weights(weights, args.include, args.exclude)
    for name, w in selected.items():
        w = w if w.is_floating_point() else w.float()
        if not bool(torch.isfinite(w).all()):
            raise ValueError(f"{args.weights}: layer {name!r} has NaN or inf weights")
    noise_model, baseline = default_physics()
    if not args.quiet:
        total = sum(w.numel() for w in selected.values())
        _say(args, f"{len(selected)} layer(s), {total} weights: {', '.join(selected)}")
    result = optimize_network(
        weights, noise_model, args.times, baseline, args.f_lst,
        include=args.include, exclude=args.exclude, per_layer=not args.global_strategy,
        backend=args.backend, device=device, popsize=args.popsize, maxiter=args.maxiter,
        seed=args.seed, baseline_iterations=args.baseline_iterations,
        validation_repeats=args.validation_repeats, test_in_features=args.test_size[0],
        test_out_features=args.test_size[1], disp=not args.quiet, kernel=args.kernel,
        physics=args.physics,
    )
    print(result.summary())
    if args.out:
        save_result(result, args.out)
        _say(args, f"wrote {args.out}")
    if args.plots:
        for path in _write_plots(result, args.plots, selected, repeats=2, seed=args.seed):
            _say(args, f"wrote {path}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .io import load_result, load_weights

    result = load_result(args.results)
    weights = load_weights(args.weights)
    recorded = physics_from_settings(result.settings)
    t_steps = args.times if args.times is not None else recorded["t_steps"]
    simulated = args.physics or recorded["physics"]
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
        if not bool(torch.isfinite(w.float()).all()):
            raise ValueError(f"{args.weights}: layer {layer.name!r} has NaN or inf weights")
        kw = dict(repeats=args.repeats, compensation=recorded["compensation"], generator=gen,
                  physics=simulated)
        base = tnmse_over_time(w, recorded["baseline"], recorded["noise_model"], t_steps, **kw)
        opt = tnmse_over_time(w, layer.converter, recorded["noise_model"], t_steps, **kw)
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
    print(f"TNMSE over time in physics={simulated!r}, {args.repeats} programmings per layer "
          f"and time (mean +- standard error; lower is better)")
    print("\n\n".join([*lines, overall]))
    return 0


def _table(title: str, t_steps: Sequence[float], base, opt) -> str:
    from .plots import time_label

    (bm, bs), (om, osem) = base, opt
    rows = [title, f"  {'time':>10} {'baseline':>20} {'optimised':>20} {'gain':>7}"]
    for i, t in enumerate(t_steps):
        rows.append(f"  {time_label(t):>10} {float(bm[i]):10.5f} +- {float(bs[i]):<7.5f}"
                    f"{float(om[i]):10.5f} +- {float(osem[i]):<7.5f}"
                    f"{100 * (1 - float(om[i]) / float(bm[i])):6.1f}%")
    n = len(t_steps)
    b_all, o_all = float(bm.mean()), float(om.mean())
    b_se = float((bs.double() ** 2).sum().sqrt()) / n
    o_se = float((osem.double() ** 2).sum().sqrt()) / n
    rows.append(f"  {'TNMSE':>10} {b_all:10.5f} +- {b_se:<7.5f}{o_all:10.5f} +- {o_se:<7.5f}"
                f"{100 * (1 - o_all / b_all):6.1f}%")
    return "\n".join(rows)


def _write_plots(result, out_dir: str, weights: Mapping[str, torch.Tensor] | None, *,
                 repeats: int = 2, seed: int = 0, physics: str | None = None) -> list[str]:
    """The figures of a result into ``out_dir``; returns the paths written.

    ``physics``: the physics of the weight-error figure (default: the result's own).
    """
    from . import plots

    recorded = physics_from_settings(result.settings)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    path = os.path.join(out_dir, "programming_curves.png")
    plots.programming_curves(result, recorded["baseline"], path=path)
    written.append(path)
    path = os.path.join(out_dir, "convergence.png")
    plots.convergence(result, path=path)
    written.append(path)
    if weights is not None:
        path = os.path.join(out_dir, "weight_errors.png")
        plots.weight_error_histograms(result, weights, recorded["t_steps"],
                                      noise_model=recorded["noise_model"],
                                      baseline=recorded["baseline"],
                                      compensation=recorded["compensation"],
                                      physics=physics or recorded["physics"],
                                      repeats=repeats, seed=seed, path=path)
        written.append(path)
    plots._pyplot().close("all")  # a long-lived process must not keep every figure alive
    return written


def _cmd_plot(args: argparse.Namespace) -> int:
    from .io import load_result, load_weights

    result = load_result(args.results)
    weights = load_weights(args.weights) if args.weights else None
    for path in _write_plots(result, args.out, weights, repeats=args.repeats, seed=args.seed,
                             physics=args.physics):
        print(f"wrote {path}")
    return 0


def _cmd_example(args: argparse.Namespace) -> int:
    from .example import run_example

    run_example(quick=args.quick, out_dir=args.out, seed=args.seed, repeats=args.repeats,
                backend=args.backend, device=_check_device(args.device), progress=not args.quiet,
                physics=args.physics)
    return 0


# --------------------------------------------------------------------------------------------
# Parser and entry point
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``gpuwpo`` command (sub-commands optimize, evaluate, plot,
    example)."""
    parser = _OneLineParser(
        prog="gpuwpo",
        description="Find, evaluate and plot weight-programming strategies for PCM analogue "
                    "in-memory computing hardware.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"gpuwpo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    times_help = ("inference times, comma separated, in seconds or with a unit (s, min, h, d, "
                  "w, mo, y); default 1,3600,86400,2592000,31536000 (1 s .. 1 year)")
    physics_help = ("device: the programmed devices drift and are read, as on a chip; aihwkit: "
                    "the reference toolkit's inference tile (the programmed weights are converted "
                    "again before they drift)")

    p = sub.add_parser("optimize", help="find strategies for the layers in a weights file",
                       description="Find a weight-programming strategy per layer (or one global "
                                   "strategy) that beats the DualPair f=[1, 1], 0..25 uS "
                                   "baseline, and print the per-layer summary.")
    p.add_argument("weights", metavar="WEIGHTS",
                   help="weights file: .safetensors, .pt/.pth (state_dict), .npy or .npz")
    p.add_argument("--include", action="append", metavar="REGEX",
                   help="program only layers whose name matches (repeatable)")
    p.add_argument("--exclude", action="append", metavar="REGEX",
                   help="skip layers whose name matches (repeatable)")
    p.add_argument("--global", dest="global_strategy", action="store_true",
                   help="one strategy for all layers (the paper's setting) instead of one each")
    p.add_argument("--backend", default="torch", metavar="NAME",
                   help="search backend: torch (default), "
                   "evotorch or scipy")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="where to evaluate (default: cuda when available)")
    p.add_argument("--kernel", choices=("auto", "torch", "compile", "triton"), default="auto",
                   help="objective implementation: auto (Triton on CUDA, else torch), torch, "
                        "compile (torch.compile: ~5x faster on a CPU after ~20 s compiling), "
                        "triton")
    p.add_argument("--popsize", type=_positive_int, default=100, metavar="N",
                   help="population size multiplier (population = popsize x D; default 100)")
    p.add_argument("--maxiter", type=_positive_int, default=200, metavar="N",
                   help="generations (default 200)")
    p.add_argument("--seed", type=int, default=100, metavar="N",
                   help="random seed (default 100)")
    p.add_argument("--f-lst", type=parse_f_lst, default=[None, None], metavar="F,F",
                   help="significance factors, numbers or None to optimise (default None,None)")
    p.add_argument("--times", type=parse_times, default=list(DEFAULT_TIMES), metavar="T,T",
                   help=times_help)
    p.add_argument("--baseline-iterations", type=_positive_int, default=100, metavar="N",
                   help="programmings averaged for the baseline's TNMSE (default 100)")
    p.add_argument("--validation-repeats", type=_positive_int, default=100, metavar="N",
                   help="programmings to validate the answer with fresh noise (default 100)")
    p.add_argument("--test-size", type=_positive_int, nargs=2, default=(512, 20),
                   metavar=("IN", "OUT"), help="test tile per layer (default 512 20)")
    p.add_argument("--physics", choices=PHYSICS, default="device",
                   help=f"what is simulated (default device). {physics_help}")
    p.add_argument("--out", metavar="FILE", help="write the results (JSON, atomically)")
    p.add_argument("--plots", metavar="DIR", help="write the figures (PNG) into DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    p.set_defaults(func=_cmd_optimize)

    p = sub.add_parser("evaluate", help="TNMSE over time: baseline vs optimised",
                       description="Simulate every layer of WEIGHTS programmed with the baseline "
                                   "and with the strategies of RESULTS, and print the weight "
                                   "error (TNMSE) at each time, per layer and overall.")
    p.add_argument("results", metavar="RESULTS", help="results file of 'gpuwpo optimize'")
    p.add_argument("weights", metavar="WEIGHTS", help="the weights file it was made for")
    p.add_argument("--times", type=parse_times, default=None, metavar="T,T",
                   help=times_help.replace("default 1,3600,86400,2592000,31536000 (1 s .. 1 "
                                           "year)", "default: the results file's times"))
    p.add_argument("--repeats", type=_positive_int, metavar="N", default=10,
                   help="programmings per layer and time (default 10)")
    p.add_argument("--physics", choices=PHYSICS, default=None,
                   help=f"what is simulated (default: the results file's). {physics_help}")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("plot", help="figures of a results file (PNG)",
                       description="Programming curves and convergence of RESULTS; with "
                                   "--weights also the weight-error distributions over time.")
    p.add_argument("results", metavar="RESULTS", help="results file of 'gpuwpo optimize'")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the PNG files")
    p.add_argument("--weights", metavar="WEIGHTS", help="the weights file (for weight errors)")
    p.add_argument("--repeats", type=_positive_int, metavar="N", default=3,
                   help="programmings pooled in each weight-error histogram (default 3)")
    p.add_argument("--physics", choices=PHYSICS, default=None,
                   help="physics of the weight-error figure (default: the results file's)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("example", help="train a small MLP on digits and run the whole flow",
                       description="Train a 64-64-32-10 MLP on scikit-learn's digits, optimise "
                                   "its layers' programming, and print test accuracy at 1 s .. "
                                   "1 year for the baseline and the optimised strategies.")
    p.add_argument("--quick", action="store_true", help="a tiny budget (seconds; for tests)")
    p.add_argument("--out", metavar="DIR", help="write the results and figures into DIR")
    p.add_argument("--repeats", type=_positive_int, metavar="N", default=None,
                   help="noise repeats per time and strategy (default 10, quick 3)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    p.add_argument("--backend", default="torch", help="search backend (default torch)")
    p.add_argument("--physics", choices=PHYSICS, default="device",
                   help=f"what is simulated (default device). {physics_help}")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_example)
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gpuwpo`` command line; returns the exit status (0 ok, 2 bad input).

    Bad input (the library's ValueError, TypeError, ImportError, FileNotFoundError and other
    OSErrors) prints one line ``gpuwpo: error: ...`` to stderr, without a traceback.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except _USER_ERRORS as err:
        sys.stderr.write(f"gpuwpo: error: {_one_line(err)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("gpuwpo: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
