"""Raster access: open GeoTIFF/PNG/JPEG scenes, read windows with band selection and nodata, and
compute per-band normalization statistics.

Example:
    >>> info = open_raster("scene.tif")
    >>> image, valid = read_window(info, Window(0, 0, 256, 256))
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from ..errors import TfsegError


class RasterError(TfsegError):
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
    # 1-based band whose GDAL mask is the file's per-dataset valid mask (an internal or external
    # ``.msk`` mask, or an alpha band): 0 = none, nothing more is read
    mask_band: int = 0
    alpha_bands: list = field(default_factory=list)  # bands GDAL uses as the mask (not image bands)

    @property
    def num_bands(self) -> int:
        return len(self.bands)

    @property
    def affine(self):
        return rasterio.Affine(*self.transform[:6])


@dataclass
class StackedRasterInfo(RasterInfo):
    """Several rasters covering the same ground at different resolutions, stacked band-wise on
    the grid of this info (``width`` x ``height``); images are resampled bilinearly, e.g. Dstl's
    RGB + M + A (SWIR) + P products as one 20-channel raster.

    Example:
        >>> info = stack_rasters([open_raster("6010_1_2.tif"), open_raster("6010_1_2_M.tif")])
    """

    components: list = field(default_factory=list)  # RasterInfo of each stacked raster

    @property
    def num_bands(self) -> int:
        return sum(c.num_bands for c in self.components)


@dataclass
class ArrayInfo(RasterInfo):
    """A raster held in memory (e.g. a TFDS example): ``array`` is HxWxC in its own dtype."""

    array: Optional[np.ndarray] = None


def array_info(array: np.ndarray, name: str, nodata: Optional[float] = None) -> ArrayInfo:
    """Wrap an HxWxC (or HxW) array as a raster the pipeline can read."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    height, width, count = array.shape
    return ArrayInfo(
        path=name, width=width, height=height, count=count, dtype=str(array.dtype), nodata=nodata,
        crs=None, transform=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), bands=list(range(1, count + 1)),
        array=array,
    )


def stack_rasters(infos: Sequence[RasterInfo], base: int = 0) -> StackedRasterInfo:
    """Stack rasters of the same footprint onto the grid of ``infos[base]``."""
    ref = infos[base]
    return StackedRasterInfo(
        path=ref.path, width=ref.width, height=ref.height, count=sum(i.num_bands for i in infos),
        dtype="float32", nodata=None, crs=ref.crs, transform=ref.transform,
        bands=list(range(1, sum(i.num_bands for i in infos) + 1)), components=list(infos),
    )


class _HandlePool:
    """Open rasterio datasets kept across reads and threads.

    A rasterio handle must not be used by two threads at once, so a read checks a handle out
    (or opens one) and returns it afterwards: there are as many handles per file as reads ever
    ran at once, and they outlive the threads that used them. tf.data creates fresh threads
    for every iterator (each epoch, each evaluation pass); with per-thread handles each of them
    reopened the file and re-decoded its blocks into a cold GDAL block cache. A file changed on
    disk (size or modification time) is reopened."""

    def __init__(self):
        self.lock = threading.Lock()
        self.free: dict = {}

    @contextlib.contextmanager
    def handle(self, path: str):
        path = str(path)
        try:
            stat = os.stat(path)
            key = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        except OSError:
            key = None
        with self.lock:
            free = self.free.get(path, [])
            while free and (free[-1][1] != key or free[-1][0].closed):
                free.pop()[0].close()
            entry = free.pop() if free else None
        if entry is None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", NotGeoreferencedWarning)
                    entry = (rasterio.open(path), key)
            except RasterioIOError as exc:
                raise RasterError(f"cannot read raster {path}: {exc}") from None
        try:
            yield entry[0]
        finally:
            with self.lock:
                self.free.setdefault(path, []).append(entry)

    def close(self, path: Optional[str] = None) -> None:
        """Close the kept handles (of ``path``, or all)."""
        with self.lock:
            paths = [str(path)] if path is not None else list(self.free)
            for name in paths:
                for handle, _ in self.free.pop(name, []):
                    handle.close()


_POOL = _HandlePool()


def raster_handle(path):
    """``with raster_handle(path) as src:`` an open rasterio dataset of ``path`` for this read
    only (kept open for the next one; see :class:`_HandlePool`)."""
    return _POOL.handle(path)


close_handles = _POOL.close


def _dataset_mask(src) -> tuple[int, list]:
    """``(mask_band, alpha_bands)`` of an open dataset: the first band whose GDAL mask is a
    per-dataset mask (an internal / external ``.msk`` mask or an alpha band; 0 = none) and the
    bands GDAL uses as that alpha mask (RGBA, grey + alpha)."""
    from rasterio.enums import ColorInterp, MaskFlags

    flags = src.mask_flag_enums
    mask_band = next((b for b, f in enumerate(flags, 1) if MaskFlags.per_dataset in f), 0)
    alpha = []
    if any(MaskFlags.alpha in f for f in flags):
        alpha = [b for b, interp in enumerate(src.colorinterp, 1) if interp == ColorInterp.alpha]
    return mask_band, alpha


def open_raster(path, bands: Sequence[int] = (), check_read: bool = True) -> RasterInfo:
    """Open ``path`` and describe it; raise RasterError naming the file if it is unusable.

    ``check_read`` decodes the last block so truncated files fail here rather than mid-training.
    The file's GDAL dataset mask (an internal or ``.msk`` mask, or an alpha band) marks its
    invalid pixels, as its nodata value does; an alpha band is a mask, not an image band: it is
    not among the default ``bands`` (ask for it by index to read it as a band).
    """
    path = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"raster file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                count = src.count
                mask_band, alpha = _dataset_mask(src)
                bands = list(bands) or [b for b in range(1, count + 1) if b not in alpha]
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
                    mask_band=mask_band,
                    alpha_bands=alpha,
                )
    except RasterError:
        raise
    except (RasterioIOError, rasterio.errors.RasterioError) as exc:
        raise RasterError(f"cannot read raster {path} (corrupt or truncated?): {exc}") from None


def read_window(info: RasterInfo, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Read ``window`` (may extend past the edges) as float32 HxWxC plus a bool HxW valid mask.

    Pixels outside the raster, equal to nodata (in every band), NaN in any band or masked by
    the file's dataset mask / alpha band (0) are invalid and set to 0.
    """
    if isinstance(info, StackedRasterInfo):
        return _read_stacked(info, window)
    image, valid = read_window_raw(info, window)
    return image.astype(np.float32, copy=False), valid


def native_dtype(info: RasterInfo) -> np.dtype:
    """The dtype :func:`read_window_raw` returns for ``info`` (float32 for stacks/odd types)."""
    dtype = np.dtype(info.dtype)
    if isinstance(info, StackedRasterInfo) or dtype.kind not in "uif" or dtype.itemsize > 4:
        return np.dtype(np.float32)
    return dtype


def read_window_raw(info: RasterInfo, window: Window, fill=0) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`read_window` but in the raster's own dtype (no float copy), invalid pixels
    set to ``fill`` (e.g. the model card's nodata value)."""
    image, valid = read_window_view(info, window, fill)
    return np.ascontiguousarray(image), valid


@functools.lru_cache(maxsize=64)
def _typed_nodata(nodata: float, dtype: str):
    """``nodata`` as a scalar of ``dtype`` when it fits (a same-dtype compare makes no float64
    temporaries), else as a float."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui" and nodata.is_integer() and np.iinfo(dtype).min <= nodata <= np.iinfo(dtype).max:
        return dtype.type(nodata)
    return nodata


def read_window_view(info: RasterInfo, window: Window, fill=0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_window_raw` without the final copy: the HxWxC image may be a strided view
    of the band-sequential read, so a caller that flips/rotates copies the tile only once."""
    if isinstance(info, StackedRasterInfo):
        return _read_stacked(info, window, fill)
    dtype = native_dtype(info)
    col, row, width, height = int(window.col_off), int(window.row_off), int(window.width), int(window.height)
    c0, r0 = max(col, 0), max(row, 0)
    c1, r1 = min(col + width, info.width), min(row + height, info.height)
    inside = c0 == col and r0 == row and c1 == col + width and r1 == row + height
    if c1 <= c0 or r1 <= r0:
        return np.full((height, width, info.num_bands), fill, dtype), np.zeros((height, width), bool)
    masked = None
    if isinstance(info, ArrayInfo):
        data = np.moveaxis(info.array[r0:r1, c0:c1][..., [b - 1 for b in info.bands]], -1, 0)
    else:
        part = Window(c0, r0, c1 - c0, r1 - r0)
        try:
            with raster_handle(info.path) as src:
                data = src.read(info.bands, window=part)
                # the dataset mask only where the file has one (RasterInfo.mask_band, from open_raster)
                masked = src.read_masks(info.mask_band, window=part) if info.mask_band else None
        except rasterio.errors.RasterioError as exc:
            raise RasterError(f"cannot read window {window} of {info.path}: {exc}") from None
    data = data.astype(dtype, copy=False)  # (C, H, W): band-sequential checks are fastest
    ok = None
    if info.nodata is not None and not np.isnan(info.nodata):
        nodata = _typed_nodata(float(info.nodata), dtype.str)
        ok = data[0] != nodata
        for band in data[1:]:
            ok |= band != nodata
    if masked is not None:
        ok = masked != 0 if ok is None else ok & (masked != 0)
    if dtype.kind == "f":
        nan = np.isnan(data)
        if nan.any():
            ok = (ok if ok is not None else np.ones(data.shape[1:], bool)) & ~nan.any(axis=0)
            data = np.where(nan, fill, data).astype(dtype, copy=False)
    if ok is None:
        ok = np.ones(data.shape[1:], bool)
    elif not ok.all():
        data = np.where(ok[None], data, fill).astype(dtype, copy=False)
    data = data.transpose(1, 2, 0)
    if inside:
        return data, ok
    image = np.full((height, width, info.num_bands), fill, dtype)
    valid = np.zeros((height, width), bool)
    image[r0 - row : r1 - row, c0 - col : c1 - col] = data
    valid[r0 - row : r1 - row, c0 - col : c1 - col] = ok
    return image, valid


def _read_stacked(info: StackedRasterInfo, window: Window, fill=0) -> tuple[np.ndarray, np.ndarray]:
    """Each component read over the same ground footprint, resampled to the window's pixels."""
    from rasterio.enums import Resampling

    col, row, width, height = float(window.col_off), float(window.row_off), int(window.width), int(window.height)
    parts, valid = [], np.ones((height, width), bool)
    for comp in info.components:
        if comp.width == info.width and comp.height == info.height:
            image, ok = read_window(comp, window)
        else:
            sx, sy = comp.width / info.width, comp.height / info.height
            src_window = Window(col * sx, row * sy, width * sx, height * sy)
            try:
                with raster_handle(comp.path) as src:
                    data = src.read(
                        comp.bands, window=src_window, out_shape=(comp.num_bands, height, width),
                        resampling=Resampling.bilinear, boundless=True, fill_value=0,
                        masked=False,
                    )
                    masked = src.read_masks(comp.mask_band, window=src_window, out_shape=(height, width),
                                            boundless=True) if comp.mask_band else None
            except rasterio.errors.RasterioError as exc:
                raise RasterError(f"cannot read window {src_window} of {comp.path}: {exc}") from None
            image = np.moveaxis(data, 0, -1).astype(np.float32)
            ok = ~np.isnan(image).any(axis=-1)
            image = np.where(np.isnan(image), 0.0, image)
            # outside the component's extent is invalid, exactly as for single rasters
            rows = (np.arange(height) + row + 0.5) * sy
            cols = (np.arange(width) + col + 0.5) * sx
            ok &= ((rows >= 0) & (rows < comp.height))[:, None] & ((cols >= 0) & (cols < comp.width))[None, :]
            if comp.nodata is not None and not np.isnan(comp.nodata):
                ok &= ~np.all(image == comp.nodata, axis=-1)
            if masked is not None:
                ok &= masked != 0
        parts.append(image)
        valid &= ok
    image = np.concatenate(parts, axis=-1)
    image[~valid] = fill
    return image, valid


def band_names(info: RasterInfo) -> list:
    """Names of the bands read from ``info``: file band descriptions, else ``band<N>``
    (stacked rasters: ``<file stem>:<name>`` per component; in-memory arrays: ``band<N>``)."""
    if isinstance(info, StackedRasterInfo):
        return [f"{Path(c.path).stem}:{name}" for c in info.components for name in band_names(c)]
    if isinstance(info, ArrayInfo):
        return [f"band{b}" for b in info.bands]
    with raster_handle(info.path) as src:
        descriptions = src.descriptions
    return [descriptions[b - 1] or f"band{b}" for b in info.bands]


def read_decimated(info: RasterInfo, max_pixels: int = 1_000_000) -> np.ndarray:
    """The whole raster read decimated (nearest) to at most ``max_pixels``, as float64 (N, C);
    pixels masked by the file's dataset mask / alpha band are NaN."""
    factor = max(1.0, np.sqrt(info.width * info.height / max_pixels))
    out_h, out_w = max(1, int(info.height / factor)), max(1, int(info.width / factor))
    if isinstance(info, ArrayInfo):
        rows = np.linspace(0, info.height - 1, out_h).astype(int)
        cols = np.linspace(0, info.width - 1, out_w).astype(int)
        data = info.array[rows][:, cols][..., [b - 1 for b in info.bands]]
        return data.reshape(-1, info.num_bands).astype(np.float64)
    if isinstance(info, StackedRasterInfo):
        parts = [_read_decimated_file(comp, out_h, out_w) for comp in info.components]
        return np.concatenate(parts, axis=-1).reshape(-1, info.num_bands)
    return _read_decimated_file(info, out_h, out_w).reshape(-1, info.num_bands)


def _read_decimated_file(info: RasterInfo, out_h: int, out_w: int) -> np.ndarray:
    """``info``'s bands read decimated to ``out_h`` x ``out_w`` as float64 HxWxC, masked pixels NaN."""
    with raster_handle(info.path) as src:
        data = np.moveaxis(src.read(info.bands, out_shape=(info.num_bands, out_h, out_w)), 0, -1).astype(np.float64)
        if info.mask_band:
            data[src.read_masks(info.mask_band, out_shape=(out_h, out_w)) == 0] = np.nan
    return data


@dataclass
class Normalization:
    """Per-band normalization, stored with a run as ``normalization.json``.

    ``method`` is ``meanstd`` ((x - mean) / std) or ``percentile`` (clip to [low, high] and scale
    to [0, 1]). The numbers become the model's own preprocessing layer
    (:class:`tfseg.models.preprocessing.Preprocess`) and are recorded in the model card.
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
        return np.asarray(self.high, np.float32) - self.offset

    def constant_bands(self) -> list:
        """Indexes of bands with zero spread (std 0, or percentile high == low): they cannot be
        normalized."""
        if self.method == "meanstd":
            return [i for i, std in enumerate(self.std) if not std > 0]
        return [i for i, (lo, hi) in enumerate(zip(self.low, self.high)) if not hi > lo]

    @property
    def clip(self) -> Optional[tuple[np.ndarray, np.ndarray]]:
        if self.method == "percentile":
            return np.asarray(self.low, np.float32), np.asarray(self.high, np.float32)
        return None

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Normalize an HxWxC (or NxHxWxC) float array with numpy (no no-data handling): the
        reference the model's preprocessing layer is tested against."""
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
    """Per-band statistics over valid (non-nodata, non-NaN, not masked) pixels of the training scenes.

    Large scenes are read decimated (nearest) to at most ``max_pixels_per_scene`` pixels, so this
    is bounded in time and memory whatever the scene size.
    """
    samples = []
    for info in infos:
        data = read_decimated(info, max_pixels_per_scene)
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
    norm = Normalization(
        method=method,
        mean=values.mean(axis=0).tolist(),
        std=values.std(axis=0).tolist(),
        low=np.percentile(values, percentiles[0], axis=0).tolist(),
        high=np.percentile(values, percentiles[1], axis=0).tolist(),
        band_names=list(band_names),
    )
    constant = norm.constant_bands()
    if constant:
        names = list(band_names) or [f"band{i + 1}" for i in range(values.shape[1])]
        detail = ", ".join(f"band {i + 1} ({names[i]}) = {norm.mean[i]:g}" for i in constant)
        raise RasterError(
            f"cannot normalize ({method}): constant band(s) over the valid pixels of "
            f"{', '.join(i.path for i in infos)}: {detail}; drop them with data.bands"
        )
    return norm
