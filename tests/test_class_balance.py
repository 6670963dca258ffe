"""Class-frequency index, balanced window sampling and automatic class weights."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from tfseg import config as config_module
from tfseg.data.class_index import (ClassIndex, ClassIndexError, class_weights, compute_class_index,
                                    sampling_probabilities)
from tfseg.data.labels import MaskLabels, PixelPolygonLabels
from tfseg.data.pipeline import build_dataset
from tfseg.data.raster import open_raster
from tfseg.data.sources import Scene

from .data.fixtures import write_geotiff

SIZE, WINDOW, RARE = 200, 32, 2


def _scenes(tmp_path):
    """Two 200² GeoTIFF scenes, classes [ground, field, rare]: field = the right half, rare = one
    20x20 square (1 % of the pixels) away from the edges; the second scene has a nodata-free
    ignore strip (255) along the top."""
    rng = np.random.default_rng(0)
    scenes, masks = [], []
    for k in range(2):
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[:, SIZE // 2:] = 1
        mask[60 + 30 * k: 80 + 30 * k, 50:70] = RARE
        if k == 1:
            mask[:10] = 255
        image = write_geotiff(tmp_path / f"s{k}.tif", rng.integers(0, 255, (3, SIZE, SIZE), dtype=np.uint8))
        label = write_geotiff(tmp_path / f"s{k}.mask.tif", mask)
        scenes.append(Scene(open_raster(image), MaskLabels(open_raster(label)), f"s{k}"))
        masks.append(mask)
    return scenes, masks


def _cfg(**data):
    data = {"classes": ["ground", "field", "rare"], "window_size": WINDOW, "batch_size": 100, "eval_overlap": 0,
            "augment": {"flip": False, "rot90": False}, **data}
    return config_module.from_dict({"data": data}).data


def _centre_share(scenes, cfg, windows=400):
    ds = build_dataset(scenes, cfg, training=True)
    centres = np.concatenate([y.numpy()[:, WINDOW // 2, WINDOW // 2, 0]
                              for _, y in ds.take(windows // cfg.batch_size)])
    return np.array([(centres == c).mean() for c in range(3)])


def test_index_counts_cells_and_round_trip(tmp_path):
    scenes, masks = _scenes(tmp_path)
    index = compute_class_index(scenes, _cfg())
    expected = np.array([[np.count_nonzero(m == c) for c in range(3)] for m in masks])
    np.testing.assert_array_equal(index.counts, expected)
    np.testing.assert_array_equal(index.labelled, [SIZE * SIZE, SIZE * SIZE - 10 * SIZE])
    assert index.frequencies()[RARE] == pytest.approx(800 / (2 * SIZE * SIZE - 10 * SIZE))
    # every cell drawn for the rare class lies on the square
    rng = np.random.default_rng(1)
    for _ in range(50):
        col0, row0, col1, row1 = index.draw_cell(1, RARE, rng)
        assert (masks[1][row0:row1, col0:col1] == RARE).any()
    index.save(tmp_path / "class_index.npz")
    back = ClassIndex.load(tmp_path / "class_index.npz")
    np.testing.assert_array_equal(back.counts, index.counts)
    assert back.categories == ["ground", "field", "rare"] and back.scene_names == ["s0", "s1"]
    for a, b in zip(back.cumulative[0], index.cumulative[0]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="does not match"):
        back.check_scenes(scenes[:1])


def test_balanced_sampling_moves_the_rare_class_share_to_its_target(tmp_path):
    scenes, _ = _scenes(tmp_path)
    uniform = _centre_share(scenes, _cfg())
    assert uniform[RARE] < 0.04  # ~1 % of the windows centred on it
    index = compute_class_index(scenes, _cfg())
    shares = []
    for alpha in (0.5, 1.0):
        target = sampling_probabilities(index, alpha)
        for cache in (False, True):  # streamed and cached scenes: the same draws
            share = _centre_share(scenes, _cfg(sampling="balanced", balance_alpha=alpha, cache=cache))
            np.testing.assert_allclose(share, target, atol=0.06)
        shares.append(share[RARE])
    assert uniform[RARE] < shares[0] < shares[1]
    assert sampling_probabilities(index, 1.0) == pytest.approx([1 / 3] * 3)
    # deterministic per (seed, window index)
    cfg = _cfg(sampling="balanced", batch_size=4)
    first = [y.numpy() for _, y in build_dataset(scenes, cfg, training=True).take(2)]
    again = [y.numpy() for _, y in build_dataset(scenes, cfg, training=True, class_index=index).take(2)]
    np.testing.assert_array_equal(first, again)


def test_oversample_class_centres_its_share_of_windows(tmp_path, caplog):
    scenes, _ = _scenes(tmp_path)
    share = _centre_share(scenes, _cfg(oversample_class=RARE, oversample_fraction=0.5))
    assert 0.4 < share[RARE] < 0.65
    # a class that never occurs: a warning naming it, the windows are drawn uniformly
    cfg = _cfg(classes=["ground", "field", "rare", "absent"], oversample_class=3, oversample_fraction=1.0)
    with caplog.at_level(logging.WARNING, logger="tfseg.data"):
        next(iter(build_dataset(scenes, cfg, training=True)))
    assert "oversample_class 3 (absent) never occurs" in caplog.text


def test_binary_and_multilabel_balanced(tmp_path):
    scenes, masks = _scenes(tmp_path)
    # binary: the rare square as the positive class
    binary = []
    for k, scene in enumerate(scenes):
        path = write_geotiff(tmp_path / f"b{k}.mask.tif", (masks[k] == RARE).astype(np.uint8))
        binary.append(Scene(scene.info, MaskLabels(open_raster(path)), scene.name))
    cfg = _cfg(classes=["rare"], sampling="balanced", balance_alpha=1.0, batch_size=50)
    index = compute_class_index(binary, cfg)
    assert index.categories == ["background", "rare"]
    y = np.concatenate([b.numpy() for _, b in build_dataset(binary, cfg, training=True).take(4)])
    assert 0.35 < (y[:, WINDOW // 2, WINDOW // 2, 0] == 1).mean() < 0.65
    # multilabel: two channels (polygons in pixel coordinates), plus 'none'
    from shapely.geometry import box

    labels = PixelPolygonLabels([[box(50, 60, 70, 80)], [box(100, 0, 200, 200)]])
    multi = [Scene(scenes[0].info, labels, "m0")]
    cfg = _cfg(classes=["rare", "field"], task="multilabel", sampling="balanced", balance_alpha=1.0, batch_size=60)
    index = compute_class_index(multi, cfg)
    assert index.categories == ["rare", "field", "none"]
    np.testing.assert_array_equal(index.counts[0], [400, 100 * SIZE, 100 * SIZE - 400])
    y = np.concatenate([b.numpy() for _, b in build_dataset(multi, cfg, training=True).take(5)])
    centre = y[:, WINDOW // 2, WINDOW // 2]
    assert 0.2 < centre[:, 0].mean() < 0.47  # 1/3 expected (uniform: 1 %)
    assert y.shape[-1] == 2


def test_balanced_batches_streamed_equal_cached_with_nodata(tmp_path):
    """With image nodata (the left half) and the class index of the labels as stored (as
    tfseg.train passes it), the centre pixel is looked for in labels ignored under nodata in both
    modes: streamed and cached batches are the same, and no window is centred on nodata."""
    rng = np.random.default_rng(0)
    image = rng.integers(1, 255, (128, 128)).astype(np.uint8)
    image[:, :64] = 0
    mask = np.zeros((128, 128), np.uint8)
    mask[::7] = 1
    scene = Scene(open_raster(write_geotiff(tmp_path / "b.tif", image, nodata=0)),
                  MaskLabels(open_raster(write_geotiff(tmp_path / "b.mask.tif", mask))), "b")
    cfg = _cfg(classes=["line"], window_size=32, batch_size=8, sampling="balanced", balance_alpha=1.0,
               max_nodata_fraction=1.0)
    index = compute_class_index([scene], cfg)
    out = []
    for cache in (False, True):
        ds = build_dataset([scene], dataclasses.replace(cfg, cache=cache), training=True, class_index=index)
        out.append([(x.numpy(), y.numpy()) for x, y in ds.take(3)])
    for (x1, y1), (x2, y2) in zip(*out):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        assert (y1[:, 16, 16, 0] != 255).all()


def test_auto_class_weights_on_a_known_frequency_table(caplog):
    # two scenes of 100 labelled pixels: class counts per scene
    counts = np.array([[50, 40, 10, 0], [80, 0, 20, 0]])
    index = ClassIndex(["a", "b", "c", "never"], False, ["s0", "s1"], [(10, 10), (10, 10)], [16, 16], [1, 1],
                       counts, np.array([100, 100]), [[np.zeros(0, np.int32)] * 4] * 2,
                       [[np.zeros(0, np.int64)] * 4] * 2)
    # median frequency: f = pixels / pixels of the scenes where the class occurs
    # a: 130/200 = 0.65, b: 40/100 = 0.4, c: 30/200 = 0.15 -> median 0.4
    weights, absent = class_weights(index, "median_frequency", max_weight=10.0)
    assert weights == pytest.approx([0.4 / 0.65, 1.0, 0.4 / 0.15, 10.0], rel=1e-5)
    assert absent == ["never"]
    # inverse sqrt: p = 130/200, 40/200, 30/200 -> median 0.2
    weights, _ = class_weights(index, "inverse_sqrt", max_weight=2.0)
    assert weights == pytest.approx([np.sqrt(0.2 / 0.65), 1.0, min(np.sqrt(0.2 / 0.15), 2.0), 2.0], rel=1e-5)
    with pytest.raises(ClassIndexError, match="train.class_weights_method"):
        class_weights(index, "inverse")


def test_bad_input_names_the_key():
    with pytest.raises(config_module.ConfigError, match=r"data.balance_alpha.*\[0.0, 1.0\].*1.5"):
        config_module.from_dict({"data": {"balance_alpha": 1.5}})
    with pytest.raises(config_module.ConfigError, match="data.sampling.*'uniform', 'balanced'"):
        config_module.from_dict({"data": {"sampling": "rare"}})
    with pytest.raises(config_module.ConfigError, match="train.class_weights.*'auto'"):
        config_module.from_dict({"train": {"class_weights": "balanced"}})
    assert config_module.from_dict({"train": {"class_weights": "auto"}}).train.class_weights == "auto"
    assert dataclasses.asdict(config_module.Config())["train"]["class_weights"] == []
