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
    "export_model", "load_predictor", "load_model_card", "load_scenes", "__version__",
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


def __getattr__(name):
    """``tfseg.PredictOptions``: the :class:`tfseg.predict.PredictOptions` dataclass, imported
    when first used."""
    if name == "PredictOptions":
        from .predict import PredictOptions

        return PredictOptions
    raise AttributeError(f"module 'tfseg' has no attribute {name!r}")
