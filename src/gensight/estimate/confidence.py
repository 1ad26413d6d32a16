"""Confidence-based single-model estimators: AC, DoC, CBPE and ATC (arXiv 2201.04234).

Each is configured in ``__init__``, fitted on labeled source (in-distribution, held-out) data
with ``fit(source_probs, source_labels)``, and answers ``estimate(target_probs) -> float``, an
accuracy in [0, 1], for unlabeled target data. Arrays are ``(n_examples, n_classes)``
probabilities; the target must have the number of classes the estimator was fitted on (else
:class:`EstimatorError` gives both numbers).

With ``temperature_scaling=True`` a :class:`TemperatureScaling` is fitted on the source data
and applied to the source *and* target before anything else; pass a fitted
:class:`TemperatureScaling` instead to reuse it (no refit: one fit serves ATC-MC+TS and
ATC-NE+TS). Give the logits too (``fit(..., source_logits=...)``, ``estimate(...,
target_logits=...)``; the probabilities may then be ``None``) and temperature scaling fits
and applies on them rather than on ``log p``.
"""

from __future__ import annotations

import numpy as np

from gensight.estimate.base import (
    EstimatorError,
    NotFittedError,
    check_labels,
    check_logits,
    check_n_classes,
    check_probs,
    softmax,
)
from gensight.estimate.calibration import TemperatureScaling


def probs_and_logits(probs, logits, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Validated probabilities (``softmax(logits)`` when ``probs`` is None) and logits (or
    None); with both given they must have one shape."""
    if probs is None and logits is None:
        raise EstimatorError(f"give {name} probabilities or logits")
    z = check_logits(logits, f"{name} logits") if logits is not None else None
    p = check_probs(probs, f"{name}_probs") if probs is not None else softmax(z)
    if z is not None and z.shape != p.shape:
        raise EstimatorError(f"{name} probabilities {p.shape} and logits {z.shape} must have "
                             "one shape")
    return p, z


class ConfidenceEstimator:
    """Shared ``fit`` plumbing: validation, optional temperature scaling, source accuracy."""

    name = "confidence"

    def __init__(self, temperature_scaling: bool | TemperatureScaling = False):
        if isinstance(temperature_scaling, TemperatureScaling) \
                and not hasattr(temperature_scaling, "temperature_"):
            raise NotFittedError("pass temperature_scaling=True, or a fitted "
                                 "TemperatureScaling to reuse")
        self.temperature_scaling = temperature_scaling

    def _calibrated(self, probs, logits, name: str) -> np.ndarray:
        p, z = probs_and_logits(probs, logits, name)
        check_n_classes(self.n_classes_, p, type(self).__name__, f"{name}_probs")
        if self.calibrator_ is None:
            return p
        return self.calibrator_.transform_logits(z) if z is not None \
            else self.calibrator_.transform(p)

    def fit(self, source_probs, source_labels, *, source_logits=None):
        p, z = probs_and_logits(source_probs, source_logits, "source")
        y = check_labels(source_labels, p, "source_labels")
        self.n_classes_ = p.shape[1]
        ts = self.temperature_scaling
        if isinstance(ts, TemperatureScaling):
            check_n_classes(ts.n_classes_, p, "the given TemperatureScaling", "source_probs")
            self.calibrator_ = ts
        elif ts:
            self.calibrator_ = TemperatureScaling().fit_logits(z, y) if z is not None \
                else TemperatureScaling().fit(p, y)
        else:
            self.calibrator_ = None
        p = self._calibrated(p, z, "source")
        self.source_accuracy_ = float(np.mean(p.argmax(axis=1) == y))
        self._fit(p, y)
        return self

    def _fit(self, probs: np.ndarray, labels: np.ndarray) -> None:
        pass

    def _check_fitted(self) -> None:
        if not hasattr(self, "source_accuracy_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call "
                                 "fit(source_probs, source_labels)")

    def estimate(self, target_probs, *, target_logits=None) -> float:
        self._check_fitted()
        return float(np.clip(self._estimate(self._calibrated(target_probs, target_logits,
                                                             "target")), 0.0, 1.0))

    def _estimate(self, probs: np.ndarray) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(temperature_scaling={self._ts_repr()})"

    def _ts_repr(self) -> str:
        ts = self.temperature_scaling
        return repr(ts) if isinstance(ts, TemperatureScaling) else str(bool(ts))


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


CALIBRATIONS = ("top-label", "one-vs-rest")


class CBPE(ConfidenceEstimator):
    """Confidence-based performance estimation in the style of NannyML's CBPE (NannyML docs,
    "How it works: Confidence-based Performance Estimation"; Kivimaki et al. 2025, arXiv
    2505.05295): calibrate the confidence on the labeled source with isotonic regression,
    then estimate the target accuracy as the mean calibrated confidence of the predicted
    class, ``acc_T = (1/n) sum_i c(max_k p_ik)``.

    ``calibration="top-label"`` (the default, ``CBPE`` in :data:`METHODS`) fits one isotonic
    map ``c`` from the maximum probability to whether the prediction was correct, so ``c(q)``
    estimates ``P(correct | confidence = q)``: on the source the estimate reproduces the
    source accuracy exactly (isotonic regression preserves the mean). ``"one-vs-rest"`` is
    NannyML's multiclass scheme: one isotonic map per class from ``p_k`` to ``1[y = k]``,
    the calibrated rows renormalized to sum to 1 (uniform where all are 0), and the
    calibrated probability of the model's predicted class (the argmax before calibration)
    averaged. Unlike NannyML, calibration is always applied (NannyML's ``needs_calibration``
    skips it for a class when it does not lower the expected calibration error in
    cross-validation on the reference data). Maps are ``IsotonicRegression(y_min=0,
    y_max=1, out_of_bounds="clip")`` (scikit-learn): target confidences outside the source
    range take the nearest end value.

    >>> src = [[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]]
    >>> cbpe = CBPE().fit(src, [0, 0, 1, 0])        # correct, correct, wrong, correct
    >>> round(cbpe.estimate([[0.95, 0.05], [0.65, 0.35]]), 6)   # c(0.95) = 1, c(0.65) = 0.5
    0.75
    """

    name = "CBPE"

    def __init__(self, calibration: str = "top-label"):
        if calibration not in CALIBRATIONS:
            raise EstimatorError(f"CBPE calibration must be one of {CALIBRATIONS}, got "
                                 f"{calibration!r}")
        super().__init__(False)
        self.calibration = calibration

    @staticmethod
    def _isotonic(x: np.ndarray, y: np.ndarray):
        from sklearn.isotonic import IsotonicRegression

        return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x, y)

    def _fit(self, probs: np.ndarray, labels: np.ndarray) -> None:
        if self.calibration == "top-label":
            correct = (probs.argmax(axis=1) == labels).astype(np.float64)
            self.calibrators_ = [self._isotonic(probs.max(axis=1), correct)]
        else:
            self.calibrators_ = [self._isotonic(probs[:, k], (labels == k).astype(np.float64))
                                 for k in range(probs.shape[1])]

    def calibrated_confidence(self, probs) -> np.ndarray:
        """Calibrated confidence of the predicted class, one per row of ``probs``."""
        self._check_fitted()
        p = check_probs(probs, "probs")
        check_n_classes(self.n_classes_, p, "CBPE", "probs")
        if self.calibration == "top-label":
            return self.calibrators_[0].predict(p.max(axis=1))
        cal = np.stack([c.predict(p[:, k]) for k, c in enumerate(self.calibrators_)], axis=1)
        total = cal.sum(axis=1, keepdims=True)
        cal = np.divide(cal, total, out=np.full_like(cal, 1.0 / cal.shape[1]),
                        where=total > 0)
        return cal[np.arange(len(p)), p.argmax(axis=1)]

    def _estimate(self, probs: np.ndarray) -> float:
        return float(np.mean(self.calibrated_confidence(probs)))

    def __repr__(self) -> str:
        return f"CBPE(calibration={self.calibration!r})"


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

    def __init__(self, score: str = "maxconf",
                 temperature_scaling: bool | TemperatureScaling = False):
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
        return f"ATC(score={self.score!r}, temperature_scaling={self._ts_repr()})"
