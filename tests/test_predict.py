"""Whole-scene prediction: sliding window vs one piece, streaming GeoTIFF outputs, polygons,
nodata, TTA, SavedModel path, chip folders and the bad-input cases of the issue."""
import json

import numpy as np
import pytest
import rasterio
from shapely.geometry import box, shape

from tests.data.fixtures import write_geotiff
from tests.infer_support import building_scene, conv_model, keras_predictor, oracle_model, save_run
from tfseg import predict
from tfseg.data.raster import open_raster
from tfseg.inference import (
    ArraySink,
    Job,
    RasterSource,
    load_predictor,
    positions,
    predict_array,
    predict_whole,
    ramp_profile,
    run_sliding_window,
)
from tfseg.models import build_model
from tfseg.scoring import score_spacenet

@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("oracle")
    return save_run(oracle_model(), run, config="data:\n  classes: [building]\n  window_size: 64\ntrain:\n  threshold: 0.5\n")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 300x400 UTM scene with three bright buildings and a nodata corner."""
    image, mask = building_scene()
    image[:, 260:, 330:] = 0  # nodata corner (value 0 in every band)
    path = write_geotiff(tmp_path_factory.mktemp("scene") / "scene.tif", image, nodata=0)
    return path, mask


def test_blend_weights_partition_of_unity():
    tile, stride, margin = 64, 48, 4
    a = ramp_profile(tile, 0, tile - stride, margin)
    b = ramp_profile(tile, tile - stride, 0, margin)
    overlap = a[stride:] + b[: tile - stride]
    np.testing.assert_allclose(overlap, 1.0, atol=1e-12)
    assert a[-margin:].max() == 0 and b[:margin].max() == 0 and a[0] == 1
    assert positions(300, 64, 48, 4) == [0, 48, 96, 144, 192, 236]


def test_conv_model_sliding_equals_one_piece():
    """A conv-only model (receptive field 5 px) is translation-equivariant, so with a zero-weight
    margin >= its half receptive field the blended windows reproduce the one-piece prediction."""
    predictor = keras_predictor(conv_model(), band_dtype="float32")
    rng = np.random.default_rng(0)
    image = rng.normal(100, 50, (150, 170, 3)).astype(np.float32)
    valid = np.ones((150, 170), bool)
    valid[:20, :30] = False
    tiled, out_valid = predict_array(predictor, image, valid, tile_size=64, overlap=32, batch_size=3)
    whole = predict_whole(predictor, image, valid)
    assert np.array_equal(out_valid, valid)
    assert np.abs(tiled - whole).max() < 1e-4


def test_unet_sliding_equals_one_piece_away_from_nodata(tmp_path, scene):
    """A depth-2 UNet (pooling grid 4, large receptive field) streamed from a GeoTIFF with
    strips of 16 rows agrees with the one-piece prediction to 1e-4 away from nodata, when the
    overlap (64) covers its effective receptive field. Tiles sit on the pooling grid, so the
    check measures context truncation and blending only."""
    import keras

    keras.utils.set_random_seed(1)
    model = build_model("unet", input_shape=(None, None, 3), classes=1, depth=2, filters=4)
    predictor = keras_predictor(model)
    info = open_raster(scene[0])
    sink = ArraySink(info.height, info.width, 1)
    stats = run_sliding_window(predictor, [Job(RasterSource(info), sink, "scene")], tile_size=128, overlap=64,
                               batch_size=4, block_rows=16)
    assert stats["tiles"] == len(positions(300, 128, 64, 4)) * len(positions(400, 128, 64, 4))
    image = rasterio.open(scene[0]).read().transpose(1, 2, 0).astype(np.float32)
    valid = ~(image == 0).all(-1)
    whole = predict_whole(predictor, image, valid)
    assert np.array_equal(sink.valid, valid)
    away = valid.copy()
    away[240:, 310:] = False  # 20 px around the nodata corner
    assert np.abs(sink.probs - whole)[away].max() < 1e-4


def test_predict_scene_outputs_overlay_input(tmp_path, oracle_run, scene):
    out = tmp_path / "out"
    assert predict.main(["--model", str(oracle_run), "--input", str(scene[0]), "--output", str(out), "--tile-size", "64",
                         "--overlap", "16", "--batch-size", "4", "--spacenet-csv", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tiles"] > 4 and summary["km2"] == pytest.approx(300 * 400 * 0.25 / 1e6)
    src = rasterio.open(scene[0])
    with rasterio.open(out / "scene_prob.tif") as prob, rasterio.open(out / "scene_class.tif") as cls:
        for ds in (prob, cls):
            assert ds.crs == src.crs and ds.transform == src.transform and ds.shape == src.shape
            assert ds.profile["tiled"] and ds.profile["compress"] == "deflate"
        p, c = prob.read(1), cls.read(1)
    # nodata in the input is nodata in the outputs
    assert np.isnan(p[260:, 330:]).all() and (c[260:, 330:] == 255).all()
    assert not np.isnan(p[:260]).any() and set(np.unique(c[:260])) == {0, 1}
    # the oracle's probabilities, through the float16 file encoding
    expected = 1 / (1 + np.exp(-8 * (src.read().astype(np.float32).mean(0) - 100) / 50))
    assert np.abs(p[:260] - expected[:260]).max() < 2e-3
    # GeoJSON overlays the input: same CRS, polygons inside the scene bounds, matching the boxes
    doc = json.loads((out / "scene_polygons.geojson").read_text())
    assert doc["crs"]["properties"]["name"].endswith("32636")
    polys = [shape(f["geometry"]) for f in doc["features"]]
    assert len(polys) == 3
    bounds = box(*src.bounds)
    assert all(bounds.contains(p) for p in polys)
    t = src.transform
    expected_first = box(t.c + 30 * t.a, t.f + 80 * t.e, t.c + 90 * t.a, t.f + 20 * t.e)
    assert max(p.intersection(expected_first).area / p.union(expected_first).area for p in polys) > 0.95
    # the SpaceNet CSV of the same objects scores F1 = 1 against boxes written as truth
    truth = tmp_path / "truth.csv"
    rows = ["ImageId,BuildingId,PolygonWKT_Pix"] + [
        f'scene,{i},"{box(c0, r0, c1, r1).wkt}"' for i, (r0, c0, r1, c1) in
        enumerate(((20, 30, 80, 90), (150, 200, 230, 260), (240, 10, 290, 70)))]
    truth.write_text("\n".join(rows) + "\n")
    assert score_spacenet(truth, out / "proposals.csv")["overall"]["F1Score"] == 1.0
    assert (out / "scene_overlay.png").stat().st_size > 0


def test_epsg4326_polygons_and_uint8_probabilities(tmp_path, oracle_run, scene):
    out = tmp_path / "out"
    summary = predict.predict_scenes(oracle_run, [scene[0]], out, predict.PredictOptions(
        tile_size=64, overlap=16, probabilities="uint8", epsg4326=True, overlay=False, progress=False))
    doc = json.loads((out / "scene_polygons.geojson").read_text())
    assert "crs" not in doc  # RFC 7946 default: WGS84 lon/lat
    from rasterio.warp import transform_bounds

    west, south, east, north = transform_bounds(rasterio.open(scene[0]).crs, "EPSG:4326", *rasterio.open(scene[0]).bounds)
    for feat in doc["features"]:
        minx, miny, maxx, maxy = shape(feat["geometry"]).bounds
        assert west <= minx and maxx <= east and south <= miny and maxy <= north
    with rasterio.open(out / "scene_prob.tif") as prob:
        assert prob.dtypes[0] == "uint8" and prob.nodata == 255
        assert (prob.read(1)[260:, 330:] == 255).all() and prob.read(1)[:260].max() <= 254
    assert summary["scenes"][0]["num_polygons"] == 3


def test_tta_and_savedmodel_paths_agree(tmp_path, oracle_run):
    """TTA views of an equivariant model change nothing; the exported SavedModel gives the
    same probabilities as the Keras run."""
    from tfseg.export import export_saved_model, load_run_model

    image, _ = building_scene(96, 80, boxes=((10, 10, 50, 40),))
    image = image.transpose(1, 2, 0)
    keras_pred = load_predictor(oracle_run)
    assert keras_pred.threshold == 0.5 and keras_pred.classes == ["building"] and keras_pred.tile_size == 64
    base, _ = predict_array(keras_pred, image, tile_size=64, overlap=16)
    tta8, _ = predict_array(keras_pred, image, tile_size=64, overlap=16, tta=8)
    np.testing.assert_allclose(tta8, base, atol=1e-5)
    model, card = load_run_model(oracle_run)
    export_saved_model(model, tmp_path / "export", card)
    saved = load_predictor(tmp_path / "export")
    assert saved.num_bands == 3 and saved.num_classes == 1 and saved.tile_size == 64
    via_saved, _ = predict_array(saved, image, tile_size=64, overlap=16)
    np.testing.assert_allclose(via_saved, base, atol=1e-5)


def test_folder_of_chips_predicted_in_batches(tmp_path, oracle_run):
    chips = tmp_path / "chips"
    for i in range(5):
        image, _ = building_scene(48, 48, boxes=((10, 10, 30, 30 + i),), seed=i)
        write_geotiff(chips / f"RGB_AOI_1_Test_img{i}.tif", image)
    image, _ = building_scene(48, 48, boxes=(), seed=9)
    write_geotiff(chips / "RGB_AOI_1_Test_img9.tif", image)
    out = tmp_path / "out"
    assert predict.main(["--model", str(oracle_run), "--input", str(chips), "--output", str(out), "--batch-size", "4",
                         "--spacenet-csv", "--no-overlay", "--quiet", "--json"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_scenes"] == 6 and summary["tiles"] == 6 and summary["tile"] == [48, 48]
    rows = (out / "proposals.csv").read_text().splitlines()
    assert rows[0] == "ImageId,BuildingId,PolygonWKT_Pix,Confidence"
    assert sum(r.startswith("AOI_1_Test_img") for r in rows) == 6
    assert "AOI_1_Test_img9,-1,POLYGON EMPTY,1.0" in rows


def test_band_count_mismatch_names_both(tmp_path, oracle_run):
    image = np.full((4, 64, 64), 100, np.uint16)
    path = write_geotiff(tmp_path / "four_bands.tif", image)
    with pytest.raises(ValueError, match=r"four_bands.tif.*4 band.*3 band"):
        predict.predict_scenes(oracle_run, [path], tmp_path / "out", predict.PredictOptions(progress=False))
    # a scene failure is reported (summary.json, exit code 1) after the other scenes ran
    assert predict.main(["--model", str(oracle_run), "--input", str(path), "--output", str(tmp_path / "o2")]) == 1
    failures = json.loads((tmp_path / "o2" / "summary.json").read_text())["failures"]
    assert [f["input"] for f in failures] == [str(path)] and "4 band(s)" in failures[0]["error"]


def test_not_georeferenced_input_warns_and_uses_pixels(tmp_path, oracle_run):
    image, _ = building_scene(64, 64, boxes=((10, 10, 40, 40),))
    path = write_geotiff(tmp_path / "plain.tif", image, georeferenced=False)
    with pytest.warns(UserWarning, match="not georeferenced"):
        summary = predict.predict_scenes(oracle_run, [path], tmp_path / "out",
                                         predict.PredictOptions(progress=False, overlay=False))
    doc = json.loads((tmp_path / "out" / "plain_polygons.geojson").read_text())
    assert doc["crs"]["properties"]["name"] == "pixel"
    poly = shape(doc["features"][0]["geometry"])
    assert poly.symmetric_difference(box(10, 10, 40, 40)).area < 1e-6  # pixel coordinates
    assert summary["km2"] is None


def test_output_not_writable(tmp_path, oracle_run, scene):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(predict.OutputError, match="a_file"):
        predict.predict_scenes(oracle_run, [scene[0]], blocker / "out", predict.PredictOptions(progress=False))


def test_bad_model_and_input_paths(tmp_path, scene):
    with pytest.raises(ValueError, match="nothing_here"):
        load_predictor(tmp_path / "nothing_here")
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        predict.expand_inputs([str(tmp_path / "missing.tif")])


def test_multiclass_probabilities_and_classes(tmp_path):
    import keras

    keras.utils.set_random_seed(2)
    model = build_model("unet", input_shape=(None, None, 3), classes=3, depth=2, filters=4)
    run = save_run(model, tmp_path / "run", config="data:\n  classes: [a, b, c]\n  palette: {b: '#00ff00'}\n")
    image, _ = building_scene(70, 90)
    path = write_geotiff(tmp_path / "s.tif", image)
    summary = predict.predict_scenes(run, [path], tmp_path / "out", predict.PredictOptions(
        tile_size=32, overlap=8, progress=False, polygons=True))
    with rasterio.open(tmp_path / "out" / "s_prob.tif") as prob, rasterio.open(tmp_path / "out" / "s_class.tif") as cls:
        p, c = prob.read(), cls.read(1)
        assert prob.count == 3 and cls.colormap(1)[1][:3] == (0, 255, 0)
    np.testing.assert_allclose(p.sum(0), 1.0, atol=3e-3)
    top2 = np.sort(p, axis=0)[-2:]
    clear = top2[1] - top2[0] > 3e-3  # the file stores half floats: near-ties may flip
    np.testing.assert_array_equal(c[clear], np.argmax(p, axis=0)[clear])
    assert set(summary["scenes"][0]["class_fractions"]) == {"a", "b", "c"}


def test_cog_output_has_overviews(tmp_path, oracle_run):
    image, _ = building_scene(600, 700, boxes=((100, 100, 300, 400),))
    path = write_geotiff(tmp_path / "big.tif", image)
    predict.predict_scenes(oracle_run, [path], tmp_path / "out", predict.PredictOptions(
        tile_size=256, overlap=32, cog=True, overlay=False, polygons=False, progress=False))
    for name in ("big_prob.tif", "big_class.tif"):
        with rasterio.open(tmp_path / "out" / name) as ds:
            assert ds.overviews(1) and ds.profile["tiled"] and ds.crs.to_epsg() == 32636
    assert not list((tmp_path / "out").glob("*.tmp.tif"))


# ------------------------------------------------------------------------------------------
# Georeferencing kept, option checks before any scene is predicted
# ------------------------------------------------------------------------------------------
def card_predictor(classes=("a", "b", "c"), task="multiclass"):
    """A Predictor of a model card alone (nothing is predicted by the checks that use it)."""
    from tfseg.data.raster import Normalization
    from tfseg.inference import Predictor
    from tfseg.model_card import ModelCard

    norm = Normalization("meanstd", [100.0] * 3, [50.0] * 3, [0.0] * 3, [255.0] * 3)
    card = ModelCard(classes=list(classes), colours={c: "#ff0000" for c in classes}, task=task, threshold=0.5,
                     band_names=["b1", "b2", "b3"], band_dtype="uint16", num_bands=3, nodata=0.0, ignore_index=255,
                     normalization=norm, tile_size=64, recommended_overlap=16, size_multiple=1, model="card",
                     backbone="", operating_point=None)
    return Predictor(card, card.num_outputs, "card_model")


def test_transform_without_crs_and_ground_control_points_are_kept(tmp_path, oracle_run):
    from rasterio.control import GroundControlPoint

    image, _ = building_scene(64, 80, boxes=((10, 10, 40, 40),))
    local = rasterio.transform.from_origin(1000.0, 2000.0, 2.0, 2.0)
    corners = ((0, 0), (0, 80), (64, 0), (64, 80))
    gcps = [GroundControlPoint(r, c, 440000.0 + c / 2, 40512.0 - r / 2) for r, c in corners]
    profile = dict(driver="GTiff", width=80, height=64, count=3, dtype="uint16")
    plain, gcp_scene = tmp_path / "local.tif", tmp_path / "gcp.tif"
    with rasterio.open(plain, "w", transform=local, **profile) as dst:  # a transform, no CRS
        dst.write(image)
    with rasterio.open(gcp_scene, "w", gcps=gcps, crs=rasterio.crs.CRS.from_epsg(32636), **profile) as dst:
        dst.write(image)
    with pytest.warns(UserWarning) as caught:
        predict.predict_scenes(oracle_run, [plain, gcp_scene], tmp_path / "out",
                               predict.PredictOptions(progress=False, overlay=False))
    messages = [str(w.message) for w in caught]
    assert any("local.tif: not georeferenced (no CRS)" in m for m in messages)
    assert any("gcp.tif: georeferenced by ground control points" in m for m in messages)
    assert not any("gcp.tif: not georeferenced" in m for m in messages)
    for name in ("local_prob.tif", "local_class.tif"):
        with rasterio.open(tmp_path / "out" / name) as ds:
            assert ds.transform == local and ds.crs is None
    for name in ("gcp_prob.tif", "gcp_class.tif"):
        with rasterio.open(tmp_path / "out" / name) as ds:
            points, crs = ds.gcps
            assert crs.to_epsg() == 32636 and [(p.row, p.col, p.x, p.y) for p in points] == \
                [(p.row, p.col, p.x, p.y) for p in gcps]


def test_min_area_m2_on_a_scene_without_pixel_area_fails_before_predicting(tmp_path, oracle_run):
    from tfseg.postprocess import PixelAreaError

    image, _ = building_scene(64, 64, boxes=((10, 10, 40, 40),))
    good = write_geotiff(tmp_path / "utm.tif", image)
    plain = write_geotiff(tmp_path / "plain.tif", image, georeferenced=False)
    out = tmp_path / "out"
    with pytest.raises(PixelAreaError, match=r"--min-area-m2 50: scene .*plain.tif has no CRS"):
        predict.predict_scenes(oracle_run, [good, plain], out, predict.PredictOptions(
            progress=False, polygon_overrides={"min_area_m2": 50.0}))
    assert not list(out.glob("*.tif"))  # refused before the first scene was predicted
    # the model's operating point in m² is refused the same way, naming where it comes from
    local = 'LOCAL_CS["site",LOCAL_DATUM["x",0],UNIT["metre",1],AXIS["x",EAST],AXIS["y",NORTH]]'
    site = write_geotiff(tmp_path / "site.tif", image, crs=rasterio.crs.CRS.from_wkt(local))
    assert predict.main(["--model", str(oracle_run), "--input", str(site), "--output", str(out), "--quiet",
                         "--min-area-m2", "5"]) == 2
    # without an m² option such a scene works: km² and area_m2 unknown (null, never NaN)
    summary = predict.predict_scenes(oracle_run, [site], out, predict.PredictOptions(progress=False, overlay=False))
    assert summary["km2"] is None and summary["scenes"][0]["km2"] is None

    def no_nan(value):
        raise AssertionError(f"{value} in a JSON output")

    for name in ("site_polygons.geojson", "polygons.geojson", "summary.json"):
        doc = json.loads((out / name).read_text(), parse_constant=no_nan)
    doc = json.loads((out / "site_polygons.geojson").read_text())
    assert [f["properties"]["area_m2"] for f in doc["features"]] == [None]


def test_polygon_classes_are_checked_against_the_model(tmp_path, oracle_run, scene, capsys):
    out = tmp_path / "out"

    def refused(model, **options):
        with pytest.raises(predict.PredictOptionError) as error:
            predict.predict_scenes(model, [scene[0]], out, predict.PredictOptions(progress=False, **options))
        return str(error.value)

    assert "only class 1" in refused(oracle_run, polygon_classes=[2])
    assert "only class 1" in refused(oracle_run, polygon_classes=[0])
    multiclass = card_predictor()
    assert "0 <= class < 3" in refused(multiclass, polygon_classes=[3], polygons=True)
    assert "add --polygons" in refused(multiclass, polygon_classes=[2])  # multi-class: polygons are off by default
    assert "--no-polygons" in refused(multiclass, polygon_classes=[2], polygons=False)
    assert "twice" in refused(multiclass, polygon_classes=[1, 1], polygons=True)
    assert not out.exists() or not list(out.glob("*.tif"))
    assert predict.main(["--model", str(oracle_run), "--input", str(scene[0]), "--output", str(out), "--quiet",
                         "--polygon-classes", "2"]) == 2
    assert "--polygon-classes 2" in capsys.readouterr().err


def test_threshold_is_a_probability_and_not_for_multiclass_models(tmp_path, oracle_run, scene, capsys):
    for value in ("50", "-0.1", "nan"):
        assert predict.main(["--model", str(oracle_run), "--input", str(scene[0]), "--output", str(tmp_path / "o"),
                             "--quiet", "--threshold", value]) == 2
        assert f"--threshold {float(value)}: expected a probability in [0, 1]" in capsys.readouterr().err
    with pytest.raises(predict.PredictOptionError, match=r"--threshold 0.99: model card_model is multi-class.*argmax"):
        predict.predict_scenes(card_predictor(), [scene[0]], tmp_path / "o", predict.PredictOptions(
            progress=False, threshold=0.99))
    assert not list((tmp_path / "o").glob("*.tif"))
    # none is recorded for a multi-class model (its summary, its markers), and its resolved options
    # pass the check again (as a Beam worker checks them)
    resolved = predict.resolve_options(card_predictor(), predict.PredictOptions())
    assert resolved.threshold is None
    predict.validate_options(resolved, card_predictor())


def test_spacenet_csv_directory_is_checked_before_any_scene(tmp_path, oracle_run, scene):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = tmp_path / "out"
    with pytest.raises(predict.OutputError, match=r"--spacenet-csv .*a_file"):
        predict.predict_scenes(oracle_run, [scene[0]], out, predict.PredictOptions(
            progress=False, overlay=False, spacenet_csv=str(blocker / "csv" / "proposals.csv")))
    assert not out.exists() or not list(out.iterdir())
    # a missing folder is made, like --output's
    target = tmp_path / "results" / "proposals.csv"
    summary = predict.predict_scenes(oracle_run, [scene[0]], out, predict.PredictOptions(
        progress=False, overlay=False, spacenet_csv=str(target)))
    assert summary["spacenet_csv"] == str(target) and target.read_text().startswith("ImageId,")


def test_alpha_band_is_the_mask_and_older_four_band_models_still_read_it(tmp_path, oracle_run):
    """An RGBA scene is three image bands plus its valid mask: a 3-band model predicts it with
    the zero-alpha pixels as no data; a model trained on the alpha as a fourth band (before
    alpha bands were masks) gets it as that band, with a warning saying so."""
    from rasterio.transform import from_origin

    image, _ = building_scene(64, 64, boxes=((10, 10, 40, 40),))
    alpha = np.full((1, 64, 64), 65535, np.uint16)
    alpha[:, :, :16] = 0
    path = tmp_path / "rgba.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=4, dtype="uint16", crs="EPSG:32636",
                       transform=from_origin(440000.0, 40000.0, 0.5, 0.5), photometric="RGB", alpha="YES") as dst:
        dst.write(np.concatenate([image, alpha]))
    predict.predict_scenes(oracle_run, [path], tmp_path / "three", predict.PredictOptions(
        progress=False, overlay=False, polygons=False))
    with rasterio.open(tmp_path / "three" / "rgba_prob.tif") as src:
        probs = src.read(1, masked=True)
    assert probs.mask[:, :16].all() and not probs.mask[:, 16:].any()
    four = keras_predictor(conv_model(bands=4), bands=4)
    with pytest.warns(UserWarning, match=r"alpha band\(s\) \[4\]"):
        summary = predict.predict_scenes(four, [path], tmp_path / "four", predict.PredictOptions(
            progress=False, overlay=False, polygons=False))
    assert not summary["failures"]
