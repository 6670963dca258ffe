"""The real tfseg.serve subprocess on a free 127.0.0.1 port, spoken to over HTTP like TF Serving."""
from __future__ import annotations

import base64
import http.client
import io
import json
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tfseg._tf import tensorflow as tf  # noqa: F401,I001  (quiet import)
import keras
from PIL import Image

from tfseg.bench.serve import start_server, stop_server
from tfseg.data.raster import Normalization
from tfseg.export import export_saved_model
from tfseg.model_card import ModelCard
from tfseg.models import Preprocess, build_model, with_preprocessing
from tfseg.serve import main as serve_main

NAME = "landcover"
MAX_BYTES = 300_000
MAX_PIXELS = 1_000_000


def _png_b64(array) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


BOMB = _png_b64(np.zeros((1200, 1000, 3), np.uint8))  # compresses to a few KB, decodes to 1.2 MP
CLASSES = ["water", "trees", "buildings"]


def reference(model, norm, images, multiple=4):
    """The architecture (normalized inputs) on numpy-normalized pixels: what the exported model,
    preprocessing inside, must return for raw ones (pixels 0 in every band are nodata -> 0)."""
    images = np.asarray(images, np.float32)
    x = norm.apply(images)
    x[(images == 0).all(-1)] = 0.0
    height, width = x.shape[1:3]
    pad = [(0, 0), (0, -height % multiple), (0, -width % multiple), (0, 0)]
    return np.asarray(model(np.pad(x, pad, mode="reflect"), training=False))[:, :height, :width]


class Client:
    def __init__(self, port: int):
        self.port = port

    def call(self, method: str, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def predict(self, body=None, raw=None, version=None):
        path = f"/v1/models/{NAME}" + (f"/versions/{version}" if version else "") + ":predict"
        return self.call("POST", path, body, raw)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    keras.utils.set_random_seed(3)
    model = build_model("unet", input_shape=(None, None, 3), classes=3, depth=2, filters=4)
    norm = Normalization("meanstd", [100.0, 120.0, 90.0], [30.0, 40.0, 20.0], [], [], ["r", "g", "b"])
    base = root / "models" / NAME
    raw_model = with_preprocessing(model, Preprocess.from_normalization(norm, nodata=0.0))
    export_saved_model(raw_model, base / "1", ModelCard.for_model(raw_model, norm, "uint8", 0.0, classes=CLASSES,
                                                                  tile_size=64))
    process, port = _start(base, root / "serve.log")
    try:
        yield Client(port), model, norm, base
    finally:
        stop_server(process)
        assert process.poll() is not None


def _start(base: Path, log: Path):
    # same launcher as the benchmark, plus a small body limit and fast version polling
    import subprocess
    import sys
    import os

    port_file = base.parent / ".port"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen(
        [sys.executable, "-m", "tfseg.serve", "--model-base-path", str(base), "--model-name", NAME,
         "--port", "0", "--port-file", str(port_file), "--max-request-bytes", str(MAX_BYTES),
         "--file-system-poll-wait-seconds", "0.5", "--threads", "4", "--max-image-pixels", str(MAX_PIXELS)],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        if port_file.is_file() and port_file.read_text().strip():
            port = int(port_file.read_text())
            try:
                if Client(port).call("GET", f"/v1/models/{NAME}")[0] == 200:
                    return process, port
            except OSError:
                pass
        time.sleep(0.2)
    stop_server(process)
    pytest.fail(f"tfseg.serve not ready within 120 s: {log.read_text()[-2000:]}")


def _images(shape=(1, 9, 13, 3), seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape)


def _good(client, model, norm):
    images = _images(seed=99)
    status, body = client.predict({"instances": images.tolist()})
    assert status == 200, body
    np.testing.assert_allclose(np.asarray(body["predictions"][0]["probabilities"]),
                               reference(model, norm, images)[0], atol=1e-5)


def test_model_status_and_version_status(server):
    client, *_ = server
    assert client.call("GET", f"/v1/models/{NAME}") == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    assert client.call("GET", f"/v1/models/{NAME}/versions/1")[0] == 200


@pytest.mark.parametrize("path,message", [
    ("/v1/models/other", "Servable not found for request: Latest(other)"),
    (f"/v1/models/{NAME}/versions/7", f"Servable not found for request: Specific({NAME}, 7)"),
    (f"/v1/models/{NAME}/versions/7/metadata", "Specific"),
    ("/v2/nothing", "Malformed request"),
])
def test_unknown_model_version_or_path_is_404(server, path, message):
    client, *_ = server
    status, body = client.call("GET", path)
    assert status == 404 and message in body["error"]


def test_metadata_has_signature_defs_and_tfseg_description(server):
    client, *_ = server
    status, body = client.call("GET", f"/v1/models/{NAME}/metadata")
    assert status == 200 and body["model_spec"] == {"name": NAME, "signature_name": "", "version": "1"}
    defs = body["metadata"]["signature_def"]["signature_def"]
    images = defs["serving_default"]["inputs"]["images"]
    assert images["dtype"] == "DT_FLOAT" and images["tensor_shape"]["dim"][-1]["size"] == "3"
    assert defs["serving_uint8"]["inputs"]["images"]["dtype"] == "DT_UINT8"
    assert defs["serving_bytes"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert set(defs["serving_default"]["outputs"]) == {"probabilities", "classes"}
    tfseg_meta = body["metadata"]["tfseg"]
    assert tfseg_meta["classes"] == CLASSES and tfseg_meta["band_dtype"] == "uint8" and tfseg_meta["tile_size"] == 64


def test_row_format_matches_keras_model(server):
    client, model, norm, _ = server
    images = _images((2, 11, 21, 3), seed=1)
    status, body = client.predict({"instances": images.tolist()})
    assert status == 200
    assert len(body["predictions"]) == 2 and set(body["predictions"][0]) == {"probabilities", "classes"}
    expected = reference(model, norm, images)
    got = np.asarray([p["probabilities"] for p in body["predictions"]], np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_array_equal([p["classes"] for p in body["predictions"]], expected.argmax(-1))
    # instances as objects keyed by input name, and an explicit signature_name
    status, named = client.predict({"signature_name": "serving_default",
                                    "instances": [{"images": im} for im in images.tolist()]})
    assert status == 200 and named == body


def test_columnar_format_and_integer_signatures(server):
    client, model, norm, _ = server
    images = _images((1, 17, 6, 3), seed=2)
    expected = reference(model, norm, images)
    for signature in ("serving_default", "serving_uint8", "serving_int32"):
        status, body = client.predict({"signature_name": signature, "inputs": {"images": images.tolist()}})
        assert status == 200, body
        np.testing.assert_allclose(np.asarray(body["outputs"]["probabilities"]), expected, atol=1e-5)
        assert np.asarray(body["outputs"]["classes"]).shape == (1, 17, 6)
    status, bare = client.predict({"inputs": images.tolist()})  # a single input may be given bare
    assert status == 200 and bare["outputs"]["classes"] == body["outputs"]["classes"]


def test_b64_png_bytes(server):
    client, model, norm, _ = server
    image = _images((14, 10, 3), seed=3).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    b64 = base64.b64encode(buffer.getvalue()).decode()
    status, body = client.predict({"signature_name": "serving_bytes", "instances": [{"b64": b64}]})
    assert status == 200, body
    np.testing.assert_allclose(np.asarray(body["predictions"][0]["probabilities"]),
                               reference(model, norm, image[None])[0], atol=1e-5)


def test_metadata_signature_over_predict(server):
    client, *_ = server
    status, body = client.predict({"signature_name": "metadata", "inputs": {}})
    assert status == 200 and json.loads(body["outputs"])["classes"] == CLASSES


BAD_REQUESTS = [
    ("malformed JSON", b'{"instances": [[[[1, 2, 3]]]', "JSON Parse error"),
    ("not an object", b"[1, 2, 3]", "request body must be an object"),
    ("no instances or inputs", b'{"signature_name": "serving_default"}', "Missing 'inputs' or 'instances'"),
    ("wrong rank", json.dumps({"instances": [[1, 2, 3]]}).encode(), "must have rank 4"),
    ("wrong band count", json.dumps({"instances": [[[[1, 2]]]]}).encode(), "dimension 3: expected 3, got 2"),
    ("ragged", json.dumps({"instances": [[[[1, 2, 3]], [[1, 2]]]]}).encode(), "ragged"),
    ("strings for floats", json.dumps({"instances": [[[["a", "b", "c"]]]]}).encode(), "expected float32 values"),
    ("floats for uint8", json.dumps({"signature_name": "serving_uint8", "instances": [[[[1.5, 2, 3]]]]}).encode(),
     "expected uint8 values, got float"),
    ("out of uint8 range", json.dumps({"signature_name": "serving_uint8", "instances": [[[[1, 2, 300]]]]}).encode(),
     "outside the uint8 range"),
    ("unknown signature", json.dumps({"signature_name": "nope", "instances": [[[[1, 2, 3]]]]}).encode(),
     'Serving signature name: "nope" not found'),
    ("bad base64", json.dumps({"signature_name": "serving_bytes", "instances": [{"b64": "%%%"}]}).encode(),
     "not valid base64"),
    ("not an image", json.dumps({"signature_name": "serving_bytes",
                                 "instances": [{"b64": base64.b64encode(b"hello").decode()}]}).encode(),
     "expected PNG (8- or 16-bit) or JPEG"),
    ("image bomb", json.dumps({"signature_name": "serving_bytes", "instances": [{"b64": BOMB}]}).encode(),
     "more than the server's limit of 1000000 (--max-image-pixels)"),
    ("oversize body", json.dumps({"instances": [[[[1, 2, 3]] * 40000]]}).encode(), "exceeds the server's limit"),
    ("16-bit PNG for a uint8 model", json.dumps({"signature_name": "serving_bytes", "instances": [
        {"b64": base64.b64encode(cv2.imencode(".png", np.full((8, 8, 3), 300, np.uint16))[1].tobytes()).decode()}]}
    ).encode(),
     "the image holds uint16 pixels but the model was trained on uint8 imagery"),
    ("bare nan literal", b'{"instances": [[[[1, nan, 3]]]]}', "JSON Parse error"),
]


@pytest.mark.parametrize("case,raw,message", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_is_400_and_server_keeps_serving(server, case, raw, message):
    client, model, norm, _ = server
    assert case != "oversize body" or len(raw) > MAX_BYTES
    status, body = client.predict(raw=raw)
    assert status == 400 and set(body) == {"error"} and message in body["error"], (status, body)
    _good(client, model, norm)


def test_nan_and_infinity_literals_are_accepted_like_tf_serving(server):
    """Float imagery marks missing pixels with NaN; TF Serving's REST API parses NaN / Infinity,
    so tfseg.serve does too: a NaN pixel is no data, as the card's nodata value (0) is."""
    client, model, norm, _ = server
    images = _images(seed=5).astype(np.float64)
    images[0, 2, 3] = 0.0  # nodata
    status, expected = client.predict({"instances": images.tolist()})
    assert status == 200, expected
    text = json.dumps({"instances": images.tolist()})
    for body in (text.replace("[0.0, 0.0, 0.0]", "[NaN, NaN, NaN]", 1), text.replace("[0.0, 0.0, 0.0]",
                                                                                    "[NaN, 0.0, 0.0]", 1)):
        assert "NaN" in body
        status, got = client.predict(raw=body.encode())  # the fast numeric path
        assert status == 200, got
        np.testing.assert_allclose(got["predictions"][0]["probabilities"], expected["predictions"][0]["probabilities"],
                                   atol=1e-6)
    body = '{"inputs": {"images": ' + json.dumps(images.tolist()).replace("255.0", "Infinity") + '}}'
    status, got = client.predict(raw=body.encode())  # the general parser
    assert status == 200 and len(got["outputs"]["probabilities"][0]) == images.shape[1], got
    body = '{"signature_name": "serving_uint8", "instances": [[[[1, NaN, 3]]]]}'
    status, got = client.predict(raw=body.encode())
    assert status == 400 and "expected uint8 values, got float" in got["error"]


def test_wrong_method_and_unsupported_api(server):
    client, model, norm, _ = server
    assert client.call("GET", f"/v1/models/{NAME}:predict")[0] == 405
    status, body = client.call("POST", f"/v1/models/{NAME}:classify", {"instances": []})
    assert status == 400 and "use :predict" in body["error"]
    _good(client, model, norm)


def test_concurrent_clients(server):
    client, model, norm, _ = server
    images = _images((1, 16, 16, 3), seed=5)
    expected = reference(model, norm, images)[0]
    results, failures = [], []

    def worker():
        for _ in range(4):
            try:
                status, body = client.predict({"instances": images.tolist()})
                results.append(status)
                np.testing.assert_allclose(np.asarray(body["predictions"][0]["probabilities"]), expected, atol=1e-5)
            except Exception as error:  # noqa: BLE001 - collected and reported below
                failures.append(repr(error))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures and results == [200] * 24


def test_new_version_is_picked_up_and_old_one_unloaded(server):
    """Runs last in this module: publishes version 2 (renamed into place, as tfseg.export does)."""
    client, model, norm, base = server
    staging = base / ".2.partial"
    shutil.copytree(base / "1", staging)
    staging.rename(base / "2")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body = client.call("GET", f"/v1/models/{NAME}")
        if [v["version"] for v in body["model_version_status"]] == ["2"]:
            break
        time.sleep(0.3)
    assert body["model_version_status"][0]["version"] == "2"
    assert client.predict({"instances": _images().tolist()}, version=2)[0] == 200
    assert client.predict({"instances": _images().tolist()}, version=1)[0] == 404


def test_cli_refuses_missing_or_empty_base_path(tmp_path, capsys):
    assert serve_main(["--model-base-path", str(tmp_path / "none"), "--model-name", "x", "--port", "0"]) == 2
    assert "--model-base-path" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert serve_main(["--model-base-path", str(tmp_path / "empty"), "--model-name", "x", "--port", "0"]) == 2
    assert "no SavedModel version" in capsys.readouterr().err
    assert serve_main(["--model-base-path", str(tmp_path), "--model-name", "x", "--port", "70000"]) == 2


@pytest.mark.slow
def test_bench_serve_json_keys(capsys):
    from tfseg.bench import serve as bench

    assert bench.main(["--json", "--tile", "64", "--repeats", "3", "--clients", "2", "--requests-per-client", "3",
                       "--depth", "2", "--filters", "4", "--concurrent-tile", "32"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(result) == ["serve_p50_ms", "serve_p99_ms", "inproc_p50_ms", "ratio_p50", "requests", "errors"]
    assert result["requests"] == 6 and result["errors"] == 0 and result["serve_p50_ms"] > 0


def test_start_server_helper_is_bounded(tmp_path):
    """The launcher gives up with the server's log when the model path is unusable."""
    with pytest.raises(RuntimeError, match="exited"):
        start_server(tmp_path / "missing", "x", tmp_path / "log.txt", timeout=60)


@pytest.mark.parametrize("value", [[[1, 2], [3, 4]], [[[1.5, -2e3]]], [7], [[[1, 2]], [[3, 4]]],
                                   np.arange(2 * 5 * 3 * 4).reshape(2, 5, 3, 4).tolist()])
def test_fast_numeric_json_path_equals_general_parser(value):
    from tfseg.serve import numeric_array_from_json, parse_body

    text = json.dumps(value).encode()
    array = numeric_array_from_json(text)
    np.testing.assert_array_equal(array, np.array(value))
    assert array.dtype == np.array(value).dtype
    body = parse_body(b'{"signature_name": "serving_uint8", "instances": ' + text + b"}")
    assert body["signature_name"] == "serving_uint8"
    np.testing.assert_array_equal(body["instances"], np.array(value))


@pytest.mark.parametrize("value", [[[1, 2], [3]], [[1, [2]]], [[]], [], [[1], []], [[[]], [[1]]], [[], [1, 2]], [1, "a"], [{"b64": "x"}], [[1, 2], [3, 4, 5]]])
def test_fast_numeric_json_path_declines_anything_else(value):
    from tfseg.serve import numeric_array_from_json

    assert numeric_array_from_json(json.dumps(value).encode()) is None


def test_version_policy_all_and_a_broken_version_is_skipped(server, tmp_path):
    from tfseg.serve import ModelManager

    _, _, _, base = server
    newest = max(int(p.name) for p in base.iterdir() if p.name.isdigit())
    for version in (1, 2):
        shutil.copytree(base / str(newest), tmp_path / "m" / str(version))
    (tmp_path / "m" / "3").mkdir()
    (tmp_path / "m" / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
    manager = ModelManager(tmp_path / "m", "m", policy="all", poll_seconds=0)
    assert manager.versions() == [1, 2]  # 3 failed to load and is not served
    assert manager.get("m", "1").version == 1 and manager.get("m", None).version == 2
    latest = ModelManager(tmp_path / "m", "m", policy="latest", poll_seconds=0)
    assert latest.versions() == [2]


def test_fixed_input_size_model_is_served(tmp_path):
    """A model that only takes 32x32 inputs (an encoder with a fixed size) loads: the warm-up
    call uses the signature's height and width."""
    from tfseg.serve import ModelManager, ServingApp

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Reshape((32, 32, 4))(keras.layers.Reshape((32 * 32 * 4,))(x))
    core = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(x))
    norm = Normalization("meanstd", [100.0] * 3, [50.0] * 3, [], [], [])
    model = with_preprocessing(core, Preprocess.from_normalization(norm, nodata=0.0))
    export_saved_model(model, tmp_path / "m" / "1", ModelCard.for_model(model, norm, "uint8", 0.0, tile_size=32))
    manager = ModelManager(tmp_path / "m", "m", poll_seconds=0)
    assert manager.versions() == [1]
    images = _images((1, 32, 32, 3), seed=1)
    body = ServingApp(manager).predict(manager.get("m", None), json.dumps({"instances": images.tolist()}).encode())
    expected = np.asarray(model(images.astype(np.float32), training=False))[0]
    np.testing.assert_allclose(np.asarray(body["predictions"][0]["probabilities"]), expected, atol=1e-5)


def test_no_loadable_version_names_each_version_and_why(server, tmp_path, capsys):
    """Every version failing to load: the error says why for each (e.g. an export from before
    the model card: how to upgrade it), not only that there is no version."""
    from tfseg.predictors import ModelLoadError
    from tfseg.serve import ModelManager

    _, _, _, base = server
    newest = max(int(p.name) for p in base.iterdir() if p.name.isdigit())
    legacy = tmp_path / "m" / "1"
    shutil.copytree(base / str(newest), legacy)
    (legacy / "assets" / "model_card.json").unlink()
    (legacy / "assets" / "tfseg_metadata.json").write_text("{}")
    (tmp_path / "m" / "2").mkdir()
    (tmp_path / "m" / "2" / "saved_model.pb").write_bytes(b"not a SavedModel")
    with pytest.raises(ModelLoadError, match=r"could be loaded: version 2: .*; version 1: LegacyArtifactError: "
                                             r".*before the model card.*tfseg.model_card upgrade"):
        ModelManager(tmp_path / "m", "m", poll_seconds=0)
    assert serve_main(["--model-base-path", str(tmp_path / "m"), "--model-name", "m", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "version 1: LegacyArtifactError" in err and "version 2:" in err
