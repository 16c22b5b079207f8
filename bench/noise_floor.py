"""Benchmark: how far the standard N-pair converters reach, and what holds them back.

The per-layer search on the BERT-base-shaped benchmark (``network.py``) ends about 12 % below
the baseline in total, with the large 3072 x 768 layers gaining least. This script asks whether
that is the search or the strategy space: on one encoder block of the BERT-shaped network (and
of the real pretrained MiniLM, for contrast) it evaluates the N-pair converters f = [1, F] the
search is seeded with (F = 1 is the baseline DualPair f = [1, 1]; 0..25 uS, the largest weight
at the full range) under three device models:

- ``default``: ``PCMLikeNoiseModel(g_max=25)``, the benchmark's;
- ``no floor``: the same without the constant term of the programming-noise polynomial
  (0.26 uS of noise on a device programmed to 0 uS, which every idle device carries);
- ``no programming noise``: drift and read noise only.

For each layer: max|W| / std(W) (how far out its largest weight lies), the baseline's TNMSE on
the layer's test tile (512 x 20) and every converter's reduction against it, with the standard
error of the paired difference (every converter of a layer and model is programmed with the same
noise, repeat by repeat). A reduction the seeds cannot reach under the default model but reach
once the floor is gone is the floor's, not the search's.

Then, under the default model, the same converters programmed with the layer's weights CLIPPED
at a fraction of max|W| (the converter sees the clipped weights, so its range follows them; the
error is still measured against the original weights and normalised by the original max|W|).
No program of the reference's strategy space does this; the rows measure what a clipping step
before the converter would be worth.

Last, the same converters under the **per-column mapping** (each output row scaled to its own
max|w| before the converter and back in digital, aihwkit's ``weight_scaling_omega=1,
weight_scaling_columnwise=True``: gpuwpo's default baseline mapping), on the layer's test tile
sampled by rows (each row keeping its own scale), unclipped and with each row clipped at a
fraction of its own max|w| (aihwkit's deployment of clipped rows: the tile holds the clipped
row over its clipped max). Reductions are against DualPair f = [1, 1] under the per-column
mapping on the same rows and noise; each such row also holds the per-column baseline's
reduction against the layer-wise DualPair on those rows (``per_column_vs_layerwise``).

Run:  python bench/noise_floor.py [--repeats 16] [--weights bert-shaped minilm] [--quick]
Writes bench/results/noise_floor-<machine>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpuwpo  # noqa: E402
from bench import common  # noqa: E402
from bench.network import _kind, bert_shaped_weights  # noqa: E402
from gpuwpo.device.mapping import Recipe  # noqa: E402
from gpuwpo.device.noise import DEFAULT_PROG_COEFF  # noqa: E402
from gpuwpo.device.simulate import converter_errors  # noqa: E402
from gpuwpo.search.strategy import START_RATIOS  # noqa: E402
from gpuwpo.search.tiles import TestTile  # noqa: E402

T_STEPS = gpuwpo.device.simulate.DEFAULT_TIMES
G_MAX = 25.0
GRID_SIZE = 11  # nbins = 6; the converters here do not use the grid, the tile does not care


def device_models() -> dict[str, gpuwpo.PCMLikeNoiseModel]:
    """The three device models compared, by name."""
    return {
        "default": gpuwpo.PCMLikeNoiseModel(g_max=G_MAX),
        "no floor": gpuwpo.PCMLikeNoiseModel(g_max=G_MAX,
                                             prog_coeff=[0.0, *DEFAULT_PROG_COEFF[1:]]),
        "no programming noise": gpuwpo.PCMLikeNoiseModel(g_max=G_MAX, prog_noise_scale=0.0),
    }


def first_block(source: str, *, quick: bool = False) -> dict[str, torch.Tensor]:
    """The weight matrices of encoder block 0 of ``source`` ("bert-shaped" or "minilm")."""
    if source == "bert-shaped":
        layers = (bert_shaped_weights(hidden=32, intermediate=128, blocks=1, max_layers=2)
                  if quick else bert_shaped_weights(blocks=1))
    elif source == "minilm":
        layers = common.pretrained_transformer_weights()
    else:
        raise SystemExit(f"unknown weights {source!r}: bert-shaped or minilm")
    block = {name: w for name, w in layers.items() if name.startswith("encoder.layer.0.")}
    return dict(list(block.items())[:2]) if quick else block


def _test_tile(name: str, weights: torch.Tensor, tile_shape: Sequence[int]) -> torch.Tensor:
    """The layer's test tile ``[out, in]``, as the objective samples it."""
    tile = TestTile.from_layers({name: weights}, GRID_SIZE, shape=tile_shape)
    return tile.weights[0].reshape(tile.shape)


def _row(name: str, weights: torch.Tensor, model: str, base: torch.Tensor,
         errors: Mapping[float, torch.Tensor], **extra: Any) -> dict[str, Any]:
    """A table row: the baseline's TNMSE and each ratio's reduction against it, with the
    standard error of the paired difference (``base`` and ``errors[F]``: ``[repeats]``)."""
    repeats = base.shape[0]
    row: dict[str, Any] = {"layer": name, "kind": _kind(name),
                           "max_over_std": float(weights.abs().max() / weights.float().std()),
                           "model": model, **extra, "baseline_tnmse": float(base.mean()),
                           "reduction": {}, "reduction_se": {}}
    for ratio, e in errors.items():
        diff = base - e
        row["reduction"][f"{ratio:g}"] = float(diff.mean() / base.mean())
        row["reduction_se"][f"{ratio:g}"] = float(diff.std() / math.sqrt(repeats) / base.mean())
    best = max(row["reduction"], key=row["reduction"].get)
    row["best_ratio"], row["best_reduction"] = float(best), row["reduction"][best]
    return row


def _npair(ratio: float) -> gpuwpo.NPairConductanceConverter:
    return gpuwpo.NPairConductanceConverter([1.0, float(ratio)], 0.0, G_MAX)


def layer_rows(name: str, weights: torch.Tensor, models: Mapping[str, Any],
               ratios: Sequence[float], *, repeats: int, tile_shape: Sequence[int],
               seed: int) -> list[dict[str, Any]]:
    """One row per device model: baseline TNMSE and every ratio's reduction (paired)."""
    w = _test_tile(name, weights, tile_shape)
    converters = [_npair(r) for r in ratios]
    rows = []
    for label, model in models.items():
        err = converter_errors(w, converters, model, T_STEPS, repeats=repeats,
                               generator=seed).mean(-1)  # [C, repeats] TNMSE per repeat
        rows.append(_row(name, weights, label, err[0], dict(zip(ratios, err))))
    return rows


#: Fractions of max|W| the clipped rows clip the weights at.
CLIP_FRACTIONS = (0.7, 0.5, 0.3)


def clipped_rows(name: str, weights: torch.Tensor, model, ratios: Sequence[float],
                 fractions: Sequence[float], *, repeats: int, tile_shape: Sequence[int],
                 seed: int) -> list[dict[str, Any]]:
    """One row per clip fraction: every converter programmed with the clipped tile.

    The error of a repeat is ``mean_t mean_n (10 (alpha_t W'_t,n - W_n) / max|W|)^2`` with W the
    original test weights and W' the clipped ones programmed; every converter and fraction is
    simulated with the same seed (the same device noise), and the reduction is against the
    unclipped baseline (F = 1, fraction 1) under that noise.
    """
    w = _test_tile(name, weights, tile_shape)
    m = w.abs().max()

    def errors(ratio: float, fraction: float) -> torch.Tensor:  # [repeats]
        clipped = w.clamp(-fraction * m, fraction * m)
        eff = gpuwpo.simulate_weights(clipped, _npair(ratio), model, T_STEPS, repeats=repeats,
                                      generator=seed)  # [repeats, T, out, in]
        return (10 * (eff - w) / m).square().mean(dim=(-3, -2, -1))

    base = errors(1.0, 1.0)
    return [_row(name, weights, f"default, clipped at {fraction:g} max|W|", base,
                 {ratio: errors(ratio, fraction) for ratio in ratios},
                 clip_fraction=float(fraction))
            for fraction in fractions]


#: Fractions of each row's max|w| the per-column rows clip the rows at (1: unclipped).
ROW_CLIP_FRACTIONS = (1.0, 0.7, 0.5, 0.3)


def columnwise_rows(name: str, weights: torch.Tensor, model, ratios: Sequence[float],
                    fractions: Sequence[float], *, repeats: int, tile_shape: Sequence[int],
                    seed: int) -> list[dict[str, Any]]:
    """One row per clip fraction: every converter under the per-column mapping, each row of the
    tile (sampled by rows) clipped at ``fraction`` of its own max|w| before it is scaled.

    The error of a repeat is ``mean_t mean_n (10 (s' alpha_t W'_t,n - W_n) / max|W|)^2`` with W
    the original tile, W' the clipped rows each over its clipped max s' (what the tile holds)
    and max|W| the original tile's; every converter, fraction and mapping is simulated with the
    same seed (the same device noise), and the reduction is against the unclipped DualPair
    f = [1, 1] under the per-column mapping under that noise.
    """
    # The search's tile by rows (out, in) = (20, 512): ``tile_shape`` lists it the other way
    # round (as the distribution tiles above lay out their 10,240 weights).
    tile = TestTile.from_layers({name: weights}, GRID_SIZE, shape=tuple(tile_shape)[::-1],
                                rows=True)
    w = tile.weights[0].reshape(tile.shape)
    m = w.abs().max()
    s = w.abs().amax(-1, keepdim=True)

    def errors(ratio: float, fraction: float, mapping: str = "columnwise") -> torch.Tensor:
        clipped = torch.maximum(torch.minimum(w, fraction * s), -fraction * s)
        eff = gpuwpo.simulate_weights(clipped, Recipe(_npair(ratio), mapping), model, T_STEPS,
                                      repeats=repeats, generator=seed)  # [repeats, T, out, in]
        return (10 * (eff - w) / m).square().mean(dim=(-3, -2, -1))

    base = errors(1.0, 1.0)
    layerwise = errors(1.0, 1.0, "layer")
    diff = layerwise - base
    vs_layerwise = {"reduction": float(diff.mean() / layerwise.mean()),
                    "reduction_se": float(diff.std() / math.sqrt(repeats) / layerwise.mean()),
                    "layerwise_baseline_tnmse": float(layerwise.mean())}
    return [_row(name, weights, "default, per-column mapping" + (
                     f", rows clipped at {fraction:g} of their max" if fraction < 1 else ""),
                 base, {ratio: errors(ratio, fraction) for ratio in ratios},
                 mapping="columnwise", row_clip_fraction=float(fraction),
                 per_column_vs_layerwise=vs_layerwise)
            for fraction in fractions]


def _report(record: Mapping[str, Any]) -> str:
    ratios = record["config"]["ratios"]
    blocks = []
    for run in record["runs"]:
        rows = [{"layer": r["kind"], "M / std": f"{r['max_over_std']:.0f}", "model": r["model"],
                 "baseline TNMSE": f"{r['baseline_tnmse']:.5f}",
                 **{f"F={k:g}": (f"{100 * r['reduction'][f'{k:g}']:.1f} "
                                 f"+- {100 * (r['reduction_se'][f'{k:g}'] or 0):.2f}")
                    for k in ratios}}
                for r in run["rows"]]
        columns = ["layer", "M / std", "model", "baseline TNMSE",
                   *[f"F={k:g}" for k in ratios]]
        blocks.append(f"{run['weights']} (reduction of TNMSE against DualPair f=[1, 1], %, "
                      f"+- standard error of the paired difference)\n\n"
                      + common.markdown_table(rows, columns))
    return "\n\n".join(blocks)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", nargs="+", choices=("bert-shaped", "minilm"),
                        default=["bert-shaped", "minilm"])
    parser.add_argument("--repeats", type=int, default=16,
                        help="programmings per converter and model (paired)")
    common.add_seed_and_threads(parser)
    args = common.parse_quick_out(
        parser, argv, "smoke run: synthetic only, 2 small layers, 3 repeats, 32 x 4 tile",
        spread="the standard errors need a spread")
    if args.quick:
        args.weights, args.repeats = ["bert-shaped"], 3
    tile_shape = (32, 4) if args.quick else (512, 20)
    machine = common.machine_info()
    models = device_models()
    runs = []
    for source in args.weights:
        rows = []
        for name, w in first_block(source, quick=args.quick).items():
            rows += layer_rows(name, w, models, START_RATIOS, repeats=args.repeats,
                               tile_shape=tile_shape, seed=args.seed)
            rows += clipped_rows(name, w, models["default"], START_RATIOS, CLIP_FRACTIONS,
                                 repeats=args.repeats, tile_shape=tile_shape, seed=args.seed)
            rows += columnwise_rows(name, w, models["default"], START_RATIOS, ROW_CLIP_FRACTIONS,
                                    repeats=args.repeats, tile_shape=tile_shape, seed=args.seed)
        runs.append({"weights": source, "rows": rows})
    record = common.new_record(
        machine, "fixed converters, no search", args.quick, torch_threads=torch.get_num_threads(),
        load_average=common.load_average(),
        config={"converters": "NPair f=[1, F], 0..25 uS, largest weight at the full range",
                "ratios": list(START_RATIOS), "clip_fractions": list(CLIP_FRACTIONS),
                "row_clip_fractions": list(ROW_CLIP_FRACTIONS),
                "t_steps_s": list(T_STEPS),
                "test_tile": list(tile_shape), "repeats": args.repeats, "seed": args.seed,
                "models": {k: repr(m) for k, m in models.items()},
                "compensation": "ideal global"},
        runs=runs)
    return common.finish("noise_floor", record, "", _report, out=args.out)


if __name__ == "__main__":
    main()
