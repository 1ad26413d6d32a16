"""Mask predictors: equivariance of the NFN masks under hidden-neuron permutations, exact
per-layer densities, a learnable target, the unrolled objective's gradient, persistence."""

import pytest
import torch

from gensight.tickets.masks import layer_topk, magnitude_masks, straight_through_topk
from gensight.tickets.predictor import (
    MaskNFN,
    MaskPredictor,
    PredictorError,
    unrolled_loss,
    weight_features,
)
from gensight.tickets.train import init_weights, mlp_space
from gensight.weightspace import WeightBatch, permute, random_permutation

torch.set_num_threads(1)
WIDTHS = [8, 5, 4, 3]


def _inits(n, seed=0):
    return init_weights(list(range(seed, seed + n)), WIDTHS, torch.float64)


def _as_batch(space, w, b):
    return WeightBatch(space, [t.unsqueeze(1) for t in w], [t.unsqueeze(1) for t in b],
                       check_finite=False)


@pytest.mark.parametrize(("symmetry", "group"), [("hnp", "hnp"), ("np", "hnp"), ("np", "np")])
def test_nfn_masks_are_equivariant_to_hidden_permutations(symmetry, group):
    """HNP and NP predictors under hidden-neuron permutations; the NP predictor (no IO
    embedding) also under permutations of the input and output neurons."""
    space = mlp_space(WIDTHS)
    torch.manual_seed(0)
    model = MaskNFN(space, symmetry, (6, 6)).double()
    w, b = _inits(5)
    counts = [20, 9, 5]
    dens = torch.tensor([20 / 40, 9 / 20, 5 / 12]).expand(5, -1)
    g = torch.Generator().manual_seed(3)
    perm = random_permutation(space, group, batch_size=5, generator=g)
    pw = permute(_as_batch(space, w, b), perm)
    w_p, b_p = [t[:, 0] for t in pw.weights], [t[:, 0] for t in pw.biases]
    with torch.no_grad():
        logits = model(weight_features(space, w, b, dens))
        logits_p = model(weight_features(space, w_p, b_p, dens))
    expected = permute(_as_batch(space, logits, [torch.zeros_like(t) for t in b]), perm)
    for got, exp in zip(logits_p, expected.weights, strict=True):
        assert torch.allclose(got, exp[:, 0], atol=1e-12)
    # no ties among the logits here, so the top-k masks permute exactly
    assert all(len(z.flatten(1)[0].unique()) == z[0].numel() for z in logits)
    masks, masks_p = layer_topk(logits, counts), layer_topk(logits_p, counts)
    exp_masks = permute(_as_batch(space, [m.double() for m in masks],
                                  [torch.zeros_like(t) for t in b]), perm)
    for got, exp in zip(masks_p, exp_masks.weights, strict=True):
        assert torch.equal(got, exp[:, 0] > 0.5)


@pytest.mark.parametrize("kind", ["hnp", "np", "mlp"])
def test_predictor_masks_have_exact_per_layer_counts(kind):
    space = mlp_space(WIDTHS)
    w, b = _inits(6)
    masks = {1: magnitude_masks(w, [30, 15, 9])}
    counts = [[40, 20, 12], [30, 15, 9], [10, 5, 3]]
    est = MaskPredictor(kind, channels=(4,), hidden=16, epochs=1, batch_size=3).fit(
        space, w, b, masks, counts)
    for k in (1, 2):
        pred = est.predict(w, b, counts[k])
        assert [m.flatten(1).sum(1).tolist() for m in pred] == [[c] * 6 for c in counts[k]]
    with pytest.raises(PredictorError, match="do not fit layers"):
        est.predict(w, b, [41, 5, 3])


def test_nfn_learns_a_magnitude_target_and_round_trips(tmp_path):
    """Fitted on magnitude-at-init masks, the HNP predictor's masks on new inits overlap the
    magnitude masks far more than chance does, and a saved predictor predicts the same."""
    space = mlp_space(WIDTHS)
    w, b = _inits(48)
    counts = [[40, 20, 12], [16, 8, 6]]
    est = MaskPredictor("hnp", channels=(8,), epochs=40, batch_size=8, lr=3e-3).fit(
        space, w, b, {1: magnitude_masks(w, counts[1])}, counts)
    assert est.history_[-1] < est.history_[0]
    w2, b2 = _inits(16, seed=1000)
    pred, target = est.predict(w2, b2, counts[1]), magnitude_masks(w2, counts[1])
    agree = sum((p & t).sum() for p, t in zip(pred, target, strict=True)) / (16 * 30)
    assert float(agree) > 0.7  # chance: (16^2/40 + 8^2/20 + 6^2/12) / 30 = 0.42
    est.save(tmp_path / "p.safetensors")
    loaded = MaskPredictor.load(tmp_path / "p.safetensors")
    assert loaded.counts_ == counts and loaded.get_params() == est.get_params()
    again = loaded.predict(w2, b2, counts[1])
    assert all(torch.equal(x, y) for x, y in zip(pred, again, strict=True))


def test_unrolled_loss_reaches_the_logits_through_the_straight_through_mask():
    """The unrolled objective's gradient wrt the logits is the straight-through chain rule:
    dL/dm (by autograd through the unrolled SGD steps) times sigma'(logit)."""
    w, b = _inits(2)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 8, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    logits = [torch.randn(2, *t.shape[1:], generator=g, dtype=torch.float64,
                          requires_grad=True) for t in w]
    counts = [25, 12, 7]
    st = [straight_through_topk(z.reshape(2, -1), c).view(z.shape)
          for z, c in zip(logits, counts, strict=True)]
    loss = unrolled_loss(st, w, b, [(x, y), (x, y)], (x, y), lr=0.3)
    loss.backward()
    hard = [m.detach().clone().requires_grad_(True) for m in st]
    unrolled_loss(hard, w, b, [(x, y), (x, y)], (x, y), lr=0.3).backward()
    for z, m in zip(logits, hard, strict=True):
        s = torch.sigmoid(z.detach())
        assert torch.allclose(z.grad, m.grad * s * (1 - s), atol=1e-14)
        assert bool((m.grad != 0).any())


def test_bad_arguments_name_the_field():
    with pytest.raises(PredictorError, match="kind must be one of hnp, np, mlp; got 'cnn'"):
        MaskPredictor("cnn")
    with pytest.raises(PredictorError, match="objective"):
        MaskPredictor(objective="hinge")
    with pytest.raises(PredictorError, match="not fitted"):
        MaskPredictor().predict([], [], [])


def test_unrolled_loss_uses_the_given_activation():
    """With no SGD step the unrolled loss is the masked tanh MLP's cross-entropy."""
    import torch.nn.functional as F

    w, b = _inits(2)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 8, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    masks = magnitude_masks(w, [25, 12, 7])
    masks = [m.double() for m in masks]
    losses = []
    for j in range(2):
        h = x
        for i, (wi, bi, mi) in enumerate(zip(w, b, masks, strict=True)):
            h = h @ (wi[j] * mi[j]).T + bi[j]
            if i < len(w) - 1:
                h = torch.tanh(h)
        losses.append(F.cross_entropy(h, y))
    want = torch.stack(losses).mean()
    got = unrolled_loss(masks, w, b, [], (x, y), lr=0.3, activation="tanh")
    assert torch.allclose(got, want, atol=1e-12)
    relu = unrolled_loss(masks, w, b, [], (x, y), lr=0.3)
    assert not torch.allclose(relu, want, atol=1e-6)


def test_fit_unrolls_with_the_zoos_activation(monkeypatch):
    import types

    import gensight.tickets.predictor as predictor

    space = mlp_space(WIDTHS)
    w, b = _inits(4)
    g = torch.Generator().manual_seed(2)
    data = types.SimpleNamespace(x_train=torch.rand(40, 8, generator=g, dtype=torch.float64),
                                 y_train=torch.randint(3, (40,), generator=g))
    seen = []
    real = predictor.unrolled_loss

    def spy(*args, **kwargs):
        seen.append(args[6] if len(args) > 6 else kwargs.get("activation"))
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor, "unrolled_loss", spy)
    counts = [[40, 20, 12], [30, 15, 9]]
    est = MaskPredictor("hnp", channels=(4,), epochs=1, batch_size=4, objective="bce+unroll",
                        unroll_steps=1, unroll_batch=8, unroll_every=1).fit(
        space, w, b, {1: magnitude_masks(w, counts[1])}, counts, dataset=data,
        activation="tanh")
    assert seen and all(a is torch.tanh for a in seen)
    assert est.activation_ == "tanh"
    with pytest.raises(PredictorError, match="activation must be one of"):
        MaskPredictor("hnp", channels=(4,), epochs=1).fit(
            space, w, b, {1: magnitude_masks(w, counts[1])}, counts, activation="swish")


def _saved(tmp_path):
    import json

    from safetensors.torch import load_file

    space = mlp_space(WIDTHS)
    w, b = _inits(4)
    counts = [[40, 20, 12], [30, 15, 9]]
    est = MaskPredictor("hnp", channels=(4,), epochs=1, batch_size=4).fit(
        space, w, b, {1: magnitude_masks(w, counts[1])}, counts)
    path = tmp_path / "good.safetensors"
    est.save(path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    return load_file(str(path)), meta, json.loads(meta["params"])


@pytest.mark.parametrize("damage", ["missing tensor", "unknown param", "ill-typed param",
                                    "params not a table", "no tensors"])
def test_malformed_predictor_files_raise_predictor_error(tmp_path, damage):
    import json

    from safetensors.torch import save_file

    state, meta, params = _saved(tmp_path)
    if damage == "missing tensor":
        state.pop(sorted(state)[0])
    elif damage == "unknown param":
        meta["params"] = json.dumps({**params, "colour": "red"})
    elif damage == "ill-typed param":
        meta["params"] = json.dumps({**params, "epochs": "many"})
    elif damage == "params not a table":
        meta["params"] = json.dumps([1, 2])
    else:
        state = {}
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path), metadata=meta)
    with pytest.raises(PredictorError) as err:
        MaskPredictor.load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert MaskPredictor.load(tmp_path / "good.safetensors").activation_ == "relu"
