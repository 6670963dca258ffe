"""Colour-coded masks: an RGB (or palette "P" mode) mask whose colours name classes.

The colour decoding itself (``read_colour_mask``, ``decode_colour_mask``, ``ColourMaskError``)
lives in :mod:`tfseg.data.colours`, shared with the labels and ``tfseg.evaluate pixels``.

Dataset layout for ``data.format: colour_mask`` (e.g. the Dubai land-cover archive):
``root/**/<images_dir>/<stem>.<jpg|png|tif>`` with ``root/**/<masks_dir>/<stem><mask_suffix>.png``
next to it (default ``images``/``masks``, suffix ""); folders may contain spaces. Colours outside
the palette are reported once per dataset with their pixel counts (``data.ignore_colours: error``
turns them into an error naming the file). Masks are 8-bit: a 16-bit mask is an error naming it.

Example:
    >>> labels, unknown = decode_colour_mask(read_colour_mask("m.png"),
    ...     {"building": "#3C1098", "road": "#6EC1E4"}, ignore_index=255)
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..colours import ColourMaskError, _lookup, decode_colour_mask, parse_hex, read_colour_mask, to_rgb_bands  # noqa: F401
from .mask_folder import PAIRING_OPTIONS as OPTIONS  # noqa: F401  (data.options: pairs images and masks like mask_folder)

log = logging.getLogger(__name__)


def load_colour_mask(data_cfg):
    """Scenes of ``data.format: colour_mask`` (see the module docstring)."""
    from rasterio.windows import Window

    from ..labels import ColourMaskLabels, check_same_grid
    from ..raster import open_raster
    from . import DataFormatError, check_band_count, split_scenes
    from ..sources import Scene
    from .mask_folder import find_pairs

    if not data_cfg.palette:
        raise DataFormatError("config key 'data.palette': colour_mask needs a palette (class name -> '#RRGGBB')")
    _lookup(data_cfg.palette, data_cfg.classes, data_cfg.ignore_index)  # validate colours early
    missing = [c for c in data_cfg.classes if c not in data_cfg.palette]
    if missing:
        raise DataFormatError(
            f"config key 'data.palette': no colour for class(es) {missing} of data.classes"
        )
    pairs = find_pairs(data_cfg)
    scenes, unknown_total = [], {}
    for image_path, mask_path in pairs:
        info = open_raster(image_path, data_cfg.bands)
        check_band_count(info, data_cfg)
        mask_info = open_raster(mask_path)
        check_same_grid(info, mask_info)
        # an 8-bit mask (else a ColourMaskError naming it); one full decode per mask at load time, the
        # training decoding itself: catches bad colours before training starts
        labels = ColourMaskLabels(mask_info, dict(data_cfg.palette), list(data_cfg.classes), data_cfg.ignore_index)
        _, unknown = labels.decode(Window(0, 0, mask_info.width, mask_info.height))
        if unknown and data_cfg.ignore_colours == "error":
            raise ColourMaskError(
                f"colour mask {mask_path}: colours not in data.palette {unknown} "
                "(set data.ignore_colours: ignore to map them to the ignore label)"
            )
        for colour, count in unknown.items():
            unknown_total[colour] = unknown_total.get(colour, 0) + count
        scenes.append(Scene(info, labels, name=str(Path(image_path).relative_to(data_cfg.root))))
    if unknown_total:
        log.warning(
            "colour masks under %s: %d pixel(s) in colours not in data.palette -> ignore (%d): %s",
            data_cfg.root, sum(unknown_total.values()), data_cfg.ignore_index, unknown_total,
        )
    return split_scenes(scenes, data_cfg)
