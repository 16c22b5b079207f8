"""WeightProgrammingOptimizer: the object users call to find a programming strategy.

Names and defaults follow the reference toolkit (aihwkit's ``inference.converter.wpo``) so that
its users feel at home; what happens underneath is different: the whole population of every
layer is evaluated as one batched tensor (:class:`gpuwpo.TNMSEObjective`), the search backend is
chosen with one flag, and the answer is re-evaluated with fresh noise and reported with its
uncertainty next to the baseline evaluated the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..device.compensation import GlobalDriftCompensation
from ..device.mapping import MAPPINGS, Recipe, describe_recipe
from ..rng import stream_seed
from .backends import BACKENDS, SearchProblem, backend_module, run_search
from .de import population_size
from .objective import TNMSEObjective
from .options import SearchOptions, refuse_unsupported
from .selection import choose_per_layer, interval
from .strategy import START_RATIOS, StrategySpace
from .tiles import TestTile, search_tiles

__all__ = ["WeightProgrammingOptimizer", "OptimizationResult", "LAYERWISE_BASELINE"]

#: The label of the layer-wise baseline among the references of a choice (measured beside every
#: answer when the baseline maps per column, :attr:`OptimizationResult.layerwise_baseline_tnmse`).
LAYERWISE_BASELINE = "layer-wise baseline"


@dataclass
class OptimizationResult:
    """What a run found and how (per layer where a field has a layer axis B).

    Each layer's answer is chosen by validated TNMSE among the search's best, its polish, the
    best standard start, any warm start, and the baseline converter itself
    (:mod:`gpuwpo.search.selection`): the lowest on one block of fresh noise is confirmed against
    the baseline on an independent block, and a strategy is returned only where that confirms
    it (a strategy merely equal to the baseline is taken with probability at most
    :data:`gpuwpo.search.selection.FALSE_ACCEPT_RATE`); otherwise the layer keeps the baseline's
    own program. An answer is a *recipe* (:class:`gpuwpo.device.mapping.Recipe`): a program and
    the mapping it is deployed with (docs/DESIGN.md section 5c).

    Attributes:
        x: [B, D] the chosen strategy of each layer in the unit hypercube; NaN rows where the
            answer is no point of the search's space (the baseline, kept or under the other
            mapping; a start under the other mapping; an unclipped start the space cannot
            express; a standard converter between the grid's points,
            :meth:`WeightProgrammingOptimizer.inexact_standard_converters`).
        converters: per layer the chosen converter: a single-program
            :class:`CustomPairConductanceConverter`, or the baseline converter itself (the
            converters of ``recipes``).
        recipes: per layer the chosen :class:`gpuwpo.device.mapping.Recipe` (a kept baseline
            under the baseline's mapping).
        mappings: per layer the chosen recipe's mapping.
        converter: the chosen converter when B = 1; for several layers the list ``converters``.
        chosen: per layer the winner's label: ``"search"``, ``"polish"``, ``"start: <which>"``,
            a warm start's label (``"x0"``, ``"global"``) or ``"baseline"``; a standard
            converter under a named mapping ends in it (``"start: NPair f=[1, 4] range=1,
            layer"``, ``"baseline converter, columnwise"``).
        kept_baseline: [B] bool, the layers that keep the baseline's program.
        tnmse: [B] validated TNMSE of the answer on the confirmation block
            (``validation_repeats`` programmings of fresh noise the answer was not picked on,
            so without selection bias).
        tnmse_ci95: [B, 2] its 95% interval (normal approximation, mean +- 1.96 SE).
        baseline_tnmse, baseline_ci95: the baseline converter (under ``baseline_mapping``) on
            the same noise.
        layerwise_baseline_tnmse, layerwise_baseline_ci95: [B] and [B, 2] the baseline converter
            under the layer-wise mapping on the same noise (the baseline's own figures when that
            is its mapping): what gpuwpo compared with before it modelled the mapping.
        improvement: [B] 1 - tnmse / baseline_tnmse (0 where the baseline is kept).
        success: True when every layer's answer is a strategy that beats its baseline by
            ``loss_margin`` (tnmse < baseline * (1 - loss_margin)).
        layer_success: [B] the same per layer (False where the baseline is kept).
        search_x: [B, D] the search's answer for each layer (its incumbent,
            :mod:`gpuwpo.search.backends.base`).
        search_best_loss: [B] its in-search normalised loss: one noisy draw, on the noise of
            the layer's last generation (the backends' ``fun``).
        search_best_tnmse: [B] the same in TNMSE units.
        nit: generations (the backends' count); nfev: candidates evaluated (the standard
            starts' ranking included); wall_time: seconds.
        stop_reason, message: why the search stopped.
        history: [B, nit] ``search_best_tnmse`` after each generation.
        polished: [B] bool, whether the polish won the choice.
        choices: per layer the :class:`gpuwpo.search.selection.Choice` (every contender's figures).
        backend: the backend used; device: where it ran; physics: the physics simulated.
        baseline: the baseline's recipe (its converter under ``baseline_mapping``).
    """

    x: torch.Tensor
    converters: list
    chosen: list[str]
    kept_baseline: torch.Tensor
    tnmse: torch.Tensor
    tnmse_ci95: torch.Tensor
    baseline_tnmse: torch.Tensor
    baseline_ci95: torch.Tensor
    improvement: torch.Tensor
    success: bool
    layer_success: torch.Tensor
    search_x: torch.Tensor
    search_best_loss: torch.Tensor
    search_best_tnmse: torch.Tensor
    nit: int
    nfev: int
    wall_time: float
    stop_reason: str
    message: str
    history: torch.Tensor
    polished: torch.Tensor
    choices: list = field(default_factory=list, repr=False)
    backend: str = "torch"
    device: str = "cpu"
    physics: str = "device"
    extra: dict = field(default_factory=dict, repr=False)
    recipes: list = field(default_factory=list)
    mappings: list[str] = field(default_factory=list)
    layerwise_baseline_tnmse: torch.Tensor | None = None
    layerwise_baseline_ci95: torch.Tensor | None = None
    baseline: Recipe | None = None

    @property
    def converter(self):
        """The chosen converter (B = 1), or the list of them (several layers)."""
        return self.converters[0] if len(self.converters) == 1 else list(self.converters)

    @property
    def layerwise_improvement(self) -> torch.Tensor:
        """[B] 1 - tnmse / layerwise_baseline_tnmse: the gain against the layer-wise baseline."""
        return 1 - self.tnmse / self.layerwise_baseline_tnmse

    def summary(self) -> str:
        """A short human-readable table, one line per layer, saying what the baseline is."""
        against = "" if self.baseline is None else f" against {describe_recipe(self.baseline)}"
        layerwise = (self.baseline is not None and self.baseline.mapping != "layer"
                     and self.layerwise_baseline_tnmse is not None)
        lines = [f"backend={self.backend} device={self.device} physics={self.physics} "
                 f"generations={self.nit} "
                 f"candidates={self.nfev} wall={self.wall_time:.1f}s stop={self.stop_reason}",
                 f"gains{against}" + (" (and against the layer-wise mapping)" if layerwise
                                      else ""),
                 f"{'layer':>5} {'TNMSE (95% CI)':>28} {'baseline (95% CI)':>28} {'gain':>7}  "
                 + (f"{'vs layer':>8}  " if layerwise else "") + "chosen"]
        for b in range(self.tnmse.shape[0]):
            lo, hi = self.tnmse_ci95[b].tolist()
            blo, bhi = self.baseline_ci95[b].tolist()
            extra = f"{100 * self.layerwise_improvement[b]:7.1f}%  " if layerwise else ""
            mapping = f" ({self.mappings[b]})" if self.mappings else ""
            lines.append(f"{b:>5} {self.tnmse[b]:9.5f} [{lo:8.5f}, {hi:8.5f}] "
                         f"{self.baseline_tnmse[b]:9.5f} [{blo:8.5f}, {bhi:8.5f}] "
                         f"{100 * self.improvement[b]:6.1f}%  {extra}{self.chosen[b]}{mapping}")
        kept = int(self.kept_baseline.sum())
        if kept:
            lines.append(f"{kept} of {len(self.chosen)} layer(s) keep the baseline: no strategy "
                         f"beat it with confidence")
        return "\n".join(lines)


def _ci(intervals: list[tuple[float, float]]) -> torch.Tensor:
    """[B, 2] float64 of the layers' 95 % intervals (:func:`gpuwpo.search.selection.interval`)."""
    return torch.tensor(intervals, dtype=torch.float64).reshape(-1, 2)


class WeightProgrammingOptimizer:
    """Find a weight programming strategy per layer that beats a baseline converter.

    Args:
        weights: one layer's weights (a tensor of any shape) or a sequence of layers (each is
            one independent search; all are searched in one batched call).
        f_lst: significance factors of the pairs, numbers or None (None = optimised), e.g.
            ``[None, None]`` or ``[1.0, 3.0]``.
        noise_model: the PCM device model (:class:`gpuwpo.PCMLikeNoiseModel`).
        t_steps: inference times in seconds after programming, [T].
        g_converter_baseline: the standard converter to beat (its g_min, g_max also bound the
            strategy's conductances), e.g. ``DualPairConductanceConverter([1, 1], 0, 25)``.
        symmetric: programs mirror around w = 0 (half the dimensions).
        backend: "torch" (default), "evotorch" or "scipy".
        device: where the objective runs; None picks CUDA when available.
        compensation: drift compensation (default ideal global; e.g.
            ``GlobalDriftCompensation.aihwkit_default()`` for the reference's default periphery).
        physics: "device" (default; the programmed devices drift and are read, as on a chip) or
            "aihwkit" (the reference toolkit's inference tile, whose figures most users report):
            see :mod:`gpuwpo.device.physics`. The search, the baseline and the validation all use
            it.
        options: a ready :class:`gpuwpo.search.options.SearchOptions` (keywords then change it).
        importance: None (every weight's error counts alike), or the layers' input energies
            ``E[x_j^2]`` (activation-aware error, opt-in; :mod:`gpuwpo.search.tiles`, "Drawn by
            importance"): one entry per layer (a mapping name -> energies when ``weights`` is
            a mapping), each None, ``[in]`` per input column of the layer's matrix or
            ``[out, in]`` per weight. The test tiles are then drawn by importance, so that the
            search, the baseline and the choice measure the energy-weighted error. Not with
            ready test tiles (they are drawn already).
        **kwargs: the options of :class:`gpuwpo.search.options.SearchOptions`, where each one's
            default and meaning is documented once (the strategy space's nbins, g_err as a
            fraction of g_max - g_min, f_min, f_max, use_max_kw, clip, clip_range; the mapping
            of the strategies and of the baseline, mapping and baseline_mapping (both
            "columnwise" by default: what aihwkit's inference presets deploy, so the gains are
            against the baseline users deploy); the test tile; the margin, the
            baseline's and the validation's repeats, the polish; the search's strategy,
            popsize (times D), maxiter, tol, atol, mutation, recombination, seed, x_init, x0,
            noise_robust, algorithm, checkpoint, resume, callback; disp).

    Raises:
        TypeError: an unknown keyword (named in the message).
        ValueError: a bad value, or an option the backend cannot honour (named).
    """

    def __init__(
        self,
        weights,
        f_lst: Sequence[float | None],
        noise_model,
        t_steps: Sequence[float] | torch.Tensor,
        g_converter_baseline,
        symmetric: bool = True,
        backend: str = "torch",
        device: torch.device | str | None = None,
        compensation=None,
        physics: str = "device",
        options: SearchOptions | None = None,
        importance=None,
        **kwargs,
    ) -> None:
        opts = SearchOptions.given(options, kwargs)
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        # An option the backend cannot honour is refused before any work.
        refuse_unsupported(opts, backend, backend_module(backend).accepts(opts))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.backend = backend
        self.options = opts
        self.noise_model = noise_model
        self.g_converter_baseline = g_converter_baseline
        self.compensation = GlobalDriftCompensation() if compensation is None else compensation
        g_min = float(getattr(g_converter_baseline, "g_min", 0.0))
        g_max = float(getattr(g_converter_baseline, "g_max", noise_model.g_max))
        self.space = StrategySpace(
            list(f_lst), g_min, g_max, nbins=opts.nbins, symmetric=symmetric,
            g_err=opts.g_err * (g_max - g_min), f_min=opts.f_min, f_max=opts.f_max,
            use_max_kw=opts.use_max_kw, clip=opts.clip, clip_range=opts.clip_range,
        )
        #: The baseline: its converter under the mapping its user deploys.
        self.baseline = Recipe(g_converter_baseline, opts.baseline_mapping)
        # One tensor is one layer (whatever its shape); the tiles check every layer once. They
        # are sampled by rows when either mapping is per column, so that both are measured on
        # the rows (and the baseline on the tiles the strategies are).
        layers = [weights] if isinstance(weights, torch.Tensor) else weights
        tile_rows = "columnwise" in (opts.mapping, opts.baseline_mapping)
        if importance is not None:
            if isinstance(layers, TestTile):
                raise ValueError("importance draws the test tiles: give the layers' weights, "
                                 "not ready test tiles")
            if isinstance(weights, torch.Tensor) and isinstance(importance, torch.Tensor):
                importance = [importance]  # one layer, its energies
            # The objective's own tiles, drawn by importance (the same call otherwise).
            layers = search_tiles(layers, self.space, opts, device=self.device, rows=tile_rows,
                                  importance=importance)
        self.objective = TNMSEObjective(
            layers, noise_model, self.compensation, t_steps, self.space,
            test_in_features=opts.test_in_features, test_out_features=opts.test_out_features,
            common_random_numbers=True, memory_budget=opts.memory_budget,
            kernel=opts.kernel, device=self.device, seed=opts.seed, physics=physics,
            mapping=opts.mapping, tile_rows=tile_rows,
        )
        self.physics = self.objective.physics
        # What a checkpoint's fingerprint records (only kept when the run saves or resumes).
        self._record = {"f_lst": list(f_lst), "t_steps": t_steps, "symmetric": symmetric,
                        "weights": weights if opts.checkpoint is not None
                        or opts.resume is not None else None,
                        "importance": importance}
        self._baseline: tuple[torch.Tensor, torch.Tensor] | None = None
        self.result: OptimizationResult | None = None

    # -- the reference's API ---------------------------------------------------------------
    def generate_bounds(self) -> list[tuple[float, float]]:
        """Bounds of the search: the unit hypercube [0, 1]^D as a list of (low, high)."""
        return list(self.space.bounds)

    @property
    def num_layers(self) -> int:
        return self.objective.num_layers

    def get_loss_baseline(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Baseline TNMSE per layer: (mean [B], standard error [B]) over baseline_iterations,
        the baseline converter under its mapping on the same test tiles."""
        if self._baseline is None:
            self._baseline = self.objective.evaluate_converter(
                self.baseline, self.options.baseline_iterations,
                stream_seed(self.options.seed, "baseline"))
        return self._baseline

    @property
    def contender_mappings(self) -> tuple[str, ...]:
        """The mappings the standard converters compete under in the choice: both when the
        tiles are rows (either mapping per column), the strategies' first; else ``("layer",)``."""
        if not self.objective.tiles.rows:
            return ("layer",)
        return (self.objective.mapping,
                *(m for m in MAPPINGS if m != self.objective.mapping))

    def _unclipped_space(self) -> StrategySpace:
        """The search's space without a clip (fixed or searched): where the unclipped standard
        converters are points."""
        sp = self.space
        if sp.clip == 1.0 and not sp.searches_clip:
            return sp
        return StrategySpace(sp.f_lst, sp.g_min, sp.g_max, nbins=sp.nbins,
                             symmetric=sp.symmetric, g_err=sp.g_err, f_min=sp.f_min,
                             f_max=sp.f_max, use_max_kw=sp.use_max_kw)

    def baseline_point(self, space: StrategySpace | None = None) -> torch.Tensor | None:
        """The baseline's program as a point of the strategy space [D], or None if it has none.

        Exists for SinglePair/DualPair/NPair baselines with as many pairs as the space and the
        same conductance range (see :meth:`StrategySpace.encode_npair`); with a searched clip it
        is the point of the range's top clip (1: unclipped, when the range reaches it).
        ``space``: another space of the same grid (default: the search's).
        """
        from ..device.converters import NPairConductanceConverter

        space = self.space if space is None else space
        conv = self.g_converter_baseline
        if not isinstance(conv, NPairConductanceConverter) or conv.batch_shape != ():
            return None
        if (conv.num_pairs != space.num_pairs or float(conv.g_min) != space.g_min
                or float(conv.g_max) != space.g_max):
            return None
        try:
            return space.encode_npair(conv.f_lst.tolist())
        except ValueError:  # fixed f that differ, or f outside [f_min, f_max]
            return None

    def checkpoint_fingerprint(self) -> dict:
        """What this optimizer's run is, for its checkpoints (:mod:`gpuwpo.search.checkpoint`): a
        digest of the weights, the physics, the settings (backend, strategy grid, device), the
        options and the seed. (A network run fingerprints its own record instead:
        :func:`gpuwpo.network.settings.fingerprint_from_settings`.)"""
        from .checkpoint import digest, options_record, physics_record, run_fingerprint

        weights = self._record["weights"]
        if weights is None:
            raise ValueError("this optimizer neither saves nor resumes checkpoints")
        if isinstance(weights, torch.Tensor):
            named = {"0": weights}
        elif isinstance(weights, Mapping):
            named = dict(weights)
        else:
            named = {str(i): w for i, w in enumerate(weights)}
        physics = physics_record(
            physics=self.physics, noise_model=self.noise_model,
            baseline=self.g_converter_baseline, compensation=self.compensation,
            t_steps=self._record["t_steps"], f_lst=self._record["f_lst"], space=self.space)
        settings = {"backend": self.backend, "nbins": self.space.nbins,
                    "device": str(self.device)}
        importance = self._record["importance"]
        if importance is not None:  # the energies' digest: another importance, another run
            entries = (importance.items() if isinstance(importance, Mapping)
                       else enumerate(importance))
            settings["importance"] = digest({str(k): torch.as_tensor(v) for k, v in entries
                                             if v is not None})
        return run_fingerprint(digest(named), physics=physics, settings=settings,
                               options=options_record(self.options))

    def _noise_seed(self, call: int) -> int:
        # The search's noise: one stream per evaluation number (reproducible, and resumable).
        return stream_seed(self.options.seed, "search_noise", call)

    def _search_problem(self, baseline: torch.Tensor) -> SearchProblem:
        margin = float(self.options.loss_margin)
        base = baseline.reshape(-1, 1)

        def loss(x: torch.Tensor, call: int, layers: torch.Tensor | None = None) -> torch.Tensor:
            objective, b = self.objective, base
            if layers is not None:
                ids = [int(i) for i in layers]
                objective, b = self.objective.select_layers(ids), base[ids]
            tnmse = objective(x, self._noise_seed(call))
            return (tnmse - b) / b + margin

        return SearchProblem(loss=loss, num_layers=self.num_layers, dim=self.space.dim,
                             device=self.device, dtype=self.objective.dtype,
                             supports_layers=True, layer_ids=self.objective.layer_ids)

    def standard_starts(self, space: StrategySpace | None = None
                        ) -> tuple[torch.Tensor, list[str]]:
        """The search's standard starts: the standard converters the space can express, as points.

        The baseline's own program first (when the space can express it,
        :meth:`baseline_point`), then the N-pair programs over a grid of significance ratios
        and range fractions, and with a searched clip under a few clips
        (:meth:`StrategySpace.standard_starts`); none with ``standard_starts=False``.
        ``space``: another space of the same grid (default: the search's).

        Returns:
            ``(x [W, D], labels)`` in the objective's dtype.
        """
        space = self.space if space is None else space
        points, labels = [], []
        if self.options.standard_starts:
            base = self.baseline_point(space)
            if base is not None:
                points.append(base)
                labels.append("baseline program")
            grid, grid_labels = space.standard_starts()
            for x, label in zip(grid, grid_labels):
                if not any(torch.equal(x, p) for p in points):
                    points.append(x)
                    labels.append(label)
        if not points:
            return torch.zeros((0, space.dim), dtype=self.objective.dtype), []
        return torch.stack(points).to(self.objective.dtype), labels

    def _warm_starts(self, warm_starts) -> dict[str, torch.Tensor]:
        """Label -> [B, D] warm starts, in the objective's dtype and device, checked."""
        out: dict[str, torch.Tensor] = {}
        B, D = self.num_layers, self.space.dim
        for label, x in (warm_starts or {}).items():
            x = torch.as_tensor(x).to(self.device, self.objective.dtype)
            if x.shape not in ((D,), (B, D)):
                raise ValueError(f"warm start {label!r} must have shape [{D}] or [{B}, {D}], "
                                 f"got {tuple(x.shape)}")
            if not bool(((x >= 0) & (x <= 1)).all()):
                raise ValueError(f"warm start {label!r} must lie in the unit hypercube [0, 1]^D")
            out[label] = x.reshape(-1, D).expand(B, -1)
        return out

    def _rank_starts(self, starts: torch.Tensor, objective: TNMSEObjective | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Standard starts [W, D] ranked per layer by one evaluation on common noise (of
        ``objective``, default the search's): ([B, W, D], [B, W])."""
        objective = self.objective if objective is None else objective
        x = starts.to(self.device).unsqueeze(0).expand(self.num_layers, -1, -1)
        loss = objective(x, stream_seed(self.options.seed, "start_ranking"))  # [B, W]
        order = loss.argsort(dim=-1, stable=True)  # ties in the starts' order, whatever the batch
        ranked = torch.gather(x, 1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return ranked, order

    def _standard_contenders(self) -> tuple[list[list[tuple[str, torch.Tensor | None, Recipe]]],
                                            int]:
        """The standard converters every layer's choice offers under each mapping, beside the
        search's contenders: per layer ``(label, point or None, recipe)``, and the candidates
        evaluated to rank them.

        Under each of :attr:`contender_mappings`, the best unclipped standard start (ranked on
        the stream ``"start_ranking"`` by the objective of that mapping on the same tiles; under
        the search's own mapping in an unclipped space it is the best start itself, offered
        already), labelled ``"start: <which>, <mapping>"``; and the baseline converter under
        each of them but its own (``"baseline converter, <mapping>"``). So a searched clip never
        crowds the unclipped programs out of the choice, and a mapping the baseline does not use
        competes too. The point is the start's in the search's space (None where it is none: a
        start under the other mapping, or unclipped where the space cannot express it). None
        of this without standard starts, nor for a run with neither a per-column mapping nor a
        searched clip (whose choice is the reference optimiser's, as before the mapping was
        modelled).
        """
        per_layer: list[list[tuple[str, torch.Tensor | None, Recipe]]] = [
            [] for _ in range(self.num_layers)]
        if not self.options.standard_starts or not (self.space.searches_clip
                                                    or self.objective.tiles.rows):
            return per_layer, 0
        own = self.objective.mapping
        unclipped = self._unclipped_space()
        starts, labels = self.standard_starts(unclipped)
        m = self.objective.tiles.tile_max.reshape(-1)
        nfev = 0
        for mapping in self.contender_mappings:
            if starts.shape[0] == 0 or (unclipped is self.space and mapping == own):
                continue  # nothing to rank, or the best start (already a contender)
            ranked, order = self._rank_starts(starts, self.objective.with_mapping(mapping,
                                                                                  unclipped))
            nfev += int(ranked.shape[0] * ranked.shape[1])
            for b in range(self.num_layers):
                x = ranked[b, 0]
                conv = unclipped.to_converter(x, m[b], invertibility_test=False)
                point = self._unclipped_point(x) if mapping == own else None
                per_layer[b].append((f"start: {labels[int(order[b, 0])]}, {mapping}", point,
                                     Recipe(conv, mapping)))
        for mapping in self.contender_mappings:
            if mapping != self.baseline.mapping:
                for layer in per_layer:
                    layer.append((f"baseline converter, {mapping}", None,
                                  Recipe(self.g_converter_baseline, mapping)))
        for label, conv in self.inexact_standard_converters(unclipped):
            for layer in per_layer:
                layer.append((f"standard: {label}, {own}", None, Recipe(conv, own)))
        return per_layer, nfev

    def inexact_standard_converters(self, space: StrategySpace | None = None
                                    ) -> list[tuple[str, object]]:
        """The standard N-pair converters the space's grid cannot express exactly, each as a
        CustomPair program on a grid that holds it exactly.

        An N-pair converter with ``f_k = F**k`` (F over the standard starts' ratios, fixed
        factors kept, the baseline's own converter left out) fills its lower pair first and
        changes slope where a pair is full: at ``1 / (1 + F)`` of max|W| for two pairs. Where
        that point falls between the space's grid points, the start of the same name (the
        converter interpolated at the grid points) is a different, usually worse, program.
        Those converters compete in the choice as they are (label ``"NPair f=[1, 3]"``): a
        :class:`~gpuwpo.device.converters.CustomPairConductanceConverter` on the coarsest grid
        ``linspace(-1, 1, 2n + 1)`` (n <= 60) with every slope change on a grid point, which
        converts every weight exactly as the N-pair converter does (checked on 1,001 weights in
        [-1, 1] within 1e-9 of the conductance range; a converter with no such grid is left
        out). So the answer is never worse than a standard converter a user could pick by hand.
        None without standard starts. ``space``: an unclipped space of the same grid (default:
        the search's).
        """
        from ..device.converters import CustomPairConductanceConverter, NPairConductanceConverter

        space = self.space if space is None else space
        if not self.options.standard_starts:
            return []
        base = self.g_converter_baseline
        w = torch.linspace(-1.0, 1.0, 1001, dtype=torch.float64)
        tol = 1e-9 * (space.g_max - space.g_min)

        def same(a, b) -> bool:
            g_a, _ = a.convert_to_conductances(w)
            g_b, _ = b.convert_to_conductances(w)
            return float((g_a - g_b.to(g_a)).abs().max()) <= tol

        out: list[tuple[str, object]] = []
        for f in space.standard_factors(START_RATIOS):
            if (isinstance(base, NPairConductanceConverter) and base.batch_shape == ()
                    and base.f_lst.tolist() == f and float(base.g_min) == space.g_min
                    and float(base.g_max) == space.g_max):
                continue  # the baseline itself: always in the choice
            exact = NPairConductanceConverter(f, space.g_min, space.g_max)
            start = space.to_converter(space.encode_npair(f), 1.0, invertibility_test=False,
                                       clip=1.0)
            if same(exact, start):
                continue  # the grid expresses it: it competes as a standard start
            # The slope changes, as fractions of max|W|: where pairs 0..j are full.
            spans = torch.tensor(f, dtype=torch.float64)
            kinks = (spans.cumsum(0)[:-1] / spans.sum()).tolist()
            n = next((n for n in range(1, 61)
                      if all(abs(c * n - round(c * n)) < 1e-9 for c in kinks)), None)
            if n is None:
                continue
            grid = torch.linspace(-1.0, 1.0, 2 * n + 1, dtype=torch.float64)
            g_lst, _ = exact.convert_to_conductances(grid)
            program = CustomPairConductanceConverter(f, g_lst, space.g_min, space.g_max,
                                                     invertibility_test=False)
            if same(exact, program):
                out.append((f"NPair f=[{', '.join(f'{v:g}' for v in f)}]", program))
        return out

    def _unclipped_point(self, x: torch.Tensor) -> torch.Tensor | None:
        """An unclipped space's point ``x`` [D'] in the search's space: the same point with the
        clip coordinate of 1 when the searched range reaches it; None when the space cannot
        express it (a fixed clip below 1, a range below 1)."""
        if self.space.searches_clip and self.space.clip_range[1] == 1.0:
            return torch.cat([x, x.new_ones(1)])
        return None

    def run_optimizer(self, warm_starts: dict[str, torch.Tensor] | None = None, *,
                      checkpoint=None, stage: str = "search") -> tuple[object, bool]:
        """Seed, search, polish, choose. Returns (converter, success); details in ``self.result``.

        Args:
            warm_starts: label -> a point [D] or one per layer [B, D] (e.g. a network's global
                strategy, label ``"global"``): put into the initial population and among the
                contenders of the final choice. The option ``x0`` is the warm start ``"x0"``.
            checkpoint, stage: a :class:`gpuwpo.search.checkpoint.Checkpointing` run of which this
                search is the stage ``stage`` (what :func:`gpuwpo.optimize_network` passes).
                Without it the options ``checkpoint``/``resume`` make a run of one stage
                fingerprinted by :meth:`checkpoint_fingerprint`. Everything before and after
                the search is a deterministic function of the settings, so a resumed run ends
                exactly as an uninterrupted one.

        Returns:
            ``(converter, success)``: the chosen converter (the list of them for several layers)
            and whether every layer's answer beats its baseline by ``loss_margin``.
        """
        o = self.options
        start = time.perf_counter()
        if checkpoint is None and (o.checkpoint is not None or o.resume is not None):
            from .checkpoint import Checkpointing

            # Checked (and the checkpoint to resume read) before any work.
            checkpoint = Checkpointing.from_options(o, self.checkpoint_fingerprint())
        base_mean, _ = self.get_loss_baseline()
        problem = self._search_problem(base_mean)
        starts = {}
        if o.x0 is not None:
            starts["x0"] = o.x0
        starts.update(warm_starts or {})
        starts = self._warm_starts(starts)
        standard, start_labels = self.standard_starts()
        nfev_starts = 0
        best_start: torch.Tensor | None = None
        best_start_label: list[str] = []
        if standard.shape[0]:
            ranked, order = self._rank_starts(standard)
            nfev_starts = int(ranked.shape[0] * ranked.shape[1])
            best_start = ranked[:, 0]
            best_start_label = [f"start: {start_labels[int(i)]}" for i in order[:, 0].tolist()]
        rows = [x.unsqueeze(1) for x in starts.values()]
        if best_start is not None:
            rows.append(ranked)
        search_options = o
        if rows:
            # Warm starts first, then the standard starts best first, as many as the population
            # holds.
            x0 = torch.cat(rows, dim=1)[:, : self._population_size()]
            search_options = o.replace(x0=x0)
        search_stage = None
        if checkpoint is not None:
            from .checkpoint import digest

            # The warm starts are part of what this stage searches (the standard starts follow
            # from the settings).
            search_stage = checkpoint.stage(stage, {"warm_starts": digest(starts)})
        bar = self._progress_bar() if o.disp else None
        try:
            outcome = run_search(self.backend, problem, search_options, progress=bar,
                                 stage=search_stage)
        finally:
            if bar is not None:
                bar.close()
        search_x = outcome.x.to(self.device, self.objective.dtype)
        polished_x = self._polish(search_x) if o.polish else None

        # The answer: validated among the contenders and the baseline, on the same noise.
        # Starting points first: a search that ends where it started is labelled by its start.
        candidates: list[tuple[str, torch.Tensor | None]] = list(starts.items())
        candidates += [("search", search_x), ("polish", polished_x)]
        extra, nfev_extra = self._standard_contenders()
        m = self.objective.tiles.tile_max.reshape(-1)
        contenders: list[list[tuple[str, object]]] = []
        points: list[dict[str, torch.Tensor | None]] = []
        for b in range(self.num_layers):
            layer = [(label, x[b]) for label, x in candidates if x is not None]
            if best_start is not None:
                layer.insert(len(starts), (best_start_label[b], best_start[b]))
            unique: dict[str, torch.Tensor] = {}
            for label, x in layer:
                if not torch.isfinite(x).all() or any(torch.equal(x, v) for v in unique.values()):
                    continue
                unique[label] = x
            convs = [(label, Recipe(self.space.to_converter(x, m[b], invertibility_test=False),
                                    self.objective.mapping)) for label, x in unique.items()]
            layer_points: dict[str, torch.Tensor | None] = dict(unique)
            # The standard converters under each mapping, after the starting points (a point
            # of the search's space that is one of them keeps its first label).
            firsts = {*starts, *(best_start_label[b:b + 1] if best_start is not None else [])}
            at = sum(label in firsts for label in unique)
            for label, x, recipe in extra[b]:
                if label in layer_points or (x is not None and any(
                        v is not None and torch.equal(x, v) for v in layer_points.values())):
                    continue
                convs.insert(at, (label, recipe))
                layer_points[label] = x
                at += 1
            # A program that does not convert weights back to themselves is no answer.
            convs = [(label, r) for label, r in convs
                     if not hasattr(r.converter, "check_invertibility")
                     or bool(r.converter.check_invertibility())]
            contenders.append(convs)
            points.append(layer_points)
        references = ({} if self.baseline.mapping == "layer" else
                      {LAYERWISE_BASELINE: Recipe(self.g_converter_baseline, "layer")})
        choices = choose_per_layer(self.objective, contenders, self.baseline,
                                   repeats=o.validation_repeats, seed=o.seed,
                                   references=references)
        kept = torch.tensor([c.kept_baseline for c in choices])
        nan = torch.full((self.space.dim,), float("nan"), dtype=search_x.dtype,
                         device=search_x.device)
        x = torch.stack([nan if c.kept_baseline or points[b][c.label] is None
                         else points[b][c.label] for b, c in enumerate(choices)])
        recipes = [self.baseline if c.kept_baseline else contenders[b][c.index][1]
                   for b, c in enumerate(choices)]
        val_mean = torch.tensor([c.tnmse for c in choices], dtype=torch.float64)
        b_mean = torch.tensor([c.baseline_tnmse for c in choices], dtype=torch.float64)
        if references:
            lw = [c.references.get(LAYERWISE_BASELINE, (math.nan, math.nan)) for c in choices]
            lw_mean = torch.tensor([v[0] for v in lw], dtype=torch.float64)
            lw_ci = _ci([interval(*v) for v in lw])
        else:  # the baseline is the layer-wise one
            lw_mean, lw_ci = b_mean.clone(), _ci([c.baseline_ci95 for c in choices])
        margin = float(o.loss_margin)
        layer_success = torch.tensor([c.success(margin) for c in choices])
        to_tnmse = base_mean.reshape(-1, 1)
        history = (outcome.history.to(base_mean) - margin) * to_tnmse + to_tnmse
        self.result = OptimizationResult(
            x=x, converters=[r.converter for r in recipes], chosen=[c.label for c in choices],
            kept_baseline=kept,
            tnmse=val_mean, tnmse_ci95=_ci([c.tnmse_ci95 for c in choices]),
            baseline_tnmse=b_mean, baseline_ci95=_ci([c.baseline_ci95 for c in choices]),
            improvement=1 - val_mean / b_mean, success=bool(layer_success.all()),
            layer_success=layer_success, search_x=search_x, search_best_loss=outcome.fun,
            search_best_tnmse=(outcome.fun.to(base_mean) - margin) * base_mean + base_mean,
            nit=outcome.nit, nfev=outcome.nfev + nfev_starts + nfev_extra,
            wall_time=time.perf_counter() - start,
            stop_reason=outcome.stop_reason, message=outcome.message, history=history,
            polished=torch.tensor([c.label == "polish" for c in choices]), choices=choices,
            backend=self.backend, device=str(self.device), physics=self.physics,
            extra={"outcome": outcome, "polished_x": polished_x},
            recipes=recipes, mappings=[r.mapping for r in recipes],
            layerwise_baseline_tnmse=lw_mean, layerwise_baseline_ci95=lw_ci,
            baseline=self.baseline,
        )
        return self.result.converter, self.result.success

    def _population_size(self) -> int:
        init = self.options.x_init
        if isinstance(init, torch.Tensor):
            return int(init.shape[-2])
        return population_size(self.space.dim, self.options.popsize, init)

    # -- pieces ----------------------------------------------------------------------------
    def _progress_bar(self):
        from tqdm.auto import tqdm

        bar = tqdm(total=self.options.maxiter, desc=f"gpuwpo[{self.backend}]", unit="gen",
                   leave=False)

        class _Bar:
            def __call__(self, info):
                bar.n = info.generation
                best = float(info.fun.min())
                bar.set_postfix_str(f"best loss {best:+.4f}")
                bar.refresh()

            def close(self):
                bar.close()

        return _Bar()

    def _polish(self, x: torch.Tensor) -> torch.Tensor:
        """L-BFGS-B from each layer's point on frozen noise: the polished points [B, D].

        The frozen-noise loss (fixed seed, common random numbers) is a deterministic function
        of x; its gradient is taken by forward differences, all D + 1 points in one batched call.
        Whether the polish helped is for the final choice to say.
        """
        from scipy.optimize import minimize

        D = self.space.dim
        h = 1e-3
        seed = stream_seed(self.options.seed, "polish")
        new_x = x.clone()
        for b in range(self.num_layers):
            sub = self.objective.select_layers([b])

            def fun_and_grad(v, sub=sub):
                v_t = torch.as_tensor(v, dtype=sub.dtype, device=sub.device).clamp(0, 1)
                steps = v_t.unsqueeze(0).repeat(D + 1, 1)
                direction = torch.where(v_t + h <= 1, h, -h)
                steps[1:] += torch.diag(direction)
                losses = sub(steps.unsqueeze(0), seed)[0].double().cpu()
                grad = (losses[1:] - losses[0]) / direction.double().cpu()
                return float(losses[0]), grad.numpy()

            res = minimize(fun_and_grad, x[b].double().cpu().numpy(), jac=True,
                           method="L-BFGS-B", bounds=[(0.0, 1.0)] * D,
                           options={"maxiter": self.options.polish_maxiter})
            new_x[b] = torch.as_tensor(res.x, dtype=x.dtype, device=x.device).clamp(0, 1)
        return new_x
