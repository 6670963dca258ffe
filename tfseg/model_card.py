"""The model card: what a trained model is, in one typed record shared by everything downstream.

Training writes it once (``RUN_DIR/model_card.json``, and the export copies it into the
SavedModel as ``assets/model_card.json`` and the ``metadata`` signature); ``predict``,
``evaluate``, ``export``, ``serve`` and the pipelines read it through :func:`load_model_card`.
Nobody re-reads the training YAML for the tile size, classes or bands.

Example:
    >>> card = load_model_card("runs/default")          # run dir, .keras, SavedModel or JSON
    >>> card.tile_size, card.band_dtype, card.nodata
    (128, 'uint16', 0.0)
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Optional, Union

import numpy as np

from .errors import INPUT_ERRORS, TfsegError, report
from .data.raster import Normalization, native_dtype

CARD_FILE = "model_card.json"
#: beside a ``NAME.tflite`` file: its model card (several .tflite files may share a folder)
TFLITE_CARD_SUFFIX = ".model_card.json"
#: the export metadata file of tfseg versions before the model card (no preprocessing layer)
LEGACY_METADATA_FILE = "tfseg_metadata.json"
LEGACY_NORMALIZATION_FILE = "normalization.json"
TASKS = ("binary", "multiclass", "multilabel")
_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")
NORMALIZATION_METHODS = ("meanstd", "percentile")
DEFAULT_COLOURS = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0",
                   "#f032e6", "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8",
                   "#800000", "#aaffc3", "#808000", "#ffd8b1", "#000075", "#808080"]


def class_colours(classes, palette: Optional[dict] = None) -> dict:
    """Class name -> ``#RRGGBB``: the palette's colour, else a fixed distinct default."""
    palette = palette or {}
    return {name: palette.get(name, DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)]) for i, name in enumerate(classes)}


class ModelCardError(TfsegError):
    """A model card is missing or invalid; the message names the file and the field."""


class LegacyArtifactError(ModelCardError):
    """A run directory, ``.keras`` file or SavedModel written before the model card existed."""


def _legacy_message(path, what: str) -> str:
    return (
        f"{path}: {what} was written by a tfseg version before the model card (normalization.json / "
        f"tfseg_metadata.json, no preprocessing layer inside the model), which this version does not load. "
        f"Upgrade it once with `python -m tfseg.model_card upgrade RUN_DIR` (writes model_card.json and a "
        f"model.keras that normalizes raw pixels itself), then re-export with "
        f"`python -m tfseg.export --model RUN_DIR --output BASE/NAME/VERSION`."
    )


@dataclass
class ModelCard:
    """What a trained model takes, predicts and scored.

    ``threshold`` is one float (binary / multiclass) or one per class (multilabel).
    ``colours`` maps every class name to ``#RRGGBB``. ``band_dtype`` is the dtype the model was
    trained on (the source dtype, the smallest common one across training scenes);
    ``nodata`` is the raw value the model's preprocessing layer treats as no data (a pixel
    whose bands all equal it, and NaN in float imagery, becomes 0 after normalization); it is
    ``None`` only for float imagery without a nodata value (NaN marks missing pixels then).
    ``operating_point`` holds post-processing chosen on validation (e.g. object thresholds).
    ``class_weights`` are the loss weights training used (``train.class_weights``, given or
    ``auto``), one per class in ``classes`` order (binary: ``[background, class]``, or one
    weight for the class); ``None`` when the loss was unweighted. ``class_frequencies`` maps
    each category of the training labels (binary adds ``background``, multi-label ``none``)
    to its share of the labelled training pixels, when training computed the class index.
    Both are optional: cards written without them still load.
    ``class_offsets`` (multiclass only, optional): per-class offsets added to the
    log-probabilities before the argmax (:mod:`tfseg.class_offsets`, chosen on validation with
    ``train.class_offsets: fit``); every reader of the card decides the class map with them.
    ``metrics`` maps a metric name to its validation score, or to ``None`` where the score is
    undefined (e.g. IoU with the class absent from truth and prediction); a NaN given here is
    stored as ``None`` (JSON has no NaN).
    """

    classes: list
    colours: dict
    task: str
    threshold: Union[float, list]
    band_names: list
    band_dtype: str
    num_bands: int
    nodata: Optional[float]
    ignore_index: int
    normalization: Normalization
    tile_size: int
    recommended_overlap: int
    size_multiple: int
    model: str
    backbone: str
    metrics: dict = field(default_factory=dict)
    tfseg_version: str = ""
    operating_point: Optional[dict] = None
    class_weights: Optional[list] = None
    class_frequencies: Optional[dict] = None
    class_offsets: Optional[list] = None

    def __post_init__(self):
        if isinstance(self.metrics, dict):  # undefined scores: NaN in Python, null in JSON
            self.metrics = {k: None if isinstance(v, float) and math.isnan(v) else v
                            for k, v in self.metrics.items()}
        self.validate()

    @classmethod
    def for_model(cls, model, normalization: Normalization, band_dtype, nodata: Optional[float], classes=None,
                  palette: Optional[dict] = None, task: Optional[str] = None, threshold: Union[float, list] = 0.5,
                  tile_size: int = 256, recommended_overlap: int = 32, model_name: str = "", backbone: str = "",
                  metrics: Optional[dict] = None, ignore_index: int = 255, class_weights: Optional[list] = None,
                  class_frequencies: Optional[dict] = None) -> "ModelCard":
        """The card of a raw-pixel ``model`` (bands, outputs and size multiple read from it).
        ``classes`` default to ``foreground`` / ``class<i>``; ``task`` to binary for one output
        channel, else multiclass (softmax) or multilabel (sigmoid)."""
        from . import __version__
        from .export import model_multiple

        bands, outputs = int(model.input_shape[-1]), int(model.output_shape[-1])
        classes = list(classes or (["foreground"] if outputs == 1 else [f"class{i}" for i in range(outputs)]))
        if task is None:
            task = "binary" if outputs == 1 else ("multilabel" if _final_activation(model) == "sigmoid"
                                                  else "multiclass")
        return cls(
            classes=classes, colours=class_colours(classes, palette), task=task, threshold=threshold,
            band_names=list(normalization.band_names) or [f"band{i + 1}" for i in range(bands)],
            band_dtype=np.dtype(band_dtype).name, num_bands=bands, nodata=nodata, ignore_index=ignore_index,
            normalization=normalization, tile_size=int(tile_size),
            recommended_overlap=int(min(recommended_overlap, tile_size // 2)), size_multiple=model_multiple(model),
            model=model_name or model.name, backbone=backbone, metrics=dict(metrics or {}), tfseg_version=__version__,
            class_weights=None if not class_weights else [float(w) for w in class_weights],
            class_frequencies=None if class_frequencies is None else dict(class_frequencies))

    # -- serialization ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["normalization"] = dataclasses.asdict(self.normalization)
        return json.loads(json.dumps(out))  # plain JSON types (copies the nested dicts)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict, source: str = "model card") -> "ModelCard":
        """A validated card; a missing, unknown or wrong field raises :class:`ModelCardError`
        naming the field and ``source`` (the file it came from)."""
        if not isinstance(data, dict):
            raise ModelCardError(f"{source}: expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ModelCardError(f"{source}: missing field(s) {missing}")
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ModelCardError(f"{source}: unknown field(s) {unknown}; a model card has {names}")
        values = dict(data)
        norm = values["normalization"]
        norm_fields = [f.name for f in dataclasses.fields(Normalization)]
        if not isinstance(norm, dict) or set(norm) - set(norm_fields) or not {"method", "mean", "std", "low", "high"} <= set(norm):
            raise ModelCardError(f"{source}: field 'normalization': expected an object with keys "
                                 f"{norm_fields}, got {norm!r}")
        values["normalization"] = Normalization(**norm)
        try:
            return cls(**values)
        except ModelCardError as error:
            raise ModelCardError(f"{source}: {error}") from None

    def save(self, path) -> Path:
        """Write the card as JSON (atomically: readers never see half a file)."""
        from .fsutil import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, self.to_json())
        return path

    # -- derived ---------------------------------------------------------------------------
    @property
    def binary(self) -> bool:
        return self.task == "binary"

    @property
    def num_outputs(self) -> int:
        """Model output channels: 1 for binary, else one per class."""
        return 1 if self.binary else len(self.classes)

    def fill_value(self) -> float:
        """The raw value written into no-data and padding pixels (the preprocessing layer maps it
        to 0): ``nodata``, or NaN for float imagery without one."""
        return float("nan") if self.nodata is None else float(self.nodata)

    def thresholds(self) -> list:
        """One threshold per output channel."""
        if isinstance(self.threshold, list):
            return [float(t) for t in self.threshold]
        return [float(self.threshold)] * self.num_outputs

    def with_decision_threshold(self, threshold: float) -> "ModelCard":
        """This card deciding at ``threshold``: the footprint channel's for a multi-label building
        model (footprint / boundary / contact: the others keep theirs, they place the markers),
        else the card's one threshold (every class of another multi-label model)."""
        threshold = float(threshold)
        if self.task == "multilabel" and "footprint" in self.classes:
            thresholds = self.thresholds()
            thresholds[self.classes.index("footprint")] = threshold
            return dataclasses.replace(self, threshold=thresholds)
        return dataclasses.replace(self, threshold=threshold)

    def with_operating_point(self, point: dict) -> "ModelCard":
        """This card with ``point`` (object post-processing chosen on validation, see
        :mod:`tfseg.operating_point`) as its operating point; its threshold becomes the card's
        decision threshold (:meth:`with_decision_threshold`), so every reader of the card
        (predict, evaluate, the SavedModel's ``classes`` output, serve) uses it."""
        if not isinstance(point, dict) or not _is_number(point.get("threshold")):
            raise ModelCardError(f"field 'operating_point': expected an object with a 'threshold', got {point!r}")
        card = dataclasses.replace(self, operating_point=None).with_decision_threshold(point["threshold"])
        return dataclasses.replace(card, operating_point=dict(point))

    def check_scene(self, name: str, num_bands: int, dtype, nodata=None, stored_dtype=None) -> list:
        """Raise :class:`ModelCardError` when a scene's band count or dtype does not match the
        card (naming both); return warnings (strings) for a different nodata value.

        ``dtype`` is the dtype the scene's pixels are read as (:func:`tfseg.data.raster.native_dtype`:
        float64 rasters are read as float32); ``stored_dtype``, the file's own dtype, is named in
        the message too when it differs."""
        dtype = np.dtype(dtype)
        if num_bands != self.num_bands:
            raise ModelCardError(f"{name}: the scene has {num_bands} band(s) but the model was trained on "
                                 f"{self.num_bands} band(s) ({', '.join(self.band_names)})")
        if dtype != np.dtype(self.band_dtype):
            stored = None if stored_dtype is None else np.dtype(stored_dtype)
            pixels = (f"stored as {stored.name} and read as {dtype.name}" if stored is not None and stored != dtype
                      else dtype.name)
            raise ModelCardError(f"{name}: the scene's pixels are {pixels} but the model was trained on "
                                 f"{self.band_dtype} imagery (its normalization statistics are in "
                                 f"{self.band_dtype} units)")
        warnings = []
        if not _same_nodata(nodata, self.nodata, dtype):
            warnings.append(f"{name}: the scene's nodata value is {nodata} but the training scenes' is "
                            f"{self.nodata}; pixels equal to {nodata} are treated as no data and written "
                            f"as {self.fill_value()} for the model")
        return warnings

    # -- validation ------------------------------------------------------------------------
    def validate(self) -> None:
        def fail(name, expected):
            raise ModelCardError(f"field {name!r}: expected {expected}, got {getattr(self, name)!r}")

        if not isinstance(self.classes, list) or not self.classes or not all(isinstance(c, str) for c in self.classes):
            fail("classes", "a non-empty list of class names")
        if len(set(self.classes)) != len(self.classes):
            duplicates = sorted({c for c in self.classes if self.classes.count(c) > 1})
            fail("classes", f"distinct class names (repeated: {duplicates})")
        if not isinstance(self.colours, dict) or set(self.colours) != set(self.classes) or not all(
                isinstance(v, str) and _COLOUR.fullmatch(v) for v in self.colours.values()):
            fail("colours", f"a '#RRGGBB' colour (6 hex digits) for each of {self.classes}")
        if self.task not in TASKS:
            fail("task", f"one of {list(TASKS)}")
        if self.task == "binary" and len(self.classes) != 1:
            fail("task", f"multiclass or multilabel for {len(self.classes)} classes")
        if isinstance(self.threshold, list):
            if self.task != "multilabel" or len(self.threshold) != len(self.classes) or not all(
                    _is_number(t) and 0 <= t <= 1 for t in self.threshold):
                fail("threshold", f"one number in [0, 1], or (multilabel) {len(self.classes)} of them")
        elif not _is_number(self.threshold) or not 0 <= self.threshold <= 1:
            fail("threshold", "a number in [0, 1] (or one per class for multilabel)")
        if not _is_int(self.num_bands) or self.num_bands < 1:
            fail("num_bands", "a positive integer")
        if not isinstance(self.band_names, list) or len(self.band_names) != self.num_bands or not all(
                isinstance(b, str) for b in self.band_names):
            fail("band_names", f"{self.num_bands} band names (num_bands)")
        try:
            dtype = np.dtype(self.band_dtype)
        except TypeError:
            dtype = None
        if not isinstance(self.band_dtype, str) or dtype is None or dtype.kind not in "uif":
            fail("band_dtype", "a numeric dtype name such as 'uint8', 'uint16', 'int16' or 'float32'")
        problem = nodata_problem(self.nodata, dtype)
        if problem:
            fail("nodata", problem)
        if not _is_int(self.ignore_index) or not 0 <= self.ignore_index <= 255:
            fail("ignore_index", "an integer in [0, 255]")
        check_normalization(self.normalization, self.num_bands, self.band_names)
        for name in ("tile_size", "size_multiple"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "a positive integer")
        if not _is_int(self.recommended_overlap) or not 0 <= self.recommended_overlap < self.tile_size:
            fail("recommended_overlap", f"an integer in [0, tile_size={self.tile_size})")
        for name in ("model", "backbone", "tfseg_version"):
            if not isinstance(getattr(self, name), str):
                fail(name, "a string")
        if not self.model:
            fail("model", "the architecture name")
        if not isinstance(self.metrics, dict) or not all(
                isinstance(k, str) and (v is None or (_is_number(v) and math.isfinite(v)))
                for k, v in self.metrics.items()):
            fail("metrics", "an object of metric name -> finite number, or null for an undefined score")
        if self.operating_point is not None:
            point = self.operating_point
            if not isinstance(point, dict) or not _is_number(point.get("threshold")) or not (
                    0 <= point["threshold"] <= 1):
                fail("operating_point", "null, or an object with a 'threshold' in [0, 1] (the decision threshold "
                                        "chosen on validation) and its other settings")
            decided, which = self.thresholds(), "'threshold'"
            if self.task == "multilabel" and "footprint" in self.classes:
                decided, which = [decided[self.classes.index("footprint")]], "footprint channel's 'threshold'"
            if any(float(t) != float(point["threshold"]) for t in decided):
                fail("operating_point", f"a 'threshold' equal to the card's decision threshold (its {which}, "
                                        f"{self.threshold!r}): the card decides at the operating point's threshold")
        if self.class_weights is not None:
            counts = [1, 2] if self.task == "binary" else [len(self.classes)]
            if not isinstance(self.class_weights, list) or len(self.class_weights) not in counts or not all(
                    _is_number(w) and math.isfinite(w) and w >= 0 for w in self.class_weights):
                fail("class_weights", f"null or {' or '.join(map(str, counts))} finite non-negative numbers "
                                      f"(one per class of {self.classes})")
        if self.class_frequencies is not None and (not isinstance(self.class_frequencies, dict) or not all(
                isinstance(k, str) and _is_number(v) and 0 <= v <= 1 for k, v in self.class_frequencies.items())):
            fail("class_frequencies", "null or an object of category name -> share of training pixels in [0, 1]")
        if self.class_offsets is not None and (
                self.task != "multiclass" or not isinstance(self.class_offsets, list)
                or len(self.class_offsets) != len(self.classes)
                or not all(_is_number(v) and math.isfinite(v) for v in self.class_offsets)):
            fail("class_offsets", f"null, or (multiclass) {len(self.classes)} finite numbers, one per class of "
                                  f"{self.classes}")


def nodata_problem(nodata, dtype) -> Optional[str]:
    """What a valid ``nodata`` for ``dtype`` imagery would be, when ``nodata`` is not one (else None)."""
    dtype = np.dtype(dtype)
    if nodata is None:
        if dtype.kind != "f":
            return (f"a number (the value no-data and padding pixels hold in {dtype.name} imagery); null is only "
                    f"for float imagery")
    elif not _is_number(nodata) or math.isnan(nodata):
        return "a number or null (NaN always marks missing pixels in float imagery)"
    elif dtype.kind in "ui":
        low, high = np.iinfo(dtype).min, np.iinfo(dtype).max
        if not (float(nodata).is_integer() and low <= nodata <= high):
            return f"a value representable in {dtype.name} (an integer in [{low}, {high}])"
    return None


def read_dtype(value, what: str = "band_dtype") -> str:
    """The dtype name imagery of dtype ``value`` is read as (:func:`tfseg.data.raster.native_dtype`:
    float64 and 64-bit integers -> float32), or :class:`ModelCardError` naming ``what`` for a
    value that is not a numeric dtype."""
    try:
        dtype = np.dtype(value) if isinstance(value, str) else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "uif":
        raise ModelCardError(f"{what}: expected a numeric dtype name such as 'uint8', 'uint16', 'int16' or "
                             f"'float32', got {value!r}")
    return native_dtype(SimpleNamespace(dtype=dtype.name)).name  # the rule for a single-file raster


def check_normalization(norm: Normalization, num_bands: int, band_names: Optional[list] = None) -> None:
    """Raise :class:`ModelCardError` for statistics that do not fit ``num_bands`` bands or that
    would divide by zero (a constant band), naming the band. ``norm.band_names`` is empty or
    names every band (the same names as ``band_names``, the card's, when given)."""
    if norm.method not in NORMALIZATION_METHODS:
        raise ModelCardError(f"field 'normalization.method': expected one of {list(NORMALIZATION_METHODS)}, "
                             f"got {norm.method!r}")
    used = ("mean", "std") if norm.method == "meanstd" else ("low", "high")
    for key in ("mean", "std", "low", "high"):
        values = getattr(norm, key)
        if key not in used and values == []:
            continue  # statistics the method does not use may be left empty
        if not isinstance(values, list) or len(values) != num_bands or not all(
                _is_number(v) and math.isfinite(v) for v in values):
            raise ModelCardError(f"field 'normalization.{key}': expected {num_bands} finite numbers "
                                 f"(one per band), got {values!r}")
    names = norm.band_names
    if not isinstance(names, list) or (names and (len(names) != num_bands or not all(isinstance(b, str)
                                                                                     for b in names))):
        raise ModelCardError(f"field 'normalization.band_names': expected [] or {num_bands} band names (one per "
                             f"band), got {names!r}")
    if names and band_names is not None and names != list(band_names):
        raise ModelCardError(f"field 'normalization.band_names': expected the card's band_names {band_names} "
                             f"(the statistics are per band, in that order), got {names!r}")
    names = list(names) or list(band_names or []) or [f"band{i + 1}" for i in range(num_bands)]
    for index in norm.constant_bands():
        spread = (f"std {norm.std[index]}" if norm.method == "meanstd"
                  else f"percentile range [{norm.low[index]}, {norm.high[index]}]")
        key = "std" if norm.method == "meanstd" else "high"
        raise ModelCardError(f"field 'normalization.{key}': band {index + 1} ({names[index]}) has {spread} "
                             f"(a constant band): it cannot be normalized; drop it with data.bands")


def _final_activation(model) -> str:
    """Name of the activation of the model's last layer (searching into a wrapped model)."""
    layer = model.layers[-1]
    while hasattr(layer, "layers") and layer.layers:
        layer = layer.layers[-1]
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "") if activation is not None else ""


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _same_nodata(scene_nodata, card_nodata, dtype) -> bool:
    if scene_nodata is None or (isinstance(scene_nodata, float) and math.isnan(scene_nodata)):
        # no nodata declared: the scene's missing pixels (NaN / outside) are written as the card's
        return True
    return card_nodata is not None and float(scene_nodata) == float(card_nodata)


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------
def _parse_card(data: bytes, source: str) -> ModelCard:
    """A card from JSON bytes; undecodable or invalid JSON raises :class:`ModelCardError` naming ``source``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelCardError(f"{source}: not a model card (binary data, not UTF-8 JSON text; expected a run "
                             f"directory, a .keras or .tflite file, an exported SavedModel directory or a "
                             f"{CARD_FILE})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelCardError(f"{source}: not valid JSON ({error})") from None
    return ModelCard.from_dict(data, source)


def read_card_file(path) -> ModelCard:
    path = Path(path)
    return _parse_card(path.read_bytes(), str(path))


def tflite_card_path(tflite_file) -> Path:
    """Where the card of ``NAME.tflite`` is: ``NAME.model_card.json`` beside it."""
    tflite_file = Path(tflite_file)
    return tflite_file.with_name(tflite_file.stem + TFLITE_CARD_SUFFIX)


def embedded_card(keras_file) -> Optional[ModelCard]:
    """The card stored inside a ``.keras`` archive (``model_card.json`` member), if any."""
    keras_file = Path(keras_file)
    try:
        with zipfile.ZipFile(keras_file) as archive:
            if CARD_FILE not in archive.namelist():
                return None
            data = archive.read(CARD_FILE)
    except zipfile.BadZipFile:
        raise ModelCardError(f"{keras_file}: not a .keras archive (zip)") from None
    return _parse_card(data, f"{keras_file}:{CARD_FILE}")


def embed_card(keras_file, card: ModelCard) -> None:
    """Store ``card`` inside the ``.keras`` archive (Keras ignores the extra member), so a model
    file copied on its own still describes itself. Rewritten atomically."""
    from .fsutil import atomic_path

    keras_file = Path(keras_file)
    with atomic_path(keras_file, ".keras") as tmp:
        with zipfile.ZipFile(keras_file) as source, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as target:
            for item in source.infolist():
                if item.filename != CARD_FILE:
                    target.writestr(item, source.read(item.filename))
            target.writestr(CARD_FILE, card.to_json())


def load_model_card(path) -> ModelCard:
    """The model card of a run directory (``RUN_DIR/model_card.json``), a ``.keras`` file (the
    one embedded in it and/or ``model_card.json`` beside it: when both exist they must agree), a
    ``NAME.tflite`` file (``NAME.model_card.json`` beside it), an exported SavedModel directory
    (``assets/model_card.json``, else its ``metadata`` signature) or a card JSON file.

    Raises :class:`LegacyArtifactError` for artifacts of tfseg versions before the card,
    :class:`ModelCardError` for a missing or invalid card (naming the file and field).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory (expected a run directory, a .keras file, "
                                f"an exported SavedModel directory or a {CARD_FILE})")
    if path.is_dir() and (path / "saved_model.pb").is_file():
        asset = path / "assets" / CARD_FILE
        if asset.is_file():
            return read_card_file(asset)
        if (path / "assets" / LEGACY_METADATA_FILE).is_file():
            raise LegacyArtifactError(_legacy_message(path, "this SavedModel"))
        return _card_from_signature(path)
    if path.is_dir():
        card = path / CARD_FILE
        if card.is_file():
            return read_card_file(card)
        if (path / LEGACY_NORMALIZATION_FILE).is_file():
            raise LegacyArtifactError(_legacy_message(path, "this run directory"))
        raise ModelCardError(f"{path}: no {CARD_FILE} (not a tfseg run directory, or its training has not "
                             f"started yet)")
    if path.suffix == ".keras":
        beside = path.parent / CARD_FILE
        if beside.is_file():
            card = read_card_file(beside)
            # a damaged archive is reported by the model loader, naming the file
            inside = embedded_card(path) if zipfile.is_zipfile(path) else None
            if inside is not None and inside != card:
                fields = [f.name for f in dataclasses.fields(ModelCard)
                          if getattr(inside, f.name) != getattr(card, f.name)]
                raise ModelCardError(
                    f"{path}: the model card inside it and {beside} beside it differ (fields {fields}); the one "
                    f"inside was saved with these weights, the one beside may belong to another model. Replace "
                    f"{beside} with the embedded card (`python -m tfseg.model_card show {path}` prints it) or "
                    f"move the .keras file to its own folder")
            return card
        inside = embedded_card(path)
        if inside is not None:
            return inside
        if (path.parent / LEGACY_NORMALIZATION_FILE).is_file():
            raise LegacyArtifactError(_legacy_message(path, "this model"))
        raise ModelCardError(f"{path}: no {CARD_FILE} beside it or inside it")
    if path.suffix == ".tflite":
        card = tflite_card_path(path)
        if not card.is_file():
            raise ModelCardError(f"{path}: no {card.name} beside it (python -m tfseg.export --format tflite writes "
                                 f"the card of NAME.tflite as NAME{TFLITE_CARD_SUFFIX}; re-export a .tflite "
                                 f"written by an older tfseg)")
        return read_card_file(card)
    return read_card_file(path)


def _card_from_signature(path: Path) -> ModelCard:
    from ._tf import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    if "metadata" not in loaded.signatures:
        raise ModelCardError(f"SavedModel {path}: no assets/{CARD_FILE} and no 'metadata' signature "
                             f"(not exported by tfseg.export?)")
    return _parse_card(loaded.signatures["metadata"]()["metadata"].numpy(), f"SavedModel {path} (metadata signature)")


# ------------------------------------------------------------------------------------------
# Older run directories
# ------------------------------------------------------------------------------------------
def upgrade_run(run_dir, band_dtype: Optional[str] = None, nodata="auto") -> ModelCard:
    """Turn a run directory of a tfseg version before the model card (``model.keras`` taking
    normalized inputs + ``normalization.json`` + ``config.yaml``) into the current layout: the
    model behind its preprocessing layer (the old model kept as ``model.pre-card.keras``) and
    ``model_card.json``. Predictions stay the same: the layer computes what the old pipeline
    did (same statistics, no-data pixels -> 0).

    The band dtype and nodata value come from the old export's metadata and the training
    scenes of ``config.yaml`` (``band_dtype`` / ``nodata`` given here take precedence). The
    band dtype is the one the scenes are read as (:func:`tfseg.data.raster.native_dtype`: old
    runs recorded the file's own dtype, e.g. float64, which tfseg reads as float32).
    """
    import keras

    from . import config as config_lib
    from . import losses, metrics  # noqa: F401  (registers custom objects of the old model)
    from .data.formats import load_scenes
    from .data.pipeline import dataset_dtype, dataset_nodata
    from .models import Preprocess, find_preprocess, with_preprocessing
    from .train import make_model_card

    run_dir = Path(run_dir)
    needed = [run_dir / name for name in ("model.keras", LEGACY_NORMALIZATION_FILE, "config.yaml")]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise ModelCardError(f"{run_dir}: not a run directory of an older tfseg version (missing {missing})")
    if (run_dir / CARD_FILE).is_file():
        raise ModelCardError(f"{run_dir}: already has a {CARD_FILE}; nothing to upgrade")
    cfg = config_lib.load(run_dir / "config.yaml")
    norm = Normalization.load(run_dir / LEGACY_NORMALIZATION_FILE)
    old_meta_file = run_dir / "export" / "assets" / LEGACY_METADATA_FILE
    old_meta = json.loads(old_meta_file.read_text()) if old_meta_file.is_file() else {}
    if band_dtype is not None:
        band_dtype = read_dtype(band_dtype, "band_dtype")
    elif old_meta.get("band_dtype") is not None:
        band_dtype = read_dtype(old_meta["band_dtype"], f"{old_meta_file}: field 'band_dtype'")
    if band_dtype is None or nodata == "auto":
        scenes, _ = load_scenes(cfg.data)
        band_dtype = band_dtype or dataset_dtype(scenes).name
        nodata = dataset_nodata(scenes, band_dtype) if nodata == "auto" else nodata
    problem = nodata_problem(nodata, band_dtype)  # e.g. -1 for uint8: refused before anything is loaded
    if problem:
        raise ModelCardError(f"{run_dir}: nodata {nodata!r} does not fit its {band_dtype} imagery: expected {problem}")
    old = keras.saving.load_model(run_dir / "model.keras", compile=False)
    if find_preprocess(old) is not None:
        raise ModelCardError(f"{run_dir / 'model.keras'}: already has a preprocessing layer")
    model = with_preprocessing(old, Preprocess.from_normalization(norm, nodata))
    metrics_file = run_dir / "metrics.json"
    run_metrics = json.loads(metrics_file.read_text()).get("val", {}) if metrics_file.is_file() else {}
    card = make_model_card(cfg, norm, model, band_dtype, nodata, run_metrics)
    (run_dir / "model.keras").replace(run_dir / "model.pre-card.keras")
    model.save(run_dir / "model.keras")
    embed_card(run_dir / "model.keras", card)
    card.save(run_dir / CARD_FILE)
    return card


def _nodata_option(text: str) -> Optional[float]:
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        raise ModelCardError(f"--nodata {text!r}: expected a finite number (the raw no-data value) or 'none' "
                             f"(float imagery without one)")
    return value


def main(argv=None) -> int:
    """``python -m tfseg.model_card upgrade RUN_DIR [--band-dtype D] [--nodata V]`` or
    ``python -m tfseg.model_card show PATH`` (print the card of a run, model or SavedModel)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tfseg.model_card", description="Show or upgrade model cards.")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print the model card of a run dir, .keras file or SavedModel")
    show.add_argument("path")
    upgrade = sub.add_parser("upgrade", help="upgrade a run directory written before the model card")
    upgrade.add_argument("run_dir")
    upgrade.add_argument("--band-dtype", help="dtype of the training imagery (default: from the run)")
    upgrade.add_argument("--nodata", help="raw no-data value, or 'none' (float imagery; default: from the run)")
    args = parser.parse_args(argv)
    try:
        if args.command == "show":
            print(load_model_card(args.path).to_json(), end="")
            return 0
        band_dtype = None if args.band_dtype is None else read_dtype(args.band_dtype, "--band-dtype")
        nodata = "auto" if args.nodata is None else _nodata_option(args.nodata)
        card = upgrade_run(args.run_dir, band_dtype, nodata)
    except INPUT_ERRORS as error:
        return report(error)
    print(f"{args.run_dir}: upgraded ({card.num_bands} {card.band_dtype} bands, nodata {card.nodata}); "
          f"re-export with python -m tfseg.export --model {args.run_dir} --output BASE/NAME/VERSION")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
