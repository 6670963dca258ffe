"""tf.data pipelines of tiles: random windows for training, a grid with overlap for evaluation.

Windows are read (rasterio, one handle per thread) and normalized in a parallel ``map``; tiles
above ``max_nodata_fraction`` are skipped; augmentation is paired tf ops on image and label.
Everything is deterministic for a given seed (window ``i`` of the stream is drawn from
``default_rng([seed, i])`` and augmented with stateless ops seeded by ``i``).

Two modes: windows streamed from disk (default), or ``data.cache: true``: every scene decoded
once into memory (image in its own dtype, valid mask, rasterized labels) and windows sliced.

Labels: binary / multiclass -> (B, S, S, 1) class indices; multilabel -> (B, S, S, K) 0/1; in
both, ``data.ignore_index`` (every channel) where the image is nodata or outside the scene.

Example:
    >>> train = build_dataset(train_scenes, norm, cfg.data, training=True)
    >>> images, masks = next(iter(train))   # (B, 256, 256, C) float32, (B, 256, 256, 1) float32
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from rasterio.windows import Window

from .augment import augment_pair, dihedral_into, draw_dihedral, photometric_flat
from .labels import MaskLabels, RasterizedLabels
from .raster import Normalization, RasterInfo, native_dtype, read_window_interleaved, read_window_view
from .sources import Scene
from .tiling import grid_windows_owned, random_window


def _normalize(image: np.ndarray, valid: np.ndarray, norm: Normalization) -> np.ndarray:
    out = norm.apply(image).astype(np.float32)
    out[~valid] = 0.0
    return out


def num_label_channels(scene) -> int:
    """1 for class-index labels, K for multi-label (one 0/1 channel per class)."""
    return int(getattr(scene.labels, "num_channels", 1))


@dataclass
class CachedScene:
    """A scene decoded into memory, pixel-interleaved: ``image`` HxWxC (source dtype, nodata ->
    0) and ``mask`` HxWx(K+1) uint8: K label channels (ignore where invalid) then the valid-pixel
    mask. A training window is then one strided crop + one rotate/flip into the batch buffer
    (OpenCV on the interleaved pixels), no per-band work. ``info`` is the source's."""

    info: RasterInfo
    image: np.ndarray
    mask: np.ndarray
    name: str = ""
    labels: object = None
    ignored_table: np.ndarray = None  # (H+1)x(W+1) summed-area table of ignored label pixels

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

    @property
    def valid(self) -> np.ndarray:
        return self.mask[..., -1] > 0

    @property
    def label(self) -> np.ndarray:
        """K x H x W label planes (a view)."""
        return np.moveaxis(self.mask[..., :-1], -1, 0)


def cache_scene(scene: Scene, ignore_index: int, block_rows: int = 1024) -> CachedScene:
    """Decode ``scene`` once (in row blocks, so no float/band-sequential copy of the whole scene)."""
    if isinstance(scene, CachedScene):
        return scene
    info = scene.info
    dtype = native_dtype(info)
    channels = int(getattr(scene.labels, "num_channels", 1))
    image = np.zeros((info.height, info.width, info.num_bands), dtype)
    mask = np.zeros((info.height, info.width, channels + 1), np.uint8)
    for row in range(0, info.height, block_rows):
        rows = min(block_rows, info.height - row)
        window = Window(0, row, info.width, rows)
        block, ok = read_window_view(info, window)
        image[row : row + rows] = block
        label = scene.labels.rasterize(window, info)
        label = label[..., None] if label.ndim == 2 else label
        mask[row : row + rows, :, :-1] = np.where(ok[..., None], label, np.uint8(ignore_index))
        mask[row : row + rows, :, -1] = ok
    table = np.zeros((info.height + 1, info.width + 1), np.uint32 if info.height * info.width < 2**32 else np.uint64)
    np.cumsum(mask[..., 0] == ignore_index, axis=0, dtype=table.dtype, out=table[1:, 1:])
    np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
    return CachedScene(info, image, mask, scene.name, scene.labels, table)


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


def _padded_mask(scene: CachedScene, window, ignore_index: int) -> np.ndarray:
    """The cached label + valid channels of ``window`` (padding: label ignore, valid 0)."""
    view = _slice(scene.mask, window, 0)
    if view.base is None:  # padded copy: outside the scene the label is ignore
        col, row = int(window.col_off), int(window.row_off)
        inside = np.zeros(view.shape[:2], bool)
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + view.shape[1], scene.size[0]), min(row + view.shape[0], scene.size[1])
        if c1 > c0 and r1 > r0:
            inside[r0 - row : r1 - row, c0 - col : c1 - col] = True
        view[..., :-1][~inside] = ignore_index
    return view


def _tile_views(scene, window, ignore_index: int):
    """Image (S, S, C) in the source dtype (nodata -> 0), as an interleaved view of the cache or
    as C band planes of a read; mask (S, S, K + 1) uint8 (labels with ignore where invalid,
    then the valid mask); and the ignored fraction of the label inside the scene's extent."""
    if isinstance(scene, CachedScene):
        inside = _inside_pixels(window, scene.size)
        ignored = scene.ignored_count(window) / inside if inside else 1.0
        return _slice(scene.image, window, 0), _padded_mask(scene, window, ignore_index), ignored
    image, valid = read_window_interleaved(scene.info, window)
    labels = scene.labels
    channels = num_label_channels(scene)
    mask = np.empty((*valid.shape, channels + 1), np.uint8)
    view = labels.window_view(window) if isinstance(labels, RasterizedLabels) else None
    if view is None:
        label = labels.rasterize(window, scene.info)
        view = label[..., None] if label.ndim == 2 else label
    all_valid = bool(valid.all())
    if all_valid:  # the common case: labels as they are, counted on their own view
        mask[..., :-1] = view
        ignored = ignored_fraction(view[..., 0], window, scene.size, ignore_index)
    else:
        mask[..., :-1] = np.where(valid[..., None], view, np.uint8(ignore_index))
        ignored = ignored_fraction(mask[..., 0], window, scene.size, ignore_index)
    mask[..., -1] = valid
    return image, mask, ignored


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


def _read_raw_tile_into(scene, window, ignore_index: int, image_out, mask_out, dihedral=(0, False, False)):
    """Write one window into ``image_out`` (S, S, C) (source dtype, nodata -> 0) and
    ``mask_out`` (S, S, K + 1) uint8 (labels, then valid), rotated/flipped by ``dihedral`` while
    copied: one copy per tile, straight into the batch buffer. Returns the ignored fraction."""
    image, mask, ignored = _tile_views(scene, window, ignore_index)
    dihedral_into(image, *dihedral, image_out)
    dihedral_into(mask, *dihedral, mask_out)
    return ignored


def _read_raw_tile(scene, window, ignore_index: int, augment=None, seed: int = 0, index: int = 0):
    """Image (S, S, C) in the source dtype (nodata -> 0), label + valid (S, S, K + 1) uint8,
    and the ignored fraction. With ``augment`` the tile is rotated/flipped (deterministically
    from ``seed``, ``index``) while it is copied: one copy per tile."""
    size = int(window.width), int(window.height)
    image = np.empty((size[1], size[0], scene.info.num_bands), native_dtype(scene.info))
    mask = np.empty((size[1], size[0], num_label_channels(scene) + 1), np.uint8)
    dihedral = draw_dihedral(augment, seed, index) if augment is not None else (0, False, False)
    ignored = _read_raw_tile_into(scene, window, ignore_index, image, mask, dihedral)
    return image, mask, ignored


def _read_tile_channels(scene, window, norm: Normalization, ignore_index: int):
    """Normalized image (S, S, C) float32 and label (S, S, K) uint8 for one window."""
    image, mask, _ = _read_raw_tile(scene, window, ignore_index)
    valid = mask[..., -1] > 0
    return _normalize(image.astype(np.float32), valid, norm), np.ascontiguousarray(mask[..., :-1])


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


def read_tile(scene, window, norm: Normalization, ignore_index: int):
    """Normalized image (nodata -> 0) and uint8 label (nodata -> ignore) for one window.

    The label is HxW for class-index labels and HxWxK for multi-label ones.
    """
    image, mask = _read_tile_channels(scene, window, norm, ignore_index)
    return image, (mask[..., 0] if num_label_channels(scene) == 1 else mask)


def _has_class(mask: np.ndarray, target: int, multilabel: bool) -> bool:
    if multilabel:
        return target < mask.shape[-1] and bool((mask[..., target] == 1).any())
    return bool((mask == target).any())


class _RandomSampler:
    """Window ``i`` of the training stream, drawn deterministically from ``(seed, i)``.

    Windows above ``max_nodata_fraction`` are redrawn (up to 50 times; a scene region that is
    nearly all nodata then yields an all-ignore tile, which contributes nothing to the loss);
    with oversampling, a share of windows is redrawn until it contains ``oversample_class``.
    """

    def __init__(self, scenes, data_cfg, seed, multilabel):
        self.scenes, self.cfg, self.seed = scenes, data_cfg, seed
        self.sizes = [s.size for s in scenes]
        self.multilabel = multilabel
        dtypes = {native_dtype(s.info) for s in scenes}
        self.dtype = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)

    def fill(self, index, image_out, mask_out) -> None:
        """Write window ``index`` into ``image_out`` (S, S, C) and ``mask_out`` (S, S, K + 1)."""
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, int(index)])
        # rot90/flips while the tile is copied (with scale: after the resize, in tf)
        flips = None if cfg.augment.scale or not (cfg.augment.flip or cfg.augment.rot90) else cfg.augment
        dihedral = draw_dihedral(flips, self.seed, index) if flips is not None else (0, False, False)
        want_class = cfg.oversample_class >= 0 and rng.random() < cfg.oversample_fraction
        for attempt in range(50):
            scene_index, window = random_window(self.sizes, cfg.window_size, rng)
            ignored = _read_raw_tile_into(
                self.scenes[scene_index], window, cfg.ignore_index, image_out, mask_out, dihedral
            )
            if ignored > cfg.max_nodata_fraction:
                if attempt == 49:
                    mask_out[..., :-1] = cfg.ignore_index
                continue
            if want_class and attempt >= 20:
                break
            if not want_class or _has_class(mask_out[..., :-1], cfg.oversample_class, self.multilabel):
                break

    def __call__(self, index):
        size, scene = self.cfg.window_size, self.scenes[0]
        image = np.empty((size, size, scene.info.num_bands), self.dtype)
        mask = np.empty((size, size, num_label_channels(scene) + 1), np.uint8)
        self.fill(index, image, mask)
        return image, mask


def build_dataset(
    scenes: Sequence[Scene],
    norm: Normalization,
    data_cfg,
    training: bool,
    seed: Optional[int] = None,
    batch_size: Optional[int] = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches of ``(image, label)``: image float32 (B, S, S, C), label float32 (B, S, S, K).

    Training streams an endless sequence of random windows; evaluation a finite grid over every
    scene with ``data.eval_overlap``, whose labels are ``ignore_index`` where a neighbour tile
    owns the overlap (split at its middle), so metrics and loss count every pixel once. K = 1 (class indices, ``ignore_index`` on nodata) for
    binary/multiclass, K = number of classes (0/1, ``ignore_index`` in every channel on nodata)
    for multilabel. Scenes smaller than the window are padded (image 0, label ignore).
    """
    from ..config import resolve_task

    if not scenes:
        raise ValueError("build_dataset: no scenes given (empty training or validation split)")
    cfg = data_cfg
    seed = cfg.seed if seed is None else seed
    size, bands, ignore = cfg.window_size, scenes[0].info.num_bands, cfg.ignore_index
    channels = num_label_channels(scenes[0])
    multilabel = resolve_task(cfg) == "multilabel"
    if multilabel and channels != len(cfg.classes):
        raise ValueError(
            f"data.task is multilabel with {len(cfg.classes)} classes, but the labels of "
            f"{scenes[0].info.path} have {channels} channel(s)"
        )
    if not multilabel and channels != 1:
        raise ValueError(
            f"labels of {scenes[0].info.path} have {channels} channels (multi-label); "
            "set data.task: multilabel"
        )
    for scene in scenes:
        if scene.info.num_bands != bands:
            raise ValueError(
                f"{scene.info.path}: {scene.info.num_bands} band(s), but {scenes[0].info.path} has "
                f"{bands}; all scenes of a dataset must have the same bands"
            )
    if cfg.cache:
        scenes = [cache_scene(s, ignore) for s in scenes]
    else:
        scenes = prepare_labels(scenes, cfg.label_cache_mpix * 1_000_000)
    dtypes = {native_dtype(s.info) for s in scenes}
    raw_dtype = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)
    parallel = tf.data.AUTOTUNE if cfg.num_parallel_calls < 0 else cfg.num_parallel_calls
    spec = (tf.as_dtype(raw_dtype), tf.uint8)
    max_ignored = cfg.max_nodata_fraction

    def as_raw(image, mask):
        return image.astype(raw_dtype, copy=False), mask

    aug = cfg.augment
    batch = batch_size or cfg.batch_size

    def set_shapes(i, image, mask):
        image.set_shape([size, size, bands])
        mask.set_shape([size, size, channels + 1])
        return i, image, mask

    if training and not aug.scale:
        # whole batches per numpy call: batch b holds windows b*B .. b*B+B-1 (same windows as
        # one per call), with far less per-element tf.data overhead
        sampler = _RandomSampler(scenes, cfg, seed, multilabel)

        def sample_batch(b):  # each tile written straight into the batch buffers
            image = np.empty((batch, size, size, bands), raw_dtype)
            mask = np.empty((batch, size, size, channels + 1), np.uint8)
            for j in range(batch):
                sampler.fill(int(b) * batch + j, image[j], mask[j])
            return image, mask

        def batch_of(b):
            image, mask = tf.numpy_function(sample_batch, [b], spec, stateful=False)
            image.set_shape([batch, size, size, bands])
            mask.set_shape([batch, size, size, channels + 1])
            return tf.range(b * batch, (b + 1) * batch), image, mask

        ds = tf.data.Dataset.counter().map(batch_of, num_parallel_calls=parallel, deterministic=True)
    elif training:
        sampler = _RandomSampler(scenes, cfg, seed, multilabel)
        ds = tf.data.Dataset.counter()
        ds = ds.map(
            lambda i: (i, *tf.numpy_function(lambda j: as_raw(*sampler(j)), [i], spec, stateful=False)),
            num_parallel_calls=parallel,
            deterministic=True,
        ).map(set_shapes)
        ds = ds.map(  # per-tile resize + flips in tf (labels nearest), then batches
            lambda i, image, mask: (i, *augment_pair(i, tf.cast(image, tf.float32), mask,
                                                     _no_flips(aug), size, ignore, seed, valid_channel=True)),
            num_parallel_calls=parallel,
            deterministic=True,
        )
        ds = ds.batch(batch, drop_remainder=drop_remainder)
    else:
        windows = [(k, w, owned) for k, s in enumerate(scenes)
                   for w, owned in grid_windows_owned(*s.size, size, cfg.eval_overlap)]

        def read(i):
            k, window, (r0, r1, c0, c1) = windows[int(i)]
            image, mask, ignored = _read_raw_tile(scenes[k], window, ignore)
            image, mask = as_raw(image, mask)
            # score each pixel once: the part of the overlap owned by a neighbour tile is ignored
            # (the label only: the model still sees the whole tile, the valid mask is unchanged)
            owned = np.zeros(mask.shape[:2], bool)
            owned[r0:r1, c0:c1] = True
            if not owned.all():
                mask = mask.copy()
                mask[~owned, :-1] = ignore
            return image, mask, np.bool_(ignored <= max_ignored)

        ds = tf.data.Dataset.range(len(windows))
        ds = ds.map(
            lambda i: (i, *tf.numpy_function(read, [i], (*spec, tf.bool), stateful=False)),
            num_parallel_calls=parallel,
            deterministic=True,
        )
        # skip grid tiles above max_nodata_fraction (padding beyond small scenes not counted)
        ds = ds.filter(lambda i, image, mask, keep: keep).map(lambda i, image, mask, keep: (i, image, mask))
        ds = ds.map(set_shapes).batch(batch, drop_remainder=drop_remainder)
    inverse_scale = tf.constant(1.0 / norm.scale, tf.float32)
    shift = tf.constant(-norm.offset / norm.scale, tf.float32)
    clip = norm.clip

    def finish(i, image, mask):
        # valid pixels normalized, nodata/padding 0, the same numbers as Normalization.apply;
        # on a flat (B, S*S, C) view: XLA fuses cast, clip, scale, augmentation and the valid
        # mask into one pass (the 4-D broadcast of the mask over bands was 2-5x slower)
        shape = tf.shape(image)
        flat = tf.reshape(tf.cast(image, tf.float32), [shape[0], -1, bands])
        valid = tf.reshape(tf.cast(mask[..., -1], tf.float32), [shape[0], -1, 1])
        if clip is not None:
            flat = tf.clip_by_value(flat, clip[0], clip[1])
        flat = flat * inverse_scale + shift
        if training:
            flat = photometric_flat(i, flat, aug, seed)
        return tf.reshape(flat * valid, shape), tf.cast(mask[..., :-1], tf.float32)

    ds = ds.map(tf.function(finish, jit_compile=True), num_parallel_calls=parallel, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def _no_flips(aug):
    """The per-tile tf part of the augmentation (scale + flips); photometric runs per batch."""
    import dataclasses

    return dataclasses.replace(aug, brightness=0.0, contrast=0.0)
