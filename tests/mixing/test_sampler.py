"""The mixture sampler: empirical frequencies, windows, errors."""

import numpy as np
import pytest

from gensight.mixing import MixingError, MixtureSampler, domain_losses


def _data():
    return [np.full(500, 10 + k, dtype=np.uint8) for k in range(4)]


def test_empirical_frequencies_match_the_mixture():
    pi = np.array([0.5, 0.3, 0.15, 0.05])
    s = MixtureSampler(_data(), ["a", "b", "c", "d"], context=8, batch_size=50, seed=3)
    counts = np.zeros(4)
    draws = 200
    for _ in range(draws):
        windows, ids, c = s.sample(pi)
        assert windows.shape == (50, 9)
        # every window comes from its sample's domain
        assert np.all(windows == (10 + ids)[:, None])
        np.testing.assert_array_equal(c, np.bincount(ids, minlength=4))
        counts += c
    total = draws * 50
    sd = np.sqrt(total * pi * (1 - pi))  # binomial std of each count
    assert np.all(np.abs(counts - total * pi) < 4 * sd), (counts, total * pi)


def test_same_seed_same_batches_and_state_roundtrip():
    pi = np.full(4, 0.25)
    a = MixtureSampler(_data(), list("abcd"), 8, 16, seed=7)
    b = MixtureSampler(_data(), list("abcd"), 8, 16, seed=7)
    a.sample(pi)
    state = a.state_dict()
    x1 = a.sample(pi)
    b.load_state_dict(state)
    x2 = b.sample(pi)
    for u, v in zip(x1, x2, strict=True):
        np.testing.assert_array_equal(u, v)


def test_windows_are_contiguous_text():
    text = np.arange(200, dtype=np.uint8)
    s = MixtureSampler([text], ["x"], context=5, batch_size=30, seed=0)
    w, _, _ = s.sample([1.0])
    assert np.all(np.diff(w.astype(int), axis=1) == 1)


def test_domain_with_no_data_is_refused():
    data = _data()
    data[2] = np.zeros(0, dtype=np.uint8)
    with pytest.raises(MixingError, match="domain 'c' has no data"):
        MixtureSampler(data, list("abcd"), 8, 4)


def test_bad_mixture_is_refused():
    s = MixtureSampler(_data(), list("abcd"), 8, 4)
    with pytest.raises(MixingError, match="distribution"):
        s.sample([0.5, 0.5, 0.5, -0.5])
    with pytest.raises(MixingError, match="distribution"):
        s.sample([1.0])


def test_domain_losses_means_and_missing_domains():
    losses, counts = domain_losses([1.0, 3.0, 5.0, 2.0], [0, 0, 2, 2], 3)
    np.testing.assert_array_equal(counts, [2, 0, 2])
    assert losses[0] == 2.0 and losses[2] == 3.5 and np.isnan(losses[1])
