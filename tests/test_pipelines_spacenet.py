"""``pipelines/spacenet.py --quick`` on a generated SpaceNet-2 AOI (and the real sample's label path)."""
import csv
import json
from pathlib import Path

import pytest
from tests.pipeline_support import printed_json
from tests.data.fixtures import SHARED_DATA as SHARED

SAMPLE = SHARED / "spacenet_sample"


def test_generated_aoi_is_in_the_spacenet_layout(tmp_path):
    from pipelines import spacenet
    from pipelines.generate import make_spacenet_aoi
    from tfseg import config
    from tfseg.data.formats import load_scenes

    aoi = make_spacenet_aoi(tmp_path, num_chips=6, size=64)
    assert (aoi / "RGB-PanSharpen" / "RGB-PanSharpen_AOI_5_Khartoum_img1.tif").is_file()
    assert (aoi / "MUL" / "MUL_AOI_5_Khartoum_img1.tif").is_file()
    empty = json.loads((aoi / "geojson" / "buildings" / "buildings_AOI_5_Khartoum_img6.geojson").read_text())
    assert empty["features"] == []
    for product, bands, size in (("rgb", 3, 64), ("mul", 8, 16)):
        cfg = config.load(spacenet.CONFIGS[product], [f"data.root={aoi}"])
        train, val = load_scenes(cfg.data)
        assert len(train) + len(val) == 6 and train[0].info.num_bands == bands and train[0].info.width == size
    # truth CSV in the product's pixel grid: every generated box of chip 1 is a polygon there
    cfg = config.load(spacenet.CONFIGS["rgb"], [f"data.root={aoi}", "data.val_fraction=0.5"])
    _, val = load_scenes(cfg.data)
    labels = {s.name: spacenet.geojson_of(Path(s.info.path)) for s in val}
    rows = list(csv.DictReader(spacenet.truth_csv(val, labels, tmp_path / "truth.csv").open()))
    assert {r["ImageId"] for r in rows} == {s.name for s in val}
    assert all(r["PolygonWKT_Pix"].startswith("POLYGON") for r in rows)


def test_missing_data_names_the_path(tmp_path, capsys):
    from pipelines import spacenet

    missing = tmp_path / "AOI_5_Khartoum_Train"
    assert spacenet.main(["--data-root", str(missing), "--run-dir", str(tmp_path / "run"), "--quick"]) == 2
    assert str(missing) in capsys.readouterr().err


@pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"real SpaceNet sample not found at {SAMPLE}")
def test_label_path_on_the_real_sample(tmp_path):
    import rasterio

    from pipelines import spacenet

    out = spacenet.sample_label_path(SAMPLE, tmp_path)
    geojson = json.loads((SAMPLE / "geotiff_labels.geojson").read_text())
    assert out["footprints"] == len([f for f in geojson["features"] if f.get("geometry")])
    with rasterio.open(out["mask"]) as src, rasterio.open(SAMPLE / "sample_geotiff.tif") as img:
        assert src.crs == img.crs and src.transform == img.transform
        assert 0.01 < src.read(1).mean() < 0.5
    # GeoJSON -> mask -> polygons scored against the GeoJSON truth with the SpaceNet rules
    assert out["roundtrip_f1"] >= 0.95


@pytest.mark.slow
def test_quick_pipeline_mul_on_generated_aoi(tmp_path, capsys):
    from pipelines import spacenet

    run_dir = tmp_path / "sn"
    assert spacenet.main(["--quick", "--product", "mul", "--run-dir", str(run_dir), "--sample", ""]) == 0
    printed = printed_json(capsys.readouterr().out)
    assert printed["product"] == "MUL" and printed["bands"] == 8
    assert printed["true_pos"] + printed["false_neg"] > 0  # truth built from the validation GeoJSON
    written = json.loads((run_dir / "pipeline.json").read_text())
    scores = written["scores"]
    assert isinstance(written["predict_seconds"], float) and written["predict_seconds"] > 0
    assert set(scores["overall"]) >= {"TruePos", "FalsePos", "FalseNeg", "Precision", "Recall", "F1Score"}
    assert list(scores["per_aoi"]) == ["AOI_5_Khartoum"]
    with (run_dir / "predict" / "proposals.csv").open() as f:
        assert next(csv.reader(f)) == ["ImageId", "BuildingId", "PolygonWKT_Pix", "Confidence"]
    assert (run_dir / "models" / "spacenet" / "1" / "saved_model.pb").is_file()
    assert (run_dir / "run" / "config.yaml").is_file()


def test_mistyped_sample_fails_before_training(tmp_path, capsys, monkeypatch):
    from pipelines import _common, spacenet

    def never(*args, **kwargs):
        raise AssertionError("trained before checking --sample")

    monkeypatch.setattr(_common, "given_or_generated_config", never)
    monkeypatch.setattr(_common, "train_model", never)
    missing = tmp_path / "spacenet_sampel"
    assert spacenet.main(["--quick", "--run-dir", str(tmp_path / "run"), "--sample", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"--sample {missing}" in err and "sample_geotiff.tif" in err
