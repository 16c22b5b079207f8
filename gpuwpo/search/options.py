"""Every setting of a search, its default and its check, in one place.

:class:`SearchOptions` is what :class:`gpuwpo.WeightProgrammingOptimizer` takes as keywords
(and what the command line and the benchmarks take their defaults from). It remembers which
options were given explicitly: a search backend declares the options it honours
(``ACCEPTS`` in each backend module), and one given explicitly that the backend cannot honour is
refused with a ValueError naming it, never ignored.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ..checks import check_clip, check_positive_int
from ..device.mapping import check_mapping
from .strategy import check_clip_range

__all__ = ["SearchOptions", "SEARCH_FIELDS", "DE_FIELDS", "de_accepts", "refuse_unsupported"]

#: Options that steer the search itself (the rest shape the strategy space, the objective and the
#: choice of the answer, which every backend shares).
SEARCH_FIELDS = frozenset({
    "strategy", "popsize", "maxiter", "tol", "atol", "mutation", "recombination", "seed",
    "x_init", "x0", "noise_robust", "algorithm", "checkpoint", "checkpoint_every", "resume",
    "callback",
})


#: What every differential-evolution backend honours.
DE_FIELDS = frozenset({"strategy", "popsize", "maxiter", "tol", "atol", "mutation",
                       "recombination", "seed", "x_init", "x0", "callback"})


def de_accepts(options: SearchOptions, extra: frozenset[str] = frozenset()) -> frozenset[str]:
    """A DE backend's options: :data:`DE_FIELDS`, ``extra``, and ``algorithm`` when it is "de"."""
    return DE_FIELDS | extra | ({"algorithm"} if options.algorithm == "de" else frozenset())


def _number(o: SearchOptions, name: str, *, low: float, high: float | None = None,
            low_open: bool = False) -> None:
    v = getattr(o, name)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (
        v > low if low_open else v >= low) and (high is None or v <= high)
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"{name} must be a number {bound}" +
                         (f" and <= {high}" if high is not None else "") + f", got {v!r}")


@dataclass(frozen=True)
class SearchOptions:
    """The settings of a weight-programming search, with their defaults.

    Strategy space (docs/DESIGN.md section 4): ``nbins`` grid points per half (6), ``g_err``
    over/under-programming allowance as a fraction of g_max - g_min (0), ``f_min``/``f_max`` range
    of free significance factors (0.1, 5), ``use_max_kw`` (False), ``clip`` (1: the reference's
    grid over max|W|; below 1 the programs clip the weights at ``clip * max|W|``, a gpuwpo
    extension for heavy-tailed layers, docs/GUIDE.md, "Clipping"), ``clip_range`` (None; or
    ``(low, high)``, 0 < low <= high <= 1: the clip is searched per layer, one more coordinate
    at the end of x, relative to each row's max|W| under the per-column mapping; the fixed
    ``clip`` must then stay 1).

    The mapping (docs/DESIGN.md section 5c, :mod:`gpuwpo.device.mapping`): ``mapping`` the
    strategies' ("columnwise": each output row scaled to its own max|W| before the converter and
    back in digital, what aihwkit's inference presets and its example 33 deploy; or "layer",
    one scale per layer, the reference optimiser's), ``baseline_mapping`` the baseline
    converter's ("columnwise": compare against what users deploy). When either is "columnwise"
    the test tiles are sampled by rows and the choice of each layer's answer offers the
    standard converters under both mappings.

    Objective: ``test_in_features``/``test_out_features`` the test tile (512 x 20),
    ``kernel`` ("auto"), ``memory_budget`` (None: the device's default).

    The answer: ``loss_margin`` the margin to beat the baseline by (0.125),
    ``baseline_iterations`` programmings of the baseline (100), ``validation_repeats`` fresh
    programmings of the answer (100), ``polish`` a local L-BFGS-B step on frozen noise (True)
    with ``polish_maxiter`` iterations (50), ``standard_starts`` the standard converters the
    strategy space can express (the baseline's program, N-pair programs over a grid of F and
    k_w) in the initial population and among the contenders of the final choice (True).

    The search (backends honour what they declare): ``strategy`` ("best1bin"), ``popsize`` (5,
    times D), ``maxiter`` (50), ``tol`` (0), ``atol`` (0.02), ``mutation`` (0.1, or a (low, high)
    dithering range), ``recombination`` (0.3), ``seed`` (100), ``x_init`` ("latinhypercube" or
    a population tensor), ``x0`` (a warm start [D] or [B, D]), ``noise_robust`` (parents
    re-evaluated with their trials, True), ``algorithm`` (the evotorch backend's: "de"),
    ``checkpoint``/``checkpoint_every`` (10)/``resume`` (one file, :mod:`gpuwpo.search.checkpoint`;
    the torch backend's), ``callback`` (called with an
    :class:`gpuwpo.search.backends.IntermediateResult` after every generation; True or StopIteration
    stops the run).

    Reporting: ``disp`` a progress bar (True).

    The search defaults are chosen from measured reduction-versus-candidates curves
    (``bench/quality.py``; docs/RESULTS.md, "Defaults"): the standard starts carry most of the gain,
    and the reference toolkit's greedy operators (best1bin, mutation 0.1, recombination 0.3)
    improve on them fastest, so the population is 5 x D for 50 generations instead of the
    reference's 100 x D for 200 (which :mod:`gpuwpo.wpo` keeps).
    """

    nbins: int = 6
    g_err: float = 0.0
    f_min: float = 0.1
    f_max: float = 5.0
    use_max_kw: bool = False
    clip: float = 1.0
    clip_range: tuple[float, float] | None = None
    mapping: str = "columnwise"
    baseline_mapping: str = "columnwise"
    test_in_features: int | None = 512
    test_out_features: int | None = 20
    kernel: str = "auto"
    memory_budget: int | None = None
    loss_margin: float = 0.125
    baseline_iterations: int = 100
    validation_repeats: int = 100
    polish: bool = True
    polish_maxiter: int = 50
    standard_starts: bool = True
    strategy: str = "best1bin"
    popsize: int = 5
    maxiter: int = 50
    tol: float = 0.0
    atol: float = 0.02
    mutation: float | tuple[float, float] = 0.1
    recombination: float = 0.3
    seed: int = 100
    x_init: Any = "latinhypercube"
    x0: Any = None
    noise_robust: bool = True
    algorithm: str = "de"
    checkpoint: Any = None
    checkpoint_every: int = 10
    resume: Any = None
    callback: Callable | None = None
    disp: bool = True
    explicit: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names (the optimizer's keywords)."""
        return tuple(f.name for f in fields(cls) if f.name != "explicit")

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], *, what: str = "WeightProgrammingOptimizer"
                    ) -> SearchOptions:
        """Options from keywords, remembering which were given; unknown ones are a TypeError."""
        names = set(cls.names())
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"{what} got unexpected keyword argument(s): {', '.join(unknown)} "
                            f"(its options: {', '.join(cls.names())})")
        return cls(**dict(kwargs), explicit=frozenset(kwargs))

    @classmethod
    def given(cls, options: SearchOptions | None, kwargs: Mapping[str, Any], *,
              what: str = "WeightProgrammingOptimizer") -> SearchOptions:
        """The options of a call that takes ``options=`` (a ready :class:`SearchOptions`, or
        None) and keywords: the keywords alone, or ``options`` changed by them (given
        explicitly). An unknown keyword is a TypeError naming it, ``options`` of another type
        too."""
        if options is None:
            return cls.from_kwargs(kwargs, what=what)
        if not isinstance(options, SearchOptions):
            raise TypeError(f"options must be a gpuwpo.search.options.SearchOptions, got "
                            f"{type(options).__name__}")
        cls.from_kwargs(kwargs, what=what)  # names the unknown ones
        return options.replace(**kwargs) if kwargs else options

    def replace(self, **changes: Any) -> SearchOptions:
        """A copy with ``changes`` (given explicitly)."""
        return dataclasses.replace(self, **changes, explicit=self.explicit | frozenset(changes))

    def as_dict(self) -> dict[str, Any]:
        """Name -> value of every option."""
        return {name: getattr(self, name) for name in self.names()}

    def __post_init__(self) -> None:
        from .de import STRATEGIES

        for name in ("popsize", "maxiter", "nbins", "checkpoint_every", "polish_maxiter"):
            check_positive_int(getattr(self, name), name)
        for name in ("baseline_iterations", "validation_repeats"):
            check_positive_int(getattr(self, name), name, minimum=2)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        _number(self, "loss_margin", low=0.0)
        _number(self, "g_err", low=0.0, high=1.0)
        if self.g_err >= 1.0:
            raise ValueError(f"g_err is a fraction of g_max - g_min in [0, 1), got {self.g_err!r}")
        _number(self, "f_min", low=0.0, low_open=True)
        _number(self, "f_max", low=0.0, low_open=True)
        if not self.f_min < self.f_max:
            raise ValueError(f"f_min must be < f_max, got {self.f_min!r} and {self.f_max!r}")
        check_clip(self.clip)
        clip_range = check_clip_range(self.clip_range)
        if clip_range is not None and self.clip != 1.0:
            raise ValueError(f"give either a fixed clip ({self.clip!r}) or a searched clip_range "
                             f"{self.clip_range!r}, not both")
        object.__setattr__(self, "clip_range", clip_range)  # as a tuple of floats
        check_mapping(self.mapping)
        try:
            check_mapping(self.baseline_mapping)
        except ValueError as err:
            raise ValueError(f"baseline_{err}") from None
        _number(self, "tol", low=0.0)
        _number(self, "atol", low=0.0)
        _number(self, "recombination", low=0.0, high=1.0)
        m = self.mutation
        pair = m if isinstance(m, (tuple, list)) else (m, m)
        if (len(pair) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                      and 0 <= float(v) < 2 for v in pair)
                or pair[0] > pair[1]):
            raise ValueError(f"mutation must be in [0, 2) or a (low, high) pair in [0, 2), "
                             f"got {m!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of "
                             f"{', '.join(STRATEGIES)}")
        if self.callback is not None and not callable(self.callback):
            raise ValueError("callback must be callable")
        if (self.test_in_features is None) != (self.test_out_features is None):
            raise ValueError("give both test_in_features and test_out_features, or neither")
        if self.test_in_features is not None:
            check_positive_int(self.test_in_features, "test_in_features")
            check_positive_int(self.test_out_features, "test_out_features")
        if self.memory_budget is not None:
            check_positive_int(self.memory_budget, "memory_budget")
        for name in ("use_max_kw", "polish", "standard_starts", "noise_robust", "disp"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")


def refuse_unsupported(options: SearchOptions, backend: str, accepts: frozenset[str]) -> None:
    """Refuse, naming it, a search option given explicitly that ``backend`` cannot honour."""
    refused = sorted((options.explicit & SEARCH_FIELDS) - accepts)
    if refused:
        values = ", ".join(f"{name}={getattr(options, name)!r}" for name in refused)
        raise ValueError(f"the {backend} backend cannot honour {values}; it takes "
                         f"{', '.join(sorted(accepts))}")
