"""Model registry: ``build_model(name, ...)`` builds an architecture from its constructor arguments.

Architectures: ``unet`` (plain, or with ``backbone``), ``unetpp`` (UNet++), ``fcn8``, ``fpn``,
``deeplabv3plus``, ``sm`` (adapter over segmentation-models, imported lazily). Every model is a :class:`SegmentationModel` whose final
activation is float32 and whose ``get_config()["tfseg_multiple"]`` is the input-size multiple.

Example:
    >>> model = build_model("unet", input_shape=(256, 256, 4), classes=1, depth=3, filters=8)
    >>> model = build_model("fpn", input_shape=(256, 256, 8), classes=5, backbone="efficientnetb0")
"""
from __future__ import annotations

from .backbones import BACKBONES
from .blocks import SegmentationModel
from .deeplab import build_deeplabv3plus
from .fcn import build_fcn8
from .fpn import build_fpn
from .unet import build_unet
from .unetpp import build_unetpp


def _build_sm(**kwargs):
    from .sm_adapter import build_sm  # lazy: segmentation-models is optional

    return build_sm(**kwargs)


BUILDERS = {"unet": build_unet, "unetpp": build_unetpp, "fcn8": build_fcn8, "fpn": build_fpn,
            "deeplabv3plus": build_deeplabv3plus, "sm": _build_sm}


def build_model(name: str, **kwargs):
    """Build architecture ``name``; ``kwargs`` are ModelConfig field names plus ``model.options``."""
    if name not in BUILDERS:
        raise ValueError(f"model name {name!r} is not available; available: {sorted(BUILDERS)}")
    return BUILDERS[name](**kwargs)


__all__ = ["BACKBONES", "BUILDERS", "SegmentationModel", "build_model"]
