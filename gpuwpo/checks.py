"""Input checks shared by every entry point, so that each is written (and worded) once."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["check_weights", "check_positive_int", "check_clip", "describe_values",
           "MAX_ABS_WEIGHT", "MIN_ABS_WEIGHT"]

#: The range of max|W| gpuwpo simulates (in float32, whose range is about 1e-38 .. 3e38: sums
#: over a layer and products with conductances need room). The weight error does not depend on
#: the weights' scale (docs/DESIGN.md section 2), so weights outside it lose nothing by being
#: rescaled; they are refused with a message that says so, never simulated into NaN.
MAX_ABS_WEIGHT = 1e32
MIN_ABS_WEIGHT = 1e-32


def check_clip(clip: object) -> float:
    """A clip fraction of max|W|: a real number in (0, 1] (1: no clipping)."""
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not math.isfinite(clip) \
            or not 0.0 < float(clip) <= 1.0:
        raise ValueError(f"clip must be a number in (0, 1] (a fraction of max|W|; 1 = no "
                         f"clipping), got {clip!r}")
    return float(clip)


def describe_values(t: Tensor, max_listed: int = 6,
                    summary: Callable[[Tensor], str] | None = None) -> str:
    """Short text of ``t`` for an error message: its values when it has at most ``max_listed``,
    else ``summary(t)`` (by default how many values it has)."""
    t = t.detach()
    if t.numel() <= max_listed:
        return str(t.cpu().tolist())
    return f"{t.numel()} values" if summary is None else summary(t)


def check_weights(weights: object, what: str = "weights", *,
                  allow_all_zero: bool = True) -> Tensor:
    """``weights`` as a real floating tensor, or a ValueError / TypeError naming ``what``.

    Refused: anything that is not a tensor, complex and boolean tensors, a 0-d tensor (a scalar
    is not a layer's weights), an empty tensor, NaN or infinite values, a largest magnitude
    outside :data:`MIN_ABS_WEIGHT` .. :data:`MAX_ABS_WEIGHT` (zeros aside), and (unless
    ``allow_all_zero``) a tensor of zeros only, which has nothing to program. Integer tensors are
    promoted to torch's default float dtype; floating tensors are returned as they are.
    """
    if not isinstance(weights, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(weights).__name__}")
    if weights.is_complex():
        raise ValueError(f"{what} are complex ({weights.dtype}); weights must be real numbers")
    if weights.dtype == torch.bool:
        raise ValueError(f"{what} are booleans; weights must be real numbers")
    if weights.ndim == 0:
        raise ValueError(f"{what} is a scalar (a 0-d tensor); give the layer's weight tensor")
    if weights.numel() == 0:
        raise ValueError(f"{what} are empty (shape {tuple(weights.shape)})")
    if not weights.is_floating_point():
        weights = weights.to(torch.get_default_dtype())
    finite = torch.isfinite(weights)
    if not bool(finite.all()):
        bad = weights[~finite]
        raise ValueError(f"{what} have {bad.numel()} NaN or infinite values "
                         f"({describe_values(bad)})")
    if not allow_all_zero and not bool((weights != 0).any()):
        raise ValueError(f"{what} are all zeros: there is nothing to program")
    top = float(weights.detach().abs().amax())
    if top > MAX_ABS_WEIGHT or 0 < top < MIN_ABS_WEIGHT:
        raise ValueError(f"{what} reach |W| = {top:.3g}, outside the {MIN_ABS_WEIGHT:g} .. "
                         f"{MAX_ABS_WEIGHT:g} gpuwpo simulates (in float32); rescale them: the "
                         f"weight error does not depend on the weights' scale")
    return weights


def check_positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and (not math.isfinite(value) or value != int(value))):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
