"""Neptune tracking with the real client: offline log read back, debug-mode fetches, an
unreachable server (bounded, one warning, run continues locally)."""
from __future__ import annotations

import base64
import csv
import json
import logging
import socket
import time
import zipfile

import pytest

from tests.data.fixtures import tiny_synthetic_overrides
from tfseg import config as config_lib
from tfseg import train as train_lib
from tfseg.tracking import NeptuneTracker, read_offline_log, resolve_neptune_mode


def _history(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _token(address):
    return base64.b64encode(json.dumps({"api_address": address, "api_url": address,
                                        "api_key": "bogus"}).encode()).decode()


@pytest.mark.slow
def test_offline_run_logs_everything_under_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("NEPTUNE_API_TOKEN", raising=False)
    monkeypatch.delenv("NEPTUNE_PROJECT", raising=False)
    cfg = config_lib.load(None, tiny_synthetic_overrides(tmp_path / "data") + [
        "tracking.neptune.mode=auto", "tracking.name=offline-test", "tracking.tags=[exp1]"])
    run_dir = tmp_path / "run"
    result = train_lib.train(cfg, run_dir, verbose=0)
    assert (run_dir / ".neptune" / "offline").is_dir()  # auto without a token -> offline, in the run dir
    fields = read_offline_log(run_dir)
    rows = _history(run_dir / "history.csv")
    metrics = json.loads((run_dir / "metrics.json").read_text())

    assert fields["sys/name"] == "offline-test"
    assert {"synthetic", "unet", "plain", "exp1"} <= set(fields["sys/tags"])
    assert fields["parameters/train/epochs"] == 2
    assert fields["parameters/data/window_size"] == 64
    assert fields["parameters/model/name"] == "unet"
    for key, column in [("training/epoch/val/iou", "val_iou"), ("training/epoch/train/loss", "loss"),
                        ("training/epoch/learning_rate", "learning_rate")]:
        series = fields[key]
        assert [step for step, _ in series] == [0, 1]
        assert [value for _, value in series] == pytest.approx([float(r[column]) for r in rows], abs=1e-6)
    assert fields["final/val/iou"] == pytest.approx(metrics["val"]["iou"])
    assert fields["final/epochs"] == 2 and fields["final/params"] == result["params"]
    assert fields["source/git_commit"]
    assert fields["source/versions/tensorflow"] and fields["source/versions/keras"]
    assert "validation/predictions" in fields and "files/history" in fields
    archive = fields["model/saved_model"]["file"]
    with zipfile.ZipFile(archive) as zipped:
        assert "export/saved_model.pb" in zipped.namelist()
    # Neptune's own Keras integration ran too (neptune-tensorflow-keras)
    assert any(key.startswith("keras/") for key in fields)


def test_debug_mode_fetches_logged_values(tmp_path):
    cfg = config_lib.from_dict({"tracking": {"neptune": {"mode": "debug"}, "name": "dbg"}})
    tracker = NeptuneTracker.start(cfg, tmp_path)
    assert tracker is not None and tracker.mode == "debug"
    tracker.log_epoch(0, {"loss": 0.9, "val_iou": 0.25, "learning_rate": 0.01})
    tracker.log_epoch(1, {"loss": 0.7, "val_iou": 0.5, "learning_rate": 0.005})
    tracker.log_final({"val": {"iou": 0.5}, "epochs": 2}, {})
    run = tracker.run
    assert list(run["training/epoch/val/iou"].fetch_values()["value"]) == [0.25, 0.5]
    assert list(run["training/epoch/learning_rate"].fetch_values()["step"]) == [0, 1]
    assert run["final/val/iou"].fetch() == 0.5
    assert run["parameters/train/optimizer"].fetch() == "adam"
    tracker.stop()


def test_unreachable_server_warns_once_and_logs_offline(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NEPTUNE_API_TOKEN", _token(f"http://127.0.0.1:{_free_port()}"))
    monkeypatch.setenv("NEPTUNE_PROJECT", "team/project")
    cfg = config_lib.from_dict({"tracking": {"neptune": {"mode": "auto"}}})
    assert resolve_neptune_mode(cfg) == ("async", "team/project")
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    started = time.time()
    with caplog.at_level(logging.WARNING, logger="tfseg.tracking"):
        tracker = NeptuneTracker.start(cfg, tmp_path)
    assert time.time() - started < 30  # the client alone retries for about a minute
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unreachable" in warnings[0] and "offline" in warnings[0]
    assert tracker is not None and tracker.mode == "offline"
    tracker.log_epoch(0, {"val_iou": 0.125})
    tracker.stop()
    assert read_offline_log(tmp_path)["training/epoch/val/iou"] == [(0, 0.125)]


def test_bad_token_and_off_mode(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NEPTUNE_API_TOKEN", "not-a-token")
    cfg = config_lib.from_dict({"tracking": {"neptune": {"mode": "async", "project": "a/b"}}})
    with caplog.at_level(logging.WARNING, logger="tfseg.tracking"):
        tracker = NeptuneTracker.start(cfg, tmp_path)
    assert tracker.mode == "offline"
    assert "not a valid Neptune API token" in caplog.text
    tracker.stop()
    assert NeptuneTracker.start(config_lib.load(None, ["tracking.neptune.mode=off"]), tmp_path) is None
    monkeypatch.delenv("NEPTUNE_API_TOKEN")
    assert resolve_neptune_mode(config_lib.Config())[0] == "offline"


def test_stop_status_marks_a_failed_run_and_uri_password_is_masked(tmp_path, monkeypatch):
    """The real client offline: ``stop(status="FAILED")`` sets ``sys/failed`` (what the client
    itself sets for an uncaught exception); a URI password never reaches the parameters."""
    monkeypatch.delenv("NEPTUNE_API_TOKEN", raising=False)
    cfg = config_lib.load(None, ["tracking.neptune.mode=offline", "tracking.mlflow.mode=off",
                                 "tracking.mlflow.uri=https://alice:s3cret@mlflow.example.org"])
    for name, status in (("ok", "FINISHED"), ("bad", "FAILED")):
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        tracker = NeptuneTracker.start(cfg, run_dir)
        tracker.log_epoch(0, {"loss": 0.5})
        tracker.stop(status=status)
        fields = read_offline_log(run_dir)
        assert fields["sys/failed"] is (status == "FAILED"), name
        assert fields["parameters/tracking/mlflow/uri"] == "https://alice:***@mlflow.example.org"
    with pytest.raises(ValueError, match="status"):
        NeptuneTracker(None, "offline", tmp_path).stop(status="failed")
