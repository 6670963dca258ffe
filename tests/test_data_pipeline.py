"""tf.data tile pipeline: shapes and label encodings, determinism, cache == stream, padding,
augmentation alignment, nodata; vector labels in any CRS; bad vector/raster input."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from rasterio.windows import Window

from tfseg import config as config_module
from tfseg.data.formats import DataFormatError, load_scenes
from tfseg.data.formats.dstl import CLASSES as DSTL_CLASSES
from tfseg.data.labels import LabelError, VectorLabels
from tfseg.data.pipeline import build_dataset, read_tile
from tfseg.data.raster import Normalization, compute_normalization, open_raster

from .data.fixtures import TRANSFORM, UTM, pixel_box_to_world, write_geojson, write_geotiff
from .data.formats import make_dstl, make_mask_folder, make_scenes


def data_cfg(**data):
    data.setdefault("window_size", 32)
    data.setdefault("batch_size", 2)
    data.setdefault("eval_overlap", 0)
    return config_module.from_dict({"data": data}).data


def first_batches(ds, n=3):
    out = []
    for k, (x, y) in enumerate(ds):
        out.append((x.numpy(), y.numpy()))
        if k + 1 == n:
            break
    return out


@pytest.fixture(scope="module")
def scenes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root)
    return root


def test_binary_pipeline_shapes_deterministic_and_cache_equals_stream(scenes_root):
    cfg = data_cfg(format="scenes", root=str(scenes_root), augment={"brightness": 0.1, "contrast": 0.1})
    train, val = load_scenes(cfg)
    a = first_batches(build_dataset(train, cfg, training=True))
    b = first_batches(build_dataset(train, cfg, training=True))
    c = first_batches(build_dataset(train, dataclasses.replace(cfg, cache=True), training=True))
    d = first_batches(build_dataset(train, dataclasses.replace(cfg, label_cache_mpix=0), training=True))
    other = first_batches(build_dataset(train, cfg, training=True, seed=7))
    x, y = a[0]
    # what was read: uint16 pixels (no host float work; brightness/contrast run in the model), uint8 labels
    assert x.shape == (2, 32, 32, 4) and x.dtype == np.uint16 and y.shape == (2, 32, 32, 1) and y.dtype == np.uint8
    assert set(np.unique(y)) <= {0, 1}
    for first, second in [(a, b), (a, c), (a, d)]:
        for (x1, y1), (x2, y2) in zip(first, second):
            np.testing.assert_array_equal(x1, x2)
            np.testing.assert_array_equal(y1, y2)
    assert not np.allclose(a[0][0], other[0][0])
    # evaluation: a finite grid, 96 px scene / 32 px windows = 9 tiles
    tiles = sum(x.shape[0] for x, _ in build_dataset(val, cfg, training=False))
    assert tiles == 9


def test_eval_pipeline_tile_is_the_raw_read(scenes_root, tmp_path):
    cfg = data_cfg(format="scenes", root=str(scenes_root), normalization="percentile", augment={"flip": False, "rot90": False})
    train, val = load_scenes(cfg)
    norm = compute_normalization([s.info for s in train], "percentile", [2, 98])
    norm.save(tmp_path / "normalization.json")
    assert Normalization.load(tmp_path / "normalization.json") == norm
    x, y = next(iter(build_dataset(val, cfg, training=False)))
    image, label = read_tile(val[0], Window(0, 0, 32, 32), 255)
    np.testing.assert_array_equal(x[0].numpy(), image)
    np.testing.assert_array_equal(y[0, ..., 0].numpy(), label)


def test_augmentation_moves_image_and_label_together(tmp_path):
    """Band 1 of the image equals 100 * label: after flips/rot90/scale they must still agree."""
    rng = np.random.default_rng(0)
    mask = np.kron(rng.random((8, 8)) < 0.4, np.ones((8, 8))).astype(np.uint8)  # 8 px blocks
    image = np.stack([mask * 100 + 1, rng.integers(1, 50, (64, 64))]).astype(np.uint16)
    write_geotiff(tmp_path / "images" / "a.tif", image)
    write_geotiff(tmp_path / "masks" / "a.tif", mask)
    write_geotiff(tmp_path / "images" / "b.tif", image)
    write_geotiff(tmp_path / "masks" / "b.tif", mask)
    for augment in ({"flip": True, "rot90": True}, {"flip": True, "rot90": True, "scale": [0.75, 1.5]}):
        cfg = data_cfg(format="mask_folder", root=str(tmp_path), augment=augment, batch_size=4)
        train, _ = load_scenes(cfg)
        for x, y in first_batches(build_dataset(train, cfg, training=True), 4):
            assert x.dtype == np.uint16 and y.dtype == np.uint8  # the scale path resamples in float, returns uint16
            label = y[..., 0]
            known = label != 255
            assert known.mean() > 0.5
            agree = ((x[..., 0][known] > 50).astype(np.float32) == label[known]).mean()
            if "scale" in augment:  # bilinear image vs nearest label differ on block edges only
                assert agree > 0.93, agree
            else:
                assert agree == 1.0
            assert (x[~known] == 0).all()  # padding from scale-down: image = nodata value (0), label ignore


def test_nodata_and_nan_are_ignored_and_windows_above_nodata_fraction_skipped(tmp_path):
    data = np.full((1, 64, 64), 4.0, np.float32)
    data[0, 1::2] = 6.0  # mean 5 (a constant band could not be normalized)
    data[0, :, 40:] = np.nan  # NaN in float imagery = nodata
    write_geotiff(tmp_path / "train" / "a.tif", data)
    write_geotiff(tmp_path / "val" / "a.tif", data)
    transform = TRANSFORM
    write_geojson(tmp_path / "labels.geojson", [pixel_box_to_world(0, 0, 64, 64, transform)])
    cfg = data_cfg(format="scenes", root=str(tmp_path), max_nodata_fraction=0.5)
    train, val = load_scenes(cfg)
    norm = compute_normalization([s.info for s in train])
    assert norm.mean == [5.0]  # NaN pixels excluded from the statistics
    image, label = read_tile(train[0], Window(32, 0, 32, 32), 255, fill=float("nan"))
    assert (label[:, 8:] == 255).all() and (label[:, :8] == 1).all()
    # float imagery without a nodata value: missing pixels stay NaN (the model zeroes them)
    assert np.isnan(image[:, 8:]).all() and np.isin(image[:, :8], [4.0, 6.0]).all()
    # eval grid: windows at col 0 (0 % nodata) and col 32 (75 % nodata, skipped) per row
    tiles = sum(x.shape[0] for x, _ in build_dataset(val, cfg, training=False))
    assert tiles == 2
    for x, y in first_batches(build_dataset(train, cfg, training=True), 4):
        assert x.dtype == np.float32 and ((y == 255).mean(axis=(1, 2, 3)) <= 0.5).all()
        assert (np.isnan(x).all(axis=-1) == (y[..., 0] == 255)).all()  # nodata pixels: NaN image, ignore label


def test_multilabel_dstl_pipeline_ignores_every_channel(tmp_path):
    make_dstl(tmp_path)
    cfg = data_cfg(format="dstl", root=str(tmp_path), task="multilabel", classes=DSTL_CLASSES,
                   val_fraction=0.0, window_size=96, max_nodata_fraction=1.0, eval_overlap=0)
    train, _ = load_scenes(cfg)
    norm = compute_normalization([s.info for s in train])
    assert len(norm.mean) == 20
    for cache in (False, True):
        batches = list(build_dataset(train, dataclasses.replace(cfg, cache=cache), training=False))
        y = np.concatenate([b[1].numpy() for b in batches])
        assert y.shape == (1, 96, 96, 10)  # 90 px scene in one 96 px window, padded
        ignored = (y == 255)
        assert (ignored.all(axis=-1) == ignored.any(axis=-1)).all()  # all channels or none
        assert ignored.any() and set(np.unique(y[~ignored])) == {0, 1}
        assert y[..., 1:][~ignored[..., 1:]].max() == 0  # only class 1 has polygons
    x, y = next(iter(build_dataset(train, cfg, training=True)))
    assert x.shape == (2, 96, 96, 20) and y.shape == (2, 96, 96, 10)


def test_oversampling_a_class(tmp_path):
    make_mask_folder(tmp_path, num_pairs=2, size=96)
    cfg = data_cfg(format="mask_folder", root=str(tmp_path), options={"mask_suffix": ".mask"},
                   val_fraction=0.0, oversample_class=1, oversample_fraction=1.0, batch_size=8)
    train, _ = load_scenes(cfg)
    _, y = next(iter(build_dataset(train, cfg, training=True)))
    assert ((y.numpy() == 1).any(axis=(1, 2, 3))).all()


# -------------------------------------------------------------------- vector labels and CRS
def test_labels_in_another_crs_land_on_the_same_pixels(tmp_path):
    boxes = ((10, 10, 40, 30), (50, 60, 90, 80))
    masks = []
    for crs in (UTM, "EPSG:4326", "EPSG:3857"):
        root = tmp_path / crs.replace(":", "_")
        make_scenes(root, labels_crs=crs, boxes=boxes)
        cfg = data_cfg(format="scenes", root=str(root))
        train, _ = load_scenes(cfg)
        info = train[0].info
        masks.append(train[0].labels.rasterize(Window(0, 0, info.width, info.height), info))
    expected = np.zeros((96, 96), np.uint8)
    for c0, r0, c1, r1 in boxes:
        expected[r0:r1, c0:c1] = 1
    for mask in masks:
        np.testing.assert_array_equal(mask, expected)


def test_class_attribute_by_name(tmp_path):
    root = tmp_path / "s"
    make_scenes(root)
    transform = TRANSFORM
    geoms = [pixel_box_to_world(10, 10, 40, 30, transform), pixel_box_to_world(50, 60, 90, 80, transform)]
    write_geojson(root / "labels.geojson", geoms, properties=[{"kind": "road"}, {"kind": "building"}])
    cfg = data_cfg(format="scenes", root=str(root), classes=["background", "building", "road"],
                   label_attribute="kind", options={"class_names": True})
    train, _ = load_scenes(cfg)
    mask = train[0].labels.rasterize(Window(0, 0, 96, 96), train[0].info)
    assert mask[15, 15] == 2 and mask[70, 70] == 1 and mask[0, 0] == 0


def test_vector_bad_input(tmp_path, caplog):
    info = open_raster(write_geotiff(tmp_path / "a.tif", np.ones((1, 32, 32), np.uint8)))
    transform = info.affine
    # labels in a CRS that does not overlap the raster: error, not an empty mask
    far = {"type": "Polygon", "coordinates": [[(10, 10), (11, 10), (11, 11), (10, 11), (10, 10)]]}
    write_geojson(tmp_path / "far.geojson", [far], src_crs="EPSG:4326", dst_crs="EPSG:4326")
    with pytest.raises(LabelError, match="far.geojson.*do not overlap raster.*a.tif"):
        VectorLabels.from_file(tmp_path / "far.geojson", info)
    # raster without CRS + vector labels
    bare = open_raster(write_geotiff(tmp_path / "bare.tif", np.ones((1, 32, 32), np.uint8), crs=None))
    write_geojson(tmp_path / "box.geojson", [pixel_box_to_world(2, 2, 10, 10, transform)])
    with pytest.raises(LabelError, match="bare.tif has no CRS.*box.geojson"):
        VectorLabels.from_file(tmp_path / "box.geojson", bare)
    # self-intersecting (bow-tie) polygon: repaired and counted in a warning
    c = [tuple(transform * p) for p in [(0, 0), (16, 16), (16, 0), (0, 16), (0, 0)]]
    write_geojson(tmp_path / "bowtie.geojson", [{"type": "Polygon", "coordinates": [c]}], src_crs=UTM, dst_crs=UTM)
    with caplog.at_level(logging.WARNING):
        labels = VectorLabels.from_file(tmp_path / "bowtie.geojson", info)
    assert "repaired 1 invalid" in caplog.text
    mask = labels.rasterize(Window(0, 0, 32, 32), info)
    assert mask[8, 2] == 1 and mask[2, 8] == 0 and mask[20, 20] == 0
    # empty label file: valid, no objects
    (tmp_path / "empty.geojson").write_text("")
    assert VectorLabels.from_file(tmp_path / "empty.geojson", info).rasterize(Window(0, 0, 32, 32), info).sum() == 0
    (tmp_path / "empty2.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    assert VectorLabels.from_file(tmp_path / "empty2.geojson", info).rasterize(Window(0, 0, 32, 32), info).sum() == 0


def test_wrong_band_count_names_the_file(scenes_root):
    with pytest.raises(DataFormatError, match=r"a.tif: has 4 band\(s\).*data.num_bands expects 3"):
        load_scenes(data_cfg(format="scenes", root=str(scenes_root), num_bands=3))
    train, _ = load_scenes(data_cfg(format="scenes", root=str(scenes_root), bands=[3, 2, 1], num_bands=3))
    assert train[0].info.num_bands == 3


def test_geopackage_labels_in_another_crs_with_class_attribute(tmp_path):
    pyogrio_raw = pytest.importorskip("pyogrio.raw", reason="pyogrio not installed (GeoPackage)")
    import shapely
    from rasterio.warp import transform_geom
    from shapely.geometry import shape

    root = tmp_path / "s"
    make_scenes(root)
    transform = TRANSFORM
    boxes = [(10, 10, 40, 30), (50, 60, 90, 80)]
    geoms = [shape(transform_geom(UTM, "EPSG:3857", pixel_box_to_world(*b, transform))) for b in boxes]
    pyogrio_raw.write(
        root / "labels.gpkg", geometry=shapely.to_wkb(np.asarray(geoms, dtype=object)),
        field_data=[np.array([2, 1])], fields=["cls"], crs="EPSG:3857", geometry_type="Polygon", driver="GPKG",
    )
    cfg = data_cfg(format="scenes", root=str(root), classes=["bg", "a", "b"], label_attribute="cls",
                   options={"labels": "labels.gpkg"})
    train, _ = load_scenes(cfg)
    mask = train[0].labels.rasterize(Window(0, 0, 96, 96), train[0].info)
    expected = np.zeros((96, 96), np.uint8)
    expected[10:30, 10:40], expected[60:80, 50:90] = 2, 1
    np.testing.assert_array_equal(mask, expected)


def test_images_smaller_than_the_window_are_padded_not_skipped(tmp_path):
    masks = make_mask_folder(tmp_path, num_pairs=3, size=48, georeferenced=False)
    cfg = data_cfg(format="mask_folder", root=str(tmp_path), options={"mask_suffix": ".mask"},
                   window_size=96, max_nodata_fraction=0.5, val_fraction=0.34)
    train, val = load_scenes(cfg)
    batches = list(build_dataset(val, cfg, training=False))
    y = np.concatenate([b[1].numpy() for b in batches])
    assert y.shape == (len(val), 96, 96, 1)
    np.testing.assert_array_equal(y[0, :48, :48, 0], masks[val[0].name])
    assert (y[0, 48:] == 255).all()
    x, y = next(iter(build_dataset(train, cfg, training=True)))
    assert x.shape == (2, 96, 96, 3) and ((y.numpy() != 255).sum(axis=(1, 2, 3)) == 48 * 48).all()


# -------------------------------------------------------------------- fast paths == reference
@pytest.mark.parametrize("dtype,channels", [(np.uint8, 3), (np.uint16, 8), (np.uint8, 11), (np.float32, 20), (np.int64, 2)])
def test_dihedral_into_matches_numpy_rot90_and_flips(dtype, channels):
    from tfseg.data.augment import dihedral_into

    rng = np.random.default_rng(0)
    scene = rng.integers(0, 200, (50, 60, channels)).astype(dtype)
    tile = scene[5:37, 7:39]  # a strided view, as cropped from a cached scene
    for k in range(4):
        for flip_cols in (False, True):
            for flip_rows in (False, True):
                expected = np.rot90(tile, k, axes=(0, 1))
                expected = expected[:, ::-1] if flip_cols else expected
                expected = expected[::-1] if flip_rows else expected
                for out_dtype in (dtype, np.float32):
                    out = np.empty((32, 32, channels), out_dtype)
                    assert dihedral_into(tile, k, flip_cols, flip_rows, out) is out
                    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype,channels", [(np.uint8, 3), (np.uint16, 8), (np.float32, 20)])
def test_dihedral_into_band_planes_match_numpy(dtype, channels):
    """A band-sequential read seen as H x W x C (C contiguous planes) is interleaved by the same
    copy that rotates it: same result as numpy on the interleaved tile."""
    from tfseg.data.augment import dihedral_into

    rng = np.random.default_rng(2)
    planes = rng.integers(0, 200, (channels, 32, 32)).astype(dtype)
    tile = planes.transpose(1, 2, 0)
    for k in range(4):
        for flip_cols in (False, True):
            for flip_rows in (False, True):
                expected = np.rot90(np.ascontiguousarray(tile), k, axes=(0, 1))
                expected = expected[:, ::-1] if flip_cols else expected
                expected = expected[::-1] if flip_rows else expected
                out = np.empty((32, 32, channels), dtype)
                np.testing.assert_array_equal(dihedral_into(tile, k, flip_cols, flip_rows, out), expected)


def test_uniform_batches_redraw_nodata_windows_and_cache_equals_stream(tmp_path):
    """Windows above max_nodata_fraction are redrawn: the cached path judges all candidates at
    once from its summed-area tables, the streamed path reads them in turn; same batches."""
    rng = np.random.default_rng(4)
    for name, size in (("a", 160), ("b", 96)):
        data = rng.integers(1, 900, (2, size, size)).astype(np.uint16)
        data[:, : size // 2, :] = 0  # the top half is nodata in every band
        write_geotiff(tmp_path / "images" / f"{name}.tif", data, nodata=0)
        write_geotiff(tmp_path / "masks" / f"{name}.tif", (data[0] % 2).astype(np.uint8))
    cfg = data_cfg(format="mask_folder", root=str(tmp_path), val_fraction=0.0, batch_size=8,
                   max_nodata_fraction=0.25)
    train, _ = load_scenes(cfg)
    streamed = first_batches(build_dataset(train, cfg, training=True), 4)
    cached = first_batches(build_dataset(train, dataclasses.replace(cfg, cache=True), training=True), 4)
    for (x1, y1), (x2, y2) in zip(streamed, cached):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        ignored = (y1 == 255).mean(axis=(1, 2, 3))
        assert (ignored <= 0.25).all(), ignored
        assert ((x1 == 0).all(axis=-1) == (y1[..., 0] == 255)).all()  # nodata pixels: fill 0, label ignore
    assert any((y == 255).any() for _, y in streamed)  # windows near the nodata edge were kept


@pytest.mark.parametrize("sampling", ["uniform", "balanced"])
def test_cached_windows_cut_in_tf_equal_the_streamed_ones(tmp_path, sampling):
    """Cached scenes are cropped and turned by tf ops from each batch's window table: scenes of
    three shapes (one variable each), one smaller than the window (padded with fill / ignore),
    and a uint8 scene whose invalid pixels take the int16 dataset's -9999 fill, give the batches
    the streamed path reads, for uniform and class-balanced sampling, with nodata in every scene
    (balanced: both look for the centre class in labels ignored under nodata)."""
    rng = np.random.default_rng(5)
    shapes = {"a": (70, 90), "b": (48, 40), "c": (20, 26)}  # c is smaller than the 32 px window
    for name, (height, width) in shapes.items():
        dtype, nodata = (np.int16, -9999) if name == "a" else (np.uint8, 0)
        data = rng.integers(1, 200, (3, height, width)).astype(dtype)
        data[:, :4, :] = nodata
        write_geotiff(tmp_path / "images" / f"{name}.tif", data, nodata=nodata)
        mask = (rng.random((height, width)) < 0.1).astype(np.uint8)
        write_geotiff(tmp_path / "masks" / f"{name}.tif", mask)
    cfg = data_cfg(format="mask_folder", root=str(tmp_path), val_fraction=0.0, batch_size=4, sampling=sampling)
    train, _ = load_scenes(cfg)
    streamed = first_batches(build_dataset(train, cfg, training=True), 6)
    cached = first_batches(build_dataset(train, dataclasses.replace(cfg, cache=True), training=True), 6)
    for (x1, y1), (x2, y2) in zip(streamed, cached):
        assert x2.dtype == np.int16 and y2.dtype == np.uint8
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    pixels = np.concatenate([x for x, _ in cached])
    labels = np.concatenate([y for _, y in cached])
    assert ((pixels == -9999).all(axis=-1) == (labels[..., 0] == 255)).all()  # invalid: fill + ignore
    assert (pixels > 0).any() and (pixels == -9999).any()


def test_raster_handles_outlive_threads_and_reopen_changed_files(tmp_path):
    """Reads check a handle out of a pool: a thread that ends leaves its handle for the next
    one (no reopening, warm GDAL cache), and a file rewritten on disk is reopened."""
    import threading
    import time

    from tfseg.data import raster

    path = write_geotiff(tmp_path / "a.tif", np.full((1, 16, 16), 3, np.uint8))
    info = open_raster(path)
    seen = []

    def read():
        with raster.raster_handle(path) as src:
            seen.append(id(src))
            assert src.read(1)[0, 0] == 3 + len(seen) // 3

    for _ in range(2):
        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
    assert seen[0] == seen[1]  # the second thread got the first one's handle
    time.sleep(0.01)
    write_geotiff(path, np.full((1, 16, 16), 4, np.uint8))  # same path, new content
    read()
    assert raster.read_window_raw(info, Window(0, 0, 4, 4))[0][0, 0, 0] == 4
    raster.close_handles(path)


def test_cached_scene_ignored_count_equals_counting(tmp_path):
    """The summed-area table gives the same ignored-pixel counts as counting the label window."""
    from tfseg.data.labels import RasterizedLabels
    from tfseg.data.pipeline import cache_scene
    from tfseg.data.sources import Scene

    rng = np.random.default_rng(1)
    data = rng.integers(1, 50, (2, 70, 90)).astype(np.uint8)
    data[:, 20:45, 30:80] = 0  # nodata
    info = open_raster(write_geotiff(tmp_path / "a.tif", data, nodata=0))
    labels = RasterizedLabels(rng.integers(0, 2, (70, 90, 1)).astype(np.uint8))
    labels.array[60:, :5] = 255  # ignore in the source labels too
    cached = cache_scene(Scene(info, labels), 255)
    counts = []
    for window in (Window(0, 0, 32, 32), Window(25, 15, 32, 32), Window(70, 50, 32, 32), Window(-5, 60, 32, 32)):
        label = cached.label[0]
        c0, r0 = max(int(window.col_off), 0), max(int(window.row_off), 0)
        part = label[r0 : int(window.row_off) + 32, c0 : int(window.col_off) + 32]
        counts.append(int((part == 255).sum()))
        assert cached.ignored_count(window) == counts[-1]
    assert counts[1] > 0 and counts[3] > 0 and counts[2] == 0  # nodata; source ignore; neither


def test_evaluation_grid_counts_every_pixel_once(tmp_path):
    """The eval grid overlaps (eval_overlap, and the last window ends at the edge): each valid
    pixel's label is scored by exactly one tile, the rest of the overlap is ignore."""
    make_mask_folder(tmp_path, num_pairs=1, size=80)  # 80 px with 32 px windows, overlap 8: 0, 24, 48
    cfg = data_cfg(format="mask_folder", root=str(tmp_path), eval_overlap=8, val_fraction=0.0,
                   options={"mask_suffix": ".mask"}, max_nodata_fraction=1.0)
    (scene,) = load_scenes(cfg)[0]
    labels = np.concatenate([y.numpy() for _, y in build_dataset([scene], cfg, training=False)])
    assert labels.shape[0] == 9
    truth = scene.labels.rasterize(Window(0, 0, 80, 80), scene.info)
    assert int((labels != 255).sum()) == 80 * 80  # not 9 * 32 * 32 = 9216
    assert int((labels == 1).sum()) == int((truth == 1).sum())


def _mixed_dtype_scenes(tmp_path):
    """An int16 96² scene (nodata -9999, an 8x8 nodata corner) and a uint16 32² one (no nodata):
    tiles of int32, invalid pixels -9999."""
    from tfseg.data.labels import MaskLabels
    from tfseg.data.sources import Scene

    big = np.full((96, 96), 100, np.int16)
    big[:8, :8] = -9999
    scenes = []
    for name, image, nodata in (("s16", big, -9999), ("u16", np.full((32, 32), 200, np.uint16), None)):
        info = open_raster(write_geotiff(tmp_path / f"{name}.tif", image, nodata=nodata))
        mask = open_raster(write_geotiff(tmp_path / f"{name}.mask.tif", np.ones(image.shape, np.uint8)))
        scenes.append(Scene(info, MaskLabels(mask), name))
    return scenes


def test_mixed_dtypes_evaluation_and_read_tile_hold_the_dataset_fill(tmp_path):
    """Evaluation tiles and read_tile are allocated in the dataset's dtype: a uint16 scene padded
    past its edge holds the int16 scenes' -9999 (no overflow inside tf.data)."""
    scenes = _mixed_dtype_scenes(tmp_path)
    cfg = data_cfg(window_size=64, batch_size=1, max_nodata_fraction=1.0, task="binary", classes=["a"])
    tiles = [(x.numpy(), y.numpy()) for x, y in build_dataset(scenes, cfg, training=False)]
    small = [(x, y) for x, y in tiles if (x == 200).any()]
    assert len(small) == 1 and all(x.dtype == np.int32 for x, _ in tiles)
    x, y = small[0]
    assert (x[0, 32:, :] == -9999).all() and (x[0, :32, :32] == 200).all() and (y[0, 32:] == 255).all()
    assert (tiles[0][0][0, :8, :8] == -9999).all() and (tiles[0][1][0, :8, :8] == 255).all()
    image, label = read_tile(scenes[1], Window(0, 0, 64, 64), 255, fill=-9999)
    assert image.dtype == np.int32 and (image[40:, 40:] == -9999).all() and (image[:32, :32] == 200).all()
    image, _ = read_tile(scenes[1], Window(0, 0, 64, 64), 255, fill=float("nan"))  # a float run's NaN fill
    assert image.dtype == np.float32 and np.isnan(image[40:, 40:]).all()
    assert read_tile(scenes[1], Window(0, 0, 64, 64), 255, dtype=np.int32)[0].dtype == np.int32


def test_validation_split_takes_the_training_dtype_and_nodata(tmp_path):
    """The validation split is built in the training scenes' dtype with their nodata (as
    tfseg.train passes them): int16 (-9999) + uint16 training, uint16-only validation; float
    (NaN) training, integer validation. A validation dtype that does not cast safely is an error."""
    from tfseg.data.pipeline import DatasetError, dataset_dtype, dataset_nodata
    from tfseg.errors import TfsegError

    train = _mixed_dtype_scenes(tmp_path)
    val = train[1:]
    cfg = data_cfg(window_size=64, batch_size=1, max_nodata_fraction=1.0, task="binary", classes=["a"])
    dtype, nodata = dataset_dtype(train), dataset_nodata(train)
    with pytest.raises(DatasetError, match=r"no-data value -9999.0 cannot be stored in the tiles' dtype uint16"):
        build_dataset(val, cfg, training=False, nodata=nodata)
    (x, y), = [(x.numpy(), y.numpy()) for x, y in build_dataset(val, cfg, training=False, nodata=nodata, dtype=dtype)]
    assert x.dtype == np.int32 and (x[0, 32:] == -9999).all() and (x[0, :32, :32] == 200).all()
    (x, _), = [(x.numpy(), y.numpy()) for x, y in build_dataset(val, cfg, training=False, nodata=None,
                                                                 dtype=np.float32)]
    assert x.dtype == np.float32 and np.isnan(x[0, 32:]).all() and (x[0, :32, :32] == 200).all()
    with pytest.raises(TfsegError, match=r"s16.tif: int16 pixels cannot be held by the tiles' dtype uint16"):
        build_dataset(train, cfg, training=False, nodata=0, dtype=np.uint16)


def test_scale_augmentation_never_labels_pixels_blended_with_nodata():
    """The valid mask is resized bilinearly, like the image: a pixel whose interpolation touches
    a nodata pixel is invalid (fill, label ignore), so every labelled pixel holds a true value."""
    import tensorflow as tf

    from tfseg.config import AugmentConfig
    from tfseg.data.pipeline import _scale_and_flip

    image = np.full((64, 64, 1), 1000, np.uint16)
    image[:, 32:] = 0  # the right half is nodata (fill 0)
    mask = np.zeros((64, 64, 2), np.uint8)
    mask[:, :32, 0], mask[:, :32, 1], mask[:, 32:, 0] = 1, 1, 255
    for scale in (1.5, 0.7):
        aug = AugmentConfig(flip=False, rot90=False, scale=[scale, scale])
        out, label = _scale_and_flip(tf.constant(3, tf.int64), tf.constant(image), tf.constant(mask), aug, 64, 255,
                                     0, 0.0)
        out, label = out.numpy()[..., 0], label.numpy()[..., 0]
        assert (label != 255).any() and set(np.unique(out[label != 255]).tolist()) == {1000}, scale
        assert set(np.unique(label).tolist()) <= {1, 255} and (out[label == 255] == 0).all()


def test_dataset_mask_and_alpha_band_mark_invalid_pixels(tmp_path):
    """A GeoTIFF's internal mask (no nodata value) and an RGBA file's alpha band mark invalid
    pixels, as a nodata value does; the alpha band is a mask, not an image band (unless asked
    for by index); normalization statistics leave masked pixels out."""
    import rasterio

    from tfseg.data.labels import MaskLabels
    from tfseg.data.raster import read_window_raw
    from tfseg.data.sources import Scene

    rng = np.random.default_rng(0)
    pixels = rng.integers(10, 60, (3, 8, 8)).astype(np.uint8)
    masked = write_geotiff(tmp_path / "masked.tif", pixels)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(masked, "r+") as dst:
        mask = np.full((8, 8), 255, np.uint8)
        mask[:4] = 0
        dst.write_mask(mask)
    rgba = write_geotiff(tmp_path / "rgba.tif", np.concatenate([pixels, mask[None]]), photometric="RGB",
                         alpha="YES")
    for path in (masked, rgba):
        info = open_raster(path)
        image, valid = read_window_raw(info, Window(0, 0, 8, 8))
        assert info.num_bands == 3 and image.shape == (8, 8, 3), path
        assert not valid[:4].any() and valid[4:].all() and (image[:4] == 0).all(), path
        np.testing.assert_array_equal(image[4:], pixels[:, 4:].transpose(1, 2, 0))
        norm = compute_normalization([info])
        np.testing.assert_allclose(norm.mean, pixels[:, 4:].reshape(3, -1).mean(axis=1))
        labels = MaskLabels(open_raster(write_geotiff(tmp_path / "m.tif", np.ones((8, 8), np.uint8))))
        _, label = read_tile(Scene(info, labels), Window(0, 0, 8, 8), 255)
        assert (label[:4] == 255).all() and (label[4:] == 1).all()
    with_alpha = open_raster(rgba, bands=[1, 2, 3, 4])
    assert read_window_raw(with_alpha, Window(0, 0, 8, 8))[0].shape == (8, 8, 4)
    # a nodata value and a dataset mask together: both are invalid
    tagged = pixels.copy()
    tagged[:, 7, 7] = 5
    both = write_geotiff(tmp_path / "both.tif", tagged, nodata=5)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(both, "r+") as dst:
        dst.write_mask(mask)
    _, valid = read_window_raw(open_raster(both), Window(0, 0, 8, 8))
    assert not valid[:4].any() and not valid[7, 7] and valid[4:7].all()


def test_dataset_input_errors_are_tfseg_errors(tmp_path):
    from tfseg.data.pipeline import DatasetError, cache_scene

    scenes = _mixed_dtype_scenes(tmp_path)
    cfg = data_cfg(window_size=64, task="binary", classes=["a"])
    with pytest.raises(DatasetError, match="no scenes given"):
        build_dataset([], cfg, training=False)
    with pytest.raises(DatasetError, match="nodata must be a number"):
        build_dataset(scenes, cfg, training=False, nodata="zero")
    with pytest.raises(DatasetError, match=r"data.task is multilabel with 2 classes"):
        build_dataset(scenes, data_cfg(task="multilabel", classes=["a", "b"]), training=False)
    rgb = open_raster(write_geotiff(tmp_path / "rgb.tif", np.ones((3, 32, 32), np.uint16)))
    with pytest.raises(DatasetError, match=r"rgb.tif: 3 band\(s\), but .*s16.tif has 1"):
        build_dataset([scenes[0], dataclasses.replace(scenes[1], info=rgb)], cfg, training=False)
    with pytest.raises(DatasetError, match="cached with no-data fill 0.0"):
        cache_scene(cache_scene(scenes[1], 255), 255, fill=7.0)
