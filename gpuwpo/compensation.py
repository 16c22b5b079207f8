"""Drift compensation: the scale ``alpha_t`` that maps drifted tile weights back to the original.

Right after programming, the tile reads out an identity input (each weight once); at inference
time t it does so again, and

    alpha_t = max(mean|read(W_prog)|, 1e-4) / max(mean|read(W_t)|, 1e-4)

so that ``alpha_t * W_t`` is the compensated weight (DESIGN.md section 2). ``read`` is the
readout periphery: additive Gaussian output noise (std in weight units), quantisation to a step
and clipping at +-bound, in that order. In hardware these pull alpha towards 1 when the readout
is noise-dominated, which changes which programming strategy is best; the ideal periphery (the
default) reads the weights exactly. The reference readout and the time-t readout get
independent noise.

:class:`GlobalDriftCompensation` takes one alpha per tile (the mean over the last ``tile_ndim``
dimensions); :class:`PerColumnDriftCompensation` one alpha per crossbar column, i.e. per output
row of a torch weight matrix ``[out_features, in_features]`` (the mean over the last dimension).
"""

from __future__ import annotations

import math

import torch

__all__ = ["GlobalDriftCompensation", "PerColumnDriftCompensation"]

# Floor of the mean absolute readout: an all-zero tile must not divide by zero.
_MEAN_ABS_FLOOR = 1e-4


def _check_scalar(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    return float(value)


class GlobalDriftCompensation:
    """Global drift compensation with an optional non-ideal readout periphery.

    Args:
        readout_noise: std of the additive Gaussian output noise, in weight units (>= 0).
        readout_step: quantisation step of the output in weight units (>= 0); readouts are
            rounded to the nearest multiple; 0 means no quantisation.
        readout_bound: outputs are clipped to ``[-readout_bound, readout_bound]`` (> 0);
            ``None`` means no clipping.

    Raises:
        ValueError: on a negative or non-finite noise/step or a bound <= 0.
    """

    def __init__(
        self,
        readout_noise: float = 0.0,
        readout_step: float = 0.0,
        readout_bound: float | None = None,
    ) -> None:
        noise = _check_scalar("readout_noise", readout_noise)
        if not (math.isfinite(noise) and noise >= 0.0):
            raise ValueError(f"readout_noise must be finite and >= 0, got {readout_noise!r}")
        step = _check_scalar("readout_step", readout_step)
        if not (math.isfinite(step) and step >= 0.0):
            raise ValueError(f"readout_step must be finite and >= 0, got {readout_step!r}")
        if readout_bound is not None:
            bound = _check_scalar("readout_bound", readout_bound)
            if math.isnan(bound) or bound <= 0.0:
                raise ValueError(f"readout_bound must be > 0 or None, got {readout_bound!r}")
            readout_bound = bound
        self.readout_noise = noise
        self.readout_step = step
        self.readout_bound = readout_bound

    @property
    def is_ideal(self) -> bool:
        """True when the readout is exact (no noise, no quantisation, no clipping)."""
        return self.readout_noise == 0.0 and self.readout_step == 0.0 and self.readout_bound is None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(readout_noise={self.readout_noise}, "
            f"readout_step={self.readout_step}, readout_bound={self.readout_bound})"
        )

    def readout(
        self,
        w: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        z: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """What the periphery reports for the weights ``w`` (shape ``[...]``, weight units).

        Noise, then quantisation, then clipping; returns ``w`` itself when the periphery is ideal.
        ``z`` (standard normals broadcastable with ``w``) replaces the random draw of the noise.
        """
        if self.readout_noise > 0.0:
            if z is None:
                z = torch.randn(w.shape, generator=generator, dtype=w.dtype, device=w.device)
            w = w + self.readout_noise * z.to(dtype=w.dtype, device=w.device)
        if self.readout_step > 0.0:
            w = torch.round(w / self.readout_step) * self.readout_step
        if self.readout_bound is not None:
            w = torch.clamp(w, min=-self.readout_bound, max=self.readout_bound)
        return w

    def _reduce_dims(self, ndim_prog: int, ndim_t: int, tile_ndim: int) -> tuple[int, ...]:
        if isinstance(tile_ndim, bool) or not isinstance(tile_ndim, int) or tile_ndim < 1:
            raise ValueError(f"tile_ndim must be an int >= 1, got {tile_ndim!r}")
        if tile_ndim > min(ndim_prog, ndim_t):
            raise ValueError(
                f"tile_ndim={tile_ndim} exceeds the dimensions of the inputs "
                f"(w_programmed has {ndim_prog}, w_t has {ndim_t})"
            )
        return tuple(range(-tile_ndim, 0))

    def alpha(
        self,
        w_programmed: torch.Tensor,
        w_t: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        tile_ndim: int = 1,
        z: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Compensation factor ``alpha_t`` per tile.

        Args:
            w_programmed: weights right after programming (no drift, no read noise), shape
                ``[..., *tile]``; read once per tile, so a tile without a time dimension is
                one reference readout shared by all times.
            w_t: weights at inference time t, shape broadcastable with ``w_programmed``
                (e.g. ``[T, ..., *tile]``).
            generator: source of the readout noise (unused for an ideal periphery).
            tile_ndim: how many trailing dimensions form one tile.
            z: explicit standard normals (reference readout, time-t readout), broadcastable
                with the inputs, replacing the random draws of the readout noise.

        Returns:
            alpha (unitless), the broadcast shape of the inputs with the tile dimensions kept
            as size 1, so ``alpha * w_t`` is the compensated tile.
        """
        dims = self._reduce_dims(w_programmed.ndim, w_t.ndim, tile_ndim)
        return self._alpha(w_programmed, w_t, generator, dims, z)

    def _alpha(
        self,
        w_programmed: torch.Tensor,
        w_t: torch.Tensor,
        generator: torch.Generator | None,
        dims: tuple[int, ...],
        z: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        # Reduce before broadcasting: the reference readout of a tile shared by several times
        # is one readout (one noise draw) and costs one pass, not T.
        z_ref, z_t = (None, None) if z is None else z
        ref = self.readout(w_programmed, generator, z=z_ref).abs().mean(dim=dims, keepdim=True)
        now = self.readout(w_t, generator, z=z_t).abs().mean(dim=dims, keepdim=True)
        return torch.clamp(ref, min=_MEAN_ABS_FLOOR) / torch.clamp(now, min=_MEAN_ABS_FLOOR)


class PerColumnDriftCompensation(GlobalDriftCompensation):
    """Drift compensation with one alpha per crossbar column (per output of ``[out, in]``).

    Same arguments and periphery as :class:`GlobalDriftCompensation`; :meth:`alpha` averages
    over the last dimension only and needs inputs of at least 2 dimensions.
    """

    def alpha(
        self,
        w_programmed: torch.Tensor,
        w_t: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        tile_ndim: int = 1,
        z: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Compensation factor per column.

        Args:
            w_programmed: programmed weights, shape ``[..., out_features, in_features]``.
            w_t: weights at time t, broadcastable with ``w_programmed``.
            generator: source of the readout noise.
            tile_ndim: ignored (accepted so both classes are interchangeable).
            z: explicit readout-noise draws, as for :meth:`GlobalDriftCompensation.alpha`.

        Returns:
            alpha of the broadcast shape with the last dimension of size 1
            (``[..., out_features, 1]``).
        """
        del tile_ndim  # the column is always the last dimension
        if w_programmed.ndim < 2 or w_t.ndim < 2:
            raise ValueError(
                "PerColumnDriftCompensation needs weight matrices [..., out_features, "
                f"in_features], got shapes {tuple(w_programmed.shape)} and {tuple(w_t.shape)}"
            )
        return self._alpha(w_programmed, w_t, generator, (-1,), z)
