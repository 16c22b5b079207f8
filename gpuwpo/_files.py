"""Writing files safely: atomically, with no stray temporary files, keeping permissions.

:func:`atomic_write` is the one way gpuwpo writes a file (results, figures, the example's
weights). Readers see the old file or the new one, never half of one:

1. The data is written to an *unnamed* file in the target's directory (Linux ``O_TMPFILE``): if
   the process dies while writing (even by SIGKILL, which runs no clean-up) the kernel frees it
   and nothing is left behind.
2. Once complete and flushed to disk, it gets a temporary name (``.NAME.PID.RANDOM.gpuwpo-tmp``)
   and is moved over the target with ``os.replace`` (one rename). Only between these two system
   calls does a named temporary file exist; a later write to the same target removes one whose
   writing process is gone. Where ``O_TMPFILE`` is not available the temporary file is named
   from the start (then the same clean-up applies) and is removed on any exception.
3. The new file gets the permissions of the file it replaces (else those of a new file under
   the umask), not the 0600 of a temporary file.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

__all__ = ["atomic_write", "check_writable_dir", "TEMP_SUFFIX"]

#: The suffix of gpuwpo's temporary files.
TEMP_SUFFIX = ".gpuwpo-tmp"


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # the only portable way to read it: set and restore
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """The mode the file at ``path`` keeps: its own if it exists, else 0666 minus the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, under another user
        return True
    return True


def _sweep(directory: Path, name: str) -> None:
    """Remove temporary files for ``name`` left by writers that no longer run."""
    prefix = f".{name}."
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(TEMP_SUFFIX)):
            continue
        middle = entry.name[len(prefix):-len(TEMP_SUFFIX)]
        pid_text, _, _ = middle.partition(".")
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text)):
            try:
                os.unlink(entry.path)
            except OSError:
                pass


def _temp_name(directory: Path, name: str) -> Path:
    return directory / f".{name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def _open_unnamed(directory: Path) -> int | None:
    """An unnamed file in ``directory`` (O_TMPFILE), or None where that is not available."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(directory, flag | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError:  # not supported by this file system or kernel
        return None


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring).

    A symbolic link at ``path`` is followed: the file it points to is replaced, the link kept.

    Raises:
        OSError: the directory does not exist or cannot be written, or the disk is full
            (nothing is left behind, and an existing file at ``path`` is untouched).
    """
    path = Path(os.path.realpath(path))
    directory, name = path.parent, path.name
    mode = _new_file_mode(path)
    _sweep(directory, name)
    tmp = _write_unnamed(directory, name, data, mode)
    if tmp is None:
        tmp = _write_named(directory, name, data, mode)
    try:
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            _unlink(tmp)
    _fsync_dir(directory)


def _write_all(fd: int, data: bytes, mode: int) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fchmod(fd, mode)
    os.fsync(fd)


def _write_unnamed(directory: Path, name: str, data: bytes, mode: int) -> Path | None:
    """The data in an unnamed file, then linked under a temporary name; None if unsupported."""
    fd = _open_unnamed(directory)
    if fd is None:
        return None
    try:
        _write_all(fd, data, mode)  # dies here: the kernel frees the unnamed file
        tmp = _temp_name(directory, name)
        try:
            os.link(f"/proc/self/fd/{fd}", tmp)  # linkat(AT_SYMLINK_FOLLOW): named now
        except OSError:
            return None
        return tmp
    finally:
        os.close(fd)


def _write_named(directory: Path, name: str, data: bytes, mode: int) -> Path:
    tmp = _temp_name(directory, name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     0o600)
    except OSError as err:
        raise type(err)(f"cannot write {directory / name}: {err.strerror or err}") from None
    try:
        _write_all(fd, data, mode)
    except BaseException:
        os.close(fd)
        _unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def check_writable_dir(directory: str | os.PathLike, what: str) -> None:
    """Fail now, not after a long run, when files cannot be created in ``directory``.

    ``directory`` must exist and be a directory in which a file can be created (tried, with an
    unnamed or at once removed file: permissions, read-only file systems and quotas all show).

    Raises:
        FileNotFoundError, NotADirectoryError, PermissionError (OSError): naming ``what``.
    """
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"{what}: the directory {directory} does not exist")
    if not directory.is_dir():
        raise NotADirectoryError(f"{what}: {directory} is not a directory")
    fd = _open_unnamed(directory)
    if fd is not None:
        os.close(fd)
        return
    probe = _temp_name(directory, "write-test")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as err:
        raise PermissionError(f"{what}: cannot create files in {directory} "
                              f"({err.strerror or err})") from None
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass
