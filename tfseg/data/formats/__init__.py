"""Dataset formats: each turns ``data`` config into train and validation scene lists.

``data.format`` picks the loader: synthetic (generated default), scenes (GeoTIFFs + one vector
file, any CRS), spacenet (SpaceNet AOI layout), mask_folder (images + masks paired by stem),
colour_mask (RGB / palette colour-coded masks), dstl (Dstl Kaggle layout, 20 channels,
10-class multi-label), tfds (a TFDS dataset of tiles). See docs/data.md.

Example:
    >>> train_scenes, val_scenes = load_scenes(cfg.data)
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ... import registry
from ...errors import TfsegError
from ..raster import RasterInfo
from ..sources import Scene
from .scenes import load_scene_folder, load_scenes_format  # noqa: F401  (public API)

DEFAULT_ROOTS = {"synthetic": "data/synthetic"}


class DataFormatError(TfsegError):
    """The data directory does not hold what ``data.format`` expects; names the path."""


def check_band_count(info: RasterInfo, data_cfg) -> None:
    """``data.num_bands`` (0 = any) must match the bands read from ``info``."""
    if data_cfg.num_bands and info.num_bands != data_cfg.num_bands:
        raise DataFormatError(
            f"{info.path}: has {info.num_bands} band(s) (after data.bands selection), "
            f"config data.num_bands expects {data_cfg.num_bands}"
        )


@dataclass(frozen=True)
class TargetSpec:
    """``data.options.targets`` (+ ``boundary_width``, ``contact_spacing``) of the vector formats."""

    channels: tuple
    boundary_width: int = 3
    contact_spacing: int = 10

    @property
    def multi(self) -> bool:
        return list(self.channels) != ["footprint"]

    def wrap(self, labels):
        """Vector labels as they feed the model: themselves (footprint only) or the target channels."""
        from ..labels import BuildingTargets

        if not self.multi:
            return labels
        return BuildingTargets(labels, list(self.channels), self.boundary_width, self.contact_spacing)


def target_spec(data_cfg) -> TargetSpec:
    """The building target channels asked for by ``data.options.targets`` (default ``[footprint]``:
    binary), validated: known channel names, ``data.task: multilabel`` and one class name per channel
    when there is more than the footprint. Shared by the spacenet, scenes and mask_folder formats."""
    from ..labels import SPACENET_TARGETS

    options = data_cfg.options
    raw = options.get("targets", ["footprint"])
    targets = [raw] if isinstance(raw, str) else list(raw)
    bad = [t for t in targets if t not in SPACENET_TARGETS]
    if bad or not targets or len(set(targets)) != len(targets):
        raise DataFormatError(
            f"config key 'data.options.targets': unknown or repeated target channel(s) {bad or targets}; "
            f"allowed: {list(SPACENET_TARGETS)} (each at most once)"
        )
    spec = TargetSpec(tuple(targets), int(options.get("boundary_width", 3)), int(options.get("contact_spacing", 10)))
    if spec.multi and data_cfg.task != "multilabel":
        raise DataFormatError(
            f"config key 'data.task': targets {targets} are multi-label channels; set data.task: multilabel"
        )
    if spec.multi and len(data_cfg.classes) != len(targets):
        raise DataFormatError(
            f"config key 'data.classes': expected one class name per target {targets}, got {data_cfg.classes}"
        )
    if spec.boundary_width < 1 or spec.contact_spacing < 1:
        raise DataFormatError(
            f"config keys 'data.options.boundary_width' / 'contact_spacing': expected >= 1 pixel, got "
            f"{spec.boundary_width} / {spec.contact_spacing}"
        )
    return spec


def split_scenes(scenes: list, data_cfg) -> tuple[list, list]:
    """A seeded split of ``scenes`` by ``data.val_fraction`` (at least one of each when possible)."""
    if not scenes:
        raise DataFormatError(f"no scenes found under data.root {data_cfg.root!r}")
    order = np.random.default_rng(data_cfg.seed).permutation(len(scenes))
    num_val = int(round(len(scenes) * data_cfg.val_fraction))
    if data_cfg.val_fraction > 0 and len(scenes) > 1:
        num_val = min(max(num_val, 1), len(scenes) - 1)
    val = sorted(int(i) for i in order[:num_val])
    train = sorted(int(i) for i in order[num_val:])
    return [scenes[i] for i in train], [scenes[i] for i in val]


def load_synthetic(data_cfg) -> tuple[list[Scene], list[Scene]]:
    from .synthetic import ensure_dataset

    root = ensure_dataset(data_cfg.root or DEFAULT_ROOTS["synthetic"], data_cfg.synthetic)
    vector = root / "buildings.geojson"
    return (
        load_scene_folder(root / "train", vector, data_cfg, "train"),
        load_scene_folder(root / "val", vector, data_cfg, "val"),
    )


def _lazy(name: str, entry: str):
    """The loader of format ``name`` at ``entry`` (``module:function``), imported when called."""
    if registry.module_of(entry) == __name__:
        return registry.resolve(entry)

    def load(data_cfg):
        return registry.resolve(entry)(data_cfg)

    load.__name__ = entry.partition(":")[2]
    return load


LOADERS = {name: _lazy(name, entry) for name, entry in registry.DATA_FORMATS.items()}


# the module of each format (relative to this package); it declares its data.options as
# OPTIONS = {name: type}
MODULES = {name: registry.module_of(entry).rpartition(".")[2] if registry.module_of(entry) != __name__
           else name for name, entry in registry.DATA_FORMATS.items()}
# options every format accepts: read when the data is built into a TFDS dataset (tfseg.data.tfds)
COMMON_OPTIONS = {"tile_overlap": int}


def allowed_options(data_format: str) -> dict:
    """``{option name: type}`` of ``data.options`` for ``data.format`` ``data_format``."""
    module = importlib.import_module(f"{__name__}.{MODULES[data_format]}")
    return {**module.OPTIONS, **COMMON_OPTIONS}


def check_options(data_cfg) -> dict:
    """Validate ``data.options`` against the format's allowed names and types (a misspelt name
    gets a "did you mean" suggestion); returns the options with their values coerced."""
    from ...config import ConfigError, _coerce

    allowed = allowed_options(data_cfg.format)
    checked = {}
    for name, value in data_cfg.options.items():
        if name not in allowed:
            close = difflib.get_close_matches(name, list(allowed), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            names = ", ".join(sorted(allowed)) or "(none)"
            raise ConfigError(f"config key 'data.options.{name}': not an option of data.format "
                              f"{data_cfg.format!r}{hint} (allowed: {names})")
        checked[name] = _coerce(f"data.options.{name}", value, allowed[name])
    return checked


def load_scenes(data_cfg) -> tuple[list[Scene], list[Scene]]:
    """Train and validation scenes for ``data_cfg.format``."""
    if data_cfg.format not in LOADERS:
        raise DataFormatError(
            f"config key 'data.format': {data_cfg.format!r} is not available; "
            f"available: {sorted(LOADERS)}"
        )
    check_options(data_cfg)
    if data_cfg.format not in ("synthetic", "tfds") and not Path(data_cfg.root).is_dir():
        raise FileNotFoundError(f"data directory not found (data.root): {data_cfg.root!r}")
    return LOADERS[data_cfg.format](data_cfg)
