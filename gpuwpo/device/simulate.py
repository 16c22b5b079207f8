"""Programming, drift and read of conductances over time, and whole-tile weight simulation.

The pipeline here is shared by :func:`simulate_weights` (any converter, for users) and the
objective's hot path (:mod:`gpuwpo.search.objective`): for every time step the tile is programmed
afresh (new programming noise, new drift coefficients), drifted to ``t`` and read with 1/f noise
(docs/DESIGN.md section 2). Which devices drift and are read is the physics
(:mod:`gpuwpo.device.physics`): the programmed ones (``physics="device"``), or those of the
programmed weights converted again (``physics="aihwkit"``, the reference toolkit's tile).

A layer is programmed with a converter or a :class:`gpuwpo.device.mapping.Recipe` (a converter
and its mapping; a bare converter means the mapping ``"layer"``). Under ``"columnwise"`` every
analogue step (programming, drift, read noise, the compensation's readouts) happens on the tile
weights ``w / s`` (each output row over its own max, :func:`gpuwpo.device.mapping.recipe_tile`),
the effective weights are ``s * alpha_t * W_t``, and the error is against the layer's weights,
normalised by the layer's max|W| (docs/DESIGN.md section 5c).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..checks import check_positive_int, check_weights
from ..rng import draw_seed, keyed_generator, make_generator
from .chunks import default_memory_budget, plan_chunks
from .compensation import GlobalDriftCompensation
from .error import weight_error
from .mapping import as_recipe, recipe_clip, recipe_tile
from .physics import ConverterConversion, check_physics, program_and_read, refuse_clip

__all__ = ["DEFAULT_TIMES", "NOISE_BLOCK", "DeviceNoise", "sample_device_noise", "keyed_noise",
           "program_drift_read", "simulate_weights", "converter_errors", "sample_rows_for",
           "SAMPLE_ANCHOR_ROWS", "SAMPLE_WEIGHTS", "as_time_tensor", "tnmse_over_time"]

#: Inference times used when none are given: 1 s, 1 h, 1 day, 1 month (30 days), 1 year (365 d).
DEFAULT_TIMES = (1.0, 3600.0, 86400.0, 2592000.0, 31536000.0)

#: Items (candidates, repeats) drawn from one noise stream when noise is independent per item.
#: Chunks of work are multiples of it, which is what makes chunked and unchunked runs identical.
NOISE_BLOCK = 8

# Live tensors of one item's [T, 2K, N] conductances while the converter path simulates it.
_CONVERTER_LIVE = 12


class DeviceNoise(NamedTuple):
    """Standard-normal draws for the three device noises, all of one shape.

    ``z_prog`` (programming noise), ``z_drift`` (drift coefficient), ``z_read`` (1/f read noise).
    Any of them may have size-1 dimensions that broadcast, e.g. shared by all candidates of a
    layer (common random numbers).
    """

    z_prog: torch.Tensor
    z_drift: torch.Tensor
    z_read: torch.Tensor


def sample_device_noise(
    shape: Sequence[int],
    *,
    generator: torch.Generator | int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> DeviceNoise:
    """Draw the three device noises, each a standard normal tensor of ``shape``.

    The draws are made in a fixed order (programming, drift, read) from ``generator`` (a
    generator on ``device``, an int seed, or None for fresh entropy, :mod:`gpuwpo.rng`), so the
    same generator state gives the same noise. ``device`` defaults to torch's default device.
    """
    shape = tuple(int(s) for s in shape)
    device = torch.get_default_device() if device is None else torch.device(device)
    kw = {"generator": make_generator(generator, device), "dtype": dtype, "device": device}
    return DeviceNoise(torch.randn(shape, **kw), torch.randn(shape, **kw), torch.randn(shape, **kw))


def keyed_noise(base_seed: int, layer_ids: Sequence[int], items: slice, total: int,
                shape: tuple[int, int, int], *, device, dtype, device_noise: bool = True,
                readout: bool = False, block: int | None = None) -> tuple[torch.Tensor, ...]:
    """Independent draws for items ``items`` (candidates or repeats) of the layers ``layer_ids``.

    One stream per (layer id, block of :data:`NOISE_BLOCK` items) (:func:`gpuwpo.rng.
    keyed_generator`), so any chunking over layers and items sees the same numbers. ``block=-1``
    draws one set shared by all items of a layer (common random numbers; then ``items`` is
    ``slice(0, 1)``).

    Args:
        shape: ``(T, R, N)``: times, devices, weights.
        total: the number of items of the whole evaluation (the last block may be short).

    Returns:
        The device noises (3 x ``[l, p, T, R, N]``) when ``device_noise``, then the readout
        noises (2 x ``[l, p, T, N]``: reference and time-t readout) when ``readout``.
    """
    T, R, N = shape
    fields: list[list[torch.Tensor]] = [[] for _ in range(3 * device_noise + 2 * readout)]
    for b in layer_ids:
        per_layer: list[list[torch.Tensor]] = [[] for _ in fields]
        blocks = ([block] if block is not None else
                  range(items.start // NOISE_BLOCK, -(-items.stop // NOISE_BLOCK)))
        for blk in blocks:
            n = 1 if blk < 0 else min(total, (blk + 1) * NOISE_BLOCK) - blk * NOISE_BLOCK
            gen = keyed_generator(base_seed, int(b), int(blk), device=device)
            draws = [(n, T, R, N)] * (3 * device_noise) + [(n, T, N)] * (2 * readout)
            for k, size in enumerate(draws):
                per_layer[k].append(torch.randn(size, generator=gen, dtype=dtype, device=device))
        for k, parts in enumerate(per_layer):
            z = _cat(parts)
            if block is None:  # the blocks cover whole blocks: keep exactly the items asked for
                first = items.start - (items.start // NOISE_BLOCK) * NOISE_BLOCK
                z = z.narrow(0, first, items.stop - items.start)
            fields[k].append(z)
    return tuple(_cat([z.unsqueeze(0) for z in per_field]) for per_field in fields)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    # One block (the usual chunk on a CPU) needs no copy; torch.cat would make one.
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def as_time_tensor(
    t_steps: float | Sequence[float] | torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Validate inference times (seconds after programming) and return them as a 1-D tensor [T]."""
    t = torch.as_tensor(t_steps, dtype=torch.float64).reshape(-1)
    if t.numel() == 0:
        raise ValueError("t_steps is empty: give at least one inference time in seconds")
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"t_steps must be finite and >= 0 seconds, got {t.tolist()}")
    return t.to(dtype=dtype, device=device)


def program_drift_read(
    g_target: torch.Tensor,
    noise_model,
    t_steps: torch.Tensor,
    *,
    generator: torch.Generator | int | None = None,
    noise: DeviceNoise | None = None,
    time_dim: int = -3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Program ``g_target`` afresh for every time step, drift and read the programmed devices.

    The device physics at the conductance level (``physics="device"``, docs/DESIGN.md
    section 2), through the device model's hot-path methods.

    Args:
        g_target: target conductances [..., R, N] in uS (R devices, N weights).
        noise_model: a :class:`gpuwpo.device.noise.DeviceModel`.
        t_steps: inference times [T] in seconds after programming.
        generator: source of the noise when ``noise`` is not given: a generator, an int seed,
            or None for fresh entropy (:mod:`gpuwpo.rng`).
        noise: explicit standard-normal draws broadcastable to [..., T, R, N].
        time_dim: must be -3 (the time axis is inserted just before the device axis); kept
            as a keyword so that call sites state the layout they rely on.

    Returns:
        ``(g_prog, g_t)``, each [..., T, R, N]: the programmed conductances (programming noise,
        no drift) and the conductances read at each ``t`` (drift and read noise).
    """
    if time_dim != -3:
        raise ValueError("program_drift_read puts the time axis at -3 ([..., T, R, N])")
    if g_target.ndim < 2:
        raise ValueError(f"g_target must be [..., R, N], got shape {tuple(g_target.shape)}")
    t = t_steps.to(dtype=g_target.dtype, device=g_target.device).reshape(-1, 1, 1)
    if noise is None:
        out_shape = (*g_target.shape[:-2], t.shape[0], *g_target.shape[-2:])
        noise = sample_device_noise(out_shape, generator=generator, dtype=g_target.dtype,
                                    device=g_target.device)
    # The same targets at every time step: [..., 1, R, N] broadcasts against the noise.
    prepared = noise_model.prepare_targets(g_target.unsqueeze(-3))
    return noise_model.program_drift_read_step(prepared, t, *noise)


def _check_matrix(weights: torch.Tensor, tile_ndim: int) -> None:
    if tile_ndim != 2:
        raise ValueError(f"the columnwise mapping scales the rows of a matrix [out, in]; got "
                         f"weights of shape {tuple(weights.shape)} (give a Conv or RNN weight as "
                         f"the crossbar holds it: gpuwpo.network.layers.as_matrix)")


class _TileRun:
    """A tile's weights converted once, with what every repeat of its simulation shares.

    ``weights`` ``[*tile]`` is one tile shared by every repeat; with ``tile_shape`` given,
    ``weights`` ``[n, *tile_shape]`` are n tiles, one per repeat (a sample of rows,
    :class:`_RowSample`), each converted on its own. ``recipe`` is a converter or a
    :class:`gpuwpo.device.mapping.Recipe`: the converter programs the tile weights of its
    mapping (:func:`gpuwpo.device.mapping.recipe_tile`), ``scales`` turn them back into the
    layer's (None under ``"layer"``, whose tile is ``weights`` itself).
    """

    def __init__(self, weights, recipe, noise_model, t_steps, compensation, physics: str,
                 repeats, tile_shape: Sequence[int] | None = None) -> None:
        self.physics = check_physics(physics)
        self.recipe = as_recipe(recipe)
        clip = recipe_clip(self.recipe)
        refuse_clip(self.physics, clip)
        self.weights = check_weights(weights)
        self.repeats = check_positive_int(repeats, "repeats")
        self.compensation = GlobalDriftCompensation() if compensation is None else compensation
        self.noise_model = noise_model
        self.t = as_time_tensor(t_steps, dtype=self.weights.dtype, device=self.weights.device)
        self.per_repeat = tile_shape is not None
        self.tile_shape = tuple(self.weights.shape if tile_shape is None else tile_shape)
        if self.recipe.mapping != "layer":
            _check_matrix(self.weights, len(self.tile_shape))
        # "layer": the tile is the weights themselves (every number as before the mapping).
        self.tile_weights, self.scales = recipe_tile(self.weights, self.recipe)
        self.tiles = ConverterConversion(self.recipe.converter, self.tile_shape)
        self.g, self.params = self.tiles.to_conductances(self.tile_weights)  # [(n,) R, N]
        self.prepared = noise_model.prepare_targets(self.g)
        # What the tile was asked to hold, for an exact reference: in the reference's tile a
        # clipping program is deployed as weights clipped before they reach it, so its exact
        # reference is taken from the clipped tile; in the device physics from the tile itself.
        self.ideal = self.tile_weights
        if clip != 1.0 and self.physics == "aihwkit":
            dims = tuple(range(-len(self.tile_shape), 0))
            c = self.tile_weights.abs().amax(dim=dims, keepdim=True) * clip
            self.ideal = torch.maximum(torch.minimum(self.tile_weights, c), -c)

    def effective(self, w_t: torch.Tensor, alpha: torch.Tensor, *, inplace: bool = False,
                  rows: _RowSample | None = None) -> torch.Tensor:
        """The layer's effective weights ``s * alpha * W_t`` of tiles read ``w_t``
        ``[n, T, *tile]`` (of the drawn rows only, ``[n, T, rows, ...]``, with ``rows``)."""
        eff = w_t.mul_(alpha) if inplace else w_t * alpha
        if self.scales is None:
            return eff
        s = self.scales if rows is None else rows.drawn(self.scales, len(self.tile_shape))
        # [(n,) out, 1] against [n, T, out, in]: the time axis broadcasts.
        s = s.unsqueeze(-3) if self.per_repeat else s
        return eff.mul_(s) if inplace else eff * s

    def program_and_read(self, z_prog, z_drift, z_read) -> tuple[torch.Tensor, torch.Tensor]:
        """(w_prog, w_t) ``[n, T, *tile]`` for draws ``[n, T, R, N]``.

        One tile shared by every repeat is simulated at all times in one broadcast call. A tile
        per repeat (a sample) is simulated one time step at a time, since its conversions (one
        per repeat) take conductances ``[n, R, N]``; a one-element time tensor takes the same
        broadcasting arithmetic as all times at once.
        """
        if not self.per_repeat:
            return program_and_read(self.physics, self.tiles, self.params, self.prepared,
                                    self.noise_model, self.t.reshape(-1, 1, 1), z_prog, z_drift,
                                    z_read)
        n, T = z_prog.shape[0], z_prog.shape[1]
        w_prog = z_prog.new_empty((n, T, *self.tile_shape))
        w_t = z_prog.new_empty((n, T, *self.tile_shape))
        for i in range(T):
            w_prog[:, i], w_t[:, i] = program_and_read(
                self.physics, self.tiles, self.params, self.prepared, self.noise_model,
                self.t[i:i + 1].reshape(1, 1, 1), z_prog[:, i], z_drift[:, i], z_read[:, i])
        return w_prog, w_t


#: Rows that every sampled programming of a tile simulates besides its sample, and does not
#: count: those of the largest max|W|. The tile's largest |W| is among them, so a converter
#: scales the sample exactly as it scales the whole tile (by its max|W|), and in the reference's
#: physics the largest programmed weight, which sets the scale of the second conversion, is
#: almost always there too.
SAMPLE_ANCHOR_ROWS = 4

#: Weights per programming that ``gpuwpo evaluate`` simulates of a larger layer (a sample of
#: whole rows, :func:`sample_rows_for`; ``--full`` simulates every weight). Sized so that the 37
#: linear layers of MiniLM (10.8 M weights, 10 programmings each) are evaluated in well under a
#: minute on a 2-core CPU (bench/evaluate.py), with standard errors near 0.5 % of the figures.
SAMPLE_WEIGHTS = 32768


class _RowSample:
    """Which whole rows (first axis) of a tile one programming simulates, and which it counts.

    A programming simulates the :data:`SAMPLE_ANCHOR_ROWS` anchor rows (those of the largest
    max|W|) and ``rows`` rows drawn uniformly without replacement from all the tile's rows (a
    simple random sample: an anchor row is drawn at its natural rate, like any other). Only the
    drawn rows are counted: the compensation's alpha is taken over them and E_t is their mean
    error, so both estimate the whole tile's from a sample of its own composition. The anchors
    only make the conversion the whole tile's: its max|W| is theirs.

    Whole rows keep what a row shares whole: per-row scaling (Fusion) and per-column
    compensation (one alpha per output, a row of ``[out, in]``: exact for every drawn row).
    What the sample estimates rather than reproduces: a tile-wide alpha (a ratio of means over
    the drawn rows, biased by order 1/(sample size), far below the standard errors), the
    readout's bound management (tested over the drawn rows' readout) and, in the reference's
    physics, the scale of the second conversion (the largest programmed weight of the anchors
    and the drawn rows).
    """

    def __init__(self, weights: torch.Tensor, rows: int) -> None:
        if weights.ndim < 2:
            raise ValueError(f"sample_rows needs a tile of rows (2-D or more), got shape "
                             f"{tuple(weights.shape)}")
        n_rows = weights.shape[0]
        if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows < n_rows:
            raise ValueError(f"sample_rows must be an int in [1, {n_rows - 1}] (fewer rows than "
                             f"the tile's {n_rows}), got {rows!r}")
        row_max = weights.detach().abs().reshape(n_rows, -1).amax(1)
        self.anchors = torch.topk(row_max, min(SAMPLE_ANCHOR_ROWS, n_rows)).indices.cpu()
        self.n_rows, self.rows = n_rows, rows

    @property
    def size(self) -> int:
        """Rows one programming simulates: the anchors, then the drawn rows."""
        return self.anchors.numel() + self.rows

    def indices(self, generator: torch.Generator) -> torch.Tensor:
        """Row indices ``[size]`` of one programming: the anchors, then the drawn rows."""
        drawn = torch.randperm(self.n_rows, generator=generator)[: self.rows]
        return torch.cat([self.anchors, drawn])

    def drawn(self, x: torch.Tensor, tile_ndim: int) -> torch.Tensor:
        """The drawn rows of ``x`` ``[..., size, *rest]`` (``tile_ndim`` = 1 + len(rest))."""
        return x.narrow(-tile_ndim, self.anchors.numel(), self.rows)


def simulate_weights(
    weights: torch.Tensor,
    g_converter,
    noise_model,
    t_steps: float | Sequence[float] | torch.Tensor,
    compensation=None,
    repeats: int = 1,
    generator: torch.Generator | int | None = None,
    *,
    physics: str = "device",
) -> torch.Tensor:
    """Drift-compensated effective weights of a tile programmed with ``g_converter``.

    For each repeat and time step the tile is programmed afresh (docs/DESIGN.md section 5): the
    target conductances get programming noise, drift to ``t`` and are read with noise in the
    chosen physics (:mod:`gpuwpo.device.physics`), are converted back to weights, and the global (or
    per-column) drift compensation is applied. Batched over repeats and times. Under the
    columnwise mapping all of it happens on the tile weights ``w / s`` and the result is
    ``s * alpha_t * W_t`` (the module docstring).

    Args:
        weights: the ideal weights, any shape (a 2-D weight is [out_features, in_features]);
            ``[out, in]`` under the columnwise mapping.
        g_converter: any conductance converter of :mod:`gpuwpo.device.converters` (one program),
            or a :class:`gpuwpo.device.mapping.Recipe` (a bare converter: mapping ``"layer"``).
        noise_model: the device model (:class:`gpuwpo.device.noise.DeviceModel`).
        t_steps: inference times in seconds, a float or a sequence [T].
        compensation: defaults to ideal :class:`GlobalDriftCompensation`.
        repeats: independent programmings to simulate (>= 1).
        generator: source of all noise (device noise and readout-periphery noise): a generator,
            an int seed, or None for fresh entropy (:mod:`gpuwpo.rng`).
        physics: "device" (the programmed devices drift) or "aihwkit" (the reference
            toolkit's tile: the programmed weights are converted again before they drift).

    Returns:
        Effective weights ``alpha_t * W_t`` of shape [repeats, T, *weights.shape].
    """
    tile = _TileRun(weights, g_converter, noise_model, t_steps, compensation, physics, repeats)
    weights, compensation = tile.weights, tile.compensation
    gen = make_generator(generator, weights.device)
    # Noise of the full shape; the targets broadcast over repeats and times, not copied.
    noise = sample_device_noise((tile.repeats, tile.t.shape[0], *tile.g.shape), generator=gen,
                                dtype=tile.g.dtype, device=tile.g.device)
    w_prog, w_t = tile.program_and_read(*noise)  # [repeats, T, *w]
    alpha = compensation.alpha(w_prog, w_t, gen, tile_ndim=weights.ndim, w_ideal=tile.ideal)
    return tile.effective(w_t, alpha)


def converter_errors(
    weights: torch.Tensor,
    converter,
    noise_model,
    t_steps: float | Sequence[float] | torch.Tensor,
    *,
    compensation=None,
    physics: str = "device",
    repeats: int = 10,
    generator: torch.Generator | int | None = None,
    layer_id: int = 0,
    amplification: float = 10.0,
    memory_budget: int | None = None,
    sample_rows: int | None = None,
) -> torch.Tensor:
    """Weight error E_t of ``repeats`` independent programmings of a tile: the converter path.

    The ruler of baselines, ``TNMSEObjective.evaluate_converter``, :func:`tnmse_over_time`,
    the choice of each layer's answer (:mod:`gpuwpo.search.selection`) and ``gpuwpo evaluate``:
    every repeat programs the tile afresh at every time, in the chosen physics, and
    ``E_t = mean_n (amplification (alpha_t W_t,n - W_n) / max|W|)^2``
    (:func:`gpuwpo.device.error.weight_error`). Repeats are simulated a memory budget at a
    time, with noise keyed by (layer id, block of repeats) (:func:`keyed_noise`), so the result
    does not depend on the budget.

    Given a list of converters, every one of them is programmed with the same noise, repeat by
    repeat (converters with the same number of devices per weight see the very same draws):
    their errors are paired, and a difference between two of them has far less spread than
    either alone. Each may be a :class:`gpuwpo.device.mapping.Recipe` (a bare converter means
    the mapping ``"layer"``): under ``"columnwise"`` the tile weights ``w / s`` are programmed
    and ``E_t = mean_n (amplification (s alpha_t W_t,n - W_n) / max|W|)^2``, still against the
    layer's weights and their max|W|, so that the mappings' errors compare.

    With ``sample_rows``, each repeat counts ``sample_rows`` whole rows (first axis) of the
    tile drawn uniformly without replacement, a new sample per repeat from the stream keyed
    (layer id, repeat), and simulates them beside the rows of the largest |W|, which make the
    conversion the whole tile's (:class:`_RowSample`); E_t is the drawn rows' mean error, an
    estimate of the whole tile's. The repeats stay independent and identically distributed, so
    their spread includes the sampling: a standard error from it is honest. All converters of
    a list see the same rows. Under the columnwise mapping every row carries its own scale (whole
    rows are sampled), so the conversion is the whole tile's whichever rows are drawn; the
    anchors stay, uncounted, so that in the reference's physics the second conversion's scale
    (the largest programmed weight) is estimated as closely as under ``"layer"``.

    Args:
        weights: the tile's ideal weights, any shape (``[out, in]`` for per-column
            compensation, Fusion's rows and the columnwise mapping).
        converter: any converter holding one program or a
            :class:`gpuwpo.device.mapping.Recipe`, or a list of them.
        noise_model, t_steps, compensation, physics: as for :func:`simulate_weights`.
        repeats: independent programmings (>= 1).
        generator: source of the base seed (a generator, an int, or None for fresh entropy).
        layer_id: key of this tile's noise streams (a network's layers differ).
        amplification: the factor 10 of the definition.
        memory_budget: bytes at a time (default :func:`gpuwpo.device.chunks.
            default_memory_budget`).
        sample_rows: rows counted per repeat, in [1, rows of the tile) (:func:`sample_rows_for`
            picks it from a number of weights), or None to simulate every weight.

    Returns:
        ``[repeats, T]`` E of each repeat at each time (``[C, repeats, T]`` for a list of C
        converters); the TNMSE of a repeat is its mean over T.

    Raises:
        ValueError: an empty list; a columnwise recipe for weights that are not a matrix
            ``[out, in]``; a bad ``sample_rows``, physics or repeats.
    """
    many = isinstance(converter, (list, tuple))
    converters = list(converter) if many else [converter]
    if not converters:
        raise ValueError("converter_errors needs at least one converter, got an empty list")
    weights = check_weights(weights)
    sample = None if sample_rows is None else _RowSample(weights, sample_rows)
    # What one repeat simulates (a sample's shape; its rows are drawn per chunk below).
    tile = weights if sample is None else weights[: sample.size]
    runs = [_TileRun(tile, conv, noise_model, t_steps, compensation, physics, repeats)
            for conv in converters]
    first = runs[0]
    compensation, repeats = first.compensation, first.repeats
    device, dtype = weights.device, weights.dtype
    T = first.t.shape[0]
    R_max, N = max(run.g.shape[0] for run in runs), first.g.shape[1]
    base_seed = draw_seed(make_generator(generator, device))
    readout = compensation.readout_noise > 0
    budget = default_memory_budget(device) if memory_budget is None else int(memory_budget)
    _, chunk = plan_chunks(1, repeats, bytes_per_item=_CONVERTER_LIVE * T * R_max * N
                           * first.g.element_size(), memory_budget=budget, align=NOISE_BLOCK)
    m = weights.abs().amax()
    out = torch.empty((len(runs), repeats, T), dtype=dtype, device=device)
    for start in range(0, repeats, chunk):
        items = slice(start, min(repeats, start + chunk))
        if sample is not None:
            # This chunk's samples, one per repeat, each tile converted on its own.
            rows = torch.stack([sample.indices(keyed_generator(base_seed, layer_id, r, 2))
                                for r in range(items.start, items.stop)]).to(device)
            tile = weights[rows]  # [n, rows, *rest]
            runs = [_TileRun(tile, conv, noise_model, t_steps, compensation, physics, repeats,
                             tile_shape=tile.shape[1:]) for conv in converters]
        by_rows: dict[int, list[torch.Tensor]] = {}  # one draw per number of devices per weight
        for c, run in enumerate(runs):
            R = run.g.shape[-2]
            if R not in by_rows:
                by_rows[R] = [z[0] for z in keyed_noise(
                    base_seed, [layer_id], items, repeats, (T, R, N), device=device,
                    dtype=dtype, readout=readout)]
            drawn = by_rows[R]
            z_read = None if not readout else tuple(
                z.reshape(*z.shape[:-1], *run.tile_shape) for z in drawn[3:])
            w_prog, w_t = run.program_and_read(*drawn[:3])  # [n, T, *tile]
            # The bound management's repeated readouts (rare) draw from a stream of this chunk.
            bm_gen = keyed_generator(base_seed, layer_id, start, 1, device=device)
            if sample is None:
                alpha = compensation.alpha(w_prog, w_t, bm_gen, tile_ndim=weights.ndim,
                                           z=z_read, w_ideal=run.ideal)
                out[c, items] = weight_error(run.effective(w_t, alpha, inplace=True), weights,
                                             m, amplification, tile_ndim=weights.ndim,
                                             inplace=True)
            else:
                # Only the drawn rows count (the anchors set the conversion's scale).
                nd = weights.ndim
                ideal = sample.drawn(run.weights, nd).unsqueeze(1)  # [n, 1, rows, ...]
                ideal_tile = sample.drawn(run.ideal, nd).unsqueeze(1)
                w_prog, w_t = sample.drawn(w_prog, nd), sample.drawn(w_t, nd)
                z_drawn = None if z_read is None else tuple(sample.drawn(z, nd)
                                                            for z in z_read)
                alpha = compensation.alpha(w_prog, w_t, bm_gen, tile_ndim=nd, z=z_drawn,
                                           w_ideal=ideal_tile)
                out[c, items] = weight_error(run.effective(w_t, alpha, rows=sample), ideal, m,
                                             amplification, tile_ndim=nd, inplace=True)
    return out if many else out[0]


def sample_rows_for(shape: Sequence[int], weights: int) -> int | None:
    """Rows per repeat for :func:`converter_errors`'s ``sample_rows``: the fewest whole rows
    (first axis) of a tile of ``shape`` that hold at least ``weights`` weights, or None when
    that would be every row (the tile is simulated whole) or the tile has a single axis. A
    programming simulates :data:`SAMPLE_ANCHOR_ROWS` rows more (the anchors).

    Raises:
        ValueError: ``weights`` is not a positive int.
    """
    weights = check_positive_int(weights, "weights")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        return None
    per_row = math.prod(shape[1:])
    rows = -(-weights // max(1, per_row))
    return rows if rows < shape[0] else None


def tnmse_over_time(
    weights: torch.Tensor,
    converter,
    noise_model,
    t_steps: Sequence[float],
    *,
    repeats: int = 10,
    compensation=None,
    generator: torch.Generator | int | None = None,
    memory_budget: int | None = None,
    physics: str = "device",
    sample_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight error E_t of a whole layer at each time: mean and standard error over repeats.

    :func:`converter_errors` on the layer's own weights (not a downsampled test tile); the
    TNMSE is the mean of E_t over the times.

    Args:
        weights: the layer's weights, any shape (``[out, in]`` under the columnwise mapping).
        converter: one program (a baseline converter or a CustomPair strategy), or a
            :class:`gpuwpo.device.mapping.Recipe`.
        noise_model: the device model.
        t_steps: inference times in seconds [T].
        repeats: independent programmings (>= 2 for a standard error).
        compensation: drift compensation (default ideal global).
        generator: source of the noise (a generator, an int, or None for fresh entropy).
        memory_budget: bytes at a time (large layers are simulated a few repeats at a time).
        physics: "device" or "aihwkit" (see :mod:`gpuwpo.device.physics`).
        sample_rows: simulate this many whole rows per repeat, a new sample each time
            (:func:`converter_errors`), or None for every weight.

    Returns:
        ``(mean [T], sem [T])``; the standard error is NaN with a single repeat (there is no
        spread to estimate it from).
    """
    w = check_weights(weights, "the layer's weights").detach().to("cpu", torch.float32)
    err = converter_errors(w, converter, noise_model, t_steps, compensation=compensation,
                           physics=physics, repeats=repeats, generator=generator,
                           memory_budget=memory_budget, sample_rows=sample_rows)  # [repeats, T]
    n = err.shape[0]
    sem = err.std(0) / math.sqrt(n) if n > 1 else torch.full((err.shape[1],), float("nan"))
    return err.mean(0), sem
