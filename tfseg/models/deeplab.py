"""DeepLabV3+ (Chen et al. 2018): an encoder whose last stages are dilated to output stride 16
or 8, Atrous Spatial Pyramid Pooling (1x1, three 3x3 atrous convolutions, image pooling), and
a decoder that fuses the ASPP output upsampled to stride 4 with the encoder's stride-4 features
(1x1-reduced to 48 channels), two 3x3 convolutions, then a bilinear x4 of the logits. Pure Keras 3.

Example:
    >>> model = build_deeplabv3plus(input_shape=(512, 512, 4), classes=6, backbone="resnet50")
    >>> model = build_deeplabv3plus(input_shape=(256, 256, 3), classes=1, output_stride=8,
    ...                             atrous_rates=[4, 8, 12])
"""
from __future__ import annotations

import keras
from keras import layers, ops

from ..config import DEFAULT_ATROUS_RATES, check_atrous_rates
from ..errors import TfsegError
from .backbones import backbone_label, build_encoder, check_backbone
from .blocks import (BN_MOMENTUM, BilinearUpsample2x, SegmentationModel, check_decoder_filters, check_input_shape,
                     conv_bn_relu, output_head, reject_options)


def build_deeplabv3plus(input_shape=(None, None, 3), classes: int = 1, backbone: str = "resnet50",
                        encoder_weights: str = "", encoder_freeze: bool = False, decoder_filters=(),
                        batch_norm: bool = True, dropout: float = 0.1, activation: str = "auto", name: str = "",
                        **options) -> keras.Model:
    """DeepLabV3+. ``decoder_filters``: [aspp_filters, decoder_filters, low_level_filters]
    (default [256, 256, 48]; another number of entries is refused). ``options``: ``output_stride`` (the
    integer 16, default, or 8), ``atrous_rates``
    (one or more positive integers, one 3x3 branch each; default [6, 12, 18] at output stride 16, [12, 24, 36] at 8),
    ``input_scale``. ``dropout``: after the ASPP projection. With a static input size, atrous
    rates must be smaller than the feature map at the output stride. Fields of other
    architectures (depth, filters, upsampling, ...) are ignored."""
    backbone = backbone or "resnet50"
    output_stride = options.pop("output_stride", 16)
    rates = options.pop("atrous_rates", None)
    input_scale = options.pop("input_scale", None)
    reject_options(options, "deeplabv3plus", ignored={"depth", "filters", "dropout_position", "upsampling", "stem"})
    if isinstance(output_stride, bool) or not isinstance(output_stride, int) or output_stride not in (8, 16):
        kind = "" if isinstance(output_stride, int) else f" (a {type(output_stride).__name__}; write the integer)"
        raise TfsegError(f"model.options.output_stride: expected 8 or 16, got {output_stride!r}{kind}")
    rates = tuple(DEFAULT_ATROUS_RATES[output_stride] if rates is None else rates)
    tile = min((int(s) for s in input_shape[:2] if s is not None), default=None)
    check_atrous_rates(rates, output_stride, tile, "input_shape")
    hub = check_backbone(backbone, hub=True) is None
    check_input_shape(input_shape, output_stride, f"deeplabv3plus with backbone {backbone!r} at output stride "
                      f"{output_stride}")
    aspp_filters, dec_filters, low_filters = check_decoder_filters(
        decoder_filters, (3,), "deeplabv3plus", "[aspp_filters, decoder_filters, low_level_filters]") or (256, 256, 48)
    inputs = keras.Input(shape=input_shape, name="image")
    if hub:  # keras-hub backbones are not dilated: ASPP on the pyramid level at the output stride
        features, _ = build_encoder(backbone, inputs, encoder_weights, encoder_freeze,
                                    input_scale, strides=(4, output_stride))
        high = features[output_stride]
    else:
        features, _ = build_encoder(backbone, inputs, encoder_weights, encoder_freeze, input_scale, strides=(4, 32),
                                    output_stride=output_stride)
        high = features[32]
    x = aspp(high, rates, aspp_filters, batch_norm, dropout)
    for step in range((output_stride // 4).bit_length() - 1):  # x4 (stride 16) or x2 (stride 8)
        x = BilinearUpsample2x(name=f"aspp_up{step}")(x)
    low = conv_bn_relu(features[4], low_filters, 1, batch_norm, name="decoder_low")
    x = layers.Concatenate(name="decoder_concat")([x, low])
    x = conv_bn_relu(x, dec_filters, 3, batch_norm, name="decoder_a")
    x = conv_bn_relu(x, dec_filters, 3, batch_norm, name="decoder_b")
    outputs = output_head(x, classes, activation, upsample=4)
    return SegmentationModel(inputs, outputs, name=name or f"deeplabv3plus_{backbone_label(backbone)}",
                             tfseg_multiple=output_stride)


def aspp(x, rates, filters: int = 256, batch_norm: bool = True, dropout: float = 0.0, name: str = "aspp"):
    """Atrous Spatial Pyramid Pooling: a 1x1 branch, one 3x3 branch per rate, an image-pooling
    branch broadcast back over the map; concatenated and projected by a 1x1 convolution."""
    branches = [conv_bn_relu(x, filters, 1, batch_norm, name=f"{name}_1x1")]
    for rate in rates:
        y = layers.Conv2D(filters, 3, padding="same", dilation_rate=int(rate), use_bias=not batch_norm,
                          name=f"{name}_rate{rate}_conv")(x)
        if batch_norm:
            y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_rate{rate}_bn")(y)
        branches.append(layers.Activation("relu", name=f"{name}_rate{rate}_relu")(y))
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    pooled = conv_bn_relu(pooled, filters, 1, batch_norm, name=f"{name}_pool_proj")
    branches.append(BroadcastTo(name=f"{name}_pool_broadcast")([pooled, x]))
    y = layers.Concatenate(name=f"{name}_concat")(branches)
    y = conv_bn_relu(y, filters, 1, batch_norm, name=f"{name}_proj")
    if dropout:
        y = layers.Dropout(dropout, name=f"{name}_drop")(y)
    return y


@keras.saving.register_keras_serializable(package="tfseg")
class BroadcastTo(layers.Layer):
    """Broadcast a (B, 1, 1, C) tensor over the height and width of a reference (B, H, W, *)
    tensor (traces with unknown H/W, unlike a fixed-size UpSampling2D)."""

    def call(self, inputs):
        pooled, like = inputs
        shape = ops.shape(like)
        return ops.broadcast_to(pooled, (shape[0], shape[1], shape[2], pooled.shape[-1]))

    def compute_output_shape(self, input_shapes):
        pooled, like = input_shapes
        return (like[0], like[1], like[2], pooled[-1])
