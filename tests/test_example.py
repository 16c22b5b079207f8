"""The digits example: data, training, accuracy under programming, the paired summary, and the
quick end-to-end run (the CNN)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sklearn")

from gpuwpo.device.converters import DualPairConductanceConverter  # noqa: E402
from gpuwpo.device.noise import PCMLikeNoiseModel  # noqa: E402
from gpuwpo.example import (  # noqa: E402
    OUTPUT_FILES,
    TIMES,
    accuracy,
    format_table,
    load_digits_data,
    make_mlp,
    run_example,
    train_cnn,
    train_mlp,
)
from gpuwpo.io import load_result  # noqa: E402
from gpuwpo.network.program import program_model  # noqa: E402


def accuracy_over_time(model, converter, noise_model, x, y, t_steps, *, repeats: int,
                       seed: int = 0) -> torch.Tensor:
    """Accuracy [repeats, T] of ``model`` programmed with one converter, repeat r seeded r."""
    acc = torch.empty(repeats, len(t_steps), dtype=torch.float64)
    for r in range(repeats):
        for i, t in enumerate(t_steps):
            programmed = program_model(model, converter, noise_model, t, generator=1000 * seed + r)
            acc[r, i] = accuracy(programmed, x, y)
    return acc


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


def _figures(values) -> dict:
    # One strategy's entry of the report (ModelEvaluation.to_dict's layout), from its values.
    v = torch.tensor(values, dtype=torch.float64)
    return {"mean": v.mean(0).tolist(), "sem": (v.std(0) / v.shape[0] ** 0.5).tolist(),
            "values": v.tolist()}


def test_format_table_rows_and_the_year_sentence():
    base = [[95.0, 90.0], [93.0, 92.0], [94.0, 91.0]]
    opt = [[95.0, 92.0], [93.0, 93.0], [95.0, 93.0]]
    diff = [[o - b for o, b in zip(ro, rb)] for ro, rb in zip(opt, base)]
    report = {"network": "digits CNN", "times": {"1 s": 1.0, "1 year": 31536000.0},
              "repeats": 3, "digital_accuracy": 97.0, "baseline": _figures(base),
              "optimised": _figures(opt), "difference": _figures(diff)}
    lines = format_table(report).splitlines()
    assert "digits CNN" in lines[0] and "3 programmings" in lines[0] and "97.00%" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[2:5]}
    # Percent, mean +- standard error: the CLI's test reads the means as every third token.
    assert [float(v) for v in rows["baseline"][1::3]] == pytest.approx([94.0, 91.0])
    assert [float(v) for v in rows["optimised"][1::3]] == pytest.approx([94.33, 92.67],
                                                                        abs=0.005)
    assert rows["difference"][1::3] == ["+0.33", "+1.67"]
    assert rows["baseline"][3] == "0.58"  # std 1 point over 3 programmings
    assert "lost 6.00 +- 0.58 points" in lines[5] and "win back +1.67 +- 0.33" in lines[5]


def test_one_repeat_or_no_thread_is_refused_before_any_work(monkeypatch):
    import gpuwpo.example

    monkeypatch.setattr(gpuwpo.example, "train_cnn", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError, match="repeats must be >= 2.*got 1"):
        run_example(quick=True, repeats=1, verbose=False)
    with pytest.raises(ValueError, match="threads must be at least 1.*got 0"):
        run_example(quick=True, threads=0, verbose=False)


def test_the_example_runs_on_its_threads_and_gives_the_callers_back(monkeypatch, keep_threads):
    import gpuwpo.example

    seen = []

    def stop(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise KeyboardInterrupt  # whatever ends the run, the caller's setting comes back

    monkeypatch.setattr(gpuwpo.example, "train_cnn", stop)
    torch.set_num_threads(2)
    for threads in (1, None):
        with pytest.raises(KeyboardInterrupt):
            run_example(quick=True, threads=threads, verbose=False)
        assert torch.get_num_threads() == 2
    assert seen == [1, 2]


@pytest.mark.slow
def test_the_example_cnn_is_trained_deterministically_and_feels_the_noise():
    model, x_te, y_te = train_cnn(0)
    assert x_te.shape == (450, 1, 8, 8) and y_te.shape == (450,)
    digital = accuracy(model, x_te, y_te)
    assert digital == pytest.approx(436 / 450)  # 96.89 %, as documented
    again, _, _ = train_cnn(0)
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)
    # Why the example uses it: a year of drift under the baseline costs it points (about 6;
    # the MLP loses about half a point). Loosely, over 5 programmings.
    base = DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0)
    acc = accuracy_over_time(model, base, PCMLikeNoiseModel(g_max=25.0), x_te, y_te,
                             [31536000.0], repeats=5)
    assert digital - acc.mean() > 0.02


@pytest.mark.slow
def test_quick_run_returns_paired_accuracies_for_every_time_and_strategy(tmp_path):
    report = run_example(quick=True, repeats=2, out_dir=tmp_path, verbose=False)
    assert report["times"] == TIMES and report["network"] == "digits CNN"
    assert report["digital_accuracy"] == pytest.approx(100 * 436 / 450)  # percent
    evaluation = report["evaluation"]  # gpuwpo.evaluate_model's, on the example's seed
    assert evaluation.times == list(TIMES.values()) and evaluation.repeats == 2
    for name in ("baseline", "optimised"):
        acc = torch.tensor(report[name]["values"])
        assert acc.shape == (2, len(TIMES))
        assert ((acc >= 0) & (acc <= 100)).all()
        torch.testing.assert_close(torch.tensor(report[name]["mean"]), acc.mean(0),
                                   check_dtype=False)
        torch.testing.assert_close(torch.tensor(report[name]["sem"]),
                                   acc.std(0) / 2 ** 0.5, check_dtype=False)
    diff = (torch.tensor(report["optimised"]["values"])
            - torch.tensor(report["baseline"]["values"]))
    torch.testing.assert_close(torch.tensor(report["difference"]["mean"]), diff.mean(0),
                               check_dtype=False)
    result = load_result(tmp_path / "digits_result.json")
    assert [layer.name for layer in result.layers] == ["0.weight", "2.weight", "5.weight",
                                                       "9.weight"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(OUTPUT_FILES)
    for name in OUTPUT_FILES:
        if name.endswith(".png"):
            assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    state = torch.load(tmp_path / "digits_cnn.pt", weights_only=True)
    assert [tuple(state[n].shape) for n in ("0.weight", "9.weight")] == [(8, 1, 3, 3), (10, 16)]
