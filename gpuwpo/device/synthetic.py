"""Synthetic weights with the heavy tails of trained networks (tests, benchmarks, demos)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..rng import make_generator

__all__ = ["student_t_weights"]


def student_t_weights(
    shape: int | Sequence[int],
    *,
    df: int = 3,
    scale: float = 0.05,
    generator: torch.Generator | int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Student-t weights (``df`` degrees of freedom, an integer) times ``scale``.

    Drawn as z / sqrt(chi2_df / df) from ``generator`` alone, so the same seed gives the same
    weights on every machine (torch.distributions would use the global RNG).

    Args:
        shape: the weights' shape.
        df: degrees of freedom (3: heavy tails as in trained networks' layers).
        scale: the weights' scale (unitless).
        generator: a generator (on ``device``), an int seed, or None for fresh entropy
            (:mod:`gpuwpo.rng`; torch's global generator is never used).
        dtype, device: of the weights (device default: torch's default device).

    Returns:
        weights of ``shape``.
    """
    if int(df) != df or df < 1:
        raise ValueError(f"df must be a positive integer, got {df!r}")
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    device = torch.get_default_device() if device is None else torch.device(device)
    kw = {"generator": make_generator(generator, device), "dtype": dtype, "device": device}
    z = torch.randn(shape, **kw)
    chi2 = torch.randn((int(df), *shape), **kw).square().sum(0)
    return scale * z / torch.sqrt(chi2 / df)
