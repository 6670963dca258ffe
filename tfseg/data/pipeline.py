"""tf.data pipelines of tiles: random windows for training, a grid with overlap for evaluation.

Windows are read (rasterio, one handle per thread) and normalized in a parallel ``map``; tiles
above ``max_nodata_fraction`` are skipped; augmentation is paired tf ops on image and mask.
Everything is deterministic for a given seed (window ``i`` of the stream is drawn from
``default_rng([seed, i])`` and augmented with stateless ops seeded by ``i``).

Example:
    >>> train = build_dataset(train_scenes, norm, cfg.data, training=True)
    >>> images, masks = next(iter(train))   # (B, 256, 256, C) float32, (B, 256, 256, 1) float32
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from .raster import Normalization, read_window
from .sources import Scene
from .tiling import grid_windows, random_window


def _normalize(image: np.ndarray, valid: np.ndarray, norm: Normalization) -> np.ndarray:
    out = norm.apply(image).astype(np.float32)
    out[~valid] = 0.0
    return out


def read_tile(scene: Scene, window, norm: Normalization, ignore_index: int):
    """Normalized image (nodata -> 0) and uint8 label (nodata -> ignore) for one window."""
    image, valid = read_window(scene.info, window)
    mask = scene.labels.rasterize(window, scene.info)
    mask = np.where(valid, mask, np.uint8(ignore_index)).astype(np.uint8)
    return _normalize(image, valid, norm), mask


class _RandomSampler:
    """Window ``i`` of the training stream, drawn deterministically from ``(seed, i)``."""

    def __init__(self, scenes, norm, data_cfg, seed):
        self.scenes, self.norm, self.cfg, self.seed = scenes, norm, data_cfg, seed
        self.sizes = [s.size for s in scenes]

    def __call__(self, index):
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, int(index)])
        want_class = cfg.oversample_class >= 0 and rng.random() < cfg.oversample_fraction
        for _ in range(20 if want_class else 1):
            scene_index, window = random_window(self.sizes, cfg.window_size, rng)
            image, mask = read_tile(self.scenes[scene_index], window, self.norm, cfg.ignore_index)
            if not want_class or (mask == cfg.oversample_class).any():
                break
        return image, mask


def _augment(index, image, mask, aug, window_size: int, ignore_index: int, seed: int):
    """Paired augmentation with stateless ops (seeded by the window index)."""
    seeds = tf.random.experimental.stateless_split(tf.stack([tf.cast(seed, tf.int64), index]), 6)
    mask = mask[..., None]
    if aug.scale:
        low, high = float(aug.scale[0]), float(aug.scale[1])
        factor = tf.exp(tf.random.stateless_uniform([], seeds[0], np.log(low), np.log(high)))
        new = tf.cast(tf.round(window_size * factor), tf.int32)
        image = tf.image.resize(image, [new, new], "bilinear")
        mask = tf.image.resize(mask, [new, new], "nearest")
        pad = tf.maximum(window_size - new, 0)
        before = tf.random.stateless_uniform([2], seeds[1], 0, pad + 1, dtype=tf.int32)
        paddings = [[before[0], pad - before[0]], [before[1], pad - before[1]], [0, 0]]
        image = tf.pad(image, paddings)
        mask = tf.pad(mask, paddings, constant_values=ignore_index)
        extent = tf.shape(image)[0] - window_size
        start = tf.random.stateless_uniform([2], seeds[2], 0, extent + 1, dtype=tf.int32)
        image = image[start[0] : start[0] + window_size, start[1] : start[1] + window_size]
        mask = mask[start[0] : start[0] + window_size, start[1] : start[1] + window_size]
    if aug.flip:
        flips = tf.random.stateless_uniform([2], seeds[3]) < 0.5
        image = tf.where(flips[0], tf.reverse(image, [1]), image)
        mask = tf.where(flips[0], tf.reverse(mask, [1]), mask)
        image = tf.where(flips[1], tf.reverse(image, [0]), image)
        mask = tf.where(flips[1], tf.reverse(mask, [0]), mask)
    if aug.rot90:
        k = tf.random.stateless_uniform([], seeds[4], 0, 4, dtype=tf.int32)
        image, mask = tf.image.rot90(image, k), tf.image.rot90(mask, k)
    if aug.brightness or aug.contrast:
        bands = tf.shape(image)[-1]
        shift = tf.random.stateless_uniform([bands], seeds[5], -aug.brightness, aug.brightness)
        gain = 1.0 + tf.random.stateless_uniform(
            [bands], tf.reverse(seeds[5], [0]), -aug.contrast, aug.contrast
        )
        valid = tf.cast(mask != ignore_index, image.dtype)
        image = (image * gain + shift) * valid + image * (1.0 - valid)
    return image, mask[..., 0]


def build_dataset(
    scenes: Sequence[Scene],
    norm: Normalization,
    data_cfg,
    training: bool,
    seed: Optional[int] = None,
    batch_size: Optional[int] = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches of ``(image, label)``: image float32 (B, S, S, C), label float32 (B, S, S, 1).

    Training streams an endless sequence of random windows; evaluation a finite grid over every
    scene with ``data.eval_overlap``. Labels hold class indices with ``ignore_index`` on nodata.
    """
    if not scenes:
        raise ValueError("build_dataset: no scenes given (empty training or validation split)")
    cfg = data_cfg
    seed = cfg.seed if seed is None else seed
    size, bands, ignore = cfg.window_size, scenes[0].info.num_bands, cfg.ignore_index
    for scene in scenes:
        if scene.info.num_bands != bands:
            raise ValueError(
                f"{scene.info.path}: {scene.info.num_bands} band(s), but {scenes[0].info.path} has "
                f"{bands}; all scenes of a dataset must have the same bands"
            )
    parallel = tf.data.AUTOTUNE if cfg.num_parallel_calls < 0 else cfg.num_parallel_calls
    spec = (tf.float32, tf.uint8)

    if training:
        sampler = _RandomSampler(scenes, norm, cfg, seed)
        ds = tf.data.Dataset.counter()
        ds = ds.map(
            lambda i: (i, *tf.numpy_function(sampler, [i], spec, stateful=False)),
            num_parallel_calls=parallel,
            deterministic=True,
        )
    else:
        windows = [(k, w) for k, s in enumerate(scenes) for w in grid_windows(*s.size, size, cfg.eval_overlap)]

        def read(i):
            k, window = windows[int(i)]
            return read_tile(scenes[k], window, norm, ignore)

        ds = tf.data.Dataset.range(len(windows))
        ds = ds.map(
            lambda i: (i, *tf.numpy_function(read, [i], spec, stateful=False)),
            num_parallel_calls=parallel,
            deterministic=True,
        )

    def set_shapes(i, image, mask):
        image.set_shape([size, size, bands])
        mask.set_shape([size, size])
        return i, image, mask

    ds = ds.map(set_shapes)
    max_ignored = cfg.max_nodata_fraction
    ds = ds.filter(
        lambda i, image, mask: tf.reduce_mean(tf.cast(mask == ignore, tf.float32)) <= max_ignored
    )
    if training:
        aug = cfg.augment
        ds = ds.map(
            lambda i, image, mask: _augment(i, image, mask, aug, size, ignore, seed),
            num_parallel_calls=parallel,
            deterministic=True,
        )
    else:
        ds = ds.map(lambda i, image, mask: (image, mask))
    ds = ds.map(lambda image, mask: (image, tf.cast(mask, tf.float32)[..., None]))
    ds = ds.batch(batch_size or cfg.batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)
