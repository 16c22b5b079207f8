"""Benchmark: the ceiling of the strategy space, weight by weight, against the standard converters.

The search and its answers end level with the exact standard N-pair converters under the per-column
mapping (docs/RESULTS.md sections 2-3). This script asks whether any program of the space could do
better, by building the best program weight by weight instead of searching for it.

A program of the reference's space (two pairs of significance 1 and F, exact realisation: the
net conductance ``d0 + F d1`` of a weight is ``k_w * |w|``) chooses, for every weight magnitude,
how ``k_w |w|`` is split between the pairs, and may keep the opposite device of each pair at an
offset (``G+ = d + c``, ``G- = c``). With the devices independent, a weight's error at time t
depends on the split only through each device's mean and variance after programming, drift and
read, which are functions of its target conductance alone: they are tabulated once by Monte
Carlo (:func:`conductance_moments`, the device physics of docs/DESIGN.md section 2), and then every
split of every weight magnitude is scored exactly, with the global drift compensation
``alpha_t`` of the layer's own weight distribution (:func:`optimal_program`):

    err(u) = mean_t [alpha_t^2 Var(X_t) + (alpha_t E[X_t] - k_w u)^2] / k_w^2

over the splits that realise ``k_w u``, a fine grid of split shares and offsets, for each F of the
standard starts and a few fractions of the full range for the largest weight. The best split of
every u on a grid of 101 magnitudes is a CustomPair program (201 grid points) that realises the
weights exactly, as the reference's space requires; it is the "ceiling program" of that F.

Each layer's ceiling programs and exact N-pair converters are then programmed with the same noise
(:func:`gpuwpo.device.simulate.converter_errors`, paired), under the per-column mapping, in both
physics, and their TNMSE is compared with DualPair f=[1, 1] per column. The gap between the best
ceiling program and the best standard converter is what a perfect search of the space could add.
On the digits networks the same programs are also judged by accuracy after a year.

Run:  python bench/ceiling.py [--repeats 16] [--weights minilm digits] [--quick]
Writes bench/results/ceiling-<machine>.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpuwpo  # noqa: E402
from bench import common  # noqa: E402
from bench.network import _kind  # noqa: E402
from bench.noise_floor import _npair  # noqa: E402
from gpuwpo.device.mapping import Recipe, row_scales  # noqa: E402
from gpuwpo.device.simulate import DEFAULT_TIMES, converter_errors, sample_rows_for  # noqa: E402
from gpuwpo.network.layers import mapped_shape, select_weights  # noqa: E402
from gpuwpo.rng import make_generator  # noqa: E402
from gpuwpo.search.strategy import START_RATIOS  # noqa: E402

G_MAX = 25.0
#: Shares of the full range given to the largest weight, tried for every F.
FRACTIONS = (1.0, 0.9, 0.8, 0.7)
#: Offsets (uS) the opposite device of a pair may hold (0: the standard converters' choice).
OFFSETS = (0.0, 0.5, 1.0, 2.0, 4.0)
#: Magnitudes on the program's non-negative half-grid (u = 0, 0.01, ..., 1).
MAGNITUDES = 101
#: Split shares tried per magnitude, between the least and the most the MSB pair can take.
SPLITS = 201
#: Conductance grid (uS) of the device moments, and Monte Carlo draws per conductance.
MOMENT_GRID = 501
MOMENT_SAMPLES = 20000
#: Weights per repeat in the layers' simulations (whole rows; each row has its own scale).
SAMPLE_WEIGHTS = 16384
ONE_YEAR = DEFAULT_TIMES[-1]


class Moments(NamedTuple):
    """A device's conductance after programming, drift and read, by target conductance.

    Fields: ``g`` [G] target conductances (uS, ascending, from 0); ``mean`` and ``var`` [G, T]
    the mean (uS) and variance (uS^2) of the read conductance at each time; ``programmed`` [G]
    the mean programmed conductance (uS), before drift, which the compensation's reference reads.
    """

    g: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    programmed: torch.Tensor


def conductance_moments(noise_model, times: Sequence[float], *, g_max: float = G_MAX,
                        points: int = MOMENT_GRID, samples: int = MOMENT_SAMPLES,
                        generator: torch.Generator | int | None = 0) -> Moments:
    """Tabulate one device's read conductance by Monte Carlo, in the device physics.

    Each target conductance on ``linspace(0, g_max, points)`` is programmed ``samples`` times
    with the model's own methods (programming noise, drift coefficient from the target, drift
    and read noise at every time), float64.
    """
    gen = make_generator(generator, "cpu")
    g = torch.linspace(0.0, g_max, points, dtype=torch.float64)
    target = g[:, None].expand(points, samples)

    def z() -> torch.Tensor:
        return torch.randn(points, samples, generator=gen, dtype=torch.float64)

    programmed = noise_model.apply_programming_noise_to_conductance(target, None, z=z())
    nu = noise_model.generate_drift_coefficients(target, None, z=z())
    mean, var = [], []
    for t in times:
        read = noise_model.apply_drift_noise_to_conductance(programmed, nu, float(t), None, z=z())
        mean.append(read.mean(1))
        var.append(read.var(1))
    return Moments(g, torch.stack(mean, 1), torch.stack(var, 1), programmed.mean(1))


def _interp(table: torch.Tensor, grid: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``table`` [G, ...] on the uniform ``grid`` [G] at ``x`` [...]:
    [..., *table.shape[1:]] (x clamped to the grid)."""
    step = grid[1] - grid[0]
    pos = ((x - grid[0]) / step).clamp(0, grid.shape[0] - 1)
    lo = pos.floor().long().clamp(max=grid.shape[0] - 2)
    frac = (pos - lo).reshape(*x.shape, *(1,) * (table.ndim - 1))
    return table[lo] * (1 - frac) + table[lo + 1] * frac


class CeilingProgram(NamedTuple):
    """The best split of every weight magnitude for one F and range fraction.

    Fields: ``ratio`` F; ``fraction`` of the full range the largest weight uses; ``table``
    [4, 2 * MAGNITUDES - 1] conductances (uS) of G+_0, G-_0, G+_1, G-_1 on the grid
    ``linspace(-M, M, L)``; ``error`` the predicted error of the layer (mean over its weights of
    err(u), in units of the row's max squared); ``alpha`` [T] the compensation it assumed;
    ``standard_error`` the same prediction for the standard N-pair split of this F and range
    (the MSB pair as empty as possible, no offsets), under its own compensation.
    """

    ratio: float
    fraction: float
    table: torch.Tensor
    error: float
    alpha: torch.Tensor
    standard_error: float

    def converter(self) -> gpuwpo.CustomPairConductanceConverter:
        """The program as a CustomPair converter (its invertibility checked)."""
        return gpuwpo.CustomPairConductanceConverter([1.0, self.ratio], self.table, 0.0, G_MAX)


def optimal_program(moments: Moments, magnitudes: torch.Tensor, ratio: float, fraction: float,
                    *, g_max: float = G_MAX, offsets: Sequence[float] = OFFSETS,
                    points: int = MAGNITUDES, splits: int = SPLITS,
                    iterations: int = 3) -> CeilingProgram:
    """The best exact split of every weight magnitude, for significance factors [1, ratio].

    Args:
        moments: the device's moments (:func:`conductance_moments`).
        magnitudes: the layer's |w| / (its row's max|w|), any shape, in [0, 1]: they weigh the
            magnitudes in the compensation ``alpha_t`` and in the predicted error.
        ratio: F, the MSB pair's significance.
        fraction: share of the full range ``(1 + F) g_max`` the largest weight uses.
        offsets: conductances (uS) the opposite device of each pair may hold.
        points: magnitudes on the half-grid [0, 1].
        splits: shares of the feasible MSB range tried per magnitude.
        iterations: rounds of (compensation from the current splits, best splits under it).

    Returns:
        A :class:`CeilingProgram`.
    """
    dtype = torch.float64
    k_w = (1.0 + ratio) * g_max * fraction  # uS of net conductance per unit magnitude
    u = torch.linspace(0.0, 1.0, points, dtype=dtype)
    target = u * k_w  # [U] net conductance to realise
    c = torch.tensor(tuple(offsets), dtype=dtype)
    share = torch.linspace(0.0, 1.0, splits, dtype=dtype)
    lo = ((target - g_max) / ratio).clamp(min=0.0)
    hi = torch.clamp(target / ratio, max=g_max)
    d1 = lo[:, None] + share * (hi - lo)[:, None]  # [U, S] MSB pair's part (uS)
    d0 = (target[:, None] - ratio * d1).clamp(0.0, g_max)  # [U, S] LSB pair's part
    # Allocations [U, S, C0, C1]: device conductances G+ = d + c, G- = c.
    d0 = d0[:, :, None, None]
    d1 = d1[:, :, None, None]
    c0, c1 = c[:, None], c[None, :]
    feasible = (d0 + c0 <= g_max) & (d1 + c1 <= g_max)  # [U, S, C0, C1]
    grid = moments.g

    def dev(table: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        # [*g.shape, *table.shape[1:]]; the offsets alone ([C0, 1] or [1, C1]) stay small and
        # broadcast against the split terms below.
        return _interp(table, grid, g)

    # A pair's net contribution: its G+ device's minus its G- device's (independent devices).
    mean = (dev(moments.mean, d0 + c0) - dev(moments.mean, c0)
            + ratio * (dev(moments.mean, d1 + c1) - dev(moments.mean, c1)))
    var = (dev(moments.var, d0 + c0) + dev(moments.var, c0)
           + ratio ** 2 * (dev(moments.var, d1 + c1) + dev(moments.var, c1)))
    prog = (dev(moments.programmed, d0 + c0) - dev(moments.programmed, c0)
            + ratio * (dev(moments.programmed, d1 + c1) - dev(moments.programmed, c1)))
    U, T = points, mean.shape[-1]
    mean, var = mean.reshape(U, -1, T), var.reshape(U, -1, T)
    prog, feasible = prog.reshape(U, -1), feasible.reshape(U, -1)
    # How many of the layer's weights sit at each grid magnitude.
    m = magnitudes.detach().double().flatten().clamp(0.0, 1.0)
    counts = torch.bincount((m * (points - 1)).round().long(), minlength=points).to(dtype)
    rows = torch.arange(U)

    def errors(choice: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every allocation's err(u) [U, A] under the compensation of ``choice`` [U]."""
        alpha = (counts @ prog[rows, choice]) / (counts @ mean[rows, choice])  # [T]
        err = (alpha ** 2 * var + (alpha * mean - target[:, None, None]) ** 2).mean(-1)
        return err.masked_fill(~feasible, math.inf), alpha

    # Allocation 0 is the standard split: the MSB pair as empty as possible, no offsets.
    standard = torch.zeros(U, dtype=torch.long)
    err, alpha = errors(standard)
    standard_error = float(counts @ err[:, 0] / counts.sum()) / k_w ** 2
    for _ in range(iterations):
        choice = err.argmin(1)
        err, alpha = errors(choice)
    choice = err.argmin(1)
    best = err[rows, choice] / k_w ** 2  # [U]
    # Back to conductances: decode (split, offset0, offset1) of each magnitude.
    n_c = len(offsets)
    s_idx, rest = choice // (n_c * n_c), choice % (n_c * n_c)
    off0, off1 = c[rest // n_c], c[rest % n_c]
    p1 = d1[rows, s_idx, 0, 0]
    p0 = target - ratio * p1
    half = torch.stack((p0 + off0, off0, p1 + off1, off1))  # [4, U] for w >= 0
    negative = torch.stack((off0, p0 + off0, off1, p1 + off1)).flip(-1)[:, :-1]  # w < 0
    table = torch.cat((negative, half), dim=-1)
    return CeilingProgram(float(ratio), float(fraction), table.float(),
                          float(counts @ best / counts.sum()), alpha.float(), standard_error)


def best_programs(moments: Moments, magnitudes: torch.Tensor, ratios: Sequence[float],
                  fractions: Sequence[float] = FRACTIONS, **kwargs: Any) -> list[CeilingProgram]:
    """For every F, the ceiling program of the range fraction with the lowest predicted error."""
    return [min((optimal_program(moments, magnitudes, r, f, **kwargs) for f in fractions),
                key=lambda p: p.error) for r in ratios]


def _reductions(base: torch.Tensor, errors: torch.Tensor) -> tuple[list[float], list[float]]:
    """Each converter's TNMSE reduction against ``base`` [R], and its standard error (paired):
    ``errors`` [C, R] -> (mean [C], se [C]) as fractions of the baseline's mean."""
    diff = (base - errors) / base.mean()
    return diff.mean(1).tolist(), (diff.std(1) / math.sqrt(base.shape[0])).tolist()


def layer_row(name: str, weights: torch.Tensor, moments: Moments, ratios: Sequence[float], *,
              physics: Sequence[str], repeats: int, seed: int, layer_id: int,
              sample_weights: int, fractions: Sequence[float] = FRACTIONS) -> dict[str, Any]:
    """One layer: its ceiling programs, and in each physics the TNMSE reduction of every
    standard converter and every ceiling program against DualPair f=[1, 1] per column (paired:
    all programmed with the same noise and rows, repeat by repeat)."""
    w = weights.detach().float().reshape(mapped_shape(weights.shape))
    magnitudes = w.abs() / row_scales(w, "columnwise")
    programs = best_programs(moments, magnitudes, ratios, fractions)
    recipes = ([Recipe(_npair(1.0), "columnwise")]
               + [Recipe(_npair(r), "columnwise") for r in ratios]
               + [Recipe(p.converter(), "columnwise") for p in programs])
    row: dict[str, Any] = {
        "layer": name, "kind": _kind(name), "shape": list(w.shape),
        "ceiling": [{"ratio": p.ratio, "fraction": p.fraction, "predicted_error": p.error,
                     "predicted_standard_error": p.standard_error} for p in programs]}
    sample = sample_rows_for(w.shape, sample_weights)
    for phys in physics:
        err = converter_errors(w, recipes, gpuwpo.PCMLikeNoiseModel(g_max=G_MAX),
                               list(DEFAULT_TIMES), physics=phys, repeats=repeats,
                               generator=seed, layer_id=layer_id, sample_rows=sample)
        tnmse = err.mean(-1)  # [C, R]
        red, se = _reductions(tnmse[0], tnmse[1:])
        k = len(ratios)
        std_red, ceil_red = red[:k], red[k:]
        b_std = max(range(k), key=std_red.__getitem__)
        b_ceil = max(range(k), key=ceil_red.__getitem__)
        gap = (tnmse[1 + b_std] - tnmse[1 + k + b_ceil]) / tnmse[0].mean()
        row[phys] = {
            "baseline_tnmse": float(tnmse[0].mean()),
            "standard": dict(zip((f"{r:g}" for r in ratios), std_red)),
            "standard_se": dict(zip((f"{r:g}" for r in ratios), se[:k])),
            "ceiling": dict(zip((f"{r:g}" for r in ratios), ceil_red)),
            "ceiling_se": dict(zip((f"{r:g}" for r in ratios), se[k:])),
            "best_standard": {"ratio": ratios[b_std], "reduction": std_red[b_std]},
            "best_ceiling": {"ratio": ratios[b_ceil], "reduction": ceil_red[b_ceil]},
            # What the best ceiling program adds to the best standard converter (fraction of
            # the baseline's TNMSE; > 0: the ceiling is better), paired.
            "gap": float(gap.mean()), "gap_se": float(gap.std() / math.sqrt(repeats)),
            "totals": {"baseline": float(tnmse[0].mean()),
                       "best_standard": float(tnmse[1 + b_std].mean()),
                       "best_ceiling": float(tnmse[1 + k + b_ceil].mean())},
        }
        row[phys]["_recipes"] = (recipes[1 + b_std], recipes[1 + k + b_ceil])
    return row


def _paired(d: torch.Tensor) -> tuple[float, float]:
    """Mean of paired differences ``d`` [R] and its standard error."""
    return float(d.mean()), float(d.std() / math.sqrt(d.shape[0]))


def accuracy_rows(trained, rows: Sequence[dict[str, Any]], *, physics: Sequence[str],
                  repeats: int, seed: int) -> list[dict[str, Any]]:
    """Accuracy after a year of the digits network ``trained``: DualPair f=[1, 1] per column,
    each layer's best standard converter, each layer's best ceiling program (chosen by TNMSE
    in that physics), programmed with the same noise (one seed per repeat); paired differences
    in points, with standard errors."""
    out = []
    baseline = Recipe(_npair(1.0), "columnwise")
    for phys in physics:
        strategies = {"baseline": {r["layer"]: baseline for r in rows},
                      "best_standard": {r["layer"]: r[phys]["_recipes"][0] for r in rows},
                      "best_ceiling": {r["layer"]: r[phys]["_recipes"][1] for r in rows}}
        acc = {k: [] for k in strategies}
        for rep in range(repeats):
            for key, recipes in strategies.items():
                programmed = gpuwpo.program_model(
                    trained.model, recipes, gpuwpo.PCMLikeNoiseModel(g_max=G_MAX), ONE_YEAR,
                    generator=seed * 100003 + rep, physics=phys)
                acc[key].append(trained.accuracy(programmed))
        values = {k: torch.tensor(v, dtype=torch.float64) for k, v in acc.items()}
        digital = trained.accuracy()
        paired = {(a, b): _paired(values[a] - values[b]) for a, b in (
            ("best_standard", "baseline"), ("best_ceiling", "baseline"),
            ("best_ceiling", "best_standard"))}

        out.append({"model": trained.name, "physics": phys, "digital": digital,
                    "baseline": float(values["baseline"].mean()),
                    "lost": digital - float(values["baseline"].mean()),
                    "standard_vs_baseline": paired["best_standard", "baseline"],
                    "ceiling_vs_baseline": paired["best_ceiling", "baseline"],
                    "ceiling_vs_standard": paired["best_ceiling", "best_standard"]})
    return out


def budget_models(g_max: float = G_MAX) -> dict[str, Any]:
    """The device model with one source of error removed at a time, by name: ``full``; ``no
    programming noise``; ``no read noise``; ``no drift spread`` (every device drifts with the
    mean coefficient of its target conductance, a custom drift table of the model's own mu(g)
    with zero spread); ``no drift`` (drift_scale 0)."""
    full = gpuwpo.PCMLikeNoiseModel(g_max=g_max)
    g = torch.linspace(0.0, g_max, 1001, dtype=torch.float64)
    mu = full.generate_drift_coefficients(g, None, z=torch.zeros_like(g))
    table = {"g_lst": g.tolist(), "nu_mean_lst": mu.tolist(), "nu_std_lst": [0.0] * len(g)}
    return {"full": full,
            "no programming noise": gpuwpo.PCMLikeNoiseModel(g_max=g_max, prog_noise_scale=0.0),
            "no read noise": gpuwpo.PCMLikeNoiseModel(g_max=g_max, read_noise_scale=0.0),
            "no drift spread": gpuwpo.CustomDriftPCMLikeNoiseModel(table, g_max=g_max),
            "no drift": gpuwpo.PCMLikeNoiseModel(g_max=g_max, drift_scale=0.0)}


def loss_budget(trained, *, physics: Sequence[str], repeats: int, seed: int
                ) -> list[dict[str, Any]]:
    """Where a year's accuracy loss of DualPair f=[1, 1] per column comes from: the digits
    network ``trained`` programmed under each of :func:`budget_models` (one seed per repeat,
    the same seeds for every model), its accuracy after a year and the loss against digital,
    with standard errors over the repeats."""
    baseline = Recipe(_npair(1.0), "columnwise")
    digital = trained.accuracy()
    out = []
    for phys in physics:
        for label, model in budget_models().items():
            acc = torch.tensor([trained.accuracy(gpuwpo.program_model(
                trained.model, baseline, model, ONE_YEAR, generator=seed * 100003 + rep,
                physics=phys)) for rep in range(repeats)], dtype=torch.float64)
            out.append({"model": trained.name, "physics": phys, "device": label,
                        "accuracy": float(acc.mean()),
                        "lost": digital - float(acc.mean()),
                        "sem": float(acc.std() / math.sqrt(repeats))})
    return out


def _layers(source: str, quick: bool) -> dict[str, torch.Tensor]:
    if source == "minilm":
        layers = common.pretrained_transformer_weights()
        return dict(list(layers.items())[:2]) if quick else layers
    raise SystemExit(f"unknown weights {source!r}")


def _summary(rows: Sequence[dict[str, Any]], phys: str) -> dict[str, Any]:
    """Totals over a network's layers (sum of each layer's TNMSE) and how many layers the best
    ceiling program beats the best standard converter on by more than two standard errors."""
    tot = {k: sum(r[phys]["totals"][k] for r in rows) for k in ("baseline", "best_standard",
                                                                 "best_ceiling")}
    return {"layers": len(rows),
            "best_standard_reduction": 1 - tot["best_standard"] / tot["baseline"],
            "best_ceiling_reduction": 1 - tot["best_ceiling"] / tot["baseline"],
            "ceiling_better": sum(r[phys]["gap"] > 2 * r[phys]["gap_se"] for r in rows),
            "ceiling_worse": sum(r[phys]["gap"] < -2 * r[phys]["gap_se"] for r in rows),
            "median_gap": float(torch.tensor([r[phys]["gap"] for r in rows]).median())}


def _report(record: Mapping[str, Any]) -> str:
    blocks = []
    for run in record["runs"]:
        for phys in record["config"]["physics"]:
            s = run["summary"][phys]
            rows = [{"layer": r["layer"], "best standard": (
                        f"F={r[phys]['best_standard']['ratio']:g} "
                        f"{100 * r[phys]['best_standard']['reduction']:.1f}"),
                     "best ceiling": (f"F={r[phys]['best_ceiling']['ratio']:g} "
                                      f"{100 * r[phys]['best_ceiling']['reduction']:.1f}"),
                     "gap": f"{100 * r[phys]['gap']:+.2f} +- {100 * r[phys]['gap_se']:.2f}"}
                    for r in run["rows"]]
            blocks.append(
                f"{run['weights']}, physics={phys}: TNMSE reduction against DualPair f=[1, 1] "
                f"per column, % (gap: best ceiling program - best standard converter, paired)\n"
                f"total: best standard {100 * s['best_standard_reduction']:.1f} %, best ceiling "
                f"{100 * s['best_ceiling_reduction']:.1f} %; ceiling better on "
                f"{s['ceiling_better']} of {s['layers']} layers, worse on {s['ceiling_worse']}\n\n"
                + common.markdown_table(rows, ["layer", "best standard", "best ceiling", "gap"]))
        for a in run.get("accuracy", []):
            blocks.append(
                f"{a['model']} ({a['physics']}): accuracy after a year, digital "
                f"{a['digital']:.2f} %, DualPair per column {a['baseline']:.2f} % (lost "
                f"{a['lost']:.2f}); best standard {a['standard_vs_baseline'][0]:+.2f} +- "
                f"{a['standard_vs_baseline'][1]:.2f}, best ceiling "
                f"{a['ceiling_vs_baseline'][0]:+.2f} +- {a['ceiling_vs_baseline'][1]:.2f}, "
                f"ceiling - standard {a['ceiling_vs_standard'][0]:+.2f} +- "
                f"{a['ceiling_vs_standard'][1]:.2f} points")
        if run.get("loss_budget"):
            rows = [{"physics": b["physics"], "device model": b["device"],
                     "accuracy": f"{b['accuracy']:.2f} +- {b['sem']:.2f}",
                     "lost": f"{b['lost']:.2f}"} for b in run["loss_budget"]]
            blocks.append(f"{run['weights']}: accuracy after a year, DualPair f=[1, 1] per "
                          f"column, with one source of error removed at a time (%)\n\n"
                          + common.markdown_table(rows, ["physics", "device model", "accuracy",
                                                         "lost"]))
    return "\n\n".join(blocks)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_seed_and_threads(parser)
    parser.add_argument("--weights", nargs="+", default=["minilm", "digits"],
                        choices=("minilm", "digits"),
                        help="minilm: the 37 layers of all-MiniLM-L6-v2; digits: the CNN, LSTM "
                             "and MLP of bench/models.py (TNMSE and accuracy after a year)")
    parser.add_argument("--physics", nargs="+", default=["device", "aihwkit"],
                        choices=("device", "aihwkit"))
    parser.add_argument("--repeats", type=int, default=16,
                        help="programmings per converter and layer (paired)")
    parser.add_argument("--accuracy-repeats", type=int, default=30,
                        help="programmings per strategy for the digits networks' accuracy")
    args = common.parse_quick_out(
        parser, argv, "smoke run: the digits MLP, 2 repeats, F = 1 and 2, a coarse moment table",
        spread="the standard errors need a spread")
    moment_kw = {"points": 126, "samples": 2000} if args.quick else {}
    if args.quick:
        args.weights, args.accuracy_repeats = ["digits"], 2
    moments = conductance_moments(gpuwpo.PCMLikeNoiseModel(g_max=G_MAX), DEFAULT_TIMES,
                                  generator=args.seed, **moment_kw)
    ratios = (1.0, 2.0) if args.quick else tuple(float(r) for r in START_RATIOS)
    fractions = (1.0, 0.8) if args.quick else FRACTIONS
    kw = {"physics": args.physics, "repeats": args.repeats, "seed": args.seed,
          "sample_weights": 1024 if args.quick else SAMPLE_WEIGHTS, "fractions": fractions}
    runs = []
    for source in args.weights:
        if source == "digits":
            from bench import models
            names = ["digits_mlp"] if args.quick else ["digits_cnn", "digits_lstm", "digits_mlp"]
            for net, trained in models.trained_models(names, seed=0).items():
                layers = select_weights(trained.model)
                rows = [layer_row(n, w, moments, ratios, layer_id=i, **kw)
                        for i, (n, w) in enumerate(layers.items())]
                acc = accuracy_rows(trained, rows, physics=args.physics,
                                    repeats=args.accuracy_repeats, seed=args.seed)
                budget = loss_budget(trained, physics=args.physics,
                                     repeats=args.accuracy_repeats, seed=args.seed)
                runs.append({"weights": net, "rows": rows, "accuracy": acc,
                             "loss_budget": budget})
        else:
            rows = [layer_row(n, w, moments, ratios, layer_id=i, **kw)
                    for i, (n, w) in enumerate(_layers(source, args.quick).items())]
            runs.append({"weights": source, "rows": rows})
    for run in runs:
        for row in run["rows"]:
            for phys in args.physics:
                row[phys].pop("_recipes")
        run["summary"] = {phys: _summary(run["rows"], phys) for phys in args.physics}
    record = common.new_record(
        common.machine_info(), "no search: programs built weight by weight", args.quick,
        torch_threads=torch.get_num_threads(), load_average=common.load_average(),
        config={"ratios": list(ratios), "fractions": list(fractions), "offsets_uS": list(OFFSETS),
                "magnitudes": MAGNITUDES, "splits": SPLITS, "t_steps_s": list(DEFAULT_TIMES),
                "physics": list(args.physics), "mapping": "columnwise",
                "baseline": "DualPair f=[1, 1], per column", "repeats": args.repeats,
                "accuracy_repeats": args.accuracy_repeats, "seed": args.seed,
                "moments": {"points": moment_kw.get("points", MOMENT_GRID),
                            "samples": moment_kw.get("samples", MOMENT_SAMPLES)},
                "sample_weights": kw["sample_weights"], "compensation": "ideal global",
                "device_model": repr(gpuwpo.PCMLikeNoiseModel(g_max=G_MAX))},
        runs=runs)
    return common.finish("ceiling", record, "", _report, out=args.out)


if __name__ == "__main__":
    main()
