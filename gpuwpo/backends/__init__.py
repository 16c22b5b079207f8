"""Search backends: one objective, three interchangeable searches chosen by one flag.

Every backend takes a :class:`SearchProblem` (a batched loss over the unit hypercube, the layers
on the leftmost axis) and returns a :class:`SearchOutcome`. Backends know nothing of the physics;
the objective knows nothing of the search.

* ``"torch"`` (default): differential evolution in torch (:mod:`gpuwpo.de`), all layers in one
  tensor program on the objective's device, noise-robust selection, checkpoint and resume.
* ``"scipy"``: :func:`scipy.optimize.differential_evolution` (vectorized, deferred updating),
  layers one after another; the reference the torch engine is tested against.
* ``"evotorch"``: the objective as an EvoTorch vectorized ``Problem``, searched by a DE written as
  an EvoTorch ``SearchAlgorithm`` or by EvoTorch's CMA-ES, SNES or GA (imported lazily).
"""

from __future__ import annotations

from .base import SearchOutcome, SearchProblem

BACKENDS = ("torch", "evotorch", "scipy")

__all__ = ["BACKENDS", "SearchOutcome", "SearchProblem", "run_search"]


def run_search(backend: str, problem: SearchProblem, **options) -> SearchOutcome:
    """Run the search ``backend`` ("torch", "evotorch" or "scipy") on ``problem``."""
    if backend == "torch":
        from .torch_backend import search
    elif backend == "scipy":
        from .scipy_backend import search
    elif backend == "evotorch":
        from .evotorch_backend import search
    else:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return search(problem, **options)
