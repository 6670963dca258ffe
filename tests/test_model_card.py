"""The model card: write/read everywhere, field errors naming the field and the file, scene
mismatches, older artifacts (refused, then upgraded), and one trained model giving the same
probabilities through evaluation, prediction, export and serving."""
from __future__ import annotations

import dataclasses
import json
import shutil
import zipfile

import numpy as np
import pytest

from tfseg._tf import tensorflow as tf  # noqa: F401,I001  (quiet import)
import keras

from tests.data.fixtures import write_geotiff
from tests.infer_support import building_scene, conv_model, save_legacy_run, save_run
from tfseg import predict
from tfseg.data.raster import Normalization
from tfseg.export import export_saved_model, load_run_model
from tfseg.inference import NodataWarning, load_predictor
from tfseg.model_card import (CARD_FILE, LegacyArtifactError, ModelCard, ModelCardError, load_model_card,
                              main as card_main)

FIELDS = ["classes", "colours", "task", "threshold", "band_names", "band_dtype", "num_bands", "nodata",
          "ignore_index", "normalization", "tile_size", "recommended_overlap", "size_multiple", "model",
          "backbone", "metrics", "tfseg_version", "operating_point", "class_weights", "class_frequencies",
          "class_offsets"]
CONFIG = "data:\n  classes: [building]\n  window_size: 64\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    keras.utils.set_random_seed(0)
    return save_run(conv_model(), tmp_path_factory.mktemp("card") / "run", config=CONFIG)


def test_card_fields_round_trip_and_every_location(run, tmp_path):
    card = load_model_card(run)
    data = json.loads((run / CARD_FILE).read_text())
    assert list(data) == sorted(FIELDS) and sorted(card.to_dict()) == sorted(FIELDS)
    assert card == ModelCard.from_dict(card.to_dict()) and isinstance(card.normalization, Normalization)
    assert card.tile_size == 64 and card.band_dtype == "uint16" and card.nodata == 0.0 and card.task == "binary"
    assert card.recommended_overlap == 32 and card.size_multiple == 1 and card.operating_point is None
    assert card.class_weights is None and card.class_frequencies is None  # unweighted loss, no class index
    older = {k: v for k, v in data.items() if k not in ("class_weights", "class_frequencies", "class_offsets")}
    assert ModelCard.from_dict(older) == card  # a card written before the optional fields still loads
    weighted = ModelCard.from_dict({**data, "class_weights": [0.5, 2], "class_frequencies": {"building": 0.2}})
    assert weighted.class_weights == [0.5, 2] and ModelCard.from_dict(weighted.to_dict()) == weighted
    assert load_model_card(run / "model.keras") == card  # beside the .keras file
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run / "model.keras", alone / "model.keras")
    with pytest.raises(ModelCardError, match=f"model.keras: no {CARD_FILE}"):
        load_model_card(alone / "model.keras")
    from tfseg.model_card import embed_card

    embed_card(alone / "model.keras", card)  # inside the .keras archive: Keras still loads it
    assert load_model_card(alone / "model.keras") == card
    assert CARD_FILE in zipfile.ZipFile(alone / "model.keras").namelist()
    model, _ = load_run_model(alone / "model.keras")
    export_saved_model(model, tmp_path / "export", card)
    assert load_model_card(tmp_path / "export") == card
    (tmp_path / "export" / "assets" / CARD_FILE).unlink()  # the metadata signature carries the same JSON
    assert load_model_card(tmp_path / "export") == card
    assert load_model_card(run / CARD_FILE) == card
    assert card_main(["show", str(run)]) == 0


@pytest.mark.parametrize("change,field", [
    (lambda d: d.pop("tile_size"), "tile_size"),
    (lambda d: d.update(task="segmentation"), "task"),
    (lambda d: d.update(threshold=[0.5]), "threshold"),
    (lambda d: d.update(band_names=["a"]), "band_names"),
    (lambda d: d.update(band_dtype="complex64"), "band_dtype"),
    (lambda d: d.update(nodata=None), "nodata"),  # integer imagery needs a nodata value
    (lambda d: d.update(nodata=70000), "nodata"),  # not a uint16
    (lambda d: d.update(recommended_overlap=64), "recommended_overlap"),
    (lambda d: d["normalization"].update(std=[1.0, 0.0, 1.0]), "normalization.std"),
    (lambda d: d["normalization"].update(mean=[1.0]), "normalization.mean"),
    (lambda d: d.update(colours={"roof": "#ffffff"}), "colours"),
    (lambda d: d.update(window=64), "window"),
    (lambda d: d.update(class_weights=[1.0, -1.0]), "class_weights"),
    (lambda d: d.update(class_weights=[1.0, 2.0, 3.0]), "class_weights"),  # binary: 1 or 2 weights
    (lambda d: d.update(class_frequencies={"building": 2}), "class_frequencies"),
    (lambda d: d.update(metrics={"iou": "high"}), "metrics"),
    (lambda d: d["normalization"].update(band_names=["band1"], std=[1.0, 0.0, 1.0]), "normalization.band_names"),
    (lambda d: d["normalization"].update(band_names="rgb"), "normalization.band_names"),
    (lambda d: d["normalization"].update(band_names=["x", "y", "z"]), "normalization.band_names"),
    (lambda d: d.update(colours={"building": "#zzzzzz"}), "colours"),
    (lambda d: d.update(operating_point={"min_area_px": 3}), "operating_point"),  # no threshold
    (lambda d: d.update(operating_point={"threshold": 0.9}), "operating_point"),  # not the card's threshold
    (lambda d: d.update(classes=["building", "building"], task="multiclass"), "classes"),
])
def test_missing_or_wrong_field_names_the_field_and_the_file(run, tmp_path, change, field):
    data = json.loads((run / CARD_FILE).read_text())
    change(data)
    path = tmp_path / CARD_FILE
    path.write_text(json.dumps(data))
    with pytest.raises(ModelCardError) as error:
        load_model_card(path)
    assert str(path) in str(error.value) and field in str(error.value)
    if field == "normalization.std":
        assert "band 2 (band2)" in str(error.value)  # the constant band, by index and name


def test_scene_band_count_dtype_and_nodata_checked_against_the_card(run, tmp_path):
    image, _ = building_scene(40, 48)
    bands2 = write_geotiff(tmp_path / "two.tif", image[:2])
    as_uint8 = write_geotiff(tmp_path / "eight.tif", image.clip(0, 255).astype(np.uint8))
    other_nodata = write_geotiff(tmp_path / "nodata.tif", image, nodata=65535)
    options = predict.PredictOptions(tile_size=32, overlap=0, progress=False, polygons=False, overlay=False)
    with pytest.raises(ValueError, match="two.tif.*2 band.*3 band"):
        predict.predict_scenes(run, [bands2], tmp_path / "out2", options)
    with pytest.raises(ValueError, match="eight.tif.*uint8.*trained on uint16"):
        predict.predict_scenes(run, [as_uint8], tmp_path / "out8", options)
    with pytest.warns(NodataWarning, match="nodata.tif.*nodata value is 65535.0 but the training scenes' is 0.0"):
        predict.predict_scenes(run, [other_nodata], tmp_path / "outn", options)
    assert predict.main(["--model", str(run), "--input", str(as_uint8), "--output", str(tmp_path / "o"),
                         "--quiet"]) != 0


def test_older_run_directory_is_refused_then_upgraded_and_predicts_the_same(tmp_path, capsys):
    """Old layout (before the card): model.keras on normalized inputs + normalization.json. It
    is refused with how to upgrade; after ``python -m tfseg.model_card upgrade`` it predicts
    exactly what the old code computed (numpy normalization, no-data -> 0)."""
    keras.utils.set_random_seed(1)
    old_model = conv_model()
    old = save_legacy_run(old_model, tmp_path / "old", config=CONFIG)
    for target in (old, old / "model.keras"):
        with pytest.raises(LegacyArtifactError, match="before the model card.*tfseg.model_card upgrade"):
            load_predictor(target)
    legacy_export = tmp_path / "export"
    legacy_export.mkdir()
    (legacy_export / "saved_model.pb").write_bytes(b"")
    (legacy_export / "assets").mkdir()
    (legacy_export / "assets" / "tfseg_metadata.json").write_text("{}")
    with pytest.raises(LegacyArtifactError, match="SavedModel.*re-export"):
        load_model_card(legacy_export)

    assert card_main(["upgrade", str(old), "--band-dtype", "uint16", "--nodata", "0"]) == 0
    assert "upgraded" in capsys.readouterr().out
    assert (old / "model.pre-card.keras").is_file()
    card = load_model_card(old)
    assert card.tile_size == 64 and card.band_dtype == "uint16" and card.nodata == 0.0
    image, _ = building_scene(40, 48)
    raw = image.transpose(1, 2, 0)
    raw[:5, :7] = 0  # no data
    norm = Normalization.load(old / "normalization.json")
    x = norm.apply(raw.astype(np.float32))
    x[(raw == 0).all(-1)] = 0.0  # what the old pipeline and predictor fed the model
    expected = np.asarray(old_model.predict_on_batch(x[None]))
    np.testing.assert_allclose(load_predictor(old)(raw[None]), expected, atol=1e-5)
    assert card_main(["upgrade", str(old)]) == 2  # twice: refused, nothing to upgrade
    assert "already has" in capsys.readouterr().err


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    from tests.data.fixtures import tiny_synthetic_overrides
    from tfseg import train

    base = tmp_path_factory.mktemp("two_steps")
    overrides = [*tiny_synthetic_overrides(base / "data"), "train.epochs=1", "train.steps_per_epoch=2",
                 "data.augment.brightness=0.1", "data.augment.contrast=0.1"]
    assert train.main(["--quiet", "--run-dir", str(base / "run"), "--set", *overrides]) == 0
    return base / "run", base / "data"


@pytest.mark.slow
def test_one_tile_same_probabilities_through_evaluate_predict_export_and_serve(two_step_run, tmp_path):
    """A model trained for two steps; one 64 px tile of a validation scene (with a no-data
    patch) through (1) the evaluation pipeline (tf.data raw tile -> model, as model.evaluate
    sees it), (2) predict on a GeoTIFF of the tile, (3) the exported SavedModel and (4) the
    HTTP server. Tolerance: 1e-5 absolute (float32; the GeoTIFF path keeps float32 here)."""
    import http.client

    import rasterio

    from tfseg import config as config_lib
    from tfseg.bench.serve import start_server, stop_server
    from tfseg.data.formats import load_scenes
    from tfseg.data.pipeline import build_dataset
    from tfseg.inference import ArraySink, Job, RasterSource, run_sliding_window
    from tfseg.data.raster import open_raster

    run, data = two_step_run
    card = load_model_card(run)
    assert card.metrics and card.band_dtype == "uint16" and card.nodata == 0.0
    val = sorted((data / "val").glob("*.tif"))[0]
    with rasterio.open(val) as src:
        tile = src.read(window=rasterio.windows.Window(64, 64, 64, 64))
        nodata, crs, transform = src.nodata, src.crs, src.window_transform(rasterio.windows.Window(64, 64, 64, 64))
    tile[:, :6, :9] = 0  # a no-data patch
    scene = write_geotiff(tmp_path / "tile.tif", tile, crs=crs, transform=transform, nodata=nodata)
    raw = tile.transpose(1, 2, 0)[None]

    # (1) evaluation: the pipeline's tile (source dtype, nodata written as the card's value)
    cfg = config_lib.load(run / "config.yaml")
    train_scenes, _ = load_scenes(cfg.data)
    from tfseg.data.sources import Scene

    scenes = [Scene(open_raster(scene), train_scenes[0].labels, "tile")]
    x, _ = next(iter(build_dataset(scenes, cfg.data, training=False, batch_size=1, nodata=card.nodata)))
    assert x.dtype == tf.uint16
    np.testing.assert_array_equal(x.numpy(), raw)
    model, _ = load_run_model(run)
    evaluated = np.asarray(model(x, training=False))
    # (2) predict on the GeoTIFF (one tile, no blending)
    sink = ArraySink(64, 64, 1)
    run_sliding_window(load_predictor(run), [Job(RasterSource(open_raster(scene)), sink, "tile")], 64, 0, 1)
    predicted = sink.probs[None]
    # (3) the exported SavedModel
    exported = load_predictor(run / "export")(raw)
    # (4) served over HTTP
    base = tmp_path / "models" / "tile"
    shutil.copytree(run / "export", base / "1")
    process, port = start_server(base, "tile", tmp_path / "serve.log")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("POST", "/v1/models/tile:predict", body=json.dumps({"instances": raw.tolist()}),
                     headers={"Content-Type": "application/json"})
        served = np.asarray(json.loads(conn.getresponse().read())["predictions"][0]["probabilities"], np.float32)
    finally:
        stop_server(process)
    for name, probs in (("predict", predicted), ("export", exported), ("serve", served[None])):
        np.testing.assert_allclose(probs, evaluated, atol=1e-5, err_msg=name)
    assert 0 < evaluated.min() < evaluated.max() < 1


def test_operating_point_sets_the_decision_threshold(run):
    """The chosen point rides on the card; its threshold becomes the card's (the footprint
    channel's for a multi-label building model), so predictors and the SavedModel use it."""
    card = load_model_card(run)
    point = {"threshold": 0.7, "min_area_m2": 5.0, "opening_px": 3, "instances": "watershed", "object_f1": 0.6}
    chosen = card.with_operating_point(point)
    assert chosen.operating_point == point and chosen.threshold == 0.7 and card.operating_point is None
    assert ModelCard.from_dict(chosen.to_dict()) == chosen
    multi = ModelCard.from_dict({**card.to_dict(), "task": "multilabel", "classes": ["boundary", "footprint"],
                                 "colours": {"boundary": "#ff0000", "footprint": "#00ff00"}, "threshold": 0.5})
    assert multi.with_operating_point(point).threshold == [0.5, 0.7]


def test_undefined_metric_is_null_and_a_nan_is_stored_as_null(run):
    """Training records an undefined score (no class in truth or prediction) as None; a NaN is
    stored as null (JSON has no NaN); other non-numbers are still refused."""
    card = load_model_card(run)
    undefined = dataclasses.replace(card, metrics={"iou": None, "f1": 0.5})  # what training does at its end
    assert undefined.metrics == {"iou": None, "f1": 0.5}
    from_nan = dataclasses.replace(card, metrics={"iou": float("nan"), "f1": 0.5})
    assert from_nan.metrics == {"iou": None, "f1": 0.5} and from_nan == undefined
    assert '"iou": null' in from_nan.to_json() and ModelCard.from_dict(json.loads(from_nan.to_json())) == undefined
    assert ModelCard.from_dict(json.loads(from_nan.to_json().replace('"iou": null', '"iou": NaN'))) == undefined
    with pytest.raises(ModelCardError, match="field 'metrics'"):
        dataclasses.replace(card, metrics={"iou": float("inf")})


def test_card_lookup_errors_name_the_file(run, tmp_path):
    """A binary file, a .tflite's card (NAME.model_card.json beside it), bad JSON in a
    SavedModel's metadata signature and a .keras whose embedded card differs from the one beside it."""
    card = load_model_card(run)
    binary = tmp_path / "model.tflite"
    binary.write_bytes(b"\x1c\x00\x00\x00TFL3\xff\xfe\x80")
    with pytest.raises(ModelCardError, match=r"model.tflite: no model.model_card.json beside it"):
        load_model_card(binary)
    assert card_main(["show", str(binary)]) == 2
    (tmp_path / CARD_FILE).write_text(card.to_json())  # another model's card in the folder is not used
    with pytest.raises(ModelCardError, match="model.model_card.json"):
        load_model_card(binary)
    card.save(tmp_path / "model.model_card.json")
    assert load_model_card(binary) == card
    garbage = tmp_path / "card.bin"
    garbage.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ModelCardError, match=r"card.bin: not a model card \(binary data"):
        load_model_card(garbage)

    module = tf.Module()
    module.metadata = tf.function(lambda: {"metadata": tf.constant("{not json")}, input_signature=[])
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"metadata": module.metadata.get_concrete_function()})
    with pytest.raises(ModelCardError, match=r"SavedModel .*sm \(metadata signature\): not valid JSON"):
        load_model_card(tmp_path / "sm")

    from tfseg.model_card import embed_card

    folder = tmp_path / "copied"
    folder.mkdir()
    shutil.copy(run / "model.keras", folder / "model.keras")
    embed_card(folder / "model.keras", card)
    dataclasses.replace(card, threshold=0.3).save(folder / CARD_FILE)  # a foreign card beside it
    with pytest.raises(ModelCardError, match=r"model.keras: the model card inside it and .*model_card.json beside "
                                             r"it differ \(fields \['threshold'\]\)"):
        load_model_card(folder / "model.keras")
    card.save(folder / CARD_FILE)
    assert load_model_card(folder / "model.keras") == card


def test_upgrade_reads_band_dtype_as_tfseg_reads_the_scenes(tmp_path, capsys):
    """Old runs recorded the training file's dtype (float64); tfseg reads it as float32, so the
    upgraded card says float32 and accepts its own training scene; a mismatch names both the
    stored dtype and the one it is read as."""
    from tfseg.data.raster import open_raster
    from tfseg.inference import RasterSource

    old = save_legacy_run(conv_model(), tmp_path / "old", config=CONFIG)
    (old / "export" / "assets").mkdir(parents=True)
    (old / "export" / "assets" / "tfseg_metadata.json").write_text(json.dumps({"band_dtype": "float64"}))
    assert card_main(["upgrade", str(old), "--nodata", "none"]) == 0
    card = load_model_card(old)
    assert card.band_dtype == "float32" and card.nodata is None
    scene = write_geotiff(tmp_path / "f64.tif", np.random.default_rng(0).random((3, 16, 16)) * 200)
    assert open_raster(scene).dtype == "float64"
    predictor = load_predictor(old)
    predictor.check_source(RasterSource(open_raster(scene)))  # accepted
    other = dataclasses.replace(card, band_dtype="uint16", nodata=0.0)
    with pytest.raises(ModelCardError, match=r"f64.tif: the scene's pixels are stored as float64 and read as "
                                             r"float32 but the model was trained on uint16"):
        other.check_scene("f64.tif", 3, np.float32, None, stored_dtype="float64")


def test_upgrade_cli_errors_name_the_option_and_the_run(tmp_path, capsys):
    old = save_legacy_run(conv_model(), tmp_path / "old", config=CONFIG)
    assert card_main(["upgrade", str(old), "--band-dtype", "foo", "--nodata", "0"]) == 2
    assert "--band-dtype: expected a numeric dtype name" in capsys.readouterr().err
    assert card_main(["upgrade", str(old), "--nodata", "abc"]) == 2
    assert "--nodata 'abc': expected a finite number" in capsys.readouterr().err
    assert card_main(["upgrade", str(old), "--band-dtype", "uint8", "--nodata", "-1"]) == 2
    err = capsys.readouterr().err
    assert str(old) in err and "nodata -1.0" in err and "uint8" in err
    assert not (old / CARD_FILE).exists() and not (old / "model.pre-card.keras").exists()  # nothing written
