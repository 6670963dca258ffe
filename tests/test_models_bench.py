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


@pytest.mark.parametrize("argument", ["--steps", "--rounds", "--batch-size"])
def test_train_bench_refuses_zero_counts(argument, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["train", argument, "0"])
    assert exit_info.value.code == 2
    assert argument in capsys.readouterr().err  # argparse names it, no ZeroDivisionError / StatisticsError


def test_train_bench_sends_the_segmentation_models_banner_to_stderr(tmp_path, monkeypatch, capsys):
    """segmentation-models prints its framework banner on import: not on bench train's stdout."""
    import sys

    from tfseg.bench import train

    package = tmp_path / "segmentation_models"
    package.mkdir()
    (package / "__init__.py").write_text('print("Segmentation Models: using `tf.keras` framework.")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "segmentation_models", raising=False)
    monkeypatch.setenv("SM_FRAMEWORK", "tf.keras")
    sm = train.import_sm()
    assert sm.__file__ == str(package / "__init__.py")
    out, err = capsys.readouterr()
    assert out == "" and "Segmentation Models: using" in err


def test_gpu_bench_without_jax_is_a_clear_error(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys; sys.modules['jax'] = None\nfrom tfseg.bench import __main__ as b\nsys.exit(b.main(['gpu']))"
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: bench gpu" in done.stderr and "KERAS_BACKEND=tensorflow" in done.stderr
    assert "Traceback" not in done.stderr


def test_infer_bench_warms_up_the_end_to_end_side_untimed(tmp_path, monkeypatch):
    """Round 1 of both sides runs warm: one predict_scenes and one model.predict call before the
    timed rounds (the first predict_scenes also imports and sets up the overlay and writers)."""
    from tfseg import predict as predict_lib
    from tfseg.bench import infer

    calls = []
    real = predict_lib.predict_scenes

    def counted(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_lib, "predict_scenes", counted)
    result = infer.throughput(tmp_path, 256, 128, 16, 4, depth=1, filters=2, rounds=2)
    assert len(calls) == 3  # the warm-up + 2 timed rounds
    assert result["tiles"] > 0 and result["e2e_seconds"] > 0 and result["bare_seconds"] > 0
    with pytest.raises(SystemExit):
        bench.main(["infer", "--rounds", "0"])
