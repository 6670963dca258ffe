"""One config tree (data / model / train / export / tracking), loaded from YAML and validated once.

Example:
    >>> cfg = load("configs/default.yaml", ["train.epochs=3", "model.name=unet"])
    >>> cfg.train.epochs
    3

Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` naming the key,
what was expected and what was received, before any work starts.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from . import registry
from .errors import TfsegError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


class ConfigError(TfsegError):
    """A config key, type or value is invalid; the message names the key."""


# --------------------------------------------------------------------------------------------
# Sections. Field names are the constructor / API argument names they feed.
# --------------------------------------------------------------------------------------------
@dataclass
class SyntheticConfig:
    """The embedded, generated, georeferenced default dataset."""

    num_train_scenes: int = 4
    num_val_scenes: int = 2
    scene_size: int = 1024
    pixel_size: float = 0.5
    epsg: int = 32636
    seed: int = 1234


@dataclass
class AugmentConfig:
    flip: bool = True
    rot90: bool = True
    scale: list[float] = field(default_factory=list)  # e.g. [0.8, 1.25]; empty = off
    brightness: float = 0.0  # max per-band additive shift in normalized units
    contrast: float = 0.0  # max per-band multiplicative deviation (0.1 -> [0.9, 1.1])


@dataclass
class DataConfig:
    format: str = "synthetic"
    root: str = ""  # data directory; "" = format default (synthetic: ./data/synthetic)
    classes: list[str] = field(default_factory=lambda: ["building"])
    # label encoding: binary (1 class, labels 0/1), multiclass (class indices), multilabel
    # (one 0/1 channel per class, e.g. Dstl); auto = binary for 1 class, else multiclass
    task: str = "auto"
    palette: dict[str, str] = field(default_factory=dict)  # class name -> "#RRGGBB" (colour_mask)
    ignore_index: int = 255
    ignore_colours: str = "ignore"  # colours not in palette: ignore | error
    bands: list[int] = field(default_factory=list)  # 1-based band indexes to read; empty = all
    band_names: list[str] = field(default_factory=list)
    num_bands: int = 0  # expected band count after band selection; 0 = from data
    window_size: int = 256
    eval_overlap: int = 32  # grid overlap for evaluation windows, in pixels
    train_windows_per_epoch: int = 256
    batch_size: int = 8
    max_nodata_fraction: float = 0.5
    # training windows: uniform placement, or balanced: centre class drawn from the class index
    # (each pixel weighs frequency(class) ** -balance_alpha: 0 = uniform ... 1 = classes equally often)
    sampling: str = "uniform"
    balance_alpha: float = 0.5
    oversample_class: int = -1  # class index a share of windows is centred on; -1 = off
    oversample_fraction: float = 0.0
    normalization: str = "meanstd"  # meanstd | percentile
    percentiles: list[float] = field(default_factory=lambda: [2.0, 98.0])
    cache: bool = False  # cache decoded scenes in memory instead of streaming from disk
    # streaming mode: vector/colour labels of whole scenes rasterized once into memory up to
    # this many megapixels (x channels); beyond it, rasterized per window. 0 = always per window
    label_cache_mpix: int = 1024
    num_parallel_calls: int = -1  # -1 = tf.data.AUTOTUNE
    val_fraction: float = 0.2  # for formats without an explicit validation split
    label_attribute: str = ""  # vector class attribute (scenes format); "" = all polygons class 1
    seed: int = 42
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    options: dict[str, Any] = field(default_factory=dict)  # format-specific options (see README)


@dataclass
class ModelConfig:
    name: str = "unet"  # unet | unetpp | fcn8 | fpn | deeplabv3plus | sm
    backbone: str = ""  # "" = plain; resnet34 | resnet50 | efficientnetb0..b7 | vgg16 | hub:<preset dir>
    encoder_weights: str = ""  # "" | imagenet | path to a weights file
    encoder_freeze: bool = False
    depth: int = 4
    filters: int = 16  # base filters of the plain UNet
    batch_norm: bool = True
    dropout: float = 0.0
    dropout_position: str = "bottleneck"  # bottleneck | encoder | decoder | all
    upsampling: str = "bilinear"  # bilinear | nearest | transpose
    decoder_filters: list[int] = field(default_factory=list)  # empty = architecture default
    activation: str = "auto"  # auto | sigmoid | softmax
    stem: str = "plain"  # plain | residual (Res50-UNet stem on the raw N-band input)
    options: dict[str, Any] = field(default_factory=dict)  # architecture-specific extras


@dataclass
class TrainConfig:
    epochs: int = 8
    steps_per_epoch: int = 0  # 0 = data.train_windows_per_epoch / batch_size
    optimizer: str = "adam"  # adam | adamw | sgd
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    clipnorm: float = 0.0
    schedule: str = "cosine"  # constant | cosine | onecycle
    warmup_epochs: float = 0.0
    loss: str = "bce_dice"
    loss_weights: dict[str, float] = field(default_factory=dict)
    class_weights: Any = field(default_factory=list)  # [w, ...] per class, or "auto" (from the class index)
    class_weights_method: str = "median_frequency"  # auto weights: median_frequency | inverse_sqrt
    class_weights_max: float = 10.0  # auto weights are capped here (the median class weighs 1)
    max_minutes: float = 0.0  # training time budget (0 = off): stops after the epoch in which it runs out
    monitor: str = "val_iou"
    monitor_mode: str = "max"
    early_stopping_patience: int = 0  # 0 = off
    reduce_lr_patience: int = 0  # 0 = off; needs schedule=constant (ReduceLROnPlateau sets the LR variable)
    reduce_lr_factor: float = 0.5
    min_learning_rate: float = 0.0
    precision: str = "auto"  # auto | float32 | mixed_float16 | mixed_bfloat16
    jit_compile: bool = False
    strategy: str = "default"  # default | mirrored | multi_worker
    # data.batch_size is the GLOBAL batch (split across replicas) unless batch_per_replica
    batch_per_replica: bool = False
    lr_scaling: str = "none"  # none | linear | sqrt: scale LR with the global batch (batch_per_replica)
    seed: int = 42
    deterministic: bool = False  # TF op determinism: bit-exact reruns (slower on GPU; some GPU ops lack it)
    threshold: Union[float, list[float]] = 0.5  # multilabel: one value, or one per class (data.classes order)
    num_figure_tiles: int = 4
    object_f1: bool = False
    # multiclass: none | fit (per-class argmax offsets chosen on the validation scenes, tfseg.class_offsets)
    # | fit_training (chosen on the training scenes: when the validation scenes are the held-out test set)
    class_offsets: str = "none"
    epoch_figures: bool = False  # RUN_DIR/figures/epoch-NNNN.png (input | truth | prediction) every epoch


@dataclass
class ExportConfig:
    enabled: bool = True
    recommended_overlap: int = 32


@dataclass
class NeptuneConfig:
    mode: str = "auto"  # auto | offline | async | debug | off
    project: str = ""  # "" = $NEPTUNE_PROJECT
    upload_model: bool = True  # upload the SavedModel archive (zip of export/)


@dataclass
class MlflowConfig:
    mode: str = "auto"  # auto | local | server | off (see tfseg.tracking_mlflow)
    uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else the local store runs/mlflow.db
    experiment: str = ""  # "" = tracking.name
    log_model: bool = True  # log the SavedModel directory (export/) as an artifact


@dataclass
class TrackingConfig:
    name: str = "default"
    tags: list[str] = field(default_factory=list)
    neptune: NeptuneConfig = field(default_factory=NeptuneConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------
# Allowed values and ranges: checked by validate().
# --------------------------------------------------------------------------------------------
CHOICES = {
    "data.format": list(registry.DATA_FORMATS),
    "data.normalization": ["meanstd", "percentile"],
    "data.task": ["auto", "binary", "multiclass", "multilabel"],
    "data.ignore_colours": ["ignore", "error"],
    "data.sampling": ["uniform", "balanced"],
    "model.name": list(registry.MODELS),
    # "" = plain UNet / the architecture's default; model.name=sm accepts segmentation-models' names
    "model.backbone": ["", "resnet34", "resnet50", "vgg16"] + [f"efficientnetb{i}" for i in range(8)],
    "model.dropout_position": ["bottleneck", "encoder", "decoder", "all"],
    "model.upsampling": ["bilinear", "nearest", "transpose"],
    "model.activation": ["auto", "sigmoid", "softmax"],
    "model.stem": ["plain", "residual"],
    "train.optimizer": ["adam", "adamw", "sgd"],
    "train.schedule": ["constant", "cosine", "onecycle"],
    "train.loss": list(registry.LOSS_PRESETS),
    "train.monitor_mode": ["max", "min"],
    "train.precision": ["auto", "float32", "mixed_float16", "mixed_bfloat16"],
    "train.strategy": ["default", "mirrored", "multi_worker"],
    "train.lr_scaling": ["none", "linear", "sqrt"],
    "train.class_weights_method": ["median_frequency", "inverse_sqrt"],
    "train.class_offsets": ["none", "fit", "fit_training"],
    "tracking.neptune.mode": ["auto", "offline", "async", "debug", "off"],
    "tracking.mlflow.mode": ["auto", "local", "server", "off"],
}

# model.backbone "hub:<local preset directory>" (keras-hub backbones) works with these
HUB_ARCHITECTURES = ["unet", "fpn", "deeplabv3plus"]

# key -> (min, max); None = unbounded on that side
RANGES = {
    "data.window_size": (32, 8192),
    "data.eval_overlap": (0, None),
    "data.train_windows_per_epoch": (1, None),
    "data.batch_size": (1, 4096),
    "data.max_nodata_fraction": (0.0, 1.0),
    "data.oversample_fraction": (0.0, 1.0),
    "data.balance_alpha": (0.0, 1.0),
    "data.val_fraction": (0.0, 0.9),
    "data.ignore_index": (0, 255),
    "data.num_bands": (0, None),
    "data.label_cache_mpix": (0, None),
    "data.synthetic.num_train_scenes": (1, 100),
    "data.synthetic.num_val_scenes": (1, 100),
    "data.synthetic.scene_size": (256, 16384),
    "data.synthetic.pixel_size": (0.01, 100.0),
    "model.depth": (2, 6),
    "model.filters": (1, 1024),
    "model.dropout": (0.0, 0.95),
    "train.epochs": (1, 100000),
    "train.steps_per_epoch": (0, None),
    "train.learning_rate": (0.0, 10.0),
    "train.weight_decay": (0.0, 1.0),
    "train.momentum": (0.0, 1.0),
    "train.clipnorm": (0.0, None),
    "train.warmup_epochs": (0.0, None),
    "train.early_stopping_patience": (0, None),
    "train.reduce_lr_patience": (0, None),
    "train.reduce_lr_factor": (0.0, 0.999),
    "train.min_learning_rate": (0.0, 10.0),
    "train.threshold": (0.0, 1.0),
    "train.class_weights_max": (1.0, None),
    "train.max_minutes": (0.0, None),
    "train.num_figure_tiles": (0, 64),
    # numpy's seeds (keras.utils.set_random_seed, np.random.default_rng) are unsigned 32-bit
    "train.seed": (0, 2**32 - 1),
    "data.seed": (0, 2**32 - 1),
    "data.synthetic.seed": (0, 2**32 - 1),
    "export.recommended_overlap": (0, None),
}


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _union_member_name(tp: Any) -> str:
    return str(tp) if typing.get_origin(tp) else _type_name(tp)  # float, list[float]


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check/convert ``value`` to the field type ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            if len(args) < len(typing.get_args(tp)):  # Optional[...]
                return None
            expected = " or ".join(_union_member_name(a) for a in args)
            raise ConfigError(f"config key '{key}': expected {expected}, got null")
        if isinstance(value, (list, tuple)):  # Union[float, list[float]]: the list member
            listed = [a for a in args if a is list or typing.get_origin(a) is list]
            if listed:
                return _coerce(key, value, listed[0])
        return _coerce(key, value, args[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            return _finite(key, number)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool) and "off" in CHOICES.get(key, ()):
            return "on" if value else "off"  # YAML 1.1 reads a bare off/on as a boolean
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif tp is list or origin is list:
        if isinstance(value, (list, tuple)):
            (item_type,) = typing.get_args(tp) or (Any,)
            return [_coerce(f"{key}[{i}]", item, item_type) for i, item in enumerate(value)]
    elif tp is dict or origin is dict:
        if isinstance(value, dict):
            _, item_type = typing.get_args(tp) or (str, Any)
            return {str(name): _coerce(f"{key}.{name}", item, item_type) for name, item in value.items()}
    else:
        return value
    raise ConfigError(
        f"config key '{key}': expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
    )


def _finite(key: str, value: float) -> float:
    """``value``, or a ConfigError naming ``key`` for NaN and infinities (NaN passes every range
    check and an infinity every open one: neither is a usable setting)."""
    if not math.isfinite(value):
        raise ConfigError(f"config key '{key}': expected a finite number, got {value!r}")
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config key '{prefix or '<root>'}': expected a mapping, got {type(data).__name__} {data!r}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(
            f"unknown config key '{key}'; allowed keys under '{prefix or '<root>'}': "
            f"{', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key)
        else:
            kwargs[name] = _coerce(key, value, tp)
    return cls(**kwargs)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. train.epochs=3), got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    return key.split("."), value


def _apply_override(tree: dict, parts: list[str], value: Any, cls: type) -> None:
    """Set a dotted key in the raw tree, checking the path exists in the schema."""
    node, node_cls, walked = tree, cls, []
    for depth, part in enumerate(parts[:-1]):
        walked.append(part)
        hints = typing.get_type_hints(node_cls)
        if part in hints and _is_mapping_type(hints[part]):
            # a free-form mapping (data.options, data.palette, ...): the rest of the key is inside it
            _set_nested(node, parts[depth:], value)
            return
        if part not in hints or not dataclasses.is_dataclass(hints[part]):
            names = ", ".join(sorted(hints))
            raise ConfigError(f"unknown config key '{'.'.join(walked)}' in --set; allowed: {names}")
        node_cls = hints[part]
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    last = parts[-1]
    hints = typing.get_type_hints(node_cls)
    if last not in hints:
        where = ".".join(parts[:-1]) or "<root>"
        raise ConfigError(
            f"unknown config key '{'.'.join(parts)}' in --set; allowed keys under '{where}': "
            f"{', '.join(sorted(hints))}"
        )
    # `--set train.epochs=3` parses 3 as int; a str field given 3 keeps "3"; a float given 3 -> 3.0
    node[last] = value


def _is_mapping_type(tp: Any) -> bool:
    return tp is dict or typing.get_origin(tp) is dict


def _set_nested(node: dict, parts: list[str], value: Any) -> None:
    """``node[a][b][c] = value`` for ``parts`` [a, b, c], creating (or replacing non-mapping)
    intermediate levels."""
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def validate(cfg: Config) -> Config:
    """Check choices and ranges; raise ConfigError naming the key. Returns ``cfg`` with
    ``data.task`` resolved (never ``auto`` afterwards)."""
    flat = _flatten(cfg.to_dict())
    _check_choices(cfg, flat)
    _check_ranges(flat)
    _check_windows(cfg)
    _validate_model(cfg.model, cfg.data.window_size)
    _check_mlflow_uri(cfg)
    _check_classes_and_task(cfg)
    _check_data_lists(cfg)
    _check_train(cfg)
    _check_bands(cfg)
    return cfg


def _check_choices(cfg: Config, flat: dict) -> None:
    for key, allowed in CHOICES.items():
        if key == "model.backbone" and cfg.model.name == "sm":
            continue  # checked against segmentation-models' own list when the model is built
        if key == "model.backbone" and str(flat[key]).startswith("hub:"):
            if cfg.model.name not in HUB_ARCHITECTURES:
                raise ConfigError(f"config key 'model.backbone': keras-hub backbones ({flat[key]!r}) work with "
                                  f"model.name {HUB_ARCHITECTURES}, got model.name={cfg.model.name!r}")
            continue  # the preset directory is checked when the model is built
        if flat[key] not in allowed:
            raise ConfigError(
                f"config key '{key}': expected one of {allowed}, got {flat[key]!r}"
            )


def _check_ranges(flat: dict) -> None:
    for key, (low, high) in RANGES.items():
        values = flat[key] if isinstance(flat[key], list) else [flat[key]]
        for value in values:
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
                raise ConfigError(f"config key '{key}': expected a value in {bounds}, got {flat[key]!r}")


def _check_windows(cfg: Config) -> None:
    if cfg.data.window_size % 32:
        raise ConfigError(
            f"config key 'data.window_size': expected a multiple of 32, got {cfg.data.window_size}"
        )
    if cfg.data.eval_overlap >= cfg.data.window_size:
        raise ConfigError(
            f"config key 'data.eval_overlap': expected less than data.window_size "
            f"({cfg.data.window_size}), got {cfg.data.eval_overlap}"
        )


def _check_mlflow_uri(cfg: Config) -> None:
    if cfg.tracking.mlflow.uri:
        from .tracking_mlflow import MlflowConfigError, check_uri

        try:
            check_uri(cfg.tracking.mlflow.uri, "config key 'tracking.mlflow.uri'")
        except MlflowConfigError as exc:
            raise ConfigError(str(exc)) from None


def _check_classes_and_task(cfg: Config) -> None:
    if not cfg.data.classes:
        raise ConfigError("config key 'data.classes': expected at least one class name, got []")
    if cfg.data.task == "binary" and len(cfg.data.classes) != 1:
        raise ConfigError(
            f"config key 'data.task': binary expects exactly one class in data.classes, "
            f"got {len(cfg.data.classes)}: {cfg.data.classes}"
        )
    # the task is resolved here, once: everything downstream reads cfg.data.task
    cfg.data.task = resolve_task(cfg.data)
    _check_ignore_index(cfg.data)
    if isinstance(cfg.train.threshold, list) and (
            cfg.data.task != "multilabel" or len(cfg.train.threshold) != len(cfg.data.classes)):
        raise ConfigError(
            f"config key 'train.threshold': a list needs data.task=multilabel and one value per class "
            f"({len(cfg.data.classes)}: {cfg.data.classes}), got {cfg.train.threshold!r} with data.task="
            f"{cfg.data.task!r}")
    if cfg.train.class_offsets != "none" and cfg.data.task != "multiclass":
        raise ConfigError(
            f"config key 'train.class_offsets': {cfg.train.class_offsets} needs data.task=multiclass (offsets move "
            f"an argmax), got data.task={cfg.data.task!r}; a {cfg.data.task} model decides by train.threshold"
            + (" (and train.object_f1 searches an operating point)" if cfg.data.task == "binary" else ""))


def _check_ignore_index(data: DataConfig) -> None:
    """``data.ignore_index`` must not be a label value of the task: the pixels of that class would
    all be ignored (no loss, no score) without a word."""
    task, count = data.task, len(data.classes)
    labels = range(count) if task == "multiclass" else range(2)
    if data.ignore_index in labels:
        what = (f"the class indices 0..{count - 1} of {data.classes}" if task == "multiclass"
                else f"the {task} label values 0 and 1")
        raise ConfigError(
            f"config key 'data.ignore_index': {data.ignore_index} is one of {what} (data.task={task}): every pixel "
            f"of that label would be ignored; expected a value outside them (at least {labels.stop}, e.g. 255)")


def _check_data_lists(cfg: Config) -> None:
    if len(cfg.data.percentiles) != 2 or not 0 <= cfg.data.percentiles[0] < cfg.data.percentiles[1] <= 100:
        raise ConfigError(
            f"config key 'data.percentiles': expected [low, high] with 0 <= low < high <= 100, "
            f"got {cfg.data.percentiles!r}"
        )
    if cfg.data.augment.scale and (
        len(cfg.data.augment.scale) != 2 or not 0 < cfg.data.augment.scale[0] <= cfg.data.augment.scale[1]
    ):
        raise ConfigError(
            f"config key 'data.augment.scale': expected [] or [min, max] with 0 < min <= max, "
            f"got {cfg.data.augment.scale!r}"
        )


def _check_train(cfg: Config) -> None:
    if cfg.train.reduce_lr_patience and cfg.train.schedule != "constant":
        raise ConfigError(
            f"config key 'train.reduce_lr_patience': ReduceLROnPlateau needs train.schedule=constant "
            f"(a {cfg.train.schedule!r} schedule owns the learning rate); got schedule "
            f"{cfg.train.schedule!r} with reduce_lr_patience={cfg.train.reduce_lr_patience}"
        )
    if cfg.train.lr_scaling != "none" and not cfg.train.batch_per_replica:
        raise ConfigError(
            f"config key 'train.lr_scaling': {cfg.train.lr_scaling!r} scales the learning rate with the "
            "global batch, which only grows with the replicas when train.batch_per_replica is true"
        )
    _validate_class_weights(cfg.train.class_weights, cfg.data.task, cfg.data.classes)
    _validate_loss_weights(cfg.train.loss_weights)
    if cfg.train.max_minutes and cfg.train.strategy == "multi_worker":
        raise ConfigError(
            "config key 'train.max_minutes': not supported with train.strategy=multi_worker (each worker "
            "measures its own time and they could disagree on the last epoch); use train.epochs"
        )
    # a warm-up as long as the run never ends (the LR rises the whole run, no decay); under
    # train.max_minutes the schedule caps it at half the steps it lays out (tfseg.train.make_schedule)
    if (cfg.train.schedule == "cosine" and cfg.train.warmup_epochs and not cfg.train.max_minutes
            and cfg.train.warmup_epochs >= cfg.train.epochs):
        raise ConfigError(
            f"config keys 'train.warmup_epochs' and 'train.epochs': the warm-up ({cfg.train.warmup_epochs:g} epochs) "
            f"must be shorter than the run ({cfg.train.epochs} epochs), else the learning rate rises until the end "
            "and never decays; lower train.warmup_epochs or raise train.epochs")
    _check_monitor(cfg.train)
    if cfg.train.object_f1 and not (cfg.data.task == "binary" or (
            cfg.data.task == "multilabel" and "footprint" in cfg.data.classes)):
        raise ConfigError(
            f"config key 'train.object_f1': object scores need a building model (data.task=binary, or multilabel "
            f"with a 'footprint' class), got data.task={cfg.data.task!r} with classes {cfg.data.classes}")


# train.monitor (without val_) -> the monitor_mode it needs: losses fall, scores rise
_RISING_METRICS = ("iou", "f1", "precision", "recall", "accuracy", "miou", "object_f1", "object_precision",
                   "object_recall")


def _monitor_direction(monitor: str) -> Optional[str]:
    """``min`` for a loss, ``max`` for tfseg's scores (also per class: ``iou_<class>``), None for
    other names."""
    name = monitor.removeprefix("val_")
    if name == "loss" or name.endswith("_loss"):
        return "min"
    if name in _RISING_METRICS or name.startswith(("iou_", "f1_")):
        return "max"
    return None


def _check_monitor(train: TrainConfig) -> None:
    if not train.monitor.strip():
        raise ConfigError("config key 'train.monitor': expected a metric name of history.csv (e.g. val_iou), got ''")
    wanted = _monitor_direction(train.monitor)
    if wanted is not None and train.monitor_mode != wanted:
        raise ConfigError(
            f"config key 'train.monitor_mode': {train.monitor!r} is better when "
            f"{'lower' if wanted == 'min' else 'higher'}, so it needs train.monitor_mode={wanted}, got "
            f"{train.monitor_mode!r} (the best checkpoint would be the worst epoch)")


def _check_bands(cfg: Config) -> None:
    for i, band in enumerate(cfg.data.bands):
        if not isinstance(band, int) or isinstance(band, bool) or band < 1:
            raise ConfigError(
                f"config key 'data.bands[{i}]': expected a 1-based band index (int >= 1), got {band!r}"
            )


def _validate_class_weights(weights, task: str, classes: list) -> None:
    """``train.class_weights``: ``auto``, or finite non-negative numbers, one per class (binary:
    ``[positive]`` or ``[background, positive]``); empty = an unweighted loss."""
    if weights == "auto":
        return
    if not isinstance(weights, list) or any(
        isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0 for w in weights
    ):
        raise ConfigError(
            f"config key 'train.class_weights': expected a list of finite non-negative numbers (one per class) or "
            f"'auto', got {weights!r}"
        )
    if not weights:
        return
    if task == "binary" and len(weights) not in (1, 2):
        raise ConfigError(
            f"config key 'train.class_weights': data.task=binary expects [positive] or [background, positive] "
            f"(1 or 2 weights), got {len(weights)}: {weights!r}")
    if task != "binary" and len(weights) != len(classes):
        raise ConfigError(
            f"config key 'train.class_weights': data.task={task} expects one weight per class of data.classes "
            f"({len(classes)}: {classes}), got {len(weights)}: {weights!r}")


# the components of tfseg.losses.COMPONENTS (named here so that a config is validated without
# importing Keras; tests/test_losses.py checks that the two agree)
LOSS_COMPONENTS = ("bce", "cce", "focal", "dice", "jaccard", "tversky", "lovasz")


def _validate_loss_weights(weights: dict) -> None:
    """``train.loss_weights``: known components, non-negative weights, at least one positive."""
    if not weights:
        return
    unknown = sorted(set(weights) - set(LOSS_COMPONENTS))
    if unknown:
        raise ConfigError(f"config key 'train.loss_weights': unknown loss component(s) {unknown}; "
                          f"available: {sorted(LOSS_COMPONENTS)}")
    negative = {name: w for name, w in weights.items() if w < 0}
    if negative or not any(weights.values()):
        raise ConfigError(f"config key 'train.loss_weights': expected non-negative weights, at least one positive, "
                          f"got {weights!r}")


def _validate_model(model, window_size: int) -> None:
    if model.stem == "residual" and not (model.name == "unet" and model.backbone):
        raise ConfigError(f"config key 'model.stem': 'residual' needs model.name=unet with a model.backbone, "
                          f"got model.name={model.name!r}, model.backbone={model.backbone!r}")
    if any(not isinstance(f, int) or isinstance(f, bool) or f < 1 for f in model.decoder_filters):
        raise ConfigError(f"config key 'model.decoder_filters': expected positive integers, got {model.decoder_filters!r}")
    if model.name == "unet" and model.backbone and model.decoder_filters and len(model.decoder_filters) not in (4, 5):
        raise ConfigError(f"config key 'model.decoder_filters': unet with a backbone expects 4 or 5 decoder block "
                          f"widths, got {model.decoder_filters!r}")
    if model.name in ("unet", "unetpp") and not model.backbone:
        encoder_only = {"model.encoder_weights": model.encoder_weights, "model.encoder_freeze": model.encoder_freeze,
                        "model.decoder_filters": model.decoder_filters}
        given = {key: value for key, value in encoder_only.items() if value}
        if given:
            raise ConfigError(
                f"config key {sorted(given)[0]!r}: a plain {'UNet' if model.name == 'unet' else 'UNet++'} "
                f"(model.name={model.name}, no model.backbone) has no pretrained encoder and its decoder widths "
                f"follow model.filters; got {given}; set a model.backbone or leave these at their defaults")
    options = model.options
    if model.name == "unetpp" and not isinstance(options.get("deep_supervision", False), bool):
        raise ConfigError(f"config key 'model.options.deep_supervision': expected true or false, got "
                          f"{options['deep_supervision']!r}")
    if model.name == "deeplabv3plus":
        output_stride = options.get("output_stride", 16)
        if type(output_stride) is not int or output_stride not in (8, 16):  # 16.0 would reach the builder
            raise ConfigError(f"config key 'model.options.output_stride': expected 8 or 16, got {output_stride!r}")
        rates = options.get("atrous_rates", DEFAULT_ATROUS_RATES[output_stride])
        try:
            check_atrous_rates(rates, output_stride, window_size)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


# DeepLabV3+ atrous rates by output stride (the paper's; doubled at output stride 8)
DEFAULT_ATROUS_RATES = {16: [6, 12, 18], 8: [12, 24, 36]}


def check_atrous_rates(rates, output_stride: int, tile, key: str = "data.window_size") -> None:
    """Raise a ValueError when DeepLabV3+'s atrous ``rates`` are not positive integers, or when a
    rate reaches the feature map at ``output_stride`` of a ``tile``-pixel input (a 3x3 atrous
    convolution whose rate is not smaller than the map sees only zero padding off its centre).
    The message names ``model.options.atrous_rates``, ``key`` and the smallest tile that works.
    ``tile`` None (any size) skips the size check."""
    if (not isinstance(rates, (list, tuple)) or not rates
            or any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in rates)):
        raise ValueError(f"model.options.atrous_rates: expected a list of positive integers, got {rates!r}")
    if tile is None:
        return
    size = tile // output_stride
    if max(rates) >= size:
        smallest = -(-(max(rates) + 1) * output_stride // 32) * 32
        raise ValueError(
            f"model.options.atrous_rates {list(rates)}: rate {max(rates)} is not smaller than the "
            f"{size}x{size} feature map that {key}={tile} gives at output stride {output_stride}; the smallest "
            f"tile that works is {smallest} (or lower the rates below {size})")


def resolve_task(data_cfg) -> str:
    """The effective label encoding of ``data.task`` (``auto`` resolved from the classes).

    :func:`validate` stores it in ``data.task``, so a loaded config never says ``auto``."""
    if data_cfg.task != "auto":
        return data_cfg.task
    return "binary" if len(data_cfg.classes) == 1 else "multiclass"


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for name, value in tree.items():
        key = f"{prefix}.{name}" if prefix else name
        if isinstance(value, dict) and key not in _DICT_FIELDS:
            out.update(_flatten(value, key))
        else:
            out[key] = value
    return out


_DICT_FIELDS = {
    "data.palette",
    "data.options",
    "model.options",
    "train.loss_weights",
}


def add_overrides_argument(parser, help: str = "override config fields, e.g. --set train.epochs=3 model.name=unet"):
    """The ``--set KEY=VALUE ...`` option of every command that takes a config (repeatable; the
    values land in ``args.overrides`` for :func:`load`)."""
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help=help)


def from_dict(data: dict, overrides: Optional[list[str]] = None) -> Config:
    """Build and validate a Config from a raw mapping plus ``KEY=VALUE`` overrides."""
    tree = dict(data or {})
    tree = _deep_copy(tree)
    for item in overrides or []:
        parts, value = _parse_override(item)
        _apply_override(tree, parts, value, Config)
    return validate(_build(Config, tree, ""))


def load(path: Optional[Union[str, Path]] = None, overrides: Optional[list[str]] = None) -> Config:
    """Load a YAML config (default ``configs/default.yaml``) and apply ``--set`` overrides."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: expected a mapping of sections (data, model, train, export, "
            f"tracking), got a YAML {type(data).__name__}"
        )
    try:
        return from_dict(data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def diff(a: Config, b: Config) -> dict:
    """Keys whose values differ between two configs: ``{key: (a_value, b_value)}``."""
    fa, fb = _flatten(a.to_dict()), _flatten(b.to_dict())
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}
