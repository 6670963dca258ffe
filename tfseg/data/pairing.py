"""Pair image files with mask files: by name patterns, or by the common naming styles detected.

One implementation for ``data.format: mask_folder``, ``colour_mask`` and ``tfseg.evaluate pixels``.

* **Patterns** (``image_pattern`` / ``mask_pattern``): file names with one ``{id}``, e.g.
  ``"{id}_sat.jpg"`` <-> ``"{id}_mask.png"`` (DeepGlobe, both in one folder) or
  ``"img_{id}.tif"`` <-> ``"mask_{id}.tif"``; ``*`` matches any characters but a dot
  (``"{id}.*"``: any extension). A missing side defaults to ``"{id}.*"``. Files of the image folder matching neither pattern are counted in
  a warning.
* **Mask suffix** (``mask_suffix``): ``X.<ext>`` <-> ``X<mask_suffix>.<ext>`` (``""``: same stem).
* **Detection** (neither given): every rule of :data:`DETECTED_RULES` (same stem, so ``X.tiff`` <->
  ``X.tif``; ``X`` <-> ``X.mask`` / ``X_mask`` / ``X_label`` / ``X_gt``; ``X_sat`` <-> ``X_mask``;
  ``img_X`` <-> ``mask_X``; ...) is tried and the one pairing the most files wins; what was
  detected is logged and returned.

Images without a mask are an error (``strict=False``: a warning) and masks without an image a
warning; both list the files with their counts.

Example:
    >>> result = pair_files("train/images", "train/masks")
    >>> result.rule, result.pairs[0]
    ("'{id}.*' <-> '{id}.mask.*'", (PosixPath('train/images/a.tif'), PosixPath('train/masks/a.mask.tif')))
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

from ..errors import TfsegError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2")
# (image pattern, mask pattern) tried in this order when nothing is given; ties keep the earlier
DETECTED_RULES = (
    ("{id}.*", "{id}.*"),
    *(("{id}.*", "{id}" + suffix + ".*") for suffix in (".mask", "_mask", "-mask", "_label", "_labels", "_gt",
                                                          "_seg", "_segmentation")),
    *(("{id}" + image + ".*", "{id}" + mask + ".*") for image in ("_sat", "_img", "_image", "_rgb", "_RGB")
      for mask in ("_mask", "_label", "_labels", "_gt")),
    *((image + "{id}.*", mask + "{id}.*") for image in ("img_", "image_", "img", "image", "rgb_")
      for mask in ("mask_", "label_", "gt_", "mask", "label")),
)


class PairingError(TfsegError):
    """Images and masks cannot be paired; the message names the files and counts."""


@dataclass
class Pairing:
    """The pairs found, the rule used (``"'{id}_sat.jpg' <-> '{id}_mask.png'"``) and what was left."""

    pairs: list
    rule: str
    detected: bool = False
    images_without_mask: list = field(default_factory=list)
    masks_without_image: list = field(default_factory=list)


def _files(where: Union[str, Path, Iterable]) -> list[Path]:
    if isinstance(where, (str, Path)):
        folder = Path(where)
        if not folder.is_dir():
            raise FileNotFoundError(f"folder not found: {folder}")
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return sorted(Path(p) for p in where)


def compile_pattern(pattern: str, key: str = "pattern") -> re.Pattern:
    """A file-name pattern with one ``{id}`` (and optional ``*``) as an anchored regex."""
    if pattern.count("{id}") != 1:
        raise PairingError(f"{key}: expected a file name pattern with exactly one '{{id}}' "
                           f"(e.g. '{{id}}_sat.jpg'), got {pattern!r}")
    head, tail = pattern.split("{id}")

    def literal(text):
        return "[^.]*".join(re.escape(part) for part in text.split("*"))

    return re.compile(f"^{literal(head)}(?P<id>.+?){literal(tail)}$")


def _ids(files: list[Path], regex: re.Pattern) -> dict:
    out: dict = {}
    for path in files:
        match = regex.match(path.name)
        if match:
            out.setdefault(match.group("id"), []).append(path)
    return out


def _match(image_files, mask_files, image_pattern: str, mask_pattern: str):
    """(pairs, images without mask, masks without image, duplicates) under one pattern pair."""
    image_regex = compile_pattern(image_pattern, "image_pattern")
    mask_regex = compile_pattern(mask_pattern, "mask_pattern")
    masks = _ids(mask_files, mask_regex)
    mask_set = {p for group in masks.values() for p in group}
    # one folder for both (DeepGlobe): a file that is a mask under this rule is no image
    images = _ids([p for p in image_files if p not in mask_set], image_regex)
    pairs, lonely, duplicates = [], [], []
    for image_id, group in sorted(images.items()):
        found = [m for m in masks.pop(image_id, []) if m not in group]
        if len(group) > 1 or len(found) > 1:
            duplicates.append((image_id, group + found))
        if found:
            pairs.append((group[0], found[0]))
        else:
            lonely += group
    orphans = sorted(p for group in masks.values() for p in group)
    matched = {p for group in images.values() for p in group} | mask_set
    return sorted(pairs), sorted(lonely), orphans, duplicates, matched


def _listing(files: list, limit: int = 5) -> str:
    names = ", ".join(str(p) for p in files[:limit])
    return names + (f", ... ({len(files) - limit} more)" if len(files) > limit else "")


def pair_files(images, masks, image_pattern: str = "", mask_pattern: str = "", mask_suffix: Optional[str] = None,
               strict: bool = True) -> Pairing:
    """Pair ``images`` with ``masks`` (folders or lists of files; see the module docstring)."""
    image_files, mask_files = _files(images), _files(masks)
    detected = not (image_pattern or mask_pattern) and mask_suffix is None
    if image_pattern or mask_pattern:
        if mask_suffix:
            raise PairingError(f"give either image_pattern/mask_pattern or mask_suffix, not both "
                               f"(got {image_pattern!r}/{mask_pattern!r} and mask_suffix {mask_suffix!r})")
        rules = [(image_pattern or "{id}.*", mask_pattern or "{id}.*")]
    elif mask_suffix is not None:
        rules = [("{id}.*", "{id}" + mask_suffix.replace("*", "") + ".*")]
    else:
        rules = list(DETECTED_RULES)
    best = None
    for rule in rules:
        result = _match(image_files, mask_files, *rule)
        if best is None or len(result[0]) > len(best[1][0]):
            best = (rule, result)
    (image_rule, mask_rule), (pairs, lonely, orphans, duplicates, matched) = best
    rule = f"{image_rule!r} <-> {mask_rule!r}"
    if duplicates:
        image_id, files = duplicates[0]
        raise PairingError(f"id {image_id!r} names several files under {rule}: {_listing(files)}")
    images_where = images if isinstance(images, (str, Path)) else "the image list"
    masks_where = masks if isinstance(masks, (str, Path)) else "the mask list"
    if detected and pairs:
        log.info("paired %d image(s) in %s with masks in %s by the detected naming %s", len(pairs), images_where,
                 masks_where, rule)
    if not detected:
        neither = [p for p in image_files if p not in matched]
        if neither:
            log.warning("%d file(s) in %s match neither %s: %s", len(neither), images_where, rule, _listing(neither))
    if lonely:
        how = (f"naming detected: {rule}; none of the common namings pairs more (set image_pattern / "
               f"mask_pattern, e.g. '{{id}}_sat.jpg' / '{{id}}_mask.png')" if detected else f"paired by {rule}")
        message = (f"no mask for {len(lonely)} of {len(lonely) + len(pairs)} image(s) in {images_where} "
                   f"(masks in {masks_where}; {how}): {_listing(lonely)}")
        if strict or not pairs:
            raise PairingError(message)
        log.warning("%s: skipped", message)
    if orphans:
        log.warning("%d of %d mask(s) in %s have no image in %s (paired by %s): %s", len(orphans),
                    len(orphans) + len(pairs), masks_where, images_where, rule, _listing(orphans))
    return Pairing(pairs, rule, detected, lonely, orphans)
