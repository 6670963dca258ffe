"""``data.format: dstl`` — the Dstl Satellite Imagery Feature Detection (Kaggle) layout.

    root/three_band/<id>.tif          RGB, ~0.3 m (the grid everything is stacked on)
    root/sixteen_band/<id>_M.tif      8 multispectral bands, ~1.2 m
    root/sixteen_band/<id>_A.tif      8 SWIR bands, ~7.5 m
    root/sixteen_band/<id>_P.tif      panchromatic, ~0.3 m
    root/train_wkt_v4.csv             ImageId, ClassType (1-10), MultipolygonWKT
    root/grid_sizes.csv               ImageId, Xmax, Ymin

Products are resampled (bilinear) onto the three-band grid and stacked: 3 + 8 + 8 + 1 = 20
channels (``data.options.products`` picks a subset, in that order). Polygons are in normalized
coordinates: x in [0, Xmax], y in [Ymin, 0]; pixel = x / Xmax * W * W / (W + 1) (and the same
for y with Ymin and H), the conversion given by the competition. Labels are 10-channel
multi-label masks (``data.task: multilabel``). Only images listed in ``train_wkt_v4.csv`` are
used; they are split by ``data.val_fraction`` (seeded).

Example:
    >>> polygons = normalized_to_pixels(shapely.from_wkt(wkt), xmax, ymin, width, height)
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import shapely

from ..labels import PixelPolygonLabels, repair
from ..raster import open_raster, stack_rasters
from ..sources import Scene

PRODUCTS = {"three_band": "three_band/{id}.tif", "M": "sixteen_band/{id}_M.tif",
            "A": "sixteen_band/{id}_A.tif", "P": "sixteen_band/{id}_P.tif"}
CLASSES = ["buildings", "structures", "road", "track", "trees", "crops", "waterway",
           "standing_water", "vehicle_large", "vehicle_small"]


# data.options of this format: name -> type
OPTIONS = {"products": list[str]}


def normalized_to_pixels(geom, xmax: float, ymin: float, width: int, height: int):
    """Scale a geometry from Dstl normalized coordinates to (col, row) pixel coordinates."""
    sx = width * width / (width + 1.0) / xmax
    sy = height * height / (height + 1.0) / ymin
    return shapely.transform(geom, lambda xy: xy * [sx, sy])


def read_grid_sizes(path: Path) -> dict:
    from . import DataFormatError

    if not path.is_file():
        raise FileNotFoundError(f"Dstl grid sizes not found: {path}")
    sizes = {}
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or len(header) < 3:
            raise DataFormatError(f"{path}: expected columns ImageId,Xmax,Ymin, got {header}")
        for line, row in enumerate(reader, start=2):
            try:
                sizes[row[0]] = (float(row[1]), float(row[2]))
            except (IndexError, ValueError):
                raise DataFormatError(f"{path}:{line}: expected ImageId,Xmax,Ymin, got {row}") from None
    return sizes


def read_wkt_labels(path: Path) -> dict:
    """{image_id: {class_type (1-10): geometry}} from train_wkt_v4.csv."""
    from . import DataFormatError

    if not path.is_file():
        raise FileNotFoundError(f"Dstl labels not found: {path}")
    csv.field_size_limit(sys.maxsize)  # some multipolygons are tens of MB of text
    labels: dict = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"ImageId", "ClassType", "MultipolygonWKT"} <= set(reader.fieldnames):
            raise DataFormatError(
                f"{path}: expected columns ImageId,ClassType,MultipolygonWKT, got {reader.fieldnames}"
            )
        for line, row in enumerate(reader, start=2):
            try:
                geom = shapely.from_wkt(row["MultipolygonWKT"])
                class_type = int(row["ClassType"])
            except (shapely.errors.GEOSException, ValueError) as exc:
                raise DataFormatError(f"{path}:{line}: bad row for {row.get('ImageId')}: {exc}") from None
            if not 1 <= class_type <= len(CLASSES):
                raise DataFormatError(f"{path}:{line}: ClassType {class_type} not in 1..{len(CLASSES)}")
            labels.setdefault(row["ImageId"], {})[class_type] = geom
    return labels


def image_labels(geoms: dict, grid_size: tuple, width: int, height: int, source: str = "") -> PixelPolygonLabels:
    """The labels of one image, ``geoms`` ``{class_type (1-10): geometry}`` in normalized
    coordinates (a row of :func:`read_wkt_labels`) on a ``width`` x ``height`` grid with the
    image's ``(Xmax, Ymin)``: one list of pixel polygons per class (training and
    ``tfseg.evaluate pixels --wkt`` rasterize them alike)."""
    xmax, ymin = grid_size
    counter: dict = {}
    per_class = []
    for k in range(1, len(CLASSES) + 1):
        geom = geoms.get(k)
        polys = []
        if geom is not None and not geom.is_empty:
            geom = repair(normalized_to_pixels(geom, xmax, ymin, width, height), counter)
            if geom is not None:
                polys = list(getattr(geom, "geoms", [geom]))
        per_class.append(polys)
    return PixelPolygonLabels(per_class, source=source)


def load_dstl(data_cfg):
    from . import DataFormatError, check_band_count, split_scenes

    root = Path(data_cfg.root)
    products = list(data_cfg.options.get("products", list(PRODUCTS)))
    bad = [p for p in products if p not in PRODUCTS]
    if bad or not products:
        raise DataFormatError(
            f"config key 'data.options.products': expected a subset of {list(PRODUCTS)}, got {products}"
        )
    if data_cfg.task != "multilabel" or len(data_cfg.classes) != len(CLASSES):
        raise DataFormatError(
            f"config keys 'data.task'/'data.classes': Dstl labels are multilabel with "
            f"{len(CLASSES)} classes {CLASSES}; got task {data_cfg.task!r} and {len(data_cfg.classes)} classes"
        )
    grid = read_grid_sizes(root / "grid_sizes.csv")
    wkt = read_wkt_labels(root / "train_wkt_v4.csv")
    scenes = []
    for image_id in sorted(wkt):
        if image_id not in grid:
            raise DataFormatError(f"{root / 'grid_sizes.csv'}: no Xmax/Ymin for image {image_id}")
        infos = []
        for product in products:
            path = root / PRODUCTS[product].format(id=image_id)
            infos.append(open_raster(path))
        info = stack_rasters(infos)
        if data_cfg.bands:
            raise DataFormatError("config key 'data.bands': not supported for dstl; use data.options.products")
        check_band_count(info, data_cfg)
        labels = image_labels(wkt[image_id], grid[image_id], info.width, info.height,
                              source=f"{root / 'train_wkt_v4.csv'}:{image_id}")
        scenes.append(Scene(info, labels, name=image_id))
    if not scenes:
        raise DataFormatError(f"{root / 'train_wkt_v4.csv'}: no labelled images")
    return split_scenes(scenes, data_cfg)
