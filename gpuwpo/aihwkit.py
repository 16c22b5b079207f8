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

And back (what :mod:`gpuwpo.wpo` runs on): :func:`from_aihwkit_converter`,
:func:`from_aihwkit_noise_model` and :func:`from_aihwkit_rpu_config` translate the reference's
objects into gpuwpo's ``physics="aihwkit"``; a setting gpuwpo does not model is refused with a
ValueError naming it, never ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["require_aihwkit", "is_aihwkit_object", "to_aihwkit_converter",
           "to_aihwkit_noise_model", "to_aihwkit_rpu_config", "judge_tnmse",
           "from_aihwkit_converter", "from_aihwkit_noise_model", "from_aihwkit_rpu_config"]


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

    from .device.converters import (
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

    from .device.noise import CustomDriftPCMLikeNoiseModel, PCMLikeNoiseModel

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

    from .device.compensation import GlobalDriftCompensation, PerColumnDriftCompensation

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


# --------------------------------------------------------------------------------------------
# From the reference's objects to gpuwpo's physics="aihwkit"
# --------------------------------------------------------------------------------------------


def is_aihwkit_object(obj: object) -> bool:
    """Whether ``obj`` is one of the reference toolkit's objects (by its module)."""
    return type(obj).__module__.split(".")[0] == "aihwkit"


def from_aihwkit_converter(converter):
    """gpuwpo's converter equal to aihwkit's ``converter`` (gpuwpo's are returned as they are)."""
    from .device import converters as conv

    if not is_aihwkit_object(converter):
        return converter
    name = type(converter).__name__
    g_max = float(converter.g_max)
    if name == "FusionConductanceConverter":
        return conv.FusionConductanceConverter(g_max)
    g_min = float(converter.g_min)
    if name == "SinglePairConductanceConverter":
        return conv.SinglePairConductanceConverter(g_min, g_max)
    if name == "DualPairConductanceConverter":
        return conv.DualPairConductanceConverter(list(converter.f_lst), g_min, g_max)
    if name == "NPairConductanceConverter":
        return conv.NPairConductanceConverter(list(converter.f_lst), g_min, g_max)
    if name == "CustomPairConductanceConverter":
        return conv.CustomPairConductanceConverter(list(converter.f_lst), converter.g_lst, g_min,
                                                   g_max, invertibility_test=False)
    raise ValueError(f"aihwkit's {name} is not modelled by gpuwpo (it models SinglePair, "
                     "DualPair, NPair, CustomPair and Fusion converters)")


def from_aihwkit_noise_model(noise_model):
    """gpuwpo's PCM model with the parameters of aihwkit's ``noise_model``.

    ``PCMLikeNoiseModel`` and ``CustomDriftPCMLikeNoiseModel`` are modelled (with their g_max,
    programming coefficients and reference conductance, t_read, t_0 and the three scales); any
    other noise model is refused by name.
    """
    from .device.noise import CustomDriftPCMLikeNoiseModel, PCMLikeNoiseModel

    name = type(noise_model).__name__
    if name not in ("PCMLikeNoiseModel", "CustomDriftPCMLikeNoiseModel"):
        raise ValueError(f"the noise model {name} is not modelled by gpuwpo (it models "
                         "PCMLikeNoiseModel and CustomDriftPCMLikeNoiseModel)")
    kwargs = dict(prog_coeff=[float(c) for c in noise_model.prog_coeff],
                  g_max=float(noise_model.g_max), t_read=float(noise_model.t_read),
                  t_0=float(noise_model.t_0),
                  prog_noise_scale=float(noise_model.prog_noise_scale),
                  read_noise_scale=float(noise_model.read_noise_scale),
                  drift_scale=float(noise_model.drift_scale),
                  prog_coeff_g_max_reference=float(noise_model.prog_coeff_g_max_reference))
    if name == "CustomDriftPCMLikeNoiseModel":
        return CustomDriftPCMLikeNoiseModel(dict(noise_model.custom_drift_model), **kwargs)
    return PCMLikeNoiseModel(**kwargs)


def _enum_name(value: Any) -> str:
    return getattr(value, "name", str(value))


# IOParameters fields that must hold their neutral value: gpuwpo's periphery does not model them.
_NEUTRAL_FORWARD = {
    "inp_noise": 0.0, "inp_asymmetry": 0.0, "out_asymmetry": 0.0, "out_noise_std": 0.0,
    "w_noise": 0.0, "ir_drop": 0.0, "out_nonlinearity": 0.0, "out_nonlinearity_std": 0.0,
    "slope_calibration": 0.0, "v_offset_std": 0.0, "r_series": 0.0,
    "w_read_asymmetry_dtod": 0.0, "out_scale": 1.0, "inp_sto_round": False,
    "out_sto_round": False,
}


def _resolution(res: float) -> float:
    """The reference's resolution: a fraction of the range, or (above 1) a number of states."""
    return 1.0 / res if res > 1.0 else res


def _compensation_from_forward(forward, per_column: bool, exact_reference: bool):
    """gpuwpo's compensation and periphery for aihwkit's IOParameters ``forward``."""
    from .device.compensation import GlobalDriftCompensation, PerColumnDriftCompensation

    cls = PerColumnDriftCompensation if per_column else GlobalDriftCompensation
    mv_type = _enum_name(getattr(forward, "mv_type", "ONE_PASS"))
    if getattr(forward, "is_perfect", False) or mv_type == "IDEAL":
        return cls(exact_reference=exact_reference)
    if mv_type != "ONE_PASS":
        raise ValueError(f"forward.mv_type={mv_type} is not modelled by gpuwpo (ONE_PASS is)")
    for field, neutral in _NEUTRAL_FORWARD.items():
        value = getattr(forward, field, neutral)
        if value != neutral:
            raise ValueError(f"forward.{field}={value!r} is not modelled by gpuwpo's readout "
                             f"periphery (it must be {neutral!r})")
    if _enum_name(getattr(forward, "w_noise_type", "NONE")) != "NONE":
        raise ValueError(f"forward.w_noise_type={_enum_name(forward.w_noise_type)} is not "
                         "modelled by gpuwpo's readout periphery")
    if getattr(forward, "v_offset_w_min", -1.0) > 0.0:
        raise ValueError("forward.v_offset_w_min > 0 is not modelled by gpuwpo")
    nm = _enum_name(forward.noise_management)
    thres = float(getattr(forward, "nm_thres", 0.0))
    # The readout's inputs are one-hot vectors: ABS_MAX and MAX give a scale of 1, as does NONE.
    if nm not in ("NONE", "ABS_MAX", "MAX") or (nm != "NONE" and 0.0 < thres < 1.0):
        raise ValueError(f"forward.noise_management={nm} with nm_thres={thres} is not modelled "
                         "by gpuwpo (NONE, ABS_MAX and MAX with nm_thres 0 or >= 1 are)")
    bm = _enum_name(forward.bound_management)
    if bm not in ("NONE", "ITERATIVE"):
        raise ValueError(f"forward.bound_management={bm} is not modelled by gpuwpo (NONE and "
                         "ITERATIVE are)")
    out_bound = float(forward.out_bound)
    bound = out_bound if out_bound > 0.0 else None
    step = 0.0
    if forward.out_res > 0.0:
        if bound is None:
            raise ValueError("forward.out_res > 0 with out_bound <= 0 (an unbounded output "
                             "quantised relative to its bound) is not modelled by gpuwpo")
        step = _resolution(float(forward.out_res)) * 2.0 * out_bound
    inp_bound = float(forward.inp_bound)
    if inp_bound < 1.0:
        raise ValueError(f"forward.inp_bound={inp_bound} < 1 clips the one-hot readout input; "
                         "not modelled by gpuwpo")
    input_step = (_resolution(float(forward.inp_res)) * 2.0 * inp_bound
                  if forward.inp_res > 0.0 else 0.0)
    return cls(float(forward.out_noise), step, bound, exact_reference=exact_reference,
               input_step=input_step, bound_management=bm == "ITERATIVE" and bound is not None,
               max_bm_factor=float(forward.max_bm_factor), max_bm_res=float(forward.max_bm_res))


def from_aihwkit_rpu_config(rpu_config, *, check_mapping: bool = True):
    """gpuwpo's ``(noise_model, compensation)`` for aihwkit's inference RPU config.

    The noise model (:func:`from_aihwkit_noise_model`), the drift compensation (global,
    exact-reference or per-column) and the forward periphery through which the compensation
    reads (ideal when ``forward.is_perfect``; else output noise, resolution and bound, input
    resolution, ITERATIVE or no bound management) become gpuwpo's ``physics="aihwkit"``. Works
    for ``TorchInferenceRPUConfig`` and ``InferenceRPUConfig`` alike (the C++ tile is taken to
    implement the same IOParameters; only the torch tile is verified against). The weight
    clipping, remapping and modifier settings act in training and do not change what is
    programmed or read, so they are accepted.

    Args:
        rpu_config: the reference's config.
        check_mapping: refuse weight or output scaling in ``mapping`` (the reference's optimiser
            switches them off while it searches; a tile that uses them converts other weights).

    Raises:
        ValueError: a setting gpuwpo does not model, named.
    """
    for attr in ("noise_model", "drift_compensation", "forward", "mapping"):
        if not hasattr(rpu_config, attr):
            raise ValueError(f"{type(rpu_config).__name__} has no {attr!r}: not an inference "
                             "RPU config")
    noise_model = from_aihwkit_noise_model(rpu_config.noise_model)
    comp = rpu_config.drift_compensation
    name = type(comp).__name__
    if name not in ("GlobalDriftCompensation", "GlobalDriftCompensationWithExactReference",
                    "PerColumnDriftCompensation"):
        raise ValueError(f"drift_compensation={name if comp is not None else None} is not "
                         "modelled by gpuwpo (GlobalDriftCompensation, "
                         "GlobalDriftCompensationWithExactReference and "
                         "PerColumnDriftCompensation are)")
    compensation = _compensation_from_forward(
        rpu_config.forward, per_column=name == "PerColumnDriftCompensation",
        exact_reference=name == "GlobalDriftCompensationWithExactReference")
    if check_mapping:
        mapping = rpu_config.mapping
        for field in ("weight_scaling_omega", "learn_out_scaling", "weight_scaling_columnwise",
                      "out_scaling_columnwise"):
            if getattr(mapping, field, False):
                raise ValueError(f"mapping.{field}={getattr(mapping, field)!r} is not modelled "
                                 "by gpuwpo (the tile would convert scaled weights); switch it "
                                 "off, as the reference's optimiser does while it searches")
    dtype = _enum_name(getattr(getattr(rpu_config, "runtime", None), "data_type", "FLOAT"))
    if dtype != "FLOAT":
        raise ValueError(f"runtime.data_type={dtype} is not modelled by gpuwpo (FLOAT is)")
    return noise_model, compensation
