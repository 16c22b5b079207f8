"""Hand gpuwpo's objects to the reference toolkit (IBM aihwkit 1.1.0), and judge with it.

gpuwpo never needs aihwkit; this module imports it lazily, only when one of its functions is
called. What it offers:

* :func:`to_aihwkit_converter`: a gpuwpo converter as aihwkit's converter object (SinglePair,
  DualPair, NPair, CustomPair, Fusion), for aihwkit's inference tiles.
* :func:`to_aihwkit_noise_model`: a gpuwpo PCM model (with a converter) as aihwkit's
  ``PCMLikeNoiseModel`` / ``CustomDriftPCMLikeNoiseModel``.
* :func:`to_aihwkit_rpu_config`: a ``TorchInferenceRPUConfig`` that simulates what gpuwpo's
  ``physics="aihwkit"`` simulates for a device model, converter and compensation (global, exact
  reference or per-column; ideal readout or the default periphery) under a mapping: ``"layer"``
  (mapping scales off, as the reference's optimiser sets them) or ``"columnwise"``
  (``mapping.weight_scaling_omega = 1``, ``weight_scaling_columnwise = True``, as aihwkit's
  inference presets and its example 33 deploy; :mod:`gpuwpo.device.mapping`).
* :func:`judge_tnmse`: TNMSE samples of a converter or recipe on a tile computed by the
  reference's own ``wpo.loss_weights`` -- how users who report with the reference's simulator
  see a strategy.
* :func:`apply`: a network result's converters on an aihwkit model's analogue tiles, layer by
  layer, so that its ``program_analog_weights`` / ``drift_analog_weights`` use them.

And back (what :mod:`gpuwpo.wpo` runs on): :func:`from_aihwkit_converter`,
:func:`from_aihwkit_noise_model` and :func:`from_aihwkit_rpu_config` translate the reference's
objects into gpuwpo's ``physics="aihwkit"``; a setting gpuwpo does not model is refused with a
ValueError naming it, never ignored. :func:`mapping_from_aihwkit` reads a config's mapping.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

__all__ = ["require_aihwkit", "is_aihwkit_object", "to_aihwkit_converter",
           "to_aihwkit_noise_model", "to_aihwkit_rpu_config", "judge_tnmse",
           "from_aihwkit_converter", "from_aihwkit_noise_model", "from_aihwkit_rpu_config",
           "mapping_from_aihwkit", "AihwkitPhysics", "apply", "Applied", "AppliedLayer",
           "UNCOVERED"]


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
        # Imported only here: aihwkit's fusion module imports scikit-learn (about a second).
        from aihwkit.inference.converter.fusion import FusionConductanceConverter as RefFusion

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


def _recipe_parts(converter, mapping: str | None) -> tuple[Any, str]:
    """(converter, mapping) of a converter or a :class:`gpuwpo.device.mapping.Recipe`."""
    from .device.mapping import as_recipe

    recipe = as_recipe(converter, mapping)
    return recipe.converter, recipe.mapping


def to_aihwkit_rpu_config(noise_model, converter, compensation=None, *,
                          mapping: str | None = None) -> Any:
    """A ``TorchInferenceRPUConfig`` simulating gpuwpo's ``physics="aihwkit"`` for these.

    Args:
        noise_model: a gpuwpo PCM model.
        converter: a gpuwpo converter (one program), or a :class:`gpuwpo.device.mapping.Recipe`
            (its mapping then). A clipping program has no aihwkit converter (refused): deploy
            it as weights clipped at ``clip * max|W|`` (per output row under the columnwise
            mapping) with ``converter.without_clip()``.
        compensation: a gpuwpo compensation (default ideal global): global, exact reference or
            per-column, with an ideal readout (``forward.is_perfect``) or the reference's
            default periphery (:meth:`GlobalDriftCompensation.aihwkit_default`); any other
            periphery has no equivalent and is refused.
        mapping: ``"layer"`` (the default for a bare converter: ``weight_scaling_omega = 0``)
            or ``"columnwise"`` (``weight_scaling_omega = 1``, ``weight_scaling_columnwise =
            True``); a recipe given with another mapping is refused.
    """
    require_aihwkit()
    from aihwkit.inference.compensation import drift
    from aihwkit.simulator.configs import TorchInferenceRPUConfig

    from .device.compensation import GlobalDriftCompensation, PerColumnDriftCompensation

    converter, mapping = _recipe_parts(converter, mapping)

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
    columnwise = mapping == "columnwise"
    cfg.mapping.weight_scaling_omega = 1.0 if columnwise else 0.0
    cfg.mapping.weight_scaling_columnwise = columnwise
    cfg.mapping.learn_out_scaling = False
    cfg.mapping.out_scaling_columnwise = False
    cfg.forward.is_perfect = comp.is_ideal
    return cfg


def _clipped(tile: torch.Tensor, clip: float, mapping: str) -> torch.Tensor:
    """``tile`` ``[out, in]`` clipped as a clipping program is deployed on aihwkit's tiles: at
    ``clip * max|W|``, or at ``clip`` times each output row's own max|W| under the columnwise
    mapping (which then scales each row to its clipped max)."""
    if mapping == "columnwise":
        c = tile.abs().amax(dim=1, keepdim=True) * clip
    else:
        c = tile.abs().amax() * clip
    return torch.maximum(torch.minimum(tile, c), -c)


def judge_tnmse(converter, tile: torch.Tensor, t_steps: Sequence[float], noise_model,
                compensation=None, *, repeats: int = 50, seed: int = 0,
                mapping: str | None = None) -> torch.Tensor:
    """TNMSE of ``converter`` on a tile by the reference's own simulator.

    The tile is one aihwkit ``AnalogLinear`` on the config of :func:`to_aihwkit_rpu_config`
    (its mapping sizes cover the tile, so aihwkit does not split it: a columnwise tile split
    along its inputs would scale each block's rows on their own), and each value is the
    reference's own ``wpo.loss_weights``: the tile programmed afresh at every time, drifted,
    read, compensated, ``tile.alpha * tile.get_weights()`` (the digital mapping scales
    included) against the tile, normalised by its max|W|.

    A clipping program (``clip < 1``) is judged as it can be deployed on aihwkit's tiles, whose
    converters have no clip: the tile's weights clipped at ``clip * max|W|`` (per output row
    under the columnwise mapping) are set on the layer and programmed with
    ``converter.without_clip()``, and the error is measured against the *unclipped* weights:
    ``loss_weights``' own steps, with the error's reference changed.

    Args:
        converter: a gpuwpo converter (one program) or a :class:`gpuwpo.device.mapping.Recipe`.
        tile: the weights ``[out_features, in_features]``, as gpuwpo's objective lays out its
            test tile (the reference's layer gets the transposed test weights ``[in, out]``).
        t_steps: inference times in seconds.
        noise_model, compensation, mapping: as for :func:`to_aihwkit_rpu_config`.
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
    converter, mapping = _recipe_parts(converter, mapping)
    clip = float(getattr(converter, "clip", 1.0))
    program = converter.without_clip() if clip != 1.0 else converter
    cfg = to_aihwkit_rpu_config(noise_model, program, compensation, mapping=mapping)
    out_f, in_f = tile.shape
    cfg.mapping.max_input_size = max(int(cfg.mapping.max_input_size), in_f)
    cfg.mapping.max_output_size = max(int(cfg.mapping.max_output_size), out_f)
    weights = tile.detach().to("cpu", torch.float32).T.contiguous()
    m = weights.abs().max()
    times = [float(t) for t in t_steps]
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = AnalogLinear(in_f, out_f, bias=False, rpu_config=cfg).eval()
        if clip == 1.0:
            values = [float(wpo.loss_weights(model, times, weights, m, 1.0, 0.0,
                                             get_baseline=True)) for _ in range(int(repeats))]
        else:
            held = _clipped(tile.detach().to("cpu", torch.float32), clip, mapping).T.contiguous()
            values = [_loss_against(model, times, held, weights) for _ in range(int(repeats))]
    finally:
        torch.random.set_rng_state(state)
    out = torch.tensor(values, dtype=torch.float64)
    if not bool(torch.isfinite(out).all()) or math.isnan(float(out.sum())):
        raise ValueError("the reference returned a non-finite TNMSE")
    return out


def _loss_against(model, t_steps: list[float], held: torch.Tensor, weights: torch.Tensor
                  ) -> float:
    """aihwkit 1.1.0's ``wpo.loss_weights`` (get_baseline=True), step for step, with the layer
    holding ``held`` and the error against ``weights`` (both ``[in, out]``, as its test
    weights; set transposed as it sets them, so that its draws fall on the same weights)."""
    for layer in model.analog_layers():
        layer.set_weights(held.T.clone(), torch.zeros(model.out_features))
    nse = 0.0
    for t in t_steps:
        model.program_analog_weights()
        model.drift_analog_weights(t)
        eff = torch.cat([tile.alpha * tile.get_weights()[0].T for layer in model.analog_layers()
                         for tile in layer.analog_tiles()], 0)
        nse += float(torch.sum((10.0 * (eff - weights) / weights.abs().max()) ** 2))
    return nse / (model.in_features * model.out_features * len(t_steps))


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


class AihwkitPhysics(NamedTuple):
    """What :func:`from_aihwkit_rpu_config` reads from aihwkit's config: gpuwpo's PCM model, its
    compensation (with the readout periphery) and the mapping (``"layer"`` or
    ``"columnwise"``, :func:`mapping_from_aihwkit`)."""

    noise_model: Any
    compensation: Any
    mapping: str


def mapping_from_aihwkit(rpu_config) -> str:
    """The gpuwpo mapping that aihwkit's ``rpu_config.mapping`` deploys.

    ``weight_scaling_omega = 0`` (no scaling: the tile holds the weights as they are) is
    ``"layer"``; ``weight_scaling_omega = 1`` with ``weight_scaling_columnwise = True`` (each
    output row scaled to its own max, ``periphery.apply_weight_scaling``; what aihwkit's
    inference presets and its example 33 deploy) is ``"columnwise"``. The split sizes
    (``max_input_size``, ``max_output_size``), ``digital_bias`` and the training-only
    ``weight_scaling_lr_compensation`` do not change what a tile holds; nor do learned output
    scales (``learn_out_scaling``, as example 33 sets): a new tile's are 1, and setting weights
    under the mapping's scaling sets them to 1 again (``TileWithPeriphery.set_scales``).

    Raises:
        ValueError: a mapping gpuwpo does not model, named: another ``weight_scaling_omega``
            (the tile's units, hence what a readout periphery sees, would differ), or one scale
            for the whole tile (``weight_scaling_columnwise = False`` with an omega).
    """
    mapping = getattr(rpu_config, "mapping", None)
    if mapping is None:
        raise ValueError(f"{type(rpu_config).__name__} has no 'mapping': not an inference RPU "
                         "config")
    omega = float(getattr(mapping, "weight_scaling_omega", 0.0) or 0.0)
    columnwise = bool(getattr(mapping, "weight_scaling_columnwise", False))
    if omega == 0.0:
        return "layer"
    if omega == 1.0 and columnwise:
        return "columnwise"
    if not columnwise:
        raise ValueError(f"mapping.weight_scaling_omega={omega:g} with "
                         "mapping.weight_scaling_columnwise=False (one scale for the whole "
                         "tile) is not modelled by gpuwpo; it models weight_scaling_omega=0 "
                         "(mapping 'layer') and weight_scaling_omega=1 with "
                         "weight_scaling_columnwise=True (mapping 'columnwise')")
    raise ValueError(f"mapping.weight_scaling_omega={omega:g} is not modelled by gpuwpo; it "
                     "models weight_scaling_omega=0 (mapping 'layer') and "
                     "weight_scaling_omega=1 with weight_scaling_columnwise=True (mapping "
                     "'columnwise')")


def from_aihwkit_rpu_config(rpu_config) -> AihwkitPhysics:
    """gpuwpo's ``(noise_model, compensation, mapping)`` for aihwkit's inference RPU config.

    The noise model (:func:`from_aihwkit_noise_model`), the drift compensation (global,
    exact-reference or per-column) and the forward periphery through which the compensation
    reads (ideal when ``forward.is_perfect``; else output noise, resolution and bound, input
    resolution, ITERATIVE or no bound management) become gpuwpo's ``physics="aihwkit"``, and
    ``rpu_config.mapping`` its mapping (:func:`mapping_from_aihwkit`: ``"layer"`` or
    ``"columnwise"``). Works for ``TorchInferenceRPUConfig`` and ``InferenceRPUConfig`` alike
    (the C++ tile is taken to implement the same IOParameters; only the torch tile is
    verified against). The weight clipping, remapping and modifier settings act in training
    and do not change what is programmed or read, so they are accepted.

    Args:
        rpu_config: the reference's config.

    Returns:
        :class:`AihwkitPhysics` (a named tuple of the three).

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
    mapping = mapping_from_aihwkit(rpu_config)
    dtype = _enum_name(getattr(getattr(rpu_config, "runtime", None), "data_type", "FLOAT"))
    if dtype != "FLOAT":
        raise ValueError(f"runtime.data_type={dtype} is not modelled by gpuwpo (FLOAT is)")
    return AihwkitPhysics(noise_model, compensation, mapping)


# --------------------------------------------------------------------------------------------
# A network's result on an aihwkit model's analogue tiles
# --------------------------------------------------------------------------------------------

#: What :func:`apply` does with an analog layer whose weight the result does not hold.
UNCOVERED = ("error", "keep", "baseline")

# aihwkit's AnalogRNN keeps its cells' weights as analog layers below it; torch's nn.LSTM / GRU /
# RNN of the same name calls them weight_{ih,hh}_l{layer}, with _reverse for direction 1.
_RNN_CELL_WEIGHT = re.compile(r"rnn\.layers\.(?P<layer>\d+)\.(?:directions\.(?P<direction>[01])\.)?"
                              r"cell\.weight_(?P<kind>ih|hh)")


@dataclass(frozen=True)
class AppliedLayer:
    """What :func:`apply` put on one analog layer's tiles.

    Attributes:
        module: the analog layer's name in the aihwkit model (``"features.0"``).
        tiles: how many analogue tiles hold the layer (aihwkit splits a layer beyond its
            ``mapping.max_input_size`` / ``max_output_size`` over several; each converts its own
            block, on the grid of that block's max|W|).
        converter: gpuwpo's converter: the result's program, or its baseline converter.
        g_converter: aihwkit's converter equal to it; every tile's noise model holds a copy.
        chosen: the result's label for the layer (``"search"``, ``"start: ..."``,
            ``"baseline"`` where the layer kept the baseline, ...), or ``"uncovered: baseline"``
            for an analog layer the result does not hold (``uncovered="baseline"``).
    """

    module: str
    tiles: int
    converter: Any
    g_converter: Any
    chosen: str


@dataclass(frozen=True)
class Applied:
    """What :func:`apply` did to an aihwkit model.

    Attributes:
        layers: weight name -> :class:`AppliedLayer`, in the model's order. Weight names are the
            torch model's (``"features.0.weight"``, ``"rnn.weight_hh_l0_reverse"``), as in the
            result.
        kept: weight names of the analog layers left as they were (``uncovered="keep"``).
        noise_model: gpuwpo's PCM model whose aihwkit counterpart (with each layer's converter)
            every changed tile now holds.
    """

    layers: dict[str, AppliedLayer]
    kept: tuple[str, ...]
    noise_model: Any

    def converters(self) -> dict[str, Any]:
        """Weight name -> the gpuwpo converter on its tiles (as ``NetworkResult.converters``)."""
        return {name: layer.converter for name, layer in self.layers.items()}


def _names(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _weight_name(module_name: str, rnn_names: Sequence[str]) -> str:
    """The torch model's name of the weight that the analog layer ``module_name`` holds.

    An ``AnalogRNN`` named ``p`` holds ``p.weight_{ih,hh}_l{layer}[_reverse]`` (torch's names
    for an ``nn.LSTM`` / ``GRU`` / ``RNN`` named ``p``) in its cells' analog layers
    ``p.rnn.layers.{layer}[.directions.{d}].cell.weight_{ih,hh}``; any other analog layer ``m``
    replaces torch's Linear or Conv module ``m`` and holds ``m.weight``.
    """
    for rnn in sorted(rnn_names, key=len, reverse=True):  # the innermost AnalogRNN first
        prefix = f"{rnn}." if rnn else ""
        if module_name.startswith(prefix):
            match = _RNN_CELL_WEIGHT.fullmatch(module_name[len(prefix):])
            if match is not None:
                reverse = "_reverse" if match["direction"] == "1" else ""
                return f"{prefix}weight_{match['kind']}_l{match['layer']}{reverse}"
    return f"{module_name}.weight" if module_name else "weight"


def _analog_layers(analog_model) -> dict[str, tuple[str, Any]]:
    """Weight name -> (analog layer's name, analog layer), for every analog layer of the model
    (aihwkit's own rule: an ``AnalogLayerBase`` that is not a container), in the model's order."""
    from aihwkit.nn import AnalogRNN
    from aihwkit.nn.modules.base import AnalogLayerBase

    modules = list(analog_model.named_modules())
    rnn_names = [name for name, module in modules if isinstance(module, AnalogRNN)]
    return {_weight_name(name, rnn_names): (name, module) for name, module in modules
            if isinstance(module, AnalogLayerBase) and not module.IS_CONTAINER}


def _mapped_shape(shape: Sequence[int]) -> tuple[int, int]:
    """A weight's shape as a crossbar holds it: out x (in * prod(kernel)), as aihwkit maps it."""
    return int(shape[0]), int(math.prod(shape[1:]))


def _held_shape(module) -> tuple[int, ...] | None:
    """The weight shape [out, in * prod(kernel)] an analog layer holds over all its tiles (None
    for a layer type that cannot report it)."""
    from aihwkit.exceptions import ModuleError

    try:
        return tuple(module.get_weights()[0].shape)
    except ModuleError:
        return None


def _tile_mapping(rpu_config) -> str:
    """``"columnwise"`` when the tile scales each output column to its own max before it
    converts (aihwkit's ``weight_scaling_omega > 0`` with ``weight_scaling_columnwise``), else
    ``"layer"`` (no scaling, or one scale for the tile: a CustomPair program's grid follows the
    tile's max|W|, so one scale changes nothing).

    What a converter programs depends only on this: every converter is relative to the max|W|
    it is given, so an omega other than 1 changes the tile's units (what a readout periphery
    sees), not its conductances; :func:`apply` places programs, and accepts it."""
    mapping = getattr(rpu_config, "mapping", None)
    if (mapping is not None and float(getattr(mapping, "weight_scaling_omega", 0.0) or 0.0) > 0.0
            and getattr(mapping, "weight_scaling_columnwise", False)):
        return "columnwise"
    return "layer"


def _recorded_mapping(result, layer) -> str:
    # Each layer records its mapping (results files of version 4; older ones load as "layer",
    # the reference optimiser's one scale per layer). A result made before LayerResult had a
    # mapping may still name one for the run in its settings (DESIGN.md section 5c).
    mapping = getattr(layer, "mapping", None)
    if mapping is None:
        options = result.settings.get("options") or {}
        mapping = result.settings.get("mapping") or options.get("mapping")
    return str(mapping or "layer")


def _check_mapping(module: str, name: str, tile_config, recorded: str) -> None:
    mapping = _tile_mapping(tile_config)
    if mapping == recorded:
        return
    if mapping == "columnwise":
        omega = float(tile_config.mapping.weight_scaling_omega)
        raise ValueError(
            f"analog layer {module!r} scales each output column to its own max "
            f"(mapping.weight_scaling_omega={omega:g}, mapping.weight_scaling_columnwise=True), "
            f"but the program for {name!r} was chosen for one scale per layer: set "
            f"mapping.weight_scaling_columnwise=False for it")
    raise ValueError(
        f"the program for {name!r} was chosen for weights scaled per output column (mapping "
        f"{recorded!r}), but analog layer {module!r} converts them unscaled or with one scale: "
        f"set mapping.weight_scaling_omega=1.0 and mapping.weight_scaling_columnwise=True for it")


def _inference_tiles(module_name: str, module) -> list:
    """The analog layer's tiles, each checked to be an inference tile (one with a noise model)."""
    tiles = list(module.analog_tiles())
    if not tiles:
        raise ValueError(f"analog layer {module_name!r} has no analogue tiles")
    for tile in tiles:
        config = getattr(tile, "rpu_config", None)
        if not hasattr(config, "noise_model"):
            raise ValueError(
                f"analog layer {module_name!r} is on {type(tile).__name__} tiles whose "
                f"{type(config).__name__} has no noise model: not an inference tile (convert "
                f"with TorchInferenceRPUConfig or InferenceRPUConfig)")
    return tiles


def _aihwkit_program(name: str, converter, mapping: str = "layer") -> Any:
    """aihwkit's converter for a layer's program; a clipping program is refused by name."""
    clip = float(getattr(converter, "clip", 1.0))
    if clip != 1.0:
        where = (f"each output row at {clip:g} x its own max|w| (the columnwise mapping then "
                 f"scales every row to its clipped max)" if mapping == "columnwise"
                 else f"at c = {clip:g} * max|W|")
        raise ValueError(
            f"the program for {name!r} clips the weights (clip={clip:g}); aihwkit's converters "
            f"have no clip, so its tiles cannot program it: search without a clip, or clip "
            f"that layer's weights yourself ({where}), set them on the model, and put "
            f"converter.without_clip() on its tiles")
    try:
        return to_aihwkit_converter(converter)
    except (TypeError, ValueError) as err:
        raise ValueError(f"the converter for {name!r}: {err}") from None


def _pcm_model(noise_model, result):
    """gpuwpo's PCM model that :func:`apply` puts on the tiles (default: the result's)."""
    from .device.noise import CustomDriftPCMLikeNoiseModel, PCMLikeNoiseModel
    from .network.settings import physics_from_settings

    if noise_model is None:
        return physics_from_settings(result.settings)["noise_model"]
    if is_aihwkit_object(noise_model):
        return from_aihwkit_noise_model(noise_model)
    if type(noise_model) not in (PCMLikeNoiseModel, CustomDriftPCMLikeNoiseModel):
        raise ValueError(f"noise_model must be a PCM model (gpuwpo's or aihwkit's "
                         f"PCMLikeNoiseModel or CustomDriftPCMLikeNoiseModel), got "
                         f"{type(noise_model).__name__}")
    return noise_model


def apply(analog_model, result, *, noise_model=None, uncovered: str = "error") -> Applied:
    """Put each layer's converter of a gpuwpo result on an aihwkit model's analogue tiles.

    Every analog layer that holds a weight of the result gets, on each of its tiles, an
    ``rpu_config.noise_model`` that is aihwkit's PCM model with that layer's converter as its
    ``g_converter``: the result's program (``LayerResult.converter``), or the baseline
    converter where the layer kept the baseline. The model's ``program_analog_weights()`` and
    ``drift_analog_weights(t)`` then program and drift every layer with its own converter.
    Nothing else on the tiles changes (drift compensation, forward periphery, mapping: the
    deployment the user configured). A tile that was programmed before forgets it: its next
    ``drift_analog_weights`` programs it afresh with the new converter (or call
    ``program_analog_weights()``). Nothing is changed unless every check below passes.

    Layers are matched by name. The result's names are the torch model's weight names; the
    analog layer ``features.0`` (aihwkit's Linear or Conv layer that replaced torch's
    ``features.0``) holds ``features.0.weight``, and an ``AnalogRNN`` named ``rnn`` holds
    ``rnn.weight_ih_l0``, ``rnn.weight_hh_l0_reverse``, ... (the names of torch's
    ``nn.LSTM`` / ``GRU`` / ``RNN`` ``rnn``) in its cells' analog layers. A layer may span
    several tiles (aihwkit splits it at ``mapping.max_input_size`` / ``max_output_size``); each
    tile gets the layer's converter and converts its own block on the grid of its own max|W|.

    The mapping: each layer's program was chosen for a mapping (``LayerResult.mapping``:
    ``"layer"``, one scale for the layer, or ``"columnwise"``, each output row scaled to its own
    max), and its tiles must deploy that mapping: ``"columnwise"`` needs
    ``mapping.weight_scaling_omega > 0`` (1 in aihwkit's presets) with
    ``mapping.weight_scaling_columnwise = True``, ``"layer"`` a tile without per-row scaling.
    A mismatch is refused, naming the layer and the setting to change, rather than set here:
    the tiles hold weights already scaled by their config when the model was converted (or
    their weights set), so changing the config now would not rescale them, and the digital
    scales would be wrong until the weights are set again. A columnwise layer split along its
    inputs scales each block's rows on their own (finer than the rows the program was judged
    on; the program, relative to each row's max, means the same there).

    Args:
        analog_model: an aihwkit model on inference tiles (``TorchInferenceRPUConfig`` or
            ``InferenceRPUConfig``): ``aihwkit.nn.conversion.convert_to_analog(model, config)``
            of the model the result was made for, or one built from aihwkit's analog layers.
        result: a :class:`gpuwpo.NetworkResult`, or the path of a results file.
        noise_model: the PCM model to put on the tiles: gpuwpo's or aihwkit's
            ``PCMLikeNoiseModel`` / ``CustomDriftPCMLikeNoiseModel``. Default: the one the result
            was searched with (its settings), i.e. the devices its strategies were chosen for.
            The tiles' previous noise models are replaced.
        uncovered: what becomes of an analog layer whose weight the result does not hold:
            ``"error"`` (the default: a ValueError naming them, since a model partly left on
            aihwkit's default SinglePair converter is rarely what was meant), ``"keep"`` (left
            as it is, named in :attr:`Applied.kept`) or ``"baseline"`` (the result's baseline
            converter, under the same noise model: the network a baseline run programs).

    Returns:
        :class:`Applied`: weight name -> what its tiles now hold (module, tiles, gpuwpo's and
        aihwkit's converter, the result's label), the layers kept, the noise model.

    Raises:
        ValueError: ``uncovered`` not one of :data:`UNCOVERED`; a model without analog layers;
            a weight of the result that no analog layer holds, or one of another shape (both
            named, with the weights the model's analog layers hold); an uncovered analog layer
            (with ``uncovered="error"``); a tile that is not an inference tile; a program that
            clips (``clip < 1``: aihwkit's converters have no clip; the message says how to
            deploy it: clip the weights, put ``converter.without_clip()`` on the tiles); a tile
            whose mapping scales each column while the program was chosen for one scale per
            layer (``mapping.weight_scaling_columnwise``), or the reverse; a noise model that is
            not a PCM model.
        TypeError: ``analog_model`` is not an ``nn.Module``, or ``result`` is neither a
            NetworkResult nor a path.
        ImportError: aihwkit is not installed.
    """
    require_aihwkit()
    from torch import nn

    from .io.results import load_result
    from .network.result import NetworkResult
    from .network.settings import physics_from_settings

    if uncovered not in UNCOVERED:
        raise ValueError(f"uncovered must be one of {', '.join(UNCOVERED)}, got {uncovered!r}")
    if not isinstance(analog_model, nn.Module):
        raise TypeError(f"analog_model must be an aihwkit model (an nn.Module), got "
                        f"{type(analog_model).__name__}")
    if isinstance(result, (str, os.PathLike)):
        result = load_result(result)
    if not isinstance(result, NetworkResult):
        raise TypeError(f"result must be a gpuwpo NetworkResult or the path of a results file, "
                        f"got {type(result).__name__}")
    pcm = _pcm_model(noise_model, result)

    analog = _analog_layers(analog_model)
    if not analog:
        raise ValueError(f"the {type(analog_model).__name__} has no analog layers: convert it "
                         "first (aihwkit.nn.conversion.convert_to_analog(model, "
                         "TorchInferenceRPUConfig()))")
    by_name = {layer.name: layer for layer in result.layers}
    missing = [name for name in by_name if name not in analog]
    if missing:
        raise ValueError(f"no analog layer of the model holds {_names(missing)} of the result; "
                         f"its analog layers hold {_names(list(analog))}")
    not_covered = [name for name in analog if name not in by_name]
    if not_covered and uncovered == "error":
        shown = [f"{analog[name][0]} ({name})" for name in not_covered]
        raise ValueError(f"the result does not cover the analog layer(s) {_names(shown)}: pass "
                         "uncovered='keep' to leave them as they are, or uncovered='baseline' "
                         "to put the result's baseline converter on them")

    baseline = physics_from_settings(result.settings)["baseline"] if (
        not_covered and uncovered == "baseline") else None
    # Check everything (shapes, tiles, mappings, converters) before any tile changes.
    plan = []
    for name, (module_name, module) in analog.items():
        layer = by_name.get(name)
        if layer is None and uncovered == "keep":
            continue
        converter = layer.converter if layer is not None else baseline
        held = _held_shape(module) if layer is not None else None
        if held is not None and held != _mapped_shape(layer.shape):
            raise ValueError(f"analog layer {module_name!r} holds a {held[0]} x {held[1]} "
                             f"weight, the result's {name!r} is {tuple(layer.shape)} (mapped "
                             f"{_mapped_shape(layer.shape)}): a result made for another network")
        tiles = _inference_tiles(module_name, module)
        if layer is not None:  # the baseline on an uncovered layer was chosen for no mapping
            for tile in tiles:
                _check_mapping(module_name, name, tile.rpu_config,
                               _recorded_mapping(result, layer))
        _aihwkit_program(name, converter,
                         _recorded_mapping(result, layer) if layer is not None else "layer")
        ref_noise = to_aihwkit_noise_model(pcm, converter)
        chosen = layer.chosen if layer is not None else "uncovered: baseline"
        plan.append((name, module_name, tiles, converter, ref_noise, chosen))

    applied = {}
    for name, module_name, tiles, converter, ref_noise, chosen in plan:
        for tile in tiles:
            tile.rpu_config.noise_model = copy.deepcopy(ref_noise)  # each tile owns its config
            # Programmed with the old converter: the next drift programs the tile afresh.
            tile.programmed_weights = None
            tile.drift_noise_parameters = None
        applied[name] = AppliedLayer(module=module_name, tiles=len(tiles), converter=converter,
                                     g_converter=ref_noise.g_converter, chosen=chosen)
    kept = tuple(name for name in not_covered if uncovered == "keep")
    return Applied(layers=applied, kept=kept, noise_model=pcm)
