"""Programming a model: its weights as the analogue hardware computes with them at a time."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping

import torch
from torch import nn

from ..device.mapping import Recipe, as_recipe
from ..device.physics import check_physics
from ..device.simulate import as_time_tensor, simulate_weights
from ..rng import draw_seed, keyed_generator, make_generator
from .layers import as_matrix, select_weights
from .result import NetworkResult

__all__ = ["program_model", "layer_key"]


def layer_key(name: str) -> int:
    """The 64-bit key of a layer's noise stream, from its name (the same name, the same key, in
    every process and on every machine: a SHA-256 digest, never Python's salted hash)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")


def _recipe(value, name: str | None = None) -> Recipe:
    """A converter or Recipe as a Recipe (a bare converter: the layer-wise mapping), or a
    TypeError naming what it is (and the layer it was given for)."""
    if isinstance(value, Recipe):
        return value
    if not hasattr(value, "convert_to_conductances"):
        what = "" if name is None else f" for {name!r}"
        raise TypeError(f"expected a NetworkResult, a mapping name -> converter or Recipe, or a "
                        f"converter or Recipe; got {type(value).__name__}{what}")
    return as_recipe(value)


def program_model(
    model: nn.Module,
    result_or_converters,
    noise_model,
    t_inference: float,
    generator: torch.Generator | int | None = None,
    compensation=None,
    *,
    physics: str = "device",
) -> nn.Module:
    """A copy of ``model`` whose selected weights are the hardware's effective weights.

    Each selected weight is programmed with its recipe (:class:`gpuwpo.device.mapping.Recipe`:
    a converter under a mapping): converted to conductances, programmed (programming noise),
    drifted to ``t_inference``, read (read noise), converted back and drift-compensated
    (:func:`gpuwpo.simulate_weights` with ``repeats=1``): what the analogue tile computes with at
    that time. A layer is simulated as the crossbar holds it, its shape as mapped
    (:func:`gpuwpo.network.layers.mapped_shape`: a Conv weight ``[out, in, k...]`` as
    ``out x (in * prod k)``, so that per-row scaling and per-column compensation see the tile's
    rows and columns); under the columnwise mapping each of those rows is scaled to its own
    max|w| before the converter and back in digital afterwards. Every other parameter and buffer
    is copied unchanged; ``model`` is not modified.

    Args:
        model: the network (its parameters are not touched). The names of a result are the
            model's own; a model wrapped in DataParallel (names ``module.<name>``) takes them
            too.
        result_or_converters: a :class:`NetworkResult` (each layer with its recipe,
            :meth:`NetworkResult.recipes`), a mapping tensor name -> converter or Recipe, or one
            converter or Recipe (e.g. the baseline DualPair under the per-column mapping)
            applied to every layer (:func:`gpuwpo.network.layers.select_weights`: Linear, Conv
            and RNN weights). A bare converter means the layer-wise mapping.
        noise_model: the PCM device model.
        t_inference: seconds after programming (one time).
        generator: source of all noise: a generator (on the weights' device), an int seed, or
            None for fresh entropy (:mod:`gpuwpo.rng`; torch's global generator is never used).
            One base seed is drawn from it, and each layer's noise is the stream of that seed
            keyed by the layer's name (:func:`layer_key`): a layer is programmed with the same
            numbers whichever other layers are programmed with it and whatever their converters
            draw, so two programmings with the same generator seed are paired layer by layer.
        compensation: drift compensation (default ideal global).
        physics: "device" or "aihwkit" (see :mod:`gpuwpo.device.physics`).

    Returns:
        The programmed copy (same class, same dtypes and devices).

    Raises:
        TypeError: something that is neither a result, a mapping, a converter nor a Recipe.
        ValueError: a named layer that the model does not have, a batched converter, or a bad
            ``t_inference``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"program_model takes an nn.Module, got {type(model).__name__}")
    t = float(t_inference)
    as_time_tensor([t])  # validates: finite, >= 0 seconds
    check_physics(physics)
    shapes: dict[str, tuple[int, ...]] = {}
    if isinstance(result_or_converters, NetworkResult):
        shapes = {layer.name: tuple(layer.shape) for layer in result_or_converters.layers}
        recipes = result_or_converters.recipes()
    elif isinstance(result_or_converters, Mapping):
        recipes = {name: _recipe(value, name) for name, value in result_or_converters.items()}
    else:
        recipe = _recipe(result_or_converters)
        recipes = {name: recipe for name in select_weights(model)}
    programmed = copy.deepcopy(model)
    own = {**dict(programmed.named_parameters()), **dict(programmed.named_buffers())}
    # A result's names are the model's own (a checkpoint's 'module.' prefix was removed when it
    # was read); a DataParallel-wrapped model holds them under 'module.'.
    params = {name: own[name] if name in own else own.get(f"module.{name}")
              for name in recipes}
    missing = [name for name, param in params.items() if param is None]
    if missing:
        raise ValueError(f"the model has no parameter(s) {missing}; it has "
                         f"{list(own)[:10]}{' ...' if len(own) > 10 else ''}")
    for name, shape in shapes.items():  # a result made for another network is refused
        if tuple(params[name].shape) != shape:
            raise ValueError(f"the model's {name!r} has shape {tuple(params[name].shape)}, the "
                             f"result was made for {shape}")
    base_seed = None
    with torch.no_grad():
        for name, recipe in recipes.items():
            param = params[name]
            w = param.detach()
            # Simulate in at least float32: half-precision physics would be noise of its own.
            work = w if w.dtype in (torch.float32, torch.float64) else w.float()
            if base_seed is None:
                base_seed = draw_seed(make_generator(generator, work.device))
            gen = keyed_generator(base_seed, layer_key(name), device=work.device)
            eff = simulate_weights(as_matrix(work), recipe, noise_model, t, compensation,
                                   repeats=1, generator=gen, physics=physics)[0, 0]
            param.copy_(eff.reshape(param.shape).to(param.dtype))
    return programmed
