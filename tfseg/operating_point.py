"""The operating point of a building model: object post-processing chosen on validation.

At the end of training (binary building tasks) the best model predicts every validation scene
whole (the sliding-window engine), and a grid of threshold x minimum area x opening x instance
separation (watershed on/off) is scored by object F1 (SpaceNet rules) on those stitched
probabilities. The best point goes to the run's model card (``operating_point``, and its threshold
becomes the card's decision threshold: ``RUN_DIR/model_card.json``, inside ``model.keras`` and in
the SavedModel) and to ``metrics.json``; ``tfseg.predict``, ``tfseg.evaluate`` and ``tfseg.serve``
use it unless overridden on the command line. The whole table is written to
``RUN_DIR/operating_point_search.csv``. Minimum areas are in m² when every validation scene has a
CRS (ground resolution often varies between chips), else in pixels.

The search is tuned on the validation scenes: report held-out scores on other data.

Example:
    >>> point, rows = search_operating_point(prob_maps, truths)
    >>> options = polygon_options_of(point)        # PolygonOptions for tfseg.postprocess
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from .postprocess import PolygonOptions
from .scoring import Counts

if TYPE_CHECKING:  # object_metrics imports Keras; polygon_options_of must not (the Beam launcher uses it)
    from .object_metrics import SceneTruth

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_AREAS_M2 = (0.0, 2.0, 5.0, 10.0, 20.0)
MIN_AREAS_PX = (0.0, 25.0, 50.0, 100.0, 200.0)
OPENINGS_PX = (0, 3, 5)
INSTANCES = ("none", "watershed")
COLUMNS = ("threshold", "min_area", "min_area_unit", "opening_px", "instances", "tp", "fp", "fn", "precision",
           "recall", "f1")


def search_operating_point(prob_maps: Sequence, truths: Sequence[SceneTruth], thresholds=THRESHOLDS,
                           min_areas: Optional[Sequence[float]] = None, openings=OPENINGS_PX,
                           instances=INSTANCES, channels: Optional[Sequence] = None) -> tuple[dict, list]:
    """The grid point of best object F1 over the scenes, and every row of the search.

    ``prob_maps``: per scene ``(HxW footprint probabilities, HxW valid)``; ``truths``: their
    :class:`SceneTruth`; ``channels``: per scene the predicted ``{"boundary", "contact"}`` maps
    (watershed markers) or None. Ties keep the first point in grid order (lower threshold, smaller
    area, smaller opening, no watershed: the simplest).
    """
    from .object_metrics import match_records, proposals

    if not truths:
        raise ValueError("operating point search: no validation scenes to search on")
    unit = "m2" if all(t.pixel_area for t in truths) else "px"
    if min_areas is None:
        min_areas = MIN_AREAS_M2 if unit == "m2" else MIN_AREAS_PX
    channels = channels or [None] * len(truths)
    rows = []
    for threshold in thresholds:
        for opening in openings:
            for mode in instances:
                options = PolygonOptions(opening_px=int(opening), min_area_px=0.0, instances=mode)
                records = [proposals(probs, valid & ~truth.ignore, threshold, options, extra)
                           for (probs, valid), truth, extra in zip(prob_maps, truths, channels)]
                for area in min_areas:
                    counts = Counts()
                    for truth, scene_records in zip(truths, records):
                        counts.add(match_records(truth, scene_records, min_area_px=area if unit == "px" else 0.0,
                                                 min_area_m2=area if unit == "m2" else 0.0))
                    scores = counts.as_dict()
                    rows.append({"threshold": float(threshold), "min_area": float(area), "min_area_unit": unit,
                                 "opening_px": int(opening), "instances": mode, "tp": scores["TruePos"],
                                 "fp": scores["FalsePos"], "fn": scores["FalseNeg"],
                                 "precision": round(scores["Precision"], 6), "recall": round(scores["Recall"], 6),
                                 "f1": round(scores["F1Score"], 6)})
    order = sorted(range(len(rows)), key=lambda i: (-rows[i]["f1"], rows[i]["threshold"], rows[i]["min_area"],
                                                    rows[i]["opening_px"], INSTANCES.index(rows[i]["instances"])))
    best = rows[order[0]]
    point = {"threshold": best["threshold"], f"min_area_{unit}": best["min_area"], "opening_px": best["opening_px"],
             "instances": best["instances"], "object_f1": best["f1"], "object_precision": best["precision"],
             "object_recall": best["recall"], "searched_on": "validation", "num_scenes": len(truths),
             "grid_points": len(rows)}
    return point, rows


def polygon_options_of(point: dict, base: Optional[PolygonOptions] = None) -> PolygonOptions:
    """The :class:`PolygonOptions` of an operating point (fields it does not set come from ``base``)."""
    import dataclasses

    base = base or PolygonOptions()
    fields = {"opening_px": int(point.get("opening_px", base.opening_px)),
              "instances": str(point.get("instances", base.instances))}
    if "min_area_m2" in point:
        fields.update(min_area_m2=float(point["min_area_m2"]), min_area_px=0.0)
    if "min_area_px" in point:
        fields.update(min_area_px=float(point["min_area_px"]))
    return dataclasses.replace(base, **fields)


def write_search(run_dir, rows: Sequence[dict]) -> Path:
    """``RUN_DIR/operating_point_search.csv``: every grid point of the search."""
    from .fsutil import atomic_write_text

    table = Path(run_dir) / "operating_point_search.csv"
    lines = [",".join(COLUMNS)] + [",".join(str(row[c]) for c in COLUMNS) for row in rows]
    atomic_write_text(table, "\n".join(lines) + "\n")
    return table


def choose_operating_point(predictor, scenes: Sequence, truths: Sequence[SceneTruth], tile_size: int, overlap: int,
                           batch_size: int = 8, run_dir=None) -> tuple[dict, list, list]:
    """Predict the validation ``scenes`` whole, search the grid, write the table to ``run_dir``;
    returns (point, rows, stitched probability maps)."""
    from .object_metrics import footprint_channels, stitched_probabilities

    stitched = stitched_probabilities(predictor, scenes, tile_size, overlap, batch_size)
    bands = predictor.instance_bands()
    maps, extras = [], []
    for probs, valid in stitched:
        footprint, extra = footprint_channels(probs, bands)
        maps.append((footprint, valid))
        extras.append(extra)
    point, rows = search_operating_point(maps, truths, channels=extras)
    if run_dir is not None:
        write_search(run_dir, rows)
    return point, rows, stitched
