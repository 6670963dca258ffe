"""SpaceNet-2 building footprints end to end: AOI layout → train → SpaceNet CSV → ``evaluate spacenet``.

``python -m pipelines.spacenet [--product rgb|mul] [--run-dir DIR] [--data-root AOI_OR_PARENT]
[--sample DIR] [--quick] [--config YAML] [--set KEY=VALUE ...]``

1. data: ``--data-root`` is a SpaceNet-2 download (``AOI_5_Khartoum_Train/`` or the folder holding
   one or more ``AOI_*_Train`` folders: ``<product>/<product>_AOI_5_Khartoum_img<id>.tif`` +
   ``geojson/buildings/buildings_AOI_5_Khartoum_img<id>.geojson``). Without it, a learnable AOI in
   exactly that layout is generated into ``RUN_DIR/data`` (``pipelines/generate.py``).
   ``--product`` picks ``configs/spacenet2_rgb.yaml`` (RGB-PanSharpen, 3 bands, 0.3 m) or
   ``configs/spacenet2_mul.yaml`` (MUL, 8 bands, 1.2 m). Chips are split train/validation by
   ``data.val_fraction`` (seeded, the split ``tfseg.train`` uses).
   Layout: ``RUN_DIR/data`` (generated AOI), ``RUN_DIR/run`` (the tfseg run directory),
   ``RUN_DIR/models``, ``RUN_DIR/predict``, ``RUN_DIR/truth.csv``, ``RUN_DIR/pipeline.json``.
2. truth: ``RUN_DIR/truth.csv``, the validation chips' GeoJSON footprints in SpaceNet CSV form
   (``ImageId,BuildingId,PolygonWKT_Pix,Confidence``; pixel coordinates of the product's chip).
3. train (``tfseg.train.train``), export to ``RUN_DIR/models/spacenet/1`` (``tfseg.export``).
4. predict the validation chips with the exported SavedModel → polygons + ``RUN_DIR/predict/proposals.csv``.
5. score: ``tfseg.score_objects`` (= ``python -m tfseg.evaluate spacenet``): object
   precision/recall/F1 at IoU ≥ 0.5, per AOI and overall; plus the run's pixel IoU/F1.
6. label path on the real sample (``--sample``, default ``../shared/data/spacenet_sample`` when
   present): GeoJSON → footprint mask GeoTIFF on the chip's grid, the footprints as a truth CSV,
   and a round trip mask → polygons → CSV scored against it.

Example:
    python -m pipelines.spacenet --product mul --run-dir runs/spacenet_mul
    python -m pipelines.spacenet --product rgb --data-root /data/spacenet/AOI_5_Khartoum_Train
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the pipelines are modules of the checkout
    sys.exit("run it from the repository root as: python -m pipelines.spacenet [ARGS]")

import tfseg  # noqa: E402
from pipelines import _common as common  # noqa: E402

CONFIGS = {"rgb": common.REPO / "configs" / "spacenet2_rgb.yaml", "mul": common.REPO / "configs" / "spacenet2_mul.yaml"}
GENERATED = {"full": {"num_chips": 30, "size": 256}, "quick": {"num_chips": 8, "size": 128}}
QUICK = {"rgb": ["train.epochs=2", "data.train_windows_per_epoch=16", "data.batch_size=4", "data.window_size=64",
                 "model.depth=3", "model.filters=8", "train.num_figure_tiles=2"],
         "mul": ["train.epochs=2", "data.train_windows_per_epoch=16", "data.batch_size=4", "data.window_size=32",
                 "model.depth=3", "model.filters=8", "train.num_figure_tiles=2"]}


def truth_csv(scenes, label_files: dict, path: Path) -> Path:
    """SpaceNet truth CSV of ``scenes`` (their GeoJSON footprints in each chip's pixel grid)."""
    per_image = {}
    for scene in scenes:
        polys = tfseg.read_pixel_polygons(label_files[scene.name], scene.info, require_overlap=False)
        per_image[tfseg.spacenet_image_id(scene.info.path)] = [tfseg.PolygonRecord(p) for p in polys]
    return tfseg.write_spacenet_csv(path, per_image)


def geojson_of(image_path: Path) -> Path:
    aoi = image_path.parent.parent
    return aoi / "geojson" / "buildings" / f"buildings_{tfseg.spacenet_image_id(image_path)}.geojson"


def sample_files(sample: Path) -> tuple:
    """``(image, geojson)`` of the real sample folder, or a PipelineError naming the missing file
    (checked before training, so a mistyped ``--sample`` fails at once)."""
    image, geojson = sample / "sample_geotiff.tif", sample / "geotiff_labels.geojson"
    for path in (image, geojson):
        if not path.is_file():
            raise common.PipelineError(f"--sample {sample}: SpaceNet sample file not found: {path} (expected "
                                       f"sample_geotiff.tif and geotiff_labels.geojson)")
    return image, geojson


def sample_label_path(sample: Path, out: Path) -> dict:
    """GeoJSON → mask GeoTIFF, truth CSV, mask → polygons → CSV round trip on the real sample."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    image, geojson = sample_files(sample)
    out.mkdir(parents=True, exist_ok=True)
    info = tfseg.open_raster(image)
    labels = tfseg.read_vector_labels(geojson, info)
    mask = labels.rasterize(Window(0, 0, info.width, info.height), info).astype(np.uint8)
    with rasterio.open(out / "sample_footprints.tif", "w", driver="GTiff", width=info.width, height=info.height,
                       count=1, dtype="uint8", crs=info.crs, transform=info.affine) as dst:
        dst.write(mask[None])
    image_id = "sample_geotiff"
    polys = tfseg.read_pixel_polygons(geojson, info)
    truth = tfseg.write_spacenet_csv(out / "sample_truth.csv", {image_id: [tfseg.PolygonRecord(p) for p in polys]})
    # the round trip: no opening (thin footprints would be erased), only the 20 px² rule
    records = tfseg.polygonize_mask(mask > 0, None, tfseg.PolygonOptions(opening_px=0, simplify_px=0.0))
    proposals = tfseg.write_spacenet_csv(out / "sample_mask_polygons.csv", {image_id: records})
    score = tfseg.score_objects(truth, proposals)["overall"]
    return {"footprints": len(polys), "mask_building_fraction": round(float((mask > 0).mean()), 4),
            "mask_polygons": len(records), "roundtrip_f1": round(score["F1Score"], 4),
            "roundtrip_precision": round(score["Precision"], 4), "roundtrip_recall": round(score["Recall"], 4),
            "mask": str(out / "sample_footprints.tif"), "truth_csv": str(truth)}


def run(args) -> dict:
    from tfseg import PredictOptions, load_scenes, predict_scenes, score_objects

    from pipelines.generate import make_spacenet_aoi

    start = time.monotonic()
    load_start = common.load_average()
    run_dir = Path(args.run_dir)
    sample = Path(args.sample) if args.sample else common.shared_data("spacenet_sample")
    use_sample = bool(args.sample) or sample.is_dir()
    if use_sample:
        sample_files(sample)  # before any work: a mistyped --sample fails now, not after training
    root, generated, cfg = common.given_or_generated_config(
        args, run_dir, args.config or CONFIGS[args.product], QUICK[args.product], "SpaceNet data",
        "expected AOI_<n>_<City>_Train/<product>/ "
        "and geojson/buildings/ (or a folder holding such AOI folders)",
        make_spacenet_aoi, GENERATED["quick" if args.quick else "full"])

    _, val = load_scenes(cfg.data)
    labels = {s.name: geojson_of(Path(s.info.path)) for s in val}
    run_dir.mkdir(parents=True, exist_ok=True)

    train_dir = run_dir / "run"  # the tfseg run (config, model, history); generated data stays beside it
    result = common.train_model(cfg, train_dir, args.overwrite, args.verbose)
    truth = truth_csv(val, labels, run_dir / "truth.csv")
    export_dir = common.export_versioned(train_dir, "spacenet", run_dir)
    summary_predict = predict_scenes(
        export_dir, [s.info.path for s in val], run_dir / "predict",
        PredictOptions(probabilities="none", overlay=False, progress=False,
                       spacenet_csv=str(run_dir / "predict" / "proposals.csv")))
    scores = score_objects(truth, run_dir / "predict" / "proposals.csv")
    overall = scores["overall"]
    metrics = {
        "product": cfg.data.options.get("product"), "bands": cfg.data.num_bands,
        "object_f1": round(overall["F1Score"], 4), "object_precision": round(overall["Precision"], 4),
        "object_recall": round(overall["Recall"], 4), "true_pos": overall["TruePos"],
        "false_pos": overall["FalsePos"], "false_neg": overall["FalseNeg"],
        "pixel_iou": round(result["val"]["iou"], 4), "pixel_f1": round(result["val"]["f1"], 4),
        "val_chips": len(val),
    }
    if use_sample:
        metrics["sample_label_path"] = sample_label_path(sample, run_dir / "sample")
    summary = {
        "pipeline": "spacenet", "quick": bool(args.quick), "data_root": str(root), "generated": generated,
        "run_dir": str(run_dir), "metrics": metrics, "scores": scores,
        "train": {k: result[k] for k in ("epochs", "steps_per_epoch", "global_batch_size", "train_seconds",
                                         "wall_seconds", "best_epoch", "params")},
        # the predict step's wall time (its summary's "predict_seconds" counts the network only)
        "predict_seconds": summary_predict["seconds"],
        "wall_seconds": round(time.monotonic() - start, 1), "load_average_start": load_start,
        "load_average_end": common.load_average(), "export": str(export_dir), "truth_csv": str(truth),
    }
    common.write_summary(run_dir, summary)
    return summary


def main(argv=None) -> int:
    p = common.parser("python -m pipelines.spacenet", __doc__.split("\n")[0], "runs/spacenet2",
                      "SpaceNet-2 AOI folder or its parent (default: generate a learnable AOI in RUN_DIR/data)")
    p.add_argument("--product", choices=sorted(CONFIGS), default="rgb",
                   help="rgb: RGB-PanSharpen 3-band (configs/spacenet2_rgb.yaml); mul: MUL 8-band (spacenet2_mul.yaml)")
    p.add_argument("--sample", default="", help="real SpaceNet sample folder for the label path "
                   "(default: ../shared/data/spacenet_sample when present)")
    return common.run_main(run, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
