"""bench/gpu_session.sh: the GPU session as one script, checked on the CPU.

Its ``--dry-run`` runs every step (CUDA tests, objective, one layer, the network, Ray) with the
same scripts on the CPU at tiny sizes; the test checks that each step ran, succeeded and left
its record, and that a bad step name is refused in one line (exit 2).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests._bench import BENCH

SCRIPT = BENCH / "gpu_session.sh"


def _bash(*args: str, out, timeout: int = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=BENCH.parent, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_script_parses_and_refuses_an_unknown_step(tmp_path):
    assert shutil.which("bash")
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    done = _bash("--dry-run", "objectiv", out=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("gpu_session.sh: error: unknown step or option "
                                          "'objectiv'")
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "session.txt").exists()  # refused before any work
    help_text = _bash("--help", out=tmp_path).stdout
    assert "--dry-run" in help_text and "network" in help_text


@pytest.mark.slow
def test_dry_run_runs_every_step_on_the_cpu(tmp_path):
    done = _bash("--dry-run", out=tmp_path, timeout=600)
    session = (tmp_path / "session.txt").read_text()
    assert done.returncode == 0, session + done.stdout[-3000:] + done.stderr[-3000:]
    for step in ("tests", "objective", "search", "network"):
        assert f"{step}: exit 0" in session, session
    import importlib.util

    if importlib.util.find_spec("ray") is not None:
        assert "ray: exit 0" in session
    else:
        assert "ray: skipped (ray is not installed)" in session
    objective = json.loads((tmp_path / "objective.json").read_text())
    assert {r["N"] for r in objective["results"]} == {40, 80}
    assert {r["physics"] for r in objective["results"]} == {"device", "aihwkit"}
    assert "profile" in objective and "roofline" in objective
    (search,) = tmp_path.glob("search-*.json")
    assert json.loads(search.read_text())["results"][0]["backend"] == "torch"
    (network,) = tmp_path.glob("network-*.json")
    assert json.loads(network.read_text())["result"]["num_layers"] == 3
    assert "session:" in session and "540-s budget" in session
