"""The two physics of a programmed tile: how it is programmed, drifts and is read.

gpuwpo offers two, by name (docs/DESIGN.md sections 2 and 2b):

``physics="device"`` (the default): what a chip does. The target conductances ``G`` of the
converter are programmed (``G_p``), the drift coefficients ``nu`` are drawn from the targets, and
the devices that were programmed drift and are read:

    G_t = drift_and_read(G_p, nu, t);    W_p = back(G_p),  W_t = back(G_t)

``physics="aihwkit"``: what the reference toolkit's inference tile does (aihwkit 1.1.0,
``InferenceTileWithPeriphery.program_weights`` / ``drift_weights``). It keeps the programmed
*weights*, and to drift them converts them to conductances again, with the converter's scale
taken from the programmed weights themselves:

    W_p = back(G_p);    (G', p') = convert(W_p);    G_t = drift_and_read(G', nu, t);
    W_t = back'(G_t)    (with p')

In both, ``alpha_t`` compares a readout of ``W_p`` (or of the ideal weights, with an exact
reference) with a readout of ``W_t`` (:mod:`gpuwpo.device.compensation`), and the effective weights
are
``alpha_t W_t``.

:func:`program_and_read` is the one place where this is written. The objective's batched hot
path (:class:`ProgramConversion`: a population of CustomPair programs, one conversion per tile
computed on a shared grid) and the converter path (:class:`ConverterConversion`: any converter, one
program, the converter's own methods per tile) both call it; they differ only in how a tile's
weights become conductances and back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from ..rng import make_generator
from .converters import grid_position, lerp_tables, net_weight_max, nonzero_max_abs

__all__ = ["PHYSICS", "check_physics", "refuse_clip", "program_and_read", "TileConversion",
           "ProgramConversion", "ConverterConversion"]

#: The physics gpuwpo offers (see the module docstring).
PHYSICS = ("device", "aihwkit")


def check_physics(physics: object) -> str:
    """``physics`` if it is one of :data:`PHYSICS`, else a ValueError naming the choices."""
    if physics not in PHYSICS:
        raise ValueError(f"physics must be one of {', '.join(map(repr, PHYSICS))}, got "
                         f"{physics!r}")
    return str(physics)


def refuse_clip(physics: str, clip: float) -> None:
    """Check that a program's clip is defined in ``physics`` (ValueError naming what is not).

    Both physics define every clip in (0, 1]. In ``physics="aihwkit"`` a program that clips is
    what the reference's tile does with weights clipped before they reach it (the only way to
    deploy it there: its converters have no clip): the clipped weights are converted with the
    clipped max, programmed, and the programmed weights are converted again *without* a clip
    (:meth:`ConverterConversion.reconvert`; a :class:`ProgramConversion` converts tiles on their
    own max|W| always) before they drift; the error stays against the unclipped weights
    (tests/test_clip.py checks it against aihwkit judging pre-clipped weights).
    """
    check_physics(physics)
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not 0.0 < clip <= 1.0:
        raise ValueError(f"clip must be a number in (0, 1] (a fraction of max|W|), got {clip!r}")


class TileConversion(Protocol):
    """How the weights of a batch of tiles become conductances and back.

    ``to_conductances(w [..., *tile]) -> (g [..., R, N], params)`` with every leading index its
    own tile (its own max|W|, as a converter sees one weight tensor); ``to_weights(g [..., R, N],
    params) -> w [..., *tile]``.
    """

    def to_conductances(self, w: torch.Tensor) -> tuple[torch.Tensor, Any]: ...

    def to_weights(self, g: torch.Tensor, params: Any) -> torch.Tensor: ...


def _reconvert(tiles: Any, w: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """The reference tile's second conversion of the programmed weights ``w``: never clipped.

    A conversion that clips when it converts the targets (:class:`ConverterConversion` of a
    clipping converter) says how to convert without the clip (``reconvert``); any other
    converts its tiles on their own max|W| with ``to_conductances``.
    """
    reconvert = getattr(tiles, "reconvert", None)
    return tiles.to_conductances(w) if reconvert is None else reconvert(w)


def program_and_read(
    physics: str,
    tiles: TileConversion,
    params: Any,
    prepared,
    noise_model,
    t_inference: float | torch.Tensor,
    z_prog: torch.Tensor | None = None,
    z_drift: torch.Tensor | None = None,
    z_read: torch.Tensor | None = None,
    generator: torch.Generator | int | None = None,
    *,
    work: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Program the prepared targets afresh, then drift and read: one time step of a physics.

    Args:
        physics: "device" or "aihwkit".
        tiles: the conversion of the tiles (a :class:`ProgramConversion` or
            :class:`ConverterConversion`).
        params: what ``tiles.to_conductances`` returned with the target conductances.
        prepared: ``noise_model.prepare_targets(g_target)`` of the targets ``[..., R, N]``.
        noise_model: a :class:`gpuwpo.device.noise.DeviceModel`.
        t_inference: seconds after programming (a float, or a tensor that broadcasts with the
            conductances, e.g. ``[T, 1, 1]``).
        z_prog, z_drift, z_read: standard normals broadcastable with the conductances, or None
            to draw them from ``generator``.
        generator: where missing draws come from: a generator, an int seed or None for fresh
            entropy (:mod:`gpuwpo.rng`); made once, so the three draws differ.
        work: three tensors of the conductances' shape (and dtype) that the device model's
            fused path may write the programmed conductances, the drift coefficients and the
            read conductances into, so that a loop over time steps allocates nothing; they
            are overwritten (a caller keeps them for the next step). None: new tensors.

    Returns:
        ``(w_prog, w_t)``: the programmed weights and the weights read at ``t_inference``,
        ``[..., *tile]`` (unitless, not yet compensated; never one of ``work``).
    """
    if z_prog is None or z_drift is None or z_read is None:
        generator = make_generator(generator, prepared.g_target.device)
    g_buf, nu_buf, read_buf = (None, None, None) if work is None else work
    g_prog = noise_model.program(prepared, z_prog, generator, out=g_buf)
    nu = noise_model.drift_coefficients(prepared, z_drift, generator, out=nu_buf)
    w_prog = tiles.to_weights(g_prog, params)
    if physics == "device":
        g_read, read_params = g_prog, params
    elif physics == "aihwkit":
        # The reference converts the programmed WEIGHTS again (with no clip: its converters
        # have none); nu stays that of the targets.
        g_read, read_params = _reconvert(tiles, w_prog)
    else:
        check_physics(physics)
    # nu is this function's own temporary: the fused path may overwrite it.
    g_t = noise_model.drift_and_read(g_read, nu, t_inference, z_read, generator, out=read_buf,
                                     overwrite=True)
    return w_prog, tiles.to_weights(g_t, read_params)


class ProgramConversion:
    """A population of CustomPair programs converting its tiles: the objective's hot path.

    Args:
        f: ``[B, P, K]`` significance factors.
        g_lst: ``[B, P, 2K, L]`` program tables (uS) on the grid ``linspace(-M, M, L)``.
        tile_shape: ``(out, in)`` of a tile, out * in = N.

    Tiles are ``[B, P, ..., *tile_shape]`` (extra dimensions after the candidate axis
    broadcast). Params are the signed coefficients ``+-f_k / scale`` ``[B, P, 1, 2K]`` of the
    matmul that converts conductances back to weights: ``W = sum_k f_k (G+_k - G-_k) / scale``
    with ``scale = max_grid |sum_k f_k (G+_k - G-_k)| / g``, g the grid's half-width (as the
    converter's): max|W| of the tile, or ``c`` x max|W| for a program that clips at ``c``
    (:meth:`coefficients` of ``[B, P]`` half-widths: one clip per candidate, as a searched
    clip has). Under a mapping the tiles are the tile weights (:mod:`gpuwpo.device.mapping`).
    """

    def __init__(self, f: torch.Tensor, g_lst: torch.Tensor, tile_shape: Sequence[int]) -> None:
        self.f = f
        self.g_lst = g_lst
        self.tile_shape = tuple(int(s) for s in tile_shape)
        # max over the grid of |net weight curve| (uS): the numerator of every scale.
        self.net_max = net_weight_max(f, g_lst)  # [B, P]
        # +-f_k / net_max: the signed coefficients for max|W| = 1 (they scale with max|W|).
        unit = f / self.net_max.unsqueeze(-1)
        self._unit_coef = torch.stack((unit, -unit), dim=-1).flatten(-2).unsqueeze(-2)
        self._lower = g_lst[..., :-1]
        self._upper = g_lst[..., 1:]

    def chunk(self, layers: slice, candidates: slice) -> ProgramConversion:
        """The same conversion for the layers ``layers`` and candidates ``candidates`` only.

        Views of what was computed for the whole population (its scales and coefficients are
        computed once per population, not once per chunk), equal to a ProgramConversion of the
        sliced f and g_lst.
        """
        part = object.__new__(ProgramConversion)
        part.f = self.f[layers, candidates]
        part.g_lst = self.g_lst[layers, candidates]
        part.tile_shape = self.tile_shape
        part.net_max = self.net_max[layers, candidates]
        part._unit_coef = self._unit_coef[layers, candidates]
        part._lower = self._lower[layers, candidates]
        part._upper = self._upper[layers, candidates]
        return part

    def targets(self, idx: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
        """Target conductances ``[B, P, 2K, N]`` of weights at grid positions ``idx``, ``frac``
        (``[B, N]``, one grid per layer, or ``[B, P, N]``, one per candidate): every table row
        linearly interpolated (:func:`gpuwpo.device.converters.interpolate_programs`)."""
        if idx.ndim == 2:
            idx, frac = idx.unsqueeze(1), frac.unsqueeze(1)
        return lerp_tables(self._lower, self._upper, idx, frac)

    def coefficients(self, max_abs_weight: torch.Tensor) -> torch.Tensor:
        """Signed ``+-f / scale`` ``[B, P, 1, 2K]`` for grids of half-width ``[B, P]`` (one per
        candidate: ``c`` x max|W| with a clip per candidate) or ``[B, 1]`` (one per layer)."""
        return self._unit_coef * max_abs_weight.unsqueeze(-1).unsqueeze(-1)

    def to_conductances(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Conductances ``[B, P, 2K, N]`` of tiles ``w`` ``[B, P, *tile]``, each with its own
        grid ``linspace(-max|w|, max|w|, L)``."""
        flat = w.flatten(-2)  # [B, P, N]
        # max|W| as it is (1 for an all-zero tile): no absolute floor such as the reference's
        # 1e-7, so that the conversion does not depend on the weights' units.
        m = nonzero_max_abs(flat.abs().amax(-1, keepdim=True))  # [B, P, 1]
        L = self.g_lst.shape[-1]
        idx, frac = grid_position(flat, (0.5 * (L - 1)) / m, L)
        return lerp_tables(self._lower, self._upper, idx, frac), self.coefficients(m[..., 0])

    def to_weights(self, g: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """Weights ``[B, P, *tile]`` of conductances ``g`` ``[B, P, 2K, N]``."""
        return torch.matmul(coef, g).reshape(*g.shape[:-2], *self.tile_shape)


class ConverterConversion:
    """Any converter holding one program, converting tiles of ``weight_shape`` one by one.

    The converter path: the converter's own ``convert_to_conductances`` and
    ``convert_back_to_weights`` define the conversion, so every converter class (Fusion's
    per-row least squares included) means here exactly what it means to its users. Params are
    the converter's params dict (one conversion shared by all leading indices) or a list of
    them, one per tile (after :meth:`to_conductances` of a batch of tiles).
    """

    def __init__(self, converter, weight_shape: Sequence[int]) -> None:
        self.converter = converter
        self.weight_shape = tuple(int(s) for s in weight_shape)
        self.numel = math.prod(self.weight_shape)
        # The reference tile's second conversion (physics="aihwkit") has no clip: the same
        # program on the grid of the programmed weights' own max|W|.
        clips = float(getattr(converter, "clip", 1.0)) != 1.0
        self._unclipped = (ConverterConversion(converter.without_clip(), self.weight_shape)
                           if clips else None)

    def reconvert(self, w: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """:meth:`to_conductances` without the converter's clip (the same program on the grid
        of ``w``'s own max|W|): how the reference's tile converts programmed weights again."""
        return (self if self._unclipped is None else self._unclipped).to_conductances(w)

    def to_conductances(self, w: torch.Tensor) -> tuple[torch.Tensor, Any]:
        nd = len(self.weight_shape)
        lead = w.shape[: w.ndim - nd]
        if not lead:
            return self._convert(w)
        # Each tile is converted on its own: its own max|W| (the reference converts one tile's
        # weights at a time).
        parts, params = [], []
        for tile in w.reshape(-1, *self.weight_shape):
            g, p = self._convert(tile)
            parts.append(g)
            params.append(p)
        g = torch.stack(parts)
        return g.reshape(*lead, *g.shape[1:]), params

    def _convert(self, tile: torch.Tensor) -> tuple[torch.Tensor, Any]:
        g, params = self.converter.convert_to_conductances(tile)
        if g.ndim != tile.ndim + 1:
            raise ValueError(f"expected a converter holding one program, got one with batch "
                             f"shape {tuple(g.shape[: g.ndim - tile.ndim - 1])}")
        return g.reshape(g.shape[0], self.numel), params

    def to_weights(self, g: torch.Tensor, params: Any) -> torch.Tensor:
        rows = g.shape[-2]
        if isinstance(params, dict):
            return self.converter.convert_back_to_weights(
                g.reshape(*g.shape[:-2], rows, *self.weight_shape), params)
        lead = g.shape[:-2]
        tiles = g.reshape(-1, rows, *self.weight_shape)
        out = [self.converter.convert_back_to_weights(tile, p) for tile, p in zip(tiles, params)]
        return torch.stack(out).reshape(*lead, *self.weight_shape)
