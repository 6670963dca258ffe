"""``pipelines/landcover.py --quick`` on the real Dubai sample (skipped when it is absent)."""
import json

import numpy as np
import pytest
from tests.pipeline_support import printed_json
from tests.data.fixtures import SHARED_DATA as SHARED

DUBAI = SHARED / "dubai_landcover"
CLASSES = ["building", "land", "road", "vegetation", "water", "unlabeled"]


def test_missing_data_names_the_path(tmp_path, capsys):
    from pipelines import landcover

    missing = tmp_path / "no such folder"
    assert landcover.main(["--data-root", str(missing), "--run-dir", str(tmp_path / "run"), "--quick"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_colour_table_uses_the_dataset_palette():
    from pipelines import landcover
    from tfseg import config

    cfg = config.load(landcover.CONFIG)
    table = landcover.colour_table(cfg)
    assert tuple(table[0]) == (0x3C, 0x10, 0x98) and tuple(table[4]) == (0xE2, 0xA9, 0x29)
    assert tuple(table[255]) == (0, 0, 0)  # ignored (black in the dataset) stays black
    assert cfg.data.classes == CLASSES


@pytest.mark.slow
@pytest.mark.skipif(not DUBAI.is_dir(), reason=f"real Dubai land-cover sample not found at {DUBAI}")
def test_quick_balanced_recipe_on_dubai(tmp_path, capsys):
    """One quick run (the CI-sized one) of the balanced recipe under a budget shorter than its one
    epoch: the whole pipeline, the recipe's sampling/weights, the budget fields and its table row
    (comparing recipes for real is ``pipelines/landcover_recipes.py``, not a test)."""
    from PIL import Image

    from pipelines import landcover, landcover_recipes
    from tfseg.model_card import load_model_card

    run_dir = tmp_path / "run"
    assert landcover.main(["--quick", "--recipe", "unet-balanced", "--run-dir", str(run_dir), "--data-root",
                           str(DUBAI), "--set", "train.max_minutes=0.05"]) == 0
    printed = printed_json(capsys.readouterr().out)
    summary = json.loads((run_dir / "pipeline.json").read_text())
    assert summary["metrics"] == printed
    assert set(printed["per_class_iou"]) == set(CLASSES)
    assert 0.0 <= printed["miou"] <= 1.0
    real = [printed["per_class_iou"][c] for c in CLASSES[:5]]
    assert printed["miou_real"] == pytest.approx(sum(real) / 5, abs=1e-4)
    # held-out images are never trained on; the split is the seeded one of tfseg.train (~20 %)
    assert printed["heldout_images"] == landcover.QUICK_EVAL_IMAGES
    assert summary["train_images"] + round(54 * 0.2) == 54
    held = set(summary["heldout"])
    assert all(name.startswith("Tile_") and "__image_part_" in name for name in held)
    assert (run_dir / "models" / "landcover" / "1" / "saved_model.pb").is_file()
    figure = Image.open(run_dir / "landcover_figure.png").convert("RGB")
    colours = {tuple(c) for c in np.asarray(figure).reshape(-1, 3)[::7]}
    assert (0x8429F6 >> 16, (0x8429F6 >> 8) & 255, 0x8429F6 & 255) in colours  # land, in the truth panel
    assert (run_dir / "landcover_figure.png").stat().st_size < 300_000
    # the recipe: balanced windows from the stored class index, automatic weights reported and on the card
    assert summary["recipe"] == "unet-balanced"
    assert (run_dir / "class_index.npz").is_file()
    assert set(summary["class_weights"]) == set(CLASSES)
    card = load_model_card(run_dir / "models" / "landcover" / "1")
    assert card.class_weights == pytest.approx([summary["class_weights"][c] for c in CLASSES])
    # the config's argmax offsets, fitted on the training images (the validation images are held out)
    fitted = json.loads((run_dir / "metrics.json").read_text())["class_offsets"]
    assert fitted["searched_on"] == "training" and fitted["num_scenes"] == summary["train_images"]
    assert card.class_offsets == [fitted["offsets"][c] for c in CLASSES]
    assert printed["class_offsets"] == fitted["offsets"]
    plain = printed["without_class_offsets"]  # the same held-out images by plain argmax
    assert set(plain["per_class_iou"]) == set(CLASSES) and 0.0 <= plain["miou_real"] <= 1.0
    # the budget: shorter than the one quick epoch, so that epoch is run and the budget named as the reason
    assert summary["train"]["max_minutes"] == 0.05 and summary["train"]["epochs"] == 1
    assert summary["train"]["stop_reason"] == "max_minutes"
    text = landcover_recipes.table([summary], 0.05)
    assert "train.max_minutes=0.05" in text
    assert f"| `unet-balanced` | **{printed['miou_real']:.3f}** |" in text and "| 1 (max_minutes) |" in text


def test_recipe_table_goes_between_the_markers(tmp_path, capsys):
    from pipelines import landcover_recipes

    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nbefore\n\n<!-- recipes:begin -->\nold table\n<!-- recipes:end -->\n\nafter\n")
    landcover_recipes.write_into(doc, "| new |\n")
    assert doc.read_text() == "# Results\n\nbefore\n\n<!-- recipes:begin -->\n| new |\n<!-- recipes:end -->\n\nafter\n"
    plain = tmp_path / "plain.md"
    plain.write_text("text\n")
    landcover_recipes.write_into(plain, "| t |\n")
    assert plain.read_text() == "text\n\n<!-- recipes:begin -->\n| t |\n<!-- recipes:end -->\n"
    assert landcover_recipes.main(["--recipes", "unet,nope", "--run-dir", str(tmp_path / "r"), "--quick"]) == 2
    assert "unknown recipe(s) ['nope']" in capsys.readouterr().err
    assert set(landcover_recipes.landcover.RECIPES) >= {"unet", "unet-resnet34", "unet-balanced"}


def _scores(**iou):
    """An evaluate_pixels report: ``None`` for a class absent from truth and prediction."""
    per_class = {c: {"iou": iou.get(c, 0.5), "f1": None if iou.get(c, 0.5) is None else 0.6,
                     "precision": None, "recall": None} for c in CLASSES}
    return {"miou": 0.5, "f1": 0.6, "per_class": per_class}


def test_absent_classes_are_null_and_left_out_of_the_means():
    from pipelines import landcover, landcover_recipes

    metrics = landcover.heldout_metrics(_scores(water=None, road=0.2))
    assert metrics["per_class_iou"]["water"] is None and metrics["per_class_f1"]["water"] is None
    assert metrics["miou_real"] == pytest.approx((0.5 + 0.5 + 0.2 + 0.5) / 4)  # water left out, not counted as 0
    json.loads(json.dumps(metrics, allow_nan=False))  # valid JSON: null, no NaN
    none = landcover.heldout_metrics({"miou": None, "f1": None, "per_class": {
        c: {"iou": None, "f1": None} for c in CLASSES}})
    assert none["miou_real"] is None and none["miou"] is None
    summary = {"recipe": "unet", "metrics": metrics, "train": {"epochs": 1, "stop_reason": "epochs",
                                                               "train_seconds": 3.0},
               "load_average_start": "0", "load_average_end": "0"}
    row = [line for line in landcover_recipes.table([summary], 1).splitlines() if line.startswith("| `unet`")][0]
    assert "| 0.200 |" in row and "| – |" in row  # water (absent) shown as a dash
    assert "| **–** |" in landcover_recipes.table([{**summary, "metrics": none}], 1)


def test_data_root_reaches_the_config_as_given(tmp_path, monkeypatch):
    """A --data-root holding ' #' and ': ' is data.root verbatim (unquoted, YAML cut it at ' #')."""
    from pipelines import _common, landcover

    root = tmp_path / "run #2: a"
    root.mkdir()
    seen = {}

    def capture(cfg):
        seen["root"] = cfg.data.root
        raise _common.PipelineError("captured")

    monkeypatch.setattr(landcover, "heldout_pairs", capture)
    assert landcover.main(["--data-root", str(root), "--run-dir", str(tmp_path / "run"), "--quick"]) == 2
    assert seen["root"] == str(root)
