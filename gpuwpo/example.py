"""The digits example: a small CNN programmed into simulated PCM hardware, end to end.

What gpuwpo is for, in well under a minute on a CPU: a network whose accuracy the analogue noise
visibly costs, and how much of it better programming strategies win back.

1. Train a small CNN (:func:`make_cnn`: three 3 x 3 convolutions with 8, 16 and 16 channels, one
   2 x 2 max-pool, global average pooling, a 16 -> 10 Linear classifier; 3,688 programmed
   weights) on scikit-learn's bundled digits (8 x 8 images, 10 classes; no download), inputs
   standardised, a fixed stratified 75/25 split, Adam, 100 epochs, a few seconds on a CPU. Its
   digital test accuracy is 96.9 % (seed 0); programmed with the standard DualPair converter
   (one scale per layer) it loses about 6 points after a year of PCM drift.
2. Find a programming strategy for each of its four weight matrices with
   :func:`gpuwpo.network.optimize_network` (two device pairs, free significance factors), against
   the baseline DualPair f=[1, 1], 0..25 uS, under the PCM noise model (g_max = 25 uS), each
   under the mapping of gpuwpo's defaults (``SearchOptions.mapping`` and ``baseline_mapping``:
   per column, each output row scaled to its own max|w|, as aihwkit's inference presets deploy;
   the summary and the figures say which).
3. Measure test accuracy at 1 s, 1 h, 1 day, 1 month and 1 year after programming with
   :func:`gpuwpo.evaluate_model`: the whole network programmed with the baseline (under the
   mapping the search compared with) and with each layer's recipe
   (:func:`gpuwpo.network.program_model`: programming noise, drift, read noise, ideal global
   drift compensation; biases stay digital), 50 independent programmings per
   strategy and time. Both strategies are programmed from the same noise, repeat by repeat, so
   their difference is paired: it is reported with its own standard error, smaller than either
   strategy's. Printed: mean +- standard error per time, the paired difference, and what a
   year of drift costs the baseline and how much of it the optimised strategies win back.

Run it with ``gpuwpo example`` (``--quick`` for a tiny budget) or ``python examples/digits.py``.
All randomness is seeded: the same seed gives the same network, search and noise, and torch's
global generator is left as it was (the network's initialisation draws from a fork of it).
The MLP of earlier versions (:func:`make_mlp`) is kept for the benchmarks: it loses only about
half a point in a year, too little for a better strategy to show in its accuracy.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch
from torch import nn

from .rng import make_generator

__all__ = ["TIMES", "BUDGETS", "CNN_EPOCHS", "DEFAULT_REPEATS", "OUTPUT_FILES",
           "load_digits_data", "make_mlp", "make_cnn", "train_mlp", "train_cnn", "accuracy",
           "run_example", "format_table"]

#: Inference times of the accuracy table, in seconds after programming.
TIMES = {"1 s": 1.0, "1 h": 3600.0, "1 day": 86400.0, "1 month": 2592000.0,
         "1 year": 31536000.0}

#: Search budgets. The CNN's layers hold 72, 1,152, 2,304 and 160 weights (the MLP's 4,096, 2,048
#: and 320), so a 64 x 20 test tile (1,280 weights) samples their distributions well and keeps a
#: generation cheap on a CPU.
BUDGETS = {
    # gpuwpo's search defaults (docs/RESULTS.md, "Defaults"), with a test tile sized to these
    # layers.
    "default": dict(test_in_features=64, test_out_features=20, baseline_iterations=30,
                    validation_repeats=30, polish_maxiter=15),
    "quick": dict(popsize=2, maxiter=2, test_in_features=16, test_out_features=8,
                  baseline_iterations=4, validation_repeats=4, polish=False),
}

#: Training epochs of the example's CNN (Adam, learning rate 3e-3, batches of 64).
CNN_EPOCHS = 100

#: Programmings per strategy and time. The CNN's accuracy after a year varies by about 4 points
#: from one programming to the next, the paired difference of the strategies by about 2: 50
#: programmings measure a gain of about one point to +- 0.3 (standard error), in a few seconds.
DEFAULT_REPEATS = 50

#: What :func:`run_example` writes into ``out_dir``: the strategies, the trained CNN's
#: state_dict and the figures.
OUTPUT_FILES = ("digits_result.json", "digits_cnn.pt", "accuracy_over_time.png",
                "programming_curves.png", "convergence.png", "weight_errors.png")


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


def make_cnn(channels: tuple[int, ...] = (8, 16, 16), n_classes: int = 10,
             seed: int = 0) -> nn.Sequential:
    """The digits CNN, untrained, initialised from ``seed`` (torch's default initialisation).

    Layout for ``channels = (c1, c2, c3)``: Conv2d(1, c1, 3, padding 1), ReLU, Conv2d(c1, c2, 3,
    padding 1), ReLU, MaxPool2d(2), Conv2d(c2, c3, 3, padding 1), ReLU, global average pool,
    Linear(c3, n_classes). Input ``[n, 1, 8, 8]``, output ``[n, n_classes]`` logits. With the
    default channels its weights are [8, 1, 3, 3], [16, 8, 3, 3], [16, 16, 3, 3] and [10, 16]
    (3,688 in all; mapped on the crossbar as 8 x 9, 16 x 72, 16 x 144 and 10 x 16).

    Why this network: global average pooling turns a weight's error into a systematic shift of
    a feature instead of averaging it out over positions, and each of the classifier's 160
    weights moves a logit directly, so the network feels the analogue noise (about 6 points
    after a year under the DualPair baseline), unlike the MLP (about half a point).

    Raises:
        ValueError: ``channels`` is not three positive counts.
    """
    if len(channels) != 3 or any(int(c) < 1 for c in channels):
        raise ValueError(f"channels must be three positive counts, got {tuple(channels)}")
    c1, c2, c3 = (int(c) for c in channels)
    # Modules initialise from the global RNG: fork it so that the caller's state is untouched
    # and the initialisation depends on `seed` alone (as make_mlp does).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed_bits(seed, 64))
        return nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(c3, n_classes),
        )


def train_mlp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 40,
              batch_size: int = 64, lr: float = 3e-3, seed: int = 0) -> nn.Module:
    """Train ``model`` (any classifier: the MLP, the CNN) in place with Adam and cross-entropy.

    Args:
        model: maps ``x[batch]`` to logits ``[batch, classes]``.
        x, y: training inputs ``[n, ...]`` and int64 labels ``[n]``.
        epochs, batch_size, lr: Adam's schedule (the batch order is drawn from ``seed``).

    Returns:
        ``model``, in eval mode.
    """
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


def train_cnn(seed: int = 0, *, channels: tuple[int, ...] = (8, 16, 16),
              epochs: int = CNN_EPOCHS) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The example's CNN trained on the digits split of ``seed``: ``(model, x_test, y_test)``.

    :func:`make_cnn` trained by :func:`train_mlp` on :func:`load_digits_data`'s standardised
    pixels reshaped to images; ``x_test`` is ``[450, 1, 8, 8]``, ``y_test`` ``[450]``. Digital
    test accuracy 96.89 % at seed 0 (95.8-98.2 % over seeds 0-4); 3-5 s on one CPU thread.
    """
    x_tr, y_tr, x_te, y_te = load_digits_data(seed)
    model = train_mlp(make_cnn(channels, seed=seed), x_tr.reshape(-1, 1, 8, 8), y_tr,
                      epochs=epochs, seed=seed)
    return model, x_te.reshape(-1, 1, 8, 8), y_te


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` classified correctly, in [0, 1]."""
    return float((model(x).argmax(-1) == y).float().mean())


def format_table(report: dict) -> str:
    """The accuracy table of :func:`run_example`'s report, as text (percent).

    One row per strategy, mean +- standard error over the programmings at each time, then the
    paired difference optimised - baseline +- its standard error, then one sentence: what a year
    costs the baseline and how much of it the optimised strategies win back.
    """
    names = list(report["times"])
    digital = report["digital_accuracy"]
    lines = [f"Test accuracy (%) of the {report['network']}, mean +- standard error over "
             f"{report['repeats']} programmings (digital: {digital:.2f}%)",
             f"{'strategy':<11}" + "".join(f"{n:>16}" for n in names)]
    for key in ("baseline", "optimised", "difference"):
        sign = "+" if key == "difference" else ""
        cells = "".join(f"{m:>{sign}9.2f} +- {se:<4.2f}"
                        for m, se in zip(report[key]["mean"], report[key]["sem"]))
        lines.append(f"{key:<11}{cells}")
    base, diff = report["baseline"], report["difference"]
    lines.append(
        f"After {names[-1]} the baseline has lost {digital - base['mean'][-1]:.2f} +- "
        f"{base['sem'][-1]:.2f} points of the digital accuracy; the optimised strategies win "
        f"back {diff['mean'][-1]:+.2f} +- {diff['sem'][-1]:.2f} points of it (paired: both "
        f"measured on the same programming noise, repeat by repeat).")
    return "\n".join(lines)


def run_example(*, quick: bool = False, out_dir: str | os.PathLike | None = None, seed: int = 0,
                repeats: int | None = None, backend: str = "torch",
                device: str | None = None, verbose: bool = True,
                progress: bool | None = None, physics: str = "device", noise_model=None,
                baseline=None, compensation=None, threads: int | None = 1) -> dict:
    """Train the CNN, optimise, program and measure; print the accuracy table; return it all.

    The accuracy over time is :func:`gpuwpo.evaluate_model`'s: repeat r at time t programs the
    network with the baseline and with the result from one noise stream (seeded by ``seed``),
    so the difference is paired.

    Args:
        quick: a tiny search budget and 3 repeats (seconds; for tests and smoke runs). The
            network is trained as in a full run.
        out_dir: if given, write :data:`OUTPUT_FILES` there: ``digits_result.json`` (the
            strategies), ``digits_cnn.pt`` (the trained state_dict) and the figures (accuracy
            over time with 95 % intervals, programming curves, convergence, weight errors).
        seed: seed of the data split, the network, the search and the noise.
        repeats: independent programmings per strategy and time (default
            :data:`DEFAULT_REPEATS`, quick 3; >= 2).
        backend: search backend ("torch", "evotorch", "scipy").
        device: where the search runs (None: CUDA when available).
        verbose: print the summary, the table and what was written.
        progress: show progress bars (default: as ``verbose``).
        physics: "device" or "aihwkit" (see :mod:`gpuwpo.device.physics`): searched and
            measured in it.
        noise_model, baseline, compensation: the device model (default PCM, g_max 25 uS), the
            converter to beat (default DualPair f=[1, 1], 0..25 uS) and the drift compensation
            (default ideal global).
        threads: torch's intra-op threads on the CPU while the example runs, restored
            afterwards; None keeps torch's setting. Default 1: the example's tensors are small,
            and on a busy machine a descheduled second thread stalls every operation (the
            search took 413 s with torch's 2 threads on this project's 2-core CPU while other
            jobs ran, 15 s with one).

    Returns:
        ``{"network", "times": {name: seconds}, "repeats", "digital_accuracy", "baseline",
        "optimised", "difference", "tnmse": {"optimised", "baseline"}, "seconds": {"train",
        "optimise", "evaluate", "total"}, "result": NetworkResult, "evaluation":
        ModelEvaluation}``. Accuracies are in percent; ``baseline``, ``optimised`` and
        ``difference`` (optimised - baseline, paired) are ``{"mean": [T], "sem": [T],
        "values": [repeats][T]}`` (:meth:`gpuwpo.network.ModelEvaluation.to_dict`).

    Raises:
        ValueError: ``repeats`` below 2 (a standard error needs a spread), ``threads`` below 1.
    """
    from .device.converters import DualPairConductanceConverter
    from .device.noise import PCMLikeNoiseModel
    from .network import evaluate_model, optimize_network

    start = time.perf_counter()
    repeats = (3 if quick else DEFAULT_REPEATS) if repeats is None else int(repeats)
    if repeats < 2:  # before the training and the search, not after them
        raise ValueError(f"repeats must be >= 2 (a standard error needs a spread), got "
                         f"{repeats}")
    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads must be at least 1 (or None for torch's setting), got "
                         f"{threads}")
    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        say = print if verbose else (lambda *a, **k: None)
        progress = verbose if progress is None else progress
        t_steps = list(TIMES.values())

        model, x_te, y_te = train_cnn(seed)
        t_train = time.perf_counter() - start
        say(f"trained a digits CNN (3 x 3 convolutions with 8, 16, 16 channels, global average "
            f"pool, Linear 16 -> 10) in {t_train:.1f}s: digital accuracy "
            f"{100 * accuracy(model, x_te, y_te):.2f}% on {x_te.shape[0]} test images")

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
        try:
            evaluation = evaluate_model(
                model, result, lambda net: 100 * accuracy(net, x_te, y_te), t_steps, repeats,
                physics=physics, baseline=baseline, compensation=compensation,
                noise_model=noise_model, generator=seed, metric_name="test accuracy (%)",
                progress=None if bar is None else bar.update)
        finally:
            if bar is not None:
                bar.close()
        t_eval = time.perf_counter() - t0

        figures = evaluation.to_dict()
        report = {
            "network": "digits CNN",
            "times": dict(TIMES),
            "repeats": repeats,
            "digital_accuracy": evaluation.digital,
            **{key: figures[key] for key in ("baseline", "optimised", "difference")},
            "tnmse": {"optimised": result.total_tnmse, "baseline": result.total_baseline_tnmse},
            "seconds": {"train": t_train, "optimise": t_opt, "evaluate": t_eval,
                        "total": time.perf_counter() - start},
            "result": result,
            "evaluation": evaluation,
        }
        say(format_table(report))
        say(f"time: train {t_train:.1f}s, optimise {t_opt:.1f}s, accuracy {t_eval:.1f}s, total "
            f"{report['seconds']['total']:.1f}s")

        if out_dir is not None:
            _write_outputs(report, model, out_dir, seed, say)
        return report
    finally:
        torch.set_num_threads(threads_before)  # process-wide: the caller's setting comes back


def _write_outputs(report: dict, model: nn.Module, out_dir, seed: int, say: Callable) -> None:
    """The example's files (:data:`OUTPUT_FILES`): the strategies, the trained weights and the
    figures."""
    import io

    from . import plots
    from ._files import atomic_write
    from .device.mapping import describe_recipe
    from .io import save_result
    from .network import select_weights

    os.makedirs(out_dir, exist_ok=True)
    result = report["result"]
    paths = {name: os.path.join(out_dir, name) for name in OUTPUT_FILES}
    save_result(result, paths["digits_result.json"])
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write(paths["digits_cnn.pt"], buffer.getvalue())  # never half a file
    report["evaluation"].plot(
        paths["accuracy_over_time.png"],
        title=f"Digits CNN on simulated PCM: baseline {describe_recipe(result.baseline)} vs "
              f"optimised programming, {report['repeats']} programmings")
    plots.programming_curves(result, path=paths["programming_curves.png"])
    plots.convergence(result, path=paths["convergence.png"])
    plots.weight_error_histograms(result, select_weights(model), list(report["times"].values()),
                                  physics=result.settings.get("physics", "device"),
                                  repeats=3, seed=seed, path=paths["weight_errors.png"])
    plots._pyplot().close("all")
    for path in paths.values():
        say(f"wrote {path}")
