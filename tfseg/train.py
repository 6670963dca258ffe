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
from typing import Any, Optional

from tfseg._tf import tensorflow as tf

import keras
import numpy as np

from . import config as config_lib
from .callbacks import (BestModelCheckpoint, EpochFigure, FiniteEarlyStopping,  # re-exported
                        FiniteReduceLROnPlateau, LearningRateLogger, SummedValidationMetrics, SynchronizedBatchNorm,
                        TimeBudget, TrainingState)
from .compare import best_row, read_history
from .data.formats import load_scenes
from .data.class_index import class_weights, load_or_compute
from .data.pipeline import build_dataset, dataset_dtype, dataset_nodata
from .data.raster import compute_normalization
from .errors import INPUT_ERRORS, TfsegError, report
from .export import export_saved_model
from .figures import card_colours, save_prediction_figure
from .losses import get_loss
from .metrics import segmentation_metrics
from .model_card import CARD_FILE, ModelCard, embed_card
from .models import PhotometricAugment, Preprocess, build_model
from .postprocess import PolygonOptions
from .schedules import ResizableSchedule  # re-exported: the base of OneCycle / WarmupCosine below
from . import tracking_mlflow
from .fsutil import atomic_write_text, write_json, zip_directory
from .rundir import default_run_dir, prepare_run_dir, remove_stale_temporaries
from .tracking import NeptuneTracker

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
class OneCycle(ResizableSchedule):
    """One-cycle policy: cosine warm-up from ``max_lr/div`` to ``max_lr`` over ``pct_start`` of
    the steps, then cosine annealing to ``max_lr/final_div``."""

    def __init__(self, max_lr, total_steps, pct_start=0.3, div=25.0, final_div=1e4, warmup_steps=None):
        self.max_lr, self.pct_start, self.div, self.final_div = max_lr, pct_start, div, final_div
        super().__init__(total_steps, self.wanted_warmup(total_steps) if warmup_steps is None else warmup_steps)

    def wanted_warmup(self, total_steps):
        return max(1.0, total_steps * self.pct_start)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        up = keras.ops.maximum(1.0, self._warmup)
        down = keras.ops.maximum(1.0, self._total - up)
        start, peak, end = self.max_lr / self.div, self.max_lr, self.max_lr / self.final_div
        t_up = keras.ops.clip(step / up, 0.0, 1.0)
        t_down = keras.ops.clip((step - up) / down, 0.0, 1.0)
        warm = start + (peak - start) * (1 - keras.ops.cos(np.pi * t_up)) / 2
        anneal = end + (peak - end) * (1 + keras.ops.cos(np.pi * t_down)) / 2
        return keras.ops.where(step < up, warm, anneal)

    def get_config(self):
        return {"max_lr": self.max_lr, "total_steps": self.total_steps, "pct_start": self.pct_start,
                "div": self.div, "final_div": self.final_div, "warmup_steps": self.warmup_steps}


@keras.saving.register_keras_serializable(package="tfseg")
class WarmupCosine(ResizableSchedule):
    """Keras ``CosineDecay`` with linear warm-up (from ``learning_rate/100`` over
    ``warmup_steps``, none when 0), then cosine decay to ``alpha * learning_rate`` at
    ``total_steps``; resizable. Under a budget the warm-up is at most half the steps."""

    def __init__(self, learning_rate, total_steps, warmup_steps=0, alpha=0.01, target_warmup_steps=None):
        self.learning_rate, self.alpha = learning_rate, alpha
        self.target_warmup_steps = float(warmup_steps if target_warmup_steps is None else target_warmup_steps)
        super().__init__(total_steps, warmup_steps)

    def wanted_warmup(self, total_steps):
        return min(self.target_warmup_steps, total_steps / 2)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self._warmup
        peak = self.learning_rate
        start = peak / 100 if self.target_warmup_steps else peak
        t = keras.ops.clip((step - warm) / keras.ops.maximum(1.0, self._total - warm), 0.0, 1.0)
        decay = peak * ((1 - self.alpha) * 0.5 * (1 + keras.ops.cos(np.pi * t)) + self.alpha)
        rising = start + (peak - start) * step / keras.ops.maximum(warm, 1.0)
        return keras.ops.where(step < warm, rising, decay)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "alpha": self.alpha,
                "target_warmup_steps": self.target_warmup_steps}


def make_schedule(train_cfg, steps_per_epoch: int):
    """``constant`` (a float), ``cosine`` (:class:`WarmupCosine`) or ``onecycle`` (:class:`OneCycle`),
    laid out for ``train.epochs``; ``train.max_minutes`` resizes the last two during training."""
    total = max(1, train_cfg.epochs * steps_per_epoch)
    lr = train_cfg.learning_rate
    if train_cfg.schedule == "constant":
        return lr
    if train_cfg.schedule == "onecycle":
        return OneCycle(lr, total)
    warmup = int(train_cfg.warmup_epochs * steps_per_epoch)
    if train_cfg.max_minutes and warmup > total / 2:
        # the budget's layouts keep the warm-up at most half the steps (WarmupCosine.wanted_warmup):
        # so does the first one; with fixed epochs the config refuses a warm-up as long as the run
        log.warning("train.warmup_epochs=%g is more than half of train.epochs=%d: under train.max_minutes the "
                    "warm-up is capped at half the steps the schedule lays out (%d of %d steps now)",
                    train_cfg.warmup_epochs, train_cfg.epochs, total // 2, total)
        return WarmupCosine(lr, total, warmup_steps=total // 2, target_warmup_steps=warmup)
    return WarmupCosine(lr, total, warmup_steps=warmup)


def make_optimizer(train_cfg, steps_per_epoch: int, schedule=None):
    """The optimizer of ``train.optimizer`` on ``schedule`` (default: :func:`make_schedule`)."""
    schedule = make_schedule(train_cfg, steps_per_epoch) if schedule is None else schedule
    clip = {"clipnorm": train_cfg.clipnorm} if train_cfg.clipnorm else {}
    if train_cfg.optimizer == "adam":
        return keras.optimizers.Adam(schedule, **clip)
    if train_cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=train_cfg.weight_decay, **clip)
    return keras.optimizers.SGD(schedule, momentum=train_cfg.momentum, nesterov=True, **clip)


# ------------------------------------------------------------------------------------------
# Model construction from the config
# ------------------------------------------------------------------------------------------
def model_kwargs(model_cfg, task: str = "auto") -> dict:
    """Constructor arguments for the chosen architecture (config field names = argument names,
    plus ``model.options``: every field reaches the builder, which refuses what it cannot use);
    a multilabel task gets independent sigmoid outputs when model.activation is auto."""
    activation = "sigmoid" if task == "multilabel" and model_cfg.activation == "auto" else model_cfg.activation
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
    from .models.hub import fixed_input_size

    task = cfg.data.task
    aug = cfg.data.augment
    augment = None
    if aug.brightness or aug.contrast:
        augment = PhotometricAugment(aug.brightness, aug.contrast, seed=cfg.train.seed if seed is None else seed,
                                     name="photometric")
    # a backbone with a fixed input size (a keras-hub ViT's position embeddings) is built for the
    # training window: tiles of exactly that size everywhere downstream (inference, export)
    size = cfg.data.window_size if fixed_input_size(cfg.model.backbone) else None
    return build_model(cfg.model.name, preprocessing=Preprocess.from_normalization(norm, nodata), augment=augment,
                       input_shape=(size, size, num_bands), classes=num_outputs(cfg.data),
                       **model_kwargs(cfg.model, task))


def make_model_card(cfg, norm, model, band_dtype, nodata, metrics: Optional[dict] = None,
                    class_weights: Optional[list] = None, class_index=None) -> ModelCard:
    """The card of a run: everything downstream needs, from the config, statistics and model
    (with the loss's class weights and the class frequencies of ``class_index``, when any)."""
    return ModelCard.for_model(
        model, norm, band_dtype, nodata, classes=cfg.data.classes, palette=cfg.data.palette,
        task=cfg.data.task, threshold=cfg.train.threshold,
        tile_size=cfg.data.window_size, recommended_overlap=cfg.export.recommended_overlap, model_name=cfg.model.name,
        backbone=cfg.model.backbone, metrics=metrics, ignore_index=cfg.data.ignore_index, class_weights=class_weights,
        class_frequencies=None if class_index is None else {k: v["frequency"] for k, v in class_index.summary().items()})


# ------------------------------------------------------------------------------------------
# Seeds, strategy, resume (the callbacks are in tfseg/callbacks.py)
# ------------------------------------------------------------------------------------------
def seed_everything(seed: int, deterministic: bool) -> None:
    """Python/NumPy/TF seeds (``keras.utils.set_random_seed``) and, with ``deterministic``,
    TF op determinism (same seed on the same hardware -> bit-identical training)."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


class StrategyError(TfsegError):
    """``train.strategy`` cannot be set up as asked (``TF_CONFIG``, ``--run-dir``)."""


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
            raise StrategyError(f"train.strategy=multi_worker: TF_CONFIG is not valid JSON ({exc})") from None
        if not spec or "cluster" not in spec or "task" not in spec:
            raise StrategyError(
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
def train(cfg, run_dir=None, overwrite: bool = False, verbose: int = 1, callbacks=None, clock=None) -> dict:
    """Train ``cfg`` into a run directory; returns the final metrics dict (also metrics.json).

    Started again on the same run directory with the same config it resumes from the last
    completed epoch (``RUN_DIR/backup``); a finished run is only re-evaluated/re-exported.
    ``callbacks``: extra Keras callbacks, run after tfseg's own and before the time budget and
    the resume state. ``clock``: a zero-argument function returning seconds (default
    ``time.monotonic``) that times the epochs for ``train_seconds`` and ``train.max_minutes``;
    tests pass a fake one (advanced by one of ``callbacks``) to make epochs take a known time.
    """
    with warnings.catch_warnings():
        # Keras warns "Your input ran out of data" at the end of every validation pass: the
        # evaluation grid is finite with an unknown length (nodata filter); the training stream is
        # endless, so the warning never means lost training steps here
        warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
        return _train(cfg, run_dir, overwrite, verbose, list(callbacks or []), clock)


@dataclasses.dataclass
class _Run:
    """What the stages of one training run hand each other, filled in stage by stage: ``_start``
    (strategy, ``chief``), ``_read_data`` (scenes, run directory, statistics), ``_build_datasets``
    (resume point, tf.data), ``_build_model``, ``_build_callbacks`` (best file, resume state,
    trackers), ``_fit``; then ``_finish`` (chief) or ``_worker_result``."""

    cfg: Any
    strategy: Any
    chief: bool  # this process writes the run directory: is_chief(strategy), asked once
    run_path: Optional[Path] = None
    resuming: bool = False
    precision: str = ""
    train_scenes: list = dataclasses.field(default_factory=list)
    val_scenes: list = dataclasses.field(default_factory=list)
    norm: Any = None
    band_dtype: Any = None
    nodata: Any = None
    class_index: Any = None
    backup_dir: Optional[Path] = None
    previous: Optional[dict] = None  # the resume state of an earlier start (TrainingState.load)
    initial_epoch: int = 0
    replicas: int = 1
    global_batch: int = 0
    num_bands: int = 0
    train_ds: Any = None
    val_ds: Any = None
    steps: int = 0
    weights: list = dataclasses.field(default_factory=list)  # the loss's class weights
    model: Any = None
    loss: Any = None
    schedule: Any = None
    metrics: list = dataclasses.field(default_factory=list)
    card: Optional[ModelCard] = None
    best_file: Optional[Path] = None
    state: Optional[TrainingState] = None
    tracker: Optional[NeptuneTracker] = None
    mlflow_tracker: Any = None

    @property
    def task(self) -> str:
        return self.cfg.data.task

    @property
    def num_classes(self) -> int:
        return num_outputs(self.cfg.data)


def _train(cfg, run_dir, overwrite: bool, verbose: int, extra_callbacks: list, clock) -> dict:
    run = _start(cfg, run_dir)
    _read_data(run, run_dir, overwrite)
    _build_datasets(run)
    _build_model(run)
    try:  # the trackers start in _build_callbacks: a run that dies afterwards is recorded as failed
        callbacks = _build_callbacks(run, extra_callbacks, clock)
        _fit(run, callbacks, verbose)
        return _finish(run) if run.chief else _worker_result(run)
    except BaseException as exc:
        _stop_trackers_failed(run, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise


def _stop_trackers_failed(run: _Run, status: str = "FAILED") -> None:
    """End the Neptune and MLflow runs of a training that raised (``FAILED``) or was interrupted
    (``KILLED``) instead of leaving them running forever; an error of a tracker is logged, never
    raised over the one that stopped training."""
    for name, tracker in (("Neptune", run.tracker), ("MLflow", run.mlflow_tracker)):
        if tracker is None:
            continue
        try:
            tracker.stop(status=status)
        except Exception as exc:  # noqa: BLE001 - the training error is the one to report
            log.warning("%s tracking: ending the run as %s did not work (%s: %s)", name, status,
                        type(exc).__name__, exc)
    run.tracker = run.mlflow_tracker = None


def _start(cfg, run_dir) -> _Run:
    """Seeds, the strategy (and whether this process is the chief), the checks needing no data."""
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    strategy = make_strategy(cfg.train.strategy)
    run = _Run(cfg, strategy, chief=is_chief(strategy))
    if cfg.train.strategy == "multi_worker" and not run_dir:
        raise StrategyError("train.strategy=multi_worker: give every worker the same --run-dir "
                            "(on storage the chief can write; the other workers only read it)")
    # read and check every input before anything is written
    if run.chief:
        tracking_mlflow.resolve(cfg, Path(run_dir) if run_dir else default_run_dir(cfg))  # bad URI: error now
    return run


def _read_data(run: _Run, run_dir, overwrite: bool) -> None:
    """The scenes, the run directory (the chief prepares it), the precision policy, the
    normalization statistics, band dtype and nodata, and the class index when anything needs it."""
    cfg = run.cfg
    run.train_scenes, run.val_scenes = load_scenes(cfg.data)
    if run.chief:
        run.run_path, run.resuming = prepare_run_dir(run_dir, cfg, overwrite)
    else:
        run.run_path, run.resuming = Path(run_dir), (Path(run_dir) / "config.yaml").is_file()
    run.precision = resolve_precision(cfg.train.precision)
    keras.mixed_precision.set_global_policy(run.precision)

    band_names = cfg.data.band_names or _band_names(run.train_scenes)
    run.norm = compute_normalization(
        [s.info for s in run.train_scenes], cfg.data.normalization, cfg.data.percentiles, band_names=band_names
    )
    run.band_dtype = dataset_dtype(run.train_scenes)
    # the model's no-data value, used for every split
    run.nodata = dataset_nodata(run.train_scenes, run.band_dtype)
    # class-frequency index of the training labels (balanced sampling, oversampling, auto weights)
    if cfg.data.sampling == "balanced" or cfg.data.oversample_class >= 0 or cfg.train.class_weights == "auto":
        run.class_index = load_or_compute(run.run_path / "class_index.npz", run.train_scenes, cfg.data,
                                          write=run.chief)
        log.info("class frequencies of the training labels: %s", ", ".join(
            f"{name} {v['frequency']:.4f}" for name, v in run.class_index.summary().items()))


def _build_datasets(run: _Run) -> None:
    """The resume point (the chief trims the history to it) and the training and validation
    datasets of the global batch."""
    cfg = run.cfg
    run.backup_dir = run.run_path / "backup"
    run.previous = TrainingState.load(run.backup_dir) if run.resuming else None
    run.initial_epoch = int(run.previous["epoch"]) if run.previous else 0
    if run.chief:
        trim_history(run.run_path / "history.csv", run.initial_epoch)
        remove_stale_temporaries(run.run_path)

    run.replicas = run.strategy.num_replicas_in_sync
    run.global_batch = cfg.data.batch_size * (run.replicas if cfg.train.batch_per_replica else 1)
    run.num_bands = run.train_scenes[0].info.num_bands
    # a resumed run continues with fresh windows (the stream is indexed from 0 in every process);
    # each worker draws its own deterministic stream (its rank in the seed) instead of every worker
    # reading the whole stream and keeping its share
    train_seed = cfg.data.seed + 7919 * run.initial_epoch + 104729 * worker_rank(run.strategy)
    run.train_ds = build_dataset(run.train_scenes, cfg.data, training=True, seed=train_seed,
                                 batch_size=run.global_batch, nodata=run.nodata, class_index=run.class_index)
    run.val_ds = build_dataset(run.val_scenes, cfg.data, training=False, batch_size=run.global_batch,
                               nodata=run.nodata, dtype=run.band_dtype)
    if cfg.train.strategy == "multi_worker":
        run.train_ds, run.val_ds = _shard_off(run.train_ds), _shard_by_data(run.val_ds)
    run.steps = cfg.train.steps_per_epoch or max(1, cfg.data.train_windows_per_epoch // run.global_batch)


def _build_model(run: _Run) -> None:
    """The model, loss, schedule and metrics, compiled under the strategy, and its card (saved
    by the chief before training, unless a resumed run has one: a run stopped early can still be
    used)."""
    cfg = run.cfg
    train_cfg = _scaled_lr(cfg.train, run.replicas)
    run.weights = resolve_class_weights(cfg, run.class_index)
    with run.strategy.scope():
        run.model = build_config_model(cfg, run.num_bands, run.norm, run.nodata,
                                       seed=cfg.train.seed + run.initial_epoch)
        run.loss = get_loss(cfg.train.loss, run.num_classes, cfg.data.ignore_index, cfg.train.loss_weights or None,
                            task=run.task, class_weights=run.weights or None)
        run.schedule = make_schedule(train_cfg, run.steps)
        run.metrics = segmentation_metrics(run.num_classes, cfg.data.ignore_index, cfg.train.threshold, run.task,
                                           cfg.data.classes)
        run.model.compile(
            optimizer=make_optimizer(train_cfg, run.steps, run.schedule),
            loss=run.loss,
            metrics=run.metrics,
            jit_compile=cfg.train.jit_compile,
        )
    run.card = make_model_card(cfg, run.norm, run.model, run.band_dtype, run.nodata, class_weights=run.weights,
                               class_index=run.class_index)
    # a resumed run keeps the card it has (a finished run's carries its metrics, operating point and
    # class offsets, as model.keras does): _finish writes the new one once the model is scored
    if run.chief and not (run.resuming and (run.run_path / CARD_FILE).is_file()):
        run.card.save(run.run_path / CARD_FILE)


def _build_callbacks(run: _Run, extra_callbacks: list, clock) -> list:
    """tfseg's callbacks in the order they run: those rewriting the logs, the checkpoint, the run
    directory's writers (chief), early stopping / plateau, Neptune, ``extra_callbacks``, the time
    budget, the resume state, MLflow. The chief starts the trackers; a worker checkpoints into a
    throw-away directory."""
    cfg = run.cfg
    writers = []
    if run.chief:
        run.best_file = run.run_path / "model.keras"
        writers += [
            keras.callbacks.TensorBoard(str(run.run_path / "logs"), write_graph=False),
            keras.callbacks.CSVLogger(str(run.run_path / "history.csv"), append=run.initial_epoch > 0),
        ]
        if cfg.train.epoch_figures:  # visual check: validation tiles after every epoch
            writers.append(EpochFigure(run.val_ds, run.run_path / "figures", run.card.band_names,
                                       cfg.train.num_figure_tiles, cfg.train.threshold, cfg.data.ignore_index,
                                       multilabel=run.task == "multilabel", colours=card_colours(run.card)))
        run.tracker = NeptuneTracker.start(cfg, run.run_path, _dataset_name(cfg))
        run.mlflow_tracker = tracking_mlflow.MlflowTracker.start(cfg, run.run_path, _dataset_name(cfg), run.precision)
    else:
        run.best_file = Path(tempfile.mkdtemp(prefix="tfseg-worker-")) / "model.keras"
    tracked = {"checkpoint": BestModelCheckpoint(run.best_file, cfg.train.monitor, cfg.train.monitor_mode)}
    callbacks = _log_rewriting_callbacks(run) + [LearningRateLogger(), tracked["checkpoint"]] + writers
    callbacks += _plateau_callbacks(cfg, tracked)
    if run.tracker is not None:
        callbacks += run.tracker.callbacks()
    callbacks += extra_callbacks
    run.state = TrainingState(run.backup_dir, tracked, run.previous, write=run.chief, schedule=run.schedule,
                              clock=clock)
    if cfg.train.max_minutes:
        callbacks.append(TimeBudget(cfg.train.max_minutes, run.state, run.steps, cfg.train.epochs))
    callbacks.append(run.state)  # saves the resume state after every other callback's epoch end...
    if run.mlflow_tracker is not None:  # ...except MLflow's: an epoch reaches it once its state is saved
        callbacks += run.mlflow_tracker.callbacks()
    return callbacks


def _log_rewriting_callbacks(run: _Run) -> list:
    """The callbacks that add to or rewrite the epoch logs, first in the list so the checkpoint,
    CSV, TensorBoard and trackers read their values."""
    cfg = run.cfg
    callbacks = []
    if cfg.train.object_f1:  # val_object_f1
        from .object_metrics import ObjectF1Callback

        callbacks.append(ObjectF1Callback(
            run.val_scenes, run.card, cfg.train.threshold, cfg.data.ignore_index, tile_size=cfg.data.window_size,
            overlap=cfg.data.eval_overlap, batch_size=run.global_batch, options=PolygonOptions(instances="watershed")))
    if run.replicas > 1:  # the summed-matrix scores replace Keras' mean over replicas in the logs
        callbacks += [SynchronizedBatchNorm(), SummedValidationMetrics(run.metrics, run.strategy)]
    return callbacks


def _plateau_callbacks(cfg, tracked: dict) -> list:
    """Early stopping and learning-rate reduction on ``train.monitor``, when configured; added to
    ``tracked`` (their counters go into the resume state)."""
    callbacks = []
    if cfg.train.early_stopping_patience:
        tracked["early_stopping"] = FiniteEarlyStopping(
            cfg.train.monitor, patience=cfg.train.early_stopping_patience, mode=cfg.train.monitor_mode)
        callbacks.append(tracked["early_stopping"])
    if cfg.train.reduce_lr_patience:
        tracked["reduce_lr"] = FiniteReduceLROnPlateau(
            cfg.train.monitor, factor=cfg.train.reduce_lr_factor, patience=cfg.train.reduce_lr_patience,
            mode=cfg.train.monitor_mode, min_lr=cfg.train.min_learning_rate)
        callbacks.append(tracked["reduce_lr"])
    return callbacks


def _fit(run: _Run, callbacks: list, verbose: int) -> None:
    """Restore the resume state's weights, then fit the epochs still to come (none when an earlier
    start completed the run or used up ``train.max_minutes``)."""
    cfg, previous = run.cfg, run.previous
    budget_used = bool(previous and cfg.train.max_minutes and
                       float(previous.get("train_seconds", 0)) >= cfg.train.max_minutes * 60)
    if previous:
        with run.strategy.scope():
            run.state.restore_weights(run.model)
        log.info("resuming %s from epoch %d of %d", run.run_path, run.initial_epoch, cfg.train.epochs)
    if previous and (previous.get("complete") or budget_used):
        log.info("%s: training already complete (%d epochs); evaluating and exporting again", run.run_path,
                 run.initial_epoch)
        run.state.stop_reason = previous.get("stop_reason") or ("max_minutes" if budget_used else "epochs")
    else:
        with _fit_scope(run.model, run.strategy, cfg.train.strategy):
            run.model.fit(
                run.train_ds, epochs=cfg.train.epochs, initial_epoch=run.initial_epoch, steps_per_epoch=run.steps,
                validation_data=run.val_ds, callbacks=callbacks, verbose=verbose, shuffle=False,
            )


def _worker_result(run: _Run) -> dict:
    """A non-chief worker's summary (the chief evaluates, exports and tracks)."""
    shutil.rmtree(run.best_file.parent, ignore_errors=True)
    history = getattr(run.model, "history", None)
    done = run.initial_epoch + (len(history.epoch) if history is not None else 0)
    return {"run_dir": str(run.run_path), "chief": False, "epochs": done,
            "train_seconds": round(run.state.seconds, 2),
            "steps": int(keras.ops.convert_to_numpy(run.model.optimizer.iterations))}


def _finish(run: _Run) -> dict:
    """The chief's end of a run: the best model's final scores (metrics.json), the operating
    point, the card (model_card.json and inside model.keras), predictions.png, the export and
    the trackers' final records."""
    cfg = run.cfg
    best, scores = _evaluate_best(run)
    # NaN = undefined (no class present in truth or prediction): null in metrics.json
    val = {k: (None if np.isnan(scores[k]) else float(scores[k])) for k in ("iou", "f1", "precision", "recall",
                                                                           "accuracy")}
    result = _result(run, best, scores, val)
    steps_done = int(keras.ops.convert_to_numpy(run.model.optimizer.iterations))
    card = dataclasses.replace(run.card, metrics=val)
    if cfg.train.object_f1 and run.val_scenes:
        point = _operating_point(cfg, best, card, run.val_scenes, run.global_batch, run.run_path, result)
        if point is not None:  # the card carries it: model_card.json, model.keras, the SavedModel
            card = card.with_operating_point(point)
    if cfg.train.class_offsets != "none":
        on_training = cfg.train.class_offsets == "fit_training"
        card = _fit_class_offsets(cfg, best, card, run.train_scenes if on_training else run.val_scenes,
                                  "training" if on_training else "validation", run.global_batch, result)
    write_json(run.run_path / "metrics.json", result)
    card.save(run.run_path / CARD_FILE)
    embed_card(run.best_file, card)
    val_ds = _shard_off(run.val_ds) if cfg.train.strategy == "multi_worker" else run.val_ds
    save_prediction_figure(best, val_ds, run.run_path / "predictions.png", card.band_names,
                           cfg.train.num_figure_tiles, cfg.train.threshold, cfg.data.ignore_index,
                           colours=card_colours(card), multilabel=run.task == "multilabel",
                           class_offsets=card.class_offsets)
    _export_and_track(run, best, card, result)
    return {**result, "run_dir": str(run.run_path), "chief": True, "steps": steps_done}


def _evaluate_best(run: _Run):
    """``(model, scores)``: the best checkpoint, scored over the validation scenes."""
    cfg = run.cfg
    best = keras.saving.load_model(run.best_file, compile=False)
    best.compile(loss=run.loss, metrics=segmentation_metrics(run.num_classes, cfg.data.ignore_index, cfg.train.threshold,
                                                             run.task, cfg.data.classes))
    # final scores over the validation scenes, on the grid the epochs' validation used (with
    # data.eval_overlap: each tile sees context past the pixels it scores, as tfseg.predict's
    # overlapping tiles do), every valid pixel once (a neighbour's share of an overlap is ignored
    # in the label) and no tile skipped for nodata (nodata pixels carry the ignore label)
    final_data = dataclasses.replace(cfg.data, max_nodata_fraction=1.0)
    final_ds = build_dataset(run.val_scenes, final_data, training=False, batch_size=run.global_batch,
                             nodata=run.nodata, dtype=run.band_dtype)
    return best, best.evaluate(final_ds, verbose=0, return_dict=True)


def _result(run: _Run, best, scores: dict, val: dict) -> dict:
    """The metrics.json of a run (the keys in their order there)."""
    cfg = run.cfg
    history_path = run.run_path / "history.csv"
    state_path = run.backup_dir / TrainingState.STATE
    final_state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    result = {
        "val": val,
        "epochs": len(read_history(history_path)) if history_path.is_file() else 0,
        "train_seconds": round(run.state.seconds, 2),
        "val_loss": float(scores["loss"]),
        "params": int(best.count_params()),
        "precision_policy": run.precision,
        "model": cfg.model.name,
        "backbone": cfg.model.backbone,
        "best_epoch": _best_epoch(history_path, cfg.train.monitor, cfg.train.monitor_mode),
        "resumes": int(final_state.get("resumes", 0)),
        "replicas": run.replicas,
        "global_batch_size": run.global_batch,
        "steps_per_epoch": run.steps,
        "max_minutes": cfg.train.max_minutes or None,
        "stop_reason": run.state.stop_reason,
        "schedule_epochs": (round(run.schedule.total_steps / run.steps, 3)
                            if isinstance(run.schedule, ResizableSchedule) else None),
    }
    if run.weights:
        result["class_weights"] = dict(zip(weight_names(cfg.data, run.task, len(run.weights)),
                                           map(float, run.weights)))
    if run.card.class_frequencies is not None:
        result["class_frequencies"] = dict(run.card.class_frequencies)
    return result


def _export_and_track(run: _Run, best, card: ModelCard, result: dict) -> None:
    """The SavedModel (``export.enabled``) and the trackers' final records; the trackers stop."""
    cfg, run_path = run.cfg, run.run_path
    archive = None
    if cfg.export.enabled:
        export_saved_model(best, run_path / "export", card)
        if run.tracker is not None and cfg.tracking.neptune.upload_model:
            archive = zip_directory(run_path / "export", run_path / ".neptune" / "artifacts" / "saved_model.zip")
    if run.tracker is not None:
        files = {"history": run_path / "history.csv", "metrics": run_path / "metrics.json",
                 "config": run_path / "config.yaml", "predictions": run_path / "predictions.png"}
        run.tracker.log_final(result, files, archive)
        run.tracker.stop()
        run.tracker = None  # stopped: not marked as failed should anything raise after this
    if run.mlflow_tracker is not None:
        run.mlflow_tracker.log_final(result, run_path, cfg.tracking.mlflow.log_model)
        run.mlflow_tracker.stop()
        run.mlflow_tracker = None


def _operating_point(cfg, model, card: ModelCard, val_scenes, batch_size, run_path: Path, result: dict):
    """Binary building tasks: object scores on the stitched validation scenes, the operating point
    searched on them (returned for the model card, into ``result``; the search table in
    RUN_DIR/operating_point_search.csv) and RUN_DIR/objects.png at that point. None for other tasks."""
    from .figures import save_object_figure, scene_rgb
    from .inference import KerasPredictor
    from .object_metrics import (footprint_channels, footprint_threshold, kept_records, match_records, proposals,
                                 scene_truth)
    from .operating_point import choose_operating_point, polygon_options_of
    from .scoring import Counts

    predictor = KerasPredictor(model, card)
    bands = predictor.instance_bands()
    if bands is None:
        return None
    started = time.time()
    default_threshold = footprint_threshold(cfg.train.threshold, bands)  # one per channel: the footprint's
    truths = [scene_truth(s, cfg.data.ignore_index) for s in val_scenes]
    point, rows, stitched = choose_operating_point(predictor, val_scenes, truths, cfg.data.window_size,
                                                   cfg.data.eval_overlap, batch_size, run_path)
    chosen = polygon_options_of(point)
    default = PolygonOptions(instances="watershed")
    panels, titles, counts = [], [], {"default": Counts(), "operating_point": Counts()}
    # objects.png: the first scenes with buildings (then the others when too few have any)
    pictured = sorted(range(len(val_scenes)), key=lambda i: not truths[i].polygons)[: max(4, cfg.train.num_figure_tiles)]
    for index, (scene, truth, (probs, valid)) in enumerate(zip(val_scenes, truths, stitched)):
        footprint, extra = footprint_channels(probs, bands)
        usable = valid & ~truth.ignore
        for name, threshold, options in (("default", default_threshold, default),
                                         ("operating_point", point["threshold"], chosen)):
            records = proposals(footprint, usable, threshold, options, extra)
            counts[name].add(match_records(truth, records, options.min_area_px, options.min_area_m2))
        if index in pictured:
            kept = kept_records(truth, records, chosen.min_area_px, chosen.min_area_m2)
            rgb, scale = scene_rgb(scene.info.path, max_side=512)
            panels.append((rgb, truth.polygons, [r.geometry for r in kept], [r.confidence for r in kept], scale))
            titles.append(scene.name)
    save_object_figure(panels, run_path / "objects.png", titles)
    result["operating_point"] = point
    result["val_objects"] = {
        name: {k.lower(): v for k, v in c.as_dict().items()} for name, c in counts.items()}
    result["val_objects"]["default"]["post_processing"] = f"threshold {default_threshold}, opening 3 px, " \
                                                          "min area 20 px, watershed"
    log.info("operating point (object F1 %.4f on %d validation scenes, %d grid points, %.0f s): %s",
             point["object_f1"], len(val_scenes), len(rows), time.time() - started, point)
    return point


def _fit_class_offsets(cfg, model, card: ModelCard, scenes, split: str, batch_size: int, result: dict) -> ModelCard:
    """Multiclass: the card with per-class argmax offsets chosen on the stitched ``scenes`` (the
    ``split``: validation or training; :mod:`tfseg.class_offsets`); the search's report into
    ``result``. No such scenes: the card as it is, with a warning."""
    from .class_offsets import TooFewClassesError, choose_class_offsets
    from .inference import KerasPredictor

    if not scenes:
        warnings.warn(f"train.class_offsets: {cfg.train.class_offsets}, but the run has no {split} scenes to fit "
                      "them on (see data.val_fraction): the model decides by plain argmax", stacklevel=2)
        return card
    started = time.time()
    try:
        offsets, report = choose_class_offsets(KerasPredictor(model, card), scenes, cfg.data.window_size,
                                               cfg.data.eval_overlap, batch_size, seed=cfg.data.seed, split=split)
    except TooFewClassesError as exc:
        warnings.warn(f"train.class_offsets: {cfg.train.class_offsets}, but the {split} scenes cannot fit them "
                      f"({exc}): the model decides by plain argmax", stacklevel=2)
        result["class_offsets"] = {"skipped": str(exc), "searched_on": split}
        return card
    absent = [card.classes[c] for c in report["classes_absent"]]
    if absent:
        log.warning("class offsets: %s never occur in the %s labels: they keep offset 0, and the %d pixels the "
                    "model gives them were left out of the search", ", ".join(absent), split,
                    report["pixels_left_out"])
    result["class_offsets"] = {"offsets": dict(zip(card.classes, offsets)), **report}
    log.info("class offsets (%s mIoU %.4f -> %.4f over %d pixels of %d scenes, %.0f s): %s",
             split, report["miou_before"], report["miou_after"], report["pixels"], report["num_scenes"],
             time.time() - started, dict(zip(card.classes, offsets)))
    return dataclasses.replace(card, class_offsets=offsets)


def weight_names(data_cfg, task: str, count: int) -> list:
    """What each of the ``count`` entries of ``train.class_weights`` weighs (binary: background,
    then the class; a single binary weight is the class's)."""
    if task == "binary":
        return ["background", data_cfg.classes[0]] if count == 2 else [data_cfg.classes[0]]
    return list(data_cfg.classes)


def resolve_class_weights(cfg, class_index) -> list:
    """``train.class_weights`` as given, or computed from the class index for ``auto``
    (``train.class_weights_method``, capped at ``train.class_weights_max``); logged when any."""
    weights, how = cfg.train.class_weights, "train.class_weights"
    if weights == "auto":
        weights, absent = class_weights(class_index, cfg.train.class_weights_method, cfg.train.class_weights_max)
        how = f"auto, {cfg.train.class_weights_method}"
        for name in absent:
            log.warning("train.class_weights=auto: class %r never occurs in the training labels; its weight is "
                        "capped at train.class_weights_max=%g", name, cfg.train.class_weights_max)
    if weights:
        names = weight_names(cfg.data, cfg.data.task, len(weights))
        log.info("class weights (%s): %s", how, ", ".join(f"{n} {float(w):.3f}" for n, w in zip(names, weights)))
    return list(weights)


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
    parser.add_argument("--quiet", action="store_true", help="no progress bars (without a terminal: one line per epoch)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_lib.load(args.config, args.overrides)
        # progress bars on a terminal; one line per epoch into a log file or pipe
        verbose = 0 if args.quiet else 1 if sys.stdout.isatty() else 2
        result = train(cfg, args.run_dir, args.overwrite, verbose=verbose)
    except INPUT_ERRORS as exc:
        return report(exc)
    if cfg.train.strategy == "multi_worker":  # one machine-readable line per worker for cluster logs
        print("WORKER-RESULT " + json.dumps({k: result[k] for k in ("chief", "epochs", "steps", "run_dir")}))
    if not result["chief"]:
        print(f"worker done: {result['epochs']} epochs, {result['steps']} steps (the chief writes {result['run_dir']})")
        return 0
    val = {k: "n/a" if v is None else f"{v:.4f}" for k, v in result["val"].items()}
    if result.get("class_weights"):
        print("class weights: " + ", ".join(f"{k} {v:.3f}" for k, v in result["class_weights"].items()))
    print(
        f"done: {result['epochs']} epochs in {result['train_seconds']:.0f}s  val iou={val['iou']} "
        f"f1={val['f1']} precision={val['precision']} recall={val['recall']}  run: {result['run_dir']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
