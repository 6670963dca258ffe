"""tfseg.compare (table, curves, HTML, non-run dirs) and pipelines/compare_architectures.py."""
from __future__ import annotations

import csv
import json
import logging

import pytest

from tests.data.fixtures import tiny_synthetic_overrides
from tfseg import compare as compare_lib
from tfseg import config as config_lib


def _write_run(path, model="unet", filters=16, ious=(0.1, 0.3, 0.2), params=1234, seconds=12.5):
    """A run directory as tfseg.train writes it (config.yaml, history.csv, metrics.json)."""
    path.mkdir(parents=True)
    cfg = config_lib.from_dict({"model": {"name": model, "filters": filters}, "train": {"loss": "bce_dice"}})
    (path / "config.yaml").write_text(cfg.to_yaml())
    with open(path / "history.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "loss", "val_iou", "val_f1", "val_loss"])
        for epoch, iou in enumerate(ious):
            writer.writerow([epoch, 1.0 - 0.1 * epoch, iou, 2 * iou / (1 + iou), 1.0 - iou])
    (path / "metrics.json").write_text(json.dumps({
        "epochs": len(ious), "params": params, "train_seconds": seconds, "precision_policy": "float32",
        "val": {"iou": max(ious)}}))
    return path


def test_compare_table_curves_html_and_skips_non_runs(tmp_path, caplog):
    a = _write_run(tmp_path / "a", ious=(0.1, 0.3, 0.2), params=100)
    b = _write_run(tmp_path / "b", ious=(0.2, 0.25, 0.5, 0.45), params=200)
    c = _write_run(tmp_path / "c", ious=(0.05, 0.1), params=300)
    not_run = tmp_path / "notes"
    not_run.mkdir()
    (not_run / "readme.txt").write_text("not a run")
    out = tmp_path / "report"
    with caplog.at_level(logging.WARNING, logger="tfseg.compare"):
        code = compare_lib.main([str(a), str(not_run), str(b), str(tmp_path / "missing"), str(c),
                                 "--output", str(out)])
    assert code == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(not_run) in w and "config.yaml" in w for w in warnings)
    assert any(str(tmp_path / "missing") in w and "does not exist" in w for w in warnings)

    with open(out / "comparison.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["run"] for r in rows] == ["b", "a", "c"]  # sorted by best val_iou, descending
    assert [float(r["val_iou"]) for r in rows] == [0.5, 0.3, 0.1]
    assert [r["best_epoch"] for r in rows] == ["3", "2", "2"]
    assert rows[0]["params"] == "200" and rows[0]["model"] == "unet" and rows[0]["loss"] == "bce_dice"
    assert rows[0]["precision"] == "float32" and rows[0]["epochs"] == "4" and rows[0]["train_seconds"] == "12.5"
    markdown = (out / "comparison.md").read_text()
    assert markdown.index("| b |") < markdown.index("| a |") < markdown.index("| c |")
    for name in ("val_iou", "loss", "val_loss"):
        png = out / f"curves_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "index.html").read_text()
    assert "<table>" in page and page.count("data:image/png;base64,") == 3 and "notes" in page

    # lower-is-better metric: val_loss ascending
    assert compare_lib.main([str(a), str(b), str(c), "--output", str(tmp_path / "r2"), "--metric", "val_loss"]) == 0
    with open(tmp_path / "r2" / "comparison.csv", newline="") as handle:
        assert [r["run"] for r in csv.DictReader(handle)] == ["b", "a", "c"]


def test_compare_bad_arguments(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert compare_lib.main([str(empty), "--output", str(tmp_path / "o")]) == 2
    assert "no runs to compare" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare_lib.main(["--output", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        compare_lib.main([str(empty), "--neptune-project", "ws/p", "--output", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        compare_lib.main(["--neptune-project", "noslash", "--output", str(tmp_path / "o")])
    assert "WORKSPACE/PROJECT" in capsys.readouterr().err
    monkeypatch.delenv("NEPTUNE_API_TOKEN", raising=False)
    assert compare_lib.main(["--neptune-project", "ws/p", "--output", str(tmp_path / "o")]) == 2
    assert "NEPTUNE_API_TOKEN" in capsys.readouterr().err
    # a server that cannot be reached: a bounded, clear error (the client alone retries ~1 min)
    import base64
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    token = base64.b64encode(json.dumps({"api_address": f"http://127.0.0.1:{port}", "api_key": "x"}).encode())
    monkeypatch.setenv("NEPTUNE_API_TOKEN", token.decode())
    assert compare_lib.main(["--neptune-project", "ws/p", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unreachable" in err and str(port) in err


def test_comparison_model_lists_include_unetpp_and_deeplabv3plus_and_validate():
    from pathlib import Path

    from pipelines import compare_architectures as pipeline

    repo = Path(__file__).resolve().parents[1]
    kampala = pipeline.load_models(repo / "configs" / "compare_kampala_models.yaml")
    for models, config, quick in ((kampala, repo / "configs" / "compare_kampala.yaml", False),
                                  (pipeline.DEFAULT_MODELS, None, False), (pipeline.DEFAULT_MODELS, None, True)):
        names = [cfg.model.name for _, cfg in pipeline.plan(models, config, quick=quick)]
        assert {"unetpp", "deeplabv3plus", "unet", "fpn", "fcn8"} <= set(names)


@pytest.mark.slow
def test_compare_architectures_pipeline_with_unet_variants(tmp_path, monkeypatch):
    from pipelines import compare_architectures as pipeline

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    fetched = []  # what the report was built from: the real fetch, recorded

    def fetch_and_record(*args, **kwargs):
        runs, skipped = real_fetch(*args, **kwargs)
        fetched.append(((args, kwargs), [r["run"] for r in runs]))
        return runs, skipped

    real_fetch = compare_lib.fetch_mlflow_runs
    monkeypatch.setattr(compare_lib, "fetch_mlflow_runs", fetch_and_record)

    models_file = tmp_path / "models.yaml"
    models_file.write_text(
        "- label: unet-narrow\n  overrides: [model.filters=4]\n"
        "- label: unet-wide\n  overrides: [model.filters=8]\n")
    shared = tiny_synthetic_overrides(tmp_path / "data") + [
        "export.enabled=false", "tracking.neptune.mode=off", "train.epochs=2", "tracking.mlflow.mode=auto"]
    out = tmp_path / "study"
    code = pipeline.main(["--models", str(models_file), "--output", str(out), "--set", *shared])
    assert code == 0
    # both runs logged to the local MLflow store of the study, and the report read from it
    assert (out / "runs" / "mlflow.db").is_file()
    assert len(fetched) == 1 and sorted(fetched[0][1]) == ["unet-narrow", "unet-wide"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("study")
    assert sorted(r.info.run_name for r in client.search_runs([experiment.experiment_id])) == [
        "unet-narrow", "unet-wide"]
    with open(out / "report" / "comparison.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["run"] for r in rows) == ["unet-narrow", "unet-wide"]
    assert int(rows[0]["params"]) != int(rows[1]["params"])
    for row in rows:
        metrics = json.loads((out / "runs" / row["run"] / "metrics.json").read_text())
        assert int(row["params"]) == metrics["params"] and int(row["epochs"]) == 2
    ious = [float(r["val_iou"]) for r in rows]
    assert ious == sorted(ious, reverse=True)
    assert (out / "report" / "index.html").is_file()
    # parameters and training GFLOP/image of each trained model (bench train's profiler)
    profiles = {p["label"]: p for p in json.loads((out / "report" / "models.json").read_text())}
    for row in rows:
        assert profiles[row["run"]]["params"] == int(row["params"])
        assert profiles[row["run"]]["train_gflops_per_img"] > 0 and profiles[row["run"]]["tile"] == 64
    assert profiles["unet-wide"]["train_gflops_per_img"] > profiles["unet-narrow"]["train_gflops_per_img"]
    assert "| unet-wide |" in (out / "report" / "models.md").read_text()
    # the same budget for both: identical data/train config except the model overrides
    cfgs = [config_lib.load(out / "runs" / name / "config.yaml") for name in ("unet-narrow", "unet-wide")]
    assert set(config_lib.diff(*cfgs)) == {"model.filters", "tracking.name"}
    assert {c.tracking.mlflow.experiment for c in cfgs} == {"study"}
    # a model that does not exist is refused before anything trains
    bad = tmp_path / "bad.yaml"
    bad.write_text("- label: deeplab\n  overrides: [model.name=deeplab]\n")
    assert pipeline.main(["--models", str(bad), "--output", str(tmp_path / "bad"), "--set", *shared]) == 2
    assert not (tmp_path / "bad" / "runs").exists()


# ------------------------------------------------------------------------------------------
# The report in a real browser (headless Chromium from the Debian packages; .ci/run installs it)
# ------------------------------------------------------------------------------------------
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
PROBE = """<script>window.addEventListener("load", () => document.body.setAttribute("data-probe", JSON.stringify({
  headers: [...document.querySelectorAll("thead th")].map(c => c.textContent),
  rows: [...document.querySelectorAll("tbody tr")].map(r => [...r.cells].map(c => c.textContent)),
  images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}))
})));</script>"""


def _browser():
    import os
    import shutil

    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI") == "true":
        pytest.fail(f"no headless browser ({', '.join(BROWSERS)}) in CI: .ci/run installs the Debian chromium package")
    pytest.skip(f"no headless browser found ({', '.join(BROWSERS)}); apt-get install chromium")


def _chromium(browser, *args, timeout=120):
    import subprocess

    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--hide-scrollbars", "--virtual-time-budget=5000", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_report_renders_in_headless_chromium(tmp_path):
    import html as html_lib
    import re

    import numpy as np
    from PIL import Image

    browser = _browser()
    runs = [_write_run(tmp_path / "a", ious=(0.1, 0.3, 0.2)), _write_run(tmp_path / "b", ious=(0.2, 0.25, 0.5)),
            _write_run(tmp_path / "c", ious=(0.05, 0.1))]
    out = tmp_path / "report"
    assert compare_lib.main([*map(str, runs), "--output", str(out)]) == 0
    page = (out / "index.html").read_text()
    probe_page = out / "probe.html"  # the report plus a script that records what the browser laid out
    probe_page.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = _chromium(browser, "--dump-dom", probe_page.as_uri())
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, dom[-2000:]
    probe = json.loads(html_lib.unescape(found.group(1)))
    with open(out / "comparison.csv", newline="") as handle:
        expected = list(csv.DictReader(handle))
    assert probe["headers"] == list(expected[0])
    assert [r[0] for r in probe["rows"]] == ["b", "a", "c"]
    assert [float(r[probe["headers"].index("val_iou")]) for r in probe["rows"]] == [0.5, 0.3, 0.1]
    assert [i["alt"] for i in probe["images"]] == ["curves_val_iou", "curves_loss", "curves_val_loss"]
    for image in probe["images"]:  # decoded by the browser: 7 x 4.2 in at 100 dpi
        assert image["complete"] and (image["w"], image["h"]) == (700, 420), image

    shot = out / "screenshot.png"
    _chromium(browser, "--window-size=1200,1000", f"--screenshot={shot}", (out / "index.html").as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (1000, 1200)

    def share(rgb, tol=12):
        return float((np.abs(pixels - np.array(rgb)).max(axis=-1) <= tol).mean())

    assert share((238, 238, 238), 0) > 0.002  # the table header background (#eee)
    for colour in ((31, 119, 180), (255, 127, 14)):  # the first two curves (matplotlib C0, C1)
        assert share(colour) > 0.0005, colour
    assert 0.5 < share((255, 255, 255), 0) < 0.98  # a page with content, not blank


# ------------------------------------------------------------------------------------------
# Errors as `error:` lines, mode, labels matplotlib would misread, the complete flag
# ------------------------------------------------------------------------------------------
def test_unreadable_runs_bad_mode_and_unknown_metric_are_error_lines(tmp_path, capsys):
    import tfseg

    good = _write_run(tmp_path / "good")
    out = str(tmp_path / "out")
    truncated = _write_run(tmp_path / "truncated")
    (truncated / "metrics.json").write_text('{"epochs": 3, "par')
    bad_yaml = _write_run(tmp_path / "bad_yaml")
    (bad_yaml / "config.yaml").write_text("model: [unet\n")
    for run, name in ((truncated, "metrics.json"), (bad_yaml, "config.yaml")):
        assert compare_lib.main([str(good), str(run), "--output", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(run / name) in err and "Traceback" not in err
    assert compare_lib.main([str(good), "--metric", "val_iuo", "--output", out]) == 2
    err = capsys.readouterr().err
    assert "'val_iuo'" in err and "val_iou" in err  # names the metric and what the runs have
    for mode in ("maximize", "Max"):
        with pytest.raises(compare_lib.CompareError, match=f"mode.*{mode}"):
            compare_lib.compare([good], out, mode=mode)
        with pytest.raises(compare_lib.CompareError, match=f"mode.*{mode}"):
            tfseg.best_epoch(good, "val_iou", mode=mode)
    assert tfseg.best_epoch(good, "val_iou", mode="min")["val_iou"] == 0.1


def test_run_names_are_shown_literally_in_the_legend_and_incomplete_runs_marked(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    names = ["_baseline", "$a_{$ (v2)", "plain"]
    runs = [_write_run(tmp_path / name, ious=(0.1 * (k + 1), 0.2 * (k + 1))) for k, name in enumerate(names)]
    (runs[2] / "metrics.json").unlink()  # a run that never finished
    legends = []
    real_close = plt.close

    def close(fig=None):
        legends.append([t.get_text() for t in fig.axes[0].get_legend().get_texts()])
        real_close(fig)

    monkeypatch.setattr(plt, "close", close)
    rows = compare_lib.compare(runs, tmp_path / "out")
    assert legends and all(sorted(texts) == sorted(names) for texts in legends)
    assert {r["run"]: r["complete"] for r in rows} == {"_baseline": "yes", "$a_{$ (v2)": "yes", "plain": "no"}
    assert "| epochs | complete |" in (tmp_path / "out" / "comparison.md").read_text()
    assert "<th>complete</th>" in (tmp_path / "out" / "index.html").read_text()


def test_mlflow_uri_that_is_no_mlflow_database_is_left_alone(tmp_path, capsys):
    import sqlite3

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE parcels (id INTEGER)")
    connection.close()
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 10)
    for path in (other, empty, garbage):
        before = path.read_bytes()
        assert compare_lib.main(["--mlflow-uri", str(path), "--output", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --mlflow-uri") and f"{path} is not an MLflow database" in err
        assert path.read_bytes() == before  # no MLflow tables written into it
    assert compare_lib.main(["--mlflow-uri", str(tmp_path / "none.db"), "--output", str(tmp_path / "out")]) == 2
    assert "no MLflow database at" in capsys.readouterr().err and not (tmp_path / "none.db").exists()


def test_tracked_runs_use_mlflow_only_when_its_record_is_whole(tmp_path, monkeypatch, caplog):
    """compare_runs((config, run_dir)): an MLflow record lacking epochs or the final metrics, or
    broken (its start never logged), gives way to the run directory, with a warning."""
    import tfseg
    from tfseg.tracking_mlflow import MlflowTracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = config_lib.load(None, ["tracking.mlflow.mode=local", "tracking.neptune.mode=off"])
    whole, partial, broken = (_write_run(tmp_path / "runs" / n, ious=(0.3, 0.5, 0.9)) for n in ("whole", "partial",
                                                                                                 "broken"))
    for run_dir in (whole, partial):
        tracker = MlflowTracker.start(cfg, run_dir, "synthetic", "float32")  # backfills history.csv's epochs
        tracker.log_final(json.loads((run_dir / "metrics.json").read_text()), run_dir)
        tracker.stop()
    with open(partial / "history.csv", "a") as handle:  # an epoch MLflow never got
        handle.write("3,0.6,0.95,0.97,0.05\n")
    monkeypatch.setattr(MlflowTracker, "_log_start", lambda self, *a, **k: 1 / 0)
    MlflowTracker.start(cfg, broken, "synthetic", "float32").stop(status="FAILED")
    with caplog.at_level(logging.INFO, logger="tfseg.compare"):
        rows = tfseg.compare_runs([(cfg, whole), (cfg, partial), (cfg, broken)], tmp_path / "out")
    assert "report: 1 of 3 runs from MLflow" in caplog.text  # the whole record
    assert [(r["run"], r["best_epoch"], r["val_iou"]) for r in rows] == [
        ("partial", 4, 0.95), ("whole", 3, 0.9), ("broken", 3, 0.9)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(str(partial) in w and "val_iou (epochs 3)" in w and "reads the run directory" in w for w in warnings)
    assert any(str(broken) in w and "tfseg.run_dir" in w and "reads the run directory" in w for w in warnings)
    assert not any(str(whole) in w for w in warnings)
