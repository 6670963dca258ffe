"""Decision offsets of a multi-class model: per-class log-probability offsets chosen on validation.

A model trained on rare classes (land cover's ``unlabeled`` at 0.8 % of the pixels, thin roads)
often ranks those pixels right but rarely lets the rare class win the argmax. The multi-class
counterpart of a binary model's threshold is a vector of offsets ``b`` (one per class) added to
the log-probabilities before the argmax: ``class = argmax_k(log p_k + b_k)``, i.e.
``argmax_k(p_k * exp(b_k))`` (post-hoc logit adjustment). The probabilities themselves are left
as the model gives them; only the class decision moves.

With ``train.class_offsets: fit`` the best model predicts every validation scene whole at the end
of training and :func:`fit_class_offsets` searches the offsets by coordinate ascent on the mean
IoU over the classes present in the validation labels (a grid per class, three sweeps at most,
ties keep the offset nearest 0); ``train.class_offsets: fit_training`` fits them on the
training scenes instead, for runs whose validation scenes are their held-out test set. The vector
goes to the model card (``class_offsets``: in ``model_card.json``, inside ``model.keras`` and in
the SavedModel, whose ``classes`` output applies it), and ``tfseg.predict``, ``tfseg.evaluate``
and ``tfseg.serve`` decide with it; the search's before/after scores go to ``metrics.json``
(``class_offsets``).

Tuned on the validation scenes, they make scores on those scenes optimistic: report held-out
scores on other data.

Example:
    >>> offsets, report = fit_class_offsets([(probs, valid)], [labels], num_classes=6)
    >>> classes = decide(probs, offsets)
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .errors import TfsegError

GRID = tuple(np.round(np.arange(-2.0, 4.0001, 0.25), 2))  # log-probability offsets tried per class
MAX_SWEEPS = 3
MAX_PIXELS = 4_000_000  # a seeded sample of the pixels beyond this (the search's memory and time)
_TINY = 1e-12


class TooFewClassesError(TfsegError):
    """The labels the offsets would be fitted on hold fewer than two classes."""


def decide(probs: np.ndarray, offsets: Optional[Sequence[float]] = None) -> np.ndarray:
    """Class map (uint8) of ``[..., K]`` probabilities: ``argmax_k(p_k * exp(b_k))`` (plain argmax
    without offsets)."""
    if offsets is None:
        return np.argmax(probs, axis=-1).astype(np.uint8)
    scale = np.exp(np.asarray(offsets, np.float32))
    if scale.shape != (probs.shape[-1],):
        raise ValueError(f"class offsets: expected {probs.shape[-1]} values (one per class), got {scale.size}")
    return np.argmax(probs * scale, axis=-1).astype(np.uint8)


def sample_pixels(probs: np.ndarray, valid: np.ndarray, label: np.ndarray, ignore_index: int = 255,
                  fraction: float = 1.0, rng: Optional[np.random.Generator] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(N x K probabilities float32, N truth int64)`` of one scene's valid, labelled pixels, each
    kept with probability ``fraction`` (``rng``: seeded by the caller)."""
    if label.shape != probs.shape[:2] or valid.shape != probs.shape[:2]:
        raise ValueError(f"class offsets: a label of {label.shape} and a valid mask of {valid.shape} for "
                         f"probabilities of {probs.shape[:2]}")
    keep = valid & (label != ignore_index)
    if fraction < 1.0:
        keep &= (rng or np.random.default_rng(0)).random(keep.shape) < fraction
    return probs[keep].astype(np.float32), label[keep].astype(np.int64)


def _mean_iou(truth: np.ndarray, pred: np.ndarray, classes: int, present: np.ndarray) -> float:
    matrix = np.bincount(truth * classes + pred, minlength=classes * classes).reshape(classes, classes)
    inter = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - inter
    return float(np.mean(inter[present] / union[present]))


def fit_class_offsets(prob_maps: Sequence, labels: Sequence, num_classes: int, ignore_index: int = 255,
                      grid: Sequence[float] = GRID, max_pixels: int = MAX_PIXELS, seed: int = 0) -> tuple[list, dict]:
    """``(offsets, report)`` of in-memory scenes: ``prob_maps`` per scene ``(H x W x K
    probabilities, H x W valid)``, ``labels`` their H x W class maps (``ignore_index`` not
    counted); about ``max_pixels`` of their pixels (a seeded sample) go to :func:`fit_offsets`."""
    total = sum(int((valid & (label != ignore_index)).sum()) for (_, valid), label in zip(prob_maps, labels))
    fraction, rng = min(1.0, max_pixels / max(1, total)), np.random.default_rng(seed)
    samples = [sample_pixels(probs, valid, label, ignore_index, fraction, rng)
               for (probs, valid), label in zip(prob_maps, labels)]
    return fit_offsets(*_joined(samples, num_classes), num_classes, grid)


def choose_class_offsets(predictor, scenes: Sequence, tile_size: int, overlap: int, batch_size: int = 8,
                         max_pixels: int = MAX_PIXELS, seed: int = 0, split: str = "validation") -> tuple[list, dict]:
    """Predict the ``split``'s ``scenes`` whole (one at a time: a seeded sample of at most about
    ``max_pixels`` of their pixels is kept, not the maps) and fit the offsets on them; ``report`` adds
    ``num_scenes`` and ``searched_on``."""
    from rasterio.windows import Window

    from .object_metrics import stitched_probabilities

    if not scenes:
        raise ValueError(f"class offsets: no {split} scenes to fit them on")
    total = sum(s.info.width * s.info.height for s in scenes)
    fraction, rng = min(1.0, max_pixels / max(1, total)), np.random.default_rng(seed)
    samples = []
    for scene in scenes:
        (probs, valid), = stitched_probabilities(predictor, [scene], tile_size, overlap, batch_size)
        label = scene.labels.rasterize(Window(0, 0, scene.info.width, scene.info.height), scene.info)
        samples.append(sample_pixels(probs, valid, label, predictor.ignore_index, fraction, rng))
    offsets, report = fit_offsets(*_joined(samples, predictor.num_classes), predictor.num_classes)
    return offsets, {**report, "num_scenes": len(scenes), "searched_on": split}


def _joined(samples: Sequence, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if not samples:
        return np.zeros((0, num_classes), np.float32), np.zeros(0, np.int64)
    return np.concatenate([p for p, _ in samples]), np.concatenate([t for _, t in samples])


def fit_offsets(probs: np.ndarray, truth: np.ndarray, num_classes: int,
                grid: Sequence[float] = GRID) -> tuple[list, dict]:
    """``(offsets, report)``: the per-class offsets of best mean IoU on ``N x K`` probabilities
    and their ``N`` true classes.

    The mean runs over the classes present in ``truth``. A class absent from it keeps offset 0
    (nothing to tune it on), and the pixels that plain argmax gives it are left out of the
    search: scored as errors, they would pay the present classes for taking them over, i.e. for
    suppressing a class the labels say nothing about. Fewer than two classes present:
    :class:`TooFewClassesError`. ``report``: ``miou_before``, ``miou_after``, ``pixels``
    (searched on), ``classes_present``, ``classes_absent`` (indices), ``pixels_left_out``,
    ``sweeps``.
    """
    if len(truth) == 0:
        raise ValueError("class offsets: no valid labelled pixels to fit them on")
    if probs.shape[1] != num_classes:
        raise ValueError(f"class offsets: the model gives {probs.shape[1]} probabilities per pixel, "
                         f"expected {num_classes} classes")
    if truth.max() >= num_classes:
        raise ValueError(f"class offsets: label value {int(truth.max())} is not a class index below {num_classes}")
    present = np.bincount(truth, minlength=num_classes) > 0
    if present.sum() < 2:
        raise TooFewClassesError(f"class offsets: the labels hold only class {int(np.flatnonzero(present)[0])}; "
                                 "fitting offsets needs at least two classes")
    log_probs = np.log(np.maximum(probs, _TINY))
    plain = np.argmax(log_probs, 1)
    left_out = 0
    if not present.all():
        keep = present[plain]
        left_out = int(len(keep) - keep.sum())
        log_probs, truth, plain = log_probs[keep], truth[keep], plain[keep]
        if len(truth) == 0:
            raise ValueError("class offsets: the model gives every labelled pixel to a class absent from the labels")
    offsets = np.zeros(num_classes, np.float32)
    start = best = _mean_iou(truth, plain, num_classes, present)
    order = sorted(grid, key=abs)  # ties keep the offset nearest 0
    sweeps = 0
    for sweeps in range(1, MAX_SWEEPS + 1):
        moved = False
        for c in np.flatnonzero(present):
            others = log_probs + offsets
            others[:, c] = -np.inf
            rival, rival_score = np.argmax(others, 1), np.max(others, 1)
            del others
            own = log_probs[:, c]
            scores = [(_mean_iou(truth, np.where(own + v > rival_score, c, rival), num_classes, present), v)
                      for v in order]
            score, value = max(scores, key=lambda s: s[0])  # max keeps the first of equal scores
            if score > best + 1e-9 and value != offsets[c]:
                offsets[c], best, moved = value, score, True
        if not moved:
            break
    report = {"miou_before": round(start, 6), "miou_after": round(best, 6), "pixels": int(len(truth)),
              "classes_present": int(present.sum()), "classes_absent": [int(c) for c in np.flatnonzero(~present)],
              "pixels_left_out": left_out, "sweeps": sweeps}
    return [float(v) for v in offsets], report
