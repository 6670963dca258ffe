"""Whole-scene prediction: ``python -m tfseg.predict --model MODEL --input SCENE.tif [...] --output DIR``.

MODEL is a run directory, a ``.keras`` file (normalization.json beside it) or an exported
SavedModel directory. Scenes are streamed: tiles are read window by window, predicted in
batches, blended with a smooth weight window and written strip by strip into tiled, compressed
GeoTIFFs, so memory is bounded by a strip of tiles whatever the scene height.

Outputs per scene (in DIR): ``<stem>_prob.tif`` (probabilities, float16 or uint8 scaled by 254,
nodata NaN / 255), ``<stem>_class.tif`` (uint8 classes, nodata 255, palette colour table; a
multi-label model: one 0/1 band per class, each with its own threshold, as classes overlap),
``<stem>_polygons.geojson`` (objects after speckle removal, hole filling and simplification, in
the scene CRS or EPSG:4326; ``class`` property = the class index), ``<stem>_overlay.png`` (preview); with ``--spacenet-csv`` one
``ImageId,BuildingId,PolygonWKT_Pix,Confidence`` CSV for all scenes; ``summary.json``.

Example:
    python -m tfseg.predict --model runs/default --input scene.tif --output out/ --tta 4
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .data.raster import RasterError, open_raster
from .inference import Job, Predictor, RasterSource, load_predictor, run_sliding_window
from .postprocess import (
    PolygonOptions,
    pixel_area_m2,
    polygonize_raster,
    spacenet_image_id,
    write_geojson,
    write_spacenet_csv,
)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".img", ".vrt")
PROB_NODATA_UINT8 = 255
CLASS_NODATA = 255


class OutputError(ValueError):
    """An output location cannot be written; the message names it."""


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
    threshold: Optional[float] = None
    polygon: PolygonOptions = field(default_factory=PolygonOptions)
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


def check_writable(directory: Path) -> Path:
    """Create ``directory`` and prove a file can be written there (before any work)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".tfseg_write_test_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"--output {directory}: not writable ({exc.strerror or exc})") from None
    return directory


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
        self.threshold = predictor.threshold if threshold is None else threshold
        self.block = _block_size(info.height, info.width)
        self._prob = self._class = None
        self.class_counts = np.zeros(max(2, predictor.num_classes), np.int64)
        self.valid_pixels = 0

    def _profile(self, **extra):
        import rasterio

        profile = dict(driver="GTiff", width=self.info.width, height=self.info.height, tiled=True,
                       blockxsize=self.block, blockysize=self.block, compress="deflate", BIGTIFF="IF_SAFER")
        if self.info.crs:
            profile.update(crs=self.info.crs, transform=rasterio.Affine(*self.info.transform[:6]))
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
    for index, name in enumerate(predictor.class_names):
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

    from .data.raster import _handle

    src = _handle(str(scene_path))
    factor = max(1.0, max(src.width, src.height) / max_side)
    out_h, out_w = max(1, int(src.height / factor)), max(1, int(src.width / factor))
    bands = [1, 2, 3] if src.count >= 3 else [1]
    image = src.read(bands, out_shape=(len(bands), out_h, out_w), resampling=Resampling.nearest).astype(np.float32)
    image = np.moveaxis(image, 0, -1)
    ok = np.isfinite(image).all(-1)
    if src.nodata is not None:
        ok &= ~np.all(image == src.nodata, axis=-1)
    rgb = np.zeros_like(image)
    if ok.any():
        low, high = np.percentile(image[ok], [2, 98], axis=0)
        rgb = np.clip((image - low) / np.maximum(high - low, 1e-6), 0, 1)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    rgb = (rgb * 255).astype(np.uint8)
    overlay = rgb.astype(np.float32)
    with rasterio.open(class_path) as csrc:
        if predictor.multilabel:  # each class drawn where its band is 1 (overlaps blend them all)
            masks = csrc.read(out_shape=(csrc.count, out_h, out_w), resampling=Resampling.nearest)
            colours = class_colours(predictor)
            for k in range(masks.shape[0]):
                hit = masks[k] == 1
                overlay[hit] = 0.55 * overlay[hit] + 0.45 * np.asarray(colours[k][:3], np.float32)
            overlay[masks[0] == CLASS_NODATA] *= 0.3
            Image.fromarray(overlay.astype(np.uint8)).save(out_path)
            return Path(out_path)
        classes = csrc.read(1, out_shape=(out_h, out_w), resampling=Resampling.nearest)
        cmap = csrc.colormap(1) if csrc.count else {}
    for value, colour in cmap.items():
        if value in (0, CLASS_NODATA):
            continue
        hit = classes == value
        overlay[hit] = 0.55 * overlay[hit] + 0.45 * np.asarray(colour[:3], np.float32)
    overlay[classes == CLASS_NODATA] *= 0.3
    Image.fromarray(overlay.astype(np.uint8)).save(out_path)
    return Path(out_path)


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


def predict_scenes(model, inputs: Sequence, output, options: Optional[PredictOptions] = None) -> dict:
    """Predict scenes (paths) with ``model`` (path or :class:`Predictor`) into ``output``.

    Returns the summary (also written to ``output/summary.json``).
    """
    import rasterio

    options = options or PredictOptions()
    # rasterio passes an int GDAL_CACHEMAX to GDALSetCacheMax64, i.e. in bytes (not MB)
    with rasterio.Env(GDAL_CACHEMAX=max(8, int(options.gdal_cache_mb)) * 1024 * 1024):
        return _predict_scenes(model, inputs, output, options)


def _predict_scenes(model, inputs: Sequence, output, options: PredictOptions) -> dict:
    if options.probabilities not in ("float16", "uint8", "none"):
        raise ValueError(f"--probabilities: expected float16, uint8 or none, got {options.probabilities!r}")
    output = check_writable(Path(output))
    predictor = model if isinstance(model, Predictor) else load_predictor(model)
    infos = []
    for path in inputs:
        info = open_raster(path)
        if info.num_bands != predictor.num_bands:
            raise RasterError(
                f"{path}: the scene has {info.num_bands} band(s) but the model {predictor.source or ''} was trained "
                f"on {predictor.num_bands} band(s)"
            )
        if not info.crs:
            warnings.warn(f"{path}: not georeferenced (no CRS); outputs and polygons are in pixel coordinates",
                          stacklevel=2)
        infos.append(info)
    stems = [Path(i.path).stem for i in infos]
    if len(set(stems)) != len(stems):
        raise OutputError(f"--input: two scenes share a file stem ({sorted(s for s in stems if stems.count(s) > 1)[0]}); "
                          f"their outputs would overwrite each other in {output}")
    want_polygons = options.polygons if options.polygons is not None else (predictor.binary or predictor.multilabel)
    want_polygons = want_polygons or bool(options.spacenet_csv)
    need_classes = options.classes or want_polygons or options.overlay
    threshold = predictor.threshold if options.threshold is None else options.threshold
    jobs, sinks = [], []
    for info, stem in zip(infos, stems):
        sink = GeoTiffSink(
            info, predictor,
            prob_path=None if options.probabilities == "none" else output / f"{stem}_prob.tif",
            class_path=output / f"{stem}_class.tif" if need_classes else None,
            prob_dtype=options.probabilities, threshold=threshold, cog=options.cog,
        )
        jobs.append(Job(RasterSource(info), sink, info.path))
        sinks.append(sink)
    tile_size, overlap = predictor.tiling(options.tile_size, options.overlap)
    stats = run_sliding_window(predictor, jobs, tile_size, overlap, options.batch_size, options.tta, options.margin,
                               block_rows=min(s.block for s in sinks), progress=_Progress(options.progress))
    post_started = time.perf_counter()
    scenes, csv_rows = [], {}
    polygon_classes = options.polygon_classes or (
        [1] if predictor.binary else list(range(0 if predictor.multilabel else 1, predictor.num_classes)))
    for info, stem, sink in zip(infos, stems, sinks):
        entry = {"input": info.path, "width": info.width, "height": info.height, "crs": info.crs}
        transform = info.affine if info.crs else None
        area = pixel_area_m2(info.crs, info.affine, info.width, info.height)
        entry["km2"] = round(info.width * info.height * area / 1e6, 6) if area else None
        entry["valid_fraction"] = round(sink.valid_pixels / max(1, info.width * info.height), 6)
        entry["class_fractions"] = {
            name: round(float(c) / max(1, sink.valid_pixels), 6)
            for name, c in zip(predictor.class_names, sink.class_counts)
        }
        if sink.prob_path:
            entry["probabilities"] = str(sink.prob_path)
        if sink.class_path and options.classes:
            entry["classes"] = str(sink.class_path)
        if want_polygons:
            prob_bands = {v: (1 if predictor.binary else v + 1) for v in polygon_classes}
            records = polygonize_raster(sink.class_path, sink.prob_path, polygon_classes, options.polygon,
                                        pixel_area_m2=area, class_probability_band=prob_bands,
                                        class_bands={v: v + 1 for v in polygon_classes} if predictor.multilabel
                                        else None)
            geojson = output / f"{stem}_polygons.geojson"
            write_geojson(geojson, records, transform, info.crs, options.epsg4326, predictor.class_names, area)
            entry["polygons"] = str(geojson)
            entry["num_polygons"] = len(records)
            if options.spacenet_csv:
                csv_rows[spacenet_image_id(info.path)] = [r for r in records if r.class_index == polygon_classes[0]]
        if options.overlay:
            overlay = output / f"{stem}_overlay.png"
            write_overlay(info.path, sink.class_path, overlay, predictor)
            entry["overlay"] = str(overlay)
        if sink.class_path and not options.classes:
            sink.class_path.unlink(missing_ok=True)
        scenes.append(entry)
    if options.spacenet_csv:
        csv_path = Path(options.spacenet_csv)
        if not csv_path.is_absolute() and csv_path.parent == Path("."):
            csv_path = output / csv_path
        write_spacenet_csv(csv_path, csv_rows)
    km2 = [s["km2"] for s in scenes if s["km2"] is not None]
    summary = {
        "model": predictor.source,
        "scenes": scenes,
        "num_scenes": len(scenes),
        "tiles": stats["tiles"],
        "tile": stats["tile"],
        "stride": stats["stride"],
        "margin": stats["margin"],
        "tta": options.tta,
        "predict_seconds": round(stats["seconds"], 3),
        "postprocess_seconds": round(time.perf_counter() - post_started, 3),
        "tiles_per_s": round(stats["tiles"] / max(stats["seconds"], 1e-9), 3),
        "megapixels": round(stats["pixels"] / 1e6, 3),
        "km2": round(sum(km2), 6) if km2 else None,
    }
    if options.spacenet_csv:
        summary["spacenet_csv"] = str(csv_path)
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
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
    parser.add_argument("--threshold", type=float, default=None, help="binary threshold (default: the model's)")
    parser.add_argument("--probabilities", default="float16", choices=["float16", "uint8", "none"],
                        help="probability GeoTIFF encoding (uint8: p*254, nodata 255)")
    parser.add_argument("--no-classes", action="store_true", help="do not keep the class GeoTIFF")
    parser.add_argument("--polygons", dest="polygons", action="store_true", default=None,
                        help="write polygons (default: on for binary models)")
    parser.add_argument("--no-polygons", dest="polygons", action="store_false")
    parser.add_argument("--polygon-classes", type=int, nargs="*", default=[], help="class indexes to polygonize (default: all but 0)")
    parser.add_argument("--epsg4326", action="store_true", help="write polygons in EPSG:4326 instead of the scene CRS")
    parser.add_argument("--opening", type=int, default=3, help="speckle removal: morphological opening kernel in pixels (0 = off)")
    parser.add_argument("--min-area", type=float, default=20.0, help="drop polygons smaller than this many pixels²")
    parser.add_argument("--min-area-m2", type=float, default=0.0, help="drop polygons smaller than this many m² (needs a CRS)")
    parser.add_argument("--simplify", type=float, default=1.0, help="polygon simplification tolerance in pixels (0 = off)")
    parser.add_argument("--no-fill-holes", action="store_true", help="keep holes inside polygons")
    parser.add_argument("--no-overlay", action="store_true", help="do not write the PNG preview")
    parser.add_argument("--spacenet-csv", nargs="?", const="proposals.csv", default="",
                        help="also write a SpaceNet proposals CSV (default name proposals.csv in --output)")
    parser.add_argument("--cog", action="store_true", help="rewrite rasters as Cloud-Optimized GeoTIFFs with overviews")
    parser.add_argument("--gdal-cache-mb", type=int, default=64, help="GDAL block cache size (MB)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from . import _tf  # noqa: F401  (TensorFlow without its start-up notices on stderr)
    options = PredictOptions(
        tile_size=args.tile_size, overlap=args.overlap, margin=args.margin, batch_size=args.batch_size, tta=args.tta,
        probabilities=args.probabilities, classes=not args.no_classes, polygons=args.polygons,
        polygon_classes=args.polygon_classes, epsg4326=args.epsg4326, overlay=not args.no_overlay,
        spacenet_csv=args.spacenet_csv, cog=args.cog, threshold=args.threshold, progress=not args.quiet,
        gdal_cache_mb=args.gdal_cache_mb,
        polygon=PolygonOptions(opening_px=args.opening, min_area_px=args.min_area, min_area_m2=args.min_area_m2,
                               fill_holes=not args.no_fill_holes, simplify_px=args.simplify),
    )
    try:
        inputs = expand_inputs(args.input)
        summary = predict_scenes(args.model, inputs, args.output, options)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary))
    else:
        km2 = f", {summary['km2']:.3f} km²" if summary["km2"] else ""
        print(f"{summary['num_scenes']} scene(s), {summary['megapixels']:.1f} Mpx{km2}: {summary['tiles']} tiles in "
              f"{summary['predict_seconds']:.1f} s ({summary['tiles_per_s']:.1f} tiles/s), "
              f"post-processing {summary['postprocess_seconds']:.1f} s -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
