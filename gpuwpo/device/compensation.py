"""Drift compensation: the scale ``alpha_t`` that maps drifted tile weights back to the original.

Right after programming, the tile reads out an identity input (every one-hot vector, so each
weight once); at inference time t it does so again, and

    alpha_t = max(mean|read(W_prog)|, eps) / max(mean|read(W_t)|, eps),   eps = 1e-4 M

so that ``alpha_t * W_t`` is the compensated weight (docs/DESIGN.md section 2). With
``exact_reference=True`` the reference is taken from the ideal target weights instead, exactly
and without the periphery (the reference toolkit's ``GlobalDriftCompensationWithExactReference``):
``alpha_t = max(mean|W|, eps) / max(mean|read(W_t)|, eps)``.

The floor ``eps`` only keeps an all-zero readout from dividing by zero. It is relative to the
tile's scale M (max|W| of the ideal weights of the tile, or of the programmed weights when the
ideal ones are not given), so that alpha, and the weight error, do not depend on the units of
the weights: the reference toolkit's floor is an absolute 1e-4, the same as gpuwpo's for weights
of max|W| = 1 (the normalisation its converters and this project's tests use). An all-zero
tile (M = 0) gets the dtype's smallest normal number as the floor (alpha = 1).

``read`` is the tile's forward pass of a one-hot input through its periphery, in the reference
toolkit's order (``aihwkit.simulator.tiles.analog_mvm``): the input 1 is divided by the bound
management's reduction r (1, 2, 4, ...) and quantised to ``input_step``; the output
``x_in * w`` gets additive Gaussian noise (std ``readout_noise``, weight units), is quantised to
``readout_step`` (round half to even) and clipped to ``+-readout_bound``; then multiplied back by
r. With ``bound_management=True`` a readout in which any output of a tile would clip is repeated
with r doubled (fresh noise) until none clips, or until ``r > max_bm_factor`` or
``r > max_bm_res / input_step``. In hardware this periphery pulls alpha towards 1 when the
readout is noise-dominated, which changes which programming strategy is best; the ideal
periphery (the default) reads the weights exactly. :meth:`GlobalDriftCompensation.aihwkit_default`
is the reference toolkit's default inference periphery by name.

:class:`GlobalDriftCompensation` takes one alpha per tile (the mean over the last ``tile_ndim``
dimensions); :class:`PerColumnDriftCompensation` one alpha per crossbar column, i.e. per output
row of a torch weight matrix ``[out_features, in_features]`` (the mean over the last dimension).
The bound management always looks at the whole tile (one forward pass reads all of it).
"""

from __future__ import annotations

import math

import torch

from ..registry import Serializable
from ..rng import make_generator

__all__ = ["GlobalDriftCompensation", "PerColumnDriftCompensation", "kernel_compensation",
           "AIHWKIT_OUT_NOISE", "AIHWKIT_OUT_BOUND", "AIHWKIT_OUT_RES", "AIHWKIT_INP_RES",
           "AIHWKIT_INP_BOUND"]

# Floor of the mean absolute readout, relative to the tile's max|W|: an all-zero readout must
# not divide by zero, and the floor must not depend on the weights' units (the reference's is
# an absolute 1e-4, which equals this one at max|W| = 1).
_MEAN_ABS_FLOOR = 1e-4

#: The reference toolkit's default forward periphery (aihwkit 1.1.0 ``IOParameters``): output
#: noise (weight units), output bound, output resolution (a fraction of the range 2 * bound),
#: input resolution and input bound. Its bound management is ITERATIVE with max_bm_factor 1000
#: and max_bm_res 0.25.
AIHWKIT_OUT_NOISE = 0.06
AIHWKIT_OUT_BOUND = 12.0
AIHWKIT_OUT_RES = 1.0 / (2**9 - 2)
AIHWKIT_INP_RES = 1.0 / (2**7 - 2)
AIHWKIT_INP_BOUND = 1.0


def kernel_compensation(compensation: object) -> str | None:
    """What the Triton kernel implements for this compensation, or None (then torch runs).

    An explicit whitelist: exactly :class:`GlobalDriftCompensation` (not a subclass) with an
    ideal periphery and the programmed-weights reference is ``"global-ideal"``.
    """
    if type(compensation) is GlobalDriftCompensation and compensation.is_ideal \
            and not compensation.exact_reference:
        return "global-ideal"
    return None


def _check_scalar(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    return float(value)


def _check_bool(name: str, value: object) -> bool:
    # bool("false") is True: a flag read from a file must be a real bool, never coerced.
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _nonneg(name: str, value: object) -> float:
    v = _check_scalar(name, value)
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return v


def _mean_abs_floor(w: torch.Tensor, tile_ndim: int, dtype: torch.dtype) -> torch.Tensor:
    """``1e-4 max|w|`` over each tile (dims kept), at least the dtype's smallest normal."""
    scale = w.detach().abs().amax(dim=tuple(range(-tile_ndim, 0)), keepdim=True).to(dtype)
    return (scale * _MEAN_ABS_FLOOR).clamp_(min=torch.finfo(dtype).tiny)


def _quantise(x: torch.Tensor, step: float) -> torch.Tensor:
    """``round(x / step) * step`` (round half to even), as the reference computes it."""
    return torch.round(x / step) * step


class GlobalDriftCompensation(Serializable):
    """Global drift compensation with an optional non-ideal readout periphery.

    Args:
        readout_noise: std of the additive Gaussian output noise, in weight units (>= 0).
        readout_step: quantisation step of the output in weight units (>= 0); outputs are
            rounded to the nearest multiple; 0 means no quantisation.
        readout_bound: outputs are clipped to ``[-readout_bound, readout_bound]`` (> 0);
            ``None`` means no clipping.
        exact_reference: take the reference readout from the ideal target weights, exactly
            (the reference toolkit's GlobalDriftCompensationWithExactReference).
        input_step: quantisation step of the readout's input (>= 0; 0: none). The one-hot
            input 1 is exact on any step that divides it; it matters when bound management
            reduces the input.
        bound_management: repeat a clipping readout with the input halved (the reference's
            ITERATIVE bound management); needs ``readout_bound``.
        max_bm_factor, max_bm_res: the reduction stops once it exceeds ``max_bm_factor`` or
            ``max_bm_res / input_step``.

    Raises:
        ValueError: on a negative or non-finite noise/step, a bound <= 0, or bound management
            without a bound.
    """

    def __init__(
        self,
        readout_noise: float = 0.0,
        readout_step: float = 0.0,
        readout_bound: float | None = None,
        *,
        exact_reference: bool = False,
        input_step: float = 0.0,
        bound_management: bool = False,
        max_bm_factor: float = 1000.0,
        max_bm_res: float = 0.25,
    ) -> None:
        self.readout_noise = _nonneg("readout_noise", readout_noise)
        self.readout_step = _nonneg("readout_step", readout_step)
        if readout_bound is not None:
            bound = _check_scalar("readout_bound", readout_bound)
            if math.isnan(bound) or bound <= 0.0:
                raise ValueError(f"readout_bound must be > 0 or None, got {readout_bound!r}")
            readout_bound = bound
        self.readout_bound = readout_bound
        self.exact_reference = _check_bool("exact_reference", exact_reference)
        self.input_step = _nonneg("input_step", input_step)
        self.bound_management = _check_bool("bound_management", bound_management)
        if self.bound_management and (readout_bound is None or math.isinf(readout_bound)):
            raise ValueError("bound_management needs a finite readout_bound to test against")
        self.max_bm_factor = _check_scalar("max_bm_factor", max_bm_factor)
        self.max_bm_res = _check_scalar("max_bm_res", max_bm_res)
        if not (self.max_bm_factor >= 1.0 and self.max_bm_res > 0.0):
            raise ValueError(f"max_bm_factor must be >= 1 and max_bm_res > 0, got "
                             f"{max_bm_factor!r}, {max_bm_res!r}")

    @classmethod
    def aihwkit_default(cls, *, exact_reference: bool = False):
        """The reference toolkit's default inference periphery (aihwkit 1.1.0 IOParameters).

        Output noise 0.06, output quantisation ``out_res * 2 * out_bound`` = 24/510, clipping at
        12, input quantisation ``inp_res * 2 * inp_bound`` = 2/126, iterative bound management
        (max_bm_factor 1000, max_bm_res 0.25): what ``TorchInferenceRPUConfig()`` reads its
        drift compensation through when ``forward.is_perfect`` is False.
        """
        return cls(AIHWKIT_OUT_NOISE, AIHWKIT_OUT_RES * 2 * AIHWKIT_OUT_BOUND, AIHWKIT_OUT_BOUND,
                   exact_reference=exact_reference,
                   input_step=AIHWKIT_INP_RES * 2 * AIHWKIT_INP_BOUND, bound_management=True)

    def _params(self) -> dict:
        return {"readout_noise": self.readout_noise, "readout_step": self.readout_step,
                "readout_bound": self.readout_bound, "exact_reference": self.exact_reference,
                "input_step": self.input_step, "bound_management": self.bound_management,
                "max_bm_factor": self.max_bm_factor, "max_bm_res": self.max_bm_res}

    @property
    def is_ideal(self) -> bool:
        """True when the readout is exact (no noise, no quantisation, no clipping)."""
        return self.readout_noise == 0.0 and self.readout_step == 0.0 and self.readout_bound is None

    def __repr__(self) -> str:
        extra = ""
        if self.exact_reference:
            extra += ", exact_reference=True"
        if self.input_step:
            extra += f", input_step={self.input_step}"
        if self.bound_management:
            extra += (f", bound_management=True, max_bm_factor={self.max_bm_factor}, "
                      f"max_bm_res={self.max_bm_res}")
        return (
            f"{type(self).__name__}(readout_noise={self.readout_noise}, "
            f"readout_step={self.readout_step}, readout_bound={self.readout_bound}{extra})"
        )

    # -- the readout periphery ------------------------------------------------------------
    def _draws(self, z_given: bool) -> bool:
        """Whether a readout may draw noise: a noisy periphery without explicit draws, or with
        bound management (whose repeated passes always draw)."""
        return self.readout_noise > 0.0 and (not z_given or self.bound_management)

    def _input_value(self, reduction: float, like: torch.Tensor) -> torch.Tensor | float:
        """The one-hot input 1 after the reduction and the input quantisation (a scalar)."""
        x = torch.tensor(1.0 / reduction, dtype=like.dtype, device=like.device)
        if self.input_step > 0.0:
            x = torch.clamp(_quantise(x, self.input_step), -1.0, 1.0)
        return x

    def _read_once(self, w: torch.Tensor, z: torch.Tensor | None, reduction: float
                   ) -> torch.Tensor:
        """One pass of the periphery, before the output is clipped and scaled back."""
        out = w if self.input_step == 0.0 and reduction == 1.0 else \
            w * self._input_value(reduction, w)
        if self.readout_noise > 0.0:
            out = out + self.readout_noise * z.to(dtype=w.dtype, device=w.device)
        if self.readout_step > 0.0:
            out = _quantise(out, self.readout_step)
        return out

    def readout(
        self,
        w: torch.Tensor,
        generator: torch.Generator | int | None = None,
        *,
        z: torch.Tensor | None = None,
        tile_ndim: int = 1,
    ) -> torch.Tensor:
        """What the periphery reports for the weights ``w`` (shape ``[..., *tile]``).

        Returns ``w`` itself when the periphery is ideal. ``z`` (standard normals broadcastable
        with ``w``) replaces the random draw of the first pass's noise; a repeated pass of the
        bound management always draws fresh noise from ``generator`` (a generator, an int seed,
        or None for fresh entropy, :mod:`gpuwpo.rng`). ``tile_ndim``: how many trailing
        dimensions form one tile (the unit of the bound management's test).
        """
        if self.is_ideal and self.input_step == 0.0:
            return w
        if self._draws(z is not None):
            generator = make_generator(generator, w.device)
        noisy = self.readout_noise > 0.0
        if noisy and z is None:
            z = torch.randn(w.shape, generator=generator, dtype=w.dtype, device=w.device)
        out = self._read_once(w, z, 1.0)
        if self.bound_management:
            out = self._manage_bounds(w, out, generator, tile_ndim)
        elif self.readout_bound is not None:
            out = torch.clamp(out, -self.readout_bound, self.readout_bound)
        return out

    def _manage_bounds(self, w: torch.Tensor, out: torch.Tensor,
                       generator: torch.Generator, tile_ndim: int) -> torch.Tensor:
        """Iterative bound management: tiles whose readout clips are read again, reduced."""
        bound = self.readout_bound
        dims = tuple(range(-tile_ndim, 0))
        # A NaN output compares False on both sides, as in the reference: it fails the test.
        failing = ~((out <= bound) & (out >= -bound)).all(dim=dims, keepdim=True)
        out = torch.clamp(out, -bound, bound)
        if not bool(failing.any()):
            return out
        w_full = w.expand(torch.broadcast_shapes(w.shape, out.shape))
        result, reduction = out, 1.0
        while bool(failing.any()):
            reduction *= 2.0
            z = torch.randn(w_full.shape, generator=generator, dtype=w.dtype, device=w.device) \
                if self.readout_noise > 0.0 else None
            again = self._read_once(w_full, z, reduction)
            passed = ((again <= bound) & (again >= -bound)).all(dim=dims, keepdim=True)
            scaled = torch.clamp(again, -bound, bound) * reduction
            result = torch.where(failing, scaled, result)
            stop = reduction > self.max_bm_factor or (
                self.input_step > 0.0 and reduction > self.max_bm_res / self.input_step)
            failing = failing & ~passed
            if stop:
                break
        return result

    # -- the compensation factor ----------------------------------------------------------
    def _mean_dims(self, ndim: int, tile_ndim: int) -> tuple[tuple[int, ...], int]:
        """(dimensions the readouts are averaged over, dimensions of one tile)."""
        if isinstance(tile_ndim, bool) or not isinstance(tile_ndim, int) or tile_ndim < 1:
            raise ValueError(f"tile_ndim must be an int >= 1, got {tile_ndim!r}")
        if tile_ndim > ndim:
            raise ValueError(f"tile_ndim={tile_ndim} exceeds the dimensions of the inputs "
                             f"({ndim})")
        return tuple(range(-tile_ndim, 0)), tile_ndim

    def alpha(
        self,
        w_programmed: torch.Tensor,
        w_t: torch.Tensor,
        generator: torch.Generator | int | None = None,
        *,
        tile_ndim: int = 1,
        z: tuple[torch.Tensor, torch.Tensor] | None = None,
        w_ideal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Compensation factor ``alpha_t`` per tile (per column of it for per-column).

        Args:
            w_programmed: weights right after programming (no drift, no read noise), shape
                ``[..., *tile]``; read once per tile, so a tile without a time dimension is
                one reference readout shared by all times.
            w_t: weights at inference time t, shape broadcastable with ``w_programmed``
                (e.g. ``[T, ..., *tile]``).
            generator: source of the readout noise (unused for an ideal periphery): a
                generator, an int seed, or None for fresh entropy (:mod:`gpuwpo.rng`); both
                readouts draw from it in turn.
            tile_ndim: how many trailing dimensions form one tile (per-column: at least 2; the
                bound management tests whole tiles).
            z: explicit standard normals (reference readout, time-t readout), broadcastable
                with the inputs, replacing the random draws of the readout noise.
            w_ideal: the ideal target weights ``[..., *tile]``; required with
                ``exact_reference`` (the reference is then ``mean|w_ideal|``, exact). Their
                max|W| per tile sets the scale of the floor (else ``w_programmed``'s does).

        Returns:
            alpha (unitless), the broadcast shape of the inputs with the averaged dimensions
            kept as size 1, so ``alpha * w_t`` is the compensated tile.
        """
        dims, tile_ndim = self._mean_dims(min(w_programmed.ndim, w_t.ndim), tile_ndim)
        # Reduce before broadcasting: the reference readout of a tile shared by several times
        # is one readout (one noise draw) and costs one pass, not T.
        z_ref, z_t = (None, None) if z is None else z
        if self._draws(z_ref is not None and z_t is not None):
            # Made once: an int seed would give both readouts the same numbers.
            generator = make_generator(generator, w_t.device)
        if self.exact_reference:
            if w_ideal is None:
                raise ValueError("exact_reference compensation needs the ideal weights w_ideal")
            ref = w_ideal.abs().mean(dim=dims, keepdim=True)
        else:
            ref = self.readout(w_programmed, generator, z=z_ref, tile_ndim=tile_ndim)
            ref = ref.abs().mean(dim=dims, keepdim=True)
        now = self.readout(w_t, generator, z=z_t, tile_ndim=tile_ndim)
        now = now.abs().mean(dim=dims, keepdim=True)
        floor = _mean_abs_floor(w_programmed if w_ideal is None else w_ideal, tile_ndim,
                                now.dtype)
        return torch.maximum(ref, floor) / torch.maximum(now, floor)


class PerColumnDriftCompensation(GlobalDriftCompensation):
    """Drift compensation with one alpha per crossbar column (per output of ``[out, in]``).

    Same arguments and periphery as :class:`GlobalDriftCompensation`; :meth:`alpha` averages
    over the last dimension only and needs weight matrices ``[..., out_features, in_features]``
    (alpha ``[..., out_features, 1]``).
    """

    def _mean_dims(self, ndim: int, tile_ndim: int) -> tuple[tuple[int, ...], int]:
        if ndim < 2:
            raise ValueError("PerColumnDriftCompensation needs weight matrices [..., "
                             f"out_features, in_features], got {ndim}-D inputs")
        _, tile_ndim = super()._mean_dims(ndim, max(2, tile_ndim))
        return (-1,), tile_ndim
