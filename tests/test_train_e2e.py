"""End to end: the train CLI on a tiny synthetic config writes a complete run directory."""
import csv
import json

import numpy as np
import pytest

from tests.data.fixtures import TRANSFORM, pixel_box_to_world, tiny_synthetic_overrides, write_geojson, write_geotiff
from tfseg import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    run_dir = base / "run"
    code = train.main(["--quiet", "--run-dir", str(run_dir), "--set", *tiny_synthetic_overrides(base / "data")])
    assert code == 0
    return run_dir


@pytest.mark.slow
def test_run_directory_is_complete(tiny_run):
    for name in ("config.yaml", "model_card.json", "history.csv", "model.keras", "metrics.json",
                 "predictions.png", "export/saved_model.pb", "export/assets/model_card.json"):
        assert (tiny_run / name).is_file(), name
    assert any((tiny_run / "logs").rglob("events.out.tfevents.*")), "no TensorBoard event files"
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(metrics["val"]) >= {"iou", "f1", "precision", "recall", "accuracy"}
    assert all(0.0 <= v <= 1.0 for v in metrics["val"].values())
    assert metrics["epochs"] == 2 and metrics["train_seconds"] > 0
    rows = list(csv.DictReader((tiny_run / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"loss", "val_loss", "val_iou", "learning_rate"} <= set(rows[0])
    assert (tiny_run / "predictions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_saved_model_matches_keras_model(tiny_run):
    """Both take raw pixels (the preprocessing layer is the model's first layer); the card
    written by training describes both."""
    import keras
    import tensorflow as tf

    from tfseg.model_card import load_model_card
    from tfseg.models import find_preprocess

    model = keras.saving.load_model(tiny_run / "model.keras", compile=False)
    card = load_model_card(tiny_run)
    assert card == load_model_card(tiny_run / "export")
    assert card.metrics == json.loads((tiny_run / "metrics.json").read_text())["val"]
    np.testing.assert_allclose(find_preprocess(model).offset, card.normalization.mean, rtol=1e-6)
    assert card.band_dtype == "uint16"
    loaded = tf.saved_model.load(str(tiny_run / "export"))
    rng = np.random.default_rng(0)
    raw = rng.integers(200, 3000, (2, 64, 64, 4)).astype(np.uint16)
    expected = np.asarray(model(raw, training=False))
    got = loaded.signatures["serving_default"](images=tf.constant(raw, tf.float32))["probabilities"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.slow
def test_rerun_with_different_config_is_refused_then_overwritten(tiny_run, tmp_path, capsys):
    overrides = tiny_synthetic_overrides(tiny_run.parent / "data")
    code = train.main(["--quiet", "--run-dir", str(tiny_run), "--set", *overrides, "train.learning_rate=0.01"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(tiny_run) in err and "train.learning_rate" in err
    assert json.loads((tiny_run / "metrics.json").read_text())["epochs"] == 2  # untouched


@pytest.mark.slow
def test_restarting_a_finished_run_keeps_its_card_until_it_is_scored_again(tiny_run, tmp_path):
    """A restart of a finished run re-evaluates it; until then (or when that dies) model_card.json
    is the finished run's card (metrics, ...), the one inside model.keras, not a fresh card."""
    import shutil

    from tfseg import config as config_lib
    from tfseg.model_card import CARD_FILE, load_model_card

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    before = (copy / CARD_FILE).read_bytes()
    assert load_model_card(copy).metrics is not None
    cfg = config_lib.load(None, tiny_synthetic_overrides(tiny_run.parent / "data"))
    run = train._start(cfg, copy)
    train._read_data(run, copy, False)
    train._build_datasets(run)
    train._build_model(run)  # ...and the process dies before _finish
    assert run.resuming and not run.card.metrics  # the fresh card: not scored yet
    assert (copy / CARD_FILE).read_bytes() == before
    assert load_model_card(copy) == load_model_card(copy / "model.keras")


def _scene_dataset(root, corrupt=False):
    data = np.random.default_rng(0).integers(1, 4000, (3, 128, 128)).astype(np.uint16)
    for split in ("train", "val"):
        write_geotiff(root / split / "a.tif", data, nodata=0)
    if corrupt:
        good = (root / "train" / "a.tif").read_bytes()
        (root / "train" / "b.tif").write_bytes(good[: len(good) // 3])
    transform = TRANSFORM
    write_geojson(root / "labels.geojson", [pixel_box_to_world(10, 10, 40, 40, transform)])
    return root


def test_missing_data_directory_is_named_and_nothing_is_written(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = train.main(["--quiet", "--run-dir", str(run_dir), "--set", "data.format=scenes",
                       f"data.root={tmp_path / 'no_such_dir'}"])
    assert code == 2
    assert "no_such_dir" in capsys.readouterr().err
    assert not run_dir.exists()


def test_corrupt_geotiff_is_named_and_nothing_is_written(tmp_path, capsys):
    root = _scene_dataset(tmp_path / "data", corrupt=True)
    run_dir = tmp_path / "run"
    code = train.main(["--quiet", "--run-dir", str(run_dir), "--set", "data.format=scenes", f"data.root={root}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "b.tif" in err
    assert not run_dir.exists()


def test_config_errors_exit_before_work(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train.main(["--run-dir", str(run_dir), "--set", "train.epochs=three"]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert train.main(["--run-dir", str(run_dir), "--set", "model.nmae=unet"]) == 2
    assert "model.nmae" in capsys.readouterr().err
    assert not run_dir.exists()


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    out = capsys.readouterr().out
    for key in ("--config", "--set", "--run-dir", "--overwrite", "train.epochs", "model.name",
                "data.augment.flip", "tracking.neptune.mode", "train.precision"):
        assert key in out
