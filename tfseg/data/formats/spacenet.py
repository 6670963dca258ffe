"""``data.format: spacenet`` — the SpaceNet-2 AOI layout.

    root/AOI_<n>_<City>_Train/<product>/<product>_AOI_<n>_<City>_img<id>.tif
    root/AOI_<n>_<City>_Train/geojson/buildings/buildings_AOI_<n>_<City>_img<id>.geojson

``root`` may also be one ``AOI_*`` folder. ``data.options``:

- ``product``: ``RGB-PanSharpen`` (default; 3-band uint16, 0.3 m), ``MUL`` (8-band uint16,
  ~1.2 m), ``MUL-PanSharpen`` (8-band, 0.3 m) or ``PAN`` (1-band, 0.3 m).
- ``targets``: ``[footprint]`` (default, binary) or any of ``footprint``, ``boundary``,
  ``contact`` as multi-label channels (``data.task: multilabel``, one class name per target),
  like the SpaceNet/solaris multi-channel masks; ``boundary_width`` (px, default 3) and
  ``contact_spacing`` (px, default 10). The same option works for ``scenes`` and ``mask_folder``
  (see :func:`tfseg.data.formats.target_spec`).

GeoJSON (EPSG:4326) is reprojected onto each raster's grid; an empty GeoJSON means no buildings.
Chips are split into train/val by ``data.val_fraction`` (seeded).

Example:
    >>> cfg = load("configs/spacenet.yaml", ["data.root=/data/spacenet/AOI_2_Vegas_Train"])
    >>> train, val = load_scenes(cfg.data)
"""
from __future__ import annotations

import re
from pathlib import Path

from ..labels import VectorLabels
from ..raster import open_raster
from ..sources import Scene

PRODUCTS = ("RGB-PanSharpen", "MUL", "MUL-PanSharpen", "PAN")
# data.options of this format: name -> type
OPTIONS = {"product": str, "targets": list[str], "boundary_width": int, "contact_spacing": int}
_CHIP_ID = re.compile(r"(AOI_\d+_[^_]+_img\d+)$")


def aoi_folders(root: Path) -> list[Path]:
    if root.name.startswith("AOI_"):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("AOI_"))


def load_spacenet(data_cfg):
    from . import DataFormatError, check_band_count, split_scenes, target_spec

    options = data_cfg.options
    product = options.get("product", "RGB-PanSharpen")
    if product not in PRODUCTS:
        raise DataFormatError(
            f"config key 'data.options.product': expected one of {list(PRODUCTS)}, got {product!r}"
        )
    targets = target_spec(data_cfg)
    root = Path(data_cfg.root)
    aois = aoi_folders(root)
    if not aois:
        raise DataFormatError(f"no AOI_<n>_<City>_Train folders under {root}")
    scenes = []
    for aoi in aois:
        folder = aoi / product
        if not folder.is_dir():
            available = [p.name for p in aoi.iterdir() if p.name in PRODUCTS]
            raise DataFormatError(
                f"product folder {folder} not found (data.options.product={product!r}; "
                f"available here: {available})"
            )
        for path in sorted(folder.glob("*.tif")):
            match = _CHIP_ID.search(path.stem)
            if not match:
                raise DataFormatError(f"{path}: file name does not end in AOI_<n>_<City>_img<id>")
            geojson = aoi / "geojson" / "buildings" / f"buildings_{match.group(1)}.geojson"
            if not geojson.is_file():
                raise FileNotFoundError(f"label file not found for image {path}: {geojson}")
            info = open_raster(path, data_cfg.bands)
            check_band_count(info, data_cfg)
            vectors = VectorLabels.from_file(geojson, info)
            scenes.append(Scene(info, targets.wrap(vectors), name=match.group(1), vectors=vectors))
    if not scenes:
        raise DataFormatError(f"no {product} GeoTIFFs under {root}")
    return split_scenes(scenes, data_cfg)
