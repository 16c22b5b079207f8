"""bench/quality.py: the reduction-versus-candidates curves run end to end (tiny budget)."""

from __future__ import annotations

import json

import pytest

from bench import quality


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
    # Seeded runs start from the standard converters, which beat DualPair [1, 1] here.
    seeded = payload["records"][0]["curve"][0]["reduction"]
    unseeded = payload["records"][1]["curve"][0]["reduction"]
    assert seeded > unseeded
    assert "| synthetic | device | tuned |" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.partial-*"))  # a finished run leaves only its results


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
