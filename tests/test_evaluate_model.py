"""gpuwpo.evaluate_model: a network's metric over time, baseline vs a result's strategies.

What the tests guard: the pairing (a result whose strategies are the baseline differs from it by
exactly 0, standard error 0; unpaired noise, the negative control, does not), the standard-error
formula against numpy, that the figures follow the times asked for (order, and a time's figures
do not depend on the others), the recorded physics as defaults and both physics working (with
the noise switched off, every programming is the converter's exact round trip: the digital
metric), the model left untouched, the figure's 95 % bands and the table, and the errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gpuwpo import (
    GlobalDriftCompensation,
    LayerResult,
    ModelEvaluation,
    NetworkResult,
    PCMLikeNoiseModel,
    evaluate_model,
)
from gpuwpo.network.result import single_program
from gpuwpo.registry import to_dict
from gpuwpo.search.strategy import StrategySpace
from tests._physics import DUAL, NOISE, TIMES


def _model() -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


X = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))


def _metric(model: nn.Module) -> float:
    """-100 x the mean squared deviation of the outputs from the digital model's (0 when equal):
    continuous, so that any difference of the programmed weights shows."""
    return -100.0 * float((model(X) - REFERENCE).pow(2).mean())


with torch.no_grad():
    REFERENCE = _model()(X)


def _npair_program(w: torch.Tensor, ratio: float):
    """The two-pair CustomPair program of NPair f=[1, ratio] (4 devices per weight, as DualPair)."""
    space = StrategySpace(f_lst=[None, None], g_min=0.0, g_max=25.0)
    return single_program(space.to_converter(space.encode_npair([1.0, ratio], 0.9),
                                             float(w.abs().max())))


def _result(model: nn.Module, converter=None, *, physics: str = "device",
            noise_model=NOISE) -> NetworkResult:
    """A result for the model's two Linear weights: ``converter`` for each (default an NPair
    f=[1, 3] program), recording the physics, the DualPair baseline and the times."""
    layers = []
    for name in ("0.weight", "2.weight"):
        w = dict(model.named_parameters())[name].detach()
        conv = _npair_program(w, 3.0) if converter is None else converter
        layers.append(LayerResult(name, tuple(w.shape), conv, 0.01, (0.009, 0.011), 0.012,
                                  (0.011, 0.013), [], "search", True))
    settings = {"t_steps": TIMES, "physics": physics, "noise_model": to_dict(noise_model),
                "baseline": to_dict(DUAL), "compensation": to_dict(GlobalDriftCompensation())}
    return NetworkResult.from_layers(layers, settings=settings, nit=0, nfev=0, wall_time=0.0,
                                     stop_reason="test")


def test_strategies_that_are_the_baseline_differ_by_exactly_zero():
    model = _model()
    ev = evaluate_model(model, _result(model, DUAL), _metric, repeats=3, generator=5)
    assert isinstance(ev, ModelEvaluation)
    assert ev.values["baseline"].shape == (3, len(TIMES))
    # The same noise, repeat by repeat and time by time: the same programmed network.
    assert torch.equal(ev.values["baseline"], ev.values["optimised"])
    assert torch.equal(ev.difference_mean, torch.zeros(len(TIMES), dtype=torch.float64))
    assert torch.equal(ev.difference_sem, torch.zeros(len(TIMES), dtype=torch.float64))
    # ... while the repeats themselves differ (the noise is real).
    assert float(ev.sem("baseline").min()) > 0


def test_unpaired_noise_gives_a_nonzero_difference():
    # Negative control: the same strategies measured on independent noise do differ.
    model = _model()
    result = _result(model, DUAL)
    a = evaluate_model(model, result, _metric, repeats=3, generator=5)
    b = evaluate_model(model, result, _metric, repeats=3, generator=6)
    unpaired = a.values["optimised"] - b.values["baseline"]
    assert bool((unpaired != 0).all())
    assert float(unpaired.std(0).min()) > 0


def test_the_paired_difference_is_tighter_than_the_strategies_spread():
    # A real strategy (NPair f=[1, 3]) against DualPair [1, 1]: the shared noise makes the
    # per-repeat differences spread far less than either strategy's values.
    model = _model()
    ev = evaluate_model(model, _result(model), _metric, repeats=6, generator=2)
    unpaired_se = torch.sqrt(ev.sem("baseline") ** 2 + ev.sem("optimised") ** 2)
    assert bool((ev.difference_sem < unpaired_se).all())
    assert bool((ev.difference != 0).any())


def test_means_and_standard_errors_are_the_textbook_formulas():
    model = _model()
    ev = evaluate_model(model, _result(model), _metric, repeats=4, generator=9)
    for name in ("baseline", "optimised"):
        v = ev.values[name].numpy()
        np.testing.assert_allclose(ev.mean(name).numpy(), v.mean(0), rtol=1e-12)
        np.testing.assert_allclose(ev.sem(name).numpy(), v.std(0, ddof=1) / math.sqrt(4),
                                   rtol=1e-12)
    d = ev.values["optimised"].numpy() - ev.values["baseline"].numpy()
    np.testing.assert_allclose(ev.difference_mean.numpy(), d.mean(0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ev.difference_sem.numpy(), d.std(0, ddof=1) / 2.0, rtol=1e-12)
    record = ev.to_dict()
    assert record["difference"]["sem"] == ev.difference_sem.tolist()
    assert record["times"] == TIMES and record["repeats"] == 4


def test_figures_follow_the_times_asked_for():
    model = _model()
    result = _result(model)
    forward = evaluate_model(model, result, _metric, [1.0, 3600.0], repeats=2, generator=3)
    backward = evaluate_model(model, result, _metric, [3600.0, 1.0], repeats=2, generator=3)
    alone = evaluate_model(model, result, _metric, [3600.0], repeats=2, generator=3)
    assert backward.times == [3600.0, 1.0]
    for name in ("baseline", "optimised"):
        assert torch.equal(forward.values[name], backward.values[name].flip(1))
        assert torch.equal(alone.values[name][:, 0], forward.values[name][:, 1])
    # Default: the result's own times.
    assert evaluate_model(model, result, _metric, repeats=2, generator=3).times == TIMES


@pytest.mark.parametrize("physics", ["device", "aihwkit"])
def test_without_noise_every_programming_is_the_digital_network(physics):
    # No programming noise, drift or read noise: a DualPair round trip is exact, so every
    # value is the digital metric (0 here) in both physics.
    silent = PCMLikeNoiseModel(g_max=25.0, prog_noise_scale=0.0, read_noise_scale=0.0,
                               drift_scale=0.0)
    model = _model()
    ev = evaluate_model(model, _result(model, DUAL, physics=physics, noise_model=silent),
                        _metric, repeats=2, generator=1)
    assert ev.physics == physics
    assert ev.digital == 0.0
    for name in ("baseline", "optimised"):
        assert float(ev.values[name].abs().max()) < 1e-9


def test_the_recorded_physics_is_the_default_and_can_be_overridden():
    model = _model()
    result = _result(model, physics="aihwkit")
    assert evaluate_model(model, result, _metric, repeats=2, generator=1).physics == "aihwkit"
    ev = evaluate_model(model, result, _metric, repeats=2, generator=1, physics="device")
    assert ev.physics == "device"
    # A noisier device model, given: the network does measurably worse at a day.
    noisy = PCMLikeNoiseModel(g_max=25.0, prog_noise_scale=4.0, read_noise_scale=4.0)
    worse = evaluate_model(model, result, _metric, [86400.0], repeats=4, generator=1,
                           physics="device", noise_model=noisy)
    base = evaluate_model(model, result, _metric, [86400.0], repeats=4, generator=1,
                          physics="device")
    assert float(worse.mean("baseline")[0]) < float(base.mean("baseline")[0])


def test_the_model_is_left_as_it_was():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate_model(model, _result(model), _metric, repeats=2, generator=1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_generator_none_is_fresh_entropy_and_leaves_torch_alone():
    model = _model()
    result = _result(model)
    state = torch.random.get_rng_state()
    a = evaluate_model(model, result, _metric, [1.0], repeats=2)
    b = evaluate_model(model, result, _metric, [1.0], repeats=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not torch.equal(a.values["baseline"], b.values["baseline"])
    # A generator gives the seed: the same state, the same figures.
    c, d = (evaluate_model(model, result, _metric, [1.0], repeats=2,
                           generator=torch.Generator().manual_seed(8)) for _ in range(2))
    assert torch.equal(c.values["optimised"], d.values["optimised"])


@pytest.mark.slow
def test_plot_draws_both_curves_with_their_95_percent_intervals(tmp_path):
    model = _model()
    ev = evaluate_model(model, _result(model), _metric, repeats=3, generator=4,
                        metric_name="-100 x output MSE")
    fig = ev.plot(tmp_path / "acc.png")
    (ax,) = fig.get_axes()
    assert ax.get_xscale() == "log"
    assert ax.get_ylabel() == "-100 x output MSE"
    lines = ax.get_lines()
    assert len(lines) == 3  # baseline, optimised, the digital reference
    for line, name in zip(lines, ("baseline", "optimised")):
        torch.testing.assert_close(torch.as_tensor(line.get_ydata()), ev.mean(name))
    for band, name in zip(ax.collections, ("baseline", "optimised")):
        y = band.get_paths()[0].vertices[:, 1]
        half = 1.96 * ev.sem(name)
        assert min(y) == pytest.approx(float((ev.mean(name) - half).min()), rel=1e-9)
        assert max(y) == pytest.approx(float((ev.mean(name) + half).max()), rel=1e-9)
    assert (tmp_path / "acc.png").read_bytes()[:4] == b"\x89PNG"
    table = ev.table()
    assert "1 s" in table and "1 day" in table and "digital" in table
    assert len(table.splitlines()) == 2 + len(TIMES)
    # It says what the baseline is: the recorded one (no mapping recorded: layer-wise).
    assert "baseline: DualPair f=[1, 1], layer-wise mapping" in table.splitlines()[0]


def test_bad_input_is_refused_with_the_value_named():
    model = _model()
    result = _result(model)
    with pytest.raises(TypeError, match="nn.Module"):
        evaluate_model(model.state_dict(), result, _metric)
    with pytest.raises(TypeError, match="NetworkResult"):
        evaluate_model(model, {"0.weight": DUAL}, _metric)
    with pytest.raises(TypeError, match="callable"):
        evaluate_model(model, result, 42)
    with pytest.raises(TypeError, match="generator"):
        evaluate_model(model, result, _metric, [1.0], repeats=2, generator="seed")
    with pytest.raises(ValueError, match="repeats"):
        evaluate_model(model, result, _metric, repeats=1)
    with pytest.raises(ValueError, match="t_steps"):
        evaluate_model(model, result, _metric, [-1.0], repeats=2)
    with pytest.raises(ValueError, match="nonsense"):
        evaluate_model(model, result, _metric, repeats=2, physics="nonsense")
    with pytest.raises(ValueError, match="nan"):
        evaluate_model(model, result, lambda m: float("nan"), [1.0], repeats=2, generator=0)
    with pytest.raises(TypeError, match="number"):
        evaluate_model(model, result, lambda m: "good", [1.0], repeats=2, generator=0)
    other = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5))
    with pytest.raises(ValueError, match="2.weight"):
        evaluate_model(other, result, _metric, [1.0], repeats=2, generator=0)
    with pytest.raises(ValueError, match="no parameter"):
        evaluate_model(nn.Sequential(nn.Linear(16, 12)), result, _metric, [1.0], repeats=2,
                       generator=0)
