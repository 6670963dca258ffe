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
import urllib.error

import keras

from ..errors import TfsegError
from .blocks import SegmentationModel, check_decoder_filters, check_input_shape, final_activation, reject_options

ARCHITECTURES = ("Unet", "FPN", "Linknet", "PSPNet")


def import_segmentation_models():
    """Import segmentation_models on the tf.keras framework, or raise an ImportError saying how to
    install it (or why the installed package cannot be imported)."""
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
    except Exception as exc:  # noqa: BLE001 - an installed but broken package (e.g. another Keras API)
        raise ImportError(f"model.name='sm': segmentation-models is installed but cannot be imported "
                          f"({type(exc).__name__}: {exc}); pip install 'segmentation-models==1.0.1'") from exc
    return sm


def available() -> bool:
    """Whether ``model.name='sm'`` can be built here (segmentation-models imports)."""
    try:
        import_segmentation_models()
    except ImportError:
        return False
    return True


# ModelConfig fields of the other architectures: they reach every builder and do not apply here
OTHER_FIELDS = {"depth", "filters", "batch_norm", "dropout", "dropout_position", "upsampling", "stem"}
# decoder_filters per architecture: (number of entries, what they are, segmentation-models' argument
# and value from the widths)
DECODER_FILTERS = {
    "Unet": (5, "the 5 decoder block widths", "decoder_filters", tuple),
    "Linknet": (1, "[last block width]; segmentation-models sizes the other blocks by the encoder's skips",
                "decoder_filters", lambda w: (None, None, None, None, w[0])),
    "FPN": (1, "[pyramid_filters]; segmentation-models sets the segmentation filters to half of it",
            "pyramid_block_filters", lambda w: w[0]),
}


def build_sm(input_shape=(None, None, 3), classes: int = 1, backbone: str = "resnet34", encoder_weights: str = "",
             encoder_freeze: bool = False, decoder_filters=(), activation: str = "auto",
             architecture: str = "Unet", name: str = "", **options) -> keras.Model:
    """segmentation-models ``architecture(backbone, ...)`` with a float32 final activation.

    ``architecture`` comes from ``model.options.architecture`` (Unet, FPN, Linknet, PSPNet); any
    other ``model.options`` key is refused. ``encoder_weights``: ``imagenet`` (segmentation-models'
    cached file: it downloads into ~/.keras/models when online) or a path to weights of the whole
    segmentation-models model. ``decoder_filters``: Unet's 5 decoder block widths, Linknet's
    [last block width] (its other blocks take the encoder's widths), FPN's [pyramid_filters] (its
    segmentation filters are half of it); refused for PSPNet and with another number of entries.
    PSPNet needs a fixed input size (a multiple of 48): it is refused for a model built for any
    tile size (``input_shape`` (None, None, bands), what a config's training builds), so it is
    built only from Python with a static ``input_shape``. Model fields of the other architectures
    (depth, filters, ...) are ignored.
    """
    reject_options(options, "sm", ignored=OTHER_FIELDS)
    if architecture not in ARCHITECTURES:
        raise TfsegError(f"model.options.architecture: expected one of {list(ARCHITECTURES)}, got {architecture!r}")
    multiple = 48 if architecture == "PSPNet" else 32
    if architecture == "PSPNet" and any(size is None for size in tuple(input_shape)[:2]):
        raise TfsegError(
            f"model.options.architecture='PSPNet': segmentation-models' PSPNet needs a fixed input size (a multiple "
            f"of 48: its pyramid pooling sizes are computed from it), but this model is built for any tile size "
            f"(input_shape {tuple(input_shape)}); tfseg's training does not build it at data.window_size, so a "
            f"config cannot train it: use Unet, FPN or Linknet, or build_model('sm', architecture='PSPNet', "
            f"input_shape=(size, size, bands)) from Python")
    check_input_shape(input_shape, multiple, f"sm {architecture} (segmentation-models)")
    kwargs = {}
    if decoder_filters:
        if architecture not in DECODER_FILTERS:
            raise TfsegError(f"model.decoder_filters: segmentation-models' {architecture} has no decoder widths to "
                             f"set, got {list(decoder_filters)} (leave it empty)")
        count, meaning, argument, value = DECODER_FILTERS[architecture]
        kwargs[argument] = value(check_decoder_filters(decoder_filters, (count,), f"sm {architecture}", meaning))
    if encoder_weights and encoder_weights != "imagenet" and not os.path.isfile(encoder_weights):
        raise FileNotFoundError(f"model.encoder_weights: weights file {encoder_weights} not found")
    sm = import_segmentation_models()
    backbone = backbone or "resnet34"
    if backbone not in sm.get_available_backbone_names():
        raise TfsegError(f"model.backbone: {backbone!r} is not a segmentation-models backbone; available: "
                         f"{sm.get_available_backbone_names()}")
    kwargs.update(backbone_name=backbone, input_shape=tuple(input_shape), classes=classes, activation="linear",
                  encoder_freeze=encoder_freeze, encoder_weights="imagenet" if encoder_weights == "imagenet" else None)
    try:
        core = getattr(sm, architecture)(**kwargs)
    except Exception as exc:  # noqa: BLE001 - keras' get_file raises a bare Exception when offline
        if encoder_weights == "imagenet" and _missing_download(exc):
            raise FileNotFoundError(
                f"model.encoder_weights='imagenet' with model.name='sm': segmentation-models could not load "
                f"the {backbone} ImageNet weights (it downloads them into ~/.keras/models; put the file there "
                f"when offline): {exc}") from exc
        raise
    if encoder_weights and encoder_weights != "imagenet":
        core.load_weights(encoder_weights)
    inputs = keras.Input(shape=input_shape, name="image")
    x = core(inputs)
    outputs = final_activation(x, classes, activation)
    return SegmentationModel(inputs, outputs, name=name or f"sm_{architecture.lower()}_{backbone}",
                             tfseg_multiple=multiple)


def _missing_download(exc: BaseException) -> bool:
    """Whether ``exc`` says the weights file could not be fetched or read (offline, no cached file),
    as opposed to any other failure (which is raised as it is)."""
    return isinstance(exc, (OSError, urllib.error.URLError)) or str(exc).startswith("URL fetch failure")
