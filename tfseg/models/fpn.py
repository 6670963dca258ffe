"""Feature Pyramid Network decoder (Kirillov et al. panoptic FPN head, as in segmentation_models'
``FPN``): 1x1 lateral convs, nearest x2 upsample + add top-down, 3x3 smoothing, a segmentation
head per level (P2-P5) upsampled to stride 4 and merged, then a bilinear x4 of the logits.

Example:
    >>> model = build_fpn(input_shape=(256, 256, 4), classes=6, backbone="efficientnetb0")
"""
from __future__ import annotations

import keras
from keras import layers

from ..errors import TfsegError
from .backbones import backbone_label, build_encoder, check_backbone
from .blocks import (SegmentationModel, check_decoder_filters, check_input_shape, conv_bn_relu, output_head,
                     reject_options)


def build_fpn(input_shape=(None, None, 3), classes: int = 1, backbone: str = "efficientnetb0",
              encoder_weights: str = "", encoder_freeze: bool = False, decoder_filters=(), batch_norm: bool = True,
              dropout: float = 0.2, activation: str = "auto", name: str = "", **options) -> keras.Model:
    """FPN. ``decoder_filters``: [pyramid_filters, segmentation_filters] (default [256, 128];
    another number of entries is refused).
    ``options``: ``aggregation`` (``concat`` default, or ``sum``), ``input_scale``. Other
    ModelConfig fields (depth, filters, upsampling, stem, ...) do not apply and are ignored."""
    backbone = backbone or "efficientnetb0"
    check_backbone(backbone, hub=True)
    input_scale = options.pop("input_scale", None)
    aggregation = options.pop("aggregation", "concat")
    reject_options(options, "fpn", ignored={"depth", "filters", "dropout_position", "upsampling", "stem"})
    if aggregation not in ("concat", "sum"):
        raise TfsegError(f"model.options.aggregation: expected 'concat' or 'sum', got {aggregation!r}")
    check_input_shape(input_shape, 32, f"fpn with backbone {backbone!r}")
    pyramid_filters, seg_filters = check_decoder_filters(decoder_filters, (2,), "fpn", "[pyramid_filters, "
                                                         "segmentation_filters]") or (256, 128)
    inputs = keras.Input(shape=input_shape, name="image")
    features, _ = build_encoder(backbone, inputs, encoder_weights, encoder_freeze, input_scale,
                                strides=(4, 8, 16, 32))
    pyramid = {}
    x = layers.Conv2D(pyramid_filters, 1, name="fpn_lateral32")(features[32])
    pyramid[32] = x
    for stride in (16, 8, 4):
        lateral = layers.Conv2D(pyramid_filters, 1, name=f"fpn_lateral{stride}")(features[stride])
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"fpn_up{stride}")(x)
        x = layers.Add(name=f"fpn_add{stride}")([x, lateral])
        pyramid[stride] = x
    heads = []
    for stride in (32, 16, 8, 4):
        p = layers.Conv2D(pyramid_filters, 3, padding="same", name=f"fpn_smooth{stride}")(pyramid[stride])
        p = conv_bn_relu(p, seg_filters, 3, batch_norm, name=f"seg{stride}_a")
        p = conv_bn_relu(p, seg_filters, 3, batch_norm, name=f"seg{stride}_b")
        if stride > 4:
            p = layers.UpSampling2D(stride // 4, interpolation="nearest", name=f"seg{stride}_up")(p)
        heads.append(p)
    x = (layers.Concatenate(name="fpn_merge") if aggregation == "concat" else layers.Add(name="fpn_merge"))(heads)
    if dropout:
        x = layers.SpatialDropout2D(dropout, name="fpn_drop")(x)
    x = conv_bn_relu(x, seg_filters, 3, batch_norm, name="fpn_final")
    outputs = output_head(x, classes, activation, upsample=4)
    return SegmentationModel(inputs, outputs, name=name or f"fpn_{backbone_label(backbone)}", tfseg_multiple=32)
