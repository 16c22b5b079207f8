"""Small real networks, trained in-process from data that ships inside scikit-learn.

The benchmarks that measure test accuracy (bench/accuracy.py) need trained networks, not
synthetic weights, and this machine has no network access: every model here is trained from
scikit-learn's bundled digits (1,797 8 x 8 images of handwritten digits, 10 classes,
:func:`sklearn.datasets.load_digits`), in a few seconds on one CPU thread, with every random
choice seeded (the split, the initialisation, the batch order). The same seed gives the same
weights, bit for bit, on the same machine and torch build.

Data: :func:`gpuwpo.example.load_digits_data` -- a stratified 75/25 split (1,347 training and 450
test images), pixels standardised with the training set's per-pixel mean and standard deviation.
Training: :func:`gpuwpo.example.train_mlp` (Adam, learning rate 3e-3, batches of 64,
cross-entropy, one thread), which trains any module despite its name.

* ``digits_mlp``: the repository's example network (64-64-32-10 ReLU MLP, 40 epochs), built by
  :mod:`gpuwpo.example` itself. Digital test accuracy 97.56 % (seed 0). It loses only about half a
  point after a year of PCM drift under the DualPair f=[1, 1] baseline, too little to show a
  better programming strategy in its accuracy.
* ``digits_cnn``: a small convolutional network with a global-average-pool head (three 3 x 3
  convolutions with 8, 16, 16 channels, one 2 x 2 max-pool, global average pooling, a 16 -> 10
  Linear classifier; no normalisation layers; 100 epochs; 3,688 programmed weights). Digital test
  accuracy 96.89 % (seed 0); after a year under the baseline about 6-7 points lower in both
  physics (docs/RESULTS.md, "Accuracy over time"). Averaging a feature over every position turns a
  weight's error into a systematic shift of that feature instead of averaging it out, and the
  classifier's 160 weights each move a logit directly.

Each builder returns a :class:`TrainedModel`; :data:`MODELS` maps names to builders and
:func:`trained_models` builds several by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gpuwpo import example

__all__ = ["TrainedModel", "digits_mlp", "digits_cnn", "MODELS", "trained_models"]


@dataclass(eq=False)
class TrainedModel:
    """A trained network and its held-out test set.

    Attributes:
        name: the registry name (a key of :data:`MODELS`).
        model: the network, in eval mode; float32; on the CPU.
        x_test: test inputs in the layout ``model`` takes: ``[n, 64]`` standardised pixels for
            the MLP, ``[n, 1, 8, 8]`` (the same values as images) for the CNN; n = 450 for the
            digits split.
        y_test: test labels ``[n]``, int64 class indices 0..9.
        description: architecture and training, in words.
    """

    name: str
    model: nn.Module
    x_test: torch.Tensor
    y_test: torch.Tensor
    description: str = ""

    def accuracy(self, model: nn.Module | None = None) -> float:
        """Test accuracy in percent (0..100) of ``model`` (default: the trained network).

        ``model`` is any network that takes ``x_test``, e.g. a copy programmed by
        :func:`gpuwpo.program_model`. It is evaluated as it is (put it in eval mode first if it
        has dropout or batch-norm layers; the networks here have none).
        """
        net = self.model if model is None else model
        with torch.no_grad():
            correct = int((net(self.x_test).argmax(-1) == self.y_test).sum())
        # From the count, not a float32 mean: 439 of 450 is 97.5555... exactly as a float64.
        return 100.0 * correct / self.y_test.numel()

    @property
    def num_weights(self) -> int:
        """Number of programmed weights (Linear and Conv weights; biases stay digital)."""
        from gpuwpo.network import select_weights

        return sum(w.numel() for w in select_weights(self.model).values())


def digits_mlp(seed: int = 0) -> TrainedModel:
    """The digits example's 64-64-32-10 ReLU MLP, trained exactly as ``gpuwpo example`` trains it.

    Args:
        seed: seed of the data split, the initialisation and the batch order.

    Returns:
        A :class:`TrainedModel`: input ``[n, 64]`` standardised pixels, output ``[n, 10]``
        logits. Weights [64, 64], [32, 64], [10, 32] (6,464 in all). Trains in about 1-2 s.
    """
    x_tr, y_tr, x_te, y_te = example.load_digits_data(seed)
    model = example.train_mlp(example.make_mlp(seed=seed), x_tr, y_tr, seed=seed)
    return TrainedModel("digits_mlp", model, x_te, y_te,
                        "MLP 64-64-32-10, ReLU, Adam 40 epochs (gpuwpo.example)")


def make_cnn(channels: Sequence[int] = (8, 16, 16), n_classes: int = 10,
             seed: int = 0) -> nn.Sequential:
    """The digits CNN, untrained, initialised from ``seed`` (torch's default initialisation).

    Layout for ``channels = (c1, c2, c3)``: Conv2d(1, c1, 3, padding 1), ReLU, Conv2d(c1, c2, 3,
    padding 1), ReLU, MaxPool2d(2), Conv2d(c2, c3, 3, padding 1), ReLU, global average pool,
    Linear(c3, n_classes). Input ``[n, 1, 8, 8]``, output ``[n, n_classes]`` logits.
    """
    if len(channels) != 3 or any(int(c) < 1 for c in channels):
        raise ValueError(f"channels must be three positive counts, got {tuple(channels)}")
    c1, c2, c3 = (int(c) for c in channels)
    # Modules initialise from the global RNG: fork it so that the caller's state is untouched
    # and the initialisation depends on `seed` alone (as gpuwpo.example.make_mlp does).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(c3, n_classes),
        )


def digits_cnn(seed: int = 0, *, channels: Sequence[int] = (8, 16, 16),
               epochs: int = 100) -> TrainedModel:
    """A small CNN on the 8 x 8 digits, with a global-average-pool head and a Linear classifier.

    See :func:`make_cnn` for the layout. Trained with :func:`gpuwpo.example.train_mlp` (Adam,
    learning rate 3e-3, batches of 64) for ``epochs`` epochs on the same split and inputs as the
    MLP, the standardised pixels reshaped to images. With the defaults: weights [8, 1, 3, 3],
    [16, 8, 3, 3], [16, 16, 3, 3], [10, 16] (3,688 in all); digital test accuracy 96.89 % at
    seed 0 (95.8-96.9 % over seeds 0-4); trains in 3-5 s on one CPU thread.

    Args:
        seed: seed of the data split, the initialisation and the batch order.
        channels: output channels of the three convolutions.
        epochs: training epochs.

    Returns:
        A :class:`TrainedModel`: input ``[n, 1, 8, 8]``, output ``[n, 10]`` logits.
    """
    x_tr, y_tr, x_te, y_te = example.load_digits_data(seed)
    model = make_cnn(channels, seed=seed)
    example.train_mlp(model, x_tr.reshape(-1, 1, 8, 8), y_tr, epochs=epochs, seed=seed)
    c1, c2, c3 = (int(c) for c in channels)
    return TrainedModel(
        "digits_cnn", model, x_te.reshape(-1, 1, 8, 8), y_te,
        f"CNN conv3x3 1->{c1}, ReLU, conv3x3 {c1}->{c2}, ReLU, maxpool 2, conv3x3 {c2}->{c3}, "
        f"ReLU, global average pool, Linear {c3}->10; Adam {epochs} epochs",
    )


#: Registry: name -> builder ``f(seed=0) -> TrainedModel``.
MODELS: dict[str, Callable[..., TrainedModel]] = {
    "digits_mlp": digits_mlp,
    "digits_cnn": digits_cnn,
}


def trained_models(names: str | Iterable[str] | None = None, seed: int = 0
                   ) -> dict[str, TrainedModel]:
    """Train the named models (default: all of :data:`MODELS`), in the order given.

    Args:
        names: a name or names from :data:`MODELS`.
        seed: passed to every builder.

    Returns:
        name -> :class:`TrainedModel`.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if names is None:
        names = list(MODELS)
    elif isinstance(names, str):
        names = [names]
    else:
        names = list(names)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {sorted(MODELS)}")
    return {name: MODELS[name](seed=seed) for name in names}
