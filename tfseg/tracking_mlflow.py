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

import hashlib
import json
import logging
import math
import os
import re
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from .errors import TfsegError
from .fsutil import write_json
from .rundir import git_commit
from .tracking import GuardedTracker, check_status, display_uri, _short, _warn  # noqa: F401 - display_uri: API

log = logging.getLogger("tfseg.tracking")

RUN_FILE = "mlflow_run.json"
LOCAL_DB = "mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"
FINAL_PREFIX = "final/"
# URI schemes MLflow's tracking client understands (a store URI or a server)
SCHEMES = {"http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks", "databricks-uc",
           "uc"}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
# MLflow's rule for metric, param and tag names: letters, digits, _ - . / : and spaces, no path
# segment that normalizes away ("", ".", ".."), at most 250 characters (tag *values* are free text)
_KEY_REFUSED = re.compile(r"[^\w./\- :]+")
MAX_KEY_LENGTH = 250
FILE_STORE_REFUSED_SINCE = (3, 13)  # MLflow 3.13 refuses file stores unless MLFLOW_ALLOW_FILE_STORE=true


class MlflowConfigError(TfsegError):
    """A tracking URI (config key, environment variable or argument) that is neither a URI nor a path."""


def check_uri(value: str, key: str) -> str:
    """``value`` as MLflow tracking URI; a path ending in ``.db`` becomes ``sqlite:///<abs path>``.

    Raises :class:`MlflowConfigError` naming ``key`` when it is neither a URI nor a path.
    """
    expected = ("expected a tracking URI (http://HOST:PORT, https://..., sqlite:///PATH.db, postgresql://..., "
                "databricks) or a local path to a SQLite file (PATH.db)")
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
        if base == "file":
            _check_file_store(value, key)
        return text
    if re.match(r"^[^/\\]*:", text) and not re.match(r"^[A-Za-z]:[\\/]", text):
        # "localhost:5000", "mlflow:db": a scheme or host without '//', not a path
        raise MlflowConfigError(f"{key}: {expected}, got {value!r} (a server needs http://{text})")
    path = Path(text).expanduser()
    if path.suffix in (".db", ".sqlite"):
        return "sqlite:///" + str(path.resolve())
    _check_file_store(value, key)  # any other path is a file store (a directory) to MLflow
    return str(path.resolve())


def _check_file_store(value: str, key: str) -> None:
    """Refuse a file store (``file:///DIR`` or a directory path) when the installed MLflow refuses
    it (3.13 and later, unless ``MLFLOW_ALLOW_FILE_STORE=true``)."""
    from importlib import metadata

    try:
        version = metadata.version("mlflow")
    except metadata.PackageNotFoundError:
        return
    found = re.match(r"(\d+)\.(\d+)", version)
    if not found or tuple(map(int, found.groups())) < FILE_STORE_REFUSED_SINCE:
        return
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("true", "1"):
        return
    raise MlflowConfigError(
        f"{key}: {value!r} is an MLflow file store (a directory), which the installed MLflow {version} "
        "refuses (file stores are in maintenance mode since MLflow 3.13); use a SQLite store (PATH.db or "
        "sqlite:///PATH.db) or a server (http://HOST:PORT), or set MLFLOW_ALLOW_FILE_STORE=true to use it anyway")


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
    """The resolved config as MLflow params: ``section.key -> str`` (lists/dicts as JSON); a
    password in a URI (``tracking.mlflow.uri=https://user:secret@host``) is masked as in the log lines."""
    from . import config as config_lib

    return {key: display_uri(json.dumps(value) if isinstance(value, (list, dict)) else str(value))
            for key, value in config_lib._flatten(cfg.to_dict()).items()}


def mlflow_key(name) -> str:
    """``name`` as an MLflow metric/param/tag name: each run of characters MLflow refuses becomes
    ``_`` (``road (paved)`` -> ``road _paved_``), an empty, ``.`` or ``..`` path segment becomes
    ``_``, and a name over 250 characters is cut and ends with a hash of the whole name."""
    text = "/".join(part if part not in ("", ".", "..") else "_"
                    for part in _KEY_REFUSED.sub("_", str(name)).split("/"))
    if len(text) > MAX_KEY_LENGTH:
        text = text[:MAX_KEY_LENGTH - 11] + "_" + hashlib.sha1(str(name).encode()).hexdigest()[:10]
    return text


def mlflow_keys(names) -> dict:
    """``{name: MLflow key}`` for ``names`` (:func:`mlflow_key`); two names that would get the same
    key (``a (b)`` and ``a [b]``) are told apart by a hash of the name, so no value overwrites another."""
    names = list(dict.fromkeys(names))
    keys = {name: mlflow_key(name) for name in names}
    taken = {}
    for name in names:
        taken.setdefault(keys[name], []).append(name)
    for key, group in taken.items():
        if len(group) > 1:
            for name in group:
                if name != key:
                    suffix = "_" + hashlib.sha1(str(name).encode()).hexdigest()[:8]
                    keys[name] = key[:MAX_KEY_LENGTH - len(suffix)] + suffix
    return keys


def flat_numbers(tree: dict, prefix: str = "") -> dict:
    """Numeric leaves of ``tree`` as ``prefix + a/b/c -> float`` (bools, strings and None skipped;
    NaN kept, MLflow stores it; ±inf kept here, see :meth:`MlflowTracker._metrics`)."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_numbers(value, path + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[path] = float(value)
    return out


class MlflowTracker(GuardedTracker):
    """One MLflow run attached to a run directory; every call is guarded (one warning, then off)."""

    service = "MLflow"

    def __init__(self, client, run_id: str, uri: str, run_path: Path):
        self.client, self.run_id, self.uri, self.run_path = client, run_id, uri, Path(run_path)
        self._renamed: set = set()  # names already warned about (renamed for MLflow)
        self._warned_inf = False

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
        # on resume too when the first start never completed (it would have tagged tfseg.run_dir)
        tracker._guard(tracker._log_start, cfg, dataset_name, precision, resumed)
        tracker._guard(tracker.backfill)
        if not tracker._failed:
            log.info("MLflow run %s in %s (%s)", run_id, display_uri(uri), where)
        return tracker

    # -- logging -------------------------------------------------------------------------
    def _local_note(self) -> str:
        return f"recorded locally in {self.run_path}"

    def _renames(self, keys: dict, what: str) -> None:
        """One warning naming the names not yet reported that MLflow gets under another key."""
        renamed = {name: key for name, key in keys.items() if str(name) != key and name not in self._renamed}
        if renamed:
            self._renamed.update(renamed)
            _warn(f"MLflow: {what} renamed to names MLflow accepts (letters, digits, _ - . / : and spaces): "
                  + ", ".join(f"{name!r} -> {key!r}" for name, key in renamed.items()))

    def _log_start(self, cfg, dataset_name: str, precision: str, resumed: bool = False) -> None:
        """Params and tags; ``tfseg.run_dir`` is tagged last, so a run without it never completed
        its start and gets it again on resume (params already there are kept as they are)."""
        from mlflow.entities import Param, RunTag

        existing = {}
        if resumed:
            run = self.client.get_run(self.run_id)
            if "tfseg.run_dir" in run.data.tags:
                return
            existing = run.data.params
        commit = git_commit()
        user_tags = [str(t) for t in cfg.tracking.tags]
        tag_keys = mlflow_keys(user_tags)
        self._renames(tag_keys, "tracking.tags")
        tags = {"dataset": dataset_name or cfg.data.format, "model": cfg.model.name,
                "backbone": cfg.model.backbone or "plain", "precision": precision or cfg.train.precision,
                "git_commit": commit, **{tag_keys[t]: "true" for t in user_tags}}
        if user_tags:  # the tags as written (a tag key may have been renamed for MLflow)
            tags["tfseg.tags"] = json.dumps(user_tags, ensure_ascii=False)
        if commit != "unknown":
            tags["mlflow.source.git.commit"] = commit.split("+")[0]
        tags["tfseg.run_dir"] = str(self.run_path.resolve())  # last: marks a complete start
        params = [Param(k, v) for k, v in flat_params(cfg).items() if k not in existing]
        tag_list = [RunTag(k, str(v)) for k, v in tags.items()]
        for start in range(0, len(params), 100):  # MLflow's batch limit: 100 params, 100 tags
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        for start in range(0, len(tag_list), 100):
            self.client.log_batch(self.run_id, tags=tag_list[start:start + 100])

    def log_epoch(self, epoch: int, logs: dict) -> None:
        """One epoch's numbers (train/val metrics, ``learning_rate``) with ``step = epoch``."""
        self._guard(self._log_rows, [dict(logs or {}, epoch=epoch)])

    def _metrics(self, values: list, what: str) -> list:
        """``[(name, value, step)]`` as MLflow ``Metric``s: names made MLflow keys, NaN kept (a
        diverged run's series goes on), ±inf left out with one warning: MLflow's SQL stores
        would keep ±1.8e308 instead."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        keys = mlflow_keys(name for name, _, _ in values)
        self._renames(keys, what)
        infinite = sorted({name for name, value, _ in values if math.isinf(value)})
        if infinite and not self._warned_inf:
            self._warned_inf = True
            _warn(f"MLflow: infinite values of {', '.join(map(repr, infinite))} are not logged (MLflow's stores "
                  f"cannot hold ±inf; it would record ±1.8e308); {self._local_note()}")
        return [Metric(keys[name], value, stamp, step) for name, value, step in values if not math.isinf(value)]

    def _log_rows(self, rows: list) -> None:
        values = []
        for row in rows:
            step = int(row["epoch"])
            for key, value in row.items():
                if key == "epoch":
                    continue
                try:
                    values.append((key, float(value), step))
                except (TypeError, ValueError):
                    continue
        metrics = self._metrics(values, "metric names")
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def backfill(self) -> int:
        """Log the ``history.csv`` epochs this MLflow run does not hold yet; returns how many."""
        from .compare import read_history

        history_file = self.run_path / "history.csv"
        # numbers only (NaN included): an empty cell is a value the epoch did not have, not NaN
        rows = [r for r in read_history(history_file, blanks=False) if "epoch" in r] if history_file.is_file() else []
        if not rows:
            return 0
        columns = list(dict.fromkeys(k for row in rows for k in row if k != "epoch"))
        keys = mlflow_keys(columns)
        logged = {key: {m.step for m in self.client.get_metric_history(self.run_id, keys[key])} for key in columns}
        missing = []
        for row in rows:
            step = int(row["epoch"])
            values = {k: v for k, v in row.items() if k != "epoch" and step not in logged[k] and not math.isinf(v)}
            if values:
                missing.append(dict(values, epoch=step))
        if missing:
            self._log_rows(missing)
        return len(missing)

    def log_final(self, metrics: dict, run_path=None, log_model: bool = True) -> None:
        """``final/...`` metrics (metrics.json) and the run directory's artifacts."""
        run_path = Path(run_path or self.run_path)

        def log():
            final = self._metrics([(k, v, 0) for k, v in flat_numbers(metrics, FINAL_PREFIX).items()],
                                  "final metric names")
            for start in range(0, len(final), 1000):  # MLflow's batch limit
                self.client.log_batch(self.run_id, metrics=final[start:start + 1000])
            for name in ("history.csv", "metrics.json", "operating_point_search.csv"):
                if (run_path / name).is_file():
                    self.client.log_artifact(self.run_id, str(run_path / name))
            config = run_path / "config.yaml"
            if config.is_file():
                text = config.read_text(encoding="utf-8")
                if display_uri(text) == text:
                    self.client.log_artifact(self.run_id, str(config))
                else:  # a password in a URI (tracking.mlflow.uri): the artifact gets it masked
                    with tempfile.TemporaryDirectory(prefix="tfseg-mlflow-") as folder:
                        masked = Path(folder) / "config.yaml"
                        masked.write_text(display_uri(text), encoding="utf-8")
                        self.client.log_artifact(self.run_id, str(masked))
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
        """End the MLflow run with ``status`` (``FINISHED``, ``FAILED`` or ``KILLED``). Tried even
        after a logging error switched tracking off, so no run stays ``RUNNING``; a failure is
        one warning, never an exception."""
        check_status(status)
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as exc:  # noqa: BLE001 - tracking must never kill training
            _warn(f"MLflow: could not mark run {self.run_id} {status} ({type(exc).__name__}: {_short(exc)}); "
                  f"it may show as RUNNING in {display_uri(self.uri)}")

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
