"""Modules that act on every entry or every block of a `WeightBatch` independently.

Elementwise maps and per-block normalization commute with any permutation of neurons, so
they keep NF-Layer stacks equivariant.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from gensight.errors import ShapeMismatchError
from gensight.weightspace import WeightBatch, WeightSpace


class Elementwise(nn.Module):
    """Apply a tensor-to-tensor module or function (``nn.ReLU()``, ``nn.Dropout(0.1)``,
    ``torch.tanh``) to every weight and bias tensor."""

    def __init__(self, fn: nn.Module | Callable[[Tensor], Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, batch: WeightBatch) -> WeightBatch:
        return batch.map(self.fn)

    def extra_repr(self) -> str:
        return "" if isinstance(self.fn, nn.Module) else repr(self.fn)


class WeightSpaceNorm(nn.Module):
    """Normalize each block (one weight or bias tensor) per member and channel.

    For block ``X`` of shape ``(B, C, ...)``: ``gamma_c * (X - mean) / sqrt(var + eps) +
    beta_c`` with mean and variance taken over all entries of that member's channel. These
    statistics are invariant to any neuron permutation, so the module is equivariant. Blocks
    with a single entry per channel are only shifted by their mean (variance is zero).
    """

    def __init__(self, space: WeightSpace, channels: int, eps: float = 1e-5,
                 affine: bool = True):
        super().__init__()
        self.space = space
        self.channels = channels
        self.eps = eps
        n_blocks = 2 * space.n_layers
        self.weight = nn.Parameter(torch.ones(n_blocks, channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(n_blocks, channels)) if affine else None

    def forward(self, batch: WeightBatch) -> WeightBatch:
        if batch.channels != self.channels:
            raise ShapeMismatchError(
                f"WeightSpaceNorm expects {self.channels} channels; the batch has "
                f"{batch.channels}"
            )
        out = []
        for k, x in enumerate(batch.tensors()):
            dims = tuple(range(2, x.dim()))
            var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=0)
            y = (x - mean) * torch.rsqrt(var + self.eps)
            if self.weight is not None:
                shape = (1, self.channels) + (1,) * len(dims)
                y = y * self.weight[k].view(shape) + self.bias[k].view(shape)
            out.append(y)
        n = self.space.n_layers
        return WeightBatch(batch.space, out[:n], out[n:], check_finite=False)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, eps={self.eps}, affine={self.weight is not None}"
