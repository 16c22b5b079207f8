"""Tests of bench/models.py (networks trained in-process) and a smoke run of bench/accuracy.py.

The MLP trains in 1-2 s, the CNN in 3-5 s and the LSTM in 5-10 s on one thread, so the fast
tests use the MLP, the registry and untrained networks; everything that trains the CNN or the
LSTM is marked slow. Each model is trained once per module (fixtures). No timing is asserted.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests._bench import BENCH, load_script, script_help


@pytest.fixture(scope="module")
def models():
    return load_script("models")


@pytest.fixture(scope="module")
def mlp(models):
    return models.digits_mlp(seed=0)


@pytest.fixture(scope="module")
def cnn(models):
    return models.digits_cnn(seed=0)


@pytest.fixture(scope="module")
def lstm(models):
    return models.digits_lstm(seed=0)


#: The LSTM's programmed matrices and their shapes, in the module's order (2 layers, 8 units per
#: direction: gates x hidden = 32 rows; the second layer reads both directions, 16 inputs).
LSTM_LAYERS = {
    "rnn.weight_ih_l0": (32, 8), "rnn.weight_hh_l0": (32, 8),
    "rnn.weight_ih_l0_reverse": (32, 8), "rnn.weight_hh_l0_reverse": (32, 8),
    "rnn.weight_ih_l1": (32, 16), "rnn.weight_hh_l1": (32, 8),
    "rnn.weight_ih_l1_reverse": (32, 16), "rnn.weight_hh_l1_reverse": (32, 8),
    "fc.weight": (10, 16),
}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def _trains_again_the_same(trained, again) -> None:
    """Training with the same seed gives the same weights and the same accuracy."""
    assert _same_weights(trained.model, again.model)
    assert trained.accuracy() == again.accuracy()


def _mean_year_accuracy(trained, noise, repeats: int = 10) -> float:
    """Mean test accuracy after a year under DualPair f=[1, 1], programmings seeded 0..repeats-1."""
    import gpuwpo

    base = gpuwpo.DualPairConductanceConverter([1, 1], 0.0, 25.0)
    return sum(trained.accuracy(gpuwpo.program_model(trained.model, base, noise, 31536000.0,
                                                     generator=k))
               for k in range(repeats)) / repeats


def test_registry_and_unknown_names(models):
    assert set(models.MODELS) == {"digits_mlp", "digits_cnn", "digits_lstm"}
    with pytest.raises(ValueError, match="unknown model.*digits_cnn"):
        models.trained_models(["nope"])


def test_digits_mlp_is_the_example_network_and_deterministic(models, mlp):
    from gpuwpo import example

    assert mlp.name == "digits_mlp"
    assert mlp.x_test.shape == (450, 64) and mlp.y_test.shape == (450,)
    assert mlp.y_test.dtype == torch.int64 and set(mlp.y_test.tolist()) == set(range(10))
    assert mlp.num_weights == 64 * 64 + 32 * 64 + 10 * 32
    # Digital accuracy in percent; the example reports 97.56 % for seed 0.
    assert 95.0 < mlp.accuracy() <= 100.0
    assert mlp.accuracy() == pytest.approx(100 * example.accuracy(mlp.model, mlp.x_test,
                                                                  mlp.y_test))
    global_state = torch.random.get_rng_state()
    again = models.trained_models("digits_mlp")["digits_mlp"]
    assert torch.equal(torch.random.get_rng_state(), global_state), "global RNG touched"
    assert _same_weights(mlp.model, again.model)
    assert torch.equal(mlp.x_test, again.x_test) and torch.equal(mlp.y_test, again.y_test)


def test_accuracy_of_another_model(mlp):
    # A model that predicts class 0 for everything: the share of zeros in the test set.
    class Zero(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 10)
            out[:, 0] = 1.0
            return out

    expected = 100.0 * float((mlp.y_test == 0).float().mean())
    assert mlp.accuracy(Zero()) == pytest.approx(expected)
    assert mlp.accuracy(mlp.model) == mlp.accuracy()


def test_make_cnn_layout_and_seed(models):
    from gpuwpo import example

    assert models.make_cnn is example.make_cnn  # one builder: the example's network
    net = models.make_cnn(seed=3)
    from gpuwpo import select_weights

    shapes = {k: tuple(v.shape) for k, v in select_weights(net).items()}
    assert shapes == {"0.weight": (8, 1, 3, 3), "2.weight": (16, 8, 3, 3),
                      "5.weight": (16, 16, 3, 3), "9.weight": (10, 16)}
    assert net(torch.zeros(5, 1, 8, 8)).shape == (5, 10)
    assert _same_weights(net, models.make_cnn(seed=3))
    assert not _same_weights(net, models.make_cnn(seed=4))
    with pytest.raises(ValueError, match="three positive"):
        models.make_cnn((4, 8))


@pytest.mark.slow
def test_digits_cnn_trains_deterministically(models, cnn):
    assert cnn.name == "digits_cnn"
    assert cnn.x_test.shape == (450, 1, 8, 8) and cnn.num_weights == 3688
    assert 94.0 < cnn.accuracy() <= 100.0
    _trains_again_the_same(cnn, models.digits_cnn(seed=0))


@pytest.mark.slow
def test_digits_cnn_loses_points_under_the_baseline(cnn):
    # The reason the CNN is in bench/models.py: after a year of drift under DualPair f=[1, 1]
    # it loses several points (about 6-7 at seed 0 over 20 programmings; measured in
    # docs/RESULTS.md). Asserted loosely over 10 programmings, in the device physics.
    import gpuwpo

    assert cnn.accuracy() - _mean_year_accuracy(cnn, gpuwpo.PCMLikeNoiseModel()) > 2.0


def test_make_lstm_layout_seed_and_refusals(models):
    from gpuwpo import select_weights

    net = models.make_lstm(seed=3)
    # Every LSTM matrix is a layer of its own, found by the one rule (gpuwpo.network.layers);
    # the biases stay digital.
    assert {k: tuple(v.shape) for k, v in select_weights(net).items()} == LSTM_LAYERS
    assert list(select_weights(net)) == list(LSTM_LAYERS)
    assert sum(32 * n for n in (8, 8, 8, 8, 16, 8, 16, 8)) + 160 == 2720
    assert net(torch.zeros(5, 8, 8)).shape == (5, 10)
    global_state = torch.random.get_rng_state()
    assert _same_weights(net, models.make_lstm(seed=3))
    assert torch.equal(torch.random.get_rng_state(), global_state), "global RNG touched"
    assert not _same_weights(net, models.make_lstm(seed=4))
    with pytest.raises(ValueError, match="hidden=0"):
        models.make_lstm(hidden=0)
    with pytest.raises(ValueError, match="num_layers=0"):
        models.make_lstm(num_layers=0)


def test_lstm_head_reads_both_directions_final_states(models):
    # The classifier sees the forward direction after the last row and the backward direction
    # after the first: the same as slicing the top layer's output sequence.
    net = models.make_lstm(seed=1).eval()
    x = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(0))
    out, _ = net.rnn(x)
    features = torch.cat([out[:, -1, :8], out[:, 0, 8:]], dim=-1)
    torch.testing.assert_close(net(x), net.fc(features))


def test_program_model_programs_every_lstm_matrix_and_keeps_biases(models):
    import gpuwpo

    net = models.make_lstm(seed=0)
    noisy = gpuwpo.PCMLikeNoiseModel(prog_noise_scale=3.0)
    base = gpuwpo.DualPairConductanceConverter([1, 1], 0.0, 25.0)
    programmed = gpuwpo.program_model(net, base, noisy, 3600.0, generator=1)
    before, after = net.state_dict(), programmed.state_dict()
    for name, value in before.items():
        if name in LSTM_LAYERS:
            assert not torch.equal(after[name], value), f"{name} was not programmed"
            # Programmed, not replaced: the hardware's weights track the ideal ones.
            assert torch.corrcoef(torch.stack([after[name].flatten(),
                                               value.flatten()]))[0, 1] > 0.9
        else:
            assert torch.equal(after[name], value), f"{name} should stay digital"
    assert any("bias" in name for name in before)  # the negative half above was not empty


@pytest.mark.slow
def test_digits_lstm_trains_deterministically(models, lstm):
    assert lstm.name == "digits_lstm"
    assert lstm.x_test.shape == (450, 8, 8) and lstm.y_test.shape == (450,)
    assert lstm.num_weights == 2720
    # The same standardised pixels as the MLP's, read as 8 rows of 8.
    _, _, x_te, y_te = models.example.load_digits_data(0)
    assert torch.equal(lstm.x_test, x_te.reshape(-1, 8, 8)) and torch.equal(lstm.y_test, y_te)
    assert 93.0 < lstm.accuracy() <= 100.0
    _trains_again_the_same(lstm, models.digits_lstm(seed=0))


@pytest.mark.slow
def test_digits_lstm_loses_points_under_the_baseline(lstm):
    # The reason the LSTM is in bench/models.py: its accuracy depends on the analogue noise.
    # After a year under DualPair f=[1, 1] it has lost about 3 points (seed 0, 10 programmings:
    # 3.4); asserted loosely. Negative control: without programming noise, drift or read noise
    # the same programming keeps the digital accuracy, so the loss is the noise's.
    import gpuwpo

    assert lstm.accuracy() - _mean_year_accuracy(lstm, gpuwpo.PCMLikeNoiseModel()) > 1.5
    silent = gpuwpo.PCMLikeNoiseModel(prog_noise_scale=0.0, read_noise_scale=0.0,
                                      drift_scale=0.0)
    assert abs(lstm.accuracy() - _mean_year_accuracy(lstm, silent)) <= 100 / 450  # one image


def _check_record(written: dict, model_names: list[str], physics: list[str]) -> None:
    assert written["quick"] is True and "REDUCED" in written["budget_note"]
    config = written["config"]
    assert config["times"] == {"1 s": 1.0, "1 h": 3600.0, "1 day": 86400.0,
                               "1 month": 2592000.0, "1 year": 31536000.0}
    assert config["repeats"] == 2 and config["popsize"] == 2 and config["maxiter"] == 2
    assert [m["name"] for m in written["models"]] == model_names
    for m in written["models"]:
        assert 90.0 < m["digital_accuracy"] <= 100.0 and m["test_size"] == 450
        assert [r["physics"] for r in m["runs"]] == physics
        for run in m["runs"]:
            assert run["settings"]["physics"] == run["physics"]
            for key in ("baseline", "optimised"):
                acc = torch.tensor(run[key]["accuracies"], dtype=torch.float64)
                assert acc.shape == (2, 5) and ((acc >= 0) & (acc <= 100)).all()
                assert run[key]["mean"] == pytest.approx(acc.mean(0).tolist(), abs=1e-9)
                assert run[key]["std"] == pytest.approx(acc.std(0).tolist(), abs=1e-9)
                assert run[key]["sem"] == pytest.approx((acc.std(0) / 2 ** 0.5).tolist(),
                                                        abs=1e-9)
            diff = (torch.tensor(run["optimised"]["accuracies"], dtype=torch.float64)
                    - torch.tensor(run["baseline"]["accuracies"], dtype=torch.float64))
            assert run["difference"]["mean"] == pytest.approx(diff.mean(0).tolist(), abs=1e-9)
            assert run["difference"]["sem"] == pytest.approx((diff.std(0) / 2 ** 0.5).tolist(),
                                                             abs=1e-9)
            # The layer-wise baseline on the same noise: the optimised programmings are the
            # same, its difference paired with them.
            lw = torch.tensor(run["layerwise_baseline"]["accuracies"], dtype=torch.float64)
            assert run["layerwise_difference"]["mean"] == pytest.approx(
                (torch.tensor(run["optimised"]["accuracies"], dtype=torch.float64) - lw)
                .mean(0).tolist(), abs=1e-9)
            assert run["baseline_recipe"] == "DualPair f=[1, 1], per-column mapping"
            lost = m["digital_accuracy"] - torch.tensor(run["baseline"]["mean"],
                                                        dtype=torch.float64)
            for share, gain, loss in zip(run["recovered"]["mean"], run["difference"]["mean"],
                                         lost.tolist()):
                # Defined where the baseline loses something, NaN elsewhere.
                assert share == pytest.approx(gain / loss) if loss > 1e-9 else math.isnan(share)
            if m["name"] == "digits_lstm":  # every LSTM matrix is a layer of the result
                assert {layer["name"]: tuple(layer["shape"]) for layer in run["layers"]} == \
                    LSTM_LAYERS
            assert len(run["layers"]) >= 1
            for layer in run["layers"]:
                lo, hi = layer["tnmse_ci95"]
                assert lo <= layer["tnmse"] <= hi and layer["baseline_tnmse"] > 0
                assert isinstance(layer["converter"], str)
                assert layer["mapping"] in ("columnwise", "layer")
                assert layer["layerwise_improvement"] == pytest.approx(
                    1 - layer["tnmse"] / layer["layerwise_baseline_tnmse"])


def test_recovered_share_and_its_standard_error():
    # Many synthetic evaluations side by side (the time axis as trials): the delta-method
    # standard error matches the spread of the share over trials, and only with the covariance
    # of the gain and the baseline (they come from the same programmings); leaving it out is
    # the negative control.
    import gpuwpo

    accuracy = load_script("accuracy")
    gen = torch.Generator().manual_seed(0)
    repeats, trials = 50, 4000
    z1 = torch.randn(repeats, trials, generator=gen, dtype=torch.float64)
    z2 = torch.randn(repeats, trials, generator=gen, dtype=torch.float64)
    base = 90.0 + 3.0 * z1
    optimised = 91.0 + 2.0 * z1 + 0.5 * z2  # d = 1 - z1 + 0.5 z2: cov(d, b) = -3
    ev = gpuwpo.ModelEvaluation(times=[float(t) for t in range(trials)],
                                values={"baseline": base, "optimised": optimised}, digital=96.0)
    share = accuracy.recovered(ev, 96.0)
    mean = torch.tensor(share["mean"])
    sem = torch.tensor(share["sem"])
    assert float(mean.mean()) == pytest.approx(1 / 6, rel=0.02)
    # The SE of a standard deviation over 4000 trials is about 1.1 %.
    assert float(mean.std()) == pytest.approx(float(sem.mean()), rel=0.06)
    without_cov = ((1.25 / 36 + 9 / 1296) / repeats) ** 0.5  # about 0.029 against 0.017
    assert abs(float(mean.std()) - without_cov) > 0.3 * without_cov
    # A baseline that loses nothing has no share.
    flat = gpuwpo.ModelEvaluation(times=[1.0], values={"baseline": torch.full((3, 1), 96.0),
                                                       "optimised": torch.full((3, 1), 96.0)},
                                  digital=96.0)
    assert math.isnan(accuracy.recovered(flat, 96.0)["mean"][0])


@pytest.mark.slow
def test_accuracy_benchmark_quick(tmp_path, capsys, keep_threads):
    accuracy = load_script("accuracy")
    record = accuracy.main(["--quick", "--models", "digits_mlp", "--physics", "device",
                            "--out-dir", str(tmp_path)])
    files = sorted(tmp_path.glob("accuracy-*.json"))
    assert len(files) == 1 and not list(tmp_path.glob(".*.tmp"))
    written = json.loads(files[0].read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps({"benchmark": "accuracy", **record}))
    _check_record(written, ["digits_mlp"], ["device"])
    out = capsys.readouterr().out
    assert "### digits_mlp, physics=device" in out and "optimised - baseline" in out


@pytest.mark.slow
def test_accuracy_benchmark_quick_defaults(tmp_path, keep_threads):
    # The three networks, both physics: what `python bench/accuracy.py --quick` runs.
    record = load_script("accuracy").main(["--quick", "--out-dir", str(tmp_path)])
    written = json.loads(json.dumps({"benchmark": "accuracy", **record}))
    _check_record(written, ["digits_cnn", "digits_lstm", "digits_mlp"], ["device", "aihwkit"])


@pytest.mark.slow
@pytest.mark.parametrize("args", [("-m", "bench.accuracy"), (str(BENCH / "accuracy.py"),)])
def test_accuracy_script_runs_as_module_and_as_file_help(args):
    text = script_help(*args)
    assert "--repeats" in text and "--out-dir" in text
