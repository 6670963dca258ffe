"""The operating-point search picks the known best point of a constructed case; predict uses it."""
from __future__ import annotations

import numpy as np
import pytest
from shapely.geometry import box

from tfseg.object_metrics import SceneTruth
from tfseg.operating_point import polygon_options_of, search_operating_point, write_search


def constructed_case():
    """Truth: two touching 20-px squares and one lone square. Probabilities: the buildings at 0.65,
    an unlabelled 20x20 roof at 0.45 (a false positive at thresholds <= 0.4, too big for any area
    filter), a 7x8 px blob at 0.9 (a false positive unless min area > 56 px); the touching pair
    needs the watershed."""
    probs = np.zeros((64, 96), np.float32)
    probs[10:30, 10:30] = 0.65
    probs[18:38, 30:50] = 0.65  # touches the first square along 12 px of edge
    probs[40:60, 60:80] = 0.65
    probs[40:60, 5:25] = 0.45  # 400 px unlabelled roof
    probs[5:12, 70:78] = 0.9  # 56 px blob
    truth = SceneTruth("case", [box(10, 10, 30, 30), box(30, 18, 50, 38), box(60, 40, 80, 60)],
                       np.zeros(probs.shape, bool))
    return [(probs, np.ones(probs.shape, bool))], [truth]


def test_search_picks_the_known_best_point(tmp_path):
    maps, truths = constructed_case()
    point, rows = search_operating_point(maps, truths)
    assert len(rows) == 5 * 5 * 3 * 2 == point["grid_points"]
    # F1 1.0 needs: threshold in (0.45, 0.65], min area in (56, 400), watershed; the simplest such point
    assert (point["threshold"], point["min_area_px"], point["opening_px"], point["instances"]) == (
        0.5, 100.0, 0, "watershed")
    assert point["object_f1"] == 1.0 and point["searched_on"] == "validation"
    best = [r for r in rows if r["f1"] == 1.0]
    assert {r["instances"] for r in best} == {"watershed"} and all(0.45 < r["threshold"] <= 0.65 for r in best)
    # without watershed the pair is one object: at best 2 TP of 3 truths, 1 proposal merged
    assert max(r["f1"] for r in rows if r["instances"] == "none") < 1.0
    table = write_search(tmp_path, rows)
    lines = table.read_text().splitlines()
    assert lines[0].startswith("threshold,min_area,min_area_unit,opening_px,instances,tp,fp,fn") and len(lines) == 151
    assert lines[1 + rows.index(next(r for r in rows if r["f1"] == 1.0))].endswith(",1.0")
    options = polygon_options_of(point)
    assert (options.min_area_px, options.opening_px, options.instances) == (100.0, 0, "watershed")


def test_search_uses_square_metres_when_the_scenes_have_a_crs():
    maps, truths = constructed_case()
    truths[0].pixel_area = 0.25  # 0.5 m pixels: the 56-px blob is 14 m², a square 100 m²
    point, _ = search_operating_point(maps, truths)
    assert point["min_area_m2"] == 20.0 and "min_area_px" not in point and point["object_f1"] == 1.0
    assert polygon_options_of(point).min_area_m2 == 20.0


def test_search_needs_scenes():
    with pytest.raises(ValueError, match="no validation scenes"):
        search_operating_point([], [])
