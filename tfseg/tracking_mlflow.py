"""MLflow tracking (``tracking.mlflow.*``) with the real ``mlflow`` client (extra ``tfseg[mlflow]``).

Where runs go (``tracking.mlflow.mode``):

- ``auto`` (default): the tracking server/store named by ``tracking.mlflow.uri`` or
  ``MLFLOW_TRACKING_URI`` when one is set, else the local SQLite store ``mlflow.db`` next to the
  run directory (``runs/mlflow.db``, shared by every run under ``runs/``; artifacts beside any
  SQLite database: ``runs/mlartifacts/``). Without the ``mlflow`` package installed, ``auto`` is off (logged once).
- ``local``: always the local SQLite store, whatever the environment says.
- ``server``: the configured URI (or ``MLFLOW_TRACKING_URI``), required.
- ``off``: no MLflow.

The experiment is ``tracking.mlflow.experiment`` (default: ``tracking.name``); the run is named
after the run directory. Logged: the resolved config as params (flattened ``section.key``),
tags (``dataset``, ``model``, ``backbone``, ``precision``, ``git_commit``, ``tfseg.run_dir`` and
``tracking.tags``), every epoch's ``history.csv`` columns (train/val metrics and
``learning_rate``) with ``step = epoch`` (0-based, as in history.csv), the final metrics as
``final/...`` (``final/val/iou``, ``final/params``, ...) and artifacts: ``history.csv``,
``metrics.json``, ``config.yaml``, ``figures/`` (``predictions.png`` and
the per-epoch figures), ``model_card/`` (``RUN_DIR/model_card.json``) and ``saved_model/`` (the ``export/`` directory,
``tracking.mlflow.log_model``).

The run id is kept in ``RUN_DIR/mlflow_run.json``: a resumed run continues the same MLflow run.
Epochs are logged after the resume state is saved and, at every start, the epochs of
``history.csv`` the MLflow run does not hold yet are logged first, so each epoch is in MLflow
exactly once whatever moment a kill came at (and a run started on a new store is backfilled).

Tracking never stops training: an unreachable server is one warning (a bounded TCP check, 5 s)
and the run keeps its local record; an error while logging is one warning and MLflow is
switched off for the rest of the run.

Example:
    >>> tracker = MlflowTracker.start(cfg, run_dir, dataset_name="synthetic", precision="float32")
    >>> model.fit(..., callbacks=[..., training_state, *tracker.callbacks()])
    >>> tracker.log_final(metrics, run_dir); tracker.stop()
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from .errors import TfsegError
from .fsutil import write_json
from .rundir import git_commit
from .tracking import GuardedTracker, _flatten_numbers, _short, _warn

log = logging.getLogger("tfseg.tracking")

RUN_FILE = "mlflow_run.json"
LOCAL_DB = "mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"
FINAL_PREFIX = "final/"
# URI schemes MLflow's tracking client understands (a store URI or a server)
SCHEMES = {"http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks", "databricks-uc",
           "uc"}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")


class MlflowConfigError(TfsegError):
    """A tracking URI (config key, environment variable or argument) that is neither a URI nor a path."""


def check_uri(value: str, key: str) -> str:
    """``value`` as MLflow tracking URI; a path ending in ``.db`` becomes ``sqlite:///<abs path>``.

    Raises :class:`MlflowConfigError` naming ``key`` when it is neither a URI nor a path.
    """
    expected = ("expected a tracking URI (http://HOST:PORT, https://..., sqlite:///PATH.db, file:///DIR, "
                "postgresql://..., databricks) or a local path")
    text = value.strip()
    if not text or text != value or any(c in value for c in "\n\r\t\0"):
        raise MlflowConfigError(f"{key}: {expected}, got {value!r}")
    if text in ("databricks", "databricks-uc", "uc") or text.startswith("databricks://"):
        return text
    if "://" in text:
        scheme = text.split("://", 1)[0]
        base = scheme.split("+", 1)[0].lower()  # postgresql+psycopg2://...
        if not _SCHEME.match(scheme) or base not in SCHEMES:
            raise MlflowConfigError(f"{key}: {expected}; unknown scheme {scheme!r} in {value!r}")
        parsed = urlparse(text)
        if base in ("http", "https"):
            try:
                parsed.port
            except ValueError:
                raise MlflowConfigError(f"{key}: {expected}; bad port in {value!r}") from None
            if not parsed.hostname:
                raise MlflowConfigError(f"{key}: {expected}; no host in {value!r}")
        elif base in ("sqlite", "file") and not (parsed.path or parsed.netloc):
            raise MlflowConfigError(f"{key}: {expected}; no path in {value!r}")
        return text
    if re.match(r"^[^/\\]*:", text) and not re.match(r"^[A-Za-z]:[\\/]", text):
        # "localhost:5000", "mlflow:db": a scheme or host without '//', not a path
        raise MlflowConfigError(f"{key}: {expected}, got {value!r} (a server needs http://{text})")
    path = Path(text).expanduser()
    if path.suffix in (".db", ".sqlite"):
        return "sqlite:///" + str(path.resolve())
    return str(path.resolve())


def resolve(cfg, run_path) -> Optional[tuple[str, str]]:
    """``(uri, where)`` for this run (``where`` names its source), ``None`` when MLflow is off.

    Raises :class:`MlflowConfigError` for a bad ``tracking.mlflow.uri``/``MLFLOW_TRACKING_URI``
    or ``mode: server`` without one.
    """
    mode = cfg.tracking.mlflow.mode
    if mode == "off":
        return None
    configured, env = cfg.tracking.mlflow.uri, os.environ.get("MLFLOW_TRACKING_URI", "")
    local = "sqlite:///" + str((Path(run_path).resolve().parent / LOCAL_DB))
    if mode == "local":
        return local, "local store"
    if configured:
        return check_uri(configured, "config key 'tracking.mlflow.uri'"), "tracking.mlflow.uri"
    if env:
        return check_uri(env, "environment variable MLFLOW_TRACKING_URI"), "MLFLOW_TRACKING_URI"
    if mode == "server":
        raise MlflowConfigError("config key 'tracking.mlflow.mode': 'server' needs tracking.mlflow.uri "
                                "or MLFLOW_TRACKING_URI (e.g. http://127.0.0.1:5000), got neither")
    return local, "local store"


def check_server(uri: str, timeout: float = 5.0) -> Optional[str]:
    """``None`` when the http(s) server of ``uri`` accepts TCP connections (or ``uri`` is a
    local store), else why not. The client alone retries an unreachable server for minutes."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"MLflow server {parsed.scheme}://{parsed.hostname}:{port} is unreachable ({exc})"


def display_uri(uri: str) -> str:
    """``uri`` without a password (``user:secret@host`` -> ``user:***@host``)."""
    return re.sub(r"(://[^/:@]+:)[^/@]+@", r"\1***@", uri)


@contextmanager
def quiet_store_setup():
    """Silence the INFO lines MLflow/Alembic print while creating or migrating a SQLite store."""
    names = ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils", "mlflow.tracking.fluent",
             "mlflow.store.sqlalchemy_store")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def client_for(uri: str):
    """An ``MlflowClient`` for ``uri`` with bounded HTTP retries (unless the environment sets them)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    with quiet_store_setup():
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # opens (creates/migrates) the store now
    return client


def flat_params(cfg) -> dict:
    """The resolved config as MLflow params: ``section.key -> str`` (lists/dicts as JSON)."""
    from . import config as config_lib

    return {key: json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            for key, value in config_lib._flatten(cfg.to_dict()).items()}


def flat_numbers(tree: dict, prefix: str = "") -> dict:
    """Numeric leaves of ``tree`` as ``prefix + a/b/c -> float`` (bools, strings, NaN skipped)."""
    return {prefix + key: float(value) for key, value in _flatten_numbers(tree).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


class MlflowTracker(GuardedTracker):
    """One MLflow run attached to a run directory; every call is guarded (one warning, then off)."""

    service = "MLflow"

    def __init__(self, client, run_id: str, uri: str, run_path: Path):
        self.client, self.run_id, self.uri, self.run_path = client, run_id, uri, Path(run_path)

    # -- creation ------------------------------------------------------------------------
    @classmethod
    def start(cls, cfg, run_path, dataset_name: str = "", precision: str = "") -> Optional["MlflowTracker"]:
        """Open (or re-open, on resume) the MLflow run; ``None`` when off or it cannot start.

        ``resolve`` errors (bad URI) are raised: call :func:`resolve` before training to fail early.
        """
        run_path = Path(run_path)
        resolved = resolve(cfg, run_path)
        if resolved is None:
            return None
        uri, where = resolved
        try:
            import mlflow  # noqa: F401 - optional extra
        except ImportError:
            message = "MLflow tracking off: the mlflow package is not installed (pip install 'tfseg[mlflow]')"
            if cfg.tracking.mlflow.mode == "auto":
                log.info(message)
            else:
                _warn(message)
            return None
        problem = check_server(uri)
        if problem:
            _warn(f"MLflow tracking disabled: {problem} ({where}); the run is recorded locally in {run_path}")
            return None
        try:
            client = client_for(uri)
            run_id, resumed = _open_run(client, cfg, uri, run_path)
        except Exception as exc:  # noqa: BLE001 - tracking must never kill training
            _warn(f"MLflow tracking disabled: cannot open a run on {display_uri(uri)} ({where}): "
                  f"{type(exc).__name__}: {_short(exc)}; the run is recorded locally in {run_path}")
            return None
        tracker = cls(client, run_id, uri, run_path)
        if not resumed:
            tracker._guard(tracker._log_start, cfg, dataset_name, precision)
        tracker._guard(tracker.backfill)
        if not tracker._failed:
            log.info("MLflow run %s in %s (%s)", run_id, display_uri(uri), where)
        return tracker

    # -- logging -------------------------------------------------------------------------
    def _local_note(self) -> str:
        return f"recorded locally in {self.run_path}"

    def _log_start(self, cfg, dataset_name: str, precision: str) -> None:
        from mlflow.entities import Param, RunTag

        commit = git_commit()
        tags = {"dataset": dataset_name or cfg.data.format, "model": cfg.model.name,
                "backbone": cfg.model.backbone or "plain", "precision": precision or cfg.train.precision,
                "git_commit": commit, "tfseg.run_dir": str(self.run_path.resolve()),
                **{str(t): "true" for t in cfg.tracking.tags}}
        if commit != "unknown":
            tags["mlflow.source.git.commit"] = commit.split("+")[0]
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in flat_params(cfg).items()],
                              tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_epoch(self, epoch: int, logs: dict) -> None:
        """One epoch's numbers (train/val metrics, ``learning_rate``) with ``step = epoch``."""
        self._guard(self._log_rows, [dict(logs or {}, epoch=epoch)])

    def _log_rows(self, rows: list) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = []
        for row in rows:
            step = int(row["epoch"])
            for key, value in row.items():
                if key == "epoch":
                    continue
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(value):
                    metrics.append(Metric(key, value, stamp, step))
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def backfill(self) -> int:
        """Log the ``history.csv`` epochs this MLflow run does not hold yet; returns how many."""
        from .compare import read_history

        history_file = self.run_path / "history.csv"
        rows = read_history(history_file) if history_file.is_file() else []
        if not rows:
            return 0
        logged = {}
        for key in rows[0]:
            if key != "epoch":
                logged[key] = {m.step for m in self.client.get_metric_history(self.run_id, key)}
        missing = []
        for row in rows:
            step = int(row["epoch"])
            values = {k: v for k, v in row.items() if k != "epoch" and step not in logged.get(k, ())}
            if values:
                missing.append(dict(values, epoch=step))
        if missing:
            self._log_rows(missing)
        return len(missing)

    def log_final(self, metrics: dict, run_path=None, log_model: bool = True) -> None:
        """``final/...`` metrics (metrics.json) and the run directory's artifacts."""
        run_path = Path(run_path or self.run_path)

        def log():
            from mlflow.entities import Metric

            stamp = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, 0) for k, v in
                                                        flat_numbers(metrics, FINAL_PREFIX).items()])
            for name in ("history.csv", "metrics.json", "config.yaml",
                         "operating_point_search.csv"):
                if (run_path / name).is_file():
                    self.client.log_artifact(self.run_id, str(run_path / name))
            for name in ("predictions.png", "objects.png"):
                if (run_path / name).is_file():
                    self.client.log_artifact(self.run_id, str(run_path / name), "figures")
            if (run_path / "figures").is_dir():
                self.client.log_artifacts(self.run_id, str(run_path / "figures"), "figures")
            card = _model_card_file(run_path)
            if card is not None:
                self.client.log_artifact(self.run_id, str(card), "model_card")
            if log_model and (run_path / "export" / "saved_model.pb").is_file():
                self.client.log_artifacts(self.run_id, str(run_path / "export"), "saved_model")
        self._guard(log)

    def stop(self, status: str = "FINISHED") -> None:
        self._guard(self.client.set_terminated, self.run_id, status)

    def callbacks(self) -> list:
        """The Keras callback logging each epoch. Put it after ``TrainingState``: an epoch reaches
        MLflow only once its resume state is saved (a kill in between is backfilled at the
        next start from history.csv), so no epoch is logged twice."""
        import keras

        tracker = self

        class MlflowEpochLogger(keras.callbacks.Callback):
            """Logs each epoch's train/val metrics and learning rate to MLflow with ``step = epoch``."""

            def on_epoch_end(self, epoch, logs=None):
                tracker.log_epoch(epoch, dict(logs or {}))

        return [MlflowEpochLogger()]


def _open_run(client, cfg, uri: str, run_path: Path) -> tuple[str, bool]:
    """``(run_id, resumed)``: the run recorded in ``RUN_DIR/mlflow_run.json`` for this store,
    else a new run in the experiment (created when missing)."""
    from mlflow.exceptions import MlflowException

    record_file = run_path / RUN_FILE
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        if record.get("tracking_uri") == uri:
            try:
                client.get_run(record["run_id"])
            except MlflowException:
                log.warning("MLflow run %s recorded in %s is not in %s; starting a new run",
                            record["run_id"], record_file, display_uri(uri))
            else:
                client.update_run(record["run_id"], status="RUNNING")
                return record["run_id"], True
    name = cfg.tracking.mlflow.experiment or cfg.tracking.name
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if uri.startswith("sqlite:///"):  # artifacts beside the database, not in the working directory
            location = (Path(uri[len("sqlite:///"):]).resolve().parent / LOCAL_ARTIFACTS).as_uri()
        try:
            # the kind makes the MLflow UI open the experiment in its model-training view
            experiment_id = client.create_experiment(name, artifact_location=location,
                                                     tags={"mlflow.experimentKind": "custom_model_development"})
        except MlflowException:  # created concurrently by another run
            experiment_id = client.get_experiment_by_name(name).experiment_id
    else:
        if experiment.lifecycle_stage == "deleted":
            raise MlflowException(f"experiment {name!r} is deleted in this store; restore it or choose "
                                  "another tracking.mlflow.experiment")
        experiment_id = experiment.experiment_id
    run = client.create_run(experiment_id, run_name=run_path.name)
    write_json(record_file, {"tracking_uri": uri, "experiment_id": experiment_id, "experiment": name,
                             "run_id": run.info.run_id})
    return run.info.run_id, False


def _model_card_file(run_path: Path) -> Optional[Path]:
    """``RUN_DIR/model_card.json`` when training wrote one."""
    from .model_card import CARD_FILE

    card = run_path / CARD_FILE
    return card if card.is_file() else None
