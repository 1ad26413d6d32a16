"""Complexity measures of trained networks (arXiv 1912.02178, App. C), in one registry.

- :data:`MEASURES`: name -> :class:`Measure` (its function, what it needs, what it cites).
- :func:`compute`: measures of one network given as :class:`MemberData`.
- :func:`zoo_measures`: measures of a zoo's members, as a DataFrame.
- Building blocks: exact conv operator norms (:func:`operator_norm`, to a stated tolerance;
  :class:`ConvergenceWarning` when it is not reached), output margins, the
  vectorized sigma search of the PAC-Bayes measures (:func:`pacbayes_sigma`), the box
  search of the sharpness measures (:func:`sharpness_alpha`; both return NaN with a note for
  a network at chance level) and the power-law fit of the alpha measure
  (:func:`power_law_fit`).
- Margin-distribution signatures (arXiv 1810.00113): :mod:`gensight.measures.margins`.

Every measure grows with the expected generalization gap. A measure that does not apply to a
network (path.norm of a tanh network; a margin measure when the margin is not positive)
gives NaN and says why, instead of a number.
"""

from gensight.measures.core import (
    ConvergenceWarning,
    MeasureError,
    MemberData,
    NotApplicable,
    PowerIteration,
    operator_norm,
    output_margins,
    pacbayes_sigma,
    power_iteration_norm,
    sharpness_alpha,
)
from gensight.measures.registry import (
    MEASURES,
    MIN_TAIL,
    SEARCH,
    Measure,
    PowerLawFit,
    available_measures,
    compute,
    get_measure,
    power_law_alpha,
    power_law_fit,
)
from gensight.measures.zoo import zoo_measures

__all__ = [
    "MEASURES", "MIN_TAIL", "SEARCH", "ConvergenceWarning", "Measure", "MeasureError",
    "MemberData", "NotApplicable", "PowerIteration", "PowerLawFit", "available_measures",
    "compute", "get_measure", "operator_norm", "output_margins", "pacbayes_sigma",
    "power_iteration_norm", "power_law_alpha", "power_law_fit", "sharpness_alpha",
    "zoo_measures",
]
