"""The weight error does not depend on the weights' units (issue 13: "nothing silently wrong").

The same weights times c > 0 must give the same TNMSE for every c, in both physics, through the
converter path (baselines, evaluate) and the batched hot path (the search), with every ideal
compensation: converters divide by max|W| as it is and the compensation's floor is relative to
max|W| (docs/DESIGN.md section 2). The same noise draws are used at every scale, so the figures
agree to float rounding. Extreme scales (1e-30, 1e30) give finite figures, never NaN.
"""

from __future__ import annotations

import math

import pytest
import torch

import gpuwpo
from gpuwpo.device.compensation import GlobalDriftCompensation, PerColumnDriftCompensation
from gpuwpo.device.simulate import converter_errors, tnmse_over_time

SCALES = [10.0 ** k for k in range(-8, 9, 2)]
EXTREMES = [1e-30, 1e30]
TIMES = [1.0, 86400.0, 31536000.0]
NOISE = gpuwpo.PCMLikeNoiseModel(g_max=25.0)
COMPENSATIONS = {"global": GlobalDriftCompensation(),
                 "exact-reference": GlobalDriftCompensation(exact_reference=True),
                 "per-column": PerColumnDriftCompensation()}


def _weights() -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    return gpuwpo.student_t_weights((24, 16), generator=gen)


def _converters() -> dict:
    space = gpuwpo.StrategySpace([None, None], 0.0, 25.0)
    x = torch.rand(space.dim, generator=torch.Generator().manual_seed(3))
    return {
        "dualpair": gpuwpo.DualPairConductanceConverter([1.0, 2.0], 0.0, 25.0),
        "singlepair": gpuwpo.SinglePairConductanceConverter(2.0, 25.0),
        "npair": gpuwpo.NPairConductanceConverter([1.0, 2.0, 4.0], 0.0, 25.0),
        "fusion": gpuwpo.FusionConductanceConverter(30.0),
        "custompair": space.to_converter(x, 1.0, invertibility_test=False),
    }


@pytest.mark.parametrize("physics", ["device", "aihwkit"])
@pytest.mark.parametrize("comp", list(COMPENSATIONS))
def test_converter_path_is_scale_invariant(physics, comp):
    w = _weights()
    for name, conv in _converters().items():
        def errors(scale, conv=conv):
            return converter_errors(w * scale, conv, NOISE, TIMES,
                                    compensation=COMPENSATIONS[comp], physics=physics,
                                    repeats=3, generator=11)
        want = errors(1.0)
        for scale in SCALES + EXTREMES:
            got = errors(scale)
            assert torch.isfinite(got).all(), (name, scale, got)
            torch.testing.assert_close(got, want, rtol=2e-3, atol=1e-6,
                                       msg=lambda m, n=name, s=scale: f"{n} x {s}: {m}")


@pytest.mark.parametrize("physics", ["device", "aihwkit"])
def test_hot_path_is_scale_invariant(physics):
    w = _weights()
    space = gpuwpo.StrategySpace([None, None], 0.0, 25.0)
    x = torch.rand(1, 6, space.dim, generator=torch.Generator().manual_seed(4))

    def losses(scale):
        obj = gpuwpo.TNMSEObjective([w * scale], NOISE, None, TIMES, space, test_in_features=16,
                                    test_out_features=8, physics=physics, kernel="torch")
        return obj(x, 7)

    want = losses(1.0)
    for scale in SCALES + EXTREMES:
        got = losses(scale)
        assert torch.isfinite(got).all(), (scale, got)
        torch.testing.assert_close(got, want, rtol=2e-3, atol=1e-6)


def test_the_issue_case_weights_times_1e4_at_one_day():
    # The issue: the same weights x 1e-4 gave 0.88 instead of 0.09 at 1 day.
    w = _weights()
    base = gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0)
    one, _ = tnmse_over_time(w, base, NOISE, [86400.0], repeats=4, generator=2)
    small, _ = tnmse_over_time(w * 1e-4, base, NOISE, [86400.0], repeats=4, generator=2)
    assert float(small[0]) == pytest.approx(float(one[0]), rel=1e-3)


def test_simulated_weights_scale_with_the_weights():
    w = _weights()
    conv = gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0)
    want = gpuwpo.simulate_weights(w, conv, NOISE, TIMES, repeats=2, generator=3)
    for scale in (1e-8, 1e8):
        got = gpuwpo.simulate_weights(w * scale, conv, NOISE, TIMES, repeats=2, generator=3)
        torch.testing.assert_close(got / scale, want, rtol=2e-3,
                                   atol=1e-6 * float(want.abs().max()))


def test_an_all_zero_layer_gives_a_finite_figure():
    conv = gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0)
    eff = gpuwpo.simulate_weights(torch.zeros(4, 3), conv, NOISE, TIMES, repeats=2, generator=1)
    assert torch.isfinite(eff).all()
    assert math.isfinite(float(eff.abs().max()))


def test_weights_beyond_what_float32_holds_are_refused_not_simulated_into_nan():
    w = _weights().double()
    conv = gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0)
    for scale in (1e40, 1e300, 1e-40):
        with pytest.raises(ValueError, match="outside the 1e-32 .. 1e.32.*rescale"):
            tnmse_over_time(w * scale, conv, NOISE, TIMES, repeats=2, generator=1)
