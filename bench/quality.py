"""Benchmark: how much each search gains over the baseline, against the candidates it spends.

Reduction-versus-candidates curves, the data gpuwpo's defaults are chosen from (docs/RESULTS.md,
"Defaults"). For each problem, physics and search method, one per-layer search runs over all of
the problem's layers; after every generation the search's best point of every layer is recorded,
and afterwards each recorded point is judged on the converter path
(:func:`gpuwpo.device.simulate.converter_errors`) against the baseline on the same noise (paired),
``--repeats`` programmings of each layer's test tile. The figure plotted is the size-weighted
total reduction of TNMSE below the baseline, 1 - sum_l n_l TNMSE_l / sum_l n_l baseline_l, with
the standard error of the paired difference, against the candidates evaluated per layer (the
standard starts' ranking included). The search's own best is judged, before the final choice:
this measures the search, not the never-worse guard. The final choice (what a user gets: the
validated winner among the search, its standard starts under both mappings and the baseline) is
judged the same way and recorded beside the curve (``choice``).

The judge. Every method is judged on the same tiles (each problem's layers sampled by rows,
:class:`gpuwpo.search.tiles.TestTile`, whatever the method's own tiles) against the same two
baselines, DualPair f = [1, 1], 0..25 uS: under the **per-column mapping** (each output row
scaled to its own max|w|, aihwkit's ``weight_scaling_omega=1, weight_scaling_columnwise=True``,
what its users deploy: ``reduction``) and under the **layer-wise** mapping (one scale per layer,
what gpuwpo compared with before the mapping was modelled: ``reduction_layerwise``). A point of a
method's search is judged as the recipe it stands for: its program under the method's mapping
(with its clip, where the clip is searched).

Problems:
- ``synthetic``: four heavy-tailed layers (Student-t, 3 and 5 dof; 256 x 256 to 512 x 128, scales
  0.02 to 0.1), as trained networks' weights are.
- ``digits_mlp`` and ``digits_cnn``: networks trained in-process on scikit-learn's digits
  (:mod:`bench.models`).

Methods (:data:`METHODS`): the torch DE with the reference toolkit's settings (best1bin, mutation
0.1, recombination 0.3, popsize 100 x D), with and without standard starts; the torch DE at
gpuwpo's defaults (``tuned``: the same operators, popsize 5 x D, under the options' default
mapping and clip), with and without standard starts; the defaults' variants the defaults are
chosen from: the strategies and the baseline under the layer-wise mapping (``tuned-layer``),
a searched clip range (``tuned-clip-0.7``, ``-0.5``, ``-0.3``: clip_range (c, 1)), a population
of 10 x D (``tuned-p10``); scipy's DE at scipy's own defaults (best1bin, mutation (0.5, 1),
recombination 0.7, popsize 15 x D); EvoTorch's CMA-ES (population D, centred on the best
standard start); and sweep variants used to pick the operators. Every run goes to its budget
(tol = atol = 0, no early stop; no polish).

Setup: f_lst = [None, None] (D = 21), inference times 1 s, 1 h, 1 day, 30 days, 1 year, default
PCM noise, ideal global compensation, the default 512 x 20 test tile.

Run:  python bench/quality.py [--problems synthetic digits_mlp] [--physics device aihwkit]
                              [--methods reference tuned ...] [--budget 20000]
      python -m bench.quality ...
Writes bench/results/quality-<machine>.json and a PNG of the curves beside it (``--out-dir``
elsewhere), and prints a markdown table of the reduction at each budget. While it runs, every
finished curve is also kept in quality.partial-<machine>.json (removed at the end), so that a
run stopped midway keeps what it finished (``--merge`` reads it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpuwpo  # noqa: E402
from bench import common  # noqa: E402
from gpuwpo.device.mapping import Recipe  # noqa: E402
from gpuwpo.device.physics import PHYSICS  # noqa: E402
from gpuwpo.device.simulate import converter_errors  # noqa: E402
from gpuwpo.search.de import population_size  # noqa: E402
from gpuwpo.search.tiles import TestTile  # noqa: E402

T_STEPS = gpuwpo.device.simulate.DEFAULT_TIMES
F_LST = (None, None)

_REFERENCE = dict(backend="torch", strategy="best1bin", mutation=0.1, recombination=0.3,
                  popsize=100)
# Chosen from the sweep below (unseeded, synthetic, 10,000 candidates per layer): the reference's
# greedy operators with a population of 5 x D instead of 100 x D.
_TUNED = dict(backend="torch", strategy="best1bin", mutation=0.1, recombination=0.3, popsize=5)

#: The operator sweep: name -> (strategy, mutation, recombination, popsize).
_SWEEP = {
    "best1bin-p10-r0.7": ("best1bin", (0.5, 1.0), 0.7, 10),
    "rand1bin-p10-r0.7": ("rand1bin", (0.5, 1.0), 0.7, 10),
    "rand1bin-p5-r0.9": ("rand1bin", (0.5, 1.0), 0.9, 5),
    "best1bin-p5-r0.9": ("best1bin", (0.5, 1.0), 0.9, 5),
    "currenttobest1bin-p5-r0.9": ("currenttobest1bin", (0.5, 1.0), 0.9, 5),
    "reference-p5": ("best1bin", 0.1, 0.3, 5),
}


def _sweep(strategy: str, mutation: float | tuple[float, float], recombination: float,
           popsize: int) -> tuple[str, dict[str, Any]]:
    """One method of the operator sweep: (description, optimizer keywords)."""
    return (f"{strategy}, mutation {mutation}, recombination {recombination}, popsize {popsize}",
            dict(backend="torch", strategy=strategy, mutation=mutation,
                 recombination=recombination, popsize=popsize, standard_starts=True))


#: name -> (description, optimizer keywords). ``backend`` picks the backend.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "reference": ("torch DE, the reference's settings, seeded",
                  {**_REFERENCE, "standard_starts": True}),
    "reference-unseeded": ("torch DE, the reference's settings, no seeds",
                           {**_REFERENCE, "standard_starts": False}),
    "tuned": ("torch DE, gpuwpo's defaults, seeded", {**_TUNED, "standard_starts": True}),
    "tuned-unseeded": ("torch DE, gpuwpo's defaults, no seeds",
                       {**_TUNED, "standard_starts": False}),
    # The defaults' variants: the mapping, a searched clip, the population.
    "tuned-layer": ("torch DE, gpuwpo's defaults, strategies and baseline layer-wise",
                    {**_TUNED, "standard_starts": True, "mapping": "layer",
                     "baseline_mapping": "layer"}),
    **{f"tuned-clip-{low:g}": (f"torch DE, gpuwpo's defaults, clip searched in [{low:g}, 1]",
                               {**_TUNED, "standard_starts": True, "clip_range": (low, 1.0)})
       for low in (0.7, 0.5, 0.3)},
    "tuned-p10": ("torch DE, gpuwpo's defaults with popsize 10 x D",
                  {**_TUNED, "standard_starts": True, "popsize": 10}),
    "scipy": ("scipy DE at scipy's defaults, seeded",
              dict(backend="scipy", strategy="best1bin", mutation=(0.5, 1.0), recombination=0.7,
                   popsize=15, standard_starts=True)),
    "cmaes": ("EvoTorch CMA-ES, population D, centred on the best seed",
              dict(backend="evotorch", algorithm="cmaes", popsize=1, standard_starts=True)),
    # The sweep the tuned settings were picked from (torch DE; run with
    # --set standard_starts=false).
    **{f"sweep-{name}": _sweep(*args) for name, args in _SWEEP.items()},
}
DEFAULT_METHODS = ("reference", "reference-unseeded", "tuned", "tuned-unseeded", "scipy",
                   "cmaes")
PROBLEMS = ("synthetic", "digits_mlp", "digits_cnn")
#: Candidates per layer at which the table reports the curves.
CHECKPOINTS = (500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
#: A run with at most this many generations has each of them judged, not only the checkpoints.
MAX_JUDGED_GENERATIONS = 12
#: Programmings per contender and block of the final choice (the search's own is 100; the
#: curves judge its winner on their own noise).
VALIDATION_REPEATS = 16


def synthetic_layers(seed: int = 0) -> dict[str, torch.Tensor]:
    """Four heavy-tailed layers of different shapes, tails and scales (deterministic)."""
    gen = torch.Generator().manual_seed(seed)
    specs = [("a.weight", (256, 256), 0.05, 3), ("b.weight", (512, 128), 0.02, 3),
             ("c.weight", (128, 512), 0.1, 5), ("d.weight", (384, 256), 0.04, 3)]
    return {name: gpuwpo.student_t_weights(shape, df=df, scale=scale, generator=gen)
            for name, shape, scale, df in specs}


def problem_layers(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The named problem's layers, name -> weights."""
    if name == "synthetic":
        return synthetic_layers(seed)
    from bench import models

    trained = models.trained_models([name], seed=seed)[name]
    return gpuwpo.select_weights(trained.model)


def _per_generation(options: Mapping[str, Any], dim: int) -> int:
    """Candidates one generation costs per layer."""
    size = population_size(dim, int(options["popsize"]))
    if options["backend"] == "torch":
        return 2 * size  # parents re-evaluated with their trials (noise_robust)
    return size


#: The judges' baselines (label -> mapping): DualPair f = [1, 1], 0..25 uS, per column (what
#: aihwkit's users deploy; the curves' ``reduction``) and layer-wise (``reduction_layerwise``).
JUDGE_BASELINES = {"per-column": "columnwise", "layer-wise": "layer"}


def _baseline_converter() -> gpuwpo.DualPairConductanceConverter:
    return gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0)


def judge_tiles(layers: Sequence[torch.Tensor], opt: gpuwpo.WeightProgrammingOptimizer
                ) -> TestTile:
    """The tiles every method of a problem is judged on: ``layers`` sampled by rows, with the
    shape, grid and seed of ``opt``'s tiles (so a per-column search's own tiles)."""
    return TestTile.from_layers(list(layers), opt.space.grid_size,
                                shape=opt.objective.tile_shape, seed=int(opt.options.seed),
                                rows=True)


def judge(tiles: TestTile, recipes: Sequence[Recipe], sizes: torch.Tensor, noise_model,
          physics: str, *, repeats: int, seed: int) -> dict[str, Any]:
    """The size-weighted total reduction of one recipe per layer below each judge baseline.

    Args:
        tiles: the judge's tiles (by rows), B layers.
        recipes: B recipes, layer b's program under its mapping.
        sizes: [B] the layers' sizes (weights), the totals' weights.
        noise_model, physics: the device model and physics simulated.
        repeats: programmings per layer (paired: every recipe and baseline of a layer on the
            same noise, the layer's noise keyed by its index).
        seed: the judge's run seed (a layer's noise is keyed by its index).

    Returns:
        ``reduction``, ``se`` against the per-column baseline and ``reduction_layerwise``,
        ``se_layerwise`` against the layer-wise one: 1 - sum_b n_b TNMSE_b / sum_b n_b base_b,
        and the standard error of its paired per-repeat estimate.
    """
    base = _baseline_converter()
    judges = [Recipe(base, mapping) for mapping in JUDGE_BASELINES.values()]
    diffs = {label: [] for label in JUDGE_BASELINES}
    bases = {label: [] for label in JUDGE_BASELINES}
    for b, recipe in enumerate(recipes):
        err = converter_errors(tiles.tile(b), [*judges, recipe], noise_model, T_STEPS,
                               physics=physics, repeats=repeats, generator=seed,
                               layer_id=b).double().mean(-1)  # [3, repeats]
        for j, label in enumerate(JUDGE_BASELINES):
            diffs[label].append(err[-1] - err[j])
            bases[label].append(err[j].mean())
    out: dict[str, Any] = {}
    for label, suffix in zip(JUDGE_BASELINES, ("", "_layerwise")):
        diff = (torch.stack(diffs[label]) * sizes[:, None]).sum(0)  # [repeats]
        reduction = -diff / float((torch.stack(bases[label]) * sizes).sum())
        out[f"reduction{suffix}"] = float(reduction.mean())
        out[f"se{suffix}"] = float(reduction.std() / math.sqrt(repeats))
    return out


def run_curve(layers: Mapping[str, torch.Tensor], method: str, physics: str, *, budget: int,
              repeats: int, seed: int, judge_seed: int, overrides: Mapping[str, Any] = ()
              ) -> dict[str, Any]:
    """One method's search on ``layers`` to ``budget`` candidates per layer; its judged curve
    and its final choice, judged on the same tiles against the same baselines as every method
    (:func:`judge`)."""
    description, spec = METHODS[method]
    options = {**spec, **dict(overrides)}
    backend = options.pop("backend")
    baseline = _baseline_converter()
    space_dim = gpuwpo.StrategySpace(list(F_LST),
                                     clip_range=options.get("clip_range")).dim
    maxiter = max(1, math.ceil(budget / _per_generation({**options, "backend": backend},
                                                       space_dim)))
    snapshots: list[tuple[int, torch.Tensor]] = []
    names = list(layers)

    def record(info) -> None:
        snapshots.append((int(info.nfev), info.x.detach().clone().cpu()))

    opt = gpuwpo.WeightProgrammingOptimizer(
        [layers[n] for n in names], list(F_LST), gpuwpo.PCMLikeNoiseModel(), T_STEPS, baseline,
        backend=backend, device="cpu", physics=physics, seed=seed, maxiter=maxiter,
        **({} if options.get("algorithm") == "cmaes" else {"tol": 0.0, "atol": 0.0}),
        polish=False, validation_repeats=VALIDATION_REPEATS, baseline_iterations=32, disp=False,
        callback=record, **options)
    start = time.perf_counter()
    opt.run_optimizer()
    search_wall = time.perf_counter() - start
    seeds = opt.standard_starts()[0].shape[0]
    B = len(names)
    sizes = torch.tensor([float(layers[n].numel()) for n in names], dtype=torch.float64)
    m = opt.objective.tiles.tile_max.reshape(-1)
    tiles = judge_tiles([layers[n] for n in names], opt)
    if backend == "scipy":
        # Layers one after another: a snapshot's nfev counts the earlier layers' candidates too;
        # each layer's own generation g is at g * S + S candidates of its own.
        per_layer_points = _scipy_points(snapshots, B, population_size(space_dim,
                                                                       options["popsize"]))
    else:
        per_layer_points = [(nfev // B, x) for nfev, x in snapshots]
    # Judge the best point at each checkpoint (and the last), all on the same noise; a run of
    # few, large generations (a 100 x D population) has every generation judged instead.
    wanted = {c for c in CHECKPOINTS if c <= budget} | {per_layer_points[-1][0]}
    if len(per_layer_points) <= MAX_JUDGED_GENERATIONS:
        wanted |= {p[0] for p in per_layer_points}
    wanted = sorted(wanted)
    curve = []
    for target in wanted:
        below = [p for p in per_layer_points if p[0] <= target]
        if not below:
            continue
        nfev, x = below[-1]
        recipes = [Recipe(opt.space.to_converter(x[b].to(opt.objective.dtype), m[b],
                                                 invertibility_test=False),
                          opt.objective.mapping) for b in range(B)]
        curve.append({"candidates": int(nfev) + seeds, "at": int(target),
                      **judge(tiles, recipes, sizes, opt.noise_model, physics,
                              repeats=repeats, seed=judge_seed)})
    res = opt.result
    choice = {**judge(tiles, res.recipes, sizes, opt.noise_model, physics, repeats=repeats,
                      seed=judge_seed),
              "chosen": list(res.chosen), "mappings": list(res.mappings),
              "clips": [float(getattr(r.converter, "clip", 1.0)) for r in res.recipes]}
    return {"method": method, "description": description, "physics": physics,
            "backend": backend, "options": {k: (list(v) if isinstance(v, tuple) else v)
                                            for k, v in options.items()},
            "mapping": opt.options.mapping, "baseline_mapping": opt.options.baseline_mapping,
            "clip_range": (None if opt.options.clip_range is None
                           else list(opt.options.clip_range)),
            "maxiter": maxiter, "search_wall_s": search_wall, "curve": curve, "choice": choice}


def _scipy_points(snapshots, num_layers: int, size: int) -> list[tuple[int, torch.Tensor]]:
    """Per-layer candidate counts of the scipy backend's sequential snapshots."""
    gens = [0] * num_layers
    out, last = [], None
    current = None
    for _, x in snapshots:
        finite = torch.isfinite(x).all(-1)
        if last is not None:
            changed = [b for b in range(num_layers) if bool(finite[b]) and (
                not bool(torch.isfinite(last[b]).all()) or not torch.equal(x[b], last[b]))]
            current = changed[-1] if changed else current
        else:
            current = int(finite.nonzero()[-1]) if bool(finite.any()) else 0
        gens[current] += 1
        if all(g > 0 for g in gens) or bool(finite.all()):
            out.append((min(gens) * size + size, x))
        last = x
    # Only points where every layer has an answer are comparable with the batched backends.
    return out or [(size, snapshots[-1][1])]


def plot_curves(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Reduction vs candidates, one panel per (problem, physics), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["problem"], r["physics"]) for r in records})
    cols = len({p for _, p in panels})
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, (problem, physics) in zip(axes.flat, panels):
        for r in records:
            if (r["problem"], r["physics"]) != (problem, physics):
                continue
            xs = [p["candidates"] for p in r["curve"]]
            ys = [100 * p["reduction"] for p in r["curve"]]
            es = [196 * p["se"] for p in r["curve"]]
            style = "--" if "unseeded" in r["method"] else "-"
            ax.errorbar(xs, ys, yerr=es, fmt=style, marker="o", ms=3, capsize=2,
                        label=r["method"])
        ax.set_xscale("log")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{problem}, physics={physics}")
        ax.set_xlabel("candidates per layer")
        ax.set_ylabel("TNMSE below DualPair [1, 1], per column (%)")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        row = {"problem": r["problem"], "physics": r["physics"], "method": r["method"]}
        for p in r["curve"]:
            if p["at"] in CHECKPOINTS:
                row[str(p["at"])] = f"{100 * p['reduction']:.1f} ± {196 * p['se']:.1f}"
        last = r["curve"][-1]
        row["final"] = (f"{100 * last['reduction']:.1f} ± {196 * last['se']:.1f} "
                        f"({last['candidates']})")
        if "reduction_layerwise" in last:
            row["final_layerwise"] = (f"{100 * last['reduction_layerwise']:.1f} ± "
                                      f"{196 * last['se_layerwise']:.1f}")
        choice = r.get("choice")
        if choice:
            row["choice"] = f"{100 * choice['reduction']:.1f} ± {196 * choice['se']:.1f}"
            row["choice_layerwise"] = (f"{100 * choice['reduction_layerwise']:.1f} ± "
                                       f"{196 * choice['se_layerwise']:.1f}")
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    parser.add_argument("--physics", nargs="+", default=list(PHYSICS),
                        choices=PHYSICS)
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        choices=list(METHODS))
    parser.add_argument("--budget", type=int, default=20000,
                        help="candidates per layer (default 20000)")
    parser.add_argument("--repeats", type=int, default=32,
                        help="programmings of each judged point (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: tiny test tile and budget")
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=JSON",
                        help="override a search option for every method, e.g. --set "
                             "standard_starts=false (repeatable)")
    parser.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                        help="run nothing: merge the records of earlier runs (e.g. one per "
                             "physics, run in parallel) into one results file and figure")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--name", default="quality", help="results file stem")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    overrides: dict[str, Any] = {}
    if args.quick:
        overrides = dict(test_in_features=16, test_out_features=8, popsize=1)
        args.budget, args.repeats = min(args.budget, 200), min(args.repeats, 4)
    for item in args.set:
        key, _, value = item.partition("=")
        value = json.loads(value)
        overrides[key] = tuple(value) if isinstance(value, list) else value
    if args.merge:
        runs = [json.loads(path.read_text()) for path in args.merge]
        merged = {key: runs[0][key] for key in ("budget", "repeats", "quick", "t_steps", "f_lst",
                                                "overrides") if key in runs[0]}
        merged.update({"machine": runs[0]["machine"], "merged_from": [p.name for p in args.merge],
                       "load_averages": [run.get("load_average") for run in runs],
                       "records": [r for run in runs for r in run["records"]]})
        return _write(args, merged)
    records = []
    out_dir = args.out_dir or common.RESULTS_DIR
    partial = None
    for problem in args.problems:
        layers = problem_layers(problem, args.seed)
        for physics in args.physics:
            for method in args.methods:
                record = run_curve(layers, method, physics, budget=args.budget,
                                   repeats=args.repeats, seed=100 + args.seed,
                                   judge_seed=9000 + args.seed, overrides=overrides)
                record["problem"] = problem
                records.append(record)
                last = record["curve"][-1]
                print(f"{problem:>11} {physics:>7} {method:>32}: "
                      f"{100 * last['reduction']:6.1f} % at {last['candidates']} candidates "
                      f"({record['search_wall_s']:.0f} s)", flush=True)
                # Every finished curve is kept at once: a run stopped later loses only the
                # curve it was drawing (the partial file can be --merge'd like a whole one).
                partial = common.write_results(f"{args.name}.partial",
                                               _payload(args, overrides, records), out_dir)
    payload = _payload(args, overrides, records)
    written = _write(args, payload)
    if partial is not None:
        partial.unlink(missing_ok=True)
    return written


def _payload(args, overrides: dict[str, Any], records: list[dict]) -> dict[str, Any]:
    """The results file's content: the run's settings and its curves so far."""
    return {"budget": args.budget, "repeats": args.repeats, "quick": args.quick,
            "overrides": {k: (list(v) if isinstance(v, tuple) else v)
                          for k, v in overrides.items()},
            "t_steps": list(T_STEPS), "f_lst": list(F_LST),
            # The machine's other work (1, 5, 15-minute load averages) when this was written.
            "load_average": common.load_average(), "records": records}


def _write(args, payload: dict[str, Any]) -> dict[str, Any]:
    records = payload["records"]
    path = common.write_results(args.name, payload, out_dir=args.out_dir or common.RESULTS_DIR)
    png = path.with_suffix(".png")
    plot_curves(records, png)
    rows = _table_rows(records)
    ats = sorted({int(k) for row in rows for k in row if k.isdigit()})
    print(common.markdown_table(rows, ["problem", "physics", "method",
                                       *((str(a), f"{a} cand.") for a in ats),
                                       ("final", "search's best (candidates)"),
                                       ("final_layerwise", "vs layer-wise"),
                                       ("choice", "final choice"),
                                       ("choice_layerwise", "choice vs layer-wise")]))
    print("% below DualPair f=[1, 1] under the per-column mapping (vs layer-wise: under the "
          "layer-wise mapping), ± 95 % interval of the paired difference")
    print(f"wrote {path} and {png}")
    return payload


if __name__ == "__main__":
    main()
