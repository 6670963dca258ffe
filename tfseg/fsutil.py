"""Filesystem helpers: directories that appear complete or not at all.

Example:
    >>> with staged_directory(Path("models/buildings/3"), ".export") as staging:
    ...     write_everything_into(staging)
    # models/buildings/3 now holds the new content; readers never saw a half-written folder
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


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
