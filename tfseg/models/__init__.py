"""Model registry: ``build_model(name, ...)`` builds an architecture from its constructor arguments.

Architectures: ``unet`` (plain, or with ``backbone``), ``fcn8``, ``fpn``, ``sm`` (adapter over
segmentation-models, imported lazily). Every model is a :class:`SegmentationModel` whose final
activation is float32 and whose ``get_config()["tfseg_multiple"]`` is the input-size multiple.
With ``preprocessing`` (a :class:`Preprocess` layer) the architecture is wrapped behind it (and
``augment``, a training-only :class:`PhotometricAugment`): the model then takes raw pixels.

Example:
    >>> model = build_model("unet", input_shape=(256, 256, 4), classes=1, depth=3, filters=8)
    >>> model = build_model("fpn", input_shape=(256, 256, 8), classes=5, backbone="efficientnetb0")
"""
from __future__ import annotations

from .backbones import BACKBONES
from .blocks import SegmentationModel
from .fcn import build_fcn8
from .fpn import build_fpn
from .preprocessing import PhotometricAugment, Preprocess, find_preprocess, with_preprocessing
from .unet import build_unet


def _build_sm(**kwargs):
    from .sm_adapter import build_sm  # lazy: segmentation-models is optional

    return build_sm(**kwargs)


BUILDERS = {"unet": build_unet, "fcn8": build_fcn8, "fpn": build_fpn, "sm": _build_sm}


def build_model(name: str, preprocessing: Preprocess = None, augment: PhotometricAugment = None, **kwargs):
    """Build architecture ``name``; ``kwargs`` are ModelConfig field names plus ``model.options``.
    With ``preprocessing`` the result takes raw pixels (see the module docstring)."""
    if name not in BUILDERS:
        raise ValueError(f"model name {name!r} is not available; available: {sorted(BUILDERS)}")
    core = BUILDERS[name](**kwargs)
    if preprocessing is None:
        if augment is not None:
            raise ValueError("build_model: augment needs preprocessing (it runs on normalized pixels)")
        return core
    return with_preprocessing(core, preprocessing, augment)


__all__ = ["BACKBONES", "BUILDERS", "PhotometricAugment", "Preprocess", "SegmentationModel", "build_model",
           "find_preprocess", "with_preprocessing"]
