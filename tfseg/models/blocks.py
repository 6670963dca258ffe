"""Building blocks shared by the architectures (pure Keras 3)."""
from __future__ import annotations

import keras
from keras import layers, ops


def conv_block(x, filters: int, batch_norm: bool = True, dropout: float = 0.0, name: str = "block"):
    """Two 3x3 conv -> (BN) -> ReLU, with optional dropout between them."""
    for i in range(2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm, name=f"{name}_conv{i}")(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
        if i == 0 and dropout:
            x = layers.Dropout(dropout, name=f"{name}_drop")(x)
    return x


def head_activation(classes: int, activation: str = "auto") -> str:
    """``auto``: sigmoid for one output channel, softmax for several."""
    if activation == "auto":
        return "sigmoid" if classes == 1 else "softmax"
    return activation


def output_head(x, classes: int, activation: str = "auto", name: str = "head"):
    """1x1 conv to ``classes`` logits, then the final activation in float32."""
    x = layers.Conv2D(classes, 1, name=f"{name}_logits")(x)
    return layers.Activation(head_activation(classes, activation), dtype="float32", name=f"{name}_{'probs'}")(x)


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
