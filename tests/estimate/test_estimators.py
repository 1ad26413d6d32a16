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


TGT3 = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])


@pytest.mark.parametrize("make", [
    AverageConfidence, DifferenceOfConfidences, lambda: ATC("maxconf"), lambda: ATC("entropy"),
])
def test_confidence_estimators_refuse_another_number_of_classes(make):
    est = make().fit(SRC, SRC_Y)
    with pytest.raises(EstimatorError, match="fitted on probabilities of 2 classes; "
                                             "target_probs has 3 classes"):
        est.estimate(TGT3)


def test_temperature_scaling_and_aline_refuse_another_number_of_classes():
    ts = TemperatureScaling().fit(SRC, SRC_Y)
    with pytest.raises(EstimatorError, match="2 classes; probs has 3"):
        ts.transform(TGT3)
    with pytest.raises(EstimatorError, match="2 classes; target_probs has 3"):
        ATC(temperature_scaling=True).fit(SRC, SRC_Y).estimate(TGT3)
    rng = np.random.default_rng(5)
    y, src = _models(rng, m=4)
    wide = [np.hstack([p, np.zeros((len(p), 1))]) for p in src]
    for est in (ALineS(), ALineD()):
        with pytest.raises(EstimatorError, match=r"fitted on probabilities of \d+ classes"):
            est.fit(src, y).estimate(wide)
    with pytest.raises(EstimatorError, match="same examples"):
        GDE().estimate(TGT3, TGT)
    with pytest.raises(EstimatorError, match="source_probs have .* classes but target_probs"):
        estimate_accuracies(src, y, wide)


@pytest.mark.parametrize("probs, labels, match", [
    ([["a", "b"]], [0], "rectangular array of real numbers"),
    ([[0.5, 0.5], [1.0]], [0, 1], "rectangular array of real numbers"),
    (np.array([[0.5 + 0j, 0.5]]), [0], "real numbers, got an array of dtype complex"),
    ([[0.7, -0.2, 0.5]], [0], "outside .* first row 0"),
    ([[0.5, 0.5]], ["cat"], "integer class indices, got dtype <U3"),
    ([[0.5, 0.5]], [np.nan], "integer class indices; 1 value"),
    ([[0.5, 0.5]], [0.5], "first 0.5 at position 0"),
    ([[0.5, 0.5], [0.5, 0.5]], [[1, 0], [0, 1]], "one-hot"),
    ([[0.5, 0.5], [0.5, 0.5]], [0, -1], r"lie in \[0, 1\].*position 1"),
])
def test_malformed_inputs_are_one_line_errors(probs, labels, match):
    with pytest.raises(EstimatorError, match=match) as info:
        AverageConfidence().fit(probs, labels)
    assert "\n" not in str(info.value)


def test_bad_model_lists_and_partners_are_named():
    rng = np.random.default_rng(6)
    y, src = _models(rng, m=4)
    with pytest.raises(EstimatorError, match="one .* array per model .* shape"):
        ALineS().fit(np.stack(src)[0], y)
    with pytest.raises(EstimatorError, match="got float"):
        estimate_accuracies(0.5, y, src)
    for partners, match in (([1, 0, 3], "3 entries for 4 models"),
                            ([1, 0, 3, 9], r"partners\[3\] .* got 9"),
                            ([0, 0, 3, 2], r"partners\[0\] .* got 0"),
                            ([1, 0, 3, 2.5], r"partners\[3\]")):
        with pytest.raises(EstimatorError, match=match):
            estimate_accuracies(src, y, src, partners=partners, methods=["GDE"])
    res = estimate_accuracies(src, y, src, partners=[1, 0, np.nan, None], methods=["GDE"])
    assert res.table["GDE"].isna().tolist() == [False, False, True, True]
    with pytest.raises(EstimatorError, match="no estimators named"):
        estimate_accuracies(src, y, src, methods=[])
    assert list(estimate_accuracies(src, y, src, methods="AC").table.columns) == \
        ["model", "source_acc", "AC"]


def test_load_logits_and_labels_refuse_malformed_files(tmp_path):
    from gensight.estimate import load_labels

    def npy(name, arr):
        np.save(tmp_path / name, arr, allow_pickle=True)
        return tmp_path / name

    cases = [
        (npy("obj.npy", np.array([{"a": 1}], dtype=object)), "cannot read logits .*pickle"),
        (npy("str.npy", np.array([["a", "b"]])), "real numbers .* dtype <U1"),
        (npy("cplx.npy", np.ones((2, 3), complex)), "real numbers .* dtype complex"),
        (npy("flat.npy", np.ones(5)), r"got shape \(5,\)"),
        (npy("4d.npy", np.ones((1, 2, 3, 4))), r"got shape \(1, 2, 3, 4\)"),
        (npy("one.npy", np.ones((4, 1))), "at least 2 classes"),
        (npy("empty.npy", np.ones((0, 3))), r"got shape \(1, 0, 3\)"),
    ]
    nan = np.zeros((3, 4, 2))
    nan[1, 2, 0] = np.nan
    cases.append((npy("nan.npy", nan), r"1 of 3 model\(s\) contain NaN .*\[model-1\]"))
    (tmp_path / "dir.npy").mkdir()
    cases.append((tmp_path / "dir.npy", "cannot read logits"))
    for path, match in cases:
        with pytest.raises(EstimatorError, match=match) as info:
            load_logits(path)
        assert str(path.name) in str(info.value) and "\n" not in str(info.value)

    assert load_labels(npy("y.npy", np.array([0, 2, 1]))).tolist() == [0, 2, 1]
    assert load_labels(npy("yf.npy", np.array([[0.0], [2.0]]))).dtype == np.int64
    for path, match in [
        (tmp_path / "none.npy", "does not exist"),
        (npy("yobj.npy", np.array([None, 1], dtype=object)), "cannot read labels .*pickle"),
        (npy("ystr.npy", np.array(["cat", "dog"])), "integer class indices, got dtype <U3"),
        (npy("y2d.npy", np.zeros((3, 2))), r"1-D .* got shape \(3, 2\)"),
        (npy("yneg.npy", np.array([0, -1])), r"lie in \[0, n_classes\)"),
        (npy("yfrac.npy", np.array([0.5, 1.0])), "integer class indices"),
    ]:
        with pytest.raises(EstimatorError, match=match) as info:
            load_labels(path)
        assert path.name in str(info.value)
    (tmp_path / "y.txt").write_text("0 1")
    with pytest.raises(EstimatorError, match="must be a .npy file"):
        load_labels(tmp_path / "y.txt")


def test_aline_from_rates_refuses_values_that_are_not_rates():
    agr = np.full((3, 3), 0.8)
    with pytest.raises(EstimatorError, match=r"acc_id must hold rates in \[0, 1\]; 1 value"):
        aline_from_rates([0.5, np.nan, 0.7], agr, agr)
    with pytest.raises(EstimatorError, match="agr_ood must hold rates"):
        aline_from_rates([0.5, 0.6, 0.7], agr, agr * 2)
