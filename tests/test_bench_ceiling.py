"""bench/ceiling.py: the best split of every weight magnitude, on known cases, and a smoke run."""

from __future__ import annotations

import json

import pytest
import torch

from tests._bench import load_script

ceiling = load_script("ceiling")
G_MAX = ceiling.G_MAX


def _moments(var_of_g, *, points: int = 501, times: int = 2):
    """Exact moments of a device whose read conductance has mean g (no drift bias) and the given
    variance, at every time."""
    g = torch.linspace(0.0, G_MAX, points, dtype=torch.float64)
    var = var_of_g(g)[:, None].expand(points, times).contiguous()
    return ceiling.Moments(g, g[:, None].expand(points, times).contiguous(), var, g.clone())


def _half(program):
    """The non-negative half of the program's table: [4, U] (G+_0, G-_0, G+_1, G-_1)."""
    u = (program.table.shape[-1] + 1) // 2
    return program.table[:, u - 1:].double()


@pytest.mark.parametrize("ratio", [1.0, 3.0])
def test_multiplicative_noise_is_split_into_equal_contributions(ratio):
    # Var(g) = (s g)^2: the error of d0 + F d1 = W is s^2 (d0^2 + F^2 d1^2), least at
    # d0 = F d1 = W / 2 (while d0 <= g_max); the standard split (LSB pair first) has s^2 W^2.
    s = 0.1
    moments = _moments(lambda g: (s * g) ** 2)
    u = torch.linspace(0, 1, ceiling.MAGNITUDES)  # one weight at every grid magnitude
    program = ceiling.optimal_program(moments, u, ratio, 1.0, splits=401)
    half = _half(program)
    k_w = (1 + ratio) * G_MAX
    w = torch.linspace(0, 1, half.shape[-1], dtype=torch.float64) * k_w
    net = (half[0] - half[1]) + ratio * (half[2] - half[3])
    assert torch.allclose(net, w, atol=1e-4)  # exact realisation
    assert torch.all(half[1] == 0) and torch.all(half[3] == 0)  # offsets only add variance
    equal = w <= 2 * G_MAX
    # the split grid's resolution: (hi - lo) / (splits - 1) of the MSB range, times F
    step = ratio * G_MAX / 400
    assert torch.allclose(half[0][equal], (w / 2)[equal], atol=step)
    # Beyond 2 g_max the LSB pair is full and the MSB pair takes the rest, in both splits.
    beyond = s ** 2 * (G_MAX ** 2 + (w - G_MAX) ** 2)
    best = torch.where(equal, s ** 2 * w ** 2 / 2, beyond)
    standard = torch.where(w <= G_MAX, s ** 2 * w ** 2, beyond)
    assert program.error == pytest.approx(float(best.mean()) / k_w ** 2, rel=1e-3)
    # (rel: the tables interpolate g^2 linearly)
    assert program.standard_error == pytest.approx(float(standard.mean()) / k_w ** 2, rel=1e-4)
    assert program.error < program.standard_error
    assert torch.allclose(program.alpha, torch.ones_like(program.alpha))


def test_the_standard_split_is_optimal_when_noise_does_not_depend_on_conductance():
    # Constant variance: every split costs the same, so nothing beats the standard split
    # (the negative control of the test above).
    moments = _moments(lambda g: torch.full_like(g, 0.25))
    program = ceiling.optimal_program(moments, torch.rand(500, generator=torch.Generator()
                                                          .manual_seed(0)), 2.0, 1.0)
    assert program.error == pytest.approx(program.standard_error, rel=1e-9)


def test_a_ceiling_program_converts_back_exactly():
    moments = ceiling.conductance_moments(ceiling.gpuwpo.PCMLikeNoiseModel(), (1.0, 3.15e7),
                                          points=126, samples=500, generator=0)
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    program = ceiling.optimal_program(moments, w.abs() / w.abs().amax(), 3.0, 0.8)
    conv = program.converter()  # the invertibility check passes
    g, params = conv.convert_to_conductances(w)
    assert g.min() >= 0 and g.max() <= G_MAX + 1e-4
    assert torch.allclose(conv.convert_back_to_weights(g, params), w, atol=1e-5)


@pytest.mark.slow
def test_ceiling_quick(tmp_path, keep_threads):
    out = tmp_path / "ceiling.json"
    record = ceiling.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps({"benchmark": "ceiling",
                                                                   **record}))
    (run,) = record["runs"]
    assert run["weights"] == "digits_mlp" and len(run["rows"]) == 3
    for row in run["rows"]:
        for phys in ("device", "aihwkit"):
            r = row[phys]
            assert set(r["standard"]) == set(r["ceiling"]) == {"1", "2"}
            assert r["standard"]["1"] == 0.0  # F = 1 is the baseline itself
            assert r["baseline_tnmse"] > 0 and r["gap_se"] >= 0
    assert {a["physics"] for a in run["accuracy"]} == {"device", "aihwkit"}
    assert len(run["loss_budget"]) == 2 * 5
    assert set(run["summary"]) == {"device", "aihwkit"}
