"""evaluate pixels (pairing by stem, binary/multi-class metrics, any image size) and the
training-time object-F1 callback."""
import json

import numpy as np
import pytest

from tests.infer_support import building_scene, oracle_model, save_run, write_tif
from tfseg import evaluate
from tests.data.fixtures import SHARED_DATA as SHARED


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
        write_tif(images / f"OAM-{i}.tif", image)
        write_tif(masks / f"OAM-{i}.mask.tif", mask * (255 if i == 2 else 1))
        truth.append(mask)
    return images, masks, truth


def test_pixels_binary_perfect_and_json_keys(chips, oracle_run, capsys):
    images, masks, _ = chips
    assert evaluate.main(["pixels", "--model", str(oracle_run), "--images", str(images), "--masks", str(masks),
                          "--tile-size", "32", "--overlap", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"iou", "f1", "precision", "recall", "accuracy", "miou", "num_images"}
    assert result["num_images"] == 3
    assert result["iou"] == 1.0 and result["f1"] == 1.0


def test_pixels_binary_counts_errors(chips, oracle_run):
    images, masks, truth = chips
    wrong = truth[0].copy()
    wrong[:, :5] = 1  # 64*5 = 320 false negatives for the model (it predicts background there)
    write_tif(masks / "OAM-0.mask.tif", wrong)
    result = evaluate.evaluate_pixels(oracle_run, sorted(images.iterdir()), sorted(masks.iterdir()), tile_size=32,
                                      overlap=8)
    tp = sum(int(m.sum()) for m in truth)
    fn = int(wrong.sum()) - int(truth[0].sum())
    assert result["recall"] == pytest.approx(tp / (tp + fn))
    assert result["precision"] == 1.0
    assert result["iou"] == pytest.approx(tp / (tp + fn))


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
    write_tif(tmp_path / "i" / "a.tif", image)
    truth = (mask * 2).astype(np.uint8)
    truth[30:, :] = 1  # 'road' rows the model misses (predicts land)
    write_tif(tmp_path / "m" / "a_mask.tif", truth)
    result = evaluate.evaluate_pixels(run, [tmp_path / "i" / "a.tif"], [tmp_path / "m" / "a_mask.tif"], tile_size=32,
                                      overlap=8)
    assert set(result["per_class"]) == {"land", "road", "building"}
    assert result["per_class"]["building"]["iou"] == 1.0 and result["per_class"]["road"]["iou"] == 0.0
    land = result["per_class"]["land"]
    assert land["precision"] == pytest.approx((40 * 50 - 225 - 500) / (40 * 50 - 225))
    assert result["miou"] == pytest.approx(np.mean([land["iou"], 0.0, 1.0]))


def test_object_f1_callback_logs(oracle_run):
    """The training callback computes object F1 on validation tiles and writes it into the logs."""
    import tensorflow as tf

    from tfseg.export import load_run_model
    from tfseg.object_metrics import ObjectF1Callback

    model, _ = load_run_model(oracle_run)
    tiles, labels = [], []
    for seed in range(4):
        image, mask = building_scene(64, 64, boxes=((5, 5, 25, 30), (40, 30, 60, 60)), seed=seed)
        tiles.append(image.transpose(1, 2, 0))  # raw uint16, as the pipeline emits them
        label = mask.astype(np.uint8)
        if seed == 3:
            label[40:60, 30:60] = 0  # one truth building removed: the prediction is a false positive
            label[:2] = 255  # ignored rows
        labels.append(label[..., None])
    ds = tf.data.Dataset.from_tensor_slices((np.stack(tiles), np.stack(labels))).batch(2)
    callback = ObjectF1Callback(ds, threshold=0.5)
    callback.set_model(model)
    logs = {"val_iou": 0.5}
    callback.on_epoch_end(0, logs)
    # 8 predicted buildings, 7 true: TP 7, FP 1, FN 0
    assert logs["val_object_precision"] == pytest.approx(7 / 8)
    assert logs["val_object_recall"] == 1.0
    assert logs["val_object_f1"] == pytest.approx(2 * (7 / 8) / (1 + 7 / 8))


@pytest.mark.slow
def test_train_with_object_f1(tmp_path):
    """train.object_f1 attaches the callback: val_object_f1 reaches history.csv."""
    from tests.data.fixtures import tiny_synthetic_overrides
    from tfseg import config as config_lib
    from tfseg.train import train

    cfg = config_lib.load(config_lib.DEFAULT_CONFIG, tiny_synthetic_overrides(tmp_path / "data") + ["train.object_f1=true",
                                                                                                "train.epochs=1",
                                                                                                "export.enabled=false"])
    train(cfg, tmp_path / "run", verbose=0)
    header = (tmp_path / "run" / "history.csv").read_text().splitlines()[0]
    assert "val_object_f1" in header


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
    write_tif(tmp_path / "i" / "a.tif", image)
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
        write_tif(masks / f"OAM-{i}.mask.tif", wrong, nodata=0)
    result = evaluate.evaluate_pixels(oracle_run, sorted(images.iterdir()), sorted(masks.iterdir()))
    assert result["precision"] < 0.1
