"""One metric definition: a training epoch's logged validation scores equal `tfseg.evaluate
pixels` on the same fixture and weights, and every validation pixel is counted once."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from tests.data.fixtures import write_geotiff
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
