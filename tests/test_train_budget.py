"""train.max_minutes: time budgets with a resizable schedule (epoch times from a fake clock)."""
from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest

from tfseg import config as config_lib
from tfseg import train as train_lib
from tfseg.data.class_index import ClassIndex, class_weights
from tfseg.model_card import load_model_card

from .budget_support import EpochTakes, FakeClock
from .data.fixtures import tiny_synthetic_overrides

REPO = Path(__file__).resolve().parents[1]
STEPS = 4  # tiny_synthetic_overrides: 8 windows per epoch, batch 2


def _history(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_budget_stops_after_the_epoch_it_runs_out_and_the_schedule_spans_the_epochs_run(tmp_path, caplog):
    overrides = tiny_synthetic_overrides(tmp_path / "data") + [
        "train.epochs=10", "train.max_minutes=4", "train.schedule=onecycle", "train.learning_rate=0.01",
        "export.enabled=false", "tracking.neptune.mode=off", "train.class_weights=auto", "data.sampling=balanced"]
    cfg = config_lib.load(None, overrides)
    clock = FakeClock()
    # first epoch 90 s (tracing), then 50 s: laid out for 3 epochs after the first, 4 after the
    # second; 90 + 50 + 50 = 190 < 240 s, the 4th epoch ends at 240 s: the budget ran out in it
    times = lambda epoch: 90.0 if epoch == 0 else 50.0  # noqa: E731
    with caplog.at_level(logging.INFO, logger="tfseg.train"):
        result = train_lib.train(cfg, tmp_path / "run", verbose=0, clock=clock, callbacks=[EpochTakes(clock, times)])
    assert "schedule laid out for 3 epochs" in caplog.text and "schedule laid out for 4 epochs" in caplog.text
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs"] == 4 and result["epochs"] == 4
    assert metrics["stop_reason"] == "max_minutes" and metrics["max_minutes"] == 4.0
    assert metrics["schedule_epochs"] == 4.0  # the schedule spans exactly the epochs run
    assert metrics["train_seconds"] == pytest.approx(240.0)
    assert result["steps"] == 4 * STEPS
    lrs = [float(r["learning_rate"]) for r in _history(tmp_path / "run" / "history.csv")]
    assert lrs[-1] == pytest.approx(0.01 / 1e4, rel=1e-3)  # one-cycle ended: fully annealed
    assert max(lrs) > 0.005  # and it went through its peak
    state = json.loads((tmp_path / "run" / "backup" / "state.json").read_text())
    assert state["epoch_seconds"] == [90.0, 50.0, 50.0, 50.0]
    assert state["schedule"]["total_steps"] == 4 * STEPS
    # train.class_weights=auto: from the class index stored in the run, reported and on the model card
    index = ClassIndex.load(tmp_path / "run" / "class_index.npz")
    weights, _ = class_weights(index, "median_frequency")
    assert metrics["class_weights"] == dict(zip(["background", "building"], weights))
    assert set(metrics["class_frequencies"]) == {"background", "building"}
    card = load_model_card(tmp_path / "run")
    assert card.class_weights == pytest.approx(list(weights))
    assert card.class_frequencies == metrics["class_frequencies"]
    assert load_model_card(tmp_path / "run" / "model.keras").class_weights == card.class_weights


def test_budget_shorter_than_one_epoch_warns_and_stops(tmp_path, caplog):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    clock = FakeClock()
    schedule = train_lib.make_schedule(config_lib.from_dict({"train": {"epochs": 5}}).train, 10)
    state = train_lib.TrainingState(tmp_path, {}, schedule=schedule, clock=clock)
    budget = train_lib.TimeBudget(0.5, state, steps_per_epoch=10, max_epochs=5)
    for callback in (state, budget):
        callback.set_model(model)
    state.on_epoch_begin(0)
    clock.now = 75.0
    with caplog.at_level(logging.WARNING, logger="tfseg.train"):
        budget.on_epoch_end(0)
    assert model.stop_training and state.stop_reason == "max_minutes"
    assert "train.max_minutes=0.5 (30 s) is shorter than one epoch: one epoch is run (it took 75.0 s)" in caplog.text


def test_resizable_schedules_keep_the_warmup_and_serialize():
    cosine = train_lib.WarmupCosine(0.01, total_steps=100, warmup_steps=30)
    cosine.resize(40, step=10)  # in warm-up: shortened to half of the new length, not before now
    assert cosine.state() == {"total_steps": 40.0, "warmup_steps": 20.0}
    assert float(cosine(20)) == pytest.approx(0.01) and float(cosine(40)) == pytest.approx(1e-4, rel=1e-3)
    cosine.resize(30, step=25)  # warm-up over: kept
    assert cosine.warmup_steps == 20.0
    short = train_lib.WarmupCosine(0.01, total_steps=100, warmup_steps=30)
    short.resize(8, step=6)  # the budget ends before the planned warm-up would: it ends now
    assert short.state() == {"total_steps": 8.0, "warmup_steps": 6.0}
    assert float(short(8)) == pytest.approx(1e-4, rel=1e-3)
    one = train_lib.OneCycle(0.01, 100)
    one.resize(50, step=5)
    assert one.state() == {"total_steps": 50.0, "warmup_steps": 15.0}
    back = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(one))
    assert back.state() == one.state() and float(back(15)) == pytest.approx(0.01)
    with pytest.raises(config_lib.ConfigError, match="train.max_minutes.*multi_worker"):
        config_lib.from_dict({"train": {"max_minutes": 5, "strategy": "multi_worker"}})


@pytest.mark.slow
def test_sigkill_then_resume_keeps_the_budget(tmp_path):
    run_dir = tmp_path / "run"
    overrides = tiny_synthetic_overrides(tmp_path / "data") + [
        "train.epochs=10", "train.max_minutes=4", "export.enabled=false", "tracking.neptune.mode=off"]
    # every epoch takes 60 fake seconds (and ~1 s of real time, so it can be killed inside one)
    command = [sys.executable, "-m", "tests.budget_support", str(run_dir), "60", "0.25", *overrides]
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    state_file = run_dir / "backup" / "state.json"
    log_path = tmp_path / "first.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if state_file.is_file() and json.loads(state_file.read_text() or "{}").get("epoch") == 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, log_path.read_text(errors="replace")[-3000:]
    killed = json.loads(state_file.read_text())
    assert killed["epoch"] == 2 and killed["train_seconds"] == 120.0  # killed inside the third epoch
    assert killed["schedule"]["total_steps"] == 4 * STEPS  # laid out for 4 epochs of 60 s

    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # the second process counted the first one's 120 s: 2 more epochs, not 4
    assert metrics["epochs"] == 4 and metrics["resumes"] == 1
    assert metrics["train_seconds"] == pytest.approx(240.0) and metrics["stop_reason"] == "max_minutes"
    assert metrics["schedule_epochs"] == 4.0
    assert [int(r["epoch"]) for r in _history(run_dir / "history.csv")] == [0, 1, 2, 3]
    final = json.loads(state_file.read_text())
    assert final["complete"] is True and final["stop_reason"] == "max_minutes"
    assert final["epoch_seconds"] == [60.0] * 4
