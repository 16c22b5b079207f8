"""Programming, drift and read of conductances over time, and whole-tile weight simulation.

The pipeline here is shared by :func:`simulate_weights` (any converter, for users) and the
objective's hot path (:mod:`gpuwpo.objective`): for every time step the tile is programmed
afresh (new programming noise, new drift coefficients), drifted to ``t`` and read with 1/f noise
(docs/DESIGN.md section 2). Which devices drift and are read is the physics
(:mod:`gpuwpo.physics`): the programmed ones (``physics="device"``), or those of the programmed
weights converted again (``physics="aihwkit"``, the reference toolkit's tile).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from .compensation import GlobalDriftCompensation
from .physics import ConverterTiles, check_physics, program_and_read

__all__ = ["DEFAULT_TIMES", "DeviceNoise", "sample_device_noise", "program_drift_read",
           "simulate_weights", "as_time_tensor", "tnmse_over_time"]

#: Inference times used when none are given: 1 s, 1 h, 1 day, 1 month (30 days), 1 year (365 d).
DEFAULT_TIMES = (1.0, 3600.0, 86400.0, 2592000.0, 31536000.0)


class DeviceNoise(NamedTuple):
    """Standard-normal draws for the three device noises, all of one shape.

    ``z_prog`` (programming noise), ``z_drift`` (drift coefficient), ``z_read`` (1/f read noise).
    Any of them may have size-1 dimensions that broadcast, e.g. shared by all candidates of a
    layer (common random numbers).
    """

    z_prog: torch.Tensor
    z_drift: torch.Tensor
    z_read: torch.Tensor


def sample_device_noise(
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> DeviceNoise:
    """Draw the three device noises, each a standard normal tensor of ``shape``.

    The draws are made in a fixed order (programming, drift, read) from ``generator``, so the
    same generator state gives the same noise.
    """
    shape = tuple(int(s) for s in shape)
    kw = {"generator": generator, "dtype": dtype, "device": device}
    return DeviceNoise(torch.randn(shape, **kw), torch.randn(shape, **kw), torch.randn(shape, **kw))


def as_time_tensor(
    t_steps: float | Sequence[float] | torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Validate inference times (seconds after programming) and return them as a 1-D tensor [T]."""
    t = torch.as_tensor(t_steps, dtype=torch.float64).reshape(-1)
    if t.numel() == 0:
        raise ValueError("t_steps is empty: give at least one inference time in seconds")
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"t_steps must be finite and >= 0 seconds, got {t.tolist()}")
    return t.to(dtype=dtype, device=device)


def program_drift_read(
    g_target: torch.Tensor,
    noise_model,
    t_steps: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    noise: DeviceNoise | None = None,
    time_dim: int = -3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Program ``g_target`` afresh for every time step, drift and read the programmed devices.

    The device physics at the conductance level (``physics="device"``, docs/DESIGN.md
    section 2), through the device model's hot-path methods.

    Args:
        g_target: target conductances [..., R, N] in uS (R devices, N weights).
        noise_model: a :class:`gpuwpo.noise.DeviceModel`.
        t_steps: inference times [T] in seconds after programming.
        generator: source of the noise when ``noise`` is not given.
        noise: explicit standard-normal draws broadcastable to [..., T, R, N].
        time_dim: must be -3 (the time axis is inserted just before the device axis); kept
            as a keyword so that call sites state the layout they rely on.

    Returns:
        ``(g_prog, g_t)``, each [..., T, R, N]: the programmed conductances (programming noise,
        no drift) and the conductances read at each ``t`` (drift and read noise).
    """
    if time_dim != -3:
        raise ValueError("program_drift_read puts the time axis at -3 ([..., T, R, N])")
    if g_target.ndim < 2:
        raise ValueError(f"g_target must be [..., R, N], got shape {tuple(g_target.shape)}")
    t = t_steps.to(dtype=g_target.dtype, device=g_target.device).reshape(-1, 1, 1)
    if noise is None:
        out_shape = (*g_target.shape[:-2], t.shape[0], *g_target.shape[-2:])
        noise = sample_device_noise(out_shape, generator=generator, dtype=g_target.dtype,
                                    device=g_target.device)
    # The same targets at every time step: [..., 1, R, N] broadcasts against the noise.
    prepared = noise_model.prepare_targets(g_target.unsqueeze(-3))
    return noise_model.program_drift_read_step(prepared, t, *noise)


def simulate_weights(
    weights: torch.Tensor,
    g_converter,
    noise_model,
    t_steps: float | Sequence[float] | torch.Tensor,
    compensation=None,
    repeats: int = 1,
    generator: torch.Generator | None = None,
    *,
    physics: str = "device",
) -> torch.Tensor:
    """Drift-compensated effective weights of a tile programmed with ``g_converter``.

    For each repeat and time step the tile is programmed afresh (docs/DESIGN.md section 5): the
    target conductances get programming noise, drift to ``t`` and are read with noise in the
    chosen physics (:mod:`gpuwpo.physics`), are converted back to weights, and the global (or
    per-column) drift compensation is applied. Batched over repeats and times.

    Args:
        weights: the ideal weights, any shape (a 2-D weight is [out_features, in_features]).
        g_converter: any conductance converter of :mod:`gpuwpo.converters` (one program).
        noise_model: the device model (:class:`gpuwpo.noise.DeviceModel`).
        t_steps: inference times in seconds, a float or a sequence [T].
        compensation: defaults to ideal :class:`GlobalDriftCompensation`.
        repeats: independent programmings to simulate (>= 1).
        generator: source of all noise (device noise and readout-periphery noise).
        physics: "device" (the programmed devices drift) or "aihwkit" (the reference
            toolkit's tile: the programmed weights are converted again before they drift).

    Returns:
        Effective weights ``alpha_t * W_t`` of shape [repeats, T, *weights.shape].
    """
    check_physics(physics)
    if not isinstance(weights, torch.Tensor):
        weights = torch.as_tensor(weights, dtype=torch.float32)
    if not torch.is_floating_point(weights):
        weights = weights.float()
    if int(repeats) != repeats or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    if weights.numel() == 0:
        raise ValueError("weights is empty")
    compensation = GlobalDriftCompensation() if compensation is None else compensation
    t = as_time_tensor(t_steps, dtype=weights.dtype, device=weights.device)
    tiles = ConverterTiles(g_converter, weights.shape)
    g, params = tiles.to_conductances(weights)  # [R, N]
    if g.ndim != 2:
        raise ValueError("simulate_weights takes a converter holding one program, not a batch")
    # Noise of the full shape; the targets broadcast over repeats and times, not copied.
    noise = sample_device_noise((int(repeats), t.shape[0], *g.shape), generator=generator,
                                dtype=g.dtype, device=g.device)
    prepared = noise_model.prepare_targets(g)
    w_prog, w_t = program_and_read(physics, tiles, params, prepared, noise_model,
                                   t.reshape(-1, 1, 1), *noise)  # [repeats, T, *w]
    alpha = compensation.alpha(w_prog, w_t, generator, tile_ndim=max(1, weights.ndim),
                               w_ideal=weights)
    return alpha * w_t


def tnmse_over_time(
    weights: torch.Tensor,
    converter,
    noise_model,
    t_steps: Sequence[float],
    *,
    repeats: int = 10,
    compensation=None,
    generator: torch.Generator | None = None,
    memory_budget: int = 1 << 29,
    physics: str = "device",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight error E_t of a whole layer at each time: mean and standard error over repeats.

    ``E_t = mean_n (10 (alpha_t W_t,n - W_n) / max|W|)^2`` (docs/DESIGN.md section 5, on the layer's
    own weights rather than a downsampled test tile); the TNMSE is its mean over the times.

    Args:
        weights: the layer's weights, any shape.
        converter: one program (a baseline converter or a CustomPair strategy).
        noise_model: the PCM device model.
        t_steps: inference times in seconds [T].
        repeats: independent programmings (>= 2 for a standard error).
        compensation: drift compensation (default ideal global).
        generator: source of the noise.
        memory_budget: bytes at a time: large layers are simulated a few repeats at a time.
        physics: "device" or "aihwkit" (see :mod:`gpuwpo.physics`).

    Returns:
        ``(mean [T], sem [T])``.
    """
    w = weights.detach()
    w = (w if w.is_floating_point() else w.float()).to("cpu", torch.float32)
    gain = (10.0 / w.abs().max()) ** 2
    # About a dozen live tensors of [repeats, 2K, N] float32 per time step during simulation.
    devices = 2 * int(getattr(converter, "num_pairs", 2))
    per_repeat = 12 * devices * w.numel() * 4
    step = max(1, min(int(repeats), memory_budget // max(per_repeat, 1)))
    rows = []
    for t in t_steps:
        errs = []
        for start in range(0, int(repeats), step):
            n = min(step, int(repeats) - start)
            eff = simulate_weights(w, converter, noise_model, [float(t)], compensation,
                                   repeats=n, generator=generator, physics=physics)[:, 0]
            errs.append(gain * (eff - w).square().reshape(n, -1).mean(-1))
        rows.append(torch.cat(errs))
    err = torch.stack(rows)  # [T, repeats]
    sem = err.std(-1) / math.sqrt(err.shape[-1]) if err.shape[-1] > 1 else torch.zeros(len(rows))
    return err.mean(-1), sem
