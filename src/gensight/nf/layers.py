"""NF-Layers: the maximal linear layers on weight space equivariant to neuron permutations.

arXiv 2302.14040 (Zhou et al., "Permutation Equivariant Neural Functionals"), Sec. 2 and
Appendix: an NF-Layer ``H: W -> W'`` is affine and satisfies ``H(s W) = s H(W)`` for every
``s`` in the symmetry group. Its parameter-sharing pattern follows from the orbits of the group
on pairs (output entry, input entry). For a product of symmetric groups acting on blocks with
at most one axis per neuron layer, each pair of blocks (output O, input I) contributes one
channel-mixing matrix for every subset T of the neuron layers they share: the input is
averaged over its permuted axes outside T and broadcast over the output's permuted axes
outside T. Concretely, for weight output ``W'(i)_{jk}`` (NP group, channels and filters
mixed by the learned matrices):

- ``W(i)_{jk}``                                 (T = {i, i-1}: pointwise),
- ``W(i)_{j*}, v(i)_j, W(i+1)_{*j}``            (T = {i}: features of neuron j of layer i),
- ``W(i)_{*k}, v(i-1)_k, W(i-1)_{k*}``          (T = {i-1}: features of neuron k of layer i-1),
- ``W(s)_{**}, v(s)_*`` for every layer s       (T = {}: invariant features),
- a bias,

and for bias outputs ``v'(i)_j`` the terms with T = {i} and T = {} (``*`` is the mean over a
permuted axis). Under HNP the input and output neurons are fixed: their axes become channels,
which gives the paper's HNP layer (e.g. ``W(1)`` is a per-hidden-neuron feature of
``C * n_0`` channels, so the layer grows as ``O((L + n_0 + n_L)^2 C^2)``).

The implementation groups terms by the neuron layer they are indexed by: for each permuted
neuron layer l the features of its neurons are gathered from every block touching l and mixed
by one matrix; all invariant features are mixed by one matrix; weights whose both axes are
permuted get a pointwise matrix. This is exactly the maximal layer with no redundant
parameter (see :func:`num_parameters`), computed with ``2 + (#permuted layers)`` matrix
products plus one per doubly-permuted weight.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensight.errors import GensightError, ShapeMismatchError
from gensight.nf.layout import Block, Layout
from gensight.weightspace import Symmetry, WeightBatch, WeightSpace


class _EquivariantLinear(nn.Module):
    """Shared machinery of :class:`HNPLinear` and :class:`NPLinear`."""

    def __init__(self, space: WeightSpace, in_channels: int, out_channels: int,
                 symmetry: Symmetry):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise GensightError(
                f"channels must be positive; got in_channels={in_channels}, "
                f"out_channels={out_channels}"
            )
        self.space = space
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.layout = layout = Layout(space, symmetry)
        ci, co = in_channels, out_channels
        # Offsets of each block's features inside the global and per-neuron feature vectors.
        self._global_slices = _offsets([b.fixed_size * co for b in layout.blocks])
        self._neuron_slices = {
            n: dict(zip((b.name for b in blocks),
                        _offsets([b.fixed_size * co for b in blocks]), strict=True))
            for n, blocks in layout.neuron_blocks.items()
        }
        self.pointwise = nn.ParameterDict({
            b.name: nn.Parameter(torch.empty(b.fixed_size * co, b.fixed_size * ci))
            for b in layout.blocks if b.row_perm and b.col_perm
        })
        self.neuron_mix = nn.ParameterDict({
            str(n): nn.Parameter(torch.empty(layout.neuron_size(n) * co,
                                             layout.neuron_size(n) * ci))
            for n in layout.permuted
        })
        self.global_mix = nn.Parameter(torch.empty(layout.global_size * co,
                                                   layout.global_size * ci))
        self.bias = nn.Parameter(torch.empty(layout.global_size * co))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) per output block, where fan_in counts all
        the inputs of every term that writes the block (PyTorch's Linear default, applied to
        the concatenated inputs)."""
        ci = self.in_channels
        layout = self.layout
        for block, gsl in zip(layout.blocks, self._global_slices, strict=True):
            fan_in = layout.global_size * ci
            fan_in += sum(layout.neuron_size(n) * ci for n in block.perm_layers)
            if block.name in self.pointwise:
                fan_in += block.fixed_size * ci
            bound = 1.0 / math.sqrt(fan_in)
            with torch.no_grad():
                self.global_mix[gsl].uniform_(-bound, bound)
                self.bias[gsl].uniform_(-bound, bound)
                for n in block.perm_layers:
                    self.neuron_mix[str(n)][self._neuron_slices[n][block.name]].uniform_(
                        -bound, bound)
                if block.name in self.pointwise:
                    self.pointwise[block.name].uniform_(-bound, bound)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"neurons={self.space.neurons}, symmetry={self.layout.symmetry!r}")

    def _embed(self, batch: WeightBatch) -> WeightBatch:
        return batch

    def forward(self, batch: WeightBatch) -> WeightBatch:
        """``(B, C_in, ...)`` weight-space features -> ``(B, C_out, ...)``."""
        if batch.channels != self.in_channels:
            raise ShapeMismatchError(
                f"{type(self).__name__} expects {self.in_channels} input channels; the batch "
                f"has {batch.channels}"
            )
        layout = self.layout
        canon = layout.canonical(self._embed(batch))
        pooled: dict[str, dict[int, Tensor]] = {}  # block name -> {neuron layer: features}
        glob_in = []
        for k, (block, x) in enumerate(zip(layout.blocks, canon, strict=True)):
            pooled[block.name], canon[k] = block.pool_neurons(x)
            if block.row_perm and block.col_perm:  # global mean from the row means
                glob_in.append(pooled[block.name][block.row_layer].mean(-1))
            else:
                glob_in.append(block.pool_all(x))
        glob = F.linear(torch.cat(glob_in, 1), self.global_mix, self.bias)
        neuron_out = {}
        for n, blocks in layout.neuron_blocks.items():
            feats = torch.cat([pooled[b.name][n] for b in blocks], 1)
            neuron_out[n] = channel_mix(self.neuron_mix[str(n)], feats)  # (B, D_out, n_l)

        out: list[Tensor] = []
        for block, x, gsl in zip(layout.blocks, canon, self._global_slices, strict=True):
            out.append(self._block_output(block, x, neuron_out, glob[:, gsl]))
        return layout.to_batch(out, self.out_channels)

    def _block_output(self, block: Block, x: Tensor, neuron_out: dict[int, Tensor],
                      glob: Tensor) -> Tensor:
        def part(n: int) -> Tensor:
            return neuron_out[n][:, self._neuron_slices[n][block.name]]

        if block.row_perm and block.col_perm:
            return PointwiseBroadcast.apply(
                x, self.pointwise[block.name], part(block.row_layer) + glob.unsqueeze(-1),
                part(block.col_layer))
        if block.perm_layers:
            return part(block.perm_layers[0]) + glob.unsqueeze(-1)
        return glob


def channel_mix(weight: Tensor, x: Tensor) -> Tensor:
    """``weight @ x`` over the channel axis: ``weight: (F_out, F_in)``,
    ``x: (B, F_in, *rest)`` -> ``(B, F_out, *rest)``.

    There are two ways to run it, chosen by cost. A batched matmul with the weight expanded
    over the batch copies nothing. On the CPU it is several times faster than
    ``torch.matmul``'s fold-and-transpose path or a 1x1 conv, but its backward materializes a
    ``(B, F_out, F_in)`` weight gradient. Folding the batch into one GEMM copies the
    activations instead. The cheaper of the two is used.
    """
    b, f_in, *rest = x.shape
    f_out = weight.shape[0]
    x3 = x.reshape(b, f_in, -1)
    n = x3.shape[-1]
    if f_out * f_in <= (f_in + f_out) * n:
        y = torch.bmm(weight.expand(b, -1, -1), x3)
    else:
        y = (weight @ x3.transpose(0, 1).reshape(f_in, b * n)).view(f_out, b, n)
        y = y.transpose(0, 1).contiguous()
    return y.view(b, f_out, *rest)


class PointwiseBroadcast(torch.autograd.Function):
    """``y[b,o,j,k] = sum_i P[o,i] x[b,i,j,k] + R[b,o,j] + C[b,o,k]``: the pointwise term of
    a doubly-permuted block plus its row- and column-broadcast terms, in one pass.

    ``x: (B, F_in, n_r, n_c)``, ``P: (F_out, F_in)``, ``R: (B, F_out, n_r)``,
    ``C: (B, F_out, n_c)``. The broadcasts are added in place into the product, and the
    backward is written out so no full-size temporaries are made besides the gradients.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        b, f_in, n_r, n_c = x.shape
        x3 = x.reshape(b, f_in, n_r * n_c)
        y = torch.bmm(weight.expand(b, -1, -1), x3).view(b, weight.shape[0], n_r, n_c)
        y += rows.unsqueeze(-1)
        y += cols.unsqueeze(-2)
        ctx.save_for_backward(x3, weight)
        ctx.x_shape = x.shape
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x3, weight = ctx.saved_tensors
        b, _, n_r, n_c = ctx.x_shape
        grad = grad.contiguous()
        g3 = grad.view(b, -1, n_r * n_c)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.bmm(weight.t().expand(b, -1, -1), g3).view(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            grad_w = torch.bmm(g3, x3.transpose(1, 2)).sum(0)
        return grad_x, grad_w, grad.sum(-1), grad.sum(-2)


class HNPLinear(_EquivariantLinear):
    """NF-Layer equivariant to hidden-neuron permutations (HNP), arXiv 2302.14040.

    Input and output neurons are not permuted, so terms may depend on their identity; this is
    the most expressive layer that respects the symmetry under which a network's function is
    invariant. Shapes: a :class:`~gensight.weightspace.WeightBatch` with ``in_channels``
    channels (``(B, C_in, n_out, n_in, *filter)`` weights) maps to one with ``out_channels``.

    Example:
        >>> from torch import nn
        >>> from gensight.weightspace import WeightBatch
        >>> net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
        >>> batch = WeightBatch.from_modules([net, net])
        >>> layer = HNPLinear(batch.space, in_channels=1, out_channels=4)
        >>> layer(batch).weights[0].shape
        torch.Size([2, 4, 5, 3])
    """

    def __init__(self, space: WeightSpace, in_channels: int, out_channels: int):
        super().__init__(space, in_channels, out_channels, "hnp")

    @staticmethod
    def num_parameters(space: WeightSpace, in_channels: int, out_channels: int) -> int:
        return num_parameters(space, in_channels, out_channels, "hnp")


class NPLinear(_EquivariantLinear):
    """NF-Layer equivariant to all neuron permutations (NP), arXiv 2302.14040 Eq. 4.

    Its parameter count grows as ``O(L^2 C^2)`` and does not depend on layer widths. With
    ``io_embed=True`` learned position encodings of the input neurons (added to ``W(1)``) and
    of the output neurons (added to ``W(L)`` and ``v(L)``) break the symmetry of the input and
    output neurons (the paper's NFN_NP with IO-encoding); the layer is then equivariant to HNP
    only.
    """

    def __init__(self, space: WeightSpace, in_channels: int, out_channels: int,
                 io_embed: bool = False):
        super().__init__(space, in_channels, out_channels, "np")
        self.io_embed = io_embed
        if io_embed:
            first, last = space.layers[0], space.layers[-1]
            # (C, 1, n_0, *filter) added to W(1); (C, n_L, 1, *filter) to W(L); (C, n_L) to v(L)
            self.in_embed = nn.Parameter(torch.randn(in_channels, 1, first.n_in,
                                                     *first.filter_shape))
            self.out_embed = nn.Parameter(torch.randn(in_channels, last.n_out, 1,
                                                      *last.filter_shape))
            self.out_bias_embed = nn.Parameter(torch.randn(in_channels, last.n_out))

    def _embed(self, batch: WeightBatch) -> WeightBatch:
        if not self.io_embed:
            return batch
        weights = list(batch.weights)
        biases = list(batch.biases)
        weights[0] = weights[0] + self.in_embed
        weights[-1] = weights[-1] + self.out_embed
        biases[-1] = biases[-1] + self.out_bias_embed
        return WeightBatch(batch.space, weights, biases, check_finite=False)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", io_embed={self.io_embed}"

    @staticmethod
    def num_parameters(space: WeightSpace, in_channels: int, out_channels: int,
                       io_embed: bool = False) -> int:
        n = num_parameters(space, in_channels, out_channels, "np")
        if io_embed:
            first, last = space.layers[0], space.layers[-1]
            n += in_channels * (first.n_in * first.filter_size
                                + last.n_out * last.filter_size + last.n_out)
        return n


def num_parameters(space: WeightSpace, in_channels: int, out_channels: int,
                   symmetry: Symmetry) -> int:
    """Number of free parameters of the maximal equivariant affine layer on ``space``.

    With ``f_i`` the filter size of layer i, ``c = in_channels * out_channels`` and channels
    and filters mixed freely, the count is ``c * (sum_pw F^2 + sum_l D_l^2 + G^2) + G *
    out_channels``, where ``F`` is a doubly-permuted weight's fixed size, ``D_l`` the features
    per neuron of permuted layer l and ``G`` the invariant features. For an NP layer on an MLP
    (all ``f_i = 1``) this is ``c * (4 L^2 + 10 L - 4) + 2 L * out_channels``.
    """
    layout = Layout(space, symmetry)
    c = in_channels * out_channels
    pointwise = sum(b.fixed_size ** 2 for b in layout.blocks if b.row_perm and b.col_perm)
    neuron = sum(layout.neuron_size(n) ** 2 for n in layout.permuted)
    return c * (pointwise + neuron + layout.global_size ** 2) + \
        layout.global_size * out_channels


def _offsets(sizes: list[int]) -> list[slice]:
    out, start = [], 0
    for s in sizes:
        out.append(slice(start, start + s))
        start += s
    return out
