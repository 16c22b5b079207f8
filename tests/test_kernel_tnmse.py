"""Tests of the fused TNMSE kernel (gpuwpo.kernels.tnmse) against float64 torch specifications.

Without CUDA the kernel runs in Triton's interpreter on the CPU (TRITON_INTERPRET=1, set before
triton is first imported), which is slow: sizes here are tiny.

Two kinds of checks:
* exact: the kernel's noise is a pure function of (seed, layer, candidate, time, device, weight)
  (Philox-4x32-10 + Box-Muller), which this file reproduces in torch; fed the same standard
  normals, the float64 reference below must agree with the kernel to float32 round-off. This
  checks every formula of the physics, including the noisy branches.
* in distribution: against the reference (and the library's torch twin when it imports) with
  torch's own random numbers: the means over repeats agree within 3 combined standard errors.
"""

from __future__ import annotations

import functools
import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Must happen before triton is imported anywhere in this process.
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

import gpuwpo.kernels.tnmse as tnmse_module  # noqa: E402
from gpuwpo.kernels.tnmse import reduce_tnmse_partials, tnmse_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
G_MAX = 25.0
PROG_COEFF = (0.26348, 1.9650, -1.1731)
PHYSICS = dict(g_max=G_MAX, prog_coeff=PROG_COEFF, g_ref=25.0, prog_noise_scale=1.0,
               drift_scale=1.0, read_noise_scale=1.0, t_0=20.0, t_read=250e-9)
# t = 0 takes the no-drift branch; the others drift and read with growing 1/f noise.
T_STEPS = (0.0, 3600.0, 3.15e7)


# ---------------------------------------------------------------------------------------------
# Specification: float64, explicit noise, written from docs/DESIGN.md sections 2, 3 and 5.
# ---------------------------------------------------------------------------------------------

def reference_tnmse(f, g_lst, w, idx, frac, m, t_steps, z1, z2, z3, *, g_max, prog_coeff, g_ref,
                    prog_noise_scale, drift_scale, read_noise_scale, t_0, t_read,
                    error_amplification=10.0):
    """TNMSE [B, P] in float64 from explicit standard normals z1, z2, z3 [B, P, T, 2K, N].

    f [B, P, K], g_lst [B, P, 2K, L] (uS), w/idx/frac [B, N], m [B], t_steps [T] (s).
    """
    f, g_lst, w, frac, m, t_steps = (x.to(torch.float64) for x in (f, g_lst, w, frac, m, t_steps))
    z1, z2, z3 = (z.to(torch.float64) for z in (z1, z2, z3))
    B, P, R, L = g_lst.shape
    ix = idx.long()[:, None, None, :].expand(B, P, R, -1)
    lo = torch.gather(g_lst, -1, ix)
    hi = torch.gather(g_lst, -1, ix + 1)
    g = (lo + frac[:, None, None, :] * (hi - lo))[:, :, None]  # [B, P, 1, 2K, N]
    net_grid = (f[..., None] * (g_lst[:, :, 0::2] - g_lst[:, :, 1::2])).sum(2)  # [B, P, L]
    scale = net_grid.abs().amax(-1) / m[:, None]  # [B, P]

    c0, c1, c2 = prog_coeff
    x = g / g_max
    sigma_prog = (c0 + c1 * x + c2 * x**2) * g_max / g_ref
    g_p = torch.clamp(g + prog_noise_scale * sigma_prog * z1, min=0.0)
    g_rel = torch.clamp(g.abs() / g_max, min=1e-7)
    mu = torch.clamp(-0.0155 * torch.log(g_rel) + 0.0244, 0.049, 0.1)
    sigma = torch.clamp(-0.0125 * torch.log(g_rel) - 0.0059, 0.008, 0.045)
    nu = (mu + sigma * z2).abs() * drift_scale
    tp = (t_steps + t_0)[None, None, :, None, None]
    g_d = torch.where(tp > t_0, g_p * (tp / t_0) ** (-nu), g_p)
    q = torch.clamp(0.0088 / torch.clamp((g_p.abs() / g_max) ** 0.65, min=1e-3), max=0.2)
    sigma_read = q * torch.sqrt(torch.log((tp + t_read) / (2 * t_read)))
    g_t = torch.clamp(g_d + g_d.abs() * read_noise_scale * sigma_read * z3, min=0.0)

    def weights(gc):  # [B, P, T, 2K, N] -> [B, P, T, N]
        net = (f[:, :, None, :, None] * (gc[:, :, :, 0::2] - gc[:, :, :, 1::2])).sum(3)
        return net / scale[:, :, None, None]

    w_prog, w_t = weights(g_p), weights(g_t)
    eps = 1e-4 * m[:, None, None, None]  # the floor is relative to the layer's max|W|
    alpha = (torch.maximum(w_prog.abs().mean(-1, keepdim=True), eps)
             / torch.maximum(w_t.abs().mean(-1, keepdim=True), eps))
    amp = error_amplification / m[:, None, None, None]
    err = (amp * (alpha * w_t - w[:, None, None, :])) ** 2
    return err.sum(-1).mean(-1) / w.shape[-1]


# ---------------------------------------------------------------------------------------------
# The kernel's noise stream, reproduced (Philox-4x32-10 as in triton.language.random).
# ---------------------------------------------------------------------------------------------

_M32 = 0xFFFFFFFF


def _philox(seed, c0, c1, c2, c3):
    """Philox-4x32-10 on int64 tensors holding uint32 values (wrapping products are exact)."""
    k0 = torch.full_like(c0, seed & _M32)
    k1 = torch.full_like(c0, (seed >> 32) & _M32)
    for _ in range(10):
        p0 = 0xD2511F53 * c0  # low 64 bits exact under int64 wrap-around
        p2 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (((p2 >> 32) & _M32) ^ c1 ^ k0, p2 & _M32,
                          ((p0 >> 32) & _M32) ^ c3 ^ k1, p0 & _M32)
        k0 = (k0 + 0x9E3779B9) & _M32
        k1 = (k1 + 0xBB67AE85) & _M32
    return c0, c1, c2, c3


def _uniform(bits):
    signed = torch.where(bits >= 2**31, bits - 2**32, bits)
    signed = torch.where(signed < 0, -signed - 1, signed)
    return signed.to(torch.float32) * 4.6566127342e-10


def _box_muller(u1, u2):
    r = torch.sqrt(-2.0 * torch.log(torch.clamp(u1, min=1.0e-7)))
    th = 6.283185307179586 * u2
    return r * torch.cos(th), r * torch.sin(th)


def kernel_normals(seed, B, P, T, R, N, *, common_random_numbers, device=DEVICE):
    """The kernel's (z1, z2, z3), each [B, P, T, R, N] float32 (P axis of size 1 with CRN)."""
    pc = 1 if common_random_numbers else P
    shape = (B, pc, T, R, N)
    ar = lambda n: torch.arange(n, dtype=torch.int64, device=device)  # noqa: E731
    c0 = ar(N).view(1, 1, 1, 1, N).expand(shape)
    c1 = (ar(T).view(1, 1, T, 1, 1) * R + ar(R).view(1, 1, 1, R, 1)).expand(shape)
    c2 = ar(pc).view(1, pc, 1, 1, 1).expand(shape)
    c3 = ar(B).view(B, 1, 1, 1, 1).expand(shape)
    b1, b2, b3, b4 = _philox(seed, *(c.contiguous() for c in (c0, c1, c2, c3)))
    z1, z2 = _box_muller(_uniform(b1), _uniform(b2))
    z3, _ = _box_muller(_uniform(b3), _uniform(b4))
    return z1, z2, z3


# ---------------------------------------------------------------------------------------------
# Programs and test weights
# ---------------------------------------------------------------------------------------------

def make_layer(N, L, gen):
    """Shuffled Gaussian test weights w [N], M, and their grid interpolation (idx, frac) [N]."""
    w = torch.randn(N, generator=gen, dtype=torch.float64)
    m = w.abs().max()
    pos = ((w / m + 1.0) * 0.5 * (L - 1)).clamp(0, L - 1)
    idx = pos.floor().clamp(max=L - 2)
    return w, m, idx.long(), pos - idx


def dual_pair_program(L, g_max=G_MAX):
    """DualPair f = [1, 1], g 0..g_max: f [2], g_lst [4, L] on the grid linspace(-M, M, L)."""
    w_us = torch.linspace(-1.0, 1.0, L, dtype=torch.float64) * 2 * g_max  # max|W| -> 2 g_max
    low = w_us.abs().clamp(max=g_max)  # the first pair fills first
    high = (w_us.abs() - g_max).clamp(0.0, g_max)
    pos, neg = w_us > 0, w_us < 0
    g = torch.stack([low * pos, low * neg, high * pos, high * neg])
    return torch.tensor([1.0, 1.0], dtype=torch.float64), g


def single_pair_program(L, g_max=G_MAX):
    w_us = torch.linspace(-1.0, 1.0, L, dtype=torch.float64) * g_max
    return torch.tensor([1.0], dtype=torch.float64), torch.stack([w_us.clamp(min=0),
                                                                   (-w_us).clamp(min=0)])


def random_program(K, L, gen, g_max=G_MAX):
    f = 0.5 + 2.5 * torch.rand(K, generator=gen, dtype=torch.float64)
    return f, g_max * torch.rand(2 * K, L, generator=gen, dtype=torch.float64)


def make_problem(programs, N, L, seed, *, copies=1):
    """One layer per program (same weight distribution, own draw), `copies` candidates each.

    Returns (f [B, P, K], g_lst [B, P, 2K, L], w, idx, frac [B, N], m [B]) in float32/int64.
    """
    gen = torch.Generator().manual_seed(seed)
    layers = [make_layer(N, L, gen) for _ in programs]
    f = torch.stack([p[0].expand(copies, -1) for p in programs])
    g = torch.stack([p[1].expand(copies, -1, -1) for p in programs])
    w, m, idx, frac = (torch.stack([layer[i] for layer in layers]) for i in range(4))
    f32 = lambda x: x.to(torch.float32).to(DEVICE)  # noqa: E731
    return f32(f), f32(g), f32(w), idx.to(DEVICE), f32(frac), f32(m)


def run_kernel(problem, t_steps, seed, physics=PHYSICS, **kw):
    f, g, w, idx, frac, m = problem
    t = torch.tensor(t_steps, dtype=torch.float32, device=DEVICE)
    return tnmse_triton(f, g, w, idx, frac, m, t, seed=seed, **physics, **kw)


def run_reference(problem, t_steps, z, physics=PHYSICS):
    f, g, w, idx, frac, m = problem
    t = torch.tensor(t_steps, dtype=torch.float64, device=DEVICE)
    return reference_tnmse(f, g, w, idx, frac, m, t, *z, **physics)


def reference_normals(problem, T, gen):
    f, g, w = problem[:3]
    shape = (g.shape[0], g.shape[1], T, g.shape[2], w.shape[1])
    return tuple(torch.randn(shape, generator=gen, dtype=torch.float64, device=DEVICE)
                 for _ in range(3))


def assert_same_mean(a, b, what):
    """Means of two independent samples agree within 3 combined standard errors."""
    a, b = a.double().flatten(), b.double().flatten()
    se = math.sqrt(a.var().item() / a.numel() + b.var().item() / b.numel())
    diff = abs(a.mean().item() - b.mean().item())
    assert diff < 3 * se, f"{what}: means {a.mean().item():.5g} vs {b.mean().item():.5g}, " \
                          f"difference {diff:.3g} > 3 SE = {3 * se:.3g}"


L_GRID = 11
# Kernel vs float64 with the same normals: float32 round-off only (~1e-7 measured under the
# interpreter, which computes like numpy); GPU special functions round a little differently.
RTOL = 2e-5 if torch.cuda.is_available() else 1e-6


# ---------------------------------------------------------------------------------------------
# Exact checks: same noise, float64 specification
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("K, crn", [(1, True), (2, False)])
def test_kernel_matches_float64_reference_with_the_same_noise(K, crn):
    gen = torch.Generator().manual_seed(1)
    programs = [random_program(K, L_GRID, gen), random_program(K, L_GRID, gen)]
    programs[0] = dual_pair_program(L_GRID) if K == 2 else single_pair_program(L_GRID)
    base = make_problem(programs, 200, L_GRID, seed=2)
    # Three different candidates per layer: the baseline-like or a random program, and two more.
    f, g = base[0].repeat(1, 3, 1), base[1].repeat(1, 3, 1, 1)
    g[:, 1:] = G_MAX * torch.rand(g[:, 1:].shape, generator=gen).to(g)
    f[:, 2] = f[:, 2] * 1.7
    problem = (f, g, *base[2:])
    seed = 123456789012  # wider than 32 bits: both Philox key words are used
    out = run_kernel(problem, T_STEPS, seed, common_random_numbers=crn)
    z = kernel_normals(seed, 2, 3, len(T_STEPS), 2 * K, 200, common_random_numbers=crn)
    ref = run_reference(problem, T_STEPS, z)
    assert out.dtype == torch.float32 and out.shape == (2, 3)
    torch.testing.assert_close(out.double(), ref, rtol=RTOL, atol=0.0)


def test_kernel_without_noise_is_the_deterministic_physics():
    # The drift spread (sigma z2) has no switch of its own, so "no noise" means no programming
    # or read noise and no drift; the seed must then not matter at all. (Drift and both noises
    # are checked exactly, with the kernel's own normals, above.)
    physics = dict(PHYSICS, prog_noise_scale=0.0, read_noise_scale=0.0, drift_scale=0.0)
    problem = make_problem([dual_pair_program(L_GRID), random_program(2, L_GRID,
                            torch.Generator().manual_seed(5))], 128, L_GRID, seed=3, copies=2)
    out1 = run_kernel(problem, (0.0, 1e5), seed=1, physics=physics)
    out2 = run_kernel(problem, (0.0, 1e5), seed=2, physics=physics)
    torch.testing.assert_close(out1, out2, rtol=0, atol=0)
    zeros = [torch.zeros(2, 2, 2, 4, 128, dtype=torch.float64, device=DEVICE)] * 3
    ref = run_reference(problem, (0.0, 1e5), zeros, physics=physics)
    # Layer 0 (DualPair) represents its weights exactly: TNMSE ~ 0 up to float32 round-off.
    assert ref[0].abs().max() < 1e-10 and out1[0].abs().max() < 1e-6
    torch.testing.assert_close(out1[1].double(), ref[1], rtol=1e-5, atol=0.0)


@pytest.mark.parametrize("one_chunk", [False, True])
def test_accumulation_is_accurate_for_many_weights(one_chunk, monkeypatch):
    # 2^14 weights, float32 partial sums, float64 epilogue, checked against float64 from the same
    # noise. A low-noise device makes the compensated error ~1e-4 of sum W^2: there a plain
    # alpha^2 S_tt - 2 alpha S_tw + S_ww in float32 is off by 2e-3 to 6e-3 (measured); float32
    # round-off of the per-weight physics alone is ~1e-6 here.
    # one_chunk: a single program sums all 32 blocks lane by lane (the case of N ~ 10^6 on GPU).
    if one_chunk:
        monkeypatch.setattr(tnmse_module, "_TARGET_PROGRAMS", 1)
    N = 2**14
    physics = dict(PHYSICS, prog_noise_scale=0.05, read_noise_scale=0.05, drift_scale=0.05)
    problem = make_problem([dual_pair_program(L_GRID)], N, L_GRID, seed=4)
    t_steps = (60.0,)
    out = run_kernel(problem, t_steps, seed=99, physics=physics)
    z = kernel_normals(99, 1, 1, 1, 4, N, common_random_numbers=True)
    ref = run_reference(problem, t_steps, z, physics=physics)
    torch.testing.assert_close(out.double(), ref, rtol=max(RTOL, 3e-6), atol=0.0)


def test_reduce_partials_recovers_the_compensated_error():
    # Synthetic W, W_t, W_prog split into chunks with arbitrary reference factors a_ref: the
    # epilogue must reproduce sum (alpha W_t - W)^2 whatever a_ref each chunk picked.
    gen = torch.Generator().manual_seed(0)
    n, chunks = 1000, 4
    w = torch.randn(n, generator=gen, dtype=torch.float64)
    w_prog = w + 0.01 * torch.randn(n, generator=gen, dtype=torch.float64)
    w_t = 0.8 * w_prog + 0.02 * torch.randn(n, generator=gen, dtype=torch.float64)
    a_ref = torch.tensor([1.0, 1.2, 1.25, 0.5], dtype=torch.float64)
    parts = []
    for c, (wc, wpc, wtc) in enumerate(zip(w.chunk(chunks), w_prog.chunk(chunks),
                                           w_t.chunk(chunks))):
        d = a_ref[c] * wtc - wc
        parts.append(torch.stack([wpc.abs().sum(), wtc.abs().sum(), (wtc * wtc).sum(),
                                  (wtc * d).sum(), (d * d).sum(), a_ref[c]]))
    partials = torch.stack(parts).view(1, 1, 1, chunks, 6)
    m = w.abs().max().view(1)
    alpha = w_prog.abs().mean() / w_t.abs().mean()
    expected = ((10 * (alpha * w_t - w) / m) ** 2).sum() / n
    got = reduce_tnmse_partials(partials, n, m)
    torch.testing.assert_close(got, expected.view(1, 1), rtol=1e-12, atol=0.0)


# ---------------------------------------------------------------------------------------------
# Determinism and common random numbers
# ---------------------------------------------------------------------------------------------

def test_deterministic_for_a_seed_and_common_random_numbers():
    gen = torch.Generator().manual_seed(7)
    prog = random_program(1, L_GRID, gen)
    f, g, w, idx, frac, m = make_problem([prog], 96, L_GRID, seed=8, copies=3)
    g[0, 1] = G_MAX * torch.rand(g[0, 1].shape, generator=gen).to(g)  # candidates 0, 2 identical
    problem = (f, g, w, idx, frac, m)
    t_steps = (1000.0,)
    a = run_kernel(problem, t_steps, seed=11)
    b = run_kernel(problem, t_steps, seed=11)
    c = run_kernel(problem, t_steps, seed=12)
    indep = run_kernel(problem, t_steps, seed=11, common_random_numbers=False)
    assert torch.equal(a, b), "same seed, different result"
    assert (a != c).all(), "the seed does not change the noise"
    assert a[0, 0] == a[0, 2], "identical candidates differ under common random numbers"
    assert a[0, 0] != a[0, 1]
    assert indep[0, 0] != indep[0, 2], "identical candidates share noise without CRN"


# ---------------------------------------------------------------------------------------------
# In distribution: torch's random numbers vs the kernel's
# ---------------------------------------------------------------------------------------------

NOISE_SWITCHES = {"all": (1.0, 1.0, 1.0), "prog": (1.0, 0.0, 0.0), "drift": (0.0, 1.0, 0.0),
                  "read": (0.0, 0.0, 1.0)}  # (prog_noise_scale, drift_scale, read_noise_scale)


@functools.cache
def kernel_samples(noise):
    """(problem, t_steps, physics, kernel TNMSE [2, 24]): 24 independent samples per layer.

    Layer 0 holds copies of the DualPair baseline, layer 1 of a random CustomPair program. One
    noise at a time: "prog" and "read" switch drift off (drift_scale = 0), "drift" keeps only
    the drift coefficients' spread.
    """
    prog, drift, read = NOISE_SWITCHES[noise]
    physics = dict(PHYSICS, prog_noise_scale=prog, drift_scale=drift, read_noise_scale=read)
    programs = [dual_pair_program(L_GRID), random_program(2, L_GRID,
                                                          torch.Generator().manual_seed(21))]
    problem = make_problem(programs, 256, L_GRID, seed=22, copies=24)
    t_steps = (0.0, 86400.0) if noise == "all" else (86400.0,)
    # Independent noise per candidate: every copy is an independent sample of the TNMSE.
    out = run_kernel(problem, t_steps, seed=31, physics=physics, common_random_numbers=False)
    return problem, t_steps, physics, out


@pytest.mark.slow
@pytest.mark.parametrize("noise", list(NOISE_SWITCHES))
def test_kernel_matches_reference_in_distribution(noise):
    problem, t_steps, physics, out = kernel_samples(noise)
    gen = torch.Generator(device=DEVICE).manual_seed(32)
    ref = torch.cat([run_reference(problem, t_steps, reference_normals(problem, len(t_steps), gen),
                                   physics=physics) for _ in range(8)], dim=1)
    for b, name in enumerate(["DualPair", "random CustomPair"]):
        assert_same_mean(out[b], ref[b], f"{name}, noise={noise}")


# ---------------------------------------------------------------------------------------------
# The library's pure-torch twin (gpuwpo.search.objective.tnmse_from_programs)
# ---------------------------------------------------------------------------------------------

def _twin():
    objective = pytest.importorskip("gpuwpo.search.objective")
    noise = pytest.importorskip("gpuwpo.device.noise")
    simulate = pytest.importorskip("gpuwpo.device.simulate")
    return objective.tnmse_from_programs, noise.PCMLikeNoiseModel, simulate.DeviceNoise


def _noise_model(model_cls, physics):
    return model_cls(prog_coeff=physics["prog_coeff"], g_max=physics["g_max"],
                     prog_coeff_g_max_reference=physics["g_ref"], t_read=physics["t_read"],
                     t_0=physics["t_0"], prog_noise_scale=physics["prog_noise_scale"],
                     read_noise_scale=physics["read_noise_scale"],
                     drift_scale=physics["drift_scale"])


def run_twin(problem, t_steps, physics, **kw):
    tnmse_from_programs, model_cls, _ = _twin()
    f, g, w, idx, frac, m = (x.double() if x.is_floating_point() else x for x in problem)
    t = torch.tensor(t_steps, dtype=torch.float64, device=DEVICE)
    return tnmse_from_programs(f, g, w, idx, frac, m, t, _noise_model(model_cls, physics), **kw)


def test_torch_twin_agrees_exactly_given_the_kernels_noise():
    *_, device_noise = _twin()
    gen = torch.Generator().manual_seed(41)
    problem = make_problem([dual_pair_program(L_GRID), random_program(2, L_GRID, gen)], 128,
                           L_GRID, seed=42, copies=2)
    out = run_kernel(problem, T_STEPS, seed=43, common_random_numbers=False)
    z = kernel_normals(43, 2, 2, len(T_STEPS), 4, 128, common_random_numbers=False)
    twin = run_twin(problem, T_STEPS, PHYSICS, noise=device_noise(*(x.double() for x in z)))
    torch.testing.assert_close(out.double(), twin, rtol=RTOL, atol=0.0)


def test_torch_twin_agrees_in_distribution():
    problem, t_steps, physics, out = kernel_samples("all")
    twin = torch.cat([run_twin(problem, t_steps, physics, generator=seed,
                               common_random_numbers=False) for seed in range(8)], dim=1)
    for b, name in enumerate(["DualPair", "random CustomPair"]):
        assert_same_mean(out[b], twin[b], f"{name}, kernel vs torch twin")


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------

def _bad(problem, which, value):
    args = dict(zip(["f", "g", "w", "idx", "frac", "m"], problem))
    args[which] = value
    return tuple(args.values())


@pytest.mark.parametrize("which, make, error, match", [
    ("f", lambda p: p[0][..., :1], ValueError, "g_lst must be"),
    ("g", lambda p: p[1][..., :1], ValueError, "at least 2 grid points"),
    ("idx", lambda p: p[3].double(), TypeError, "idx must be an integer"),
    ("frac", lambda p: p[4][:, :-1], ValueError, "idx .* and frac"),
    ("m", lambda p: p[5][:1], ValueError, "max_abs_weight must be"),
    ("f", lambda p: p[0].repeat(1, 1, 3), ValueError, "1..4 pairs"),
])
def test_arguments_are_checked(which, make, error, match):
    problem = make_problem([dual_pair_program(L_GRID)] * 2, 16, L_GRID, seed=0)
    with pytest.raises(error, match=match):
        run_kernel(_bad(problem, which, make(problem)), (1.0,), seed=0)


# ---------------------------------------------------------------------------------------------
# CUDA: realistic sizes
# ---------------------------------------------------------------------------------------------

@pytest.mark.cuda
def test_cuda_realistic_sizes_match_the_reference_given_the_kernels_noise():
    gen = torch.Generator().manual_seed(51)
    B, P, N, T = 2, 32, 10240, 3
    programs = [dual_pair_program(L_GRID), random_program(2, L_GRID, gen)]
    f, g, w, idx, frac, m = make_problem(programs, N, L_GRID, seed=52, copies=P)
    g = g + torch.rand(g.shape, generator=gen).to(g)  # every candidate a different program
    problem = (f, g, w, idx, frac, m)
    out = run_kernel(problem, T_STEPS, seed=53, common_random_numbers=False)
    z = kernel_normals(53, B, P, T, 4, N, common_random_numbers=False)
    ref = run_reference(problem, T_STEPS, z)
    torch.testing.assert_close(out.double(), ref, rtol=RTOL, atol=0.0)


@pytest.mark.cuda
def test_cuda_million_weights_are_accumulated_accurately():
    N = 2**20
    physics = dict(PHYSICS, prog_noise_scale=0.05, read_noise_scale=0.05, drift_scale=0.05)
    problem = make_problem([dual_pair_program(L_GRID)], N, L_GRID, seed=61, copies=2)
    out = run_kernel(problem, (60.0, 1e6), seed=62, physics=physics)
    z = kernel_normals(62, 1, 2, 2, 4, N, common_random_numbers=True)
    ref = run_reference(problem, (60.0, 1e6), z, physics=physics)
    torch.testing.assert_close(out.double(), ref, rtol=RTOL, atol=0.0)


@pytest.mark.cuda
def test_cuda_matches_the_torch_twin_in_distribution():
    programs = [dual_pair_program(L_GRID), random_program(2, L_GRID,
                                                          torch.Generator().manual_seed(71))]
    problem = make_problem(programs, 10240, L_GRID, seed=72, copies=256)
    t_steps = (0.0, 3600.0, 3.15e7)
    out = run_kernel(problem, t_steps, seed=73, common_random_numbers=False)
    twin = run_twin(problem, t_steps, PHYSICS, generator=74, common_random_numbers=False)
    for b, name in enumerate(["DualPair", "random CustomPair"]):
        assert_same_mean(out[b], twin[b], f"{name}, kernel vs torch twin (CUDA)")
