"""UNet in pure Keras 3 (keras.layers / keras.ops only: runs on TF and JAX backends).

Plain UNet (no ``backbone``) as practitioners write it, or a UNet decoder on a ResNet /
EfficientNet / VGG16 encoder (``backbone``) with skip connections at strides 2/4/8/16/32.

Example:
    >>> model = build_unet(input_shape=(256, 256, 4), classes=1, depth=4, filters=16)
    >>> model = build_unet(input_shape=(256, 256, 8), classes=5, backbone="resnet34")
"""
from __future__ import annotations

import keras
from keras import layers

from ..errors import TfsegError
from .backbones import backbone_label, build_encoder, check_backbone
from .blocks import (BilinearUpsample2x, SegmentationModel, check_decoder_filters, check_input_shape, conv_block,
                     output_head, reject_options, residual_double_conv, upsample2x)

DEFAULT_DECODER_FILTERS = (256, 128, 64, 32, 16)


def build_unet(
    input_shape=(None, None, 3),
    classes: int = 1,
    depth: int = 4,
    filters: int = 16,
    batch_norm: bool = True,
    dropout: float = 0.0,
    dropout_position: str = "bottleneck",
    upsampling: str = "bilinear",
    activation: str = "auto",
    backbone: str = "",
    encoder_weights: str = "",
    encoder_freeze: bool = False,
    decoder_filters=(),
    stem: str = "plain",
    name: str = "",
    **options,
) -> keras.Model:
    """UNet. Without ``backbone``: ``depth`` down/up steps, filters doubling from ``filters``.

    ``dropout_position``: where dropout is applied (``bottleneck``, ``encoder``, ``decoder`` or
    ``all``). ``upsampling``: ``bilinear``/``nearest`` (upsample + conv) or ``transpose``
    (Conv2DTranspose). The head is float32 whatever the mixed-precision policy.

    Without ``backbone``, the encoder fields (``encoder_weights``, ``encoder_freeze``,
    ``decoder_filters``) and any ``options`` are refused, naming the key.

    With ``backbone`` (see :data:`tfseg.models.backbones.BACKBONES`, or ``hub:<preset dir>``, see
    :mod:`tfseg.models.hub`), see :func:`build_backbone_unet`.
    """
    if backbone:
        return build_backbone_unet(
            input_shape, classes, backbone, encoder_weights, encoder_freeze, decoder_filters, batch_norm,
            dropout, upsampling, activation, stem, name or f"unet_{backbone_label(backbone)}", **options)
    for key, value in (("model.options.input_scale", options.pop("input_scale", None)),
                       ("model.encoder_weights", encoder_weights or None),
                       ("model.encoder_freeze", encoder_freeze or None),
                       ("model.decoder_filters", list(decoder_filters) or None)):
        if value is not None:
            raise TfsegError(f"{key}: only applies to unet with a model.backbone encoder (a plain UNet is sized by "
                             f"model.depth and model.filters), got {value!r}")
    reject_options(options, "unet")
    check_input_shape(input_shape, 2**depth, f"a plain UNet of depth {depth}")
    if stem != "plain":
        raise TfsegError("model.stem: 'residual' needs a backbone (the Res50-UNet stem), got no model.backbone")
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    skips = []
    enc_drop = dropout if dropout_position in ("encoder", "all") else 0.0
    dec_drop = dropout if dropout_position in ("decoder", "all") else 0.0
    mid_drop = dropout if dropout_position in ("bottleneck", "encoder", "decoder", "all") else 0.0
    for level in range(depth):
        x = conv_block(x, filters * 2**level, batch_norm, enc_drop, name=f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = conv_block(x, filters * 2**depth, batch_norm, mid_drop, name="bottleneck")
    for level in reversed(range(depth)):
        width = filters * 2**level
        if upsampling == "transpose":
            x = layers.Conv2DTranspose(width, 2, strides=2, padding="same", name=f"dec{level}_up")(x)
        elif upsampling == "bilinear":
            x = BilinearUpsample2x(name=f"dec{level}_up")(x)
        elif upsampling == "nearest":
            x = layers.UpSampling2D(2, interpolation="nearest", name=f"dec{level}_up")(x)
        else:
            raise TfsegError(f"model.upsampling: expected one of ['bilinear', 'nearest', 'transpose'], "
                             f"got {upsampling!r}")
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = conv_block(x, width, batch_norm, dec_drop, name=f"dec{level}")
    outputs = output_head(x, classes, activation)
    return SegmentationModel(inputs, outputs, name=name or "unet", tfseg_multiple=2**depth)


def build_backbone_unet(input_shape=(None, None, 3), classes: int = 1, backbone: str = "resnet34",
                        encoder_weights: str = "", encoder_freeze: bool = False, decoder_filters=(),
                        batch_norm: bool = True, dropout: float = 0.0, upsampling: str = "bilinear",
                        activation: str = "auto", stem: str = "plain", name: str = "", **options):
    """UNet decoder on a pretrained-style encoder, as in segmentation_models' ``Unet``.

    ``decoder_filters`` (default 256, 128, 64, 32, 16): 5 entries = 5 decoder blocks (skips at
    strides 16, 8, 4, 2, then full resolution); 4 entries = 4 blocks ending at stride 2, followed by
    a bilinear x2 of the logits. ``stem='residual'``: a residual double convolution on the raw
    N-band input provides a full-resolution skip for the fifth block (Res50-UNet of published Dstl
    solutions); it needs 5 ``decoder_filters`` (refused with 4: there is no full-resolution block to
    feed). Any other length of ``decoder_filters`` is refused. ``options``: ``input_scale`` (float
    or [scale, offset]) overrides the encoder's input mapping.
    """
    check_backbone(backbone, hub=True)
    input_scale = options.pop("input_scale", None)
    reject_options(options, "unet")
    check_input_shape(input_shape, 32, f"unet with backbone {backbone!r}")
    decoder_filters = check_decoder_filters(decoder_filters, (4, 5), f"unet with backbone {backbone!r}",
                                            "decoder block widths at strides 16, 8, 4, 2 and an optional "
                                            "full-resolution block") or DEFAULT_DECODER_FILTERS
    if stem not in ("plain", "residual"):
        raise TfsegError(f"model.stem: expected 'plain' or 'residual', got {stem!r}")
    if stem == "residual" and len(decoder_filters) != 5:
        raise TfsegError(f"model.stem: 'residual' is the skip of the fifth, full-resolution decoder block, but "
                         f"model.decoder_filters {list(decoder_filters)} has 4 entries (the decoder ends at stride 2): "
                         f"give 5 widths, or model.stem: plain")
    inputs = keras.Input(shape=input_shape, name="image")
    features, _ = build_encoder(backbone, inputs, encoder_weights, encoder_freeze, input_scale)
    skips = [features.get(s) for s in (16, 8, 4, 2)]  # keras-hub pyramids may start at stride 4
    if stem == "residual":
        skips.append(residual_double_conv(inputs, decoder_filters[-1], batch_norm, name="stem"))
    x = features[32]
    for index, width in enumerate(decoder_filters):
        x = upsample2x(x, upsampling, width, batch_norm, name=f"decoder{index}_up")
        if index < len(skips) and skips[index] is not None:
            x = layers.Concatenate(name=f"decoder{index}_concat")([x, skips[index]])
        if dropout and index == 0:
            x = layers.SpatialDropout2D(dropout, name="decoder_drop")(x)
        x = conv_block(x, width, batch_norm, 0.0, name=f"decoder{index}")
    # 3x3 head as in segmentation-models (Keras) and segmentation_models_pytorch
    outputs = output_head(x, classes, activation, upsample=2 if len(decoder_filters) == 4 else 1, kernel_size=3)
    return SegmentationModel(inputs, outputs, name=name or f"unet_{backbone_label(backbone)}", tfseg_multiple=32)


