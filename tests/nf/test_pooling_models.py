import pytest
import torch
from torch import nn

from gensight.errors import GensightError
from gensight.nf import (
    Elementwise,
    HNPLinear,
    HNPPool,
    InvariantNFN,
    NPLinear,
    NPPool,
    WeightSpaceNorm,
)
from gensight.weightspace import WeightBatch, WeightSpace, permute, random_permutation
from tests.factories import ARCHITECTURES, make_cnn, make_mlp, seeded
from tests.nf.test_layers import random_batch

IDS = [a[0] for a in ARCHITECTURES]


@pytest.mark.parametrize("name, factory, _", ARCHITECTURES, ids=IDS)
@pytest.mark.parametrize("agg", ["mean", "sum", "max"])
def test_pools_are_invariant(name, factory, _, agg):
    space = WeightSpace.from_module(factory())
    x = random_batch(space, 3, 2, 1)
    for pool, sym in ((HNPPool(space, agg), "hnp"), (NPPool(space, agg), "np")):
        perm = random_permutation(space, sym, batch_size=3, generator=seeded(2))
        out = pool(x)
        assert out.shape == (3, pool.out_features(2))
        assert torch.allclose(pool(permute(x, perm)), out, atol=1e-5)


def test_pool_golden_values_on_mlp():
    space = WeightSpace.from_module(make_mlp([2, 3, 2]))
    w1 = torch.arange(6.0).reshape(1, 1, 3, 2)  # rows = hidden neurons, cols = inputs
    v1 = torch.tensor([[[1.0, 2.0, 6.0]]])
    w2 = torch.arange(6.0).reshape(1, 1, 2, 3) * 10  # rows = outputs, cols = hidden
    v2 = torch.tensor([[[-1.0, 1.0]]])
    x = WeightBatch(space, [w1, w2], [v1, v2])
    # NP: one mean per block.
    assert torch.allclose(NPPool(space)(x), torch.tensor([[2.5, 3.0, 25.0, 0.0]]))
    # HNP: W1 pooled over hidden rows (per input), v1 mean, W2 over hidden cols (per output),
    # v2 kept whole.
    expected = torch.tensor([[2.0, 3.0, 3.0, 10.0, 40.0, -1.0, 1.0]])
    assert torch.allclose(HNPPool(space)(x), expected)
    assert torch.allclose(HNPPool(space, "max")(x)[0, :2], torch.tensor([4.0, 5.0]))


def test_hnp_pool_sees_input_order_np_pool_does_not():
    space = WeightSpace.from_module(make_mlp([4, 5, 3]))
    x = random_batch(space, 2, 1, 4)
    perm = random_permutation(space, layers=[0], generator=seeded(3))
    assert not torch.allclose(HNPPool(space)(permute(x, perm)), HNPPool(space)(x), atol=1e-4)
    assert torch.allclose(NPPool(space)(permute(x, perm)), NPPool(space)(x), atol=1e-6)


def test_unknown_aggregation():
    space = WeightSpace.from_module(make_mlp([4, 3]))
    with pytest.raises(ValueError, match="unknown aggregation 'median'"):
        HNPPool(space, "median")


def test_norm_and_elementwise_are_equivariant_and_normalize():
    space = WeightSpace.from_module(make_cnn([2, 3, 4], 3))
    x = random_batch(space, 2, 3, 5).map(lambda t: 5 * t + 2)
    norm = WeightSpaceNorm(space, 3)
    perm = random_permutation(space, "np", batch_size=2, generator=seeded(6))
    y = norm(x)
    assert norm(permute(x, perm)).allclose(permute(y, perm), atol=1e-5)
    w = y.weights[1]
    assert torch.allclose(w.mean(dim=(2, 3, 4, 5)), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(w.var(dim=(2, 3, 4, 5), correction=0), torch.ones(2, 3), atol=1e-3)
    act = Elementwise(nn.ReLU())
    assert act(permute(x, perm)).allclose(permute(act(x), perm))
    assert all((t >= 0).all() for t in act(x).tensors())


@pytest.mark.parametrize("name, factory, _", ARCHITECTURES, ids=IDS)
@pytest.mark.parametrize("symmetry", ["hnp", "np"])
def test_invariant_nfn_is_invariant(name, factory, _, symmetry):
    space = WeightSpace.from_module(factory())
    torch.manual_seed(0)
    model = InvariantNFN(space, symmetry=symmetry, channels=(4, 4), out_features=2,
                         head_hidden=(8,), norm=True)
    x = random_batch(space, 3, 1, 6)
    perm = random_permutation(space, symmetry, batch_size=3, generator=seeded(7))
    out = model(x)
    assert out.shape == (3, 2)
    assert torch.allclose(model(permute(x, perm)), out, atol=1e-5)
    other = random_batch(space, 3, 1, 8)
    assert not torch.allclose(model(other), out, atol=1e-4)


def test_invariant_nfn_builds_the_requested_stack():
    space = WeightSpace.from_module(make_mlp([4, 6, 3]))
    model = InvariantNFN(space, symmetry="np", channels=(5, 7), io_embed=True)
    layers = [m for m in model.encoder if isinstance(m, NPLinear)]
    assert [(lay.in_channels, lay.out_channels, lay.io_embed) for lay in layers] == [
        (1, 5, True), (5, 7, False)]
    hnp = InvariantNFN(space, channels=(3,))
    assert isinstance(hnp.encoder[0], HNPLinear)
    assert hnp.head[0].in_features == HNPPool(space).out_features(3)
    with pytest.raises(GensightError, match="io_embed"):
        InvariantNFN(space, symmetry="hnp", io_embed=True)
    with pytest.raises(GensightError, match="channels is empty"):
        InvariantNFN(space, channels=())


@pytest.mark.parametrize("name, factory, _", ARCHITECTURES, ids=IDS)
def test_np_nfn_with_io_encoding_everywhere_and_hnp_pool_is_hnp_invariant(name, factory, _):
    # the authors' NP generalization predictor: IO-encoding in every layer, HNP pool
    space = WeightSpace.from_module(factory())
    model = InvariantNFN(space, symmetry="np", channels=(3, 4), io_embed="all",
                         pool="hnp").double()
    layers = [m for m in model.encoder if isinstance(m, NPLinear)]
    assert [lay.io_embed for lay in layers] == [True, True]
    assert isinstance(model.pool, HNPPool)
    x = random_batch(space, 3, 1, 5).to(torch.float64)
    out = model(x)
    hidden = random_permutation(space, "hnp", batch_size=3, generator=seeded(6))
    torch.testing.assert_close(model(permute(x, hidden)), out, rtol=1e-9, atol=1e-9)
    every = random_permutation(space, "np", batch_size=3, generator=seeded(7))
    assert not torch.allclose(model(permute(x, every)), out, atol=1e-6)
    with pytest.raises(GensightError, match="io_embed must be"):
        InvariantNFN(space, symmetry="np", io_embed="last")
    with pytest.raises(GensightError, match="unknown pool"):
        InvariantNFN(space, pool="max")


def test_invariant_nfn_learns_a_weight_statistic():
    """The model can be trained: it fits the mean squared weight of random MLPs."""
    torch.manual_seed(0)
    space = WeightSpace.from_module(make_mlp([3, 8, 2]))
    scales = torch.rand(64) * 2 + 0.1
    x = random_batch(space, 64, 1, 9).map(lambda t: t * scales.view(-1, *[1] * (t.dim() - 1)))
    y = (x.flatten() ** 2).mean(1, keepdim=True)
    model = InvariantNFN(space, channels=(8,), head_hidden=(16,))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = nn.functional.mse_loss(model(x), y).item()
    for _ in range(200):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
