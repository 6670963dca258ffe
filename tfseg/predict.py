"""Whole-scene prediction: ``python -m tfseg.predict --model MODEL --input SCENE.tif [...] --output DIR``.

MODEL is a run directory, a ``.keras`` file (normalization.json beside it) or an exported
SavedModel directory. Scenes are streamed: tiles are read window by window, predicted in
batches, blended with a smooth weight window and written strip by strip into tiled, compressed
GeoTIFFs, so memory is bounded by a strip of tiles whatever the scene height.

Outputs per scene (in DIR): ``<stem>_prob.tif`` (probabilities, float16 or uint8 scaled by 254,
nodata NaN / 255), ``<stem>_class.tif`` (uint8 classes, nodata 255, palette colour table; a
multi-label model: one 0/1 band per class, each with its own threshold, as classes overlap),
``<stem>_polygons.geojson`` (objects after speckle removal, hole filling and simplification, in
the scene CRS or EPSG:4326; ``class`` property = the class index), ``<stem>_overlay.png`` (preview), ``<stem>_proposals.csv`` (its
SpaceNet rows, with ``--spacenet-csv``) and ``<stem>_done.json`` (written last: the scene is
complete and is skipped on a rerun with the same model and options). For the run:
``polygons.geojson`` (every scene's polygons), the ``--spacenet-csv`` CSV, ``summary.json``.

Scenes are predicted one at a time by :func:`predict_scene`, in this process (``--runner local``)
or by the workers of an Apache Beam pipeline (``--runner beam``, :mod:`tfseg.predict_beam`). A
scene that fails is reported in ``summary.json`` and does not stop the others; the exit code is
then 1 (2: bad arguments, nothing done).

Example:
    python -m tfseg.predict --model runs/default --input scene.tif --output out/ --tta 4
    python -m tfseg.predict --model runs/default --input 'scenes/*.tif' --output out/ --runner beam
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import shutil
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import INPUT_ERRORS, TfsegError, report
from .data.raster import RasterError, open_raster
from .inference import Job, Predictor, RasterSource, load_predictor, run_sliding_window
from .postprocess import (
    SPACENET_HEADER,
    PolygonOptions,
    merge_geojson,
    pixel_area_m2,
    pixel_polygons,
    polygonize_raster,
    require_pixel_area,
    spacenet_image_id,
    write_geojson,
    write_spacenet_csv,
)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".img", ".vrt")
PROB_NODATA_UINT8 = 255
CLASS_NODATA = 255


class OutputError(TfsegError):
    """An output location cannot be written; the message names it."""


class PredictOptionError(TfsegError):
    """An option cannot be used (out of range, or not with this model); the message names the
    option, its value and what the model expects."""


@dataclass
class PredictOptions:
    tile_size: int = 0  # 0 = the model's tile size
    overlap: int = -1  # -1 = the model's recommended overlap
    margin: Optional[int] = None
    batch_size: int = 8
    tta: int = 1
    probabilities: str = "float16"  # float16 | uint8 | none
    classes: bool = True
    polygons: Optional[bool] = None  # None = on for binary and multi-label models
    polygon_classes: list = field(default_factory=list)  # class indexes; [] = all but 0 (multi-label: all)
    epsg4326: bool = False
    overlay: bool = True
    spacenet_csv: str = ""  # path; "" = off
    cog: bool = False
    threshold: Optional[float] = None  # None = the model's (its operating point's; resolved to one per class for multilabel)
    # None = the model's operating point (chosen on validation) when it has one, else defaults
    polygon: Optional[PolygonOptions] = None
    polygon_overrides: dict = field(default_factory=dict)  # PolygonOptions fields set on the CLI
    instances: Optional[str] = None  # none | watershed; None = the operating point's / watershed for building models
    truth: str = ""  # GeoJSON of true footprints: the overlay outlines TP / FP / FN
    progress: bool = True
    gdal_cache_mb: int = 64  # GDAL block cache: bounds the memory of windowed reads and writes


# ------------------------------------------------------------------------------------------
# Inputs and outputs
# ------------------------------------------------------------------------------------------
def expand_inputs(items: Sequence[str]) -> list:
    """Files, folders (their images, sorted) and glob patterns -> a list of image paths."""
    paths = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
            if not found:
                raise FileNotFoundError(f"--input {item}: folder has no images ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        elif any(ch in item for ch in "*?["):
            found = sorted(Path(q) for q in glob.glob(item, recursive=True) if Path(q).is_file())
            if not found:
                raise FileNotFoundError(f"--input {item}: pattern matches no files")
            paths.extend(found)
        else:
            if not p.is_file():
                raise FileNotFoundError(f"--input {item}: file not found")
            paths.append(p)
    return paths


def check_writable(directory: Path, option: str = "--output") -> Path:
    """Create ``directory`` and prove a file can be written there (before any work); an error
    names ``option``, the argument the directory comes from."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".tfseg_write_test_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"{option} {directory}: not writable ({exc.strerror or exc})") from None
    return directory


def scene_gcps(path) -> tuple[list, Optional[str]]:
    """``(ground control points, their CRS)`` of a scene georeferenced by GCPs (``([], None)``
    for any other)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            gcps, crs = src.gcps
    return list(gcps or []), (crs if gcps and crs else None)


def _block_size(height: int, width: int) -> int:
    side = min(height, width)
    return 512 if side >= 512 else max(16, 2 ** int(math.floor(math.log2(max(side, 16)))))


class GeoTiffSink:
    """Writes finished strips into tiled, deflate-compressed GeoTIFFs (opened lazily)."""

    def __init__(self, info, predictor: Predictor, prob_path: Optional[Path], class_path: Optional[Path],
                 prob_dtype: str = "float16", threshold: Optional[float] = None, cog: bool = False):
        self.info, self.predictor = info, predictor
        self.prob_path, self.class_path = prob_path, class_path
        self.prob_dtype, self.cog = prob_dtype, cog
        self.threshold = threshold  # None: the model card's (multilabel: one per class)
        self.block = _block_size(info.height, info.width)
        self.gcps, self.gcp_crs = scene_gcps(info.path) if not info.crs else ([], None)
        self._prob = self._class = None
        self.class_counts = np.zeros(max(2, predictor.num_classes), np.int64)
        self.valid_pixels = 0

    def _profile(self, **extra):
        import rasterio

        profile = dict(driver="GTiff", width=self.info.width, height=self.info.height, tiled=True,
                       blockxsize=self.block, blockysize=self.block, compress="deflate", BIGTIFF="IF_SAFER",
                       num_threads=os.environ.get("GDAL_NUM_THREADS", "ALL_CPUS"))  # deflate in parallel
        if self.gcps:  # georeferenced by ground control points: the outputs keep them
            profile.update(gcps=self.gcps, crs=self.gcp_crs)
        else:  # the scene's transform, also without a CRS (e.g. a local grid)
            profile.update(transform=rasterio.Affine(*self.info.transform[:6]))
            if self.info.crs:
                profile.update(crs=self.info.crs)
        profile.update(extra)
        return profile

    def _open(self):
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        k = self.predictor.num_classes
        names = self.predictor.class_names[1:] if self.predictor.binary else self.predictor.class_names
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            try:
                if self.prob_path is not None:
                    if self.prob_dtype == "uint8":
                        extra = dict(dtype="uint8", count=k, nodata=PROB_NODATA_UINT8, predictor=2)
                    else:  # IEEE half floats in a Float32 GeoTIFF (GDAL's NBITS=16)
                        extra = dict(dtype="float32", count=k, nodata=float("nan"), nbits=16)
                    self._prob = rasterio.open(self._target(self.prob_path), "w", **self._profile(**extra))
                    for band, name in enumerate(names[:k], start=1):
                        self._prob.set_band_description(band, f"p({name})")
                    if self.prob_dtype == "uint8":
                        self._prob.scales = (1 / 254.0,) * k
                if self.class_path is not None and self.predictor.multilabel:  # one 0/1 band per class
                    self._class = rasterio.open(self._target(self.class_path), "w",
                                                **self._profile(dtype="uint8", count=k, nodata=CLASS_NODATA, predictor=2))
                    for band, name in enumerate(names[:k], start=1):
                        self._class.set_band_description(band, name)
                elif self.class_path is not None:
                    self._class = rasterio.open(self._target(self.class_path), "w",
                                                **self._profile(dtype="uint8", count=1, nodata=CLASS_NODATA, predictor=2))
                    self._class.set_band_description(1, "class")
                    colormap = self._colormap()
                    if colormap:
                        self._class.write_colormap(1, colormap)
            except rasterio.errors.RasterioIOError as exc:
                raise OutputError(f"cannot write {self.prob_path or self.class_path}: {exc}") from None

    def _target(self, path: Path) -> str:
        return str(path.with_suffix(".tmp.tif")) if self.cog else str(path)

    def _colormap(self) -> dict:
        cmap = class_colours(self.predictor)
        cmap[CLASS_NODATA] = (0, 0, 0, 0)
        return cmap

    def write(self, row: int, probs: np.ndarray, valid: np.ndarray) -> None:
        from rasterio.windows import Window

        if self._prob is None and self._class is None:
            self._open()
        window = Window(0, row, probs.shape[1], probs.shape[0])
        invalid = ~valid
        if self._prob is not None:
            if self.prob_dtype == "uint8":
                data = np.rint(np.clip(probs, 0, 1) * 254).astype(np.uint8)
                data[invalid] = PROB_NODATA_UINT8
            else:
                data = probs.astype(np.float32)
                data[invalid] = np.nan
            self._prob.write(np.moveaxis(data, -1, 0), window=window)
        classes = self.predictor.to_classes(probs, self.threshold)
        classes[invalid] = CLASS_NODATA
        if self.predictor.multilabel:  # (H, W, K) masks: positives per class
            self.class_counts += (classes[valid] == 1).sum(axis=0)
        else:
            counts = np.bincount(classes[valid].ravel(), minlength=self.class_counts.size)
            self.class_counts += counts[: self.class_counts.size]
        self.valid_pixels += int(valid.sum())
        if self._class is not None:
            self._class.write(np.moveaxis(classes, -1, 0) if classes.ndim == 3 else classes[None], window=window)

    def close(self) -> None:
        for handle, path in ((self._prob, self.prob_path), (self._class, self.class_path)):
            if handle is None:
                continue
            handle.close()
            if self.cog:
                _to_cog(Path(self._target(path)), path, nearest=handle is self._class)


DEFAULT_COLOURS = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                   (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)]


def class_colours(predictor: Predictor) -> dict:
    """``{class index: (r, g, b, 255)}`` from the model's palette, else a default cycle (a
    multi-label model's classes skip the black of background)."""
    palette = predictor.palette or {}
    cmap = {}
    for index, name in enumerate(predictor.class_map_names):
        colour = palette.get(name)
        if isinstance(colour, str) and colour.startswith("#") and len(colour) == 7:
            rgb = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
        else:
            rgb = DEFAULT_COLOURS[(index + (1 if predictor.multilabel else 0)) % len(DEFAULT_COLOURS)]
        cmap[index] = (*rgb, 255)
    return cmap


def _to_cog(tmp: Path, final: Path, nearest: bool) -> None:
    """Rewrite a tiled GeoTIFF as a Cloud-Optimized GeoTIFF with overviews (GDAL COG driver)."""
    from rasterio.shutil import copy

    copy(str(tmp), str(final), driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=512,
         RESAMPLING="NEAREST" if nearest else "AVERAGE", BIGTIFF="IF_SAFER")
    tmp.unlink()


# ------------------------------------------------------------------------------------------
# Overlay preview
# ------------------------------------------------------------------------------------------
def write_overlay(scene_path, class_path, out_path, predictor: Predictor, max_side: int = 1024) -> Path:
    """A decimated RGB preview of the scene with the class map blended on top (PNG)."""
    import rasterio
    from PIL import Image
    from rasterio.enums import Resampling

    from .figures import scene_rgb

    rgb, _ = scene_rgb(scene_path, max_side)
    out_h, out_w = rgb.shape[:2]
    overlay = rgb.astype(np.float32)
    with rasterio.open(class_path) as csrc:
        if predictor.multilabel:  # each class drawn where its band is 1 (overlaps blend them all)
            masks = csrc.read(out_shape=(csrc.count, out_h, out_w), resampling=Resampling.nearest)
            colours = class_colours(predictor)
            for k in range(masks.shape[0]):
                hit = masks[k] == 1
                overlay[hit] = 0.55 * overlay[hit] + 0.45 * np.asarray(colours[k][:3], np.float32)
            overlay[masks[0] == CLASS_NODATA] *= 0.3
            Image.fromarray(overlay.astype(np.uint8)).save(out_path, compress_level=1)  # a preview: fast zlib level
            return Path(out_path)
        classes = csrc.read(1, out_shape=(out_h, out_w), resampling=Resampling.nearest)
        cmap = csrc.colormap(1) if csrc.count else {}
    for value, colour in cmap.items():
        if value in (0, CLASS_NODATA):
            continue
        hit = classes == value
        overlay[hit] = 0.55 * overlay[hit] + 0.45 * np.asarray(colour[:3], np.float32)
    overlay[classes == CLASS_NODATA] *= 0.3
    Image.fromarray(overlay.astype(np.uint8)).save(out_path, compress_level=1)  # a preview: fast zlib level
    return Path(out_path)


def truth_polygons(path, info) -> list:
    """The polygons of a truth GeoJSON (any CRS, reprojected) in pixel coordinates of scene ``info``,
    clipped to the scene."""
    from .data.labels import VectorLabels

    if not Path(path).is_file():
        raise FileNotFoundError(f"--truth {path}: file not found")
    if not info.crs:
        raise ValueError(f"--truth {path}: scene {info.path} has no CRS, so the truth polygons cannot be placed on it")
    labels = VectorLabels.from_file(path, info, require_overlap=False)
    return [g for g in pixel_polygons(labels.geometries, info) if g.area > 0]


def write_object_overlay(info, records, truth_path, out_path, max_side: int = 1024) -> dict:
    """The scene preview with the predicted objects outlined as true positives (green) or false
    positives (red) and the missed true objects (blue) against ``truth_path``; returns the counts.

    The counts are ``evaluate spacenet``'s on the polygons as written: the same filter
    (:func:`tfseg.scoring.spacenet_kept`: truth < 20 px² and proposals <= 20 px² dropped, and
    not outlined) and the same matching (IoU >= 0.5, proposals in descending confidence)."""
    from .figures import draw_object_outlines, scene_rgb
    from .scoring import spacenet_kept

    rgb, scale = scene_rgb(info.path, max_side)
    truth = truth_polygons(truth_path, info)
    kept_truth, kept = spacenet_kept(truth, [r.geometry for r in records])
    image, counts = draw_object_outlines(rgb, [truth[i] for i in kept_truth], [records[i].geometry for i in kept],
                                         [records[i].confidence for i in kept], scale=scale)
    image.save(out_path)
    return counts


# ------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------
class _Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def __call__(self, name: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done != total and now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last = now
        width = 30
        filled = int(width * done / max(total, 1))
        line = f"{Path(name).name} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} tiles"
        end = "\n" if done == total or not self.tty else ""
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)


def resolve_polygon_options(predictor: Predictor, options: PredictOptions) -> PolygonOptions:
    """Post-processing for this model: ``options.polygon``, else the model's operating point, else
    the defaults; then the CLI's explicit settings. Instances: watershed by default for building
    models; asking it of another model is an error."""
    from .operating_point import polygon_options_of

    if options.polygon is not None:
        polygon = options.polygon
    elif predictor.operating_point:
        polygon = polygon_options_of(predictor.operating_point)
    else:
        polygon = PolygonOptions()
    polygon = dataclasses.replace(polygon, **options.polygon_overrides)
    building = predictor.instance_bands() is not None
    instances = options.instances
    if instances is None and options.polygon is None and not (predictor.operating_point or {}).get("instances"):
        instances = "watershed" if building else "none"
    if instances is not None:
        if instances == "watershed" and not building:
            kind = predictor.task if predictor.task != "auto" else "multiclass"
            raise ValueError(
                f"--instances watershed needs a binary building model (one output channel, or multi-label "
                f"footprint[/boundary/contact] channels); model {predictor.source or ''} is {kind} with "
                f"{predictor.num_classes} outputs {predictor.class_names}: use --instances none"
            )
        polygon = dataclasses.replace(polygon, instances=instances)
    return polygon


def resolve_options(predictor: Predictor, options: PredictOptions) -> PredictOptions:
    """``options`` with everything the model decides made explicit: the decision threshold and the
    polygon post-processing (operating point, CLI overrides, instances). Done once per run, before
    the completion-marker fingerprint, so every scene (and every Beam worker) uses the same
    settings and a marker records them; resolving resolved options changes nothing."""
    polygon = resolve_polygon_options(predictor, options)
    if predictor.multilabel:  # one per class: the card's (its operating point's), or the override for all
        threshold = [float(t) for t in predictor.thresholds(options.threshold)]
    elif _argmax_model(predictor):  # multi-class: an argmax, no threshold (none is recorded)
        threshold = None
    else:
        threshold = predictor.threshold if options.threshold is None else float(options.threshold)
    return dataclasses.replace(options, polygon=polygon, polygon_overrides={}, instances=polygon.instances,
                               threshold=threshold)


def card_predictor(model) -> Predictor:
    """The description of ``model`` (classes, task, outputs, tiling, operating point) from its
    model card alone, without loading the network (and TensorFlow): what the Beam launcher
    validates and resolves the options with."""
    from .model_card import load_model_card

    card = load_model_card(model)
    return Predictor(card, card.num_outputs, str(model))


MARKER_SUFFIX = "_done.json"  # <stem>_done.json: written last, atomically, once a scene is complete
SCENE_OUTPUT_SUFFIXES = ("_prob.tif", "_class.tif", "_prob.tmp.tif", "_class.tmp.tif", "_polygons.geojson",
                         "_overlay.png", "_proposals.csv")
MERGED_POLYGONS = "polygons.geojson"
RUNNERS = ("local", "beam")


class SceneFailures(TfsegError):
    """Some scenes failed; the others completed. ``summary`` is the run's summary (also in
    ``summary.json``), the message names every failed scene and its error."""

    def __init__(self, summary: dict, summary_path):
        self.summary = summary
        lines = [f"{f['input']}: {f['error']}" for f in summary["failures"]]
        super().__init__(f"{len(lines)} of {summary['num_scenes']} scene(s) failed (details in {summary_path}):\n  "
                         + "\n  ".join(lines))


def validate_options(options: PredictOptions, predictor: Optional[Predictor] = None) -> None:
    """Reject bad options before any scene is touched (so they are not reported once per scene).
    Tile size, overlap and the post-processing (``--instances`` needs a building model; its
    watershed markers need the probabilities) are checked against the model when ``predictor``
    is given."""
    from .inference import plan_tiles, tta_views
    from .postprocess import INSTANCE_MODES

    if options.probabilities not in ("float16", "uint8", "none"):
        raise ValueError(f"--probabilities: expected float16, uint8 or none, got {options.probabilities!r}")
    if options.batch_size < 1:
        raise ValueError(f"--batch-size {options.batch_size}: expected >= 1")
    check_threshold(options.threshold)
    tta_views(options.tta)
    if options.instances is not None and options.instances not in INSTANCE_MODES:
        raise ValueError(f"--instances: expected one of {list(INSTANCE_MODES)}, got {options.instances!r}")
    if options.truth:
        if not Path(options.truth).is_file():
            raise FileNotFoundError(f"--truth {options.truth}: file not found")
        if not options.overlay:
            raise ValueError(f"--truth {options.truth}: the truth outlines go into the overlay; do not combine "
                             "--truth with --no-overlay")
        if options.polygons is False:
            raise ValueError(f"--truth {options.truth}: true / false positives are predicted polygons; do not "
                             "combine --truth with --no-polygons")
    if predictor is None and options.spacenet_csv:  # the launchers' first check, before any scene
        csv_path = Path(options.spacenet_csv)
        if csv_path.is_absolute() or csv_path.parent != Path("."):  # a bare name goes into --output
            check_writable(csv_path.parent, "--spacenet-csv")
    if predictor is not None:
        check_threshold(options.threshold, predictor)
        check_polygon_classes(predictor, options)
        tile, overlap = predictor.tiling(options.tile_size, options.overlap)
        plan_tiles(predictor, [tile], [tile], tile, overlap, options.margin)
        polygon = resolve_polygon_options(predictor, options)
        if options.truth and not wants_polygons(predictor, options):
            raise ValueError(f"--truth {options.truth}: the TP / FP / FN outlines need polygons, which model "
                             f"{predictor.source or ''} does not write by default (not a building model): add --polygons")
        if _marker_channels(predictor, polygon) and wants_polygons(predictor, options) \
                and options.probabilities == "none":
            raise ValueError(f"--instances watershed takes its markers from the model's "
                             f"{sorted(_marker_channels(predictor, polygon))} probabilities: do not combine it "
                             "with --probabilities none")


def _model_name(predictor: Predictor) -> str:
    return f"model {predictor.source}" if predictor.source else "the model"


def _argmax_model(predictor: Predictor) -> bool:
    """A multi-class model: its class map is an argmax, no threshold applies."""
    return predictor.instance_bands() is None and not predictor.multilabel


def check_threshold(threshold, predictor: Optional[Predictor] = None, option: str = "--threshold") -> None:
    """``threshold`` (None: the model's) is a probability in [0, 1] (one per class for a
    multi-label model), and ``predictor`` is a model it applies to: not a multi-class model,
    whose classes are an argmax. Used by ``predict`` and ``evaluate pixels``."""
    if threshold is None:
        return
    try:
        values = np.asarray(threshold, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise PredictOptionError(f"{option} {threshold!r}: expected a probability in [0, 1]") from None
    if values.size == 0 or not np.all((values >= 0) & (values <= 1)):  # NaN fails too
        raise PredictOptionError(f"{option} {threshold}: expected a probability in [0, 1] (the models output "
                                 "probabilities, not percentages)")
    if predictor is not None and _argmax_model(predictor):
        raise PredictOptionError(
            f"{option} {threshold}: {_model_name(predictor)} is multi-class ({predictor.num_classes} classes "
            f"{predictor.class_names[:predictor.num_classes]}); its class map is the argmax of the class "
            f"probabilities, no threshold applies: drop {option}")


def check_polygon_classes(predictor: Predictor, options: PredictOptions) -> None:
    """``--polygon-classes`` name classes of the model's class map, once each, and polygons are
    written (asked for, or the model's default)."""
    classes = list(options.polygon_classes or [])
    if not classes:
        return
    model = _model_name(predictor)
    names = predictor.class_map_names
    if predictor.instance_bands() is not None:  # binary or footprint model: a 0/1 class map
        allowed = [1]
        what = f"{model} is a building model: its class map is 0 = {names[0]}, 1 = {names[1]}; only class 1 is objects"
    else:
        allowed = list(range(predictor.num_classes))
        kind = "multi-label" if predictor.multilabel else "multi-class"
        what = (f"{model} is {kind} with {predictor.num_classes} classes "
                f"{dict(enumerate(names[:predictor.num_classes]))}: expected 0 <= class < {predictor.num_classes}")
    bad = [c for c in classes if c not in allowed]
    if bad:
        raise PredictOptionError(f"--polygon-classes {' '.join(map(str, classes))}: {bad} not a class to polygonize; "
                                 f"{what}")
    if len(set(classes)) != len(classes):
        raise PredictOptionError(f"--polygon-classes {' '.join(map(str, classes))}: a class is given twice")
    if not wants_polygons(predictor, options):
        hint = "do not combine it with --no-polygons" if options.polygons is False else \
            "add --polygons (polygons are on by default for building and multi-label models only)"
        raise PredictOptionError(f"--polygon-classes {' '.join(map(str, classes))}: no polygons are written for "
                                 f"{model}: {hint}")


MIN_AREA_M2_OPTION = "min_area_m2 (--min-area-m2, or the model's operating point)"


def check_pixel_areas(inputs: Sequence, predictor: Predictor, options: PredictOptions) -> None:
    """A minimum area in m² (``--min-area-m2``, or the model's operating point's) needs every
    scene's pixel area: a scene without one (no CRS, or a CRS neither projected nor geographic)
    is an error naming it, before anything is predicted. Scenes that cannot be opened are left to
    fail on their own."""
    polygon = resolve_polygon_options(predictor, options)
    if not polygon.min_area_m2 or not wants_polygons(predictor, options):
        return
    if "min_area_m2" in options.polygon_overrides:
        option = f"--min-area-m2 {polygon.min_area_m2:g}"
    else:
        option = f"min_area_m2 {polygon.min_area_m2:g} of the model's operating point (--min-area-m2 0 turns it off)"
    for path in inputs:
        try:
            info = open_raster(path, check_read=False)
        except (RasterError, FileNotFoundError):
            continue
        require_pixel_area(info.crs, info.affine, info.width, info.height, path, option)


def check_scene_names(inputs: Sequence, output) -> None:
    """Two inputs with the same file stem would overwrite each other's outputs: refuse them."""
    stems = [Path(p).stem for p in inputs]
    if len(set(stems)) != len(stems):
        raise OutputError(f"--input: two scenes share a file stem ({sorted(s for s in stems if stems.count(s) > 1)[0]}); "
                          f"their outputs would overwrite each other in {output}")


def wants_polygons(predictor: Predictor, options: PredictOptions) -> bool:
    """Polygons are written: asked for, or by default for building models, or for the SpaceNet CSV."""
    want = options.polygons if options.polygons is not None else (
        predictor.instance_bands() is not None or predictor.multilabel)
    return want or bool(options.spacenet_csv)


def _marker_channels(predictor: Predictor, polygon: PolygonOptions) -> dict:
    """The predicted boundary/contact bands the watershed takes its markers from (none without them)."""
    bands = predictor.instance_bands() or {}
    return {k: v for k, v in bands.items() if k != "footprint"} if polygon.instances == "watershed" else {}


def scene_fingerprint(predictor: Predictor, options: PredictOptions) -> dict:
    """What a scene's outputs depend on (model, resolved options, the truth file): a completion
    marker with another fingerprint does not count as complete, so a rerun with other options (or
    another operating point on the model card) redoes the scene."""
    options = resolve_options(predictor, options)
    settings = dataclasses.asdict(options)
    for key in ("progress", "gdal_cache_mb"):  # do not change the outputs
        settings.pop(key)
    settings["spacenet_csv"] = bool(options.spacenet_csv)  # the per-scene rows, wherever the CSV goes
    settings["polygon"] = _json_polygon_options(options.polygon)
    if options.truth:  # another truth file at the same path gives other outlines and counts
        truth = Path(options.truth)
        settings["truth"] = [os.path.abspath(truth), truth.stat().st_size, truth.stat().st_mtime_ns]
    model = os.path.abspath(predictor.source) if predictor.source else ""  # runners may differ in working dir
    return json.loads(json.dumps({"model": model, "model_files": model_files(predictor.source), "options": settings}))


def _json_polygon_options(polygon: PolygonOptions) -> dict:
    """PolygonOptions as strict JSON (no max hole area: null, as JSON has no Infinity)."""
    return {k: (None if v == math.inf else v) for k, v in dataclasses.asdict(polygon).items()}


def model_files(source) -> list:
    """``[name, size, mtime_ns]`` of the files a model is loaded from (a retrained or re-exported
    model at the same path, or one given another operating point, is another model)."""
    if not source:
        return []
    path = Path(source)
    if path.is_file():
        files = [path, path.parent / "model_card.json", path.parent / "normalization.json",
                 path.parent / "config.yaml"]
    elif (path / "saved_model.pb").is_file():
        files = [path / "saved_model.pb"] + sorted(q for q in path.rglob("*") if q.is_file()
                                                   and q.parts[len(path.parts)] in ("variables", "assets"))
    else:
        files = [path / "model.keras", path / "model_card.json", path / "normalization.json", path / "config.yaml"]
    return [[str(f.relative_to(path.parent if path.is_file() else path)), f.stat().st_size, f.stat().st_mtime_ns]
            for f in files if f.is_file()]


def completed_entry(output, stem: str, fingerprint: dict) -> Optional[dict]:
    """The summary entry of a scene already complete in ``output`` (marker present, same model
    and options, every listed output file present), else None."""
    output = Path(output)
    try:
        record = json.loads((output / f"{stem}{MARKER_SUFFIX}").read_text())
    except (OSError, ValueError):
        return None
    entry = record.get("entry") if isinstance(record, dict) else None
    if record.get("fingerprint") != fingerprint or not isinstance(entry, dict):
        return None
    if not all((output / name).is_file() for name in entry.get("outputs", [])):
        return None
    return entry


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``: readers see
    the old file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def predict_scene(predictor: Predictor, path, output, options: PredictOptions,
                  fingerprint: Optional[dict] = None) -> dict:
    """Predict one scene into ``output`` (every output, then its completion marker), unless a
    marker says it is complete already. Both runners (local and Beam) call this per scene.

    Returns ``{"input", "status": "done" | "skipped" | "failed", "entry" | "error"}``. A scene's
    own failure (unreadable or corrupt file, wrong band count, I/O error) is returned, with its
    partial outputs removed, so it does not stop the other scenes.
    """
    output, path = Path(output), Path(path)
    stem = path.stem
    options = resolve_options(predictor, options)  # a no-op for the runners' (already resolved) options
    fingerprint = fingerprint or scene_fingerprint(predictor, options)
    entry = completed_entry(output, stem, fingerprint)
    if entry is not None:
        return {"input": str(path), "status": "skipped", "entry": entry}
    marker = output / f"{stem}{MARKER_SUFFIX}"
    marker.unlink(missing_ok=True)
    try:
        entry = _predict_one(predictor, path, output, options)
    except Exception as exc:  # noqa: BLE001 - one scene's failure must not stop thousands of others
        for suffix in SCENE_OUTPUT_SUFFIXES:
            (output / f"{stem}{suffix}").unlink(missing_ok=True)
        return {"input": str(path), "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    write_atomic(marker, json.dumps({"fingerprint": fingerprint, "entry": entry}, indent=1))
    return {"input": str(path), "status": "done", "entry": entry}


def _predict_one(predictor: Predictor, path: Path, output: Path, options: PredictOptions) -> dict:
    started = time.time()
    info = open_raster(path)
    alpha = info.alpha_bands
    if alpha and info.num_bands + len(alpha) == predictor.num_bands and info.num_bands != predictor.num_bands:
        # a model trained before alpha bands were masks took the alpha as an image band: give it that band
        # (its zero-alpha pixels are still no data, the mask)
        warnings.warn(f"{path}: the model {predictor.source or ''} was trained on {predictor.num_bands} bands, the "
                      f"scene's alpha band(s) {alpha} included (tfseg now reads alpha as the valid mask, not as an "
                      "image band): read as image band(s) too for this model; retrain to use the alpha as a mask "
                      "only", stacklevel=3)
        info = open_raster(path, bands=range(1, info.num_bands + len(alpha) + 1))
    if info.num_bands != predictor.num_bands:
        raise RasterError(
            f"{path}: the scene has {info.num_bands} band(s) but the model {predictor.source or ''} was trained "
            f"on {predictor.num_bands} band(s)"
        )
    want_polygons = wants_polygons(predictor, options)
    if want_polygons and options.polygon.min_area_m2:  # before predicting: the scene cannot be filtered in m²
        area = require_pixel_area(info.crs, info.affine, info.width, info.height, path, MIN_AREA_M2_OPTION)
    else:
        area = pixel_area_m2(info.crs, info.affine, info.width, info.height)
    if not info.crs:
        if scene_gcps(path)[0]:
            warnings.warn(f"{path}: georeferenced by ground control points only (no CRS on a transform); the rasters "
                          "keep its GCPs, polygons are in pixel coordinates", stacklevel=3)
        else:
            warnings.warn(f"{path}: not georeferenced (no CRS); polygons are in pixel coordinates", stacklevel=3)
    stem = path.stem
    need_classes = options.classes or want_polygons or options.overlay
    threshold = options.threshold  # resolved: the model's (its operating point's; multilabel: one per class)
    bands = predictor.instance_bands() or {}
    channel_bands = _marker_channels(predictor, options.polygon)
    sink = GeoTiffSink(
        info, predictor,
        prob_path=None if options.probabilities == "none" else output / f"{stem}_prob.tif",
        class_path=output / f"{stem}_class.tif" if need_classes else None,
        prob_dtype=options.probabilities, threshold=options.threshold, cog=options.cog,
    )
    tile_size, overlap = predictor.tiling(options.tile_size, options.overlap)
    stats = run_sliding_window(predictor, [Job(RasterSource(info), sink, info.path)], tile_size, overlap,
                               options.batch_size, options.tta, options.margin, block_rows=sink.block,
                               progress=_Progress(options.progress))
    post_started = time.perf_counter()
    polygon_classes = options.polygon_classes or (
        [1] if bands else list(range(0 if predictor.multilabel else 1, predictor.num_classes)))
    entry = {"input": info.path, "width": info.width, "height": info.height, "crs": info.crs,
             "threshold": threshold}
    transform = info.affine if info.crs else None
    entry["km2"] = round(info.width * info.height * area / 1e6, 6) if area else None
    entry["valid_fraction"] = round(sink.valid_pixels / max(1, info.width * info.height), 6)
    entry["class_fractions"] = {
        name: round(float(c) / max(1, sink.valid_pixels), 6)
        for name, c in zip(predictor.class_map_names, sink.class_counts)
    }
    outputs = []
    if sink.prob_path:
        entry["probabilities"] = str(sink.prob_path)
        outputs.append(sink.prob_path.name)
    if sink.class_path and options.classes:
        entry["classes"] = str(sink.class_path)
        outputs.append(sink.class_path.name)
    # the plain overlay needs only the finished class map: it is drawn in a second thread while
    # the polygons are traced (both release the GIL in GDAL, numpy and zlib for most of their
    # time); leaving the pool waits for it, also when the polygons fail
    overlay = output / f"{stem}_overlay.png" if options.overlay else None
    plain_overlay = overlay is not None and not (options.truth and want_polygons)
    from rasterio.errors import NotGeoreferencedWarning

    # the overlay thread's scene read filters rasterio's NotGeoreferencedWarning (catch_warnings
    # changes the process-wide filters): this block takes the same filter first and restores the
    # filters after both threads, so their changes cannot interleave past it (a missing CRS was
    # reported above already)
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=1) as pool:  # per scene: nothing forked
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        drawn = pool.submit(write_overlay, info.path, sink.class_path, overlay, predictor) if plain_overlay else None
        if want_polygons:
            prob_bands = {v: (bands["footprint"] if bands else v + 1) for v in polygon_classes}
            records = polygonize_raster(sink.class_path, sink.prob_path, polygon_classes, options.polygon,
                                        pixel_area_m2=area, class_probability_band=prob_bands,
                                        channel_bands=channel_bands if sink.prob_path else None,
                                        class_bands={v: v + 1 for v in polygon_classes} if predictor.multilabel
                                        else None)
            geojson = output / f"{stem}_polygons.geojson"
            write_geojson(geojson, records, transform, info.crs, options.epsg4326, predictor.class_map_names, area)
            entry["polygons"] = str(geojson)
            entry["num_polygons"] = len(records)
            entry["polygon_options"] = _json_polygon_options(options.polygon)
            outputs.append(geojson.name)
            if options.spacenet_csv:  # this scene's rows; the run's CSV concatenates them in input order
                rows = output / f"{stem}_proposals.csv"
                write_spacenet_csv(rows, {spacenet_image_id(info.path): [
                    r for r in records if r.class_index == polygon_classes[0]]})
                outputs.append(rows.name)
        if drawn is not None:
            drawn.result()
    if overlay is not None:
        if not plain_overlay:  # TP / FP / FN outlines and their counts
            entry["objects"] = write_object_overlay(info, records, options.truth, overlay)
        entry["overlay"] = str(overlay)
        outputs.append(overlay.name)
    if sink.class_path and not options.classes:
        sink.class_path.unlink(missing_ok=True)
    entry.update(tiles=stats["tiles"], tile=stats["tile"], stride=stats["stride"], margin=stats["margin"],
                 pixels=stats["pixels"], predict_seconds=round(stats["seconds"], 3),
                 postprocess_seconds=round(time.perf_counter() - post_started, 3), outputs=outputs,
                 started=round(started, 3), finished=round(time.time(), 3), worker=worker_id())
    return entry


def worker_id() -> str:
    """``host:pid`` of the process that predicted a scene (which Beam worker did what)."""
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def spacenet_csv_path(options: PredictOptions, output) -> Path:
    """``--spacenet-csv NAME``: a bare name goes into ``--output``; a path is used as given."""
    csv_path = Path(options.spacenet_csv)
    if not csv_path.is_absolute() and csv_path.parent == Path("."):
        csv_path = Path(output) / csv_path
    return csv_path


def _shared(entries: list, key: str):
    values = {json.dumps(e.get(key)) for e in entries}
    return entries[0].get(key) if len(values) == 1 else None


def summarize(inputs: Sequence, results: Sequence[dict], output, options: PredictOptions, model: str, runner: str,
              started: float, operating_point: Optional[dict] = None) -> dict:
    """The final step of both runners: per-scene polygons merged into one GeoJSON (and the SpaceNet
    CSV when asked), ``summary.json`` written. ``results`` (from :func:`predict_scene`, any order)
    are reported in input order; ``started`` is the run's start (``time.time()``); ``options`` are
    the run's resolved ones (:func:`resolve_options`), ``operating_point`` the model card's."""
    output = Path(output)
    by_input = {r["input"]: r for r in results}
    missing = [str(p) for p in inputs if str(p) not in by_input]
    if missing:  # a runner that lost elements must not look like a complete run
        raise RuntimeError(f"no result for {len(missing)} scene(s), e.g. {missing[0]}")
    ordered = [by_input[str(p)] for p in inputs]
    entries = [r["entry"] for r in ordered if r["status"] != "failed"]
    predicted = [r["entry"] for r in ordered if r["status"] == "done"]
    failures = [{"input": r["input"], "error": r["error"]} for r in ordered if r["status"] == "failed"]
    seconds = max(time.time() - started, 1e-9)
    km2 = [e["km2"] for e in entries if e["km2"] is not None]
    predict_seconds = sum(e["predict_seconds"] for e in predicted)
    tiles = sum(e["tiles"] for e in predicted)
    with_polygons = [e for e in entries if e.get("polygons")]
    summary = {
        "model": model,
        "runner": runner,
        "scenes": entries,
        "num_scenes": len(ordered),
        "completed": len(predicted),
        "skipped": len(entries) - len(predicted),
        "failed": len(failures),
        "failures": failures,
        "tiles": tiles,
        "tile": _shared(entries, "tile") if entries else None,
        "stride": _shared(entries, "stride") if entries else None,
        "margin": _shared(entries, "margin") if entries else None,
        "tta": options.tta,
        "seconds": round(seconds, 3),
        "scenes_per_s": round(len(predicted) / seconds, 4),
        "predict_seconds": round(predict_seconds, 3),
        "postprocess_seconds": round(sum(e["postprocess_seconds"] for e in predicted), 3),
        "tiles_per_s": round(tiles / max(predict_seconds, 1e-9), 3),
        "megapixels": round(sum(e["width"] * e["height"] for e in entries) / 1e6, 3),
        "km2": round(sum(km2), 6) if km2 else None,
        "threshold": options.threshold,
        "polygon_options": _json_polygon_options(options.polygon) if with_polygons else None,
        "operating_point": operating_point,
    }
    if with_polygons:
        parts = [(e["polygons"], Path(e["input"]).stem, "EPSG:4326" if options.epsg4326 and e["crs"] else e["crs"])
                 for e in with_polygons]
        merged = merge_geojson(parts, output / MERGED_POLYGONS)
        summary["polygons"] = str(output / MERGED_POLYGONS)
        summary.update({f"polygons_{k}": v for k, v in merged.items()})
    if options.spacenet_csv:
        csv_path = spacenet_csv_path(options, output)
        tmp = csv_path.with_name(f".{csv_path.name}.partial")
        with tmp.open("w", newline="") as merged_csv:
            merged_csv.write(",".join(SPACENET_HEADER) + "\n")
            for e in with_polygons:
                with (output / f"{Path(e['input']).stem}_proposals.csv").open(newline="") as part:
                    next(part)  # its header
                    shutil.copyfileobj(part, merged_csv)
        os.replace(tmp, csv_path)
        summary["spacenet_csv"] = str(csv_path)
    write_atomic(output / "summary.json", json.dumps(summary, indent=2))
    return summary


def predict_scenes(model, inputs: Sequence, output, options: Optional[PredictOptions] = None) -> dict:
    """Predict scenes (paths) with ``model`` (path or :class:`Predictor`) into ``output``, one
    after another in this process (the ``local`` runner).

    Scenes complete in ``output`` from an earlier run with the same model and options are
    skipped. Returns the summary (also written to ``output/summary.json``); raises
    :class:`SceneFailures` after the others completed when any scene failed.
    """
    import rasterio

    started = time.time()
    options = options or PredictOptions()
    validate_options(options)
    output = check_writable(Path(output))
    check_scene_names(inputs, output)
    predictor = model if isinstance(model, Predictor) else load_predictor(model)
    validate_options(options, predictor)
    check_pixel_areas(inputs, predictor, options)
    options = resolve_options(predictor, options)
    fingerprint = scene_fingerprint(predictor, options)
    # rasterio passes an int GDAL_CACHEMAX to GDALSetCacheMax64, i.e. in bytes (not MB)
    with rasterio.Env(GDAL_CACHEMAX=max(8, int(options.gdal_cache_mb)) * 1024 * 1024):
        results = [predict_scene(predictor, path, output, options, fingerprint) for path in inputs]
    summary = summarize(inputs, results, output, options, predictor.source, "local", started,
                        predictor.operating_point)
    if summary["failures"]:
        raise SceneFailures(summary, output / "summary.json")
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfseg.predict", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="run directory, .keras file or exported SavedModel directory")
    parser.add_argument("--input", required=True, nargs="+", help="scene files, folders of chips, or glob patterns")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--tile-size", type=int, default=0, help="tile size in pixels (0 = the model's training tile size)")
    parser.add_argument("--overlap", type=int, default=-1, help="tile overlap in pixels (-1 = the model's recommended overlap)")
    parser.add_argument("--margin", type=int, default=None, help="pixels at shared tile edges given zero weight (default overlap/4)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tta", type=int, default=1, choices=[1, 2, 4, 8], help="test-time augmentation views (flips/rot90)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="decision threshold in [0, 1] of binary, building and multi-label models (default: the "
                             "model's operating point, else its training threshold); multi-class models take none")
    parser.add_argument("--probabilities", default="float16", choices=["float16", "uint8", "none"],
                        help="probability GeoTIFF encoding (uint8: p*254, nodata 255)")
    parser.add_argument("--no-classes", action="store_true", help="do not keep the class GeoTIFF")
    parser.add_argument("--polygons", dest="polygons", action="store_true", default=None,
                        help="write polygons (default: on for binary models)")
    parser.add_argument("--no-polygons", dest="polygons", action="store_false")
    parser.add_argument("--polygon-classes", type=int, nargs="*", default=[],
                        help="class indexes to polygonize, 0 <= I < classes (default: all but 0; building models: 1)")
    parser.add_argument("--epsg4326", action="store_true", help="write polygons in EPSG:4326 instead of the scene CRS")
    parser.add_argument("--opening", type=int, default=None,
                        help="speckle removal: morphological opening kernel in pixels (0 = off; default: the model's "
                             "operating point, else 3)")
    parser.add_argument("--min-area", type=float, default=None,
                        help="drop polygons smaller than this many pixels² (default: the operating point's, else 20)")
    parser.add_argument("--min-area-m2", type=float, default=None,
                        help="drop polygons smaller than this many m² (needs a projected or geographic CRS; "
                             "default: the operating point's, else 0)")
    parser.add_argument("--instances", choices=["none", "watershed"], default=None,
                        help="split touching buildings by marker-based watershed (default: the operating point's, else "
                             "watershed for binary building models)")
    parser.add_argument("--simplify", type=float, default=1.0, help="polygon simplification tolerance in pixels (0 = off)")
    parser.add_argument("--no-fill-holes", action="store_true", help="keep holes inside polygons")
    parser.add_argument("--overlay", dest="overlay", action="store_true", default=True,
                        help="write the PNG preview (default); with --truth it outlines true positives (green), false "
                             "positives (red) and false negatives (blue)")
    parser.add_argument("--no-overlay", dest="overlay", action="store_false", help="do not write the PNG preview")
    parser.add_argument("--truth", default="", help="GeoJSON of true footprints (any CRS) for the overlay's TP/FP/FN outlines")
    parser.add_argument("--spacenet-csv", nargs="?", const="proposals.csv", default="",
                        help="also write a SpaceNet proposals CSV (default name proposals.csv in --output)")
    parser.add_argument("--cog", action="store_true", help="rewrite rasters as Cloud-Optimized GeoTIFFs with overviews")
    parser.add_argument("--gdal-cache-mb", type=int, default=64, help="GDAL block cache size (MB)")
    parser.add_argument("--runner", default="local", choices=RUNNERS,
                        help="local: scenes one after another in this process; beam: an Apache Beam pipeline, "
                             "one element per scene (see --beam-options)")
    parser.add_argument("--beam-options", default="",
                        help="Beam pipeline options, 'key=value,key=value' or '--key=value --key=value' (default: "
                             "runner=DirectRunner,direct_running_mode=multi_processing,direct_num_workers=<cores>)")
    parser.add_argument("--worker-threads", type=int, default=0,
                        help="TensorFlow threads per Beam worker process (0: cores / direct_num_workers on the "
                             "DirectRunner, TensorFlow's default elsewhere)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    options = PredictOptions(
        tile_size=args.tile_size, overlap=args.overlap, margin=args.margin, batch_size=args.batch_size, tta=args.tta,
        probabilities=args.probabilities, classes=not args.no_classes, polygons=args.polygons,
        polygon_classes=args.polygon_classes, epsg4326=args.epsg4326, overlay=args.overlay, truth=args.truth,
        spacenet_csv=args.spacenet_csv, cog=args.cog, threshold=args.threshold,
        progress=not args.quiet and args.runner == "local", gdal_cache_mb=args.gdal_cache_mb, instances=args.instances,
        polygon_overrides={key: value for key, value in (
            ("opening_px", args.opening), ("min_area_px", args.min_area), ("min_area_m2", args.min_area_m2),
            ("simplify_px", args.simplify), ("fill_holes", False if args.no_fill_holes else None)) if value is not None},
    )
    try:
        if args.worker_threads < 0:
            raise ValueError(f"--worker-threads {args.worker_threads}: expected >= 0")
        if args.beam_options and args.runner != "beam":
            raise ValueError("--beam-options: only used with --runner beam")
        inputs = expand_inputs(args.input)
        if args.runner == "beam":
            from .predict_beam import BeamPipelineError, run_beam  # the launcher never loads TensorFlow

            try:
                summary = run_beam(args.model, inputs, args.output, options, args.beam_options, args.worker_threads)
            except BeamPipelineError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
        else:
            from . import _tf  # noqa: F401  (TensorFlow without its start-up notices on stderr)

            summary = predict_scenes(args.model, inputs, args.output, options)
    except SceneFailures as exc:
        summary = exc.summary
        print(f"error: {exc}", file=sys.stderr)
    except INPUT_ERRORS as exc:
        return report(exc)
    if args.json:
        print(json.dumps(summary))
    else:
        km2 = f", {summary['km2']:.3f} km²" if summary["km2"] else ""
        print(f"{summary['num_scenes']} scene(s) ({summary['completed']} predicted, {summary['skipped']} already "
              f"complete, {summary['failed']} failed), {summary['megapixels']:.1f} Mpx{km2}: {summary['tiles']} tiles, "
              f"{summary['seconds']:.1f} s ({summary['scenes_per_s']:.2f} scenes/s) -> {args.output}")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    # run the tfseg.predict module, not this __main__ copy: the Beam runner imports tfseg.predict, and
    # its classes (SceneFailures, PredictOptions) must be the ones main() catches and pickles
    from tfseg.predict import main as _main

    sys.exit(_main())
