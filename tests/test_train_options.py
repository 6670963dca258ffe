"""Training options: optimizers, schedules, seeds, config validation, run-dir refusal (CLI)."""
from __future__ import annotations

import csv
from pathlib import Path

import keras
import pytest

from tests.data.fixtures import tiny_synthetic_overrides
from tfseg import config as config_lib
from tfseg import train as train_lib
from tfseg.tracking import prepare_run_dir, save_model_atomic


def _cfg(tmp_path, *extra):
    base = tiny_synthetic_overrides(tmp_path / "data") + ["export.enabled=false", "tracking.neptune.mode=off"]
    return config_lib.load(None, base + list(extra))


def _history(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_same_seed_same_metrics_on_cpu(tmp_path):
    cfg = _cfg(tmp_path, "train.seed=7", "train.deterministic=true")
    first = train_lib.train(cfg, tmp_path / "a", verbose=0)
    second = train_lib.train(cfg, tmp_path / "b", verbose=0)
    rows_a, rows_b = _history(tmp_path / "a" / "history.csv"), _history(tmp_path / "b" / "history.csv")
    assert len(rows_a) == len(rows_b) == 2
    for row_a, row_b in zip(rows_a, rows_b):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            assert float(row_a[key]) == pytest.approx(float(row_b[key]), abs=1e-6), key
    for key, value in first["val"].items():
        assert second["val"][key] == pytest.approx(value, abs=1e-6)
    # and the seed matters: another seed gives other weights, hence another training loss
    third = train_lib.train(_cfg(tmp_path, "train.seed=8", "train.deterministic=true"), tmp_path / "c", verbose=0)
    rows_c = _history(tmp_path / "c" / "history.csv")
    assert abs(float(rows_c[0]["loss"]) - float(rows_a[0]["loss"])) > 1e-6
    assert third["epochs"] == 2


@pytest.mark.parametrize(("key", "value", "valid"), [
    ("train.optimizer", "lion", ["adam", "adamw", "sgd"]),
    ("train.schedule", "poly", ["constant", "cosine", "onecycle"]),
    ("train.strategy", "tpu", ["default", "mirrored", "multi_worker"]),
])
def test_cli_unknown_choice_lists_valid_ones(tmp_path, capsys, key, value, valid):
    code = train_lib.main(["--run-dir", str(tmp_path / "run"), "--set", f"{key}={value}"])
    err = capsys.readouterr().err
    assert code == 2
    assert key in err and repr(value) in err
    for name in valid:
        assert name in err
    assert not (tmp_path / "run").exists()


def test_cli_reduce_lr_needs_constant_schedule(tmp_path, capsys):
    code = train_lib.main(["--run-dir", str(tmp_path / "run"), "--set", "train.reduce_lr_patience=2",
                           "train.schedule=cosine"])
    err = capsys.readouterr().err
    assert code == 2 and "train.reduce_lr_patience" in err and "constant" in err
    with pytest.raises(config_lib.ConfigError, match="train.lr_scaling"):
        config_lib.load(None, ["train.lr_scaling=linear"])
    config_lib.load(None, ["train.reduce_lr_patience=2", "train.schedule=constant"])  # accepted


def test_cli_refuses_resume_with_different_config(tmp_path, capsys):
    run_dir = tmp_path / "run"
    prepare_run_dir(run_dir, _cfg(tmp_path), overwrite=False)
    overrides = tiny_synthetic_overrides(tmp_path / "data") + [
        "export.enabled=false", "tracking.neptune.mode=off", "train.learning_rate=0.01", "model.filters=8"]
    code = train_lib.main(["--quiet", "--run-dir", str(run_dir), "--set", *overrides])
    err = capsys.readouterr().err
    assert code == 2
    assert str(run_dir) in err and "train.learning_rate" in err and "model.filters" in err
    assert "--overwrite" in err
    assert not (run_dir / "history.csv").exists()


def test_reduce_lr_on_plateau_lowers_the_learning_rate(tmp_path):
    # a learning rate of 1e-9 (no batch norm statistics either) cannot move val_iou: a plateau
    cfg = _cfg(tmp_path, "train.schedule=constant", "train.learning_rate=1e-9", "train.reduce_lr_patience=1",
               "train.reduce_lr_factor=0.5", "train.epochs=3", "train.monitor=val_iou",
               "model.batch_norm=false")
    train_lib.train(cfg, tmp_path / "run", verbose=0)
    lrs = [float(r["learning_rate"]) for r in _history(tmp_path / "run" / "history.csv")]
    assert lrs[0] == pytest.approx(1e-9)
    assert lrs[-1] < lrs[0]


def test_schedules_and_optimizers():
    train_cfg = config_lib.Config().train
    for name, cls in [("adam", keras.optimizers.Adam), ("adamw", keras.optimizers.AdamW),
                      ("sgd", keras.optimizers.SGD)]:
        opt = train_lib.make_optimizer(config_lib.from_dict({"train": {"optimizer": name, "clipnorm": 1.0}}).train, 10)
        assert isinstance(opt, cls) and opt.clipnorm == 1.0
    one = train_lib.make_schedule(config_lib.from_dict({"train": {"schedule": "onecycle", "epochs": 10,
                                                                   "learning_rate": 0.01}}).train, 10)
    values = [float(one(step)) for step in (0, 30, 99)]
    assert values[0] == pytest.approx(0.01 / 25, rel=1e-4)
    assert values[1] == pytest.approx(0.01, rel=1e-4)
    assert values[2] < 0.0001
    cos = train_lib.make_schedule(config_lib.from_dict({"train": {"schedule": "cosine", "epochs": 10,
                                                                   "warmup_epochs": 1, "learning_rate": 0.01}}).train, 10)
    assert float(cos(0)) < float(cos(10)) == pytest.approx(0.01, rel=1e-4)
    assert float(cos(100)) < 0.001
    assert train_lib.make_schedule(train_cfg.__class__(schedule="constant", learning_rate=0.3), 5) == 0.3
    scaled = train_lib._scaled_lr(config_lib.from_dict(
        {"train": {"batch_per_replica": True, "lr_scaling": "linear", "learning_rate": 0.01}}).train, 4)
    assert scaled.learning_rate == pytest.approx(0.04)
    sqrt = train_lib._scaled_lr(config_lib.from_dict(
        {"train": {"batch_per_replica": True, "lr_scaling": "sqrt", "learning_rate": 0.01}}).train, 4)
    assert sqrt.learning_rate == pytest.approx(0.02)


def test_atomic_model_save_keeps_previous_file_on_failure(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    target = tmp_path / "model.keras"
    save_model_atomic(model, target)
    before = target.read_bytes()

    class Broken(keras.Model):
        def save(self, *args, **kwargs):  # a writer dying half-way: partial bytes, then an error
            Path(args[0]).write_bytes(b"PK\x03\x04 truncated")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_model_atomic(Broken(), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]
    assert keras.saving.load_model(target).count_params() == 8


def test_mirrored_strategy_runs_on_cpu(tmp_path):
    result = train_lib.train(_cfg(tmp_path, "train.strategy=mirrored", "train.epochs=1"), tmp_path / "run", verbose=0)
    assert result["replicas"] == 1 and result["epochs"] == 1 and result["global_batch_size"] == 2
    assert (tmp_path / "run" / "model.keras").is_file()


def test_multi_worker_needs_tf_config_and_damaged_backup_is_named(tmp_path, monkeypatch):
    from tfseg.callbacks import ResumeStateError
    from tfseg.errors import TfsegError

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(train_lib.StrategyError, match="TF_CONFIG"):
        train_lib.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(train_lib.StrategyError, match="TF_CONFIG is not valid JSON"):
        train_lib.make_strategy("multi_worker")
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "state.json").write_text('{"epoch": 3, "weights": "epoch-0003.weights.h5"}')
    with pytest.raises(ResumeStateError, match="epoch-0003.weights.h5.*missing"):
        train_lib.TrainingState.load(backup)
    (backup / "state.json").write_text('{"epoch": 3')
    with pytest.raises(ResumeStateError, match=r"state.json cannot be read .*the backup is damaged"):
        train_lib.TrainingState.load(backup)
    assert issubclass(train_lib.StrategyError, TfsegError) and issubclass(ResumeStateError, TfsegError)


class _FakeTracker:
    def __init__(self, fail=False):
        self.stopped, self.fail = [], fail

    def stop(self, status="FINISHED"):
        self.stopped.append(status)
        if self.fail:
            raise RuntimeError("tracking service down")


@pytest.mark.parametrize("error,status", [(RuntimeError("out of memory"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_a_training_that_raises_ends_the_trackers_as_failed(monkeypatch, error, status):
    """The trackers start with the callbacks; when anything after that raises they are ended as
    FAILED (KILLED on Ctrl-C), not left RUNNING, and a tracker's own error never hides the
    training's."""
    neptune, mlflow = _FakeTracker(fail=True), _FakeTracker()

    def build_callbacks(run, extra, clock):
        run.tracker, run.mlflow_tracker = neptune, mlflow
        return []

    def fit(run, callbacks, verbose):
        raise error

    cfg = config_lib.load(None)
    for name in ("_read_data", "_build_datasets", "_build_model"):
        monkeypatch.setattr(train_lib, name, lambda *args: None)
    monkeypatch.setattr(train_lib, "_build_callbacks", build_callbacks)
    monkeypatch.setattr(train_lib, "_fit", fit)
    with pytest.raises(type(error)) as raised:
        train_lib.train(cfg, "unused", verbose=0)
    assert raised.value is error
    assert neptune.stopped == [status] and mlflow.stopped == [status]


def test_monitor_metric_never_logged_is_an_error_after_the_first_epoch(tmp_path):
    cfg = _cfg(tmp_path, "train.monitor=val_iuo", "train.epochs=3")
    with pytest.raises(ValueError, match=r"'train.monitor': metric 'val_iuo' is not in the logs of epoch 1; "
                                         r"logged: .*\bval_iou\b"):
        train_lib.train(cfg, tmp_path / "run", verbose=0)
    assert len(_history(tmp_path / "run" / "history.csv")) <= 1  # stopped at the first epoch's end


def test_plain_unet_gets_every_model_field_and_refuses_unknown_options():
    """model.options (and the encoder/decoder fields) reached the builder only with a backbone: a
    plain UNet dropped a typo in model.options without a word."""
    from tfseg.models import build_model

    cfg = config_lib.load(None, ["model.options.dropuot=0.2"])
    kwargs = train_lib.model_kwargs(cfg.model, cfg.data.task)
    assert kwargs["dropuot"] == 0.2 and {"encoder_weights", "encoder_freeze", "decoder_filters"} <= set(kwargs)
    with pytest.raises(ValueError, match=r"model.options: unknown option\(s\) \['dropuot'\] for model.name='unet'"):
        build_model("unet", input_shape=(None, None, 3), classes=1, **kwargs)
    plain = config_lib.load(None, ["model.depth=2", "model.filters=4"])
    model = build_model("unet", input_shape=(None, None, 3), classes=1, **train_lib.model_kwargs(plain.model))
    assert model.get_config()["tfseg_multiple"] == 4
