"""Choosing each layer's answer: paired validation, and never worse than the baseline."""

from __future__ import annotations

import math

import pytest
import torch

import gpuwpo
from gpuwpo.device.simulate import converter_errors
from gpuwpo.search import selection
from gpuwpo.search.selection import BASELINE, choose

T_STEPS = [1.0, 86400.0, 365 * 86400.0]
PHYSICS = ("device", "aihwkit")


@pytest.fixture(scope="module")
def tile():
    return gpuwpo.student_t_weights((64, 20), generator=torch.Generator().manual_seed(11))


def _noise():
    return gpuwpo.PCMLikeNoiseModel()


def _dual(f=(1.0, 1.0), g_max=25.0):
    return gpuwpo.DualPairConductanceConverter(list(f), 0.0, g_max)


@pytest.mark.parametrize("physics", PHYSICS)
def test_a_list_of_converters_sees_the_same_noise_as_each_alone(tile, physics):
    convs = [_dual(), _dual((1.0, 3.0)), gpuwpo.SinglePairConductanceConverter(0.0, 25.0)]
    together = converter_errors(tile, convs, _noise(), T_STEPS, repeats=12, generator=4,
                                physics=physics, memory_budget=1 << 16)
    alone = torch.stack([converter_errors(tile, c, _noise(), T_STEPS, repeats=12, generator=4,
                                          physics=physics) for c in convs])
    assert together.shape == (3, 12, len(T_STEPS))
    assert torch.equal(together, alone)


def test_paired_differences_are_far_less_noisy_than_the_values(tile):
    # The same devices and the same draws: the two converters' errors move together.
    choice = choose(tile, [("wider", _dual(g_max=24.0))], _dual(), _noise(), T_STEPS,
                    repeats=40, generator=5, z=-math.inf)
    independent = math.hypot(choice.tnmse_sem, choice.baseline_sem)
    assert choice.difference_sem < 0.5 * independent


def test_the_identical_converter_never_beats_the_baseline(tile):
    choice = choose(tile, [("same", _dual())], _dual(), _noise(), T_STEPS, repeats=10,
                    generator=1)
    assert choice.kept_baseline and choice.label == BASELINE and choice.index == -1
    assert choice.difference == 0.0 and choice.tnmse == choice.baseline_tnmse
    assert set(choice.figures) == {BASELINE, "same"}


def test_nothing_to_choose_keeps_the_baseline(tile):
    choice = choose(tile, [], _dual(), _noise(), T_STEPS, repeats=4, generator=1)
    assert choice.kept_baseline and set(choice.figures) == {BASELINE}


@pytest.mark.parametrize("physics", PHYSICS)
def test_a_clearly_better_contender_wins_and_a_worse_one_loses(tile, physics):
    # A baseline squeezed into 0..5 uS has a fifth of the signal for the same noise.
    poor = _dual(g_max=5.0)
    contenders = [("full range", _dual()), ("worse", _dual(g_max=2.0))]
    won = choose(tile, contenders, poor, _noise(), T_STEPS, repeats=8, generator=2,
                 physics=physics)
    assert won.label == "full range" and won.index == 0
    assert won.tnmse < won.baseline_tnmse and won.difference < 0
    assert won.tnmse == won.figures["full range"][0]
    lost = choose(tile, contenders[1:], poor, _noise(), T_STEPS, repeats=8, generator=2,
                  physics=physics)
    assert lost.kept_baseline


def test_labels_are_checked(tile):
    with pytest.raises(ValueError, match="unique"):
        choose(tile, [("a", _dual()), ("a", _dual())], _dual(), _noise(), T_STEPS, repeats=4,
               generator=1)
    with pytest.raises(ValueError, match="unique"):
        choose(tile, [(BASELINE, _dual())], _dual(), _noise(), T_STEPS, repeats=4, generator=1)
    with pytest.raises(ValueError, match="repeats"):
        choose(tile, [], _dual(), _noise(), T_STEPS, repeats=1, generator=1)


# -- never worse, end to end ------------------------------------------------------------------

#: An adversarially tiny budget: no standard starts, no polish, one generation of a minimal population,
#: so that the search's best is close to a random program.
TINY = dict(popsize=1, maxiter=1, standard_starts=False, polish=False, test_in_features=64,
            test_out_features=20, baseline_iterations=8, validation_repeats=24, disp=False,
            device="cpu")
CHECK_REPEATS = 96
CHECK_Z = 3.0


def _layers():
    gen = torch.Generator().manual_seed(21)
    return [gpuwpo.student_t_weights((48, 40), generator=gen, scale=0.05 * (1 + k))
            for k in range(6)]


def _worse_than_baseline(opt, seed: int) -> list[bool]:
    """Per layer: is the returned converter statistically worse than the baseline, judged on
    noise the choice never saw (paired, CHECK_Z standard errors)?"""
    verdicts = []
    for b, conv in enumerate(opt.result.converters):
        errors = converter_errors(
            opt.objective.tiles.tile(b), [opt.g_converter_baseline, conv], opt.noise_model,
            opt.objective.t_steps, physics=opt.physics, repeats=CHECK_REPEATS, generator=seed,
            layer_id=b)
        diff = errors.double().mean(-1)
        d = diff[1] - diff[0]
        verdicts.append(bool(d.mean() - CHECK_Z * d.std() / math.sqrt(CHECK_REPEATS) > 0))
    return verdicts


def _tiny_run(physics, starts: bool = False):
    opt = gpuwpo.WeightProgrammingOptimizer(
        _layers(), [None, None], _noise(), T_STEPS, _dual(), physics=physics, seed=7,
        **{**TINY, "standard_starts": starts})
    opt.run_optimizer()
    return opt


@pytest.mark.parametrize("physics", PHYSICS)
def test_no_returned_strategy_is_worse_than_the_baseline_at_a_tiny_budget(physics):
    opt = _tiny_run(physics)
    r = opt.result
    # At this budget the search's best is worse than the baseline on most layers...
    search_figures = [c.figures["search"][0] - c.baseline_tnmse for c in r.choices]
    assert sum(d > 0 for d in search_figures) >= 3
    # ... and those layers keep the baseline, saying so.
    for b, c in enumerate(r.choices):
        if c.kept_baseline:
            assert r.converters[b] is opt.g_converter_baseline
            assert r.chosen[b] == BASELINE and not bool(r.layer_success[b])
            assert not bool(torch.isfinite(r.x[b]).any())
    assert "keep the baseline" in r.summary()
    assert not any(_worse_than_baseline(opt, seed=12345))


@pytest.mark.parametrize("physics", PHYSICS)
def test_with_standard_starts_the_tiny_budget_returns_strategies_none_of_them_worse(physics):
    opt = _tiny_run(physics, starts=True)
    r = opt.result
    # The standard converters the space expresses beat DualPair f=[1, 1] on these layers...
    assert not bool(r.kept_baseline.any())
    assert all(label.startswith("start: ") for label in r.chosen)
    assert bool((r.improvement > 0).all())
    # ... and fresh noise agrees that none of them is worse.
    assert not any(_worse_than_baseline(opt, seed=12345))


@pytest.mark.parametrize("physics", PHYSICS)
def test_negative_control_accepting_the_best_contender_blindly_returns_worse_layers(
        physics, monkeypatch):
    # The check above has power: without the rule, the same run hands back worse layers.
    monkeypatch.setattr(selection, "ACCEPT_Z", -math.inf)
    opt = _tiny_run(physics)
    assert all(not c.kept_baseline for c in opt.result.choices)
    assert sum(_worse_than_baseline(opt, seed=12345)) >= 2
