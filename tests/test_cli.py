"""The ``gpuwpo`` command line: every command on tiny inputs, and bad input -> one line, exit 2.

The commands run as a user runs them (``python -m gpuwpo ...`` in a subprocess) where the exit
status and the absence of a traceback are the point; the cheaper error cases call ``main`` in
the test process. Budgets are tiny (population 2 x D, 2 generations, a 16 x 8 test tile).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from gpuwpo import DualPairConductanceConverter, PCMLikeNoiseModel
from gpuwpo.cli import main, parse_f_lst, parse_times
from gpuwpo.io import load_result

TINY = ["--popsize", "2", "--maxiter", "2", "--test-size", "16", "8",
        "--baseline-iterations", "2", "--validation-repeats", "2", "--times", "1,1h,1y"]


def _state_dict() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"fc1.weight": torch.randn(8, 16, generator=gen) * 0.3,
            "fc1.bias": torch.randn(8, generator=gen),
            "fc2.weight": torch.randn(4, 8, generator=gen) * 0.3}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    sd = _state_dict()
    paths = {"pt": d / "net.pt", "safetensors": d / "net.safetensors", "npz": d / "net.npz",
             "nan": d / "nan.npz", "txt": d / "net.txt", "corrupt": d / "corrupt.npz"}
    torch.save(sd, paths["pt"])
    save_file(sd, str(paths["safetensors"]))
    np.savez(paths["npz"], **{k: v.numpy() for k, v in sd.items()})
    bad = {k: v.numpy().copy() for k, v in sd.items()}
    bad["fc2.weight"][1, 2] = np.nan
    np.savez(paths["nan"], **bad)
    paths["txt"].write_text("fc1.weight 1 2 3\n")
    paths["corrupt"].write_bytes(b"PK\x03\x04 this is not really a zip archive")
    paths["dir"] = d
    return paths


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpuwpo", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def _assert_one_line_error(stderr: str, *fragments: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("gpuwpo: error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr


# --------------------------------------------------------------------------------------------
# The commands, end to end (subprocess)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_optimize_evaluate_plot(files):
    d = files["dir"]
    out, plots_dir = d / "res.json", d / "plots"
    proc = _run("optimize", files["safetensors"], *TINY, "--out", out, "--plots", plots_dir,
                "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "fc1.weight" in proc.stdout and "fc2.weight" in proc.stdout  # the summary
    assert "fc1.bias" not in proc.stdout  # 1-D tensors are not crossbar weights
    result = load_result(out)
    assert [layer.name for layer in result.layers] == ["fc1.weight", "fc2.weight"]
    assert result.settings["t_steps"] == [1.0, 3600.0, 31536000.0]
    assert result.settings["f_lst"] == [None, None]
    assert not list(d.glob(".res.json.*"))  # no temporary file left behind
    for name in ("programming_curves.png", "convergence.png", "weight_errors.png"):
        assert (plots_dir / name).read_bytes()[:4] == b"\x89PNG"

    proc = _run("evaluate", out, files["pt"], "--repeats", "2", "--quiet")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for name in ("fc1.weight (8, 16)", "fc2.weight (4, 8)", "overall (weighted by layer size)"):
        assert name in text
    # Each of the three tables: a header, one row per time of the results file, the TNMSE
    # (the mean over the times); every row holds baseline and optimised, mean +- SE, and gain,
    # and, where the recorded baseline is not layer-wise, the layer-wise baseline and the gain
    # against it.
    layerwise = result.baseline.mapping != "layer"
    assert ("vs layer-wise" in text) is layerwise
    rows = [line.split() for line in text.splitlines() if line.startswith("  ")]
    assert [r[0] for r in rows] == ["time", "1", "1", "1", "TNMSE"] * 3
    assert [r[1] for r in rows if r[0] == "1"] == ["s", "h", "year"] * 3
    for r in rows:
        if r[0] != "time":
            cells = r[2:] if r[0] == "1" else r[1:]  # past the time's label
            assert len(cells) == (11 if layerwise else 7)
            base, opt = float(cells[0]), float(cells[3])
            assert base > 0 and opt > 0
            assert float(cells[6].rstrip("%")) == pytest.approx(100 * (1 - opt / base),
                                                                abs=0.11)
            if layerwise:
                flat = float(cells[7])
                assert float(cells[10].rstrip("%")) == pytest.approx(100 * (1 - opt / flat),
                                                                     abs=0.11)

    plot_dir = d / "plot_cmd"
    proc = _run("plot", out, "--out", plot_dir, "--weights", files["npz"], "--repeats", "1")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in plot_dir.glob("*.png")) == [
        "convergence.png", "programming_curves.png", "weight_errors.png"]


@pytest.mark.slow
def test_example_quick():
    proc = _run("example", "--quick", "--quiet", "--repeats", "2", timeout=180)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    rows = {line.split()[0]: line for line in lines if line.split()[:1] in (["baseline"],
                                                                             ["optimised"])}
    assert set(rows) == {"baseline", "optimised"}
    for row in rows.values():
        means = [float(v) for v in row.split()[1::3]]
        assert len(means) == 5 and all(0 <= m <= 100 for m in means)


@pytest.mark.slow
def test_bad_input_in_a_subprocess_is_one_line_and_status_2(files):
    # The real entry point, not just main(): no traceback reaches the user.
    proc = _run("optimize", files["dir"] / "missing.safetensors", *TINY)
    assert proc.returncode == 2
    _assert_one_line_error(proc.stderr, "missing.safetensors")
    proc = _run("optimize", files["pt"], "--backend", "nonsense", *TINY)
    assert proc.returncode == 2
    _assert_one_line_error(proc.stderr, "nonsense", "torch")


@pytest.mark.slow
def test_every_entry_point_is_the_same_command_line(files):
    # python -m gpuwpo, python -m gpuwpo.cli and the console script (its entry point) all run
    # gpuwpo.cli.run: the version, and bad input as one line with status 2.
    for module in ("gpuwpo", "gpuwpo.cli"):
        proc = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.startswith("gpuwpo "), proc.stderr
        proc = subprocess.run([sys.executable, "-m", module, "optimize",
                               str(files["dir"] / "missing.pt")], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2
        _assert_one_line_error(proc.stderr, "missing.pt")
    from importlib.metadata import entry_points

    import gpuwpo.cli

    scripts = [e for e in entry_points(group="console_scripts") if e.name == "gpuwpo"]
    if not scripts:
        pytest.skip("gpuwpo is not installed (pip install -e .): no console script to check")
    assert scripts[0].value == "gpuwpo.cli:run" and scripts[0].load() is gpuwpo.cli.run


# --------------------------------------------------------------------------------------------
# Bad input, in process
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case, fragments", [
    ("missing", ["nowhere.pt"]),
    ("txt", ["net.txt", "extension"]),
    ("corrupt", ["corrupt.npz"]),
    ("nan", ["fc2.weight", "NaN"]),
    ("nomatch", ["nomatch", "fc1.weight"]),
    ("backend", ["unknown backend", "nonsense"]),
    ("out_dir_missing", ["does not exist"]),
])
def test_bad_input_optimize(files, capsys, case, fragments):
    weights = {"missing": files["dir"] / "nowhere.pt", "txt": files["txt"],
               "corrupt": files["corrupt"], "nan": files["nan"]}.get(case, files["pt"])
    extra = {"nomatch": ["--include", "nomatch"], "backend": ["--backend", "nonsense"],
             "out_dir_missing": ["--out", str(files["dir"] / "no" / "such" / "r.json")]}
    argv = ["optimize", str(weights), *TINY, "--quiet", *extra.get(case, [])]
    assert main(argv) == 2
    captured = capsys.readouterr()
    _assert_one_line_error(captured.err, *fragments)
    assert captured.out == ""  # failed before any work


def test_bad_input_evaluate_and_plot(files, tmp_path, capsys):
    not_results = tmp_path / "weights_not_results.json"
    not_results.write_text(json.dumps({"fc1.weight": [1, 2]}))
    cases = [
        (["evaluate", str(not_results), str(files["pt"])], "not a gpuwpo results file"),
        (["evaluate", str(tmp_path / "none.json"), str(files["pt"])], "none.json"),
        (["plot", str(tmp_path / "none.json"), "--out", str(tmp_path / "p")], "none.json"),
    ]
    for argv, fragment in cases:
        assert main(argv) == 2
        _assert_one_line_error(capsys.readouterr().err, fragment)


def test_argparse_errors_are_one_line_too(capsys):
    for argv in (["optimize"], ["optimize", "w.pt", "--popsize", "0"], ["frobnicate"],
                 ["optimize", "w.pt", "--times", "1,soon"], ["optimize", "w.pt", "--f-lst", "a"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        _assert_one_line_error(capsys.readouterr().err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_without_cuda_is_a_clear_error(files, capsys):
    assert main(["optimize", str(files["pt"]), "--device", "cuda", *TINY]) == 2
    _assert_one_line_error(capsys.readouterr().err, "CUDA is not available")


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def test_global_strategy_and_include(files, tmp_path, capsys):
    out = tmp_path / "global.json"
    argv = ["optimize", str(files["npz"]), *TINY, "--global", "--include", "fc2", "--f-lst",
            "1,None", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    result = load_result(out)
    assert [layer.name for layer in result.layers] == ["fc2.weight"]
    assert result.settings["per_layer"] is False
    assert result.settings["f_lst"] == [1.0, None]
    assert "fc2.weight" in capsys.readouterr().out


def test_parse_times_and_f_lst():
    assert parse_times("1, 3600,1d,1mo,1y") == [1.0, 3600.0, 86400.0, 2592000.0, 31536000.0]
    assert parse_times("2.5min") == [150.0]
    assert parse_f_lst("None,none") == [None, None]
    assert parse_f_lst("1, 3.5") == [1.0, 3.5]


# --------------------------------------------------------------------------------------------
# evaluate: every layer checked first, sampled rows for large layers, --full, mapped shapes
# --------------------------------------------------------------------------------------------


def _evaluate_files(d, compensation=None):
    """A weights file (a layer above SAMPLE_WEIGHTS, a small one, a Conv weight) and a results
    file for it (NPair f=[1, 3] programs, no search) recording the physics."""
    from gpuwpo import GlobalDriftCompensation, LayerResult, NetworkResult, save_result
    from gpuwpo.network.result import single_program
    from gpuwpo.registry import to_dict
    from gpuwpo.search.strategy import StrategySpace

    gen = torch.Generator().manual_seed(3)
    weights = {"big.weight": torch.randn(300, 128, generator=gen) * 0.05,
               "small.weight": torch.randn(8, 16, generator=gen) * 0.3,
               "conv.weight": torch.randn(6, 3, 3, 3, generator=gen) * 0.2}
    space = StrategySpace(f_lst=[None, None], g_min=0.0, g_max=25.0)
    layers = [LayerResult(name, tuple(w.shape), single_program(space.to_converter(
        space.encode_npair([1.0, 3.0], 0.9), float(w.abs().max()))), 0.01, (0.009, 0.011),
        0.012, (0.011, 0.013), [], "search", True) for name, w in weights.items()]
    settings = {"t_steps": [1.0, 31536000.0], "physics": "device",
                "noise_model": to_dict(PCMLikeNoiseModel()),
                "baseline": to_dict(DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0)),
                "compensation": to_dict(compensation or GlobalDriftCompensation())}
    result = NetworkResult.from_layers(layers, settings=settings, nit=0, nfev=0, wall_time=0.0,
                                       stop_reason="test")
    save_file(weights, str(d / "eval.safetensors"))
    save_result(result, d / "eval.json")
    return d / "eval.json", d / "eval.safetensors", weights, result


def _printed_rows(text: str, title: str) -> list[list[str]]:
    """The data rows (after the header) of the table titled ``title ...``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 2:]:  # past the title and the column header
        if not line.startswith("  "):
            break
        rows.append(line.split())
    return rows


def _expected(weights, result, name, index, repeats, sample_rows=None):
    """(baseline, optimised) mean E per time as evaluate computes them, from the library."""
    from gpuwpo.device.simulate import converter_errors
    from gpuwpo.network.layers import as_matrix

    layer = result.layers[index]
    errors = converter_errors(
        as_matrix(weights[name]), [DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0),
                                   layer.converter], PCMLikeNoiseModel(),
        [1.0, 31536000.0], repeats=repeats, generator=0, layer_id=index,
        sample_rows=sample_rows).double()
    return errors.mean(1)


def test_evaluate_samples_large_layers_and_says_so(tmp_path, capsys):
    from gpuwpo.device.simulate import SAMPLE_WEIGHTS, sample_rows_for

    res, wfile, weights, result = _evaluate_files(tmp_path)
    threads = torch.get_num_threads()
    assert main(["evaluate", str(res), str(wfile), "--repeats", "3", "--quiet"]) == 0
    assert torch.get_num_threads() == threads  # its one CPU thread is given back
    text = capsys.readouterr().out
    rows = sample_rows_for((300, 128), SAMPLE_WEIGHTS)
    assert rows == 256
    # Each layer's title names its recipe's mapping (layer-wise: a file without mappings).
    assert (f"big.weight (300, 128), layer mapping, a sample of {rows} of its 300 rows per "
            f"programming") in text
    assert "small.weight (8, 16), layer mapping\n" in text
    assert "conv.weight (6, 3, 3, 3), layer mapping\n" in text
    # Its baseline is the recorded one, layer-wise: no layer-wise column beside it.
    assert "baseline: DualPair f=[1, 1], layer-wise mapping\n" in text
    assert "vs layer-wise" not in text
    assert f"1 of 3 layer(s) hold more than {SAMPLE_WEIGHTS} weights" in text
    assert "--full" in text
    # The printed figures are the library's: both converters on one draw, the layer's index
    # keying its noise, a Conv weight at its crossbar shape (6 x 27), the big layer sampled.
    for index, name, sample in ((0, "big.weight", rows), (1, "small.weight", None),
                                (2, "conv.weight", None)):
        want = _expected(weights, result, name, index, 3, sample)
        printed = _printed_rows(text, f"{name} ")
        for i, row in enumerate(printed[:2]):
            assert float(row[-7]) == pytest.approx(float(want[0, i]), abs=6e-6)
            assert float(row[-4]) == pytest.approx(float(want[1, i]), abs=6e-6)


def test_evaluate_full_simulates_every_weight(tmp_path, capsys):
    from gpuwpo.cli.arguments import build_parser
    from gpuwpo.cli.commands import evaluate

    res, wfile, weights, result = _evaluate_files(tmp_path)
    args = build_parser().parse_args(["evaluate", str(res), str(wfile), "--repeats", "3",
                                      "--quiet"])
    args.full = True  # --full (the flag itself is the parser's)
    assert evaluate(args) == 0
    text = capsys.readouterr().out
    assert "a sample" not in text and "hold more than" not in text
    want = _expected(weights, result, "big.weight", 0, 3)
    for i, row in enumerate(_printed_rows(text, "big.weight ")[:2]):
        assert float(row[-7]) == pytest.approx(float(want[0, i]), abs=6e-6)


def test_evaluate_checks_every_layer_before_any_work(tmp_path, capsys):
    res, wfile, weights, _ = _evaluate_files(tmp_path)
    wrong = dict(weights, **{"conv.weight": torch.randn(6, 3, 3, 2)})
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    assert main(["evaluate", str(res), str(tmp_path / "wrong.safetensors"), "--quiet"]) == 2
    captured = capsys.readouterr()
    _assert_one_line_error(captured.err, "conv.weight", "(6, 3, 3, 2)", "(6, 3, 3, 3)")
    assert captured.out == ""  # the first two layers were not simulated first
    missing = {k: v for k, v in weights.items() if k != "conv.weight"}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    assert main(["evaluate", str(res), str(tmp_path / "missing.safetensors"), "--quiet"]) == 2
    captured = capsys.readouterr()
    _assert_one_line_error(captured.err, "no tensor 'conv.weight'")
    assert captured.out == ""
