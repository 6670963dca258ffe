"""SpaceNet building scoring: greedy IoU matching of proposal polygons to truth polygons.

Rules (the SpaceNet building challenges' scorer):

* polygons come from ``PolygonWKT_Pix``; ``POLYGON EMPTY`` means the image has none;
* truth polygons with area < 20 px² are dropped, proposals with area <= 20 px² too;
* within each image proposals are taken in descending ``Confidence`` (file order for ties); each
  is matched to the still-unmatched truth polygon of highest IoU and is a true positive when that
  IoU is >= 0.5 (that truth polygon is then removed), otherwise a false positive; truth polygons
  left unmatched are false negatives;
* counts are summed per AOI (the ImageId up to ``_img``, e.g. ``AOI_2_Vegas``) and overall, and
  precision, recall and F1 are computed from the sums (0 when a denominator is 0).

Example:
    >>> truth = read_spacenet_csv("truth.csv"); proposals = read_spacenet_csv("proposals.csv")
    >>> score_spacenet(truth, proposals)["overall"]["F1Score"]
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .errors import TfsegError

TRUTH_MIN_AREA = 20.0  # truth polygons with area < this are dropped
PROPOSAL_MIN_AREA = 20.0  # proposals with area <= this are dropped
IOU_THRESHOLD = 0.5


class ScoringInputError(TfsegError):
    """A truth/proposal file cannot be scored; the message names the file (and row)."""


@dataclass
class Counts:
    TruePos: int = 0
    FalsePos: int = 0
    FalseNeg: int = 0

    def add(self, other: "Counts") -> None:
        self.TruePos += other.TruePos
        self.FalsePos += other.FalsePos
        self.FalseNeg += other.FalseNeg

    def as_dict(self) -> dict:
        tp, fp, fn = self.TruePos, self.FalsePos, self.FalseNeg
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"TruePos": tp, "FalsePos": fp, "FalseNeg": fn, "Precision": precision, "Recall": recall, "F1Score": f1}


def aoi_of(image_id: str) -> str:
    """``AOI_2_Vegas_img123`` -> ``AOI_2_Vegas`` (the whole id when it has no ``_img``)."""
    index = image_id.find("_img")
    return image_id[:index] if index > 0 else image_id


def _valid(poly):
    from shapely.validation import make_valid

    if poly.is_valid:
        return poly
    fixed = make_valid(poly)
    parts = [g for g in getattr(fixed, "geoms", [fixed]) if g.geom_type in ("Polygon", "MultiPolygon")]
    if not parts:
        return fixed.buffer(0)
    from shapely.ops import unary_union

    return unary_union(parts)


def iou(a, b) -> float:
    inter = a.intersection(b).area
    if inter <= 0:
        return 0.0
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def match_polygons(truth: Sequence, proposals: Sequence, confidences: Optional[Sequence[float]] = None,
                   iou_threshold: float = IOU_THRESHOLD) -> Counts:
    """Greedy matching of one image's proposals (in descending confidence) to its truth.

    ``truth`` and ``proposals`` are shapely polygons already filtered by area.
    """
    matched, unmatched = assign_polygons(truth, proposals, confidences, iou_threshold)
    tp = sum(1 for k in matched if k is not None)
    return Counts(TruePos=tp, FalsePos=len(proposals) - tp, FalseNeg=len(unmatched))


def assign_polygons(truth: Sequence, proposals: Sequence, confidences: Optional[Sequence[float]] = None,
                    iou_threshold: float = IOU_THRESHOLD) -> tuple[list, list]:
    """The matching behind :func:`match_polygons`: for each proposal the index of the truth
    polygon it matches (None: a false positive), and the unmatched truth indexes (false negatives)."""
    from shapely import STRtree

    order = list(range(len(proposals)))
    if confidences is not None:
        order.sort(key=lambda i: -float(confidences[i]))  # stable: file order for ties
    truth = [_valid(t) for t in truth]
    tree = STRtree(truth) if truth else None
    unmatched = set(range(len(truth)))
    matched: list = [None] * len(proposals)
    for i in order:
        proposal = _valid(proposals[i])
        best, best_iou = None, 0.0
        if tree is not None and unmatched:
            for k in tree.query(proposal):
                k = int(k)
                if k in unmatched:
                    value = iou(proposal, truth[k])
                    if value > best_iou or (value == best_iou and best is not None and k < best):
                        best, best_iou = k, value
        if best is not None and best_iou >= iou_threshold:
            matched[i] = best
            unmatched.discard(best)
    return matched, sorted(unmatched)


def spacenet_kept(truth: Sequence, proposals: Sequence, truth_min_area: float = TRUTH_MIN_AREA,
                  proposal_min_area: float = PROPOSAL_MIN_AREA) -> tuple[list, list]:
    """Indexes of the ``truth`` polygons (area >= ``truth_min_area``) and ``proposals`` (area >
    ``proposal_min_area``) that are scored: the SpaceNet rule (20 px² both) by default."""
    return ([i for i, g in enumerate(truth) if g.area >= truth_min_area],
            [i for i, g in enumerate(proposals) if g.area > proposal_min_area])


def read_spacenet_csv(path, require_confidence: bool = False) -> dict:
    """``{ImageId: [(polygon, confidence, row_number)]}`` from a SpaceNet CSV.

    ``POLYGON EMPTY`` rows register the image with no polygons. A malformed WKT raises
    :class:`ScoringInputError` naming the file and the row (1-based, header = row 1).
    """
    from shapely import wkt
    from shapely.errors import ShapelyError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SpaceNet CSV not found: {path}")
    images: dict = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        for column in ("ImageId", "PolygonWKT_Pix"):
            if column not in fields:
                raise ScoringInputError(f"{path}: missing column {column!r}; header is {fields}")
        if require_confidence and "Confidence" not in fields:
            raise ScoringInputError(f"{path}: missing column 'Confidence'; header is {fields}")
        for row_number, row in enumerate(reader, start=2):
            image_id = (row.get("ImageId") or "").strip()
            if not image_id:
                raise ScoringInputError(f"{path} row {row_number}: empty ImageId")
            text = (row.get("PolygonWKT_Pix") or "").strip()
            entries = images.setdefault(image_id, [])
            try:
                geom = wkt.loads(text)
            except (ShapelyError, ValueError, TypeError) as exc:
                raise ScoringInputError(
                    f"{path} row {row_number} (ImageId {image_id}): malformed PolygonWKT_Pix {text[:60]!r}: {exc}"
                ) from None
            if geom.is_empty:
                continue
            if geom.geom_type not in ("Polygon", "MultiPolygon"):
                raise ScoringInputError(
                    f"{path} row {row_number} (ImageId {image_id}): expected a POLYGON, got {geom.geom_type}"
                )
            confidence = 1.0
            if row.get("Confidence") not in (None, ""):
                try:
                    confidence = float(row["Confidence"])
                except ValueError:
                    raise ScoringInputError(
                        f"{path} row {row_number}: Confidence {row['Confidence']!r} is not a number"
                    ) from None
            entries.append((geom, confidence, row_number))
    return images


def score_images(truth: dict, proposals: dict, truth_min_area: float = TRUTH_MIN_AREA,
                 proposal_min_area: float = PROPOSAL_MIN_AREA, iou_threshold: float = IOU_THRESHOLD) -> dict:
    """Per-image, per-AOI and overall counts and scores for ``{image: [(poly, conf, row)]}`` maps.

    Images only in ``truth`` count their polygons as false negatives; images only in
    ``proposals`` count theirs as false positives.
    """
    per_image: dict = {}
    per_aoi: dict = {}
    overall = Counts()
    for image_id in list(truth) + [i for i in proposals if i not in truth]:
        t_all, p_all = truth.get(image_id, []), proposals.get(image_id, [])
        t_kept, p_kept = spacenet_kept([e[0] for e in t_all], [e[0] for e in p_all], truth_min_area,
                                       proposal_min_area)
        counts = match_polygons([t_all[i][0] for i in t_kept], [p_all[i][0] for i in p_kept],
                                [p_all[i][1] for i in p_kept], iou_threshold)
        per_image[image_id] = counts
        per_aoi.setdefault(aoi_of(image_id), Counts()).add(counts)
        overall.add(counts)
    return {
        "per_aoi": {k: v.as_dict() for k, v in per_aoi.items()},
        "per_image": {k: v.as_dict() for k, v in per_image.items()},
        "overall": overall.as_dict(),
    }


def score_spacenet(truth_csv, proposals_csv) -> dict:
    """The SpaceNet score of a proposals CSV against a truth CSV (see module docstring)."""
    return score_images(read_spacenet_csv(truth_csv), read_spacenet_csv(proposals_csv))


# ------------------------------------------------------------------------------------------
# Georeferenced polygons (GeoJSON)
# ------------------------------------------------------------------------------------------
def read_geojson_polygons(path, confidences: bool = True) -> tuple[list, list, list, str]:
    """(polygons, confidences, image ids, crs) of a GeoJSON FeatureCollection.

    The CRS is the ``crs`` member when present, else EPSG:4326 (RFC 7946). Confidence is the
    ``confidence``/``Confidence`` property (default 1; a value that is no number is a
    :class:`ScoringInputError` naming the file and the feature); image id the
    ``image_id``/``ImageId`` property, None for a feature without one. ``confidences=False``
    (truth files): the property is not read, every confidence is 1.
    """
    from shapely.geometry import shape

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GeoJSON not found: {path}")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ScoringInputError(f"{path}: not valid JSON: {exc}") from None
    crs = ((doc.get("crs") or {}).get("properties") or {}).get("name") or "EPSG:4326"
    if crs == "pixel":
        crs = ""
    feats = doc.get("features") if doc.get("type") == "FeatureCollection" else [doc]
    polys, confs, ids = [], [], []
    for index, feat in enumerate(feats or []):
        geom = feat.get("geometry")
        if not geom:
            continue
        try:
            g = shape(geom)
        except Exception as exc:  # noqa: BLE001 - shapely raises several types
            raise ScoringInputError(f"{path} feature {index}: invalid geometry: {exc}") from None
        if g.is_empty or g.geom_type not in ("Polygon", "MultiPolygon"):
            continue
        props = feat.get("properties") or {}
        value = props.get("confidence", props.get("Confidence", 1.0)) if confidences else 1.0
        try:
            confidence = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            confidence = math.nan
        if not math.isfinite(confidence):  # null, a string, NaN, infinite
            raise ScoringInputError(f"{path} feature {index}: confidence {json.dumps(value)} is not a number")
        image_id = props.get("image_id", props.get("ImageId"))
        polys.append(g)
        confs.append(confidence)
        ids.append(None if image_id is None else str(image_id))
    return polys, confs, ids, crs


def _image_groups(truth_path, t_ids: list, proposals_path, p_ids: list) -> tuple[list, list]:
    """The image each truth / proposal feature is scored in: its ``image_id``, or, where a file has
    none, one group: the other file's single image (or the truth file's stem when neither has
    ids). Ids on some features of a file only, or no ids against several, are an error."""
    def has_ids(path, ids):
        missing = [i for i, v in enumerate(ids) if v is None]
        if missing and len(missing) < len(ids):
            raise ScoringInputError(f"{path}: feature {missing[0]} has no image_id/ImageId property but other "
                                    "features have one; give every feature an image id, or none (one image)")
        return bool(ids) and not missing

    t_has, p_has = has_ids(truth_path, t_ids), has_ids(proposals_path, p_ids)
    if t_has == p_has:
        key = Path(truth_path).stem
        return ([key] * len(t_ids), [key] * len(p_ids)) if not t_has else (t_ids, p_ids)
    with_path, with_ids = (truth_path, t_ids) if t_has else (proposals_path, p_ids)
    without_path, without_ids = (proposals_path, p_ids) if t_has else (truth_path, t_ids)
    images = sorted(set(with_ids))
    if without_ids and len(images) > 1:
        raise ScoringInputError(
            f"{without_path} has no image_id/ImageId properties (one image) but {with_path} has {len(images)} "
            f"images ({', '.join(images[:5])}{', ...' if len(images) > 5 else ''}): give the features of "
            f"{without_path} their image_id, or score one image's files against each other (e.g. "
            "tfseg.predict's <stem>_polygons.geojson)")
    key = images[0] if images else Path(truth_path).stem
    grouped = [key] * len(without_ids)
    return (with_ids, grouped) if t_has else (grouped, with_ids)


def _metric_crs(crs, polys):
    """A projected CRS to measure areas in: ``crs`` itself if projected, else the UTM zone of
    the polygons' centre."""
    from pyproj import CRS

    crs = CRS.from_user_input(crs)
    if crs.is_projected or not polys:
        return crs
    from shapely.ops import unary_union

    centre = unary_union([p.centroid for p in polys]).centroid
    zone = int((centre.x + 180) // 6) + 1
    return CRS.from_epsg((32600 if centre.y >= 0 else 32700) + zone)


def score_geojson(truth_path, proposals_path, min_area: float = 0.0, iou_threshold: float = IOU_THRESHOLD) -> dict:
    """The same matching for georeferenced polygons; proposals reprojected to the truth's CRS
    (and both to a UTM zone when that CRS is geographic, so IoU uses ground areas).

    ``min_area`` (square metres / CRS units²) drops small polygons on both sides.
    """
    from .postprocess import reproject_geometry

    t_polys, _, t_ids, t_crs = read_geojson_polygons(truth_path, confidences=False)
    p_polys, p_confs, p_ids, p_crs = read_geojson_polygons(proposals_path)
    if bool(t_crs) != bool(p_crs):
        raise ScoringInputError(
            f"cannot compare {truth_path} ({t_crs or 'pixel coordinates'}) with {proposals_path} "
            f"({p_crs or 'pixel coordinates'}): one is georeferenced and the other is not"
        )
    if t_crs:
        metric = _metric_crs(t_crs, t_polys or [reproject_geometry(p, p_crs, t_crs) for p in p_polys])
        t_polys = [reproject_geometry(p, t_crs, metric) for p in t_polys]
        p_polys = [reproject_geometry(p, p_crs, metric) for p in p_polys]
    t_ids, p_ids = _image_groups(truth_path, t_ids, proposals_path, p_ids)
    truth: dict = {}
    for g, image_id in zip(t_polys, t_ids):
        truth.setdefault(image_id, []).append((g, 1.0, 0))
    proposals: dict = {}
    for g, c, image_id in zip(p_polys, p_confs, p_ids):
        proposals.setdefault(image_id, []).append((g, c, 0))
    return score_images(truth, proposals, truth_min_area=min_area, proposal_min_area=min_area if min_area else -1.0,
                        iou_threshold=iou_threshold)
