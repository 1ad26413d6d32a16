"""Invariant pooling: weight-space features -> a vector unchanged by neuron permutations.

arXiv 2302.14040, Eq. 5 (NP) and its HNP counterpart: every block is reduced over its
permuted axes; axes that the group leaves fixed (filters, and under HNP the input and output
neurons) are kept as features.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gensight.errors import ShapeMismatchError
from gensight.nf.layout import Layout
from gensight.weightspace import Symmetry, WeightBatch, WeightSpace

AGGREGATIONS = ("mean", "sum", "max")


class _Pool(nn.Module):
    def __init__(self, space: WeightSpace, symmetry: Symmetry, agg: str = "mean"):
        super().__init__()
        if agg not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {agg!r}; expected one of {AGGREGATIONS}")
        self.space = space
        self.agg = agg
        self.layout = Layout(space, symmetry)

    def out_features(self, channels: int) -> int:
        """Width of the pooled vector for inputs with ``channels`` channels."""
        return channels * self.layout.global_size

    def forward(self, batch: WeightBatch) -> Tensor:
        """``WeightBatch`` with C channels -> ``(B, out_features(C))``.

        Features are ordered block by block (W1, v1, W2, v2, ...), channel-major within a
        block.
        """
        if batch.space != self.space:
            raise ShapeMismatchError(
                f"{type(self).__name__} built for {self.space!r} got a batch of {batch.space!r}"
            )
        canon = self.layout.canonical(batch)
        return torch.cat(
            [b.pool_all(x, self.agg) for b, x in zip(self.layout.blocks, canon, strict=True)], 1
        )

    def extra_repr(self) -> str:
        return f"neurons={self.space.neurons}, agg={self.agg!r}"


class HNPPool(_Pool):
    """Pooling invariant to hidden-neuron permutations. Keeps input-neuron features of ``W(1)``,
    output-neuron features of ``W(L)`` and the output bias ``v(L)``."""

    def __init__(self, space: WeightSpace, agg: str = "mean"):
        super().__init__(space, "hnp", agg)


class NPPool(_Pool):
    """Pooling invariant to all neuron permutations: one vector per channel and filter
    position of each block."""

    def __init__(self, space: WeightSpace, agg: str = "mean"):
        super().__init__(space, "np", agg)
