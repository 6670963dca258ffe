"""multi_worker strategy: two real worker processes on 127.0.0.1 (TF_CONFIG), one run directory."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data.fixtures import tiny_synthetic_overrides

REPO = Path(__file__).resolve().parents[1]


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_finish_same_steps_chief_writes_run_dir(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    run_dir, root = tmp_path / "run", tmp_path / "data"
    overrides = tiny_synthetic_overrides(root) + [
        "train.strategy=multi_worker", "train.steps_per_epoch=2", "train.epochs=2", "data.batch_size=4",
        "export.enabled=false", "tracking.neptune.mode=off", "train.num_figure_tiles=1",
    ]
    # generate the synthetic data once, so the workers do not race to write it
    from tfseg import config as config_lib
    from tfseg.data.formats import load_scenes

    load_scenes(config_lib.load(None, overrides).data)

    procs = []
    for index in range(2):
        env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        log = open(tmp_path / f"worker{index}.log", "w")
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "tfseg.train", "--quiet", "--run-dir", str(run_dir), "--set", *overrides],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        for proc, log in procs:
            proc.wait(timeout=300)
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
            log.close()
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    for (proc, _), text in zip(procs, logs):
        assert proc.returncode == 0, text[-4000:]
    # both workers ran the same epochs and steps
    finished = [json.loads(line.split("WORKER-RESULT ", 1)[1]) for text in logs
                for line in text.splitlines() if line.startswith("WORKER-RESULT ")]
    assert len(finished) == 2
    assert finished[0]["epochs"] == finished[1]["epochs"] == 2
    assert finished[0]["steps"] == finished[1]["steps"] == 4
    assert sorted(r["chief"] for r in finished) == [False, True]
    # the chief wrote the run directory
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["replicas"] == 2 and metrics["global_batch_size"] == 4
    with open(run_dir / "history.csv", newline="") as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle)] == [0, 1]
    assert (run_dir / "model.keras").is_file() and (run_dir / "config.yaml").is_file()
    # the non-chief left nothing of its own behind (its checkpoints went to a temporary directory)
    assert not list(run_dir.glob("*worker*"))
    # validation scores are those of the summed confusion matrices: the best epoch's logged
    # val_* equal a single-process evaluation of the saved (best) weights on the same grid
    _assert_logged_validation_equals_single_process(run_dir, overrides)


def _assert_logged_validation_equals_single_process(run_dir, overrides):
    import keras

    import tfseg.models  # noqa: F401  (registers the custom layers model.keras uses)
    from tfseg import config as config_lib
    from tfseg.compare import best_row, read_history
    from tfseg.data.formats import load_scenes
    from tfseg.data.pipeline import build_dataset
    from tfseg.losses import get_loss
    from tfseg.metrics import segmentation_metrics

    cfg = config_lib.load(None, overrides)
    _, val_scenes = load_scenes(cfg.data)
    from tfseg.model_card import load_model_card

    card = load_model_card(run_dir)
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    model.compile(loss=get_loss(cfg.train.loss, 1, cfg.data.ignore_index, task="binary"), metrics=segmentation_metrics(1, cfg.data.ignore_index, cfg.train.threshold, "binary",
                                                          cfg.data.classes))
    scores = model.evaluate(build_dataset(val_scenes, cfg.data, training=False, batch_size=4, nodata=card.nodata), verbose=0,
                            return_dict=True)
    best = best_row(read_history(run_dir / "history.csv"), "val_iou", "max")
    differ = {kind: (float(best[f"val_{kind}"]), float(scores[kind])) for kind in
              ("iou", "f1", "precision", "recall", "accuracy", "miou")
              if float(best[f"val_{kind}"]) != pytest.approx(float(scores[kind]), abs=1e-5)}
    # (before SynchronizedBatchNorm each worker's batch-norm moving statistics drifted apart:
    # val_iou 0.03105 logged vs 0.02879 for the saved model)
    assert not differ, f"two-worker logged val_* != single-process evaluation (logged, single): {differ}"
    # the saved model does not carry the distributed-only flag (Keras refuses it outside TensorFlow)
    norms = [layer for layer in model._flatten_layers(include_self=False)
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and not any(layer.synchronized for layer in norms)
