"""The tested ``model.name`` x encoder combinations and their parameter counts (3 bands, 1
class, default widths), as the table in docs/models.md: ``python -m tfseg.models.catalog``
prints it; a test checks the docs against it, so the counts there are computed, not typed.

Example:
    >>> print(parameter_table())
"""
from __future__ import annotations

import sys

# (model.name, model.backbone) built by tests/test_models_catalog.py at default widths; the
# shape / dtype / save-load / training-step matrix (tests/_model_cases.py) runs tiny variants
COMBINATIONS = [
    ("unet", ""), ("unet", "resnet34"), ("unet", "resnet50"), ("unet", "vgg16"), ("unet", "efficientnetb0"),
    ("unetpp", ""), ("unetpp", "resnet34"), ("unetpp", "vgg16"), ("unetpp", "efficientnetb0"),
    ("fcn8", "vgg16"), ("fcn8", "efficientnetb0"),
    ("fpn", "efficientnetb0"), ("fpn", "resnet34"),
    ("deeplabv3plus", "resnet34"), ("deeplabv3plus", "resnet50"), ("deeplabv3plus", "vgg16"),
    ("deeplabv3plus", "efficientnetb0"),
]


def parameter_count(name: str, backbone: str, bands: int = 3, classes: int = 1) -> int:
    import keras

    from . import build_model

    keras.backend.clear_session()
    return int(build_model(name, input_shape=(None, None, bands), classes=classes, backbone=backbone).count_params())


def parameter_table(combinations=COMBINATIONS) -> str:
    """Markdown table: model.name | model.backbone | parameters (3 bands, 1 class, defaults)."""
    lines = ["| `model.name` | `model.backbone` | parameters (3 bands, 1 class, default widths) |", "|---|---|---:|"]
    for name, backbone in combinations:
        count = parameter_count(name, backbone)
        lines.append(f"| `{name}` | {f'`{backbone}`' if backbone else 'plain'} | {count:,} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    print(parameter_table(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
