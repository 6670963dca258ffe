"""SavedModel export: parity with the Keras model, every signature, the model card, CLI, TFLite."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfseg._tf import tensorflow as tf  # noqa: I001
import keras
import yaml
from PIL import Image

from tfseg import export as export_lib
from tfseg.data.raster import Normalization
from tfseg.export import (ExportError, export_saved_model, export_tflite, load_run_model, main,
                          reflect_pad_to_multiple)
from tfseg.model_card import CARD_FILE, LegacyArtifactError, ModelCard, load_model_card
from tfseg.models import Preprocess, build_model, with_preprocessing

CLASSES = ["water", "trees", "buildings"]
PALETTE = {"water": "#0000ff", "trees": "#00aa00"}  # buildings: default colour


def reference(model, norm, images, multiple):
    """The architecture (normalized inputs) on raw images normalized in numpy, reflect padded:
    what the exported raw-pixel model must return."""
    x = norm.apply(images.astype(np.float32))
    height, width = x.shape[1:3]
    pad = [(0, 0), (0, -height % multiple), (0, -width % multiple), (0, 0)]
    return np.asarray(model(np.pad(x, pad, mode="reflect"), training=False))[:, :height, :width]


def raw_pixels(model, norm, band_dtype="uint8", nodata=0.0, **card):
    """``model`` behind its preprocessing layer, and its model card."""
    wrapped = with_preprocessing(model, Preprocess.from_normalization(norm, nodata))
    return wrapped, ModelCard.for_model(wrapped, norm, band_dtype, nodata, **card)


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory):
    keras.utils.set_random_seed(1)
    model = build_model("unet", input_shape=(None, None, 3), classes=3, depth=2, filters=4)
    norm = Normalization("meanstd", [100.0, 120.0, 90.0], [30.0, 40.0, 20.0], [0.0] * 3, [255.0] * 3,
                         ["red", "green", "blue"])
    out = tmp_path_factory.mktemp("export") / "models" / "landcover" / "1"
    wrapped, card = raw_pixels(model, norm, classes=CLASSES, palette=PALETTE, tile_size=256, recommended_overlap=32,
                               metrics={"iou": 0.5})
    export_saved_model(wrapped, out, card)
    return model, norm, out, tf.saved_model.load(str(out))


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    keras.utils.set_random_seed(2)
    model = build_model("unet", input_shape=(None, None, 1), classes=1, depth=2, filters=4)
    norm = Normalization("percentile", [], [], [200.0], [3800.0], ["pan"])
    out = tmp_path_factory.mktemp("export") / "bin"
    wrapped, card = raw_pixels(model, norm, "uint16", classes=["building"], threshold=0.42)
    export_saved_model(wrapped, out, card)
    return model, norm, out, tf.saved_model.load(str(out))


@pytest.mark.parametrize("shape", [(1, 32, 32), (2, 37, 50), (1, 65, 97), (1, 3, 5), (1, 1, 1)])
def test_reloaded_savedmodel_matches_keras_model(multiclass, shape):
    model, norm, _, loaded = multiclass
    images = np.random.default_rng(sum(shape)).uniform(0, 255, shape + (3,)).astype(np.float32)
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    expected = reference(model, norm, images, 4)
    assert out["probabilities"].shape == shape + (3,)
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(out["classes"].numpy(), expected.argmax(-1))
    assert out["classes"].dtype == tf.int32


def test_binary_threshold_and_percentile_clip(binary):
    model, norm, _, loaded = binary
    images = np.random.default_rng(3).uniform(-500, 5000, (2, 45, 29, 1)).astype(np.float32)
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    expected = reference(model, norm, images, 4)
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(out["classes"].numpy(), (expected[..., 0] >= 0.42).astype(np.int32))


def test_reflect_padding_equals_numpy_for_any_pad():
    for height, width, multiple in [(5, 7, 4), (3, 2, 32), (1, 1, 8), (33, 31, 32)]:
        x = np.arange(height * width, dtype=np.float32).reshape(1, height, width, 1)
        padded = reflect_pad_to_multiple(tf.constant(x), multiple).numpy()
        pad = [(0, 0), (0, -height % multiple), (0, -width % multiple), (0, 0)]
        np.testing.assert_array_equal(padded, np.pad(x, pad, mode="reflect") if height > 1 and width > 1
                                      else np.pad(x, pad, mode="edge"))


def test_integer_signatures_match_float(multiclass):
    _, _, _, loaded = multiclass
    images = np.random.default_rng(4).integers(0, 256, (1, 21, 40, 3))
    as_float = loaded.signatures["serving_default"](images=tf.constant(images, tf.float32))
    for name, dtype in [("serving_uint8", tf.uint8), ("serving_int32", tf.int32)]:
        out = loaded.signatures[name](images=tf.constant(images, dtype))
        np.testing.assert_allclose(out["probabilities"].numpy(), as_float["probabilities"].numpy(), atol=1e-6)


def _png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def test_bytes_signature_png8_png16_and_jpeg(multiclass, binary):
    _, _, _, loaded = multiclass
    rgb = np.random.default_rng(5).integers(0, 256, (19, 23, 3)).astype(np.uint8)
    out = loaded.signatures["serving_bytes"](image_bytes=tf.constant([_png(rgb), _png(rgb[::-1].copy())]))
    direct = loaded.signatures["serving_uint8"](images=tf.constant(np.stack([rgb, rgb[::-1]])))
    np.testing.assert_allclose(out["probabilities"].numpy(), direct["probabilities"].numpy(), atol=1e-6)

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=95)
    jpeg = loaded.signatures["serving_bytes"](image_bytes=tf.constant([buffer.getvalue()]))
    assert jpeg["classes"].shape == (1, 19, 23)

    _, _, _, loaded_bin = binary
    pan = np.random.default_rng(6).integers(0, 4000, (30, 17)).astype(np.uint16)
    png16 = _png(pan)
    assert png16[24] == 16  # really a 16-bit PNG
    out = loaded_bin.signatures["serving_bytes"](image_bytes=tf.constant([png16]))
    direct = loaded_bin.signatures["serving_int32"](images=tf.constant(pan[None, ..., None].astype(np.int32)))
    np.testing.assert_allclose(out["probabilities"].numpy(), direct["probabilities"].numpy(), atol=1e-6)


def test_bytes_signature_rejects_wrong_band_count_and_garbage(multiclass):
    _, _, _, loaded = multiclass
    gray = _png(np.zeros((8, 8), np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="image_bytes"):
        loaded.signatures["serving_bytes"](image_bytes=tf.constant([gray]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="image_bytes: expected PNG"):
        loaded.signatures["serving_bytes"](image_bytes=tf.constant([b"not an image"]))


def test_metadata_signature_and_asset_are_the_model_card(multiclass, binary):
    _, _, out, loaded = multiclass
    text = loaded.signatures["metadata"]()["metadata"].numpy().decode()
    assert text == (out / "assets" / CARD_FILE).read_text()
    card = load_model_card(out)
    assert card == ModelCard.from_dict(json.loads(text))
    assert card.num_bands == 3 and card.band_names == ["red", "green", "blue"]
    assert card.band_dtype == "uint8" and card.nodata == 0.0
    assert card.normalization.mean == [100.0, 120.0, 90.0]
    assert card.classes == CLASSES and card.task == "multiclass"
    assert card.colours["water"] == "#0000ff" and card.colours["buildings"].startswith("#")
    assert card.tile_size == 256 and card.recommended_overlap == 32 and card.size_multiple == 4
    assert card.metrics == {"iou": 0.5} and card.tfseg_version
    assert set(loaded.signatures) == {"serving_default", "serving_uint8", "serving_int32", "serving_bytes",
                                      "metadata"}

    bin_card = load_model_card(binary[2])
    assert bin_card.threshold == pytest.approx(0.42) and bin_card.task == "binary"
    assert bin_card.classes == ["building"] and bin_card.band_dtype == "uint16"
    assert not list(out.parent.glob("*.partial"))  # written beside and renamed into place


def test_many_band_model_has_no_bytes_signature_and_mismatches_are_refused(tmp_path):
    model = build_model("unet", input_shape=(None, None, 6), classes=1, depth=2, filters=2)
    norm = Normalization("meanstd", [0.0] * 6, [1.0] * 6, [], [], [])
    wrapped, card = raw_pixels(model, norm, "float32", None)
    export_saved_model(wrapped, tmp_path / "m", card)
    assert "serving_bytes" not in tf.saved_model.load(str(tmp_path / "m")).signatures
    other, other_card = raw_pixels(build_model("unet", input_shape=(None, None, 2), classes=1, depth=2, filters=2),
                                   Normalization("meanstd", [0.0] * 2, [1.0] * 2, [], [], []), "float32", None)
    with pytest.raises(ExportError, match="takes 6 band.*says 2"):
        export_saved_model(wrapped, tmp_path / "x", other_card)
    with pytest.raises(LegacyArtifactError, match="no preprocessing layer"):
        export_saved_model(model, tmp_path / "y", card)  # the bare architecture: normalized inputs


def _run_dir(root: Path, model, norm) -> Path:
    """A run directory: the raw-pixel model, its card (classes, palette, tile size, overlap,
    metrics of a run) and a config.yaml that says something else (nobody re-reads it)."""
    run = root / "run"
    run.mkdir()
    wrapped, card = raw_pixels(model, norm, classes=CLASSES, palette=PALETTE, tile_size=128, recommended_overlap=16,
                               metrics={"iou": 0.61, "f1": 0.7})
    wrapped.save(run / "model.keras")
    card.save(run / CARD_FILE)
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"classes": ["x", "y", "z"], "window_size": 512}}))
    return run


def test_cli_exports_a_run_directory_for_tf_serving(multiclass, tmp_path, capsys):
    model, norm, _, _ = multiclass
    run = _run_dir(tmp_path, model, norm)
    loaded_model, card = load_run_model(run)
    assert card.normalization == norm and card.metrics["iou"] == 0.61
    out = tmp_path / "models" / "landcover" / "3"
    # the real command in a fresh interpreter (nothing pre-imported: custom layers must register)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "tfseg.export", "--model", str(run), "--output", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "saved_model.pb").is_file() and "SavedModel written" in done.stdout
    exported = load_model_card(out)
    assert exported == card  # the run's card, unchanged
    assert exported.classes == CLASSES and exported.tile_size == 128 and exported.recommended_overlap == 16
    assert exported.metrics == {"iou": 0.61, "f1": 0.7} and exported.colours["trees"] == "#00aa00"
    images = np.random.default_rng(7).uniform(0, 255, (1, 30, 30, 3)).astype(np.float32)
    probs = tf.saved_model.load(str(out)).signatures["serving_default"](images=tf.constant(images))["probabilities"]
    np.testing.assert_allclose(probs.numpy(), reference(model, norm, images, 4), atol=1e-5)

    # a published version is not silently replaced
    assert main(["--model", str(run), "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_threshold_moves_the_operating_point_with_it(binary, tmp_path, capsys):
    model, norm, _, _ = binary
    run = tmp_path / "run"
    run.mkdir()
    wrapped, card = raw_pixels(model, norm, "uint16", classes=["building"])
    point = {"threshold": 0.6, "min_area_m2": 4.0, "opening_px": 1, "instances": "watershed", "object_f1": 0.7}
    wrapped.save(run / "model.keras")
    card.with_operating_point(point).save(run / CARD_FILE)
    out = tmp_path / "m" / "1"
    assert main(["--model", str(run), "--output", str(out), "--threshold", "0.35"]) == 0
    err = capsys.readouterr().err
    assert "min_area_m2 4.0, opening_px 1" in err and "chosen at threshold 0.6" in err
    exported = load_model_card(out)
    assert exported.threshold == 0.35
    assert exported.operating_point == {**point, "threshold": 0.35, "tuned_threshold": 0.6}
    images = np.random.default_rng(3).uniform(200, 3800, (1, 24, 24, 1)).astype(np.float32)
    outputs = tf.saved_model.load(str(out)).signatures["serving_default"](images=tf.constant(images))
    probs = outputs["probabilities"].numpy()[..., 0]
    assert ((probs >= 0.35) & (probs < 0.6)).any()  # pixels the two thresholds decide differently
    np.testing.assert_array_equal(outputs["classes"].numpy(), (probs >= 0.35).astype(np.int32))


def test_threshold_override_of_a_footprint_boundary_contact_card():
    model = build_model("unet", input_shape=(None, None, 3), classes=3, depth=2, filters=2, activation="sigmoid")
    norm = Normalization("meanstd", [0.0] * 3, [1.0] * 3, [], [], [])
    _, card = raw_pixels(model, norm, classes=["footprint", "boundary", "contact"], threshold=[0.5, 0.4, 0.3])
    tuned = card.with_operating_point({"threshold": 0.6, "min_area_px": 20.0, "opening_px": 0})
    moved = export_lib.with_threshold(tuned, 0.45)  # the footprint channel's, as the operating point's
    assert moved.threshold == [0.45, 0.4, 0.3] and moved.operating_point["threshold"] == 0.45
    assert moved.operating_point["tuned_threshold"] == 0.6
    back = export_lib.with_threshold(moved, 0.6)  # at the tuned threshold again: nothing to record
    assert back.operating_point == tuned.operating_point and back.threshold == [0.6, 0.4, 0.3]
    # without an operating point too, only the footprint channel moves (the others place markers)
    assert export_lib.with_threshold(card, 0.45).threshold == [0.45, 0.4, 0.3]
    # another multi-label card: the one value is every class's
    _, landcover = raw_pixels(model, norm, classes=["trees", "water", "roads"], threshold=[0.5, 0.4, 0.3])
    assert export_lib.with_threshold(landcover, 0.45).thresholds() == [0.45, 0.45, 0.45]


def test_cli_errors_name_the_argument(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path), "--output", str(tmp_path / "models" / "name")])
    assert "--output" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "missing"), "--output", str(tmp_path / "m" / "1")]) == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:.*Interpreter is deprecated")
def test_tflite_plain_unet_converts_and_matches(multiclass, tmp_path):
    model, norm, _, _ = multiclass
    run = _run_dir(tmp_path, model, norm)
    assert main(["--model", str(run), "--output", str(tmp_path / "lite"), "--format", "tflite"]) == 0
    file = tmp_path / "lite" / "model.tflite"
    assert load_model_card(file).classes == CLASSES  # model.model_card.json beside it
    assert (tmp_path / "lite" / "model.model_card.json").is_file() and not (tmp_path / "lite" / CARD_FILE).exists()
    assert export_lib.read_tflite_ops(file) == "builtins"
    interpreter = tf.lite.Interpreter(model_path=str(file))
    runner = interpreter.get_signature_runner("serving_default")
    images = np.random.default_rng(8).uniform(0, 255, (1, 37, 50, 3)).astype(np.float32)
    out = runner(images=images)
    np.testing.assert_allclose(out["probabilities"], reference(model, norm, images, 4), atol=1e-5)
    assert out["classes"].shape == (1, 37, 50)


def test_export_module_keeps_train_contract():
    """train.py calls export_saved_model(best, path, card)."""
    import inspect

    assert list(inspect.signature(export_lib.export_saved_model).parameters) == ["model", "output", "card"]
    assert list(inspect.signature(export_tflite).parameters) == ["model", "output", "card"]


@pytest.mark.filterwarnings("ignore:.*Interpreter is deprecated")
def test_tflite_transpose_unet_uses_builtin_ops_only(tmp_path):
    keras.utils.set_random_seed(4)
    model = build_model("unet", input_shape=(None, None, 2), classes=1, depth=2, filters=4, upsampling="transpose")
    norm = Normalization("meanstd", [10.0, 20.0], [3.0, 4.0], [], [], [])
    wrapped, card = raw_pixels(model, norm, "float32", None, classes=["building"], threshold=0.3)
    file = export_tflite(wrapped, tmp_path / "t.tflite", card)
    assert export_lib.read_tflite_ops(file) == "builtins"
    runner = tf.lite.Interpreter(model_path=str(file)).get_signature_runner("serving_default")
    images = np.random.default_rng(9).uniform(0, 40, (1, 22, 15, 2)).astype(np.float32)
    out = runner(images=images)
    expected = reference(model, norm, images, 4)
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
    np.testing.assert_array_equal(out["classes"], (expected[..., 0] >= 0.3).astype(np.int32))


@pytest.mark.slow
def test_trained_run_exports_its_band_dtype_and_re_exports_for_serving(tmp_path):
    from tests.data.fixtures import tiny_synthetic_overrides
    from tfseg import train

    run = tmp_path / "run"
    assert train.main(["--quiet", "--run-dir", str(run), "--set", *tiny_synthetic_overrides(tmp_path / "data"),
                       "train.epochs=1"]) == 0
    card = load_model_card(run / "export")
    assert card == load_model_card(run) == load_model_card(run / "model.keras")  # written once, read anywhere
    assert card.band_dtype == "uint16"  # the synthetic scenes are 16-bit GeoTIFFs
    assert card.num_bands == 4 and card.tile_size == 64 and set(card.metrics) >= {"iou", "f1"}
    out = tmp_path / "models" / "buildings" / "1"
    assert main(["--model", str(run), "--output", str(out), "--threshold", "0.35"]) == 0
    again = load_model_card(out)
    assert again.band_dtype == "uint16" and again.threshold == 0.35 and again.metrics == card.metrics
    model, card = load_run_model(run)
    raw = np.random.default_rng(10).integers(200, 3000, (1, 50, 70, 4)).astype(np.int32)
    out_sig = tf.saved_model.load(str(out)).signatures["serving_int32"](images=tf.constant(raw))
    expected = np.asarray(model.predict_on_batch(np.pad(raw, [(0, 0), (0, 2), (0, 2), (0, 0)], mode="reflect")))
    expected = expected[:, :50, :70]
    np.testing.assert_allclose(out_sig["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(out_sig["classes"].numpy(), (expected[..., 0] >= 0.35).astype(np.int32))


def test_multilabel_head_is_described_as_such(tmp_path):
    model = build_model("unet", input_shape=(None, None, 2), classes=3, depth=2, filters=2, activation="sigmoid")
    norm = Normalization("meanstd", [0.0, 0.0], [1.0, 1.0], [], [], [])
    wrapped, card = raw_pixels(model, norm, "float32", None)
    assert load_model_card(export_saved_model(wrapped, tmp_path / "m", card)).task == "multilabel"


@pytest.mark.filterwarnings("ignore:.*Interpreter is deprecated")
def test_tflite_in_a_run_directory_leaves_the_run_card_alone(binary, tmp_path, capsys):
    """The card of NAME.tflite is NAME.model_card.json: exporting into the run directory keeps the
    run's model_card.json (and the card inside model.keras) as they were, two .tflite files in a
    folder keep their own cards, and an existing card is not replaced without --overwrite."""
    model, norm, _, _ = binary
    run = tmp_path / "run"
    run.mkdir()
    wrapped, card = raw_pixels(model, norm, "uint16", classes=["building"], threshold=0.5)
    wrapped.save(run / "model.keras")
    card.save(run / CARD_FILE)
    before = (run / CARD_FILE).read_text()
    assert main(["--model", str(run), "--output", str(run / "model.tflite"), "--format", "tflite",
                 "--threshold", "0.3"]) == 0
    assert (run / CARD_FILE).read_text() == before and load_model_card(run).threshold == 0.5
    assert load_model_card(run / "model.tflite").threshold == 0.3
    assert export_lib.read_tflite_ops(run / "model.tflite") == "builtins"  # model.tflite.json
    (run / "model.tflite").unlink()  # only the card is left: still refused
    assert main(["--model", str(run), "--output", str(run / "model.tflite"), "--format", "tflite"]) == 2
    assert "model.model_card.json" in capsys.readouterr().err
    assert load_model_card(tmp_path / "run" / "model.model_card.json").threshold == 0.3
    assert main(["--model", str(run), "--output", str(run / "other.tflite"), "--format", "tflite"]) == 0
    assert load_model_card(run / "other.tflite").threshold == 0.5
    assert load_model_card(run / "model.model_card.json").threshold == 0.3  # not clobbered


def test_cli_threshold_on_a_multiclass_model_is_refused(multiclass, tmp_path, capsys):
    model, norm, _, _ = multiclass
    run = _run_dir(tmp_path, model, norm)
    assert main(["--model", str(run), "--output", str(tmp_path / "m" / "1"), "--threshold", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "--threshold 0.3" in err and "multiclass" in err and not (tmp_path / "m" / "1").exists()
    with pytest.raises(ExportError, match="--threshold 0.3: the model is multiclass"):
        export_lib.export_model(run, tmp_path / "m" / "2", threshold=0.3)


def test_bytes_signature_refuses_an_image_of_another_dtype_than_the_card(multiclass, binary):
    """A uint8 model takes 8-bit PNG/JPEG only, a uint16 model 16-bit PNG only: the values of
    the other kind are on another scale, and the error names both dtypes."""
    _, _, _, loaded = multiclass  # uint8
    import cv2  # PIL writes 16-bit PNGs of one band only

    png16 = cv2.imencode(".png", np.full((8, 8, 3), 300, np.uint16))[1].tobytes()
    assert png16[24] == 16
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes: the model was trained on uint8 "
                                                             r"imagery.*16-bit PNG \(uint16 pixels\)"):
        loaded.signatures["serving_bytes"](image_bytes=tf.constant([png16]))
    _, _, _, loaded_bin = binary  # uint16
    png8 = _png(np.full((8, 8), 200, np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"trained on uint16 imagery: send a 16-bit PNG.*"
                                                             r"8-bit PNG or a JPEG \(uint8 pixels\)"):
        loaded_bin.signatures["serving_bytes"](image_bytes=tf.constant([png8]))
    from tfseg.export import bytes_dtype_message, image_bytes_dtype

    assert image_bytes_dtype(png16) == "uint16" and image_bytes_dtype(png8) == "uint8"
    assert image_bytes_dtype(b"hello") is None
    assert "float32 imagery, which PNG/JPEG" in bytes_dtype_message("float32", "uint8")


def test_a_card_that_does_not_describe_the_preprocessing_layer_is_refused(tmp_path):
    model = build_model("unet", input_shape=(None, None, 2), classes=1, depth=2, filters=2)
    norm = Normalization("meanstd", [10.0, 20.0], [3.0, 4.0], [], [], [])
    wrapped, card = raw_pixels(model, norm, "uint16", 0.0)
    with pytest.raises(ExportError, match=r"preprocessing layer does not match its model card.*nodata 0.0 "
                                          r"\(card: 65535.0\)"):
        export_saved_model(wrapped, tmp_path / "a", dataclasses.replace(card, nodata=65535.0))
    other = Normalization("meanstd", [10.0, 25.0], [3.0, 4.0], [], [], [])
    with pytest.raises(ExportError, match=r"offset \[10.0, 20.0\] \(card: \[10.0, 25.0\]\)"):
        export_saved_model(wrapped, tmp_path / "b", dataclasses.replace(card, normalization=other))
