"""Run directories (the local record of a run) and experiment tracking callbacks.

A run directory holds ``config.yaml``, ``normalization.json``, ``history.csv``, ``model.keras``,
``logs/`` (TensorBoard), ``metrics.json``, ``predictions.png`` and ``export/`` (SavedModel).

Example:
    >>> run_dir = prepare_run_dir(None, cfg, overwrite=False)   # runs/<timestamp>-<name>
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

from . import config as config_lib


class RunDirError(ValueError):
    """The run directory cannot be used for this run; the message names it."""


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename: never a truncated file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def default_run_dir(cfg) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{cfg.tracking.name}"


def prepare_run_dir(run_dir: Optional[str], cfg, overwrite: bool = False) -> tuple[Path, bool]:
    """Create (or re-open) the run directory; returns ``(path, resuming)``.

    A directory holding a run with a different config is refused (naming the differing keys)
    unless ``overwrite``; one with the same config is resumed; an unrelated non-empty directory
    is refused.
    """
    path = Path(run_dir) if run_dir else default_run_dir(cfg)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run directory {path} exists and is not a directory")
    existing = path / "config.yaml"
    if path.is_dir() and any(path.iterdir()):
        if overwrite:
            shutil.rmtree(path)
        elif existing.is_file():
            previous = config_lib.load(existing)
            differences = config_lib.diff(previous, cfg)
            if differences:
                listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(differences.items())[:10])
                raise RunDirError(
                    f"run directory {path} already holds a different run (config keys differ: "
                    f"{listed}); use another --run-dir or --overwrite"
                )
            return path, True
        else:
            raise RunDirError(
                f"run directory {path} is not empty and holds no tfseg run (no config.yaml); "
                "use another --run-dir or --overwrite"
            )
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(existing, cfg.to_yaml())
    return path, False
