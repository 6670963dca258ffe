"""tfseg.schedules: ResizableSchedule, the base the time budget lays out again during training
(its two concrete schedules, OneCycle and WarmupCosine, live in tfseg.train)."""
from __future__ import annotations

import numpy as np
import pytest

from tfseg._tf import tensorflow as tf  # noqa: I001
import keras

from tfseg.schedules import ResizableSchedule
from tfseg.train import OneCycle, WarmupCosine

LR = 0.01
# name -> (a 100-step schedule with a 30-step warm-up, its value at the end of the curve)
SCHEDULES = {
    "onecycle": (lambda: OneCycle(LR, 100), LR / 1e4),  # warm-up: pct_start 0.3 of the steps
    "cosine": (lambda: WarmupCosine(LR, 100, warmup_steps=30, alpha=0.01), LR * 0.01),
}


def _curve(schedule, steps):
    return np.array([float(schedule(step)) for step in range(steps)])


def test_base_keeps_at_least_one_step_and_never_ends_before_now():
    schedule = ResizableSchedule(0, 5)
    assert schedule.total_steps == 1.0 and schedule.warmup_steps == 5.0  # a zero-step run: one step
    schedule.resize(10, step=25)  # the warm-up is over: kept, and the end is never before now
    assert schedule.state() == {"total_steps": 25.0, "warmup_steps": 5.0}
    no_warmup = ResizableSchedule(10, 0)
    no_warmup.resize(-3, step=0)
    assert no_warmup.total_steps == 1.0
    # in the warm-up the new length decides it: a subclass must say how
    with pytest.raises(NotImplementedError):
        ResizableSchedule(100, 30).resize(50, step=10)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_resized_curve_spans_the_new_length(name):
    make, end = SCHEDULES[name]
    schedule = make()
    before = _curve(schedule, 101)
    assert int(np.argmax(before)) == 30 and before[100] == pytest.approx(end, rel=1e-3)
    schedule.resize(40, step=10)  # in the warm-up: both move with the new length
    warmup = int(schedule.warmup_steps)
    assert schedule.total_steps == 40.0 and 10 <= warmup < 30
    after = _curve(schedule, 61)
    # peak where the new warm-up ends, the final value exactly at the new end, flat after it
    assert int(np.argmax(after)) == warmup and after[warmup] == pytest.approx(LR, rel=1e-4)
    assert after[40] == pytest.approx(end, rel=1e-3) and after[39] > after[40]
    np.testing.assert_allclose(after[40:], end, rtol=1e-3)
    # rising, then falling, and continuous: no step moves by more than a fifth of the peak
    assert (np.diff(after[: warmup + 1]) > 0).all() and (np.diff(after[warmup:41]) < 0).all()
    assert np.abs(np.diff(after)).max() < 0.2 * LR
    # the old layout had not annealed by then
    assert before[40] > 10 * after[40]


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_resize_before_the_warmup_would_end_does_not_cut_it_off(name):
    schedule = SCHEDULES[name][0]()
    schedule.resize(12, step=9)  # the budget ends before the planned warm-up (30, or 30% of 12 < 9)
    assert schedule.state() == {"total_steps": 12.0, "warmup_steps": 9.0}
    curve = _curve(schedule, 13)
    assert (np.diff(curve[:10]) > 0).all()  # steps 0..9 still rising: the warm-up ends now, at the peak
    assert curve[9] == pytest.approx(LR, rel=1e-4) and curve[12] == pytest.approx(SCHEDULES[name][1], rel=1e-3)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_restored_state_gives_the_same_curve(name):
    resized = SCHEDULES[name][0]()
    resized.resize(60, step=45)
    fresh = SCHEDULES[name][0]()
    assert not np.allclose(_curve(fresh, 80), _curve(resized, 80))
    fresh.restore(resized.state())
    assert fresh.state() == resized.state()
    np.testing.assert_allclose(_curve(fresh, 80), _curve(resized, 80), rtol=1e-6)


def test_a_compiled_step_reads_the_new_layout_without_retracing():
    """The lengths are variables: a traced train step sees a resize at its next call."""
    schedule = OneCycle(LR, 100)
    lr_at = tf.function(lambda step: schedule(step))
    before = float(lr_at(tf.constant(50)))
    schedule.resize(50, step=35)
    after = float(lr_at(tf.constant(50)))
    assert lr_at.experimental_get_tracing_count() == 1
    assert before > 0.5 * LR and after == pytest.approx(LR / 1e4, rel=1e-3)
    assert after == pytest.approx(float(schedule(50)), rel=1e-6)


def test_optimizer_follows_a_resize_during_fit():
    """Through a real optimizer and model.fit: after the resize the learning rate the optimizer
    applies is the new layout's at its own step count."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    schedule = WarmupCosine(LR, 20, warmup_steps=0)
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
    x, y = np.ones((8, 2), np.float32), np.zeros((8, 1), np.float32)
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)  # 4 steps
    schedule.resize(4, step=4)  # the budget is spent: the schedule ends now
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(LR * 0.01, rel=1e-3)
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 8
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(LR * 0.01, rel=1e-3)


def test_warmup_longer_than_the_run_is_refused_or_capped_at_half(caplog):
    """Fixed epochs: the config refuses a warm-up as long as the run (it would never end); under
    train.max_minutes the first layout already caps it at half the steps, as every resize does."""
    from tfseg import config as config_lib
    from tfseg.train import make_schedule

    with pytest.raises(config_lib.ConfigError, match="train.warmup_epochs' and 'train.epochs'"):
        config_lib.load(None, ["train.epochs=4", "train.warmup_epochs=10"])
    budget = config_lib.load(None, ["train.epochs=4", "train.warmup_epochs=10", "train.max_minutes=5",
                                    "train.learning_rate=0.01"]).train
    with caplog.at_level("WARNING", logger="tfseg.train"):
        schedule = make_schedule(budget, 10)
    assert schedule.state() == {"total_steps": 40.0, "warmup_steps": 20.0}
    assert "capped at half" in caplog.text
    curve = _curve(schedule, 41)
    assert curve[20] == pytest.approx(0.01, rel=1e-4) and curve[40] == pytest.approx(0.01 * 0.01, rel=1e-3)
    assert np.all(np.diff(curve[:21]) > 0) and np.all(np.diff(curve[20:]) < 0)  # rises, then decays
    schedule.resize(30, step=10)  # a shorter budget: still half of the new length
    assert schedule.warmup_steps == 15.0
    short = make_schedule(config_lib.load(None, ["train.epochs=4", "train.warmup_epochs=1",
                                                 "train.max_minutes=5"]).train, 10)
    assert short.warmup_steps == 10.0  # a warm-up within half the run is kept as asked
