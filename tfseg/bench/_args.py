"""argparse types shared by the benchmarks: a count that must be positive (or not negative) is
refused by the parser, naming the argument, instead of failing later with a ZeroDivisionError."""
from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An ``int`` >= 1 (argparse ``type``)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An ``int`` >= 0 (argparse ``type``)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
