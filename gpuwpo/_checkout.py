"""Import support for running gpuwpo from a plain checkout (no install)."""

from __future__ import annotations


def register_checkout_kernels() -> None:
    """Make ``kernels/`` importable as ``gpuwpo.kernels`` from a plain checkout.

    An installed gpuwpo maps the repository's top-level ``kernels/`` to ``gpuwpo.kernels``
    (pyproject.toml). Run from a checkout on PYTHONPATH with no install (as on a machine that
    cannot install), that mapping does not exist; register the sibling folder instead, so that
    the Triton kernel is found rather than silently replaced by the torch path.
    """
    import importlib.util
    import os
    import sys

    if importlib.util.find_spec(__package__ + ".kernels") is not None:
        return
    init = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "kernels", "__init__.py")
    if not os.path.isfile(init):
        return
    spec = importlib.util.spec_from_file_location(
        __package__ + ".kernels", init, submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    sys.modules[__package__].kernels = module  # as the import system would


register_checkout_kernels()
