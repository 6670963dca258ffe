"""MLflow tracking with the real client: a real ``mlflow server`` on 127.0.0.1 (SQLite, free port)
fed by two tiny training runs over HTTP and read back by ``tfseg.compare --mlflow-uri``; the local
SQLite default with a SIGKILL after the first epoch and a resume; backfill from history.csv; an
unreachable server; bad URIs, experiments and run ids."""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.data.fixtures import tiny_synthetic_overrides
from tfseg import compare as compare_lib
from tfseg import config as config_lib
from tfseg import tracking_mlflow
from tfseg.tracking_mlflow import MlflowConfigError, MlflowTracker, check_uri

REPO = Path(__file__).resolve().parents[1]
SERVER_WAIT = 240  # seconds: `mlflow server` imports a lot and migrates its database on a loaded host


def _free_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def _history(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _overrides(root, *extra):
    return tiny_synthetic_overrides(root) + ["tracking.neptune.mode=off", "tracking.mlflow.mode=auto", *extra]


def _env():
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


# ------------------------------------------------------------------------------------------
# The tracking server: started when the module begins (it boots while the other tests run)
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _server_process(request, tmp_path_factory):
    wanted = any("mlflow_server" in getattr(item, "fixturenames", ()) for item in request.session.items
                 if item.module is request.module)
    if not wanted:
        yield None
        return
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log_file = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")],
        stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, env=_env())
    try:
        yield {"proc": proc, "url": f"http://127.0.0.1:{port}", "log": root / "server.log", "started": time.time()}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its worker/job-runner children
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log_file.close()


@pytest.fixture
def mlflow_server(_server_process):
    server = _server_process
    deadline = max(server["started"] + SERVER_WAIT, time.time() + 30)
    while time.time() < deadline:
        assert server["proc"].poll() is None, server["log"].read_text(errors="replace")[-3000:]
        try:
            with urllib.request.urlopen(server["url"] + "/health", timeout=5) as response:
                if response.status == 200:
                    return server["url"]
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server not up after {SERVER_WAIT}s: " + server["log"].read_text(errors="replace")[-3000:])


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------
def test_bad_uris_name_their_key(tmp_path, monkeypatch):
    for bad in ("localhost:5000", "htp://host:5000", "http://:5000", "http://host:port", " http://x", ""):
        with pytest.raises(MlflowConfigError, match="tracking.mlflow.uri"):
            check_uri(bad, "config key 'tracking.mlflow.uri'")
    with pytest.raises(config_lib.ConfigError, match="'tracking.mlflow.uri'.*localhost:5000"):
        config_lib.load(None, ["tracking.mlflow.uri=localhost:5000"])
    with pytest.raises(config_lib.ConfigError, match="'tracking.mlflow.mode'"):
        config_lib.load(None, ["tracking.mlflow.mode=sometimes"])
    assert check_uri("http://127.0.0.1:5000", "k") == "http://127.0.0.1:5000"
    assert check_uri(str(tmp_path / "a.db"), "k") == f"sqlite:///{tmp_path / 'a.db'}"
    assert check_uri("postgresql+psycopg2://u:p@db/mlflow", "k").startswith("postgresql+psycopg2://")
    assert tracking_mlflow.display_uri("https://user:secret@host/x") == "https://user:***@host/x"

    # a bad environment variable or `server` without a URI: refused before anything is written
    from tfseg import train as train_lib

    run_dir = tmp_path / "runs" / "r"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "mlflow:5000")
    cfg = config_lib.load(None, _overrides(tmp_path / "data"))
    with pytest.raises(MlflowConfigError, match="MLFLOW_TRACKING_URI.*mlflow:5000"):
        train_lib.train(cfg, run_dir, verbose=0)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(MlflowConfigError, match="'tracking.mlflow.mode': 'server' needs"):
        train_lib.train(config_lib.load(None, _overrides(tmp_path / "data", "tracking.mlflow.mode=server")),
                        run_dir, verbose=0)
    assert not run_dir.exists()
    # the local default, and `local` ignores the environment
    assert tracking_mlflow.resolve(cfg, run_dir) == (f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "local store")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking_mlflow.resolve(cfg, run_dir)[1] == "MLFLOW_TRACKING_URI"
    local = config_lib.load(None, ["tracking.mlflow.mode=local"])
    assert tracking_mlflow.resolve(local, run_dir)[1] == "local store"


def test_backfill_resume_and_compare_errors(tmp_path, monkeypatch, capsys):
    """A run whose last epoch(s) never reached MLflow (killed between the resume state and the
    MLflow call, or started on a new store) gets them from history.csv, once."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = config_lib.load(None, ["tracking.name=bf", "tracking.mlflow.mode=auto"])
    run_dir = tmp_path / "runs" / "bf"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    (run_dir / "history.csv").write_text("epoch,loss,val_iou,learning_rate\n0,0.9,0.25,0.01\n1,0.7,0.5,0.005\n")
    tracker = MlflowTracker.start(cfg, run_dir, "synthetic", "float32")
    assert tracker is not None
    first_id = tracker.run_id
    tracker.log_epoch(2, {"loss": 0.6, "val_iou": 0.55, "learning_rate": 0.001})
    (run_dir / "history.csv").write_text((run_dir / "history.csv").read_text() + "2,0.6,0.55,0.001\n"
                                         "3,0.5,0.6,0.0005\n")
    again = MlflowTracker.start(cfg, run_dir, "synthetic", "float32")  # resume: same run, epoch 3 backfilled
    assert again.run_id == first_id
    again.stop()
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    for key, values in (("val_iou", [0.25, 0.5, 0.55, 0.6]), ("learning_rate", [0.01, 0.005, 0.001, 0.0005])):
        history = client.get_metric_history(first_id, key)
        assert sorted(m.step for m in history) == [0, 1, 2, 3]
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(values)
    run = client.get_run(first_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "bf"
    assert run.data.params["train.optimizer"] == "adam" and run.data.params["data.classes"] == '["building"]'
    assert run.data.tags["dataset"] == "synthetic" and run.data.tags["precision"] == "float32"
    assert json.loads((run_dir / "mlflow_run.json").read_text())["run_id"] == first_id
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"

    store = str(tmp_path / "runs" / "mlflow.db")
    out = str(tmp_path / "report")
    assert compare_lib.main(["--mlflow-uri", store, "--experiment", "nope", "--output", out]) == 2
    err = capsys.readouterr().err
    assert "--experiment 'nope'" in err and "'bf'" in err and "Default" in err  # lists the existing ones
    assert compare_lib.main(["--mlflow-uri", store, "--run-id", "0123abcd", "--output", out]) == 2
    assert "--run-id 0123abcd: no such run" in capsys.readouterr().err
    assert compare_lib.main(["--mlflow-uri", "host:5000", "--output", out]) == 2
    assert "--mlflow-uri" in capsys.readouterr().err
    assert compare_lib.main(["--mlflow-uri", str(tmp_path / "none.db"), "--output", out]) == 2
    assert "no MLflow database" in capsys.readouterr().err and not (tmp_path / "none.db").exists()
    assert compare_lib.main(["--mlflow-uri", f"http://127.0.0.1:{_free_port()}", "--output", out]) == 2
    assert "unreachable" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare_lib.main(["--experiment", "bf", "--output", out])  # needs --mlflow-uri
    assert "--mlflow-uri" in capsys.readouterr().err
    # the run itself is read back (its history, no final metrics: incomplete)
    assert compare_lib.main(["--mlflow-uri", store, "--experiment", "bf", "--output", out]) == 0
    rows = _csv(tmp_path / "report" / "comparison.csv")
    assert [r["run"] for r in rows] == ["bf"] and rows[0]["best_epoch"] == "4" and float(rows[0]["val_iou"]) == 0.6


# ------------------------------------------------------------------------------------------
# Training runs
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_local_sqlite_default_sigkill_resume_logs_each_epoch_once(tmp_path):
    """Default (mode auto, no MLFLOW_TRACKING_URI): runs/mlflow.db next to the run directory, read
    back with mlflow.search_runs; killed after its first epoch and resumed into the same run."""
    run_dir = tmp_path / "runs" / "resumed"
    state_file = run_dir / "backup" / "state.json"
    command = [sys.executable, "-m", "tfseg.train", "--run-dir", str(run_dir), "--set",
               *_overrides(tmp_path / "data", "data.train_windows_per_epoch=16", "export.enabled=false",
                           "tracking.name=resume-test")]
    log_path = tmp_path / "first.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline, in_second = time.time() + 300, False
        while time.time() < deadline and proc.poll() is None:
            if "Epoch 2/2" in log_path.read_text(errors="replace") and state_file.is_file():
                in_second = True
                break
            time.sleep(0.02)
        assert in_second, log_path.read_text(errors="replace")[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert json.loads(state_file.read_text())["epoch"] == 1
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    done = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "WARNING" not in done.stdout + done.stderr  # clean output: no MLflow/Alembic noise
    assert json.loads((run_dir / "mlflow_run.json").read_text())["run_id"] == run_id

    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        frame = mlflow.search_runs(experiment_names=["resume-test"])
    finally:
        mlflow.set_tracking_uri(previous)
    assert len(frame) == 1 and frame.loc[0, "run_id"] == run_id and frame.loc[0, "status"] == "FINISHED"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    row = frame.iloc[0]
    assert row["params.model.name"] == "unet" and row["params.train.epochs"] == "2"
    assert row["tags.model"] == "unet" and row["tags.backbone"] == "plain" and row["tags.dataset"] == "synthetic"
    assert row["tags.precision"] == metrics["precision_policy"] and row["tags.git_commit"]
    assert row["metrics.final/val/iou"] == pytest.approx(metrics["val"]["iou"])
    assert row["metrics.final/resumes"] == 1 and row["metrics.final/params"] == metrics["params"]
    history = _history(run_dir / "history.csv")
    client = MlflowClient(uri)
    for key in ("loss", "val_iou", "val_loss", "learning_rate"):
        series = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in series) == [0, 1], key  # each epoch once, none twice
        assert [m.value for m in sorted(series, key=lambda m: m.step)] == pytest.approx(
            [float(r[key]) for r in history], rel=1e-6)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"history.csv", "metrics.json", "config.yaml", "figures"} <= artifacts
    assert (tmp_path / "runs" / "mlartifacts").is_dir()  # artifacts beside the store, not in the cwd


@pytest.mark.slow
def test_unreachable_server_one_warning_and_local_record(tmp_path, caplog):
    from tfseg import train as train_lib

    port = _free_port()
    cfg = config_lib.load(None, _overrides(tmp_path / "data", f"tracking.mlflow.uri=http://127.0.0.1:{port}",
                                           "export.enabled=false"))
    run_dir = tmp_path / "runs" / "offline"
    started = time.time()
    with caplog.at_level(logging.WARNING):
        result = train_lib.train(cfg, run_dir, verbose=0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "unreachable" in warnings[0] and str(port) in warnings[0] and str(run_dir) in warnings[0]
    assert time.time() - started < 240
    assert result["epochs"] == 2 and len(_history(run_dir / "history.csv")) == 2
    for name in ("metrics.json", "model.keras", "predictions.png", "config.yaml", "model_card.json"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "mlflow_run.json").exists()


@pytest.mark.slow
def test_two_runs_over_http_then_compare_mlflow_uri(tmp_path, mlflow_server):
    from tfseg import train as train_lib

    import keras

    run_dirs = {}
    for label, extra in (("wide", ["model.filters=8"]), ("narrow", ["export.enabled=false"])):
        cfg = config_lib.load(None, _overrides(tmp_path / "data", f"tracking.mlflow.uri={mlflow_server}",
                                               "tracking.mlflow.experiment=http-study", f"tracking.name={label}",
                                               *extra))
        keras.backend.clear_session()
        run_dirs[label] = tmp_path / "runs" / label
        train_lib.train(cfg, run_dirs[label], verbose=0)
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # everything went to the server
    ids = {label: json.loads((path / "mlflow_run.json").read_text())["run_id"] for label, path in run_dirs.items()}
    client = MlflowClient(mlflow_server)
    wide = {a.path for a in client.list_artifacts(ids["wide"])}
    assert {"history.csv", "metrics.json", "figures", "model_card", "saved_model"} <= wide
    assert "saved_model/saved_model.pb" in {a.path for a in client.list_artifacts(ids["wide"], "saved_model")}
    assert "saved_model" not in {a.path for a in client.list_artifacts(ids["narrow"])}

    out = tmp_path / "from-mlflow"
    assert compare_lib.main(["--mlflow-uri", mlflow_server, "--experiment", "http-study", "--output", str(out)]) == 0
    rows = {r["run"]: r for r in _csv(out / "comparison.csv")}
    assert set(rows) == {"wide", "narrow"}
    for label, path in run_dirs.items():
        metrics = json.loads((path / "metrics.json").read_text())
        row = rows[label]
        assert int(row["params"]) == metrics["params"] and int(row["epochs"]) == metrics["epochs"] == 2
        assert float(row["train_seconds"]) == pytest.approx(metrics["train_seconds"])
        assert int(row["best_epoch"]) == metrics["best_epoch"] and row["precision"] == metrics["precision_policy"]
        assert row["model"] == "unet" and row["backbone"] == "plain" and row["loss"] == "bce_dice"
        best = _history(path / "history.csv")[metrics["best_epoch"] - 1]
        assert float(row["val_iou"]) == pytest.approx(float(best["val_iou"]), rel=1e-9)
    # the same table as from the run directories
    local = tmp_path / "from-dirs"
    assert compare_lib.main([str(run_dirs["wide"]), str(run_dirs["narrow"]), "--output", str(local)]) == 0
    assert _csv(local / "comparison.csv") == _csv(out / "comparison.csv")
    assert (out / "index.html").read_text().count("data:image/png;base64,") == 3
    # mixed: a run directory and an MLflow run id in one report
    mixed = tmp_path / "mixed"
    assert compare_lib.main([str(run_dirs["narrow"]), "--mlflow-uri", mlflow_server, "--run-id", ids["wide"],
                             "--output", str(mixed)]) == 0
    assert sorted(r["run"] for r in _csv(mixed / "comparison.csv")) == ["narrow", "wide"]


# ------------------------------------------------------------------------------------------
# Names MLflow refuses, NaN/inf, a start that failed, run status, passwords, file stores
# ------------------------------------------------------------------------------------------
def _local_run(tmp_path, *overrides, history="epoch,loss,val_iou\n0,0.9,0.25\n"):
    cfg = config_lib.load(None, ["tracking.mlflow.mode=local", "tracking.neptune.mode=off", *overrides])
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    if history:
        (run_dir / "history.csv").write_text(history)
    return cfg, run_dir


def test_tag_and_class_names_mlflow_refuses_are_renamed_nan_kept_inf_dropped(tmp_path, caplog):
    cfg, run_dir = _local_run(tmp_path, "tracking.tags=[v2 (retrained), baseline]")
    with caplog.at_level(logging.WARNING, logger="tfseg.tracking"):
        tracker = MlflowTracker.start(cfg, run_dir, "synthetic", "float32")
        tracker.log_epoch(1, {"loss": float("nan"), "val_iou": 0.5})
        tracker.log_epoch(2, {"loss": float("inf"), "val_iou": 0.6})
        tracker.log_epoch(3, {"loss": float("-inf"), "val_iou": 0.7})
        metrics = {"epochs": 4, "val": {"iou": 0.7, "f1": float("nan"), "precision": None},
                   "class_weights": {"road (paved)": 2.0, "road [paved]": 3.0, "..": 1.0}}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        tracker.log_final(metrics, run_dir)
        tracker.stop()
    assert not tracker._failed
    client = MlflowClient(tracker.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    tags, params, final = run.data.tags, run.data.params, run.data.metrics
    assert tags["v2 _retrained_"] == "true" and tags["baseline"] == "true"
    assert json.loads(tags["tfseg.tags"]) == ["v2 (retrained)", "baseline"]  # as written
    assert tags["tfseg.run_dir"] == str(run_dir.resolve()) and params["model.name"] == "unet"
    weights = {k: v for k, v in final.items() if k.startswith("final/class_weights/")}
    assert sorted(weights.values()) == [1.0, 2.0, 3.0] and "final/class_weights/_" in weights  # none overwritten
    assert final["final/val/iou"] == 0.7 and math.isnan(final["final/val/f1"]) and "final/val/precision" not in final
    loss = sorted((m.step, m.value) for m in client.get_metric_history(tracker.run_id, "loss"))
    assert loss[0] == (0, 0.9) and loss[1][0] == 1 and math.isnan(loss[1][1]) and len(loss) == 2  # ±inf left out
    assert [m.step for m in client.get_metric_history(tracker.run_id, "val_iou")] == [0, 1, 2, 3]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("infinite" in w for w in warnings) == 1 and any("'v2 (retrained)' -> 'v2 _retrained_'" in w
                                                               for w in warnings)
    assert {"history.csv", "metrics.json", "config.yaml"} <= {a.path for a in client.list_artifacts(tracker.run_id)}


def test_a_failed_start_is_completed_on_resume_and_a_failed_tracker_still_ends_its_run(tmp_path, monkeypatch):
    cfg, run_dir = _local_run(tmp_path, "tracking.tags=[exp]")
    real = MlflowTracker._log_start

    def broken(self, *args, **kwargs):
        raise RuntimeError("store hiccup")

    monkeypatch.setattr(MlflowTracker, "_log_start", broken)
    first = MlflowTracker.start(cfg, run_dir, "synthetic", "float32")
    assert first._failed  # tracking switched off for this process...
    first.stop(status="FAILED")
    client = MlflowClient(first.uri)
    assert client.get_run(first.run_id).info.status == "FAILED"  # ...yet the run does not stay RUNNING
    assert "tfseg.run_dir" not in client.get_run(first.run_id).data.tags

    monkeypatch.setattr(MlflowTracker, "_log_start", real)
    again = MlflowTracker.start(cfg, run_dir, "synthetic", "float32")  # resume: same run, start logged now
    assert again.run_id == first.run_id and not again._failed
    assert client.get_run(first.run_id).info.status == "RUNNING"
    again.stop()
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.optimizer"] == "adam"
    assert run.data.tags["tfseg.run_dir"] == str(run_dir.resolve()) and run.data.tags["exp"] == "true"
    assert [m.step for m in client.get_metric_history(first.run_id, "val_iou")] == [0]  # backfilled once
    with pytest.raises(ValueError, match="status"):
        again.stop(status="DONE")


def test_uri_password_is_masked_in_params_and_config_artifact(tmp_path):
    # mode local: the store is runs/mlflow.db, the configured server URI is only a config value here
    cfg, run_dir = _local_run(tmp_path, "tracking.mlflow.uri=https://alice:s3cret@mlflow.example.org/x")
    tracker = MlflowTracker.start(cfg, run_dir, "synthetic", "float32")
    (run_dir / "metrics.json").write_text("{}")
    tracker.log_final({"epochs": 1}, run_dir)
    tracker.stop()
    client = MlflowClient(tracker.uri)
    assert client.get_run(tracker.run_id).data.params["tracking.mlflow.uri"] == "https://alice:***@mlflow.example.org/x"
    logged = Path(client.download_artifacts(tracker.run_id, "config.yaml", str(tmp_path)))
    assert "s3cret" not in logged.read_text() and "alice:***@mlflow.example.org" in logged.read_text()
    assert "s3cret" in (run_dir / "config.yaml").read_text()  # the run directory keeps the config as it is


def test_file_stores_are_refused_when_mlflow_refuses_them(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    for value in (f"file://{tmp_path}/mlruns", str(tmp_path)):
        with pytest.raises(MlflowConfigError, match="tracking.mlflow.uri.*file store.*MLFLOW_ALLOW_FILE_STORE"):
            check_uri(value, "config key 'tracking.mlflow.uri'")
    with pytest.raises(config_lib.ConfigError, match="file store"):
        config_lib.load(None, [f"tracking.mlflow.uri=file://{tmp_path}/mlruns"])
    for value in (str(tmp_path), f"file://{tmp_path}"):
        assert compare_lib.main(["--mlflow-uri", value, "--output", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --mlflow-uri") and "file store" in err and "Traceback" not in err
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow's own opt-in: then tfseg accepts it too
    assert check_uri(f"file://{tmp_path}/mlruns", "k") == f"file://{tmp_path}/mlruns"
