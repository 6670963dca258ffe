"""pipelines/buildings.py and pipelines/compare_architectures.py on Kampala (--quick, real data,
skipped when ../shared/data is absent) and on a generated mask-folder fixture (always runs)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipelines import buildings
from tests.data.fixtures import TRANSFORM, pixel_box_to_world, write_geojson
from tests.data.formats import make_mask_folder
from tests.data.fixtures import SHARED_DATA as SHARED

REPO = Path(__file__).resolve().parents[1]
KAMPALA = SHARED / "kampala_buildings" / "train"
needs_kampala = pytest.mark.skipif(not (KAMPALA / "images").is_dir(),
                                   reason=f"real sample data not found at {KAMPALA} (set TFSEG_SHARED_DATA)")


def _check_run(run_dir: Path, metrics: dict, num_val: int):
    assert metrics["heldout_chips"] == num_val
    for scope in ("pixel", "object"):
        for key in ("f1", "precision", "recall"):
            assert 0.0 <= metrics[scope][key] <= 1.0
    assert 0.0 <= metrics["pixel"]["iou"] <= metrics["pixel"]["f1"] <= 1.0
    on_disk = json.loads((run_dir / "pipeline_metrics.json").read_text())
    assert on_disk["pixel"] == metrics["pixel"] and on_disk["object"] == metrics["object"]
    # per-epoch figures, the SavedModel, the sample prediction (raster, polygons, SpaceNet CSV)
    assert sorted(p.name for p in (run_dir / "figures").iterdir()) == ["epoch-0001.png"]
    assert (run_dir / "export" / "saved_model.pb").is_file()
    sample = Path(metrics["sample"]["input"]).stem
    with rasterio.open(run_dir / "predict" / f"{sample}_class.tif") as src, \
            rasterio.open(metrics["sample"]["input"]) as ref:
        assert src.crs == ref.crs and src.transform.almost_equals(ref.transform)
        assert set(np.unique(src.read(1))) <= {0, 1, 255}
    assert json.loads((run_dir / "predict" / f"{sample}_polygons.geojson").read_text())["type"] == "FeatureCollection"
    with open(run_dir / "predict" / "proposals.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["ImageId", "BuildingId", "PolygonWKT_Pix", "Confidence"] and len(rows) >= 2
    assert all(row[0] == sample for row in rows[1:])


def _write_labels(root: Path, masks: dict, size: int) -> None:
    """GeoJSON footprints (EPSG:4326) of the fixture's mask rectangles, one file per chip."""
    transform = TRANSFORM
    (root / "labels").mkdir()
    for stem, mask in masks.items():
        rows, cols = np.nonzero(mask)
        box = pixel_box_to_world(cols.min(), rows.min(), cols.max() + 1, rows.max() + 1, transform)
        write_geojson(root / "labels" / f"{stem}.geojson", [box])


@pytest.mark.slow
def test_buildings_pipeline_on_generated_chips(tmp_path, capsys):
    masks = make_mask_folder(tmp_path / "data", num_pairs=5, size=64)
    _write_labels(tmp_path / "data", masks, 64)
    run_dir = tmp_path / "run"
    code = buildings.main(["--quick", "--data-root", str(tmp_path / "data"), "--run-dir", str(run_dir),
                           "--set", "data.window_size=64", "data.val_fraction=0.4"])
    assert code == 0
    out = capsys.readouterr().out
    assert "pixel   iou" in out and "object  f1" in out
    metrics = json.loads((run_dir / "pipeline_metrics.json").read_text())
    _check_run(run_dir, metrics, num_val=2)
    split = json.loads((tmp_path / "run.split" / "split.json").read_text())
    parts = [set(split[k]) for k in ("train", "val", "heldout")]
    assert sorted(split["train"] + split["val"] + split["heldout"]) == sorted(masks)
    assert all(len(p) >= 1 for p in parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    # the held-out chips are symlinks to the data, nothing copied; labels linked beside them
    linked = sorted((tmp_path / "run.split" / "heldout" / "masks").iterdir())
    assert all(p.is_symlink() for p in linked) and [p.name for p in linked] == [f"{s}.mask.tif" for s in split["heldout"]]
    assert sorted(p.stem for p in (tmp_path / "run.split" / "train" / "labels").iterdir()) == split["train"]
    # each truth polygon carries its chip id, so object matching is per chip
    truth = json.loads((run_dir / "val_truth.geojson").read_text())
    assert sorted(f["properties"]["image_id"] for f in truth["features"]) == split["heldout"]


def test_split_is_seeded_and_disjoint(tmp_path):
    masks = make_mask_folder(tmp_path / "data", num_pairs=10, size=32)
    a = buildings.prepare_split(tmp_path / "data", tmp_path / "a", 0.2, seed=7)
    b = buildings.prepare_split(tmp_path / "data", tmp_path / "b", 0.2, seed=7)
    c = buildings.prepare_split(tmp_path / "data", tmp_path / "c", 0.2, seed=8)
    assert a == b and a != c
    # held-out: 20 % of the chips; validation (checkpoint, operating point) carved from the rest
    assert len(a["heldout"]) == 2 and len(a["val"]) == 1 and len(a["train"]) == 7
    assert sorted(a["train"] + a["val"] + a["heldout"]) == sorted(masks)
    # preparing again into the same folder replaces the links
    again = buildings.prepare_split(tmp_path / "data", tmp_path / "a", 0.3, seed=7)
    assert len(list((tmp_path / "a" / "heldout" / "images").iterdir())) == len(again["heldout"]) == 3


def test_missing_data_is_named(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "kampala_buildings"
    assert buildings.main(["--quick", "--data-root", str(missing), "--run-dir", str(tmp_path / "run")]) == 2
    assert str(missing) in capsys.readouterr().err
    (tmp_path / "only_images" / "images").mkdir(parents=True)
    assert buildings.main(["--quick", "--data-root", str(tmp_path / "only_images"),
                           "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "only_images" in err and "masks" in err
    assert not (tmp_path / "run").exists()


@needs_kampala
@pytest.mark.slow
def test_buildings_quick_on_kampala(tmp_path):
    run_dir = tmp_path / "run"
    assert buildings.main(["--quick", "--data-root", str(KAMPALA), "--run-dir", str(run_dir)]) == 0
    metrics = json.loads((run_dir / "pipeline_metrics.json").read_text())
    _check_run(run_dir, metrics, num_val=2)
    assert metrics["train_chips"] == buildings.QUICK_CHIPS - 3 and metrics["val_chips"] == 1
    # the truth footprints come from the chips' GeoJSON labels
    truth = json.loads((run_dir / "val_truth.geojson").read_text())
    expected = sum(len(json.loads((KAMPALA / "labels" / f"{s}.geojson").read_text())["features"])
                   for s in json.loads((tmp_path / "run.split" / "split.json").read_text())["heldout"])
    assert len(truth["features"]) == expected
    tp, fn = metrics["object"]["tp"], metrics["object"]["fn"]
    assert tp + fn == expected  # every truth footprint is either matched or missed


@needs_kampala
@pytest.mark.slow
def test_compare_architectures_quick_on_kampala(tmp_path):
    from pipelines import compare_architectures

    tiny = tmp_path / "models.yaml"
    tiny.write_text(
        "- {label: fcn8, overrides: [model.name=fcn8, model.backbone=vgg16, 'model.decoder_filters=[32]']}\n"
        "- {label: unet, overrides: [model.name=unet, model.backbone=resnet34, 'model.decoder_filters=[16,16,8,8,8]']}\n")
    out = tmp_path / "cmp"
    code = compare_architectures.main([
        "--quick", "--config", str(REPO / "configs" / "compare_kampala.yaml"), "--models", str(tiny),
        "--data-root", str(KAMPALA), "--output", str(out),
        "--set", "train.epochs=1", "data.train_windows_per_epoch=2", "data.batch_size=2", "data.window_size=64",
        "data.eval_overlap=0", "train.num_figure_tiles=0"])
    assert code == 0
    with open(out / "report" / "comparison.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["run"] for r in rows) == ["fcn8", "unet"]
    assert {r["model"] for r in rows} == {"fcn8", "unet"}
    assert (out / "report" / "index.html").is_file()
    for label in ("fcn8", "unet"):
        cfg = (out / "runs" / label / "config.yaml").read_text()
        assert "format: mask_folder" in cfg and str(KAMPALA) in cfg


# a folder name YAML would misread unquoted: ' #' starts a comment, ': ' a mapping
ODD = "run #2: a"


def test_paths_reach_the_config_as_given(tmp_path, monkeypatch):
    """The split folder goes into data.root verbatim (it sits beside a run directory named
    'run #2: a'), not cut at ' #' or parsed as a mapping."""
    import tfseg

    make_mask_folder(tmp_path / ODD / "data", num_pairs=4, size=32)
    seen = {}

    def capture(cfg, run_dir, **kwargs):
        seen["root"] = cfg.data.root
        raise buildings.PipelineError("captured")

    monkeypatch.setattr(tfseg, "train_model", capture)
    assert buildings.main(["--quick", "--data-root", str(tmp_path / ODD / "data"),
                           "--run-dir", str(tmp_path / ODD / "run")]) == 2
    assert seen["root"] == str((tmp_path / ODD / "run.split").resolve())


def test_default_data_root_follows_tfseg_shared_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TFSEG_SHARED_DATA", str(tmp_path / "shared"))
    assert buildings.main(["--quick", "--run-dir", str(tmp_path / "run")]) == 2
    assert str(tmp_path / "shared" / "kampala_buildings" / "train") in capsys.readouterr().err
    make_mask_folder(tmp_path / "shared" / "kampala_buildings" / "train", num_pairs=3, size=32)
    assert buildings.resolve_data_root("") == (tmp_path / "shared" / "kampala_buildings" / "train").resolve()


def test_compare_architectures_keeps_paths_and_names_as_strings(tmp_path):
    from pipelines import compare_architectures as study

    root = tmp_path / ODD
    root.mkdir()
    models = [{"label": "yes", "overrides": ["model.name=unet"]}, {"label": "a: b", "overrides": ["model.name=unet"]}]
    planned = study.plan(models, data_root=str(root), experiment="study #1: no")
    assert [(label, cfg.tracking.name, cfg.data.root) for label, cfg in planned] == [
        ("yes", "yes", str(root)), ("a: b", "a: b", str(root))]
    assert {cfg.tracking.mlflow.experiment for _, cfg in planned} == {"study #1: no"}


def test_compare_architectures_refuses_a_metric_no_run_writes_before_training(tmp_path, capsys):
    from pipelines import compare_architectures as study

    models = tmp_path / "models.yaml"
    models.write_text("- {label: unet, overrides: [model.name=unet]}\n")
    assert study.main(["--output", str(tmp_path / "out"), "--models", str(models), "--metric", "val_iuo"]) == 2
    err = capsys.readouterr().err
    assert "--metric 'val_iuo': no run of this study writes it (did you mean val_iou?)" in err
    assert not (tmp_path / "out" / "runs").exists()
    planned = study.plan([{"label": "u", "overrides": []}])
    study.check_metric(planned, "val_miou")  # binary runs also write the mean over background and foreground
