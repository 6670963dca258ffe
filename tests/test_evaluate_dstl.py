"""``evaluate pixels --wkt``: Dstl WKT labels as the truth (rasterized by the dstl format's code,
as in training), scored against multi-label ``tfseg.predict`` rasters (``--predictions``)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.data.formats import make_dstl
from tests.data.fixtures import write_geotiff
from tests.infer_support import save_run
from tfseg import evaluate
from tfseg.data.formats.dstl import CLASSES

SIZE, IMAGE_ID = 90, "6120_2_2"
XMAX, YMIN = 0.009188, -0.009039  # make_dstl's grid size
# pixel rectangles (col0, row0, col1, row1) per ClassType; the others are empty
RECTS = {1: (20, 10, 50, 40), 3: (5, 50, 85, 60), 5: (30, 55, 60, 85)}
SHIFT = 3  # the prediction of class 3 (road) is the truth moved right by 3 columns


def _normalized_square(c0, r0, c1, r1):
    """The Dstl normalized-coordinate polygon of a pixel rectangle (the inverse of the format's scaling)."""
    sx, sy = SIZE * SIZE / (SIZE + 1) / XMAX, SIZE * SIZE / (SIZE + 1) / YMIN
    x0, x1, y0, y1 = c0 / sx, c1 / sx, r0 / sy, r1 / sy
    return f"MULTIPOLYGON ((({x0} {y0}, {x1} {y0}, {x1} {y1}, {x0} {y1}, {x0} {y0})))"


def _write_wkt(path, rows, header=("ImageId", "ClassType", "MultipolygonWKT")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _truth():
    truth = np.zeros((len(CLASSES), SIZE, SIZE), np.uint8)
    for k, (c0, r0, c1, r1) in RECTS.items():
        truth[k - 1, r0:r1, c0:c1] = 1
    return truth


@pytest.fixture(scope="module")
def dstl(tmp_path_factory):
    """A Dstl layout with three classes of pixel-aligned rectangles, and a 10-class multi-label run."""
    import keras

    root = tmp_path_factory.mktemp("dstl")
    make_dstl(root, IMAGE_ID, SIZE)
    _write_wkt(root / "train_wkt_v4.csv", [[IMAGE_ID, k, _normalized_square(*RECTS[k]) if k in RECTS else
                                            "MULTIPOLYGON EMPTY"] for k in range(1, 11)])
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(10, 1, activation="sigmoid")(inputs))
    config = f"data:\n  classes: [{', '.join(CLASSES)}]\n  task: multilabel\n  window_size: 32\n"
    run = save_run(model, root / "run", config=config)
    return root, run


def _main(capsys, *args):
    code = evaluate.main(["pixels", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_wkt_truth_is_the_training_rasterization(dstl):
    from rasterio.windows import Window

    from tfseg import config as config_lib
    from tfseg.data.formats import load_scenes

    root, run = dstl
    cfg = config_lib.from_dict({"data": dict(format="dstl", root=str(root), task="multilabel", classes=list(CLASSES),
                                             val_fraction=0.0)}).data
    (scene,), _ = load_scenes(cfg)
    trained = scene.labels.rasterize(Window(0, 0, SIZE, SIZE), scene.info)
    info = scene.info
    got = evaluate.WktTruth(root / "train_wkt_v4.csv", root / "grid_sizes.csv", evaluate._card_predictor(run))(
        IMAGE_ID, info)
    np.testing.assert_array_equal(got, trained)
    np.testing.assert_array_equal(np.moveaxis(got, -1, 0), _truth())  # the rectangles, pixel for pixel


def test_predictions_scored_per_class_against_wkt(tmp_path, dstl, capsys):
    root, run = dstl
    pred = _truth()
    pred[2] = np.roll(pred[2], SHIFT, axis=1)
    pred[:, :, -1] = 255  # the last column is nodata in the prediction: not scored
    write_geotiff(tmp_path / "pred" / f"{IMAGE_ID}_class.tif", pred, georeferenced=False, nodata=255)
    (tmp_path / "pred" / f"{IMAGE_ID}_overlay.png").write_bytes(b"")  # a folder holds more than the masks
    code, out, err = _main(capsys, "--model", run, "--predictions", tmp_path / "pred", "--wkt",
                           root / "train_wkt_v4.csv", "--grid-sizes", root / "grid_sizes.csv", "--json")
    assert code == 0, err
    report = json.loads(out)
    (w, h) = (RECTS[3][2] - RECTS[3][0], RECTS[3][3] - RECTS[3][1])  # an 80 x 10 road moved 3 px sideways
    road_iou, road_dice = (w - SHIFT) * h / ((w + SHIFT) * h), 2 * (w - SHIFT) / (2 * w)
    per_class = report["per_class"]
    assert per_class["buildings"]["iou"] == 1.0 and per_class["trees"]["iou"] == 1.0
    assert per_class["road"]["iou"] == pytest.approx(road_iou) and per_class["road"]["f1"] == pytest.approx(road_dice)
    absent = [name for k, name in enumerate(CLASSES, start=1) if k not in RECTS]
    assert all(per_class[name]["iou"] is None for name in absent)  # null, left out of the means
    assert report["miou"] == pytest.approx((1 + road_iou + 1) / 3) and report["num_images"] == 1

    # the probability raster, thresholded by the card (0.5) or by --threshold
    probs = np.where(_truth() == 1, 0.6, 0.2).astype(np.float32)
    write_geotiff(tmp_path / "prob" / f"{IMAGE_ID}_prob.tif", probs, georeferenced=False)
    args = ["--model", run, "--predictions", tmp_path / "prob", "--wkt", root / "train_wkt_v4.csv",
            "--grid-sizes", root / "grid_sizes.csv", "--json"]
    code, out, err = _main(capsys, *args)
    assert code == 0, err
    assert json.loads(out)["miou"] == 1.0
    code, out, err = _main(capsys, *args, "--threshold", "0.7")
    assert code == 0, err
    assert json.loads(out)["per_class"]["road"] == {"iou": 0.0, "f1": 0.0, "precision": 0.0, "recall": 0.0}


def test_images_predicted_by_the_model_are_paired_with_wkt_by_stem(dstl, capsys):
    root, run = dstl
    code, out, err = _main(capsys, "--model", run, "--images", root / "three_band", "--wkt",
                           root / "train_wkt_v4.csv", "--grid-sizes", root / "grid_sizes.csv", "--json",
                           "--tile-size", "32", "--overlap", "8")
    assert code == 0, err
    report = json.loads(out)
    assert report["num_images"] == 1 and list(report["per_class"]) == CLASSES


def test_bad_wkt_inputs_name_the_file_and_id(tmp_path, dstl, capsys):
    root, run = dstl
    pred = tmp_path / "pred" / f"{IMAGE_ID}_class.tif"
    write_geotiff(pred, _truth(), georeferenced=False, nodata=255)
    wkt, grid = root / "train_wkt_v4.csv", root / "grid_sizes.csv"

    def error(*args):
        code, _, err = _main(capsys, "--model", run, *args)
        assert code == 2
        return err

    other = tmp_path / "other" / "6100_1_3_class.tif"  # an image the CSV has no rows for
    write_geotiff(other, _truth(), georeferenced=False, nodata=255)
    err = error("--predictions", other, "--wkt", wkt, "--grid-sizes", grid)
    assert f"--wkt {wkt}: no rows for image '6100_1_3'" in err and IMAGE_ID in err
    no_grid = tmp_path / "grid.csv"
    no_grid.write_text("ImageId,Xmax,Ymin\n6100_1_3,0.009,-0.009\n")
    assert f"--grid-sizes {no_grid}: no Xmax/Ymin row for image '{IMAGE_ID}'" in error(
        "--predictions", pred, "--wkt", wkt, "--grid-sizes", no_grid)
    renamed = tmp_path / "renamed.csv"  # an unknown class column
    _write_wkt(renamed, [[IMAGE_ID, 1, "MULTIPOLYGON EMPTY"]], header=("ImageId", "Class", "MultipolygonWKT"))
    err = error("--predictions", pred, "--wkt", renamed, "--grid-sizes", grid)
    assert str(renamed) in err and "expected columns ImageId,ClassType,MultipolygonWKT" in err and "'Class'" in err
    eleven = tmp_path / "eleven.csv"  # a class type the Dstl classes do not have
    _write_wkt(eleven, [[IMAGE_ID, 11, "MULTIPOLYGON EMPTY"]])
    assert f"{eleven}:2: ClassType 11 not in 1..10" in error("--predictions", pred, "--wkt", eleven,
                                                             "--grid-sizes", grid)
    assert f"--wkt {wkt}: needs --grid-sizes" in error("--predictions", pred, "--wkt", wkt)
    assert "no prediction is run" in error("--predictions", pred, "--wkt", wkt, "--grid-sizes", grid, "--tta", "2")
    assert "thresholded classes already" in error("--predictions", pred, "--wkt", wkt, "--grid-sizes", grid,
                                                  "--threshold", "0.3")
    assert "--mask-suffix / --mask-pattern" in error("--predictions", pred, "--wkt", wkt, "--grid-sizes", grid,
                                                     "--mask-suffix", ".mask")
    # a prediction of another model (3 bands) and a model that is not a 10-class multi-label one
    write_geotiff(tmp_path / "three" / f"{IMAGE_ID}_class.tif", _truth()[:3], georeferenced=False, nodata=255)
    assert "3 band(s)" in error("--predictions", tmp_path / "three", "--wkt", wkt, "--grid-sizes", grid)
    import keras

    inputs = keras.Input((None, None, 3))
    three = save_run(keras.Model(inputs, keras.layers.Conv2D(3, 1, activation="sigmoid")(inputs)), tmp_path / "run3",
                     config="data:\n  classes: [a, b, c]\n  task: multilabel\n")
    code = evaluate.main(["pixels", "--model", str(three), "--predictions", str(pred), "--wkt", str(wkt),
                          "--grid-sizes", str(grid)])
    assert code == 2 and "Dstl labels are 10 multi-label classes" in capsys.readouterr().err


def test_predictions_pair_with_k_band_masks(tmp_path, dstl, capsys):
    """``--predictions`` with ``--masks``: ``<id>_class.tif`` pairs with ``<id>.tif``; the model
    given as its model_card.json alone."""
    _, run = dstl
    pred = _truth()
    pred[2] = np.roll(pred[2], SHIFT, axis=1)
    write_geotiff(tmp_path / "pred" / f"{IMAGE_ID}_class.tif", pred, georeferenced=False, nodata=255)
    write_geotiff(tmp_path / "masks" / f"{IMAGE_ID}.tif", _truth(), georeferenced=False)
    code, out, err = _main(capsys, "--model", run / "model_card.json", "--predictions", tmp_path / "pred",
                           "--masks", tmp_path / "masks", "--json")
    assert code == 0, err
    w = RECTS[3][2] - RECTS[3][0]
    assert json.loads(out)["per_class"]["road"]["iou"] == pytest.approx((w - SHIFT) / (w + SHIFT))
