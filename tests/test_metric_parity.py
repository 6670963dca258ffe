"""One metric definition: a training epoch's logged validation scores equal `tfseg.evaluate
pixels` on the same fixture and weights, every validation pixel is counted once, and a class
absent from truth and prediction is left out of the means (numbers worked out with numpy)."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import rasterio
import pytest

from tests.data.fixtures import write_geotiff
from tests.data.formats import make_multilabel_folder
from tfseg import config as config_lib
from tfseg import evaluate
from tfseg import train as train_lib

CLASSES = ["land", "road", "building"]


def _multiclass_folder(root):
    """train/ and val/ mask folders: class 1 bright in band 1, class 2 bright in band 2."""
    rng = np.random.default_rng(3)
    for split, count in (("train", 2), ("val", 1)):
        for k in range(count):
            mask = np.zeros((128, 128), np.uint8)
            mask[10 + 20 * k:50 + 20 * k, 8:70] = 1
            mask[70:120, 60 + 10 * k:110 + 10 * k] = 2
            mask[0:6, :] = 255  # ignored rows
            image = rng.integers(20, 60, (3, 128, 128)).astype(np.uint8)
            image[0][mask == 1] += 150
            image[1][mask == 2] += 150
            write_geotiff(root / split / "images" / f"t{k}.tif", image)
            write_geotiff(root / split / "masks" / f"t{k}.tif", mask)


def _close(a, b):
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return b is not None and a == pytest.approx(b, abs=1e-5)


@pytest.mark.slow
def test_epoch_validation_scores_equal_evaluate_pixels(tmp_path):
    root = tmp_path / "data"
    _multiclass_folder(root)
    cfg = config_lib.from_dict({}, [
        "data.format=mask_folder", f"data.root={root}", f"data.classes=[{', '.join(CLASSES)}]",
        "data.window_size=64", "data.eval_overlap=0", "data.train_windows_per_epoch=4", "data.batch_size=2",
        "model.depth=2", "model.filters=4", "train.epochs=1", "train.loss=cce", "train.num_figure_tiles=0",
        "export.enabled=false", "tracking.neptune.mode=off", "data.max_nodata_fraction=1.0",
    ])
    result = train_lib.train(cfg, tmp_path / "run", verbose=0)
    with open(tmp_path / "run" / "history.csv", newline="") as handle:
        (epoch,) = list(csv.DictReader(handle))
    report = evaluate.evaluate_pixels(tmp_path / "run", sorted((root / "val" / "images").iterdir()),
                                      sorted((root / "val" / "masks").iterdir()), tile_size=64, overlap=0)
    for kind in ("iou", "f1", "precision", "recall", "accuracy"):
        assert _close(float(epoch[f"val_{kind}"]), report[kind]), kind
        assert _close(result["val"][kind], report[kind]), kind  # the final scores of metrics.json too
    for name in CLASSES:
        for kind in ("iou", "f1"):
            assert _close(float(epoch[f"val_{kind}_{name}"]), report["per_class"][name][kind]), (name, kind)
    json.dumps(report)  # null, not NaN, for an absent class


# ---------------------------------------------------------------------------------------------
# A fixture the old definitions fail: an absent class, and an overlapping evaluation grid
# ---------------------------------------------------------------------------------------------
ML_CLASSES = ["road", "building", "water"]  # water: in no mask, and never predicted (threshold 1.0)
SIZE, WINDOW, OVERLAP = 80, 64, 8
# the evaluation grid of an 80 px image with 64 px windows and 8 px overlap, worked out by hand:
# offsets 0 and 16 on each axis (the last window ends at the edge); the 48 px overlap is split at
# its middle, so the first window scores rows/cols 0-40 and the second 40-80
OFFSETS, OWNED = (0, 16), ((0, 40), (40, 80))


def _scores(tp, fp, fn):
    """Per-class IoU / F1 / precision / recall by hand (None: a class absent from truth and
    prediction) and their means over the present classes."""
    per_class = []
    for t, p, n in zip(tp, fp, fn):
        if t + p + n == 0:
            per_class.append(None)
            continue
        per_class.append({"iou": t / (t + p + n), "f1": 2 * t / (2 * t + p + n),
                          "precision": t / (t + p) if t + p else 0.0, "recall": t / (t + n) if t + n else 0.0})
    present = [s for s in per_class if s is not None]
    means = {kind: float(np.mean([s[kind] for s in present])) for kind in ("iou", "f1", "precision", "recall")}
    return per_class, means


def _counts(truth, pred):
    """tp, fp, fn per class of (H, W, K) 0/1 arrays (truth 255 = ignored)."""
    valid = truth != 255
    t, p = (truth == 1) & valid, (pred == 1) & valid
    return ((t & p).sum((0, 1)).astype(float), (~t & p & valid).sum((0, 1)).astype(float),
            (t & ~p).sum((0, 1)).astype(float))


@pytest.mark.slow
def test_epoch_validation_counts_overlap_once_and_leaves_out_an_absent_class(tmp_path):
    """The logged val_* of a multi-label training epoch on an overlapping eval grid equal the
    numbers worked out here with numpy (each pixel scored by the one window that owns it, the
    absent class null and out of the means), and equal `evaluate pixels` on the same
    predictions; the old definitions (absent class = 1.0 in the mean, every window scored whole)
    give other numbers on this fixture."""
    from tfseg.inference import load_predictor

    root = tmp_path / "data"
    make_multilabel_folder(root, SIZE)
    cfg = config_lib.from_dict({}, [
        "data.format=mask_folder", f"data.root={root}", f"data.classes=[{', '.join(ML_CLASSES)}]",
        "data.task=multilabel", f"data.window_size={WINDOW}", f"data.eval_overlap={OVERLAP}",
        "data.train_windows_per_epoch=4", "data.batch_size=2", "train.threshold=[0.5,0.5,1.0]",
        "model.depth=2", "model.filters=4", "train.epochs=1", "train.loss=bce", "train.num_figure_tiles=0",
        "export.enabled=false", "tracking.neptune.mode=off", "data.max_nodata_fraction=1.0",
    ])
    result = train_lib.train(cfg, tmp_path / "run", verbose=0)
    with open(tmp_path / "run" / "history.csv", newline="") as handle:
        (epoch,) = list(csv.DictReader(handle))

    # the trained model on each window of the val image; each pixel from the window that owns it
    with rasterio.open(root / "val" / "images" / "t0.tif") as src:
        image = np.moveaxis(src.read(), 0, -1).astype(np.float32)
    with rasterio.open(root / "val" / "masks" / "t0.tif") as src:
        truth = np.moveaxis(src.read(), 0, -1)
    predictor = load_predictor(tmp_path / "run")
    tiles = [(r, c) for r in OFFSETS for c in OFFSETS]
    probs = predictor(np.stack([image[r:r + WINDOW, c:c + WINDOW] for r, c in tiles]))
    masks = (probs >= np.array([0.5, 0.5, 1.0], np.float32)).astype(np.uint8)
    assert masks[..., 2].sum() == 0 and (truth[..., 2] != 1).all()  # water: absent from truth and prediction
    pred = np.zeros_like(truth)
    for (r, c), tile in zip(tiles, masks):
        (r0, r1), (c0, c1) = OWNED[OFFSETS.index(r)], OWNED[OFFSETS.index(c)]
        pred[r0:r1, c0:c1] = tile[r0 - r:r1 - r, c0 - c:c1 - c]
    per_class, means = _scores(*_counts(truth, pred))
    assert per_class[2] is None

    for kind in ("iou", "f1", "precision", "recall"):
        assert float(epoch[f"val_{kind}"]) == pytest.approx(means[kind], abs=1e-5), kind
        assert result["val"][kind] == pytest.approx(means[kind], abs=1e-5), kind  # metrics.json
    for k, name in enumerate(ML_CLASSES[:2]):
        for kind in ("iou", "f1"):
            assert float(epoch[f"val_{kind}_{name}"]) == pytest.approx(per_class[k][kind], abs=1e-5), (name, kind)
    assert math.isnan(float(epoch["val_iou_water"])) and math.isnan(float(epoch["val_f1_water"]))

    # evaluate pixels on the same predictions (a tfseg.predict class raster) reports the same
    write_geotiff(tmp_path / "pred" / "t0_class.tif", np.moveaxis(pred, -1, 0), nodata=255)
    report = evaluate.evaluate_pixels(tmp_path / "run", masks=[root / "val" / "masks" / "t0.tif"],
                                      predictions=[tmp_path / "pred" / "t0_class.tif"])
    assert report["per_class"]["water"] == {"iou": None, "f1": None, "precision": None, "recall": None}
    for kind in ("iou", "f1", "precision", "recall"):
        assert report[kind] == pytest.approx(means[kind], abs=1e-5), kind
    for k, name in enumerate(ML_CLASSES[:2]):
        assert report["per_class"][name]["iou"] == pytest.approx(per_class[k]["iou"], abs=1e-5), name

    # the fixture tells the definitions apart: the old mean (water = 1.0) and the old count (each
    # window whole, the overlap scored up to four times) differ from the numbers logged
    old_mean = (per_class[0]["iou"] + per_class[1]["iou"] + 1.0) / 3
    counts = [_counts(truth[r:r + WINDOW, c:c + WINDOW], tile) for (r, c), tile in zip(tiles, masks)]
    twice, _ = _scores(*(sum(c[i] for c in counts) for i in range(3)))
    assert abs(float(epoch["val_iou"]) - old_mean) > 0.05
    assert abs(float(epoch["val_iou_road"]) - twice[0]["iou"]) > 1e-3 or abs(
        float(epoch["val_iou_building"]) - twice[1]["iou"]) > 1e-3
