"""Adapter over the ``segmentation-models`` package (Unet / FPN / Linknet / PSPNet x its backbones)
for users who know it. Imported lazily; the output is a float32 activation so it works under
mixed precision (segmentation-models' own head follows the global policy: float16/bfloat16).

Install: ``pip install "tfseg[sm]"`` (segmentation-models==1.0.1; it needs
``SM_FRAMEWORK=tf.keras``, which this adapter sets before importing it).

Example:
    >>> model = build_sm(input_shape=(256, 256, 3), classes=1, backbone="resnet34",
    ...                  architecture="Unet")
"""
from __future__ import annotations

import os

import keras

from .blocks import SegmentationModel, check_input_shape, final_activation

ARCHITECTURES = ("Unet", "FPN", "Linknet", "PSPNet")


def import_segmentation_models():
    """Import segmentation_models on the tf.keras framework, or raise an ImportError saying how to
    install it."""
    os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
    if keras.backend.backend() != "tensorflow":
        raise ImportError(
            f"model.name='sm': segmentation-models needs the TensorFlow backend, KERAS_BACKEND is "
            f"{keras.backend.backend()!r}")
    try:
        import segmentation_models as sm  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise ImportError(
            "model.name='sm' needs the optional package segmentation-models: "
            "pip install 'segmentation-models==1.0.1' (or pip install 'tfseg[sm]')"
        ) from exc
    return sm


def build_sm(input_shape=(None, None, 3), classes: int = 1, backbone: str = "resnet34", encoder_weights: str = "",
             encoder_freeze: bool = False, decoder_filters=(), activation: str = "auto",
             architecture: str = "Unet", name: str = "", **ignored) -> keras.Model:
    """segmentation-models ``architecture(backbone, ...)`` with a float32 final activation.

    ``architecture`` comes from ``model.options.architecture`` (Unet, FPN, Linknet, PSPNet).
    ``encoder_weights``: ``imagenet`` (segmentation-models' cached file: it downloads into
    ~/.keras/models when online) or a path to weights of the whole segmentation-models model.
    ``decoder_filters``: Unet's ``decoder_filters``, FPN's [pyramid, segmentation] filters.
    Model fields of the other architectures (depth, filters, ...) are ignored.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"model.options.architecture: expected one of {list(ARCHITECTURES)}, got {architecture!r}")
    multiple = 48 if architecture == "PSPNet" else 32
    check_input_shape(input_shape, multiple, f"sm {architecture} (segmentation-models)")
    sm = import_segmentation_models()
    backbone = backbone or "resnet34"
    if backbone not in sm.get_available_backbone_names():
        raise ValueError(f"model.backbone: {backbone!r} is not a segmentation-models backbone; available: "
                         f"{sm.get_available_backbone_names()}")
    kwargs = dict(backbone_name=backbone, input_shape=tuple(input_shape), classes=classes, activation="linear",
                  encoder_freeze=encoder_freeze,
                  encoder_weights="imagenet" if encoder_weights == "imagenet" else None)
    if decoder_filters and architecture == "Unet":
        kwargs["decoder_filters"] = tuple(decoder_filters)
    if decoder_filters and architecture == "FPN":
        kwargs["pyramid_block_filters"] = decoder_filters[0]
        if len(decoder_filters) > 1:
            kwargs["segmentation_filters"] = decoder_filters[1]
    try:
        core = getattr(sm, architecture)(**kwargs)
    except Exception as exc:  # noqa: BLE001 - e.g. offline imagenet download
        if encoder_weights == "imagenet":
            raise FileNotFoundError(
                f"model.encoder_weights='imagenet' with model.name='sm': segmentation-models could not load "
                f"the {backbone} ImageNet weights (it downloads them into ~/.keras/models; put the file there "
                f"when offline): {exc}") from exc
        raise
    if encoder_weights and encoder_weights != "imagenet":
        if not os.path.isfile(encoder_weights):
            raise FileNotFoundError(f"model.encoder_weights: weights file {encoder_weights} not found")
        core.load_weights(encoder_weights)
    inputs = keras.Input(shape=input_shape, name="image")
    x = core(inputs)
    outputs = final_activation(x, classes, activation)
    return SegmentationModel(inputs, outputs, name=name or f"sm_{architecture.lower()}_{backbone}",
                             tfseg_multiple=multiple)
