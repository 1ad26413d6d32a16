"""Learning on implicit neural representations (SIREN zoos): classification and editing.

- :mod:`gensight.inr.classify`: Inr2Array, NFT, NFN (HNP/NP), StatNN and flattened-weight MLP
  classifiers of SIRENs, trained on a SIREN zoo's train split, selected on val, scored on test
  (``gensight inr classify ZOO``).
- :mod:`gensight.inr.inr2array`: the Inr2Array autoencoder (NFT encoder to a
  permutation-invariant latent array, per-latent SIREN decoder with spatial tiling) and its
  latent classifier (arXiv 2305.13546).
- :mod:`gensight.inr.edit`: weight-space editing (a model outputs a weight delta so that the
  edited SIREN draws the edited image: dilation, contrast), NFN and MLP models
  (``gensight inr edit ZOO``).
"""

from gensight.inr.classify import (
    METHODS,
    ClassifyResult,
    FlatMLPClassifier,
    Inr2ArrayClassifier,
    INRClassifier,
    INRClassifyError,
    INRData,
    NFNClassifier,
    NFTClassifier,
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
    EditNFT,
    contrast,
    dilate,
    figure_edits,
    load_edit_data,
    make_edit_model,
    run_edit,
)
from gensight.inr.inr2array import (
    Inr2Array,
    Inr2ArrayError,
    LatentTransformer,
    fit_inr2array,
    reconstruction_mse,
    tile_index,
)

__all__ = [
    "METHODS",
    "ClassifyResult",
    "FlatMLPClassifier",
    "INRClassifier",
    "INRClassifyError",
    "INRData",
    "Inr2Array",
    "Inr2ArrayClassifier",
    "Inr2ArrayError",
    "LatentTransformer",
    "NFNClassifier",
    "NFTClassifier",
    "StatNNClassifier",
    "TensorStandardizer",
    "classify_zoo",
    "fit_inr2array",
    "reconstruction_mse",
    "tile_index",
    "load_inr_data",
    "make_classifier",
    "split_rows",
    "EditMLP",
    "EditNFN",
    "EditNFT",
    "contrast",
    "dilate",
    "figure_edits",
    "load_edit_data",
    "make_edit_model",
    "run_edit",
]
