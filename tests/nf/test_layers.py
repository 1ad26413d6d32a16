"""NF-Layers: equivariance, non-triviality, and maximality (arXiv 2302.14040)."""

import pytest
import torch

from gensight.errors import ShapeMismatchError
from gensight.nf import HNPLinear, NPLinear, num_parameters
from gensight.weightspace import (
    NeuronPermutation,
    WeightBatch,
    WeightSpace,
    permute,
    random_permutation,
)
from tests.factories import ARCHITECTURES, make_cnn, make_mlp, seeded

IDS = [a[0] for a in ARCHITECTURES]


def random_batch(space: WeightSpace, batch: int, channels: int, seed: int) -> WeightBatch:
    g = seeded(seed)
    return WeightBatch(
        space,
        [torch.randn(batch, channels, *lay.weight_shape, generator=g) for lay in space.layers],
        [torch.randn(batch, channels, *lay.bias_shape, generator=g) for lay in space.layers],
    )


def space_of(factory) -> WeightSpace:
    return WeightSpace.from_module(factory())


@pytest.mark.parametrize("name, factory, _", ARCHITECTURES, ids=IDS)
@pytest.mark.parametrize("layer_cls, symmetry", [(HNPLinear, "hnp"), (NPLinear, "np")])
def test_equivariance(name, factory, _, layer_cls, symmetry):
    space = space_of(factory)
    torch.manual_seed(0)
    layer = layer_cls(space, 2, 3)
    for trial in range(3):
        x = random_batch(space, 4, 2, trial)
        perm = random_permutation(space, symmetry, batch_size=4, generator=seeded(100 + trial))
        assert layer(permute(x, perm)).allclose(permute(layer(x), perm), atol=1e-5)


@pytest.mark.parametrize("name, factory, _", ARCHITECTURES, ids=IDS)
def test_hnp_layer_distinguishes_input_and_output_neuron_order(name, factory, _):
    """An HNP layer is not NP-equivariant: it sees which input/output neuron is which."""
    space = space_of(factory)
    torch.manual_seed(1)
    layer = HNPLinear(space, 1, 2)
    x = random_batch(space, 2, 1, 3)
    for io_layer in (0, space.n_layers):
        n = space.neurons[io_layer]
        if n < 2:
            continue
        perm, seed = None, 5
        while perm is None or torch.equal(perm.perms[io_layer], torch.arange(n)):
            perm = random_permutation(space, layers=[io_layer], generator=seeded(seed))
            seed += 1
        assert not layer(permute(x, perm)).allclose(permute(layer(x), perm), atol=1e-3)


@pytest.mark.parametrize("name, factory, _", ARCHITECTURES, ids=IDS)
def test_np_layer_with_io_embedding_is_hnp_but_not_np_equivariant(name, factory, _):
    space = space_of(factory)
    torch.manual_seed(2)
    layer = NPLinear(space, 2, 3, io_embed=True)
    x = random_batch(space, 3, 2, 7)
    hnp = random_permutation(space, "hnp", batch_size=3, generator=seeded(8))
    assert layer(permute(x, hnp)).allclose(permute(layer(x), hnp), atol=1e-5)
    outputs = random_permutation(space, layers=[space.n_layers], generator=seeded(9))
    assert not layer(permute(x, outputs)).allclose(permute(layer(x), outputs), atol=1e-3)


@pytest.mark.parametrize("layer_cls", [HNPLinear, NPLinear])
def test_outputs_depend_on_every_block_and_every_parameter_is_used(layer_cls):
    space = space_of(lambda: make_cnn([2, 3, 4], 3))
    torch.manual_seed(3)
    layer = layer_cls(space, 2, 2)
    x = random_batch(space, 2, 2, 11)
    base = layer(x)
    for k, t in enumerate(x.tensors()):  # changing any one block changes the output
        tensors = list(x.tensors())
        tensors[k] = t + 1.0
        n = space.n_layers
        y = layer(WeightBatch(space, tensors[:n], tensors[n:]))
        assert not y.allclose(base, atol=1e-4), f"block {k} ignored"
    loss = sum((t ** 2).sum() for t in base.tensors())
    loss.backward()
    for pname, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{pname} unused"


@pytest.mark.parametrize("name, factory, _", ARCHITECTURES, ids=IDS)
@pytest.mark.parametrize("symmetry", ["hnp", "np"])
def test_parameter_count_matches_formula(name, factory, _, symmetry):
    space = space_of(factory)
    for ci, co in [(1, 1), (2, 5), (4, 3)]:
        layer = (HNPLinear(space, ci, co) if symmetry == "hnp" else NPLinear(space, ci, co))
        assert sum(p.numel() for p in layer.parameters()) == num_parameters(
            space, ci, co, symmetry)


@pytest.mark.parametrize("L", [1, 2, 3, 5])
def test_np_mlp_closed_form(L):
    space = space_of(lambda: make_mlp([3] + [4] * (L - 1) + [2]))
    ci, co = 3, 5
    assert NPLinear.num_parameters(space, ci, co) == ci * co * (4 * L * L + 10 * L - 4) + 2 * L * co
    layer = NPLinear(space, ci, co, io_embed=True)
    assert sum(p.numel() for p in layer.parameters()) == NPLinear.num_parameters(
        space, ci, co, io_embed=True)


# --- maximality: brute force over the group's orbits -----------------------------------------

def _n_coords(space: WeightSpace) -> int:
    """Entries of a flattened one-channel batch (zero biases of bias-free layers included)."""
    return random_batch(space, 1, 1, 0).flatten().shape[1]


def _generator_actions(space: WeightSpace, symmetry: str) -> list[torch.Tensor]:
    """For each generator of the group (a swap and a cycle per permuted layer), the index
    map it induces on flattened coordinates."""
    P = _n_coords(space)
    coords = WeightBatch.unflatten(space, torch.arange(P, dtype=torch.float64)[None])
    actions = []
    for layer in space.permuted_layers(symmetry):
        n = space.neurons[layer]
        for p in (torch.tensor([1, 0] + list(range(2, n))), torch.roll(torch.arange(n), 1)):
            perms = [torch.arange(m) for m in space.neurons]
            perms[layer] = p
            moved = permute(coords, NeuronPermutation(space, tuple(perms)))
            actions.append(moved.flatten()[0].long())
    return actions


def _count_orbits(n_items: int, maps: list[list[int]]) -> int:
    parent = list(range(n_items))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for m in maps:
        for a, b in enumerate(m):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[ra] = rb
    return sum(1 for a in range(n_items) if find(a) == a)


SMALL_SPACES = [
    ("mlp-1", lambda: make_mlp([2, 3])),
    ("mlp-2", lambda: make_mlp([2, 3, 2])),
    ("mlp-3", lambda: make_mlp([3, 2, 3, 2])),
    ("cnn-2", lambda: make_cnn([2, 2, 3], 2, kernel=2)),
]


@pytest.mark.parametrize("name, factory", SMALL_SPACES, ids=[s[0] for s in SMALL_SPACES])
@pytest.mark.parametrize("symmetry", ["hnp", "np"])
def test_layer_is_the_maximal_equivariant_affine_map(name, factory, symmetry):
    """dim{equivariant affine maps} = #orbits on (out, in) coordinate pairs + #orbits on
    coordinates. Our layer must have exactly that many parameters, all linearly independent."""
    space = space_of(factory)
    actions = _generator_actions(space, symmetry)
    P = _n_coords(space)
    pair_maps = [(a[:, None] * P + a[None, :]).flatten().tolist() for a in actions]
    dim_linear = _count_orbits(P * P, pair_maps)
    dim_bias = _count_orbits(P, [a.tolist() for a in actions])
    layer = HNPLinear(space, 1, 1) if symmetry == "hnp" else NPLinear(space, 1, 1)
    n_params = sum(p.numel() for p in layer.parameters())
    assert n_params == dim_linear + dim_bias

    # Each parameter alone gives one affine map; they must be linearly independent.
    basis_in = WeightBatch.unflatten(space, torch.eye(P))
    zero_in = WeightBatch.unflatten(space, torch.zeros(1, P))
    params = list(layer.parameters())
    maps = []
    with torch.no_grad():
        for p in params:
            for idx in range(p.numel()):
                for q in params:
                    q.zero_()
                p.view(-1)[idx] = 1.0
                const = layer(zero_in).flatten()  # (1, P)
                lin = layer(basis_in).flatten() - const  # (P, P): row = image of basis vector
                maps.append(torch.cat([lin.flatten(), const.flatten()]))
    rank = torch.linalg.matrix_rank(torch.stack(maps).double())
    assert rank == n_params


def test_wrong_channels_and_space_are_rejected():
    space = space_of(lambda: make_mlp([3, 4, 2]))
    layer = HNPLinear(space, 2, 3)
    with pytest.raises(ShapeMismatchError, match="expects 2 input channels"):
        layer(random_batch(space, 1, 1, 0))
    other = space_of(lambda: make_mlp([3, 5, 2]))
    with pytest.raises(ShapeMismatchError, match="got a batch of"):
        layer(random_batch(other, 1, 2, 0))


def test_stacked_layers_train_end_to_end():
    """Gradient descent through two NF-Layers reduces a regression loss on weights."""
    space = space_of(lambda: make_cnn([1, 3, 4], 3))
    torch.manual_seed(4)
    x = random_batch(space, 8, 1, 21)
    target = x.map(lambda t: torch.tanh(2 * t))
    l1, l2 = NPLinear(space, 1, 8), NPLinear(space, 8, 1)
    opt = torch.optim.Adam([*l1.parameters(), *l2.parameters()], lr=1e-2)

    def loss_fn():
        y = l2(l1(x).map(torch.relu))
        return sum(((a - b) ** 2).mean() for a, b in zip(y.tensors(), target.tensors(),
                                                          strict=True))

    first = loss_fn().item()
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss_fn().item() < 0.5 * first
