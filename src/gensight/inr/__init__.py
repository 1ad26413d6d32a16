"""Learning on implicit neural representations (SIREN zoos): classification by weights.

- :mod:`gensight.inr.classify`: NFN (HNP/NP), StatNN and flattened-weight MLP classifiers of
  SIRENs, trained on a SIREN zoo's train split, selected on val, scored on test
  (``gensight inr classify ZOO``).
"""

from gensight.inr.classify import (
    METHODS,
    ClassifyResult,
    FlatMLPClassifier,
    INRClassifier,
    INRClassifyError,
    INRData,
    NFNClassifier,
    StatNNClassifier,
    TensorStandardizer,
    classify_zoo,
    load_inr_data,
    make_classifier,
    split_rows,
)

__all__ = [
    "METHODS",
    "ClassifyResult",
    "FlatMLPClassifier",
    "INRClassifier",
    "INRClassifyError",
    "INRData",
    "NFNClassifier",
    "StatNNClassifier",
    "TensorStandardizer",
    "classify_zoo",
    "load_inr_data",
    "make_classifier",
    "split_rows",
]
