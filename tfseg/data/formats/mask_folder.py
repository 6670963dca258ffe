"""Image files and mask files paired by name (:mod:`tfseg.data.pairing`).

Public helper (also used by ``tfseg.evaluate pixels``):

- ``pair_images_and_masks(images, masks, mask_suffix=None, strict=True, image_pattern="",
  mask_pattern="") -> [(image, mask), ...]``: ``images``/``masks`` are folders or lists of files
  (GeoTIFF, PNG or JPEG), paired by :func:`tfseg.data.pairing.pair_files`: name patterns
  (``"{id}_sat.jpg"`` <-> ``"{id}_mask.png"``), a mask suffix (``.mask`` for ``X.mask.tif``;
  ``""`` = same stem) or, when none is given, the common naming detected. An image without a mask
  raises ``MaskFolderError`` listing them with their count (``strict=False`` skips them with a
  warning); masks without an image are listed in a warning.

Dataset layout for ``data.format: mask_folder`` (e.g. ``kampala_buildings/train``):
``root/<images_dir>/*`` and ``root/<masks_dir>/*`` (default ``images``/``masks``; one folder for
both works with patterns, ``.`` = the root itself), searched recursively so ``root/<area>/images`` works too; ``root/train/...``
+ ``root/val/...`` are used as the split when both exist, otherwise scenes are split by
``data.val_fraction`` (seeded). Binary
masks hold {0,1} (255 = ignore) or {0,255}, one encoding for the whole dataset: decided once from
the values of all its masks (a 255 is never an object in one file and ignored in another; files
holding only 1 beside files holding only 255 are an error naming them), or set by
``data.options.object_value`` (1 or 255); multi-class masks hold class indices (``data.ignore_index``
= ignore); multi-label masks one 0/1 band per class. The file's nodata and NaN are ignored (in a
{0,255} binary mask 255 stays the object); any other value (a class index >= the number of classes,
300 in a 16-bit mask, 2.5 in a float mask) is an error naming file and value.
Masks must be on the image's grid (same size; same georeferencing when both are GeoTIFFs): a
mismatch raises an error naming both files.

Options (``data.options``): ``images_dir``, ``masks_dir``, ``mask_suffix``, ``image_pattern``,
``mask_pattern``, ``object_value``, ``labels_dir`` (default ``labels``), ``targets`` (with ``boundary_width``,
``contact_spacing``).

Per-image vector labels: ``<labels_dir>/X.geojson`` beside ``<images_dir>/X.tif`` (any CRS,
reprojected onto the image's grid) are read when the images are georeferenced; the pairing above
decides which mask goes with an image, the GeoJSON is found by the image's stem. They keep touching
buildings apart as objects (object metrics and the operating-point search score against them),
and ``data.options.targets`` (``footprint``, ``boundary``, ``contact``, as in the spacenet format)
makes the instance-aware target channels from them; a GeoJSON whose image does not exist is
reported in a warning naming it.

Example:
    >>> pairs = pair_images_and_masks("train/images", "train/masks", mask_suffix=".mask")
    >>> pairs[0]
    (PosixPath('train/images/OAM-1.tif'), PosixPath('train/masks/OAM-1.mask.tif'))
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from ..pairing import PairingError, pair_files

log = logging.getLogger(__name__)

# data.options of this format (and of colour_mask, which pairs files the same way): name -> type
PAIRING_OPTIONS = {"images_dir": str, "masks_dir": str, "mask_suffix": str, "image_pattern": str, "mask_pattern": str}
# binary masks: the raw value of the object class, 1 ({0,1}, 255 = ignore) or 255 ({0,255}); default: decided
# once from the values of all the dataset's masks
MASK_OPTIONS = {"object_value": int}
# building target channels made from per-image GeoJSON labels (tfseg.data.formats.target_spec)
TARGET_OPTIONS = {"targets": list[str], "boundary_width": int, "contact_spacing": int}
OPTIONS = {**PAIRING_OPTIONS, **MASK_OPTIONS, "labels_dir": str, **TARGET_OPTIONS}

MaskFolderError = PairingError  # images and masks cannot be paired; the message names the files


def pair_images_and_masks(images, masks, mask_suffix: Optional[str] = None, strict: bool = True,
                          image_pattern: str = "", mask_pattern: str = "") -> list[tuple[Path, Path]]:
    """Pairs ``(image, mask)`` (see the module docstring)."""
    return pair_files(images, masks, image_pattern, mask_pattern, mask_suffix, strict).pairs


def _pairs_under(root: Path, options: dict) -> list[tuple[Path, Path]]:
    images_dir, masks_dir = options.get("images_dir", "images"), options.get("masks_dir", "masks")
    if images_dir == ".":  # images (and, with masks_dir ".", masks) directly in the root
        folders = [root]
    else:
        folders = sorted(p for p in [root, *root.rglob("*")] if p.is_dir() and p.name == images_dir)
    pairs = []
    for folder in folders:
        masks = folder if masks_dir in (images_dir, ".") else folder.parent / masks_dir
        if not masks.is_dir():
            raise MaskFolderError(f"image folder {folder} has no sibling mask folder {masks}")
        pairs += pair_images_and_masks(folder, masks, options.get("mask_suffix"), True,
                                       options.get("image_pattern", ""), options.get("mask_pattern", ""))
    if not pairs:
        raise MaskFolderError(
            f"no image/mask pairs under {root} (looked for '{images_dir}/' folders with a sibling "
            f"'{masks_dir}/'; set data.options.images_dir / masks_dir)"
        )
    return pairs


def find_pairs(data_cfg, split: str = "") -> list[tuple[Path, Path]]:
    """All pairs under ``data.root`` (or ``data.root/<split>``)."""
    root = Path(data_cfg.root) / split if split else Path(data_cfg.root)
    return _pairs_under(root, data_cfg.options)


def file_lookup(mask_path, mask_info, task: str, num_classes: int, ignore_index: int,
                object_value: Optional[int] = None, values: Optional[set] = None):
    """The raw value -> label table of one mask file (``None`` for multi-label: values as they
    are), after checking every value it holds (``values``: the file's, when already read): a value
    that is no class (or > 255) is an error naming the file and the value, never clipped or
    silently ignored. Binary masks: ``object_value`` is the dataset's (:func:`binary_object_values`)."""
    from ..labels import binary_mask_lookup, check_multilabel_values, class_mask_lookup, mask_values

    source, nodata = str(mask_path), mask_info.nodata
    if task == "multilabel":
        for band in range(1, num_classes + 1):
            check_multilabel_values(mask_values(mask_path, band), ignore_index, f"{source} (band {band})", nodata)
        return None
    values = mask_values(mask_path) if values is None else values
    if task == "binary":
        return binary_mask_lookup(values, ignore_index, source, nodata, object_value)
    return class_mask_lookup(values, num_classes, ignore_index, source, nodata)


def binary_object_values(masks, data_cfg) -> tuple[int, dict]:
    """``(object_value, values)``: the raw object value (1 or 255) of a dataset's binary masks,
    ``data.options.object_value`` or decided once from the values of all of them
    (:func:`tfseg.data.labels.binary_object_value`: a 255 never means "object" in one file and
    "ignore" in another), and each file's values (``masks``: ``(path, RasterInfo)``)."""
    from ..labels import BINARY_OBJECT_VALUES, binary_object_value, binary_values, mask_values

    values = {str(path): mask_values(path) for path, _ in masks}
    option = data_cfg.options.get("object_value")
    option = int(option) if option is not None else None  # type-checked by check_options
    if option is not None and option not in BINARY_OBJECT_VALUES:
        raise MaskFolderError(f"config key 'data.options.object_value': expected 1 ({{0,1}} masks, 255 = ignore) "
                              f"or 255 ({{0,255}} masks), got {option!r}")
    checked = {str(path): binary_values(values[str(path)], str(path), info.nodata) for path, info in masks}
    object_value = option if option is not None else binary_object_value(checked, f"binary masks under {data_cfg.root}")
    if object_value == 255:
        tagged = [str(path) for path, info in masks if info.nodata == 255 and 255 in checked[str(path)]]
        if tagged:
            log.warning("%d binary mask(s) declare nodata 255, but 255 is the object value of these {0,255} masks: "
                        "read as objects, e.g. %s", len(tagged), tagged[0])
    return object_value, values


def _warn_orphan_labels(pairs, labels_dir: str) -> None:
    """A GeoJSON in a labels folder whose image is not there: named in a warning (it is unused)."""
    stems: dict = {}
    for image, _ in pairs:
        stems.setdefault((image.parent.parent / labels_dir, image.parent), set()).add(image.stem)
    for (folder, images), known in stems.items():
        if folder.is_dir():
            orphans = sorted(p for p in folder.glob("*.geojson") if p.stem not in known)
            if orphans:
                log.warning("%d label file(s) in %s without an image, e.g. %s (no %s.<ext> in %s): not used",
                            len(orphans), folder, orphans[0], orphans[0].stem, images)


def load_mask_folder(data_cfg):
    """Scenes of ``data.format: mask_folder`` (see the module docstring)."""
    from ..labels import MaskLabels, VectorLabels, check_same_grid
    from ..raster import open_raster
    from ..sources import Scene
    from . import check_band_count, split_scenes, target_spec

    root = Path(data_cfg.root)
    task = data_cfg.task  # resolved by config validation
    multilabel = task == "multilabel"
    targets = target_spec(data_cfg)
    labels_dir = data_cfg.options.get("labels_dir", "labels")

    def scenes_of(pairs):  # the mask labels get their lookup once every mask file is known
        scenes = []
        for image_path, mask_path in pairs:
            info = open_raster(image_path, data_cfg.bands)
            check_band_count(info, data_cfg)
            label_file = image_path.parent.parent / labels_dir / f"{image_path.stem}.geojson"
            vectors = None
            if targets.multi and not label_file.is_file():
                raise MaskFolderError(
                    f"data.options.targets {list(targets.channels)} needs the polygons of image {image_path}: "
                    f"{label_file} not found"
                )
            if label_file.is_file() and (info.crs or targets.multi) and task != "multiclass":
                vectors = VectorLabels.from_file(label_file, info)
            if targets.multi:
                scenes.append(Scene(info, targets.wrap(vectors), name=image_path.stem, vectors=vectors))
                continue
            mask_info = open_raster(mask_path)
            check_same_grid(info, mask_info)
            channels = len(data_cfg.classes) if multilabel else 1
            if mask_info.count < channels:
                raise MaskFolderError(
                    f"mask {mask_path} has {mask_info.count} band(s); multilabel with "
                    f"{channels} classes needs one band per class"
                )
            scenes.append(Scene(info, MaskLabels(mask_info, None, channels), name=image_path.stem,
                                vectors=vectors if task == "binary" else None))
        _warn_orphan_labels(pairs, labels_dir)
        return scenes

    if "object_value" in data_cfg.options and task != "binary":
        raise MaskFolderError(f"config key 'data.options.object_value': binary masks only (data.task is {task!r})")
    if (root / "train").is_dir() and (root / "val").is_dir():
        splits = scenes_of(find_pairs(data_cfg, "train")), scenes_of(find_pairs(data_cfg, "val"))
    else:
        splits = (scenes_of(find_pairs(data_cfg)),)
    masked = [s for split in splits for s in split if isinstance(s.labels, MaskLabels)]
    object_value, values = None, {}
    if task == "binary" and masked:  # one encoding for every mask of the dataset, both splits
        object_value, values = binary_object_values([(s.labels.info.path, s.labels.info) for s in masked], data_cfg)
    for scene in masked:
        mask = scene.labels.info
        scene.labels.lookup = file_lookup(mask.path, mask, task, len(data_cfg.classes), data_cfg.ignore_index,
                                          object_value, values.get(str(mask.path)))
    return splits if len(splits) == 2 else split_scenes(splits[0], data_cfg)
