"""Ready-made neural functionals built from NF-Layers."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from gensight.errors import GensightError
from gensight.nf.layers import HNPLinear, NPLinear
from gensight.nf.pointwise import Elementwise, WeightSpaceNorm
from gensight.nf.pooling import HNPPool, NPPool
from gensight.weightspace import Symmetry, WeightBatch, WeightSpace


class InvariantNFN(nn.Module):
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
        io_embed: NP only: input/output position encodings in the first layer.
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
        io_embed: bool = False,
        norm: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if symmetry not in ("hnp", "np"):
            raise GensightError(f"unknown symmetry {symmetry!r}; expected 'hnp' or 'np'")
        if io_embed and symmetry != "np":
            raise GensightError("io_embed applies to symmetry='np' only")
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
                blocks.append(NPLinear(space, c_prev, c, io_embed=io_embed and k == 0))
            if norm:
                blocks.append(WeightSpaceNorm(space, c))
            blocks.append(Elementwise(activation()))
            c_prev = c
        self.encoder = nn.Sequential(*blocks)
        self.pool = HNPPool(space, agg) if symmetry == "hnp" else NPPool(space, agg)
        head: list[nn.Module] = []
        width = self.pool.out_features(c_prev)
        for h in head_hidden:
            head += [nn.Linear(width, h), activation()]
            if dropout:
                head.append(nn.Dropout(dropout))
            width = h
        head.append(nn.Linear(width, out_features))
        self.head = nn.Sequential(*head)

    def embed(self, batch: WeightBatch) -> Tensor:
        """The pooled invariant representation ``(B, pool.out_features(channels[-1]))``."""
        return self.pool(self.encoder(batch))

    def forward(self, batch: WeightBatch) -> Tensor:
        return self.head(self.embed(batch))
