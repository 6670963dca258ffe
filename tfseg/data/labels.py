"""Labels: vector polygons (any CRS) rasterized onto raster windows, and mask rasters.

Example:
    >>> labels = VectorLabels.from_file("buildings.geojson", info)   # reprojected to info.crs
    >>> mask = labels.rasterize(window, info)                       # uint8 HxW, 0/1
"""
from __future__ import annotations

import json
import logging
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import rasterio.features
import rasterio.windows
import shapely
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioError
from rasterio.warp import transform_geom
from rasterio.windows import Window
from shapely.geometry import box, mapping, shape
from shapely.strtree import STRtree

from ..errors import TfsegError
from .raster import ArrayInfo, RasterInfo, raster_handle

log = logging.getLogger(__name__)


class LabelError(TfsegError):
    """Labels cannot be used with their raster; the message names the file."""


ASSUMED_CRS = "OGC:CRS84"  # RFC 7946: a GeoJSON file without a "crs" member is lon/lat
POLYGONAL = ("Polygon", "MultiPolygon")


def read_vector_file(path) -> tuple[list[dict], Optional[str]]:
    """Features and CRS of a GeoJSON file (RFC 7946 default CRS84 when it names none).

    GeoPackage and other formats are read through fiona/pyogrio when installed. Features without
    a geometry (``"geometry": null``) are dropped and counted in one warning; so are points and
    lines (labels are areas: only polygons, and the polygons of a geometry collection, are
    burned). A GeoJSON file without a ``crs`` member whose coordinates are not lon/lat is a
    LabelError naming the file.
    """
    features, crs = _read_vector_features(path)
    kept = [f for f in features if f.get("geometry")]
    if len(kept) < len(features):
        log.warning("label file %s: %d of %d feature(s) have no geometry and were dropped", path,
                    len(features) - len(kept), len(features))
    return polygon_features(kept, f"label file {path}"), crs


def polygon_features(features: Sequence[dict], source: str = "labels") -> list[dict]:
    """``features`` with their polygons only: points and lines (also those in a geometry
    collection) are dropped and counted by type in one warning naming ``source``."""
    kept, dropped = [], {}
    for feat in features:
        geom = feat.get("geometry") or {}
        kind = geom.get("type")
        if kind in POLYGONAL:
            kept.append(feat)
            continue
        parts = (geom.get("geometries") or []) if kind == "GeometryCollection" else [geom]
        polygons = [g for g in parts if (g or {}).get("type") in POLYGONAL]
        for g in parts:
            if (g or {}).get("type") not in POLYGONAL:
                name = (g or {}).get("type") or "null"
                dropped[name] = dropped.get(name, 0) + 1
        if polygons:  # a collection: its polygons
            kept.append(feat if len(polygons) == len(parts) else
                        {**feat, "geometry": {"type": "GeometryCollection", "geometries": polygons}})
    if dropped:
        detail = ", ".join(f"{n} {kind}" for kind, n in sorted(dropped.items()))
        log.warning("%s: dropped %d geometr%s other than polygons (%s): labels are areas, only polygons are "
                    "burned", source, sum(dropped.values()), "y" if sum(dropped.values()) == 1 else "ies", detail)
    return kept


def _coordinate_bounds(features: Sequence[dict]) -> Optional[tuple[float, float, float, float]]:
    """(xmin, ymin, xmax, ymax) of every coordinate of ``features`` (None: no coordinates)."""
    lows, highs = [], []

    def walk(coords):
        if not isinstance(coords, (list, tuple)) or not coords:
            return
        if isinstance(coords[0], (int, float)):  # one position
            coords = [coords]
        if isinstance(coords[0], (list, tuple)) and coords[0] and isinstance(coords[0][0], (int, float)):
            xy = np.asarray([c[:2] for c in coords], float)
            lows.append(xy.min(axis=0))
            highs.append(xy.max(axis=0))
            return
        for part in coords:
            walk(part)

    def geometry(geom):
        if not isinstance(geom, dict):
            return
        if geom.get("type") == "GeometryCollection":
            for g in geom.get("geometries") or []:
                geometry(g)
        else:
            walk(geom.get("coordinates"))

    for feat in features:
        geometry(feat.get("geometry"))
    if not lows:
        return None
    low, high = np.min(lows, axis=0), np.max(highs, axis=0)
    return float(low[0]), float(low[1]), float(high[0]), float(high[1])


def _read_vector_features(path) -> tuple[list[dict], Optional[str]]:
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
        if not crs:
            bounds = _coordinate_bounds(features)
            if bounds is not None and not (-180 <= bounds[0] and bounds[2] <= 180 and -90 <= bounds[1]
                                           and bounds[3] <= 90):
                raise LabelError(
                    f"label file {path}: no 'crs' member, so its coordinates are read as lon/lat ({ASSUMED_CRS}, "
                    f"RFC 7946), but they span {tuple(round(v, 3) for v in bounds)}, outside the lon/lat range: "
                    "projected coordinates? Name their CRS in a crs member, e.g. "
                    '"crs": {"type": "name", "properties": {"name": "EPSG:32636"}}'
                )
        return features, crs or ASSUMED_CRS
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


def _reprojected(geom_json: dict, src: CRS, dst: CRS, crs: Optional[str], info: RasterInfo, source: str,
                 index: int) -> dict:
    """``geom_json`` reprojected from ``src`` to ``dst``; a failure (e.g. projected coordinates
    read as lon/lat) is a LabelError naming the file, the feature and both CRSs."""
    try:
        return transform_geom(src, dst, geom_json)
    except (CPLE_BaseError, RasterioError) as exc:
        hint = (f" (a GeoJSON file without a 'crs' member is read as lon/lat, {ASSUMED_CRS}: name the CRS "
                "of projected coordinates in a crs member)" if crs == ASSUMED_CRS else "")
        raise LabelError(
            f"label file {source}: feature {index} cannot be reprojected from {crs} to the CRS of raster "
            f"{info.path} ({info.crs}): {exc}{hint}"
        ) from None


def class_value(raw, num_classes: Optional[int], what: str) -> int:
    """The burn value of a class attribute value ``raw``: an integer class index (an int, an
    integral float such as 2.0, or a string of digits) below ``num_classes`` (None: below 255,
    the usual ignore index); anything else (1.7, null, 300, the ignore index, more than the
    classes) is a LabelError starting with ``what`` (the file, the feature and the value)."""
    value = None
    if isinstance(raw, (int, np.integer)) and not isinstance(raw, (bool, np.bool_)):
        value = int(raw)
    elif isinstance(raw, (float, np.floating)) and float(raw).is_integer():
        value = int(raw)
    elif isinstance(raw, str) and raw.strip().isdigit():
        value = int(raw.strip())
    limit = num_classes if num_classes is not None else 255
    if value is None or not 0 <= value < limit:
        classes = f" ({num_classes} classes, 0 = the first)" if num_classes is not None else " (255 = ignore)"
        names = (" (class names need data.options.class_names: true)"
                 if isinstance(raw, str) and value is None else "")
        raise LabelError(f"{what}: expected an integer class index in 0..{limit - 1}{classes}{names}")
    return value


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
    num_channels = 1

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
        num_classes: Optional[int] = None,
    ) -> "VectorLabels":
        """Read ``path``, reproject its polygons into ``info``'s CRS, repair invalid ones.

        Raises LabelError when the raster has no CRS, when the labels do not overlap the
        raster at all (a wrong-CRS mistake would otherwise give a silently empty mask), or when a
        ``class_attribute`` value is no class index below ``num_classes`` (default: below 256).
        """
        features, crs = read_vector_file(path)
        return cls.from_features(
            features, crs, info, class_attribute, class_values, require_overlap, source=str(path),
            num_classes=num_classes,
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
        num_classes: Optional[int] = None,
    ) -> "VectorLabels":
        without = sum(1 for f in features if not f.get("geometry"))
        if without:
            log.warning("labels %s: %d feature(s) have no geometry and were dropped", source, without)
        features = polygon_features([f for f in features if f.get("geometry")], f"labels {source}")
        if not features:
            return cls([], np.zeros(0, np.uint8), source)
        if info.crs is None:
            raise LabelError(
                f"raster {info.path} has no CRS, so vector labels {source} cannot be placed on it"
            )
        dst = CRS.from_string(info.crs)
        try:
            src = CRS.from_string(crs) if crs else dst
        except CRSError as exc:
            raise LabelError(f"label file {source}: unknown CRS {crs!r}: {exc}") from None
        counter: dict = {}
        geoms, values = [], []
        for i, feat in enumerate(features):
            geom_json = feat["geometry"]
            if src != dst:
                geom_json = _reprojected(geom_json, src, dst, crs, info, source, i)
            geom = repair(shape(geom_json), counter)
            if geom is None or geom.is_empty:
                counter["empty"] = counter.get("empty", 0) + 1
                continue
            if class_attribute:
                props = feat.get("properties") or {}
                if class_attribute not in props:
                    raise LabelError(
                        f"label file {source}: feature {i} has no attribute {class_attribute!r}"
                    )
                raw = props[class_attribute]
                if class_values is not None:
                    if not isinstance(raw, Hashable) or raw not in class_values:
                        raise LabelError(
                            f"label file {source}: feature {i} has {class_attribute}={raw!r}, "
                            f"expected one of {sorted(class_values)}"
                        )
                    raw = class_values[raw]
                values.append(class_value(raw, num_classes, f"label file {source}: feature {i} has "
                                                           f"{class_attribute}={raw!r}"))
            else:
                values.append(1)
            geoms.append(geom)
        if counter.get("repaired"):
            log.warning(
                "%s: repaired %d invalid (self-intersecting) polygon(s)", source, counter["repaired"]
            )
        if counter.get("empty"):
            log.warning("%s: dropped %d feature(s) with an empty geometry (or no polygonal part once repaired)",
                        source, counter["empty"])
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


def check_same_grid(image: RasterInfo, mask: RasterInfo) -> None:
    """Raise LabelError naming both files unless ``mask`` lies on ``image``'s pixel grid."""
    if (image.width, image.height) != (mask.width, mask.height):
        raise LabelError(
            f"mask {mask.path} is {mask.width}x{mask.height} pixels but image {image.path} is "
            f"{image.width}x{image.height}: masks must be on the image's grid (same size)"
        )
    if image.crs and mask.crs:
        same_crs = CRS.from_string(image.crs) == CRS.from_string(mask.crs)
        pixel = abs(image.transform[0]) or 1.0
        shift = max(abs(a - b) for a, b in zip(image.transform, mask.transform))
        if not same_crs or shift > 0.01 * pixel:
            raise LabelError(
                f"mask {mask.path} is not georeferenced like image {image.path} "
                f"(CRS {mask.crs} vs {image.crs}, transform {mask.transform} vs {image.transform})"
            )


def _read_mask_window(info: RasterInfo, window: Window, bands=(1,)):
    """Raw mask values in ``window`` clipped to the raster, plus where they go in the window."""
    col, row = int(window.col_off), int(window.row_off)
    width, height = int(window.width), int(window.height)
    c0, r0 = max(col, 0), max(row, 0)
    c1, r1 = min(col + width, info.width), min(row + height, info.height)
    if c1 <= c0 or r1 <= r0:
        return None, None
    if isinstance(info, ArrayInfo):
        data = info.array[r0:r1, c0:c1][..., [b - 1 for b in bands]]
    else:
        with raster_handle(info.path) as src:
            data = np.moveaxis(src.read(list(bands), window=Window(c0, r0, c1 - c0, r1 - r0)), 0, -1)
    return data, (slice(r0 - row, r1 - row), slice(c0 - col, c1 - col))


@dataclass
class MaskLabels:
    """A mask raster on the same grid as its image; ``lookup`` maps raw values to labels.

    With ``num_channels`` > 1 the mask holds one 0/1 band per class (multi-label), read as HxWxK.

    Example:
        >>> labels = MaskLabels(open_raster("X.mask.tif"), binary_lookup(ignore_index=255))
    """

    info: RasterInfo
    lookup: Optional[np.ndarray] = None  # 256-entry uint8 table; None = values as they are
    num_channels: int = 1

    def rasterize(self, window: Window, info: RasterInfo, fill: int = 255) -> np.ndarray:
        width, height = int(window.width), int(window.height)
        bands = tuple(range(1, self.num_channels + 1))
        shape = (height, width) if self.num_channels == 1 else (height, width, self.num_channels)
        out = np.full(shape, fill, np.uint8)
        data, where = _read_mask_window(self.info, window, bands)
        if data is not None:
            data = apply_lookup(data, self.lookup, self.info.nodata, fill)
            out[where] = data[..., 0] if self.num_channels == 1 else data
        return out


def apply_lookup(data: np.ndarray, lookup: Optional[np.ndarray], nodata=None, ignore_index: int = 255) -> np.ndarray:
    """uint8 labels of raw mask values checked by :func:`class_mask_lookup` & co: only NaN (a
    float mask) and a nodata tag outside 0..255 (e.g. 65535 in a 16-bit mask) can remain, and they
    become ``ignore_index`` (never cast to an index, never clipped onto 255, which is a class value
    in {0,255} masks)."""
    tagged = None
    if data.dtype.kind == "f":
        nan = np.isnan(data)
        tagged = nan if nan.any() else None
    if nodata is not None and not np.isnan(nodata) and not 0 <= nodata < 256:
        hit = data == nodata
        tagged = hit if tagged is None else tagged | hit
    if tagged is not None:
        data = np.where(tagged, 0, data)
    if lookup is not None:
        data = lookup[data.astype(np.intp)]
    data = data.astype(np.uint8)
    if tagged is not None:
        data[tagged] = ignore_index
    return data


def binary_lookup(ignore_index: int = 255) -> np.ndarray:
    """Raw mask value -> label for binary masks stored as {0,1} or {0,255}; others -> ignore.

    Use :func:`binary_mask_lookup` when the file's values are known: it resolves what 255 means.
    """
    lookup = np.full(256, ignore_index, np.uint8)
    lookup[0], lookup[1], lookup[255] = 0, 1, 1
    return lookup


def mask_values(path, band: int = 1) -> set:
    """The distinct values of an 8-bit mask band (read in blocks: bounded memory)."""
    import warnings

    import rasterio

    values: set = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            for _, window in src.block_windows(band):
                data = src.read(band, window=window)
                values.update(np.unique(data).tolist())  # any dtype: 16-bit, signed, float
    return values


def _without_nodata(values, nodata) -> set:
    """``values`` without NaN (never a class: ignored) and without the file's ``nodata``."""
    values = {v for v in values if v == v}
    if nodata is not None and not np.isnan(nodata):
        values.discard(nodata)
    return values


def _integral(value) -> bool:
    return float(value).is_integer()


def _bad_values_error(source, values, bad, expected) -> "LabelError":
    shown = ", ".join(str(v) for v in sorted(bad)[:10])
    return LabelError(f"mask {source or '<array>'}: value {sorted(bad)[0]} is out of range ({expected}); "
                      f"bad values: {shown}{' ...' if len(bad) > 10 else ''}; all values: {sorted(values)[:20]}")


def class_mask_lookup(values, num_classes: int, ignore_index: int = 255, source: str = "",
                      nodata=None) -> np.ndarray:
    """Raw value -> label for a class-index mask holding ``values`` (training and evaluation):
    0..K-1 are the classes, ``ignore_index``, NaN and the file's ``nodata`` are ignored; any other
    value (e.g. 7 with 5 classes, 2.5 in a float mask, or 300 in a 16-bit mask) is a LabelError
    naming ``source`` and the value.
    """
    bad = {v for v in _without_nodata(values, nodata)
           if not (_integral(v) and (v == ignore_index or 0 <= v < num_classes))}
    if bad:
        raise _bad_values_error(source, values, bad, f"expected class indices 0..{num_classes - 1} or "
                                                     f"{ignore_index} = ignore")
    lookup = np.full(256, ignore_index, np.uint8)
    lookup[:num_classes] = np.arange(num_classes)
    return lookup


def check_multilabel_values(values, ignore_index: int = 255, source: str = "", nodata=None) -> None:
    """A multi-label mask band holds 0/1 (``ignore_index``, NaN and ``nodata`` = ignore); anything
    else is a LabelError."""
    bad = {v for v in _without_nodata(values, nodata) if v not in (0, 1, ignore_index)}
    if bad:
        raise _bad_values_error(source, values, bad, f"expected 0/1 per class band, {ignore_index} = ignore")


BINARY_OBJECT_VALUES = (1, 255)  # the raw object value of {0,1} (255 = ignore) and of {0,255} binary masks


def binary_values(values, source: str = "", nodata=None) -> set:
    """The raw values of a binary mask that tell its encoding: NaN and a ``nodata`` value other
    than 0, 1 or 255 left out (they are ignored). Anything but {0, 1, 255} is a LabelError naming
    ``source``. A nodata of 255 stays: whether 255 is an object or ignored is the encoding's call."""
    kept = _without_nodata(values, None if nodata in (0, 1, 255) else nodata)
    if not kept <= {0, 1, 255}:
        raise LabelError(
            f"mask {source or '<array>'}: a binary mask must hold {{0,1}} (255 = ignore) or {{0,255}}, "
            f"found values {sorted(kept)[:10]}"
        )
    return {int(v) for v in kept}


def binary_object_value(file_values: dict, what: str = "binary masks") -> int:
    """The raw value of the object class (1 or 255) of a set of binary masks, decided once for all
    of them from ``file_values`` (file -> :func:`binary_values`), so that no file's 255 flips
    between object and ignore with its content: no 255 anywhere -> 1; no 1 anywhere -> 255 ({0,255}
    masks); a file holding both -> 1 ({0,1} masks, 255 = ignore). Some files holding only 1 and
    others only 255 is ambiguous (a {0,1} mask whose tile has only ignore, or {0,255} masks mixed
    in): a LabelError naming files of both kinds."""
    ones = sorted(str(f) for f, v in file_values.items() if 1 in v)
    high = sorted(str(f) for f, v in file_values.items() if 255 in v)
    if not high:
        return 1
    if not ones:
        return 255
    if set(ones) & set(high):
        return 1
    raise LabelError(
        f"{what}: {len(ones)} file(s) hold 1 and not 255 (e.g. {', '.join(ones[:3])}) and {len(high)} hold 255 "
        f"and not 1 (e.g. {', '.join(high[:3])}): 255 is either the object ({{0,255}} masks) or ignore "
        "({0,1} masks, 255 = ignore); say which with data.options.object_value: 1 or 255"
    )


def binary_mask_lookup(values, ignore_index: int = 255, source: str = "", nodata=None,
                       object_value: Optional[int] = None) -> np.ndarray:
    """Raw value -> label for a binary mask holding ``values``: the one rule shared by training
    and ``tfseg.evaluate``.

    ``object_value`` 1: {0,1} masks, 1 is the object and 255 means ignore; 255: {0,255} masks, 255
    is the object (even where it is the file's nodata). Training decides it once for the dataset
    (:func:`binary_object_value`); ``None`` decides it from this file's values alone ({0,255}:
    255; otherwise 1). NaN and a ``nodata`` value other than 0/1/255 are ignored. Anything else
    is an error naming ``source``.
    """
    values = binary_values(values, source, nodata)
    if object_value is None:
        object_value = binary_object_value({source: values})
    if object_value not in BINARY_OBJECT_VALUES:
        raise LabelError(f"mask {source or '<array>'}: the object value of a binary mask is 1 or 255, "
                         f"got {object_value!r}")
    if object_value == 255 and 1 in values:
        raise LabelError(f"mask {source or '<array>'}: holds 1, but these binary masks hold objects as 255 "
                         f"({{0,255}}); found values {sorted(values)}")
    lookup = np.full(256, ignore_index, np.uint8)
    lookup[0] = 0
    lookup[object_value] = 1
    return lookup


@dataclass
class ColourMaskLabels:
    """An RGB (or palette "P" mode) colour-coded mask decoded to class indices per window.

    Example:
        >>> labels = ColourMaskLabels(open_raster("m.png"), {"building": "#3C1098"}, ["building"])
    """

    info: RasterInfo
    palette: dict
    classes: list
    ignore_index: int = 255
    num_channels = 1

    def __post_init__(self):
        from .colours import check_colour_mask_dtype

        check_colour_mask_dtype(self.info.dtype, self.info.path)

    def decode(self, window: Window, fill: int = 255) -> tuple[np.ndarray, dict]:
        """Class indices (uint8 HxW, ``fill`` outside the mask) of ``window`` and its colours not
        in the palette (``{"#RRGGBB": pixels}``): the one decoding of training and of the
        load-time check."""
        from .colours import decode_colour_mask, to_rgb_bands

        out = np.full((int(window.height), int(window.width)), fill, np.uint8)
        unknown: dict = {}
        data, where = _read_mask_window(self.info, window, tuple(range(1, min(self.info.count, 3) + 1)))
        if data is not None:
            rgb = to_rgb_bands(data, self.info)
            out[where], unknown = decode_colour_mask(
                rgb, self.palette, self.ignore_index, classes=self.classes, report=False, source=self.info.path
            )
        return out, unknown

    def rasterize(self, window: Window, info: RasterInfo, fill: int = 255) -> np.ndarray:
        return self.decode(window, fill)[0]


@dataclass
class PixelPolygonLabels:
    """Multi-label polygons in pixel coordinates of the image grid, one list per class: window
    rasterization gives HxWxK 0/1 (e.g. Dstl's 10 classes after normalized-coordinate scaling).

    Example:
        >>> labels = PixelPolygonLabels([[box(0, 0, 10, 10)], []])
        >>> labels.rasterize(Window(0, 0, 32, 32), info).shape
        (32, 32, 2)
    """

    geometries: list  # per class: list of shapely polygons in (col, row) pixel coordinates
    source: str = ""

    def __post_init__(self):
        self.trees = [STRtree(g) if g else None for g in self.geometries]

    @property
    def num_channels(self) -> int:
        return len(self.geometries)

    def rasterize(self, window: Window, info: RasterInfo, fill: int = 0) -> np.ndarray:
        height, width = int(window.height), int(window.width)
        out = np.full((height, width, self.num_channels), fill, np.uint8)
        col, row = float(window.col_off), float(window.row_off)
        query = box(col, row, col + width, row + height)
        transform = rasterio.Affine.translation(col, row)
        for k, tree in enumerate(self.trees):
            if tree is None:
                continue
            hits = tree.query(query)
            if hits.size:
                out[..., k] = rasterio.features.rasterize(
                    ((self.geometries[k][i], 1) for i in sorted(hits)),
                    out_shape=(height, width), transform=transform, fill=fill, dtype="uint8",
                )
        return out


SPACENET_TARGETS = ("footprint", "boundary", "contact")


@dataclass
class BuildingTargets:
    """SpaceNet-style target channels from building polygons: ``footprint`` (inside a building),
    ``boundary`` (a band of ``boundary_width`` pixels across each building's outline, including
    the edge two touching buildings share) and ``contact``
    (background pixels within ``contact_spacing`` of two or more buildings), as in solaris'
    multi-channel masks. Rasterized per window with a margin so channels are exact at edges.

    Example:
        >>> targets = BuildingTargets(vector_labels, ["footprint", "boundary", "contact"])
    """

    vectors: VectorLabels
    channels: list
    boundary_width: int = 3
    contact_spacing: int = 10

    def __post_init__(self):
        bad = [c for c in self.channels if c not in SPACENET_TARGETS]
        if bad:
            raise LabelError(
                f"data.options.targets: unknown target channel(s) {bad}; allowed: {list(SPACENET_TARGETS)}"
            )

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    def rasterize(self, window: Window, info: RasterInfo, fill: int = 0) -> np.ndarray:
        import cv2

        margin = max(self.boundary_width, self.contact_spacing) + 1
        height, width = int(window.height), int(window.width)
        big = Window(window.col_off - margin, window.row_off - margin, width + 2 * margin, height + 2 * margin)
        instances = np.zeros((big.height, big.width), np.float32)
        tree = self.vectors.tree
        if tree is not None:
            hits = tree.query(box(*rasterio.windows.bounds(big, info.affine)))
            if hits.size:
                instances = rasterio.features.rasterize(
                    ((self.vectors.geometries[i], k + 1) for k, i in enumerate(sorted(hits))),
                    out_shape=(big.height, big.width),
                    transform=rasterio.windows.transform(big, info.affine), fill=0, dtype="float32",
                )
        footprint = instances > 0
        out = []
        for channel in self.channels:
            if channel == "footprint":
                out.append(footprint)
            elif channel == "boundary":  # each building's own outline, also where two touch
                kernel = np.ones((self.boundary_width, self.boundary_width), np.uint8)
                out.append(cv2.dilate(instances, kernel) != cv2.erode(instances, kernel))
            else:
                size = 2 * self.contact_spacing + 1
                kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
                highest = cv2.dilate(instances, kernel)
                lowest = -cv2.dilate(np.where(footprint, -instances, -np.float32(1e9)), kernel)
                out.append((highest > 0) & (lowest < highest) & ~footprint)
        stack = np.stack(out, axis=-1).astype(np.uint8)
        return stack[margin : margin + height, margin : margin + width]


@dataclass
class RasterizedLabels:
    """Labels of a whole scene rasterized once into memory (HxWxK uint8); windows are slices.

    The pipeline wraps vector and colour-mask labels in this when they fit in
    ``data.label_cache_mpix``, so streaming windows costs an image read, not a rasterization.
    """

    array: np.ndarray
    fill: int = 0
    source: str = ""

    @classmethod
    def of(cls, labels, info: RasterInfo) -> "RasterizedLabels":
        full = labels.rasterize(Window(0, 0, info.width, info.height), info)
        if full.ndim == 2:
            full = full[..., None]
        fill = 255 if isinstance(labels, (MaskLabels, ColourMaskLabels)) else 0
        return cls(np.ascontiguousarray(full), fill, getattr(labels, "source", ""))

    @property
    def num_channels(self) -> int:
        return self.array.shape[-1]

    def window_view(self, window: Window) -> Optional[np.ndarray]:
        """The HxWxK labels of ``window`` as a view (no copy), or None when it reaches outside."""
        col, row, width, height = int(window.col_off), int(window.row_off), int(window.width), int(window.height)
        if col < 0 or row < 0 or col + width > self.array.shape[1] or row + height > self.array.shape[0]:
            return None
        return self.array[row : row + height, col : col + width]

    def rasterize(self, window: Window, info: RasterInfo, fill: Optional[int] = None) -> np.ndarray:
        col, row, width, height = int(window.col_off), int(window.row_off), int(window.width), int(window.height)
        out = np.full((height, width, self.num_channels), self.fill if fill is None else fill, np.uint8)
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + width, self.array.shape[1]), min(row + height, self.array.shape[0])
        if c1 > c0 and r1 > r0:
            out[r0 - row : r1 - row, c0 - col : c1 - col] = self.array[r0:r1, c0:c1]
        return out[..., 0] if self.num_channels == 1 else out
