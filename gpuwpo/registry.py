"""One registry: every device model, converter and compensation saves and restores itself.

A class that derives from :class:`Serializable` is registered under its name when it is defined
(gpuwpo's own under their class name, others under ``module.QualName``) and says, in
``_params()``, the constructor arguments that rebuild it. :func:`to_dict` gives
``{"class": name, **params}`` (plain JSON values), :func:`from_dict` rebuilds the object from such
a record, looking the class up in the registry only: a results file never names code to import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["Serializable", "to_dict", "from_dict", "registered"]

_REGISTRY: dict[str, type] = {}


def _key(cls: type) -> str:
    module = cls.__module__ or ""
    if module == "gpuwpo" or module.startswith("gpuwpo."):
        return cls.__name__
    return f"{module}.{cls.__qualname__}"


class Serializable:
    """Mixin: ``to_dict()`` / ``from_dict()`` through the registry.

    Subclasses define ``_params()``: a dict of constructor keyword arguments with JSON values
    (numbers, strings, bools, None, lists and dicts of them) that rebuild an equal object.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Interfaces and shared bases (``_abstract = True`` in their own body) are not records.
        if not cls.__dict__.get("_abstract", False):
            _REGISTRY[_key(cls)] = cls

    def _params(self) -> dict[str, Any]:
        raise NotImplementedError(
            f"{type(self).__name__} does not say how to save itself: define _params() returning "
            "its constructor arguments")

    def to_dict(self) -> dict[str, Any]:
        """``{"class": name, **constructor arguments}``, JSON-able."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]):
        """Rebuild an object of this class (or of the class the record names)."""
        obj = from_dict(record)
        if not isinstance(obj, cls):
            raise ValueError(f"record describes a {type(obj).__name__}, not a {cls.__name__}")
        return obj


def registered() -> dict[str, type]:
    """Name -> class of everything that can be saved (a copy)."""
    return dict(_REGISTRY)


def _check_json(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value!r}; only finite numbers can be saved")
        return value
    if isinstance(value, (list, tuple)):
        return [_check_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _check_json(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"{where} is a {type(value).__name__}, which a results file cannot hold")


def to_dict(obj: Any) -> dict[str, Any]:
    """``{"class": name, **params}`` of a registered object."""
    cls = type(obj)
    key = _key(cls)
    if _REGISTRY.get(key) is not cls:
        raise TypeError(f"{cls.__name__} is not a registered gpuwpo class (it must derive from "
                        "gpuwpo.registry.Serializable)")
    params = _check_json(obj._params(), f"{cls.__name__} parameter")
    return {"class": key, **params}


def from_dict(record: Mapping[str, Any], *, what: str = "object") -> Any:
    """The object a :func:`to_dict` record describes.

    Raises:
        ValueError: not a mapping, no or an unknown "class", or arguments the class refuses
            (the message names the class and passes on the class's own).
    """
    if not isinstance(record, Mapping):
        raise ValueError(f"{what} must be an object with a 'class', got {type(record).__name__}")
    name = record.get("class")
    if not isinstance(name, str):
        raise ValueError(f"{what} has no 'class' naming what it is")
    cls = _REGISTRY.get(name)
    if cls is None:
        known = ", ".join(sorted(k for k in _REGISTRY if "." not in k))
        raise ValueError(f"{what} names an unknown class {name!r} (known: {known})")
    params = {k: v for k, v in record.items() if k != "class"}
    try:
        return cls(**params)
    except TypeError as err:
        raise ValueError(f"{what} ({name}) has arguments the class does not take: {err}") from err
    except ValueError as err:
        raise ValueError(f"{what} ({name}): {err}") from err
