import json

import numpy as np
import rasterio

from tfseg.config import SyntheticConfig
from tfseg.data.formats import synthetic


def small(seed=7):
    return SyntheticConfig(num_train_scenes=1, num_val_scenes=1, scene_size=256, seed=seed)


def test_generated_dataset_is_georeferenced_and_deterministic(tmp_path):
    root = synthetic.ensure_dataset(tmp_path / "a", small())
    other = synthetic.ensure_dataset(tmp_path / "b", small())
    with rasterio.open(root / "train" / "scene_000.tif") as src:
        assert src.crs.to_epsg() == 32636
        assert src.count == 4 and src.dtypes[0] == "uint16" and src.nodata == 0
        assert abs(src.transform.a - 0.5) < 1e-9
        data = src.read()
        assert (data == 0).all(axis=0).any(), "expected a nodata region"
        assert (data > 0).all(axis=0).mean() > 0.5
    with rasterio.open(other / "train" / "scene_000.tif") as src:
        assert np.array_equal(src.read(), data)
    labels = json.loads((root / "buildings.geojson").read_text())
    assert "crs" not in labels  # RFC 7946: EPSG:4326 longitude/latitude
    lon, lat = labels["features"][0]["geometry"]["coordinates"][0][0]
    assert 31 < lon < 35 and -1 < lat < 1  # UTM 36N near Kampala


def test_incomplete_dataset_is_regenerated(tmp_path):
    root = synthetic.ensure_dataset(tmp_path / "d", small())
    scene = root / "val" / "scene_000.tif"
    original = scene.read_bytes()
    scene.write_bytes(original[: len(original) // 2])  # truncated, as after a crash
    assert not synthetic.is_complete(root, small())
    synthetic.ensure_dataset(root, small())
    assert scene.read_bytes() == original
    (root / "manifest.json").unlink()
    assert not synthetic.is_complete(root, small())


def test_config_change_regenerates(tmp_path):
    root = synthetic.ensure_dataset(tmp_path / "d", small(seed=1))
    assert not synthetic.is_complete(root, small(seed=2))
