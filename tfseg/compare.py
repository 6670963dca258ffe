"""Compare training runs: a table (markdown + CSV), overlaid learning curves (PNG), an HTML page.

``python -m tfseg.compare RUN_DIR [RUN_DIR ...] --output DIR [--metric val_iou] [--mode max]``
``python -m tfseg.compare --mlflow-uri URI [--experiment NAME] [--run-id ID ...] [RUN_DIR ...] --output DIR``
``python -m tfseg.compare --neptune-project WORKSPACE/PROJECT [--neptune-runs ID ...] --output DIR``

Each run directory contributes its key config (``config.yaml``: model, backbone, loss,
precision), ``metrics.json`` (params, train time, epochs) and the best epoch of ``history.csv``
on the chosen metric (its validation metrics). Directories that are not runs are named in a
warning and skipped. With ``--mlflow-uri`` (a tracking server ``http://HOST:PORT`` or a store such
as ``runs/mlflow.db``) the runs tfseg logged to MLflow are read the same way (params, ``final/...``
metrics, per-epoch metric histories) and can be mixed with run directories in one report. With
``--neptune-project`` the same table is built from runs fetched from a Neptune server
(``NEPTUNE_API_TOKEN``) that were logged by tfseg.

Writes ``DIR/comparison.md``, ``DIR/comparison.csv``, ``DIR/curves_<metric>.png`` (one per
plotted metric) and ``DIR/index.html``.

Example:
    >>> rows = compare(["runs/fcn8", "runs/unet", "runs/fpn"], "reports/cmp", metric="val_iou")
    >>> rows[0]["run"]   # the best run on val_iou
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import logging
import math
import sys
from contextlib import closing
from pathlib import Path
from typing import Optional

import yaml

from .errors import TfsegError
from .fsutil import atomic_write_text

log = logging.getLogger("tfseg.compare")

COLUMNS = ["run", "model", "backbone", "loss", "precision", "epochs", "complete", "params", "train_seconds",
           "best_epoch"]
VAL_METRICS = ["val_iou", "val_f1", "val_precision", "val_recall", "val_accuracy", "val_loss"]
CURVE_METRICS = ["val_iou", "loss", "val_loss"]


class CompareError(TfsegError):
    """Nothing to compare, or an argument is wrong; the message says which."""


MODES = ("max", "min")


def check_mode(mode: str) -> str:
    """``mode`` when it is ``max`` or ``min``; else a :class:`CompareError` naming it."""
    if mode not in MODES:
        raise CompareError(f"mode: expected 'max' (higher is better) or 'min' (lower is better), got {mode!r}")
    return mode


def default_mode(metric: str, mode: Optional[str] = None) -> str:
    """``mode`` checked, or its default for ``metric``: ``min`` for losses, else ``max``."""
    return check_mode(mode) if mode is not None else ("min" if metric.endswith("loss") else "max")


# ------------------------------------------------------------------------------------------
# Reading runs
# ------------------------------------------------------------------------------------------
def read_history(path: Path, blanks: bool = True) -> list:
    """``history.csv`` rows as ``{column: float}``: NaN where a cell is not a number, or with
    ``blanks=False`` such cells left out (an empty cell: a column that epoch did not have; a
    ``nan`` cell is NaN either way)."""
    with open(path, newline="") as handle:
        rows = []
        for row in csv.DictReader(handle):
            parsed = {}
            for key, value in row.items():
                try:
                    parsed[key] = float(value)
                except (TypeError, ValueError):
                    if blanks:
                        parsed[key] = float("nan")
            rows.append(parsed)
        return rows


def why_not_a_run(path: Path) -> Optional[str]:
    """``None`` when ``path`` is a readable tfseg run directory, else the reason."""
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is not a directory"
    if not (path / "config.yaml").is_file():
        return "has no config.yaml (not a tfseg run directory)"
    if not (path / "history.csv").is_file():
        return "has no history.csv (the run never completed an epoch)"
    return None


def _read_file(path: Path, parse, what: str):
    """``parse(text)`` of ``path``; a :class:`CompareError` naming the file when it cannot be read or parsed."""
    try:
        value = parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise CompareError(f"{path}: cannot read {what} ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
                           ) from None
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise CompareError(f"{path}: expected {what} (a mapping), got a {type(value).__name__}")
    return value


def read_run(path, label: Optional[str] = None) -> dict:
    """One run's summary: key config, metrics.json figures and the per-epoch history.

    Raises :class:`CompareError` naming the file when config.yaml, metrics.json or history.csv
    cannot be read (truncated, not YAML/JSON, no ``epoch`` column).
    """
    path = Path(path)
    cfg = _read_file(path / "config.yaml", yaml.safe_load, "a YAML config")
    metrics = {}
    if (path / "metrics.json").is_file():
        metrics = _read_file(path / "metrics.json", json.loads, "a JSON object of metrics")
    try:
        history = read_history(path / "history.csv")
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CompareError(f"{path / 'history.csv'}: cannot read the history ({type(exc).__name__}: {exc})") from None
    if any(row.get("epoch", float("nan")) != row.get("epoch", float("nan")) for row in history):
        raise CompareError(f"{path / 'history.csv'}: expected an 'epoch' column with a number in every row")
    model, train = cfg.get("model") or {}, cfg.get("train") or {}
    return {
        "run": label or path.name,
        "path": str(path),
        "model": model.get("name", ""),
        "backbone": model.get("backbone", "") or "plain",
        "loss": train.get("loss", ""),
        "precision": metrics.get("precision_policy") or train.get("precision", ""),
        "epochs": metrics.get("epochs", len(history)),
        "params": metrics.get("params", ""),
        "train_seconds": metrics.get("train_seconds", ""),
        "complete": bool(metrics),
        "history": history,
    }


def best_row(history: list, metric: str, mode: str) -> Optional[dict]:
    """The history row with the best ``metric`` (``mode`` max or min), NaN rows skipped; None if none.

    Raises :class:`CompareError` for a ``mode`` other than ``max``/``min``."""
    check_mode(mode)
    rows = [r for r in history if metric in r and r[metric] == r[metric]]  # drop NaN
    if not rows:
        return None
    return (max if mode == "max" else min)(rows, key=lambda r: r[metric])


def summarize(runs: list, metric: str, mode: str) -> list:
    """Table rows (best epoch on ``metric`` per run), sorted best first; runs lacking the metric last.
    ``complete`` is ``yes`` for a run whose training finished (metrics.json / MLflow ``final/...``)."""
    check_mode(mode)
    rows = []
    for run in runs:
        best = best_row(run["history"], metric, mode)
        row = {k: run[k] for k in COLUMNS if k in run}
        if "complete" in row:
            row["complete"] = "yes" if row["complete"] else "no"
        row["best_epoch"] = int(best["epoch"]) + 1 if best and "epoch" in best else ""
        for name in dict.fromkeys([metric] + VAL_METRICS):
            row[name] = best.get(name, "") if best else ""
        row["_key"] = best[metric] if best else None
        rows.append(row)
    present = [r for r in rows if r["_key"] is not None]
    missing = [r for r in rows if r["_key"] is None]
    present.sort(key=lambda r: r["_key"], reverse=mode == "max")
    for r in missing:
        log.warning("run %s has no %r in its history; listed last", r["run"], metric)
    out = present + missing
    for r in out:
        r.pop("_key")
    return out


# ------------------------------------------------------------------------------------------
# Writing the report
# ------------------------------------------------------------------------------------------
def _fmt(value, key: str = "") -> str:
    if isinstance(value, float) and key == "train_seconds":
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def to_markdown(rows: list, metric: str, mode: str) -> str:
    headers = list(rows[0].keys())
    lines = [f"Runs sorted by best `{metric}` ({'higher' if mode == 'max' else 'lower'} is better).", "",
             "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[h], h) for h in headers) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0].keys()), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def plot_curves(runs: list, metric: str, target: Path) -> Optional[Path]:
    """Overlay ``metric`` per epoch for every run that has it; ``None`` when none has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    series = [(r["run"], [h["epoch"] + 1 for h in r["history"] if metric in h],
               [h[metric] for h in r["history"] if metric in h]) for r in runs]
    series = [s for s in series if s[1]]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    lines = [ax.plot(epochs, values, marker="o", markersize=3)[0] for _, epochs, values in series]
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # whole epochs
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric, parse_math=False)
    ax.set_title(f"{metric} per epoch", parse_math=False)
    ax.grid(alpha=0.3)
    # run names as they are: not mathtext ("$...$"), and shown even when they start with "_"
    # (a label matplotlib would leave out of the legend), so they are set after the legend is made
    legend = ax.legend(lines, [f"run {k}" for k in range(len(lines))], fontsize=8)
    for text, (name, _, _) in zip(legend.get_texts(), series):
        text.set_text(name)
        text.set_parse_math(False)
    fig.tight_layout()
    fig.savefig(target)
    plt.close(fig)
    return target


def to_html(rows: list, metric: str, mode: str, plots: list, skipped: list) -> str:
    headers = list(rows[0].keys())
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r[h], h))}</td>" for h in headers) + "</tr>"
                   for r in rows)
    images = "".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(p.name)}</figcaption></figure>'
        for p in plots)
    skipped_html = ""
    if skipped:
        items = "".join(f"<li>{html.escape(str(p))}: {html.escape(why)}</li>" for p, why in skipped)
        skipped_html = f"<h2>Skipped</h2><ul>{items}</ul>"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tfseg run comparison</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#eee}}
figure{{display:inline-block;margin:1em}}.scroll{{overflow-x:auto}}</style></head><body>
<h1>tfseg run comparison</h1>
<p>Sorted by best <code>{html.escape(metric)}</code> ({'higher' if mode == 'max' else 'lower'} is better).</p>
<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>
<h2>Learning curves</h2>{images}{skipped_html}
</body></html>
"""


def write_report(runs: list, output, metric: str = "val_iou", mode: str = "max", skipped=()) -> list:
    """Write comparison.md/.csv, curves_*.png and index.html into ``output``; returns the rows."""
    if not runs:
        raise CompareError("no runs to compare (every given directory was skipped)")
    check_mode(mode)
    if not any(metric in row for run in runs for row in run["history"]):
        columns = sorted({k for run in runs for row in run["history"] for k in row} - {"epoch"})
        raise CompareError(f"metric {metric!r}: no run has it in its history; the runs have {columns}")
    output = Path(output)
    rows = summarize(runs, metric, mode)
    try:
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output / "comparison.md", to_markdown(rows, metric, mode))
        atomic_write_text(output / "comparison.csv", to_csv(rows))
        plots = []
        for name in dict.fromkeys([metric] + CURVE_METRICS):
            target = plot_curves(runs, name, output / f"curves_{name}.png")
            if target is not None:
                plots.append(target)
        atomic_write_text(output / "index.html", to_html(rows, metric, mode, plots, list(skipped)))
    except OSError as exc:
        raise CompareError(f"--output {output}: cannot write the report ({type(exc).__name__}: {exc})") from None
    return rows


def compare(run_dirs, output, metric: str = "val_iou", mode: Optional[str] = None, mlflow_uri: str = "",
            experiment: str = "", run_ids=()) -> list:
    """Compare local run directories (non-runs are warned about and skipped) and, with
    ``mlflow_uri``, the tfseg runs of an MLflow store or server (see :func:`fetch_mlflow_runs`)."""
    mode = default_mode(metric, mode)
    runs, skipped, labels = [], [], _labels([Path(p) for p in run_dirs])
    for path, label in zip([Path(p) for p in run_dirs], labels):
        reason = why_not_a_run(path)
        if reason:
            log.warning("skipping %s: %s", path, reason)
            skipped.append((path, reason))
            continue
        runs.append(read_run(path, label))
    if mlflow_uri:
        fetched, skipped_mlflow = fetch_mlflow_runs(mlflow_uri, experiment, run_ids)
        runs += fetched
        skipped += skipped_mlflow
        _unique_labels(runs)
    return write_report(runs, output, metric, mode, skipped)


def compare_tracked(runs, output, metric: str = "val_iou", mode: Optional[str] = None) -> list:
    """Compare ``(config, run_dir)`` pairs: each run from the MLflow store or server its config
    tracked it in when that record is whole (every ``history.csv`` epoch and value, and the final
    metrics when the run directory has ``metrics.json``), else from its run directory, with a
    warning saying why (no MLflow run recorded, the record missing from the store, or incomplete)."""
    from . import tracking_mlflow

    mode = default_mode(metric, mode)
    pairs = [(cfg, Path(run_dir)) for cfg, run_dir in runs]
    labels = _labels([run_dir for _, run_dir in pairs])
    by_uri: dict = {}
    for index, (cfg, run_dir) in enumerate(pairs):
        resolved = tracking_mlflow.resolve(cfg, run_dir)
        record = run_dir / tracking_mlflow.RUN_FILE
        logged = _read_file(record, json.loads, "a JSON MLflow run record") if record.is_file() else {}
        if resolved and logged.get("tracking_uri") == resolved[0] and logged.get("run_id"):
            by_uri.setdefault(resolved[0], []).append((index, str(logged["run_id"])))
        elif resolved:
            log.warning("%s: no MLflow run recorded in %s; the report reads its run directory", run_dir,
                        tracking_mlflow.display_uri(resolved[0]))
    remote: dict = {}  # index -> (run or None, why not)
    for uri, items in by_uri.items():
        shown = tracking_mlflow.display_uri(uri)
        try:
            fetched, _ = fetch_mlflow_runs(uri, run_ids=[run_id for _, run_id in items], missing_ok=True)
        except CompareError as exc:
            for index, run_id in items:
                remote[index] = (None, f"its MLflow store cannot be read ({exc})")
            continue
        found = {run["path"]: run for run in fetched}
        for index, run_id in items:
            run = found.get(f"mlflow:{run_id}")
            remote[index] = (run, "" if run else f"MLflow run {run_id} is not in {shown} or was not logged "
                                                  "completely by tfseg (no tfseg.run_dir tag)")
    chosen, skipped, from_mlflow = [], [], 0
    for index, (cfg, run_dir) in enumerate(pairs):
        run, why = remote.get(index, (None, ""))
        reason = why_not_a_run(run_dir)
        if reason:
            if run is not None:
                log.warning("%s %s; the report reads its MLflow run %s", run_dir, reason, run["path"])
                run["run"] = labels[index]
                chosen.append(run)
                from_mlflow += 1
            else:
                log.warning("skipping %s: %s", run_dir, reason)
                skipped.append((run_dir, reason))
            continue
        local = read_run(run_dir, labels[index])
        if run is not None:
            why = _incomplete(run, local)
        if run is not None and not why:
            run["run"] = labels[index]
            chosen.append(run)
            from_mlflow += 1
            continue
        if why:
            log.warning("%s: %s; the report reads the run directory", run_dir, why)
        chosen.append(local)
    if from_mlflow:
        log.info("report: %d of %d runs from MLflow", from_mlflow, len(chosen))
    return write_report(chosen, output, metric, mode, skipped)


def _incomplete(remote: dict, local: dict) -> str:
    """How the MLflow record ``remote`` falls short of the run directory's ``local`` record ('' when
    it does not): a ``history.csv`` value it lacks (NaN cells aside: a column an epoch did not have)
    or holds with another value, or the final metrics."""
    logged = {int(row["epoch"]): row for row in remote["history"]}
    gaps: dict = {}
    differ: dict = {}
    for row in local["history"]:
        epoch = int(row["epoch"])
        for key, value in row.items():
            if key == "epoch":
                continue
            there = logged.get(epoch, {}).get(key)
            if there is None:
                if value == value:
                    gaps.setdefault(key, []).append(epoch)
            elif not (value != value and there != there) and not math.isclose(value, there, rel_tol=1e-6):
                differ.setdefault(key, []).append(epoch)

    def listed(cells: dict) -> str:
        text = ", ".join(f"{key} (epochs {', '.join(str(e) for e in epochs[:5])}{', ...' if len(epochs) > 5 else ''})"
                         for key, epochs in list(cells.items())[:5])
        return text + (", ..." if len(cells) > 5 else "")

    problems = []
    if gaps:
        problems.append(f"lacks history.csv values: {listed(gaps)}")
    if differ:
        problems.append(f"has other values than history.csv: {listed(differ)}")
    if local["complete"] and not remote["complete"]:
        problems.append("lacks the final metrics (final/...) of metrics.json")
    return f"its MLflow run ({remote['path']}) " + "; ".join(problems) if problems else ""


def _labels(paths: list) -> list:
    """Run names: directory names, with the parent added where names repeat."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


# ------------------------------------------------------------------------------------------
# Neptune
# ------------------------------------------------------------------------------------------
def fetch_neptune_runs(project: str, run_ids=(), tag: str = "") -> list:
    """Runs logged by tfseg on a Neptune server, in the same shape as :func:`read_run`.

    Needs ``NEPTUNE_API_TOKEN`` and network access to the server (not testable offline).
    """
    import neptune

    with neptune.init_project(project=project, mode="read-only") as proj:
        table = proj.fetch_runs_table(id=list(run_ids) or None, tag=tag or None, columns=["sys/id", "sys/name"])
        run_ids = [row.get_attribute_value("sys/id") for row in table.to_rows()]  # no pandas needed
    if not run_ids:
        raise CompareError(f"no runs found in Neptune project {project}" + (f" with tag {tag!r}" if tag else ""))
    runs = []
    for run_id in run_ids:
        with neptune.init_run(project=project, with_id=run_id, mode="read-only") as run:
            structure = run.get_structure()
            history: dict = {}
            epoch_ns = structure.get("training", {}).get("epoch", {})
            for group, prefix in (("train", ""), ("val", "val_")):
                for name in epoch_ns.get(group, {}):
                    values = run[f"training/epoch/{group}/{name}"].fetch_values()
                    for step, value in zip(values["step"], values["value"]):
                        history.setdefault(int(step), {"epoch": float(step)})[prefix + name] = float(value)

            def get(path, default=""):
                try:
                    return run[path].fetch()
                except Exception:  # noqa: BLE001 - a missing field is an empty cell
                    return default

            runs.append({
                "run": f"{get('sys/name', run_id)} ({run_id})", "path": f"neptune:{project}/{run_id}",
                "model": get("parameters/model/name"), "backbone": get("parameters/model/backbone") or "plain",
                "loss": get("parameters/train/loss"), "precision": get("final/precision_policy"),
                "epochs": get("final/epochs", len(history)), "params": get("final/params"),
                "train_seconds": get("final/train_seconds"), "complete": True,
                "history": [history[k] for k in sorted(history)],
            })
    return runs


# ------------------------------------------------------------------------------------------
# MLflow
# ------------------------------------------------------------------------------------------
def fetch_mlflow_runs(uri: str, experiment: str = "", run_ids=(), missing_ok: bool = False) -> tuple[list, list]:
    """``(runs, skipped)``: tfseg runs of an MLflow store/server in the shape of :func:`read_run`.

    ``experiment`` (a name) restricts to one experiment (default: every experiment); ``run_ids``
    to those runs. Raises :class:`CompareError` for a bad/unreachable URI, a SQLite file that is
    missing or not an MLflow database (refused before the client opens it: it would add MLflow's
    tables), an unknown experiment (listing the existing ones), a run id that is not there (naming
    it; with ``missing_ok`` it is listed as skipped instead) and any error of the MLflow client.
    """
    from . import tracking_mlflow

    try:
        uri = tracking_mlflow.check_uri(uri, "--mlflow-uri")
    except tracking_mlflow.MlflowConfigError as exc:
        raise CompareError(str(exc)) from None
    shown = tracking_mlflow.display_uri(uri)
    if uri.startswith("sqlite:///"):
        _check_mlflow_database(Path(uri[len("sqlite:///"):].split("?", 1)[0]), shown)
    problem = tracking_mlflow.check_server(uri)
    if problem:
        raise CompareError(f"--mlflow-uri {shown}: {problem}")
    try:
        return _fetch_mlflow_runs(uri, shown, experiment, run_ids, missing_ok)
    except CompareError:
        raise
    except Exception as exc:  # noqa: BLE001 - client/server/store errors: an error line, not a traceback
        raise CompareError(f"--mlflow-uri {shown}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                           ) from None


def _check_mlflow_database(path: Path, shown: str) -> None:
    """A :class:`CompareError` unless ``path`` is an SQLite file with MLflow's ``alembic_version`` table
    (read-only look: nothing is created or written)."""
    import sqlite3

    if not path.is_file():
        raise CompareError(f"--mlflow-uri {shown}: no MLflow database at {path}")
    try:
        with closing(sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)) as connection:
            found = connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'").fetchone()
    except sqlite3.Error as exc:
        raise CompareError(f"--mlflow-uri {shown}: {path} is not an MLflow database (not SQLite: {exc})") from None
    if not found:
        raise CompareError(f"--mlflow-uri {shown}: {path} is not an MLflow database (it has no alembic_version "
                           "table; left as it is)")


def _fetch_mlflow_runs(uri: str, shown: str, experiment: str, run_ids, missing_ok: bool) -> tuple[list, list]:
    from mlflow.exceptions import MlflowException

    from . import tracking_mlflow

    client = tracking_mlflow.client_for(uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    experiment_ids = list(experiments)
    if experiment:
        match = [i for i, name in experiments.items() if name == experiment]
        if not match:
            raise CompareError(f"--experiment {experiment!r}: no such experiment in {shown}; existing "
                               f"experiments: {sorted(experiments.values())}")
        experiment_ids = match
    runs, skipped = [], []
    if run_ids:
        found = []
        for run_id in run_ids:
            try:
                run = client.get_run(run_id)
            except MlflowException:
                if missing_ok:
                    skipped.append((f"mlflow:{run_id}", f"no such run in {shown}"))
                    continue
                raise CompareError(f"--run-id {run_id}: no such run in {shown}") from None
            if experiment and run.info.experiment_id not in experiment_ids:
                raise CompareError(f"--run-id {run_id}: the run is in experiment "
                                   f"{experiments.get(run.info.experiment_id)!r}, not {experiment!r}")
            found.append(run)
    else:
        found = client.search_runs(experiment_ids, order_by=["attributes.start_time ASC"], max_results=50000)
    for run in found:
        where = f"mlflow:{run.info.run_id}"
        if "tfseg.run_dir" not in run.data.tags:
            log.warning("skipping MLflow run %s (%s): not logged by tfseg", run.info.run_id, run.info.run_name)
            skipped.append((where, "not logged by tfseg (no tfseg.run_dir tag)"))
            continue
        runs.append(_mlflow_run(client, run, where))
    if not runs and not skipped:
        raise CompareError(f"--mlflow-uri {shown}: no runs" + (f" in experiment {experiment!r}" if experiment else ""))
    return runs, skipped


def _mlflow_run(client, run, where: str) -> dict:
    from .tracking_mlflow import FINAL_PREFIX

    history: dict = {}
    for key in run.data.metrics:
        if key.startswith(FINAL_PREFIX):
            continue
        latest: dict = {}
        for m in client.get_metric_history(run.info.run_id, key):
            if m.step not in latest or m.timestamp >= latest[m.step].timestamp:
                latest[m.step] = m
        for step, m in latest.items():
            history.setdefault(step, {"epoch": float(step)})[key] = float(m.value)
    params, tags, final = run.data.params, run.data.tags, run.data.metrics

    def number(key, kind=float):
        value = final.get(FINAL_PREFIX + key)
        return kind(value) if value is not None else ""

    epochs = number("epochs", int)
    return {
        "run": run.info.run_name or run.info.run_id, "path": where,
        "model": params.get("model.name", tags.get("model", "")),
        "backbone": params.get("model.backbone", "") or "plain",
        "loss": params.get("train.loss", ""),
        "precision": tags.get("precision", params.get("train.precision", "")),
        "epochs": epochs if epochs != "" else len(history), "params": number("params", int),
        "train_seconds": number("train_seconds"), "complete": FINAL_PREFIX + "epochs" in final,
        "history": [history[k] for k in sorted(history)],
    }


def _unique_labels(runs: list) -> None:
    """Add the source (path or MLflow run id) to run names that occur more than once."""
    names = [r["run"] for r in runs]
    for run in runs:
        if names.count(run["run"]) > 1:
            run["run"] = f"{run['run']} ({run['path']})"


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tfseg.compare",
        description="Compare tfseg runs: markdown + CSV table sorted by a metric, learning curves, HTML page.",
    )
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run directories to compare")
    parser.add_argument("--output", required=True, help="report directory (created)")
    parser.add_argument("--metric", default="val_iou", help="history.csv column to rank by (default val_iou)")
    parser.add_argument("--mode", choices=["max", "min"], help="max/min is better (default: min for *loss)")
    parser.add_argument("--mlflow-uri", metavar="URI",
                        help="also compare the tfseg runs of this MLflow server or store (http://HOST:PORT, "
                             "runs/mlflow.db, sqlite:///...)")
    parser.add_argument("--experiment", default="", metavar="NAME", help="only this MLflow experiment")
    parser.add_argument("--run-id", nargs="+", action="extend", default=[], metavar="ID", dest="run_ids",
                        help="only these MLflow run ids")
    parser.add_argument("--neptune-project", help="fetch the runs from this Neptune project instead")
    parser.add_argument("--neptune-runs", nargs="+", default=[], metavar="ID", help="Neptune run ids (default: all)")
    parser.add_argument("--neptune-tag", default="", help="only Neptune runs with this tag")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.neptune_project and (args.runs or args.mlflow_uri):
        parser.error("give either RUN_DIR arguments/--mlflow-uri or --neptune-project, not both")
    if (args.experiment or args.run_ids) and not args.mlflow_uri:
        parser.error("--experiment and --run-id select MLflow runs: give --mlflow-uri URI too")
    if not args.neptune_project and not args.runs and not args.mlflow_uri:
        parser.error("give at least one RUN_DIR (or --mlflow-uri URI, or --neptune-project WORKSPACE/PROJECT)")
    if args.neptune_project and "/" not in args.neptune_project:
        parser.error(f"--neptune-project expects WORKSPACE/PROJECT, got {args.neptune_project!r}")
    try:
        mode = default_mode(args.metric, args.mode)
        if args.neptune_project:
            import os

            from .tracking import check_server

            token = os.environ.get("NEPTUNE_API_TOKEN", "")
            if not token:
                raise CompareError("--neptune-project needs NEPTUNE_API_TOKEN (the server's API token)")
            problem = check_server(token)
            if problem:
                raise CompareError(f"--neptune-project {args.neptune_project}: {problem}")
            try:
                runs = fetch_neptune_runs(args.neptune_project, args.neptune_runs, args.neptune_tag)
            except CompareError:
                raise
            except Exception as exc:  # noqa: BLE001 - client/server errors: report, do not trace back
                raise CompareError(f"--neptune-project {args.neptune_project}: {type(exc).__name__}: "
                                   f"{' '.join(str(exc).split())[:300]}") from None
            rows = write_report(runs, args.output, args.metric, mode)
        else:
            rows = compare(args.runs, args.output, args.metric, mode, args.mlflow_uri or "", args.experiment,
                           args.run_ids)
    except TfsegError as exc:  # CompareError and the config/URI errors it wraps
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(to_markdown(rows, args.metric, mode))
    print(f"report: {Path(args.output) / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
