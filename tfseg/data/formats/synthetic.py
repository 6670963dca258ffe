"""The embedded default dataset: generated, georeferenced satellite-like scenes with buildings.

Each scene is a 4-band (B, G, R, NIR) uint16 GeoTIFF in UTM 36N at 0.5 m with a nodata (0)
region, showing soil, vegetation (bright in NIR), water, roads, bare-sand patches and buildings
of varied size, orientation and roof material, each casting a shadow. Building footprints go to
one GeoJSON file in EPSG:4326, a different CRS from the rasters, so reading them exercises the
real reproject-and-rasterize path. Generation is deterministic from the seed and is cached:

    root/train/scene_000.tif ...  root/val/scene_000.tif ...  root/buildings.geojson
    root/manifest.json   (written last; a missing or mismatching manifest means regenerate)

Example:
    >>> root = ensure_dataset("data/synthetic", SyntheticConfig())
"""
from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from pathlib import Path

import cv2
import numpy as np
import rasterio
import rasterio.errors
import rasterio.features
import shapely
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import transform_geom
from shapely import affinity
from shapely.geometry import LineString, Polygon, box, mapping

from ...fsutil import file_lock, remove_stale_staging, staged_directory

log = logging.getLogger(__name__)

FORMAT_VERSION = 3
BAND_NAMES = ["blue", "green", "red", "nir"]

# surface reflectances (x10000) for B, G, R, NIR
SOIL = (900, 1100, 1350, 2100)
SAND = (1900, 2100, 2300, 2500)
VEGETATION = (450, 800, 550, 3600)
WATER = (700, 750, 500, 180)
ASPHALT = (800, 850, 900, 1000)
ROOFS = [
    (2300, 2400, 2500, 2700),  # concrete / white
    (750, 850, 1750, 1950),  # red clay tiles
    (1500, 1250, 950, 1150),  # blue painted metal
    (1150, 1200, 1250, 1300),  # grey corrugated iron
    (600, 620, 650, 700),  # dark roof
]


OPTIONS: dict = {}  # data.options of this format: none (see data.synthetic)


def _smooth_noise(rng, shape, scale):
    """Low-frequency noise in [0, 1]: random values at 1/scale resolution, upsampled."""
    small = rng.random((max(2, shape[0] // scale), max(2, shape[1] // scale))).astype(np.float32)
    big = cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return np.clip(big, 0, 1)


def _building(rng, size):
    """A rectangle or L-shape (pixel coordinates) with a random orientation and size."""
    width, length = rng.uniform(18, 56), rng.uniform(18, 80)
    cx, cy = rng.uniform(0, size), rng.uniform(0, size)
    poly = box(-length / 2, -width / 2, length / 2, width / 2)
    if rng.random() < 0.3:
        wing = box(length / 2 - width, -width / 2, length / 2, width / 2 + rng.uniform(12, 36))
        poly = poly.union(wing)
    poly = affinity.rotate(poly, rng.uniform(0, 180), origin=(0, 0))
    return affinity.translate(poly, cx, cy)


def _burn(shapes, size, dtype="uint8"):
    shapes = [(g, v) for g, v in shapes if not g.is_empty]
    if not shapes:
        return np.zeros((size, size), dtype)
    with warnings.catch_warnings():  # pixel coordinates: the identity transform is intended
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        return rasterio.features.rasterize(shapes, out_shape=(size, size), fill=0, dtype=dtype)


def render_scene(rng: np.random.Generator, size: int):
    """Draw one scene. Returns (uint16 array CxHxW, list of building polygons in pixel coords)."""
    shape = (size, size)
    base = np.array(SOIL, np.float32) * (0.8 + 0.4 * _smooth_noise(rng, shape, 64))[..., None]
    image = base
    # vegetation: smooth patches plus scattered tree crowns
    veg = _smooth_noise(rng, shape, 96) > 0.62
    trees = [(shapely.Point(rng.uniform(0, size, 2)).buffer(rng.uniform(3, 9)), 1) for _ in range(size // 8)]
    veg |= _burn(trees, size).astype(bool)
    sand = (_smooth_noise(rng, shape, 80) > 0.75) & ~veg
    # water: zero to two blobs
    water_shapes = []
    for _ in range(rng.integers(0, 3)):
        centre = rng.uniform(0, size, 2)
        blob = shapely.Point(centre).buffer(rng.uniform(30, 90))
        water_shapes.append((affinity.scale(blob, rng.uniform(0.5, 1.5), rng.uniform(0.5, 1.5)), 1))
    water = _burn(water_shapes, size).astype(bool)
    # roads: straight strips crossing the scene
    roads = []
    for _ in range(rng.integers(2, 5)):
        a, b = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
        direction = (b - a) / (np.linalg.norm(b - a) + 1e-6)
        line = LineString([a - direction * size * 2, a + direction * size * 2])
        roads.append(line.buffer(rng.uniform(6, 14), cap_style="flat"))
    road = _burn([(r, 1) for r in roads], size).astype(bool)
    # buildings: non-overlapping, away from roads and water
    obstacles = list(roads) + [g for g, _ in water_shapes]
    buildings = []
    target = int(size * size / 9000)
    for _ in range(target * 8):
        if len(buildings) >= target:
            break
        cand = _building(rng, size)
        grown = cand.buffer(6)
        if any(grown.intersects(o) for o in obstacles) or not box(8, 8, size - 8, size - 8).contains(cand):
            continue
        buildings.append(cand)
        obstacles.append(cand.buffer(4))
    # shadows: each footprint shifted away from the sun (towards +x, +y), minus the roofs
    shadow_shapes = []
    for poly in buildings:
        offset = rng.uniform(5, 14)
        shadow_shapes.append((affinity.translate(poly, offset, offset * 0.6), 1))
    shadow = _burn(shadow_shapes, size).astype(bool)
    roof_ids = _burn([(p, i + 1) for i, p in enumerate(buildings)], size, "int32")

    for mask, colour in ((veg, VEGETATION), (sand, SAND), (water, WATER), (road, ASPHALT)):
        image = np.where(mask[..., None], np.array(colour, np.float32) * (0.9 + 0.2 * _smooth_noise(rng, shape, 16))[..., None], image)
    image = np.where((shadow & (roof_ids == 0))[..., None], image * 0.35, image)
    roof_colours = np.array(ROOFS, np.float32)[rng.integers(0, len(ROOFS), len(buildings) + 1)]
    roof_colours *= rng.uniform(0.85, 1.15, (len(buildings) + 1, 1)).astype(np.float32)
    image = np.where((roof_ids > 0)[..., None], roof_colours[roof_ids], image)
    # sensor: slight blur (point spread), noise, quantization; 0 is reserved for nodata
    image = cv2.GaussianBlur(image, (0, 0), 0.7)
    image += rng.normal(0, 40, image.shape).astype(np.float32)
    image = np.clip(image, 1, 65535).astype(np.uint16)
    # nodata: a triangular corner outside the imaged swath
    corner = rng.integers(0, 4)
    leg = rng.uniform(0.15, 0.35) * size
    tri = {
        0: [(0, 0), (leg, 0), (0, leg)],
        1: [(size, 0), (size - leg, 0), (size, leg)],
        2: [(0, size), (leg, size), (0, size - leg)],
        3: [(size, size), (size - leg, size), (size, size - leg)],
    }[int(corner)]
    nodata = _burn([(Polygon(tri), 1)], size).astype(bool)
    image[nodata] = 0
    return np.moveaxis(image, -1, 0), buildings


def _scene_transform(split: str, index: int, cfg) -> rasterio.Affine:
    # scenes sit apart from each other in UTM 36N, around Kampala's latitude
    east = 440000 + index * (cfg.scene_size * cfg.pixel_size + 1000)
    north = 40000 + (0 if split == "train" else 5000) + cfg.scene_size * cfg.pixel_size
    return from_origin(east, north, cfg.pixel_size, cfg.pixel_size)


def generate(root: Path, cfg) -> None:
    """Write the dataset described by ``cfg`` (a SyntheticConfig) into ``root``."""
    crs = CRS.from_epsg(cfg.epsg)
    features = []
    for split, count in (("train", cfg.num_train_scenes), ("val", cfg.num_val_scenes)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            rng = np.random.default_rng([cfg.seed, 0 if split == "train" else 1, index])
            data, buildings = render_scene(rng, cfg.scene_size)
            transform = _scene_transform(split, index, cfg)
            profile = dict(
                driver="GTiff", width=cfg.scene_size, height=cfg.scene_size, count=4,
                dtype="uint16", crs=crs, transform=transform, nodata=0,
                tiled=True, blockxsize=256, blockysize=256, compress="deflate",
            )
            name = f"scene_{index:03d}"
            with rasterio.open(root / split / f"{name}.tif", "w", **profile) as dst:
                dst.write(data)
                dst.descriptions = tuple(BAND_NAMES)
            matrix = [transform.a, transform.b, transform.d, transform.e, transform.xoff, transform.yoff]
            for k, poly in enumerate(buildings):
                world = affinity.affine_transform(poly, matrix)
                geom = transform_geom(crs, "EPSG:4326", mapping(world))
                features.append(
                    {
                        "type": "Feature",
                        "properties": {"id": f"{split}/{name}/{k}", "class": "building"},
                        "geometry": geom,
                    }
                )
    collection = {"type": "FeatureCollection", "features": features}
    (root / "buildings.geojson").write_text(json.dumps(collection))


def _manifest(cfg) -> dict:
    return {"format_version": FORMAT_VERSION, "config": dataclasses.asdict(cfg)}


def _files(root: Path, cfg) -> list[Path]:
    out = [root / "buildings.geojson"]
    for split, count in (("train", cfg.num_train_scenes), ("val", cfg.num_val_scenes)):
        out += [root / split / f"scene_{i:03d}.tif" for i in range(count)]
    return out


def is_complete(root: Path, cfg) -> bool:
    manifest = root / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        recorded = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return False
    sizes = recorded.get("sizes", {})
    if {k: v for k, v in recorded.items() if k != "sizes"} != _manifest(cfg):
        return False
    for path in _files(root, cfg):
        rel = str(path.relative_to(root))
        if not path.is_file() or path.stat().st_size != sizes.get(rel):
            return False
    return True


def ensure_dataset(root, cfg) -> Path:
    """Generate the dataset into ``root`` unless a complete copy for ``cfg`` is already there.

    Generation writes to a temporary sibling directory and renames it into place, so an
    interrupted run never leaves a half-written dataset that looks complete; it runs under a file
    lock (``.<root name>.lock`` beside ``root``), so concurrent first uses generate it once, and
    staging folders of killed generations (``.synthetic-<name>.*.partial``) are removed.
    """
    root = Path(root)
    if is_complete(root, cfg):
        return root
    # one generator at a time: a second process waits, then finds the dataset complete (without
    # the lock it would regenerate and replace the folder under the first one's readers)
    with file_lock(root.parent / f".{root.name}.lock"):
        if is_complete(root, cfg):
            return root
        remove_stale_staging(root, ".synthetic")  # left by a killed generation
        log.info("generating the synthetic default dataset in %s", root)
        _generate_staged(root, cfg)
    return root


def _generate_staged(root: Path, cfg) -> None:
    with staged_directory(root, ".synthetic") as tmp:
        generate(tmp, cfg)
        manifest = _manifest(cfg)
        manifest["sizes"] = {str(p.relative_to(tmp)): p.stat().st_size for p in _files(tmp, cfg)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
