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


def test_unavailable_sm_is_not_listed_and_the_study_refuses_it_up_front(tmp_path):
    """Without segmentation-models, tfseg.available_models() leaves sm out, and the architecture
    study names the unavailable model before anything trains (an error line, exit 2)."""
    code = ("import sys; sys.modules['segmentation_models'] = None\n"
            "import tfseg\n"
            "print('MODELS', tfseg.available_models())\n"
            "from pipelines import compare_architectures as ca\n"
            "rc = ca.main(['--output', sys.argv[1], '--models', sys.argv[2]])\n"
            "print('RC', rc)\n")
    models = tmp_path / "models.yaml"
    models.write_text("- {label: plain, overrides: [model.name=unet]}\n- {label: smunet, overrides: [model.name=sm]}\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "study"), str(models)], cwd=root,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(root)})
    assert "MODELS ['deeplabv3plus', 'fcn8', 'fpn', 'unet', 'unetpp']" in proc.stdout, proc.stdout + proc.stderr
    assert "RC 2" in proc.stdout
    assert "error: model 'smunet': model.name='sm'" in proc.stderr and "not available" in proc.stderr
    assert not (tmp_path / "study" / "runs").exists()  # nothing trained


@needs_sm
def test_sm_lists_when_importable():
    import tfseg

    assert "sm" in tfseg.available_models()


@needs_sm
@pytest.mark.parametrize("kwargs,match", [
    (dict(architecure="FPN"), r"model.options: unknown option\(s\) \['architecure'\] for model.name='sm'"),
    (dict(architecture="PSPNet"), r"model.options.architecture='PSPNet'.*fixed input size.*data.window_size"),
    (dict(architecture="PSPNet", decoder_filters=[8]), r"model.options.architecture='PSPNet'"),
    (dict(architecture="Unet", decoder_filters=[8, 8]), r"model.decoder_filters: sm Unet takes 5 entries"),
    (dict(architecture="FPN", decoder_filters=[8, 8]), r"model.decoder_filters: sm FPN takes 1 entry"),
    (dict(architecture="Linknet", decoder_filters=[8] * 5), r"model.decoder_filters: sm Linknet takes 1 entry"),
])
def test_sm_refuses_options_it_would_drop(kwargs, match):
    from tfseg.errors import TfsegError

    with pytest.raises(TfsegError, match=match):
        build_model("sm", input_shape=(None, None, 3), classes=1, backbone="resnet18", **kwargs)


@needs_sm
def test_sm_decoder_filters_reach_segmentation_models_and_pspnet_builds_at_a_fixed_size():
    from tfseg.errors import TfsegError

    def params(architecture, **kwargs):
        keras.backend.clear_session()
        return build_model("sm", input_shape=(None, None, 3), backbone="resnet18", architecture=architecture,
                           **kwargs).count_params()

    assert params("FPN", decoder_filters=[32]) < params("FPN")
    assert params("Linknet", decoder_filters=[4]) < params("Linknet")
    model = build_model("sm", input_shape=(96, 96, 3), backbone="resnet18", architecture="PSPNet")
    assert model.output_shape == (None, 96, 96, 1) and model.get_config()["tfseg_multiple"] == 48
    with pytest.raises(TfsegError, match="model.decoder_filters: segmentation-models' PSPNet has no decoder widths"):
        build_model("sm", input_shape=(96, 96, 3), backbone="resnet18", architecture="PSPNet", decoder_filters=[8])


@needs_sm
def test_sm_imagenet_only_translates_a_failed_download(monkeypatch):
    """A failed download says how to provide the file offline; any other error is raised as it is."""
    from tfseg.models import sm_adapter

    sm = sm_adapter.import_segmentation_models()

    def offline(**kwargs):
        raise Exception("URL fetch failure on https://example.invalid/w.h5: None -- [Errno -3] no network")

    def broken(**kwargs):
        raise TypeError("an unrelated bug")

    monkeypatch.setattr(sm, "Unet", offline)
    with pytest.raises(FileNotFoundError, match="put the file there when offline"):
        build_model("sm", input_shape=(None, None, 3), backbone="resnet18", encoder_weights="imagenet")
    monkeypatch.setattr(sm, "Unet", broken)
    with pytest.raises(TypeError, match="an unrelated bug"):
        build_model("sm", input_shape=(None, None, 3), backbone="resnet18", encoder_weights="imagenet")
