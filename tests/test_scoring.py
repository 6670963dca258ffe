"""SpaceNet scorer on hand-made cases, CSV errors, and the georeferenced polygon variant."""
import json

import pytest
from shapely.geometry import box

from tfseg import evaluate
from tfseg.scoring import ScoringInputError, aoi_of, read_spacenet_csv, score_geojson, score_spacenet

HEADER_T = "ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo\n"
HEADER_P = "ImageId,BuildingId,PolygonWKT_Pix,Confidence\n"


def rect(x0, y0, x1, y1):
    return f'"{box(x0, y0, x1, y1).wkt}"'


def write(tmp_path, name, header, rows):
    path = tmp_path / name
    path.write_text(header + "".join(",".join(str(v) for v in row) + "\n" for row in rows))
    return path


def score(tmp_path, truth_rows, proposal_rows):
    truth = write(tmp_path, "truth.csv", HEADER_T, [r + ("",) for r in truth_rows])
    props = write(tmp_path, "props.csv", HEADER_P, proposal_rows)
    return score_spacenet(truth, props)


def counts(result, key="overall"):
    s = result[key] if key == "overall" else result["per_image"][key]
    return s["TruePos"], s["FalsePos"], s["FalseNeg"]


def test_exact_match_and_json_keys(tmp_path):
    r = score(tmp_path, [("AOI_1_A_img1", 1, rect(0, 0, 10, 10))], [("AOI_1_A_img1", 0, rect(0, 0, 10, 10), 0.9)])
    assert set(r) == {"per_aoi", "per_image", "overall"}
    assert set(r["overall"]) == {"TruePos", "FalsePos", "FalseNeg", "Precision", "Recall", "F1Score"}
    assert counts(r) == (1, 0, 0) and r["overall"]["F1Score"] == 1.0
    assert list(r["per_aoi"]) == ["AOI_1_A"] and list(r["per_image"]) == ["AOI_1_A_img1"]


@pytest.mark.parametrize("height,expected", [(4.9, (0, 1, 1)), (5.0, (1, 0, 0)), (5.1, (1, 0, 0))])
def test_iou_just_under_and_over_half(tmp_path, height, expected):
    # truth 10x10; proposal 10 x h inside it: IoU = h / 10
    r = score(tmp_path, [("AOI_1_A_img1", 1, rect(0, 0, 10, 10))],
              [("AOI_1_A_img1", 0, rect(0, 0, 10, height), 0.9)])
    assert counts(r) == expected


def test_duplicate_proposals_count_once(tmp_path):
    r = score(tmp_path, [("AOI_1_A_img1", 1, rect(0, 0, 10, 10))],
              [("AOI_1_A_img1", 0, rect(0, 0, 10, 10), 0.9), ("AOI_1_A_img1", 1, rect(0, 0, 10, 10), 0.8)])
    assert counts(r) == (1, 1, 0)
    assert r["overall"]["Precision"] == 0.5 and r["overall"]["Recall"] == 1.0
    assert r["overall"]["F1Score"] == pytest.approx(2 / 3)


def test_confidence_order_decides_matching(tmp_path):
    # overlapping truths T1 = [0,10]x[0,10], T2 = [4,14]x[0,10]. P_a = [1.5,11.5]: IoU 0.74 with T1,
    # 0.6 with T2. P_b = T1 exactly: IoU 1 with T1, 0.43 with T2. Taken first, P_a grabs T1 and
    # P_b is left with T2 (IoU < 0.5): 1 TP, 1 FP, 1 FN. P_b first: P_b gets T1, P_a gets T2: 2 TP.
    truth = [("AOI_1_A_img1", 1, rect(0, 0, 10, 10)), ("AOI_1_A_img1", 2, rect(4, 0, 14, 10))]
    p_a, p_b = rect(1.5, 0, 11.5, 10), rect(0, 0, 10, 10)
    assert counts(score(tmp_path, truth, [("AOI_1_A_img1", 0, p_a, 0.9), ("AOI_1_A_img1", 1, p_b, 0.5)])) == (1, 1, 1)
    assert counts(score(tmp_path, truth, [("AOI_1_A_img1", 0, p_a, 0.5), ("AOI_1_A_img1", 1, p_b, 0.9)])) == (2, 0, 0)
    # ties keep file order
    assert counts(score(tmp_path, truth, [("AOI_1_A_img1", 0, p_a, 0.5), ("AOI_1_A_img1", 1, p_b, 0.5)])) == (1, 1, 1)
    assert counts(score(tmp_path, truth, [("AOI_1_A_img1", 0, p_b, 0.5), ("AOI_1_A_img1", 1, p_a, 0.5)])) == (2, 0, 0)
    # a proposal matches the unmatched truth of highest IoU
    two = score(tmp_path, [("AOI_1_A_img1", 1, rect(0, 0, 10, 10)), ("AOI_1_A_img1", 2, rect(8, 0, 18, 10))],
                [("AOI_1_A_img1", 0, rect(7, 0, 17, 10), 0.9), ("AOI_1_A_img1", 1, rect(0, 0, 10, 10), 0.8)])
    assert counts(two) == (2, 0, 0)


def test_empty_images(tmp_path):
    r = score(tmp_path, [("AOI_1_A_img1", -1, "POLYGON EMPTY"), ("AOI_1_A_img2", -1, "POLYGON EMPTY")],
              [("AOI_1_A_img1", -1, "POLYGON EMPTY", 1), ("AOI_1_A_img2", 0, rect(0, 0, 10, 10), 0.7)])
    assert counts(r, "AOI_1_A_img1") == (0, 0, 0)
    assert counts(r, "AOI_1_A_img2") == (0, 1, 0)
    assert r["per_image"]["AOI_1_A_img1"]["F1Score"] == 0.0


def test_tiny_polygons_dropped(tmp_path):
    # truth: area 19 dropped (< 20), area 20 kept; proposals: area 20 dropped (<= 20), 21 kept
    r = score(tmp_path, [("AOI_1_A_img1", 1, rect(0, 0, 19, 1)), ("AOI_1_A_img1", 2, rect(0, 10, 20, 11))],
              [("AOI_1_A_img1", 0, rect(0, 10, 20, 11), 0.9)])
    assert counts(r) == (0, 0, 1)  # the area-20 proposal is dropped; the area-20 truth is a FN
    r = score(tmp_path, [("AOI_1_A_img1", 1, rect(0, 10, 21, 11))], [("AOI_1_A_img1", 0, rect(0, 10, 21, 11), 0.9)])
    assert counts(r) == (1, 0, 0)


def test_unknown_image_ids_are_false_positives_and_aois_sum(tmp_path):
    r = score(tmp_path,
              [("AOI_1_A_img1", 1, rect(0, 0, 10, 10)), ("AOI_2_B_img7", 1, rect(0, 0, 10, 10))],
              [("AOI_1_A_img1", 0, rect(0, 0, 10, 10), 0.9), ("AOI_9_Z_img3", 0, rect(0, 0, 10, 10), 0.9),
               ("AOI_9_Z_img3", 1, rect(20, 20, 30, 30), 0.8)])
    assert counts(r, "AOI_9_Z_img3") == (0, 2, 0)
    assert r["per_aoi"]["AOI_1_A"]["TruePos"] == 1
    assert r["per_aoi"]["AOI_2_B"]["FalseNeg"] == 1
    assert r["per_aoi"]["AOI_9_Z"]["FalsePos"] == 2
    assert counts(r) == (1, 2, 1)
    assert r["overall"]["Precision"] == pytest.approx(1 / 3) and r["overall"]["Recall"] == pytest.approx(0.5)
    assert aoi_of("AOI_2_Vegas_img123") == "AOI_2_Vegas"


def test_malformed_wkt_names_row(tmp_path):
    path = write(tmp_path, "bad.csv", HEADER_P, [("AOI_1_A_img1", 0, rect(0, 0, 10, 10), 0.9),
                                                  ("AOI_1_A_img1", 1, '"POLYGON ((0 0, 1 1"', 0.5)])
    with pytest.raises(ScoringInputError, match=r"bad.csv row 3"):
        read_spacenet_csv(path)
    truth = write(tmp_path, "t.csv", HEADER_T, [("AOI_1_A_img1", 1, rect(0, 0, 10, 10), "")])
    assert evaluate.main(["spacenet", "--truth", str(truth), "--proposals", str(path)]) == 2


def test_spacenet_cli_json(tmp_path, capsys):
    truth = write(tmp_path, "t.csv", HEADER_T, [("AOI_1_A_img1", 1, rect(0, 0, 10, 10), "")])
    props = write(tmp_path, "p.csv", HEADER_P, [("AOI_1_A_img1", 0, rect(0, 0, 10, 10), 0.9)])
    assert evaluate.main(["spacenet", "--truth", str(truth), "--proposals", str(props), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["overall"]["F1Score"] == 1.0
    assert evaluate.main(["spacenet", "--truth", str(truth), "--proposals", str(props)]) == 0
    assert "overall" in capsys.readouterr().out


def _geojson(path, polys, crs=None):
    from shapely.geometry import mapping

    doc = {"type": "FeatureCollection",
           "features": [{"type": "Feature", "properties": {}, "geometry": mapping(p)} for p in polys]}
    if crs:
        doc["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(doc))
    return path


def test_polygons_reprojected_between_crs(tmp_path, capsys):
    from tfseg.postprocess import reproject_geometry

    utm = [box(440000 + 20 * i, 40000, 440010 + 20 * i, 40010) for i in range(4)]
    truth = _geojson(tmp_path / "truth.geojson", utm, "EPSG:32636")
    wgs = [reproject_geometry(p, "EPSG:32636", "EPSG:4326") for p in utm[:3]]
    shifted = reproject_geometry(box(440060 + 6, 40000, 440070 + 6, 40010), "EPSG:32636", "EPSG:4326")  # IoU 0.25
    props = _geojson(tmp_path / "props.geojson", wgs + [shifted])
    r = score_geojson(truth, props)
    assert counts(r) == (3, 1, 1)
    assert evaluate.main(["polygons", "--truth", str(truth), "--proposals", str(props), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["overall"]["TruePos"] == 3


def test_polygons_without_image_ids_are_one_image(tmp_path):
    """A truth file without image ids against tfseg.predict's merged polygons.geojson (every
    feature with the scene's image_id) is one image, matched to the proposals' one scene."""
    utm = [box(440000 + 20 * i, 40000, 440010 + 20 * i, 40010) for i in range(3)]
    truth = _geojson(tmp_path / "truth.geojson", utm, "EPSG:32636")
    merged = _geojson(tmp_path / "polygons.geojson", utm, "EPSG:32636")
    doc = json.loads(merged.read_text())
    for feature in doc["features"]:
        feature["properties"]["image_id"] = "scene_7"
    merged.write_text(json.dumps(doc))
    assert counts(score_geojson(truth, merged)) == (3, 0, 0)
    assert counts(score_geojson(merged, truth)) == (3, 0, 0)
    assert counts(score_geojson(truth, _geojson(tmp_path / "other.geojson", utm, "EPSG:32636"))) == (3, 0, 0)
    doc["features"][0]["properties"]["image_id"] = "scene_8"  # two scenes: which one is the truth's?
    merged.write_text(json.dumps(doc))
    with pytest.raises(ScoringInputError, match=r"truth.geojson has no image_id.*2 images \(scene_7, scene_8\)"):
        score_geojson(truth, merged)
    del doc["features"][0]["properties"]["image_id"]  # ids on some features only
    merged.write_text(json.dumps(doc))
    with pytest.raises(ScoringInputError, match=r"polygons.geojson: feature 0 has no image_id"):
        score_geojson(truth, merged)


@pytest.mark.parametrize("value, shown", [(None, "null"), ("high", '"high"'), (True, "true")])
def test_polygons_confidence_that_is_no_number_names_the_file_and_feature(tmp_path, value, shown):
    polys = [box(440000 + 20 * i, 40000, 440010 + 20 * i, 40010) for i in range(2)]
    truth = _geojson(tmp_path / "truth.geojson", polys, "EPSG:32636")
    props = _geojson(tmp_path / "props.geojson", polys, "EPSG:32636")
    doc = json.loads(props.read_text())
    doc["features"][1]["properties"]["confidence"] = value
    props.write_text(json.dumps(doc))
    with pytest.raises(ScoringInputError, match=rf"props.geojson feature 1: confidence {shown} is not a number"):
        score_geojson(truth, props)
    assert counts(score_geojson(props, truth)) == (2, 0, 0)  # a truth file's confidence is not read
