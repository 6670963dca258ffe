"""``python -m tfseg.bench infer [--json]``: end-to-end ``predict`` throughput and streaming memory.

1. Throughput, in this process, same model / tile / overlap / batch: ``tfseg.predict`` on a
   generated GeoTIFF scene (windowed reads, blending, GeoTIFF writes, polygons, overlay; wall
   time of the whole call) vs bare ``model.predict`` on the same number of preloaded raw tiles
   (uint8; the model normalizes them in its first layer on both paths). Both paths first run
   once, untimed and whole (tracing, and the imports and set-up of the first ``predict_scenes``
   call, excluded from both), then take ``--rounds`` turns in alternation, so a load drifting on
   a shared machine hits both alike.
2. Memory: peak RSS (sampled every 20 ms) of a child process while it predicts a 4096² scene vs
   one predicting a 16384² scene (16x the pixels), same model and settings, model loaded and
   warmed up before; scenes are generated block by block.
3. ``--beam`` (instead of 1 and 2): scenes/s of ``python -m tfseg.predict --runner beam`` on the
   multi-processing DirectRunner with ``--workers`` processes vs ``--runner local`` on the same
   ``--scenes`` generated scenes, each a fresh command. ``*_scenes_per_s``/``speedup``: while
   predicting (first scene started to last scene finished, over all workers: start-up, model
   loading and the final merge excluded, as they are amortized over thousands of scenes);
   ``*_wall_scenes_per_s``/``wall_speedup``: the whole command, start to exit. Last line:
   ``{"local_scenes_per_s", "beam_scenes_per_s", "speedup", "local_wall_scenes_per_s",
   "beam_wall_scenes_per_s", "wall_speedup", "scenes", "workers", "worker_threads", "tiles",
   "local_seconds", "beam_seconds", "local_span_seconds", "beam_span_seconds", "local_cpu_cores",
   "beam_cpu_cores", "beam_workers_used", "beam_peak_concurrency"}`` (``*_cpu_cores``: CPU time
   over wall time of each command, its worker processes included; the last two: distinct worker
   processes that predicted scenes and the most scenes predicted at the same moment, which say
   whether the runner spread the work).
   Goal: speedup >= 1.6 with 2 workers on 2 cores.

Last line with ``--json`` (1 and 2):
``{"e2e_tiles_per_s", "bare_tiles_per_s", "ratio", "rss_small_mb", "rss_large_mb", "rss_ratio"}``.
Goals: ratio >= 0.85, rss_ratio <= 1.3.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ._args import non_negative_int, positive_int


def write_scene(path: Path, size: int, bands: int = 3, block: int = 512, seed: int = 0) -> Path:
    """A size x size uint8 scene (tiled, deflate) written block row by block row: a textured
    background with bright rectangular 'buildings' and a nodata band along the top-left."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    profile = dict(driver="GTiff", width=size, height=size, count=bands, dtype="uint8", nodata=0, tiled=True,
                   blockxsize=block, blockysize=block, compress="deflate", crs="EPSG:32636",
                   transform=from_origin(440000.0, 40512.0, 0.5, 0.5), BIGTIFF="IF_SAFER")
    cols = np.arange(size)
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, size, block):
            rows = np.arange(top, min(size, top + block))
            yy, xx = np.meshgrid(rows, cols, indexing="ij")
            base = (60 + 25 * np.sin(xx / 41.0) * np.cos(yy / 29.0)).astype(np.float32)
            house = ((xx // 24) % 5 == 1) & ((yy // 20) % 6 == 2)
            base[house] = 210
            base += rng.normal(0, 4, base.shape).astype(np.float32)
            data = np.clip(base, 1, 255).astype(np.uint8)
            data[(xx < size // 16) & (yy < size // 16)] = 0  # nodata corner
            dst.write(np.repeat(data[None], bands, axis=0), window=Window(0, top, size, len(rows)))
    return path


def make_run(run_dir: Path, depth: int, filters: int, bands: int = 3) -> Path:
    """A run directory with an untrained UNet of the given size whose output is made realistic.

    An untrained UNet labels noise, which would make polygonization cost unrepresentative. The
    model here is the full UNet followed by a 1x1 conv over [normalized bands, UNet output] whose
    weights make bright roofs buildings (plus a little of the UNet output): the UNet's compute cost
    with building-like masks. Behind the preprocessing layer (raw uint8 in), saved as model.keras
    with its model card.
    """
    import keras

    from ..data.raster import Normalization
    from ..model_card import CARD_FILE, ModelCard
    from ..models import Preprocess, build_model, with_preprocessing

    keras.utils.set_random_seed(0)
    unet = build_model("unet", input_shape=(None, None, bands), classes=1, depth=depth, filters=filters)
    joined = keras.layers.Concatenate(name="bench_join")([unet.input, unet.output])
    head = keras.layers.Conv2D(1, 1, activation="sigmoid", name="bench_head", dtype="float32")
    model = keras.Model(unet.input, head(joined))
    kernel = np.zeros((1, 1, bands + 1, 1), np.float32)
    kernel[0, 0, :bands, 0] = 6.0 / bands
    kernel[0, 0, bands, 0] = 0.5
    head.set_weights([kernel, np.array([-6.0], np.float32)])
    norm = Normalization("meanstd", [80.0] * bands, [40.0] * bands, [0.0] * bands, [255.0] * bands)
    model = with_preprocessing(model, Preprocess.from_normalization(norm, nodata=0.0), name="bench_unet")
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save(run_dir / "model.keras")
    ModelCard.for_model(model, norm, "uint8", 0.0, classes=["building"]).save(run_dir / CARD_FILE)
    return run_dir


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


class _RssSampler:
    """Peak resident set size of this process, sampled every ``interval`` s in a thread."""

    def __init__(self, interval: float = 0.02):
        import threading

        import psutil

        self.process, self.interval = psutil.Process(), interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        return False


def child(run: str, scene: str, out: str, tile: int, overlap: int, batch: int) -> dict:
    """Predict one scene (all default outputs) and report this process's memory.

    ``peak_rss_mb``: the highest RSS sampled while ``predict_scenes`` runs (model loaded and
    warmed up, so TensorFlow's own buffers are in it); ``baseline_rss_mb``: RSS just before.
    ``ru_maxrss_mb`` (the kernel's all-time peak) is reported too: it can be set by TensorFlow's
    transient allocations during the warm-up call rather than by the scene.
    """
    import gc

    import psutil

    from ..inference import load_predictor
    from ..predict import PredictOptions, predict_scenes

    predictor = load_predictor(run)
    predictor(np.zeros((batch, tile, tile, predictor.num_bands), np.uint8))  # warm-up: same shapes as the run
    gc.collect()
    baseline = psutil.Process().memory_info().rss
    shutil.rmtree(out, ignore_errors=True)  # a complete earlier output would be skipped
    started = time.perf_counter()
    with _RssSampler() as sampler:
        summary = predict_scenes(predictor, [Path(scene)], Path(out), PredictOptions(
            tile_size=tile, overlap=overlap, batch_size=batch, progress=False))
    mb = 1024.0 * 1024.0
    return {"peak_rss_mb": sampler.peak / mb, "baseline_rss_mb": baseline / mb, "ru_maxrss_mb": _peak_rss_mb(),
            "tiles": summary["tiles"], "seconds": time.perf_counter() - started,
            "num_polygons": summary["scenes"][0].get("num_polygons")}


def _run_child(run, scene, out, tile, overlap, batch) -> dict:
    cmd = [sys.executable, "-m", "tfseg.bench.infer", "--child", str(run), str(scene), str(out),
           "--tile-size", str(tile), "--overlap", str(overlap), "--batch-size", str(batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def throughput(workdir: Path, scene_size: int, tile: int, overlap: int, batch: int, depth: int, filters: int,
               rounds: int = 3) -> dict:
    """Seconds of ``predict_scenes`` on one scene and of bare ``model.predict`` on as many
    preloaded tiles, each summed over ``rounds`` turns taken in alternation (a load that drifts
    on a shared machine hits both alike). Both sides first run once untimed, whole: the first
    ``predict_scenes`` call also imports and sets up what it uses (matplotlib for the overlay,
    the polygon and GeoTIFF writers), which would otherwise land in round 1 of one side only."""
    from ..data.raster import open_raster, read_window_raw
    from ..inference import load_predictor
    from ..predict import PredictOptions, predict_scenes
    from rasterio.windows import Window

    run = make_run(workdir / "run_speed", depth, filters)
    scene = write_scene(workdir / "speed_scene.tif", scene_size)
    predictor = load_predictor(run)
    model = predictor.model
    if rounds < 1:
        raise ValueError(f"rounds: expected >= 1, got {rounds}")
    predictor(np.zeros((batch, tile, tile, 3), np.uint8))  # warm-up (traces predict_on_batch)
    options = PredictOptions(tile_size=tile, overlap=overlap, batch_size=batch, progress=False)
    # warm-up of both sides, untimed and whole: one predict_scenes call, one model.predict over as
    # many tiles, read beforehand (raw, as predict feeds them)
    shutil.rmtree(workdir / "speed_out", ignore_errors=True)  # a complete earlier output would be skipped
    tiles = predict_scenes(predictor, [scene], workdir / "speed_out", options)["tiles"]
    info = open_raster(scene)
    rng = np.random.default_rng(0)
    preloaded = np.empty((tiles, tile, tile, 3), np.uint8)
    for k in range(tiles):
        r, c = rng.integers(0, scene_size - tile, 2)
        preloaded[k] = read_window_raw(info, Window(int(c), int(r), tile, tile))[0]
    model.predict(preloaded, batch_size=batch, verbose=0)
    e2e_seconds = bare_seconds = predict_seconds = postprocess_seconds = 0.0
    for _ in range(rounds):
        shutil.rmtree(workdir / "speed_out", ignore_errors=True)
        started = time.perf_counter()
        summary = predict_scenes(predictor, [scene], workdir / "speed_out", options)
        e2e_seconds += time.perf_counter() - started
        predict_seconds += summary["predict_seconds"]
        postprocess_seconds += summary["postprocess_seconds"]
        started = time.perf_counter()
        model.predict(preloaded, batch_size=batch, verbose=0)
        bare_seconds += time.perf_counter() - started
    return {"tiles": tiles * rounds, "e2e_seconds": e2e_seconds, "bare_seconds": bare_seconds,
            "predict_seconds": predict_seconds, "postprocess_seconds": postprocess_seconds,
            "num_polygons": summary["scenes"][0].get("num_polygons")}


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _predict_command(run, scenes, out, tile, overlap, batch, extra=()) -> tuple[float, dict]:
    """``python -m tfseg.predict`` on ``scenes`` in a fresh process: (wall seconds, summary);
    the summary gets ``cpu_seconds``, the CPU time of the command and the processes it waited
    for (the DirectRunner's workers)."""
    shutil.rmtree(out, ignore_errors=True)  # complete scenes of an earlier run would be skipped
    cmd = [sys.executable, "-m", "tfseg.predict", "--model", str(run), "--input", *map(str, scenes),
           "--output", str(out), "--tile-size", str(tile), "--overlap", str(overlap), "--batch-size", str(batch),
           "--quiet", "--json", *extra]
    started, cpu = time.perf_counter(), _children_cpu_seconds()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, {**json.loads(proc.stdout.strip().splitlines()[-1]), "cpu_seconds": _children_cpu_seconds() - cpu}


def scale(workdir: Path, scenes: int, scene_size: int, workers: int, tile: int, overlap: int, batch: int,
          depth: int, filters: int) -> dict:
    """The same ``scenes`` generated scenes predicted by ``--runner local`` (one process, scenes
    one after another) and by ``--runner beam`` on the multi-processing DirectRunner with
    ``workers`` worker processes; each is one fresh ``python -m tfseg.predict`` command, timed
    from start to exit (start-up, model loading and the final merge included in both)."""
    run = make_run(workdir / "run_scale", depth, filters)
    (workdir / "scenes").mkdir(parents=True, exist_ok=True)
    paths = [write_scene(workdir / "scenes" / f"scene{i}.tif", scene_size, seed=i) for i in range(scenes)]
    local_seconds, local = _predict_command(run, paths, workdir / "scale_local", tile, overlap, batch)
    beam_options = f"runner=DirectRunner,direct_running_mode=multi_processing,direct_num_workers={workers}"
    beam_seconds, beam = _predict_command(run, paths, workdir / "scale_beam", tile, overlap, batch,
                                          ["--runner", "beam", "--beam-options", beam_options])
    for name, summary in (("local", local), ("beam", beam)):
        if summary["completed"] != scenes:
            raise RuntimeError(f"{name} runner predicted {summary['completed']} of {scenes} scenes: {summary['failures']}")
    from ..predict_beam import cores

    def span(summary):  # first scene started -> last scene finished, over all workers
        return max(e["finished"] for e in summary["scenes"]) - min(e["started"] for e in summary["scenes"])

    def concurrency(summary) -> int:  # most scenes being predicted at the same moment
        events = sorted([(e["started"], 1) for e in summary["scenes"]] + [(e["finished"], -1) for e in summary["scenes"]],
                        key=lambda event: (event[0], event[1]))
        running = peak = 0
        for _, step in events:
            running += step
            peak = max(peak, running)
        return peak

    local_span, beam_span = span(local), span(beam)
    return {"local_scenes_per_s": round(scenes / local_span, 4), "beam_scenes_per_s": round(scenes / beam_span, 4),
            "speedup": round(local_span / beam_span, 4),
            "local_wall_scenes_per_s": round(scenes / local_seconds, 4),
            "beam_wall_scenes_per_s": round(scenes / beam_seconds, 4),
            "wall_speedup": round(local_seconds / beam_seconds, 4), "scenes": scenes, "workers": workers,
            "worker_threads": max(1, cores() // workers), "tiles": local["tiles"],
            "local_seconds": round(local_seconds, 2), "beam_seconds": round(beam_seconds, 2),
            "local_span_seconds": round(local_span, 2), "beam_span_seconds": round(beam_span, 2),
            "local_cpu_cores": round(local["cpu_seconds"] / local_seconds, 2),
            "beam_cpu_cores": round(beam["cpu_seconds"] / beam_seconds, 2),
            "beam_workers_used": len({e.get("worker") for e in beam["scenes"]}),
            "beam_peak_concurrency": concurrency(beam)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfseg.bench infer", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--scene-size", type=positive_int, default=2048, help="throughput scene side (pixels)")
    parser.add_argument("--tile-size", type=positive_int, default=256)
    parser.add_argument("--overlap", type=non_negative_int, default=32)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--depth", type=positive_int, default=4, help="UNet depth (default model: depth 4, 16 filters)")
    parser.add_argument("--filters", type=positive_int, default=16)
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="throughput: turns the two methods take in alternation (load drift)")
    parser.add_argument("--small", type=positive_int, default=4096, help="side of the small RSS scene")
    parser.add_argument("--large", type=positive_int, default=16384, help="side of the large RSS scene")
    parser.add_argument("--rss-tile-size", type=positive_int, default=512)
    parser.add_argument("--rss-depth", type=positive_int, default=2, help="UNet depth for the RSS runs (kept small: CPU time)")
    parser.add_argument("--rss-filters", type=positive_int, default=4)
    parser.add_argument("--workdir", default="", help="keep generated files here (default: a temp dir, removed)")
    parser.add_argument("--beam", action="store_true",
                        help="instead: scenes/s of --runner beam (DirectRunner, --workers processes) vs --runner local")
    parser.add_argument("--scenes", type=positive_int, default=8, help="--beam: number of generated scenes")
    parser.add_argument("--scale-scene-size", type=positive_int, default=1024, help="--beam: side of each scene (pixels)")
    parser.add_argument("--workers", type=positive_int, default=2, help="--beam: Beam worker processes")
    parser.add_argument("--child", nargs=3, metavar=("RUN", "SCENE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from .. import _tf  # noqa: F401  (TensorFlow without its start-up notices on stderr)

    if args.child:
        print(json.dumps(child(*args.child, args.tile_size, args.overlap, args.batch_size)))
        return 0

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tfseg_bench_infer_"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.beam:
        try:
            result = scale(workdir, args.scenes, args.scale_scene_size, args.workers, args.tile_size, args.overlap,
                           args.batch_size, args.depth, args.filters)
        finally:
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        print(f"scale: {args.scenes} scenes of {args.scale_scene_size}², UNet depth {args.depth}/{args.filters} filters, "
              f"tile {args.tile_size}, overlap {args.overlap}, batch {args.batch_size}, {result['tiles']} tiles")
        print(f"  --runner local            {result['local_scenes_per_s']:8.3f} scenes/s while predicting "
              f"({result['local_span_seconds']:.1f} s), {result['local_wall_scenes_per_s']:.3f} scenes/s command wall "
              f"({result['local_seconds']:.1f} s)")
        print(f"  --runner beam, {args.workers} workers  {result['beam_scenes_per_s']:8.3f} scenes/s while predicting "
              f"({result['beam_span_seconds']:.1f} s), {result['beam_wall_scenes_per_s']:.3f} scenes/s command wall "
              f"({result['beam_seconds']:.1f} s); {result['worker_threads']} TF thread(s) per worker")
        print(f"  speedup {result['speedup']:.3f} while predicting (goal >= 1.6 on 2 cores), "
              f"{result['wall_speedup']:.3f} including start-up; scenes spread over {result['beam_workers_used']} "
              f"worker process(es), at most {result['beam_peak_concurrency']} at a time")
        print(f"  cores busy (CPU time / wall time of the command): local {result['local_cpu_cores']:.2f}, "
              f"beam {result['beam_cpu_cores']:.2f} of {os.cpu_count()}")
        if args.json:
            print(json.dumps(result))
        return 0
    try:
        speed = throughput(workdir, args.scene_size, args.tile_size, args.overlap, args.batch_size, args.depth,
                           args.filters, args.rounds)
        run = make_run(workdir / "run_rss", args.rss_depth, args.rss_filters)
        small_scene = write_scene(workdir / "small.tif", args.small)
        small = _run_child(run, small_scene, workdir / "small_out", args.rss_tile_size, args.overlap, args.batch_size)
        shutil.rmtree(workdir / "small_out", ignore_errors=True)
        large_scene = write_scene(workdir / "large.tif", args.large)
        large = _run_child(run, large_scene, workdir / "large_out", args.rss_tile_size, args.overlap, args.batch_size)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    e2e = speed["tiles"] / speed["e2e_seconds"]
    bare = speed["tiles"] / speed["bare_seconds"]
    result = {
        "e2e_tiles_per_s": round(e2e, 3),
        "bare_tiles_per_s": round(bare, 3),
        "ratio": round(e2e / bare, 4),
        "rss_small_mb": round(small["peak_rss_mb"], 1),
        "rss_large_mb": round(large["peak_rss_mb"], 1),
        "rss_ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 4),
    }
    print(f"throughput: {args.scene_size}² scene, UNet depth {args.depth}/{args.filters} filters, tile {args.tile_size}, "
          f"overlap {args.overlap}, batch {args.batch_size}, {speed['tiles']} tiles over {args.rounds} alternating rounds")
    print(f"  predict end-to-end  {e2e:8.2f} tiles/s  ({speed['e2e_seconds']:.1f} s: model+blend+write "
          f"{speed['predict_seconds']:.1f} s, polygons+overlay {speed['postprocess_seconds']:.1f} s, "
          f"{speed['num_polygons']} polygons)")
    print(f"  bare model.predict  {bare:8.2f} tiles/s  ({speed['bare_seconds']:.1f} s)   ratio {result['ratio']:.3f} (goal >= 0.85)")
    print(f"memory (child processes, UNet depth {args.rss_depth}/{args.rss_filters}, tile {args.rss_tile_size}):")
    for name, side, m in (("small", args.small, small), ("large", args.large, large)):
        print(f"  {side:6d}² scene  peak RSS while predicting {m['peak_rss_mb']:8.1f} MB (before: {m['baseline_rss_mb']:.1f} MB, "
              f"growth {m['peak_rss_mb'] - m['baseline_rss_mb']:.1f} MB; process ru_maxrss {m['ru_maxrss_mb']:.1f} MB), "
              f"{m['tiles']} tiles in {m['seconds']:.1f} s, {m['num_polygons']} polygons")
    print(f"  rss_ratio {result['rss_ratio']:.3f} for {(args.large / args.small) ** 2:.0f}x the pixels (goal <= 1.3)")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
