"""Calibration: the energy of each layer's inputs, for the activation-aware error.

A layer's output error is ``e = (W_eff - W) x``. For weight errors independent of each other and
of the inputs, its expected square is ``sum_ij dW_ij^2 E[x_j^2]``: a weight's squared error counts
with the energy ``E[x_j^2]`` of the input it multiplies, where the plain TNMSE counts every weight
alike. :func:`calibrate` measures those energies on a calibration batch, by forward hooks, so that
``gpuwpo.optimize_network(..., importance=gpuwpo.calibrate(model, batch))`` draws each layer's
test tile by them (:mod:`gpuwpo.search.tiles`, "Drawn by importance"; docs/GUIDE.md,
"Activation-aware error").

What is measured, per layer (:mod:`gpuwpo.network.layers`: the mapped matrix ``[out, in]``), as
the mean over every input vector the layer multiplies during the batch (every position of every
sample; a module called several times, or a weight shared by several modules, counts each call):

* **Linear** ``[out, in]``: the input ``x [..., in]``: ``mean(x_j^2)`` ``[in]``.
* **Conv1d/2d/3d** ``[out, in, k...]``, mapped ``out x (in * prod k)``: the unrolled patches the
  crossbar multiplies (the columns of ``F.unfold``, in the order of ``weight.reshape(out, -1)``:
  input channel first, then the kernel offsets row-major), padding included (zeros, or the
  module's reflect/replicate/circular values), at the module's stride and dilation: ``[in *
  prod k]``. With ``groups > 1`` a row sees only its group's channels: ``[out, in / groups *
  prod k]``, one row per output channel.
* **RNN / LSTM / GRU** (``nn.RNNBase``): the recurrence is replayed from the module's own weights
  (checked against its output: a module whose replay differs is refused). ``weight_ih_l<k>``:
  the layer's input sequence (the data for k = 0, the previous layer's outputs, both
  directions, after that); ``weight_hh_l<k>``: the hidden states it multiplies, ``h_0 .. h_{L-1}``
  (the initial state included); an LSTM's ``weight_hr_l<k>``: the unprojected ``o * tanh(c)``.
  ``_reverse`` likewise, over the reversed sequence. Cells (``nn.LSTMCell``, ...): the input
  and the state passed in (zeros where none).
* **MultiheadAttention**: ``in_proj_weight`` ``[3E, E]`` per weight: its query rows by the
  query's energies, key rows by the key's, value rows by the value's; ``q/k/v_proj_weight``
  likewise; ``out_proj.weight``: the heads' concatenated attention output, recomputed from the
  module's inputs (the module calls no ``out_proj`` forward that a hook could see).

The model runs in ``eval()`` mode (restored afterwards) under ``torch.no_grad()``: the inputs the
deployed network's layers see. Energies are float64, on the CPU. A layer the batch never reaches,
or one whose inputs no hook can see (a weight used by a functional call in a custom module), is
refused by name: leave it out with ``layers=``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import mapped_shape, select_weights

__all__ = ["calibrate"]

_RNN_ATTR = re.compile(r"weight_(ih|hh|hr)_l(\d+)(_reverse)?")
_CELL_ATTR = re.compile(r"weight_(ih|hh)")
_MHA_ATTR = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
# Relative and absolute tolerance of the replayed recurrence against the module's own output
# (float32 arithmetic in another order: a few ulps per step).
_REPLAY_RTOL, _REPLAY_ATOL = 1e-3, 1e-5


class _Energy:
    """Running sum of squared inputs ``[C]`` (float64) and the number of input vectors."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.count = 0

    def add(self, squares: Tensor, count: int) -> None:
        squares = squares.detach().to("cpu", torch.float64)
        self.total = squares if self.total is None else self.total + squares
        self.count += int(count)

    def mean(self) -> Tensor | None:
        return None if self.total is None or self.count == 0 else self.total / self.count


def _add_vectors(energy: _Energy, x: Tensor) -> None:
    """Input vectors ``x [..., C]``: their squares summed over the leading axes."""
    x = x.detach()
    flat = x.reshape(-1, x.shape[-1])
    energy.add(flat.double().pow(2).sum(0), flat.shape[0])


# --------------------------------------------------------------------------------------------
# Convolutions: the unrolled patches' mean square, one strided slice per kernel offset
# --------------------------------------------------------------------------------------------


def _conv_patch_energy(module: nn.modules.conv._ConvNd, x: Tensor) -> tuple[Tensor, int]:
    """``(sum over patches of the squared patch columns [C * prod k], number of patches)`` of
    the module's input ``x`` ``[N, C, *spatial]`` (or unbatched ``[C, *spatial]``).

    The column (c, q) of the patch at output position o holds ``x_pad[c, o * s + q * d]``
    (stride s, dilation d, the input padded as the module pads it): its squares summed over o
    are one strided slice of ``x_pad^2`` per kernel offset q.
    """
    dims = len(module.kernel_size)
    if x.dim() == dims + 1:
        x = x.unsqueeze(0)
    pad = list(module._reversed_padding_repeated_twice)
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    xp = F.pad(x.detach().double(), pad, mode=mode) if any(pad) else x.detach().double()
    sq = xp.pow(2)
    n, channels = sq.shape[:2]
    spatial = sq.shape[2:]
    k, s, d = module.kernel_size, module.stride, module.dilation
    out = [(spatial[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(dims)]
    if any(o < 1 for o in out):
        raise ValueError(f"the input {tuple(x.shape)} is smaller than the kernel {tuple(k)}")
    offsets = torch.cartesian_prod(*[torch.arange(ki) for ki in k]).reshape(-1, dims)
    columns = []
    for q in offsets.tolist():
        index = (slice(None), slice(None), *(
            slice(q[i] * d[i], q[i] * d[i] + (out[i] - 1) * s[i] + 1, s[i])
            for i in range(dims)))
        columns.append(sq[index].sum(dim=(0, *range(2, 2 + dims))))  # [C]
    # [K, C] -> [C, K] -> the weight's column order c * K + q.
    total = torch.stack(columns).t().reshape(-1)
    patches = n
    for o in out:
        patches *= o
    return total, patches


# --------------------------------------------------------------------------------------------
# Recurrent layers: the recurrence replayed from the module's weights
# --------------------------------------------------------------------------------------------


def _cell_step(mode: str, x: Tensor, h: Tensor, c: Tensor | None, w_ih, w_hh, b_ih, b_hh,
               w_hr) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One step of torch's RNN cells: ``(h_new, c_new, the unprojected o * tanh(c))``."""
    gi = F.linear(x, w_ih, b_ih)
    gh = F.linear(h, w_hh, b_hh)
    if mode == "LSTM":
        i, f, g, o = (gi + gh).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        raw = torch.sigmoid(o) * torch.tanh(c)
        return (raw if w_hr is None else F.linear(raw, w_hr)), c, raw
    if mode == "GRU":
        ir, iz, in_ = gi.chunk(3, -1)
        hr, hz, hn = gh.chunk(3, -1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return (1 - z) * n + z * h, None, None
    act = torch.tanh if mode == "RNN_TANH" else torch.relu
    return act(gi + gh), None, None


def _rnn_energies(module: nn.RNNBase, x, hx) -> tuple[dict[str, tuple[Tensor, int]], Tensor]:
    """Each weight's ``(sum of squared inputs, input vectors)`` by attribute name, and the
    replayed output in the module's layout (to compare with the module's own)."""
    if isinstance(x, nn.utils.rnn.PackedSequence):
        raise ValueError(f"calibrate replays a {type(module).__name__}'s recurrence on padded "
                         f"tensors; give it a batch of equal-length sequences, not a "
                         f"PackedSequence")
    mode = module.mode
    batched = x.dim() == 3
    seq = x if not batched else (x.transpose(0, 1) if module.batch_first else x)
    if not batched:
        seq = seq.unsqueeze(1)  # [L, 1, in]
    length, n = seq.shape[:2]
    dirs = 2 if module.bidirectional else 1
    proj = int(getattr(module, "proj_size", 0) or 0)
    h_out = proj if proj > 0 else module.hidden_size
    zeros = seq.new_zeros
    if hx is None:
        h0 = zeros(module.num_layers * dirs, n, h_out)
        c0 = zeros(module.num_layers * dirs, n, module.hidden_size)
    else:
        h0, c0 = hx if mode == "LSTM" else (hx, None)
        if not batched:
            h0 = h0.unsqueeze(1)
            c0 = None if c0 is None else c0.unsqueeze(1)
    sums: dict[str, tuple[Tensor, int]] = {}
    layer_input = seq
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if direction else "")
            params = [getattr(module, f"{kind}{sfx}", None)
                      for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")]
            inputs = layer_input if direction == 0 else layer_input.flip(0)
            h = h0[layer * dirs + direction]
            c = None if c0 is None else c0[layer * dirs + direction]
            states, raws, hs = [], [], []
            for t in range(length):
                states.append(h)
                h, c, raw = _cell_step(mode, inputs[t], h, c, *params)
                hs.append(h)
                if raw is not None:
                    raws.append(raw)
            sums[f"weight_ih{sfx}"] = (inputs.double().pow(2).sum((0, 1)), length * n)
            sums[f"weight_hh{sfx}"] = (torch.stack(states).double().pow(2).sum((0, 1)),
                                       length * n)
            if proj > 0:
                sums[f"weight_hr{sfx}"] = (torch.stack(raws).double().pow(2).sum((0, 1)),
                                           length * n)
            out = torch.stack(hs)
            outputs.append(out if direction == 0 else out.flip(0))
        layer_input = torch.cat(outputs, -1)
    out = layer_input
    if not batched:
        out = out.squeeze(1)
    elif module.batch_first:
        out = out.transpose(0, 1)
    return sums, out


# --------------------------------------------------------------------------------------------
# MultiheadAttention: the projections' inputs, and the heads' output before out_proj
# --------------------------------------------------------------------------------------------


def _attention_output(module: nn.MultiheadAttention, bound: Mapping[str, Any]) -> Tensor:
    """The heads' concatenated output ``[..., E]`` that ``out_proj`` multiplies, recomputed as
    the module computes its output, with an identity in place of ``out_proj``."""
    query, key, value = bound["query"], bound["key"], bound["value"]
    if module.batch_first and query.dim() == 3:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    eye = torch.eye(module.embed_dim, dtype=query.dtype, device=query.device)
    separate = not module._qkv_same_embed_dim
    out, _ = F.multi_head_attention_forward(
        query, key, value, module.embed_dim, module.num_heads, module.in_proj_weight,
        module.in_proj_bias, module.bias_k, module.bias_v, module.add_zero_attn, 0.0, eye, None,
        training=False, key_padding_mask=bound.get("key_padding_mask"), need_weights=False,
        attn_mask=bound.get("attn_mask"), use_separate_proj_weight=separate,
        q_proj_weight=module.q_proj_weight, k_proj_weight=module.k_proj_weight,
        v_proj_weight=module.v_proj_weight, is_causal=bool(bound.get("is_causal", False)))
    return out


# --------------------------------------------------------------------------------------------
# The hooks
# --------------------------------------------------------------------------------------------


def _owners(model: nn.Module, param: Tensor) -> list[tuple[str, nn.Module, str]]:
    """Every (module name, module, attribute) holding ``param`` itself (a shared module once)."""
    owners, seen = [], set()
    for name, module in model.named_modules(remove_duplicate=False):
        for attr, p in module._parameters.items():
            if p is param and (id(module), attr) not in seen:
                seen.add((id(module), attr))
                owners.append((name, module, attr))
    return owners


def _out_proj_of(model: nn.Module, module: nn.Module) -> nn.MultiheadAttention | None:
    """The MultiheadAttention whose ``out_proj`` ``module`` is, if any."""
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention) and m.out_proj is module:
            return m
    return None


def _bind(module: nn.Module, args: tuple, kwargs: dict) -> list[Any]:
    """The arguments of a call of ``module`` in its forward's order (defaults filled in), by
    position: a subclass may name them otherwise (input, then the state for a recurrence)."""
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    return list(bound.arguments.values())


def _bind_named(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


class _Hooks:
    """The forward hooks of one calibration: per layer name, where its inputs are measured."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.energy = {name: _Energy() for name in names}
        self.per_row: dict[str, list[tuple[int, _Energy]]] = {}  # name -> row blocks
        self.handles: list[Any] = []
        self.groups: dict[str, tuple[int, int]] = {}  # conv name -> (groups, out)
        params = dict(model.named_parameters(remove_duplicate=False))
        rnn_modules: dict[int, tuple[nn.RNNBase, dict[str, str]]] = {}
        mha_modules: dict[int, tuple[nn.MultiheadAttention, dict[str, str]]] = {}
        unmeasurable = []
        for name in names:
            if name not in params:
                raise ValueError(f"calibrate measures the inputs of weights (parameters); the "
                                 f"model has no parameter {name!r}")
            owners = _owners(model, params[name])
            measured = False
            for _, module, attr in owners:
                mha = _out_proj_of(model, module) if isinstance(module, nn.Linear) else None
                if mha is not None and attr == "weight":
                    mha_modules.setdefault(id(mha), (mha, {}))[1]["out_proj"] = name
                elif isinstance(module, nn.Linear) and attr == "weight":
                    self._hook(module, self._linear(name))
                elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and attr == "weight":
                    self.groups[name] = (int(module.groups), int(module.out_channels))
                    self._hook(module, self._conv(name))
                elif isinstance(module, nn.RNNBase) and _RNN_ATTR.fullmatch(attr):
                    rnn_modules.setdefault(id(module), (module, {}))[1][attr] = name
                elif isinstance(module, nn.RNNCellBase) and _CELL_ATTR.fullmatch(attr):
                    self._hook(module, self._cell(name, attr))
                elif isinstance(module, nn.MultiheadAttention) and attr in _MHA_ATTR:
                    mha_modules.setdefault(id(module), (module, {}))[1][attr] = name
                else:
                    continue
                measured = True
            if not measured:
                kinds = ", ".join(sorted({type(m).__name__ for _, m, _ in owners})) or "no module"
                unmeasurable.append(f"{name!r} ({kinds})")
        if unmeasurable:
            raise ValueError(f"calibrate cannot see the inputs of {', '.join(unmeasurable)}: it "
                             f"measures Linear, Conv1d/2d/3d, RNN/LSTM/GRU (and their cells) "
                             f"and MultiheadAttention weights; leave the others out with "
                             f"layers=, or give their energies yourself")
        for module, attrs in rnn_modules.values():
            self._hook(module, self._rnn(attrs), after=True)
        for module, attrs in mha_modules.values():
            self._hook(module, self._mha(module, attrs))

    def _hook(self, module: nn.Module, fn: Callable, *, after: bool = False) -> None:
        # With the keywords too: a module may be called with its input by name.
        if after:
            self.handles.append(module.register_forward_hook(fn, with_kwargs=True))
        else:
            self.handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def _linear(self, name: str) -> Callable:
        def hook(module, args, kwargs):
            _add_vectors(self.energy[name], _bind(module, args, kwargs)[0])
        return hook

    def _conv(self, name: str) -> Callable:
        def hook(module, args, kwargs):
            total, patches = _conv_patch_energy(module, _bind(module, args, kwargs)[0])
            self.energy[name].add(total, patches)
        return hook

    def _cell(self, name: str, attr: str) -> Callable:
        def hook(module, args, kwargs):
            bound = _bind(module, args, kwargs)
            x = bound[0]
            if attr == "weight_ih":
                _add_vectors(self.energy[name], x)
                return
            hx = bound[1] if len(bound) > 1 else None
            if isinstance(hx, tuple):  # LSTMCell: (h, c); weight_hh multiplies h
                hx = hx[0]
            if hx is None:
                batch = x.shape[:-1]
                hx = x.new_zeros(*batch, module.hidden_size)
            _add_vectors(self.energy[name], hx)
        return hook

    def _rnn(self, attrs: Mapping[str, str]) -> Callable:
        def hook(module, args, kwargs, output):
            bound = _bind(module, args, kwargs)
            sums, replayed = _rnn_energies(module, bound[0], bound[1] if len(bound) > 1 else None)
            actual = output[0] if isinstance(output, tuple) else output
            if not torch.allclose(replayed, actual, rtol=_REPLAY_RTOL, atol=_REPLAY_ATOL):
                raise ValueError(f"calibrate's replay of the {type(module).__name__}'s "
                                 f"recurrence differs from its output (a modified module?); "
                                 f"leave {', '.join(map(repr, attrs.values()))} out with "
                                 f"layers=, or give their energies yourself")
            for attr, name in attrs.items():
                self.energy[name].add(*sums[attr])
        return hook

    def _mha(self, module: nn.MultiheadAttention, attrs: Mapping[str, str]) -> Callable:
        def hook(mod, args, kwargs):
            bound = _bind_named(mod, args, kwargs)
            parts = {"query": bound["query"], "key": bound["key"], "value": bound["value"]}
            for attr, name in attrs.items():
                if attr == "in_proj_weight":
                    # Rows 0..E-1 multiply the query, E..2E-1 the key, 2E..3E-1 the value.
                    blocks = self.per_row.setdefault(name, [
                        (mod.embed_dim, _Energy()) for _ in range(3)])
                    for (_, energy), part in zip(blocks, parts.values()):
                        _add_vectors(energy, part)
                elif attr == "out_proj":
                    _add_vectors(self.energy[name], _attention_output(mod, bound))
                else:  # q/k/v_proj_weight
                    _add_vectors(self.energy[name], parts[{"q": "query", "k": "key",
                                                           "v": "value"}[attr[0]]])
        return hook

    def energies(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
        """Name -> energies, in the layers' order; a layer the batch never reached refused."""
        out, unreached = {}, []
        for name, energy in self.energy.items():
            if name in self.per_row:
                blocks = [(rows, e.mean()) for rows, e in self.per_row[name]]
                if any(e is None for _, e in blocks):
                    unreached.append(name)
                    continue
                out[name] = torch.cat([e.expand(rows, -1) for rows, e in blocks])
                continue
            mean = energy.mean()
            if mean is None:
                unreached.append(name)
                continue
            groups, channels = self.groups.get(name, (1, 0))
            if groups > 1:
                # Output channel i sees its group's inputs only: the group's block of columns.
                mean = mean.reshape(groups, -1).repeat_interleave(channels // groups, dim=0)
            expected = mapped_shape(shapes[name])[1]
            if mean.shape[-1] != expected:
                raise ValueError(f"the inputs measured for {name!r} have {mean.shape[-1]} "
                                 f"columns, its matrix as mapped has {expected}")
            out[name] = mean
        if unreached:
            names = ", ".join(map(repr, unreached))
            raise ValueError(f"the calibration batch never reached {names}: run inputs that "
                             f"pass through them, or leave them out with layers=")
        return out


# --------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------


def _batches(inputs) -> Iterable:
    """One batch (a tensor, a tuple of positional arguments, a dict of keyword arguments), or
    an iterable of batches (a list, a DataLoader, a generator)."""
    if isinstance(inputs, (Tensor, tuple, Mapping)):
        return [inputs]
    if isinstance(inputs, Iterable) and not isinstance(inputs, (str, bytes)):
        return inputs
    raise TypeError(f"inputs must be a tensor, a tuple of positional arguments, a dict of "
                    f"keyword arguments, or an iterable of such batches; got "
                    f"{type(inputs).__name__}")


def _run(model: nn.Module, batch) -> None:
    if isinstance(batch, Tensor):
        model(batch)
    elif isinstance(batch, tuple):
        model(*batch)
    elif isinstance(batch, Mapping):
        model(**batch)
    else:
        raise TypeError(f"a batch must be a tensor, a tuple of positional arguments or a dict "
                        f"of keyword arguments (or pass forward=), got {type(batch).__name__}")


def calibrate(
    model: nn.Module,
    inputs,
    layers: Iterable[str] | str | None = None,
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> dict[str, Tensor]:
    """The energy ``E[x_j^2]`` of every input column of each layer, over a calibration batch.

    The result is what :func:`gpuwpo.optimize_network`'s ``importance=`` takes (the module
    docstring says what is measured for each kind of layer; docs/GUIDE.md, "Activation-aware
    error"). Use data the network will see (a few hundred training samples), not the test set.

    Args:
        model: the network; run in ``eval()`` mode under ``torch.no_grad()`` (its mode is
            restored afterwards, its weights untouched).
        inputs: one batch (a tensor: ``model(inputs)``; a tuple: ``model(*inputs)``; a dict:
            ``model(**inputs)``), or an iterable of batches (a list, a DataLoader); the
            energies are means over every input vector of every batch.
        layers: the layers' names (the model's parameter names, as in a results file), or
            None: every layer :func:`gpuwpo.select_weights` finds in ``model`` (a dict of it,
            e.g. ``select_weights(model, include=...)``, is taken by its names).
        forward: ``forward(model, batch)`` runs one batch (e.g. ``lambda m, b: m(b[0])`` for a
            DataLoader of ``(inputs, labels)``); default as above.

    Returns:
        name -> float64 CPU tensor, in the order of ``layers``: ``[in]`` per input column of the
        layer's matrix as mapped (:func:`gpuwpo.network.layers.as_matrix`), or ``[out, in]``
        where rows see different inputs (a grouped convolution, an attention's in_proj).

    Raises:
        TypeError: ``model`` is not an nn.Module, ``inputs`` of an unknown kind.
        ValueError: a name that is no parameter of the model, a layer whose inputs no hook can
            see or that the batch never reached (naming them), a recurrent module whose replay
            differs from its output, a PackedSequence.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"calibrate takes an nn.Module, got {type(model).__name__}")
    if layers is None:
        names = list(select_weights(model))
    elif isinstance(layers, str):
        names = [layers]
    else:
        names = [str(name) for name in layers]
    if not names:
        raise ValueError("layers is empty: nothing to calibrate")
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters(remove_duplicate=False)}
    hooks = _Hooks(model, names)
    run = _run if forward is None else forward
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            batches = 0
            for batch in _batches(inputs):
                run(model, batch)
                batches += 1
        if batches == 0:
            raise ValueError("inputs held no batch")
    finally:
        hooks.remove()
        for module, training in modes.items():
            module.train(training)
    return hooks.energies(shapes)
