"""Instance-aware targets (footprint / boundary / contact) for scenes and mask_folder + GeoJSON."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from rasterio.windows import Window

from tfseg import config as config_module
from tfseg.data.formats import DataFormatError, load_scenes

from .data.fixtures import TRANSFORM, UTM, pixel_box_to_world, write_geojson
from .data.formats import make_mask_folder_with_labels, make_scenes

TARGETS = ["footprint", "boundary", "contact"]


def data_cfg(**data):
    return config_module.from_dict({"data": data}).data


def full_label(scene):
    return scene.labels.rasterize(Window(0, 0, scene.info.width, scene.info.height), scene.info)


def target_cfg(root, fmt="mask_folder", **options):
    pairing = {"mask_suffix": ".mask"} if fmt == "mask_folder" else {}  # data.options are checked per format
    return data_cfg(format=fmt, root=str(root), task="multilabel", classes=TARGETS, val_fraction=0.0,
                    options={**pairing, "targets": TARGETS, "boundary_width": 3, "contact_spacing": 3, **options})


@pytest.mark.parametrize("labels_crs", ["EPSG:4326", UTM, "EPSG:3857"])
def test_mask_folder_geojson_targets_separate_touching_buildings(tmp_path, labels_crs):
    # two buildings 2 px apart (columns 8-20 and 22-34): the mask cannot tell them apart once they
    # touch, the GeoJSON can; the 2-px gap is contact, background far from both is not
    mask = make_mask_folder_with_labels(tmp_path, labels_crs=labels_crs, boxes=((8, 10, 20, 30), (22, 10, 34, 30)))
    train, _ = load_scenes(target_cfg(tmp_path))
    (scene,) = train
    label = full_label(scene)
    assert label.shape == (48, 48, 3)
    footprint, boundary, contact = (label[..., k] for k in range(3))
    np.testing.assert_array_equal(footprint, mask)  # reprojected from labels_crs onto the UTM grid
    assert contact[12:28, 20:22].all()  # the gap between the two
    assert not contact[12:28, 2:6].any() and not contact[40:, :].any()  # background away from two buildings
    assert not (contact & footprint).any()
    assert boundary[10, 14] and boundary[20, 8] and not boundary[20, 14]
    assert len(scene.vectors.geometries) == 2


def test_mask_folder_touching_buildings_contact_at_the_shared_edge(tmp_path):
    make_mask_folder_with_labels(tmp_path)  # sharing the edge at column 20
    (scene,), _ = load_scenes(target_cfg(tmp_path))
    label = full_label(scene)
    assert label[..., 0][10:30, 8:34].all()  # one blob of footprint...
    assert label[..., 1][15:25, 19:21].all()  # ...with a boundary where the two meet
    # contact: background next to both buildings, above and below the shared edge
    assert label[..., 2][8:10, 18:22].all() and label[..., 2][30:32, 18:22].all()
    assert not label[..., 2][7:10, 8:14].any()  # next to only one building


def test_mask_folder_binary_keeps_masks_and_reads_vectors_for_objects(tmp_path):
    mask = make_mask_folder_with_labels(tmp_path)
    cfg = data_cfg(format="mask_folder", root=str(tmp_path), val_fraction=0.0, options={"mask_suffix": ".mask"})
    (scene,), _ = load_scenes(cfg)
    np.testing.assert_array_equal(full_label(scene), mask)  # training target unchanged: the mask
    assert len(scene.vectors.geometries) == 2  # two objects for object metrics


def test_scenes_format_targets(tmp_path):
    make_scenes(tmp_path, boxes=((10, 10, 40, 30), (42, 10, 70, 30)))
    train, val = load_scenes(target_cfg(tmp_path, fmt="scenes"))
    label = full_label(train[0])
    assert label.shape == (96, 96, 3)
    assert label[..., 2][12:28, 40:42].all() and not label[..., 2][50:, :].any()
    assert label[..., 0][20, 20] and not label[..., 0][20, 41]


def test_targets_bad_input(tmp_path, caplog):
    make_mask_folder_with_labels(tmp_path)
    with pytest.raises(DataFormatError, match=r"data.options.targets.*'roof'.*allowed: \['footprint', 'boundary', 'contact'\]"):
        load_scenes(target_cfg(tmp_path, targets=["footprint", "roof"]))
    with pytest.raises(DataFormatError, match="data.task"):
        load_scenes(data_cfg(format="mask_folder", root=str(tmp_path), options={"targets": TARGETS}))
    # a GeoJSON whose image does not exist: a warning naming it
    write_geojson(tmp_path / "labels" / "ghost.geojson", [pixel_box_to_world(0, 0, 4, 4, _transform())], src_crs=UTM)
    with caplog.at_level(logging.WARNING):
        load_scenes(target_cfg(tmp_path))
    assert "ghost.geojson" in caplog.text and "without an image" in caplog.text
    # targets need the polygons of every image
    (tmp_path / "labels" / "chip.geojson").unlink()
    with pytest.raises(ValueError, match=r"chip.geojson not found"):
        load_scenes(target_cfg(tmp_path))


def _transform():
    return TRANSFORM
