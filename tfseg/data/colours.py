"""Colour decoding: colour-coded label masks (RGB, palette "P" mode or grey) to class indices.

Used by the labels (:class:`tfseg.data.labels.ColourMaskLabels`), the ``colour_mask`` data
format and ``tfseg.evaluate pixels``; it depends on nothing else of tfseg but raster access.

- ``read_colour_mask(path) -> uint8 HxWx3``: any PNG/JPEG/GeoTIFF mask as RGB ("P" mode and
  grey masks converted), decoded as training decodes it; a mask that is not 8-bit is an error.
- ``decode_colour_mask(rgb, palette, ignore_index=255, classes=None, report=True, source="")
  -> (labels uint8 HxW, unknown {"#rrggbb": pixel_count})``: colours in ``palette``
  (name -> "#RRGGBB") become the index of that name in ``classes`` (default: palette order);
  palette names not in ``classes`` and colours not in the palette become ``ignore_index``.

Example:
    >>> labels, unknown = decode_colour_mask(read_colour_mask("m.png"),
    ...     {"building": "#3C1098", "road": "#6EC1E4"}, ignore_index=255)
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import TfsegError

log = logging.getLogger(__name__)


class ColourMaskError(TfsegError):
    """A colour mask or palette is unusable; the message names the file or config key."""


def parse_hex(colour: str, key: str = "data.palette") -> tuple[int, int, int]:
    """'#RRGGBB' (or 'RRGGBB') -> (r, g, b); raises ColourMaskError naming ``key``."""
    text = str(colour).strip().lstrip("#")
    if len(text) != 6:
        raise ColourMaskError(f"config key '{key}': expected a colour '#RRGGBB', got {colour!r}")
    try:
        return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
    except ValueError:
        raise ColourMaskError(f"config key '{key}': expected a colour '#RRGGBB', got {colour!r}") from None


def _lookup(palette: dict, classes: Optional[Sequence[str]], ignore_index: int):
    """Sorted packed colours and the class index of each."""
    names = list(classes) if classes is not None else list(palette)
    keys, values = [], []
    for name, colour in palette.items():
        r, g, b = parse_hex(colour, f"data.palette.{name}")
        keys.append((r << 16) | (g << 8) | b)
        values.append(names.index(name) if name in names else ignore_index)
    if len(set(keys)) != len(keys):
        raise ColourMaskError(f"config key 'data.palette': two class names share a colour: {palette}")
    order = np.argsort(keys)
    return np.asarray(keys, np.int64)[order], np.asarray(values, np.uint8)[order]


def decode_colour_mask(
    rgb: np.ndarray,
    palette: dict,
    ignore_index: int = 255,
    classes: Optional[Sequence[str]] = None,
    report: bool = True,
    source: str = "",
) -> tuple[np.ndarray, dict]:
    """Class indices (uint8 HxW) of an RGB colour mask, and the colours not in ``palette``.

    ``report`` logs the unknown colours (once, with pixel counts) as a warning.

    Example:
        >>> rgb = np.zeros((2, 2, 3), np.uint8); rgb[0, 0] = (60, 16, 152)
        >>> decode_colour_mask(rgb, {"building": "#3C1098", "land": "#000000"})[0]
        array([[0, 1], [1, 1]], dtype=uint8)
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise ColourMaskError(
            f"colour mask {source or '<array>'}: expected HxWx3 RGB, got shape {rgb.shape}"
        )
    rgb = rgb[..., :3].astype(np.int64)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    keys, values = _lookup(palette, classes, ignore_index)
    pos = np.clip(np.searchsorted(keys, packed), 0, max(len(keys) - 1, 0))
    known = keys[pos] == packed if len(keys) else np.zeros(packed.shape, bool)
    labels = np.where(known, values[pos] if len(keys) else 0, ignore_index).astype(np.uint8)
    unknown = {}
    if not known.all():
        colours, counts = np.unique(packed[~known], return_counts=True)
        unknown = {f"#{int(c):06X}": int(n) for c, n in zip(colours, counts)}
        if report:
            log.warning(
                "%s: %d pixel(s) in colours not in data.palette -> ignore (%d): %s",
                source or "colour mask", int((~known).sum()), ignore_index, unknown,
            )
    return labels, unknown


def to_rgb_bands(data: np.ndarray, info) -> np.ndarray:
    """HxWxB raw mask values -> HxWx3 RGB: palette ("P") masks through their colour map."""
    if data.shape[-1] >= 3:
        return data[..., :3]
    from .raster import raster_handle

    with raster_handle(info.path) as src:
        return _rgb(data, src)


def _rgb(data: np.ndarray, src) -> np.ndarray:
    """HxWxB raw 8-bit values of the open dataset ``src`` -> HxWx3 RGB: three bands as they are,
    one band through its colour map (palette "P" masks) or repeated (grey masks)."""
    if data.shape[-1] >= 3:
        return data[..., :3]
    try:
        colormap = src.colormap(1)
    except ValueError:  # no colour map: a grey mask
        colormap = None
    if colormap:
        table = np.zeros((256, 3), np.uint8)
        for index, colour in colormap.items():
            if 0 <= index < 256:
                table[index] = colour[:3]
        return table[data[..., 0]]
    return np.repeat(data[..., :1], 3, axis=-1)


def check_colour_mask_dtype(dtype, path) -> None:
    """Colour masks are 8-bit: a 16-bit (or float) mask is a ColourMaskError naming ``path``,
    never decoded to colours that match no palette entry (or a high byte that does)."""
    if np.dtype(dtype) != np.uint8:
        raise ColourMaskError(
            f"colour mask {path}: {np.dtype(dtype)} pixels, but colour masks must be 8-bit (uint8) RGB, palette "
            "or grey images whose colours are the data.palette's #RRGGBB; convert it to 8 bits"
        )


def read_colour_mask(path) -> np.ndarray:
    """An RGB uint8 HxWx3 array of any colour mask file ("P" mode / grey / RGBA converted),
    decoded exactly as training decodes it (rasterio: the first three bands, or the colour map
    / grey value of one band). A mask that is not 8-bit is a ColourMaskError naming the file."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"colour mask not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                check_colour_mask_dtype(src.dtypes[0], path)
                data = np.moveaxis(src.read(list(range(1, min(src.count, 3) + 1))), 0, -1)
                return np.ascontiguousarray(_rgb(data, src))
    except RasterioError as exc:
        raise ColourMaskError(f"cannot read colour mask {path} (corrupt?): {exc}") from None
