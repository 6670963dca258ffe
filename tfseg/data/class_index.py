"""Per-scene class-frequency index: where each class occurs in the training scenes.

Computed once from the training labels (next to the normalization statistics) and stored in the
run as ``class_index.npz``. It holds, per scene and class, the pixel count and a compact spatial
index: the cells of a coarse grid (``cell_size`` px, 16 unless the scene is huge) that contain the
class, with cumulative pixel counts, so a pixel of a given class is drawn in O(log cells) without
touching the labels of the rest of the scene. It feeds class-balanced window sampling
(``data.sampling: balanced``, ``data.oversample_class``) and ``train.class_weights: auto``.

Categories: binary -> ``[background, <class>]``; multiclass -> the K classes; multilabel -> the K
classes (pixels where that channel is 1) plus ``none`` (pixels with no class). Ignored label
pixels count for nothing. Only the labels are read: image nodata under a label still counts
(windows drawn there are redrawn by ``data.max_nodata_fraction`` as any other).

Example:
    >>> index = compute_class_index(train_scenes, cfg.data)
    >>> index.frequencies()            # share of labelled pixels per category
    >>> class_weights(index, "median_frequency")
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from rasterio.windows import Window

from ..errors import TfsegError

log = logging.getLogger("tfseg.data")

CELL_SIZE = 16
MAX_CELLS = 1 << 20  # per scene: the cell grid coarsens for huge scenes (bounded memory)
WEIGHT_METHODS = ("median_frequency", "inverse_sqrt")


class ClassIndexError(TfsegError):
    """The class index does not fit the scenes or the config; the message says what differs."""


@dataclass
class ClassIndex:
    """``counts`` (scenes, categories) pixel counts and ``labelled`` (scenes,) labelled (not
    ignored) pixels; per scene ``cell_sizes`` and ``columns`` (cells per grid row) and, per
    (scene, category), the flat ids of the cells holding the category and their cumulative counts
    (``cells[s][c]``, ``cumulative[s][c]``)."""

    categories: list
    multilabel: bool
    scene_names: list
    scene_sizes: list  # (width, height)
    cell_sizes: list
    columns: list
    counts: np.ndarray
    labelled: np.ndarray
    cells: list
    cumulative: list

    @property
    def totals(self) -> np.ndarray:
        return self.counts.sum(axis=0)

    def frequencies(self) -> np.ndarray:
        """Share of the labelled pixels per category (multilabel: they may sum to more than 1)."""
        return self.totals / max(int(self.labelled.sum()), 1)

    def check_scenes(self, scenes) -> None:
        """Raise ClassIndexError unless the index was computed for exactly these scenes."""
        names = [_scene_key(s) for s in scenes]
        sizes = [list(s.size) for s in scenes]
        if names != self.scene_names or sizes != [list(s) for s in self.scene_sizes]:
            raise ClassIndexError(
                f"class index of {len(self.scene_names)} scene(s) {self.scene_names[:3]} does not match the "
                f"{len(names)} training scene(s) {names[:3]} (sizes {sizes[:3]}); remove class_index.npz "
                "from the run directory to recompute it"
            )

    def draw_cell(self, scene: int, category: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """A cell holding ``category`` in ``scene``, drawn in proportion to its count: returns
        ``(col0, row0, col1, row1)`` of the cell (clipped to the scene)."""
        cumulative = self.cumulative[scene][category]
        k = int(np.searchsorted(cumulative, rng.integers(0, int(cumulative[-1])), side="right"))
        cell = int(self.cells[scene][category][k])
        size, columns = self.cell_sizes[scene], self.columns[scene]
        width, height = self.scene_sizes[scene]
        row0, col0 = (cell // columns) * size, (cell % columns) * size
        return col0, row0, min(col0 + size, width), min(row0 + size, height)

    def save(self, path) -> None:
        arrays = {"counts": self.counts, "categories": np.array(self.categories), "multilabel": self.multilabel,
                  "scene_names": np.array(self.scene_names), "scene_sizes": np.array(self.scene_sizes, np.int64),
                  "cell_sizes": np.array(self.cell_sizes, np.int64), "columns": np.array(self.columns, np.int64),
                  "labelled": self.labelled}
        for s, (cells, cumulative) in enumerate(zip(self.cells, self.cumulative)):
            for c in range(len(self.categories)):
                arrays[f"cells_{s}_{c}"] = cells[c]
                arrays[f"cumulative_{s}_{c}"] = cumulative[c]
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path) -> "ClassIndex":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"class index not found: {path}")
        with np.load(path, allow_pickle=False) as data:
            scenes, categories = len(data["scene_names"]), len(data["categories"])
            return cls(
                categories=[str(c) for c in data["categories"]], multilabel=bool(data["multilabel"]),
                scene_names=[str(n) for n in data["scene_names"]],
                scene_sizes=[tuple(int(v) for v in s) for s in data["scene_sizes"]],
                cell_sizes=[int(v) for v in data["cell_sizes"]], columns=[int(v) for v in data["columns"]],
                counts=data["counts"].astype(np.int64), labelled=data["labelled"].astype(np.int64),
                cells=[[data[f"cells_{s}_{c}"] for c in range(categories)] for s in range(scenes)],
                cumulative=[[data[f"cumulative_{s}_{c}"] for c in range(categories)] for s in range(scenes)],
            )

    def summary(self) -> dict:
        """Pixel count and frequency per category (for metrics.json and the log)."""
        freq = self.frequencies()
        return {name: {"pixels": int(n), "frequency": round(float(f), 6)}
                for name, n, f in zip(self.categories, self.totals, freq)}


def _scene_key(scene) -> str:
    return str(getattr(scene, "name", "") or scene.info.path)


def category_names(data_cfg, multilabel: bool) -> list:
    classes = list(data_cfg.classes)
    if multilabel:
        return classes + ["none"]
    return ["background"] + classes if len(classes) == 1 else classes


def _cell_size(width: int, height: int) -> int:
    size = CELL_SIZE
    while -(-width // size) * -(-height // size) > MAX_CELLS:
        size *= 2
    return size


def label_planes(scene, window: Window, ignore_index: Optional[int] = None) -> np.ndarray:
    """(h, w, K) uint8 labels of ``window`` (inside the scene). With ``ignore_index``, as the
    pipeline sees them: ``ignore_index`` where the image is invalid (nodata, masked), in streamed
    scenes as in cached ones, so both draw the same windows; without it, a streamed scene's labels
    as stored (what the class index counts)."""
    from .pipeline import CachedScene
    from .raster import read_window_view

    if isinstance(scene, CachedScene):
        col, row = int(window.col_off), int(window.row_off)
        return scene.label_image[row : row + int(window.height), col : col + int(window.width)]
    label = scene.labels.rasterize(window, scene.info)
    label = label[..., None] if label.ndim == 2 else label
    if ignore_index is not None:
        _, valid = read_window_view(scene.info, window)
        if not valid.all():
            label = np.where(valid[..., None], label, np.uint8(ignore_index))
    return label


def category_mask(planes: np.ndarray, category: int, multilabel: bool) -> np.ndarray:
    """Where ``planes`` (h, w, K) hold ``category`` (multilabel: the last category is 'none')."""
    if not multilabel:
        return planes[..., 0] == category
    if category < planes.shape[-1]:
        return planes[..., category] == 1
    return (planes == 0).all(axis=-1)


def _category_counts_per_cell(planes, cell, num_categories, multilabel):
    """(rows, cols, categories) counts of the (h, w, K) ``planes`` per ``cell`` x ``cell`` block."""
    h, w = planes.shape[:2]
    rows, cols = -(-h // cell), -(-w // cell)
    out = np.zeros((rows, cols, num_categories), np.int64)
    cell_row = np.arange(h) // cell
    cell_col = np.arange(w) // cell
    flat_cell = (cell_row[:, None] * cols + cell_col[None, :]).ravel()
    for c in range(num_categories):
        hit = category_mask(planes, c, multilabel).ravel()
        out[..., c] = np.bincount(flat_cell[hit], minlength=rows * cols).reshape(rows, cols)
    return out


def compute_class_index(scenes: Sequence, data_cfg, block_rows: int = 1024) -> ClassIndex:
    """The class index of ``scenes`` (labels read in row blocks: bounded memory).

    Works on streamed scenes (vector / mask / colour labels, rasterized block by block) and on
    cached ones (:class:`tfseg.data.pipeline.CachedScene`).
    """

    multilabel = data_cfg.task == "multilabel"
    categories = category_names(data_cfg, multilabel)
    ignore = data_cfg.ignore_index
    counts, all_cells, all_cumulative, cell_sizes, columns = [], [], [], [], []
    labelled = []
    for scene in scenes:
        width, height = scene.size
        cell = _cell_size(width, height)
        rows_per_block = max(cell, block_rows // cell * cell)
        grid = np.zeros((-(-height // cell), -(-width // cell), len(categories)), np.int64)
        scene_labelled = 0
        for row in range(0, height, rows_per_block):
            rows = min(rows_per_block, height - row)
            planes = label_planes(scene, Window(0, row, width, rows))
            if multilabel and planes.shape[-1] != len(categories) - 1:
                raise ClassIndexError(f"labels of {scene.info.path} have {planes.shape[-1]} channel(s), "
                                      f"data.classes has {len(categories) - 1}")
            block = _category_counts_per_cell(planes, cell, len(categories), multilabel)
            grid[row // cell : row // cell + block.shape[0]] += block
            scene_labelled += int(np.count_nonzero(planes[..., 0] != ignore))
        flat = grid.reshape(-1, len(categories))
        counts.append(flat.sum(axis=0))
        cells_s, cumulative_s = [], []
        for c in range(len(categories)):
            nonzero = np.flatnonzero(flat[:, c])
            cells_s.append(nonzero.astype(np.int32 if nonzero.size and nonzero[-1] < 2**31 else np.int64))
            cumulative_s.append(np.cumsum(flat[nonzero, c]).astype(np.int64))
        all_cells.append(cells_s)
        all_cumulative.append(cumulative_s)
        cell_sizes.append(cell)
        columns.append(grid.shape[1])
        labelled.append(scene_labelled)
    return ClassIndex(categories, multilabel, [_scene_key(s) for s in scenes], [tuple(s.size) for s in scenes],
                      cell_sizes, columns, np.array(counts, np.int64).reshape(len(scenes), len(categories)),
                      np.array(labelled, np.int64), all_cells, all_cumulative)


def load_or_compute(path, scenes, data_cfg, write: bool = True) -> ClassIndex:
    """The index stored at ``path`` when it matches ``scenes`` (a resumed run), else computed
    (and saved when ``write``)."""
    path = Path(path)
    if path.is_file():
        index = ClassIndex.load(path)
        try:
            index.check_scenes(scenes)
            if index.categories == category_names(data_cfg, index.multilabel):
                return index
        except ClassIndexError:
            pass
        log.info("%s does not match the training scenes/classes: recomputing it", path)
    index = compute_class_index(scenes, data_cfg)
    if write:
        index.save(path)
    return index


def sampling_probabilities(index: ClassIndex, alpha: float) -> np.ndarray:
    """P(centre category) for ``data.sampling: balanced``: every pixel weighs frequency of its
    class ** -alpha, so category c is the centre of a share proportional to f_c ** (1 - alpha)
    of the windows (alpha 0 = uniform pixels, 0.5 = square-root, 1 = every present class
    equally often). Categories with no pixels get 0."""
    freq = index.frequencies().astype(np.float64)
    present = freq > 0
    weights = np.zeros_like(freq)
    weights[present] = freq[present] ** (1.0 - alpha)
    return weights / weights.sum()


def class_weights(index: ClassIndex, method: str, max_weight: float = 10.0) -> tuple[list, list]:
    """Loss weights per class from the index; returns ``(weights, absent)``: the weights in the
    order of ``train.class_weights`` (binary: [background, class]; multiclass / multilabel: one
    per class) and the names of classes that never occur (weighted ``max_weight``).

    - ``median_frequency`` (Eigen & Fergus 2015): ``w_c = median(f) / f_c`` with ``f_c`` = pixels
      of c / labelled pixels of the scenes where c occurs.
    - ``inverse_sqrt``: ``w_c = sqrt(median(p) / p_c)`` with ``p_c`` = pixels of c / all
      labelled pixels.

    Weights are capped at ``max_weight`` (the median class weighs 1).
    """
    if method not in WEIGHT_METHODS:
        raise ClassIndexError(f"config key 'train.class_weights_method': expected one of {list(WEIGHT_METHODS)}, "
                              f"got {method!r}")
    counts = index.counts.astype(np.float64)
    if index.multilabel:  # weights per class channel; 'none' is not a class of the loss
        counts = counts[:, :-1]
    names = index.categories[: counts.shape[1]]
    totals = counts.sum(axis=0)
    present = totals > 0
    labelled = index.labelled.astype(np.float64)
    if method == "median_frequency":
        pixels_where_present = (labelled[:, None] * (counts > 0)).sum(axis=0)
        freq = np.where(present, totals / np.maximum(pixels_where_present, 1), 0.0)
    else:
        freq = totals / max(labelled.sum(), 1)
    weights = np.full(len(names), float(max_weight))
    if present.any():
        median = float(np.median(freq[present]))
        ratio = median / freq[present]
        weights[present] = ratio if method == "median_frequency" else np.sqrt(ratio)
    weights = np.minimum(weights, max_weight)
    return [round(float(w), 6) for w in weights], [n for n, p in zip(names, present) if not p]
