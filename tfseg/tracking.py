"""Run directories (the local record of a run) and experiment tracking (Neptune; MLflow is
:mod:`tfseg.tracking_mlflow`).

A run directory holds ``config.yaml``, ``model_card.json``, ``history.csv``, ``model.keras``
(best epoch), ``backup/`` (resume state), ``logs/`` (TensorBoard), ``metrics.json``,
``predictions.png``, ``export/`` (SavedModel), ``mlflow_run.json`` (MLflow run id) and, with
Neptune offline, ``.neptune/``.

Every file a killed process could leave half-written is written atomically (temporary file in
the same directory, then ``os.replace``).

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
import platform
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from .errors import TfsegError
from . import config as config_lib

log = logging.getLogger("tfseg.tracking")

# config keys that may differ when resuming a run (they do not change what is trained)
RESUME_IGNORED_KEYS = {"tracking.neptune.mode", "tracking.neptune.project", "tracking.mlflow.mode",
                       "tracking.mlflow.uri", "tracking.mlflow.experiment", "tracking.mlflow.log_model",
                       "train.num_figure_tiles", "train.epoch_figures"}


class RunDirError(TfsegError):
    """The run directory cannot be used for this run; the message names it."""


# ------------------------------------------------------------------------------------------
# Atomic files
# ------------------------------------------------------------------------------------------
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


def fsync_file(path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextmanager
def atomic_path(path, suffix: str):
    """Yield a temporary path (ending in ``suffix``, as Keras requires) next to ``path``; on
    success it is fsynced and renamed onto ``path``, on failure removed.

    Example:
        >>> with atomic_path("run/model.keras", ".keras") as tmp:
        ...     model.save(tmp)
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # Keras refuses to overwrite without asking in some versions; start absent
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


def save_model_atomic(model, path) -> None:
    """``model.save(path)`` (a ``.keras`` file) without ever leaving a truncated file at ``path``."""
    with atomic_path(path, ".keras") as tmp:
        model.save(tmp)


def save_weights_atomic(model, path) -> None:
    """``model.save_weights(path)`` (a ``.weights.h5`` file, optimizer state included), atomically."""
    with atomic_path(path, ".weights.h5") as tmp:
        model.save_weights(tmp)


# ------------------------------------------------------------------------------------------
# Run directory
# ------------------------------------------------------------------------------------------
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
                "use another --run-dir or --overwrite"
            )
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(existing, cfg.to_yaml())
    return path, False


def zip_directory(source, target) -> Path:
    """Zip ``source`` (e.g. the SavedModel ``export/``) into ``target`` atomically."""
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, ".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(source.rglob("*")):
                if file.is_file():
                    archive.write(file, file.relative_to(source.parent))
    return target


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


def _flat_params(cfg) -> dict:
    flat = config_lib._flatten(cfg.to_dict())
    out = {}
    for key, value in flat.items():
        if isinstance(value, (list, dict)):
            value = json.dumps(value)  # Neptune has no list/dict field types
        out[key.replace(".", "/")] = value
    return out


class NeptuneTracker:
    """A Neptune run attached to a run directory. Every call is guarded: an error becomes a
    single warning and tracking is switched off, training goes on.

    Namespaces: ``parameters/<section>/<key>``, ``training/epoch/{train,val}/<metric>`` and
    ``training/epoch/learning_rate`` (step = epoch index), ``validation/predictions``,
    ``final/…`` (metrics.json), ``files/history``, ``files/metrics``, ``model/saved_model``,
    ``source/git_commit``, ``source/versions/<package>``, ``tfseg/run_dir``.
    """

    def __init__(self, run, mode: str, run_path: Path):
        self.run, self.mode, self.run_path = run, mode, Path(run_path)
        self._failed = False

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
    def _guard(self, fn, *args, **kwargs):
        if self._failed:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must never kill training
            self._failed = True
            _warn(f"Neptune tracking stopped after an error ({type(exc).__name__}: {_short(exc)}); "
                  "the run continues, logged locally in its run directory")
            return None

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

    def stop(self, timeout: float = 60.0) -> None:
        if self.run is None:
            return
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
