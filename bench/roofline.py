"""The machine's own limit for the batched objective: primitive throughput x primitive count.

A roofline for one candidate of the CPU objective, measured on the machine in the same run as the
objective (bench/objective.py imports this module and times both in the same interleaved rounds),
because this shared machine's vector throughput moves by 3-4x between days and only same-run
ratios hold.

**Throughput.** :func:`measure_primitives` times, for every torch intra-op thread count asked
for (1 and 2 by default) and several float32 array sizes around the objective's working set,
the primitives the objective is made of, each as one torch op writing into a preallocated
array (elements per second, best of a few repeats):

    exp     torch.exp(a, out=b)                 a in [-4, 2] (the drift and read-noise exponents)
    log     torch.log(g, out=b)                 g in [0.01, 25] uS (conductances)
    normal  torch.randn(n, generator=gen, out=b)   standard normals, as the noise streams draw
    fma     torch.addcmul(a, b, c, out=d)       one multiply-add per element
    gather  torch.gather(table, -1, idx, out=b)   a program table [4, 10] read at int64 indices

The default sizes are one candidate's conductances of the default tile, [2K, N] = [4, 10,240] =
40,960 float32 (160 KiB; the eager CPU path works on one candidate of one layer at a time, its
chunk budget ``gpuwpo.device.chunks.CPU_MEMORY_BUDGET`` = 2 MiB holding a dozen such arrays),
a quarter of it, and 4x and 16x of it (torch.compile's chunks are 8x larger). A primitive's
roofline rate is its best rate over the sizes: the machine's limit with the data in cache.

**Count.** :func:`primitive_counts` gives the primitives one candidate needs, from the formulas
of docs/DESIGN.md sections 2, 2b and 5, with every quantity that common random numbers (CRN)
let candidates share left out. Shared by all candidates of a layer (computed or drawn once per
evaluation): the standard normals z1, z2, z3 [T, 2K, N] (with CRN), the test weights' grid
positions (idx, frac), the ideal weights scaled by the error gain, and the time factors
ln(t'/t0) and sqrt(ln((t' + t_read) / (2 t_read))). Per candidate, with n = 2K N devices,
N weights and T times (device physics):

    once per device      g = lerp of the program table at (idx, frac)        2 gather, 1 fma
                         prog_std = s (c0 + c1 r + c2 r^2) g_max / g_ref     2 fma  (r = g/g_max)
                         ln r; mu = clip(a ln r + b); sigma = clip(...)      1 log, 2 fma
    per device and time g_p = max(0, g + prog_std z1)                        1 fma
                         nu = |mu + sigma z2|                                1 fma
                         drift factor exp(-ln(t'/t0) nu); g_d = g_p factor   1 exp, 2 fma
                         Q from g_p^-0.65 = exp(-0.65 ln g_p)                1 log, 1 exp, 1 fma
                         g_t = max(0, g_d (1 + s Q read_factor z3))          2 fma
                         W_p, W_t = sum_k f_k (G+_k - G-_k) / scale          2 fma  (matmul)
    per weight and time  sum|W_p|, sum|W_t|, (alpha W_t - W)^2 summed        4 fma

so 2 exp, 1 log and 9 fma per device and time, 4 fma per weight and time, 1 log, 5 fma and 2
gathers per device once: at N = 10,240, T = 6, K = 2 that is 491,520 exp, 286,720 log, 2,662,400
fma and 81,920 gathers per candidate (clamps, abs and min/max ride along in the same passes and
are not counted). ``physics="aihwkit"`` converts the programmed weights again at every time
(docs/DESIGN.md section 2b): per weight and time max|W_p| and the grid position (p, floor,
frac: 4 fma), per device and time 2 gathers and a lerp (1 fma). Without CRN every candidate
draws its own 3 T 2K N = 737,280 normals. The strategy's decode ([D] -> an [2K, L] table) is a
few hundred operations and not counted.

Roofline rate = 1 / sum_p count_p / rate_p candidates per second; the objective's fraction of
it is its measured rate over that. The rates are of single torch ops over arrays in cache, so
the roofline is what a path that makes exactly these passes and no others would reach; a fused
loop that keeps values in registers can beat the fma figure, not the exp and log ones.

Run:  python bench/roofline.py [--threads 1 2] [--sizes ...] [--repeats 3]
      python -m bench.roofline ...
Prints the throughput per primitive, size and thread count and the roofline per physics and CRN
mode (nothing is written: bench/objective.py records it with the objective's figures).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import markdown_table  # noqa: E402

__all__ = ["PRIMITIVES", "DEFAULT_SIZES", "measure_primitives", "best_rates", "primitive_counts",
           "roofline_rate", "roofline_seconds", "merge_measurements"]

#: The primitives timed and counted (see the module docstring).
PRIMITIVES = ("exp", "log", "normal", "fma", "gather")

#: float32 elements per array: a quarter, one, 4 and 16 candidates' [2K, N] = [4, 10,240].
DEFAULT_SIZES = (10_240, 40_960, 163_840, 655_360)

# Elements processed per timed call (a loop of one op over the array), so that every size is
# timed over about the same amount of work (~1-5 ms on one core).
_ELEMENTS_PER_TIMING = 2_000_000
# The program table a gather reads: 2K rows of L - 1 = 10 interval ends.
_TABLE_SHAPE = (4, 10)


def _primitive_ops(n: int, gen: torch.Generator) -> dict[str, Callable[[], object]]:
    """One callable per primitive over float32 arrays of ``n`` elements (allocated here)."""
    exponent = torch.rand(n, generator=gen).mul_(6.0).sub_(4.0)  # [-4, 2]
    conductance = torch.rand(n, generator=gen).mul_(25.0).add_(0.01)  # uS
    a, b = torch.rand(n, generator=gen), torch.rand(n, generator=gen)
    out = torch.empty(n)
    rows, cols = _TABLE_SHAPE
    table = torch.rand(_TABLE_SHAPE, generator=gen).mul_(25.0)
    m = -(-n // rows)
    index = torch.randint(0, cols, (rows, m), generator=gen)
    gathered = torch.empty(rows, m)
    return {
        "exp": lambda: torch.exp(exponent, out=out),
        "log": lambda: torch.log(conductance, out=out),
        "normal": lambda: torch.randn(n, generator=gen, out=out),
        "fma": lambda: torch.addcmul(conductance, a, b, out=out),
        "gather": lambda: torch.gather(table, -1, index, out=gathered),
    }


def _elements(primitive: str, n: int) -> int:
    rows = _TABLE_SHAPE[0]
    return rows * -(-n // rows) if primitive == "gather" else n


def measure_primitives(sizes: Sequence[int] = DEFAULT_SIZES, threads: Sequence[int] = (1, 2), *,
                       repeats: int = 3, seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """Elements per second of every primitive, per thread count and array size.

    Args:
        sizes: float32 elements per array (> 0).
        threads: torch intra-op thread counts to measure at (each >= 1); torch's setting is
            restored afterwards.
        repeats: timings per (thread count, size, primitive); the best is kept (>= 1).
        seed: of the arrays' contents and of the normal draws' generator.

    Returns:
        ``{str(threads): {primitive: {str(size): elements per second}}}``.

    Raises:
        ValueError: a size, thread count or repeat count that is not a positive integer.
    """
    for name, values in (("sizes", sizes), ("threads", threads), ("repeats", [repeats])):
        bad = [v for v in values if isinstance(v, bool) or int(v) != v or v < 1]
        if bad or not values:
            raise ValueError(f"{name} must be positive integers, got {list(values)}")
    before = torch.get_num_threads()
    out: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for n_threads in threads:
            torch.set_num_threads(int(n_threads))
            per: dict[str, dict[str, float]] = {p: {} for p in PRIMITIVES}
            for n in sizes:
                ops = _primitive_ops(int(n), torch.Generator().manual_seed(seed))
                loops = max(1, _ELEMENTS_PER_TIMING // int(n))
                for primitive, op in ops.items():
                    op()  # first touch: page faults and lazy initialisation are not timed
                    best = math.inf
                    for _ in range(int(repeats)):
                        start = time.perf_counter()
                        for _ in range(loops):
                            op()
                        best = min(best, time.perf_counter() - start)
                    per[primitive][str(int(n))] = _elements(primitive, int(n)) * loops / best
            out[str(int(n_threads))] = per
    finally:
        torch.set_num_threads(before)
    return out


def merge_measurements(measurements: Sequence[Mapping]) -> dict[str, dict[str, dict[str, float]]]:
    """The best rate of every (threads, primitive, size) over several measurements (rounds)."""
    merged: dict[str, dict[str, dict[str, float]]] = {}
    for m in measurements:
        for threads, per in m.items():
            for primitive, by_size in per.items():
                slot = merged.setdefault(threads, {}).setdefault(primitive, {})
                for size, rate in by_size.items():
                    slot[size] = max(rate, slot.get(size, 0.0))
    return merged


def best_rates(measurement: Mapping[str, Mapping[str, Mapping[str, float]]],
               threads: int | str) -> dict[str, float]:
    """Each primitive's best rate over the sizes (elements/s) at ``threads`` threads.

    Raises:
        KeyError: ``threads`` was not measured (the message names those that were).
    """
    key = str(threads)
    if key not in measurement:
        raise KeyError(f"no primitive throughput measured at {key} thread(s); measured at "
                       f"{sorted(measurement)}")
    return {p: max(by_size.values()) for p, by_size in measurement[key].items()}


def primitive_counts(N: int, T: int, K: int, *, physics: str = "device",
                     common_random_numbers: bool = True) -> dict[str, int]:
    """The primitives one candidate of the batched objective needs (see the module docstring).

    Args:
        N: test weights per layer; T: inference times; K: device pairs per weight.
        physics: "device" or "aihwkit" (docs/DESIGN.md section 2b).
        common_random_numbers: True leaves the normal draws out (shared by all candidates).

    Returns:
        ``{primitive: count}`` for every primitive of :data:`PRIMITIVES`.
    """
    if physics not in ("device", "aihwkit"):
        raise ValueError(f"physics must be 'device' or 'aihwkit', got {physics!r}")
    for name, value in (("N", N), ("T", T), ("K", K)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    devices = 2 * K * N
    per_device_time = {"exp": 2, "log": 1, "fma": 9, "gather": 0}
    per_weight_time = {"fma": 4}
    once_per_device = {"log": 1, "fma": 5, "gather": 2}
    if physics == "aihwkit":
        # The programmed weights converted again: max|W_p| and the grid position per weight,
        # two gathers and a lerp per device.
        per_device_time = {**per_device_time, "fma": 10, "gather": 2}
        per_weight_time = {"fma": 8}
    counts = {p: 0 for p in PRIMITIVES}
    for p, c in per_device_time.items():
        counts[p] += c * devices * T
    for p, c in per_weight_time.items():
        counts[p] += c * N * T
    for p, c in once_per_device.items():
        counts[p] += c * devices
    if not common_random_numbers:
        counts["normal"] = 3 * devices * T
    return counts


def roofline_seconds(counts: Mapping[str, float], rates: Mapping[str, float]) -> dict[str, float]:
    """Seconds per candidate that each primitive costs at ``rates`` (elements/s)."""
    return {p: counts[p] / rates[p] for p in counts if counts[p]}


def roofline_rate(counts: Mapping[str, float], rates: Mapping[str, float]) -> float:
    """The roofline in candidates per second: 1 / sum over primitives of count / rate."""
    return 1.0 / sum(roofline_seconds(counts, rates).values())


def throughput_table(measurement: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Markdown: one row per thread count and primitive, G elements/s per size."""
    sizes = sorted({int(s) for per in measurement.values() for by in per.values() for s in by})
    rows = []
    for threads, per in measurement.items():
        for primitive, by_size in per.items():
            row = {"threads": threads, "primitive": primitive,
                   "best": f"{max(by_size.values()) / 1e9:.3f}"}
            row.update({str(s): f"{by_size[str(s)] / 1e9:.3f}" for s in sizes
                        if str(s) in by_size})
            rows.append(row)
    return markdown_table(rows, ["threads", "primitive"] + [(str(s), f"{s:,}") for s in sizes]
                          + [("best", "best (G/s)")])


def roofline_table(measurement: Mapping[str, Mapping[str, Mapping[str, float]]], *, N: int,
                   T: int, K: int) -> str:
    """Markdown: the roofline (candidates/s) per thread count, physics and CRN mode."""
    rows = []
    for threads in measurement:
        rates = best_rates(measurement, threads)
        for physics in ("device", "aihwkit"):
            for crn in (True, False):
                counts = primitive_counts(N, T, K, physics=physics, common_random_numbers=crn)
                secs = roofline_seconds(counts, rates)
                rows.append({"threads": threads, "physics": physics, "crn": "on" if crn else "off",
                             "rate": f"{roofline_rate(counts, rates):.0f}",
                             **{p: f"{1e3 * secs.get(p, 0.0):.3f}" for p in PRIMITIVES}})
    return markdown_table(rows, ["threads", "physics", ("crn", "CRN"),
                                 ("rate", "roofline cand/s")]
                          + [(p, f"{p} ms/cand") for p in PRIMITIVES])


def main(argv: Sequence[str] | None = None) -> dict:
    """Command line entry point: measure and print; returns the measurement."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=10_240, help="test weights N of the roofline")
    parser.add_argument("--t", type=int, default=6, help="inference times T of the roofline")
    parser.add_argument("--k", type=int, default=2, help="device pairs K of the roofline")
    args = parser.parse_args(argv)
    try:
        measurement = measure_primitives(args.sizes, args.threads, repeats=args.repeats)
        table = roofline_table(measurement, N=args.n, T=args.t, K=args.k)
    except ValueError as err:
        parser.error(str(err))
    print("Throughput (G elements/s) per array size (float32 elements):\n")
    print(throughput_table(measurement))
    print(f"\nRoofline per candidate, N = {args.n:,}, T = {args.t}, K = {args.k}:\n")
    print(table)
    return measurement


if __name__ == "__main__":
    main()
