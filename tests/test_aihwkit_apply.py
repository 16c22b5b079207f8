"""gpuwpo.aihwkit.apply: a result's converters on a real aihwkit model's analogue tiles.

The oracle is a direct per-tile construction: every tile's ``rpu_config.noise_model.g_converter``
set by hand to aihwkit's converter of that layer's program. ``apply`` must give the same
converter tables on every tile and, with the same torch seed (aihwkit draws its noise from
torch's global generator), the same programmed and drifted weights and outputs; a hand
construction with two layers' programs exchanged must differ (the negative control). Models
are small and built with ``TorchInferenceRPUConfig`` through ``convert_to_analog``.

Skipped without aihwkit (``pip install --no-deps aihwkit==1.1.0 requests protobuf``).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
import torch
from torch import nn

pytest.importorskip("aihwkit")

from aihwkit.inference.converter import conductance as ref_conv  # noqa: E402
from aihwkit.inference.noise.pcm import PCMLikeNoiseModel as RefPCM  # noqa: E402
from aihwkit.nn import (  # noqa: E402
    AnalogConv2dMapped,
    AnalogLinear,
    AnalogLinearMapped,
    AnalogLSTMCell,
    AnalogRNN,
)
from aihwkit.nn.conversion import convert_to_analog  # noqa: E402
from aihwkit.simulator.configs import TorchInferenceRPUConfig  # noqa: E402

import gpuwpo  # noqa: E402
from gpuwpo.aihwkit import apply  # noqa: E402
from gpuwpo.network import LayerResult, NetworkResult  # noqa: E402
from gpuwpo.registry import to_dict  # noqa: E402

YEAR = 365.25 * 86400.0
BASELINE = gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0)


@pytest.fixture(autouse=True)
def _one_thread(keep_threads):
    # aihwkit's tiles reduce tiny tensors, where OpenMP's threads cost far more than the work
    # on a busy 2-core machine (one drift of the small CNN: 0.5 s with 2 threads, 0.02 s with 1).
    torch.set_num_threads(1)


@contextmanager
def _seeded(seed: int):
    """torch's global generator (aihwkit's only source of noise) seeded, restored afterwards."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def _fill(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def _mlp() -> nn.Module:
    return _fill(nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)), 0)


def _cnn() -> nn.Module:
    return _fill(nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(),
                               nn.Linear(4 * 4 * 4, 5)), 1)


def _config(max_input_size: int = 512, mapping: str = "layer") -> TorchInferenceRPUConfig:
    cfg = TorchInferenceRPUConfig()
    cfg.mapping.max_input_size = max_input_size  # below a layer's inputs: several tiles
    if mapping == "columnwise":  # aihwkit's inference presets' deployment
        cfg.mapping.weight_scaling_omega = 1.0
        cfg.mapping.weight_scaling_columnwise = True
    return cfg


def _program(seed: int, clip: float = 1.0) -> gpuwpo.CustomPairConductanceConverter:
    space = gpuwpo.StrategySpace([None, None], 0.0, 25.0)
    x = torch.rand(space.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    f, g_lst, _ = space.decode(x, 1.0)
    return gpuwpo.CustomPairConductanceConverter(f, g_lst, 0.0, 25.0, clip=clip)


def _result(shapes: dict[str, tuple[int, ...]], baseline_layers=(), clip: float = 1.0,
            noise_model=None, mapping: str = "layer") -> NetworkResult:
    """A result for layers ``name -> shape``: a program per layer, the baseline where asked,
    every layer under ``mapping``."""
    layers = []
    for i, (name, shape) in enumerate(shapes.items()):
        kept = name in baseline_layers
        layers.append(LayerResult(name, shape, BASELINE if kept else _program(i, clip), 0.01,
                                  (0.009, 0.011), 0.02, (0.019, 0.021),
                                  chosen="baseline" if kept else "search", success=not kept,
                                  mapping=mapping))
    settings = {"noise_model": to_dict(noise_model or gpuwpo.PCMLikeNoiseModel(g_max=25.0)),
                "baseline": to_dict(BASELINE), "physics": "aihwkit"}
    return NetworkResult.from_layers(layers, settings=settings, nit=1, nfev=1, wall_time=0.0,
                                     stop_reason="maxiter")


def _result_for(model: nn.Module, **kwargs) -> NetworkResult:
    return _result({n: tuple(w.shape) for n, w in gpuwpo.select_weights(model).items()},
                   **kwargs)


def _reference(converter):
    """aihwkit's converter of a layer's program, built by hand (not through gpuwpo.aihwkit)."""
    if isinstance(converter, gpuwpo.CustomPairConductanceConverter):
        return ref_conv.CustomPairConductanceConverter(
            converter.f_lst.tolist(), converter.g_lst.tolist(), g_max=converter.g_max,
            g_min=converter.g_min, invertibility_test=False)
    return ref_conv.DualPairConductanceConverter(converter.f_lst.tolist(), converter.g_max,
                                                 converter.g_min)


def _by_hand(analog: nn.Module, converters: dict[str, object]) -> nn.Module:
    """A copy of ``analog`` with each tile's g_converter set directly (analog layer ``m`` holds
    ``m.weight``)."""
    out = copy.deepcopy(analog)
    for name, layer in out.named_analog_layers():
        for tile in layer.analog_tiles():
            tile.rpu_config.noise_model.g_converter = _reference(converters[f"{name}.weight"])
    return out


def _tile_converters(analog: nn.Module) -> list:
    return [tile.rpu_config.noise_model.g_converter for tile in analog.analog_tiles()]


def _same_table(a, b) -> bool:
    return (type(a) is type(b) and a.g_max == b.g_max and a.g_min == b.g_min
            and list(a.f_lst) == list(b.f_lst) and getattr(a, "g_lst", None) == getattr(
                b, "g_lst", None))


def _drifted(analog: nn.Module, x: torch.Tensor, seed: int,
             program: bool = True) -> tuple[list, torch.Tensor]:
    """(Program,) drift to a year and run ``x``, on the global generator seeded with ``seed``:
    every tile's weights and compensation factor, and the output. Without ``program``, aihwkit
    programs the tiles that are not programmed yet as it drifts them."""
    with _seeded(seed):
        if program:
            analog.program_analog_weights()
        analog.drift_analog_weights(YEAR)
        out = analog(x)
    weights = [(tile.tile.get_weights().clone(), tile.alpha.clone())
               for tile in analog.analog_tiles()]
    return weights, out


def _equal(a: list, b: list) -> bool:
    return all(torch.equal(wa, wb) and torch.equal(aa, ab) for (wa, aa), (wb, ab) in zip(a, b))


# ------------------------------------------------------------------------------------------
# against the direct per-tile construction


@pytest.mark.parametrize("net", ["mlp", "cnn", "cnn mapped"])
def test_apply_equals_the_direct_per_tile_construction(net):
    model, x, cfg = ((_mlp(), torch.randn(4, 8, generator=torch.Generator().manual_seed(2)),
                      _config()) if net == "mlp" else
                     (_cnn(), torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(2)),
                      _config(max_input_size=16)))
    # "mapped": aihwkit's AnalogConv2dMapped / AnalogLinearMapped, tiled per layer
    conversion = ({"conversion_map": {nn.Linear: AnalogLinearMapped,
                                      nn.Conv2d: AnalogConv2dMapped}} if "mapped" in net else {})
    analog = convert_to_analog(model, cfg, **conversion).eval()
    names = list(gpuwpo.select_weights(model))
    result = _result_for(model, baseline_layers=names[:1])  # the first layer keeps the baseline
    converters = result.converters()
    ours = copy.deepcopy(analog)
    with _seeded(7):
        ours.program_analog_weights()  # programmed before: apply must make it program afresh
    applied = apply(ours, result)
    hand = _by_hand(analog, converters)

    assert list(applied.layers) == names and applied.kept == ()
    if net != "mlp":  # several tiles per layer, each with the layer's converter
        assert applied.layers["0.weight"].tiles == 2 and applied.layers["3.weight"].tiles == 4
    for a, b in zip(_tile_converters(ours), _tile_converters(hand), strict=True):
        assert _same_table(a, b)
    first = applied.layers[names[0]]
    assert first.chosen == "baseline" and first.converter is BASELINE
    assert isinstance(first.g_converter, ref_conv.DualPairConductanceConverter)
    assert [type(c).__name__ for c in _tile_converters(ours)[:1]] == [
        "DualPairConductanceConverter"]
    assert isinstance(applied.layers[names[1]].g_converter,
                      ref_conv.CustomPairConductanceConverter)
    hand_noise = [tile.rpu_config.noise_model for tile in hand.analog_tiles()]
    for ours_noise, ref_noise in zip([t.rpu_config.noise_model for t in ours.analog_tiles()],
                                     hand_noise):
        for attr in ("g_max", "prog_coeff", "prog_coeff_g_max_reference", "t_read", "t_0",
                     "prog_noise_scale", "read_noise_scale", "drift_scale"):
            assert getattr(ours_noise, attr) == getattr(ref_noise, attr), attr

    # Drifted at once: the tiles programmed before apply are programmed afresh, as the hand
    # construction's never-programmed ones are.
    w_ours, y_ours = _drifted(ours, x, seed=5, program=False)
    w_hand, y_hand = _drifted(copy.deepcopy(hand), x, seed=5, program=False)
    assert _equal(w_ours, w_hand) and torch.equal(y_ours, y_hand)
    w_ours, y_ours = _drifted(ours, x, seed=11)
    w_hand, y_hand = _drifted(hand, x, seed=11)
    assert _equal(w_ours, w_hand) and torch.equal(y_ours, y_hand)
    # Negative control: the first two layers' programs exchanged by hand give other weights.
    swapped = dict(converters)
    swapped[names[0]], swapped[names[1]] = converters[names[1]], converters[names[0]]
    w_swap, _ = _drifted(_by_hand(analog, swapped), x, seed=11)
    assert not _equal(w_ours, w_swap)


def test_an_analog_rnn_holds_torchs_lstm_weights_by_their_names():
    class Tagger(nn.Module):
        def __init__(self, rnn, fc):
            super().__init__()
            self.rnn, self.fc = rnn, fc

    cfg = _config()
    torch_model = Tagger(nn.LSTM(3, 4, num_layers=2, bidirectional=True), nn.Linear(8, 2))
    analog = Tagger(AnalogRNN(AnalogLSTMCell, 3, 4, num_layers=2, bidir=True, rpu_config=cfg),
                    AnalogLinear(8, 2, rpu_config=cfg)).eval()
    shapes = {n: tuple(p.shape) for n, p in torch_model.named_parameters() if p.ndim == 2}
    assert len(shapes) == 9  # 8 LSTM matrices and the Linear
    result = _result(shapes)
    applied = apply(analog, result)
    assert set(applied.layers) == set(shapes)
    assert applied.layers["rnn.weight_hh_l1_reverse"].module == \
        "rnn.rnn.layers.1.directions.1.cell.weight_hh"
    assert applied.layers["rnn.weight_ih_l0"].module == \
        "rnn.rnn.layers.0.directions.0.cell.weight_ih"
    assert applied.layers["fc.weight"].module == "fc"
    modules = dict(analog.named_modules())
    for name, layer in applied.layers.items():
        for tile in modules[layer.module].analog_tiles():
            assert _same_table(tile.rpu_config.noise_model.g_converter,
                               _reference(result.converters()[name]))


# ------------------------------------------------------------------------------------------
# what it is given


def test_noise_model_default_is_the_results_and_can_be_given():
    analog = convert_to_analog(_mlp(), _config()).eval()
    recorded = gpuwpo.PCMLikeNoiseModel(g_max=25.0, read_noise_scale=0.8)
    result = _result_for(_mlp(), noise_model=recorded)
    for given, attr, value in ((None, "read_noise_scale", 0.8),
                               (gpuwpo.PCMLikeNoiseModel(prog_noise_scale=0.5), "prog_noise_scale",
                                0.5),
                               (RefPCM(drift_scale=0.7), "drift_scale", 0.7)):
        applied = apply(analog, result, noise_model=given)
        assert {getattr(t.rpu_config.noise_model, attr) for t in analog.analog_tiles()} == {value}
        assert getattr(applied.noise_model, attr) == value
    with pytest.raises(ValueError, match="noise_model must be a PCM model.*got str"):
        apply(analog, result, noise_model="pcm")


def test_uncovered_analog_layers_error_keep_or_baseline(tmp_path):
    analog = convert_to_analog(_mlp(), _config()).eval()
    result = _result({"0.weight": (6, 8)})
    with pytest.raises(ValueError, match=r"does not cover the analog layer\(s\) '2 \(2.weight\)'"):
        apply(analog, result)
    assert all(isinstance(c, ref_conv.SinglePairConductanceConverter)
               for c in _tile_converters(analog))  # nothing changed
    applied = apply(analog, result, uncovered="keep")
    assert applied.kept == ("2.weight",) and list(applied.layers) == ["0.weight"]
    assert isinstance(_tile_converters(analog)[1], ref_conv.SinglePairConductanceConverter)
    gpuwpo.save_result(result, tmp_path / "r.json")  # a results file's path works too
    applied = apply(analog, str(tmp_path / "r.json"), uncovered="baseline")
    assert applied.kept == () and applied.layers["2.weight"].chosen == "uncovered: baseline"
    assert _same_table(_tile_converters(analog)[1], _reference(BASELINE))


def _untouched(analog: nn.Module) -> bool:
    return all(isinstance(c, ref_conv.SinglePairConductanceConverter)
               for c in _tile_converters(analog))


@pytest.mark.parametrize("case, match", [
    ("clip", r"program for '2.weight' clips .*clip=0.5.*without_clip"),
    ("extra layer", r"no analog layer of the model holds 'head.weight' of the result; its "
                    r"analog layers hold '0.weight', '2.weight'"),
    ("shape", r"analog layer '2' holds a 3 x 6 weight, the result's '2.weight' is \(3, 7\)"),
    ("columnwise", r"analog layer '0' scales each output column .*"
                   r"mapping.weight_scaling_columnwise=True"),
    ("uncovered", r"uncovered must be one of error, keep, baseline, got 'drop'"),
    ("recorded columnwise", r"program for '0.weight' was chosen for weights scaled per output "
                            r"column .*mapping.weight_scaling_columnwise=True"),
    ("clip columnwise", r"program for '2.weight' clips .*each output row at 0.5 x its own "
                        r"max\|w\|.*without_clip"),
])
def test_refusals_name_the_setting_and_change_nothing(case, match):
    cfg = _config()
    if case in ("columnwise", "clip columnwise"):
        cfg = _config(mapping="columnwise")
    analog = convert_to_analog(_mlp(), cfg).eval()
    shapes = {"0.weight": (6, 8), "2.weight": (3, 6)}
    kwargs = {}
    if case == "extra layer":
        shapes["head.weight"] = (2, 3)
    if case == "shape":
        shapes["2.weight"] = (3, 7)
    if case == "uncovered":
        kwargs["uncovered"] = "drop"
    result = _result(shapes, mapping="columnwise" if case == "clip columnwise" else "layer")
    if case == "recorded columnwise":  # each layer records its mapping (DESIGN.md 5c)
        result.layers[0] = LayerResult("0.weight", (6, 8), _program(0), 0.01, (0.009, 0.011),
                                       0.02, (0.019, 0.021), mapping="columnwise")
    if case in ("clip", "clip columnwise"):
        result.layers[1] = LayerResult("2.weight", (3, 6), _program(1, clip=0.5), 0.01,
                                       (0.009, 0.011), 0.02, (0.019, 0.021),
                                       mapping=result.layers[1].mapping)
    with pytest.raises(ValueError, match=match):
        apply(analog, result, **kwargs)
    assert _untouched(analog)


@pytest.mark.parametrize("net", ["mlp", "cnn split"])
def test_a_columnwise_result_on_columnwise_tiles_equals_the_direct_construction(net):
    """A result whose layers were chosen under the columnwise mapping goes onto tiles that
    deploy it (weight_scaling_omega=1, weight_scaling_columnwise=True): each tile holds its
    rows scaled to their own max, with the layer's program, exactly as set by hand."""
    model, x, cfg = ((_mlp(), torch.randn(4, 8, generator=torch.Generator().manual_seed(2)),
                      _config(mapping="columnwise")) if net == "mlp" else
                     (_cnn(), torch.randn(3, 2, 6, 6, generator=torch.Generator().manual_seed(2)),
                      _config(max_input_size=16, mapping="columnwise")))
    analog = convert_to_analog(model, cfg).eval()
    # Each tile holds its rows scaled to their own max, the digital scales hold the max.
    for tile in analog.analog_tiles():
        held = tile.tile.get_weights()
        assert torch.allclose(held.abs().amax(1), torch.ones(held.shape[0]))
    result = _result_for(model, mapping="columnwise")
    ours = copy.deepcopy(analog)
    applied = apply(ours, result)
    assert list(applied.layers) == list(gpuwpo.select_weights(model))
    hand = _by_hand(analog, result.converters())
    w_ours, y_ours = _drifted(ours, x, seed=13)
    w_hand, y_hand = _drifted(hand, x, seed=13)
    assert _equal(w_ours, w_hand) and torch.equal(y_ours, y_hand)
    # The same result refused on layer-wise tiles (nothing changed there).
    plain = convert_to_analog(model, _config(16 if net != "mlp" else 512)).eval()
    with pytest.raises(ValueError, match="chosen for weights scaled per output column"):
        apply(plain, result)
    assert _untouched(plain)


def test_one_scale_per_tile_is_accepted_and_wrong_types_refused():
    cfg = _config()
    cfg.mapping.weight_scaling_omega = 1.0  # one scale per tile: the program's grid follows it
    analog = convert_to_analog(_mlp(), cfg).eval()
    assert len(apply(analog, _result_for(_mlp())).layers) == 2
    with pytest.raises(TypeError, match="analog_model must be an aihwkit model.*got dict"):
        apply({}, _result_for(_mlp()))
    with pytest.raises(TypeError, match="NetworkResult or the path of a results file, got dict"):
        apply(analog, {"0.weight": BASELINE})
    with pytest.raises(ValueError, match="has no analog layers"):
        apply(_mlp(), _result_for(_mlp()))


@pytest.mark.slow
def test_a_searched_result_goes_onto_the_converted_model():
    # End to end: optimize_network on the torch model, apply to its conversion; names and
    # shapes come from the pipeline itself, and kept-baseline layers carry the baseline.
    model = _cnn()
    result = gpuwpo.optimize_network(
        model, gpuwpo.PCMLikeNoiseModel(), [1.0, 3600.0], BASELINE, [None, None],
        device="cpu", popsize=2, maxiter=2, test_in_features=64, test_out_features=4,
        baseline_iterations=4, validation_repeats=4, disp=False, polish=False, seed=3)
    # The tiles deploy the mapping the layers were chosen for (one for the whole run here).
    mappings = {layer.mapping for layer in result.layers}
    assert len(mappings) == 1, mappings
    analog = convert_to_analog(model, _config(max_input_size=16,
                                              mapping=mappings.pop())).eval()
    applied = apply(analog, result)
    assert list(applied.layers) == [layer.name for layer in result.layers]
    modules = dict(analog.named_modules())
    for layer in result.layers:
        expected = _reference(layer.converter)
        assert applied.layers[layer.name].chosen == layer.chosen
        for tile in modules[applied.layers[layer.name].module].analog_tiles():
            assert _same_table(tile.rpu_config.noise_model.g_converter, expected)


def test_an_exact_standard_converter_answer_goes_onto_the_tiles():
    """A layer whose answer is a standard N-pair converter the search's grid cannot express
    (a CustomPair program on its own, finer grid: 'standard: NPair f=[1, 3], columnwise')
    goes onto aihwkit's tiles like any program, equal to the hand construction, and aihwkit's
    tile converts weights as its own NPairConductanceConverter does."""
    model = _mlp()
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    analog = convert_to_analog(model, _config(mapping="columnwise")).eval()
    weights = gpuwpo.select_weights(model)
    opt = gpuwpo.WeightProgrammingOptimizer(next(iter(weights.values())), [None, None],
                                            gpuwpo.PCMLikeNoiseModel(g_max=25.0), [1.0],
                                            BASELINE)
    program = dict(opt.inexact_standard_converters())["NPair f=[1, 3]"]
    layers = [LayerResult(name, tuple(w.shape), program, 0.01, (0.009, 0.011), 0.02,
                          (0.019, 0.021), chosen="standard: NPair f=[1, 3], columnwise",
                          mapping="columnwise") for name, w in weights.items()]
    settings = {"noise_model": to_dict(gpuwpo.PCMLikeNoiseModel(g_max=25.0)),
                "baseline": to_dict(BASELINE), "physics": "aihwkit"}
    result = NetworkResult.from_layers(layers, settings=settings, nit=1, nfev=1,
                                       wall_time=0.0, stop_reason="maxiter")
    ours = copy.deepcopy(analog)
    apply(ours, result)
    hand = _by_hand(analog, result.converters())
    w_ours, y_ours = _drifted(ours, x, seed=13)
    w_hand, y_hand = _drifted(hand, x, seed=13)
    assert _equal(w_ours, w_hand) and torch.equal(y_ours, y_hand)
    w = torch.linspace(-1.0, 1.0, 101)
    g_theirs, _ = _reference(program).convert_to_conductances(w)
    npair = ref_conv.NPairConductanceConverter([1.0, 3.0], 25.0, 0.0)
    g_npair, _ = npair.convert_to_conductances(w)
    for a, b in zip(g_theirs, g_npair):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
