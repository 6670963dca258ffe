"""Paired augmentation of image and label in tf ops, stateless and seeded per window.

Geometric ops (random scale + crop, flips, rot90) move image and label together; the label is
only ever resized nearest-neighbour and padded with the ignore index. Photometric augmentation
(per-band brightness / contrast on normalized pixels) is part of the model
(:class:`tfseg.models.preprocessing.PhotometricAugment`, training only). Evaluation never augments.

Example:
    >>> image, label = augment_pair(tf.constant(7, tf.int64), image, label, cfg.data.augment,
    ...                             window_size=256, ignore_index=255, seed=42)
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

VALID_EPS = 1e-3  # a resized pixel is valid when its valid-source weight is at least 1 - VALID_EPS


def augment_pair(index, image, label, aug, window_size: int, ignore_index: int, seed: int,
                 valid_channel: bool = False):
    """``image`` (S, S, C) float32 and ``label`` (S, S, K) uint8, augmented identically.

    With ``valid_channel`` the last label channel is a valid-pixel mask (padded with 0). A random
    scale resizes it bilinearly, as the image: a pixel stays valid only where every source pixel
    of its interpolation was valid (weight >= 1 - ``VALID_EPS``); the others get 0 there and
    ``ignore_index`` in every label channel, so no value blended with nodata is ever labelled.
    """
    seeds = tf.random.experimental.stateless_split(
        tf.stack([tf.cast(seed, tf.int64), tf.cast(index, tf.int64)]), 6
    )
    if aug.scale:
        low, high = float(aug.scale[0]), float(aug.scale[1])
        factor = tf.exp(tf.random.stateless_uniform([], seeds[0], np.log(low), np.log(high)))
        new = tf.cast(tf.round(window_size * factor), tf.int32)
        image = tf.image.resize(image, [new, new], "bilinear")
        if valid_channel:
            weight = tf.image.resize(tf.cast(label[..., -1:] > 0, tf.float32), [new, new], "bilinear")
            valid = weight >= 1.0 - VALID_EPS
            classes = tf.image.resize(label[..., :-1], [new, new], "nearest")
            label = tf.concat([tf.where(valid, classes, tf.cast(ignore_index, label.dtype)),
                               tf.cast(valid, label.dtype)], axis=-1)
        else:
            label = tf.image.resize(label, [new, new], "nearest")
        pad = tf.maximum(window_size - new, 0)
        before = tf.random.stateless_uniform([2], seeds[1], 0, pad + 1, dtype=tf.int32)
        paddings = [[before[0], pad - before[0]], [before[1], pad - before[1]], [0, 0]]
        image = tf.pad(image, paddings)
        if valid_channel:
            label = tf.concat(
                [tf.pad(label[..., :-1], paddings, constant_values=ignore_index),
                 tf.pad(label[..., -1:], paddings, constant_values=0)], axis=-1)
        else:
            label = tf.pad(label, paddings, constant_values=ignore_index)
        extent = tf.shape(image)[0] - window_size
        start = tf.random.stateless_uniform([2], seeds[2], 0, extent + 1, dtype=tf.int32)
        image = image[start[0] : start[0] + window_size, start[1] : start[1] + window_size]
        label = label[start[0] : start[0] + window_size, start[1] : start[1] + window_size]
    if aug.flip:
        flips = tf.random.stateless_uniform([2], seeds[3]) < 0.5
        image = tf.cond(flips[0], lambda: tf.reverse(image, [1]), lambda: image)
        label = tf.cond(flips[0], lambda: tf.reverse(label, [1]), lambda: label)
        image = tf.cond(flips[1], lambda: tf.reverse(image, [0]), lambda: image)
        label = tf.cond(flips[1], lambda: tf.reverse(label, [0]), lambda: label)
    if aug.rot90:
        k = tf.random.stateless_uniform([], seeds[4], 0, 4, dtype=tf.int32)
        image, label = tf.image.rot90(image, k), tf.image.rot90(label, k)
    image.set_shape([window_size, window_size, None])
    label.set_shape([window_size, window_size, None])
    return image, label


def draw_dihedral(aug, seed: int, index: int, rng=None) -> tuple[int, bool, bool]:
    """(k, flip_cols, flip_rows) of window ``index``: rotate k * 90 degrees, then flip (drawn
    from ``rng`` when given, else from ``default_rng([seed, index, 1])``)."""
    if not (aug.rot90 or aug.flip):
        return 0, False, False
    rng = np.random.default_rng([seed, int(index), 1]) if rng is None else rng
    k = int(rng.integers(0, 4)) if aug.rot90 else 0
    flip_cols, flip_rows = (bool(f) for f in rng.random(2) < 0.5) if aug.flip else (False, False)
    return k, flip_cols, flip_rows


def _cv2():
    import cv2

    return cv2


CV2_DTYPES = {np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32, np.float64)}


# element sizes (bytes per pixel) cv::transpose handles, i.e. those cv2.rotate by 90 degrees can
TRANSPOSE_ELEMENT_SIZES = {1, 2, 3, 4, 6, 8, 12, 16, 24, 32}


def turns(k: int, flip_cols: bool, flip_rows: bool) -> tuple[bool, bool, bool]:
    """Rotate k * 90 degrees counter-clockwise then flip, as at most one transpose followed by
    one reversal: ``(transpose, reverse_rows, reverse_cols)`` (``np.rot90(x)`` is the transpose
    of ``x`` with its rows then reversed; two reversals of one axis cancel)."""
    k %= 4
    return bool(k % 2), (k in (1, 2)) != bool(flip_rows), (k in (2, 3)) != bool(flip_cols)


def _flip_code(reverse_rows: bool, reverse_cols: bool):
    """cv2.flip's code for these reversals (None: none)."""
    return -1 if reverse_rows and reverse_cols else 0 if reverse_rows else 1 if reverse_cols else None


def _planar(image: np.ndarray) -> bool:
    """Whether H x W x C ``image`` (C > 1) is a view of C contiguous H x W planes."""
    if image.ndim != 3 or image.shape[-1] < 2:
        return False
    item = image.dtype.itemsize
    return (image.strides[1] == item and image.strides[0] == image.shape[1] * item
            and image.strides[2] >= image.shape[0] * image.shape[1] * item)


def _store(result: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out`` holding ``result`` (OpenCV gives back ``out`` itself when it wrote in place)."""
    if result is not out:
        np.copyto(out, result.reshape(out.shape), casting="unsafe")
    return out


def dihedral_into(image: np.ndarray, k: int, flip_cols: bool, flip_rows: bool, out: np.ndarray) -> np.ndarray:
    """Rotate (k * 90 degrees) then flip an interleaved H x W x C (or H x W) ``image`` (a view
    is fine) into ``out``: the tile's one copy, written where the batch wants it.

    OpenCV's SIMD rotate/flip on whole pixels (C channels at once) when the dtype and pixel
    size allow, numpy otherwise. Same result as ``np.rot90(k)`` then column / row flips.
    """
    if image.ndim == 3 and image.shape[-1] == 1 and out.ndim == 3:
        # one plane (a label, often a view with a zero-stride channel axis): OpenCV takes it as H x W
        dihedral_into(image[..., 0], k, flip_cols, flip_rows, out[..., 0])
        return out
    channels = image.shape[-1] if image.ndim == 3 else 1
    pixel = image.dtype.itemsize * channels
    if _planar(image) and image.dtype in CV2_DTYPES and image.dtype == out.dtype and out.flags.c_contiguous:
        # C band planes (a band-sequential read seen as H x W x C): each plane turned on its own
        # (one H x W plane stays in the CPU cache), then interleaved by cv2.merge straight into
        # ``out``: one pass over the whole tile instead of three (merge, flip, transpose)
        cv2 = _cv2()
        transpose, reverse_rows, reverse_cols = turns(k, flip_cols, flip_rows)
        planes = list(image.transpose(2, 0, 1))
        if transpose:
            code = _flip_code(reverse_cols, reverse_rows)  # before the transpose the axes swap roles
            planes = [cv2.transpose(cv2.flip(p, code) if code is not None else p) for p in planes]
        else:
            code = _flip_code(reverse_rows, reverse_cols)
            if code is not None:
                planes = [cv2.flip(p, code) for p in planes]
        _store(cv2.merge(planes, dst=out), out)
        return out
    cv_ok = (
        image.dtype in CV2_DTYPES and channels <= 512 and image.dtype == out.dtype
        and image.strides[-1] == image.dtype.itemsize and (image.ndim == 2 or image.strides[-2] == pixel)
        and (k % 2 == 0 or pixel in TRANSPOSE_ELEMENT_SIZES)
    )
    if cv_ok:
        # one pass (a flip or a copy), or for odd k two: the flip (or a copy) reads the source
        # row by row, then the transpose; a transpose straight from a view into a large cached
        # scene would walk it column-wise, every row on another page (~5x slower)
        cv2 = _cv2()
        transpose, reverse_rows, reverse_cols = turns(k, flip_cols, flip_rows)
        if not transpose:
            code = _flip_code(reverse_rows, reverse_cols)
            if code is None:
                np.copyto(out, image)
                return out
            return _store(cv2.flip(image, code, dst=out), out)
        code = _flip_code(reverse_cols, reverse_rows)  # before the transpose the axes swap roles
        upright = cv2.flip(image, code) if code is not None else np.ascontiguousarray(image)
        return _store(cv2.transpose(upright, dst=out), out)
    view = np.rot90(image, k, axes=(0, 1)) if k else image
    if flip_cols:
        view = view[:, ::-1]
    if flip_rows:
        view = view[::-1]
    np.copyto(out, view, casting="unsafe")
    return out
