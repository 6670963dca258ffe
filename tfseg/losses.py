"""Segmentation losses that honour an ignore index (pure Keras 3: keras.ops only).

Labels are class indices ``(B, H, W, 1)`` (binary: 0/1) with ``ignore_index`` where unknown;
predictions are probabilities from the model's float32 head.

Example:
    >>> loss = get_loss("bce_dice", classes=1, ignore_index=255, weights={"bce": 1, "dice": 1})
"""
from __future__ import annotations

import keras
from keras import ops
from keras.src.losses.loss import scale_loss_for_distribution  # no public alias in Keras 3

EPSILON = 1e-6


def _prepare(y_true, y_pred, classes: int, ignore_index: int):
    """One-hot (or binary) targets, predictions and a valid mask, all float32 (B, H, W, C)."""
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "float32")
    valid = ops.cast(ops.not_equal(y_true, float(ignore_index)), "float32")
    labels = ops.where(valid > 0, y_true, ops.zeros_like(y_true))
    if classes == 1:
        target = labels
    else:
        target = ops.one_hot(ops.cast(labels[..., 0], "int32"), classes)
    return target, y_pred, valid


def _masked_mean(values, valid):
    return ops.sum(values * valid) / ops.maximum(ops.sum(valid), 1.0)


def crossentropy(target, probs, valid, classes: int):
    probs = ops.clip(probs, EPSILON, 1.0 - EPSILON)
    if classes == 1:
        per_pixel = -(target * ops.log(probs) + (1.0 - target) * ops.log(1.0 - probs))
    else:
        per_pixel = -ops.sum(target * ops.log(probs), axis=-1, keepdims=True)
    return _masked_mean(per_pixel, valid)


def dice(target, probs, valid, classes: int):
    """Soft Dice over the batch, averaged over classes (binary: the positive class)."""
    axes = (0, 1, 2)
    intersection = ops.sum(target * probs * valid, axis=axes)
    total = ops.sum(target * valid, axis=axes) + ops.sum(probs * valid, axis=axes)
    return 1.0 - ops.mean((2.0 * intersection + 1.0) / (total + 1.0))


COMPONENTS = {"bce": crossentropy, "cce": crossentropy, "dice": dice}
PRESETS = {
    "bce": {"bce": 1.0},
    "cce": {"cce": 1.0},
    "dice": {"dice": 1.0},
    "bce_dice": {"bce": 1.0, "dice": 1.0},
    "cce_dice": {"cce": 1.0, "dice": 1.0},
}


@keras.saving.register_keras_serializable(package="tfseg")
class SegmentationLoss(keras.losses.Loss):
    """A weighted sum of loss components, e.g. ``{"bce": 1.0, "dice": 2.0}``."""

    def __init__(self, weights=None, classes: int = 1, ignore_index: int = 255, name: str = "segmentation_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.weights = dict(weights or {"bce": 1.0})
        unknown = sorted(set(self.weights) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"unknown loss component(s) {unknown}; available: {sorted(COMPONENTS)}")
        self.classes, self.ignore_index = classes, ignore_index

    def call(self, y_true, y_pred):
        target, probs, valid = _prepare(y_true, y_pred, self.classes, self.ignore_index)
        total = 0.0
        for key, weight in self.weights.items():
            total = total + weight * COMPONENTS[key](target, probs, valid, self.classes)
        # Keras divides reduced losses by the replica count under tf.distribute (the replicas'
        # gradients are summed); a loss that returns a scalar itself skips that step
        return scale_loss_for_distribution(total)

    def get_config(self):
        return {**super().get_config(), "weights": self.weights, "classes": self.classes, "ignore_index": self.ignore_index}


def get_loss(name: str, classes: int = 1, ignore_index: int = 255, weights=None) -> keras.losses.Loss:
    """A loss by config name; ``weights`` overrides the preset component weights."""
    if name not in PRESETS:
        raise ValueError(f"config key 'train.loss': {name!r} is not available; available: {sorted(PRESETS)}")
    return SegmentationLoss(weights or PRESETS[name], classes=classes, ignore_index=ignore_index, name=name)
