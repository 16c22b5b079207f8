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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["MAPPINGS", "DEFAULT_MAPPING", "check_mapping", "row_scales", "to_tile", "Recipe",
           "as_recipe"]

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
