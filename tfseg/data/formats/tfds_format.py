"""``data.format: tfds`` — tiles from a TFDS dataset, e.g. one built by ``tfseg_tiles``.

``data.options``: ``name`` (default ``tfseg_tiles``; any registered TFDS name, with
``/config``), ``data_dir`` (TFDS data directory), ``train_split`` (``train``), ``val_split``
(``validation``), ``image_key`` (``image``), ``label_key`` (``label``), ``valid_key`` (``valid``;
absent = all valid), ``max_examples`` (0 = all), ``manual_dir`` (build the dataset from that
source first if it is not prepared yet). Examples are held in memory as scenes (one per tile),
so this suits tile datasets; ``data.root`` is unused.

Example:
    >>> cfg = load("configs/tfds.yaml", ["data.options.data_dir=/data/tfds"])
"""
from __future__ import annotations

import numpy as np


# data.options of this format: name -> type
OPTIONS = {"name": str, "data_dir": str, "manual_dir": str, "image_key": str, "label_key": str, "valid_key": str,
           "max_examples": int, "train_split": str, "val_split": str}


def load_tfds(data_cfg):
    from . import DataFormatError

    try:
        import tensorflow_datasets as tfds

        import tfseg.data.tfds  # noqa: F401  (registers tfseg_tiles)
    except ImportError:
        raise DataFormatError(
            'config key \'data.format\': tfds needs tensorflow-datasets: pip install "tfseg[tfds]"'
        ) from None
    from ..labels import MaskLabels
    from ..raster import array_info
    from ..sources import Scene

    options = data_cfg.options
    name = options.get("name", "tfseg_tiles")
    kwargs = {"data_dir": options["data_dir"]} if options.get("data_dir") else {}
    if options.get("manual_dir"):
        kwargs["download_and_prepare_kwargs"] = {
            "download_config": tfds.download.DownloadConfig(manual_dir=str(options["manual_dir"]))
        }
    else:
        kwargs["download"] = False
    image_key, label_key = options.get("image_key", "image"), options.get("label_key", "label")
    valid_key, limit = options.get("valid_key", "valid"), int(options.get("max_examples", 0))

    def scenes_of(split):
        try:
            ds = tfds.load(name, split=split, **kwargs)
        except Exception as exc:  # tfds raises several types for a missing/unknown dataset
            raise DataFormatError(f"config key 'data.options.name': cannot load TFDS {name!r} split {split!r}: {exc}") from None
        scenes = []
        for i, example in enumerate(tfds.as_numpy(ds)):
            if limit and i >= limit:
                break
            if image_key not in example or label_key not in example:
                raise DataFormatError(
                    f"TFDS {name!r}: examples have keys {sorted(example)}, expected "
                    f"data.options.image_key={image_key!r} and label_key={label_key!r}"
                )
            image = example[image_key].astype(np.float32)
            if image.ndim == 2:
                image = image[..., None]
            if valid_key in example:
                image[example[valid_key] == 0] = np.nan  # NaN reads as nodata
            label = example[label_key]
            if label.ndim == 2:
                label = label[..., None]
            scene_name = example.get("scene", b"").decode() if isinstance(example.get("scene"), bytes) else ""
            info = array_info(image, f"tfds:{name}/{split}/{i}")
            labels = MaskLabels(array_info(label.astype(np.uint8), f"tfds:{name}/{split}/{i}:label"), None, label.shape[-1])
            scenes.append(Scene(info, labels, name=scene_name or str(i)))
        if not scenes:
            raise DataFormatError(f"TFDS {name!r} split {split!r} holds no examples")
        return scenes

    return scenes_of(options.get("train_split", "train")), scenes_of(options.get("val_split", "validation"))
