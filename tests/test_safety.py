"""Nothing lost, nothing silently wrong (issue 13): outputs, results files, weight files, seeds.

Every refusal is one line naming the file, the field or the flag (``gpuwpo: error: ...``, exit
status 2) and comes before any work where it can be known then; no input is ever changed. The
cheap cases call ``main`` in the test process; the signals (SIGKILL mid-write, Ctrl-C during
start-up and during a search) need subprocesses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import gpuwpo
from gpuwpo import plots
from gpuwpo.cli import main, parse_seed
from gpuwpo.io import load_result, load_weights, save_result
from gpuwpo.network import LayerResult, NetworkResult

TINY = ["--popsize", "2", "--maxiter", "2", "--test-size", "8", "4", "--baseline-iterations",
        "2", "--validation-repeats", "2", "--times", "1,1y"]
HAVE_PROC = os.path.isdir("/proc/self/fd")


def _one_line(stderr: str, *fragments: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("gpuwpo: error: ") and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr
    return lines[0]


def _state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"fc1.weight": torch.randn(8, 16, generator=gen) * 0.3,
            "fc2.weight": torch.randn(4, 8, generator=gen) * 0.3}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("safety")
    torch.save(_state(), d / "net.pt")
    np.savez(d / "net.npz", **{k: v.numpy() for k, v in _state().items()})
    out = d / "results.json"
    assert main(["optimize", str(d / "net.pt"), *TINY, "--quiet", "--out", str(out)]) == 0
    # A layer of each kind, whatever the tiny search chose: fc1 a program (the N-pair [1, 2]
    # one, as the strategy space writes it), fc2 the baseline converter kept.
    result = load_result(out)
    space = gpuwpo.StrategySpace([None, None])
    program = space.to_converter(space.encode_npair([1.0, 2.0]),
                                 float(_state()["fc1.weight"].abs().max()))
    result.layers[0] = dataclasses.replace(result.layers[0], converter=program, chosen="search")
    result.layers[1] = dataclasses.replace(result.layers[1], converter=result.layers[1].converter
                                           if result.layers[1].chosen == "baseline"
                                           else gpuwpo.DualPairConductanceConverter(),
                                           chosen="baseline", success=False)
    save_result(result, out)
    return {"dir": d, "pt": d / "net.pt", "npz": d / "net.npz", "results": out}


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------------------------
# Outputs: only results files are replaced, never an input; every output checked first
# --------------------------------------------------------------------------------------------


def test_out_never_overwrites_an_input_or_a_file_that_is_not_results(files, tmp_path, capsys):
    weights = tmp_path / "net.pt"
    weights.write_bytes(files["pt"].read_bytes())
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    config = tmp_path / "settings.toml"
    config.write_text("popsize = 2\n")
    results = tmp_path / "old.json"
    results.write_bytes(files["results"].read_bytes())
    before = _snapshot(tmp_path)
    cases = [
        (["--out", str(weights)], ["--out", "net.pt", "input"]),
        (["--out", str(notes)], ["--out", "notes.txt", "not a gpuwpo results file"]),
        (["--config", str(results), "--out", str(results)], ["old.json", "input"]),
        (["--config", str(config), "--out", str(config)], ["settings.toml", "input"]),
        (["--plots", str(weights)], ["--plots", "not a directory"]),
    ]
    for extra, fragments in cases:
        assert main(["optimize", str(weights), *TINY, *extra]) == 2
        captured = capsys.readouterr()
        _one_line(captured.err, *fragments)
        assert captured.out == ""  # refused before the weights were even read
    assert _snapshot(tmp_path) == before


def test_out_naming_a_directory_is_refused_and_writes_nothing(files, tmp_path, capsys):
    for out in (str(tmp_path / "dir") + os.sep, str(tmp_path)):
        assert main(["optimize", str(files["pt"]), *TINY, "--out", out]) == 2
        _one_line(capsys.readouterr().err, "names a directory", "results.json")
    assert list(tmp_path.iterdir()) == []  # no file named "dir"


@pytest.mark.skipif(not HAVE_PROC, reason="uses /proc as a directory nobody can write")
def test_unwritable_outputs_are_found_before_any_work(files, capsys):
    for extra, flag in ((["--out", "/proc/results.json"], "--out"),
                        (["--plots", "/proc/gpuwpo-figures"], "--plots")):
        assert main(["optimize", str(files["pt"]), *TINY, *extra]) == 2
        captured = capsys.readouterr()
        _one_line(captured.err, flag, "/proc")
        assert captured.out == ""
    assert main(["plot", str(files["results"]), "--out", "/proc/gpuwpo-figures"]) == 2
    _one_line(capsys.readouterr().err, "--out", "/proc")
    assert main(["example", "--quick", "--out", "/proc/gpuwpo-example"]) == 2
    _one_line(capsys.readouterr().err, "--out", "/proc")


def test_save_result_replaces_only_results_files_and_keeps_their_permissions(files, tmp_path):
    result = load_result(files["results"])
    other = tmp_path / "model.pt"
    other.write_bytes(b"weights")
    with pytest.raises(ValueError, match="model.pt exists and is not a gpuwpo results file"):
        save_result(result, other)
    assert other.read_bytes() == b"weights"
    with pytest.raises(ValueError, match="is a directory"):
        save_result(result, tmp_path)
    path = tmp_path / "r.json"
    save_result(result, path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as a new file, not 0600
    os.chmod(path, 0o640)
    save_result(result, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "r.json"]


_KILL_MID_WRITE = r"""
import os, sys, time
import gpuwpo._files as files
from gpuwpo.io import load_result, save_result

stage, unnamed, path = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
result = load_result(path)
result.stop_reason = "changed"
if not unnamed:
    files._open_unnamed = lambda directory: None
real_write, real_replace = files._write_all, os.replace

def hang(*args):
    print("ready", flush=True)
    time.sleep(60)

def half_then_hang(fd, data, mode):
    os.write(fd, data[: len(data) // 2])
    hang()

if stage == "write":
    files._write_all = half_then_hang
else:  # between naming the temporary file and moving it into place
    os.replace = lambda *args: hang()
save_result(result, path)
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage, unnamed", [("write", True), ("write", False), ("rename", True)])
def test_a_write_killed_by_sigkill_leaves_the_old_file_and_no_stray_file(files, tmp_path, stage,
                                                                         unnamed):
    if unnamed and not HAVE_PROC:
        pytest.skip("O_TMPFILE needs Linux")
    path = tmp_path / "results.json"
    path.write_bytes(files["results"].read_bytes())
    before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", _KILL_MID_WRITE, stage,
                             "1" if unnamed else "0", str(path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        proc.kill()
        proc.wait()
    assert path.read_bytes() == before
    left = sorted(p.name for p in tmp_path.iterdir())
    if stage == "write" and unnamed:
        assert left == ["results.json"]  # the half-written file never had a name
    # Whatever a kill left (a named temporary file of a dead writer) goes with the next write.
    save_result(load_result(path), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    assert path.read_bytes() == before


# --------------------------------------------------------------------------------------------
# Numbers: no NaN or infinity in a results file; weights' scale; complex/bool/0-d; seeds
# --------------------------------------------------------------------------------------------


def _nan_result(files) -> NetworkResult:
    result = load_result(files["results"])
    layer = result.layers[0]
    result.layers[0] = LayerResult(layer.name, layer.shape, layer.converter, float("nan"),
                                   layer.tnmse_ci95, layer.baseline_tnmse, layer.baseline_ci95,
                                   layer.history, layer.chosen, layer.success)
    return result


def test_nan_never_reaches_a_results_file(files, tmp_path):
    path = tmp_path / "r.json"
    with pytest.raises(ValueError, match=r"layers\[0\]\.tnmse is nan.*finite"):
        save_result(_nan_result(files), path)
    assert not path.exists()
    # A file with NaN tokens (not JSON) is refused when read, naming the file.
    text = files["results"].read_text()
    data = json.loads(text)
    data["total_tnmse"] = float("nan")
    path.write_text(json.dumps(data))  # Python's json writes a bare NaN token
    with pytest.raises(ValueError, match="r.json.*NaN"):
        load_result(path)
    assert "NaN" not in text and "Infinity" not in text


@pytest.mark.slow
def test_huge_weights_give_finite_figures_through_the_command_line(files, tmp_path, capsys):
    weights = tmp_path / "huge.npz"
    np.savez(weights, **{k: (v * 1e30).numpy() for k, v in _state().items()})
    out = tmp_path / "r.json"
    assert main(["optimize", str(weights), *TINY, "--quiet", "--out", str(out)]) == 0
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    result = load_result(out)
    assert all(math.isfinite(layer.tnmse) for layer in result.layers)


@pytest.mark.parametrize("kind", ["complex", "bool", "scalar"])
@pytest.mark.parametrize("fmt", ["npy", "npz", "pt", "safetensors"])
def test_complex_bool_and_scalar_weights_are_refused_by_the_loaders(tmp_path, kind, fmt):
    value = {"complex": torch.ones(3, 2, dtype=torch.complex64),
             "bool": torch.ones(3, 2, dtype=torch.bool), "scalar": torch.tensor(1.5)}[kind]
    path = tmp_path / f"w.{fmt}"
    name = "layer.weight"
    if fmt == "npy":
        np.save(path, value.numpy())
    elif fmt == "npz":
        np.savez(path, **{name: value.numpy()})
    elif fmt == "pt":
        torch.save({name: value}, path)
    else:
        save_file({name: value}, str(path))
    if kind == "scalar" and fmt != "npy":
        # A 0-d tensor in a state_dict is a counter, not a layer: loaded, never selected.
        with pytest.raises(ValueError, match="no layers to program"):
            gpuwpo.select_weights(load_weights(path))
        return
    with pytest.raises(ValueError, match=rf"w\.{fmt}") as err:
        load_weights(path)
    assert ("complex" in str(err.value) or "bool" in str(err.value) or "0-d" in str(err.value)
            or "not numeric" in str(err.value)), err.value


def test_complex_bool_and_scalar_weights_are_refused_by_the_api(files):
    nm, base = gpuwpo.PCMLikeNoiseModel(), gpuwpo.DualPairConductanceConverter()
    result = load_result(files["results"])
    for bad, word in ((torch.ones(8, 16, dtype=torch.complex64), "complex"),
                      (torch.ones(8, 16, dtype=torch.bool), "boolean"),
                      (torch.tensor(2.0), "scalar")):
        with pytest.raises(ValueError, match=word):
            gpuwpo.simulate_weights(bad, base, nm, [1.0])
        # (a 0-d "weight" is not a layer at all: not selected, "ndim >= 2")
        with pytest.raises(ValueError, match="ndim >= 2" if word == "scalar" else word):
            gpuwpo.optimize_network({"a.weight": bad}, nm, [1.0], base, [None, None],
                                    popsize=1, maxiter=1)
        weights = {**_state(), "fc1.weight": bad}
        with pytest.raises(ValueError, match=word):
            plots.weight_error_histograms(result, weights, [1.0], repeats=1)


def test_program_model_and_plots_refuse_layers_of_another_shape(files):
    result = load_result(files["results"])  # made for fc1 [8, 16], fc2 [4, 8]
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(16, 8, bias=False))
    model.add_module("fc2", nn.Linear(4, 4, bias=False))  # [4, 4], not [4, 8]
    with pytest.raises(ValueError, match=r"'fc2.weight' has shape \(4, 4\).*\(4, 8\)"):
        gpuwpo.program_model(model, result, gpuwpo.PCMLikeNoiseModel(), 1.0)
    with pytest.raises(TypeError, match="nn.Module"):
        gpuwpo.program_model(_state(), result, gpuwpo.PCMLikeNoiseModel(), 1.0)
    weights = {**_state(), "fc2.weight": torch.randn(4, 4)}
    with pytest.raises(ValueError, match=r"'fc2.weight' has shape \(4, 4\).*\(4, 8\)"):
        plots.weight_error_histograms(result, weights, [1.0], repeats=1)


def test_evaluate_needs_two_repeats_for_a_standard_error(files, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(files["results"]), str(files["pt"]), "--repeats", "1"])
    assert exc.value.code == 2
    _one_line(capsys.readouterr().err, "--repeats", ">= 2", "gpuwpo evaluate --help")
    assert main(["evaluate", str(files["results"]), str(files["pt"]), "--repeats", "2",
                 "--quiet", "--times", "1"]) == 0
    assert "nan" not in capsys.readouterr().out


def test_seeds_are_64_bit_and_used_whole(capsys):
    assert parse_seed("0") == 0 and parse_seed(str(2**64 - 1)) == 2**64 - 1
    assert parse_seed("0x10") == 16
    for text in (str(2**64), "-1", "1.5", "lots"):
        with pytest.raises(SystemExit):
            main(["optimize", "w.pt", "--seed", text])
        line = _one_line(capsys.readouterr().err, "--seed", "gpuwpo optimize --help")
        assert "Overflow" not in line
    # Seeds that differ by 2**32 (or 2**64) start different searches.
    from gpuwpo.search.de import de_init

    pops = [de_init(dim=3, popsize=5, seed=s).population for s in (7, 7 + 2**32, 7 + 2**64)]
    assert not torch.equal(pops[0], pops[1]) and not torch.equal(pops[0], pops[2])
    from gpuwpo.example import _seed_bits

    assert _seed_bits(5, 32) == 5 and _seed_bits(5 + 2**32, 32) != 5


def test_huge_test_sizes_are_refused_before_any_allocation(files, capsys):
    argv = ["optimize", str(files["pt"]), *TINY, "--test-size", "100000", "100000"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    _one_line(captured.err, "--test-size 100000 100000")
    assert captured.out == ""
    with pytest.raises(ValueError, match="test tile 100000 x 100000"):
        gpuwpo.optimize_network(_state(), gpuwpo.PCMLikeNoiseModel(), [1.0],
                                gpuwpo.DualPairConductanceConverter(), [None, None],
                                test_in_features=100000, test_out_features=100000)


def test_an_unknown_flag_points_to_its_commands_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "r.json", "w.pt", "--bogus"])
    assert exc.value.code == 2
    _one_line(capsys.readouterr().err, "--bogus", "see 'gpuwpo evaluate --help'")


# --------------------------------------------------------------------------------------------
# Results files: checked against the format when read, every error naming file and field
# --------------------------------------------------------------------------------------------


def _mutations(data: dict) -> list[tuple[str, dict, str]]:
    def edit(fn):
        copy = json.loads(json.dumps(data))
        fn(copy)
        return copy

    first = "layers[0]"
    return [
        ("no layers", edit(lambda d: d.update(layers=[])), "layers is empty"),
        ("layers not a list", edit(lambda d: d.update(layers={})), "layers must be a list"),
        ("no times", edit(lambda d: d["settings"].update(t_steps=[])), "settings.t_steps"),
        ("times of text", edit(lambda d: d["settings"].update(t_steps=["1h"])),
         "settings.t_steps[0]"),
        ("a negative time", edit(lambda d: d["settings"].update(t_steps=[-1.0])),
         "settings.t_steps[0]"),
        ("baseline missing a field", edit(lambda d: d["settings"]["baseline"].pop("g_max")),
         "settings.baseline (DualPairConductanceConverter) has no 'g_max'"),
        ("noise model of text", edit(lambda d: d["settings"]["noise_model"].update(g_max="x")),
         "settings.noise_model"),
        ("negative repeats",
         edit(lambda d: d["settings"]["options"].update(validation_repeats=-3)),
         "validation_repeats"),
        ("unknown option", edit(lambda d: d["settings"]["options"].update(frobnicate=1)),
         "frobnicate"),
        ("an unknown physics", edit(lambda d: d["settings"].update(physics="quantum")),
         "settings.physics"),
        ("a layer missing a figure", edit(lambda d: d["layers"][0].pop("baseline_tnmse")),
         f"{first} has no 'baseline_tnmse'"),
        ("a figure of text", edit(lambda d: d["layers"][0].update(tnmse="0.1")),
         f"{first}.tnmse"),
        ("a negative figure", edit(lambda d: d["layers"][0].update(tnmse=-0.1)),
         f"{first}.tnmse"),
        ("an infinite figure", edit(lambda d: d["layers"][0].update(tnmse=1e999)),
         "holds Infinity"),
        ("a figure too large for a float",
         edit(lambda d: d["layers"][0].update(tnmse="__HUGE__")), f"{first}.tnmse"),
        ("a zero baseline", edit(lambda d: d["layers"][0].update(baseline_tnmse=0)),
         f"{first}.baseline_tnmse"),
        ("a bad interval", edit(lambda d: d["layers"][0].update(tnmse_ci95=[1.0])),
         f"{first}.tnmse_ci95"),
        ("a reversed interval", edit(lambda d: d["layers"][0].update(tnmse_ci95=[2.0, 1.0])),
         f"{first}.tnmse_ci95"),
        ("a shape of text", edit(lambda d: d["layers"][0].update(shape="abc")),
         f"{first}.shape"),
        ("a zero size", edit(lambda d: d["layers"][0].update(shape=[0, 3])),
         f"{first}.shape[0]"),
        ("a history of text", edit(lambda d: d["layers"][0].update(history=["x"])),
         f"{first}.history[0]"),
        ("success of text", edit(lambda d: d["layers"][0].update(success="yes")),
         f"{first}.success"),
        ("a repeated name", edit(lambda d: d["layers"][1].update(name=d["layers"][0]["name"])),
         "layers[1].name"),
        ("negative generations", edit(lambda d: d.update(nit=-1)), "nit"),
        ("a float count", edit(lambda d: d.update(nfev=2.5)), "nfev"),
        ("a version of text", edit(lambda d: d.update(version="3")), "version '3'"),
        ("a version true", edit(lambda d: d.update(version=True)), "version True"),
        ("settings not an object", edit(lambda d: d.update(settings=[])), "settings"),
    ]


def test_malformed_results_files_name_the_file_and_the_field(files, tmp_path, capsys):
    data = json.loads(files["results"].read_text())
    # A layer of each kind (the fixture): a program, and one that keeps the baseline converter.
    assert "g_lst" in data["layers"][0] and "converter" in data["layers"][1]
    for name, broken, fragment in _mutations(data):
        path = tmp_path / "broken.json"
        path.write_text(json.dumps(broken).replace('"__HUGE__"', "1e999"))  # reads as inf
        with pytest.raises(ValueError) as err:
            load_result(path)
        message = str(err.value)
        assert "broken.json" in message and fragment in message, (name, message)
        assert "\n" not in message
        assert main(["evaluate", str(path), str(files["pt"]), "--quiet"]) == 2, name
        _one_line(capsys.readouterr().err, "broken.json")


def test_a_program_with_a_bad_table_names_its_field(files, tmp_path):
    data = json.loads(files["results"].read_text())
    i = next(i for i, layer in enumerate(data["layers"]) if "g_lst" in layer)
    cases = [({"g_lst": [[1.0, 2.0], [3.0]]}, f"layers[{i}].g_lst"),
             ({"g_lst": [["a"]]}, f"layers[{i}].g_lst[0][0]"),
             ({"f_lst": "x"}, f"layers[{i}].f_lst"),
             ({"g_dtype": "float128"}, "unknown dtype"),
             ({"g_dtype": "float16", "g_lst": [[1e10] * 11] * 4}, "out of the range")]
    for change, fragment in cases:
        broken = json.loads(json.dumps(data))
        broken["layers"][i].update(change)
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match="bad.json") as err:
            load_result(path)
        assert fragment in str(err.value), (change, err.value)


def test_results_files_that_are_not_json_or_too_deep(tmp_path):
    path = tmp_path / "r.json"
    for content, fragment in ((b"\xff\xfe", "not UTF-8"), (b"[" * 100_000, "nested too deeply"),
                              (b'{"a": 1', "not valid JSON"), (b"1" * 5000, "not a")):
        path.write_bytes(content)
        with pytest.raises(ValueError, match="r.json") as err:
            load_result(path)
        assert fragment in str(err.value), (content[:10], err.value)
    with pytest.raises(ValueError, match="is a directory"):
        load_result(tmp_path)


# --------------------------------------------------------------------------------------------
# Weight files: sizes checked before allocating; malformed files in gpuwpo's words
# --------------------------------------------------------------------------------------------


def _npy_claiming(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin1")
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 16


def test_a_small_file_claiming_terabytes_is_refused_without_allocating(tmp_path):
    path = tmp_path / "huge.npy"
    path.write_bytes(_npy_claiming((1 << 20, 1 << 20)))  # 4 TiB of float32
    assert path.stat().st_size < 200
    with pytest.raises(ValueError, match=r"huge\.npy.*claims 4398046511104 bytes"):
        load_weights(path)
    # The same lie inside an .npz archive (stored and deflated members).
    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        archive = tmp_path / f"huge{compression}.npz"
        with zipfile.ZipFile(archive, "w", compression) as z:
            z.writestr("layer.weight.npy", _npy_claiming((1 << 20, 1 << 20)))
        with pytest.raises(ValueError, match=rf"huge{compression}\.npz.*'layer.weight'"):
            load_weights(archive)
    # A zip member whose declared size is more than its compressed bytes can hold.
    archive = tmp_path / "liar.npz"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        z.writestr("w.npy", _npy_claiming((2, 2)))
    raw = bytearray(archive.read_bytes())
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 24:central + 28] = (1 << 31).to_bytes(4, "little")  # uncompressed size
    archive.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"liar\.npz"):
        load_weights(archive)


def test_malformed_weight_files_are_one_line_in_gpuwpos_words(tmp_path, capsys):
    rng = np.random.default_rng(1)
    cases = {
        "random.pt": rng.bytes(300),
        "random.pth": b"PK\x03\x04" + rng.bytes(300),
        "random.npy": rng.bytes(300),
        "random.npz": rng.bytes(300),
        "random.safetensors": rng.bytes(300),
        "empty.pt": b"",
        "lying.safetensors": (1 << 40).to_bytes(8, "little") + b"{}",
        "short.safetensors": b"\x10\x00",
    }
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000, 1000],
                               "data_offsets": [0, 4_000_000]}}).encode()
    cases["truncated.safetensors"] = len(header).to_bytes(8, "little") + header + b"\0" * 64
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError) as err:
            load_weights(path)
        message = str(err.value)
        assert name in message and "\n" not in message, message
        for foreign in ("pop from empty list", "weights_only=False", "SafetensorError",
                        "KeyError", "JSONDecodeError", "Traceback", "invalid load key"):
            assert foreign not in message, message
        assert main(["optimize", str(path), *TINY]) == 2
        _one_line(capsys.readouterr().err, name)
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        load_weights(tmp_path / "dir.pt")


def test_a_pickled_object_is_refused_without_torchs_advice(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"net": nn.Linear(2, 2)}, path)
    with pytest.raises(ValueError, match="holds Python objects") as err:
        load_weights(path)
    assert "weights_only" not in str(err.value)


def test_big_endian_and_fortran_arrays_load_as_they_are(tmp_path):
    array = np.arange(12, dtype=">f8").reshape(3, 4)
    np.save(tmp_path / "be.npy", array)
    np.save(tmp_path / "f.npy", np.asfortranarray(array.astype("<f4")))
    assert torch.equal(load_weights(tmp_path / "be.npy")["weight"],
                       torch.arange(12, dtype=torch.float64).reshape(3, 4))
    assert torch.equal(load_weights(tmp_path / "f.npy")["weight"],
                       torch.arange(12, dtype=torch.float32).reshape(3, 4))


# --------------------------------------------------------------------------------------------
# Ctrl-C: exit 130 and one line, at start-up and during the search
# --------------------------------------------------------------------------------------------


def _wait_until(predicate, timeout: float = 120.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return False


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_PROC, reason="watches /proc/PID/maps for torch being loaded")
def test_ctrl_c_while_starting_exits_130_with_one_line(files):
    proc = subprocess.Popen([sys.executable, "-m", "gpuwpo", "optimize", str(files["pt"]),
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)

    def torch_loading() -> bool:
        try:
            return "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text()
        except OSError:
            return True

    assert _wait_until(torch_loading)  # inside `import torch`: deterministic, no sleep
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err == "gpuwpo: interrupted\n"


@pytest.mark.slow
@pytest.mark.parametrize("interrupted, status", [(True, 130), (False, 2)])
def test_an_error_after_ctrl_c_is_reported_as_the_interruption(monkeypatch, tmp_path, capsys,
                                                               interrupted, status):
    # Ctrl-C landing in an extension module's initialisation can surface as ImportError
    # ("initialization failed"): once the handler has recorded the interrupt, any error is it.
    from gpuwpo import _startup, cli

    monkeypatch.setattr(_startup, "interrupted", interrupted)
    assert cli.main(["optimize", str(tmp_path / "missing.pt")]) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "gpuwpo: interrupted" if interrupted else err[-1].startswith(
        "gpuwpo: error:")


def test_ctrl_c_during_the_search_exits_130_and_keeps_the_old_results(files, tmp_path):
    out = tmp_path / "r.json"
    out.write_bytes(files["results"].read_bytes())
    before = out.read_bytes()
    # No convergence stop: on this tiny tile the search converges within a second otherwise,
    # and would end by itself before the interrupt arrives.
    config = tmp_path / "never-converge.toml"
    config.write_text("tol = 0.0\natol = 0.0\n", encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpuwpo", "optimize", str(files["pt"]), "--config", str(config),
         "--popsize", "4", "--maxiter", "100000", "--test-size", "16", "8", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "layer(s)" in proc.stdout.readline()  # the weights are loaded: the search starts
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "gpuwpo: interrupted" and "Traceback" not in err
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["never-converge.toml", "r.json"]


@pytest.mark.parametrize("text, fragment", [
    ('symmetric = "no"', "setting symmetric must be true or false"),
    ('global = "yes"', "setting global must be true or false"),
    ("baseline = 5", "setting baseline"),
    ("test_size = 5", "setting test_size"),
    ("seed = -1", "setting seed"),
    ("physics = 2", "setting physics"),
    ("f_lst = 3", "setting f_lst"),
    ("times = [-1]", "setting times"),
    ('compensation = {class = "GlobalDriftCompensation", exact_reference = "false"}',
     "exact_reference must be True or False"),
])
def test_config_settings_of_the_wrong_type_are_refused_up_front(files, tmp_path, capsys, text,
                                                                 fragment):
    config = tmp_path / "c.toml"
    config.write_text(text + "\n")
    assert main(["optimize", str(files["pt"]), "--config", str(config)]) == 2
    captured = capsys.readouterr()
    _one_line(captured.err, "c.toml", fragment)
    assert captured.out == ""


def test_plot_names_the_weights_file_of_another_network(files, tmp_path, capsys):
    weights = tmp_path / "other.pt"
    torch.save({**_state(), "fc2.weight": torch.randn(4, 4)}, weights)
    assert main(["plot", str(files["results"]), "--out", str(tmp_path / "figs"), "--weights",
                 str(weights)]) == 2
    _one_line(capsys.readouterr().err, "other.pt", "'fc2.weight' has shape (4, 4)", "(4, 8)")
    assert not (tmp_path / "figs").exists()


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_a_device_is_not_read_as_a_file(capsys):
    for argv in (["optimize", "/dev/null"], ["evaluate", "/dev/null", "/dev/null"]):
        assert main(argv) == 2
        _one_line(capsys.readouterr().err, "/dev/null", "not a regular file")


def test_bad_weights_are_named_with_their_file_before_any_work(tmp_path, capsys):
    bad = {k: v.numpy().copy() for k, v in _state().items()}
    bad["fc2.weight"][1, 2] = np.nan
    np.savez(tmp_path / "nan.npz", **bad)
    np.savez(tmp_path / "zeros.npz", **{"z.weight": np.zeros((3, 3), np.float32)})
    for name, fragment in (("nan.npz", "'fc2.weight' have 1 NaN"), ("zeros.npz", "all zeros")):
        assert main(["optimize", str(tmp_path / name), *TINY]) == 2
        captured = capsys.readouterr()
        _one_line(captured.err, name, fragment)
        assert "layer(s)" not in captured.out  # before the search announces itself


def test_example_out_may_be_a_new_directory_but_not_over_foreign_files(tmp_path, capsys,
                                                                       monkeypatch):
    import gpuwpo.example

    calls = []
    monkeypatch.setattr(gpuwpo.example, "run_example", lambda **kw: calls.append(kw))
    new = tmp_path / "new" / "dir"
    assert main(["example", "--quick", "--out", str(new)]) == 0  # made by the example itself
    assert calls and calls[0]["out_dir"] == str(new)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "digits_result.json").write_text("my own file\n")
    assert main(["example", "--quick", "--out", str(taken)]) == 2
    _one_line(capsys.readouterr().err, "digits_result.json", "not a gpuwpo results file")
    assert len(calls) == 1
