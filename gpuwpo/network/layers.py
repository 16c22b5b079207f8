"""Which tensors of a model or a checkpoint are layers to program (one rule, in one place)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from torch import Tensor, nn

__all__ = ["select_weights", "PROGRAMMABLE_MODULES"]

#: Module types whose ``weight`` is programmed by default (the crossbar-mapped layers).
PROGRAMMABLE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _patterns(value: str | Sequence[str] | None, what: str) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    for p in items:
        if not isinstance(p, str):
            raise TypeError(f"{what} must be a regular expression or a list of them, got {p!r}")
        try:
            re.compile(p)
        except re.error as err:
            raise ValueError(f"{what} pattern {p!r} is not a valid regular expression: {err}") \
                from err
    return items


def select_weights(
    model_or_weights: nn.Module | Mapping[str, Tensor],
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """The weights to program, by name, in the model's order.

    Candidates: for an ``nn.Module``, the ``weight`` parameter of every ``nn.Linear`` and
    ``nn.Conv1d/2d/3d`` module; for a mapping (a state_dict or name -> tensor), every tensor whose
    name ends in ``weight`` and that has at least 2 dimensions (1-D "weights" are norms' scales,
    not crossbar matrices). Then a name is kept when it matches any ``include`` pattern (default:
    all) and no ``exclude`` pattern; patterns are regular expressions applied with ``re.search``.

    Args:
        model_or_weights: an ``nn.Module``, a state_dict or a mapping name -> tensor.
        include, exclude: a regular expression or a list of them.

    Returns:
        name -> tensor (detached; for a module, sharing the parameters' storage).

    Raises:
        ValueError: nothing matches (the message names the patterns and the candidates).
        TypeError: an input that is neither a module nor a mapping.
    """
    inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")
    if isinstance(model_or_weights, nn.Module):
        candidates = {}
        for mod_name, module in model_or_weights.named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, PROGRAMMABLE_MODULES) and isinstance(weight, Tensor):
                name = f"{mod_name}.weight" if mod_name else "weight"
                candidates[name] = weight.detach()
        kind = "Linear/Conv weights"
    elif isinstance(model_or_weights, Mapping):
        candidates = {}
        for name, value in model_or_weights.items():
            if not isinstance(name, str):
                raise TypeError(f"weight names must be strings, got {name!r}")
            if isinstance(value, Tensor) and name.endswith("weight") and value.ndim >= 2:
                candidates[name] = value.detach()
        kind = "tensors named '*weight' with ndim >= 2"
    else:
        raise TypeError(f"expected an nn.Module, a state_dict or a mapping name -> tensor, got "
                        f"{type(model_or_weights).__name__}")
    selected = {
        name: w for name, w in candidates.items()
        if (not inc or any(re.search(p, name) for p in inc))
        and not any(re.search(p, name) for p in exc)
    }
    if not selected:
        listed = ", ".join(list(candidates)[:10]) + (" ..." if len(candidates) > 10 else "")
        raise ValueError(
            f"no layers to program: include={inc or None} exclude={exc or None} matched none of "
            f"the {len(candidates)} {kind}" + (f" ({listed})" if candidates else "")
        )
    return selected

