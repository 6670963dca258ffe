"""Filesystem helpers: files and directories that appear complete or not at all.

Every file a killed process could leave half-written is written atomically (a temporary file
in the same directory, fsynced, then ``os.replace``); whole directories are staged beside
their target and renamed into place.

Example:
    >>> write_json(Path("runs/r1/metrics.json"), {"val": {"iou": 0.9}})   # never truncated
    >>> with staged_directory(Path("models/buildings/3"), ".export") as staging:
    ...     write_everything_into(staging)
    # models/buildings/3 now holds the new content; readers never saw a half-written folder
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


@contextmanager
def staged_directory(target, prefix: str = ".staging"):
    """Yield an empty directory beside ``target``; when the block finishes without an error it
    replaces ``target`` in one rename (an existing ``target`` is removed first), otherwise it is
    deleted and ``target`` is left as it was. The staged folder gets the usual 0755 mode
    (``mkdtemp`` creates 0700, which would hide it from a server running as another user)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{prefix}-{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def file_lock(path):
    """Hold an exclusive advisory lock on the file ``path`` (created if needed) for the block:
    other processes (and threads) entering ``file_lock`` on the same path wait. ``fcntl.flock``
    on POSIX, ``msvcrt.locking`` on Windows; the lock goes with the process if it dies.

    Example:
        >>> with file_lock(root.parent / f".{root.name}.lock"):
        ...     if not is_complete(root): generate(root)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # Windows
            import msvcrt

            handle.seek(0)
            while True:
                try:
                    msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:  # LK_LOCK gives up after ~10 s: keep waiting
                    continue
            try:
                yield
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def remove_stale_staging(target, prefix: str = ".staging") -> list:
    """Delete the staging folders :func:`staged_directory` left beside ``target`` when a process was
    killed mid-way (``<prefix>-<name>.*.partial``). Call it only while holding the lock that
    guards writers of ``target``: then no live writer owns one. Returns the removed paths."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    stale = sorted(p for p in target.parent.glob(f"{prefix}-{target.name}.*.partial") if p.is_dir())
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    if stale:
        log.info("removed %d stale staging folder(s) of an interrupted run: %s", len(stale),
                 ", ".join(p.name for p in stale))
    return stale


# ------------------------------------------------------------------------------------------
# Atomic files
# ------------------------------------------------------------------------------------------
def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename: never a truncated file."""
    path = Path(path)
    # ".<name>.<random>.tmp": the pattern rundir.remove_stale_temporaries clears after a kill
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def save_model_atomic(model, path) -> None:
    """``model.save(path)`` (a ``.keras`` file) without ever leaving a truncated file at ``path``."""
    with atomic_path(path, ".keras") as tmp:
        model.save(tmp)


def save_weights_atomic(model, path) -> None:
    """``model.save_weights(path)`` (a ``.weights.h5`` file, optimizer state included), atomically."""
    with atomic_path(path, ".weights.h5") as tmp:
        model.save_weights(tmp)


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
