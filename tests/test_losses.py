"""Losses: numpy references, ignore index, class weights, every component on every task."""
import numpy as np
import pytest

import keras

from tfseg.errors import TfsegError
from tfseg.losses import COMPONENTS, PRESETS, LossError, SegmentationLoss, get_loss

IGNORE = 255


def _value(loss, y_true, y_pred):
    return float(keras.ops.convert_to_numpy(loss(y_true, y_pred)))


def _data(task, classes, rng, shape=(2, 8, 8)):
    if task == "multilabel":
        y_true = (rng.random(shape + (classes,)) < 0.4).astype("float32")
        y_true[rng.random(shape) < 0.2] = IGNORE
        y_pred = rng.uniform(0.05, 0.95, shape + (classes,)).astype("float32")
    else:
        y_true = rng.integers(0, max(classes, 2), shape + (1,)).astype("float32")
        y_true[rng.random(shape + (1,)) < 0.2] = IGNORE
        y_pred = rng.uniform(0.05, 0.95, shape + (classes,)).astype("float32")
        if classes > 1:
            y_pred /= y_pred.sum(-1, keepdims=True)
    return y_true, y_pred


def _perfect(task, classes, y_true):
    labels = np.where(y_true == IGNORE, 0, y_true)
    if task == "multiclass":
        return np.eye(classes, dtype="float32")[labels[..., 0].astype(int)]
    return labels.astype("float32")


CASES = [("binary", 1), ("multiclass", 4), ("multilabel", 3)]


@pytest.mark.parametrize("task,classes", CASES)
@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_component_ignores_masked_pixels_and_is_minimal_at_truth(task, classes, component):
    rng = np.random.default_rng(0)
    y_true, y_pred = _data(task, classes, rng)
    loss = SegmentationLoss({component: 1.0}, classes, IGNORE, task=task)
    value = _value(loss, y_true, y_pred)
    assert np.isfinite(value) and value > 0
    # changing predictions where the label is ignored changes nothing
    ignored = (y_true == IGNORE).any(-1) if task != "multilabel" else (y_true == IGNORE).all(-1)
    shuffled = y_pred.copy()
    shuffled[ignored] = shuffled[ignored][:, ::-1]
    assert _value(loss, y_true, shuffled) == pytest.approx(value, rel=1e-5)
    # the truth scores (near) zero and better than random predictions
    perfect = np.clip(_perfect(task, classes, y_true), 1e-4, 1 - 1e-4)
    assert _value(loss, y_true, perfect) < min(0.02, value)


def test_bce_and_cce_match_numpy_with_ignore_index():
    rng = np.random.default_rng(1)
    y_true, y_pred = _data("binary", 1, rng)
    valid = y_true != IGNORE
    t, p = y_true[valid], y_pred[valid]
    expected = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    assert _value(get_loss("bce", 1, IGNORE), y_true, y_pred) == pytest.approx(expected, rel=1e-4)

    y_true, y_pred = _data("multiclass", 4, rng)
    valid = y_true[..., 0] != IGNORE
    picked = np.take_along_axis(y_pred, np.where(valid, y_true[..., 0], 0).astype(int)[..., None], -1)[..., 0]
    expected = -np.mean(np.log(picked[valid]))
    assert _value(get_loss("cce", 4, IGNORE), y_true, y_pred) == pytest.approx(expected, rel=1e-4)


def test_dice_matches_numpy_and_class_weights_reweigh():
    rng = np.random.default_rng(2)
    y_true, y_pred = _data("multiclass", 3, rng)
    valid = (y_true[..., 0] != IGNORE)[..., None]
    onehot = np.eye(3)[np.where(valid[..., 0], y_true[..., 0], 0).astype(int)]
    tp = (onehot * y_pred * valid).sum((0, 1, 2))
    fp = ((1 - onehot) * y_pred * valid).sum((0, 1, 2))
    fn = (onehot * (1 - y_pred) * valid).sum((0, 1, 2))
    per_class = 1 - (2 * tp + 1) / (2 * tp + fp + fn + 1)
    assert _value(get_loss("dice", 3, IGNORE), y_true, y_pred) == pytest.approx(per_class.mean(), rel=1e-4)
    weights = [0.0, 0.0, 1.0]
    got = _value(get_loss("dice", 3, IGNORE, class_weights=weights), y_true, y_pred)
    assert got == pytest.approx(per_class[2], rel=1e-4)


def _lovasz_reference(y_true, y_pred, task, class_weights=None):
    """Berman et al.'s per-class Lovasz hinge on the errors (numpy), ignored pixels removed;
    classes weighed like Dice (multiclass: present classes; binary: the positive class's weight)."""
    channels = y_pred.shape[-1]
    probs = y_pred.reshape(-1, channels)
    if task == "multiclass":
        labels = y_true.reshape(-1)
        keep = labels != IGNORE
        truth = np.eye(channels)[labels[keep].astype(int)]
        probs = probs[keep]
    else:
        truth = np.broadcast_to(y_true, y_pred.shape).reshape(-1, channels)
    losses, present = [], []
    for c in range(channels):
        keep = truth[:, c] != IGNORE
        fg, errors = truth[keep, c].astype(float), np.abs(truth[keep, c] - probs[keep, c])
        order = np.argsort(-errors, kind="stable")
        gt_sorted = fg[order]
        gts = gt_sorted.sum()
        jaccard = 1 - (gts - gt_sorted.cumsum()) / (gts + (1 - gt_sorted).cumsum())
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
        losses.append(np.dot(errors[order], jaccard))
        present.append(float(gts > 0))
    weights = np.ones(channels) if class_weights is None else np.asarray(class_weights, float)[-channels:]
    if task == "multiclass":
        weights = weights * np.asarray(present)
    return float(np.dot(losses, weights) / weights.sum())


def test_lovasz_matches_reference_implementation():
    """Berman et al.'s lovasz_softmax_flat (numpy transcription, :func:`_lovasz_reference`), classes='present'."""
    rng = np.random.default_rng(3)
    y_true, y_pred = _data("multiclass", 3, rng)
    want = _lovasz_reference(y_true, y_pred, "multiclass")
    assert _value(get_loss("lovasz", 3, IGNORE), y_true, y_pred) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("task,classes,class_weights", [("multiclass", 3, [0.2, 1.0, 3.0]),
                                                        ("multiclass", 3, [0.01, 0.01, 100.0]),
                                                        ("multilabel", 3, [0.2, 1.0, 3.0]),
                                                        ("binary", 1, [0.5, 3.0])])
def test_lovasz_weighs_classes_like_dice(task, classes, class_weights):
    rng = np.random.default_rng(7)
    y_true, y_pred = _data(task, classes, rng)
    loss = get_loss("lovasz", classes, IGNORE, task=task, class_weights=class_weights)
    want = _lovasz_reference(y_true, y_pred, task, class_weights)
    assert _value(loss, y_true, y_pred) == pytest.approx(want, rel=1e-4)
    unweighted = _value(get_loss("lovasz", classes, IGNORE, task=task), y_true, y_pred)
    assert unweighted == pytest.approx(_lovasz_reference(y_true, y_pred, task), rel=1e-4)
    if task == "multiclass":  # the weights change the value (they were ignored before)
        assert abs(want - unweighted) > 1e-3


def test_weighted_mix_and_gradients_flow():
    rng = np.random.default_rng(4)
    y_true, y_pred = _data("binary", 1, rng)
    bce = _value(get_loss("bce", 1, IGNORE), y_true, y_pred)
    dice = _value(get_loss("dice", 1, IGNORE), y_true, y_pred)
    mix = _value(get_loss("bce_dice", 1, IGNORE, weights={"bce": 1.0, "dice": 2.0}), y_true, y_pred)
    assert mix == pytest.approx(bce + 2 * dice, rel=1e-5)
    positive_heavy = _value(get_loss("bce", 1, IGNORE, class_weights=[1.0, 10.0]), y_true, y_pred)
    assert positive_heavy != pytest.approx(bce)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        pred = tf.Variable(y_pred)
        with tf.GradientTape() as tape:
            value = get_loss("lovasz", 1, IGNORE)(y_true, pred)
        grad = tape.gradient(value, pred).numpy()
        assert np.abs(grad).sum() > 0
        assert np.all(grad[y_true == IGNORE] == 0)


def test_serialization_round_trip():
    loss = get_loss("tversky", 3, IGNORE, task="multilabel", class_weights=[1, 2, 3], tversky_alpha=0.2)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    rng = np.random.default_rng(5)
    y_true, y_pred = _data("multilabel", 3, rng)
    assert _value(clone, y_true, y_pred) == pytest.approx(_value(loss, y_true, y_pred))
    assert set(PRESETS) >= {"bce", "cce", "dice", "bce_dice", "focal", "jaccard", "lovasz", "tversky"}


def test_bad_inputs_name_the_key():
    assert issubclass(LossError, TfsegError)
    with pytest.raises(LossError, match="train.loss"):
        get_loss("hinge", 1)
    with pytest.raises(LossError, match="train.loss_weights"):
        get_loss("bce", 1, weights={"bce": 1, "ssim": 1})
    with pytest.raises(LossError, match="train.class_weights"):
        get_loss("cce", 4, class_weights=[1, 2])
    with pytest.raises(LossError, match="data.task: 'binary'"):
        get_loss("bce", 3, task="binary")


def test_config_validates_the_same_components():
    """tfseg.config checks train.loss_weights without importing Keras: same names."""
    from tfseg import config as config_lib

    assert sorted(config_lib.LOSS_COMPONENTS) == sorted(COMPONENTS)
    for weights in PRESETS.values():
        assert set(weights) <= set(config_lib.LOSS_COMPONENTS)
