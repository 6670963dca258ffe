"""Run directories: the local record of a run, created or re-opened (resume), and its provenance.

A run directory holds ``config.yaml``, ``model_card.json``, ``history.csv``, ``model.keras``
(best epoch), ``backup/`` (resume state), ``logs/`` (TensorBoard), ``metrics.json``,
``predictions.png``, ``export/`` (SavedModel), ``mlflow_run.json`` (MLflow run id) and, with
Neptune offline, ``.neptune/``. Its files are written atomically (:mod:`tfseg.fsutil`).

Example:
    >>> run_dir, resuming = prepare_run_dir(None, cfg, overwrite=False)   # runs/<timestamp>-<name>
"""
from __future__ import annotations

import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional

from . import config as config_lib
from .errors import TfsegError
from .fsutil import atomic_write_text

# config keys that may differ when resuming a run (they do not change what is trained)
RESUME_IGNORED_KEYS = {"tracking.neptune.mode", "tracking.neptune.project", "tracking.mlflow.mode",
                       "tracking.mlflow.uri", "tracking.mlflow.experiment", "tracking.mlflow.log_model",
                       "train.num_figure_tiles", "train.epoch_figures"}


class RunDirError(TfsegError):
    """The run directory cannot be used for this run; the message names it."""


def remove_stale_temporaries(run_path) -> list:
    """Delete temporary files a killed process left in the run directory (and ``backup/``)."""
    removed = []
    for folder in (Path(run_path), Path(run_path) / "backup"):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp*"):
                if tmp.is_file():
                    tmp.unlink(missing_ok=True)
                    removed.append(tmp)
    return removed


def default_run_dir(cfg) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{cfg.tracking.name}"


def prepare_run_dir(run_dir: Optional[str], cfg, overwrite: bool = False) -> tuple[Path, bool]:
    """Create (or re-open) the run directory; returns ``(path, resuming)``.

    A directory holding a run with a different config is refused (naming the differing keys)
    unless ``overwrite``; one with the same config is resumed; an unrelated non-empty directory
    (no ``config.yaml``) is refused, with ``overwrite`` too (it deletes runs, not any folder).
    """
    path = Path(run_dir) if run_dir else default_run_dir(cfg)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run directory {path} exists and is not a directory")
    existing = path / "config.yaml"
    if path.is_dir() and any(path.iterdir()):
        if overwrite and not existing.is_file():  # --overwrite replaces a run, never any folder
            raise RunDirError(
                f"run directory {path} is not empty and holds no tfseg run (no config.yaml): --overwrite only "
                "replaces a tfseg run directory; use another --run-dir, or empty this one yourself"
            )
        if overwrite:
            shutil.rmtree(path)
        elif existing.is_file():
            previous = config_lib.load(existing)
            differences = {k: v for k, v in config_lib.diff(previous, cfg).items() if k not in RESUME_IGNORED_KEYS}
            if differences:
                listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(differences.items())[:10])
                more = f" (and {len(differences) - 10} more)" if len(differences) > 10 else ""
                raise RunDirError(
                    f"run directory {path} already holds a different run (config keys differ: "
                    f"{listed}{more}); use another --run-dir or --overwrite"
                )
            return path, True
        else:
            raise RunDirError(
                f"run directory {path} is not empty and holds no tfseg run (no config.yaml); "
                "use another --run-dir"
            )
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(existing, cfg.to_yaml())
    return path, False


# ------------------------------------------------------------------------------------------
# Provenance
# ------------------------------------------------------------------------------------------
def git_commit(path=None) -> str:
    """The git commit of the tfseg source tree (``"unknown"`` outside a repository), ``+dirty`` when modified."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        if not commit:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("tfseg", "tensorflow", "keras", "numpy", "rasterio", "shapely", "pyproj", "neptune"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
