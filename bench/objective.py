"""Benchmark: candidate evaluations per second of the batched TNMSE objective, against the machine's
own limit and against the reference toolkit, all measured in one run.

The batched objective (:class:`gpuwpo.TNMSEObjective`, pure torch on the CPU, eager and through
``torch.compile``; on CUDA also the Triton kernel when triton imports) evaluates a population of
P candidates in one call. Beside it, in the same interleaved rounds:

* the machine's **roofline** (bench/roofline.py): the throughput of the primitives the objective
  is made of (exp, log, a normal draw, a fused multiply-add, a gather over cache-sized float32
  arrays, at 1 and 2 threads), times the primitives one candidate needs by the formulas
  (docs/DESIGN.md sections 2 and 5, with what common random numbers share left out; the count
  is derived in bench/roofline.py's docstring and recorded in the JSON). Each CPU row reports its
  fraction of the roofline at its own thread count;
* the **reference toolkit's own per-candidate loss** when aihwkit is installed
  (bench/toolkit_loss.py: aihwkit 1.1.0's ``wpo.loss_weights`` with a
  ``TorchInferenceRPUConfig`` on the same tile, times, device model and compensation, its decode,
  converter and layer built per candidate; and its ``loss_fxn`` as its DE calls it), timed on a
  few candidates and reported per candidate;
* gpuwpo's own per-candidate reference (:func:`gpuwpo.search.reference.reference_objective`:
  a converter per candidate and a loop over the time steps), leaner than the toolkit's.

The references' costs do not depend on P; they are timed on a subset (20 and 5 candidates by
default) and reported per candidate.

Setup (the issue's): N = 10,240 test weights (a 512 x 20 tile), T = 6 inference times (1 s,
1 min, 1 h, 1 day, 30 days, 360 days), K = 2 pairs with both significance factors free
(f_lst = [None, None], D = 21 with nbins = 6), default PCM noise, ideal global compensation.
Both common-random-numbers modes are timed: on (the search's default: one set of device noises
shared by all candidates of a layer) and off (independent noise per candidate, like the
reference and like validation).

Timing is interleaved: in every round the references, the primitives and every batched variant
are timed one after the other, so that load from other users of a shared machine hits them
alike; the best round is reported (the least disturbed one), the median next to it. The load
average at the start and the end is recorded.

Both physics are timed by default (``--physics device aihwkit``); each row also gives its cost
per candidate relative to the device physics timed in the same rounds.

Run:  python bench/objective.py [--quick] [--out PATH] [--threads N] [--profile] [--physics ...]
                                [--devices cpu cuda] [--toolkit-candidates 5] [--no-roofline]
      python -m bench.objective ...
Writes bench/results/objective-<machine>.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpuwpo  # noqa: E402
from bench import roofline as rl  # noqa: E402
from bench.common import machine_info, markdown_table, save_record  # noqa: E402
from bench.toolkit_loss import ToolkitLoss, toolkit_available, toolkit_version  # noqa: E402
from gpuwpo.search.reference import reference_objective  # noqa: E402

T_STEPS = (1.0, 60.0, 3600.0, 86400.0, 30 * 86400.0, 360 * 86400.0)
F_LST = (None, None)
NBINS = 6
#: The toolkit's ways of evaluating a candidate (bench/toolkit_loss.py); the first is the headline.
TOOLKIT_WAYS = ("loss_weights", "loss_fxn")


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _make_objective(weights: torch.Tensor, device: str, kernel: str, in_features: int,
                    out_features: int, physics: str = "device") -> gpuwpo.TNMSEObjective:
    space = gpuwpo.StrategySpace(list(F_LST), nbins=NBINS)
    return gpuwpo.TNMSEObjective(weights.to(device), gpuwpo.PCMLikeNoiseModel(), t_steps=T_STEPS,
                                 strategy_space=space, test_in_features=in_features,
                                 test_out_features=out_features, kernel=kernel, device=device,
                                 physics=physics)


def _variants(compile_cpu: bool = True, physics: Sequence[str] = ("device",),
              devices: Sequence[str] = ("cpu", "cuda")) -> list[tuple[str, str, str]]:
    """(device, kernel, physics) to time: torch (eager and compiled) on the CPU; torch and
    Triton on CUDA if present (the kernel implements the device physics only); ``devices``
    keeps some of them."""
    out = []
    for ph in physics:
        if "cpu" in devices:
            out.append(("cpu", "torch", ph))
            if compile_cpu:
                out.append(("cpu", "compile", ph))
        if "cuda" in devices and torch.cuda.is_available():
            out.append(("cuda", "torch", ph))
            try:
                import triton  # noqa: F401

                if ph == "device":
                    out.append(("cuda", "triton", ph))
            except ImportError:
                pass
    return out


def profile_batched(objective: gpuwpo.TNMSEObjective, x: torch.Tensor, *,
                    common_random_numbers: bool, top: int = 12) -> list[dict]:
    """The top ops (self time) of one batched call, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if objective.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        objective(x, 0, common_random_numbers=common_random_numbers)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1.0
    return [{"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 2),
             "share": round(e.self_cpu_time_total / total, 3)} for e in rows[:top]]


def roofline_record(measurements: Sequence[dict], *, N: int, T: int, K: int,
                    sizes: Sequence[int]) -> dict:
    """The roofline part of the record: throughput (best per size over the rounds), the
    per-candidate primitive counts and the roofline rate per thread count, physics and CRN."""
    merged = rl.merge_measurements(measurements)
    counts = {ph: {mode: rl.primitive_counts(N, T, K, physics=ph,
                                             common_random_numbers=mode == "crn")
                   for mode in ("crn", "independent")} for ph in ("device", "aihwkit")}
    rates, seconds = {}, {}
    for threads in merged:
        best = rl.best_rates(merged, threads)
        rates[threads] = {ph: {mode: rl.roofline_rate(c, best) for mode, c in by.items()}
                          for ph, by in counts.items()}
        seconds[threads] = {ph: {mode: rl.roofline_seconds(c, best) for mode, c in by.items()}
                            for ph, by in counts.items()}
    return {
        "method": "bench/roofline.py: best elements/s of one torch op per primitive over float32 "
                  "arrays of the sizes below (best over sizes and rounds); roofline = 1 / sum "
                  "count / rate candidates per second",
        "sizes": [int(s) for s in sizes], "rounds": len(measurements),
        "throughput_elements_per_s": merged,
        "primitive_counts_per_candidate": counts,
        "counts_derivation": "per device and time: 2 exp, 1 log, 9 fma (aihwkit physics: 10 fma, "
                             "2 gather); per weight and time: 4 fma (aihwkit: 8); per device "
                             "once: 1 log, 5 fma, 2 gather; without CRN 3 normals per device "
                             "and time; devices = 2K N (bench/roofline.py)",
        "candidates_per_s": rates, "seconds_per_candidate": seconds,
    }


def run(sizes: Sequence[int], *, in_features: int = 512, out_features: int = 20,
        ref_candidates: int = 20, rounds: int = 3, big_rounds: int = 1, big_size: int = 2000,
        seed: int = 0, profile_size: int | None = None, compile_cpu: bool = True,
        physics: Sequence[str] = ("device",), devices: Sequence[str] = ("cpu", "cuda"),
        roofline_threads: Sequence[int] | None = (1, 2),
        roofline_sizes: Sequence[int] = rl.DEFAULT_SIZES, toolkit_candidates: int = 5) -> dict:
    """Time every variant at every population size P; return the result record.

    ``roofline_threads`` None (or no CPU variant) skips the primitives; ``toolkit_candidates``
    0 (or aihwkit not installed) skips the toolkit's loss.
    """
    # A trained-layer-like weight distribution (heavier tails than a Gaussian), larger than the
    # test tile so that the objective's downsampling is part of the setup as in real use.
    layer = gpuwpo.student_t_weights(4 * in_features * out_features, df=4,
                                     generator=torch.Generator().manual_seed(seed))
    ref_obj = _make_objective(layer, "cpu", "torch", in_features, out_features)
    variants = _variants(compile_cpu, physics, devices)
    if not variants:
        raise ValueError(f"nothing to time on devices {list(devices)} (CUDA available: "
                         f"{torch.cuda.is_available()})")
    objectives = {v: _make_objective(layer, *v[:2], in_features, out_features, physics=v[2])
                  for v in variants}
    D = ref_obj.dim
    N = in_features * out_features
    x_gen = torch.Generator().manual_seed(seed + 1)
    x_all = torch.rand(1, max(sizes), D, generator=x_gen)
    threads = torch.get_num_threads()
    cpu_rows = any(v[0] == "cpu" for v in variants)
    measure_roofline = bool(roofline_threads) and cpu_rows
    if measure_roofline:
        roofline_threads = sorted({*map(int, roofline_threads), threads})
    toolkit = None
    if toolkit_candidates > 0 and toolkit_available():
        toolkit = ToolkitLoss(_make_objective(layer, "cpu", "torch", in_features, out_features,
                                              physics="aihwkit"))

    # Warm-up: first calls pay for allocations, lazy imports and (Triton, torch.compile)
    # compilation; torch.compile's graphs are dynamic in P, so one warm-up size serves all.
    reference_objective(ref_obj, x_all[:, :1], 0)
    if toolkit is not None:
        toolkit.time(x_all[0, :1], which=TOOLKIT_WAYS)
    for obj in objectives.values():
        for crn in (True, False):
            obj(x_all[:, : min(16, max(sizes))].to(obj.device), 0, common_random_numbers=crn)

    rows = []
    ref_fixed: list[float] | None = None
    big = N > 4 * 10240
    if big:
        # The reference costs ~70 ms per candidate per 10^5 weights on a CPU core and does not
        # depend on P: above the N it is timed once, on one candidate, for every P.
        ref_fixed = [_timed(lambda: reference_objective(ref_obj, x_all[:, :1], 0),
                            torch.device("cpu"))]
    primitive_runs: list[dict] = []
    toolkit_record: dict[str, dict] = {}
    for P in sizes:
        x = x_all[:, :P]
        n_ref = min(ref_candidates, P) if ref_fixed is None else 1
        n_toolkit = 1 if big else min(toolkit_candidates, P)
        ref_times: list[float] = [] if ref_fixed is None else list(ref_fixed)
        toolkit_times: dict[str, list[float]] = {w: [] for w in TOOLKIT_WAYS}
        toolkit_values: list[float | None] = []
        batched: dict[tuple[str, str, str, bool], list[float]] = {}
        roofline_p: list[dict] = []
        n_rounds = rounds if P < big_size else big_rounds
        for (device, kernel, _), obj in objectives.items():
            if kernel == "compile":  # a new population size may still trigger a recompile
                for crn in (True, False):
                    obj(x.to(device), 0, common_random_numbers=crn)
        for r in range(n_rounds):
            if ref_fixed is None:
                ref_x = x[:, :n_ref]
                ref_times.append(_timed(lambda xs=ref_x, s=r: reference_objective(ref_obj, xs, s),
                                        torch.device("cpu")) / n_ref)
            if toolkit is not None:
                timed = toolkit.time(x[0, :n_toolkit], seed=r, which=TOOLKIT_WAYS)
                for way in TOOLKIT_WAYS:
                    toolkit_times[way].append(timed[way]["s_per_candidate"])
                toolkit_values += timed[TOOLKIT_WAYS[0]]["tnmse"]
            if measure_roofline:
                roofline_p.append(rl.measure_primitives(roofline_sizes, roofline_threads,
                                                        repeats=2, seed=r))
            for (device, kernel, ph), obj in objectives.items():
                xd = x.to(device)
                for crn in (True, False):
                    t = _timed(lambda o=obj, xd=xd, c=crn, s=r: o(xd, s, common_random_numbers=c),
                               obj.device)
                    batched.setdefault((device, kernel, ph, crn), []).append(t / P)
        primitive_runs += roofline_p
        ref_best = min(ref_times)
        toolkit_best = {w: min(v) for w, v in toolkit_times.items() if v}
        if toolkit is not None:
            toolkit_record[str(P)] = {
                "candidates": n_toolkit, "rounds": n_rounds,
                **{f"{w}_ms_per_candidate": 1e3 * toolkit_best[w] for w in TOOLKIT_WAYS},
                **{f"{w}_ms_per_candidate_median": 1e3 * statistics.median(toolkit_times[w])
                   for w in TOOLKIT_WAYS},
                "tnmse": toolkit_values,
            }
        for (device, kernel, ph, crn), per in batched.items():
            best = min(per)
            device_physics = batched.get((device, kernel, "device", crn))
            tk = toolkit_best.get(TOOLKIT_WAYS[0])
            rows.append({
                "device": device, "kernel": kernel, "physics": ph,
                "common_random_numbers": crn, "P": P,
                "N": N,
                "rounds": len(per),
                "threads": threads if device == "cpu" else None,
                "batched_ms_per_candidate": best * 1e3,
                "batched_ms_per_candidate_median": statistics.median(per) * 1e3,
                "batched_candidates_per_s": 1.0 / best,
                "reference_ms_per_candidate": ref_best * 1e3,
                "reference_ms_per_candidate_median": statistics.median(ref_times) * 1e3,
                "reference_candidates": n_ref,
                "speedup_per_candidate": ref_best / best,
                # Filled in below: the machine's limit for this physics and CRN mode at this
                # row's thread count, measured in this run (CPU rows only).
                "roofline_candidates_per_s": None,
                "fraction_of_roofline": None,
                "toolkit_ms_per_candidate": None if tk is None else tk * 1e3,
                "toolkit_loss_fxn_ms_per_candidate": None if tk is None
                else toolkit_best[TOOLKIT_WAYS[1]] * 1e3,
                "speedup_vs_toolkit": None if tk is None else tk / best,
                # Cost of this physics per candidate relative to the device physics measured in
                # the same rounds (same kernel, CRN mode and P).
                "cost_vs_device_physics": None if device_physics is None
                else best / min(device_physics),
            })
        print(f"  P={P} done ({n_rounds} rounds)", file=sys.stderr, flush=True)

    record = {
        "torch_threads": threads,
        "config": {
            "test_tile": [out_features, in_features], "N": N,
            "t_steps_s": list(T_STEPS), "T": len(T_STEPS), "K": len(F_LST),
            "f_lst": list(F_LST), "nbins": NBINS, "D": D, "symmetric": True,
            "noise_model": "gpuwpo.PCMLikeNoiseModel() defaults", "compensation": "ideal global",
            "physics": list(physics),
            "dtype": "float32",
            "reference": "gpuwpo.search.reference.reference_objective on the CPU",
            "toolkit": "bench/toolkit_loss.py: aihwkit's wpo.loss_weights (headline) and "
                       "wpo.loss_fxn, TorchInferenceRPUConfig, the same tile, on the CPU",
            "timing": "best of interleaved rounds (median also given), seconds per candidate",
        },
        "results": rows,
    }
    if primitive_runs:
        # One roofline for the whole run: the best throughput of every primitive over all the
        # rounds (interleaved with every P), the least disturbed measure of the machine's limit.
        record["roofline"] = roofline_record(primitive_runs, N=N, T=len(T_STEPS),
                                             K=len(F_LST), sizes=roofline_sizes)
        roof = record["roofline"]["candidates_per_s"][str(threads)]
        for row in rows:
            if row["device"] == "cpu":
                rate = roof[row["physics"]]["crn" if row["common_random_numbers"]
                                            else "independent"]
                row["roofline_candidates_per_s"] = rate
                row["fraction_of_roofline"] = row["batched_candidates_per_s"] / rate
    record["toolkit"] = {"available": toolkit is not None, "version": toolkit_version(),
                         "per_P": toolkit_record}
    if toolkit is not None:
        # The toolkit's TNMSE beside gpuwpo's physics="aihwkit" on the same candidates (both
        # with independent noise): the two must agree within their noise.
        n_check = max(len(v["tnmse"]) for v in toolkit_record.values()) if toolkit_record else 0
        n_check = min(n_check, toolkit_candidates if not big else 1)
        if n_check:
            ours = _make_objective(layer, "cpu", "torch", in_features, out_features,
                                   physics="aihwkit")(x_all[:, :n_check], seed,
                                                      common_random_numbers=False)
            theirs = [v for rec in toolkit_record.values() for v in rec["tnmse"][:n_check]]
            record["toolkit"]["agreement"] = {
                "candidates": n_check,
                "gpuwpo_aihwkit_physics_tnmse": [float(v) for v in ours[0]],
                "toolkit_tnmse_first_P": toolkit_record[str(sizes[0])]["tnmse"][:n_check],
                "toolkit_mean_over_all_rounds": statistics.fmean(
                    v for v in theirs if v is not None) if theirs else None,
            }
    if profile_size:
        cpu = [v for v in objectives if v[0] == "cpu" and v[1] == "torch"]
        obj = objectives[cpu[0] if cpu else next(iter(objectives))]
        record["profile"] = {
            f"{obj.device.type}, {obj.physics}, P={profile_size}, crn={crn}": profile_batched(
                obj, x_all[:, :profile_size].to(obj.device), common_random_numbers=crn)
            for crn in (True, False)
        }
    return record


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def results_table(record: dict) -> str:
    """The results as a markdown table (one row per device, kernel, CRN mode and P)."""
    rows = [{
        "device": r["device"], "kernel": r["kernel"], "physics": r.get("physics", "device"),
        "crn": "on" if r["common_random_numbers"] else "off", "P": r["P"], "N": r["N"],
        "cand_s": f"{r['batched_candidates_per_s']:.0f}",
        "ms": f"{r['batched_ms_per_candidate']:.3f}",
        "roof": _fmt(r.get("roofline_candidates_per_s"), ".0f"),
        "frac": _fmt(None if r.get("fraction_of_roofline") is None
                     else 100 * r["fraction_of_roofline"], ".0f"),
        "toolkit": _fmt(r.get("toolkit_ms_per_candidate"), ".2f"),
        "vs_toolkit": _fmt(r.get("speedup_vs_toolkit"), ".1f"),
        "ref": f"{r['reference_ms_per_candidate']:.2f}",
        "ratio": f"{r['speedup_per_candidate']:.1f}",
        "vs_device": _fmt(r.get("cost_vs_device_physics"), ".2f"),
    } for r in record["results"]]
    return markdown_table(rows, [
        "device", "kernel", "physics", ("crn", "CRN"), "P", "N", ("cand_s", "batched cand/s"),
        ("ms", "batched ms/cand"), ("roof", "roofline cand/s"), ("frac", "% of roofline"),
        ("toolkit", "aihwkit ms/cand"), ("vs_toolkit", "vs aihwkit (x)"),
        ("ref", "gpuwpo reference ms/cand"), ("ratio", "vs gpuwpo reference (x)"),
        ("vs_device", "cost vs device physics"),
    ])


def main(argv: Sequence[str] | None = None) -> dict:
    """Command line entry point; returns the result record (also written as JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: small populations, one round")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="population sizes P (default 100 1000 4000; --quick: 8 32)")
    parser.add_argument("--in-features", type=int, default=512)
    parser.add_argument("--out-features", type=int, default=20)
    parser.add_argument("--ref-candidates", type=int, default=20,
                        help="candidates gpuwpo's per-candidate reference is timed on")
    parser.add_argument("--toolkit-candidates", type=int, default=5,
                        help="candidates aihwkit's own loss is timed on per round (default 5; "
                             "0 skips it; skipped anyway when aihwkit is not installed)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved timing rounds for P < 2000 (one round above)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1; 0 keeps torch's default). "
                             "On a small shared machine a second thread that the OS deschedules "
                             "makes every elementwise op wait for it (see bench/README.md)")
    parser.add_argument("--roofline-threads", type=int, nargs="+", default=[1, 2],
                        help="thread counts the primitives are timed at (the objective's own "
                             "is always added)")
    parser.add_argument("--roofline-sizes", type=int, nargs="+", default=list(rl.DEFAULT_SIZES),
                        help="float32 array sizes the primitives are timed over")
    parser.add_argument("--no-roofline", action="store_true",
                        help="skip the primitives (and the rows' fraction of the roofline)")
    parser.add_argument("--n-values", type=int, nargs="+", default=None,
                        help="test weights per layer N, each a (N / 20) x 20 tile (default "
                             "10240; on CUDA 10240 102400 1024000)")
    parser.add_argument("--max-pn", type=float, default=1.1e9,
                        help="skip population sizes with P x N above this (default 1.1e9: at "
                             "N = 10^6 up to P = 1000)")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the torch.compile variant on the CPU (it compiles ~20 s)")
    parser.add_argument("--devices", nargs="+", choices=("cpu", "cuda"), default=["cpu", "cuda"],
                        help="where the batched objective is timed (default both; CUDA only "
                             "when available); the references always run on the CPU")
    parser.add_argument("--physics", nargs="+", choices=("device", "aihwkit"),
                        default=["device", "aihwkit"],
                        help="physics to time (default both; the last column is each one's "
                             "cost per candidate relative to the device physics)")
    parser.add_argument("--profile", action="store_true",
                        help="add torch.profiler's top ops of one batched call to the record")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default bench/results/objective-<machine>.json, "
                             "machine as bench.common names it)")
    args = parser.parse_args(argv)

    for name in ("toolkit_candidates", "ref_candidates", "rounds"):
        if getattr(args, name) < (0 if name == "toolkit_candidates" else 1):
            parser.error(f"--{name.replace('_', '-')} must be "
                         f"{'>= 0' if name == 'toolkit_candidates' else '>= 1'}, got "
                         f"{getattr(args, name)}")
    if any(v < 1 for v in args.roofline_threads + args.roofline_sizes):
        parser.error(f"--roofline-threads and --roofline-sizes must be positive, got "
                     f"{args.roofline_threads} and {args.roofline_sizes}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available() and "cuda" in args.devices
    if "cuda" in args.devices and "cpu" not in args.devices and not torch.cuda.is_available():
        parser.error("--devices cuda: no CUDA device is available")
    default_sizes = [100, 1000, 4000, 16000] if cuda else [100, 1000, 4000]
    sizes = args.sizes or ([8, 32] if args.quick else default_sizes)
    default_n = [10240, 102400, 1024000] if cuda else [args.in_features * args.out_features]
    n_values = args.n_values or ([args.in_features * args.out_features] if args.quick
                                 else default_n)
    rounds = 1 if args.quick else args.rounds
    machine = machine_info()  # before measuring: the date is the start of the run
    load_start = _load()
    records = []
    for n in n_values:
        if n % args.out_features:
            parser.error(f"N={n} is not a multiple of --out-features {args.out_features}")
        sizes_n = [P for P in sizes if P * n <= args.max_pn] or [min(sizes)]
        records.append(run(
            sizes_n, in_features=n // args.out_features, out_features=args.out_features,
            ref_candidates=2 if args.quick else args.ref_candidates, rounds=rounds,
            profile_size=(min(sizes) if args.quick else 1000) if args.profile else None,
            compile_cpu=not args.no_compile, physics=tuple(args.physics),
            devices=tuple(args.devices),
            roofline_threads=None if args.no_roofline else tuple(args.roofline_threads),
            roofline_sizes=tuple(args.roofline_sizes),
            toolkit_candidates=min(args.toolkit_candidates, 2) if args.quick
            else args.toolkit_candidates))
    record = {**records[0], "results": [row for r in records for row in r["results"]]}
    if len(records) > 1:
        record["config"] = {**record["config"], "N": n_values, "test_tile": "(N / out) x out"}
        record["by_N"] = {str(n): {k: r[k] for k in ("roofline", "toolkit") if k in r}
                          for n, r in zip(n_values, records)}
    record = {"machine": machine, "load_average_start": load_start,
              "load_average_end": _load(), "quick": bool(args.quick), **record}
    out = save_record("objective", record, args.out)
    record = {"benchmark": "objective", **record}
    print(results_table(record))
    if "roofline" in record:
        roof = record["roofline"]
        print("\nPrimitive throughput (G elements/s) per float32 array size, best over rounds:\n")
        print(rl.throughput_table(roof["throughput_elements_per_s"]))
        n_first = records[0]["config"]["N"]
        print(f"\nRoofline per candidate, N = {n_first:,}, T = {len(T_STEPS)}, "
              f"K = {len(F_LST)}:\n")
        print(rl.roofline_table(roof["throughput_elements_per_s"], N=n_first, T=len(T_STEPS),
                                K=len(F_LST)))
    if not record["toolkit"]["available"]:
        print("\naihwkit is not installed (or --toolkit-candidates 0): no toolkit column")
    if "profile" in record:
        for key, ops in record["profile"].items():
            print(f"\nTop ops, batched objective, {key}:")
            for op in ops:
                print(f"  {op['op']:<28} {op['calls']:>5} calls {op['self_cpu_ms']:>10.1f} ms "
                      f"{100 * op['share']:5.1f} %")
    print(f"\nwritten {out}", file=sys.stderr)
    return record


if __name__ == "__main__":
    main()
