"""perm_spec: deriving UNF permutation specs (arXiv 2402.05232) by tracing modules.

Every supported kind is checked by *function preservation*: permute the parameters (float64)
by a random permutation drawn from the derived ``"hnp"`` spec and compare eval-mode outputs;
and by a *broken tie*: moving one tensor axis to its own label (so it is permuted
independently) must change the output, which shows the derived tie is needed.
"""

import pytest
import torch
from torch import nn

from gensight.errors import GensightError
from gensight.nf.unf import PermSpec, permute, random_permutation
from gensight.nf.unf_trace import PermSpecTraceError, apply_params, module_params, perm_spec
from gensight.weightspace import WeightSpace
from tests.factories import make_cnn, make_mlp, seeded


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _shapes(params):
    return {k: tuple(v.shape[2:]) for k, v in params.items()}


def _permuted(model, spec, seed=0, buffers=False):
    params = module_params(model, buffers=buffers)
    params = {k: v for k, v in params.items() if k in spec}
    perms = random_permutation(spec, _shapes(params), seeded(seed))
    return apply_params(model, permute(params, spec, perms)), perms


def _untie(spec, axes):
    """``spec`` with each ``(key, axis)`` in ``axes`` given the fresh label "untied"."""
    out = {k: list(v) for k, v in spec.items()}
    for key, axis in axes:
        assert out[key][axis] is not None
        out[key][axis] = "untied"
    return PermSpec({k: tuple(v) for k, v in out.items()})


def _check(model, x, untie, buffers=False, seed=0, example=False):
    """Function preservation under the derived hnp spec, and change under a broken tie."""
    model = model.double().eval()
    x = x.double()
    spec = perm_spec(model, "hnp", example_inputs=[x] if example else None, buffers=buffers)
    y = model(x)
    moved, perms = _permuted(model, spec, seed, buffers)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), moved.parameters(),
                                                      strict=True))
    torch.testing.assert_close(moved(x), y, rtol=1e-10, atol=1e-10)
    broken, _ = _permuted(model, _untie(spec, untie), seed + 1, buffers)
    assert (broken(x) - y).abs().max() > 1e-6
    return spec


class Residual(nn.Module):
    def __init__(self, d_in=3, h=6, d_out=2):
        super().__init__()
        self.inp = nn.Linear(d_in, h)
        self.f = nn.Sequential(nn.Linear(h, 5), nn.GELU(), nn.Linear(5, h))
        self.out = nn.Linear(h, d_out)

    def forward(self, x):
        x = torch.tanh(self.inp(x))
        x = x + self.f(x)
        return self.out(torch.relu(x))


class Normed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(5)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(5, 6)
        self.bn1 = nn.BatchNorm1d(6)
        self.fc2 = nn.Linear(6, 7)
        self.ln = nn.LayerNorm(7)
        self.head = nn.Linear(7, 2)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn2(self.conv(x)))).flatten(1)
        x = torch.sigmoid(self.bn1(self.fc(x)))
        return self.head(self.ln(self.fc2(x)))


class RNNReadout(nn.Module):
    def __init__(self, layers=1, batch_first=True):
        super().__init__()
        self.rnn = nn.RNN(3, 5, num_layers=layers, batch_first=batch_first)
        self.head = nn.Linear(5, 2)
        self.batch_first = batch_first

    def forward(self, x):
        out, _ = self.rnn(x)
        last = out[:, -1] if self.batch_first else out[-1]
        return self.head(last)


def _randomize_stats(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
        if isinstance(m, nn.LayerNorm):
            m.weight.data.normal_()
            m.bias.data.normal_()


# --- function preservation and broken ties ----------------------------------------------------

def test_mlp_preserved_and_tie():
    torch.manual_seed(0)
    m = make_mlp([3, 6, 5, 2])
    # untie layer 1's output rows from layer 2's input columns
    _check(m, torch.randn(4, 3), untie=[("2.weight", 1)])


def test_cnn_global_pool_preserved_and_tie():
    torch.manual_seed(1)
    m = make_cnn([3, 4, 5], n_classes=2)
    spec = _check(m, torch.randn(2, 3, 6, 6), untie=[("6.weight", 1)])
    assert spec["0.weight"] == (1, None, None, None)
    assert spec["6.weight"] == (None, 2)


def test_residual_ties_branch_to_trunk():
    torch.manual_seed(2)
    m = Residual()
    spec = _check(m, torch.randn(4, 3), untie=[("f.2.weight", 0), ("f.2.bias", 0)])
    trunk = spec["inp.weight"][0]
    assert trunk is not None
    assert spec["f.2.weight"][0] == trunk == spec["out.weight"][1] == spec["f.0.weight"][1]
    assert spec["f.0.weight"][0] not in (None, trunk)


def test_norm_layers_preserved_with_buffers():
    torch.manual_seed(3)
    m = Normed()
    _randomize_stats(m)
    spec = _check(m, torch.randn(3, 3, 5, 5), untie=[("bn1.running_mean", 0)], buffers=True)
    assert spec["bn2.weight"] == spec["bn2.running_var"] == (spec["conv.weight"][0],)
    assert spec["ln.weight"] == spec["ln.bias"] == (spec["fc2.weight"][0],)
    assert "bn2.num_batches_tracked" not in spec
    # without buffers the spec covers exactly the parameters
    assert set(perm_spec(m, "hnp")) == {k for k, _ in m.named_parameters()}


def test_norm_affine_tie_matters():
    torch.manual_seed(4)
    m = Normed()
    _randomize_stats(m)
    _check(m, torch.randn(3, 3, 5, 5), untie=[("ln.weight", 0)], buffers=True)


@pytest.mark.parametrize("layers,batch_first", [(1, True), (2, False)])
def test_rnn_preserved_and_recurrent_tie(layers, batch_first):
    torch.manual_seed(5)
    m = RNNReadout(layers, batch_first)
    x = torch.randn(2, 4, 3) if batch_first else torch.randn(4, 2, 3)
    spec = _check(m, x, untie=[("rnn.weight_hh_l0", 1)])
    h = spec["rnn.weight_hh_l0"][0]
    assert spec["rnn.weight_hh_l0"] == (h, h) and h is not None
    assert spec["rnn.weight_ih_l0"] == (h, None)
    if layers == 2:
        assert spec["rnn.weight_ih_l1"] == (spec["rnn.weight_hh_l1"][0], h)


class GatedReadout(nn.Module):
    def __init__(self, cell, layers):
        super().__init__()
        self.rnn = cell(3, 5, num_layers=layers, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@pytest.mark.parametrize("cell,gates", [(nn.GRU, 3), (nn.LSTM, 4)])
@pytest.mark.parametrize("layers", [1, 2])
def test_gru_and_lstm_gates_are_gated_labels(cell, gates, layers):
    """GRU/LSTM rows are Gated(gates, h): the hidden permutation acts inside each gate
    block. Function preserved; giving the recurrent columns their own label breaks it."""
    from gensight.nf.unf import Gated

    torch.manual_seed(11)
    m = GatedReadout(cell, layers)
    spec = _check(m, torch.randn(2, 4, 3), untie=[("rnn.weight_hh_l0", 1)])
    rows = spec["rnn.weight_hh_l0"][0]
    assert isinstance(rows, Gated) and rows.blocks == gates
    assert spec["rnn.weight_hh_l0"] == (rows, rows.label)
    assert spec["rnn.weight_ih_l0"] == (rows, None) and spec["rnn.bias_ih_l0"] == (rows,)
    assert spec["head.weight"] == (None, spec[f"rnn.weight_hh_l{layers - 1}"][1])


class AttentionBlock(nn.Module):
    """A pre-norm Transformer block: embedding, self-attention with a residual, LayerNorm,
    a feed-forward residual, readout."""

    def __init__(self, batch_first=True, e=8, heads=2):
        super().__init__()
        self.inp = nn.Linear(3, e)
        self.ln = nn.LayerNorm(e)
        self.attn = nn.MultiheadAttention(e, heads, batch_first=batch_first)
        self.ff = nn.Sequential(nn.Linear(e, 5), nn.GELU(), nn.Linear(5, e))
        self.out = nn.Linear(e, 2)

    def forward(self, x):
        h = self.inp(x)
        z = self.ln(h)
        h = h + self.attn(z, z, z)[0]
        h = h + self.ff(h)
        return self.out(h)


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_heads_and_head_dims(batch_first):
    """nn.MultiheadAttention: heads and the dimensions within a head are permuted (Split
    sub-axes of the fused q/k/v rows and of out_proj's columns), the residual stream ties
    in_proj's columns and out_proj's rows. Function preserved (float64); permuting out_proj's
    columns on their own breaks it, as does a permutation of all E rows that mixes heads."""
    from gensight.nf.unf import Split

    torch.manual_seed(12)
    m = AttentionBlock(batch_first)
    _randomize_stats(m)
    x = torch.randn(2, 4, 3) if batch_first else torch.randn(4, 2, 3)
    spec = _check(m, x, untie=[("attn.out_proj.weight", 1)], example=True)
    rows = spec["attn.in_proj_weight"][0]
    assert isinstance(rows, Split) and rows.sizes == (3, 2, -1) and rows.labels[0] is None
    head, dim = rows.labels[1:]
    stream = spec["inp.weight"][0]
    assert spec["attn.in_proj_weight"] == (rows, stream)
    assert spec["attn.in_proj_bias"] == (rows,)
    assert spec["attn.out_proj.weight"] == (stream, Split((head, dim), (2, -1)))
    assert spec["ln.weight"] == (stream,)
    assert spec["ff.2.weight"] == (stream, spec["ff.0.weight"][0])
    assert len({stream, head, dim}) == 3
    # a whole-axis label on in_proj's rows (one permutation of all 3E rows) is no symmetry
    whole = {k: tuple(v) for k, v in spec.items()}
    whole["attn.in_proj_weight"] = ("qkv", stream)
    whole["attn.in_proj_bias"] = ("qkv",)
    m = m.double().eval()
    broken, _ = _permuted(m, PermSpec(whole), 5)
    assert (broken(x.double()) - m(x.double())).abs().max() > 1e-6


def test_per_head_attention_mask_pins_the_heads():
    """A 3-D attn_mask gives every head its own mask, so heads are not permutable; the
    dimensions within a head still are. A shared 2-D mask keeps the heads permutable."""
    from gensight.nf.unf import Split

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(3, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.out = nn.Linear(8, 2)

        def forward(self, x, mask):
            h = self.inp(x)
            return self.out(self.attn(h, h, h, attn_mask=mask)[0])

    torch.manual_seed(14)
    m = Masked().double().eval()
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    per_head = torch.randn(2 * 2, 4, 4, dtype=torch.float64)
    spec = perm_spec(m, example_inputs=[x, per_head])
    rows = spec["attn.in_proj_weight"][0]
    assert rows.labels[1] is None and rows.labels[2] is not None
    assert spec["attn.out_proj.weight"][1] == Split((None, rows.labels[2]), (2, -1))
    moved, perms = _permuted(m, spec, 3)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    torch.testing.assert_close(moved(x, per_head), m(x, per_head), rtol=1e-10, atol=1e-10)
    shared = torch.randn(4, 4, dtype=torch.float64)
    spec2 = perm_spec(m, example_inputs=[x, shared])
    assert spec2["attn.in_proj_weight"][0].labels[1] is not None
    moved, _ = _permuted(m, spec2, 4)
    torch.testing.assert_close(moved(x, shared), m(x, shared), rtol=1e-10, atol=1e-10)


def test_attention_spec_round_trips_and_feeds_unf():
    """The ParamSpace of an attention block survives JSON, and an InvariantUNF on it is
    invariant to the derived permutations."""
    from gensight.nf import InvariantUNF
    from gensight.nf.unf import permute as permute_params
    from gensight.weightspace import ParamBatch, ParamSpace

    torch.manual_seed(13)
    space = ParamSpace.from_module(AttentionBlock())
    assert ParamSpace.from_dict(space.to_dict()) == space
    batch = ParamBatch.from_modules(space, [AttentionBlock() for _ in range(3)])
    spec = space.spec_for("hnp")
    model = InvariantUNF(spec, space.shape_dict, channels=(4,), head_hidden=(8,)).double()
    params = {k: v.double() for k, v in batch.params.items()}
    perms = random_permutation(spec, space.shape_dict, seeded(2), 3)
    with torch.no_grad():
        a = model(params)
        b = model(permute_params(params, spec, perms))
    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_shared_module_called_twice_ties_inputs():
    torch.manual_seed(6)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.sq = nn.Linear(4, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x):
            return self.b(self.sq(torch.relu(self.sq(torch.relu(self.a(x))))))

    spec = _check(Twice(), torch.randn(5, 3), untie=[("a.weight", 0), ("a.bias", 0)])
    assert spec["sq.weight"][0] == spec["sq.weight"][1] == spec["a.weight"][0]


class Sine(nn.Module):
    """A SIREN-style activation, traced through (not a torch.nn leaf)."""

    def __init__(self, w0=3.0):
        super().__init__()
        self.w0 = w0

    def forward(self, x):
        return torch.sin(self.w0 * x)


def test_sine_activation_and_scaled_input():
    torch.manual_seed(8)

    class Siren(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, 6), Sine(), nn.Linear(6, 6), Sine(),
                                     nn.Linear(6, 1))

        def forward(self, x):
            return self.net(2.0 * x - 1.0)

    spec = _check(Siren(), torch.rand(5, 2), untie=[("net.2.weight", 0)])
    assert spec["net.0.weight"] == (1, None)


def test_layernorm_over_feature_maps():
    torch.manual_seed(9)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.LayerNorm([4, 5, 5]), nn.ReLU(),
                      nn.AvgPool2d(5), nn.Flatten(), nn.Linear(4, 3))
    _randomize_stats(m)
    spec = _check(m, torch.randn(3, 2, 5, 5), untie=[("1.weight", 0)],
                  example=True)
    assert spec["1.weight"] == spec["1.bias"] == (1, None, None)


# --- agreement with the hand-written MLP/CNN specs --------------------------------------------

@pytest.mark.parametrize("symmetry", ["np", "hnp"])
@pytest.mark.parametrize("factory", [lambda: make_mlp([3, 6, 5, 2]), lambda: make_mlp([4, 2]),
                                     lambda: make_cnn([3, 4, 5], n_classes=2)])
def test_matches_from_weight_space(symmetry, factory):
    m = factory()
    assert perm_spec(m, symmetry) == PermSpec.from_weight_space(WeightSpace.from_module(m),
                                                                symmetry)


def test_bias_free_layers_have_no_bias_key():
    # from_weight_space keys a bias-less layer by the bias key it would have; the traced spec
    # describes the module's real parameters only
    m = make_mlp([3, 4, 2], bias=False)
    assert perm_spec(m, "hnp") == PermSpec({"0.weight": (1, None), "2.weight": (None, 1)})


def test_np_permutes_inputs_and_outputs():
    torch.manual_seed(7)
    m = make_mlp([3, 6, 5, 2]).double().eval()
    spec = perm_spec(m, "np")
    moved, perms = _permuted(m, spec)
    x = torch.randn(4, 3, dtype=torch.float64)
    p_in, p_out = perms[spec["0.weight"][1]], perms[spec["4.weight"][0]]
    torch.testing.assert_close(moved(x[:, p_in]), m(x)[:, p_out])
    assert not torch.allclose(moved(x), m(x)[:, p_out])


def test_bare_layer_and_explicit_example_inputs():
    assert perm_spec(nn.Linear(3, 4), "np") == PermSpec({"weight": (1, 0), "bias": (1,)})
    m = make_cnn([2, 3], n_classes=2)
    assert perm_spec(m, "hnp", example_inputs=[torch.randn(1, 2, 7, 9)]) == \
        perm_spec(m, "hnp")


def test_training_flags_restored():
    m = Normed().train()
    stats = m.bn1.running_mean.clone()
    perm_spec(m)
    assert all(mod.training for mod in m.modules())
    assert torch.equal(m.bn1.running_mean, stats)


# --- errors -----------------------------------------------------------------------------------

def _one_line(exc_info, *words):
    msg = str(exc_info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)
    assert isinstance(exc_info.value, GensightError)


def test_untraceable_control_flow():
    class Inner(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x
            return -x

    m = nn.Sequential(nn.Linear(3, 3), Inner(), nn.Linear(3, 2))
    with pytest.raises(PermSpecTraceError) as e:
        perm_spec(m)
    _one_line(e, "1 (Inner)", "cannot trace")


class _Op(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.fc = nn.Linear(3, 6)
        self.op = op
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.op(self.fc(x)))


@pytest.mark.parametrize("op,words", [
    (lambda x: x.view(x.shape[0], 2, 3).sum(1), ["view"]),
    (lambda x: x[:, :3], ["getitem", "feature axis"]),
    (lambda x: x.reshape(-1, 3), ["reshape"]),
])
def test_feature_mixing_ops_rejected(op, words):
    with pytest.raises(PermSpecTraceError) as e:
        perm_spec(_Op(op))
    _one_line(e, *words)


@pytest.mark.parametrize("mod,words", [
    (nn.RNN(3, 4, bidirectional=True), ["rnn", "bidirectional"]),
    (nn.GRU(3, 4, bidirectional=True), ["rnn", "bidirectional"]),
])
def test_unsupported_recurrent(mod, words):
    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = mod

        def forward(self, x):
            return self.rnn(x)[0]

    with pytest.raises(PermSpecTraceError) as e:
        perm_spec(Wrap())
    _one_line(e, *words)


def test_unsupported_modules():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(4, 2, add_bias_kv=True)

        def forward(self, x):
            return self.mha(x, x, x)[0]

    with pytest.raises(PermSpecTraceError) as e:
        perm_spec(Attn(), example_inputs=[torch.randn(3, 2, 4)])
    _one_line(e, "mha", "add_bias_kv")
    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(4, 2, kdim=3, vdim=3)

        def forward(self, x, kv):
            return self.mha(x, kv, kv)[0]

    with pytest.raises(PermSpecTraceError) as e:
        perm_spec(Cross(), example_inputs=[torch.randn(3, 2, 4), torch.randn(5, 2, 3)])
    _one_line(e, "mha", "kdim/vdim")
    with pytest.raises(PermSpecTraceError) as e:  # bare: which inputs share a stream?
        perm_spec(nn.MultiheadAttention(4, 2))
    _one_line(e, "MultiheadAttention", "query, key and value", "attn(x, x, x)")
    gn = nn.Sequential(nn.Conv2d(2, 4, 1), nn.GroupNorm(2, 4))
    with pytest.raises(PermSpecTraceError) as e:
        perm_spec(gn)
    _one_line(e, "1", "GroupNorm")
    grouped = nn.Sequential(nn.Conv2d(2, 4, 1, groups=2))
    with pytest.raises(PermSpecTraceError) as e:
        perm_spec(grouped)
    _one_line(e, "0", "groups=2")


def test_flatten_of_feature_maps_and_direct_parameter_rejected():
    m = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 30 * 30, 2))
    with pytest.raises(PermSpecTraceError) as e:
        perm_spec(m)
    _one_line(e, "1", "Flatten", "feature axis")

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)
            self.scale = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return self.fc(x) * self.scale

    with pytest.raises(PermSpecTraceError) as e:
        perm_spec(Scaled())
    _one_line(e, "scale")


def test_unused_parameters_and_bad_example_rejected():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.spare = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(PermSpecTraceError) as e:
        perm_spec(Unused())
    _one_line(e, "spare.weight", "not used")
    ln = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.LayerNorm([4, 5, 5]))
    with pytest.raises(PermSpecTraceError) as e:
        perm_spec(ln)  # the guessed 32x32 input does not fit the LayerNorm
    _one_line(e, "does not run", "normalized_shape")


def test_bad_symmetry():
    with pytest.raises(GensightError):
        perm_spec(make_mlp([2, 2]), "xyz")
