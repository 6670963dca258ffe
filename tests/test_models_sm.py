"""The segmentation-models adapter (optional: skipped with a reason when it is not installed)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import keras

from tests.model_support import assert_roundtrip
from tfseg.models import build_model

HAVE_SM = importlib.util.find_spec("segmentation_models") is not None
needs_sm = pytest.mark.skipif(not HAVE_SM, reason="segmentation-models not installed (pip install 'tfseg[sm]')")


@pytest.fixture(autouse=True)
def _float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


@needs_sm
def test_sm_unet_under_mixed_float16_has_float32_output_and_trains(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = build_model("sm", input_shape=(64, 64, 4), classes=2, backbone="resnet18", activation="auto")
    core = [layer for layer in model.layers if isinstance(layer, keras.Model)][0]
    assert keras.backend.standardize_dtype(core.outputs[0].dtype) == "float16"  # sm's own head follows the policy
    assert keras.backend.standardize_dtype(model.outputs[0].dtype) == "float32"
    assert model.get_config()["tfseg_multiple"] == 32
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    images = np.random.default_rng(0).normal(size=(2, 64, 64, 4)).astype("float32")
    onehot = np.eye(2, dtype="float32")[np.random.default_rng(1).integers(0, 2, (2, 64, 64))]
    assert np.isfinite(model.train_on_batch(images, onehot))
    probs = model.predict(images, verbose=0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-3)
    assert_roundtrip(model, images, tmp_path, expected=probs, via="predict", name="sm.keras")


@needs_sm
@pytest.mark.parametrize("architecture", ["FPN", "Linknet"])
def test_sm_other_architectures(architecture):
    model = build_model("sm", input_shape=(64, 64, 3), classes=1, backbone="resnet18", architecture=architecture)
    assert model.output_shape == (None, 64, 64, 1)


@needs_sm
def test_sm_bad_arguments_name_the_key():
    with pytest.raises(ValueError, match="model.options.architecture"):
        build_model("sm", input_shape=(64, 64, 3), architecture="DeepLab")
    with pytest.raises(ValueError, match="model.backbone"):
        build_model("sm", input_shape=(64, 64, 3), backbone="resnet999")
    with pytest.raises(ValueError, match="multiple of 48"):
        build_model("sm", input_shape=(64, 64, 3), architecture="PSPNet")


def test_missing_package_says_how_to_install():
    code = ("import sys; sys.modules['segmentation_models'] = None\n"
            "from tfseg.models import build_model\n"
            "try:\n    build_model('sm', input_shape=(64, 64, 3))\n"
            "except ImportError as exc:\n    print('ERR', exc)\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert "ERR" in proc.stdout and "pip install" in proc.stdout and "segmentation-models" in proc.stdout
