"""evaluate pixels (pairing by stem, binary/multi-class metrics, any image size) and the
training-time object-F1 callback."""
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.data.fixtures import SHARED_DATA as SHARED
from tests.data.fixtures import write_geotiff
from tests.infer_support import building_scene, keras_predictor, oracle_model, save_run
from tfseg import evaluate


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    return save_run(oracle_model(), tmp_path_factory.mktemp("oracle"), config="data:\n  classes: [building]\n")


@pytest.fixture()
def chips(tmp_path):
    """Kampala-like layout: images/NAME.tif with masks/NAME.mask.tif ({0,1}) of varied sizes,
    plus one {0,255} mask; the masks are exactly what the oracle model predicts."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    sizes = [(64, 64), (90, 130), (33, 47)]
    truth = []
    for i, (h, w) in enumerate(sizes):
        image, mask = building_scene(h, w, boxes=((5, 5, 25, 30), (40, 60, 80, 120)), seed=i)
        write_geotiff(images / f"OAM-{i}.tif", image)
        write_geotiff(masks / f"OAM-{i}.mask.tif", mask * (255 if i == 2 else 1))
        truth.append(mask)
    return images, masks, truth


def test_pixels_binary_perfect_and_json_keys(chips, oracle_run, capsys):
    images, masks, _ = chips
    assert evaluate.main(["pixels", "--model", str(oracle_run), "--images", str(images), "--masks", str(masks),
                          "--tile-size", "32", "--overlap", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"iou", "f1", "precision", "recall", "accuracy", "miou", "num_images", "threshold"}
    assert result["num_images"] == 3
    assert result["iou"] == 1.0 and result["f1"] == 1.0


def test_pixels_binary_counts_errors(chips, oracle_run):
    images, masks, truth = chips
    wrong = truth[0].copy()
    wrong[:, :5] = 1  # 64*5 = 320 false negatives for the model (it predicts background there)
    write_geotiff(masks / "OAM-0.mask.tif", wrong)
    result = evaluate.evaluate_pixels(oracle_run, sorted(images.iterdir()), sorted(masks.iterdir()), tile_size=32,
                                      overlap=8)
    tp = sum(int(m.sum()) for m in truth)
    fn = int(wrong.sum()) - int(truth[0].sum())
    assert result["recall"] == pytest.approx(tp / (tp + fn))
    assert result["precision"] == 1.0
    assert result["iou"] == pytest.approx(tp / (tp + fn))


def footprint_boundary_contact_oracle():
    """The oracle's footprint channel beside boundary/contact channels that are never on: a
    building model with instance targets (multi-label footprint/boundary/contact outputs)."""
    import keras

    inputs = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(3, 1, activation="sigmoid")
    model = keras.Model(inputs, conv(inputs))
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    kernel[..., 0] = 8.0 / 3
    conv.set_weights([kernel, np.array([0.0, -8.0, -8.0], np.float32)])
    return keras_predictor(model, classes=["footprint", "boundary", "contact"], task="multilabel")


def test_pixels_of_a_footprint_boundary_contact_model_score_its_footprint(chips):
    # a building model: its footprint channel scored against the footprint masks, as a binary model
    images, masks, truth = chips
    wrong = truth[0].copy()
    wrong[:, :5] = 1  # 64*5 = 320 false negatives for the model (it predicts background there)
    write_geotiff(masks / "OAM-0.mask.tif", wrong)
    predictor = footprint_boundary_contact_oracle()
    assert predictor.instance_bands() == {"footprint": 1, "boundary": 2, "contact": 3}
    result = evaluate.evaluate_pixels(predictor, sorted(images.iterdir()), sorted(masks.iterdir()), tile_size=32,
                                      overlap=8)
    tp = sum(int(m.sum()) for m in truth)
    fn = int(wrong.sum()) - int(truth[0].sum())
    assert set(result) == {"iou", "f1", "precision", "recall", "accuracy", "miou", "num_images", "threshold"}
    assert result["recall"] == pytest.approx(tp / (tp + fn)) and result["precision"] == 1.0
    assert result["iou"] == pytest.approx(tp / (tp + fn)) and result["threshold"] == 0.5


def test_cli_starts_without_tensorflow_notices():
    """The module imports keras (so TensorFlow) at load: it must go through tfseg._tf first, or
    TensorFlow's C++ start-up notices (CUDA stubs) land on stderr before any subcommand runs."""
    proc = subprocess.run([sys.executable, "-m", "tfseg.evaluate", "polygons", "--help"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "--truth" in proc.stdout
    assert proc.stderr == ""


def test_missing_mask_names_image(chips, oracle_run, tmp_path):
    images, masks, _ = chips
    (masks / "OAM-1.mask.tif").unlink()
    with pytest.raises(evaluate.MaskFolderError, match="OAM-1.tif"):
        evaluate.evaluate_pixels(oracle_run, sorted(images.iterdir()), sorted(masks.iterdir()))
    assert evaluate.main(["pixels", "--model", str(oracle_run), "--images", str(images), "--masks",
                          str(masks / "*.tif")]) == 2


def bright_is_class_2_model():
    """A 3-class softmax model: class 2 where the pixel is bright, class 0 elsewhere, never 1."""
    import keras

    inputs = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(3, 1, activation="softmax")
    model = keras.Model(inputs, conv(inputs))
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    kernel[0, 0, :, 2] = 4.0
    conv.set_weights([kernel, np.array([0.0, -5.0, 0.0], np.float32)])
    return model


def test_pixels_multiclass_per_class(tmp_path):
    model = bright_is_class_2_model()
    run = save_run(model, tmp_path / "run", config="data:\n  classes: [land, road, building]\n")
    image, mask = building_scene(40, 50, boxes=((5, 5, 20, 20),))
    write_geotiff(tmp_path / "i" / "a.tif", image)
    truth = (mask * 2).astype(np.uint8)
    truth[30:, :] = 1  # 'road' rows the model misses (predicts land)
    write_geotiff(tmp_path / "m" / "a_mask.tif", truth)
    result = evaluate.evaluate_pixels(run, [tmp_path / "i" / "a.tif"], [tmp_path / "m" / "a_mask.tif"], tile_size=32,
                                      overlap=8)
    assert set(result["per_class"]) == {"land", "road", "building"}
    assert result["per_class"]["building"]["iou"] == 1.0 and result["per_class"]["road"]["iou"] == 0.0
    land = result["per_class"]["land"]
    assert land["precision"] == pytest.approx((40 * 50 - 225 - 500) / (40 * 50 - 225))
    assert result["miou"] == pytest.approx(np.mean([land["iou"], 0.0, 1.0]))


def test_pixels_threshold_is_a_probability_and_not_for_multiclass_models(chips, oracle_run, tmp_path, capsys):
    from tfseg.errors import TfsegError

    images, masks, _ = chips
    assert evaluate.main(["pixels", "--model", str(oracle_run), "--images", str(images), "--masks", str(masks),
                          "--threshold", "50"]) == 2
    assert "--threshold 50.0: expected a probability in [0, 1]" in capsys.readouterr().err
    run = save_run(bright_is_class_2_model(), tmp_path / "run", config="data:\n  classes: [land, road, building]\n")
    image, mask = building_scene(40, 50, boxes=((5, 5, 20, 20),))
    write_geotiff(tmp_path / "i" / "a.tif", image)
    write_geotiff(tmp_path / "m" / "a_mask.tif", (mask * 2).astype(np.uint8))
    with pytest.raises(TfsegError, match=r"--threshold 0.99: model .*run is multi-class.*argmax"):
        evaluate.evaluate_pixels(run, [tmp_path / "i" / "a.tif"], [tmp_path / "m" / "a_mask.tif"], threshold=0.99)


def test_minimum_area_in_m2_on_a_scene_without_pixel_area_is_an_error():
    from shapely.geometry import box

    from tfseg.object_metrics import SceneTruth, kept_records
    from tfseg.postprocess import PixelAreaError, PolygonRecord

    truth = SceneTruth("chip_3", [box(0, 0, 10, 10)], np.zeros((20, 20), bool), pixel_area=None)
    records = [PolygonRecord(box(0, 0, 10, 10))]
    with pytest.raises(PixelAreaError, match="min_area_m2 5.0: scene chip_3"):
        kept_records(truth, records, min_area_m2=5.0)
    assert kept_records(SceneTruth("utm", truth.polygons, truth.ignore, 0.25), records, min_area_m2=5.0) == records


def _scene(tmp_path, name, image, mask):
    from tfseg.data.labels import MaskLabels, binary_mask_lookup
    from tfseg.data.raster import open_raster
    from tfseg.data.sources import Scene

    info = open_raster(write_geotiff(tmp_path / f"{name}.tif", image))
    labels = MaskLabels(open_raster(write_geotiff(tmp_path / f"{name}.mask.tif", mask)), binary_mask_lookup(np.unique(mask)))
    return Scene(info, labels, name)


def test_object_f1_callback_logs(oracle_run, tmp_path):
    """The training callback computes object F1 on the whole validation scenes and writes it into the logs."""
    from tfseg.export import load_run_model
    from tfseg.object_metrics import ObjectF1Callback

    model, card = load_run_model(oracle_run)
    scenes = []
    for seed in range(4):
        image, mask = building_scene(64, 64, boxes=((5, 5, 25, 30), (40, 30, 60, 60)), seed=seed)
        if seed == 3:
            mask[40:60, 30:60] = 0  # one truth building removed: the prediction is a false positive
            mask[:2] = 255  # ignored rows
        scenes.append(_scene(tmp_path, f"s{seed}", image, mask))
    callback = ObjectF1Callback(scenes, card, threshold=0.5, tile_size=32, overlap=8)
    callback.set_model(model)
    logs = {"val_iou": 0.5}
    callback.on_epoch_end(0, logs)
    # 8 predicted buildings, 7 true: TP 7, FP 1, FN 0
    assert logs["val_object_precision"] == pytest.approx(7 / 8)
    assert logs["val_object_recall"] == 1.0
    assert logs["val_object_f1"] == pytest.approx(2 * (7 / 8) / (1 + 7 / 8))


def test_object_f1_callback_of_a_footprint_boundary_contact_model_uses_the_footprint_threshold(tmp_path):
    """train.threshold is one value per channel for such a model: the objects are the footprint
    channel's at the footprint's threshold (the list is no threshold for one map)."""
    from tfseg.object_metrics import ObjectF1Callback

    predictor = footprint_boundary_contact_oracle()
    scenes = []
    for seed in range(2):
        image, mask = building_scene(64, 64, boxes=((5, 5, 25, 30), (40, 30, 60, 60)), seed=seed)
        if seed == 1:
            mask[40:60, 30:60] = 0  # one truth building removed: the prediction is a false positive
        scenes.append(_scene(tmp_path, f"s{seed}", image, mask))
    callback = ObjectF1Callback(scenes, predictor.card, threshold=[0.5, 0.3, 0.3], tile_size=32, overlap=8)
    callback.set_model(predictor.model)
    logs = {}
    callback.on_epoch_end(0, logs)
    assert logs["val_object_precision"] == pytest.approx(3 / 4) and logs["val_object_recall"] == 1.0


def test_object_f1_callback_counts_an_object_in_a_tile_overlap_once(oracle_run, tmp_path):
    """Tiles 64 px wide at columns 0 and 32 (32 px overlap); the building at columns 38-58 lies in
    both. Scored per tile it is two true positives against two truths; stitched, one."""
    from rasterio.windows import Window

    from tfseg.export import load_run_model
    from tfseg.object_metrics import ObjectF1Callback, object_counts
    from tfseg.scoring import Counts

    model, card = load_run_model(oracle_run)
    image, mask = building_scene(64, 96, boxes=((20, 38, 44, 58),), seed=1)
    scene = _scene(tmp_path, "overlap", image, mask)
    per_tile = Counts()
    for col in (0, 32):
        window = Window(col, 0, 64, 64)
        raw = image[:, :, col : col + 64].transpose(1, 2, 0)  # raw pixels: the model normalizes them
        prob = np.asarray(model.predict_on_batch(raw[None]))[0, ..., 0]
        truth = scene.labels.rasterize(window, scene.info)
        per_tile.add(object_counts((prob >= 0.5).astype(np.uint8), (truth == 1).astype(np.uint8), prob))
    assert (per_tile.TruePos, per_tile.FalsePos, per_tile.FalseNeg) == (2, 0, 0)  # the old count: twice
    callback = ObjectF1Callback([scene], card, tile_size=64, overlap=32, prefix="stitched_")
    callback.set_model(model)
    logs = {}
    callback.on_epoch_end(0, logs)
    from tfseg.object_metrics import scene_truth, scenes_counts

    counts = scenes_counts(callback.predictor(), [scene], [scene_truth(scene)], 0.5, callback.options, 64, 32)
    assert (counts.TruePos, counts.FalsePos, counts.FalseNeg) == (1, 0, 0)
    assert logs["stitched_f1"] == 1.0


@pytest.mark.slow
def test_train_with_object_f1(tmp_path):
    """train.object_f1 attaches the callback (val_object_f1 reaches history.csv) and searches the
    operating point, which the model card carries (run dir, model.keras, SavedModel)."""
    from tests.data.fixtures import tiny_synthetic_overrides
    from tfseg import config as config_lib
    from tfseg.train import train

    cfg = config_lib.load(config_lib.DEFAULT_CONFIG, tiny_synthetic_overrides(tmp_path / "data") + ["train.object_f1=true",
                                                                                                "train.epochs=1"])
    result = train(cfg, tmp_path / "run", verbose=0)
    run = tmp_path / "run"
    header = (run / "history.csv").read_text().splitlines()[0]
    assert "val_object_f1" in header
    # the operating point searched on the stitched validation scenes, its table and picture
    from tfseg.model_card import embedded_card, load_model_card

    point = load_model_card(run).operating_point  # on the run's model card, and inside model.keras
    assert point == result["operating_point"] == json.loads((run / "metrics.json").read_text())["operating_point"]
    assert embedded_card(run / "model.keras").operating_point == point
    assert load_model_card(run / "export").operating_point == point  # and in the SavedModel
    assert load_model_card(run).threshold == point["threshold"]
    assert not (run / "operating_point.json").exists()  # the card is the one record of the choice
    assert point["searched_on"] == "validation" and point["instances"] in ("none", "watershed")
    assert len((run / "operating_point_search.csv").read_text().splitlines()) == 1 + point["grid_points"]
    assert (run / "objects.png").stat().st_size > 0
    assert set(result["val_objects"]) == {"default", "operating_point"}
    from tfseg.inference import load_predictor

    assert load_predictor(run).threshold == point["threshold"]


def test_pixels_on_real_kampala_chips(tmp_path, capsys):
    """Real mask-folder layout (OAM-x-y-z.tif + OAM-x-y-z.mask.tif, EPSG:4326 chips): pairing by
    stem and whole-chip sliding-window prediction run; the oracle's scores are just checked for
    consistency (F1 from precision and recall)."""
    root = SHARED
    images = root / "kampala_buildings" / "train" / "images"
    if not images.is_dir():
        pytest.skip("shared sample data (../shared/data/kampala_buildings) not available")
    # the chips are 8-bit RGB: an oracle whose card says uint8 (a uint16 one is refused)
    oracle_run = save_run(oracle_model(), tmp_path / "oracle8", config="data:\n  classes: [building]\n",
                          band_dtype="uint8")
    assert evaluate.main(["pixels", "--model", str(oracle_run), "--images", str(images / "OAM-1238448-10465[23]*.tif"),
                          "--masks", str(images.parent / "masks"), "--tile-size", "128", "--overlap", "32",
                          "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["num_images"] >= 2
    p, r = result["precision"], result["recall"]
    assert 0 <= result["iou"] <= 1 and result["f1"] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)


@pytest.mark.parametrize("mode", ["P", "RGB"])
def test_pixels_colour_masks_decoded_with_the_run_palette(tmp_path, mode):
    """Colour-coded masks (palette "P" PNGs included) go through the run's palette; a colour not in
    the palette (black) is ignored, not scored as class 0."""
    from PIL import Image

    model = bright_is_class_2_model()
    palette = {"land": "#8429F6", "road": "#6EC1E4", "building": "#3C1098"}
    config = "data:\n  classes: [land, road, building]\n  palette: {" + ", ".join(
        f"{k}: '{v}'" for k, v in palette.items()) + "}\n"
    run = save_run(model, tmp_path / "run", config=config)
    image, mask = building_scene(40, 50, boxes=((5, 5, 20, 20),))
    write_geotiff(tmp_path / "i" / "a.tif", image)
    labels = (mask * 2).astype(np.uint8)  # building where the model predicts building, else land
    labels[30:, :] = 3  # black, not in the palette: ignored
    colours = [(0x84, 0x29, 0xF6), (0x6E, 0xC1, 0xE4), (0x3C, 0x10, 0x98), (0, 0, 0)]
    (tmp_path / "m").mkdir()
    if mode == "P":  # palette order differs from the class order: indices are not class ids
        order = [3, 2, 0, 1]  # palette entry k holds colours[order[k]]
        png = Image.fromarray(np.argsort(order).astype(np.uint8)[labels], mode="P")
        png.putpalette([c for k in order for c in colours[k]])
    else:
        png = Image.fromarray(np.asarray(colours, np.uint8)[labels], mode="RGB")
    png.save(tmp_path / "m" / "a.png")
    result = evaluate.evaluate_pixels(run, [tmp_path / "i" / "a.tif"], [tmp_path / "m" / "a.png"], tile_size=32,
                                      overlap=8)
    assert result["per_class"]["building"]["iou"] == 1.0
    assert result["per_class"]["land"]["iou"] == 1.0  # the ignored black rows count for nothing


def test_binary_mask_nodata_tag_zero_does_not_hide_background(chips, oracle_run):
    """GDAL often tags {0,1} masks with nodata=0: 0 is still background, so false positives count."""
    images, masks, truth = chips
    for i, mask in enumerate(truth):  # background predicted as building must lower precision
        wrong = mask.copy()
        wrong[mask == 1] = 0
        wrong[0, 0] = 1
        write_geotiff(masks / f"OAM-{i}.mask.tif", wrong, nodata=0)
    result = evaluate.evaluate_pixels(oracle_run, sorted(images.iterdir()), sorted(masks.iterdir()))
    assert result["precision"] < 0.1
