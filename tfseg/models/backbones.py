"""Encoders returning feature maps at strides 2, 4, 8, 16 and 32 (pure Keras 3).

``resnet34`` is built here (keras.applications has none) with the layer layout and names of the
``image-classifiers`` ResNet34 that ``segmentation-models`` uses, so its ImageNet file loads;
``resnet50``, ``vgg16`` and ``efficientnetb0``-``b7`` come from ``keras.applications``.

Any number of input bands: pretrained weights (``encoder_weights: imagenet`` or a path) are loaded
into an RGB twin of the encoder and copied over; with N != 3 bands the first convolution's RGB
kernels are repeated over the N bands and rescaled by 3/N (as segmentation_models_pytorch does).

Example:
    >>> inputs = keras.Input((256, 256, 8))
    >>> features, encoder = build_encoder("efficientnetb0", inputs)   # {2: ..., 4: ..., 32: ...}
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import keras
from keras import layers

from ..errors import TfsegError
from .blocks import BN_MOMENTUM

# ImageNet statistics in 0..255 units, averaged over RGB: inputs to tfseg models are standardized
# per band (mean 0, std 1), the pretrained weights expect their own input range.
IMAGENET_STD_255 = 57.4
IMAGENET_MEAN_255 = 115.0


@dataclass(frozen=True)
class EncoderSpec:
    features: dict  # stride -> layer name
    filename: str = ""  # ImageNet no-top weights file name in the Keras cache
    url: str = ""
    input_scale: tuple = (1.0, 0.0)  # (scale, offset) mapping standardized bands to the weights' range
    fcn_features: dict = field(default_factory=dict)  # FCN-8 pool taps when they differ


_KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications"
_EFF = {
    f"efficientnetb{i}": EncoderSpec(
        features={2: "block2a_expand_activation", 4: "block3a_expand_activation", 8: "block4a_expand_activation",
                  16: "block6a_expand_activation", 32: "top_activation"},
        filename=f"efficientnetb{i}_notop.h5",
        url=f"https://storage.googleapis.com/keras-applications/efficientnetb{i}_notop.h5",
        # keras' EfficientNet: (x/255 - mean)/std, then an extra 1/sqrt(std) (see keras source)
        input_scale=(1.0 / np.sqrt(0.226), 0.0),
    )
    for i in range(8)
}
ENCODERS = {
    "resnet34": EncoderSpec(
        features={2: "relu0", 4: "stage2_unit1_relu1", 8: "stage3_unit1_relu1", 16: "stage4_unit1_relu1",
                  32: "relu1"},
        filename="resnet34_imagenet_1000_no_top.h5",
        url="https://github.com/qubvel/classification_models/releases/download/0.0.1/resnet34_imagenet_1000_no_top.h5",
        input_scale=(IMAGENET_STD_255, IMAGENET_MEAN_255),  # raw 0..255 RGB into its input BatchNorm
    ),
    "resnet50": EncoderSpec(
        features={2: "conv1_relu", 4: "conv2_block3_out", 8: "conv3_block4_out", 16: "conv4_block6_out",
                  32: "conv5_block3_out"},
        filename="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        url=f"{_KERAS_APPS}/resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        input_scale=(IMAGENET_STD_255, 0.0),  # caffe mode: mean-subtracted 0..255
    ),
    "vgg16": EncoderSpec(
        features={2: "block2_conv2", 4: "block3_conv3", 8: "block4_conv3", 16: "block5_conv3", 32: "block5_pool"},
        filename="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        url=f"{_KERAS_APPS}/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        input_scale=(IMAGENET_STD_255, 0.0),
        fcn_features={8: "block3_pool", 16: "block4_pool", 32: "block5_pool"},
    ),
    **_EFF,
}
BACKBONES = sorted(ENCODERS)


def backbone_label(backbone: str) -> str:
    """A model-name-safe label of ``backbone`` (``hub:/x/resnet_50`` -> ``hub_resnet_50``)."""
    if backbone.startswith("hub:"):
        return "hub_" + "".join(c if c.isalnum() else "_" for c in Path(backbone[4:].rstrip("/")).name)
    return backbone


def keras_cache_dir() -> Path:
    """Where Keras (and image-classifiers) cache downloaded weights: $KERAS_HOME/models or ~/.keras/models."""
    base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(base) / "models"


def check_backbone(backbone: str, hub: bool = False, architecture: str = "") -> EncoderSpec | None:
    """The built-in encoder's spec; ``hub:<dir>`` keras-hub backbones (None) where ``hub``."""
    if backbone.startswith("hub:"):
        if not hub:
            raise TfsegError(f"model.backbone: keras-hub backbones ({backbone!r}) work with model.name unet, fpn and "
                             f"deeplabv3plus, not {architecture or 'this architecture'}")
        return None
    if backbone not in ENCODERS:
        raise TfsegError(f"model.backbone: {backbone!r} is not available; available: {BACKBONES}")
    return ENCODERS[backbone]


# ------------------------------------------------------------------------------------------
# ResNet34 (image-classifiers layout: input BN, pre-activation basic blocks)
# ------------------------------------------------------------------------------------------
def _bn(name, scale=True):
    return layers.BatchNormalization(momentum=0.99, epsilon=2e-5, scale=scale, name=name)


def _conv(filters, size, name, strides=1, padding="valid"):
    return layers.Conv2D(filters, size, strides=strides, padding=padding, use_bias=False,
                         kernel_initializer="he_uniform", name=name)


def _basic_block(x, filters, stage, block, strides, cut):
    base = f"stage{stage + 1}_unit{block + 1}_"
    y = _bn(base + "bn1")(x)
    y = layers.Activation("relu", name=base + "relu1")(y)
    shortcut = _conv(filters, 1, base + "sc", strides)(y) if cut == "post" else x
    # stride 1: "same" is exactly the reference's symmetric ZeroPadding(1) + "valid", one copy less;
    # stride 2 keeps the explicit symmetric padding ("same" would pad bottom/right only)
    if strides == 1:
        y = _conv(filters, 3, base + "conv1", padding="same")(y)
    else:
        y = layers.ZeroPadding2D(1, name=base + "pad1")(y)
        y = _conv(filters, 3, base + "conv1", strides)(y)
    y = _bn(base + "bn2")(y)
    y = layers.Activation("relu", name=base + "relu2")(y)
    y = _conv(filters, 3, base + "conv2", padding="same")(y)
    return layers.Add(name=base + "add")([y, shortcut])


def resnet34(input_shape) -> keras.Model:
    """ResNet34 without the classifier (21.3 M parameters), layer names as in image-classifiers."""
    inputs = keras.Input(input_shape, name="data")
    x = _bn("bn_data", scale=False)(inputs)
    x = layers.ZeroPadding2D(3, name="pad0")(x)
    x = _conv(64, 7, "conv0", 2)(x)
    x = _bn("bn0")(x)
    x = layers.Activation("relu", name="relu0")(x)
    x = layers.ZeroPadding2D(1, name="pooling0_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="pooling0")(x)
    for stage, repeats in enumerate((3, 4, 6, 3)):
        for block in range(repeats):
            strides = 2 if block == 0 and stage > 0 else 1
            x = _basic_block(x, 64 * 2**stage, stage, block, strides, "post" if block == 0 else "pre")
    x = _bn("bn1")(x)
    x = layers.Activation("relu", name="relu1")(x)
    return keras.Model(inputs, x, name="resnet34")


def _base_model(backbone: str, input_shape) -> keras.Model:
    if backbone == "resnet34":
        return resnet34(input_shape)
    apps = keras.applications
    builder = {"resnet50": apps.ResNet50, "vgg16": apps.VGG16}.get(backbone)
    if builder is None:
        builder = getattr(apps, f"EfficientNetB{backbone[-1]}")
    with warnings.catch_warnings():  # "usually expects 1 or 3 input channels": N bands are the point
        warnings.simplefilter("ignore", UserWarning)
        model = builder(include_top=False, weights=None, input_shape=tuple(input_shape))
    if backbone.startswith("efficientnet"):
        _neutralize_efficientnet_preprocessing(model)
    return model


def _neutralize_efficientnet_preprocessing(model):
    """keras' EfficientNet rescales by 1/255 and normalizes inside the model; tfseg inputs are
    already standardized per band, so both become the identity (the weights' range is restored by
    the encoder input scale when pretrained weights are used)."""
    for layer in model.layers[:4]:
        if isinstance(layer, layers.Rescaling):
            layer.scale, layer.offset = 1.0, 0.0
        elif isinstance(layer, layers.Normalization):
            _identity_normalization(layer)


def _identity_normalization(layer):
    for var in layer.weights:
        if var.name in ("mean", "adapt_mean") or var.path.endswith("mean"):
            var.assign(np.zeros(var.shape, "float32"))
        elif var.name in ("variance", "adapt_variance") or var.path.endswith("variance"):
            var.assign(np.ones(var.shape, "float32"))
    if getattr(layer, "mean", None) is not None and not hasattr(layer.mean, "assign"):
        layer.mean, layer.variance = np.zeros_like(layer.mean), np.ones_like(layer.variance)


def dilate_encoder(model: keras.Model, output_stride: int) -> keras.Model:
    """A clone of the functional ``model`` whose resolution stops at ``output_stride``: every
    downsampling layer that would go past it gets stride 1, and every convolution after it a
    dilation of (its original input stride / output_stride), the DeepLab recipe (the first
    convolution of a dilated stage keeps the previous rate, the others double it). Weight shapes
    are unchanged, so pretrained weights load as for the undilated encoder."""
    stride, changes = {}, {}
    for layer in model.layers:  # topological order
        parents = [p.operation.name for node in layer._inbound_nodes[:1] for p in node.parent_nodes]
        in_stride = max((stride[p] for p in parents), default=1)
        step = int(tuple(getattr(layer, "strides", None) or (1, 1))[0])
        stride[layer.name] = in_stride * step
        change = {}
        if step > 1 and in_stride * step > output_stride:
            change["strides"] = 1
        rate = in_stride // output_stride if in_stride > output_stride else 1
        kernel = tuple(getattr(layer, "kernel_size", None) or (1, 1))
        if rate > 1 and max(kernel) > 1 and hasattr(layer, "dilation_rate"):
            change["dilation_rate"] = rate
        if change:
            change["padding"] = "same"  # stride 1 (dilated): output size = input size
            changes[layer.name] = change
    for layer in model.layers:  # explicit padding in front of a layer that now pads itself
        consumers = [node.operation.name for node in layer._outbound_nodes]
        if isinstance(layer, layers.ZeroPadding2D) and consumers and all(c in changes for c in consumers):
            changes[layer.name] = {"padding": 0}

    def clone(layer):
        config = layer.get_config()
        config.update(changes.get(layer.name, {}))
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone)


# ------------------------------------------------------------------------------------------
# Weights
# ------------------------------------------------------------------------------------------
def resolve_weights_file(backbone: str, encoder_weights: str) -> Path:
    """The weights file for ``encoder_weights`` (``imagenet`` or a path), or a FileNotFoundError
    that says where to put it."""
    spec = check_backbone(backbone)
    if encoder_weights == "imagenet":
        path = keras_cache_dir() / spec.filename
        if not path.is_file():
            raise FileNotFoundError(
                f"model.encoder_weights='imagenet' for backbone {backbone!r}: weights file {path} not found and "
                f"tfseg does not download. Download {spec.url} and put it at {path} (the Keras cache "
                f"directory, $KERAS_HOME/models), or set model.encoder_weights to the path of a weights file"
            )
        return path
    path = Path(encoder_weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.encoder_weights: weights file {path} not found (backbone {backbone!r})")
    return path


def adapt_first_conv(kernel: np.ndarray, bands: int) -> np.ndarray:
    """Kernels (kh, kw, 3, out) for ``bands`` inputs: 1 band = sum over RGB; otherwise the RGB
    kernels repeated cyclically over the bands and scaled by 3/bands (segmentation_models_pytorch's
    ``patch_first_conv``), so the response to a constant image keeps its magnitude."""
    rgb = kernel.shape[2]
    if bands == 1:
        return kernel.sum(axis=2, keepdims=True)
    picked = kernel[:, :, [i % rgb for i in range(bands)], :]
    return picked * (rgb / bands)


def load_encoder_weights(encoder: keras.Model, backbone: str, path: Path, bands: int) -> None:
    """Load a weights file (Keras ``.weights.h5``, or the legacy ``.h5`` files keras.applications
    and image-classifiers publish) into ``encoder``, adapting input-band-dependent weights."""
    twin = _base_model(backbone, (None, None, 3))
    try:
        _load_into(twin, path)
        source_bands = 3
    except Exception as rgb_error:  # noqa: BLE001 - retry as an N-band file (e.g. saved from tfseg)
        twin = _base_model(backbone, (None, None, bands))
        try:
            _load_into(twin, path)
        except Exception:  # noqa: BLE001
            raise TfsegError(
                f"model.encoder_weights: {path} does not hold {backbone} encoder weights "
                f"(expected a no-top {backbone} weights file for 3 or {bands} bands): {rgb_error}"
            ) from None
        source_bands = bands
    if backbone.startswith("efficientnet"):
        _neutralize_efficientnet_preprocessing(twin)
    copy_adapted_weights(twin, encoder, source_bands, bands, f"model.encoder_weights: {path}")


def copy_adapted_weights(source_model: keras.Model, target_model: keras.Model, source_bands: int, bands: int,
                         what: str) -> None:
    """Copy weights layer by layer (matched by name, else by position and type) from
    ``source_model`` (built for ``source_bands`` inputs) into ``target_model`` (``bands`` inputs),
    adapting first-convolution kernels (:func:`adapt_first_conv`) and per-band input statistics.
    ``what`` names the source in errors."""
    twin_layers = {layer.name: layer for layer in source_model.layers}
    twin_weighted = [layer for layer in source_model.layers if layer.weights]
    for index, layer in enumerate(l for l in target_model.layers if l.weights):
        source = twin_layers.get(layer.name)
        if source is None and index < len(twin_weighted) and type(twin_weighted[index]) is type(layer):
            source = twin_weighted[index]  # auto-named layers (keras' EfficientNet "normalization_N")
        if source is None:
            raise TfsegError(f"{what} has no weights for encoder layer {layer.name!r}")
        values = []
        for target, value in zip(layer.weights, source.get_weights()):
            if tuple(target.shape) != value.shape:
                if value.ndim == 4 and value.shape[2] == source_bands:
                    value = adapt_first_conv(value, bands)
                elif value.ndim == 1 and value.shape[0] == source_bands:  # input BatchNorm statistics
                    value = value[[i % source_bands for i in range(bands)]]
                if tuple(target.shape) != value.shape:
                    raise TfsegError(
                        f"{what}: layer {layer.name!r} weight {target.name!r} has shape "
                        f"{value.shape}, the encoder expects {tuple(target.shape)}"
                    )
            values.append(value)
        layer.set_weights(values)


def _load_into(model: keras.Model, path: Path) -> None:
    if str(path).endswith(".weights.h5") or not str(path).endswith((".h5", ".hdf5")):
        model.load_weights(str(path))
        return
    try:  # legacy h5: keras.applications files load by topological order
        model.load_weights(str(path))
    except ValueError:  # image-classifiers files: by layer name, every layer or an error
        _load_legacy_h5_by_name(model, path)


def _load_legacy_h5_by_name(model: keras.Model, path: Path) -> None:
    """Load a legacy (Keras 2) ``.h5`` weights file by layer name, strictly: every weighted layer
    of ``model`` must find its weights, with the same shapes, or a ValueError names the first one
    that does not (Keras' ``by_name=True`` skips it silently and leaves random weights)."""
    import h5py

    with h5py.File(path, "r") as handle:
        group = handle["model_weights"] if "model_weights" in handle else handle
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("layer_names", [])]
        if not names:
            raise TfsegError(f"model.encoder_weights: {path} is not a Keras weights file (no layer_names)")
        loaded = []
        for layer in (l for l in model.layers if l.weights):
            if layer.name not in names:
                raise TfsegError(
                    f"model.encoder_weights: {path} has no weights for layer {layer.name!r} (first mismatching "
                    f"layer; the file holds {len(names)} layers: {', '.join(names[:5])}, ...)"
                )
            layer_group = group[layer.name]
            weight_names = [n.decode() if isinstance(n, bytes) else str(n)
                            for n in layer_group.attrs.get("weight_names", [])]
            values = [np.asarray(layer_group[n]) for n in weight_names]
            shapes = [tuple(w.shape) for w in layer.weights]
            if [v.shape for v in values] != shapes:
                raise TfsegError(
                    f"model.encoder_weights: {path}: layer {layer.name!r} (first mismatching layer) holds weights "
                    f"of shapes {[v.shape for v in values]}, the model expects {shapes}"
                )
            loaded.append((layer, values))
    for layer, values in loaded:
        layer.set_weights(values)


# ------------------------------------------------------------------------------------------
# Encoder
# ------------------------------------------------------------------------------------------
def build_encoder(backbone: str, inputs, encoder_weights: str = "", encoder_freeze: bool = False,
                  input_scale=None, strides=(2, 4, 8, 16, 32), fcn: bool = False, output_stride: int = 32):
    """Apply the ``backbone`` encoder to ``inputs``; returns ``({stride: feature}, encoder_model)``.

    ``output_stride`` 16 or 8 dilates the stages past that stride (:func:`dilate_encoder`, as
    DeepLab does): the features keep their nominal stride keys (``features[32]`` is then at
    stride ``output_stride``).

    The encoder is one nested model named ``encoder_<backbone>`` (so ``encoder_freeze`` freezes it
    as a unit; frozen BatchNorm layers then run in inference mode). With pretrained weights the
    standardized input bands are first mapped to the range the weights expect
    (``input_scale=(scale, offset)``; ``model.options.input_scale`` overrides it).
    """
    if backbone.startswith("hub:"):
        from .hub import build_hub_encoder

        if encoder_weights:
            raise TfsegError(f"model.encoder_weights: a keras-hub backbone ({backbone!r}) loads its weights from its "
                             f"preset directory; leave model.encoder_weights empty, got {encoder_weights!r}")
        if output_stride != 32 or fcn:
            raise TfsegError("model.backbone: keras-hub backbones are not dilated; use the pyramid level at the "
                             "output stride")
        required = [s for s in strides if s != 2]  # CNN pyramids usually start at stride 4
        return build_hub_encoder(backbone, inputs, encoder_freeze, input_scale, strides, required)
    spec = check_backbone(backbone)
    bands = int(inputs.shape[-1])
    base = _base_model(backbone, (None, None, bands))
    if output_stride != 32:
        base = dilate_encoder(base, output_stride)
        if backbone.startswith("efficientnet"):
            _neutralize_efficientnet_preprocessing(base)
    taps = {**spec.features, **(spec.fcn_features if fcn else {})}
    names = [taps[s] for s in strides]
    encoder = keras.Model(base.input, [base.get_layer(n).output for n in names], name=f"encoder_{backbone}")
    if encoder_weights:
        load_encoder_weights(encoder, backbone, resolve_weights_file(backbone, encoder_weights), bands)
    else:
        # trained from scratch: BatchNorm statistics follow the weights as fast as the decoder's
        # (momentum 0.9, see blocks.BN_MOMENTUM); with the 0.99 of pretrained encoders the moving
        # statistics lag the random-init weights for hundreds of steps and validation, which
        # runs in inference mode, swings far below training
        for layer in encoder.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = BN_MOMENTUM
    if encoder_freeze:
        encoder.trainable = False
    x = inputs
    if input_scale is None:
        input_scale = spec.input_scale if encoder_weights else (1.0, 0.0)
    if isinstance(input_scale, (int, float)):
        input_scale = (float(input_scale), 0.0)
    if tuple(input_scale) != (1.0, 0.0):
        x = layers.Rescaling(float(input_scale[0]), float(input_scale[1]), name="encoder_input_scale")(x)
    outputs = encoder(x)
    return dict(zip(strides, outputs)), encoder
