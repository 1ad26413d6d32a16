"""Metrics that score predictors of generalization.

Ranking metrics follow the PGDL competition (arXiv 2012.07976) and arXiv 1912.02178 Sec. 5:

- :func:`kendall_tau`: Kendall's rank correlation between a measure and a target, over pairs of
  distinct models: tau-b (as :func:`scipy.stats.kendalltau` and the NFN/NFT/UNF papers) by
  default, tau-a (arXiv 1912.02178, Eq. 3) on request.
- :func:`granulated_kendall_tau`: Psi, the mean over hyperparameters of the mean tau among
  models that differ only in that hyperparameter (arXiv 1912.02178, Eq. 4-5, with Eq. 3's tau).
- :func:`conditional_mutual_information`: the PGDL score (arXiv 2012.07976, Sec. 2).

Regression metrics for accuracy estimates: :func:`r2_score`, :func:`mean_absolute_error`.

``table`` arguments are :class:`pandas.DataFrame` objects with one row per model; the other
arguments name its columns.
"""

from gensight.metrics.ranking import (
    GranulatedTau,
    MetricError,
    conditional_mutual_information,
    granulated_kendall_tau,
    kendall_tau,
    mean_absolute_error,
    r2_score,
)

__all__ = [
    "GranulatedTau",
    "MetricError",
    "conditional_mutual_information",
    "granulated_kendall_tau",
    "kendall_tau",
    "mean_absolute_error",
    "r2_score",
]
