"""Raster access: open GeoTIFF/PNG/JPEG scenes, read windows with band selection and nodata, and
compute per-band normalization statistics.

Example:
    >>> info = open_raster("scene.tif")
    >>> image, valid = read_window(info, Window(0, 0, 256, 256))
"""
from __future__ import annotations

import json
import threading
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window


class RasterError(ValueError):
    """A raster file cannot be used; the message names the file."""


@dataclass
class RasterInfo:
    """What the pipeline needs to know about one raster file (no open handle kept)."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    nodata: Optional[float]
    crs: Optional[str]
    transform: tuple
    bands: list = field(default_factory=list)  # 1-based band indexes to read

    @property
    def num_bands(self) -> int:
        return len(self.bands)

    @property
    def affine(self):
        return rasterio.Affine(*self.transform[:6])


_local = threading.local()


def _handle(path: str):
    """A per-thread open dataset: rasterio handles must not be shared between threads."""
    cache = getattr(_local, "handles", None)
    if cache is None:
        cache = _local.handles = {}
    handle = cache.get(path)
    if handle is None or handle.closed:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                handle = rasterio.open(path)
        except RasterioIOError as exc:
            raise RasterError(f"cannot read raster {path}: {exc}") from None
        cache[path] = handle
    return handle


def close_handles() -> None:
    """Close this thread's cached dataset handles (e.g. before deleting files)."""
    for handle in getattr(_local, "handles", {}).values():
        handle.close()
    _local.handles = {}


def open_raster(path, bands: Sequence[int] = (), check_read: bool = True) -> RasterInfo:
    """Open ``path`` and describe it; raise RasterError naming the file if it is unusable.

    ``check_read`` decodes the last block so truncated files fail here rather than mid-training.
    """
    path = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"raster file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                count = src.count
                bands = list(bands) or list(range(1, count + 1))
                bad = [b for b in bands if not 1 <= b <= count]
                if bad:
                    raise RasterError(
                        f"{path}: band indexes {bad} requested but the file has {count} band(s)"
                    )
                if check_read:
                    # read the first and the last row: a truncated file fails on the last
                    src.read(1, window=Window(0, 0, src.width, 1))
                    src.read(1, window=Window(0, src.height - 1, src.width, 1))
                return RasterInfo(
                    path=path,
                    width=src.width,
                    height=src.height,
                    count=count,
                    dtype=src.dtypes[0],
                    nodata=src.nodata,
                    crs=src.crs.to_string() if src.crs else None,
                    transform=tuple(src.transform)[:6],
                    bands=bands,
                )
    except RasterError:
        raise
    except (RasterioIOError, rasterio.errors.RasterioError) as exc:
        raise RasterError(f"cannot read raster {path} (corrupt or truncated?): {exc}") from None


def read_window(info: RasterInfo, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Read ``window`` (may extend past the edges) as float32 HxWxC plus a bool HxW valid mask.

    Pixels outside the raster, equal to nodata, or NaN in any band are invalid and set to 0.
    """
    col, row, width, height = int(window.col_off), int(window.row_off), int(window.width), int(window.height)
    image = np.zeros((height, width, info.num_bands), np.float32)
    valid = np.zeros((height, width), bool)
    c0, r0 = max(col, 0), max(row, 0)
    c1, r1 = min(col + width, info.width), min(row + height, info.height)
    if c1 <= c0 or r1 <= r0:
        return image, valid
    src = _handle(info.path)
    try:
        data = src.read(info.bands, window=Window(c0, r0, c1 - c0, r1 - r0))
    except rasterio.errors.RasterioError as exc:
        raise RasterError(f"cannot read window {window} of {info.path}: {exc}") from None
    data = np.moveaxis(data, 0, -1).astype(np.float32, copy=False)
    ok = np.ones(data.shape[:2], bool)
    if info.nodata is not None and not np.isnan(info.nodata):
        ok &= ~np.all(data == info.nodata, axis=-1)
    nan = np.isnan(data)
    if nan.any():
        ok &= ~nan.any(axis=-1)
        data = np.where(nan, 0.0, data)
    data[~ok] = 0.0
    image[r0 - row : r1 - row, c0 - col : c1 - col] = data
    valid[r0 - row : r1 - row, c0 - col : c1 - col] = ok
    return image, valid


@dataclass
class Normalization:
    """Per-band normalization, stored with a run as ``normalization.json``.

    ``method`` is ``meanstd`` ((x - mean) / std) or ``percentile`` (clip to [low, high] and scale
    to [0, 1]). The same numbers are applied in the tf.data pipeline and inside exported models.
    """

    method: str
    mean: list
    std: list
    low: list
    high: list
    band_names: list = field(default_factory=list)

    @property
    def offset(self) -> np.ndarray:
        return np.asarray(self.mean if self.method == "meanstd" else self.low, np.float32)

    @property
    def scale(self) -> np.ndarray:
        if self.method == "meanstd":
            return np.asarray(self.std, np.float32)
        return np.maximum(np.asarray(self.high, np.float32) - self.offset, 1e-6)

    @property
    def clip(self) -> Optional[tuple[np.ndarray, np.ndarray]]:
        if self.method == "percentile":
            return np.asarray(self.low, np.float32), np.asarray(self.high, np.float32)
        return None

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Normalize an HxWxC (or NxHxWxC) float array with numpy."""
        if self.clip is not None:
            image = np.clip(image, *self.clip)
        return (image - self.offset) / self.scale

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path) -> "Normalization":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"normalization statistics not found: {path}")
        return cls(**json.loads(path.read_text()))


def compute_normalization(
    infos: Sequence[RasterInfo],
    method: str = "meanstd",
    percentiles: Sequence[float] = (2.0, 98.0),
    max_pixels_per_scene: int = 1_000_000,
    band_names: Sequence[str] = (),
) -> Normalization:
    """Per-band statistics over valid (non-nodata, non-NaN) pixels of the training scenes.

    Large scenes are read decimated (nearest) to at most ``max_pixels_per_scene`` pixels, so this
    is bounded in time and memory whatever the scene size.
    """
    samples = []
    for info in infos:
        factor = max(1.0, np.sqrt(info.width * info.height / max_pixels_per_scene))
        out_h, out_w = max(1, int(info.height / factor)), max(1, int(info.width / factor))
        src = _handle(info.path)
        data = src.read(info.bands, out_shape=(info.num_bands, out_h, out_w))
        data = np.moveaxis(data, 0, -1).reshape(-1, info.num_bands).astype(np.float64)
        ok = ~np.isnan(data).any(axis=1)
        if info.nodata is not None and not np.isnan(info.nodata):
            ok &= ~np.all(data == info.nodata, axis=1)
        samples.append(data[ok])
    values = np.concatenate(samples) if samples else np.zeros((0, 0))
    if values.shape[0] == 0:
        raise RasterError(
            "cannot compute normalization statistics: no valid pixels in "
            + ", ".join(i.path for i in infos)
        )
    mean = values.mean(axis=0)
    std = np.maximum(values.std(axis=0), 1e-6)
    low = np.percentile(values, percentiles[0], axis=0)
    high = np.percentile(values, percentiles[1], axis=0)
    return Normalization(
        method=method,
        mean=mean.tolist(),
        std=std.tolist(),
        low=low.tolist(),
        high=high.tolist(),
        band_names=list(band_names),
    )
