"""Each configs/<format>.yaml validates and loads its format's generated fixture."""
from __future__ import annotations

from pathlib import Path

import pytest

from tfseg import config as config_module
from tfseg.data.formats import load_scenes

from .data.formats import make_colour_mask, make_dstl, make_mask_folder, make_scenes, make_spacenet

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
REPO = CONFIGS.parent


@pytest.mark.parametrize("name, make, overrides", [
    ("spacenet", make_spacenet, []),
    ("mask_folder", lambda root: make_mask_folder(root, num_pairs=5), []),
    ("colour_mask", make_colour_mask, []),
    ("dstl", make_dstl, ["data.val_fraction=0.0"]),
    ("scenes", make_scenes, ["data.num_bands=4"]),
])
def test_format_config_loads_its_fixture(tmp_path, name, make, overrides):
    make(tmp_path)
    cfg = config_module.load(CONFIGS / f"{name}.yaml", [f"data.root={tmp_path}", *overrides])
    assert cfg.data.format == name
    train, val = load_scenes(cfg.data)
    assert train
    if cfg.data.num_bands:
        assert {s.info.num_bands for s in train + val} == {cfg.data.num_bands}


def test_tfds_config_validates():
    cfg = config_module.load(CONFIGS / "tfds.yaml")
    assert cfg.data.format == "tfds" and cfg.data.options["name"] == "tfseg_tiles"


@pytest.mark.parametrize("name, count", [("mask_folder", 118), ("colour_mask", 54)])
def test_real_sample_configs(name, count):
    cfg = config_module.load(CONFIGS / f"{name}.yaml")
    root = (REPO / cfg.data.root).resolve()
    if not root.is_dir():
        pytest.skip(f"real sample data not found: {root}")
    cfg.data.root = str(root)
    train, val = load_scenes(cfg.data)
    assert len(train) + len(val) == count
