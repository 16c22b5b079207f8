"""Benchmark: per-layer strategies for a BERT-base-shaped network in one call.

73 weight matrices shaped like BERT-base's Linear layers (torch's [out, in] layout): per encoder
block query, key, value and attention output (768 x 768 each), intermediate (3072 x 768) and
output (768 x 3072), times 12 blocks, plus the pooler (768 x 768); about 85 million weights.
The weights are synthetic and heavy-tailed (Student-t, 3 dof) with a per-layer scale varied by up
to +-20 % around 0.05, as trained layers differ in scale. They are passed as a mapping
name -> tensor to :func:`gpuwpo.optimize_network` with ``per_layer=True``: one strategy per layer,
all 73 searches in one batched search.

Setup as in bench/search.py: f_lst = [None, None] (D = 21), inference times 1 s, 1 h, 1 day,
30 days, 1 year, default PCM noise, ideal global compensation, baseline DualPair f = [1, 1],
0..25 uS under gpuwpo's default mappings (``SearchOptions.mapping`` and ``baseline_mapping``;
``--set mapping='"layer"'`` and the like change them); the layer-wise baseline (the same
converter, one scale per layer: what gpuwpo compared with before the mapping was modelled) is
measured beside every answer and reported too.

Budget: the reference's default (popsize 100 x D, 200 generations, every other optimizer keyword
at its default) on CUDA. On the CPU one generation of 73 layers is 73 times a one-layer
generation, so the default there is a much REDUCED budget (popsize 5 x D, 40 generations, 20
validation and baseline repeats, no polish; about 12 minutes on this project's 2-core CPU); the
JSON and the table say which budget was used.

Reported: wall time (weight generation apart), peak memory (``torch.cuda.max_memory_allocated``
on CUDA; the process's peak RSS from ``resource.getrusage`` on the CPU, which includes the
85 M weights), generations, candidates evaluated, size-weighted total TNMSE vs baseline and vs
the layer-wise baseline, the number of layers that beat their baseline by the loss margin, and
per layer its recipe (mapping, clip), the contender that won and every contender's figures.

The search's own contribution (``search_vs_start``, per layer): the search's answer (its best
point, or its polish where that is better on the choice's picking block) against the best
standard start among the choice's contenders (``start: ...``, under either mapping), both
programmed again ``--contender-repeats`` times on fresh noise (paired, run seed
``--judge-seed``): the gain 1 - TNMSE(search) / TNMSE(start) with its standard error. A layer
whose search ended on its best start has no "search" contender (it is labelled by the start)
and a gain of exactly 0.

Run:  python bench/network.py [--popsize P] [--maxiter G] [--backend torch]
      python -m bench.network ...
Writes bench/results/network-<machine>.json (``--out-dir`` elsewhere) and prints markdown tables.
"""

from __future__ import annotations

import contextlib
import math
import re
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpuwpo  # noqa: E402
from bench import common, toolkit_loss  # noqa: E402
from gpuwpo.device.mapping import describe_recipe  # noqa: E402
from gpuwpo.device.simulate import converter_errors  # noqa: E402
from gpuwpo.search.objective import path_converter  # noqa: E402

T_STEPS = gpuwpo.device.simulate.DEFAULT_TIMES
F_LST = (None, None)
FULL_BUDGET = common.REFERENCE_BUDGET
#: The CPU default: gpuwpo's 5 x D population for 40 generations, the candidates per layer
#: (about 8,600) that the earlier 10 x D, 20-generation budget of this benchmark spent in 690 s.
CPU_BUDGET = (5, 40)
CPU_OPTIONS = {"validation_repeats": 20, "baseline_iterations": 20, "polish": False}
QUICK_BUDGET = (2, 2)
QUICK_OPTIONS = {"test_in_features": 32, "test_out_features": 4, "validation_repeats": 4,
                 "baseline_iterations": 4, "polish_maxiter": 2}


def bert_shaped_weights(*, hidden: int = 768, intermediate: int = 3072, blocks: int = 12,
                        max_layers: int | None = None, seed: int = 0,
                        device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Synthetic weights named and shaped like BERT-base's Linear layers ([out, in]).

    Student-t (3 dof) weights; each layer's scale is 0.05 x (0.8 + 0.4 u), u uniform, so that the
    layers differ a little as trained ones do. ``max_layers`` keeps the first layers only (smoke
    runs). Deterministic in ``seed`` (one generator, drawn in the layers' order).
    """
    gen = torch.Generator().manual_seed(seed)
    shapes: list[tuple[str, tuple[int, int]]] = []
    for i in range(blocks):
        prefix = f"encoder.layer.{i}"
        for part in ("query", "key", "value"):
            shapes.append((f"{prefix}.attention.self.{part}.weight", (hidden, hidden)))
        shapes.append((f"{prefix}.attention.output.dense.weight", (hidden, hidden)))
        shapes.append((f"{prefix}.intermediate.dense.weight", (intermediate, hidden)))
        shapes.append((f"{prefix}.output.dense.weight", (hidden, intermediate)))
    shapes.append(("pooler.dense.weight", (hidden, hidden)))
    if max_layers is not None:
        shapes = shapes[:max_layers]
    out = {}
    for name, shape in shapes:
        scale = 0.05 * (0.8 + 0.4 * float(torch.rand((), generator=gen)))
        out[name] = gpuwpo.student_t_weights(shape, df=3, scale=scale, generator=gen).to(device)
    return out


def _rss_mib() -> float | None:
    # Current resident set (resource.getrusage only knows the peak).
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _kind(name: str) -> str:
    """query / key / value / attention output / intermediate / output / pooler."""
    for pattern, kind in ((r"\.query\.", "query"), (r"\.key\.", "key"), (r"\.value\.", "value"),
                          (r"attention\.output", "attention output"),
                          (r"intermediate", "intermediate"), (r"\.output\.", "output"),
                          (r"pooler", "pooler")):
        if re.search(pattern, name):
            return kind
    return "other"


#: Labels of the search's own contenders in a layer's choice (gpuwpo.search.optimizer).
SEARCH_LABELS = ("search", "polish")
#: The label prefix of the standard starts among a layer's contenders.
START_PREFIX = "start: "


@contextlib.contextmanager
def captured_choices() -> Iterator[list[dict[str, Any]]]:
    """Inside it, every per-layer choice of :class:`gpuwpo.WeightProgrammingOptimizer` is
    recorded (its objective, contenders, baseline and choices), so that a benchmark can measure
    the contenders again; the library's function is restored on exit."""
    from gpuwpo.search import optimizer

    original = optimizer.choose_per_layer
    calls: list[dict[str, Any]] = []

    def recording(objective, contenders, baseline, **kwargs):
        choices = original(objective, contenders, baseline, **kwargs)
        calls.append({"objective": objective, "contenders": contenders, "baseline": baseline,
                      "choices": choices})
        return choices

    optimizer.choose_per_layer = recording
    try:
        yield calls
    finally:
        optimizer.choose_per_layer = original


def search_vs_start(call: dict[str, Any], *, repeats: int, seed: int) -> list[dict[str, Any]]:
    """Per layer of one recorded choice (:func:`captured_choices`): the search's answer against
    the best standard start, measured again on fresh noise.

    The search's answer is its best point or its polish, whichever the choice's picking block
    found lower; the best start is the lowest ``start: ...`` contender there (under either
    mapping). Both are programmed ``repeats`` times on the layer's test tile with the noise of
    run seed ``seed`` (keyed by the layer, the same draws for both: paired).

    Returns:
        One dict per layer: ``search`` and ``start`` (label, picking-block mean), and where the
        search left its start ``gain`` = 1 - mean(search) / mean(start) on the fresh noise with
        ``gain_se`` (the paired differences' standard error over the start's mean);
        ``ended_on_start`` where the search's answer is its best start (gain exactly 0).
    """
    objective = call["objective"]
    out = []
    for b, (choice, contenders) in enumerate(zip(call["choices"], call["contenders"])):
        recipes = dict(contenders)
        figures = choice.figures
        own = [label for label in SEARCH_LABELS if label in figures]
        starts = [label for label in figures if label.startswith(START_PREFIX)]
        row: dict[str, Any] = {"chosen": choice.label}
        if not starts:
            out.append(row)
            continue
        start = min(starts, key=lambda label: figures[label][0])
        row["start"] = {"label": start, "picking_mean": figures[start][0]}
        if not own:
            row.update(ended_on_start=True, gain=0.0, gain_se=0.0)
            out.append(row)
            continue
        search = min(own, key=lambda label: figures[label][0])
        row["search"] = {"label": search, "picking_mean": figures[search][0]}
        errors = converter_errors(
            objective.tiles.tile(b), path_converter([recipes[search], recipes[start]]),
            objective.noise_model, objective.t_steps, compensation=objective.compensation,
            physics=objective.physics, repeats=repeats, generator=seed,
            layer_id=objective.tiles.layer_ids[b], amplification=objective.error_amplification,
            memory_budget=objective.memory_budget).double().mean(-1)  # [2, repeats]
        diff = errors[0] - errors[1]
        base = float(errors[1].mean())
        row.update(ended_on_start=False, search_tnmse=float(errors[0].mean()),
                   start_tnmse=base, gain=-float(diff.mean()) / base,
                   gain_se=float(diff.std() / math.sqrt(repeats)) / base)
        out.append(row)
    return out


def run(weights: dict[str, torch.Tensor], *, popsize: int, maxiter: int, device: torch.device,
        backend: str = "torch", seed: int = 100, warmup: bool = True,
        options: dict[str, Any] | None = None, hierarchical: bool = False,
        contender_repeats: int = 0, judge_seed: int = 9100) -> dict[str, Any]:
    """Optimise every layer of ``weights`` in one :func:`gpuwpo.optimize_network` call.

    ``contender_repeats`` > 0: afterwards measure every layer's search against its best
    standard start on that many fresh programmings (:func:`search_vs_start`, run seed
    ``judge_seed``); 0 skips it."""
    options = dict(options or {})
    noise = gpuwpo.PCMLikeNoiseModel(g_max=25.0)
    baseline = gpuwpo.DualPairConductanceConverter(f_lst=[1.0, 1.0], g_min=0.0, g_max=25.0)

    def call(ws, **kw):
        return gpuwpo.optimize_network(ws, noise, T_STEPS, baseline, list(F_LST), per_layer=True,
                                backend=backend, device=device, hierarchical=hierarchical,
                                **{"seed": seed, "disp": False, **options, **kw})

    if warmup:
        # Untimed: lazy imports, CUDA context, Triton compilation.
        first = next(iter(weights))
        call({first: weights[first]}, popsize=1, maxiter=1, validation_repeats=2,
             baseline_iterations=2, polish=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with captured_choices() as calls, common.WallProfile(device) as profile:
        start = time.perf_counter()
        res = call(weights, popsize=popsize, maxiter=maxiter)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
    margin = float(res.settings["options"].get("loss_margin", common.DEFAULTS["loss_margin"]))
    # The per-layer search's choice (the last recorded: a hierarchical run's pooled search
    # comes first), one row per layer in the result's order.
    choices = calls[-1]["choices"] if calls and len(calls[-1]["choices"]) == len(
        res.layers) else [None] * len(res.layers)
    contest = None
    if contender_repeats > 0 and calls and choices[0] is not None:
        judge_start = time.perf_counter()
        contest = search_vs_start(calls[-1], repeats=contender_repeats, seed=judge_seed)
        contest_s = time.perf_counter() - judge_start
    layers = [{
        "name": layer.name, "kind": _kind(layer.name), "shape": list(layer.shape),
        "tnmse": layer.tnmse, "tnmse_ci95": list(layer.tnmse_ci95),
        "baseline_tnmse": layer.baseline_tnmse, "baseline_ci95": list(layer.baseline_ci95),
        "improvement": layer.improvement,
        "success": layer.tnmse < layer.baseline_tnmse * (1 - margin),
        "chosen": layer.chosen,
        "mapping": layer.mapping,
        "clip": float(getattr(layer.converter, "clip", 1.0)),
        "layerwise_baseline_tnmse": layer.layerwise_baseline_tnmse,
        "layerwise_baseline_ci95": (None if layer.layerwise_baseline_ci95 is None
                                    else list(layer.layerwise_baseline_ci95)),
        "layerwise_improvement": layer.layerwise_improvement,
        # Worse than the baseline with confidence: the layer's answer and its baseline are
        # evaluated on the same noise, so their intervals overlap far more than their
        # difference's; a layer that keeps its baseline is equal to it.
        "worse": layer.tnmse_ci95[0] > layer.baseline_tnmse,
        # Every contender's (mean, SE) on the choice's picking block (the winner's optimistic).
        "contenders": (None if choice is None else
                       {label: list(v) for label, v in choice.figures.items()}),
        "search_vs_start": None if contest is None else contest[i],
    } for i, (layer, choice) in enumerate(zip(res.layers, choices))]
    total_layerwise = res.total_layerwise_baseline_tnmse
    return {
        "backend": backend,
        "device": str(device),
        "popsize": popsize,
        "maxiter": maxiter,
        "full_default_budget": (popsize, maxiter) == FULL_BUDGET
        and all(common.DEFAULTS.get(k) == v for k, v in options.items()),
        "num_layers": len(layers),
        "num_weights": sum(w.numel() for w in weights.values()),
        "wall_time_s": wall,
        "generations": res.nit,
        "candidates": res.nfev,
        "candidates_per_layer": res.nfev // max(1, len(layers)),
        "stop_reason": res.stop_reason,
        "peak_gpu_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                                if device.type == "cuda" else None),
        "peak_rss_mib": _peak_rss_mib(),
        "total_tnmse": res.total_tnmse,
        "total_baseline_tnmse": res.total_baseline_tnmse,
        "total_improvement": 1.0 - res.total_tnmse / res.total_baseline_tnmse,
        "baseline_recipe": describe_recipe(res.baseline),
        "total_layerwise_baseline_tnmse": total_layerwise,
        "total_layerwise_improvement": (None if total_layerwise is None
                                        else 1.0 - res.total_tnmse / total_layerwise),
        "contender_repeats": contender_repeats,
        "contender_judge_s": None if contest is None else contest_s,
        "search_vs_start": None if contest is None else _contest_summary(contest),
        "loss_margin": margin,
        "layers_success": sum(r["success"] for r in layers),
        "layers_improved": sum(r["tnmse"] < r["baseline_tnmse"] for r in layers),
        "layers_kept_baseline": sum(r["chosen"] == "baseline" for r in layers),
        "layers_worse": sum(r["worse"] for r in layers),
        "min_improvement": min(r["improvement"] for r in layers),
        "hierarchical": hierarchical,
        # Where the wall time went (common.WallProfile): per phase, candidate evaluation and
        # the rest; "outside the phases" is the pipeline's own work.
        "profile": profile.summary(),
        "dim": gpuwpo.StrategySpace(list(F_LST), nbins=int(
            res.settings["options"].get("nbins", common.DEFAULTS["nbins"]))).dim,
        "baseline_iterations": int(res.settings["options"].get(
            "baseline_iterations", common.DEFAULTS["baseline_iterations"])),
        "layers": layers,
        "settings": res.settings,
    }


def _contest_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How often the search beat its best standard start (:func:`search_vs_start`): layers
    where it ended on a start, where it left it and was better / worse by more than 1.96
    standard errors, and the median gain of those that left it."""
    left = [r for r in rows if r.get("ended_on_start") is False]
    gains = sorted(r["gain"] for r in left)
    return {
        "layers": len(rows),
        "ended_on_start": sum(bool(r.get("ended_on_start")) for r in rows),
        "left_start": len(left),
        "better": sum(r["gain"] - 1.96 * r["gain_se"] > 0 for r in left),
        "worse": sum(r["gain"] + 1.96 * r["gain_se"] < 0 for r in left),
        "median_gain": gains[len(gains) // 2] if gains else None,
        "chosen_search": sum(r.get("chosen") in SEARCH_LABELS for r in rows),
    }


def tables(record: dict[str, Any]) -> str:
    """A summary table and a per-kind table (mean over the layers of each kind)."""
    r = record["result"]
    budget = (f"{r['popsize']}xD, {r['maxiter']} gen "
              f"({'default' if r['full_default_budget'] else 'reduced'})")
    memory = (f"{r['peak_gpu_memory_gib']:.2f} GiB GPU" if r["peak_gpu_memory_gib"] is not None
              else f"{r['peak_rss_mib']:.0f} MiB RSS")
    summary = common.markdown_table([{
        "device": r["device"], "backend": r["backend"], "budget": budget,
        "layers": r["num_layers"], "weights": f"{r['num_weights'] / 1e6:.1f} M",
        "generations": r["generations"], "candidates": r["candidates"],
        "wall": f"{r['wall_time_s']:.1f}", "memory": memory,
        "tnmse": f"{r['total_tnmse']:.5f}", "baseline": f"{r['total_baseline_tnmse']:.5f}",
        "success": f"{r['layers_success']} / {r['num_layers']}",
        "gain": f"{100 * r['total_improvement']:.1f} %",
        "lw": ("-" if r.get("total_layerwise_improvement") is None
               else f"{100 * r['total_layerwise_improvement']:.1f} %"),
        "kept": r.get("layers_kept_baseline", "-"),
        "worse": r.get("layers_worse", "-"),
        "hier": "yes" if r.get("hierarchical") else "no",
    }], ["device", "backend", "budget", ("hier", "hierarchical"), "layers", "weights",
         "generations",
         ("candidates", "candidates (all layers)"), ("wall", "wall s"), ("memory", "peak memory"),
         ("tnmse", "total TNMSE"), ("baseline", "total baseline"),
         ("gain", "total below baseline"), ("lw", "below layer-wise baseline"),
         ("success", "layers beating baseline by margin"), ("kept", "layers keeping baseline"),
         ("worse", "layers worse")])
    kinds: dict[str, list[dict]] = {}
    for layer in r["layers"]:
        kinds.setdefault(layer["kind"], []).append(layer)
    def mean_of(ls: list[dict], key: str) -> float | None:
        values = [x.get(key) for x in ls]
        return None if any(v is None for v in values) else sum(values) / len(values)

    per_kind = common.markdown_table([{
        "kind": kind, "n": len(ls),
        "tnmse": f"{sum(x['tnmse'] for x in ls) / len(ls):.5f}",
        "baseline": f"{sum(x['baseline_tnmse'] for x in ls) / len(ls):.5f}",
        "gain": f"{100 * sum(x['improvement'] for x in ls) / len(ls):.1f} %",
        "lw": ("-" if mean_of(ls, "layerwise_improvement") is None
               else f"{100 * mean_of(ls, 'layerwise_improvement'):.1f} %"),
        "success": sum(x["success"] for x in ls),
        "mappings": ", ".join(f"{m} {sum(x.get('mapping') == m for x in ls)}"
                              for m in ("columnwise", "layer")
                              if any(x.get("mapping") == m for x in ls)),
    } for kind, ls in kinds.items()], [
        "kind", ("n", "layers"), ("tnmse", "mean TNMSE"), ("baseline", "mean baseline"),
        ("gain", "mean gain"), ("lw", "mean gain vs layer-wise"), ("success", "successes"),
        ("mappings", "answers' mappings"),
    ])
    out = (f"Against {r.get('baseline_recipe', 'the baseline')}:\n\n" + summary
           + "\n\nPer layer kind:\n\n" + per_kind)
    chosen: dict[str, int] = {}
    for layer in r["layers"]:
        chosen[layer["chosen"]] = chosen.get(layer["chosen"], 0) + 1
    out += "\n\nAnswers: " + ", ".join(f"{label} {n}" for label, n in
                                        sorted(chosen.items(), key=lambda kv: -kv[1]))
    contest = r.get("search_vs_start")
    if contest:
        median = contest["median_gain"]
        out += (f"\n\nThe search against its best standard start ({r['contender_repeats']} "
                f"fresh programmings per layer, paired): of {contest['layers']} layers, "
                f"{contest['ended_on_start']} ended on a start; of the {contest['left_start']} "
                f"that left it, {contest['better']} are better and {contest['worse']} worse by "
                f"more than 1.96 standard errors"
                + ("" if median is None else f" (median gain {100 * median:+.2f} %)")
                + f"; the choice took the search's answer on {contest['chosen_search']}.")
    if r.get("profile"):
        out += "\n\nWhere the wall time went:\n\n" + common.profile_table(r["profile"])
    tk = record.get("toolkit")
    if tk:
        out += (f"\n\naihwkit {tk['version']}, one core, the same budget layer by layer (its "
                f"polish not counted): {r['toolkit_estimated_wall_s']:.0f} s estimated, "
                f"{r['speedup_vs_toolkit']:.0f}x gpuwpo's wall time; the candidates gpuwpo "
                f"evaluated, at the toolkit's cost each: {r['toolkit_same_candidates_s']:.0f} s "
                f"({r['toolkit_same_candidates_s'] / r['wall_time_s']:.0f}x). Its costs: "
                f"loss_weights {tk['loss']['loss_weights']['ms_per_candidate']:.1f} ms, its DE "
                f"{1e3 * tk['search']['s_per_candidate']:.1f} ms per candidate.")
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line entry point; returns the record (also written as JSON)."""
    parser = common.budget_parser(
        __doc__, f"{FULL_BUDGET[0]} on CUDA, {CPU_BUDGET[0]} on the CPU",
        f"{FULL_BUDGET[1]} on CUDA, {CPU_BUDGET[1]} on the CPU")
    parser.add_argument("--backend", choices=("torch", "evotorch", "scipy"), default="torch")
    parser.add_argument("--validation-repeats", type=int, default=None,
                        help="default: the optimizer's (100) on CUDA, 20 on the CPU")
    parser.add_argument("--baseline-iterations", type=int, default=None,
                        help="default: the optimizer's (100) on CUDA, 20 on the CPU")
    parser.add_argument("--polish", choices=("on", "off"), default=None,
                        help="local polish (default: on on CUDA, off on the CPU)")
    parser.add_argument("--weights", choices=("bert-shaped", "minilm"), default="bert-shaped",
                        help="bert-shaped: the synthetic BERT-base-shaped network (default); "
                             "minilm: the 37 linear layers of the pretrained all-MiniLM-L6-v2 "
                             f"(needs the package {common.PRETRAINED_PACKAGE})")
    parser.add_argument("--name", default=None,
                        help="results file stem (default network, network-minilm, with "
                             "-hierarchical)")
    parser.add_argument("--hierarchical", action="store_true",
                        help="a pooled global search first, every layer starting from it")
    parser.add_argument("--set", action="append", default=[], metavar="OPTION=JSON",
                        help="any search option, e.g. --set strategy='\"rand1bin\"' "
                             "--set mutation=[0.5,1] (repeatable)")
    parser.add_argument("--contender-repeats", type=int, default=None,
                        help="fresh programmings per layer measuring the search against its "
                             "best standard start (default: the validation repeats; 0: skip)")
    parser.add_argument("--judge-seed", type=int, default=9100,
                        help="run seed of that measurement's noise")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--intermediate", type=int, default=None, help="default 4 x hidden")
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--max-layers", type=int, default=None,
                        help="keep the first N weight matrices only")
    parser.add_argument("--toolkit", choices=("auto", "on", "off"), default="auto",
                        help="time the reference toolkit (aihwkit) on the first layer in the "
                             "same run, before and after the search (its loss and its own DE on "
                             "a small budget), and estimate its wall time for the network layer "
                             "by layer (default auto: when aihwkit is installed)")
    common.add_tail_arguments(parser, "smoke run: hidden 32, one block, 3 layers, popsize 2, "
                                      "2 generations, a 32 x 4 test tile, 4 repeats")
    args = parser.parse_args(argv)
    if args.toolkit == "on" and not toolkit_loss.toolkit_available():
        parser.error("--toolkit on: aihwkit is not installed (pip install --no-deps "
                     "aihwkit==1.1.0)")

    device = common.run_device(args)
    hidden, blocks, max_layers = args.hidden, args.blocks, args.max_layers
    if args.quick:
        (popsize, maxiter), options = QUICK_BUDGET, dict(QUICK_OPTIONS)
        hidden, blocks, max_layers = 32, 1, max_layers or 3
    elif device.type == "cuda":
        (popsize, maxiter), options = FULL_BUDGET, {}
    else:
        (popsize, maxiter), options = CPU_BUDGET, dict(CPU_OPTIONS)
    popsize, maxiter = args.popsize or popsize, args.maxiter or maxiter
    if args.validation_repeats is not None:
        options["validation_repeats"] = args.validation_repeats
    if args.baseline_iterations is not None:
        options["baseline_iterations"] = args.baseline_iterations
    if args.polish is not None:
        options["polish"] = args.polish == "on"
    common.apply_set_options(parser, options, args.set)
    # Overrides equal to the optimizer's defaults do not make the budget a reduced one.
    options_changed = {k: v for k, v in options.items() if common.DEFAULTS.get(k) != v}
    full = (popsize, maxiter) == FULL_BUDGET and not options_changed
    note = ("full default budget" if full else
            f"REDUCED budget: popsize {popsize} x D, {maxiter} generations, overrides "
            f"{options_changed or 'none'} (the reference's default is popsize {FULL_BUDGET[0]} "
            f"x D, {FULL_BUDGET[1]} generations, 100 validation/baseline repeats, polish on)")
    machine = common.machine_info()
    print(f"network benchmark on {machine['name']} ({device}): {note}", file=sys.stderr)

    t0 = time.perf_counter()
    if args.weights == "minilm":
        weights = common.pretrained_transformer_weights()
        if max_layers:
            weights = dict(list(weights.items())[:max_layers])
        network = (f"all-MiniLM-L6-v2 (pretrained, package {common.PRETRAINED_PACKAGE}): "
                   f"{len(weights)} linear layers")
        weight_note = "pretrained"
    else:
        weights = bert_shaped_weights(hidden=hidden,
                                      intermediate=args.intermediate or 4 * hidden,
                                      blocks=blocks, max_layers=max_layers,
                                      seed=args.weight_seed)
        network = (f"BERT-base-shaped: hidden {hidden}, intermediate "
                   f"{args.intermediate or 4 * hidden}, {blocks} blocks + pooler"
                   + (f", first {max_layers} layers" if max_layers else ""))
        weight_note = (f"Student-t, 3 dof, scale 0.05 x U(0.8, 1.2) per layer, "
                       f"seed {args.weight_seed}")
    generation_s = time.perf_counter() - t0
    rss_weights = _rss_mib()
    print(f"  {len(weights)} layers, {sum(w.numel() for w in weights.values()) / 1e6:.1f} M "
          f"weights generated in {generation_s:.1f} s; optimising ...", file=sys.stderr,
          flush=True)
    with_toolkit = args.toolkit == "on" or (args.toolkit == "auto"
                                            and toolkit_loss.toolkit_available())
    toolkit_runs: list[dict] = []

    def time_toolkit() -> None:
        # The first layer's test tile and physics as gpuwpo builds them (on the CPU): every
        # layer's tile has the same size, so the toolkit's cost per candidate is the same.
        first = next(iter(weights.values()))
        objective = gpuwpo.WeightProgrammingOptimizer(
            first, list(F_LST), gpuwpo.PCMLikeNoiseModel(g_max=25.0), T_STEPS,
            gpuwpo.DualPairConductanceConverter(f_lst=[1.0, 1.0], g_min=0.0, g_max=25.0),
            device="cpu", seed=args.seed, disp=False,
            **{k: v for k, v in options.items() if k.startswith("test_")}).objective
        print("  aihwkit: its loss and a short search ...", file=sys.stderr, flush=True)
        toolkit_runs.append(toolkit_loss.measure_toolkit(
            first, objective, candidates=2 if args.quick else 5, seed=args.seed))

    if with_toolkit:
        time_toolkit()
    contender_repeats = (int(options.get("validation_repeats",
                                         common.DEFAULTS["validation_repeats"]))
                         if args.contender_repeats is None else args.contender_repeats)
    if contender_repeats == 1 or contender_repeats < 0:
        parser.error(f"--contender-repeats must be 0 or at least 2, got {contender_repeats}")
    result = run(weights, popsize=popsize, maxiter=maxiter, device=device, backend=args.backend,
                 seed=args.seed, warmup=not (args.no_warmup or args.quick), options=options,
                 hierarchical=args.hierarchical, contender_repeats=contender_repeats,
                 judge_seed=args.judge_seed)
    toolkit = None
    if with_toolkit:
        time_toolkit()  # after as before: the least disturbed figures are kept
        toolkit = toolkit_loss.best_toolkit(toolkit_runs)
        result["toolkit_estimated_wall_s"] = toolkit_loss.toolkit_estimate_s(
            toolkit, popsize=popsize, maxiter=maxiter, dim=result["dim"],
            baseline_iterations=result["baseline_iterations"], layers=result["num_layers"])
        result["speedup_vs_toolkit"] = result["toolkit_estimated_wall_s"] / result["wall_time_s"]
        result["toolkit_same_candidates_s"] = (result["candidates"]
                                               * toolkit["search"]["s_per_candidate"])
    config = {
        "network": network,
        "weights": weight_note,
        "f_lst": list(F_LST), "t_steps_s": list(T_STEPS),
        "noise_model": "gpuwpo.PCMLikeNoiseModel(g_max=25) defaults",
        "compensation": "ideal global",
        "baseline": "gpuwpo.DualPairConductanceConverter([1, 1], g_min=0, g_max=25)",
        "per_layer": True, "seed": args.seed,
        "warmup": not (args.no_warmup or args.quick),
        "torch_threads": torch.get_num_threads(), "optimizer_overrides": options,
        "mapping": result["settings"]["options"].get("mapping"),
        "baseline_mapping": result["settings"]["options"].get("baseline_mapping"),
        "clip_range": result["settings"]["options"].get("clip_range"),
        "contender_repeats": contender_repeats, "judge_seed": args.judge_seed,
    }
    record = common.new_record(machine, note, args.quick, result=result, config=config,
                               weight_generation_s=generation_s,
                               rss_after_weights_mib=rss_weights, toolkit=toolkit,
                               toolkit_runs=toolkit_runs or None,
                               load_average=common.load_average())
    name = args.name or ("network" if args.weights == "bert-shaped" else "network-minilm") + (
        "-hierarchical" if args.hierarchical else "")
    heading = f"{record['config']['network']}, {machine['name']}, {note}."
    return common.finish(name, record, heading, tables, out_dir=args.out_dir)


if __name__ == "__main__":
    main()
