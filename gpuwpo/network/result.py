"""What a network run returns: one :class:`LayerResult` per layer, in a :class:`NetworkResult`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..device.converters import CustomPairConductanceConverter
from ..registry import to_dict
from ..search.selection import BASELINE, Choice

__all__ = ["LayerResult", "NetworkResult", "single_program"]


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
        chosen: which contender won the validated choice (:mod:`gpuwpo.search.selection`):
            ``"search"``, ``"polish"``, ``"start: ..."``, ``"global"``, ``"x0"`` or
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

    @classmethod
    def from_choice(cls, name: str, shape: Sequence[int], choice: Choice, converter,
                    history: Sequence[float], loss_margin: float) -> LayerResult:
        """The layer's result from its validated choice (:mod:`gpuwpo.search.selection`): its
        figures and 95 % intervals, its label, and its success by ``loss_margin``;
        ``converter``: the winner's single program, or the baseline converter when it is kept."""
        return cls(name=name, shape=tuple(int(s) for s in shape), converter=converter,
                   tnmse=float(choice.tnmse), tnmse_ci95=choice.tnmse_ci95,
                   baseline_tnmse=float(choice.baseline_tnmse),
                   baseline_ci95=choice.baseline_ci95, history=[float(v) for v in history],
                   chosen=choice.label, success=choice.success(loss_margin))

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



def single_program(converter, b: int | None = None):
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
