"""``pipelines/dstl.py --quick`` on a generated dataset in the Dstl Kaggle layout."""
import json

import numpy as np
import pytest
from tests.pipeline_support import printed_json

CLASSES = ["buildings", "structures", "road", "track", "trees", "crops", "waterway", "standing_water",
           "vehicle_large", "vehicle_small"]


def test_generated_dstl_loads_as_20_bands_10_classes(tmp_path):
    from rasterio.windows import Window

    from pipelines import dstl
    from pipelines.generate import make_dstl_dataset
    from tfseg import config
    from tfseg.data.formats import load_scenes

    root = make_dstl_dataset(tmp_path, num_images=3, size=90)
    for name in ("three_band", "sixteen_band", "train_wkt_v4.csv", "grid_sizes.csv"):
        assert (root / name).exists()
    cfg = config.load(dstl.CONFIGS["unet20"], [f"data.root={root}"])
    train, val = load_scenes(cfg.data)
    scene = train[0]
    assert scene.info.num_bands == 20 and (scene.info.width, scene.info.height) == (90, 90)
    labels = scene.labels.rasterize(Window(0, 0, 90, 90), scene.info)
    assert labels.shape[-1] == 10
    present = [k for k in range(10) if (labels[..., k] == 1).any()]
    assert present and set(present) <= {0, 2, 4, 5, 7}  # the generator's classes only


def test_missing_data_names_the_path(tmp_path, capsys):
    from pipelines import dstl

    missing = tmp_path / "dstl"
    assert dstl.main(["--data-root", str(missing), "--run-dir", str(tmp_path / "run"), "--quick"]) == 2
    assert str(missing) in capsys.readouterr().err


@pytest.mark.slow
def test_quick_pipeline_unet20(tmp_path, capsys):
    import rasterio

    from pipelines import dstl

    run_dir = tmp_path / "dstl"
    assert dstl.main(["--quick", "--run-dir", str(run_dir)]) == 0
    printed = printed_json(capsys.readouterr().out)
    assert printed["bands"] == 20 and printed["classes"] == 10
    assert sorted(printed["per_class"]) == sorted(CLASSES)
    assert all(set(v) == {"iou", "f1", "val_pixels"} for v in printed["per_class"].values())
    assert sum(v["val_pixels"] for v in printed["per_class"].values()) > 0
    saved = run_dir / "models" / "dstl" / "1"
    assert (saved / "saved_model.pb").is_file()
    meta = json.loads((saved / "assets" / "model_card.json").read_text())
    assert meta["task"] == "multilabel" and meta["num_bands"] == 20
    probs = list((run_dir / "predict").glob("*_prob.tif"))
    assert len(probs) == 1
    with rasterio.open(probs[0]) as src:
        assert src.count == 10
        assert np.isfinite(src.read(1)).all()


def test_absent_class_scores_are_null_in_the_summary(tmp_path):
    """history.csv has NaN (or nothing) for a class absent from the validation truth and prediction:
    pipeline.json gets null (valid JSON), not NaN, and the class stays out of the means."""
    from pipelines import dstl

    history = tmp_path / "history.csv"
    history.write_text("epoch,loss,val_iou,val_iou_buildings,val_iou_track,val_f1_buildings,val_f1_track\n"
                       "0,0.5,0.3,0.4,,0.5,\n1,0.4,0.35,0.45,nan,0.55,nan\n")
    scores = dstl.per_class_scores(history, "val_iou", "max")
    assert scores == {"buildings": {"iou": 0.45, "f1": 0.55}, "track": {"iou": None, "f1": None}}
    assert json.loads(json.dumps(scores, allow_nan=False))["track"]["iou"] is None


def test_given_data_root_reaches_the_config_as_given(tmp_path):
    """The shared helper of dstl/spacenet: a --data-root with ' #' and ': ' is data.root verbatim."""
    import argparse

    from pipelines import _common, dstl

    root = tmp_path / "dstl #2: a"
    root.mkdir()
    args = argparse.Namespace(data_root=str(root), quick=False, overrides=[])
    _, generated, cfg = _common.given_or_generated_config(args, tmp_path / "run", dstl.CONFIGS["unet20"], [], "Dstl",
                                                          "", None, {})
    assert not generated and cfg.data.root == str(root)
    assert _common.override("tracking.name", "yes") == 'tracking.name="yes"'
