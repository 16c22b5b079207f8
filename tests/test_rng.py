"""Randomness: one table of named streams, and one meaning of ``generator=None`` (gpuwpo/rng.py).

Every public function that draws random numbers is called here with ``generator=None`` after
torch's global generator has been seeded: the global generator's state must be exactly as it was
(the negative control shows that the check catches a function that draws from it), and two calls
must differ (fresh entropy). An int seed must give the same numbers twice and other numbers for
another seed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
from torch import nn

import gpuwpo
from gpuwpo import wpo
from gpuwpo.device.compensation import GlobalDriftCompensation, PerColumnDriftCompensation
from gpuwpo.device.noise import CustomDriftPCMLikeNoiseModel, PCMLikeNoiseModel
from gpuwpo.device.simulate import (
    converter_errors,
    program_drift_read,
    sample_device_noise,
    simulate_weights,
    tnmse_over_time,
)
from gpuwpo.network.program import program_model
from gpuwpo.rng import STREAMS, make_generator, mix64, stream_generator, stream_seed
from gpuwpo.search.de import de_init
from gpuwpo.search.objective import TNMSEObjective
from gpuwpo.search.strategy import StrategySpace
from gpuwpo.search.tiles import TestTile

_MASK63 = (1 << 63) - 1
NM = PCMLikeNoiseModel(g_max=25.0)
DUAL = gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0)


def _weights(shape=(6, 10), seed=0) -> torch.Tensor:
    return gpuwpo.student_t_weights(shape, generator=torch.Generator().manual_seed(seed))


def _flat(out) -> torch.Tensor:
    """One float64 vector of a function's tensor output(s)."""
    if isinstance(out, torch.Tensor):
        return out.detach().reshape(-1).double()
    if isinstance(out, nn.Module):
        return torch.cat([p.detach().reshape(-1).double() for p in out.parameters()])
    if isinstance(out, (int, float)):
        return torch.tensor([float(out)], dtype=torch.float64)
    return torch.cat([_flat(o) for o in out])


# ------------------------------------------------------------------------------------------
# The table of named streams


def test_every_stream_has_its_own_number():
    assert len(set(STREAMS.values())) == len(STREAMS)
    assert all(isinstance(v, int) and not isinstance(v, bool) for v in STREAMS.values())


def test_no_two_roles_share_a_seed_whatever_the_run_seeds():
    # seed + 1 / seed + 2 for two roles gave seed s's validation the shuffle of seed s + 2; with
    # the table, no (seed, role, key) of a small range collides with another.
    seen = {}
    for seed, name, key in itertools.product(range(-3, 40), STREAMS, (None, 0, 1, 2, -3)):
        s = stream_seed(seed, name) if key is None else stream_seed(seed, name, key)
        assert s not in seen, (seed, name, key, seen.get(s))
        seen[s] = (seed, name, key)
    assert stream_seed(0, "validation") != stream_seed(2, "test_tiles")
    # Nor with a plain int seed (make_generator(seed) hashes it alone).
    assert all(mix64(seed) not in seen for seed in range(-3, 40))


def test_an_unknown_stream_is_refused_by_name():
    with pytest.raises(ValueError, match="'validaton'.*validation"):
        stream_seed(0, "validaton")


def test_stream_generator_is_seeded_with_the_stream_seed():
    gen = stream_generator(5, "polish", 3)
    ref = torch.Generator().manual_seed(stream_seed(5, "polish", 3) & _MASK63)
    assert torch.equal(torch.rand(8, generator=gen), torch.rand(8, generator=ref))


def test_each_layers_test_tile_is_its_own_stream():
    a, b, c = _weights((40, 8), 1), _weights((30, 8), 2), _weights((50, 8), 3)
    tiles = TestTile.from_layers([a, b], 11, shape=(4, 16), seed=9)
    # Layer 1's tile does not depend on the layer before it (one generator for all layers in
    # turn would make it depend on layer 0's size).
    other = TestTile.from_layers([c, b], 11, shape=(4, 16), seed=9)
    assert torch.equal(tiles.weights[1], other.weights[1])
    assert not torch.equal(tiles.weights[0], other.weights[0])
    expected = gpuwpo.downsample_weight_distribution(
        b.reshape(-1), (64,), generator=stream_generator(9, "test_tiles", 1))
    assert torch.equal(tiles.weights[1], expected)
    assert not torch.equal(TestTile.from_layers([a, b], 11, shape=(4, 16), seed=10).weights[1],
                           expected)


def test_the_de_draws_from_the_search_stream_of_each_layer():
    state = de_init(dim=3, popsize=2, init="random", seed=11, layer_ids=[4],
                    dtype=torch.float64)
    u = torch.empty(state.population.shape[1] * 3, dtype=torch.float64)
    u.uniform_(generator=stream_generator(11, "search", 4))
    assert torch.equal(state.population[0], u.reshape(-1, 3))


def _optimizer(**kw):
    return gpuwpo.WeightProgrammingOptimizer(
        _weights((16, 16), 4), [None, None], NM, [1.0, 3600.0], DUAL, popsize=2, maxiter=1,
        baseline_iterations=4, validation_repeats=4, polish=False, test_in_features=16,
        test_out_features=4, seed=21, device="cpu", **kw)


def test_the_baseline_and_the_search_noise_are_their_streams():
    opt = _optimizer()
    mean, sem = opt.get_loss_baseline()
    # The loss baseline is the baseline converter under the baseline mapping (opt.baseline).
    ref_mean, ref_sem = opt.objective.evaluate_converter(opt.baseline, 4,
                                                         stream_seed(21, "baseline"))
    assert torch.equal(mean, ref_mean) and torch.equal(sem, ref_sem)
    x = torch.rand(1, 3, opt.space.dim, generator=torch.Generator().manual_seed(0))
    problem = opt._search_problem(mean)
    loss = problem.loss(x, 5)
    tnmse = opt.objective(x, stream_seed(21, "search_noise", 5))
    torch.testing.assert_close(loss, (tnmse - mean.reshape(-1, 1)) / mean.reshape(-1, 1)
                               + opt.options.loss_margin, rtol=0, atol=0)
    assert not torch.equal(problem.loss(x, 6), loss)  # another evaluation, other noise


# ------------------------------------------------------------------------------------------
# generator=None: fresh entropy, torch's global generator untouched


def _cases() -> dict[str, Callable]:
    w = _weights()
    g = torch.rand(4, 30, generator=torch.Generator().manual_seed(1)) * 25.0
    nu = torch.full_like(g, 0.06)
    prepared = NM.prepare_targets(g)
    custom = CustomDriftPCMLikeNoiseModel(
        {"g_lst": [0.0, 10.0, 25.0], "nu_mean_lst": [0.08, 0.06, 0.05],
         "nu_std_lst": [0.03, 0.02, 0.01]})

    class Overridden(PCMLikeNoiseModel):
        # A user's device: the generic path hands its physics method the generator.
        def apply_programming_noise_to_conductance(self, g_target, generator=None, *, z=None):
            if z is None:
                z = torch.randn(g_target.shape, generator=generator, dtype=g_target.dtype)
            return super().apply_programming_noise_to_conductance(g_target, z=z)

    overridden = Overridden()
    noisy = GlobalDriftCompensation(0.06, 0.0, None)
    # The reference's periphery; weights far beyond its bound 12 make the bound management
    # read again (with fresh noise).
    bm = GlobalDriftCompensation.aihwkit_default()
    big = w * (40.0 / w.abs().max())
    space = StrategySpace([None, None], 0.0, 25.0)
    objective = TNMSEObjective([w, _weights((8, 12), 2)], NM, None, [1.0, 86400.0], space,
                               test_in_features=8, test_out_features=4)
    x = torch.rand(2, 3, space.dim, generator=torch.Generator().manual_seed(2))
    model = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 3))
    tile_model = wpo.AnalogTileModel(10, 6, wpo.InferenceConfig(g_converter=DUAL))
    m = w.abs().max()
    return {
        "shuffle_weights": lambda gen: gpuwpo.shuffle_weights(w, gen),
        "downsample_weight_distribution":
            lambda gen: gpuwpo.downsample_weight_distribution(w, (5, 4), gen),
        "student_t_weights": lambda gen: gpuwpo.student_t_weights((50,), generator=gen),
        "apply_programming_noise_to_conductance":
            lambda gen: NM.apply_programming_noise_to_conductance(g, gen),
        "generate_drift_coefficients": lambda gen: NM.generate_drift_coefficients(g, gen),
        "apply_drift_noise_to_conductance":
            lambda gen: NM.apply_drift_noise_to_conductance(g, nu, 3600.0, gen),
        "apply_drift_noise_to_conductance (times)":
            lambda gen: NM.apply_drift_noise_to_conductance(
                g, nu, torch.tensor([1.0, 10.0]).reshape(-1, 1, 1), gen),
        "program": lambda gen: NM.program(prepared, generator=gen),
        "drift_coefficients": lambda gen: NM.drift_coefficients(prepared, generator=gen),
        "drift_and_read": lambda gen: NM.drift_and_read(g, nu, 3600.0, generator=gen),
        "program_drift_read_step":
            lambda gen: NM.program_drift_read_step(prepared, 3600.0, generator=gen),
        "custom drift step": lambda gen: custom.program_drift_read_step(
            custom.prepare_targets(g), 3600.0, generator=gen),
        "overridden device step": lambda gen: overridden.program_drift_read_step(
            overridden.prepare_targets(g), 3600.0, generator=gen),
        "readout": lambda gen: noisy.readout(w, gen),
        "alpha": lambda gen: noisy.alpha(w, w * 0.9, gen),
        "alpha per column": lambda gen: PerColumnDriftCompensation(0.06).alpha(
            w, w * 0.9, gen, tile_ndim=2),
        "alpha with bound management": lambda gen: bm.alpha(big, big * 0.9, gen, tile_ndim=2),
        "sample_device_noise": lambda gen: sample_device_noise((2, 3), generator=gen),
        "program_drift_read": lambda gen: program_drift_read(
            g, NM, torch.tensor([1.0, 60.0]), generator=gen),
        "simulate_weights": lambda gen: simulate_weights(w, DUAL, NM, [1.0, 3600.0], noisy,
                                                         repeats=2, generator=gen),
        "converter_errors": lambda gen: converter_errors(w, DUAL, NM, [1.0], repeats=2,
                                                         generator=gen),
        "tnmse_over_time": lambda gen: tnmse_over_time(w, DUAL, NM, [1.0], repeats=2,
                                                       generator=gen),
        "objective": lambda gen: objective(x, gen),
        "objective, independent noise":
            lambda gen: objective(x, gen, common_random_numbers=False),
        "validate": lambda gen: objective.validate(x[:, 0], 2, gen),
        "evaluate_converter": lambda gen: objective.evaluate_converter(DUAL, 2, gen),
        "program_model": lambda gen: program_model(model, DUAL, NM, 3600.0, gen),
        "wpo.shuffle_weights": lambda gen: wpo.shuffle_weights(w, gen),
        "wpo.downsample_weight_distribution":
            lambda gen: wpo.downsample_weight_distribution(w, torch.Size([5, 4]), gen),
        "wpo.loss_weights": lambda gen: wpo.loss_weights(
            tile_model, [1.0, 3600.0], w.T.contiguous(), m, 1.0, 0.0, True, generator=gen),
        "de_init": lambda gen: de_init(dim=3, popsize=2, seed=gen).population,
    }


CASES = _cases()


def _leaves_the_global_generator(fn: Callable) -> tuple[bool, torch.Tensor, torch.Tensor]:
    """(whether torch's global generator is untouched, two results of fn(None))."""
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a, b = _flat(fn(None)), _flat(fn(None))
    return torch.equal(torch.get_rng_state(), state), a, b


@pytest.mark.parametrize("name", list(CASES))
def test_none_is_fresh_entropy_and_never_the_global_generator(name):
    untouched, a, b = _leaves_the_global_generator(CASES[name])
    assert untouched, f"{name} drew from torch's global generator"
    assert not torch.equal(a, b), f"{name} gave the same numbers twice with generator=None"


@pytest.mark.parametrize("name", list(CASES))
def test_an_int_seed_is_reproducible(name):
    fn = CASES[name]
    a, b, c = _flat(fn(7)), _flat(fn(7)), _flat(fn(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_negative_control_a_draw_from_the_global_generator_is_caught():
    untouched, _, _ = _leaves_the_global_generator(lambda gen: torch.randn(3, generator=gen))
    assert not untouched


def test_a_bad_generator_is_refused_naming_its_type():
    w = _weights()
    with pytest.raises(TypeError, match="float"):
        gpuwpo.shuffle_weights(w, 1.5)
    with pytest.raises(TypeError, match="bool"):
        NM.program(NM.prepare_targets(w.abs()), generator=True)


# ------------------------------------------------------------------------------------------
# One generator per call: an int seed does not give several noises the same numbers


def test_the_three_device_noises_of_a_step_come_from_one_generator_in_turn():
    g = torch.rand(2, 40, generator=torch.Generator().manual_seed(3)) * 25.0
    prepared = NM.prepare_targets(g)
    gen = make_generator(5)
    z = [torch.randn(g.shape, generator=gen) for _ in range(3)]
    expected = NM.program_drift_read_step(prepared, 3600.0, *z)
    got = NM.program_drift_read_step(prepared, 3600.0, generator=5)
    for e, o in zip(expected, got):
        assert torch.equal(e, o)
    # Three generators made from the same int would have drawn z_prog three times.
    same = NM.program_drift_read_step(prepared, 3600.0, z[0], z[0], z[0])
    assert not torch.equal(same[1], got[1])


def test_both_readouts_of_alpha_come_from_one_generator_in_turn():
    w = _weights()
    comp = GlobalDriftCompensation(0.06)
    gen = make_generator(5)
    z_ref, z_t = torch.randn(w.shape, generator=gen), torch.randn(w.shape, generator=gen)
    expected = comp.alpha(w, w * 0.9, tile_ndim=2, z=(z_ref, z_t))
    assert torch.equal(comp.alpha(w, w * 0.9, 5, tile_ndim=2), expected)
    assert not torch.equal(comp.alpha(w, w * 0.9, tile_ndim=2, z=(z_ref, z_ref)), expected)


def test_program_model_programs_each_layer_with_its_own_numbers():
    layer = nn.Linear(8, 8)
    model = nn.Sequential(layer, nn.Linear(8, 8))
    with torch.no_grad():
        model[1].weight.copy_(model[0].weight)
    programmed = program_model(model, DUAL, NM, 3600.0, 5)
    assert not torch.equal(programmed[0].weight, programmed[1].weight)
    again = program_model(model, DUAL, NM, 3600.0, 5)
    assert torch.equal(programmed[1].weight, again[1].weight)


# ------------------------------------------------------------------------------------------
# Whole runs leave torch's global generator as they found it


def test_a_network_search_leaves_the_global_generator_untouched():
    torch.manual_seed(99)
    state = torch.get_rng_state()
    gpuwpo.optimize_network({"a.weight": _weights((12, 16), 5), "b.weight": _weights((8, 16), 6)},
                            NM, [1.0, 3600.0], DUAL, [None, None], popsize=2, maxiter=2,
                            baseline_iterations=4, validation_repeats=4, polish_maxiter=2,
                            test_in_features=16, test_out_features=4, seed=3, device="cpu")
    assert torch.equal(torch.get_rng_state(), state)


def test_the_example_network_is_made_and_trained_without_the_global_generator():
    pytest.importorskip("sklearn")
    from gpuwpo.example import accuracy, load_digits_data, make_mlp, train_mlp
    from gpuwpo.network.result import LayerResult, NetworkResult

    x_tr, y_tr, x_te, y_te = load_digits_data(0)
    torch.manual_seed(99)
    state = torch.get_rng_state()
    model = train_mlp(make_mlp(seed=0), x_tr[:128], y_tr[:128], epochs=1, seed=0)
    noisy = PCMLikeNoiseModel(g_max=25.0, prog_noise_scale=5.0, read_noise_scale=5.0)
    names = list(gpuwpo.select_weights(model))
    result = NetworkResult.from_layers(
        [LayerResult(name, tuple(model.get_parameter(name).shape), DUAL, 1.0, (1.0, 1.0), 1.0,
                     (1.0, 1.0), chosen="baseline", success=False) for name in names],
        settings={"t_steps": [1.0], "physics": "device"}, nit=0, nfev=0, wall_time=0.0,
        stop_reason="maxiter")
    ev = gpuwpo.evaluate_model(model, result, lambda m: accuracy(m, x_te, y_te), [1.0],
                               repeats=2, noise_model=noisy, baseline=DUAL, generator=4)
    assert torch.equal(torch.get_rng_state(), state)
    # Repeat r at time t is the stream "accuracy" of the seed, keyed by r and t.
    from gpuwpo.network.evaluate import _time_key

    for r in range(2):
        seed = stream_seed(4, "accuracy", r, _time_key(1.0))
        programmed = program_model(model, DUAL, noisy, 1.0, seed)
        assert ev.values["baseline"][r, 0] == accuracy(programmed, x_te, y_te)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_none_never_advances_the_global_cuda_generator():
    g = torch.rand(4, 30, generator=torch.Generator().manual_seed(1)).cuda() * 25.0
    w = _weights().cuda()
    space = StrategySpace([None, None], 0.0, 25.0)
    objective = TNMSEObjective([w], NM, None, [1.0, 86400.0], space, test_in_features=8,
                               test_out_features=4, device="cuda", kernel="torch")
    x = torch.rand(1, 3, space.dim, generator=torch.Generator().manual_seed(2)).cuda()
    cases = [
        lambda gen: gpuwpo.student_t_weights((50,), generator=gen, device="cuda"),
        lambda gen: gpuwpo.shuffle_weights(w, gen),
        lambda gen: NM.program_drift_read_step(NM.prepare_targets(g), 3600.0, generator=gen),
        lambda gen: GlobalDriftCompensation(0.06).alpha(w, w * 0.9, gen),
        lambda gen: sample_device_noise((2, 3), generator=gen, device="cuda"),
        lambda gen: simulate_weights(w, DUAL, NM, [1.0], repeats=2, generator=gen),
        lambda gen: objective(x, gen),
    ]
    for fn in cases:
        torch.cuda.manual_seed_all(1234)
        state = torch.cuda.get_rng_state()
        a, b = _flat(fn(None)), _flat(fn(None))
        assert torch.equal(torch.cuda.get_rng_state(), state)
        assert not torch.equal(a, b)
        assert torch.equal(_flat(fn(7)), _flat(fn(7)))
