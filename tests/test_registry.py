"""tfseg.registry: the pluggable choices named once, resolved when used, read by the config and
by the loaders, builders and losses."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tfseg import config as config_lib
from tfseg import registry


@pytest.mark.parametrize("table", ["DATA_FORMATS", "MODELS"])
def test_every_entry_resolves_to_its_function(table):
    for name, entry in getattr(registry, table).items():
        module, _, function = entry.partition(":")
        assert registry.module_of(entry) == module and module.startswith("tfseg.")
        target = registry.resolve(entry)
        assert callable(target) and target.__name__ == function, (name, entry)
        assert sys.modules[module] is not None  # imported by resolve


def test_resolve_and_module_of_on_their_own_entries():
    assert registry.resolve("tfseg.registry:resolve") is registry.resolve
    assert registry.resolve("tfseg.config:CHOICES") is config_lib.CHOICES  # any attribute, not only functions
    assert registry.module_of("tfseg.models.unet:build_unet") == "tfseg.models.unet"
    assert registry.module_of("tfseg.models.unet") == "tfseg.models.unet"
    with pytest.raises(AttributeError, match="build_nothing"):
        registry.resolve("tfseg.models.unet:build_nothing")
    with pytest.raises(ModuleNotFoundError, match="tfseg.models.nothing"):
        registry.resolve("tfseg.models.nothing:build")


def test_config_choices_equal_the_registries():
    assert config_lib.CHOICES["data.format"] == list(registry.DATA_FORMATS)
    assert config_lib.CHOICES["model.name"] == list(registry.MODELS)
    assert config_lib.CHOICES["train.loss"] == list(registry.LOSS_PRESETS)
    for key, table in (("data.format", registry.DATA_FORMATS), ("model.name", registry.MODELS),
                       ("train.loss", registry.LOSS_PRESETS)):
        section, field = key.split(".")
        for name in table:  # every registered name is accepted
            cfg = config_lib.from_dict({}, [f"{key}={name}", "data.window_size=512"])  # deeplab: rates < map
            assert getattr(getattr(cfg, section), field) == name
        with pytest.raises(config_lib.ConfigError, match=rf"'{key}'.*{sorted(table)[-1]}.*got 'nope'"):
            config_lib.from_dict({}, [f"{key}=nope"])


def test_loaders_builders_and_losses_read_the_tables():
    from tfseg import losses
    from tfseg.data import formats
    from tfseg.models import BUILDERS

    assert list(formats.LOADERS) == list(registry.DATA_FORMATS)
    assert list(BUILDERS) == list(registry.MODELS)
    assert losses.PRESETS is registry.LOSS_PRESETS
    for name, weights in registry.LOSS_PRESETS.items():
        assert weights and set(weights) <= set(losses.COMPONENTS) and all(w > 0 for w in weights.values()), name
    for name in registry.DATA_FORMATS:  # each format's module declares its data.options
        assert "tile_overlap" in formats.allowed_options(name), name


def test_validating_a_config_imports_no_implementation():
    code = ("import sys; from tfseg import config; "
            "config.load(None, ['model.name=fpn', 'model.backbone=resnet34', 'data.format=spacenet', "
            "'train.loss=focal']); "
            "print(sorted(m for m in sys.modules if m.startswith(('tensorflow', 'keras', 'tfseg.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == ["tfseg.config", "tfseg.errors", "tfseg.registry"]


def test_optional_models_name_their_availability_check():
    assert set(registry.OPTIONAL_MODELS) <= set(registry.MODELS)
    for name, entry in registry.OPTIONAL_MODELS.items():
        assert isinstance(registry.resolve(entry)(), bool), name
