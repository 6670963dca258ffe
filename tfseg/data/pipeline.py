"""tf.data pipelines of tiles: random windows for training, a grid with overlap for evaluation.

The host moves bytes: windows are read (rasterio, one handle per thread) in a parallel ``map``
and leave the pipeline in the source dtype (uint8, uint16, int16, float32 as stored; scenes of
mixed dtypes promote to the smallest common one, ``numpy.result_type``). Casting, clipping,
normalization and photometric augmentation happen in the model
(:mod:`tfseg.models.preprocessing`). Tiles above ``max_nodata_fraction`` are skipped; geometric
augmentation (flips, rot90, scale/crop) moves image and label together. Everything is
deterministic for a given seed (batch ``b`` of the stream is drawn from
``default_rng([seed, b, 2])``; with scale augmentation window ``i`` from ``default_rng([seed, i])``
and augmented with stateless ops seeded by ``i``).

No-data rule: every invalid image pixel (the source's nodata value in all bands, NaN in any
band, masked, or padding beyond a small scene) holds the model card's ``nodata`` value
(:func:`dataset_nodata`: the training scenes' nodata, else 0 for integer and NaN for float
imagery), which the model's preprocessing layer maps to 0, exactly as at inference.

Two modes: windows streamed from disk (default), or ``data.cache: true``: every scene decoded
once into memory (image in its own dtype, valid mask, rasterized labels) and windows sliced.

Labels (uint8): binary / multiclass -> (B, S, S, 1) class indices; multilabel -> (B, S, S, K)
0/1; in both, ``data.ignore_index`` (every channel) where the image is nodata or outside the scene.

Example:
    >>> train = build_dataset(train_scenes, cfg.data, training=True)
    >>> images, masks = next(iter(train))   # (B, 256, 256, C) uint16, (B, 256, 256, 1) uint8
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from rasterio.windows import Window

from ..errors import TfsegError
from .augment import augment_pair, dihedral_into, draw_dihedral
from .class_index import category_mask, compute_class_index, label_planes, sampling_probabilities
from .labels import MaskLabels, RasterizedLabels
from .raster import RasterInfo, native_dtype, read_window_view
from .sources import Scene
from .tiling import grid_windows_owned, random_window

log = logging.getLogger("tfseg.data")


class DatasetError(TfsegError):
    """Scenes cannot be built into a dataset (an empty split, bands or labels that differ or do
    not fit ``data.task``, a dtype or no-data value the tiles cannot hold); the message names
    the file or argument."""


MAX_REDRAWS = 50  # candidate windows per training window (above max_nodata_fraction: the next)
# a training window of cached scenes, drawn and judged before any pixel is copied (one int32 row)
WINDOW_FIELDS = ("scene", "col", "row", "k", "flip_cols", "flip_rows", "blank")
KEEP, IGNORE_LABEL, BLANK = 0, 1, 2  # "blank": the window as read / label all ignore / nothing read


def dataset_dtype(scenes) -> np.dtype:
    """The dtype tiles of ``scenes`` leave the pipeline in: the smallest dtype all the scenes'
    pixels fit (``numpy.result_type``: uint8 + uint16 -> uint16, uint16 + int16 -> int32)."""
    return np.result_type(*[native_dtype(s.info) for s in scenes])


def _declared_nodata(info) -> Optional[float]:
    nodata = info.nodata
    return None if nodata is None or math.isnan(nodata) else float(nodata)


def dataset_nodata(scenes, dtype=None) -> Optional[float]:
    """The raw no-data value of a training set (the model card's ``nodata``): the first scene's
    declared nodata, else 0 for integer and ``None`` (NaN) for float imagery. Scenes that
    declare a different value get a warning naming the file and both values (their no-data
    pixels are still found with their own value and written as this one)."""
    dtype = np.dtype(dtype if dtype is not None else dataset_dtype(scenes))
    nodata = _declared_nodata(scenes[0].info)
    if nodata is None and dtype.kind in "ui":
        nodata = 0.0
    for scene in scenes[1:]:
        own = _declared_nodata(scene.info)
        if own is not None and own != nodata:
            log.warning("%s: nodata value %s differs from the training scenes' %s (%s); its no-data "
                        "pixels are written as %s", scene.info.path, own, nodata, scenes[0].info.path, nodata)
    return nodata


def fill_value(nodata: Optional[float]) -> float:
    """The raw value invalid pixels hold: ``nodata``, or NaN (float imagery without one)."""
    return float("nan") if nodata is None else float(nodata)


def num_label_channels(scene) -> int:
    """1 for class-index labels, K for multi-label (one 0/1 channel per class)."""
    return int(getattr(scene.labels, "num_channels", 1))


@dataclass
class CachedScene:
    """A scene decoded into memory: ``image`` HxWxC pixel-interleaved (source dtype, invalid
    pixels -> ``fill``), ``label_image`` HxWxK uint8 (ignore where invalid) and ``valid_mask``
    HxW bool, each C-contiguous, so a training window is one strided crop + one rotate/flip per
    array straight into the batch buffers (OpenCV on whole pixels, no per-band work). ``info``
    is the source's."""

    info: RasterInfo
    image: np.ndarray
    label_image: np.ndarray
    valid_mask: np.ndarray
    name: str = ""
    labels: object = None
    ignored_table: np.ndarray = None  # (H+1)x(W+1) summed-area table of ignored label pixels
    fill: float = 0.0  # the raw value of invalid (and padding) pixels

    @property
    def size(self) -> tuple[int, int]:
        return self.info.width, self.info.height

    def ignored_count(self, window) -> int:
        """Ignored label pixels of ``window`` inside the scene, O(1) from the summed-area table."""
        col, row = int(window.col_off), int(window.row_off)
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + int(window.width), self.size[0]), min(row + int(window.height), self.size[1])
        t = self.ignored_table
        return int(t[r1, c1]) - int(t[r0, c1]) - int(t[r1, c0]) + int(t[r0, c0])

    def ignored_counts(self, cols: np.ndarray, rows: np.ndarray, size: int) -> np.ndarray:
        """Ignored label pixels inside the scene of the ``size`` x ``size`` windows at ``cols``,
        ``rows`` (arrays of any shape), vectorized over the summed-area table."""
        width, height = self.size
        c0, r0 = np.clip(cols, 0, width), np.clip(rows, 0, height)
        c1, r1 = np.clip(cols + size, 0, width), np.clip(rows + size, 0, height)
        t = self.ignored_table
        return (t[r1, c1].astype(np.int64) - t[r0, c1].astype(np.int64) - t[r1, c0].astype(np.int64)
                + t[r0, c0].astype(np.int64))

    @property
    def valid(self) -> np.ndarray:
        return self.valid_mask

    @property
    def label(self) -> np.ndarray:
        """K x H x W label planes (a view)."""
        return np.moveaxis(self.label_image, -1, 0)


def cache_scene(scene: Scene, ignore_index: int, block_rows: int = 1024, fill: float = 0.0) -> CachedScene:
    """Decode ``scene`` once (in row blocks, so no float/band-sequential copy of the whole scene);
    invalid pixels hold ``fill``."""
    if isinstance(scene, CachedScene):
        if not _same_fill(scene.fill, fill):
            raise DatasetError(f"{scene.info.path}: cached with no-data fill {scene.fill}, but the dataset "
                               f"needs {fill}")
        return scene
    info = scene.info
    dtype = native_dtype(info)
    channels = int(getattr(scene.labels, "num_channels", 1))
    image = np.zeros((info.height, info.width, info.num_bands), dtype)
    label_image = np.zeros((info.height, info.width, channels), np.uint8)
    valid = np.zeros((info.height, info.width), bool)
    for row in range(0, info.height, block_rows):
        rows = min(block_rows, info.height - row)
        window = Window(0, row, info.width, rows)
        block, ok = read_window_view(info, window, fill)
        image[row : row + rows] = block
        label = scene.labels.rasterize(window, info)
        label = label[..., None] if label.ndim == 2 else label
        label_image[row : row + rows] = np.where(ok[..., None], label, np.uint8(ignore_index))
        valid[row : row + rows] = ok
    # uint32 holds every count of a scene below 2**32 pixels
    table = np.zeros((info.height + 1, info.width + 1), np.uint32 if info.height * info.width < 2**32 else np.uint64)
    np.cumsum(label_image[..., 0] == ignore_index, axis=0, dtype=table.dtype, out=table[1:, 1:])
    np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
    return CachedScene(info, image, label_image, valid, scene.name, scene.labels, table, fill)


def _same_fill(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _slice(array: np.ndarray, window, fill, axes=(0, 1)) -> np.ndarray:
    """``array[window]`` over its row/column ``axes`` (a view when inside, else padded)."""
    col, row, width, height = int(window.col_off), int(window.row_off), int(window.width), int(window.height)
    rows_axis, cols_axis = axes
    size_rows, size_cols = array.shape[rows_axis], array.shape[cols_axis]
    index = [slice(None)] * array.ndim
    if col >= 0 and row >= 0 and col + width <= size_cols and row + height <= size_rows:
        index[rows_axis], index[cols_axis] = slice(row, row + height), slice(col, col + width)
        return array[tuple(index)]
    shape = list(array.shape)
    shape[rows_axis], shape[cols_axis] = height, width
    out = np.full(shape, fill, array.dtype)
    c0, r0 = max(col, 0), max(row, 0)
    c1, r1 = min(col + width, size_cols), min(row + height, size_rows)
    if c1 > c0 and r1 > r0:
        src, dst = list(index), list(index)
        src[rows_axis], src[cols_axis] = slice(r0, r1), slice(c0, c1)
        dst[rows_axis], dst[cols_axis] = slice(r0 - row, r1 - row), slice(c0 - col, c1 - col)
        out[tuple(dst)] = array[tuple(src)]
    return out


def _tile_parts(scene, window, ignore_index: int, fill=0, count_ignored: bool = True):
    """One window, not yet copied: image (S, S, C) in the source dtype (invalid -> ``fill``),
    a view of the cache or of a band-sequential read; label (S, S, K) uint8 (``ignore_index``
    where invalid or outside the scene); valid (S, S) bool; and the ignored fraction of the label
    inside the scene's extent (cached scenes: None unless ``count_ignored``)."""
    if isinstance(scene, CachedScene):
        ignored = None
        if count_ignored:
            inside = _inside_pixels(window, scene.size)
            ignored = scene.ignored_count(window) / inside if inside else 1.0
        return (_slice(scene.image, window, scene.fill), _slice(scene.label_image, window, ignore_index),
                _slice(scene.valid_mask, window, False), ignored)
    # band-sequential: the read GDAL serves fastest from its block cache; the tile is
    # interleaved in the same copy that rotates it into the batch (augment.dihedral_into)
    image, valid = read_window_view(scene.info, window, fill)
    labels = scene.labels
    view = labels.window_view(window) if isinstance(labels, RasterizedLabels) else None
    if view is None:
        label = labels.rasterize(window, scene.info)
        view = label[..., None] if label.ndim == 2 else label
    if not valid.all():
        view = np.where(valid[..., None], view, np.uint8(ignore_index))
    return image, view, valid, ignored_fraction(view[..., 0], window, scene.size, ignore_index)


def _inside_pixels(window, size) -> int:
    col, row = int(window.col_off), int(window.row_off)
    c0, r0 = max(col, 0), max(row, 0)
    c1, r1 = min(col + int(window.width), size[0]), min(row + int(window.height), size[1])
    return max(c1 - c0, 0) * max(r1 - r0, 0)


def ignored_fraction(label0: np.ndarray, window, size, ignore_index: int) -> float:
    """Share of ignored pixels of label plane ``label0`` (S, S) inside the scene's extent
    (padding beyond a small scene is not counted)."""
    col, row = int(window.col_off), int(window.row_off)
    c0, r0 = max(col, 0), max(row, 0)
    c1, r1 = min(col + int(window.width), size[0]), min(row + int(window.height), size[1])
    if c1 <= c0 or r1 <= r0:
        return 1.0
    part = label0[r0 - row : r1 - row, c0 - col : c1 - col]
    return np.count_nonzero(part == ignore_index) / part.size


def _write_tile(scene, window, ignore_index: int, image_out, label_out, dihedral=(0, False, False), fill=0,
                valid_out=None, count_ignored: bool = True) -> Optional[float]:
    """Write one window into ``image_out`` (S, S, C) (source dtype, invalid -> ``fill``) and
    ``label_out`` (S, S, K) uint8, rotated/flipped by ``dihedral`` while copied: one copy per
    array, straight into the batch buffers; ``valid_out`` (S, S) uint8 gets the valid mask when
    given. Returns the ignored fraction (see :func:`_tile_parts`)."""
    own_fill = _own_fill(fill, scene.info)
    image, label, valid, ignored = _tile_parts(scene, window, ignore_index, own_fill, count_ignored)
    dihedral_into(image, *dihedral, image_out)
    dihedral_into(label, *dihedral, label_out)
    if valid_out is not None or own_fill is not fill:
        out = valid_out if valid_out is not None else np.empty(image_out.shape[:2], np.uint8)
        dihedral_into(valid.view(np.uint8)[..., None], *dihedral, out[..., None])
        if own_fill is not fill:
            image_out[out == 0] = fill
    return ignored


def _own_fill(fill: float, info) -> float:
    """The fill a scene's own dtype holds: ``fill``, else 0 (e.g. int16 nodata -9999 in a uint8
    scene; the tile's invalid pixels get ``fill`` once copied into the dataset's dtype)."""
    key = ("nan" if math.isnan(fill) else float(fill), str(info.dtype))  # NaN != NaN: one key for it
    own = _OWN_FILLS.get(key)
    if own is None:
        own = _OWN_FILLS[key] = fill if fits_dtype(fill, native_dtype(info)) else 0.0
    return fill if own is fill or _same_fill(own, fill) else own


_OWN_FILLS: dict = {}


def fits_dtype(value: float, dtype) -> bool:
    """Whether ``value`` (a fill / nodata value) is stored exactly in ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return True
    return not math.isnan(value) and float(value).is_integer() and np.iinfo(dtype).min <= value <= np.iinfo(dtype).max


def _read_raw_tile(scene, window, ignore_index: int, augment=None, seed: int = 0, index: int = 0, fill=0,
                   dtype=None):
    """Image (S, S, C) in ``dtype`` (the dataset's; default the source dtype, promoted when it
    cannot hold ``fill``) with invalid pixels = ``fill``, label (S, S, K) uint8, valid (S, S)
    uint8 and the ignored fraction. With ``augment`` the tile is rotated/flipped
    (deterministically from ``seed``, ``index``) while it is copied: one copy per tile."""
    size = int(window.width), int(window.height)
    image = np.empty((size[1], size[0], scene.info.num_bands), tile_dtype(scene.info, fill, dtype))
    label = np.empty((size[1], size[0], num_label_channels(scene)), np.uint8)
    valid = np.empty((size[1], size[0]), np.uint8)
    dihedral = draw_dihedral(augment, seed, index) if augment is not None else (0, False, False)
    ignored = _write_tile(scene, window, ignore_index, image, label, dihedral, fill, valid)
    return image, label, valid, ignored


def tile_dtype(info, fill: float, dtype=None) -> np.dtype:
    """``dtype`` when given, else ``info``'s source dtype, promoted to the smallest one that also
    holds ``fill`` (e.g. int32 for a uint16 scene with fill -9999, float32 with a NaN fill)."""
    if dtype is not None:
        return np.dtype(dtype)
    own = native_dtype(info)
    if fits_dtype(fill, own):
        return own
    integer = not math.isnan(fill) and float(fill).is_integer()
    return np.result_type(own, np.min_scalar_type(int(fill)) if integer else np.float32)


def prepare_labels(scenes, budget_pixels: int) -> list:
    """Rasterize vector / colour labels of whole scenes into memory while they fit the budget."""
    out, used = [], 0
    for scene in scenes:
        labels = getattr(scene, "labels", None)
        if isinstance(scene, CachedScene) or isinstance(labels, (MaskLabels, RasterizedLabels)):
            out.append(scene)
            continue
        pixels = scene.info.width * scene.info.height * int(getattr(labels, "num_channels", 1))
        if used + pixels > budget_pixels:
            out.append(scene)
            continue
        used += pixels
        out.append(Scene(scene.info, RasterizedLabels.of(labels, scene.info), scene.name))
    return out


def read_tile(scene, window, ignore_index: int, fill=0, dtype=None):
    """Raw image (invalid pixels -> ``fill``) and uint8 label (nodata -> ignore) for one window,
    as the pipeline emits them. The image is in ``dtype`` (the dataset's, e.g. the run's band
    dtype), by default the source dtype, promoted when it cannot hold ``fill`` (:func:`tile_dtype`).

    The label is HxW for class-index labels and HxWxK for multi-label ones.
    """
    image, label, _, _ = _read_raw_tile(scene, window, ignore_index, fill=fill, dtype=dtype)
    return image, (label[..., 0] if num_label_channels(scene) == 1 else label)


class _RandomSampler:
    """Window ``i`` of the training stream, drawn deterministically from ``(seed, i)``.

    ``data.sampling: uniform`` places windows uniformly (scenes in proportion to their area);
    ``balanced`` first draws the class of the window's centre pixel from the class index
    (:func:`tfseg.data.class_index.sampling_probabilities`, ``data.balance_alpha``), then a scene
    and a cell holding that class in proportion to its pixels, then one of its pixels, and
    centres the window there (shifted to stay inside the scene near its edges).
    ``data.oversample_class`` is the special case of one class: a share
    ``data.oversample_fraction`` of the windows is centred on a pixel of that class.
    Windows above ``max_nodata_fraction`` are redrawn (up to 50 times; a scene region that is
    nearly all nodata then yields an all-ignore tile, which contributes nothing to the loss).
    """

    def __init__(self, scenes, data_cfg, seed, multilabel, dtype, fill, class_index=None):
        self.scenes, self.cfg, self.seed = scenes, data_cfg, seed
        self.sizes = [s.size for s in scenes]
        self.multilabel = multilabel
        self.dtype, self.pixel_fill = dtype, fill
        self.cached = all(isinstance(s, CachedScene) for s in scenes)
        self.index, self.probabilities, self.oversample = None, None, -1
        balanced = data_cfg.sampling == "balanced"
        if not balanced and data_cfg.oversample_class < 0:
            return
        self.index = class_index if class_index is not None else compute_class_index(scenes, data_cfg)
        self.index.check_scenes(scenes)
        totals = self.index.totals
        # P(scene | centre category), per category (0 where the category is absent)
        self.scene_probabilities = self.index.counts / np.maximum(totals, 1)
        if balanced:
            self.probabilities = sampling_probabilities(self.index, data_cfg.balance_alpha)
        if data_cfg.oversample_class >= 0:
            target = data_cfg.oversample_class
            if target >= len(self.index.categories) or totals[target] == 0:
                name = self.index.categories[target] if target < len(self.index.categories) else "?"
                log.warning("data.oversample_class %d (%s) never occurs in the training labels: no window is "
                            "centred on it (the windows it would have had are drawn by data.sampling=%s)",
                            target, name, data_cfg.sampling)
            else:
                self.oversample = target

    def _centred_window(self, category: int, rng):
        """A window centred on a pixel of ``category`` (None when the drawn cell holds none of
        it in the labels the pipeline reads: ignored under image nodata, streamed or cached)."""
        scene_index = int(rng.choice(len(self.scenes), p=self.scene_probabilities[:, category]))
        col0, row0, col1, row1 = self.index.draw_cell(scene_index, category, rng)
        planes = label_planes(self.scenes[scene_index], Window(col0, row0, col1 - col0, row1 - row0),
                              self.cfg.ignore_index)
        hits = np.flatnonzero(category_mask(planes, category, self.multilabel))
        if not hits.size:
            return None
        row, col = divmod(int(hits[rng.integers(hits.size)]), col1 - col0)
        size = self.cfg.window_size
        width, height = self.sizes[scene_index]
        col = min(max(col0 + col - size // 2, 0), max(width - size, 0))
        row = min(max(row0 + row - size // 2, 0), max(height - size, 0))
        return scene_index, Window(col, row, size, size)

    def _start(self, index, rng):
        """The rotation/flip and the centre class (None: uniform) of window ``index``."""
        cfg = self.cfg
        # rot90/flips while the tile is copied (with scale: after the resize, in tf)
        flips = self._flips()
        dihedral = draw_dihedral(flips, self.seed, index, rng) if flips is not None else (0, False, False)
        centre = None
        if cfg.oversample_class >= 0 and rng.random() < cfg.oversample_fraction and self.oversample >= 0:
            centre = self.oversample
        elif self.probabilities is not None:
            centre = int(rng.choice(len(self.probabilities), p=self.probabilities))
        return dihedral, centre

    def _candidates(self, centre, rng):
        """Up to ``MAX_REDRAWS`` candidate ``(scene_index, window)`` in drawing order (None: a
        centred draw that found no pixel of its class)."""
        for _ in range(MAX_REDRAWS):
            yield (random_window(self.sizes, self.cfg.window_size, rng) if centre is None
                   else self._centred_window(centre, rng))

    def fill(self, index, image_out, label_out, rng, valid_out=None) -> None:
        """Write window ``index`` into ``image_out`` (S, S, C) and ``label_out`` (S, S, K) (and
        the valid mask into ``valid_out`` (S, S) when given), drawn from ``rng`` (a batch's
        generator, or the window's own)."""
        cfg = self.cfg
        dihedral, centre = self._start(index, rng)
        read = False
        for drawn in self._candidates(centre, rng):
            if drawn is None:
                continue
            scene_index, window = drawn
            ignored = _write_tile(self.scenes[scene_index], window, cfg.ignore_index, image_out, label_out,
                                  dihedral, self.pixel_fill, valid_out)
            read = True
            if ignored <= cfg.max_nodata_fraction:
                return
        if not read:
            image_out[...] = self.pixel_fill
            if valid_out is not None:
                valid_out[...] = 0
        label_out[...] = cfg.ignore_index

    def draw(self, index, rng) -> tuple:
        """Window ``index`` of cached scenes as a :data:`WINDOW_FIELDS` row, judged from their
        summed-area tables without reading a pixel (the window :meth:`fill` writes)."""
        dihedral, centre = self._start(index, rng)
        last = None
        for drawn in self._candidates(centre, rng):
            if drawn is None:
                continue
            last = drawn
            scene_index, window = drawn
            scene = self.scenes[scene_index]
            inside = _inside_pixels(window, scene.size)
            if (scene.ignored_count(window) / inside if inside else 1.0) <= self.cfg.max_nodata_fraction:
                return (scene_index, int(window.col_off), int(window.row_off), *dihedral, KEEP)
        if last is None:
            return (0, 0, 0, *dihedral, BLANK)
        return (last[0], int(last[1].col_off), int(last[1].row_off), *dihedral, IGNORE_LABEL)

    def _flips(self):
        aug = self.cfg.augment
        return None if aug.scale or not (aug.flip or aug.rot90) else aug

    def _uniform_candidates(self, batch: int, rng):
        """A batch's uniform draw: per window a rotation/flip (``ks`` (B,), ``flips`` (B, 2))
        and ``MAX_REDRAWS`` candidates (``which`` scene, ``cols``, ``rows``, each (B, R))."""
        size = self.cfg.window_size
        aug = self._flips()
        ks = rng.integers(0, 4, batch) if aug is not None and aug.rot90 else np.zeros(batch, int)
        flips = rng.random((batch, 2)) < 0.5 if aug is not None and aug.flip else np.zeros((batch, 2), bool)
        widths, heights = (np.array(v) for v in zip(*self.sizes))
        if len(self.sizes) == 1:
            which = np.zeros((batch, MAX_REDRAWS), int)
        else:
            areas = np.cumsum(widths.astype(float) * heights)
            which = np.minimum(np.searchsorted(areas, rng.random((batch, MAX_REDRAWS)) * areas[-1], side="right"),
                               len(self.sizes) - 1)
        cols = rng.integers(0, np.maximum(widths - size, 0)[which] + 1)
        rows = rng.integers(0, np.maximum(heights - size, 0)[which] + 1)
        return ks, flips, which, cols, rows

    def _sampled_per_window(self) -> bool:
        return self.probabilities is not None or self.cfg.oversample_class >= 0

    def fill_batch(self, b: int, image_out, label_out) -> None:
        """Write batch ``b`` (windows ``b * B`` .. ``b * B + B - 1``, all drawn from
        ``default_rng([seed, b, 2])``) into ``image_out`` (B, S, S, C) and ``label_out``
        (B, S, S, K).

        Uniform sampling draws the whole batch at once: per window a rotation/flip and
        ``MAX_REDRAWS`` candidate windows (scene by area, offset uniform), read in turn; the first
        at or below ``max_nodata_fraction`` is the window. Cached scenes: the same windows, judged
        all at once (:meth:`batch_windows`) and then copied (:meth:`write_windows`)."""
        batch = image_out.shape[0]
        if self.cached:
            self.write_windows(self.batch_windows(b, batch), image_out, label_out)
            return
        rng = np.random.default_rng([self.seed, int(b), 2])  # ~40 us each: one per batch
        if self._sampled_per_window():
            for j in range(batch):
                self.fill(int(b) * batch + j, image_out[j], label_out[j], rng)
            return
        cfg, size = self.cfg, self.cfg.window_size
        ks, flips, which, cols, rows = self._uniform_candidates(batch, rng)
        for j in range(batch):
            dihedral = (int(ks[j]), bool(flips[j, 0]), bool(flips[j, 1]))
            for r in range(MAX_REDRAWS):
                window = Window(int(cols[j, r]), int(rows[j, r]), size, size)
                ignored = _write_tile(self.scenes[which[j, r]], window, cfg.ignore_index, image_out[j],
                                      label_out[j], dihedral, self.pixel_fill)
                if ignored <= cfg.max_nodata_fraction:
                    break
            else:
                label_out[j] = cfg.ignore_index

    def write_windows(self, table: np.ndarray, image_out, label_out) -> None:
        """Copy the windows of a :meth:`batch_windows` table of cached scenes into the batch
        buffers, each rotated/flipped in its one copy (a window inside its scene straight from
        the cache's views, the hot path; others, e.g. past a small scene's edge, through
        :func:`_write_tile`)."""
        size, ignore, fill = self.cfg.window_size, self.cfg.ignore_index, self.pixel_fill
        for j, (k, col, row, turns, flip_cols, flip_rows, blank) in enumerate(table.tolist()):
            scene = self.scenes[k]
            dihedral = (turns, flip_cols, flip_rows)
            if blank == BLANK:
                image_out[j] = fill
            elif (col + size <= scene.image.shape[1] and row + size <= scene.image.shape[0]
                  and _same_fill(scene.fill, fill)):
                dihedral_into(scene.image[row : row + size, col : col + size], *dihedral, image_out[j])
                if blank == KEEP:
                    dihedral_into(scene.label_image[row : row + size, col : col + size], *dihedral, label_out[j])
            else:
                _write_tile(scene, Window(col, row, size, size), ignore, image_out[j], label_out[j], dihedral,
                            fill, count_ignored=False)
            if blank != KEEP:
                label_out[j] = ignore

    def batch_windows(self, b: int, batch: int) -> np.ndarray:
        """Batch ``b`` of cached scenes as a (B, len(WINDOW_FIELDS)) int32 table, the windows
        :meth:`fill_batch` writes, judged without reading a pixel (uniform sampling: all
        candidates at once from the summed-area tables)."""
        rng = np.random.default_rng([self.seed, int(b), 2])
        if self._sampled_per_window():
            return np.array([self.draw(int(b) * batch + j, rng) for j in range(batch)], np.int32)
        size = self.cfg.window_size
        ks, flips, which, cols, rows = self._uniform_candidates(batch, rng)
        ignored = np.empty(which.shape)
        for k, scene in enumerate(self.scenes):
            at = which == k
            width, height = self.sizes[k]
            ignored[at] = scene.ignored_counts(cols[at], rows[at], size) / (min(size, width) * min(size, height))
        passing = ignored <= self.cfg.max_nodata_fraction
        found = passing.any(axis=1)
        # the first passing candidate; none passing: the last one, all labels ignored
        chosen = np.where(found, np.argmax(passing, axis=1), MAX_REDRAWS - 1)
        pick = np.arange(batch), chosen
        return np.stack([which[pick], cols[pick], rows[pick], ks, flips[:, 0], flips[:, 1],
                         np.where(found, KEEP, IGNORE_LABEL)], axis=1).astype(np.int32)

    def __call__(self, index):
        size, scene = self.cfg.window_size, self.scenes[0]
        image = np.empty((size, size, scene.info.num_bands), self.dtype)
        label = np.empty((size, size, num_label_channels(scene)), np.uint8)
        valid = np.empty((size, size), np.uint8)
        self.fill(index, image, label, np.random.default_rng([self.seed, int(index)]), valid)
        return image, np.concatenate([label, valid[..., None]], axis=-1)


def aligned_empty(shape, dtype, align: int = 64) -> np.ndarray:
    """``np.empty`` aligned to ``align`` bytes: TensorFlow takes such an array returned by a
    ``numpy_function`` without copying it."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


@dataclass(frozen=True)
class _Layout:
    """What every dataset mode of :func:`build_dataset` shares: tile and batch shape, the
    tiles' dtype and fill, tf.data parallelism."""

    size: int
    bands: int
    channels: int
    batch: int
    dtype: np.dtype
    fill: float
    parallel: int

    @property
    def spec(self):
        return tf.as_dtype(self.dtype), tf.uint8


def build_dataset(
    scenes: Sequence[Scene],
    data_cfg,
    training: bool,
    seed: Optional[int] = None,
    batch_size: Optional[int] = None,
    drop_remainder: bool = False,
    nodata="auto",
    class_index=None,
    dtype=None,
) -> tf.data.Dataset:
    """Batches of ``(image, label)``: image (B, S, S, C) in the source dtype
    (:func:`dataset_dtype`, or ``dtype`` when given: a validation split takes the training
    scenes' dtype, the model's input; every scene's dtype must cast to it safely), label uint8
    (B, S, S, K).

    Training streams an endless sequence of random windows; evaluation a finite grid over every
    scene with ``data.eval_overlap``, whose labels are ``ignore_index`` where a neighbour tile
    owns the overlap (split at its middle), so metrics and loss count every pixel once. K = 1
    (class indices, ``ignore_index`` on nodata) for binary/multiclass, K = number of classes (0/1, ``ignore_index`` in every channel on nodata)
    for multilabel. Invalid image pixels (nodata, NaN, padding beyond scenes smaller than the
    window) hold ``nodata`` (the model card's value; ``"auto"``: :func:`dataset_nodata` of
    ``scenes``; ``None``: NaN, float imagery only), their labels ``ignore_index``.
    ``class_index`` (:func:`tfseg.data.class_index.compute_class_index` of ``scenes``) drives
    balanced sampling and ``oversample_class``; computed here when needed and not given.
    """
    if not scenes:
        raise DatasetError("build_dataset: no scenes given (empty training or validation split)")
    cfg = data_cfg
    seed = cfg.seed if seed is None else seed
    channels = _check_scenes(scenes, cfg)
    raw_dtype = dataset_dtype(scenes) if dtype is None else _checked_dtype(scenes, dtype)
    fill = _dataset_fill(scenes, raw_dtype, nodata)
    if training and class_index is None and (cfg.sampling == "balanced" or cfg.oversample_class >= 0):
        # from the labels as stored, before caching (whose labels are ignore under nodata): the same
        # index, hence the same windows, streamed or cached
        class_index = compute_class_index(scenes, cfg)
    if cfg.cache:
        # a fill the scene's own dtype cannot hold is written when the tile is copied
        scenes = [cache_scene(s, cfg.ignore_index, fill=fill if fits_dtype(fill, native_dtype(s.info)) else 0.0)
                  for s in scenes]
    else:
        scenes = prepare_labels(scenes, cfg.label_cache_mpix * 1_000_000)
    layout = _Layout(
        size=cfg.window_size, bands=scenes[0].info.num_bands, channels=channels,
        batch=batch_size or cfg.batch_size, dtype=raw_dtype, fill=fill,
        parallel=tf.data.AUTOTUNE if cfg.num_parallel_calls < 0 else cfg.num_parallel_calls,
    )
    if not training:
        return _evaluation_grid(scenes, cfg, layout, drop_remainder)
    sampler = _RandomSampler(scenes, cfg, seed, cfg.task == "multilabel", raw_dtype, fill, class_index)
    if cfg.augment.scale:
        return _training_tiles(sampler, cfg, layout, seed, drop_remainder)
    return _training_batches(sampler, layout)


def _check_scenes(scenes, cfg) -> int:
    """The label channel count of ``scenes``, after checking it against ``data.task`` and that
    every scene has the first one's bands."""
    channels = num_label_channels(scenes[0])
    multilabel = cfg.task == "multilabel"
    if multilabel and channels != len(cfg.classes):
        raise DatasetError(
            f"data.task is multilabel with {len(cfg.classes)} classes, but the labels of "
            f"{scenes[0].info.path} have {channels} channel(s)"
        )
    if not multilabel and channels != 1:
        raise DatasetError(
            f"labels of {scenes[0].info.path} have {channels} channels (multi-label); "
            "set data.task: multilabel"
        )
    bands = scenes[0].info.num_bands
    for scene in scenes:
        if scene.info.num_bands != bands:
            raise DatasetError(
                f"{scene.info.path}: {scene.info.num_bands} band(s), but {scenes[0].info.path} has "
                f"{bands}; all scenes of a dataset must have the same bands"
            )
    return channels


def _checked_dtype(scenes, dtype) -> np.dtype:
    """``dtype`` (the tiles' dtype asked of :func:`build_dataset`), after checking that every
    scene's pixels cast to it without loss."""
    dtype = np.dtype(dtype)
    for scene in scenes:
        own = native_dtype(scene.info)
        if not np.can_cast(own, dtype, "safe"):
            raise DatasetError(
                f"{scene.info.path}: {own} pixels cannot be held by the tiles' dtype {dtype} (the training "
                f"scenes' dtype, the model's input) without loss; store the scene as {dtype} or as a dtype "
                "that casts to it"
            )
    return dtype


def _dataset_fill(scenes, raw_dtype, nodata) -> float:
    """The value invalid pixels hold in the tiles (``nodata`` as :func:`build_dataset` takes it)."""
    if isinstance(nodata, str):
        if nodata != "auto":
            raise DatasetError(f"build_dataset: nodata must be a number, None or 'auto', got {nodata!r}")
        nodata = dataset_nodata(scenes, raw_dtype)
    fill = fill_value(nodata)
    if not fits_dtype(fill, raw_dtype):
        raise DatasetError(f"build_dataset: no-data value {nodata} cannot be stored in the tiles' dtype "
                           f"{raw_dtype} ({scenes[0].info.path})")
    return fill


def _training_batches(sampler, layout: _Layout) -> tf.data.Dataset:
    """Endless training batches, each written whole by one numpy call: batch b holds windows
    b*B .. b*B+B-1 (the same windows as one per call), with far less per-element tf.data
    overhead. Flips and turns happen in the sampler."""
    shape = (layout.batch, layout.size, layout.size)

    def sample_batch(b):  # each tile written straight into the batch buffers
        image = aligned_empty((*shape, layout.bands), layout.dtype)
        label = aligned_empty((*shape, layout.channels), np.uint8)
        sampler.fill_batch(int(b), image, label)
        return image, label

    def batch_of(b):
        image, mask = tf.numpy_function(sample_batch, [b], layout.spec, stateful=False)
        image.set_shape([*shape, layout.bands])
        mask.set_shape([*shape, layout.channels])
        return image, mask

    ds = tf.data.Dataset.counter().map(batch_of, num_parallel_calls=layout.parallel, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def _training_tiles(sampler, cfg, layout: _Layout, seed: int, drop_remainder: bool) -> tf.data.Dataset:
    """Endless training tiles for random scale augmentation: each tile is read with its valid
    mask as an extra label channel, resized, cropped and flipped in tf, then batched."""
    size, bands = layout.size, layout.bands

    def tile(j):
        image, mask = sampler(j)
        return image.astype(layout.dtype, copy=False), mask

    def set_shapes(i, image, mask):
        image.set_shape([size, size, bands])
        mask.set_shape([size, size, layout.channels + 1])
        return i, image, mask

    ds = tf.data.Dataset.counter()
    ds = ds.map(
        lambda i: (i, *tf.numpy_function(tile, [i], layout.spec, stateful=False)),
        num_parallel_calls=layout.parallel,
        deterministic=True,
    ).map(set_shapes)
    ds = ds.map(  # per-tile resize + flips in tf (labels nearest), then batches
        lambda i, image, mask: _scale_and_flip(i, image, mask, cfg.augment, size, cfg.ignore_index, seed,
                                               layout.fill),
        num_parallel_calls=layout.parallel,
        deterministic=True,
    )
    return ds.batch(layout.batch, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def _evaluation_grid(scenes, cfg, layout: _Layout, drop_remainder: bool) -> tf.data.Dataset:
    """The finite grid of evaluation tiles over every scene (``data.eval_overlap``), labels
    ignored where a neighbour tile owns the overlap; tiles above ``data.max_nodata_fraction``
    (padding beyond small scenes not counted) are skipped."""
    ignore, max_ignored = cfg.ignore_index, cfg.max_nodata_fraction
    windows = [(k, w, owned) for k, s in enumerate(scenes)
               for w, owned in grid_windows_owned(*s.size, layout.size, cfg.eval_overlap)]

    def read(i):
        k, window, (r0, r1, c0, c1) = windows[int(i)]
        image, labels, _, ignored = _read_raw_tile(scenes[k], window, ignore, fill=layout.fill, dtype=layout.dtype)
        # score each pixel once: the part of the overlap owned by a neighbour tile is ignored
        # (the label only: the model still sees the whole tile, nodata handling is unchanged)
        owned = np.zeros(labels.shape[:2], bool)
        owned[r0:r1, c0:c1] = True
        if not owned.all():
            labels[~owned] = ignore
        return image, labels, np.bool_(ignored <= max_ignored)

    ds = tf.data.Dataset.range(len(windows))
    ds = ds.map(
        lambda i: tf.numpy_function(read, [i], (*layout.spec, tf.bool), stateful=False),
        num_parallel_calls=layout.parallel,
        deterministic=True,
    )
    ds = ds.filter(lambda image, mask, keep: keep).map(
        lambda image, mask, keep: _shaped(image, mask, layout.size, layout.bands, layout.channels))
    return ds.batch(layout.batch, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def _shaped(image, mask, size: int, bands: int, channels: int):
    image.set_shape([size, size, bands])
    mask.set_shape([size, size, channels])
    return image, mask


def _scale_and_flip(index, image, mask, aug, size: int, ignore_index: int, seed: int, fill: float):
    """Random scale + crop and flips of one tile in tf (labels nearest); the image comes back in
    its own dtype with every invalid pixel (nodata, resampled next to it, padding) = ``fill``."""
    dtype = image.dtype
    valid = mask[..., -1:] > 0
    image = tf.where(valid, tf.cast(image, tf.float32), 0.0)  # no NaN fill smeared by the resize
    image, mask = augment_pair(index, image, mask, aug, size, ignore_index, seed, valid_channel=True)
    image = tf.where(mask[..., -1:] > 0, image, tf.constant(fill, tf.float32))
    if dtype.is_integer:
        image = tf.round(image)
    return tf.cast(image, dtype), mask[..., :-1]
