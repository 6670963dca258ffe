"""keras-hub image backbones as encoders: ``model.backbone: hub:<local preset directory>``.

The preset is loaded with ``keras_hub.models.Backbone.from_preset`` from a local directory only
(a directory written by ``backbone.save_to_preset(DIR)``, or a downloaded Kaggle / Hugging Face
preset); nothing is downloaded at run time. Its feature pyramid (``pyramid_outputs``) gives the
encoder features by stride:

* CNNs (ResNet, EfficientNet, CSPNet, DenseNet, ...) and MiT (SegFormer's encoder): the pyramid
  levels as they are, keyed by their measured stride (4 ... 32);
* ViTs (DINOv2, DINOv3): the last level's patch tokens (class / register tokens dropped) as a
  grid, resized to stride 16, then a simple multi-scale adapter (ViTDet's simple feature
  pyramid): two / one x2 transposed convolutions for strides 4 / 8, the grid for 16, a max
  pooling for 32. These backbones have a fixed input size (their ``image_shape``).

Band count != the preset's: the backbone is rebuilt for N bands and the weights copied over with
the first convolution / patch embedding adapted as for the built-in encoders
(:func:`tfseg.models.backbones.adapt_first_conv`).

Install: ``pip install "tfseg[hub]"``.

Example:
    >>> inputs = keras.Input((None, None, 4))
    >>> features, encoder = build_hub_encoder("hub:/models/resnet_50_imagenet", inputs)  # {4: ..., 32: ...}
"""
from __future__ import annotations

from pathlib import Path

import keras
from keras import layers, ops

from ..errors import TfsegError

HUB_PREFIX = "hub:"
_PROBE = 256  # input size at which the strides of dynamic-size pyramids are measured


def is_hub(backbone) -> bool:
    return isinstance(backbone, str) and backbone.startswith(HUB_PREFIX)


def import_keras_hub():
    """Import keras_hub, or raise an ImportError saying how to install it."""
    try:
        import keras_hub  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise ImportError("model.backbone='hub:...' needs the optional package keras-hub: "
                          "pip install keras-hub (or pip install 'tfseg[hub]')") from exc
    return keras_hub


def preset_directory(backbone: str) -> Path:
    """The local preset directory of ``hub:<dir>``, or a FileNotFoundError saying where to put it."""
    preset = backbone[len(HUB_PREFIX):]
    path = Path(preset).expanduser()
    if not preset or not path.is_dir():
        raise FileNotFoundError(
            f"model.backbone={backbone!r}: {preset!r} is not a local keras-hub preset directory, and tfseg does not "
            f"download presets. On a machine with network access run "
            f"keras_hub.models.Backbone.from_preset({Path(preset).name or 'PRESET'!r}).save_to_preset('DIR') (or "
            f"download the preset from Kaggle / Hugging Face), copy DIR here and set model.backbone: hub:DIR")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model.backbone={backbone!r}: {path} has no config.json, so it is not a keras-hub "
                                f"preset directory (write one with backbone.save_to_preset(DIR))")
    return path


def fixed_input_size(backbone) -> "tuple[int, int] | None":
    """(H, W) of a ``hub:<dir>`` backbone whose preset has a fixed input size (ViTs such as
    DINOv2: position embeddings), read from the preset's ``config.json``; None for dynamic-size
    backbones and for anything that is not a hub backbone."""
    import json

    if not is_hub(backbone):
        return None
    config = json.loads((preset_directory(backbone) / "config.json").read_text()).get("config", {})
    shape = config.get("image_shape") or [None, None]
    return None if shape[0] is None or shape[1] is None else (int(shape[0]), int(shape[1]))


def load_hub_backbone(backbone: str, bands: int, image_size=None):
    """The keras-hub backbone of ``hub:<dir>`` for ``bands`` input bands (and, for fixed-size
    backbones, ``image_size`` (H, W) when given), in the current dtype policy."""
    from .backbones import copy_adapted_weights

    path = preset_directory(backbone)
    keras_hub = import_keras_hub()
    model = keras_hub.models.Backbone.from_preset(str(path), dtype=keras.config.dtype_policy())
    shape = tuple(model.get_config().get("image_shape") or model.inputs[0].shape[1:])
    source_bands = int(shape[-1])
    wanted = (*(image_size if image_size and shape[0] is not None else shape[:2]), bands)
    if tuple(wanted) != shape:
        config = {**model.get_config(), "image_shape": tuple(wanted)}
        adapted = model.__class__.from_config(config)
        copy_adapted_weights(model, adapted, source_bands, bands, f"model.backbone={backbone!r}")
        model = adapted
    return model


def build_hub_encoder(backbone: str, inputs, encoder_freeze: bool = False, input_scale=None,
                      strides=(2, 4, 8, 16, 32), required=(4, 8, 16, 32)):
    """Apply the keras-hub backbone to ``inputs``; returns ``({stride: feature}, encoder_model)``
    with the requested ``strides`` the pyramid has (``required`` ones must be there)."""
    bands = int(inputs.shape[-1])
    size = tuple(inputs.shape[1:3])
    model = load_hub_backbone(backbone, bands, size if None not in size else None)
    kind = type(model).__name__
    pyramid = dict(getattr(model, "pyramid_outputs", None) or {})
    if not pyramid:
        raise TfsegError(
            f"model.backbone={backbone!r}: the keras-hub {kind} exposes no feature pyramid (pyramid_outputs is "
            f"empty; it exposes only its output {_shapes(model.outputs)}); use a preset of a keras-hub "
            f"FeaturePyramidBackbone (ResNet, EfficientNet, CSPNet, DenseNet, MiT, DINOv2, DINOv3)")
    image_shape = tuple(model.inputs[0].shape[1:3])  # (DINOv2's model.input is a dict)
    fixed = image_shape[0] is not None
    if fixed and image_shape != size:
        raise TfsegError(
            f"model.backbone={backbone!r}: the keras-hub {kind} has a fixed input size "
            f"{image_shape} in its preset, the model input is {size}; build the model with a static input_shape "
            f"(tile, tile, {bands}) where tile is the tile size, a multiple of 32 (the position embeddings are "
            f"interpolated to it)")
    levels = list(pyramid.values())
    x = inputs
    if input_scale is not None:
        scale = (float(input_scale), 0.0) if isinstance(input_scale, (int, float)) else tuple(input_scale)
        x = layers.Rescaling(float(scale[0]), float(scale[1]), name="encoder_input_scale")(x)
    name = f"encoder_hub_{kind.lower()}"
    if len(levels[-1].shape) == 3:  # ViT: token sequences; the adapter trains even when the encoder is frozen
        encoder = keras.Model(model.inputs, levels[-1], name=name)
        features = _vit_pyramid(model, encoder(x), kind, backbone)
        available = sorted(features)
    else:
        probe = (1, *(size if fixed else (_PROBE, _PROBE)), bands)
        spec = keras.Model(model.inputs, levels).compute_output_spec(keras.KerasTensor(probe))
        taps = {}
        for level, out in zip(levels, spec if isinstance(spec, (list, tuple)) else [spec]):
            taps.setdefault(probe[1] // int(out.shape[1]), level)
        available = sorted(taps)
        wanted = [s for s in strides if s in taps]
        encoder = keras.Model(model.inputs, [taps[s] for s in wanted], name=name)
        outputs = encoder(x)
        features = dict(zip(wanted, outputs if isinstance(outputs, (list, tuple)) else [outputs]))
    missing = [s for s in required if s not in features]
    if missing:
        raise TfsegError(
            f"model.backbone={backbone!r}: the keras-hub {kind}'s feature pyramid has strides {available} "
            f"({sorted(pyramid)}), this architecture needs strides {list(required)} (missing {missing})")
    if encoder_freeze:
        encoder.trainable = False
    return {s: f for s, f in features.items() if s in strides}, encoder


def _vit_pyramid(model, tokens, kind: str, backbone: str) -> dict:
    """Strides 4-32 from the patch tokens of a ViT (ViTDet's simple feature pyramid)."""
    patch = model.get_config().get("patch_size")
    height, width = (int(s) for s in model.inputs[0].shape[1:3])
    if not patch or height % 32 or width % 32:
        raise TfsegError(f"model.backbone={backbone!r}: the keras-hub {kind} needs a patch_size and an input size "
                         f"that is a multiple of 32 for the multi-scale adapter, got patch_size={patch!r}, input "
                         f"{(height, width)}")
    patch = patch if isinstance(patch, int) else int(patch[0])
    grid = (height // patch, width // patch)
    channels = int(tokens.shape[-1])
    prefix = int(tokens.shape[1]) - grid[0] * grid[1]
    x = TokensToGrid(prefix, grid, name="vit_tokens_to_grid")(tokens)
    x = layers.Resizing(height // 16, width // 16, interpolation="bilinear", name="vit_to_stride16")(x)
    up8 = layers.Conv2DTranspose(channels // 2, 2, strides=2, name="vit_up8")(x)
    up4 = layers.Activation("gelu", name="vit_up4_gelu")(layers.LayerNormalization(name="vit_up4_norm")(
        layers.Conv2DTranspose(channels // 2, 2, strides=2, name="vit_up4_a")(x)))
    up4 = layers.Conv2DTranspose(channels // 4, 2, strides=2, name="vit_up4_b")(up4)
    down32 = layers.MaxPooling2D(2, name="vit_down32")(x)
    return {4: up4, 8: up8, 16: x, 32: down32}


@keras.saving.register_keras_serializable(package="tfseg")
class TokensToGrid(layers.Layer):
    """(B, prefix + H*W, C) ViT tokens -> (B, H, W, C) patch grid (class / register tokens dropped)."""

    def __init__(self, prefix: int, grid, **kwargs):
        super().__init__(**kwargs)
        self.prefix, self.grid = int(prefix), tuple(int(g) for g in grid)

    def call(self, tokens):
        return ops.reshape(tokens[:, self.prefix:], (-1, *self.grid, tokens.shape[-1]))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.grid, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "prefix": self.prefix, "grid": list(self.grid)}


def _shapes(tensors) -> str:
    return ", ".join(str(tuple(t.shape)) for t in tensors)
