"""UNet++ (Zhou et al. 2018): nested, densely connected skip pathways between the encoder and the
decoder, optional deep supervision. Pure Keras 3.

Node ``X[i][j]`` (level ``i``, column ``j``) = conv_block(concat(X[i][0..j-1], up(X[i+1][j-1]))).
Plain (no ``backbone``): ``depth`` levels of a UNet encoder (``filters`` doubling). With a
``backbone`` (see :data:`tfseg.models.backbones.BACKBONES`): the encoder's stride 2/4/8/16/32
features, node widths from ``decoder_filters`` as in the UNet (strides 16, 8, 4, 2 and an optional
fifth full-resolution block).

Deep supervision (``options.deep_supervision``): a head on every top node ``X[0][1..depth]``; the
model outputs the mean of their logits through the final activation, in training and inference
alike, so the loss reaches every head and the exported model has one output map.

Example:
    >>> model = build_unetpp(input_shape=(256, 256, 4), classes=1, depth=4, filters=16)
    >>> model = build_unetpp(input_shape=(256, 256, 8), classes=5, backbone="resnet34",
    ...                      deep_supervision=True)
"""
from __future__ import annotations

import keras
from keras import layers

from ..errors import TfsegError
from .backbones import build_encoder, check_backbone
from .blocks import (SegmentationModel, check_input_shape, conv_block, final_activation, reject_options,
                     upsample2x)
from .unet import DEFAULT_DECODER_FILTERS


def build_unetpp(input_shape=(None, None, 3), classes: int = 1, depth: int = 4, filters: int = 16,
                 batch_norm: bool = True, dropout: float = 0.0, upsampling: str = "bilinear",
                 activation: str = "auto", backbone: str = "", encoder_weights: str = "",
                 encoder_freeze: bool = False, decoder_filters=(), name: str = "", **options) -> keras.Model:
    """UNet++. ``options``: ``deep_supervision`` (bool, default false), ``input_scale`` (backbone
    encoders). ``dropout``: spatial dropout on the deepest encoder feature. Fields of other
    architectures (dropout_position, stem) are ignored."""
    deep_supervision = options.pop("deep_supervision", False)
    input_scale = options.pop("input_scale", None)
    reject_options(options, "unetpp", ignored={"dropout_position", "stem"})
    if not isinstance(deep_supervision, bool):
        raise TfsegError(f"model.options.deep_supervision: expected true or false, got {deep_supervision!r}")
    inputs = keras.Input(shape=input_shape, name="image")
    if backbone:
        check_backbone(backbone, architecture="unetpp")
        check_input_shape(input_shape, 32, f"unetpp with backbone {backbone!r}")
        decoder_filters = tuple(decoder_filters or DEFAULT_DECODER_FILTERS)
        if len(decoder_filters) not in (4, 5):
            raise TfsegError(f"model.decoder_filters: expected 4 or 5 decoder widths (strides 16, 8, 4, 2 and an "
                             f"optional full-resolution block), got {list(decoder_filters)}")
        features, _ = build_encoder(backbone, inputs, encoder_weights, encoder_freeze, input_scale)
        encoder = [features[s] for s in (2, 4, 8, 16, 32)]
        widths = list(reversed(decoder_filters[:4]))  # level 0 (stride 2) .. level 3 (stride 16)
        final = decoder_filters[4] if len(decoder_filters) == 5 else 0
        multiple = 32
    else:
        for key, value in (("model.options.input_scale", input_scale), ("model.encoder_weights", encoder_weights or None),
                           ("model.decoder_filters", list(decoder_filters) or None)):
            if value is not None:
                raise TfsegError(f"{key}: only applies to unetpp with a model.backbone encoder, got {value!r}")
        check_input_shape(input_shape, 2**depth, f"a plain UNet++ of depth {depth}")
        encoder, x = [], inputs
        for level in range(depth + 1):
            if level:
                x = layers.MaxPooling2D(2, name=f"x{level}_0_pool")(x)
            x = conv_block(x, filters * 2**level, batch_norm, 0.0, name=f"x{level}_0")
            encoder.append(x)
        widths = [filters * 2**level for level in range(depth)]
        final, multiple = 0, 2**depth
    if dropout:
        encoder[-1] = layers.SpatialDropout2D(dropout, name="bottleneck_drop")(encoder[-1])
    nodes = nested_decoder(encoder, widths, batch_norm, upsampling)
    top = nodes[0][1:] if deep_supervision else nodes[0][-1:]
    logits = []
    for j, x in enumerate(top, start=len(nodes[0]) - len(top)):
        if backbone:  # level 0 is at stride 2
            x = upsample2x(x, upsampling, final or widths[0], batch_norm, name=f"head{j}_up")
            if final:
                x = conv_block(x, final, batch_norm, 0.0, name=f"head{j}_block")
        logits.append(layers.Conv2D(classes, 3 if backbone else 1, padding="same", name=f"head{j}_logits")(x))
    x = logits[0] if len(logits) == 1 else layers.Average(name="deep_supervision_mean")(logits)
    outputs = final_activation(x, classes, activation)
    return SegmentationModel(inputs, outputs, name=name or ("unetpp_" + backbone if backbone else "unetpp"),
                             tfseg_multiple=multiple)


def nested_decoder(encoder: list, widths: list, batch_norm: bool = True, upsampling: str = "bilinear") -> list:
    """The UNet++ grid over encoder features ``encoder[0..L]`` (finest first, each half the size
    of the previous): ``nodes[i][j]`` for ``i + j <= L - 1`` plus the encoder column
    ``nodes[i][0]``; ``widths[i]``: the width of level ``i``'s nested nodes."""
    levels = len(encoder) - 1
    nodes = [[encoder[i]] for i in range(levels + 1)]
    for j in range(1, levels + 1):
        for i in range(levels + 1 - j):
            up = upsample2x(nodes[i + 1][j - 1], upsampling, widths[i], batch_norm, name=f"x{i}_{j}_up")
            x = layers.Concatenate(name=f"x{i}_{j}_concat")(nodes[i][:j] + [up])
            nodes[i].append(conv_block(x, widths[i], batch_norm, 0.0, name=f"x{i}_{j}"))
    return nodes
