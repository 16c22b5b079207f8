"""Shared helpers of the tests of the bench/ scripts: load one by path, run one's --help."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_script(name: str):
    """bench/``name``.py as a module, loaded by path.

    The repository root need not be on sys.path when pytest runs: the scripts put it there
    themselves (they import bench.common). Registered under ``bench_<name>`` while it runs:
    dataclasses look their module up in sys.modules.
    """
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


def script_help(*args: str) -> str:
    """The --help text of ``python *args --help`` run from the repository root (e.g. ``-m
    bench.search`` or a script's path); asserts that it exits 0."""
    done = subprocess.run([sys.executable, *args, "--help"], cwd=BENCH.parent,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout
