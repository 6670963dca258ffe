"""Evaluation: pixel metrics of a model on image/mask pairs, and object (polygon) scores.

``python -m tfseg.evaluate pixels --model MODEL --images GLOB_OR_DIR --masks GLOB_OR_DIR [--json]``
    Images and masks are paired by name (:mod:`tfseg.data.pairing`: ``--image-pattern
    '{id}_sat.jpg' --mask-pattern '{id}_mask.png'``, ``--mask-suffix .mask``, or the common namings
    detected); each whole image is predicted with the same sliding-window engine as
    ``tfseg.predict``. Binary: ``{"iou", "f1", "precision", "recall", "accuracy", "miou",
    "num_images"}`` (the foreground's scores; ``miou`` over background and foreground);
    multi-class and multi-label (K-band 0/1 masks, one per class) add ``"per_class": {name:
    {"iou", "f1", "precision", "recall"}}`` (f1 = Dice; ``null`` for
    a class absent from truth and prediction) and top-level scores are means over the classes
    present in truth or prediction: the definitions of :mod:`tfseg.metrics`, as in training.

``python -m tfseg.evaluate spacenet --truth TRUTH.csv --proposals PROPOSALS.csv [--json]``
    The SpaceNet building score (see :mod:`tfseg.scoring`).

``python -m tfseg.evaluate polygons --truth A.geojson --proposals B.geojson [--json]``
    The same matching on georeferenced polygons (different CRSs reprojected).

Example:
    python -m tfseg.evaluate pixels --model runs/kampala --images data/images --masks data/masks --json
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .data.formats.colour_mask import decode_colour_mask, read_colour_mask
from .data.formats.mask_folder import MaskFolderError, pair_images_and_masks  # noqa: F401  (MaskFolderError: API)
from .data.labels import apply_lookup, binary_mask_lookup, check_multilabel_values, class_mask_lookup
from .data.pairing import IMAGE_SUFFIXES
from .inference import ArraySink, Job, Predictor, RasterSource, load_predictor, run_sliding_window
from .metrics import confusion_matrix_numpy, scores_from_matrix


def _list_files(spec: str, what: str) -> list:
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    if not files:
        raise FileNotFoundError(f"--{what} {spec}: no image files found")
    return files


def _read_mask(path: Path, predictor: Predictor, ignore_index: int = 255) -> np.ndarray:
    """Class indices (uint8, ``ignore_index`` = ignored) from a {0,1}/{0,255} binary mask, a class
    index mask, or a colour mask (RGB or palette PNG) decoded with the model's palette; for a
    multi-label model (H, W, K) 0/1 masks from a K-band mask."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    if predictor.palette and not predictor.multilabel and _is_colour_image(path):
        rgb = read_colour_mask(path)
        labels, _ = decode_colour_mask(rgb, predictor.palette, ignore_index, classes=predictor.class_names,
                                       source=str(path))
        return labels

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            data = src.read()
            nodata = src.nodata
    if predictor.multilabel:  # one 0/1 band per class (like mask_folder's multilabel masks)
        if data.shape[0] < predictor.num_classes:
            raise ValueError(f"mask {path}: {data.shape[0]} band(s), the multi-label model has "
                             f"{predictor.num_classes} classes (one 0/1 band per class expected)")
        bands = []
        for k in range(predictor.num_classes):
            check_multilabel_values(set(np.unique(data[k]).tolist()), ignore_index, f"{path} (band {k + 1})", nodata)
            bands.append(apply_lookup(data[k], None, nodata, ignore_index))
        return np.stack(bands, axis=-1)
    mask = data[0]
    values = set(np.unique(mask).tolist())
    if predictor.binary:
        lookup = binary_mask_lookup(values, ignore_index, str(path), nodata)
    else:  # a value that is no class is an error naming the file, as in training
        lookup = class_mask_lookup(values, predictor.num_classes, ignore_index, str(path), nodata)
    return apply_lookup(mask, lookup, nodata, ignore_index)


def _is_colour_image(path: Path) -> bool:
    """RGB(A) or palette ("P" mode) images are colour masks; grey/index images are not."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.mode in ("RGB", "RGBA", "P", "PA")
    except OSError:  # e.g. a multi-band GeoTIFF PIL cannot open: 3+ bands mean colour
        import rasterio

        with rasterio.open(path) as src:
            return src.count >= 3


def _task(predictor: Predictor) -> str:
    if predictor.binary:
        return "binary"
    return "multilabel" if predictor.multilabel else "multiclass"


def evaluate_pixels(model, images: Sequence[Path], masks: Sequence[Path], tile_size: int = 0, overlap: int = -1,
                    batch_size: int = 4, tta: int = 1, mask_suffix: Optional[str] = None, image_pattern: str = "",
                    mask_pattern: str = "", threshold=None) -> dict:
    """Pixel metrics of ``model`` (path or :class:`Predictor`) on paired images and masks, by the
    definitions of :mod:`tfseg.metrics` (the ignore index and classes are the run's), at
    ``threshold`` (default the model's: its operating point's when it has one; multilabel: one
    value for all classes or one per class, default the card's per-class thresholds)."""
    from .data.raster import open_raster

    predictor = model if isinstance(model, Predictor) else load_predictor(model)
    pairs = pair_images_and_masks(images, masks, mask_suffix, image_pattern=image_pattern, mask_pattern=mask_pattern)
    task, ignore = _task(predictor), predictor.ignore_index
    matrix = None
    tile, overlap = predictor.tiling(tile_size, overlap)
    for image_path, mask_path in pairs:
        info = open_raster(image_path)
        truth = _read_mask(mask_path, predictor, ignore)
        if truth.shape[:2] != (info.height, info.width):
            raise ValueError(f"{mask_path}: mask is {truth.shape[1]}x{truth.shape[0]} but image {image_path} is "
                             f"{info.width}x{info.height}")
        sink = ArraySink(info.height, info.width, predictor.num_classes)
        run_sliding_window(predictor, [Job(RasterSource(info), sink, str(image_path))], tile, overlap, batch_size, tta)
        pred = predictor.to_classes(sink.probs, threshold)
        valid = (sink.valid[..., None] if truth.ndim == 3 else sink.valid) & (truth != ignore)
        counts = confusion_matrix_numpy(truth, pred, valid, predictor.num_classes, task)
        matrix = counts if matrix is None else matrix + counts
    result = scores_from_matrix(matrix, task, predictor.class_names if task == "binary" else
                                predictor.class_names[:predictor.num_classes])
    if task == "binary":
        result["threshold"] = predictor.threshold if threshold is None else threshold
    result["num_images"] = len(pairs)
    return result


def _print_object_scores(result: dict) -> None:
    print(f"{'':28s} {'TP':>7s} {'FP':>7s} {'FN':>7s} {'Prec':>7s} {'Rec':>7s} {'F1':>7s}")
    rows = [(f"AOI {k}", v) for k, v in result["per_aoi"].items()] + [("overall", result["overall"])]
    for name, s in rows:
        print(f"{name[:28]:28s} {s['TruePos']:7d} {s['FalsePos']:7d} {s['FalseNeg']:7d} "
              f"{s['Precision']:7.4f} {s['Recall']:7.4f} {s['F1Score']:7.4f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfseg.evaluate", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pixels = sub.add_parser("pixels", help="pixel IoU/F1/precision/recall on image/mask pairs")
    pixels.add_argument("--model", required=True, help="run directory, .keras file or SavedModel directory")
    pixels.add_argument("--images", required=True, help="folder or glob of images")
    pixels.add_argument("--masks", required=True, help="folder or glob of masks (paired by stem)")
    pixels.add_argument("--mask-suffix", default=None, help="suffix of mask stems, e.g. .mask (default: detected)")
    pixels.add_argument("--image-pattern", default="", help="image file names, e.g. '{id}_sat.jpg' or 'img_{id}.tif'")
    pixels.add_argument("--mask-pattern", default="", help="mask file names, e.g. '{id}_mask.png' or 'mask_{id}.tif' "
                        "(default: the common namings are detected)")
    pixels.add_argument("--tile-size", type=int, default=0)
    pixels.add_argument("--overlap", type=int, default=-1)
    pixels.add_argument("--batch-size", type=int, default=4)
    pixels.add_argument("--tta", type=int, default=1, choices=[1, 2, 4, 8])
    pixels.add_argument("--threshold", type=float, default=None,
                        help="binary threshold (default: the model's operating point, else its training threshold)")
    pixels.add_argument("--json", action="store_true")
    spacenet = sub.add_parser("spacenet", help="SpaceNet building F1 of a proposals CSV against a truth CSV")
    spacenet.add_argument("--truth", required=True)
    spacenet.add_argument("--proposals", required=True)
    spacenet.add_argument("--json", action="store_true")
    polygons = sub.add_parser("polygons", help="object F1 of georeferenced polygons (GeoJSON)")
    polygons.add_argument("--truth", required=True)
    polygons.add_argument("--proposals", required=True)
    polygons.add_argument("--min-area", type=float, default=0.0, help="drop polygons smaller than this (m²)")
    polygons.add_argument("--json", action="store_true")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .scoring import score_geojson, score_spacenet

    try:
        if args.command == "pixels":
            from . import _tf  # noqa: F401  (TensorFlow without its start-up notices on stderr)

            result = evaluate_pixels(args.model, _list_files(args.images, "images"), _list_files(args.masks, "masks"),
                                     args.tile_size, args.overlap, args.batch_size, args.tta, args.mask_suffix,
                                     args.image_pattern, args.mask_pattern, args.threshold)
        elif args.command == "spacenet":
            result = score_spacenet(args.truth, args.proposals)
        else:
            result = score_geojson(args.truth, args.proposals, min_area=args.min_area)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    elif args.command == "pixels":
        def number(value):
            return "n/a (absent)" if value is None else f"{value:.4f}"

        for key in ("iou", "f1", "precision", "recall", "miou"):
            print(f"{key:10s} {number(result[key])}")
        for name, s in result.get("per_class", {}).items():
            print(f"  {name:20s} iou {number(s['iou'])}  f1 (dice) {number(s['f1'])}")
        print(f"images     {result['num_images']}")
    else:
        _print_object_scores(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
