"""Segmentation losses that honour an ignore index, for binary, multi-class and multi-label tasks
(pure Keras 3: keras.ops / keras.losses only, so they also run on the JAX backend).

Label encodings (``task``, see ``tfseg.config.resolve_task``):

- ``binary``: y_true (B, H, W, 1) in {0, 1}, ``ignore_index`` where unknown; 1 sigmoid channel.
- ``multiclass``: y_true (B, H, W, 1) class indices 0..K-1 or ``ignore_index``; K softmax channels.
- ``multilabel``: y_true (B, H, W, K) in {0, 1} per class, ``ignore_index`` where unknown (e.g.
  nodata); K sigmoid channels (Dstl).

Predictions are probabilities from the model's float32 head. Components (``COMPONENTS``):
``bce``/``cce`` (cross-entropy matching the task, via ``keras.losses``), ``focal`` (keras' binary /
categorical focal cross-entropy), ``dice``, ``jaccard`` (soft IoU), ``tversky``, ``lovasz``
(Lovasz-Softmax / Lovasz extension of the Jaccard index). A loss is a weighted sum of components.

Example:
    >>> loss = get_loss("bce_dice", num_classes=1, ignore_index=255, weights={"bce": 1, "dice": 2})
    >>> loss = get_loss("focal", num_classes=6, task="multiclass", class_weights=[0.2, 1, 1, 1, 1, 3])
"""
from __future__ import annotations

import keras
from keras import ops
from keras.src.losses.loss import scale_loss_for_distribution  # no public alias in Keras 3

from . import registry
from .errors import TfsegError

EPSILON = 1e-6
TASKS = ("binary", "multiclass", "multilabel")


class LossError(TfsegError):
    """A loss argument (``train.loss``, ``train.loss_weights``, ``train.class_weights``, the task)
    cannot be used; the message names it."""


def default_task(num_classes: int) -> str:
    """The task when none is given: binary for one output channel, else multiclass."""
    return "binary" if num_classes == 1 else "multiclass"


def check_task(task, num_classes: int) -> str:
    task = task or default_task(num_classes)
    if task not in TASKS:
        raise LossError(f"data.task: expected one of {list(TASKS)}, got {task!r}")
    if task == "binary" and num_classes != 1:
        raise LossError(f"data.task: 'binary' expects num_classes=1 (one sigmoid channel), "
                        f"got num_classes={num_classes}")
    if task == "multiclass" and num_classes < 2:
        raise LossError(f"data.task: 'multiclass' expects num_classes >= 2 (softmax channels), "
                        f"got num_classes={num_classes}")
    return task


def prepare_targets(y_true, y_pred, num_classes: int, ignore_index: int, task: str):
    """Targets, probabilities and a valid mask, all float32 (B, H, W, C) with C = model channels
    (multiclass: one-hot targets and a valid mask broadcast over classes)."""
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "float32")
    valid = ops.cast(ops.not_equal(y_true, float(ignore_index)), "float32")
    labels = ops.where(valid > 0, y_true, ops.zeros_like(y_true))
    if task == "multiclass":
        target = ops.one_hot(ops.cast(labels[..., 0], "int32"), num_classes)
        valid = ops.broadcast_to(valid, ops.shape(target))
    else:
        target = labels
        if task == "multilabel":
            valid = ops.broadcast_to(valid, ops.shape(y_pred))
            target = ops.broadcast_to(target, ops.shape(y_pred))
    return target, y_pred, valid


def _class_weight_vector(class_weights, channels: int, task: str):
    if not class_weights:
        return None
    weights = [float(w) for w in class_weights]
    if task == "binary":
        if len(weights) == 1:  # weight of the positive class
            weights = [1.0, weights[0]]
        if len(weights) != 2:
            raise LossError(f"train.class_weights: binary expects [positive] or [background, positive], got {weights}")
    elif len(weights) != channels:
        raise LossError(f"train.class_weights: expected {channels} weights (one per class), got {len(weights)}")
    if any(w < 0 for w in weights):
        raise LossError(f"train.class_weights: expected non-negative weights, got {weights}")
    return ops.convert_to_tensor(weights, "float32")


def _pixel_weights(target, valid, class_weights, task):
    """Per-pixel(-channel) weight: valid mask times the weight of the true class."""
    if class_weights is None:
        return valid
    if task == "multiclass":
        return valid * ops.sum(target * class_weights, axis=-1, keepdims=True)
    if task == "binary":
        return valid * (class_weights[0] + (class_weights[1] - class_weights[0]) * target)
    return valid * class_weights  # multilabel: per channel


def _weighted_mean(values, weights):
    return ops.sum(values * weights) / ops.maximum(ops.sum(weights), EPSILON)


# ------------------------------------------------------------------------------------------
# Components: f(target, probs, valid, ctx) -> scalar
# ------------------------------------------------------------------------------------------
def crossentropy(target, probs, valid, ctx):
    """Binary (per channel) or categorical cross-entropy from keras.losses, masked and weighted."""
    if ctx["task"] == "multiclass":
        per_pixel = keras.losses.categorical_crossentropy(target, probs)[..., None]
        weights = _pixel_weights(target, valid[..., :1], ctx["class_weights"], "multiclass")
    else:
        per_pixel = keras.ops.binary_crossentropy(target, ops.clip(probs, EPSILON, 1.0 - EPSILON))
        weights = _pixel_weights(target, valid, ctx["class_weights"], ctx["task"])
    return _weighted_mean(per_pixel, weights)


def focal(target, probs, valid, ctx):
    """Focal loss (Lin et al.) via keras' focal cross-entropies; gamma = ``focal_gamma``."""
    gamma = ctx["focal_gamma"]
    if ctx["task"] == "multiclass":
        per_pixel = keras.losses.categorical_focal_crossentropy(target, probs, alpha=1.0, gamma=gamma)[..., None]
        weights = _pixel_weights(target, valid[..., :1], ctx["class_weights"], "multiclass")
    else:
        # keras' binary focal loss averages over the last axis: apply it per channel
        per_pixel = keras.losses.binary_focal_crossentropy(target[..., None], probs[..., None], gamma=gamma)
        weights = _pixel_weights(target, valid, ctx["class_weights"], ctx["task"])
    return _weighted_mean(per_pixel, weights)


def _per_class_sums(target, probs, valid):
    axes = (0, 1, 2)
    tp = ops.sum(target * probs * valid, axis=axes)
    fp = ops.sum((1.0 - target) * probs * valid, axis=axes)
    fn = ops.sum(target * (1.0 - probs) * valid, axis=axes)
    return tp, fp, fn


def _class_mean(scores, ctx):
    weights = ctx["class_weights"]
    if weights is None:
        return ops.mean(scores)
    if ctx["task"] == "binary":
        weights = weights[1:]
    return ops.sum(scores * weights) / ops.maximum(ops.sum(weights), EPSILON)


def dice(target, probs, valid, ctx):
    """Soft Dice (1 - F1) over the batch, averaged over classes (binary: the positive class)."""
    tp, fp, fn = _per_class_sums(target, probs, valid)
    return 1.0 - _class_mean((2.0 * tp + 1.0) / (2.0 * tp + fp + fn + 1.0), ctx)


def jaccard(target, probs, valid, ctx):
    """Soft Jaccard (1 - IoU) over the batch, averaged over classes."""
    tp, fp, fn = _per_class_sums(target, probs, valid)
    return 1.0 - _class_mean((tp + 1.0) / (tp + fp + fn + 1.0), ctx)


def tversky(target, probs, valid, ctx):
    """Tversky loss: alpha weighs false positives, beta false negatives (0.5/0.5 = Dice)."""
    tp, fp, fn = _per_class_sums(target, probs, valid)
    alpha, beta = ctx["tversky_alpha"], ctx["tversky_beta"]
    return 1.0 - _class_mean((tp + 1.0) / (tp + alpha * fp + beta * fn + 1.0), ctx)


def lovasz(target, probs, valid, ctx):
    """Lovasz-Softmax (Berman et al. 2018): the Lovasz extension of the per-class Jaccard loss over
    the batch's valid pixels, averaged over classes present in the batch (binary: the positive
    class), weighted by the class weights as Dice is (:func:`_class_mean`). Ignored pixels get
    zero error and zero truth, which removes them exactly."""
    channels = probs.shape[-1]
    errors = ops.reshape(ops.abs(target - probs) * valid, (-1, channels))
    target = ops.reshape(target * valid, (-1, channels))
    losses, present = [], []
    for c in range(channels):
        order = ops.flip(ops.argsort(errors[:, c]), axis=0)
        err_sorted = ops.take(errors[:, c], order)
        gt_sorted = ops.take(target[:, c], order)
        gts = ops.sum(gt_sorted)
        intersection = gts - ops.cumsum(gt_sorted)
        union = gts + ops.cumsum(1.0 - gt_sorted)
        jac = 1.0 - intersection / ops.maximum(union, EPSILON)
        grad = ops.concatenate([jac[:1], jac[1:] - jac[:-1]], axis=0)
        losses.append(ops.sum(ops.stop_gradient(grad) * err_sorted))
        present.append(ops.cast(gts > 0, "float32"))
    losses, present = ops.stack(losses), ops.stack(present)
    if ctx["task"] != "multiclass":
        return _class_mean(losses, ctx)
    # 'present' classes, as in the reference implementation; class weights as in _class_mean
    weights = present if ctx["class_weights"] is None else present * ctx["class_weights"]
    return ops.sum(losses * weights) / ops.maximum(ops.sum(weights), EPSILON)


COMPONENTS = {"bce": crossentropy, "cce": crossentropy, "focal": focal, "dice": dice, "jaccard": jaccard,
              "tversky": tversky, "lovasz": lovasz}
PRESETS = registry.LOSS_PRESETS  # train.loss -> component weights (named in tfseg.registry)


@keras.saving.register_keras_serializable(package="tfseg")
class SegmentationLoss(keras.losses.Loss):
    """A weighted sum of loss components, e.g. ``{"bce": 1.0, "dice": 2.0}`` (an F1-heavy mix).

    Example:
        >>> loss = SegmentationLoss({"focal": 1, "lovasz": 0.5}, num_classes=4, task="multilabel")
    """

    def __init__(self, weights=None, num_classes: int = 1, ignore_index: int = 255, task=None, class_weights=None,
                 focal_gamma: float = 2.0, tversky_alpha: float = 0.3, tversky_beta: float = 0.7,
                 name: str = "segmentation_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.weights = {k: float(v) for k, v in dict(weights or {"bce": 1.0}).items()}
        unknown = sorted(set(self.weights) - set(COMPONENTS))
        if unknown:
            raise LossError(f"config key 'train.loss_weights': unknown loss component(s) {unknown}; "
                             f"available: {sorted(COMPONENTS)}")
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.task = check_task(task, self.num_classes)
        self.class_weights = list(class_weights) if class_weights else []
        _class_weight_vector(self.class_weights, self.num_classes, self.task)  # validate now
        self.focal_gamma, self.tversky_alpha, self.tversky_beta = focal_gamma, tversky_alpha, tversky_beta

    def call(self, y_true, y_pred):
        target, probs, valid = prepare_targets(y_true, y_pred, self.num_classes, self.ignore_index, self.task)
        ctx = {"task": self.task, "class_weights": _class_weight_vector(self.class_weights, self.num_classes, self.task),
               "focal_gamma": self.focal_gamma, "tversky_alpha": self.tversky_alpha,
               "tversky_beta": self.tversky_beta}
        total = 0.0
        for key, weight in self.weights.items():
            if weight:
                total = total + weight * COMPONENTS[key](target, probs, valid, ctx)
        # Keras divides reduced losses by the replica count under tf.distribute (the replicas'
        # gradients are summed); a loss that returns a scalar itself skips that step
        return scale_loss_for_distribution(total)

    def get_config(self):
        return {**super().get_config(), "weights": self.weights, "num_classes": self.num_classes,
                "ignore_index": self.ignore_index, "task": self.task, "class_weights": self.class_weights,
                "focal_gamma": self.focal_gamma, "tversky_alpha": self.tversky_alpha,
                "tversky_beta": self.tversky_beta}


def get_loss(name: str, num_classes: int = 1, ignore_index: int = 255, weights=None, task=None, class_weights=None,
             **params) -> keras.losses.Loss:
    """A loss by config name (``train.loss``); ``weights`` (``train.loss_weights``) overrides the
    preset component weights; ``task`` defaults to binary for 1 class, else multiclass;
    ``class_weights`` (``train.class_weights``) weighs classes; ``params``: focal_gamma,
    tversky_alpha, tversky_beta."""
    if name not in PRESETS:
        raise LossError(f"config key 'train.loss': {name!r} is not available; available: {sorted(PRESETS)}")
    return SegmentationLoss(weights or PRESETS[name], num_classes=num_classes, ignore_index=ignore_index, task=task,
                            class_weights=class_weights, name=name, **params)
