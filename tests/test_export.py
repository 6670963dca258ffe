"""SavedModel export: parity with the Keras model, every signature, metadata, CLI, TFLite."""
from __future__ import annotations

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
from tfseg.export import (METADATA_ASSET, ExportError, export_saved_model, export_tflite, load_run_model,
                          main, read_metadata, reflect_pad_to_multiple)
from tfseg.models import build_model

CLASSES = ["water", "trees", "buildings"]
PALETTE = {"water": "#0000ff", "trees": "#00aa00"}  # buildings: default colour


def reference(model, norm, images, multiple):
    """The in-memory Keras model on raw images, with numpy normalization and reflect padding."""
    x = norm.apply(images.astype(np.float32))
    height, width = x.shape[1:3]
    pad = [(0, 0), (0, -height % multiple), (0, -width % multiple), (0, 0)]
    return np.asarray(model(np.pad(x, pad, mode="reflect"), training=False))[:, :height, :width]


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory):
    keras.utils.set_random_seed(1)
    model = build_model("unet", input_shape=(None, None, 3), classes=3, depth=2, filters=4)
    norm = Normalization("meanstd", [100.0, 120.0, 90.0], [30.0, 40.0, 20.0], [0.0] * 3, [255.0] * 3,
                         ["red", "green", "blue"])
    out = tmp_path_factory.mktemp("export") / "models" / "landcover" / "1"
    meta = {"classes": CLASSES, "palette": PALETTE, "band_dtype": "uint8", "tile_size": 256,
            "recommended_overlap": 32, "model": "unet", "backbone": "", "metrics": {"iou": 0.5}}
    export_saved_model(model, norm, out, meta)
    return model, norm, out, tf.saved_model.load(str(out))


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    keras.utils.set_random_seed(2)
    model = build_model("unet", input_shape=(None, None, 1), classes=1, depth=2, filters=4)
    norm = Normalization("percentile", [], [], [200.0], [3800.0], ["pan"])
    out = tmp_path_factory.mktemp("export") / "bin"
    export_saved_model(model, norm, out, {"classes": ["building"], "band_dtype": "uint16"}, threshold=0.42)
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


def test_metadata_signature_and_asset_describe_the_model(multiclass, binary):
    _, _, out, loaded = multiclass
    meta = json.loads(loaded.signatures["metadata"]()["metadata"].numpy())
    assert meta == json.loads((out / "assets" / METADATA_ASSET).read_text()) == read_metadata(out)
    assert meta["num_bands"] == 3 and meta["band_names"] == ["red", "green", "blue"]
    assert meta["band_dtype"] == "uint8"
    assert meta["normalization"]["mean"] == [100.0, 120.0, 90.0]
    assert meta["classes"] == CLASSES and meta["task"] == "multiclass"
    assert meta["class_colours"]["water"] == "#0000ff" and meta["class_colours"]["buildings"].startswith("#")
    assert [c["value"] for c in meta["class_map"]] == [0, 1, 2]
    assert meta["tile_size"] == 256 and meta["recommended_overlap"] == 32 and meta["size_multiple"] == 4
    assert meta["metrics"] == {"iou": 0.5} and meta["tfseg_version"]
    assert set(meta["signatures"]) == {"serving_default", "serving_uint8", "serving_int32", "serving_bytes"}
    assert set(loaded.signatures) == set(meta["signatures"]) | {"metadata"}

    bin_meta = read_metadata(binary[2])
    assert bin_meta["threshold"] == pytest.approx(0.42) and bin_meta["task"] == "binary"
    assert bin_meta["class_map"][1]["name"] == "building" and bin_meta["band_dtype"] == "uint16"
    assert not list(out.parent.glob("*.partial"))  # written beside and renamed into place


def test_many_band_model_has_no_bytes_signature(tmp_path):
    model = build_model("unet", input_shape=(None, None, 6), classes=1, depth=2, filters=2)
    norm = Normalization("meanstd", [0.0] * 6, [1.0] * 6, [], [], [])
    export_saved_model(model, norm, tmp_path / "m")
    assert "serving_bytes" not in read_metadata(tmp_path / "m")["signatures"]
    with pytest.raises(ExportError, match="normalization has 2 bands"):
        export_saved_model(model, Normalization("meanstd", [0.0] * 2, [1.0] * 2, [], [], []), tmp_path / "x")


def _run_dir(root: Path, model, norm) -> Path:
    run = root / "run"
    run.mkdir()
    model.save(run / "model.keras")
    norm.save(run / "normalization.json")
    (run / "config.yaml").write_text(yaml.safe_dump({
        "data": {"classes": CLASSES, "palette": PALETTE, "window_size": 128},
        "model": {"name": "unet", "depth": 2, "filters": 4},
        "train": {"threshold": 0.5}, "export": {"recommended_overlap": 16}}))
    (run / "metrics.json").write_text(json.dumps({"val": {"iou": 0.61, "f1": 0.7}}))
    return run


def test_cli_exports_a_run_directory_for_tf_serving(multiclass, tmp_path, capsys):
    model, norm, _, _ = multiclass
    run = _run_dir(tmp_path, model, norm)
    loaded_model, loaded_norm, run_metrics = load_run_model(run)
    assert loaded_norm == norm and run_metrics["val"]["iou"] == 0.61
    out = tmp_path / "models" / "landcover" / "3"
    # the real command in a fresh interpreter (nothing pre-imported: custom layers must register)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "tfseg.export", "--model", str(run), "--output", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "saved_model.pb").is_file() and "SavedModel written" in done.stdout
    meta = read_metadata(out)
    assert meta["classes"] == CLASSES and meta["tile_size"] == 128 and meta["recommended_overlap"] == 16
    assert meta["metrics"] == {"iou": 0.61, "f1": 0.7} and meta["class_colours"]["trees"] == "#00aa00"
    images = np.random.default_rng(7).uniform(0, 255, (1, 30, 30, 3)).astype(np.float32)
    probs = tf.saved_model.load(str(out)).signatures["serving_default"](images=tf.constant(images))["probabilities"]
    np.testing.assert_allclose(probs.numpy(), reference(model, norm, images, 4), atol=1e-5)

    # a published version is not silently replaced
    assert main(["--model", str(run), "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


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
    assert json.loads((file.parent / METADATA_ASSET).read_text())["format"] == "tflite"
    assert export_lib.read_tflite_ops(file) == "builtins"
    interpreter = tf.lite.Interpreter(model_path=str(file))
    runner = interpreter.get_signature_runner("serving_default")
    images = np.random.default_rng(8).uniform(0, 255, (1, 37, 50, 3)).astype(np.float32)
    out = runner(images=images)
    np.testing.assert_allclose(out["probabilities"], reference(model, norm, images, 4), atol=1e-5)
    assert out["classes"].shape == (1, 37, 50)


def test_export_module_keeps_train_contract():
    """train.py calls export_saved_model(best, norm, path, metadata, threshold=...)."""
    import inspect

    params = list(inspect.signature(export_lib.export_saved_model).parameters)
    assert params[:5] == ["model", "norm", "output", "metadata", "threshold"]
    assert callable(export_tflite)


@pytest.mark.filterwarnings("ignore:.*Interpreter is deprecated")
def test_tflite_transpose_unet_uses_builtin_ops_only(tmp_path):
    keras.utils.set_random_seed(4)
    model = build_model("unet", input_shape=(None, None, 2), classes=1, depth=2, filters=4, upsampling="transpose")
    norm = Normalization("meanstd", [10.0, 20.0], [3.0, 4.0], [], [], [])
    file = export_tflite(model, norm, tmp_path / "t.tflite", {"classes": ["building"]}, threshold=0.3)
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
    meta = read_metadata(run / "export")
    assert meta["band_dtype"] == "uint16"  # the synthetic scenes are 16-bit GeoTIFFs
    assert meta["num_bands"] == 4 and meta["tile_size"] == 64 and set(meta["metrics"]) >= {"iou", "f1"}
    out = tmp_path / "models" / "buildings" / "1"
    assert main(["--model", str(run), "--output", str(out), "--threshold", "0.35"]) == 0
    again = read_metadata(out)
    assert again["band_dtype"] == "uint16" and again["threshold"] == 0.35 and again["metrics"] == meta["metrics"]
    model, norm, _ = load_run_model(run)
    raw = np.random.default_rng(10).integers(200, 3000, (1, 50, 70, 4)).astype(np.int32)
    out_sig = tf.saved_model.load(str(out)).signatures["serving_int32"](images=tf.constant(raw))
    expected = reference(model, norm, raw, export_lib.model_multiple(model))
    np.testing.assert_allclose(out_sig["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(out_sig["classes"].numpy(), (expected[..., 0] >= 0.35).astype(np.int32))


def test_multilabel_head_is_described_as_such(tmp_path):
    model = build_model("unet", input_shape=(None, None, 2), classes=3, depth=2, filters=2, activation="sigmoid")
    norm = Normalization("meanstd", [0.0, 0.0], [1.0, 1.0], [], [], [])
    assert read_metadata(export_saved_model(model, norm, tmp_path / "m"))["task"] == "multilabel"
