"""Building footprints on the Kampala chips: prepare -> train -> evaluate -> export -> predict.

``python -m pipelines.buildings [--data-root DIR] [--run-dir DIR] [--config YAML] [--quick]
[--set KEY=VALUE ...] [--overwrite]``

1. **prepare**: pairs ``DATA_ROOT/images/X.tif`` with ``DATA_ROOT/masks/X.mask.tif`` and holds
   out a seeded ``data.val_fraction`` of the chips (``data.seed``) as validation, as symlinks
   under ``RUN_DIR/split/{train,val}/{images,masks}`` (no data is copied); ``split.json`` lists them.
2. **train**: ``tfseg.train_model`` with ``configs/buildings_kampala.yaml`` (UNet + ResNet-34,
   AdamW, one-cycle, BCE + Dice; ``data.root`` = the split) -> ``RUN_DIR`` (model.keras,
   history.csv, figures/epoch-*.png, predictions.png, export/ = the SavedModel).
3. **evaluate** the held-out chips: pixel IoU/F1/precision/recall (``tfseg.evaluate pixels`` on
   whole chips) and object F1 of the predicted polygons against the GeoJSON footprints of
   ``DATA_ROOT/labels`` (``tfseg.evaluate polygons``, SpaceNet rules: IoU >= 0.5).
4. **predict** with the exported SavedModel: class/probability GeoTIFFs, polygons (speckle
   removal by morphological opening), one SpaceNet CSV -> ``RUN_DIR/predict``.
5. writes ``RUN_DIR/pipeline_metrics.json`` and prints the metrics.

``--quick`` is the CI smoke version (8 chips, 128 px, 1 epoch x 2 steps).

Example:
    python -m pipelines.buildings --quick --run-dir runs/buildings-quick
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the pipelines are modules of the checkout
    sys.exit("run it from the repository root as: python -m pipelines.buildings [ARGS]")

import tfseg  # noqa: E402
from pipelines import _common as common  # noqa: E402
from pipelines._common import REPO, PipelineError  # noqa: E402

log = logging.getLogger("tfseg.pipelines.buildings")

DEFAULT_CONFIG = REPO / "configs" / "buildings_kampala.yaml"
DEFAULT_DATA = "kampala_buildings/train"  # under the shared data ($TFSEG_SHARED_DATA or ../shared/data)
QUICK = ["data.window_size=128", "data.eval_overlap=0", "data.batch_size=2", "data.train_windows_per_epoch=4",
         "train.epochs=1", "train.num_figure_tiles=2", "train.object_f1=false", "model.decoder_filters=[16,16,8,8,8]"]
QUICK_CHIPS = 8  # chips used by --quick (split like the full run)
TUNE_FRACTION = 0.15  # of the training chips: the training's validation (checkpoint, operating point)


def resolve_data_root(data_root) -> Path:
    """``data_root`` as given, or relative to the repository when it does not exist from the cwd;
    empty: the shared sample data (``$TFSEG_SHARED_DATA/kampala_buildings/train``, else
    ``../shared/data/...`` beside the repository, as every pipeline)."""
    path = Path(data_root).expanduser() if data_root else common.shared_data(DEFAULT_DATA)
    if not path.is_absolute() and not path.exists():
        path = REPO / path
    if not path.is_dir():
        raise PipelineError(f"data folder not found: {data_root or path} (looked at {path.resolve()}); "
                            f"pass --data-root DIR holding images/ and masks/ (e.g. kampala_buildings/train) "
                            f"or set TFSEG_SHARED_DATA")
    for sub in ("images", "masks"):
        if not (path / sub).is_dir():
            raise PipelineError(f"{path}: no '{sub}/' folder (expected images/X.tif and masks/X.mask.tif)")
    return path.resolve()


def prepare_split(data_root: Path, split_dir: Path, val_fraction: float, seed: int, limit: int = 0,
                  tune_fraction: float = TUNE_FRACTION) -> dict:
    """Pair the chips, hold out a seeded ``val_fraction`` (the reported held-out chips, the same
    as before validation was carved from training), and carve a seeded ``tune_fraction`` of the
    rest as the training's validation (checkpoint selection and the operating-point search), as
    symlinked ``split_dir/{train,val,heldout}/{images,masks,labels}`` folders.

    Returns ``{"train": [stems], "val": [stems], "heldout": [stems]}`` (also ``split_dir/split.json``).
    Re-running with the same arguments gives the same split.
    """
    import numpy as np

    pairs = tfseg.pair_images_and_masks(data_root / "images", data_root / "masks")
    if len(pairs) < 3:
        raise PipelineError(f"{data_root}: need at least 3 image/mask pairs, found {len(pairs)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs))
    if limit:
        order = order[:limit]
    n_held = min(max(1, int(round(len(order) * val_fraction))), len(order) - 2)
    rest = order[n_held:]  # the training chips of the earlier split (same seed, same order)
    rest = rest[np.random.default_rng(seed + 1).permutation(len(rest))]
    n_val = min(max(1, int(round(len(rest) * tune_fraction))), len(rest) - 1)
    chosen = {"heldout": sorted(order[:n_held]), "val": sorted(rest[:n_val]), "train": sorted(rest[n_val:])}
    labels = data_root / "labels"
    split = {}
    for name, indexes in chosen.items():
        files = {"images": [pairs[i][0] for i in indexes], "masks": [pairs[i][1] for i in indexes],
                 "labels": [labels / f"{pairs[i][0].stem}.geojson" for i in indexes]}
        files["labels"] = [f for f in files["labels"] if f.is_file()]
        for sub, paths in files.items():
            folder = split_dir / name / sub
            if folder.is_dir():  # a previous split's links go first
                for old in folder.iterdir():
                    old.unlink()
            common.link_view(paths, folder)
        split[name] = [pairs[i][0].stem for i in indexes]
    (split_dir / "split.json").write_text(json.dumps({"data_root": str(data_root), "seed": seed,
                                                      "val_fraction": val_fraction, "tune_fraction": tune_fraction,
                                                      **split}, indent=1))
    return split


def run(data_root, run_dir, config=None, overrides=(), quick: bool = False, overwrite: bool = False) -> dict:
    """The whole pipeline; returns the metrics dict written to ``run_dir/pipeline_metrics.json``."""
    started = time.time()
    data_root = resolve_data_root(data_root)
    run_dir = Path(run_dir)
    overrides = (list(QUICK) if quick else []) + list(overrides)
    cfg = tfseg.load_config(config or DEFAULT_CONFIG, overrides)  # validated before any work
    split_dir = run_dir.parent / f"{run_dir.name}.split"  # beside the run: train() owns run_dir
    split = prepare_split(data_root, split_dir, cfg.data.val_fraction, cfg.data.seed, QUICK_CHIPS if quick else 0)
    log.info("split: %d train / %d validation (checkpoint, operating point) / %d held-out chips -> %s",
             len(split["train"]), len(split["val"]), len(split["heldout"]), split_dir)
    cfg = tfseg.load_config(config or DEFAULT_CONFIG, overrides + [common.override("data.root", split_dir.resolve())])

    trained = tfseg.train_model(cfg, run_dir, overwrite=overwrite, verbose=1 if not quick else 0)
    train_wall = time.time() - started

    # everything below is measured on the held-out chips, which neither the checkpoint nor the
    # operating point saw; predict/evaluate use the model's operating point
    val_images = sorted((split_dir / "heldout" / "images").iterdir())
    val_masks = sorted((split_dir / "heldout" / "masks").iterdir())
    checkpoint = tfseg.load_predictor(run_dir)  # loaded once for both scores
    pixels = tfseg.evaluate_pixels(checkpoint, val_images, val_masks, tile_size=256, overlap=0, batch_size=8)
    pixels_default = tfseg.evaluate_pixels(checkpoint, val_images, val_masks, tile_size=256, overlap=0, batch_size=8,
                                              threshold=cfg.train.threshold)
    log.info("pixels: %s (at train.threshold %s: %s)", pixels, cfg.train.threshold, pixels_default)

    pred_dir = run_dir / "predict_val"
    options = tfseg.PredictOptions(tile_size=256, overlap=0, epsg4326=True, probabilities="none", overlay=False,
                                     spacenet_csv=str(pred_dir / "proposals.csv"), progress=False)
    exported = tfseg.load_predictor(run_dir / "export")  # the SavedModel, loaded once for both predictions
    summary = tfseg.predict_scenes(exported, val_images, pred_dir, options)
    # predict merged the chips' polygons (EPSG:4326, image_id = chip stem); the truth the same way
    labels = [(data_root / "labels" / f"{s}.geojson", s, "EPSG:4326") for s in split["heldout"]]
    truth = run_dir / "val_truth.geojson"
    tfseg.merge_polygons([part for part in labels if part[0].is_file()], truth)
    proposals = Path(shutil.copyfile(summary["polygons"], run_dir / "val_proposals.geojson"))
    objects = tfseg.score_objects(truth, proposals)["overall"]
    log.info("objects: %s", objects)

    sample = val_images[0]
    sample_dir = run_dir / "predict"
    tfseg.predict_scenes(exported, [sample], sample_dir,
                           tfseg.PredictOptions(tile_size=256, overlap=0, spacenet_csv=str(sample_dir / "proposals.csv"),
                                                  progress=False))
    metrics = {
        "data_root": str(data_root), "run_dir": str(run_dir), "quick": quick,
        "train_chips": len(split["train"]), "val_chips": len(split["val"]), "heldout_chips": len(split["heldout"]),
        "pixel": {k: pixels[k] for k in ("iou", "f1", "precision", "recall", "threshold")},
        "pixel_at_train_threshold": {k: pixels_default[k] for k in ("iou", "f1", "precision", "recall", "threshold")},
        "operating_point": trained.get("operating_point"),
        "polygon_options": summary["polygon_options"],
        "object": {"f1": objects["F1Score"], "precision": objects["Precision"], "recall": objects["Recall"],
                   "tp": objects["TruePos"], "fp": objects["FalsePos"], "fn": objects["FalseNeg"]},
        "training": {"epochs": trained["epochs"], "steps": trained.get("steps"), "train_seconds": trained["train_seconds"],
                     "best_epoch": trained["best_epoch"], "params": trained["params"], "val": trained["val"]},
        "sample": {"input": str(sample), "outputs": sorted(p.name for p in sample_dir.iterdir())},
        "wall_seconds": {"train": round(train_wall, 1), "total": round(time.time() - started, 1)},
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    (run_dir / "pipeline_metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.buildings", description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="",
                        help=f"folder with images/, masks/ (X.mask.tif) and labels/ (default: $TFSEG_SHARED_DATA/"
                             f"{DEFAULT_DATA}, else ../shared/data/{DEFAULT_DATA} beside the repository)")
    parser.add_argument("--run-dir", default="runs/buildings_kampala", help="run directory")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="config YAML (default: %(default)s)")
    tfseg.add_overrides_argument(parser, "config overrides")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: 8 chips, 128 px, 1 epoch x 2 steps")
    parser.add_argument("--overwrite", action="store_true", help="replace a run directory holding another config")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        m = run(args.data_root, args.run_dir, args.config, args.overrides, args.quick, args.overwrite)
    except (PipelineError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"held-out chips: {m['heldout_chips']} (trained on {m['train_chips']}, validation {m['val_chips']})")
    print("pixel   iou {iou:.4f}  f1 {f1:.4f}  precision {precision:.4f}  recall {recall:.4f}  (threshold {threshold})"
          .format(**m["pixel"]))
    if m["operating_point"]:
        print(f"operating point (chosen on the validation chips): {m['operating_point']}")
    print("object  f1 {f1:.4f}  precision {precision:.4f}  recall {recall:.4f}  (tp {tp}, fp {fp}, fn {fn})".format(
        **m["object"]))
    print(f"wall time {m['wall_seconds']['total']:.0f} s (training {m['training']['train_seconds']:.0f} s, "
          f"{m['training']['epochs']} epochs); load average {m['load_average']}")
    print(f"metrics: {Path(args.run_dir) / 'pipeline_metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
