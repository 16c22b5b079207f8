"""Accuracy over time: a network programmed with the baseline and with a result's strategies.

:func:`evaluate_model` answers the question users ask of a result: how good is my network on
the hardware at 1 s, 1 h, ..., 1 year after programming, with the converter I would have used
and with the strategies gpuwpo found? Each programming is :func:`gpuwpo.program_model` (the
device physics, or the reference toolkit's with ``physics="aihwkit"``); the user's metric
measures the programmed copy. Repeat r at time t programs both strategies from one noise stream
(``"accuracy"`` of :data:`gpuwpo.rng.STREAMS`, keyed by r and t), so their difference is paired:
its standard error is that of the per-repeat differences, far below either strategy's spread.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..checks import check_positive_int
from ..device.mapping import Recipe, as_recipe, check_mapping, describe_recipe
from ..device.physics import check_physics
from ..device.simulate import as_time_tensor
from ..rng import draw_seed, make_generator, stream_seed
from .program import program_model
from .result import NetworkResult
from .settings import mappings_from_settings, physics_from_settings

__all__ = ["evaluate_model", "ModelEvaluation", "STRATEGIES"]

#: The strategies :func:`evaluate_model` measures, in this order.
STRATEGIES = ("baseline", "optimised")


def _sem(values: torch.Tensor) -> torch.Tensor:
    """Standard error of the mean over the first axis: ``std (n - 1) / sqrt(n)``, [T]."""
    return values.std(0) / math.sqrt(values.shape[0])


@dataclass
class ModelEvaluation:
    """What :func:`evaluate_model` measured: a metric over time for two strategies, paired.

    Attributes:
        times: inference times in seconds after programming [T], in the order asked for.
        values: strategy (``"baseline"``, ``"optimised"``) -> the metric of every programming,
            ``[repeats, T]`` float64; row r of both strategies was programmed from the same
            noise.
        digital: the metric of the model itself (floating point, no analogue noise).
        physics: ``"device"`` or ``"aihwkit"``.
        metric_name: what the metric is (labels of the table and the figure).
        settings: what was used, as text (noise model, baseline converter, its mapping and
            the two in words, compensation).
    """

    times: list[float]
    values: dict[str, torch.Tensor]
    digital: float
    physics: str = "device"
    metric_name: str = "metric"
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def repeats(self) -> int:
        """Programmings per strategy and time."""
        return int(self.values[STRATEGIES[0]].shape[0])

    def mean(self, strategy: str) -> torch.Tensor:
        """Mean of ``strategy``'s metric at each time [T]."""
        return self._values(strategy).mean(0)

    def sem(self, strategy: str) -> torch.Tensor:
        """Standard error of that mean at each time [T] (std over repeats / sqrt(repeats))."""
        return _sem(self._values(strategy))

    @property
    def difference(self) -> torch.Tensor:
        """Optimised - baseline, repeat by repeat (paired) ``[repeats, T]``."""
        return self.values["optimised"] - self.values["baseline"]

    @property
    def difference_mean(self) -> torch.Tensor:
        """Mean paired difference optimised - baseline at each time [T]."""
        return self.difference.mean(0)

    @property
    def difference_sem(self) -> torch.Tensor:
        """Its standard error [T]: the spread of the per-repeat differences / sqrt(repeats)."""
        return _sem(self.difference)

    def _values(self, strategy: str) -> torch.Tensor:
        if strategy not in self.values:
            raise KeyError(f"no strategy {strategy!r}; there are {list(self.values)}")
        return self.values[strategy]

    def table(self) -> str:
        """A text table: per time, each strategy's mean +- standard error and the paired
        difference with its standard error."""
        against = self.settings.get("baseline_recipe")
        head = (f"{self.metric_name} over time, physics={self.physics!r}, {self.repeats} "
                f"programmings per strategy and time (mean +- standard error); digital "
                f"{self.digital:.4g}" + (f"; baseline: {against}" if against else ""))
        rows = [head, f"  {'time':>10} {'baseline':>20} {'optimised':>20} "
                      f"{'optimised - baseline':>24}"]
        bm, bs = self.mean("baseline"), self.sem("baseline")
        om, osem = self.mean("optimised"), self.sem("optimised")
        dm, ds = self.difference_mean, self.difference_sem
        for i, t in enumerate(self.times):
            rows.append(f"  {_time_label(t):>10} {float(bm[i]):10.4g} +- {float(bs[i]):<7.3g}"
                        f"{float(om[i]):10.4g} +- {float(osem[i]):<7.3g}"
                        f"{float(dm[i]):+13.4g} +- {float(ds[i]):<7.3g}")
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able figures: times, digital, and per strategy (and the difference) the values,
        means and standard errors."""
        out: dict[str, Any] = {"times": list(self.times), "digital": self.digital,
                               "physics": self.physics, "repeats": self.repeats,
                               "metric": self.metric_name, "settings": dict(self.settings)}
        for name in STRATEGIES:
            out[name] = {"mean": self.mean(name).tolist(), "sem": self.sem(name).tolist(),
                         "values": self.values[name].tolist()}
        out["difference"] = {"mean": self.difference_mean.tolist(),
                             "sem": self.difference_sem.tolist(),
                             "values": self.difference.tolist()}
        return out

    def plot(self, path=None, *, title: str | None = None, scale: float = 1.0):
        """The metric against time (log axis), both strategies with their 95 % intervals
        (mean +- 1.96 standard errors) and the digital value; saved to ``path`` if given.

        Drawn by :func:`gpuwpo.plots.accuracy_over_time` (needs matplotlib). ``scale``
        multiplies the values (100: fractions shown in percent).

        Returns:
            The matplotlib Figure.
        """
        # The figure belongs to gpuwpo.plots (which needs matplotlib): imported when a figure
        # is asked for (tests/test_layout.py allows this one lazy import upward).
        from .. import plots
        if title is None:
            title = (f"{self.metric_name} over time (physics={self.physics}): baseline vs "
                     f"optimised programming, {self.repeats} repeats")
        return plots.accuracy_over_time(self.times, self.values, reference=self.digital,
                                        path=path, title=title, interval="ci95", scale=scale,
                                        ylabel=self.metric_name)


def _time_label(t: float) -> str:
    # The plots' names for times (1 s, 1 h, 1 day, ...) without importing the interface layer.
    named = {1.0: "1 s", 60.0: "1 min", 3600.0: "1 h", 86400.0: "1 day", 2592000.0: "1 month",
             31536000.0: "1 year", 315360000.0: "10 years"}
    for value, name in named.items():
        if math.isclose(t, value, rel_tol=1e-6):
            return name
    return f"{t:g} s"


def _time_key(t: float) -> int:
    """The bits of ``t`` as a float64: a time's noise stream is keyed by the time itself, so its
    figures do not depend on which other times are asked for, nor on their order."""
    return struct.unpack("<q", struct.pack("<d", float(t)))[0]


def _metric(metric_fn: Callable[[nn.Module], Any], model: nn.Module, what: str) -> float:
    value = metric_fn(model)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"metric_fn must return a number, got {type(value).__name__} ({what})"
                        ) from None
    if not math.isfinite(number):
        raise ValueError(f"metric_fn returned {number} ({what}); it must be a finite number")
    return number


def evaluate_model(
    model: nn.Module,
    result: NetworkResult,
    metric_fn: Callable[[nn.Module], float],
    times: Sequence[float] | None = None,
    repeats: int = 10,
    *,
    physics: str | None = None,
    baseline=None,
    baseline_mapping: str | None = None,
    compensation=None,
    noise_model=None,
    generator: torch.Generator | int | None = None,
    metric_name: str = "metric",
    progress: Callable[[], None] | None = None,
) -> ModelEvaluation:
    """A network's metric over time, programmed with the baseline and with ``result``.

    For every repeat r and time t, the model is programmed twice with
    :func:`gpuwpo.program_model` -- every layer of ``result`` with the baseline (the baseline
    converter under the baseline's mapping: by default the one the run compared with), then
    with the result's own recipes -- drifted to t, and ``metric_fn`` measures each programmed
    copy. Both programmings of (r, t) draw from one noise stream (:data:`gpuwpo.rng.STREAMS`
    ``"accuracy"``, keyed by r and t), so the difference of the strategies is paired: layers
    whose strategy has as many devices per weight as the baseline (e.g. two pairs against
    DualPair) see exactly the same draws, and each layer's draws are its own (keyed by its name,
    :func:`gpuwpo.network.program.program_model`). Parameters that are not layers of ``result``
    (biases, norms) stay digital; ``model`` itself is not modified, and the programmed copies
    keep its mode (put it in ``eval()`` first for dropout and batch norm to infer).

    Args:
        model: the network whose tensors ``result`` names (a result from its state dict).
        result: a :class:`gpuwpo.NetworkResult` (``gpuwpo.load_result(path)``).
        metric_fn: ``metric_fn(programmed_model) -> float``, e.g. test accuracy in % on a
            held-out set; called under ``torch.no_grad()``, ``2 * repeats * T + 1`` times.
        times: inference times in seconds after programming (default: the result's
            ``t_steps``, 1 s .. 1 year for gpuwpo's defaults); figures come in this order.
        repeats: programmings per strategy and time (>= 2: standard errors need a spread).
        physics: ``"device"`` or ``"aihwkit"`` (default: what the result records).
        baseline, compensation, noise_model: default: what the result records (its baseline
            converter, drift compensation and device model). ``baseline`` may be a
            :class:`gpuwpo.device.mapping.Recipe` (a converter with its mapping).
        baseline_mapping: the mapping the baseline converter is programmed with
            (``"layer"`` or ``"columnwise"``); default: a given Recipe's own, else the one the
            result records (``settings.options.baseline_mapping``; ``"layer"`` for results
            written before the mapping was modelled), so that the comparison is the run's.
        generator: the run seed (an int), a generator to draw one from, or None for fresh
            entropy (:mod:`gpuwpo.rng`).
        metric_name: what the metric is, for the table and the figure.
        progress: called after each programming that has been measured (e.g. a progress bar's
            update).

    Returns:
        A :class:`ModelEvaluation`: values ``[repeats, T]`` per strategy, means, standard errors,
        the paired difference, ``.table()`` and ``.plot(path)``.

    Raises:
        TypeError: ``model`` is not an nn.Module, ``result`` not a NetworkResult, ``metric_fn``
            not callable or returning something that is not a number.
        ValueError: bad times, repeats < 2, an unknown physics or mapping (or a Recipe given
            with another ``baseline_mapping``), a layer of the result that the model lacks or
            has in another shape, a metric that is not finite.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"evaluate_model takes an nn.Module, got {type(model).__name__}")
    if not isinstance(result, NetworkResult):
        raise TypeError(f"result must be a gpuwpo NetworkResult (gpuwpo.load_result), got "
                        f"{type(result).__name__}")
    if not callable(metric_fn):
        raise TypeError(f"metric_fn must be callable (model -> float), got "
                        f"{type(metric_fn).__name__}")
    repeats = check_positive_int(repeats, "repeats")
    if repeats < 2:
        raise ValueError(f"repeats must be >= 2 (a standard error needs a spread), got {repeats}")
    recorded = physics_from_settings(result.settings)
    t_steps = as_time_tensor(recorded["t_steps"] if times is None else times,
                             dtype=torch.float64).tolist()
    physics = check_physics(recorded["physics"] if physics is None else physics)
    if baseline_mapping is not None:
        check_mapping(baseline_mapping)
    if not isinstance(baseline, Recipe):
        baseline_mapping = baseline_mapping or mappings_from_settings(
            result.settings)["baseline_mapping"]
    baseline = as_recipe(recorded["baseline"] if baseline is None else baseline,
                         baseline_mapping)
    noise_model = recorded["noise_model"] if noise_model is None else noise_model
    compensation = recorded["compensation"] if compensation is None else compensation
    if isinstance(generator, torch.Generator):
        seed = draw_seed(generator)  # on the generator's own device
    elif isinstance(generator, int) and not isinstance(generator, bool):
        seed = int(generator)
    else:
        seed = draw_seed(make_generator(generator))  # None: fresh entropy; else a TypeError
    strategies = {"baseline": {layer.name: baseline for layer in result.layers},
                  "optimised": result}
    values = {name: torch.empty(repeats, len(t_steps), dtype=torch.float64)
              for name in STRATEGIES}
    with torch.no_grad():
        for r in range(repeats):
            for i, t in enumerate(t_steps):
                # An int seed: program_model makes its generator on the model's own device.
                noise = stream_seed(seed, "accuracy", r, _time_key(t))
                # The result first: its programming checks the model's names and shapes before
                # any other work. Each programming makes its own generator from the int seed.
                for name in reversed(STRATEGIES):
                    programmed = program_model(model, strategies[name], noise_model, t,
                                               generator=noise, compensation=compensation,
                                               physics=physics)
                    values[name][r, i] = _metric(metric_fn, programmed,
                                                 f"{name}, repeat {r}, t={t:g} s")
                    if progress is not None:
                        progress()
        digital = _metric(metric_fn, model, "the digital model")
    return ModelEvaluation(
        times=t_steps, values=values, digital=digital, physics=physics,
        metric_name=str(metric_name),
        settings={"noise_model": repr(noise_model), "baseline": repr(baseline.converter),
                  "baseline_mapping": baseline.mapping,
                  "baseline_recipe": describe_recipe(baseline),
                  "compensation": repr(compensation)})
