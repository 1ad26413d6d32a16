import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gensight.errors import GensightError
from gensight.weightspace import (
    NeuronPermutation,
    WeightBatch,
    WeightSpace,
    permute,
    permute_module,
    random_permutation,
)
from tests.factories import ARCHITECTURES, make_mlp, seeded


@pytest.mark.parametrize("name, factory, in_shape", ARCHITECTURES,
                         ids=[a[0] for a in ARCHITECTURES])
def test_hidden_permutation_preserves_function(name, factory, in_shape):
    torch.manual_seed(0)
    for trial in range(3):
        net = factory()
        space = WeightSpace.from_module(net)
        perm = random_permutation(space, "hnp", generator=seeded(trial))
        permuted = permute_module(net, perm)
        x = torch.randn(8, *in_shape)
        assert torch.allclose(net(x), permuted(x), atol=1e-5)
        if space.n_layers > 1:  # a real permutation actually moved some weights
            moved = any(not torch.equal(p, torch.arange(len(p))) for p in perm.perms)
            changed = any(not torch.equal(a, b) for a, b in
                          zip(net.parameters(), permuted.parameters(), strict=True))
            assert moved == changed


def test_output_permutation_permutes_outputs():
    net = make_mlp([4, 6, 5])
    space = WeightSpace.from_module(net)
    perm = random_permutation(space, layers=[space.n_layers], generator=seeded(1))
    permuted = permute_module(net, perm)
    x = torch.randn(3, 4)
    assert torch.allclose(permuted(x), net(x)[:, perm.perms[-1]], atol=1e-6)


def test_input_permutation_matches_permuted_inputs():
    net = make_mlp([4, 6, 5])
    space = WeightSpace.from_module(net)
    perm = random_permutation(space, layers=[0], generator=seeded(2))
    permuted = permute_module(net, perm)
    x = torch.randn(3, 4)
    # W(1) -> W(1) P_0^T, so the permuted net applied to P_0 x equals the original on x.
    assert torch.allclose(permuted(x[:, perm.perms[0]]), net(x), atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(widths=st.lists(st.integers(1, 6), min_size=2, max_size=5), seed=st.integers(0, 10_000))
def test_batched_permutation_equals_per_member_and_inverts(widths, seed):
    torch.manual_seed(seed)
    nets = [make_mlp(widths) for _ in range(3)]
    batch = WeightBatch.from_modules(nets)
    perm = random_permutation(batch.space, "np", batch_size=3, generator=seeded(seed))
    out = permute(batch, perm)
    for m in range(3):
        single = NeuronPermutation(batch.space, tuple(p[m] for p in perm.perms))
        assert permute(batch[m], single).allclose(out[m], rtol=0, atol=0)
    assert permute(out, perm.inverse()).allclose(batch, rtol=0, atol=0)


def test_invalid_permutations_rejected():
    space = WeightSpace.from_module(make_mlp([3, 4, 2]))
    with pytest.raises(GensightError, match="not a permutation"):
        NeuronPermutation(space, (torch.arange(3), torch.tensor([0, 0, 1, 2]), torch.arange(2)))
    with pytest.raises(GensightError, match="neuron layer 1"):
        NeuronPermutation(space, (torch.arange(3), torch.arange(5), torch.arange(2)))
    with pytest.raises(GensightError, match="out of range"):
        random_permutation(space, layers=[7])
