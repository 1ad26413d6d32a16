"""Disagreement-based estimators: GDE (arXiv 2106.13799), ALine-S and ALine-D (arXiv 2206.13089).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from gensight.estimate.base import (
    EstimatorError,
    NotFittedError,
    check_labels,
    check_n_classes,
    check_prob_list,
    check_probs,
    probit,
)

MIN_R2 = 0.95
"""Below this R^2 of the agreement line, ALine estimates are flagged as untrustworthy."""


class AgreementWarning(UserWarning):
    """Agreement is not on a line: ALine estimates should not be trusted."""


class GDE:
    """Generalization Disagreement Equality (Jiang et al. 2022, arXiv 2106.13799).

    For runs of one configuration drawn from the stochastic training algorithm ``A``, the
    expected test error equals the expected disagreement rate of two independent runs on
    unlabeled data, ``E_{h,h'~H_A}[Dis_D(h, h')] = E_{h~H_A}[TestErr_D(h)]`` (Def. 4.1; it
    holds when the ensemble of runs is class-wise calibrated, Thm. 4.2). The accuracy
    estimate for a run ``h`` is therefore ``1 - E_{h'}[Dis(h, h')]``. With several
    independent runs ``h'_1 .. h'_k`` of ``h``'s configuration (more than two seeds),
    the expectation over ``h'`` is estimated by the mean over all of them,
    ``1 - (1/k) sum_j Dis(h, h'_j)``, rather than by one arbitrary partner.

    >>> a = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]
    >>> b = [[0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.1, 0.9]]
    >>> GDE().estimate(a, b)    # they disagree on 1 of 4 examples
    0.75
    >>> GDE().estimate(a, b, a)  # mean agreement with two partners: (0.75 + 1) / 2
    0.875
    """

    name = "GDE"

    def estimate(self, target_probs, *partner_probs) -> float:
        """Accuracy of the run scoring ``target_probs``, from its mean agreement with each
        independent run in ``partner_probs`` (at least one)."""
        a = check_probs(target_probs, "target_probs")
        if not partner_probs:
            raise EstimatorError("GDE needs at least one independent run of the same "
                                 "configuration (partner_probs)")
        agree = []
        for j, probs in enumerate(partner_probs):
            b = check_probs(probs, f"partner_probs[{j}]")
            if a.shape != b.shape:
                raise EstimatorError(f"the runs must score the same examples: shapes "
                                     f"{a.shape} and {b.shape} (partner {j})")
            agree.append(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))
        return float(np.mean(agree))

    def __repr__(self) -> str:
        return "GDE()"


def agreement_matrix(predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """``(models, models)`` rates at which each pair of models predicts the same class, from
    ``(models, n_examples)`` predicted labels."""
    m, n = predictions.shape
    onehot = np.zeros((m, n * n_classes), dtype=np.float32)
    onehot[np.arange(m)[:, None], np.arange(n) * n_classes + predictions] = 1.0
    return (onehot @ onehot.T).astype(np.float64) / n


@dataclass(frozen=True)
class AgreementLine:
    """The least-squares line ``probit(agreement_OOD) = slope * probit(agreement_ID) + bias``
    over all pairs of models, and its coefficient of determination."""

    slope: float
    bias: float
    r2: float
    n_pairs: int


def fit_probit_line(x, y) -> AgreementLine:
    """Least-squares line through probit-scaled points ``(x, y)``.

    >>> line = fit_probit_line([-1.0, 0.0, 1.0], [-1.0, 1.0, 3.0])
    >>> line.slope, line.bias, line.r2
    (2.0, 1.0, 1.0)
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or np.ptp(x) == 0:
        raise EstimatorError("the agreement line needs at least 2 pairs with different "
                             "in-distribution agreement")
    slope, bias = np.polyfit(x, y, 1)
    resid = y - (slope * x + bias)
    total = np.sum((y - y.mean()) ** 2)
    r2 = 1.0 - np.sum(resid ** 2) / total if total > 0 else 1.0
    return AgreementLine(float(slope), float(bias), float(r2), int(x.size))


def aline_from_rates(acc_id, agr_id, agr_ood, n_id: int | None = None,
                     n_ood: int | None = None) -> dict:
    """ALine-S and ALine-D from rates: ``acc_id (models,)`` and the ``(models, models)``
    agreement matrices in and out of distribution (arXiv 2206.13089, Sec. 4, Alg. 1).

    ``n_id``/``n_ood`` (examples) clip rates of 0 or 1 before the probit. Returns a dict with
    the fitted ``line`` (:class:`AgreementLine`), ``aline_s`` and ``aline_d`` (OOD accuracy per
    model) and the pair points ``x``/``y`` (probit ID/OOD agreement).

    - ALine-S applies the agreement line to each model's ID accuracy:
      ``acc_OOD = Phi(slope * probit(acc_ID) + bias)``.
    - ALine-D solves, by least squares over all pairs ``i < j``, the linear system
      ``(u_i + u_j)/2 = probit(agr_OOD_ij) + slope * ((probit(acc_ID_i) + probit(acc_ID_j))/2
      - probit(agr_ID_ij))`` for ``u = probit(acc_OOD)``; the bias cancels.
    """
    acc_id = np.asarray(acc_id, dtype=np.float64)
    agr_id, agr_ood = np.asarray(agr_id, np.float64), np.asarray(agr_ood, np.float64)
    m = acc_id.size
    if m < 3:
        raise EstimatorError(f"agreement-on-the-line needs at least 3 models (2 pairs to fit "
                             f"the line), got {m}")
    if acc_id.ndim != 1:
        raise EstimatorError(f"acc_id must be 1-D (one accuracy per model), got shape "
                             f"{acc_id.shape}")
    if agr_id.shape != (m, m) or agr_ood.shape != (m, m):
        raise EstimatorError(f"agreement matrices must be ({m}, {m}); got {agr_id.shape} and "
                             f"{agr_ood.shape}")
    for label, rates in (("acc_id", acc_id), ("agr_id", agr_id), ("agr_ood", agr_ood)):
        bad = ~(np.isfinite(rates) & (rates >= 0) & (rates <= 1))
        if bad.any():
            raise EstimatorError(f"{label} must hold rates in [0, 1]; {int(bad.sum())} "
                                 f"value(s) are not (e.g. {float(rates[bad][0]):.6g})")
    iu = np.triu_indices(m, k=1)
    x, y = probit(agr_id[iu], n_id), probit(agr_ood[iu], n_ood)
    line = fit_probit_line(x, y)
    p_id = probit(acc_id, n_id)
    aline_s = ndtr(line.slope * p_id + line.bias)
    # Normal equations of the pair system: A has 1/2 in columns i and j of row (i, j), so
    # A^T A = ((m - 2) I + 1 1^T) / 4 and (A^T r)_i = sum_{j != i} r_ij / 2.
    r = np.zeros((m, m))
    r[iu] = y + line.slope * ((p_id[iu[0]] + p_id[iu[1]]) / 2 - x)
    r = r + r.T
    ata = ((m - 2) * np.eye(m) + np.ones((m, m))) / 4
    u = np.linalg.solve(ata, r.sum(axis=1) / 2)
    return {"line": line, "aline_s": aline_s, "aline_d": ndtr(u), "x": x, "y": y}


def off_the_line_message(line: AgreementLine, min_r2: float) -> str:
    """The warning for an agreement line with ``R^2 < min_r2``: it names both ALine
    variants, since ALine-S applies the line and ALine-D solves with its slope."""
    return (f"agreement is not on a line (R^2 = {line.r2:.3f} < {min_r2}): ALine-S and "
            f"ALine-D estimates, which both use this line, should not be trusted for this "
            f"shift")


class _ALine:
    """Shared fit/estimate of ALine-S and ALine-D."""

    name = "ALine"
    _key = ""

    def __init__(self, min_r2: float = MIN_R2):
        self.min_r2 = min_r2

    def fit(self, source_probs, source_labels):
        """``source_probs``: one ``(n_examples, n_classes)`` array per model (a list, or a
        ``(models, n_examples, n_classes)`` array); ``source_labels``: ``(n_examples,)``."""
        probs = check_prob_list(source_probs, "source_probs")
        labels = check_labels(source_labels, probs[0], "source_labels")
        if len(probs) < 3:
            raise EstimatorError(f"agreement-on-the-line needs at least 3 models, got "
                                 f"{len(probs)}")
        self.n_classes_ = probs[0].shape[1]
        self.source_predictions_ = np.stack([p.argmax(axis=1) for p in probs])
        self.source_accuracy_ = (self.source_predictions_ == labels).mean(axis=1)
        self.source_agreement_ = agreement_matrix(self.source_predictions_, self.n_classes_)
        return self

    def estimate(self, target_probs) -> np.ndarray:
        """OOD accuracy per model, in the order of ``fit``. Sets ``line_`` (the agreement line)
        and ``on_the_line_`` (its R^2 >= ``min_r2``); warns with :class:`AgreementWarning`
        when agreement is not on a line."""
        if not hasattr(self, "source_predictions_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call "
                                 "fit(list_of_source_probs, source_labels)")
        probs = check_prob_list(target_probs, "target_probs")
        m = self.source_predictions_.shape[0]
        if len(probs) != m:
            raise EstimatorError(f"fitted on {m} models but given target probabilities of "
                                 f"{len(probs)}")
        check_n_classes(self.n_classes_, probs[0], type(self).__name__, "target_probs")
        predictions = np.stack([p.argmax(axis=1) for p in probs])
        result = aline_from_rates(self.source_accuracy_, self.source_agreement_,
                                  agreement_matrix(predictions, self.n_classes_),
                                  self.source_predictions_.shape[1], predictions.shape[1])
        self.line_ = result["line"]
        self.pairs_ = (result["x"], result["y"])
        self.on_the_line_ = self.line_.r2 >= self.min_r2
        if not self.on_the_line_:
            warnings.warn(off_the_line_message(self.line_, self.min_r2),
                          AgreementWarning, stacklevel=2)
        return result[self._key]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_r2={self.min_r2})"


class ALineS(_ALine):
    """ALine-S (arXiv 2206.13089): the OOD-vs-ID agreement line, fitted in probit space over
    all pairs of models, applied to each model's ID accuracy."""

    name = "ALine-S"
    _key = "aline_s"


class ALineD(_ALine):
    """ALine-D (arXiv 2206.13089): per-model OOD accuracies solved from the pairwise
    agreement system with the fitted slope (see :func:`aline_from_rates`)."""

    name = "ALine-D"
    _key = "aline_d"


