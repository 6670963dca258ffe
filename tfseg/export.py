"""SavedModel export: raw pixels in, probabilities and class map out, normalization inside.

``python -m tfseg.export --model RUN_DIR_OR_KERAS_FILE --output BASE/NAME/VERSION``

Example:
    >>> export_saved_model(model, norm, "export/1", metadata={"classes": ["building"]})
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from .data.raster import Normalization


def model_multiple(model: keras.Model) -> int:
    """The size multiple the model needs: 2 ** (number of stride-2 downsamplings)."""
    return int(model.get_config().get("tfseg_multiple", 0)) or 2 ** _count_downsamplings(model)


def _count_downsamplings(model) -> int:
    count = 0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
            count += 1
        elif isinstance(layer, keras.layers.Conv2D) and tuple(layer.strides) == (2, 2):
            count += 1
    return max(count, 0)


def make_serving_fn(model: keras.Model, norm: Normalization, multiple: int, threshold: float = 0.5):
    """A tf function: raw [N, H, W, C] float32 -> probabilities and class map of the same H, W."""
    offset = tf.constant(norm.offset, tf.float32)
    scale = tf.constant(norm.scale, tf.float32)
    clip = norm.clip
    binary = model.output_shape[-1] == 1

    def serve(images):
        images = tf.cast(images, tf.float32)
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        if clip is not None:
            images = tf.clip_by_value(images, clip[0], clip[1])
        x = (images - offset) / scale
        pad_h = (multiple - height % multiple) % multiple
        pad_w = (multiple - width % multiple) % multiple
        x = tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], mode="REFLECT")
        probs = tf.cast(model(x, training=False), tf.float32)[:, :height, :width, :]
        if binary:
            classes = tf.cast(probs[..., 0] >= threshold, tf.int32)
        else:
            classes = tf.argmax(probs, axis=-1, output_type=tf.int32)
        return {"probabilities": probs, "classes": classes}

    return serve


def export_saved_model(
    model: keras.Model,
    norm: Normalization,
    output: Path,
    metadata: Optional[dict] = None,
    threshold: float = 0.5,
) -> Path:
    """Write a SavedModel with a ``serving_default`` signature and a ``metadata`` one."""
    output = Path(output)
    bands = model.input_shape[-1]
    multiple = model_multiple(model)
    serve = make_serving_fn(model, norm, multiple, threshold)
    meta = dict(metadata or {})
    meta.setdefault("num_bands", bands)
    meta.setdefault("size_multiple", multiple)
    meta.setdefault("threshold", threshold)
    meta.setdefault("normalization", norm.__dict__)
    meta_json = json.dumps(meta)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=serve,
        input_signature=[tf.TensorSpec([None, None, None, bands], tf.float32, name="images")],
    )
    archive.add_endpoint(
        name="metadata",
        fn=lambda: {"metadata": tf.constant(meta_json)},
        input_signature=[],
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    archive.write_out(str(output), verbose=False)
    (output / "assets").mkdir(exist_ok=True)
    (output / "assets" / "tfseg_metadata.json").write_text(json.dumps(meta, indent=2))
    return output


def load_run_model(path) -> tuple[keras.Model, Normalization, dict]:
    """The best model of a run directory (or a ``.keras`` file next to its run files)."""
    path = Path(path)
    run_dir = path if path.is_dir() else path.parent
    keras_file = path / "model.keras" if path.is_dir() else path
    if not keras_file.is_file():
        raise FileNotFoundError(f"no Keras model at {keras_file} (expected a run directory or a .keras file)")
    from . import losses, metrics  # noqa: F401  (registers custom objects)

    model = keras.saving.load_model(keras_file, compile=False)
    norm = Normalization.load(run_dir / "normalization.json")
    metrics_file = run_dir / "metrics.json"
    run_metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return model, norm, run_metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfseg.export", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="run directory or .keras file (with normalization.json beside it)")
    parser.add_argument("--output", required=True, help="output directory, e.g. BASE/NAME/1 for TF Serving")
    args = parser.parse_args(argv)
    model, norm, run_metrics = load_run_model(args.model)
    out = export_saved_model(model, norm, Path(args.output), {"metrics": run_metrics.get("val", {})})
    print(f"SavedModel written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
