"""Samplers: which windows of which scenes. Sizes and strides are in pixels.

Example:
    >>> grid_windows(1000, 700, window_size=256, overlap=32)[:2]
    [Window(col_off=0, row_off=0, width=256, height=256), Window(col_off=224, ...)]
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from rasterio.windows import Window


def grid_offsets(length: int, window_size: int, overlap: int) -> list[int]:
    """Offsets covering ``[0, length)`` with the given overlap; the last window ends at the edge.

    A length smaller than the window gives one window at 0 (read boundless, padded).
    """
    if length <= window_size:
        return [0]
    stride = window_size - overlap
    offsets = list(range(0, length - window_size + 1, stride))
    if offsets[-1] + window_size < length:
        offsets.append(length - window_size)
    return offsets


def grid_windows(width: int, height: int, window_size: int, overlap: int = 0) -> list[Window]:
    """A regular grid of windows over a ``width`` x ``height`` raster."""
    return [
        Window(col, row, window_size, window_size)
        for row in grid_offsets(height, window_size, overlap)
        for col in grid_offsets(width, window_size, overlap)
    ]


def owned_ranges(offsets: Sequence[int], window_size: int, length: int) -> list[tuple[int, int]]:
    """For the windows at ``offsets`` along one axis, the part ``[start, stop)`` (window
    coordinates) each one scores alone: overlaps split at their middle, so every pixel of
    ``[0, length)`` is owned by exactly one window (metrics count it once)."""
    out = []
    for k, offset in enumerate(offsets):
        start = 0 if k == 0 else (offsets[k - 1] + window_size + offset) // 2 - offset
        stop = window_size if k == len(offsets) - 1 else (offset + window_size + offsets[k + 1]) // 2 - offset
        out.append((max(start, 0), min(stop, window_size, length - offset)))
    return out


def grid_windows_owned(width: int, height: int, window_size: int, overlap: int = 0) -> list[tuple[Window, tuple]]:
    """:func:`grid_windows` with each window's owned part ``(row0, row1, col0, col1)``."""
    rows, cols = grid_offsets(height, window_size, overlap), grid_offsets(width, window_size, overlap)
    row_owned, col_owned = owned_ranges(rows, window_size, height), owned_ranges(cols, window_size, width)
    return [
        (Window(col, row, window_size, window_size), (*row_owned[i], *col_owned[j]))
        for i, row in enumerate(rows)
        for j, col in enumerate(cols)
    ]


def random_window(
    sizes: Sequence[tuple[int, int]], window_size: int, rng: np.random.Generator
) -> tuple[int, Window]:
    """A uniformly placed window: scenes are picked in proportion to their area."""
    if len(sizes) == 1:
        index = 0
    else:
        areas = np.cumsum([float(w) * h for w, h in sizes])
        index = min(int(np.searchsorted(areas, rng.random() * areas[-1], side="right")), len(sizes) - 1)
    width, height = sizes[index]
    col = int(rng.integers(0, max(width - window_size, 0) + 1))
    row = int(rng.integers(0, max(height - window_size, 0) + 1))
    return index, Window(col, row, window_size, window_size)
