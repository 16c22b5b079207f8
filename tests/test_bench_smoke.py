"""Smoke test of bench/objective.py: its main runs end to end and writes a sound record.

No timing is asserted (timing belongs in bench/, and this machine is shared); the test guards
that the benchmark keeps working as the library changes.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "objective.py"


def _load_bench():
    # By path: the repository root need not be on sys.path when pytest runs.
    spec = importlib.util.spec_from_file_location("bench_objective", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_objective_benchmark_quick(tmp_path, capsys):
    bench = _load_bench()
    threads = torch.get_num_threads()
    out = tmp_path / "objective.json"
    try:
        record = bench.main(["--quick", "--sizes", "4", "9", "--in-features", "32",
                             "--out-features", "2", "--threads", "1", "--out", str(out),
                             "--roofline-sizes", "512", "2048", "--roofline-threads", "1", "2"])
    finally:
        torch.set_num_threads(threads)
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert record["config"]["N"] == 64 and record["config"]["T"] == 6
    assert record["config"]["K"] == 2 and record["config"]["D"] == 21
    assert {"cpu_model", "cpu_cores", "versions", "date", "name"} <= set(record["machine"])
    cpu = [r for r in record["results"] if r["device"] == "cpu"]
    assert sorted({r["P"] for r in cpu}) == [4, 9]
    assert {r["common_random_numbers"] for r in cpu} == {True, False}
    assert {r["physics"] for r in cpu} == {"device", "aihwkit"}
    for r in cpu:
        assert r["batched_candidates_per_s"] > 0 and r["reference_ms_per_candidate"] > 0
        assert r["speedup_per_candidate"] == pytest.approx(
            r["reference_ms_per_candidate"] / r["batched_ms_per_candidate"])
        same = [d for d in cpu if d["physics"] == "device" and all(
            d[k] == r[k] for k in ("kernel", "common_random_numbers", "P"))]
        assert r["cost_vs_device_physics"] == pytest.approx(
            r["batched_ms_per_candidate"] / same[0]["batched_ms_per_candidate"])
    # The roofline, measured in the same run: throughput per thread count and size, the
    # per-candidate counts of the formulas, and every CPU row's fraction of it.
    roof = record["roofline"]
    assert set(roof["throughput_elements_per_s"]) == {"1", "2"}
    assert set(roof["throughput_elements_per_s"]["1"]["exp"]) == {"512", "2048"}
    counts = roof["primitive_counts_per_candidate"]
    assert counts["device"]["crn"]["exp"] == 2 * 4 * 64 * 6
    assert counts["device"]["independent"]["normal"] == 3 * 4 * 64 * 6
    for r in cpu:
        mode = "crn" if r["common_random_numbers"] else "independent"
        rate = roof["candidates_per_s"]["1"][r["physics"]][mode]
        assert r["roofline_candidates_per_s"] == pytest.approx(rate)
        assert r["fraction_of_roofline"] == pytest.approx(r["batched_candidates_per_s"] / rate)
    # The reference toolkit's own loss, when it is installed.
    if record["toolkit"]["available"]:
        for r in cpu:
            assert r["toolkit_ms_per_candidate"] > 0
            assert r["speedup_vs_toolkit"] == pytest.approx(
                r["toolkit_ms_per_candidate"] / r["batched_ms_per_candidate"])
        agreement = record["toolkit"]["agreement"]
        assert len(agreement["gpuwpo_aihwkit_physics_tnmse"]) == agreement["candidates"] > 0
    else:
        assert all(r["toolkit_ms_per_candidate"] is None for r in cpu)
    table = capsys.readouterr().out
    assert "| cpu | torch | device | on | 9 |" in table
    assert "| cpu | torch | aihwkit | on | 9 |" in table
    assert "Roofline per candidate" in table
