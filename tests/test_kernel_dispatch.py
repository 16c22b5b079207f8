"""Which objective implementation runs (kernel="auto" | "triton" | "torch"), and the fallback."""

from __future__ import annotations

import os

import pytest
import torch

import gpuwpo
from gpuwpo.search.objective import TNMSEObjective

T_STEPS = [1.0, 3600.0, 86400.0]


def _objective(kernel="torch", noise_model=None, compensation=None, *, mapping="layer",
               clip_range=None):
    w = gpuwpo.student_t_weights((32, 16), generator=torch.Generator().manual_seed(0))
    space = gpuwpo.StrategySpace([None, None], 0.0, 25.0, clip_range=clip_range)
    return TNMSEObjective([w], noise_model or gpuwpo.PCMLikeNoiseModel(), compensation, T_STEPS,
                          space, test_in_features=16, test_out_features=4, kernel=kernel,
                          mapping=mapping)


def test_auto_picks_torch_on_the_cpu():
    assert _objective("auto").kernel == "torch"  # the objective's device is the CPU here
    assert _objective("torch").kernel == "torch"


def test_bad_kernel_name():
    with pytest.raises(ValueError, match="kernel"):
        _objective("cuda")


@pytest.mark.parametrize(
    "noise_model, compensation, match",
    [
        (gpuwpo.CustomDriftPCMLikeNoiseModel({"g_lst": [0.0, 25.0], "nu_mean_lst": [0.05, 0.06],
                                               "nu_std_lst": [0.01, 0.01]}), None,
         "CustomDriftPCMLikeNoiseModel"),
        (None, gpuwpo.PerColumnDriftCompensation(), "global"),
        (None, gpuwpo.GlobalDriftCompensation(readout_noise=0.06), "ideal"),
        (None, gpuwpo.GlobalDriftCompensation(exact_reference=True), "reference"),
    ],
)
def test_triton_refuses_physics_it_does_not_implement(noise_model, compensation, match):
    pytest.importorskip("triton")
    with pytest.raises(ValueError, match=match):
        _objective("triton", noise_model, compensation)
    # auto quietly uses the torch path for the same physics
    assert _objective("auto", noise_model, compensation).kernel == "torch"


@pytest.mark.parametrize("options, match", [
    (dict(mapping="columnwise"), "layer-wise mapping"),
    (dict(clip_range=(0.5, 1.0)), "clip"),
    (dict(mapping="columnwise", clip_range=(0.5, 1.0)), "clip"),
])
def test_the_kernel_declines_a_per_column_mapping_and_a_searched_clip(options, match):
    # The kernel has one scale per tile and one grid for every candidate: what it does not
    # implement runs the torch twin (auto) or is refused with the reason (triton).
    assert _objective("torch")._kernel_supported() is None  # control: the plain search runs it
    assert match in _objective("torch", **options)._kernel_supported()
    pytest.importorskip("triton")
    with pytest.raises(ValueError, match=match):
        _objective("triton", **options)
    assert _objective("auto", **options).kernel == "torch"


def test_auto_falls_back_to_torch_when_the_kernel_fails(monkeypatch):
    obj = _objective("torch")
    x = torch.rand(1, 5, obj.dim, generator=torch.Generator().manual_seed(1))
    expected = obj(x, 7)
    obj.kernel, obj.kernel_requested = "triton", "auto"

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(obj, "_evaluate_kernel", broken)
    with pytest.warns(RuntimeWarning, match="Triton kernel failed"):
        got = obj(x, 7)
    assert torch.equal(got, expected)
    assert obj.kernel == "torch"
    # an explicit request does not hide the failure
    obj.kernel, obj.kernel_requested = "triton", "triton"
    with pytest.raises(RuntimeError, match="kernel image"):
        obj(x, 7)


# Kernels run on CUDA, or on the CPU through the interpreter (tests/conftest.py sets it).
_KERNEL_RUNS = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1")


@_KERNEL_RUNS
def test_triton_through_the_objective_on_the_interpreter():
    """The kernel behind the objective's interface: shapes, determinism, common random numbers."""
    pytest.importorskip("triton")
    kern = _objective("triton")
    torch_path = _objective("torch")
    x = torch.rand(1, 3, kern.dim, generator=torch.Generator().manual_seed(2))
    x = torch.cat([x, x[:, :1]], dim=1)  # candidate 3 repeats candidate 0
    a, b = kern(x, 11), kern(x, 11)
    assert a.shape == (1, 4) and torch.equal(a, b)
    assert a[0, 0] == a[0, 3]  # common random numbers: identical candidates, identical losses
    # Same physics, different random streams: the same order of magnitude per candidate.
    ref = torch_path(x, 11)
    assert bool(((a / ref) > 0.5).all() and ((a / ref) < 2.0).all())


@pytest.mark.slow
def test_compiled_torch_path_equals_the_eager_one():
    """kernel="compile" fuses the same formulas: equal losses for the same seed (float32)."""
    eager, compiled = _objective("torch"), _objective("compile")
    assert compiled.kernel == "compile"
    x = torch.rand(1, 6, eager.dim, generator=torch.Generator().manual_seed(4))
    for crn in (True, False):
        a = eager(x, 3, common_random_numbers=crn)
        b = compiled(x, 3, common_random_numbers=crn)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_compiled_torch_path_equals_the_eager_one_per_column_with_a_searched_clip():
    eager = _objective("torch", mapping="columnwise", clip_range=(0.4, 1.0))
    compiled = _objective("compile", mapping="columnwise", clip_range=(0.4, 1.0))
    x = torch.rand(1, 6, eager.dim, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(compiled(x, 3), eager(x, 3), rtol=1e-5, atol=1e-7)


@_KERNEL_RUNS
def test_kernel_keys_noise_by_layer_id():
    """Through the kernel too, a subset of layers sees the noise of the full evaluation."""
    pytest.importorskip("triton")
    gen = torch.Generator().manual_seed(0)
    layers = [gpuwpo.student_t_weights((32, 16), generator=gen) for _ in range(2)]
    space = gpuwpo.StrategySpace([None, None], 0.0, 25.0)
    obj = TNMSEObjective(layers, gpuwpo.PCMLikeNoiseModel(), None, T_STEPS, space,
                         test_in_features=16, test_out_features=4, kernel="triton")
    x = torch.rand(2, 3, obj.dim, generator=torch.Generator().manual_seed(5))
    full = obj(x, 13)
    torch.testing.assert_close(obj.select_layers([1])(x[[1]], 13), full[[1]], rtol=0, atol=0)
