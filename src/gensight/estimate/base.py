"""Input checks and small helpers shared by the estimators."""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, ndtri

from gensight.errors import GensightError

SUM_TOLERANCE = 1e-3


class EstimatorError(GensightError, ValueError):
    """Input an estimator cannot use: not probabilities, NaN, mismatched shapes or counts."""


class NotFittedError(GensightError, RuntimeError):
    """``estimate`` was called before ``fit``."""


def softmax(logits) -> np.ndarray:
    """Row-wise softmax of ``(n_examples, n_classes)`` logits (float64).

    >>> softmax([[0.0, 0.0], [0.0, np.log(3.0)]]).round(3).tolist()
    [[0.5, 0.5], [0.25, 0.75]]
    """
    return np.exp(log_softmax(check_logits(logits, "logits"), axis=1))


def check_logits(logits, name: str = "logits") -> np.ndarray:
    """Validate ``(n_examples, n_classes)`` logits: finite real numbers; float64."""
    arr = as_float_array(logits, name)
    if arr.ndim != 2:
        raise EstimatorError(f"{name} must be (n_examples, n_classes), got shape {arr.shape}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise EstimatorError(f"{name} contain NaN or infinity in {int(bad.sum())} row(s), "
                             f"first row {int(np.flatnonzero(bad)[0])}")
    return arr


def as_float_array(values, name: str) -> np.ndarray:
    """``values`` as a float64 array; a one-line :class:`EstimatorError` for anything that is
    not a rectangular array of real numbers (strings, objects, ragged lists, complex)."""
    if isinstance(values, np.ndarray) and values.dtype.kind not in "biuf":
        raise EstimatorError(f"{name} must hold real numbers, got an array of dtype "
                             f"{values.dtype}")
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise EstimatorError(f"{name} must be a rectangular array of real numbers: "
                             f"{' '.join(str(exc).split())}") from None


def check_probs(probs, name: str = "probs") -> np.ndarray:
    """Validate ``(n_examples, n_classes)`` probabilities: finite, in [0, 1], rows sum to 1."""
    arr = as_float_array(probs, name)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 2:
        raise EstimatorError(f"{name} must be (n_examples, n_classes) with at least 2 classes, "
                             f"got shape {arr.shape}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise EstimatorError(f"{name} has NaN or infinity in {int(bad.sum())} row(s), first "
                             f"row {int(np.flatnonzero(bad)[0])}")
    outside = ((arr < 0) | (arr > 1)).any(axis=1)
    if outside.any():
        raise EstimatorError(f"{name} has values outside [0, 1] in {int(outside.sum())} row(s), "
                             f"first row {int(np.flatnonzero(outside)[0])} (min "
                             f"{arr.min():.4g}, max {arr.max():.4g}); pass logits through "
                             f"gensight.estimate.softmax")
    sums = arr.sum(axis=1)
    off = np.abs(sums - 1.0) > SUM_TOLERANCE
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise EstimatorError(f"{name} rows must sum to 1: row {row} sums to {sums[row]:.6g} "
                             f"({int(off.sum())} row(s) off); pass logits through "
                             f"gensight.estimate.softmax")
    return arr


def check_labels(labels, probs: np.ndarray, name: str = "labels") -> np.ndarray:
    """Validate integer class indices, one per row of ``probs``, in ``[0, n_classes)``."""
    try:
        arr = np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise EstimatorError(f"{name} must be a 1-D array of class indices: "
                             f"{' '.join(str(exc).split())}") from None
    if arr.ndim != 1 or arr.shape[0] != probs.shape[0]:
        hint = " (one-hot? pass labels.argmax(1))" if arr.shape == probs.shape else ""
        raise EstimatorError(f"{name} must be 1-D with one label per example "
                             f"({probs.shape[0]}), got shape {arr.shape}{hint}")
    return as_class_indices(arr, name, probs.shape[1])


def as_class_indices(arr: np.ndarray, name: str, n_classes: int | None = None) -> np.ndarray:
    """A 1-D array of labels as int64 class indices (integer-valued floats accepted), all in
    ``[0, n_classes)`` (or ``>= 0`` when ``n_classes`` is None)."""
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(arr) & (np.mod(arr, 1) == 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise EstimatorError(f"{name} must be integer class indices; {int(bad.sum())} "
                                 f"value(s) are not, first {arr[i].item()!r} at position {i}")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise EstimatorError(f"{name} must be integer class indices, got dtype {arr.dtype}")
    if arr.size == 0:
        raise EstimatorError(f"{name} is empty")
    hi = n_classes - 1 if n_classes is not None else None
    if arr.min() < 0 or (hi is not None and arr.max() > hi):
        bad = (arr < 0) | (arr > hi) if hi is not None else arr < 0
        where = f"[0, {hi}]" if hi is not None else "[0, n_classes)"
        raise EstimatorError(f"{name} must lie in {where}, got [{arr.min()}, {arr.max()}] "
                             f"({int(bad.sum())} label(s) outside, first at position "
                             f"{int(np.flatnonzero(bad)[0])})")
    return arr.astype(np.int64, copy=False)


def check_n_classes(fitted: int, probs: np.ndarray, who: str, name: str) -> None:
    """Refuse ``probs`` whose number of classes differs from the one ``who`` was fitted on."""
    if probs.shape[1] != fitted:
        raise EstimatorError(f"{who} was fitted on probabilities of {fitted} classes; {name} "
                             f"has {probs.shape[1]} classes")


def check_prob_list(probs_list, name: str, check=None) -> list[np.ndarray]:
    """A list of per-model arrays of one shape, each passed through ``check`` (default
    :func:`check_probs`; :func:`check_logits` for logits)."""
    check = check or check_probs
    if isinstance(probs_list, np.ndarray):
        if probs_list.ndim != 3:
            raise EstimatorError(f"{name} must be one (n_examples, n_classes) array per model "
                                 f"(a list, or a (models, n_examples, n_classes) array); got "
                                 f"an array of shape {probs_list.shape}")
        probs_list = list(probs_list)
    elif isinstance(probs_list, (str, bytes)) or not hasattr(probs_list, "__iter__"):
        raise EstimatorError(f"{name} must be a list of (n_examples, n_classes) arrays, one per "
                             f"model; got {type(probs_list).__name__}")
    items = [check(p, f"{name}[{i}]") for i, p in enumerate(probs_list)]
    if not items:
        raise EstimatorError(f"{name} is empty")
    shapes = {p.shape for p in items}
    if len(shapes) > 1:
        raise EstimatorError(f"{name}: every model must score the same examples and classes; "
                             f"got shapes {sorted(shapes)}")
    return items


def probit(p, n: int | None = None) -> np.ndarray:
    """The probit ``Phi^-1(p)``; with ``n`` examples, ``p`` is first clipped to
    ``[1/(2n), 1 - 1/(2n)]`` so that rates of 0 or 1 stay finite."""
    arr = np.asarray(p, dtype=np.float64)
    if n is not None:
        eps = 0.5 / n
        arr = np.clip(arr, eps, 1 - eps)
    return ndtri(arr)
