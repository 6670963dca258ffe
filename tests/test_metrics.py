"""Streaming metrics against a numpy reference on random masks (binary, multiclass, multilabel)."""
import numpy as np
import pytest

import keras

from tfseg.metrics import ConfusionMatrixMetric, segmentation_metrics

IGNORE = 255


def _np_scores(tp, fp, fn):
    def ratio(num, den):
        return np.where(tp + fp + fn > 0, np.where(den > 0, num / np.maximum(den, 1), 0.0), np.nan)

    return {"iou": ratio(tp, tp + fp + fn), "f1": ratio(2 * tp, 2 * tp + fp + fn),
            "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn)}


def _reference(truth, pred, classes):
    """Per-class tp/fp/fn and accuracy over valid pixels; truth/pred flat integer label arrays."""
    valid = truth != IGNORE
    t, p = truth[valid], pred[valid]
    tp = np.array([np.sum((t == c) & (p == c)) for c in range(classes)], float)
    fp = np.array([np.sum((t != c) & (p == c)) for c in range(classes)], float)
    fn = np.array([np.sum((t == c) & (p != c)) for c in range(classes)], float)
    return _np_scores(tp, fp, fn), np.mean(t == p)


def _run(metrics, batches):
    for y_true, y_pred in batches:
        for metric in metrics:
            metric.update_state(y_true, y_pred)
    return {m.name: float(keras.ops.convert_to_numpy(m.result())) for m in metrics}


def _random_batches(rng, classes, task, n=2, shape=(2, 16, 24)):
    batches = []
    for _ in range(n):
        if task == "multilabel":
            y_true = (rng.random(shape + (classes,)) < 0.4).astype("float32")
            nodata = rng.random(shape) < 0.15
            y_true[nodata] = IGNORE
            y_pred = rng.random(shape + (classes,)).astype("float32")
        else:
            labels = 2 if classes == 1 else classes
            y_true = rng.integers(0, labels, shape + (1,)).astype("float32")
            y_true[rng.random(shape + (1,)) < 0.15] = IGNORE
            y_pred = rng.random(shape + (classes,)).astype("float32")
            if classes > 1:
                y_pred /= y_pred.sum(-1, keepdims=True)
        batches.append((y_true, y_pred))
    return batches


def test_binary_positive_class_and_macro_match_numpy():
    rng = np.random.default_rng(0)
    batches = _random_batches(rng, 1, "binary")
    got = _run(segmentation_metrics(1, IGNORE, 0.5, task="binary", class_names=["building"]), batches)
    truth = np.concatenate([b[0].ravel() for b in batches])
    pred = np.concatenate([(b[1] >= 0.5).astype(int).ravel() for b in batches])
    scores, accuracy = _reference(truth, pred, 2)
    for kind in ("iou", "f1", "precision", "recall"):
        assert got[kind] == pytest.approx(scores[kind][1], abs=1e-5)
    assert got["accuracy"] == pytest.approx(accuracy, abs=1e-5)
    assert got["miou"] == pytest.approx(scores["iou"].mean(), abs=1e-5)


def test_multiclass_mean_and_per_class_match_numpy():
    rng = np.random.default_rng(1)
    names = ["road", "water", "building", "tree"]
    batches = _random_batches(rng, 4, "multiclass")
    got = _run(segmentation_metrics(4, IGNORE, task="multiclass", class_names=names), batches)
    truth = np.concatenate([b[0].ravel() for b in batches])
    pred = np.concatenate([b[1].argmax(-1).ravel() for b in batches])
    scores, accuracy = _reference(truth, pred, 4)
    for kind in ("iou", "f1", "precision", "recall"):
        assert got[kind] == pytest.approx(scores[kind].mean(), abs=1e-5)
    for c, name in enumerate(names):
        assert got[f"iou_{name}"] == pytest.approx(scores["iou"][c], abs=1e-5)
        assert got[f"f1_{name}"] == pytest.approx(scores["f1"][c], abs=1e-5)
    assert got["accuracy"] == pytest.approx(accuracy, abs=1e-5)


def test_multilabel_matches_numpy_per_channel():
    rng = np.random.default_rng(2)
    batches = _random_batches(rng, 3, "multilabel")
    got = _run(segmentation_metrics(3, IGNORE, 0.5, task="multilabel", class_names=["a", "b", "c"]), batches)
    truth = np.concatenate([b[0].reshape(-1, 3) for b in batches])
    pred = np.concatenate([(b[1] >= 0.5).reshape(-1, 3) for b in batches])
    per = []
    for c in range(3):
        scores, _ = _reference(truth[:, c], pred[:, c].astype(int), 2)
        per.append({k: v[1] for k, v in scores.items()})
        assert got[f"iou_{'abc'[c]}"] == pytest.approx(per[-1]["iou"], abs=1e-5)
    for kind in ("iou", "f1", "precision", "recall"):
        assert got[kind] == pytest.approx(np.mean([p[kind] for p in per]), abs=1e-5)
    valid = truth != IGNORE
    assert got["accuracy"] == pytest.approx(np.mean(truth[valid] == pred[valid]), abs=1e-5)


def test_ignored_pixels_do_not_count_and_reset():
    y_true = np.full((1, 4, 4, 1), IGNORE, "float32")
    y_true[0, 0, 0, 0] = 1
    y_pred = np.zeros((1, 4, 4, 1), "float32")  # every pixel predicted background
    metric = ConfusionMatrixMetric("recall", 1, IGNORE)
    metric.update_state(y_true, y_pred)
    assert float(metric.result()) == 0.0
    assert float(np.sum(keras.ops.convert_to_numpy(metric.matrix))) == 1.0
    metric.reset_state()
    assert float(np.sum(keras.ops.convert_to_numpy(metric.matrix))) == 0.0


def test_default_call_keeps_the_five_names_and_config_round_trip():
    metrics = segmentation_metrics(3, IGNORE)
    assert [m.name for m in metrics] == ["iou", "f1", "precision", "recall", "accuracy"]
    metric = ConfusionMatrixMetric("f1", 3, IGNORE, task="multilabel", class_id=2, name="f1_c")
    clone = ConfusionMatrixMetric.from_config(metric.get_config())
    assert (clone.task, clone.class_id, clone.name) == ("multilabel", 2, "f1_c")


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="class_names"):
        segmentation_metrics(3, IGNORE, class_names=["a"])
    with pytest.raises(ValueError, match="metric kind"):
        ConfusionMatrixMetric("dice")
    with pytest.raises(ValueError, match="task"):
        ConfusionMatrixMetric("iou", 3, task="panoptic")


def test_absent_class_is_nan_and_left_out_of_means_in_training_and_evaluation():
    """A class with no truth and no prediction: NaN per class (null in evaluate), never 1.0 or 0,
    and the means run over the classes present in truth or prediction (the Dstl inflation)."""
    from tfseg.metrics import confusion_matrix_numpy, scores_from_matrix

    truth = np.zeros((1, 4, 6, 1), "float32")
    truth[0, :2] = 1  # classes 0 and 1 in truth; class 2 nowhere
    probs = np.zeros((1, 4, 6, 3), "float32")
    probs[..., 0] = 1.0
    probs[0, 0, :, :] = [0.0, 1.0, 0.0]  # row 0 predicted 1, rows 1-3 predicted 0
    got = _run(segmentation_metrics(3, IGNORE, task="multiclass", class_names=["a", "b", "c"]), [(truth, probs)])
    iou_a, iou_b = 12 / 18, 6 / 12
    assert got["iou_a"] == pytest.approx(iou_a) and got["iou_b"] == pytest.approx(iou_b)
    assert np.isnan(got["iou_c"]) and np.isnan(got["f1_c"])
    assert got["iou"] == pytest.approx((iou_a + iou_b) / 2)  # not (a + b + 1) / 3, not (a + b + 0) / 3
    # evaluate's numpy matrix + the shared scoring give the same numbers, null for the absent class
    matrix = confusion_matrix_numpy(truth[0, ..., 0], probs[0].argmax(-1), np.ones((4, 6), bool), 3, "multiclass")
    report = scores_from_matrix(matrix, "multiclass", ["a", "b", "c"])
    assert report["per_class"]["c"] == {"iou": None, "f1": None, "precision": None, "recall": None}
    assert report["iou"] == report["miou"] == pytest.approx(got["iou"])
    assert report["per_class"]["a"]["iou"] == pytest.approx(iou_a)
    # binary with no foreground anywhere: IoU undefined (NaN / null), miou = the background's
    binary = _run(segmentation_metrics(1, IGNORE, task="binary", class_names=["b"]),
                  [(np.zeros((1, 4, 4, 1), "float32"), np.zeros((1, 4, 4, 1), "float32"))])
    assert np.isnan(binary["iou"]) and binary["miou"] == 1.0
    report = scores_from_matrix(confusion_matrix_numpy(np.zeros((4, 4), int), np.zeros((4, 4), int),
                                                       np.ones((4, 4), bool), 1, "binary"), "binary", ["b"])
    assert report["iou"] is None and report["miou"] == 1.0


def test_multilabel_per_class_thresholds():
    rng = np.random.default_rng(3)
    thresholds = [0.2, 0.5, 0.8]
    batches = _random_batches(rng, 3, "multilabel")
    got = _run(segmentation_metrics(3, IGNORE, thresholds, task="multilabel", class_names=["a", "b", "c"]), batches)
    truth = np.concatenate([b[0].reshape(-1, 3) for b in batches])
    pred = np.concatenate([(b[1] >= np.asarray(thresholds, np.float32)).reshape(-1, 3) for b in batches])
    for c in range(3):
        scores, _ = _reference(truth[:, c], pred[:, c].astype(int), 2)
        assert got[f"iou_{'abc'[c]}"] == pytest.approx(scores["iou"][1], abs=1e-5)
    metric = ConfusionMatrixMetric("iou", 3, IGNORE, thresholds, task="multilabel")
    assert ConfusionMatrixMetric.from_config(metric.get_config()).threshold == thresholds
    with pytest.raises(ValueError, match=r"a list needs task multilabel and 3 values"):
        ConfusionMatrixMetric("iou", 3, IGNORE, [0.5, 0.5], task="multilabel")
    with pytest.raises(ValueError, match=r"a list needs task multilabel"):
        ConfusionMatrixMetric("iou", 1, IGNORE, [0.5], task="binary")
