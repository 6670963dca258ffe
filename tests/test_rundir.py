"""tfseg.rundir: creating and re-opening run directories, stale temporaries, provenance."""
from __future__ import annotations

import platform
import re
import shutil
import subprocess

import pytest

import tfseg
from tfseg import config as config_lib
from tfseg.errors import TfsegError
from tfseg.fsutil import atomic_path
from tfseg.rundir import (RunDirError, default_run_dir, git_commit, package_versions, prepare_run_dir,
                          remove_stale_temporaries)


def _cfg(*overrides):
    return config_lib.load(None, ["tracking.name=tiny", *overrides])


def test_new_run_dir_is_created_with_its_config_then_resumed(tmp_path):
    run_dir = tmp_path / "runs" / "a"
    cfg = _cfg()
    assert prepare_run_dir(str(run_dir), cfg) == (run_dir, False)
    assert config_lib.diff(config_lib.load(run_dir / "config.yaml"), cfg) == {}
    # the same config again: resumed, untouched
    (run_dir / "history.csv").write_text("epoch\n0\n")
    assert prepare_run_dir(run_dir, cfg) == (run_dir, True)
    assert (run_dir / "history.csv").read_text() == "epoch\n0\n"
    # keys that do not change what is trained may differ
    assert prepare_run_dir(run_dir, _cfg("tracking.neptune.mode=off", "train.num_figure_tiles=0")) == (run_dir, True)


def test_different_config_is_refused_naming_the_dir_and_the_keys(tmp_path):
    run_dir = tmp_path / "run"
    prepare_run_dir(run_dir, _cfg())
    different = ["train.epochs=3", "train.learning_rate=0.02", "train.seed=5", "model.filters=8", "model.depth=3",
                 "data.batch_size=3", "data.window_size=128", "train.threshold=0.3", "model.dropout=0.2",
                 "train.weight_decay=0.001", "train.momentum=0.8", "train.clipnorm=2.0"]
    with pytest.raises(RunDirError) as error:
        prepare_run_dir(run_dir, _cfg(*different))
    message = str(error.value)
    assert str(run_dir) in message and "--overwrite" in message
    assert "data.batch_size:" in message and "(and 1 more)" in message  # ten listed, the rest counted
    assert isinstance(error.value, TfsegError)


def test_unrelated_non_empty_dir_is_refused_even_with_overwrite(tmp_path):
    """--overwrite replaces a tfseg run; a folder that holds none (a typo'd --run-dir) is never
    deleted."""
    run_dir = tmp_path / "photos"
    run_dir.mkdir()
    (run_dir / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(RunDirError, match=rf"run directory {re.escape(str(run_dir))} is not empty.*no config.yaml"):
        prepare_run_dir(run_dir, _cfg())
    with pytest.raises(RunDirError, match=r"no config.yaml.*--overwrite only replaces a tfseg run"):
        prepare_run_dir(run_dir, _cfg(), overwrite=True)
    assert sorted(p.name for p in run_dir.iterdir()) == ["holiday.jpg"]  # nothing touched


def test_overwrite_replaces_a_different_run_and_a_file_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    prepare_run_dir(run_dir, _cfg("train.epochs=3"))
    (run_dir / "model.keras").write_bytes(b"old")
    assert prepare_run_dir(run_dir, _cfg("train.epochs=4"), overwrite=True) == (run_dir, False)
    assert not (run_dir / "model.keras").exists()
    assert config_lib.load(run_dir / "config.yaml").train.epochs == 4
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(RunDirError, match=rf"{re.escape(str(blocker))} exists and is not a directory"):
        prepare_run_dir(blocker, _cfg(), overwrite=True)


def test_default_run_dir_is_timestamped_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert re.fullmatch(r"runs/\d{8}-\d{6}-tiny", default_run_dir(_cfg()).as_posix())
    path, resuming = prepare_run_dir(None, _cfg())
    assert not resuming and (tmp_path / path / "config.yaml").is_file()
    assert re.fullmatch(r"\d{8}-\d{6}-tiny", path.name) and path.parent == default_run_dir(_cfg()).parent


def test_remove_stale_temporaries_removes_only_temporaries(tmp_path):
    run = tmp_path / "run"
    (run / "backup").mkdir(parents=True)
    (run / "logs").mkdir()
    keep = [run / "model.keras", run / ".gitignore", run / "backup" / "state.json",
            run / "backup" / "epoch-0001.weights.h5", run / "logs" / ".events.tmp1"]  # logs/ is not searched
    for path in keep:
        path.write_text("x")
    (run / ".export.tmpdir").mkdir()  # a folder, not a temporary file
    # what a process killed inside fsutil.atomic_path (model and weights saves) leaves behind
    pending = [atomic_path(run / "model.keras", ".keras"), atomic_path(run / "backup" / "epoch-0002.weights.h5",
                                                                        ".weights.h5")]
    stale = [context.__enter__() for context in pending]
    for tmp in stale:
        open(tmp, "w").close()
    removed = remove_stale_temporaries(run)
    assert sorted(map(str, removed)) == sorted(stale)
    assert all(path.is_file() for path in keep) and (run / ".export.tmpdir").is_dir()
    assert remove_stale_temporaries(run) == [] and remove_stale_temporaries(tmp_path / "missing") == []


def test_package_versions_has_the_key_packages():
    import numpy  # the versions of what is installed, as imported
    import rasterio

    versions = package_versions()
    assert versions["python"] == platform.python_version()
    assert versions["tfseg"] == tfseg.__version__
    assert versions["numpy"] == numpy.__version__ and versions["rasterio"] == rasterio.__version__
    assert re.match(r"3\.\d+", versions["keras"]) and re.match(r"2\.\d+", versions["tensorflow"])
    assert {"shapely", "pyproj", "neptune"} <= set(versions)


def _git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_clean_dirty_and_outside_a_repository(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "HEAD")
    assert git_commit(repo) == head and re.fullmatch(r"[0-9a-f]{40}", head)
    (repo / "new.txt").write_text("untracked files do not count")
    assert git_commit(repo) == head
    (repo / "a.py").write_text("x = 2\n")
    assert git_commit(repo) == head + "+dirty"
    outside = tmp_path / "plain"
    outside.mkdir()
    assert git_commit(outside) == "unknown"


def test_remove_stale_temporaries_clears_what_a_killed_atomic_write_text_leaves(tmp_path):
    """A process killed between fsutil.atomic_write_text's write and its rename (state.json,
    config.yaml, metrics.json, the model card) leaves its temporary: the next run clears it."""
    import subprocess
    import sys

    run = tmp_path / "run"
    (run / "backup").mkdir(parents=True)
    code = ("import os, sys; from tfseg.fsutil import write_json; os.fsync = lambda fd: os._exit(9); "
            "write_json(sys.argv[1], {'epoch': 3})")
    for target in (run / "backup" / "state.json", run / "metrics.json"):
        assert subprocess.run([sys.executable, "-c", code, str(target)]).returncode == 9
        assert not target.exists()
    left = sorted(p for folder in (run, run / "backup") for p in folder.iterdir() if p.is_file())
    assert len(left) == 2, left
    assert sorted(remove_stale_temporaries(run)) == left
    assert not any(p.exists() for p in left)
