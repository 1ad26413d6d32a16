"""Confidence-based single-model estimators: AC, DoC and ATC (arXiv 2201.04234).

Each is configured in ``__init__``, fitted on labeled source (in-distribution, held-out) data
with ``fit(source_probs, source_labels)``, and answers ``estimate(target_probs) -> float``, an
accuracy in [0, 1], for unlabeled target data. Arrays are ``(n_examples, n_classes)``
probabilities; the target must have the number of classes the estimator was fitted on (else
:class:`EstimatorError` gives both numbers). With ``temperature_scaling=True`` a
:class:`TemperatureScaling` is fitted on the source data and applied to the source *and*
target probabilities before anything else.
"""

from __future__ import annotations

import numpy as np

from gensight.estimate.base import (
    EstimatorError,
    NotFittedError,
    check_labels,
    check_n_classes,
    check_probs,
)
from gensight.estimate.calibration import TemperatureScaling


class ConfidenceEstimator:
    """Shared ``fit`` plumbing: validation, optional temperature scaling, source accuracy."""

    name = "confidence"

    def __init__(self, temperature_scaling: bool = False):
        self.temperature_scaling = temperature_scaling

    def _calibrated(self, probs, name: str) -> np.ndarray:
        p = check_probs(probs, name)
        check_n_classes(self.n_classes_, p, type(self).__name__, name)
        return self.calibrator_.transform(p) if self.calibrator_ is not None else p

    def fit(self, source_probs, source_labels):
        p = check_probs(source_probs, "source_probs")
        y = check_labels(source_labels, p, "source_labels")
        self.n_classes_ = p.shape[1]
        self.calibrator_ = TemperatureScaling().fit(p, y) if self.temperature_scaling else None
        p = self.calibrator_.transform(p) if self.calibrator_ is not None else p
        self.source_accuracy_ = float(np.mean(p.argmax(axis=1) == y))
        self._fit(p, y)
        return self

    def _fit(self, probs: np.ndarray, labels: np.ndarray) -> None:
        pass

    def _check_fitted(self) -> None:
        if not hasattr(self, "source_accuracy_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call "
                                 "fit(source_probs, source_labels)")

    def estimate(self, target_probs) -> float:
        self._check_fitted()
        return float(np.clip(self._estimate(self._calibrated(target_probs, "target_probs")),
                             0.0, 1.0))

    def _estimate(self, probs: np.ndarray) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(temperature_scaling={self.temperature_scaling})"


class AverageConfidence(ConfidenceEstimator):
    """AC: the target accuracy is the mean of the maximum softmax probability.

    >>> AverageConfidence().fit([[0.9, 0.1]], [0]).estimate([[0.6, 0.4], [0.2, 0.8]])
    0.7
    """

    name = "AC"

    def _estimate(self, probs: np.ndarray) -> float:
        return float(probs.max(axis=1).mean())


class DifferenceOfConfidences(ConfidenceEstimator):
    """DoC (Guillory et al. 2021): source accuracy minus the drop in average confidence,
    ``acc_S - (AC_S - AC_T)``.

    >>> doc = DifferenceOfConfidences().fit([[0.9, 0.1], [0.7, 0.3]], [0, 1])
    >>> round(doc.estimate([[0.6, 0.4], [0.6, 0.4]]), 6)   # 0.5 - (0.8 - 0.6)
    0.3
    """

    name = "DoC"

    def _fit(self, probs: np.ndarray, labels: np.ndarray) -> None:
        self.source_confidence_ = float(probs.max(axis=1).mean())

    def _estimate(self, probs: np.ndarray) -> float:
        return self.source_accuracy_ - (self.source_confidence_ - probs.max(axis=1).mean())


SCORES = ("maxconf", "entropy")


def atc_score(probs: np.ndarray, score: str) -> np.ndarray:
    """ATC's confidence score per example: max probability, or negative entropy sum p log p."""
    if score == "maxconf":
        return probs.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sum(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1)), 0.0),
                      axis=1)


class ATC(ConfidenceEstimator):
    """Average Thresholded Confidence (Garg et al. 2022, arXiv 2201.04234, Eq. 1-2).

    ``fit`` picks the threshold ``t`` on the source data so that the fraction of source examples
    whose score is below ``t`` equals the source error; ``estimate`` returns the fraction of
    target examples whose score is above ``t``. ``score`` is ``"maxconf"`` (maximum softmax
    probability) or ``"entropy"`` (negative entropy). With ``k = round(error * n)`` source
    examples below the threshold, ``t`` is the midpoint between the k-th and (k+1)-th smallest
    source scores (``-inf`` when the source has no errors, ``+inf`` when it has no correct
    prediction), so the source accuracy is reproduced exactly.

    >>> src = [[0.6, 0.4], [0.75, 0.25], [0.85, 0.15], [0.95, 0.05]]
    >>> atc = ATC("maxconf").fit(src, [1, 0, 0, 0])     # error 1/4: t between 0.6 and 0.75
    >>> atc.threshold_, atc.estimate([[0.65, 0.35], [0.7, 0.3], [0.9, 0.1], [0.8, 0.2]])
    (0.675, 0.75)
    """

    name = "ATC"

    def __init__(self, score: str = "maxconf", temperature_scaling: bool = False):
        if score not in SCORES:
            raise EstimatorError(f"ATC score must be one of {SCORES}, got {score!r}")
        super().__init__(temperature_scaling)
        self.score = score

    def _fit(self, probs: np.ndarray, labels: np.ndarray) -> None:
        scores = np.sort(atc_score(probs, self.score))
        n = scores.size
        k = int(round((1.0 - self.source_accuracy_) * n))
        if k == 0:
            self.threshold_ = -np.inf
        elif k == n:
            self.threshold_ = np.inf
        else:
            self.threshold_ = float((scores[k - 1] + scores[k]) / 2)

    def _estimate(self, probs: np.ndarray) -> float:
        return float(np.mean(atc_score(probs, self.score) > self.threshold_))

    def __repr__(self) -> str:
        return f"ATC(score={self.score!r}, temperature_scaling={self.temperature_scaling})"
