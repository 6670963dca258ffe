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
    ``--predictions GLOB_OR_DIR`` instead of ``--images`` scores ``tfseg.predict`` outputs as they
    are (``<id>_class.tif``, or ``<id>_prob.tif`` thresholded; only the model's card is read).
    ``--wkt train_wkt_v4.csv --grid-sizes grid_sizes.csv`` instead of ``--masks`` takes the truth
    from Dstl WKT labels, rasterized by the ``dstl`` format's code as in training (the image id
    is the image's stem, the id in ``--image-pattern``, or the prediction's ``<id>``).

``python -m tfseg.evaluate spacenet --truth TRUTH.csv --proposals PROPOSALS.csv [--json]``
    The SpaceNet building score (see :mod:`tfseg.scoring`).

``python -m tfseg.evaluate polygons --truth A.geojson --proposals B.geojson [--json]``
    The same matching on georeferenced polygons (different CRSs reprojected).

Example:
    python -m tfseg.evaluate pixels --model runs/kampala --images data/images --masks data/masks --json
    python -m tfseg.evaluate pixels --model runs/dstl --predictions out/ --wkt dstl/train_wkt_v4.csv \
        --grid-sizes dstl/grid_sizes.csv --json
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import glob
import json
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

# first: .metrics imports keras, which imports TensorFlow; through ._tf without its start-up notices
from . import _tf  # noqa: F401,I001
from .errors import INPUT_ERRORS, report
from .data.colours import decode_colour_mask, read_colour_mask
from .data.formats.mask_folder import MaskFolderError, pair_images_and_masks  # noqa: F401  (MaskFolderError: API)
from .data.labels import apply_lookup, binary_mask_lookup, check_multilabel_values, class_mask_lookup
from .data.pairing import IMAGE_SUFFIXES
from .class_offsets import decide
from .inference import ArraySink, Job, Predictor, RasterSource, load_predictor, run_sliding_window
from .predict import check_threshold
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


PREDICTION_KINDS = ("class", "prob")  # tfseg.predict's rasters per scene: <id>_class.tif, <id>_prob.tif


def _list_predictions(spec: str) -> list:
    """``--predictions``: a glob as given, or a folder's ``<id>_class.tif`` (else ``<id>_prob.tif``)."""
    path = Path(spec)
    if not path.is_dir():
        return _list_files(spec, "predictions")
    for kind in PREDICTION_KINDS:
        files = sorted(path.glob(f"*_{kind}.tif"))
        if files:
            return files
    raise FileNotFoundError(f"--predictions {spec}: no tfseg.predict outputs (<id>_class.tif or <id>_prob.tif)")


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
    if _task(predictor) == "binary":  # the footprint mask of a building model
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
    """How the predictions are scored: a building model (one channel, or multi-label
    footprint[/boundary/contact] channels: :meth:`Predictor.instance_bands`) as binary, on its
    footprint (its class map, :meth:`Predictor.to_classes`)."""
    if predictor.instance_bands() is not None:
        return "binary"
    return "multilabel" if predictor.multilabel else "multiclass"


def _prediction_id(path: Path) -> tuple[str, str]:
    """``(image id, "class" | "prob")`` of a ``tfseg.predict`` output raster, from its name."""
    stem = Path(path).stem
    for kind in PREDICTION_KINDS:
        if stem.endswith("_" + kind) and len(stem) > len(kind) + 1:
            return stem[: -len(kind) - 1], kind
    raise ValueError(f"--predictions {path}: not a tfseg.predict output (expected <id>_class.tif or "
                     f"<id>_prob.tif)")


def _read_prediction(path: Path, predictor: Predictor, threshold=None) -> tuple[np.ndarray, np.ndarray]:
    """``(predicted classes, valid)`` of a ``tfseg.predict`` raster: ``<id>_class.tif`` (a class
    index band, or one 0/1 band per class of a multi-label model) or ``<id>_prob.tif`` (one
    probability band per output, float or uint8 scaled by 254) thresholded as the model's (or
    at ``threshold``). Its nodata pixels are not scored."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    kind = _prediction_id(path)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            data, nodata, scales = src.read(), src.nodata, src.scales
            descriptions = [d for d in src.descriptions if d]
    bands = predictor.num_classes if kind == "prob" or predictor.multilabel else 1
    names = predictor.class_names[1:] if predictor.binary else predictor.class_names[: predictor.num_classes]
    expected = ([f"p({n})" for n in names] if kind == "prob" else names if predictor.multilabel else ["class"])
    if data.shape[0] != bands:
        raise ValueError(f"--predictions {path}: {data.shape[0]} band(s), the model's {kind} raster has {bands} "
                         f"({expected})")
    if descriptions and descriptions != expected:  # the prediction of another model
        raise ValueError(f"--predictions {path}: bands {descriptions}, the model's {kind} raster has {expected}")
    invalid = np.isnan(data) if data.dtype.kind == "f" else np.zeros(data.shape, bool)
    if nodata is not None and not np.isnan(nodata):
        invalid |= data == nodata
    valid = ~invalid.any(axis=0)
    if kind == "class":
        if threshold is not None:
            raise ValueError(f"--threshold {threshold}: {path} holds thresholded classes already; score the "
                             "<id>_prob.tif rasters to apply another threshold")
        classes = np.moveaxis(data, 0, -1) if predictor.multilabel else data[0]
        bad = set(np.unique(classes[valid]).tolist()) - set(range(2 if _task(predictor) != "multiclass"
                                                                  else predictor.num_classes))
        if bad:
            raise ValueError(f"--predictions {path}: value(s) {sorted(bad)} are no class of the model")
        return classes.astype(np.uint8), valid
    probs = np.moveaxis(np.where(invalid, 0, data).astype(np.float32), 0, -1)
    if data.dtype == np.uint8:
        probs *= np.float32(scales[0] if scales and scales[0] != 1 else 1 / 254.0)
    return predictor.to_classes(probs, threshold), valid


class WktTruth:
    """Multi-label truth from a Dstl WKT CSV (``ImageId,ClassType,MultipolygonWKT``) and its grid
    sizes CSV (``ImageId,Xmax,Ymin``), rasterized onto an image's grid by the ``dstl`` format's
    own code (:func:`tfseg.data.formats.dstl.image_labels`, as in training): ``(H, W, 10)`` 0/1.

    Example:
        >>> truth = WktTruth("train_wkt_v4.csv", "grid_sizes.csv", predictor)("6120_2_2", info)
    """

    def __init__(self, wkt_path, grid_path, predictor: Predictor):
        from .data.formats.dstl import CLASSES, read_grid_sizes, read_wkt_labels

        if not predictor.multilabel or predictor.num_classes != len(CLASSES):
            raise ValueError(f"--wkt {wkt_path}: Dstl labels are {len(CLASSES)} multi-label classes {CLASSES}; the "
                             f"model ({predictor.source or 'given'}) is {_task(predictor)} with "
                             f"{predictor.num_classes} output(s) {predictor.class_names[:predictor.num_classes]}")
        self.wkt_path, self.grid_path = Path(wkt_path), Path(grid_path)
        self.labels, self.grid = read_wkt_labels(self.wkt_path), read_grid_sizes(self.grid_path)

    def __call__(self, image_id: str, info) -> np.ndarray:
        from rasterio.windows import Window

        from .data.formats import DataFormatError
        from .data.formats.dstl import image_labels

        if image_id not in self.labels:
            known = sorted(self.labels)
            raise DataFormatError(f"--wkt {self.wkt_path}: no rows for image {image_id!r} (it labels {len(known)} "
                                  f"image(s): {', '.join(known[:5])}{', ...' if len(known) > 5 else ''})")
        if image_id not in self.grid:
            raise DataFormatError(f"--grid-sizes {self.grid_path}: no Xmax/Ymin row for image {image_id!r}")
        labels = image_labels(self.labels[image_id], self.grid[image_id], info.width, info.height,
                              source=f"{self.wkt_path}:{image_id}")
        return labels.rasterize(Window(0, 0, info.width, info.height), info)


def _card_predictor(path) -> Predictor:
    """The model card of ``path`` (run dir, .keras, SavedModel or model_card.json), no weights:
    all that scoring saved predictions needs (classes, task, thresholds, ignore index)."""
    from .model_card import load_model_card

    card = load_model_card(path)
    return Predictor(card, card.num_outputs, str(path))


def evaluate_pixels(model, images: Optional[Sequence[Path]] = None, masks: Optional[Sequence[Path]] = None,
                    tile_size: int = 0, overlap: int = -1, batch_size: int = 4, tta: int = 1,
                    mask_suffix: Optional[str] = None, image_pattern: str = "", mask_pattern: str = "",
                    threshold=None, *, predictions: Optional[Sequence[Path]] = None, wkt=None,
                    grid_sizes=None, class_offsets: bool = True) -> dict:
    """Pixel metrics of ``model`` (path or :class:`Predictor`) by the definitions of
    :mod:`tfseg.metrics` (the ignore index and classes are the run's), at ``threshold`` (default
    the model's: its operating point's when it has one; multilabel: one value for all classes or
    one per class, default the card's per-class thresholds).

    The prediction: ``images`` predicted whole with the sliding-window engine, or
    ``predictions`` (``tfseg.predict``'s ``<id>_class.tif`` / ``<id>_prob.tif``; only the model
    card of ``model`` is read). The truth: ``masks`` paired by name, or a Dstl ``wkt`` CSV with
    its ``grid_sizes`` CSV (the image id: the image's stem, or the id in ``image_pattern``).
    ``class_offsets=False``: a multiclass model decides by plain argmax, without its card's
    ``class_offsets`` (the report's ``class_offsets`` says which were used; with them, predicting
    ``images``, ``without_class_offsets`` holds the plain-argmax report of the same predictions)."""
    from .data.pairing import compile_pattern
    from .data.raster import open_raster

    if (images is None) == (predictions is None):
        raise ValueError("give either --images (predicted by the model) or --predictions (tfseg.predict outputs)")
    if (masks is None) == (wkt is None):
        raise ValueError("give either --masks or --wkt (with --grid-sizes) as the truth")
    if wkt is not None and not grid_sizes:
        raise ValueError(f"--wkt {wkt}: needs --grid-sizes (the Dstl grid_sizes.csv: ImageId,Xmax,Ymin)")
    if wkt is not None and (mask_suffix is not None or mask_pattern):
        raise ValueError(f"--wkt {wkt}: --mask-suffix / --mask-pattern name mask files; the WKT truth has none")
    if predictions is not None and (tile_size or overlap != -1 or tta != 1):
        raise ValueError(f"--tile-size / --overlap / --tta (got {tile_size} / {overlap} / {tta}): no prediction is "
                         "run for --predictions, they are scored as they are")
    if isinstance(model, Predictor):
        predictor = model
    else:
        predictor = _card_predictor(model) if predictions is not None else load_predictor(model)
    check_threshold(threshold, predictor)  # a probability, and not for a multi-class (argmax) model
    if not class_offsets and predictor.card.class_offsets is not None:
        if predictions is not None and any(_prediction_id(Path(p))[1] == "class" for p in predictions):
            raise ValueError("--no-class-offsets: the --predictions _class.tif maps were decided when they were "
                             "predicted; give the _prob.tif rasters (decided here) or score --images with the model")
        predictor = copy.copy(predictor)  # the caller's predictor keeps its card
        predictor.card = dataclasses.replace(predictor.card, class_offsets=None)
    task, ignore = _task(predictor), predictor.ignore_index
    inputs = list(images if images is not None else predictions)
    if wkt is not None:
        truth_of = WktTruth(wkt, grid_sizes, predictor)
        regex = compile_pattern(image_pattern, "--image-pattern") if image_pattern else None

        def image_id(path):
            if predictions is not None:
                return _prediction_id(path)[0]
            match = regex.match(path.name) if regex else None
            if regex and not match:
                raise ValueError(f"--images {path}: does not match --image-pattern {image_pattern!r}")
            return match.group("id") if match else path.stem

        pairs = [(path, image_id(Path(path))) for path in inputs]
    else:
        if predictions is not None and not image_pattern:  # tfseg.predict's names: <id>_class.tif
            kinds = {_prediction_id(p)[1] for p in inputs}
            if len(kinds) > 1:
                raise ValueError("--predictions: give either the _class.tif or the _prob.tif rasters, not both")
            image_pattern = "{id}_" + kinds.pop() + ".*"
            if mask_suffix is not None and not mask_pattern:
                mask_pattern, mask_suffix = "{id}" + mask_suffix + ".*", None
        pairs = pair_images_and_masks(inputs, masks, mask_suffix, image_pattern=image_pattern,
                                      mask_pattern=mask_pattern)
    matrix = plain_matrix = None
    plain_too = images is not None and predictor.card.class_offsets is not None  # same pass, plain argmax
    if images is not None:
        tile, overlap = predictor.tiling(tile_size, overlap)
    for path, truth_key in pairs:
        info = open_raster(path)
        if wkt is not None:
            truth = truth_of(truth_key, info)
        else:
            truth = _read_mask(truth_key, predictor, ignore)
            if truth.shape[:2] != (info.height, info.width):
                raise ValueError(f"{truth_key}: mask is {truth.shape[1]}x{truth.shape[0]} but "
                                 f"{'prediction' if images is None else 'image'} {path} is {info.width}x{info.height}")
        if predictions is not None:
            pred, valid = _read_prediction(Path(path), predictor, threshold)
        else:
            sink = ArraySink(info.height, info.width, predictor.num_classes)
            run_sliding_window(predictor, [Job(RasterSource(info), sink, str(path))], tile, overlap, batch_size, tta)
            pred, valid = predictor.to_classes(sink.probs, threshold), sink.valid
        valid = (valid[..., None] if truth.ndim == 3 else valid) & (truth != ignore)
        counts = confusion_matrix_numpy(truth, pred, valid, predictor.num_classes, task)
        matrix = counts if matrix is None else matrix + counts
        if plain_too:
            counts = confusion_matrix_numpy(truth, decide(sink.probs), valid, predictor.num_classes, task)
            plain_matrix = counts if plain_matrix is None else plain_matrix + counts
    names = predictor.class_names if task == "binary" else predictor.class_names[:predictor.num_classes]
    result = scores_from_matrix(matrix, task, names)
    if task == "binary":
        result["threshold"] = predictor.threshold if threshold is None else threshold
    result["num_images"] = len(pairs)
    if predictor.card.class_offsets is not None:
        result["class_offsets"] = dict(zip(predictor.class_names, predictor.card.class_offsets))
    if plain_matrix is not None:  # what the offsets changed, from the same predictions
        result["without_class_offsets"] = scores_from_matrix(plain_matrix, task, names)
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
    pixels.add_argument("--model", required=True, help="run directory, .keras file or SavedModel directory "
                        "(with --predictions: only its model card is read; a model_card.json also works)")
    prediction = pixels.add_mutually_exclusive_group(required=True)
    prediction.add_argument("--images", help="folder or glob of images, predicted by the model")
    prediction.add_argument("--predictions", help="folder or glob of tfseg.predict outputs scored as they are: "
                            "<id>_class.tif (a folder: these) or <id>_prob.tif (thresholded as the model's)")
    truth = pixels.add_mutually_exclusive_group(required=True)
    truth.add_argument("--masks", help="folder or glob of masks (paired by name)")
    truth.add_argument("--wkt", help="Dstl labels CSV (ImageId,ClassType,MultipolygonWKT, e.g. train_wkt_v4.csv) "
                       "rasterized as the dstl format does; the image id is the file's id")
    pixels.add_argument("--grid-sizes", default=None, help="with --wkt: the Dstl grid_sizes.csv (ImageId,Xmax,Ymin)")
    pixels.add_argument("--mask-suffix", default=None, help="suffix of mask stems, e.g. .mask (default: detected)")
    pixels.add_argument("--image-pattern", default="", help="image file names, e.g. '{id}_sat.jpg' or 'img_{id}.tif'")
    pixels.add_argument("--mask-pattern", default="", help="mask file names, e.g. '{id}_mask.png' or 'mask_{id}.tif' "
                        "(default: the common namings are detected)")
    pixels.add_argument("--tile-size", type=int, default=0)
    pixels.add_argument("--overlap", type=int, default=-1)
    pixels.add_argument("--batch-size", type=int, default=4)
    pixels.add_argument("--tta", type=int, default=1, choices=[1, 2, 4, 8])
    pixels.add_argument("--threshold", type=float, default=None,
                        help="decision threshold in [0, 1] of binary, building and multi-label models (default: the "
                             "model's operating point, else its training threshold); multi-class models take none")
    pixels.add_argument("--no-class-offsets", action="store_true",
                        help="multiclass: decide by plain argmax, without the model card's class_offsets")
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
            if args.grid_sizes and not args.wkt:
                raise ValueError(f"--grid-sizes {args.grid_sizes}: only read with --wkt")
            result = evaluate_pixels(
                args.model, _list_files(args.images, "images") if args.images else None,
                _list_files(args.masks, "masks") if args.masks else None, args.tile_size, args.overlap,
                args.batch_size, args.tta, args.mask_suffix, args.image_pattern, args.mask_pattern, args.threshold,
                predictions=_list_predictions(args.predictions) if args.predictions else None, wkt=args.wkt,
                grid_sizes=args.grid_sizes, class_offsets=not args.no_class_offsets)
        elif args.command == "spacenet":
            result = score_spacenet(args.truth, args.proposals)
        else:
            result = score_geojson(args.truth, args.proposals, min_area=args.min_area)
    except INPUT_ERRORS as exc:
        return report(exc)
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
