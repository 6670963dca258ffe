"""Dataset formats: each turns ``data`` config into train and validation scene lists.

Example:
    >>> train_scenes, val_scenes = load_scenes(cfg.data)
"""
from __future__ import annotations

from pathlib import Path

from ..labels import VectorLabels
from ..raster import open_raster
from ..sources import Scene

DEFAULT_ROOTS = {"synthetic": "data/synthetic"}


class DataFormatError(ValueError):
    """The data directory does not hold what ``data.format`` expects; names the path."""


def _raster_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff"))


def load_scene_folder(folder: Path, vector_file: Path, data_cfg, split: str) -> list[Scene]:
    """Every GeoTIFF in ``folder`` with the polygons of ``vector_file`` (any CRS) as labels."""
    if not folder.is_dir():
        raise DataFormatError(f"data directory for split '{split}' not found: {folder}")
    files = _raster_files(folder)
    if not files:
        raise DataFormatError(f"no GeoTIFF (.tif/.tiff) scenes in {folder}")
    scenes = []
    for path in files:
        info = open_raster(path, data_cfg.bands)
        if data_cfg.num_bands and info.num_bands != data_cfg.num_bands:
            raise DataFormatError(
                f"{path}: has {info.num_bands} band(s) (after data.bands selection), "
                f"config data.num_bands expects {data_cfg.num_bands}"
            )
        labels = VectorLabels.from_file(
            vector_file, info, class_attribute=data_cfg.label_attribute, require_overlap=False
        )
        scenes.append(Scene(info, labels, name=path.stem))
    return scenes


def load_synthetic(data_cfg) -> tuple[list[Scene], list[Scene]]:
    from .synthetic import ensure_dataset

    root = ensure_dataset(data_cfg.root or DEFAULT_ROOTS["synthetic"], data_cfg.synthetic)
    vector = root / "buildings.geojson"
    return (
        load_scene_folder(root / "train", vector, data_cfg, "train"),
        load_scene_folder(root / "val", vector, data_cfg, "val"),
    )


def load_scenes_format(data_cfg) -> tuple[list[Scene], list[Scene]]:
    """``root/train/*.tif`` and ``root/val/*.tif`` with one vector file (any CRS) of labels,
    ``data.options.labels`` (default ``root/labels.geojson``)."""
    root = Path(data_cfg.root)
    vector = Path(data_cfg.options.get("labels") or root / "labels.geojson")
    if not vector.is_absolute() and not vector.exists():
        vector = root / vector
    if not vector.is_file():
        raise FileNotFoundError(f"label file not found (data.options.labels): {vector}")
    return (
        load_scene_folder(root / "train", vector, data_cfg, "train"),
        load_scene_folder(root / "val", vector, data_cfg, "val"),
    )


LOADERS = {"synthetic": load_synthetic, "scenes": load_scenes_format}


def load_scenes(data_cfg) -> tuple[list[Scene], list[Scene]]:
    """Train and validation scenes for ``data_cfg.format``."""
    if data_cfg.format not in LOADERS:
        raise DataFormatError(
            f"config key 'data.format': {data_cfg.format!r} is not available; "
            f"available: {sorted(LOADERS)}"
        )
    if data_cfg.format != "synthetic" and not Path(data_cfg.root).is_dir():
        raise FileNotFoundError(f"data directory not found (data.root): {data_cfg.root!r}")
    return LOADERS[data_cfg.format](data_cfg)
