"""Checks on the real sample data in ../shared/data (skipped when it is absent)."""
from __future__ import annotations


import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from tfseg import config as config_module
from tfseg.data.formats import load_scenes
from tfseg.data.formats.colour_mask import decode_colour_mask, read_colour_mask
from tfseg.data.formats.mask_folder import pair_images_and_masks
from tfseg.data.labels import ColourMaskLabels, VectorLabels
from tfseg.data.raster import open_raster

from .data.formats import DUBAI_PALETTE
from tests.data.fixtures import SHARED_DATA as SHARED



def shared(name):
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"real sample data not found: {path} (set TFSEG_SHARED_DATA)")
    return path


def spacenet_sample_mask():
    root = shared("spacenet_sample")
    info = open_raster(root / "sample_geotiff.tif")
    labels = VectorLabels.from_file(root / "geotiff_labels.geojson", info)
    return root, info, labels, labels.rasterize(Window(0, 0, info.width, info.height), info)


def test_spacenet_sample_vector_to_mask_matches_polygon_areas():
    """Each of the 43 footprints burns its own area (pixel-centre rule: within half a pixel
    along the outline) at its own place on the 0.5 m grid."""
    import rasterio.features

    _, info, labels, mask = spacenet_sample_mask()
    assert len(labels.geometries) == 43
    pixel_area = abs(info.transform[0] * info.transform[4])
    for geom in labels.geometries:
        alone = rasterio.features.rasterize([(geom, 1)], out_shape=mask.shape, transform=info.affine)
        expected = geom.area / pixel_area
        assert abs(alone.sum() - expected) <= 0.5 * geom.length / info.transform[0] + 2, (alone.sum(), expected)
        assert (mask[alone > 0] == 1).all()
    assert abs(mask.sum() - sum(g.area for g in labels.geometries) / pixel_area) < 0.01 * mask.sum()


def test_spacenet_sample_vector_to_mask_matches_reference():
    """``sample_fp_mask_from_geojson.tif`` is the reference tooling's (solaris ``footprint_mask``)
    rasterization of ``geotiff_labels.geojson`` on the chip's grid: pixel-for-pixel equal.
    (``sample_fp_mask.tif`` is made from another source and does not match the GeoJSON.)"""
    root, info, _, mask = spacenet_sample_mask()
    with rasterio.open(root / "sample_fp_mask_from_geojson.tif") as src:
        reference = src.read(1)
    assert reference.shape == (info.height, info.width) and set(np.unique(reference)) == {0, 255}
    np.testing.assert_array_equal(mask > 0, reference > 0)
    assert int((mask > 0).sum()) == 33818


@pytest.mark.parametrize("tile, mode, expected", [
    ("Tile 1", "RGB", {"building": 2779, "land": 388530, "road": 73093, "vegetation": 4377,
                       "water": 36569, "unlabeled": 7920}),
    ("Tile 2", "P", {"building": 63406, "land": 155233, "road": 58257}),
])
def test_dubai_colour_masks_decode_to_class_counts(tile, mode, expected):
    path = shared("dubai_landcover") / tile / "masks" / "image_part_001.png"
    classes = list(DUBAI_PALETTE)
    labels, unknown = decode_colour_mask(read_colour_mask(path), DUBAI_PALETTE, 255, classes, report=False)
    counts = {classes[v]: int(n) for v, n in zip(*np.unique(labels, return_counts=True))}
    assert counts == expected and unknown == {}
    # the pipeline's path (rasterio windows, palette PNG through its colour map) agrees
    info = open_raster(path)
    assert info.count == (1 if mode == "P" else 3)
    windowed = ColourMaskLabels(info, DUBAI_PALETTE, classes).rasterize(Window(0, 0, info.width, info.height), info)
    np.testing.assert_array_equal(windowed, labels)


def test_kampala_mask_folder_pairs_and_labels():
    root = shared("kampala_buildings") / "train"
    pairs = pair_images_and_masks(root / "images", root / "masks", mask_suffix=".mask")
    assert len(pairs) == 118
    assert all(m.name == i.stem + ".mask.tif" for i, m in pairs)
    cfg = config_module.from_dict({"data": {"format": "mask_folder", "root": str(root),
                                            "options": {"mask_suffix": ".mask"}}}).data
    train, val = load_scenes(cfg)
    assert len(train) + len(val) == 118 and len(val) == round(118 * cfg.val_fraction)
    scene = train[0]
    with rasterio.open(scene.labels.info.path) as src:
        raw = src.read(1)
    label = scene.labels.rasterize(Window(0, 0, 256, 256), scene.info)
    np.testing.assert_array_equal(label, (raw > 0).astype(np.uint8))


def test_kampala_vector_labels_rasterize_to_the_reference_masks():
    """The vector -> mask check on real data whose reference mask is made from its labels:
    every chip's CRS84 footprints, rasterized on its EPSG:4326 grid, vs its .mask.tif."""
    root = shared("kampala_buildings") / "train"
    agreements = []
    for image in sorted((root / "images").glob("*.tif")):
        info = open_raster(image)
        labels = VectorLabels.from_file(root / "labels" / f"{image.stem}.geojson", info, require_overlap=False)
        mask = labels.rasterize(Window(0, 0, info.width, info.height), info)
        with rasterio.open(root / "masks" / f"{image.stem}.mask.tif") as src:
            reference = src.read(1) > 0
        agreements.append(float(((mask > 0) == reference).mean()))
    assert len(agreements) == 118
    assert min(agreements) >= 0.995 and np.mean(agreements) >= 0.999, (min(agreements), np.mean(agreements))
