"""Train a segmentation model.

``python -m tfseg.train [--config PATH] [--set KEY=VALUE ...] [--run-dir DIR] [--overwrite]``

With no arguments, trains ``configs/default.yaml``: a UNet on the embedded synthetic
georeferenced building dataset (generated on first use under ``data/synthetic``).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
import warnings
from pathlib import Path

import tfseg
from tfseg._tf import tensorflow as tf

import keras
import numpy as np

from . import config as config_lib
from .data.formats import load_scenes
from .data.pipeline import build_dataset
from .data.raster import compute_normalization
from .export import export_saved_model
from .figures import save_prediction_figure
from .losses import get_loss
from .metrics import segmentation_metrics
from .models import build_model
from .tracking import prepare_run_dir, write_json

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
def model_kwargs(model_cfg) -> dict:
    """Constructor arguments for the chosen architecture (config field names = argument names)."""
    if model_cfg.name == "unet" and not model_cfg.backbone:
        keys = ["depth", "filters", "batch_norm", "dropout", "dropout_position", "upsampling", "activation"]
        return {k: getattr(model_cfg, k) for k in keys}
    fields = dataclasses.asdict(model_cfg)
    fields.pop("name")
    options = fields.pop("options")
    return {**fields, **options}


def num_outputs(data_cfg) -> int:
    return 1 if len(data_cfg.classes) == 1 else len(data_cfg.classes)


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------
def train(cfg, run_dir=None, overwrite: bool = False, verbose: int = 1) -> dict:
    """Train ``cfg`` into a run directory; returns the final metrics dict (also metrics.json)."""
    keras.utils.set_random_seed(cfg.train.seed)
    # read and check every input before anything is written
    train_scenes, val_scenes = load_scenes(cfg.data)
    run_path, resuming = prepare_run_dir(run_dir, cfg, overwrite)
    precision = resolve_precision(cfg.train.precision)
    keras.mixed_precision.set_global_policy(precision)

    norm_file = run_path / "normalization.json"
    band_names = cfg.data.band_names or _band_names(train_scenes)
    norm = compute_normalization(
        [s.info for s in train_scenes], cfg.data.normalization, cfg.data.percentiles, band_names=band_names
    )
    norm.save(norm_file)

    classes = num_outputs(cfg.data)
    bands = train_scenes[0].info.num_bands
    train_ds = build_dataset(train_scenes, norm, cfg.data, training=True)
    val_ds = build_dataset(val_scenes, norm, cfg.data, training=False)
    steps = cfg.train.steps_per_epoch or max(1, cfg.data.train_windows_per_epoch // cfg.data.batch_size)

    model = build_model(cfg.model.name, input_shape=(None, None, bands), classes=classes, **model_kwargs(cfg.model))
    loss = get_loss(cfg.train.loss, classes, cfg.data.ignore_index, cfg.train.loss_weights or None)
    model.compile(
        optimizer=make_optimizer(cfg.train, steps),
        loss=loss,
        metrics=segmentation_metrics(classes, cfg.data.ignore_index, cfg.train.threshold),
        jit_compile=cfg.train.jit_compile,
    )
    best_file = run_path / "model.keras"
    callbacks = [
        keras.callbacks.BackupAndRestore(str(run_path / "backup")),
        LearningRateLogger(),
        keras.callbacks.ModelCheckpoint(
            str(best_file), monitor=cfg.train.monitor, mode=cfg.train.monitor_mode, save_best_only=True
        ),
        keras.callbacks.TensorBoard(str(run_path / "logs"), write_graph=False),
        keras.callbacks.CSVLogger(str(run_path / "history.csv"), append=resuming),
    ]
    if cfg.train.object_f1:  # first, so checkpoint/CSV/TensorBoard see val_object_f1 in the logs
        from .object_metrics import ObjectF1Callback

        callbacks.insert(0, ObjectF1Callback(val_ds, cfg.train.threshold, cfg.data.ignore_index))
    if cfg.train.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            cfg.train.monitor, patience=cfg.train.early_stopping_patience, mode=cfg.train.monitor_mode))

    started = time.time()
    history = model.fit(
        train_ds, epochs=cfg.train.epochs, steps_per_epoch=steps, validation_data=val_ds,
        callbacks=callbacks, verbose=verbose, shuffle=False,
    )
    train_seconds = time.time() - started

    best = keras.saving.load_model(best_file, compile=False)
    best.compile(loss=loss, metrics=segmentation_metrics(classes, cfg.data.ignore_index, cfg.train.threshold))
    scores = best.evaluate(val_ds, verbose=0, return_dict=True)
    val = {k: float(scores[k]) for k in ("iou", "f1", "precision", "recall", "accuracy")}
    epochs_done = len(_read_history(run_path / "history.csv")) or len(history.epoch)
    result = {
        "val": val,
        "epochs": epochs_done,
        "train_seconds": round(train_seconds, 2),
        "val_loss": float(scores["loss"]),
        "params": int(best.count_params()),
        "precision_policy": precision,
        "model": cfg.model.name,
        "backbone": cfg.model.backbone,
    }
    write_json(run_path / "metrics.json", result)
    save_prediction_figure(best, val_ds, run_path / "predictions.png", norm, cfg.train.num_figure_tiles,
                           cfg.train.threshold, cfg.data.ignore_index)
    if cfg.export.enabled:
        export_meta = {**_export_metadata(cfg, norm, result, bands), "band_dtype": train_scenes[0].info.dtype}
        export_saved_model(best, norm, run_path / "export", export_meta, threshold=cfg.train.threshold)
    return {**result, "run_dir": str(run_path)}


def _band_names(scenes) -> list:
    from .data.raster import band_names

    return band_names(scenes[0].info)


def _read_history(path: Path) -> list:
    if not path.is_file():
        return []
    return [line for line in path.read_text().splitlines()[1:] if line.strip()]


def _export_metadata(cfg, norm, result, bands) -> dict:
    return {
        "tfseg_version": tfseg.__version__,
        "model": cfg.model.name,
        "backbone": cfg.model.backbone,
        "classes": list(cfg.data.classes),
        "palette": dict(cfg.data.palette),
        "band_names": list(norm.band_names),
        "num_bands": bands,
        "tile_size": cfg.data.window_size,
        "recommended_overlap": cfg.export.recommended_overlap,
        "metrics": result["val"],
    }


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
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config fields, e.g. --set train.epochs=3 model.name=unet")
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
    val = result["val"]
    print(
        f"done: {result['epochs']} epochs in {result['train_seconds']:.0f}s  val iou={val['iou']:.4f} "
        f"f1={val['f1']:.4f} precision={val['precision']:.4f} recall={val['recall']:.4f}  run: {result['run_dir']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
