"""Conductance converters: unitless weights <-> device conductances (micro-Siemens).

A converter maps a weight tensor ``W`` to the conductances of the devices that store it and
back. The class names, defaults and formulas follow IBM aihwkit's
``inference.converter.conductance`` / ``fusion`` modules (see docs/DESIGN.md section 3), with two
differences that the batched search needs:

* Conductances come back as ONE tensor with the device axis just before the weight's own
  axes, ``G`` of shape ``[*batch, 2K, *weights.shape]`` with rows ordered
  ``(G+_0, G-_0, G+_1, G-_1, ...)`` (Fusion: ``[*batch, 1, *weights.shape]``), instead of a
  Python list of tensors.
* Pair converters carry batch dimensions: the significance factors ``f`` may be a tensor
  ``[..., K]`` and a custom program's table ``g_lst`` a tensor ``[..., 2K, L]``, so a whole
  population of candidate programs converts one weight tensor in one call.

Every pair converter realises, and converts back with,

    W_us = sum_k f_k (G+_k - G-_k)        (micro-Siemens)
    W    = W_us / scale                   (unitless)

``convert_back_to_weights`` accepts conductances with extra leading dimensions in front of the
converter's batch dimensions (repeats, time steps, ... after noise was applied) and broadcasts.
All returned tensors follow the dtype and device of the weights being converted.

The uniform-grid interpolation behind :class:`CustomPairConductanceConverter` is exposed as two
pure functions, :func:`grid_interpolation` and :func:`interpolate_programs`, because the
objective's hot path computes the grid position of every test weight once and reuses it for
every candidate program.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..checks import check_clip, check_weights, describe_values
from ..registry import Serializable

__all__ = [
    "SinglePairConductanceConverter",
    "DualPairConductanceConverter",
    "NPairConductanceConverter",
    "CustomPairConductanceConverter",
    "FusionConductanceConverter",
    "grid_interpolation",
    "interpolate_programs",
    "grid_position",
    "lerp_tables",
    "net_weight_max",
    "program_scale",
]

# aihwkit clips max|W| at an absolute 1e-7 (its _ZERO_CLIP) before dividing by it, so that an
# all-zero tensor converts to all-g_min conductances instead of NaN. gpuwpo takes max|W| = 1 for
# an all-zero tensor instead (the same conductances) and divides by the true max|W| otherwise:
# the conversion then does not depend on the weights' units (the same for W and 1e-9 W).
# aihwkit's fusion converter clips its per-row maxima at 1e-10; gpuwpo at 1e-10 of the tensor's
# max|W| (the same at max|W| = 1).
_FUSION_ZERO_CLIP = 1e-10
# Tolerance (in unitless weight, on test weights spanning [-1, 1]) of the invertibility check;
# aihwkit's invertibility_test uses the same absolute tolerance.
_INVERTIBILITY_ATOL = 1e-4


# --------------------------------------------------------------------------------------------
# Small validation helpers
# --------------------------------------------------------------------------------------------


def _shape_and_range(t: Tensor) -> str:
    """A large tensor in an error message: its shape, min and max."""
    return f"tensor of shape {tuple(t.shape)} with min {t.min().item()} and max {t.max().item()}"


def _describe(t: Tensor) -> str:
    """Short text for an error message: the values of a small tensor, or its range."""
    return describe_values(t, 8, _shape_and_range)


def _check_conductance_range(g_min: float, g_max: float) -> tuple[float, float]:
    """Validate and return (g_min, g_max) as floats (micro-Siemens)."""
    g_min = _as_float(g_min, "g_min")
    g_max = _as_float(g_max, "g_max")
    for name, value in (("g_min", g_min), ("g_max", g_max)):
        if value < 0.0:
            raise ValueError(f"{name} must be non-negative (a conductance), got {value!r}")
    if g_min >= g_max:
        raise ValueError(f"g_min must be smaller than g_max, got g_min={g_min!r}, g_max={g_max!r}")
    return g_min, g_max


def _as_float(value: Any, name: str) -> float:
    """A finite real number as float (bools and non-numbers are rejected)."""
    if isinstance(value, bool | str):
        raise TypeError(f"{name} must be a number (micro-Siemens), got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a number (micro-Siemens), got {value!r}") from err
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


def _as_float_tensor(value: Any, what: str) -> Tensor:
    """A tensor as given (integers promoted to float64), or nested lists as float64."""
    if isinstance(value, Tensor):
        t = value.detach()
        return t if t.is_floating_point() else t.to(torch.float64)
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{what}: {err}") from err


def _as_f_tensor(f_lst: Sequence[float] | Tensor) -> Tensor:
    """Significance factors as a floating tensor ``[..., K]`` (float64 when given as a list)."""
    f = _as_float_tensor(f_lst, f"f_lst must be a list of numbers or a tensor, got {f_lst!r}")
    if f.ndim == 0:
        raise ValueError(f"f_lst must be a list (or a tensor [..., K]), got the scalar {f_lst!r}")
    if f.shape[-1] == 0:
        raise ValueError("f_lst must hold at least one significance factor, got none")
    if not bool(torch.isfinite(f).all()):
        raise ValueError(f"f_lst must be finite, got {_describe(f)}")
    if not bool((f > 0).all()):
        raise ValueError(f"f_lst must be positive, got {_describe(f)}")
    return f


def _check_weights(weights: Tensor) -> Tensor:
    """The weights to convert: real, finite, non-empty, at least 1-D (gpuwpo.checks)."""
    return check_weights(weights)


def _max_abs_weight(weights: Tensor) -> Tensor:
    """max|W| over the whole tensor (1 for an all-zero tensor); 0-dim, weights' dtype/device."""
    return nonzero_max_abs(weights.detach().abs().amax())


def nonzero_max_abs(m: Tensor) -> Tensor:
    """``m`` (maxima of |W|) with zeros replaced by 1: what an all-zero tile is divided by.

    Scale-free (unlike a floor such as aihwkit's 1e-7): weights of any units convert alike.
    """
    return torch.where(m > 0, m, torch.ones((), dtype=m.dtype, device=m.device))


# --------------------------------------------------------------------------------------------
# Uniform-grid interpolation (hot path, shared with the objective)
# --------------------------------------------------------------------------------------------


def grid_interpolation(
    weights: Tensor, max_abs_weight: float | Tensor, L: int
) -> tuple[Tensor, Tensor]:
    """Position of every weight on the uniform grid ``linspace(-M, M, L)``.

    With ``p = (w + M) / (2 M) * (L - 1)`` (computed as ``h + w h / M``, ``h = (L - 1) / 2``)
    clamped to ``[0, L - 1]`` (np.interp clamps at the
    ends), ``idx = min(floor(p), L - 2)`` and ``frac = p - idx``, so that linear interpolation
    of a table ``y`` of L values is ``y[idx] + frac * (y[idx + 1] - y[idx])``. The grid depends
    only on M, so these are computed once and reused for every program.

    Args:
        weights: unitless weights, any shape ``[..., *w]``.
        max_abs_weight: M, the grid's half-width (unitless), a float or a tensor whose shape
            equals the LEADING dimensions of ``weights`` (one grid per leading index, e.g. one
            per layer). Values <= 0 are clipped to the smallest positive number.
        L: number of grid points, at least 2.

    Returns:
        ``(idx, frac)``, both of ``weights.shape``: ``idx`` int64 in ``[0, L - 2]``, ``frac`` in
        ``[0, 1]`` with the dtype of ``weights``.
    """
    if isinstance(L, bool) or not isinstance(L, int) or L < 2:
        raise ValueError(f"L (number of grid points) must be an integer >= 2, got {L!r}")
    if not weights.is_floating_point():
        weights = weights.to(torch.get_default_dtype())
    m = torch.as_tensor(max_abs_weight, dtype=weights.dtype, device=weights.device)
    if m.ndim > weights.ndim or tuple(m.shape) != tuple(weights.shape[: m.ndim]):
        raise ValueError(
            f"max_abs_weight of shape {tuple(m.shape)} must match the leading dimensions of "
            f"weights of shape {tuple(weights.shape)}"
        )
    m = m.reshape(tuple(m.shape) + (1,) * (weights.ndim - m.ndim))
    return grid_position(weights, (0.5 * (L - 1)) / m.clamp(min=torch.finfo(weights.dtype).tiny),
                         L)


def grid_position(weights: Tensor, half_over_m: Tensor, L: int) -> tuple[Tensor, Tensor]:
    """The core of :func:`grid_interpolation`, without its checks (for hot paths).

    ``p = h + w (h / M)`` with ``h = (L - 1) / 2``, clamped to ``[0, L - 1]``; ``idx = min(
    floor(p), L - 2)``, ``frac = p - idx``. ``half_over_m`` is ``h / M`` broadcastable with
    ``weights`` (M already clipped away from 0).
    """
    half = 0.5 * (L - 1)
    pos = torch.addcmul(torch.full((), half, dtype=weights.dtype, device=weights.device),
                        weights, half_over_m).clamp_(0.0, L - 1)
    # The last grid point belongs to the last interval (frac = 1), keeping idx + 1 in range.
    idx = pos.floor().clamp_(max=L - 2)
    return idx.to(torch.int64), pos.sub_(idx)


def interpolate_programs(g_lst: Tensor, idx: Tensor, frac: Tensor) -> Tensor:
    """Linear interpolation of every row of a batch of tables at precomputed grid positions.

    Args:
        g_lst: tables ``[..., R, L]`` (conductances in micro-Siemens; R rows of L grid values).
        idx: int64 ``[..., N]`` in ``[0, L - 2]`` from :func:`grid_interpolation`.
        frac: ``[..., N]`` in ``[0, 1]``, same shape as ``idx``.

    The leading dimensions of ``g_lst`` and of ``idx``/``frac`` broadcast against each other
    (e.g. programs ``[P, R, L]`` with one weight vector ``[N]``, or per-layer weights
    ``[B, 1, N]`` with programs ``[B, P, R, L]``).

    Returns:
        ``[..., R, N]``: row r at weight n is ``lerp(g[r, idx[n]], g[r, idx[n] + 1], frac[n])``,
        which equals np.interp on the grid. Dtype is the promotion of ``g_lst`` and ``frac``.
    """
    if g_lst.ndim < 2:
        raise ValueError(f"g_lst must have shape [..., R, L], got {tuple(g_lst.shape)}")
    if idx.shape != frac.shape:
        raise ValueError(f"idx {tuple(idx.shape)} and frac {tuple(frac.shape)} must match")
    if idx.ndim == 0:
        idx, frac = idx.reshape(1), frac.reshape(1)
    dtype = torch.promote_types(g_lst.dtype, frac.dtype)
    g_lst = g_lst.to(dtype)
    frac = frac.to(dtype)
    rows = g_lst.shape[-2]
    batch = torch.broadcast_shapes(g_lst.shape[:-2], idx.shape[:-1])
    # gather needs index and source with the same batch dimensions; expand() makes views, so
    # neither the tables nor the index are copied per program.
    lower_tab = g_lst[..., :-1].expand(*batch, rows, g_lst.shape[-1] - 1)
    upper_tab = g_lst[..., 1:].expand(*batch, rows, g_lst.shape[-1] - 1)
    return lerp_tables(lower_tab, upper_tab, idx, frac)


def lerp_tables(lower_tab: Tensor, upper_tab: Tensor, idx: Tensor, frac: Tensor) -> Tensor:
    """The core of :func:`interpolate_programs`, without its checks (for hot paths).

    ``lower_tab``, ``upper_tab``: ``g_lst[..., :-1]`` and ``g_lst[..., 1:]`` expanded to the
    batch shape ``[..., R, L - 1]``; ``idx`` int64 and ``frac`` ``[..., N]`` of that batch shape
    (or broadcastable to it). Returns ``[..., R, N]``.
    """
    index = idx.unsqueeze(-2).expand(*lower_tab.shape[:-1], idx.shape[-1])
    lower = torch.gather(lower_tab, -1, index)
    upper = torch.gather(upper_tab, -1, index)
    # lerp stays inside [lower, upper] for frac in [0, 1], so the conductances never leave the
    # table's range (no round-off past g_max); in place, because for a population this is the
    # largest tensor of the objective ([P, 2K, N]).
    return lower.lerp_(upper, frac.unsqueeze(-2))


# --------------------------------------------------------------------------------------------
# Pair converters
# --------------------------------------------------------------------------------------------


def _pairs_to_weights(conductances: Tensor, f: Tensor, scale: Tensor, weight_ndim: int) -> Tensor:
    """W = sum_k f_k (G+_k - G-_k) / scale, broadcasting over extra leading dimensions.

    conductances ``[..., *batch, 2K, *w]``, f ``[*batch, K]``, scale ``[*batch]`` ->
    ``[..., *batch, *w]``.
    """
    k = f.shape[-1]
    dev_dim = conductances.ndim - weight_ndim - 1
    pairs = conductances.unflatten(dev_dim, (k, 2))  # [..., *batch, K, 2, *w]
    diff = pairs.select(dev_dim + 1, 0) - pairs.select(dev_dim + 1, 1)  # [..., *batch, K, *w]
    trailing = (1,) * weight_ndim
    f = f.to(diff).reshape(tuple(f.shape) + trailing)
    w_us = (f * diff).sum(dim=dev_dim)  # [..., *batch, *w]
    return w_us / scale.to(diff).reshape(tuple(scale.shape) + trailing)


class _PairConverter(Serializable):
    """Shared parts of the pair converters: f, range, batch shape, converting back."""

    f_lst: Tensor
    g_min: float
    g_max: float
    _abstract = True

    def _params(self) -> dict[str, Any]:
        return {"f_lst": self.f_lst.detach().cpu().double().tolist(), "g_min": self.g_min,
                "g_max": self.g_max}

    @property
    def num_pairs(self) -> int:
        """K, the number of device pairs per weight."""
        return int(self.f_lst.shape[-1])

    @property
    def num_devices(self) -> int:
        """2K, the number of devices per weight (the size of G's device axis)."""
        return 2 * self.num_pairs

    @property
    def batch_shape(self) -> torch.Size:
        """Batch shape of the converter's programs (``torch.Size([])`` for one program)."""
        return self.f_lst.shape[:-1]

    def _check_conductances(self, conductances: Tensor, params: dict[str, Any]) -> int:
        """Validate G against params; return the number of weight dimensions."""
        for key in ("scale", "f", "weight_shape"):
            if key not in params:
                raise ValueError(f"params must hold {key!r} (as returned with the conductances)")
        weight_shape = tuple(params["weight_shape"])
        nd = len(weight_shape)
        k2 = 2 * params["f"].shape[-1]
        if (
            conductances.ndim < nd + 1
            or tuple(conductances.shape[conductances.ndim - nd :]) != weight_shape
            or conductances.shape[-nd - 1] != k2
        ):
            raise ValueError(
                f"conductances must have shape [..., {k2}, *{weight_shape}] (device axis just "
                f"before the weight's axes), got {tuple(conductances.shape)}"
            )
        return nd

    def convert_back_to_weights(self, conductances: Tensor, params: dict[str, Any]) -> Tensor:
        """Unitless weights from conductances: ``W = sum_k f_k (G+_k - G-_k) / scale``.

        Args:
            conductances: ``[..., *batch, 2K, *w]`` in micro-Siemens; any extra leading
                dimensions (repeats, time steps) in front of the converter's batch dimensions
                broadcast.
            params: the dict returned by ``convert_to_conductances``.

        Returns:
            ``[..., *batch, *w]`` unitless weights, dtype/device of ``conductances``.
        """
        nd = self._check_conductances(conductances, params)
        return _pairs_to_weights(conductances, params["f"], params["scale"], nd)

    def __repr__(self) -> str:
        f = self.f_lst.tolist() if self.f_lst.numel() <= 8 else f"[{tuple(self.f_lst.shape)}]"
        return f"{type(self).__name__}(f_lst={f}, g_min={self.g_min}, g_max={self.g_max})"


class NPairConductanceConverter(_PairConverter):
    r"""K pairs of devices per weight with significance factors f_k; low significance first.

    With ``span = g_max - g_min`` and ``M = max|W|`` over the whole weight tensor:

        scale     = sum_k f_k * span / M                                  (uS per unit weight)
        a         = |W| * scale                                           (|W_us|, uS)
        lower_k   = sum_{m<k} f_m * span                                  (range of pairs before k)
        d_k       = clamp((a - lower_k) / f_k, 0, span)
        G+_k      = g_min + d_k  if W > 0 else g_min
        G-_k      = g_min + d_k  if W < 0 else g_min

    so pair k only takes the part of ``|W_us|`` that the pairs before it cannot hold (their
    combined range exhausted), and ``sum_k f_k (G+_k - G-_k) = W_us`` exactly: the round trip
    recovers W. This is aihwkit's ``NPairConductanceConverter`` (the higher significance pair
    is used only once the lower ones are full, which limits how much f amplifies noise).

    Args:
        f_lst: significance factors ``f_k`` from lowest to highest, K positive numbers, or a
            tensor ``[..., K]`` for a batch of converters (batch shape ``[...]``).
        g_min: conductance that logical zero maps to (uS), >= 0.
        g_max: maximum conductance (uS), > g_min.
    """

    #: A subclass with a fixed number of pairs (DualPair: 2) says so here.
    num_pairs_required: int | None = None

    def __init__(
        self,
        f_lst: Sequence[float] | Tensor = (1.0, 1.0),
        g_min: float = 0.0,
        g_max: float = 25.0,
    ) -> None:
        self.g_min, self.g_max = _check_conductance_range(g_min, g_max)
        self.f_lst = _as_f_tensor(f_lst)
        need = self.num_pairs_required
        if need is not None and self.f_lst.shape[-1] != need:
            words = {1: "one", 2: "two", 3: "three"}
            raise ValueError(f"{type(self).__name__} needs exactly {words.get(need, need)} "
                             f"significance factors, "
                             f"got f_lst={_describe(self.f_lst)}")

    def convert_to_conductances(self, weights: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """Conductances of every device for every weight.

        Args:
            weights: unitless weights, any shape ``w`` (finite, not empty).

        Returns:
            ``(G, params)``: ``G`` of shape ``[*batch, 2K, *w]`` in uS within
            ``[g_min, g_max]``; ``params`` holds ``"scale"`` ``[*batch]`` (uS per unit weight),
            ``"f"`` ``[*batch, K]``, ``"max_abs_weight"`` (0-dim) and ``"weight_shape"``.
        """
        weights = _check_weights(weights)
        nd = weights.ndim
        trailing = (1,) * nd
        f = self.f_lst.to(dtype=weights.dtype, device=weights.device)  # [*batch, K]
        span = self.g_max - self.g_min
        m = _max_abs_weight(weights)
        scale = f.sum(-1) * span / m  # [*batch]
        a = weights.abs() * scale.reshape(tuple(scale.shape) + trailing)  # [*batch, *w]
        lower = (torch.cumsum(f, -1) - f) * span  # [*batch, K], range of the pairs before k
        fk = f.reshape(tuple(f.shape) + trailing)
        lo = lower.reshape(tuple(lower.shape) + trailing)
        d = ((a.unsqueeze(-nd - 1) - lo) / fk).clamp(0.0, span)  # [*batch, K, *w]
        zero = torch.zeros((), dtype=d.dtype, device=d.device)
        g_plus = self.g_min + torch.where(weights > 0, d, zero)
        g_minus = self.g_min + torch.where(weights < 0, d, zero)
        # Interleave to (G+_0, G-_0, G+_1, ...): stack a pair axis after K, then merge them.
        g = torch.stack((g_plus, g_minus), dim=-nd - 1).flatten(-nd - 2, -nd - 1)
        params = {"scale": scale, "f": f, "max_abs_weight": m, "weight_shape": weights.shape}
        return g, params


class DualPairConductanceConverter(NPairConductanceConverter):
    """Two pairs of devices per weight (4 devices); see :class:`NPairConductanceConverter`.

    Args:
        f_lst: two significance factors (lower, higher), or a tensor ``[..., 2]``.
        g_min: conductance that logical zero maps to (uS).
        g_max: maximum conductance (uS).
    """

    num_pairs_required = 2


class SinglePairConductanceConverter(NPairConductanceConverter):
    """One pair of devices per weight, one of them always at g_min.

    ``scale = (g_max - g_min) / max|W|``, ``G+ = clamp(W * scale, 0, g_max - g_min) + g_min``,
    ``G- = clamp(-W * scale, 0, g_max - g_min) + g_min`` (aihwkit's formula; it clamps at g_max,
    which is the same because ``|W| * scale <= g_max - g_min``). It is the NPair converter with
    ``f = [1]``.

    Args:
        g_min: conductance that logical zero maps to (uS).
        g_max: conductance that max|W| maps to (uS).
    """

    def __init__(self, g_min: float = 0.0, g_max: float = 25.0) -> None:
        super().__init__((1.0,), g_min, g_max)

    def _params(self) -> dict[str, Any]:
        return {"g_min": self.g_min, "g_max": self.g_max}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(g_min={self.g_min}, g_max={self.g_max})"


def _net_weight_curve(g_lst: Tensor, f: Tensor) -> Tensor:
    """``sum_k f_k (G+_k - G-_k)``: g_lst ``[..., 2K, L]``, f ``[..., K]`` -> ``[..., L]``."""
    pairs = g_lst.unflatten(-2, (f.shape[-1], 2))  # [..., K, 2, L]
    diff = pairs[..., 0, :] - pairs[..., 1, :]  # [..., K, L]
    return (f.unsqueeze(-1) * diff).sum(-2)


def net_weight_max(f: Tensor, g_lst: Tensor) -> Tensor:
    """``max_grid |sum_k f_k (G+_k - G-_k)|`` in uS: f ``[..., K]``, g_lst ``[..., 2K, L]`` ->
    ``[...]`` (the largest weight a program realises)."""
    return _net_weight_curve(g_lst, f).abs().amax(-1)


def program_scale(f: Tensor, g_lst: Tensor, max_abs_weight: Tensor | float) -> Tensor:
    """Weight scale of CustomPair programs (uS per unit weight) for weights of max|W| = M.

    ``scale = max_grid |sum_k f_k (G+_k - G-_k)| / M``: f ``[..., K]``, g_lst ``[..., 2K, L]``,
    M broadcastable to ``[...]`` -> ``[...]``.
    """
    return net_weight_max(f, g_lst) / max_abs_weight


class CustomPairConductanceConverter(_PairConverter):
    r"""K pairs of devices programmed from a table on a uniform weight grid (a "program").

    ``g_lst`` holds 2K rows ``(G+_0, G-_0, G+_1, G-_1, ...)`` of L conductances (uS) on the grid
    ``linspace(-M, M, L)``, ``M = max|W|`` of the weights being converted. A weight's
    conductances are the linear interpolation of each row at the weight (np.interp semantics,
    clamped at the ends), and

        scale = max_grid |sum_k f_k (G+_k - G-_k)| / M.

    A program may carry batch dimensions: ``f`` ``[..., K]`` and ``g_lst`` ``[..., 2K, L]``
    (their batch shapes broadcast), so a population of programs converts one weight tensor in
    one call, without a Python loop over programs.

    ``clip < 1`` (a gpuwpo extension; the reference's converter is ``clip = 1``) puts the grid
    on ``linspace(-c, c, L)`` with ``c = clip * max|W|``: the weights beyond ``+-c`` are
    programmed as ``+-c`` (np.interp clamps at the ends), and ``scale = max_grid |...| / c``.
    It is the reference's converter applied to the weights clipped at ``c`` first.

    Args:
        f_lst: K positive significance factors, or a tensor ``[..., K]``.
        g_lst: 2K lists of L conductances (uS, >= 0, no NaN), or a tensor ``[..., 2K, L]``.
        g_min: minimum conductance (uS); informational, the table sets the conductances.
        g_max: maximum conductance (uS); informational, the table sets the conductances.
        invertibility_test: run :meth:`check_invertibility` and raise ValueError naming the
            non-invertible programs.
        clip: fraction of max|W| the grid spans, in (0, 1]; 1 (the default) is the reference's
            converter.

    The program tensors keep their own device (and dtype when given as tensors; float64 when
    given as lists); conversions cast them to the weights' dtype and device.
    """

    def __init__(
        self,
        f_lst: Sequence[float] | Tensor,
        g_lst: Sequence[Sequence[float]] | Tensor,
        g_min: float = 0.0,
        g_max: float = 25.0,
        invertibility_test: bool = True,
        clip: float = 1.0,
    ) -> None:
        self.g_min, self.g_max = _check_conductance_range(g_min, g_max)
        self.clip = check_clip(clip)
        f = _as_f_tensor(f_lst)
        g = _as_float_tensor(g_lst, "g_lst must be 2K lists of L numbers each (all rows of the "
                                    "same length) or a tensor [..., 2K, L]")
        k = f.shape[-1]
        if g.ndim < 2 or g.shape[-2] != 2 * k:
            raise ValueError(
                f"g_lst must have 2*len(f_lst) = {2 * k} rows (G+, G- per pair) of L values, "
                f"shape [..., {2 * k}, L]; got shape {tuple(g.shape)}"
            )
        if g.shape[-1] < 2:
            raise ValueError(f"g_lst rows need at least L = 2 grid values, got L = {g.shape[-1]}")
        if not bool(torch.isfinite(g).all()):
            raise ValueError(
                f"g_lst must be finite, found {int((~torch.isfinite(g)).sum())} NaN/inf values"
            )
        if bool((g < 0).any()):
            raise ValueError(f"g_lst conductances must be non-negative, min is {g.min().item()}")
        try:
            torch.broadcast_shapes(f.shape[:-1], g.shape[:-2])
        except RuntimeError as err:
            raise ValueError(
                f"batch shapes of f_lst {tuple(f.shape[:-1])} and g_lst {tuple(g.shape[:-2])} "
                "do not broadcast"
            ) from err
        self.f_lst = f.to(g.device)
        self.g_lst = g
        if invertibility_test:
            ok = self.check_invertibility()
            if not bool(ok.all()):
                where = ""
                if ok.ndim:
                    bad = (~ok).nonzero().tolist()
                    more = " ..." if len(bad) > 5 else ""
                    where = f" ({len(bad)} of {ok.numel()}, at batch indices {bad[:5]}{more})"
                raise ValueError(
                    f"CustomPair program not invertible{where}: "
                    "the net weight curve sum_k f_k (G+_k - G-_k) over the grid must be a "
                    "non-zero multiple of the grid weights (increasing, through the origin); a "
                    "curve that is not monotone, not linear, decreasing or all zero does not "
                    "convert back to the weights"
                )

    def _params(self) -> dict[str, Any]:
        params = {**super()._params(), "g_lst": self.g_lst.detach().cpu().double().tolist()}
        if self.clip != 1.0:  # the reference's converter has no clip: records without it
            params["clip"] = self.clip
        return params

    @property
    def batch_shape(self) -> torch.Size:
        """Broadcast batch shape of ``f_lst`` ``[..., K]`` and ``g_lst`` ``[..., 2K, L]``."""
        return torch.broadcast_shapes(self.f_lst.shape[:-1], self.g_lst.shape[:-2])

    @property
    def num_grid_points(self) -> int:
        """L, the number of grid points of the program table."""
        return int(self.g_lst.shape[-1])

    def net_weight_curve(self) -> Tensor:
        """``sum_k f_k (G+_k - G-_k)`` at every grid point, ``[*batch, L]`` in uS."""
        return _net_weight_curve(self.g_lst, self.f_lst.to(self.g_lst))

    def convert_to_conductances(self, weights: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """Conductances of every device of every program for every weight.

        Args:
            weights: unitless weights, any shape ``w`` (finite, not empty); ``M = max|W|``
                over the whole tensor sets the grid (``clip * M`` with a clip).

        Returns:
            ``(G, params)``: ``G`` ``[*batch, 2K, *w]`` in uS; ``params`` holds ``"scale"``
            ``[*batch]`` (uS per unit weight), ``"f"`` ``[*batch, K]``, ``"max_abs_weight"``
            (0-dim, the grid's half-width: M, or ``clip * M``) and ``"weight_shape"``.
        """
        return self._convert(weights, self.clip)

    def _convert(self, weights: Tensor, clip: float) -> tuple[Tensor, dict[str, Any]]:
        weights = _check_weights(weights)
        g = self.g_lst.to(dtype=weights.dtype, device=weights.device)
        f = self.f_lst.to(dtype=weights.dtype, device=weights.device)
        batch = self.batch_shape
        m = _max_abs_weight(weights) * clip
        idx, frac = grid_interpolation(weights.reshape(-1), m, g.shape[-1])
        cond = interpolate_programs(g, idx, frac)  # [*gbatch, 2K, N]
        cond = cond.expand(*batch, *cond.shape[-2:]).reshape(*batch, -1, *weights.shape)
        scale = program_scale(f, g, m)  # [*batch]
        params = {
            "scale": scale.expand(batch),
            "f": f.expand(*batch, f.shape[-1]),
            "max_abs_weight": m,
            "weight_shape": weights.shape,
        }
        return cond, params

    def check_invertibility(self) -> Tensor:
        """Whether each program converts weights back to themselves, bool ``[*batch]``.

        Converts the test weights ``linspace(-1, 1, 2L - 1)`` (every grid point and every
        midpoint between them) and back, in float64, and compares with absolute tolerance 1e-4
        (aihwkit's). The net weight curve is piecewise linear between grid points, so agreement
        at the grid points is agreement everywhere (the midpoints are a cheap second look, and
        include aihwkit's own test weights -1, -0.5, 0, 0.5, 1 when L is odd). An all-zero curve
        (scale 0) fails. The table is what is tested: a clip, which maps the weights beyond its
        grid onto the grid's ends on purpose, is left out.
        """
        test = torch.linspace(
            -1.0, 1.0, 2 * self.num_grid_points - 1, dtype=torch.float64, device=self.g_lst.device
        )
        cond, params = self._convert(test, 1.0)
        back = self.convert_back_to_weights(cond, params)  # [*batch, 2L - 1]
        close = ((back - test).abs() <= _INVERTIBILITY_ATOL).all(-1)  # NaN compares False
        return close & (params["scale"] > 0)

    def to_aihwkit(self, invertibility_test: bool = True):
        """This program as aihwkit's ``CustomPairConductanceConverter`` (for its inference tiles).

        aihwkit's converter takes Python lists (``f_lst`` [K], ``g_lst`` 2K lists of L uS values)
        and uses the same uniform grid ``linspace(-max|W|, max|W|, L)``, so the program means
        the same thing there. Values are passed as float64 Python floats (exact for float32).

        Args:
            invertibility_test: passed on to aihwkit (it then checks the program itself).

        Returns:
            ``aihwkit.inference.converter.conductance.CustomPairConductanceConverter``.

        Raises:
            ValueError: the converter is batched (aihwkit's holds exactly one program), or it
                clips (aihwkit's converter has no clip: clip the weights at ``clip * max|W|``
                yourself and export ``without_clip()``).
            ImportError: aihwkit is not installed.
        """
        if self.clip != 1.0:
            raise ValueError(
                f"aihwkit's CustomPairConductanceConverter has no clip; this program clips the "
                f"weights at {self.clip:g} x max|W|: clip them yourself "
                f"(w.clamp(-c, c), c = {self.clip:g} * w.abs().max()) and export "
                f"converter.without_clip().to_aihwkit()"
            )
        if len(self.batch_shape) != 0:
            raise ValueError(
                f"to_aihwkit needs a single program, this converter has batch shape "
                f"{tuple(self.batch_shape)}; select one first (e.g. f_lst[b], g_lst[b])"
            )
        try:
            from aihwkit.inference.converter.conductance import (
                CustomPairConductanceConverter as AihwkitCustomPair,
            )
        except ImportError as err:
            raise ImportError(
                "to_aihwkit needs IBM's analog hardware acceleration kit: pip install aihwkit"
            ) from err
        return AihwkitCustomPair(
            f_lst=self.f_lst.detach().cpu().double().tolist(),
            g_lst=self.g_lst.detach().cpu().double().tolist(),
            g_min=float(self.g_min),
            g_max=float(self.g_max),
            invertibility_test=invertibility_test,
        )

    def without_clip(self) -> CustomPairConductanceConverter:
        """The same program tables on the reference's grid ``linspace(-max|W|, max|W|, L)``:
        for weights that were already clipped at ``clip * max|W|`` it converts them exactly as
        this converter converts the unclipped weights."""
        return CustomPairConductanceConverter(self.f_lst, self.g_lst, self.g_min, self.g_max,
                                              invertibility_test=False)

    def __repr__(self) -> str:
        clip = f", clip={self.clip:g}" if self.clip != 1.0 else ""
        return (
            f"{type(self).__name__}(K={self.num_pairs}, L={self.num_grid_points}, "
            f"batch_shape={tuple(self.batch_shape)}, g_min={self.g_min}, g_max={self.g_max}"
            f"{clip})"
        )


# --------------------------------------------------------------------------------------------
# Fusion chip
# --------------------------------------------------------------------------------------------


def _as_rows(t: Tensor, weight_shape: Sequence[int]) -> Tensor:
    """View ``[..., *w]`` as rows ``[..., R, C]``.

    1-D weights are one row; 2-D weights ``[out, in]`` have one row per output; higher
    dimensional weights (convolutions) are flattened after the first axis, as analog tiles store
    them.
    """
    nd = len(weight_shape)
    lead = t.shape[: t.ndim - nd]
    if nd == 1:
        return t.reshape(*lead, 1, weight_shape[0])
    return t.reshape(*lead, weight_shape[0], -1)


def _ols_slope(x: Tensor, y: Tensor) -> Tensor:
    """Slope of the least-squares line (with intercept) of y on x along the last dimension.

    Equals scikit-learn's ``LinearRegression().fit(x[:, None], y).coef_[0]``, including 0 when x
    has zero variance (sklearn's minimum-norm answer for a constant row). Both are shifted by
    their first element before centring: the slope is shift invariant, and a constant row then
    centres to exact zeros. (sklearn centres by the mean directly, so for a constant row whose
    mean is not exactly representable, e.g. seven values 0.1, it fits round-off and returns an
    arbitrary slope; here such a row gets 0, the zero-variance answer.)

    Args:
        x, y: ``[..., C]`` (broadcasting).

    Returns:
        ``[...]`` slopes.
    """
    x, y = torch.broadcast_tensors(x, y)
    xc = x - x[..., :1]
    yc = y - y[..., :1]
    xc = xc - xc.mean(-1, keepdim=True)
    yc = yc - yc.mean(-1, keepdim=True)
    sxx = (xc * xc).sum(-1)
    sxy = (xc * yc).sum(-1)
    flat = sxx == 0
    return torch.where(flat, torch.zeros_like(sxy), sxy / torch.where(flat, 1.0, sxx))


class FusionConductanceConverter(Serializable):
    """Fusion chip: one device per weight, per-row scaling (aihwkit's fusion converter).

    Each row (see below) is scaled so that its max |w| maps to g_max:
    ``scale_row = g_max / max_row|w|`` and ``G = clamp(|W| * scale_row, 0, g_max)``; the sign is
    not stored on the device (the reset state is taken as zero conductance). Converting back
    multiplies by ``sign(W_original)`` and rescales each row by the slope of an ordinary
    least-squares fit (with intercept) of the original row (target) on that signed row
    (feature), the slope scikit-learn's LinearRegression reports (0 for a zero-variance row).

    Rows: 1-D weights are one row; 2-D weights ``[out, in]`` have one row per output; higher
    dimensional weights are flattened after their first axis.

    Args:
        g_max: maximum conductance (uS), within [10, 40] (the chip's range).
    """

    g_min = 0.0
    num_devices = 1
    batch_shape = torch.Size([])

    def __init__(self, g_max: float = 40.0) -> None:
        value = _as_float(g_max, "g_max")
        if not 10.0 <= value <= 40.0:
            raise ValueError(f"Fusion g_max must be within [10, 40] uS, got {g_max!r}")
        self.g_max = value

    def _params(self) -> dict[str, Any]:
        return {"g_max": self.g_max}

    def convert_to_conductances(self, weights: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """One conductance per weight.

        Args:
            weights: unitless weights, at least 1-D, finite.

        Returns:
            ``(G, params)``: ``G`` ``[1, *w]`` in uS within ``[0, g_max]``; ``params`` holds
            ``"sign"`` ``[*w]`` (sign of the original weights), ``"weights"`` ``[*w]`` (the
            original weights, the fit's target), ``"scale"`` ``[R]`` (uS per unit weight, per
            row) and ``"weight_shape"``.
        """
        weights = _check_weights(weights)
        if weights.ndim == 0:
            raise ValueError("FusionConductanceConverter needs weights with at least 1 dimension")
        rows = _as_rows(weights, weights.shape)  # [R, C]
        row_max = rows.abs().amax(-1)  # [R]; the floor is relative to the tensor's max|W|
        floor = _FUSION_ZERO_CLIP * nonzero_max_abs(row_max.amax())
        scale = self.g_max / torch.maximum(row_max, floor)  # [R]
        cond = (rows.abs() * scale.unsqueeze(-1)).clamp(0.0, self.g_max).reshape(weights.shape)
        params = {
            "sign": torch.sign(weights),
            "weights": weights,
            "scale": scale,
            "weight_shape": weights.shape,
        }
        return cond.unsqueeze(0), params

    def convert_back_to_weights(self, conductances: Tensor, params: dict[str, Any]) -> Tensor:
        """Unitless weights: signed conductances times each row's least-squares slope.

        Args:
            conductances: ``[..., 1, *w]`` in uS; extra leading dimensions broadcast, and every
                leading index gets its own per-row fit.
            params: the dict returned by ``convert_to_conductances``.

        Returns:
            ``[..., *w]``, dtype/device of ``conductances``.
        """
        for key in ("sign", "weights", "weight_shape"):
            if key not in params:
                raise ValueError(f"params must hold {key!r} (as returned with the conductances)")
        weight_shape = tuple(params["weight_shape"])
        nd = len(weight_shape)
        if (
            conductances.ndim < nd + 1
            or tuple(conductances.shape[conductances.ndim - nd :]) != weight_shape
            or conductances.shape[-nd - 1] != 1
        ):
            raise ValueError(
                f"conductances must have shape [..., 1, *{weight_shape}], "
                f"got {tuple(conductances.shape)}"
            )
        x = params["sign"].to(conductances) * conductances.squeeze(-nd - 1)  # [..., *w]
        x_rows = _as_rows(x, weight_shape)  # [..., R, C]
        y_rows = _as_rows(params["weights"].to(conductances), weight_shape)  # [R, C]
        slope = _ols_slope(x_rows, y_rows)  # [..., R]
        return (slope.unsqueeze(-1) * x_rows).reshape(x.shape)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(g_max={self.g_max})"
