"""Learnable generated datasets in the real SpaceNet-2 and Dstl layouts (for the pipelines and CI).

The layouts are those of ``tests/data/formats.py`` (``make_spacenet``, ``make_dstl``), at a size a
model can learn from: buildings are bright, roughly rectangular roofs on a textured background,
so a trained model's score means something (a model that learned nothing scores ~0).

Example:
    >>> aoi = make_spacenet_aoi("/tmp/sn", num_chips=4, size=160)
    >>> aoi.name
    'AOI_5_Khartoum_Train'
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

DSTL_CLASSES = ["buildings", "structures", "road", "track", "trees", "crops", "waterway", "standing_water",
                "vehicle_large", "vehicle_small"]


def _write(path: Path, array: np.ndarray, transform, crs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    bands, height, width = array.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=bands, dtype=array.dtype.name,
                       crs=crs, transform=transform) as dst:
        dst.write(array)


def _background(rng, bands: int, size: int, base: np.ndarray) -> np.ndarray:
    """Smooth textured ground: low-frequency noise + fine noise, per band around ``base``."""
    coarse = rng.normal(0, 1, (bands, size // 16 + 2, size // 16 + 2))
    rows = np.linspace(0, coarse.shape[1] - 1.001, size)
    cols = np.linspace(0, coarse.shape[2] - 1.001, size)
    r0, c0 = rows.astype(int), cols.astype(int)
    fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
    smooth = (coarse[:, r0][:, :, c0] * (1 - fr) * (1 - fc) + coarse[:, r0 + 1][:, :, c0] * fr * (1 - fc)
              + coarse[:, r0][:, :, c0 + 1] * (1 - fr) * fc + coarse[:, r0 + 1][:, :, c0 + 1] * fr * fc)
    return base[:, None, None] * (1 + 0.12 * smooth + 0.05 * rng.normal(0, 1, (bands, size, size)))


def _boxes(rng, size: int, count: int, low: int, high: int, gap: int = 4) -> list:
    """Non-overlapping axis-aligned boxes (col0, row0, col1, row1) in pixels."""
    boxes, tries = [], 0
    while len(boxes) < count and tries < 500:
        tries += 1
        w, h = rng.integers(low, high + 1, 2)
        c0, r0 = rng.integers(2, size - w - 2), rng.integers(2, size - h - 2)
        box = (int(c0), int(r0), int(c0 + w), int(r0 + h))
        if all(box[2] + gap <= b[0] or b[2] + gap <= box[0] or box[3] + gap <= b[1] or b[3] + gap <= box[1]
               for b in boxes):
            boxes.append(box)
    return boxes


def make_spacenet_aoi(root, city: str = "Khartoum", aoi: int = 5, num_chips: int = 12, size: int = 256,
                      seed: int = 0) -> Path:
    """``root/AOI_<aoi>_<city>_Train`` with ``RGB-PanSharpen`` (3-band uint16, ``size``², 0.3 m),
    ``MUL`` (8-band uint16, ``size/4``², 1.2 m) and ``geojson/buildings`` (EPSG:4326), like the
    SpaceNet-2 download. Buildings: rectangles (8-20 m on 256-px chips) with bright roofs (a few per chip; every
    sixth chip has none and an empty FeatureCollection, as in SpaceNet). Returns the AOI folder."""
    folder = Path(root) / f"AOI_{aoi}_{city}_Train"
    rng = np.random.default_rng(seed)
    pixel = 0.3 / 111320.0  # 0.3 m in degrees (SpaceNet-2 rasters are EPSG:4326)
    rgb_base = np.array([420.0, 480.0, 400.0])
    mul_base = np.array([300, 380, 460, 440, 420, 480, 520, 500], float)
    roof_rgb = np.array([1.9, 1.8, 1.7])
    roof_mul = np.array([1.6, 1.7, 1.8, 1.9, 1.9, 1.7, 1.5, 1.4])
    # 8-20 m buildings (27-66 px at 0.3 m) on 256-px chips; proportionally smaller on smaller chips
    low, high = max(6, round(size * 27 / 256)), max(10, round(size * 66 / 256))
    for k in range(num_chips):
        chip = f"AOI_{aoi}_{city}_img{k + 1}"
        west, north = 32.5 + (k % 6) * size * pixel * 1.1, 15.6 - (k // 6) * size * pixel * 1.1
        transform = from_origin(west, north, pixel, pixel)
        boxes = [] if k % 6 == 5 else _boxes(rng, size, int(rng.integers(3, 7)), low, high)
        inside = np.zeros((size, size), bool)
        for c0, r0, c1, r1 in boxes:
            inside[r0:r1, c0:c1] = True
        rgb = _background(rng, 3, size, rgb_base)
        rgb = np.where(inside, rgb * roof_rgb[:, None, None], rgb)
        # MUL: the same ground at 1/4 resolution (block mean), 8 bands with their own roof response
        mul_full = _background(rng, 8, size, mul_base)
        mul_full = np.where(inside, mul_full * roof_mul[:, None, None], mul_full)
        q = size // 4
        mul = mul_full[:, : q * 4, : q * 4].reshape(8, q, 4, q, 4).mean(axis=(2, 4))
        _write(folder / "RGB-PanSharpen" / f"RGB-PanSharpen_{chip}.tif", np.clip(rgb, 1, 65535).astype(np.uint16),
               transform, "EPSG:4326")
        _write(folder / "MUL" / f"MUL_{chip}.tif", np.clip(mul, 1, 65535).astype(np.uint16),
               from_origin(west, north, pixel * 4, pixel * 4), "EPSG:4326")
        features = []
        for i, (c0, r0, c1, r1) in enumerate(boxes):
            x0, y0 = transform * (c0, r0)
            x1, y1 = transform * (c1, r1)
            ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
            features.append({"type": "Feature", "properties": {"building_id": i},
                             "geometry": {"type": "Polygon", "coordinates": [ring]}})
        path = folder / "geojson" / "buildings" / f"buildings_{chip}.geojson"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return folder


def make_dstl_dataset(root, num_images: int = 6, size: int = 192, seed: int = 0) -> Path:
    """The Dstl Kaggle layout under ``root``: ``three_band/<id>.tif`` (3-band uint16, ``size``²),
    ``sixteen_band/<id>_M.tif`` (8 bands, ``size/3``), ``<id>_A.tif`` (8 SWIR bands, ``size/9``),
    ``<id>_P.tif`` (1 band, ``size``), ``train_wkt_v4.csv`` (normalized-coordinate MULTIPOLYGONs,
    10 classes) and ``grid_sizes.csv``. Each image holds rectangles of several classes with a
    class-specific spectral signature in every product (e.g. trees bright in near infrared,
    water dark in SWIR), so the 20 stacked channels are informative. Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    # per-class multiplicative signature: three_band (3), M (8), A (8), P (1)
    signatures = rng.uniform(0.45, 1.9, (len(DSTL_CLASSES), 20))
    # classes present in the fixture (the rest stay empty, as rare classes are in the real data)
    present = [0, 2, 4, 5, 7]  # buildings, road, trees, crops, standing_water
    base = np.concatenate([[400, 450, 380], np.linspace(300, 520, 8), np.linspace(800, 1100, 8), [450]])
    rows = []
    grid = []
    for n in range(num_images):
        image_id = f"6{n:03d}_{n % 4}_{n % 3}"
        xmax, ymin = 0.009 + 0.0002 * n, -0.009 - 0.0001 * n
        layer = np.full((size, size), -1, int)
        per_class = {k: [] for k in range(len(DSTL_CLASSES))}
        for cls in present:
            for box in _boxes(rng, size, int(rng.integers(1, 4)), size // 10, size // 4, gap=0):
                c0, r0, c1, r1 = box
                if (layer[r0:r1, c0:c1] >= 0).any():
                    continue  # keep the classes disjoint in the fixture
                layer[r0:r1, c0:c1] = cls
                per_class[cls].append(box)
        full = _background(rng, 20, size, base)
        for cls in present:
            full = np.where(layer == cls, full * signatures[cls][:, None, None], full)
        ident = from_origin(0, 0, 1, 1)
        _write(root / "three_band" / f"{image_id}.tif", np.clip(full[:3], 1, None).astype(np.uint16), ident, None)

        def down(bands, factor):
            q = size // factor
            return bands[:, : q * factor, : q * factor].reshape(len(bands), q, factor, q, factor).mean(axis=(2, 4))

        _write(root / "sixteen_band" / f"{image_id}_M.tif", np.clip(down(full[3:11], 3), 1, None).astype(np.uint16),
               from_origin(0, 0, 3, 3), None)
        _write(root / "sixteen_band" / f"{image_id}_A.tif", np.clip(down(full[11:19], 9), 1, None).astype(np.uint16),
               from_origin(0, 0, 9, 9), None)
        _write(root / "sixteen_band" / f"{image_id}_P.tif", np.clip(full[19:20], 1, None).astype(np.uint16), ident,
               None)
        # pixel -> normalized coordinates: the inverse of x' = x / Xmax * W * W / (W + 1)
        sx, sy = xmax * (size + 1) / (size * size), ymin * (size + 1) / (size * size)
        for k in range(len(DSTL_CLASSES)):
            polys = [f"(({c0 * sx} {r0 * sy}, {c1 * sx} {r0 * sy}, {c1 * sx} {r1 * sy}, {c0 * sx} {r1 * sy}, "
                     f"{c0 * sx} {r0 * sy}))" for c0, r0, c1, r1 in per_class[k]]
            rows.append([image_id, k + 1, f"MULTIPOLYGON ({', '.join(polys)})" if polys else "MULTIPOLYGON EMPTY"])
        grid.append([image_id, xmax, ymin])
    with (root / "train_wkt_v4.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageId", "ClassType", "MultipolygonWKT"])
        writer.writerows(rows)
    with (root / "grid_sizes.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["", "Xmax", "Ymin"])
        writer.writerows(grid)
    return root
