"""Sliding-window inference engine shared by ``predict``, ``evaluate`` and the training callback.

A model is wrapped as a :class:`Predictor`: ``predictor(raw)`` maps a raw-pixel batch
``[N, H, W, C]`` (the scene's dtype, no-data pixels holding the model card's ``nodata``) to
probabilities ``[N, H, W, K] float32``. Two implementations share all the tiling code:
:class:`KerasPredictor` (a Keras model whose first layer is its preprocessing) and
:class:`SavedModelPredictor` (the exported ``serving_default`` signature). Both describe
themselves with the run's :class:`~tfseg.model_card.ModelCard`; a scene whose band count or
dtype differs from the card is refused, a different nodata value is warned about.

:func:`run_sliding_window` streams tiles from one or more sources (GeoTIFF scenes read window by
window, or in-memory arrays) through the predictor in fixed-size batches, blends overlapping
tiles with a smooth weight window and hands finished row strips to a sink. Only a strip of
``tile + block`` rows of the scene is ever held in memory, so memory does not grow with
the scene height (and grows only linearly, by a few bytes per pixel of a row, with its width).

Example:
    >>> predictor = load_predictor("runs/default")          # run dir, .keras or SavedModel
    >>> probs, valid = predict_array(predictor, image)       # HxWxC raw -> HxWxK, HxW

The predictors live in :mod:`tfseg.predictors` and are importable from here as well.
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
    KerasPredictor,
    ModelLoadError,
    NodataWarning,
    Predictor,
    SavedModelPredictor,
    fixed_input_shape,
    load_predictor,
)

__all__ = [
    "ArraySink", "ArraySource", "Job", "KerasPredictor", "ModelLoadError", "NodataWarning", "Predictor",
    "RasterSource", "SavedModelPredictor", "TTA_VIEWS", "fixed_input_shape", "load_predictor",
    "plan_tiles", "positions", "predict_array", "predict_tta", "predict_whole", "ramp_profile",
    "reflect_index", "run_sliding_window", "tta_views",
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
        raise ValueError(f"--tta: expected one of {list(TTA_VIEWS)} views, got {count}")
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
    """An in-memory HxWxC raw image (its own dtype; + optional HxW valid mask, default: pixels
    without NaN) read like a raster."""

    def __init__(self, image: np.ndarray, valid: Optional[np.ndarray] = None, name: str = "array"):
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[..., None]
        self.image = image
        self.height, self.width, self.num_bands = image.shape
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


@dataclass
class _JobState:
    job: Job
    rows: list
    cols: list
    acc: np.ndarray  # weighted probability sums of the rows in the buffer
    valid: np.ndarray
    row_weights: np.ndarray  # sum over tile rows of their row profiles (whole scene height)
    col_weights: np.ndarray  # the same over tile columns: the weight sum is their outer product
    start: int = 0  # absolute scene row held at buffer row 0


# ------------------------------------------------------------------------------------------
# The engine
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
        raise ValueError(f"--tile-size {tile_size}: the model ({predictor.source or 'given'}) takes only "
                         f"{fixed[0]}x{fixed[1]} tiles (its encoder has a fixed input size); use --tile-size "
                         f"{fixed[0]} or leave it unset")
    if tile_size < m:
        raise ValueError(f"--tile-size {tile_size}: must be at least the model's size multiple {m}")
    if overlap < 0 or overlap >= tile_size:
        raise ValueError(f"--overlap {overlap}: expected 0 <= overlap < tile size ({tile_size})")
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
        raise ValueError(f"--batch-size {batch_size}: expected >= 1")
    for job in jobs:
        predictor.check_source(job.source, job.name or job.source.name)
    tile_h, tile_w, stride, margin = plan_tiles(
        predictor, [j.source.height for j in jobs], [j.source.width for j in jobs], tile_size, overlap, margin)
    multiple = max(1, predictor.size_multiple)
    views = tta_views(tta)
    fill = predictor.fill_value()
    channels = predictor.num_classes
    block_rows = max(1, block_rows)

    def grid(job):
        return (positions(job.source.height, tile_h, stride, multiple),
                positions(job.source.width, tile_w, stride, multiple))

    grids = [grid(job) for job in jobs]

    def tiles():
        for index, (rows, cols) in enumerate(grids):
            for i, r in enumerate(rows):
                for j, c in enumerate(cols):
                    yield index, i, j, r, c

    profiles: dict = {}

    def weight(rows, cols, i, j):
        key = _overlaps(rows, tile_h, i) + _overlaps(cols, tile_w, j)
        if key not in profiles:
            wr = ramp_profile(tile_h, key[0], key[1], margin)
            wc = ramp_profile(tile_w, key[2], key[3], margin)
            profiles[key] = np.outer(wr, wc).astype(np.float32)
        return profiles[key]

    def axis_weights(origins, tile, length):
        # every tile weight is outer(row profile, column profile) on a full grid, so the weight
        # sum is separable: outer(sum of row profiles, sum of column profiles). No per-pixel
        # weight buffer is needed.
        total = np.zeros(origins[-1] + tile, np.float64)
        for index, origin in enumerate(origins):
            total[origin : origin + tile] += ramp_profile(tile, *_overlaps(origins, tile, index), margin)
        return total[:length]

    states: dict = {}

    def state_for(index):
        if index not in states:
            job = jobs[index]
            rows, cols = grids[index]
            # rows [start, origin + tile) with start >= the block boundary below origin
            cap = min(tile_h + block_rows, job.source.height)
            width = job.source.width
            states[index] = _JobState(
                job, rows, cols, np.zeros((cap, width, channels), np.float32), np.zeros((cap, width), bool),
                axis_weights(rows, tile_h, job.source.height), axis_weights(cols, tile_w, width))
        return states[index]

    def flush(st: _JobState, upto: int):
        """Emit finished rows [st.start, upto) and shift the buffer."""
        n = upto - st.start
        if n <= 0:
            return
        wsum = np.outer(st.row_weights[st.start : upto], st.col_weights).astype(np.float32)
        probs = st.acc[:n] / np.maximum(wsum, 1e-12)[..., None]
        st.job.sink.write(st.start, probs, st.valid[:n].copy())
        keep = st.acc.shape[0] - n
        for buf in (st.acc, st.valid):
            buf[:keep] = buf[n:]
            buf[keep:] = 0
        st.start = upto

    def accumulate(index, i, j, r, c, probs, valid):
        st = state_for(index)
        height, width = st.job.source.height, st.job.source.width
        h, w = min(tile_h, height - r), min(tile_w, width - c)
        w2d = weight(st.rows, st.cols, i, j)[:h, :w]
        b0 = r - st.start
        st.acc[b0 : b0 + h, c : c + w] += probs[:h, :w] * w2d[..., None]
        st.valid[b0 : b0 + h, c : c + w] |= valid[:h, :w]
        if j == len(st.cols) - 1:  # a tile row is complete: rows above the next tile row are final
            last = i == len(st.rows) - 1
            upto = height if last else (st.rows[i + 1] // block_rows) * block_rows
            flush(st, upto)
            if last:
                st.job.sink.close()
                del states[index]

    started = time.perf_counter()
    total_tiles = 0
    pixels = sum(j.source.height * j.source.width for j in jobs)
    counts = [len(rows) * len(cols) for rows, cols in grids]
    done_per_job = [0] * len(jobs)

    def read_batch(items):
        return [_read_tile(jobs[index].source, r, c, tile_h, tile_w, fill) for index, i, j, r, c in items]

    iterator = tiles()

    def next_items():
        items = []
        for item in iterator:
            items.append(item)
            if len(items) == batch_size:
                break
        return items

    # read the next batch in a thread while the model runs on the current one
    with ThreadPoolExecutor(max_workers=1) as pool:
        items = next_items()
        pending = pool.submit(read_batch, items) if items else None
        while pending is not None:
            batch = pending.result()
            current = items
            items = next_items()
            pending = pool.submit(read_batch, items) if items else None
            raw = np.stack([b[0] for b in batch])
            if raw.shape[0] < batch_size and total_tiles:  # constant batch shape: no retracing
                raw = np.concatenate([raw, np.repeat(raw[-1:], batch_size - raw.shape[0], axis=0)])
            probs = predict_tta(predictor, raw, views)
            for k, (item, (_, valid)) in enumerate(zip(current, batch)):
                accumulate(*item, probs[k], valid)
                done_per_job[item[0]] += 1
                if progress is not None:
                    progress(jobs[item[0]].name, done_per_job[item[0]], counts[item[0]])
            total_tiles += len(current)
    seconds = time.perf_counter() - started
    return {"tiles": total_tiles, "seconds": seconds, "pixels": pixels, "tile": [tile_h, tile_w],
            "stride": stride, "margin": margin}


def predict_array(predictor: Predictor, image: np.ndarray, valid: Optional[np.ndarray] = None,
                  tile_size: int = 256, overlap: int = 32, batch_size: int = 4, tta: int = 1,
                  margin: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Sliding-window prediction of an in-memory HxWxC raw image: (HxWxK probs, HxW valid)."""
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
