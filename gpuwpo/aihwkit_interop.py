"""Hand gpuwpo's objects to the reference toolkit (IBM aihwkit 1.1.0), and judge with it.

gpuwpo never needs aihwkit; this module imports it lazily, only when one of its functions is
called. What it offers:

* :func:`to_aihwkit_converter`: a gpuwpo converter as aihwkit's converter object (SinglePair,
  DualPair, NPair, CustomPair, Fusion), for aihwkit's inference tiles.
* :func:`to_aihwkit_noise_model`: a gpuwpo PCM model (with a converter) as aihwkit's
  ``PCMLikeNoiseModel`` / ``CustomDriftPCMLikeNoiseModel``.
* :func:`to_aihwkit_rpu_config`: a ``TorchInferenceRPUConfig`` that simulates what gpuwpo's
  ``physics="aihwkit"`` simulates for a device model, converter and compensation (global, exact
  reference or per-column; ideal readout or the default periphery). Mapping scales are off, as
  the reference's optimiser sets them.
* :func:`judge_tnmse`: TNMSE samples of a converter on a tile computed by the reference's own
  ``wpo.loss_weights`` -- how users who report with the reference's simulator see a strategy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["require_aihwkit", "to_aihwkit_converter", "to_aihwkit_noise_model",
           "to_aihwkit_rpu_config", "judge_tnmse"]


def require_aihwkit() -> None:
    """Raise an ImportError with the install command when aihwkit is not importable."""
    try:
        import aihwkit  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "this needs IBM's analog hardware acceleration kit (the reference toolkit): "
            "pip install --no-deps aihwkit==1.1.0 requests protobuf") from err


def to_aihwkit_converter(converter) -> Any:
    """aihwkit's converter equal to the gpuwpo converter ``converter`` (one program)."""
    require_aihwkit()
    from aihwkit.inference.converter import conductance as ref
    from aihwkit.inference.converter.fusion import FusionConductanceConverter as RefFusion

    from .converters import (
        CustomPairConductanceConverter,
        DualPairConductanceConverter,
        FusionConductanceConverter,
        NPairConductanceConverter,
        SinglePairConductanceConverter,
    )

    if isinstance(converter, CustomPairConductanceConverter):
        return converter.to_aihwkit(invertibility_test=False)
    if isinstance(converter, FusionConductanceConverter):
        return RefFusion(converter.g_max)
    if getattr(converter, "batch_shape", ()) != ():
        raise ValueError(f"aihwkit's converters hold one program; this one has batch shape "
                         f"{tuple(converter.batch_shape)}")
    g_max, g_min = float(converter.g_max), float(converter.g_min)
    if isinstance(converter, SinglePairConductanceConverter):
        return ref.SinglePairConductanceConverter(g_max, g_min)
    f = [float(v) for v in converter.f_lst.tolist()]
    if isinstance(converter, DualPairConductanceConverter):
        return ref.DualPairConductanceConverter(f, g_max, g_min)
    if isinstance(converter, NPairConductanceConverter):
        return ref.NPairConductanceConverter(f, g_max, g_min)
    raise TypeError(f"no aihwkit counterpart for {type(converter).__name__}")


def to_aihwkit_noise_model(noise_model, converter) -> Any:
    """aihwkit's PCM noise model with gpuwpo's parameters and ``converter`` (a gpuwpo one).

    aihwkit takes g_max from the converter and ties the programming polynomial's reference
    conductance to it; the values are set to gpuwpo's afterwards so both mean the same.
    """
    require_aihwkit()
    from aihwkit.inference.noise.pcm import CustomDriftPCMLikeNoiseModel as RefCustom
    from aihwkit.inference.noise.pcm import PCMLikeNoiseModel as RefPCM

    from .noise import CustomDriftPCMLikeNoiseModel, PCMLikeNoiseModel

    if type(noise_model) not in (PCMLikeNoiseModel, CustomDriftPCMLikeNoiseModel):
        raise TypeError(f"aihwkit has no counterpart for {type(noise_model).__name__}")
    kwargs = dict(prog_coeff=list(noise_model.prog_coeff),
                  g_converter=to_aihwkit_converter(converter), g_max=noise_model.g_max,
                  t_read=noise_model.t_read, t_0=noise_model.t_0,
                  prog_noise_scale=noise_model.prog_noise_scale,
                  read_noise_scale=noise_model.read_noise_scale,
                  drift_scale=noise_model.drift_scale)
    if isinstance(noise_model, CustomDriftPCMLikeNoiseModel):
        ref = RefCustom(dict(noise_model.custom_drift_model), **kwargs)
    else:
        ref = RefPCM(**kwargs)
    ref.g_max = noise_model.g_max
    ref.prog_coeff_g_max_reference = noise_model.g_ref
    return ref


def to_aihwkit_rpu_config(noise_model, converter, compensation=None) -> Any:
    """A ``TorchInferenceRPUConfig`` simulating gpuwpo's ``physics="aihwkit"`` for these.

    Args:
        noise_model: a gpuwpo PCM model.
        converter: a gpuwpo converter (one program).
        compensation: a gpuwpo compensation (default ideal global): global, exact reference or
            per-column, with an ideal readout (``forward.is_perfect``) or the reference's
            default periphery (:meth:`GlobalDriftCompensation.aihwkit_default`); any other
            periphery has no equivalent and is refused.
    """
    require_aihwkit()
    from aihwkit.inference.compensation import drift
    from aihwkit.simulator.configs import TorchInferenceRPUConfig

    from .compensation import GlobalDriftCompensation, PerColumnDriftCompensation

    comp = GlobalDriftCompensation() if compensation is None else compensation
    per_column = isinstance(comp, PerColumnDriftCompensation)
    if per_column and comp.exact_reference:
        raise ValueError("aihwkit has no per-column compensation with an exact reference")
    default = type(comp).aihwkit_default(exact_reference=comp.exact_reference)
    if not comp.is_ideal and repr(comp) != repr(default):
        raise ValueError(f"aihwkit's tile has no periphery equal to {comp!r}; gpuwpo maps the "
                         "ideal readout and GlobalDriftCompensation.aihwkit_default()")
    cfg = TorchInferenceRPUConfig()
    cfg.noise_model = to_aihwkit_noise_model(noise_model, converter)
    if per_column:
        cfg.drift_compensation = drift.PerColumnDriftCompensation()
    elif comp.exact_reference:
        cfg.drift_compensation = drift.GlobalDriftCompensationWithExactReference()
    else:
        cfg.drift_compensation = drift.GlobalDriftCompensation()
    cfg.mapping.weight_scaling_omega = 0.0
    cfg.mapping.weight_scaling_columnwise = False
    cfg.mapping.learn_out_scaling = False
    cfg.mapping.out_scaling_columnwise = False
    cfg.forward.is_perfect = comp.is_ideal
    return cfg


def judge_tnmse(converter, tile: torch.Tensor, t_steps: Sequence[float], noise_model,
                compensation=None, *, repeats: int = 50, seed: int = 0) -> torch.Tensor:
    """TNMSE of ``converter`` on a tile by the reference's own ``wpo.loss_weights``.

    Args:
        converter: a gpuwpo converter (one program).
        tile: the weights ``[out_features, in_features]``, as gpuwpo's objective lays out its
            test tile (the reference's layer gets the transposed test weights ``[in, out]``).
        t_steps: inference times in seconds.
        noise_model, compensation: as for :func:`to_aihwkit_rpu_config`.
        repeats: evaluations (each programs the tile afresh at every time).
        seed: seed of torch's global generator, which the reference draws from (restored
            afterwards).

    Returns:
        ``[repeats]`` float64 TNMSE values.
    """
    require_aihwkit()
    from aihwkit.inference.converter import wpo
    from aihwkit.nn import AnalogLinear

    if tile.ndim != 2:
        raise ValueError(f"tile must be [out_features, in_features], got {tuple(tile.shape)}")
    cfg = to_aihwkit_rpu_config(noise_model, converter, compensation)
    out_f, in_f = tile.shape
    weights = tile.detach().to("cpu", torch.float32).T.contiguous()
    m = weights.abs().max()
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = AnalogLinear(in_f, out_f, bias=False, rpu_config=cfg).eval()
        values = [float(wpo.loss_weights(model, [float(t) for t in t_steps], weights, m, 1.0,
                                         0.0, get_baseline=True)) for _ in range(int(repeats))]
    finally:
        torch.random.set_rng_state(state)
    out = torch.tensor(values, dtype=torch.float64)
    if not bool(torch.isfinite(out).all()) or math.isnan(float(out.sum())):
        raise ValueError("the reference returned a non-finite TNMSE")
    return out
