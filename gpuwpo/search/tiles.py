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

**Drawn by importance** (opt-in, docs/DESIGN.md section 5c; ``importance=`` of
:meth:`TestTile.from_layers`). A layer's output error is ``e = (W_eff - W) x``; for errors
independent of each other and of the inputs its expected square is ``sum_ij dW_ij^2 E[x_j^2]``:
a weight's squared error counts with its input column's energy. Given those energies, a tile's
values are drawn with probability proportional to their column's energy
(:func:`importance_resample`: stratified, the weighted analogue of sort, interpolate and
shuffle), by distribution over the whole layer, or by rows within each sampled row (the rows
are picked as without importance: every output counts alike). The tile's plain mean error then
estimates the energy-weighted error ``sum_ij E_ij e_ij / sum_ij E_ij`` (``e_ij`` the weight's
squared normalised error), so the batched objective, the baseline and the choice keep their
code and their cost. What is and is not
unbiased:

* a weight's error as a function of its value (and of its row's scale) is averaged with the
  energy weights up to the resampling's quadrature, as the plain tile averages it with equal
  weights: with equal energies the drawn tile is the plain one (to float rounding);
* the value of largest magnitude is kept whatever its energy (the layer's, or each row's), so
  the converter's scale, the grid and the error's normalisation M = max|W| are the layer's; it
  takes one of the tile's N values (one of ``in`` per row) where its energy may give it less, a
  bias of at most ``(e_max - E) / N`` (``/ in`` per row) on the estimate E, e_max its error;
* not unbiased: the drift compensation is computed on the drawn tile, whose |W| distribution is
  the energy-weighted one, not the layer's; where the compensation factor depends on that
  distribution (it does, through the drift of each conductance), the drawn tile's alpha differs
  from the deployed layer's, a second-order effect on the error;
* with energies per weight ``[out, in]`` (rows whose inputs differ: a grouped convolution, the
  query/key/value blocks of an attention's in_proj) the rows of a tile by rows still count
  alike, where the output error weights each row by its total input energy; by distribution the
  weighting is exact.
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
from ..device.sampling import downsample_weight_distribution, shuffle_weights
from ..rng import stream_generator

__all__ = ["TestTile", "search_tiles", "DEFAULT_TILE", "MAX_TEST_WEIGHTS", "sample_rows",
           "importance_resample", "check_importance"]

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


def importance_resample(values: Tensor, importance: Tensor, size: int,
                        generator: torch.Generator | int | None = None) -> Tensor:
    """``size`` values drawn from ``values`` with probability proportional to ``importance``,
    stratified and shuffled: the weighted analogue of
    :func:`gpuwpo.downsample_weight_distribution` (the module docstring, "Drawn by importance").

    The values of positive importance, sorted ascending (``v_1 .. v_n``, shares ``p_k`` of the
    total importance), sit at the ranks ``r_k = (c_k - c_1) / (c_n - c_1)``, ``c_k`` the midpoint
    ``p_1 + ... + p_{k-1} + p_k / 2`` of value k's share; output ``j`` is the linear
    interpolation of the values at rank ``j / (size - 1)`` (np.interp). Equal importances give
    ``r_k = (k - 1) / (n - 1)``, the unweighted resample's ranks. Then the output at the end of
    the value of largest magnitude (the last if it is positive, else the first) is that value,
    whatever its importance, so that the resample keeps the scale a converter takes from
    max|w| (one of ``size`` outputs where its importance would give it less: the estimate's
    bias, the module docstring); ``size = 1`` gives the value of largest magnitude. Finally the
    outputs are shuffled with ``torch.randperm(size, generator=generator)``
    (:func:`gpuwpo.shuffle_weights`).

    Memory: a sort index (int64) and a float64 cumulative share per value, besides the values.

    Args:
        values: ``[n]`` finite floating values (any shape, flattened).
        importance: ``[n]`` (the same number of elements) finite importances >= 0, not all 0.
        size: the number of values to draw (>= 1).
        generator: the shuffle's source (:mod:`gpuwpo.rng`).

    Returns:
        ``[size]`` in the dtype and on the device of ``values``.

    Raises:
        ValueError: sizes that differ, an importance that is negative, not finite or zero
            everywhere, or a size below 1.
    """
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    flat = values.detach().reshape(-1)
    weight = importance.detach().reshape(-1).to("cpu", torch.float64)
    if weight.numel() != flat.numel():
        raise ValueError(f"importance has {weight.numel()} values for {flat.numel()} weights")
    if not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()):
        raise ValueError("importance must be finite and >= 0")
    v = flat.to("cpu", torch.float32 if flat.dtype != torch.float64 else torch.float64).numpy()
    order = np.argsort(v, kind="stable")
    v_sorted = v[order]
    w_sorted = weight.numpy()[order]
    keep = w_sorted > 0
    if not keep.any():
        raise ValueError("importance is zero everywhere: no value would be drawn")
    v_kept, p = v_sorted[keep].astype(np.float64), w_sorted[keep]
    if v_kept.size == 1:
        out = np.full(size, v_kept[0])
    else:
        mid = np.cumsum(p) - 0.5 * p  # the midpoint of each value's share
        ranks = (mid - mid[0]) / (mid[-1] - mid[0])
        out = np.interp(np.arange(size, dtype=np.float64) / max(size - 1, 1), ranks, v_kept)
    # The value of largest magnitude, whatever its importance: the scale stays the layer's. (A
    # tie of |min| and max keeps the max, as torch's amax of |w| reads the same magnitude.)
    if abs(float(v_sorted[0])) > abs(float(v_sorted[-1])):
        out[0] = v_sorted[0]
    else:
        out[-1] = v_sorted[-1]
    drawn = torch.from_numpy(out).to(device=values.device, dtype=values.dtype)
    return shuffle_weights(drawn, generator)


def check_importance(importance, weights: Tensor, what: str) -> Tensor | None:
    """A layer's importance as ``[R, C]`` float64 on the CPU (one per weight of its matrix
    :func:`_matrix` ``[R, C]``), or None where it weighs every weight alike.

    Args:
        importance: the energies ``E[x_j^2]`` of the layer's input columns ``[C]`` (each row
            alike), or one per weight ``[R, C]`` (any shape of R * C elements, in the matrix's
            order); a single number (or None) means every column alike: the plain tile.
        weights: the layer's weights (any shape).
        what: the layer's name, for messages.

    Raises:
        TypeError: not a tensor or numpy array of real numbers.
        ValueError: a size that is neither C nor R * C (naming both), values that are negative
            or not finite, or zero everywhere.
    """
    if importance is None:
        return None
    if isinstance(importance, np.ndarray):
        importance = torch.from_numpy(importance)
    if not isinstance(importance, Tensor) or importance.is_complex() or not (
            importance.is_floating_point() or importance.dtype in
            (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"the importance of {what} must be a tensor of real numbers, got "
                        f"{type(importance).__name__}")
    rows, cols = _matrix(weights).shape
    e = importance.detach().to("cpu", torch.float64)
    if e.numel() == 1:
        value = float(e.reshape(()))
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"the importance of {what} must be a finite number > 0, got "
                             f"{value}")
        return None
    if e.numel() not in (cols, rows * cols):
        raise ValueError(f"the importance of {what} has {e.numel()} values (shape "
                         f"{tuple(importance.shape)}); its matrix is {rows} x {cols}: give one "
                         f"per input column ({cols}) or one per weight ({rows * cols})")
    if not bool(torch.isfinite(e).all()) or bool((e < 0).any()):
        raise ValueError(f"the importance of {what} must be finite and >= 0 (input energies "
                         f"E[x^2])")
    if not bool((e > 0).any()):
        raise ValueError(f"the importance of {what} is zero everywhere: no input reaches it "
                         f"(leave the layer out, or give it no importance)")
    return e.reshape(-1, cols).expand(rows, cols)


def sample_rows(weights: Tensor, shape: Sequence[int],
                generator: torch.Generator | None = None,
                importance: Tensor | None = None) -> Tensor:
    """A test tile ``[out, in]`` of a layer's rows, each with its own scale (the module's
    "by rows").

    Args:
        weights: the layer's weights (any shape; as a matrix ``[R, C]``, :func:`_matrix`).
        shape: the tile ``(out, in)``.
        generator: the source of the rows' shuffles (the layer's stream ``"test_tiles"``).
        importance: None, or ``[R, C]`` (:func:`check_importance`): each sampled row's values
            are then drawn by importance (:func:`importance_resample`; a row whose importance
            is zero everywhere as without it: its error has no weight, but the tile needs a
            row there). The rows are picked as without importance.

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
        weight = None if importance is None else importance[int(order[r])]
        if in_features == 1:
            rows.append(row[row.abs().argmax()].reshape(1))
        elif weight is not None and bool((weight > 0).any()):
            rows.append(importance_resample(row, weight, in_features, generator))
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
        weighted: ``(B,)`` whether each layer's tile was drawn by importance (the module
            docstring); ``()`` when none was.
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
    weighted: tuple[bool, ...] = ()

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
                    mapping: str = "layer", rows: bool | None = None,
                    importance=None) -> TestTile:
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
            importance: None (every weight alike: the tiles as they always were, bit for bit),
                or the layers' input energies (the module docstring, "Drawn by importance"):
                a sequence with one entry per layer, or, when ``layers`` is a mapping, a
                mapping name -> entry (a layer it does not name is drawn without). An entry is
                None, ``[C]`` (one energy per input column of the layer's matrix ``[R, C]``) or
                ``[R, C]`` (one per weight) (:func:`check_importance`). Needs a ``shape``: the
                weights kept as they are cannot be drawn.

        Raises:
            ValueError / TypeError: a layer that is not real, finite, non-empty weights with a
                non-zero value (naming the layer), a bad shape, mapping or clip, a per-column
                mapping on tiles that are not rows (``rows=False``), or a bad importance (naming
                the layer).
        """
        mapping = check_mapping(mapping)
        rows = mapping == "columnwise" if rows is None else bool(rows)
        if mapping == "columnwise" and not rows:
            raise ValueError("the per-column mapping scales the rows of a tile: sample the test "
                             "tiles by rows (rows=True)")
        energies = _importance_list(importance, layers)
        names, layers = _as_layer_list(layers)
        layers = [check_weights(w, f"layer {name}", allow_all_zero=False)
                  for name, w in zip(names, layers)]
        if energies is not None:
            if len(energies) != len(layers):
                raise ValueError(f"importance has {len(energies)} entries for {len(layers)} "
                                 f"layers")
            energies = [check_importance(e, w, f"layer {name}")
                        for name, w, e in zip(names, layers, energies)]
            if all(e is None for e in energies):
                energies = None  # every layer alike: the plain tiles
            elif shape is None:
                raise ValueError("importance draws the test weights: give a test tile size "
                                 "(test_in_features, test_out_features), not None")
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
            energy = [None] * len(layers) if energies is None else energies
            if rows:
                tests = [sample_rows(w.detach().to("cpu", torch.float32), tile,
                                     stream_generator(int(seed), "test_tiles", b, device="cpu"),
                                     importance=energy[b])
                         .reshape(-1).to(device=device, dtype=dtype)
                         for b, w in enumerate(layers)]
            else:
                tests = [(downsample_weight_distribution(
                    w.detach().to("cpu", torch.float32).reshape(-1), (math.prod(tile),),
                    generator=stream_generator(int(seed), "test_tiles", b, device="cpu"),
                ) if energy[b] is None else importance_resample(
                    w.detach().to("cpu", torch.float32), energy[b], math.prod(tile),
                    stream_generator(int(seed), "test_tiles", b, device="cpu"),
                )).to(device=device, dtype=dtype) for b, w in enumerate(layers)]
        weighted = () if energies is None else tuple(e is not None for e in energies)
        return cls._placed(torch.stack(tests), int(grid_size), tuple(range(len(tests))), tile,
                           check_clip(clip), mapping, rows, weighted)

    @classmethod
    def _placed(cls, weights: Tensor, grid_size: int, layer_ids: tuple[int, ...],
                shape: tuple[int, int], clip: float, mapping: str, rows: bool,
                weighted: tuple[bool, ...] = ()) -> TestTile:
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
        return cls(weights, m, idx, frac, grid_size, layer_ids, shape, clip, mapping, rows, scales,
                   weighted)

    def to(self, device: torch.device | str) -> TestTile:
        """The tiles on ``device``, M, the row scales and the grid positions computed there from
        the test weights (as a run on that device computes them)."""
        return self._placed(self.weights.to(device), self.grid_size, self.layer_ids, self.shape,
                            self.clip, self.mapping, self.rows, self.weighted)

    def with_mapping(self, mapping: str, clip: float | None = None) -> TestTile:
        """The same test weights under another mapping (and clip; default this one's), their
        positions computed again. A per-column mapping needs tiles sampled by rows."""
        mapping = check_mapping(mapping)
        if mapping == "columnwise" and not self.rows:
            raise ValueError("these test tiles were sampled by distribution, not by rows: the "
                             "per-column mapping has no rows to scale")
        return self._placed(self.weights, self.grid_size, self.layer_ids, self.shape,
                            self.clip if clip is None else check_clip(clip), mapping, self.rows,
                            self.weighted)

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
                        self.mapping, self.rows, pick(self.row_scales),
                        tuple(self.weighted[b] for b in layers) if self.weighted else ())


def search_tiles(layers, space, options, *, device, rows: bool, importance) -> TestTile:
    """The test tiles a search makes of ``layers`` (a list of weight tensors): the tile shape
    and seed of ``options`` (a :class:`gpuwpo.search.options.SearchOptions`), the grid and clip
    of ``space`` (a :class:`gpuwpo.search.strategy.StrategySpace`), the options' mapping, by
    rows where ``rows``, drawn by the input energies ``importance`` (see
    :meth:`TestTile.from_layers`)."""
    shape = (None if options.test_in_features is None
             else (options.test_out_features, options.test_in_features))
    return TestTile.from_layers(layers, space.grid_size, shape=shape, seed=options.seed,
                                device=device, clip=space.clip, mapping=options.mapping,
                                rows=rows, importance=importance)


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


def _importance_list(importance, layers) -> list | None:
    """The importance entries in the layers' order (None: no importance): a sequence as it is,
    a mapping by the layers' names (a mapping of layers only; names it lacks are None)."""
    if importance is None:
        return None
    if isinstance(importance, Mapping):
        if not isinstance(layers, Mapping):
            raise ValueError("importance by name needs layers by name (a mapping name -> "
                             "weights); give a sequence with one entry per layer")
        unknown = [str(k) for k in importance if k not in layers]
        if unknown:
            raise ValueError(f"importance names {', '.join(map(repr, unknown))}, which "
                             f"{'is' if len(unknown) == 1 else 'are'} not among the layers "
                             f"({', '.join(map(repr, map(str, layers)))})")
        return [importance.get(k) for k in layers]
    if isinstance(importance, (Tensor, np.ndarray)) or not isinstance(importance, Sequence):
        raise TypeError(f"importance must be a sequence with one entry per layer or a mapping "
                        f"name -> energies, got {type(importance).__name__}")
    return list(importance)


def _tensor(value):
    # numpy arrays are taken as they are (check_weights refuses everything else not a tensor).
    return torch.from_numpy(value) if isinstance(value, np.ndarray) else value
