"""``python -m tfseg.predict --runner beam``: whole-scene prediction as an Apache Beam pipeline.

One element per scene: ``Create(scenes) | Reshuffle | ParDo(PredictScenes) | ToList | Map(summary)``.
Each worker process loads the model once (``DoFn.setup``, cached per process) and predicts every
scene it is given with :func:`tfseg.predict.predict_scene`, the function the local runner calls:
same engine, options and output layout. The last step merges the per-scene polygons and SpaceNet
rows and writes ``summary.json`` (:func:`tfseg.predict.summarize`). The launcher never loads
TensorFlow or the model; inputs, output and model must be reachable by every worker.

Example:
    python -m tfseg.predict --model runs/buildings --input 'scenes/*.tif' --output out/ --runner beam \
        --beam-options "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
import os
import shlex
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

from .errors import TfsegError
from .inference import ModelLoadError
from .predict import (
    PredictOptions,
    SceneFailures,
    card_predictor,
    check_pixel_areas,
    check_scene_names,
    check_writable,
    predict_scene,
    resolve_options,
    scene_fingerprint,
    summarize,
    validate_options,
)

try:
    logging.disable(logging.WARNING)  # Beam's import logs "apitools not found" when GCP extras are absent
    import apache_beam as beam
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
    from apache_beam.options.pipeline_options import _BeamArgumentParser
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError('--runner beam needs Apache Beam: pip install "tfseg[beam]"') from exc
finally:
    logging.disable(logging.NOTSET)


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------------------
# --beam-options
# ------------------------------------------------------------------------------------------
class _StrictParser(_BeamArgumentParser):
    def error(self, message):  # argparse would print usage and exit the process
        raise ValueError(message)


def beam_flags(text: str) -> list:
    """``"runner=DirectRunner,direct_num_workers=2"`` or ``"--runner=DirectRunner --direct_num_workers=2"``
    -> ``["--runner=DirectRunner", "--direct_num_workers=2"]``. Values containing commas need the
    ``--key=value`` form."""
    text = (text or "").strip()
    if not text:
        return []
    if text.startswith("-"):
        return shlex.split(text)
    flags = []
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        key = key.strip()
        if not key:
            if item.strip():
                raise ValueError(f"--beam-options: {item.strip()!r} has no option name (expected key=value)")
            continue
        flags.append(f"--{key}" + (f"={value.strip()}" if sep else ""))
    return flags


def parse_beam_options(text: str) -> PipelineOptions:
    """``--beam-options`` -> PipelineOptions, every option checked against those Beam knows.

    An unknown option or a bad value fails naming it (Beam itself would only log a warning and drop
    it). Unset: ``runner`` is the DirectRunner and, on it, ``direct_running_mode`` is
    ``multi_processing`` with ``direct_num_workers`` = the cores of this machine.
    """
    flags = beam_flags(text)
    parser = _StrictParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 - what PipelineOptions.get_all_options does
    try:
        known, unknown = parser.parse_known_args(flags)
    except ValueError as exc:
        raise ValueError(f"--beam-options {text!r}: {exc}") from None
    if unknown:
        names = [o for action in parser._actions for o in action.option_strings]  # noqa: SLF001
        bad = unknown[0]
        close = difflib.get_close_matches(bad.split("=", 1)[0], names, n=1)
        hint = f" (did you mean {close[0].lstrip('-')}?)" if close else ""
        raise ValueError(f"--beam-options: unknown Beam pipeline option {bad.lstrip('-')!r}{hint}; values "
                         f"containing commas need the '--key=value' form")
    given = {f.split("=", 1)[0].lstrip("-") for f in flags}
    defaults = []
    runner = known.runner or "DirectRunner"
    if "runner" not in given:
        defaults.append(f"--runner={runner}")
    try:
        direct = is_direct_runner(runner)
    except (ValueError, ImportError) as exc:
        raise ValueError(f"--beam-options runner={runner}: {exc}") from None
    if direct:
        if runner != "DirectRunner":  # 'direct', 'directrunner', ...: Beam's names for it, spelled one way
            defaults.append("--runner=DirectRunner")
        if known.direct_num_workers < 0:
            raise ValueError(f"--beam-options direct_num_workers={known.direct_num_workers}: expected a number of "
                             f"worker processes >= 1 (or 0: one per CPU of this machine)")
        if "direct_running_mode" not in given:
            defaults.append("--direct_running_mode=multi_processing")
        if "direct_num_workers" not in given:
            defaults.append(f"--direct_num_workers={cores()}")
    return PipelineOptions(flags + defaults)


def is_direct_runner(runner) -> bool:
    """Whether ``runner`` (a runner name as ``--beam-options`` takes it) is Beam's DirectRunner,
    the name resolved as Beam resolves it (case-insensitive, ``Runner`` suffix optional, or the
    class's qualified name): ``direct``, ``directrunner`` and ``DirectRunner`` are all the
    DirectRunner. Raises Beam's ValueError / ImportError for a runner Beam does not know."""
    from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner
    from apache_beam.runners.runner import create_runner

    return isinstance(runner if not isinstance(runner, str) else create_runner(runner), SwitchingDirectRunner)


def direct_workers(options: PipelineOptions) -> int:
    """The worker processes (or threads) the DirectRunner starts for ``options``: its
    ``direct_num_workers``, where 0 means one per CPU of the machine (``multiprocessing.cpu_count()``,
    as Beam counts them)."""
    import multiprocessing

    workers = options.view_as(DirectOptions).direct_num_workers
    return multiprocessing.cpu_count() if workers == 0 else max(1, workers or 1)


def default_worker_threads(options: PipelineOptions) -> int:
    """TensorFlow threads per worker process: the cores shared out between the DirectRunner's
    worker processes (so they do not fight over them); 0 (TensorFlow's default, all cores of the
    worker) on other runners, whose workers have their own machines."""
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    if is_direct_runner(runner) and options.view_as(DirectOptions).direct_running_mode == "multi_processing":
        return max(1, cores() // direct_workers(options))
    return 0


# ------------------------------------------------------------------------------------------
# Workers
# ------------------------------------------------------------------------------------------
_LOCK = threading.Lock()
_PREDICTORS: dict = {}


class _SerializedPredictor:
    """A predictor shared by the bundles of one worker process: one model call at a time (the
    process's TensorFlow threads are sized for one)."""

    def __init__(self, predictor):
        self._predictor, self._lock = predictor, threading.Lock()

    def __getattr__(self, name):
        return getattr(self._predictor, name)

    def __call__(self, raw):
        with self._lock:
            return self._predictor(raw)


def configure_threads(threads: int) -> None:
    """TensorFlow, OpenCV and GDAL (compression of the GeoTIFF outputs) threads of this process;
    must run before TensorFlow starts."""
    from . import _tf  # noqa: F401  (TensorFlow without its start-up notices on the worker's stderr)

    if threads <= 0:
        return
    import cv2

    tf = _tf.tensorflow
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already started in this process: keep its settings
        pass
    cv2.setNumThreads(threads)
    os.environ["GDAL_NUM_THREADS"] = str(threads)  # read by the GeoTIFF sink (tfseg.predict)


def worker_predictor(model: str, threads: int):
    """The model of this worker process, loaded on first use (once per process, not per DoFn)."""
    from .inference import load_predictor

    with _LOCK:
        if model not in _PREDICTORS:
            configure_threads(threads)
            _PREDICTORS[model] = _SerializedPredictor(load_predictor(model))
        return _PREDICTORS[model]


class PredictScenes(beam.DoFn):
    """scene path -> :func:`tfseg.predict.predict_scene` result (done / skipped / failed)."""

    def __init__(self, model: str, output: str, options: PredictOptions, threads: int):
        self.model, self.output, self.options, self.threads = model, output, options, threads

    def setup(self):
        self.predictor = worker_predictor(self.model, self.threads)
        validate_options(self.options, self.predictor)
        self.options = resolve_options(self.predictor, self.options)  # resolved by the launcher: unchanged
        self.fingerprint = scene_fingerprint(self.predictor, self.options)

    def process(self, path):
        import rasterio

        with rasterio.Env(GDAL_CACHEMAX=max(8, int(self.options.gdal_cache_mb)) * 1024 * 1024):
            yield predict_scene(self.predictor, path, self.output, self.options, self.fingerprint)


BEAM_LOG = "beam.log"


class BeamPipelineError(TfsegError, RuntimeError):
    """The pipeline itself failed (not one scene: those are reported in summary.json)."""


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


@contextlib.contextmanager
def _stderr_to(path: Optional[Path]):
    """Send this process's stderr (file descriptor 2, inherited by the DirectRunner's worker
    processes started meanwhile) to ``path``: Beam's and the workers' INFO logging go to a file
    instead of the user's terminal."""
    if path is None:
        yield
        return
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as handle:
        os.dup2(handle.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _summarize(results, inputs, output, options, model, started, operating_point):
    summarize(inputs, results, output, options, model, "beam", started, operating_point)


# ------------------------------------------------------------------------------------------
# Launcher
# ------------------------------------------------------------------------------------------
def run_beam(model, inputs: Sequence, output, options: Optional[PredictOptions] = None, beam_options: str = "",
             worker_threads: int = 0) -> dict:
    """Predict ``inputs`` into ``output`` with a Beam pipeline (see the module docstring).

    Returns the summary written by the pipeline's last step; raises :class:`SceneFailures` when
    any scene failed (after the others completed).
    """
    started = time.time()
    options = options or PredictOptions(progress=False)
    validate_options(options)
    # absolute paths: a worker's working directory is not the launcher's (a bare --spacenet-csv
    # name goes into the output folder, itself made absolute below)
    csv_path = Path(options.spacenet_csv) if options.spacenet_csv else None
    options = dataclasses.replace(
        options, truth=os.path.abspath(options.truth) if options.truth else options.truth,
        spacenet_csv=(os.path.abspath(csv_path) if csv_path is not None and csv_path.parent != Path(".")
                      else options.spacenet_csv))
    output = check_writable(Path(output))
    check_scene_names(inputs, output)
    if not Path(model).exists():
        raise ModelLoadError(f"--model {model}: no such file or directory (expected a run directory, "
                             "a .keras file or an exported SavedModel directory)")
    pipeline_options = parse_beam_options(beam_options)
    # the model card (no TensorFlow here): a bad --instances / model combination fails now, not in
    # every worker; the options resolved here (threshold, operating point) go to every worker
    described = card_predictor(model)
    validate_options(options, described)
    check_pixel_areas(inputs, described, options)
    options = resolve_options(described, options)
    threads = worker_threads or default_worker_threads(pipeline_options)
    # absolute paths: a worker's working directory is not the launcher's
    model, out = os.path.abspath(model), os.path.abspath(output)
    paths = [os.path.abspath(p) for p in inputs]
    summary_path = Path(out) / "summary.json"
    summary_path.unlink(missing_ok=True)  # what is read back below is this run's
    local = default_worker_threads(pipeline_options) > 0  # DirectRunner worker processes on this machine
    log = Path(out) / BEAM_LOG
    try:
        with _stderr_to(log if local else None):
            with beam.Pipeline(options=pipeline_options) as pipeline:
                results = (pipeline
                           | "Scenes" >> beam.Create(paths)
                           | "Distribute" >> beam.Reshuffle()  # no fusion with Create: scenes spread over workers
                           | "Predict" >> beam.ParDo(PredictScenes(model, out, options, threads)))
                _ = (results
                     | "Collect" >> beam.combiners.ToList()
                     | "Summarize" >> beam.Map(_summarize, paths, out, options, model, started,
                                               described.operating_point))
    except Exception as exc:  # noqa: BLE001 - Beam wraps worker errors in its own types
        where = f"; Beam's log: {log}" if local else ""
        raise BeamPipelineError(f"the Beam pipeline failed: {_last_line(exc)}{where}") from exc
    summary = json.loads(summary_path.read_text())
    if summary["failures"]:
        raise SceneFailures(summary, summary_path)
    return summary
