"""Every data format on generated fixtures: layout, alignment, label encoding, bad input."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from tfseg import config as config_module
from tfseg.data.formats import DataFormatError, load_scenes
from tfseg.data.formats.colour_mask import ColourMaskError, decode_colour_mask
from tfseg.data.formats.dstl import CLASSES as DSTL_CLASSES
from tfseg.data.formats.mask_folder import MaskFolderError, pair_images_and_masks
from tfseg.data.labels import LabelError
from tfseg.data.pipeline import read_tile
from tfseg.data.raster import RasterError

from .data.fixtures import write_geotiff
from .data.formats import (
    DUBAI_PALETTE, colour_mask_array, make_colour_mask, make_dstl, make_mask_folder, make_scenes, make_spacenet,
)

def data_cfg(**data):
    return config_module.from_dict({"data": data}).data


def full_label(scene):
    return scene.labels.rasterize(Window(0, 0, scene.info.width, scene.info.height), scene.info)


def all_scenes(cfg):
    train, val = load_scenes(cfg)
    return {s.name: s for s in train + val}


# ------------------------------------------------------------------------------------ spacenet
def test_spacenet_footprints_land_on_their_pixels_and_empty_geojson_is_no_buildings(tmp_path):
    boxes = make_spacenet(tmp_path)
    scenes = all_scenes(data_cfg(format="spacenet", root=str(tmp_path), val_fraction=0.34))
    assert set(scenes) == set(boxes)
    for chip, chip_boxes in boxes.items():
        scene = scenes[chip]
        assert scene.info.num_bands == 3 and scene.info.crs == "EPSG:4326"
        expected = np.zeros((64, 64), np.uint8)
        for c0, r0, c1, r1 in chip_boxes:
            expected[r0:r1, c0:c1] = 1
        np.testing.assert_array_equal(full_label(scene), expected)


def test_spacenet_product_and_target_channels(tmp_path):
    make_spacenet(tmp_path)
    scenes = all_scenes(data_cfg(format="spacenet", root=str(tmp_path), options={"product": "MUL"}))
    assert {s.info.num_bands for s in scenes.values()} == {8}
    assert {s.info.width for s in scenes.values()} == {32}
    cfg = data_cfg(
        format="spacenet", root=str(tmp_path), task="multilabel", classes=["footprint", "boundary", "contact"],
        options={"targets": ["footprint", "boundary", "contact"], "boundary_width": 3, "contact_spacing": 4},
    )
    scene = all_scenes(cfg)["AOI_2_Vegas_img1"]
    label = full_label(scene)
    assert label.shape == (64, 64, 3)
    footprint, boundary, contact = label[..., 0], label[..., 1], label[..., 2]
    assert footprint[10, 10] == 1 and footprint[0, 0] == 0
    assert boundary[8, 15] == 1 and boundary[14, 15] == 0  # on the outline, not deep inside
    # boxes (8,8)-(24,20) and (26,8)-(40,20) are 2 px apart: the gap is contact, not footprint
    assert contact[14, 24:26].all() and not contact[14, 5] and not contact[40, 40]
    assert not (contact & footprint).any()


def test_spacenet_errors_name_the_file_or_key(tmp_path):
    make_spacenet(tmp_path)
    with pytest.raises(DataFormatError, match="data.options.product"):
        load_scenes(data_cfg(format="spacenet", root=str(tmp_path), options={"product": "SWIR"}))
    with pytest.raises(DataFormatError, match="data.task"):
        load_scenes(data_cfg(format="spacenet", root=str(tmp_path), options={"targets": ["footprint", "contact"]}))
    missing = tmp_path / "AOI_2_Vegas_Train/geojson/buildings/buildings_AOI_2_Vegas_img2.geojson"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match="buildings_AOI_2_Vegas_img2.geojson"):
        load_scenes(data_cfg(format="spacenet", root=str(tmp_path)))
    with pytest.raises(DataFormatError, match="data.num_bands"):
        missing.write_text('{"type": "FeatureCollection", "features": []}')
        load_scenes(data_cfg(format="spacenet", root=str(tmp_path), num_bands=8))


# --------------------------------------------------------------------------------- mask folder
@pytest.mark.parametrize("scale255", [False, True])
def test_mask_folder_binary_masks_01_and_0255(tmp_path, scale255):
    masks = make_mask_folder(tmp_path, scale255=scale255)
    scenes = all_scenes(data_cfg(format="mask_folder", root=str(tmp_path), options={"mask_suffix": ".mask"}))
    assert set(scenes) == set(masks)
    for stem, mask in masks.items():
        np.testing.assert_array_equal(full_label(scenes[stem]), mask)


def test_mask_folder_png_without_crs_and_padding_of_small_images(tmp_path):
    masks = make_mask_folder(tmp_path, georeferenced=False, suffix="_mask")
    scenes = all_scenes(data_cfg(format="mask_folder", root=str(tmp_path), options={"mask_suffix": "_mask"}))
    scene = scenes["OAM-0-7-19"]
    assert scene.info.crs is None and scene.info.num_bands == 3
    image, label = read_tile(scene, Window(0, 0, 64, 64), 255)  # 48 px image, 64 px window
    assert image.shape == (64, 64, 3) and label.shape == (64, 64)
    np.testing.assert_array_equal(label[:48, :48], masks["OAM-0-7-19"])
    assert (label[48:] == 255).all() and (label[:, 48:] == 255).all() and (image[48:] == 0).all()


def test_pair_images_and_masks_by_stem_and_missing_mask(tmp_path):
    make_mask_folder(tmp_path, num_pairs=3)
    pairs = pair_images_and_masks(tmp_path / "images", tmp_path / "masks", mask_suffix=".mask")
    assert [(i.name, m.name) for i, m in pairs][0] == ("OAM-0-7-19.tif", "OAM-0-7-19.mask.tif")
    assert len(pairs) == 3
    (tmp_path / "masks" / "OAM-1-8-19.mask.tif").unlink()
    with pytest.raises(MaskFolderError, match=r"no mask for 1 of 3 image\(s\) in .*OAM-1-8-19.tif"):
        pair_images_and_masks(tmp_path / "images", tmp_path / "masks", mask_suffix=".mask")
    assert len(pair_images_and_masks(tmp_path / "images", tmp_path / "masks", ".mask", strict=False)) == 2
    with pytest.raises(MaskFolderError, match="OAM-1-8-19.tif"):
        load_scenes(data_cfg(format="mask_folder", root=str(tmp_path), options={"mask_suffix": ".mask"}))


def test_image_mask_size_mismatch_names_both_files(tmp_path):
    make_mask_folder(tmp_path, num_pairs=2)
    bad = tmp_path / "masks" / "OAM-1-8-19.mask.tif"
    write_geotiff(bad, np.zeros((40, 48), np.uint8))
    with pytest.raises(LabelError, match=r"OAM-1-8-19\.mask\.tif.*48x40.*OAM-1-8-19\.tif.*48x48"):
        load_scenes(data_cfg(format="mask_folder", root=str(tmp_path), options={"mask_suffix": ".mask"}))


# -------------------------------------------------------------------------------- colour mask
def test_decode_colour_mask_counts_and_unknown_colours():
    rgb, expected = colour_mask_array()
    labels, unknown = decode_colour_mask(rgb, DUBAI_PALETTE, 255, classes=list(DUBAI_PALETTE), report=False)
    values, counts = np.unique(labels, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == {**expected, 255: 7}
    assert unknown == {"#000000": 7}
    # palette names missing from classes are ignored too
    labels, _ = decode_colour_mask(rgb, DUBAI_PALETTE, 255, classes=["building", "road"], report=False)
    assert set(np.unique(labels).tolist()) == {0, 1, 255}
    with pytest.raises(ColourMaskError, match="data.palette.road"):
        decode_colour_mask(rgb, {"road": "#12345"}, 255)


def test_colour_mask_format_palette_png_and_rgb_png_reported_once(tmp_path, caplog):
    expected, unknown_pixels = make_colour_mask(tmp_path)
    assert Image_mode(tmp_path / "Tile 2/masks/image_part_001.png") == "P"
    cfg = data_cfg(format="colour_mask", root=str(tmp_path), classes=list(DUBAI_PALETTE),
                   palette=DUBAI_PALETTE, val_fraction=0.34)
    with caplog.at_level(logging.WARNING):
        scenes = all_scenes(cfg)
    reports = [r for r in caplog.records if "not in data.palette" in r.getMessage()]
    assert len(reports) == 1 and f"'#000000': {3 * unknown_pixels}" in reports[0].getMessage()
    for name in ("Tile 1/images/image_part_001.jpg", "Tile 2/images/image_part_001.jpg"):
        label = full_label(scenes[name])
        values, counts = np.unique(label, return_counts=True)
        assert dict(zip(values.tolist(), counts.tolist())) == {**expected, 255: unknown_pixels}, name


def test_colour_mask_unknown_colours_as_error_names_the_file(tmp_path):
    make_colour_mask(tmp_path)
    cfg = data_cfg(format="colour_mask", root=str(tmp_path), classes=list(DUBAI_PALETTE),
                   palette=DUBAI_PALETTE, ignore_colours="error")
    with pytest.raises(ColourMaskError, match=r"Tile 1/masks/image_part_001.png.*#000000"):
        load_scenes(cfg)


def Image_mode(path):
    from PIL import Image

    with Image.open(path) as image:
        return image.mode


# ------------------------------------------------------------------------------------- dstl
def dstl_cfg(root, **extra):
    return data_cfg(format="dstl", root=str(root), task="multilabel", classes=DSTL_CLASSES, val_fraction=0.0, **extra)


def test_dstl_normalized_square_maps_to_expected_pixels_and_20_channels(tmp_path):
    x0, y0, x1, y1 = make_dstl(tmp_path)
    train, val = load_scenes(dstl_cfg(tmp_path))
    scene = (train + val)[0]
    assert scene.info.num_bands == 20 and (scene.info.width, scene.info.height) == (90, 90)
    label = full_label(scene)
    assert label.shape == (90, 90, 10) and label[..., 1:].sum() == 0
    # pixel-centre rule: pixel (r, c) is inside when its centre lies in the square
    rows, cols = np.mgrid[0:90, 0:90] + 0.5
    expected = (cols > x0) & (cols < x1) & (rows > y0) & (rows < y1)
    assert abs(x0 - 0.2 * 90 * 90 / 91) < 1e-9 and abs(y1 - 0.3 * 90 * 90 / 91) < 1e-9
    np.testing.assert_array_equal(label[..., 0], expected.astype(np.uint8))
    image, label = read_tile(scene, Window(0, 0, 96, 96), 255)
    assert image.shape == (96, 96, 20) and label.shape == (96, 96, 10)
    assert (label[90:] == 255).all() and (label[:90, :90] != 255).all()
    # the low-resolution SWIR (A) bands are 100 * (b + 1) +- 1 per band: resampling keeps the level
    np.testing.assert_allclose(image[5:85, 5:85, 11:19].mean(axis=(0, 1)), 100 * np.arange(1, 9), atol=0.2)


def test_dstl_errors_name_the_file(tmp_path):
    make_dstl(tmp_path)
    (tmp_path / "sixteen_band/6120_2_2_A.tif").unlink()
    with pytest.raises(FileNotFoundError, match="6120_2_2_A.tif"):
        load_scenes(dstl_cfg(tmp_path))
    assert len(load_scenes(dstl_cfg(tmp_path, options={"products": ["three_band", "M", "P"]}))[0]) == 1
    with pytest.raises(DataFormatError, match="data.task"):
        load_scenes(data_cfg(format="dstl", root=str(tmp_path)))
    (tmp_path / "grid_sizes.csv").write_text(",Xmax,Ymin\n")
    with pytest.raises(DataFormatError, match="grid_sizes.csv.*6120_2_2"):
        load_scenes(dstl_cfg(tmp_path, options={"products": ["three_band"]}))


# ----------------------------------------------------------------------- general bad input
def test_corrupt_and_truncated_rasters_name_the_file(tmp_path):
    make_mask_folder(tmp_path, num_pairs=2)
    image = tmp_path / "images" / "OAM-1-8-19.tif"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    with pytest.raises(RasterError, match="OAM-1-8-19.tif"):
        load_scenes(data_cfg(format="mask_folder", root=str(tmp_path), options={"mask_suffix": ".mask"}))
    image.write_bytes(b"not a tiff at all")
    with pytest.raises(RasterError, match="OAM-1-8-19.tif"):
        load_scenes(data_cfg(format="mask_folder", root=str(tmp_path), options={"mask_suffix": ".mask"}))


def test_unknown_format_names_the_key():
    cfg = data_cfg()
    cfg.format = "coco"
    with pytest.raises(DataFormatError, match="data.format"):
        load_scenes(cfg)


def test_binary_mask_with_01_and_255_ignores_255_and_bad_values_name_the_file(tmp_path):
    """255 in a {0,1} mask means 'ignore' (in training and in tfseg.evaluate alike); in a {0,255}
    mask it means 'object' (test above); any other value is an error naming the mask."""
    masks = make_mask_folder(tmp_path, num_pairs=2)
    stem = sorted(masks)[0]
    path = tmp_path / "masks" / f"{stem}.mask.tif"
    with rasterio.open(path) as src:
        mask = src.read(1)
    mask[:3, :] = 255
    write_geotiff(path, mask)
    scenes = all_scenes(data_cfg(format="mask_folder", root=str(tmp_path), options={"mask_suffix": ".mask"}))
    label = full_label(scenes[stem])
    assert (label[:3] == 255).all()
    np.testing.assert_array_equal(label[3:], masks[stem][3:])
    mask[0, 0] = 7
    write_geotiff(path, mask)
    with pytest.raises(LabelError, match=stem):
        all_scenes(data_cfg(format="mask_folder", root=str(tmp_path), options={"mask_suffix": ".mask"}))


def test_scenes_labels_overlapping_no_scene_are_an_error(tmp_path):
    """A vector file whose polygons touch none of the scenes (wrong CRS/file) is an error naming it,
    not silently empty masks."""
    import json

    make_scenes(tmp_path)
    doc = json.loads((tmp_path / "labels.geojson").read_text())
    for feature in doc["features"]:  # the same boxes, 20 degrees east: nowhere near the rasters
        ring = feature["geometry"]["coordinates"][0]
        feature["geometry"]["coordinates"][0] = [[x + 20.0, y] for x, y in ring]
    (tmp_path / "labels.geojson").write_text(json.dumps(doc))
    with pytest.raises(LabelError, match="labels.geojson.*overlap none"):
        load_scenes(data_cfg(format="scenes", root=str(tmp_path)))


@pytest.mark.parametrize(("task", "classes", "value", "expected"), [
    ("multiclass", ["a", "b", "c"], 5, r"value 5 is out of range \(expected class indices 0..2 or 255 = ignore\)"),
    ("binary", ["a"], 300, r"a binary mask must hold .*found values \[0, 1, 300\]"),
    ("multiclass", ["a", "b"], 300, r"value 300 is out of range"),
    ("multilabel", ["a", "b"], 2, r"\(band 2\): value 2 is out of range \(expected 0/1 per class band"),
])
def test_mask_values_out_of_range_name_file_and_value(tmp_path, task, classes, value, expected):
    """Never clipped onto 255 or silently ignored: a value that is no class stops the load."""
    channels = len(classes) if task == "multilabel" else 1
    mask = np.zeros((channels, 40, 40), np.uint16 if value > 255 else np.uint8)
    mask[:, 5:20, 5:20] = 1
    mask[channels - 1, 0, 0] = value
    write_geotiff(tmp_path / "images" / "tile.tif", np.ones((3, 40, 40), np.uint8))
    write_geotiff(tmp_path / "masks" / "tile.tif", mask)
    with pytest.raises(LabelError, match=r"mask .*masks/tile.tif.*" + expected):
        load_scenes(data_cfg(format="mask_folder", root=str(tmp_path), classes=classes, task=task, val_fraction=0.0))


def test_16bit_mask_nodata_above_255_is_ignored_not_clipped(tmp_path):
    mask = np.zeros((40, 40), np.uint16)
    mask[5:20, 5:20] = 2
    mask[:2] = 65535
    write_geotiff(tmp_path / "images" / "tile.tif", np.ones((3, 40, 40), np.uint8))
    write_geotiff(tmp_path / "masks" / "tile.tif", mask, nodata=65535)
    (scene,) = load_scenes(data_cfg(format="mask_folder", root=str(tmp_path), classes=["a", "b", "c"],
                                    val_fraction=0.0))[0]
    label = full_label(scene)
    assert (label[:2] == 255).all() and (label[5:20, 5:20] == 2).all() and (label[2:5] == 0).all()


def test_features_without_geometry_are_counted_in_a_warning(tmp_path, caplog):
    import json

    make_scenes(tmp_path)
    doc = json.loads((tmp_path / "labels.geojson").read_text())
    doc["features"] += [{"type": "Feature", "properties": {"id": 9}, "geometry": None}] * 3
    (tmp_path / "labels.geojson").write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING):
        train, val = load_scenes(data_cfg(format="scenes", root=str(tmp_path)))
    messages = [r.getMessage() for r in caplog.records if "no geometry" in r.getMessage()]
    assert len(messages) == 2  # read once per split folder (train/, val/)
    assert all("3 of 5 feature(s) have no geometry and were dropped" in m for m in messages)
    assert len(train[0].labels.geometries) == 2


# ------------------------------------------------------------------------------------ pairing
NAMING_STYLES = {  # style: (image names, mask names, same folder)
    "same stem, .tiff <-> .tif": (["a.tiff", "b.tiff"], ["a.tif", "b.tif"], False),
    "X.tif <-> X.mask.tif": (["a.tif", "b.tif"], ["a.mask.tif", "b.mask.tif"], False),
    "DeepGlobe _sat/_mask, one folder": (["1_sat.jpg", "2_sat.jpg"], ["1_mask.png", "2_mask.png"], True),
    "img_/mask_ prefixes": (["img_7.tif", "img_8.tif"], ["mask_7.tif", "mask_8.tif"], False),
}


def _write_style(root, images, masks, same_folder):
    from PIL import Image

    image_dir, mask_dir = root / "images", root / ("images" if same_folder else "masks")
    for folder in (image_dir, mask_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for k, (image, mask) in enumerate(zip(images, masks)):
        pixels = np.full((32, 32, 3), 40 + k, np.uint8)
        label = np.zeros((32, 32), np.uint8)
        label[4 + k:10 + k, 4:12] = 1
        for folder, name, array in ((image_dir, image, pixels), (mask_dir, mask, label)):
            if name.endswith((".tif", ".tiff")):
                write_geotiff(folder / name, np.moveaxis(array, -1, 0) if array.ndim == 3 else array)
            else:
                Image.fromarray(array).save(folder / name)
    return image_dir, mask_dir


@pytest.mark.parametrize("style", sorted(NAMING_STYLES))
def test_pairing_detects_the_common_naming_styles(tmp_path, style, caplog):
    from tfseg.data.pairing import pair_files

    images, masks, same = NAMING_STYLES[style]
    image_dir, mask_dir = _write_style(tmp_path, images, masks, same)
    with caplog.at_level(logging.INFO, logger="tfseg.data.pairing"):
        result = pair_files(image_dir, mask_dir)
    assert [(i.name, m.name) for i, m in result.pairs] == list(zip(images, masks)), result.rule
    assert result.detected and any("detected naming" in r.getMessage() and result.rule in r.getMessage()
                                   for r in caplog.records)
    # the format loader pairs them the same way (and reads the labels of the right files)
    options = {"masks_dir": "images"} if same else {}
    scenes = all_scenes(data_cfg(format="mask_folder", root=str(tmp_path), options=options, val_fraction=0.0))
    assert len(scenes) == 2
    first = scenes[Path(images[0]).stem]
    assert full_label(first)[4:10, 4:12].all() and full_label(first).sum() == 48


def test_pairing_patterns_and_unpaired_files_listed_with_counts(tmp_path, caplog):
    from tfseg.data.pairing import PairingError, pair_files

    image_dir, _ = _write_style(tmp_path, ["1_sat.jpg", "2_sat.jpg", "3_sat.jpg"],
                                ["1_mask.png", "2_mask.png", "9_mask.png"], True)
    (image_dir / "notes.png").write_bytes((image_dir / "1_mask.png").read_bytes())
    with pytest.raises(PairingError, match=r"no mask for 1 of 3 image\(s\) .*paired by '\{id\}_sat.jpg' <-> "
                                           r"'\{id\}_mask.png'\): .*3_sat.jpg"):
        pair_files(image_dir, image_dir, "{id}_sat.jpg", "{id}_mask.png")
    with caplog.at_level(logging.WARNING):
        result = pair_files(image_dir, image_dir, "{id}_sat.jpg", "{id}_mask.png", strict=False)
    assert [(i.name, m.name) for i, m in result.pairs] == [("1_sat.jpg", "1_mask.png"), ("2_sat.jpg", "2_mask.png")]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "1 of 3 mask(s)" in text and "9_mask.png" in text  # masks without an image
    assert "1 file(s)" in text and "notes.png" in text  # matches neither pattern
    with pytest.raises(PairingError, match=r"image_pattern: expected a file name pattern with exactly one '\{id\}'"):
        pair_files(image_dir, image_dir, "sat.jpg", "{id}_mask.png")
    # the format options reach the same module
    cfg = data_cfg(format="mask_folder", root=str(tmp_path), val_fraction=0.0, options={
        "masks_dir": "images", "image_pattern": "{id}_sat.jpg", "mask_pattern": "{id}_mask.png"})
    with pytest.raises(PairingError, match="3_sat.jpg"):
        all_scenes(cfg)
    (image_dir / "3_sat.jpg").unlink()
    assert sorted(all_scenes(cfg)) == ["1_sat", "2_sat"]


# ---------------------------------------------------------------------- mask values, vector labels
def _mask_pair(root, stem, mask, nodata=None, split=""):
    folder = Path(root) / split if split else Path(root)
    write_geotiff(folder / "images" / f"{stem}.tif", np.ones((3,) + mask.shape, np.uint8))
    write_geotiff(folder / "masks" / f"{stem}.tif", mask, nodata=nodata)


@pytest.mark.parametrize(("task", "classes"), [("binary", ["a"]), ("multiclass", ["a", "b", "c"])])
def test_float_mask_nan_nodata_is_ignored(tmp_path, task, classes):
    """NaN in a float mask (its declared nodata) is ignored, binary and multiclass; a fractional
    value is an error naming the file, never truncated to a class."""
    from tfseg.data.labels import apply_lookup, class_mask_lookup

    mask = np.zeros((16, 16), np.float32)
    mask[4:8, 4:8] = 1
    mask[0, :] = np.nan
    _mask_pair(tmp_path, "t", mask, nodata=float("nan"))
    cfg = data_cfg(format="mask_folder", root=str(tmp_path), classes=classes, task=task, val_fraction=0.0)
    (scene,) = load_scenes(cfg)[0]
    label = full_label(scene)
    assert (label[0] == 255).all() and (label[4:8, 4:8] == 1).all() and (label[1:4] == 0).all()
    assert (apply_lookup(mask, class_mask_lookup({0.0, 1.0, float("nan")}, 3))[0] == 255).all()
    mask[9, 9] = 0.5
    _mask_pair(tmp_path, "t", mask)  # no nodata declared: NaN is still ignored, 0.5 is no class
    with pytest.raises(LabelError, match=r"masks/t.tif.*0.5"):
        load_scenes(cfg)


def test_binary_mask_encoding_is_decided_once_for_the_dataset(tmp_path, caplog):
    """What 255 means in a binary mask is one decision for all the dataset's masks: a tile of a
    {0,1} + 255-ignore dataset holding only {0,255} keeps 255 as ignore; {0,255} masks declaring
    nodata 255 keep their objects; files holding only 1 beside files holding only 255 are
    ambiguous (an error naming them) until data.options.object_value says which."""
    objects = np.zeros((16, 16), np.uint8)
    objects[4:8, 4:8] = 1
    ignored = objects.copy()
    ignored[0] = 255
    background = np.zeros((16, 16), np.uint8)
    background[:3] = 255  # a background-only tile with an ignore strip
    _mask_pair(tmp_path / "a", "objects", ignored, split="train")
    _mask_pair(tmp_path / "a", "empty", background, split="val")
    train, val = load_scenes(data_cfg(format="mask_folder", root=str(tmp_path / "a")))
    assert (full_label(val[0])[:3] == 255).all() and (full_label(val[0])[3:] == 0).all()
    assert (full_label(train[0])[0] == 255).all() and (full_label(train[0])[4:8, 4:8] == 1).all()
    # {0,255} masks with nodata 255: 255 is the object (a warning says so)
    _mask_pair(tmp_path / "b", "x", objects * 255, nodata=255)
    _mask_pair(tmp_path / "b", "y", objects * 255, nodata=255)
    with caplog.at_level(logging.WARNING):
        train, _ = load_scenes(data_cfg(format="mask_folder", root=str(tmp_path / "b"), val_fraction=0.0))
    assert all((full_label(s)[4:8, 4:8] == 1).all() and full_label(s).sum() == 16 for s in train)
    assert "2 binary mask(s) declare nodata 255" in caplog.text
    # ambiguous: x holds {0,1}, y only {0,255}
    _mask_pair(tmp_path / "c", "x", objects)
    _mask_pair(tmp_path / "c", "y", background)
    cfg = data_cfg(format="mask_folder", root=str(tmp_path / "c"), val_fraction=0.0)
    with pytest.raises(LabelError, match=r"hold 1 and not 255 \(e.g. .*x.tif\) and 1 hold 255 and not 1 "
                                         r"\(e.g. .*y.tif\).*data.options.object_value"):
        load_scenes(cfg)
    labels = {s.name: full_label(s) for s in load_scenes(dataclasses.replace(cfg, options={"object_value": 1}))[0]}
    assert (labels["y"][:3] == 255).all() and (labels["x"][4:8, 4:8] == 1).all()
    with pytest.raises(LabelError, match=r"x.tif: holds 1, but these binary masks hold objects as 255"):
        load_scenes(dataclasses.replace(cfg, options={"object_value": 255}))
    with pytest.raises(MaskFolderError, match=r"'data.options.object_value': expected 1 .* or 255 .*got 2"):
        load_scenes(dataclasses.replace(cfg, options={"object_value": 2}))


@pytest.mark.parametrize(("value", "expected"), [
    (7, r"feature 1 has c=7: expected an integer class index in 0..2 \(3 classes"),
    (255, r"feature 1 has c=255: expected an integer class index in 0..2"),
    (1.7, r"feature 1 has c=1.7: expected an integer class index"),
    (300, r"feature 1 has c=300: expected"),
    (None, r"feature 1 has c=None: expected"),
    ("road", r"feature 1 has c='road'.*data.options.class_names: true"),
])
def test_vector_class_attribute_must_be_a_class_index(tmp_path, value, expected):
    import json

    make_scenes(tmp_path)
    doc = json.loads((tmp_path / "labels.geojson").read_text())
    doc["features"][0]["properties"]["c"] = 2.0  # an integral float (GeoPackage reals) is fine
    doc["features"][1]["properties"]["c"] = value
    (tmp_path / "labels.geojson").write_text(json.dumps(doc))
    cfg = data_cfg(format="scenes", root=str(tmp_path), classes=["bg", "a", "b"], label_attribute="c")
    with pytest.raises(LabelError, match=r"label file .*labels.geojson: " + expected):
        load_scenes(cfg)
    doc["features"][1]["properties"]["c"] = "1"
    (tmp_path / "labels.geojson").write_text(json.dumps(doc))
    train, _ = load_scenes(cfg)
    assert train[0].labels.values.tolist() == [2, 1]


def test_geojson_without_crs_member_in_projected_coordinates_names_the_file(tmp_path):
    """RFC 7946 GeoJSON is lon/lat; a file without a crs member holding projected coordinates is
    an error naming the file and the assumed CRS, not a PROJ error mid-reprojection."""
    import json

    from tfseg.data.labels import VectorLabels
    from tfseg.data.raster import open_raster

    info = open_raster(write_geotiff(tmp_path / "a.tif", np.ones((32, 32), np.uint8)))
    ring = [[500002, 3499998], [500010, 3499998], [500010, 3499990], [500002, 3499990], [500002, 3499998]]
    feature = {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}
    (tmp_path / "p.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    with pytest.raises(LabelError, match=r"label file .*p.geojson: no 'crs' member, so .* lon/lat \(OGC:CRS84.*"
                                         r"outside the lon/lat range.*crs member"):
        VectorLabels.from_file(tmp_path / "p.geojson", info)
    # a reprojection that fails (latitude 95 in EPSG:4326) names the file, the feature and both CRSs
    feature["geometry"]["coordinates"] = [[[33, 95], [33.1, 95], [33.1, 94.9], [33, 95]]]
    crs = {"type": "name", "properties": {"name": "EPSG:4326"}}
    (tmp_path / "p.geojson").write_text(json.dumps({"type": "FeatureCollection", "crs": crs, "features": [feature]}))
    with pytest.raises(LabelError, match=r"p.geojson: feature 0 cannot be reprojected from EPSG:4326 to the CRS of "
                                         r"raster .*a.tif"):
        VectorLabels.from_file(tmp_path / "p.geojson", info)


def test_points_and_lines_in_label_files_are_dropped_with_a_warning(tmp_path, caplog):
    import json

    from tfseg.data.labels import VectorLabels
    from tfseg.data.raster import open_raster

    info = open_raster(write_geotiff(tmp_path / "a.tif", np.ones((32, 32), np.uint8)))
    x, y = info.affine * (5.5, 5.5)
    square = [list(info.affine * corner) for corner in ((4, 4), (12, 4), (12, 12), (4, 12), (4, 4))]
    geometries = [{"type": "Point", "coordinates": [x, y]}, {"type": "LineString", "coordinates": [[x, y], [x + 9, y]]},
                  {"type": "GeometryCollection", "geometries": [{"type": "Polygon", "coordinates": [square]},
                                                                {"type": "Point", "coordinates": [x, y]}]}]
    doc = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": info.crs}},
           "features": [{"type": "Feature", "properties": {}, "geometry": g} for g in geometries]}
    (tmp_path / "l.geojson").write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING):
        labels = VectorLabels.from_file(tmp_path / "l.geojson", info)
    assert "l.geojson: dropped 3 geometries other than polygons (1 LineString, 2 Point)" in caplog.text
    assert len(labels.geometries) == 1 and labels.rasterize(Window(0, 0, 32, 32), info).sum() == 64
