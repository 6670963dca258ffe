"""Building blocks shared by the architectures (pure Keras 3: keras.layers / keras.ops only).

Example:
    >>> x = conv_block(x, 64, batch_norm=True, name="dec1")
    >>> model = SegmentationModel(inputs, output_head(x, classes=3), tfseg_multiple=32)
"""
from __future__ import annotations

import numpy as np

import keras
from keras import layers, ops

from ..errors import TfsegError


# Blocks trained from scratch (plain UNet, decoders) track batch statistics with momentum 0.9
# (PyTorch's default, which most UNet recipes are tuned with). Keras' 0.99 averages over ~100
# steps, so on short runs the moving statistics used at validation lag far behind the weights
# (validation IoU trailed training IoU by 0.2-0.7 for most of an 8-epoch run).
BN_MOMENTUM = 0.9


def reject_options(options: dict, architecture: str, ignored=()) -> None:
    """Raise for ``model.options`` keys the architecture does not know (``ignored``: config
    fields of other architectures that reach every builder)."""
    unknown = sorted(set(options) - set(ignored))
    if unknown:
        raise TfsegError(f"model.options: unknown option(s) {unknown} for model.name={architecture!r}")


def check_decoder_filters(decoder_filters, lengths, what: str, meaning: str) -> tuple:
    """``model.decoder_filters`` as a tuple of positive integers with one of ``lengths`` entries
    (empty = the architecture's default: returned as ``()``); anything else is refused, naming
    ``what`` (the architecture) and ``meaning`` (what the entries are), never truncated or padded."""
    widths = tuple(decoder_filters or ())
    if not widths:
        return ()
    if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise TfsegError(f"model.decoder_filters: expected positive integers for {what}, got {list(widths)}")
    if len(widths) not in tuple(lengths):
        expected = " or ".join(str(n) for n in lengths) + (" entry" if tuple(lengths) == (1,) else " entries")
        raise TfsegError(f"model.decoder_filters: {what} takes {expected} ({meaning}), got {len(widths)}: "
                         f"{list(widths)}")
    return widths


def conv_block(x, filters: int, batch_norm: bool = True, dropout: float = 0.0, name: str = "block"):
    """Two 3x3 conv -> (BN) -> ReLU, with optional dropout between them."""
    for i in range(2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm, name=f"{name}_conv{i}")(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
        if i == 0 and dropout:
            x = layers.Dropout(dropout, name=f"{name}_drop")(x)
    return x


def conv_bn_relu(x, filters: int, kernel_size: int = 3, batch_norm: bool = True, name: str = "conv"):
    """One conv -> (BN) -> ReLU."""
    x = layers.Conv2D(filters, kernel_size, padding="same", use_bias=not batch_norm, name=f"{name}_conv")(x)
    if batch_norm:
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def residual_double_conv(x, filters: int, batch_norm: bool = True, name: str = "stem"):
    """Two 3x3 convs with a 1x1-projected identity shortcut (the Res50-UNet stem used in published
    Dstl solutions: full-resolution features straight from the raw N-band input)."""
    shortcut = layers.Conv2D(filters, 1, padding="same", use_bias=not batch_norm, name=f"{name}_proj")(x)
    if batch_norm:
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_proj_bn")(shortcut)
    y = conv_bn_relu(x, filters, 3, batch_norm, name=f"{name}_a")
    y = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm, name=f"{name}_b_conv")(y)
    if batch_norm:
        y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_b_bn")(y)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.Activation("relu", name=f"{name}_out")(y)


def upsample2x(x, mode: str = "bilinear", filters: int = 0, batch_norm: bool = True, name: str = "up"):
    """x2 upsampling that traces with unknown H/W: ``bilinear`` (BilinearUpsample2x), ``nearest``,
    or ``transpose`` (learned Conv2DTranspose 4x4/2 -> BN -> ReLU, needs ``filters``)."""
    if mode == "transpose":
        x = layers.Conv2DTranspose(filters or x.shape[-1], 4, strides=2, padding="same", use_bias=not batch_norm,
                                   name=f"{name}_tconv")(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
        return layers.Activation("relu", name=f"{name}_relu")(x)
    if mode == "bilinear":
        return BilinearUpsample2x(name=name)(x)
    if mode == "nearest":
        return layers.UpSampling2D(2, interpolation="nearest", name=name)(x)
    raise TfsegError(f"model.upsampling: expected one of ['bilinear', 'nearest', 'transpose'], got {mode!r}")


def head_activation(classes: int, activation: str = "auto") -> str:
    """``auto``: sigmoid for one output channel, softmax for several."""
    if activation == "auto":
        return "sigmoid" if classes == 1 else "softmax"
    if activation not in ("sigmoid", "softmax", "linear"):
        raise TfsegError(f"model.activation: expected one of ['auto', 'sigmoid', 'softmax'], got {activation!r}")
    return activation


def output_head(x, classes: int, activation: str = "auto", name: str = "head", upsample: int = 1,
                kernel_size: int = 1):
    """Conv (1x1 by default) to ``classes`` logits, optional bilinear x``upsample`` (a power of 2)
    of the logits, then the final activation in float32 whatever the mixed-precision policy."""
    x = layers.Conv2D(classes, kernel_size, padding="same", name=f"{name}_logits")(x)
    step = 0
    while upsample > 1:
        x = BilinearUpsample2x(name=f"{name}_up{step}")(x)
        upsample //= 2
        step += 1
    return final_activation(x, classes, activation, name)


def final_activation(x, classes: int, activation: str = "auto", name: str = "head"):
    return layers.Activation(head_activation(classes, activation), dtype="float32", name=f"{name}_probs")(x)


def check_input_shape(input_shape, multiple: int, what: str):
    """Raise a ValueError naming the size and the multiple when a static H/W does not divide."""
    if len(input_shape) != 3:
        raise TfsegError(f"input_shape: expected (height, width, bands), got {tuple(input_shape)!r}")
    if input_shape[2] is None or int(input_shape[2]) < 1:
        raise TfsegError(f"input_shape: the number of bands must be known (>= 1), got {tuple(input_shape)!r}")
    for axis, size in zip(("height", "width"), input_shape[:2]):
        if size is not None and int(size) % multiple:
            raise TfsegError(
                f"input_shape {tuple(input_shape)!r}: {axis} {size} is not a multiple of {multiple}, the size "
                f"multiple of {what} (the data pipeline and the exporter pad to it; use a window size that is "
                f"a multiple of {multiple})"
            )


@keras.saving.register_keras_serializable(package="tfseg")
class SegmentationModel(keras.Model):
    """A functional model that also records the input-size multiple it needs (``tfseg_multiple``,
    returned by ``get_config`` and kept through ``.keras`` save/load; read by
    ``tfseg.export.model_multiple``).

    Example:
        >>> model = SegmentationModel(inputs, outputs, tfseg_multiple=32, name="unet_resnet34")
    """

    def __init__(self, *args, tfseg_multiple: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.tfseg_multiple = int(tfseg_multiple)

    def get_config(self):
        return {**super().get_config(), "tfseg_multiple": self.tfseg_multiple}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        multiple = config.pop("tfseg_multiple", 1)
        model = super().from_config(config, custom_objects)
        model.tfseg_multiple = int(multiple)
        return model


@keras.saving.register_keras_serializable(package="tfseg")
class BilinearKernel(keras.initializers.Initializer):
    """Initializes a Conv2DTranspose kernel (k, k, out, in) as bilinear upsampling per channel
    (the classic FCN initialization of learned upsampling)."""

    def __call__(self, shape, dtype=None):
        size, _, out_channels, in_channels = shape
        factor = (size + 1) // 2
        center = factor - 1 if size % 2 == 1 else factor - 0.5
        grid = np.ogrid[:size, :size]
        filt = (1 - abs(grid[0] - center) / factor) * (1 - abs(grid[1] - center) / factor)
        kernel = np.zeros(shape, dtype="float32")
        for c in range(min(out_channels, in_channels)):
            kernel[:, :, c, c] = filt
        return ops.convert_to_tensor(kernel, dtype=dtype or "float32")

    def get_config(self):
        return {}


@keras.saving.register_keras_serializable(package="tfseg")
class BilinearUpsample2x(layers.Layer):
    """x2 bilinear upsampling (half-pixel centres, edges clamped), equal to
    ``tf.image.resize(..., "bilinear")`` at factor 2, but written with slicing so it also traces
    with unknown height and width (Keras' UpSampling2D cannot, which breaks any-size export)."""

    def call(self, x):
        shape = ops.shape(x)
        # rows: output 2i = .75 x[i] + .25 x[i-1], output 2i+1 = .75 x[i] + .25 x[i+1]
        prev = ops.concatenate([x[:, :1], x[:, :-1]], axis=1)
        nxt = ops.concatenate([x[:, 1:], x[:, -1:]], axis=1)
        x = ops.stack([0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt], axis=2)
        x = ops.reshape(x, (-1, shape[1] * 2, shape[2], shape[3]))
        prev = ops.concatenate([x[:, :, :1], x[:, :, :-1]], axis=2)
        nxt = ops.concatenate([x[:, :, 1:], x[:, :, -1:]], axis=2)
        x = ops.stack([0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt], axis=3)
        return ops.reshape(x, (-1, shape[1] * 2, shape[2] * 2, shape[3]))

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, None if h is None else 2 * h, None if w is None else 2 * w, c)
