"""Smoke tests of bench/search.py, bench/network.py and bench/common.py.

The scripts' ``main`` runs end to end on tiny sizes and budgets (``--quick``) and writes a
record with the keys the results tables and the GPU runs rely on, and that says what budget it
used. No timing is asserted: timing belongs in bench/, and this machine is shared.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import gpuwpo
from gpuwpo.device.mapping import Recipe
from gpuwpo.search.selection import choose_per_layer
from tests._bench import BENCH, load_script, script_help


def _read_single_json(directory: Path, prefix: str) -> dict:
    files = sorted(directory.glob(f"{prefix}-*.json"))
    assert len(files) == 1, files
    assert not list(directory.glob(".*.tmp")), "atomic write left a temporary file"
    return json.loads(files[0].read_text(encoding="utf-8"))


MACHINE_KEYS = {"name", "cpu_model", "cpu_cores", "ram_gib", "gpu", "gpu_memory_gib", "python",
                "versions", "date"}


def test_machine_info_has_no_hostname_and_a_file_safe_name():
    common = load_script("common")
    info = common.machine_info()
    assert MACHINE_KEYS <= set(info)
    assert {"torch", "triton", "scipy", "evotorch", "gpuwpo"} <= set(info["versions"])
    assert info["versions"]["torch"] == torch.__version__
    import socket

    assert socket.gethostname() not in json.dumps(info)
    assert all(c.isalnum() or c == "-" for c in info["name"])
    expected = "nvidia-" if torch.cuda.is_available() else f"cpu-{info['cpu_cores']}core-"
    assert info["name"].startswith(expected)


def test_short_name_keeps_vendor_and_family():
    common = load_script("common")
    assert common._short_name("x", 8, "NVIDIA H100 80GB HBM3") == "nvidia-h100"
    assert common._short_name("x", 8, "NVIDIA H200") == "nvidia-h200"
    assert common._short_name("AMD EPYC 7B13 64-Core Processor", 2, None) == "cpu-2core-amd-epyc"
    assert common._short_name("Intel(R) Xeon(R) Platinum 8480+", 4, None) == \
        "cpu-4core-intel-xeon"


def test_write_results_embeds_machine_and_replaces_atomically(tmp_path):
    common = load_script("common")
    path = common.write_results("demo", {"value": 1}, tmp_path)
    assert path.parent == tmp_path and path.name.startswith("demo-")
    first = json.loads(path.read_text())
    assert first["benchmark"] == "demo" and first["value"] == 1
    assert MACHINE_KEYS <= set(first["machine"])
    # Same machine, same file: a second run replaces the first.
    assert common.write_results("demo", {"value": 2}, tmp_path) == path
    assert json.loads(path.read_text())["value"] == 2
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    with pytest.raises(ValueError, match="file-name safe"):
        common.write_results("../escape", {}, tmp_path)


def test_markdown_table_shape_alignment_and_cells():
    common = load_script("common")
    text = common.markdown_table(
        [{"a": "x|y", "b": 1.234567, "c": True}, {"a": "z", "b": "2.5", "c": None}],
        ["a", ("b", "B value"), "c"])
    lines = text.splitlines()
    assert lines[0] == "| a | B value | c |"
    assert lines[1] == "| --- | ---: | --- |"
    assert lines[2] == "| x\\|y | 1.235 | yes |"
    assert lines[3] == "| z | 2.5 | - |"


def _run_quick(name: str, tmp_path: Path, *extra: str) -> dict:
    """Run a benchmark's main with --quick into tmp_path; the record it wrote, checked."""
    record = load_script(name).main(["--quick", "--out-dir", str(tmp_path), *extra])
    written = _read_single_json(tmp_path, name)
    assert written == json.loads(json.dumps({"benchmark": name, **record}))
    assert written["quick"] is True and "REDUCED" in written["budget_note"]
    return written


def _check_profile(profile: dict) -> None:
    # WallProfile's account: the phases and what is outside them add up to the wall time.
    total = sum(p["s"] for p in profile["phases"].values()) + profile["outside_phases_s"]
    assert total == pytest.approx(profile["wall_s"])
    assert 0 < profile["evaluation_s"] <= profile["wall_s"]
    assert profile["phases"]["search (DE)"]["calls"] >= 1


def test_search_benchmark_quick(tmp_path, capsys, keep_threads):
    written = _run_quick("search", tmp_path, "--toolkit", "off")
    assert written["config"]["shape"] == [64, 64]
    assert written["config"]["t_steps_s"] == [1.0, 3600.0, 86400.0, 2592000.0, 31536000.0]
    results = written["results"]
    assert [r["backend"] for r in results] == ["torch", "evotorch", "scipy"]
    for r in results:
        assert r["popsize"] == 2 and r["maxiter"] == 2 and r["full_default_budget"] is False
        assert r["dim"] == 21 and r["population"] == 42
        assert r["generations"] == 2 and r["candidates"] >= r["population"]
        lo, hi = r["tnmse_ci95"]
        assert lo <= r["tnmse"] <= hi
        blo, bhi = r["baseline_ci95"]
        assert blo <= r["baseline_tnmse"] <= bhi
        assert isinstance(r["success"], bool)
        assert r["wall_time_s"] >= r["search_s"] > 0
        for key in ("candidates_per_s", "device", "baseline_s", "validation_polish_s",
                    "improvement", "optimizer_options"):
            assert key in r
        assert r["optimizer_options"]["validation_repeats"] == 4
        _check_profile(r["profile"])
        assert r["search_s"] == pytest.approx(r["profile"]["phases"]["start ranking"]["s"]
                                              + r["profile"]["phases"]["search (DE)"]["s"])
    assert written["toolkit"] is None
    # All backends see the same test weights and baseline seed, so the same baseline.
    assert len({r["baseline_tnmse"] for r in results}) == 1
    out = capsys.readouterr().out
    assert "| torch | " in out and "| evotorch (de) | " in out and "(reduced)" in out


def test_network_benchmark_quick(tmp_path, capsys, keep_threads):
    written = _run_quick("network", tmp_path, "--toolkit", "off")
    r = written["result"]
    assert r["num_layers"] == 3 and len(r["layers"]) == 3
    assert [layer["kind"] for layer in r["layers"]] == ["query", "key", "value"]
    assert r["generations"] == 2 and r["candidates"] > 0
    assert r["full_default_budget"] is False and r["popsize"] == 2 and r["maxiter"] == 2
    assert r["peak_rss_mib"] > 0
    assert (r["peak_gpu_memory_gib"] is None) == (not torch.cuda.is_available())
    assert 0 <= r["layers_success"] <= r["layers_improved"] <= 3
    # The total is the size-weighted mean of the layers (all the same size here).
    assert r["total_tnmse"] == pytest.approx(sum(x["tnmse"] for x in r["layers"]) / 3)
    for key in ("wall_time_s", "total_baseline_tnmse", "total_improvement", "settings",
                "stop_reason"):
        assert key in r
    _check_profile(r["profile"])
    assert r["profile"]["wall_s"] == pytest.approx(r["wall_time_s"], rel=0.05, abs=0.05)
    # Against the per-column baseline by default, the layer-wise one measured beside it.
    assert r["baseline_recipe"] == "DualPair f=[1, 1], per-column mapping"
    assert written["config"]["baseline_mapping"] == "columnwise"
    assert r["total_layerwise_improvement"] == pytest.approx(
        1 - r["total_tnmse"] / r["total_layerwise_baseline_tnmse"])
    for layer in r["layers"]:
        assert layer["mapping"] in ("columnwise", "layer") and 0 < layer["clip"] <= 1
        assert "baseline" in layer["contenders"] and layer["chosen"] in (
            *layer["contenders"], "baseline")
        contest = layer["search_vs_start"]
        if contest.get("ended_on_start"):
            assert contest["gain"] == 0.0 and "search" not in layer["contenders"]
        elif "search" in contest:
            assert contest["search"]["label"] in ("search", "polish")
            assert contest["start"]["label"].startswith("start: ")
            assert contest["gain"] == pytest.approx(1 - contest["search_tnmse"]
                                                    / contest["start_tnmse"])
    summary = r["search_vs_start"]
    assert summary["layers"] == 3 and summary["ended_on_start"] + summary["left_start"] <= 3
    out = capsys.readouterr().out
    assert "layers beating baseline by margin" in out and "Where the wall time went" in out
    assert "below layer-wise baseline" in out and "its best standard start" in out


def test_search_vs_start_is_paired_on_fresh_noise(keep_threads):
    # One layer's recorded choice, its contenders chosen by hand: a "search" that is its best
    # start gains exactly 0 (the same draws); one that is the layer-wise baseline against the
    # per-column NPair f=[1, 4] loses with confidence (a negative control).
    network = load_script("network")
    weights = network.bert_shaped_weights(hidden=32, intermediate=64, blocks=1, max_layers=1)
    opt = gpuwpo.WeightProgrammingOptimizer(
        list(weights.values()), [None, None], gpuwpo.PCMLikeNoiseModel(), [1.0, 86400.0],
        gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0), device="cpu", disp=False,
        test_in_features=16, test_out_features=8)
    start = Recipe(gpuwpo.NPairConductanceConverter([1.0, 4.0], 0.0, 25.0), "columnwise")
    worse = Recipe(gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0), "layer")
    baseline = Recipe(gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0), "columnwise")
    for search, check in ((start, lambda row: row["gain"] == 0.0 and row["gain_se"] == 0.0),
                          (worse, lambda row: row["gain"] + 3 * row["gain_se"] < 0)):
        contenders = [[("start: NPair f=[1, 4]", start), ("search", search)]]
        choices = choose_per_layer(opt.objective, contenders, baseline, repeats=4, seed=1)
        (row,) = network.search_vs_start({"objective": opt.objective, "contenders": contenders,
                                          "choices": choices}, repeats=8, seed=5)
        assert row["search"]["label"] == "search" and not row["ended_on_start"]
        assert check(row), row


@pytest.mark.slow
def test_search_and_network_beside_the_toolkit(tmp_path, capsys, keep_threads):
    # The reference toolkit timed in the same run: its loss, its own short DE, and each row's
    # estimate of its wall time at that budget.
    pytest.importorskip("aihwkit")
    written = _run_quick("search", tmp_path, "--toolkit", "on", "--backends", "torch")
    tk = written["toolkit"]
    assert len(written["toolkit_runs"]) == 2 and tk["measurements"] == 2
    assert tk["loss"]["loss_weights"]["ms_per_candidate"] > 0
    assert tk["search"]["candidates"] == 1 * 21 * 3 and tk["search"]["dim"] == 21
    (row,) = written["results"]
    expected = (row["optimizer_options"]["baseline_iterations"]
                * tk["search"]["baseline_s_per_iteration"]
                + 2 * 21 * 3 * tk["search"]["s_per_candidate"])
    assert row["toolkit_estimated_wall_s"] == pytest.approx(expected)
    assert row["speedup_vs_toolkit"] == pytest.approx(expected / row["wall_time_s"])
    net = _run_quick("network", tmp_path / "net", "--toolkit", "on")
    r = net["result"]
    assert r["toolkit_same_candidates_s"] == pytest.approx(
        r["candidates"] * net["toolkit"]["search"]["s_per_candidate"])
    assert "aihwkit 1.1.0" in capsys.readouterr().out


def test_bert_shaped_weights_full_layout_and_determinism():
    network = load_script("network")
    # Shapes only (small hidden size), but the full BERT-base layout: 12 blocks x 6 + pooler.
    ws = network.bert_shaped_weights(hidden=8, intermediate=32, seed=3)
    assert len(ws) == 73
    names = list(ws)
    assert names[0] == "encoder.layer.0.attention.self.query.weight"
    assert names[-1] == "pooler.dense.weight"
    assert ws["encoder.layer.5.intermediate.dense.weight"].shape == (32, 8)
    assert ws["encoder.layer.5.output.dense.weight"].shape == (8, 32)
    again = network.bert_shaped_weights(hidden=8, intermediate=32, seed=3)
    assert all(torch.equal(ws[n], again[n]) for n in names)
    kinds = [network._kind(n) for n in names]
    assert kinds.count("query") == 12 and kinds.count("output") == 12
    assert kinds.count("attention output") == 12 and kinds.count("pooler") == 1


@pytest.mark.slow
@pytest.mark.parametrize("args", [("-m", "bench.search"), (str(BENCH / "network.py"),)])
def test_scripts_run_as_module_and_as_file_help(args):
    # Both invocation styles must at least import and parse (--help exits 0).
    assert "--out-dir" in script_help(*args)


def test_judge_quick(tmp_path, keep_threads):
    pytest.importorskip("aihwkit")
    out = tmp_path / "judge.json"
    record = load_script("judge").main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps({"benchmark": "judge",
                                                                   **record}))
    assert [r["readout"] for r in record["runs"]] == ["ideal", "default"]
    assert record["config"]["mapping"] == "columnwise"  # gpuwpo's default baseline mapping
    strategies = ["gpuwpo", "F=1", "F=2", "F=3", "F=4", "F=5"]
    for r in record["runs"]:
        assert r["mapping"] == "columnwise" and len(r["layers"]) == 3
        for row in r["layers"]:
            assert list(row["judged"]) == strategies
            assert all(c["n"] == 3 and c["mean"] > 0 for c in row["judged"].values())
            assert row["best_f"] == min(strategies[1:], key=lambda k: row["judged"][k]["mean"])
            assert row["mapping"] in ("columnwise", "layer")
        # The total is the layers' sum, repeat by repeat.
        for key in strategies:
            per_repeat = torch.tensor([row["judged"][key]["values"] for row in r["layers"]],
                                      dtype=torch.float64).sum(0)
            assert r["totals"][key]["mean"] == pytest.approx(float(per_repeat.mean()))
        base = r["totals"]["F=1"]["mean"]
        assert r["vs_baseline"]["reduction"] == pytest.approx(
            1 - r["totals"]["gpuwpo"]["mean"] / base)


def test_judge_margin_is_paired():
    judge = load_script("judge")
    theirs = judge._stats(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    # The same values shifted: a paired difference without spread.
    ours = judge._stats(torch.tensor([0.9, 1.9, 2.9, 3.9], dtype=torch.float64))
    m = judge._margin(ours, theirs)
    assert m["reduction"] == pytest.approx(0.1 / 2.5) and m["se"] == pytest.approx(0.0)
    # Negative control: the same values in another order are no longer paired.
    shuffled = judge._stats(torch.tensor([3.9, 0.9, 2.9, 1.9], dtype=torch.float64))
    assert judge._margin(shuffled, theirs)["se"] > 0.1


@pytest.mark.slow
def test_dropin_quick(tmp_path, keep_threads):
    pytest.importorskip("aihwkit")
    out = tmp_path / "dropin.json"
    record = load_script("dropin").main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps({"benchmark": "dropin",
                                                                   **record}))
    names = [r["strategy"] for r in record["rows"]]
    assert names == ["DualPair f=[1, 1] (baseline)", "gpuwpo.wpo",
                     "aihwkit.inference.converter.wpo"]
    assert all(r["wall_s"] > 0 for r in record["rows"][1:])
    assert isinstance(record["rows"][1]["success"], bool)


def test_noise_floor_quick(tmp_path, keep_threads):
    out = tmp_path / "noise_floor.json"
    record = load_script("noise_floor").main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps({"benchmark": "noise_floor",
                                                                   **record}))
    (run,) = record["runs"]
    # Per layer: three device models, then the default model at three clip fractions, then
    # the per-column mapping unclipped and at three row clip fractions.
    assert run["weights"] == "bert-shaped" and len(run["rows"]) == 2 * (3 + 3 + 4)
    for row in run["rows"]:
        assert set(row["reduction"]) == {"1", "1.5", "2", "3", "4", "5"}
        assert row["baseline_tnmse"] > 0 and row["max_over_std"] > 1
        if "clip_fraction" not in row and row.get("row_clip_fraction", 1.0) == 1.0:
            # F = 1 unclipped is the baseline itself (under its mapping)
            assert row["reduction"]["1"] == 0.0 and row["reduction_se"]["1"] == 0.0
    per_column = [r for r in run["rows"] if r.get("mapping") == "columnwise"]
    assert sorted({r["row_clip_fraction"] for r in per_column}) == [0.3, 0.5, 0.7, 1.0]
    for row in per_column:
        # Every row over its own max: better than one scale for the layer (Student-t rows).
        assert row["per_column_vs_layerwise"]["reduction"] > 0
    clipped = [r for r in run["rows"] if "clip_fraction" in r]
    assert sorted({r["clip_fraction"] for r in clipped}) == [0.3, 0.5, 0.7]
    # These small layers are light-tailed (max/std about 10): clipping at 0.3 max|W| costs far
    # more than it gains, and the less clipped the better.
    for layer in {r["layer"] for r in clipped}:
        f1 = {r["clip_fraction"]: r["reduction"]["1"] for r in clipped if r["layer"] == layer}
        assert f1[0.3] < f1[0.5] < f1[0.7] < 0
    # Without programming noise the baseline's error can only fall.
    by_model = {(r["layer"], r["model"]): r["baseline_tnmse"] for r in run["rows"]}
    for layer in {r["layer"] for r in run["rows"]}:
        assert by_model[layer, "no programming noise"] < by_model[layer, "default"]


@pytest.mark.slow
def test_importance_quick(tmp_path, keep_threads):
    record = load_script("importance").main(["--quick", "--out-dir", str(tmp_path),
                                             "--models", "digits_mlp", "--seeds", "100"])
    written = _read_single_json(tmp_path, "importance")
    assert written == json.loads(json.dumps({"benchmark": "importance", **record}))
    ((run,),) = [m["runs"] for m in record["models"]]
    assert run["physics"] == "device" and [r["seed"] for r in run["runs"]] == [100]
    # Every layer's energies are non-negative (some pixels of a digit image are always 0),
    # and the pooled paired differences have one figure per inference time.
    assert all(0 <= e["min"] <= e["mean"] <= e["max"] and 0 < e["effective_share"] <= 1
               for e in run["energies"].values())
    assert set(run["energies"]) == set(run["tile_bias"])
    n_times = len(record["config"]["times"])
    for diff in ("importance - plain",):
        assert len(run["pooled"][diff]["mean"]) == n_times
        assert all(s >= 0 for s in run["pooled"][diff]["sem"])
