"""Streaming segmentation metrics from confusion matrices, honouring the ignore index.

Tasks (see ``tfseg.losses``): ``binary`` reports the positive class; ``multiclass`` the mean over
classes (``average="macro"``) or one class (``class_id``); ``multilabel`` keeps one 2x2 matrix
per class and reports the mean of the per-class positive scores (or one class with ``class_id``).
Binary tasks can also report the mean over background and foreground (``average="macro"``).

Example:
    >>> metrics = segmentation_metrics(classes=1, ignore_index=255)   # iou, f1, precision, ...
    >>> metrics = segmentation_metrics(classes=3, task="multiclass",
    ...                                class_names=["road", "water", "building"])  # + iou_road, ...
"""
from __future__ import annotations

import re

import keras
from keras import ops

from .losses import TASKS, default_task

KINDS = ("iou", "f1", "precision", "recall", "accuracy")
AVERAGES = ("auto", "macro", "positive")


@keras.saving.register_keras_serializable(package="tfseg")
class ConfusionMatrixMetric(keras.metrics.Metric):
    """Accumulates confusion matrices over an epoch: (K x K) for binary (K=2) and multiclass tasks
    (rows: truth, columns: prediction), (K x 2 x 2) for multilabel tasks.

    ``average``: ``auto`` (binary: positive class, others: mean over classes), ``macro`` (mean
    over classes; binary: background and foreground) or ``positive``.
    """

    def __init__(self, kind: str = "iou", classes: int = 1, ignore_index: int = 255, threshold: float = 0.5,
                 class_id=None, task=None, average: str = "auto", name=None, **kwargs):
        if kind not in KINDS:
            raise ValueError(f"metric kind {kind!r} is not available; available: {KINDS}")
        if average not in AVERAGES:
            raise ValueError(f"metric average {average!r} is not available; available: {AVERAGES}")
        task = task or default_task(classes)
        if task not in TASKS:
            raise ValueError(f"task: expected binary, multiclass or multilabel, got {task!r}")
        if class_id is not None and not 0 <= int(class_id) < max(classes, 2 if task == "binary" else 1):
            raise ValueError(f"metric class_id {class_id} out of range for {classes} classes")
        super().__init__(name=name or kind, **kwargs)
        self.kind, self.classes, self.ignore_index = kind, int(classes), int(ignore_index)
        self.threshold, self.class_id, self.task, self.average = float(threshold), class_id, task, average
        if task == "multilabel":
            shape = (self.classes, 2, 2)
        else:
            self.num_labels = 2 if task == "binary" else self.classes
            shape = (self.num_labels, self.num_labels)
        self.matrix = self.add_variable(shape=shape, initializer="zeros", dtype="float32", name="matrix")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        valid = ops.not_equal(y_true, float(self.ignore_index))
        if sample_weight is not None:  # per image (B,) or per pixel (B, H, W[, 1])
            sample_weight = ops.cast(sample_weight, "float32")
            while len(sample_weight.shape) < len(y_true.shape):
                sample_weight = ops.expand_dims(sample_weight, -1)
            valid = ops.logical_and(valid, ops.broadcast_to(sample_weight, ops.shape(y_true)) > 0)
        if self.task == "multilabel":
            valid = ops.broadcast_to(valid, ops.shape(y_pred))
            y_true = ops.broadcast_to(y_true, ops.shape(y_pred))
            truth = ops.cast(ops.where(valid, y_true, ops.zeros_like(y_true)) > 0.5, "int32")
            pred = ops.cast(y_pred >= self.threshold, "int32")
            channel = ops.broadcast_to(ops.arange(self.classes, dtype="int32"), ops.shape(truth))
            index = ops.reshape(channel * 4 + truth * 2 + pred, (-1,))
            weights = ops.reshape(ops.cast(valid, "float32"), (-1,))
            size = self.classes * 4
        else:
            if self.task == "binary":
                pred = ops.cast(ops.reshape(y_pred, (-1,)) >= self.threshold, "int32")
            else:
                pred = ops.cast(ops.reshape(ops.argmax(y_pred, axis=-1), (-1,)), "int32")
            y_true = ops.reshape(y_true, (-1,))
            valid = ops.reshape(valid, (-1,))
            truth = ops.cast(ops.where(valid, y_true, ops.zeros_like(y_true)), "int32")
            index = truth * self.num_labels + pred
            weights = ops.cast(valid, "float32")
            size = self.num_labels**2
        # segment_sum with a static number of segments: traces under jax.jit (bincount does not)
        counts = ops.segment_sum(weights, index, num_segments=size)
        self.matrix.assign_add(ops.reshape(ops.cast(counts, "float32"), self.matrix.shape))

    def result(self):
        return metric_from_matrix(self.matrix, self.kind, self.classes, self.class_id, self.task, self.average)

    def reset_state(self):
        self.matrix.assign(ops.zeros(self.matrix.shape, "float32"))

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "classes": self.classes, "ignore_index": self.ignore_index,
                "threshold": self.threshold, "class_id": self.class_id, "task": self.task, "average": self.average}


def per_class_scores(matrix, kind: str):
    """Per-class scores from a (K x K) confusion matrix (works on numpy arrays and tensors)."""
    tp = ops.diagonal(matrix)
    fp = ops.sum(matrix, axis=0) - tp
    fn = ops.sum(matrix, axis=1) - tp
    return _score(tp, fp, fn, kind)


def _score(tp, fp, fn, kind):
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


def metric_from_matrix(matrix, kind: str, classes: int, class_id=None, task=None, average: str = "auto"):
    """A metric value from accumulated confusion matrices (see :class:`ConfusionMatrixMetric`)."""
    task = task or default_task(classes)
    matrix = ops.cast(matrix, "float32")
    if task == "multilabel":  # matrix (K, 2, 2): [class, truth, prediction]
        if kind == "accuracy":
            correct = ops.sum(matrix[:, 0, 0]) + ops.sum(matrix[:, 1, 1])
            return correct / ops.maximum(ops.sum(matrix), 1.0)
        scores = _score(matrix[:, 1, 1], matrix[:, 0, 1], matrix[:, 1, 0], kind)
        return scores[class_id] if class_id is not None else ops.mean(scores)
    if kind == "accuracy":
        return ops.sum(ops.diagonal(matrix)) / ops.maximum(ops.sum(matrix), 1.0)
    scores = per_class_scores(matrix, kind)
    if class_id is not None:
        return scores[class_id]
    if task == "binary" and average != "macro":
        return scores[1]
    return ops.mean(scores)


def _metric_suffix(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", str(name)).strip("_").lower() or "class"


def segmentation_metrics(classes: int = 1, ignore_index: int = 255, threshold: float = 0.5, task=None,
                         class_names=None, per_class_kinds=("iou", "f1")):
    """The standard set ``iou, f1, precision, recall, accuracy`` (binary: positive class;
    multiclass / multilabel: mean over classes). With ``class_names`` (several classes), also
    ``<kind>_<classname>`` per class for ``per_class_kinds``; for binary tasks also ``miou``
    (mean IoU over background and foreground)."""
    task = task or default_task(classes)
    metrics = [ConfusionMatrixMetric(kind, classes, ignore_index, threshold, task=task) for kind in KINDS]
    if class_names is None:
        return metrics
    if task == "binary":
        metrics.append(ConfusionMatrixMetric("iou", classes, ignore_index, threshold, task=task, average="macro",
                                             name="miou"))
        return metrics
    if len(class_names) != classes:
        raise ValueError(f"class_names: expected {classes} names, got {len(class_names)}: {list(class_names)}")
    seen = set()
    for class_id, class_name in enumerate(class_names):
        suffix = _metric_suffix(class_name)
        if suffix in seen or suffix in KINDS:
            suffix = f"{suffix}_{class_id}"
        seen.add(suffix)
        for kind in per_class_kinds:
            metrics.append(ConfusionMatrixMetric(kind, classes, ignore_index, threshold, class_id=class_id,
                                                 task=task, name=f"{kind}_{suffix}"))
    return metrics
