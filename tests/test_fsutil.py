"""tfseg.fsutil.staged_directory: the target appears complete or keeps its old content."""
import pytest

from tfseg.fsutil import staged_directory


def test_staged_directory_replaces_the_target_in_one_rename(tmp_path):
    target = tmp_path / "models" / "1"
    target.mkdir(parents=True)
    (target / "old.txt").write_text("old")
    with staged_directory(target, ".export") as staging:
        assert staging.parent == target.parent and staging.name.startswith(".export-1.")
        (staging / "new.txt").write_text("new")
        assert (target / "old.txt").is_file()  # readers still see the old content meanwhile
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert (target.stat().st_mode & 0o777) == 0o755
    assert [p.name for p in target.parent.iterdir()] == ["1"]  # no staging folder left


def test_staged_directory_failure_keeps_the_old_target(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    with pytest.raises(RuntimeError, match="half way"):
        with staged_directory(target) as staging:
            (staging / "partial.txt").write_text("x")
            raise RuntimeError("failed half way")
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
