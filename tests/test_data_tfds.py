"""TFDS builder (generator and Beam/DirectRunner), tfds.load, the ``tfds build`` CLI, and
``data.format: tfds`` feeding the tile pipeline."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfseg import config as config_module
from tfseg.data.formats import load_scenes
from tfseg.data.pipeline import build_dataset

from .data.formats import make_mask_folder

tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets not installed (extra: tfds)")
tfseg_tfds = pytest.importorskip("tfseg.data.tfds")

SOURCE = """data:
  format: mask_folder
  root: kampala_like
  window_size: 32
  eval_overlap: 0
  val_fraction: 0.34
  options: {mask_suffix: .mask}
"""


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("manual")
    masks = make_mask_folder(root / "kampala_like", num_pairs=3, size=48)
    (root / "tfseg_source.yaml").write_text(SOURCE)
    return root, masks


def check_examples(ds, masks):
    examples = list(tfds.as_numpy(ds))
    # 48 px chips in 32 px tiles: offsets 0 and 16 -> 4 tiles per chip
    assert len(examples) % 4 == 0 and examples
    for ex in examples:
        assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.float32
        assert ex["label"].shape == (32, 32, 1) and ex["valid"].shape == (32, 32)
        col, row, w, h = ex["window"]
        expected = masks[ex["scene"].decode()][row : row + h, col : col + w]
        np.testing.assert_array_equal(ex["label"][..., 0], expected)
    return examples


def test_builder_generator_and_tfds_load(manual_dir, tmp_path):
    manual, masks = manual_dir
    builder = tfseg_tfds.build(manual, tmp_path / "tfds")
    assert builder.info.splits["train"].num_examples == 8
    assert builder.info.splits["validation"].num_examples == 4
    ds = tfds.load("tfseg_tiles", data_dir=str(tmp_path / "tfds"), split="train", download=False)
    check_examples(ds, masks)
    # the tfds format turns the built dataset into scenes for the tile pipeline
    cfg = config_module.from_dict({"data": {
        "format": "tfds", "window_size": 32, "eval_overlap": 0, "batch_size": 4,
        "options": {"name": "tfseg_tiles", "data_dir": str(tmp_path / "tfds")},
    }}).data
    train, val = load_scenes(cfg)
    assert (len(train), len(val)) == (8, 4)
    x, y = next(iter(build_dataset(train, cfg, training=True)))
    assert x.shape == (4, 32, 32, 3) and y.shape == (4, 32, 32, 1) and y.dtype == np.uint8


def test_beam_directrunner_tiles_the_archive(manual_dir, tmp_path):
    pytest.importorskip("apache_beam", reason="apache-beam not installed (extra: tfds)")
    manual, masks = manual_dir
    builder = tfseg_tfds.build(manual, tmp_path / "tfds", beam=True)
    assert builder.info.splits["train"].num_examples == 8
    ds = tfds.load("tfseg_tiles/beam", data_dir=str(tmp_path / "tfds"), split="validation", download=False)
    assert len(check_examples(ds, masks)) == 4


def test_missing_source_config_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tfseg_source.yaml"):
        tfseg_tfds.build(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("overlap", [32, 40, -8])
def test_tile_overlap_outside_the_window_names_the_key(tmp_path, overlap):
    """An overlap >= window_size would step by 0 (or backwards); a negative one would leave untiled
    gaps: both refused naming data.options.tile_overlap, before any scene is read."""
    from tfseg.errors import TfsegError

    (tmp_path / "tfseg_source.yaml").write_text(SOURCE.replace("{mask_suffix: .mask}",
                                                               f"{{mask_suffix: .mask, tile_overlap: {overlap}}}"))
    with pytest.raises(TfsegError, match=rf"{tmp_path}.*data.options.tile_overlap.*0 to .*31.*got {overlap}"):
        tfseg_tfds.read_source_config(tmp_path)


def test_tile_overlap_in_range_overlaps_the_tiles(manual_dir, tmp_path):
    manual, _ = manual_dir
    source = tmp_path / "manual"
    source.mkdir()
    (source / "kampala_like").symlink_to(manual / "kampala_like")
    (source / "tfseg_source.yaml").write_text(SOURCE.replace("{mask_suffix: .mask}",
                                                             "{mask_suffix: .mask, tile_overlap: 24}"))
    windows = {w for _, _, _, w in tfseg_tfds.tile_items(str(source), "train")}
    assert {col for col, _, _, _ in windows} == {0, 8, 16}  # step 32 - 24 over 48 px chips


@pytest.mark.slow
def test_tfds_build_cli(manual_dir, tmp_path):
    manual, _ = manual_dir
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run(
        [sys.executable, "-m", "tensorflow_datasets.scripts.cli.main", "build", "tfseg_tiles",
         "--imports", "tfseg.data.tfds", "--manual_dir", str(manual), "--data_dir", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ds = tfds.load("tfseg_tiles", data_dir=str(tmp_path / "out"), split="train", download=False)
    assert sum(1 for _ in ds) == 8
