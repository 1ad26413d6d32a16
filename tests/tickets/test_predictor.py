"""Mask predictors: equivariance of the NFN masks under hidden-neuron permutations, exact
per-layer densities, a learnable target, the unrolled objective's gradient, persistence."""

import pytest
import torch

from gensight.tickets.masks import layer_topk, magnitude_masks, straight_through_topk
from gensight.tickets.predictor import (
    MaskCVAE,
    MaskNFN,
    MaskPredictor,
    PredictorError,
    bernoulli_nll,
    gaussian_kl,
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


@pytest.mark.parametrize(("symmetry", "group"), [("hnp", "hnp"), ("np", "np")])
def test_cvae_encoder_and_decoder_are_equivariant(symmetry, group):
    """The paper's cVAE (arXiv 2302.14040, App. D.2): permuting theta_0 and M permutes the
    posterior's mean and log-variance (weights and biases); permuting theta_0 and Z permutes
    the decoder's logits, so the masks at Z = 0 permute with theta_0 (float64)."""
    space = mlp_space(WIDTHS)
    torch.manual_seed(0)
    model = MaskCVAE(space, symmetry, (6, 6), latent=3).double()
    w, b = _inits(4)
    dens = torch.tensor([20 / 40, 9 / 20, 5 / 12]).expand(4, -1)
    masks = magnitude_masks(w, [20, 9, 5])
    g = torch.Generator().manual_seed(5)
    perm = random_permutation(space, group, batch_size=4, generator=g)
    pw = permute(_as_batch(space, w, b), perm)
    w_p, b_p = [t[:, 0] for t in pw.weights], [t[:, 0] for t in pw.biases]
    zero_b = [torch.zeros_like(t) for t in b]
    masks_p = [t[:, 0] > 0.5 for t in permute(
        _as_batch(space, [m.double() for m in masks], zero_b), perm).weights]
    feats, feats_p = weight_features(space, w, b, dens), weight_features(space, w_p, b_p, dens)
    with torch.no_grad():
        mean, logvar = model.encode(feats, masks)
        mean_p, logvar_p = model.encode(feats_p, masks_p)
        for x, x_p in ((mean, mean_p), (logvar, logvar_p)):
            want = permute(x, perm)
            for got, exp in zip(x_p.tensors(), want.tensors(), strict=True):
                assert got.shape[1] == 3 and torch.allclose(got, exp, atol=1e-12)
        z = model.prior_sample(feats, torch.Generator().manual_seed(1))
        logits = model.decode(feats, z)
        logits_p = model.decode(feats_p, permute(z, perm))
        for got, exp in zip(logits_p, permute(_as_batch(space, logits, zero_b), perm).weights,
                            strict=True):
            assert torch.allclose(got, exp[:, 0], atol=1e-12)
        at_mean = model(feats)
        assert all(torch.equal(x, y) for x, y in zip(
            at_mean, model.decode(feats, model.prior_sample(feats, scale=0.0)), strict=True))
    # the mask channel matters: another mask, another posterior
    other = magnitude_masks(w, [10, 5, 3])
    with torch.no_grad():
        assert not torch.allclose(model.encode(feats, other)[0].weights[0], mean.weights[0])


def test_elbo_terms_match_torch_distributions():
    """The KL term is KL(N(mu, sigma^2) || N(0, 1)) summed over latent channels and averaged
    over each layer's entries, then layers; the reconstruction is -log Bernoulli(logits)."""
    from torch.distributions import Bernoulli, Normal, kl_divergence

    space = mlp_space(WIDTHS)
    g = torch.Generator().manual_seed(4)

    def rand_batch(c):
        return WeightBatch(space, [torch.randn(2, c, *ly.weight_shape, generator=g,
                                               dtype=torch.float64) for ly in space.layers],
                           [torch.randn(2, c, *ly.bias_shape, generator=g,
                                        dtype=torch.float64) for ly in space.layers])
    mean, logvar = rand_batch(3), rand_batch(3)
    per_layer = []
    for mw, mb, lw, lb in zip(mean.weights, mean.biases, logvar.weights, logvar.biases,
                              strict=True):
        kl = [kl_divergence(Normal(m, (0.5 * v).exp()), Normal(0.0, 1.0)).sum(1).flatten(1)
              for m, v in ((mw, lw), (mb, lb))]
        per_layer.append(torch.cat(kl, 1).mean(1))
    want = torch.stack(per_layer, 1).mean()
    assert torch.allclose(gaussian_kl(mean, logvar), want, atol=1e-12)
    logits = [torch.randn(2, *ly.weight_shape, generator=g, dtype=torch.float64)
              for ly in space.layers]
    target = [torch.rand(z.shape, generator=g) < 0.3 for z in logits]
    want = torch.stack([-Bernoulli(logits=z).log_prob(t.double()).mean()
                        for z, t in zip(logits, target, strict=True)]).mean()
    assert torch.allclose(bernoulli_nll(logits, target), want, atol=1e-12)


def test_cvae_learns_a_magnitude_target_samples_tickets_and_round_trips(tmp_path):
    """Fitted on magnitude-at-init masks, the cVAE's masks at Z = 0 on new inits overlap the
    magnitude masks far more than chance; a prior draw (``z_seed``) gives another ticket of
    the same per-layer counts, the same one for the same seed; a saved cVAE predicts the
    same."""
    space = mlp_space(WIDTHS)
    w, b = _inits(48)
    counts = [[40, 20, 12], [16, 8, 6]]
    est = MaskPredictor("np", objective="cvae", channels=(8,), latent=2, epochs=40,
                        batch_size=8, lr=3e-3).fit(
        space, w, b, {1: magnitude_masks(w, counts[1])}, counts)
    assert isinstance(est.model_, MaskCVAE) and est.history_[-1] < est.history_[0]
    w2, b2 = _inits(16, seed=1000)
    pred, target = est.predict(w2, b2, counts[1]), magnitude_masks(w2, counts[1])
    agree = sum((p & t).sum() for p, t in zip(pred, target, strict=True)) / (16 * 30)
    assert float(agree) > 0.7  # chance: 0.42 (see test_nfn_learns_a_magnitude_target...)
    s1, s1_again, s2 = (est.predict(w2, b2, counts[1], z_seed=s) for s in (1, 1, 2))
    assert [m.flatten(1).sum(1).tolist() for m in s1] == [[c] * 16 for c in counts[1]]
    assert all(torch.equal(x, y) for x, y in zip(s1, s1_again, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(s1, s2, strict=True))
    # an init's sampled ticket does not depend on the other inits predicted with it
    alone = est.predict([t[5:6] for t in w2], [t[5:6] for t in b2], counts[1], z_seed=1)
    assert all(torch.equal(x[0], y[5]) for x, y in zip(alone, s1, strict=True))
    est.save(tmp_path / "cvae.safetensors")
    loaded = MaskPredictor.load(tmp_path / "cvae.safetensors")
    assert loaded.get_params() == est.get_params() and isinstance(loaded.model_, MaskCVAE)
    for a, c in ((pred, loaded.predict(w2, b2, counts[1])),
                 (s2, loaded.predict(w2, b2, counts[1], z_seed=2))):
        assert all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_cvae_training_loss_reaches_the_encoder_and_reads_the_mask():
    """The ELBO's reconstruction term back-propagates into the encoder through the
    reparameterized draw, and after fitting, decoding at the posterior mean of an init's own
    training mask reconstructs that mask better than the prior's mean does."""
    space = mlp_space(WIDTHS)
    w, b = _inits(32)
    counts = [[40, 20, 12], [16, 8, 6]]
    target = magnitude_masks(w, counts[1])
    torch.manual_seed(0)
    model = MaskCVAE(space, "np", (6,), latent=2).double()
    dens = torch.tensor([16 / 40, 8 / 20, 6 / 12]).expand(32, -1)
    feats = weight_features(space, w, b, dens)
    nll, kl = model.elbo(feats, target, torch.Generator().manual_seed(0))
    nll.backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert any(gr is not None and bool((gr != 0).any()) for gr in grads)
    assert float(kl.detach()) > 0
    # a target the initialization alone does not determine: the magnitude mask of another
    # init, so only the encoder's view of M can tell the decoder what to reconstruct
    other = magnitude_masks(_inits(32, seed=500)[0], counts[1])
    est = MaskPredictor("np", objective="cvae", channels=(8,), latent=4, epochs=60,
                        batch_size=8, lr=3e-3, kl_weight=0.1).fit(
        space, w, b, {1: other}, counts)
    with torch.no_grad():
        mean, _ = est.model_.encode(feats, other)
        posterior = bernoulli_nll(est.model_.decode(feats, mean), other)
        prior = bernoulli_nll(est.model_(feats), other)
    assert float(posterior) < 0.9 * float(prior)


def test_predictor_files_from_before_the_cvae_still_load(tmp_path):
    """A file whose params predate ``latent`` and ``kl_weight`` loads with their defaults."""
    import json

    from safetensors.torch import save_file

    state, meta, params = _saved(tmp_path)
    meta["params"] = json.dumps({k: v for k, v in params.items()
                                 if k not in ("latent", "kl_weight")})
    path = tmp_path / "old.safetensors"
    save_file(state, str(path), metadata=meta)
    old = MaskPredictor.load(path)
    assert (old.latent, old.kl_weight, old.objective) == (5, 1.0, "bce")
    new = MaskPredictor.load(tmp_path / "good.safetensors")
    w, b = _inits(3, seed=70)
    assert all(torch.equal(x, y) for x, y in zip(old.predict(w, b, [30, 15, 9]),
                                                 new.predict(w, b, [30, 15, 9]), strict=True))


def test_bad_arguments_name_the_field():
    with pytest.raises(PredictorError, match="kind must be one of hnp, np, mlp; got 'cnn'"):
        MaskPredictor("cnn")
    with pytest.raises(PredictorError, match="objective"):
        MaskPredictor(objective="hinge")
    with pytest.raises(PredictorError, match="not fitted"):
        MaskPredictor().predict([], [], [])
    with pytest.raises(PredictorError, match="objective 'cvae' needs an NFN kind"):
        MaskPredictor("mlp", objective="cvae")
    for bad, shown in (({"latent": 0}, "latent 0,"), ({"latent": 2.5}, "latent 2.5,"),
                       ({"kl_weight": float("nan")}, "kl_weight nan"),
                       ({"kl_weight": -1.0}, "kl_weight -1.0")):
        with pytest.raises(PredictorError, match=f"latent must be an integer >= 1 and "
                           f"kl_weight a finite number >= 0; got .*{shown}"):
            MaskPredictor("np", objective="cvae", **bad)
    space = mlp_space(WIDTHS)
    w, b = _inits(4)
    counts = [[40, 20, 12], [30, 15, 9]]
    bce = MaskPredictor("np", channels=(4,), epochs=0).fit(
        space, w, b, {1: magnitude_masks(w, counts[1])}, counts)
    with pytest.raises(PredictorError, match="z_seed needs a predictor fitted with "
                       "objective 'cvae'; this one has 'bce'"):
        bce.predict(w, b, counts[1], z_seed=1)
    cvae = MaskPredictor("np", objective="cvae", channels=(4,), epochs=0).fit(
        space, w, b, {1: magnitude_masks(w, counts[1])}, counts)
    for bad in (True, -1, 2**64, 1.5):
        with pytest.raises(PredictorError, match="z_seed must be an integer in 0..2\\^63-1"):
            cvae.predict(w, b, counts[1], z_seed=bad)


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
