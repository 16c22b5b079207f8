"""Tests of the batched TNMSE objective (gpuwpo/objective.py) against the per-candidate reference.

The reference (gpuwpo/reference.py) is the specification: with the same explicit noise both
must agree to float32 rounding; with sampled noise their means must agree statistically. The
rest guards the contract the search backends rely on: common random numbers, chunk invariance,
shapes and input errors, the baseline and the validation figure.
"""

from __future__ import annotations

import math

import pytest
import torch

from gpuwpo import (
    CustomPairConductanceConverter,
    DualPairConductanceConverter,
    GlobalDriftCompensation,
    PCMLikeNoiseModel,
    PerColumnDriftCompensation,
    StrategySpace,
    TNMSEObjective,
    simulate_weights,
)
from gpuwpo.device.chunks import CPU_LAYERS_BUDGET, CPU_MEMORY_BUDGET, chunk_budgets, plan_chunks
from gpuwpo.device.simulate import NOISE_BLOCK, DeviceNoise, sample_device_noise
from gpuwpo.search.objective import _LIVE_TENSORS, tnmse_from_programs
from gpuwpo.search.reference import reference_objective, reference_tnmse

T_STEPS = (1.0, 3600.0, 86400.0 * 30)
IN, OUT = 64, 4  # a small test tile keeps the tests fast: N = 256


pytestmark = pytest.mark.usefixtures("one_thread_module")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _layer(n: int = 3000, seed: int = 0) -> torch.Tensor:
    # A scale mixture of normals: heavier tails than a Gaussian, like trained weights.
    return torch.randn(n, generator=_gen(seed)) * (1 + torch.rand(n, generator=_gen(seed + 1)))


def _objective(f_lst=(1.0, 1.0), *, symmetric=True, layers=None, compensation=None,
               common_random_numbers=True, memory_budget=None, nbins=6, t_steps=T_STEPS,
               noise_model=None, physics="device") -> TNMSEObjective:
    space = StrategySpace(list(f_lst), nbins=nbins, symmetric=symmetric)
    layers = [_layer()] if layers is None else layers
    return TNMSEObjective(layers, noise_model or PCMLikeNoiseModel(), compensation,
                          t_steps=t_steps, strategy_space=space, test_in_features=IN,
                          test_out_features=OUT, common_random_numbers=common_random_numbers,
                          memory_budget=memory_budget, kernel="torch", physics=physics)


def _population(obj: TNMSEObjective, P: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(obj.num_layers, P, obj.dim, generator=_gen(seed))


def _decode(obj: TNMSEObjective, x: torch.Tensor):
    f, g_lst, _ = obj.space.decode(x, obj.max_abs_weight.reshape(-1, 1))
    return f, g_lst


# ------------------------------------------------------------------------------------------
# Batched objective == per-candidate reference
# ------------------------------------------------------------------------------------------

CASES = {
    "K1-sym": dict(f_lst=(1.0,)),
    "K2-sym": dict(f_lst=(1.0, 1.0)),
    "K2-asym": dict(f_lst=(1.0, 3.0), symmetric=False),
    "K2-free-f": dict(f_lst=(None, None)),
    "K1-free-asym": dict(f_lst=(None,), symmetric=False),
    "K2-per-column": dict(f_lst=(1.0, None), compensation=PerColumnDriftCompensation()),
}


@pytest.mark.parametrize("physics", ["device", "aihwkit"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_explicit_noise_matches_reference(case, physics):
    obj = _objective(**CASES[case], physics=physics)
    P, T, N = 5, len(T_STEPS), obj.num_test_weights
    R = 2 * obj.space.num_pairs
    for seed in (1, 2):
        x = _population(obj, P, seed)
        noise = sample_device_noise((1, P, T, R, N), generator=_gen(100 + seed))
        f, g_lst = _decode(obj, x)
        batched = obj.evaluate_programs(f, g_lst, noise=noise)[0]
        ref = torch.tensor([
            reference_tnmse(obj, 0, x[0, p], noise=DeviceNoise(*(z[0, p] for z in noise)))
            for p in range(P)
        ], dtype=torch.float32)
        torch.testing.assert_close(batched, ref, rtol=1e-5, atol=0)


def test_explicit_noise_broadcasts():
    """Noise [T, 2K, N] (shared by layers and candidates) equals the same noise expanded."""
    obj = _objective()
    P, T, N = 4, len(T_STEPS), obj.num_test_weights
    x = _population(obj, P, 3)
    f, g_lst = _decode(obj, x)
    shared = sample_device_noise((T, 4, N), generator=_gen(4))
    full = DeviceNoise(*(z.expand(1, P, T, 4, N) for z in shared))
    a = obj.evaluate_programs(f, g_lst, noise=shared)
    b = obj.evaluate_programs(f, g_lst, noise=full)
    assert torch.equal(a, b)
    # Shared noise: identical candidates must tie.
    f2, g2 = f[:, :1].expand(1, 3, -1), g_lst[:, :1].expand(1, 3, -1, -1)
    tied = obj.evaluate_programs(f2, g2, noise=shared)[0]
    assert torch.equal(tied, tied[:1].expand(3))


def test_sampled_noise_matches_reference_statistically():
    obj = _objective(f_lst=(None, None))
    x = _population(obj, 2, 5)[0]
    for p in range(2):
        batched = obj(x[p].expand(300, -1), 6, common_random_numbers=False)
        ref = reference_objective(obj, x[p].expand(1, 60, -1), 7)[0]
        se = math.sqrt(batched.var().item() / 300 + ref.var().item() / 60)
        diff = abs(batched.mean().item() - ref.mean().item())
        assert diff < 3 * se, (batched.mean().item(), ref.mean().item(), se)


# ------------------------------------------------------------------------------------------
# Common random numbers, seeds, chunking
# ------------------------------------------------------------------------------------------


def test_common_random_numbers():
    obj = _objective(f_lst=(None, 1.0))
    x = _population(obj, 3, 8)
    x = torch.cat((x, x[:, :1]), dim=1)  # candidate 3 is a copy of candidate 0
    crn = obj(x, 1, common_random_numbers=True)[0]
    assert crn[3] == crn[0]
    ind = obj(x, 1, common_random_numbers=False)[0]
    assert ind[3] != ind[0]
    for mode in (True, False):
        assert torch.equal(obj(x, 1, common_random_numbers=mode),
                           obj(x, 1, common_random_numbers=mode))
        assert not torch.equal(obj(x, 1, common_random_numbers=mode),
                               obj(x, 2, common_random_numbers=mode))
    # The objective's own default is CRN, and a seed can also be a Generator.
    assert torch.equal(obj(x, _gen(1)), obj(x, _gen(1)))


@pytest.mark.parametrize("crn", [True, False])
@pytest.mark.parametrize("readout", [0.0, 0.06])
def test_chunked_equals_unchunked(crn, readout):
    comp = GlobalDriftCompensation(readout_noise=readout)
    layers = [_layer(seed=0), _layer(2000, seed=5)]
    results = []
    # One noise block, a few candidates, the default (layers stacked, cache-sized per layer),
    # everything.
    for budget in (1, 300_000, None, 1 << 40):
        obj = _objective(f_lst=(None, None), layers=layers, compensation=comp,
                         common_random_numbers=crn, memory_budget=budget)
        results.append(obj(_population(obj, 11, 9), 3))
    assert results[0].shape == (2, 11)
    for other in results[1:]:
        assert torch.equal(results[0], other)


def test_cpu_chunks_stack_layers_but_keep_each_layer_cache_sized():
    """On the eager CPU path a chunk holds several layers, each within the cache-sized budget
    (one layer's candidates one at a time for a 10,240-weight tile); elsewhere one budget."""
    cpu = torch.device("cpu")
    assert chunk_budgets(cpu) == (CPU_LAYERS_BUDGET, CPU_MEMORY_BUDGET)
    assert chunk_budgets(cpu, compiled=True) == (8 * CPU_MEMORY_BUDGET,) * 2
    assert chunk_budgets(cpu, 1 << 30) == (1 << 30, CPU_MEMORY_BUDGET)  # a given budget caps
    assert chunk_budgets(cpu, 1000) == (1000, 1000)
    item = _LIVE_TENSORS * 4 * 10_240 * 4  # float32 [2K = 4, N] tensors of one candidate
    budget, per_layer = chunk_budgets(cpu)
    assert plan_chunks(73, 105, bytes_per_item=item, memory_budget=budget,
                       item_budget=per_layer) == (CPU_LAYERS_BUDGET // item, 1)
    assert plan_chunks(1, 840, bytes_per_item=item, memory_budget=budget,
                       item_budget=per_layer) == (1, 1)
    # Without a per-layer cap a single layer's candidates fill the whole chunk.
    assert plan_chunks(1, 840, bytes_per_item=item, memory_budget=budget) == (
        1, CPU_LAYERS_BUDGET // item)
    # Noise blocks stay whole: one block of one layer already fills the chunk.
    assert plan_chunks(4, 64, bytes_per_item=item, memory_budget=budget, item_budget=per_layer,
                       align=NOISE_BLOCK) == (1, NOISE_BLOCK)


def test_explicit_device_noise_with_fresh_readout_noise_is_chunk_invariant():
    """Explicit device noise, independent readout noise: the readout draws are per layer and
    block of candidates, whatever the chunking."""
    comp = GlobalDriftCompensation(readout_noise=0.06)
    layers = [_layer(seed=0), _layer(2000, seed=5), _layer(900, seed=6)]
    results = []
    for budget in (1, 1 << 40):
        obj = _objective(f_lst=(None, None), layers=layers, compensation=comp,
                         common_random_numbers=False, memory_budget=budget)
        f, g_lst = _decode(obj, _population(obj, 10, 2))
        T, N = obj.t_steps.shape[0], obj.num_test_weights
        noise = sample_device_noise((3, 1, T, 4, N), generator=_gen(9))
        results.append(obj.evaluate_programs(f, g_lst, 4, noise=noise))
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("crn", [True, False])
def test_a_subset_of_layers_sees_the_noise_it_sees_in_the_full_evaluation(crn):
    """Each layer's noise is keyed by its id, so a search may skip converged layers."""
    layers = [_layer(seed=0), _layer(2000, seed=5), _layer(900, seed=6)]
    obj = _objective(f_lst=(None, None), layers=layers, common_random_numbers=crn,
                     compensation=GlobalDriftCompensation(readout_noise=0.05))
    x = _population(obj, 9, 3)
    full = obj(x, 21)
    sub = obj.select_layers([2, 0])
    assert sub.layer_ids == (2, 0)
    torch.testing.assert_close(sub(x[[2, 0]], 21), full[[2, 0]], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------
# Shapes and input errors
# ------------------------------------------------------------------------------------------


def test_shapes_and_layers_of_different_sizes():
    one = _objective()
    assert one(_population(one, 6)[0], 0).shape == (6,)
    assert one(_population(one, 6), 0).shape == (1, 6)
    big, small = _layer(5000, seed=1), _layer(700, seed=2).reshape(7, 100)
    obj = _objective(layers=[big, small])
    assert obj.test_weights.shape == (2, IN * OUT) and obj.num_layers == 2
    for b, w in enumerate((big, small)):
        s = obj.test_weights[b].sort().values
        # Downsampling keeps the extremes of each layer's distribution.
        assert s[0] == w.min() and s[-1] == w.max()
        assert obj.max_abs_weight[b] == w.abs().max()
    assert obj(_population(obj, 5), 0).shape == (2, 5)
    # The layers are really separate: their losses differ for the same candidates.
    x = _population(obj, 5)[:1].expand(2, -1, -1)
    out = obj(x, 0)
    assert not torch.equal(out[0], out[1])


def test_bad_inputs_raise_clear_errors():
    obj = _objective(layers=[_layer(seed=0), _layer(seed=3)])
    D = obj.dim
    with pytest.raises(ValueError, match=r"D="):
        obj(torch.rand(2, 3, D + 1))
    with pytest.raises(ValueError, match=r"B=2"):
        obj(torch.rand(3, 3, D))
    with pytest.raises(ValueError, match=r"\[P, D\]"):
        obj(torch.rand(3, D))
    with pytest.raises(ValueError, match="unit hypercube"):
        obj(torch.full((2, 3, D), 1.5))
    bad = _layer()
    bad[5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        _objective(layers=[bad])
    with pytest.raises(ValueError, match="all zeros"):
        _objective(layers=[_layer(), torch.zeros(100)])
    space = StrategySpace([1.0, 1.0])
    with pytest.raises(ValueError, match="kernel"):
        TNMSEObjective([_layer()], PCMLikeNoiseModel(), strategy_space=space, kernel="cuda")
    with pytest.raises(ValueError, match="both test_in_features and test_out_features"):
        TNMSEObjective([_layer()], PCMLikeNoiseModel(), strategy_space=space,
                       test_in_features=64, test_out_features=None)
    with pytest.raises(ValueError, match="different shapes"):
        TNMSEObjective([_layer(100), _layer(200)], PCMLikeNoiseModel(), strategy_space=space,
                       test_in_features=None, test_out_features=None)
    with pytest.raises(ValueError, match="strategy_space"):
        TNMSEObjective([_layer()], PCMLikeNoiseModel())
    f, g = _decode(obj, torch.rand(2, 3, D))
    with pytest.raises(ValueError, match="rows"):
        tnmse_from_programs(f[..., :1], g, obj.test_weights, obj.tiles.idx, obj.tiles.frac,
                            obj.max_abs_weight, obj.t_steps, obj.noise_model)
    with pytest.raises(ValueError, match="tile_shape"):
        tnmse_from_programs(f, g, obj.test_weights, obj.tiles.idx, obj.tiles.frac,
                            obj.max_abs_weight, obj.t_steps, obj.noise_model, tile_shape=(3, 7))


# ------------------------------------------------------------------------------------------
# Baseline, validation, readout periphery
# ------------------------------------------------------------------------------------------


def test_evaluate_converter_is_the_converter_path_and_independent_of_chunking():
    obj = _objective(layers=[_layer(seed=0), _layer(1500, seed=4)], t_steps=(1.0, 86400.0))
    conv = DualPairConductanceConverter()
    mean, sem = obj.evaluate_converter(conv, repeats=30, generator=11)
    assert mean.shape == sem.shape == (2,)
    per_repeat = obj.converter_tnmse(conv, repeats=30, generator=11)  # [B, repeats]
    torch.testing.assert_close(mean, per_repeat.mean(-1))
    torch.testing.assert_close(sem, per_repeat.std(-1) / math.sqrt(30))
    # The same figures whatever the memory budget (noise keyed by layer and block of repeats),
    # and a layer on its own gets what it gets in the whole.
    small = _objective(layers=[_layer(seed=0), _layer(1500, seed=4)], t_steps=(1.0, 86400.0),
                       memory_budget=1)
    assert torch.equal(small.converter_tnmse(conv, repeats=30, generator=11), per_repeat)
    assert torch.equal(obj.select_layers([1]).converter_tnmse(conv, 30, 11)[0], per_repeat[1])
    # In distribution it is simulate_weights' error.
    w = obj.test_weights[0].reshape(OUT, IN)
    eff = simulate_weights(w, conv, obj.noise_model, obj.t_steps, repeats=300, generator=12)
    losses = ((10 * (eff - w) / w.abs().max()) ** 2).mean((-2, -1)).mean(-1)
    big = obj.converter_tnmse(conv, repeats=300, generator=13)[0]
    se = math.sqrt(losses.var() / 300 + big.var() / 300)
    assert abs(float(losses.mean() - big.mean())) < 4 * se
    with pytest.raises(ValueError, match="repeats"):
        obj.evaluate_converter(conv, repeats=1)


def test_validate_uses_independent_noise():
    obj = _objective(f_lst=(None, 1.0), common_random_numbers=True)
    x = _population(obj, 1, 12)[0, 0]
    mean, sem = obj.validate(x, repeats=50, generator=13)
    assert mean.shape == sem.shape == ()
    # Common random numbers would make every repeat identical (sem exactly 0).
    assert sem > 0
    losses = obj(x.expand(50, -1), 13, common_random_numbers=False)
    torch.testing.assert_close(mean, losses.mean())
    torch.testing.assert_close(sem, losses.std() / math.sqrt(50))
    two = _objective(layers=[_layer(seed=0), _layer(seed=3)])
    m2, s2 = two.validate(_population(two, 1, 1)[:, 0], repeats=10, generator=0)
    assert m2.shape == s2.shape == (2,)
    with pytest.raises(ValueError, match="repeats"):
        obj.validate(x, repeats=1)


def test_readout_noise_changes_the_tnmse():
    # Trained DNN weights are a few hundredths: there an output noise of 0.06 (weight units)
    # dominates the readout of the tile's mean |w| and pulls alpha towards 1.
    layers = [0.02 * _layer()]
    ideal = _objective(layers=layers, nbins=5)
    comp = GlobalDriftCompensation(readout_noise=0.06)
    noisy = _objective(layers=layers, nbins=5, compensation=comp)
    f, g_lst = _dual_pair_program(noisy, 100)
    m_ideal = ideal.evaluate_programs(f, g_lst, 21, common_random_numbers=False)
    m_noisy = noisy.evaluate_programs(f, g_lst, 21, common_random_numbers=False)
    se = math.hypot(m_ideal.std() / 10, m_noisy.std() / 10)
    assert m_noisy.mean() - m_ideal.mean() > 10 * se, (m_ideal.mean(), m_noisy.mean())
    # The hot path's readout periphery agrees with simulate_weights' (another code path).
    base, base_sem = noisy.evaluate_converter(DualPairConductanceConverter(), 100, 22)
    assert abs(m_noisy.mean() - base) < 4 * math.hypot(m_noisy.std() / 10, base_sem)


def _dual_pair_program(obj: TNMSEObjective, P: int):
    """The DualPair f = [1, 1] program as a CustomPair table on obj's grid, repeated P times.

    Exact only when the grid has a point at M/2, where DualPair's second pair starts (its only
    kink besides 0): nbins - 1 even, e.g. nbins = 5 (points at multiples of M/4).
    """
    grid = obj.space.grid(obj.max_abs_weight[0])
    g_grid, _ = DualPairConductanceConverter().convert_to_conductances(grid)  # [4, L]
    return torch.ones(1, P, 2), g_grid.expand(1, P, 4, -1)


def test_baseline_program_equals_dual_pair():
    """A CustomPair table sampled from DualPair on the grid IS DualPair: same TNMSE."""
    obj = _objective(nbins=5, t_steps=(1.0, 86400.0))
    m = obj.max_abs_weight[0]
    dual = DualPairConductanceConverter()
    w = obj.test_weights[0]
    repeats = 200
    f, g_lst = _dual_pair_program(obj, repeats)
    table = CustomPairConductanceConverter([1.0, 1.0], g_lst[0, 0], 0.0, 25.0)
    torch.testing.assert_close(table.convert_to_conductances(w)[0],
                               dual.convert_to_conductances(w)[0], rtol=0, atol=1e-5)
    # Same explicit draws as simulate_weights makes: per repeat the losses agree exactly.
    noise = sample_device_noise((repeats, 2, 4, w.numel()), generator=_gen(16))
    batched = obj.evaluate_programs(f, g_lst, noise=DeviceNoise(*(z[None] for z in noise)))[0]
    eff = simulate_weights(w.reshape(OUT, IN), dual, obj.noise_model, obj.t_steps,
                           repeats=repeats, generator=_gen(16))
    direct = ((10 * (eff - w.reshape(OUT, IN)) / m) ** 2).mean((-2, -1)).mean(-1)
    torch.testing.assert_close(batched, direct, rtol=2e-5, atol=0)
    # With sampled noise: evaluate_programs against evaluate_converter, statistically.
    sampled = obj.evaluate_programs(f, g_lst, 17, common_random_numbers=False)[0]
    base_mean, base_sem = obj.evaluate_converter(dual, repeats=repeats, generator=18)
    se = math.hypot(sampled.std().item() / math.sqrt(repeats), base_sem.item())
    assert abs(sampled.mean().item() - base_mean.item()) < 4 * se


def test_strategy_decode_can_reproduce_dual_pair():
    """A hypercube point whose decode is the DualPair program, through __call__."""
    obj = _objective(nbins=5, t_steps=(1.0, 86400.0))
    space = obj.space
    n = space.num_points  # 5 points: -M, -3M/4, -M/2, -M/4, 0
    # x_kw = 1: full range; pair 0 takes as much as it can (x_delta = 1 gives hi... see below),
    # G+ at its lowest position (x_g = 0) so the other device sits at g_min.
    x = torch.zeros(space.dim)  # x_g = 0: G+ as low as the pair's difference allows
    x[0] = 1.0  # x_kw = 1: max|W| uses the full range of both pairs, as DualPair does
    blocks = x[1:].view(3, n)  # [x_g pair 0, x_delta pair 0, x_g pair 1] (views into x)
    grid = space.grid(obj.max_abs_weight[0])
    want, _ = DualPairConductanceConverter().convert_to_conductances(grid)
    k_w = 50.0 / obj.max_abs_weight[0]
    c = k_w * grid[:n]
    lo = torch.clamp(c - 25.0, min=-25.0)
    hi = torch.clamp(c + 25.0, max=25.0)
    # DualPair fills pair 0 first: its share of the (non-positive) target c is max(c, -span);
    # x_delta places it in the window [lo, hi] that pair 1 can still complete.
    target0 = torch.clamp(c, min=-25.0)
    blocks[1] = torch.where(hi > lo, (target0 - lo) / (hi - lo), torch.zeros_like(c))
    f, g_dual = _decode(obj, x.view(1, 1, -1))
    torch.testing.assert_close(g_dual[0, 0], want, rtol=0, atol=1e-4)
    mean_x, sem_x = obj.validate(x, repeats=150, generator=19)
    mean_d, sem_d = obj.evaluate_converter(DualPairConductanceConverter(), repeats=150,
                                           generator=20)
    assert abs(mean_x - mean_d) < 4 * math.hypot(sem_x, sem_d)


# ------------------------------------------------------------------------------------------
# The fused hot path is the per-time-step computation, bit for bit
# ------------------------------------------------------------------------------------------


def _per_time_step(obj: TNMSEObjective, f, g_lst, noise, readout=None, ulp=False):
    """The hot path as it was written before it was fused (one chunk; the programs' scales,
    targets and error gain computed in it; every time step programmed, read, compensated with
    the ideal weights themselves and reduced on its own): the specification of the fused
    path's numbers. ``ulp`` moves every alpha up by one unit in the last place, the smallest
    change float32 can make (a negative control)."""
    from gpuwpo.device.converters import interpolate_programs
    from gpuwpo.device.error import error_gain, scaled_weight_error
    from gpuwpo.device.physics import ProgramConversion, program_and_read
    from gpuwpo.rng import keyed_generator

    tiles, nm, comp = obj.tiles, obj.noise_model, obj.compensation
    B = f.shape[0]
    w = tiles.weights.reshape(B, 1, *tiles.shape)
    conv = ProgramConversion(f, g_lst, tiles.shape)
    prepared = nm.prepare_targets(interpolate_programs(g_lst, tiles.idx.unsqueeze(1),
                                                      tiles.frac.unsqueeze(1)))
    gain = error_gain(tiles.max_abs_weight.reshape(-1, 1), obj.error_amplification, 2, like=w)
    w_scaled = w * gain
    coef = conv.coefficients(tiles.max_abs_weight.reshape(-1, 1))
    generator = keyed_generator(0, 0, 0, 1) if comp.bound_management else None
    errors = []
    for i, t in enumerate(obj.t_steps.tolist()):
        w_prog, w_t = program_and_read(obj.physics, conv, coef, prepared, nm, t,
                                       *(z[:, :, i] for z in noise))
        z = None if readout is None else (readout[0][:, :, i], readout[1][:, :, i])
        alpha = comp.alpha(w_prog, w_t, generator, tile_ndim=2, z=z, w_ideal=w)
        if ulp:
            alpha = torch.nextafter(alpha, torch.full_like(alpha, math.inf))
        errors.append(scaled_weight_error(w_t.mul_(alpha * gain), w_scaled, inplace=True))
    return torch.stack(errors, -1).mean(-1)


FUSED_CASES = {
    "ideal": dict(),
    "per-column": dict(compensation=PerColumnDriftCompensation()),
    "exact-reference": dict(compensation=GlobalDriftCompensation(exact_reference=True)),
    "noisy-readout": dict(compensation=GlobalDriftCompensation(readout_noise=0.01,
                                                               readout_step=0.002)),
    "bound-management": dict(compensation=GlobalDriftCompensation.aihwkit_default()),
    "two-layers": dict(layers=[_layer(3000, 0), _layer(1000, 7) * 1e-3]),
    "scaled-noise": dict(noise_model=PCMLikeNoiseModel(prog_noise_scale=1.4, drift_scale=0.7)),
}


@pytest.mark.parametrize("physics", ["device", "aihwkit"])
@pytest.mark.parametrize("case", sorted(FUSED_CASES))
def test_fused_hot_path_is_the_per_time_step_computation_bit_for_bit(case, physics):
    """The hot path computes what it shares once (programs' scales, the layer's error gain,
    the compensation floor) and compensates all time steps in one call, in place in reused
    buffers: the same operations on the same numbers, so the same bits (float32), with common
    (size-1 candidate axis) and with independent noise, whatever the chunking."""
    obj = _objective(f_lst=(None, None), physics=physics, **FUSED_CASES[case])
    B, P, T, N = obj.num_layers, 6, len(T_STEPS), obj.num_test_weights
    R = 2 * obj.space.num_pairs
    x = _population(obj, P, 3)
    x[:, 0] = 0.0  # a program with conductances at exactly 0 uS
    f, g_lst = _decode(obj, x)
    readout = None
    if obj.compensation.readout_noise > 0:
        gen = _gen(50)
        readout = tuple(torch.randn(B, P, T, *obj.tile_shape, generator=gen) for _ in range(2))
    for shared in (True, False):
        noise = sample_device_noise((B, 1 if shared else P, T, R, N), generator=_gen(60))
        want = _per_time_step(obj, f, g_lst, noise, readout)
        for budget in (None, 3 * R * N * 4 * 20):  # one chunk; chunks of a few candidates
            t = obj.tiles
            got = tnmse_from_programs(
                f, g_lst, t.weights, t.idx, t.frac, t.max_abs_weight, obj.t_steps,
                obj.noise_model, obj.compensation, tile_shape=t.shape, noise=noise,
                readout_noise=None if readout is None else tuple(
                    z.flatten(-2) for z in readout),
                memory_budget=budget, physics=physics)
            if obj.compensation.bound_management and budget is not None:
                continue  # repeated readouts draw from each chunk's own stream
            assert torch.equal(got, want), (case, physics, shared, budget)
    # Negative control: alpha one unit in the last place off, the smallest error a float32
    # computation can make, changes the figures: the comparison above sees rounding.
    other = _per_time_step(obj, f, g_lst, noise, readout, ulp=True)
    torch.testing.assert_close(other, want, rtol=1e-5, atol=0)
    assert not torch.equal(other, want)
