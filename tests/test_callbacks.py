"""tfseg.callbacks: the Keras callbacks of a run, on tiny real models (no training run)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from tfseg._tf import tensorflow as tf  # noqa: I001
import keras

from tfseg.callbacks import (BestModelCheckpoint, EpochFigure, FiniteEarlyStopping, FiniteReduceLROnPlateau,
                             LearningRateLogger, SummedValidationMetrics, SynchronizedBatchNorm, TimeBudget,
                             TrainingState)
from tfseg.metrics import ConfusionMatrixMetric
from tfseg.train import OneCycle

from .budget_support import EpochTakes, FakeClock

X, Y = np.ones((8, 2), np.float32), np.zeros((8, 1), np.float32)  # 4 steps of 2 per epoch


def _dense(bias=0.0):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.layers[0].set_weights([np.zeros((2, 1), np.float32), np.full((1,), bias, np.float32)])
    return model


def _saved_bias(path):
    return float(keras.saving.load_model(path, compile=False).layers[0].get_weights()[1][0])


def test_learning_rate_logger_records_the_schedules_value_each_epoch():
    model = _dense()
    schedule = OneCycle(0.01, 8)  # two epochs of 4 steps
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
    history = model.fit(X, Y, batch_size=2, epochs=2, verbose=0, callbacks=[LearningRateLogger()])
    logged = history.history["learning_rate"]
    assert logged == pytest.approx([float(schedule(4)), float(schedule(8))], rel=1e-6)
    assert logged[0] > 10 * logged[1]  # the one-cycle peak, then annealed


def test_best_checkpoint_keeps_the_best_epoch_by_its_monitor(tmp_path):
    for mode, values, best_epoch in (("max", [0.2, 0.5, 0.4, 0.5], 1), ("min", [0.9, 0.7, 0.8, 0.3], 3)):
        path = tmp_path / mode / "model.keras"
        path.parent.mkdir()
        checkpoint = BestModelCheckpoint(path, "val_iou", mode)
        model = _dense()
        checkpoint.set_model(model)
        for epoch, value in enumerate(values):
            model.layers[0].set_weights([np.zeros((2, 1), np.float32), np.full((1,), float(epoch), np.float32)])
            checkpoint.on_epoch_end(epoch, {"loss": 1.0, "val_iou": value})
        assert _saved_bias(path) == best_epoch, mode  # the bias is the epoch whose model was saved
        assert checkpoint.best == values[best_epoch]
        assert sorted(p.name for p in path.parent.iterdir()) == ["model.keras"]  # no temporaries left


def test_best_checkpoint_undefined_value_saves_until_a_defined_one(tmp_path, caplog):
    path = tmp_path / "model.keras"
    checkpoint = BestModelCheckpoint(path, "val_iou")
    model = _dense(bias=7.0)
    checkpoint.set_model(model)
    with caplog.at_level(logging.WARNING, logger="tfseg.train"):
        checkpoint.on_epoch_end(0, {"val_iou": float("nan")})
    assert _saved_bias(path) == 7.0 and checkpoint.best is None
    assert "val_iou is undefined" in caplog.text
    model.layers[0].set_weights([np.zeros((2, 1), np.float32), np.full((1,), 8.0, np.float32)])
    checkpoint.on_epoch_end(1, {"val_iou": 0.1})  # a defined value replaces it
    model.layers[0].set_weights([np.zeros((2, 1), np.float32), np.full((1,), 9.0, np.float32)])
    checkpoint.on_epoch_end(2, {"val_iou": float("nan")})  # and a later NaN does not
    checkpoint.on_epoch_end(3, {"val_iou": float("inf")})
    assert _saved_bias(path) == 8.0 and checkpoint.best == 0.1


def test_best_checkpoint_missing_monitor_names_the_key_and_the_logs(tmp_path):
    checkpoint = BestModelCheckpoint(tmp_path / "model.keras", "val_iuo")
    checkpoint.set_model(_dense())
    with pytest.raises(ValueError, match=r"train.monitor.*'val_iuo'.*epoch 3.*logged: loss, val_iou"):
        checkpoint.on_epoch_end(2, {"val_iou": 0.5, "loss": 1.0})
    assert not (tmp_path / "model.keras").exists()


def _budget_fit(tmp_path, minutes, seconds, epochs=10):
    """model.fit for ``epochs`` epochs of 4 steps under a time budget; ``seconds(epoch)``: fake epoch times."""
    model = _dense()
    schedule = OneCycle(0.01, epochs * 4)
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
    clock = FakeClock()
    state = TrainingState(tmp_path / "backup", {}, schedule=schedule, clock=clock)
    budget = TimeBudget(minutes, state, steps_per_epoch=4, max_epochs=epochs)
    layouts = []  # the schedule's length after each epoch's budget check
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: layouts.append(schedule.total_steps))
    history = model.fit(X, Y, batch_size=2, epochs=epochs, verbose=0,
                        callbacks=[EpochTakes(clock, seconds), budget, record, state])
    return history, budget, state, layouts


def test_time_budget_stops_at_the_end_of_the_epoch_it_runs_out_in(tmp_path):
    # 2 minutes; the first epoch (tracing) 90 s, then 10 s: laid out for 2 epochs after the
    # first (the first epoch's time only), 4 after the second (the later epochs' mean);
    # 90 + 10 + 10 = 110 < 120 s: the 4th epoch ends at 120 s, where the budget ran out
    history, budget, state, layouts = _budget_fit(tmp_path, 2, lambda epoch: 90.0 if epoch == 0 else 10.0)
    assert len(history.history["loss"]) == 4
    assert state.stop_reason == "max_minutes" and state.seconds == pytest.approx(120.0)
    assert budget.times == [90.0, 10.0, 10.0, 10.0] and budget.planned_epochs == 4
    assert layouts == [2 * 4, 4 * 4, 4 * 4, 4 * 4]  # in the end the schedule spans the epochs run
    saved = json.loads((tmp_path / "backup" / "state.json").read_text())
    assert saved["epoch"] == 4 and saved["complete"] is True and saved["stop_reason"] == "max_minutes"
    assert saved["schedule"]["total_steps"] == 16.0 and saved["epoch_seconds"] == [90.0, 10.0, 10.0, 10.0]


def test_time_budget_never_plans_more_than_the_epochs(tmp_path):
    history, budget, state, layouts = _budget_fit(tmp_path, 60, 1.0, epochs=3)
    assert len(history.history["loss"]) == 3 and budget.planned_epochs == 3
    assert layouts == [3 * 4] * 3
    assert state.stop_reason == "epochs"


def test_training_state_saves_points_at_complete_weights_and_restores(tmp_path):
    backup = tmp_path / "backup"
    model = _dense(bias=3.0)
    model.compile(optimizer="sgd", loss="mse")
    checkpoint = BestModelCheckpoint(tmp_path / "model.keras", "val_iou")
    clock = FakeClock()
    state = TrainingState(backup, {"checkpoint": checkpoint}, clock=clock)
    state.set_model(model)
    for epoch in range(2):
        state.on_epoch_begin(epoch)
        clock.now += 5.0
        checkpoint.best = 0.25 * (epoch + 1)
        state.on_epoch_end(epoch)
    saved = TrainingState.load(backup)
    assert saved["epoch"] == 2 and saved["weights"] == "epoch-0002.weights.h5" and saved["complete"] is False
    assert saved["train_seconds"] == 10.0 and saved["callbacks"] == {"checkpoint": {"best": 0.5}}
    assert sorted(p.name for p in backup.iterdir()) == ["epoch-0002.weights.h5", "state.json"]  # the older one went

    # a second process: the weights, the counters of the tracked callbacks and the time carry over
    other = _dense(bias=0.0)
    other.compile(optimizer="sgd", loss="mse")
    new_checkpoint = BestModelCheckpoint(tmp_path / "model.keras", "val_iou")
    resumed = TrainingState(backup, {"checkpoint": new_checkpoint}, previous=saved, clock=clock)
    resumed.restore_weights(other)
    resumed.on_train_begin()
    assert other.layers[0].get_weights()[1][0] == 3.0
    assert new_checkpoint.best == 0.5 and resumed.seconds == 10.0 and resumed.resumes == 1

    (backup / "epoch-0002.weights.h5").unlink()
    with pytest.raises(ValueError, match=r"state.json names .*epoch-0002.weights.h5, which is missing"):
        TrainingState.load(backup)
    assert TrainingState.load(tmp_path / "nothing") is None


def test_early_stopping_skips_a_nan_first_value_and_never_saves_a_nan_best(tmp_path):
    """Keras' EarlyStopping takes a NaN first value as the best and nothing improves on it: the
    run would stop after `patience` epochs while val_iou rises, and the NaN best would be saved
    in and restored from state.json."""
    model = _dense()
    model.compile(optimizer="sgd", loss="mse")
    stopping = FiniteEarlyStopping("val_iou", patience=2, mode="max")
    state = TrainingState(tmp_path / "backup", {"early_stopping": stopping}, clock=FakeClock())
    for callback in (stopping, state):
        callback.set_model(model)
    model.stop_training = False
    stopping.on_train_begin()
    state.on_epoch_begin(0)
    stopping.on_epoch_end(0, {"val_iou": float("nan")})
    state.on_epoch_end(0)
    assert stopping.best is None and stopping.wait == 1  # a NaN epoch counts towards the patience
    assert TrainingState.load(tmp_path / "backup")["callbacks"] == {"early_stopping": {"wait": 1, "best_epoch": 0}}
    for epoch, value in enumerate([0.1, 0.2, 0.3, 0.4], start=1):
        stopping.on_epoch_end(epoch, {"val_iou": value})
        assert stopping.best == value and not model.stop_training
    for epoch in (5, 6):  # undefined again: no improvement, and the patience runs out
        stopping.on_epoch_end(epoch, {"val_iou": float("nan")})
    assert stopping.best == 0.4 and model.stop_training and stopping.stopped_epoch == 6

    # an older resume state holding a NaN best: restored, then beaten by the first defined value
    resumed = FiniteEarlyStopping("val_iou", patience=2, mode="max")
    resumed.set_model(model)
    model.stop_training = False
    resumed.on_train_begin()
    TrainingState(tmp_path / "other", {"early_stopping": resumed},
                  previous={"resumes": 0, "callbacks": {"early_stopping": {"best": float("nan"), "wait": 1}}}
                  ).on_train_begin()
    resumed.on_epoch_end(3, {"val_iou": 0.05})
    assert resumed.best == 0.05 and resumed.wait == 0


def test_reduce_lr_on_plateau_skips_nan_values():
    model = _dense()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    plateau = FiniteReduceLROnPlateau("val_loss", patience=2, factor=0.5, mode="min")
    plateau.set_model(model)
    plateau.on_train_begin()
    for epoch, value in enumerate([float("nan"), 0.9, 0.8, 0.7]):
        plateau.on_epoch_end(epoch, {"val_loss": value})
    assert plateau.best == pytest.approx(0.7) and plateau.wait == 0
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.1)


def test_epoch_figure_writes_one_png_per_epoch(tmp_path):
    images = np.random.default_rng(0).uniform(0, 1, (4, 16, 16, 3)).astype(np.float32)
    masks = (images[..., :1] > 0.5).astype(np.uint8)
    dataset = tf.data.Dataset.from_tensor_slices((images, masks)).batch(2)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs))
    figure = EpochFigure(dataset, tmp_path / "figures", ["r", "g", "b"], num_tiles=2)
    figure.set_model(model)
    figure.on_epoch_end(0)
    figure.on_epoch_end(1)
    written = sorted((tmp_path / "figures").iterdir())
    assert [p.name for p in written] == ["epoch-0001.png", "epoch-0002.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    none = EpochFigure(dataset, tmp_path / "off", ["r", "g", "b"], num_tiles=0)
    none.set_model(model)
    none.on_epoch_end(0)
    assert not (tmp_path / "off").exists()


def test_figures_draw_more_than_ten_classes_in_distinct_colours(tmp_path):
    """tab10 was the default: an 11-class multi-label figure crashed (matmul of 11 masks by 10
    colours) at the end of training, and multiclass classes 10+ were drawn black."""
    from types import SimpleNamespace

    from tfseg.figures import card_colours, colourize, distinct_colours

    classes = 11
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
    masks = (rng.random((2, 16, 16, classes)) < 0.3).astype(np.uint8)
    dataset = tf.data.Dataset.from_tensor_slices((images, masks)).batch(2)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(classes, 1, activation="sigmoid")(inputs))
    figure = EpochFigure(dataset, tmp_path / "figures", ["r", "g", "b"], num_tiles=2, multilabel=True)
    figure.set_model(model)
    figure.on_epoch_end(0)
    assert (tmp_path / "figures" / "epoch-0001.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for count in (3, 12, 25):
        colours = distinct_colours(count)
        assert len(set(colours)) == count and (0.0, 0.0, 0.0) not in colours
    labels = np.arange(12).reshape(3, 4)
    assert np.all(colourize(labels, distinct_colours(12)).sum(-1) > 0)  # class 11: not black
    card = SimpleNamespace(classes=["water", "road"], colours={"water": "#0000ff", "road": "#ff0000"},
                           task="multiclass")
    assert card_colours(card) == [(0.0, 0.0, 1.0), (1.0, 0.0, 0.0)]
    binary = SimpleNamespace(classes=["building"], colours={"building": "#ffffff"}, task="binary")
    assert card_colours(binary)[1] == (1.0, 1.0, 1.0) and len(card_colours(binary)) == 2
    coloured = EpochFigure(dataset, tmp_path / "card", ["r", "g", "b"], num_tiles=1, multilabel=True,
                           colours=["#ff0000"] * 3)  # fewer colours than classes: completed, no crash
    coloured.set_model(model)
    coloured.on_epoch_end(0)
    assert (tmp_path / "card" / "epoch-0001.png").is_file()


def test_synchronized_batch_norm_only_while_an_epoch_trains():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()])
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.BatchNormalization()(inner(inputs)))
    norms = [layer for layer in model._flatten_layers(include_self=False)
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 2  # one nested in a sub-model
    callback = SynchronizedBatchNorm()
    callback.set_model(model)
    callback.on_epoch_begin(0)
    assert all(layer.synchronized for layer in norms)
    callback.on_epoch_end(0)
    assert not any(layer.synchronized for layer in norms)
    callback.on_epoch_begin(1)
    callback.on_train_end()
    assert not any(layer.synchronized for layer in norms)


def test_summed_validation_metrics_rewrites_the_val_scores_from_the_matrix():
    metric = ConfusionMatrixMetric("iou", num_classes=1, name="iou")
    truth = np.array([[1, 1, 0, 0]], np.float32)
    metric.update_state(truth, np.array([[0.9, 0.2, 0.8, 0.1]], np.float32))  # TP 1, FN 1, FP 1: IoU 1/3
    callback = SummedValidationMetrics([metric, keras.metrics.MeanSquaredError(name="mse")],
                                       tf.distribute.get_strategy())
    assert callback.metrics == [metric]  # only the confusion-matrix metrics
    logs = {"val_iou": 0.9, "iou": 0.7, "val_loss": 2.0}
    callback.on_epoch_end(0, logs)
    assert logs == {"val_iou": pytest.approx(1 / 3), "iou": 0.7, "val_loss": 2.0}
    training_only = {"iou": 0.7}
    callback.on_epoch_end(0, training_only)
    assert training_only == {"iou": 0.7}
