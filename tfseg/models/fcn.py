"""FCN-8s (Long et al.): skip fusion by addition from strides 8/16/32 and learned (transposed
convolution, bilinear-initialized) upsampling, on the classic VGG16 encoder or an EfficientNet /
ResNet encoder. Pure Keras 3.

Example:
    >>> model = build_fcn8(input_shape=(256, 256, 3), classes=6)                       # VGG16
    >>> model = build_fcn8(input_shape=(256, 256, 4), classes=1, backbone="efficientnetb0")
"""
from __future__ import annotations

import keras
from keras import layers

from .backbones import build_encoder, check_backbone
from .blocks import (BilinearKernel, SegmentationModel, check_decoder_filters, check_input_shape, final_activation,
                     reject_options)


def build_fcn8(input_shape=(None, None, 3), classes: int = 1, backbone: str = "vgg16", encoder_weights: str = "",
               encoder_freeze: bool = False, decoder_filters=(), dropout: float = 0.5, activation: str = "auto",
               name: str = "", **options) -> keras.Model:
    """FCN-8s. ``decoder_filters``: one entry, the width of the fully-convolutional fc6/fc7 layers
    (default 4096 with a 7x7 fc6 on VGG16 as in the paper, 1024 with 3x3 on other encoders; more
    entries are refused). Other ModelConfig fields (depth, filters, batch_norm, upsampling, stem,
    ...) do not apply and are ignored. ``options``: ``input_scale``."""
    backbone = backbone or "vgg16"
    check_backbone(backbone, architecture="fcn8")
    input_scale = options.pop("input_scale", None)
    reject_options(options, "fcn8", ignored={"depth", "filters", "batch_norm", "dropout_position", "upsampling", "stem"})
    check_input_shape(input_shape, 32, f"fcn8 with backbone {backbone!r}")
    classic = backbone == "vgg16"
    (fc_filters,) = check_decoder_filters(decoder_filters, (1,), "fcn8", "[fc6/fc7 width]") or (
        4096 if classic else 1024,)
    inputs = keras.Input(shape=input_shape, name="image")
    features, _ = build_encoder(backbone, inputs, encoder_weights, encoder_freeze, input_scale,
                                strides=(8, 16, 32), fcn=True)
    x = layers.Conv2D(fc_filters, 7 if classic else 3, padding="same", activation="relu", name="fc6")(features[32])
    if dropout:
        x = layers.Dropout(dropout, name="fc6_drop")(x)
    x = layers.Conv2D(fc_filters, 1, activation="relu", name="fc7")(x)
    if dropout:
        x = layers.Dropout(dropout, name="fc7_drop")(x)
    x = layers.Conv2D(classes, 1, name="score_fr")(x)
    x = _learned_upsample(x, classes, 2, "upscore2")
    pool4 = layers.Conv2D(classes, 1, kernel_initializer="zeros", name="score_pool4")(features[16])
    x = layers.Add(name="fuse_pool4")([x, pool4])
    x = _learned_upsample(x, classes, 2, "upscore_pool4")
    pool3 = layers.Conv2D(classes, 1, kernel_initializer="zeros", name="score_pool3")(features[8])
    x = layers.Add(name="fuse_pool3")([x, pool3])
    x = _learned_upsample(x, classes, 8, "upscore8")
    outputs = final_activation(x, classes, activation)
    return SegmentationModel(inputs, outputs, name=name or f"fcn8_{backbone}", tfseg_multiple=32)


def _learned_upsample(x, classes, factor, name):
    return layers.Conv2DTranspose(classes, 2 * factor, strides=factor, padding="same", use_bias=False,
                                  kernel_initializer=BilinearKernel(), name=name)(x)
