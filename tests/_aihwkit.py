"""Helpers for tests that use the reference toolkit itself (aihwkit 1.1.0) as the oracle.

Import only from tests that have already called ``pytest.importorskip("aihwkit")``.
"""

from __future__ import annotations

import math

import torch
from aihwkit.inference.compensation.drift import (
    GlobalDriftCompensation as RefGlobal,
)
from aihwkit.inference.compensation.drift import (
    GlobalDriftCompensationWithExactReference as RefExact,
)
from aihwkit.inference.compensation.drift import (
    PerColumnDriftCompensation as RefPerColumn,
)
from aihwkit.inference.converter import conductance as ref_conductance
from aihwkit.inference.converter import wpo as ref_wpo
from aihwkit.inference.converter.fusion import FusionConductanceConverter as RefFusion
from aihwkit.inference.noise.pcm import PCMLikeNoiseModel as RefPCM
from aihwkit.nn import AnalogLinear
from aihwkit.simulator.configs import TorchInferenceRPUConfig

import gpuwpo

#: compensation name -> (the reference's class, gpuwpo's class and keywords)
COMPENSATIONS = {
    "global": (RefGlobal, gpuwpo.GlobalDriftCompensation, {}),
    "exact": (RefExact, gpuwpo.GlobalDriftCompensation, {"exact_reference": True}),
    "per-column": (RefPerColumn, gpuwpo.PerColumnDriftCompensation, {}),
}
READOUTS = ("ideal", "default")


def reference_converter(conv):
    """aihwkit's converter equal to the gpuwpo converter ``conv`` (one program)."""
    if isinstance(conv, gpuwpo.CustomPairConductanceConverter):
        return conv.to_aihwkit(invertibility_test=False)
    if isinstance(conv, gpuwpo.FusionConductanceConverter):
        return RefFusion(conv.g_max)
    if isinstance(conv, gpuwpo.SinglePairConductanceConverter):
        return ref_conductance.SinglePairConductanceConverter(conv.g_max, conv.g_min)
    if isinstance(conv, gpuwpo.DualPairConductanceConverter):
        return ref_conductance.DualPairConductanceConverter(conv.f_lst.tolist(), conv.g_max,
                                                            conv.g_min)
    if isinstance(conv, gpuwpo.NPairConductanceConverter):
        return ref_conductance.NPairConductanceConverter(conv.f_lst.tolist(), conv.g_max,
                                                         conv.g_min)
    raise TypeError(type(conv).__name__)


def gpuwpo_compensation(readout: str, compensation: str):
    _, cls, kwargs = COMPENSATIONS[compensation]
    return cls.aihwkit_default(**kwargs) if readout == "default" else cls(**kwargs)


def reference_config(conv, readout: str, compensation: str) -> TorchInferenceRPUConfig:
    """The reference's TorchInferenceRPUConfig for a converter, readout and compensation.

    The noise model is ``PCMLikeNoiseModel(g_converter=...)`` (its g_max is the converter's, as
    in the reference), mapping scales off (as the reference's optimiser sets them).
    """
    cfg = TorchInferenceRPUConfig()
    cfg.noise_model = RefPCM(g_converter=reference_converter(conv))
    cfg.drift_compensation = COMPENSATIONS[compensation][0]()
    cfg.mapping.weight_scaling_omega = 0.0
    cfg.mapping.weight_scaling_columnwise = False
    cfg.mapping.learn_out_scaling = False
    cfg.mapping.out_scaling_columnwise = False
    cfg.forward.is_perfect = readout == "ideal"
    return cfg


def reference_tnmse_samples(conv, tile: torch.Tensor, t_steps, readout: str, compensation: str,
                            n: int, seed: int) -> torch.Tensor:
    """``n`` TNMSE values of the reference's own ``loss_weights`` for a tile [out, in]."""
    torch.manual_seed(seed)  # the reference draws from torch's global generator
    cfg = reference_config(conv, readout, compensation)
    out_f, in_f = tile.shape
    model = AnalogLinear(in_f, out_f, bias=False, rpu_config=cfg).eval()
    weights = tile.T.contiguous()  # loss_weights takes [in, out] and sets weights.T
    m = weights.abs().max()
    return torch.tensor([float(ref_wpo.loss_weights(model, list(t_steps), weights, m, 1.0, 0.0,
                                                    get_baseline=True)) for _ in range(n)],
                        dtype=torch.float64)


def z_score(a: torch.Tensor, b: torch.Tensor) -> float:
    """Difference of two sample means in units of its standard error."""
    se2 = a.var() / len(a) + b.var() / len(b)
    return float((a.mean() - b.mean()) / math.sqrt(float(se2)))
