"""Labels: vector polygons (any CRS) rasterized onto raster windows, and mask rasters.

Example:
    >>> labels = VectorLabels.from_file("buildings.geojson", info)   # reprojected to info.crs
    >>> mask = labels.rasterize(window, info)                       # uint8 HxW, 0/1
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import rasterio.features
import rasterio.windows
import shapely
from rasterio.crs import CRS
from rasterio.warp import transform_geom
from rasterio.windows import Window
from shapely.geometry import box, mapping, shape
from shapely.strtree import STRtree

from .raster import RasterInfo, _handle

log = logging.getLogger(__name__)


class LabelError(ValueError):
    """Labels cannot be used with their raster; the message names the file."""


def read_vector_file(path) -> tuple[list[dict], Optional[str]]:
    """Features and CRS of a GeoJSON file (RFC 7946 default CRS84 when it names none).

    GeoPackage and other formats are read through fiona/pyogrio when installed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    if path.suffix.lower() in (".geojson", ".json"):
        text = path.read_text()
        if not text.strip():
            return [], None  # an empty file is a valid "no objects"
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LabelError(f"label file {path}: invalid JSON: {exc}") from None
        if doc.get("type") == "Feature":
            features = [doc]
        elif doc.get("type") == "FeatureCollection":
            features = doc.get("features") or []
        else:
            raise LabelError(
                f"label file {path}: expected a GeoJSON FeatureCollection or Feature, "
                f"got type {doc.get('type')!r}"
            )
        crs = None
        crs_obj = doc.get("crs")
        if crs_obj:
            crs = (crs_obj.get("properties") or {}).get("name")
        return features, crs or "OGC:CRS84"
    try:
        import pyogrio  # noqa: F401  (optional: GeoPackage, shapefiles)

        import pyogrio.raw as raw
    except ImportError:
        raise LabelError(
            f"label file {path}: only GeoJSON is read without extras; "
            "install pyogrio (`pip install pyogrio`) for GeoPackage/shapefiles"
        ) from None
    meta, _, geometry, field_data = raw.read(path, return_fids=False)
    geoms = shapely.from_wkb(geometry)
    names = list(meta["fields"])
    features = [
        {
            "type": "Feature",
            "geometry": mapping(g) if g is not None else None,
            "properties": {n: field_data[i][k] for i, n in enumerate(names)},
        }
        for k, g in enumerate(geoms)
    ]
    return features, meta.get("crs")


def repair(geom, counter: dict):
    """Make an invalid geometry valid (self-intersections), keep only its polygonal part."""
    if geom.is_valid:
        return geom
    counter["repaired"] = counter.get("repaired", 0) + 1
    fixed = shapely.make_valid(geom)
    polys = [g for g in getattr(fixed, "geoms", [fixed]) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(polys) if polys else None


@dataclass
class VectorLabels:
    """Polygons in the raster's CRS with a burn value each, indexed for window queries."""

    geometries: list
    values: np.ndarray
    source: str = ""

    def __post_init__(self):
        self.tree = STRtree(self.geometries) if self.geometries else None

    @classmethod
    def from_file(
        cls,
        path,
        info: RasterInfo,
        class_attribute: str = "",
        class_values: Optional[dict] = None,
        require_overlap: bool = True,
    ) -> "VectorLabels":
        """Read ``path``, reproject its polygons into ``info``'s CRS, repair invalid ones.

        Raises LabelError when the raster has no CRS, or when the labels do not overlap the
        raster at all (a wrong-CRS mistake would otherwise give a silently empty mask).
        """
        features, crs = read_vector_file(path)
        return cls.from_features(
            features, crs, info, class_attribute, class_values, require_overlap, source=str(path)
        )

    @classmethod
    def from_features(
        cls,
        features: Sequence[dict],
        crs: Optional[str],
        info: RasterInfo,
        class_attribute: str = "",
        class_values: Optional[dict] = None,
        require_overlap: bool = True,
        source: str = "",
    ) -> "VectorLabels":
        features = [f for f in features if f.get("geometry")]
        if not features:
            return cls([], np.zeros(0, np.uint8), source)
        if info.crs is None:
            raise LabelError(
                f"raster {info.path} has no CRS, so vector labels {source} cannot be placed on it"
            )
        dst = CRS.from_string(info.crs)
        src = CRS.from_string(crs) if crs else dst
        counter: dict = {}
        geoms, values = [], []
        for i, feat in enumerate(features):
            geom_json = feat["geometry"]
            if src != dst:
                geom_json = transform_geom(src, dst, geom_json)
            geom = repair(shape(geom_json), counter)
            if geom is None or geom.is_empty:
                continue
            if class_attribute:
                props = feat.get("properties") or {}
                if class_attribute not in props:
                    raise LabelError(
                        f"label file {source}: feature {i} has no attribute {class_attribute!r}"
                    )
                raw = props[class_attribute]
                if class_values is not None:
                    if raw not in class_values:
                        raise LabelError(
                            f"label file {source}: feature {i} has {class_attribute}={raw!r}, "
                            f"expected one of {sorted(class_values)}"
                        )
                    raw = class_values[raw]
                values.append(int(raw))
            else:
                values.append(1)
            geoms.append(geom)
        if counter.get("repaired"):
            log.warning(
                "%s: repaired %d invalid (self-intersecting) polygon(s)", source, counter["repaired"]
            )
        labels = cls(geoms, np.asarray(values, np.uint8), source)
        if require_overlap and geoms:
            bounds = rasterio.windows.bounds(Window(0, 0, info.width, info.height), info.affine)
            if not labels.tree.query(box(*bounds)).size:
                lb = shapely.total_bounds(np.asarray(geoms, dtype=object))
                raise LabelError(
                    f"labels {source} (bounds {tuple(round(v, 3) for v in lb)} in {info.crs}) do not "
                    f"overlap raster {info.path} (bounds {tuple(round(v, 3) for v in bounds)}): "
                    "wrong CRS or wrong file?"
                )
        return labels

    def rasterize(self, window: Window, info: RasterInfo, fill: int = 0) -> np.ndarray:
        """Burn the polygons touching ``window`` (pixel-centre rule) into a uint8 HxW mask."""
        height, width = int(window.height), int(window.width)
        if self.tree is None:
            return np.full((height, width), fill, np.uint8)
        transform = rasterio.windows.transform(window, info.affine)
        bounds = rasterio.windows.bounds(window, info.affine)
        hits = self.tree.query(box(*bounds))
        if not hits.size:
            return np.full((height, width), fill, np.uint8)
        return rasterio.features.rasterize(
            ((self.geometries[i], int(self.values[i])) for i in sorted(hits)),
            out_shape=(height, width),
            transform=transform,
            fill=fill,
            dtype="uint8",
        )


@dataclass
class MaskLabels:
    """A mask raster on the same grid as its image; ``lookup`` maps raw values to labels."""

    info: RasterInfo
    lookup: Optional[np.ndarray] = None  # 256-entry uint8 table; None = values as they are

    def rasterize(self, window: Window, info: RasterInfo, fill: int = 255) -> np.ndarray:
        col, row = int(window.col_off), int(window.row_off)
        width, height = int(window.width), int(window.height)
        out = np.full((height, width), fill, np.uint8)
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + width, self.info.width), min(row + height, self.info.height)
        if c1 > c0 and r1 > r0:
            data = _handle(self.info.path).read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
            data = data.astype(np.uint8) if self.lookup is None else self.lookup[data]
            out[r0 - row : r1 - row, c0 - col : c1 - col] = data
        return out
