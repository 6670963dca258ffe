"""Object-level (polygon) F1 as a validation metric during training, for building tasks.

At the end of each epoch the model predicts the validation tiles; predicted and true masks are
polygonized tile by tile with the same post-processing as ``tfseg.predict`` and matched with the
SpaceNet rules (:func:`tfseg.scoring.match_polygons`: IoU >= 0.5, truth < 20 px² and proposals
<= 20 px² dropped). ``val_object_f1``, ``val_object_precision`` and ``val_object_recall`` are
added to the epoch logs, so history.csv, TensorBoard, Neptune and ModelCheckpoint see them like
any other metric (the callback must come before those in the callback list).

Enabled with ``train.object_f1: true``.

Example:
    >>> callbacks.insert(0, ObjectF1Callback(val_ds, threshold=0.5))
"""
from __future__ import annotations

from typing import Optional

import keras
import numpy as np

from .postprocess import PolygonOptions, polygonize_array
from .scoring import PROPOSAL_MIN_AREA, TRUTH_MIN_AREA, Counts, match_polygons


def object_counts(pred_mask: np.ndarray, true_mask: np.ndarray, probs: Optional[np.ndarray] = None,
                  options: Optional[PolygonOptions] = None) -> Counts:
    """TP/FP/FN of one tile's predicted vs true binary masks (pixel-space polygons)."""
    options = options or PolygonOptions()
    truth_options = PolygonOptions(opening_px=0, min_area_px=0.0, simplify_px=0.0, fill_holes=False)
    truth = [r.geometry for r in polygonize_array(true_mask, None, truth_options)]
    truth = [t for t in truth if t.area >= TRUTH_MIN_AREA]
    records = [r for r in polygonize_array(pred_mask, probs, options) if r.geometry.area > PROPOSAL_MIN_AREA]
    return match_polygons(truth, [r.geometry for r in records], [r.confidence for r in records])


class ObjectF1Callback(keras.callbacks.Callback):
    """Adds ``val_object_f1`` / ``_precision`` / ``_recall`` to the logs at each epoch end.

    ``max_batches`` bounds the cost (0 = the whole validation dataset).
    """

    def __init__(self, val_data, threshold: float = 0.5, ignore_index: int = 255, max_batches: int = 0,
                 options: Optional[PolygonOptions] = None, prefix: str = "val_object_"):
        super().__init__()
        self.val_data, self.threshold, self.ignore_index = val_data, threshold, ignore_index
        self.max_batches, self.options, self.prefix = max_batches, options or PolygonOptions(), prefix

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if int(self.model.output_shape[-1]) != 1:
            return  # object F1 is defined here for binary (building) tasks only
        counts = Counts()
        for step, (images, labels) in enumerate(self.val_data):
            if self.max_batches and step >= self.max_batches:
                break
            probs = np.asarray(self.model.predict_on_batch(images), np.float32)[..., 0]
            labels = np.asarray(labels)[..., 0]
            for prob, label in zip(probs, labels):
                ignored = label == self.ignore_index
                truth = ((label == 1) & ~ignored).astype(np.uint8)
                pred = ((prob >= self.threshold) & ~ignored).astype(np.uint8)
                counts.add(object_counts(pred, truth, prob, self.options))
        scores = counts.as_dict()
        logs[f"{self.prefix}f1"] = scores["F1Score"]
        logs[f"{self.prefix}precision"] = scores["Precision"]
        logs[f"{self.prefix}recall"] = scores["Recall"]
