import warnings

import numpy as np
import pytest
from scipy.special import ndtr, ndtri

from gensight.estimate import (
    ATC,
    GDE,
    AgreementWarning,
    ALineD,
    ALineS,
    AverageConfidence,
    DifferenceOfConfidences,
    EstimatorError,
    NotFittedError,
    TemperatureScaling,
    aline_from_rates,
    estimate_accuracies,
    fit_probit_line,
    load_logits,
    softmax,
)
from gensight.estimate.agreement import agreement_matrix

SRC = np.array([[0.6, 0.4], [0.75, 0.25], [0.85, 0.15], [0.95, 0.05]])
SRC_Y = np.array([1, 0, 0, 0])            # accuracy 3/4, mean confidence 0.7875
TGT = np.array([[0.65, 0.35], [0.7, 0.3], [0.9, 0.1], [0.55, 0.45]])   # mean conf 0.7


def test_average_confidence_golden():
    assert AverageConfidence().fit(SRC, SRC_Y).estimate(TGT) == pytest.approx(0.7)


def test_doc_golden():
    # 0.75 - (0.7875 - 0.7)
    assert DifferenceOfConfidences().fit(SRC, SRC_Y).estimate(TGT) == pytest.approx(0.6625)


def test_atc_maxconf_golden():
    atc = ATC("maxconf").fit(SRC, SRC_Y)
    assert atc.threshold_ == pytest.approx(0.675)    # between 0.6 and 0.75
    assert atc.estimate(TGT) == pytest.approx(2 / 4)  # 0.7 and 0.9 are above


def test_atc_entropy_golden():
    ne = lambda p: np.sum(p * np.log(p), axis=1)  # noqa: E731
    atc = ATC("entropy").fit(SRC, SRC_Y)
    s = np.sort(ne(SRC))
    assert atc.threshold_ == pytest.approx((s[0] + s[1]) / 2)
    assert atc.estimate(TGT) == pytest.approx(np.mean(ne(TGT) > atc.threshold_))


def test_atc_reproduces_source_accuracy_and_edge_thresholds():
    rng = np.random.default_rng(0)
    p = softmax(rng.normal(size=(200, 5)) * 2)
    y = np.where(rng.random(200) < 0.7, p.argmax(1), rng.integers(0, 5, 200))
    atc = ATC().fit(p, y)
    assert atc.estimate(p) == pytest.approx(np.mean(p.argmax(1) == y))
    perfect = ATC().fit(p, p.argmax(1))
    assert perfect.threshold_ == -np.inf and perfect.estimate(p) == 1.0


def test_temperature_scaling_matches_grid_search_and_is_applied_by_atc():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(300, 4)) * 4
    y = np.where(rng.random(300) < 0.6, logits.argmax(1), rng.integers(0, 4, 300))
    p = softmax(logits)
    ts = TemperatureScaling().fit(p, y)
    grid = np.exp(np.linspace(np.log(0.1), np.log(10), 4001))
    nll = [np.mean(-np.log(softmax(logits / t)[np.arange(300), y])) for t in grid]
    assert ts.temperature_ == pytest.approx(grid[int(np.argmin(nll))], rel=2e-3)
    assert ts.temperature_ > 1 and ts.nll_after_ < ts.nll_before_
    np.testing.assert_allclose(ts.transform(p), softmax(logits / ts.temperature_), atol=1e-9)
    target = softmax(rng.normal(size=(100, 4)) * 3)
    manual = ATC("entropy").fit(ts.transform(p), y).estimate(ts.transform(target))
    assert ATC("entropy", temperature_scaling=True).fit(p, y).estimate(target) == manual
    assert DifferenceOfConfidences(True).fit(p, y).estimate(target) == pytest.approx(
        DifferenceOfConfidences().fit(ts.transform(p), y).estimate(ts.transform(target)))


def test_temperature_scaling_degenerate_inputs():
    with pytest.raises(EstimatorError, match="uniform"):
        TemperatureScaling().fit(np.full((5, 3), 1 / 3), [0, 1, 2, 0, 1])
    p = softmax(np.array([[3.0, 0.0], [0.0, 3.0], [2.0, 0.0]]))
    with pytest.raises(EstimatorError, match="T -> 0"):
        TemperatureScaling().fit(p, [0, 1, 0])
    with pytest.raises(NotFittedError):
        TemperatureScaling().transform(p)
    with pytest.raises(EstimatorError, match="min_temperature"):
        TemperatureScaling(min_temperature=-1)


@pytest.mark.parametrize("probs, match", [
    ([[0.5, 0.6]], "sums to 1.1"),
    ([[np.nan, 1.0]], "NaN"),
    ([[1.5, -0.5]], "outside"),
    ([0.5, 0.5], "n_examples, n_classes"),
])
def test_bad_probabilities_are_named(probs, match):
    with pytest.raises(EstimatorError, match=match):
        AverageConfidence().fit(probs, [0])


def test_errors_labels_and_unfitted():
    with pytest.raises(EstimatorError, match="one label per example"):
        ATC().fit(SRC, [0, 1])
    with pytest.raises(EstimatorError, match=r"lie in \[0, 1\]"):
        ATC().fit(SRC, [0, 1, 2, 0])
    with pytest.raises(NotFittedError, match="call fit"):
        ATC().estimate(TGT)
    with pytest.raises(EstimatorError, match="score must be one of"):
        ATC("margin")


def test_gde_golden_and_errors():
    a = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]
    b = [[0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.1, 0.9]]
    assert GDE().estimate(a, b) == 0.75
    with pytest.raises(EstimatorError, match="same examples"):
        GDE().estimate(a, b[:3])


def test_probit_line_fit_golden():
    line = fit_probit_line([-1.0, 0.0, 1.0, 2.0], [0.5, 1.0, 1.5, 2.0])
    assert line.slope == pytest.approx(0.5) and line.bias == pytest.approx(1.0)
    assert line.r2 == pytest.approx(1.0) and line.n_pairs == 4
    noisy = fit_probit_line([0.0, 1.0, 2.0], [0.0, 2.0, 1.0])
    # slope 0.5, bias 0.5: residuals -0.5, 1, -0.5 -> SS_res 1.5, SS_tot 2
    assert noisy.slope == pytest.approx(0.5) and noisy.r2 == pytest.approx(0.25)


def test_aline_recovers_a_planted_line_exactly():
    rng = np.random.default_rng(2)
    m, slope, bias = 12, 0.8, -0.4
    acc_id = rng.uniform(0.6, 0.95, m)
    agr_id = rng.uniform(0.6, 0.95, (m, m))
    agr_id = (agr_id + agr_id.T) / 2
    np.fill_diagonal(agr_id, 1.0)
    agr_ood = ndtr(slope * ndtri(agr_id) + bias)
    out = aline_from_rates(acc_id, agr_id, agr_ood)
    truth = ndtr(slope * ndtri(acc_id) + bias)
    assert out["line"].slope == pytest.approx(slope) and out["line"].bias == pytest.approx(bias)
    assert out["line"].r2 == pytest.approx(1.0)
    np.testing.assert_allclose(out["aline_s"], truth, atol=1e-12)
    np.testing.assert_allclose(out["aline_d"], truth, atol=1e-12)


def test_aline_d_uses_pairwise_agreement_not_only_the_line():
    # OOD accuracies off the accuracy line but exactly satisfying the ALine-D pair identity:
    # ALine-D finds them, ALine-S (ID accuracy mapped through the line) cannot. The ID pair
    # agreements are made orthogonal to the off-line part so the fitted slope is exact.
    rng = np.random.default_rng(3)
    m, slope, bias = 7, 1.2, -0.3
    iu = np.triu_indices(m, 1)
    p_id = ndtri(rng.uniform(0.6, 0.9, m))
    delta = rng.normal(0, 0.2, m)
    d = (delta[iu[0]] + delta[iu[1]]) / 2
    q = ndtri(rng.uniform(0.6, 0.9, d.size))
    dc = d - d.mean()
    q = q - dc * (dc @ (q - q.mean())) / (dc @ dc)
    u = slope * p_id + bias + delta
    q_id, q_ood = np.eye(m) * 5, np.eye(m) * 5
    q_id[iu] = q
    q_ood[iu] = slope * q + bias + d
    q_id, q_ood = np.triu(q_id) + np.triu(q_id, 1).T, np.triu(q_ood) + np.triu(q_ood, 1).T
    out = aline_from_rates(ndtr(p_id), ndtr(q_id), ndtr(q_ood))
    assert out["line"].slope == pytest.approx(slope)
    np.testing.assert_allclose(out["aline_d"], ndtr(u), atol=1e-10)
    assert np.abs(out["aline_s"] - ndtr(u)).max() > 0.01


def _models(rng, m=6, n=400, k=5, noise=1.0):
    y = rng.integers(0, k, n)
    base = np.eye(k)[y] * 3
    return y, [softmax(base + rng.normal(0, noise * (1 + i / 3), (n, k))) for i in range(m)]


def test_aline_classes_match_rates_and_warn_off_the_line():
    rng = np.random.default_rng(4)
    y, src = _models(rng)
    _, tgt = _models(rng, noise=2.0)
    est = ALineD().fit(src, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AgreementWarning)
        got = est.estimate(tgt)
    preds = lambda ps: np.stack([p.argmax(1) for p in ps])  # noqa: E731
    ref = aline_from_rates(est.source_accuracy_, agreement_matrix(preds(src), 5),
                           agreement_matrix(preds(tgt), 5), 400, 400)
    np.testing.assert_allclose(got, ref["aline_d"])
    strict = ALineS(min_r2=1.01).fit(src, y)
    with pytest.warns(AgreementWarning, match="not on a line"):
        strict.estimate(tgt)
    assert strict.on_the_line_ is False


def test_aline_errors():
    rng = np.random.default_rng(5)
    y, src = _models(rng, m=4)
    with pytest.raises(EstimatorError, match="at least 3 models"):
        ALineS().fit(src[:2], y)
    with pytest.raises(EstimatorError, match="at least 3 models"):
        ALineS().fit(src[:1], y)
    est = ALineS().fit(src, y)
    with pytest.raises(EstimatorError, match="fitted on 4 models but given .* 3"):
        est.estimate(src[:3])
    with pytest.raises(EstimatorError, match="same examples"):
        ALineS().fit([src[0], src[1][:10], src[2]], y)
    with pytest.raises(NotFittedError):
        ALineD().estimate(src)


def test_estimate_accuracies_table():
    rng = np.random.default_rng(6)
    y, src = _models(rng, m=5)
    yt, tgt = _models(rng, m=5, noise=1.5)
    res = estimate_accuracies(src, y, tgt, target_labels=yt, partners=[1, 0, 3, 2, None])
    assert list(res.table.columns[:2]) == ["model", "source_acc"]
    assert np.isnan(res.table["GDE"].iloc[4])
    assert res.table["GDE"].iloc[0] == GDE().estimate(tgt[0], tgt[1])
    assert res.table["AC"].iloc[2] == AverageConfidence().fit(src[2], y).estimate(tgt[2])
    true = [np.mean(p.argmax(1) == yt) for p in tgt]
    np.testing.assert_allclose(res.table["true_acc"], true)
    # model 4 has no GDE partner: the MAE of every method is over models 0-3
    assert res.mae["AC"] == pytest.approx(np.mean(np.abs(res.table["AC"] - true)[:4]))
    assert "MAE is over the 4 of 5 models" in res.notes[-1]
    with pytest.raises(EstimatorError, match="unknown estimator"):
        estimate_accuracies(src, y, tgt, methods=["AC", "magic"])
    with pytest.raises(EstimatorError, match="5 models but target_probs has 4"):
        estimate_accuracies(src, y, tgt[:4])


def test_load_logits_files(tmp_path):
    from safetensors.numpy import save_file

    arr = np.random.default_rng(7).normal(size=(3, 10, 4)).astype(np.float32)
    np.save(tmp_path / "l.npy", arr)
    names, got = load_logits(tmp_path / "l.npy")
    assert names == ["model-0", "model-1", "model-2"] and np.allclose(got, arr)
    save_file({"b": arr[1], "a": arr[0]}, str(tmp_path / "l.safetensors"))
    names, got = load_logits(tmp_path / "l.safetensors")
    assert names == ["a", "b"] and np.allclose(got, arr[:2])
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(EstimatorError, match="cannot read logits"):
        load_logits(tmp_path / "bad.npy")
    with pytest.raises(EstimatorError, match="does not exist"):
        load_logits(tmp_path / "missing.npy")
    with pytest.raises(EstimatorError, match=".npy or .safetensors"):
        load_logits(tmp_path / "l.npy").__class__ and load_logits(tmp_path / "x.txt") \
            if (tmp_path / "x.txt").write_text("1") else None
