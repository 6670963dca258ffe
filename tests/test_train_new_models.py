"""UNet++ and DeepLabV3+ end to end: a two-step training run through tfseg.train on the tiny
synthetic config, the exported SavedModel reloaded and compared with the Keras model, and a
whole-scene prediction with the run directory."""
import json

import numpy as np
import pytest
import rasterio

from tests.data.fixtures import tiny_synthetic_overrides
from tfseg import predict, train

MODELS = {
    "unetpp": ["model.name=unetpp", "model.options={deep_supervision: true}"],
    "deeplabv3plus": ["model.name=deeplabv3plus", "model.backbone=vgg16", "model.decoder_filters=[8, 8, 4]",
                      "model.options={atrous_rates: [1, 2, 3]}"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_train_export_predict(name, tmp_path):
    import keras
    import tensorflow as tf

    from tfseg.model_card import load_model_card

    run_dir = tmp_path / "run"
    overrides = tiny_synthetic_overrides(tmp_path / "data") + ["train.epochs=1", "train.steps_per_epoch=2",
                                                              *MODELS[name]]
    assert train.main(["--quiet", "--run-dir", str(run_dir), "--set", *overrides]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and 0.0 <= metrics["val"]["iou"] <= 1.0
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    assert model.name.startswith(name) and len(model.outputs) == 1
    # the exported SavedModel gives the Keras model's probabilities (both take raw pixels)
    card = load_model_card(run_dir)
    raw = np.random.default_rng(0).integers(200, 3000, (1, 64, 64, 4)).astype(card.band_dtype)
    expected = np.asarray(model(raw, training=False))
    loaded = tf.saved_model.load(str(run_dir / "export"))
    got = loaded.signatures["serving_default"](images=tf.constant(raw.astype(np.float32)))["probabilities"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # whole-scene prediction from the run directory
    scene = sorted((tmp_path / "data").rglob("*.tif"))[0]
    out = tmp_path / "pred"
    assert predict.main(["--model", str(run_dir), "--input", str(scene), "--output", str(out), "--quiet"]) == 0
    with rasterio.open(next(out.glob("*_prob.tif"))) as prob, rasterio.open(scene) as src:
        assert prob.shape == src.shape and prob.crs == src.crs
        assert np.isfinite(prob.read(1)).mean() > 0.9
