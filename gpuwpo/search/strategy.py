"""The strategy space: decode points of the unit hypercube into weight-programming programs.

A *program* is what a ``CustomPairConductanceConverter`` needs: significance factors
``f`` [..., K] and conductance rows ``g_lst`` [..., 2K, L] (rows G+_0, G-_0, G+_1, G-_1, ...)
on the uniform weight grid ``linspace(-M, M, L)``, M = max|test weights|, L = 2 * nbins - 1.
Differential evolution searches the D-dimensional unit hypercube; :class:`StrategySpace`
maps a whole population of points to programs in one batched call (docs/DESIGN.md section 4).

The coordinate order and every formula follow IBM aihwkit's reference
(``aihwkit.inference.converter.wpo.denormalize``), so that a point found here decodes to the
same program there and vice versa:

1. one coordinate per free significance factor (``None`` in ``f_lst``), in list order:
   ``f = f_min + x * (f_max - f_min)``;
2. unless ``use_max_kw``: ``x_kw``; the largest programmed weight is
   ``W_us_max = (0.05 + 0.95 * x_kw) * sum_k f_k (g_max - g_min)`` and ``k_w = W_us_max / M``
   (micro-Siemens per unit weight); with ``use_max_kw`` it is ``sum_k f_k (g_max - g_min)``;
3. blocks of n values (n = nbins if symmetric, else L), one value per decoded grid point in grid
   order: ``[x_g pair 0, x_delta pair 0, x_g pair 1, x_delta pair 1, ..., x_g pair K-1]``;
4. a gpuwpo extension, only with ``clip_range=(low, high)``: the clip fraction
   ``c = low + x_c * (high - low)``, the LAST coordinate (after the reference's, so that the
   reference's coordinates keep their positions): the program's grid spans ``c`` times the
   largest magnitude of the tile weights (of each row under the per-column mapping,
   docs/DESIGN.md section 5c).

All conductances are in micro-Siemens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..checks import check_clip, describe_values

if TYPE_CHECKING:  # the converters module imports nothing from here; keep the import lazy
    from gpuwpo.device.converters import CustomPairConductanceConverter

__all__ = ["StrategySpace", "START_RATIOS", "START_FRACTIONS", "START_CLIPS", "check_clip_range"]

#: Ratios F of the significance factors of the standard N-pair starts (f_k = F**k).
START_RATIOS = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0)
#: Shares of the full conductance range given to the largest weight in the standard starts.
START_FRACTIONS = (1.0, 0.8, 0.6)
#: Clip fractions of the standard starts when the clip is searched (those inside the range, and
#: the range's top, the least clipping it allows): the lever measured on heavy-tailed layers lies
#: at 0.5-0.7 x max|W| (docs/DESIGN.md section 5c).
START_CLIPS = (1.0, 0.8, 0.6)


def check_clip_range(clip_range: object) -> tuple[float, float] | None:
    """``clip_range`` as ``(low, high)`` floats with ``0 < low <= high <= 1``, or None; else a
    ValueError naming the value."""
    if clip_range is None:
        return None
    ok = (isinstance(clip_range, (tuple, list)) and len(clip_range) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                  for v in clip_range))
    if not ok or not 0.0 < float(clip_range[0]) <= float(clip_range[1]) <= 1.0:
        raise ValueError(f"clip_range must be None or (low, high) with 0 < low <= high <= 1 "
                         f"(fractions of each row's max|W|), got {clip_range!r}")
    return float(clip_range[0]), float(clip_range[1])


def _finite_float(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


class StrategySpace:
    """Batched map from the unit hypercube to CustomPair weight-programming programs.

    Args:
        f_lst: significance factor of each of the K conductance pairs, lowest significance
            first; a number fixes it, ``None`` lets the search choose it in [f_min, f_max].
        g_min: smallest programmable conductance (uS).
        g_max: largest programmable conductance (uS).
        nbins: grid points on the non-positive half of the weight grid including 0;
            the grid has L = 2 * nbins - 1 points.
        symmetric: if True only the non-positive half (nbins points) is searched and mirrored
            onto the positive half (G+ and G- exchanged), halving the dimension.
        g_err: over/under-programming allowance (uS): the G+ range of each pair is widened by
            g_err on both sides before clipping to [g_min, g_max]. Note that the optimizer's
            ``g_err`` is a fraction of (g_max - g_min), as in the reference; this one is not.
        f_min, f_max: range of the free significance factors.
        use_max_kw: if True the largest weight always uses the full conductance range of all
            pairs and the x_kw coordinate is dropped.
        clip: the programs' grid spans ``clip * max|W|`` (a gpuwpo extension, in (0, 1]; 1,
            the default, is the reference's space): the weights beyond it are programmed as
            if clipped there (:class:`gpuwpo.CustomPairConductanceConverter`'s ``clip``). The
            programs themselves do not depend on it; the converters and the objective's test
            tiles do.
        clip_range: None (the default: no clip coordinate) or ``(low, high)``, ``0 < low <=
            high <= 1``: the clip is searched, one more coordinate at the end of x decoding to
            ``c`` in [low, high] (see the module docstring); the fixed ``clip`` must then stay 1.

    Raises:
        ValueError: for an empty ``f_lst``, a fixed f that is not a positive finite number,
            ``g_min < 0`` or ``g_min >= g_max``, ``nbins < 2``, ``f_min <= 0`` or
            ``f_min >= f_max``, ``g_err`` outside [0, g_max - g_min], a bad ``clip_range``,
            or a ``clip_range`` with a fixed ``clip`` below 1.
    """

    def __init__(
        self,
        f_lst: Sequence[float | None],
        g_min: float = 0.0,
        g_max: float = 25.0,
        nbins: int = 6,
        symmetric: bool = True,
        g_err: float = 0.0,
        f_min: float = 0.1,
        f_max: float = 5.0,
        use_max_kw: bool = False,
        clip: float = 1.0,
        clip_range: tuple[float, float] | None = None,
    ) -> None:
        self.clip = check_clip(clip)
        self.clip_range = check_clip_range(clip_range)
        if self.clip_range is not None and self.clip != 1.0:
            raise ValueError(f"give either a fixed clip ({self.clip:g}) or a searched "
                             f"clip_range {self.clip_range}, not both")
        if isinstance(f_lst, (str, bytes)) or not isinstance(f_lst, Sequence):
            raise ValueError(f"f_lst must be a sequence of numbers or None, got {f_lst!r}")
        if len(f_lst) == 0:
            raise ValueError("f_lst must name at least one conductance pair, got an empty list")
        fixed: list[float | None] = []
        for k, f in enumerate(f_lst):
            if f is None:
                fixed.append(None)
                continue
            f = _finite_float(f"f_lst[{k}]", f)
            if f <= 0.0:
                raise ValueError(f"f_lst[{k}] must be positive (or None), got {f!r}")
            fixed.append(f)
        self.g_min = _finite_float("g_min", g_min)
        self.g_max = _finite_float("g_max", g_max)
        if self.g_min < 0.0:
            raise ValueError(f"g_min must be >= 0 uS, got {self.g_min!r}")
        if self.g_min >= self.g_max:
            raise ValueError(f"g_min must be < g_max, got g_min={self.g_min!r}, "
                             f"g_max={self.g_max!r}")
        if isinstance(nbins, bool) or not isinstance(nbins, int):
            raise ValueError(f"nbins must be an int, got {nbins!r}")
        if nbins < 2:
            raise ValueError(f"nbins must be >= 2, got {nbins!r}")
        self.f_min = _finite_float("f_min", f_min)
        self.f_max = _finite_float("f_max", f_max)
        if self.f_min <= 0.0:
            raise ValueError(f"f_min must be positive, got {self.f_min!r}")
        if self.f_min >= self.f_max:
            raise ValueError(f"f_min must be < f_max, got f_min={self.f_min!r}, "
                             f"f_max={self.f_max!r}")
        self.g_err = _finite_float("g_err", g_err)
        # Beyond the full range the widening only moves more of the G+ range into the clip.
        if not 0.0 <= self.g_err <= self.g_max - self.g_min:
            raise ValueError(f"g_err must lie in [0, g_max - g_min] = "
                             f"[0, {self.g_max - self.g_min!r}] uS, got {self.g_err!r}")
        self.f_lst: list[float | None] = fixed
        self.nbins = nbins
        self.symmetric = bool(symmetric)
        self.use_max_kw = bool(use_max_kw)
        # Positions in f_lst of the factors the search chooses, in coordinate order.
        self.free_f_indices: tuple[int, ...] = tuple(
            k for k, f in enumerate(fixed) if f is None
        )

    # ------------------------------------------------------------------ sizes
    @property
    def num_pairs(self) -> int:
        """K, the number of conductance pairs."""
        return len(self.f_lst)

    @property
    def grid_size(self) -> int:
        """L = 2 * nbins - 1, the number of points of the weight grid."""
        return 2 * self.nbins - 1

    @property
    def num_points(self) -> int:
        """n, grid points decoded from the hypercube: nbins if symmetric, else L."""
        return self.nbins if self.symmetric else self.grid_size

    @property
    def num_free_f(self) -> int:
        """Number of significance factors the search chooses (``None`` in f_lst)."""
        return len(self.free_f_indices)

    @property
    def searches_clip(self) -> bool:
        """Whether the clip is a coordinate (``clip_range`` given)."""
        return self.clip_range is not None

    @property
    def dim(self) -> int:
        """D = n * (2K - 1) + num_free_f + (0 if use_max_kw else 1) + (1 with a clip_range)."""
        return (self.num_points * (2 * self.num_pairs - 1) + self.num_free_f
                + (0 if self.use_max_kw else 1) + (1 if self.searches_clip else 0))

    @property
    def bounds(self) -> list[tuple[float, float]]:
        """[(0.0, 1.0)] * D, in the form scipy's differential_evolution takes."""
        return [(0.0, 1.0)] * self.dim

    @property
    def bounds_tensor(self) -> torch.Tensor:
        """Bounds as a [D, 2] tensor (columns lower, upper) of the default dtype, on the CPU."""
        bounds = torch.zeros(self.dim, 2)
        bounds[:, 1] = 1.0
        return bounds

    def __repr__(self) -> str:
        return (f"StrategySpace(f_lst={self.f_lst!r}, g_min={self.g_min!r}, "
                f"g_max={self.g_max!r}, nbins={self.nbins!r}, symmetric={self.symmetric!r}, "
                f"g_err={self.g_err!r}, f_min={self.f_min!r}, f_max={self.f_max!r}, "
                f"use_max_kw={self.use_max_kw!r}"
                + (f", clip={self.clip!r}" if self.clip != 1.0 else "")
                + (f", clip_range={self.clip_range!r}" if self.searches_clip else "")
                + f") with dim={self.dim}")

    # ------------------------------------------------------------------ grid
    def grid(
        self,
        max_abs_weight: float | torch.Tensor,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """The uniform weight grid linspace(-M, M, L).

        Args:
            max_abs_weight: M (unitless weight), a positive float or a tensor of shape [...].
            dtype, device: for a float M (default: torch's default dtype, CPU); a tensor M
                keeps its own unless they are given.

        Returns:
            w_grid [..., L] (unitless weights). Computed as M * (i - (L-1)/2) / ((L-1)/2),
            which equals linspace(-M, M, L) to rounding but is exactly antisymmetric with an
            exact 0 in the centre (torch.linspace leaves about -1.5e-8 there in float32), so
            mirrored symmetric programs realise exactly the mirrored targets.
        """
        m = self._max_abs_weight(max_abs_weight, dtype=dtype, device=device)
        return self._grid(m)

    def _grid(self, m: torch.Tensor) -> torch.Tensor:
        half = (self.grid_size - 1) / 2
        steps = torch.arange(self.grid_size, dtype=m.dtype, device=m.device)
        return m.unsqueeze(-1) * ((steps - half) / half)

    @staticmethod
    def _max_abs_weight(
        max_abs_weight: float | torch.Tensor,
        *,
        dtype: torch.dtype | None,
        device: torch.device | str | None,
    ) -> torch.Tensor:
        """M as a tensor, validated positive and finite."""
        if isinstance(max_abs_weight, torch.Tensor):
            m = max_abs_weight.to(dtype=dtype or max_abs_weight.dtype,
                                  device=device or max_abs_weight.device)
            if not m.is_floating_point():
                m = m.to(torch.get_default_dtype())
        else:
            if isinstance(max_abs_weight, bool) or not isinstance(max_abs_weight, (int, float)):
                raise ValueError(
                    f"max_abs_weight must be a float or a tensor, got {max_abs_weight!r}")
            m = torch.tensor(float(max_abs_weight), dtype=dtype, device=device)
        # One host sync per call: cheap next to the objective, and a bad M would otherwise
        # turn every program into NaN silently.
        if not bool(torch.all(torch.isfinite(m) & (m > 0))):
            raise ValueError(
                f"max_abs_weight must be positive and finite, got {max_abs_weight!r}")
        return m

    # ------------------------------------------------------------------ decode
    def decode(
        self,
        x: torch.Tensor,
        max_abs_weight: float | torch.Tensor,
        *,
        validate: bool = True,
        return_clip: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Decode hypercube points into programs, a whole batch at once.

        Args:
            x: [..., D] points of the unit hypercube (any leading batch dimensions, e.g.
                [B, P, D] for B layers of P candidates). Float dtypes are kept; integer
                input is cast to torch's default dtype.
            max_abs_weight: M (unitless), a positive float or a tensor broadcastable to x's
                batch shape [...] (e.g. [B, 1] for one M per layer).
            validate: check that x lies in [0, 1] and M is positive (one host sync each);
                a caller that already guarantees both may skip it.
            return_clip: also return each point's clip fraction (:meth:`clips`).

        Returns:
            f: [..., K] significance factors (unitless).
            g_lst: [..., 2K, L] conductances (uS), rows G+_0, G-_0, G+_1, G-_1, ...,
                on the grid ``self.grid(M)``, each in [g_min, g_max].
            k_w: [...] weight-to-micro-Siemens factor (uS per unit weight): with g_err = 0 the
                program realises sum_k f_k (G+_k - G-_k) = k_w * w_grid at every grid point.
            clip: [...] (only with ``return_clip``) the fraction of the tile's max|W| the
                program's grid spans: the clip coordinate's value with a ``clip_range``, else
                the fixed ``clip``. The tables do not depend on it (only where the grid lies).
            All on x's device, in x's dtype.

        Raises:
            ValueError: if x's last dimension is not D, x has values outside [0, 1] (or NaN),
                M is not positive and finite, or M does not broadcast to x's batch shape.
        """
        x = self._as_points(x)
        if validate and not bool(torch.all((x >= 0.0) & (x <= 1.0))):
            bad = x[~((x >= 0.0) & (x <= 1.0))]
            raise ValueError(f"x must lie in the unit hypercube [0, 1]^D; found values such "
                             f"as {bad.flatten()[:4].tolist()}")
        if validate:
            m = self._max_abs_weight(max_abs_weight, dtype=x.dtype, device=x.device)
        else:
            m = torch.as_tensor(max_abs_weight, dtype=x.dtype, device=x.device)
        batch_shape = x.shape[:-1]
        try:
            broadcast = torch.broadcast_shapes(batch_shape, m.shape)
        except RuntimeError as err:
            raise ValueError(f"max_abs_weight of shape {tuple(m.shape)} does not broadcast to "
                             f"x's batch shape {tuple(batch_shape)}") from err
        if broadcast != batch_shape:
            raise ValueError(f"max_abs_weight of shape {tuple(m.shape)} does not broadcast to "
                             f"x's batch shape {tuple(batch_shape)}")
        m = m.expand(batch_shape)

        g_min, g_max, g_err = self.g_min, self.g_max, self.g_err
        num_pairs, n = self.num_pairs, self.num_points

        # 1. significance factors: fixed ones broadcast, free ones from the first coordinates.
        f_cols: list[torch.Tensor] = []
        free = iter(range(self.num_free_f))
        for f_fixed in self.f_lst:
            if f_fixed is None:
                x_f = x[..., next(free)]
                # Same operation order as the reference, so both decode to the same floats.
                f_cols.append(x_f * (self.f_max - self.f_min) + self.f_min)
            else:
                f_cols.append(torch.full(batch_shape, f_fixed, dtype=x.dtype, device=x.device))
        offset = self.num_free_f

        # 2. k_w from x_kw: the largest weight spans 5 % .. 100 % of the total conductance range.
        spans = [f_k * (g_max - g_min) for f_k in f_cols]
        w_us_absolute_max = torch.zeros_like(spans[0])
        for span in spans:
            w_us_absolute_max = w_us_absolute_max + span
        if self.use_max_kw:
            w_us_max = w_us_absolute_max
        else:
            lower = 0.05 * w_us_absolute_max
            w_us_max = x[..., offset] * (w_us_absolute_max - lower) + lower
            offset += 1
        k_w = w_us_max / m

        # 3. blocks [x_g 0, x_delta 0, x_g 1, ..., x_g K-1], each [..., n] in grid order (the
        # clip coordinate, if any, follows them).
        blocks = x[..., offset:offset + (2 * num_pairs - 1) * n].unflatten(
            -1, (2 * num_pairs - 1, n))
        # Targets of the decoded points: the first n grid points (the non-positive half when
        # symmetric), in micro-Siemens.
        target = k_w.unsqueeze(-1) * self._grid(m)[..., :n]

        g_plus_cols: list[torch.Tensor] = []
        g_minus_cols: list[torch.Tensor] = []
        for j in range(num_pairs):
            span_j = spans[j].unsqueeze(-1)
            # Summed low-to-high like the reference, to decode to the same floats.
            rest = torch.zeros_like(span_j)
            for m_idx in range(j + 1, num_pairs):
                rest = rest + spans[m_idx].unsqueeze(-1)
            # The window of contributions of pair j that the later pairs can still complete.
            lo = torch.maximum(target - rest, -span_j)
            hi = torch.minimum(target + rest, span_j)
            if j < num_pairs - 1:
                f_delta_g = blocks[..., 2 * j + 1, :] * (hi - lo) + lo
            else:  # x_delta = 1: the last pair takes the remainder
                f_delta_g = (hi - lo) + lo
            target = target - f_delta_g
            delta_g = f_delta_g / f_cols[j].unsqueeze(-1)
            # Where on the line G+ - G- = delta_g the pair sits, widened by g_err each side.
            gp_lo = g_min + delta_g.clamp(min=0.0) - g_err
            gp_hi = g_max + delta_g.clamp(max=0.0) + g_err
            g_plus = (blocks[..., 2 * j, :] * (gp_hi - gp_lo) + gp_lo).clamp(g_min, g_max)
            g_minus = (g_plus - delta_g).clamp(g_min, g_max)
            g_plus_cols.append(g_plus)
            g_minus_cols.append(g_minus)

        g_plus = torch.stack(g_plus_cols, dim=-2)  # [..., K, n]
        g_minus = torch.stack(g_minus_cols, dim=-2)
        if self.symmetric:
            # Mirror point i onto L-1-i with G+ and G- exchanged. The reference mirrors from the
            # freshly decoded values, so the centre point (i = nbins-1) ends up exchanged too.
            g_plus, g_minus = (
                torch.cat((g_plus[..., : n - 1], g_minus.flip(-1)), dim=-1),
                torch.cat((g_minus[..., : n - 1], g_plus.flip(-1)), dim=-1),
            )
        g_lst = torch.stack((g_plus, g_minus), dim=-2).flatten(-3, -2)  # [..., 2K, L]
        f = torch.stack(f_cols, dim=-1)
        if return_clip:
            return f, g_lst, k_w, self.clips(x, validate=False)
        return f, g_lst, k_w

    def _as_points(self, x) -> torch.Tensor:
        """``x`` as a floating tensor of points [..., D] (integers in the default dtype),
        refused by name when its last dimension is not D."""
        x = torch.as_tensor(x)
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape [..., {self.dim}] (D = dim), got "
                             f"{tuple(x.shape)}")
        return x

    def clips(self, x: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
        """The clip fraction of every point: ``x`` [..., D] -> [...] in x's dtype (float for
        integer x): ``low + x_c (high - low)`` with a ``clip_range`` (x_c the last
        coordinate), else the fixed ``clip`` everywhere."""
        x = self._as_points(x)
        if not self.searches_clip:
            return torch.full(x.shape[:-1], self.clip, dtype=x.dtype, device=x.device)
        x_c = x[..., -1]
        if validate and not bool(torch.all((x_c >= 0.0) & (x_c <= 1.0))):
            raise ValueError(f"the clip coordinate must lie in [0, 1], found values such as "
                             f"{x_c[~((x_c >= 0.0) & (x_c <= 1.0))].flatten()[:4].tolist()}")
        low, high = self.clip_range
        # The ends exactly (an unclipped start decodes to clip 1, never to 1 - ulp or 1 + ulp).
        c = (x_c * (high - low) + low).clamp(low, high)
        return torch.where(x_c >= 1.0, torch.full_like(c, high), c)

    def encode_npair(self, f_lst: Sequence[float] | None = None,
                     fraction: float = 1.0, clip: float | None = None) -> torch.Tensor:
        """The point of the hypercube whose program is the N-pair converter's (lower pairs first).

        The standard converters (SinglePair, DualPair, NPair with the same K) fill pair 0 first,
        then pair 1, and so on, with the other device of each pair at g_min and the largest
        weight at the full range. In the strategy space that is x_kw = 1, x_g = 0 everywhere,
        and per grid point an x_delta that gives pair j all of the remaining target it can
        hold. At the grid points the decoded program equals the converter exactly (between them
        it is the linear interpolation). Warm-starting a search from it means the search starts
        from the baseline instead of from random programs.

        Args:
            f_lst: significance factors, one per pair; must equal the fixed ones and lie within
                [f_min, f_max] for the free ones. Default: the fixed ones and 1.0 for free ones.
            fraction: the share of the full range ``sum_k f_k (g_max - g_min)`` that the largest
                weight gets, in [0.05, 1] (the x_kw coordinate; 1 for the standard converters,
                and the only value when ``use_max_kw``).
            clip: with a ``clip_range``, the clip fraction in [low, high] (default ``high``, the
                least clipping the range allows); without one it must be None or the fixed
                ``clip``.

        Returns:
            x [D] (float64) in the unit hypercube.
        """
        f = [1.0 if v is None else float(v) for v in self.f_lst] if f_lst is None else \
            [float(v) for v in f_lst]
        if len(f) != self.num_pairs:
            raise ValueError(f"f_lst needs {self.num_pairs} values, got {list(f)}")
        fraction = _finite_float("fraction", fraction)
        if not 0.05 <= fraction <= 1.0:
            raise ValueError(f"fraction must lie in [0.05, 1], got {fraction!r}")
        if self.use_max_kw and fraction != 1.0:
            raise ValueError("with use_max_kw the largest weight always uses the full range; "
                             f"fraction must be 1, got {fraction!r}")
        x: list[float] = []
        for k, fixed in enumerate(self.f_lst):
            if fixed is None:
                if not self.f_min <= f[k] <= self.f_max:
                    raise ValueError(f"f_lst[{k}] = {f[k]} is outside [f_min, f_max] = "
                                     f"[{self.f_min}, {self.f_max}]")
                x.append((f[k] - self.f_min) / (self.f_max - self.f_min))
            elif f[k] != fixed:
                raise ValueError(f"f_lst[{k}] = {f[k]} differs from the space's fixed {fixed}")
        if not self.use_max_kw:
            x.append((fraction - 0.05) / 0.95)
        spans = [fk * (self.g_max - self.g_min) for fk in f]
        w_grid = self._grid(torch.ones((), dtype=torch.float64))[: self.num_points].tolist()
        blocks = [[0.0] * self.num_points for _ in range(2 * self.num_pairs - 1)]
        for i, w in enumerate(w_grid):
            target = sum(spans) * fraction * w
            for j in range(self.num_pairs - 1):
                rest = sum(spans[j + 1:])
                lo, hi = max(target - rest, -spans[j]), min(target + rest, spans[j])
                share = min(max(target, -spans[j]), spans[j])
                blocks[2 * j + 1][i] = (share - lo) / (hi - lo) if hi > lo else 0.0
                target -= lo + blocks[2 * j + 1][i] * (hi - lo)
        x.extend(v for block in blocks for v in block)
        x.extend(self._encode_clip(clip))
        return torch.tensor(x, dtype=torch.float64).clamp(0.0, 1.0)

    def _encode_clip(self, clip: float | None) -> list[float]:
        """The clip coordinate of ``clip`` ([] without a clip_range), checked."""
        if not self.searches_clip:
            if clip is not None and check_clip(clip) != self.clip:
                raise ValueError(f"this space's clip is fixed at {self.clip:g}, got clip={clip!r} "
                                 f"(give clip_range to search it)")
            return []
        low, high = self.clip_range
        clip = high if clip is None else check_clip(clip)
        if not low <= clip <= high:
            raise ValueError(f"clip={clip:g} is outside the clip_range [{low:g}, {high:g}]")
        return [1.0 if clip == high else 0.0 if high == low else (clip - low) / (high - low)]

    def start_clips(self, clips: Sequence[float] = START_CLIPS) -> list[float]:
        """The clip fractions of the standard starts: those of ``clips`` inside the
        ``clip_range`` and its top, largest first; ``[clip]`` (the fixed one) without a range."""
        if not self.searches_clip:
            return [self.clip]
        low, high = self.clip_range
        inside = {float(c) for c in clips if low <= float(c) <= high}
        return sorted(inside | {high}, reverse=True)

    def standard_factors(self, ratios: Sequence[float] = START_RATIOS) -> list[list[float]]:
        """The significance factors of the standard N-pair converters this space holds:
        ``f_k = F**k`` per ratio F (fixed factors keep their value), those with a free factor
        outside [f_min, f_max] left out, in the order of ``ratios``."""
        out = []
        for ratio in ratios:
            f = [float(ratio) ** k if fixed is None else float(fixed)
                 for k, fixed in enumerate(self.f_lst)]
            if not any(fixed is None and not self.f_min <= fk <= self.f_max
                       for fk, fixed in zip(f, self.f_lst)):
                out.append(f)
        return out

    def standard_starts(
        self,
        ratios: Sequence[float] = START_RATIOS,
        fractions: Sequence[float] = START_FRACTIONS,
        clips: Sequence[float] | None = None,
    ) -> tuple[torch.Tensor, list[str]]:
        """The standard converters this space can express, as points: a search's standard starts.

        N-pair programs (:meth:`encode_npair`) with significance factors ``f_k = F**k`` over a
        grid of ratios F (fixed factors keep their value; combinations outside [f_min, f_max]
        are left out) and, for each, the largest weight at a grid of fractions of the full range
        (the k_w coordinate; only 1 with ``use_max_kw``), and with a ``clip_range`` each of
        those under every clip of :meth:`start_clips`. Duplicates are dropped; the order is the
        grids' (ratios outer, then fractions, clips inner).

        Args:
            ratios: F values (> 0); 1 gives f = [1, 1, ...], the DualPair f=[1, 1] for K = 2.
            fractions: shares of the full range in [0.05, 1].
            clips: clip fractions offered to :meth:`start_clips` (default
                :data:`START_CLIPS`); only used with a ``clip_range``.

        Returns:
            ``(x [S, D] float64, labels)``, e.g. label ``"NPair f=[1, 3] range=0.75"``, with a
            clip below 1 ``"NPair f=[1, 3] range=0.75 clip=0.6"``.
        """
        points: list[torch.Tensor] = []
        labels: list[str] = []
        fractions = [1.0] if self.use_max_kw else list(fractions)
        start_clips = self.start_clips(START_CLIPS if clips is None else clips)
        for f in self.standard_factors(ratios):
            for fraction in fractions:
                for clip in start_clips:
                    x = self.encode_npair(f, fraction, clip if self.searches_clip else None)
                    if any(torch.equal(x, p) for p in points):
                        continue
                    points.append(x)
                    labels.append(f"NPair f=[{', '.join(f'{v:g}' for v in f)}] "
                                  f"range={float(fraction):g}"
                                  + (f" clip={clip:g}" if self.searches_clip and clip != 1.0
                                     else ""))
        if not points:
            return torch.zeros((0, self.dim), dtype=torch.float64), []
        return torch.stack(points), labels

    def to_converter(
        self,
        x: torch.Tensor,
        max_abs_weight: float | torch.Tensor,
        *,
        invertibility_test: bool = True,
        clip: float | None = None,
    ) -> CustomPairConductanceConverter:
        """Decode ``x`` and wrap the programs in one batched CustomPairConductanceConverter.

        Args:
            x: [..., D] hypercube points; max_abs_weight: M as in :meth:`decode`.
            invertibility_test: passed to the converter (rejects non-invertible programs).
            clip: override the points' clip (e.g. 1.0: the same program unclipped); None: the
                points' own (:meth:`clips`).

        Returns:
            ``CustomPairConductanceConverter(f [..., K], g_lst [..., 2K, L], g_min, g_max,
            clip=c)``. A converter holds one clip: with a ``clip_range``, points of different
            clips are refused (convert them one by one).
        """
        # Imported here so that the strategy space does not depend on the converters at import.
        from gpuwpo.device.converters import CustomPairConductanceConverter

        f, g_lst, _, clips = self.decode(x, max_abs_weight, return_clip=True)
        if clip is None:
            values = clips.reshape(-1).unique()
            if values.numel() != 1:
                raise ValueError(f"the points have {values.numel()} different clips "
                                 f"({describe_values(values)}); a converter holds one: convert "
                                 "them one by one")
            clip = float(values[0])
        return CustomPairConductanceConverter(
            f, g_lst, g_min=self.g_min, g_max=self.g_max, invertibility_test=invertibility_test,
            clip=clip,
        )
