"""Figures: validation tiles as input | truth | prediction.

Example:
    >>> save_prediction_figure(model, val_ds, "predictions.png", card.band_names, num_tiles=4)
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

RGB_NAMES = ("red", "green", "blue")


def display_rgb(image: np.ndarray, band_names=()) -> np.ndarray:
    """An HxWx3 [0, 1] picture of a raw multi-band tile (R, G, B when the bands are named),
    stretched to its 2-98 % range (NaN no-data pixels black)."""
    names = [n.lower() for n in band_names]
    if all(n in names for n in RGB_NAMES):
        picked = image[..., [names.index(n) for n in RGB_NAMES]]
    elif image.shape[-1] >= 3:
        picked = image[..., :3]
    else:
        picked = np.repeat(image[..., :1], 3, axis=-1)
    picked = picked.astype(np.float32)
    finite = picked[np.isfinite(picked)]
    low, high = (np.percentile(finite, 2), np.percentile(finite, 98)) if finite.size else (0.0, 1.0)
    return np.nan_to_num(np.clip((picked - low) / max(high - low, 1e-6), 0, 1))


def colourize(labels: np.ndarray, colours, ignore_index: int = 255) -> np.ndarray:
    """Class indices -> RGB using ``colours`` (list of (r, g, b) in [0, 1]); ignore -> grey."""
    table = np.zeros((256, 3), np.float32)
    table[: len(colours)] = colours
    table[ignore_index] = (0.5, 0.5, 0.5)
    return table[labels.astype(np.uint8)]


def colourize_multilabel(masks: np.ndarray, colours, ignore_index: int = 255) -> np.ndarray:
    """(H, W, K) 0/1 masks -> RGB: each pixel the mean colour of the classes on there (so
    overlapping classes all show), black where none is, grey where ignored."""
    colours = np.asarray(colours, np.float32)[: masks.shape[-1]]
    on = (masks == 1).astype(np.float32)
    count = on.sum(-1, keepdims=True)
    rgb = np.where(count > 0, on @ colours / np.maximum(count, 1), 0.0)
    rgb[(masks == ignore_index).all(-1)] = (0.5, 0.5, 0.5)
    return rgb


def save_prediction_figure(model, dataset, path, band_names=(), num_tiles: int = 4, threshold=0.5,
                           ignore_index: int = 255, colours=None, multilabel: bool = False) -> Path:
    """Predict the first tiles of ``dataset`` that contain labelled pixels and save a PNG grid
    (``multilabel``: every class drawn, overlaps as mixed colours, ``threshold`` one per class)."""
    images, truths = [], []
    for batch_images, batch_masks in dataset:
        for image, mask in zip(batch_images.numpy(), batch_masks.numpy()):
            if (mask[..., 0] != ignore_index).mean() > 0.5:
                images.append(image)
                truths.append(mask if multilabel else mask[..., 0])
        if len(images) >= num_tiles:
            break
    images, truths = images[:num_tiles], truths[:num_tiles]
    path = Path(path)
    if not images:
        return path
    probs = np.asarray(model.predict(np.stack(images), verbose=0), np.float32)
    if multilabel:
        preds = (probs >= np.asarray(threshold, np.float32)).astype(np.uint8)
        paint = colourize_multilabel
    else:
        preds = (probs[..., 0] >= threshold).astype(np.uint8) if probs.shape[-1] == 1 else probs.argmax(-1)
        paint = colourize
    if colours is None:
        colours = [(0.1, 0.1, 0.1), (1.0, 0.85, 0.1)] if probs.shape[-1] == 1 else plt.cm.tab10.colors
    fig, axes = plt.subplots(len(images), 3, figsize=(9, 3 * len(images)), squeeze=False)
    for row, (image, truth, pred) in enumerate(zip(images, truths, preds)):
        panels = (display_rgb(image, band_names), paint(truth, colours, ignore_index),
                  paint(pred, colours, ignore_index))
        for col, (panel, title) in enumerate(zip(panels, ("input", "truth", "prediction"))):
            axes[row, col].imshow(panel, interpolation="nearest")
            axes[row, col].set_axis_off()
            if row == 0:
                axes[row, col].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
