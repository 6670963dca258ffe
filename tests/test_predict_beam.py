"""Prediction at scale: ``--runner beam`` (multi-processing DirectRunner, two workers) against
``--runner local`` on four generated scenes, one of them corrupt, then rerun after repairing it:
same outputs, the failure reported while the others complete, finished scenes skipped on rerun;
and the ``--beam-options`` errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.data.fixtures import write_geotiff
from tests.infer_support import building_scene, save_run
from tfseg import predict

beam = pytest.importorskip("apache_beam", reason="apache-beam not installed (extra: beam)")
from tfseg.predict_beam import beam_flags, default_worker_threads, parse_beam_options  # noqa: E402

BEAM = "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"
OPTIONS = ["--tile-size", "64", "--overlap", "16", "--batch-size", "2", "--spacenet-csv", "--quiet"]
TIMING = {"predict_seconds", "postprocess_seconds", "started", "finished", "worker"}  # differ by runner
PATHS = {"probabilities", "classes", "polygons", "overlay"}  # in each run's own output folder


def smooth_oracle(bands=3, gain=8.0):
    """3x3 mean of the normalized bands through a sigmoid: bright roofs are buildings, with a
    receptive field (3 px) that makes the tile blending matter."""
    import keras

    inputs = keras.Input((None, None, bands))
    conv = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.full((3, 3, bands, 1), gain / (9 * bands), np.float32), np.zeros(1, np.float32)])
    return model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both runners on s0..s3 with s3 truncated, then again after s3 is repaired."""
    root = tmp_path_factory.mktemp("scale")
    run = save_run(smooth_oracle(), root / "run", config="data:\n  classes: [building]\n  window_size: 64\n")
    scenes = root / "scenes"
    for i in range(4):
        image, _ = building_scene(90 + 10 * i, 120 + 6 * i, boxes=((8, 10, 40, 50 + 4 * i), (55, 60, 85, 110)), seed=i)
        write_geotiff(scenes / f"s{i}.tif", image)
    good = (scenes / "s3.tif").read_bytes()
    (scenes / "s3.tif").write_bytes(good[: len(good) // 2])

    def argv(out):
        return ["--model", str(run), "--input", str(scenes / "*.tif"), "--output", str(out)] + OPTIONS

    def outputs(out):
        return {f.name: f.stat().st_mtime_ns for f in out.iterdir() if f.name.startswith(("s0_", "s1_", "s2_"))}

    result = {"root": root, "rc": {}, "summary": {}, "mtimes": {}}
    for runner in ("local", "beam"):
        extra = ["--runner", "beam", "--beam-options", BEAM] if runner == "beam" else []
        result["rc"][runner] = predict.main(argv(root / runner) + extra)
        result["summary"][runner] = json.loads((root / runner / "summary.json").read_text())
        result["mtimes"][runner] = outputs(root / runner)
        result.setdefault("failed_left", {})[runner] = sorted(f.name for f in (root / runner).glob("s3_*"))
    (scenes / "s3.tif").write_bytes(good)
    result["rc"]["local_rerun"] = predict.main(argv(root / "local"))
    # the Beam rerun through the command line: what reaches the terminal must be clean
    proc = subprocess.run([sys.executable, "-m", "tfseg.predict"] + argv(root / "beam") +
                          ["--runner", "beam", "--beam-options", BEAM], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=600)
    rc, output = proc.returncode, proc.stdout + proc.stderr
    result["rc"]["beam_rerun"], result["beam_rerun_output"] = rc, output
    for runner in ("local", "beam"):
        result["summary"][f"{runner}_rerun"] = json.loads((root / runner / "summary.json").read_text())
        result["mtimes"][f"{runner}_rerun"] = outputs(root / runner)
    return result


@pytest.mark.slow
def test_corrupt_scene_reported_and_the_others_complete(runs):
    for runner in ("local", "beam"):
        summary, out = runs["summary"][runner], runs["root"] / runner
        assert runs["rc"][runner] == 1
        assert (summary["runner"], summary["num_scenes"], summary["completed"], summary["failed"]) == (runner, 4, 3, 1)
        (failure,) = summary["failures"]
        assert failure["input"].endswith("s3.tif") and "corrupt or truncated" in failure["error"]
        assert [Path(s["input"]).name for s in summary["scenes"]] == ["s0.tif", "s1.tif", "s2.tif"]
        assert all((out / f"s{i}_done.json").is_file() for i in range(3))
        assert runs["failed_left"][runner] == []  # nothing half-written left for the failed scene


@pytest.mark.slow
def test_rerun_skips_finished_scenes_and_completes_the_repaired_one(runs):
    for runner in ("local", "beam"):
        summary = runs["summary"][f"{runner}_rerun"]
        assert runs["rc"][f"{runner}_rerun"] == 0
        assert (summary["completed"], summary["skipped"], summary["failed"]) == (1, 3, 0)
        assert len(summary["scenes"]) == 4 and summary["scenes"][3]["input"].endswith("s3.tif")
        # the finished scenes' files were not rewritten
        assert runs["mtimes"][f"{runner}_rerun"] == runs["mtimes"][runner] and len(runs["mtimes"][runner]) == 18
        assert (runs["root"] / runner / "s3_done.json").is_file()
    noise = [line for line in runs["beam_rerun_output"].splitlines()
             if any(word in line for word in ("cuda", "CUDA", "INFO", "WARNING", "absl"))]
    assert not noise, noise


@pytest.mark.slow
def test_beam_outputs_equal_local(runs):
    local, beam_out = runs["root"] / "local", runs["root"] / "beam"
    for i in range(4):
        with rasterio.open(local / f"s{i}_class.tif") as a, rasterio.open(beam_out / f"s{i}_class.tif") as b:
            assert a.profile == b.profile
            np.testing.assert_array_equal(a.read(), b.read())  # classes exactly
        with rasterio.open(local / f"s{i}_prob.tif") as a, rasterio.open(beam_out / f"s{i}_prob.tif") as b:
            pa, pb = a.read(), b.read()
            assert str(a.profile) == str(b.profile)  # (nodata NaN != NaN)
            assert np.array_equal(np.isnan(pa), np.isnan(pb)) and np.isnan(pa).sum() < pa.size
            assert np.nanmax(np.abs(pa - pb)) <= 2.0 ** -11  # one float16 step below 1
        for name in (f"s{i}_polygons.geojson", f"s{i}_proposals.csv"):
            assert (local / name).read_text() == (beam_out / name).read_text()
    for name in ("polygons.geojson", "proposals.csv"):
        assert (local / name).read_text() == (beam_out / name).read_text()
    merged = json.loads((local / "polygons.geojson").read_text())
    assert merged["crs"]["properties"]["name"].endswith("32636")
    assert sorted({f["properties"]["image_id"] for f in merged["features"]}) == ["s0", "s1", "s2", "s3"]
    assert len(merged["features"]) == 8

    def comparable(summary):
        return [{k: v for k, v in e.items() if k not in TIMING | PATHS} for e in summary["scenes"]]

    assert comparable(runs["summary"]["local_rerun"]) == comparable(runs["summary"]["beam_rerun"])


def test_beam_options_parsing_and_errors(tmp_path, capsys):
    assert beam_flags("runner=DirectRunner, direct_num_workers=2") == ["--runner=DirectRunner",
                                                                        "--direct_num_workers=2"]
    assert beam_flags("--runner=FlinkRunner --flink_master=host:8081") == ["--runner=FlinkRunner",
                                                                          "--flink_master=host:8081"]
    options = parse_beam_options(BEAM)
    assert options.get_all_options()["direct_num_workers"] == 2
    assert default_worker_threads(options) == max(1, len(os.sched_getaffinity(0)) // 2)
    assert default_worker_threads(parse_beam_options("runner=FlinkRunner,flink_master=host:8081")) == 0
    with pytest.raises(ValueError, match=r"unknown Beam pipeline option 'direct_num_wrkers=2'.*direct_num_workers"):
        parse_beam_options("direct_num_wrkers=2")
    with pytest.raises(ValueError, match=r"direct_num_workers.*invalid int value: 'two'"):
        parse_beam_options("direct_num_workers=two")
    with pytest.raises(ValueError, match=r"runner=NoSuchRunner"):
        parse_beam_options("runner=NoSuchRunner")
    image, _ = building_scene(32, 32, boxes=())
    scene = write_geotiff(tmp_path / "a.tif", image)
    base = ["--model", str(tmp_path), "--input", str(scene), "--output", str(tmp_path / "out")]
    assert predict.main(base + ["--runner", "beam", "--beam-options", "no_such_option=1"]) == 2
    assert "no_such_option" in capsys.readouterr().err
    assert predict.main(base + ["--beam-options", BEAM]) == 2  # the local runner takes no Beam options
    assert "--beam-options" in capsys.readouterr().err
    assert predict.main(base[:1] + [str(tmp_path / "nothing")] + base[2:] + ["--runner", "beam"]) == 2
    assert "nothing" in capsys.readouterr().err


def test_runner_names_resolve_as_beam_resolves_them(monkeypatch):
    """'direct' and 'directrunner' are Beam's DirectRunner: they get tfseg's DirectRunner defaults."""
    from tfseg import predict_beam

    monkeypatch.setattr(predict_beam, "cores", lambda: 8)
    for name in ("direct", "directrunner", "DIRECTRUNNER", "DirectRunner"):
        options = parse_beam_options(f"runner={name}")
        given = options.get_all_options()
        assert (given["runner"], given["direct_running_mode"], given["direct_num_workers"]) == (
            "DirectRunner", "multi_processing", 8), name
        assert default_worker_threads(options) == 1, name  # 8 cores over 8 workers
    assert parse_beam_options("runner=direct,direct_running_mode=in_memory").get_all_options()[
        "direct_running_mode"] == "in_memory"  # what is given is kept
    with pytest.raises(ValueError, match=r"direct_num_workers=-2: expected a number of worker processes"):
        parse_beam_options("runner=direct,direct_num_workers=-2")


def test_direct_num_workers_zero_shares_the_cores_over_the_workers_beam_starts(monkeypatch):
    """0 = one worker per CPU (Beam's multiprocessing.cpu_count()): each gets cores / workers threads,
    not all of them."""
    import multiprocessing

    from tfseg import predict_beam

    monkeypatch.setattr(predict_beam, "cores", lambda: 8)
    monkeypatch.setattr(multiprocessing, "cpu_count", lambda: 4)
    options = parse_beam_options("runner=DirectRunner,direct_num_workers=0")
    assert predict_beam.direct_workers(options) == 4
    assert default_worker_threads(options) == 2


def test_workers_get_absolute_truth_and_spacenet_csv_paths(tmp_path, monkeypatch):
    """The paths in the options every worker receives are absolute (a worker's working directory is
    not the launcher's); a bare --spacenet-csv name stays a name (it goes into --output)."""
    from tfseg import predict_beam

    run = save_run(smooth_oracle(), tmp_path / "run", config="data:\n  classes: [building]\n  window_size: 64\n")
    image, _ = building_scene(64, 64, boxes=((8, 10, 40, 50),))
    scene = write_geotiff(tmp_path / "scenes" / "a.tif", image)
    (tmp_path / "truth.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    (tmp_path / "csv").mkdir()
    seen = []

    class Capture:
        def __init__(self, model, output, options, threads):
            seen.append(options)
            raise RuntimeError("captured")

    monkeypatch.setattr(predict_beam, "PredictScenes", Capture)
    monkeypatch.chdir(tmp_path)
    for csv_name, expected in (("csv/p.csv", str(tmp_path / "csv" / "p.csv")), ("p.csv", "p.csv")):
        options = predict.PredictOptions(progress=False, truth="truth.geojson", spacenet_csv=csv_name)
        with pytest.raises(predict_beam.BeamPipelineError, match="captured"):
            predict_beam.run_beam(str(run), [str(scene)], "out", options, beam_options="runner=direct")
        assert seen[-1].truth == str(tmp_path / "truth.geojson")
        assert seen[-1].spacenet_csv == expected
