"""What a network run returns: one :class:`LayerResult` per layer, in a :class:`NetworkResult`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..device.converters import CustomPairConductanceConverter
from ..device.mapping import Recipe, as_recipe, check_mapping, describe_recipe
from ..registry import to_dict
from ..search.optimizer import LAYERWISE_BASELINE
from ..search.selection import BASELINE, Choice, interval

__all__ = ["LayerResult", "NetworkResult", "single_program", "layerwise_figures"]


def layerwise_figures(choice: Choice) -> tuple[float, tuple[float, float]]:
    """The layer-wise baseline's ``(mean TNMSE, 95 % interval)`` on a choice's headline noise:
    its reference :data:`gpuwpo.search.optimizer.LAYERWISE_BASELINE` (measured where the
    baseline maps per column), else the baseline's own figures (it is layer-wise itself)."""
    if LAYERWISE_BASELINE in choice.references:
        mean, sem = choice.references[LAYERWISE_BASELINE]
        return float(mean), interval(mean, sem)
    return float(choice.baseline_tnmse), tuple(float(v) for v in choice.baseline_ci95)


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
        and float(a.clip) == float(b.clip)
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
        chosen: which contender won the validated choice (:mod:`gpuwpo.search.selection`):
            ``"search"``, ``"polish"``, ``"start: ..."``, ``"global"``, ``"x0"``, a standard
            converter under a named mapping (``"start: NPair f=[1, 4] range=1, layer"``,
            ``"baseline converter, columnwise"``) or ``"baseline"`` (the layer keeps the
            baseline's own program).
        success: the answer is a strategy that beats the baseline by the loss margin (False
            where the baseline is kept).
        mapping: how the layer's weights reach the converter
            (:data:`gpuwpo.device.mapping.MAPPINGS`): ``"layer"`` (one scale for the layer) or
            ``"columnwise"`` (each output row scaled to its own max|w| before the converter, and
            back in digital, as aihwkit's ``weight_scaling_omega=1,
            weight_scaling_columnwise=True``); with ``converter`` it is the layer's
            :attr:`recipe`. A kept baseline holds the baseline's mapping.
        layerwise_baseline_tnmse, layerwise_baseline_ci95: the baseline converter under the
            layer-wise mapping, on the answer's noise (a reference for the report: figures of
            runs against a layer-wise baseline stay comparable); None where the run did not
            measure it (results of earlier versions).

    The baseline's figures are those of the baseline the run compared with (its converter
    under its ``baseline_mapping``, recorded in the settings' options). Two LayerResults are
    equal when every field is equal, the converters' tensors bit for bit.
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
    mapping: str = "layer"
    layerwise_baseline_tnmse: float | None = None
    layerwise_baseline_ci95: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        check_mapping(self.mapping)
        if (self.layerwise_baseline_tnmse is None) != (self.layerwise_baseline_ci95 is None):
            raise ValueError(f"layer {self.name!r}: give the layer-wise baseline's TNMSE and its "
                             f"interval together, or neither")

    @classmethod
    def from_choice(cls, name: str, shape: Sequence[int], choice: Choice, recipe,
                    history: Sequence[float], loss_margin: float) -> LayerResult:
        """The layer's result from its validated choice (:mod:`gpuwpo.search.selection`): its
        figures and 95 % intervals, its label, its success by ``loss_margin``, and the
        layer-wise baseline's figures (:func:`layerwise_figures`).

        Args:
            recipe: the winner's :class:`gpuwpo.device.mapping.Recipe` (a single program, or the
                baseline converter under the baseline's mapping when it is kept); a bare
                converter means the layer-wise mapping.
        """
        recipe = as_recipe(recipe)
        mean, ci = layerwise_figures(choice)
        return cls(name=name, shape=tuple(int(s) for s in shape), converter=recipe.converter,
                   tnmse=float(choice.tnmse), tnmse_ci95=choice.tnmse_ci95,
                   baseline_tnmse=float(choice.baseline_tnmse),
                   baseline_ci95=choice.baseline_ci95, history=[float(v) for v in history],
                   chosen=choice.label, success=choice.success(loss_margin),
                   mapping=recipe.mapping, layerwise_baseline_tnmse=mean,
                   layerwise_baseline_ci95=ci)

    @property
    def recipe(self) -> Recipe:
        """How the layer is programmed: its converter under its mapping."""
        return Recipe(self.converter, self.mapping)

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

    @property
    def layerwise_improvement(self) -> float | None:
        """1 - tnmse / layerwise_baseline_tnmse: the gain against the layer-wise baseline (the
        figure earlier runs reported), or None where it was not measured."""
        if self.layerwise_baseline_tnmse is None:
            return None
        return 1.0 - self.tnmse / self.layerwise_baseline_tnmse

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
            and self.mapping == other.mapping
            and self.layerwise_baseline_tnmse == other.layerwise_baseline_tnmse
            and (None if self.layerwise_baseline_ci95 is None
                 else tuple(self.layerwise_baseline_ci95))
            == (None if other.layerwise_baseline_ci95 is None
                else tuple(other.layerwise_baseline_ci95))
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

    @classmethod
    def from_layers(cls, layers: list[LayerResult], *, settings: dict, nit: int, nfev: int,
                    wall_time: float, stop_reason: str) -> NetworkResult:
        """The network's result from its layers', with the totals weighted by the layers'
        sizes."""
        sizes = [layer.numel for layer in layers]

        def weighted(values: list[float]) -> float:
            return float(sum(v * n for v, n in zip(values, sizes)) / sum(sizes))

        return cls(layers=layers, settings=settings,
                   total_tnmse=weighted([layer.tnmse for layer in layers]),
                   total_baseline_tnmse=weighted([layer.baseline_tnmse for layer in layers]),
                   nit=int(nit), nfev=int(nfev), wall_time=wall_time,
                   stop_reason=str(stop_reason))

    def converters(self) -> dict[str, CustomPairConductanceConverter]:
        """Layer name -> its converter (the converter of its :meth:`recipes`)."""
        return {layer.name: layer.converter for layer in self.layers}

    def recipes(self) -> dict[str, Recipe]:
        """Layer name -> its :class:`gpuwpo.device.mapping.Recipe` (its converter under its
        mapping): what :func:`gpuwpo.program_model` programs each layer with."""
        return {layer.name: layer.recipe for layer in self.layers}

    def _weighted(self, values: list[float]) -> float:
        sizes = [layer.numel for layer in self.layers]
        return float(sum(v * n for v, n in zip(values, sizes)) / sum(sizes))

    @property
    def total_layerwise_baseline_tnmse(self) -> float | None:
        """The layer-wise baseline's TNMSE weighted by the layers' sizes, or None where a layer
        does not hold it (results of earlier versions)."""
        values = [layer.layerwise_baseline_tnmse for layer in self.layers]
        return None if any(v is None for v in values) else self._weighted(values)

    @property
    def baseline(self):
        """The baseline the run compared with, as a :class:`gpuwpo.device.mapping.Recipe`: the
        recorded baseline converter under the recorded ``baseline_mapping`` (``"layer"`` for a
        record written before the mapping was modelled)."""
        from .settings import mappings_from_settings, physics_from_settings

        return Recipe(physics_from_settings(self.settings)["baseline"],
                      mappings_from_settings(self.settings)["baseline_mapping"])

    def summary(self) -> str:
        """A short human-readable table: what the baseline is, one line per layer (its figures,
        the gain against the baseline and, where measured, against the layer-wise baseline, its
        mapping and the contender chosen) and a size-weighted total."""
        width = max([5, *(len(layer.name) for layer in self.layers)])
        mode = "per layer" if self.settings.get("per_layer", True) else "global"
        try:
            baseline = self.baseline
            against = describe_recipe(baseline)
            layerwise = describe_recipe(Recipe(baseline.converter, "layer"))
            per_column = baseline.mapping != "layer"
        except ValueError:  # a hand-made record: still a table
            against, layerwise = "the recorded baseline", "the layer-wise baseline"
            per_column = True
        # A column of its own only where the layer-wise baseline is not the baseline itself.
        has_layerwise = per_column and any(layer.layerwise_baseline_tnmse is not None
                                           for layer in self.layers)
        lines = [
            f"strategy={mode} physics={self.settings.get('physics', 'device')} "
            f"backend={self.settings.get('backend')} "
            f"device={self.settings.get('device')} generations={self.nit} candidates={self.nfev} "
            f"wall={self.wall_time:.1f}s stop={self.stop_reason}",
            f"gain against {against}" + (f"; vs layer-wise: against {layerwise}"
                                         if has_layerwise else ""),
            f"{'layer':<{width}} {'shape':>18} {'TNMSE (95% CI)':>30} "
            f"{'baseline (95% CI)':>30} {'gain':>7}"
            + (f" {'vs layer-wise':>13}" if has_layerwise else "") + f" {'mapping':>10}  chosen",
        ]

        def vs_layerwise(gain: float | None) -> str:
            if not has_layerwise:
                return ""
            return f" {'n/a':>13}" if gain is None else f" {100 * gain:12.1f}%"

        for layer in self.layers:
            lo, hi = layer.tnmse_ci95
            blo, bhi = layer.baseline_ci95
            lines.append(
                f"{layer.name:<{width}} {str(tuple(layer.shape)):>18} "
                f"{layer.tnmse:9.5f} [{lo:8.5f}, {hi:8.5f}] "
                f"{layer.baseline_tnmse:9.5f} [{blo:8.5f}, {bhi:8.5f}] "
                f"{100 * layer.improvement:6.1f}%{vs_layerwise(layer.layerwise_improvement)} "
                f"{layer.mapping:>10}  {layer.chosen}"
            )
        gain = 1.0 - self.total_tnmse / self.total_baseline_tnmse
        total_layerwise = self.total_layerwise_baseline_tnmse
        lines.append(f"{'total':<{width}} {'':>18} {self.total_tnmse:9.5f} {'':>20} "
                     f"{self.total_baseline_tnmse:9.5f} {'':>20} {100 * gain:6.1f}%"
                     + vs_layerwise(None if total_layerwise is None
                                    else 1.0 - self.total_tnmse / total_layerwise))
        kept = sum(layer.kept_baseline for layer in self.layers)
        if kept:
            lines.append(f"{kept} of {len(self.layers)} layer(s) keep the baseline converter: no "
                         f"strategy beat it with confidence")
        return "\n".join(lines)


def single_program(converter, b: int | None = None):
    """Program ``b`` of a batched CustomPair (``None``: it is already one), on the CPU; a
    standard converter (a kept baseline) as it is; a :class:`gpuwpo.device.mapping.Recipe`
    as the recipe of its converter's program ``b`` under the same mapping."""
    if isinstance(converter, Recipe):
        return Recipe(single_program(converter.converter, b), converter.mapping)
    if not isinstance(converter, CustomPairConductanceConverter):
        return converter
    f, g = converter.f_lst, converter.g_lst
    if b is not None:
        f, g = f[b], g[b]
    # Already checked for invertibility when the batch was built.
    return CustomPairConductanceConverter(f.detach().cpu().clone(), g.detach().cpu().clone(),
                                          converter.g_min, converter.g_max,
                                          invertibility_test=False, clip=converter.clip)
