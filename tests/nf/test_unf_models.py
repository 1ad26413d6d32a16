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


def _gru_spec(cell: str):
    from gensight.nf.unf import Gated

    g = 3 if cell == "gru" else 4
    return {"rnn.weight_ih_l0": (Gated(g, "h"), None), "rnn.weight_hh_l0": (Gated(g, "h"), "h"),
            "rnn.bias_ih_l0": (Gated(g, "h"),), "rnn.bias_hh_l0": (Gated(g, "h"),),
            "head.weight": (None, "h"), "head.bias": (None,)}


class _Recurrent(torch.nn.Module):
    def __init__(self, cell: str):
        super().__init__()
        kind = torch.nn.GRU if cell == "gru" else torch.nn.LSTM
        self.rnn = kind(3, 5, batch_first=True)
        self.head = torch.nn.Linear(5, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gated_spec_preserves_gru_and_lstm_functions(cell):
    """Gated(g, "h"): the hidden permutation acts inside every gate block of the input and
    recurrent weights and biases, on the columns of the recurrent weight and of the head."""
    from gensight.nf.unf import PermSpec

    torch.manual_seed(6)
    net = _Recurrent(cell).double().eval()
    spec = PermSpec(_gru_spec(cell))
    sd = {k: v.detach()[None, None] for k, v in net.state_dict().items()}
    shapes = {k: tuple(v.shape[2:]) for k, v in sd.items()}
    perms = unf.random_permutation(spec, shapes, seeded(8))
    moved = unf.permute(sd, spec, perms)
    x = torch.randn(4, 6, 3, dtype=torch.float64, generator=seeded(9))
    y = net(x)
    net.load_state_dict({k: v[0, 0] for k, v in moved.items()})
    assert torch.allclose(net(x), y, atol=1e-12)
    # the same hidden permutation applied as if the rows were laid out hidden-major,
    # (n, gates) instead of PyTorch's gate-major (gates, n), changes the function
    g = 3 if cell == "gru" else 4
    (label,) = spec.labels
    p = perms[label]

    def hidden_major(t):          # (1, 1, g*n, ...) rows permuted as an (n, g) layout
        rows = t.reshape(1, 1, 5, g, *t.shape[3:])[:, :, p]
        return rows.reshape(t.shape)

    bad = dict(moved)
    for key in ("rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0"):
        bad[key] = hidden_major(sd[key])
    bad["rnn.weight_hh_l0"] = bad["rnn.weight_hh_l0"][:, :, :, p]
    net.load_state_dict({k: v[0, 0] for k, v in bad.items()})
    assert not torch.allclose(net(x), y, atol=1e-6)


def test_unf_layer_on_a_gated_spec_is_equivariant():
    from gensight.nf import UNFLinear
    from gensight.nf.unf import PermSpec

    spec = PermSpec(_gru_spec("gru"))
    shapes = {"rnn.weight_ih_l0": (15, 3), "rnn.weight_hh_l0": (15, 5), "rnn.bias_ih_l0": (15,),
              "rnn.bias_hh_l0": (15,), "head.weight": (2, 5), "head.bias": (2,)}
    torch.manual_seed(7)
    layer = UNFLinear(spec, shapes, 2, 3).double()
    params = {k: torch.randn(2, 2, *v, generator=seeded(10), dtype=torch.float64)
              for k, v in shapes.items()}
    perms = unf.random_permutation(spec, shapes, seeded(11), batch_size=2)
    out = layer(params)
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (2, 3, *v)
                                                           for k, v in shapes.items()}
    assert layer.spec == spec        # the spec as given; permute accepts it on outputs
    moved = layer(unf.permute(params, spec, perms))
    expected = unf.permute(out, layer.spec, perms)
    assert all(torch.allclose(moved[k], expected[k], atol=1e-10) for k in out)
    model = InvariantUNF(spec, shapes, channels=(3,), in_channels=2).double()
    assert torch.allclose(model(unf.permute(params, spec, perms)), model(params), atol=1e-10)
    with pytest.raises(ShapeMismatchError, match="not a multiple of its 3 gate blocks"):
        UNFLinear(spec, dict(shapes, **{"rnn.bias_ih_l0": (14,)}), 1, 1)
