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
    accuracy_over_time,
    format_table,
    load_digits_data,
    make_mlp,
    paired_summary,
    run_example,
    train_cnn,
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


def test_paired_summary_known_values_and_the_shared_noise_cancels():
    # Three programmings at two times. The optimised strategy is the baseline plus 0.01 with a
    # little jitter: the repeats vary a lot (the shared noise), their differences hardly.
    base = torch.tensor([[0.90, 0.80], [0.94, 0.70], [0.86, 0.75]], dtype=torch.float64)
    opt = base + torch.tensor([[0.010, 0.020], [0.012, 0.018], [0.008, 0.022]])
    out = paired_summary(base, opt)
    assert set(out) == {"baseline", "optimised", "difference"}
    assert out["baseline"]["mean"] == pytest.approx([0.90, 0.75])
    assert out["baseline"]["std"] == pytest.approx([0.04, 0.05])
    assert out["baseline"]["sem"] == pytest.approx([0.04 / 3 ** 0.5, 0.05 / 3 ** 0.5])
    assert out["difference"]["mean"] == pytest.approx([0.010, 0.020])
    assert out["difference"]["sem"] == pytest.approx([0.002 / 3 ** 0.5, 0.002 / 3 ** 0.5])
    # Negative control: the same differences unpaired (the optimised rows shuffled against the
    # baseline's) have a standard error as large as the repeats' spread.
    shuffled = paired_summary(base, opt[[1, 2, 0]])
    assert min(shuffled["difference"]["sem"]) > 10 * max(out["difference"]["sem"])
    assert out["optimised"]["accuracies"] == opt.tolist()
    one = paired_summary(base[:1], opt[:1])  # one repeat: no spread to report
    assert one["baseline"]["std"] == [0.0, 0.0] and one["difference"]["sem"] == [0.0, 0.0]
    with pytest.raises(ValueError, match=r"\(3, 2\) and \(2, 2\)"):
        paired_summary(base, opt[:2])


def test_format_table_rows_and_the_year_sentence():
    report = {"network": "digits CNN", "times": {"1 s": 1.0, "1 year": 31536000.0},
              "repeats": 3, "digital_accuracy": 0.97,
              **paired_summary(torch.tensor([[0.95, 0.90], [0.93, 0.92], [0.94, 0.91]]),
                               torch.tensor([[0.95, 0.92], [0.93, 0.93], [0.95, 0.93]]))}
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
    assert report["digital_accuracy"] == pytest.approx(436 / 450)
    for name in ("baseline", "optimised"):
        acc = torch.tensor(report[name]["accuracies"])
        assert acc.shape == (2, len(TIMES))
        assert ((acc >= 0) & (acc <= 1)).all()
        torch.testing.assert_close(torch.tensor(report[name]["mean"]), acc.mean(0),
                                   check_dtype=False)
        assert len(report[name]["sem"]) == len(TIMES)
    diff = (torch.tensor(report["optimised"]["accuracies"])
            - torch.tensor(report["baseline"]["accuracies"]))
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
