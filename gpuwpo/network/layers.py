"""Which tensors of a model or a checkpoint are layers to program: one rule, in one place.

A *layer* is an analogue-mappable matrix, a crossbar's worth of weights:

* a Linear weight ``[out, in]`` (also MultiheadAttention's ``in_proj_weight`` and
  ``q/k/v_proj_weight``: matrix products too);
* a Conv1d/2d/3d weight ``[out, in, k...]``, mapped as ``out x (in * prod k)``, the way aihwkit's
  analogue convolutions unroll it;
* an RNN/LSTM/GRU ``weight_ih_l<k>`` / ``weight_hh_l<k>`` (``_reverse`` too, and an LSTM's
  projection ``weight_hr_l<k>``), each its own matrix ``[gates * hidden, in]``.

Biases, normalisations (scales, shifts, running statistics), embedding tables (lookups, not
matrix products), integer and boolean tensors and single numbers stay digital; each skipped
tensor carries its reason. :func:`select_weights` (the tensors to program),
:func:`describe_layers` (the same decision as a table, for ``gpuwpo layers`` and optimize's
summary line), :func:`gpuwpo.optimize_network` and :func:`gpuwpo.program_model` all decide here.

An ``nn.Module`` is judged by its modules' types (an ``nn.Embedding``'s weight is an embedding
whatever it is called); a mapping (a state_dict, a checkpoint) carries no types, and is judged by
names and shapes: ``<module>.weight`` of 2 or more dimensions is a Linear (2-D) or Conv (3-D and
more) weight unless its module's name says embedding (``embed``, ``wte``, ``wpe``, ``shared``,
...); a module whose ``weight`` is 1-D, or that keeps running statistics, is a normalisation.
Modules of other types are judged by the names, so that a model and its state_dict agree.

``include`` / ``exclude`` are regular expressions on the names. A default layer is kept when an
``include`` pattern is found anywhere in its name (``re.search``; no ``include``: every default
layer) and no ``exclude`` pattern is; a tensor skipped by default is programmed when an
``include`` pattern matches its *whole* name (``re.fullmatch``) and it is a floating-point array
(1-D or more): ``--include encoder`` narrows the layers to the encoder's, ``--include
'encoder\\..*'`` also programs the encoder's biases and norms, ``--include 'emb\\.weight'`` adds
one table. Integer, boolean and complex tensors and single numbers are never programmed.

Checkpoints arrive as training scripts write them: :func:`find_state_dict` finds the dict of
tensors inside one (``state_dict``, ``model_state_dict``, ``model``, Lightning's ``state_dict``;
``key="a.b"`` picks one), and removes DataParallel's ``module.`` prefix (and torch.compile's
``_orig_mod.``), so that the names are the model's own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["select_weights", "describe_layers", "find_state_dict", "mapped_shape", "as_matrix",
           "LayerTable", "LayerInfo", "SkippedTensor", "PROGRAMMABLE_MODULES", "KINDS",
           "SKIP_CATEGORIES"]

#: Module types whose weights are layers whatever their names (the crossbar-mapped layers).
PROGRAMMABLE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.RNNBase, nn.RNNCellBase)

#: The kinds of layer, in the order the summary counts them.
KINDS = ("conv", "rnn", "linear", "other")

#: Why a tensor is skipped: category -> (the summary's plural, the table's reason).
SKIP_CATEGORIES = {
    "bias": ("biases", "bias: added digitally after the crossbar"),
    "norm": ("norms", "normalisation (scale, shift or running statistics)"),
    "embedding": ("embeddings", "embedding table: a lookup, not a matrix product"),
    "vector": ("vectors", "1-D: a vector, not a matrix (layers have ndim >= 2)"),
    "scalar": ("scalars", "a single number (0-d): not a matrix (layers have ndim >= 2)"),
    "empty": ("empty", "empty: nothing to program"),
    "integer": ("integer", "integer tensor (indices, counters or codes), not weights"),
    "boolean": ("boolean", "boolean tensor (a mask), not weights"),
    "complex": ("complex", "complex tensor: weights are real numbers"),
    "not numeric": ("not numeric", "not numbers"),
    "other": ("other", "not a Linear, Conv or RNN weight: include it by its full name to "
                       "program it"),
    "tied": ("tied", "the same tensor as a layer above (tied weights)"),
    "excluded": ("excluded", "matches an --exclude pattern"),
    "not included": ("not included", "matches no --include pattern"),
}

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
          *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
_RNN_WEIGHT = re.compile(r"weight_(ih|hh|hr)(_l\d+)?(_reverse)?")
_PROJ_WEIGHT = re.compile(r"(in|q|k|v)_proj_weight")
_NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")
#: The last part of an embedding table's module name (HF: word/position/token_type_embeddings,
#: embed_tokens; GPT-2: wte, wpe; T5/BART: shared; T5: relative_attention_bias). Only the last
#: part: ``time_embed.0`` or ``patch_embed.proj`` are Linear/Conv layers of an embedding block.
_EMBEDDING_MODULE = re.compile(r"embed|^(wte|wpe|emb|tok_emb|pos_emb|shared|"
                               r"relative_attention_bias)$", re.I)
#: A tensor attribute that is a table itself (ViT's pos_embed, HF's position_embeddings).
_EMBEDDING_ATTR = re.compile(r"embed|^(pos_emb|tok_emb|wte|wpe)$", re.I)
#: Wrappers' prefixes on every name of a checkpoint: DataParallel/DDP, torch.compile.
_WRAPPER_PREFIXES = {"module.": "DataParallel/DistributedDataParallel",
                     "_orig_mod.": "torch.compile"}
#: How deep find_state_dict looks into nested checkpoints (and where a cycle stops).
_MAX_DEPTH = 8


# --------------------------------------------------------------------------------------------
# The mapped shape
# --------------------------------------------------------------------------------------------


def mapped_shape(shape: Sequence[int]) -> tuple[int, int]:
    """A layer's shape on the crossbar, ``(out, in)``.

    ``[out, in]`` stays; a Conv weight ``[out, in, k...]`` is ``(out, in * prod k)`` (aihwkit's
    unrolled convolution); a 1-D tensor included by name ``[n]`` is one column ``(n, 1)`` (an
    analogue bias column's layout).

    Raises:
        ValueError: a 0-d shape (a single number is no matrix).
    """
    shape = tuple(int(n) for n in shape)
    if not shape:
        raise ValueError("a single number (0-d) has no crossbar shape")
    if len(shape) == 1:
        return shape[0], 1
    return shape[0], math.prod(shape[1:])


def as_matrix(weights: Tensor) -> Tensor:
    """``weights`` viewed as the crossbar's matrix, shape :func:`mapped_shape` (a view where the
    memory allows, else a copy); ``result.reshape(weights.shape)`` gives them back."""
    return weights.reshape(mapped_shape(weights.shape))


# --------------------------------------------------------------------------------------------
# Checkpoints: the dict of tensors inside
# --------------------------------------------------------------------------------------------


def _is_array(value: Any) -> bool:
    return isinstance(value, (Tensor, np.ndarray))


def _is_optimizer_state(node: Mapping) -> bool:
    # torch.optim.Optimizer.state_dict(): its tensors (moments) are keyed by parameter index.
    return "state" in node and "param_groups" in node


def _type_name(value: Any) -> str:
    if isinstance(value, Mapping) and _is_optimizer_state(value):
        return "optimizer state"
    if isinstance(value, Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} tensor"
    return type(value).__name__


def _dotted(path: Sequence[str]) -> str:
    return ".".join(path)


def _listing(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _candidates(node: Mapping, path: tuple[str, ...], out: list[tuple[str, ...]],
                seen: set[int], min_ndim: int) -> None:
    """Paths of the mappings under ``node`` that hold tensors of ``min_ndim`` or more
    dimensions; a dict met again (saved twice, or inside itself) counts once."""
    if len(path) > _MAX_DEPTH or id(node) in seen or _is_optimizer_state(node):
        return
    seen.add(id(node))
    if any(isinstance(k, str) and _is_array(v) and v.ndim >= min_ndim for k, v in node.items()):
        out.append(path)
    for k, v in node.items():
        if isinstance(k, str) and isinstance(v, Mapping):
            _candidates(v, (*path, k), out, seen, min_ndim)


def _resolve(node: Mapping, key: str, path: tuple[str, ...] = ()) -> tuple[Any, tuple[str, ...]]:
    """The entry ``key`` ("a.b.c", a dotted path) of ``node``; a key holding dots is found
    whole. Returns (value, path as keys), or raises a KeyError whose message names the entries
    where the path went wrong."""
    if key in node:
        return node[key], (*path, key)
    deeper = None  # where a longer match went wrong: the entries the user needs to see
    for i in [i for i, c in enumerate(key) if c == "."][::-1]:
        head, rest = key[:i], key[i + 1:]
        if head in node and isinstance(node[head], Mapping) and rest:
            try:
                return _resolve(node[head], rest, (*path, head))
            except KeyError as err:
                deeper = deeper or err
    if deeper is not None:
        raise deeper
    where = f"'{_dotted(path)}'" if path else "the top level"
    keys = [str(k) for k in node]
    raise KeyError(f"has no entry {key!r} at {where}; its entries are "
                   f"{_listing(keys) if keys else 'none'}")


def find_state_dict(
    checkpoint: Mapping[str, Any],
    key: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The dict of tensors inside a checkpoint as training scripts write it, and what was left.

    A checkpoint is a state_dict (name -> tensor) or a dict holding one beside other things:
    ``{"model_state_dict": {...}, "optimizer_state_dict": {...}, "epoch": 3, "char2idx":
    {...}}``, Lightning's ``{"state_dict": {...}, "optimizer_states": [...], ...}``,
    ``{"model": {...}}``. The dict meant is the one mapping (the top level or one nested dict)
    that holds tensors of 1 or more dimensions (or, where none does, any tensors); an
    optimizer's state (its tensors keyed by parameter index) is never meant, and a dict met
    twice counts once. Where several could be meant (``model`` and ``ema_model``), ``key``
    ("a.b", a dotted path) picks one. Entries that are not tensors (or
    numpy arrays) are left out, and so is DataParallel's ``module.`` prefix (torch.compile's
    ``_orig_mod.``) where every name carries it, so that the names are the model's own.

    Args:
        checkpoint: the loaded checkpoint (a mapping, possibly nested).
        key: the dotted path of the dict of tensors, or None to find it.

    Returns:
        (name -> tensor or numpy array, in the checkpoint's order; notes: one short phrase for
        each thing done or left out, e.g. "read the tensors of 'model_state_dict'", empty for
        a plain state_dict).

    Raises:
        ValueError: no dict of tensors, several (naming them, with how ``key`` picks one), or a
            ``key`` that names nothing or no dict of tensors (naming the entries there).
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"holds a {type(checkpoint).__name__}, not a state_dict (a dict name -> "
                         f"tensor); save model.state_dict()")
    notes: list[str] = []
    if key is not None:
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a dotted path such as 'model' or 'a.b', got {key!r}")
        try:
            node, path = _resolve(checkpoint, key)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        if not isinstance(node, Mapping):
            raise ValueError(f"entry {key!r} is a {_type_name(node)}, not a dict of tensors")
    else:
        found: list[tuple[str, ...]] = []
        _candidates(checkpoint, (), found, set(), 1)
        if not found:  # only single numbers (then a state_dict of counters, or a scalar "layer")
            _candidates(checkpoint, (), found, set(), 0)
        if not found:
            entries = [f"{k} ({_type_name(v)})" for k, v in checkpoint.items()]
            raise ValueError("holds no tensors" + (f" (its entries: {_listing(entries)})"
                                                   if entries else ""))
        if len(found) > 1:
            def count(p: tuple[str, ...]) -> int:
                node = checkpoint
                for k in p:
                    node = node[k]
                return sum(isinstance(k, str) and _is_array(v) for k, v in node.items())

            named = [f"{_dotted(p)!r} ({count(p)} tensors)" if p else
                     f"the top level ({count(p)} tensors)" for p in found]
            example = next((_dotted(p) for p in found if p), "model")
            raise ValueError(f"holds {len(found)} dicts of tensors that could be the model's: "
                             f"{_listing(named)}; pick one with --key {example} (key="
                             f"{example!r} in Python)")
        path = found[0]
        node = checkpoint
        for k in path:
            node = node[k]
    # What is left out: the other entries beside the path, and non-tensors inside the dict.
    ignored: list[str] = []
    parent = checkpoint
    for depth, k in enumerate(path):
        ignored += [f"{_dotted((*path[:depth], str(o)))} ({_type_name(v)})"
                    for o, v in parent.items() if o != k]
        parent = parent[k]
    if path:
        notes.append(f"read the tensors of {_dotted(path)!r}")
    tensors = {}
    for k, v in node.items():
        if isinstance(k, str) and _is_array(v):
            tensors[k] = v
        else:
            ignored.append(f"{_dotted((*path, str(k)))} ({_type_name(v)})")
    if ignored:
        notes.append(f"ignored {len(ignored)} entr{'y' if len(ignored) == 1 else 'ies'} that "
                     f"{'is' if len(ignored) == 1 else 'are'} not weights: {_listing(ignored)}")
    if not tensors:
        raise ValueError(f"entry {_dotted(path)!r} holds no tensors")
    # Until none is left (DataParallel around a compiled model: 'module._orig_mod.'), so that
    # reading names already read changes nothing.
    removed = []
    while stripped := next((p for p in _WRAPPER_PREFIXES if all(
            name.startswith(p) and len(name) > len(p) for name in tensors)), None):
        tensors = {name[len(stripped):]: v for name, v in tensors.items()}
        removed.append(stripped)
    if removed:
        notes.append(f"removed the prefix {''.join(removed)!r} ("
                     f"{', '.join(dict.fromkeys(_WRAPPER_PREFIXES[p] for p in removed))}) "
                     f"from every name")
    return tensors, notes


# --------------------------------------------------------------------------------------------
# The rule
# --------------------------------------------------------------------------------------------


def _split(name: str) -> tuple[str, str]:
    """(module path, attribute) of a tensor's name: "enc.0.weight" -> ("enc.0", "weight")."""
    module, _, attr = name.rpartition(".")
    return module, attr


def _norm_modules(tensors: Mapping[str, Tensor]) -> set[str]:
    """Module paths that are normalisations by their tensors: a 1-D ``weight`` or running
    statistics (what BatchNorm, LayerNorm, GroupNorm and RMSNorm leave in a state_dict)."""
    norms = set()
    for name, t in tensors.items():
        module, attr = _split(name)
        if attr in _NORM_STATS or (attr == "weight" and getattr(t, "ndim", 0) == 1):
            norms.add(module)
    return norms


def _by_name(name: str, t: Tensor, norms: set[str]) -> str:
    """A floating tensor's kind ("linear", "conv", "rnn") or skip category, by its name and
    shape (1 or more dimensions)."""
    module, attr = _split(name)
    if module in norms:
        return "norm"
    if "bias" in attr:
        return "bias"
    if attr == "weight" and t.ndim >= 2:
        if t.ndim == 2 and _EMBEDDING_MODULE.search(module.rpartition(".")[2]):
            return "embedding"
        return "linear" if t.ndim == 2 else "conv"
    if t.ndim == 2 and _RNN_WEIGHT.fullmatch(attr):
        return "rnn"
    if t.ndim == 2 and _PROJ_WEIGHT.fullmatch(attr):
        return "linear"
    if _EMBEDDING_ATTR.search(attr):
        return "embedding"
    return "vector" if t.ndim == 1 else "other"


def _by_module(module: nn.Module, attr: str) -> str | None:
    """A tensor's kind or skip category by its module's type; None: judge it by its name."""
    if isinstance(module, _NORMS):
        return "norm"
    if isinstance(module, _EMBEDDINGS):
        return "embedding" if attr == "weight" else None
    if isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
        return "rnn" if _RNN_WEIGHT.fullmatch(attr) else None
    if isinstance(module, PROGRAMMABLE_MODULES) and attr == "weight":
        return "linear" if isinstance(module, nn.Linear) else "conv"
    if isinstance(module, nn.Bilinear):  # [out, in1, in2]: no single crossbar matrix
        return "other" if attr == "weight" else None
    return None


def _dtype_category(t: Tensor | np.ndarray) -> str | None:
    if isinstance(t, np.ndarray):
        return {"f": None, "b": "boolean", "c": "complex", "i": "integer",
                "u": "integer"}.get(t.dtype.kind, "not numeric")
    if t.is_complex():
        return "complex"
    if t.dtype == torch.bool:
        return "boolean"
    return None if t.is_floating_point() else "integer"


def _patterns(value: str | Sequence[str] | None, what: str) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    for p in items:
        if not isinstance(p, str):
            raise TypeError(f"{what} must be a regular expression or a list of them, got {p!r}")
        try:
            re.compile(p)
        except re.error as err:
            raise ValueError(f"{what} pattern {p!r} is not a valid regular expression: {err}") \
                from err
    return items


@dataclass(frozen=True)
class LayerInfo:
    """One tensor to program.

    Attributes:
        name: its name in the model / state_dict.
        shape: its shape as stored.
        mapped: its shape on the crossbar ``(out, in)`` (:func:`mapped_shape`).
        kind: "linear", "conv", "rnn" or "other" (a tensor included by name).
        numel: its number of weights.
        peak_to_std: max|W| / std(W) (population std): how heavy its tails are; inf for a
            constant tensor.
    """

    name: str
    shape: tuple[int, ...]
    mapped: tuple[int, int]
    kind: str
    numel: int
    peak_to_std: float


@dataclass(frozen=True)
class SkippedTensor:
    """One tensor left digital, and why.

    Attributes:
        name, shape: as in the model / state_dict.
        dtype: its dtype's name (e.g. "float32", "int64").
        category: a key of :data:`SKIP_CATEGORIES` ("bias", "norm", "embedding", ...).
        reason: the category's words, made specific where it can be (the patterns, the tied
            layer).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    category: str
    reason: str


def _count(n: int) -> str:
    """A number of weights, short: 288, 12.3 k, 9.2 M, 1.1 G."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e4, "k")):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


@dataclass(frozen=True)
class LayerTable:
    """What would be programmed (in the model's order) and what stays digital, with why.

    :meth:`summary` is the one line ``gpuwpo optimize`` prints, :meth:`table` what ``gpuwpo
    layers`` prints.
    """

    layers: tuple[LayerInfo, ...]
    skipped: tuple[SkippedTensor, ...]
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @property
    def numel(self) -> int:
        """The number of weights programmed."""
        return sum(layer.numel for layer in self.layers)

    def summary(self) -> str:
        """One line, e.g. ``16 layer(s), 9.2 M weights (7 conv, 8 rnn, 1 linear); skipped 20
        (biases 16, norms 4)``."""
        kinds = [f"{n} {k}" for k in KINDS
                 if (n := sum(layer.kind == k for layer in self.layers))]
        text = f"{len(self.layers)} layer(s), {_count(self.numel)} weights"
        text += f" ({', '.join(kinds)})" if kinds else ""
        if self.skipped:
            why = [f"{SKIP_CATEGORIES[c][0]} {n}" for c in SKIP_CATEGORIES
                   if (n := sum(s.category == c for s in self.skipped))]
            text += f"; skipped {len(self.skipped)} ({', '.join(why)})"
        return text

    def table(self) -> str:
        """The programmed layers (name, shape, shape as mapped, kind, weights, max|W|/std),
        then the skipped tensors with their reasons, as aligned text."""
        def shape(s: Sequence[int]) -> str:
            return "(" + ", ".join(map(str, s)) + ("," if len(s) == 1 else "") + ")"

        rows = [f"programmed: {len(self.layers)} layer(s), {_count(self.numel)} weights"]
        if self.layers:
            width = max(len("name"), *(len(x.name) for x in self.layers))
            shapes = max(len("shape"), *(len(shape(x.shape)) for x in self.layers))
            rows.append(f"  {'name':<{width}}  {'shape':<{shapes}}  {'as mapped':>15}  "
                        f"{'kind':<6}  {'weights':>10}  {'max|W|/std':>10}")
            for x in self.layers:
                mapped = f"{x.mapped[0]} x {x.mapped[1]}"
                rows.append(f"  {x.name:<{width}}  {shape(x.shape):<{shapes}}  {mapped:>15}  "
                            f"{x.kind:<6}  {x.numel:>10}  {x.peak_to_std:>10.2f}")
        rows.append(f"skipped: {len(self.skipped)} tensor(s)")
        if self.skipped:
            width = max(len("name"), *(len(s.name) for s in self.skipped))
            shapes = max(len("shape"), *(len(shape(s.shape)) for s in self.skipped))
            rows.append(f"  {'name':<{width}}  {'shape':<{shapes}}  {'dtype':<9}  reason")
            for s in self.skipped:
                rows.append(f"  {s.name:<{width}}  {shape(s.shape):<{shapes}}  {s.dtype:<9}  "
                            f"{s.reason}")
            rows.append("  (an --include pattern that matches a skipped tensor's whole name "
                        "programs it, if it is a floating-point array)")
        return "\n".join(rows)


def _tensors_of(model_or_weights, key: str | None
                ) -> tuple[dict[str, Tensor | np.ndarray], dict[str, str]]:
    """(name -> tensor, name -> kind or category fixed by its module's type)."""
    if isinstance(model_or_weights, nn.Module):
        modules = dict(model_or_weights.named_modules(remove_duplicate=False))
        tensors, by_type = {}, {}
        for name, t in model_or_weights.state_dict(keep_vars=True).items():
            tensors[name] = t.detach()
            module, attr = _split(name)
            decided = _by_module(modules[module], attr) if module in modules else None
            if decided is not None:
                by_type[name] = decided
        return tensors, by_type
    if isinstance(model_or_weights, Mapping):
        tensors, _ = find_state_dict(model_or_weights, key)
        return {name: t.detach() if isinstance(t, Tensor) else t
                for name, t in tensors.items()}, {}
    raise TypeError(f"expected an nn.Module, a state_dict or a mapping name -> tensor, got "
                    f"{type(model_or_weights).__name__}")


def _decide(model_or_weights, include, exclude, key
            ) -> tuple[dict[str, Any], list[tuple[str, bool, str]], list[str], list[str]]:
    """The rule: (name -> tensor, [(name, programmed, kind or skip category)] in the model's
    order, include, exclude). A programmed tensor's category is one of KINDS; a skipped one's a
    key of SKIP_CATEGORIES, or "tied:<name of the layer>"."""
    inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")
    tensors, by_type = _tensors_of(model_or_weights, key)
    norms = _norm_modules(tensors)
    decisions: list[tuple[str, bool, str]] = []
    seen: dict[tuple, str] = {}  # storage identity -> the layer programmed with it
    for name, t in tensors.items():
        _, attr = _split(name)
        # Never programmed, whatever the patterns: not real numbers, a single number, nothing.
        never = _dtype_category(t) or ("scalar" if t.ndim == 0 else None) or (
            "empty" if t.numel() == 0 else None)
        if by_type.get(name) == "norm" or attr in _NORM_STATS:
            category = "norm"
        else:
            category = never or by_type.get(name) or _by_name(name, t, norms)
        if category in KINDS and category != "other":  # a default layer
            if inc and not any(re.search(p, name) for p in inc):
                programmed, category = False, "not included"
            elif any(re.search(p, name) for p in exc):
                programmed, category = False, "excluded"
            else:
                programmed = True
        elif never is None and any(re.fullmatch(p, name) for p in inc) and not any(
                re.search(p, name) for p in exc):
            programmed, category = True, "other"  # included by its whole name
        else:
            programmed = False
        if programmed and isinstance(t, Tensor) and t.device.type != "meta":
            identity = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
            if identity[0] and identity in seen:
                programmed, category = False, f"tied:{seen[identity]}"
            else:
                seen[identity] = name
        decisions.append((name, programmed, category))
    return tensors, decisions, inc, exc


def _skip_reason(category: str, inc: Sequence[str], exc: Sequence[str]) -> tuple[str, str]:
    """(category, reason) of a skipped tensor."""
    if category.startswith("tied:"):
        return "tied", f"the same tensor as {category[5:]!r} (tied weights)"
    if category == "excluded":
        return category, "matches --exclude " + " ".join(f"'{p}'" for p in exc)
    if category == "not included":
        return category, "matches no --include pattern: " + " ".join(f"'{p}'" for p in inc)
    return category, SKIP_CATEGORIES[category][1]


def _shape_of(t) -> tuple[int, ...]:
    return tuple(int(n) for n in t.shape)


def _dtype_of(t) -> str:
    return str(t.dtype).removeprefix("torch.")


def select_weights(
    model_or_weights: nn.Module | Mapping[str, Any],
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    *,
    key: str | None = None,
) -> dict[str, Tensor]:
    """The weights to program, by name, in the model's order (the module docstring's rule).

    Args:
        model_or_weights: an ``nn.Module``, a state_dict, a mapping name -> tensor, or a
            checkpoint holding one (:func:`find_state_dict`: ``module.`` prefixes removed).
        include, exclude: a regular expression or a list of them (the module docstring).
        key: with a checkpoint, the dotted path of its dict of tensors when several could be
            meant.

    Returns:
        name -> tensor (detached; for a module, sharing the parameters' storage; numpy arrays
        as tensors).

    Raises:
        ValueError: nothing is programmed (naming the patterns and the skipped tensors with
            their reasons), a bad pattern, or a checkpoint whose tensors cannot be found.
        TypeError: an input that is neither a module nor a mapping.
    """
    tensors, decisions, inc, exc = _decide(model_or_weights, include, exclude, key)
    selected = {name: tensors[name] for name, programmed, _ in decisions if programmed}
    if not selected:
        skipped = [f"{name!r} ({_skip_reason(c, inc, exc)[1]})" for name, _, c in decisions]
        raise ValueError(
            f"no layers to program: include={inc or None} exclude={exc or None} matched none of "
            f"the {len(tensors)} tensor(s)" + (f"; skipped {_listing(skipped, 10)}"
                                               if skipped else ""))
    return {name: t if isinstance(t, Tensor) else torch.from_numpy(np.ascontiguousarray(t))
            for name, t in selected.items()}


def describe_layers(
    model_or_weights: nn.Module | Mapping[str, Any],
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    *,
    key: str | None = None,
) -> LayerTable:
    """What :func:`select_weights` programs and what it leaves digital, as a table.

    Args: as :func:`select_weights`.

    Returns:
        A :class:`LayerTable`: the layers (name, shape, shape as mapped, kind, weights,
        max|W|/std) in the model's order, and the skipped tensors with their reasons. Unlike
        :func:`select_weights` it does not refuse an empty selection: it shows why.
    """
    tensors, decisions, inc, exc = _decide(model_or_weights, include, exclude, key)
    layers, skipped = [], []
    for name, programmed, category in decisions:
        t = tensors[name]
        if programmed:
            # float32 statistics: a float64 copy of a 100 M-weight layer would take 800 MB.
            w = torch.as_tensor(t).detach().to("cpu", torch.float32)
            std = float(w.std(correction=0)) if w.numel() > 1 else 0.0
            peak = float(w.abs().max())
            layers.append(LayerInfo(name, _shape_of(t), mapped_shape(t.shape), category,
                                    int(w.numel()),
                                    peak / std if std > 0 else math.inf))
        else:
            category, reason = _skip_reason(category, inc, exc)
            skipped.append(SkippedTensor(name, _shape_of(t), _dtype_of(t), category, reason))
    return LayerTable(tuple(layers), tuple(skipped), tuple(inc), tuple(exc))
