"""SavedModel export: raw pixels in, probabilities and class map out, normalization inside.

``python -m tfseg.export --model RUN_DIR_OR_KERAS_FILE --output BASE/NAME/VERSION [--format tflite]``

The SavedModel describes itself: a ``metadata`` signature (and ``assets/tfseg_metadata.json``)
carries band names/count/dtype, normalization, class names and colours, tile size and overlap,
model name/backbone, the run's metrics and the tfseg version, so ``predict`` and ``serve`` need
nothing but the exported directory.

Signatures (all take *raw* pixel values; the run's per-band normalization is in the graph, and
any height/width is reflect-padded to the model's size multiple and cropped back):

==================  =========================================  ===============================
name                input                                      use
==================  =========================================  ===============================
serving_default     ``images`` float32 [N, H, W, bands]         any imagery (float or integer)
serving_uint8       ``images`` uint8 [N, H, W, bands]           8-bit imagery, compact tensors
serving_int32       ``images`` int32 [N, H, W, bands]           16-bit imagery over JSON
serving_bytes       ``image_bytes`` string [N] (PNG / JPEG)     HTTP clients, ``{"b64": ...}``
metadata            (none)                                     ``{"metadata": JSON string}``
==================  =========================================  ===============================

Outputs: ``probabilities`` float32 [N, H, W, K] and ``classes`` int32 [N, H, W] (argmax, or
``probability >= threshold`` for a one-channel binary model; the threshold is in the metadata).
A multi-label model (K > 1 sigmoid outputs) has ``masks`` int32 [N, H, W, K] instead of
``classes``: 1 where ``probability >= threshold`` of that class (``threshold`` one per class).

Example:
    >>> export_saved_model(model, norm, "models/tfseg/1", metadata={"classes": ["building"]})
    >>> loaded = tf.saved_model.load("models/tfseg/1")
    >>> out = loaded.signatures["serving_default"](images=tf.zeros([1, 300, 300, 4]))
    >>> out["classes"].shape
    TensorShape([1, 300, 300])
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path
from typing import Optional

from ._tf import tensorflow as tf  # noqa: I001  (quiet TF import first)
import keras

import tfseg

from .data.raster import Normalization
from .fsutil import staged_directory

METADATA_ASSET = "tfseg_metadata.json"
IMAGE_INPUT = "images"
BYTES_INPUT = "image_bytes"
#: tensor signatures: name -> input dtype
TENSOR_SIGNATURES = {"serving_default": tf.float32, "serving_uint8": tf.uint8, "serving_int32": tf.int32}
BYTES_SIGNATURE = "serving_bytes"
METADATA_SIGNATURE = "metadata"
#: channel counts a PNG/JPEG can carry (gray, gray+alpha, RGB, RGBA)
MAX_BYTES_BANDS = 4
_DEFAULT_COLOURS = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0",
                    "#f032e6", "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8",
                    "#800000", "#aaffc3", "#808000", "#ffd8b1", "#000075", "#808080"]


class ExportError(ValueError):
    """An export argument or input file is unusable; the message names it."""


# ------------------------------------------------------------------------------------------
# The graph
# ------------------------------------------------------------------------------------------
def model_multiple(model: keras.Model) -> int:
    """The size multiple the model needs: 2 ** (number of stride-2 downsamplings)."""
    return int(model.get_config().get("tfseg_multiple", 0)) or 2 ** _count_downsamplings(model)


def _count_downsamplings(model) -> int:
    count = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            count += _count_downsamplings(layer)
        elif isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
            count += 1
        elif isinstance(layer, keras.layers.Conv2D) and tuple(layer.strides) == (2, 2):
            count += 1
    return max(count, 0)


def _reflect_indices(size, padded_size):
    """Indices 0..padded_size-1 mapped into 0..size-1 by mirror reflection (edge not repeated).

    Equal to ``tf.pad(mode="REFLECT")`` / ``np.pad(mode="reflect")`` where those work, and it
    keeps reflecting for pads larger than the image (a 5-pixel-wide strip, a 1-pixel image).
    """
    index = tf.range(padded_size)
    period = tf.maximum(2 * size - 2, 1)
    index = index % period
    return tf.minimum(tf.where(index < size, index, period - index), size - 1)


def reflect_pad_to_multiple(images, multiple: int):
    """Pad [N, H, W, C] at the bottom/right by reflection to multiples of ``multiple``."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    padded_h = (height + multiple - 1) // multiple * multiple
    padded_w = (width + multiple - 1) // multiple * multiple
    images = tf.gather(images, _reflect_indices(height, padded_h), axis=1)
    return tf.gather(images, _reflect_indices(width, padded_w), axis=2)


def is_multilabel(model: keras.Model) -> bool:
    """Several independent sigmoid outputs (e.g. Dstl's 10 overlapping classes)."""
    return int(model.output_shape[-1]) > 1 and _final_activation(model) == "sigmoid"


def class_thresholds(threshold, channels: int) -> list:
    """One threshold per class from a float (all classes) or a list of ``channels`` floats."""
    values = [float(v) for v in threshold] if isinstance(threshold, (list, tuple)) else [float(threshold)]
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise ExportError(f"threshold: expected one value or {channels} (one per class), got {threshold!r}")
    return values


def make_serving_fn(model: keras.Model, norm: Normalization, multiple: int, threshold=0.5):
    """A tf function: raw [N, H, W, C] (any real dtype) -> probabilities and class map of the same
    H, W; for a multi-label model probabilities and per-class 0/1 ``masks`` [N, H, W, K] instead."""
    offset = tf.constant(norm.offset, tf.float32)
    scale = tf.constant(norm.scale, tf.float32)
    clip = norm.clip
    binary = model.output_shape[-1] == 1
    multilabel = is_multilabel(model)
    thresholds = tf.constant(class_thresholds(threshold, int(model.output_shape[-1])), tf.float32)
    bands = model.input_shape[-1]

    def serve(images):
        images = tf.cast(images, tf.float32)
        tf.debugging.assert_rank(images, 4, message=f"{IMAGE_INPUT} must be [N, H, W, {bands}]")
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        tf.debugging.assert_positive(height * width, message=f"{IMAGE_INPUT} has an empty height or width")
        if clip is not None:
            images = tf.clip_by_value(images, clip[0], clip[1])
        x = reflect_pad_to_multiple((images - offset) / scale, multiple)
        probs = tf.cast(model(x, training=False), tf.float32)[:, :height, :width, :]
        if multilabel:  # overlapping classes: an argmax would drop all but one per pixel
            return {"probabilities": probs, "masks": tf.cast(probs >= thresholds, tf.int32)}
        if binary:
            classes = tf.cast(probs[..., 0] >= threshold, tf.int32)
        else:
            classes = tf.argmax(probs, axis=-1, output_type=tf.int32)
        return {"probabilities": probs, "classes": classes}

    return serve


def decode_image_bytes(data, bands: int):
    """One PNG (8- or 16-bit) or JPEG as float32 [H, W, bands] holding the stored values."""
    is_png = tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n")

    def png():
        # IHDR bit depth is byte 24; decode 16-bit as uint16 and 8-bit as uint8, so the values
        # are the stored ones (decode_png(dtype=uint16) would rescale 8-bit data by 257).
        depth = tf.io.decode_raw(tf.strings.substr(data, 24, 1), tf.uint8)[0]
        return tf.cond(
            tf.equal(depth, 16),
            lambda: tf.cast(tf.io.decode_png(data, channels=0, dtype=tf.uint16), tf.float32),
            lambda: tf.cast(tf.io.decode_png(data, channels=0, dtype=tf.uint8), tf.float32),
        )

    def jpeg():
        return tf.cast(tf.io.decode_jpeg(data, channels=0), tf.float32)

    known = tf.debugging.Assert(
        tf.logical_or(is_png, tf.io.is_jpeg(data)),
        [f"{BYTES_INPUT}: expected PNG (8- or 16-bit) or JPEG data; the first bytes are", tf.strings.substr(data, 0, 8)])
    with tf.control_dependencies([known]):
        image = tf.cond(is_png, png, jpeg)
    tf.debugging.assert_equal(
        tf.shape(image)[-1], bands,
        message=f"{BYTES_INPUT}: the image's channel count does not match the model's {bands} bands")
    image.set_shape([None, None, bands])
    return image


# ------------------------------------------------------------------------------------------
# Metadata
# ------------------------------------------------------------------------------------------
def build_metadata(model: keras.Model, norm: Normalization, metadata: Optional[dict], threshold: float) -> dict:
    """The self-description embedded in the export (caller's keys win over derived defaults)."""
    bands = int(model.input_shape[-1])
    channels = int(model.output_shape[-1])
    multiple = model_multiple(model)
    meta = dict(metadata or {})
    classes = list(meta.get("classes") or ([f"class{i}" for i in range(channels)] if channels > 1 else ["foreground"]))
    palette = dict(meta.get("palette") or {})
    colours = {name: palette.get(name, _DEFAULT_COLOURS[i % len(_DEFAULT_COLOURS)]) for i, name in enumerate(classes)}
    binary = channels == 1
    if binary:
        class_map = [{"value": 0, "name": "background", "colour": "#000000"},
                     {"value": 1, "name": classes[0], "colour": colours[classes[0]]}]
    else:
        class_map = [{"value": i, "name": name, "colour": colours[name]} for i, name in enumerate(classes)]
    band_names = list(meta.get("band_names") or norm.band_names or [f"band{i + 1}" for i in range(bands)])
    signatures = {name: {"input": IMAGE_INPUT, "dtype": dtype.name, "shape": [None, None, None, bands]}
                  for name, dtype in TENSOR_SIGNATURES.items()}
    if bands <= MAX_BYTES_BANDS:
        signatures[BYTES_SIGNATURE] = {"input": BYTES_INPUT, "dtype": "string", "shape": [None],
                                       "formats": ["png8", "png16", "jpeg"]}
    # keys describing this graph: always derived, whatever the caller passed
    meta.update({
        "num_bands": bands,
        "band_names": band_names,
        "size_multiple": multiple,
        "threshold": class_thresholds(threshold, channels) if is_multilabel(model) else float(threshold),
        "normalization": dict(norm.__dict__),
        "classes": classes,
        "palette": palette,
        "class_colours": colours,
        "class_map": class_map,
        "num_classes": len(class_map),
        "task": "binary" if binary else ("multilabel" if is_multilabel(model) else "multiclass"),
        "signatures": signatures,
        "outputs": {"probabilities": {"dtype": "float32", "shape": [None, None, None, channels]},
                    **({"masks": {"dtype": "int32", "shape": [None, None, None, channels]}} if is_multilabel(model)
                       else {"classes": {"dtype": "int32", "shape": [None, None, None]}})},
        "tfseg_version": tfseg.__version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })
    # keys only the run knows: defaults when the caller did not say
    for key, value in {"band_dtype": "float32", "tile_size": None, "recommended_overlap": None,
                       "model": model.name, "backbone": "", "metrics": {}}.items():
        if meta.get(key) is None:
            meta[key] = value
    return meta


def _final_activation(model: keras.Model) -> str:
    activation = getattr(model.layers[-1], "activation", None)
    return getattr(activation, "__name__", "") if activation is not None else ""


def read_metadata(path) -> dict:
    """The tfseg metadata of an exported SavedModel directory (read from its asset file)."""
    path = Path(path)
    asset = path / "assets" / METADATA_ASSET
    if not asset.is_file():
        raise FileNotFoundError(f"no tfseg metadata at {asset}: is {path} a SavedModel written by tfseg.export?")
    return json.loads(asset.read_text())


# ------------------------------------------------------------------------------------------
# SavedModel
# ------------------------------------------------------------------------------------------
def export_saved_model(
    model: keras.Model,
    norm: Normalization,
    output: Path,
    metadata: Optional[dict] = None,
    threshold: float = 0.5,
) -> Path:
    """Write a self-describing SavedModel (signatures in the module docstring) to ``output``.

    The directory is written beside ``output`` and renamed into place, so a server polling the
    version folder never sees a half-written model. An existing ``output`` is replaced.
    """
    output = Path(output)
    bands = int(model.input_shape[-1])
    if len(norm.offset) != bands:
        raise ExportError(f"normalization has {len(norm.offset)} bands but the model takes {bands}")
    multiple = model_multiple(model)
    serve = make_serving_fn(model, norm, multiple, threshold)
    meta = build_metadata(model, norm, metadata, threshold)
    meta_json = json.dumps(meta, sort_keys=True)

    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, dtype in TENSOR_SIGNATURES.items():
        archive.add_endpoint(
            name=name, fn=serve,
            input_signature=[tf.TensorSpec([None, None, None, bands], dtype, name=IMAGE_INPUT)],
        )
    if bands <= MAX_BYTES_BANDS:
        def serve_bytes(image_bytes):
            images = tf.map_fn(lambda data: decode_image_bytes(data, bands), image_bytes,
                               fn_output_signature=tf.TensorSpec([None, None, bands], tf.float32))
            return serve(images)

        archive.add_endpoint(name=BYTES_SIGNATURE, fn=serve_bytes,
                             input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
    archive.add_endpoint(name=METADATA_SIGNATURE, fn=lambda: {"metadata": tf.constant(meta_json)},
                         input_signature=[])

    with staged_directory(output, ".export") as staging:
        archive.write_out(str(staging), verbose=False)
        (staging / "assets").mkdir(exist_ok=True)
        (staging / "assets" / METADATA_ASSET).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return output


# ------------------------------------------------------------------------------------------
# TFLite
# ------------------------------------------------------------------------------------------
def export_tflite(
    model: keras.Model,
    norm: Normalization,
    output: Path,
    metadata: Optional[dict] = None,
    threshold: float = 0.5,
) -> Path:
    """Write ``model.tflite`` (float32 raw pixels [N, H, W, bands] in, same outputs) and its metadata.

    ``output`` is the ``.tflite`` file, or a directory that gets ``model.tflite``; the metadata
    JSON is written beside it as ``tfseg_metadata.json``. Height/width are dynamic: call
    ``interpreter.resize_tensor_input`` before ``allocate_tensors``.
    """
    output = Path(output)
    file = output if output.suffix == ".tflite" else output / "model.tflite"
    bands = int(model.input_shape[-1])
    serve = make_serving_fn(model, norm, model_multiple(model), threshold)
    meta = build_metadata(model, norm, metadata, threshold)
    meta["signatures"] = {"serving_default": {"input": IMAGE_INPUT, "dtype": "float32",
                                              "shape": [None, None, None, bands]}}
    meta["format"] = "tflite"
    # convert from a one-signature SavedModel: the converter then freezes the variables (a bare
    # concrete function keeps resource reads that fail at invoke time)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=serve,
                         input_signature=[tf.TensorSpec([None, None, None, bands], tf.float32, name=IMAGE_INPUT)])
    with tempfile.TemporaryDirectory(prefix="tfseg-tflite-") as staging:
        archive.write_out(staging, verbose=False)
        flatbuffer, errors = None, []
        # builtin ops first (runs on any TFLite runtime); else TF ops through the Flex delegate
        for ops, label in [([tf.lite.OpsSet.TFLITE_BUILTINS], "builtins"),
                           ([tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS], "builtins+select_tf_ops")]:
            converter = tf.lite.TFLiteConverter.from_saved_model(staging, signature_keys=["serving_default"])
            converter.target_spec.supported_ops = ops
            try:
                flatbuffer = converter.convert()
                meta["tflite_ops"] = label
                break
            except Exception as error:  # the converter raises ConverterError / various TF errors
                errors.append(f"{label}: {str(error).splitlines()[0][:300]}")
        if flatbuffer is None:
            raise ExportError(f"model {model.name!r} does not convert to TFLite ({'; '.join(errors)})")
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(flatbuffer)
    (file.parent / METADATA_ASSET).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return file


def read_tflite_ops(file) -> str:
    """``builtins`` or ``builtins+select_tf_ops``, from the metadata written beside a .tflite file."""
    return json.loads((Path(file).parent / METADATA_ASSET).read_text()).get("tflite_ops", "builtins")


# ------------------------------------------------------------------------------------------
# Run directories
# ------------------------------------------------------------------------------------------
def load_run_model(path) -> tuple[keras.Model, Normalization, dict]:
    """The best model of a run directory (or a ``.keras`` file next to its run files)."""
    path = Path(path)
    run_dir = path if path.is_dir() else path.parent
    keras_file = path / "model.keras" if path.is_dir() else path
    if not keras_file.is_file():
        raise FileNotFoundError(f"no Keras model at {keras_file} (expected a run directory or a .keras file)")
    from . import losses, metrics, models  # noqa: F401  (registers custom layers, losses, metrics)

    model = keras.saving.load_model(keras_file, compile=False)
    norm = Normalization.load(run_dir / "normalization.json")
    metrics_file = run_dir / "metrics.json"
    run_metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return model, norm, run_metrics


def run_metadata(path) -> tuple[dict, object]:
    """Metadata and threshold for exporting a run: from the run's own export, else its config."""
    path = Path(path)
    run_dir = path if path.is_dir() else path.parent
    meta: dict = {}
    asset = run_dir / "export" / "assets" / METADATA_ASSET
    if asset.is_file():
        meta = json.loads(asset.read_text())
    config_file = run_dir / "config.yaml"
    threshold = meta.get("threshold", 0.5)  # a list (one per class) for a multi-label export
    if config_file.is_file():
        from . import config as config_lib

        cfg = config_lib.load(config_file)
        threshold = float(cfg.train.threshold)
        meta.setdefault("classes", list(cfg.data.classes))
        meta.setdefault("palette", dict(cfg.data.palette))
        meta.setdefault("tile_size", cfg.data.window_size)
        meta.setdefault("recommended_overlap", cfg.export.recommended_overlap)
        meta.setdefault("model", cfg.model.name)
        meta.setdefault("backbone", cfg.model.backbone)
        if cfg.data.band_names:
            meta.setdefault("band_names", list(cfg.data.band_names))
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file():
        meta["metrics"] = json.loads(metrics_file.read_text()).get("val", {})
    # derived from the graph again at export time
    for key in ("exported_at", "tensorflow_version", "keras_version", "tfseg_version", "signatures", "format"):
        meta.pop(key, None)
    return meta, threshold


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfseg.export", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True,
                        help="run directory, or a .keras file with normalization.json (and config.yaml) beside it")
    parser.add_argument("--output", required=True,
                        help="BASE/NAME/VERSION for TF Serving (VERSION a positive integer); "
                             "for --format tflite a .tflite file or a directory")
    parser.add_argument("--format", choices=["savedmodel", "tflite"], default="savedmodel")
    parser.add_argument("--threshold", type=float, default=None,
                        help="binary decision threshold (default: the run's train.threshold)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = parser.parse_args(argv)

    output = Path(args.output)
    if args.format == "savedmodel" and not (output.name.isdigit() and int(output.name) > 0):
        parser.error(f"--output {args.output!r}: TF Serving loads BASE/NAME/VERSION with VERSION a positive "
                     f"integer, e.g. models/tfseg/1")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold must be in [0, 1], got {args.threshold}")
    target = output if args.format == "savedmodel" or output.suffix == ".tflite" else output / "model.tflite"
    if target.exists() and not args.overwrite:
        print(f"error: --output {target} already exists (published versions should not change; "
              f"use a new VERSION or --overwrite)", file=sys.stderr)
        return 2
    try:
        model, norm, _ = load_run_model(args.model)
    except FileNotFoundError as error:
        print(f"error: --model: {error}", file=sys.stderr)
        return 2
    meta, threshold = run_metadata(args.model)
    threshold = args.threshold if args.threshold is not None else threshold
    try:
        if args.format == "tflite":
            out = export_tflite(model, norm, output, meta, threshold)
            ops = read_tflite_ops(out)
            print(f"TFLite model written to {out} (ops: {ops}"
                  + ("; needs the TensorFlow Flex delegate at run time)" if ops != "builtins" else ")"))
        else:
            out = export_saved_model(model, norm, output, meta, threshold)
            print(f"SavedModel written to {out}")
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
