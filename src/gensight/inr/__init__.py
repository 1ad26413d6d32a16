"""Learning on implicit neural representations (SIREN zoos): classification and editing.

- :mod:`gensight.inr.classify`: NFN (HNP/NP), StatNN and flattened-weight MLP classifiers of
  SIRENs, trained on a SIREN zoo's train split, selected on val, scored on test
  (``gensight inr classify ZOO``).
- :mod:`gensight.inr.edit`: weight-space editing (a model outputs a weight delta so that the
  edited SIREN draws the edited image: dilation, contrast), NFN and MLP models
  (``gensight inr edit ZOO``).
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
from gensight.inr.edit import (
    EditMLP,
    EditNFN,
    contrast,
    dilate,
    figure_edits,
    load_edit_data,
    make_edit_model,
    run_edit,
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
    "EditMLP",
    "EditNFN",
    "contrast",
    "dilate",
    "figure_edits",
    "load_edit_data",
    "make_edit_model",
    "run_edit",
]
