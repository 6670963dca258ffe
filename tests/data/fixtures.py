"""Small generated fixtures: GeoTIFFs with a real CRS, GeoJSON labels, tiny configs."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform_geom

UTM = "EPSG:32636"  # the fixtures' CRS: UTM zone 36N
ORIGIN = (440000.0, 40512.0)  # upper-left corner in UTM 36N (near Kampala)
PIXEL = 0.5  # metres
TRANSFORM = from_origin(ORIGIN[0], ORIGIN[1], PIXEL, PIXEL)  # write_geotiff's default grid
# the real sample data beside the repository (../shared/data), or where TFSEG_SHARED_DATA points
SHARED_DATA = Path(os.environ.get("TFSEG_SHARED_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")


def write_geotiff(path, array, crs=UTM, transform=None, nodata=None, pixel_size=PIXEL, georeferenced=True,
                  **profile):
    """Write a (bands, H, W) or (H, W) array as a GeoTIFF; returns the path.

    ``transform`` defaults to ``pixel_size`` pixels from ``ORIGIN`` (``crs=None``: that grid
    without a CRS); ``georeferenced=False`` writes neither CRS nor transform (pixel space).
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    count, height, width = array.shape
    profile.update(driver="GTiff", width=width, height=height, count=count, dtype=array.dtype, nodata=nodata)
    if georeferenced:
        profile.update(crs=crs, transform=transform or from_origin(ORIGIN[0], ORIGIN[1], pixel_size, pixel_size))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        if not georeferenced:
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(array)
    return path


def pixel_box_to_world(col0, row0, col1, row1, transform):
    """A pixel-space rectangle as a GeoJSON polygon in the raster's CRS."""
    corners = [(col0, row0), (col1, row0), (col1, row1), (col0, row1), (col0, row0)]
    return {"type": "Polygon", "coordinates": [[tuple(transform @ c) for c in corners]]}


def write_geojson(path, geometries, src_crs=UTM, dst_crs="EPSG:4326", properties=None):
    """Write polygons (GeoJSON dicts in ``src_crs``) to a FeatureCollection in ``dst_crs``."""
    features = []
    for i, geom in enumerate(geometries):
        if dst_crs != src_crs:
            geom = transform_geom(src_crs, dst_crs, geom)
        props = (properties[i] if properties else {"id": i})
        features.append({"type": "Feature", "properties": props, "geometry": geom})
    doc = {"type": "FeatureCollection", "features": features}
    if dst_crs not in ("EPSG:4326", "OGC:CRS84"):
        doc["crs"] = {"type": "name", "properties": {"name": dst_crs}}
    Path(path).write_text(json.dumps(doc))
    return path


def tiny_synthetic_overrides(root) -> list:
    """--set overrides for a fast end-to-end run on a small synthetic dataset under ``root``."""
    return [
        f"data.root={root}",
        "data.synthetic.num_train_scenes=1",
        "data.synthetic.num_val_scenes=1",
        "data.synthetic.scene_size=256",
        "data.window_size=64",
        "data.eval_overlap=0",
        "data.train_windows_per_epoch=8",
        "data.batch_size=2",
        "model.depth=2",
        "model.filters=4",
        "train.epochs=2",
        "train.num_figure_tiles=2",
        "tracking.mlflow.mode=off",  # MLflow's own tests turn it on (a new SQLite store costs seconds)
    ]
