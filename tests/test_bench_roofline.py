"""Tests of bench/roofline.py (the objective's roofline), bench/toolkit_loss.py (the reference
toolkit's own loss, timed) and bench/common.py's WallProfile (where a search's time goes).

The primitive counts are checked against the issue's hand count and their scaling; the
throughput measurement for its shape and for restoring torch's threads; the toolkit's loss
against gpuwpo's ``physics="aihwkit"`` in distribution (with a negative control); the profile
for an account that adds up and leaves the library as it found it. No timing is asserted.
"""

from __future__ import annotations

import math

import pytest
import torch

import gpuwpo
from gpuwpo.search import objective as objective_module
from gpuwpo.search import optimizer as optimizer_module
from tests._bench import load_script


@pytest.fixture(scope="module")
def roofline():
    return load_script("roofline")


def test_primitive_counts_are_the_issues_hand_count(roofline):
    # N = 10,240 weights, T = 6 times, K = 2 pairs: 245,760 device-times per candidate.
    c = roofline.primitive_counts(10240, 6, 2)
    assert c == {"exp": 2 * 245_760, "log": 245_760 + 40_960, "normal": 0,
                 "fma": 9 * 245_760 + 4 * 61_440 + 5 * 40_960, "gather": 2 * 40_960}
    assert c["fma"] == 2_662_400
    off = roofline.primitive_counts(10240, 6, 2, common_random_numbers=False)
    assert off["normal"] == 3 * 245_760 == 737_280
    assert {k: v for k, v in off.items() if k != "normal"} == {
        k: v for k, v in c.items() if k != "normal"}
    # The reference's tile converts the programmed weights again at every time: more fma and
    # gathers, the same transcendental functions.
    a = roofline.primitive_counts(10240, 6, 2, physics="aihwkit")
    assert a["exp"] == c["exp"] and a["log"] == c["log"]
    assert a["fma"] == 10 * 245_760 + 8 * 61_440 + 5 * 40_960
    assert a["gather"] == 2 * 245_760 + 2 * 40_960


def test_primitive_counts_scale_with_the_problem(roofline):
    base = roofline.primitive_counts(100, 3, 2)
    double_n = roofline.primitive_counts(200, 3, 2)
    assert all(double_n[p] == 2 * base[p] for p in base)
    # The per-target part does not grow with T: doubling T less than doubles log and fma.
    double_t = roofline.primitive_counts(100, 6, 2)
    assert double_t["exp"] == 2 * base["exp"]
    assert base["log"] < double_t["log"] < 2 * base["log"]
    for bad in ({"physics": "chip"},):
        with pytest.raises(ValueError, match="physics"):
            roofline.primitive_counts(100, 3, 2, **bad)
    with pytest.raises(ValueError, match="N must be a positive integer"):
        roofline.primitive_counts(0, 3, 2)


def test_roofline_rate_is_the_harmonic_sum(roofline):
    counts = {"exp": 2e6, "log": 1e6, "normal": 0, "fma": 4e6, "gather": 0}
    rates = {"exp": 1e9, "log": 5e8, "normal": 1e8, "fma": 4e9, "gather": 1e9}
    secs = roofline.roofline_seconds(counts, rates)
    assert secs == pytest.approx({"exp": 2e-3, "log": 2e-3, "fma": 1e-3})
    assert roofline.roofline_rate(counts, rates) == pytest.approx(200.0)
    # A primitive that is twice as fast can only raise the roofline.
    faster = {**rates, "log": 1e9}
    assert roofline.roofline_rate(counts, faster) > roofline.roofline_rate(counts, rates)


def test_measure_primitives_shape_threads_and_merge(roofline):
    before = torch.get_num_threads()
    m = roofline.measure_primitives([256, 1024], [1], repeats=1)
    assert torch.get_num_threads() == before
    assert set(m) == {"1"} and set(m["1"]) == set(roofline.PRIMITIVES)
    assert all(set(by) == {"256", "1024"} and all(v > 0 and math.isfinite(v)
                                                 for v in by.values())
               for by in m["1"].values())
    best = roofline.best_rates(m, 1)
    assert best["exp"] == max(m["1"]["exp"].values())
    with pytest.raises(KeyError, match="measured at"):
        roofline.best_rates(m, 2)
    halved = {"1": {p: {s: v / 2 for s, v in by.items()} for p, by in m["1"].items()}}
    assert roofline.merge_measurements([halved, m]) == m
    for bad in ({"sizes": [0]}, {"threads": [1.5]}, {"repeats": 0}):
        with pytest.raises(ValueError, match="positive integers"):
            roofline.measure_primitives(**{"sizes": [64], "threads": [1], **bad})


def test_toolkit_estimates_are_arithmetic():
    tk = load_script("toolkit_loss")
    assert tk.toolkit_candidates_at(100, 200, 21) == 100 * 21 * 201
    measured = {"search": {"baseline_s_per_iteration": 0.05, "s_per_candidate": 0.02}}
    est = tk.toolkit_estimate_s(measured, popsize=2, maxiter=3, dim=21, baseline_iterations=10,
                                layers=3)
    assert est == pytest.approx(3 * (10 * 0.05 + 2 * 21 * 4 * 0.02))
    runs = [{"version": "x", "loss": {"loss_weights": {"ms_per_candidate": 5.0, "candidates": 2}},
             "search": {"s_per_candidate": 0.03, "baseline_s_per_iteration": 0.01}},
            {"version": "x", "loss": {"loss_weights": {"ms_per_candidate": 4.0, "candidates": 2}},
             "search": {"s_per_candidate": 0.02, "baseline_s_per_iteration": 0.02}}]
    best = tk.best_toolkit(runs)
    assert best["loss"]["loss_weights"]["ms_per_candidate"] == 4.0
    assert best["search"] == {"s_per_candidate": 0.02, "baseline_s_per_iteration": 0.01}


def _small_objective(physics: str = "aihwkit") -> gpuwpo.TNMSEObjective:
    layer = gpuwpo.student_t_weights(512, df=4, generator=torch.Generator().manual_seed(3))
    return gpuwpo.TNMSEObjective(layer, gpuwpo.PCMLikeNoiseModel(), t_steps=(1.0, 3600.0),
                                 strategy_space=gpuwpo.StrategySpace([None, None]),
                                 test_in_features=32, test_out_features=4, physics=physics)


@pytest.mark.slow
def test_toolkit_loss_is_gpuwpos_aihwkit_physics_in_distribution():
    pytest.importorskip("aihwkit")
    tk = load_script("toolkit_loss")
    obj = _small_objective()
    loss = tk.ToolkitLoss(obj)
    x = torch.rand(2, obj.dim, generator=torch.Generator().manual_seed(5))
    repeats = 24
    theirs = torch.tensor(loss.time(x[0].expand(repeats, -1), seed=1, which=("loss_weights",))
                          ["loss_weights"]["tnmse"], dtype=torch.float64)
    ours = obj(x[0].expand(256, -1), 2, common_random_numbers=False).double()
    se = math.sqrt(theirs.var() / repeats + ours.var() / 256)
    assert abs(theirs.mean() - ours.mean()) < 4 * se
    # Negative control: another program on the same noise budget is told apart.
    other = obj(x[1].expand(256, -1), 2, common_random_numbers=False).double()
    se_other = math.sqrt(theirs.var() / repeats + other.var() / 256)
    assert abs(theirs.mean() - other.mean()) > 4 * se_other
    # loss_fxn (its DE's call) and loss_weights are the same simulation: same numbers when the
    # toolkit's global generator is seeded alike.
    both = loss.time(x[:1], seed=7)
    assert both["loss_fxn"]["tnmse"] == pytest.approx(both["loss_weights"]["tnmse"], rel=1e-6)


def _tiny_search(**kw):
    w = gpuwpo.student_t_weights((16, 16), df=3, generator=torch.Generator().manual_seed(0))
    opt = gpuwpo.WeightProgrammingOptimizer(
        w, [None, None], gpuwpo.PCMLikeNoiseModel(), (1.0, 3600.0),
        gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0), device="cpu", disp=False,
        popsize=1, maxiter=1, validation_repeats=2, baseline_iterations=2, polish=True,
        polish_maxiter=1, test_in_features=16, test_out_features=2, **kw)
    opt.run_optimizer()
    return opt


def test_wall_profile_accounts_for_the_wall_time_and_restores_the_library():
    common = load_script("common")
    originals = (optimizer_module.run_search, optimizer_module.choose_per_layer,
                 objective_module.TNMSEObjective.__dict__["__call__"],
                 optimizer_module.WeightProgrammingOptimizer.__dict__["_polish"])
    with common.WallProfile("cpu") as profile:
        opt = _tiny_search()
    after = (optimizer_module.run_search, optimizer_module.choose_per_layer,
             objective_module.TNMSEObjective.__dict__["__call__"],
             optimizer_module.WeightProgrammingOptimizer.__dict__["_polish"])
    assert all(a is b for a, b in zip(originals, after))
    s = profile.summary()
    assert {"baseline", "start ranking", "search (DE)", "polish", "selection",
            "run_optimizer, rest"} <= set(s["phases"])
    assert sum(p["s"] for p in s["phases"].values()) + s["outside_phases_s"] == \
        pytest.approx(s["wall_s"])
    assert 0 < s["evaluation_s"] <= s["wall_s"]
    assert all(0 <= p["evaluation_s"] <= p["s"] + 1e-9 for p in s["phases"].values())
    # The search's candidates pass through the objective (the standard starts' ranking too).
    assert s["candidates_through_objective"] >= opt.result.nfev
    assert s["phases"]["search (DE)"]["calls"] == 1
    assert "| **all** |" in common.profile_table(s)


def test_wall_profile_refuses_a_name_the_library_lacks_and_patches_nothing():
    common = load_script("common")

    class Stale(common.WallProfile):
        PHASES = (("search (DE)", "gpuwpo.search.optimizer", "run_search"),
                  ("gone", "gpuwpo.search.optimizer", "no_such_function"))

    original = optimizer_module.run_search
    with pytest.raises(AttributeError, match="no_such_function"):
        with Stale():
            pass
    assert optimizer_module.run_search is original
