"""Label-free accuracy estimation under distribution shift.

Given predicted probabilities of labeled source (in-distribution) data and of unlabeled target
data, estimate each model's accuracy on the target. Arrays are ``(n_examples, n_classes)``
probabilities; :func:`softmax` turns logits into them.

- :class:`AverageConfidence` (AC), :class:`DifferenceOfConfidences` (DoC), :class:`CBPE`
  (isotonic-calibrated average confidence, as NannyML's CBPE), :class:`ATC` (``score=
  "maxconf"`` or ``"entropy"``; arXiv 2201.04234): single-model, ``fit(source_probs,
  source_labels)`` then ``estimate(target_probs) -> float``.
- :class:`TemperatureScaling`: a calibrator fitted in log-temperature, on logits
  (``fit_logits`` / ``transform_logits``) or on probabilities (``fit`` / ``transform``).
- :class:`GDE` (arXiv 2106.13799): ``estimate(target_probs, *partner_probs) -> float``, the
  mean agreement with one or more independent runs of the model's configuration.
- :class:`ALineS`, :class:`ALineD` (arXiv 2206.13089): ``fit(list_of_source_probs,
  source_labels)`` then ``estimate(list_of_target_probs) -> numpy array``, one accuracy per
  model, with a diagnostic (``line_.r2``, ``on_the_line_``).
- :func:`estimate_accuracies` runs them all and returns a DataFrame; :func:`zoo_estimates`
  does so from a zoo's stored logits.
"""

from gensight.estimate.agreement import (
    GDE,
    AgreementLine,
    AgreementWarning,
    ALineD,
    ALineS,
    aline_from_rates,
    fit_probit_line,
)
from gensight.estimate.base import EstimatorError, NotFittedError, probit, softmax
from gensight.estimate.calibration import TemperatureScaling
from gensight.estimate.confidence import ATC, CBPE, AverageConfidence, DifferenceOfConfidences
from gensight.estimate.run import (
    METHODS,
    EstimateResult,
    estimate_accuracies,
    load_labels,
    load_logits,
    partners_from_groups,
    zoo_estimates,
)

__all__ = [
    "ATC", "CBPE", "GDE", "METHODS", "ALineD", "ALineS", "AgreementLine", "AgreementWarning",
    "AverageConfidence", "DifferenceOfConfidences", "EstimateResult", "EstimatorError",
    "NotFittedError", "TemperatureScaling", "aline_from_rates", "estimate_accuracies",
    "fit_probit_line", "load_labels", "load_logits", "partners_from_groups", "probit",
    "softmax", "zoo_estimates",
]
