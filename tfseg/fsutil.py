"""Filesystem helpers: directories that appear complete or not at all.

Example:
    >>> with staged_directory(Path("models/buildings/3"), ".export") as staging:
    ...     write_everything_into(staging)
    # models/buildings/3 now holds the new content; readers never saw a half-written folder
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
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
