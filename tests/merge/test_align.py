"""Alignment: exact recovery of known permutations, function preservation, recurrent axes."""

import pytest
import torch
from torch import nn

from gensight.errors import IncompatibleSpaceError, NonFiniteWeightsError, UnsupportedModuleError
from gensight.merge import (
    Alignment,
    RecurrentClassifier,
    ResidualMLP,
    activation_matching,
    align,
    alignment_objective,
    apply_permutation,
    find_permutation,
    merge,
    perm_spec,
    weight_matching,
)
from gensight.weightspace import NeuronPermutation, WeightSpace, permute_module, random_permutation
from tests.factories import ARCHITECTURES, make_cnn, make_mlp, seeded

torch.set_num_threads(1)


def _same_perm(found: NeuronPermutation, truth: NeuronPermutation) -> bool:
    # found maps the permuted copy back to the original: it is truth's inverse
    return all(torch.equal(f, t) for f, t in zip(found.inverse().perms, truth.perms, strict=True))


@pytest.mark.parametrize(("name", "factory", "shape"), ARCHITECTURES,
                         ids=[a[0] for a in ARCHITECTURES])
def test_weight_matching_recovers_a_known_permutation(name, factory, shape):
    torch.manual_seed(0)
    a = factory().double()
    truth = random_permutation(WeightSpace.from_module(a), "hnp", generator=seeded(1))
    b = permute_module(a, truth)
    found = weight_matching(a, b)
    assert isinstance(found, NeuronPermutation)
    assert _same_perm(found, truth)
    x = torch.randn(5, *shape, generator=seeded(2), dtype=torch.float64)
    assert torch.equal(apply_permutation(b, found)(x), a(x))


@pytest.mark.parametrize("factory,shape", [
    (lambda: make_mlp([6, 9, 7, 3], act=nn.Tanh), (6,)),
    (lambda: make_cnn([2, 5, 4], 3), (2, 6, 6)),
])
def test_activation_matching_recovers_a_known_permutation(factory, shape):
    torch.manual_seed(3)
    a = factory().double()
    truth = random_permutation(WeightSpace.from_module(a), "hnp", generator=seeded(4))
    b = permute_module(a, truth)
    x = torch.randn(64, *shape, generator=seeded(5), dtype=torch.float64)
    assert _same_perm(activation_matching(a, b, x), truth)


@pytest.mark.parametrize(("name", "factory", "shape"), ARCHITECTURES[1:5],
                         ids=[a[0] for a in ARCHITECTURES[1:5]])
@pytest.mark.parametrize("method", ["weight", "activation"])
def test_aligned_network_computes_the_same_function(name, factory, shape, method):
    torch.manual_seed(6)
    a, b = factory().double(), factory().double()  # independent: no exact match exists
    x = torch.randn(32, *shape, generator=seeded(7), dtype=torch.float64)
    b_aligned = align(a, b, method=method, x=x)
    assert torch.allclose(b_aligned(x), b(x), atol=1e-12)
    assert not all(torch.equal(p, q) for p, q in zip(b.parameters(), b_aligned.parameters(),
                                                     strict=True))


def test_weight_matching_does_not_lower_the_objective():
    torch.manual_seed(8)
    a, b = make_mlp([5, 16, 16, 3]).double(), make_mlp([5, 16, 16, 3]).double()
    found = weight_matching(a, b)
    identity = random_permutation(WeightSpace.from_module(a), layers=[])
    assert alignment_objective(a, b, found) > alignment_objective(a, b, identity)


@pytest.mark.parametrize("cell,gates", [("gru", 3), ("lstm", 4)])
def test_recurrent_classifier_is_pytorchs_gru_and_lstm(cell, gates):
    torch.manual_seed(9)
    net = RecurrentClassifier(4, 6, 3, cell).double()
    x = torch.randn(5, 7, 4, dtype=torch.float64)
    out, _ = net.rnn(x)
    assert torch.allclose(net(x), net.readout(out[:, -1]), atol=1e-12)
    assert net.rnn.weight_hh_l0.shape == (gates * 6, 6)
    images = torch.rand(5, 1, 7, 4, dtype=torch.float64)  # rows are steps
    assert torch.allclose(net(images), net(images[:, 0]))


@pytest.mark.parametrize("cell,gates", [("gru", 3), ("lstm", 4)])
def test_recurrent_weights_are_permuted_on_both_axes(cell, gates):
    torch.manual_seed(10)
    net = RecurrentClassifier(4, 6, 3, cell).double()
    p = torch.randperm(6, generator=seeded(11))
    moved = apply_permutation(net, Alignment(perm_spec(net), {"hidden": p}))
    rows = torch.cat([p + g * 6 for g in range(gates)])
    w_hh = net.rnn.weight_hh_l0
    assert torch.equal(moved.rnn.weight_hh_l0, w_hh[rows][:, p])  # P W_hh P^T per gate block
    assert torch.equal(moved.rnn.weight_ih_l0, net.rnn.weight_ih_l0[rows])
    assert torch.equal(moved.rnn.bias_hh_l0, net.rnn.bias_hh_l0[rows])
    assert torch.equal(moved.readout.weight, net.readout.weight[:, p])
    assert torch.equal(moved.readout.bias, net.readout.bias)
    x = torch.randn(5, 7, 4, dtype=torch.float64)
    assert torch.allclose(moved(x), net(x), atol=1e-12)
    # a permutation of only one axis of W_hh changes the function
    with torch.no_grad():
        moved.rnn.weight_hh_l0.copy_(w_hh[rows])
    assert not torch.allclose(moved(x), net(x), atol=1e-6)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("method", ["weight", "activation"])
def test_recurrent_alignment_recovers_a_known_permutation(cell, method):
    torch.manual_seed(12)
    a = RecurrentClassifier(3, 8, 4, cell).double()
    p = torch.randperm(8, generator=seeded(13))
    b = apply_permutation(a, Alignment(perm_spec(a), {"hidden": p}))
    x = torch.randn(32, 5, 3, generator=seeded(14), dtype=torch.float64)
    found = weight_matching(a, b) if method == "weight" else activation_matching(a, b, x)
    assert isinstance(found, Alignment)
    assert torch.equal(found.perms["hidden"], p.argsort())
    back = apply_permutation(b, found)
    assert all(torch.equal(u, v) for u, v in zip(back.parameters(), a.parameters(), strict=True))


def test_cost_and_permutations_stay_on_the_cpu_for_float32_networks():
    # the assignment runs on the CPU whatever the parameters' dtype/device; results are
    # CPU int64 permutations that validate on their own device
    torch.manual_seed(16)
    a, b = RecurrentClassifier(3, 8, 4, "gru"), RecurrentClassifier(3, 8, 4, "gru")
    x = torch.randn(16, 5, 3)
    for method in ("weight", "activation"):
        p = find_permutation(a, b, method=method, x=x).perms["hidden"]
        assert p.dtype == torch.int64 and p.device.type == "cpu"
        Alignment(perm_spec(a), {"hidden": p.clone()})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_cuda_networks_align_as_on_the_cpu(cell):
    import copy

    torch.manual_seed(15)
    a = RecurrentClassifier(3, 8, 4, cell).double()
    b = RecurrentClassifier(3, 8, 4, cell).double()
    x = torch.randn(32, 5, 3, dtype=torch.float64)
    ac, bc, xc = copy.deepcopy(a).cuda(), copy.deepcopy(b).cuda(), x.cuda()
    for method in ("weight", "activation"):
        cpu = find_permutation(a, b, method=method, x=x).perms["hidden"]
        gpu = find_permutation(ac, bc, method=method, x=xc).perms["hidden"]
        assert torch.equal(cpu, gpu.cpu())
        Alignment(perm_spec(a), {"hidden": gpu.cuda()})  # checked on the perm's device
        out = merge([ac, bc, ac], method=method, x=xc, reference="average")
        assert next(out.model.parameters()).is_cuda
        ref = merge([a, b, a], method=method, x=x, reference="average")
        for p, q in zip(out.model.parameters(), ref.model.parameters(), strict=True):
            assert torch.allclose(p.cpu(), q, atol=1e-10)


def test_residual_stream_is_tied_and_recovered():
    torch.manual_seed(15)
    a = ResidualMLP(6, 5, 4, 2, 3).double()
    truth = {"stream": torch.randperm(5, generator=seeded(16)),
             "block0": torch.randperm(4, generator=seeded(17)),
             "block1": torch.randperm(4, generator=seeded(18))}
    b = apply_permutation(a, Alignment(perm_spec(a), truth))
    x = torch.randn(8, 6, dtype=torch.float64)
    assert torch.allclose(a(x), b(x), atol=1e-12)
    assert torch.equal(b.blocks[1][0].weight, a.blocks[1][0].weight[truth["block1"]]
                       [:, truth["stream"]])
    for found in (weight_matching(a, b), activation_matching(a, b, x)):
        assert {k: v.argsort().tolist() for k, v in found.perms.items()} == \
            {k: v.tolist() for k, v in truth.items()}


def test_bad_input_is_named():
    a, b = make_mlp([5, 8, 3]), make_mlp([5, 9, 3])
    with pytest.raises(IncompatibleSpaceError, match=r"network 1 has another architecture.*"
                       r"\(9, 5\)"):
        weight_matching(a, b)
    with pytest.raises(IncompatibleSpaceError, match="network 1"):
        weight_matching(a, RecurrentClassifier(5, 8, 3))
    c = make_mlp([5, 8, 3])
    with torch.no_grad():
        c[2].bias[1] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match=r"network 1: parameter '2.bias'"):
        weight_matching(a, c)
    with pytest.raises(UnsupportedModuleError, match="LayerNorm"):
        weight_matching(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)),
                        nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)))
    with pytest.raises(Exception, match="at least 2 inputs"):
        activation_matching(a, make_mlp([5, 8, 3]), torch.randn(1, 5))
    with pytest.raises(Exception, match="unknown alignment method 'cosine'"):
        align(a, make_mlp([5, 8, 3]), method="cosine")


def test_one_parameter_loader_is_shared():
    import importlib

    align_mod, fleet_mod, merge_mod = (importlib.import_module(f"gensight.merge.{m}")
                                       for m in ("align", "fleet", "merge"))
    assert merge_mod._load is align_mod._load and fleet_mod._load is align_mod._load
