"""Merging: identical networks, permuted copies, weighted averages, barriers, bad input."""

import numpy as np
import pytest
import torch
from torch import nn

from gensight.errors import GensightError, IncompatibleSpaceError, NonFiniteWeightsError
from gensight.merge import (
    RecurrentClassifier,
    average,
    interpolate,
    linear_path,
    loss_barrier,
    merge,
    weight_matching,
)
from gensight.weightspace import permuted_copy
from tests.factories import make_cnn, make_mlp, seeded

torch.set_num_threads(1)


def _params(m: nn.Module) -> list[torch.Tensor]:
    return [p.detach() for p in m.parameters()]


def _equal(a: nn.Module, b: nn.Module, atol: float = 0.0) -> bool:
    return all(torch.allclose(p, q, rtol=0, atol=atol)
               for p, q in zip(_params(a), _params(b), strict=True))


@pytest.mark.parametrize("factory,shape", [
    (lambda: make_mlp([5, 8, 6, 3]), (5,)),
    (lambda: make_cnn([2, 4, 3], 3), (2, 6, 6)),
    (lambda: RecurrentClassifier(3, 6, 4, "gru"), (5, 3)),
    (lambda: RecurrentClassifier(3, 6, 4, "lstm"), (5, 3)),
])
@pytest.mark.parametrize("reference", [0, 1, "average"])
def test_merging_identical_networks_returns_the_network(factory, shape, reference):
    torch.manual_seed(0)
    net = factory().double()
    x = torch.randn(16, *shape, dtype=torch.float64)
    for method in ("weight", "activation"):
        out = merge([net, net], method=method, x=x, reference=reference)
        assert _equal(out.model, net, atol=1e-15)


@pytest.mark.parametrize("factory", [lambda: make_mlp([5, 8, 6, 3]),
                                     lambda: make_cnn([2, 4, 5, 3], 3)])
def test_merging_permuted_copies_returns_the_network(factory):
    torch.manual_seed(1)
    net = factory().double()
    copies = [net] + [permuted_copy(net, seeded(s)) for s in (2, 3, 4)]
    assert not _equal(copies[1], net)
    assert _equal(merge(copies).model, net, atol=1e-14)
    assert not _equal(average(copies), net, atol=1e-3)  # naive averaging mixes units


def test_merging_to_an_external_reference_aligns_to_it():
    torch.manual_seed(9)
    net = make_mlp([5, 8, 6, 3]).double()
    copies = [permuted_copy(net, seeded(s)) for s in (10, 11)]
    out = merge(copies, reference=net)
    assert _equal(out.model, net, atol=1e-14)
    assert all(_equal(a, net) for a in out.aligned)
    with pytest.raises(IncompatibleSpaceError, match="network 2 has another architecture"):
        merge(copies, reference=make_mlp([5, 8, 7, 3]))


def test_weighted_merge_matches_a_hand_computation():
    a = nn.Sequential(nn.Linear(1, 1))
    b = nn.Sequential(nn.Linear(1, 1))
    with torch.no_grad():  # no hidden layer: nothing to permute, merge = weighted average
        a[0].weight.fill_(1.0)
        a[0].bias.fill_(-2.0)
        b[0].weight.fill_(4.0)
        b[0].bias.fill_(6.0)
    out = merge([a, b], weights=[1, 3]).model  # 0.25 * a + 0.75 * b
    assert out[0].weight.item() == pytest.approx(0.25 * 1 + 0.75 * 4)
    assert out[0].bias.item() == pytest.approx(0.25 * -2 + 0.75 * 6)
    assert average([a, b], weights=[2, 2])[0].weight.item() == pytest.approx(2.5)


def test_weighted_merge_of_aligned_networks_by_hand():
    torch.manual_seed(5)
    a, b = make_mlp([4, 6, 3]).double(), make_mlp([4, 6, 3]).double()
    perm = weight_matching(a, b)
    b_aligned = merge([a, b]).aligned[1]
    w = np.array([0.2, 0.8])
    out = merge([a, b], weights=[1, 4]).model
    for pa, pb, po in zip(_params(a), _params(b_aligned), _params(out), strict=True):
        assert torch.allclose(po, w[0] * pa + w[1] * pb, atol=1e-14)
    assert torch.equal(b_aligned[0].weight, b[0].weight[perm.perms[1]])


def _spread(out) -> float:
    """``sum_i ||aligned_i - merged||^2`` over all parameters."""
    return sum(float(((p - q) ** 2).sum()) for a in out.aligned
               for p, q in zip(_params(a), _params(out.model), strict=True))


def _others_mean(aligned: list[nn.Module], i: int) -> nn.Module:
    others = [a for j, a in enumerate(aligned) if j != i]
    return average(others)


@pytest.mark.parametrize("seed", [6, 16, 26])
def test_merge_to_average_is_mergemany(seed):
    # Git Re-Basin's MergeMany (Alg. 3): at convergence no member can be re-aligned to the
    # mean of the *other* members; the members end up closer together than when aligned to
    # member 0, and some permutations differ from that alignment.
    torch.manual_seed(seed)
    nets = [make_mlp([4, 12, 10, 3]).double() for _ in range(4)]
    x = torch.randn(16, 4, dtype=torch.float64)
    out = merge(nets, reference="average", max_rounds=50, seed=seed)
    to_first = merge(nets, reference=0, seed=seed)
    assert 1 <= out.iterations < 50  # converged
    for i, (net, aligned) in enumerate(zip(nets, out.aligned, strict=True)):
        assert torch.allclose(net(x), aligned(x), atol=1e-12)
        perm = weight_matching(_others_mean(out.aligned, i), aligned, seed=seed)
        assert all(torch.equal(p, torch.arange(len(p))) for p in perm.perms), i
    assert _spread(out) < _spread(to_first) - 1e-9
    assert any(not torch.equal(p, q) for a, b in zip(out.permutations, to_first.permutations,
                                                     strict=True)
               for p, q in zip(a.perms, b.perms, strict=True))


def test_merge_to_average_is_seeded_and_weighted():
    torch.manual_seed(3)
    nets = [make_mlp([4, 10, 3]).double() for _ in range(3)]
    a = merge(nets, reference="average", seed=1)
    b = merge(nets, reference="average", seed=1)
    assert _equal(a.model, b.model)
    # all the weight on member 1: merged = member 1 (permuted), the others aligned to it
    x = torch.randn(8, 4, dtype=torch.float64)
    one = merge(nets, reference="average", weights=[0, 1, 0])
    assert _equal(one.model, one.aligned[1])
    assert torch.allclose(one.model(x), nets[1](x), atol=1e-12)
    single = merge(nets[:1], reference="average")
    assert _equal(single.model, nets[0]) and single.iterations == 1


def test_barrier_is_zero_at_the_endpoints_and_for_identical_networks():
    torch.manual_seed(7)
    a, b = make_mlp([4, 8, 3]), make_mlp([4, 8, 3])
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    path = linear_path(a, b, x, y, points=5)
    assert list(path["alpha"]) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert path["barrier"].iloc[0] == 0 and abs(path["barrier"].iloc[-1]) < 1e-6
    assert loss_barrier(a, a, x, y) == pytest.approx(0.0, abs=1e-6)
    mid = interpolate(a, b, 0.5)
    assert torch.allclose(mid[0].weight, (a[0].weight + b[0].weight) / 2)
    # the permuted copy is a different point on the weight space; aligned, the path is flat
    c = permuted_copy(a, seeded(8))
    assert loss_barrier(a, merge([a, c]).aligned[1], x, y) == pytest.approx(0.0, abs=1e-6)


def test_bad_input_is_named():
    a = make_mlp([4, 8, 3])
    with pytest.raises(GensightError, match="no networks given"):
        merge([])
    with pytest.raises(GensightError, match="no networks given"):
        average([])
    with pytest.raises(IncompatibleSpaceError, match=r"network 2 has another architecture"):
        merge([a, make_mlp([4, 8, 3]), make_mlp([4, 7, 3])])
    bad = make_mlp([4, 8, 3])
    with torch.no_grad():
        bad[0].weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match=r"network 1: parameter '0.weight'"):
        merge([a, bad])
    with pytest.raises(GensightError, match=r"weights has 3 entries; expected one per network"):
        merge([a, a], weights=[1, 2, 3])
    with pytest.raises(GensightError, match=r"non-negative"):
        merge([a, a], weights=[1, -1])
    with pytest.raises(GensightError, match=r"reference 5 is not a member index 0..1"):
        merge([a, a], reference=5)
    with pytest.raises(GensightError, match=r"reference must be a member index or 'average'"):
        merge([a, a], reference="mean")
    with pytest.raises(GensightError, match="needs inputs x"):
        merge([a, a], method="activation")
