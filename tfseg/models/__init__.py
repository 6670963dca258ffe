"""Model registry: ``build_model(name, ...)`` builds an architecture from its constructor arguments.

Architectures: ``unet`` (plain, or with ``backbone``), ``unetpp`` (UNet++), ``fcn8``, ``fpn``,
``deeplabv3plus``, ``sm`` (adapter over segmentation-models, imported lazily). Every model is a :class:`SegmentationModel` whose final
activation is float32 and whose ``get_config()["tfseg_multiple"]`` is the input-size multiple.
With ``preprocessing`` (a :class:`Preprocess` layer) the architecture is wrapped behind it (and
``augment``, a training-only :class:`PhotometricAugment`): the model then takes raw pixels.

Example:
    >>> model = build_model("unet", input_shape=(256, 256, 4), classes=1, depth=3, filters=8)
    >>> model = build_model("fpn", input_shape=(256, 256, 8), classes=5, backbone="efficientnetb0")
"""
from __future__ import annotations

import sys

from .. import registry
from ..errors import TfsegError
from .backbones import BACKBONES
from .blocks import SegmentationModel
from .deeplab import build_deeplabv3plus  # noqa: F401  (registered in tfseg.registry.MODELS)
from .fcn import build_fcn8  # noqa: F401  (registered in tfseg.registry.MODELS)
from .fpn import build_fpn  # noqa: F401  (registered in tfseg.registry.MODELS)
from .preprocessing import PhotometricAugment, Preprocess, find_preprocess, with_preprocessing
from .unet import build_unet  # noqa: F401  (registered in tfseg.registry.MODELS)
from .unetpp import build_unetpp  # noqa: F401  (registered in tfseg.registry.MODELS)


def _builder(entry: str):
    """The builder at ``entry`` (``tfseg.registry.MODELS``): imported ones directly, others
    (segmentation-models, optional) when first called."""
    module = registry.module_of(entry)
    if module in sys.modules:
        return registry.resolve(entry)

    def build(**kwargs):
        return registry.resolve(entry)(**kwargs)

    build.__name__ = entry.partition(":")[2]
    return build


BUILDERS = {name: _builder(entry) for name, entry in registry.MODELS.items()}


def available_models() -> list:
    """The names of :data:`BUILDERS` that can be built here, sorted: an optional architecture
    (:data:`tfseg.registry.OPTIONAL_MODELS`) only when its package imports."""
    return sorted(name for name in BUILDERS
                  if name not in registry.OPTIONAL_MODELS or registry.resolve(registry.OPTIONAL_MODELS[name])())


def build_model(name: str, preprocessing: Preprocess = None, augment: PhotometricAugment = None, **kwargs):
    """Build architecture ``name``; ``kwargs`` are ModelConfig field names plus ``model.options``.
    With ``preprocessing`` the result takes raw pixels (see the module docstring)."""
    if name not in BUILDERS:
        raise TfsegError(f"model name {name!r} is not available; available: {sorted(BUILDERS)}")
    core = BUILDERS[name](**kwargs)
    if preprocessing is None:
        if augment is not None:
            raise TfsegError("build_model: augment needs preprocessing (it runs on normalized pixels)")
        return core
    return with_preprocessing(core, preprocessing, augment)


__all__ = ["BACKBONES", "BUILDERS", "PhotometricAugment", "Preprocess", "SegmentationModel", "available_models",
           "build_model", "find_preprocess", "with_preprocessing"]
