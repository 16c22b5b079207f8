"""The mapping of a layer's weights to its tile (gpuwpo.device.mapping) in the converter path.

Invariants that would catch a real mistake:

* ``"layer"`` is today's converter path: a layer-wise Recipe gives the bare converter's numbers
  bit for bit (the old numbers themselves were compared with the code before the mapping when it
  was written, see the commit).
* ``"columnwise"`` is the layer-wise simulation of the tile ``w / s`` multiplied back by ``s``
  (the same draws give the same numbers), and it does not care how each row is scaled: rows
  multiplied by positive factors come back multiplied by them (the layer-wise mapping does not:
  the negative control).
* Its error is against the layer's weights, normalised by the layer's max|W|, so the two
  mappings' errors compare; a sample of rows estimates the whole layer's within its standard
  error; recipes in a list are paired.
* A clipping program under the columnwise mapping is what aihwkit deploys: the weights clipped
  per row at ``clip * s_i``, each row scaled to its clipped max, programmed with the program
  without its clip (checked against aihwkit itself in tests/test_clip.py).
"""

from __future__ import annotations

import math

import pytest
import torch

from gpuwpo import (
    CustomPairConductanceConverter,
    DualPairConductanceConverter,
    GlobalDriftCompensation,
    NPairConductanceConverter,
    PCMLikeNoiseModel,
    PerColumnDriftCompensation,
    StrategySpace,
    simulate_weights,
    student_t_weights,
)
from gpuwpo.device.mapping import (
    MAPPINGS,
    Recipe,
    as_recipe,
    check_mapping,
    describe_mapping,
    recipe_clip,
    recipe_tile,
    row_scales,
    to_tile,
)
from gpuwpo.device.simulate import converter_errors, tnmse_over_time

T_STEPS = [1.0, 86400.0, 31536000.0]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rows_of_many_scales(rows: int = 48, cols: int = 32, seed: int = 0) -> torch.Tensor:
    """Heavy-tailed rows whose scales span two decades (as a transformer's outputs do): where
    one scale per layer leaves the small rows at the bottom of the conductance range."""
    w = student_t_weights((rows, cols), df=4, generator=_gen(seed))
    return w * torch.logspace(-2, 0, rows).unsqueeze(1)


def _program(clip: float = 1.0) -> CustomPairConductanceConverter:
    space = StrategySpace([None, None])
    conv = space.to_converter(space.encode_npair([1.0, 3.0]), 1.0)
    return CustomPairConductanceConverter(conv.f_lst, conv.g_lst, 0.0, 25.0, clip=clip)


# ------------------------------------------------------------------------------------------
# the module


def test_mapping_names_checks_and_scales():
    assert MAPPINGS == ("layer", "columnwise")
    assert check_mapping("columnwise") == "columnwise"
    with pytest.raises(ValueError, match="'layer', 'columnwise'.*'rowwise'"):
        check_mapping("rowwise")
    w = torch.tensor([[0.5, -2.0], [0.0, 0.0], [1.0, 0.25]])
    assert row_scales(w, "layer") is None
    torch.testing.assert_close(row_scales(w, "columnwise"), torch.tensor([[2.0], [1.0], [1.0]]))
    tile, s = to_tile(w, "columnwise")
    torch.testing.assert_close(tile * s, w)
    assert float(tile.abs().amax(1).max()) == 1.0 and bool((tile[1] == 0).all())
    with pytest.raises(ValueError, match=r"matrix \[out, in\]"):
        row_scales(torch.ones(4), "columnwise")
    assert describe_mapping("columnwise") == "per-column mapping"
    assert describe_mapping("layer") == "layer-wise mapping"


def test_recipes_and_their_tiles():
    conv = DualPairConductanceConverter()
    assert as_recipe(conv).mapping == "layer" and as_recipe(conv).converter is conv
    r = Recipe(conv, "columnwise")
    assert as_recipe(r) is r and as_recipe(r, "columnwise") is r
    with pytest.raises(ValueError, match="mapping is 'columnwise', not 'layer'"):
        as_recipe(r, "layer")
    with pytest.raises(TypeError, match="convert weights to conductances"):
        Recipe(object())
    w = _rows_of_many_scales(6, 5)
    # Layer-wise: the weights themselves, clip or not (aihwkit's omega 0 holds them unscaled).
    tile, s = recipe_tile(w, Recipe(_program(0.5), "layer"))
    assert tile is w and s is None
    # Columnwise with a clip: each row's grid end (clip * its max) is the tile's unit.
    tile, s = recipe_tile(w, Recipe(_program(0.5), "columnwise"))
    assert recipe_clip(Recipe(_program(0.5))) == 0.5 and recipe_clip(r) == 1.0
    torch.testing.assert_close(s, 0.5 * w.abs().amax(1, keepdim=True))
    torch.testing.assert_close(tile.abs().amax(1), torch.full((6,), 2.0))
    torch.testing.assert_close(tile * s, w)


# ------------------------------------------------------------------------------------------
# "layer" is the converter path as it was


@pytest.mark.parametrize("physics", ["device", "aihwkit"])
def test_a_layerwise_recipe_is_the_bare_converter_bit_for_bit(physics):
    w = _rows_of_many_scales(24, 16)
    convs = [DualPairConductanceConverter(), _program(), _program(0.7)]
    comp = GlobalDriftCompensation.aihwkit_default()
    bare = converter_errors(w, convs, PCMLikeNoiseModel(), T_STEPS, compensation=comp,
                            physics=physics, repeats=3, generator=3)
    recipes = converter_errors(w, [Recipe(c, "layer") for c in convs], PCMLikeNoiseModel(),
                               T_STEPS, compensation=comp, physics=physics, repeats=3,
                               generator=3)
    assert torch.equal(bare, recipes)
    a = simulate_weights(w, convs[1], PCMLikeNoiseModel(), T_STEPS, comp, repeats=2,
                         generator=4, physics=physics)
    b = simulate_weights(w, Recipe(convs[1]), PCMLikeNoiseModel(), T_STEPS, comp, repeats=2,
                         generator=4, physics=physics)
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------
# "columnwise": the tile w / s, multiplied back


@pytest.mark.parametrize("physics", ["device", "aihwkit"])
@pytest.mark.parametrize("comp", [GlobalDriftCompensation(), PerColumnDriftCompensation(),
                                  GlobalDriftCompensation.aihwkit_default(),
                                  GlobalDriftCompensation(exact_reference=True)],
                         ids=["global", "column", "default-periphery", "exact"])
def test_columnwise_is_the_tile_simulated_and_scaled_back(physics, comp):
    w = _rows_of_many_scales()
    conv = NPairConductanceConverter([1.0, 2.0])
    tile, s = to_tile(w, "columnwise")
    got = simulate_weights(w, Recipe(conv, "columnwise"), PCMLikeNoiseModel(), T_STEPS, comp,
                           repeats=3, generator=5, physics=physics)
    want = s * simulate_weights(tile, conv, PCMLikeNoiseModel(), T_STEPS, comp, repeats=3,
                                generator=5, physics=physics)
    assert torch.equal(got, want)


@pytest.mark.parametrize("physics", ["device", "aihwkit"])
def test_columnwise_ignores_how_each_row_is_scaled_and_layerwise_does_not(physics):
    w = _rows_of_many_scales()
    d = torch.logspace(0, 1.5, w.shape[0]).flip(0).unsqueeze(1)  # the small rows made large
    conv = DualPairConductanceConverter([1.0, 3.0])
    kw = dict(repeats=3, generator=6, physics=physics)
    a = simulate_weights(w, Recipe(conv, "columnwise"), PCMLikeNoiseModel(), T_STEPS, **kw)
    b = simulate_weights(w * d, Recipe(conv, "columnwise"), PCMLikeNoiseModel(), T_STEPS, **kw)
    torch.testing.assert_close(b, a * d, rtol=2e-5, atol=0.0)
    # Negative control: one scale per layer sees the rows' new sizes.
    la = simulate_weights(w, conv, PCMLikeNoiseModel(), T_STEPS, **kw)
    lb = simulate_weights(w * d, conv, PCMLikeNoiseModel(), T_STEPS, **kw)
    assert not torch.allclose(lb, la * d, rtol=1e-2, atol=0.0)


@pytest.mark.slow
def test_columnwise_error_is_against_the_layer_and_its_max():
    w = _rows_of_many_scales()
    conv = DualPairConductanceConverter()
    # The error of the effective weights s alpha W_t against w over max|W|, by hand.
    eff = simulate_weights(w, Recipe(conv, "columnwise"), PCMLikeNoiseModel(), T_STEPS,
                           repeats=40, generator=7)
    by_hand = (10.0 * (eff - w) / w.abs().max()).square().mean((-2, -1))  # [repeats, T]
    errs = converter_errors(w, [conv, Recipe(conv, "columnwise")], PCMLikeNoiseModel(),
                            T_STEPS, repeats=40, generator=8)
    se = torch.sqrt(by_hand.var(0) / 40 + errs[1].var(0) / 40)
    assert float(((errs[1].mean(0) - by_hand.mean(0)) / se).abs().max()) < 4.0
    # Rows two decades apart: per-row scaling programs the small rows on the whole conductance
    # range, and the layer's error falls by far (the 26-99 %).
    layer, column = errs.mean((1, 2)).tolist()
    assert column < 0.5 * layer, (layer, column)


def test_recipes_in_a_list_are_paired_and_mappings_may_mix():
    w = _rows_of_many_scales(24, 16)
    conv = DualPairConductanceConverter()
    errs = converter_errors(w, [Recipe(conv, "columnwise"), conv, Recipe(conv, "columnwise")],
                            PCMLikeNoiseModel(), T_STEPS, repeats=4, generator=9)
    assert torch.equal(errs[0], errs[2])  # the same draws, repeat by repeat
    alone = converter_errors(w, Recipe(conv, "columnwise"), PCMLikeNoiseModel(), T_STEPS,
                             repeats=4, generator=9)
    assert torch.equal(alone, errs[0])
    mean, sem = tnmse_over_time(w, Recipe(conv, "columnwise"), PCMLikeNoiseModel(), T_STEPS,
                                repeats=4, generator=9)
    torch.testing.assert_close(mean, errs[0].mean(0))
    assert bool((sem > 0).all())


@pytest.mark.slow
@pytest.mark.parametrize("comp", [None, PerColumnDriftCompensation()], ids=["global", "column"])
def test_a_sample_of_rows_estimates_the_columnwise_layer_within_its_standard_error(comp):
    w = _rows_of_many_scales(120, 24, seed=2)
    recipes = [Recipe(DualPairConductanceConverter(), "columnwise"),
               Recipe(_program(), "columnwise")]
    times = [1.0, 31536000.0]
    full = converter_errors(w, recipes, PCMLikeNoiseModel(), times, compensation=comp,
                            repeats=24, generator=1)
    sampled = converter_errors(w, recipes, PCMLikeNoiseModel(), times, compensation=comp,
                               repeats=64, generator=2, sample_rows=12)

    def mean_se(e):
        return e.mean(-2), e.std(-2) / math.sqrt(e.shape[-2])

    (fm, fs), (sm, ss) = mean_se(full), mean_se(sampled)
    assert float(((sm - fm) / torch.sqrt(fs**2 + ss**2)).abs().max()) < 4.0
    assert bool((ss > fs).all())  # a real sample: it spreads more than the whole layer


def test_columnwise_needs_a_matrix():
    conv = DualPairConductanceConverter()
    with pytest.raises(ValueError, match="as_matrix"):
        converter_errors(torch.randn(4, 3, 3, 3, generator=_gen(1)), Recipe(conv, "columnwise"),
                         PCMLikeNoiseModel(), T_STEPS, repeats=2, generator=1)
    with pytest.raises(ValueError, match="as_matrix"):
        simulate_weights(torch.randn(12, generator=_gen(1)), Recipe(conv, "columnwise"),
                         PCMLikeNoiseModel(), T_STEPS)
    with pytest.raises(ValueError, match="mapping must be one of"):
        Recipe(conv, "per-row")


# ------------------------------------------------------------------------------------------
# a clip under the columnwise mapping: aihwkit's deployment of it


@pytest.mark.parametrize("physics", ["device", "aihwkit"])
@pytest.mark.parametrize("comp", [GlobalDriftCompensation.aihwkit_default(),
                                  PerColumnDriftCompensation(),
                                  GlobalDriftCompensation(exact_reference=True)],
                         ids=["default-periphery", "column", "exact"])
def test_a_columnwise_clip_is_the_clipped_rows_scaled_to_their_clipped_max(physics, comp):
    """The weights clipped per row at clip * s_i, each row scaled to its clipped max (aihwkit's
    columnwise mapping of the clipped weights) and programmed without a clip: the same
    conductances, drift, readouts (the periphery's units included) and effective weights."""
    w = _rows_of_many_scales()
    clip = 0.6
    c = clip * w.abs().amax(1, keepdim=True)
    held = torch.maximum(torch.minimum(w, c), -c)  # what the user sets on aihwkit's layer
    kw = dict(repeats=3, generator=10, physics=physics)
    got = simulate_weights(w, Recipe(_program(clip), "columnwise"), PCMLikeNoiseModel(),
                           T_STEPS, comp, **kw)
    want = simulate_weights(held, Recipe(_program(), "columnwise"), PCMLikeNoiseModel(),
                            T_STEPS, comp, **kw)
    if comp.exact_reference and physics == "device":
        # The device physics takes an exact reference from the unclipped tile (as under the
        # layer-wise mapping), the reference's tile from the weights it holds: clipped.
        assert not torch.allclose(got, want, rtol=1e-3, atol=0.0)
        return
    torch.testing.assert_close(got, want, rtol=2e-5, atol=1e-7)
