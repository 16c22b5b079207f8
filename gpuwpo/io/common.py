"""What results files and weight files share: the file to read, checked to exist, and values or
errors from a file quoted on one line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["existing_file", "same_file", "show", "one_line"]


def existing_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a :class:`Path` once it names an existing regular file (``what``: "results
    file", "weights file", used in the messages).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a directory, or not a regular file (a device or a pipe).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a {what}")
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a regular file (a device or a pipe?), not a {what}")
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file (the same path when either does not exist)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def show(value: Any) -> str:
    """A short repr of a value from a file (never a whole nested list)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def one_line(err: BaseException) -> str:
    """An error's message on one line (its type's name when it has none)."""
    return " ".join(str(err).split()) or type(err).__name__
