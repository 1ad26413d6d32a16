"""How a weight space looks to a permutation group: which axes of which block are permuted.

Every weight ``W(i): (B, C, n_i, n_{i-1}, *filter)`` and bias ``v(i): (B, C, n_i)`` is a
*block*. Under a symmetry group (HNP or NP) each neuron axis of a block is either permuted or
fixed. Fixed axes (filter positions, and under HNP the input and output neurons) carry no
symmetry, so they are folded into the channel axis ("filters treated as channels", arXiv
2302.14040 Sec. 2.4). A block in *canonical form* is therefore

- ``(B, F, n_row, n_col)`` if both neuron axes are permuted,
- ``(B, F, n)`` if one is,
- ``(B, F)`` if none is,

with ``F = C * fixed_size``. NF-Layers and pools operate on canonical forms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from gensight.errors import ShapeMismatchError
from gensight.weightspace import Symmetry, WeightBatch, WeightSpace


@dataclass(frozen=True)
class Block:
    """One weight or bias tensor and how a symmetry acts on it."""

    name: str  # "W1", "v1", ... (1-based layer numbers as in the paper)
    layer: int  # 0-based index into WeightSpace.layers
    is_bias: bool
    n_row: int
    n_col: int  # 1 for biases
    filter_shape: tuple[int, ...]
    row_layer: int  # neuron layer indexed by the row axis
    col_layer: int | None  # neuron layer indexed by the column axis (None for biases)
    row_perm: bool
    col_perm: bool

    @property
    def perm_layers(self) -> tuple[int, ...]:
        out = []
        if self.row_perm:
            out.append(self.row_layer)
        if self.col_perm:
            assert self.col_layer is not None
            out.append(self.col_layer)
        return tuple(out)

    @property
    def fixed_size(self) -> int:
        """Entries per channel that no permutation moves (features per channel)."""
        size = math.prod(self.filter_shape)
        if not self.row_perm:
            size *= self.n_row
        if not self.is_bias and not self.col_perm:
            size *= self.n_col
        return size

    # --- canonical form --------------------------------------------------------------------
    def to_canonical(self, x: Tensor) -> Tensor:
        """``(B, C, n_row, n_col, *filter)`` or ``(B, C, n_row)`` -> canonical form."""
        b, c = x.shape[:2]
        if self.is_bias:
            return x if self.row_perm else x.reshape(b, -1)
        nf = len(self.filter_shape)
        filt = tuple(range(4, 4 + nf))
        if self.row_perm and self.col_perm:
            return x.permute(0, 1, *filt, 2, 3).reshape(b, -1, self.n_row, self.n_col)
        if self.row_perm:
            return x.permute(0, 1, 3, *filt, 2).reshape(b, -1, self.n_row)
        if self.col_perm:
            return x.permute(0, 1, 2, *filt, 3).reshape(b, -1, self.n_col)
        return x.reshape(b, -1)

    def from_canonical(self, y: Tensor, channels: int) -> Tensor:
        """Inverse of :meth:`to_canonical` for a canonical tensor with ``channels`` channels."""
        b = y.shape[0]
        if self.is_bias:
            return y if self.row_perm else y.reshape(b, channels, self.n_row)
        f = self.filter_shape
        nf = len(f)
        if self.row_perm and self.col_perm:
            y = y.reshape(b, channels, *f, self.n_row, self.n_col)
            return y.permute(0, 1, 2 + nf, 3 + nf, *range(2, 2 + nf))
        if self.row_perm:
            y = y.reshape(b, channels, self.n_col, *f, self.n_row)
            return y.permute(0, 1, 3 + nf, 2, *range(3, 3 + nf))
        if self.col_perm:
            y = y.reshape(b, channels, self.n_row, *f, self.n_col)
            return y.permute(0, 1, 2, 3 + nf, *range(3, 3 + nf))
        return y.reshape(b, channels, self.n_row, self.n_col, *f)

    def pool_all(self, x: Tensor, agg: str = "mean") -> Tensor:
        """Canonical ``x`` reduced over every permuted axis: ``(B, F)``."""
        dims = tuple(range(2, x.dim()))
        return _reduce(x, dims, agg) if dims else x

    def pool_neurons(self, x: Tensor) -> tuple[dict[int, Tensor], Tensor]:
        """Canonical ``x`` (mean) reduced to each permuted neuron axis, and ``x`` itself.

        Returns ``({layer: (B, F, n)}, x_alias)``. For a doubly-permuted block the row and
        column means come from one op that also passes ``x`` through: use the alias for any
        further use of ``x`` so that its gradient and the means' gradient are added in one
        pass.
        """
        if self.row_perm and self.col_perm:
            rows, cols, alias = RowColMean.apply(x)
            return {self.row_layer: rows, self.col_layer: cols}, alias
        return {layer: x for layer in self.perm_layers}, x


class RowColMean(torch.autograd.Function):
    """``x: (B, F, n_r, n_c) -> (x.mean(-1), x.mean(-2), x)`` with a fused backward."""

    @staticmethod
    def forward(ctx, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        ctx.shape = x.shape
        return x.mean(-1), x.mean(-2), x.view_as(x)

    @staticmethod
    def backward(ctx, g_rows: Tensor | None, g_cols: Tensor | None,
                 g_x: Tensor | None) -> Tensor:
        n_r, n_c = ctx.shape[-2:]
        # One fresh full-size tensor, then in-place broadcast adds into it.
        out = g_x.clone() if g_x is not None else g_rows.new_zeros(ctx.shape) \
            if g_rows is not None else g_cols.new_zeros(ctx.shape)
        if g_rows is not None:
            out += (g_rows / n_c).unsqueeze(-1)
        if g_cols is not None:
            out += (g_cols / n_r).unsqueeze(-2)
        return out


def _reduce(x: Tensor, dims: tuple[int, ...], agg: str) -> Tensor:
    if agg == "mean":
        return x.mean(dims)
    if agg == "sum":
        return x.sum(dims)
    if agg == "max":
        return x.amax(dims)
    raise ValueError(f"unknown aggregation {agg!r}; expected 'mean', 'sum' or 'max'")


class Layout:
    """The blocks of a weight space under a symmetry, and the features each neuron layer
    and the whole network see.

    ``neuron_blocks[l]`` lists the blocks that have neuron layer ``l`` as a permuted axis;
    pooled over their other permuted axis they give the per-neuron features of layer l.
    """

    def __init__(self, space: WeightSpace, symmetry: Symmetry):
        self.space = space
        self.symmetry = symmetry
        permuted = set(space.permuted_layers(symmetry))
        blocks: list[Block] = []
        for i, layer in enumerate(space.layers):
            row, col = i + 1, i
            blocks.append(Block(f"W{i + 1}", i, False, layer.n_out, layer.n_in,
                                layer.filter_shape, row, col, row in permuted, col in permuted))
            blocks.append(Block(f"v{i + 1}", i, True, layer.n_out, 1, (), row, None,
                                row in permuted, False))
        self.blocks: tuple[Block, ...] = tuple(blocks)
        self.permuted: tuple[int, ...] = tuple(sorted(permuted))
        self.neuron_blocks: dict[int, tuple[Block, ...]] = {
            n: tuple(b for b in blocks if n in b.perm_layers) for n in self.permuted
        }

    @cached_property
    def global_size(self) -> int:
        """Invariant features per channel (the width of ``pool_all`` over all blocks)."""
        return sum(b.fixed_size for b in self.blocks)

    def neuron_size(self, n: int) -> int:
        """Features per channel of each neuron of permuted layer ``n``."""
        return sum(b.fixed_size for b in self.neuron_blocks[n])

    def canonical(self, batch: WeightBatch) -> list[Tensor]:
        """Canonical forms of all blocks of ``batch`` (order of :attr:`blocks`)."""
        if batch.space != self.space:
            raise ShapeMismatchError(
                f"layer built for {self.space!r} got a batch of {batch.space!r}"
            )
        return [
            b.to_canonical(batch.biases[b.layer] if b.is_bias else batch.weights[b.layer])
            for b in self.blocks
        ]

    def to_batch(self, canon: list[Tensor], channels: int) -> WeightBatch:
        weights: list[Tensor] = []
        biases: list[Tensor] = []
        for block, y in zip(self.blocks, canon, strict=True):
            (biases if block.is_bias else weights).append(block.from_canonical(y, channels))
        return WeightBatch(self.space, weights, biases, check_finite=False)
