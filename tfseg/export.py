"""SavedModel export: raw pixels in, probabilities and class map out, preprocessing inside.

``python -m tfseg.export --model RUN_DIR_OR_KERAS_FILE --output BASE/NAME/VERSION [--format tflite]``

The SavedModel describes itself with the run's model card (:mod:`tfseg.model_card`):
``assets/model_card.json`` and a ``metadata`` signature returning the same JSON (band names,
count, dtype and nodata, normalization, classes and colours, task and threshold, tile size and
overlap, size multiple, model/backbone, metrics, tfseg version), so ``predict`` and ``serve``
need nothing but the exported directory.

Signatures (all take *raw* pixel values: the model's first layer is its preprocessing, see
:mod:`tfseg.models.preprocessing`; any height/width is reflect-padded to the model's size
multiple and cropped back):

==================  =========================================  ===============================
name                input                                      use
==================  =========================================  ===============================
serving_default     ``images`` float32 [N, H, W, bands]         any imagery (float or integer)
serving_uint8       ``images`` uint8 [N, H, W, bands]           8-bit imagery, compact tensors
serving_int32       ``images`` int32 [N, H, W, bands]           16-bit imagery over JSON
serving_bytes       ``image_bytes`` string [N] (PNG / JPEG)     HTTP clients, ``{"b64": ...}``
metadata            (none)                                     ``{"metadata": model card JSON}``
==================  =========================================  ===============================

Outputs: ``probabilities`` float32 [N, H, W, K] and ``classes`` int32 [N, H, W] (argmax, or
``probability >= threshold`` for a one-channel binary model; the threshold is in the card).
A multi-label model (``task: multilabel``, K sigmoid outputs) has ``masks`` int32 [N, H, W, K]
instead of ``classes``: 1 where the probability of that class is >= its threshold (the card's
``threshold``, one per class), so overlapping classes are all kept.

Example:
    >>> model, card = load_run_model("runs/default")
    >>> export_saved_model(model, "models/tfseg/1", card)
    >>> loaded = tf.saved_model.load("models/tfseg/1")
    >>> out = loaded.signatures["serving_default"](images=tf.zeros([1, 300, 300, 4]))
    >>> out["classes"].shape
    TensorShape([1, 300, 300])
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from typing import Optional
from pathlib import Path

import numpy as np

from .errors import INPUT_ERRORS, TfsegError, report
from ._tf import tensorflow as tf  # noqa: I001  (quiet TF import first)
import keras

from .fsutil import staged_directory
from .model_card import CARD_FILE, LegacyArtifactError, ModelCard, load_model_card, tflite_card_path

IMAGE_INPUT = "images"
BYTES_INPUT = "image_bytes"
#: tensor signatures: name -> input dtype
TENSOR_SIGNATURES = {"serving_default": tf.float32, "serving_uint8": tf.uint8, "serving_int32": tf.int32}
BYTES_SIGNATURE = "serving_bytes"
METADATA_SIGNATURE = "metadata"
#: beside NAME.tflite: NAME.tflite.json, which TFLite op sets the conversion needed
TFLITE_INFO_SUFFIX = ".tflite.json"
#: the pixel dtype a PNG/JPEG decodes to (see :func:`decode_image_bytes`); the bytes signature
#: takes it only for a model trained on that dtype
BYTES_DTYPES = ("uint8", "uint16")
#: channel counts a PNG/JPEG can carry (gray, gray+alpha, RGB, RGBA)
MAX_BYTES_BANDS = 4


class ExportError(TfsegError):
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


def make_serving_fn(model: keras.Model, multiple: int, threshold=0.5, multilabel: bool = False,
                    class_offsets=None):
    """A tf function: raw [N, H, W, C] (any real dtype) -> probabilities and class map of the same
    H, W. ``model`` normalizes itself (its first layer is :class:`~tfseg.models.Preprocess`).
    ``multilabel``: per-class 0/1 ``masks`` [N, H, W, K] instead of ``classes``, ``threshold``
    one float or one per class. ``class_offsets`` (multiclass): per-class log-probability offsets
    of the argmax (:func:`tfseg.class_offsets.decide`; the probabilities stay as they are)."""
    binary = model.output_shape[-1] == 1
    channels = int(model.output_shape[-1])
    values = [float(t) for t in threshold] if isinstance(threshold, (list, tuple)) else [float(threshold)] * channels
    if len(values) != channels:
        raise ExportError(f"threshold: expected one value or {channels} (one per class), got {threshold!r}")
    thresholds = tf.constant(values, tf.float32)
    if class_offsets is not None and len(class_offsets) != channels:
        raise ExportError(f"class_offsets: expected {channels} values (one per class), got {class_offsets!r}")
    scale = None if class_offsets is None else tf.constant(np.exp(np.asarray(class_offsets, np.float32)))
    bands = model.input_shape[-1]

    def serve(images):
        images = tf.cast(images, tf.float32)
        tf.debugging.assert_rank(images, 4, message=f"{IMAGE_INPUT} must be [N, H, W, {bands}]")
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        tf.debugging.assert_positive(height * width, message=f"{IMAGE_INPUT} has an empty height or width")
        x = reflect_pad_to_multiple(images, multiple)
        probs = tf.cast(model(x, training=False), tf.float32)[:, :height, :width, :]
        if multilabel:  # overlapping classes: an argmax would drop all but one per pixel
            return {"probabilities": probs, "masks": tf.cast(probs >= thresholds, tf.int32)}
        if binary:
            classes = tf.cast(probs[..., 0] >= thresholds[0], tf.int32)
        else:
            classes = tf.argmax(probs if scale is None else probs * scale, axis=-1, output_type=tf.int32)
        return {"probabilities": probs, "classes": classes}

    return serve


def decode_image_bytes(data, bands: int, band_dtype: Optional[str] = None):
    """One PNG (8- or 16-bit) or JPEG as float32 [H, W, bands] holding the stored values.

    ``band_dtype`` (the model card's): the image's pixel dtype (uint16 for a 16-bit PNG, else
    uint8) must be it, else an ``InvalidArgumentError`` naming both (an 8-bit PNG's values are
    not a uint16 model's, nor a 16-bit PNG's a uint8 model's; float and signed imagery cannot
    travel as PNG/JPEG)."""
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

    is_known = tf.logical_or(is_png, tf.io.is_jpeg(data))
    known = tf.debugging.Assert(
        is_known,
        [f"{BYTES_INPUT}: expected PNG (8- or 16-bit) or JPEG data; the first bytes are", tf.strings.substr(data, 0, 8)])
    checks = [known]
    if band_dtype is not None:  # the image's pixel dtype must be the model's (unknown data: the check above)
        header = tf.strings.substr(tf.strings.join([data, b"\0" * 25]), 24, 1)  # short data: no out-of-range
        is_png16 = tf.logical_and(is_png, tf.equal(tf.io.decode_raw(header, tf.uint8)[0], 16))
        matches = tf.equal(is_png16, band_dtype == "uint16") if band_dtype in BYTES_DTYPES else tf.constant(False)
        checks.append(tf.debugging.Assert(
            tf.logical_or(tf.logical_not(is_known), matches),
            [bytes_dtype_message(band_dtype), "the image is", tf.where(is_png16, "a 16-bit PNG (uint16 pixels)",
                                                                        "an 8-bit PNG or a JPEG (uint8 pixels)")]))
    with tf.control_dependencies(checks):
        image = tf.cond(is_png, png, jpeg)
    tf.debugging.assert_equal(
        tf.shape(image)[-1], bands,
        message=f"{BYTES_INPUT}: the image's channel count does not match the model's {bands} bands")
    image.set_shape([None, None, bands])
    return image


def bytes_dtype_message(band_dtype: str, image_dtype: str = "") -> str:
    """The error for a PNG/JPEG whose pixel dtype (``image_dtype``: uint8 or uint16) is not the
    model's ``band_dtype``."""
    image = f"the image holds {image_dtype} pixels but " if image_dtype else ""
    if band_dtype in BYTES_DTYPES:
        send = "a 16-bit PNG" if band_dtype == "uint16" else "an 8-bit PNG or a JPEG"
        return (f"{BYTES_INPUT}: {image}the model was trained on {band_dtype} imagery: send {send} "
                f"(or the raw pixels to serving_default)")
    return (f"{BYTES_INPUT}: {image}the model was trained on {band_dtype} imagery, which PNG/JPEG (uint8 or uint16 "
            f"pixels) cannot carry: send the raw pixels to serving_default")


def image_bytes_dtype(data: bytes) -> Optional[str]:
    """The pixel dtype a PNG (uint16 when 16-bit, else uint8) or JPEG (uint8) decodes to, read
    from its header; None for other data."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24:
        return "uint16" if data[24] == 16 else "uint8"
    if data[:3] == b"\xff\xd8\xff":
        return "uint8"
    return None


# ------------------------------------------------------------------------------------------
# Model and card
# ------------------------------------------------------------------------------------------
def check_model_card(model: keras.Model, card: ModelCard, source: str = "model") -> None:
    """Raise :class:`ExportError` when ``model`` and ``card`` disagree (bands, outputs, size
    multiple, the preprocessing layer's nodata / offset / scale / clip and the card's
    normalization) or the model has no preprocessing layer (an artifact from before the card)."""
    from .models import find_preprocess

    preprocess = find_preprocess(model)
    if preprocess is None:
        raise LegacyArtifactError(
            f"{source}: the model has no preprocessing layer (it was trained by a tfseg version before the "
            f"model card and expects normalized inputs); upgrade the run with `python -m tfseg.model_card "
            f"upgrade RUN_DIR`")
    bands, outputs = int(model.input_shape[-1]), int(model.output_shape[-1])
    if bands != card.num_bands or preprocess.num_bands != card.num_bands:
        raise ExportError(f"{source}: the model takes {bands} band(s) but its model card says "
                          f"{card.num_bands} ({', '.join(card.band_names)})")
    if outputs != card.num_outputs:
        raise ExportError(f"{source}: the model has {outputs} output channel(s) but its model card describes "
                          f"{card.num_outputs} ({card.task}, classes {card.classes})")
    if model_multiple(model) != card.size_multiple:
        raise ExportError(f"{source}: the model needs sizes in multiples of {model_multiple(model)} but its "
                          f"model card says {card.size_multiple}")
    _check_preprocess(preprocess, card, source)


def _check_preprocess(preprocess, card: ModelCard, source: str) -> None:
    """The model's own preprocessing must compute what its card says (the card's numbers are
    what clients, ``predict`` and the no-data handling rely on)."""
    def differ(a, b) -> bool:
        if a is None or b is None:
            return (a is None) != (b is None)
        return not np.allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-6, atol=0)

    norm = card.normalization
    clip = norm.clip
    expected = {"nodata": card.nodata, "offset": norm.offset, "scale": norm.scale,
                "clip_low": None if clip is None else clip[0], "clip_high": None if clip is None else clip[1]}
    wrong = [f"{name} {getattr(preprocess, name)} (card: {None if want is None else np.asarray(want).tolist()})"
             for name, want in expected.items() if differ(getattr(preprocess, name), want)]
    if wrong:
        raise ExportError(f"{source}: the model's preprocessing layer does not match its model card "
                          f"(normalization {norm.method}, nodata {card.nodata}): {'; '.join(wrong)}; the card "
                          f"belongs to another model or was edited by hand")


def load_run_model(path) -> tuple[keras.Model, ModelCard]:
    """The best model of a run directory (or a ``.keras`` file) and its model card."""
    path = Path(path)
    keras_file = path / "model.keras" if path.is_dir() else path
    if not keras_file.is_file():
        raise FileNotFoundError(f"no Keras model at {keras_file} (expected a run directory or a .keras file)")
    card = load_model_card(path)  # first: an old run fails here with how to upgrade it
    from . import losses, metrics, models  # noqa: F401  (registers custom layers, losses, metrics)

    model = keras.saving.load_model(keras_file, compile=False)
    check_model_card(model, card, str(keras_file))
    return model, card


# ------------------------------------------------------------------------------------------
# SavedModel
# ------------------------------------------------------------------------------------------
def export_saved_model(model: keras.Model, output: Path, card: ModelCard) -> Path:
    """Write a self-describing SavedModel (signatures in the module docstring) to ``output``,
    with ``card`` as ``assets/model_card.json`` and the ``metadata`` signature.

    The directory is written beside ``output`` and renamed into place, so a server polling the
    version folder never sees a half-written model. An existing ``output`` is replaced.
    """
    output = Path(output)
    check_model_card(model, card)
    bands = card.num_bands
    serve = make_serving_fn(model, card.size_multiple, card.thresholds(), card.task == "multilabel",
                            card.class_offsets)
    card_json = card.to_json()
    from .inference import fixed_input_shape

    # (H, W) of a model with a fixed input size (a keras-hub ViT encoder): the signatures take only that
    height, width = fixed_input_shape(model.input_shape) or (None, None)

    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, dtype in TENSOR_SIGNATURES.items():
        archive.add_endpoint(
            name=name, fn=serve,
            input_signature=[tf.TensorSpec([None, height, width, bands], dtype, name=IMAGE_INPUT)],
        )
    if bands <= MAX_BYTES_BANDS:
        def serve_bytes(image_bytes):
            images = tf.map_fn(lambda data: decode_image_bytes(data, bands, card.band_dtype), image_bytes,
                               fn_output_signature=tf.TensorSpec([None, None, bands], tf.float32))
            if height is not None:  # a clear error for an image of another size
                images = tf.ensure_shape(images, [None, height, width, bands])
            return serve(images)

        archive.add_endpoint(name=BYTES_SIGNATURE, fn=serve_bytes,
                             input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
    archive.add_endpoint(name=METADATA_SIGNATURE, fn=lambda: {"metadata": tf.constant(card_json)},
                         input_signature=[])

    with staged_directory(output, ".export") as staging:
        archive.write_out(str(staging), verbose=False)
        (staging / "assets").mkdir(exist_ok=True)
        (staging / "assets" / CARD_FILE).write_text(card_json)
    return output


# ------------------------------------------------------------------------------------------
# TFLite
# ------------------------------------------------------------------------------------------
def export_tflite(model: keras.Model, output: Path, card: ModelCard) -> Path:
    """Write ``NAME.tflite`` (float32 raw pixels [N, H, W, bands] in, same outputs), with its
    model card beside it as ``NAME.model_card.json`` and ``NAME.tflite.json`` (the op sets it
    needs); a run directory's own ``model_card.json`` and other .tflite files in the folder are
    left alone. Existing files are replaced (:func:`export_model` refuses them without
    ``overwrite``).

    ``output`` is the ``.tflite`` file, or a directory that gets ``model.tflite``. Height/width
    are dynamic: call ``interpreter.resize_tensor_input`` before ``allocate_tensors``.
    """
    output = Path(output)
    file = output if output.suffix == ".tflite" else output / "model.tflite"
    check_model_card(model, card)
    bands = card.num_bands
    serve = make_serving_fn(model, card.size_multiple, card.thresholds(), card.task == "multilabel",
                            card.class_offsets)
    # convert from a one-signature SavedModel: the converter then freezes the variables (a bare
    # concrete function keeps resource reads that fail at invoke time)
    archive = keras.export.ExportArchive()
    archive.track(model)
    from .inference import fixed_input_shape

    height, width = fixed_input_shape(model.input_shape) or (None, None)
    archive.add_endpoint(name="serving_default", fn=serve,
                         input_signature=[tf.TensorSpec([None, height, width, bands], tf.float32, name=IMAGE_INPUT)])
    with tempfile.TemporaryDirectory(prefix="tfseg-tflite-") as staging:
        archive.write_out(staging, verbose=False)
        flatbuffer, errors, label = None, [], ""
        # builtin ops first (runs on any TFLite runtime); else TF ops through the Flex delegate
        for ops, label in [([tf.lite.OpsSet.TFLITE_BUILTINS], "builtins"),
                           ([tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS], "builtins+select_tf_ops")]:
            converter = tf.lite.TFLiteConverter.from_saved_model(staging, signature_keys=["serving_default"])
            converter.target_spec.supported_ops = ops
            try:
                flatbuffer = converter.convert()
                break
            except Exception as error:  # the converter raises ConverterError / various TF errors
                errors.append(f"{label}: {str(error).splitlines()[0][:300]}")
        if flatbuffer is None:
            raise ExportError(f"model {model.name!r} does not convert to TFLite ({'; '.join(errors)})")
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(flatbuffer)
    card.save(tflite_card_path(file))
    tflite_info_path(file).write_text(json.dumps({"tflite_ops": label, "input": IMAGE_INPUT,
                                                  "dtype": "float32"}, indent=2) + "\n")
    return file


def tflite_info_path(file) -> Path:
    """``NAME.tflite.json`` beside ``NAME.tflite``."""
    file = Path(file)
    return file.with_name(file.stem + TFLITE_INFO_SUFFIX)


def read_tflite_ops(file) -> str:
    """``builtins`` or ``builtins+select_tf_ops``, from ``NAME.tflite.json`` beside ``NAME.tflite``."""
    return json.loads(tflite_info_path(file).read_text())["tflite_ops"]


def with_threshold(card: ModelCard, threshold: float) -> ModelCard:
    """``card`` deciding at ``threshold`` (``--threshold``; see
    :meth:`ModelCard.with_decision_threshold`). With an operating point, its threshold moves too,
    so the exported model and its card agree; the point's other settings
    (min area, opening) and its validation scores were chosen at the old threshold: kept as they
    are, that threshold recorded as ``tuned_threshold`` and a note printed."""
    if card.task == "multiclass":
        raise ExportError(f"--threshold {threshold}: the model is multiclass (its class map is the argmax of "
                          f"{len(card.classes)} softmax probabilities), a threshold does not apply; leave it out")
    point = card.operating_point
    if not point:
        return card.with_decision_threshold(threshold)
    tuned = float(point.get("tuned_threshold", point["threshold"]))
    point = {k: v for k, v in point.items() if k != "tuned_threshold"}
    point["threshold"] = float(threshold)
    if point["threshold"] != tuned:
        point["tuned_threshold"] = tuned
        settings = ", ".join(f"{k} {point[k]}" for k in ("min_area_m2", "min_area_px", "opening_px", "instances")
                             if k in point)
        print(f"note: --threshold {threshold} replaces the operating point's threshold; its other settings "
              f"({settings}) and validation scores were chosen at threshold {tuned}", file=sys.stderr)
    return card.with_operating_point(point)


EXPORT_FORMATS = ("savedmodel", "tflite")


def check_export_output(output, format: str = "savedmodel", threshold=None) -> Optional[str]:
    """What is wrong with an export's ``output`` / ``format`` / ``threshold`` (None when nothing)."""
    output = Path(output)
    if format not in EXPORT_FORMATS:
        return f"format {format!r}: expected one of {list(EXPORT_FORMATS)}"
    if format == "savedmodel" and not (output.name.isdigit() and int(output.name) > 0):
        return (f"--output {str(output)!r}: TF Serving loads BASE/NAME/VERSION with VERSION a positive "
                f"integer, e.g. models/tfseg/1")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        return f"--threshold must be in [0, 1], got {threshold}"
    return None


def export_target(output, format: str = "savedmodel") -> Path:
    """The path an export writes: the SavedModel directory, or the ``.tflite`` file."""
    output = Path(output)
    return output if format == "savedmodel" or output.suffix == ".tflite" else output / "model.tflite"


def export_paths(output, format: str = "savedmodel") -> list:
    """Every path an export writes: the SavedModel directory, or the ``.tflite`` file with its
    card and op-set files."""
    target = export_target(output, format)
    return [target] if format == "savedmodel" else [target, tflite_card_path(target), tflite_info_path(target)]


def existing_outputs_message(output, format: str = "savedmodel") -> Optional[str]:
    """The error for an export whose output files exist already (None when none does)."""
    existing = [str(p) for p in export_paths(output, format) if p.exists()]
    if not existing:
        return None
    return (f"--output {', '.join(existing)} already exist{'s' if len(existing) == 1 else ''} (published "
            f"versions should not change; use a new VERSION or --overwrite)")


def export_loaded(model: keras.Model, card: ModelCard, output, format: str = "savedmodel",
                  threshold=None) -> Path:
    """Export an already loaded ``model`` with its ``card`` (``threshold``: a new operating
    point, see :func:`with_threshold`); returns the SavedModel directory or ``.tflite`` file."""
    if threshold is not None:
        card = with_threshold(card, threshold)
    if format == "tflite":
        return export_tflite(model, Path(output), card)
    return export_saved_model(model, Path(output), card)


def export_model(model, output, format: str = "savedmodel", threshold=None, overwrite: bool = False) -> Path:
    """Export a trained model (a run directory or a ``.keras`` file with its model card) as a
    self-describing SavedModel for TF Serving (``output`` = BASE/NAME/VERSION) or a TFLite file.

    Raises :class:`ExportError` naming the argument (bad ``output``, ``format``, ``threshold``, an
    existing output without ``overwrite``) and the loading errors of :func:`load_run_model`.
    """
    problem = check_export_output(output, format, threshold) or (None if overwrite else
                                                                 existing_outputs_message(output, format))
    if problem:
        raise ExportError(problem)
    loaded, card = load_run_model(model)
    return export_loaded(loaded, card, output, format, threshold)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfseg.export", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True,
                        help="run directory, or a .keras file (its model_card.json beside it or inside it)")
    parser.add_argument("--output", required=True,
                        help="BASE/NAME/VERSION for TF Serving (VERSION a positive integer); "
                             "for --format tflite a .tflite file or a directory")
    parser.add_argument("--format", choices=list(EXPORT_FORMATS), default="savedmodel")
    parser.add_argument("--threshold", type=float, default=None,
                        help="decision threshold (default: the card's: the operating point's when training "
                             "chose one, else train.threshold); a footprint/boundary/contact model: the footprint "
                             "channel's only; another multi-label model: every class's")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = parser.parse_args(argv)

    problem = check_export_output(args.output, args.format, args.threshold)
    if problem:
        parser.error(problem)
    existing = None if args.overwrite else existing_outputs_message(args.output, args.format)
    if existing:
        return report(existing)
    try:
        model, card = load_run_model(args.model)
    except INPUT_ERRORS as error:
        return report(error, "--model: ")
    if args.threshold is not None:
        try:
            card = with_threshold(card, args.threshold)
        except INPUT_ERRORS as error:
            return report(error)
    try:
        out = export_loaded(model, card, args.output, args.format)
    except ExportError as error:
        return report(error, code=1)
    if args.format == "tflite":
        ops = read_tflite_ops(out)
        print(f"TFLite model written to {out} (ops: {ops}"
              + ("; needs the TensorFlow Flex delegate at run time)" if ops != "builtins" else ")"))
    else:
        print(f"SavedModel written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
