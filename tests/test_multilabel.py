"""Multi-label end to end on a 3-class overlapping fixture: SavedModel ``masks`` output, predict
(one band per class + polygons per class), evaluate pixels on K-band masks, figures."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from tests.data.fixtures import write_geotiff
from tests.infer_support import save_run
from tfseg import evaluate, predict

CLASSES = ["building", "road", "tree"]
# overlapping boxes (row0, col0, row1, col1): class k is bright in band k
BOXES = [(8, 8, 40, 40), (24, 24, 56, 70), (30, 4, 60, 36)]


def _fixture(height=72, width=80):
    rng = np.random.default_rng(0)
    image = rng.integers(20, 60, (3, height, width)).astype(np.uint16)
    truth = np.zeros((3, height, width), np.uint8)
    for k, (r0, c0, r1, c1) in enumerate(BOXES):
        image[k, r0:r1, c0:c1] += 160
        truth[k, r0:r1, c0:c1] = 1
    return image, truth


def _band_k_is_class_k_model():
    """Three independent sigmoids: class k where band k is bright (probability > 0.99 inside)."""
    import keras

    inputs = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(3, 1, activation="sigmoid")
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.eye(3, dtype=np.float32).reshape(1, 1, 3, 3) * 6.0, np.full(3, -3.0, np.float32)])
    return model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = ("data:\n  classes: [building, road, tree]\n  task: multilabel\n  window_size: 32\n"
              "export:\n  recommended_overlap: 8\n")
    return save_run(_band_k_is_class_k_model(), tmp_path_factory.mktemp("ml"), config=config)


def test_export_outputs_per_class_masks_not_an_argmax(tmp_path, run):
    import dataclasses

    import tensorflow as tf

    from tfseg.export import export_saved_model, load_run_model
    from tfseg.model_card import load_model_card

    image, truth = _fixture()
    model, card = load_run_model(run)
    assert card.task == "multilabel"
    card = dataclasses.replace(card, threshold=[0.5, 0.4, 0.6])
    out = export_saved_model(model, tmp_path / "export", card)
    signature = tf.saved_model.load(str(out)).signatures["serving_default"]
    result = signature(images=tf.constant(np.moveaxis(image, 0, -1)[None].astype(np.float32)))
    assert "classes" not in result and result["masks"].shape == (1, 72, 80, 3)
    np.testing.assert_array_equal(result["masks"].numpy()[0], np.moveaxis(truth, 0, -1))
    exported = load_model_card(out)
    assert exported.task == "multilabel" and exported.threshold == [0.5, 0.4, 0.6]
    # per-class thresholds are applied class by class: a threshold above every probability of
    # one class empties that class only
    probs = result["probabilities"].numpy()[0]
    high = float(probs[..., 1].max()) + 1e-3
    if high <= 1.0:
        out = export_saved_model(model, tmp_path / "export2", dataclasses.replace(card, threshold=[0.5, high, 0.5]))
        masks = tf.saved_model.load(str(out)).signatures["serving_default"](
            images=tf.constant(np.moveaxis(image, 0, -1)[None].astype(np.float32)))["masks"].numpy()[0]
        assert masks[..., 1].sum() == 0
        np.testing.assert_array_equal(masks[..., [0, 2]], np.moveaxis(truth, 0, -1)[..., [0, 2]])


def test_predict_and_evaluate_recover_each_class(tmp_path, run):
    image, truth = _fixture()
    scene = write_geotiff(tmp_path / "scenes" / "s.tif", image)
    write_geotiff(tmp_path / "masks" / "s.tif", truth)
    summary = predict.predict_scenes(run, [scene], tmp_path / "out", predict.PredictOptions(
        tile_size=32, overlap=8, progress=False))
    with rasterio.open(tmp_path / "out" / "s_class.tif") as src:
        assert src.count == 3 and list(src.descriptions) == CLASSES
        np.testing.assert_array_equal(src.read(), truth)  # overlaps keep every class
    doc = json.loads((tmp_path / "out" / "s_polygons.geojson").read_text())
    by_class = {}
    for feature in doc["features"]:
        by_class.setdefault(feature["properties"]["class"], []).append(feature["properties"]["class_name"])
    assert by_class == {0: ["building"], 1: ["road"], 2: ["tree"]}
    assert summary["scenes"][0]["num_polygons"] == 3
    assert (tmp_path / "out" / "s_overlay.png").stat().st_size > 0
    result = evaluate.evaluate_pixels(run, [scene], [tmp_path / "masks" / "s.tif"], tile_size=32, overlap=8)
    assert result["iou"] == 1.0 and result["miou"] == 1.0
    assert {name: s["iou"] for name, s in result["per_class"].items()} == dict.fromkeys(CLASSES, 1.0)
    assert {name: s["f1"] for name, s in result["per_class"].items()} == dict.fromkeys(CLASSES, 1.0)
    # a wrong class in one band is scored against that class only
    truth[2, 0:4, 60:80] = 1
    write_geotiff(tmp_path / "masks" / "s.tif", truth)
    result = evaluate.evaluate_pixels(run, [scene], [tmp_path / "masks" / "s.tif"], tile_size=32, overlap=8)
    assert result["per_class"]["building"]["iou"] == 1.0 and result["per_class"]["road"]["iou"] == 1.0
    assert result["per_class"]["tree"]["iou"] == pytest.approx(30 * 32 / (30 * 32 + 80))
    assert result["per_class"]["tree"]["recall"] == pytest.approx(30 * 32 / (30 * 32 + 80))


def test_multilabel_figure_draws_overlapping_classes(tmp_path):
    from tfseg.figures import colourize_multilabel

    masks = np.zeros((2, 3, 3), np.uint8)  # (H, W, K)
    masks[0, 0, [0, 1]] = 1  # classes 0 and 1 overlap
    masks[0, 1, 2] = 1  # class 2 alone
    masks[1, 1] = 255  # ignored
    rgb = colourize_multilabel(masks, [(1, 0, 0), (0, 1, 0), (0, 0, 1)])
    np.testing.assert_allclose(rgb[0, 0], (0.5, 0.5, 0.0))
    np.testing.assert_allclose(rgb[0, 1], (0.0, 0.0, 1.0))
    assert (rgb[1, 1] == 0.5).all() and (rgb[0, 2] == 0).all()


def test_predict_uses_the_cards_per_class_thresholds(tmp_path):
    """train.threshold [0.5, 1.0, 0.5] in the card: road (never >= 1.0) is empty, the others kept."""
    config = ("data:\n  classes: [building, road, tree]\n  task: multilabel\n  window_size: 32\n"
              "train:\n  threshold: [0.5, 1.0, 0.5]\n")
    run = save_run(_band_k_is_class_k_model(), tmp_path / "run", config=config)
    image, truth = _fixture()
    scene = write_geotiff(tmp_path / "scenes" / "s.tif", image)
    predict.predict_scenes(run, [scene], tmp_path / "out", predict.PredictOptions(
        tile_size=32, overlap=8, progress=False, overlay=False))
    with rasterio.open(tmp_path / "out" / "s_class.tif") as src:
        masks = src.read()
    assert masks[1].sum() == 0
    np.testing.assert_array_equal(masks[[0, 2]], truth[[0, 2]])


@pytest.mark.slow
def test_trained_per_class_thresholds_reach_the_card_predict_and_evaluate(tmp_path):
    """A tiny 2-class multi-label run trained with ``train.threshold=[0.3,0.7]``: the model card
    carries the list, ``tfseg.predict``'s masks are its probabilities at those per-class
    thresholds, and ``evaluate pixels`` scores each class on the same predictions."""
    from tests.data.formats import make_multilabel_folder
    from tfseg import train
    from tfseg.model_card import load_model_card

    root, run = tmp_path / "data", tmp_path / "run"
    make_multilabel_folder(root, size=64, classes=2)
    code = train.main(["--quiet", "--run-dir", str(run), "--set", "data.format=mask_folder", f"data.root={root}",
                       "data.classes=[road, building]", "data.task=multilabel", "data.window_size=64",
                       "data.train_windows_per_epoch=2", "data.batch_size=2", "data.max_nodata_fraction=1.0",
                       "train.threshold=[0.3,0.7]", "train.loss=bce", "train.epochs=1", "train.num_figure_tiles=0",
                       "model.depth=2", "model.filters=4", "export.enabled=false", "tracking.neptune.mode=off"])
    assert code == 0
    thresholds = np.array([0.3, 0.7], np.float32)
    assert load_model_card(run).threshold == [0.3, 0.7]
    assert json.loads((run / "model_card.json").read_text())["threshold"] == [0.3, 0.7]

    scene = root / "val" / "images" / "t0.tif"
    predict.predict_scenes(run, [scene], tmp_path / "out", predict.PredictOptions(
        tile_size=64, overlap=0, progress=False, overlay=False, polygons=False))
    with rasterio.open(tmp_path / "out" / "t0_prob.tif") as src:
        probs = src.read().astype(np.float32)  # float16 values: ties within their rounding allowed
    with rasterio.open(tmp_path / "out" / "t0_class.tif") as src:
        masks = src.read()
        assert list(src.descriptions) == ["road", "building"]
    expected = probs >= thresholds[:, None, None]
    near = np.abs(probs - thresholds[:, None, None]) < 1e-3
    assert masks.shape == (2, 64, 64) and ((masks == expected) | near).all()
    assert (masks != (probs >= 0.5)).any()  # one threshold for both classes would give other masks

    report = evaluate.evaluate_pixels(run, [scene], [root / "val" / "masks" / "t0.tif"], tile_size=64, overlap=0)
    with rasterio.open(root / "val" / "masks" / "t0.tif") as src:
        truth = src.read()
    for k, name in enumerate(["road", "building"]):
        valid = truth[k] != 255
        t, p = (truth[k] == 1) & valid, (masks[k] == 1) & valid
        union = (t | p).sum()
        assert report["per_class"][name]["iou"] == pytest.approx((t & p).sum() / union), name
    assert report["num_images"] == 1
