"""tfseg.predictors: load_predictor on run directories, .keras files and SavedModels; the Keras
and SavedModel predictors agree; the Predictor's thresholds, class maps and tiling."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from tfseg._tf import tensorflow as tf  # noqa: I001
import keras

from tfseg.data.raster import open_raster
from tfseg.errors import TfsegError
from tfseg.export import export_saved_model, load_run_model
from tfseg.inference import ArraySource, RasterSource
from tfseg.model_card import ModelCardError
from tfseg.predictors import (KerasPredictor, ModelLoadError, SavedModelPredictor, fixed_input_shape,
                              load_predictor)

from .data.fixtures import write_geotiff
from .infer_support import keras_predictor, oracle_model, save_run

CONFIG = "data:\n  classes: [water, trees, buildings]\n  window_size: 64\n"


def pooling_model(classes=3):
    """conv -> two 2x2 poolings -> 4x upsampling -> softmax: sizes in multiples of 4 (cheap to export)."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(keras.layers.MaxPooling2D()(x))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.UpSampling2D(4)(x)
    return keras.Model(inputs, keras.layers.Conv2D(classes, 1, activation="softmax")(x))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny 3-class run directory (sizes in multiples of 4) with its SavedModel in export/."""
    keras.utils.set_random_seed(3)
    model = pooling_model()
    run_dir = save_run(model, tmp_path_factory.mktemp("predictors") / "run", config=CONFIG)
    loaded, card = load_run_model(run_dir)
    export_saved_model(loaded, run_dir / "export", card)
    return run_dir


@pytest.mark.parametrize("kind", ["missing", "text file", "empty directory", "folder of files"])
def test_not_a_model_raises_model_load_error_naming_the_path(tmp_path, kind):
    path = tmp_path / "model"
    if kind == "text file":
        path = tmp_path / "notes.txt"
        path.write_text("not a model")
    elif kind == "empty directory":
        path.mkdir()
    elif kind == "folder of files":
        path.mkdir()
        (path / "model_card.json").write_text("{}")  # a card alone is no model
    with pytest.raises(ModelLoadError) as error:
        load_predictor(path)
    assert f"--model {path}:" in str(error.value) and isinstance(error.value, TfsegError)
    assert ("no such file or directory" in str(error.value)) == (kind == "missing")


def test_fixed_input_shape():
    assert fixed_input_shape((None, 64, 48, 3)) == (64, 48)
    assert fixed_input_shape(tf.TensorShape([None, 32, 32, 4])) == (32, 32)
    for shape in ((None, None, None, 3), (None, 64, None, 3), (None, None, 64, 3), (None,), ()):
        assert fixed_input_shape(shape) is None, shape
    assert fixed_input_shape(keras.Input((16, 24, 3)).shape) == (16, 24)


def test_keras_and_savedmodel_predictors_give_the_same_probabilities(run, tmp_path):
    keras_pred, saved = load_predictor(run), load_predictor(run / "export")
    assert type(keras_pred) is KerasPredictor and type(saved) is SavedModelPredictor
    assert keras_pred.source == str(run) and saved.source == str(run / "export")
    for predictor in (keras_pred, saved):
        assert predictor.num_classes == 3 and predictor.num_bands == 3 and predictor.fixed_size is None
        assert predictor.classes == ["water", "trees", "buildings"] and predictor.tile_size == 64
        assert predictor.size_multiple == 4 and not predictor.binary and not predictor.multilabel
    # 37 x 50 is no multiple of 4: the Keras predictor pads in numpy, the SavedModel in its graph
    raw = np.random.default_rng(0).integers(0, 300, (2, 37, 50, 3)).astype(np.uint16)
    from_keras, from_saved = keras_pred(raw), saved(raw)
    assert from_keras.shape == from_saved.shape == (2, 37, 50, 3)
    assert from_keras.dtype == from_saved.dtype == np.float32
    np.testing.assert_allclose(from_keras, from_saved, atol=1e-5)
    np.testing.assert_allclose(from_keras.sum(-1), 1.0, atol=1e-5)
    assert from_keras.std() > 1e-4  # not a constant map
    np.testing.assert_array_equal(keras_pred.to_classes(from_keras), saved.to_classes(from_saved))
    # a .keras file, and a run directory holding only its export/: the same model
    assert type(load_predictor(run / "model.keras")) is KerasPredictor
    only_export = tmp_path / "copied_run"
    shutil.copytree(run / "export", only_export / "export")
    copied = load_predictor(only_export)
    assert type(copied) is SavedModelPredictor and copied.source == str(only_export / "export")
    np.testing.assert_allclose(copied(raw[:1]), from_saved[:1], atol=1e-6)


def test_keras_predictor_of_a_fixed_size_model_reports_it():
    inputs = keras.Input((32, 32, 3))
    fixed = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs))
    assert keras_predictor(fixed).fixed_size == (32, 32)
    assert keras_predictor(oracle_model()).fixed_size is None


def test_binary_thresholds_class_maps_and_names():
    predictor = keras_predictor(oracle_model(), classes=["building"], threshold=0.3, tile_size=64)
    assert predictor.binary and predictor.threshold == pytest.approx(0.3)
    assert predictor.class_names == ["background", "building"] == predictor.class_map_names
    probs = np.array([[[[0.1], [0.3], [0.6]]]], np.float32)
    np.testing.assert_array_equal(predictor.to_classes(probs), [[[0, 1, 1]]])
    np.testing.assert_array_equal(predictor.to_classes(probs, threshold=0.5), [[[0, 0, 1]]])
    np.testing.assert_allclose(predictor.thresholds(), [0.3])
    with pytest.raises(ValueError, match=r"threshold: expected one value or 1 \(one per class\), got \[0.1, 0.2\]"):
        predictor.thresholds([0.1, 0.2])
    # the oracle: bright pixels are buildings, raw in, probabilities out
    raw = np.array([[[[20] * 3, [250] * 3]]], np.uint16)
    np.testing.assert_array_equal(predictor.to_classes(predictor(raw)), [[[0, 1]]])


def test_multiclass_argmax_and_multilabel_thresholds_per_class():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    softmax = keras.Model(inputs, keras.layers.Conv2D(3, 1, activation="softmax")(inputs))
    multiclass = keras_predictor(softmax, classes=["a", "b", "c"])
    probs = np.array([[[[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]]]], np.float32)
    np.testing.assert_array_equal(multiclass.to_classes(probs), [[[1, 0]]])
    assert multiclass.class_names == ["a", "b", "c"] and multiclass.instance_bands() is None
    sigmoid = keras.Model(inputs, keras.layers.Conv2D(3, 1, activation="sigmoid")(inputs))
    multilabel = keras_predictor(sigmoid, classes=["crops", "trees", "water"], threshold=[0.5, 0.2, 0.9])
    assert multilabel.multilabel and multilabel.task == "multilabel"
    np.testing.assert_array_equal(multilabel.to_classes(probs), [[[[0, 1, 0], [1, 0, 0]]]])
    np.testing.assert_array_equal(multilabel.to_classes(probs, threshold=0.25), [[[[0, 1, 1], [1, 0, 1]]]])


def test_tiling_defaults_to_the_card_and_overlap_at_most_half_a_tile():
    predictor = keras_predictor(oracle_model(), tile_size=64, recommended_overlap=24)
    assert predictor.tiling() == (64, 24)
    assert predictor.tiling(32) == (32, 16)  # half of the requested tile
    assert predictor.tiling(128, 0) == (128, 0) and predictor.tiling(0, 5) == (64, 5)


def test_check_source_refuses_other_bands_and_dtype_naming_scene_and_model(tmp_path):
    predictor = keras_predictor(oracle_model(), band_dtype="uint16")
    predictor.source = "runs/buildings"
    predictor.check_source(ArraySource(np.zeros((8, 8, 3), np.uint16), name="tile"))  # accepted
    with pytest.raises(ModelCardError, match=r"tile \(model runs/buildings\): the scene has 4 band\(s\) but the "
                                             r"model was trained on 3 band\(s\)"):
        predictor.check_source(ArraySource(np.zeros((8, 8, 4), np.uint16), name="tile"))
    with pytest.raises(ModelCardError, match=r"tile \(model runs/buildings\): the scene's pixels are float64 but "
                                             r"the model was trained on uint16"):  # in memory too
        predictor.check_source(ArraySource(np.zeros((8, 8, 3), np.float64), name="tile"))
    scene = write_geotiff(tmp_path / "bytes.tif", np.zeros((3, 16, 16), np.uint8))
    with pytest.raises(ModelCardError, match=r"bytes.tif \(model runs/buildings\).*uint8.*trained on uint16"):
        predictor.check_source(RasterSource(open_raster(scene)))
    doubles = write_geotiff(tmp_path / "doubles.tif", np.zeros((3, 16, 16), np.float64))
    with pytest.raises(ModelCardError, match=r"doubles.tif .*stored as float64 and read as float32 but the model "
                                             r"was trained on uint16"):
        predictor.check_source(RasterSource(open_raster(doubles)))


def test_in_memory_arrays_and_tiling_arguments_raise_tfseg_errors():
    """predict_array checks the array against the card like a raster; bad tiling / TTA / batch
    arguments are input errors (TfsegError) naming the option."""
    from tfseg.inference import InferenceArgumentError, plan_tiles, predict_array, tta_views

    predictor = keras_predictor(oracle_model(), band_dtype="uint16")
    image = np.full((16, 16, 3), 120, np.uint16)
    probs, valid = predict_array(predictor, image, tile_size=16, overlap=0)
    assert probs.shape == (16, 16, 1) and valid.all()
    with pytest.raises(ModelCardError, match="array: the scene's pixels are float64 but the model was trained on "
                                             "uint16"):
        predict_array(predictor, image.astype(np.float64), tile_size=16, overlap=0)
    with pytest.raises(ModelCardError, match=r"array: the scene has 2 band\(s\)"):
        predict_array(predictor, image[..., :2], tile_size=16, overlap=0)
    cases = [(lambda: tta_views(3), "--tta"), (lambda: plan_tiles(predictor, [64], [64], 64, 64, None), "--overlap"),
             (lambda: predict_array(predictor, image, tile_size=16, overlap=0, batch_size=0), "--batch-size"),
             (lambda: predictor.thresholds([0.1, 0.2]), "threshold")]
    for call, option in cases:
        with pytest.raises(InferenceArgumentError, match=option) as error:
            call()
        assert isinstance(error.value, TfsegError)


@pytest.mark.parametrize("kind", ["empty saved_model.pb", "garbage model.keras beside a valid card"])
def test_a_damaged_model_raises_model_load_error_naming_the_file(run, tmp_path, kind):
    if kind == "empty saved_model.pb":
        target = tmp_path / "export"
        shutil.copytree(run / "export", target)
        (target / "saved_model.pb").write_bytes(b"")
        expected = target
    else:
        target = tmp_path / "run"
        shutil.copytree(run, target, ignore=shutil.ignore_patterns("export"))
        (target / "model.keras").write_bytes(b"PK\x03\x04 not really a zip")
        expected = target / "model.keras"
    with pytest.raises(ModelLoadError) as error:
        load_predictor(target)
    assert f"--model {expected}: cannot be loaded" in str(error.value)
