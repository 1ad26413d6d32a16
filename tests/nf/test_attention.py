"""NFT layers (arXiv 2305.13546): weight-space attention, channel layer norm, block pointwise,
NFT block, position embedding, tokens and the cross-attention pool."""

import math

import pytest
import torch
from torch import nn

from gensight.errors import GensightError, IncompatibleSpaceError, ShapeMismatchError
from gensight.nf import (
    BlockPointwise,
    ChannelLayerNorm,
    CrossAttentionPool,
    LearnedPositionEmbedding,
    NFTAttention,
    NFTBlock,
    WeightTokens,
)
from gensight.weightspace import (
    NeuronPermutation,
    WeightBatch,
    WeightSpace,
    permute,
    random_permutation,
)
from tests.factories import ARCHITECTURES, make_cnn, make_mlp, seeded
from tests.nf.test_layers import random_batch

MLPS = [a for a in ARCHITECTURES if a[0].startswith("mlp")]
CNNS = [a for a in ARCHITECTURES if a[0].startswith("cnn")]


def batch64(space: WeightSpace, batch: int, channels: int, seed: int) -> WeightBatch:
    return random_batch(space, batch, channels, seed).to(torch.float64)


def close(a: WeightBatch, b: WeightBatch, atol: float = 1e-10) -> bool:
    return a.space == b.space and a.allclose(b, rtol=0.0, atol=atol)


def siren_space() -> WeightSpace:
    return WeightSpace.from_module(make_mlp([2, 32, 32, 1], act=nn.Tanh))


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def equivariant_modules(space: WeightSpace, channels: int, shared: bool | None):
    torch.manual_seed(0)
    return {
        "attention": NFTAttention(space, channels, heads=2, share_projections=shared),
        "attention-global": NFTAttention(space, channels, heads=2, share_projections=shared,
                                         terms=("global",)),
        "attention-neighbour": NFTAttention(space, channels, heads=2,
                                            share_projections=shared, terms=("neighbour",)),
        "layernorm": ChannelLayerNorm(space, channels),
        "pointwise": BlockPointwise(space, channels, 3),
        "block": NFTBlock(space, channels, heads=2, dropout=0.1, share_projections=shared),
    }


# --- equivariance -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, factory, _", MLPS, ids=[a[0] for a in MLPS])
def test_np_equivariance_on_mlps(name, factory, _):
    """Every neuron layer, input and output included, permuted independently per member."""
    space = WeightSpace.from_module(factory())
    x = batch64(space, 3, 4, seed=1)
    perm = random_permutation(space, "np", batch_size=3, generator=seeded(2))
    assert all(not torch.equal(p, torch.arange(p.shape[-1])) for p in perm.perms
               if p.shape[-1] > 2)
    for key, module in equivariant_modules(space, 4, True).items():
        module = module.double().eval()
        assert close(module(permute(x, perm)), permute(module(x), perm)), key


@pytest.mark.parametrize("name, factory, _", CNNS, ids=[a[0] for a in CNNS])
@pytest.mark.parametrize("symmetry", ["hnp", "np"])
def test_equivariance_on_cnns(name, factory, _, symmetry):
    """Conv filters folded into channels: per-tensor projections, NP (hence HNP) equivariant."""
    space = WeightSpace.from_module(factory())
    x = batch64(space, 2, 4, seed=3)
    perm = random_permutation(space, symmetry, batch_size=2, generator=seeded(4))
    for key, module in equivariant_modules(space, 4, None).items():
        module = module.double().eval()
        assert close(module(permute(x, perm)), permute(module(x), perm)), key


def test_position_embedding_is_hnp_but_not_np_equivariant():
    space = WeightSpace.from_module(make_mlp([3, 5, 4, 2]))
    x = batch64(space, 2, 4, seed=5)
    emb = LearnedPositionEmbedding(space, 4).double()
    hnp = random_permutation(space, "hnp", batch_size=2, generator=seeded(6))
    assert close(emb(permute(x, hnp)), permute(emb(x), hnp))
    inputs_only = random_permutation(space, "np", generator=seeded(7), layers=[0])
    assert not close(emb(permute(x, inputs_only)), permute(emb(x), inputs_only), atol=1e-6)


def _sensitivity_perm(space: WeightSpace, layer: int, seed: int) -> tuple[WeightBatch, ...]:
    """Permutations that move the rows of W(layer) by P and the columns of W(layer+1) by a
    different Q (not a symmetry of the network)."""
    g = seeded(seed)
    n = space.neurons[layer]
    p = torch.randperm(n, generator=g)
    q = torch.randperm(n, generator=g)
    while torch.equal(p, q):
        q = torch.randperm(n, generator=g)
    return p, q


def _uncoupled(x: WeightBatch, layer: int, p: torch.Tensor, q: torch.Tensor) -> WeightBatch:
    weights, biases = list(x.weights), list(x.biases)
    weights[layer - 1] = weights[layer - 1][:, :, p]
    biases[layer - 1] = biases[layer - 1][:, :, p]
    weights[layer] = weights[layer][:, :, :, q]
    return WeightBatch(x.space, weights, biases)


@pytest.mark.parametrize("hidden", [1, 2])
def test_sensitivity_to_uncoupled_permutations(hidden):
    """Minimal equivariance: rows of W(i) and columns of W(i+1) moved by *different*
    permutations is not a symmetry, and the layer is not equivariant to it."""
    space = WeightSpace.from_module(make_mlp([3, 5, 6, 2]))
    x = batch64(space, 2, 4, seed=8)
    p, q = _sensitivity_perm(space, hidden, seed=9)
    torch.manual_seed(0)
    att = NFTAttention(space, 4, heads=2).double()
    y = att(_uncoupled(x, hidden, p, q))
    assert not close(y, _uncoupled(att(x), hidden, p, q), atol=1e-6)


def test_sensitivity_to_entry_permutations_of_a_weight():
    """A random permutation of all entries of W(2) (the naive S_dim symmetry) is not one the
    layer respects."""
    space = WeightSpace.from_module(make_mlp([3, 5, 6, 2]))
    x = batch64(space, 2, 4, seed=10)
    torch.manual_seed(0)
    att = NFTAttention(space, 4, heads=2).double()
    order = torch.randperm(30, generator=seeded(11))

    def shuffle(b: WeightBatch) -> WeightBatch:
        weights = list(b.weights)
        weights[1] = weights[1].flatten(2)[:, :, order].view_as(weights[1])
        return WeightBatch(b.space, weights, list(b.biases))

    assert not close(att(shuffle(x)), shuffle(att(x)), atol=1e-6)


# --- the terms against a direct, loop-based implementation ---------------------------------------

def direct_attention(att: NFTAttention, x: WeightBatch) -> WeightBatch:
    """The table of the module docstring, one entry and one token at a time, head by head
    (MLP space, shared projections)."""
    assert att.share_projections
    out = [_direct_head(att, x, h) for h in range(att.heads)]   # heads own channel blocks
    return WeightBatch(x.space, [torch.cat([o.weights[i] for o in out], 1)
                                 for i in range(x.space.n_layers)],
                       [torch.cat([o.biases[i] for o in out], 1)
                        for i in range(x.space.n_layers)])


def _direct_head(att: NFTAttention, x: WeightBatch, head: int) -> WeightBatch:
    """Head ``head``'s output channels: within the projection, head h owns channels
    [3h*ch, 3h*ch + ch) for q, the next ch for k, the next ch for v."""
    space, ch = x.space, att.ch
    n = space.neurons
    n_layers = space.n_layers
    lin = att.to_qkv
    base = 3 * head * ch

    def qkv(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y = lin(t)                                        # (..., 3C)
        return (y[..., base:base + ch], y[..., base + ch:base + 2 * ch],
                y[..., base + 2 * ch:base + 3 * ch])

    out_w = [torch.zeros_like(w[:, :ch]) for w in x.weights]
    out_v = [torch.zeros_like(v[:, :ch]) for v in x.biases]
    for b in range(x.batch_size):
        W = [w[b].permute(1, 2, 0) for w in x.weights]   # (n_i, n_{i-1}, C)
        V = [v[b].t() for v in x.biases]                  # (n_i, C)
        if "neighbour" in att.terms:
            for lay in range(n_layers + 1):
                tokens, where = [], []
                if lay >= 1:
                    for k in range(n[lay - 1]):
                        tokens.append(W[lay - 1][:, k])   # (n_l, C)
                        where.append(("col", k))
                    tokens.append(V[lay - 1])
                    where.append(("bias", 0))
                if lay < n_layers:
                    for j in range(n[lay + 1]):
                        tokens.append(W[lay][j, :])
                        where.append(("row", j))
                q, k_, v = zip(*(qkv(t) for t in tokens), strict=True)
                d = ch * n[lay]
                for t, (kind, idx) in enumerate(where):
                    scores = torch.stack([(q[t] * k_[s]).sum() for s in range(len(tokens))])
                    a = torch.softmax(scores / math.sqrt(d), 0)
                    o = sum(a[s] * v[s] for s in range(len(tokens)))   # (n_l, C)
                    if kind == "col":
                        out_w[lay - 1][b, :, :, idx] += o.t()
                    elif kind == "bias":
                        out_v[lay - 1][b] += o.t()
                    else:
                        out_w[lay][b, :, idx, :] += o.t()
        if "global" in att.terms:
            blocks = W + V
            means = [qkv(t.reshape(-1, t.shape[-1])) for t in blocks]
            qm = torch.stack([m[0].mean(0) for m in means])
            km = torch.stack([m[1].mean(0) for m in means])
            vm = torch.stack([m[2].mean(0) for m in means])
            g = torch.softmax(qm @ km.t() / math.sqrt(ch), 1) @ vm      # (2L, ch)
            for i in range(n_layers):
                out_w[i][b] += g[i][:, None, None]
                out_v[i][b] += g[n_layers + i][:, None]
    return WeightBatch(space, out_w, out_v)


@pytest.mark.parametrize("terms", [("neighbour",), ("global",), ("global", "neighbour")])
@pytest.mark.parametrize("widths, heads", [([3, 2, 2], 1), ([2, 3, 4, 2], 1),
                                           ([3, 2, 4, 2], 2)])
def test_against_direct_implementation(terms, widths, heads):
    space = WeightSpace.from_module(make_mlp(widths))
    x = batch64(space, 2, 4 if heads > 1 else 2, seed=12)
    torch.manual_seed(1)
    att = NFTAttention(space, x.channels, heads=heads, terms=terms).double()
    assert close(att(x), direct_attention(att, x))


def test_global_term_alone_is_constant_over_each_tensor():
    space = WeightSpace.from_module(make_mlp([3, 5, 4, 2]))
    att = NFTAttention(space, 4, heads=2, terms=("global",)).double()
    y = att(batch64(space, 2, 4, seed=13))
    for t in y.weights + y.biases:
        flat = t.flatten(2)
        assert torch.allclose(flat, flat[:, :, :1].expand_as(flat), atol=1e-12)


def test_hand_checked_attention_example():
    """A 1-1 network, C = 1, q = k = v = the entry (projection weights 1, bias 0), weight
    w = 1, bias u = 2. Neuron layer 1 attends over the tokens {w, u} (scale 1/sqrt(1)):
    w -> (w*e^{w*w} + u*e^{w*u}) / (e^{w*w} + e^{w*u}) = (1 + 2e) / (1 + e), and
    u -> (1 + 2e^2) / (1 + e^2). Layer 0 has the one token w, which maps to itself. The
    global term sees the same two tokens (block means of one entry) as layer 1."""
    space = WeightSpace.from_module(make_mlp([1, 1]))
    att = NFTAttention(space, 1, heads=1).double()
    with torch.no_grad():
        att.to_qkv.weight.fill_(1.0)
        att.to_qkv.bias.zero_()
    x = WeightBatch(space, [torch.ones(1, 1, 1, 1, dtype=torch.float64)],
                    [torch.full((1, 1, 1), 2.0, dtype=torch.float64)])
    y = att(x)
    e = math.e
    assert y.weights[0].item() == pytest.approx(2 * (1 + 2 * e) / (1 + e) + 1, rel=1e-12)
    assert y.biases[0].item() == pytest.approx(2 * (1 + 2 * e**2) / (1 + e**2), rel=1e-12)


def test_attention_scale_uses_the_flattened_token_size():
    """Two hidden neurons, C = 2, 1 head: the neighbourhood tokens of layer 1 have
    ch * n_1 = 4 numbers; scaling by 1/sqrt(2) (per-entry size) instead gives another output."""
    space = WeightSpace.from_module(make_mlp([1, 2, 1]))
    torch.manual_seed(2)
    att = NFTAttention(space, 2, heads=1, terms=("neighbour",)).double()
    x = batch64(space, 1, 2, seed=14)
    y = att(x)
    assert close(y, direct_attention(att, x))
    # the same computation with a per-entry scale differs
    canon = att.layout.canonical(x)
    qw, qv = att._qkv(canon)
    tokens = torch.cat([qw[0].permute(0, 1, 4, 2, 3), qv[0].unsqueeze(2),
                        qw[1].permute(0, 1, 3, 2, 4)], dim=2)[0, 0]      # (T, 3ch, n_1)
    q, k = tokens[:, :2].flatten(1), tokens[:, 2:4].flatten(1)
    right = torch.softmax(q @ k.t() / math.sqrt(4), -1)
    wrong = torch.softmax(q @ k.t() / math.sqrt(2), -1)
    assert not torch.allclose(right, wrong, atol=1e-3)


# --- counts and shapes ------------------------------------------------------------------------

def test_golden_parameter_counts():
    """The authors' modules on a 2-32-32-1 SIREN with C = 256 (research note 01, [ran])."""
    space, c = siren_space(), 256
    assert n_params(NFTAttention(space, c, heads=4)) == 3 * c * c + 3 * c == 197_376
    assert n_params(ChannelLayerNorm(space, c)) == 3_072
    assert n_params(BlockPointwise(space, c, 4 * c)) == 1_579_008
    assert n_params(BlockPointwise(space, 4 * c, c)) == 1_574_400
    assert n_params(NFTBlock(space, c, ff_factor=4, heads=4)) == 3_356_928
    assert n_params(LearnedPositionEmbedding(space, c)) == 2_304
    assert n_params(CrossAttentionPool(c, 16)) == 1_056_768


def test_unshared_projections_on_a_cnn():
    space = WeightSpace.from_module(make_cnn([2, 4, 3], 3))     # filters 3x3, 3x3, dense
    att = NFTAttention(space, 4, heads=2)
    assert not att.share_projections
    assert [m.in_features for m in att.weight_qkv] == [36, 36, 4]
    assert [m.out_features for m in att.unproject] == [36, 36, 4]
    y = att(random_batch(space, 2, 4, seed=15))
    assert y.space == space and y.channels == 4


def test_tokens_shape_order_and_round_trip():
    space = siren_space()
    x = random_batch(space, 3, 5, seed=16)
    tokens = WeightTokens(space)(x)
    assert tokens.shape == (3, 1185, 5)
    assert torch.equal(tokens[:, 1], x.weights[0][:, :, 0, 1])          # W(1) row-major
    assert torch.equal(tokens[:, 64], x.biases[0][:, :, 0])             # then v(1)
    back = WeightTokens(space).unflatten(tokens)
    assert close(back, x, atol=0.0)
    cnn = WeightSpace.from_module(make_cnn([2, 4, 3], 3))
    xc = random_batch(cnn, 2, 3, seed=17)
    assert close(WeightTokens(cnn).unflatten(WeightTokens(cnn)(xc)), xc, atol=0.0)


def test_pool_shape_and_token_permutation_invariance():
    torch.manual_seed(3)
    pool = CrossAttentionPool(6, num_latents=4, latent_dim=8, heads=2, dim_head=3).double()
    tokens = torch.randn(2, 11, 6, generator=seeded(18), dtype=torch.float64)
    z = pool(tokens)
    assert z.shape == (2, 4, 8)
    shuffled = tokens[:, torch.randperm(11, generator=seeded(19))]
    assert torch.allclose(pool(shuffled), z, atol=1e-12)
    assert not torch.allclose(pool(tokens * 1.5), z, atol=1e-6)


def test_encoder_is_hnp_invariant():
    """Position embedding -> NFT blocks -> tokens -> pool: the latent array does not change
    when the hidden neurons of the input network are permuted."""
    space = WeightSpace.from_module(make_mlp([2, 6, 5, 1]))
    torch.manual_seed(4)
    enc = nn.Sequential(BlockPointwise(space, 1, 8), LearnedPositionEmbedding(space, 8),
                        NFTBlock(space, 8, heads=2, dropout=0.0), CrossAttentionPool(8, 3))
    enc = enc.double().eval()
    x = batch64(space, 2, 1, seed=20)
    perm = random_permutation(space, "hnp", batch_size=2, generator=seeded(21))
    assert torch.allclose(enc(permute(x, perm)), enc(x), atol=1e-10)
    inputs = NeuronPermutation(space, (torch.tensor([1, 0]),) + tuple(
        torch.arange(n) for n in space.neurons[1:]))
    assert not torch.allclose(enc(permute(x, inputs)), enc(x), atol=1e-6)


def test_dropout_only_in_training():
    space = WeightSpace.from_module(make_mlp([3, 5, 2]))
    torch.manual_seed(5)
    att = NFTAttention(space, 4, heads=2, dropout=0.5)
    x = random_batch(space, 2, 4, seed=22)
    att.eval()
    assert close(att(x), att(x), atol=0.0)
    ref = NFTAttention(space, 4, heads=2, dropout=0.0)
    ref.load_state_dict(att.state_dict())
    assert close(att(x), ref.eval()(x), atol=1e-6)
    att.train()
    torch.manual_seed(6)
    assert not close(att(x), ref(x), atol=1e-4)


# --- errors -----------------------------------------------------------------------------------

def test_errors_name_the_culprit():
    mlp = WeightSpace.from_module(make_mlp([3, 5, 2]))
    cnn = WeightSpace.from_module(make_cnn([2, 4, 3], 3))
    with pytest.raises(GensightError, match="'0.weight'.*share_projections=False"):
        NFTAttention(cnn, 4, heads=2, share_projections=True)
    with pytest.raises(GensightError, match=r"channels \(6\) must be divisible by heads \(4\)"):
        NFTAttention(mlp, 6, heads=4)
    with pytest.raises(GensightError, match="terms must be"):
        NFTAttention(mlp, 4, heads=2, terms=("local",))
    with pytest.raises(GensightError, match="at least 2 features"):
        ChannelLayerNorm(mlp, 1)
    with pytest.raises(ShapeMismatchError, match="expects 4 channels; the batch has 3"):
        NFTAttention(mlp, 4, heads=2)(random_batch(mlp, 1, 3, seed=0))
    with pytest.raises(IncompatibleSpaceError, match="BlockPointwise built for"):
        BlockPointwise(mlp, 3, 3)(random_batch(cnn, 1, 3, seed=0))
    with pytest.raises(ShapeMismatchError, match=r"tokens \(B, N, 6\)"):
        CrossAttentionPool(6, 2)(torch.zeros(2, 3, 5))
    with pytest.raises(ShapeMismatchError, match=r"\(B, 32, C\)"):
        WeightTokens(mlp).unflatten(torch.zeros(1, 17, 2))
