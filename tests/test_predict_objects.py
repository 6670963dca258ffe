"""predict with instances, the model's operating point and the TP/FP/FN overlay."""
import json

import numpy as np
import pytest
from PIL import Image

from tests.data.fixtures import write_geojson, write_geotiff
from tests.infer_support import building_scene, oracle_model, save_run
from tfseg import predict
from tfseg.data.raster import open_raster
from tfseg.model_card import load_model_card


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("oracle")
    return save_run(oracle_model(), run, config="data:\n  classes: [building]\n  window_size: 64\ntrain:\n  threshold: 0.5\n")


@pytest.fixture(scope="module")
def touching(tmp_path_factory):
    """Two touching bright buildings (a neck of 14 px) and a lone one on a 96x96 UTM scene."""
    folder = tmp_path_factory.mktemp("touching")
    image, mask = building_scene(96, 96, boxes=((10, 10, 30, 30), (16, 30, 36, 50), (60, 60, 85, 85)), seed=3)
    return write_geotiff(folder / "touch.tif", image), mask


def polygons(out, stem="touch"):
    return json.loads((out / f"{stem}_polygons.geojson").read_text())["features"]


def test_watershed_by_default_for_binary_models(tmp_path, oracle_run, touching):
    path, _ = touching
    summary = predict.predict_scenes(oracle_run, [path], tmp_path / "ws", predict.PredictOptions(
        tile_size=64, overlap=16, progress=False, overlay=False))
    assert summary["polygon_options"]["instances"] == "watershed"
    assert len(polygons(tmp_path / "ws")) == 3
    assert predict.main(["--model", str(oracle_run), "--input", str(path), "--output", str(tmp_path / "none"),
                         "--instances", "none", "--quiet", "--no-overlay", "--tile-size", "64"]) == 0
    assert len(polygons(tmp_path / "none")) == 2  # the touching pair is one blob


def test_operating_point_in_the_run_is_used_unless_overridden(tmp_path, oracle_run, touching):
    import shutil

    path, _ = touching
    run = tmp_path / "run"
    shutil.copytree(oracle_run, run)
    point = {"threshold": 0.7, "min_area_px": 500.0, "opening_px": 0, "instances": "none", "object_f1": 0.9}
    card = load_model_card(run).with_operating_point(point)  # as training stores the chosen point
    card.save(run / "model_card.json")
    assert load_model_card(run).operating_point == point and load_model_card(run).threshold == 0.7
    summary = predict.predict_scenes(run, [path], tmp_path / "op", predict.PredictOptions(
        tile_size=64, overlap=16, progress=False, overlay=False))
    assert summary["threshold"] == 0.7 and summary["operating_point"] == point
    assert summary["polygon_options"]["min_area_px"] == 500.0 and summary["polygon_options"]["instances"] == "none"
    assert len(polygons(tmp_path / "op")) == 2  # the merged pair (~800 px) and the lone one (625 px)
    assert predict.main(["--model", str(run), "--input", str(path), "--output", str(tmp_path / "cli"), "--quiet",
                         "--no-overlay", "--tile-size", "64", "--min-area", "650", "--instances", "watershed",
                         "--json"]) == 0
    assert len(polygons(tmp_path / "cli")) == 0  # every building is below 650 px² once split


def _overlay_run(tmp_path, oracle_run, path, boxes) -> tuple:
    """``predict --overlay --truth`` on ``path`` against truth ``boxes`` (pixel row/col boxes);
    the output folder and its summary."""
    from tests.data.fixtures import pixel_box_to_world

    info = open_raster(path)
    truth = write_geojson(tmp_path / "truth.geojson", [pixel_box_to_world(*b, info.affine) for b in boxes])
    out = tmp_path / "overlay"
    assert predict.main(["--model", str(oracle_run), "--input", str(path), "--output", str(out), "--quiet",
                         "--tile-size", "64", "--overlay", "--truth", str(truth)]) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_overlay_outlines_true_false_positives_and_misses(tmp_path, oracle_run, touching):
    path, _ = touching
    # truth: the two touching buildings, and a building the model cannot see; the lone bright
    # building is not in the truth (a false positive)
    boxes = [(10, 10, 30, 30), (30, 16, 50, 36), (40, 70, 55, 90)]
    out, summary = _overlay_run(tmp_path, oracle_run, path, boxes)
    assert summary["scenes"][0]["objects"] == {"tp": 2, "fp": 1, "fn": 1}
    pixels = np.asarray(Image.open(out / "touch_overlay.png").convert("RGB")).reshape(-1, 3)
    colours = {tuple(c) for c in np.unique(pixels, axis=0)}
    assert {(0, 200, 0), (230, 20, 20), (30, 110, 255)} <= colours


def test_overlay_counts_drop_what_the_spacenet_scorer_drops(tmp_path, oracle_run, touching):
    """Truth slivers < 20 px² (and proposals <= 20 px²) are not counted, as `evaluate spacenet`
    does not count them."""
    path, _ = touching
    boxes = [(10, 10, 30, 30), (30, 16, 50, 36), (40, 70, 55, 90), (80, 2, 84, 6)]  # + a 16 px² sliver
    _, summary = _overlay_run(tmp_path, oracle_run, path, boxes)
    assert summary["scenes"][0]["objects"] == {"tp": 2, "fp": 1, "fn": 1}


def test_instances_watershed_needs_a_building_model(tmp_path, touching, capsys):
    from tfseg.models import build_model

    model = build_model("unet", input_shape=(None, None, 3), classes=3, depth=2, filters=4)
    run = save_run(model, tmp_path / "run", config="data:\n  classes: [a, b, c]\n")
    path, _ = touching
    assert predict.main(["--model", str(run), "--input", str(path), "--output", str(tmp_path / "out"), "--quiet",
                         "--instances", "watershed"]) == 2
    err = capsys.readouterr().err
    assert "--instances watershed needs a binary building model" in err and "['a', 'b', 'c']" in err


def test_marker_fingerprint_holds_the_resolved_options_and_the_operating_point(tmp_path, oracle_run, touching):
    import pickle
    import shutil

    from tfseg.inference import load_predictor

    path, _ = touching
    run = tmp_path / "run"
    shutil.copytree(oracle_run, run)
    options = predict.PredictOptions(tile_size=64, overlap=16, progress=False, overlay=False)
    out = tmp_path / "out"
    assert predict.predict_scenes(run, [path], out, options)["completed"] == 1
    marker = json.loads((out / "touch_done.json").read_text())
    assert marker["fingerprint"]["options"]["polygon"]["instances"] == "watershed"
    assert marker["fingerprint"]["options"]["threshold"] == 0.5
    assert predict.predict_scenes(run, [path], out, options)["skipped"] == 1
    # the Beam runner ships the resolved options to its workers: they pickle, and resolving again changes nothing
    resolved = predict.resolve_options(load_predictor(run), options)
    assert pickle.loads(pickle.dumps(resolved)) == resolved
    assert predict.resolve_options(load_predictor(run), resolved) == resolved
    # another operating point on the card: the scene is redone with it
    point = {"threshold": 0.7, "min_area_px": 500.0, "opening_px": 0, "instances": "none", "object_f1": 0.9}
    load_model_card(run).with_operating_point(point).save(run / "model_card.json")
    summary = predict.predict_scenes(run, [path], out, options)
    assert summary["completed"] == 1 and summary["polygon_options"]["instances"] == "none"
    assert json.loads((out / "touch_done.json").read_text())["fingerprint"]["options"]["threshold"] == 0.7


def test_beam_launcher_refuses_watershed_on_a_multiclass_model_before_the_pipeline(tmp_path, touching):
    pytest.importorskip("apache_beam")
    from tfseg.models import build_model
    from tfseg.predict_beam import run_beam

    model = build_model("unet", input_shape=(None, None, 3), classes=3, depth=2, filters=4)
    run = save_run(model, tmp_path / "run", config="data:\n  classes: [a, b, c]\n")
    path, _ = touching
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"--instances watershed needs a binary building model"):
        run_beam(run, [path], out, predict.PredictOptions(instances="watershed", progress=False))
    assert not (out / "beam.log").exists() and not list(out.glob("touch_*"))  # no pipeline, no scene started


def test_truth_needs_the_overlay_and_an_existing_file(tmp_path, oracle_run, touching):
    path, _ = touching
    options = predict.PredictOptions(tile_size=64, progress=False, overlay=False, truth=str(tmp_path / "t.geojson"))
    with pytest.raises(FileNotFoundError, match="--truth .*t.geojson: file not found"):
        predict.predict_scenes(oracle_run, [path], tmp_path / "out", options)
    (tmp_path / "t.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(ValueError, match="do not combine --truth with --no-overlay"):
        predict.predict_scenes(oracle_run, [path], tmp_path / "out", options)


def test_footprint_boundary_contact_model_splits_objects_at_its_predicted_boundary(tmp_path):
    """A multi-label footprint/boundary/contact model is a building model: its polygons are the
    footprint channel's (one class map, not three classes), split by watershed on the markers of
    its boundary channel. Band 3 of the scene carries a line between two buildings that touch
    along a whole side (one rectangle): only the boundary channel sees it."""
    import keras
    import rasterio

    image, _ = building_scene(64, 96, boxes=((10, 10, 40, 40), (10, 40, 40, 70)), seed=5)
    image[2] = 40
    image[2, 10:40, 39:41] = 220  # the line between the two
    path = write_geotiff(tmp_path / "pair.tif", image)
    inputs = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(3, 1, activation="sigmoid")
    model = keras.Model(inputs, conv(inputs))
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    kernel[0, 0, :2, 0] = 2.0  # footprint: bright bands 1-2
    kernel[0, 0, 2, 1] = 4.0  # boundary: bright band 3
    conv.set_weights([kernel, np.array([0.0, -2.0, -8.0], np.float32)])
    run = save_run(model, tmp_path / "fbc", config="data:\n  classes: [footprint, boundary, contact]\n"
                   "  task: multilabel\n  window_size: 64\n")
    summary = predict.predict_scenes(run, [path], tmp_path / "out", predict.PredictOptions(
        tile_size=64, overlap=16, progress=False, overlay=False))
    assert summary["polygon_options"]["instances"] == "watershed"
    fractions = summary["scenes"][0]["class_fractions"]
    assert set(fractions) == {"background", "footprint"}
    assert fractions["footprint"] == pytest.approx(30 * 60 / (64 * 96), abs=0.01)
    features = polygons(tmp_path / "out", "pair")
    assert len(features) == 2 and {f["properties"].get("class_name") for f in features} == {"footprint"}
    with rasterio.open(tmp_path / "out" / "pair_class.tif") as src:
        assert src.count == 1 and set(np.unique(src.read(1))) == {0, 1}  # the footprint map
    # the same footprint without the boundary channel is one object: the split came from the markers
    one = keras.layers.Conv2D(1, 1, activation="sigmoid")
    footprint_only = keras.Model(inputs, one(inputs))
    one.set_weights([kernel[..., :1], np.zeros(1, np.float32)])
    single = save_run(footprint_only, tmp_path / "fp", config="data:\n  classes: [building]\n  window_size: 64\n")
    predict.predict_scenes(single, [path], tmp_path / "single", predict.PredictOptions(
        tile_size=64, overlap=16, progress=False, overlay=False))
    assert len(polygons(tmp_path / "single", "pair")) == 1
