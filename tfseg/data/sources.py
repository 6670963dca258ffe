"""Sources: a scene is an image raster plus its labels (vector polygons or a mask raster).

Example:
    >>> info = open_raster("a.tif")
    >>> scene = Scene(info, VectorLabels.from_file("a.geojson", info))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .labels import MaskLabels, VectorLabels
from .raster import RasterInfo


@dataclass
class Scene:
    info: RasterInfo
    labels: Union[VectorLabels, MaskLabels]
    name: str = ""

    @property
    def size(self) -> tuple[int, int]:
        return self.info.width, self.info.height
