"""Benchmark: candidate evaluations per second of the batched TNMSE objective vs the reference.

The batched objective (:class:`gpuwpo.TNMSEObjective`, pure torch on the CPU; on CUDA also the
Triton kernel when triton imports) evaluates a population of P candidates in one call; the
per-candidate reference (:func:`gpuwpo.search.reference.reference_objective`) builds a converter and
loops over the time steps for every single candidate, as the reference toolkit does. The
reference's cost does not depend on P, so it is timed on a subset (20 candidates by default)
and reported per candidate.

Setup (the issue's): N = 10,240 test weights (a 512 x 20 tile), T = 6 inference times (1 s,
1 min, 1 h, 1 day, 30 days, 360 days), K = 2 pairs with both significance factors free
(f_lst = [None, None], D = 21 with nbins = 6), default PCM noise, ideal global compensation.
Both common-random-numbers modes are timed: on (the search's default: one set of device noises
shared by all candidates of a layer) and off (independent noise per candidate, like the
reference and like validation).

Timing is interleaved: in every round the reference and every batched variant are timed one
after the other, so that load from other users of a shared machine hits them alike; the best
round is reported (the least disturbed one), the median next to it.

Both physics are timed by default (``--physics device aihwkit``); each row also gives its cost
per candidate relative to the device physics timed in the same rounds.

Run:  python bench/objective.py [--quick] [--out PATH] [--threads N] [--profile] [--physics ...]
      python -m bench.objective ...
Writes bench/results/objective-<machine>.json and prints a markdown table.
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
from bench.common import machine_info, markdown_table, save_record  # noqa: E402
from gpuwpo.search.reference import reference_objective  # noqa: E402

T_STEPS = (1.0, 60.0, 3600.0, 86400.0, 30 * 86400.0, 360 * 86400.0)
F_LST = (None, None)
NBINS = 6


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


def _variants(compile_cpu: bool = True, physics: Sequence[str] = ("device",)
              ) -> list[tuple[str, str, str]]:
    """(device, kernel, physics) to time: torch (eager and compiled) on the CPU; torch and
    Triton on CUDA if present (the kernel implements the device physics only)."""
    out = []
    for ph in physics:
        out.append(("cpu", "torch", ph))
        if compile_cpu:
            out.append(("cpu", "compile", ph))
        if torch.cuda.is_available():
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


def run(sizes: Sequence[int], *, in_features: int = 512, out_features: int = 20,
        ref_candidates: int = 20, rounds: int = 3, big_rounds: int = 1, big_size: int = 2000,
        seed: int = 0, profile_size: int | None = None, compile_cpu: bool = True,
        physics: Sequence[str] = ("device",)) -> dict:
    """Time every variant at every population size P; return the result record."""
    # A trained-layer-like weight distribution (heavier tails than a Gaussian), larger than the
    # test tile so that the objective's downsampling is part of the setup as in real use.
    layer = gpuwpo.student_t_weights(4 * in_features * out_features, df=4,
                              generator=torch.Generator().manual_seed(seed))
    ref_obj = _make_objective(layer, "cpu", "torch", in_features, out_features)
    objectives = {v: _make_objective(layer, *v[:2], in_features, out_features, physics=v[2])
                  for v in _variants(compile_cpu, physics)}
    D = ref_obj.dim
    x_gen = torch.Generator().manual_seed(seed + 1)
    x_all = torch.rand(1, max(sizes), D, generator=x_gen)

    # Warm-up: first calls pay for allocations, lazy imports and (Triton, torch.compile)
    # compilation; torch.compile's graphs are dynamic in P, so one warm-up size serves all.
    reference_objective(ref_obj, x_all[:, :1], 0)
    for obj in objectives.values():
        for crn in (True, False):
            obj(x_all[:, : min(16, max(sizes))].to(obj.device), 0, common_random_numbers=crn)

    rows = []
    n_weights = in_features * out_features
    ref_fixed: list[float] | None = None
    if n_weights > 4 * 10240:
        # The reference costs ~70 ms per candidate per 10^5 weights on a CPU core and does not
        # depend on P: above the N it is timed once, on one candidate, for every P.
        ref_fixed = [_timed(lambda: reference_objective(ref_obj, x_all[:, :1], 0),
                            torch.device("cpu"))]
    for P in sizes:
        x = x_all[:, :P]
        n_ref = min(ref_candidates, P) if ref_fixed is None else 1
        ref_times: list[float] = [] if ref_fixed is None else list(ref_fixed)
        batched: dict[tuple[str, str, str, bool], list[float]] = {}
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
            for (device, kernel, ph), obj in objectives.items():
                xd = x.to(device)
                for crn in (True, False):
                    t = _timed(lambda o=obj, xd=xd, c=crn, s=r: o(xd, s, common_random_numbers=c),
                               obj.device)
                    batched.setdefault((device, kernel, ph, crn), []).append(t / P)
        ref_best = min(ref_times)
        for (device, kernel, ph, crn), per in batched.items():
            best = min(per)
            device_physics = batched.get((device, kernel, "device", crn))
            rows.append({
                "device": device, "kernel": kernel, "physics": ph,
                "common_random_numbers": crn, "P": P,
                "N": in_features * out_features,
                "rounds": len(per),
                "batched_ms_per_candidate": best * 1e3,
                "batched_ms_per_candidate_median": statistics.median(per) * 1e3,
                "batched_candidates_per_s": 1.0 / best,
                "reference_ms_per_candidate": ref_best * 1e3,
                "reference_ms_per_candidate_median": statistics.median(ref_times) * 1e3,
                "reference_candidates": n_ref,
                "speedup_per_candidate": ref_best / best,
                # Cost of this physics per candidate relative to the device physics measured in
                # the same rounds (same kernel, CRN mode and P).
                "cost_vs_device_physics": None if device_physics is None
                else best / min(device_physics),
            })
        print(f"  P={P} done ({n_rounds} rounds)", file=sys.stderr, flush=True)

    record = {
        "torch_threads": torch.get_num_threads(),
        "config": {
            "test_tile": [out_features, in_features], "N": in_features * out_features,
            "t_steps_s": list(T_STEPS), "T": len(T_STEPS), "K": len(F_LST),
            "f_lst": list(F_LST), "nbins": NBINS, "D": D, "symmetric": True,
            "noise_model": "gpuwpo.PCMLikeNoiseModel() defaults", "compensation": "ideal global",
            "physics": list(physics),
            "dtype": "float32",
            "reference": "gpuwpo.search.reference.reference_objective on the CPU",
            "timing": "best of interleaved rounds (median also given), seconds per candidate",
        },
        "results": rows,
    }
    if profile_size:
        obj = objectives[("cpu", "torch", physics[0])]
        record["profile"] = {
            f"P={profile_size}, crn={crn}": profile_batched(
                obj, x_all[:, :profile_size], common_random_numbers=crn)
            for crn in (True, False)
        }
    return record


def results_table(record: dict) -> str:
    """The results as a markdown table (one row per device, kernel, CRN mode and P)."""
    rows = [{
        "device": r["device"], "kernel": r["kernel"], "physics": r.get("physics", "device"),
        "crn": "on" if r["common_random_numbers"] else "off", "P": r["P"], "N": r["N"],
        "cand_s": f"{r['batched_candidates_per_s']:.0f}",
        "ms": f"{r['batched_ms_per_candidate']:.3f}",
        "ref": f"{r['reference_ms_per_candidate']:.2f}",
        "ratio": f"{r['speedup_per_candidate']:.1f}",
        "vs_device": "" if r.get("cost_vs_device_physics") is None
        else f"{r['cost_vs_device_physics']:.2f}",
    } for r in record["results"]]
    return markdown_table(rows, [
        "device", "kernel", "physics", ("crn", "CRN"), "P", "N", ("cand_s", "batched cand/s"),
        ("ms", "batched ms/cand"), ("ref", "reference ms/cand"), ("ratio", "speed-up (x)"),
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
                        help="candidates the per-candidate reference is timed on")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved timing rounds for P < 2000 (one round above)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1; 0 keeps torch's default). "
                             "On a small shared machine a second thread that the OS deschedules "
                             "makes every elementwise op wait for it (see bench/README.md)")
    parser.add_argument("--n-values", type=int, nargs="+", default=None,
                        help="test weights per layer N, each a (N / 20) x 20 tile (default "
                             "10240; on CUDA 10240 102400 1024000)")
    parser.add_argument("--max-pn", type=float, default=1.1e9,
                        help="skip population sizes with P x N above this (default 1.1e9: at "
                             "N = 10^6 up to P = 1000)")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the torch.compile variant on the CPU (it compiles ~20 s)")
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

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
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
            compile_cpu=not args.no_compile, physics=tuple(args.physics)))
    record = {**records[0], "results": [row for r in records for row in r["results"]]}
    if len(records) > 1:
        record["config"] = {**record["config"], "N": n_values, "test_tile": "(N / out) x out"}
    record = {"machine": machine, "load_average_start": load_start,
              "load_average_end": _load(), "quick": bool(args.quick), **record}
    out = save_record("objective", record, args.out)
    record = {"benchmark": "objective", **record}
    print(results_table(record))
    if "profile" in record:
        for key, ops in record["profile"].items():
            print(f"\nTop ops, batched objective on the CPU, {key}:")
            for op in ops:
                print(f"  {op['op']:<28} {op['calls']:>5} calls {op['self_cpu_ms']:>10.1f} ms "
                      f"{100 * op['share']:5.1f} %")
    print(f"\nwritten {out}", file=sys.stderr)
    return record


if __name__ == "__main__":
    main()
