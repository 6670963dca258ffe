"""Sources: a scene is an image raster plus its labels (vector polygons or a mask raster).

Example:
    >>> info = open_raster("a.tif")
    >>> scene = Scene(info, VectorLabels.from_file("a.geojson", info))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from .labels import MaskLabels, VectorLabels
from .raster import RasterInfo


@dataclass
class Scene:
    info: RasterInfo
    labels: Union[VectorLabels, MaskLabels]
    name: str = ""
    # the building polygons as separate objects when the scene has them (object truth for
    # instance metrics: touching buildings stay two objects, unlike in a mask)
    vectors: Optional[VectorLabels] = None

    @property
    def size(self) -> tuple[int, int]:
        return self.info.width, self.info.height
