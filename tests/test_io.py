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
    assert data["version"] == RESULT_VERSION == 3
    layer = data["layers"][0]
    for key in ("name", "shape", "f_lst", "g_lst", "g_min", "g_max", "tnmse", "tnmse_ci95",
                "baseline_tnmse", "baseline_ci95", "history"):
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

    write({**data, "version": 4})
    with pytest.raises(ValueError, match=r"version 4 .*newer"):
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
    torch.save({"w": torch.ones(2, 2), "epoch": 3}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=r"ckpt\.pt.*'epoch'"):
        load_weights(tmp_path / "ckpt.pt")
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
