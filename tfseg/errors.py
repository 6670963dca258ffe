"""The root of tfseg's errors, and how the command lines report them.

Every error tfseg raises about its input (a config key, a file, an argument, a model card, a
request) is a :class:`TfsegError`, itself a ``ValueError``: a caller catches "any tfseg input
error" with one ``except TfsegError``. The command lines report :data:`INPUT_ERRORS` (tfseg's,
a missing file, a bad value from a library underneath) as one ``error: ...`` line on stderr and
exit 2, through :func:`report`; anything else is a bug and keeps its traceback.

Example:
    >>> from tfseg import TfsegError, load_config
    >>> try:
    ...     load_config("configs/default.yaml", ["train.epochs=-1"])
    ... except TfsegError as error:
    ...     print(error)
"""
from __future__ import annotations

import sys


class TfsegError(ValueError):
    """A tfseg input cannot be used; the message names the file, key or argument and what was
    expected."""


INPUT_ERRORS = (ValueError, FileNotFoundError)


def report(error: BaseException, prefix: str = "", code: int = 2) -> int:
    """Print ``error: <prefix><error>`` on stderr; returns the exit code ``code``."""
    print(f"error: {prefix}{error}", file=sys.stderr)
    return code
