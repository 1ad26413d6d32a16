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
    arr = np.asarray(logits, dtype=np.float64)
    if arr.ndim != 2:
        raise EstimatorError(f"logits must be (n_examples, n_classes), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise EstimatorError("logits contain NaN or infinity")
    return np.exp(log_softmax(arr, axis=1))


def check_probs(probs, name: str = "probs") -> np.ndarray:
    """Validate ``(n_examples, n_classes)`` probabilities: finite, in [0, 1], rows sum to 1."""
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 2:
        raise EstimatorError(f"{name} must be (n_examples, n_classes) with at least 2 classes, "
                             f"got shape {arr.shape}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise EstimatorError(f"{name} has NaN or infinity in {int(bad.sum())} row(s), first "
                             f"row {int(np.flatnonzero(bad)[0])}")
    if arr.min() < 0 or arr.max() > 1:
        raise EstimatorError(f"{name} has values outside [0, 1] (min {arr.min():.4g}, max "
                             f"{arr.max():.4g}); pass logits through gensight.estimate.softmax")
    sums = arr.sum(axis=1)
    off = np.abs(sums - 1.0) > SUM_TOLERANCE
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise EstimatorError(f"{name} rows must sum to 1: row {row} sums to {sums[row]:.6g} "
                             f"({int(off.sum())} row(s) off); pass logits through "
                             f"gensight.estimate.softmax")
    return arr


def check_labels(labels, probs: np.ndarray, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != probs.shape[0]:
        raise EstimatorError(f"{name} must be 1-D with one label per example "
                             f"({probs.shape[0]}), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise EstimatorError(f"{name} must be integer class indices")
        arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() >= probs.shape[1]:
        raise EstimatorError(f"{name} must lie in [0, {probs.shape[1] - 1}], got "
                             f"[{arr.min()}, {arr.max()}]")
    return arr


def check_prob_list(probs_list, name: str) -> list[np.ndarray]:
    """A list of per-model probability arrays of one shape."""
    if isinstance(probs_list, np.ndarray) and probs_list.ndim == 3:
        probs_list = list(probs_list)
    items = [check_probs(p, f"{name}[{i}]") for i, p in enumerate(probs_list)]
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
