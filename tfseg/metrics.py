"""Streaming segmentation metrics from a confusion matrix, honouring the ignore index.

Binary tasks report the positive class; multi-class tasks report the mean over classes
(``average="macro"``) or one class (``class_id``).

Example:
    >>> metrics = segmentation_metrics(classes=1, ignore_index=255)   # iou, f1, precision, ...
"""
from __future__ import annotations

import keras
from keras import ops

KINDS = ("iou", "f1", "precision", "recall", "accuracy")


@keras.saving.register_keras_serializable(package="tfseg")
class ConfusionMatrixMetric(keras.metrics.Metric):
    """Accumulates a (K x K) confusion matrix (rows: truth, columns: prediction) over an epoch."""

    def __init__(self, kind: str = "iou", classes: int = 1, ignore_index: int = 255, threshold: float = 0.5,
                 class_id=None, name=None, **kwargs):
        if kind not in KINDS:
            raise ValueError(f"metric kind {kind!r} is not available; available: {KINDS}")
        super().__init__(name=name or kind, **kwargs)
        self.kind, self.classes, self.ignore_index = kind, classes, ignore_index
        self.threshold, self.class_id = threshold, class_id
        self.num_labels = 2 if classes == 1 else classes
        self.matrix = self.add_variable(
            shape=(self.num_labels, self.num_labels), initializer="zeros", dtype="float32", name="matrix"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.reshape(ops.cast(y_true, "float32"), (-1,))
        if self.classes == 1:
            pred = ops.cast(ops.reshape(ops.cast(y_pred, "float32"), (-1,)) >= self.threshold, "int32")
        else:
            pred = ops.reshape(ops.argmax(y_pred, axis=-1), (-1,))
        valid = ops.not_equal(y_true, float(self.ignore_index))
        truth = ops.cast(ops.where(valid, y_true, ops.zeros_like(y_true)), "int32")
        index = truth * self.num_labels + ops.cast(pred, "int32")
        counts = ops.bincount(index, weights=ops.cast(valid, "float32"), minlength=self.num_labels**2)
        self.matrix.assign_add(ops.reshape(ops.cast(counts[: self.num_labels**2], "float32"), self.matrix.shape))

    def result(self):
        return metric_from_matrix(self.matrix, self.kind, self.classes, self.class_id)

    def reset_state(self):
        self.matrix.assign(ops.zeros_like(self.matrix))

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "classes": self.classes, "ignore_index": self.ignore_index,
                "threshold": self.threshold, "class_id": self.class_id}


def per_class_scores(matrix, kind: str):
    """Per-class scores from a confusion matrix (works on numpy arrays and tensors)."""
    tp = ops.diagonal(matrix)
    fp = ops.sum(matrix, axis=0) - tp
    fn = ops.sum(matrix, axis=1) - tp
    if kind == "iou":
        num, den = tp, tp + fp + fn
    elif kind == "f1":
        num, den = 2 * tp, 2 * tp + fp + fn
    elif kind == "precision":
        num, den = tp, tp + fp
    elif kind == "recall":
        num, den = tp, tp + fn
    else:
        raise ValueError(f"per-class metric kind {kind!r} is not available")
    # an empty class (nothing true, nothing predicted) is perfect, not undefined
    return ops.where(den > 0, num / ops.maximum(den, 1.0), ops.ones_like(num))


def metric_from_matrix(matrix, kind: str, classes: int, class_id=None):
    matrix = ops.cast(matrix, "float32")
    if kind == "accuracy":
        return ops.sum(ops.diagonal(matrix)) / ops.maximum(ops.sum(matrix), 1.0)
    scores = per_class_scores(matrix, kind)
    if classes == 1:
        return scores[1]
    if class_id is not None:
        return scores[class_id]
    return ops.mean(scores)


def segmentation_metrics(classes: int = 1, ignore_index: int = 255, threshold: float = 0.5):
    """The standard set: iou, f1, precision, recall, accuracy (binary: positive class)."""
    return [ConfusionMatrixMetric(kind, classes, ignore_index, threshold) for kind in KINDS]
