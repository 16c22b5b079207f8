"""Benchmark: a BERT-base-shaped network's per-layer search sharded over Ray workers.

The network of bench/network.py (73 weight matrices shaped like BERT-base's Linear layers, about
85 million synthetic heavy-tailed weights) optimised per layer by :func:`gpuwpo.optimize_network`
three ways with the same seed: in one process, and with ``distributed=gpuwpo.RayCluster(...)``
on 1 and on 2 workers (``--workers``). Every run's result must be the same, bit for bit
(``wall_time`` aside); the record says whether it was.

Reported: the wall time of each run (the call, weight generation apart), the speed-up of N
workers over one worker and over the single process, and Ray's own costs apart from the runs:
``ray_startup_s`` (starting the local cluster) and ``ray_warmup_s`` (a tiny untimed run that
starts the worker processes and imports torch and gpuwpo in them). The local cluster is started
once with as many CPUs (or GPUs) as the most workers asked for; a run on fewer workers runs at
most that many tasks at once.

Budget: a REDUCED one on the CPU (popsize 2 x D, 3 generations, 20 validation and baseline
repeats, no polish: bench/network.py's CPU options), one torch thread per worker and in the single
process; a few minutes per run on a 2-core CPU. On CUDA, ``--gpus-per-worker 1`` runs one worker
per GPU against the single process on one GPU (default workers 1 and every GPU).

Run:  python bench/distributed.py [--workers 1 2] [--popsize P] [--maxiter G]
      python -m bench.distributed ...
Writes bench/results/distributed-<machine>.json (``--out-dir`` elsewhere) and prints a table.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpuwpo  # noqa: E402
from bench import common  # noqa: E402
from bench.network import CPU_OPTIONS, F_LST, T_STEPS, bert_shaped_weights  # noqa: E402

#: The CPU budget: small, as this measures the sharding, not the search (three runs of it).
CPU_BUDGET = (2, 3)

#: --quick: a smoke run (seconds plus Ray's start-up), for the tests.
QUICK_BUDGET = (2, 2)
QUICK_OPTIONS = {"test_in_features": 32, "test_out_features": 4, "validation_repeats": 4,
                 "baseline_iterations": 4, "polish_maxiter": 2}


def _same(a: gpuwpo.NetworkResult, b: gpuwpo.NetworkResult) -> bool:
    """Every field equal (converters bit for bit), wall_time aside."""
    return dataclasses.replace(a, wall_time=0.0) == dataclasses.replace(b, wall_time=0.0)


def _summary(res: gpuwpo.NetworkResult, wall: float) -> dict[str, Any]:
    return {"wall_time_s": wall, "generations": res.nit, "candidates": res.nfev,
            "stop_reason": res.stop_reason, "total_tnmse": res.total_tnmse,
            "total_baseline_tnmse": res.total_baseline_tnmse,
            "layers_kept_baseline": sum(layer.kept_baseline for layer in res.layers)}


def run(weights: dict[str, torch.Tensor], *, workers: Sequence[int], popsize: int, maxiter: int,
        device: torch.device | None, gpus_per_worker: int = 0, threads: int = 1,
        seed: int = 100, options: dict[str, Any] | None = None,
        layers_per_task: int | None = None) -> dict[str, Any]:
    """The single-process run, then the sharded runs on each number of ``workers``."""
    options = dict(options or {})
    noise = gpuwpo.PCMLikeNoiseModel(g_max=25.0)
    baseline = gpuwpo.DualPairConductanceConverter(f_lst=[1.0, 1.0], g_min=0.0, g_max=25.0)

    def call(ws, distributed=None, **kw):
        t0 = time.perf_counter()
        res = gpuwpo.optimize_network(
            ws, noise, T_STEPS, baseline, list(F_LST), per_layer=True, device=device,
            distributed=distributed,
            **{"seed": seed, "disp": False, "popsize": popsize, "maxiter": maxiter, **options,
               **kw})
        return res, time.perf_counter() - t0

    print(f"  single process ({threads} thread(s)) ...", file=sys.stderr, flush=True)
    single, single_wall = call(weights)
    rows: list[dict[str, Any]] = [{"workers": 0, "what": "single process", **_summary(
        single, single_wall), "identical": True}]
    most = max(workers)
    with gpuwpo.RayCluster(workers=most, gpus_per_worker=gpus_per_worker,
                           threads_per_worker=threads) as cluster:
        startup = cluster.startup_s
        # Untimed: the workers' processes start and import torch and gpuwpo on their first task.
        first = dict(list(weights.items())[:most])
        t0 = time.perf_counter()
        call(first, distributed=gpuwpo.RayCluster(workers=most, gpus_per_worker=gpus_per_worker,
                                                  threads_per_worker=threads,
                                                  layers_per_task=1),
             popsize=1, maxiter=1, validation_repeats=2, baseline_iterations=2, polish=False)
        warmup = time.perf_counter() - t0
        for n in workers:
            print(f"  {n} Ray worker(s) ...", file=sys.stderr, flush=True)
            shards = gpuwpo.RayCluster(workers=n, gpus_per_worker=gpus_per_worker,
                                       threads_per_worker=threads, layers_per_task=layers_per_task)
            res, wall = call(weights, distributed=shards)
            rows.append({"workers": n, "what": f"{n} Ray worker(s)", **_summary(res, wall),
                         "identical": _same(single, res),
                         "tasks": len(shards.plan(len(weights)))})
    one = next((r["wall_time_s"] for r in rows if r["workers"] == 1), None)
    for r in rows:
        r["speedup_vs_single_process"] = single_wall / r["wall_time_s"]
        r["speedup_vs_one_worker"] = one / r["wall_time_s"] if one and r["workers"] else None
    return {"ray_startup_s": startup, "ray_warmup_s": warmup, "runs": rows,
            "identical": all(r["identical"] for r in rows)}


def table(record: dict[str, Any]) -> str:
    r = record["result"]
    return common.markdown_table([{
        "what": row["what"], "wall": f"{row['wall_time_s']:.1f}",
        "vs1": "-" if row["speedup_vs_one_worker"] is None
        else f"{row['speedup_vs_one_worker']:.2f}x",
        "vs0": f"{row['speedup_vs_single_process']:.2f}x",
        "tasks": row.get("tasks", "-"), "generations": row["generations"],
        "candidates": row["candidates"], "same": row["identical"],
    } for row in r["runs"]], ["what", ("wall", "wall s"), ("vs1", "speed-up vs 1 worker"),
                              ("vs0", "speed-up vs single process"), "tasks", "generations",
                              "candidates", ("same", "same result")]) + (
        f"\n\nRay start-up {r['ray_startup_s']:.1f} s, worker warm-up {r['ray_warmup_s']:.1f} s "
        f"(not in the runs' wall times).")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line entry point; returns the record (also written as JSON)."""
    parser = common.budget_parser(__doc__, f"{CPU_BUDGET[0]}", f"{CPU_BUDGET[1]}")
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="numbers of Ray workers to run (default 1 2 on the CPU; 1 and "
                             "every GPU with --gpus-per-worker 1)")
    parser.add_argument("--gpus-per-worker", type=int, choices=(0, 1), default=0)
    parser.add_argument("--layers-per-task", type=int, default=None,
                        help="default: about four tasks per worker")
    parser.add_argument("--max-layers", type=int, default=None,
                        help="keep the first N weight matrices only")
    common.add_tail_arguments(parser, "smoke run: hidden 32, one block, 3 layers, popsize 2, 2 "
                                      "generations, a 32 x 4 test tile, 4 repeats")
    args = parser.parse_args(argv)

    threads = max(1, args.threads)
    device = torch.device("cuda") if args.gpus_per_worker else torch.device("cpu")
    if device.type == "cpu":
        torch.set_num_threads(threads)
    hidden, blocks, max_layers = 768, 12, args.max_layers
    if args.quick:
        (popsize, maxiter), options = QUICK_BUDGET, dict(QUICK_OPTIONS)
        hidden, blocks, max_layers = 32, 1, max_layers or 3
    else:
        (popsize, maxiter), options = CPU_BUDGET, dict(CPU_OPTIONS)
    popsize, maxiter = args.popsize or popsize, args.maxiter or maxiter
    workers = args.workers or ([1, max(1, torch.cuda.device_count())] if args.gpus_per_worker
                               else [1, 2])
    workers = sorted(set(workers))
    note = (f"REDUCED budget: popsize {popsize} x D, {maxiter} generations, overrides {options} "
            f"(the reference's default is popsize 100 x D, 200 generations, 100 "
            f"validation/baseline repeats, polish on)")
    machine = common.machine_info()
    print(f"distributed benchmark on {machine['name']}: {note}", file=sys.stderr)
    weights = bert_shaped_weights(hidden=hidden, intermediate=4 * hidden, blocks=blocks,
                                  max_layers=max_layers, seed=args.weight_seed)
    print(f"  {len(weights)} layers, {sum(w.numel() for w in weights.values()) / 1e6:.1f} M "
          f"weights", file=sys.stderr, flush=True)
    result = run(weights, workers=workers, popsize=popsize, maxiter=maxiter, device=device,
                 gpus_per_worker=args.gpus_per_worker, threads=threads, seed=args.seed,
                 options=options, layers_per_task=args.layers_per_task)
    config = {
        "network": (f"BERT-base-shaped: hidden {hidden}, intermediate {4 * hidden}, "
                    f"{blocks} blocks + pooler"
                    + (f", first {max_layers} layers" if max_layers else "")),
        "num_layers": len(weights),
        "num_weights": sum(w.numel() for w in weights.values()),
        "f_lst": list(F_LST), "t_steps_s": list(T_STEPS), "per_layer": True,
        "popsize": popsize, "maxiter": maxiter, "optimizer_overrides": options,
        "seed": args.seed, "device": str(device), "gpus_per_worker": args.gpus_per_worker,
        "torch_threads_per_worker": threads, "workers": workers,
    }
    record = common.new_record(machine, note, args.quick, result=result, config=config)
    heading = f"{record['config']['network']}, {machine['name']}, {note}."
    return common.finish("distributed", record, heading, table, out_dir=args.out_dir)


if __name__ == "__main__":
    main()
