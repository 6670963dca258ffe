"""Train a segmentation model.

``python -m tfseg.train [--config PATH] [--set KEY=VALUE ...] [--run-dir DIR] [--overwrite]``

With no arguments, trains ``configs/default.yaml``: a UNet on the embedded synthetic
georeferenced building dataset (generated on first use under ``data/synthetic``).

Run again with the same command (same ``--run-dir`` and config) after a crash, a SIGKILL or a
power loss, it resumes from the last completed epoch and ends with ``train.epochs`` epochs in
``history.csv``; every checkpoint is written atomically. ``train.strategy``: ``default``,
``mirrored`` (all local GPUs) or ``multi_worker`` (``TF_CONFIG``; the chief writes the run
directory). ``data.batch_size`` is the global batch. Neptune: ``tracking.neptune.mode``; MLflow:
``tracking.mlflow.mode`` (:mod:`tfseg.tracking_mlflow`).

Example:
    python -m tfseg.train --run-dir runs/unet --set train.epochs=20 train.schedule=onecycle
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

from tfseg._tf import tensorflow as tf

import keras
import numpy as np

from . import config as config_lib
from .compare import best_row, read_history
from .data.formats import load_scenes
from .data.pipeline import build_dataset, dataset_dtype, dataset_nodata
from .data.raster import compute_normalization
from .export import export_saved_model
from .figures import save_prediction_figure
from .losses import get_loss
from .metrics import ConfusionMatrixMetric, segmentation_metrics
from .model_card import CARD_FILE, ModelCard, embed_card
from .models import PhotometricAugment, Preprocess, build_model
from . import tracking_mlflow
from .tracking import (NeptuneTracker, atomic_write_text, default_run_dir, prepare_run_dir,
                       remove_stale_temporaries, save_model_atomic, save_weights_atomic, write_json, zip_directory)

log = logging.getLogger("tfseg.train")

# The validation set is a finite grid filtered for nodata (unknown cardinality): Keras warns each
# time it ends although that is how an evaluation pass finishes.
warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)


# ------------------------------------------------------------------------------------------
# Precision, optimizer, schedule
# ------------------------------------------------------------------------------------------
def resolve_precision(name: str) -> str:
    """``auto``: mixed_bfloat16 on GPUs that support it (compute capability >= 8), mixed_float16
    on older GPUs, float32 on CPU."""
    if name != "auto":
        return name
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "float32"
    details = tf.config.experimental.get_device_details(gpus[0])
    major = (details.get("compute_capability") or (0, 0))[0]
    return "mixed_bfloat16" if major >= 8 else "mixed_float16"


@keras.saving.register_keras_serializable(package="tfseg")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """One-cycle policy: cosine warm-up from ``max_lr/div`` to ``max_lr``, then cosine annealing
    to ``max_lr/final_div``."""

    def __init__(self, max_lr, total_steps, pct_start=0.3, div=25.0, final_div=1e4):
        self.max_lr, self.total_steps, self.pct_start = max_lr, total_steps, pct_start
        self.div, self.final_div = div, final_div

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        up = max(1.0, self.total_steps * self.pct_start)
        down = max(1.0, self.total_steps - up)
        start, peak, end = self.max_lr / self.div, self.max_lr, self.max_lr / self.final_div
        t_up = keras.ops.clip(step / up, 0.0, 1.0)
        t_down = keras.ops.clip((step - up) / down, 0.0, 1.0)
        warm = start + (peak - start) * (1 - keras.ops.cos(np.pi * t_up)) / 2
        anneal = end + (peak - end) * (1 + keras.ops.cos(np.pi * t_down)) / 2
        return keras.ops.where(step < up, warm, anneal)

    def get_config(self):
        return {"max_lr": self.max_lr, "total_steps": self.total_steps, "pct_start": self.pct_start,
                "div": self.div, "final_div": self.final_div}


def make_schedule(train_cfg, steps_per_epoch: int):
    total = max(1, train_cfg.epochs * steps_per_epoch)
    lr = train_cfg.learning_rate
    if train_cfg.schedule == "constant":
        return lr
    if train_cfg.schedule == "onecycle":
        return OneCycle(lr, total)
    warmup = int(train_cfg.warmup_epochs * steps_per_epoch)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr if warmup == 0 else lr / 100,
        decay_steps=max(1, total - warmup),
        alpha=0.01,
        warmup_target=lr if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(train_cfg, steps_per_epoch: int):
    schedule = make_schedule(train_cfg, steps_per_epoch)
    clip = {"clipnorm": train_cfg.clipnorm} if train_cfg.clipnorm else {}
    if train_cfg.optimizer == "adam":
        return keras.optimizers.Adam(schedule, **clip)
    if train_cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=train_cfg.weight_decay, **clip)
    return keras.optimizers.SGD(schedule, momentum=train_cfg.momentum, nesterov=True, **clip)


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the current learning rate to the epoch logs (so history.csv records it)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            lr = self.model.optimizer.learning_rate
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(lr))


# ------------------------------------------------------------------------------------------
# Model construction from the config
# ------------------------------------------------------------------------------------------
class EpochFigure(keras.callbacks.Callback):
    """Saves ``folder/epoch-NNNN.png`` (validation input | truth | prediction) after each epoch."""

    def __init__(self, dataset, folder, band_names, num_tiles: int = 4, threshold=0.5,
                 ignore_index: int = 255, multilabel: bool = False):
        super().__init__()
        self.dataset, self.folder, self.band_names = dataset, Path(folder), band_names
        self.num_tiles, self.threshold, self.ignore_index = num_tiles, threshold, ignore_index
        self.multilabel = multilabel

    def on_epoch_end(self, epoch, logs=None):
        if self.num_tiles:
            self.folder.mkdir(parents=True, exist_ok=True)
            save_prediction_figure(self.model, self.dataset, self.folder / f"epoch-{epoch + 1:04d}.png",
                                   self.band_names, self.num_tiles, self.threshold, self.ignore_index,
                                   multilabel=self.multilabel)


def model_kwargs(model_cfg, task: str = "auto") -> dict:
    """Constructor arguments for the chosen architecture (config field names = argument names);
    a multilabel task gets independent sigmoid outputs when model.activation is auto."""
    activation = "sigmoid" if task == "multilabel" and model_cfg.activation == "auto" else model_cfg.activation
    if model_cfg.name == "unet" and not model_cfg.backbone:
        keys = ["depth", "filters", "batch_norm", "dropout", "dropout_position", "upsampling", "stem"]
        return {**{k: getattr(model_cfg, k) for k in keys}, "activation": activation}
    fields = dataclasses.asdict(model_cfg)
    fields.pop("name")
    options = fields.pop("options")
    return {**fields, **options, "activation": activation}


def num_outputs(data_cfg) -> int:
    return 1 if len(data_cfg.classes) == 1 else len(data_cfg.classes)


def build_config_model(cfg, num_bands: int, norm, nodata, seed: Optional[int] = None):
    """The model of a config: the architecture behind its preprocessing layer (``norm``, raw
    ``nodata``) and, when ``data.augment`` asks for brightness/contrast, the training-only
    photometric layer (seeded with ``seed``, default ``train.seed``). Takes raw pixels."""
    task = config_lib.resolve_task(cfg.data)
    aug = cfg.data.augment
    augment = None
    if aug.brightness or aug.contrast:
        augment = PhotometricAugment(aug.brightness, aug.contrast, seed=cfg.train.seed if seed is None else seed,
                                     name="photometric")
    return build_model(cfg.model.name, preprocessing=Preprocess.from_normalization(norm, nodata), augment=augment,
                       input_shape=(None, None, num_bands), classes=num_outputs(cfg.data),
                       **model_kwargs(cfg.model, task))


def make_model_card(cfg, norm, model, band_dtype, nodata, metrics: Optional[dict] = None) -> ModelCard:
    """The card of a run: everything downstream needs, from the config, statistics and model."""
    return ModelCard.for_model(
        model, norm, band_dtype, nodata, classes=cfg.data.classes, palette=cfg.data.palette,
        task=config_lib.resolve_task(cfg.data), threshold=cfg.train.threshold,
        tile_size=cfg.data.window_size, recommended_overlap=cfg.export.recommended_overlap, model_name=cfg.model.name,
        backbone=cfg.model.backbone, metrics=metrics, ignore_index=cfg.data.ignore_index)


# ------------------------------------------------------------------------------------------
# Seeds, strategy, callbacks
# ------------------------------------------------------------------------------------------
def seed_everything(seed: int, deterministic: bool) -> None:
    """Python/NumPy/TF seeds (``keras.utils.set_random_seed``) and, with ``deterministic``,
    TF op determinism (same seed on the same hardware -> bit-identical training)."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def make_strategy(name: str):
    """``default`` (one device), ``mirrored`` (all local GPUs) or ``multi_worker`` (TF_CONFIG)."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        import json
        import os

        raw = os.environ.get("TF_CONFIG", "")
        try:
            spec = json.loads(raw) if raw else None
        except ValueError as exc:
            raise ValueError(f"train.strategy=multi_worker: TF_CONFIG is not valid JSON ({exc})") from None
        if not spec or "cluster" not in spec or "task" not in spec:
            raise ValueError(
                "train.strategy=multi_worker needs the TF_CONFIG environment variable, e.g. "
                '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}'
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def worker_rank(strategy) -> int:
    """This worker's index among all workers (0 outside multi-worker training; the ``chief``
    task, when the cluster has one, is 0 and ``worker`` i is i + 1)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 0
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    if resolver.task_type == "chief":
        return 0
    return int(resolver.task_id) + (1 if has_chief else 0)


def is_chief(strategy) -> bool:
    """The worker that writes the run directory (always true outside multi-worker training)."""
    return bool(strategy.extended.should_checkpoint)


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save the model whenever ``monitor`` improves, atomically (temporary file + ``os.replace``):
    a kill during the save leaves the previous best intact, never a truncated ``model.keras``."""

    def __init__(self, filepath, monitor: str, mode: str = "max"):
        super().__init__()
        self.filepath, self.monitor, self.mode = Path(filepath), monitor, mode
        self.best = None

    def improved(self, value) -> bool:
        if value is None or not np.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:  # checkpointing the latest epoch instead would hide a typo for a whole run
            raise ValueError(f"config key 'train.monitor': metric {self.monitor!r} is not in the logs of epoch "
                             f"{epoch + 1}; logged: {', '.join(sorted(logs or {}))}")
        if not np.isfinite(float(value)) and self.best is None and not self.filepath.is_file():
            # NaN = undefined (e.g. IoU of a class absent from truth and prediction): keep a model
            # to evaluate, and say so; a later defined value replaces it
            log.warning("checkpoint: %s is undefined (%s) at epoch %d; saving this epoch's model until a defined "
                        "value is logged", self.monitor, value, epoch + 1)
            save_model_atomic(self.model, self.filepath)
            return
        if not self.improved(float(value)):
            return
        self.best = float(value)
        save_model_atomic(self.model, self.filepath)


class SummedValidationMetrics(keras.callbacks.Callback):
    """Distributed runs: rewrite the ``val_*`` confusion-matrix metrics of the epoch logs from the
    matrices **summed** over all replicas and workers (Keras logs the mean of the per-replica
    scores, which differs from the score of the whole validation set). Every worker reads the
    summed matrices together (one all-reduce per metric), so every worker logs the same values.
    Must come first in the callback list (the checkpoint, CSV and trackers read the logs)."""

    def __init__(self, metrics, strategy):
        super().__init__()
        self.metrics, self.strategy = [m for m in metrics if isinstance(m, ConfusionMatrixMetric)], strategy

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not any(f"val_{m.name}" in logs for m in self.metrics):
            return
        with self.strategy.scope():  # cross-replica context: a sync-on-read variable reads as the SUM
            for metric in self.metrics:
                logs[f"val_{metric.name}"] = float(keras.ops.convert_to_numpy(metric.result()))


class SynchronizedBatchNorm(keras.callbacks.Callback):
    """Distributed runs: batch normalization with the **global** batch statistics (all-reduced
    over replicas and workers) while the training step is traced, so every replica applies the
    same moving-statistics update and all workers keep identical moving means/variances. With
    per-replica statistics each worker's moving statistics drift apart: the validation a worker
    scores and the model the chief saves are then different models (measured: two-worker val_iou
    0.03105 against 0.02879 for the saved model; equal without batch norm). The flag is on while
    an epoch trains and off at its end, before the checkpoints: saved models do not carry it (Keras
    refuses ``synchronized=True`` outside TensorFlow, e.g. on JAX)."""

    def _batch_norms(self):
        return [layer for layer in self.model._flatten_layers(include_self=False)
                if isinstance(layer, keras.layers.BatchNormalization)]

    def on_epoch_begin(self, epoch, logs=None):
        self._set(True)

    def on_epoch_end(self, epoch, logs=None):  # first callback: before any model is saved
        self._set(False)

    def on_train_end(self, logs=None):
        self._set(False)

    def _set(self, value: bool) -> None:
        for layer in self._batch_norms():
            layer.synchronized = value


class TrainingState(keras.callbacks.Callback):
    """Resume state in ``RUN_DIR/backup``: after every completed epoch the weights (with the
    optimizer state) go to ``epoch-NNNN.weights.h5`` and then ``state.json`` (epoch, cumulative
    training time, the best/wait counters of the other callbacks) is replaced atomically to point
    at them. A kill at any moment leaves ``state.json`` naming a complete file.

    Must come last in the callback list: its epoch end runs after CSVLogger/EarlyStopping.
    Keras' own ``BackupAndRestore`` is not used because it overwrites its weights and metadata
    in place (a kill mid-write corrupts them or pairs new weights with the old epoch) and it
    does not restore the state of the other callbacks.
    """

    STATE = "state.json"

    def __init__(self, backup_dir, tracked: dict, previous: Optional[dict] = None, write: bool = True):
        super().__init__()
        self.backup_dir, self.tracked, self.write = Path(backup_dir), tracked, write
        self.previous = previous or {}
        self.seconds = float(self.previous.get("train_seconds", 0.0))
        self.resumes = int(self.previous["resumes"]) + 1 if previous else 0
        self._epoch_start = None

    @classmethod
    def load(cls, backup_dir) -> Optional[dict]:
        path = Path(backup_dir) / cls.STATE
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        weights = Path(backup_dir) / state["weights"]
        if not weights.is_file():
            raise ValueError(f"resume state {path} names {weights}, which is missing: the backup is damaged; "
                             "remove the backup/ directory to restart this run from scratch, or use --overwrite")
        return state

    def restore_weights(self, model) -> None:
        model.optimizer.build(model.trainable_variables)
        model.load_weights(str(self.backup_dir / self.previous["weights"]))

    def on_train_begin(self, logs=None):
        # the tracked callbacks reset themselves in their own on_train_begin (earlier in the list)
        for name, values in self.previous.get("callbacks", {}).items():
            callback = self.tracked.get(name)
            for attr, value in values.items():
                if callback is not None:
                    setattr(callback, attr, value)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        if self._epoch_start is not None:
            self.seconds += time.time() - self._epoch_start
        self.save(epoch + 1)

    def save(self, epochs_done: int) -> None:
        if not self.write:
            # non-chief worker: same collective-free save into a throw-away directory
            scratch = Path(tempfile.mkdtemp(prefix="tfseg-worker-"))
            try:
                self.model.save_weights(str(scratch / "w.weights.h5"))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epochs_done:04d}.weights.h5"
        save_weights_atomic(self.model, self.backup_dir / name)
        state = {
            "epoch": epochs_done,
            "weights": name,
            "train_seconds": round(self.seconds, 3),
            "complete": False,
            "resumes": self.resumes,
            "callbacks": {
                key: {attr: _plain(getattr(cb, attr)) for attr in ("best", "wait", "cooldown_counter", "best_epoch")
                      if hasattr(cb, attr) and _plain(getattr(cb, attr), check=True)}
                for key, cb in self.tracked.items()
            },
        }
        write_json(self.backup_dir / self.STATE, state)
        for old in self.backup_dir.glob("epoch-*.weights.h5"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def on_train_end(self, logs=None):
        # reached train.epochs or stopped early: a later start only re-evaluates and re-exports
        path = self.backup_dir / self.STATE
        if self.write and path.is_file():
            write_json(path, dict(json.loads(path.read_text()), complete=True))


def _plain(value, check: bool = False):
    """JSON-able number for callback state (``check``: whether it can be stored)."""
    if value is None:
        return False if check else None
    try:
        number = float(keras.ops.convert_to_numpy(value))
    except (TypeError, ValueError):
        return False if check else None
    if check:
        return True
    return int(number) if float(number).is_integer() and abs(number) < 2**53 else number


def trim_history(path: Path, rows: int) -> None:
    """Keep the header and the first ``rows`` epochs of ``history.csv`` (drops a row written for an
    epoch whose resume state was not saved, or a half-written line), atomically."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    if rows <= 0 or not lines:
        path.unlink()
        return
    kept = [lines[0]] + [line for line in lines[1:] if line.strip()][:rows]
    atomic_write_text(path, "\n".join(kept) + "\n")


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------
def train(cfg, run_dir=None, overwrite: bool = False, verbose: int = 1) -> dict:
    """Train ``cfg`` into a run directory; returns the final metrics dict (also metrics.json).

    Started again on the same run directory with the same config it resumes from the last
    completed epoch (``RUN_DIR/backup``); a finished run is only re-evaluated/re-exported.
    """
    with warnings.catch_warnings():
        # Keras warns "Your input ran out of data" at the end of every validation pass: the
        # evaluation grid is finite with an unknown length (nodata filter); the training stream is
        # endless, so the warning never means lost training steps here
        warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
        return _train(cfg, run_dir, overwrite, verbose)


def _train(cfg, run_dir, overwrite: bool, verbose: int) -> dict:
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    strategy = make_strategy(cfg.train.strategy)
    chief = is_chief(strategy)
    if cfg.train.strategy == "multi_worker" and not run_dir:
        raise ValueError("train.strategy=multi_worker: give every worker the same --run-dir "
                         "(on storage the chief can write; the other workers only read it)")
    # read and check every input before anything is written
    if chief:
        tracking_mlflow.resolve(cfg, Path(run_dir) if run_dir else default_run_dir(cfg))  # bad URI: error now
    train_scenes, val_scenes = load_scenes(cfg.data)
    if chief:
        run_path, resuming = prepare_run_dir(run_dir, cfg, overwrite)
    else:
        run_path, resuming = Path(run_dir), (Path(run_dir) / "config.yaml").is_file()
    precision = resolve_precision(cfg.train.precision)
    keras.mixed_precision.set_global_policy(precision)

    band_names = cfg.data.band_names or _band_names(train_scenes)
    norm = compute_normalization(
        [s.info for s in train_scenes], cfg.data.normalization, cfg.data.percentiles, band_names=band_names
    )
    band_dtype = dataset_dtype(train_scenes)
    nodata = dataset_nodata(train_scenes, band_dtype)  # the model's no-data value, used for every split

    backup_dir = run_path / "backup"
    previous = TrainingState.load(backup_dir) if resuming else None
    initial_epoch = int(previous["epoch"]) if previous else 0
    if chief:
        trim_history(run_path / "history.csv", initial_epoch)
        remove_stale_temporaries(run_path)

    replicas = strategy.num_replicas_in_sync
    global_batch = cfg.data.batch_size * (replicas if cfg.train.batch_per_replica else 1)
    classes = num_outputs(cfg.data)
    task = config_lib.resolve_task(cfg.data)
    bands = train_scenes[0].info.num_bands
    # a resumed run continues with fresh windows (the stream is indexed from 0 in every process);
    # each worker draws its own deterministic stream (its rank in the seed) instead of every worker
    # reading the whole stream and keeping its share
    train_seed = cfg.data.seed + 7919 * initial_epoch + 104729 * worker_rank(strategy)
    train_ds = build_dataset(train_scenes, cfg.data, training=True, seed=train_seed, batch_size=global_batch,
                             nodata=nodata)
    val_ds = build_dataset(val_scenes, cfg.data, training=False, batch_size=global_batch, nodata=nodata)
    if cfg.train.strategy == "multi_worker":
        train_ds, val_ds = _shard_off(train_ds), _shard_by_data(val_ds)
    steps = cfg.train.steps_per_epoch or max(1, cfg.data.train_windows_per_epoch // global_batch)
    train_cfg = _scaled_lr(cfg.train, replicas)

    with strategy.scope():
        model = build_config_model(cfg, bands, norm, nodata, seed=cfg.train.seed + initial_epoch)
        loss = get_loss(cfg.train.loss, classes, cfg.data.ignore_index, cfg.train.loss_weights or None, task=task,
                        class_weights=cfg.train.class_weights or None)
        metrics = segmentation_metrics(classes, cfg.data.ignore_index, cfg.train.threshold, task, cfg.data.classes)
        model.compile(
            optimizer=make_optimizer(train_cfg, steps),
            loss=loss,
            metrics=metrics,
            jit_compile=cfg.train.jit_compile,
        )
    card = make_model_card(cfg, norm, model, band_dtype, nodata)
    if chief:
        card.save(run_path / CARD_FILE)  # before training: a run stopped early can still be used
    best_file = run_path / "model.keras" if chief else Path(tempfile.mkdtemp(prefix="tfseg-worker-")) / "model.keras"
    checkpoint = BestModelCheckpoint(best_file, cfg.train.monitor, cfg.train.monitor_mode)
    callbacks = [
        LearningRateLogger(),
        checkpoint,
    ]
    if chief:
        callbacks += [
            keras.callbacks.TensorBoard(str(run_path / "logs"), write_graph=False),
            keras.callbacks.CSVLogger(str(run_path / "history.csv"), append=initial_epoch > 0),
        ]
    tracked = {"checkpoint": checkpoint}
    if replicas > 1:  # first: the summed-matrix scores replace Keras' mean over replicas in the logs
        callbacks.insert(0, SummedValidationMetrics(metrics, strategy))
        callbacks.insert(0, SynchronizedBatchNorm())
    if cfg.train.object_f1:  # first, so checkpoint/CSV/TensorBoard see val_object_f1 in the logs
        from .object_metrics import ObjectF1Callback

        callbacks.insert(0, ObjectF1Callback(val_ds, cfg.train.threshold, cfg.data.ignore_index))
    if cfg.train.epoch_figures and chief:  # visual check: validation tiles after every epoch
        callbacks.append(EpochFigure(val_ds, run_path / "figures", card.band_names, cfg.train.num_figure_tiles,
                                     cfg.train.threshold, cfg.data.ignore_index, multilabel=task == "multilabel"))
    if cfg.train.early_stopping_patience:
        tracked["early_stopping"] = keras.callbacks.EarlyStopping(
            cfg.train.monitor, patience=cfg.train.early_stopping_patience, mode=cfg.train.monitor_mode)
        callbacks.append(tracked["early_stopping"])
    if cfg.train.reduce_lr_patience:
        tracked["reduce_lr"] = keras.callbacks.ReduceLROnPlateau(
            cfg.train.monitor, factor=cfg.train.reduce_lr_factor, patience=cfg.train.reduce_lr_patience,
            mode=cfg.train.monitor_mode, min_lr=cfg.train.min_learning_rate)
        callbacks.append(tracked["reduce_lr"])
    tracker = NeptuneTracker.start(cfg, run_path, _dataset_name(cfg)) if chief else None
    if tracker is not None:
        callbacks += tracker.callbacks()
    state = TrainingState(backup_dir, tracked, previous, write=chief)
    callbacks.append(state)  # saves the resume state after every other callback's epoch end...
    mlflow_tracker = tracking_mlflow.MlflowTracker.start(cfg, run_path, _dataset_name(cfg), precision) if chief else None
    if mlflow_tracker is not None:  # ...except MLflow's: an epoch reaches it once its state is saved
        callbacks += mlflow_tracker.callbacks()

    if previous:
        with strategy.scope():
            state.restore_weights(model)
        log.info("resuming %s from epoch %d of %d", run_path, initial_epoch, cfg.train.epochs)
    if previous and previous.get("complete"):
        log.info("%s: training already complete (%d epochs); evaluating and exporting again", run_path,
                 initial_epoch)
    else:
        with _fit_scope(model, strategy, cfg.train.strategy):
            model.fit(
                train_ds, epochs=cfg.train.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                validation_data=val_ds, callbacks=callbacks, verbose=verbose, shuffle=False,
            )
    train_seconds = state.seconds
    if not chief:
        shutil.rmtree(best_file.parent, ignore_errors=True)
        history = getattr(model, "history", None)
        done = initial_epoch + (len(history.epoch) if history is not None else 0)
        return {"run_dir": str(run_path), "chief": False, "epochs": done, "train_seconds": round(train_seconds, 2),
                "steps": int(keras.ops.convert_to_numpy(model.optimizer.iterations))}

    best = keras.saving.load_model(best_file, compile=False)
    best.compile(loss=loss, metrics=segmentation_metrics(classes, cfg.data.ignore_index, cfg.train.threshold, task,
                                                         cfg.data.classes))
    if cfg.train.strategy == "multi_worker":
        val_ds = _shard_off(val_ds)
    # final scores over the validation scenes: every valid pixel once (no overlap, no tile skipped
    # for nodata; nodata pixels carry the ignore label and count for nothing)
    final_data = dataclasses.replace(cfg.data, eval_overlap=0, max_nodata_fraction=1.0)
    final_ds = build_dataset(val_scenes, final_data, training=False, batch_size=global_batch, nodata=nodata)
    scores = best.evaluate(final_ds, verbose=0, return_dict=True)
    # NaN = undefined (no class present in truth or prediction): null in metrics.json
    val = {k: (None if np.isnan(scores[k]) else float(scores[k])) for k in ("iou", "f1", "precision", "recall",
                                                                           "accuracy")}
    history_path = run_path / "history.csv"
    final_state = json.loads((backup_dir / TrainingState.STATE).read_text()) if (backup_dir / TrainingState.STATE).is_file() else {}
    result = {
        "val": val,
        "epochs": len(read_history(history_path)) if history_path.is_file() else 0,
        "train_seconds": round(train_seconds, 2),
        "val_loss": float(scores["loss"]),
        "params": int(best.count_params()),
        "precision_policy": precision,
        "model": cfg.model.name,
        "backbone": cfg.model.backbone,
        "best_epoch": _best_epoch(history_path, cfg.train.monitor, cfg.train.monitor_mode),
        "resumes": int(final_state.get("resumes", 0)),
        "replicas": replicas,
        "global_batch_size": global_batch,
        "steps_per_epoch": steps,
    }
    steps_done = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    write_json(run_path / "metrics.json", result)
    card = dataclasses.replace(card, metrics=val)
    card.save(run_path / CARD_FILE)
    embed_card(best_file, card)
    save_prediction_figure(best, val_ds, run_path / "predictions.png", card.band_names, cfg.train.num_figure_tiles,
                           cfg.train.threshold, cfg.data.ignore_index, multilabel=task == "multilabel")
    archive = None
    if cfg.export.enabled:
        export_saved_model(best, run_path / "export", card)
        if tracker is not None and cfg.tracking.neptune.upload_model:
            archive = zip_directory(run_path / "export", run_path / ".neptune" / "artifacts" / "saved_model.zip")
    if tracker is not None:
        files = {"history": run_path / "history.csv", "metrics": run_path / "metrics.json",
                 "config": run_path / "config.yaml", "predictions": run_path / "predictions.png"}
        tracker.log_final(result, files, archive)
        tracker.stop()
    if mlflow_tracker is not None:
        mlflow_tracker.log_final(result, run_path, cfg.tracking.mlflow.log_model)
        mlflow_tracker.stop()
    return {**result, "run_dir": str(run_path), "chief": True, "steps": steps_done}


def _scaled_lr(train_cfg, replicas: int):
    """``train.lr_scaling`` (linear / sqrt) multiplies the learning rate by the growth of the global
    batch over ``data.batch_size``, which happens only with ``train.batch_per_replica``."""
    factor = replicas if train_cfg.batch_per_replica else 1
    if train_cfg.lr_scaling == "none" or factor == 1:
        return train_cfg
    scale = factor if train_cfg.lr_scaling == "linear" else float(np.sqrt(factor))
    log.info("learning rate scaled x%.3g (%s, %d replicas)", scale, train_cfg.lr_scaling, replicas)
    return dataclasses.replace(train_cfg, learning_rate=train_cfg.learning_rate * scale)


@contextlib.contextmanager
def _fit_scope(model, strategy, name: str):
    """Keras 3.15 pre-builds a model under a strategy by ``strategy.reduce``-ing the first input
    batch, which MultiWorkerMirroredStrategy rejects ("Attempt to convert a value (PerReplica…)").
    For multi_worker, fit inside the strategy scope with the model's pinned strategy cleared: Keras
    then takes the strategy from the scope and builds while tracing the first step. Also works
    around Keras reducing scalar step outputs along axis 0 (see ``reduce_per_replica`` below).
    The confusion-matrix metrics are then rewritten from the summed matrices
    (:class:`SummedValidationMetrics`)."""
    if name != "multi_worker":
        yield
        return
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy_, reduction="auto"):
        # Keras 3.15 reduces multi-worker step outputs with strategy.reduce("MEAN", v, axis=0),
        # which fails on the scalar losses/metrics; reduce scalars across replicas with axis=None
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy_):
            def reduce_one(value):
                rank = value.values[0].shape.rank if hasattr(value, "values") else value.shape.rank
                return strategy_.reduce("MEAN", value, axis=None if rank == 0 else 0)
            return keras.tree.map_structure(reduce_one, values)
        return original(values, strategy_, reduction)

    pinned = model._distribute_strategy
    model._distribute_strategy = None
    tf_trainer.reduce_per_replica = reduce_per_replica
    try:
        with strategy.scope():
            yield
    finally:
        model._distribute_strategy = pinned
        tf_trainer.reduce_per_replica = original


def _shard_by_data(ds):
    """Multi-worker validation: each grid batch goes to one worker (no files to shard)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _shard_off(ds):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)


def _dataset_name(cfg) -> str:
    root = cfg.data.root.rstrip("/")
    return f"{cfg.data.format}:{Path(root).name}" if root and cfg.data.format != "synthetic" else cfg.data.format


def _best_epoch(path: Path, monitor: str, mode: str):
    best = best_row(read_history(path), monitor, mode) if path.is_file() else None
    return int(best["epoch"]) + 1 if best else None


def _band_names(scenes) -> list:
    from .data.raster import band_names

    return band_names(scenes[0].info)


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------
def _options_help() -> str:
    lines = ["config keys (use with --set KEY=VALUE; defaults shown):"]
    flat = config_lib._flatten(config_lib.Config().to_dict())
    for key, value in flat.items():
        extra = ""
        if key in config_lib.CHOICES:
            extra = f"  one of {config_lib.CHOICES[key]}"
        elif key in config_lib.RANGES:
            low, high = config_lib.RANGES[key]
            extra = f"  range [{low}, {high if high is not None else 'inf'}]"
        lines.append(f"  {key} = {value!r}{extra}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tfseg.train",
        description="Train a segmentation model from a YAML config (default: configs/default.yaml, "
        "the embedded synthetic building dataset).",
        epilog=_options_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML config file (default: configs/default.yaml)")
    config_lib.add_overrides_argument(parser)
    parser.add_argument("--run-dir", help="run directory (default: runs/<timestamp>-<tracking.name>)")
    parser.add_argument("--overwrite", action="store_true", help="replace a run directory that holds a different run")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_lib.load(args.config, args.overrides)
        result = train(cfg, args.run_dir, args.overwrite, verbose=0 if args.quiet else 1)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if cfg.train.strategy == "multi_worker":  # one machine-readable line per worker for cluster logs
        print("WORKER-RESULT " + json.dumps({k: result[k] for k in ("chief", "epochs", "steps", "run_dir")}))
    if not result["chief"]:
        print(f"worker done: {result['epochs']} epochs, {result['steps']} steps (the chief writes {result['run_dir']})")
        return 0
    val = {k: "n/a" if v is None else f"{v:.4f}" for k, v in result["val"].items()}
    print(
        f"done: {result['epochs']} epochs in {result['train_seconds']:.0f}s  val iou={val['iou']} "
        f"f1={val['f1']} precision={val['precision']} recall={val['recall']}  run: {result['run_dir']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
