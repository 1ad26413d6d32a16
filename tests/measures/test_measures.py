import math

import numpy as np
import pytest
import torch
from torch import nn

from gensight.measures import (
    MEASURES,
    MeasureError,
    MemberData,
    NotApplicable,
    compute,
    operator_norm,
    output_margins,
    pacbayes_sigma,
    power_law_alpha,
    sharpness_alpha,
)
from gensight.measures.core import PerturbedAccuracy, conv_operator, log_bisect
from gensight.measures.margins import normalized_margins, signature


def mlp(seed=0, act=nn.ReLU):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), act(), nn.Linear(6, 3))


def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(3, 2, 3, stride=1, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))


def data(n=60, shape=(4,), seed=0, model=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = model(x).argmax(1) if model is not None else torch.randint(0, 3, (n,), generator=g)
    return x, y


@pytest.mark.parametrize("layer, shape", [
    (nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 7, 7)),
    (nn.Conv2d(1, 4, 3, padding=1), (1, 5, 5)),
    (nn.Conv1d(2, 3, 3, stride=2, padding=1), (2, 9)),
])
def test_conv_operator_norm_equals_the_explicit_matrix_norm(layer, shape):
    torch.manual_seed(1)
    fwd, _ = conv_operator(layer, shape)
    n = math.prod(shape)
    matrix = fwd(torch.eye(n, dtype=torch.float64).reshape(n, *shape)).reshape(n, -1).T
    exact = float(torch.linalg.matrix_norm(matrix, ord=2))
    assert operator_norm(layer, shape, tol=1e-12) == pytest.approx(exact, rel=1e-6)
    # ... and differs from the norm of the reshaped kernel, which is not the operator norm
    kernel = layer.weight.detach().double().reshape(layer.out_channels, -1)
    assert abs(float(torch.linalg.matrix_norm(kernel, ord=2)) - exact) > 1e-3


def test_conv_adjoint_is_the_transpose():
    layer = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    fwd, adj = conv_operator(layer, (2, 8, 8))
    v = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    w = torch.randn_like(fwd(v))
    assert float((fwd(v) * w).sum()) == pytest.approx(float((v * adj(w)).sum()), rel=1e-10)


def test_norm_measures_by_hand():
    model = mlp()
    init = mlp(seed=5)
    x, y = data(model=model)
    vals = compute(MemberData(model, x, y, init), list(MEASURES)[:10]).values
    w = [model[0].weight.detach().double(), model[2].weight.detach().double()]
    w0 = [init[0].weight.detach().double(), init[2].weight.detach().double()]
    spec = [float(torch.linalg.matrix_norm(m, 2)) for m in w]
    fro = [float(m.norm()) for m in w]
    assert vals["params"] == 4 * 6 + 6 + 6 * 3 + 3
    assert vals["log.prod.of.spec"] == pytest.approx(sum(2 * math.log(s) for s in spec))
    assert vals["log.sum.of.spec"] == pytest.approx(
        math.log(2) + sum(math.log(s ** 2) for s in spec) / 2)
    assert vals["log.prod.of.fro"] == pytest.approx(sum(2 * math.log(f) for f in fro))
    assert vals["param.norm"] == pytest.approx(sum(f ** 2 for f in fro))
    assert vals["fro.dist"] == pytest.approx(sum(float((a - b).norm()) ** 2
                                                 for a, b in zip(w, w0, strict=True)))
    assert vals["dist.spec.init"] == pytest.approx(sum(
        float(torch.linalg.matrix_norm(a - b, 2)) ** 2 for a, b in zip(w, w0, strict=True)))
    # path norm: every parameter squared, all-ones input, no activation needed (all >= 0)
    p = {k: v.detach().double() ** 2 for k, v in model.state_dict().items()}
    h = p["0.weight"] @ torch.ones(4, dtype=torch.float64) + p["0.bias"]
    out = p["2.weight"] @ h + p["2.bias"]
    assert vals["path.norm"] == pytest.approx(float(out.sum()))


def test_margin_measures_by_hand():
    model = mlp()
    x, y = data(model=model)   # labels = predictions: every margin is positive
    margins = output_margins(model, x, y)
    assert (margins > 0).all()
    gamma = float(torch.quantile(margins, 0.1))
    vals = compute(MemberData(model, x, y), ["inverse.margin",
                                             "log.prod.of.spec.over.margin"]).values
    assert vals["inverse.margin"] == pytest.approx(1 / gamma ** 2)
    spec = compute(MemberData(model, x, y), ["log.prod.of.spec"]).values["log.prod.of.spec"]
    assert vals["log.prod.of.spec.over.margin"] == pytest.approx(spec - 2 * math.log(gamma))


def test_measures_that_do_not_apply_say_why():
    model = mlp(act=nn.Tanh)
    x, y = data()                       # random labels: most margins are negative
    res = compute(MemberData(model, x, y), ["path.norm", "inverse.margin", "params"])
    assert math.isnan(res.values["path.norm"]) and "ReLU networks only" in res.notes["path.norm"]
    assert math.isnan(res.values["inverse.margin"]) and "<= 0" in res.notes["inverse.margin"]
    assert res.values["params"] == 51
    with pytest.raises(MeasureError, match="needs the network at initialization"):
        compute(MemberData(mlp(), x, y), ["fro.dist"])
    with pytest.raises(MeasureError, match="needs training data"):
        compute(MemberData(mlp()), ["inverse.margin"])
    with pytest.raises(MeasureError, match="unknown measure 'nope'"):
        compute(MemberData(mlp()), ["nope"])


def test_cnn_measures_use_operator_norms():
    model = cnn()
    x, y = data(shape=(1, 6, 6), model=model)
    vals = compute(MemberData(model, x, y), ["log.prod.of.spec"]).values
    n1 = operator_norm(model[0], (1, 6, 6))
    n2 = operator_norm(model[2], (3, 3, 3))
    n3 = float(torch.linalg.matrix_norm(model[6].weight.detach().double(), 2))
    assert vals["log.prod.of.spec"] == pytest.approx(2 * math.log(n1 * n2 * n3), rel=1e-6)


def test_power_law_alpha_recovers_a_pareto_exponent():
    rng = np.random.default_rng(0)
    a = 3.0
    samples = (1 - rng.random(4000)) ** (-1 / (a - 1))   # density ~ x^-a, x >= 1
    assert power_law_alpha(samples) == pytest.approx(a, rel=0.08)


def test_log_bisect_finds_threshold():
    s, evals = log_bisect(lambda v: v <= 0.37, 0.01, rtol=1e-3)
    assert s == pytest.approx(0.37, rel=1e-3) and evals < 25


def test_perturbed_accuracy_early_exit_is_exact():
    model = mlp()
    x, y = data(n=400, model=model)
    ev = PerturbedAccuracy(model, x, y, chunk=50)
    g = torch.Generator().manual_seed(0)
    deltas = {k: torch.randn((3, *v.shape), generator=g) * 0.5 for k, v in ev.params.items()}
    full = ev.evaluate(deltas)
    # by hand: three perturbed copies, one at a time
    manual = []
    for i in range(3):
        m = mlp()
        with torch.no_grad():
            for k, p in m.named_parameters():
                p.add_(deltas[k][i])
        manual.append(float((m(x).argmax(1) == y).float().mean()))
    assert full == pytest.approx(np.mean(manual))
    for threshold in (0.2, full - 0.01, full + 0.01, 0.99):
        decided = ev.evaluate(deltas, threshold) >= threshold
        assert decided == (full >= threshold)


def test_pacbayes_sigma_std_not_variance_and_meets_the_target():
    model = mlp()
    x, y = data(n=300, model=model)
    sigma, info = pacbayes_sigma(model, x, y, samples=8, rtol=0.01, seed=3)
    assert info["base_accuracy"] == 1.0
    g = torch.Generator().manual_seed(3)
    z = {k: torch.randn((8, *v.shape), generator=g) for k, v in model.named_parameters()}
    ev = PerturbedAccuracy(model, x, y)

    def drop(s):  # noise with standard deviation s (the same draws as the search)
        return 1.0 - ev.evaluate({k: v * s for k, v in z.items()})

    assert drop(sigma / 1.02) <= 0.1 + 1e-9
    assert drop(sigma * 1.02) > 0.1
    # the magnitude-aware search finds a relative scale
    rel, _ = pacbayes_sigma(model, x, y, magnitude=True, samples=8)
    assert 0 < rel < 10


def test_sharpness_alpha_is_below_the_random_noise_scale():
    model = mlp()
    x, y = data(n=300, model=model)
    alpha, _ = sharpness_alpha(model, x, y, restarts=2, steps=4, rtol=0.05)
    sigma, _ = pacbayes_sigma(model, x, y, samples=8)
    # the worst case in a box of radius alpha hurts as much as random noise of a much larger
    # scale: adversarial perturbations are more damaging than random ones
    assert 0 < alpha < sigma


def test_margin_signatures():
    model = mlp()
    x, y = data(n=200, model=model)
    margins = normalized_margins(model, x, y)
    assert len(margins) == 2 and all((m > 0).all() for m in margins)
    # input-layer margin of a linear first layer is checked by hand for one example:
    # d = (f_i - f_j) / ||grad_x (f_i - f_j)||, then normalized by the input's total variation
    xi = x[:1].clone().requires_grad_(True)
    out = model(xi)[0]
    i = int(y[0])
    j = int(out.detach().clone().index_fill_(0, torch.tensor([i]), -1e9).argmax())
    diff = out[i] - out[j]
    (grad,) = torch.autograd.grad(diff, xi)
    nu = torch.sqrt(((x - x.mean(0)) ** 2).sum(1).mean())
    assert margins[0][0] == pytest.approx(float(diff.detach() / grad.norm() / nu), rel=1e-5)
    sig = signature(margins, "quartile")
    logm = np.log(margins[1])
    q1, q3 = np.percentile(logm, [25, 75])
    assert sig.shape == (10,) and sig[8] == pytest.approx(q3) and sig[6] == pytest.approx(q1)
    assert signature(margins, "moment").shape == (8,)
    with pytest.raises(NotApplicable):
        normalized_margins(model, x[:3], y[:3])
