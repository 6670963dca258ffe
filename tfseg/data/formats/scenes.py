"""``data.format: scenes`` — large GeoTIFF scenes plus one vector file (GeoJSON, or GeoPackage /
shapefile with ``pyogrio``) in any CRS, with an optional class attribute.

Layout: ``root/train/*.tif`` and ``root/val/*.tif`` (or only ``root/*.tif``, split by
``data.val_fraction``), labels in ``data.options.labels`` (default ``root/labels.geojson``).
With ``data.label_attribute`` the attribute gives the class index (0 .. number of classes - 1; binary:
0 or 1), or a class name from ``data.classes`` (mapped to its index); any other value (1.7, null, the
ignore index, a class beyond ``data.classes``) is a LabelError naming the file, the feature and the
value. Without it every polygon is class 1 (binary).
``data.options.targets`` (``footprint``, ``boundary``, ``contact``; see the spacenet format)
turns binary footprints into instance-aware multi-label target channels.

Example:
    >>> train, val = load_scenes_format(cfg.data)
"""
from __future__ import annotations

from pathlib import Path

from ..labels import VectorLabels, read_vector_file
from ..raster import open_raster
from ..sources import Scene


# data.options of this format: name -> type
OPTIONS = {"labels": str, "class_names": bool, "targets": list[str], "boundary_width": int, "contact_spacing": int}


def _raster_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff"))


def class_values(data_cfg):
    """Class name -> index when the class attribute holds names (``None``: numeric attribute)."""
    return {name: i for i, name in enumerate(data_cfg.classes)} if data_cfg.options.get("class_names") else None


def load_scene_folder(folder: Path, vector_file: Path, data_cfg, split: str) -> list[Scene]:
    """Every GeoTIFF in ``folder`` with the polygons of ``vector_file`` (any CRS) as labels
    (footprints, or the ``data.options.targets`` channels)."""
    from . import DataFormatError, check_band_count, target_spec

    if not folder.is_dir():
        raise DataFormatError(f"data directory for split '{split}' not found: {folder}")
    files = _raster_files(folder)
    if not files:
        raise DataFormatError(f"no GeoTIFF (.tif/.tiff) scenes in {folder}")
    targets = target_spec(data_cfg)
    if targets.multi and data_cfg.label_attribute:
        raise DataFormatError(
            f"config keys 'data.options.targets' {list(targets.channels)} and 'data.label_attribute' "
            f"({data_cfg.label_attribute!r}) exclude each other: building target channels are made from "
            "binary footprints"
        )
    features, crs = read_vector_file(vector_file)  # read once, placed on every scene's grid
    values = class_values(data_cfg)
    scenes = []
    for path in files:
        info = open_raster(path, data_cfg.bands)
        check_band_count(info, data_cfg)
        labels = VectorLabels.from_features(
            features, crs, info, class_attribute=data_cfg.label_attribute,
            class_values=values, require_overlap=False, source=str(vector_file),
            num_classes=max(len(data_cfg.classes), 2),  # binary: 0 = background, 1 = the class
        )
        scenes.append(Scene(info, labels, name=path.stem, vectors=labels))
    _check_labels_overlap(scenes, vector_file)
    for scene in scenes:
        scene.labels = targets.wrap(scene.labels)
    return scenes


def _check_labels_overlap(scenes: list, vector_file: Path) -> None:
    """One vector file serves many scenes, so a scene without polygons is normal; a file whose
    polygons touch none of the scenes is a wrong CRS or a wrong file, not 'no objects'."""
    import shapely
    from rasterio.windows import Window, bounds
    from shapely.geometry import box

    from ..labels import LabelError

    with_polygons = [s for s in scenes if s.labels.geometries]
    if not with_polygons:
        return  # an empty label file is valid: no objects
    for scene in with_polygons:
        extent = box(*bounds(Window(0, 0, scene.info.width, scene.info.height), scene.info.affine))
        if scene.labels.tree.query(extent).size:
            return
    first = with_polygons[0]
    label_bounds = tuple(round(v, 3) for v in shapely.total_bounds(first.labels.geometries))
    raise LabelError(
        f"labels {vector_file} (bounds {label_bounds} in {first.info.crs}) overlap none of the "
        f"{len(scenes)} scene(s) in {Path(first.info.path).parent}: wrong CRS or wrong file?"
    )


def load_scenes_format(data_cfg) -> tuple[list[Scene], list[Scene]]:
    """Train and validation scenes of ``data.format: scenes``."""
    from . import split_scenes

    root = Path(data_cfg.root)
    vector = Path(data_cfg.options.get("labels") or root / "labels.geojson")
    if not vector.is_absolute() and not vector.exists():
        vector = root / vector
    if not vector.is_file():
        raise FileNotFoundError(f"label file not found (data.options.labels): {vector}")
    if (root / "train").is_dir():
        return (
            load_scene_folder(root / "train", vector, data_cfg, "train"),
            load_scene_folder(root / "val", vector, data_cfg, "val"),
        )
    return split_scenes(load_scene_folder(root, vector, data_cfg, "all"), data_cfg)
