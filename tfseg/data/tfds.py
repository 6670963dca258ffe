"""TFDS builder and Apache Beam path: any configured tfseg source -> tiled, sharded examples.

``manual_dir`` holds the source data plus ``tfseg_source.yaml``: a tfseg config (only its
``data:`` section is used; ``data.root`` relative to ``manual_dir``). Nothing is downloaded.
Every train / validation scene of the source is cut into a grid of ``data.window_size`` tiles
(overlap ``data.options.tile_overlap``: an integer from 0, the default, to ``window_size - 1``);
each example holds the raw (un-normalized) image, its valid-pixel mask and the label, so
normalization can still be computed from data.

Features: ``image`` float32 (S, S, C), ``valid`` uint8 (S, S), ``label`` uint8 (S, S, K)
(class indices, K = 1, or K multi-label channels; ignore index on nodata), ``scene`` text,
``window`` int64 [col, row, width, height].

Builder configs: ``default`` (Python generator) and ``beam`` (an Apache Beam pipeline over
(scene, window) items: workers re-open the source from ``manual_dir``, so it runs on any Beam
runner; tests use the DirectRunner). Needs the ``tfds`` extra:
``pip install "tfseg[tfds]"`` (tensorflow-datasets, apache-beam).

Command line (``--imports`` registers the builder):

    tfds build tfseg_tiles --imports tfseg.data.tfds --manual_dir DATA --data_dir OUT
    tfds build tfseg_tiles/beam --imports tfseg.data.tfds --manual_dir DATA --data_dir OUT \
        --beam_pipeline_options="runner=DirectRunner,direct_num_workers=2"

Example:
    >>> import tfseg.data.tfds  # registers "tfseg_tiles"
    >>> ds = tfds.load("tfseg_tiles", data_dir=out, split="train",
    ...                download_and_prepare_kwargs={"download_config":
    ...                    tfds.download.DownloadConfig(manual_dir=data)})
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np

try:
    import tensorflow_datasets as tfds
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "tfseg.data.tfds needs tensorflow-datasets (and apache-beam for the Beam path): "
        'pip install "tfseg[tfds]"'
    ) from exc

SOURCE_FILE = "tfseg_source.yaml"
SPLITS = {"train": 0, "validation": 1}


def read_source_config(manual_dir):
    """The ``data`` config of ``manual_dir/tfseg_source.yaml`` with ``data.root`` resolved."""
    from .. import config as config_module

    manual_dir = Path(manual_dir)
    path = manual_dir / SOURCE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the TFDS manual_dir must hold a tfseg config ({SOURCE_FILE}) "
            "naming the source format, next to the data"
        )
    cfg = config_module.load(path).data
    root = Path(cfg.root) if cfg.root else manual_dir
    if not root.is_absolute():
        root = manual_dir / root
    if cfg.format == "tfds":
        raise config_module.ConfigError(f"{path}: config key 'data.format': tfds cannot be a TFDS source")
    overlap = cfg.options.get("tile_overlap", 0)
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < cfg.window_size:
        raise config_module.ConfigError(
            f"{path}: config key 'data.options.tile_overlap': expected an integer from 0 to data.window_size - 1 "
            f"({cfg.window_size - 1}; the tiles step by window_size - tile_overlap), got {overlap!r}")
    return dataclasses.replace(cfg, root=str(root))


@functools.lru_cache(maxsize=4)
def _source_config(manual_dir: str):
    """:func:`read_source_config`, read and validated once per worker process."""
    return read_source_config(manual_dir)


@functools.lru_cache(maxsize=4)
def _scenes(manual_dir: str):
    """(train, val) scenes of the source; cached per worker process."""
    from .formats import load_scenes

    return load_scenes(_source_config(manual_dir))


def tile_items(manual_dir: str, split: str) -> list[tuple[str, int, tuple]]:
    """``(manual_dir, split, scene_index, (col, row, width, height))`` for every tile of ``split``."""
    from .tiling import grid_windows

    cfg = _source_config(str(manual_dir))
    scenes = _scenes(str(manual_dir))[SPLITS[split]]
    overlap = int(cfg.options.get("tile_overlap", 0))
    return [
        (str(manual_dir), split, k, (int(w.col_off), int(w.row_off), int(w.width), int(w.height)))
        for k, scene in enumerate(scenes)
        for w in grid_windows(*scene.size, cfg.window_size, overlap)
    ]


def make_example(item) -> tuple[str, dict]:
    """Read one tile: the (key, example) pair TFDS writes."""
    from rasterio.windows import Window

    from .raster import read_window

    manual_dir, split, index, (col, row, width, height) = item
    cfg = _source_config(manual_dir)
    scene = _scenes(manual_dir)[SPLITS[split]][index]
    window = Window(col, row, width, height)
    image, valid = read_window(scene.info, window)
    label = scene.labels.rasterize(window, scene.info)
    if label.ndim == 2:
        label = label[..., None]
    label = np.where(valid[..., None], label, np.uint8(cfg.ignore_index)).astype(np.uint8)
    name = scene.name or Path(scene.info.path).stem
    return f"{name}/{col}_{row}", {
        "image": image.astype(np.float32),
        "valid": valid.astype(np.uint8),
        "label": label,
        "scene": name,
        "window": np.asarray([col, row, width, height], np.int64),
    }


@dataclasses.dataclass
class TilesConfig(tfds.core.BuilderConfig):
    beam: bool = False


class TfsegTiles(tfds.core.GeneratorBasedBuilder):
    """Tiles of any tfseg source (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Grid tiles of a tfseg source with raw image, valid mask, label."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Place the source data and a tfseg config `{SOURCE_FILE}` (its data: section, with "
        "data.root relative to manual_dir) in manual_dir."
    )
    BUILDER_CONFIGS = [
        TilesConfig(name="default", description="Python generator", beam=False),
        TilesConfig(name="beam", description="Apache Beam pipeline", beam=True),
    ]

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(None, None, None), dtype=np.float32, encoding="bytes"),
                    "valid": tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding="zlib"),
                    "label": tfds.features.Tensor(shape=(None, None, None), dtype=np.uint8, encoding="zlib"),
                    "scene": tfds.features.Text(),
                    "window": tfds.features.Tensor(shape=(4,), dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        manual_dir = str(dl_manager.manual_dir)
        return {split: self._generate_examples(manual_dir, split) for split in SPLITS}

    def _generate_examples(self, manual_dir, split):
        items = tile_items(manual_dir, split)
        if self.builder_config.beam:
            beam = tfds.core.lazy_imports.apache_beam
            return beam.Create(items) | beam.Map(make_example)
        return (make_example(item) for item in items)


def build(manual_dir, data_dir, beam: bool = False, beam_options=None):
    """Prepare ``tfseg_tiles`` (or ``tfseg_tiles/beam``) from ``manual_dir`` into ``data_dir``.

    ``beam_options``: an ``apache_beam`` PipelineOptions or a list of flags (default the
    DirectRunner). Returns the builder.
    """
    kwargs = {"manual_dir": str(manual_dir)}
    if beam:
        from apache_beam.options.pipeline_options import PipelineOptions

        if not isinstance(beam_options, PipelineOptions):
            beam_options = PipelineOptions(list(beam_options or ["--runner=DirectRunner"]))
        kwargs["beam_options"] = beam_options
    builder = TfsegTiles(config="beam" if beam else "default", data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(**kwargs))
    return builder
