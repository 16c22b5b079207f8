"""A short demo: a heavy-tailed weight matrix programmed with a DualPair converter.

Prints the normalised weight error (the TNMSE of DESIGN.md section 5, per time step) at 1 s,
1 h, 1 day, 1 month and 1 year after programming. Run with ``python -m gpuwpo.demo``.
"""

from __future__ import annotations

import argparse

import torch

from .compensation import GlobalDriftCompensation
from .converters import DualPairConductanceConverter
from .noise import PCMLikeNoiseModel
from .simulate import simulate_weights
from .synthetic import student_t_weights

TIMES = {"1 s": 1.0, "1 h": 3600.0, "1 day": 86400.0, "1 month": 30 * 86400.0,
         "1 year": 365 * 86400.0}


def weight_error_over_time(weights: torch.Tensor, converter, noise_model, *, repeats: int = 20,
                           seed: int = 0) -> dict[str, tuple[float, float]]:
    """Mean and standard error of 100 * ||alpha W_t - W||^2 / (N M^2) at each time of ``TIMES``."""
    gen = torch.Generator().manual_seed(seed)
    eff = simulate_weights(weights, converter, noise_model, list(TIMES.values()),
                           GlobalDriftCompensation(), repeats=repeats, generator=gen)
    m = weights.abs().max()
    err = (10 * (eff - weights) / m).square().flatten(2).mean(-1)  # [repeats, T]
    mean, sem = err.mean(0), err.std(0) / repeats**0.5
    return {name: (float(mean[i]), float(sem[i])) for i, name in enumerate(TIMES)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    gen = torch.Generator().manual_seed(args.seed)
    # Student-t weights (3 degrees of freedom): the heavy tails of trained networks.
    weights = student_t_weights((256, 512), df=3, scale=0.05, generator=gen)
    converter = DualPairConductanceConverter(f_lst=[1.0, 1.0], g_min=0.0, g_max=25.0)
    rows = weight_error_over_time(weights, converter, PCMLikeNoiseModel(g_max=25.0),
                                  repeats=args.repeats, seed=args.seed)
    print("DualPair f=[1, 1], 0..25 uS, 256 x 512 Student-t weights, global drift compensation")
    print(f"{'time':>8}  {'weight error (TNMSE)':>22}")
    for name, (mean, sem) in rows.items():
        print(f"{name:>8}  {mean:12.4f} +- {sem:.4f}")


if __name__ == "__main__":
    main()
