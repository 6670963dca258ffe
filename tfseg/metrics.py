"""Segmentation metrics from confusion matrices: one definition for training and evaluation.

A confusion matrix is accumulated over all valid pixels (label != ``ignore_index``): (K x K) for
binary (K=2: background, foreground) and multiclass tasks (rows: truth, columns: prediction),
(K x 2 x 2) for multilabel tasks ([class, truth, prediction]). From it, per class:

* IoU = TP / (TP + FP + FN), F1 (Dice) = 2TP / (2TP + FP + FN), precision = TP / (TP + FP),
  recall = TP / (TP + FN), each 0 when only its denominator is 0;
* a class with no truth and no prediction (TP + FP + FN = 0) is **absent**: NaN per class
  (``null`` in JSON), never 1.0 or 0, and left out of every mean;
* means (``average="macro"``; ``miou``) are over the classes present in truth or prediction;
  NaN when none is;
* ``binary`` reports the positive class (``iou`` ...) and ``miou`` = mean over background and
  foreground; ``multiclass`` and ``multilabel`` report the mean over present classes;
* accuracy = correct valid pixels / valid pixels (multilabel: over pixel x class decisions).

Training (:class:`ConfusionMatrixMetric`, Keras 3 ops) and ``tfseg.evaluate`` (numpy matrices
from :func:`confusion_matrix_numpy`, the same layout) share :func:`per_class_scores` and
:func:`metric_from_matrix`.

Example:
    >>> metrics = segmentation_metrics(num_classes=1, ignore_index=255)   # iou, f1, precision, ...
    >>> metrics = segmentation_metrics(num_classes=3, task="multiclass",
    ...                                class_names=["road", "water", "building"])  # + iou_road, ...
"""
from __future__ import annotations

import math
import re

import keras
import numpy as np
from keras import ops

from .losses import TASKS, default_task

KINDS = ("iou", "f1", "precision", "recall", "accuracy")
AVERAGES = ("auto", "macro", "positive")


@keras.saving.register_keras_serializable(package="tfseg")
class ConfusionMatrixMetric(keras.metrics.Metric):
    """Accumulates confusion matrices over an epoch: (K x K) for binary (K=2) and multiclass tasks
    (rows: truth, columns: prediction), (K x 2 x 2) for multilabel tasks.

    ``average``: ``auto`` (binary: positive class, others: mean over present classes), ``macro``
    (mean over present classes; binary: background and foreground) or ``positive``. The matrix
    is the metric's state: under a distribution strategy Keras sums it across replicas and
    workers (``SUM`` aggregation of the variable), and the score is computed from the sum.
    """

    def __init__(self, kind: str = "iou", num_classes: int = 1, ignore_index: int = 255, threshold=0.5,
                 class_id=None, task=None, average: str = "auto", name=None, **kwargs):
        if kind not in KINDS:
            raise ValueError(f"metric kind {kind!r} is not available; available: {KINDS}")
        if average not in AVERAGES:
            raise ValueError(f"metric average {average!r} is not available; available: {AVERAGES}")
        task = task or default_task(num_classes)
        if task not in TASKS:
            raise ValueError(f"task: expected binary, multiclass or multilabel, got {task!r}")
        if class_id is not None and not 0 <= int(class_id) < max(num_classes, 2 if task == "binary" else 1):
            raise ValueError(f"metric class_id {class_id} out of range for {num_classes} classes")
        super().__init__(name=name or kind, **kwargs)
        self.kind, self.num_classes, self.ignore_index = kind, int(num_classes), int(ignore_index)
        if isinstance(threshold, (list, tuple)):  # one per class: multilabel only
            if task != "multilabel" or len(threshold) != int(num_classes):
                raise ValueError(f"threshold: a list needs task multilabel and {num_classes} values (one per class), "
                                 f"got {list(threshold)!r} for task {task}")
            threshold = [float(t) for t in threshold]
        else:
            threshold = float(threshold)
        self.threshold, self.class_id, self.task, self.average = threshold, class_id, task, average
        if task == "multilabel":
            shape = (self.num_classes, 2, 2)
        else:
            self.num_labels = 2 if task == "binary" else self.num_classes
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
            pred = ops.cast(y_pred >= ops.convert_to_tensor(self.threshold, "float32"), "int32")
            channel = ops.broadcast_to(ops.arange(self.num_classes, dtype="int32"), ops.shape(truth))
            index = ops.reshape(channel * 4 + truth * 2 + pred, (-1,))
            weights = ops.reshape(ops.cast(valid, "float32"), (-1,))
            size = self.num_classes * 4
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
        return metric_from_matrix(self.matrix, self.kind, self.num_classes, self.class_id, self.task, self.average)

    def reset_state(self):
        self.matrix.assign(ops.zeros(self.matrix.shape, "float32"))

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "num_classes": self.num_classes, "ignore_index": self.ignore_index,
                "threshold": self.threshold, "class_id": self.class_id, "task": self.task, "average": self.average}


def per_class_scores(matrix, kind: str, task: str = "multiclass"):
    """Per-class scores (NaN for absent classes) from a (K x K) or multilabel (K x 2 x 2) matrix
    (numpy arrays or tensors)."""
    matrix = ops.cast(matrix, "float32")
    if task == "multilabel":
        return _score(matrix[:, 1, 1], matrix[:, 0, 1], matrix[:, 1, 0], kind)
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
    value = ops.where(den > 0, num / ops.maximum(den, 1.0), ops.zeros_like(num))
    # a class with nothing true and nothing predicted is undefined: excluded, not perfect or 0
    return ops.where(tp + fp + fn > 0, value, ops.full_like(num, math.nan))


def present_mean(scores):
    """Mean over the entries that are not NaN (the present classes); NaN when all are."""
    present = ops.logical_not(ops.isnan(scores))
    total = ops.sum(ops.where(present, scores, ops.zeros_like(scores)))
    count = ops.sum(ops.cast(present, "float32"))
    return ops.where(count > 0, total / ops.maximum(count, 1.0), math.nan)


def metric_from_matrix(matrix, kind: str, num_classes: int, class_id=None, task=None, average: str = "auto"):
    """A metric value from accumulated confusion matrices (see the module docstring)."""
    task = task or default_task(num_classes)
    matrix = ops.cast(matrix, "float32")
    if kind == "accuracy":
        if task == "multilabel":
            correct = ops.sum(matrix[:, 0, 0]) + ops.sum(matrix[:, 1, 1])
        else:
            correct = ops.sum(ops.diagonal(matrix))
        return correct / ops.maximum(ops.sum(matrix), 1.0)
    scores = per_class_scores(matrix, kind, task)
    if class_id is not None:
        return scores[class_id]
    if task == "binary" and average != "macro":
        return scores[1]
    return present_mean(scores)


def confusion_matrix_numpy(truth: np.ndarray, pred: np.ndarray, valid: np.ndarray, num_classes: int,
                           task: str) -> np.ndarray:
    """The confusion matrix of :class:`ConfusionMatrixMetric` in numpy (int64), for evaluation.

    ``truth``/``pred``: class maps (H, W) (binary: 0/1) or, for multilabel, 0/1 maps (H, W, K);
    ``valid``: (H, W) or (H, W, K) pixels to count.
    """
    if task == "multilabel":
        valid = np.broadcast_to(valid if valid.ndim == 3 else valid[..., None], truth.shape)
        channel = np.broadcast_to(np.arange(num_classes), truth.shape)
        index = channel * 4 + (truth > 0).astype(np.int64) * 2 + (pred > 0).astype(np.int64)
        return np.bincount(index[valid], minlength=num_classes * 4).reshape(num_classes, 2, 2)
    labels = 2 if task == "binary" else num_classes
    index = truth[valid].astype(np.int64) * labels + pred[valid].astype(np.int64)
    return np.bincount(index, minlength=labels * labels).reshape(labels, labels)


def _number(value):
    value = float(ops.convert_to_numpy(value))
    return None if math.isnan(value) else value


def scores_from_matrix(matrix, task: str, class_names) -> dict:
    """The evaluation report of a confusion matrix, by the definitions above: ``iou``, ``f1``,
    ``precision``, ``recall``, ``accuracy``, ``miou`` and ``per_class`` {name: {iou, f1, precision,
    recall}} (``None`` = absent class). Binary: top-level scores are the foreground's and
    ``per_class`` is left out."""
    num_classes = len(class_names) if task != "binary" else 1
    per_kind = {kind: [_number(v) for v in ops.convert_to_numpy(per_class_scores(matrix, kind, task))]
                for kind in ("iou", "f1", "precision", "recall")}
    result = {kind: _number(metric_from_matrix(matrix, kind, num_classes, task=task))
              for kind in ("iou", "f1", "precision", "recall", "accuracy")}
    result["miou"] = _number(metric_from_matrix(matrix, "iou", num_classes, task=task, average="macro"))
    if task != "binary":
        result["per_class"] = {name: {kind: per_kind[kind][k] for kind in per_kind}
                               for k, name in enumerate(class_names)}
    return result


def _metric_suffix(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", str(name)).strip("_").lower() or "class"


def segmentation_metrics(num_classes: int = 1, ignore_index: int = 255, threshold=0.5, task=None,
                         class_names=None, per_class_kinds=("iou", "f1")):
    """The standard set ``iou, f1, precision, recall, accuracy`` (binary: positive class;
    multiclass / multilabel: mean over classes). With ``class_names`` (several classes), also
    ``<kind>_<classname>`` per class for ``per_class_kinds``; for binary tasks also ``miou``
    (mean IoU over background and foreground)."""
    task = task or default_task(num_classes)
    metrics = [ConfusionMatrixMetric(kind, num_classes, ignore_index, threshold, task=task) for kind in KINDS]
    if class_names is None:
        return metrics
    if task == "binary":
        metrics.append(ConfusionMatrixMetric("iou", num_classes, ignore_index, threshold, task=task, average="macro",
                                             name="miou"))
        return metrics
    if len(class_names) != num_classes:
        raise ValueError(f"class_names: expected {num_classes} names, got {len(class_names)}: {list(class_names)}")
    seen = set()
    for class_id, class_name in enumerate(class_names):
        suffix = _metric_suffix(class_name)
        if suffix in seen or suffix in KINDS:
            suffix = f"{suffix}_{class_id}"
        seen.add(suffix)
        for kind in per_class_kinds:
            metrics.append(ConfusionMatrixMetric(kind, num_classes, ignore_index, threshold, class_id=class_id,
                                                 task=task, name=f"{kind}_{suffix}"))
    return metrics
