"""bench/quality.py: the reduction-versus-candidates curves run end to end (tiny budget)."""

from __future__ import annotations

import json

import pytest
import torch

import gpuwpo
from bench import quality
from gpuwpo.device.mapping import Recipe


@pytest.mark.slow
def test_quality_curves_quick(tmp_path, capsys):
    payload = quality.main(["--quick", "--problems", "synthetic", "--physics", "device",
                            "--methods", "tuned", "tuned-unseeded", "scipy", "cmaes",
                            "--out-dir", str(tmp_path)])
    [path] = tmp_path.glob("quality-*.json")
    assert json.loads(path.read_text())["records"] == json.loads(json.dumps(
        payload["records"]))
    assert path.with_suffix(".png").stat().st_size > 0
    methods = [r["method"] for r in payload["records"]]
    assert methods == ["tuned", "tuned-unseeded", "scipy", "cmaes"]
    for r in payload["records"]:
        assert r["curve"], r["method"]
        counts = [p["candidates"] for p in r["curve"]]
        assert counts == sorted(counts) and counts[-1] <= payload["budget"] + 100
        for p in r["curve"]:
            assert -100 < p["reduction"] < 1 and p["se"] >= 0
            # Judged against both baselines: the per-column one is the better, so every point
            # gains more against the layer-wise one.
            assert p["reduction_layerwise"] > p["reduction"] and p["se_layerwise"] >= 0
        assert r["mapping"] == r["baseline_mapping"] == "columnwise"
        choice = r["choice"]
        assert len(choice["chosen"]) == len(choice["mappings"]) == 4
        assert set(choice["mappings"]) <= {"columnwise", "layer"}
    # Seeded runs start from the standard converters, which beat DualPair [1, 1] here.
    seeded = payload["records"][0]["curve"][0]["reduction"]
    unseeded = payload["records"][1]["curve"][0]["reduction"]
    assert seeded > unseeded
    assert "| synthetic | device | tuned |" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.partial-*"))  # a finished run leaves only its results


def test_judge_against_both_baselines(keep_threads):
    # The per-column baseline judged as a method's answer gains exactly 0 against itself, and
    # against the layer-wise baseline what the mapping alone gains; the layer-wise baseline
    # judged as an answer gains 0 against itself (the same draws: paired).
    layers = dict(list(quality.synthetic_layers(0).items())[:2])
    opt = gpuwpo.WeightProgrammingOptimizer(
        list(layers.values()), [None, None], gpuwpo.PCMLikeNoiseModel(), [1.0, 86400.0],
        quality._baseline_converter(), device="cpu", disp=False, test_in_features=16,
        test_out_features=8)
    tiles = quality.judge_tiles(list(layers.values()), opt)
    assert tiles.rows and torch.equal(tiles.weights, opt.objective.tiles.weights)
    sizes = torch.tensor([float(w.numel()) for w in layers.values()], dtype=torch.float64)
    base = quality._baseline_converter()

    def judged(mapping: str) -> dict:
        return quality.judge(tiles, [Recipe(base, mapping)] * 2, sizes, opt.noise_model,
                             "device", repeats=6, seed=3)

    per_column, layerwise = judged("columnwise"), judged("layer")
    assert per_column["reduction"] == 0.0 and per_column["se"] == 0.0
    assert layerwise["reduction_layerwise"] == 0.0 and layerwise["se_layerwise"] == 0.0
    # Heavy-tailed rows: each row over its own max is far better than one scale per layer.
    assert per_column["reduction_layerwise"] > 0.3
    assert layerwise["reduction"] < -0.3


def test_finished_curves_survive_an_interrupted_run(tmp_path, monkeypatch):
    def one_curve_then_interrupted(layers, method, physics, **kwargs):
        if done:
            raise KeyboardInterrupt
        done.append(method)
        return {"method": method, "physics": physics, "search_wall_s": 0.0,
                "curve": [{"candidates": 10, "at": 10, "reduction": 0.1, "se": 0.0}]}

    done: list[str] = []
    monkeypatch.setattr(quality, "run_curve", one_curve_then_interrupted)
    monkeypatch.setattr(quality, "problem_layers", lambda problem, seed: {})
    with pytest.raises(KeyboardInterrupt):
        quality.main(["--problems", "synthetic", "--physics", "device", "--methods", "tuned",
                      "scipy", "--out-dir", str(tmp_path)])
    [partial] = tmp_path.glob("quality.partial-*.json")
    assert [r["method"] for r in json.loads(partial.read_text())["records"]] == ["tuned"]
