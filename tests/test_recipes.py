"""A layer's recipe (its converter under a mapping) through results, files, settings,
program_model, evaluate_model and the command line.

What the tests guard: a result records each layer's mapping and the layer-wise baseline's
figures, and its summary says what the baseline is and the gain against both; results files of
version 4 round-trip them exactly, older versions load as layer-wise, and a damaged field is
named; a record written before the mapping existed repeats layer-wise whatever the defaults;
program_model programs a columnwise layer exactly as the converter path does (and not as the
layer-wise one: the negative control); evaluate_model and ``gpuwpo evaluate`` compare with the
baseline under the recorded baseline mapping; the command line's flags are recorded, repeated
and refused in one line.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import gpuwpo
from gpuwpo import (
    GlobalDriftCompensation,
    LayerResult,
    NetworkResult,
)
from gpuwpo.device.mapping import Recipe, describe_recipe
from gpuwpo.io import load_result, save_result
from gpuwpo.network.layers import as_matrix
from gpuwpo.network.program import layer_key
from gpuwpo.network.result import single_program
from gpuwpo.registry import to_dict
from gpuwpo.rng import draw_seed, keyed_generator, make_generator
from gpuwpo.search.options import SearchOptions
from gpuwpo.search.strategy import StrategySpace
from tests._physics import DUAL, NOISE, TIMES


def _program(seed: int = 0, clip: float = 1.0):
    """A valid single two-pair program (NPair f=[1, 3] with k_w 0.9), clipping at ``clip``."""
    space = StrategySpace(f_lst=[None, None], g_min=0.0, g_max=25.0)
    conv = single_program(space.to_converter(space.encode_npair([1.0, 3.0 + seed], 0.9), 1.0))
    return gpuwpo.CustomPairConductanceConverter(conv.f_lst, conv.g_lst, 0.0, 25.0, clip=clip)


def _settings(baseline_mapping: str | None = "columnwise", mapping: str = "columnwise") -> dict:
    """A run's record with the DualPair baseline and, unless None, the mappings as options."""
    settings = {"t_steps": TIMES, "physics": "device", "noise_model": to_dict(NOISE),
                "baseline": to_dict(DUAL), "compensation": to_dict(GlobalDriftCompensation()),
                "per_layer": True}
    if baseline_mapping is not None:
        settings["options"] = {"mapping": mapping, "baseline_mapping": baseline_mapping}
        settings["explicit"] = ["baseline_mapping", "mapping"]
    return settings


def _result(baseline_mapping: str | None = "columnwise") -> NetworkResult:
    """Two layers: a clipping program under the columnwise mapping (with the layer-wise
    baseline's figures) and a kept baseline under the baseline's mapping."""
    third = 1.0 / 3.0
    layers = [
        LayerResult("conv.weight", (6, 2, 3, 3), _program(0, clip=0.6), 0.1 * third,
                    (0.09 * third, 0.11 * third), 0.2, (0.19, 0.21), [0.3, 0.2], "search", True,
                    mapping="columnwise", layerwise_baseline_tnmse=0.5 + third,
                    layerwise_baseline_ci95=(0.5, 0.5 + 2 * third)),
        LayerResult("fc.weight", (4, 18), DUAL, 0.3, (0.29, 0.31), 0.3, (0.29, 0.31),
                    [0.4, 0.35], "baseline", False, mapping=baseline_mapping or "layer",
                    layerwise_baseline_tnmse=0.6, layerwise_baseline_ci95=(0.55, 0.65)),
    ]
    return NetworkResult.from_layers(layers, settings=_settings(baseline_mapping), nit=2,
                                     nfev=40, wall_time=1.0, stop_reason="maxiter")


# -- results ----------------------------------------------------------------------------------


def test_a_layer_result_holds_its_recipe_and_checks_its_mapping():
    layer = _result().layers[0]
    assert isinstance(layer.recipe, Recipe)
    assert (layer.recipe.converter, layer.recipe.mapping) == (layer.converter, "columnwise")
    assert layer.layerwise_improvement == pytest.approx(1 - layer.tnmse / (0.5 + 1 / 3))
    with pytest.raises(ValueError, match="'per-row'"):
        LayerResult("x", (2, 2), DUAL, 0.1, (0.1, 0.1), 0.1, (0.1, 0.1), mapping="per-row")
    with pytest.raises(ValueError, match="together"):
        LayerResult("x", (2, 2), DUAL, 0.1, (0.1, 0.1), 0.1, (0.1, 0.1),
                    layerwise_baseline_tnmse=0.2)
    # Equality sees the mapping and the layer-wise figures (a negative control each).
    other = _result()
    assert other.layers[0] == _result().layers[0]
    other.layers[0].mapping = "layer"
    assert other.layers[0] != _result().layers[0]
    other = _result()
    other.layers[0].layerwise_baseline_tnmse = 0.5
    assert other.layers[0] != _result().layers[0]


def test_network_result_recipes_and_the_summary_say_what_the_baseline_is():
    result = _result()
    recipes = result.recipes()
    assert list(recipes) == ["conv.weight", "fc.weight"]
    assert recipes["conv.weight"].mapping == "columnwise"
    assert recipes["fc.weight"].converter is DUAL and recipes["fc.weight"].mapping == "columnwise"
    assert result.baseline.mapping == "columnwise"
    assert describe_recipe(result.baseline) == "DualPair f=[1, 1], per-column mapping"
    summary = result.summary()
    assert "gain against DualPair f=[1, 1], per-column mapping" in summary
    assert "vs layer-wise: against DualPair f=[1, 1], layer-wise mapping" in summary
    # The total against the layer-wise baseline is the size-weighted one.
    sizes = [layer.numel for layer in result.layers]
    total = sum(n * layer.layerwise_baseline_tnmse for n, layer in zip(sizes, result.layers))
    assert result.total_layerwise_baseline_tnmse == pytest.approx(total / sum(sizes))
    gain = 1 - result.total_tnmse / result.total_layerwise_baseline_tnmse
    total_line = next(line for line in summary.splitlines() if line.startswith("total"))
    assert f"{100 * gain:.1f}%" in total_line
    conv_line = next(line for line in summary.splitlines() if line.startswith("conv.weight"))
    assert f"{100 * result.layers[0].layerwise_improvement:.1f}%" in conv_line
    assert "columnwise" in conv_line
    # A result without the layer-wise figures (an earlier version's) has no such column.
    for layer in result.layers:
        layer.layerwise_baseline_tnmse = layer.layerwise_baseline_ci95 = None
    assert result.total_layerwise_baseline_tnmse is None
    assert "vs layer-wise" not in result.summary()


def test_a_record_without_mappings_means_the_layer_wise_baseline():
    result = _result(baseline_mapping=None)
    assert result.baseline.mapping == "layer"
    assert "gain against DualPair f=[1, 1], layer-wise mapping" in result.summary()


# -- results files ----------------------------------------------------------------------------


def test_version_4_files_round_trip_the_recipes_exactly(tmp_path):
    result = _result()
    path = tmp_path / "r.json"
    save_result(result, path)
    data = json.loads(path.read_text())
    assert data["version"] == 4
    first, second = data["layers"]
    assert (first["mapping"], first["clip"]) == ("columnwise", 0.6)
    assert first["layerwise_baseline_tnmse"] == 0.5 + 1 / 3
    assert second["mapping"] == "columnwise" and "converter" in second
    loaded = load_result(path)
    assert loaded == result
    assert loaded.layers[0].recipe.converter.clip == 0.6
    assert loaded.layers[0].layerwise_baseline_ci95 == (0.5, 0.5 + 2 / 3)
    assert loaded.recipes()["fc.weight"].mapping == "columnwise"
    # A layer without the layer-wise figures writes none, and reads back without them.
    result.layers[1].layerwise_baseline_tnmse = result.layers[1].layerwise_baseline_ci95 = None
    save_result(result, path)
    assert "layerwise_baseline_tnmse" not in json.loads(path.read_text())["layers"][1]
    assert load_result(path) == result


@pytest.mark.parametrize("change, field", [
    (lambda layer: layer.pop("mapping"), r"layers\[0\] has no 'mapping'"),
    (lambda layer: layer.update(mapping="per-row"), r"layers\[0\]\.mapping must be one of"),
    (lambda layer: layer.update(mapping=None), r"layers\[0\]\.mapping must be one of"),
    (lambda layer: layer.pop("layerwise_baseline_ci95"),
     r"layers\[0\] has 'layerwise_baseline_tnmse' without 'layerwise_baseline_ci95'"),
    (lambda layer: layer.update(layerwise_baseline_tnmse=-1.0),
     r"layers\[0\]\.layerwise_baseline_tnmse must be a finite number > 0"),
    (lambda layer: layer.update(layerwise_baseline_ci95=[1.0]),
     r"layers\[0\]\.layerwise_baseline_ci95 must be a list of two numbers"),
    (lambda layer: layer.update(layerwise_baseline_ci95=[2.0, 1.0]),
     r"layers\[0\]\.layerwise_baseline_ci95 must be an interval"),
])
def test_a_damaged_recipe_field_is_named_in_one_line(tmp_path, change, field):
    path = tmp_path / "r.json"
    save_result(_result(), path)
    data = json.loads(path.read_text())
    change(data["layers"][0])
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=field) as err:
        load_result(path)
    assert "\n" not in str(err.value) and "r.json" in str(err.value)


def test_earlier_versions_load_layer_wise_and_refuse_fields_they_never_wrote(tmp_path):
    path = tmp_path / "r.json"
    save_result(_result(baseline_mapping=None), path)
    data = json.loads(path.read_text())
    for layer in data["layers"]:
        for key in ("mapping", "layerwise_baseline_tnmse", "layerwise_baseline_ci95"):
            layer.pop(key)
    data["version"] = 3
    path.write_text(json.dumps(data))
    loaded = load_result(path)
    assert [layer.mapping for layer in loaded.layers] == ["layer", "layer"]
    assert all(layer.layerwise_baseline_tnmse is None for layer in loaded.layers)
    data["layers"][0]["mapping"] = "columnwise"  # not a field of version 3: refused, named
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"layers\[0\]\.mapping is a field of version 4"):
        load_result(path)


def test_settings_record_mappings_and_a_record_without_them_repeats_layer_wise():
    from gpuwpo.network.settings import (
        RECORDLESS_OPTIONS,
        mappings_from_settings,
        options_from_settings,
    )

    assert mappings_from_settings({}) == {"mapping": "layer", "baseline_mapping": "layer"}
    assert mappings_from_settings(_settings("layer", "columnwise")) == {
        "mapping": "columnwise", "baseline_mapping": "layer"}
    with pytest.raises(ValueError, match=r"f\.json: settings\.options\.baseline_mapping is "
                                         r"'rows'"):
        mappings_from_settings({"options": {"baseline_mapping": "rows"}}, path="f.json")
    old = options_from_settings({"options": {"popsize": 3}, "explicit": ["popsize"]}, "")
    assert (old.mapping, old.baseline_mapping, old.clip_range) == ("layer", "layer", None)
    assert old.explicit == {"popsize"}
    assert set(RECORDLESS_OPTIONS) <= set(SearchOptions.names())
    # JSON gives the clip range back as a list: read as the pair it was.
    new = options_from_settings({"options": {"clip_range": [0.5, 0.9]}}, "")
    assert new.clip_range == (0.5, 0.9)


# -- program_model and evaluate_model ----------------------------------------------------------


def _model() -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 6, 3), nn.Flatten(), nn.Linear(6 * 2 * 4, 4))
    with torch.no_grad():
        for p in model.parameters():
            # Rows of very different scales: what the per-column mapping is for.
            scale = torch.logspace(-2, 0, p.shape[0]).reshape(-1, *([1] * (p.dim() - 1)))
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model


def test_program_model_programs_a_columnwise_layer_as_the_converter_path_does():
    model = _model()
    recipe = Recipe(DUAL, "columnwise")
    programmed = gpuwpo.program_model(model, {"0.weight": recipe}, NOISE, 86400.0, generator=5)
    w = model[0].weight.detach()
    # The same keyed stream program_model draws from (the layer's name).
    base_seed = draw_seed(make_generator(5, w.device))
    expected = gpuwpo.simulate_weights(
        as_matrix(w), recipe, NOISE, 86400.0, repeats=1,
        generator=keyed_generator(base_seed, layer_key("0.weight")))[0, 0]
    assert torch.equal(programmed[0].weight, expected.reshape(w.shape))
    assert torch.equal(programmed[2].weight, model[2].weight)  # not named: untouched
    # Negative control: the same converter layer-wise programs other weights.
    flat = gpuwpo.program_model(model, {"0.weight": DUAL}, NOISE, 86400.0, generator=5)
    assert not torch.equal(flat[0].weight, programmed[0].weight)
    # The per-column mapping keeps small rows far closer (relative to their own scale).
    small = slice(0, 2)
    err_col = (programmed[0].weight[small] - w[small]).norm()
    err_flat = (flat[0].weight[small] - w[small]).norm()
    assert err_col < 0.5 * err_flat
    # One recipe for every layer, and a result's recipes.
    both = gpuwpo.program_model(model, recipe, NOISE, 86400.0, generator=5)
    assert torch.equal(both[0].weight, programmed[0].weight)
    with pytest.raises(TypeError, match="'0.weight'"):
        gpuwpo.program_model(model, {"0.weight": "dualpair"}, NOISE, 86400.0, generator=5)


def _result_for(model: nn.Module, recipe: Recipe, baseline_mapping: str | None) -> NetworkResult:
    layers = [LayerResult(name, tuple(p.shape), recipe.converter, 0.01, (0.009, 0.011), 0.012,
                          (0.011, 0.013), [], "baseline", False, mapping=recipe.mapping)
              for name, p in model.named_parameters() if name.endswith("weight")]
    return NetworkResult.from_layers(layers, settings=_settings(baseline_mapping), nit=0,
                                     nfev=0, wall_time=0.0, stop_reason="test")


def _metric(model: nn.Module) -> float:
    x = torch.randn(8, 2, 4, 6, generator=torch.Generator().manual_seed(3))
    return float(model(x).square().mean())


def test_evaluate_model_compares_with_the_baseline_under_the_recorded_mapping():
    model = _model()
    # Every layer keeps the baseline under the per-column mapping the run compared with: the
    # difference is exactly 0, repeat by repeat.
    result = _result_for(model, Recipe(DUAL, "columnwise"), "columnwise")
    same = gpuwpo.evaluate_model(model, result, _metric, TIMES, repeats=2, generator=1)
    assert torch.equal(same.difference, torch.zeros_like(same.difference))
    assert same.settings["baseline_mapping"] == "columnwise"
    # Negative controls: the layer-wise baseline (given, or recorded by an older file) is
    # another programming.
    for other in (gpuwpo.evaluate_model(model, result, _metric, TIMES, repeats=2, generator=1,
                                        baseline_mapping="layer"),
                  gpuwpo.evaluate_model(model, _result_for(model, Recipe(DUAL, "columnwise"),
                                                           None), _metric, TIMES, repeats=2,
                                        generator=1)):
        assert other.settings["baseline_mapping"] == "layer"
        assert not torch.equal(other.difference, torch.zeros_like(other.difference))
    # A given Recipe keeps its own mapping; one given with another mapping is refused.
    given = gpuwpo.evaluate_model(model, result, _metric, TIMES, repeats=2, generator=1,
                                  baseline=Recipe(DUAL, "columnwise"))
    assert torch.equal(given.values["baseline"], same.values["baseline"])
    with pytest.raises(ValueError, match="mapping"):
        gpuwpo.evaluate_model(model, result, _metric, TIMES, repeats=2, generator=1,
                              baseline=Recipe(DUAL, "columnwise"), baseline_mapping="layer")
    with pytest.raises(ValueError, match="'rows'"):
        gpuwpo.evaluate_model(model, result, _metric, TIMES, repeats=2, generator=1,
                              baseline_mapping="rows")


# -- the command line ---------------------------------------------------------------------------


def _tnmse_row(text: str, title: str) -> list[str]:
    """The cells of the TNMSE row of the table titled ``title``."""
    block = text.split(title, 1)[1]
    row = next(line for line in block.splitlines() if line.strip().startswith("TNMSE"))
    return row.split()


def test_gpuwpo_evaluate_compares_with_the_recorded_mapping_and_the_layer_wise_baseline(
        tmp_path, capsys):
    from gpuwpo.cli import main

    model = _model()
    weights = tmp_path / "w.pt"
    torch.save({name: p.detach() for name, p in model.named_parameters()}, weights)
    results = tmp_path / "r.json"
    # Every layer keeps the per-column baseline, the run's: optimised == baseline, draw by draw.
    save_result(_result_for(model, Recipe(DUAL, "columnwise"), "columnwise"), results)
    args = ["evaluate", str(results), str(weights), "--repeats", "3", "--times", "1,1d",
            "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert ("baseline: DualPair f=[1, 1], per-column mapping; the layer-wise baseline "
            "(DualPair f=[1, 1], layer-wise mapping) on the same noise") in out
    assert "layer-wise baseline" in out.split("overall", 1)[1] and "vs layer-wise" in out
    # cells: TNMSE, baseline, +-, se, optimised, +-, se, gain, layer-wise, +-, se, gain
    cells = _tnmse_row(out, "overall")
    assert cells[1] == cells[4] and cells[7] == "0.0%"
    assert float(cells[8]) > float(cells[1])  # this model's rows differ in scale
    assert float(cells[11].rstrip("%")) > 0
    # --baseline-mapping layer: the layer-wise baseline is the baseline; no extra column.
    assert main([*args, "--baseline-mapping", "layer"]) == 0
    out = capsys.readouterr().out
    assert "baseline: DualPair f=[1, 1], layer-wise mapping" in out
    assert "vs layer-wise" not in out
    layer_cells = _tnmse_row(out, "overall")
    assert layer_cells[1] == cells[8] and float(layer_cells[7].rstrip("%")) > 0
    with pytest.raises(SystemExit) as exc:
        main([*args, "--baseline-mapping", "rows"])
    assert exc.value.code == 2


def test_gpuwpo_plot_draws_each_recipe_and_the_baseline_under_its_mapping(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from gpuwpo import plots
    from gpuwpo.cli import main

    result = _result()
    fig = plots.programming_curves(result)
    titles = [ax.get_title() for ax in fig.get_axes()]
    assert "per-column mapping, clip 0.6" in titles[1]  # the clipping columnwise program
    assert titles[0].endswith("per-column mapping")  # the recorded baseline's
    assert fig.get_axes()[1].get_xlabel() == "normalised weight w / row max|w|"
    # The clipping program is flat beyond its clip (on the row's normalised axis).
    x, y = fig.get_axes()[1].get_lines()[0].get_data()
    beyond = torch.as_tensor(x) > 0.6
    assert torch.as_tensor(y)[beyond].unique().numel() == 1
    fig = plots.programming_curves(result, Recipe(DUAL, "layer"))
    assert fig.get_axes()[0].get_title().endswith("layer-wise mapping")
    results = tmp_path / "r.json"
    save_result(result, results)
    assert main(["plot", str(results), "--out", str(tmp_path / "figs"),
                 "--baseline-mapping", "layer"]) == 0
    assert (tmp_path / "figs" / "programming_curves.png").exists()
