"""The model's preprocessing layer and photometric augmentation: numpy references, no-data rule,
serialization, the JAX backend, zero-spread statistics."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tfseg._tf import tensorflow as tf  # noqa: F401,I001  (quiet import)
import keras

from tfseg.data.raster import Normalization, RasterError, compute_normalization, open_raster
from tfseg.models import PhotometricAugment, Preprocess, build_model

from .data.fixtures import write_geotiff
from .model_support import assert_roundtrip

ROOT = Path(__file__).resolve().parents[1]
MEANSTD = Normalization("meanstd", [100.0, 2000.0, 30.0], [20.0, 500.0, 4.0], [], [], ["r", "g", "b"])
PERCENTILE = Normalization("percentile", [], [], [50.0, 1000.0, 20.0], [150.0, 3000.0, 40.0], ["r", "g", "b"])


def raw_batch(seed=0, dtype=np.uint16, shape=(2, 9, 7, 3)):
    """Raw pixels with a no-data pixel (0 in every band), a pixel 0 in one band only (valid) and,
    as float, a NaN pixel."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 4000, shape).astype(dtype)
    x[0, 1, 2] = 0  # nodata: every band equals it
    x[1, 3, 4, 0] = 0  # one band 0: valid
    return x


def numpy_reference(norm, raw, nodata):
    """What the old host pipeline computed: clip, (x - offset) / scale, nodata/NaN pixels -> 0."""
    x = raw.astype(np.float32)
    invalid = np.isnan(x).any(-1)
    if nodata is not None:
        invalid |= (x == nodata).all(-1)
    out = norm.apply(x)
    out[invalid] = 0.0
    return out


@pytest.mark.parametrize("norm", [MEANSTD, PERCENTILE], ids=["meanstd", "percentile"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_matches_numpy_reference_with_nodata_and_nan(norm, dtype):
    raw = raw_batch(dtype=np.uint16).clip(0, 255 if dtype == np.uint8 else 4000).astype(dtype)
    if dtype == np.float32:
        raw[1, 5, 5, 1] = np.nan  # NaN in one band: the whole pixel is no data
    layer = Preprocess.from_normalization(norm, nodata=0.0)
    out = np.asarray(layer(raw))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, numpy_reference(norm, raw, 0.0), rtol=1e-6, atol=1e-5)
    assert (out[0, 1, 2] == 0).all() and (norm is PERCENTILE or out[1, 3, 4, 0] != 0)
    if dtype == np.float32:
        assert (out[1, 5, 5] == 0).all() and np.isfinite(out).all()
    if norm is PERCENTILE:  # clipped to [low, high] before scaling to [0, 1]
        valid = ~(raw == 0).all(-1)
        assert out[valid].min() >= 0 and out[valid].max() <= 1


def test_nodata_none_zeroes_only_nan_and_valid_mask():
    raw = raw_batch(dtype=np.float32)
    raw[0, 0, 0, 2] = np.nan
    layer = Preprocess.from_normalization(MEANSTD, nodata=None)
    out, valid = (np.asarray(t) for t in layer(raw, return_valid=True))
    np.testing.assert_allclose(out, numpy_reference(MEANSTD, raw, None), rtol=1e-6, atol=1e-5)
    assert out[0, 1, 2].any()  # all-zero pixel is data when there is no nodata value
    assert valid.shape == (2, 9, 7, 1) and valid[0, 0, 0, 0] == 0 and valid.sum() == 2 * 9 * 7 - 1


def test_keras_round_trip_and_config(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model("unet", input_shape=(None, None, 3), classes=1, depth=2, filters=4,
                        preprocessing=Preprocess.from_normalization(PERCENTILE, nodata=0.0),
                        augment=PhotometricAugment(0.2, 0.1, seed=3))
    layer = model.get_layer("preprocess")
    again = Preprocess.from_config(layer.get_config())
    assert again.get_config() == layer.get_config()
    assert again.clip_low == PERCENTILE.low and again.nodata == 0.0
    raw = raw_batch(shape=(2, 8, 12, 3))
    expected = np.asarray(model.predict_on_batch(raw))
    loaded = assert_roundtrip(model, raw, tmp_path, 1e-6, expected=expected, via="predict_on_batch", name="m.keras",
                              compile=False)
    assert [type(x).__name__ for x in loaded.layers[:3]] == ["InputLayer", "Preprocess", "PhotometricAugment"]


def test_photometric_augmentation_only_in_training_seeded_and_keeps_nodata_zero():
    x = np.asarray(Preprocess.from_normalization(MEANSTD, 0.0)(raw_batch()))
    valid = ~(raw_batch() == 0).all(-1, keepdims=True)
    inputs = [x, valid.astype(np.float32)]
    augment = PhotometricAugment(0.5, 0.3, seed=7)
    np.testing.assert_array_equal(np.asarray(augment(inputs, training=False)), x)  # inference: identity
    first = np.asarray(augment(inputs, training=True))
    second = np.asarray(PhotometricAugment(0.5, 0.3, seed=7)(inputs, training=True))
    np.testing.assert_allclose(first, second, atol=1e-6)  # same seed, same draws
    assert not np.allclose(first, x)
    assert (first[0, 1, 2] == 0).all()  # no-data pixels stay 0
    # per sample and band: x * gain + shift with gain in [0.7, 1.3], |shift| <= 0.5
    for sample in range(2):
        for band in range(3):
            keep = valid[sample, ..., 0]
            gain, shift = np.polyfit(x[sample, ..., band][keep], first[sample, ..., band][keep], 1)
            assert 0.7 <= gain <= 1.3 and abs(shift) <= 0.5 + 1e-5


def test_zero_spread_statistics_are_refused_naming_the_band(tmp_path):
    data = np.stack([np.arange(64 * 64).reshape(64, 64) % 97 + 1, np.full((64, 64), 7)]).astype(np.uint16)
    info = open_raster(write_geotiff(tmp_path / "flat.tif", data))
    for method in ("meanstd", "percentile"):
        with pytest.raises(RasterError, match=r"flat.tif.*band 2 \(nir\) = 7"):
            compute_normalization([info], method, band_names=["red", "nir"])
    with pytest.raises(ValueError, match="band 2 has scale 0"):
        Preprocess([1.0, 1.0], [1.0, 0.0])


JAX_SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    import keras
    assert keras.backend.backend() == "jax", keras.backend.backend()
    from tfseg.models import Preprocess
    config, raw = json.loads(sys.argv[1]), np.asarray(json.loads(sys.argv[2]), np.float32)
    out, valid = Preprocess.from_config(config)(raw, return_valid=True)
    print(json.dumps({"out": np.asarray(out).tolist(), "valid": np.asarray(valid).tolist()}))
''')


def test_same_outputs_under_the_jax_backend():
    pytest.importorskip("jax", reason="jax not installed (pip install 'jax[cpu]', in the test extra)")
    layer = Preprocess.from_normalization(PERCENTILE, nodata=0.0)
    raw = raw_batch(dtype=np.float32)
    raw[1, 5, 5, 1] = np.nan
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", JAX_SCRIPT, json.dumps(layer.get_config()),
                           json.dumps(np.where(np.isnan(raw), None, raw).tolist())],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    out, valid = (np.asarray(t) for t in layer(raw, return_valid=True))
    np.testing.assert_allclose(np.asarray(result["out"], np.float32), out, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(result["valid"]), valid)
