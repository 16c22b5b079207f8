"""Weight files: named tensors read from checkpoints as training scripts write them, hardened.

Formats: .safetensors; .pt/.pth/.bin/.ckpt written by ``torch.save`` (read with
``weights_only=True``); Hugging Face's sharded checkpoints (an ``*.index.json`` naming each
tensor's shard); .npy and .npz; and a directory holding any of these. Every reader distrusts its
file: sizes are checked against the file's size before anything is allocated (a header or a zip
member that claims more data than the file holds is refused, however much it claims), nothing
is ever unpickled but tensors and plain values, a sharded checkpoint's shards stay inside its
directory, and every refusal is one line in gpuwpo's words naming the file.

:func:`load_weights` reads a file in three steps: the reader of its format (one per format, in
:data:`READERS`, each returning the file's content), the dict of tensors inside it
(:func:`gpuwpo.network.layers.find_state_dict`: a checkpoint's nested ``state_dict``,
``model_state_dict``, ``model``; ``key`` picks one; DataParallel's ``module.`` prefix removed),
and one shared step that turns the entries into named real-valued tensors
(:func:`named_tensors`). A new format is one more reader. What was left out (an epoch, an
optimizer's state, a vocabulary, a mask) is named in one note line, never refused.
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
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..network.layers import find_state_dict
from .common import existing_file, show

__all__ = ["load_weights", "named_tensors", "LoadedWeights", "READERS"]

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


def _load_pt(path: Path) -> Any:
    with _check_zip(path, f"{path.suffix} file written by torch.save"):
        pass
    try:
        with warnings.catch_warnings():  # torch's warnings about a damaged file: ours is one line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found or "Unsupported" in str(err):
            what = f" ({found.group(1)})" if found else ""
            raise _Malformed(f"{path}: holds Python objects{what}, not only tensors and plain "
                             f"values; gpuwpo never unpickles arbitrary objects: save "
                             f"model.state_dict() (alone or in a dict of plain values), not "
                             f"the model") from None
        raise _Malformed(f"{path}: not a readable {path.suffix} file (damaged, or not written "
                         f"by torch.save)") from None


class _Duplicate(ValueError):
    """A JSON object that names a key twice."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


def _shard_path(index: Path, shard: Any) -> Path:
    """The file a sharded checkpoint's index names, checked to lie in the index's directory."""
    what = f"{index}: not a readable index of a sharded checkpoint"
    if not isinstance(shard, str) or not shard:
        raise _Malformed(f"{what} (a shard is named by {show(shard)}, not a file name)")
    relative = PurePosixPath(shard)
    if relative.is_absolute() or ".." in relative.parts or "\\" in shard or "\0" in shard \
            or PureWindowsPath(shard).drive:
        raise _Malformed(f"{what} (shard {show(shard)} is outside the index's directory)")
    if not shard.lower().endswith(_SHARD_SUFFIXES):
        raise _Malformed(f"{what} (shard {show(shard)} is not a "
                         f"{'/'.join(_SHARD_SUFFIXES)} file)")
    full = index.parent / relative
    try:  # a link that leads out of the directory is refused like '..'
        inside = full.resolve().is_relative_to(index.parent.resolve())
    except (OSError, RuntimeError):
        inside = False
    if not inside:
        raise _Malformed(f"{what} (shard {show(shard)} is outside the index's directory)")
    if not full.is_file():
        raise _Malformed(f"{index}: shard {shard!r} is missing (no file {full})")
    return full


def _load_index(path: Path) -> dict[str, Any]:
    """A sharded checkpoint (Hugging Face's ``*.index.json``: {"weight_map": {name: shard}}):
    every tensor from its shard, each shard read by its own reader, in the index's order.

    Refused: an index that is not JSON or too large, a shard outside the index's directory (an
    absolute path, '..', a link leading out), a missing shard, a tensor the index names twice or
    that two shards hold, and an index and shards that disagree."""
    what = f"{path}: not a readable index of a sharded checkpoint"
    size = path.stat().st_size
    if size > _INDEX_MAX_BYTES:
        raise _Malformed(f"{what} ({size} bytes; an index is at most {_INDEX_MAX_BYTES})")
    try:
        document = json.loads(path.read_bytes().decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _Duplicate as err:
        raise _Malformed(f"{what} (it names {show(err.args[0])} twice)") from None
    except (ValueError, RecursionError):
        raise _Malformed(f"{what} (not JSON)") from None
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise _Malformed(f"{what} (no \"weight_map\" object naming each tensor's shard)")
    shards: dict[str, Path] = {}
    for shard in weight_map.values():
        if not isinstance(shard, str) or shard not in shards:
            shards[shard] = _shard_path(path, shard)
    out: dict[str, Any] = {}
    held_by: dict[str, str] = {}
    for shard, full in shards.items():
        try:
            entries = _read(full)
        except ValueError as err:  # the shard's own line, under the index's name
            raise _Malformed(f"{path}: {err}") from None
        if not isinstance(entries, Mapping):
            raise _Malformed(f"{path}: shard {shard!r} holds a {type(entries).__name__}, not a "
                             f"dict of tensors")
        for name, value in entries.items():
            if not isinstance(name, str) or not isinstance(value, Tensor):
                raise _Malformed(f"{path}: shard {shard!r} holds {show(name)}, a "
                                 f"{type(value).__name__}: shards hold only named tensors")
            if name in held_by:
                raise _Malformed(f"{path}: tensor {name!r} is in two shards, {held_by[name]!r} "
                                 f"and {shard!r}")
            if weight_map.get(name) != shard:
                where = (f"the index puts it in {weight_map[name]!r}" if name in weight_map
                         else "the index does not name it")
                raise _Malformed(f"{path}: shard {shard!r} holds {name!r}, but {where}")
            held_by[name] = shard
            out[name] = value
    missing = [name for name in weight_map if name not in held_by]
    if missing:
        raise _Malformed(f"{path}: the index names {len(missing)} tensor(s) that no shard holds: "
                         f"{', '.join(map(repr, missing[:5]))}{' ...' if len(missing) > 5 else ''}")
    return {name: out[name] for name in weight_map}


#: The file name's ending -> the reader of that format: the file's content as the format holds
#: it (a mapping, possibly nested, of tensors or numpy arrays and other entries), or a refusal
#: naming the file. :func:`load_weights` reads these.
READERS: dict[str, Callable[[Path], Any]] = {
    ".safetensors": _load_safetensors, ".pt": _load_pt, ".pth": _load_pt, ".bin": _load_pt,
    ".ckpt": _load_pt, ".npy": _load_npy, ".npz": _load_npz, ".index.json": _load_index,
}
#: What a shard of a sharded checkpoint may be.
_SHARD_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
#: The largest index of a sharded checkpoint read (an index of a 100 B-parameter model is a few
#: hundred kB).
_INDEX_MAX_BYTES = 64 << 20
#: Hugging Face's file names, in the order its loaders look for them in a directory.
_HF_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
             "pytorch_model.bin.index.json")


def _format_of(path: Path) -> str | None:
    """The key of :data:`READERS` that ``path``'s name ends with (the longest), or None."""
    name = path.name.lower()
    return max((ext for ext in READERS if name.endswith(ext)), key=len, default=None)


def _read(path: Path) -> Any:
    """The content of one weights file by its reader, every failure one line naming it."""
    ext = _format_of(path)
    if ext is None:
        *others, last = READERS
        hint = " (a results file? it goes to 'gpuwpo evaluate RESULTS WEIGHTS')" \
            if path.suffix.lower() == ".json" else ""
        raise ValueError(f"{path}: unknown weights file extension {path.suffix.lower()!r}; use "
                         f"{', '.join(others)} or {last}, or a directory holding one{hint}")
    try:
        return READERS[ext](path)
    except _Malformed:
        raise
    except MemoryError:
        raise ValueError(f"{path}: too large to load into memory") from None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, RuntimeError, KeyError,
            IndexError, OverflowError, NotImplementedError, struct.error, zlib.error):
        raise ValueError(f"{path}: not a readable {ext} file (damaged or truncated)") from None


def _weights_file_in(directory: Path) -> Path:
    """The weights file of a directory: Hugging Face's names first (model.safetensors, its
    sharded index, pytorch_model.bin, its index), else its one index or its one weights file."""
    for name in _HF_NAMES:
        if (directory / name).is_file():
            return directory / name
    try:
        files = sorted(p for p in directory.iterdir() if p.is_file() and _format_of(p))
    except OSError as err:
        raise ValueError(f"{directory} is a directory that cannot be read ({err.strerror})") \
            from None
    indexes = [p for p in files if _format_of(p) == ".index.json"]
    if len(indexes) == 1:
        return indexes[0]
    if len(files) == 1:
        return files[0]
    if not files:
        raise ValueError(f"{directory} is a directory holding no weights file ({', '.join(READERS)}"
                         f"; Hugging Face's {_HF_NAMES[0]} or {_HF_NAMES[2]})")
    names = [p.name for p in files]
    raise ValueError(f"{directory} is a directory holding {len(files)} weights files "
                     f"({', '.join(names[:6])}{' ...' if len(names) > 6 else ''}); name the "
                     f"one to read")


def _real_valued(entries: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The entries without torch tensors that are not real numbers in strided memory (a mask,
    a complex buffer, a sparse tensor): (kept, "name (what)" for each left out)."""
    kept, left = {}, []
    for name, value in entries.items():
        if isinstance(value, Tensor) and (value.is_complex() or value.dtype == torch.bool
                                          or value.layout != torch.strided):
            kind = str(value.dtype).removeprefix("torch.")
            if value.layout != torch.strided:
                kind = f"{kind}, {str(value.layout).removeprefix('torch.')}"
            left.append(f"{name} ({kind})")
        else:
            kept[name] = value
    return kept, left


def named_tensors(entries: Mapping[Any, Any], path: str | os.PathLike) -> dict[str, Tensor]:
    """Entries as named real-valued tensors (the step every format shares).

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


class LoadedWeights(dict):
    """name -> tensor, as :func:`load_weights` read them (a plain dict to use), and how.

    Attributes:
        source: the file read (a directory's weights file; the index of a sharded checkpoint).
        note: one line for the user (the command line prints it), or None where there is
            nothing to say: which dict of a checkpoint was read, the entries that are not
            weights and were ignored (epoch, optimizer state, char2idx, masks, ...), a
            DataParallel prefix removed, the file a directory was read from.
    """

    def __init__(self, tensors: Mapping[str, Tensor], source: Path, note: str | None) -> None:
        super().__init__(tensors)
        self.source = source
        self.note = note


def load_weights(path: str | os.PathLike, *, key: str | None = None) -> LoadedWeights:
    """Read named weight tensors from a file, a sharded checkpoint or a directory, on the CPU.

    Formats, by the file name's ending (:data:`READERS`):

    * ``.safetensors``: every tensor in the file.
    * ``.pt``, ``.pth``, ``.bin`` (Hugging Face's ``pytorch_model.bin``), ``.ckpt`` (Lightning):
      what ``torch.save`` wrote (a zip archive; torch's legacy pre-1.6 format is not read), read
      with ``torch.load(..., weights_only=True)``: never arbitrary unpickling, so a file holding
      a pickled model or other objects is refused.
    * ``.index.json``: a sharded checkpoint (``model.safetensors.index.json``,
      ``pytorch_model.bin.index.json``): every tensor of its shards.
    * ``.npy``: one array, returned as ``{"weight": tensor}``; ``.npz``: every array, by its
      name (read without pickle).
    * a directory: Hugging Face's ``model.safetensors``, its index, ``pytorch_model.bin`` or its
      index, in that order, else its one index or its one weights file.

    A checkpoint may hold its tensors in a nested dict, beside other things (``{"state_dict":
    ..., "epoch": 3}``, ``{"model_state_dict": ..., "optimizer_state_dict": ...}``):
    :func:`gpuwpo.network.layers.find_state_dict` finds it (``key`` picks one where several
    could be meant) and removes DataParallel's ``module.`` prefix, so that the names are the
    model's own. What is left out (entries that are not tensors, boolean, complex and sparse
    tensors) is named in :attr:`LoadedWeights.note`, one line.

    Sizes are checked against the file's size before anything is allocated: a header (or a zip
    member) that claims more data than the file holds is refused, however much it claims.

    Args:
        path: the file or directory.
        key: the dotted path ("a.b") of the dict of tensors inside a checkpoint, where several
            could be meant.

    Returns:
        A :class:`LoadedWeights`: name -> tensor (real-valued: float or integer dtypes), with
        its ``source`` and ``note``.

    Raises:
        FileNotFoundError: no such file or directory.
        ValueError: an unknown extension, an unreadable, truncated or damaged file, content
            that is not named numeric tensors, several dicts of tensors and no ``key``, or a
            ``key`` that names none (one line naming the file, in gpuwpo's words).
    """
    given = Path(path)
    if given.is_dir():
        source = _weights_file_in(given)
    else:
        source = existing_file(given, "weights file")
    raw = _read(source)
    try:
        entries, notes = find_state_dict(raw, key)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    entries, left = _real_valued(entries)
    if left:
        if not entries:
            raise ValueError(f"{source}: holds no real-valued tensors (ignored "
                             f"{', '.join(left[:8])}{' ...' if len(left) > 8 else ''})")
        notes.append(f"ignored {len(left)} tensor(s) that are not real numbers: "
                     f"{', '.join(left[:8])}{' ...' if len(left) > 8 else ''}")
    tensors = named_tensors(entries, source)
    if source != given:
        notes.insert(0, f"read {source.name}")
    note = f"{given}: {'; '.join(notes)}" if notes else None
    return LoadedWeights(tensors, source, note)
