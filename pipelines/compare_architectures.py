"""The architecture study: FCN-8 vs UNet vs EfficientNet-FPN vs UNet++ vs DeepLabV3+ on the same data and budget.

``python -m pipelines.compare_architectures [--output DIR] [--quick] [--data-root DIR]
[--config YAML] [--set KEY=VALUE ...] [--models MODELS.yaml]``

Every model is trained with the same data, epochs, steps, batch, optimizer and seed (the base
config plus ``--set``), each into ``DIR/runs/<label>`` and logged to MLflow (experiment
``--experiment``, default the name of DIR; store: ``tracking.mlflow``, by default the local SQLite
database ``DIR/runs/mlflow.db``); then ``tfseg.compare`` writes the report to ``DIR/report``
(comparison.md/.csv, curves_*.png, index.html) from the MLflow runs. A run MLflow did not record
(MLflow off, or its server unreachable) is read from its run directory instead, with a warning.
Each trained model's parameters and training GFLOP per image at the tile size
(``tfseg.bench.train.profile_model``) go to ``DIR/report/models.md`` / ``models.json``.
Starting the pipeline again resumes unfinished runs and skips finished ones. See the same runs
interactively with ``mlflow ui --backend-store-uri sqlite:///DIR/runs/mlflow.db``.

The models are data: a YAML/JSON list of ``{label, overrides}`` (``--models``), default
:data:`DEFAULT_MODELS`. Default data: the embedded synthetic dataset with a small budget;
``--quick`` shrinks it to a few minutes on a laptop CPU; ``--data-root``/``--config`` point it at
real data (e.g. Kampala buildings with ``data.format=scenes``).

Example:
    python -m pipelines.compare_architectures --quick --output reports/architectures
"""
from __future__ import annotations

import argparse
import difflib
import json
import logging
import sys
from pathlib import Path

import yaml

if __package__ in (None, ""):  # run as a file: the pipelines are modules of the checkout
    sys.exit("run it from the repository root as: python -m pipelines.compare_architectures [ARGS]")

REPO = Path(__file__).resolve().parents[1]

import tfseg  # noqa: E402
from pipelines._common import override  # noqa: E402

tfseg.quiet_tensorflow()  # before anything imports TensorFlow / Keras

log = logging.getLogger("tfseg.pipelines.compare_architectures")

# encoder_weights stays "" (random init) so that the models get the same treatment offline; the
# atrous rates fit the 128-256 px tiles (rates must stay below tile / 16)
DEFAULT_MODELS = [
    {"label": "fcn8", "overrides": ["model.name=fcn8"]},
    {"label": "unet", "overrides": ["model.name=unet"]},
    {"label": "efficientnet-fpn", "overrides": ["model.name=fpn", "model.backbone=efficientnetb0"]},
    {"label": "unetpp", "overrides": ["model.name=unetpp"]},
    {"label": "resnet34-deeplabv3plus", "overrides": ["model.name=deeplabv3plus", "model.backbone=resnet34",
                                                      "model.options={atrous_rates: [2, 4, 6]}"]},
]

# the shared budget (on top of configs/default.yaml)
BUDGET = ["train.epochs=6", "data.train_windows_per_epoch=160", "train.schedule=cosine"]
QUICK = [
    "data.synthetic.num_train_scenes=2", "data.synthetic.num_val_scenes=1", "data.synthetic.scene_size=512",
    "data.window_size=128", "data.eval_overlap=0", "data.batch_size=8", "data.train_windows_per_epoch=64",
    "train.epochs=3", "train.num_figure_tiles=2",
]


def load_models(path) -> list:
    """A models file: a list of ``{label: str, overrides: [KEY=VALUE, ...]}`` (YAML or JSON)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"models file not found: {path}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty list of {{label, overrides}} entries")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("label"), str) or not entry["label"]:
            raise ValueError(f"{path}: entry {i} needs a 'label' string, got {entry!r}")
        if not isinstance(entry.get("overrides", []), list):
            raise ValueError(f"{path}: entry {i} ('{entry['label']}'): 'overrides' must be a list of KEY=VALUE")
    labels = [e["label"] for e in data]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{path}: labels must be unique, got {labels}")
    return data


def plan(models: list, config=None, shared=(), quick: bool = False, data_root: str = "",
         experiment: str = "architectures") -> list:
    """``[(label, Config)]`` for every model, validated before anything trains."""
    available = tfseg.available_models()
    base = list(BUDGET) + (list(QUICK) if quick else []) + [override("tracking.mlflow.experiment", experiment)]
    if data_root:
        base.append(override("data.root", data_root))
    planned = []
    for entry in models:
        overrides = base + list(shared) + list(entry.get("overrides", [])) + [override("tracking.name", entry["label"])]
        try:
            cfg = tfseg.load_config(config, overrides)
        except tfseg.ConfigError as exc:
            raise ValueError(f"model '{entry['label']}': {exc}") from None
        if cfg.model.name not in available:
            raise ValueError(
                f"model '{entry['label']}': model.name={cfg.model.name!r} is not available in this installation "
                f"(available: {available}; an optional architecture needs its package, e.g. "
                f"pip install 'tfseg[sm]' for sm)")
        planned.append((entry["label"], cfg))
    return planned


def check_metric(planned: list, metric: str) -> None:
    """Refuse a ranking ``metric`` that no planned run will write (before anything trains)."""
    written = set().union(*(tfseg.history_columns(cfg) for _, cfg in planned)) if planned else set()
    if metric not in written:
        close = difflib.get_close_matches(metric, sorted(written), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"--metric {metric!r}: no run of this study writes it{hint}; the runs write "
                         f"{', '.join(sorted(written))}")


def run(models: list, output, config=None, shared=(), quick: bool = False, data_root: str = "",
        metric: str = "val_iou", verbose: int = 0, experiment: str = "") -> list:
    """Train every model (resuming/skipping finished runs) and write the comparison report."""
    import keras

    output = Path(output)
    planned = plan(models, config, shared, quick, data_root, experiment or output.resolve().name)
    check_metric(planned, metric)
    run_dirs, profiles = [], []
    for label, cfg in planned:
        run_dir = output / "runs" / label
        state = run_dir / "backup" / "state.json"
        finished = (run_dir / "metrics.json").is_file() and state.is_file() and json.loads(state.read_text()).get("complete")
        if finished:
            log.info("%s: already trained (%s), skipped", label, run_dir)
        else:
            log.info("training %s -> %s", label, run_dir)
            keras.backend.clear_session()
            result = tfseg.train_model(cfg, run_dir, verbose=verbose)
            log.info("%s: val iou %.4f in %.0fs", label, result["val"]["iou"], result["train_seconds"])
        run_dirs.append(run_dir)
        profiles.append(profile_run(label, run_dir, cfg.data.window_size))
    rows = report(planned, run_dirs, output / "report", metric)
    write_profiles(profiles, rows, output / "report", metric)
    return rows


def report(planned: list, run_dirs: list, target, metric: str) -> list:
    """The comparison report from the MLflow runs of the study (run directories for runs MLflow
    did not record)."""
    return tfseg.compare_runs([(cfg, run_dir) for (_, cfg), run_dir in zip(planned, run_dirs)], target, metric)


def profile_run(label: str, run_dir: Path, tile: int) -> dict:
    """Parameters and training GFLOP/image of the trained model in ``run_dir`` (cached in
    ``run_dir/profile.json``)."""
    import keras

    cached = run_dir / "profile.json"
    if cached.is_file():
        return {"label": label, **json.loads(cached.read_text())}
    keras.backend.clear_session()
    result = tfseg.profile_model(run_dir, tile)
    cached.write_text(json.dumps(result, indent=2))
    return {"label": label, **result}


def _number(value, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_profiles(profiles: list, rows: list, report: Path, metric: str) -> str:
    """``report/models.md`` and ``models.json``: label, params, training GFLOP/image, best ``metric``."""
    best = {r["run"]: r for r in rows}
    lines = [f"| model | parameters | training GFLOP/image | best {metric} | train s |", "|---|---|---|---|---|"]
    for p in profiles:
        row = best.get(p["label"], {})
        value = row.get(metric, "")
        lines.append(f"| {p['label']} | {p['params']:,} | {p['train_gflops_per_img']:.1f} "
                     f"({p['tile']}x{p['tile']}x{p['bands']}) | {_number(value, 4)} | "
                     f"{_number(row.get('train_seconds', ''), 1)} |")
    text = "\n".join(lines) + "\n"
    report.mkdir(parents=True, exist_ok=True)
    (report / "models.md").write_text(text)
    (report / "models.json").write_text(json.dumps(profiles, indent=2))
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.compare_architectures", description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="reports/architectures", help="output directory (runs/ and report/)")
    parser.add_argument("--config", help="base YAML config (default: configs/default.yaml)")
    tfseg.add_overrides_argument(parser, "overrides applied to every model (same data and budget)")
    parser.add_argument("--models", help="YAML/JSON list of {label, overrides} (default: fcn8, unet, efficientnet-fpn, "
                                         "unetpp, resnet34-deeplabv3plus)")
    parser.add_argument("--quick", action="store_true", help="a few-minutes version (small scenes, 3 epochs)")
    parser.add_argument("--data-root", default="", help="data.root for every model")
    parser.add_argument("--metric", default="val_iou", help="ranking metric of the report")
    parser.add_argument("--experiment", default="", help="MLflow experiment (default: the name of --output)")
    parser.add_argument("--verbose", action="store_true", help="Keras progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        models = load_models(args.models) if args.models else DEFAULT_MODELS
        run(models, args.output, args.config, args.overrides, args.quick, args.data_root, args.metric,
            verbose=1 if args.verbose else 0, experiment=args.experiment)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((Path(args.output) / "report" / "comparison.md").read_text())
    print((Path(args.output) / "report" / "models.md").read_text())
    print(f"report: {Path(args.output) / 'report' / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
