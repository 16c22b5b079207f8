"""Drop-in for the reference toolkit's ``aihwkit.inference.converter.wpo``, running on gpuwpo.

Change one import line::

    from aihwkit.inference.converter.wpo import WeightProgrammingOptimizer    # before
    from gpuwpo.wpo import WeightProgrammingOptimizer                         # after

and the same script gets the same kind of answer from gpuwpo's batched search: the class, its
keyword arguments and defaults, its methods and the module's functions have the reference's
names, signatures and meaning (aihwkit 1.1.0). What runs underneath is gpuwpo's
``physics="aihwkit"`` (the reference's own tile semantics, verified against it), translated from
the ``rpu_config`` you pass:

* an aihwkit ``InferenceRPUConfig`` or ``TorchInferenceRPUConfig`` (when aihwkit is installed):
  its noise model, drift compensation, forward periphery and mapping are translated by
  :func:`gpuwpo.aihwkit.from_aihwkit_rpu_config`; a setting gpuwpo does not model is
  refused with a ValueError naming it. ``run_optimizer`` then returns aihwkit's own
  ``CustomPairConductanceConverter``, ready for its inference tiles.
* without aihwkit, gpuwpo's small :class:`InferenceConfig` (noise model, drift compensation,
  converter, tile size, mapping); ``run_optimizer`` returns gpuwpo's converter.

Differences from the reference, on purpose:

* The mapping the user deploys is the one searched. The reference switches the rpu_config's
  mapping scales off while it searches (``loss_rpu_config`` then converts the weights unscaled,
  one scale per layer) and hands back a converter for the config with its mapping restored, as
  its example 33 deploys it: per output row (``mapping.weight_scaling_omega = 1``,
  ``weight_scaling_columnwise = True``). A program is judged by the weights its converter is
  given, so gpuwpo searches, sets the baseline and chooses under that deployed mapping
  (``mapping_saved``; :mod:`gpuwpo.device.mapping`): under the columnwise mapping each row of
  the test tile is scaled to its own max before the program sees it. The attributes keep the
  reference's meaning (``rpu_config`` with the scales off, ``mapping_saved``), and so do the
  module functions (:func:`loss_rpu_config` and :func:`loss_fxn` evaluate the config they are
  given, with its mapping, as the reference's do).
* The search starts from the standard converters the strategy space can express (the baseline's
  program, N-pair programs over a grid of F and k_w: ``standard_starts`` of
  :class:`gpuwpo.search.options.SearchOptions`) and the answer is chosen on fresh noise (next
  item). ``reference_search=True`` (gpuwpo's keyword) restores the reference's bare search: the
  mapping off while searching, no standard starts, and the search's own answer returned with
  the reference's success (its in-search loss below zero) instead of the choice on fresh noise.

* ``success`` is always a bool: whether the answer, re-evaluated with fresh noise, beats the
  baseline by ``loss_margin`` (the reference returns True, or the in-search loss as a float).
  ``best_loss`` is that validated TNMSE; the whole report is in ``self.result``.
* Never worse: the answer is chosen, on the same fresh noise, among the search's best, its
  polish, the best standard start and the baseline (:mod:`gpuwpo.search.selection`); where no
  strategy beats the baseline with confidence, ``run_optimizer`` returns the baseline's own
  program as a CustomPair (its exact encoding at the grid points) and success False.
* Randomness is seeded: the test weights are shuffled with ``seed`` (its stream ``"test_tiles"``,
  :data:`gpuwpo.rng.STREAMS`; the reference shuffles with numpy's unseeded global generator),
  and the module functions take an optional ``generator`` (:mod:`gpuwpo.rng`'s meaning: a
  generator, an int seed, or None for fresh entropy; torch's global generator is never used).
* ``workers`` is accepted and has no effect (the population is one batched evaluation), and
  ``device`` chooses where gpuwpo computes.
* :func:`loss_fxn` also takes a population ``x`` [P, D] and returns [P].

This module keeps the reference's search defaults (population 100 x D, 200 generations,
best1bin, mutation 0.1, recombination 0.3), which :class:`gpuwpo.WeightProgrammingOptimizer`
does not have to: gpuwpo's own are in :class:`gpuwpo.search.options.SearchOptions`, chosen from
measured curves (docs/RESULTS.md, "Defaults"; ``bench/quality.py``).
"""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import aihwkit as interop
from .device.compensation import GlobalDriftCompensation
from .device.converters import (
    CustomPairConductanceConverter,
    NPairConductanceConverter,
    SinglePairConductanceConverter,
)
from .device.mapping import Recipe
from .device.noise import PCMLikeNoiseModel
from .device.sampling import downsample_weight_distribution as _downsample
from .device.sampling import shuffle_weights as _shuffle
from .device.simulate import as_time_tensor, simulate_weights
from .rng import make_generator, stream_generator
from .search.optimizer import WeightProgrammingOptimizer as _Optimizer
from .search.strategy import StrategySpace

__all__ = ["WeightProgrammingOptimizer", "InferenceConfig", "MappingConfig", "AnalogTileModel",
           "denormalize", "downsample_weight_distribution", "loss_fxn", "loss_rpu_config",
           "loss_weights", "partition_parameters", "reformat_x_g", "shuffle_weights",
           "span_of_remaining_pairs", "stop_criterion"]

_ERROR_AMPLIFICATION = 10.0


# --------------------------------------------------------------------------------------------
# gpuwpo's own small config (when aihwkit is not installed)
# --------------------------------------------------------------------------------------------


@dataclass
class MappingConfig:
    """The part of the reference's ``MappingParameter`` the optimiser reads.

    ``max_input_size`` is the test tile's in_features. The scaling flags are the reference's and
    mean what they mean there (:func:`gpuwpo.aihwkit.mapping_from_aihwkit`):
    ``weight_scaling_omega = 0`` is the mapping ``"layer"``, ``weight_scaling_omega = 1`` with
    ``weight_scaling_columnwise = True`` the mapping ``"columnwise"`` (each output row scaled to
    its own max); other scalings are refused by name.
    """

    max_input_size: int = 512
    max_output_size: int = 512
    weight_scaling_omega: float = 0.0
    weight_scaling_columnwise: bool = False
    learn_out_scaling: bool = False
    out_scaling_columnwise: bool = False


@dataclass
class InferenceConfig:
    """gpuwpo's stand-in for the reference's inference RPU config.

    Attributes:
        noise_model: a :class:`gpuwpo.device.noise.DeviceModel` (default PCM, g_max 25 uS).
        drift_compensation: a gpuwpo compensation; its readout periphery stands for the
            reference's ``forward`` settings (``GlobalDriftCompensation.aihwkit_default()`` is
            the reference's default forward; the default here is the ideal readout).
        g_converter: the converter programs are made with (the reference keeps it at
            ``noise_model.g_converter``); ``run_optimizer`` sets the optimised one here.
        mapping: :class:`MappingConfig`.
    """

    noise_model: Any = field(default_factory=PCMLikeNoiseModel)
    drift_compensation: Any = field(default_factory=GlobalDriftCompensation)
    g_converter: Any = field(default_factory=SinglePairConductanceConverter)
    mapping: MappingConfig = field(default_factory=MappingConfig)


@dataclass
class AnalogTileModel:
    """A test layer for :func:`loss_weights` without aihwkit: its size and its config.

    Stands where the reference takes an ``AnalogLinear(in_features, out_features, bias=False,
    rpu_config=...)``; it only carries what the loss needs.
    """

    in_features: int
    out_features: int
    rpu_config: InferenceConfig = field(default_factory=InferenceConfig)


def _is_reference_config(rpu_config: Any) -> bool:
    return interop.is_aihwkit_object(rpu_config)


def _physics_of(rpu_config: Any) -> tuple[Any, Any, Any, str]:
    """(gpuwpo noise model, compensation, converter, mapping) of a reference or gpuwpo config."""
    if isinstance(rpu_config, InferenceConfig):
        return (rpu_config.noise_model, rpu_config.drift_compensation, rpu_config.g_converter,
                interop.mapping_from_aihwkit(rpu_config))
    if _is_reference_config(rpu_config):
        noise_model, compensation, mapping = interop.from_aihwkit_rpu_config(rpu_config)
        converter = interop.from_aihwkit_converter(rpu_config.noise_model.g_converter)
        return noise_model, compensation, converter, mapping
    raise TypeError(f"rpu_config must be aihwkit's InferenceRPUConfig / TorchInferenceRPUConfig "
                    f"or gpuwpo.wpo.InferenceConfig, got {type(rpu_config).__name__}")


def _set_converter(rpu_config: Any, converter: Any) -> None:
    if isinstance(rpu_config, InferenceConfig):
        rpu_config.g_converter = converter
    else:
        rpu_config.noise_model.g_converter = converter


def _program_converter(f_lst: Sequence[float], g_lst: Sequence[Sequence[float]], g_min: float,
                       g_max: float, reference: bool):
    """A CustomPair converter of the reference's type (lists) or gpuwpo's."""
    if reference:
        interop.require_aihwkit()
        from aihwkit.inference.converter.conductance import (
            CustomPairConductanceConverter as RefCustomPair,
        )

        return RefCustomPair([float(f) for f in f_lst], [[float(g) for g in row] for row in g_lst],
                             g_min=float(g_min), g_max=float(g_max), invertibility_test=False)
    return CustomPairConductanceConverter(list(f_lst), g_lst, g_min, g_max,
                                          invertibility_test=False)


# --------------------------------------------------------------------------------------------
# The module functions (the reference's names and signatures)
# --------------------------------------------------------------------------------------------


def shuffle_weights(weights: Tensor, generator: torch.Generator | int | None = None) -> Tensor:
    """The weights in a random order, same shape (the reference's ``shuffle_weights``).

    ``generator``: source of the permutation (gpuwpo's addition): a generator, an int seed, or
    None for fresh entropy (:mod:`gpuwpo.rng`).
    """
    return _shuffle(weights, generator)


def downsample_weight_distribution(weights: Tensor, shape: torch.Size | Sequence[int],
                                   generator: torch.Generator | int | None = None) -> Tensor:
    """The weights' distribution resampled to ``shape`` (sorted, interpolated, shuffled).

    As the reference's: linear interpolation of the sorted weights at evenly spaced ranks (the
    extremes kept; upsampling works too), then a shuffle. ``generator`` is gpuwpo's addition (a
    generator, an int seed, or None for fresh entropy).
    """
    weights = torch.as_tensor(weights)
    if not weights.is_floating_point():
        weights = weights.float()
    return _downsample(weights, tuple(shape), generator)


def stop_criterion(intermediate_result: Any) -> None:
    """Print the normalised loss; stop the search (StopIteration) once it is below zero.

    ``intermediate_result.fun`` is ``(loss - baseline) / baseline + loss_margin`` of the best
    candidate so far, as in the reference.
    """
    fun = float(intermediate_result.fun)
    print(f"\t(current loss - baseline loss) / baseline loss + loss margin = {fun:0.10f} "
          f"({datetime.now()})")
    if fun < 0.0:
        raise StopIteration


def _space_of(d: dict, nbins: int | None = None) -> StrategySpace:
    """The strategy space that the reference's settings dict ``d`` describes."""
    if nbins is None:
        nbins = (len(d["weights_discretized_unitless"]) + 1) // 2
    g_min, g_max = float(d["g_min"]), float(d["g_max"])
    return StrategySpace(list(d["f_lst"]), g_min, g_max, nbins=nbins,
                         symmetric=bool(d.get("symmetric", True)), g_err=float(d.get("g_err", 0.0)),
                         f_min=float(d["f_min"]), f_max=float(d["f_max"]),
                         use_max_kw=bool(d["use_max_kw"]))


def _as_x(x: Any) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64).reshape(-1)


def partition_parameters(x: Any, d: dict) -> tuple[list[float], Any, Any]:
    """Split a hypercube point into the f factors, k_w (uS per unit weight) and the x_g values.

    As the reference's: ``d`` holds f_lst (None for a free factor), f_min, f_max, use_max_kw,
    g_min, g_max and max_abs_weight_unitless. Returns ``(f_lst, k_w, x_g)`` with k_w of the type
    of ``max_abs_weight_unitless`` (a float or a tensor) and x_g the rest of ``x``. Computed by
    :meth:`gpuwpo.StrategySpace.decode` (the one definition of the decode).
    """
    f_lst = list(d["f_lst"])
    space = StrategySpace(f_lst, float(d["g_min"]), float(d["g_max"]), f_min=float(d["f_min"]),
                          f_max=float(d["f_max"]), use_max_kw=bool(d["use_max_kw"]))
    head = space.num_free_f + (0 if d["use_max_kw"] else 1)
    x_t = _as_x(x)
    m = d["max_abs_weight_unitless"]
    # The head of x (free f, x_kw) alone fixes f and k_w; the rest may be anything.
    probe = torch.cat([x_t[:head], torch.zeros(space.dim - head, dtype=torch.float64)])
    f, _, k_w = space.decode(probe, torch.as_tensor(m, dtype=torch.float64))
    f_out = [float(f[k]) if v is None else v for k, v in enumerate(f_lst)]
    return f_out, (k_w if isinstance(m, Tensor) else float(k_w)), x[head:]


def reformat_x_g(x_g: Any, len_f_lst: int, symmetric: bool) -> tuple[list[list[float]], int]:
    """The x_g values as rows in the order of a CustomPair's g_lst, and the grid length.

    As the reference's: ``x_g`` (length n (2K - 1)) is cut into 2K - 1 rows of n values; the
    grid length is n, or 2n - 1 when ``symmetric``.
    """
    values = _as_x(x_g).tolist()
    g_len = int(len(values) / (2 * len_f_lst - 1))
    rows = [values[i:i + g_len] for i in range(0, len(values), g_len)]
    return rows, (g_len * 2 - 1 if symmetric else g_len)


def span_of_remaining_pairs(span_of_each_pair: Sequence[float], ind: int) -> float:
    """Conductance span (uS, f included) of the pairs from ``ind`` on (0 past the end)."""
    return 0 if ind > len(span_of_each_pair) else sum(span_of_each_pair[ind:])


def denormalize(x: Any, d: dict) -> tuple[list[float], list[list[float]]]:
    """Decode a hypercube point into ``(f_lst, g_lst)`` of a CustomPair program.

    As the reference's, from its settings dict ``d`` (f_lst, f_min, f_max, use_max_kw, g_min,
    g_max, g_err in uS, symmetric, max_abs_weight_unitless, weights_discretized_unitless);
    computed by :meth:`gpuwpo.StrategySpace.decode`, the one definition of the decode.
    """
    space = _space_of(d)
    grid = torch.as_tensor(d["weights_discretized_unitless"], dtype=torch.float64)
    f, g_lst, _ = space.decode(_as_x(x), grid.abs().max())
    return f.tolist(), g_lst.tolist()


def _tnmse_samples(rpu_config: Any, test_weights: Tensor, t_steps: Sequence[float],
                   max_abs_weight_unitless: Any, repeats: int,
                   generator: torch.Generator | int | None) -> Tensor:
    """TNMSE of ``repeats`` programmings of the tile ``test_weights.T`` [out, in], as the
    reference's loss_weights computes one (its normalisation included), under the config's
    mapping (the digital scales included in the effective weights, as ``tile.get_weights()``
    gives them)."""
    noise_model, compensation, converter, mapping = _physics_of(rpu_config)
    weights = torch.as_tensor(test_weights).detach().to("cpu", torch.float32)
    if weights.ndim != 2:
        raise ValueError(f"test_weights must be [in_features, out_features], got "
                         f"{tuple(weights.shape)}")
    tile = weights.T.contiguous()  # [out, in], as the tile holds it
    t = as_time_tensor(t_steps, dtype=torch.float64)
    eff = simulate_weights(tile, Recipe(converter, mapping), noise_model, t.tolist(),
                           compensation, repeats=repeats,
                           generator=make_generator(generator, "cpu"),
                           physics="aihwkit")  # [repeats, T, out, in]
    m = float(torch.as_tensor(max_abs_weight_unitless))
    err = (_ERROR_AMPLIFICATION * (eff.double() - tile.double()) / m).square()
    tnmse = err.sum((-3, -2, -1)) / (tile.numel() * t.numel())
    return torch.where(torch.isnan(tnmse), torch.full_like(tnmse, math.inf), tnmse)


def _model_config(model: Any) -> tuple[Any, int, int]:
    """(rpu_config, in_features, out_features) of a test layer: gpuwpo's or aihwkit's."""
    if isinstance(model, AnalogTileModel):
        return model.rpu_config, int(model.in_features), int(model.out_features)
    if hasattr(model, "analog_tiles"):
        tiles = list(model.analog_tiles())
        if len(tiles) != 1:
            raise ValueError(f"the model's layer is split over {len(tiles)} analog tiles; gpuwpo "
                             "models one tile (in_features <= mapping.max_input_size)")
        return tiles[0].rpu_config, int(model.in_features), int(model.out_features)
    raise TypeError(f"model must be aihwkit's AnalogLinear or gpuwpo.wpo.AnalogTileModel, got "
                    f"{type(model).__name__}")


def loss_weights(model: Any, t_steps: Sequence[float], test_weights: Tensor,
                 max_abs_weight_unitless: Any, loss_baseline: float, loss_margin: float,
                 get_baseline: bool = False, *,
                 generator: torch.Generator | int | None = None) -> float:
    """TNMSE of one programming of ``test_weights`` [in, out] on ``model``'s tile.

    As the reference's: the layer is programmed afresh at every time of ``t_steps``, drifted,
    read and compensated; ``TNMSE = sum_t sum_n (10 (alpha_t W_t - W) / max_abs_weight)^2 /
    (in * out * T)``. Returns the TNMSE with ``get_baseline``, else
    ``(TNMSE - loss_baseline) / loss_baseline + loss_margin``; NaN becomes inf. ``model`` is the
    reference's ``AnalogLinear`` (its tile's rpu_config, with the converter in
    ``noise_model.g_converter``) or :class:`AnalogTileModel`; computed by gpuwpo's
    ``physics="aihwkit"``. ``generator`` is gpuwpo's addition.
    """
    rpu_config, in_f, out_f = _model_config(model)
    if tuple(torch.as_tensor(test_weights).shape) != (in_f, out_f):
        raise ValueError(f"test_weights must be [in_features, out_features] = [{in_f}, {out_f}] "
                         f"for this model, got {tuple(torch.as_tensor(test_weights).shape)}")
    tnmse = float(_tnmse_samples(rpu_config, test_weights, t_steps, max_abs_weight_unitless, 1,
                                 generator)[0])
    return tnmse if get_baseline else (tnmse - loss_baseline) / loss_baseline + loss_margin


def loss_rpu_config(d: dict, *, generator: torch.Generator | int | None = None) -> float:
    """The loss of ``d["rpu_config"]``'s converter on the test weights, as the reference's.

    ``d`` holds rpu_config, t_steps, weights_downsampled_unitless [in, out],
    max_abs_weight_unitless, loss_baseline, loss_margin and get_baseline (the optimiser's
    settings, :meth:`WeightProgrammingOptimizer.settings`).
    """
    tnmse = float(_tnmse_samples(d["rpu_config"], d["weights_downsampled_unitless"],
                                 d["t_steps"], d["max_abs_weight_unitless"], 1, generator)[0])
    if d.get("get_baseline", False):
        return tnmse
    return (tnmse - d["loss_baseline"]) / d["loss_baseline"] + d["loss_margin"]


def _settings_arg(args: tuple) -> dict:
    if not args:
        raise TypeError("loss_fxn(x, d) needs the optimiser's settings (a dict, or the "
                        "reference's pickled dict)")
    d = args[0]
    if isinstance(d, (bytes, bytearray)):
        # The reference passes its own settings pickled (for scipy's worker processes); these
        # are the caller's bytes, made in the same process, never a file.
        d = pickle.loads(d)  # noqa: S301
    if not isinstance(d, dict):
        raise TypeError(f"loss_fxn's settings must be a dict, got {type(d).__name__}")
    return d


def loss_fxn(x: Any, *args: Any) -> Any:
    """Loss of the program that the hypercube point ``x`` encodes, as the reference's.

    ``args[0]``: the optimiser's settings (a dict, or the reference's pickled dict). ``x`` [D]
    gives a float; gpuwpo also takes a population [P, D] and returns a [P] tensor, evaluated in
    one batched call.
    """
    d = _settings_arg(args)
    x_t = torch.as_tensor(x, dtype=torch.float64)
    if x_t.ndim == 2:
        return torch.tensor([loss_fxn(row, d) for row in x_t], dtype=torch.float64)
    f_lst, g_lst = denormalize(x_t, d)
    cfg = copy.deepcopy(d["rpu_config"])
    _set_converter(cfg, _program_converter(f_lst, g_lst, d["g_min"], d["g_max"],
                                           _is_reference_config(cfg)))
    return loss_rpu_config({**d, "rpu_config": cfg})


# --------------------------------------------------------------------------------------------
# The optimiser
# --------------------------------------------------------------------------------------------

#: The reference's defaults (aihwkit 1.1.0), kept here on purpose.
_REFERENCE_DEFAULTS: dict[str, Any] = {
    "nbins": 6, "test_out_features": 20, "g_err": 0.0, "f_min": 0.1, "f_max": 5.0,
    "use_max_kw": False, "loss_margin": 0.125, "baseline_iterations": 100,
    "callback": stop_criterion, "disp": True, "strategy": "best1bin", "popsize": 100,
    "maxiter": 200, "tol": 0.0, "atol": 0.02, "mutation": 0.1, "recombination": 0.3,
    "polish": True, "workers": -1, "seed": 100, "x_init": "latinhypercube", "device": "cpu",
}

#: gpuwpo's own settings of the drop-in (the module docstring): ``reference_search=True`` is the
#: reference's bare search (mapping off while searching, no standard starts, no choice on fresh
#: noise).
_GPUWPO_DEFAULTS: dict[str, Any] = {"reference_search": False}


@dataclass
class _WithMapping:
    """A config holding only ``mapping`` (what :func:`gpuwpo.aihwkit.mapping_from_aihwkit`
    reads)."""

    mapping: Any


class _DeployedMapping(_Optimizer):
    """gpuwpo's optimiser whose choice offers the standard converters under the searched mapping
    only: the drop-in hands back one converter for the rpu_config the user deploys, so an
    answer chosen for another mapping would be programmed through a mapping it was not chosen
    for."""

    @property
    def contender_mappings(self) -> tuple[str, ...]:
        return (self.objective.mapping,)


class _IntermediateResult:
    """What a reference-style callback receives: ``x`` (numpy) and ``fun`` (normalised loss)."""

    def __init__(self, x, fun: float) -> None:
        self.x = x
        self.fun = fun


class WeightProgrammingOptimizer:
    """The reference's weight programming optimiser, on gpuwpo's batched search.

    Args (the reference's):
        weights: the layer's (or the network's) weights, any shape.
        f_lst: significance factors, numbers or None (optimised).
        rpu_config: aihwkit's InferenceRPUConfig / TorchInferenceRPUConfig, or
            :class:`InferenceConfig`.
        t_steps: inference times in seconds.
        g_converter_baseline: the converter to beat (SinglePair, DualPair, NPair or CustomPair;
            aihwkit's or gpuwpo's); its g_min and g_max bound the strategy.
        symmetric: mirror programs around w = 0.
        **kwargs: the reference's settings with its defaults: nbins=6, test_out_features=20,
            g_err=0.0, f_min=0.1, f_max=5.0, use_max_kw=False, loss_margin=0.125,
            baseline_iterations=100, callback=stop_criterion, disp=True, strategy="best1bin",
            popsize=100, maxiter=200, tol=0.0, atol=0.02, mutation=0.1, recombination=0.3,
            polish=True, workers=-1 (no effect), seed=100, x_init="latinhypercube",
            device="cpu" (where gpuwpo computes; "cuda" for a GPU); and gpuwpo's
            reference_search=False (True: the reference's bare search, the module docstring).

    The search, its baseline and the choice of the answer run under the mapping the user
    deploys, ``rpu_config.mapping`` as given (``mapping_saved``; ``"layer"`` or
    ``"columnwise"``), not with its scales off as the reference searches: the program is then
    chosen for the weights its converter will be given (the module docstring). With
    ``reference_search=True`` the mapping is off while searching, as in the reference.

    Attributes are the reference's (f_lst, rpu_config, mapping_saved, noise_model, t_steps,
    symmetric, test_in_features, the settings above, g_converter_baseline, g_min, g_max, g_err in
    uS, g_converter, get_baseline, loss_baseline, best_loss, weights_downsampled_unitless [in,
    out], max_abs_weight_unitless, weights_discretized_unitless), plus ``result``: gpuwpo's
    :class:`gpuwpo.OptimizationResult` after :meth:`differential_weight_evolution`.

    Raises:
        TypeError: an unknown keyword argument (named) or an unsupported baseline.
        ValueError: an rpu_config setting gpuwpo does not model (named), its mapping included
            (unless ``reference_search``, which searches with the mapping off).
    """

    def __init__(self, weights: Tensor, f_lst: list, rpu_config: Any, t_steps: Sequence[float],
                 g_converter_baseline: Any, symmetric: bool = True, **kwargs: Any) -> None:
        if not (isinstance(rpu_config, InferenceConfig) or _is_reference_config(rpu_config)):
            raise TypeError(f"rpu_config must be aihwkit's InferenceRPUConfig / "
                            f"TorchInferenceRPUConfig or gpuwpo.wpo.InferenceConfig, got "
                            f"{type(rpu_config).__name__}")
        self.f_lst = f_lst
        self.rpu_config = copy.deepcopy(rpu_config)
        self.mapping_saved = copy.deepcopy(self.rpu_config.mapping)
        # Scaling off while searching, as the reference does (it would distort the weights).
        self.rpu_config.mapping.weight_scaling_omega = 0.0
        self.rpu_config.mapping.weight_scaling_columnwise = False
        self.rpu_config.mapping.learn_out_scaling = False
        self.rpu_config.mapping.out_scaling_columnwise = False
        self.noise_model = self.rpu_config.noise_model
        self.t_steps = t_steps
        self.symmetric = symmetric
        self.test_in_features = int(self.rpu_config.mapping.max_input_size)
        self.__dict__.update(_REFERENCE_DEFAULTS)
        self.__dict__.update(_GPUWPO_DEFAULTS)
        unknown = sorted(set(kwargs) - set(self.__dict__))
        if unknown:
            raise TypeError(f"The following argument(s) are not supported: {', '.join(unknown)}")
        self.__dict__.update(kwargs)
        base = interop.from_aihwkit_converter(g_converter_baseline)
        if not isinstance(base, (NPairConductanceConverter, CustomPairConductanceConverter)):
            raise TypeError(f"g_converter_baseline = {type(g_converter_baseline).__name__} not "
                            "supported (SinglePair, DualPair, NPair or CustomPair)")
        self.g_converter_baseline = copy.deepcopy(g_converter_baseline)
        self.g_min = float(base.g_min)
        self.g_max = float(base.g_max)
        self.g_err = self.g_err * (self.g_max - self.g_min)
        # Translate now: a setting gpuwpo does not model is refused before any work.
        self._noise_model, self._compensation, _, _ = _physics_of(self.rpu_config)
        self._reference = _is_reference_config(self.rpu_config)
        # The mapping searched under: the one deployed (the config's, before the scales were
        # switched off), or the reference's none while it searches.
        self._mapping = ("layer" if self._flag("reference_search") else
                         interop.mapping_from_aihwkit(_WithMapping(self.mapping_saved)))
        l_grid = self.nbins * 2 - 1
        self.g_converter = _program_converter(
            list(f if f is not None else 1.0 for f in f_lst),
            [[self.g_min] * l_grid for _ in range(2 * len(f_lst))], self.g_min, self.g_max,
            self._reference)
        self.get_baseline = False
        self.loss_baseline = float("inf")
        self.best_loss = float("inf")
        self.result = None
        w = torch.as_tensor(weights).detach()
        w = (w if w.is_floating_point() else w.float()).to("cpu").reshape(-1)
        # The run's test-tile stream (gpuwpo.rng.STREAMS), as gpuwpo's own tiles of layer 0.
        gen = stream_generator(int(self.seed), "test_tiles", 0)
        self.weights_downsampled_unitless = downsample_weight_distribution(
            w, torch.Size([self.test_in_features, self.test_out_features]), gen)
        self.max_abs_weight_unitless = self.weights_downsampled_unitless.abs().max()
        self.weights_discretized_unitless = torch.linspace(
            -self.max_abs_weight_unitless, self.max_abs_weight_unitless, l_grid)

    # -- gpuwpo underneath -------------------------------------------------------------
    def settings(self) -> dict:
        """The optimiser's settings as the reference's dict (what loss_fxn takes)."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")
                and k not in ("result",)}

    def _flag(self, name: str) -> bool:
        """Setting ``name`` as a bool: the reference tests these for truth, and its own examples
        pass 0 and 1 (``use_max_kw=1``), so integers 0 and 1 are accepted as well as bools."""
        value = getattr(self, name)
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
            return bool(value)
        raise ValueError(f"{name} must be True or False (or 1 or 0), got {value!r}")

    def _optimizer(self) -> _Optimizer:
        """gpuwpo's optimiser for the current settings (kept while they do not change, so that
        the baseline is measured once for get_loss_baseline and the search)."""
        key = repr(sorted((k, repr(v)) for k, v in self.settings().items()
                          if k not in ("loss_baseline", "best_loss", "get_baseline", "f_lst",
                                       "g_converter", "rpu_config", "noise_model"))) \
            + repr(self.f_lst)
        if self.__dict__.get("_core_key") != key:
            self._core, self._core_key = self._build_optimizer(), key
        return self._core

    def _build_optimizer(self) -> _Optimizer:
        base = interop.from_aihwkit_converter(self.g_converter_baseline)
        tile = self.weights_downsampled_unitless.T.contiguous()  # [out, in], as the tile holds
        callback = self.callback

        def on_generation(result) -> bool:
            if callback is None:
                return False
            callback(_IntermediateResult(result.x[0].double().cpu().numpy(),
                                         float(result.fun[0])))
            return False

        bare = self._flag("reference_search")
        return _DeployedMapping(
            [tile], list(self.f_lst), self._noise_model, list(self.t_steps), base,
            symmetric=self.symmetric, device=self.device, compensation=self._compensation,
            physics="aihwkit", mapping=self._mapping, baseline_mapping=self._mapping,
            nbins=self.nbins, test_in_features=None, test_out_features=None,
            g_err=self.g_err / (self.g_max - self.g_min), f_min=self.f_min, f_max=self.f_max,
            use_max_kw=self._flag("use_max_kw"), loss_margin=self.loss_margin,
            baseline_iterations=self.baseline_iterations, callback=on_generation,
            disp=self._flag("disp"), strategy=self.strategy, popsize=self.popsize,
            maxiter=self.maxiter, tol=self.tol, atol=self.atol, mutation=self.mutation,
            recombination=self.recombination, polish=self._flag("polish"), seed=self.seed,
            x_init=self.x_init, standard_starts=not bare)

    # -- the reference's methods ---------------------------------------------------------
    def generate_hop_bounds(self) -> tuple[tuple[float, float], ...]:
        """The search bounds: ``((0.0, 1.0),) * D``, D the strategy space's dimension."""
        space = StrategySpace(list(self.f_lst), self.g_min, self.g_max, nbins=self.nbins,
                              symmetric=self.symmetric, f_min=self.f_min, f_max=self.f_max,
                              use_max_kw=self._flag("use_max_kw"))
        return ((0.0, 1.0),) * space.dim

    def get_loss_baseline(self) -> float:
        """Mean TNMSE of the baseline converter over ``baseline_iterations`` programmings."""
        opt = self._optimizer()
        mean, _ = opt.get_loss_baseline()
        loss = float(mean[0])
        if self.disp:
            print(f"\n\tloss baseline = {loss:f} "
                  f"({type(self.g_converter_baseline).__name__})\n")
        return loss

    def differential_weight_evolution(self) -> tuple[Any, bool]:
        """Search; returns ``(converter, success)`` with success a bool (see the module).

        By default the answer is the one chosen on fresh noise (``self.result``), and
        ``best_loss`` its validated TNMSE. With ``reference_search=True`` it is the search's own
        incumbent, ``best_loss`` its in-search TNMSE and success whether its in-search loss is
        below zero, as the reference reports them; the validated figures (and gpuwpo's polish,
        which only the choice on fresh noise can take) stay in ``self.result``.
        """
        if self.disp:
            print(f"\t\thypercube dimensions = {len(self.generate_hop_bounds())} \n")
        opt = self._optimizer()
        converter, success = opt.run_optimizer()
        self.result = r = opt.result
        self.loss_baseline = float(r.baseline_tnmse[0])
        self.best_loss = float(r.tnmse[0])
        if self._flag("reference_search"):
            converter = opt.space.to_converter(r.search_x[0].to(opt.objective.dtype),
                                               opt.objective.max_abs_weight.reshape(-1)[0])
            self.best_loss = float(r.search_best_tnmse[0])
            success = bool(float(r.search_best_loss[0]) < 0.0)
        elif bool(r.kept_baseline[0]):
            # No strategy beat the baseline with confidence: hand back the baseline's own program
            # as the CustomPair this API returns (its encoding in the strategy space), or, where
            # the space cannot express it, the search's best as the reference would.
            point = opt.baseline_point()
            x = r.search_x[0] if point is None else point
            converter = opt.space.to_converter(x.to(opt.objective.dtype),
                                               opt.objective.max_abs_weight.reshape(-1)[0])
        f = converter.f_lst.reshape(-1).tolist()
        g = converter.g_lst.reshape(2 * len(f), -1).tolist()
        return _program_converter(f, g, self.g_min, self.g_max, self._reference), bool(success)

    def run_optimizer(self) -> tuple[Any, bool]:
        """Baseline, search, and the optimised converter set into ``rpu_config``.

        Returns:
            ``(converter, success)``: aihwkit's CustomPairConductanceConverter when the config
            is aihwkit's (gpuwpo's otherwise), and a bool.
        """
        self.loss_baseline = self.get_loss_baseline()
        converter, success = self.differential_weight_evolution()
        self.rpu_config.mapping = self.mapping_saved
        _set_converter(self.rpu_config, converter)
        self.f_lst = list(converter.f_lst) if self._reference else converter.f_lst.tolist()
        return converter, success
