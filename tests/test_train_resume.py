"""Resume after SIGKILL: a real training process is killed mid-epoch and started again."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.data.fixtures import tiny_synthetic_overrides

REPO = Path(__file__).resolve().parents[1]


def _overrides(root):
    return tiny_synthetic_overrides(root) + [
        "data.train_windows_per_epoch=40",  # 20 steps per epoch: long enough to kill inside one
        "train.epochs=3",
        "export.enabled=false",
        "tracking.neptune.mode=offline",
        "train.early_stopping_patience=5",
    ]


def _command(run_dir, root):
    return [sys.executable, "-m", "tfseg.train", "--run-dir", str(run_dir), "--set", *_overrides(root)]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "NEPTUNE_API_TOKEN": "", "CUDA_VISIBLE_DEVICES": "",
            "PYTHONUNBUFFERED": "1"}


def _history(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path):
    run_dir, root = tmp_path / "run", tmp_path / "data"
    state_file = run_dir / "backup" / "state.json"
    log_path = tmp_path / "first.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(_command(run_dir, root), cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    in_second_epoch = False
    try:
        # Keras prints "Epoch 2/3" when the second epoch begins; the first epoch's state is saved
        # by then: kill right away, inside the second epoch (20 steps + validation to go)
        while time.time() < deadline and proc.poll() is None:
            if "Epoch 2/3" in log_path.read_text(errors="replace") and state_file.is_file():
                in_second_epoch = True
                break
            time.sleep(0.02)
        assert in_second_epoch, log_path.read_text(errors="replace")[-3000:]
        time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    state = json.loads(state_file.read_text())
    killed_at = state["epoch"]
    assert killed_at == 1  # killed inside the second epoch
    assert not (run_dir / "metrics.json").exists()  # really interrupted
    rows_before = _history(run_dir / "history.csv")
    assert len(rows_before) in (killed_at, killed_at + 1)  # at most one row ahead of the state

    done = subprocess.run(_command(run_dir, root), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    rows = _history(run_dir / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]  # exactly train.epochs, no duplicates
    for before, after in zip(rows_before[:killed_at], rows):
        assert before == after  # the completed epochs are kept untouched
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 3
    assert metrics["resumes"] == 1
    # total training time covers the epochs of both processes, not only the second one
    assert metrics["train_seconds"] >= state["train_seconds"] > 0
    final_state = json.loads(state_file.read_text())
    assert final_state["epoch"] == 3 and final_state["complete"] is True
    # the callbacks' state crossed the kill: best over ALL epochs, not only the resumed ones
    best_iou = max(float(r["val_iou"]) for r in rows)
    assert final_state["callbacks"]["checkpoint"]["best"] == pytest.approx(best_iou, abs=1e-6)
    assert final_state["callbacks"]["early_stopping"]["best"] == pytest.approx(best_iou, abs=1e-6)
    # no temporary files left, the best model loads
    assert not list(run_dir.glob(".*.tmp*")) and not list((run_dir / "backup").glob(".*.tmp*"))
    import keras

    import tfseg.models  # noqa: F401  registers the custom layers

    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    assert model.count_params() == metrics["params"]

    # Neptune offline log of both processes: the val/iou series equals history.csv
    from tfseg.tracking import read_offline_log

    fields = read_offline_log(run_dir)
    series = dict(fields["training/epoch/val/iou"])
    assert sorted(series) == [0, 1, 2]
    for row in rows:
        assert series[int(row["epoch"])] == pytest.approx(float(row["val_iou"]), abs=1e-6)
