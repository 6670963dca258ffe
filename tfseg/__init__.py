"""tfseg: semantic segmentation of satellite and aerial imagery with TensorFlow / Keras 3.

The public API: load a config, train, evaluate, predict, export, load a predictor or a model
card. Each function imports what it needs when called (``import tfseg`` stays light), and every
input error it raises is a :class:`TfsegError` (a ``ValueError``) naming the file, key or
argument. The command lines (``tfseg train ...`` or ``python -m tfseg.train ...``) are thin
wrappers over the same functions.

Example:
    >>> import tfseg
    >>> cfg = tfseg.load_config("configs/default.yaml", ["train.epochs=1"])
    >>> result = tfseg.train_model(cfg, "runs/quick")
    >>> tfseg.export_model("runs/quick", "models/tfseg/1")
    >>> summary = tfseg.predict_scenes("runs/quick", ["scene.tif"], "out/")
"""
import os as _os

# TensorFlow logs CUDA/oneDNN notices at import on CPU machines; keep user output clean.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from .errors import TfsegError  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "TfsegError", "load_config", "train_model", "evaluate_pixels", "predict_scenes", "PredictOptions",
    "export_model", "load_predictor", "load_model_card", "load_scenes", "pair_images_and_masks", "score_objects",
    "merge_polygons", "open_raster", "read_raster", "read_vector_labels", "read_pixel_polygons", "read_class_mask", "polygonize_mask",
    "PolygonOptions", "PolygonRecord", "write_spacenet_csv", "spacenet_image_id", "best_epoch", "available_models",
    "history_columns", "compare_runs", "profile_model", "ConfigError", "add_overrides_argument", "quiet_tensorflow",
    "__version__",
]


def load_config(path=None, overrides=()):
    """Load and validate a run config.

    Args:
        path: a YAML config (``configs/*.yaml``); None = ``configs/default.yaml``.
        overrides: ``KEY=VALUE`` strings applied last, as ``--set`` on the command line
            (e.g. ``["train.epochs=5", "data.batch_size=4"]``).

    Returns:
        The validated :class:`tfseg.config.Config` (``data`` / ``model`` / ``train`` /
        ``export`` / ``tracking``). A bad key or value raises ``ConfigError`` naming the key
        and the allowed values.

    Example:
        >>> cfg = tfseg.load_config("configs/landcover_dubai.yaml", ["train.max_minutes=10"])
        >>> cfg.model.name
        'unet'
    """
    from .config import load

    return load(path, list(overrides))


def train_model(cfg, run_dir=None, overwrite: bool = False, verbose: int = 1) -> dict:
    """Train a model from ``cfg`` into a run directory (what ``python -m tfseg.train`` does).

    Args:
        cfg: a config from :func:`load_config`.
        run_dir: where the run is written (``model.keras``, ``model_card.json``,
            ``metrics.json``, ``history.csv``, figures, the SavedModel export); None = a new
            directory under ``runs/``. An existing run directory of the same config resumes.
        overwrite: replace an existing run directory of another config.
        verbose: Keras verbosity (0 quiet, 1 progress bars, 2 one line per epoch).

    Returns:
        The final metrics (also ``RUN_DIR/metrics.json``): ``val`` (the validation scores:
        ``iou``, ``f1``, ``precision``, ``recall``, ...), ``epochs``, ``steps``,
        ``train_seconds``, ``run_dir`` and ``chief``.

    Example:
        >>> result = tfseg.train_model(tfseg.load_config(), "runs/default")
        >>> result["val"]["iou"], result["run_dir"]
    """
    from .train import train

    return train(cfg, run_dir, overwrite, verbose=verbose)


def evaluate_pixels(model, images=None, masks=None, **options) -> dict:
    """Pixel metrics of a trained model on whole scenes (``tfseg.evaluate pixels``).

    Args:
        model: a run directory, ``.keras`` file or SavedModel (or a loaded predictor).
        images: scene paths to predict and score (or ``predictions=`` paths of
            ``tfseg.predict`` outputs, scored as they are).
        masks: the truth masks (paired by file stem; or ``wkt=`` with ``grid_sizes=`` for Dstl
            WKT truth).
        **options: ``tile_size``, ``overlap``, ``batch_size``, ``tta``, ``threshold``,
            ``mask_suffix``, ``image_pattern``, ``mask_pattern``, ``predictions``, ``wkt``,
            ``grid_sizes`` as in :func:`tfseg.evaluate.evaluate_pixels`.

    Returns:
        ``{"iou", "f1", "precision", "recall", ..., "per_class": {...}, "scenes": [...]}`` by
        the same metric definitions as training.

    Example:
        >>> tfseg.evaluate_pixels("runs/default", images=["a.tif"], masks=["a_mask.tif"])["iou"]
    """
    from .evaluate import evaluate_pixels as _evaluate

    return _evaluate(model, images, masks, **options)


def predict_scenes(model, inputs, output, options=None) -> dict:
    """Predict whole scenes with bounded memory into georeferenced outputs
    (``python -m tfseg.predict``).

    Args:
        model: a run directory, ``.keras`` file or SavedModel (or a loaded predictor).
        inputs: scene paths (GeoTIFF/PNG/JPEG).
        output: the output directory (class maps, probabilities, polygons, overlays, one
            completion marker per scene).
        options: a :class:`tfseg.PredictOptions` (``tile_size``, ``overlap``, ``batch_size``,
            ``tta``, ``probabilities``, ``polygons``, ``threshold``, ``spacenet_csv``, ``cog``,
            ...); None = the model's defaults.

    Returns:
        The run summary (also written into ``output``): ``scenes`` (one entry per scene),
        ``num_scenes``, ``completed``, ``skipped``, ``failed``, ``failures``, the merged
        polygons' path.

    Example:
        >>> summary = tfseg.predict_scenes("runs/default", ["scene.tif"], "out/",
        ...                                tfseg.PredictOptions(tta=2))
    """
    from .predict import predict_scenes as _predict

    return _predict(model, list(inputs), output, options)


def export_model(model, output, format: str = "savedmodel", threshold=None, overwrite: bool = False):
    """Export a trained model as a self-describing SavedModel (TF Serving: ``output`` =
    BASE/NAME/VERSION) or a TFLite file (``python -m tfseg.export``).

    Args:
        model: a run directory or a ``.keras`` file with its model card.
        output: BASE/NAME/VERSION (VERSION a positive integer); for ``tflite`` a ``.tflite``
            file or a directory.
        format: ``"savedmodel"`` or ``"tflite"``.
        threshold: a new binary decision threshold (default: the card's).
        overwrite: replace an existing output.

    Returns:
        The path written (``pathlib.Path``).

    Example:
        >>> tfseg.export_model("runs/default", "models/tfseg/1")
        PosixPath('models/tfseg/1')
    """
    from .export import export_model as _export

    return _export(model, output, format, threshold, overwrite)


def load_predictor(path):
    """Load a trained model for prediction: a run directory, ``.keras`` file or SavedModel.

    Args:
        path: the model.

    Returns:
        A :class:`tfseg.inference.Predictor`: call it on raw pixels (N, H, W, bands) for
        probabilities; ``.card`` is its model card, ``.to_classes(probs)`` the class map.

    Example:
        >>> predictor = tfseg.load_predictor("models/tfseg/1")
        >>> probs = predictor(raw_tiles)
    """
    from .inference import load_predictor as _load

    return _load(path)


def load_model_card(path):
    """The model card of a run directory, ``.keras`` file, SavedModel or ``model_card.json``.

    Args:
        path: where the model is.

    Returns:
        The typed :class:`tfseg.model_card.ModelCard` (classes, task, threshold, bands, dtype,
        nodata, normalization, tile size, overlap, metrics, ...).

    Example:
        >>> tfseg.load_model_card("runs/default").classes
        ['background', 'building']
    """
    from .model_card import load_model_card as _load

    return _load(path)


def load_scenes(data_cfg):
    """The training and validation scenes of a ``data`` config (any ``data.format``).

    Args:
        data_cfg: ``cfg.data`` of a config from :func:`load_config`.

    Returns:
        ``(train, val)``: lists of :class:`tfseg.data.sources.Scene` (raster + labels).

    Example:
        >>> train, val = tfseg.load_scenes(tfseg.load_config("configs/landcover_dubai.yaml").data)
    """
    from .data.formats import load_scenes as _load

    return _load(data_cfg)


def pair_images_and_masks(images, masks, mask_suffix=None) -> list:
    """Pair image files with their mask files by stem, as the ``mask_folder`` format does.

    Args:
        images: a folder of images, or a list of image paths.
        masks: a folder of masks, or a list of mask paths.
        mask_suffix: the mask's extra suffix (``".mask"`` for ``X.tif`` <-> ``X.mask.tif``);
            None = detected from the common namings (reported in the log).

    Returns:
        ``[(image_path, mask_path), ...]`` in image order. An image without a mask (or the
        reverse) raises an error naming the files.

    Example:
        >>> pairs = tfseg.pair_images_and_masks("kampala/train/images", "kampala/train/masks")
    """
    from .data.formats.mask_folder import pair_images_and_masks as _pair

    return _pair(images, masks, mask_suffix=mask_suffix)


def score_objects(truth, proposals, min_area: float = 0.0) -> dict:
    """Object (building) scores of proposed polygons against true ones, SpaceNet rules: a
    proposal matches the unmatched truth polygon of highest IoU if that IoU is >= 0.5, per image
    (``tfseg.evaluate spacenet`` / ``polygons``).

    Args:
        truth: a SpaceNet CSV (``ImageId``, ``PolygonWKT_Pix``; pixel coordinates) or a GeoJSON
            file (any CRS; an ``image_id`` property groups features per image).
        proposals: the same kind of file (``predict --spacenet-csv`` or the merged
            ``polygons.geojson`` of ``predict``); GeoJSON proposals are reprojected to the
            truth's CRS, and IoU is taken on ground areas (a UTM zone for geographic CRSs).
        min_area: GeoJSON only: polygons smaller than this (m² / CRS units²) are dropped on both
            sides.

    Returns:
        ``{"overall": {"TruePos", "FalsePos", "FalseNeg", "Precision", "Recall", "F1Score"},
        "per_image": {...}, "per_aoi": {...}}``.

    Example:
        >>> tfseg.score_objects("truth.geojson", "out/polygons.geojson")["overall"]["F1Score"]
    """
    from pathlib import Path

    from . import scoring

    kinds = {Path(truth).suffix.lower() == ".csv", Path(proposals).suffix.lower() == ".csv"}
    if len(kinds) != 1:
        raise scoring.ScoringInputError(f"score_objects: {truth} and {proposals} must both be SpaceNet CSVs or "
                                        "both GeoJSON files")
    if kinds == {True}:
        return scoring.score_spacenet(truth, proposals)
    return scoring.score_geojson(truth, proposals, min_area=min_area)


def merge_polygons(parts, output) -> dict:
    """Merge per-scene polygon files into one GeoJSON FeatureCollection, each feature tagged
    with its scene's ``image_id`` (what :func:`score_objects` groups by).

    Args:
        parts: ``(geojson_path, image_id, crs)`` per scene; ``crs`` the file's CRS (None:
            pixel coordinates). Scenes in several CRSs are reprojected to EPSG:4326.
        output: the merged GeoJSON file to write.

    Returns:
        ``{"count", "crs", "excluded"}`` (pixel-coordinate scenes that cannot be placed beside
        georeferenced ones are left out and listed).

    Example:
        >>> tfseg.merge_polygons([("a.geojson", "a", "EPSG:4326"), ("b.geojson", "b", "EPSG:4326")],
        ...                      "truth.geojson")
    """
    from .postprocess import merge_geojson

    return merge_geojson(parts, output)


def open_raster(path):
    """Open a raster's metadata (size, bands, dtype, nodata, CRS, transform) without reading pixels.

    Args:
        path: a GeoTIFF / PNG / JPEG (anything GDAL reads).

    Returns:
        A :class:`tfseg.data.raster.RasterInfo` (``width``, ``height``, ``num_bands``, ``dtype``,
        ``nodata``, ``crs``, ``affine``, ``path``); a file GDAL cannot open raises a
        ``RasterError`` naming it.

    Example:
        >>> info = tfseg.open_raster("scene.tif")
        >>> info.width, info.height, info.crs
    """
    from .data.raster import open_raster as _open

    return _open(path)


def read_raster(raster, window=None):
    """Read pixels as tfseg's pipeline sees them: H x W x bands in the source dtype (float32 for
    stacked multi-resolution scenes), nodata and NaN pixels set to 0, and the valid-pixel mask.

    Args:
        raster: a path or a :func:`open_raster` result (also a scene's ``.info``).
        window: a ``rasterio.windows.Window`` (may reach beyond the raster: padded, invalid);
            None = the whole raster.

    Returns:
        ``(image, valid)``: image (H, W, bands), valid (H, W) bool.

    Example:
        >>> image, valid = tfseg.read_raster("scene.tif")
    """
    from rasterio.windows import Window

    from .data.raster import StackedRasterInfo, open_raster as _open, read_window, read_window_raw

    info = _open(raster) if isinstance(raster, (str, _os.PathLike)) else raster
    window = window if window is not None else Window(0, 0, info.width, info.height)
    return (read_window if isinstance(info, StackedRasterInfo) else read_window_raw)(info, window)


def read_vector_labels(path, raster, require_overlap: bool = True):
    """Vector labels (GeoJSON / Shapefile / GeoPackage polygons) placed on a raster's grid.

    Args:
        path: the vector file (any CRS: reprojected to the raster's).
        raster: a path or a :func:`open_raster` result.
        require_overlap: raise an error naming both files when no polygon touches the raster
            (a wrong CRS or a mismatched pair); False for chips that may hold no building.

    Returns:
        A :class:`tfseg.data.labels.VectorLabels`: ``.geometries`` (shapely, in the raster's
        CRS) and ``.rasterize(window, info)`` (the 0/1 mask of a window, SpaceNet's burn rule).

    Example:
        >>> labels = tfseg.read_vector_labels("buildings.geojson", "scene.tif")
        >>> mask = labels.rasterize(rasterio.windows.Window(0, 0, 512, 512), tfseg.open_raster("scene.tif"))
    """
    from .data.labels import VectorLabels
    from .data.raster import open_raster as _open

    info = _open(raster) if isinstance(raster, (str, _os.PathLike)) else raster
    return VectorLabels.from_file(path, info, require_overlap=require_overlap)


def read_pixel_polygons(path, raster, require_overlap: bool = True) -> list:
    """The polygons of a vector file in a raster's pixel coordinates (x = column, y = row; what
    SpaceNet CSVs hold), clipped to the raster.

    Args:
        path: the vector file (any CRS).
        raster: a path or a :func:`open_raster` result.
        require_overlap: as in :func:`read_vector_labels`.

    Returns:
        A list of shapely polygons (a multi-polygon split into its parts).

    Example:
        >>> truth = {"img1": [tfseg.PolygonRecord(p) for p in tfseg.read_pixel_polygons("img1.geojson", "img1.tif")]}
        >>> tfseg.write_spacenet_csv("truth.csv", truth)
    """
    from .data.raster import open_raster as _open
    from .postprocess import pixel_polygons

    info = _open(raster) if isinstance(raster, (str, _os.PathLike)) else raster
    return pixel_polygons(read_vector_labels(path, info, require_overlap).geometries, info)


def read_class_mask(path, data_cfg):
    """A colour-coded (or palette / grey) mask file decoded into class indices with the config's
    palette, as training reads it.

    Args:
        path: the mask image (PNG / TIFF / JPEG; RGB, RGBA, palette or grey).
        data_cfg: ``cfg.data`` of a ``colour_mask`` config (``palette``, ``classes``,
            ``ignore_index``).

    Returns:
        (H, W) uint8 class indices, ``ignore_index`` where the colour is an ignored one. A
        colour in no list raises an error naming the file and the colour.

    Example:
        >>> cfg = tfseg.load_config("configs/landcover_dubai.yaml")
        >>> classes = tfseg.read_class_mask("masks/tile_1.png", cfg.data)
    """
    from .data.colours import decode_colour_mask, read_colour_mask

    indices, _ = decode_colour_mask(read_colour_mask(path), data_cfg.palette, data_cfg.ignore_index,
                                    data_cfg.classes, report=False)
    return indices


def polygonize_mask(mask, probabilities=None, options=None) -> list:
    """Polygons of a binary mask in pixel coordinates (x = column, y = row), as ``predict``
    makes them: speckle opening, minimum area, simplification, optional watershed instances.

    Args:
        mask: (H, W) bool / 0-1 array.
        probabilities: (H, W) float probabilities, for each polygon's confidence.
        options: :class:`tfseg.PolygonOptions` (``opening_px``, ``min_area_px``,
            ``fill_holes``, ``simplify_px``, ``instances``, ...); None = the defaults.

    Returns:
        ``[PolygonRecord]``: ``.geometry`` (a shapely polygon) and ``.confidence`` (the mean
        probability inside; 1.0 without ``probabilities``).

    Example:
        >>> records = tfseg.polygonize_mask(mask > 0, options=tfseg.PolygonOptions(opening_px=0))
    """
    from .postprocess import polygonize_array

    return polygonize_array(mask, probabilities, options)


def write_spacenet_csv(path, per_image: dict):
    """Write polygons as a SpaceNet CSV (``ImageId, BuildingId, PolygonWKT_Pix, Confidence``;
    an image with no polygon gets SpaceNet's ``POLYGON EMPTY`` row).

    Args:
        path: the CSV to write.
        per_image: ``{image_id: [PolygonRecord, ...]}`` (pixel coordinates).

    Returns:
        The path written (``pathlib.Path``).

    Example:
        >>> tfseg.write_spacenet_csv("proposals.csv", {"img1": tfseg.polygonize_mask(mask)})
    """
    from .postprocess import write_spacenet_csv as _write

    return _write(path, per_image)


def spacenet_image_id(path) -> str:
    """The SpaceNet ``ImageId`` of a chip file (``RGB-PanSharpen_AOI_2_Vegas_img1.tif`` →
    ``AOI_2_Vegas_img1``; other names: the file stem).

    Args:
        path: the chip's path.

    Returns:
        The image id used in SpaceNet CSVs and by :func:`score_objects`.

    Example:
        >>> tfseg.spacenet_image_id("MUL_AOI_2_Vegas_img7.tif")
        'AOI_2_Vegas_img7'
    """
    from .postprocess import spacenet_image_id as _image_id

    return _image_id(path)


def best_epoch(history, monitor: str = "val_iou", mode: str = "max"):
    """The epoch of a run's ``history.csv`` with the best ``monitor`` value (NaN epochs skipped).

    Args:
        history: a ``history.csv`` path or a run directory.
        monitor: the column to rank by (``val_iou``, ``val_loss``, ``val_iou_<class>``, ...).
        mode: ``"max"`` or ``"min"``.

    Returns:
        The row as ``{column: value}`` (``epoch`` counts from 0), or None when no epoch has the
        column.

    Example:
        >>> tfseg.best_epoch("runs/default")["val_iou"]
    """
    from pathlib import Path

    from .compare import best_row, read_history

    path = Path(history)
    return best_row(read_history(path / "history.csv" if path.is_dir() else path), monitor, mode)


def available_models() -> list:
    """The names ``model.name`` can build in this installation (an optional adapter such as
    ``sm`` only when its package imports: segmentation-models installed and the TensorFlow
    backend).

    Returns:
        Sorted model names.

    Example:
        >>> "unet" in tfseg.available_models()
        True
    """
    from .models import available_models as _available

    return _available()


def history_columns(config) -> list:
    """The metric columns a training run of ``config`` writes to ``history.csv`` (and logs to its
    trackers): the loss and the segmentation metrics (per class with several classes), each for
    training and validation (``val_``), ``learning_rate``, and the validation object scores with
    ``train.object_f1``. What ``train.monitor`` and a comparison's ranking metric can name.

    Args:
        config: a loaded config (:func:`load_config`).

    Returns:
        Sorted column names (without ``epoch``).

    Example:
        >>> "val_iou_road" in tfseg.history_columns(tfseg.load_config("configs/landcover_dubai.yaml"))
        True
    """
    from .metrics import segmentation_metrics

    classes = list(config.data.classes)
    metrics = segmentation_metrics(1 if len(classes) == 1 else len(classes), config.data.ignore_index,
                                   task=config.data.task, class_names=classes)
    names = ["loss"] + [metric.name for metric in metrics]
    columns = set(names) | {f"val_{name}" for name in names} | {"learning_rate"}
    if config.train.object_f1:
        columns |= {"val_object_f1", "val_object_precision", "val_object_recall"}
    return sorted(columns)


def compare_runs(runs, output, metric: str = "val_iou", mode=None) -> list:
    """Compare trained runs side by side (``python -m tfseg.compare``): from their MLflow store
    or server where every run was tracked there, else from the run directories.

    Args:
        runs: run directories, or ``(config, run_dir)`` pairs (the config names the MLflow
            store the run was tracked in).
        output: the report folder (``comparison.md`` / ``.csv``, curves, ``index.html``).
        metric: the ranking metric (best epoch per run).
        mode: ``"max"`` / ``"min"``; None = ``min`` for losses, else ``max``.

    Returns:
        The table rows, best first (``run``, ``best_epoch``, the metric, the val metrics,
        ``params``, ``train_seconds``, ...).

    Example:
        >>> rows = tfseg.compare_runs(["runs/unet", "runs/fcn8"], "reports/unet_vs_fcn8")
    """
    from .compare import compare, compare_tracked

    runs = list(runs)
    if runs and all(isinstance(r, tuple) for r in runs):
        return compare_tracked(runs, output, metric, mode)
    return compare(runs, output, metric, mode)


def profile_model(model, tile_size: int) -> dict:
    """Size and cost of a model: parameters and training GFLOP per tile.

    Args:
        model: a built Keras model, a ``.keras`` file or a run directory.
        tile_size: the tile's side in pixels.

    Returns:
        ``{"params", "train_gflops_per_img" (3 x forward FLOPs), "tile", "bands"}``.

    Example:
        >>> tfseg.profile_model("runs/default", 256)["params"]
    """
    from pathlib import Path

    if isinstance(model, (str, _os.PathLike)):
        import keras

        from . import models  # noqa: F401  (registers tfseg's layers and SegmentationModel for load_model)

        path = Path(model)
        model = keras.saving.load_model(path / "model.keras" if path.is_dir() else path, compile=False)
    from .bench.train import profile_model as _profile

    return _profile(model, tile_size)


def add_overrides_argument(parser, help: str = "config overrides, applied last (e.g. train.epochs=5)") -> None:
    """Add the ``--set KEY=VALUE ...`` option of tfseg's commands to an ``argparse`` parser.

    Args:
        parser: an ``argparse.ArgumentParser``.
        help: the option's help text.

    Returns:
        None; the parsed values land in ``args.overrides``, for :func:`load_config`.

    Example:
        >>> tfseg.add_overrides_argument(parser)
        >>> cfg = tfseg.load_config(args.config, parser.parse_args().overrides)
    """
    from .config import add_overrides_argument as _add

    _add(parser, help)


def quiet_tensorflow():
    """Import TensorFlow without its C++ start-up notices (CUDA stubs, oneDNN) on stderr; call it
    before anything else imports TensorFlow or Keras (tfseg's commands do).

    Returns:
        The ``tensorflow`` module.

    Example:
        >>> tf = tfseg.quiet_tensorflow()
    """
    from ._tf import tensorflow

    return tensorflow


_LAZY = {  # classes imported when first used (``import tfseg`` stays light)
    "PredictOptions": ("predict", "PredictOptions"),
    "PolygonOptions": ("postprocess", "PolygonOptions"),
    "PolygonRecord": ("postprocess", "PolygonRecord"),
    "ConfigError": ("config", "ConfigError"),
}


def __getattr__(name):
    """``tfseg.PredictOptions``, ``PolygonOptions``, ``PolygonRecord``, ``ConfigError``: imported
    when first used."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'tfseg' has no attribute {name!r}")
