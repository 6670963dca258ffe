"""The same models, losses and metrics under KERAS_BACKEND=jax, in fresh processes (the backend is
fixed at import), without TensorFlow being imported."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("jax", reason="jax not installed (pip install 'jax[cpu]', in the test extra)")

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import json, sys

    class NoTensorFlow:  # run as on a JAX machine without TensorFlow installed
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                raise ImportError("TensorFlow is not available in this test process")

    sys.meta_path.insert(0, NoTensorFlow())
    import numpy as np
    import keras
    assert keras.backend.backend() == "jax", keras.backend.backend()
    import tfseg.models, tfseg.losses, tfseg.metrics
    from tfseg.models import build_model
    from tfseg.losses import get_loss
    from tfseg.metrics import segmentation_metrics
    sys.path.insert(0, ".")
    from tests._model_cases import BANDS, CASES
    from tests.model_support import outputs, save_and_reload
    results, models = {}, {}
    for case, precision in json.loads(sys.argv[1]):
        keras.mixed_precision.set_global_policy(precision)
        arch, kwargs, (height, width) = CASES[case]
        classes = 3
        model = build_model(arch, input_shape=(height, width, BANDS), classes=classes, **kwargs)
        model.compile(optimizer="adam", loss=get_loss("cce_dice", classes, 255, task="multiclass"),
                      metrics=segmentation_metrics(classes, 255, task="multiclass", class_names=["a", "b", "c"]))
        rng = np.random.default_rng(0)
        images = rng.normal(size=(2, height, width, BANDS)).astype("float32")
        labels = rng.integers(0, classes, (2, height, width, 1)).astype("float32")
        labels[:, :2] = 255
        logs = model.train_on_batch(images, labels, return_dict=True)
        probs = model.predict(images, verbose=0)
        key = f"{case}-{precision}"
        models[key] = (model, images, probs)
        results[key] = {"loss": float(logs["loss"]), "iou_a": float(logs["iou_a"]), "dtype": str(probs.dtype),
                        "shape": list(probs.shape), "multiple": model.get_config()["tfseg_multiple"]}
        keras.mixed_precision.set_global_policy("float32")
    for key, (model, images, probs) in models.items():
        again = outputs(save_and_reload(model, sys.argv[2], f"{key}.keras"), images, via="predict")
        results[key]["reload_max_diff"] = float(np.abs(again - probs).max())
    results["tensorflow_imported"] = any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules)
    print("RESULT " + json.dumps(results))
''')


def _run(cases, tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cases), str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _check(results, cases):
    assert results.pop("tensorflow_imported") is False
    for case, precision in cases:
        got = results[f"{case}-{precision}"]
        assert got["dtype"] == "float32", (case, precision)
        assert got["loss"] == got["loss"] and 0 <= got["iou_a"] <= 1  # finite loss, metric in range
        assert got["reload_max_diff"] == 0.0
        assert got["multiple"] in (4, 8, 16, 32)


def test_plain_unet_all_precisions_under_jax_without_tensorflow(tmp_path):
    cases = [["unet_plain", p] for p in ("float32", "mixed_float16", "mixed_bfloat16")]
    _check(_run(cases, tmp_path), cases)


@pytest.mark.slow
def test_backbone_architectures_under_jax(tmp_path):
    cases = [["unet_resnet34", "mixed_bfloat16"], ["fcn8_vgg16", "mixed_float16"], ["fpn_efficientnetb0", "float32"]]
    _check(_run(cases, tmp_path), cases)


@pytest.mark.slow
def test_unetpp_and_deeplabv3plus_under_jax(tmp_path):
    cases = [["unetpp_plain_ds", "mixed_bfloat16"], ["deeplabv3plus_vgg16", "mixed_float16"]]
    _check(_run(cases, tmp_path), cases)


def test_importing_models_losses_metrics_does_not_import_tensorflow():
    code = ("import sys, tfseg.models, tfseg.losses, tfseg.metrics, tfseg.bench.gpu; "
            "print(sorted(m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.')))")
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
