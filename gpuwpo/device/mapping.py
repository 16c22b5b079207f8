"""How a layer's weights reach its tile: one scale per layer, or one per output row.

A converter programs the weights it is given, scaled so that their largest magnitude takes the
full conductance range. What it is given is the *mapping*'s choice (aihwkit's
``rpu_config.mapping``):

* ``"layer"``: the layer's weights as they are: one scale for the whole matrix (the reference
  toolkit's weight-programming optimiser, and an aihwkit tile with
  ``mapping.weight_scaling_omega = 0``);
* ``"columnwise"``: each output row ``w_i`` of the matrix ``[out, in]`` (a crossbar column) is
  divided by its own largest magnitude ``s_i = max_j |w_ij|`` before the converter sees it, and
  the tile's outputs are multiplied back by ``s_i`` in digital: aihwkit's
  ``mapping.weight_scaling_omega = 1, weight_scaling_columnwise = True``, which its inference
  presets and its example 33 deploy (``periphery.apply_weight_scaling``; a row of zeros keeps
  ``s_i = 1``).

Everything analogue happens on the *tile weights* ``w / s``: programming, drift, read noise and
the drift compensation's readouts (aihwkit reads the raw tile, before its digital output
scales). The effective weights are ``s * alpha_t * W_t``; their error is measured against the
layer's weights and normalised by the layer's largest magnitude M, as for every mapping:
``E_t = mean((amp * s / M) * (alpha_t W_t - w / s))^2`` (docs/DESIGN.md sections 5 and 5c).

A :class:`Recipe` is what a layer is programmed with: a converter and its mapping (a clipping
program carries its clip itself, :class:`gpuwpo.device.converters.CustomPairConductanceConverter`).
Weights are matrices ``[..., out, in]`` here (a Conv or an RNN weight as mapped,
:func:`gpuwpo.network.layers.as_matrix`); for ``"layer"`` any shape is accepted.

A clipping program under the columnwise mapping (:func:`recipe_tile`): aihwkit deploys it as the
weights clipped at ``clip * s_i`` per row, each row then scaled to its own (clipped) maximum, so
the grid's end, not the row's largest weight, takes the tile's unit: the tile holds
``w / (clip * s)`` and the digital scales are ``clip * s``. The conductances are those of the
tile ``w / s`` with the same clip (every converter is relative to the max|W| it is given); what
the unit changes is what an absolute readout periphery (output noise, quantisation, bound, in
tile units) sees. Under ``"layer"`` the tile holds the weights as they are (aihwkit's
``weight_scaling_omega = 0`` holds the clipped weights unscaled).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["MAPPINGS", "DEFAULT_MAPPING", "check_mapping", "row_scales", "to_tile", "Recipe",
           "as_recipe", "describe_recipe", "recipe_clip", "recipe_tile", "describe_mapping"]

#: The mappings gpuwpo models (see the module docstring).
MAPPINGS = ("layer", "columnwise")

#: The mapping a converter is used with when none is said: the one gpuwpo's converters and
#: programs were always simulated with (one scale per layer).
DEFAULT_MAPPING = "layer"


def check_mapping(mapping: object) -> str:
    """``mapping`` if it is one of :data:`MAPPINGS`, else a ValueError naming the choices."""
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping must be one of {', '.join(map(repr, MAPPINGS))}, got "
                         f"{mapping!r}")
    return str(mapping)


def row_scales(weights: Tensor, mapping: str) -> Tensor | None:
    """The digital output scales of the tiles ``weights`` ``[..., out, in]`` under ``mapping``.

    Returns:
        None for ``"layer"`` (the tile holds the weights as they are); for ``"columnwise"``
        ``s`` ``[..., out, 1]``, each row's largest magnitude (1 for a row of zeros), in the
        weights' dtype and device.
    """
    if check_mapping(mapping) == "layer":
        return None
    if weights.ndim < 2:
        raise ValueError(f"the columnwise mapping scales the rows of a matrix [out, in]; got "
                         f"weights of shape {tuple(weights.shape)}")
    s = weights.detach().abs().amax(dim=-1, keepdim=True)
    return torch.where(s > 0, s, torch.ones_like(s))


def to_tile(weights: Tensor, mapping: str) -> tuple[Tensor, Tensor | None]:
    """``(tile weights, scales)``: what the converter programs, and the digital scales that turn
    the tile's outputs back into the layer's (:func:`row_scales`; None for ``"layer"``, whose
    tile holds ``weights`` themselves)."""
    s = row_scales(weights, mapping)
    return (weights, None) if s is None else (weights / s, s)


@dataclass(frozen=True, eq=False)
class Recipe:
    """How one layer is programmed: a converter (holding one program, and its clip if it clips)
    and the mapping that decides which weights it converts.

    Attributes:
        converter: any converter of :mod:`gpuwpo.device.converters` holding one program.
        mapping: ``"layer"`` or ``"columnwise"`` (:data:`MAPPINGS`).
    """

    converter: Any
    mapping: str = DEFAULT_MAPPING

    def __post_init__(self) -> None:
        check_mapping(self.mapping)
        if not hasattr(self.converter, "convert_to_conductances"):
            raise TypeError(f"a recipe's converter must convert weights to conductances, got "
                            f"{type(self.converter).__name__}")

    def __repr__(self) -> str:
        return f"Recipe({self.converter!r}, mapping={self.mapping!r})"


def as_recipe(converter_or_recipe: Any, mapping: str | None = None) -> Recipe:
    """A :class:`Recipe`: the given one, or a converter with ``mapping`` (default
    :data:`DEFAULT_MAPPING`). A recipe given with a different ``mapping`` is refused."""
    if isinstance(converter_or_recipe, Recipe):
        if mapping is not None and check_mapping(mapping) != converter_or_recipe.mapping:
            raise ValueError(f"the recipe's mapping is {converter_or_recipe.mapping!r}, not "
                             f"{mapping!r}")
        return converter_or_recipe
    return Recipe(converter_or_recipe, DEFAULT_MAPPING if mapping is None else mapping)


#: How a summary names each mapping ("against DualPair f=[1, 1], per-column mapping").
_DESCRIPTIONS = {"layer": "layer-wise mapping", "columnwise": "per-column mapping"}


def describe_mapping(mapping: str) -> str:
    """The mapping in words: ``"layer-wise mapping"`` or ``"per-column mapping"``."""
    return _DESCRIPTIONS[check_mapping(mapping)]


def recipe_clip(recipe: Recipe) -> float:
    """The fraction of max|W| (of each row's, under the columnwise mapping) that the recipe's
    program spans: its converter's ``clip`` (1 for a converter that never clips)."""
    return float(getattr(recipe.converter, "clip", 1.0))


def recipe_tile(weights: Tensor, recipe: Recipe) -> tuple[Tensor, Tensor | None]:
    """``(tile weights, scales)`` of a layer programmed with ``recipe``: what its converter is
    given, and the digital scales ``[..., out, 1]`` that multiply the tile back into the layer
    (None under ``"layer"``: the tile holds ``weights`` themselves).

    Under ``"columnwise"`` the scales are ``clip * s`` (:func:`row_scales`, the recipe's
    :func:`recipe_clip`): each row's grid end is the tile's unit, as aihwkit holds weights that
    were clipped before it scaled them (the module docstring). Without a clip this is
    :func:`to_tile`.
    """
    s = row_scales(weights, recipe.mapping)
    if s is None:
        return weights, None
    clip = recipe_clip(recipe)
    if clip != 1.0:
        s = s * clip
    return weights / s, s



def describe_recipe(recipe) -> str:
    """A baseline's recipe in words, as a summary says what the gains are against:
    ``"DualPair f=[1, 1], per-column mapping"`` (a CustomPair program: ``"CustomPair program"``;
    a bare converter: the layer-wise mapping)."""
    recipe = as_recipe(recipe)
    conv = recipe.converter
    name = type(conv).__name__.removesuffix("ConductanceConverter")
    f = getattr(conv, "f_lst", None)
    if name == "CustomPair":
        words = "CustomPair program"
    elif isinstance(f, torch.Tensor) and f.ndim == 1 and name not in ("SinglePair", "Fusion"):
        words = f"{name} f=[{', '.join(f'{float(v):g}' for v in f.tolist())}]"
    else:
        words = name
    return f"{words}, {describe_mapping(recipe.mapping)}"
