"""The public API (``import tfseg``) and the ``tfseg`` console entry point: a tiny run trained,
exported, loaded, predicted and evaluated through ``tfseg.*`` only; errors under one root."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tfseg
from tests.data.fixtures import ORIGIN, write_geojson, write_geotiff, tiny_synthetic_overrides


def test_import_is_light_and_lists_the_api():
    code = ("import sys, tfseg; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith(('tensorflow', 'keras')))[:5]; print(tfseg.__all__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in ("load_config", "train_model", "evaluate_pixels", "predict_scenes", "export_model",
                 "load_predictor", "load_model_card", "TfsegError"):
        assert name in out and callable(getattr(tfseg, name)), name
        assert "Args:" in getattr(tfseg, name).__doc__ or name == "TfsegError"


def test_every_tfseg_error_is_a_tfseg_error():
    from tfseg.config import ConfigError
    from tfseg.data.colours import ColourMaskError
    from tfseg.data.formats import DataFormatError
    from tfseg.data.labels import LabelError
    from tfseg.data.raster import RasterError
    from tfseg.export import ExportError
    from tfseg.inference import ModelLoadError
    from tfseg.model_card import LegacyArtifactError, ModelCardError
    from tfseg.predict import OutputError
    from tfseg.serve import RequestError

    for cls in (ConfigError, ColourMaskError, DataFormatError, LabelError, RasterError, ExportError, ModelLoadError,
                ModelCardError, LegacyArtifactError, OutputError, RequestError):
        assert issubclass(cls, tfseg.TfsegError) and issubclass(cls, ValueError), cls
    with pytest.raises(tfseg.TfsegError, match="train.epochs"):
        tfseg.load_config(None, ["train.epochs=-1"])


def test_console_entry_point_dispatches_to_the_modules(capsys):
    from tfseg import cli

    assert cli.main(["--help"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("train", "predict", "export", "serve", "bench"))
    assert cli.main(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse of tfseg.export itself
        cli.main(["export", "--help"])
    assert exit_info.value.code == 0 and "--threshold" in capsys.readouterr().out
    assert cli.main(["export", "--model", "/nonexistent/run", "--output", "/tmp/tfseg-api-test/m/1"]) == 2
    assert "--model" in capsys.readouterr().err


@pytest.mark.slow
def test_train_export_predict_evaluate_through_the_api(tmp_path):
    cfg = tfseg.load_config(None, tiny_synthetic_overrides(tmp_path / "data"))
    result = tfseg.train_model(cfg, tmp_path / "run", verbose=0)
    assert 0.0 <= result["val"]["iou"] <= 1.0 and result["epochs"] == 2
    with open(tmp_path / "run" / "history.csv", newline="") as handle:
        assert set(next(csv.reader(handle))) == {"epoch", *tfseg.history_columns(cfg)}
    # profile_model on a run directory in a fresh process (nothing registered tfseg's model classes yet)
    root = Path(__file__).resolve().parents[1]
    code = "import sys, tfseg; print('PROFILE', tfseg.profile_model(sys.argv[1], 64))"
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=300, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0 and f"'params': {result['params']}" in proc.stdout, proc.stderr[-2000:]
    card = tfseg.load_model_card(tmp_path / "run")
    assert card.band_dtype == "uint16" and card.num_bands == 4
    exported = tfseg.export_model(tmp_path / "run", tmp_path / "models" / "tiny" / "1")
    assert (exported / "saved_model.pb").is_file() and tfseg.load_model_card(exported) == card
    with pytest.raises(tfseg.TfsegError, match="already exists"):
        tfseg.export_model(tmp_path / "run", exported)
    with pytest.raises(tfseg.TfsegError, match="VERSION"):
        tfseg.export_model(tmp_path / "run", tmp_path / "models" / "tiny")
    # the Keras run and the SavedModel give the same probabilities on the same raw tile
    raw = np.random.default_rng(0).integers(200, 3000, (1, 64, 64, 4)).astype(np.uint16)
    np.testing.assert_allclose(tfseg.load_predictor(tmp_path / "run")(raw), tfseg.load_predictor(exported)(raw),
                               atol=1e-5)
    train, val = tfseg.load_scenes(cfg.data)
    scene = val[0].info.path
    summary = tfseg.predict_scenes(exported, [scene], tmp_path / "out", tfseg.PredictOptions(overlay=False))
    assert summary["completed"] == 1 and summary["failed"] == 0
    assert isinstance(tfseg.PredictOptions(), __import__("tfseg.predict").predict.PredictOptions)
    truth = tmp_path / "truth" / Path(scene).name  # paired with the scene by file name
    _write_truth(val[0], truth)
    scores = tfseg.evaluate_pixels(tmp_path / "run", images=[scene], masks=[truth])
    assert 0.0 <= scores["iou"] <= 1.0
    json.dumps(scores)  # plain JSON values


def _write_truth(scene, path) -> None:
    """The scene's labels rasterized on its grid, as a mask GeoTIFF beside it."""
    import rasterio
    from rasterio.windows import Window

    info = scene.info
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = scene.labels.rasterize(Window(0, 0, info.width, info.height), info)
    mask = mask[..., 0] if mask.ndim == 3 else mask
    with rasterio.open(path, "w", driver="GTiff", width=info.width, height=info.height, count=1, dtype="uint8",
                       crs=info.crs, transform=rasterio.Affine(*info.transform)) as dst:
        dst.write(mask, 1)


def _square(x, y, side):
    return {"type": "Polygon", "coordinates": [[(x, y), (x + side, y), (x + side, y - side), (x, y - side), (x, y)]]}


def test_object_scores_merging_and_pairing_through_the_api(tmp_path):
    """The helpers the pipelines use: pairing by stem, per-scene polygons merged with their
    image ids, object F1 of GeoJSON (reprojected) and of SpaceNet CSVs, mixed kinds refused."""
    x0, y0 = ORIGIN
    for name in ("a", "b"):
        write_geotiff(tmp_path / "images" / f"{name}.tif", np.zeros((1, 8, 8), np.uint8))
        write_geotiff(tmp_path / "masks" / f"{name}.mask.tif", np.zeros((8, 8), np.uint8))
    pairs = tfseg.pair_images_and_masks(tmp_path / "images", tmp_path / "masks")
    assert [(i.name, m.name) for i, m in pairs] == [("a.tif", "a.mask.tif"), ("b.tif", "b.mask.tif")]
    truth = {"a": [_square(x0 + 10, y0 - 10, 20), _square(x0 + 50, y0 - 10, 20)], "b": [_square(x0 + 10, y0 - 40, 30)]}
    found = {"a": [_square(x0 + 11, y0 - 10, 20)], "b": [_square(x0 + 10, y0 - 40, 30), _square(x0 + 80, y0 - 80, 10)]}
    parts = {}
    for kind, polygons in (("truth", truth), ("found", found)):
        parts[kind] = [(write_geojson(tmp_path / f"{kind}_{k}.geojson", v), k, "EPSG:4326") for k, v in polygons.items()]
    merged = tfseg.merge_polygons(parts["truth"], tmp_path / "truth.geojson")
    assert merged["count"] == 3 and not merged["excluded"]
    tfseg.merge_polygons(parts["found"], tmp_path / "found.geojson")
    overall = tfseg.score_objects(tmp_path / "truth.geojson", tmp_path / "found.geojson")["overall"]
    assert (overall["TruePos"], overall["FalsePos"], overall["FalseNeg"]) == (2, 1, 1)
    assert overall["F1Score"] == pytest.approx(2 / 3)
    csv = tmp_path / "truth.csv"
    csv.write_text("ImageId,BuildingId,PolygonWKT_Pix,Confidence\n"
                   'img1,1,"POLYGON ((0 0, 30 0, 30 30, 0 30, 0 0))",1\n')
    assert tfseg.score_objects(csv, csv)["overall"]["F1Score"] == 1.0
    with pytest.raises(tfseg.TfsegError, match="both"):
        tfseg.score_objects(csv, tmp_path / "found.geojson")


def test_rasters_labels_and_polygons_through_the_api(tmp_path):
    """What the SpaceNet and Dstl pipelines read through ``tfseg.*``: raster metadata and pixels
    (nodata -> invalid), vector labels on the raster's grid, mask -> polygons -> SpaceNet CSV."""
    from rasterio.windows import Window

    x0, y0 = ORIGIN
    image = np.full((3, 64, 64), 50, np.uint8)
    image[:, :, :8] = 0  # nodata columns
    scene = write_geotiff(tmp_path / "RGB-PanSharpen_AOI_2_Vegas_img7.tif", image, nodata=0)
    labels_file = write_geojson(tmp_path / "buildings.geojson", [_square(x0 + 10, y0 - 5, 10)])  # 20 x 20 px
    info = tfseg.open_raster(scene)
    assert (info.width, info.height, info.num_bands) == (64, 64, 3) and str(info.crs) == "EPSG:32636"
    pixels, valid = tfseg.read_raster(scene)
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    assert not valid[:, :8].any() and valid[:, 8:].all()
    part, part_valid = tfseg.read_raster(info, Window(56, 0, 16, 16))  # beyond the edge: padded, invalid
    assert part.shape == (16, 16, 3) and not part_valid[:, 8:].any()
    labels = tfseg.read_vector_labels(labels_file, info)
    mask = labels.rasterize(Window(0, 0, 64, 64), info)
    mask = mask[..., 0] if mask.ndim == 3 else mask
    assert mask.sum() == 400 and mask[10:30, 20:40].all()
    records = tfseg.polygonize_mask(mask > 0, options=tfseg.PolygonOptions(opening_px=0, simplify_px=0.0))
    assert len(records) == 1 and records[0].geometry.area == pytest.approx(400, rel=0.01)
    assert isinstance(records[0], tfseg.PolygonRecord) and records[0].confidence == 1.0
    image_id = tfseg.spacenet_image_id(scene)
    assert image_id == "AOI_2_Vegas_img7"
    csv = tfseg.write_spacenet_csv(tmp_path / "found.csv", {image_id: records})
    pixel_truth = tfseg.read_pixel_polygons(labels_file, scene)
    assert len(pixel_truth) == 1 and pixel_truth[0].bounds == pytest.approx((20.0, 10.0, 40.0, 30.0), abs=1e-6)
    truth = tfseg.write_spacenet_csv(tmp_path / "truth.csv", {image_id: [tfseg.PolygonRecord(p) for p in pixel_truth]})
    assert tfseg.score_objects(truth, csv)["overall"]["F1Score"] == 1.0
    far = write_geojson(tmp_path / "far.geojson", [_square(x0 + 5000, y0 - 5000, 10)])
    with pytest.raises(tfseg.TfsegError, match="far.geojson"):
        tfseg.read_vector_labels(far, scene)
    assert len(tfseg.read_vector_labels(far, scene, require_overlap=False).geometries) == 1


def test_class_masks_histories_models_and_the_set_option_through_the_api(tmp_path):
    import argparse

    from PIL import Image

    cfg = tfseg.load_config(Path(__file__).resolve().parents[1] / "configs" / "landcover_dubai.yaml")
    colours = np.zeros((4, 4, 3), np.uint8)
    colours[:2] = (0x3C, 0x10, 0x98)  # building
    colours[2:] = (0x6E, 0xC1, 0xE4)  # road
    colours[3, 3] = 0  # black: ignored
    Image.fromarray(colours).save(tmp_path / "mask.png")
    classes = tfseg.read_class_mask(tmp_path / "mask.png", cfg.data)
    building, road = cfg.data.classes.index("building"), cfg.data.classes.index("road")
    assert (classes[:2] == building).all() and (classes[2, :] == road).all() and classes[3, 3] == cfg.data.ignore_index
    history = tmp_path / "run" / "history.csv"
    history.parent.mkdir()
    history.write_text("epoch,val_iou,val_loss\n0,0.5,0.9\n1,0.7,0.8\n2,nan,0.7\n3,0.6,0.75\n")
    assert tfseg.best_epoch(history)["epoch"] == 1
    assert tfseg.best_epoch(tmp_path / "run", "val_loss", "min")["epoch"] == 2
    assert tfseg.best_epoch(history, "val_f1") is None
    assert {"unet", "fcn8", "fpn"} <= set(tfseg.available_models())
    parser = argparse.ArgumentParser()
    tfseg.add_overrides_argument(parser)
    args = parser.parse_args(["--set", "train.epochs=3", "--set", "data.batch_size=2"])
    assert tfseg.load_config(None, args.overrides).train.epochs == 3
    with pytest.raises(tfseg.ConfigError, match="data.batch_size"):
        tfseg.load_config(None, ["data.batch_size=0"])


def test_pipelines_use_the_public_api_only():
    """``pipelines/*.py`` import ``tfseg`` and the names of ``tfseg.__all__``, nothing deeper, and
    do not edit ``sys.path``."""
    import ast

    for path in sorted((Path(__file__).resolve().parents[1] / "pipelines").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deep = [a.name for a in node.names if a.name.startswith("tfseg.")]
                assert not deep, f"{path.name}:{node.lineno} imports {deep}"
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tfseg":
                assert node.module == "tfseg", f"{path.name}:{node.lineno} imports from {node.module}"
                names = {a.name for a in node.names}
                assert names <= set(tfseg.__all__), f"{path.name}:{node.lineno} imports {names - set(tfseg.__all__)}"
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "tfseg":
                assert node.attr in tfseg.__all__, f"{path.name}:{node.lineno} uses tfseg.{node.attr}"
        assert "sys.path" not in path.read_text(), path.name
