"""Benchmark: wall time and validated TNMSE of one layer's search, per search backend.

One layer of Student-t (3 dof) weights, 512 x 512 by default; both significance factors free
(f_lst = [None, None], D = 21 with nbins = 6); inference times 1 s, 1 h, 1 day, 30 days, 1 year;
default PCM noise, ideal global drift compensation; baseline DualPair f = [1, 1], 0..25 uS. For
each backend (torch DE, EvoTorch with algorithm "de", scipy's DE) the script times a complete
:meth:`gpuwpo.WeightProgrammingOptimizer.run_optimizer` (baseline, search, validation, polish)
and records the validated TNMSE with its 95% interval next to the baseline's.

Budget: the reference's default (popsize 100 x D, 200 generations, every other optimizer
keyword at its default) on CUDA. On the CPU the default is gpuwpo's own default budget (popsize
5 x D, 50 generations; docs/RESULTS.md, "Defaults"); the JSON and the table say which budget
was used.
``--popsize``, ``--maxiter`` (all backends) and ``--scipy-popsize``, ``--scipy-maxiter`` (scipy
only) override.

A warm-up search (popsize 1, 1 generation, not timed) runs first for every backend, so that
one-off costs (lazy imports, CUDA context, Triton compilation) are not in the figures.

Run:  python bench/search.py [--backends torch evotorch scipy] [--popsize P] [--maxiter G]
      python -m bench.search ...
Writes bench/results/search-<machine>.json (``--out-dir`` elsewhere) and prints a markdown table.
"""

from __future__ import annotations

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
BACKENDS = ("torch", "evotorch", "scipy")
#: The reference's default budget (population multiplier, generations).
FULL_BUDGET = common.REFERENCE_BUDGET
#: The CPU default: gpuwpo's own default budget (docs/RESULTS.md, "Defaults").
CPU_BUDGET = (int(common.DEFAULTS["popsize"]), int(common.DEFAULTS["maxiter"]))
#: --quick: a smoke run (seconds), for the tests.
QUICK_BUDGET = (2, 2)
QUICK_OPTIONS = {"test_in_features": 32, "test_out_features": 4, "validation_repeats": 4,
                 "baseline_iterations": 4, "polish_maxiter": 2}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def budget_label(popsize: int, maxiter: int) -> str:
    """``"100xD, 200 gen (reference default)"``, ``"5xD, 50 gen (gpuwpo default)"`` or
    ``"10xD, 20 gen (reduced)"``."""
    kind = ("reference default" if (popsize, maxiter) == FULL_BUDGET else
            "gpuwpo default" if (popsize, maxiter) == CPU_BUDGET else "reduced")
    return f"{popsize}xD, {maxiter} gen ({kind})"


def run_backend(backend: str, weights: torch.Tensor, *, popsize: int, maxiter: int,
                device: torch.device, seed: int = 100, warmup: bool = True,
                options: dict[str, Any] | None = None) -> dict[str, Any]:
    """One complete optimisation of ``weights`` with ``backend``; its figures as a dict.

    Times: ``setup_s`` (optimizer construction: test-weight sampling, objective),
    ``baseline_s`` (the baseline's ``baseline_iterations`` programmings), ``search_s`` (the
    ranking of the standard starts, the initial population and every generation; scipy
    polishes inside its search, and those candidates are in its count), ``validation_polish_s``
    (gpuwpo's local polish and the choice on fresh noise) and ``wall_time_s`` (all of it).
    ``candidates_per_s`` is candidates evaluated by the search / ``search_s``. ``profile`` is
    :class:`bench.common.WallProfile`'s account of the wall time: per phase, how much was
    candidate evaluation and how much the rest.
    """
    options = dict(options or {})
    noise = gpuwpo.PCMLikeNoiseModel(g_max=25.0)
    baseline = gpuwpo.DualPairConductanceConverter(f_lst=[1.0, 1.0], g_min=0.0, g_max=25.0)
    extra = {"algorithm": "de"} if backend == "evotorch" else {}

    def make(**overrides) -> gpuwpo.WeightProgrammingOptimizer:
        kw = {"seed": seed, "disp": False, **extra, **options, **overrides}
        return gpuwpo.WeightProgrammingOptimizer(weights, list(F_LST), noise, T_STEPS, baseline,
                                          backend=backend, device=device, **kw)

    if warmup:
        make(popsize=1, maxiter=1, validation_repeats=2, baseline_iterations=2,
             polish=False).run_optimizer()
        _sync(device)

    with common.WallProfile(device) as profile:
        start = time.perf_counter()
        opt = make(popsize=popsize, maxiter=maxiter)
        _sync(device)
        t_setup = time.perf_counter()
        opt.get_loss_baseline()  # cached: run_optimizer reuses it
        _sync(device)
        t_baseline = time.perf_counter()
        opt.run_optimizer()
        _sync(device)
        end = time.perf_counter()
    res = opt.result
    phases = profile.summary()["phases"]

    def phase_s(*names: str) -> float:
        return sum(phases[n]["s"] for n in names if n in phases)

    # The search: ranking the standard starts and the DE (scipy's own polish included, whose
    # candidates scipy's backend counts in nfev); then gpuwpo's polish and the validated choice.
    search_s = phase_s("start ranking", "search (DE)")
    return {
        "backend": backend,
        "algorithm": "de",
        "device": res.device,
        "budget": budget_label(popsize, maxiter),
        "popsize": popsize,
        "maxiter": maxiter,
        "dim": opt.space.dim,
        "population": max(5, popsize * opt.space.dim),
        "full_default_budget": (popsize, maxiter) == FULL_BUDGET,
        "generations": int(res.nit),
        "candidates": int(res.nfev),
        "stop_reason": res.stop_reason,
        "wall_time_s": end - start,
        "setup_s": t_setup - start,
        "baseline_s": t_baseline - t_setup,
        "search_s": search_s,
        "validation_polish_s": phase_s("polish", "selection"),
        "candidates_per_s": res.nfev / search_s if search_s > 0 else None,
        "tnmse": float(res.tnmse[0]),
        "tnmse_ci95": [float(v) for v in res.tnmse_ci95[0]],
        "baseline_tnmse": float(res.baseline_tnmse[0]),
        "baseline_ci95": [float(v) for v in res.baseline_ci95[0]],
        "improvement": float(res.improvement[0]),
        "success": bool(res.success),
        "search_best_tnmse": float(res.search_best_tnmse[0]),
        "polished": bool(res.polished[0]),
        "optimizer_options": {k: v for k, v in opt.options.as_dict().items()
                              if isinstance(v, (int, float, str, bool, type(None)))},
        # Where the wall time went (common.WallProfile): per phase, its candidate evaluation
        # and the rest.
        "profile": profile.summary(),
    }


def _with_ci(mean: float, ci: Sequence[float]) -> str:
    return f"{mean:.5f} [{ci[0]:.5f}, {ci[1]:.5f}]"


def table(record: dict[str, Any]) -> str:
    """The per-backend results as a markdown table."""
    rows = []
    for r in record["results"]:
        rows.append({
            "backend": r["backend"] + (" (de)" if r["backend"] == "evotorch" else ""),
            "device": r["device"],
            "budget": f"{r['budget']}, P={r['population']}",
            "generations": r["generations"],
            "candidates": r["candidates"],
            "cand_s": round(r["candidates_per_s"]) if r["candidates_per_s"] else None,
            "search_s": f"{r['search_s']:.1f}",
            "wall_s": f"{r['wall_time_s']:.1f}",
            "tnmse": _with_ci(r["tnmse"], r["tnmse_ci95"]),
            "baseline": _with_ci(r["baseline_tnmse"], r["baseline_ci95"]),
            "success": r["success"],
            "eval": "" if r.get("profile") is None
            else f"{100 * r['profile']['evaluation_share']:.0f}",
            "toolkit": "" if r.get("toolkit_estimated_wall_s") is None
            else f"{r['toolkit_estimated_wall_s']:.0f}",
            "vs_toolkit": "" if r.get("speedup_vs_toolkit") is None
            else f"{r['speedup_vs_toolkit']:.0f}",
        })
    return common.markdown_table(rows, [
        "backend", "device", "budget", "generations", "candidates", ("cand_s", "cand/s"),
        ("search_s", "search s"), ("wall_s", "wall s"), ("eval", "% evaluating"),
        ("toolkit", "aihwkit est. s"), ("vs_toolkit", "vs aihwkit (x)"),
        ("tnmse", "TNMSE [95% CI]"), ("baseline", "baseline [95% CI]"), "success",
    ])


def tables(record: dict[str, Any]) -> str:
    """The results table, then where each backend's wall time went."""
    parts = [table(record)]
    for r in record["results"]:
        parts.append(f"Where the wall time went, {r['backend']}:\n\n"
                     + common.profile_table(r["profile"]))
    tk = record.get("toolkit")
    if tk:
        loss = tk["loss"]
        search = tk["search"]
        parts.append(
            f"aihwkit {tk['version']} on the same layer and tile, one core: loss_weights "
            f"{loss['loss_weights']['ms_per_candidate']:.1f} ms/candidate, loss_fxn "
            f"{loss['loss_fxn']['ms_per_candidate']:.1f} ms; its own DE "
            f"({search['popsize']}xD, {search['maxiter']} gen, workers=1, no polish) "
            f"{1e3 * search['s_per_candidate']:.1f} ms per candidate, its baseline "
            f"{1e3 * search['baseline_s_per_iteration']:.1f} ms per iteration. 'aihwkit est. s' "
            "is its wall time at each row's budget from these (its polish not counted).")
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line entry point; returns the record (also written as JSON)."""
    parser = common.budget_parser(
        __doc__, f"{FULL_BUDGET[0]} on CUDA, {CPU_BUDGET[0]} on the CPU",
        f"{FULL_BUDGET[1]} on CUDA, {CPU_BUDGET[1]} on the CPU")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--scipy-popsize", type=int, default=None,
                        help="popsize for the scipy backend only (default: --popsize)")
    parser.add_argument("--scipy-maxiter", type=int, default=None,
                        help="maxiter for the scipy backend only (default: --maxiter)")
    parser.add_argument("--shape", type=int, nargs=2, default=(512, 512), metavar=("OUT", "IN"))
    parser.add_argument("--toolkit", choices=("auto", "on", "off"), default="auto",
                        help="time the reference toolkit (aihwkit) on the same layer in the same "
                             "run, before and after the backends: its loss per candidate and its "
                             "own DE on a small budget, from which each row's 'aihwkit est. s' "
                             "(default auto: when aihwkit is installed)")
    parser.add_argument("--toolkit-budget", type=int, nargs=2, default=(1, 2),
                        metavar=("POPSIZE", "MAXITER"),
                        help="the toolkit's own short search (default 1 x D, 2 generations)")
    common.add_tail_arguments(parser, "smoke run: 64 x 64 weights, popsize 2, 2 generations, a "
                                      "32 x 4 test tile, 4 validation and baseline repeats")
    args = parser.parse_args(argv)

    device = common.run_device(args)
    if args.quick:
        default_budget, shape, options = QUICK_BUDGET, (64, 64), dict(QUICK_OPTIONS)
    else:
        default_budget = FULL_BUDGET if device.type == "cuda" else CPU_BUDGET
        shape, options = tuple(args.shape), {}
    popsize = args.popsize or default_budget[0]
    maxiter = args.maxiter or default_budget[1]
    budgets = {b: (popsize, maxiter) for b in args.backends}
    if "scipy" in budgets:
        budgets["scipy"] = (args.scipy_popsize or popsize, args.scipy_maxiter or maxiter)
    machine = common.machine_info()
    note = ("full default budget" if all(b == FULL_BUDGET for b in budgets.values())
            else f"REDUCED budget (the reference's default is popsize {FULL_BUDGET[0]} x D, "
                 f"{FULL_BUDGET[1]} generations)")
    print(f"search benchmark on {machine['name']} ({device}): {note}", file=sys.stderr)

    weights = gpuwpo.student_t_weights(shape, df=3, generator=torch.Generator().manual_seed(
        args.weight_seed))
    if args.toolkit == "on" and not toolkit_loss.toolkit_available():
        parser.error("--toolkit on: aihwkit is not installed (pip install --no-deps "
                     "aihwkit==1.1.0)")
    with_toolkit = args.toolkit == "on" or (args.toolkit == "auto"
                                            and toolkit_loss.toolkit_available())
    toolkit_runs = []

    def time_toolkit() -> None:
        # The layer's test tile and physics as gpuwpo's optimizer builds them (on the CPU).
        objective = gpuwpo.WeightProgrammingOptimizer(
            weights, list(F_LST), gpuwpo.PCMLikeNoiseModel(g_max=25.0), T_STEPS,
            gpuwpo.DualPairConductanceConverter(f_lst=[1.0, 1.0], g_min=0.0, g_max=25.0),
            device="cpu", seed=args.seed, disp=False, **options).objective
        print("  aihwkit: its loss and a short search ...", file=sys.stderr, flush=True)
        toolkit_runs.append(toolkit_loss.measure_toolkit(
            weights, objective, candidates=2 if args.quick else 5,
            search_budget=tuple(args.toolkit_budget), seed=args.seed))

    if with_toolkit:
        time_toolkit()
    results = []
    for backend in args.backends:
        p, g = budgets[backend]
        print(f"  {backend}: {budget_label(p, g)} ...", file=sys.stderr, flush=True)
        row = run_backend(backend, weights, popsize=p, maxiter=g, device=device, seed=args.seed,
                          warmup=not (args.no_warmup or args.quick), options=options)
        print(f"  {backend}: {row['wall_time_s']:.1f} s, TNMSE {row['tnmse']:.5f} "
              f"(baseline {row['baseline_tnmse']:.5f})", file=sys.stderr, flush=True)
        results.append(row)
    toolkit = None
    if with_toolkit:
        time_toolkit()  # after as before: the least disturbed figures are kept
        toolkit = toolkit_loss.best_toolkit(toolkit_runs)
        for row in results:
            row["toolkit_estimated_wall_s"] = toolkit_loss.toolkit_estimate_s(
                toolkit, popsize=row["popsize"], maxiter=row["maxiter"], dim=row["dim"],
                baseline_iterations=int(row["optimizer_options"]["baseline_iterations"]))
            row["speedup_vs_toolkit"] = row["toolkit_estimated_wall_s"] / row["wall_time_s"]

    config = {
        "weights": f"Student-t, 3 dof, scale 0.05, seed {args.weight_seed}",
        "shape": list(shape), "f_lst": list(F_LST), "t_steps_s": list(T_STEPS),
        "noise_model": "gpuwpo.PCMLikeNoiseModel(g_max=25) defaults",
        "compensation": "ideal global",
        "baseline": "gpuwpo.DualPairConductanceConverter([1, 1], g_min=0, g_max=25)",
        "seed": args.seed, "warmup": not (args.no_warmup or args.quick),
        "torch_threads": torch.get_num_threads(), "optimizer_overrides": options,
    }
    record = common.new_record(machine, note, args.quick, results=results, config=config,
                               toolkit=toolkit, toolkit_runs=toolkit_runs or None,
                               load_average=common.load_average())
    heading = f"One layer {shape[0]} x {shape[1]}, {machine['name']}, {note}."
    return common.finish("search", record, heading, tables, out_dir=args.out_dir)


if __name__ == "__main__":
    main()
