"""Choosing each layer's answer: never worse than the baseline converter.

A search ends with several candidates for a layer: its best point, the polish of that point,
the best of the standard converters it was seeded with, a warm start (a network's global
strategy). Each is a noisy estimate's winner, so each is optimistic. The answer is chosen by
*validated* TNMSE instead: every contender and the baseline converter itself are programmed
``repeats`` times with fresh noise, the same noise for all of them (the converter path,
:func:`gpuwpo.device.simulate.converter_errors` with a list of converters), so that their
differences
are paired and far less noisy than their values.

The rule (:func:`choose`): the contender with the lowest mean TNMSE wins if its paired
difference to the baseline is below zero by more than :data:`ACCEPT_Z` standard errors;
otherwise the layer keeps the baseline's own program. So a returned strategy is, with high
confidence, better than the converter the user would have used anyway; when the evidence is
not there, the user gets that converter back, and the result says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..device.simulate import converter_errors

__all__ = ["ACCEPT_Z", "BASELINE", "Z95", "Choice", "choose", "choose_per_layer", "interval"]

#: Standard errors of the paired difference by which a contender must beat the baseline
#: (one-sided; about a 2.3 % chance of taking a strategy that is merely equal to the baseline).
ACCEPT_Z = 2.0

#: The label of the baseline converter among the contenders.
BASELINE = "baseline"

#: The two-sided 95 % quantile of the normal distribution: intervals are mean +- Z95 SE.
Z95 = 1.959963984540054


def interval(mean: float, sem: float) -> tuple[float, float]:
    """The 95 % interval ``(mean - Z95 sem, mean + Z95 sem)`` (normal approximation)."""
    return float(mean - Z95 * sem), float(mean + Z95 * sem)


@dataclass(frozen=True)
class Choice:
    """One layer's validated choice.

    Attributes:
        label: the winner's label (:data:`BASELINE` when the layer keeps the baseline).
        index: the winner's index among the contenders, -1 for the baseline.
        tnmse, tnmse_sem: the winner's mean TNMSE over the repeats and its standard error.
        baseline_tnmse, baseline_sem: the baseline's, on the same noise.
        difference, difference_sem: the winner's paired difference to the baseline (mean, SE);
            0 when the baseline is kept.
        figures: label -> (mean, SE) of every contender and of the baseline.
        repeats: programmings per contender.
    """

    label: str
    index: int
    tnmse: float
    tnmse_sem: float
    baseline_tnmse: float
    baseline_sem: float
    difference: float
    difference_sem: float
    figures: dict[str, tuple[float, float]]
    repeats: int

    @property
    def kept_baseline(self) -> bool:
        """Whether the layer keeps the baseline's own program."""
        return self.index < 0

    @property
    def tnmse_ci95(self) -> tuple[float, float]:
        """The winner's 95 % interval."""
        return interval(self.tnmse, self.tnmse_sem)

    @property
    def baseline_ci95(self) -> tuple[float, float]:
        """The baseline's 95 % interval."""
        return interval(self.baseline_tnmse, self.baseline_sem)

    def success(self, loss_margin: float) -> bool:
        """Whether the answer is a strategy that beats the baseline by ``loss_margin``: kept
        baselines never succeed; a strategy does when tnmse < baseline * (1 - loss_margin)."""
        return not self.kept_baseline and \
            self.tnmse < self.baseline_tnmse * (1.0 - float(loss_margin))


def _mean_sem(values: torch.Tensor) -> tuple[float, float]:
    n = values.shape[-1]
    return float(values.mean()), float(values.std() / math.sqrt(n))


def choose(
    weights: torch.Tensor,
    contenders: Sequence[tuple[str, object]],
    baseline,
    noise_model,
    t_steps,
    *,
    repeats: int,
    generator: torch.Generator | int | None,
    layer_id: int = 0,
    compensation=None,
    physics: str = "device",
    amplification: float = 10.0,
    memory_budget: int | None = None,
    z: float | None = None,
) -> Choice:
    """Choose one tile's answer among ``contenders`` and the baseline (the module's rule).

    Args:
        weights: the tile's ideal weights (a layer's test tile).
        contenders: ``(label, converter)`` pairs, each converter holding one program; labels
            are unique and not :data:`BASELINE`. May be empty (the baseline is then kept).
        baseline: the standard converter to beat.
        noise_model, t_steps, compensation, physics, amplification, memory_budget: as for
            :func:`gpuwpo.device.simulate.converter_errors`.
        repeats: programmings of every contender (>= 2).
        generator: source of the noise's base seed (an int for a reproducible choice).
        layer_id: key of the tile's noise streams.
        z: standard errors of the paired difference a contender must win by (None:
            :data:`ACCEPT_Z`).

    Returns:
        A :class:`Choice`.
    """
    z = ACCEPT_Z if z is None else float(z)
    if int(repeats) != repeats or repeats < 2:
        raise ValueError(f"repeats must be an integer >= 2, got {repeats!r}")
    labels = [label for label, _ in contenders]
    if len(set(labels)) != len(labels) or BASELINE in labels:
        raise ValueError(f"contender labels must be unique and not {BASELINE!r}, got {labels}")
    convs = [baseline, *(conv for _, conv in contenders)]
    errors = converter_errors(weights, convs, noise_model, t_steps, compensation=compensation,
                              physics=physics, repeats=int(repeats), generator=generator,
                              layer_id=layer_id, amplification=amplification,
                              memory_budget=memory_budget)  # [C + 1, repeats, T]
    tnmse = errors.double().mean(-1)  # [C + 1, repeats]
    figures = {BASELINE: _mean_sem(tnmse[0])}
    figures.update({label: _mean_sem(tnmse[c + 1]) for c, label in enumerate(labels)})
    base_mean, base_sem = figures[BASELINE]
    best = min(range(len(labels)), key=lambda c: figures[labels[c]][0], default=None)
    if best is not None:
        diff, diff_sem = _mean_sem(tnmse[best + 1] - tnmse[0])
        if diff + z * diff_sem < 0:
            mean, sem = figures[labels[best]]
            return Choice(labels[best], best, mean, sem, base_mean, base_sem, diff, diff_sem,
                          figures, int(repeats))
    return Choice(BASELINE, -1, base_mean, base_sem, base_mean, base_sem, 0.0, 0.0, figures,
                  int(repeats))


def choose_per_layer(
    objective,
    contenders: Sequence[Sequence[tuple[str, object]]],
    baseline,
    *,
    repeats: int,
    generator: int,
    z: float | None = None,
) -> list[Choice]:
    """:func:`choose` for every layer of a :class:`gpuwpo.TNMSEObjective`, on its test tiles.

    Each layer's noise is keyed by its layer id under one base seed, so a layer's choice is the
    same whether it is chosen alone or with the others.

    Args:
        objective: the objective whose tiles, device model, times, compensation and physics
            are used.
        contenders: one list of ``(label, converter)`` per layer.
        baseline: the standard converter (each layer's tile is converted with its own max|W|).
        repeats, z: as for :func:`choose`.
        generator: the base seed (an int).
    """
    if len(contenders) != objective.num_layers:
        raise ValueError(f"need one list of contenders per layer ({objective.num_layers}), got "
                         f"{len(contenders)}")
    return [
        choose(objective.tiles.tile(b), contenders[b], baseline, objective.noise_model,
               objective.t_steps, repeats=repeats, generator=generator,
               layer_id=objective.tiles.layer_ids[b], compensation=objective.compensation,
               physics=objective.physics, amplification=objective.error_amplification,
               memory_budget=objective.memory_budget, z=z)
        for b in range(objective.num_layers)
    ]
