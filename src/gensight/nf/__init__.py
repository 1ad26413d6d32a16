"""NF-Layers and models: permutation-equivariant neural functionals (arXiv 2302.14040).

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
from gensight.nf.models import InvariantNFN, InvariantNFT
from gensight.nf.pointwise import Elementwise, WeightSpaceNorm
from gensight.nf.pooling import HNPPool, NPPool

__all__ = [
    "BlockPointwise",
    "ChannelLayerNorm",
    "CrossAttentionPool",
    "LearnedPositionEmbedding",
    "NFTAttention",
    "NFTBlock",
    "WeightTokens",
    "Block",
    "ChannelDropout",
    "Elementwise",
    "GaussianFourierFeatures",
    "HNPLinear",
    "HNPPool",
    "IOSinusoidalEncoding",
    "InvariantNFN",
    "InvariantNFT",
    "LearnedScale",
    "Layout",
    "NPLinear",
    "NPPool",
    "WeightSpaceNorm",
    "make_inr_classifier",
    "num_parameters",
]
