"""A deliberately simple, per-candidate TNMSE: the specification the batched objective is tested
and benchmarked against. Not for users: it is slow on purpose of being obvious.

It follows the reference toolkit's flow for one candidate: decode the strategy, build a
CustomPair converter (with its invertibility check), convert the test tile with the converter's
own methods, and for every time step program, drift and read in the objective's physics
(:func:`gpuwpo.device.physics.program_and_read`), compensate and accumulate the error.
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
    w = objective.test_weights[layer]  # [N]
    m = objective.max_abs_weight[layer]
    f, g_lst, _ = space.decode(x.to(objective.device, objective.dtype), m)
    converter = CustomPairConductanceConverter(f, g_lst, space.g_min, space.g_max,
                                               invertibility_test=True, clip=space.clip)
    tile = w.reshape(objective.tile_shape)
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
        alpha = objective.compensation.alpha(w_prog, w_t, generator, tile_ndim=2, w_ideal=tile)
        err = objective.error_amplification * (alpha * w_t - tile) / m
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
