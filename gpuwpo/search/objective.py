"""The batched TNMSE objective (docs/DESIGN.md section 5).

A whole population of candidate programs, for every layer at once, is decoded, converted,
programmed, drifted, read, compensated and reduced in one batched computation on the tensors'
device. :func:`tnmse_from_programs` is the hot path (and the pure-torch twin of the Triton kernel
in :mod:`gpuwpo.kernels.tnmse`); :class:`TNMSEObjective` holds the test weights, the physics and
the strategy space and is what every search backend calls with an [B, P, D] tensor.

Under a mapping (docs/DESIGN.md section 5c, :mod:`gpuwpo.device.mapping`) the candidates program
the tile weights (``w / s`` per column) and the error keeps the layer's units: one per-row gain
``amp s_i / M`` folded into the compensation's multiplication, so a per-column search costs what
a layer-wise one does. A searched clip gives every candidate its own grid (positions computed
per chunk, not per time step). The layer-wise mapping without a clip computes every number as
before either existed.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Sequence

import torch

from ..device.chunks import chunk_budgets, plan_chunks
from ..device.compensation import GlobalDriftCompensation, kernel_compensation
from ..device.converters import grid_position
from ..device.error import error_gain, scaled_weight_error
from ..device.mapping import as_recipe, check_mapping
from ..device.noise import kernel_physics
from ..device.physics import ProgramConversion, check_physics, program_and_read, refuse_clip
from ..device.simulate import (
    NOISE_BLOCK,
    DeviceNoise,
    as_time_tensor,
    converter_errors,
    keyed_noise,
)
from ..rng import draw_seed, keyed_generator, make_generator
from .tiles import DEFAULT_TILE, TestTile

#: Implementations of the objective (TNMSEObjective's ``kernel`` argument).
KERNELS = ("auto", "triton", "torch", "compile")

__all__ = ["KERNELS", "TNMSEObjective", "tnmse_from_programs", "NOISE_BLOCK", "path_converter"]

# Live [2K, N] tensors per candidate in one chunk (targets, per-target noise parameters, programmed
# and read conductances, temporaries); sets how many candidates fit a memory budget.
_LIVE_TENSORS = 12
# Per weight and candidate when each candidate has its own grid (a searched clip): its grid
# positions (int64 index, fraction) and their temporary, in units of one conductance.
_POSITION_TENSORS = 4


def _tnmse_chunk(tiles, test_weights, w, w_scaled, gain, idx, frac, grid_max, times,
                 noise_model, compensation, noise, readout_z, physics, generator=None,
                 row_scales=None, tile_max=None, buffers=True):
    """TNMSE of one chunk of candidates: ``tiles`` (a :class:`ProgramConversion` of f [B, p, K]
    and g_lst [B, p, 2K, L]) -> [B, p].

    Loops over the time steps (``times``, Python floats) so that the working set is a few
    [B, p, 2K, N] tensors (cache sized on the CPU); ``noise`` fields broadcast to
    [B, p, T, 2K, N] and ``readout_z`` to [B, p, T, out, in]; ``generator`` draws the readout
    noise of the bound management's repeated passes (rare: only when a readout clips).
    What depends on the layer only comes computed once per call: ``test_weights`` [B, N] the
    tile weights, ``w`` [B, 1, out, in] the same as tiles, ``gain`` [B, 1, 1 or out, 1] the
    error's gain (amp / M, times the row scales s under the per-column mapping) and ``w_scaled``
    = ``w`` x ``gain``. ``grid_max`` is [B, 1] (one grid per layer, whose positions ``idx``/
    ``frac`` [B, N] are given) or [B, p] (a clip per candidate: ``idx`` None, the positions
    computed here). ``row_scales`` [B, out, 1] the tile rows' scales (None: the layer-wise
    mapping); ``tile_max`` [B] the tile weights' max|W|, given when the grid clips.
    ``buffers``: reuse three work tensors over the time steps (the eager path; the compiled
    one fuses its passes and allocates nothing anyway).
    """
    B = w.shape[0]
    if idx is None:
        # A clip per candidate: each candidate's grid, so its own positions of the weights.
        L = tiles.g_lst.shape[-1]
        half_over_m = (0.5 * (L - 1)) / grid_max.clamp(min=torch.finfo(grid_max.dtype).tiny)
        idx, frac = grid_position(test_weights.unsqueeze(1), half_over_m.unsqueeze(-1), L)
    # The test weights' grid position is shared by every candidate (computed once per layer).
    g_target = tiles.targets(idx, frac)  # [B, p, 2K, N]
    # Per-target quantities (programming-noise std, drift mean and spread) are shared by all
    # time steps: computed once per candidate.
    prepared = noise_model.prepare_targets(g_target)
    # The read-back scale follows the grid (clip x the tile's max|W| with a clip).
    coef = tiles.coefficients(grid_max)  # [B, p, 1, 2K]
    w_ideal = w  # what the tile was asked to hold (the compensation's exact reference, floor)
    if tile_max is not None and row_scales is not None:
        # A clip per column: aihwkit holds each row clipped at c s_i and scaled to it, so the
        # tile's unit is c (the tile holds w / (c s), its grid end at 1; gpuwpo.device.mapping.
        # recipe_tile). The conductances are the same; the readouts are in those units, and
        # the error's gain is amp c s_i / M (the ideal side, W gain, does not depend on c).
        unit = (grid_max / tile_max.reshape(-1, 1)).reshape(B, -1, 1, 1)  # [B, p or 1, 1, 1]
        coef = tiles.coefficients(tile_max.reshape(-1, 1))
        w_ideal = w / unit
        gain = gain * unit
        if physics == "aihwkit":  # deployed as weights clipped before the tile: its targets
            end = tile_max.reshape(B, 1, 1, 1)
            w_ideal = torch.maximum(torch.minimum(w_ideal, end), -end)
    elif tile_max is not None and physics == "aihwkit":
        end = grid_max.reshape(B, -1, 1, 1)
        w_ideal = torch.maximum(torch.minimum(w, end), -end)
    if not getattr(compensation, "exact_reference", True):
        # Without an exact reference the ideal weights set only the readout's floor, through
        # their max|W| per tile (GlobalDriftCompensation.alpha): one value per tile, taken once
        # here instead of a pass over the tile at every time step.
        w_ideal = w_ideal.abs().amax(dim=(-2, -1), keepdim=True)
    work = ([torch.empty_like(g_target) for _ in range(3)]
            if buffers and noise.z_prog.shape[1] in (1, g_target.shape[1]) else None)
    z_prog, z_drift, z_read = (z.unbind(2) for z in noise)
    if compensation.bound_management:
        # A readout that clips is repeated with fresh noise drawn from ``generator``, one time
        # step after another: compensate each time step as it comes (the draws' order).
        errors = []
        for i, t_i in enumerate(times):
            w_prog, w_t = program_and_read(physics, tiles, coef, prepared, noise_model, t_i,
                                           z_prog[i], z_drift[i], z_read[i], work=work)
            z = None if readout_z is None else (readout_z[0][:, :, i], readout_z[1][:, :, i])
            alpha = compensation.alpha(w_prog, w_t, generator, tile_ndim=2, z=z,
                                       w_ideal=w_ideal)
            errors.append(scaled_weight_error(w_t.mul_(alpha * gain), w_scaled,
                                              inplace=True))  # [B, p]
        return torch.stack(errors, -1).mean(-1)
    # Otherwise every time step's tile weights first (small: [out, in] per step, where the
    # conductances are [2K, out, in]), then one compensation and one error over all of them:
    # the same numbers as per time step, for a T-th of the calls.
    steps = [program_and_read(physics, tiles, coef, prepared, noise_model, t_i, z_prog[i],
                              z_drift[i], z_read[i], work=work) for i, t_i in enumerate(times)]
    w_prog = torch.stack([step[0] for step in steps], 2)  # [B, p, T, out, in]
    w_t = torch.stack([step[1] for step in steps], 2)
    alpha = compensation.alpha(w_prog, w_t, generator, tile_ndim=2, z=readout_z,
                               w_ideal=w_ideal.unsqueeze(2))  # [B, p, T, 1 or out, 1]
    errors = scaled_weight_error(w_t.mul_(alpha * gain.unsqueeze(2)), w_scaled.unsqueeze(2),
                                 inplace=True)  # [B, p, T]
    return errors.mean(-1)


@functools.cache
def _compiled_chunk():
    """``_tnmse_chunk`` through torch.compile, built once per process (shapes are dynamic).

    One graph per physics and noise mode: the inference times are Python floats that the graph
    takes as inputs (nothing in the chunk breaks the graph: the time factors are checked and
    computed with comparisons and ``math``), and the time loop is unrolled into one fused loop
    over the conductances. The grid positions the tables are read at are clamped into the table
    by construction (:func:`gpuwpo.device.converters.grid_position`), so the generated code is
    spared a bounds check on every indirect load (``assert_indirect_indexing``). The recompile
    limit is raised for the rare shape changes dynamic shapes do not cover.
    """
    compiled = torch.compile(_tnmse_chunk, dynamic=True,
                             options={"assert_indirect_indexing": False})

    def run(*args):
        limit = max(64, torch._dynamo.config.recompile_limit)
        with torch._dynamo.config.patch(recompile_limit=limit):
            return compiled(*args)

    return run


def tnmse_from_programs(
    f: torch.Tensor,
    g_lst: torch.Tensor,
    test_weights: torch.Tensor,
    idx: torch.Tensor,
    frac: torch.Tensor,
    max_abs_weight: torch.Tensor,
    t_steps: torch.Tensor,
    noise_model,
    compensation=None,
    *,
    error_amplification: float = 10.0,
    generator: torch.Generator | int | None = None,
    common_random_numbers: bool = True,
    tile_shape: Sequence[int] | None = None,
    noise: DeviceNoise | None = None,
    readout_noise: tuple[torch.Tensor, torch.Tensor] | None = None,
    memory_budget: int | None = None,
    compiled: bool = False,
    layer_ids: Sequence[int] | None = None,
    physics: str = "device",
    grid_max_abs_weight: torch.Tensor | None = None,
    row_scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """TNMSE of every candidate program of every layer: the objective's hot path.

    Args:
        f: [B, P, K] significance factors.
        g_lst: [B, P, 2K, L] program tables in uS (rows G+_0, G-_0, G+_1, ...) on the grid
            linspace(-g_b, g_b, L), g the grid's half-width (``grid_max_abs_weight``).
        test_weights: [B, N] the tile weights each layer's converter programs (unitless): the
            test weights W under the layer-wise mapping, ``W / s`` under the per-column one
            (``row_scales``).
        idx, frac: [B, N] grid interpolation of the tile weights
            (:func:`gpuwpo.device.converters.grid_interpolation`); None (both) with a grid per
            candidate (``grid_max_abs_weight`` [B, P]), where they are computed per chunk.
        max_abs_weight: [B] M_b = max |W_b| of the layer's test weights (the error's
            normalisation; under the per-column mapping in the layer's units, not the tile's).
        t_steps: [T] inference times in seconds after programming.
        noise_model: the PCM device model.
        compensation: :class:`GlobalDriftCompensation` (default) or
            :class:`PerColumnDriftCompensation`, with or without a readout periphery.
        error_amplification: the factor 10 of docs/DESIGN.md section 5.
        generator: a torch.Generator, an int seed, or None for fresh entropy
            (:mod:`gpuwpo.rng`): all noise of this call.
        common_random_numbers: True shares one set of device noises by every candidate of a
            layer; False draws independent noise per candidate.
        tile_shape: (out, in) with out * in = N; the tile per-column compensation works on.
            Defaults to (1, N).
        noise: explicit device noise broadcastable to [B, P, T, 2K, N] (then ``generator`` is
            used only for the readout periphery).
        readout_noise: explicit readout-periphery draws (reference, time t), each broadcastable
            to [B, P, T, N].
        memory_budget: bytes the chunked computation may use at a time (default
            :func:`gpuwpo.reduction.chunk_budgets`: half the free memory on CUDA; on the CPU
            a cache-sized part per layer, several layers stacked in one chunk).
        compiled: run each chunk through ``torch.compile`` (same formulas, fused passes).
        layer_ids: [B] ids that key each layer's noise streams (default 0..B-1), so that a
            subset of a network's layers is evaluated with exactly the noise it would get in
            the full evaluation.
        physics: "device" or "aihwkit" (:mod:`gpuwpo.device.physics`).
        grid_max_abs_weight: [B] half-width of the programs' grid (default: the tile weights'
            max|W|, i.e. ``max_abs_weight`` under the layer-wise mapping; ``clip`` times it for
            programs that clip, with ``idx``/``frac`` on that grid), or [B, P], one per
            candidate (a searched clip). It sets the read-back scale, while the error stays
            against the test weights and M.
        row_scales: [B, out, 1] (or [B, out]) the per-column mapping's scales s of the tile rows
            (:func:`gpuwpo.device.mapping.row_scales`), or None for the layer-wise mapping: the
            error is ``E = mean(((amp s / M) (alpha W_t - W / s))^2)`` (docs/DESIGN.md 5c).

    Returns:
        tnmse [B, P] (float, the dtype of ``g_lst``).
    """
    compensation = GlobalDriftCompensation() if compensation is None else compensation
    if f.ndim != 3 or g_lst.ndim != 4:
        raise ValueError(f"f must be [B, P, K] and g_lst [B, P, 2K, L]; got {tuple(f.shape)} "
                         f"and {tuple(g_lst.shape)}")
    B, P, K = f.shape
    R = g_lst.shape[-2]
    if R != 2 * K:
        raise ValueError(f"g_lst has {R} rows but f has K={K} pairs (expected {2 * K} rows)")
    N = test_weights.shape[-1]
    tile_shape = (1, N) if tile_shape is None else tuple(int(s) for s in tile_shape)
    if math.prod(tile_shape) != N or len(tile_shape) != 2:
        raise ValueError(f"tile_shape {tile_shape} does not hold N={N} weights")
    device, dtype = g_lst.device, g_lst.dtype
    t = t_steps.to(dtype=dtype, device=device)
    T = t.shape[0]
    check_physics(physics)
    if row_scales is not None and (row_scales.numel() != B * tile_shape[0]):
        raise ValueError(f"row_scales must be [B, out, 1] = [{B}, {tile_shape[0]}, 1], got "
                         f"{tuple(row_scales.shape)}")
    tile_max = max_abs_weight if row_scales is None else test_weights.abs().amax(-1)
    grid_max = tile_max if grid_max_abs_weight is None else grid_max_abs_weight
    per_candidate = grid_max.ndim == 2
    if per_candidate and tuple(grid_max.shape) != (B, P):
        raise ValueError(f"grid_max_abs_weight must be [B] or [B, P] = [{B}, {P}], got "
                         f"{tuple(grid_max.shape)}")
    if (idx is None) != per_candidate or (frac is None) != per_candidate:
        raise ValueError("give idx and frac for one grid per layer, and neither for a grid per "
                         "candidate (grid_max_abs_weight [B, P])")
    clipped = grid_max_abs_weight is not None
    if clipped:
        refuse_clip(physics, float((grid_max / tile_max.reshape(B, *([1] * (grid_max.ndim - 1))))
                                   .min()))
    gen = make_generator(generator, device)
    noisy_readout = compensation.readout_noise > 0

    memory_budget, item_budget = chunk_budgets(device, memory_budget, compiled=compiled)
    # Explicit draws may be any shape that broadcasts to [B, P, T, 2K, N] (readout: [B, P, T, N]);
    # the chunks below index the candidate and time axes by position, so give them all their
    # dimensions (views, nothing is copied).
    if noise is not None:
        noise = DeviceNoise(*(_with_axes(z, 5, T) for z in noise))
    if readout_noise is not None:
        readout_noise = tuple(_with_axes(z, 4, T) for z in readout_noise)
    independent = noise is None and not common_random_numbers
    fresh_readout = noisy_readout and readout_noise is None and not common_random_numbers
    # The bound management's repeated readouts (rare) draw from one stream per chunk, keyed by
    # its first layer and candidate: with it, one layer per chunk, sized as for that layer
    # alone, so that a layer's draws do not depend on the layers evaluated beside it.
    layer_chunk, chunk = plan_chunks(
        1 if compensation.bound_management else B, P,
        bytes_per_item=((_LIVE_TENSORS + (3 * T if independent else 0)) * R
                        + (_POSITION_TENSORS if per_candidate else 0)) * N
        * g_lst.element_size(), memory_budget=memory_budget, item_budget=item_budget,
        align=NOISE_BLOCK if independent or fresh_readout else 1)

    crn_device = noise is None and common_random_numbers
    crn_readout = readout_noise is None and noisy_readout and common_random_numbers
    base_seed = draw_seed(gen) if independent or fresh_readout or crn_device or crn_readout \
        else 0
    keys = list(range(B)) if layer_ids is None else [int(b) for b in layer_ids]
    if len(keys) != B:
        raise ValueError(f"layer_ids has {len(keys)} entries for B={B} layers")
    if crn_device or crn_readout:
        # One stream per layer (keyed by its id), shared by all of that layer's candidates: a
        # layer sees the same noise whichever other layers are evaluated with it.
        shared = keyed_noise(base_seed, keys, slice(0, 1), 1, (T, R, N), device=device,
                             dtype=dtype, device_noise=crn_device, readout=crn_readout,
                             block=-1)
        if crn_device:
            noise = DeviceNoise(*shared[:3])
        if crn_readout:
            readout_noise = shared[3 if crn_device else 0:]

    def _part(z, layers: slice, cands: slice, cand_axis: int):
        # Shared draws (size-1 candidate axis) serve every chunk; per-candidate ones are sliced.
        z = z[layers] if z.shape[0] > 1 else z
        return z if z.shape[cand_axis] == 1 else z.narrow(cand_axis, cands.start,
                                                          cands.stop - cands.start)

    fn = _compiled_chunk() if compiled else _tnmse_chunk
    # Computed once per call, not once per chunk: the programs' scales (every candidate's),
    # the inference times as floats, and what depends on the layer only (tiles, error gain).
    programs = ProgramConversion(f, g_lst, tile_shape)
    times = tuple(float(v) for v in t.tolist())
    w_all = test_weights.reshape(B, 1, *tile_shape)
    # The error's gain amp / M, applied before squaring (scale-free, docs/DESIGN.md section 5)
    # and folded into the compensation's multiplication: alpha gain W_t - gain W. Under the
    # per-column mapping each row's effective weights are s_i alpha W_t: the gain is amp s_i / M
    # per row, the same one multiplication.
    gain_all = error_gain(max_abs_weight.reshape(-1, 1), float(error_amplification), 2,
                          like=w_all)  # [B, 1, 1, 1]
    if row_scales is not None:
        gain_all = gain_all * row_scales.reshape(B, 1, tile_shape[0], 1)  # [B, 1, out, 1]
    w_scaled_all = w_all * gain_all
    out = torch.empty((B, P), dtype=dtype, device=device)
    for l0 in range(0, B, layer_chunk):
        layers = slice(l0, min(B, l0 + layer_chunk))
        for start in range(0, P, chunk):
            cands = slice(start, min(P, start + chunk))
            if independent or fresh_readout:
                drawn = keyed_noise(base_seed, keys[layers], cands, P, (T, R, N),
                                    device=device, dtype=dtype, device_noise=independent,
                                    readout=fresh_readout)
            chunk_noise = (DeviceNoise(*drawn[:3]) if independent else
                           DeviceNoise(*(_part(z, layers, cands, 1) for z in noise)))
            if fresh_readout:
                chunk_ro = drawn[3 if independent else 0:]
            elif readout_noise is not None:
                chunk_ro = tuple(_part(z, layers, cands, 1) for z in readout_noise)
            else:
                chunk_ro = None
            if chunk_ro is not None:
                chunk_ro = tuple(z.reshape(*z.shape[:-1], *tile_shape) for z in chunk_ro)
            out[layers, cands] = fn(
                programs.chunk(layers, cands), test_weights[layers], w_all[layers],
                w_scaled_all[layers], gain_all[layers],
                None if per_candidate else idx[layers], None if per_candidate else frac[layers],
                grid_max[layers, cands] if per_candidate else grid_max[layers].reshape(-1, 1),
                times, noise_model, compensation, chunk_noise, chunk_ro, physics,
                # The bound management's repeated readouts (rare) draw from the chunk's stream.
                keyed_generator(base_seed, keys[l0], cands.start, 1, device=device)
                if compensation.bound_management else None,
                None if row_scales is None else row_scales[layers],
                tile_max[layers] if clipped else None, not compiled,
            )
    return out


def path_converter(converter_or_recipe, rows: bool = True):
    """What :func:`gpuwpo.device.simulate.converter_errors` is given for a converter or a
    :class:`gpuwpo.device.mapping.Recipe` (or a list of them): a layer-wise recipe as its bare
    converter (the converter path's own meaning of one), a per-column one as the recipe.
    ``rows``: whether the tiles it is used on were sampled by rows; a per-column recipe on
    tiles that were not is refused (their rows are no rows of the layer)."""
    if isinstance(converter_or_recipe, (list, tuple)):
        return [path_converter(c, rows) for c in converter_or_recipe]
    recipe = as_recipe(converter_or_recipe)
    if recipe.mapping == "layer":
        return recipe.converter
    if not rows:
        raise ValueError(f"a {recipe.mapping!r} recipe scales the rows of a tile: these test "
                         f"tiles were sampled by distribution (sample them by rows)")
    return recipe


def _with_axes(z: torch.Tensor, ndim: int, T: int) -> torch.Tensor:
    """``z`` broadcastable to [B, P, T, ...] (``ndim`` dims) as a view with all ``ndim`` dims and
    the time axis (index 2) expanded to T."""
    z = torch.as_tensor(z)
    if z.ndim > ndim:
        raise ValueError(f"explicit noise of shape {tuple(z.shape)} has more than {ndim} dims")
    z = z.reshape((1,) * (ndim - z.ndim) + tuple(z.shape))
    return z.expand(z.shape[0], z.shape[1], T, *z.shape[3:])


class TNMSEObjective:
    """Time-averaged normalised mean squared weight error of candidate programs, batched.

    Built once per search from the layers' test tiles, the device physics and the strategy
    space; called with a population ``x`` [B, P, D] (or [P, D] for one layer) in the unit
    hypercube.

    Args:
        test_weights: the layers: [N] (one layer), [B, N] (B layers), a sequence of B tensors of
            any shapes, or a ready :class:`gpuwpo.search.tiles.TestTile`. Each layer is reduced to a
            test tile of ``test_out_features x test_in_features`` weights by
            :func:`gpuwpo.downsample_weight_distribution` (sort, interpolate, shuffle), so
            layers of different sizes share one batch axis.
        noise_model: the device model.
        compensation: drift compensation (default ideal :class:`GlobalDriftCompensation`).
        t_steps: inference times [T] in seconds after programming.
        strategy_space: the :class:`gpuwpo.StrategySpace` that decodes ``x``.
        error_amplification: the factor 10 of docs/DESIGN.md section 5.
        test_in_features, test_out_features: the test tile (default 512 x 20 = 10,240 weights);
            ``None`` for both keeps the given weights as they are, in their order: layers of one
            shape, each a vector (one row of a tile [1, N]; a tensor [B, N] is B such layers) or
            a matrix [out, in] that is itself the tile.
        common_random_numbers: True (default) shares one set of device noises by every
            candidate of a layer within a call, so identical candidates get identical losses.
        memory_budget: bytes at a time for the chunked computation (see
            :func:`tnmse_from_programs`).
        kernel: "auto" (the Triton kernel on CUDA when triton imports and the physics is one
            the kernel implements, else torch), "triton", "torch", or "compile": the torch path
            through ``torch.compile``, which fuses its elementwise passes (after a one-off
            compilation per process; needs a C++ compiler; docs/RESULTS.md, "Speed", has its speed).
        device: where the computation runs (default: the test weights' device).
        dtype: float dtype of the computation (default float32).
        seed: the run's seed, of the test-weight shuffle (its stream ``"test_tiles"``,
            :data:`gpuwpo.rng.STREAMS`).
        physics: "device" (default: the programmed devices drift and are read, as on a chip)
            or "aihwkit" (the reference toolkit's inference tile: the programmed weights are
            converted to conductances again before they drift); see :mod:`gpuwpo.device.physics`.
        mapping: how the candidates map a tile to the crossbar (:mod:`gpuwpo.device.mapping`):
            "layer" (default; one scale per layer, the reference's) or "columnwise" (each row
            scaled to its own max|w| and back in digital, aihwkit's
            ``weight_scaling_omega=1, weight_scaling_columnwise=True``). Everything analogue
            happens on the tile weights; the error is against the layer's test weights,
            normalised by their M (docs/DESIGN.md section 5c).
        tile_rows: sample the test tiles by rows (:mod:`gpuwpo.search.tiles`); None: when the
            mapping is per column. True with the layer-wise mapping measures it on the rows a
            per-column baseline is measured on (what the optimizer does when either maps per
            column).

    With a ``clip_range`` in the strategy space, each candidate's last coordinate is its clip:
    its grid spans c times the tile weights' max|W| (each row's, per column), and the test
    weights' positions on it are computed per candidate.
    """

    def __init__(
        self,
        test_weights,
        noise_model,
        compensation=None,
        t_steps: Sequence[float] | torch.Tensor = (1.0,),
        strategy_space=None,
        *,
        error_amplification: float = 10.0,
        test_in_features: int | None = DEFAULT_TILE[1],
        test_out_features: int | None = DEFAULT_TILE[0],
        common_random_numbers: bool = True,
        memory_budget: int | None = None,
        kernel: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        physics: str = "device",
        mapping: str = "layer",
        tile_rows: bool | None = None,
    ) -> None:
        self.physics = check_physics(physics)
        mapping = check_mapping(mapping)
        if strategy_space is None:
            raise ValueError("strategy_space is required (a gpuwpo.StrategySpace)")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(map(repr, KERNELS))}, got "
                             f"{kernel!r}")
        if not error_amplification > 0:
            raise ValueError(f"error_amplification must be > 0, got {error_amplification}")
        if memory_budget is not None and memory_budget <= 0:
            raise ValueError(f"memory_budget must be a positive number of bytes, got "
                             f"{memory_budget}")
        if isinstance(test_weights, TestTile):
            tiles = test_weights
            if tiles.grid_size != strategy_space.grid_size:
                raise ValueError(f"the test tiles were made for a grid of {tiles.grid_size} "
                                 f"points, the strategy space has {strategy_space.grid_size}")
            if tiles.clip != strategy_space.clip:
                raise ValueError(f"the test tiles were made for clip={tiles.clip:g}, the "
                                 f"strategy space has clip={strategy_space.clip:g}")
            if tiles.mapping != mapping:
                raise ValueError(f"the test tiles were made for mapping={tiles.mapping!r}, the "
                                 f"objective's is {mapping!r} (TestTile.with_mapping)")
            if tile_rows is not None and bool(tile_rows) != tiles.rows:
                raise ValueError(f"the test tiles were {'' if tiles.rows else 'not '}sampled by "
                                 f"rows, tile_rows={tile_rows!r}")
        else:
            if (test_in_features is None) != (test_out_features is None):
                raise ValueError("give both test_in_features and test_out_features, or neither")
            shape = None if test_in_features is None else (test_out_features, test_in_features)
            tiles = TestTile.from_layers(test_weights, strategy_space.grid_size, shape=shape,
                                         seed=seed, device=device, dtype=dtype,
                                         clip=strategy_space.clip, mapping=mapping,
                                         rows=tile_rows)
        refuse_clip(self.physics, tiles.clip)
        if strategy_space.clip_range is not None:
            refuse_clip(self.physics, strategy_space.clip_range[0])
        self.tiles = tiles
        self.device = tiles.weights.device
        self.dtype = tiles.weights.dtype
        self.noise_model = noise_model
        self.compensation = GlobalDriftCompensation() if compensation is None else compensation
        self.t_steps = as_time_tensor(t_steps, dtype=self.dtype, device=self.device)
        self.space = strategy_space
        self.error_amplification = float(error_amplification)
        self.common_random_numbers = bool(common_random_numbers)
        self.memory_budget = memory_budget
        self.seed = seed
        self.kernel_requested = kernel
        self.kernel = self._choose_kernel(kernel)

    # -- properties ------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """B, the number of layers searched together."""
        return self.tiles.num_layers

    @property
    def dim(self) -> int:
        """D, the dimension of the strategy space."""
        return self.space.dim

    @property
    def num_test_weights(self) -> int:
        """N, the test weights per layer."""
        return self.tiles.numel

    @property
    def test_weights(self) -> torch.Tensor:
        """[B, N] the test weights (row-major tiles ``tile_shape``)."""
        return self.tiles.weights

    @property
    def max_abs_weight(self) -> torch.Tensor:
        """[B] max|W| of each layer's test tile."""
        return self.tiles.max_abs_weight

    @property
    def tile_shape(self) -> tuple[int, int]:
        """(out, in) of a test tile."""
        return self.tiles.shape

    @property
    def layer_ids(self) -> tuple[int, ...]:
        """Keys of the layers' noise streams."""
        return self.tiles.layer_ids

    @property
    def mapping(self) -> str:
        """The candidates' mapping (their tiles')."""
        return self.tiles.mapping

    def _kernel_supported(self) -> str | None:
        """Why the Triton kernel cannot run this physics, or None when it can.

        An explicit whitelist: the device model's class must declare the kernel's physics in its
        own body (:func:`gpuwpo.device.noise.kernel_physics`) and the compensation must be one the
        kernel implements (:func:`gpuwpo.device.compensation.kernel_compensation`); anything else
        runs
        the torch path, never silently the kernel's built-in PCM formulas.
        """
        if self.physics != "device":
            return f"the kernel implements physics='device', not {self.physics!r}"
        if self.tiles.clip != 1.0 or self.space.clip_range is not None:
            return "the kernel implements programs on the full grid (clip = 1, not searched)"
        if self.tiles.mapping != "layer":
            return (f"the kernel implements the layer-wise mapping, not {self.tiles.mapping!r} "
                    "(per-row scales)")
        if kernel_physics(self.noise_model) != "pcm":
            return (f"the kernel implements PCMLikeNoiseModel's formulas, not "
                    f"{type(self.noise_model).__name__}'s")
        if kernel_compensation(self.compensation) != "global-ideal":
            return ("the kernel implements global drift compensation with an ideal readout "
                    "and the programmed-weights reference only")
        return None

    def _choose_kernel(self, kernel: str) -> str:
        if kernel in ("torch", "compile"):
            return kernel
        why_not = self._kernel_supported()
        runnable = self.device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
        try:
            import triton  # noqa: F401
            have_triton = True
        except ImportError:
            have_triton = False
        if kernel == "auto":
            ok = have_triton and self.device.type == "cuda" and why_not is None
            return "triton" if ok else "torch"
        if not have_triton:
            raise ImportError("kernel='triton' needs the triton package (pip install gpuwpo[gpu])")
        if why_not is not None:
            raise ValueError(f"kernel='triton' is not available: {why_not}")
        if not runnable:
            raise ValueError("kernel='triton' needs a CUDA device (or TRITON_INTERPRET=1)")
        return "triton"

    # -- evaluation ------------------------------------------------------------------------
    def _as_population(self, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        x = torch.as_tensor(x)
        squeeze = x.ndim == 2
        if squeeze:
            if self.num_layers != 1:
                raise ValueError(f"x of shape {tuple(x.shape)} is [P, D] but the objective has "
                                 f"{self.num_layers} layers: pass [B, P, D]")
            x = x.unsqueeze(0)
        if x.ndim != 3 or x.shape[0] != self.num_layers or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [B={self.num_layers}, P, D={self.dim}] (or [P, D] for one "
                             f"layer), got {tuple(x.shape)}")
        return x.to(device=self.device, dtype=self.dtype), squeeze

    def __call__(self, x: torch.Tensor, generator: torch.Generator | int | None = None,
                 *, common_random_numbers: bool | None = None) -> torch.Tensor:
        """TNMSE of every candidate: x [B, P, D] -> [B, P] (or [P, D] -> [P]).

        ``generator``: a generator, an int seed, or None for fresh entropy (:mod:`gpuwpo.rng`).
        """
        x, squeeze = self._as_population(x)
        if self.space.searches_clip:
            f, g_lst, _, clip = self.space.decode(x, self.tiles.tile_max.reshape(-1, 1),
                                                  return_clip=True)
        else:
            f, g_lst, _ = self.space.decode(x, self.tiles.tile_max.reshape(-1, 1))
            clip = None
        out = self.evaluate_programs(f, g_lst, generator,
                                     common_random_numbers=common_random_numbers, clip=clip)
        return out.squeeze(0) if squeeze else out

    def evaluate_programs(self, f: torch.Tensor, g_lst: torch.Tensor,
                          generator: torch.Generator | int | None = None, *,
                          common_random_numbers: bool | None = None,
                          noise: DeviceNoise | None = None,
                          clip: torch.Tensor | None = None) -> torch.Tensor:
        """TNMSE of explicit programs f [B, P, K], g_lst [B, P, 2K, L] -> [B, P].

        ``clip``: [B, P] each program's clip fraction (its grid spans clip x the tile weights'
        max|W|), or None: the tiles' own (fixed) clip.
        """
        crn = self.common_random_numbers if common_random_numbers is None else common_random_numbers
        gen = make_generator(generator, self.device)
        f = f.to(device=self.device, dtype=self.dtype)
        g_lst = g_lst.to(device=self.device, dtype=self.dtype)
        t = self.tiles
        if clip is not None:
            clip = torch.as_tensor(clip).to(device=self.device, dtype=self.dtype)
            if tuple(clip.shape) != tuple(f.shape[:2]):
                raise ValueError(f"clip must be [B, P] = {tuple(f.shape[:2])}, got "
                                 f"{tuple(clip.shape)}")
            if not bool(((clip > 0) & (clip <= 1)).all()):
                raise ValueError("clip fractions must lie in (0, 1]")
            refuse_clip(self.physics, float(clip.min()))
        if self.kernel == "triton" and noise is None and clip is None:
            rng_state = gen.get_state()
            try:
                return self._evaluate_kernel(f, g_lst, draw_seed(gen), crn)
            except Exception as err:  # a kernel that cannot build must not stop an "auto" search
                if self.kernel_requested != "auto":
                    raise
                gen.set_state(rng_state)  # the torch path sees the noise it would have seen
                # "auto" promised a working objective: fall back to the torch twin for good.
                warnings.warn(f"the Triton kernel failed ({type(err).__name__}: {err}); using "
                              "the torch path from now on", RuntimeWarning, stacklevel=2)
                self.kernel = "torch"
        if clip is not None:
            grid_max, idx, frac = clip * t.tile_max.reshape(-1, 1), None, None
        else:
            grid_max, idx, frac = t.grid_max if t.clip != 1.0 else None, t.idx, t.frac
        return tnmse_from_programs(
            f, g_lst, t.tile_weights, idx, frac, t.max_abs_weight, self.t_steps,
            self.noise_model, self.compensation, error_amplification=self.error_amplification,
            generator=gen, common_random_numbers=crn, tile_shape=t.shape, noise=noise,
            memory_budget=self.memory_budget, compiled=self.kernel == "compile",
            layer_ids=t.layer_ids, physics=self.physics, grid_max_abs_weight=grid_max,
            row_scales=t.row_scales,
        )

    def _evaluate_kernel(self, f, g_lst, seed: int, crn: bool) -> torch.Tensor:
        from ..kernels.tnmse import tnmse_triton

        nm, t = self.noise_model, self.tiles
        return tnmse_triton(
            f, g_lst, t.weights, t.idx, t.frac, t.max_abs_weight,
            self.t_steps, g_max=nm.g_max, prog_coeff=nm.prog_coeff, g_ref=nm.g_ref,
            prog_noise_scale=nm.prog_noise_scale, drift_scale=nm.drift_scale,
            read_noise_scale=nm.read_noise_scale, t_0=nm.t_0, t_read=nm.t_read,
            error_amplification=self.error_amplification, seed=seed,
            common_random_numbers=crn, layer_ids=torch.as_tensor(t.layer_ids),
        ).to(self.dtype)

    def validate(self, x: torch.Tensor, repeats: int = 100,
                 generator: torch.Generator | int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-evaluate one candidate per layer with fresh, independent noise.

        Args:
            x: [B, D] (or [D] for one layer).
            repeats: independent programmings (>= 2).
            generator: a generator, an int seed, or None for fresh entropy.

        Returns:
            (mean [B], standard error [B]) of the TNMSE over the repeats.
        """
        if int(repeats) != repeats or repeats < 2:
            raise ValueError(f"repeats must be an integer >= 2, got {repeats!r}")
        x = torch.as_tensor(x)
        squeeze = x.ndim == 1
        x = x.reshape(self.num_layers, 1, -1).expand(-1, int(repeats), -1)
        losses = self(x, generator, common_random_numbers=False)  # [B, repeats]
        mean, sem = losses.mean(-1), losses.std(-1) / math.sqrt(repeats)
        return (mean.squeeze(0), sem.squeeze(0)) if squeeze else (mean, sem)

    def converter_tnmse(self, converter, repeats: int = 100,
                        generator: torch.Generator | int | None = None) -> torch.Tensor:
        """TNMSE of a standard converter on each layer's test tile, per repeat: [B, repeats].

        The converter path (:func:`gpuwpo.device.simulate.converter_errors`) in the objective's
        physics; each layer's tile is converted with its own max|W|. One base seed for all
        layers, each keyed by its id, so the layers of a subset get exactly the figures they get
        in the whole. ``converter``: a converter (the layer-wise mapping) or a
        :class:`gpuwpo.device.mapping.Recipe` (a converter and its mapping, whichever the
        candidates' is; a per-column one needs tiles sampled by rows).
        """
        if int(repeats) != repeats or repeats < 1:
            raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
        converter = path_converter(converter, self.tiles.rows)
        base_seed = draw_seed(make_generator(generator, self.device))
        rows = []
        for b in range(self.num_layers):
            errors = converter_errors(
                self.tiles.tile(b), converter, self.noise_model, self.t_steps,
                compensation=self.compensation, physics=self.physics, repeats=int(repeats),
                generator=base_seed, layer_id=self.tiles.layer_ids[b],
                amplification=self.error_amplification, memory_budget=self.memory_budget)
            rows.append(errors.mean(-1))
        return torch.stack(rows)

    def evaluate_converter(self, converter, repeats: int = 100,
                           generator: torch.Generator | int | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """TNMSE of a standard converter (the baseline) through the same physics.

        Returns:
            (mean [B], standard error [B]) over ``repeats`` (>= 2) independent programmings.
        """
        if int(repeats) != repeats or repeats < 2:
            raise ValueError(f"repeats must be an integer >= 2, got {repeats!r}")
        losses = self.converter_tnmse(converter, repeats, generator)
        return losses.mean(-1), losses.std(-1) / math.sqrt(losses.shape[-1])

    def select_layers(self, layers: Sequence[int]) -> TNMSEObjective:
        """The objective restricted to some layers (their tiles and noise keys; see TestTile)."""
        return self._on(self.tiles.select(layers), self.space)

    def with_mapping(self, mapping: str, strategy_space=None) -> TNMSEObjective:
        """The objective of the same test weights (and noise keys) under another mapping, and
        optionally another strategy space (of the same grid; its fixed clip places the
        tiles), e.g. the unclipped space, to rank the standard converters under each mapping."""
        space = self.space if strategy_space is None else strategy_space
        return self._on(self.tiles.with_mapping(mapping, space.clip), space)

    def _on(self, tiles: TestTile, space) -> TNMSEObjective:
        kernel = self.kernel if self.kernel != "triton" else self.kernel_requested
        return TNMSEObjective(
            tiles, self.noise_model, self.compensation, self.t_steps, space,
            error_amplification=self.error_amplification,
            common_random_numbers=self.common_random_numbers, memory_budget=self.memory_budget,
            kernel=kernel, physics=self.physics, mapping=tiles.mapping)

    def __repr__(self) -> str:
        return (f"TNMSEObjective(layers={self.num_layers}, N={self.num_test_weights}, "
                f"T={self.t_steps.shape[0]}, D={self.dim}, device={self.device}, "
                f"kernel={self.kernel!r}, physics={self.physics!r}, mapping={self.mapping!r}, "
                f"common_random_numbers={self.common_random_numbers})")
