import itertools
import math

import numpy as np
import pandas as pd
import pytest

from gensight.metrics import (
    MetricError,
    conditional_mutual_information,
    granulated_kendall_tau,
    kendall_tau,
    mean_absolute_error,
    r2_score,
)


def test_kendall_tau_golden_by_hand():
    # measure [1, 2, 3, 4], target [1, 3, 2, 4]: of the 6 pairs one is discordant (2nd, 3rd):
    # (5 - 1) / 6 for both variants (no ties).
    m, t = [1, 2, 3, 4], [1, 3, 2, 4]
    assert kendall_tau(m, t) == pytest.approx(4 / 6)
    assert kendall_tau(m, t, variant="a") == pytest.approx(4 / 6)
    # A tie in the measure (models 0 and 1): 2 concordant pairs, 0 discordant, 1 tied.
    m, t = [1.0, 1.0, 2.0], [1.0, 2.0, 3.0]
    assert kendall_tau(m, t, variant="a") == pytest.approx(2 / 3)  # Eq. 3: (C - D) / n0
    assert kendall_tau(m, t) == pytest.approx(2 / math.sqrt((3 - 1) * 3))  # tau-b
    assert kendall_tau([3, 2, 1], [10, 20, 30]) == -1.0  # a reversed ranking: exactly -1


def _ties(x) -> int:
    _, counts = np.unique(x, return_counts=True)
    return int(np.sum(counts * (counts - 1) // 2))


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_kendall_tau_matches_scipy_and_eq3_on_random_data(seed, ties):
    from scipy.stats import kendalltau

    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    if ties:  # few distinct values: many tied pairs in both
        m, t = rng.integers(0, 4, n).astype(float), rng.integers(0, 5, n).astype(float)
    else:
        m, t = rng.normal(size=n), rng.normal(size=n)
    assert kendall_tau(m, t) == pytest.approx(kendalltau(m, t).statistic, abs=1e-12)
    # Eq. 3 of arXiv 1912.02178, as written: a direct loop over distinct ordered pairs.
    eq3 = sum(np.sign(m[i] - m[j]) * np.sign(t[i] - t[j])
              for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    assert kendall_tau(m, t, variant="a") == pytest.approx(eq3, abs=1e-12)
    # tau-a = tau-b * sqrt((n0 - n1)(n0 - n2)) / n0: equal without ties, smaller with them.
    n0 = n * (n - 1) / 2
    scale = math.sqrt((n0 - _ties(m)) * (n0 - _ties(t))) / n0
    assert kendall_tau(m, t, variant="a") == pytest.approx(kendall_tau(m, t) * scale,
                                                           abs=1e-12)
    assert (scale < 1) == ties


def test_kendall_tau_unknown_variant():
    with pytest.raises(MetricError, match="variant must be one of"):
        kendall_tau([1, 2], [1, 2], variant="pgdl")


@pytest.mark.parametrize("bad, match", [
    (([1.0], [2.0]), "at least 2"),
    (([1.0, float("nan")], [1.0, 2.0]), "non-finite"),
    (([1.0, 1.0], [1.0, 2.0]), "constant"),
    (([1.0, 2.0, 3.0], [1.0, 2.0]), "has 3 values but"),
])
def test_kendall_tau_errors(bad, match):
    with pytest.raises(MetricError, match=match):
        kendall_tau(*bad)


def grid_table(seeds=2, seed=0):
    rng = np.random.default_rng(seed)
    rows = [dict(lr=lr, wd=wd, depth=d, seed=s)
            for lr, wd, d, s in itertools.product([0.1, 0.01, 0.001], [0, 1], [2, 3],
                                                  range(seeds))]
    df = pd.DataFrame(rows)
    df["gap"] = rng.normal(size=len(df)) + df.lr * 5
    df["measure"] = df.gap + rng.normal(size=len(df)) * 0.7
    return df


def test_granulated_tau_is_mean_of_group_taus():
    df = grid_table()
    g = granulated_kendall_tau(df, "measure", "gap", ["lr", "wd", "depth"])
    for h in ["lr", "wd", "depth"]:
        others = [o for o in ["lr", "wd", "depth"] if o != h]
        taus = [kendall_tau(grp.measure, grp.gap, variant="a")
                for _, grp in df.groupby(others)]
        assert g.terms[h] == pytest.approx(np.mean(taus))
    assert g.psi == pytest.approx(g.terms.mean())
    assert list(g.terms.index) == ["lr", "wd", "depth"]


def test_granulated_tau_incomplete_grid_is_named():
    df = grid_table()
    df = df[~((df.lr == 0.1) & (df.wd == 1))]
    with pytest.raises(MetricError, match=r"incomplete hyperparameter grid: 2 of 12 .*lr=0.1"):
        granulated_kendall_tau(df, "measure", "gap", ["lr", "wd", "depth"])


def test_granulated_tau_errors():
    df = grid_table()
    with pytest.raises(MetricError, match="no column"):
        granulated_kendall_tau(df, "nope", "gap", ["lr"])
    with pytest.raises(MetricError, match="single value"):
        granulated_kendall_tau(df[df.wd == 0], "measure", "gap", ["lr", "wd"])


def reference_cmi(df, measure, gap, hparams):
    """A direct transcription of the PGDL definition with dictionaries and loops."""
    def entropy(counts):
        total = sum(counts)
        return -sum(c / total * math.log2(c / total) for c in counts if c)

    best = math.inf
    for h1, h2 in itertools.permutations(hparams, 2):
        cells = {}
        for i in range(len(df)):
            for j in range(len(df)):
                a, b = df.iloc[i], df.iloc[j]
                key = (a[h1], b[h1], a[h2], b[h2])
                cells.setdefault(key, []).append((a[gap] > b[gap], a[measure] > b[measure]))
        mis, hs = [], []
        for pairs in cells.values():
            joint = {}
            for p in pairs:
                joint[p] = joint.get(p, 0) + 1
            g = [sum(v for k, v in joint.items() if k[0] == x) for x in (True, False)]
            m = [sum(v for k, v in joint.items() if k[1] == x) for x in (True, False)]
            mis.append(entropy(g) + entropy(m) - entropy(list(joint.values())))
            hs.append(entropy(g))
        best = min(best, np.mean(mis) / np.mean(hs))
    return best


def test_cmi_matches_a_direct_transcription():
    df = grid_table(seeds=2)
    ours = conditional_mutual_information(df, "measure", "gap", ["lr", "wd", "depth"])
    assert ours == pytest.approx(reference_cmi(df, "measure", "gap", ["lr", "wd", "depth"]))
    assert 0.0 < ours < 1.0


def test_cmi_extremes():
    df = grid_table()
    assert conditional_mutual_information(df.assign(m=df.gap), "m", "gap",
                                          ["lr", "wd"]) == pytest.approx(1.0)
    assert conditional_mutual_information(df.assign(m=0.0), "m", "gap",
                                          ["lr", "wd"]) == pytest.approx(0.0)


def test_cmi_explained_by_hparam_scores_low():
    # gap is a function of lr alone; a measure that only knows lr is perfect conditioned on
    # other pairs, but conditioned on lr it carries no information: the min is 0.
    df = grid_table()
    df["gap2"] = -np.log10(df.lr) + 0.01 * np.arange(len(df))
    df["m"] = -np.log10(df.lr)
    assert conditional_mutual_information(df, "m", "gap2", ["lr", "wd", "depth"]) == \
        pytest.approx(0.0, abs=1e-12)


def test_cmi_errors():
    df = grid_table()
    with pytest.raises(MetricError, match="at least 2 hyperparameter"):
        conditional_mutual_information(df, "measure", "gap", ["lr"])
    with pytest.raises(MetricError, match="incomplete"):
        conditional_mutual_information(df[~((df.lr == 0.01) & (df.depth == 3))],
                                       "measure", "gap", ["lr", "depth"])
    with pytest.raises(MetricError, match="constant"):
        conditional_mutual_information(df.assign(gap=1.0), "measure", "gap", ["lr", "wd"])


def test_regression_metrics_golden_and_errors():
    assert r2_score([1, 2, 3], [1, 2, 3]) == 1.0
    # mean of actual is 2; SS_tot = 2; SS_res = 0.25 + 0 + 0.25 -> 1 - 0.5/2
    assert r2_score([1.5, 2, 2.5], [1, 2, 3]) == pytest.approx(0.75)
    assert mean_absolute_error([0.1, 0.9], [0.2, 0.6]) == pytest.approx(0.2)
    with pytest.raises(MetricError, match="actual is constant"):
        r2_score([1, 2], [1, 1])
    with pytest.raises(MetricError, match="non-finite"):
        mean_absolute_error([0.1, float("inf")], [0.2, 0.3])


def test_non_numeric_values_and_missing_hyperparameters_are_metric_errors():
    with pytest.raises(MetricError, match="measure must be numbers"):
        kendall_tau(["a", "b", "c"], [1, 2, 3])
    with pytest.raises(MetricError, match="target must be numbers"):
        kendall_tau([1, 2, 3], [[1], [2, 3], 4])
    df = pd.DataFrame({"lr": [1, 2, 1, None], "m": [1.0, 2.0, 3.0, 4.0],
                       "acc": [1.0, 2.0, 4.0, 3.0], "opt": ["a", "b", "c", "d"]})
    with pytest.raises(MetricError, match="hyperparameter 'lr' is missing .* 1 of 4"):
        granulated_kendall_tau(df, "m", "acc", ["lr"])
    with pytest.raises(MetricError, match="opt must be numbers"):
        granulated_kendall_tau(df, "opt", "acc", ["lr"])
