"""Dstl Satellite Imagery Feature Detection: 20 bands in, 10 multi-label classes out, end to end.

``python -m pipelines.dstl [--model unet20|res50unet20] [--run-dir DIR] [--data-root DSTL_DIR]
[--quick] [--config YAML] [--set KEY=VALUE ...]``

1. data: ``--data-root`` is the Kaggle download, unzipped: ``three_band/<id>.tif``,
   ``sixteen_band/<id>_{M,A,P}.tif``, ``train_wkt_v4.csv``, ``grid_sizes.csv``. Without it, a
   learnable dataset in exactly that layout is generated into ``RUN_DIR/data``
   (``pipelines/generate.py``). The 3 + 8 + 8 + 1 = 20 channels are stacked on the three-band grid
   (M/A/P resampled bilinearly on the fly); labels are the WKT multipolygons of the 10 classes.
   Images are split train/validation by ``data.val_fraction`` (seeded).
2. train ``configs/dstl_unet20.yaml`` (plain UNet, 10 sigmoid outputs) or
   ``configs/dstl_res50unet20.yaml`` (UNet on a ResNet-50 encoder + residual stem on the raw
   20 bands) into ``RUN_DIR/run``; per-class IoU/F1 on the validation images (best epoch, from
   ``history.csv``) with each class's positive pixels there (``val_pixels``; a class absent from
   truth and prediction has no score: ``null``) and ``mean_iou_present`` over the classes present
   in the validation truth (absent ones left out).
3. export ``RUN_DIR/models/dstl/1`` (``tfseg.export``); predict one validation image (its 20
   stacked bands written as ``RUN_DIR/sample/<id>_20band.tif``) with the SavedModel into
   ``RUN_DIR/predict`` (10-band probability GeoTIFF).

Example:
    python -m pipelines.dstl --model unet20 --run-dir runs/dstl_unet20
    python -m pipelines.dstl --model res50unet20 --data-root /data/dstl
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the pipelines are modules of the checkout
    sys.exit("run it from the repository root as: python -m pipelines.dstl [ARGS]")

import tfseg  # noqa: E402
from pipelines import _common as common  # noqa: E402

CONFIGS = {"unet20": common.REPO / "configs" / "dstl_unet20.yaml",
           "res50unet20": common.REPO / "configs" / "dstl_res50unet20.yaml"}
GENERATED = {"full": {"num_images": 8, "size": 256}, "quick": {"num_images": 4, "size": 96}}
QUICK = {"unet20": ["train.epochs=2", "data.train_windows_per_epoch=8", "data.batch_size=4", "data.window_size=64",
                    "model.depth=3", "model.filters=8", "train.num_figure_tiles=2"],
         "res50unet20": ["train.epochs=1", "data.train_windows_per_epoch=4", "data.batch_size=2",
                         "data.window_size=64", "train.num_figure_tiles=1",
                         "model.decoder_filters=[32,16,16,8,8]"]}


def per_class_scores(history: Path, monitor: str, mode: str) -> dict:
    """``{class: {"iou", "f1"}}`` of the best epoch's validation columns ``val_iou_<c>``/``val_f1_<c>``;
    ``None`` (``null`` in pipeline.json) for a class absent from the validation truth and
    prediction (NaN or empty in history.csv: tfseg's per-class metrics have no score for it)."""
    best = tfseg.best_epoch(history, monitor, mode)
    if best is None:
        raise common.PipelineError(f"{history}: no epochs")
    out = {}
    for key, value in best.items():
        for kind in ("iou", "f1"):
            prefix = f"val_{kind}_"
            if key.startswith(prefix):
                out.setdefault(key[len(prefix):], {})[kind] = _score(value)
    return out


def _score(value):
    """A history value rounded, or None where it is not a finite number (an absent class)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return round(number, 4) if math.isfinite(number) else None


def label_pixels(scenes, classes) -> dict:
    """Positive pixels per class in ``scenes`` (a class absent from both truth and prediction has
    no score in tfseg's per-class metrics, ``null``; the counts say which classes are present)."""
    import numpy as np
    from rasterio.windows import Window

    counts = np.zeros(len(classes), np.int64)
    for scene in scenes:
        labels = scene.labels.rasterize(Window(0, 0, scene.info.width, scene.info.height), scene.info)
        counts += (labels.reshape(-1, labels.shape[-1]) == 1).sum(axis=0)
    return {name: int(n) for name, n in zip(classes, counts)}


def write_stacked(scene, path: Path) -> Path:
    """The scene's stacked bands (float32, its three-band grid) as one GeoTIFF for ``predict``."""
    import numpy as np
    import rasterio

    image, _ = tfseg.read_raster(scene.info)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=image.shape[1], height=image.shape[0], count=image.shape[2],
                       dtype="float32", crs=scene.info.crs, transform=scene.info.affine) as dst:
        dst.write(np.moveaxis(image.astype(np.float32), -1, 0))
    return path


def run(args) -> dict:
    import warnings

    from pipelines.generate import make_dstl_dataset

    start = time.monotonic()
    load_start = common.load_average()
    run_dir = Path(args.run_dir)
    root, generated, cfg = common.given_or_generated_config(
        args, run_dir, args.config or CONFIGS[args.model], QUICK[args.model], "Dstl data",
        "expected three_band/, sixteen_band/, "
        "train_wkt_v4.csv and grid_sizes.csv (the Kaggle download, unzipped)",
        make_dstl_dataset, GENERATED["quick" if args.quick else "full"])
    _, val = tfseg.load_scenes(cfg.data)

    train_dir = run_dir / "run"
    result = common.train_model(cfg, train_dir, args.overwrite, args.verbose)
    per_class = per_class_scores(train_dir / "history.csv", cfg.train.monitor, cfg.train.monitor_mode)
    export_dir = common.export_versioned(train_dir, "dstl", run_dir)
    sample = write_stacked(val[0], run_dir / "sample" / f"{val[0].name}_20band.tif")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not georeferenced.*")  # Dstl rasters have no CRS
        predicted = tfseg.predict_scenes(export_dir, [str(sample)], run_dir / "predict",
                                   tfseg.PredictOptions(probabilities="uint8", overlay=False, progress=False,
                                                  polygons=False))
    pixels = label_pixels(val, cfg.data.classes)
    for name, count in pixels.items():
        per_class.setdefault(name, {})["val_pixels"] = count
    present = [v["iou"] for k, v in per_class.items() if pixels.get(k) and v.get("iou") is not None]
    metrics = {
        "model": args.model, "bands": cfg.data.num_bands, "classes": len(cfg.data.classes),
        "val_iou": _score(result["val"]["iou"]), "val_f1": _score(result["val"]["f1"]),
        "mean_iou_present": round(sum(present) / len(present), 4) if present else None,
        "per_class": per_class, "val_images": len(val),
    }
    summary = {
        "pipeline": "dstl", "quick": bool(args.quick), "data_root": str(root), "generated": generated,
        "run_dir": str(run_dir), "metrics": metrics,
        "train": {k: result[k] for k in ("epochs", "steps_per_epoch", "global_batch_size", "train_seconds",
                                         "wall_seconds", "best_epoch", "params")},
        "predict": predicted.get("scenes", predicted), "wall_seconds": round(time.monotonic() - start, 1),
        "load_average_start": load_start, "load_average_end": common.load_average(), "export": str(export_dir),
    }
    common.write_summary(run_dir, summary)
    return summary


def main(argv=None) -> int:
    p = common.parser("python -m pipelines.dstl", __doc__.split("\n")[0], "runs/dstl",
                      "Dstl folder (three_band/, sixteen_band/, train_wkt_v4.csv, grid_sizes.csv); "
                      "default: generate a learnable one in RUN_DIR/data")
    p.add_argument("--model", choices=sorted(CONFIGS), default="unet20",
                   help="unet20: configs/dstl_unet20.yaml; res50unet20: configs/dstl_res50unet20.yaml")
    return common.run_main(run, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
