"""Mixing policies: invariants, hand-computed updates (arXiv 2410.11820 Sec. 3.2; arXiv
2312.02406 Alg. 1), checkpoint round trips and errors."""

import math

import numpy as np
import pytest

from gensight.mixing import (
    ADO,
    ODM,
    MixingError,
    Natural,
    PowerLaw,
    Uniform,
    floor_distribution,
    make_policy,
)


def test_floor_distribution_hand_example():
    q = floor_distribution([0.0, 0.001, 0.299, 0.7], 0.05)
    # two domains clipped to 0.05; the other two keep their ratio 0.299 : 0.7 in the rest 0.9
    np.testing.assert_allclose(q, [0.05, 0.05, 0.9 * 0.299 / 0.999, 0.9 * 0.7 / 0.999])
    p = np.array([0.2, 0.3, 0.5])
    np.testing.assert_allclose(floor_distribution(p, 0.1), p)  # already above the floor
    with pytest.raises(MixingError, match="floor"):
        floor_distribution(p, 0.5)


def test_floor_distribution_invariants_random():
    rng = np.random.default_rng(0)
    for _ in range(200):
        k = int(rng.integers(2, 9))
        p = rng.dirichlet(np.full(k, 0.2))
        floor = float(rng.uniform(0, 1 / k))
        q = floor_distribution(p, floor)
        assert q.sum() == pytest.approx(1.0)
        assert np.all(q >= floor - 1e-12)
        free = q > floor + 1e-12
        if free.sum() >= 2:  # unclipped domains keep their proportions
            r = q[free] / p[free]
            np.testing.assert_allclose(r, r[0], rtol=1e-9)


def _random_run(policy, steps, seed=0):
    rng = np.random.default_rng(seed)
    k = policy.k
    decay = rng.uniform(0.2, 0.8, k)
    out = []
    for t in range(1, steps + 1):
        counts = rng.multinomial(16, policy.policy())
        losses = 1.0 + 3.0 * t ** -decay + rng.normal(0, 0.02, k)
        losses[counts == 0] = np.nan
        out.append(policy.update(losses, counts))
    return np.array(out)


def test_ado_policy_is_a_distribution_with_the_floor():
    ado = ADO(list("abcd"), [4, 3, 2, 1], warmup=20, ignore=2, refit_every=50, min_prob=0.05)
    pis = _random_run(ado, 120)
    assert ado.n_fits >= 2
    np.testing.assert_allclose(pis.sum(1), 1.0)
    assert np.all(pis >= 0.05 - 1e-12)
    np.testing.assert_allclose(pis[:18], np.tile([0.4, 0.3, 0.2, 0.1], (18, 1)))  # warm-up: mu
    assert not np.allclose(pis[-1], [0.4, 0.3, 0.2, 0.1])  # the scaling laws moved it


def test_ado_smoothing_matches_its_definition():
    ado = ADO(list("abc"), [1, 1, 2], warmup=10, ignore=0, refit_every=8)
    rng = np.random.default_rng(1)
    rhos, pis = [], []
    for t in range(1, 45):
        pi_bar_before = ado.pi_bar.copy()
        counts = rng.multinomial(8, ado.policy())
        losses = 1 + 2 * t ** -0.4 * np.array([1.0, 1.5, 0.7])
        ado.update(np.where(counts > 0, losses, np.nan), counts)
        rhos.append(ado.rho.copy())
        pis.append(ado.pi.copy())
        if t >= 10:  # (4): pi(t) = g2 pi_bar(t-1) + (1 - g2) rho(t)
            np.testing.assert_allclose(ado.pi, 0.9 * pi_bar_before + 0.1 * ado.rho)
        # pi_bar(t) is the mean of rho(1..t) (rho = mu during the warm-up)
        np.testing.assert_allclose(ado.pi_bar, np.mean(rhos, axis=0))


def test_ado_update_on_hand_made_history():
    def fitter(n, loss):  # a fixed rule, so that every number below can be done by hand
        return PowerLaw(eps=0.5 * float(loss.min()), beta=float(loss[0]), alpha=0.5)

    ado = ADO(["a", "b"], [3, 1], warmup=2, ignore=0, refit_every=1, fitter=fitter)
    mu = [0.75, 0.25]
    # step 1: before the warm-up ends the mixture is the prior
    np.testing.assert_allclose(ado.update([4.0, 3.0], [3, 1]), mu)
    # step 2: only 2 points, too few to fit: still the prior
    np.testing.assert_allclose(ado.update([3.0, 2.0], [2, 2]), mu)
    assert ado.n_fits == 0
    # step 3: domain b is absent (NaN, count 0) and keeps its previous loss 2.0
    pi3 = ado.update([2.0, np.nan], [4, 0])
    assert ado.n_fits == 1
    np.testing.assert_allclose(ado.loss_hist[:, 1], [3.0, 2.0, 2.0])
    np.testing.assert_allclose(ado.n, [9, 3])
    # credit h: 0.9 h + 0.1 (batch shares), from h = mu
    h = [0.75, 0.25]
    for c in ([0.75, 0.25], [0.5, 0.5], [1.0, 0.0]):
        h = [0.9 * h[i] + 0.1 * c[i] for i in range(2)]
    np.testing.assert_allclose(ado.h, h)
    # fits: a: eps 1, beta 4, alpha .5 (losses 4, 3, 2); b: eps 1, beta 3 (losses 3, 2, 2)
    speed_a = 0.5 * (4 * 9 ** -0.5) / 9  # alpha (L(n) - eps) / n at n = 9
    speed_b = 0.5 * (3 * 3 ** -0.5) / 3
    raw = [0.75 * math.sqrt(h[0]) * speed_a, 0.25 * math.sqrt(h[1]) * speed_b]
    rho = [r / sum(raw) for r in raw]  # both above the floor 0.01
    np.testing.assert_allclose(ado.rho, rho)
    np.testing.assert_allclose(pi3, [0.9 * mu[i] + 0.1 * rho[i] for i in range(2)])
    pi_bar3 = [(2 * mu[i] + rho[i]) / 3 for i in range(2)]
    np.testing.assert_allclose(ado.pi_bar, pi_bar3)
    # step 4: smoothing uses pi_bar(3)
    pi4 = ado.update([1.5, 1.8], [2, 2])
    np.testing.assert_allclose(pi4, 0.9 * np.array(pi_bar3) + 0.1 * ado.rho)


def test_ado_real_fit_follows_the_faster_domain():
    """Domain a keeps improving, b has plateaued: ADO moves mass to a."""
    ado = ADO(["a", "b"], [1, 1], warmup=50, ignore=5, refit_every=25)
    for _ in range(200):
        n = ado.n + ado.policy() * 32
        ado.update([1.0 + 5.0 * n[0] ** -0.3, 2.0 + 0.5 * n[1] ** -0.9], ado.policy() * 32)
    a, b = ado.laws()
    assert b.eps == pytest.approx(2.0, rel=0.05) and a.eps < 1.5
    assert ado.policy()[0] > 0.6


def test_odm_hand_computed():
    odm = ODM(list("abc"))
    np.testing.assert_allclose(odm.policy(), [1 / 3] * 3)
    r = np.zeros(3)
    pi = np.full(3, 1 / 3)
    rng = np.random.default_rng(2)
    for t in range(1, 12):
        losses = np.array([3.0, 2.0, 1.0]) + rng.uniform(0, 0.1, 3)
        counts = np.array([1, 0, 2]) if t % 2 else np.array([2, 1, 1])
        got = odm.update(np.where(counts > 0, losses, np.nan), counts)
        for k in range(3):
            if counts[k]:
                r[k] = 0.9 * r[k] + 0.1 * losses[k] / pi[k]
        eps_prev = 1 / 3 if t == 1 else min(1 / 3, math.sqrt(math.log(3) / (3 * (t - 1))))
        eps = min(1 / 3, math.sqrt(math.log(3) / (3 * t)))
        w = [math.exp(eps_prev * r[k]) for k in range(3)]
        pi = np.array([(1 - 3 * eps) * w[k] / sum(w) + eps for k in range(3)])
        np.testing.assert_allclose(got, pi)
    assert pi[0] > pi[2]  # the domain with the larger loss gets more samples
    assert pi.sum() == pytest.approx(1.0)


def test_natural_and_uniform():
    np.testing.assert_allclose(Natural(["a", "b"], [100, 300]).policy(), [0.25, 0.75])
    np.testing.assert_allclose(Uniform(list("abcd")).update([1, 1, 1, 1], [1, 1, 1, 1]),
                               [0.25] * 4)


@pytest.mark.parametrize("name", ["ado", "odm", "natural", "uniform"])
def test_state_dict_round_trip_continues_identically(name):
    kw = {"warmup": 10, "ignore": 1, "refit_every": 5} if name == "ado" else {}
    a = make_policy(name, list("abc"), [5, 3, 2], **kw)
    _random_run(a, 23, seed=4)
    b = make_policy(name, list("abc"), [5, 3, 2], **kw)
    b.load_state_dict({k: v.copy() for k, v in a.state_dict().items()})
    for t in range(15):
        counts = np.array([3, 2, 1 + t % 2])
        losses = np.array([2.0, 1.5, 1.0]) * (1 + 1 / (t + 30))
        np.testing.assert_array_equal(a.update(losses, counts), b.update(losses, counts))


def test_errors_name_the_fault():
    with pytest.raises(MixingError, match="unknown mixing policy 'doremi'"):
        make_policy("doremi", ["a"], [1])
    for name in ("ado", "natural", "odm", "uniform"):
        with pytest.raises(MixingError, match="domain 'b' has no data"):
            make_policy(name, ["a", "b"], [10, 0])
    ado = ADO(["a", "b"], [1, 1])
    with pytest.raises(MixingError, match="domain 'b' has a non-finite loss"):
        ado.update([1.0, np.nan], [1, 1])
    with pytest.raises(MixingError, match="domain 'a' has a non-finite loss"):
        ODM(["a", "b"]).update([np.inf, 1.0], [1, 0])
    with pytest.raises(MixingError, match="expected 2 domain losses"):
        ado.update([1.0], [1])
    with pytest.raises(MixingError, match="min_prob"):
        ADO(["a", "b", "c"], [1, 1, 1], min_prob=0.5)
    with pytest.raises(MixingError, match="unique"):
        Uniform(["a", "a"])


def test_ado_floor_holds_for_a_skewed_prior():
    """A domain whose natural share is below min_prob gets min_prob from the first step on."""
    ado = ADO(["a", "b"], [999, 1])
    np.testing.assert_allclose(ado.policy(), [0.99, 0.01])
    np.testing.assert_allclose(ado.pi_bar, [0.99, 0.01])
    np.testing.assert_allclose(ado.prior, [0.999, 0.001])  # the preference keeps the raw prior
    ado = ADO(list("abc"), [990, 9, 1], warmup=20, ignore=2, refit_every=10, min_prob=0.02)
    pis = _random_run(ado, 80, seed=3)
    assert ado.n_fits >= 2
    assert np.all(pis >= 0.02 - 1e-12)
    np.testing.assert_allclose(pis.sum(1), 1.0)
    np.testing.assert_allclose(pis[:18], np.tile(floor_distribution([0.99, 0.009, 0.001], 0.02),
                                                 (18, 1)))


def test_ado_history_is_not_copied_on_every_update():
    ado = ADO(list("ab"), [1, 1], warmup=10_000)
    hist = []
    for t in range(300):
        before = ado.loss_hist
        loss = [2.0 + t, 3.0 + t]
        ado.update(loss, [1, 1])
        hist.append(loss)
        if 0 < t < 256 and t & (t - 1):  # not at a doubling of the buffer
            assert np.shares_memory(before, ado.loss_hist)
    np.testing.assert_array_equal(ado.loss_hist, hist)
    np.testing.assert_array_equal(ado.n_hist[:, 0], np.arange(1, 301))
    state = ado.state_dict()
    assert state["loss_hist"].shape == (300, 2) and state["n_hist"].shape == (300, 2)
    b = ADO(list("ab"), [1, 1], warmup=10_000)
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.loss_hist, ado.loss_hist)
    b.update([1.0, 1.0], [1, 1])
    assert b.loss_hist.shape == (301, 2)


@pytest.mark.parametrize("kw", [{"max_fit_points": 1}, {"max_fit_points": 2},
                                {"warmup": float("nan")}, {"ignore": float("nan")},
                                {"refit_every": True}, {"smooth_window": 2.5}])
def test_ado_integer_settings_are_checked(kw):
    name = next(iter(kw))
    with pytest.raises(MixingError, match=f"ADO {name} must be an integer"):
        ADO(["a", "b"], [1, 1], **kw)
    ADO(["a", "b"], [1, 1], max_fit_points=3)  # the smallest that can fit
