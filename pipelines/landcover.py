"""Land cover from colour-coded masks: the Dubai aerial imagery (6 classes) end to end.

``python -m pipelines.landcover [--run-dir runs/landcover_dubai] [--data-root DIR] [--quick]
[--recipe NAME] [--config YAML] [--set KEY=VALUE ...]``

1. data: ``configs/landcover_dubai.yaml`` on ``../shared/data/dubai_landcover`` (``Tile N/images/*.jpg``
   + ``Tile N/masks/*.png``, RGB or palette PNGs decoded with the dataset's palette; black and any
   other colour outside it → ignored). The images are split by ``data.val_fraction`` with
   ``data.seed`` (the same seeded split ``tfseg.train`` uses): the held-out images are never
   trained on. Nothing is copied; ``RUN_DIR/heldout/`` holds symlinks with unique names
   (``Tile_6__image_part_001.jpg``) because the tiles reuse file names.
2. train: ``tfseg.train.train`` (random 256² windows of the training images, flips/rot90/scale).
3. evaluate: ``tfseg.evaluate.evaluate_pixels`` on the WHOLE held-out images (sliding window,
   masks decoded with the run's palette) → per-class IoU/F1/precision/recall and mIoU.
4. export: ``RUN_DIR/models/landcover/1`` (TF Serving layout) via ``tfseg.export``.
5. predict: ``tfseg.predict`` with the exported SavedModel on held-out images → class GeoTIFFs,
   and ``RUN_DIR/landcover_figure.png``: input | truth | prediction in the dataset's colours.

Writes ``RUN_DIR/pipeline.json`` (metrics, wall time, load average, held-out images) and prints
the metrics (``miou_real``: mean IoU over the five real classes, without ``unlabeled``; a class
absent from the held-out truth and prediction is ``null`` and left out of the means).
``--quick``: 1 tiny epoch and two evaluation images (a smoke test, minutes). ``--recipe``: one
of :data:`RECIPES` (config overrides applied before ``--set``); ``pipelines/landcover_recipes.py``
compares them at the same ``train.max_minutes``.

Example:
    python -m pipelines.landcover --run-dir runs/landcover_dubai
"""
from __future__ import annotations

import io
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the pipelines are modules of the checkout
    sys.exit("run it from the repository root as: python -m pipelines.landcover [ARGS]")

import tfseg  # noqa: E402
from pipelines import _common as common  # noqa: E402

CONFIG = common.REPO / "configs" / "landcover_dubai.yaml"
QUICK = ["train.epochs=1", "data.train_windows_per_epoch=16", "data.batch_size=4", "data.window_size=128",
         "model.depth=3", "model.filters=8", "train.num_figure_tiles=2", "data.eval_overlap=0"]
QUICK_EVAL_IMAGES = 2
FIGURE_IMAGES = 3
EVAL_OVERLAP = 64  # whole-image evaluation: overlap of the sliding window (blended)
REAL_CLASSES = ["building", "land", "road", "vegetation", "water"]  # 'unlabeled' is not land cover
SLIM_RESNET34 = ["model.backbone=resnet34", "model.encoder_weights=", "model.decoder_filters=[64,32,16,16,8]"]
BALANCED = ["data.sampling=balanced", "data.balance_alpha=0.5", "train.class_weights=auto",
            "train.class_weights_method=inverse_sqrt"]
# the land-cover recipes compared in docs/results_landcover.md (same data, split and time budget)
UNIFORM = ["data.sampling=uniform", "train.class_weights=[]"]
RECIPES = {
    "unet": UNIFORM,  # plain UNet d4/16, uniform windows, no class weights (the config before the comparison)
    "unet-resnet34": SLIM_RESNET34 + UNIFORM,  # UNet on ResNet-34 (random init) with the slim decoder
    "unet-balanced": BALANCED,  # UNet d4/16 + balanced windows + automatic class weights (the config now)
    "unet-resnet34-balanced": SLIM_RESNET34 + BALANCED,
}


def heldout_pairs(cfg) -> tuple[list, list]:
    """The (image, mask) paths of the training and held-out images (the training split of tfseg)."""
    from tfseg import load_scenes

    train, val = load_scenes(cfg.data)

    def pairs(scenes):
        return [(Path(s.info.path), Path(s.labels.info.path)) for s in scenes]

    return pairs(train), pairs(val)


def _unique(path: Path) -> str:
    # "Tile 6/images/image_part_001.jpg" -> "Tile_6__image_part_001.jpg"
    return f"{path.parent.parent.name.replace(' ', '_')}__{path.name}"


def hex_rgb(colour: str) -> tuple:
    colour = colour.lstrip("#")
    return tuple(int(colour[i:i + 2], 16) for i in (0, 2, 4))


def colour_table(cfg):
    import numpy as np

    table = np.zeros((256, 3), np.uint8)  # ignore (255) and unknown -> black, as in the dataset
    for index, name in enumerate(cfg.data.classes):
        table[index] = hex_rgb(cfg.data.palette[name])
    return table


def save_figure(cfg, pairs, predictions: Path, path: Path, max_side: int = 320) -> Path:
    """Rows of input | truth | prediction (dataset colours; black = ignored) for ``pairs``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import rasterio
    from matplotlib.patches import Patch
    from PIL import Image

    table = colour_table(cfg)
    fig, axes = plt.subplots(len(pairs), 3, figsize=(9, 3 * len(pairs)), squeeze=False)
    for row, (image, mask) in enumerate(pairs):
        rgb = np.asarray(Image.open(image).convert("RGB"))
        truth = tfseg.read_class_mask(mask, cfg.data)
        with rasterio.open(predictions / f"{Path(_unique(image)).stem}_class.tif") as src:
            pred = src.read(1)
        step = max(1, int(np.ceil(max(rgb.shape[:2]) / max_side)))
        panels = [rgb[::step, ::step], table[truth[::step, ::step]], table[pred[::step, ::step]]]
        for col, (panel, title) in enumerate(zip(panels, ["input", "truth", "prediction"])):
            ax = axes[row, col]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(title)
        axes[row, 0].set_ylabel(_unique(image).replace("__", "\n"), fontsize=8)
    handles = [Patch(color=np.array(hex_rgb(cfg.data.palette[n])) / 255, label=n) for n in cfg.data.classes]
    handles.append(Patch(color="black", label="ignored"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=72)
    plt.close(fig)
    # 256-colour PNG (small enough to commit); the class colours are the dominant ones, kept exact
    Image.open(buffer).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def _rounded(value):
    return None if value is None else round(value, 4)


def heldout_metrics(scores: dict) -> dict:
    """The pipeline's summary of an ``evaluate_pixels`` report (``miou_real``: mean IoU over the
    five real classes). A class absent from truth and prediction (``None`` in the report) stays
    ``None`` (``null`` in pipeline.json) and is left out of the means, as in ``evaluate_pixels``;
    a mean with no class present is ``None``."""
    per_class = scores["per_class"]
    real = [per_class[c]["iou"] for c in REAL_CLASSES if per_class[c]["iou"] is not None]
    return {
        "miou": _rounded(scores["miou"]),
        "miou_real": round(sum(real) / len(real), 4) if real else None,
        "per_class_iou": {k: _rounded(v["iou"]) for k, v in per_class.items()},
        "per_class_f1": {k: _rounded(v["f1"]) for k, v in per_class.items()},
        "mean_f1": _rounded(scores["f1"]),
    }


def run(args) -> dict:
    from tfseg import PredictOptions, evaluate_pixels, predict_scenes

    start = time.monotonic()
    load_start = common.load_average()
    root = Path(args.data_root) if args.data_root else common.shared_data("dubai_landcover")
    common.require_dir(root, "Dubai land-cover data", "expected 'Tile N/images' + 'Tile N/masks'; "
                       "pass --data-root or set TFSEG_SHARED_DATA")
    recipe = getattr(args, "recipe", "") or ""
    if recipe and recipe not in RECIPES:
        raise common.PipelineError(f"--recipe {recipe!r}: expected one of {sorted(RECIPES)}")
    overrides = ([common.override("data.root", root)] + (RECIPES[recipe] if recipe else [])
                 + (QUICK if args.quick else []) + list(args.overrides))
    cfg = common.load_config(args.config or CONFIG, overrides)
    run_dir = Path(args.run_dir)

    train_pairs, val_pairs = heldout_pairs(cfg)
    result = common.train_model(cfg, run_dir, args.overwrite, args.verbose)

    eval_pairs = val_pairs[:QUICK_EVAL_IMAGES] if args.quick else val_pairs
    images = common.link_view([p[0] for p in eval_pairs], run_dir / "heldout" / "images", _unique)
    masks = common.link_view([p[1] for p in eval_pairs], run_dir / "heldout" / "masks", _unique)
    t0 = time.monotonic()
    scores = evaluate_pixels(run_dir, images, masks,  # tile size: the run's model card
                             overlap=EVAL_OVERLAP if not args.quick else 0)
    eval_seconds = time.monotonic() - t0

    export_dir = common.export_versioned(run_dir, "landcover")
    figure_pairs = eval_pairs[:FIGURE_IMAGES]
    predictions = run_dir / "predictions"
    predict_scenes(export_dir, [str(p) for p in images[:FIGURE_IMAGES]], predictions,
                   PredictOptions(probabilities="none", overlay=False, progress=False))
    figure = save_figure(cfg, figure_pairs, predictions, run_dir / "landcover_figure.png")

    metrics = {**heldout_metrics(scores), "heldout_images": scores["num_images"],
               "tile_val_iou": round(result["val"]["iou"], 4)}
    if "class_offsets" in scores:  # the same predictions decided by plain argmax: what the offsets change
        metrics["class_offsets"] = scores["class_offsets"]
        metrics["without_class_offsets"] = heldout_metrics(scores["without_class_offsets"])
    summary = {
        "pipeline": "landcover", "recipe": recipe or None, "quick": bool(args.quick), "data_root": str(root),
        "run_dir": str(run_dir),
        "train_images": len(train_pairs), "heldout": [_unique(p[0]) for p in eval_pairs],
        "metrics": metrics, "evaluation": scores, "train": {k: result[k] for k in (
            "epochs", "steps_per_epoch", "global_batch_size", "train_seconds", "wall_seconds", "best_epoch", "params",
            "max_minutes", "stop_reason", "schedule_epochs") if k in result},
        "class_weights": result.get("class_weights"),
        "eval_seconds": round(eval_seconds, 1), "wall_seconds": round(time.monotonic() - start, 1),
        "load_average_start": load_start, "load_average_end": common.load_average(),
        "export": str(export_dir), "figure": str(figure),
    }
    common.write_summary(run_dir, summary)
    return summary


def main(argv=None) -> int:
    p = common.parser("python -m pipelines.landcover", __doc__.split("\n")[0], "runs/landcover_dubai",
                      "dataset folder (default: ../shared/data/dubai_landcover)")
    p.add_argument("--recipe", default="", choices=[""] + sorted(RECIPES), help="a land-cover recipe (overrides)")
    return common.run_main(run, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
