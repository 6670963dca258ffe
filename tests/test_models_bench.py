"""Smoke tests of the model benchmarks' CLIs (timings are not checked: benchmarks check speed)."""
import importlib.util
import json

import pytest

from tfseg.bench import __main__ as bench


def test_gpu_bench_fails_cleanly_without_gpu(capsys):
    from tfseg.bench import gpu

    if gpu._gpu_devices(__import__("keras").backend.backend()):
        pytest.skip("a GPU is visible: the no-GPU error path does not apply")
    assert bench.main(["gpu", "--json"]) == 2
    assert "no GPU visible" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_bench_runs_on_cpu_when_allowed(capsys):
    code = bench.main(["gpu", "--allow-cpu", "--json", "--size", "64", "--batch-size", "1", "--steps", "1",
                       "--backbone", "none"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["fp32_img_per_s"] > 0 and result["bf16_img_per_s"] > 0
    assert result["model_gflops_per_img"] > 0 and 0 < result["mfu_fp32"] < 1


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("segmentation_models") is None,
                    reason="segmentation-models not installed (pip install 'tfseg[sm]')")
def test_train_bench_smoke(capsys):
    code = bench.main(["train", "--json", "--size", "64", "--batch-size", "2", "--steps", "1", "--rounds", "1",
                       "--warmup", "0", "--no-xla"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"tfseg_img_per_s", "sm_img_per_s", "ratio", "ratio_xla"}
    assert result["tfseg_img_per_s"] > 0 and result["sm_img_per_s"] > 0 and result["ratio_xla"] is None


def test_train_bench_profiles_a_named_config(capsys):
    from tfseg.models import build_model

    overrides = ["model.name=unetpp", "model.depth=2", "model.filters=4", "data.window_size=64"]
    assert bench.main(["train", "--profile", "--json", "--bands", "4", "--set", *overrides]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = build_model("unetpp", input_shape=(None, None, 4), classes=1, depth=2, filters=4).count_params()
    assert result["model"] == "unetpp" and result["params"] == expected
    assert result["tile"] == 64 and result["bands"] == 4 and result["train_gflops_per_img"] > 0
    assert bench.main(["train", "--profile", "--set", "model.name=deeplabv3plus", "data.window_size=64"]) == 2
    assert "model.options.atrous_rates" in capsys.readouterr().err
