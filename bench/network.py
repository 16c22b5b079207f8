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
0..25 uS.

Budget: the reference's default (popsize 100 x D, 200 generations, every other optimizer keyword
at its default) on CUDA. On the CPU one generation of 73 layers is 73 times a one-layer
generation, so the default there is a much REDUCED budget (popsize 5 x D, 40 generations, 20
validation and baseline repeats, no polish; about 12 minutes on this project's 2-core CPU); the
JSON and the table say which budget was used.

Reported: wall time (weight generation apart), peak memory (``torch.cuda.max_memory_allocated``
on CUDA; the process's peak RSS from ``resource.getrusage`` on the CPU, which includes the
85 M weights), generations, candidates evaluated, size-weighted total TNMSE vs baseline and the
number of layers that beat their baseline by the loss margin.

Run:  python bench/network.py [--popsize P] [--maxiter G] [--backend torch]
      python -m bench.network ...
Writes bench/results/network-<machine>.json (``--out-dir`` elsewhere) and prints markdown tables.
"""

from __future__ import annotations

import re
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpuwpo  # noqa: E402
from bench import common, toolkit_loss  # noqa: E402

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


def run(weights: dict[str, torch.Tensor], *, popsize: int, maxiter: int, device: torch.device,
        backend: str = "torch", seed: int = 100, warmup: bool = True,
        options: dict[str, Any] | None = None, hierarchical: bool = False) -> dict[str, Any]:
    """Optimise every layer of ``weights`` in one :func:`gpuwpo.optimize_network` call."""
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
    with common.WallProfile(device) as profile:
        start = time.perf_counter()
        res = call(weights, popsize=popsize, maxiter=maxiter)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
    margin = float(res.settings["options"].get("loss_margin", common.DEFAULTS["loss_margin"]))
    layers = [{
        "name": layer.name, "kind": _kind(layer.name), "shape": list(layer.shape),
        "tnmse": layer.tnmse, "tnmse_ci95": list(layer.tnmse_ci95),
        "baseline_tnmse": layer.baseline_tnmse, "baseline_ci95": list(layer.baseline_ci95),
        "improvement": layer.improvement,
        "success": layer.tnmse < layer.baseline_tnmse * (1 - margin),
        "chosen": layer.chosen,
        # Worse than the baseline with confidence: the layer's answer and its baseline are
        # evaluated on the same noise, so their intervals overlap far more than their
        # difference's; a layer that keeps its baseline is equal to it.
        "worse": layer.tnmse_ci95[0] > layer.baseline_tnmse,
    } for layer in res.layers]
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
        "kept": r.get("layers_kept_baseline", "-"),
        "worse": r.get("layers_worse", "-"),
        "hier": "yes" if r.get("hierarchical") else "no",
    }], ["device", "backend", "budget", ("hier", "hierarchical"), "layers", "weights",
         "generations",
         ("candidates", "candidates (all layers)"), ("wall", "wall s"), ("memory", "peak memory"),
         ("tnmse", "total TNMSE"), ("baseline", "total baseline"),
         ("gain", "total below baseline"),
         ("success", "layers beating baseline by margin"), ("kept", "layers keeping baseline"),
         ("worse", "layers worse")])
    kinds: dict[str, list[dict]] = {}
    for layer in r["layers"]:
        kinds.setdefault(layer["kind"], []).append(layer)
    per_kind = common.markdown_table([{
        "kind": kind, "n": len(ls),
        "tnmse": f"{sum(x['tnmse'] for x in ls) / len(ls):.5f}",
        "baseline": f"{sum(x['baseline_tnmse'] for x in ls) / len(ls):.5f}",
        "gain": f"{100 * sum(x['improvement'] for x in ls) / len(ls):.1f} %",
        "success": sum(x["success"] for x in ls),
    } for kind, ls in kinds.items()], [
        "kind", ("n", "layers"), ("tnmse", "mean TNMSE"), ("baseline", "mean baseline"),
        ("gain", "mean gain"), ("success", "successes"),
    ])
    out = summary + "\n\nPer layer kind:\n\n" + per_kind
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
    result = run(weights, popsize=popsize, maxiter=maxiter, device=device, backend=args.backend,
                 seed=args.seed, warmup=not (args.no_warmup or args.quick), options=options,
                 hierarchical=args.hierarchical)
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
