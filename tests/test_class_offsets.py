"""Multiclass decision offsets (tfseg.class_offsets): the search, the card field, every reader."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tfseg._tf import tensorflow as tf  # noqa: I001
import keras

from tfseg import config as config_module
from tfseg.class_offsets import GRID, TooFewClassesError, decide, fit_class_offsets, fit_offsets
from tfseg.data.raster import Normalization
from tfseg.model_card import CARD_FILE, ModelCard, ModelCardError, load_model_card

from .data.formats import make_colour_mask

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def rare_class_scene(seed=0, size=400, bias=-2.0):
    """Three classes (60 / 38 / 2 %); the model's logits favour the truth by 1.5 but the rare
    class's are pushed down by ``bias``: ranked right, rarely the argmax."""
    rng = np.random.default_rng(seed)
    label = rng.choice(3, size=(size, size), p=[0.6, 0.38, 0.02]).astype(np.uint8)
    logits = rng.normal(0, 1, (size, size, 3))
    np.put_along_axis(logits, label[..., None].astype(np.int64),
                      np.take_along_axis(logits, label[..., None].astype(np.int64), -1) + 1.5, -1)
    logits[..., 2] += bias
    probs = np.exp(logits)
    return (probs / probs.sum(-1, keepdims=True)).astype(np.float32), label


def miou(label, pred, classes=3):
    return np.mean([((label == c) & (pred == c)).sum() / ((label == c) | (pred == c)).sum() for c in range(classes)])


def test_decide_is_the_argmax_of_log_probabilities_plus_offsets():
    probs, _ = rare_class_scene(size=50)
    offsets = [0.25, -1.0, 2.0]
    np.testing.assert_array_equal(decide(probs), probs.argmax(-1))
    np.testing.assert_array_equal(decide(probs, offsets), (np.log(probs) + np.asarray(offsets)).argmax(-1))
    assert decide(probs, offsets).dtype == np.uint8
    with pytest.raises(ValueError, match="expected 3 values"):
        decide(probs, [0.0, 1.0])


def test_fit_raises_the_rare_class_and_the_mean_iou():
    probs, label = rare_class_scene()
    valid = np.ones(label.shape, bool)
    offsets, report = fit_class_offsets([(probs, valid)], [label], 3)
    assert offsets[2] > 0.0 and offsets[2] in GRID
    assert report["miou_after"] > report["miou_before"] + 0.01
    assert report["pixels"] == label.size and report["classes_present"] == 3
    # the report is the mean IoU of the decisions the offsets make
    assert report["miou_after"] == pytest.approx(miou(label, decide(probs, offsets)), abs=1e-6)
    assert report["miou_before"] == pytest.approx(miou(label, probs.argmax(-1)), abs=1e-6)
    # held-out pixels of the same kind gain too (the offsets are not fitted to noise)
    test_probs, test_label = rare_class_scene(seed=1)
    assert miou(test_label, decide(test_probs, offsets)) > miou(test_label, test_probs.argmax(-1)) + 0.01


def test_fit_leaves_a_perfect_model_and_absent_classes_at_zero():
    _, label = rare_class_scene()
    probs = np.full(label.shape + (4,), 0.05, np.float32)
    np.put_along_axis(probs, label[..., None].astype(np.int64), 0.85, -1)
    offsets, report = fit_offsets(probs.reshape(-1, 4), label.reshape(-1).astype(np.int64), 4)
    assert report["classes_present"] == 3  # class 3 never occurs: nothing to tune it on
    assert report["classes_absent"] == [3] and report["pixels_left_out"] == 0
    assert report["miou_before"] == report["miou_after"] == 1.0
    assert offsets == [0.0] * 4  # every offset that keeps the score is a tie: 0 is kept


def test_a_class_absent_from_the_labels_is_not_suppressed():
    """Scoring the pixels the model gives an unlabelled class as errors would pay the other classes
    for taking them over: those pixels are left out, and the class keeps most of them."""
    probs, label = rare_class_scene(bias=0.0)
    label = np.where(label == 2, 0, label).astype(np.int64)  # labels that never say "class 2"
    plain = probs.argmax(-1)
    offsets, report = fit_offsets(probs.reshape(-1, 3), label.reshape(-1), 3)
    assert report["classes_absent"] == [2] and report["pixels_left_out"] == int((plain == 2).sum())
    assert report["pixels"] == label.size - report["pixels_left_out"]
    assert offsets[2] == 0.0 and min(offsets[0], offsets[1]) <= 0.0  # not both raised over class 2
    assert (decide(probs, offsets) == 2).sum() >= 0.75 * (plain == 2).sum()
    with pytest.raises(TooFewClassesError, match="only class 0; fitting offsets needs at least two classes"):
        fit_offsets(probs.reshape(-1, 3), np.zeros(label.size, np.int64), 3)
    with pytest.raises(ValueError, match="expected 3 values"):
        decide(probs, 0.5)  # a scalar: the same error, not a TypeError


def test_fit_ignores_invalid_and_ignored_pixels_and_samples_at_most_max_pixels():
    probs, label = rare_class_scene(size=200)
    label = label.copy()
    label[:50] = 255
    valid = np.ones(label.shape, bool)
    valid[:, :40] = False
    _, report = fit_class_offsets([(probs, valid)], [label], 3)
    assert report["pixels"] == 150 * 160
    # seed 1: the scene's labels were drawn from the uniform stream of seed 0 (its sample would
    # keep exactly the pixels of draws below 0.2, all class 0)
    _, sampled = fit_class_offsets([(probs, valid)], [label], 3, max_pixels=5000, seed=1)
    assert 4000 < sampled["pixels"] < 6000
    with pytest.raises(ValueError, match="no valid labelled"):
        fit_class_offsets([(probs, np.zeros_like(valid))], [label], 3)
    with pytest.raises(ValueError, match="label value 7"):
        fit_offsets(probs.reshape(-1, 3)[:10], np.full(10, 7, np.int64), 3)


def card(**fields):
    norm = Normalization("meanstd", [100.0] * 3, [30.0] * 3, [0.0] * 3, [255.0] * 3, ["r", "g", "b"])
    base = dict(classes=["a", "b", "c"], colours={"a": "#000001", "b": "#000002", "c": "#000003"},
                task="multiclass", threshold=0.5, band_names=["r", "g", "b"], band_dtype="uint8", num_bands=3,
                nodata=0.0, ignore_index=255, normalization=norm, tile_size=64, recommended_overlap=8,
                size_multiple=4, model="unet", backbone="")
    return ModelCard(**{**base, **fields})


def test_card_field_round_trips_and_bad_values_name_the_field(tmp_path):
    written = card(class_offsets=[0.0, -0.25, 1.5])
    assert load_model_card(written.save(tmp_path / CARD_FILE)).class_offsets == [0.0, -0.25, 1.5]
    assert card().class_offsets is None  # cards written before the field still load
    for bad in ([0.0, 1.0], [0.0, float("nan"), 1.0], "1.5", [0.0, "x", 1.0]):
        with pytest.raises(ModelCardError, match="class_offsets"):
            card(class_offsets=bad)
    with pytest.raises(ModelCardError, match="class_offsets.*multiclass"):
        card(task="multilabel", class_offsets=[0.0, 0.0, 0.0])
    data = written.to_dict()
    data["class_offsets"] = [1.0]
    with pytest.raises(ModelCardError, match=f"{CARD_FILE}.*class_offsets"):
        ModelCard.from_dict(data, CARD_FILE)


def test_config_key_is_checked(tmp_path):
    make_colour_mask(tmp_path)
    base, path = [f"data.root={tmp_path}"], CONFIGS / "colour_mask.yaml"
    assert config_module.load(path, base + ["train.class_offsets=fit"]).train.class_offsets == "fit"
    assert config_module.load(path, base + ["train.class_offsets=fit_training"]).train.class_offsets == "fit_training"
    with pytest.raises(config_module.ConfigError, match="train.class_offsets.*'none', 'fit', 'fit_training'"):
        config_module.load(path, base + ["train.class_offsets=auto"])
    with pytest.raises(config_module.ConfigError, match="train.class_offsets.*data.task=multiclass.*binary"):
        config_module.load(CONFIGS / "default.yaml", ["train.class_offsets=fit"])


def test_savedmodel_and_predictor_decide_with_the_card_offsets(tmp_path):
    from tfseg.export import export_saved_model
    from tfseg.inference import KerasPredictor, load_predictor
    from tfseg.models import Preprocess, build_model, with_preprocessing

    keras.utils.set_random_seed(3)
    norm = Normalization("meanstd", [100.0] * 3, [30.0] * 3, [0.0] * 3, [255.0] * 3, ["r", "g", "b"])
    model = with_preprocessing(build_model("unet", input_shape=(None, None, 3), classes=3, depth=2, filters=4),
                               Preprocess.from_normalization(norm, 0.0))
    offsets = [0.0, -0.5, 0.4]
    written = ModelCard.for_model(model, norm, "uint8", 0.0, classes=["a", "b", "c"])
    written = ModelCard.from_dict({**written.to_dict(), "class_offsets": offsets})
    export_saved_model(model, tmp_path / "sm", written)
    tiles = np.random.default_rng(4).integers(1, 255, (2, 40, 24, 3)).astype(np.uint8)
    probs = np.asarray(model(tiles.astype(np.float32)), np.float32)
    expected = decide(probs, offsets)
    assert (expected != probs.argmax(-1)).mean() > 0.05  # the offsets move decisions here
    serving = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    out = serving(images=tf.constant(tiles.astype(np.float32)))
    np.testing.assert_array_equal(out["classes"].numpy(), expected)
    np.testing.assert_array_equal(KerasPredictor(model, written).to_classes(probs), expected)
    saved = load_predictor(tmp_path / "sm")
    assert saved.card.class_offsets == offsets
    np.testing.assert_array_equal(saved.to_classes(saved(tiles)), out["classes"].numpy())


@pytest.mark.slow
def test_training_fits_offsets_and_every_reader_decides_with_them(tmp_path):
    """A tiny colour-mask run with ``train.class_offsets: fit``: the offsets reach metrics.json,
    model_card.json, the card inside model.keras and the SavedModel; the Keras predictor, the
    SavedModel's ``classes`` output, ``tfseg.predict`` and ``tfseg.evaluate`` all decide with them."""
    import rasterio

    from tfseg import evaluate_pixels, predict_scenes, PredictOptions
    from tfseg.data.raster import open_raster
    from tfseg.inference import ArraySink, Job, RasterSource, load_predictor, run_sliding_window
    from tfseg.train import train

    data = tmp_path / "data"
    make_colour_mask(data)
    cfg = config_module.load(CONFIGS / "colour_mask.yaml", [
        f"data.root={data}", "data.window_size=32", "data.eval_overlap=8", "data.batch_size=4",
        "data.train_windows_per_epoch=8",
        "data.val_fraction=0.34", "model.depth=2", "model.filters=4", "train.epochs=1",
        "train.class_offsets=fit", "tracking.neptune.mode=off", "tracking.mlflow.mode=off", "train.num_figure_tiles=1"])
    run = tmp_path / "run"
    result = train(cfg, run, verbose=0)
    metrics = json.loads((run / "metrics.json").read_text())
    fitted = metrics["class_offsets"]
    assert list(fitted["offsets"]) == cfg.data.classes and fitted["searched_on"] == "validation"
    assert fitted["num_scenes"] >= 1 and fitted["miou_after"] >= fitted["miou_before"]
    offsets = list(fitted["offsets"].values())
    assert load_model_card(run / CARD_FILE).class_offsets == offsets
    assert result["class_offsets"]["offsets"] == fitted["offsets"]

    keras_predictor = load_predictor(run)
    saved_predictor = load_predictor(run / "export")
    assert keras_predictor.card.class_offsets == offsets == saved_predictor.card.class_offsets
    tile = np.random.default_rng(0).integers(1, 255, (1, 32, 32, 3)).astype(np.uint8)
    probs = keras_predictor(tile)
    np.testing.assert_array_equal(keras_predictor.to_classes(probs), decide(probs, offsets))
    loaded = tf.saved_model.load(str(run / "export"))
    out = loaded.signatures["serving_default"](images=tf.constant(tile.astype(np.float32)))
    np.testing.assert_allclose(out["probabilities"].numpy(), probs, atol=1e-5)
    np.testing.assert_array_equal(out["classes"].numpy(), decide(out["probabilities"].numpy(), offsets))

    image = sorted((data / "Tile 1" / "images").iterdir())[0]
    summary = predict_scenes(run, [image], tmp_path / "pred", PredictOptions(classes=True, probabilities="none",
                                                                           overlay=False, progress=False))
    entry = summary["scenes"][0]
    with rasterio.open(entry["classes"]) as src:
        classes = src.read(1)
    info = open_raster(image)  # the same scene through the same engine, in memory (float32)
    sink = ArraySink(info.height, info.width, len(cfg.data.classes))
    run_sliding_window(keras_predictor, [Job(RasterSource(info), sink, str(image))], *keras_predictor.tiling(), 8)
    np.testing.assert_array_equal(classes, decide(sink.probs, offsets))

    mask = sorted((data / "Tile 1" / "masks").iterdir())[0]
    with_offsets = evaluate_pixels(run, [image], [mask])
    plain = evaluate_pixels(run, [image], [mask], class_offsets=False)
    assert with_offsets["class_offsets"] == dict(zip(cfg.data.classes, offsets)) and "class_offsets" not in plain
    assert with_offsets["without_class_offsets"]["per_class"] == plain["per_class"]  # one pass, both decisions
    # predict's class map, scored as it is, is what evaluate decides with the offsets
    scored = evaluate_pixels(run, masks=[mask], predictions=[Path(entry["classes"])])
    assert scored["per_class"] == with_offsets["per_class"]
    with pytest.raises(ValueError, match="--no-class-offsets: the --predictions _class.tif maps"):
        evaluate_pixels(run, masks=[mask], predictions=[Path(entry["classes"])], class_offsets=False)
    # probability rasters are decided here: with and without the offsets, as for --images
    probs_out = predict_scenes(run, [image], tmp_path / "pred_prob", PredictOptions(
        probabilities="float16", overlay=False, progress=False))["scenes"][0]["probabilities"]
    from_probs = evaluate_pixels(run, masks=[mask], predictions=[Path(probs_out)], class_offsets=False)
    with_probs = evaluate_pixels(run, masks=[mask], predictions=[Path(probs_out)])
    assert "class_offsets" not in from_probs and with_probs["class_offsets"] == dict(zip(cfg.data.classes, offsets))


@pytest.mark.slow
def test_training_whose_labels_hold_one_class_keeps_plain_argmax(tmp_path):
    """Validation labels of one class cannot fit offsets: a warning saying so, the search's
    reason in metrics.json, and a card without offsets (plain argmax), not a failed run."""
    from PIL import Image

    from tfseg.train import train

    data = tmp_path / "dubai"
    make_colour_mask(data)
    for mask in data.glob("Tile */masks/*.png"):  # every pixel "land"
        size = Image.open(mask).size
        Image.new("RGB", size, (0x84, 0x29, 0xF6)).save(mask)
    cfg = config_module.load(CONFIGS / "colour_mask.yaml", [
        f"data.root={data}", "data.window_size=32", "data.eval_overlap=8", "data.batch_size=4",
        "data.train_windows_per_epoch=8", "data.val_fraction=0.34", "model.depth=2", "model.filters=4",
        "train.epochs=1", "train.class_offsets=fit", "tracking.neptune.mode=off", "tracking.mlflow.mode=off",
        "train.num_figure_tiles=1"])
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="train.class_offsets: fit, but the validation scenes cannot fit them .*only "
                                         "class 1.*plain argmax"):
        train(cfg, run, verbose=0)
    skipped = json.loads((run / "metrics.json").read_text())["class_offsets"]
    assert skipped["searched_on"] == "validation" and "at least two classes" in skipped["skipped"]
    assert load_model_card(run / CARD_FILE).class_offsets is None
