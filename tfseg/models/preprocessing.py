"""The model's own preprocessing: raw pixels in, normalized float32 out (pure Keras 3).

Every model built from a config starts with :class:`Preprocess` (cast to float32, optional
per-band clip, ``(x - offset) / scale``, no-data pixels -> 0) and, when the config asks for
photometric augmentation, :class:`PhotometricAugment` (training only). Training, evaluation,
prediction, export and serving therefore run this one implementation on the device, and the
data pipeline ships pixels in their source dtype.

No-data rule: a pixel whose bands all equal ``nodata``, or that has a NaN in any band, is no
data; after normalization all its bands are 0 (the value the old host-side pipeline wrote).

Example:
    >>> pre = Preprocess(offset=[100.0, 120.0], scale=[20.0, 25.0], nodata=0.0)
    >>> model = with_preprocessing(core, pre)          # core: the architecture, float inputs
"""
from __future__ import annotations

from typing import Optional, Sequence

import keras
from keras import layers, ops

from ..errors import TfsegError
from .blocks import SegmentationModel


@keras.saving.register_keras_serializable(package="tfseg")
class Preprocess(layers.Layer):
    """Raw [N, H, W, C] pixels (any real dtype) -> float32 ``(clip(x) - offset) / scale`` per
    band, 0 on no-data pixels. ``clip_low``/``clip_high``: per-band clip bounds (percentile
    normalization) or ``None``. Call with ``return_valid=True`` to also get the [N, H, W, 1]
    float32 valid-pixel mask.

    Example:
        >>> Preprocess(offset=[0.5], scale=[2.0], nodata=None)(np.array([[[[2.5]]]]))  # -> 1.0
    """

    def __init__(self, offset: Sequence[float], scale: Sequence[float], clip_low: Optional[Sequence[float]] = None,
                 clip_high: Optional[Sequence[float]] = None, nodata: Optional[float] = None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # the arithmetic stays float32 under mixed precision
        super().__init__(**kwargs)
        self.offset = [float(v) for v in offset]
        self.scale = [float(v) for v in scale]
        if len(self.offset) != len(self.scale):
            raise TfsegError(f"Preprocess: offset has {len(self.offset)} bands but scale {len(self.scale)}")
        for index, value in enumerate(self.scale):
            if not value > 0:
                raise TfsegError(f"Preprocess: band {index + 1} has scale {value} (a constant band); "
                                 "expected a positive scale for every band")
        if (clip_low is None) != (clip_high is None):
            raise TfsegError("Preprocess: give both clip_low and clip_high, or neither")
        self.clip_low = None if clip_low is None else [float(v) for v in clip_low]
        self.clip_high = None if clip_high is None else [float(v) for v in clip_high]
        self.nodata = None if nodata is None else float(nodata)
        self.supports_masking = False

    @property
    def num_bands(self) -> int:
        return len(self.offset)

    def build(self, input_shape):
        bands = input_shape[-1]
        if bands is not None and int(bands) != self.num_bands:
            raise TfsegError(f"Preprocess: the input has {bands} band(s) but the statistics have {self.num_bands}")

    def call(self, inputs, return_valid: bool = False):
        x = ops.cast(inputs, "float32")
        invalid = ops.any(ops.isnan(x), axis=-1, keepdims=True)
        if self.nodata is not None:
            invalid = ops.logical_or(invalid, ops.all(ops.equal(x, self.nodata), axis=-1, keepdims=True))
        if self.clip_low is not None:
            x = ops.clip(x, ops.convert_to_tensor(self.clip_low), ops.convert_to_tensor(self.clip_high))
        inverse = ops.convert_to_tensor([1.0 / s for s in self.scale], "float32")
        x = (x - ops.convert_to_tensor(self.offset, "float32")) * inverse
        x = ops.where(invalid, ops.zeros_like(x), x)
        if return_valid:
            return x, ops.cast(ops.logical_not(invalid), "float32")
        return x

    def compute_output_shape(self, input_shape, return_valid: bool = False):
        if return_valid:
            return tuple(input_shape), (*tuple(input_shape)[:-1], 1)
        return tuple(input_shape)

    def compute_output_spec(self, inputs, return_valid: bool = False):
        out = keras.KerasTensor(inputs.shape, "float32")
        if return_valid:
            return out, keras.KerasTensor((*inputs.shape[:-1], 1), "float32")
        return out

    def get_config(self):
        return {**super().get_config(), "offset": self.offset, "scale": self.scale, "clip_low": self.clip_low,
                "clip_high": self.clip_high, "nodata": self.nodata}

    @classmethod
    def from_normalization(cls, norm, nodata: Optional[float] = None, name: str = "preprocess") -> "Preprocess":
        """The layer for a :class:`tfseg.data.raster.Normalization` (duck-typed: ``offset``,
        ``scale``, ``clip``) and the raw no-data value."""
        clip = norm.clip
        return cls(offset=[float(v) for v in norm.offset], scale=[float(v) for v in norm.scale],
                   clip_low=None if clip is None else [float(v) for v in clip[0]],
                   clip_high=None if clip is None else [float(v) for v in clip[1]], nodata=nodata, name=name)


@keras.saving.register_keras_serializable(package="tfseg")
class PhotometricAugment(layers.Layer):
    """Training-only per-sample, per-band brightness shift (uniform in ``[-brightness,
    brightness]``) and contrast gain (``1 + U[-contrast, contrast]``) on normalized pixels;
    no-data pixels stay 0. Called as ``layer([x, valid])``; an identity outside training.
    Seeded (``keras.random.SeedGenerator``), so runs with the same seed draw the same values.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, seed: Optional[int] = None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.brightness, self.contrast, self.seed = float(brightness), float(contrast), seed
        if self.brightness < 0 or self.contrast < 0:
            raise TfsegError(f"PhotometricAugment: brightness and contrast must be >= 0, got "
                             f"{self.brightness}, {self.contrast}")
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        x, valid = inputs
        if not training or not (self.brightness or self.contrast):
            return x
        shape = (ops.shape(x)[0], 1, 1, ops.shape(x)[-1])
        shift = keras.random.uniform(shape, -self.brightness, self.brightness, seed=self.seed_generator)
        gain = 1.0 + keras.random.uniform(shape, -self.contrast, self.contrast, seed=self.seed_generator)
        return (x * gain + shift) * valid

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        return {**super().get_config(), "brightness": self.brightness, "contrast": self.contrast, "seed": self.seed}


def with_preprocessing(core: keras.Model, preprocess: Preprocess, augment: Optional[PhotometricAugment] = None,
                       name: Optional[str] = None) -> SegmentationModel:
    """``core`` (any architecture taking normalized float inputs) behind ``preprocess`` (and,
    for training, ``augment``): a model that takes raw pixels. Keeps the size multiple."""
    bands = core.input_shape[-1]
    if bands is not None and int(bands) != preprocess.num_bands:
        raise TfsegError(f"the model takes {bands} band(s) but the normalization statistics have "
                         f"{preprocess.num_bands}")
    inputs = keras.Input(shape=tuple(core.input_shape[1:]), name="images")
    if augment is None:
        x = preprocess(inputs)
    else:
        x, valid = preprocess(inputs, return_valid=True)
        x = augment([x, valid])
    outputs = core(x)
    multiple = int(getattr(core, "tfseg_multiple", 0))  # 0: counted from the layers (export.model_multiple)
    return SegmentationModel(inputs, outputs, name=name or core.name, tfseg_multiple=multiple)


def find_preprocess(model: keras.Model) -> Optional[Preprocess]:
    """The model's :class:`Preprocess` layer (``None`` for a model without one)."""
    for layer in model.layers:
        if isinstance(layer, Preprocess):
            return layer
    return None
