"""The test tiles of a batch of layers: what the objective measures a strategy on.

A layer (any size, up to hundreds of millions of weights) is represented by N test weights laid
out as one tile ``[out, in]`` (default 20 x 512, N = 10,240), made in one of two ways:

* **by distribution** (the layer-wise mapping, the reference's way): the layer's weights as one
  distribution (:func:`gpuwpo.downsample_weight_distribution`: sorted, interpolated, shuffled);
* **by rows** (whenever a per-column mapping is searched or is the baseline's,
  docs/DESIGN.md section 5c): the tile's ``out`` rows are rows of the layer's matrix
  ``[out, in * k]`` (docs/DESIGN.md section 5d: a Conv weight's trailing axes unrolled, a vector
  one row), picked at evenly spaced ranks of their max|w| (the midpoints of ``out`` equal
  strata, the top one replaced by the row of the layer's max|W|, so that the tile's M is the
  layer's), each row's values resampled to the tile's width by the same sort, interpolate and
  shuffle (which keeps a row's extremes, so its scale). A row then carries its own scale into
  the tile, which is what the per-column mapping acts on.

:class:`TestTile` holds them for B layers, with each tile's M = max|W|, the *mapping* under
which the strategies see them (:mod:`gpuwpo.device.mapping`: the tile weights ``w / s`` and the
row scales ``s`` under ``"columnwise"``), the position of every tile weight on the program grid
(shared by every candidate of a fixed clip), and the ids that key each layer's noise streams.
It is a value: :meth:`TestTile.select` and :meth:`TestTile.to` make new tiles, nothing is shared
by mutation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..checks import check_clip, check_weights
from ..device.converters import grid_interpolation
from ..device.mapping import check_mapping, to_tile
from ..device.sampling import downsample_weight_distribution
from ..rng import stream_generator

__all__ = ["TestTile", "DEFAULT_TILE", "MAX_TEST_WEIGHTS", "sample_rows"]

#: The default test tile (out_features, in_features): 20 x 512 = 10,240 test weights.
DEFAULT_TILE = (20, 512)
#: The most test weights a tile may have (2**24, 1638 times the default): a test tile samples
#: a layer's distribution, and the search holds a population's worth of them; anything larger
#: is refused before it is allocated.
MAX_TEST_WEIGHTS = 2**24


def _matrix(w: Tensor) -> Tensor:
    """A layer as the crossbar's matrix ``[out, in * k]``: a vector is one row here (a search
    layer's tile, as with ``shape=None``), a Conv weight's trailing axes are unrolled
    (docs/DESIGN.md section 5d)."""
    return w.reshape(1, -1) if w.ndim == 1 else w.reshape(w.shape[0], -1)


def sample_rows(weights: Tensor, shape: Sequence[int],
                generator: torch.Generator | None = None) -> Tensor:
    """A test tile ``[out, in]`` of a layer's rows, each with its own scale (the module's
    "by rows").

    Args:
        weights: the layer's weights (any shape; as a matrix ``[R, C]``, :func:`_matrix`).
        shape: the tile ``(out, in)``.
        generator: the source of the rows' shuffles (the layer's stream ``"test_tiles"``).

    Returns:
        ``[out, in]`` in the weights' dtype: row ``i`` is the layer's row of rank
        ``floor((i + 1/2) R / out)`` by max|w| (ascending), the last the row of the largest
        max|w|, resampled to ``in`` values (sorted, interpolated, shuffled: the row's min and max
        kept; with ``in = 1`` its value of largest magnitude).
    """
    out_features, in_features = (int(n) for n in shape)
    mat = _matrix(weights)
    n_rows = mat.shape[0]
    # A stable sort: rows of equal max|w| keep their order, so the pick is deterministic.
    order = torch.argsort(mat.abs().amax(1), stable=True)
    ranks = [min(n_rows - 1, int((i + 0.5) * n_rows / out_features))
             for i in range(out_features)]
    ranks[-1] = n_rows - 1  # the layer's max|W| is in every tile: the tile's M is the layer's
    rows = []
    for r in ranks:
        row = mat[int(order[r])]
        if in_features == 1:
            rows.append(row[row.abs().argmax()].reshape(1))
        else:
            rows.append(downsample_weight_distribution(row, (in_features,), generator=generator))
    return torch.stack(rows)


@dataclass(frozen=True, eq=False)
class TestTile:
    """The test tiles of B layers (one tile per layer), as the objective uses them.

    Attributes:
        weights: ``[B, N]`` test weights W (the layer's units), row-major tiles ``[out, in]``.
        max_abs_weight: ``[B]`` M = max|W| of each tile (the error's normalisation).
        idx, frac: ``[B, N]`` grid position of every tile weight (:attr:`tile_weights`) on
            ``linspace(-g, g, L)``, g = :attr:`grid_max`.
        grid_size: L.
        layer_ids: ``(B,)`` keys of the layers' noise streams.
        shape: ``(out, in)`` of one tile.
        clip: the programs' grid spans ``clip`` times the tile weights' max|W| (1: the
            reference's grid); ``idx`` and ``frac`` are the positions on that grid (clamped at
            its ends), while the error stays measured against ``weights`` and normalised by M.
        mapping: how the strategies map the tile to the crossbar (:data:`gpuwpo.device.mapping.
            MAPPINGS`): ``"layer"``, the tile weights are ``weights``; ``"columnwise"``, each row
            divided by its own max|w| (:attr:`row_scales`).
        rows: whether the tiles were sampled by rows (see the module docstring; always for a
            per-column mapping).
        row_scales: ``[B, out, 1]`` each tile row's max|w| (1 for a row of zeros) under the
            per-column mapping, None under the layer-wise one.
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
    mapping: str = "layer"
    rows: bool = False
    row_scales: Tensor | None = None

    @functools.cached_property
    def tile_weights(self) -> Tensor:
        """``[B, N]`` what the converter programs: ``weights`` under the layer-wise mapping,
        each row divided by its scale under the per-column one (``to_tile``)."""
        if self.row_scales is None:
            return self.weights
        B = self.weights.shape[0]
        return to_tile(self.weights.reshape(B, *self.shape), self.mapping)[0].reshape(B, -1)

    @property
    def tile_max(self) -> Tensor:
        """``[B]`` max|tile weights|: M under the layer-wise mapping, 1 under the per-column one
        (every row's largest magnitude is 1; a tile of zero rows is refused)."""
        if self.row_scales is None:
            return self.max_abs_weight
        return self.tile_weights.abs().amax(-1)

    @property
    def grid_max(self) -> Tensor:
        """``[B]`` the half-width of each layer's program grid, ``clip`` x :attr:`tile_max`."""
        return self.tile_max * self.clip

    @classmethod
    def from_layers(cls, layers: Tensor | Sequence[Tensor] | Mapping[str, Tensor],
                    grid_size: int, *, shape: Sequence[int] | None = DEFAULT_TILE,
                    seed: int = 0, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32, clip: float = 1.0,
                    mapping: str = "layer", rows: bool | None = None) -> TestTile:
        """Test tiles from layers' weights, each checked once here.

        Args:
            layers: ``[N]`` (one layer), ``[B, N]`` (B layers), a sequence of B tensors of any
                shapes, or a mapping name -> tensor (the names appear in error messages).
            grid_size: L, the number of grid points of the programs.
            shape: the tile ``(out, in)`` every layer is resampled to; ``None`` keeps the given
                weights as they are, in their order (layers of one shape: vectors are one row of a
                tile [1, N], matrices [out, in] are their own tile, and by rows a tensor
                ``[out, ...]`` is its matrix ``[out, in * k]``).
            seed: the run's seed; layer b's shuffles are its stream ``"test_tiles"``, keyed by
                b (:data:`gpuwpo.rng.STREAMS`), so a layer's tile does not depend on the layers
                before it.
            device, dtype: of the tiles (device default: the first layer's).
            clip: the grid's half-width as a fraction of the tile weights' max|W|, in (0, 1].
            mapping: the strategies' mapping, ``"layer"`` (default) or ``"columnwise"``.
            rows: sample the tiles by rows (see the module docstring); None: when ``mapping`` is
                ``"columnwise"``. A caller whose baseline maps per column passes True with a
                layer-wise ``mapping``, so that both are measured on the same rows.

        Raises:
            ValueError / TypeError: a layer that is not real, finite, non-empty weights with a
                non-zero value (naming the layer), a bad shape, mapping or clip, or a per-column
                mapping on tiles that are not rows (``rows=False``).
        """
        mapping = check_mapping(mapping)
        rows = mapping == "columnwise" if rows is None else bool(rows)
        if mapping == "columnwise" and not rows:
            raise ValueError("the per-column mapping scales the rows of a tile: sample the test "
                             "tiles by rows (rows=True)")
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
            if rows and len(first) > 2:
                tile = tuple(_matrix(layers[0]).shape)
            else:
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
            if rows:
                tests = [sample_rows(w.detach().to("cpu", torch.float32), tile,
                                     stream_generator(int(seed), "test_tiles", b, device="cpu"))
                         .reshape(-1).to(device=device, dtype=dtype)
                         for b, w in enumerate(layers)]
            else:
                tests = [downsample_weight_distribution(
                    w.detach().to("cpu", torch.float32).reshape(-1), (math.prod(tile),),
                    generator=stream_generator(int(seed), "test_tiles", b, device="cpu"),
                ).to(device=device, dtype=dtype) for b, w in enumerate(layers)]
        return cls._placed(torch.stack(tests), int(grid_size), tuple(range(len(tests))), tile,
                           check_clip(clip), mapping, rows)

    @classmethod
    def _placed(cls, weights: Tensor, grid_size: int, layer_ids: tuple[int, ...],
                shape: tuple[int, int], clip: float, mapping: str, rows: bool) -> TestTile:
        """Tiles of ``weights`` ``[B, N]`` with M, the row scales and the grid positions
        computed where the weights are (as a run on that device computes them)."""
        m = weights.abs().amax(-1)
        if mapping == "layer":
            scales, tile_max, mapped = None, m, weights
        else:
            mapped, scales = to_tile(weights.reshape(weights.shape[0], *shape), mapping)
            mapped = mapped.reshape(weights.shape)
            tile_max = mapped.abs().amax(-1)
        idx, frac = grid_interpolation(mapped, tile_max * clip, grid_size)
        return cls(weights, m, idx, frac, grid_size, layer_ids, shape, clip, mapping, rows, scales)

    def to(self, device: torch.device | str) -> TestTile:
        """The tiles on ``device``, M, the row scales and the grid positions computed there from
        the test weights (as a run on that device computes them)."""
        return self._placed(self.weights.to(device), self.grid_size, self.layer_ids, self.shape,
                            self.clip, self.mapping, self.rows)

    def with_mapping(self, mapping: str, clip: float | None = None) -> TestTile:
        """The same test weights under another mapping (and clip; default this one's), their
        positions computed again. A per-column mapping needs tiles sampled by rows."""
        mapping = check_mapping(mapping)
        if mapping == "columnwise" and not self.rows:
            raise ValueError("these test tiles were sampled by distribution, not by rows: the "
                             "per-column mapping has no rows to scale")
        return self._placed(self.weights, self.grid_size, self.layer_ids, self.shape,
                            self.clip if clip is None else check_clip(clip), mapping, self.rows)

    @property
    def num_layers(self) -> int:
        """B."""
        return int(self.weights.shape[0])

    @property
    def numel(self) -> int:
        """N, the test weights per layer."""
        return int(self.weights.shape[1])

    def tile(self, layer: int) -> Tensor:
        """Layer ``layer``'s test weights as a tile ``[out, in]`` (the layer's units: the
        converter path maps them itself, ``gpuwpo.device.mapping.Recipe``)."""
        return self.weights[layer].reshape(self.shape)

    def select(self, layers: Sequence[int]) -> TestTile:
        """The tiles of the layers at positions ``layers`` (keeping their noise keys)."""
        layers = [int(b) for b in layers]
        if not layers or any(not 0 <= b < self.num_layers for b in layers):
            raise ValueError(f"layers must be indices in [0, {self.num_layers}), got {layers}")
        index = torch.as_tensor(layers, device=self.weights.device)
        pick = lambda t: None if t is None else t.index_select(0, index)  # noqa: E731
        return TestTile(pick(self.weights), pick(self.max_abs_weight), pick(self.idx),
                        pick(self.frac), self.grid_size,
                        tuple(self.layer_ids[b] for b in layers), self.shape, self.clip,
                        self.mapping, self.rows, pick(self.row_scales))


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
