"""Generated fixtures for every data format (small, real CRSs, written with rasterio/PIL).

Each ``make_*`` writes a tiny dataset in its format's layout under ``root`` and returns what a
test needs to check it (expected pixels, class counts...).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from rasterio.transform import from_origin

from .fixtures import TRANSFORM, UTM, pixel_box_to_world, write_geojson, write_geotiff

DUBAI_PALETTE = {
    "building": "#3C1098", "land": "#8429F6", "road": "#6EC1E4",
    "vegetation": "#FEDD3A", "water": "#E2A929", "unlabeled": "#9B9B9B",
}


def _image(rng, bands, size, dtype="uint16", top=3000):
    return rng.integers(1, top, (bands, size, size)).astype(dtype)


def make_spacenet(root, city="Vegas", aoi=2, num_chips=3, size=64):
    """SpaceNet-2 layout with RGB-PanSharpen (3-band) and MUL (8-band, half resolution) chips
    in EPSG:4326 (like SpaceNet-2), GeoJSON footprints in EPSG:4326; the last chip's GeoJSON is
    an empty FeatureCollection. Returns {chip_id: list of pixel boxes on the RGB grid}."""
    root = Path(root) / f"AOI_{aoi}_{city}_Train"
    rng = np.random.default_rng(0)
    pixel = 0.3 / 111320.0  # ~0.3 m in degrees
    boxes = {}
    for k in range(num_chips):
        chip = f"AOI_{aoi}_{city}_img{k + 1}"
        west, north = -115.3 + k * 0.01, 36.2
        rgb_t = from_origin(west, north, pixel, pixel)
        write_geotiff(root / "RGB-PanSharpen" / f"RGB-PanSharpen_{chip}.tif", _image(rng, 3, size),
                      crs="EPSG:4326", transform=rgb_t)
        write_geotiff(root / "MUL" / f"MUL_{chip}.tif", _image(rng, 8, size // 2), crs="EPSG:4326",
                      transform=from_origin(west, north, pixel * 2, pixel * 2))
        chip_boxes = [] if k == num_chips - 1 else [(8, 8, 24, 20), (30, 34, 44, 52), (26, 8, 40, 20)]
        geoms = [pixel_box_to_world(*b, rgb_t) for b in chip_boxes]
        path = root / "geojson" / "buildings" / f"buildings_{chip}.geojson"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_geojson(path, geoms, src_crs="EPSG:4326", dst_crs="EPSG:4326")
        boxes[chip] = chip_boxes
    return boxes


def make_mask_folder(root, num_pairs=4, size=48, scale255=False, suffix=".mask", georeferenced=True):
    """``root/images/X.tif`` + ``root/masks/X<suffix>.tif`` (or PNG when not georeferenced)."""
    root = Path(root)
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    masks = {}
    for k in range(num_pairs):
        stem = f"OAM-{k}-{k + 7}-19"
        image = _image(rng, 3, size, "uint8", 255)
        mask = np.zeros((size, size), np.uint8)
        mask[5 + k : 20 + k, 10:30] = 255 if scale255 else 1
        if georeferenced:
            write_geotiff(root / "images" / f"{stem}.tif", image)
            write_geotiff(root / "masks" / f"{stem}{suffix}.tif", mask)
        else:
            Image.fromarray(np.moveaxis(image, 0, -1)).save(root / "images" / f"{stem}.png")
            Image.fromarray(mask).save(root / "masks" / f"{stem}{suffix}.png")
        masks[stem] = (mask > 0).astype(np.uint8)
    return masks


def colour_mask_array(height=40, width=30):
    """An RGB mask with known class areas (palette order) and 7 black (unknown) pixels."""
    rgb = np.zeros((height, width, 3), np.uint8)
    colours = [tuple(int(h[i : i + 2], 16) for i in (1, 3, 5)) for h in DUBAI_PALETTE.values()]
    rows = np.array_split(np.arange(height), len(colours))
    for colour, r in zip(colours, rows):
        rgb[r] = colour
    rgb[0, :7] = 0  # unknown colour
    expected = {i: len(r) * width for i, r in enumerate(rows)}
    expected[0] -= 7
    return rgb, expected


def make_colour_mask(root, palette_mode_tile=2):
    """Dubai layout: ``root/Tile N/images/image_part_001.jpg`` + ``masks/image_part_001.png``;
    tile ``palette_mode_tile`` stores its mask as a palette ("P") PNG. Returns the expected
    class counts of one mask (same in every tile) and the number of unknown pixels per mask."""
    root = Path(root)
    rgb, expected = colour_mask_array()
    rng = np.random.default_rng(2)
    for tile in (1, 2, 3):
        folder = root / f"Tile {tile}"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 255, rgb.shape).astype(np.uint8)
        Image.fromarray(image).save(folder / "images" / "image_part_001.jpg", quality=95)
        mask = Image.fromarray(rgb)
        if tile == palette_mode_tile:
            mask = mask.quantize(colors=8, method=Image.Quantize.MAXCOVERAGE)
            assert mask.mode == "P"
        mask.save(folder / "masks" / "image_part_001.png")
    return expected, 7


def make_multilabel_folder(root, size=80, classes=3):
    """``root/{train,val}/{images,masks}/t<k>.tif`` (2 train, 1 val) with K-band 0/1 masks: class 1
    a cross through the middle, class 2 a block near the bottom-left corner, class 3 (if any) in no
    mask; class k bright in image band k; the first 4 rows ignored (255 in every band)."""
    root = Path(root)
    rng = np.random.default_rng(5)
    for split, count in (("train", 2), ("val", 1)):
        for k in range(count):
            mask = np.zeros((classes, size, size), np.uint8)
            mid = size // 2
            mask[0, mid - 10 + 4 * k:mid + 6 + 4 * k, :] = 1
            mask[0, :, mid - 6:mid + 4] = 1
            mask[1, size - 20:size - 2, 2 + 6 * k:22 + 6 * k] = 1
            mask[:, 0:4, :] = 255
            image = rng.integers(20, 60, (3, size, size)).astype(np.uint8)
            image[0][mask[0] == 1] += 150
            image[1][mask[1] == 1] += 150
            write_geotiff(root / split / "images" / f"t{k}.tif", image)
            write_geotiff(root / split / "masks" / f"t{k}.tif", mask)


def make_dstl(root, image_id="6120_2_2", size=90):
    """Dstl layout with a three_band (size x size), M (size/3), A (size/9), P (size) image and
    a square of class 1 spanning normalized x in [0.2, 0.4] Xmax, y in [0.1, 0.3] Ymin."""
    root = Path(root)
    rng = np.random.default_rng(3)
    xmax, ymin = 0.009188, -0.009039
    write_geotiff(root / "three_band" / f"{image_id}.tif", _image(rng, 3, size, "uint16", 2000), crs=None,
                  transform=from_origin(0, 0, 1, 1))
    write_geotiff(root / "sixteen_band" / f"{image_id}_M.tif", _image(rng, 8, size // 3), crs=None,
                  transform=from_origin(0, 0, 3, 3))
    side = size // 9  # SWIR: 100 * (b + 1) per band, +-1 in a checkerboard (no constant band)
    checker = (np.add.outer(np.arange(side), np.arange(side)) % 2) * 2 - 1
    a = np.stack([(100 * (b + 1) + checker).astype(np.uint16) for b in range(8)])
    write_geotiff(root / "sixteen_band" / f"{image_id}_A.tif", a, crs=None, transform=from_origin(0, 0, 9, 9))
    write_geotiff(root / "sixteen_band" / f"{image_id}_P.tif", _image(rng, 1, size), crs=None,
                  transform=from_origin(0, 0, 1, 1))
    x0, x1, y0, y1 = 0.2 * xmax, 0.4 * xmax, 0.1 * ymin, 0.3 * ymin
    square = f"MULTIPOLYGON ((({x0} {y0}, {x1} {y0}, {x1} {y1}, {x0} {y1}, {x0} {y0})))"
    with (root / "train_wkt_v4.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageId", "ClassType", "MultipolygonWKT"])
        for k in range(1, 11):
            writer.writerow([image_id, k, square if k == 1 else "MULTIPOLYGON EMPTY"])
    with (root / "grid_sizes.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["", "Xmax", "Ymin"])
        writer.writerow([image_id, xmax, ymin])
    scale_x = size * size / (size + 1) / xmax
    scale_y = size * size / (size + 1) / ymin
    return (x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y)


def make_scenes(root, size=96, labels_crs="EPSG:4326", boxes=((10, 10, 40, 30), (50, 60, 90, 80))):
    """``root/train/a.tif``, ``root/val/b.tif`` (UTM) + ``root/labels.geojson`` in ``labels_crs``."""
    root = Path(root)
    rng = np.random.default_rng(4)
    transform = TRANSFORM
    write_geotiff(root / "train" / "a.tif", _image(rng, 4, size), transform=transform)
    write_geotiff(root / "val" / "b.tif", _image(rng, 4, size), transform=transform)
    geoms = [pixel_box_to_world(*b, transform) for b in boxes]
    write_geojson(root / "labels.geojson", geoms, src_crs=UTM, dst_crs=labels_crs)
    return boxes


def make_mask_folder_with_labels(root, size=48, labels_crs="EPSG:4326", boxes=((8, 10, 20, 30), (20, 10, 34, 30))):
    """``root/images/chip.tif`` (UTM) + ``root/masks/chip.mask.tif`` + ``root/labels/chip.geojson``
    (in ``labels_crs``) with the pixel ``boxes`` as buildings: by default two buildings sharing the
    edge at column 20 (one blob in the mask, two objects in the GeoJSON)."""
    root = Path(root)
    rng = np.random.default_rng(5)
    transform = TRANSFORM
    write_geotiff(root / "images" / "chip.tif", _image(rng, 3, size, "uint8", 255), transform=transform)
    mask = np.zeros((size, size), np.uint8)
    for c0, r0, c1, r1 in boxes:
        mask[r0:r1, c0:c1] = 1
    write_geotiff(root / "masks" / "chip.mask.tif", mask, transform=transform)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    write_geojson(root / "labels" / "chip.geojson", [pixel_box_to_world(*b, transform) for b in boxes],
                  src_crs=UTM, dst_crs=labels_crs)
    return mask
