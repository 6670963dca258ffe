"""The pluggable choices, each named once: data formats, model architectures, loss presets.

Each entry maps the name a config uses to where its implementation lives (``module:function``,
imported when first used, so the config can be validated without importing TensorFlow).
Config validation (``config.CHOICES``), ``tfseg.data.formats.LOADERS``,
``tfseg.models.BUILDERS`` and ``tfseg.losses.PRESETS`` all read these tables: adding a format,
a model or a loss preset is one line here plus its implementation.

Example:
    >>> from tfseg import registry
    >>> sorted(registry.MODELS)[:3]
    ['deeplabv3plus', 'fcn8', 'fpn']
    >>> build_unet = registry.resolve(registry.MODELS["unet"])
"""
from __future__ import annotations

import importlib

# data.format -> the loader returning (train, val) Scene lists; its module declares OPTIONS
DATA_FORMATS = {
    "synthetic": "tfseg.data.formats:load_synthetic",
    "scenes": "tfseg.data.formats.scenes:load_scenes_format",
    "spacenet": "tfseg.data.formats.spacenet:load_spacenet",
    "mask_folder": "tfseg.data.formats.mask_folder:load_mask_folder",
    "colour_mask": "tfseg.data.formats.colour_mask:load_colour_mask",
    "dstl": "tfseg.data.formats.dstl:load_dstl",
    "tfds": "tfseg.data.formats.tfds_format:load_tfds",
}

# model.name -> the builder taking input_shape, classes and the model.* fields
MODELS = {
    "unet": "tfseg.models.unet:build_unet",
    "unetpp": "tfseg.models.unetpp:build_unetpp",
    "fcn8": "tfseg.models.fcn:build_fcn8",
    "fpn": "tfseg.models.fpn:build_fpn",
    "deeplabv3plus": "tfseg.models.deeplab:build_deeplabv3plus",
    "sm": "tfseg.models.sm_adapter:build_sm",  # segmentation-models, optional
}

# optional model.name -> the function saying whether its package can be imported here
# (``tfseg.available_models()`` lists the name only then)
OPTIONAL_MODELS = {
    "sm": "tfseg.models.sm_adapter:available",
}

# train.loss -> weights of the components of tfseg.losses.COMPONENTS
LOSS_PRESETS = {
    "bce": {"bce": 1.0},
    "cce": {"cce": 1.0},
    "dice": {"dice": 1.0},
    "bce_dice": {"bce": 1.0, "dice": 1.0},
    "cce_dice": {"cce": 1.0, "dice": 1.0},
    "focal": {"focal": 1.0},
    "jaccard": {"jaccard": 1.0},
    "lovasz": {"lovasz": 1.0},
    "tversky": {"tversky": 1.0},
}


def resolve(entry: str):
    """The object an entry (``"package.module:name"``) names, its module imported now."""
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)


def module_of(entry: str) -> str:
    """The module of an entry (``"package.module"``)."""
    return entry.partition(":")[0]
