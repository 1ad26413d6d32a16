"""Power-law fits (arXiv 2410.11820, Sec. 3.1) on seeded synthetic curves."""

import numpy as np
import pytest

from gensight.mixing import MixingError, PowerLaw, fit_power_law, smooth_losses


@pytest.mark.parametrize("eps,beta,alpha,seed", [(1.2, 3.0, 0.4, 0), (2.0, 10.0, 0.6, 1),
                                                 (0.5, 1.5, 0.25, 2), (3.0, 20.0, 0.7, 3)])
def test_fit_recovers_known_parameters_from_noisy_curve(eps, beta, alpha, seed):
    rng = np.random.default_rng(seed)
    n = np.linspace(50, 20000, 200)
    loss = PowerLaw(eps, beta, alpha)(n) * np.exp(rng.normal(0, 0.005, n.size))
    fit = fit_power_law(n, loss)
    assert fit.eps == pytest.approx(eps, rel=0.05)
    assert fit.alpha == pytest.approx(alpha, abs=0.06)
    assert fit.beta == pytest.approx(beta, rel=0.3)
    # and the curve itself is recovered much more tightly than the parameters
    np.testing.assert_allclose(fit(n), PowerLaw(eps, beta, alpha)(n), rtol=0.01)


def test_fit_is_robust_to_outliers():
    rng = np.random.default_rng(5)
    n = np.linspace(10, 5000, 150)
    loss = PowerLaw(1.0, 4.0, 0.5)(n) * np.exp(rng.normal(0, 0.003, n.size))
    loss[::15] *= 1.5  # 10 spikes, as loss spikes in training
    fit = fit_power_law(n, loss)
    assert fit.eps == pytest.approx(1.0, rel=0.05)
    assert fit.alpha == pytest.approx(0.5, abs=0.05)


def test_slope_is_eq2_and_matches_finite_difference():
    law = PowerLaw(1.0, 5.0, 0.3)
    n = np.array([10.0, 100.0, 1000.0])
    h = 1e-4 * n
    fd = (law(n + h) - law(n - h)) / (2 * h)
    np.testing.assert_allclose(law.slope(n), fd, rtol=1e-6)
    np.testing.assert_allclose(law.slope(n), -(0.3 / n) * (law(n) - 1.0))


def test_smoothing_reduces_noise_and_keeps_trend():
    rng = np.random.default_rng(0)
    n = np.arange(50, 451, dtype=float)  # past the steep start, as the fit ignores it too
    clean = PowerLaw(1.0, 3.0, 0.5)(n)
    noisy = clean + rng.normal(0, 0.05, n.size)
    sm = smooth_losses(noisy)
    assert np.std(sm - clean) < 0.4 * np.std(noisy - clean)
    assert smooth_losses(noisy[:4]).tolist() == noisy[:4].tolist()  # too short: unchanged


@pytest.mark.parametrize("n,loss,match", [([1, 2], [3.0, 2.0], "at least 3"),
                                          ([1, 2, 3], [3.0, np.nan, 1.0], "finite"),
                                          ([0, 2, 3], [3.0, 2.0, 1.0], "positive")])
def test_fit_errors(n, loss, match):
    with pytest.raises(MixingError, match=match):
        fit_power_law(n, loss)
