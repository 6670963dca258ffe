"""Shared helpers for the inference/evaluation/scoring tests: tiny run directories and scenes."""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

# GeoTIFFs and GeoJSON: tests.data.fixtures (write_geotiff, UTM, ORIGIN, PIXEL, TRANSFORM)


def save_run(model, run_dir, mean=100.0, std=50.0, bands=3, config: str = "", band_dtype="uint16", nodata=0.0):
    """A run-like directory: ``model`` (taking normalized inputs) behind its preprocessing layer
    (meanstd ``mean``/``std``, raw ``nodata``) as model.keras, and its model_card.json with the
    classes / palette / window size / threshold of the ``config`` YAML text (also written as
    config.yaml when given)."""
    import yaml

    from tfseg.data.raster import Normalization
    from tfseg.model_card import ModelCard
    from tfseg.models import Preprocess, with_preprocessing

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    norm = Normalization("meanstd", [mean] * bands, [std] * bands, [0.0] * bands, [255.0] * bands)
    model = with_preprocessing(model, Preprocess.from_normalization(norm, nodata))
    model.save(run_dir / "model.keras")
    tree = yaml.safe_load(config) or {} if config else {}
    data, train = tree.get("data", {}) or {}, tree.get("train", {}) or {}
    ModelCard.for_model(model, norm, band_dtype, nodata, classes=data.get("classes"), palette=data.get("palette"),
                        task=data.get("task"), threshold=train.get("threshold", 0.5),
                        tile_size=int(data.get("window_size", 256)), ignore_index=int(data.get("ignore_index", 255)),
                        ).save(run_dir / "model_card.json")
    if config:
        (run_dir / "config.yaml").write_text(config)
    return run_dir


def save_legacy_run(model, run_dir, mean=100.0, std=50.0, bands=3, config: str = ""):
    """A run directory as tfseg wrote it before the model card: model.keras taking normalized
    inputs (no preprocessing layer) + normalization.json (+ config.yaml)."""
    from tfseg.data.raster import Normalization

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save(run_dir / "model.keras")
    Normalization("meanstd", [mean] * bands, [std] * bands, [0.0] * bands, [255.0] * bands).save(
        run_dir / "normalization.json")
    if config:
        (run_dir / "config.yaml").write_text(config)
    return run_dir


def oracle_model(bands=3, gain=8.0):
    """1x1 conv 'bright pixels are buildings': sigmoid(gain * mean(normalized bands)).

    Deterministic, translation-equivariant, receptive field 1: predictions are exactly known.
    """
    inputs = keras.Input((None, None, bands))
    conv = keras.layers.Conv2D(1, 1, activation="sigmoid")
    outputs = conv(inputs)
    model = keras.Model(inputs, outputs)
    conv.set_weights([np.full((1, 1, bands, 1), gain / bands, np.float32), np.zeros(1, np.float32)])
    return model


def conv_model(bands=3, seed=0):
    """Random conv-only model (two 3x3 convs: receptive field 5 px, no pooling)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, bands))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(x)
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def building_scene(height=300, width=400, boxes=((20, 30, 80, 90), (150, 200, 230, 260), (240, 10, 290, 70)),
                   bands=3, low=40, high=220, seed=0):
    """uint16 scene (bands, H, W): dark noisy background, bright boxes (row0, col0, row1, col1)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(low - 20, low + 20, (bands, height, width)).astype(np.uint16)
    mask = np.zeros((height, width), np.uint8)
    for r0, c0, r1, c1 in boxes:
        r1, c1 = min(r1, height), min(c1, width)
        if r1 <= r0 or c1 <= c0:
            continue
        image[:, r0:r1, c0:c1] = rng.integers(high - 20, high + 20, (bands, r1 - r0, c1 - c0))
        mask[r0:r1, c0:c1] = 1
    return image, mask


def keras_predictor(model, mean=100.0, std=50.0, bands=3, band_dtype="uint16", nodata=0.0, **card):
    """A KerasPredictor for ``model`` (taking normalized inputs) behind a meanstd preprocessing
    layer, with its model card (``card``: more ModelCard.for_model arguments)."""
    from tfseg.data.raster import Normalization
    from tfseg.inference import KerasPredictor
    from tfseg.model_card import ModelCard
    from tfseg.models import Preprocess, with_preprocessing

    norm = Normalization("meanstd", [mean] * bands, [std] * bands, [0.0] * bands, [255.0] * bands)
    model = with_preprocessing(model, Preprocess.from_normalization(norm, nodata))
    return KerasPredictor(model, ModelCard.for_model(model, norm, band_dtype, nodata, **card))
