"""Building blocks of the NFN paper's INR models (arXiv 2302.14040): Fourier features, IO
encoding, channel dropout, learned scale, and the composed INR classifier."""

import math

import pytest
import torch
from torch import nn

from gensight.errors import GensightError, IncompatibleSpaceError, ShapeMismatchError
from gensight.nf import (
    ChannelDropout,
    Elementwise,
    GaussianFourierFeatures,
    HNPLinear,
    HNPPool,
    IOSinusoidalEncoding,
    LearnedScale,
    NPLinear,
    make_inr_classifier,
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

IDS = [a[0] for a in ARCHITECTURES]


def batch64(space: WeightSpace, batch: int, channels: int, seed: int) -> WeightBatch:
    return random_batch(space, batch, channels, seed).to(torch.float64)


def siren_space() -> WeightSpace:
    return WeightSpace.from_module(nn.Sequential(
        nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)))


def assert_batches_equal(a: WeightBatch, b: WeightBatch, atol: float = 1e-10) -> None:
    assert a.space == b.space and a.channels == b.channels
    assert a.allclose(b, rtol=0.0, atol=atol)


# --- GaussianFourierFeatures ------------------------------------------------------------------

def test_fourier_golden_value():
    """x = 0.25 with B = [[1]]: [sin(2 pi / 4), cos(2 pi / 4)] = [1, 0]."""
    space = WeightSpace.from_module(make_mlp([1, 1]))
    ff = GaussianFourierFeatures(1, 1, 10.0, seed=0).double()
    ff.frequencies.fill_(1.0)
    x = WeightBatch(space, [torch.full((1, 1, 1, 1), 0.25, dtype=torch.float64)],
                    [torch.full((1, 1, 1), -0.5, dtype=torch.float64)])
    y = ff(x)
    assert y.channels == 2
    assert torch.allclose(y.weights[0].flatten(), torch.tensor([1.0, 0.0], dtype=torch.float64),
                          atol=1e-12)
    # bias -0.5: sin(-pi) = 0, cos(-pi) = -1
    assert torch.allclose(y.biases[0].flatten(), torch.tensor([0.0, -1.0], dtype=torch.float64),
                          atol=1e-12)


def test_fourier_matches_formula_for_several_channels():
    space = WeightSpace.from_module(make_cnn([2, 3], 2))
    ff = GaussianFourierFeatures(3, 5, 2.0, seed=1).double()
    x = batch64(space, 2, 3, 0)
    y = ff(x)
    B = ff.frequencies
    for t_in, t_out in zip(x.tensors(), y.tensors(), strict=True):
        assert t_out.shape == (t_in.shape[0], 10, *t_in.shape[2:])
        proj = 2 * math.pi * torch.einsum("bc...,cm->bm...", t_in, B)
        assert torch.allclose(t_out, torch.cat([proj.sin(), proj.cos()], 1), atol=1e-12)


@pytest.mark.parametrize("name, factory, _", ARCHITECTURES, ids=IDS)
def test_fourier_is_np_equivariant(name, factory, _):
    space = WeightSpace.from_module(factory())
    ff = GaussianFourierFeatures(2, 4, 3.0, seed=0).double()
    x = batch64(space, 3, 2, 1)
    for symmetry in ("np", "hnp"):
        perm = random_permutation(space, symmetry, batch_size=3, generator=seeded(2))
        assert_batches_equal(ff(permute(x, perm)), permute(ff(x), perm))


def test_fourier_buffer_is_seeded_saved_and_scaled():
    a = GaussianFourierFeatures(1, 4000, 3.0, seed=5)
    b = GaussianFourierFeatures(1, 4000, 3.0, generator=seeded(5))
    c = GaussianFourierFeatures(1, 4000, 3.0, seed=6)
    assert torch.equal(a.frequencies, b.frequencies)
    assert not torch.equal(a.frequencies, c.frequencies)
    assert "frequencies" in a.state_dict()
    assert not list(a.parameters())  # fixed, not learned
    c.load_state_dict(a.state_dict())
    assert torch.equal(c.frequencies, a.frequencies)
    assert abs(a.frequencies.std().item() - 3.0) < 0.2
    assert a.out_channels == 8000
    with pytest.raises(GensightError, match="either generator or seed"):
        GaussianFourierFeatures(1, 2, 1.0, seed=1, generator=seeded(1))
    space = WeightSpace.from_module(make_mlp([2, 2]))
    with pytest.raises(ShapeMismatchError, match="expects 1 channels"):
        a(random_batch(space, 1, 2, 0))


# --- IOSinusoidalEncoding ---------------------------------------------------------------------

def test_io_encoding_golden_values():
    """5 inputs at -1, -0.5, 0, 0.5, 1 and 2 outputs at -1, 1; frequencies linspace(1, 4/2, 2)
    = [1, 2]; channels [sin(pi p), sin(2 pi p), cos(pi p), cos(2 pi p), p]."""
    space = WeightSpace.from_module(make_mlp([5, 3, 2]))
    enc = IOSinusoidalEncoding(space, max_freq=4, num_bands=2)
    x = batch64(space, 2, 1, 0)
    y = enc(x)
    assert enc.encoding_channels == 5 and enc.out_channels(1) == 6
    assert all(t.shape[1] == 6 for t in y.tensors())
    for t_in, t_out in zip(x.tensors(), y.tensors(), strict=True):
        assert torch.equal(t_out[:, :1], t_in)  # original channels first, unchanged
    f64 = dict(dtype=torch.float64)
    inputs = torch.tensor([[0, -1, 0, 1, 0],
                           [0, 0, 0, 0, 0],
                           [-1, 0, 1, 0, -1],
                           [1, -1, 1, -1, 1],
                           [-1, -0.5, 0, 0.5, 1]], **f64)
    outputs = torch.tensor([[0, 0], [0, 0], [-1, -1], [1, 1], [-1, 1]], **f64)
    for b in range(2):
        w1, v1 = y.weights[0][b, 1:], y.biases[0][b, 1:]
        w2, v2 = y.weights[1][b, 1:], y.biases[1][b, 1:]
        assert torch.allclose(w1, inputs[:, None, :].expand(5, 3, 5), atol=1e-12)  # W1[j, k]: k
        assert torch.equal(v1, torch.zeros(5, 3, **f64))
        assert torch.allclose(w2, outputs[:, :, None].expand(5, 2, 3), atol=1e-12)  # W2[j, k]: j
        assert torch.allclose(v2, outputs, atol=1e-12)


def test_io_encoding_single_layer_sums_both_and_layer_option():
    space = WeightSpace.from_module(make_mlp([3, 2]))
    enc = IOSinusoidalEncoding(space, max_freq=6, num_bands=3)
    w_enc, b_enc = enc.encodings(torch.float64)
    pos_in = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    pos_out = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    assert torch.allclose(w_enc[-1], pos_out[:, None] + pos_in[None, :])  # raw-position channel
    assert torch.allclose(b_enc[-1], pos_out)
    # frequencies linspace(1, 3, 3) = [1, 2, 3]: channel 2 is sin(3 pi p)
    assert torch.allclose(w_enc[2], torch.sin(3 * math.pi * pos_out)[:, None]
                          + torch.sin(3 * math.pi * pos_in)[None, :], atol=1e-12)
    # enc_layers adds the encoding of layer position linspace(-1, 1, L) to every tensor
    deep = WeightSpace.from_module(make_mlp([2, 4, 4, 2]))
    plain = IOSinusoidalEncoding(deep, 4, 2).encodings(torch.float64)
    layered = IOSinusoidalEncoding(deep, 4, 2, enc_layers=True).encodings(torch.float64)
    assert torch.equal(plain[1], torch.zeros_like(plain[1]))  # hidden weight: zeros
    for k, layer_pos in enumerate([-1.0, 0.0, 1.0] * 2):
        assert torch.allclose(layered[k][-1] - plain[k][-1],
                              torch.full_like(plain[k][-1], layer_pos))


@pytest.mark.parametrize("name, factory, _", ARCHITECTURES, ids=IDS)
def test_io_encoding_is_hnp_but_not_np_equivariant(name, factory, _):
    space = WeightSpace.from_module(factory())
    enc = IOSinusoidalEncoding(space, 3, 3)
    x = batch64(space, 3, 2, 4)
    hnp = random_permutation(space, "hnp", batch_size=3, generator=seeded(5))
    assert_batches_equal(enc(permute(x, hnp)), permute(enc(x), hnp))
    for io_layer in (0, space.n_layers):
        n = space.neurons[io_layer]
        if n < 2:
            continue
        swap = torch.arange(n)
        swap[[0, 1]] = swap[[1, 0]]
        perms = [torch.arange(m) for m in space.neurons]
        perms[io_layer] = swap
        perm = NeuronPermutation(space, tuple(perms))
        assert not enc(permute(x, perm)).allclose(permute(enc(x), perm), atol=1e-3)


def test_io_encoding_rejects_other_space():
    enc = IOSinusoidalEncoding(WeightSpace.from_module(make_mlp([2, 3, 1])))
    with pytest.raises(IncompatibleSpaceError):
        enc(random_batch(WeightSpace.from_module(make_mlp([2, 4, 1])), 1, 1, 0))
    with pytest.raises(GensightError, match="num_bands"):
        IOSinusoidalEncoding(enc.space, 3, 0)


# --- ChannelDropout ---------------------------------------------------------------------------

def test_channel_dropout_is_identity_in_eval_and_for_p0():
    space = WeightSpace.from_module(make_mlp([3, 4, 2]))
    x = random_batch(space, 2, 5, 0)
    drop = ChannelDropout(0.5).eval()
    assert drop(x) is x
    assert ChannelDropout(0.0).train()(x) is x
    with pytest.raises(GensightError, match=r"\[0, 1\]"):
        ChannelDropout(1.5)


def test_channel_dropout_zeroes_whole_channels_of_each_network():
    space = WeightSpace.from_module(make_cnn([2, 3, 4], 3))
    x = batch64(space, 16, 8, 1)  # randn: no exact zeros
    p = 0.4
    y = ChannelDropout(p, generator=seeded(0)).train()(x)
    ratios = [(t_out / t_in).flatten(2) for t_in, t_out in zip(x.tensors(), y.tensors(),
                                                                strict=True)]
    ratio = torch.cat(ratios, dim=2)  # (B, C, all entries of all tensors)
    first = ratio[:, :, :1]
    assert torch.allclose(ratio, first.expand_as(ratio))  # one factor per (member, channel)
    kept = first.squeeze(-1)
    zero = kept == 0
    assert zero.any() and torch.allclose(kept[~zero], torch.full_like(kept[~zero], 1 / (1 - p)))
    assert len({tuple(row) for row in (kept > 0).tolist()}) > 1  # members draw independently


def test_channel_dropout_is_equivariant_for_one_draw():
    space = WeightSpace.from_module(make_cnn([2, 3, 4], 3))
    x = batch64(space, 4, 6, 2)
    perm = random_permutation(space, "np", batch_size=4, generator=seeded(3))
    drop = ChannelDropout(0.5).train()
    torch.manual_seed(7)
    y = drop(x)
    torch.manual_seed(7)
    assert_batches_equal(drop(permute(x, perm)), permute(y, perm))
    g_drop = ChannelDropout(0.5, generator=seeded(9)).train()
    y = g_drop(x)
    g_drop.generator.manual_seed(9)
    assert_batches_equal(g_drop(permute(x, perm)), permute(y, perm))


def test_channel_dropout_preserves_the_mean():
    space = WeightSpace.from_module(make_mlp([2, 3, 1]))
    x = WeightBatch(space, [torch.ones(8, 1000, *lay.weight_shape) for lay in space.layers],
                    [torch.ones(8, 1000, *lay.bias_shape) for lay in space.layers])
    p = 0.3
    y = ChannelDropout(p, generator=seeded(11)).train()(x)
    # 8000 (member, channel) draws: std of the mean ~ sqrt(p / (1 - p) / 8000) ~ 0.007
    assert abs(y.flatten().mean().item() - 1.0) < 0.04
    dropped = (y.weights[0][:, :, 0, 0] == 0).float().mean().item()
    assert abs(dropped - p) < 0.03


# --- LearnedScale -----------------------------------------------------------------------------

def test_learned_scale_scales_each_tensor_by_its_own_scalar_and_learns():
    space = WeightSpace.from_module(make_cnn([2, 3], 2))  # 2 layers: 4 tensors
    x = random_batch(space, 3, 2, 0)
    scale = LearnedScale(space, init=0.01)
    assert scale.scale.shape == (4,) and torch.allclose(scale.scale, torch.full((4,), 0.01))
    assert scale(x).allclose(x * 0.01)
    with torch.no_grad():
        scale.scale.copy_(torch.tensor([2.0, 3.0, 5.0, 7.0]))
    y = scale(x)
    for k, (t_in, t_out) in enumerate(zip(x.tensors(), y.tensors(), strict=True)):
        assert torch.allclose(t_out, t_in * [2.0, 3.0, 5.0, 7.0][k])
    assert torch.equal(scale.weight_scales, torch.tensor([2.0, 3.0]))
    assert torch.equal(scale.bias_scales, torch.tensor([5.0, 7.0]))
    sum(t.sum() for t in y.tensors()).backward()
    expected = torch.stack([t.sum() for t in x.tensors()])
    assert torch.allclose(scale.scale.grad, expected)  # d/ds_k of s_k * sum(T_k)
    perm = random_permutation(space, "np", batch_size=3, generator=seeded(1))
    assert scale(permute(x, perm)).allclose(permute(y, perm))


def test_learned_scale_from_count_and_errors():
    space = WeightSpace.from_module(make_mlp([2, 3, 1]))
    assert LearnedScale(4, 0.5)(random_batch(space, 1, 1, 0)).weights[0].shape == (1, 1, 3, 2)
    with pytest.raises(ShapeMismatchError, match="6 scales"):
        LearnedScale(6)(random_batch(space, 1, 1, 0))
    with pytest.raises(GensightError, match="even"):
        LearnedScale(3)


# --- make_inr_classifier ----------------------------------------------------------------------

@pytest.mark.parametrize("symmetry", ["hnp", "np"])
def test_inr_classifier_is_invariant_to_hidden_permutations(symmetry):
    space = siren_space()
    torch.manual_seed(0)
    model = make_inr_classifier(space, symmetry=symmetry).double().eval()
    x = batch64(space, 3, 1, 1)
    logits = model(x)
    assert logits.shape == (3, 10)
    perm = random_permutation(space, "hnp", batch_size=3, generator=seeded(2))
    assert torch.allclose(model(permute(x, perm)), logits, rtol=0, atol=1e-10)
    assert not torch.allclose(model(batch64(space, 3, 1, 3)), logits, atol=1e-4)
    if symmetry == "np":  # the IO encoding lets the NP model see the input order
        swap = random_permutation(space, layers=[0], generator=seeded(4))
        assert not torch.equal(swap.perms[0], torch.arange(2))
        assert not torch.allclose(model(permute(x, swap)), logits, atol=1e-6)


def test_inr_classifier_structure_and_golden_parameter_count():
    """Space 2-3-1, one NF-Layer of 2 channels, Fourier m=1 (2 channels), head 4, 3 classes.

    HNP layer on 2-3-1 (hidden layer of 3 neurons permuted): invariant features G = W1 column
    means (2) + v1 (1) + W2 (1) + v2 (1) = 5; features per hidden neuron D = W1 row (2) + v1 (1)
    + W2 column (1) = 4; no doubly-permuted weight. Parameters c_in c_out (D^2 + G^2) +
    G c_out = 2 * 2 * 41 + 5 * 2 = 174. NP layer on an L = 2 MLP: c_in c_out (4 L^2 + 10 L -
    4) + 2 L c_out = 32 c_in c_out + 4 c_out, with c_in = 2 + (2 * 1 + 1) = 5 after an IO
    encoding of 1 band: 320 + 8 = 328. HNPPool of 2 channels: 2 * G = 10 features; head
    Linear(10, 4) + Linear(4, 3) = 44 + 15 = 59. Fourier features and dropout: no parameters.
    """
    space = WeightSpace.from_module(make_mlp([2, 3, 1]))
    kw = dict(channels=(2,), fourier=1, head=4, n_classes=3, io_bands=1, dropout=0.1)
    hnp = make_inr_classifier(space, symmetry="hnp", **kw)
    np_ = make_inr_classifier(space, symmetry="np", **kw)

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(hnp) == 174 + 59 == 233
    assert count(np_) == 328 + 59 == 387
    assert list(hnp._modules) == ["fourier", "encoder", "pool", "head"]
    assert list(np_._modules) == ["fourier", "io_encoding", "encoder", "pool", "head"]
    assert [type(m) for m in hnp.encoder] == [HNPLinear, Elementwise, ChannelDropout]
    assert isinstance(np_.encoder[0], NPLinear) and np_.encoder[0].in_channels == 5
    assert isinstance(hnp.pool, HNPPool) and hnp.head[0].in_features == 10
    assert isinstance(hnp.head[2], nn.Dropout)
    assert make_inr_classifier(space, fourier=None, dropout=0.0).encoder[0].in_channels == 1
    with pytest.raises(GensightError, match="unknown symmetry"):
        make_inr_classifier(space, symmetry="full")


def test_inr_classifier_trains_in_train_mode():
    space = WeightSpace.from_module(make_mlp([2, 4, 1]))
    torch.manual_seed(0)
    model = make_inr_classifier(space, symmetry="np", channels=(4, 4), fourier=4, head=8,
                                n_classes=3).train()
    x = random_batch(space, 6, 1, 0)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0, 1, 2]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
