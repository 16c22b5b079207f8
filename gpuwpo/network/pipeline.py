"""Whole-network search: select a model's layers, optimise them, assemble one result.

:func:`optimize_network` takes an ``nn.Module``, a state_dict or any mapping name -> tensor,
selects the weights to program (:func:`gpuwpo.network.layers.select_weights`), and finds
programming strategies for all of them:

* ``per_layer=True`` (default): one strategy per layer, all layers in ONE search whose layer
  axis is the batch axis (one :class:`gpuwpo.WeightProgrammingOptimizer` with the list of
  layers), so a network costs about as much as its largest layer, not their sum.
* ``per_layer=False``: one global strategy, the published paper's setting (Mackin et al. 2022):
  the layers' weights, each normalised by its own max|W|, are pooled into one distribution and
  searched once; the same program is then applied to every layer (a CustomPair grid scales with
  each layer's own max|W|), and each layer is validated against its baseline with the
  objective's own machinery.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..checks import check_weights
from ..search.objective import TNMSEObjective
from ..search.optimizer import WeightProgrammingOptimizer
from ..search.selection import choose_per_layer
from .layers import select_weights
from .result import LayerResult, NetworkResult, single_program
from .settings import run_record

__all__ = ["optimize_network", "HIERARCHICAL_DEFAULT"]


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
    baseline converter itself (:mod:`gpuwpo.search.selection`): a layer gets a strategy only where
    it
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
        physics: "device" or "aihwkit" (see :mod:`gpuwpo.device.physics`); recorded in the settings.
        hierarchical: with ``per_layer`` and several layers, first search one global strategy
            on the pooled distribution (``maxiter`` generations of one layer), then start every
            layer's search from it (beside the seeds) with ``maxiter - ceil(maxiter / B)``
            generations, so that the total number of candidates stays that of a plain per-layer
            search. None: :data:`HIERARCHICAL_DEFAULT`.
        distributed: a :class:`gpuwpo.RayCluster`: the layers are sharded over its workers
            (:mod:`gpuwpo.network.distributed`), with the same result as this single-process run
            (``wall_time`` aside).
        **optimizer_kwargs: passed to :class:`gpuwpo.WeightProgrammingOptimizer` (popsize,
            maxiter, seed, validation_repeats, symmetric, compensation, ...). ``checkpoint``,
            ``checkpoint_every`` and ``resume`` save and continue the whole run in one file
            (both searches of a hierarchical run; :mod:`gpuwpo.search.checkpoint`), fingerprinted by
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
        from ..search.checkpoint import Checkpointing, digest, fingerprint_from_settings

        o = first.options
        if o.checkpoint is None and o.resume is None:
            return None
        settings = run_record(
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
        converters = [single_program(conv) for conv in res.converters]
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
        program = None if res.kept_baseline[0] else single_program(res.converters[0])
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
    settings = run_record(
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
