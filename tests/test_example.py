"""The digits example: data, training, accuracy under programming, and the quick end-to-end run."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sklearn")

from gpuwpo.device.converters import DualPairConductanceConverter  # noqa: E402
from gpuwpo.device.noise import PCMLikeNoiseModel  # noqa: E402
from gpuwpo.example import (  # noqa: E402
    TIMES,
    accuracy,
    accuracy_over_time,
    load_digits_data,
    make_mlp,
    run_example,
    train_mlp,
)
from gpuwpo.io import load_result  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    x_tr, y_tr, x_te, y_te = load_digits_data(0)
    return train_mlp(make_mlp(seed=0), x_tr, y_tr, seed=0), x_te, y_te


def test_data_is_standardised_and_split():
    x_tr, y_tr, x_te, y_te = load_digits_data(0)
    assert x_tr.shape[1] == x_te.shape[1] == 64
    assert x_tr.shape[0] + x_te.shape[0] == 1797
    assert set(y_te.tolist()) == set(range(10))  # stratified: every class in the test set
    # Standardised with the training statistics (constant pixels stay at 0).
    assert x_tr.mean(0).abs().max() < 1e-5
    std = x_tr.std(0)
    torch.testing.assert_close(std[std > 0], torch.ones_like(std[std > 0]))


def test_training_is_deterministic_and_learns(trained):
    model, x_te, y_te = trained
    assert accuracy(model, x_te, y_te) > 0.9
    x_tr, y_tr, _, _ = load_digits_data(0)
    again = train_mlp(make_mlp(seed=0), x_tr, y_tr, seed=0)
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_noise_free_hardware_keeps_the_digital_accuracy(trained):
    # Without programming noise, drift or read noise the DualPair round trip is exact (up to
    # float rounding), so the programmed network classifies like the digital one at every time.
    model, x_te, y_te = trained
    silent = PCMLikeNoiseModel(g_max=25.0, prog_noise_scale=0.0, read_noise_scale=0.0,
                               drift_scale=0.0)
    acc = accuracy_over_time(model, DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0), silent,
                             x_te, y_te, [1.0, 3600.0], repeats=2)
    assert acc.shape == (2, 2)
    assert torch.all(acc == accuracy(model, x_te, y_te))


def test_noise_costs_accuracy_and_varies_between_repeats(trained):
    model, x_te, y_te = trained
    noisy = PCMLikeNoiseModel(g_max=25.0, prog_noise_scale=5.0, read_noise_scale=5.0)
    acc = accuracy_over_time(model, DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0), noisy,
                             x_te, y_te, [1.0], repeats=4, seed=3)
    assert acc.mean() < accuracy(model, x_te, y_te)
    assert acc.std() > 0  # each repeat is an independent programming


@pytest.mark.slow
def test_quick_run_returns_accuracies_for_every_time_and_strategy(tmp_path):
    report = run_example(quick=True, repeats=2, out_dir=tmp_path, verbose=False)
    assert report["times"] == TIMES
    assert 0.9 < report["digital_accuracy"] <= 1.0
    for name in ("baseline", "optimised"):
        acc = torch.tensor(report[name]["accuracies"])
        assert acc.shape == (2, len(TIMES))
        assert ((acc >= 0) & (acc <= 1)).all()
        torch.testing.assert_close(torch.tensor(report[name]["mean"]), acc.mean(0),
                                   check_dtype=False)
        assert len(report[name]["std"]) == len(TIMES)
    result = load_result(tmp_path / "digits_result.json")
    assert [layer.name for layer in result.layers] == ["0.weight", "2.weight", "4.weight"]
    for name in ("accuracy_over_time", "programming_curves", "convergence", "weight_errors"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
