"""Temperature scaling (Guo et al. 2017), the calibrator used by ATC (arXiv 2201.04234)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp

from gensight.estimate.base import (
    EstimatorError,
    NotFittedError,
    check_labels,
    check_logits,
    check_n_classes,
    check_probs,
)

_TINY = 1e-12


class TemperatureScaling:
    """Rescale logits by ``1 / T``, with ``T`` fitted to minimize the NLL on labeled data
    (Guo et al. 2017, Sec. 4.2: ``q = max_k softmax(z / T)_k``, ``T`` by NLL on validation).

    :meth:`fit_logits` / :meth:`transform_logits` work on the logits ``z`` themselves, the
    calibrator of the paper. :meth:`fit` / :meth:`transform` take probabilities instead and
    use ``log p`` as the logits (the softmax ignores a per-row constant), so that it composes
    with every estimator here; ``p`` is clamped at ``1e-12`` first, so ``log p`` differs
    from the logits wherever a class lies more than ~27.6 nats below the top one. Give
    logits when you have them.

    The search runs over ``log T`` in ``[log(min_temperature), log(max_temperature)]``, so the
    temperature is positive and finite by construction. Input whose NLL does not depend on
    ``T`` (every row uniform), or whose best temperature lies at a bound (the NLL keeps falling
    as ``T -> 0``, as when every example is classified correctly), is degenerate and raises
    :class:`EstimatorError` naming the cause rather than returning a meaningless temperature.

    Attributes after fitting: ``temperature_``, ``nll_before_``, ``nll_after_``, ``fitted_on_``
    (``"logits"`` or ``"probs"``).

    >>> p = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    >>> ts = TemperatureScaling().fit(p, [0, 1, 0, 1])
    >>> bool(ts.temperature_ > 1)   # over-confident on half-wrong data: soften
    True
    """

    def __init__(self, min_temperature: float = 0.01, max_temperature: float = 100.0):
        if not 0 < min_temperature < 1 < max_temperature < np.inf:
            raise EstimatorError("need 0 < min_temperature < 1 < max_temperature, got "
                                 f"{min_temperature}, {max_temperature}")
        self.min_temperature = min_temperature
        self.max_temperature = max_temperature

    @staticmethod
    def _nll(z: np.ndarray, labels: np.ndarray, log_t: float) -> float:
        z = z / np.exp(log_t)
        return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(labels)), labels]))

    def fit(self, probs, labels) -> TemperatureScaling:
        """Fit ``T`` on probabilities (``log p``, clamped at 1e-12, as the logits)."""
        p = check_probs(probs, "probs")
        y = check_labels(labels, p)
        return self._fit(np.log(np.maximum(p, _TINY)), y, "probs")

    def fit_logits(self, logits, labels) -> TemperatureScaling:
        """Fit ``T`` on logits ``(n_examples, n_classes)``, exactly as Guo et al. 2017."""
        z = check_logits(logits, "logits")
        y = check_labels(labels, z)
        return self._fit(z - z.max(axis=1, keepdims=True), y, "logits")

    def _fit(self, z: np.ndarray, y: np.ndarray, kind: str) -> TemperatureScaling:
        if z.shape[0] < 2:
            raise EstimatorError("temperature scaling needs at least 2 labeled examples")
        spread = z.max(axis=1) - z.min(axis=1)
        if np.all(spread < 1e-9):
            raise EstimatorError(f"every row of {kind} is uniform: the NLL does not depend "
                                 "on the temperature")
        lo, hi = np.log(self.min_temperature), np.log(self.max_temperature)
        result = minimize_scalar(lambda u: self._nll(z, y, u), bounds=(lo, hi),
                                 method="bounded", options={"xatol": 1e-6})
        log_t = float(result.x)
        nll = float(result.fun)
        at_zero = self._nll(z, y, lo) <= nll + 1e-9 or log_t - lo < 1e-3
        at_inf = self._nll(z, y, hi) <= nll + 1e-9 or hi - log_t < 1e-3
        if at_zero or at_inf:
            side = "0 (the data are separated: every example is predicted correctly)" \
                if at_zero else "infinity (the predictions carry no signal)"
            raise EstimatorError(f"temperature scaling is degenerate: the NLL keeps falling as "
                                 f"T -> {side}; fit it on held-out data with some errors")
        self.n_classes_ = z.shape[1]
        self.temperature_ = float(np.exp(log_t))
        self.nll_before_ = self._nll(z, y, 0.0)
        self.nll_after_ = nll
        self.fitted_on_ = kind
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "temperature_"):
            raise NotFittedError("TemperatureScaling is not fitted; call fit(probs, labels) or "
                                 "fit_logits(logits, labels)")

    def transform(self, probs) -> np.ndarray:
        """Calibrated probabilities ``softmax(log(probs) / T)``, same shape as ``probs``."""
        self._check_fitted()
        p = check_probs(probs, "probs")
        check_n_classes(self.n_classes_, p, "TemperatureScaling", "probs")
        return np.exp(log_softmax(np.log(np.maximum(p, _TINY)) / self.temperature_, axis=1))

    def transform_logits(self, logits) -> np.ndarray:
        """Calibrated probabilities ``softmax(logits / T)``, same shape as ``logits``."""
        self._check_fitted()
        z = check_logits(logits, "logits")
        check_n_classes(self.n_classes_, z, "TemperatureScaling", "logits")
        return np.exp(log_softmax(z / self.temperature_, axis=1))

    def __repr__(self) -> str:
        fitted = f", temperature_={self.temperature_:.4g}" if hasattr(self, "temperature_") \
            else ""
        return f"TemperatureScaling(min_temperature={self.min_temperature}, " \
               f"max_temperature={self.max_temperature}{fitted})"
