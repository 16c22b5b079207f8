"""The test tiles of a batch of layers: what the objective measures a strategy on.

A layer (any size, up to hundreds of millions of weights) is represented by N test weights with
its distribution (:func:`gpuwpo.downsample_weight_distribution`: sorted, interpolated, shuffled)
laid out as one tile ``[out, in]`` (default 20 x 512, N = 10,240). :class:`TestTile` holds them
for B layers, with each tile's max|W| and the position of every test weight on the program grid
(shared by every candidate program), and the ids that key each layer's noise streams. It is a
value: :meth:`TestTile.select` makes the tiles of some layers, nothing is shared by mutation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..checks import check_clip, check_weights
from ..device.converters import grid_interpolation
from ..device.sampling import downsample_weight_distribution
from ..rng import stream_generator

__all__ = ["TestTile", "DEFAULT_TILE", "MAX_TEST_WEIGHTS"]

#: The default test tile (out_features, in_features): 20 x 512 = 10,240 test weights.
DEFAULT_TILE = (20, 512)
#: The most test weights a tile may have (2**24, 1638 times the default): a test tile samples
#: a layer's distribution, and the search holds a population's worth of them; anything larger
#: is refused before it is allocated.
MAX_TEST_WEIGHTS = 2**24


@dataclass(frozen=True, eq=False)
class TestTile:
    """The test tiles of B layers (one tile per layer), as the objective uses them.

    Attributes:
        weights: ``[B, N]`` test weights W (unitless), row-major tiles ``[out, in]``.
        max_abs_weight: ``[B]`` M = max|W| of each tile.
        idx, frac: ``[B, N]`` grid position of every test weight on ``linspace(-M, M, L)``.
        grid_size: L.
        layer_ids: ``(B,)`` keys of the layers' noise streams.
        shape: ``(out, in)`` of one tile.
        clip: the programs' grid spans ``clip * M`` (1: the reference's grid); ``idx`` and
            ``frac`` are the positions on that grid (clamped at its ends), while the error
            stays measured against ``weights`` and normalised by M.
    """

    __test__ = False  # not a pytest test class, whatever its name

    weights: Tensor
    max_abs_weight: Tensor
    idx: Tensor
    frac: Tensor
    grid_size: int
    layer_ids: tuple[int, ...]
    shape: tuple[int, int]
    clip: float = 1.0

    @property
    def grid_max(self) -> Tensor:
        """``[B]`` the half-width of each layer's program grid, ``clip * M``."""
        return self.max_abs_weight * self.clip

    @classmethod
    def from_layers(cls, layers: Tensor | Sequence[Tensor] | Mapping[str, Tensor],
                    grid_size: int, *, shape: Sequence[int] | None = DEFAULT_TILE,
                    seed: int = 0, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32, clip: float = 1.0) -> TestTile:
        """Test tiles from layers' weights, each checked once here.

        Args:
            layers: ``[N]`` (one layer), ``[B, N]`` (B layers), a sequence of B tensors of any
                shapes, or a mapping name -> tensor (the names appear in error messages).
            grid_size: L, the number of grid points of the programs.
            shape: the tile ``(out, in)`` every layer is resampled to; ``None`` keeps the given
                weights as they are, in their order (layers of one shape: vectors are one row of a
                tile [1, N], matrices [out, in] are their own tile).
            seed: the run's seed; layer b's shuffle is its stream ``"test_tiles"``, keyed by b
                (:data:`gpuwpo.rng.STREAMS`), so a layer's tile does not depend on the layers
                before it.
            device, dtype: of the tiles (device default: the first layer's).
            clip: the grid's half-width as a fraction of M, in (0, 1] (see the class).

        Raises:
            ValueError / TypeError: a layer that is not real, finite, non-empty weights with a
                non-zero value (naming the layer), or a bad shape.
        """
        names, layers = _as_layer_list(layers)
        layers = [check_weights(w, f"layer {name}", allow_all_zero=False)
                  for name, w in zip(names, layers)]
        device = torch.device(layers[0].device if device is None else device)
        if shape is None:
            shapes = {tuple(w.shape) for w in layers}
            if len(shapes) != 1:
                raise ValueError("layers of different shapes need a test size "
                                 "(test_in_features, test_out_features)")
            tests = [w.reshape(-1).to(device=device, dtype=dtype) for w in layers]
            first = layers[0].shape
            tile = tuple(first) if len(first) == 2 else (1, tests[0].numel())
        else:
            tile = tuple(int(s) for s in shape)
            if len(tile) != 2 or min(tile) < 1:
                raise ValueError(f"the test tile must be (out_features, in_features) >= 1, got "
                                 f"{tuple(shape)}")
            if math.prod(tile) > MAX_TEST_WEIGHTS:
                raise ValueError(f"the test tile {tile[0]} x {tile[1]} has {math.prod(tile)} "
                                 f"weights, more than the {MAX_TEST_WEIGHTS} gpuwpo allows "
                                 f"(default {DEFAULT_TILE[0]} x {DEFAULT_TILE[1]})")
            tests = [downsample_weight_distribution(
                w.detach().to("cpu", torch.float32).reshape(-1), (math.prod(tile),),
                generator=stream_generator(int(seed), "test_tiles", b, device="cpu"),
            ).to(device=device, dtype=dtype) for b, w in enumerate(layers)]
        weights = torch.stack(tests)
        m = weights.abs().amax(-1)
        clip = check_clip(clip)
        idx, frac = grid_interpolation(weights, m * clip, int(grid_size))
        return cls(weights, m, idx, frac, int(grid_size), tuple(range(len(tests))), tile, clip)

    @property
    def num_layers(self) -> int:
        """B."""
        return int(self.weights.shape[0])

    @property
    def numel(self) -> int:
        """N, the test weights per layer."""
        return int(self.weights.shape[1])

    def tile(self, layer: int) -> Tensor:
        """Layer ``layer``'s test weights as a tile ``[out, in]``."""
        return self.weights[layer].reshape(self.shape)

    def select(self, layers: Sequence[int]) -> TestTile:
        """The tiles of the layers at positions ``layers`` (keeping their noise keys)."""
        layers = [int(b) for b in layers]
        if not layers or any(not 0 <= b < self.num_layers for b in layers):
            raise ValueError(f"layers must be indices in [0, {self.num_layers}), got {layers}")
        index = torch.as_tensor(layers, device=self.weights.device)
        pick = lambda t: t.index_select(0, index)  # noqa: E731
        return TestTile(pick(self.weights), pick(self.max_abs_weight), pick(self.idx),
                        pick(self.frac), self.grid_size,
                        tuple(self.layer_ids[b] for b in layers), self.shape, self.clip)


def _as_layer_list(layers) -> tuple[list[str], list]:
    """(names for messages, tensors) of the accepted layouts."""
    if isinstance(layers, Tensor):
        if layers.ndim == 1:
            return ["0"], [layers]
        if layers.ndim == 2:
            return [str(i) for i in range(layers.shape[0])], list(layers.unbind(0))
        raise ValueError("test_weights must be [N], [B, N] or a sequence of per-layer tensors; "
                         f"got shape {tuple(layers.shape)}")
    if isinstance(layers, Mapping) and len(layers) > 0:
        return [repr(str(k)) for k in layers], [_tensor(v) for v in layers.values()]
    if isinstance(layers, Sequence) and not isinstance(layers, (str, bytes)) and len(layers) > 0:
        return [str(i) for i in range(len(layers))], [_tensor(v) for v in layers]
    raise ValueError("test_weights must be [N], [B, N], a mapping name -> tensor or a non-empty "
                     "sequence of tensors")


def _tensor(value):
    # numpy arrays are taken as they are (check_weights refuses everything else not a tensor).
    return torch.from_numpy(value) if isinstance(value, np.ndarray) else value
