"""Permutation-equivariant neural functionals: NF-Layers (arXiv 2302.14040), NFT weight-space
attention (arXiv 2305.13546) and UNF layers for any permutation spec (arXiv 2402.05232).

Layers map a :class:`~gensight.weightspace.WeightBatch` to a ``WeightBatch`` (equivariant)
or to a tensor (invariant pools), and compose like ``torch.nn`` layers.
"""

from gensight.nf.attention import (
    BlockPointwise,
    ChannelLayerNorm,
    CrossAttentionPool,
    LearnedPositionEmbedding,
    NFTAttention,
    NFTBlock,
    WeightTokens,
)
from gensight.nf.inr_blocks import (
    ChannelDropout,
    GaussianFourierFeatures,
    IOSinusoidalEncoding,
    LearnedScale,
    make_inr_classifier,
)
from gensight.nf.layers import HNPLinear, NPLinear, num_parameters
from gensight.nf.layout import Block, Layout
from gensight.nf.models import InvariantDeepSets, InvariantNFN, InvariantNFT
from gensight.nf.pointwise import Elementwise, WeightSpaceNorm
from gensight.nf.pooling import HNPPool, NPPool
from gensight.nf.unf import (
    Gated,
    InvariantUNF,
    PermSpec,
    Split,
    UNFLinear,
    UNFPool,
    unf_bias_counts,
    unf_term_counts,
)
from gensight.nf.unf_trace import PermSpecTraceError, perm_spec

__all__ = [
    "Block",
    "BlockPointwise",
    "ChannelDropout",
    "ChannelLayerNorm",
    "CrossAttentionPool",
    "Elementwise",
    "GaussianFourierFeatures",
    "Gated",
    "Split",
    "HNPLinear",
    "HNPPool",
    "InvariantDeepSets",
    "InvariantNFN",
    "InvariantNFT",
    "InvariantUNF",
    "IOSinusoidalEncoding",
    "Layout",
    "LearnedPositionEmbedding",
    "LearnedScale",
    "make_inr_classifier",
    "NFTAttention",
    "NFTBlock",
    "NPLinear",
    "NPPool",
    "num_parameters",
    "perm_spec",
    "PermSpec",
    "PermSpecTraceError",
    "unf_bias_counts",
    "unf_term_counts",
    "UNFLinear",
    "UNFPool",
    "WeightSpaceNorm",
    "WeightTokens",
]
