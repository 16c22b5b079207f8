"""Figures of a weight-programming result: programs, weight errors, convergence, accuracy.

Every function returns a matplotlib ``Figure`` and, given ``path``, also saves it there (PNG by
the file's extension, 150 dpi). matplotlib is an optional dependency (``pip install
gpuwpo[plot]``) and is imported only when a figure is drawn, with the non-interactive Agg
backend, so that plotting works on a headless server and importing gpuwpo never needs it.

Units: conductances in micro-Siemens (uS), times in seconds after programming (log axis, with
1 s, 1 h, 1 day, 1 month and 1 year marked), weights normalised by each layer's max|W| (by each
row's max|w| where a layer's recipe maps its rows each to its own scale: the columnwise
mapping, :mod:`gpuwpo.device.mapping`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .checks import check_weights
from .rng import stream_generator

if TYPE_CHECKING:  # imported lazily at run time: matplotlib is optional
    from matplotlib.figure import Figure

__all__ = [
    "programming_curves",
    "weight_error_histograms",
    "convergence",
    "accuracy_over_time",
    "time_label",
]

#: Named inference times: the ticks of every time axis.
NAMED_TIMES = {1.0: "1 s", 60.0: "1 min", 3600.0: "1 h", 86400.0: "1 day",
               2592000.0: "1 month", 31536000.0: "1 year", 315360000.0: "10 years"}

# One colour per strategy, the same in every figure: baseline grey-blue, optimised orange.
BASELINE_COLOR = "tab:blue"
OPTIMISED_COLOR = "tab:orange"


def _pyplot():
    """matplotlib.pyplot on the Agg backend, or an ImportError that says what to install."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("plotting needs matplotlib: pip install gpuwpo[plot]") from err
    # Agg never opens a window: figures are files (headless servers, tests, the CLI).
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, path: str | os.PathLike | None) -> Figure:
    """Save ``fig`` to ``path`` (format from the extension, PNG without one), atomically."""
    if path is not None:
        import io

        from ._files import atomic_write

        directory = os.path.dirname(os.fspath(path))
        if directory:
            os.makedirs(directory, exist_ok=True)
        ext = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext, dpi=150, bbox_inches="tight")
        atomic_write(path, buffer.getvalue())
    return fig


def time_label(t: float) -> str:
    """A readable name for an inference time in seconds (``3600`` -> ``"1 h"``)."""
    for value, name in NAMED_TIMES.items():
        if math.isclose(t, value, rel_tol=1e-6):
            return name
    if t < 60:
        return f"{t:g} s"
    if t < 86400:
        return f"{t / 3600:.3g} h"
    return f"{t / 86400:.3g} days"


def _log_time_axis(ax, t_steps: Sequence[float]) -> None:
    """Log time axis in seconds with the named times as ticks (t = 0 cannot sit on a log axis)."""
    ax.set_xscale("log")
    ax.set_xlabel("time after programming (s, log scale)")
    ticks = [t for t in t_steps if t > 0]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{time_label(t)}\n({t:.2g} s)" if t >= 60 else time_label(t)
                        for t in ticks], fontsize=8)
    ax.minorticks_off()


def _recipes(result_or_converters: Any) -> dict[str, Any]:
    """Layer name -> :class:`gpuwpo.device.mapping.Recipe` of a NetworkResult or of a mapping
    name -> converter or Recipe (a bare converter: the layer-wise mapping)."""
    from .device.mapping import as_recipe

    if hasattr(result_or_converters, "recipes"):
        return dict(result_or_converters.recipes())
    if isinstance(result_or_converters, Mapping):
        return {name: as_recipe(value) for name, value in result_or_converters.items()}
    raise TypeError(f"expected a NetworkResult or a mapping name -> converter, got "
                    f"{type(result_or_converters).__name__}")


def _default_baseline():
    from .device.converters import DualPairConductanceConverter

    return DualPairConductanceConverter(f_lst=[1.0, 1.0], g_min=0.0, g_max=25.0)


def _baseline(baseline, result_or_converters: Any):
    """The baseline recipe: the given converter or Recipe (a bare converter: the layer-wise
    mapping); None: a result's recorded baseline (its converter under its baseline mapping),
    else DualPair f=[1, 1], 0..25 uS, layer-wise."""
    from .device.mapping import as_recipe

    if baseline is None:
        recorded = getattr(result_or_converters, "baseline", None)
        return as_recipe(_default_baseline() if recorded is None else recorded)
    return as_recipe(baseline)


def _weight_axis(mapping: str) -> str:
    """The normalised weight axis of a program under ``mapping``: a program spans each row's
    max|w| under the columnwise mapping, the layer's under the layer-wise one."""
    return "normalised weight w / row max|w|" if mapping == "columnwise" else \
        "normalised weight w / max|W|"


def _recipe_title(recipe) -> str:
    """The mapping (and the clip, where the program clips) of a recipe, for a title."""
    from .device.mapping import describe_mapping

    clip = float(getattr(recipe.converter, "clip", 1.0))
    return describe_mapping(recipe.mapping) + (f", clip {clip:g}" if clip != 1.0 else "")


def _curves(converter, points: int = 401) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Conductances [2K, points] of ``converter`` on w/max|W| = linspace(-1, 1, points)."""
    w = torch.linspace(-1.0, 1.0, points, dtype=torch.float64)
    g, params = converter.convert_to_conductances(w)
    if g.shape[0] == 1:
        # One device per weight, the sign kept digitally (Fusion): drawn as the pair it stands
        # for, the device on the side of the weight's sign.
        zero = torch.zeros_like(g[0])
        sides = (torch.where(w > 0, g[0], zero), torch.where(w < 0, g[0], zero))
        return w, torch.stack(sides), [1.0]
    return w, g, [float(v) for v in params["f"].reshape(-1)]


# --------------------------------------------------------------------------------------------
# Programming curves
# --------------------------------------------------------------------------------------------


def programming_curves(
    result_or_converters: Any,
    baseline=None,
    *,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Conductances G+_k(w), G-_k(w) of every pair: baseline (left) beside optimised (right).

    One row per layer; the weight axis is normalised by the layer's max|W|, or by each row's
    max|w| under the columnwise mapping (a program is defined on the grid linspace(-max|W|,
    max|W|, L) of the weights its converter is given, so it has the same shape for every layer
    size). A clipping program spans ``clip`` of it and is flat beyond. G+ solid, G- dashed, one
    colour per pair; the significance factors f_k are in the legend; each panel's title says
    its mapping (and clip).

    Args:
        result_or_converters: a :class:`gpuwpo.network.NetworkResult` or a mapping layer name ->
            converter or :class:`gpuwpo.device.mapping.Recipe` (one program each).
        baseline: the baseline converter or Recipe (default: a result's recorded baseline
            under its recorded mapping, else DualPair f=[1, 1], 0..25 uS, layer-wise).
        path: where to save the figure (optional).

    Returns:
        The figure: 2 axes per layer, 2K lines per axes.
    """
    plt = _pyplot()
    recipes = _recipes(result_or_converters)
    baseline = _baseline(baseline, result_or_converters)
    rows = len(recipes)
    fig, axes = plt.subplots(rows, 2, figsize=(10, 3.2 * rows), squeeze=False, sharey=True)
    bw, bg, bf = _curves(baseline.converter)
    base_name = type(baseline.converter).__name__.removesuffix("ConductanceConverter")
    for row, (name, recipe) in enumerate(recipes.items()):
        w, g, f = _curves(recipe.converter)
        for col, (title, used, ww, gg, ff) in enumerate(
                ((f"baseline {base_name}", baseline, bw, bg, bf),
                 ("optimised", recipe, w, g, f))):
            ax = axes[row, col]
            for k in range(gg.shape[0] // 2):
                ax.plot(ww, gg[2 * k], color=f"C{k}", lw=1.8, label=f"G+ pair {k}")
                ax.plot(ww, gg[2 * k + 1], color=f"C{k}", lw=1.8, ls="--", label=f"G- pair {k}")
            factors = ", ".join(f"{v:.2f}" for v in ff)
            ax.set_title(f"{name}: {title} (f = {factors})\n{_recipe_title(used)}", fontsize=10)
            ax.set_xlabel(_weight_axis(used.mapping))
            ax.grid(alpha=0.3)
        axes[row, 0].set_ylabel("target conductance (uS)")
    # One legend for all panels (the curves fill each panel: a legend inside would hide them).
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=9,
               bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.2 * rows)))
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Weight errors over time
# --------------------------------------------------------------------------------------------


def _normalised_errors(weights: torch.Tensor, recipe, noise_model, t_steps, repeats,
                       generator, compensation, physics="device") -> torch.Tensor:
    """(effective - W) / max|W| of every weight, [T, repeats * N]: the layer simulated as the
    crossbar holds it (:func:`gpuwpo.network.layers.as_matrix`) under its recipe."""
    from .device.simulate import simulate_weights
    from .network.layers import as_matrix

    # Checked by weight_error_histograms.
    w = as_matrix(weights.detach()).to("cpu", torch.float32)
    eff = simulate_weights(w, recipe, noise_model, t_steps, compensation, repeats=repeats,
                           generator=generator, physics=physics)  # [R, T, out, in]
    err = (eff - w) / w.abs().max()
    return err.transpose(0, 1).reshape(len(t_steps), -1)


def weight_error_histograms(
    result_or_converters: Any,
    weights: Mapping[str, torch.Tensor],
    t_steps: Sequence[float],
    *,
    noise_model=None,
    baseline=None,
    compensation=None,
    physics: str = "device",
    repeats: int = 3,
    seed: int = 0,
    bins: int = 80,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Distribution of the weight error at each time: baseline and optimised.

    Rows are layers, columns time steps; each axes overlays the baseline's and the optimised
    strategy's histograms (same bins, density) of the error of the effective weights
    (``alpha_t W_t``, times each row's digital scale under the columnwise mapping) normalised by
    the layer's max|W|, with each one's RMS error in the legend. The errors come from
    :func:`gpuwpo.simulate_weights` (programming noise, drift, read noise, ideal global drift
    compensation unless ``compensation`` is given), ``repeats`` programmings of the whole layer,
    each layer under its recipe (its converter and mapping) and the baseline under its own.

    Args:
        result_or_converters: a NetworkResult or a mapping layer name -> converter or Recipe.
        weights: layer name -> its weight tensor (at least the layers of the result).
        t_steps: inference times in seconds [T].
        noise_model: the PCM model (default PCMLikeNoiseModel(g_max=25)).
        baseline: the baseline converter or Recipe (default: a result's recorded baseline under
            its recorded mapping, else DualPair f=[1, 1], 0..25 uS, layer-wise).
        compensation: drift compensation (default ideal global).
        physics: "device" or "aihwkit" (see :mod:`gpuwpo.device.physics`).
        repeats: independent programmings pooled per histogram.
        seed: seed of the noise: its stream ``"weight_errors"`` (:data:`gpuwpo.rng.STREAMS`),
            one generator, both strategies drawn in turn.
        path: where to save the figure (optional).

    Returns:
        The figure: one axes per (layer, time step).
    """
    from .device.noise import PCMLikeNoiseModel

    plt = _pyplot()
    recipes = _recipes(result_or_converters)
    missing = [name for name in recipes if name not in weights]
    if missing:
        raise ValueError(f"no weights for layer(s) {missing}; the weights hold "
                         f"{list(weights)[:10]}")
    shapes = {layer.name: tuple(layer.shape) for layer in getattr(result_or_converters,
                                                                    "layers", [])}
    for name in recipes:
        w = check_weights(weights[name], f"layer {name!r}")
        if name in shapes and tuple(w.shape) != shapes[name]:
            raise ValueError(f"layer {name!r} has shape {tuple(w.shape)}, the result was made "
                             f"for {shapes[name]}")
    noise_model = PCMLikeNoiseModel(g_max=25.0) if noise_model is None else noise_model
    baseline = _baseline(baseline, result_or_converters)
    t_steps = [float(t) for t in t_steps]
    gen = stream_generator(int(seed), "weight_errors")
    rows, cols = len(recipes), len(t_steps)
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols + 0.6, 2.5 * rows + 0.6),
                             squeeze=False, sharex="row")
    for row, (name, recipe) in enumerate(recipes.items()):
        w = weights[name]
        base_err = _normalised_errors(w, baseline, noise_model, t_steps, repeats, gen,
                                      compensation, physics)
        opt_err = _normalised_errors(w, recipe, noise_model, t_steps, repeats, gen, compensation,
                                     physics)
        # Common bins per layer, wide enough for the bulk of both (the extreme tails would
        # squeeze the histograms into a spike).
        both = torch.cat([base_err.reshape(-1), opt_err.reshape(-1)])
        lim = float(both.abs().quantile(0.999)) if both.numel() <= 16_000_000 else \
            float(both.abs().max())
        edges = torch.linspace(-lim, lim, bins + 1).numpy()
        for col, t in enumerate(t_steps):
            ax = axes[row, col]
            for err, label, color in (
                    (base_err[col], f"baseline, {baseline.mapping}", BASELINE_COLOR),
                    (opt_err[col], f"optimised, {recipe.mapping}", OPTIMISED_COLOR)):
                rms = float(err.square().mean().sqrt())
                ax.hist(err.numpy(), bins=edges, density=True, histtype="step", lw=1.5,
                        color=color, label=f"{label} (RMS {rms:.3f})")
            ax.set_title(f"{name}, t = {time_label(t)}", fontsize=9)
            ax.set_ylim(top=ax.get_ylim()[1] * 1.4)  # head room for the legend
            ax.legend(fontsize=7, loc="upper right")
            ax.tick_params(labelsize=7)
            ax.set_yticks([])
            if row == rows - 1:
                ax.set_xlabel("(effective W - W) / max|W|", fontsize=8)
        axes[row, 0].set_ylabel("density", fontsize=8)
    fig.suptitle("Weight error after drift compensation (baseline vs optimised)")
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Convergence
# --------------------------------------------------------------------------------------------


def convergence(result: Any, *, path: str | os.PathLike | None = None) -> Figure:
    """Best TNMSE per generation of every layer, with its baseline's TNMSE as a dashed line.

    The in-search best is optimistic (the minimum of noisy evaluations); the validated TNMSE
    with fresh noise is marked at the right end as a dot with its 95% interval.

    Args:
        result: a :class:`gpuwpo.network.NetworkResult`.
        path: where to save the figure (optional).

    Returns:
        The figure: one axes; per layer a baseline line and a history line (a global strategy,
        whose layers share one history, draws that history once).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # A global strategy repeats the pooled search's history for every layer: draw it once.
    histories = [list(layer.history) for layer in result.layers]
    shared = len(histories) > 1 and all(h == histories[0] for h in histories)
    for i, (layer, history) in enumerate(zip(result.layers, histories)):
        color = f"C{i % 10}"
        if history and not (shared and i > 0):
            label = "global strategy: search best" if shared else f"{layer.name}: search best"
            ax.plot(range(1, len(history) + 1), history, color="k" if shared else color,
                    lw=1.8, label=label)
        ax.axhline(layer.baseline_tnmse, color=color, ls="--", lw=1.2,
                   label=f"{layer.name}: baseline {layer.baseline_tnmse:.4f}")
        lo, hi = layer.tnmse_ci95
        x_end = len(history) if history else 1
        ax.errorbar([x_end], [layer.tnmse], yerr=[[layer.tnmse - lo], [hi - layer.tnmse]],
                    fmt="o", color=color, ms=5, capsize=3)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("generation")
    ax.set_ylabel("TNMSE (normalised weight error, lower is better)")
    ax.set_title("Convergence (dots: validated TNMSE with fresh noise, 95% CI)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Accuracy over time
# --------------------------------------------------------------------------------------------


def accuracy_over_time(
    t_steps: Sequence[float],
    accuracies: Mapping[str, Any],
    *,
    reference: float | None = None,
    path: str | os.PathLike | None = None,
    title: str = "Test accuracy over time",
    interval: str = "std",
    scale: float = 100.0,
    ylabel: str = "test accuracy (%)",
) -> Figure:
    """Mean accuracy (or any metric) and its spread over time, one line per strategy.

    Args:
        t_steps: inference times in seconds [T] (> 0: the axis is logarithmic).
        accuracies: strategy name -> values [repeats, T] (any array); plotted times ``scale``
            (by default fractions in [0, 1] shown in percent).
        reference: the digital (floating-point) value, drawn as a dotted line (times ``scale``).
        path: where to save the figure (optional).
        title: the axes' title.
        interval: the band around each mean: ``"std"`` (+- one standard deviation of the
            repeats: how much one programming varies) or ``"ci95"`` (+- 1.96 standard errors:
            where the mean lies; needs >= 2 repeats).
        scale: factor from the values to the plotted unit (100: fractions to percent; 1: the
            values as they are).
        ylabel: the y axis' label.

    Returns:
        The figure: one axes, one line per strategy (plus one for ``reference``) and one band
        per strategy.

    Raises:
        ValueError: an unknown ``interval``, or ``"ci95"`` with a single repeat.
    """
    if interval not in ("std", "ci95"):
        raise ValueError(f"interval must be 'std' or 'ci95', got {interval!r}")
    plt = _pyplot()
    t = [float(v) for v in t_steps]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"baseline": BASELINE_COLOR, "optimised": OPTIMISED_COLOR}
    for i, (name, acc) in enumerate(accuracies.items()):
        a = torch.as_tensor(acc, dtype=torch.float64).reshape(-1, len(t)) * scale
        n = a.shape[0]
        mean = a.mean(0)
        std = a.std(0) if n > 1 else torch.zeros_like(mean)
        if interval == "ci95":
            if n < 2:
                raise ValueError(f"a 95 % interval needs >= 2 repeats; {name!r} has {n}")
            half, what = 1.96 * std / math.sqrt(n), "95 % interval"
        else:
            half, what = std, "std"
        color = colors.get(name, f"C{i + 2}")
        ax.plot(t, mean, "o-", color=color, lw=1.8, label=f"{name} (mean +- {what}, "
                f"{n} repeats)")
        ax.fill_between(t, mean - half, mean + half, color=color, alpha=0.2, lw=0)
    if reference is not None:
        shown = scale * reference
        text = f"{shown:.1f}%" if scale == 100.0 else f"{shown:.4g}"
        ax.axhline(shown, color="k", ls=":", lw=1.2, label=f"digital (float) {text}")
    _log_time_axis(ax, t)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return _save(fig, path)
