"""Benchmark: test accuracy of small trained networks over a year of drift, baseline vs optimised.

Does a lower weight error show in a network's accuracy? For each network (bench/models.py:
trained in-process from scikit-learn's bundled digits; by default all three: the digits CNN,
which loses about 6 points after a year under the baseline, the two-layer bidirectional digits
LSTM, which loses about 3, and the digits MLP, which loses about half a point) and each physics
(``device``, ``aihwkit``):

1. search one strategy per layer with :func:`gpuwpo.optimize_network` (``per_layer=True``,
   f_lst = [None, None], against the baseline DualPair f=[1, 1], 0..25 uS under gpuwpo's
   default baseline mapping (per column: each output row scaled to its own max|w|, what
   aihwkit's users deploy); default PCM noise model, g_max 25 uS; ideal global drift
   compensation; inference times 1 s, 1 h, 1 day, 30 days, 1 year) with the budget given on the
   command line; the layers are the ones :func:`gpuwpo.select_weights` finds (Linear, Conv and
   the LSTM's ``weight_ih_l*`` / ``weight_hh_l*`` matrices; biases stay digital);
2. measure test accuracy (450 held-out images) at each time with :func:`gpuwpo.evaluate_model`:
   ``--repeats`` programmings of the whole network per strategy and time
   (:func:`gpuwpo.program_model`: programming noise, drift, read noise, compensation), the
   baseline and the result programmed from the same noise stream (run seed ``--noise-seed``,
   keyed by the repeat and the time), so that their difference is paired; then once more with
   the baseline under the layer-wise mapping (one scale per layer: what gpuwpo compared with
   before the mapping was modelled), on the same noise, so that the optimised figures are the
   same programmings and every difference is paired.

Reported per network and physics: digital accuracy; baseline (per column and layer-wise) and
optimised accuracy (mean +- standard error over the repeats, and the spread) at each time; the
paired differences optimised - baseline with their standard errors (that of the per-repeat
differences); the share of what the baseline loses that the optimised strategies win back,
gain / (digital - baseline), with its standard error (delta method over the repeats: the gain
and the baseline's mean are correlated); the per-layer TNMSE figures of the result (validated
with fresh noise, 95 % intervals, against the baseline's and the layer-wise baseline's), its
mapping and which contender won; the search's wall time, generations and candidates.

Budget: popsize ``--popsize`` x D, ``--maxiter`` generations, by default gpuwpo's own search
defaults, with the digits example's CPU settings (a 64 x 20 test tile per layer, 30 validation
and baseline repeats, polish of 15 iterations): a REDUCED budget against the reference's
default (popsize 100 x D, 200 generations, a 512 x 20 tile). ``--quick`` is a smoke run.

Run:  python bench/accuracy.py [--models digits_cnn digits_lstm digits_mlp]
                               [--physics device aihwkit] [--popsize P] [--maxiter G]
                               [--repeats R] [--quick]
      python -m bench.accuracy ...
Writes bench/results/accuracy-<machine>.json (``--out-dir`` elsewhere) and prints markdown
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
from gpuwpo.device.mapping import describe_recipe  # noqa: E402

#: Inference times, name -> seconds after programming.
TIMES = {"1 s": 1.0, "1 h": 3600.0, "1 day": 86400.0, "1 month": 2592000.0,
         "1 year": 31536000.0}
F_LST = (None, None)
PHYSICS = ("device", "aihwkit")
DEFAULT_MODELS = ("digits_cnn", "digits_lstm", "digits_mlp")
#: The reference's default budget (population multiplier, generations).
FULL_BUDGET = common.REFERENCE_BUDGET
#: The default here: gpuwpo's own search defaults (docs/RESULTS.md, "Defaults").
DEFAULT_BUDGET = (int(common.DEFAULTS["popsize"]), int(common.DEFAULTS["maxiter"]))
#: The digits example's CPU settings (gpuwpo.example.BUDGETS["default"]): the networks' layers
#: hold 72 to 4,096 weights, which a 64 x 20 tile samples well.
OPTIONS = {"test_in_features": 64, "test_out_features": 20, "baseline_iterations": 30,
           "validation_repeats": 30, "polish_maxiter": 15}
QUICK_BUDGET = (2, 2)
QUICK_OPTIONS = {"test_in_features": 16, "test_out_features": 8, "baseline_iterations": 4,
                 "validation_repeats": 4, "polish": False}
QUICK_REPEATS = 2
#: Programmings per strategy and time (as gpuwpo.example.DEFAULT_REPEATS): the CNN's accuracy
#: after a year varies by about 4 points between programmings, the paired difference by about 2.
REPEATS = 50


def baseline_converter() -> gpuwpo.DualPairConductanceConverter:
    return gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0)


def noise_model() -> gpuwpo.PCMLikeNoiseModel:
    return gpuwpo.PCMLikeNoiseModel()


def _figures(evaluation: gpuwpo.ModelEvaluation, key: str) -> dict[str, Any]:
    """``key``'s figures from an evaluation (``"baseline"``, ``"optimised"`` or
    ``"difference"``): mean and standard error per time (:meth:`ModelEvaluation.to_dict`), the
    spread over programmings and every programming's accuracy, in percent."""
    values = (evaluation.difference if key == "difference" else evaluation.values[key])
    figures = evaluation.to_dict()[key]
    return {"mean": figures["mean"], "sem": figures["sem"], "std": values.std(0).tolist(),
            "accuracies": figures["values"]}


def recovered(values: gpuwpo.ModelEvaluation, digital: float) -> dict[str, list[float]]:
    """The share of the baseline's loss the optimised strategies win back, per time:
    R = mean(d) / (digital - mean(b)) with d the paired differences optimised - baseline and
    b the baseline's values, and its standard error by the delta method over the repeats (d
    and b come from the same programmings, so their covariance counts).

    Returns:
        ``mean`` [T] and ``sem`` [T] (fractions; NaN where the baseline loses nothing, or
        gains).
    """
    d, b = values.difference.double(), values.values["baseline"].double()  # [R, T]
    n = d.shape[0]
    lost = digital - b.mean(0)
    ratio = d.mean(0) / lost
    # Gradient of R in (mean d, mean b): (1 / L, mean(d) / L^2); the means' covariance is the
    # sample covariance / n.
    g_d, g_b = 1.0 / lost, d.mean(0) / lost.square()
    dc, bc = d - d.mean(0), b - b.mean(0)
    var_d, var_b = dc.square().sum(0) / (n - 1), bc.square().sum(0) / (n - 1)
    cov = (dc * bc).sum(0) / (n - 1)
    var = (g_d.square() * var_d + g_b.square() * var_b + 2 * g_d * g_b * cov) / n
    nan = torch.full_like(ratio, float("nan"))
    ok = lost > 1e-9  # a mean of the same accuracies as the digital one: round-off, no loss
    return {"mean": torch.where(ok, ratio, nan).tolist(),
            "sem": torch.where(ok, var.sqrt(), nan).tolist()}


def run_one(trained: models.TrainedModel, physics: str, *, popsize: int, maxiter: int,
            options: dict[str, Any], repeats: int, seed: int, noise_seed: int,
            device: torch.device) -> dict[str, Any]:
    """Search, program and measure one network in one physics; its figures as a dict."""
    noise, baseline = noise_model(), baseline_converter()
    t_steps = list(TIMES.values())
    start = time.perf_counter()
    result = gpuwpo.optimize_network(trained.model, noise, t_steps, baseline, list(F_LST),
                                     per_layer=True, physics=physics, seed=seed, disp=False,
                                     device=device, popsize=popsize, maxiter=maxiter, **options)
    optimise_s = time.perf_counter() - start
    start = time.perf_counter()
    evaluation = gpuwpo.evaluate_model(trained.model, result, trained.accuracy, t_steps,
                                       repeats, physics=physics, baseline=baseline,
                                       noise_model=noise, generator=noise_seed,
                                       metric_name="test accuracy (%)")
    # The layer-wise baseline on the same noise (every stream is keyed by the repeat, the time
    # and the layer's name): the optimised programmings are the very same ones.
    layerwise = gpuwpo.evaluate_model(trained.model, result, trained.accuracy, t_steps,
                                      repeats, physics=physics, baseline=baseline,
                                      baseline_mapping="layer", noise_model=noise,
                                      generator=noise_seed, metric_name="test accuracy (%)")
    evaluate_s = time.perf_counter() - start
    if not torch.equal(layerwise.values["optimised"], evaluation.values["optimised"]):
        raise RuntimeError("the optimised programmings differ between the two evaluations: "
                           "the layer-wise baseline would not be paired")
    digital = trained.accuracy()
    layers = [{
        "name": layer.name, "shape": list(layer.shape), "numel": math.prod(layer.shape),
        # A CustomPair program from the search, or (a selection's choice) a standard converter.
        "converter": type(layer.converter).__name__,
        "clip": float(getattr(layer.converter, "clip", 1.0)),
        "mapping": layer.mapping, "chosen": layer.chosen,
        "tnmse": layer.tnmse, "tnmse_ci95": list(layer.tnmse_ci95),
        "baseline_tnmse": layer.baseline_tnmse, "baseline_ci95": list(layer.baseline_ci95),
        "improvement": 1.0 - layer.tnmse / layer.baseline_tnmse,
        "layerwise_baseline_tnmse": layer.layerwise_baseline_tnmse,
        "layerwise_improvement": layer.layerwise_improvement,
    } for layer in result.layers]
    total_layerwise = result.total_layerwise_baseline_tnmse
    return {
        "physics": physics,
        "baseline_recipe": describe_recipe(result.baseline),
        "optimise_s": optimise_s,
        "evaluate_s": evaluate_s,
        "generations": int(result.nit),
        "candidates": int(result.nfev),
        "stop_reason": result.stop_reason,
        "total_tnmse": result.total_tnmse,
        "total_baseline_tnmse": result.total_baseline_tnmse,
        "total_improvement": 1.0 - result.total_tnmse / result.total_baseline_tnmse,
        "total_layerwise_baseline_tnmse": total_layerwise,
        "total_layerwise_improvement": (None if total_layerwise is None
                                        else 1.0 - result.total_tnmse / total_layerwise),
        "layers": layers,
        # Paired (gpuwpo.evaluate_model): the standard error of the difference is that of the
        # per-repeat differences, smaller than either strategy's when the two move together.
        **{key: _figures(evaluation, key) for key in ("baseline", "optimised", "difference")},
        "recovered": recovered(evaluation, digital),
        "layerwise_baseline": _figures(layerwise, "baseline"),
        "layerwise_difference": _figures(layerwise, "difference"),
        "layerwise_recovered": recovered(layerwise, digital),
        # The per-column baseline against the layer-wise one, paired (the same noise).
        "baseline_vs_layerwise": _paired(evaluation.values["baseline"]
                                         - layerwise.values["baseline"]),
        "settings": result.settings,
    }


def _paired(diff: torch.Tensor) -> dict[str, list[float]]:
    """Mean and standard error per time of paired differences ``[repeats, T]``."""
    return {"mean": diff.mean(0).tolist(),
            "sem": (diff.std(0) / math.sqrt(diff.shape[0])).tolist()}


def _pm(mean: float, spread: float, signed: bool = False) -> str:
    return f"{mean:+.2f} ± {spread:.2f}" if signed else f"{mean:.2f} ± {spread:.2f}"


def _share(fig: dict[str, list[float]] | None) -> str:
    """The last time's recovered share as a percentage with its 95 % interval."""
    if not fig or math.isnan(fig["mean"][-1]):
        return "-"
    mean, sem = 100 * fig["mean"][-1], 100 * fig["sem"][-1]
    return f"{mean:.0f} % [{mean - 1.96 * sem:.0f}, {mean + 1.96 * sem:.0f}]"


def tables(record: dict[str, Any]) -> str:
    """A summary table (against the per-column baseline, then the layer-wise one), then per
    network and physics the accuracy table and the layer table."""
    names = list(record["config"]["times"])
    summary, layerwise_summary, parts = [], [], []
    # Every network and physics, in the record's order.
    for m, run in ((model, r) for model in record["models"] for r in model["runs"]):
        digital = m["digital_accuracy"]
        summary.append({
            "model": m["name"], "physics": run["physics"],
            "digital": f"{digital:.2f}",
            "lost": f"{digital - run['baseline']['mean'][-1]:.2f}",
            "baseline": _pm(run["baseline"]["mean"][-1], run["baseline"]["sem"][-1]),
            "optimised": _pm(run["optimised"]["mean"][-1], run["optimised"]["sem"][-1]),
            "diff": _pm(run["difference"]["mean"][-1], run["difference"]["sem"][-1], True),
            "share": _share(run.get("recovered")),
            "tnmse": f"{run['total_tnmse']:.4f} / {run['total_baseline_tnmse']:.4f}",
            "gain": f"{100 * run['total_improvement']:.1f} %",
            "optimise_s": f"{run['optimise_s']:.1f}",
        })
        if "layerwise_baseline" in run:
            lw = run["layerwise_baseline"]
            lwd = run["layerwise_difference"]
            gain = run.get("total_layerwise_improvement")
            layerwise_summary.append({
                "model": m["name"], "physics": run["physics"],
                "lost": f"{digital - lw['mean'][-1]:.2f}",
                "baseline": _pm(lw["mean"][-1], lw["sem"][-1]),
                "diff": _pm(lwd["mean"][-1], lwd["sem"][-1], True),
                "share": _share(run.get("layerwise_recovered")),
                "col": _pm(run["baseline_vs_layerwise"]["mean"][-1],
                           run["baseline_vs_layerwise"]["sem"][-1], True),
                "gain": "-" if gain is None else f"{100 * gain:.1f} %",
            })
        rows = [{"strategy": "digital", **{n: f"{digital:.2f}" for n in names}}]
        keys = [("baseline", run.get("baseline_recipe", "baseline")),
                ("optimised", "optimised")]
        if "layerwise_baseline" in run:
            keys.append(("layerwise_baseline", "baseline, layer-wise mapping"))
        for key, label in keys:
            fig = run[key]
            rows.append({"strategy": f"{label} (± SE)",
                         **{n: _pm(mu, se) for n, mu, se in zip(names, fig["mean"],
                                                                fig["sem"])}})
            # How much one programming varies: what a single chip may see.
            rows.append({"strategy": f"{label}: spread (std)",
                         **{n: f"{sd:.2f}" for n, sd in zip(names, fig["std"])}})
        for key, label in (("difference", "optimised - baseline"),
                           ("layerwise_difference", "optimised - layer-wise baseline")):
            if key in run:
                d = run[key]
                rows.append({"strategy": f"{label} (paired, ± SE)",
                             **{n: _pm(mu, se, True) for n, mu, se in zip(names, d["mean"],
                                                                          d["sem"])}})
        acc = common.markdown_table(rows, ["strategy", *names])
        layers = common.markdown_table([{
            "layer": layer["name"], "shape": "x".join(map(str, layer["shape"])),
            "converter": layer["converter"] + (f", clip {layer['clip']:g}"
                                               if layer.get("clip", 1.0) != 1.0 else ""),
            "mapping": layer.get("mapping", "layer"), "chosen": layer.get("chosen", "-"),
            "tnmse": f"{layer['tnmse']:.4f} [{layer['tnmse_ci95'][0]:.4f}, "
                     f"{layer['tnmse_ci95'][1]:.4f}]",
            "baseline": f"{layer['baseline_tnmse']:.4f} [{layer['baseline_ci95'][0]:.4f}, "
                        f"{layer['baseline_ci95'][1]:.4f}]",
            "gain": f"{100 * layer['improvement']:.1f} %",
            "lw": ("-" if layer.get("layerwise_improvement") is None
                   else f"{100 * layer['layerwise_improvement']:.1f} %"),
        } for layer in run["layers"]], ["layer", "shape", "converter", "mapping", "chosen",
                                         ("tnmse", "TNMSE [95% CI]"),
                                         ("baseline", "baseline [95% CI]"), "gain",
                                         ("lw", "vs layer-wise")])
        parts.append(f"### {m['name']}, physics={run['physics']}\n\n"
                     f"Test accuracy (%), mean ± standard error over "
                     f"{record['config']['repeats']} programmings per strategy and time, "
                     f"paired (gpuwpo.evaluate_model):\n\n{acc}\n\n"
                     f"Per layer (validated TNMSE):\n\n{layers}")
    head = common.markdown_table(summary, [
        "model", "physics", ("digital", "digital %"), ("lost", "baseline's loss 1 y"),
        ("baseline", "baseline 1 y % (± SE)"), ("optimised", "optimised 1 y % (± SE)"),
        ("diff", "difference 1 y (paired, ± SE)"), ("share", "share won back [95% CI]"),
        ("tnmse", "total TNMSE opt / base"), ("gain", "TNMSE gain"),
        ("optimise_s", "search s"),
    ])
    against = next((run.get("baseline_recipe") for m in record["models"] for run in m["runs"]),
                   None)
    out = (f"Against {against or 'the baseline'}:\n\n" + head)
    if layerwise_summary:
        out += ("\n\nAgainst the layer-wise baseline (the same converter, one scale per layer; "
                "the same programmings):\n\n" + common.markdown_table(layerwise_summary, [
                    "model", "physics", ("lost", "layer-wise baseline's loss 1 y"),
                    ("baseline", "layer-wise baseline 1 y % (± SE)"),
                    ("diff", "optimised - layer-wise 1 y (paired, ± SE)"),
                    ("share", "share won back [95% CI]"),
                    ("col", "per-column - layer-wise baseline 1 y (paired)"),
                    ("gain", "TNMSE gain vs layer-wise")]))
    return out + "\n\n" + "\n\n".join(parts)


def add_network_arguments(parser, default_models: Sequence[str],
                          default_physics: Sequence[str]) -> None:
    """The flags of the benchmarks that program trained networks: --models, --physics,
    --repeats (default None: REPEATS, or QUICK_REPEATS with --quick) and --noise-seed."""
    parser.add_argument("--models", nargs="+", choices=sorted(models.MODELS),
                        default=list(default_models))
    parser.add_argument("--physics", nargs="+", choices=PHYSICS, default=list(default_physics))
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"programmings per strategy and time (default {REPEATS}, --quick "
                             f"{QUICK_REPEATS}; at least 2)")
    parser.add_argument("--noise-seed", type=int, default=0,
                        help="run seed of the programming noise (gpuwpo.evaluate_model's "
                             "generator: streams keyed by repeat and time, shared by every "
                             "strategy, so that the comparisons are paired)")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line entry point; returns the record (also written as JSON)."""
    parser = common.budget_parser(__doc__, str(DEFAULT_BUDGET[0]), str(DEFAULT_BUDGET[1]))
    add_network_arguments(parser, DEFAULT_MODELS, PHYSICS)
    common.add_run_arguments(parser)  # --weight-seed: the networks' training seed
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: popsize {QUICK_BUDGET[0]}, {QUICK_BUDGET[1]} "
                             f"generations, a 16 x 8 test tile, 4 validation and baseline "
                             f"repeats, no polish, {QUICK_REPEATS} repeats")
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=JSON",
                        help="any search option, e.g. --set clip=0.5 (repeatable)")
    parser.add_argument("--name", default="accuracy",
                        help="results file stem (default accuracy)")
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args(argv)

    device = common.run_device(args)
    if args.quick:
        (popsize, maxiter), options = QUICK_BUDGET, dict(QUICK_OPTIONS)
        repeats = QUICK_REPEATS
    else:
        (popsize, maxiter), options = DEFAULT_BUDGET, dict(OPTIONS)
        repeats = REPEATS
    popsize, maxiter = args.popsize or popsize, args.maxiter or maxiter
    if args.repeats is not None and args.repeats < 2:
        parser.error("--repeats must be at least 2 (the standard errors need a spread)")
    repeats = args.repeats or repeats
    common.apply_set_options(parser, options, args.set)
    note = (f"REDUCED budget: popsize {popsize} x D, {maxiter} generations, "
            f"{options.get('test_in_features')} x {options.get('test_out_features')} test tile "
            f"(the reference's default is popsize {FULL_BUDGET[0]} x D, {FULL_BUDGET[1]} "
            f"generations, a 512 x 20 tile)")
    machine = common.machine_info()
    print(f"accuracy benchmark on {machine['name']} ({device}): {note}", file=sys.stderr)

    warmup = not (args.no_warmup or args.quick)
    out_models = []
    for name in args.models:
        start = time.perf_counter()
        trained = models.MODELS[name](seed=args.weight_seed)
        train_s = time.perf_counter() - start
        digital = trained.accuracy()
        print(f"  {name}: trained in {train_s:.1f} s, digital accuracy {digital:.2f} %",
              file=sys.stderr, flush=True)
        if warmup:
            # Untimed: lazy imports, first-call costs (and CUDA context where there is one).
            first = next(iter(gpuwpo.select_weights(trained.model).items()))
            gpuwpo.optimize_network(dict([first]), noise_model(), list(TIMES.values()),
                                    baseline_converter(), list(F_LST), disp=False, device=device,
                                    popsize=1, maxiter=1, validation_repeats=2,
                                    baseline_iterations=2, polish=False,
                                    test_in_features=16, test_out_features=8)
            warmup = False
        runs = []
        for physics in args.physics:
            run = run_one(trained, physics, popsize=popsize, maxiter=maxiter, options=options,
                          repeats=repeats, seed=args.seed, noise_seed=args.noise_seed,
                          device=device)
            print(f"  {name} {physics}: search {run['optimise_s']:.1f} s, accuracy "
                  f"{run['evaluate_s']:.1f} s; 1 year: baseline "
                  f"{run['baseline']['mean'][-1]:.2f}, optimised "
                  f"{run['optimised']['mean'][-1]:.2f} %", file=sys.stderr, flush=True)
            runs.append(run)
        out_models.append({
            "name": name, "description": trained.description,
            "num_weights": trained.num_weights, "train_s": train_s,
            "test_size": int(trained.y_test.numel()), "digital_accuracy": digital,
            "runs": runs,
        })

    config = {
        "models": list(args.models), "physics": list(args.physics),
        "times": dict(TIMES), "repeats": repeats, "popsize": popsize, "maxiter": maxiter,
        "optimizer_options": options, "f_lst": list(F_LST), "per_layer": True,
        "noise_model": "gpuwpo.PCMLikeNoiseModel() defaults (g_max 25 uS)",
        "compensation": "ideal global (compensation=None)",
        "baseline": "gpuwpo.DualPairConductanceConverter([1, 1], 0.0, 25.0)",
        "baseline_mapping": gpuwpo.search.options.SearchOptions(
            **{k: v for k, v in options.items()
               if k in ("mapping", "baseline_mapping")}).baseline_mapping,
        "seed": args.seed, "weight_seed": args.weight_seed, "noise_seed": args.noise_seed,
        "accuracy_unit": "percent of the test set",
        "torch_threads": torch.get_num_threads(), "device": str(device),
    }
    record = common.new_record(machine, note, args.quick, models=out_models, config=config,
                               load_average=common.load_average())
    heading = f"Accuracy over a year of PCM drift, {machine['name']}, {note}."
    return common.finish(args.name, record, heading, tables, out_dir=args.out_dir)


if __name__ == "__main__":
    main()
