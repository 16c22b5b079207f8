"""The digits example: a small MLP programmed into simulated PCM hardware, end to end.

1. Train a 64-64-32-10 ReLU MLP on scikit-learn's bundled digits (8 x 8 images, 10 classes; no
   download), inputs standardised, a fixed 75/25 train/test split, Adam, a few seconds on a CPU.
2. Find a programming strategy for each of its three weight matrices with
   :func:`gpuwpo.network.optimize_network` (two device pairs, free significance factors), against
   the baseline DualPair f=[1, 1], 0..25 uS, under the PCM noise model (g_max = 25 uS).
3. Program the network with each strategy (:func:`gpuwpo.network.program_model`: programming
   noise, drift, read noise, ideal global drift compensation; biases stay digital) and measure
   test accuracy at 1 s, 1 h, 1 day, 1 month and 1 year after programming, over independent
   programmings (one generator per repeat, the stream ``"accuracy"`` of
   :data:`gpuwpo.rng.STREAMS`), as mean and standard deviation.

Run it with ``gpuwpo example`` (``--quick`` for a tiny budget) or ``python examples/digits.py``.
All randomness is seeded: the same seed gives the same network, search and noise, and torch's
global generator is left as it was (the network's initialisation draws from a fork of it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch
from torch import nn

from .rng import make_generator, stream_generator

__all__ = ["TIMES", "BUDGETS", "load_digits_data", "make_mlp", "train_mlp", "accuracy",
           "accuracy_over_time", "run_example", "format_table"]

#: Inference times of the accuracy table, in seconds after programming.
TIMES = {"1 s": 1.0, "1 h": 3600.0, "1 day": 86400.0, "1 month": 2592000.0,
         "1 year": 31536000.0}

#: Search budgets. The MLP's layers hold 4096, 2048 and 320 weights, so a 64 x 20 test tile
#: (1,280 weights) samples their distributions well and keeps a generation cheap on a CPU.
BUDGETS = {
    # gpuwpo's search defaults (docs/RESULTS.md, "Defaults"), with a test tile sized to these
    # layers.
    "default": dict(test_in_features=64, test_out_features=20, baseline_iterations=30,
                    validation_repeats=30, polish_maxiter=15),
    "quick": dict(popsize=2, maxiter=2, test_in_features=16, test_out_features=8,
                  baseline_iterations=4, validation_repeats=4, polish=False),
}


def _seed_bits(seed: int, bits: int) -> int:
    """``seed`` for a generator that takes ``bits``-bit seeds: itself when it fits (so the
    familiar seeds keep their results), else a hash of all of it (seeds are used whole,
    never truncated: seeds that differ by 2**32 must not give the same run)."""
    from .rng import mix64

    seed = int(seed)
    return seed if 0 <= seed < 2**bits else mix64(seed) & ((1 << bits) - 1)


def load_digits_data(seed: int = 0, test_fraction: float = 0.25
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits as float32 tensors ``(x_train [n, 64], y_train [n], x_test, y_test)``.

    Inputs are standardised with the training set's mean and standard deviation (pixels that
    are constant in training keep a unit scale), the split is stratified and seeded.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(data.data, data.target, test_size=test_fraction,
                                              random_state=_seed_bits(seed, 32),
                                              stratify=data.target)
    x_tr = torch.as_tensor(x_tr, dtype=torch.float32)
    x_te = torch.as_tensor(x_te, dtype=torch.float32)
    mean, std = x_tr.mean(0), x_tr.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return ((x_tr - mean) / std, torch.as_tensor(y_tr, dtype=torch.long),
            (x_te - mean) / std, torch.as_tensor(y_te, dtype=torch.long))


def make_mlp(sizes: tuple[int, ...] = (64, 64, 32, 10), seed: int = 0) -> nn.Sequential:
    """A ReLU MLP with layer sizes ``sizes``, initialised from ``seed``."""
    layers: list[nn.Module] = []
    # nn.Linear initialises from the global RNG: fork it so the caller's state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed_bits(seed, 64))
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def train_mlp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 40,
              batch_size: int = 64, lr: float = 3e-3, seed: int = 0) -> nn.Module:
    """Train ``model`` in place with Adam and cross-entropy; returns it (in eval mode)."""
    gen = make_generator(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    # Batches of 64 x 64 are far too small for intra-op threads: one thread beats two on a
    # busy CPU. Restored afterwards, as it is process-wide.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(epochs):
            order = torch.randperm(x.shape[0], generator=gen)
            for start in range(0, x.shape[0], batch_size):
                batch = order[start:start + batch_size]
                opt.zero_grad()
                loss_fn(model(x[batch]), y[batch]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` classified correctly, in [0, 1]."""
    return float((model(x).argmax(-1) == y).float().mean())


def accuracy_over_time(model: nn.Module, strategy, noise_model, x: torch.Tensor,
                       y: torch.Tensor, t_steps: list[float], *, repeats: int = 10,
                       seed: int = 0, progress: Callable | None = None,
                       physics: str = "device", compensation=None) -> torch.Tensor:
    """Test accuracy of ``model`` programmed with ``strategy`` at each time, [repeats, T].

    Each repeat is an independent programming of the whole network with its own generator
    (the stream ``"accuracy"`` of ``seed``, keyed by the repeat: :data:`gpuwpo.rng.STREAMS`),
    used in turn for every time step (the network is programmed afresh for each time, as in
    the objective).

    Args:
        strategy: a NetworkResult, a mapping layer name -> converter, or one converter for every
            Linear weight (e.g. the baseline).
        progress: called once after each (repeat, time) evaluation (a progress bar's update).
        physics: "device" or "aihwkit" (see :mod:`gpuwpo.device.physics`).
        compensation: drift compensation (default ideal global).
    """
    from .network import program_model

    acc = torch.empty(repeats, len(t_steps), dtype=torch.float64)
    for r in range(repeats):
        gen = stream_generator(seed, "accuracy", r)
        for i, t in enumerate(t_steps):
            programmed = program_model(model, strategy, noise_model, t, generator=gen,
                                       compensation=compensation, physics=physics)
            acc[r, i] = accuracy(programmed, x, y)
            if progress is not None:
                progress()
    return acc


def format_table(report: dict) -> str:
    """The accuracy table of :func:`run_example`'s report, as text."""
    names = list(report["times"])
    lines = [f"Test accuracy (%) of the digits MLP, mean +- std over {report['repeats']} "
             f"programmings (digital: {100 * report['digital_accuracy']:.2f}%)",
             f"{'strategy':<11}" + "".join(f"{n:>15}" for n in names)]
    for key in ("baseline", "optimised"):
        cells = "".join(f"{100 * m:>8.2f} +- {100 * s:<4.2f}"
                        for m, s in zip(report[key]["mean"], report[key]["std"]))
        lines.append(f"{key:<11}{cells}")
    return "\n".join(lines)


def run_example(*, quick: bool = False, out_dir: str | os.PathLike | None = None, seed: int = 0,
                repeats: int | None = None, backend: str = "torch",
                device: str | None = None, verbose: bool = True,
                progress: bool | None = None, physics: str = "device", noise_model=None,
                baseline=None, compensation=None) -> dict:
    """Train, optimise, program and measure; print the accuracy table; return the numbers.

    Args:
        quick: a tiny search budget and 3 repeats (seconds; for tests and smoke runs).
        out_dir: if given, write ``digits_result.json`` (the strategies), ``digits_mlp.pt``
            (the trained state_dict) and the figures (accuracy over time, programming curves,
            convergence, weight errors) there.
        seed: seed of the data split, the network, the search and the noise.
        repeats: independent programmings per strategy and time (default 10, quick 3).
        backend: search backend ("torch", "evotorch", "scipy").
        device: where the search runs (None: CUDA when available).
        verbose: print the summary, the table and what was written.
        progress: show progress bars (default: as ``verbose``).
        physics: "device" or "aihwkit" (see :mod:`gpuwpo.device.physics`): searched and measured in
        it.
        noise_model, baseline, compensation: the device model (default PCM, g_max 25 uS), the
            converter to beat (default DualPair f=[1, 1], 0..25 uS) and the drift compensation
            (default ideal global).

    Returns:
        ``{"times": {name: seconds}, "repeats", "digital_accuracy", "baseline": {"mean": [T],
        "std": [T], "accuracies": [repeats][T]}, "optimised": {...}, "tnmse": {...},
        "seconds": {"train", "optimise", "evaluate", "total"}, "result": NetworkResult}``;
        accuracies are fractions in [0, 1].
    """
    from .device.converters import DualPairConductanceConverter
    from .device.noise import PCMLikeNoiseModel
    from .network import optimize_network

    start = time.perf_counter()
    repeats = (3 if quick else 10) if repeats is None else int(repeats)
    say = print if verbose else (lambda *a, **k: None)
    progress = verbose if progress is None else progress
    t_steps = list(TIMES.values())

    x_tr, y_tr, x_te, y_te = load_digits_data(seed)
    model = train_mlp(make_mlp(seed=seed), x_tr, y_tr, seed=seed)
    digital = accuracy(model, x_te, y_te)
    t_train = time.perf_counter() - start
    say(f"trained MLP 64-64-32-10 on digits ({x_tr.shape[0]} train / {x_te.shape[0]} test) in "
        f"{t_train:.1f}s: digital test accuracy {100 * digital:.2f}%")

    if noise_model is None:
        noise_model = PCMLikeNoiseModel(g_max=25.0)
    if baseline is None:
        baseline = DualPairConductanceConverter(f_lst=[1.0, 1.0], g_min=0.0, g_max=25.0)
    budget = BUDGETS["quick" if quick else "default"]
    t0 = time.perf_counter()
    result = optimize_network(model, noise_model, t_steps, baseline, [None, None],
                              backend=backend, device=device, seed=seed, disp=progress,
                              physics=physics, compensation=compensation, **budget)
    t_opt = time.perf_counter() - t0
    say(result.summary())

    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=2 * repeats * len(t_steps), desc="accuracy", unit="net", leave=False)
    acc = {}
    for name, strategy in (("baseline", baseline), ("optimised", result)):
        # The same noise streams for both strategies: their difference is not one of luck.
        acc[name] = accuracy_over_time(model, strategy, noise_model, x_te, y_te, t_steps,
                                       repeats=repeats, seed=seed,
                                       progress=None if bar is None else bar.update,
                                       physics=physics, compensation=compensation)
    if bar is not None:
        bar.close()
    t_eval = time.perf_counter() - t0

    report = {
        "times": dict(TIMES),
        "repeats": repeats,
        "digital_accuracy": digital,
        **{name: {"mean": a.mean(0).tolist(),
                  "std": (a.std(0) if repeats > 1 else torch.zeros(len(t_steps))).tolist(),
                  "accuracies": a.tolist()} for name, a in acc.items()},
        "tnmse": {"optimised": result.total_tnmse, "baseline": result.total_baseline_tnmse},
        "seconds": {"train": t_train, "optimise": t_opt, "evaluate": t_eval,
                    "total": time.perf_counter() - start},
        "result": result,
    }
    say(format_table(report))
    say(f"time: train {t_train:.1f}s, optimise {t_opt:.1f}s, accuracy {t_eval:.1f}s, total "
        f"{report['seconds']['total']:.1f}s")

    if out_dir is not None:
        _write_outputs(report, model, out_dir, seed, say)
    return report


def _write_outputs(report: dict, model: nn.Module, out_dir, seed: int, say: Callable) -> None:
    """The example's files: the strategies, the trained weights and the figures."""
    import io

    from . import plots
    from ._files import atomic_write
    from .io import save_result
    from .network import select_weights

    os.makedirs(out_dir, exist_ok=True)
    result = report["result"]
    paths = {name: os.path.join(out_dir, name) for name in (
        "digits_result.json", "digits_mlp.pt", "accuracy_over_time.png",
        "programming_curves.png", "convergence.png", "weight_errors.png")}
    save_result(result, paths["digits_result.json"])
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write(paths["digits_mlp.pt"], buffer.getvalue())  # never half a file
    plots.accuracy_over_time(
        list(report["times"].values()),
        {k: report[k]["accuracies"] for k in ("baseline", "optimised")},
        reference=report["digital_accuracy"], path=paths["accuracy_over_time.png"],
        title="Digits MLP on simulated PCM: DualPair [1, 1] baseline vs optimised programming")
    plots.programming_curves(result, path=paths["programming_curves.png"])
    plots.convergence(result, path=paths["convergence.png"])
    plots.weight_error_histograms(result, select_weights(model), list(report["times"].values()),
                                  physics=result.settings.get("physics", "device"),
                                  repeats=3, seed=seed, path=paths["weight_errors.png"])
    plots._pyplot().close("all")
    for path in paths.values():
        say(f"wrote {path}")
