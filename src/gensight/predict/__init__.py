"""Predictors of generalization with one interface, and the code that scores them.

Every predictor has ``fit(split)`` and ``predict(split) -> numpy array`` of predicted test
accuracy, where ``split`` is a :class:`ZooSplit` (a zoo and a subset of its table's rows):

- :class:`StatNN` (arXiv 2002.11448): per-layer weight/bias statistics -> gradient boosting
  (``regressor="gbt"``) or an MLP head (``"mlp"``); :class:`StatNetPredictor`: the same
  statistics -> the NFN paper's StatNN MLP, trained as its NFN.
- :class:`NFNPredictor`: an HNP or NP :class:`~gensight.nf.InvariantNFN` trained with the
  recipe of arXiv 2302.14040 (BCE on accuracy in [0, 1], Adam), early stopping on a validation
  part of the training split, optional permutation augmentation; ``NFNPredictor.paper()`` is
  the paper's own setting (App. D.1: widths, head, batch 8, 50 epochs, best validation tau).
- :class:`NFTPredictor`: the same recipe with an :class:`~gensight.nf.InvariantNFT`
  (weight-space attention, arXiv 2305.13546).
- :class:`UNFPredictor`, :class:`DeepSetsPredictor`: the same recipe with an
  :class:`~gensight.nf.InvariantUNF` or the Deep Sets baseline (arXiv 2402.05232).
- :class:`MeasurePredictor`: one complexity measure, mapped to accuracy by a linear fit.
- :class:`MarginSignature` (arXiv 1810.00113): margin-distribution signatures -> linear
  regression to the gap.

:func:`split_zoo` makes a seeded train/test split (networks whose target is NaN are left
out, with a note; a missing or non-numeric target column, and networks with NaN/inf weights,
are refused by name); :func:`evaluate_predictors` fits and scores predictors side by side
(tau, granulated tau, CMI, R^2, MAE, time).
"""

from gensight.predict.predictors import (
    DeepSetsPredictor,
    MarginSignature,
    MeasurePredictor,
    NFNPredictor,
    NFTPredictor,
    PredictError,
    Predictor,
    StatNetPredictor,
    StatNN,
    UNFPredictor,
    ZooSplit,
    check_target,
    make_predictor,
    make_predictors,
    split_zoo,
    statnn_features,
)
from gensight.predict.scoring import evaluate_predictors, score_predictions

__all__ = [
    "DeepSetsPredictor", "MarginSignature", "MeasurePredictor", "NFNPredictor",
    "NFTPredictor", "PredictError", "Predictor", "StatNetPredictor", "StatNN",
    "UNFPredictor", "ZooSplit",
    "check_target", "evaluate_predictors", "make_predictor", "make_predictors",
    "score_predictions", "split_zoo", "statnn_features",
]
