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
import sys
from pathlib import Path
from typing import Optional

import yaml

from .errors import TfsegError
from .fsutil import atomic_write_text

log = logging.getLogger("tfseg.compare")

COLUMNS = ["run", "model", "backbone", "loss", "precision", "epochs", "params", "train_seconds", "best_epoch"]
VAL_METRICS = ["val_iou", "val_f1", "val_precision", "val_recall", "val_accuracy", "val_loss"]
CURVE_METRICS = ["val_iou", "loss", "val_loss"]


class CompareError(TfsegError):
    """Nothing to compare, or an argument is wrong; the message says which."""


# ------------------------------------------------------------------------------------------
# Reading runs
# ------------------------------------------------------------------------------------------
def read_history(path: Path) -> list:
    """``history.csv`` rows as ``{column: float}`` (NaN where a value is not a number)."""
    with open(path, newline="") as handle:
        rows = []
        for row in csv.DictReader(handle):
            parsed = {}
            for key, value in row.items():
                try:
                    parsed[key] = float(value)
                except (TypeError, ValueError):
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


def read_run(path, label: Optional[str] = None) -> dict:
    """One run's summary: key config, metrics.json figures and the per-epoch history."""
    path = Path(path)
    cfg = yaml.safe_load((path / "config.yaml").read_text()) or {}
    metrics = {}
    if (path / "metrics.json").is_file():
        metrics = json.loads((path / "metrics.json").read_text())
    history = read_history(path / "history.csv")
    model, train = cfg.get("model", {}), cfg.get("train", {})
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
    """The history row with the best ``metric`` (``mode`` max or min), NaN rows skipped; None if none."""
    rows = [r for r in history if metric in r and r[metric] == r[metric]]  # drop NaN
    if not rows:
        return None
    return (max if mode == "max" else min)(rows, key=lambda r: r[metric])


def summarize(runs: list, metric: str, mode: str) -> list:
    """Table rows (best epoch on ``metric`` per run), sorted best first; runs lacking the metric last."""
    rows = []
    for run in runs:
        best = best_row(run["history"], metric, mode)
        row = {k: run[k] for k in COLUMNS if k in run}
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
    for name, epochs, values in series:
        ax.plot(epochs, values, marker="o", markersize=3, label=name)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # whole epochs
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
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
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    rows = summarize(runs, metric, mode)
    atomic_write_text(output / "comparison.md", to_markdown(rows, metric, mode))
    atomic_write_text(output / "comparison.csv", to_csv(rows))
    plots = []
    for name in dict.fromkeys([metric] + CURVE_METRICS):
        target = plot_curves(runs, name, output / f"curves_{name}.png")
        if target is not None:
            plots.append(target)
    atomic_write_text(output / "index.html", to_html(rows, metric, mode, plots, list(skipped)))
    return rows


def compare(run_dirs, output, metric: str = "val_iou", mode: Optional[str] = None, mlflow_uri: str = "",
            experiment: str = "", run_ids=()) -> list:
    """Compare local run directories (non-runs are warned about and skipped) and, with
    ``mlflow_uri``, the tfseg runs of an MLflow store or server (see :func:`fetch_mlflow_runs`)."""
    mode = mode or ("min" if metric.endswith("loss") else "max")
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
    """Compare ``(config, run_dir)`` pairs: from their MLflow store or server for the runs their
    config tracked there (one store for the whole study), from the run directories for the others
    (each named in a warning)."""
    from . import tracking_mlflow

    uri, run_ids, local = "", [], []
    for cfg, run_dir in runs:
        run_dir = Path(run_dir)
        resolved = tracking_mlflow.resolve(cfg, run_dir)
        record = run_dir / tracking_mlflow.RUN_FILE
        logged = json.loads(record.read_text()) if record.is_file() else {}
        if resolved and logged.get("tracking_uri") == resolved[0] and uri in ("", resolved[0]):
            uri = resolved[0]
            run_ids.append(logged["run_id"])
        else:
            if resolved:
                log.warning("%s: no MLflow run recorded in %s; the report reads its run directory", run_dir,
                            tracking_mlflow.display_uri(resolved[0]))
            local.append(run_dir)
    if uri:
        log.info("report from MLflow (%s): %d runs", tracking_mlflow.display_uri(uri), len(run_ids))
    return compare(local, output, metric=metric, mode=mode, mlflow_uri=uri, run_ids=run_ids)


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
def fetch_mlflow_runs(uri: str, experiment: str = "", run_ids=()) -> tuple[list, list]:
    """``(runs, skipped)``: tfseg runs of an MLflow store/server in the shape of :func:`read_run`.

    ``experiment`` (a name) restricts to one experiment (default: every experiment); ``run_ids``
    to those runs. Raises :class:`CompareError` for a bad/unreachable URI, an unknown experiment
    (listing the existing ones) or a run id that is not there (naming it).
    """
    from . import tracking_mlflow

    try:
        uri = tracking_mlflow.check_uri(uri, "--mlflow-uri")
    except tracking_mlflow.MlflowConfigError as exc:
        raise CompareError(str(exc)) from None
    shown = tracking_mlflow.display_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise CompareError(f"--mlflow-uri {shown}: no MLflow database at {uri[len('sqlite:///'):]}")
    problem = tracking_mlflow.check_server(uri)
    if problem:
        raise CompareError(f"--mlflow-uri {shown}: {problem}")
    from mlflow.exceptions import MlflowException

    client = tracking_mlflow.client_for(uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    experiment_ids = list(experiments)
    if experiment:
        match = [i for i, name in experiments.items() if name == experiment]
        if not match:
            raise CompareError(f"--experiment {experiment!r}: no such experiment in {shown}; existing "
                               f"experiments: {sorted(experiments.values())}")
        experiment_ids = match
    if run_ids:
        found = []
        for run_id in run_ids:
            try:
                run = client.get_run(run_id)
            except MlflowException:
                raise CompareError(f"--run-id {run_id}: no such run in {shown}") from None
            if experiment and run.info.experiment_id not in experiment_ids:
                raise CompareError(f"--run-id {run_id}: the run is in experiment "
                                   f"{experiments.get(run.info.experiment_id)!r}, not {experiment!r}")
            found.append(run)
    else:
        found = client.search_runs(experiment_ids, order_by=["attributes.start_time ASC"], max_results=50000)
    runs, skipped = [], []
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
    mode = args.mode or ("min" if args.metric.endswith("loss") else "max")
    try:
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
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(to_markdown(rows, args.metric, mode))
    print(f"report: {Path(args.output) / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
