"""Plain UNet in pure Keras 3 (keras.layers / keras.ops only: runs on TF and JAX backends).

Example:
    >>> model = build_unet(input_shape=(256, 256, 4), classes=1, depth=4, filters=16)
"""
from __future__ import annotations

import keras
from keras import layers

from .blocks import BilinearUpsample2x, conv_block, output_head


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
    name: str = "unet",
) -> keras.Model:
    """UNet with ``depth`` down/up steps; filters double per step from ``filters``.

    ``dropout_position``: where dropout is applied (``bottleneck``, ``encoder``, ``decoder`` or
    ``all``). ``upsampling``: ``bilinear``/``nearest`` (UpSampling2D + conv) or ``transpose``
    (Conv2DTranspose). The head is float32 whatever the mixed-precision policy.
    """
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
        else:
            x = layers.UpSampling2D(2, interpolation="nearest", name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = conv_block(x, width, batch_norm, dec_drop, name=f"dec{level}")
    outputs = output_head(x, classes, activation)
    return keras.Model(inputs, outputs, name=name)
