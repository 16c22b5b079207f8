"""The two physics (gpuwpo/physics.py) and how they reach every entry point.

The physics themselves are tested against the reference toolkit in test_reference_aihwkit.py;
here: invariants that hold without it, the readout periphery, and the plumbing (optimizer,
network, program_model, results files, command line).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import gpuwpo
from gpuwpo.cli import main
from gpuwpo.device.physics import PHYSICS, ConverterConversion, check_physics, program_and_read
from gpuwpo.device.simulate import sample_device_noise
from gpuwpo.io import load_result
from gpuwpo.network.settings import physics_from_settings

T_STEPS = (1.0, 3600.0, 2592000.0)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tile(seed: int = 0, shape=(8, 64), scale: float = 0.1) -> torch.Tensor:
    gen = _gen(seed)
    return torch.randn(*shape, generator=gen) / torch.rand(*shape, generator=gen).sqrt() * scale


def test_check_physics():
    assert PHYSICS == ("device", "aihwkit")
    assert check_physics("aihwkit") == "aihwkit"
    for bad in ("Device", "chip", None, 1):
        with pytest.raises(ValueError, match="physics must be one of 'device', 'aihwkit'"):
            check_physics(bad)


@pytest.mark.parametrize("call", [
    lambda p: gpuwpo.simulate_weights(_tile(), gpuwpo.DualPairConductanceConverter(),
                                      gpuwpo.PCMLikeNoiseModel(), [1.0], physics=p),
    lambda p: gpuwpo.TNMSEObjective(_tile(), gpuwpo.PCMLikeNoiseModel(), None, [1.0],
                                    gpuwpo.StrategySpace([1.0, 1.0]), physics=p),
    lambda p: gpuwpo.program_model(nn.Linear(4, 3), gpuwpo.DualPairConductanceConverter(),
                                   gpuwpo.PCMLikeNoiseModel(), 1.0, physics=p),
])
def test_every_entry_point_refuses_an_unknown_physics(call):
    with pytest.raises(ValueError, match="physics must be one of"):
        call("reference")


@pytest.mark.parametrize("conv", [
    gpuwpo.SinglePairConductanceConverter(1.0, 25.0),
    gpuwpo.DualPairConductanceConverter([1.0, 3.0]),
    gpuwpo.NPairConductanceConverter([1.0, 2.0, 4.0]),
    gpuwpo.FusionConductanceConverter(30.0),
], ids=repr)
def test_without_drift_and_read_noise_both_physics_read_the_programmed_weights(conv):
    """Converting the programmed weights again and back is the identity (an invertible
    converter), so with no drift and no read noise the two physics agree to round-off."""
    nm = gpuwpo.PCMLikeNoiseModel(drift_scale=0.0, read_noise_scale=0.0)
    tile = _tile(1).double()
    tiles = ConverterConversion(conv, tile.shape)
    g, params = tiles.to_conductances(tile)
    noise = sample_device_noise((3, 1, *g.shape), generator=_gen(2), dtype=g.dtype)
    prepared = nm.prepare_targets(g)
    out = {p: program_and_read(p, tiles, params, prepared, nm, 86400.0, *noise) for p in PHYSICS}
    w_prog, w_device = out["device"]
    torch.testing.assert_close(out["aihwkit"][0], w_prog)
    torch.testing.assert_close(w_device, w_prog)
    torch.testing.assert_close(out["aihwkit"][1], w_prog, rtol=1e-9, atol=1e-12)


def test_the_physics_differ_once_the_programmed_weights_drift():
    """With programming noise and drift the aihwkit physics reads other devices than the
    programmed ones (the programmed weights converted again): results differ."""
    conv = gpuwpo.DualPairConductanceConverter([1.0, 1.0])
    nm = gpuwpo.PCMLikeNoiseModel()
    tile = _tile(3)
    effs = [gpuwpo.simulate_weights(tile, conv, nm, T_STEPS, repeats=4, generator=_gen(4),
                                    physics=p) for p in PHYSICS]
    assert not torch.allclose(effs[0], effs[1])


def test_program_model_physics():
    model = nn.Sequential(nn.Linear(16, 8))
    conv = gpuwpo.DualPairConductanceConverter()
    out = {p: program_model_weight(model, conv, p) for p in PHYSICS}
    assert out["device"].shape == out["aihwkit"].shape == (8, 16)
    assert not torch.equal(out["device"], out["aihwkit"])
    assert torch.equal(out["aihwkit"], program_model_weight(model, conv, "aihwkit"))


def program_model_weight(model, conv, physics):
    programmed = gpuwpo.program_model(model, conv, gpuwpo.PCMLikeNoiseModel(), 86400.0,
                                      generator=_gen(5), physics=physics)
    return programmed[0].weight.detach()


# ------------------------------------------------------------------------------------------
# the readout periphery


def test_aihwkit_default_periphery_numbers():
    comp = gpuwpo.GlobalDriftCompensation.aihwkit_default()
    assert comp.readout_noise == 0.06
    assert comp.readout_bound == 12.0
    assert math.isclose(comp.readout_step, 24.0 / 510.0)
    assert math.isclose(comp.input_step, 2.0 / 126.0)
    assert comp.bound_management and not comp.exact_reference and not comp.is_ideal
    per_col = gpuwpo.PerColumnDriftCompensation.aihwkit_default(exact_reference=True)
    assert isinstance(per_col, gpuwpo.PerColumnDriftCompensation) and per_col.exact_reference


def test_readout_quantises_and_bounds_without_noise():
    comp = gpuwpo.GlobalDriftCompensation(0.0, 0.5, 2.0)
    w = torch.tensor([[0.2, 0.3, -0.74, 0.76, 5.0, -9.0]])
    torch.testing.assert_close(comp.readout(w), torch.tensor([[0.0, 0.5, -0.5, 1.0, 2.0, -2.0]]))


def test_bound_management_reads_a_clipping_tile_again_halved():
    comp = gpuwpo.GlobalDriftCompensation(0.0, 0.5, 2.0, input_step=0.125,
                                          bound_management=True)
    w = torch.tensor([[[0.2, 3.1, -1.0]], [[0.2, 1.1, -1.0]]])  # tile 0 clips at 2, tile 1 not
    out = comp.readout(w, tile_ndim=2)
    # tile 0: r = 2: input 0.5, outputs (0.1, 1.55, -0.5) quantised to 0.5 -> (0, 1.5, -0.5),
    # times 2; tile 1 read once: (0.2, 1.1, -1.0) quantised -> (0, 1, -1).
    torch.testing.assert_close(out, torch.tensor([[[0.0, 3.0, -1.0]], [[0.0, 1.0, -1.0]]]))
    # Past max_bm_res / input_step the reduction stops and the output stays clipped.
    huge = torch.tensor([[[100.0]]])
    capped = comp.readout(huge, tile_ndim=2)
    assert float(capped) == 2.0 * 4.0  # r stops at 4 > 0.25 / 0.125; clipped at 2, times 4


def test_exact_reference_takes_the_ideal_weights():
    comp = gpuwpo.GlobalDriftCompensation(exact_reference=True)
    w_ideal = torch.tensor([[1.0, -2.0]])
    w_prog = torch.tensor([[5.0, -5.0]])
    w_t = torch.tensor([[0.75, -1.5]])
    alpha = comp.alpha(w_prog, w_t, w_ideal=w_ideal)
    assert float(alpha) == pytest.approx(1.5 / 1.125)
    with pytest.raises(ValueError, match="w_ideal"):
        comp.alpha(w_prog, w_t)


def test_compensation_validation():
    with pytest.raises(ValueError, match="bound_management needs"):
        gpuwpo.GlobalDriftCompensation(bound_management=True)
    with pytest.raises(ValueError, match="input_step"):
        gpuwpo.GlobalDriftCompensation(input_step=-1.0)


# ------------------------------------------------------------------------------------------
# plumbing: optimizer, network, results files, command line

TINY = dict(device="cpu", popsize=2, maxiter=2, test_in_features=32, test_out_features=4,
            baseline_iterations=3, validation_repeats=3, disp=False, polish=False, seed=1)


def test_optimizer_and_network_run_and_record_the_physics(tmp_path):
    weights = {"a.weight": _tile(6, (6, 20)), "b.weight": _tile(7, (4, 6))}
    comp = gpuwpo.GlobalDriftCompensation.aihwkit_default(exact_reference=True)
    result = gpuwpo.optimize_network(weights, gpuwpo.PCMLikeNoiseModel(), [1.0, 86400.0],
                                     gpuwpo.DualPairConductanceConverter(), [None, None],
                                     physics="aihwkit", compensation=comp, **TINY)
    assert result.settings["physics"] == "aihwkit"
    assert "physics=aihwkit" in result.summary()
    path = tmp_path / "r.json"
    gpuwpo.save_result(result, path)
    recorded = physics_from_settings(load_result(path).settings)
    assert recorded["physics"] == "aihwkit"
    assert repr(recorded["compensation"]) == repr(comp)
    opt = gpuwpo.WeightProgrammingOptimizer(weights["a.weight"], [None, None],
                                            gpuwpo.PCMLikeNoiseModel(), [1.0],
                                            gpuwpo.DualPairConductanceConverter(),
                                            physics="aihwkit", **TINY)
    assert opt.objective.physics == "aihwkit" and opt.objective.kernel == "torch"
    opt.run_optimizer()
    assert opt.result.physics == "aihwkit"


def test_old_results_files_read_as_device_physics():
    assert physics_from_settings({})["physics"] == "device"
    with pytest.raises(ValueError, match="unknown physics 'chip'"):
        physics_from_settings({"physics": "chip"})


def test_cli_physics_is_recorded_and_used(tmp_path, capsys):
    gen = _gen(8)
    path = tmp_path / "w.pt"
    torch.save({"fc.weight": torch.randn(8, 16, generator=gen) * 0.3}, path)
    out = tmp_path / "r.json"
    argv = ["optimize", str(path), "--popsize", "2", "--maxiter", "2", "--test-size", "16", "4",
            "--baseline-iterations", "2", "--validation-repeats", "2", "--times", "1,1d",
            "--physics", "aihwkit", "--out", str(out), "--quiet", "--device", "cpu"]
    assert main(argv) == 0
    assert json.loads(out.read_text())["settings"]["physics"] == "aihwkit"
    capsys.readouterr()
    assert main(["evaluate", str(out), str(path), "--repeats", "2", "--quiet"]) == 0
    assert "physics='aihwkit'" in capsys.readouterr().out
    assert main(["evaluate", str(out), str(path), "--repeats", "2", "--quiet",
                 "--physics", "device"]) == 0
    assert "physics='device'" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        main(["evaluate", str(out), str(path), "--physics", "chip"])
    assert err.value.code == 2
