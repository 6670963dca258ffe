"""Masks -> polygons: round trip against the truth, block merging, speckle/holes, writers."""
import csv
import json

import numpy as np
import pytest
import rasterio
from rasterio import features
from shapely import wkt
from shapely.geometry import box, shape

from tests.data.fixtures import SHARED_DATA as SHARED
from tests.data.fixtures import TRANSFORM, UTM, write_geotiff
from tfseg.postprocess import (
    PolygonOptions,
    PolygonRecord,
    fill_holes_mask,
    merge_geojson,
    pixel_area_m2,
    polygonize_array,
    polygonize_raster,
    remove_speckle,
    spacenet_image_id,
    split_instances,
    to_world,
    write_geojson,
    write_spacenet_csv,
)
from tfseg.scoring import match_polygons


def _truth_polygons(rng, count=40, size=512):
    """Non-overlapping building-like polygons (rotated rectangles and L shapes) in world coords."""
    from shapely import affinity

    polys, taken = [], []
    while len(polys) < count:
        cx, cy = rng.uniform(20, size - 20, 2)
        w, h = rng.uniform(8, 25, 2)  # arms of L shapes >= 4 px, above the 3 px opening
        poly = box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        if rng.random() < 0.4:
            poly = poly.difference(box(cx, cy, cx + w, cy + h))  # L shape
        poly = affinity.rotate(poly, rng.uniform(0, 90), origin="centroid")
        if any(poly.buffer(2).intersects(t) for t in taken):
            continue
        taken.append(poly)
        polys.append(poly)
    # pixel space -> UTM with the scene transform
    transform = TRANSFORM
    return [to_world(p, transform) for p in polys], transform


def test_round_trip_rasterize_polygonize_object_f1(tmp_path):
    """Truth polygons -> rasterize -> GeoTIFF -> streamed polygonize (small blocks, so objects
    cross block boundaries) -> world coordinates -> object F1 >= 0.99 against the truth."""
    rng = np.random.default_rng(3)
    truth, transform = _truth_polygons(rng)
    mask = features.rasterize([(p, 1) for p in truth], out_shape=(512, 512), transform=transform, dtype="uint8")
    path = write_geotiff(tmp_path / "class.tif", mask)
    options = PolygonOptions(opening_px=3, min_area_px=20, simplify_px=1.0)
    records = polygonize_raster(path, None, [1], options, block_rows=64)
    found = [to_world(r.geometry, transform) for r in records]
    counts = match_polygons(truth, found)
    f1 = counts.as_dict()["F1Score"]
    assert f1 >= 0.99, counts
    # without simplification (whose vertex choice depends on where a block cut), the streamed
    # result is exactly the one-block result
    exact = PolygonOptions(opening_px=3, min_area_px=20, simplify_px=0)
    whole = sorted(polygonize_array(mask, None, exact), key=lambda r: r.geometry.centroid.coords[0])
    streamed = sorted(polygonize_raster(path, None, [1], exact, block_rows=64), key=lambda r: r.geometry.centroid.coords[0])
    assert len(whole) == len(streamed) == len(records)
    for a, b in zip(whole, streamed):
        assert a.geometry.symmetric_difference(b.geometry).area < 1e-9


def test_block_merge_keeps_objects_whole_and_confidence(tmp_path):
    mask = np.zeros((100, 60), np.uint8)
    mask[5:95, 10:20] = 1  # a tall object crossing every 16-row block boundary
    mask[40:60, 30:50] = 1
    probs = np.where(mask > 0, 0.8, 0.1).astype(np.float32)
    probs[5:50, 10:20] = 0.6
    class_path = write_geotiff(tmp_path / "c.tif", mask)
    prob_path = write_geotiff(tmp_path / "p.tif", probs)
    records = polygonize_raster(class_path, prob_path, [1], PolygonOptions(opening_px=0, simplify_px=0), block_rows=16)
    assert len(records) == 2
    tall = max(records, key=lambda r: r.geometry.bounds[3] - r.geometry.bounds[1])
    assert tall.geometry.equals(box(10, 5, 20, 95))
    assert tall.confidence == pytest.approx((45 * 0.6 + 45 * 0.8) / 90, abs=1e-6)


def test_speckle_removal_and_hole_filling():
    mask = np.zeros((60, 60), np.uint8)
    mask[10:40, 10:40] = 1
    mask[20:25, 20:25] = 0  # a hole
    mask[50, 50] = 1  # speckle
    cleaned = remove_speckle(mask, 3)
    assert cleaned[50, 50] == 0 and cleaned[15, 15] == 1
    assert fill_holes_mask(mask)[22, 22] == 1
    records = polygonize_array(mask, None, PolygonOptions(opening_px=3, simplify_px=0))
    assert len(records) == 1 and not records[0].geometry.interiors
    assert records[0].geometry.area == pytest.approx(900, abs=8)
    kept = polygonize_array(mask, None, PolygonOptions(opening_px=0, simplify_px=0, fill_holes=False, min_area_px=0))
    assert len(kept) == 2 and any(r.geometry.interiors for r in kept)


def test_simplify_reduces_vertices_and_min_area():
    yy, xx = np.mgrid[:80, :80]
    disk = ((yy - 40) ** 2 + (xx - 40) ** 2 < 30**2).astype(np.uint8)
    rough = polygonize_array(disk, None, PolygonOptions(opening_px=0, simplify_px=0))[0].geometry
    smooth = polygonize_array(disk, None, PolygonOptions(opening_px=0, simplify_px=1.5))[0].geometry
    assert len(smooth.exterior.coords) < len(rough.exterior.coords) / 3
    assert smooth.area == pytest.approx(rough.area, rel=0.03)
    assert polygonize_array(disk, None, PolygonOptions(opening_px=0, min_area_px=3000)) == []
    # m² filter: a 0.25 m² pixel makes the disk ~700 m²
    assert polygonize_array(disk, None, PolygonOptions(opening_px=0, min_area_m2=800), pixel_area_m2=0.25) == []


def test_pixel_area():
    t = rasterio.transform.from_origin(0, 0, 0.5, 0.5)
    assert pixel_area_m2(UTM, t, 10, 10) == pytest.approx(0.25)
    geo = rasterio.transform.from_origin(32.58, 0.35, 1e-5, 1e-5)  # ~1.1 m pixels near the equator
    assert pixel_area_m2("EPSG:4326", geo, 10, 10) == pytest.approx(1.2364, rel=0.01)
    assert pixel_area_m2(None, t, 10, 10) is None


def test_geojson_and_spacenet_writers(tmp_path):
    transform = TRANSFORM
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 5:25] = 1
    records = polygonize_array(mask, np.full((40, 40), 0.7, np.float32), PolygonOptions(opening_px=0))
    out = write_geojson(tmp_path / "a.geojson", records, transform, UTM, class_names=["bg", "building"], pixel_area=0.25)
    doc = json.loads(out.read_text())
    assert doc["crs"]["properties"]["name"].endswith("32636")
    feat = doc["features"][0]
    assert shape(feat["geometry"]).equals(to_world(box(5, 10, 25, 30), transform))
    assert feat["properties"]["class_name"] == "building" and feat["properties"]["area_m2"] == pytest.approx(100)
    wgs = json.loads(write_geojson(tmp_path / "b.geojson", records, transform, UTM, to_epsg4326=True).read_text())
    assert "crs" not in wgs
    lon, lat = wgs["features"][0]["geometry"]["coordinates"][0][0]
    assert 32 < lon < 34 and 0 < lat < 1
    csv_path = write_spacenet_csv(tmp_path / "p.csv", {"AOI_1_X_img1": records, "AOI_1_X_img2": []})
    rows = list(csv.reader(csv_path.open()))
    assert rows[0] == ["ImageId", "BuildingId", "PolygonWKT_Pix", "Confidence"]
    assert rows[1][0] == "AOI_1_X_img1" and wkt.loads(rows[1][2]).equals(box(5, 10, 25, 30))
    assert rows[2] == ["AOI_1_X_img2", "-1", "POLYGON EMPTY", "1.0"]
    assert spacenet_image_id("RGB-PanSharpen_AOI_2_Vegas_img1.tif") == "AOI_2_Vegas_img1"


def _shared_data():

    root = SHARED
    return root if root.is_dir() else None


def test_round_trip_on_real_spacenet_labels(tmp_path):
    """Real SpaceNet-4 footprints (EPSG:32616) -> rasterize on the chip grid -> streamed
    polygonize -> world coordinates -> object F1 against the original footprints (the GeoJSON
    polygons are scored through tfseg.scoring.score_geojson, i.e. as `evaluate polygons`)."""
    root = _shared_data()
    if root is None or not (root / "spacenet_sample" / "sample_geotiff.tif").is_file():
        pytest.skip("shared sample data (../shared/data/spacenet_sample) not available")
    from tfseg.scoring import score_geojson

    labels = root / "spacenet_sample" / "geotiff_labels.geojson"
    doc = json.loads(labels.read_text())
    with rasterio.open(root / "spacenet_sample" / "sample_geotiff.tif") as src:
        transform, crs, out_shape = src.transform, src.crs, src.shape
    truth = [shape(f["geometry"]) for f in doc["features"]]
    mask = features.rasterize([(p, 1) for p in truth], out_shape=out_shape, transform=transform, dtype="uint8")
    class_path = write_geotiff(tmp_path / "class.tif", mask, crs=crs.to_string(), transform=transform)
    records = polygonize_raster(class_path, None, [1], PolygonOptions(opening_px=3, min_area_px=0, simplify_px=0.5),
                                block_rows=128)
    out = write_geojson(tmp_path / "found.geojson", records, transform, crs.to_string())
    result = score_geojson(labels, out)
    assert result["overall"]["F1Score"] >= 0.99, result["overall"]


def test_merge_geojson_one_crs_kept_mixed_reprojected_pixels_excluded(tmp_path):
    t = TRANSFORM
    rec = [PolygonRecord(box(10, 10, 30, 20), 1, 0.9)]
    a = write_geojson(tmp_path / "a.geojson", rec, t, UTM)
    b = write_geojson(tmp_path / "b.geojson", rec + rec, t, UTM)
    c = write_geojson(tmp_path / "c.geojson", rec, t, "EPSG:32637")
    pixels = write_geojson(tmp_path / "p.geojson", rec)
    same = merge_geojson([(a, "a", UTM), (b, "b", UTM)], tmp_path / "same.geojson")
    doc = json.loads((tmp_path / "same.geojson").read_text())
    assert same == {"count": 3, "crs": "urn:ogc:def:crs:EPSG::32636", "excluded": []}
    assert doc["crs"]["properties"]["name"].endswith("32636") and [f["id"] for f in doc["features"]] == [0, 1, 2]
    assert [f["properties"]["image_id"] for f in doc["features"]] == ["a", "b", "b"]
    assert shape(doc["features"][0]["geometry"]).equals(shape(json.loads(a.read_text())["features"][0]["geometry"]))
    mixed = merge_geojson([(a, "a", UTM), (c, "c", "EPSG:32637"), (pixels, "p", None)], tmp_path / "mixed.geojson")
    doc = json.loads((tmp_path / "mixed.geojson").read_text())
    assert mixed == {"count": 2, "crs": "urn:ogc:def:crs:EPSG::4326", "excluded": [str(pixels)]}
    assert "crs" not in doc  # RFC 7946: WGS84 lon/lat
    lon0, lat0 = shape(doc["features"][0]["geometry"]).centroid.coords[0]
    lon1, _ = shape(doc["features"][1]["geometry"]).centroid.coords[0]
    assert 30 < lon0 < 36 and 36 < lon1 < 42 and -1 < lat0 < 1  # zones 36N and 37N near the equator
    only_pixels = merge_geojson([(pixels, "p", None)], tmp_path / "pixels.geojson")
    assert only_pixels["crs"] == "pixel" and only_pixels["count"] == 1


def test_exact_distance_is_scipys_edt_bit_for_bit():
    """split_instances' distance transform (OpenCV, rounding undone) equals scipy's exact EDT
    bit for bit, objects on the border and one-pixel holes included."""
    from scipy import ndimage

    from tfseg.postprocess import exact_distance

    rng = np.random.default_rng(4)
    mask = np.zeros((300, 700), bool)
    for _ in range(60):
        r, c = rng.integers(-10, 290, 2)
        h, w = rng.integers(3, 90, 2)
        mask[max(r, 0):r + h, max(c, 0):c + w] = True
    mask[rng.random(mask.shape) < 0.01] = False
    mask[:, :5] = True  # objects on the border
    distance = exact_distance(mask)
    assert distance.dtype == np.float64 and distance.max() > 10
    np.testing.assert_array_equal(distance, ndimage.distance_transform_edt(mask))
    np.testing.assert_array_equal(exact_distance(mask[:, ::-1]), ndimage.distance_transform_edt(mask[:, ::-1]))
    assert not exact_distance(np.zeros((4, 5), bool)).any()
    full = np.ones((20, 24), bool)  # a crop wholly inside one building: no background
    np.testing.assert_array_equal(exact_distance(full), ndimage.distance_transform_edt(full))


def test_watershed_objects_do_not_depend_on_the_block_size(tmp_path):
    """Objects crossing block boundaries are split on their whole window as the whole-scene path
    splits them: a courtyard cut by a boundary is filled (an island in it absorbed), and the
    window's edge is not the object's (random blobs, with and without clean-up, at several block
    sizes; no small piece is left unlabelled by the watershed on either path)."""
    import cv2

    ring = np.zeros((64, 64), np.uint8)
    ring[10:50, 10:50] = 1
    ring[26:38, 20:44] = 0  # a courtyard: one building of 1600 px² once filled
    island = ring.copy()
    island[22:42, 18:42] = 0
    island[28:36, 26:34] = 1  # a courtyard with an island: filled, one building
    noise = [np.random.default_rng(seed).random((120, 90)).astype(np.float32) for seed in range(6)]
    masks = [ring, island] + [(cv2.GaussianBlur(n, (0, 0), 3) > 0.5).astype(np.uint8) for n in noise]
    options = [PolygonOptions(instances="watershed"),
               PolygonOptions(instances="watershed", opening_px=0, simplify_px=0, min_area_px=0)]
    for index, mask in enumerate(masks):
        assert (split_instances(mask)[mask > 0] > 0).all()  # every pixel in an instance (none dropped)
        path = write_geotiff(tmp_path / f"m{index}.tif", mask)
        for opts in options:
            whole = sorted((r.geometry for r in polygonize_array(mask, None, opts)), key=lambda g: g.bounds)
            for block_rows in (16, 30, 32):
                streamed = sorted((r.geometry for r in polygonize_raster(path, None, [1], opts, block_rows=block_rows)),
                                  key=lambda g: g.bounds)
                assert len(streamed) == len(whole), (index, opts, block_rows)
                for a, b in zip(whole, streamed):
                    assert a.symmetric_difference(b).area < 1e-6, (index, opts, block_rows)
    for name in ("m0.tif", "m1.tif"):
        objects = polygonize_raster(tmp_path / name, None, [1], options[0], block_rows=30)
        assert [r.geometry.area for r in objects] == [1600.0]


def test_pixel_area_of_any_crs_and_rotated_geographic_grids():
    from affine import Affine

    t = rasterio.transform.from_origin(500000, 4000000, 0.5, 0.5)
    assert pixel_area_m2("EPSG:2263", t, 10, 10) == pytest.approx(0.25 * 0.3048 ** 2, rel=1e-5)  # US feet
    assert pixel_area_m2("EPSG:32633+5773", t, 10, 10) == pytest.approx(0.25)  # compound: its projected part
    local = 'LOCAL_CS["site",LOCAL_DATUM["x",0],UNIT["metre",1],AXIS["x",EAST],AXIS["y",NORTH]]'
    assert pixel_area_m2(local, t, 10, 10) is None and pixel_area_m2("EPSG:4978", t, 10, 10) is None
    north_up = Affine(1e-5, 0, 32.58, 0, -1e-5, 0.35)
    expected = pixel_area_m2("EPSG:4326", north_up, 10, 10)
    for angle in (30, 45, 90):  # the pixel's parallelogram, not the bounding box of its diagonal
        rotated = Affine.translation(32.58, 0.35) * Affine.rotation(angle) * Affine.scale(1e-5, -1e-5)
        assert pixel_area_m2("EPSG:4326", rotated, 10, 10) == pytest.approx(expected, rel=1e-3)


def test_min_area_m2_without_a_pixel_area_is_an_error_and_area_m2_null(tmp_path):
    from tfseg.errors import TfsegError
    from tfseg.postprocess import PixelAreaError, require_pixel_area

    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 5:25] = 1
    with pytest.raises(PixelAreaError, match="min_area_m2 50"):
        polygonize_array(mask, None, PolygonOptions(min_area_m2=50.0))
    with pytest.raises(PixelAreaError, match=r"c.tif: min_area_m2"):
        polygonize_raster(write_geotiff(tmp_path / "c.tif", mask), None, [1], PolygonOptions(min_area_m2=50.0))
    local = 'LOCAL_CS["site",LOCAL_DATUM["x",0],UNIT["metre",1],AXIS["x",EAST],AXIS["y",NORTH]]'
    with pytest.raises(TfsegError, match=r"--min-area-m2: scene s.tif has a CRS \('site', Engineering CRS\)"):
        require_pixel_area(local, TRANSFORM, 40, 40, "s.tif")
    with pytest.raises(PixelAreaError, match="scene s.tif has no CRS"):
        require_pixel_area(None, TRANSFORM, 40, 40, "s.tif")
    records = polygonize_array(mask, None, PolygonOptions(opening_px=0))
    out = write_geojson(tmp_path / "a.geojson", records, TRANSFORM, local, pixel_area=pixel_area_m2(local, TRANSFORM,
                                                                                                   40, 40))
    assert json.loads(out.read_text())["features"][0]["properties"]["area_m2"] is None
