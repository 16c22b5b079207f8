"""Weight files: named tensors read from .safetensors, .pt/.pth, .npy and .npz, hardened.

Every reader distrusts its file: sizes are checked against the file's size before anything is
allocated (a header or a zip member that claims more data than the file holds is refused,
however much it claims), nothing is ever unpickled but tensors, and every refusal is one line in
gpuwpo's words naming the file.

:func:`load_weights` reads a file in two steps: the reader of its format (one per format, in
:data:`READERS`, each returning the file's entries by name) and one shared step that turns the
entries into named real-valued tensors (:func:`named_tensors`). A new format is one more reader.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .common import existing_file, show

__all__ = ["load_weights", "named_tensors", "READERS"]

#: Deflate compresses by at most 1032:1; a zip member that claims more than this many bytes per
#: compressed byte is lying, and is refused before anything is allocated for it.
_DEFLATE_MAX_RATIO = 1032
#: The largest .npy header read (numpy writes a few hundred bytes).
_NPY_MAX_HEADER = 1 << 16
#: The largest .safetensors header read (the safetensors library's own limit).
_SAFETENSORS_MAX_HEADER = 100_000_000
_SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                         "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
                         "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8}


class _Malformed(ValueError):
    """A weights file that is not what its extension says (message in gpuwpo's words)."""


def _numeric_tensor(value: Any, name: str, path: Path) -> Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iuf":
            raise ValueError(f"{path}: array {name!r} is not numeric (dtype {value.dtype})")
        if not value.dtype.isnative:
            value = value.astype(value.dtype.newbyteorder("="))
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{path}: tensor {name!r} is not a real number tensor "
                             f"(dtype {str(value.dtype).removeprefix('torch.')})")
        if value.layout != torch.strided:
            raise ValueError(f"{path}: tensor {name!r} is a {value.layout} tensor; save dense "
                             f"tensors")
        return value
    raise ValueError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor; a "
                     f"weights file must hold only named numeric tensors")


def _check_zip(path: Path, what: str) -> zipfile.ZipFile:
    """The zip archive at ``path``, its members' sizes checked against the file's size."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
            NotImplementedError, RuntimeError, struct.error, zlib.error):
        raise _Malformed(f"{path}: not a readable {what} (not a zip archive, or a damaged "
                         f"one)") from None
    size = path.stat().st_size
    try:
        for info in archive.infolist():
            if info.compress_type == zipfile.ZIP_STORED:
                limit = info.compress_size
            elif info.compress_type == zipfile.ZIP_DEFLATED:
                limit = info.compress_size * _DEFLATE_MAX_RATIO + 1024
            else:
                raise _Malformed(f"{path}: not a readable {what}: member {info.filename!r} uses "
                                 f"a compression ({info.compress_type}) gpuwpo does not read")
            if info.file_size > limit or info.compress_size > size:
                raise _Malformed(f"{path}: not a readable {what}: member {info.filename!r} "
                                 f"claims {info.file_size} bytes, more than the file can hold "
                                 f"(damaged or crafted)")
    except BaseException:
        archive.close()
        raise
    return archive


def _read_exact(fh, n: int, path: Path, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise _Malformed(f"{path}: {what} is truncated")
    return data


def _npy_header(fh, path: Path, what: str) -> tuple[np.dtype, tuple[int, ...], bool]:
    """(dtype, shape, fortran order) from a .npy header, checked; ``fh`` then at the data."""
    magic = fh.read(8)
    if len(magic) != 8 or magic[:6] != b"\x93NUMPY" or magic[6] not in (1, 2, 3):
        raise _Malformed(f"{path}: {what} is not a .npy array (no .npy signature)")
    length_size = 2 if magic[6] == 1 else 4
    length = int.from_bytes(_read_exact(fh, length_size, path, what), "little")
    if length > _NPY_MAX_HEADER:
        raise _Malformed(f"{path}: {what} has a .npy header of {length} bytes; damaged")
    raw = _read_exact(fh, length, path, what)
    try:
        header = ast.literal_eval(raw.decode("utf-8" if magic[6] == 3 else "latin1"))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError):
        raise _Malformed(f"{path}: {what} has an unreadable .npy header") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise _Malformed(f"{path}: {what} has an unreadable .npy header")
    shape, fortran = header["shape"], header["fortran_order"]
    if not isinstance(shape, tuple) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape) \
            or not isinstance(fortran, bool):
        raise _Malformed(f"{path}: {what} has an unreadable .npy header")
    try:
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
        raise _Malformed(f"{path}: {what} has an unknown dtype {show(header['descr'])}") \
            from None
    if dtype.hasobject or dtype.kind not in "iuf":
        raise _Malformed(f"{path}: {what} is not numeric (dtype {dtype}); weights are real "
                         f"numbers")
    return dtype, shape, fortran


def _read_npy(fh, available: int, path: Path, what: str) -> np.ndarray:
    """A .npy array from ``fh`` (``available`` bytes in all), its size checked before reading."""
    dtype, shape, fortran = _npy_header(fh, path, what)
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    data_bytes = available - fh.tell()
    if nbytes > data_bytes:
        raise _Malformed(f"{path}: {what} is truncated or its header is wrong: it claims "
                         f"{nbytes} bytes of {dtype} data, the file holds {max(data_bytes, 0)}")
    buf = bytearray(nbytes)
    if fh.readinto(buf) != nbytes:
        raise _Malformed(f"{path}: {what} is truncated")
    array = np.frombuffer(buf, dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran else "C")


def _load_npy(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        array = _read_npy(fh, path.stat().st_size, path, "the file")
    if array.ndim == 0:
        raise _Malformed(f"{path}: holds a single number (a 0-d array), not a weight tensor")
    return {"weight": array}


def _load_npz(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with _check_zip(path, ".npz file") as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            name = info.filename.removesuffix(".npy")
            if not info.filename.endswith(".npy"):
                raise _Malformed(f"{path}: member {info.filename!r} is not a .npy array; an "
                                 f".npz file holds only arrays")
            with archive.open(info) as member:
                out[name] = _read_npy(member, info.file_size, path, f"array {name!r}")
    return out


def _safetensors_header(path: Path) -> None:
    """Check a .safetensors header (its tensors fit the file) before the library allocates."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise _Malformed(f"{path}: not a readable .safetensors file (too short)")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, _SAFETENSORS_MAX_HEADER):
            raise _Malformed(f"{path}: not a readable .safetensors file (its header length "
                             f"{n} exceeds the file)")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise _Malformed(f"{path}: not a readable .safetensors file (its header is not "
                         f"JSON)") from None
    if not isinstance(header, dict):
        raise _Malformed(f"{path}: not a readable .safetensors file (its header is not a JSON "
                         f"object)")
    data_size = size - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and isinstance(
            entry.get("shape"), list) and isinstance(entry.get("data_offsets"), list)
        if not ok:
            raise _Malformed(f"{path}: not a readable .safetensors file (entry {show(name)} "
                             f"is malformed)")
        shape, offsets, dtype = entry["shape"], entry["data_offsets"], entry["dtype"]
        if dtype not in _SAFETENSORS_ITEMSIZE:
            raise _Malformed(f"{path}: tensor {name!r} has a dtype gpuwpo does not read "
                             f"({show(dtype)})")
        ints = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                   for v in (*shape, *offsets))
        if not ints or len(offsets) != 2 or offsets[0] > offsets[1] or offsets[1] > data_size \
                or offsets[1] - offsets[0] != math.prod(shape) * _SAFETENSORS_ITEMSIZE[dtype]:
            raise _Malformed(f"{path}: not a readable .safetensors file (tensor {name!r} does "
                             f"not fit the file: truncated or damaged)")


def _load_safetensors(path: Path) -> Mapping[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _safetensors_header(path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, TypeError, KeyError, RuntimeError):
        raise _Malformed(f"{path}: not a readable .safetensors file (damaged)") from None


def _load_pt(path: Path) -> Mapping[str, Any]:
    with _check_zip(path, ".pt/.pth state_dict (a zip archive written by torch.save)"):
        pass
    try:
        with warnings.catch_warnings():  # torch's warnings about a damaged file: ours is one line
            warnings.simplefilter("ignore")
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found or "Unsupported" in str(err):
            what = f" ({found.group(1)})" if found else ""
            raise _Malformed(f"{path}: holds Python objects{what}, not only tensors; gpuwpo "
                             f"never unpickles arbitrary objects: save model.state_dict(), not "
                             f"the model") from None
        raise _Malformed(f"{path}: not a readable .pt/.pth state_dict (damaged, or not written "
                         f"by torch.save)") from None
    if not isinstance(raw, Mapping):
        raise _Malformed(f"{path}: holds a {type(raw).__name__}, not a state_dict (a dict "
                         f"name -> tensor); save model.state_dict()")
    return raw


#: Extension -> the reader of that format: the file's entries by name, as the format holds them
#: (tensors or numpy arrays), or a refusal naming the file. :func:`load_weights` reads these.
READERS: dict[str, Callable[[Path], Mapping[str, Any]]] = {
    ".safetensors": _load_safetensors, ".pt": _load_pt, ".pth": _load_pt, ".npy": _load_npy,
    ".npz": _load_npz,
}


def named_tensors(entries: Mapping[Any, Any], path: str | os.PathLike) -> dict[str, Tensor]:
    """A reader's entries as named real-valued tensors (the step every format shares).

    Args:
        entries: name -> tensor or numpy array, as a reader of :data:`READERS` returns them.
        path: the file they came from (named in errors).

    Returns:
        name -> tensor: float or integer dtypes, strided, numpy arrays in native byte order.

    Raises:
        ValueError: no entries, a name that is not a string, or an entry that is not a real
            number tensor (complex, bool, sparse, an object), naming the file and the entry.
    """
    path = Path(path)
    if not entries:
        raise ValueError(f"{path}: holds no tensors")
    out = {}
    for name, value in entries.items():
        if not isinstance(name, str):
            raise ValueError(f"{path}: tensor names must be strings, got {show(name)}")
        out[name] = _numeric_tensor(value, name, path)
    return out


def load_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read named weight tensors from a file, on the CPU.

    Formats, by extension (:data:`READERS`):

    * ``.safetensors``: every tensor in the file.
    * ``.pt`` / ``.pth``: a state_dict (a dict name -> tensor) saved by ``torch.save`` (a zip
      archive; torch's legacy pre-1.6 format is not read), read with
      ``torch.load(..., weights_only=True)``: never arbitrary unpickling, so a file holding a
      pickled model or other objects is refused.
    * ``.npy``: one array, returned as ``{"weight": tensor}``.
    * ``.npz``: every array, by its name (read without pickle).

    Sizes are checked against the file's size before anything is allocated: a header (or a zip
    member) that claims more data than the file holds is refused, however much it claims.

    Returns:
        name -> tensor (real-valued: float or integer dtypes).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unknown extension, an unreadable, truncated or damaged file, or content
            that is not named numeric tensors (one line naming the file, in gpuwpo's words).
    """
    path = existing_file(path, "weights file")
    ext = path.suffix.lower()
    if ext not in READERS:
        *others, last = READERS
        raise ValueError(f"{path}: unknown weights file extension {ext!r}; use "
                         f"{', '.join(others)} or {last}")
    try:
        entries = READERS[ext](path)
    except _Malformed:
        raise
    except MemoryError:
        raise ValueError(f"{path}: too large to load into memory") from None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, RuntimeError, KeyError,
            IndexError, OverflowError, NotImplementedError, struct.error, zlib.error):
        raise ValueError(f"{path}: not a readable {ext} file (damaged or truncated)") from None
    return named_tensors(entries, path)
