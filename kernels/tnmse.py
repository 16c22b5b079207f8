"""Fused Triton kernel for the TNMSE of a whole population of CustomPair programs.

:func:`tnmse_triton` evaluates every candidate program of every layer over every inference time
in one kernel launch, with the device physics of docs/DESIGN.md section 2 and the objective of
section 5. Its pure-torch twin and specification is
:func:`gpuwpo.search.objective.tnmse_from_programs`; the two agree in distribution (they draw
different random numbers), and to float32 round-off when the twin is given the kernel's
standard normals (tests/test_kernel_tnmse.py reproduces the stream).

What it implements: the layer-wise mapping (one scale per tile: the tile weights are the test
weights) on the full grid (clip 1, the same grid for every candidate), the device physics, the
PCM formulas and ideal global compensation. Anything else -- a per-column mapping (per-row
scales, :mod:`gpuwpo.device.mapping`), a fixed or searched clip, the reference's physics, other
noise models or compensations -- is declined by ``TNMSEObjective`` (``_kernel_supported``):
``kernel="auto"`` runs the torch twin, ``kernel="triton"`` is refused with the reason.

Design
------
* Grid ``(B * P, C)``: one program per (layer, candidate) and chunk of the N test weights. A
  program loops over the T time steps and, inside, over the ``BLOCK_N``-wide blocks of its chunk;
  the 2K devices of a weight are unrolled (K is a constexpr). Nothing of shape [P, T, 2K, N]
  is ever written: every programmed, drifted and read conductance lives in registers only.
* Target conductances are interpolated in registers from the candidate's program table (a gather
  at ``idx`` and ``idx + 1``, weighted by ``frac``); the table is tiny and stays in L1/L2.
* Noise: one Philox-4x32-10 call per (device, weight, time step) gives the three standard normals
  (programming z1, drift z2, read z3) by Box-Muller. The Philox key is the seed, the counter is
  (weight index n, t * 2K + device row r, candidate p or 0 with common random numbers, layer b),
  so a draw is a pure function of (seed, b, p, t, r, n): the result is deterministic, the noise
  does not depend on the launch configuration, and common random numbers cost nothing.
* Compensation in one pass (docs/DESIGN.md section 5). Summing
  ``alpha^2 S_tt - 2 alpha S_tw + S_ww`` loses the small error to cancellation against ``S_ww``
  in float32, so each chunk takes a reference ``a_ref`` (the compensation factor of its first
  block, same formula as alpha) and accumulates the moments of ``D = a_ref W_t - W``, which is
  already nearly the compensated error. With ``alpha`` known after the launch:
  ``sum (alpha W_t - W)^2 = (alpha - a_ref)^2 S_tt + 2 (alpha - a_ref) S_tD + S_DD``, whose terms
  are all about the size of the result. Per (b, p, t, chunk) the kernel writes
  ``(A0, A_t, S_tt, S_tD, S_DD, a_ref)`` (float32 per-lane sums over the chunk's blocks, ~1000
  at most for N = 10^6, then one tree reduction); a float64 torch epilogue over that
  [B, P, T, C, 6] buffer forms alpha_t and the TNMSE. No atomics, so the result is bitwise
  reproducible on a device.

Expected performance limits
---------------------------
Per weight x device x time step the kernel does: one Philox-4x32-10 (about 100 32-bit integer
ops, 40 of them multiplies: 20 mul.hi and 20 mul.lo), Box-Muller for 3 normals (2 log, 2 sqrt,
3 sin/cos), the physics (1 log for the drift mean/std, a log + exp for ``|g_p|^0.65``, 1 exp for
the drift power law), the table gather (2 loads that hit L1) and ~40 fp32 FMA/min/max. That is
~11 special-function (MUFU) ops, ~100 integer ops and ~50 fp32 ops, i.e. ~160-200
warp-instruction slots per sample. On an H100 (132 SMs, 4 schedulers x 32 lanes,
MUFU 16/clk/SM, IMAD 64/clk/SM) issue bandwidth (~1.3-1.6 clk/SM per sample) and the integer
multiplies of Philox bound the kernel, the MUFU share is ~0.7 clk/SM per sample: about
1-2e11 device-samples per second at best. (Estimates from instruction counts, not yet measured:
bench/ is where the measured figure belongs.) A candidate with N = 10,240 weights, 2K = 4 devices
and T = 10 times is 4e5 samples, so the ceiling is a few 1e5 candidates per second. Memory is
not a limit: the per-layer weights, indices and fractions (12 bytes per weight) are shared by all
candidates and stay in L2; the output is 24 bytes per (candidate, time step, chunk).
Cheaper normal generators (e.g. 16-bit uniforms, an inverse-CDF polynomial instead of
Box-Muller, fewer Philox rounds) would trade statistical quality for speed; not done.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "gpuwpo.kernels.tnmse needs Triton (pip install 'gpuwpo[gpu]' or pip install triton); "
        "without it use the pure-torch objective gpuwpo.search.objective.tnmse_from_programs"
    ) from exc

__all__ = ["tnmse_triton", "reduce_tnmse_partials", "NUM_PARTIALS"]

#: Values written per (layer, candidate, time step, chunk): A0, A_t, S_tt, S_tD, S_DD, a_ref.
NUM_PARTIALS = 6

# Launch configuration: a fixed function of the problem's shape, never of the GPU model, so the
# summation order (and with it the last bits of the result) does not change with the device.
_BLOCK_N = 512
_NUM_WARPS = 4
_TARGET_PROGRAMS = 2048  # enough programs to fill ~132 SMs several times over
_MAX_CHUNKS = 64  # bounds the partial-sum buffer at B * P * T * 64 * 24 bytes


@triton.jit
def _tnmse_partials_kernel(
    f_ptr,  # [B, P, K] float32
    g_ptr,  # [B, P, 2K, L] float32, uS
    inv_scale_ptr,  # [B, P] float32: 1 / scale (scale in uS per unit weight)
    w_ptr,  # [B, N] float32 test weights
    idx_ptr,  # [B, N] int32 grid index
    frac_ptr,  # [B, N] float32 grid fraction
    layer_id_ptr,  # [B] int32: the key of each layer's noise (its index in the network)
    log_drift_ptr,  # [T] float32: ln(t'/t0) if t' > t0 else 0
    read_fac_ptr,  # [T] float32: sqrt(ln((t' + t_read) / (2 t_read)))
    out_ptr,  # [B, P, T, C, 6] float32 partial sums
    P,
    N,
    T,
    L,
    C,
    blocks_per_chunk,
    seed,
    g_max,
    prog_c0,
    prog_c1,
    prog_c2,
    g_max_over_g_ref,
    prog_noise_scale,
    drift_scale,
    read_noise_scale,
    K: tl.constexpr,
    COMMON_RANDOM_NUMBERS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_bp = tl.program_id(0)
    chunk = tl.program_id(1)
    b = pid_bp // P
    p = pid_bp % P
    R: tl.constexpr = 2 * K

    lanes = tl.arange(0, BLOCK_N)
    zeros_i = tl.zeros([BLOCK_N], dtype=tl.int32)
    # Philox counter words that are constant over the launch's program.
    if COMMON_RANDOM_NUMBERS:
        c_cand = zeros_i
    else:
        c_cand = zeros_i + p
    c_layer = zeros_i + tl.load(layer_id_ptr + b)
    inv_scale = tl.load(inv_scale_ptr + pid_bp)
    inv_g_max = 1.0 / g_max
    row_base = g_ptr + pid_bp.to(tl.int64) * (R * L)
    first_n = chunk * blocks_per_chunk * BLOCK_N

    for ti in range(T):
        log_drift = tl.load(log_drift_ptr + ti)
        read_fac = tl.load(read_fac_ptr + ti)
        acc_a0 = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc_at = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc_tt = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc_td = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc_dd = tl.zeros([BLOCK_N], dtype=tl.float32)
        a_ref = log_drift * 0.0 + 1.0  # a float32 scalar, replaced on the first block
        for i in range(blocks_per_chunk):
            offs = first_n + i * BLOCK_N + lanes
            mask = offs < N
            w = tl.load(w_ptr + b.to(tl.int64) * N + offs, mask=mask, other=0.0)
            idx = tl.load(idx_ptr + b.to(tl.int64) * N + offs, mask=mask, other=0)
            # Clamped so that a bad index can never read outside the table.
            idx = tl.minimum(tl.maximum(idx, 0), L - 2)
            frac = tl.load(frac_ptr + b.to(tl.int64) * N + offs, mask=mask, other=0.0)
            w_prog = tl.zeros([BLOCK_N], dtype=tl.float32)
            w_t = tl.zeros([BLOCK_N], dtype=tl.float32)
            for r in tl.static_range(R):
                row = row_base + r * L
                g_lo = tl.load(row + idx)
                g_hi = tl.load(row + idx + 1)
                g = g_lo + frac * (g_hi - g_lo)

                bits1, bits2, bits3, bits4 = tl.philox(
                    seed, offs, zeros_i + (ti * R + r), c_cand, c_layer
                )
                z1, z2 = tl.pair_uniform_to_normal(
                    tl.uint_to_uniform_float(bits1), tl.uint_to_uniform_float(bits2)
                )
                z3, _ = tl.pair_uniform_to_normal(
                    tl.uint_to_uniform_float(bits3), tl.uint_to_uniform_float(bits4)
                )

                # Programming noise, scaled from the fit's reference conductance.
                x = g * inv_g_max
                sigma_prog = (prog_c0 + prog_c1 * x + prog_c2 * x * x) * g_max_over_g_ref
                g_p = tl.maximum(g + prog_noise_scale * sigma_prog * z1, 0.0)
                # Drift coefficient from the target conductance.
                ln_g_rel = tl.log(tl.maximum(tl.abs(x), 1e-7))
                mu = tl.minimum(tl.maximum(-0.0155 * ln_g_rel + 0.0244, 0.049), 0.1)
                sd = tl.minimum(tl.maximum(-0.0125 * ln_g_rel - 0.0059, 0.008), 0.045)
                nu = tl.abs(mu + sd * z2) * drift_scale
                g_d = g_p * tl.exp(-nu * log_drift)
                # 1/f read noise; max(p^0.65, 1e-3) == max(p, 1e-3^(1/0.65))^0.65 keeps log finite.
                p_rel = tl.maximum(tl.abs(g_p) * inv_g_max, 2.4201282647943795e-05)
                q = tl.minimum(0.0088 * tl.exp(-0.65 * tl.log(p_rel)), 0.2)
                g_t = tl.maximum(g_d + tl.abs(g_d) * (read_noise_scale * q * read_fac) * z3, 0.0)

                fk = tl.load(f_ptr + pid_bp * K + r // 2)
                if r % 2 == 0:
                    w_prog += fk * g_p
                    w_t += fk * g_t
                else:
                    w_prog -= fk * g_p
                    w_t -= fk * g_t

            w_prog = tl.where(mask, w_prog * inv_scale, 0.0)
            w_t = tl.where(mask, w_t * inv_scale, 0.0)
            abs_prog = tl.abs(w_prog)
            abs_t = tl.abs(w_t)
            if i == 0:
                # The chunk's reference compensation: alpha's formula on its first block.
                n_valid = tl.minimum(N - first_n, BLOCK_N).to(tl.float32)
                a_ref = tl.maximum(tl.sum(abs_prog, axis=0) / n_valid, 1e-4) / tl.maximum(
                    tl.sum(abs_t, axis=0) / n_valid, 1e-4
                )
            d = a_ref * w_t - w
            acc_a0 += abs_prog
            acc_at += abs_t
            acc_tt += w_t * w_t
            acc_td += w_t * d
            acc_dd += d * d

        out = out_ptr + ((pid_bp.to(tl.int64) * T + ti) * C + chunk) * 6
        tl.store(out + 0, tl.sum(acc_a0, axis=0))
        tl.store(out + 1, tl.sum(acc_at, axis=0))
        tl.store(out + 2, tl.sum(acc_tt, axis=0))
        tl.store(out + 3, tl.sum(acc_td, axis=0))
        tl.store(out + 4, tl.sum(acc_dd, axis=0))
        tl.store(out + 5, a_ref)


def reduce_tnmse_partials(
    partials: torch.Tensor,
    num_weights: int,
    max_abs_weight: torch.Tensor,
    *,
    error_amplification: float = 10.0,
) -> torch.Tensor:
    """Float64 epilogue: partial sums [B, P, T, C, 6] -> TNMSE [B, P] (float64).

    ``partials[..., c, :]`` holds chunk c's (A0, A_t, S_tt, S_tD, S_DD, a_ref) with
    ``D = a_ref W_t - W``; ``max_abs_weight`` is [B]. alpha_t = max(A0/N, eps) /
    max(A_t/N, eps) with eps = 1e-4 M (relative to the layer's max|W|, as in
    :mod:`gpuwpo.device.compensation`; a_ref is only the expansion point, any value is exact) and
    ``sum (alpha W_t - W)^2 = sum_c (da^2 S_tt + 2 da S_tD + S_DD)`` with
    ``da = alpha_t - a_ref``.
    """
    p = partials.to(torch.float64)
    a0, a_t, s_tt, s_td, s_dd, a_ref = p.unbind(-1)
    n = float(num_weights)
    eps = (1e-4 * max_abs_weight.to(torch.float64)).clamp_min(
        torch.finfo(torch.float64).tiny).reshape(-1, 1, 1)  # [B, 1, 1]
    alpha = torch.maximum(a0.sum(-1) / n, eps) / torch.maximum(a_t.sum(-1) / n, eps)  # [B, P, T]
    da = alpha.unsqueeze(-1) - a_ref
    err = (da * da * s_tt + 2.0 * da * s_td + s_dd).sum(-1)  # [B, P, T]
    amp = error_amplification / max_abs_weight.to(torch.float64)  # [B]
    num_t = partials.shape[2]
    return err.sum(-1) * (amp * amp).unsqueeze(-1) / (n * num_t)


def _check_tensor(name: str, x: torch.Tensor, ndim: int, device: torch.device) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device}, but test_weights is on {device}")


def _check_float(name: str, x: torch.Tensor) -> None:
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def tnmse_triton(
    f: torch.Tensor,
    g_lst: torch.Tensor,
    test_weights: torch.Tensor,
    idx: torch.Tensor,
    frac: torch.Tensor,
    max_abs_weight: torch.Tensor,
    t_steps: torch.Tensor,
    *,
    g_max: float,
    prog_coeff: tuple[float, float, float],
    g_ref: float,
    prog_noise_scale: float,
    drift_scale: float,
    read_noise_scale: float,
    t_0: float,
    t_read: float,
    error_amplification: float = 10.0,
    seed: int,
    common_random_numbers: bool = True,
    layer_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """TNMSE of every candidate program, programmed, drifted, read and compensated on the GPU.

    Same inputs and physics as :func:`gpuwpo.search.objective.tnmse_from_programs` with the default
    (non-custom) PCM drift model and ideal global drift compensation.

    Args:
        f: significance factors [B, P, K] (K pairs, 1 <= K <= 4).
        g_lst: program tables [B, P, 2K, L] in uS, rows (G+_0, G-_0, G+_1, ...) on the weight grid
            linspace(-M_b, M_b, L).
        test_weights: the layers' test weights W [B, N] (unitless).
        idx: grid index of each test weight [B, N], integer in [0, L-2] (clamped in the kernel).
        frac: interpolation fraction of each test weight [B, N], in [0, 1].
        max_abs_weight: M_b = max |W_b| [B].
        t_steps: inference times [T] in seconds after programming (>= 0).
        g_max: maximum conductance in uS; prog_coeff: (c0, c1, c2) of the programming-noise fit;
            g_ref: the conductance (uS) the fit was made at.
        prog_noise_scale, drift_scale, read_noise_scale: multipliers of the three device noises.
        t_0: drift reference time (s); t_read: read duration (s).
        error_amplification: the 10 in E_t = sum_n (10 (alpha_t W_t,n - W_n) / M)^2.
        seed: key of the counter-based generator; the result is a deterministic function of it.
        common_random_numbers: if True, all candidates of a layer see the same noise draws.
        layer_ids: [B] integers that key each layer's noise (default 0..B-1), so that a subset
            of a network's layers gets exactly the noise it gets in the full evaluation.

    Returns:
        tnmse [B, P] float32 on the device of the inputs.
    """
    device = test_weights.device
    _check_tensor("test_weights", test_weights, 2, device)
    _check_tensor("f", f, 3, device)
    _check_tensor("g_lst", g_lst, 4, device)
    _check_tensor("idx", idx, 2, device)
    _check_tensor("frac", frac, 2, device)
    _check_tensor("max_abs_weight", max_abs_weight, 1, device)
    _check_tensor("t_steps", t_steps, 1, device)
    for name, x in (("f", f), ("g_lst", g_lst), ("test_weights", test_weights), ("frac", frac),
                    ("max_abs_weight", max_abs_weight), ("t_steps", t_steps)):
        _check_float(name, x)
    if idx.is_floating_point() or idx.dtype == torch.bool or idx.is_complex():
        raise TypeError(f"idx must be an integer tensor, got {idx.dtype}")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError(
            f"tnmse_triton runs on CUDA tensors (got {device}); on the CPU set TRITON_INTERPRET=1 "
            "before importing triton (slow, for tests) or use "
            "gpuwpo.search.objective.tnmse_from_programs"
        )

    B, N = test_weights.shape
    if B == 0 or N == 0:
        raise ValueError(f"test_weights must be non-empty [B, N], got {tuple(test_weights.shape)}")
    if f.shape[0] != B or g_lst.shape[0] != B:
        raise ValueError(f"f {tuple(f.shape)} and g_lst {tuple(g_lst.shape)} must have B = {B} "
                         "layers like test_weights")
    P, K = f.shape[1], f.shape[2]
    if not 1 <= K <= 4:
        raise ValueError(f"f must have 1..4 pairs in its last dimension, got K = {K}")
    if tuple(g_lst.shape[:3]) != (B, P, 2 * K):
        raise ValueError(f"g_lst must be [B, P, 2K, L] = [{B}, {P}, {2 * K}, L] to match f "
                         f"{tuple(f.shape)}, got {tuple(g_lst.shape)}")
    L = g_lst.shape[3]
    if L < 2:
        raise ValueError(f"g_lst needs at least 2 grid points, got L = {L}")
    if tuple(idx.shape) != (B, N) or tuple(frac.shape) != (B, N):
        raise ValueError(f"idx {tuple(idx.shape)} and frac {tuple(frac.shape)} must be [B, N] = "
                         f"[{B}, {N}] like test_weights")
    if tuple(max_abs_weight.shape) != (B,):
        raise ValueError(f"max_abs_weight must be [B] = [{B}], got {tuple(max_abs_weight.shape)}")
    T = t_steps.shape[0]
    if P == 0 or T == 0:
        raise ValueError(f"need at least one candidate and one time step, got P = {P}, T = {T}")
    if N >= 2**31 or B >= 2**31 or P >= 2**31 or T * 2 * K >= 2**31:
        raise ValueError("sizes must fit the kernel's 32-bit noise counters")
    if not (g_max > 0 and g_ref > 0 and t_0 > 0 and t_read > 0):
        raise ValueError(f"g_max, g_ref, t_0, t_read must be > 0, got {g_max}, {g_ref}, {t_0}, "
                         f"{t_read}")
    if len(prog_coeff) != 3:
        raise ValueError(f"prog_coeff must be 3 floats (c0, c1, c2), got {prog_coeff!r}")

    # Per-candidate scale and per-time-step scalars: tiny, computed in float64 before the launch.
    from gpuwpo.device.converters import program_scale  # the twin's definition, in float64

    scale = program_scale(f.to(torch.float64), g_lst.to(torch.float64),
                          max_abs_weight.to(torch.float64).unsqueeze(-1))  # [B, P]
    inv_scale = (1.0 / scale).to(torch.float32).contiguous()
    t_prime = t_steps.to(torch.float64) + t_0
    log_drift = torch.where(t_prime > t_0, torch.log(t_prime / t_0), torch.zeros_like(t_prime))
    read_fac = torch.sqrt(torch.log((t_prime + t_read) / (2.0 * t_read)))

    bp = B * P
    num_blocks = triton.cdiv(N, _BLOCK_N)
    chunks = min(num_blocks, _MAX_CHUNKS, max(1, triton.cdiv(_TARGET_PROGRAMS, bp)))
    blocks_per_chunk = triton.cdiv(num_blocks, chunks)
    chunks = triton.cdiv(num_blocks, blocks_per_chunk)  # every chunk starts inside [0, N)
    partials = torch.empty((B, P, T, chunks, NUM_PARTIALS), dtype=torch.float32, device=device)

    if layer_ids is None:
        layer_ids = torch.arange(B, device=device)
    layer_ids = torch.as_tensor(layer_ids, device=device)
    if tuple(layer_ids.shape) != (B,) or layer_ids.is_floating_point():
        raise ValueError(f"layer_ids must be [B] = [{B}] integers, got {tuple(layer_ids.shape)}")
    c0, c1, c2 = (float(c) for c in prog_coeff)
    grid = (bp, chunks)
    _tnmse_partials_kernel[grid](
        f.to(torch.float32).contiguous(),
        g_lst.to(torch.float32).contiguous(),
        inv_scale,
        test_weights.to(torch.float32).contiguous(),
        idx.to(torch.int32).contiguous(),
        frac.to(torch.float32).contiguous(),
        layer_ids.to(torch.int32).contiguous(),
        log_drift.to(torch.float32).contiguous(),
        read_fac.to(torch.float32).contiguous(),
        partials,
        P,
        N,
        T,
        L,
        chunks,
        blocks_per_chunk,
        int(seed) & 0x7FFF_FFFF_FFFF_FFFF,
        float(g_max),
        c0,
        c1,
        c2,
        float(g_max) / float(g_ref),
        float(prog_noise_scale),
        float(drift_scale),
        float(read_noise_scale),
        K=K,
        COMMON_RANDOM_NUMBERS=bool(common_random_numbers),
        BLOCK_N=_BLOCK_N,
        num_warps=_NUM_WARPS,
    )
    return reduce_tnmse_partials(
        partials, N, max_abs_weight, error_amplification=float(error_amplification)
    ).to(torch.float32)
