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
    "merge_polygons", "__version__",
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


def __getattr__(name):
    """``tfseg.PredictOptions``: the :class:`tfseg.predict.PredictOptions` dataclass, imported
    when first used."""
    if name == "PredictOptions":
        from .predict import PredictOptions

        return PredictOptions
    raise AttributeError(f"module 'tfseg' has no attribute {name!r}")
