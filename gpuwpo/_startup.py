"""Ctrl-C while the command line starts: exit 130 with one line, never a traceback.

Importing gpuwpo imports torch, which takes seconds; a Ctrl-C in that time would otherwise print
the traceback of whatever import it interrupted. When (and only when) this process is the
``gpuwpo`` command (the console script, or ``python -m gpuwpo``), the first thing gpuwpo's
``__init__`` does is to install a SIGINT handler that prints ``gpuwpo: interrupted`` and exits
with status 130 at once (nothing has been written yet). :func:`gpuwpo.cli.main` replaces it,
once everything is imported, with a handler that raises KeyboardInterrupt as Python's does and
records that it did, and from then on handles KeyboardInterrupt itself (and any error that an
interrupt turned into, such as an interrupted import's). A library user's process is never
touched.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

__all__ = ["install", "uninstall", "is_cli"]


def is_cli() -> bool:
    """Whether this process runs the ``gpuwpo`` command line."""
    argv = list(getattr(sys, "orig_argv", None) or [])
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "-m":
            return i + 1 < len(argv) and argv[i + 1] in ("gpuwpo", "gpuwpo.cli")
        if arg.startswith("-m"):
            return arg[2:] in ("gpuwpo", "gpuwpo.cli")
        if not arg.startswith("-"):
            break
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return prog in ("gpuwpo", "gpuwpo.exe", "gpuwpo-script.py")


def _interrupted(signum, frame) -> None:  # noqa: ARG001 - the signal handler's signature
    try:
        os.write(2, b"gpuwpo: interrupted\n")
    finally:
        os._exit(130)


def install() -> None:
    """Exit 130 with one line on Ctrl-C, if this process is the command line and starting."""
    if not is_cli() or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted)


#: True once Ctrl-C has reached the command line after start-up (:func:`uninstall`).
interrupted = False


def _raise_and_record(signum, frame) -> None:  # noqa: ARG001 - the signal handler's signature
    global interrupted
    interrupted = True
    raise KeyboardInterrupt


def uninstall() -> None:
    """After start-up, if :func:`install` replaced Python's SIGINT handler: a handler that raises
    KeyboardInterrupt as Python's does and records in :data:`interrupted` that it did.

    Ctrl-C that lands while an extension module initialises (a lazy import mid-search) can come
    out as another error (``ImportError: initialization failed``); the command line reads the
    record to report it as the interruption it was."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is _interrupted:
        signal.signal(signal.SIGINT, _raise_and_record)


install()
