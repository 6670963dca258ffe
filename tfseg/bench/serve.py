"""``python -m tfseg.bench serve [--json]``: :predict latency over HTTP vs the in-process Keras call.

Exports a UNet (the default config's: depth 4, 16 filters, 4 bands, 1 class), starts
``python -m tfseg.serve`` on a free 127.0.0.1 port, and measures on the same process run:

* ``serve_p50_ms`` / ``serve_p99_ms``: one ``--tile``² tile per ``:predict`` request, sequential
  and alternated with the in-process call (so both sides see the same machine load),
  time from sending the request to having the whole response body (what a load generator
  measures; the client's own JSON decoding is reported in the table, not in these numbers);
* ``inproc_p50_ms``: the in-process Keras call on the same tile (the model normalizes in its first layer);
* table only: the exported signature called in-process (the graph the server runs, compiled,
  where the Keras call is eager), so the pure HTTP + JSON overhead is visible;
* ``requests`` / ``errors``: ``--clients`` concurrent clients x ``--requests-per-client`` requests
  (tile ``--concurrent-tile``²), counting non-200 answers and connection failures.

``--payload json`` sends raw 16-bit values as nested JSON lists (``serving_default``, what any TF
Serving client does); ``--payload png`` sends a base64 16-bit PNG (``serving_bytes``).

Last line with ``--json``:
``{"serve_p50_ms": f, "serve_p99_ms": f, "inproc_p50_ms": f, "ratio_p50": f, "requests": n, "errors": n}``
"""
from __future__ import annotations

import argparse
import base64
import gc
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _percentile(values, q) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q))


def start_server(base: Path, name: str, log_file: Path, threads: int = 8, timeout: float = 180.0):
    """Start ``python -m tfseg.serve`` on a free loopback port; -> (process, port). Bounded wait."""
    port_file = base.parent / f".{name}.port"
    port_file.unlink(missing_ok=True)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    log = open(log_file, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tfseg.serve", "--model-base-path", str(base), "--model-name", name,
         "--port", "0", "--port-file", str(port_file), "--threads", str(threads)],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tfseg.serve exited with {process.returncode}: {log_file.read_text()[-2000:]}")
        if port_file.is_file() and port_file.read_text().strip():
            port = int(port_file.read_text())
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", f"/v1/models/{name}")
                if conn.getresponse().status == 200:
                    conn.close()
                    return process, port
            except OSError:
                pass
        time.sleep(0.2)
    stop_server(process)
    raise TimeoutError(f"tfseg.serve did not become ready within {timeout:.0f} s; log: {log_file}")


def stop_server(process) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _request(conn, path: str, body: bytes) -> tuple[int, bytes]:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read()


def _tile_body(tile: np.ndarray, payload: str) -> bytes:
    if payload == "png":
        import cv2

        channels = tile.shape[-1]
        image = tile.astype(np.uint16)
        if channels in (3, 4):  # OpenCV writes BGR(A): swap so the PNG holds bands in order
            image = image[..., [2, 1, 0, 3][:channels]]
        ok, png = cv2.imencode(".png", image)
        if not ok:
            raise RuntimeError("PNG encoding failed")
        return json.dumps({"signature_name": "serving_bytes",
                           "instances": [{"b64": base64.b64encode(png.tobytes()).decode()}]}).encode()
    return json.dumps({"instances": tile[None].astype(np.int64).tolist()}).encode()


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m tfseg.bench serve", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--bands", type=int, default=4)
    parser.add_argument("--classes", type=int, default=1)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=30, help="sequential timed calls per side")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests-per-client", type=int, default=200)
    parser.add_argument("--concurrent-tile", type=int, default=128)
    parser.add_argument("--payload", choices=["json", "png"], default="json")
    args = parser.parse_args(argv)
    if args.payload == "png" and args.bands > 4:
        parser.error("--payload png carries at most 4 bands")
    return args


def _export_bench_model(args, directory: Path):
    """The benchmark's UNet (seeded; meanstd preprocessing of 16-bit bands) exported as a
    SavedModel into ``directory``; -> the Keras model."""
    import keras

    from tfseg.data.raster import Normalization
    from tfseg.export import export_saved_model
    from tfseg.model_card import ModelCard
    from tfseg.models import Preprocess, build_model

    keras.utils.set_random_seed(0)
    norm = Normalization("meanstd", [1000.0] * args.bands, [300.0] * args.bands,
                         [0.0] * args.bands, [4000.0] * args.bands, [f"band{i + 1}" for i in range(args.bands)])
    model = build_model("unet", input_shape=(None, None, args.bands), classes=args.classes,
                        depth=args.depth, filters=args.filters,
                        preprocessing=Preprocess.from_normalization(norm, nodata=0.0))
    export_saved_model(model, directory, ModelCard.for_model(model, norm, "uint16", 0.0))
    return model


def _timed(times: list, call):
    start = time.perf_counter()
    result = call()
    times.append((time.perf_counter() - start) * 1e3)
    return result


def _sequential(args, port: int, path: str, body: bytes, model, batch: np.ndarray, saved_model: Path) -> dict:
    """``--repeats`` sequential ``:predict`` requests, each followed by the client's JSON
    decode, the in-process Keras call and the exported signature called in-process (the graph
    the server runs, without HTTP/JSON; the Keras call is eager), alternated so all see the
    same machine load (these machines are shared); -> ms lists by name."""
    import orjson
    import tensorflow as tf

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(3):  # warm-up
        status, reply = _request(conn, path, body)
        if status != 200:
            raise RuntimeError(f"warm-up request failed ({status}): {reply[:300]!r}")
    for _ in range(3):
        model(batch, training=False)
    signature = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    signature(images=tf.constant(batch))
    times = {"serve": [], "decode": [], "inproc": [], "graph": []}
    for _ in range(args.repeats):
        status, reply = _timed(times["serve"], lambda: _request(conn, path, body))
        if status != 200:
            raise RuntimeError(f"request failed ({status}): {reply[:300]!r}")
        _timed(times["decode"], lambda: orjson.loads(reply))
        _timed(times["inproc"], lambda: np.asarray(model(batch, training=False)))
        _timed(times["graph"], lambda: signature(images=tf.constant(batch))["classes"].numpy())
    conn.close()
    return times


def _concurrent(args, port: int, path: str, body: bytes) -> tuple[int, int, float]:
    """``--clients`` threads sending ``--requests-per-client`` requests each; -> (requests,
    errors: non-200 answers and connection failures, seconds)."""
    errors = [0] * args.clients
    done = [0] * args.clients

    def client(index):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in range(args.requests_per_client):
            try:
                status, _ = _request(conn, path, body)
                errors[index] += status != 200
            except (OSError, http.client.HTTPException):
                errors[index] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            done[index] += 1
        conn.close()

    start = time.perf_counter()
    workers = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return int(sum(done)), int(sum(errors)), time.perf_counter() - start


def _print_table(args, result: dict, times: dict, body_bytes: int, concurrent_seconds: float) -> None:
    serve_p50, graph_p50 = _percentile(times["serve"], 50), _percentile(times["graph"], 50)
    print(f"tfseg.serve vs in-process Keras: unet depth {args.depth} filters {args.filters}, "
          f"{args.bands} bands, {args.classes} class(es), payload {args.payload}")
    print(f"  {'request body':<34}{body_bytes / 1e6:>10.2f} MB")
    print(f"  {'HTTP :predict p50 / p99':<34}{result['serve_p50_ms']:>10.1f} / {result['serve_p99_ms']:.1f} ms "
          f"({args.tile}x{args.tile}, {args.repeats} sequential)")
    print(f"  {'in-process Keras call p50':<34}{result['inproc_p50_ms']:>10.1f} ms")
    print(f"  {'ratio p50 (goal <= 1.3)':<34}{result['ratio_p50']:>10.3f}")
    print(f"  {'in-process SavedModel call p50':<34}{graph_p50:>10.1f} ms "
          f"(same graph as the server; HTTP+JSON overhead p50 {serve_p50 - graph_p50:.1f} ms)")
    print(f"  {'client JSON decode p50 (extra)':<34}{_percentile(times['decode'], 50):>10.1f} ms")
    print(f"  {'concurrent requests / errors':<34}{result['requests']:>10d} / {result['errors']} "
          f"({args.clients} clients x {args.requests_per_client}, {args.concurrent_tile}x{args.concurrent_tile}, "
          f"{result['requests'] / concurrent_seconds:.1f} req/s)")


def main(argv=None) -> int:
    args = _parse(argv)
    from tfseg import _tf  # noqa: F401  (TensorFlow without its start-up notices)

    rng = np.random.default_rng(0)
    tile = rng.integers(0, 4000, (args.tile, args.tile, args.bands)).astype(np.float32)
    small = rng.integers(0, 4000, (args.concurrent_tile, args.concurrent_tile, args.bands)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="tfseg-bench-serve-") as tmp:
        base = Path(tmp) / "models" / "bench"
        model = _export_bench_model(args, base / "1")
        process, port = start_server(base, "bench", Path(tmp) / "serve.log")
        # as in the server: keep the collector off TensorFlow's object graph while decoding replies
        gc.collect()
        gc.freeze()
        path = "/v1/models/bench:predict"
        try:
            body = _tile_body(tile, args.payload)
            times = _sequential(args, port, path, body, model, tile[None], base / "1")
            requests, errors, concurrent_seconds = _concurrent(args, port, path, _tile_body(small, args.payload))
        finally:
            stop_server(process)

    serve_p50, inproc_p50 = _percentile(times["serve"], 50), _percentile(times["inproc"], 50)
    result = {
        "serve_p50_ms": round(serve_p50, 2),
        "serve_p99_ms": round(_percentile(times["serve"], 99), 2),
        "inproc_p50_ms": round(inproc_p50, 2),
        "ratio_p50": round(serve_p50 / inproc_p50, 3),
        "requests": requests,
        "errors": errors,
    }
    _print_table(args, result, times, len(body), concurrent_seconds)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
