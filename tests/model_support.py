"""Helpers of the model tests: save -> reload -> same outputs (Keras 3 only, no TensorFlow import:
the JAX model tests import it in a process without TensorFlow)."""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

VIA = ("call", "predict", "predict_on_batch")


def outputs(model, inputs, via="call"):
    """``model``'s outputs on ``inputs`` as NumPy: ``model(inputs, training=False)``,
    ``model.predict(inputs)`` or ``model.predict_on_batch(inputs)``."""
    if via == "call":
        return keras.ops.convert_to_numpy(model(inputs, training=False))
    if via == "predict":
        return model.predict(inputs, verbose=0)
    if via == "predict_on_batch":
        return np.asarray(model.predict_on_batch(inputs))
    raise ValueError(f"via={via!r}: one of {VIA}")


def save_and_reload(model, directory, name="model.keras", compile=True):
    """``model`` saved as ``directory/name`` (.keras) and loaded back; the custom layers and
    models are found through their registration (``package="tfseg"``), as the tests have always loaded them."""
    path = Path(directory) / name
    model.save(path)
    return keras.saving.load_model(path, compile=compile)


def assert_roundtrip(model, inputs, tmp_path, atol=0.0, *, expected=None, via="call", config_atol=None,
                     name="model.keras", compile=True):
    """Save ``model`` as .keras under ``tmp_path``, reload it and assert the same outputs on
    ``inputs`` as ``expected`` (default: ``model``'s own, computed ``via`` the same route):
    identical when ``atol`` is 0, else ``np.testing.assert_allclose(..., atol=atol)``.

    ``config_atol``: also rebuild ``model.__class__.from_config(model.get_config())`` with
    ``model``'s weights and compare its outputs (always by a call) at that tolerance.
    Returns the reloaded model for the test's own checks on it.
    """
    if expected is None:
        expected = outputs(model, inputs, via)
    if config_atol is not None:
        clone = model.__class__.from_config(model.get_config())
        clone.set_weights(model.get_weights())
        np.testing.assert_allclose(outputs(clone, inputs), expected, atol=config_atol)
    loaded = save_and_reload(model, tmp_path, name, compile=compile)
    got = outputs(loaded, inputs, via)
    if atol == 0:
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, atol=atol)
    return loaded
