"""Figures of gpuwpo.plots on a tiny hand-made result: axes, lines and the data they show."""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("matplotlib")

from gpuwpo import plots  # noqa: E402
from gpuwpo.device.converters import (  # noqa: E402
    CustomPairConductanceConverter,
    DualPairConductanceConverter,
    SinglePairConductanceConverter,
)
from gpuwpo.network import LayerResult, NetworkResult  # noqa: E402
from gpuwpo.search.strategy import StrategySpace  # noqa: E402

TIMES = [1.0, 3600.0, 31536000.0]


def _result(histories=((0.3, 0.2, 0.15), (0.5, 0.4, 0.35, 0.3))) -> NetworkResult:
    """Two layers with random (valid) programs from the strategy space."""
    space = StrategySpace([None, None], 0.0, 25.0)
    gen = torch.Generator().manual_seed(0)
    layers = []
    for i, history in enumerate(histories):
        x = torch.rand(space.dim, generator=gen, dtype=torch.float64)
        f, g_lst, _ = space.decode(x, 1.0)
        conv = CustomPairConductanceConverter(f, g_lst, 0.0, 25.0)
        layers.append(LayerResult(name=f"l{i}.weight", shape=(6, 5 + i), converter=conv,
                                  tnmse=0.1 + i, tnmse_ci95=(0.05 + i, 0.15 + i),
                                  baseline_tnmse=0.4 + i, baseline_ci95=(0.35 + i, 0.45 + i),
                                  history=list(history)))
    return NetworkResult(layers=layers, settings={"per_layer": True}, total_tnmse=0.5,
                         total_baseline_tnmse=0.9, nit=3, nfev=30, wall_time=1.0,
                         stop_reason="maxiter")


def _weights() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {"l0.weight": torch.randn(6, 5, generator=gen),
            "l1.weight": torch.randn(6, 6, generator=gen)}


def test_programming_curves_show_both_programs_on_the_normalised_axis(tmp_path):
    result = _result()
    path = tmp_path / "sub" / "curves.png"
    fig = plots.programming_curves(result, SinglePairConductanceConverter(0.0, 25.0), path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = fig.get_axes()
    assert len(axes) == 2 * len(result.layers)  # baseline beside optimised, per layer
    for row, layer in enumerate(result.layers):
        base_ax, opt_ax = axes[2 * row], axes[2 * row + 1]
        assert len(base_ax.get_lines()) == 2  # SinglePair: G+ and G- of one pair
        lines = opt_ax.get_lines()
        assert len(lines) == 4  # two pairs: G+_0, G-_0, G+_1, G-_1
        # At the grid points the drawn curve is the program table itself (w/max|W| on [-1, 1]).
        g_lst = layer.converter.g_lst
        L = g_lst.shape[-1]
        for k, line in enumerate(lines):
            x, y = (torch.as_tensor(v, dtype=torch.float64) for v in line.get_data())
            on_grid = torch.isclose(x.unsqueeze(1), torch.linspace(-1, 1, L,
                                                                   dtype=torch.float64),
                                    atol=1e-9).any(1)
            assert int(on_grid.sum()) == L
            torch.testing.assert_close(y[on_grid], g_lst[k], atol=1e-9, rtol=0)
        assert "uS" in axes[2 * row].get_ylabel()


def test_programming_curves_default_baseline_is_dualpair():
    fig = plots.programming_curves(_result().converters())
    base_lines = fig.get_axes()[0].get_lines()
    assert len(base_lines) == 4
    # DualPair f=[1, 1], 0..25 uS at w = max|W|: both G+ at g_max, both G- at g_min.
    ref, _ = DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0).convert_to_conductances(
        torch.linspace(-1.0, 1.0, len(base_lines[0].get_xdata()), dtype=torch.float64))
    for k, line in enumerate(base_lines):
        torch.testing.assert_close(torch.as_tensor(line.get_ydata()), ref[k])


def test_weight_error_histograms_one_axes_per_layer_and_time(tmp_path):
    result = _result()
    fig = plots.weight_error_histograms(result, _weights(), TIMES, repeats=2,
                                        path=tmp_path / "err.png")
    axes = fig.get_axes()
    assert len(axes) == len(result.layers) * len(TIMES)
    for ax in axes:
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        # Each strategy with its mapping (bare converters: layer-wise).
        assert [lab.split(" (")[0] for lab in labels] == ["baseline, layer", "optimised, layer"]
        assert len(ax.patches) == 2  # one step histogram per strategy
    assert (tmp_path / "err.png").is_file()


def test_weight_error_histograms_need_every_layer():
    with pytest.raises(ValueError, match="l1.weight"):
        plots.weight_error_histograms(_result(), {"l0.weight": torch.ones(6, 5)}, TIMES)


def test_convergence_draws_history_and_baseline_per_layer():
    result = _result()
    fig = plots.convergence(result)
    (ax,) = fig.get_axes()
    labelled = {line.get_label(): line for line in ax.get_lines()
                if not line.get_label().startswith("_")}
    for layer in result.layers:
        history = labelled[f"{layer.name}: search best"]
        assert list(history.get_ydata()) == layer.history
        assert list(history.get_xdata()) == list(range(1, len(layer.history) + 1))
        base = next(line for label, line in labelled.items()
                    if label.startswith(f"{layer.name}: baseline"))
        assert set(base.get_ydata()) == {layer.baseline_tnmse}


def test_convergence_of_a_global_strategy_draws_the_shared_history_once():
    fig = plots.convergence(_result(histories=((0.3, 0.2), (0.3, 0.2))))
    labels = [line.get_label() for line in fig.get_axes()[0].get_lines()]
    assert sum("search best" in lab for lab in labels) == 1
    assert sum("baseline" in lab for lab in labels) == 2


def test_accuracy_over_time_mean_band_and_log_seconds(tmp_path):
    acc = {"baseline": [[0.9, 0.8, 0.7], [0.92, 0.82, 0.68]],
           "optimised": [[0.95, 0.94, 0.9], [0.93, 0.92, 0.9]]}
    fig = plots.accuracy_over_time(TIMES, acc, reference=0.97, path=tmp_path / "acc.png")
    (ax,) = fig.get_axes()
    assert ax.get_xscale() == "log"
    assert "(s" in ax.get_xlabel()
    lines = ax.get_lines()
    assert len(lines) == 3  # two strategies and the digital reference
    for line, name in zip(lines, acc):
        expected = torch.tensor(acc[name], dtype=torch.float64).mean(0) * 100
        torch.testing.assert_close(torch.as_tensor(line.get_ydata()), expected)
    assert len(ax.collections) == 2  # the +- std bands
    assert (tmp_path / "acc.png").is_file()


def test_missing_matplotlib_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ImportError, match=r"pip install gpuwpo\[plot\]"):
        plots.convergence(_result())
