"""Results files (exact round trip, atomic write, version checks), weight files, aihwkit export."""

from __future__ import annotations

import json
import os
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import gpuwpo
from gpuwpo.io import RESULT_FORMAT, RESULT_VERSION, load_result, load_weights, save_result
from gpuwpo.network import LayerResult, NetworkResult


def _program(dtype: torch.dtype, seed: int) -> gpuwpo.CustomPairConductanceConverter:
    """A valid (invertible) single program with values that have no short decimal form."""
    space = gpuwpo.StrategySpace([None, None], 0.0, 25.0)
    x = torch.rand(space.dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    f, g_lst, _ = space.decode(x, 1.0)
    return gpuwpo.CustomPairConductanceConverter(f, g_lst, 0.0, 25.0)


def _result() -> NetworkResult:
    third = 1.0 / 3.0  # not exactly representable: catches any rounding in the file
    layers = [
        LayerResult("features.0.weight", (4, 1, 3, 3), _program(torch.float32, 0),
                    0.1 + 0.2, (0.1 + 0.2 - third / 7, 0.1 + 0.2 + third / 7), 0.7 * third,
                    (0.7 * third - 1e-17, 0.7 * third + 2.5e-3), [0.9 * third, 0.8 * third]),
        LayerResult("classifier.weight", (10, 36), _program(torch.float64, 1),
                    2.0 ** -30 * 3, (1e-310, 5e-9), 123456.789e-7, (0.0, 1.0), [1e300, 2.0]),
    ]
    settings = {"f_lst": [None, None], "t_steps": [1.0, 3600.0, 86400.0 * 365.25],
                "backend": "torch", "per_layer": True, "include": [r"^features\."],
                "exclude": None, "optimizer_kwargs": {"popsize": 4, "mutation": [0.5, 1.0]},
                # A results file records every field of a record (load_result refuses less).
                "noise_model": gpuwpo.registry.to_dict(gpuwpo.PCMLikeNoiseModel(
                    prog_coeff=[0.26348, 1.965, -1.1731])),
                "g_min": 0.0, "g_max": 25.0, "nbins": 6, "symmetric": True, "device": "cpu"}
    return NetworkResult(layers, settings, total_tnmse=third, total_baseline_tnmse=2 * third,
                         nit=2, nfev=1234, wall_time=0.1 * 3, stop_reason="maxiter")


# -- results files ---------------------------------------------------------------------------


def test_result_round_trips_exactly(tmp_path):
    result = _result()
    path = tmp_path / "result.json"
    save_result(result, path)
    loaded = load_result(path)
    assert loaded == result
    # The same, field by field, so that a failure says which one.
    for a, b in zip(loaded.layers, result.layers):
        assert (a.name, a.shape, a.tnmse, a.tnmse_ci95, a.baseline_tnmse, a.baseline_ci95,
                a.history) == (b.name, b.shape, b.tnmse, b.tnmse_ci95, b.baseline_tnmse,
                               b.baseline_ci95, b.history)
        assert type(a.shape) is tuple and type(a.tnmse_ci95) is tuple
        for t_a, t_b in ((a.converter.f_lst, b.converter.f_lst),
                         (a.converter.g_lst, b.converter.g_lst)):
            assert t_a.dtype == t_b.dtype and torch.equal(t_a, t_b)
        assert (a.converter.g_min, a.converter.g_max) == (b.converter.g_min, b.converter.g_max)
    assert loaded.settings == result.settings
    assert (loaded.total_tnmse, loaded.total_baseline_tnmse, loaded.nit, loaded.nfev,
            loaded.wall_time, loaded.stop_reason) == (
        result.total_tnmse, result.total_baseline_tnmse, result.nit, result.nfev,
        result.wall_time, result.stop_reason)


def test_a_layer_that_keeps_its_baseline_round_trips_with_its_choice(tmp_path):
    result = _result()
    baseline = gpuwpo.DualPairConductanceConverter([1.0, 3.0], 0.0, 25.0)
    result.layers[1].converter = baseline
    result.layers[1].chosen, result.layers[1].success = "baseline", False
    result.layers[0].chosen = "start: NPair f=[1, 3] range=1"
    path = tmp_path / "result.json"
    save_result(result, path)
    record = json.loads(path.read_text())["layers"][1]
    assert record["converter"] == {"class": "DualPairConductanceConverter",
                                   "f_lst": [1.0, 3.0], "g_min": 0.0, "g_max": 25.0}
    assert "g_lst" not in record and record["chosen"] == "baseline"
    loaded = load_result(path)
    assert loaded == result
    assert loaded.layers[1].kept_baseline and not loaded.layers[1].success
    assert loaded.layers[0].chosen == "start: NPair f=[1, 3] range=1"
    # A broken record is named.
    data = json.loads(path.read_text())
    data["layers"][1]["converter"] = {"class": "NoSuchConverter"}
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"layers\[1\]\.converter"):
        load_result(path)


def test_result_file_is_plain_json_with_format_and_version(tmp_path):
    path = tmp_path / "result.json"
    save_result(_result(), path)
    data = json.loads(path.read_text())
    assert data["format"] == RESULT_FORMAT == "gpuwpo-result"
    assert data["version"] == RESULT_VERSION == 4
    layer = data["layers"][0]
    for key in ("name", "shape", "mapping", "f_lst", "g_lst", "g_min", "g_max", "tnmse",
                "tnmse_ci95", "baseline_tnmse", "baseline_ci95", "history"):
        assert key in layer
    assert len(layer["g_lst"]) == 4 and len(layer["g_lst"][0]) == 11
    assert data["settings"]["t_steps"][-1] == 86400.0 * 365.25


def test_save_is_atomic_when_writing_fails_midway(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    save_result(_result(), path)
    old = path.read_bytes()
    import gpuwpo._files as files

    real_write = files._write_all

    def broken_write(fd, data, mode):
        os.write(fd, data[: len(data) // 2])  # half a file
        raise OSError("disk full")

    monkeypatch.setattr(files, "_write_all", broken_write)
    changed = _result()
    changed.stop_reason = "something else"
    for unnamed in (True, False):  # O_TMPFILE, and the named temporary file where it is not
        if not unnamed:
            monkeypatch.setattr(files, "_open_unnamed", lambda directory: None)
        with pytest.raises(OSError, match="disk full"):
            save_result(changed, path)
        with pytest.raises(OSError, match="disk full"):
            save_result(changed, tmp_path / "new.json")
        assert path.read_bytes() == old, "the old file must stay whole"
        assert sorted(os.listdir(tmp_path)) == ["result.json"], "no half file, no leftover temp"
    monkeypatch.setattr(files, "_write_all", real_write)
    assert load_result(path) == _result()


def test_load_result_checks_format_and_version(tmp_path):
    path = tmp_path / "result.json"
    save_result(_result(), path)
    data = json.loads(path.read_text())

    def write(obj) -> None:
        path.write_text(json.dumps(obj))

    write({**data, "version": 5})
    with pytest.raises(ValueError, match=r"version 5 .*newer"):
        load_result(path)
    write({**data, "version": None})
    with pytest.raises(ValueError, match="version None"):
        load_result(path)
    write({**data, "format": "something-else"})
    with pytest.raises(ValueError, match="not a gpuwpo results file"):
        load_result(path)
    write([1, 2])
    with pytest.raises(ValueError, match="not a gpuwpo results file"):
        load_result(path)
    write({**data, "layers": [{k: v for k, v in data["layers"][0].items() if k != "g_lst"}]})
    with pytest.raises(ValueError, match=r"layers\[0\] has no 'g_lst'"):
        load_result(path)
    bad_layer = dict(data["layers"][0])
    bad_layer["g_lst"] = [row[::-1] for row in bad_layer["g_lst"]]  # decreasing: not invertible
    write({**data, "layers": [bad_layer]})
    with pytest.raises(ValueError, match="invalid program"):
        load_result(path)
    path.write_text('{"format": "gpuwpo-result", "version": 1, "layers": [')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_result(path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_result(tmp_path / "missing.json")


def test_save_refuses_a_batched_converter(tmp_path):
    result = _result()
    conv = result.layers[0].converter
    result.layers[0].converter = gpuwpo.CustomPairConductanceConverter(
        conv.f_lst.expand(2, -1), conv.g_lst.expand(2, -1, -1))
    with pytest.raises(ValueError, match="batched"):
        save_result(result, tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


# -- weight files ----------------------------------------------------------------------------


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"fc1.weight": torch.randn(4, 3, generator=g), "fc1.bias": torch.randn(4, generator=g),
            "fc2.weight": torch.randn(2, 4, generator=g, dtype=torch.float64)}


def _assert_same(loaded: dict, expected: dict) -> None:
    assert list(loaded) == list(expected)
    for name, value in expected.items():
        assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], value), name


def test_load_weights_safetensors_pt_pth(tmp_path):
    state = _state()
    save_file(state, tmp_path / "w.safetensors")
    assert sorted(load_weights(tmp_path / "w.safetensors")) == sorted(state)
    loaded = load_weights(tmp_path / "w.safetensors")
    for name in state:
        assert torch.equal(loaded[name], state[name])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    _assert_same(load_weights(tmp_path / "m.pt"), dict(model.state_dict()))
    torch.save(state, tmp_path / "w.PTH")  # extension case does not matter
    _assert_same(load_weights(str(tmp_path / "w.PTH")), state)


def test_load_weights_numpy(tmp_path):
    array = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    np.save(tmp_path / "w.npy", array)
    loaded = load_weights(tmp_path / "w.npy")
    assert list(loaded) == ["weight"] and torch.equal(loaded["weight"], torch.from_numpy(array))
    np.savez(tmp_path / "w.npz", **{"enc.weight": array, "enc.bias": np.ones(3)})
    loaded = load_weights(tmp_path / "w.npz")
    assert sorted(loaded) == ["enc.bias", "enc.weight"]
    assert torch.equal(loaded["enc.weight"], torch.from_numpy(array))
    assert loaded["enc.bias"].dtype == torch.float64
    # What the network driver then selects from it.
    assert list(gpuwpo.network.select_weights(loaded)) == ["enc.weight"]


def test_load_weights_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_weights(tmp_path / "nothing.pt")
    (tmp_path / "w.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match=r"w\.txt.*unknown .*extension"):
        load_weights(tmp_path / "w.txt")
    torch.save([torch.ones(2, 2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt.*not a state_dict"):
        load_weights(tmp_path / "list.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "model.pt")  # a pickled module: never unpickled
    with pytest.raises(ValueError, match=r"model\.pt: holds Python objects .*Linear.*state_dict"
                       ) as err:
        load_weights(tmp_path / "model.pt")
    assert "weights_only=False" not in str(err.value)  # never torch's advice to unpickle
    # Entries beside the tensors are not weights: left out, and named in the one note line.
    torch.save({"w": torch.ones(2, 2), "epoch": 3}, tmp_path / "ckpt.pt")
    loaded = load_weights(tmp_path / "ckpt.pt")
    assert list(loaded) == ["w"] and "epoch (int)" in loaded.note and "\n" not in loaded.note
    np.savez(tmp_path / "text.npz", names=np.array(["a", "b"]), w=np.ones(2))
    with pytest.raises(ValueError, match=r"text\.npz.*'names' is not numeric"):
        load_weights(tmp_path / "text.npz")
    np.savez(tmp_path / "obj.npz", w=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"obj\.npz"):
        load_weights(tmp_path / "obj.npz")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"junk\.safetensors"):
        load_weights(tmp_path / "junk.safetensors")


# -- aihwkit export --------------------------------------------------------------------------


def test_to_aihwkit_without_aihwkit_raises_import_error(monkeypatch):
    # Import fails even where it is installed (and already imported by another test).
    for name in ["aihwkit", *[m for m in sys.modules if m.startswith("aihwkit.")]]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="pip install aihwkit"):
        _program(torch.float32, 0).to_aihwkit()


def test_to_aihwkit_refuses_a_batched_converter():
    conv = _program(torch.float32, 0)
    batched = gpuwpo.CustomPairConductanceConverter(conv.f_lst.expand(3, -1),
                                                    conv.g_lst.expand(3, -1, -1))
    with pytest.raises(ValueError, match="single program"):
        batched.to_aihwkit()


def test_to_aihwkit_passes_the_program_as_aihwkit_expects(monkeypatch):
    calls = []

    class FakeCustomPair:
        def __init__(self, f_lst, g_lst, g_max=None, g_min=None, invertibility_test=True):
            calls.append(dict(f_lst=f_lst, g_lst=g_lst, g_min=g_min, g_max=g_max,
                              invertibility_test=invertibility_test))

    names = ["aihwkit", "aihwkit.inference", "aihwkit.inference.converter",
             "aihwkit.inference.converter.conductance"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules[names[-1]].CustomPairConductanceConverter = FakeCustomPair
    conv = _program(torch.float32, 0)
    assert isinstance(conv.to_aihwkit(), FakeCustomPair)
    (call,) = calls
    # aihwkit checks isinstance(..., list): plain lists of Python floats, values exact.
    assert type(call["f_lst"]) is list and all(type(v) is float for v in call["f_lst"])
    assert type(call["g_lst"]) is list and all(type(row) is list for row in call["g_lst"])
    assert torch.equal(torch.tensor(call["g_lst"], dtype=torch.float32), conv.g_lst)
    assert torch.equal(torch.tensor(call["f_lst"], dtype=torch.float32), conv.f_lst)
    assert (call["g_min"], call["g_max"], call["invertibility_test"]) == (0.0, 25.0, True)


def test_physics_from_settings_rebuilds_what_was_recorded():
    from gpuwpo.network.settings import physics_from_settings

    settings = {
        "noise_model": {"class": "PCMLikeNoiseModel", "g_max": 30.0, "drift_scale": 0.5,
                        "prog_noise_scale": 2.0},
        "baseline": {"class": "DualPairConductanceConverter", "f_lst": [1.0, 3.0],
                     "g_min": 0.0, "g_max": 30.0},
        "compensation": {"class": "GlobalDriftCompensation", "readout_noise": 0.06},
        "t_steps": [1.0, 60.0],
    }
    physics = physics_from_settings(settings)
    nm = physics["noise_model"]
    assert (nm.g_max, nm.drift_scale, nm.prog_noise_scale) == (30.0, 0.5, 2.0)
    assert physics["baseline"].f_lst.tolist() == [1.0, 3.0] and physics["baseline"].g_max == 30.0
    assert physics["compensation"].readout_noise == 0.06
    assert physics["t_steps"] == [1.0, 60.0]
    with pytest.raises(ValueError, match="settings.noise_model names an unknown class 'os.system'"):
        physics_from_settings({"noise_model": {"class": "os.system"}})
    # nothing recorded: the documented defaults
    defaults = physics_from_settings({})
    assert defaults["noise_model"].g_max == 25.0 and len(defaults["t_steps"]) == 5


# -- results files of earlier versions -------------------------------------------------------
# Written by those versions' `gpuwpo optimize` (one layer fc.weight [4, 6], randn * 0.3 of seed
# 0; a tiny budget: popsize 2, maxiter 2, a 8 x 4 test tile, times 1 s and 1 y), as they wrote
# them.

#: A results file of version 1, by commit d6c6288 (options as optimizer_kwargs; g_ref).
_V1 = (
    '{"format":"gpuwpo-result","version":1,"settings":{"f_lst":[null,null],"t_steps":[1.0,3153600'
    '0.0],"backend":"torch","per_layer":true,"include":null,"exclude":null,"optimizer_kwargs":{"n'
    'bins":6,"test_in_features":8,"test_out_features":4,"g_err":0.0,"f_min":0.1,"f_max":5.0,"use_'
    'max_kw":false,"loss_margin":0.125,"baseline_iterations":2,"callback":null,"disp":false,"stra'
    'tegy":"best1bin","popsize":2,"maxiter":2,"tol":0.0,"atol":0.02,"mutation":0.1,"recombination'
    '":0.3,"polish":true,"seed":100,"x_init":"latinhypercube","validation_repeats":2,"x0":null,"w'
    'arm_start_baseline":false,"noise_robust":true,"checkpoint":null,"checkpoint_every":10,"resum'
    'e":null,"algorithm":"de","kernel":"auto","memory_budget":null,"polish_maxiter":50},"noise_mo'
    'del":{"class":"PCMLikeNoiseModel","prog_coeff":[0.26348,1.965,-1.1731],"g_max":25.0,"t_read"'
    ':2.5e-07,"t_0":20.0,"prog_noise_scale":1.0,"read_noise_scale":1.0,"drift_scale":1.0,"g_ref":'
    '25.0},"baseline":{"class":"DualPairConductanceConverter","f_lst":[1.0,1.0],"g_min":0.0,"g_ma'
    'x":25.0},"compensation":{"class":"GlobalDriftCompensation","readout_noise":0.0,"readout_step'
    '":0.0,"readout_bound":null,"exact_reference":false,"input_step":0.0,"bound_management":false'
    ',"max_bm_factor":1000.0,"max_bm_res":0.25},"g_min":0.0,"g_max":25.0,"nbins":6,"symmetric":tr'
    'ue,"device":"cpu","physics":"device"},"total_tnmse":0.14947666227817535,"total_baseline_tnms'
    'e":0.24021179974079132,"nit":2,"nfev":210,"wall_time":10.909243682999659,"stop_reason":"maxi'
    'ter","layers":[{"name":"fc.weight","shape":[4,6],"f_dtype":"float32","g_dtype":"float32","f_'
    'lst":[1.936711072921753,2.979419469833374],"g_lst":[[0.0,4.8007612228393555,0.0,0.0,0.0,0.76'
    '32206678390503,12.673486709594727,25.0,15.399155616760254,22.819133758544922,25.0],[25.0,22.'
    '819133758544922,15.399155616760254,25.0,12.673486709594727,0.0,0.0,0.0,0.0,4.800761222839355'
    '5,0.0],[0.0,2.8183977603912354,0.0,0.0,0.0,0.0,0.012006474658846855,0.24955542385578156,14.7'
    '4053955078125,24.10651397705078,25.0],[25.0,24.10651397705078,14.74053955078125,0.2495554238'
    '5578156,0.012006474658846855,0.49611610174179077,0.0,0.0,0.0,2.8183977603912354,0.0]],"g_min'
    '":0.0,"g_max":25.0,"tnmse":0.14947666227817535,"tnmse_ci95":[0.11202038824558258,0.186932936'
    '31076813],"baseline_tnmse":0.24021179974079132,"baseline_ci95":[0.13474732637405396,0.345676'
    '2731075287],"history":[0.3614135980606079,0.3880557417869568]}]}'
)

#: A results file of version 2, by commit 7db06cf (warm_start_baseline; unseeded).
_V2 = (
    '{"format":"gpuwpo-result","version":2,"settings":{"f_lst":[null,null],"t_steps":[1.0,3153600'
    '0.0],"backend":"torch","per_layer":true,"include":null,"exclude":null,"options":{"nbins":6,"'
    'g_err":0.0,"f_min":0.1,"f_max":5.0,"use_max_kw":false,"test_in_features":8,"test_out_feature'
    's":4,"kernel":"auto","memory_budget":null,"loss_margin":0.125,"baseline_iterations":2,"valid'
    'ation_repeats":2,"polish":true,"polish_maxiter":50,"warm_start_baseline":false,"strategy":"b'
    'est1bin","popsize":2,"maxiter":2,"tol":0.0,"atol":0.02,"mutation":0.1,"recombination":0.3,"s'
    'eed":100,"x_init":"latinhypercube","x0":null,"noise_robust":true,"algorithm":"de","checkpoin'
    't_every":10},"explicit":["baseline_iterations","maxiter","popsize","test_in_features","test_'
    'out_features","validation_repeats"],"noise_model":{"class":"PCMLikeNoiseModel","prog_coeff":'
    '[0.26348,1.965,-1.1731],"g_max":25.0,"t_read":2.5e-07,"t_0":20.0,"prog_noise_scale":1.0,"rea'
    'd_noise_scale":1.0,"drift_scale":1.0,"prog_coeff_g_max_reference":25.0},"baseline":{"class":'
    '"DualPairConductanceConverter","f_lst":[1.0,1.0],"g_min":0.0,"g_max":25.0},"compensation":{"'
    'class":"GlobalDriftCompensation","readout_noise":0.0,"readout_step":0.0,"readout_bound":null'
    ',"exact_reference":false,"input_step":0.0,"bound_management":false,"max_bm_factor":1000.0,"m'
    'ax_bm_res":0.25},"symmetric":true,"g_min":0.0,"g_max":25.0,"nbins":6,"device":"cpu","physics'
    '":"device"},"total_tnmse":0.25700828433036804,"total_baseline_tnmse":0.24021179974079132,"ni'
    't":2,"nfev":210,"wall_time":13.515337002999786,"stop_reason":"maxiter","layers":[{"name":"fc'
    '.weight","shape":[4,6],"f_dtype":"float32","g_dtype":"float32","f_lst":[4.352925777435303,3.'
    '023068904876709],"g_lst":[[0.0,0.0,0.018117565661668777,0.5216353535652161,9.194205284118652'
    ',0.04129372909665108,0.6032571792602539,0.10426723957061768,22.898258209228516,16.5275440216'
    '06445,25.0],[25.0,16.527544021606445,22.898258209228516,0.10426723957061768,0.60325717926025'
    '39,0.0,9.194205284118652,0.5216353535652161,0.018117565661668777,0.0,0.0],[0.0,0.0,0.0,0.0,0'
    '.23015932738780975,0.14037811756134033,24.799806594848633,25.0,3.653364419937134,25.0,25.0],'
    '[25.0,25.0,3.653364419937134,25.0,24.799806594848633,0.1998370736837387,0.23015932738780975,'
    '0.0,0.0,0.0,0.0]],"g_min":0.0,"g_max":25.0,"tnmse":0.25700828433036804,"tnmse_ci95":[0.10550'
    '14431476593,0.4085151255130768],"baseline_tnmse":0.24021179974079132,"baseline_ci95":[0.1347'
    '4732637405396,0.3456762731075287],"history":[0.3872351348400116,0.3814701735973358]}]}'
)

#: A results file of version 3, by commit e90a7a9 (the option still called seeds).
_V3_SEEDS = (
    '{"format":"gpuwpo-result","version":3,"settings":{"f_lst":[null,null],"t_steps":[1.0,3153600'
    '0.0],"backend":"torch","per_layer":true,"hierarchical":false,"include":null,"exclude":null,"'
    'options":{"nbins":6,"g_err":0.0,"f_min":0.1,"f_max":5.0,"use_max_kw":false,"clip":1.0,"test_'
    'in_features":8,"test_out_features":4,"kernel":"auto","memory_budget":null,"loss_margin":0.12'
    '5,"baseline_iterations":2,"validation_repeats":2,"polish":true,"polish_maxiter":50,"seeds":t'
    'rue,"strategy":"best1bin","popsize":2,"maxiter":2,"tol":0.0,"atol":0.02,"mutation":0.1,"reco'
    'mbination":0.3,"seed":100,"x_init":"latinhypercube","x0":null,"noise_robust":true,"algorithm'
    '":"de"},"explicit":["baseline_iterations","maxiter","popsize","test_in_features","test_out_f'
    'eatures","validation_repeats"],"noise_model":{"class":"PCMLikeNoiseModel","prog_coeff":[0.26'
    '348,1.965,-1.1731],"g_max":25.0,"t_read":2.5e-07,"t_0":20.0,"prog_noise_scale":1.0,"read_noi'
    'se_scale":1.0,"drift_scale":1.0,"prog_coeff_g_max_reference":25.0},"baseline":{"class":"Dual'
    'PairConductanceConverter","f_lst":[1.0,1.0],"g_min":0.0,"g_max":25.0},"compensation":{"class'
    '":"GlobalDriftCompensation","readout_noise":0.0,"readout_step":0.0,"readout_bound":null,"exa'
    'ct_reference":false,"input_step":0.0,"bound_management":false,"max_bm_factor":1000.0,"max_bm'
    '_res":0.25},"symmetric":true,"g_min":0.0,"g_max":25.0,"nbins":6,"device":"cpu","physics":"de'
    'vice"},"total_tnmse":0.14504012279212475,"total_baseline_tnmse":0.15364684909582138,"nit":2,'
    '"nfev":228,"wall_time":5.053010429000096,"stop_reason":"maxiter","layers":[{"name":"fc.weigh'
    't","shape":[4,6],"f_dtype":"float32","g_dtype":"float32","f_lst":[1.0,1.5000001192092896],"g'
    '_lst":[[0.0,0.0,0.0,0.0,0.0,0.0,12.5,25.0,25.0,25.0,25.0],[25.0,25.0,25.0,25.0,12.5,0.0,0.0,'
    '0.0,0.0,0.0,0.0],[0.0,0.0,0.0,0.0,0.0,0.0,6.357828397085541e-07,1.2715656794171082e-06,8.333'
    '334922790527,16.666667938232422,25.0],[25.0,16.666667938232422,8.333334922790527,1.271565679'
    '4171082e-06,6.357828397085541e-07,0.0,0.0,0.0,0.0,0.0,0.0]],"g_min":0.0,"g_max":25.0,"tnmse"'
    ':0.14504012279212475,"tnmse_ci95":[0.07766094534935666,0.21241930023489283],"baseline_tnmse"'
    ':0.15364684909582138,"baseline_ci95":[0.07987926300638301,0.22741443518525975],"history":[0.'
    '1139415055513382,0.08926498889923096],"chosen":"seed: NPair f=[1, 1.5] range=1","success":fa'
    'lse}]}'
)

EARLIER = {1: _V1, 2: _V2, 3: _V3_SEEDS}


def _earlier(tmp_path, version: int):
    path = tmp_path / f"v{version}.json"
    path.write_text("".join(EARLIER[version]))
    return path


@pytest.mark.parametrize("version", [1, 2, 3])
def test_results_files_of_earlier_versions_load(tmp_path, version):
    from gpuwpo.network.settings import physics_from_settings

    path = _earlier(tmp_path, version)
    result = load_result(path)
    (layer,) = result.layers
    assert (layer.name, layer.shape) == ("fc.weight", (4, 6))
    assert isinstance(layer.converter, gpuwpo.CustomPairConductanceConverter)
    # Versions 1 and 2 recorded no choice: their layers are the search's strategies.
    assert layer.chosen == ("search" if version < 3 else "seed: NPair f=[1, 1.5] range=1")
    # Before version 4 every layer was layer-wise, with no layer-wise baseline figure of its own.
    assert layer.mapping == "layer" and layer.recipe.mapping == "layer"
    assert layer.layerwise_baseline_tnmse is None and layer.layerwise_baseline_ci95 is None
    assert result.baseline.mapping == "layer"
    physics = physics_from_settings(result.settings, path=path)
    assert physics["noise_model"].g_ref == 25.0  # version 1 called it g_ref
    assert physics["baseline"].f_lst.tolist() == [1.0, 1.0]
    assert physics["t_steps"] == [1.0, 31536000.0] and physics["physics"] == "device"
    again = tmp_path / "again.json"  # saved as the current version, read back the same
    save_result(result, again)
    assert load_result(again) == result and json.loads(again.read_text())["version"] == 4


def test_earlier_records_are_repeated_with_the_options_they_record(tmp_path):
    from gpuwpo.network.settings import config_from_settings

    path = _earlier(tmp_path, 1)
    with pytest.raises(ValueError, match="v1.json: the results file does not record its options"):
        config_from_settings(load_result(path).settings, path=path)
    for version, starts in ((2, False), (3, True)):
        path = _earlier(tmp_path, version)
        options = config_from_settings(load_result(path).settings, path=path)["options"]
        # Version 2 was written before the search started from the standard converters;
        # version 3 called the option `seeds`.
        assert options.standard_starts is starts and "standard_starts" not in options.explicit
        # Written before the mapping was modelled: layer-wise for both, no clip searched, so
        # that the run repeats exactly whatever today's defaults are.
        assert (options.mapping, options.baseline_mapping, options.clip_range) == (
            "layer", "layer", None)
        assert (options.popsize, options.maxiter, options.seed) == (2, 2, 100)
        assert options.explicit == {"baseline_iterations", "maxiter", "popsize",
                                    "test_in_features", "test_out_features",
                                    "validation_repeats"}


def test_the_command_line_repeats_a_run_recorded_with_seeds(tmp_path):
    from gpuwpo.cli import main

    gen = torch.Generator().manual_seed(0)
    weights = tmp_path / "w.pt"
    torch.save({"fc.weight": torch.randn(4, 6, generator=gen) * 0.3}, weights)
    out = tmp_path / "again.json"
    assert main(["optimize", str(weights), "--config", str(_earlier(tmp_path, 3)), "--quiet",
                 "--device", "cpu", "--out", str(out)]) == 0
    settings = load_result(out).settings
    assert settings["options"]["standard_starts"] is True and "seeds" not in settings["options"]
    assert (settings["options"]["mapping"], settings["options"]["baseline_mapping"]) == (
        "layer", "layer")
    assert load_result(out).layers[0].mapping == "layer"
    assert settings["options"]["popsize"] == 2 and settings["t_steps"] == [1.0, 31536000.0]
