"""Universal Neural Functionals (arXiv 2402.05232): term counts, equivariance, maximality,
agreement with the NFN layers on MLPs, and error paths.

RNN convention (research note 02, Sec. 2): one layer ``W_ff: (h, x)``, ``W_rec: (h, h)``,
``b: (h,)`` with the input feature axis ``x`` permuted too (its own label, NP-style); the
golden per-pair counts (e.g. ``W_ff -> W_ff`` = Bell(2) * Bell(2) = 4) require it.
"""

import itertools

import pytest
import torch
from torch.func import functional_call

from gensight.errors import GensightError, KeyMismatchError, ShapeMismatchError
from gensight.nf import HNPLinear, NPLinear
from gensight.nf.unf import (
    PermSpec,
    Split,
    UNFLinear,
    UNFPool,
    bell_number,
    dict_to_weight_batch,
    permute,
    random_permutation,
    unf_bias_counts,
    unf_term_counts,
    weight_batch_to_dict,
    weight_space_shapes,
)
from gensight.weightspace import WeightSpace
from tests.factories import make_cnn, make_mlp, seeded

RNN_SPEC = {"W_ff": ("h", "x"), "W_rec": ("h", "h"), "b": ("h",)}


def rnn_shapes(h: int = 4, x: int = 3) -> dict:
    return {"W_ff": (h, x), "W_rec": (h, h), "b": (h,)}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rand_params(shapes, batch, channels, seed, dtype=torch.float64):
    g = seeded(seed)
    return {k: torch.randn(batch, channels, *s, generator=g, dtype=dtype)
            for k, s in shapes.items()}


def randomize(layer: UNFLinear, seed: int) -> UNFLinear:
    g = seeded(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


def param_jacobian(layer, x, names=None):
    """Jacobian of the flattened outputs w.r.t. the (flattened) parameters: the layer is
    linear in its parameters, so the columns are the basis maps applied to ``x``."""
    params = {n: p.detach() for n, p in layer.named_parameters()
              if names is None or n.split(".")[0] in names}
    keys = list(params)
    sizes = [params[k].numel() for k in keys]

    def f(flat):
        chunks = torch.split(flat, sizes)
        ps = {k: c.view(params[k].shape) for k, c in zip(keys, chunks, strict=True)}
        out = functional_call(layer, ps, (x,), strict=False)
        if not isinstance(out, dict):
            out = weight_batch_to_dict(out)
        return torch.cat([out[k].reshape(-1) for k in sorted(out)])

    flat = torch.cat([params[k].reshape(-1) for k in keys])
    return torch.autograd.functional.jacobian(f, flat)


def rank(m: torch.Tensor) -> int:
    return int(torch.linalg.matrix_rank(m, rtol=1e-9))


# --- golden term counts --------------------------------------------------------------------

def test_bell_numbers_and_partitions():
    assert [bell_number(k) for k in range(8)] == [1, 1, 2, 5, 15, 52, 203, 877]
    # a pair whose k axes all share one label has Bell(k) terms
    for k, golden in zip(range(1, 6), [1, 2, 5, 15, 52], strict=True):
        spec = PermSpec({"o": ("a",), "i": ("a",) * (k - 1)})
        assert unf_term_counts(spec)[("o", "i")] == golden
        # the bias of one tensor with k equal labels: Bell(k) equivariant constants
        assert unf_bias_counts(PermSpec({"t": ("a",) * k})) == {"t": golden}
        if k <= 3:  # beyond, the (t, t) pair has Bell(8) = 4140 terms
            layer = UNFLinear({"t": ("a",) * k}, {"t": (2,) * k}, 1, 1)
            assert layer.num_bias_terms == golden
    # the compiled layer has exactly as many terms as counted
    layer = UNFLinear({"o": ("a", "a"), "i": ("a",) * 3}, {"o": (2, 2), "i": (2,) * 3}, 1, 1,
                      max_terms=203)
    assert layer.term_counts == {("o", "o"): 15, ("o", "i"): 52, ("i", "o"): 52,
                                 ("i", "i"): 203}
    compiled = [t for t in layer.terms if (t.out_key, t.in_key) == ("o", "i")]
    assert len(compiled) == 52
    assert len({t.partition for t in compiled}) == 52


@pytest.mark.parametrize("n_layers", [1, 2, 3, 4])
def test_np_mlp_term_count_matches_nplinear(n_layers):
    widths = [3, 4, 5, 4, 2][: n_layers + 1]
    space = WeightSpace.from_module(make_mlp(widths))
    layer = UNFLinear.from_weight_space(space, 2, 3, bias="reference")
    golden = 4 * n_layers ** 2 + 10 * n_layers - 4
    assert layer.num_terms == golden == len(layer.terms)
    assert [10, 32, 62, 100][n_layers - 1] == golden
    n_params = sum(p.numel() for p in layer.parameters())
    assert n_params == 2 * 3 * golden + 2 * n_layers * 3
    assert n_params == NPLinear.num_parameters(space, 2, 3)
    # no tensor repeats a label: the maximal bias is the reference bias
    maximal = UNFLinear.from_weight_space(space, 2, 3, bias="maximal")
    assert sum(p.numel() for p in maximal.parameters()) == n_params


def test_rnn_pair_counts():
    spec = PermSpec(RNN_SPEC)
    golden = {("W_rec", "W_rec"): 15, ("W_rec", "W_ff"): 5, ("W_rec", "b"): 5,
              ("W_ff", "W_rec"): 5, ("W_ff", "W_ff"): 4, ("W_ff", "b"): 2,
              ("b", "W_rec"): 5, ("b", "W_ff"): 2, ("b", "b"): 2}  # (output, input)
    assert unf_term_counts(spec) == golden
    layer = UNFLinear(spec, rnn_shapes(), 1, 1)
    assert layer.num_terms == 45 == len(layer.terms)
    compiled = {}
    for t in layer.terms:
        compiled[(t.out_key, t.in_key)] = compiled.get((t.out_key, t.in_key), 0) + 1
    assert compiled == golden
    assert layer.num_bias_terms == 4  # W_rec: diagonal + off-diagonal; W_ff, b: one each


# --- equivariance --------------------------------------------------------------------------

EQUIV_CASES = [
    ("rnn", RNN_SPEC, rnn_shapes(4, 3)),
    ("conv-like", {"W1": ("a", "in", None, None), "v1": ("a",), "W2": ("out", "a", None),
                   "v2": ("out",)}, {"W1": (4, 2, 3, 2), "v1": (4,), "W2": (3, 4, 2),
                                     "v2": (3,)}),
    ("triple", {"T": (0, 0, 1), "u": (1,), "M": (None, 0)}, {"T": (3, 3, 4), "u": (4,),
                                                             "M": (2, 3)}),
    ("interleaved", {"T": ("a", "b", "a"), "u": ("b",)}, {"T": (3, 4, 3), "u": (4,)}),
    ("two-rnn-layers", {"A": ("h1", "x"), "R1": ("h1", "h1"), "B": ("h2", "h1"),
                        "R2": ("h2", "h2"), "c": ("h2",)},
     {"A": (3, 2), "R1": (3, 3), "B": (4, 3), "R2": (4, 4), "c": (4,)}),
    # multi-head attention: fused q/k/v rows split into (block, head, dim)
    ("attention", {"in_w": (Split((None, "head", "dim"), (3, 2, -1)), "x"),
                   "in_b": (Split((None, "head", "dim"), (3, 2, -1)),),
                   "out_w": ("x", Split(("head", "dim"), (2, -1))), "out_b": ("x",)},
     {"in_w": (18, 4), "in_b": (18,), "out_w": (4, 6), "out_b": (4,)}),
]


@pytest.mark.parametrize("bias", ["maximal", "reference"])
@pytest.mark.parametrize("name,spec,shapes", EQUIV_CASES, ids=[c[0] for c in EQUIV_CASES])
def test_equivariance(name, spec, shapes, bias):
    spec = PermSpec(spec)
    layer = randomize(UNFLinear(spec, shapes, 2, 3, bias=bias).double(), 1)
    x = rand_params(shapes, 4, 2, 2)
    perms = random_permutation(spec, shapes, seeded(3), batch_size=4)
    y = layer(x)
    y_perm = layer(permute(x, spec, perms))
    expected = permute(y, spec, perms)
    for key in shapes:
        assert y[key].shape == (4, 3, *shapes[key])
        torch.testing.assert_close(y_perm[key], expected[key], atol=1e-10, rtol=1e-10)
    # non-trivial check: the permutation really moved something
    assert any(not torch.allclose(y[k], expected[k]) for k in shapes)


def test_equivariance_every_pair_rnn():
    """Each (output, input) pair on its own (only that input non-zero, bias zero)."""
    spec, shapes = PermSpec(RNN_SPEC), rnn_shapes(4, 3)
    layer = randomize(UNFLinear(spec, shapes, 1, 2).double(), 4)
    with torch.no_grad():
        for b in layer.biases:
            b.zero_()
    perms = random_permutation(spec, shapes, seeded(5), batch_size=3)
    for src in shapes:
        x = {k: (v if k == src else torch.zeros_like(v))
             for k, v in rand_params(shapes, 3, 1, 6).items()}
        y, y_perm = layer(x), layer(permute(x, spec, perms))
        expected = permute(y, spec, perms)
        for key in shapes:
            assert y[key].abs().max() > 0, (key, src)
            torch.testing.assert_close(y_perm[key], expected[key], atol=1e-10, rtol=1e-10)


def test_permute_recurrent_is_conjugation():
    spec, shapes = PermSpec(RNN_SPEC), rnn_shapes(4, 3)
    x = rand_params(shapes, 2, 1, 0)
    perms = random_permutation(spec, shapes, seeded(1))
    p = torch.eye(4, dtype=torch.float64)[perms["h"]]
    y = permute(x, spec, perms)
    torch.testing.assert_close(y["W_rec"][0, 0], p @ x["W_rec"][0, 0] @ p.T)


# --- hand-checked terms (Algorithm 1 steps 3-6) ---------------------------------------------

def _term_output(layer, x, out_key, in_key, partition):
    """Output of ``layer`` with only one term's (1x1) weight set to one."""
    want = frozenset(partition)
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
        found = 0
        for group, w in zip(layer.groups, layer.weights, strict=True):
            for row, t in enumerate(group.terms):
                if (t.out_key, t.in_key) == (out_key, in_key) and frozenset(t.partition) == want:
                    w[row, 0] = 1.0
                    found += 1
    assert found == 1
    return layer(x)[out_key][:, 0]


def test_terms_by_hand():
    shapes = {"W": (4, 4), "v": (4,)}
    layer = UNFLinear({"W": ("h", "h"), "v": ("h",)}, shapes, 1, 1).double()
    x = rand_params(shapes, 2, 1, 7)
    w = x["W"][:, 0]
    n = 4
    cases = [
        ("W", "W", [((0,), (1,)), ((1,), (0,))], w.transpose(1, 2)),
        ("W", "W", [((0, 1), (0, 1))], torch.diag_embed(torch.diagonal(w, dim1=1, dim2=2))),
        ("W", "W", [((0,), (0,)), ((1,), ()), ((), (1,))],
         w.mean(2, keepdim=True).expand(-1, n, n)),
        ("W", "W", [((0, 1), ()), ((), (0, 1))],
         torch.diagonal(w, dim1=1, dim2=2).mean(1)[:, None, None] * torch.eye(n)),
        ("v", "W", [((0,), ()), ((), (0, 1))],
         torch.diagonal(w, dim1=1, dim2=2).mean(1, keepdim=True).expand(-1, n)),
        ("W", "v", [((0, 1), (0,))], torch.diag_embed(x["v"][:, 0])),
        ("W", "v", [((0,), ()), ((1,), (0,))], x["v"][:, 0][:, None, :].expand(-1, n, n)),
    ]
    for out_key, in_key, part, expected in cases:
        torch.testing.assert_close(_term_output(layer, x, out_key, in_key, part), expected)


# --- maximality and independence -------------------------------------------------------------

def test_function_class_equals_nplinear():
    """UNF on an NP MLP spec spans exactly NPLinear's function class: each layer's outputs
    are reproduced by the other's by least squares, with zero residual."""
    space = WeightSpace.from_module(make_mlp([3, 4, 3]))
    shapes = weight_space_shapes(space)
    unf = UNFLinear.from_weight_space(space, 1, 1, bias="reference").double()
    np_layer = NPLinear(space, 1, 1).double()
    x = rand_params(shapes, 12, 1, 8)
    x_batch = dict_to_weight_batch(space, x)
    j_unf = param_jacobian(unf, x)
    j_np = param_jacobian(np_layer, x_batch)
    assert j_unf.shape == j_np.shape == (12 * 31, 36)
    assert rank(j_unf) == rank(j_np) == rank(torch.cat([j_unf, j_np], 1)) == 36
    # WeightBatch in, WeightBatch out, same values as the dict path
    out_batch = randomize(unf, 9)(x_batch)
    out_dict = unf(x)
    for k, v in weight_batch_to_dict(out_batch).items():
        torch.testing.assert_close(v, out_dict[k])
    # a random NPLinear's outputs are fitted exactly by UNF parameters
    target = param_jacobian(np_layer, x_batch) @ torch.randn(36, generator=seeded(10),
                                                             dtype=torch.float64)
    sol = torch.linalg.lstsq(j_unf, target[:, None]).solution
    assert (j_unf @ sol - target[:, None]).abs().max() < 1e-9


def test_function_class_equals_hnplinear():
    """Under HNP the input/output neuron axes are unlabelled and folded into channels; UNF
    then spans HNPLinear's function class."""
    space = WeightSpace.from_module(make_mlp([2, 3, 4, 2]))
    shapes = weight_space_shapes(space)
    unf = UNFLinear.from_weight_space(space, 1, 1, symmetry="hnp").double()
    hnp = HNPLinear(space, 1, 1).double()
    x = rand_params(shapes, 12, 1, 11)
    j_unf = param_jacobian(unf, x)
    j_hnp = param_jacobian(hnp, dict_to_weight_batch(space, x))
    r = rank(j_unf)
    assert r == rank(j_hnp) == rank(torch.cat([j_unf, j_hnp], 1))
    assert r == sum(p.numel() for p in hnp.parameters())


def test_terms_linearly_independent_rnn():
    spec, shapes = PermSpec(RNN_SPEC), rnn_shapes(4, 2)
    layer = UNFLinear(spec, shapes, 1, 1).double()
    x = rand_params(shapes, 4, 1, 12)
    j = param_jacobian(layer, x, names={"weights"})
    assert j.shape[1] == 45
    assert rank(j) == 45


@pytest.mark.parametrize("n,golden", [(1, 1), (2, 8), (3, 14), (4, 15), (5, 15)])
def test_recurrent_term_rank(n, golden):
    """The 15 (h, h) -> (h, h) terms are a basis only once n >= 4 (number of S_n orbits on
    4-tuples)."""
    shapes = {"R": (n, n)}
    layer = UNFLinear({"R": ("h", "h")}, shapes, 1, 1).double()
    j = param_jacobian(layer, rand_params(shapes, 20, 1, 13), names={"weights"})
    assert j.shape[1] == 15
    assert rank(j) == golden


def _orbits(points, group_actions):
    parent = {p: p for p in points}

    def find(p):
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    for act in group_actions:
        for p in points:
            a, b = find(p), find(act(p))
            if a != b:
                parent[a] = b
    return len({find(p) for p in points})


ORBIT_CASES = [
    # (name, spec, shapes, basis terms, maximal bias vectors); every label large enough
    ("rnn", RNN_SPEC, rnn_shapes(4, 2), 45, 4),
    ("interleaved", {"T": ("a", "b", "a"), "u": ("b",)}, {"T": (4, 2, 4), "u": (2,)}, 40, 3),
    ("unlabelled-axis", {"W1": ("a", "i", None), "v1": ("a",), "W2": ("o", "a", None)},
     {"W1": (2, 2, 2), "v1": (2,), "W2": (2, 2, 3)}, None, None),
    ("too-small", {"R": ("h", "h"), "v": ("h",)}, {"R": (3, 3), "v": (3,)}, None, None),
]


@pytest.mark.parametrize("name,spec,shapes,n_terms,n_bias", ORBIT_CASES,
                         ids=[c[0] for c in ORBIT_CASES])
def test_span_dimension_equals_brute_force_orbits(name, spec, shapes, n_terms, n_bias):
    """Maximality: the equivariant linear maps (resp. constants) have one dimension per orbit
    of the group on (output entry, input entry) pairs (resp. output entries); the layer's
    span (rank of its parameter Jacobian on generic inputs) must reach that dimension, and
    when every label is large enough the terms are a basis."""
    spec = PermSpec(spec)
    sizes = spec.validate(shapes)
    entries = [(k, idx) for k, s in shapes.items()
               for idx in itertools.product(*(range(n) for n in s))]
    labels = list(sizes)
    group = [dict(zip(labels, g, strict=True)) for g in
             itertools.product(*(list(itertools.permutations(range(sizes[lab])))
                                 for lab in labels))]

    def act(g, entry):
        k, idx = entry
        return k, tuple(i if lab is None else g[lab][i]
                        for lab, i in zip(spec[k], idx, strict=True))

    pair_orbits = _orbits(list(itertools.product(entries, entries)),
                          [lambda p, g=g: (act(g, p[0]), act(g, p[1])) for g in group])
    entry_orbits = _orbits(entries, [lambda e, g=g: act(g, e) for g in group])

    layer = UNFLinear(spec, shapes, 1, 1).double()
    x = rand_params(shapes, len(entries) + 2, 1, 19)
    assert rank(param_jacobian(layer, x, names={"weights"})) == pair_orbits
    assert rank(param_jacobian(layer, x, names={"biases"})) == entry_orbits
    if n_terms is not None:
        assert layer.num_terms == n_terms == pair_orbits
        assert layer.num_bias_terms == n_bias == entry_orbits
    else:
        n_weights = sum(w.numel() for w in layer.weights)
        assert pair_orbits <= n_weights


def test_maximal_bias_recurrent():
    shapes = {"R": (5, 5)}
    spec = PermSpec({"R": ("h", "h")})
    layer = UNFLinear(spec, shapes, 1, 2).double()
    assert layer.num_bias_terms == 2
    with torch.no_grad():
        layer.biases[0].copy_(torch.tensor([1.0, 2.0]))
        layer.biases[1].copy_(torch.tensor([10.0, 20.0]))
    y = layer(rand_params(shapes, 2, 1, 0, ) | {"R": torch.zeros(2, 1, 5, 5, dtype=torch.float64)})
    y = y["R"]
    diag = torch.diagonal(y, dim1=2, dim2=3)
    off = y[:, :, ~torch.eye(5, dtype=torch.bool)]
    assert torch.allclose(off, torch.tensor([1.0, 2.0], dtype=torch.float64)[None, :, None])
    assert torch.allclose(diag, torch.tensor([11.0, 22.0], dtype=torch.float64)[None, :, None])
    perms = random_permutation(spec, shapes, seeded(1), batch_size=2)
    torch.testing.assert_close(permute({"R": y}, spec, perms)["R"], y)
    # the span of the bias outputs is 2-dimensional per channel
    j = param_jacobian(layer, {"R": torch.zeros(1, 1, 5, 5, dtype=torch.float64)},
                       names={"biases"})
    assert rank(j) == 4
    ref = UNFLinear(spec, shapes, 1, 2, bias="reference")
    assert ref.num_bias_terms == 1


# --- pooling, specs from weight spaces -------------------------------------------------------

def test_pool_invariant_and_shapes():
    name, spec, shapes = EQUIV_CASES[1]
    spec = PermSpec(spec)
    pool = UNFPool(spec, shapes)
    x = rand_params(shapes, 3, 2, 14)
    out = pool(x)
    assert out.shape == (3, pool.out_features(2)) == (3, 2 * (6 + 1 + 2 + 1))
    perms = random_permutation(spec, shapes, seeded(15), batch_size=3)
    torch.testing.assert_close(pool(permute(x, spec, perms)), out)
    torch.testing.assert_close(out[:, 12:14], x["v1"].mean(2))


def test_spec_from_weight_space():
    space = WeightSpace.from_module(make_cnn([2, 3, 4], 5))
    np_spec = PermSpec.from_weight_space(space, "np")
    hnp_spec = PermSpec.from_weight_space(space, "hnp")
    keys = [lay.weight_key for lay in space.layers]
    assert np_spec[keys[0]] == (1, 0, None, None)
    assert np_spec[keys[2]] == (3, 2)
    assert hnp_spec[keys[0]] == (1, None, None, None)
    assert hnp_spec[keys[2]] == (None, 2)
    assert hnp_spec[space.layers[2].bias_key] == (None,)
    shapes = weight_space_shapes(space)
    assert np_spec.validate(shapes) == {0: 2, 1: 3, 2: 4, 3: 5}
    nobias = WeightSpace.from_module(make_mlp([3, 4, 2], bias=False))
    assert list(PermSpec.from_weight_space(nobias)) == ["0.weight", "0.bias", "2.weight",
                                                        "2.bias"]
    # a conv space under NP: equivariant, WeightBatch in and out
    layer = randomize(UNFLinear.from_weight_space(space, 1, 2).double(), 16)
    x = rand_params(shapes, 2, 1, 17)
    perms = random_permutation(np_spec, shapes, seeded(18), batch_size=2)
    y = weight_batch_to_dict(layer(dict_to_weight_batch(space, x)))
    y_perm = layer(permute(x, np_spec, perms))
    for k, v in permute(y, np_spec, perms).items():
        torch.testing.assert_close(y_perm[k], v)


# --- errors ------------------------------------------------------------------------------

def test_split_axis_views_and_errors():
    sp = Split((None, "head", "dim"), (3, 2, -1))
    spec = PermSpec({"w": (sp, "x")})
    assert spec.flat["w"] == (None, "head", "dim", "x")
    assert spec.flat_shape("w", (18, 4)) == (3, 2, 3, 4)
    assert spec.validate({"w": (18, 4)}) == {"head": 2, "dim": 3, "x": 4}
    assert spec.labels == ("head", "dim", "x")
    with pytest.raises(ShapeMismatchError, match=r"'w' axis 0 has size 16, which does not "
                                                 r"split into sizes \(3, 2, -1\)"):
        spec.validate({"w": (16, 4)})
    for labels, sizes, match in [((None, "h"), (3,), "one size per label"),
                                 (("h", "d"), (-1, -1), "at most one -1"),
                                 (("h", 1.5), (2, 2), "must be int, str or None")]:
        with pytest.raises(GensightError, match=match):
            Split(labels, sizes)
    # a permutation by the spec moves whole heads and the same dims in every block
    x = torch.arange(18.0).view(1, 1, 18, 1)
    perms = {"head": torch.tensor([1, 0]), "dim": torch.tensor([2, 0, 1]),
             "x": torch.tensor([0])}
    y = permute({"w": x}, spec, perms)["w"].view(3, 2, 3)
    ref = torch.arange(18.0).view(3, 2, 3)[:, [1, 0]][:, :, [2, 0, 1]]
    assert torch.equal(y, ref)


def test_error_label_size_mismatch():
    with pytest.raises(ShapeMismatchError, match=r"label 'h'.*'W_rec' axis 1 has size 5.*"
                                                 r"'W_ff' axis 0 has size 4"):
        UNFLinear(RNN_SPEC, {"W_ff": (4, 3), "W_rec": (4, 5), "b": (4,)}, 1, 1)


def test_error_keys_and_rank():
    with pytest.raises(KeyMismatchError, match="'extra'"):
        UNFLinear(RNN_SPEC, rnn_shapes() | {"extra": (2,)}, 1, 1)
    shapes = rnn_shapes()
    del shapes["b"]
    with pytest.raises(KeyMismatchError, match="'b'"):
        UNFLinear(RNN_SPEC, shapes, 1, 1)
    with pytest.raises(ShapeMismatchError, match=r"'b' has shape \(4, 1\) \(rank 2\)"):
        UNFLinear(RNN_SPEC, rnn_shapes() | {"b": (4, 1)}, 1, 1)
    with pytest.raises(GensightError, match=r"PermSpec\['b'\] axis 0"):
        PermSpec({"b": (1.5,)})
    layer = UNFLinear(RNN_SPEC, rnn_shapes(), 1, 1)
    x = rand_params(rnn_shapes(), 2, 1, 0, torch.float32)
    with pytest.raises(KeyMismatchError, match="expects keys"):
        layer({k: v for k, v in x.items() if k != "b"})
    with pytest.raises(ShapeMismatchError, match="'W_rec' has shape"):
        layer(x | {"W_rec": torch.zeros(2, 1, 4, 3)})
    space = WeightSpace.from_module(make_mlp([3, 2]))
    batch = dict_to_weight_batch(space, rand_params(weight_space_shapes(space), 1, 1, 0))
    with pytest.raises(ShapeMismatchError, match="from_weight_space"):
        layer(batch)


def test_error_term_explosion_names_pair():
    spec = {"T": ("a", "a", "a"), "v": ("a",)}
    shapes = {"T": (2, 2, 2), "v": (2,)}
    assert unf_term_counts(PermSpec(spec))[("T", "T")] == 203
    with pytest.raises(GensightError, match=r"output 'T'.*input 'T'.*203 basis terms.*"
                                            r"max_terms=100"):
        UNFLinear(spec, shapes, 1, 1, max_terms=100)
    assert UNFLinear(spec, shapes, 1, 1, max_terms=203).num_terms == 203 + 2 * 15 + 2
