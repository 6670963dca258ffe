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
