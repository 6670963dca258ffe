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


def scene_rgb(path, max_side: int = 1024) -> tuple[np.ndarray, float]:
    """A decimated HxWx3 uint8 picture of a scene file (bands 1-3, 2-98 % stretch, nodata black)
    and the scale from full-resolution pixels to it."""
    import warnings

    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import NotGeoreferencedWarning

    # opened and closed here (not the per-thread handle cache): a worker predicting thousands of
    # scenes must not keep one open file per scene
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(str(path)) as src:
            factor = max(1.0, max(src.width, src.height) / max_side)
            out_h, out_w = max(1, int(src.height / factor)), max(1, int(src.width / factor))
            bands = [1, 2, 3] if src.count >= 3 else [1]
            image = src.read(bands, out_shape=(len(bands), out_h, out_w),
                             resampling=Resampling.nearest).astype(np.float32)
            nodata, width = src.nodata, src.width
    image = np.moveaxis(image, 0, -1)
    ok = np.isfinite(image).all(-1)
    if nodata is not None:
        ok &= ~np.all(image == nodata, axis=-1)
    rgb = np.zeros_like(image)
    if ok.any():
        low, high = np.percentile(image[ok], [2, 98], axis=0)
        rgb = np.clip((image - low) / np.maximum(high - low, 1e-6), 0, 1)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    return (rgb * 255).astype(np.uint8), out_w / width


BINARY_COLOURS = [(0.1, 0.1, 0.1), (1.0, 0.85, 0.1)]  # background, the class


def distinct_colours(count: int) -> list:
    """``count`` distinct (r, g, b) colours in [0, 1]: matplotlib's tab10 / tab20, then hues
    spread around the HSV circle (alternating two brightnesses) for more classes."""
    if count <= 10:
        return [tuple(c) for c in plt.cm.tab10.colors[:count]]
    if count <= 20:
        return [tuple(c) for c in plt.cm.tab20.colors[:count]]
    from matplotlib.colors import hsv_to_rgb

    return [tuple(float(v) for v in hsv_to_rgb((i / count, 0.75, 0.95 if i % 2 else 0.7))) for i in range(count)]


def card_colours(card) -> list:
    """The figure colours of a model card's classes (its ``colours``, ``#RRGGBB``), in the order
    of the label values: binary, the background first."""
    from matplotlib.colors import to_rgb

    colours = [to_rgb(card.colours[name]) for name in card.classes]
    return [BINARY_COLOURS[0], *colours] if card.task == "binary" else colours


def _figure_colours(colours, count: int, binary: bool) -> list:
    """``colours`` as (r, g, b) floats for ``count`` label values (binary: 2), completed with
    distinct colours when it has fewer (never black or a crash for the classes past its end)."""
    if colours is None:
        return list(BINARY_COLOURS) if binary else distinct_colours(count)
    from matplotlib.colors import to_rgb

    colours = [to_rgb(c) for c in colours]  # "#RRGGBB" or (r, g, b)
    if len(colours) < count:
        extra = [c for c in distinct_colours(count) if c not in colours]
        colours += extra[: count - len(colours)]
    return colours


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
                           ignore_index: int = 255, colours=None, multilabel: bool = False,
                           class_offsets=None) -> Path:
    """Predict the first tiles of ``dataset`` that contain labelled pixels and save a PNG grid
    (``multilabel``: every class drawn, overlaps as mixed colours, ``threshold`` one per class;
    ``class_offsets``: a multiclass card's argmax offsets, :func:`tfseg.class_offsets.decide`;
    ``colours``: (r, g, b) in [0, 1] or ``#RRGGBB`` per label value, e.g. :func:`card_colours`;
    default: dark / yellow for a binary model, else :func:`distinct_colours`)."""
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
        from .class_offsets import decide

        preds = (probs[..., 0] >= threshold).astype(np.uint8) if probs.shape[-1] == 1 else decide(probs, class_offsets)
        paint = colourize
    binary = probs.shape[-1] == 1 and not multilabel
    colours = _figure_colours(colours, 2 if binary else probs.shape[-1], binary)
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


# ------------------------------------------------------------------------------------------
# Objects: true positive / false positive / false negative outlines
# ------------------------------------------------------------------------------------------
OBJECT_COLOURS = {"true positive": (0, 200, 0), "false positive": (230, 20, 20), "false negative": (30, 110, 255)}


def draw_object_outlines(rgb: np.ndarray, truth, proposals, confidences=None, scale: float = 1.0, width: int = 2):
    """A PIL image of ``rgb`` (HxWx3 uint8) with the matched proposals outlined green (true
    positives), the unmatched ones red (false positives) and the missed truth blue (false
    negatives); polygons in pixel coordinates of the full-resolution image (``scale`` maps them
    onto ``rgb``). Returns (image, {"tp", "fp", "fn"})."""
    from PIL import Image, ImageDraw

    from .scoring import assign_polygons

    matched, missed = assign_polygons(truth, proposals, confidences)
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    draw = ImageDraw.Draw(image)

    def outline(geom, colour):
        for part in getattr(geom, "geoms", [geom]):
            if part.geom_type != "Polygon" or part.is_empty:
                continue
            points = [(x * scale, y * scale) for x, y in part.exterior.coords]
            draw.line(points, fill=colour, width=width, joint="curve")

    for k in missed:
        outline(truth[k], OBJECT_COLOURS["false negative"])
    for proposal, match in zip(proposals, matched):
        outline(proposal, OBJECT_COLOURS["true positive" if match is not None else "false positive"])
    tp = sum(1 for m in matched if m is not None)
    return image, {"tp": tp, "fp": len(proposals) - tp, "fn": len(missed)}


def save_object_figure(panels, path, titles=()) -> Path:
    """A grid of scenes with TP/FP/FN outlines: ``panels`` = [(rgb uint8, truth, proposals,
    confidences, scale)] (polygons in full-resolution pixels, ``scale`` onto ``rgb``)."""
    from matplotlib.patches import Patch

    path = Path(path)
    if not panels:
        return path
    columns = min(4, len(panels))
    rows = int(np.ceil(len(panels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for index, (rgb, truth, proposals, confidences, scale) in enumerate(panels):
        image, counts = draw_object_outlines(rgb, truth, proposals, confidences, scale=scale)
        ax = axes.ravel()[index]
        ax.imshow(np.asarray(image), interpolation="nearest")
        name = titles[index] if index < len(titles) else ""
        ax.set_title(f"{name}\nTP {counts['tp']}  FP {counts['fp']}  FN {counts['fn']}", fontsize=8)
    handles = [Patch(facecolor="none", edgecolor=np.asarray(c) / 255, label=n) for n, c in OBJECT_COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
