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
    # measure [1, 2, 3, 4], target [1, 3, 2, 4]: of the 6 unordered distinct pairs one is
    # discordant (2nd, 3rd). Distinct ordered pairs: (5 - 1) * 2 = 8 over 12.
    m, t = [1, 2, 3, 4], [1, 3, 2, 4]
    assert kendall_tau(m, t, pairs="distinct") == pytest.approx(8 / 12)
    # PGDL: the 4 self pairs count +1 (tie x tie = (-1)(-1)), so (8 + 4) / 16.
    assert kendall_tau(m, t) == pytest.approx(12 / 16)


def test_kendall_tau_pgdl_counts_ties_as_negative():
    # measure ties on models 0 and 1; target is strictly increasing.
    # ordered pairs (0,1): s(0)=-1, s(-1)=-1 -> +1; (1,0): s(0)=-1, s(+)=+1 -> -1.
    m, t = [1.0, 1.0, 2.0], [1.0, 2.0, 3.0]
    # (0,2),(2,0),(1,2),(2,1) are concordant: +4; (0,1),(1,0): 0; self pairs: +3.
    assert kendall_tau(m, t) == pytest.approx(7 / 9)
    assert kendall_tau(m, t, pairs="distinct") == pytest.approx(4 / 6)
    from scipy.stats import kendalltau
    # tau-a over distinct pairs: scipy's variant 'c' differs; compare with a direct count.
    assert kendalltau([1, 2, 3], [3, 1, 2]).statistic == pytest.approx(
        kendall_tau([1, 2, 3], [3, 1, 2], pairs="distinct"))


def test_kendall_tau_matches_brute_force_on_random_data():
    rng = np.random.default_rng(0)
    m = rng.integers(0, 5, 40).astype(float)
    t = rng.integers(0, 5, 40).astype(float)
    s = lambda x: 1 if x > 0 else -1  # noqa: E731
    brute = sum(s(m[i] - m[j]) * s(t[i] - t[j]) for i in range(40) for j in range(40))
    assert kendall_tau(m, t) == pytest.approx(brute / 1600)


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
        taus = [kendall_tau(grp.measure, grp.gap) for _, grp in df.groupby(others)]
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
