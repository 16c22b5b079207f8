"""The network driver: layer selection, one batched search for all layers, program_model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import gpuwpo
from gpuwpo.network import (
    LayerResult,
    NetworkResult,
    optimize_network,
    program_model,
    select_weights,
)
from gpuwpo.search.optimizer import WeightProgrammingOptimizer

# Tiny budgets: these tests check the plumbing, not the quality of the strategies.
TINY = dict(device="cpu", popsize=2, maxiter=3, test_in_features=64, test_out_features=4,
            baseline_iterations=4, validation_repeats=4, disp=False, polish=False, seed=3)
T_STEPS = [1.0, 3600.0]
F_LST = [None, None]


def _noise() -> gpuwpo.PCMLikeNoiseModel:
    return gpuwpo.PCMLikeNoiseModel()


def _baseline() -> gpuwpo.DualPairConductanceConverter:
    return gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)  # model init only; gpuwpo itself never reads the global RNG
    return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3))


def _convnet() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5))


class _Spy:
    """Records every WeightProgrammingOptimizer built (and the layers it was given)."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.instances: list[WeightProgrammingOptimizer] = []
        self.weights: list = []
        original = WeightProgrammingOptimizer.__init__
        spy = self

        def init(opt, weights, *args, **kwargs):
            spy.instances.append(opt)
            spy.weights.append(weights)
            original(opt, weights, *args, **kwargs)

        mp.setattr(WeightProgrammingOptimizer, "__init__", init)


@pytest.fixture(scope="module")
def mlp_run():
    model = _mlp()
    with pytest.MonkeyPatch.context() as mp:
        spy = _Spy(mp)
        result = optimize_network(model, _noise(), T_STEPS, _baseline(), F_LST, **TINY)
    return model, result, spy


@pytest.fixture(scope="module")
def global_run():
    model = _mlp()
    with pytest.MonkeyPatch.context() as mp:
        spy = _Spy(mp)
        result = optimize_network(model, _noise(), T_STEPS, _baseline(), F_LST,
                                  per_layer=False, **TINY)
    return model, result, spy


# -- selecting layers ------------------------------------------------------------------------


def test_select_weights_module_takes_linear_and_conv_weights_only():
    names = list(select_weights(_convnet()))
    # BatchNorm's 1-D weight and every bias are not crossbar matrices.
    assert names == ["0.weight", "4.weight"]


def test_select_weights_mapping_and_state_dict_agree_with_module():
    model = _convnet()
    from_module = select_weights(model)
    from_state = select_weights(model.state_dict())
    assert list(from_state) == list(from_module)
    for name in from_module:
        assert torch.equal(from_state[name], from_module[name])
    plain = {"enc.weight": torch.ones(3, 2), "enc.bias": torch.ones(3), "norm.weight":
             torch.ones(3), "head.weight": torch.ones(2, 3), "scale": torch.ones(2, 2)}
    assert list(select_weights(plain)) == ["enc.weight", "head.weight"]


def test_select_weights_include_exclude_are_regex_search():
    model = _mlp()
    assert list(select_weights(model, include=r"^[02]\.")) == ["0.weight", "2.weight"]
    assert list(select_weights(model, exclude="4")) == ["0.weight", "2.weight"]
    assert list(select_weights(model, include=["0", "4"], exclude=r"^0")) == ["4.weight"]


def test_no_matching_layers_names_the_patterns():
    with pytest.raises(ValueError, match=r"no layers.*nothing_like_this"):
        select_weights(_mlp(), include="nothing_like_this")
    with pytest.raises(ValueError, match=r"exclude=\['weight'\]"):
        optimize_network(_mlp(), _noise(), T_STEPS, _baseline(), F_LST, exclude="weight", **TINY)
    with pytest.raises(ValueError, match="no layers"):
        select_weights(nn.Sequential(nn.ReLU()))


def test_nan_weights_are_refused_with_the_layer_name():
    model = _mlp()
    with torch.no_grad():
        model[2].weight[1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"'2\.weight'.*NaN"):
        optimize_network(model, _noise(), T_STEPS, _baseline(), F_LST, **TINY)


# -- per-layer strategies: one batched search ------------------------------------------------


def test_per_layer_is_one_search_with_the_layers_as_batch(mlp_run):
    model, result, spy = mlp_run
    assert len(spy.instances) == 1, "layers must be searched together, not in a Python loop"
    opt = spy.instances[0]
    assert opt.num_layers == 3
    shapes = [tuple(w.shape) for w in spy.weights[0].values()]
    assert shapes == [(8, 16), (6, 8), (3, 6)]
    assert result.nit == opt.result.nit == TINY["maxiter"]
    assert result.nfev == opt.result.nfev


def test_per_layer_results_are_the_optimizer_results_layer_by_layer(mlp_run):
    model, result, spy = mlp_run
    res = spy.instances[0].result
    assert isinstance(result, NetworkResult)
    assert [layer.name for layer in result.layers] == ["0.weight", "2.weight", "4.weight"]
    assert [layer.shape for layer in result.layers] == [(8, 16), (6, 8), (3, 6)]
    for b, layer in enumerate(result.layers):
        assert isinstance(layer, LayerResult)
        assert layer.converter.batch_shape == torch.Size([]), "one program per layer"
        assert layer.chosen == res.chosen[b]
        assert layer.success == bool(res.layer_success[b])
        if layer.kept_baseline:
            assert layer.converter is spy.instances[0].g_converter_baseline
            assert layer.tnmse == layer.baseline_tnmse and not layer.success
        else:
            assert torch.equal(layer.converter.f_lst, res.converters[b].f_lst.cpu())
            assert torch.equal(layer.converter.g_lst, res.converters[b].g_lst.cpu())
        assert layer.tnmse == pytest.approx(float(res.tnmse[b]), rel=0, abs=0)
        assert layer.tnmse_ci95 == tuple(res.tnmse_ci95[b].tolist())
        assert layer.baseline_tnmse == float(res.baseline_tnmse[b])
        assert layer.tnmse_ci95[0] < layer.tnmse < layer.tnmse_ci95[1]
        assert layer.tnmse <= layer.baseline_tnmse
        assert layer.baseline_ci95[0] < layer.baseline_tnmse < layer.baseline_ci95[1]
        assert layer.history == res.history[b].tolist()
        assert len(layer.history) == result.nit
    assert result.converters() == {layer.name: layer.converter for layer in result.layers}


def test_totals_are_weighted_by_layer_size(mlp_run):
    _, result, _ = mlp_run
    sizes = [math.prod(layer.shape) for layer in result.layers]
    expect = sum(n * layer.tnmse for n, layer in zip(sizes, result.layers)) / sum(sizes)
    expect_base = sum(n * layer.baseline_tnmse for n, layer in zip(sizes, result.layers))
    assert result.total_tnmse == pytest.approx(expect, rel=1e-12)
    assert result.total_baseline_tnmse == pytest.approx(expect_base / sum(sizes), rel=1e-12)
    # The weighting matters here: the layers' figures differ and so do their sizes.
    plain_mean = sum(layer.tnmse for layer in result.layers) / len(result.layers)
    assert result.total_tnmse != pytest.approx(plain_mean, rel=1e-9)


def test_settings_are_json_and_record_the_run(mlp_run):
    _, result, _ = mlp_run
    s = result.settings
    assert json.loads(json.dumps(s)) == s
    assert s["f_lst"] == [None, None] and s["t_steps"] == T_STEPS
    assert s["backend"] == "torch" and s["per_layer"] is True and s["device"] == "cpu"
    assert s["include"] is None and s["exclude"] is None
    assert s["options"]["popsize"] == 2 and s["options"]["seed"] == 3
    assert "popsize" in s["explicit"] and "strategy" not in s["explicit"]
    assert "callback" not in s["options"] and "disp" not in s["options"]
    assert s["noise_model"]["class"] == "PCMLikeNoiseModel"
    assert s["noise_model"]["prog_coeff"] == list(gpuwpo.PCMLikeNoiseModel().prog_coeff)
    assert s["baseline"] == {"class": "DualPairConductanceConverter", "f_lst": [1.0, 1.0],
                             "g_min": 0.0, "g_max": 25.0}
    assert (s["g_min"], s["g_max"], s["nbins"], s["symmetric"]) == (0.0, 25.0, 6, True)
    assert "layer" in result.summary() and "0.weight" in result.summary()


def test_mapping_input_with_a_conv_layer_and_include():
    model = _convnet()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.MonkeyPatch.context() as mp:
        spy = _Spy(mp)
        result = optimize_network(weights, _noise(), T_STEPS, _baseline(), [1.0, None],
                                  include=[r"^0\.", r"^4\."], **TINY)
    assert len(spy.instances) == 1 and spy.instances[0].num_layers == 2
    assert [(layer.name, layer.shape) for layer in result.layers] == [
        ("0.weight", (4, 1, 3, 3)), ("4.weight", (5, 64))]
    for layer in result.layers:
        # f_lst=[1.0, None]: the first significance factor is fixed.
        assert float(layer.converter.f_lst[0]) == 1.0
    assert result.settings["include"] == [r"^0\.", r"^4\."]


# -- hierarchical: a global strategy first, then every layer starts from it -------------------


def test_hierarchical_search_starts_every_layer_from_the_pooled_strategy():
    model = _mlp()
    tiny = {**TINY, "maxiter": 6}
    with pytest.MonkeyPatch.context() as mp:
        spy = _Spy(mp)
        result = optimize_network(model, _noise(), T_STEPS, _baseline(), F_LST,
                                  hierarchical=True, **tiny)
    # The pooled search's optimizer, then the layers' (one search of all of them).
    assert len(spy.instances) == 2
    pooled, staged = spy.instances
    assert isinstance(spy.weights[-2], torch.Tensor) and spy.weights[-2].ndim == 1
    assert pooled.options.maxiter == 6 and pooled.num_layers == 1
    # Same total candidates as a plain per-layer search: the layers give up ceil(6 / 3) = 2
    # generations for the pooled one.
    assert staged.num_layers == 3 and staged.options.maxiter == 4
    assert result.nfev == staged.result.nfev + pooled.result.nfev
    assert result.settings["hierarchical"] is True
    for choice in staged.result.choices:
        assert "global" in choice.figures  # a contender of every layer
    plain = optimize_network(model, _noise(), T_STEPS, _baseline(), F_LST, **tiny)
    assert plain.settings["hierarchical"] is False
    with pytest.raises(ValueError, match="hierarchical"):
        optimize_network(model, _noise(), T_STEPS, _baseline(), F_LST, hierarchical="yes",
                         **tiny)


# -- one global strategy (the paper's setting) ------------------------------------------------


def test_global_strategy_pools_normalised_layers_in_one_search(global_run):
    model, result, spy = global_run
    assert len(spy.instances) == 1
    pooled = spy.weights[0]
    assert isinstance(pooled, torch.Tensor) and pooled.ndim == 1
    assert pooled.numel() == sum(w.numel() for w in select_weights(model).values())
    # Each layer normalised by its own max|W|: the pooled maximum is exactly 1.
    assert float(pooled.abs().max()) == 1.0
    assert result.settings["per_layer"] is False


def test_global_strategy_applies_the_same_program_to_every_layer(global_run):
    _, result, spy = global_run
    pooled = spy.instances[0]
    program = pooled.result.converters[0]
    for layer in result.layers:
        # Each layer takes the pooled program or keeps its baseline.
        assert layer.chosen in ("global", "baseline")
        if layer.kept_baseline:
            assert layer.converter is pooled.g_converter_baseline
        else:
            assert torch.equal(layer.converter.f_lst, program.f_lst)
            assert torch.equal(layer.converter.g_lst, program.g_lst)
        assert len(layer.history) == result.nit


def test_global_strategy_is_validated_per_layer_like_the_per_layer_run(mlp_run, global_run):
    _, per_layer, _ = mlp_run
    _, glob, _ = global_run
    # Same test weights and the optimizer's baseline seed: the baselines agree layer by layer,
    # which also shows that each layer was evaluated on its own weights.
    for a, b in zip(per_layer.layers, glob.layers):
        assert b.baseline_tnmse == pytest.approx(a.baseline_tnmse, rel=1e-5)
    assert len({layer.baseline_tnmse for layer in glob.layers}) == 3
    for layer in glob.layers:
        assert layer.tnmse_ci95[0] < layer.tnmse < layer.tnmse_ci95[1]
        assert layer.tnmse <= layer.baseline_tnmse


# -- program_model ---------------------------------------------------------------------------


def test_program_model_without_noise_reproduces_the_model(mlp_run):
    model, result, _ = mlp_run
    silent = gpuwpo.PCMLikeNoiseModel(prog_noise_scale=0.0, read_noise_scale=0.0, drift_scale=0.0)
    x = torch.randn(7, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        for source in (result, result.converters(), _baseline()):
            programmed = program_model(model, source, silent, 86400.0)
            torch.testing.assert_close(programmed(x), expected, atol=1e-4, rtol=1e-4)


def test_program_model_with_noise_changes_weights_only_and_not_the_original(mlp_run):
    model, result, _ = mlp_run
    before = {k: v.clone() for k, v in model.state_dict().items()}
    programmed = program_model(model, result, _noise(), 3600.0,
                               generator=torch.Generator().manual_seed(5))
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"original {name} modified"
    after = programmed.state_dict()
    for name in before:
        if name.endswith("weight"):
            assert not torch.equal(after[name], before[name])
            # Drift-compensated hardware weights stay close to the ideal ones.
            rel = (after[name] - before[name]).norm() / before[name].norm()
            assert 0 < float(rel) < 0.5
        else:
            assert torch.equal(after[name], before[name]), f"{name} must be untouched"
    assert programmed is not model and type(programmed) is type(model)
    again = program_model(model, result, _noise(), 3600.0,
                          generator=torch.Generator().manual_seed(5))
    for name in before:
        assert torch.equal(again.state_dict()[name], after[name]), "same generator, same chip"


def test_program_model_single_converter_programs_every_linear_and_conv_weight():
    model = _convnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    programmed = program_model(model, _baseline(), _noise(), 60.0,
                               generator=torch.Generator().manual_seed(2))
    changed = {k for k, v in programmed.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"0.weight", "4.weight"}


def test_program_model_refuses_unknown_names_and_batched_converters(mlp_run):
    model, result, _ = mlp_run
    conv = result.layers[0].converter
    with pytest.raises(ValueError, match="no parameter"):
        program_model(model, {"missing.weight": conv}, _noise(), 1.0)
    batched = gpuwpo.CustomPairConductanceConverter(conv.f_lst.expand(2, -1),
                                                    conv.g_lst.expand(2, -1, -1))
    with pytest.raises(ValueError, match="batch"):
        program_model(model, {"0.weight": batched}, _noise(), 1.0)




# -- recipes: each layer's mapping, the layer-wise baseline beside the baseline --------------


def test_per_layer_results_hold_the_optimizers_recipes_and_layerwise_figures(mlp_run):
    _, result, spy = mlp_run
    opt = spy.instances[0]
    res = opt.result
    assert opt.options.baseline_mapping == result.baseline.mapping
    for b, layer in enumerate(result.layers):
        assert layer.mapping == res.mappings[b] == res.recipes[b].mapping
        assert layer.recipe.mapping == layer.mapping
        assert result.recipes()[layer.name].mapping == layer.mapping
        if layer.kept_baseline:
            assert layer.mapping == opt.options.baseline_mapping
        assert layer.layerwise_baseline_tnmse == float(res.layerwise_baseline_tnmse[b])
        assert layer.layerwise_baseline_ci95 == tuple(res.layerwise_baseline_ci95[b].tolist())
    if result.baseline.mapping != "layer":
        # Measured beside the per-column baseline on the same noise: another figure.
        assert any(layer.layerwise_baseline_tnmse != layer.baseline_tnmse
                   for layer in result.layers)
        assert "vs layer-wise" in result.summary()


@pytest.mark.parametrize("mapping, baseline_mapping", [
    ("columnwise", "columnwise"),
    pytest.param("columnwise", "layer", marks=pytest.mark.slow),
    pytest.param("layer", "layer", marks=pytest.mark.slow)])
def test_global_strategy_is_chosen_as_recipes_under_the_runs_mappings(mapping, baseline_mapping):
    from gpuwpo.device.mapping import to_tile
    from gpuwpo.search.optimizer import LAYERWISE_BASELINE

    model = _mlp()
    with pytest.MonkeyPatch.context() as mp:
        spy = _Spy(mp)
        result = optimize_network(model, _noise(), T_STEPS, _baseline(), F_LST, per_layer=False,
                                  mapping=mapping, baseline_mapping=baseline_mapping, **TINY)
    (pooled,) = spy.instances
    # The pooled distribution is the layers' tile weights: each row over its own max|w| under
    # the per-column mapping, each layer over its own max|W| under the layer-wise one; it is
    # searched as one distribution (layer-wise for both).
    weights = select_weights(model)
    tiles = [to_tile(w, "columnwise")[0] if mapping == "columnwise" else w / w.abs().max()
             for w in weights.values()]
    assert torch.equal(spy.weights[0], torch.cat([t.reshape(-1) for t in tiles]))
    assert (pooled.options.mapping, pooled.options.baseline_mapping) == ("layer", "layer")
    assert result.settings["options"]["mapping"] == mapping
    assert result.baseline.mapping == baseline_mapping
    for layer in result.layers:
        assert layer.chosen in ("global", "baseline")
        assert layer.mapping == (baseline_mapping if layer.kept_baseline else mapping)
        assert layer.layerwise_baseline_tnmse is not None
        if baseline_mapping == "layer":  # the baseline is the layer-wise baseline itself
            assert layer.layerwise_baseline_tnmse == layer.baseline_tnmse
            assert layer.layerwise_baseline_ci95 == layer.baseline_ci95
        else:
            assert layer.layerwise_baseline_tnmse != layer.baseline_tnmse
    assert ("vs layer-wise" in result.summary()) is (baseline_mapping != "layer")
    for choice in pooled.result.choices:  # the pooled search's own choice: layer-wise
        assert LAYERWISE_BASELINE not in choice.references
