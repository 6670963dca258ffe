"""Model registry: ``build_model(name, ...)`` builds an architecture from its constructor arguments.

Example:
    >>> model = build_model("unet", input_shape=(256, 256, 4), classes=1, depth=3, filters=8)
"""
from __future__ import annotations

from .unet import build_unet

BUILDERS = {"unet": build_unet}


def build_model(name: str, **kwargs):
    if name not in BUILDERS:
        raise ValueError(f"model name {name!r} is not available; available: {sorted(BUILDERS)}")
    return BUILDERS[name](**kwargs)
