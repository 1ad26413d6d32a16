"""The invariant UNF model and the Deep Sets baseline (arXiv 2402.05232)."""

import pytest
import torch

from gensight.errors import GensightError, ShapeMismatchError
from gensight.nf import InvariantDeepSets, InvariantUNF, unf
from gensight.weightspace import WeightBatch, WeightSpace, permute, random_permutation
from tests.factories import make_cnn, make_mlp, seeded
from tests.nf.test_layers import random_batch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("factory", [lambda: make_mlp([5, 7, 4, 3]),
                                     lambda: make_cnn([2, 4, 3], 3)], ids=["mlp", "cnn"])
def test_invariant_unf_on_weight_spaces(factory):
    space = WeightSpace.from_module(factory())
    x = random_batch(space, 3, 1, seed=0).to(torch.float64)
    torch.manual_seed(0)
    model = InvariantUNF.from_weight_space(space, channels=(4, 4)).double()
    perm = random_permutation(space, "hnp", batch_size=3, generator=seeded(1))
    y = model(x)
    assert y.shape == (3, 1)
    assert torch.allclose(model(permute(x, perm)), y, atol=1e-10)
    assert not torch.allclose(y, y[:1].expand_as(y))            # depends on the weights
    inputs = random_permutation(space, "np", batch_size=3, generator=seeded(2), layers=[0])
    assert not torch.allclose(model(permute(x, inputs)), y, atol=1e-6)   # HNP, not NP


def test_invariant_unf_on_a_recurrent_spec():
    """An RNN layer: the hidden label on both axes of the recurrent weight."""
    spec = {"w_ih": ("h", "x"), "w_hh": ("h", "h"), "b": ("h",), "w_out": (None, "h")}
    shapes = {"w_ih": (5, 3), "w_hh": (5, 5), "b": (5,), "w_out": (2, 5)}
    torch.manual_seed(3)
    model = InvariantUNF(spec, shapes, channels=(4,), out_features=2).double()
    params = {k: torch.randn(4, 1, *v, generator=seeded(4), dtype=torch.float64)
              for k, v in shapes.items()}
    perms = unf.random_permutation(model.spec, shapes, seeded(5), batch_size=4)
    y = model(params)
    assert y.shape == (4, 2)
    assert torch.allclose(model(unf.permute(params, model.spec, perms)), y, atol=1e-10)
    # transposing the recurrent weight alone (not a symmetry) changes the output
    moved = dict(params, w_hh=params["w_hh"].transpose(-1, -2))
    assert not torch.allclose(model(moved), y, atol=1e-6)


def test_deep_sets_is_invariant_to_any_entry_permutation_within_a_tensor():
    space = WeightSpace.from_module(make_mlp([4, 6, 3]))
    x = random_batch(space, 2, 1, seed=6).to(torch.float64)
    torch.manual_seed(4)
    model = InvariantDeepSets(space, channels=(8,), head_hidden=(16,)).double()
    y = model(x)
    order = torch.randperm(24, generator=seeded(7))
    w0 = x.weights[0].flatten(2)[:, :, order].view_as(x.weights[0])
    shuffled = WeightBatch(space, [w0, x.weights[1]], list(x.biases))
    assert torch.allclose(model(shuffled), y, atol=1e-10)     # a set: entry order is lost
    # moving a value from one tensor to another is seen
    swapped = WeightBatch(space, [x.weights[0] * 0 + 1, x.weights[1]], list(x.biases))
    assert not torch.allclose(model(swapped), y, atol=1e-6)


def test_errors():
    space = WeightSpace.from_module(make_mlp([4, 6, 3]))
    other = WeightSpace.from_module(make_mlp([4, 5, 3]))
    with pytest.raises(GensightError, match="at least one UNF layer"):
        InvariantUNF.from_weight_space(space, channels=())
    with pytest.raises(ShapeMismatchError, match="from_weight_space"):
        InvariantUNF.from_weight_space(space)(random_batch(other, 1, 1, seed=0))
    with pytest.raises(ShapeMismatchError, match="raw weights"):
        InvariantDeepSets(space)(random_batch(space, 1, 2, seed=0))
    with pytest.raises(ShapeMismatchError, match="built for"):
        InvariantDeepSets(space)(random_batch(other, 1, 1, seed=0))
