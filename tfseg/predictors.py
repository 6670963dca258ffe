"""Predictors: a trained model behind one call, raw pixels in, probabilities out.

A model is wrapped as a :class:`Predictor`: ``predictor(raw)`` maps a raw-pixel batch
``[N, H, W, C]`` (the scene's dtype, no-data pixels holding the model card's ``nodata``) to
probabilities ``[N, H, W, K] float32``. Two implementations share all the tiling code of
:mod:`tfseg.inference`: :class:`KerasPredictor` (a Keras model whose first layer is its
preprocessing) and :class:`SavedModelPredictor` (the exported ``serving_default`` signature).
Both describe themselves with the run's :class:`~tfseg.model_card.ModelCard`; a scene whose band
count or dtype differs from the card is refused, a different nodata value is warned about.
:func:`load_predictor` picks one for a run directory, a ``.keras`` file or a SavedModel.

Every name here is also importable from :mod:`tfseg.inference`.

Example:
    >>> predictor = load_predictor("runs/default")          # run dir, .keras or SavedModel
    >>> probs = predictor(raw_tiles)                         # NxHxWxC raw -> NxHxWxK float32
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from .class_offsets import decide
from .data.raster import native_dtype
from .errors import TfsegError
from .model_card import ModelCard, load_model_card


class ModelLoadError(TfsegError):
    """MODEL is not a run directory, a ``.keras`` file or an exported SavedModel; names the path."""


class InferenceArgumentError(TfsegError):
    """A prediction argument (tile size, overlap, batch size, TTA views, threshold) is unusable;
    the message names it and what was expected."""


class NodataWarning(UserWarning):
    """A scene's nodata value differs from the one the model was trained with."""


class Predictor:
    """Raw pixels in, probabilities out, described by the model's :class:`ModelCard`."""

    def __init__(self, card: ModelCard, num_classes: int, source: str = "", fixed_size=None):
        self.card, self.num_classes, self.source = card, int(num_classes), source  # num_classes: output channels
        # (H, W) the model only takes (a fixed-input-size encoder such as a keras-hub ViT), else None
        self.fixed_size = tuple(int(v) for v in fixed_size) if fixed_size else None

    num_bands = property(lambda self: self.card.num_bands)
    size_multiple = property(lambda self: self.card.size_multiple)
    classes = property(lambda self: list(self.card.classes))
    palette = property(lambda self: dict(self.card.colours))
    task = property(lambda self: self.card.task)
    tile_size = property(lambda self: self.card.tile_size)
    recommended_overlap = property(lambda self: self.card.recommended_overlap)
    # object post-processing chosen on validation at the end of training (threshold, min area,
    # opening, instances; see tfseg.operating_point); None for models trained without one
    operating_point = property(lambda self: self.card.operating_point)

    @property
    def threshold(self) -> float:
        """The decision threshold: the card's (the operating point's when training chose one), of
        the footprint channel for a multi-label building model."""
        return self.card.thresholds()[(self.instance_bands() or {"footprint": 1})["footprint"] - 1]
    ignore_index = property(lambda self: self.card.ignore_index)  # the label value training ignored

    @property
    def binary(self) -> bool:
        return self.num_classes == 1

    def instance_bands(self) -> Optional[dict]:
        """1-based output bands ``{"footprint", "boundary"?, "contact"?}`` of a building model
        (binary, or multi-label footprint[/boundary/contact] channels); None for other models."""
        if self.binary:
            return {"footprint": 1}
        if self.task == "multilabel" and "footprint" in self.classes:
            return {name: self.classes.index(name) + 1 for name in ("footprint", "boundary", "contact")
                    if name in self.classes}
        return None

    @property
    def multilabel(self) -> bool:
        """Independent sigmoid channels (e.g. Dstl): per-class masks, never an argmax. A building
        model's footprint[/boundary/contact] channels are not: its class map is the footprint
        (see :meth:`instance_bands`)."""
        return self.task == "multilabel" and self.num_classes > 1 and self.instance_bands() is None

    def thresholds(self, threshold=None) -> np.ndarray:
        """The per-class thresholds (K,): the card's, or ``threshold`` (one value or one per class)."""
        value = self.card.thresholds() if threshold is None else threshold
        values = np.asarray(value, np.float32).reshape(-1)
        if values.size == 1:
            values = np.repeat(values, self.num_classes)
        if values.shape != (self.num_classes,):
            raise InferenceArgumentError(f"threshold: expected one value or {self.num_classes} (one per class), "
                                         f"got {value!r}")
        return values

    @property
    def class_names(self) -> list:
        if self.binary:
            return ["background", (self.classes or ["foreground"])[0]]
        names = list(self.classes)
        return names + [f"class{i}" for i in range(len(names), self.num_classes)]

    @property
    def class_map_names(self) -> list:
        """The class of each value of the class map (:meth:`to_classes`): background and footprint
        for a multi-label footprint[/boundary/contact] model (its map is the footprint), else
        :attr:`class_names`."""
        if not self.binary and self.instance_bands() is not None:
            return ["background", "footprint"]
        return self.class_names

    def fill_value(self) -> float:
        """Raw value written into no-data pixels: the card's nodata (NaN for float imagery
        without one), which the model's preprocessing maps to 0, as in training."""
        return self.card.fill_value()

    def __call__(self, raw: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_classes(self, probs: np.ndarray, threshold=None) -> np.ndarray:
        """Class map (uint8) from ``[..., K]`` probabilities: threshold (binary; the predictor's
        unless ``threshold`` is given) or argmax (after the card's ``class_offsets``, if any);
        multilabel: ``[..., K]`` 0/1 masks, each class with its own threshold."""
        if self.multilabel:
            return (probs >= self.thresholds(threshold)).astype(np.uint8)
        threshold = self.threshold if threshold is None else threshold
        if self.binary:
            return (probs[..., 0] >= threshold).astype(np.uint8)
        bands = self.instance_bands()
        if bands is not None:  # a multi-label building model: its class map is the footprint
            return (probs[..., bands["footprint"] - 1] >= threshold).astype(np.uint8)
        return decide(probs, self.card.class_offsets)

    def tiling(self, tile_size: int = 0, overlap: int = -1) -> tuple[int, int]:
        """Sliding-window tile size and overlap: the given ones, else the model's (overlap at most
        half a tile)."""
        tile = tile_size or self.tile_size
        return tile, (overlap if overlap >= 0 else min(self.recommended_overlap, tile // 2))

    def check_source(self, source, name: str = "") -> None:
        """Refuse a scene (a raster file, or an in-memory array) whose band count or dtype differs
        from the model card's (:class:`~tfseg.model_card.ModelCardError` naming both); warn
        (:class:`NodataWarning`) about a raster's different nodata value."""
        name = name or getattr(source, "name", "scene")
        model = f" (model {self.source})" if self.source else ""
        info = getattr(source, "info", None)
        if info is None:  # in memory: its array's dtype is what the model gets
            self.card.check_scene(f"{name}{model}", source.num_bands, source.dtype)
            return
        for message in self.card.check_scene(f"{name}{model}", info.num_bands, native_dtype(info), info.nodata,
                                             stored_dtype=info.dtype):
            warnings.warn(message, NodataWarning, stacklevel=3)


class KerasPredictor(Predictor):
    """A Keras model whose first layer is its preprocessing, plus its model card (padding to the
    size multiple in numpy)."""

    def __init__(self, model, card: ModelCard, source: str = ""):
        from .export import check_model_card

        check_model_card(model, card, source or model.name)
        super().__init__(card, int(model.output_shape[-1]), source, fixed_input_shape(model.input_shape))
        self.model = model

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        x = np.asarray(raw)
        height, width = x.shape[1:3]
        m = self.size_multiple
        pad_h, pad_w = (-height) % m, (-width) % m
        if pad_h or pad_w:
            x = np.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
        probs = self.model.predict_on_batch(x)
        return np.asarray(probs, np.float32)[:, :height, :width, :]


class SavedModelPredictor(Predictor):
    """The exported SavedModel's ``serving_default`` signature (raw pixels in)."""

    def __init__(self, path):
        from ._tf import tensorflow as tf

        self._tf = tf
        card = load_model_card(path)
        self.loaded = tf.saved_model.load(str(path))
        self.signature = self.loaded.signatures["serving_default"]
        out_spec = self.signature.structured_outputs["probabilities"]
        num_classes = int(out_spec.shape[-1]) if out_spec.shape[-1] is not None else card.num_outputs
        from .export import IMAGE_INPUT

        in_spec = self.signature.structured_input_signature[1][IMAGE_INPUT]
        super().__init__(card, num_classes, str(path), fixed_input_shape(in_spec.shape))

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        out = self.signature(images=self._tf.constant(np.asarray(raw, np.float32)))
        return out["probabilities"].numpy().astype(np.float32)


def fixed_input_shape(shape) -> Optional[tuple]:
    """(H, W) of a model input shape ``(N, H, W, C)`` when both are fixed, else None."""
    height, width = (list(shape)[1:3] + [None, None])[:2]
    return (int(height), int(width)) if height is not None and width is not None else None


def _loaded(path: Path, load):
    """``load()``, with a damaged model's loader error (Keras', TensorFlow's) re-raised as a
    :class:`ModelLoadError` naming ``path``; tfseg's own errors already name their file."""
    try:
        return load()
    except (TfsegError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure, re-raised with the path
        raise ModelLoadError(f"--model {path}: cannot be loaded ({type(exc).__name__}: {exc})") from exc


def load_predictor(path) -> Predictor:
    """A :class:`Predictor` for a run directory, a ``.keras`` file or an exported SavedModel dir."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"--model {path}: no such file or directory (expected a run directory, "
                             "a .keras file or an exported SavedModel directory)")
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return _loaded(path, lambda: SavedModelPredictor(path))
    if path.is_dir() and not (path / "model.keras").is_file() and (path / "export" / "saved_model.pb").is_file():
        return _loaded(path / "export", lambda: SavedModelPredictor(path / "export"))
    if (path.is_dir() and (path / "model.keras").is_file()) or path.suffix == ".keras":
        from .export import load_run_model

        def keras_predictor():
            model, card = load_run_model(path)
            return KerasPredictor(model, card, source=str(path))

        return _loaded(path / "model.keras" if path.is_dir() else path, keras_predictor)
    raise ModelLoadError(f"--model {path}: not a run directory (model.keras + model_card.json), "
                         "a .keras file or a SavedModel directory (saved_model.pb)")
