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

* ``digits_mlp``: the repository's earlier example network (64-64-32-10 ReLU MLP, 40 epochs),
  built by :mod:`gpuwpo.example`. Digital test accuracy 97.56 % (seed 0). It loses only about
  half a point after a year of PCM drift under the DualPair f=[1, 1] baseline, too little to
  show a better programming strategy in its accuracy.
* ``digits_cnn``: the example's network (``gpuwpo example``; :func:`gpuwpo.example.make_cnn`):
  three 3 x 3 convolutions with 8, 16, 16 channels, one 2 x 2 max-pool, global average pooling,
  a 16 -> 10 Linear classifier; no normalisation layers; 100 epochs; 3,688 programmed weights.
  Digital test accuracy 96.89 % (seed 0); after a year under the baseline about 6 points lower
  in both physics (docs/RESULTS.md, "Accuracy over time"). Averaging a feature over every
  position turns a weight's error into a systematic shift of that feature instead of averaging
  it out, and the classifier's 160 weights each move a logit directly.
* ``digits_lstm``: each image read row by row (8 steps of 8 pixels) by a two-layer
  bidirectional LSTM with 8 units per direction, then a 16 -> 10 Linear classifier on the final
  states (:class:`DigitsLSTM`; 100 epochs). Its 8 LSTM matrices (``rnn.weight_ih_l0``,
  ``rnn.weight_hh_l0_reverse``, ...) are programmed like any layer, 2,720 weights in 9 layers.
  Digital test accuracy 95.33 % (seed 0); 3.6 points lower after a year under the baseline.

Each builder returns a :class:`TrainedModel`; :data:`MODELS` maps names to builders and
:func:`trained_models` builds several by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gpuwpo import example
from gpuwpo.example import make_cnn

__all__ = ["TrainedModel", "digits_mlp", "digits_cnn", "digits_lstm", "make_cnn", "make_lstm",
           "DigitsLSTM", "LSTM_EPOCHS", "MODELS", "trained_models"]

#: Training epochs of the digits LSTM (Adam, learning rate 3e-3, batches of 64).
LSTM_EPOCHS = 100


@dataclass(eq=False)
class TrainedModel:
    """A trained network and its held-out test set.

    Attributes:
        name: the registry name (a key of :data:`MODELS`).
        model: the network, in eval mode; float32; on the CPU.
        x_test: test inputs in the layout ``model`` takes: ``[n, 64]`` standardised pixels for
            the MLP, ``[n, 1, 8, 8]`` (the same values as images) for the CNN, ``[n, 8, 8]``
            (8 rows of 8 pixels) for the LSTM; n = 450 for the digits split.
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
        """Number of programmed weights: those :func:`gpuwpo.select_weights` finds (Linear,
        Conv and LSTM matrices; biases stay digital)."""
        from gpuwpo.network import select_weights

        return sum(w.numel() for w in select_weights(self.model).values())


def digits_mlp(seed: int = 0) -> TrainedModel:
    """The 64-64-32-10 ReLU MLP of :func:`gpuwpo.example.make_mlp`, trained 40 epochs.

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


def digits_cnn(seed: int = 0, *, channels: Sequence[int] = (8, 16, 16),
               epochs: int = example.CNN_EPOCHS) -> TrainedModel:
    """The digits example's CNN, with a global-average-pool head and a Linear classifier.

    Built and trained by :func:`gpuwpo.example.train_cnn` (``gpuwpo example`` trains the same
    network; layout in :func:`gpuwpo.example.make_cnn`): Adam, learning rate 3e-3, batches of 64,
    ``epochs`` epochs on the same split and inputs as the MLP, the standardised pixels reshaped
    to images. With the defaults: weights [8, 1, 3, 3],
    [16, 8, 3, 3], [16, 16, 3, 3], [10, 16] (3,688 in all); digital test accuracy 96.89 % at
    seed 0 (95.8-96.9 % over seeds 0-4); trains in 3-5 s on one CPU thread.

    Args:
        seed: seed of the data split, the initialisation and the batch order.
        channels: output channels of the three convolutions.
        epochs: training epochs.

    Returns:
        A :class:`TrainedModel`: input ``[n, 1, 8, 8]``, output ``[n, 10]`` logits.
    """
    model, x_te, y_te = example.train_cnn(seed, channels=tuple(channels), epochs=epochs)
    c1, c2, c3 = (int(c) for c in channels)
    return TrainedModel(
        "digits_cnn", model, x_te, y_te,
        f"CNN conv3x3 1->{c1}, ReLU, conv3x3 {c1}->{c2}, ReLU, maxpool 2, conv3x3 {c2}->{c3}, "
        f"ReLU, global average pool, Linear {c3}->10; Adam {epochs} epochs",
    )


class DigitsLSTM(nn.Module):
    """An 8 x 8 digit read row by row: 8 time steps of 8 pixels through a bidirectional LSTM.

    ``num_layers`` stacked bidirectional LSTM layers of ``hidden`` units per direction
    (``nn.LSTM(8, hidden, num_layers, batch_first=True, bidirectional=True)``), then a Linear
    classifier on the top layer's final states: the forward direction's after the last row and
    the backward direction's after the first, concatenated (``2 * hidden`` features).

    Its weight matrices, each a crossbar of its own (the names ``load_state_dict`` takes):
    ``rnn.weight_ih_l<k>`` ``[4 hidden, in]`` and ``rnn.weight_hh_l<k>`` ``[4 hidden, hidden]``
    for every layer k (in = 8 for k = 0, else 2 hidden), each also ``_reverse``, and
    ``fc.weight`` ``[10, 2 hidden]``; the LSTM's biases stay digital.
    """

    def __init__(self, hidden: int = 8, num_layers: int = 2, n_classes: int = 10) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, hidden, num_layers=num_layers, batch_first=True,
                           bidirectional=True)
        self.fc = nn.Linear(2 * hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[n, n_classes]`` of images ``x`` ``[n, 8, 8]`` (rows, pixels)."""
        _, (h_n, _) = self.rnn(x)  # h_n: [num_layers * 2, n, hidden], the top layer last
        return self.fc(torch.cat([h_n[-2], h_n[-1]], dim=-1))


def make_lstm(hidden: int = 8, num_layers: int = 2, seed: int = 0) -> DigitsLSTM:
    """The digits LSTM, untrained, initialised from ``seed`` (torch's default initialisation).

    Raises:
        ValueError: ``hidden`` or ``num_layers`` below 1.
    """
    if int(hidden) < 1 or int(num_layers) < 1:
        raise ValueError(f"hidden and num_layers must be positive, got hidden={hidden}, "
                         f"num_layers={num_layers}")
    # As make_cnn: a fork of the global RNG, so the caller's state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DigitsLSTM(int(hidden), int(num_layers))


def digits_lstm(seed: int = 0, *, hidden: int = 8, num_layers: int = 2,
                epochs: int = LSTM_EPOCHS) -> TrainedModel:
    """A two-layer bidirectional LSTM reading the digits row by row (:class:`DigitsLSTM`).

    Trained with :func:`gpuwpo.example.train_mlp` (Adam, learning rate 3e-3, batches of 64,
    one thread) for ``epochs`` epochs on the MLP's split and standardised pixels, each image
    ``[8, 8]`` read as 8 steps of 8 pixels. With the defaults: 8 LSTM matrices ([32, 8] for the
    first layer's input and every recurrent matrix, [32, 16] for the second layer's input) and
    the classifier [10, 16], 2,720 programmed weights in 9 layers; digital test accuracy
    95.33 % at seed 0 (94.9-95.3 % over seeds 0-2); trains in 5-10 s on one CPU thread. After a
    year under the DualPair f=[1, 1] baseline it has lost 3.6 points (seed 0, 50 programmings;
    2.7-3.4 over seeds 0-2 with 10; docs/RESULTS.md, "Accuracy over time"): a recurrent
    matrix's error is applied at every one of the 8 steps.

    Args:
        seed: seed of the data split, the initialisation and the batch order.
        hidden: units per direction and layer.
        num_layers: stacked bidirectional layers.
        epochs: training epochs.

    Returns:
        A :class:`TrainedModel`: input ``[n, 8, 8]`` (rows of standardised pixels), output
        ``[n, 10]`` logits.
    """
    x_tr, y_tr, x_te, y_te = example.load_digits_data(seed)
    model = make_lstm(hidden, num_layers, seed=seed)
    example.train_mlp(model, x_tr.reshape(-1, 8, 8), y_tr, epochs=epochs, seed=seed)
    return TrainedModel(
        "digits_lstm", model, x_te.reshape(-1, 8, 8), y_te,
        f"bidirectional LSTM, {num_layers} layers of {hidden} units per direction, over the 8 "
        f"rows of 8 pixels; Linear {2 * hidden}->10 on the final states; Adam {epochs} epochs",
    )


#: Registry: name -> builder ``f(seed=0) -> TrainedModel``.
MODELS: dict[str, Callable[..., TrainedModel]] = {
    "digits_mlp": digits_mlp,
    "digits_cnn": digits_cnn,
    "digits_lstm": digits_lstm,
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
