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


def test_concurrent_first_use_generates_once_and_removes_stale_partials(tmp_path, monkeypatch):
    import threading

    root = tmp_path / "synthetic"
    stale = tmp_path / ".synthetic-synthetic.k1ll3d.partial"  # a generation killed half way
    (stale / "train").mkdir(parents=True)
    calls, original = [], synthetic.generate

    def counting_generate(folder, cfg):
        calls.append(folder)
        original(folder, cfg)

    monkeypatch.setattr(synthetic, "generate", counting_generate)
    results, errors = [], []

    def use():
        try:
            results.append(synthetic.ensure_dataset(root, small()))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=use) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and results == [root] * 3
    assert len(calls) == 1  # the others waited on the lock, then found it complete
    assert synthetic.is_complete(root, small())
    assert not stale.exists() and not list(tmp_path.glob("*.partial"))
