"""Ready-made neural functionals built from NF-Layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gensight.errors import GensightError, ShapeMismatchError
from gensight.nf.layers import HNPLinear, NPLinear
from gensight.nf.pointwise import Elementwise, WeightSpaceNorm
from gensight.nf.pooling import HNPPool, NPPool
from gensight.weightspace import Symmetry, WeightBatch, WeightSpace


def mlp_head(width: int, hidden: Sequence[int], out_features: int,
             activation: type[nn.Module] = nn.ReLU, dropout: float = 0.0) -> nn.Sequential:
    """``Linear -> activation (-> Dropout)`` per width in ``hidden``, then ``Linear`` to
    ``out_features``: the head of the invariant models."""
    head: list[nn.Module] = []
    for h in hidden:
        head += [nn.Linear(width, h), activation()]
        if dropout:
            head.append(nn.Dropout(dropout))
        width = h
    head.append(nn.Linear(width, out_features))
    return nn.Sequential(*head)


class _Invariant(nn.Module):
    """``encoder -> pool -> head``; :meth:`embed` is the pooled invariant representation."""

    encoder: nn.Module
    pool: nn.Module
    head: nn.Module

    def embed(self, batch: WeightBatch) -> Tensor:
        """The pooled invariant representation ``(B, width of the pool's output)``."""
        return self.pool(self.encoder(batch))

    def forward(self, batch: WeightBatch) -> Tensor:
        return self.head(self.embed(batch))


class InvariantNFN(_Invariant):
    """A permutation-invariant network on weights: NF-Layers -> invariant pool -> MLP head.

    The architecture of the paper's generalization predictor (arXiv 2302.14040, Sec. 3.1):
    a stack of equivariant NF-Layers (HNP or NP) with pointwise nonlinearities, invariant
    pooling, and a fully connected head.

    Args:
        space: weight space of the input networks.
        symmetry: ``"hnp"`` (HNPLinear + HNPPool) or ``"np"`` (NPLinear + NPPool).
        channels: output channels of each NF-Layer.
        in_channels: channels of the input batch (1 for raw weights).
        out_features: width of the output.
        head_hidden: hidden widths of the MLP head.
        io_embed: NP only: learned input/output position encodings in the first NF-Layer
            (``True`` or ``"first"``) or in every NF-Layer (``"all"``, the configuration of
            the authors' NP generalization predictor).
        pool: ``"hnp"`` or ``"np"`` invariant pool (default: the one of ``symmetry``; the
            authors' NP generalization predictor pools with HNP, which IO-encoding allows).
        norm: insert :class:`WeightSpaceNorm` after each NF-Layer.
        dropout: dropout in the head.

    ``forward``: ``WeightBatch (B, in_channels, ...)`` -> ``(B, out_features)``.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> batch = WeightBatch.from_modules([net])
        >>> model = InvariantNFN(batch.space, channels=(8, 8), out_features=1)
        >>> model(batch).shape
        torch.Size([1, 1])
    """

    def __init__(
        self,
        space: WeightSpace,
        *,
        symmetry: Symmetry = "hnp",
        channels: Sequence[int] = (16, 16, 16),
        in_channels: int = 1,
        out_features: int = 1,
        head_hidden: Sequence[int] = (256,),
        agg: str = "mean",
        activation: type[nn.Module] = nn.ReLU,
        io_embed: bool | str = False,
        norm: bool = False,
        dropout: float = 0.0,
        pool: str | None = None,
    ):
        super().__init__()
        if symmetry not in ("hnp", "np"):
            raise GensightError(f"unknown symmetry {symmetry!r}; expected 'hnp' or 'np'")
        if io_embed not in (False, True, "first", "all"):
            raise GensightError(f"io_embed must be False, True, 'first' or 'all', got "
                                f"{io_embed!r}")
        if io_embed and symmetry != "np":
            raise GensightError("io_embed applies to symmetry='np' only")
        pool = symmetry if pool is None else pool
        if pool not in ("hnp", "np"):
            raise GensightError(f"unknown pool {pool!r}; expected 'hnp' or 'np'")
        if not channels:
            raise GensightError("InvariantNFN needs at least one NF-Layer (channels is empty)")
        self.space = space
        self.symmetry = symmetry
        blocks: list[nn.Module] = []
        c_prev = in_channels
        for k, c in enumerate(channels):
            if symmetry == "hnp":
                blocks.append(HNPLinear(space, c_prev, c))
            else:
                embed = io_embed == "all" or (bool(io_embed) and k == 0)
                blocks.append(NPLinear(space, c_prev, c, io_embed=embed))
            if norm:
                blocks.append(WeightSpaceNorm(space, c))
            blocks.append(Elementwise(activation()))
            c_prev = c
        self.encoder = nn.Sequential(*blocks)
        self.pool = HNPPool(space, agg) if pool == "hnp" else NPPool(space, agg)
        self.head = mlp_head(self.pool.out_features(c_prev), head_hidden, out_features,
                             activation, dropout)


class InvariantNFT(_Invariant):
    """A permutation-invariant neural functional Transformer: the NFT counterpart of
    :class:`InvariantNFN`, with the same interface (arXiv 2305.13546, Sec. 3 and 5).

    ``input`` (``BlockPointwise(in_channels, C)``, or Gaussian Fourier features of
    ``C / 2`` frequencies when ``fourier_scale`` is set) -> ``LearnedPositionEmbedding`` (HNP
    only: tells the input and output neurons apart) -> ``blocks`` pre-norm
    :class:`~gensight.nf.NFTBlock` s -> a final :class:`~gensight.nf.ChannelLayerNorm` ->
    ``pool`` -> MLP ``head``. ``pool="mean"`` is the NF-Layers' invariant pool
    (:class:`HNPPool` or :class:`NPPool`); ``pool="attention"`` is the Inr2Array
    cross-attention pool to ``num_latents`` latents of C channels, flattened.

    The authors did not publish their NFT generalization predictor (their experiments' config
    references a class missing from the public code); this composition of the paper's layers
    is ours, and follows the Inr2Array encoder and the NFN predictor's head.

    Args:
        space: weight space of the input networks.
        symmetry: ``"hnp"`` (invariant to hidden-neuron permutations, the networks' own
            symmetry) or ``"np"`` (also to input/output permutations: no position embedding,
            NP pool).
        channels, blocks, heads, ff_factor, dropout: width (C), depth and the NFT blocks'
            settings.
        share_projections: see :class:`~gensight.nf.NFTAttention` (``None``: automatic).

    ``forward``: ``WeightBatch (B, in_channels, ...)`` -> ``(B, out_features)``.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> batch = WeightBatch.from_modules([net])
        >>> model = InvariantNFT(batch.space, channels=8, heads=2, blocks=1)
        >>> model(batch).shape
        torch.Size([1, 1])
    """

    def __init__(
        self,
        space: WeightSpace,
        *,
        symmetry: Symmetry = "hnp",
        channels: int = 32,
        blocks: int = 2,
        heads: int = 4,
        ff_factor: int = 2,
        dropout: float = 0.1,
        in_channels: int = 1,
        out_features: int = 1,
        head_hidden: Sequence[int] = (256,),
        fourier_scale: float | None = None,
        pool: str = "mean",
        num_latents: int = 4,
        share_projections: bool | None = None,
    ):
        from gensight.nf.attention import (
            BlockPointwise,
            ChannelLayerNorm,
            CrossAttentionPool,
            LearnedPositionEmbedding,
            NFTBlock,
        )
        from gensight.nf.inr_blocks import GaussianFourierFeatures

        super().__init__()
        if symmetry not in ("hnp", "np"):
            raise GensightError(f"unknown symmetry {symmetry!r}; expected 'hnp' or 'np'")
        if pool not in ("mean", "attention"):
            raise GensightError(f"unknown pool {pool!r}; expected 'mean' or 'attention'")
        if not isinstance(blocks, int) or blocks < 1:
            raise GensightError(f"InvariantNFT needs at least one NFT block; got {blocks!r}")
        if fourier_scale is not None and channels % 2:
            raise GensightError(f"Fourier features give an even number of channels; got "
                                f"channels={channels}")
        self.space = space
        self.symmetry = symmetry
        stem: list[nn.Module] = [
            GaussianFourierFeatures(in_channels, channels // 2, fourier_scale)
            if fourier_scale is not None else BlockPointwise(space, in_channels, channels)]
        if symmetry == "hnp":
            stem.append(LearnedPositionEmbedding(space, channels))
        body = [NFTBlock(space, channels, ff_factor=ff_factor, heads=heads, dropout=dropout,
                         share_projections=share_projections) for _ in range(blocks)]
        self.encoder = nn.Sequential(*stem, *body, ChannelLayerNorm(space, channels))
        if pool == "attention":
            self.pool = nn.Sequential(CrossAttentionPool(channels, num_latents), nn.Flatten())
            width = num_latents * channels
        else:
            self.pool = HNPPool(space) if symmetry == "hnp" else NPPool(space)
            width = self.pool.out_features(channels)
        self.head = mlp_head(width, head_hidden, out_features, nn.ReLU, dropout)


class InvariantDeepSets(_Invariant):
    """The Deep Sets baseline of the UNF paper (arXiv 2402.05232): every weight and bias
    tensor is a *set* of scalars. A per-tensor ``phi`` MLP (``1 -> channels...``, ReLU) maps
    each entry, the mean over the tensor's entries pools it, and the per-tensor vectors are
    concatenated into an MLP head. Invariant to any permutation of the entries within each
    tensor (a much larger group than the neuron permutations, so it cannot see how weights
    connect).

    ``forward``: ``WeightBatch (B, 1, ...)`` (or a ``ParamBatch`` for a model built on a
    :class:`~gensight.weightspace.ParamSpace`: any network) -> ``(B, out_features)``.
    """

    def __init__(self, space, *, channels: Sequence[int] = (32, 32),
                 out_features: int = 1, head_hidden: Sequence[int] = (256,),
                 dropout: float = 0.0):
        super().__init__()
        if not channels:
            raise GensightError("InvariantDeepSets needs at least one phi layer (channels is "
                                "empty)")
        self.space = space
        n_tensors = len(space.shapes) if hasattr(space, "spec_for") else 2 * space.n_layers

        def phi() -> nn.Sequential:
            layers: list[nn.Module] = []
            width = 1
            for c in channels:
                layers += [nn.Linear(width, c), nn.ReLU()]
                width = c
            return nn.Sequential(*layers)

        self.phis = nn.ModuleList(phi() for _ in range(n_tensors))
        self.head = mlp_head(n_tensors * channels[-1], head_hidden, out_features, nn.ReLU,
                             dropout)

    def embed(self, batch: WeightBatch) -> Tensor:
        """Per-tensor means of ``phi`` over the entries, concatenated: ``(B, 2L *
        channels[-1])``."""
        if batch.space != self.space:
            raise ShapeMismatchError(f"InvariantDeepSets built for {self.space!r} got a batch "
                                     f"of {batch.space!r}")
        if batch.channels != 1:
            raise ShapeMismatchError(f"InvariantDeepSets takes raw weights (1 channel); the "
                                     f"batch has {batch.channels}")
        feats = []
        tensors = batch.tensors() if hasattr(batch, "params") else (*batch.weights,
                                                                    *batch.biases)
        for phi, t in zip(self.phis, tensors, strict=True):
            entries = t.reshape(t.shape[0], -1, 1)             # (B, entries, 1)
            feats.append(phi(entries).mean(1))
        return torch.cat(feats, 1)
