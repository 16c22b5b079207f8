"""The reference toolkit's own per-candidate loss (aihwkit 1.1.0) on a gpuwpo objective's tile.

What aihwkit's ``inference.converter.wpo`` does for one candidate of its differential evolution,
on exactly the test tile, times, device model and compensation of a gpuwpo objective, so that the
benchmarks can put gpuwpo's figures beside the toolkit's measured in the same run:

* ``loss_weights``: the toolkit's per-candidate simulation, as its ``loss_fxn`` runs it but
  without the pickle round trip of the settings: its own decode (``wpo.denormalize``), a
  ``CustomPairConductanceConverter`` of the candidate's program, a fresh ``AnalogLinear`` with a
  copy of the ``TorchInferenceRPUConfig``, and ``wpo.loss_weights`` (programming, drift, read
  noise, drift compensation at every time). This is the headline figure: the leaner of the two.
* ``loss_fxn``: exactly what scipy's ``differential_evolution`` calls per candidate in the
  toolkit's ``WeightProgrammingOptimizer`` (``wpo.loss_fxn(x, pickled_settings)``, which also
  unpickles and deep-copies the optimiser's settings every time).

:func:`toolkit_search` runs the toolkit's own ``WeightProgrammingOptimizer`` (its baseline and
its scipy differential evolution) on a small budget and measures its cost per candidate inside
its search, from which :func:`toolkit_candidates_at` and that cost estimate its wall time at any
budget (its default, popsize 100 x D and 200 generations, takes hours: it is not run).

The configuration is ``gpuwpo.aihwkit.to_aihwkit_rpu_config`` of the objective's device model and
compensation (an ideal one becomes ``forward.is_perfect``), with ``mapping.max_input_size`` set to
the tile's inputs so that the layer is one tile, which is what gpuwpo's ``physics="aihwkit"``
simulates. The toolkit draws its noise from torch's global generator (its own code; it takes no
generator); :meth:`ToolkitLoss.time` seeds it, so that a run repeats.
"""

from __future__ import annotations

import copy
import math
import pickle
import time
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["ToolkitLoss", "toolkit_available", "toolkit_version", "toolkit_search",
           "toolkit_candidates_at", "measure_toolkit", "best_toolkit", "toolkit_estimate_s"]


def toolkit_available() -> bool:
    """Whether aihwkit (the reference toolkit) imports."""
    try:
        import aihwkit.inference.converter.wpo  # noqa: F401
    except ImportError:
        return False
    return True


def toolkit_version() -> str | None:
    """aihwkit's installed version, or None."""
    from importlib import metadata

    try:
        return metadata.version("aihwkit")
    except metadata.PackageNotFoundError:
        return None


class ToolkitLoss:
    """aihwkit's per-candidate loss on layer ``layer`` of a gpuwpo objective's test tiles.

    Args:
        objective: a :class:`gpuwpo.TNMSEObjective` (its tile, times, device model,
            compensation and strategy space are used; its physics is irrelevant: the toolkit's
            tile is what gpuwpo calls ``physics="aihwkit"``).
        layer: which of its layers.

    Raises:
        ImportError: aihwkit is not installed (``pip install --no-deps aihwkit==1.1.0``).
        ValueError: a strategy space the toolkit's optimiser cannot express (a clip).
    """

    def __init__(self, objective, layer: int = 0) -> None:
        from aihwkit.inference.converter import wpo as ref
        from aihwkit.inference.converter.conductance import DualPairConductanceConverter

        from gpuwpo.aihwkit import to_aihwkit_rpu_config
        from gpuwpo.device.converters import DualPairConductanceConverter as GpuwpoDualPair

        space = objective.space
        if getattr(space, "clip", 1.0) != 1.0 or getattr(space, "searches_clip", False):
            raise ValueError("the toolkit's optimiser has no clip; use a strategy space with "
                             "clip=1")
        self._ref = ref
        out_f, in_f = objective.tile_shape
        tile = objective.test_weights[layer].detach().to("cpu", torch.float32)
        self.tile_in_out = tile.reshape(out_f, in_f).T.contiguous()  # [in, out], as it takes it
        self.max_abs_weight = objective.max_abs_weight[layer].detach().to("cpu", torch.float32)
        self.t_steps = [float(t) for t in objective.t_steps.tolist()]
        self.in_features, self.out_features = in_f, out_f
        baseline = GpuwpoDualPair(f_lst=[1.0, 1.0], g_min=space.g_min, g_max=space.g_max)
        cfg = to_aihwkit_rpu_config(objective.noise_model, baseline, objective.compensation)
        cfg.mapping.max_input_size = in_f
        # The toolkit's own optimiser, for its settings dict (what loss_fxn receives, pickled)
        # and its decode; its test tile replaced by gpuwpo's, so that both see the same weights.
        opt = ref.WeightProgrammingOptimizer(
            self.tile_in_out.clone(), list(space.f_lst), cfg, self.t_steps,
            DualPairConductanceConverter([1.0, 1.0], g_min=space.g_min, g_max=space.g_max),
            symmetric=space.symmetric, nbins=space.nbins, test_out_features=out_f,
            f_min=space.f_min, f_max=space.f_max, use_max_kw=space.use_max_kw, disp=False)
        opt.g_err = space.g_err  # uS, as the decode takes it
        opt.weights_downsampled_unitless = self.tile_in_out.clone()
        opt.max_abs_weight_unitless = self.max_abs_weight.clone()
        opt.weights_discretized_unitless = torch.linspace(
            -float(self.max_abs_weight), float(self.max_abs_weight), space.grid_size)
        # loss_fxn returns (TNMSE - baseline) / baseline + margin: with baseline 1 and margin 0
        # that is TNMSE - 1.
        opt.loss_baseline, opt.loss_margin, opt.get_baseline = 1.0, 0.0, False
        self._settings = opt.__dict__
        self._pickled = pickle.dumps(copy.deepcopy(opt.__dict__))
        self._config = opt.rpu_config  # the optimiser's copy (its output scaling turned off)
        self.dim = len(opt.generate_hop_bounds())
        if self.dim != objective.dim:
            raise ValueError(f"the toolkit decodes {self.dim} coordinates, the objective "
                             f"{objective.dim}")

    def loss_weights(self, x: Sequence[float]) -> float:
        """TNMSE of the candidate ``x`` [D]: the toolkit's decode, converter, layer and
        ``loss_weights``."""
        from aihwkit.inference.converter.conductance import CustomPairConductanceConverter
        from aihwkit.nn import AnalogLinear

        ref, d = self._ref, self._settings
        f_lst, g_lst = ref.denormalize(torch.as_tensor(x, dtype=torch.float64).numpy(), d)
        cfg = copy.deepcopy(self._config)
        cfg.noise_model.g_converter = CustomPairConductanceConverter(
            f_lst, g_lst, g_min=d["g_min"], g_max=d["g_max"], invertibility_test=False)
        model = AnalogLinear(self.in_features, self.out_features, bias=False,
                             rpu_config=cfg).eval()
        return float(ref.loss_weights(model, self.t_steps, self.tile_in_out,
                                      self.max_abs_weight, 1.0, 0.0, get_baseline=True))

    def loss_fxn(self, x: Sequence[float]) -> float:
        """TNMSE of the candidate ``x`` [D] through the toolkit's ``loss_fxn`` (as its DE)."""
        x_np = torch.as_tensor(x, dtype=torch.float64).numpy().copy()
        return float(self._ref.loss_fxn(x_np, self._pickled)) + 1.0

    def time(self, x: torch.Tensor, *, seed: int = 0,
             which: Sequence[str] = ("loss_weights", "loss_fxn")) -> dict[str, Any]:
        """Seconds per candidate of each way, over the candidates ``x`` [n, D], and the TNMSEs.

        Returns:
            ``{way: {"s_per_candidate": float, "tnmse": [n floats]}}``.
        """
        x = torch.as_tensor(x).detach().to("cpu", torch.float64).reshape(-1, self.dim)
        out: dict[str, Any] = {}
        for way in which:
            fn = getattr(self, way)
            torch.manual_seed(seed)  # the toolkit draws from torch's global generator
            values = []
            start = time.perf_counter()
            for row in x:
                values.append(fn(row))
            elapsed = time.perf_counter() - start
            out[way] = {"s_per_candidate": elapsed / max(1, x.shape[0]),
                        "tnmse": [v if math.isfinite(v) else None for v in values]}
        return out


def toolkit_candidates_at(popsize: int, maxiter: int, dim: int) -> int:
    """Candidates scipy's differential evolution evaluates in the toolkit's search at most:
    ``popsize * dim * (maxiter + 1)`` (the initial population and one per generation; its
    L-BFGS-B polish, on by default, comes on top and is not counted)."""
    return int(popsize) * int(dim) * (int(maxiter) + 1)


def toolkit_search(weights: torch.Tensor, objective, *, popsize: int = 1, maxiter: int = 2,
                   baseline_iterations: int = 5, seed: int = 100) -> dict[str, Any]:
    """The toolkit's own optimiser on ``weights``, timed on a small budget, one process.

    The same times, device model, compensation, baseline (DualPair f = [1, 1] over the strategy
    space's conductance range), tile size and strategy space as ``objective``; the toolkit's
    own test tile (its downsampling of ``weights``). ``workers=1`` (one core, as gpuwpo's
    benchmarks run on one thread; the toolkit's default of all cores divides its wall time by
    at most the core count) and no polish. Its baseline and its search are timed apart, and the
    search's candidates counted (its ``loss_fxn`` calls).

    Returns:
        ``baseline_s``, ``baseline_iterations``, ``search_s``, ``candidates``,
        ``s_per_candidate`` (search seconds per candidate, its DE's own work included),
        ``baseline_s_per_iteration``, ``popsize``, ``maxiter``, ``dim``.
    """
    import numpy as np
    from aihwkit.inference.converter import wpo as ref
    from aihwkit.inference.converter.conductance import DualPairConductanceConverter

    from gpuwpo.aihwkit import to_aihwkit_rpu_config
    from gpuwpo.device.converters import DualPairConductanceConverter as GpuwpoDualPair

    space = objective.space
    out_f, in_f = objective.tile_shape
    baseline = GpuwpoDualPair(f_lst=[1.0, 1.0], g_min=space.g_min, g_max=space.g_max)
    cfg = to_aihwkit_rpu_config(objective.noise_model, baseline, objective.compensation)
    cfg.mapping.max_input_size = in_f
    # The toolkit shuffles its test tile with numpy's global generator and draws its noise from
    # torch's (its own code takes no generator): both seeded, so that a run repeats.
    np.random.seed(seed)  # noqa: NPY002 (the toolkit reads the legacy global generator)
    torch.manual_seed(seed)
    opt = ref.WeightProgrammingOptimizer(
        weights.detach().to("cpu", torch.float32), list(space.f_lst), cfg,
        [float(t) for t in objective.t_steps.tolist()],
        DualPairConductanceConverter([1.0, 1.0], g_min=space.g_min, g_max=space.g_max),
        symmetric=space.symmetric, nbins=space.nbins, test_out_features=out_f,
        popsize=popsize, maxiter=maxiter, polish=False, workers=1, seed=seed, disp=False,
        callback=None, baseline_iterations=baseline_iterations)
    start = time.perf_counter()
    opt.loss_baseline = opt.get_loss_baseline()
    baseline_s = time.perf_counter() - start
    calls = [0]
    loss_fxn = ref.loss_fxn

    def counted(*args, **kwargs):
        calls[0] += 1
        return loss_fxn(*args, **kwargs)

    # scipy's DE receives the module's loss_fxn when the search starts: count its calls.
    ref.loss_fxn = counted
    try:
        start = time.perf_counter()
        opt.differential_weight_evolution()
        search_s = time.perf_counter() - start
    finally:
        ref.loss_fxn = loss_fxn
    dim = len(opt.generate_hop_bounds())
    return {"baseline_s": baseline_s, "baseline_iterations": int(baseline_iterations),
            "baseline_s_per_iteration": baseline_s / max(1, baseline_iterations),
            "search_s": search_s, "candidates": calls[0],
            "s_per_candidate": search_s / max(1, calls[0]), "popsize": int(popsize),
            "maxiter": int(maxiter), "dim": dim, "workers": 1, "polish": False}


def measure_toolkit(weights: torch.Tensor, objective, *, candidates: int = 5,
                    search_budget: tuple[int, int] = (1, 2), baseline_iterations: int = 5,
                    seed: int = 100) -> dict[str, Any]:
    """The toolkit's per-candidate costs on ``objective``'s tile (layer 0): its loss two ways
    (:class:`ToolkitLoss`, on ``candidates`` random points) and its own short search
    (:func:`toolkit_search` on ``weights`` at ``search_budget`` = (popsize, maxiter)).

    Returns:
        ``version``, ``loss`` (per way: ``ms_per_candidate``, ``candidates``) and ``search``.
    """
    loss = ToolkitLoss(objective)
    x = torch.rand(max(1, candidates), loss.dim, generator=torch.Generator().manual_seed(seed),
                   dtype=torch.float64)
    loss.time(x[:1], seed=seed)  # warm-up: lazy imports and first allocations
    timed = loss.time(x, seed=seed)
    return {"version": toolkit_version(),
            "loss": {way: {"ms_per_candidate": 1e3 * t["s_per_candidate"],
                           "candidates": int(x.shape[0])} for way, t in timed.items()},
            "search": toolkit_search(weights, objective, popsize=search_budget[0],
                                     maxiter=search_budget[1],
                                     baseline_iterations=baseline_iterations, seed=seed)}


def best_toolkit(measurements: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The least disturbed figures of several :func:`measure_toolkit` runs (e.g. before and
    after a long benchmark on a shared machine): the smallest cost of every kind."""
    first = measurements[0]
    best = {"version": first["version"], "measurements": len(measurements),
            "loss": {way: {**v, "ms_per_candidate": min(m["loss"][way]["ms_per_candidate"]
                                                         for m in measurements)}
                     for way, v in first["loss"].items()},
            "search": dict(min((m["search"] for m in measurements),
                               key=lambda s: s["s_per_candidate"]))}
    best["search"]["baseline_s_per_iteration"] = min(
        m["search"]["baseline_s_per_iteration"] for m in measurements)
    return best


def toolkit_estimate_s(toolkit: dict[str, Any], *, popsize: int, maxiter: int, dim: int,
                       baseline_iterations: int, layers: int = 1) -> float:
    """The toolkit's wall time (s, one core) for ``layers`` layers searched one by one at the
    budget (popsize, maxiter): its baseline iterations and its DE's candidates
    (:func:`toolkit_candidates_at`) at the costs measured by :func:`measure_toolkit` (its
    polish not counted)."""
    search = toolkit["search"]
    per_layer = (baseline_iterations * search["baseline_s_per_iteration"]
                 + toolkit_candidates_at(popsize, maxiter, dim) * search["s_per_candidate"])
    return layers * per_layer
