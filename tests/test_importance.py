"""The activation-aware error (opt-in): calibration of the layers' input energies, test tiles drawn
by them, and their way through the network run.

What the tests guard: :func:`gpuwpo.calibrate` measures each kind of layer's input energies as a
hand computation does (Linear, Conv through ``F.unfold`` and a one-hot convolution, the
recurrences against torch's own modules, attention through its output), and refuses what it
cannot see; a tile drawn by importance estimates the energy-weighted error of the whole layer (a
statistical comparison, with the plain tile as the negative control that the same tolerance
rejects); without importance, the tiles are today's bit for bit; the network run records a
digest of the energies, runs sharded as in one process, and repeats or resumes only with the
same energies.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gpuwpo
from gpuwpo.device.mapping import Recipe
from gpuwpo.device.sampling import downsample_weight_distribution
from gpuwpo.network.executors import InProcess
from gpuwpo.network.settings import importance_record, optimize_kwargs_from_settings
from gpuwpo.rng import stream_generator
from gpuwpo.search.objective import TNMSEObjective
from gpuwpo.search.tiles import TestTile, importance_resample, sample_rows

NOISE = gpuwpo.PCMLikeNoiseModel(g_max=25.0)
DUAL = gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0)


pytestmark = pytest.mark.usefixtures("one_thread_module")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mean_square(x: torch.Tensor) -> torch.Tensor:
    """The hand computation: mean of x^2 over every axis but the last, float64."""
    return x.double().pow(2).reshape(-1, x.shape[-1]).mean(0)


# ------------------------------------------------------------------------------------------
# Calibration
# ------------------------------------------------------------------------------------------


class _Twice(nn.Module):
    """A Linear applied twice (its energies count both calls), with dropout between."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(torch.relu(self.fc(self.drop(torch.relu(self.fc(x))))))


def test_linear_energies_are_the_mean_square_of_every_input_vector():
    torch.manual_seed(0)
    model = _Twice().train()
    a, b = torch.randn(4, 3, 5, generator=_gen(1)), torch.randn(6, 5, generator=_gen(2))
    energies = gpuwpo.calibrate(model, [a, b])  # two batches: every input vector counts once
    assert list(energies) == ["fc.weight", "head.weight"]
    with torch.no_grad():  # eval mode: no dropout
        first = [a.reshape(-1, 5), b]
        second = [torch.relu(model.fc(x)) for x in first]
        third = [torch.relu(model.fc(x)) for x in second]
    torch.testing.assert_close(energies["fc.weight"], _mean_square(torch.cat(first + second)))
    torch.testing.assert_close(energies["head.weight"], _mean_square(torch.cat(third)))
    assert all(m.training for m in model.modules())  # its mode is restored
    # A DataLoader's (inputs, labels) batches through forward=, and one layer by name.
    batches = [(a.reshape(-1, 5), torch.zeros(12)), (b, torch.zeros(6))]
    only = gpuwpo.calibrate(model, batches, layers=["head.weight"],
                            forward=lambda m, batch: m(batch[0]))
    torch.testing.assert_close(only["head.weight"], energies["head.weight"])


@pytest.mark.parametrize("kwargs", [
    {"padding": 1}, {"padding": 2, "stride": 2, "dilation": 2}, {"padding": "same"},
    {"padding": 1, "padding_mode": "reflect"},
    {"padding": (1, 2), "padding_mode": "circular", "stride": (1, 2)},
])
def test_conv2d_energies_are_the_unfolded_patches(kwargs):
    conv = nn.Conv2d(3, 4, 3, **kwargs)
    x = torch.randn(2, 3, 9, 8, generator=_gen(0))
    energy = gpuwpo.calibrate(conv, x)["weight"]
    # F.unfold's columns are the crossbar's (weight.reshape(out, -1)); pad as the module does.
    xp = F.pad(x, conv._reversed_padding_repeated_twice,
               mode="constant" if conv.padding_mode == "zeros" else conv.padding_mode)
    patches = F.unfold(xp, 3, dilation=conv.dilation, stride=conv.stride)  # [N, C*9, L]
    torch.testing.assert_close(energy, patches.double().pow(2).mean((0, 2)))


def test_conv1d_conv3d_and_grouped_energies_by_other_hands():
    # Conv1d: a loop over output positions and kernel offsets.
    conv = nn.Conv1d(2, 3, 3, stride=2, padding=1)
    x = torch.randn(4, 2, 11, generator=_gen(0))
    xp = F.pad(x, (1, 1)).double()
    out = (11 + 2 - 3) // 2 + 1
    hand = torch.stack([torch.stack([xp[:, c, o * 2 + q].pow(2) for o in range(out)]).mean()
                        for c in range(2) for q in range(3)])
    torch.testing.assert_close(gpuwpo.calibrate(conv, x)["weight"], hand)
    # Conv3d: each (channel, offset) as a depthwise convolution of x^2 with a one-hot kernel.
    conv = nn.Conv3d(2, 3, (2, 3, 2), padding=1, dilation=(1, 2, 1))
    x = torch.randn(2, 2, 5, 6, 4, generator=_gen(1))
    onehot = torch.eye(12, dtype=torch.float64).reshape(12, 1, 2, 3, 2).repeat(2, 1, 1, 1, 1)
    hand = F.conv3d(x.double().pow(2), onehot, padding=1, dilation=(1, 2, 1), groups=2)
    torch.testing.assert_close(gpuwpo.calibrate(conv, x)["weight"], hand.mean((0, 2, 3, 4)))
    # Groups: each output row sees its group's channels only, [out, in / groups * k].
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    x = torch.randn(2, 4, 5, 5, generator=_gen(2))
    energy = gpuwpo.calibrate(conv, x)["weight"]
    blocks = F.unfold(x, 3, padding=1).double().pow(2).mean((0, 2)).reshape(2, 18)
    assert energy.shape == (6, 18) == gpuwpo.network.layers.as_matrix(conv.weight).shape
    torch.testing.assert_close(energy, blocks.repeat_interleave(3, dim=0))


def _states(out: torch.Tensor, h0: torch.Tensor, reverse: bool) -> torch.Tensor:
    """The hidden states a recurrent matrix multiplies, [L, N, H], from torch's outputs
    ``out`` [L, N, H] of one direction: h0, then the outputs of the steps before (in the
    direction's own order)."""
    if reverse:
        return torch.cat([h0.unsqueeze(0), out.flip(0)[:-1]])
    return torch.cat([h0.unsqueeze(0), out[:-1]])


def test_lstm_energies_are_its_inputs_and_the_states_it_multiplies():
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(5, 6, 3, generator=_gen(0))  # [N, L, in]
    h0, c0 = torch.randn(4, 5, 4, generator=_gen(1)), torch.randn(4, 5, 4, generator=_gen(2))
    energies = gpuwpo.calibrate(lstm, (x, (h0, c0)))
    # By hand: torch's own one-layer LSTMs with the same weights give every layer's outputs.
    seq = x.transpose(0, 1)  # [L, N, in]
    for layer in range(2):
        single = nn.LSTM(seq.shape[-1], 4, bidirectional=True)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            for sfx in ("", "_reverse"):
                getattr(single, f"{name}_l0{sfx}").data.copy_(
                    getattr(lstm, f"{name}_l{layer}{sfx}"))
        with torch.no_grad():
            out, _ = single(seq, (h0[2 * layer:2 * layer + 2], c0[2 * layer:2 * layer + 2]))
        for d, sfx in enumerate(("", "_reverse")):
            torch.testing.assert_close(energies[f"weight_ih_l{layer}{sfx}"], _mean_square(seq))
            states = _states(out[..., 4 * d:4 * d + 4], h0[2 * layer + d], bool(d))
            torch.testing.assert_close(energies[f"weight_hh_l{layer}{sfx}"],
                                       _mean_square(states))
        seq = out
    # A GRU and a ReLU RNN, without an initial state (zeros, which count as inputs).
    for module in (nn.GRU(3, 4), nn.RNN(3, 4, nonlinearity="relu")):
        x = torch.randn(7, 2, 3, generator=_gen(3))
        energies = gpuwpo.calibrate(module, x)
        with torch.no_grad():
            out, _ = module(x)
        torch.testing.assert_close(energies["weight_ih_l0"], _mean_square(x))
        torch.testing.assert_close(energies["weight_hh_l0"],
                                   _mean_square(_states(out, torch.zeros(2, 4), False)))
    # A projection: weight_hr sees the unprojected states (its shape says so; the replay is
    # checked against the module's output, or calibrate refuses).
    proj = gpuwpo.calibrate(nn.LSTM(3, 4, proj_size=2), torch.randn(5, 2, 3, generator=_gen(4)))
    assert {k: tuple(v.shape) for k, v in proj.items()} == {
        "weight_ih_l0": (3,), "weight_hh_l0": (2,), "weight_hr_l0": (4,)}


def test_cells_and_attention():
    cell = nn.LSTMCell(3, 4)
    x, h = torch.randn(6, 3, generator=_gen(0)), torch.randn(6, 4, generator=_gen(1))
    energies = gpuwpo.calibrate(cell, {"input": x, "hx": (h, torch.zeros(6, 4))})
    torch.testing.assert_close(energies["weight_ih"], _mean_square(x))
    torch.testing.assert_close(energies["weight_hh"], _mean_square(h))
    gru = gpuwpo.calibrate(nn.GRUCell(3, 4), x)  # no state: zeros
    torch.testing.assert_close(gru["weight_hh"], torch.zeros(4, dtype=torch.float64))
    # Attention: in_proj's query, key and value rows by their own inputs; out_proj by the heads'
    # output, which the module's output gives back through out_proj's inverse.
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    q = torch.randn(3, 5, 8, generator=_gen(2))
    kv = torch.randn(3, 7, 8, generator=_gen(3))
    energies = gpuwpo.calibrate(mha, (q, kv, 2 * kv))
    rows = energies["in_proj_weight"]
    assert rows.shape == (24, 8)
    for block, part in enumerate((q, kv, 2 * kv)):
        torch.testing.assert_close(rows[8 * block:8 * block + 8],
                                   _mean_square(part).expand(8, -1))
    with torch.no_grad():
        y, _ = mha(q, kv, 2 * kv)
    heads = torch.linalg.solve(mha.out_proj.weight.double(),
                               (y - mha.out_proj.bias).double().reshape(-1, 8).t()).t()
    torch.testing.assert_close(energies["out_proj.weight"], _mean_square(heads),
                               rtol=1e-4, atol=1e-6)


class _Shifted(nn.LSTM):
    """An LSTM whose output is not its recurrence's (the replay's negative control)."""

    def forward(self, x, hx=None):
        out, state = super().forward(x, hx)
        return out + 1.0, state


class _Functional(nn.Module):
    """A weight used by a functional call: no hook sees its input."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 4))

    def forward(self, x):
        return F.linear(x, self.weight)


def test_calibrate_refuses_what_it_cannot_measure():
    x = torch.randn(5, 2, 3, generator=_gen(0))
    with pytest.raises(ValueError, match="replay .* differs"):
        gpuwpo.calibrate(_Shifted(3, 4), x)
    with pytest.raises(ValueError, match=r"cannot see the inputs of 'weight' \(_Functional\)"):
        gpuwpo.calibrate(_Functional(), torch.randn(2, 4))
    model = nn.ModuleDict({"used": nn.Linear(4, 4), "unused": nn.Linear(4, 4)})
    with pytest.raises(ValueError, match="never reached 'unused.weight'"):
        gpuwpo.calibrate(model, torch.randn(2, 4), forward=lambda m, b: m["used"](b))
    with pytest.raises(ValueError, match="no parameter 'nope'"):
        gpuwpo.calibrate(model, torch.randn(2, 4), layers="nope")
    with pytest.raises(ValueError, match="PackedSequence"):
        packed = nn.utils.rnn.pack_padded_sequence(x, [5, 3])
        gpuwpo.calibrate(nn.LSTM(3, 4), (packed,))
    with pytest.raises(TypeError, match="inputs must be"):
        gpuwpo.calibrate(model, 3.0)


# ------------------------------------------------------------------------------------------
# Tiles drawn by importance
# ------------------------------------------------------------------------------------------


def _layer(rows: int = 20, cols: int = 512, seed: int = 0):
    """A layer whose columns have scales over 1.2 decades and whose rows over 0.7, with
    energies large where the weights are small (skewed over some 2.5 decades): the weighted
    error is far from the plain one."""
    g = _gen(seed)
    scale = torch.logspace(-1.2, 0, cols)[torch.randperm(cols, generator=g)]
    rows_scale = torch.logspace(-0.7, 0, rows)[torch.randperm(rows, generator=g)]
    w = torch.randn(rows, cols, generator=g) * scale * rows_scale.reshape(-1, 1)
    energy = scale.pow(-2) * torch.rand(cols, generator=g)
    return w, energy


def test_without_importance_the_tiles_are_todays_bit_for_bit():
    w, _ = _layer()
    conv = torch.randn(6, 3, 3, 3, generator=_gen(5))
    layers = {"fc": w, "conv": conv}
    for mapping, rows in (("layer", False), ("layer", True), ("columnwise", True)):
        base = TestTile.from_layers(layers, 11, shape=(8, 32), seed=4, mapping=mapping,
                                    rows=rows)
        for importance in (None, [None, None], {"fc": None}, {"conv": torch.tensor(2.0)}):
            same = TestTile.from_layers(layers, 11, shape=(8, 32), seed=4, mapping=mapping,
                                        rows=rows, importance=importance)
            assert torch.equal(same.weights, base.weights) and same.weighted == ()
            assert torch.equal(same.idx, base.idx) and torch.equal(same.frac, base.frac)
        # Today's construction, written out: the layer's stream "test_tiles", keyed by its index.
        for b, weights in enumerate(layers.values()):
            gen = stream_generator(4, "test_tiles", b)
            today = (sample_rows(weights, (8, 32), gen) if rows else
                     downsample_weight_distribution(weights.reshape(-1), (256,), generator=gen))
            assert torch.equal(base.weights[b], today.reshape(-1))
    # The optimizer without importance makes the objective's own tiles.
    kwargs = dict(test_in_features=32, test_out_features=8, seed=4, disp=False)
    plain = gpuwpo.WeightProgrammingOptimizer(layers, [None, None], NOISE, [1.0], DUAL, **kwargs)
    none = gpuwpo.WeightProgrammingOptimizer(layers, [None, None], NOISE, [1.0], DUAL,
                                             importance=None, **kwargs)
    assert torch.equal(plain.objective.tiles.weights, none.objective.tiles.weights)


def test_equal_energies_give_the_plain_tile():
    w, _ = _layer(seed=1)
    for mapping in ("layer", "columnwise"):
        plain = TestTile.from_layers([w], 11, shape=(10, 64), seed=2, mapping=mapping)
        equal = TestTile.from_layers([w], 11, shape=(10, 64), seed=2, mapping=mapping,
                                     importance=[torch.full((512,), 3.0)])
        assert equal.weighted == (True,)
        torch.testing.assert_close(equal.weights, plain.weights, rtol=1e-6, atol=0)


def test_importance_resample_estimates_weighted_means():
    g = _gen(0)
    values = torch.randn(5000, generator=g) * torch.rand(5000, generator=g)
    weight = torch.rand(5000, generator=g).pow(4) * (values.abs() < 0.5)  # skewed, many zeros
    drawn = importance_resample(values, weight, 2048, 7)
    plain = downsample_weight_distribution(values, (2048,), generator=7)
    p = weight.double() / weight.double().sum()
    for f in (torch.square, lambda v: v.abs().pow(3), lambda v: (v > 0).double()):
        target = float((p * f(values.double())).sum())
        spread = float(f(values.double()).max() - f(values.double()).min())
        # Stratified: within a few of the 2048 strata (plus the one kept extreme).
        assert abs(float(f(drawn.double()).mean()) - target) < 4 * spread / 2048
        # The negative control: the plain resample estimates another mean.
        assert abs(float(f(plain.double()).mean()) - target) > 20 * spread / 2048
    # The value of largest magnitude stays (the scale), though its importance is 0; other values
    # of zero importance are never drawn.
    top = values.abs().argmax()
    assert float(weight[top]) == 0 and float(drawn.abs().max()) == float(values.abs().max())
    inside = drawn[drawn.abs() != values.abs().max()]
    assert float(inside.abs().max()) < 0.5
    with pytest.raises(ValueError, match="zero everywhere"):
        importance_resample(values, torch.zeros(5000), 10)


@pytest.mark.slow
@pytest.mark.parametrize("mapping", ["layer", "columnwise"])
def test_a_drawn_tiles_error_is_the_layers_energy_weighted_error(mapping):
    """The tile's plain mean error against the whole layer's energy-weighted error, each over
    300 programmings: equal within 4 standard errors plus 3 % (the resampling's quadrature and
    the kept value of largest magnitude, <= (e_max - E) / in), at t = 1 s, where the drift
    compensation is close to 1 (on a drawn tile it is computed from the energy-weighted
    distribution: not unbiased under drift, the module docstring of gpuwpo.search.tiles)."""
    w, energy = _layer()
    recipe, repeats, t_steps = Recipe(DUAL, mapping), 300, (1.0,)
    eff = gpuwpo.simulate_weights(w, recipe, NOISE, t_steps, repeats=repeats, generator=1)
    errors = (10 * (eff - w) / w.abs().max()).double().pow(2).mean(1)  # [repeats, R, C]
    weighted = (errors * (energy.double() / energy.sum())).sum(-1).mean(-1)  # [repeats]
    plain = errors.mean((-2, -1))
    space = gpuwpo.StrategySpace([None, None], 0.0, 25.0)

    def tile_error(importance):
        # Every row of the layer in the tile, all its values: the rows' choice is exact.
        tiles = TestTile.from_layers([w], space.grid_size, shape=(20, 512), seed=3,
                                     mapping=mapping, rows=mapping == "columnwise",
                                     importance=importance)
        objective = TNMSEObjective(tiles, NOISE, None, t_steps, space, mapping=mapping)
        mean, sem = objective.evaluate_converter(recipe, repeats, 5)
        return float(mean[0]), float(sem[0])

    def agrees(estimate, truth) -> bool:
        (m, se), (t, t_se) = estimate, (float(truth.mean()), float(truth.std()) / repeats**0.5)
        return abs(m - t) < 4 * math.hypot(se, t_se) + 0.03 * t

    drawn, undrawn = tile_error([energy]), tile_error(None)
    assert agrees(drawn, weighted)
    assert agrees(undrawn, plain)  # the plain tile estimates the plain error
    # Negative controls: the same rule rejects the plain tile as an estimate of the weighted
    # error, and the drawn tile as one of the plain error.
    assert not agrees(undrawn, weighted) and not agrees(drawn, plain)


def test_importance_is_checked_against_its_layer():
    w, energy = _layer()
    draw = lambda imp, layers=None: TestTile.from_layers(  # noqa: E731
        layers or {"fc": w}, 11, shape=(4, 16), importance=imp)
    with pytest.raises(ValueError, match=r"'fc' has 7 values .* 20 x 512: give one per input "
                                         r"column \(512\) or one per weight \(10240\)"):
        draw({"fc": torch.ones(7)})
    with pytest.raises(ValueError, match="finite and >= 0"):
        draw({"fc": -energy})
    with pytest.raises(ValueError, match="zero everywhere"):
        draw({"fc": torch.zeros(512)})
    with pytest.raises(ValueError, match="'other', which is not among the layers"):
        draw({"other": energy})
    with pytest.raises(ValueError, match="needs layers by name"):
        draw({"fc": energy}, [w])
    with pytest.raises(ValueError, match="test tile size"):
        TestTile.from_layers([w], 11, shape=None, importance=[energy])
    with pytest.raises(ValueError, match="not ready test tiles"):
        tiles = TestTile.from_layers([w], 11, shape=(4, 16))
        gpuwpo.WeightProgrammingOptimizer(tiles, [None, None], NOISE, [1.0], DUAL,
                                          importance=[energy], disp=False)
    # Per weight, in the matrix's order, is accepted; the tile is drawn.
    tiles = draw({"fc": energy.expand(20, -1).clone()})
    assert tiles.weighted == (True,)


# ------------------------------------------------------------------------------------------
# Through the network run
# ------------------------------------------------------------------------------------------

_TINY = dict(popsize=2, maxiter=2, test_in_features=32, test_out_features=8,
             baseline_iterations=4, validation_repeats=4, polish=False, disp=False, seed=3)


def _net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 36, 10))
    x = torch.randn(64, 1, 6, 6, generator=_gen(0))
    return model, gpuwpo.calibrate(model, x)


def _run(model, importance, **kwargs):
    return gpuwpo.optimize_network(model, NOISE, [1.0, 86400.0], DUAL, [None, None],
                                   importance=importance, **{**_TINY, **kwargs})


@pytest.mark.slow
def test_the_network_run_records_its_energies_and_shards_as_in_one_process():
    model, energies = _net()
    assert {k: tuple(v.shape) for k, v in energies.items()} == {"0.weight": (9,),
                                                                 "3.weight": (144,)}
    plain, drawn = _run(model, None), _run(model, energies)
    assert "importance" not in plain.settings
    assert drawn.settings["importance"] == importance_record(energies)
    assert drawn.settings["importance"]["layers"] == ["0.weight", "3.weight"]
    # The digest is of the values, whatever their float dtype; other values, another digest.
    as32 = {k: v.float() for k, v in energies.items()}
    assert importance_record(as32) == importance_record({k: v.double() for k, v in as32.items()})
    assert importance_record(as32) != importance_record(energies)
    # Sharded, the tiles are drawn once on the driver: the same answer, bit for bit.
    sharded = _run(model, energies, distributed=InProcess([[1], [0]]))
    assert [(x.tnmse, x.chosen) for x in sharded.layers] == [(x.tnmse, x.chosen)
                                                              for x in drawn.layers]
    # The energies change what is measured (the negative control of the plumbing).
    assert [x.baseline_tnmse for x in drawn.layers] != [x.baseline_tnmse for x in plain.layers]
    # One layer's energies only: the other is measured as without.
    half = _run(model, {"3.weight": energies["3.weight"]})
    assert half.layers[0].baseline_tnmse == plain.layers[0].baseline_tnmse
    assert half.layers[1].baseline_tnmse == drawn.layers[1].baseline_tnmse
    # The pooled (global) search draws its pool by the energies too.
    pooled = _run(model, energies, per_layer=False)
    assert pooled.settings["importance"] == drawn.settings["importance"]


def test_a_run_with_energies_repeats_and_resumes_only_with_them(tmp_path):
    model, energies = _net()
    other = {k: v.flip(0) for k, v in energies.items()}
    with pytest.raises(ValueError, match="'fc.weight', not among the selected layers"):
        _run(model, {"fc.weight": torch.ones(3)})
    with pytest.raises(ValueError, match="layer '3.weight' has 9 values"):
        _run(model, {"3.weight": energies["0.weight"]})
    with pytest.raises(TypeError, match="mapping layer name"):
        _run(model, [energies["0.weight"]])
    result = _run(model, energies)
    with pytest.raises(ValueError, match="records only their digest"):
        optimize_kwargs_from_settings(result.settings)
    with pytest.raises(ValueError, match="not the ones the run drew"):
        optimize_kwargs_from_settings(result.settings, importance=other)
    again = optimize_kwargs_from_settings(result.settings, importance=energies)
    assert again["importance"].keys() == energies.keys()
    with pytest.raises(ValueError, match="without importance"):
        optimize_kwargs_from_settings(_run(model, None).settings, importance=energies)
    # A checkpoint of the run resumes only with the same energies.
    ckpt = tmp_path / "run.ckpt"
    _run(model, energies, checkpoint=str(ckpt))
    with pytest.raises(ValueError, match="importance"):
        _run(model, other, resume=str(ckpt))
    resumed = _run(model, energies, resume=str(ckpt))
    assert [x.tnmse for x in resumed.layers] == [x.tnmse for x in result.layers]
