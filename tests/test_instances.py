"""Instance separation: marker-based watershed on generated touching / non-touching shapes, the
block-streamed version, and the spacenet_sample footprints truth -> mask -> instances -> polygons."""
from __future__ import annotations

import numpy as np
import pytest

from tests.data.fixtures import write_geotiff
from tfseg.postprocess import PolygonOptions, polygonize_array, polygonize_raster, split_instances
from tfseg.scoring import match_polygons

WATERSHED = PolygonOptions(opening_px=0, min_area_px=0, simplify_px=0, instances="watershed")
COMPONENTS = PolygonOptions(opening_px=0, min_area_px=0, simplify_px=0)


def touching_squares(size=64, offset=6):
    """Two 20-px squares side by side sharing 14 px of edge (one blob as a mask)."""
    mask = np.zeros((size, size), np.uint8)
    mask[10:30, 10:30] = 1
    mask[10 + offset : 30 + offset, 30:50] = 1
    return mask


def test_watershed_splits_a_touching_pair_of_squares():
    mask = touching_squares()
    assert len(polygonize_array(mask, None, COMPONENTS)) == 1  # plain components merge them
    records = polygonize_array(mask, None, WATERSHED)
    assert len(records) == 2
    areas = sorted(r.geometry.area for r in records)
    assert areas == pytest.approx([400, 400], abs=40)
    # each polygon is (nearly) one square
    from shapely.geometry import box

    truth = [box(10, 10, 30, 30), box(30, 16, 50, 36)]
    assert match_polygons(truth, [r.geometry for r in records]).TruePos == 2


def test_watershed_keeps_single_and_separate_shapes_whole():
    mask = np.zeros((64, 64), np.uint8)
    mask[5:25, 5:45] = 1  # one 2:1 rectangle: a ridge, not two peaks
    mask[35:55, 10:30] = 1  # a separate square
    rr, cc = np.ogrid[:64, :64]
    mask[((rr - 45) ** 2 + (cc - 50) ** 2) <= 64] = 1  # a disc, not touching the square
    labels = split_instances(mask)
    assert labels.max() == 3
    records = polygonize_array(mask, None, WATERSHED)
    assert len(records) == 3


def test_watershed_markers_from_predicted_boundary_and_contact():
    # two rectangles sharing a full edge: no saddle in the distance transform, but the predicted
    # boundary (or contact) tells them apart
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 10:50] = 1
    boundary = np.zeros(mask.shape, np.float32)
    boundary[10:30, 29:31] = 0.9
    assert split_instances(mask).max() == 1
    assert split_instances(mask, boundary=boundary).max() == 2
    contact = boundary.copy()
    records = polygonize_array(mask, np.full(mask.shape, 0.8, np.float32), WATERSHED, channels={"contact": contact})
    assert len(records) == 2 and all(r.confidence == pytest.approx(0.8) for r in records)


def test_watershed_confidence_is_the_instance_mean():
    mask = touching_squares()
    probs = np.where(np.arange(64)[None, :] < 30, 0.9, 0.6).astype(np.float32) * mask
    records = sorted(polygonize_array(mask, probs, WATERSHED), key=lambda r: r.geometry.centroid.x)
    assert records[0].confidence == pytest.approx(0.9, abs=0.02)
    assert records[1].confidence == pytest.approx(0.6, abs=0.02)


def test_watershed_raster_blocks_match_the_whole_array(tmp_path):
    # objects cut by block boundaries are split once whole: same instances as in one piece
    mask = np.zeros((96, 96), np.uint8)
    for row in (4, 40, 70):
        part = touching_squares(size=96)[10:40]
        mask[row : row + 30] |= part[: 96 - row]
    path = write_geotiff(tmp_path / "class.tif", mask)
    whole = polygonize_array(mask, None, WATERSHED)
    for block_rows in (16, 37, 96):
        blocks = polygonize_raster(path, None, (1,), WATERSHED, block_rows=block_rows)
        assert sorted(round(r.geometry.area) for r in blocks) == sorted(round(r.geometry.area) for r in whole)


def test_instances_option_is_checked():
    with pytest.raises(ValueError, match=r"--instances.*'none', 'watershed'.*'grabcut'"):
        PolygonOptions(instances="grabcut")


def test_spacenet_sample_truth_mask_instances_polygons_object_f1():
    """The 43 real footprints: GeoJSON -> mask -> watershed instances -> polygons -> object F1."""
    from tests.data.fixtures import SHARED_DATA

    root = SHARED_DATA / "spacenet_sample"
    if not root.is_dir():
        pytest.skip(f"real sample data not found: {root} (../shared/data beside the repository)")
    from rasterio.windows import Window
    from shapely.affinity import affine_transform

    from tfseg.data.labels import VectorLabels
    from tfseg.data.raster import open_raster
    from tfseg.scoring import PROPOSAL_MIN_AREA, TRUTH_MIN_AREA

    info = open_raster(root / "sample_geotiff.tif")
    labels = VectorLabels.from_file(root / "geotiff_labels.geojson", info)
    mask = labels.rasterize(Window(0, 0, info.width, info.height), info)
    inverse = ~info.affine
    truth = [affine_transform(g, [inverse.a, inverse.b, inverse.d, inverse.e, inverse.c, inverse.f])
             for g in labels.geometries]
    truth = [t for t in truth if t.area >= TRUTH_MIN_AREA]
    records = polygonize_array(mask, None, PolygonOptions(instances="watershed"))
    proposals = [r.geometry for r in records if r.geometry.area > PROPOSAL_MIN_AREA]
    scores = match_polygons(truth, proposals).as_dict()
    assert scores["F1Score"] >= 0.99, scores
