"""Sliding-window inference engine shared by ``predict``, ``evaluate`` and the training callback.

:func:`run_sliding_window` streams tiles from one or more sources (GeoTIFF scenes read window by
window, or in-memory arrays) through a :class:`~tfseg.predictors.Predictor` in fixed-size
batches, blends overlapping tiles with a smooth weight window and hands finished row strips to a
sink. Only a strip of ``tile + block`` rows of the scene is ever held in memory, so memory does
not grow with the scene height (and grows only linearly, by a few bytes per pixel of a row, with
its width). It wires three pieces:

* :class:`TileGrid`: the run's tile size, stride and margin; tile origins per scene, the blend
  weight of each tile and the per-axis weight sums;
* :class:`TileReader`: every job's tiles in raster order, in batches, the next batch read in a
  background thread while the model runs on the current one;
* :class:`SceneBlender`: one scene's strip buffer, into which its tiles are blended, written to
  the scene's sink as rows become final.

The predictors live in :mod:`tfseg.predictors` and are importable from here as well.

Example:
    >>> predictor = load_predictor("runs/default")          # run dir, .keras or SavedModel
    >>> probs, valid = predict_array(predictor, image)       # HxWxC raw -> HxWxK, HxW
"""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from rasterio.windows import Window

from .data.raster import RasterInfo, read_window_raw
from .predictors import (  # re-exported: callers import the predictors from here
    InferenceArgumentError,
    KerasPredictor,
    ModelLoadError,
    NodataWarning,
    Predictor,
    SavedModelPredictor,
    fixed_input_shape,
    load_predictor,
)

__all__ = [
    "ArraySink", "ArraySource", "InferenceArgumentError", "Job", "KerasPredictor", "ModelLoadError", "NodataWarning",
    "Predictor",
    "RasterSource", "SavedModelPredictor", "SceneBlender", "TTA_VIEWS", "TileGrid", "TileReader",
    "fixed_input_shape", "load_predictor", "plan_tiles", "positions", "predict_array", "predict_tta",
    "predict_whole", "ramp_profile", "reflect_index", "run_sliding_window", "tta_views",
]

TTA_VIEWS = (1, 2, 4, 8)


# ------------------------------------------------------------------------------------------
# Test-time augmentation: the dihedral views of a square tile, each with its inverse
# ------------------------------------------------------------------------------------------
def _view(k: int, flip: bool):
    def forward(x):
        x = np.rot90(x, k, axes=(1, 2))
        return x[:, :, ::-1] if flip else x

    def inverse(x):
        x = x[:, :, ::-1] if flip else x
        return np.rot90(x, -k, axes=(1, 2))

    return forward, inverse


def tta_views(count: int) -> list:
    """1: identity; 2: + horizontal flip; 4: + vertical flip and 180° rotation; 8: all dihedral."""
    if count not in TTA_VIEWS:
        raise InferenceArgumentError(f"--tta: expected one of {list(TTA_VIEWS)} views, got {count}")
    views = {1: [(0, False)], 2: [(0, False), (0, True)], 4: [(0, False), (0, True), (2, True), (2, False)]}
    chosen = views.get(count) or [(k, f) for k in range(4) for f in (False, True)]
    return [_view(k, f) for k, f in chosen]


def predict_tta(predictor: Predictor, raw: np.ndarray, views: Sequence) -> np.ndarray:
    if len(views) == 1:
        return predictor(raw)
    total = None
    for forward, inverse in views:
        probs = inverse(predictor(np.ascontiguousarray(forward(raw))))
        total = probs if total is None else total + probs
    return total / len(views)


# ------------------------------------------------------------------------------------------
# Blending window
# ------------------------------------------------------------------------------------------
def _rising(length: int, overlap: int, margin: int) -> np.ndarray:
    d = np.arange(length, dtype=np.float64)
    margin = max(0, min(margin, (overlap - 1) // 2))
    ramp_len = overlap - 2 * margin
    return np.where(d < margin, 0.0, np.sin(0.5 * np.pi * np.clip((d - margin + 0.5) / ramp_len, 0, 1)) ** 2)


def ramp_profile(length: int, overlap_start: int, overlap_end: int, margin: int) -> np.ndarray:
    """1-D weight along one tile axis, given its overlap with the previous and the next tile.

    On a side shared with a neighbour (overlap > 0) the weight is 0 for the outer ``margin``
    pixels (their context is cut by the tile edge), then rises as sin² over ``overlap - 2*margin``
    pixels; the neighbour's weight falls as cos² over the same pixels, so the two sum to 1 (a
    smooth partition of unity: no seams). On a side at the scene edge the weight stays 1.
    """
    weight = np.ones(length, np.float64)
    if overlap_start > 0:
        weight *= _rising(length, overlap_start, margin)
    if overlap_end > 0:
        weight *= _rising(length, overlap_end, margin)[::-1]
    return weight


def positions(length: int, tile: int, stride: int, multiple: int = 1) -> list:
    """Tile origins along one axis: multiples of ``stride``; the last tile ends where the axis,
    padded to ``multiple``, ends (as the scene predicted in one piece is padded)."""
    padded = math.ceil(length / multiple) * multiple
    last = max(0, padded - tile)
    out = list(range(0, last, stride))
    return out + [last]


def _overlaps(origins: list, tile: int, index: int) -> tuple[int, int]:
    start = origins[index - 1] + tile - origins[index] if index > 0 else 0
    end = origins[index] + tile - origins[index + 1] if index < len(origins) - 1 else 0
    return start, end


# ------------------------------------------------------------------------------------------
# Sources and sinks
# ------------------------------------------------------------------------------------------
class ArraySource:
    """An in-memory HxWxC raw image (its own dtype, which must be the model card's
    ``band_dtype``; + optional HxW valid mask, default: pixels without NaN) read like a raster."""

    def __init__(self, image: np.ndarray, valid: Optional[np.ndarray] = None, name: str = "array"):
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[..., None]
        self.image = image
        if image.ndim != 3:
            raise InferenceArgumentError(f"{name}: expected an HxW or HxWxC image, got shape {image.shape}")
        self.height, self.width, self.num_bands = image.shape
        self.dtype = image.dtype
        if valid is None:
            valid = ~np.isnan(image).any(axis=-1) if image.dtype.kind == "f" else np.ones(image.shape[:2], bool)
        self.valid = np.asarray(valid, bool)
        self.name = name

    def read(self, row: int, col: int, height: int, width: int):
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + height, self.height), min(col + width, self.width)
        return self.image[r0:r1, c0:c1], self.valid[r0:r1, c0:c1]


class RasterSource:
    """A raster file read window by window in its own dtype (tfseg.data.raster.read_window_raw)."""

    def __init__(self, info: RasterInfo):
        self.info = info
        self.height, self.width, self.num_bands = info.height, info.width, info.num_bands
        self.name = info.path

    def read(self, row: int, col: int, height: int, width: int):
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + height, self.height), min(col + width, self.width)
        return read_window_raw(self.info, Window(c0, r0, c1 - c0, r1 - r0))


def reflect_index(index: np.ndarray, length: int) -> np.ndarray:
    """Map indexes past either end back into [0, length) by mirror reflection (numpy 'reflect')."""
    if length == 1:
        return np.zeros_like(index)
    period = 2 * (length - 1)
    index = np.mod(index, period)
    return np.where(index >= length, period - index, index)


def _read_tile(source, row: int, col: int, tile_h: int, tile_w: int, fill: float):
    """Raw tile (its own dtype, float32 when ``fill`` is NaN and it is not float; no-data
    pixels = ``fill``) and its valid mask. Past the scene edges the tile is the scene
    mirrored about its edge (as ``np.pad(mode="reflect")`` of the whole scene would be), so a
    tile sees the same context as the scene predicted in one piece."""
    rows = reflect_index(np.arange(row, row + tile_h), source.height)
    cols = reflect_index(np.arange(col, col + tile_w), source.width)
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    image, valid = source.read(r0, c0, r1 - r0, c1 - c0)
    dtype = image.dtype if image.dtype.kind == "f" or not math.isnan(fill) else np.dtype(np.float32)
    image = np.array(image, dtype, copy=True)
    if not valid.all():
        image[~valid] = fill
    inside_rows, inside_cols = row + tile_h <= source.height, col + tile_w <= source.width
    if not (inside_rows and inside_cols and r0 == row and c0 == col):
        image = image[rows - r0][:, cols - c0]
        valid = valid[rows - r0][:, cols - c0]
    return image, valid


class ArraySink:
    """Collects the whole prediction in memory (small images: evaluation, tests)."""

    def __init__(self, height: int, width: int, channels: int):
        self.probs = np.zeros((height, width, channels), np.float32)
        self.valid = np.zeros((height, width), bool)

    def write(self, row: int, probs: np.ndarray, valid: np.ndarray) -> None:
        self.probs[row : row + probs.shape[0]] = probs
        self.valid[row : row + probs.shape[0]] = valid

    def close(self) -> None:
        pass


@dataclass
class Job:
    """One source predicted into one sink (``sink.write(row, probs, valid)``, ``sink.close()``)."""

    source: object
    sink: object
    name: str = ""


# ------------------------------------------------------------------------------------------
# The engine: a tile grid, one blender per scene, a prefetching reader, wired by run_sliding_window
# ------------------------------------------------------------------------------------------
def plan_tiles(predictor: Predictor, heights: Sequence[int], widths: Sequence[int], tile_size: int,
               overlap: int, margin: Optional[int]) -> tuple[int, int, int, int]:
    """(tile_height, tile_width, stride, margin).

    Tile and stride are rounded to the model's size multiple so that every tile sits on the same
    pooling grid as the whole scene; tiles shrink to the largest scene when scenes are small.
    """
    m = max(1, predictor.size_multiple)
    fixed = predictor.fixed_size
    if fixed and (fixed[0] != fixed[1] or tile_size != fixed[0]):
        raise InferenceArgumentError(f"--tile-size {tile_size}: the model ({predictor.source or 'given'}) takes only "
                         f"{fixed[0]}x{fixed[1]} tiles (its encoder has a fixed input size); use --tile-size "
                         f"{fixed[0]} or leave it unset")
    if tile_size < m:
        raise InferenceArgumentError(f"--tile-size {tile_size}: must be at least the model's size multiple {m}")
    if overlap < 0 or overlap >= tile_size:
        raise InferenceArgumentError(f"--overlap {overlap}: expected 0 <= overlap < tile size ({tile_size})")
    tile = math.ceil(tile_size / m) * m
    if fixed:  # no shrinking to small scenes: tiles past the edges are mirror-padded
        tile_h, tile_w = fixed
    else:
        tile_h = min(tile, math.ceil(max(heights) / m) * m)
        tile_w = min(tile, math.ceil(max(widths) / m) * m)
    stride = max(m, ((tile - overlap) // m) * m) if overlap else tile
    if margin is None:
        margin = (tile - stride) // 4
    return tile_h, tile_w, stride, max(0, int(margin))


class TileGrid:
    """Where a run's tiles go and how much each of their pixels counts: one tile size, stride and
    margin for every scene of the run (see :func:`plan_tiles`).

    Example:
        >>> grid = TileGrid(128, 128, stride=96, margin=8, multiple=4)
        >>> rows, cols = grid.origins(300, 400)       # tile origins along each axis
        >>> weight = grid.weight(rows, cols, 0, 1)    # 128x128 blend weight of tile (0, 1)
    """

    def __init__(self, tile_height: int, tile_width: int, stride: int, margin: int, multiple: int = 1):
        self.tile_height, self.tile_width = tile_height, tile_width
        self.stride, self.margin, self.multiple = stride, margin, multiple
        self._weights: dict = {}  # tile weight by its overlaps with its 4 neighbours, shared by scenes

    @classmethod
    def plan(cls, predictor: Predictor, heights: Sequence[int], widths: Sequence[int], tile_size: int,
             overlap: int, margin: Optional[int]) -> "TileGrid":
        """The grid of :func:`plan_tiles` for scenes of these sizes."""
        tile_h, tile_w, stride, margin = plan_tiles(predictor, heights, widths, tile_size, overlap, margin)
        return cls(tile_h, tile_w, stride, margin, max(1, predictor.size_multiple))

    def origins(self, height: int, width: int) -> tuple[list, list]:
        """Tile origins of a ``height`` x ``width`` scene: (rows, cols)."""
        return (positions(height, self.tile_height, self.stride, self.multiple),
                positions(width, self.tile_width, self.stride, self.multiple))

    def weight(self, rows: list, cols: list, i: int, j: int) -> np.ndarray:
        """Blend weight (tile_height x tile_width float32) of the tile at ``rows[i], cols[j]``."""
        key = _overlaps(rows, self.tile_height, i) + _overlaps(cols, self.tile_width, j)
        if key not in self._weights:
            wr = ramp_profile(self.tile_height, key[0], key[1], self.margin)
            wc = ramp_profile(self.tile_width, key[2], key[3], self.margin)
            self._weights[key] = np.outer(wr, wc).astype(np.float32)
        return self._weights[key]

    def axis_weights(self, origins: list, tile: int, length: int) -> np.ndarray:
        """Sum over the tiles along one axis of their profiles (``length`` float64).

        Every tile weight is outer(row profile, column profile) on a full grid, so a scene's
        weight sum is separable: outer(row sums, column sums). No per-pixel weight buffer is needed.
        """
        total = np.zeros(origins[-1] + tile, np.float64)
        for index, origin in enumerate(origins):
            total[origin : origin + tile] += ramp_profile(tile, *_overlaps(origins, tile, index), self.margin)
        return total[:length]


class SceneBlender:
    """One scene's weighted sum of its tiles, in a strip of ``tile + block_rows`` rows of the
    scene's width; finished rows go to the job's sink, in order, in strips whose boundaries fall
    on multiples of ``block_rows``, and the sink is closed after the last tile.

    Tiles must arrive in raster order (as :class:`TileReader` reads them).
    """

    def __init__(self, job: Job, grid: TileGrid, rows: list, cols: list, channels: int, block_rows: int):
        self.job, self.grid, self.rows, self.cols, self.block_rows = job, grid, rows, cols, block_rows
        self.height, self.width = job.source.height, job.source.width
        # rows [start, origin + tile) with start >= the block boundary below origin
        cap = min(grid.tile_height + block_rows, self.height)
        self.acc = np.zeros((cap, self.width, channels), np.float32)  # weighted probability sums
        self.valid = np.zeros((cap, self.width), bool)
        # sums over tile rows / columns of their profiles: the weight sum is their outer product
        self.row_weights = grid.axis_weights(rows, grid.tile_height, self.height)
        self.col_weights = grid.axis_weights(cols, grid.tile_width, self.width)
        self.start = 0  # absolute scene row held at buffer row 0

    def add(self, i: int, j: int, probs: np.ndarray, valid: np.ndarray) -> bool:
        """Blend tile ``(i, j)`` in (its probabilities and valid mask); True once the scene is
        complete (every row written, the sink closed)."""
        r, c = self.rows[i], self.cols[j]
        h, w = min(self.grid.tile_height, self.height - r), min(self.grid.tile_width, self.width - c)
        w2d = self.grid.weight(self.rows, self.cols, i, j)[:h, :w]
        b0 = r - self.start
        self.acc[b0 : b0 + h, c : c + w] += probs[:h, :w] * w2d[..., None]
        self.valid[b0 : b0 + h, c : c + w] |= valid[:h, :w]
        if j < len(self.cols) - 1:
            return False
        # a tile row is complete: rows above the next tile row are final
        last = i == len(self.rows) - 1
        self.flush(self.height if last else (self.rows[i + 1] // self.block_rows) * self.block_rows)
        if last:
            self.job.sink.close()
        return last

    def flush(self, upto: int) -> None:
        """Emit finished rows [start, upto) to the sink and shift the buffer up."""
        n = upto - self.start
        if n <= 0:
            return
        wsum = np.outer(self.row_weights[self.start : upto], self.col_weights).astype(np.float32)
        probs = self.acc[:n] / np.maximum(wsum, 1e-12)[..., None]
        self.job.sink.write(self.start, probs, self.valid[:n].copy())
        keep = self.acc.shape[0] - n
        for buf in (self.acc, self.valid):
            buf[:keep] = buf[n:]
            buf[keep:] = 0
        self.start = upto


class TileReader:
    """The tiles of every job in raster order, job after job, in batches of ``batch_size``
    (``(index, i, j)`` items and their ``(image, valid)`` tiles, see :func:`_read_tile`); the next
    batch is read in a background thread while the caller predicts the current one.

    Example:
        >>> with TileReader(jobs, origins, grid, fill, batch_size=8) as reader:
        ...     for items, tiles in reader:
        ...         ...
    """

    def __init__(self, jobs: Sequence[Job], origins: Sequence[tuple], grid: TileGrid, fill: float,
                 batch_size: int):
        self.jobs, self.origins, self.grid, self.fill, self.batch_size = jobs, origins, grid, fill, batch_size
        self._items = self._all_items()
        self._pool: Optional[ThreadPoolExecutor] = None

    def _all_items(self):
        for index, (rows, cols) in enumerate(self.origins):
            for i in range(len(rows)):
                for j in range(len(cols)):
                    yield index, i, j

    def _next_items(self) -> list:
        items = []
        for item in self._items:
            items.append(item)
            if len(items) == self.batch_size:
                break
        return items

    def _read(self, items: list) -> list:
        tile_h, tile_w = self.grid.tile_height, self.grid.tile_width
        return [_read_tile(self.jobs[index].source, self.origins[index][0][i], self.origins[index][1][j],
                           tile_h, tile_w, self.fill) for index, i, j in items]

    def __enter__(self) -> "TileReader":
        self._pool = ThreadPoolExecutor(max_workers=1)
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True)  # a read still in flight finishes before the caller goes on

    def __iter__(self):
        items = self._next_items()
        pending = self._pool.submit(self._read, items) if items else None
        while pending is not None:
            tiles = pending.result()
            current = items
            items = self._next_items()
            pending = self._pool.submit(self._read, items) if items else None
            yield current, tiles


def _predict_batch(predictor: Predictor, tiles: list, batch_size: int, views: Sequence, pad: bool) -> np.ndarray:
    """Probabilities of a batch of raw tiles; with ``pad``, a short batch is padded to
    ``batch_size`` with copies of its last tile (a constant batch shape: no retracing)."""
    raw = np.stack(tiles)
    if raw.shape[0] < batch_size and pad:
        raw = np.concatenate([raw, np.repeat(raw[-1:], batch_size - raw.shape[0], axis=0)])
    return predict_tta(predictor, raw, views)


def run_sliding_window(
    predictor: Predictor,
    jobs: Sequence[Job],
    tile_size: int = 256,
    overlap: int = 32,
    batch_size: int = 8,
    tta: int = 1,
    margin: Optional[int] = None,
    block_rows: int = 512,
    progress: Optional[Callable[[str, int, int], None]] = None,
) -> dict:
    """Predict every job, streaming tiles across jobs in fixed-size batches.

    ``overlap``: pixels shared by neighbouring tiles (blended); ``margin``: pixels at a shared
    tile edge given zero weight (default overlap / 4). Returns ``{"tiles", "seconds", "pixels",
    "tile", "stride", "margin"}``. Rows reach each sink in order, in strips whose boundaries fall
    on multiples of ``block_rows`` (tiled GeoTIFF blocks are written once, complete).
    """
    jobs = list(jobs)
    if not jobs:
        return {"tiles": 0, "seconds": 0.0, "pixels": 0}
    if batch_size < 1:
        raise InferenceArgumentError(f"--batch-size {batch_size}: expected >= 1")
    for job in jobs:
        predictor.check_source(job.source, job.name or job.source.name)
    grid = TileGrid.plan(predictor, [j.source.height for j in jobs], [j.source.width for j in jobs], tile_size,
                         overlap, margin)
    views = tta_views(tta)
    fill = predictor.fill_value()
    channels = predictor.num_classes
    block_rows = max(1, block_rows)
    origins = [grid.origins(job.source.height, job.source.width) for job in jobs]
    counts = [len(rows) * len(cols) for rows, cols in origins]
    done_per_job = [0] * len(jobs)
    blenders: dict = {}  # job index -> SceneBlender, from its first tile until its sink is closed

    started = time.perf_counter()
    total_tiles = 0
    with TileReader(jobs, origins, grid, fill, batch_size) as reader:
        for items, tiles in reader:
            probs = _predict_batch(predictor, [image for image, _ in tiles], batch_size, views, pad=total_tiles > 0)
            for k, ((index, i, j), (_, valid)) in enumerate(zip(items, tiles)):
                if index not in blenders:
                    blenders[index] = SceneBlender(jobs[index], grid, *origins[index], channels, block_rows)
                if blenders[index].add(i, j, probs[k], valid):
                    del blenders[index]
                done_per_job[index] += 1
                if progress is not None:
                    progress(jobs[index].name, done_per_job[index], counts[index])
            total_tiles += len(items)
    seconds = time.perf_counter() - started
    pixels = sum(j.source.height * j.source.width for j in jobs)
    return {"tiles": total_tiles, "seconds": seconds, "pixels": pixels,
            "tile": [grid.tile_height, grid.tile_width], "stride": grid.stride, "margin": grid.margin}


def predict_array(predictor: Predictor, image: np.ndarray, valid: Optional[np.ndarray] = None,
                  tile_size: int = 256, overlap: int = 32, batch_size: int = 4, tta: int = 1,
                  margin: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Sliding-window prediction of an in-memory HxWxC raw image (in the model card's
    ``band_dtype``; another dtype or band count raises :class:`~tfseg.model_card.ModelCardError`):
    (HxWxK probs, HxW valid)."""
    source = ArraySource(image, valid)
    sink = ArraySink(source.height, source.width, predictor.num_classes)
    run_sliding_window(predictor, [Job(source, sink, "array")], tile_size, overlap, batch_size, tta, margin)
    return sink.probs, sink.valid


def predict_whole(predictor: Predictor, image: np.ndarray, valid: Optional[np.ndarray] = None) -> np.ndarray:
    """The image predicted in one piece, mirror-padded to the model's size multiple (the
    reference the sliding window is tested against; small images only)."""
    source = ArraySource(image, valid)
    m = max(1, predictor.size_multiple)
    height, width = math.ceil(source.height / m) * m, math.ceil(source.width / m) * m
    raw, _ = source.read(0, 0, source.height, source.width)
    raw = np.array(raw, np.float32)
    raw[~source.valid] = predictor.fill_value()
    rows, cols = reflect_index(np.arange(height), source.height), reflect_index(np.arange(width), source.width)
    raw = raw[rows][:, cols]
    return predictor(raw[None])[0, : source.height, : source.width]
