"""Shared plumbing of the real-data pipelines (``pipelines/landcover.py``, ``spacenet.py``, ``dstl.py``).

Argument parsing (``--run-dir``, ``--data-root``, ``--quick``, ``--set``), config loading,
the default location of the shared sample data, and the stages every pipeline ends with
(evaluate, export to ``RUN_DIR/models/<name>/1``, predict a sample). Only tfseg APIs are called.

Example:
    >>> from pipelines._common import shared_data
    >>> shared_data("dubai_landcover").name
    'dubai_landcover'
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

import tfseg  # noqa: E402

tfseg.quiet_tensorflow()  # before anything imports TensorFlow / Keras

log = logging.getLogger("tfseg.pipelines")


class PipelineError(tfseg.TfsegError, RuntimeError):
    """A pipeline cannot run (missing data, bad arguments); the message names the path."""


def shared_data(name: str = "") -> Path:
    """``$TFSEG_SHARED_DATA/<name>`` or ``<repo>/../shared/data/<name>``."""
    base = Path(os.environ.get("TFSEG_SHARED_DATA") or REPO.parent / "shared" / "data")
    return base / name if name else base


def override(key: str, value) -> str:
    """``KEY=VALUE`` for ``--set`` / ``load_config`` with ``value`` (a path, a name) kept a string
    whatever it holds: JSON-quoted, which YAML reads back as the same string (an unquoted
    ``run #2`` would lose ``#2`` as a comment; ``a: b`` would be a mapping, ``yes`` a bool)."""
    return f"{key}={json.dumps(str(value))}"


def parser(prog: str, description: str, default_run_dir: str, data_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--run-dir", default=default_run_dir, help=f"run directory (default: {default_run_dir})")
    p.add_argument("--data-root", default="", help=data_help)
    p.add_argument("--config", default="", help="config YAML (default: the pipeline's config in configs/)")
    p.add_argument("--quick", action="store_true", help="minutes-long smoke version (tiny budget, CI)")
    tfseg.add_overrides_argument(p, "config overrides, applied last (e.g. train.epochs=5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--verbose", action="store_true", help="Keras progress bars")
    return p


def load_config(path, overrides: list):
    try:
        return tfseg.load_config(path, overrides)
    except tfseg.ConfigError as exc:
        raise PipelineError(str(exc)) from None


def require_dir(path: Path, what: str, hint: str) -> Path:
    if not Path(path).is_dir():
        raise PipelineError(f"{what} not found: {path} ({hint})")
    return Path(path)


def given_or_generated_config(args, run_dir: Path, config_path, quick_overrides: list, what: str, hint: str,
                              generate, generated_kwargs: dict):
    """``(root, generated, cfg)``: ``--data-root`` when given (it must exist: ``hint`` says what it
    should hold), else a dataset made by ``generate(run_dir / "data", **generated_kwargs)``; the
    config from ``config_path`` with ``data.root`` set, then ``--quick``'s and the user's overrides."""
    if args.data_root:
        root, generated = require_dir(Path(args.data_root), what, hint), False
    else:
        root, generated = generate(run_dir / "data", **generated_kwargs), True
    overrides = [override("data.root", root)] + (list(quick_overrides) if args.quick else []) + list(args.overrides)
    return root, generated, load_config(config_path, overrides)


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux
        return "n/a"


def train_model(cfg, run_dir: Path, overwrite: bool, verbose: bool) -> dict:
    start = time.monotonic()
    log.info("training %s/%s into %s (load average %s)", cfg.model.name, cfg.model.backbone or "plain", run_dir,
             load_average())
    result = tfseg.train_model(cfg, run_dir, overwrite=overwrite, verbose=1 if verbose else 2)
    result["wall_seconds"] = round(time.monotonic() - start, 1)
    return result


def export_versioned(run_dir: Path, name: str, base: Path = None) -> Path:
    """The run exported as a SavedModel into ``BASE/models/<name>/1`` (BASE = RUN_DIR), replacing
    an earlier export there."""
    return tfseg.export_model(run_dir, Path(base or run_dir) / "models" / name / "1", overwrite=True)


def link_view(pairs, folder: Path, name=lambda p: p.name) -> list:
    """Symlinks ``folder/name(path)`` to each path (unique stems for tools that pair by stem,
    without copying the data). Returns the link paths."""
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for path in pairs:
        link = folder / name(Path(path))
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(path).resolve())
        links.append(link)
    return links


def write_summary(run_dir: Path, summary: dict) -> Path:
    path = run_dir / "pipeline.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def run_main(fn, args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = fn(args)
    except (PipelineError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary["metrics"], indent=2))
    return 0
