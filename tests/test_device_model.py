"""One device-model interface: a device is written once and reaches every path.

A test-only toy RRAM-like device, defined here and nowhere else, runs through the batched
objective, the baseline, simulate_weights, the optimizer and program_model without touching
any file of the library (adding a device is one class; a results file would name it through
the registry that [3/7] adds). And the rules: a subclass that overrides a physics method
reaches the hot path; overriding a hot-path method is refused at class creation; the Triton
kernel runs only what is whitelisted by name.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gpuwpo
from gpuwpo.device.noise import DeviceModel, PCMLikeNoiseModel, kernel_physics


class ToyRRAM(DeviceModel):
    """RRAM-like: constant programming noise, no power-law drift but a conductance relaxation
    whose spread grows with log time, read noise proportional to the conductance."""

    def __init__(self, g_max: float = 30.0, sigma_prog: float = 0.6, relax: float = 0.05,
                 read: float = 0.01) -> None:
        self.g_max, self.sigma_prog, self.relax, self.read = g_max, sigma_prog, relax, read

    def apply_programming_noise_to_conductance(self, g_target, generator=None, *, z=None):
        z = torch.randn(g_target.shape, generator=generator) if z is None else z
        return (g_target + self.sigma_prog * z).clamp(0.0, self.g_max)

    def generate_drift_coefficients(self, g_target, generator=None, *, z=None):
        z = torch.randn(g_target.shape, generator=generator) if z is None else z
        return self.relax * z  # a per-device relaxation direction and size

    def apply_drift_noise_to_conductance(self, g_prog, nu, t_inference, generator=None, *,
                                         z=None):
        t = torch.as_tensor(t_inference, dtype=g_prog.dtype)
        shape = torch.broadcast_shapes(g_prog.shape, nu.shape, t.shape)
        z = torch.randn(shape, generator=generator) if z is None else z
        relaxed = g_prog * (1.0 + nu * torch.log1p(t))
        return (relaxed + self.read * relaxed.abs() * z).clamp(min=0.0)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _weights(seed=0, shape=(12, 40)):
    gen = _gen(seed)
    return torch.randn(*shape, generator=gen) * 0.2


def test_a_toy_device_runs_through_every_path():
    rram = ToyRRAM()
    base = gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 30.0)
    w = _weights()
    eff = gpuwpo.simulate_weights(w, base, rram, [1.0, 1e4], repeats=3, generator=_gen(1))
    assert eff.shape == (3, 2, 12, 40) and torch.isfinite(eff).all()
    space = gpuwpo.StrategySpace([None, None], 0.0, 30.0)
    for physics in gpuwpo.device.physics.PHYSICS:
        obj = gpuwpo.TNMSEObjective([w, _weights(1, (6, 7))], rram, None, [1.0, 1e4], space,
                                    test_in_features=16, test_out_features=4, physics=physics)
        assert obj.kernel == "torch"  # never the kernel's built-in PCM physics
        x = torch.rand(2, 5, space.dim, generator=_gen(2))
        loss = obj(x, 3)
        assert loss.shape == (2, 5) and torch.isfinite(loss).all()
        mean, sem = obj.evaluate_converter(base, repeats=4, generator=4)
        assert torch.isfinite(mean).all() and (sem > 0).all()
    opt = gpuwpo.WeightProgrammingOptimizer(w, [None, None], rram, [1.0, 1e4], base,
                                            device="cpu", popsize=2, maxiter=2, disp=False,
                                            polish=False, test_in_features=16,
                                            test_out_features=4, baseline_iterations=3,
                                            validation_repeats=3)
    conv, _ = opt.run_optimizer()
    model = nn.Sequential(nn.Linear(40, 12))
    programmed = gpuwpo.program_model(model, {"0.weight": conv}, rram, 100.0, generator=_gen(5))
    assert torch.isfinite(programmed[0].weight).all()
    with pytest.raises(ValueError, match="ToyRRAM"):
        gpuwpo.TNMSEObjective([w], rram, None, [1.0], space, kernel="triton")


def test_the_toy_physics_is_what_the_objective_computes():
    """With every noise switched off but the relaxation's drift, the objective's TNMSE of a
    program equals a hand computation with the toy's own formula."""
    rram = ToyRRAM(sigma_prog=0.0, relax=0.0, read=0.0)
    space = gpuwpo.StrategySpace([1.0, 1.0], 0.0, 30.0)
    obj = gpuwpo.TNMSEObjective([_weights()], rram, None, [10.0], space, test_in_features=16,
                                test_out_features=4)
    x = space.encode_npair([1.0, 1.0]).float()
    # No noise at all: every weight is programmed exactly at the grid points and in between
    # the program interpolates linearly, so the error is the interpolation error alone.
    tnmse = float(obj(x.reshape(1, 1, -1), 0)[0, 0])
    conv = space.to_converter(x, obj.max_abs_weight[0])
    w = obj.test_weights[0]
    g, params = conv.convert_to_conductances(w)
    back = conv.convert_back_to_weights(g, params)
    want = float(((10 * (back - w) / w.abs().max()) ** 2).mean())
    assert tnmse == pytest.approx(want, rel=1e-5, abs=1e-9)


class _SlowerDrift(PCMLikeNoiseModel):
    """A PCM variant whose drift formula is overridden: it must reach the hot path."""

    def apply_drift_noise_to_conductance(self, g_prog, nu, t_inference, generator=None, *,
                                         z=None):
        return super().apply_drift_noise_to_conductance(g_prog, 0.5 * nu, t_inference,
                                                        generator, z=z)


def test_an_override_reaches_the_hot_path_the_baseline_and_not_the_kernel():
    w = _weights(3)
    space = gpuwpo.StrategySpace([None, None])
    kw = dict(test_in_features=16, test_out_features=4, kernel="auto")
    pcm = gpuwpo.TNMSEObjective([w], PCMLikeNoiseModel(), None, [1e6], space, **kw)
    slow = gpuwpo.TNMSEObjective([w], _SlowerDrift(), None, [1e6], space, **kw)
    assert kernel_physics(PCMLikeNoiseModel()) == "pcm"
    assert kernel_physics(_SlowerDrift()) is None and slow.kernel == "torch"
    assert not _SlowerDrift()._fast_path() and PCMLikeNoiseModel()._fast_path()
    x = torch.rand(1, 4, space.dim, generator=_gen(6))
    assert not torch.allclose(pcm(x, 7), slow(x, 7))
    base = gpuwpo.DualPairConductanceConverter()
    assert not torch.allclose(pcm.evaluate_converter(base, 4, 8)[0],
                              slow.evaluate_converter(base, 4, 8)[0])
    # The generic path of the subclass equals the fused path with nu halved by hand.
    g = torch.rand(3, 50, generator=_gen(9)) * 25
    z = [torch.randn(3, 50, generator=_gen(10 + i)) for i in range(3)]
    model = _SlowerDrift()
    prepared = model.prepare_targets(g)
    g_p, g_t = model.program_drift_read_step(prepared, 3600.0, *z)
    ref = PCMLikeNoiseModel()
    nu = ref.generate_drift_coefficients(g, z=z[1])
    want = ref.apply_drift_noise_to_conductance(g_p, 0.5 * nu, 3600.0, z=z[2])
    torch.testing.assert_close(g_t, want)


def test_overriding_a_hot_path_method_is_refused():
    with pytest.raises(TypeError, match="apply_programming_noise_to_conductance"):
        class _Bad(PCMLikeNoiseModel):  # noqa: F841
            def program(self, prepared, z=None, generator=None):
                return prepared.g_target
    with pytest.raises(TypeError, match="drift_and_read"):
        class _AlsoBad(DeviceModel):  # noqa: F841
            def drift_and_read(self, g_read, nu, t_inference, z=None, generator=None):
                return g_read


def test_fused_pcm_path_equals_its_methods_for_every_dtype():
    model = PCMLikeNoiseModel(prog_noise_scale=1.2, drift_scale=0.7, read_noise_scale=1.1)
    for dtype in (torch.float32, torch.float64):
        g = torch.rand(4, 64, generator=_gen(11), dtype=dtype) * 30
        z = [torch.randn(4, 64, generator=_gen(12 + i), dtype=dtype) for i in range(3)]
        prepared = model.prepare_targets(g)
        g_p = model.program(prepared, z[0])
        nu = model.drift_coefficients(prepared, z[1])
        tol = dict(rtol=1e-6 if dtype == torch.float32 else 1e-13, atol=0)
        torch.testing.assert_close(g_p, model.apply_programming_noise_to_conductance(g, z=z[0]),
                                   **tol)
        torch.testing.assert_close(nu, model.generate_drift_coefficients(g, z=z[1]), **tol)
        for t in (0.0, 1.0, 3.15e7):
            got = model.drift_and_read(g_p, nu, t, z[2])
            want = model.apply_drift_noise_to_conductance(g_p, nu, t, z=z[2])
            torch.testing.assert_close(got, want, rtol=10 * tol["rtol"], atol=0)
    assert math.isfinite(float(model.drift_and_read(torch.zeros(3), torch.zeros(3), 5.0,
                                                    torch.ones(3)).sum()))
