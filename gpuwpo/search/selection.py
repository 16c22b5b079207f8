"""Choosing each layer's answer: never worse than the baseline converter.

A search ends with several candidates for a layer: its best point, the polish of that point,
the best of the standard converters it started from, a warm start (a network's global
strategy). Each is a noisy estimate's winner, so each is optimistic. The answer is chosen by
*validated* TNMSE instead, in two independent blocks of fresh noise:

1. **Pick.** Every contender and the baseline converter are programmed ``repeats`` times on the
   noise of the stream ``"validation"`` (:func:`gpuwpo.rng.stream_seed`), the same noise for all
   of them (:func:`gpuwpo.device.simulate.converter_errors` with a list of converters), and the
   contender with the lowest mean TNMSE is the winner (:func:`pick_winner`).
2. **Confirm.** The winner and the baseline are programmed ``repeats`` times more on the
   independent stream ``"confirmation"``. The winner is taken when its paired difference to the
   baseline, d_r = TNMSE_r(winner) - TNMSE_r(baseline), passes the one-sided paired t-test
   ``mean(d) + t_{1 - a, n - 1} sd(d) / sqrt(n) < 0`` at the rate a = :data:`FALSE_ACCEPT_RATE`
   (:func:`confirms`); otherwise the layer keeps the baseline's own program.

The rate. Picking the lowest of C noisy means and testing it on the same draws is the winner's
curse: when all C contenders are merely equal to the baseline, the lowest of them looks better
than it is, and a test at one comparison's z = 2 (2.3 %) takes one of them far more often (with
C = 8 about 12 % of the time, measured). The confirmation block is independent of the pick, so there
the winner is one fixed contender and the test is a single comparison: the probability of
taking a strategy that is merely equal to the baseline is **at most a = 2.5 % per layer,
whatever the number of contenders** (exactly a for normally distributed paired differences, the
Student-t quantile taking the finite ``repeats`` into account; a layer's TNMSE is a mean over
thousands of weights, close to normal). ``tests/test_selection.py`` measures it on synthetic
trials where every contender equals the baseline, beside the same-draws rule as a negative
control.

The figures. The headline figures of a :class:`Choice` (``tnmse``, ``baseline_tnmse``,
``difference`` and their standard errors) come from the confirmation block, so a chosen
strategy's TNMSE carries no selection bias; ``figures`` holds every contender's figures on the
picking block (the winner's there is optimistic). A layer with no contender keeps the baseline
with its figures from the picking block.

Recipes. A contender and the baseline are converters or :class:`gpuwpo.device.mapping.Recipe`
objects (a converter and its mapping; a bare converter maps layer-wise), so the same programs
under different mappings compete (the choice is per layer: one layer may keep the per-column
mapping, another take the layer-wise one). ``references`` are recipes measured beside the
answer on the noise of its headline figures and never chosen (a per-column baseline's layer-wise
counterpart, so that a run also reports its gain against the figures gpuwpo reported before the
mapping was modelled).

Noise is keyed by the layer's id inside each stream, so a layer's choice is the same whether it
is chosen alone or beside the others (a network's layers may be split over processes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..device.simulate import converter_errors
from ..rng import stream_seed
from .objective import path_converter

__all__ = ["BASELINE", "FALSE_ACCEPT_RATE", "ROUNDOFF", "Z95", "Choice", "choose",
           "choose_per_layer", "confirms", "interval", "pick_winner"]

#: The rule's error rate: the probability that a layer takes a strategy that is merely equal to
#: the baseline (one-sided; per layer, whatever the number of contenders).
FALSE_ACCEPT_RATE = 0.025

#: Relative differences below this are round-off, never a strategy's gain (:func:`confirms`):
#: TNMSEs are float32 means whose last digits depend on how they were computed.
ROUNDOFF = 1e-5

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
        tnmse, tnmse_sem: the answer's mean TNMSE over the confirmation block's repeats and its
            standard error (the baseline's own when it is kept).
        baseline_tnmse, baseline_sem: the baseline's, on the same noise.
        difference, difference_sem: the winner's paired difference to the baseline (mean, SE)
            on the confirmation block; 0 when the baseline is kept.
        figures: label -> (mean, SE) of every contender and of the baseline on the picking
            block (the picked one's is optimistic: it was picked for being low).
        repeats: programmings per contender and block.
        tested: the label of the contender the confirmation block tested (the picking block's
            winner, taken or not); None when there was no contender.
        confirmation: label -> (mean, SE) of the tested contender and the baseline on the
            confirmation block (empty when there was no contender).
        references: label -> (mean, SE) of every reference recipe on the noise of the headline
            figures (the confirmation block, or the picking block when there was no contender).
        reference_differences: label -> (mean, SE) of the answer's paired difference to each
            reference on that noise (negative: the answer is better).
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
    tested: str | None = None
    confirmation: dict[str, tuple[float, float]] = field(default_factory=dict)
    references: dict[str, tuple[float, float]] = field(default_factory=dict)
    reference_differences: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def kept_baseline(self) -> bool:
        """Whether the layer keeps the baseline's own program."""
        return self.index < 0

    @property
    def tnmse_ci95(self) -> tuple[float, float]:
        """The answer's 95 % interval."""
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


def _check_rate(rate: float) -> float:
    rate = float(rate)
    if not 0.0 < rate < 1.0:
        raise ValueError(f"the false-accept rate must lie in (0, 1), got {rate!r}")
    return rate


def pick_winner(tnmse: torch.Tensor) -> int:
    """The picking step: the contender with the lowest mean TNMSE.

    Args:
        tnmse: [C + 1, n] TNMSE of each of n repeats; row 0 the baseline, rows 1..C the
            contenders, all on the same noise.

    Returns:
        The winner's index among the contenders (0 .. C - 1; the first on ties), -1 when C = 0.
    """
    if tnmse.dim() != 2 or tnmse.shape[0] < 1:
        raise ValueError(f"tnmse must have shape [C + 1, n], got {tuple(tnmse.shape)}")
    if tnmse.shape[0] == 1:
        return -1
    means = tnmse[1:].double().mean(-1)
    # A contender whose simulation failed (NaN) is no winner.
    return int(torch.nan_to_num(means, nan=math.inf).argmin())


def confirms(baseline: torch.Tensor, winner: torch.Tensor, rate: float | None = None) -> bool:
    """The confirming step: whether ``winner`` beats ``baseline`` by the one-sided paired t-test.

    Args:
        baseline, winner: [n] TNMSE of n repeats (n >= 2), repeat r of both on the same noise
            (and on noise the winner was not picked on, for the rule to hold its rate).
        rate: the test's false-accept rate a (None: :data:`FALSE_ACCEPT_RATE`).

    Returns:
        ``mean(d) + t_{1 - a, n - 1} * sd(d) / sqrt(n) < -ROUNDOFF * mean(baseline)`` with
        d = winner - baseline: False when d is identically 0 (an identical program never wins)
        or only round-off (:data:`ROUNDOFF`: the same program computed another way, e.g. a
        converter under the per-column mapping on rows that all share the layer's max|W|, has
        differences of float32 round-off that a t-test would otherwise confirm for their
        consistency alone).
    """
    from scipy.stats import t as student_t

    rate = _check_rate(FALSE_ACCEPT_RATE if rate is None else rate)
    if baseline.shape != winner.shape or baseline.dim() != 1 or baseline.shape[0] < 2:
        raise ValueError(f"baseline and winner must be [n] with n >= 2, got "
                         f"{tuple(baseline.shape)} and {tuple(winner.shape)}")
    n = baseline.shape[0]
    diff, sem = _mean_sem(winner.double() - baseline.double())
    tolerance = ROUNDOFF * abs(float(baseline.double().mean()))
    return bool(diff + float(student_t.ppf(1.0 - rate, n - 1)) * sem < -tolerance)


def choose(
    weights: torch.Tensor,
    contenders: Sequence[tuple[str, object]],
    baseline,
    noise_model,
    t_steps,
    *,
    repeats: int,
    seed: int,
    layer_id: int = 0,
    compensation=None,
    physics: str = "device",
    amplification: float = 10.0,
    memory_budget: int | None = None,
    rate: float | None = None,
    references: Mapping[str, object] | None = None,
) -> Choice:
    """Choose one tile's answer among ``contenders`` and the baseline (the module's rule).

    Args:
        weights: the tile's ideal weights (a layer's test tile, ``[out, in]`` for a per-column
            recipe).
        contenders: ``(label, converter or Recipe)`` pairs, each converter holding one program;
            labels are unique and not :data:`BASELINE`. May be empty (the baseline is then
            kept).
        baseline: the standard converter to beat, or a Recipe (the converter under a mapping).
        noise_model, t_steps, compensation, physics, amplification, memory_budget: as for
            :func:`gpuwpo.device.simulate.converter_errors`.
        repeats: programmings of every contender in each block (>= 2).
        seed: the run seed (an int): the picking block is its stream ``"validation"``, the
            confirmation block its stream ``"confirmation"``, each keyed by ``layer_id``.
        layer_id: key of the tile's noise streams.
        rate: the rule's false-accept rate (None: :data:`FALSE_ACCEPT_RATE`).
        references: label -> converter or Recipe, measured for the report only (never chosen)
            on the noise of the headline figures, repeat by repeat beside the answer
            (:attr:`Choice.references`).

    Returns:
        A :class:`Choice`.
    """
    rate = _check_rate(FALSE_ACCEPT_RATE if rate is None else rate)
    if int(repeats) != repeats or repeats < 2:
        raise ValueError(f"repeats must be an integer >= 2, got {repeats!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be the run's int seed, got {type(seed).__name__}")
    labels = [label for label, _ in contenders]
    if len(set(labels)) != len(labels) or BASELINE in labels:
        raise ValueError(f"contender labels must be unique and not {BASELINE!r}, got {labels}")
    repeats = int(repeats)
    references = dict(references or {})
    # Checked (and a layer-wise recipe unwrapped to its converter) before any work.
    baseline = path_converter(baseline)
    contenders = [(label, path_converter(conv)) for label, conv in contenders]
    reference_list = path_converter(list(references.values()))

    def tnmse(converters: list, stream: str) -> torch.Tensor:  # [len(converters), repeats]
        errors = converter_errors(weights, converters, noise_model, t_steps,
                                  compensation=compensation, physics=physics, repeats=repeats,
                                  generator=stream_seed(seed, stream), layer_id=layer_id,
                                  amplification=amplification, memory_budget=memory_budget)
        return errors.double().mean(-1)

    def measured(answer: torch.Tensor, stream: str) -> dict:
        # The references on the answer's own noise (the same stream and layer key: converters
        # with as many devices see the very same draws), in a call of their own so that the
        # answer's figures are those of the rule whatever the references.
        if not references:
            return {}
        values = tnmse(reference_list, stream)
        return {"references": {label: _mean_sem(values[i]) for i, label in enumerate(references)},
                "reference_differences": {label: _mean_sem(answer - values[i])
                                          for i, label in enumerate(references)}}

    picking = tnmse([baseline, *(conv for _, conv in contenders)], "validation")
    figures = {BASELINE: _mean_sem(picking[0])}
    figures.update({label: _mean_sem(picking[c + 1]) for c, label in enumerate(labels)})
    best = pick_winner(picking)
    if best < 0:
        mean, sem = figures[BASELINE]
        return Choice(BASELINE, -1, mean, sem, mean, sem, 0.0, 0.0, figures, repeats,
                      **measured(picking[0], "validation"))
    confirming = tnmse([baseline, contenders[best][1]], "confirmation")
    tested = labels[best]
    confirmation = {BASELINE: _mean_sem(confirming[0]), tested: _mean_sem(confirming[1])}
    base_mean, base_sem = confirmation[BASELINE]
    if confirms(confirming[0], confirming[1], rate):
        mean, sem = confirmation[tested]
        diff, diff_sem = _mean_sem(confirming[1] - confirming[0])
        return Choice(tested, best, mean, sem, base_mean, base_sem, diff, diff_sem, figures,
                      repeats, tested, confirmation, **measured(confirming[1], "confirmation"))
    return Choice(BASELINE, -1, base_mean, base_sem, base_mean, base_sem, 0.0, 0.0, figures,
                  repeats, tested, confirmation, **measured(confirming[0], "confirmation"))


def choose_per_layer(
    objective,
    contenders: Sequence[Sequence[tuple[str, object]]],
    baseline,
    *,
    repeats: int,
    seed: int,
    references: Mapping[str, object] | None = None,
) -> list[Choice]:
    """:func:`choose` for every layer of a :class:`gpuwpo.TNMSEObjective`, on its test tiles.

    Each layer's noise is keyed by its layer id inside the run's streams, so a layer's choice is
    the same whether it is chosen alone or with the others.

    Args:
        objective: the objective whose tiles, device model, times, compensation and physics
            are used.
        contenders: one list of ``(label, converter or Recipe)`` per layer.
        baseline: the standard converter or a Recipe (each layer's tile is converted with its
            own max|W|, or each row with its own under the per-column mapping).
        repeats: programmings of every contender in each block (>= 2).
        seed: the run seed (an int), from which the streams ``"validation"`` and
            ``"confirmation"`` are derived.
        references: label -> converter or Recipe measured beside every layer's answer, for the
            report only (:func:`choose`).

    Raises:
        ValueError: not one list per layer, or a per-column recipe on test tiles that were not
            sampled by rows (before any work).
    """
    if len(contenders) != objective.num_layers:
        raise ValueError(f"need one list of contenders per layer ({objective.num_layers}), got "
                         f"{len(contenders)}")
    rows = objective.tiles.rows
    path_converter([baseline, *(references or {}).values(),
                    *(conv for layer in contenders for _, conv in layer)], rows)
    return [
        choose(objective.tiles.tile(b), contenders[b], baseline, objective.noise_model,
               objective.t_steps, repeats=repeats, seed=seed,
               layer_id=objective.tiles.layer_ids[b], compensation=objective.compensation,
               physics=objective.physics, amplification=objective.error_amplification,
               memory_budget=objective.memory_budget, references=references)
        for b in range(objective.num_layers)
    ]
