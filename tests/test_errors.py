"""tfseg.errors: TfsegError is the root of every error tfseg defines; report() is how the
command lines print them."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import tfseg
from tfseg.errors import INPUT_ERRORS, TfsegError, report


def _defined_exceptions():
    """Every exception class defined in a module of the tfseg package (imported here)."""
    found = {}
    for info in pkgutil.walk_packages(tfseg.__path__, "tfseg."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                found[f"{info.name}.{name}"] = obj
    return found


def test_every_error_class_of_tfseg_is_a_tfseg_error():
    found = _defined_exceptions()
    # the walk reaches the data formats, the Beam runner and the trackers too
    for name in ("tfseg.rundir.RunDirError", "tfseg.data.formats.DataFormatError", "tfseg.scoring.ScoringInputError",
                 "tfseg.predict_beam.BeamPipelineError", "tfseg.tracking_mlflow.MlflowConfigError",
                 "tfseg.data.pairing.PairingError", "tfseg.data.pipeline.DatasetError",
                 "tfseg.predictors.NodataWarning"):
        assert name in found, name
    errors = {name: cls for name, cls in found.items() if not issubclass(cls, Warning)}
    outside = sorted(name for name, cls in errors.items() if not issubclass(cls, TfsegError))
    assert outside == [] and found["tfseg.errors.TfsegError"] is TfsegError
    assert len(errors) > 15
    warnings = {name for name, cls in found.items() if issubclass(cls, Warning)}
    assert warnings and not any(issubclass(found[name], TfsegError) for name in warnings)


def test_tfseg_error_is_an_input_error_and_public():
    assert issubclass(TfsegError, ValueError) and tfseg.TfsegError is TfsegError
    for error in (TfsegError("bad key"), FileNotFoundError("missing.tif"), ValueError("bad value")):
        with pytest.raises(INPUT_ERRORS):
            raise error
    assert not isinstance(RuntimeError("bug"), INPUT_ERRORS) and not isinstance(KeyError("bug"), INPUT_ERRORS)


def test_report_prints_one_error_line_and_returns_the_code(capsys):
    assert report(TfsegError("config key 'train.epochs': expected a positive integer, got -1")) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: config key 'train.epochs': expected a positive integer, got -1\n"
    assert captured.out == ""
    assert report(FileNotFoundError("no such file: a.tif"), prefix="--model: ", code=1) == 1
    assert capsys.readouterr().err == "error: --model: no such file: a.tif\n"


def test_a_command_line_reports_an_input_error_without_a_traceback(tmp_path):
    missing = tmp_path / "no_run"
    done = subprocess.run([sys.executable, "-m", "tfseg.model_card", "show", str(missing)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if line.startswith(("error:", "Traceback"))]
    assert lines == [f"error: {missing}: no such file or directory (expected a run directory, a .keras file, "
                     f"an exported SavedModel directory or a model_card.json)"]
