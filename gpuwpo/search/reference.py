"""A deliberately simple, per-candidate TNMSE: the specification the batched objective is tested
and benchmarked against. Not for users: it is slow on purpose of being obvious.

It follows the reference toolkit's flow for one candidate: decode the strategy, build a
CustomPair converter (with its invertibility check and the candidate's clip), map the test tile
as the objective's mapping says, convert it with the converter's own methods, and for every time
step program, drift and read in the objective's physics
(:func:`gpuwpo.device.physics.program_and_read`), compensate, scale back and accumulate the error
against the layer's test weights.

The mapping, written out as aihwkit deploys it (docs/DESIGN.md section 5c): under
``"columnwise"`` each row ``w_i`` is clipped at ``c s_i`` (``s_i = max|w_i|``, ``c`` the clip)
and divided by ``c s_i``, so the tile holds ``w / (c s)`` with its grid's end at 1; the outputs
are multiplied back by ``c s_i``. Under ``"layer"`` the tile holds ``w`` and the converter
clips at ``c max|W|`` itself.
"""

from __future__ import annotations

import torch

from ..device.converters import CustomPairConductanceConverter
from ..device.physics import ConverterConversion, program_and_read
from ..device.simulate import DeviceNoise
from ..rng import make_generator
from .objective import TNMSEObjective

__all__ = ["reference_tnmse", "reference_objective"]


def reference_tnmse(
    objective: TNMSEObjective,
    layer: int,
    x: torch.Tensor,
    *,
    generator: torch.Generator | int | None = None,
    noise: DeviceNoise | None = None,
) -> float:
    """TNMSE of one candidate ``x`` [D] for one layer, one time step after another.

    ``noise`` (optional): explicit draws, each of shape [T, 2K, N] (N test weights in the
    objective's order); otherwise they are drawn from ``generator`` (a generator, an int seed,
    or None for fresh entropy: :mod:`gpuwpo.rng`) per time step.
    """
    generator = make_generator(generator, objective.device)
    space = objective.space
    w = objective.test_weights[layer].reshape(objective.tile_shape)  # the layer's units
    m = w.abs().max()
    f, g_lst, _ = space.decode(x.to(objective.device, objective.dtype), m)
    clip = float(space.clips(x.reshape(1, -1))[0])
    converter = CustomPairConductanceConverter(f, g_lst, space.g_min, space.g_max,
                                               invertibility_test=True, clip=clip)
    if objective.mapping == "columnwise":
        row_max = w.abs().amax(-1, keepdim=True)
        scales = torch.where(row_max > 0, row_max, torch.ones_like(row_max)) * clip
    else:
        scales = torch.ones((), dtype=w.dtype, device=w.device)
    tile = w / scales
    # What the tile is asked to hold: in the reference's tile a clipping program is deployed as
    # weights clipped before they reach it.
    ideal = tile
    if objective.physics == "aihwkit" and clip != 1.0:
        end = clip * tile.abs().max()
        ideal = tile.clamp(-end, end)
    tiles = ConverterConversion(converter, tile.shape)
    g, params = tiles.to_conductances(tile)  # [2K, N]
    nm = objective.noise_model
    total = 0.0
    for i, t in enumerate(objective.t_steps.tolist()):
        if noise is None:
            z = [torch.randn(g.shape, generator=generator, dtype=g.dtype, device=g.device)
                 for _ in range(3)]
        else:
            z = [n[i].reshape(g.shape) for n in noise]
        w_prog, w_t = program_and_read(objective.physics, tiles, params, nm.prepare_targets(g),
                                       nm, t, *z)
        alpha = objective.compensation.alpha(w_prog, w_t, generator, tile_ndim=2, w_ideal=ideal)
        err = objective.error_amplification * (scales * alpha * w_t - w) / m
        total += float(err.square().sum())
    return total / (w.numel() * objective.t_steps.numel())


def reference_objective(
    objective: TNMSEObjective, x: torch.Tensor, generator: torch.Generator | int | None = None
) -> torch.Tensor:
    """The per-candidate loop over a population: x [B, P, D] -> TNMSE [B, P] (independent noise)."""
    gen = make_generator(generator, objective.device)
    x = torch.as_tensor(x)
    out = torch.empty(x.shape[:2], dtype=torch.float64)
    for b in range(x.shape[0]):
        for p in range(x.shape[1]):
            out[b, p] = reference_tnmse(objective, b, x[b, p], generator=gen)
    return out
