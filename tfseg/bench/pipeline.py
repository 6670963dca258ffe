"""``python -m tfseg.bench pipeline [--json]``: tf.data tile pipeline vs a bare rasterio loop.

On generated 8192x8192 tiled GeoTIFF scenes (3-band uint8 and 8-band uint16, with building
polygons as vector labels; generated once in blocks and cached under the temp dir), measures
tiles/s of

- ``pipeline``: ``build_dataset(training=True)`` with the default data config (nodata check,
  flips + rot90): random 256x256 windows read from disk, vector labels (rasterized once per
  scene), valid mask, batching; tiles in the source dtype, uint8 labels (normalization runs in
  the model);
- ``raw_read``: a bare loop reading random 256x256 windows with rasterio (one handle per
  thread) in a thread pool of the same parallelism;
- ``cached``: the same pipeline with ``data.cache: true`` (scenes decoded into memory once;
  the decode time is reported, not counted).

Files are paged into the OS cache first, so neither method pays for the first disk read. The
tf.data side runs in a private pool of ``--workers`` threads (one intra-op thread each), the
baseline in ``--workers`` threads; the methods take turns in ``--rounds`` rounds so that load
drifting on a shared machine hits all three alike.

``--isolated``: each method of each scene instead runs alone in a process of its own (its GDAL
block cache, handles and threads to itself, as in training, where only the pipeline reads), one
turn of ``--tiles`` tiles to warm the caches (not counted), then ``--turns`` counted turns; the
figures are steady-state rates of a warm host (the default run measures mostly cold block
caches, which the methods fill at different rates). The JSON adds ``"isolated": true``.

``ratio`` = pipeline / raw_read, ``cached_ratio`` = cached / raw_read; the JSON figures are over
both scenes (total tiles / total seconds for each method). ``bytes_per_tile``: bytes one tile
occupies as delivered (pipeline: image + label of a batch / batch size; raw_read: the image
array rasterio returns), averaged over the scenes. Last line with ``--json``:
``{"pipeline_tiles_per_s", "raw_read_tiles_per_s", "ratio", "cached_ratio", "bytes_per_tile":
{"pipeline", "raw_read"}}``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SCENES = [("rgb_uint8", 3, "uint8"), ("mul_uint16", 8, "uint16")]
EPSG = 32636


def generate_scene(path: Path, size: int, bands: int, dtype: str, seed: int = 0) -> Path:
    """A tiled (256x256 blocks) GeoTIFF written in row blocks from one tiled texture."""
    import rasterio
    from rasterio.transform import from_origin

    if path.is_file() and path.with_suffix(".done").is_file():
        return path
    rng = np.random.default_rng(seed)
    block = 1024
    top = 255 if dtype == "uint8" else 4000
    texture = rng.integers(0, top, (bands, block, block), dtype=dtype)
    profile = dict(
        driver="GTiff", width=size, height=size, count=bands, dtype=dtype, crs=f"EPSG:{EPSG}",
        transform=from_origin(440000.0, 40000.0 + size * 0.5, 0.5, 0.5), tiled=True,
        blockxsize=256, blockysize=256, nodata=0,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, block):
            rows = min(block, size - row)
            strip = np.tile(np.roll(texture, row // block * 97, axis=2), (1, 1, -(-size // block)))
            dst.write(strip[:, :rows, :size], window=rasterio.windows.Window(0, row, size, rows))
    path.with_suffix(".done").write_text("ok")
    return path


def generate_labels(path: Path, size: int, count: int = 4000, seed: int = 1) -> Path:
    """Random rectangular 'buildings' over the scene, in the scene's CRS."""
    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    features = []
    for i in range(count):
        x = 440000.0 + rng.uniform(0, size * 0.5 - 40)
        y = 40000.0 + rng.uniform(40, size * 0.5)
        w, h = rng.uniform(6, 30, 2)
        ring = [(x, y), (x + w, y), (x + w, y - h), (x, y - h), (x, y)]
        features.append({"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}})
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": f"EPSG:{EPSG}"}}, "features": features}
    path.write_text(json.dumps(doc))
    return path


def warm_page_cache(path: Path) -> None:
    """Read the file once so both methods read from the OS page cache (no order effect)."""
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


class RawReader:
    """Bare random-window rasterio reads in a pool of ``workers`` threads (one handle each)."""

    def __init__(self, path: str, size: int, window: int, workers: int, seed: int = 0):
        self.path, self.size, self.window, self.workers = path, size, window, workers
        self.rng = np.random.default_rng(seed)
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(workers)

    def _read(self, offset):
        import rasterio
        from rasterio.windows import Window

        src = getattr(self.local, "src", None)
        if src is None:
            src = self.local.src = rasterio.open(self.path)
        return src.read(window=Window(int(offset[0]), int(offset[1]), self.window, self.window)).nbytes

    def seconds(self, tiles: int) -> float:
        """Seconds for ``tiles`` reads (after a warm-up read per worker, not counted)."""
        offsets = self.rng.integers(0, self.size - self.window + 1, (tiles + self.workers * 2, 2))
        list(self.pool.map(self._read, offsets[: self.workers * 2]))
        start = time.perf_counter()
        list(self.pool.map(self._read, offsets[self.workers * 2 :]))
        return time.perf_counter() - start

    def close(self):
        self.pool.shutdown()


def tile_bytes(dataset) -> float:
    """Bytes per tile of one batch as the pipeline delivers it (image + label)."""
    images, labels = next(iter(dataset))
    return (images.numpy().nbytes + labels.numpy().nbytes) / int(images.shape[0])


def private_options(workers: int):
    """tf.data options of every measured pipeline: a private pool of ``workers`` threads, one
    intra-op thread each (the baseline's parallelism, strictly)."""
    from .._tf import tensorflow as tf

    options = tf.data.Options()
    options.threading.private_threadpool_size = workers
    options.threading.max_intra_op_parallelism = 1
    return options


def bench_scene(path: Path, labels_path: Path, name: str):
    """The generated scene at ``path`` with the generated buildings as its vector labels."""
    from ..data.labels import VectorLabels
    from ..data.raster import open_raster
    from ..data.sources import Scene

    info = open_raster(path)
    return Scene(info, VectorLabels.from_file(labels_path, info), name=name)


def pipeline_seconds(dataset, batch_size: int, tiles: int) -> float:
    """Seconds for ``tiles`` tiles (whole batches) of a fresh iterator after one warm-up batch;
    the iterator is dropped afterwards, so it does no work while the other methods run."""
    it = iter(dataset)
    next(it)  # build + warm-up
    batches = max(1, tiles // batch_size)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    elapsed = time.perf_counter() - start
    del it
    return elapsed * tiles / (batches * batch_size)


def stage_breakdown(scene, cached_scene, data_cfg, path: str, size: int, window: int, tiles: int) -> dict:
    """Single-thread milliseconds per tile of each stage, for reading where the time goes:
    the bare read, the per-tile sampling (window draw, read or crop, labels, nodata check,
    rotate/flip into the batch buffer) streamed and cached, and the whole pipeline (plus
    batching and tf.data) streamed and cached, on one thread."""
    import dataclasses

    from ..data.pipeline import (_RandomSampler, build_dataset, dataset_dtype, dataset_nodata, fill_value,
                                 num_label_channels, prepare_labels)

    out = {}
    reader = RawReader(path, size, window, 1)
    out["raw_read"] = reader.seconds(tiles) / tiles * 1e3
    reader.close()
    options = private_options(1)
    one = dataclasses.replace(data_cfg, num_parallel_calls=1)
    # labels as build_dataset prepares them: rasterized once per scene (within label_cache_mpix)
    streamed = prepare_labels([scene], data_cfg.label_cache_mpix * 1_000_000)[0]
    for label, source, cfg in (("streamed", streamed, one), ("cached", cached_scene, dataclasses.replace(one, cache=True))):
        dtype = dataset_dtype([source])
        sampler = _RandomSampler([source], cfg, 0, False, dtype, fill_value(dataset_nodata([source], dtype)))
        batch = data_cfg.batch_size
        image = np.empty((batch, window, window, scene.info.num_bands), sampler.dtype)
        labels = np.empty((batch, window, window, num_label_channels(scene)), np.uint8)
        sampler.fill_batch(0, image, labels)
        batches = max(1, tiles // batch)
        start = time.perf_counter()
        for b in range(1, batches + 1):  # whole batches, as build_dataset draws them
            sampler.fill_batch(b, image, labels)
        tiles_done = batches * batch
        out[f"{label}_sampling"] = (time.perf_counter() - start) / tiles_done * 1e3
        dataset = build_dataset([source], cfg, training=True).with_options(options)
        out[f"{label}_pipeline"] = pipeline_seconds(dataset, cfg.batch_size, tiles) / tiles * 1e3
    return out


METHODS = ("raw", "pipeline", "cached")


def isolated_rate(method: str, path: Path, labels_path: Path, window: int, batch_size: int, workers: int,
                  tiles: int, turns: int) -> dict:
    """Tiles/s of one ``method`` alone in this process: a warm-up turn of ``tiles`` tiles (not
    counted), then ``turns`` counted turns; ``{"tiles_per_s", "turns"}`` (each turn's rate)."""
    warm_page_cache(path)
    if method == "raw":
        import rasterio

        with rasterio.open(path) as src:
            size = src.width
        reader = RawReader(str(path), size, window, workers)
        run, nbytes = reader.seconds, float(reader._read((0, 0)))
    else:
        from ..config import DataConfig
        from ..data.pipeline import build_dataset, cache_scene

        scene = bench_scene(path, labels_path, path.stem)
        cfg = DataConfig(window_size=window, batch_size=batch_size, num_parallel_calls=workers,
                         cache=method == "cached")
        if cfg.cache:
            scene = cache_scene(scene, cfg.ignore_index)
        dataset = build_dataset([scene], cfg, training=True).with_options(private_options(workers))
        nbytes = tile_bytes(dataset)

        def run(n):
            return pipeline_seconds(dataset, batch_size, n)
    run(tiles)  # warm-up: this process's handles, block cache and threads
    seconds = [run(tiles) for _ in range(max(1, turns))]
    return {"tiles_per_s": tiles * len(seconds) / sum(seconds), "turns": [round(tiles / s, 1) for s in seconds],
            "bytes_per_tile": nbytes}


def _isolated_child(method: str, path: Path, labels_path: Path, args) -> dict:
    """:func:`isolated_rate` in a fresh ``python -m tfseg.bench pipeline --child`` process."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "tfseg.bench", "pipeline", "--child", method, str(path), str(labels_path),
           "--window", str(args.window), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
           "--tiles", str(args.tiles), "--turns", str(args.turns)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main_isolated(args, paths: dict, labels_path: Path) -> dict:
    """``--isolated``: every method of every scene alone in its own process (see the module doc)."""
    rows, totals = [], {method: 0.0 for method in METHODS}
    for name, _, _ in SCENES:
        rates = {method: _isolated_child(method, paths[name], labels_path, args) for method in METHODS}
        rows.append((name, rates))
        for method in METHODS:
            totals[method] += args.tiles / rates[method]["tiles_per_s"]  # seconds per method
    print(f"isolated processes, steady state ({args.turns} turn(s) of {args.tiles} tiles after one warm-up turn)")
    print(f"{'scene':<12} {'raw tiles/s':>12} {'pipeline':>10} {'cached':>10} {'ratio':>7} {'cached_ratio':>13}")
    for name, rates in rows:
        raw, streamed, cached = (rates[m]["tiles_per_s"] for m in METHODS)
        turns = " / ".join(",".join(f"{v:.0f}" for v in rates[m]["turns"]) for m in METHODS)
        print(f"{name:<12} {raw:>12.1f} {streamed:>10.1f} {cached:>10.1f} {streamed / raw:>7.2f} "
              f"{cached / raw:>13.2f}   turns (raw / pipeline / cached): {turns}")
    n = args.tiles * len(SCENES)
    sizes = {key: round(float(np.mean([rates[method]["bytes_per_tile"] for _, rates in rows])), 1)
             for key, method in (("pipeline", "pipeline"), ("raw_read", "raw"))}
    return {"pipeline_tiles_per_s": round(n / totals["pipeline"], 2),
            "raw_read_tiles_per_s": round(n / totals["raw"], 2),
            "ratio": round(totals["raw"] / totals["pipeline"], 3),
            "cached_ratio": round(totals["raw"] / totals["cached"], 3), "bytes_per_tile": sizes, "isolated": True}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfseg.bench pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--size", type=int, default=8192, help="scene width and height (pixels)")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--tiles", type=int, default=768, help="tiles measured per method and scene")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4, help="turns the methods take (load drift)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="parallelism of both")
    parser.add_argument("--breakdown", action="store_true",
                        help="also print single-thread ms per tile of each stage (where the time goes)")
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "tfseg_bench_pipeline"))
    parser.add_argument("--isolated", action="store_true",
                        help="each method alone in its own process, warm (steady state) instead of taking turns")
    parser.add_argument("--turns", type=int, default=3, help="--isolated: counted turns of --tiles tiles per method")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "SCENE", "LABELS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        method, scene_path, labels_path = args.child
        if method not in METHODS:
            parser.error(f"--child: method must be one of {', '.join(METHODS)}, got {method!r}")
        print(json.dumps(isolated_rate(method, Path(scene_path), Path(labels_path), args.window, args.batch_size,
                                       args.workers, args.tiles, args.turns)))
        return 0
    if args.isolated and args.breakdown:
        parser.error("--breakdown times the stages in this process; it does not combine with --isolated")

    from .. import _tf  # noqa: F401  (quiet TF start-up)
    from ..config import DataConfig

    cache = Path(args.cache_dir)
    start = time.perf_counter()
    labels_path = generate_labels(cache / f"buildings_{args.size}.geojson", args.size)
    paths = {name: generate_scene(cache / f"{name}_{args.size}.tif", args.size, bands, dtype)
             for name, bands, dtype in SCENES}
    print(f"scenes ready in {time.perf_counter() - start:.1f} s under {cache}")
    if args.isolated:
        result = main_isolated(args, paths, labels_path)
        print(f"all scenes: {result} (window {args.window}, batch {args.batch_size}, {args.workers} workers)")
        if args.json:
            print(json.dumps(result))
        return 0

    # the default data config (nodata check at 0.5, flips + rot90), windows/batch/parallelism set
    base = DataConfig(window_size=args.window, batch_size=args.batch_size, num_parallel_calls=args.workers)
    rows, totals, breakdowns = [], {"pipeline": 0.0, "raw": 0.0, "cached": 0.0}, []
    sizes = {"pipeline": [], "raw_read": []}
    for name, bands, dtype in SCENES:
        scene = bench_scene(paths[name], labels_path, name)
        warm_page_cache(paths[name])
        from ..data.pipeline import build_dataset, cache_scene

        t0 = time.perf_counter()
        cached_scene = cache_scene(scene, base.ignore_index)
        decode_s = time.perf_counter() - t0
        reader = RawReader(str(paths[name]), args.size, args.window, args.workers)
        # same parallelism, strictly: every tf.data stage (window reads, normalization) shares a
        # private pool of --workers threads, one intra-op thread each, like the baseline's pool
        options = private_options(args.workers)
        streamed_ds = build_dataset([scene], base, training=True).with_options(options)
        cached_ds = build_dataset([cached_scene], dataclasses.replace(base, cache=True),
                                  training=True).with_options(options)
        sizes["pipeline"].append(tile_bytes(streamed_ds))
        sizes["raw_read"].append(float(reader._read((0, 0))))
        # the methods take turns in rounds, so the load of a shared machine drifting during the
        # run hits all three alike; each round counts tiles / rounds tiles of each method
        seconds = {"raw": 0.0, "pipeline": 0.0, "cached": 0.0}
        rounds = max(1, min(args.rounds, args.tiles // args.batch_size))
        per_round = args.tiles // rounds
        for _ in range(rounds):
            seconds["raw"] += reader.seconds(per_round)
            seconds["pipeline"] += pipeline_seconds(streamed_ds, args.batch_size, per_round)
            seconds["cached"] += pipeline_seconds(cached_ds, args.batch_size, per_round)
        reader.close()
        if args.breakdown:
            breakdowns.append((name, stage_breakdown(scene, cached_scene, base, str(paths[name]), args.size,
                                                     args.window, max(args.batch_size, args.tiles // 2))))
        del cached_ds, cached_scene
        counted = per_round * rounds
        raw, streamed, cached = (counted / seconds[k] for k in ("raw", "pipeline", "cached"))
        rows.append((name, raw, streamed, cached, decode_s))
        for key in totals:
            totals[key] += args.tiles / (counted / seconds[key])  # seconds per method

    print(f"{'scene':<12} {'raw tiles/s':>12} {'pipeline':>10} {'cached':>10} {'ratio':>7} {'cached_ratio':>13} {'decode s':>9}")
    for name, raw, streamed, cached, decode_s in rows:
        print(f"{name:<12} {raw:>12.1f} {streamed:>10.1f} {cached:>10.1f} {streamed / raw:>7.2f} {cached / raw:>13.2f} {decode_s:>9.1f}")
    if breakdowns:
        keys = list(breakdowns[0][1])
        print("single thread, ms per tile: " + ", ".join(keys))
        for name, stages in breakdowns:
            print(f"{name:<12} " + " ".join(f"{stages[k]:>8.3f}" for k in keys))
    n = args.tiles * len(SCENES)
    result = {
        "pipeline_tiles_per_s": round(n / totals["pipeline"], 2),
        "raw_read_tiles_per_s": round(n / totals["raw"], 2),
        "ratio": round(totals["raw"] / totals["pipeline"], 3),
        "cached_ratio": round(totals["raw"] / totals["cached"], 3),
        "bytes_per_tile": {key: round(float(np.mean(values)), 1) for key, values in sizes.items()},
    }
    print(f"all scenes: {result} (window {args.window}, batch {args.batch_size}, {args.workers} workers)")
    if args.json:
        print(json.dumps(result))
    return 0
