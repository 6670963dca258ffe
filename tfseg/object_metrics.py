"""Object-level (polygon) F1 on whole validation scenes, for building tasks.

Each validation scene is predicted whole with the sliding-window engine (:mod:`tfseg.inference`:
overlapping tiles blended into one probability map), so an object in a tile overlap is counted
once and an object cut by a tile edge is not a fragment. Predicted masks are polygonized with the
same post-processing as ``tfseg.predict`` and matched with the SpaceNet rules
(:func:`tfseg.scoring.match_polygons`: IoU >= 0.5, truth < 20 px² and proposals <= 20 px²
dropped). Truth objects are the scene's polygons when it has them (``Scene.vectors``: touching
buildings stay two objects), else the components of its mask.

:class:`ObjectF1Callback` adds ``val_object_f1``, ``val_object_precision`` and
``val_object_recall`` to the epoch logs, so history.csv, TensorBoard, Neptune and ModelCheckpoint
see them like any other metric (the callback must come before those in the callback list).
Enabled with ``train.object_f1: true``.

Example:
    >>> callbacks.insert(0, ObjectF1Callback(val_scenes, card, threshold=0.5, tile_size=256, overlap=64))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import keras
import numpy as np

from .postprocess import PixelAreaError, PolygonOptions, pixel_area_m2, pixel_polygons, polygonize_array
from .scoring import PROPOSAL_MIN_AREA, TRUTH_MIN_AREA, Counts, match_polygons

TRUTH_OPTIONS = PolygonOptions(opening_px=0, min_area_px=0.0, simplify_px=0.0, fill_holes=False)


@dataclass
class SceneTruth:
    """The objects of one scene in pixel coordinates, its ignored pixels and its pixel area (m²)."""

    name: str
    polygons: list
    ignore: np.ndarray  # HxW bool
    pixel_area: Optional[float] = None


def scene_truth(scene, ignore_index: int = 255) -> SceneTruth:
    """Truth objects of a :class:`tfseg.data.sources.Scene` (its polygons, else its mask's components)."""
    from rasterio.windows import Window

    info = scene.info
    label = scene.labels.rasterize(Window(0, 0, info.width, info.height), info)
    if label.ndim == 3:  # target channels: the footprint
        channels = list(getattr(scene.labels, "channels", ["footprint"]))
        label = label[..., channels.index("footprint") if "footprint" in channels else 0]
    ignore = label == ignore_index
    vectors = getattr(scene, "vectors", None)
    if vectors is not None:
        polygons = pixel_polygons(vectors.geometries, info)
    else:
        truth_mask = ((label == 1) & ~ignore).astype(np.uint8)
        polygons = [r.geometry for r in polygonize_array(truth_mask, None, TRUTH_OPTIONS)]
    polygons = [p for p in polygons if p.area >= TRUTH_MIN_AREA]
    area = pixel_area_m2(info.crs, info.affine, info.width, info.height) if info.crs else None
    return SceneTruth(scene.name or str(info.path), polygons, ignore, area)


def stitched_probabilities(predictor, scenes: Sequence, tile_size: int, overlap: int, batch_size: int = 8) -> list:
    """``[(HxWxK probabilities, HxW valid)]``: each scene predicted whole by the sliding window."""
    from .inference import ArraySink, Job, RasterSource, run_sliding_window

    jobs = [Job(RasterSource(s.info), ArraySink(s.info.height, s.info.width, predictor.num_classes), s.name)
            for s in scenes]
    tile_size, overlap = predictor.tiling(tile_size, overlap)
    run_sliding_window(predictor, jobs, tile_size, overlap, batch_size)
    return [(job.sink.probs, job.sink.valid) for job in jobs]


def proposals(probs: np.ndarray, usable: np.ndarray, threshold: float, options: PolygonOptions,
              channels: Optional[dict] = None) -> list:
    """Predicted objects (PolygonRecord, pixel coordinates) of one footprint probability map;
    ``usable``: pixels that are valid and not ignored. A minimum area in m² is not applied here
    (the map has no pixel area): :func:`kept_records` applies it with the scene's."""
    import dataclasses

    mask = ((probs >= threshold) & usable).astype(np.uint8)
    if options.min_area_m2:
        options = dataclasses.replace(options, min_area_m2=0.0)
    return polygonize_array(mask, probs, options, channels=channels)


def kept_records(truth: SceneTruth, records: Sequence, min_area_px: float = 0.0, min_area_m2: float = 0.0) -> list:
    """The records that pass the area filters (the SpaceNet proposal rule included); a minimum
    area in m² on a scene without a pixel area (no usable CRS) is a :class:`PixelAreaError`."""
    if min_area_m2 and not truth.pixel_area:
        raise PixelAreaError(f"min_area_m2 {min_area_m2}: scene {truth.name} has no CRS with a ground area (none, "
                             "or one neither projected nor geographic); use a minimum area in pixels")
    return [r for r in records if r.geometry.area > PROPOSAL_MIN_AREA and r.geometry.area >= min_area_px
            and not (min_area_m2 and r.geometry.area * truth.pixel_area < min_area_m2)]


def match_records(truth: SceneTruth, records: Sequence, min_area_px: float = 0.0,
                  min_area_m2: float = 0.0) -> Counts:
    """TP/FP/FN of one scene's records after the area filters (SpaceNet proposal rule included)."""
    kept = kept_records(truth, records, min_area_px, min_area_m2)
    return match_polygons(truth.polygons, [r.geometry for r in kept], [r.confidence for r in kept])


def object_counts(pred_mask: np.ndarray, true_mask: np.ndarray, probs: Optional[np.ndarray] = None,
                  options: Optional[PolygonOptions] = None) -> Counts:
    """TP/FP/FN of one predicted vs true binary mask pair (pixel-space polygons)."""
    options = options or PolygonOptions()
    truth = [r.geometry for r in polygonize_array(true_mask, None, TRUTH_OPTIONS)]
    truth = SceneTruth("", [t for t in truth if t.area >= TRUTH_MIN_AREA], np.zeros(true_mask.shape, bool))
    return match_records(truth, polygonize_array(pred_mask, probs, options))


def footprint_channels(probs: np.ndarray, bands: Optional[dict]) -> tuple[np.ndarray, Optional[dict]]:
    """(footprint HxW, {"boundary"/"contact": HxW} or None) of a building model's HxWxK output."""
    bands = bands or {"footprint": 1}
    extra = {k: probs[..., b - 1] for k, b in bands.items() if k != "footprint"}
    return probs[..., bands["footprint"] - 1], extra or None


def footprint_threshold(threshold, bands: Optional[dict]) -> float:
    """The footprint channel's of ``threshold``: one value, or one per output channel (the
    ``train.threshold`` list of a multi-label footprint/boundary/contact model)."""
    if isinstance(threshold, (list, tuple)):
        return float(threshold[(bands or {"footprint": 1})["footprint"] - 1])
    return float(threshold)


def scenes_counts(predictor, scenes: Sequence, truths: Sequence[SceneTruth], threshold,
                  options: PolygonOptions, tile_size: int, overlap: int, batch_size: int = 8) -> Counts:
    """Object counts of ``predictor`` over whole scenes (stitched, then polygonized) at
    ``threshold`` (see :func:`footprint_threshold`)."""
    counts = Counts()
    bands = predictor.instance_bands()
    threshold = footprint_threshold(threshold, bands)
    for (probs, valid), truth in zip(stitched_probabilities(predictor, scenes, tile_size, overlap, batch_size), truths):
        footprint, channels = footprint_channels(probs, bands)
        records = proposals(footprint, valid & ~truth.ignore, threshold, options, channels)
        counts.add(match_records(truth, records, options.min_area_px, options.min_area_m2))
    return counts


class ObjectF1Callback(keras.callbacks.Callback):
    """Adds ``val_object_f1`` / ``_precision`` / ``_recall`` to the logs at each epoch end, scored
    on the whole validation scenes (see the module docstring).

    ``max_scenes`` bounds the cost (0 = every validation scene).
    """

    def __init__(self, val_scenes: Sequence, card, threshold: float = 0.5, ignore_index: int = 255,
                 tile_size: int = 256, overlap: int = 32, batch_size: int = 8, max_scenes: int = 0,
                 options: Optional[PolygonOptions] = None, prefix: str = "val_object_"):
        super().__init__()
        self.scenes = list(val_scenes)[: max_scenes or None]
        self.card, self.threshold, self.ignore_index = card, threshold, ignore_index  # card: the run's ModelCard
        self.tile_size, self.overlap, self.batch_size = tile_size, overlap, batch_size
        self.options, self.prefix = options or PolygonOptions(), prefix
        self._truths = None

    def predictor(self):
        from .inference import KerasPredictor

        return KerasPredictor(self.model, self.card)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self.scenes:
            return
        predictor = self.predictor()
        if predictor.instance_bands() is None:
            return  # object F1 is defined here for binary (building) tasks only
        if self._truths is None:
            self._truths = [scene_truth(s, self.ignore_index) for s in self.scenes]
        counts = scenes_counts(predictor, self.scenes, self._truths, self.threshold, self.options, self.tile_size,
                               self.overlap, self.batch_size)
        scores = counts.as_dict()
        logs[f"{self.prefix}f1"] = scores["F1Score"]
        logs[f"{self.prefix}precision"] = scores["Precision"]
        logs[f"{self.prefix}recall"] = scores["Recall"]
