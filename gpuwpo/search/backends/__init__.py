"""Search backends: one objective, three interchangeable searches chosen by one flag.

Every backend takes a :class:`SearchProblem` (a batched loss over the unit hypercube, the layers
on the leftmost axis) and :class:`gpuwpo.search.options.SearchOptions`, calls the callback with an
:class:`IntermediateResult` after every generation, and returns a :class:`SearchOutcome`, with
one meaning of ``x``, ``fun``, ``history`` and the generation count for all
(:mod:`gpuwpo.search.backends.base`). Backends know nothing of the physics; the objective knows
nothing of the search. Each declares in ``accepts`` the options it honours; :func:`run_search`
refuses one given explicitly that it cannot honour.

* ``"torch"`` (default): differential evolution in torch (:mod:`gpuwpo.search.de`), all layers in
  one tensor program on the objective's device, noise-robust selection, checkpoint and resume.
* ``"scipy"``: scipy's differential evolution (vectorized, deferred updating), one search per
  layer stepped a generation at a time; the reference the torch engine is tested against.
* ``"evotorch"``: EvoTorch's CMA-ES, SNES or GA, or a DE written as an EvoTorch
  ``SearchAlgorithm`` (imported lazily), one searcher per layer; the DE checkpoints and resumes.
"""

from __future__ import annotations

from collections.abc import Callable

from ..options import SearchOptions, refuse_unsupported
from .base import IntermediateResult, SearchOutcome, SearchProblem

BACKENDS = ("torch", "evotorch", "scipy")

__all__ = ["BACKENDS", "IntermediateResult", "SearchOutcome", "SearchProblem", "run_search",
           "backend_module"]


def backend_module(backend: str):
    """The module of ``backend`` (its ``search`` and ``ACCEPTS``)."""
    if backend == "torch":
        from . import torch_backend as module
    elif backend == "scipy":
        from . import scipy_backend as module
    elif backend == "evotorch":
        from . import evotorch_backend as module
    else:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return module


def run_search(backend: str, problem: SearchProblem, options: SearchOptions | None = None, *,
               progress: Callable[[IntermediateResult], None] | None = None,
               stage=None, **kwargs) -> SearchOutcome:
    """Run the search ``backend`` ("torch", "evotorch" or "scipy") on ``problem``.

    ``options`` (or keyword arguments building them) are checked against what the backend
    honours first. ``stage``: a :class:`gpuwpo.search.checkpoint.Stage` of a run that saves or
    resumes (for a backend that checkpoints).
    """
    module = backend_module(backend)
    if options is None:
        options = SearchOptions.from_kwargs(kwargs, what=f"the {backend} backend")
    elif kwargs:
        options = options.replace(**kwargs)
    accepts = module.accepts(options)
    refuse_unsupported(options, backend, accepts)
    if stage is None:
        return module.search(problem, options, progress=progress)
    if "checkpoint" not in accepts:
        raise ValueError(f"the {backend} backend cannot checkpoint or resume a search")
    return module.search(problem, options, progress=progress, stage=stage)
