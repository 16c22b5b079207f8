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
input (docs/GUIDE.md).

The package is split by job: :mod:`gpuwpo.cli.arguments` (the parser and the flag types),
:mod:`gpuwpo.cli.config` (``--config``: a TOML file or a results file, read and checked),
:mod:`gpuwpo.cli.commands` (the sub-commands); the settings a run uses are merged by
:mod:`gpuwpo.network.settings`. This module is the entry point: :func:`main` and :func:`run`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..io.common import one_line
from ..network.settings import make_compensation, parse_baseline
from .arguments import build_parser, parse_f_lst, parse_g_range, parse_seed, parse_times
from .commands import HANDLERS

__all__ = ["main", "run", "build_parser", "parse_times", "parse_f_lst", "parse_g_range",
           "parse_seed", "parse_baseline", "make_compensation"]

#: Exceptions that mean "bad input" (the library raises these with a message naming the
#: problem); anything else is a bug and keeps its traceback.
_USER_ERRORS = (ValueError, TypeError, ImportError, OSError)


def _one_line(err: BaseException) -> str:
    """The error's line: its message, and the file a FileNotFoundError names."""
    text = one_line(err)
    if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gpuwpo`` command line; returns the exit status (0 ok, 2 bad input, 130 Ctrl-C).

    Bad input (the library's ValueError, TypeError, ImportError, FileNotFoundError and other
    OSErrors) prints one line ``gpuwpo: error: ...`` to stderr, without a traceback; Ctrl-C at
    any moment prints ``gpuwpo: interrupted`` (while the command starts too: gpuwpo._startup).
    """
    from .. import _startup

    try:
        _startup.uninstall()  # from here on Ctrl-C is a KeyboardInterrupt, handled below
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # pointed to the sub-command's --help, where its flags are listed
            parser.commands.get(args.command, parser).error(
                f"unrecognized arguments: {' '.join(extra)}")
        return int(HANDLERS[args.command](args))
    except KeyboardInterrupt:
        return _interrupted()
    except BrokenPipeError:
        # The reader of our output went away (``gpuwpo layers X | head``): nothing to say to
        # anyone. Point stdout at /dev/null so Python's exit flush does not fail again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
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

