"""Neural functional Transformers (NFT): weight-space attention and its building blocks.

arXiv 2305.13546 (Zhou et al., "Neural Functional Transformers", NeurIPS 2023), Sec. 3. An
NFT layer is self-attention that is equivariant to the neuron permutations of a weight space
(NP: every neuron layer, the input and output layers included) and to nothing more ("minimally
equivariant"). With the paper's notation, layer i has weights ``W(i): (n_i, n_{i-1})`` and bias
``v(i): (n_i,)``, neuron layers 0..L. Every entry carries a vector of C channels.

Layer semantics (the paper's Eq. 4-6 as the authors' reference code computes them):

- *Neighbourhood term*, one attention per neuron layer l = 0..L over the tokens that are
  indexed by a neuron of layer l's neighbours and are *vectors over the neurons of layer l*:
  the n_{l-1} columns of ``W(l)``, the bias ``v(l)`` and the n_{l+1} rows of ``W(l+1)``
  (``T_l = n_{l-1} + 1 + n_{l+1}`` tokens, each ``ch * n_l`` numbers per head). Permuting layer
  l permutes every token's entries the same way (dot products are unchanged, values move
  along); permuting layers l-1 and l+1 permutes the tokens (attention is equivariant to that).
- *Global term*: attention among the 2L per-block means of q, k and v (one token per weight
  and per bias tensor); the output token of a block is added to every entry of the block. The
  paper writes this head as attention over all weight coordinates; the authors' code (and
  this module) use the per-block means, which is cheaper and what their experiments ran.

Entry ``W(i)_{jk}`` of the output = [layer i, column token k]_j + [layer i-1, row token j]_k +
global(W(i)); ``v(i)_j`` = [layer i, bias token]_j + global(v(i)).

Conv weights ``(n_out, n_in, *filter)`` fold their filter taps into channels (``C * f``
features per entry, as the NF-Layers do). Shared q/k/v projections need the same channel count
everywhere, so conv spaces use one projection per tensor (``share_projections=False``) and
map the attention output back to ``C * f`` channels per conv weight ("unproject").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensight.errors import GensightError, ShapeMismatchError
from gensight.nf.inr_blocks import _check_space
from gensight.nf.layout import Layout
from gensight.weightspace import WeightBatch, WeightSpace

TERMS = ("global", "neighbour")


def _check_channels(module: str, batch: WeightBatch, channels: int) -> None:
    if batch.channels != channels:
        raise ShapeMismatchError(f"{module} expects {channels} channels; the batch has "
                                 f"{batch.channels}")


def _channel_linear(x: Tensor, lin: nn.Linear) -> Tensor:
    """``lin`` applied over axis 1 of ``x: (B, F, *rest)`` -> ``(B, out, *rest)``."""
    b, f = x.shape[:2]
    rest = x.shape[2:]
    w = lin.weight.expand(b, -1, -1)
    x = x.reshape(b, f, -1)
    # one batched GEMM with the bias fused (faster on CPU than a broadcast matmul + add)
    y = torch.bmm(w, x) if lin.bias is None else torch.baddbmm(lin.bias[None, :, None], w, x)
    return y.view(b, lin.out_features, *rest)


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise GensightError(f"{name} must be a positive integer; got {value!r}")


class NFTAttention(nn.Module):
    """Weight-space self-attention, equivariant to all neuron permutations (NP).

    arXiv 2305.13546, Sec. 3.1, Eq. 4-6 (see the module docstring for the exact terms).

    Args:
        space: the weight space of the input networks.
        channels: C, channels in and out (``C % heads == 0``).
        heads: attention heads; each head sees ``C / heads`` channels of every entry.
        dropout: dropout on the neighbourhood attention weights (training only; the global
            term has none, as in the reference).
        share_projections: one q/k/v projection ``C -> 3C`` (with bias) for every tensor
            (``3C^2 + 3C`` parameters), or one per tensor plus an output map per weight
            tensor (needed when conv filters are folded into channels). ``None``: shared
            when no layer has filter taps.
        terms: the terms to compute, a subset of ``("global", "neighbour")`` (ablations).

    Within head h, projected channels ``[3h*ch, 3h*ch + ch)`` are q, the next ``ch`` are k,
    the next ``ch`` are v (``ch = C / heads``), the reference's layout. The attention scale
    is ``1/sqrt(d)`` with d the flattened token size (``ch * n_l`` for the neighbourhood,
    ``ch`` for the global term).

    ``forward``: ``WeightBatch (B, C, ...) -> WeightBatch (B, C, ...)``.
    """

    def __init__(self, space: WeightSpace, channels: int, heads: int = 8, dropout: float = 0.0,
                 *, share_projections: bool | None = None,
                 terms: Sequence[str] = TERMS):
        super().__init__()
        _positive("channels", channels)
        _positive("heads", heads)
        if channels % heads:
            raise GensightError(f"channels ({channels}) must be divisible by heads ({heads})")
        if not 0 <= dropout < 1:
            raise GensightError(f"dropout must be in [0, 1); got {dropout!r}")
        terms = tuple(terms)
        unknown = [t for t in terms if t not in TERMS]
        if unknown or not terms:
            raise GensightError(f"terms must be a non-empty subset of {TERMS}; got {terms!r}")
        filters = [layer.filter_size for layer in space.layers]
        if share_projections is None:
            share_projections = all(f == 1 for f in filters)
        if share_projections and any(f != 1 for f in filters):
            bad = next(layer for layer in space.layers if layer.filter_size != 1)
            raise GensightError(
                f"share_projections=True needs every weight to have C channels per entry, but "
                f"layer {bad.weight_key!r} has filter taps {bad.filter_shape} (C*"
                f"{bad.filter_size} features once folded); use share_projections=False")
        self.space = space
        self.channels, self.heads, self.ch = channels, heads, channels // heads
        self.dropout = float(dropout)
        self.terms = terms
        self.share_projections = bool(share_projections)
        self.layout = Layout(space, "np")
        self._filters = filters
        c = channels
        if self.share_projections:
            self.to_qkv = nn.Linear(c, 3 * c)
        else:
            self.weight_qkv = nn.ModuleList(nn.Linear(f * c, 3 * c) for f in filters)
            self.bias_qkv = nn.ModuleList(nn.Linear(c, 3 * c) for _ in filters)
            self.unproject = nn.ModuleList(nn.Linear(c, f * c) for f in filters)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, heads={self.heads}, dropout={self.dropout}, "
                f"share_projections={self.share_projections}, terms={self.terms}")

    def _qkv(self, canon: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Projected weights ``(B, nh, 3ch, n_i, n_{i-1})`` and biases ``(B, nh, 3ch, n_i)``."""
        nh, ch3 = self.heads, 3 * self.ch
        ws, vs = [], []
        for i in range(self.space.n_layers):
            w, v = canon[2 * i], canon[2 * i + 1]
            lw = self.to_qkv if self.share_projections else self.weight_qkv[i]
            lv = self.to_qkv if self.share_projections else self.bias_qkv[i]
            qw, qv = _channel_linear(w, lw), _channel_linear(v, lv)
            ws.append(qw.view(qw.shape[0], nh, ch3, *qw.shape[2:]))
            vs.append(qv.view(qv.shape[0], nh, ch3, qv.shape[-1]))
        return ws, vs

    def forward(self, batch: WeightBatch) -> WeightBatch:
        _check_space(self, self.space, batch)
        _check_channels("NFTAttention", batch, self.channels)
        canon = self.layout.canonical(batch)
        qw, qv = self._qkv(canon)
        n_layers = self.space.n_layers
        b, nh, ch = batch.batch_size, self.heads, self.ch
        # outputs in C-channel space: weights (B, nh, ch, n_i, n_{i-1}), biases (B, nh, ch, n_i)
        out_w: list[Tensor | int] = [0] * n_layers
        out_v: list[Tensor | int] = [0] * n_layers
        p = self.dropout if self.training else 0.0
        if "neighbour" in self.terms:
            for lay in range(n_layers + 1):  # neuron layer l
                parts = []
                if lay >= 1:
                    parts.append(qw[lay - 1].permute(0, 1, 4, 2, 3))   # cols of W(l)
                    parts.append(qv[lay - 1].unsqueeze(2))              # v(l)
                if lay < n_layers:
                    parts.append(qw[lay].permute(0, 1, 3, 2, 4))       # rows of W(l+1)
                tokens = torch.cat(parts, dim=2)                        # (B, nh, T, 3ch, n_l)
                t, n_l = tokens.shape[2], tokens.shape[-1]
                # q, k, v: (B, nh, T, ch * n_l) views (unbind/split, not slicing: their
                # backward concatenates instead of zero-filling a full tensor per slice)
                q, k, v = tokens.view(b, nh, t, 3, ch * n_l).unbind(3)
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
                sizes = [p.shape[2] for p in parts]
                pieces = list(out.view(b, nh, t, ch, n_l).split(sizes, dim=2))
                if lay >= 1:
                    cols, bias = pieces.pop(0), pieces.pop(0)
                    out_w[lay - 1] = out_w[lay - 1] + cols.permute(0, 1, 3, 4, 2)
                    out_v[lay - 1] = out_v[lay - 1] + bias.squeeze(2)
                if lay < n_layers:
                    out_w[lay] = out_w[lay] + pieces.pop(0).permute(0, 1, 3, 2, 4)
        if "global" in self.terms:
            means = torch.stack([w.mean((-2, -1)) for w in qw] + [v.mean(-1) for v in qv],
                                dim=2)                                  # (B, nh, 2L, 3ch)
            q, k, v = means.split(ch, dim=-1)
            g = F.scaled_dot_product_attention(q, k, v).unbind(2)      # 2L x (B, nh, ch)
            for i in range(n_layers):
                out_w[i] = out_w[i] + g[i][..., None, None]
                out_v[i] = out_v[i] + g[n_layers + i][..., None]
        result: list[Tensor] = []
        for i in range(n_layers):
            w = out_w[i].expand(b, nh, ch, *qw[i].shape[-2:]) if "neighbour" not in \
                self.terms else out_w[i]
            v = out_v[i].expand(b, nh, ch, qv[i].shape[-1]) if "neighbour" not in \
                self.terms else out_v[i]
            w = w.reshape(b, self.channels, *w.shape[-2:])
            v = v.reshape(b, self.channels, v.shape[-1])
            if not self.share_projections:
                w = _channel_linear(w, self.unproject[i])
            result += [w, v]
        return self.layout.to_batch(result, self.channels)


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channel axis of every entry of every weight and bias tensor.

    The reference's ``SimpleLayerNorm`` (arXiv 2305.13546, NFT block): per tensor, at each
    entry, ``y = (x - mean_c) / (std_c + eps) * gamma + beta`` with the unbiased standard
    deviation over the C (conv weights: ``C * f``) channels and ``eps`` added to the std.
    Separate ``gamma, beta`` per tensor. Statistics are per entry, so the layer is NP
    equivariant. (Unlike :class:`~gensight.nf.WeightSpaceNorm`, which normalizes over all
    entries of a tensor.)

    ``forward``: ``WeightBatch (B, C, ...) -> WeightBatch (B, C, ...)``.
    """

    def __init__(self, space: WeightSpace, channels: int, eps: float = 1e-5):
        super().__init__()
        _positive("channels", channels)
        small = [layer.weight_key for layer in space.layers if channels * layer.filter_size < 2]
        if channels < 2 or small:
            raise GensightError(f"ChannelLayerNorm needs at least 2 features per entry (the "
                                f"unbiased std of one value is undefined); channels={channels}")
        self.space, self.channels, self.eps = space, channels, eps
        self.layout = Layout(space, "np")
        sizes = [f * channels for layer in space.layers for f in (layer.filter_size, 1)]
        self.gamma = nn.ParameterList(nn.Parameter(torch.ones(s)) for s in sizes)
        self.beta = nn.ParameterList(nn.Parameter(torch.zeros(s)) for s in sizes)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, eps={self.eps}"

    def forward(self, batch: WeightBatch) -> WeightBatch:
        _check_space(self, self.space, batch)
        _check_channels("ChannelLayerNorm", batch, self.channels)
        out = []
        for x, g, bt in zip(self.layout.canonical(batch), self.gamma, self.beta, strict=True):
            shape = (1, -1) + (1,) * (x.dim() - 2)
            var, mean = torch.var_mean(x, 1, keepdim=True)          # unbiased, one pass
            inv = 1.0 / (var.sqrt() + self.eps)
            out.append(torch.addcmul(bt.view(shape), (x - mean) * inv, g.view(shape)))
        return self.layout.to_batch(out, self.channels)


class BlockPointwise(nn.Module):
    """A separate 1x1 channel map for every weight and bias tensor (NP equivariant).

    The reference's ``Pointwise``: weight ``W(i)`` maps its ``C_in * f_i`` folded features to
    ``C_out * f_i`` (conv filters are mixed with channels), bias ``v(i)`` maps ``C_in -> C_out``;
    all with a bias. Used as the NFT block's feed-forward layers and as an input encoder.

    ``forward``: ``WeightBatch (B, C_in, ...) -> WeightBatch (B, C_out, ...)``.
    """

    def __init__(self, space: WeightSpace, in_channels: int, out_channels: int):
        super().__init__()
        _positive("in_channels", in_channels)
        _positive("out_channels", out_channels)
        self.space, self.in_channels, self.out_channels = space, in_channels, out_channels
        self.layout = Layout(space, "np")
        self.maps = nn.ModuleList(
            nn.Linear(f * in_channels, f * out_channels)
            for layer in space.layers for f in (layer.filter_size, 1))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"

    def forward(self, batch: WeightBatch) -> WeightBatch:
        _check_space(self, self.space, batch)
        _check_channels("BlockPointwise", batch, self.in_channels)
        out = [_channel_linear(x, m) for x, m in zip(self.layout.canonical(batch), self.maps,
                                                      strict=True)]
        return self.layout.to_batch(out, self.out_channels)


class NFTBlock(nn.Module):
    """A pre-norm NFT block (arXiv 2305.13546, Sec. 3.2):
    ``x = x + Dropout(Attn(LN1(x)))``; ``x = x + FF(LN2(x))`` with
    ``FF = BlockPointwise(C, ff*C) -> GELU -> BlockPointwise(ff*C, C) -> Dropout``.

    Defaults follow the reference (``ff_factor=2, heads=8, dropout=0.1``); Inr2Array uses
    ``ff_factor=4, heads=4, dropout=0``. NP equivariant.

    ``forward``: ``WeightBatch (B, C, ...) -> WeightBatch (B, C, ...)``.
    """

    def __init__(self, space: WeightSpace, channels: int, *, ff_factor: int = 2,
                 heads: int = 8, dropout: float = 0.1, share_projections: bool | None = None,
                 terms: Sequence[str] = TERMS):
        super().__init__()
        _positive("ff_factor", ff_factor)
        self.space = space
        self.ln1 = ChannelLayerNorm(space, channels)
        self.attn = NFTAttention(space, channels, heads, dropout,
                                 share_projections=share_projections, terms=terms)
        self.ln2 = ChannelLayerNorm(space, channels)
        self.ff1 = BlockPointwise(space, channels, ff_factor * channels)
        self.ff2 = BlockPointwise(space, ff_factor * channels, channels)
        self.drop = nn.Dropout(dropout)

    def forward(self, batch: WeightBatch) -> WeightBatch:
        h = self.attn(self.ln1(batch)).map(self.drop)
        x = batch + h
        h = self.ff2(self.ff1(self.ln2(x)).map(F.gelu)).map(self.drop)
        return x + h


class LearnedPositionEmbedding(nn.Module):
    """Learned embeddings of what the permutation symmetry does not move (arXiv 2305.13546,
    Inr2Array encoder): a layer embedding added to every entry of ``W(i)`` and one added to
    ``v(i)`` (``2L`` vectors), an input-neuron embedding added along the columns of ``W(1)``
    (``n_0`` vectors) and an output-neuron embedding added along the rows of ``W(L)`` and to
    ``v(L)`` (``n_L`` vectors), each of C channels (conv weights: the same vector at every
    filter tap). After it a model is only HNP equivariant, as intended: input and output
    neurons are not exchangeable.

    ``forward``: ``WeightBatch (B, C, ...) -> WeightBatch (B, C, ...)``.
    """

    def __init__(self, space: WeightSpace, channels: int):
        super().__init__()
        _positive("channels", channels)
        self.space, self.channels = space, channels
        n_layers = space.n_layers
        self.weight_emb = nn.Embedding(n_layers, channels)
        self.bias_emb = nn.Embedding(n_layers, channels)
        self.input_emb = nn.Embedding(space.neurons[0], channels)
        self.output_emb = nn.Embedding(space.neurons[-1], channels)
        for emb in (self.weight_emb, self.bias_emb, self.input_emb, self.output_emb):
            nn.init.normal_(emb.weight, std=0.02)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"

    def forward(self, batch: WeightBatch) -> WeightBatch:
        _check_space(self, self.space, batch)
        _check_channels("LearnedPositionEmbedding", batch, self.channels)
        last = self.space.n_layers - 1
        weights, biases = [], []
        for i, (w, v) in enumerate(zip(batch.weights, batch.biases, strict=True)):
            taps = (1,) * (w.dim() - 4)
            w = w + self.weight_emb.weight[i].view(1, -1, 1, 1, *taps)
            v = v + self.bias_emb.weight[i].view(1, -1, 1)
            if i == 0:
                w = w + self.input_emb.weight.t().reshape(1, self.channels, 1, -1, *taps)
            if i == last:
                out = self.output_emb.weight.t()
                w = w + out.reshape(1, self.channels, -1, 1, *taps)
                v = v + out.unsqueeze(0)
            weights.append(w)
            biases.append(v)
        return WeightBatch(self.space, weights, biases, check_finite=False)


class WeightTokens(nn.Module):
    """Every scalar entry of every tensor as a token: ``WeightBatch (B, C, ...) -> (B, N, C)``.

    ``N`` is the number of parameters of one network (conv weights: one token per filter
    tap). Order: ``W(1)`` row-major (rows, columns, taps), ``v(1)``, ``W(2)``, ``v(2)``, ...
    (the reference's ``FlattenWeights`` order on MLPs). :meth:`unflatten` inverts it.
    """

    def __init__(self, space: WeightSpace):
        super().__init__()
        self.space = space
        self.sizes = [n for layer in space.layers
                      for n in (layer.n_out * layer.n_in * layer.filter_size, layer.n_out)]

    @property
    def num_tokens(self) -> int:
        return sum(self.sizes)

    def forward(self, batch: WeightBatch) -> Tensor:
        _check_space(self, self.space, batch)
        parts = []
        for w, v in zip(batch.weights, batch.biases, strict=True):
            parts += [w.flatten(2).transpose(1, 2), v.transpose(1, 2)]
        return torch.cat(parts, dim=1)

    def unflatten(self, tokens: Tensor) -> WeightBatch:
        """``(B, N, C) -> WeightBatch (B, C, ...)``, the inverse of ``forward``."""
        if tokens.dim() != 3 or tokens.shape[1] != self.num_tokens:
            raise ShapeMismatchError(f"expected tokens (B, {self.num_tokens}, C); got "
                                     f"{tuple(tokens.shape)}")
        b, _, c = tokens.shape
        chunks = tokens.split(self.sizes, dim=1)
        weights, biases = [], []
        for i, layer in enumerate(self.space.layers):
            w, v = chunks[2 * i], chunks[2 * i + 1]
            weights.append(w.transpose(1, 2).reshape(b, c, layer.n_out, layer.n_in,
                                                      *layer.filter_shape))
            biases.append(v.transpose(1, 2))
        return WeightBatch(self.space, weights, biases, check_finite=False)


class _GEGLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        a, gate = x.chunk(2, dim=-1)
        return a * F.gelu(gate)


class CrossAttentionPool(nn.Module):
    """Cross-attention from M learned latent queries to a set of tokens (arXiv 2305.13546,
    Fig. 2: the Inr2Array pooling; a depth-1 Perceiver cross-attention block):
    ``z = latents + Attn(LN(latents), LN(tokens))``, ``z = z + FF(LN(z))`` with
    ``FF = Linear(D, 2*ff_mult*D) -> GEGLU -> Linear(ff_mult*D, D)``; q/k/v maps without bias,
    the output map with one.

    Attention over a set ignores the order of the tokens, so the latent array is invariant to
    every permutation of them, neuron permutations included; what must stay distinguishable
    (layers, input/output neurons) is told apart by embeddings added before it. The latents
    themselves are ordered (latent m is always the m-th learned query).

    Args:
        in_channels: C of the tokens. num_latents: M. latent_dim: D (default C).
        heads, dim_head: attention heads and their width (default 1 head of D).
        ff_mult: feed-forward expansion.

    ``forward``: tokens ``(B, N, C)`` or a ``WeightBatch (B, C, ...)`` (flattened with
    :class:`WeightTokens`) -> ``(B, M, D)``.
    """

    def __init__(self, in_channels: int, num_latents: int, latent_dim: int | None = None, *,
                 heads: int = 1, dim_head: int | None = None, ff_mult: int = 4):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_latents", num_latents),
                            ("heads", heads), ("ff_mult", ff_mult)):
            _positive(name, value)
        d = latent_dim or in_channels
        dh = dim_head or d
        _positive("latent_dim", d)
        _positive("dim_head", dh)
        self.in_channels, self.num_latents, self.latent_dim = in_channels, num_latents, d
        self.heads, self.dim_head = heads, dh
        self.latents = nn.Parameter(torch.randn(num_latents, d))
        self.norm_latents = nn.LayerNorm(d)
        self.norm_tokens = nn.LayerNorm(in_channels)
        self.to_q = nn.Linear(d, heads * dh, bias=False)
        self.to_kv = nn.Linear(in_channels, 2 * heads * dh, bias=False)
        self.to_out = nn.Linear(heads * dh, d)
        self.ff = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * ff_mult * d), _GEGLU(),
                                nn.Linear(ff_mult * d, d))

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, num_latents={self.num_latents}, "
                f"latent_dim={self.latent_dim}, heads={self.heads}, dim_head={self.dim_head}")

    def forward(self, tokens: Tensor | WeightBatch) -> Tensor:
        if isinstance(tokens, WeightBatch):
            tokens = WeightTokens(tokens.space)(tokens)
        if tokens.dim() != 3 or tokens.shape[-1] != self.in_channels:
            raise ShapeMismatchError(f"CrossAttentionPool expects tokens (B, N, "
                                     f"{self.in_channels}); got {tuple(tokens.shape)}")
        b, n, _ = tokens.shape
        h, dh = self.heads, self.dim_head
        z = self.latents.expand(b, -1, -1)
        q = self.to_q(self.norm_latents(z)).view(b, -1, h, dh).transpose(1, 2)
        k, v = self.to_kv(self.norm_tokens(tokens)).view(b, n, 2, h, dh).unbind(2)
        a = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2))
        z = z + self.to_out(a.transpose(1, 2).reshape(b, -1, h * dh))
        return z + self.ff(z)
