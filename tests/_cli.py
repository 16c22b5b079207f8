"""Shared inputs of the command-line tests: a tiny search's flags and a small weights file."""

from __future__ import annotations

from pathlib import Path

import torch

#: optimize flags for a search that takes well under a second on the CPU
TINY = ["--popsize", "2", "--maxiter", "2", "--test-size", "16", "4",
        "--baseline-iterations", "2", "--validation-repeats", "2", "--times", "1,1d", "--quiet",
        "--device", "cpu"]


def write_two_layer_weights(directory: Path) -> Path:
    """Save a seeded two-layer state dict (fc1 [8, 16], fc2 [4, 8]) as ``directory/net.pt``."""
    gen = torch.Generator().manual_seed(0)
    path = directory / "net.pt"
    torch.save({"fc1.weight": torch.randn(8, 16, generator=gen) * 0.3,
                "fc2.weight": torch.randn(4, 8, generator=gen) * 0.3}, path)
    return path
