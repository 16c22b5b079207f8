"""Helpers for tests that use the reference toolkit itself (aihwkit 1.1.0) as the oracle.

Import only from tests that have already called ``pytest.importorskip("aihwkit")``.
"""

from __future__ import annotations

import math

import torch

import gpuwpo
from gpuwpo.aihwkit import judge_tnmse, to_aihwkit_converter

#: compensation name -> (gpuwpo's class, keywords)
COMPENSATIONS = {
    "global": (gpuwpo.GlobalDriftCompensation, {}),
    "exact": (gpuwpo.GlobalDriftCompensation, {"exact_reference": True}),
    "per-column": (gpuwpo.PerColumnDriftCompensation, {}),
}
READOUTS = ("ideal", "default")

reference_converter = to_aihwkit_converter


def gpuwpo_compensation(readout: str, compensation: str):
    cls, kwargs = COMPENSATIONS[compensation]
    return cls.aihwkit_default(**kwargs) if readout == "default" else cls(**kwargs)


def reference_tnmse_samples(conv, tile: torch.Tensor, t_steps, readout: str, compensation: str,
                            n: int, seed: int) -> torch.Tensor:
    """``n`` TNMSE values of the reference's own ``loss_weights`` for a tile [out, in], with
    the reference's PCM model whose g_max is the converter's (as aihwkit builds it)."""
    return judge_tnmse(conv, tile, t_steps, gpuwpo.PCMLikeNoiseModel(g_max=conv.g_max),
                       gpuwpo_compensation(readout, compensation), repeats=n, seed=seed)


def z_score(a: torch.Tensor, b: torch.Tensor) -> float:
    """Difference of two sample means in units of its standard error."""
    se2 = a.var() / len(a) + b.var() / len(b)
    return float((a.mean() - b.mean()) / math.sqrt(float(se2)))
