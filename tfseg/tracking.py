"""Experiment tracking: Neptune here, MLflow in :mod:`tfseg.tracking_mlflow`, both behind
:class:`GuardedTracker`. The run directory (the local record of a run) is :mod:`tfseg.rundir`,
atomic file writes are :mod:`tfseg.fsutil`; their names are importable from here too.

Neptune (``tracking.neptune.mode``): ``auto`` = ``async`` when ``NEPTUNE_API_TOKEN`` and a
project (``tracking.neptune.project`` or ``NEPTUNE_PROJECT``) are set, else ``offline``;
``offline`` writes the operation log under ``RUN_DIR/.neptune`` (upload later with
``neptune sync --path RUN_DIR``); ``debug`` keeps everything in memory; ``off`` disables it.
Tracking never stops training: any failure is one warning and the run continues locally.

Example:
    >>> run_dir, resuming = prepare_run_dir(None, cfg, overwrite=False)   # runs/<timestamp>-<name>
    >>> tracker = NeptuneTracker.start(cfg, run_dir)                      # None when mode=off
    >>> model.fit(..., callbacks=[tracker.callback()])
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import socket
import warnings
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from . import config as config_lib
# the run directory and atomic writes, where callers of this module have always found them
from .fsutil import (atomic_path, atomic_write_text, fsync_file, save_model_atomic,  # noqa: F401
                     save_weights_atomic, write_json, zip_directory)
from .rundir import (RESUME_IGNORED_KEYS, RunDirError, default_run_dir, git_commit,  # noqa: F401
                     package_versions, prepare_run_dir, remove_stale_temporaries)

log = logging.getLogger("tfseg.tracking")


RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")


def check_status(status: str) -> str:
    """``status`` when it is a run end status (``FINISHED``, ``FAILED``, ``KILLED``); else a ValueError."""
    if status not in RUN_STATUSES:
        raise ValueError(f"status: expected one of {list(RUN_STATUSES)}, got {status!r}")
    return status


class GuardedTracker:
    """Base of the trackers: every call to the tracking service goes through :meth:`_guard`;
    the first error becomes one warning (``service``, what happened, ``_local_note``) and
    switches tracking off, training goes on."""

    service = "tracking"
    _failed = False

    def _local_note(self) -> str:
        return "logged locally in its run directory"

    def _guard(self, fn, *args, **kwargs):
        if self._failed:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must never kill training
            self._failed = True
            _warn(f"{self.service} tracking stopped after an error ({type(exc).__name__}: {_short(exc)}); "
                  f"the run continues, {self._local_note()}")
            return None

# ------------------------------------------------------------------------------------------
# Neptune
# ------------------------------------------------------------------------------------------
def resolve_neptune_mode(cfg) -> tuple[str, str]:
    """``(mode, project)`` after resolving ``auto`` from the environment."""
    mode = cfg.tracking.neptune.mode
    project = cfg.tracking.neptune.project or os.environ.get("NEPTUNE_PROJECT", "")
    if mode == "auto":
        mode = "async" if os.environ.get("NEPTUNE_API_TOKEN") and project else "offline"
    return mode, project


def _token_address(token: str) -> Optional[str]:
    """The server address inside a Neptune API token (a base64 JSON with ``api_address``)."""
    try:
        data = json.loads(base64.b64decode(token.strip() + "=" * (-len(token.strip()) % 4)).decode())
        return data.get("api_address") or data.get("api_url")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None


def check_server(token: str, timeout: float = 5.0) -> Optional[str]:
    """``None`` when the server named in the token accepts TCP connections, else why not.

    The Neptune client itself retries an unreachable server for about a minute before failing;
    this bounded pre-check turns that into one immediate warning.
    """
    address = _token_address(token)
    if not address:
        return "NEPTUNE_API_TOKEN is not a valid Neptune API token (cannot decode its server address)"
    url = urlparse(address if "://" in address else f"https://{address}")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"Neptune server {url.scheme}://{url.hostname}:{port} is unreachable ({exc})"


def _run_id(run_path: Path) -> str:
    """A stable custom run id for a run directory, so a resumed run continues the same Neptune run."""
    marker = run_path / "config.yaml"
    created = str(marker.stat().st_mtime_ns) if marker.exists() else ""
    return "tfseg-" + hashlib.sha1(f"{run_path.resolve()}|{created}".encode()).hexdigest()[:16]


def display_uri(uri: str) -> str:
    """``uri`` without a password (``user:secret@host`` -> ``user:***@host``), wherever it is in the text."""
    return re.sub(r"(://[^/:@\s]+:)[^/@\s]+@", r"\1***@", uri)


def _flat_params(cfg) -> dict:
    """The resolved config as Neptune parameters (``section/key``); a password in a URI
    (``tracking.mlflow.uri=https://user:secret@host``) is masked as in the log lines."""
    flat = config_lib._flatten(cfg.to_dict())
    out = {}
    for key, value in flat.items():
        if isinstance(value, (list, dict)):
            value = json.dumps(value)  # Neptune has no list/dict field types
        if isinstance(value, str):
            value = display_uri(value)
        out[key.replace(".", "/")] = value
    return out


class NeptuneTracker(GuardedTracker):
    """A Neptune run attached to a run directory. Every call is guarded: an error becomes a
    single warning and tracking is switched off, training goes on.

    Namespaces: ``parameters/<section>/<key>``, ``training/epoch/{train,val}/<metric>`` and
    ``training/epoch/learning_rate`` (step = epoch index), ``validation/predictions``,
    ``final/…`` (metrics.json), ``files/history``, ``files/metrics``, ``model/saved_model``,
    ``source/git_commit``, ``source/versions/<package>``, ``tfseg/run_dir``.
    """

    service = "Neptune"

    def __init__(self, run, mode: str, run_path: Path):
        self.run, self.mode, self.run_path = run, mode, Path(run_path)

    # -- creation ------------------------------------------------------------------------
    @classmethod
    def start(cls, cfg, run_path, dataset_name: str = "") -> Optional["NeptuneTracker"]:
        """Open the Neptune run for ``cfg`` (``None`` when mode is ``off`` or it cannot start)."""
        mode, project = resolve_neptune_mode(cfg)
        if mode == "off":
            return None
        run_path = Path(run_path)
        token = os.environ.get("NEPTUNE_API_TOKEN", "")
        if mode == "async":
            problem = check_server(token) if token else "NEPTUNE_API_TOKEN is not set"
            if not problem and not project:
                problem = "no Neptune project (set tracking.neptune.project or NEPTUNE_PROJECT)"
            if problem:
                _warn(f"Neptune tracking: {problem}; logging offline under {run_path / '.neptune'} instead "
                      f"(upload later with `neptune sync --path {run_path}`)")
                mode = "offline"
        try:
            run = _init_run(cfg, run_path, mode, project, dataset_name)
        except Exception as exc:  # noqa: BLE001 - tracking must never kill training
            if mode == "async":
                _warn(f"Neptune tracking: cannot start an async run ({type(exc).__name__}: "
                      f"{_short(exc)}); logging offline under {run_path / '.neptune'} instead")
                try:
                    run = _init_run(cfg, run_path, "offline", project, dataset_name)
                    mode = "offline"
                except Exception as exc2:  # noqa: BLE001
                    _warn(f"Neptune tracking disabled: {type(exc2).__name__}: {_short(exc2)}")
                    return None
            else:
                _warn(f"Neptune tracking disabled: {type(exc).__name__}: {_short(exc)}")
                return None
        tracker = cls(run, mode, run_path)
        tracker._guard(tracker._log_start, cfg, dataset_name)
        return tracker

    # -- logging -------------------------------------------------------------------------
    def _log_start(self, cfg, dataset_name):
        run = self.run
        run["parameters"] = _flat_params(cfg)
        run["tfseg/run_dir"] = str(self.run_path.resolve())
        run["source/git_commit"] = git_commit()
        run["source/versions"] = package_versions()

    def log_epoch(self, epoch: int, logs: dict) -> None:
        def log():
            for key, value in (logs or {}).items():
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    continue
                if key == "learning_rate":
                    path = "training/epoch/learning_rate"
                elif key.startswith("val_"):
                    path = f"training/epoch/val/{key[4:]}"
                else:
                    path = f"training/epoch/train/{key}"
                self.run[path].append(value, step=epoch)
            # on disk before the epoch's resume state is saved: a SIGKILL must not lose the epoch
            self.run.wait(disk_only=True)
        self._guard(log)

    def log_final(self, metrics: dict, files: dict, model_archive: Optional[Path] = None) -> None:
        """Final metrics (flattened), files (name -> path) and the SavedModel archive."""
        from neptune.types import File

        def log():
            for key, value in _flatten_numbers(metrics).items():
                self.run[f"final/{key}"] = value
            for name, path in files.items():
                if Path(path).is_file():
                    target = "validation/predictions" if name == "predictions" else f"files/{name}"
                    # from_content copies the bytes now: later edits of the file do not leak in
                    data = Path(path).read_bytes()
                    ext = Path(path).suffix.lstrip(".")
                    self.run[target].upload(File.from_content(data, extension=ext))
            if model_archive is not None and Path(model_archive).is_file():
                self.run["model/saved_model"].upload(str(model_archive))
        self._guard(log)

    def stop(self, timeout: float = 60.0, status: str = "FINISHED") -> None:
        """Close the run (waiting up to ``timeout`` s for queued data). ``status``: ``FINISHED``, or
        ``FAILED`` / ``KILLED`` for a training that raised or was interrupted: the Neptune run is then
        marked failed (``sys/failed``, the client's own flag). Never raises for the service's errors;
        even after a logging error switched tracking off, the run is still closed."""
        check_status(status)
        if self.run is None:
            return
        if status != "FINISHED":
            try:
                self.run["sys/failed"] = True
            except Exception as exc:  # noqa: BLE001
                _warn(f"Neptune tracking: marking the run failed did not work ({type(exc).__name__}: "
                      f"{_short(exc)})")
        try:
            self.run.stop(seconds=timeout)
        except Exception as exc:  # noqa: BLE001
            _warn(f"Neptune tracking: stopping the run failed ({type(exc).__name__}: {_short(exc)})")
        self.run = None

    def callbacks(self) -> list:
        """Keras callbacks: tfseg's epoch logger (``training/epoch/…``, step = epoch, so a resumed
        run continues the same series) and, when installed, Neptune's own Keras integration
        (``neptune-tensorflow-keras``: optimizer config, model summary, batch curves under
        ``keras/…``), guarded so that an error in it cannot stop training."""
        return _make_callbacks(self)


def _init_run(cfg, run_path: Path, mode: str, project: str, dataset_name: str):
    import neptune  # lazy: optional at import time of tfseg

    tags = [t for t in [dataset_name or cfg.data.format, cfg.model.name, cfg.model.backbone or "plain",
                        *cfg.tracking.tags] if t]
    kwargs = dict(
        mode=mode,
        name=cfg.tracking.name,
        tags=sorted(set(str(t) for t in tags)),
        custom_run_id=_run_id(run_path),
        capture_hardware_metrics=mode == "async",
        capture_stdout=False,
        capture_stderr=False,
        capture_traceback=False,
        source_files=[],
        git_ref=False,  # the commit is logged explicitly (source/git_commit)
    )
    if project:
        kwargs["project"] = project
    # the client places its data directory (offline log, async disk queue) via this variable,
    # read when the run is created: point it into the run directory
    previous = os.environ.get("NEPTUNE_DATA_DIRECTORY")
    os.environ["NEPTUNE_DATA_DIRECTORY"] = str((run_path / ".neptune").resolve())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return neptune.init_run(**kwargs)
    finally:
        if previous is None:
            os.environ.pop("NEPTUNE_DATA_DIRECTORY", None)
        else:
            os.environ["NEPTUNE_DATA_DIRECTORY"] = previous


def _make_callbacks(tracker: NeptuneTracker) -> list:
    import keras

    class NeptuneEpochLogger(keras.callbacks.Callback):
        """Logs each epoch's train/val metrics and learning rate with ``step = epoch``."""

        def on_epoch_end(self, epoch, logs=None):
            tracker.log_epoch(epoch, dict(logs or {}))

    out = [NeptuneEpochLogger()]
    try:
        from neptune.integrations.tensorflow_keras import NeptuneCallback  # neptune-tensorflow-keras
    except ImportError:
        return out
    try:
        official = NeptuneCallback(run=tracker.run, base_namespace="keras")
    except Exception as exc:  # noqa: BLE001
        _warn(f"Neptune Keras integration unavailable ({type(exc).__name__}: {_short(exc)})")
        return out

    class GuardedNeptuneCallback(keras.callbacks.Callback):
        """Neptune's Keras callback with every hook guarded by the tracker."""

        def set_model(self, model):
            super().set_model(model)
            official.set_model(model)

        def set_params(self, params):
            super().set_params(params)
            official.set_params(params)

    def forward(name):
        def hook(self, *args, **kwargs):
            tracker._guard(getattr(official, name), *args, **kwargs)
        return hook

    for name in ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_train_batch_end",
                 "on_test_batch_end", "on_test_end"):
        if hasattr(official, name):
            setattr(GuardedNeptuneCallback, name, forward(name))
    out.append(GuardedNeptuneCallback())
    return out


def _flatten_numbers(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten_numbers(value, path))
        elif isinstance(value, (int, float, str, bool)):
            out[path] = value
    return out


def _short(exc: Exception, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text[:limit] + ("…" if len(text) > limit else "")


def _warn(message: str) -> None:
    log.warning(message)


# ------------------------------------------------------------------------------------------
# Reading back an offline Neptune log (tests, debugging)
# ------------------------------------------------------------------------------------------
def read_offline_log(run_path) -> dict:
    """Replay the offline operation log(s) under ``RUN_DIR/.neptune/offline`` into
    ``{"path/to/field": value_or_list_of_(step, value)}``. Several processes of a resumed run
    are merged in creation order.
    """
    base = Path(run_path) / ".neptune" / "offline"
    fields: dict = {}
    if not base.is_dir():
        return fields
    containers = sorted(base.iterdir(), key=lambda p: _created(p))
    for container in containers:
        for data_file in sorted(container.glob("data-*.log"), key=lambda p: int(p.stem.split("-")[1])):
            for line in data_file.read_text().splitlines():
                if not line.strip():
                    continue
                op = json.loads(line)["obj"]
                path = "/".join(op["path"])
                kind = op["type"]
                if kind.startswith("Assign"):
                    fields[path] = op["value"]
                elif kind in ("LogFloats", "LogStrings"):
                    fields.setdefault(path, []).extend((v["step"], v["value"]) for v in op["values"])
                elif kind == "AddStrings":
                    fields[path] = sorted(set(fields.get(path, [])) | set(op["values"]))
                elif kind == "UploadFile":
                    fields[path] = {"file": op.get("file_path") or op.get("tmp_file_name"), "ext": op.get("ext")}
    return fields


def _created(container: Path) -> str:
    meta = container / "metadata.json"
    try:
        return json.loads(meta.read_text()).get("createdAt", "")
    except (OSError, ValueError):
        return ""
