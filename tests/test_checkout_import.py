"""gpuwpo.kernels from a plain checkout on PYTHONPATH (no install), as on the GPU machine."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_kernels_import_from_a_plain_checkout(tmp_path):
    for name in ("gpuwpo", "kernels"):
        shutil.copytree(REPO / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    # -S: no site initialisation, so no installed (editable) gpuwpo can answer the import;
    # the site-packages folders are still on the path for torch and friends.
    path = os.pathsep.join([str(tmp_path), *site.getsitepackages()])
    code = ("import gpuwpo, gpuwpo.kernels; "
            "from gpuwpo.kernels import __file__ as k; print(gpuwpo.__file__); print(k)")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": path}, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    package, kernels = out.stdout.split()
    assert package == str(tmp_path / "gpuwpo" / "__init__.py")
    assert kernels == str(tmp_path / "kernels" / "__init__.py")
