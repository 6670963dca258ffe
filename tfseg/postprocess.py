"""Masks to polygons: speckle removal, hole filling, polygonization, simplification, writers.

Polygons are built in pixel space (x = column, y = row, pixel corners on integer coordinates,
as SpaceNet's ``PolygonWKT_Pix``) and mapped to the scene's CRS with its affine transform only
when written, so the same polygons feed the GeoJSON and the SpaceNet CSV.

:func:`polygonize_raster` streams a class GeoTIFF in row blocks (memory bounded by a block, not
the scene): polygons touching a block boundary are held back and merged with their continuation
in the next block by a union, so objects crossing block boundaries come out whole.

Example:
    >>> objects = polygonize_array(mask, probs=prob, opening_px=3, min_area_px=20, simplify_px=1.0)
    >>> write_spacenet_csv("proposals.csv", {"AOI_2_Vegas_img1": objects})
"""
from __future__ import annotations

import contextlib
import csv
import functools
import json
import threading
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from .errors import TfsegError


class PixelAreaError(TfsegError):
    """A minimum area in m² was asked for where a pixel's ground area is unknown (no CRS, or a CRS
    neither projected nor geographic); the message names the scene and the option."""


def pixel_polygons(geometries, info) -> list:
    """``geometries`` in the scene's CRS as polygons in ``info``'s pixel coordinates, clipped to
    the scene (a part cut off by the edge is dropped, a multi-part result split into polygons)."""
    from shapely.affinity import affine_transform
    from shapely.geometry import box

    inverse = ~info.affine
    matrix = [inverse.a, inverse.b, inverse.d, inverse.e, inverse.c, inverse.f]
    extent = box(0, 0, info.width, info.height)
    out = []
    for geom in geometries:
        clipped = affine_transform(geom, matrix).intersection(extent)
        out.extend(g for g in getattr(clipped, "geoms", [clipped]) if g.geom_type == "Polygon")
    return out


INSTANCE_MODES = ("none", "watershed")


@dataclass
class PolygonOptions:
    """Post-processing of a predicted mask before and after polygonization."""

    opening_px: int = 3  # morphological opening kernel (pixels); 0 = off. Removes speckle.
    min_area_px: float = 20.0  # polygons smaller than this (pixels²) are dropped
    min_area_m2: float = 0.0  # ... or smaller than this (m², needs a CRS); 0 = off
    fill_holes: bool = True
    max_hole_area_px: float = math.inf  # holes up to this size are filled
    simplify_px: float = 1.0  # Douglas-Peucker tolerance in pixels; 0 = off
    instances: str = "none"  # none | watershed: split touching buildings (see split_instances)
    marker_depth_px: float = 3.0  # watershed without boundary/contact: a core's least prominence (px)...
    marker_depth_ratio: float = 0.3  # ... and relative to its height (see split_instances)

    def __post_init__(self):
        if self.instances not in INSTANCE_MODES:
            raise ValueError(f"--instances: expected one of {list(INSTANCE_MODES)}, got {self.instances!r}")


@dataclass
class PolygonRecord:
    """One object: pixel-space polygon, class index, mean probability inside."""

    geometry: object  # shapely Polygon in pixel coordinates
    class_index: int = 1
    confidence: float = 1.0
    properties: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# Raster clean-up
# ------------------------------------------------------------------------------------------
def remove_speckle(mask: np.ndarray, opening_px: int) -> np.ndarray:
    """Morphological opening (erode then dilate) with a square ``opening_px`` kernel: removes
    blobs and strands thinner than the kernel and keeps rectilinear (building) corners square."""
    if opening_px <= 1:
        return mask.astype(np.uint8)
    import cv2

    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (int(opening_px), int(opening_px)))
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel)


def fill_holes_mask(mask: np.ndarray, max_hole_area: float = math.inf) -> np.ndarray:
    """Fill background regions (8-connected, the dual of 4-connected objects) that do not touch
    the array border and have at most ``max_hole_area`` pixels. Holes cut by the border are left
    for the vector stage (after blocks are merged)."""
    import cv2

    mask = (mask > 0).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(1 - mask, connectivity=8)
    if count <= 1:
        return mask
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    right, bottom = left + stats[:, cv2.CC_STAT_WIDTH], top + stats[:, cv2.CC_STAT_HEIGHT]
    inner = (left > 0) & (top > 0) & (right < mask.shape[1]) & (bottom < mask.shape[0])
    fill = inner & (stats[:, cv2.CC_STAT_AREA] <= max_hole_area)
    fill[0] = False  # label 0 is the foreground itself
    return np.where(fill[labels], np.uint8(1), mask)


def exact_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (float64) of each pixel of the boolean ``mask`` to the nearest pixel
    outside it: the values of ``scipy.ndimage.distance_transform_edt`` bit for bit, ~10x faster.
    OpenCV's precise transform, with its float32 rounding undone by taking the root of the
    integer squared distance (plateaus and ties decide the maxima and the watershed)."""
    import cv2

    mask = np.ascontiguousarray(np.asarray(mask) > 0)
    if mask.all():  # no background at all: OpenCV gives ~1.8e19, keep scipy's own answer
        from scipy import ndimage

        return ndimage.distance_transform_edt(mask)
    approx = cv2.distanceTransform(mask.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE).astype(np.float64)
    return np.sqrt(np.rint(approx * approx))


def split_instances(mask: np.ndarray, boundary: Optional[np.ndarray] = None, contact: Optional[np.ndarray] = None,
                    marker_depth_px: float = 3.0, marker_depth_ratio: float = 0.3) -> np.ndarray:
    """Instance labels (int32, 0 = background) of a binary footprint mask by marker-based watershed.

    Markers: the footprint minus the predicted ``boundary`` / ``contact`` probabilities (>= 0.5)
    when the model predicts them; otherwise the cores of the footprint's distance transform: the
    watershed of its regional maxima, with neighbouring regions merged back unless the lower of
    the two peaks rises above the saddle between them by at least ``marker_depth_px`` and by
    ``marker_depth_ratio`` of its height (a neck between two touching buildings splits them, the
    pixel-jagged ridge of one rotated building does not). Flooding runs on the negated distance
    transform inside the mask (``skimage.segmentation.watershed``); a component without a marker
    is one instance.

    Example:
        >>> labels = split_instances(prob[..., 0] >= 0.5)   # two touching squares -> labels 1 and 2
    """
    from scipy import ndimage
    from skimage.morphology import local_maxima
    from skimage.segmentation import watershed

    mask = np.asarray(mask) > 0
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    distance = exact_distance(mask)
    if boundary is None and contact is None:
        markers, count = ndimage.label(local_maxima(distance, allow_borders=True) & mask, np.ones((3, 3)))
        # a component whose maxima plateau runs on (diagonally) into a higher neighbour's has none
        labels = watershed(-distance, _mark_unmarked(markers, count, mask), mask=mask)
        return _merge_shallow(labels, distance, marker_depth_px, marker_depth_ratio)
    seeds = mask.copy()
    for channel in (boundary, contact):
        if channel is not None:
            seeds &= np.asarray(channel) < 0.5
    markers, count = ndimage.label(seeds)
    # e.g. a thin building wholly covered by predicted boundary: one instance
    return watershed(-distance, _mark_unmarked(markers, count, mask), mask=mask).astype(np.int32)


def _mark_unmarked(markers: np.ndarray, count: int, mask: np.ndarray) -> np.ndarray:
    """``markers`` (``count`` labels) plus one marker for each 4-connected component of ``mask``
    that has none, so that the watershed leaves no pixel of the mask unlabelled (dropped)."""
    from scipy import ndimage

    components, num_components = ndimage.label(mask)
    unmarked = np.setdiff1d(np.arange(1, num_components + 1), np.unique(components[markers > 0]))
    if unmarked.size:
        extra = np.isin(components, unmarked)
        markers[extra] = count + np.searchsorted(unmarked, components[extra]) + 1
    return markers


def _merge_shallow(labels: np.ndarray, distance: np.ndarray, depth_px: float, depth_ratio: float) -> np.ndarray:
    """Merge neighbouring watershed regions, highest saddle first, while the lower peak of a pair
    rises less than max(``depth_px``, ``depth_ratio`` x its height) above their saddle."""
    count = int(labels.max())
    if count <= 1:
        return labels.astype(np.int32)
    # each region's peak: an unbuffered max over the labelled pixels (ndimage.maximum sorts the
    # whole block by label, ~100x slower on a 512-row block)
    inside = labels > 0
    peaks = np.zeros(count + 1, np.float64)
    np.maximum.at(peaks, labels[inside], distance[inside])
    saddles: dict = {}
    for a, b, da, db in ((labels[:, :-1], labels[:, 1:], distance[:, :-1], distance[:, 1:]),
                         (labels[:-1], labels[1:], distance[:-1], distance[1:])):
        edge = (a != b) & (a > 0) & (b > 0)
        if not edge.any():
            continue
        la, lb = a[edge], b[edge]
        lo, hi = np.minimum(la, lb).astype(np.int64), np.maximum(la, lb).astype(np.int64)
        level = np.minimum(da[edge], db[edge])
        keys = lo * (count + 1) + hi
        order = np.lexsort((-level, keys))
        keys, level = keys[order], level[order]
        first = np.r_[True, keys[1:] != keys[:-1]]
        for key, value in zip(keys[first], level[first]):
            saddles[int(key)] = max(saddles.get(int(key), 0.0), float(value))
    parent = np.arange(count + 1)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    height = peaks.copy()
    for key, saddle in sorted(saddles.items(), key=lambda kv: -kv[1]):
        ra, rb = find(key // (count + 1)), find(key % (count + 1))
        if ra == rb:
            continue
        low = min(height[ra], height[rb])
        if low - saddle < max(depth_px, depth_ratio * low):
            parent[rb] = ra
            height[ra] = max(height[ra], height[rb])
    roots = np.array([find(i) for i in range(count + 1)])
    _, dense = np.unique(roots, return_inverse=True)
    return dense[labels].astype(np.int32)


def _polygon_fill_holes(poly, max_hole_area: float):
    from shapely.geometry import Polygon

    if not poly.interiors:
        return poly
    keep = [ring for ring in poly.interiors if Polygon(ring).area > max_hole_area]
    return Polygon(poly.exterior, keep)


def _parts(geom) -> list:
    """Polygons of a (multi)polygon / geometry collection, empty ones dropped."""
    if geom.is_empty:
        return []
    if geom.geom_type == "Polygon":
        return [geom]
    return [g for part in getattr(geom, "geoms", []) for g in _parts(part)]


def finish_polygon(poly, options: PolygonOptions, pixel_area_m2: Optional[float] = None) -> list:
    """Hole filling, simplification, validity repair and the area filters for one polygon."""
    from shapely.validation import make_valid

    out = []
    if options.min_area_m2 and not pixel_area_m2:
        raise PixelAreaError(f"min_area_m2 {options.min_area_m2}: the ground area of a pixel is unknown here (no "
                             "CRS, or one neither projected nor geographic); use a minimum area in pixels instead")
    for part in _parts(poly):
        if options.fill_holes:
            part = _polygon_fill_holes(part, options.max_hole_area_px)
        if options.simplify_px > 0:
            part = part.simplify(options.simplify_px, preserve_topology=True)
        if not part.is_valid:
            part = make_valid(part)
        for piece in _parts(part):
            area = piece.area
            if area < options.min_area_px:
                continue
            if options.min_area_m2 and pixel_area_m2 and area * pixel_area_m2 < options.min_area_m2:
                continue
            out.append(piece)
    return out


# ------------------------------------------------------------------------------------------
# Polygonization
# ------------------------------------------------------------------------------------------
def _components(mask: np.ndarray, probs: Optional[np.ndarray], row_offset: int = 0,
                labels: Optional[np.ndarray] = None, col_offset: int = 0):
    """(pixel-space polygon, prob sum, pixel count, touches top, touches bottom) per component of
    ``mask`` (4-connected), or per instance of the label image ``labels``."""
    import cv2
    from rasterio import features
    from rasterio.transform import Affine
    from shapely.geometry import shape

    if labels is None:
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
        tops = stats[:, cv2.CC_STAT_TOP]
        bottoms = tops + stats[:, cv2.CC_STAT_HEIGHT]
        sizes = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    else:
        from scipy import ndimage

        labels = np.asarray(labels, np.int32)
        count = int(labels.max()) + 1
        sizes = np.bincount(labels.ravel(), minlength=count).astype(np.float64)
        tops, bottoms = np.zeros(count, np.int64), np.zeros(count, np.int64)
        for k, where in enumerate(ndimage.find_objects(labels), start=1):
            if where is not None:
                tops[k], bottoms[k] = where[0].start, where[0].stop
    if count <= 1:
        return []
    if probs is not None:
        sums = np.bincount(labels.ravel(), weights=probs.ravel().astype(np.float64), minlength=count)
    else:
        sums = sizes.copy()
    out = []
    transform = Affine.translation(col_offset, row_offset)
    for geom, value in features.shapes(labels.astype(np.int32), mask=labels > 0, connectivity=4, transform=transform):
        k = int(value)
        out.append((shape(geom), float(sums[k]), float(sizes[k]), tops[k] == 0, bottoms[k] == mask.shape[0]))
    return out


def _instance_labels(mask, options: PolygonOptions, channels: Optional[dict]):
    """The watershed label image when ``options.instances`` asks for it, else None (components)."""
    if options.instances != "watershed":
        return None
    channels = channels or {}
    return split_instances(mask, channels.get("boundary"), channels.get("contact"), options.marker_depth_px,
                           options.marker_depth_ratio)


def polygonize_array(mask: np.ndarray, probs: Optional[np.ndarray] = None, options: Optional[PolygonOptions] = None,
                     class_index: int = 1, pixel_area_m2: Optional[float] = None,
                     channels: Optional[dict] = None) -> list:
    """Objects of a binary HxW mask as :class:`PolygonRecord` (pixel coordinates).

    ``probs`` (HxW, the class probability) gives each object's confidence (mean inside). With
    ``options.instances="watershed"`` touching buildings are split (:func:`split_instances`;
    ``channels``: predicted ``{"boundary": HxW, "contact": HxW}`` probabilities for its markers).
    """
    options = options or PolygonOptions()
    mask = remove_speckle(mask > 0, options.opening_px)
    if options.fill_holes:
        mask = fill_holes_mask(mask, options.max_hole_area_px)
    records = []
    for poly, total, size, _, _ in _components(mask, probs, labels=_instance_labels(mask, options, channels)):
        for piece in finish_polygon(poly, options, pixel_area_m2):
            records.append(PolygonRecord(piece, class_index, total / max(size, 1.0)))
    return records


BLOCK_PIXELS = 1 << 21  # polygonize_raster's default block: about 2 M pixels (rows = this / width) ...
MIN_BLOCK_ROWS, MAX_BLOCK_ROWS = 64, 512  # ... within these rows


def polygonize_raster(class_path, prob_path=None, class_values: Sequence[int] = (1,), options: Optional[PolygonOptions] = None,
                      block_rows: Optional[int] = None, pixel_area_m2: Optional[float] = None,
                      class_probability_band=None,
                      channel_bands: Optional[dict] = None, class_bands=None) -> list:
    """Objects of the classes ``class_values`` in a class GeoTIFF, read in row blocks.

    ``class_bands`` ``{value: band}``: a multi-label class file (one 0/1 band per class): the
    objects of ``value`` are the 1-pixels of its band (classes may overlap).

    ``prob_path``: the probability GeoTIFF (band ``class_probability_band[value]`` or 1 for a
    binary model) for confidences; ``channel_bands``: its ``{"boundary": band, "contact": band}``
    for the watershed markers of a model that predicts them. Memory: one block of rows plus the
    objects found so far; ``block_rows`` defaults to about :data:`BLOCK_PIXELS` pixels a block
    (512 rows of a 4096-wide scene, 128 of a 16384-wide one), so the block's working arrays do
    not grow with the scene's width. With ``options.instances="watershed"`` objects that cross a
    block boundary are split once whole (their window re-read), so the split does not depend on
    blocks.
    """
    import rasterio
    from rasterio.windows import Window

    options = options or PolygonOptions()
    if options.min_area_m2 and not pixel_area_m2:
        raise PixelAreaError(f"{class_path}: min_area_m2 {options.min_area_m2} needs the ground area of a pixel "
                             "(pixel_area_m2), which is unknown for this scene (see require_pixel_area)")
    records = []
    margin = max(0, int(options.opening_px))
    with rasterio.open(class_path) as src, (rasterio.open(prob_path) if prob_path else contextlib.nullcontext()) as psrc:
        height, width = src.height, src.width
        block_rows = block_rows or max(MIN_BLOCK_ROWS, min(MAX_BLOCK_ROWS, BLOCK_PIXELS // max(1, width)))

        def read_probs(band, window):
            probs = np.ma.filled(psrc.read(band, window=window, masked=True).astype(np.float32), 0.0)
            return probs / 254.0 if psrc.dtypes[band - 1] == "uint8" else probs

        def read_channels(window):
            if psrc is None or not channel_bands:
                return None
            return {name: read_probs(band, window) for name, band in channel_bands.items()}

        for value in class_values:
            first = len(records)  # this class's records start here
            pending = []  # (polygon, prob sum, count) touching an inner block boundary
            band = (class_probability_band or {}).get(value, 1)
            for top in range(0, height, block_rows):
                bottom = min(height, top + block_rows)
                r0, r1 = max(0, top - margin), min(height, bottom + margin)
                if class_bands:
                    hits = src.read(class_bands[value], window=Window(0, r0, width, r1 - r0)) == 1
                else:
                    hits = src.read(1, window=Window(0, r0, width, r1 - r0)) == value
                mask = remove_speckle(hits, options.opening_px)[top - r0 : top - r0 + bottom - top]
                if options.fill_holes:  # holes inside the block; the rest after merging
                    mask = fill_holes_mask(mask, options.max_hole_area_px)
                block = Window(0, top, width, bottom - top)
                probs = read_probs(band, block) if psrc is not None else None
                if options.instances == "watershed":
                    cut = _cut_components(mask, top > 0, bottom < height)
                    inner = mask & ~cut
                    labels = _instance_labels(inner, options, read_channels(block))
                    for poly, total, size, _, _ in _components(inner, probs, row_offset=top, labels=labels):
                        records.extend(PolygonRecord(piece, value, total / max(size, 1.0))
                                       for piece in finish_polygon(poly, options, pixel_area_m2))
                    pending.extend(p[:3] for p in _components(mask & cut, probs, row_offset=top))
                    continue
                for poly, total, size, at_top, at_bottom in _components(mask, probs, row_offset=top):
                    if (at_top and top > 0) or (at_bottom and bottom < height):
                        pending.append((poly, total, size))
                    else:
                        for piece in finish_polygon(poly, options, pixel_area_m2):
                            records.append(PolygonRecord(piece, value, total / max(size, 1.0)))
            def resplit(merged, _band=band):
                probs_of = (lambda w: read_probs(_band, w)) if psrc is not None else None
                return _split_window(merged, options, probs_of, read_channels, height, width)
            merged = _merge_pending(pending, value, options, pixel_area_m2,
                                    resplit if options.instances == "watershed" else None)
            if merged and options.fill_holes:
                records[first:] = _drop_absorbed(records[first:], merged)
            else:
                records.extend(merged)
    return records


def _drop_absorbed(records: list, merged: list) -> list:
    """``records`` + ``merged`` without the objects that lie in a hole filled only once its
    object was merged from blocks (an island in a courtyard cut by a block boundary): filled
    whole, as the whole-scene path fills it, that object covers them."""
    from shapely import STRtree

    everything = records + merged
    tree = STRtree([r.geometry for r in merged])
    drop = set()
    for i, k in zip(*tree.query([r.geometry for r in everything], predicate="intersects")):
        inner, outer = everything[int(i)].geometry, merged[int(k)].geometry
        # mostly covered by a larger object (not itself, nor the island of its own courtyard; simplified
        # neighbours may overlap by a pixel's fraction)
        if inner.area < outer.area and inner.intersection(outer).area > 0.5 * inner.area:
            drop.add(int(i))
    return [r for i, r in enumerate(everything) if i not in drop]


def _cut_components(mask: np.ndarray, cut_top: bool, cut_bottom: bool) -> np.ndarray:
    """Pixels of the 4-connected components of ``mask`` that touch a cut (inner) block edge."""
    from scipy import ndimage

    labels, _ = ndimage.label(mask)
    ids = set()
    if cut_top:
        ids.update(np.unique(labels[0]).tolist())
    if cut_bottom:
        ids.update(np.unique(labels[-1]).tolist())
    ids.discard(0)
    return np.isin(labels, sorted(ids)) if ids else np.zeros(mask.shape, bool)


def _split_window(merged, options: PolygonOptions, read_probs, read_channels, height: int, width: int) -> list:
    """(polygon, prob sum, count) of the instances of one whole object (a merged polygon), split as
    the whole-scene path (:func:`polygonize_array`) splits it: its holes filled first (a courtyard
    cut by a block boundary is one only once the parts are merged), and its window padded by one
    pixel of background (clipped to the ``height`` x ``width`` scene), so the distance transform
    sees the object's own edge rather than the window's (OpenCV takes outside the array as
    foreground, as at the scene's edge)."""
    from rasterio import features
    from rasterio.transform import Affine
    from rasterio.windows import Window

    left, top, right, bottom = merged.bounds
    x0, y0 = max(0, int(math.floor(left)) - 1), max(0, int(math.floor(top)) - 1)
    x1, y1 = min(width, int(math.ceil(right)) + 1), min(height, int(math.ceil(bottom)) + 1)
    window = Window(x0, y0, x1 - x0, y1 - y0)
    mask = features.rasterize([(merged, 1)], out_shape=(y1 - y0, x1 - x0), transform=Affine.translation(x0, y0),
                              dtype="uint8") > 0
    if options.fill_holes:
        mask = fill_holes_mask(mask, options.max_hole_area_px) > 0
    probs = read_probs(window) if read_probs else None
    labels = _instance_labels(mask, options, read_channels(window))
    return [c[:3] for c in _components(mask, probs, row_offset=y0, labels=labels, col_offset=x0)]


def _merge_pending(pending, value, options, pixel_area_m2, resplit=None) -> list:
    """Union the parts of objects cut by block boundaries (parts sharing an edge); ``resplit``
    (watershed) splits each whole object into its instances."""
    from shapely import STRtree
    from shapely.ops import unary_union

    if not pending:
        return []
    geoms = [p[0] for p in pending]
    parent = list(range(len(geoms)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    tree = STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    for a, b in zip(left, right):
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[ra] = rb
    groups: dict = {}
    for i in range(len(geoms)):
        groups.setdefault(find(i), []).append(i)
    records = []
    for members in groups.values():
        merged = unary_union([geoms[i] for i in members])
        if resplit is not None:
            parts = resplit(merged)
        else:
            parts = [(merged, sum(pending[i][1] for i in members), sum(pending[i][2] for i in members))]
        for poly, total, size in parts:
            for piece in finish_polygon(poly, options, pixel_area_m2):
                records.append(PolygonRecord(piece, value, total / max(size, 1.0)))
    return records


# ------------------------------------------------------------------------------------------
# Coordinates and areas
# ------------------------------------------------------------------------------------------
def _horizontal_crs(crs):
    """The horizontal part of a pyproj CRS (of a compound CRS; the source of a bound one)."""
    if crs.is_compound and crs.sub_crs_list:
        crs = crs.sub_crs_list[0]
    return crs.source_crs if crs.is_bound and crs.source_crs is not None else crs


def pixel_area_m2(crs, transform, width: int, height: int) -> Optional[float]:
    """Ground area of one pixel in m², or None where it cannot be computed.

    Projected CRS: the pixel's area (|determinant| of the transform) in the CRS's linear unit,
    converted to metres (US survey feet, ...). Geographic CRS: the geodesic area, on the CRS's
    ellipsoid, of the pixel's parallelogram (its four corners, so rotated transforms too) at the
    scene centre. None without a CRS and for a CRS that is neither (engineering/local, geocentric).
    """
    if crs is None:
        return None
    from pyproj import CRS

    horizontal = _horizontal_crs(CRS.from_user_input(crs))
    axes = horizontal.axis_info[:2]
    if len(axes) < 2:
        return None
    if horizontal.is_projected:
        area = abs(transform.a * transform.e - transform.b * transform.d) * axes[0].unit_conversion_factor \
            * axes[1].unit_conversion_factor
        return float(area) if math.isfinite(area) else None
    if not horizontal.is_geographic:
        return None
    geod = horizontal.get_geod()
    if geod is None:
        return None
    # the axes' unit -> degrees (its conversion factor is to radians); x is longitude as GDAL orders it
    to_degrees = [axis.unit_conversion_factor * 180.0 / math.pi for axis in axes]
    col, row = width / 2, height / 2
    corners = [transform @ (col + dx, row + dy) for dx, dy in ((0, 0), (1, 0), (1, 1), (0, 1))]
    area, _ = geod.polygon_area_perimeter([x * to_degrees[0] for x, _ in corners],
                                          [y * to_degrees[1] for _, y in corners])
    area = abs(area)
    return float(area) if math.isfinite(area) else None


def require_pixel_area(crs, transform, width: int, height: int, scene, option: str = "--min-area-m2") -> float:
    """:func:`pixel_area_m2`, or a :class:`PixelAreaError` naming ``scene`` and ``option`` (what
    asked for an area in m²) when it cannot be computed."""
    area = pixel_area_m2(crs, transform, width, height)
    if area:
        return area
    if crs is None:
        why = "has no CRS"
    else:
        from pyproj import CRS

        parsed = CRS.from_user_input(crs)
        why = f"has a CRS ({parsed.name!r}, {parsed.type_name}) neither projected nor geographic"
    raise PixelAreaError(f"{option}: scene {scene} {why}, so the ground area of its pixels is unknown; "
                         "give the minimum area in pixels (--min-area) instead")


def to_world(geometry, transform):
    """Pixel-space geometry -> CRS coordinates with the raster's affine transform."""
    from shapely import affinity

    t = transform
    return affinity.affine_transform(geometry, [t.a, t.b, t.d, t.e, t.c, t.f])


@functools.lru_cache(maxsize=32)
def _transformer(src_crs, dst_crs, thread: int):
    """One pyproj Transformer per CRS pair (and thread): building one looks up the projection
    database, far dearer than transforming a polygon."""
    from pyproj import Transformer

    return Transformer.from_crs(src_crs, dst_crs, always_xy=True)


def reproject_geometry(geometry, src_crs, dst_crs):
    from shapely.ops import transform as shp_transform

    return shp_transform(_transformer(src_crs, dst_crs, threading.get_ident()).transform, geometry)


# ------------------------------------------------------------------------------------------
# Writers
# ------------------------------------------------------------------------------------------
def write_geojson(path, records: Iterable[PolygonRecord], transform=None, crs=None, to_epsg4326: bool = False,
                  class_names: Sequence[str] = (), pixel_area: Optional[float] = None) -> Path:
    """A GeoJSON FeatureCollection of the records in the scene's CRS (or EPSG:4326).

    Without a transform/CRS (non-georeferenced input) coordinates stay in pixels and the file
    says so in its ``crs`` member (``"pixel"``). A non-WGS84 CRS is named in a ``crs`` member, as
    GDAL/QGIS read it.
    """
    from shapely.geometry import mapping

    features = []
    dst_crs = crs
    if crs is not None and to_epsg4326:
        dst_crs = "EPSG:4326"
    for i, rec in enumerate(records):
        geom = rec.geometry
        if transform is not None and crs is not None:
            geom = to_world(geom, transform)
            if to_epsg4326:
                geom = reproject_geometry(geom, crs, "EPSG:4326")
        props = {"id": i, "class": rec.class_index, "confidence": round(float(rec.confidence), 4),
                 "area_px": round(float(rec.geometry.area), 2)}
        if class_names and 0 <= rec.class_index < len(class_names):
            props["class_name"] = class_names[rec.class_index]
        # null where the scene's pixel area is unknown (no CRS, or one neither projected nor geographic)
        props["area_m2"] = round(float(rec.geometry.area) * pixel_area, 2) if pixel_area else None
        props.update(rec.properties)
        features.append({"type": "Feature", "id": i, "properties": props, "geometry": mapping(geom)})
    doc = {"type": "FeatureCollection", "features": features}
    if crs is None or transform is None:
        doc["crs"] = {"type": "name", "properties": {"name": "pixel"}}
    elif dst_crs != "EPSG:4326":
        doc["crs"] = {"type": "name", "properties": {"name": _crs_name(dst_crs)}}
    path = Path(path)
    path.write_text(json.dumps(doc))
    return path


def _crs_name(crs) -> str:
    from pyproj import CRS

    crs = CRS.from_user_input(crs)
    epsg = crs.to_epsg()
    return f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs.to_wkt()


def merge_geojson(parts: Sequence, path) -> dict:
    """Merge per-scene GeoJSON files into one FeatureCollection, streamed feature by feature.

    ``parts``: ``(geojson_path, image_id, crs)`` per scene, ``crs`` the file's CRS (None: pixel
    coordinates). Each feature gets an ``image_id`` property (the scene's stem, as
    ``evaluate polygons`` groups by it) and a running feature id. Scenes sharing one CRS are
    merged in it; scenes in several CRSs are reprojected to EPSG:4326 (RFC 7946). Pixel-coordinate
    scenes cannot be placed beside georeferenced ones: they are then left out and listed.
    Returns ``{"count", "crs", "excluded"}``.
    """
    from shapely.geometry import mapping, shape

    georef = [p for p in parts if p[2]]
    excluded = [str(p[0]) for p in parts if not p[2]] if georef else []
    parts = georef or list(parts)
    crss = {_crs_name(p[2]) if p[2] else None for p in parts}
    if len(crss) > 1:
        dst = "EPSG:4326"
    else:
        dst = parts[0][2] if parts else None
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    count = 0
    with tmp.open("w") as out:
        out.write('{"type": "FeatureCollection", ')
        if dst is None:
            out.write('"crs": {"type": "name", "properties": {"name": "pixel"}}, ')
        elif _crs_name(dst) != _crs_name("EPSG:4326"):
            out.write(json.dumps({"crs": {"type": "name", "properties": {"name": _crs_name(dst)}}})[1:-1] + ", ")
        out.write('"features": [')
        for file, image_id, crs in parts:
            reproject = dst is not None and _crs_name(crs) != _crs_name(dst)
            for feature in json.loads(Path(file).read_text()).get("features", []):
                if reproject:
                    feature["geometry"] = mapping(reproject_geometry(shape(feature["geometry"]), crs, dst))
                feature["properties"] = {**(feature.get("properties") or {}), "image_id": image_id}
                feature["id"] = count
                out.write((", " if count else "") + json.dumps(feature))
                count += 1
        out.write("]}")
    tmp.replace(path)
    return {"count": count, "crs": _crs_name(dst) if dst else "pixel", "excluded": excluded}


SPACENET_HEADER = ["ImageId", "BuildingId", "PolygonWKT_Pix", "Confidence"]


def spacenet_image_id(path) -> str:
    """SpaceNet ImageId of a file: its stem from ``AOI_`` on (``RGB-PanSharpen_AOI_2_Vegas_img1``
    -> ``AOI_2_Vegas_img1``), else the stem."""
    stem = Path(path).stem
    index = stem.find("AOI_")
    return stem[index:] if index >= 0 else stem


def spacenet_rows(image_id: str, records: Sequence[PolygonRecord]) -> list:
    """CSV rows for one image; a single ``POLYGON EMPTY`` row when it has no buildings."""
    if not records:
        return [[image_id, -1, "POLYGON EMPTY", 1.0]]
    ordered = sorted(records, key=lambda r: -r.confidence)
    return [[image_id, i, rec.geometry.wkt, round(float(rec.confidence), 6)] for i, rec in enumerate(ordered)]


def write_spacenet_csv(path, per_image: dict) -> Path:
    """``ImageId,BuildingId,PolygonWKT_Pix,Confidence`` rows for ``{image_id: [PolygonRecord]}``."""
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SPACENET_HEADER)
        for image_id, records in per_image.items():
            writer.writerows(spacenet_rows(image_id, records))
    return path

