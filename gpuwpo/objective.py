"""The batched TNMSE objective (docs/DESIGN.md section 5).

A whole population of candidate programs, for every layer at once, is decoded, converted,
programmed, drifted, read, compensated and reduced in one batched computation on the tensors'
device. :func:`tnmse_from_programs` is the hot path (and the pure-torch twin of the Triton kernel
in :mod:`gpuwpo.kernels.tnmse`); :class:`TNMSEObjective` holds the test weights, the physics and
the strategy space and is what every search backend calls with an [B, P, D] tensor.
"""

from __future__ import annotations

import functools
import math
import os
import secrets
import warnings
from collections.abc import Sequence

import torch

from .compensation import GlobalDriftCompensation, kernel_compensation
from .converters import grid_interpolation, interpolate_programs, program_scale
from .noise import kernel_physics
from .physics import ProgramTiles, check_physics, program_and_read
from .sampling import downsample_weight_distribution
from .simulate import DeviceNoise, as_time_tensor

#: Implementations of the objective (TNMSEObjective's ``kernel`` argument).
KERNELS = ("auto", "triton", "torch", "compile")

__all__ = ["KERNELS", "TNMSEObjective", "tnmse_from_programs", "program_scale", "make_generator",
           "NOISE_BLOCK"]

#: Candidates drawn from one noise stream when noise is independent per candidate. Chunks of the
#: computation are multiples of it, which is what makes chunked and unchunked runs identical.
NOISE_BLOCK = 8

# Live [2K, N] tensors per candidate in one chunk (targets, per-target noise parameters, programmed
# and read conductances, temporaries); sets how many candidates fit a memory budget.
_LIVE_TENSORS = 12
# On the CPU the chunk is kept cache-sized: elementwise passes over data that stays in cache are
# several times faster than passes over main memory. The size is a measured choice (see
# bench/README.md, "memory budget"); torch.compile's fused loops prefer 8x larger chunks.
_CPU_MEMORY_BUDGET = 2 * 2**20
# The converter path (baselines) simulates whole repeats at a time; its budget bounds memory.
_CONVERTER_MEMORY_BUDGET = 16 * 2**20


def make_generator(
    generator: torch.Generator | int | None, device: torch.device | str
) -> torch.Generator:
    """A torch.Generator on ``device``: given, seeded from an int, or freshly seeded at random."""
    device = torch.device(device)
    if isinstance(generator, torch.Generator):
        if generator.device.type != device.type:
            raise ValueError(
                f"generator is on {generator.device} but the computation runs on {device}"
            )
        return generator
    if generator is None:
        # Fresh entropy, not the global RNG: nothing here reads or advances torch's global state.
        generator = secrets.randbits(62)
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise TypeError(f"generator must be a torch.Generator, an int seed or None, got "
                        f"{type(generator).__name__}")
    return torch.Generator(device=device).manual_seed(int(generator))


def _draw_seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())


def _block_generator(base_seed: int, block: int, device: torch.device, *,
                     layer: int = 0) -> torch.Generator:
    # Independent streams per (layer, block of candidates), derived from one seed per call.
    seed = (base_seed + (block + 1) * 0x9E3779B97F4A7C15 + (layer + 1) * 0xC2B2AE3D27D4EB4F)
    return torch.Generator(device=device).manual_seed(seed % (2**63 - 1))


def _tnmse_chunk(f, g_lst, test_weights, idx, frac, max_abs_weight, t, noise_model,
                 compensation, amp, noise, readout_z, tile_shape, physics, generator=None,
                 float_times=True):
    """TNMSE of one chunk of candidates: f [B, p, K], g_lst [B, p, 2K, L] -> [B, p].

    Loops over the time steps so that the working set is a few [B, p, 2K, N] tensors (cache
    sized on the CPU); ``noise`` fields broadcast to [B, p, T, 2K, N] and ``readout_z`` to
    [B, p, T, out, in]; ``generator`` draws the readout noise of the bound management's repeated
    passes (rare: only when a readout clips).
    """
    tiles = ProgramTiles(f, g_lst, tile_shape)
    # The test weights' grid position is shared by every candidate (computed once per layer).
    g_target = interpolate_programs(g_lst, idx.unsqueeze(1), frac.unsqueeze(1))  # [B, p, 2K, N]
    coef = tiles.coefficients(max_abs_weight.reshape(-1, 1))  # [B, p, 1, 2K]
    # Per-target quantities (programming-noise std, drift mean and spread) are shared by all
    # time steps: computed once per candidate.
    prepared = noise_model.prepare_targets(g_target)
    w = test_weights.reshape(test_weights.shape[0], 1, *tile_shape)
    sq = []
    # Eagerly, a Python float takes the noise model's fused in-place path; under torch.compile
    # a 0-d tensor keeps the graph free of one specialisation (and recompilation) per time.
    times = t.tolist() if float_times else t.unbind(0)
    for i, t_i in enumerate(times):
        w_prog, w_t = program_and_read(physics, tiles, coef, prepared, noise_model, t_i,
                                       noise.z_prog[:, :, i], noise.z_drift[:, :, i],
                                       noise.z_read[:, :, i])  # [B, p, out, in]
        z = None if readout_z is None else (readout_z[0][:, :, i], readout_z[1][:, :, i])
        alpha = compensation.alpha(w_prog, w_t, generator, tile_ndim=2, z=z, w_ideal=w)
        sq.append((w_t.mul_(alpha).sub_(w)).square_().sum((-2, -1)))  # [B, p]
    n = test_weights.shape[-1]
    gain = (amp / max_abs_weight).square().reshape(-1, 1)
    return gain * torch.stack(sq, -1).mean(-1) / n


@functools.cache
def _compiled_chunk():
    """``_tnmse_chunk`` through torch.compile, built once per process (shapes are dynamic).

    Each inference time stays a Python float, so the compiler specialises one fused loop per
    time step (measured ~1.7x faster on a CPU than passing times as 0-d tensors); that is T
    graphs, or 2T with independent noise, more than dynamo's default limit of 8 recompilations.
    """
    compiled = torch.compile(_tnmse_chunk, dynamic=True)

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
) -> torch.Tensor:
    """TNMSE of every candidate program of every layer: the objective's hot path.

    Args:
        f: [B, P, K] significance factors.
        g_lst: [B, P, 2K, L] program tables in uS (rows G+_0, G-_0, G+_1, ...) on the grid
            linspace(-M_b, M_b, L).
        test_weights: [B, N] test weights W of each layer (unitless).
        idx, frac: [B, N] grid interpolation of the test weights
            (:func:`gpuwpo.converters.grid_interpolation`).
        max_abs_weight: [B] M_b = max |W_b|.
        t_steps: [T] inference times in seconds after programming.
        noise_model: the PCM device model.
        compensation: :class:`GlobalDriftCompensation` (default) or
            :class:`PerColumnDriftCompensation`, with or without a readout periphery.
        error_amplification: the factor 10 of docs/DESIGN.md section 5.
        generator: torch.Generator or int seed for all noise of this call.
        common_random_numbers: True shares one set of device noises by every candidate of a
            layer; False draws independent noise per candidate.
        tile_shape: (out, in) with out * in = N; the tile per-column compensation works on.
            Defaults to (1, N).
        noise: explicit device noise broadcastable to [B, P, T, 2K, N] (then ``generator`` is
            used only for the readout periphery).
        readout_noise: explicit readout-periphery draws (reference, time t), each broadcastable
            to [B, P, T, N].
        memory_budget: bytes the chunked computation may use at a time; defaults to half the
            free memory on CUDA and a cache-sized 16 MiB on the CPU.
        compiled: run each chunk through ``torch.compile`` (same formulas, fused passes).
        layer_ids: [B] ids that key each layer's noise streams (default 0..B-1), so that a
            subset of a network's layers is evaluated with exactly the noise it would get in
            the full evaluation.
        physics: "device" or "aihwkit" (:mod:`gpuwpo.physics`).

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
    gen = make_generator(generator, device)
    noisy_readout = compensation.readout_noise > 0

    if memory_budget is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            memory_budget = free // 2
        else:
            # A fused (compiled) loop reads each input once, so larger chunks only save overhead.
            memory_budget = _CPU_MEMORY_BUDGET * (8 if compiled else 1)
    # Explicit draws may be any shape that broadcasts to [B, P, T, 2K, N] (readout: [B, P, T, N]);
    # the chunks below index the candidate and time axes by position, so give them all their
    # dimensions (views, nothing is copied).
    if noise is not None:
        noise = DeviceNoise(*(_with_axes(z, 5, T) for z in noise))
    if readout_noise is not None:
        readout_noise = tuple(_with_axes(z, 4, T) for z in readout_noise)
    independent = noise is None and not common_random_numbers
    fresh_readout = noisy_readout and readout_noise is None and not common_random_numbers
    layer_chunk, chunk = _plan_chunks(
        B, P, bytes_per_pair=(_LIVE_TENSORS + (3 * T if independent else 0)) * R * N
        * g_lst.element_size(), memory_budget=int(memory_budget),
        align=NOISE_BLOCK if independent or fresh_readout else 1)

    crn_device = noise is None and common_random_numbers
    crn_readout = readout_noise is None and noisy_readout and common_random_numbers
    base_seed = _draw_seed(gen) if independent or fresh_readout or crn_device or crn_readout \
        else 0
    keys = list(range(B)) if layer_ids is None else [int(b) for b in layer_ids]
    if len(keys) != B:
        raise ValueError(f"layer_ids has {len(keys)} entries for B={B} layers")
    if crn_device or crn_readout:
        # One stream per layer (keyed by its id), shared by all of that layer's candidates: a
        # layer sees the same noise whichever other layers are evaluated with it.
        shared = _fresh_noise(base_seed, keys, slice(0, 1), 1, (T, R, N), device=device,
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
    out = torch.empty((B, P), dtype=dtype, device=device)
    for l0 in range(0, B, layer_chunk):
        layers = slice(l0, min(B, l0 + layer_chunk))
        for start in range(0, P, chunk):
            cands = slice(start, min(P, start + chunk))
            if independent or fresh_readout:
                drawn = _fresh_noise(base_seed, keys[layers], cands, P, (T, R, N),
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
                f[layers, cands], g_lst[layers, cands],
                test_weights[layers], idx[layers], frac[layers], max_abs_weight[layers], t,
                noise_model, compensation, float(error_amplification), chunk_noise, chunk_ro,
                tile_shape, physics,
                _block_generator(base_seed ^ 0x5DEECE66D, cands.start, device, layer=keys[l0])
                if compensation.bound_management else None,
            )
    return out


def _plan_chunks(B: int, P: int, *, bytes_per_pair: int, memory_budget: int,
                 align: int) -> tuple[int, int]:
    """(layers, candidates) per chunk so that layers * candidates * bytes_per_pair fits the
    budget; candidate chunks are multiples of ``align`` (the noise block) and at least one
    block, layer chunks shrink first only when a single block of every layer does not fit."""
    min_cands = min(P, align)
    layer_chunk = max(1, min(B, memory_budget // (bytes_per_pair * min_cands)))
    chunk = max(min_cands, memory_budget // (bytes_per_pair * layer_chunk))
    if align > 1:
        chunk = max(align, chunk // align * align)
    return layer_chunk, min(chunk, P)


def _fresh_noise(base_seed: int, layers: Sequence[int], cands: slice, P: int, shape: tuple, *,
                 device, dtype, device_noise: bool, readout: bool,
                 block: int | None = None) -> tuple[torch.Tensor, ...]:
    """Independent draws for candidates ``cands`` of the layers with ids ``layers``: one stream
    per (layer, block of NOISE_BLOCK candidates), so any chunking over layers and candidates
    sees the same numbers. ``block=-1`` draws one set shared by all candidates of a layer
    (common random numbers; then ``cands`` is ``slice(0, 1)``).

    Returns the device noises (3 x [l, p, T, 2K, N]) when ``device_noise``, then the readout
    noises (2 x [l, p, T, N]) when ``readout``.
    """
    T, R, N = shape
    fields: list[list[list[torch.Tensor]]] = [[] for _ in range(3 * device_noise + 2 * readout)]
    for b in layers:
        per_layer: list[list[torch.Tensor]] = [[] for _ in fields]
        blocks = ([block] if block is not None else
                  range(cands.start // NOISE_BLOCK, -(-cands.stop // NOISE_BLOCK)))
        for blk in blocks:
            n = 1 if blk < 0 else min(P, (blk + 1) * NOISE_BLOCK) - blk * NOISE_BLOCK
            bgen = _block_generator(base_seed, blk, device, layer=b)
            k = 0
            if device_noise:
                for _ in range(3):
                    per_layer[k].append(torch.randn((n, T, R, N), generator=bgen, dtype=dtype,
                                                    device=device))
                    k += 1
            if readout:
                for _ in range(2):
                    per_layer[k].append(torch.randn((n, T, N), generator=bgen, dtype=dtype,
                                                    device=device))
                    k += 1
        for k, parts in enumerate(per_layer):
            fields[k].append(_cat(parts, 0))
    return tuple(_cat([z.unsqueeze(0) for z in per_field], 0) for per_field in fields)


def _cat(parts, dim: int) -> torch.Tensor:
    # One block (the usual chunk on a CPU) needs no copy; torch.cat would make one.
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def _with_axes(z: torch.Tensor, ndim: int, T: int) -> torch.Tensor:
    """``z`` broadcastable to [B, P, T, ...] (``ndim`` dims) as a view with all ``ndim`` dims and
    the time axis (index 2) expanded to T."""
    z = torch.as_tensor(z)
    if z.ndim > ndim:
        raise ValueError(f"explicit noise of shape {tuple(z.shape)} has more than {ndim} dims")
    z = z.reshape((1,) * (ndim - z.ndim) + tuple(z.shape))
    return z.expand(z.shape[0], z.shape[1], T, *z.shape[3:])


def _as_layer_list(test_weights) -> list[torch.Tensor]:
    if isinstance(test_weights, torch.Tensor):
        if test_weights.ndim == 1:
            return [test_weights]
        if test_weights.ndim == 2:
            return list(test_weights.unbind(0))
        raise ValueError("test_weights must be [N], [B, N] or a sequence of per-layer tensors; "
                         f"got shape {tuple(test_weights.shape)}")
    if isinstance(test_weights, Sequence) and len(test_weights) > 0:
        return [torch.as_tensor(w) for w in test_weights]
    raise ValueError("test_weights must be [N], [B, N] or a non-empty sequence of tensors")


class TNMSEObjective:
    """Time-averaged normalised mean squared weight error of candidate programs, batched.

    Built once per search from the layers' weights, the device physics and the strategy space;
    called with a population ``x`` [B, P, D] (or [P, D] for one layer) in the unit hypercube.

    Args:
        test_weights: [N] (one layer), [B, N] (B layers) or a sequence of B tensors of any
            shapes. Each layer is reduced to ``test_in_features * test_out_features`` test
            weights by :func:`gpuwpo.downsample_weight_distribution` (sort, interpolate,
            shuffle), so layers of different sizes share one batch axis.
        noise_model: the PCM device model.
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
            through ``torch.compile``, which fuses its elementwise passes (about 5x faster on a
            CPU, after a one-off compilation of some 20 s per process; needs a C++ compiler).
        device: where the computation runs (default: the test weights' device).
        dtype: float dtype of the computation (default float32).
        seed: seed of the test-weight shuffle.
        physics: "device" (default: the programmed devices drift and are read, as on a chip)
            or "aihwkit" (the reference toolkit's inference tile: the programmed weights are
            converted to conductances again before they drift); see :mod:`gpuwpo.physics`.
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
        test_in_features: int | None = 512,
        test_out_features: int | None = 20,
        common_random_numbers: bool = True,
        memory_budget: int | None = None,
        kernel: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        physics: str = "device",
    ) -> None:
        self.physics = check_physics(physics)
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
        layers = _as_layer_list(test_weights)
        if device is None:
            device = layers[0].device
        self.device = torch.device(device)
        self.dtype = dtype
        for i, w in enumerate(layers):
            if w.numel() == 0:
                raise ValueError(f"layer {i} has no weights")
            if not torch.isfinite(w).all():
                raise ValueError(f"layer {i} has NaN or inf weights")
            if not (w != 0).any():
                raise ValueError(f"layer {i} is all zeros: there is nothing to program")
        if (test_in_features is None) != (test_out_features is None):
            raise ValueError("give both test_in_features and test_out_features, or neither")
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        if test_in_features is None:
            shapes = {tuple(w.shape) for w in layers}
            if len(shapes) != 1:
                raise ValueError("layers of different shapes need a test size "
                                 "(test_in_features, test_out_features)")
            tests = [w.reshape(-1).to(device=self.device, dtype=dtype) for w in layers]
            # A layer given as a matrix [out, in] is its own tile; a vector is one row.
            shape = layers[0].shape
            self.tile_shape = tuple(shape) if len(shape) == 2 else (1, tests[0].numel())
        else:
            if test_in_features < 1 or test_out_features < 1:
                raise ValueError(f"test size must be positive, got {test_in_features} x "
                                 f"{test_out_features}")
            self.tile_shape = (int(test_out_features), int(test_in_features))
            tests = [
                downsample_weight_distribution(w.detach().to("cpu", torch.float32).reshape(-1),
                                               (math.prod(self.tile_shape),), generator=gen)
                .to(device=self.device, dtype=dtype)
                for w in layers
            ]
        self.test_weights = torch.stack(tests)  # [B, N]
        self.layer_ids = list(range(len(tests)))  # keys of the layers' noise streams
        self.max_abs_weight = self.test_weights.abs().amax(-1)  # [B]
        self.noise_model = noise_model
        self.compensation = GlobalDriftCompensation() if compensation is None else compensation
        self.t_steps = as_time_tensor(t_steps, dtype=dtype, device=self.device)
        self.space = strategy_space
        self.error_amplification = float(error_amplification)
        self.common_random_numbers = bool(common_random_numbers)
        self.memory_budget = memory_budget
        # The grid depends only on M, so every candidate shares these (docs/DESIGN.md section 3).
        self.idx, self.frac = grid_interpolation(
            self.test_weights, self.max_abs_weight, strategy_space.grid_size
        )
        self.kernel_requested = kernel
        self.kernel = self._choose_kernel(kernel)

    # -- properties ------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """B, the number of layers searched together."""
        return self.test_weights.shape[0]

    @property
    def dim(self) -> int:
        """D, the dimension of the strategy space."""
        return self.space.dim

    @property
    def num_test_weights(self) -> int:
        """N, the test weights per layer."""
        return self.test_weights.shape[1]

    def _kernel_supported(self) -> str | None:
        """Why the Triton kernel cannot run this physics, or None when it can.

        An explicit whitelist: the device model's class must declare the kernel's physics in its
        own body (:func:`gpuwpo.noise.kernel_physics`) and the compensation must be one the
        kernel implements (:func:`gpuwpo.compensation.kernel_compensation`); anything else runs
        the torch path, never silently the kernel's built-in PCM formulas.
        """
        if self.physics != "device":
            return f"the kernel implements physics='device', not {self.physics!r}"
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
        """TNMSE of every candidate: x [B, P, D] -> [B, P] (or [P, D] -> [P])."""
        x, squeeze = self._as_population(x)
        f, g_lst, _ = self.space.decode(x, self.max_abs_weight.reshape(-1, 1))
        out = self.evaluate_programs(f, g_lst, generator,
                                     common_random_numbers=common_random_numbers)
        return out.squeeze(0) if squeeze else out

    def evaluate_programs(self, f: torch.Tensor, g_lst: torch.Tensor,
                          generator: torch.Generator | int | None = None, *,
                          common_random_numbers: bool | None = None,
                          noise: DeviceNoise | None = None) -> torch.Tensor:
        """TNMSE of explicit programs f [B, P, K], g_lst [B, P, 2K, L] -> [B, P]."""
        crn = self.common_random_numbers if common_random_numbers is None else common_random_numbers
        gen = make_generator(generator, self.device)
        f = f.to(device=self.device, dtype=self.dtype)
        g_lst = g_lst.to(device=self.device, dtype=self.dtype)
        if self.kernel == "triton" and noise is None:
            rng_state = gen.get_state()
            try:
                return self._evaluate_kernel(f, g_lst, _draw_seed(gen), crn)
            except Exception as err:  # a kernel that cannot build must not stop an "auto" search
                if self.kernel_requested != "auto":
                    raise
                gen.set_state(rng_state)  # the torch path sees the noise it would have seen
                # "auto" promised a working objective: fall back to the torch twin for good.
                warnings.warn(f"the Triton kernel failed ({type(err).__name__}: {err}); using "
                              "the torch path from now on", RuntimeWarning, stacklevel=2)
                self.kernel = "torch"
        return tnmse_from_programs(
            f, g_lst, self.test_weights, self.idx, self.frac, self.max_abs_weight, self.t_steps,
            self.noise_model, self.compensation, error_amplification=self.error_amplification,
            generator=gen, common_random_numbers=crn, tile_shape=self.tile_shape, noise=noise,
            memory_budget=self.memory_budget, compiled=self.kernel == "compile",
            layer_ids=self.layer_ids, physics=self.physics,
        )

    def _evaluate_kernel(self, f, g_lst, seed: int, crn: bool) -> torch.Tensor:
        from .kernels.tnmse import tnmse_triton

        nm = self.noise_model
        return tnmse_triton(
            f, g_lst, self.test_weights, self.idx, self.frac, self.max_abs_weight,
            self.t_steps, g_max=nm.g_max, prog_coeff=nm.prog_coeff, g_ref=nm.g_ref,
            prog_noise_scale=nm.prog_noise_scale, drift_scale=nm.drift_scale,
            read_noise_scale=nm.read_noise_scale, t_0=nm.t_0, t_read=nm.t_read,
            error_amplification=self.error_amplification, seed=seed,
            common_random_numbers=crn, layer_ids=torch.as_tensor(self.layer_ids),
        ).to(self.dtype)

    def validate(self, x: torch.Tensor, repeats: int = 100,
                 generator: torch.Generator | int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-evaluate one candidate per layer with fresh, independent noise.

        Args:
            x: [B, D] (or [D] for one layer).
            repeats: independent programmings (>= 2).

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

    def evaluate_converter(self, converter, repeats: int = 100,
                           generator: torch.Generator | int | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """TNMSE of a standard converter (the baseline) through the same physics.

        Each layer's test tile is converted with ``converter`` (its own max |W|), then
        programmed, drifted, read and compensated ``repeats`` times with independent noise, in
        the objective's physics.

        Returns:
            (mean [B], standard error [B]) of the TNMSE over the repeats.
        """
        from .simulate import simulate_weights

        if int(repeats) != repeats or repeats < 2:
            raise ValueError(f"repeats must be an integer >= 2, got {repeats!r}")
        gen = make_generator(generator, self.device)
        T, N = self.t_steps.shape[0], self.num_test_weights
        per_repeat = _LIVE_TENSORS * T * 2 * getattr(converter, "num_devices", 2) * N * 4
        budget = self.memory_budget or _CONVERTER_MEMORY_BUDGET
        step = max(1, min(int(repeats), budget // per_repeat))
        means, sems = [], []
        for b in range(self.num_layers):
            w = self.test_weights[b].reshape(self.tile_shape)
            gain = (self.error_amplification / self.max_abs_weight[b]) ** 2
            losses = []
            for start in range(0, int(repeats), step):
                n = min(step, int(repeats) - start)
                eff = simulate_weights(w, converter, self.noise_model, self.t_steps,
                                       self.compensation, repeats=n, generator=gen,
                                       physics=self.physics)
                losses.append(gain * (eff - w).square().mean((-2, -1)).mean(-1))
            losses = torch.cat(losses)
            means.append(losses.mean())
            sems.append(losses.std() / math.sqrt(len(losses)))
        return torch.stack(means), torch.stack(sems)

    def select_layers(self, layers: Sequence[int]) -> TNMSEObjective:
        """A view of this objective restricted to some layers (tensors shared, not copied)."""
        layers = list(layers)
        if not layers or any(not 0 <= b < self.num_layers for b in layers):
            raise ValueError(f"layers must be indices in [0, {self.num_layers}), got {layers}")
        sub = object.__new__(TNMSEObjective)
        sub.__dict__.update(self.__dict__)
        index = torch.as_tensor(layers, device=self.device)
        for name in ("test_weights", "max_abs_weight", "idx", "frac"):
            setattr(sub, name, getattr(self, name).index_select(0, index))
        sub.layer_ids = [self.layer_ids[b] for b in layers]
        return sub

    def __repr__(self) -> str:
        return (f"TNMSEObjective(layers={self.num_layers}, N={self.num_test_weights}, "
                f"T={self.t_steps.shape[0]}, D={self.dim}, device={self.device}, "
                f"kernel={self.kernel!r}, physics={self.physics!r}, "
                f"common_random_numbers={self.common_random_numbers})")
