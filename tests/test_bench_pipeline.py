"""Smoke test of ``python -m tfseg.bench pipeline`` on a small generated scene."""
from __future__ import annotations

import json

import pytest

from tfseg.bench.__main__ import main


def test_bench_pipeline_json_keys(tmp_path, capsys):
    assert main(["pipeline", "--json", "--size", "512", "--tiles", "16", "--batch-size", "4",
                 "--cache-dir", str(tmp_path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert set(result) == {"pipeline_tiles_per_s", "raw_read_tiles_per_s", "ratio", "cached_ratio", "bytes_per_tile"}
    sizes = result.pop("bytes_per_tile")
    assert all(v > 0 for v in result.values())
    # source-dtype tiles: the baseline's image bytes (3 x 256² uint8, 8 x 256² uint16: 622592 on average)
    # plus one uint8 label byte per pixel on the pipeline side
    assert sizes == {"raw_read": 622592.0, "pipeline": 622592.0 + 256 * 256}
    assert abs(result["ratio"] - result["pipeline_tiles_per_s"] / result["raw_read_tiles_per_s"]) < 0.01
    assert (tmp_path / "rgb_uint8_512.tif").is_file() and (tmp_path / "mul_uint16_512.tif").is_file()


def test_bench_pipeline_breakdown_prints_every_stage(tmp_path, capsys):
    assert main(["pipeline", "--json", "--breakdown", "--size", "512", "--tiles", "16", "--batch-size", "4",
                 "--rounds", "1", "--cache-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("single thread, ms per tile"))
    stages = lines[header].split(": ", 1)[1].split(", ")
    assert stages == ["raw_read", "streamed_sampling", "streamed_pipeline", "cached_sampling", "cached_pipeline"]
    for row, scene in zip(lines[header + 1 : header + 3], ("rgb_uint8", "mul_uint16")):
        name, *values = row.split()
        assert name == scene and len(values) == len(stages) and all(float(v) > 0 for v in values)
    assert set(json.loads(lines[-1])) == {"pipeline_tiles_per_s", "raw_read_tiles_per_s", "ratio", "cached_ratio",
                                          "bytes_per_tile"}


def test_bench_pipeline_isolated_runs_each_method_in_its_own_process(tmp_path, capsys):
    assert main(["pipeline", "--json", "--isolated", "--size", "512", "--tiles", "16", "--batch-size", "4",
                 "--turns", "2", "--cache-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result.pop("isolated") is True
    assert set(result) == {"pipeline_tiles_per_s", "raw_read_tiles_per_s", "ratio", "cached_ratio", "bytes_per_tile"}
    assert result["bytes_per_tile"] == {"raw_read": 622592.0, "pipeline": 622592.0 + 256 * 256}
    assert abs(result["ratio"] - result["pipeline_tiles_per_s"] / result["raw_read_tiles_per_s"]) < 0.01
    rows = [line for line in lines if line.startswith(("rgb_uint8", "mul_uint16"))]
    assert len(rows) == 2 and all(len(row.split("turns (raw / pipeline / cached): ")[1].split(" / ")) == 3
                                  for row in rows)  # every method's counted turns, two each
    assert all(len(part.split(",")) == 2 for row in rows for part in row.split(": ")[1].split(" / "))
    with pytest.raises(SystemExit):
        main(["pipeline", "--isolated", "--breakdown", "--size", "512", "--cache-dir", str(tmp_path)])
    assert "does not combine with --isolated" in capsys.readouterr().err
