"""Whole-network driver: select a model's layers, optimise them in one search, program the model.

:func:`optimize_network` takes an ``nn.Module``, a state_dict or any mapping name -> tensor,
selects the weights to program (Linear and Conv weights by default, refined by regular
expressions), and finds programming strategies for all of them:

* ``per_layer=True`` (default): one strategy per layer, all layers in ONE search whose layer
  axis is the batch axis (one :class:`gpuwpo.WeightProgrammingOptimizer` with the list of
  layers), so a network costs about as much as its largest layer, not their sum.
* ``per_layer=False``: one global strategy, the published paper's setting (Mackin et al. 2022):
  the layers' weights, each normalised by its own max|W|, are pooled into one distribution and
  searched once; the same program is then applied to every layer (a CustomPair grid scales with
  each layer's own max|W|), and each layer is validated against its baseline with the
  objective's own machinery.

:func:`program_model` turns a result (or converters) into a copy of the model whose weights are
the effective hardware weights at an inference time: programmed, drifted, read, compensated.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .checks import check_weights
from .converters import CustomPairConductanceConverter
from .objective import TNMSEObjective
from .optimizer import WeightProgrammingOptimizer
from .options import SearchOptions
from .physics import check_physics
from .registry import to_dict
from .selection import BASELINE, choose_per_layer
from .simulate import as_time_tensor, simulate_weights

__all__ = ["LayerResult", "NetworkResult", "optimize_network", "program_model", "select_weights"]

#: Module types whose ``weight`` is programmed by default (the crossbar-mapped layers).
PROGRAMMABLE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def _same_converter(a, b) -> bool:
    # Bit-exact comparison (dtype included): what "round-trips exactly" means for a program; a
    # standard converter compares by its registry record.
    if not isinstance(a, CustomPairConductanceConverter) or not isinstance(
            b, CustomPairConductanceConverter):
        return type(a) is type(b) and to_dict(a) == to_dict(b)
    return (
        type(a) is type(b)
        and a.g_min == b.g_min
        and a.g_max == b.g_max
        and a.f_lst.dtype == b.f_lst.dtype
        and a.g_lst.dtype == b.g_lst.dtype
        and torch.equal(a.f_lst.cpu(), b.f_lst.cpu())
        and torch.equal(a.g_lst.cpu(), b.g_lst.cpu())
    )


@dataclass(eq=False)
class LayerResult:
    """The strategy found for one layer and how well it does.

    Attributes:
        name: the parameter's name in the model / mapping (e.g. ``"0.weight"``).
        shape: the weight's shape.
        converter: the layer's answer: a single (unbatched)
            :class:`CustomPairConductanceConverter` (f ``[K]``, g_lst ``[2K, L]`` in uS on the
            grid linspace(-max|W|, max|W|, L) of the weights it converts; tensors on the CPU),
            or, where no strategy beat it with confidence, the baseline converter itself.
        tnmse: validated TNMSE (fresh noise, ``validation_repeats`` programmings), unitless.
        tnmse_ci95: its 95% interval (mean +- 1.96 standard errors).
        baseline_tnmse, baseline_ci95: the baseline converter on the same test weights, on the
            same noise.
        history: best TNMSE after each generation of the search (with ``per_layer=False`` the
            pooled search's history, the same list for every layer).
        chosen: which contender won the validated choice (:mod:`gpuwpo.selection`):
            ``"search"``, ``"polish"``, ``"seed: ..."``, ``"global"``, ``"x0"`` or
            ``"baseline"`` (the layer keeps the baseline's own program).
        success: the answer is a strategy that beats the baseline by the loss margin (False
            where the baseline is kept).

    Two LayerResults are equal when every field is equal, the converters' tensors bit for bit.
    """

    name: str
    shape: tuple[int, ...]
    converter: CustomPairConductanceConverter
    tnmse: float
    tnmse_ci95: tuple[float, float]
    baseline_tnmse: float
    baseline_ci95: tuple[float, float]
    history: list[float] = field(default_factory=list)
    chosen: str = "search"
    success: bool = True

    @property
    def kept_baseline(self) -> bool:
        """Whether the layer keeps the baseline converter (no strategy beat it)."""
        return self.chosen == BASELINE

    @property
    def numel(self) -> int:
        """Number of weights of the layer."""
        return math.prod(self.shape)

    @property
    def improvement(self) -> float:
        """1 - tnmse / baseline_tnmse (positive: better than the baseline)."""
        return 1.0 - self.tnmse / self.baseline_tnmse

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LayerResult):
            return NotImplemented
        return (
            self.name == other.name
            and tuple(self.shape) == tuple(other.shape)
            and _same_converter(self.converter, other.converter)
            and self.tnmse == other.tnmse
            and tuple(self.tnmse_ci95) == tuple(other.tnmse_ci95)
            and self.baseline_tnmse == other.baseline_tnmse
            and tuple(self.baseline_ci95) == tuple(other.baseline_ci95)
            and list(self.history) == list(other.history)
            and self.chosen == other.chosen
            and self.success == other.success
        )


@dataclass
class NetworkResult:
    """Strategies for the layers of a network, with their validated figures.

    Attributes:
        layers: one :class:`LayerResult` per selected layer, in the model's order.
        settings: JSON-able record of everything that decides what the run finds (f_lst,
            t_steps, backend, per_layer, include/exclude, the options and which were given,
            the noise model, baseline and compensation as registry records, symmetric, g_min,
            g_max, nbins, device, physics).
        total_tnmse, total_baseline_tnmse: the layers' TNMSE weighted by their sizes.
        nit: generations of the search; nfev: candidates evaluated, all layers together (a
            generation of B layers with population S counts B * S, or 2 B S when parents are
            re-evaluated with their trials).
        wall_time: seconds for the whole call (search and validation).
        stop_reason: why the search stopped.
    """

    layers: list[LayerResult]
    settings: dict
    total_tnmse: float
    total_baseline_tnmse: float
    nit: int
    nfev: int
    wall_time: float
    stop_reason: str

    def converters(self) -> dict[str, CustomPairConductanceConverter]:
        """Layer name -> its converter (what :func:`program_model` takes)."""
        return {layer.name: layer.converter for layer in self.layers}

    def summary(self) -> str:
        """A short human-readable table, one line per layer and a size-weighted total."""
        width = max([5, *(len(layer.name) for layer in self.layers)])
        mode = "per layer" if self.settings.get("per_layer", True) else "global"
        lines = [
            f"strategy={mode} physics={self.settings.get('physics', 'device')} "
            f"backend={self.settings.get('backend')} "
            f"device={self.settings.get('device')} generations={self.nit} candidates={self.nfev} "
            f"wall={self.wall_time:.1f}s stop={self.stop_reason}",
            f"{'layer':<{width}} {'shape':>18} {'TNMSE (95% CI)':>30} "
            f"{'baseline (95% CI)':>30} {'gain':>7}  chosen",
        ]
        for layer in self.layers:
            lo, hi = layer.tnmse_ci95
            blo, bhi = layer.baseline_ci95
            lines.append(
                f"{layer.name:<{width}} {str(tuple(layer.shape)):>18} "
                f"{layer.tnmse:9.5f} [{lo:8.5f}, {hi:8.5f}] "
                f"{layer.baseline_tnmse:9.5f} [{blo:8.5f}, {bhi:8.5f}] "
                f"{100 * layer.improvement:6.1f}%  {layer.chosen}"
            )
        gain = 1.0 - self.total_tnmse / self.total_baseline_tnmse
        lines.append(f"{'total':<{width}} {'':>18} {self.total_tnmse:9.5f} {'':>20} "
                     f"{self.total_baseline_tnmse:9.5f} {'':>20} {100 * gain:6.1f}%")
        kept = sum(layer.kept_baseline for layer in self.layers)
        if kept:
            lines.append(f"{kept} of {len(self.layers)} layer(s) keep the baseline converter: no "
                         f"strategy beat it with confidence")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Selecting the layers
# --------------------------------------------------------------------------------------------


def _patterns(value: str | Sequence[str] | None, what: str) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    for p in items:
        if not isinstance(p, str):
            raise TypeError(f"{what} must be a regular expression or a list of them, got {p!r}")
        try:
            re.compile(p)
        except re.error as err:
            raise ValueError(f"{what} pattern {p!r} is not a valid regular expression: {err}") \
                from err
    return items


def select_weights(
    model_or_weights: nn.Module | Mapping[str, Tensor],
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """The weights to program, by name, in the model's order.

    Candidates: for an ``nn.Module``, the ``weight`` parameter of every ``nn.Linear`` and
    ``nn.Conv1d/2d/3d`` module; for a mapping (a state_dict or name -> tensor), every tensor whose
    name ends in ``weight`` and that has at least 2 dimensions (1-D "weights" are norms' scales,
    not crossbar matrices). Then a name is kept when it matches any ``include`` pattern (default:
    all) and no ``exclude`` pattern; patterns are regular expressions applied with ``re.search``.

    Args:
        model_or_weights: an ``nn.Module``, a state_dict or a mapping name -> tensor.
        include, exclude: a regular expression or a list of them.

    Returns:
        name -> tensor (detached; for a module, sharing the parameters' storage).

    Raises:
        ValueError: nothing matches (the message names the patterns and the candidates).
        TypeError: an input that is neither a module nor a mapping.
    """
    inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")
    if isinstance(model_or_weights, nn.Module):
        candidates = {}
        for mod_name, module in model_or_weights.named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, PROGRAMMABLE_MODULES) and isinstance(weight, Tensor):
                name = f"{mod_name}.weight" if mod_name else "weight"
                candidates[name] = weight.detach()
        kind = "Linear/Conv weights"
    elif isinstance(model_or_weights, Mapping):
        candidates = {}
        for name, value in model_or_weights.items():
            if not isinstance(name, str):
                raise TypeError(f"weight names must be strings, got {name!r}")
            if isinstance(value, Tensor) and name.endswith("weight") and value.ndim >= 2:
                candidates[name] = value.detach()
        kind = "tensors named '*weight' with ndim >= 2"
    else:
        raise TypeError(f"expected an nn.Module, a state_dict or a mapping name -> tensor, got "
                        f"{type(model_or_weights).__name__}")
    selected = {
        name: w for name, w in candidates.items()
        if (not inc or any(re.search(p, name) for p in inc))
        and not any(re.search(p, name) for p in exc)
    }
    if not selected:
        listed = ", ".join(list(candidates)[:10]) + (" ..." if len(candidates) > 10 else "")
        raise ValueError(
            f"no layers to program: include={inc or None} exclude={exc or None} matched none of "
            f"the {len(candidates)} {kind}" + (f" ({listed})" if candidates else "")
        )
    return selected


# --------------------------------------------------------------------------------------------
# Settings (JSON-able record)
# --------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (tensors -> lists, tuples -> lists), or raise TypeError."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().double().tolist() if value.is_floating_point() \
            else value.detach().cpu().tolist()
    # A JSON round trip normalises tuples to lists, so saved and loaded settings compare equal.
    return json.loads(json.dumps(value, allow_nan=False))


#: Options that do not decide what a run finds (where it saves, what it prints, hooks).
_UNRECORDED = ("callback", "checkpoint", "checkpoint_every", "resume", "disp")


def _settings(*, f_lst, t_steps, backend, per_layer, include, exclude, options: SearchOptions,
              noise_model, baseline, compensation, space, device, physics,
              hierarchical: bool = False) -> dict:
    """The JSON record of everything that decides what a run finds (results files' settings).

    Read back by :func:`gpuwpo.io.physics_from_settings` and
    :func:`gpuwpo.io.optimize_kwargs_from_settings` (``gpuwpo optimize --config``)."""
    recorded = {name: _jsonable(value) for name, value in options.as_dict().items()
                if name not in _UNRECORDED}
    return _jsonable({
        "f_lst": [None if f is None else float(f) for f in f_lst],
        "t_steps": as_time_tensor(t_steps, dtype=torch.float64).tolist(),
        "backend": backend,
        "per_layer": bool(per_layer),
        "hierarchical": bool(hierarchical),
        "include": include if include is None or isinstance(include, str) else list(include),
        "exclude": exclude if exclude is None or isinstance(exclude, str) else list(exclude),
        "options": recorded,
        "explicit": sorted(options.explicit - set(_UNRECORDED)),
        "noise_model": to_dict(noise_model),
        "baseline": to_dict(baseline),
        "compensation": to_dict(compensation),
        "symmetric": space.symmetric,
        "g_min": space.g_min,
        "g_max": space.g_max,
        "nbins": space.nbins,
        "device": str(device),
        "physics": physics,
    })


# --------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------


def _one_program(converter, b: int | None = None):
    """Program ``b`` of a batched CustomPair (``None``: it is already one), on the CPU; a
    standard converter (a kept baseline) as it is."""
    if not isinstance(converter, CustomPairConductanceConverter):
        return converter
    f, g = converter.f_lst, converter.g_lst
    if b is not None:
        f, g = f[b], g[b]
    # Already checked for invertibility when the batch was built.
    return CustomPairConductanceConverter(f.detach().cpu().clone(), g.detach().cpu().clone(),
                                          converter.g_min, converter.g_max,
                                          invertibility_test=False, clip=converter.clip)


def _interval(ci: Tensor) -> tuple[float, float]:
    lo, hi = ci.tolist()
    return float(lo), float(hi)


def _weighted(values: Sequence[float], sizes: Sequence[int]) -> float:
    return float(sum(v * n for v, n in zip(values, sizes)) / sum(sizes))


def _pooled(weights: Mapping[str, Tensor]) -> Tensor:
    """The layers' weights, each normalised by its own max|W|, as one distribution [N]."""
    layers = [check_weights(w, f"layer {name!r}", allow_all_zero=False)
              for name, w in weights.items()]
    return torch.cat([(w / w.abs().max()).reshape(-1).to("cpu", torch.float32) for w in layers])


def _global_point(res) -> Tensor:
    """The pooled search's strategy [D]: its chosen point, or the search's own best where the
    pooled tile kept the baseline (still the best place to start a layer's search from)."""
    x = res.x[0]
    return res.search_x[0] if not bool(torch.isfinite(x).all()) else x


#: Default of ``hierarchical`` in :func:`optimize_network` (README.md, "Defaults").
HIERARCHICAL_DEFAULT = False


def optimize_network(
    model_or_weights: nn.Module | Mapping[str, Tensor],
    noise_model,
    t_steps: Sequence[float] | Tensor,
    g_converter_baseline,
    f_lst: Sequence[float | None],
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    per_layer: bool = True,
    backend: str = "torch",
    device: torch.device | str | None = None,
    physics: str = "device",
    hierarchical: bool | None = None,
    distributed=None,
    **optimizer_kwargs,
) -> NetworkResult:
    """Find programming strategies for the layers of a network in one search.

    Every layer's answer is chosen by validated TNMSE among the search's contenders and the
    baseline converter itself (:mod:`gpuwpo.selection`): a layer gets a strategy only where it
    beats the baseline with confidence, and otherwise keeps the baseline's own program
    (``LayerResult.chosen == "baseline"``, ``success`` False; the summary says so).

    Args:
        model_or_weights: an ``nn.Module``, a state_dict or a mapping name -> tensor; the
            layers are chosen by :func:`select_weights` (Linear/Conv weights by default).
        noise_model: the PCM device model.
        t_steps: inference times [T] in seconds after programming.
        g_converter_baseline: the standard converter to beat (e.g. DualPair f=[1, 1], 0..25 uS).
        f_lst: significance factors of the pairs (numbers, or None to optimise), e.g.
            ``[None, None]``.
        include, exclude: regular expressions on the layer names (``re.search``).
        per_layer: True: one strategy per layer, all layers in one batched search; False: one
            global strategy from the pooled, per-layer-normalised weight distribution, which
            each layer then takes or leaves for its baseline.
        backend: "torch", "evotorch" or "scipy".
        device: where the objective runs (None: CUDA when available).
        physics: "device" or "aihwkit" (see :mod:`gpuwpo.physics`); recorded in the settings.
        hierarchical: with ``per_layer`` and several layers, first search one global strategy
            on the pooled distribution (``maxiter`` generations of one layer), then start every
            layer's search from it (beside the seeds) with ``maxiter - ceil(maxiter / B)``
            generations, so that the total number of candidates stays that of a plain per-layer
            search. None: :data:`HIERARCHICAL_DEFAULT`.
        distributed: a :class:`gpuwpo.RayCluster`: the layers are sharded over its workers
            (:mod:`gpuwpo.distributed`), with the same result as this single-process run
            (``wall_time`` aside).
        **optimizer_kwargs: passed to :class:`gpuwpo.WeightProgrammingOptimizer` (popsize,
            maxiter, seed, validation_repeats, symmetric, compensation, ...). ``checkpoint``,
            ``checkpoint_every`` and ``resume`` save and continue the whole run in one file
            (both searches of a hierarchical run; :mod:`gpuwpo.checkpoint`), fingerprinted by
            the selected weights and the settings record.

    Returns:
        A :class:`NetworkResult`, one :class:`LayerResult` per layer in the model's order.

    Raises:
        ValueError: no layer matches, a layer has NaN/inf or all-zero weights, or a bad
            optimizer argument (named in the message).
    """
    if distributed is not None:
        from .distributed import optimize_network_distributed

        return optimize_network_distributed(
            distributed, model_or_weights, noise_model, t_steps, g_converter_baseline, f_lst,
            include=include, exclude=exclude, per_layer=per_layer, backend=backend,
            device=device, physics=physics, hierarchical=hierarchical, **optimizer_kwargs)
    start = time.perf_counter()
    weights = select_weights(model_or_weights, include, exclude)
    names = list(weights)
    sizes = [w.numel() for w in weights.values()]
    kwargs = dict(optimizer_kwargs)
    symmetric = kwargs.pop("symmetric", True)
    compensation = kwargs.pop("compensation", None)
    hierarchical = HIERARCHICAL_DEFAULT if hierarchical is None else hierarchical
    if not isinstance(hierarchical, bool):
        raise ValueError(f"hierarchical must be True, False or None, got {hierarchical!r}")

    def optimizer(searched, **changes):
        return WeightProgrammingOptimizer(
            searched, f_lst, noise_model, t_steps, g_converter_baseline, symmetric=symmetric,
            backend=backend, device=device, compensation=compensation, physics=physics,
            **{**kwargs, **changes})

    def checkpointing(first: WeightProgrammingOptimizer):
        # One checkpoint for the whole run (both searches of a hierarchical one), fingerprinted
        # by the selected weights and the settings record; checked before any work.
        from .checkpoint import Checkpointing, digest, fingerprint_from_settings

        o = first.options
        if o.checkpoint is None and o.resume is None:
            return None
        settings = _settings(
            f_lst=f_lst, t_steps=t_steps, backend=backend, per_layer=per_layer, include=include,
            exclude=exclude, options=o, noise_model=noise_model, baseline=g_converter_baseline,
            compensation=first.compensation, space=first.space, device=first.device,
            physics=first.physics, hierarchical=bool(per_layer and hierarchical))
        return Checkpointing.from_options(o, fingerprint_from_settings(settings, digest(weights)))

    extra_nfev, warm = 0, None
    if per_layer:
        # All layers in one search: the mapping becomes the optimizer's layer (batch) axis (its
        # test tiles check every layer, naming it).
        opt = optimizer(weights)
        requested = opt.options  # what the settings record (the stages derive from it)
        run = checkpointing(opt)
        if hierarchical and len(names) > 1:
            maxiter = opt.options.maxiter
            pooled = optimizer(_pooled(weights))
            pooled.run_optimizer(checkpoint=run, stage="global")
            extra_nfev = pooled.result.nfev
            warm = {"global": _global_point(pooled.result)}
            opt = optimizer(weights, maxiter=max(1, maxiter - math.ceil(maxiter / len(names))))
        opt.run_optimizer(warm, checkpoint=run, stage="layers")
        res = opt.result
        converters = [_one_program(conv) for conv in res.converters]
        chosen = list(res.chosen)
        tnmse, base = res.tnmse.tolist(), res.baseline_tnmse.tolist()
        ci = [_interval(c) for c in res.tnmse_ci95]
        base_ci = [_interval(c) for c in res.baseline_ci95]
        success = [bool(v) for v in res.layer_success]
        history = [[float(v) for v in h] for h in res.history.tolist()]
    else:
        # The paper's global strategy: one distribution pooled from every layer normalised by
        # its own max|W|, so that no layer dominates through its scale.
        opt = optimizer(_pooled(weights))
        requested = opt.options
        opt.run_optimizer(checkpoint=checkpointing(opt), stage="global")
        res = opt.result
        o = opt.options
        per_layer_objective = TNMSEObjective(
            weights, noise_model, opt.compensation, t_steps, opt.space,
            test_in_features=o.test_in_features, test_out_features=o.test_out_features,
            memory_budget=o.memory_budget, kernel=o.kernel, device=opt.device,
            seed=o.seed, physics=opt.physics,
        )
        # A CustomPair program lives on a grid scaled by the converted weights' own max|W|, so
        # the pooled strategy is every layer's program as it is; each layer takes it or keeps
        # its baseline.
        program = None if res.kept_baseline[0] else _one_program(res.converters[0])
        contenders = [[] if program is None else [("global", program)] for _ in names]
        choices = choose_per_layer(per_layer_objective, contenders, g_converter_baseline,
                                   repeats=o.validation_repeats, generator=o.seed + 2)
        z = 1.959963984540054
        converters = [g_converter_baseline if c.kept_baseline else program for c in choices]
        chosen = [c.label for c in choices]
        tnmse = [c.tnmse for c in choices]
        base = [c.baseline_tnmse for c in choices]
        ci = [(c.tnmse - z * c.tnmse_sem, c.tnmse + z * c.tnmse_sem) for c in choices]
        base_ci = [(c.baseline_tnmse - z * c.baseline_sem, c.baseline_tnmse + z * c.baseline_sem)
                   for c in choices]
        margin = float(o.loss_margin)
        success = [not c.kept_baseline and c.tnmse < c.baseline_tnmse * (1 - margin)
                   for c in choices]
        pooled_history = [float(v) for v in res.history[0].tolist()]
        history = [list(pooled_history) for _ in names]

    results = [
        LayerResult(name=name, shape=tuple(int(s) for s in weights[name].shape),
                    converter=conv, tnmse=float(t), tnmse_ci95=c, baseline_tnmse=float(bt),
                    baseline_ci95=bc, history=h, chosen=ch, success=ok)
        for name, conv, t, c, bt, bc, h, ch, ok in zip(names, converters, tnmse, ci, base,
                                                       base_ci, history, chosen, success)
    ]
    settings = _settings(
        f_lst=f_lst, t_steps=t_steps, backend=backend, per_layer=per_layer, include=include,
        exclude=exclude, options=requested, noise_model=noise_model,
        baseline=g_converter_baseline, compensation=opt.compensation, space=opt.space,
        device=opt.device, physics=opt.physics, hierarchical=bool(per_layer and hierarchical),
    )
    return NetworkResult(
        layers=results, settings=settings, total_tnmse=_weighted(tnmse, sizes),
        total_baseline_tnmse=_weighted(base, sizes), nit=int(res.nit),
        nfev=int(res.nfev) + extra_nfev, wall_time=time.perf_counter() - start,
        stop_reason=str(res.stop_reason),
    )


# --------------------------------------------------------------------------------------------
# Programming a model
# --------------------------------------------------------------------------------------------


def program_model(
    model: nn.Module,
    result_or_converters,
    noise_model,
    t_inference: float,
    generator: torch.Generator | None = None,
    compensation=None,
    *,
    physics: str = "device",
) -> nn.Module:
    """A copy of ``model`` whose selected weights are the hardware's effective weights.

    Each selected weight is converted to conductances, programmed (programming noise), drifted to
    ``t_inference``, read (read noise), converted back and drift-compensated
    (:func:`gpuwpo.simulate_weights` with ``repeats=1``): what the analogue tile computes with at
    that time. Every other parameter and buffer is copied unchanged; ``model`` is not modified.

    Args:
        model: the network (its parameters are not touched).
        result_or_converters: a :class:`NetworkResult`, a mapping parameter name -> converter,
            or one converter (e.g. the baseline DualPair) applied to every Linear/Conv weight.
        noise_model: the PCM device model.
        t_inference: seconds after programming (one time).
        generator: source of all noise (on the weights' device); None uses torch's default.
        compensation: drift compensation (default ideal global).
        physics: "device" or "aihwkit" (see :mod:`gpuwpo.physics`).

    Returns:
        The programmed copy (same class, same dtypes and devices).

    Raises:
        ValueError: a named layer that the model does not have, a batched converter, or a bad
            ``t_inference``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"program_model takes an nn.Module, got {type(model).__name__}")
    t = float(t_inference)
    as_time_tensor([t])  # validates: finite, >= 0 seconds
    check_physics(physics)
    shapes: dict[str, tuple[int, ...]] = {}
    if isinstance(result_or_converters, NetworkResult):
        shapes = {layer.name: tuple(layer.shape) for layer in result_or_converters.layers}
        converters = result_or_converters.converters()
    elif isinstance(result_or_converters, Mapping):
        converters = dict(result_or_converters)
    else:
        conv = result_or_converters
        if not hasattr(conv, "convert_to_conductances"):
            raise TypeError(f"expected a NetworkResult, a mapping name -> converter or a "
                            f"converter, got {type(conv).__name__}")
        converters = {name: conv for name in select_weights(model)}
    programmed = copy.deepcopy(model)
    params = dict(programmed.named_parameters())
    missing = [name for name in converters if name not in params]
    if missing:
        raise ValueError(f"the model has no parameter(s) {missing}; it has "
                         f"{list(params)[:10]}{' ...' if len(params) > 10 else ''}")
    for name, shape in shapes.items():  # a result made for another network is refused
        if tuple(params[name].shape) != shape:
            raise ValueError(f"the model's {name!r} has shape {tuple(params[name].shape)}, the "
                             f"result was made for {shape}")
    with torch.no_grad():
        for name, conv in converters.items():
            param = params[name]
            w = param.detach()
            # Simulate in at least float32: half-precision physics would be noise of its own.
            work = w if w.dtype in (torch.float32, torch.float64) else w.float()
            eff = simulate_weights(work, conv, noise_model, t, compensation, repeats=1,
                                   generator=generator, physics=physics)[0, 0]
            param.copy_(eff.to(param.dtype))
    return programmed
