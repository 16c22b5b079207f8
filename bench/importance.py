"""Benchmark: does the activation-aware error (importance) improve a network's accuracy?

Issue 21 asks for a weight's squared error to count with its input's energy, as the layer's
output error does (docs/GUIDE.md, "Activation-aware error"), kept opt-in unless it clearly
helps. This measures it on the digits CNN and the digits LSTM (bench/models.py: trained
in-process from scikit-learn's bundled digits), in the device physics by default:

1. calibrate: :func:`gpuwpo.calibrate` on the training images (never the test set): each
   layer's input energies ``E[x_j^2]`` (recorded: their spread per layer);
2. for each search seed, two runs of :func:`gpuwpo.optimize_network` at the same budget and
   options (per layer, f_lst = [None, None], against DualPair f=[1, 1] 0..25 uS under the
   per-column mapping, gpuwpo's defaults for the mapping): **plain** (every weight alike) and
   **importance** (``importance=`` the energies: each layer's test tile drawn by them);
3. accuracy: :func:`gpuwpo.evaluate_model` of both results with the same noise seed, so that
   the baseline's programmings are the same in both and every strategy's programmings are
   paired repeat by repeat (each layer's draws keyed by its name and the repeat): the paired
   differences importance - plain, importance - baseline and plain - baseline at each time,
   with standard errors, per seed and pooled over the seeds (the seeds' mean difference per
   repeat; the seeds' spread is reported beside it, the search's own variability);
4. the weight error of each answer on the whole layer (:func:`gpuwpo.simulate_weights` of
   every weight, 100 programmings on common noise), plain and energy-weighted: whether the
   importance run's answers lower the error the output sees;
5. the drawn tile's estimate against the whole layer (the baseline converter, 100
   programmings): the energy-weighted error of the whole layer against the mean error of the
   tile drawn by importance, and the plain error against the plain tile, at the search's tile
   and at gpuwpo's default 512 x 20 tile: what the drawn tile's bias is on real layers (the drift
   compensation is computed on the drawn tile: gpuwpo.search.tiles says why that is not
   unbiased).

Budget: accuracy.py's (popsize 5 x D, 50 generations, a 64 x 20 test tile, 30 baseline and
validation repeats, polish of 15 iterations), 50 programmings per strategy and time;
``--quick`` is a smoke run.

Run:  python bench/importance.py [--models digits_cnn digits_lstm] [--physics device]
                                 [--seeds 100 101 102] [--repeats R] [--quick]
Writes bench/results/importance-<machine>.json (``--out-dir`` elsewhere) and prints markdown
tables.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpuwpo  # noqa: E402
from bench import common, models  # noqa: E402

# The times, budgets, search options and repeats of bench/accuracy.py, so that the two
# benchmarks' figures compare.
from bench.accuracy import (  # noqa: E402
    DEFAULT_BUDGET,
    F_LST,
    OPTIONS,
    QUICK_BUDGET,
    QUICK_OPTIONS,
    QUICK_REPEATS,
    REPEATS,
    TIMES,
    add_network_arguments,
    baseline_converter,
    noise_model,
)
from gpuwpo import example  # noqa: E402
from gpuwpo.device.mapping import Recipe  # noqa: E402
from gpuwpo.network.layers import as_matrix  # noqa: E402
from gpuwpo.search.objective import TNMSEObjective  # noqa: E402
from gpuwpo.search.tiles import TestTile  # noqa: E402

DEFAULT_MODELS = ("digits_cnn", "digits_lstm")
DEFAULT_SEEDS = (100, 101, 102)
#: Programmings of the whole-layer weight errors (steps 4 and 5).
ERROR_REPEATS, QUICK_ERROR_REPEATS = 100, 4
#: gpuwpo's default test tile (out, in), beside the search's in step 5.
DEFAULT_TILE = (20, 512)


def _sem(values: torch.Tensor) -> torch.Tensor:
    """Standard error of the mean over the first axis."""
    return values.std(0) / math.sqrt(values.shape[0])


def _spread(energy: torch.Tensor) -> dict[str, float]:
    """How uneven a layer's energies are: min, max, and the effective share of columns
    ``(sum E)^2 / (C sum E^2)`` (1 when all are equal, 1/C when one column holds all)."""
    e = energy.double().reshape(-1)
    return {"min": float(e.min()), "max": float(e.max()), "mean": float(e.mean()),
            "effective_share": float(e.sum() ** 2 / (e.numel() * e.pow(2).sum()))}


def layer_errors(weights: dict[str, torch.Tensor], energies: dict[str, torch.Tensor],
                 recipes: dict[str, dict[str, Recipe]], t_steps: Sequence[float], *,
                 repeats: int, physics: str, seed: int) -> dict[str, dict[str, Any]]:
    """Each layer's error over the whole layer, plain and energy-weighted, per strategy.

    Every weight of the layer's matrix is programmed ``repeats`` times by each strategy's
    recipe, on the same noise stream (:func:`gpuwpo.simulate_weights`), and its squared error
    ``(10 (W_eff - W) / M)^2`` averaged over the times; the plain error is its mean over the
    weights, the weighted one its mean with each weight counting with its column's energy.

    Returns:
        layer -> strategy -> {"plain": [mean, sem], "weighted": [mean, sem]}; and per layer
        "difference" -> "<a> - <b>" -> the same for the paired differences of the strategies
        against the first.
    """
    out: dict[str, dict[str, Any]] = {}
    for b, (name, w) in enumerate(weights.items()):
        mat = as_matrix(w.detach().float())
        energy = energies[name].double().reshape(-1, mat.shape[1]).expand(mat.shape)
        share = energy / energy.sum()
        per: dict[str, dict[str, torch.Tensor]] = {}
        for label, recipe in recipes[name].items():
            eff = gpuwpo.simulate_weights(mat, recipe, noise_model(), list(t_steps),
                                          repeats=repeats, generator=seed + b,
                                          physics=physics)  # [r, T, out, in]
            err = (10 * (eff - mat) / mat.abs().max()).double().pow(2).mean(1)  # [r, out, in]
            per[label] = {"plain": err.mean((-2, -1)), "weighted": (err * share).sum((-2, -1))}
        figures = {label: {kind: [float(v.mean()), float(_sem(v))] for kind, v in e.items()}
                   for label, e in per.items()}
        labels = list(per)
        figures["difference"] = {
            f"{other} - {labels[0]}": {kind: [float((per[other][kind] - per[labels[0]][kind])
                                                    .mean()),
                                              float(_sem(per[other][kind] - per[labels[0]][kind]))]
                                       for kind in ("plain", "weighted")}
            for other in labels[1:]}
        out[name] = figures
    return out


def tile_bias(weights: dict[str, torch.Tensor], energies: dict[str, torch.Tensor],
              t_steps: Sequence[float], shapes: Sequence[tuple[int, int]], *, repeats: int,
              physics: str, seed: int) -> dict[str, Any]:
    """The baseline's error estimated on test tiles against the whole layer's (step 5).

    Returns:
        layer -> {"layer": {"plain", "weighted"}: [mean, sem] over the whole layer, and per
        tile "OUTxIN": {"plain tile", "drawn tile"}: [mean, sem]}.
    """
    recipe = Recipe(baseline_converter(), "columnwise")
    space = gpuwpo.StrategySpace(list(F_LST), 0.0, 25.0)
    full = layer_errors(weights, energies, {name: {"baseline": recipe} for name in weights},
                        t_steps, repeats=repeats, physics=physics, seed=seed)
    out = {}
    for name, w in weights.items():
        row: dict[str, Any] = {"layer": full[name]["baseline"]}
        for shape in shapes:
            cells = {}
            for label, importance in (("plain tile", None), ("drawn tile", [energies[name]])):
                tiles = TestTile.from_layers({name: w}, space.grid_size, shape=shape, seed=seed,
                                             mapping="columnwise", importance=importance)
                objective = TNMSEObjective(tiles, noise_model(), None, list(t_steps), space,
                                           mapping="columnwise", physics=physics)
                mean, sem = objective.evaluate_converter(recipe, repeats, seed)
                cells[label] = [float(mean[0]), float(sem[0])]
            row[f"{shape[0]}x{shape[1]}"] = cells
        out[name] = row
    return out


def run_model(trained: models.TrainedModel, physics: str, *, seeds: Sequence[int],
              popsize: int, maxiter: int, options: dict[str, Any], repeats: int,
              error_repeats: int, noise_seed: int, device: torch.device,
              calibration: torch.Tensor) -> dict[str, Any]:
    """Calibrate, search plain and with importance for every seed, and measure; as a dict."""
    t_steps = list(TIMES.values())
    start = time.perf_counter()
    energies = gpuwpo.calibrate(trained.model, calibration)
    calibrate_s = time.perf_counter() - start
    weights = gpuwpo.select_weights(trained.model)
    runs, differences = [], {key: [] for key in ("importance - plain", "importance - baseline",
                                                  "plain - baseline")}
    baseline_values = None
    for seed in seeds:
        results, timing = {}, {}
        for label, importance in (("plain", None), ("importance", energies)):
            start = time.perf_counter()
            results[label] = gpuwpo.optimize_network(
                trained.model, noise_model(), t_steps, baseline_converter(), list(F_LST),
                per_layer=True, physics=physics, seed=seed, disp=False, device=device,
                popsize=popsize, maxiter=maxiter, importance=importance, **options)
            timing[f"{label}_search_s"] = time.perf_counter() - start
        values = {}
        for label, result in results.items():
            start = time.perf_counter()
            evaluation = gpuwpo.evaluate_model(
                trained.model, result, trained.accuracy, t_steps, repeats, physics=physics,
                baseline=Recipe(baseline_converter(), "columnwise"), noise_model=noise_model(),
                generator=noise_seed, metric_name="test accuracy (%)")
            timing[f"{label}_evaluate_s"] = time.perf_counter() - start
            values[label] = evaluation.values["optimised"]
            base = evaluation.values["baseline"]
            if baseline_values is None:
                baseline_values = base
            # The same noise seed programs the same baseline in every run: the pairing holds.
            assert torch.equal(base, baseline_values), "the baseline's programmings differ"
        pairs = {"importance - plain": values["importance"] - values["plain"],
                 "importance - baseline": values["importance"] - baseline_values,
                 "plain - baseline": values["plain"] - baseline_values}
        for key, d in pairs.items():
            differences[key].append(d)
        recipes = {name: {"baseline": Recipe(baseline_converter(), "columnwise"),
                          "plain": results["plain"].recipes()[name],
                          "importance": results["importance"].recipes()[name]}
                   for name in weights}
        errors = layer_errors(weights, energies, recipes, t_steps, repeats=error_repeats,
                              physics=physics, seed=seed)
        runs.append({
            "seed": seed, **timing,
            "accuracy": {label: {"mean": v.mean(0).tolist(), "sem": _sem(v).tolist()}
                         for label, v in (("baseline", baseline_values), *values.items())},
            "differences": {key: {"mean": d.mean(0).tolist(), "sem": _sem(d).tolist()}
                            for key, d in pairs.items()},
            "layers": [{
                "name": name,
                **{f"{label}_chosen": results[label].layers[b].chosen for label in results},
                **{f"{label}_mapping": results[label].layers[b].mapping for label in results},
                # As each run measured it on its own tiles: the importance run's figures are
                # energy-weighted, so not comparable with the plain run's.
                **{f"{label}_tnmse": results[label].layers[b].tnmse for label in results},
                **{f"{label}_baseline_tnmse": results[label].layers[b].baseline_tnmse
                   for label in results},
                "whole_layer_error": errors[name],
            } for b, name in enumerate(weights)],
            "settings": {label: r.settings for label, r in results.items()},
        })
    pooled = {}
    for key, ds in differences.items():
        per_repeat = torch.stack(ds).mean(0)  # [repeats, T]: the seeds' mean, repeat by repeat
        seed_means = torch.stack([d.mean(0) for d in ds])  # [seeds, T]
        pooled[key] = {"mean": per_repeat.mean(0).tolist(), "sem": _sem(per_repeat).tolist(),
                       "seed_means": seed_means.tolist(),
                       "seed_sem": (_sem(seed_means).tolist() if len(ds) > 1
                                    else [float("nan")] * len(t_steps))}
    bias = tile_bias(weights, energies, t_steps,
                     [(options["test_out_features"], options["test_in_features"]), DEFAULT_TILE],
                     repeats=error_repeats, physics=physics, seed=noise_seed)
    return {"physics": physics, "calibrate_s": calibrate_s,
            "energies": {name: _spread(e) for name, e in energies.items()},
            "runs": runs, "pooled": pooled, "tile_bias": bias}


def _pm(mean: float, sem: float, signed: bool = True) -> str:
    return f"{mean:+.2f} ± {sem:.2f}" if signed else f"{mean:.2f} ± {sem:.2f}"


def _at(figure: dict[str, list[float]], i: int, signed: bool = True) -> str:
    """``mean +- sem`` of a figure's ``i``-th time."""
    return _pm(figure["mean"][i], figure["sem"][i], signed)


def _tnmse(mean: float, sem: float) -> str:
    return f"{mean:.4f} ± {sem:.4f}"


def tables(record: dict[str, Any]) -> str:
    """The accuracy summary (1 year), the per-time pooled differences, the whole-layer errors
    and the drawn tiles' bias, as markdown."""
    names = list(record["config"]["times"])
    summary, parts = [], []
    for m in record["models"]:
        for run in m["runs"]:
            last = -1
            for r in run["runs"]:
                acc, d = r["accuracy"], r["differences"]
                summary.append({
                    "model": m["name"], "physics": run["physics"], "seed": r["seed"],
                    **{key: _at(acc[key], last, False)
                       for key in ("baseline", "plain", "importance")},
                    **{key: _at(d[key], last) for key in d},
                })
            p = run["pooled"]
            summary.append({"model": m["name"], "physics": run["physics"], "seed": "pooled",
                            **{key: _at(p[key], last) for key in p}})
            rows = [{"difference": f"{key} (pooled, ± SE)",
                     **{n: _pm(mu, se) for n, mu, se in zip(names, p[key]["mean"],
                                                            p[key]["sem"])}}
                    for key in p]
            rows += [{"difference": f"{key}: seeds' spread (SE of {len(p[key]['seed_means'])})",
                      **{n: f"{se:.2f}" for n, se in zip(names, p[key]["seed_sem"])}}
                     for key in p]
            diff = common.markdown_table(rows, ["difference", *names])
            errors = []
            for r in run["runs"]:
                for layer in r["layers"]:
                    e = layer["whole_layer_error"]
                    errors.append({
                        "seed": r["seed"], "layer": layer["name"],
                        "plain run": f"{layer['plain_chosen']} ({layer['plain_mapping']})",
                        "importance run": f"{layer['importance_chosen']} "
                                          f"({layer['importance_mapping']})",
                        **{f"{kind} {label}": f"{e[label][kind][0]:.4f}"
                           for kind in ("plain", "weighted")
                           for label in ("baseline", "plain", "importance")},
                    })
            err = common.markdown_table(errors, [
                "seed", "layer", "plain run", "importance run",
                *[f"{kind} {label}" for kind in ("plain", "weighted")
                  for label in ("baseline", "plain", "importance")]])
            bias_rows = []
            for layer, row in run["tile_bias"].items():
                cells = {"layer": layer,
                         "layer plain": _tnmse(*row["layer"]["plain"]),
                         "layer weighted": _tnmse(*row["layer"]["weighted"])}
                for shape in [k for k in row if k != "layer"]:
                    for label in ("plain tile", "drawn tile"):
                        cells[f"{shape} {label}"] = _tnmse(*row[shape][label])
                bias_rows.append(cells)
            bias_cols = list(bias_rows[0]) if bias_rows else []
            parts.append(
                f"### {m['name']}, physics={run['physics']}\n\n"
                f"Paired accuracy differences (percentage points), pooled over the seeds:\n\n"
                f"{diff}\n\nWhole-layer weight error (TNMSE of every weight, "
                f"{record['config']['error_repeats']} programmings; weighted: each weight "
                f"counts with its input's energy):\n\n{err}\n\nThe baseline's error on tiles "
                f"against the whole layer (plain and energy-weighted):\n\n"
                f"{common.markdown_table(bias_rows, bias_cols)}")
    head = common.markdown_table(summary, [
        "model", "physics", "seed", ("baseline", "baseline 1 y %"), ("plain", "plain 1 y %"),
        ("importance", "importance 1 y %"),
        ("importance - plain", "importance - plain"),
        ("importance - baseline", "importance - baseline"),
        ("plain - baseline", "plain - baseline")])
    return head + "\n\n" + "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line entry point; returns the record (also written as JSON)."""
    parser = common.budget_parser(__doc__, str(DEFAULT_BUDGET[0]), str(DEFAULT_BUDGET[1]))
    add_network_arguments(parser, DEFAULT_MODELS, ["device"])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS),
                        help="search seeds (each searched plain and with importance)")
    parser.add_argument("--calibration-size", type=int, default=None,
                        help="training images in the calibration batch (default all)")
    parser.add_argument("--weight-seed", type=int, default=0, help="the networks' training seed")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads on the CPU (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: popsize {QUICK_BUDGET[0]}, {QUICK_BUDGET[1]} "
                             f"generations, a 16 x 8 tile, {QUICK_REPEATS} repeats")
    parser.add_argument("--name", default="importance")
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args(argv)

    device = common.run_device(args)
    if args.quick:
        (popsize, maxiter), options = QUICK_BUDGET, dict(QUICK_OPTIONS)
        repeats, error_repeats = QUICK_REPEATS, QUICK_ERROR_REPEATS
    else:
        (popsize, maxiter), options = DEFAULT_BUDGET, dict(OPTIONS)
        repeats, error_repeats = REPEATS, ERROR_REPEATS
    popsize, maxiter = args.popsize or popsize, args.maxiter or maxiter
    if args.repeats is not None and args.repeats < 2:
        parser.error("--repeats must be at least 2 (the standard errors need a spread)")
    repeats = args.repeats or repeats
    note = (f"popsize {popsize} x D, {maxiter} generations, a "
            f"{options['test_in_features']} x {options['test_out_features']} test tile, both "
            f"runs at the same budget; {repeats} programmings per strategy and time")
    machine = common.machine_info()
    print(f"importance benchmark on {machine['name']} ({device}): {note}", file=sys.stderr)
    out_models = []
    for name in args.models:
        start = time.perf_counter()
        trained = models.MODELS[name](seed=args.weight_seed)
        train_s = time.perf_counter() - start
        x_train = example.load_digits_data(args.weight_seed)[0]
        calibration = x_train[:args.calibration_size].reshape(-1, *trained.x_test.shape[1:])
        runs = []
        for physics in args.physics:
            run = run_model(trained, physics, seeds=args.seeds, popsize=popsize,
                            maxiter=maxiter, options=options, repeats=repeats,
                            error_repeats=error_repeats, noise_seed=args.noise_seed,
                            device=device, calibration=calibration)
            d = run["pooled"]["importance - plain"]
            print(f"  {name} {physics}: importance - plain at 1 year {d['mean'][-1]:+.2f} ± "
                  f"{d['sem'][-1]:.2f} points", file=sys.stderr, flush=True)
            runs.append(run)
        out_models.append({"name": name, "description": trained.description,
                           "num_weights": trained.num_weights, "train_s": train_s,
                           "digital_accuracy": trained.accuracy(),
                           "calibration_images": int(calibration.shape[0]), "runs": runs})
    config = {
        "models": list(args.models), "physics": list(args.physics), "seeds": list(args.seeds),
        "times": dict(TIMES), "repeats": repeats, "error_repeats": error_repeats,
        "popsize": popsize, "maxiter": maxiter, "optimizer_options": options,
        "f_lst": list(F_LST), "per_layer": True,
        "mapping": "gpuwpo's default (columnwise strategies, columnwise baseline)",
        "baseline": "gpuwpo.DualPairConductanceConverter([1, 1], 0.0, 25.0), per-column",
        "noise_model": "gpuwpo.PCMLikeNoiseModel() defaults (g_max 25 uS)",
        "compensation": "ideal global (compensation=None)",
        "calibration": "gpuwpo.calibrate on the training images (the test set never)",
        "weight_seed": args.weight_seed, "noise_seed": args.noise_seed,
        "torch_threads": torch.get_num_threads(), "device": str(device),
        "command": "python bench/importance.py " + " ".join(
            sys.argv[1:] if argv is None else list(argv)),
    }
    record = common.new_record(machine, note, args.quick, models=out_models, config=config)
    heading = (f"Activation-aware error (importance) against the plain error, "
               f"{machine['name']}, {note}.")
    return common.finish(args.name, record, heading, tables, out_dir=args.out_dir)


if __name__ == "__main__":
    main()
