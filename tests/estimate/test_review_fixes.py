"""CBPE, one temperature per model fitted on logits, GDE over all partners, the truth of zoo
estimates, and the ALine R^2 note naming both variants."""

import warnings

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp
from sklearn.isotonic import IsotonicRegression

from gensight.estimate import (
    ATC,
    CBPE,
    GDE,
    METHODS,
    AgreementWarning,
    ALineD,
    ALineS,
    EstimatorError,
    NotFittedError,
    TemperatureScaling,
    estimate_accuracies,
    partners_from_groups,
    softmax,
    zoo_estimates,
)
from gensight.estimate import calibration as calibration_module


def _logit_models(rng, m=4, n=300, k=5, scale=3.0):
    y = rng.integers(0, k, n)
    return y, [np.eye(k)[y] * scale + rng.normal(0, 1 + i / 3, (n, k)) * scale / 2
               for i in range(m)]


# --- CBPE -------------------------------------------------------------------------------

def test_cbpe_top_label_matches_isotonic_regression_by_hand():
    rng = np.random.default_rng(0)
    y, (src, tgt) = _logit_models(rng, m=2)
    ps, pt = softmax(src), softmax(tgt * 1.7)
    iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip")
    iso.fit(ps.max(1), (ps.argmax(1) == y).astype(float))
    cbpe = CBPE().fit(ps, y)
    assert cbpe.estimate(pt) == pytest.approx(float(np.mean(iso.predict(pt.max(1)))), abs=1e-12)
    # isotonic regression keeps the mean: on the source, the source accuracy exactly
    assert cbpe.estimate(ps) == pytest.approx(np.mean(ps.argmax(1) == y), abs=1e-12)
    assert "CBPE" in METHODS


def test_cbpe_one_vs_rest_is_nannymls_multiclass_scheme():
    rng = np.random.default_rng(1)
    y, (src, tgt) = _logit_models(rng, m=2, k=4)
    ps, pt = softmax(src), softmax(tgt)
    cal = np.stack([IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip")
                    .fit(ps[:, k], (y == k).astype(float)).predict(pt[:, k])
                    for k in range(4)], axis=1)
    cal /= cal.sum(1, keepdims=True)
    want = np.mean(cal[np.arange(len(pt)), pt.argmax(1)])
    assert CBPE("one-vs-rest").fit(ps, y).estimate(pt) == pytest.approx(want, abs=1e-12)
    with pytest.raises(EstimatorError, match="calibration must be one of"):
        CBPE("beta")


def test_cbpe_is_scored_in_the_tables():
    rng = np.random.default_rng(2)
    y, src = _logit_models(rng)
    yt, tgt = _logit_models(rng)
    res = estimate_accuracies([softmax(z) for z in src], y, [softmax(z) for z in tgt],
                              target_labels=yt)
    assert "CBPE" in res.table and np.isfinite(res.mae["CBPE"])
    assert res.table["CBPE"].iloc[1] == CBPE().fit(softmax(src[1]), y).estimate(
        softmax(tgt[1]))


# --- temperature scaling ------------------------------------------------------------------

def _direct_temperature(logits, y):
    def nll(log_t):
        z = logits / np.exp(log_t)
        return np.mean(logsumexp(z, 1) - z[np.arange(len(y)), y])
    res = minimize_scalar(nll, bounds=(np.log(0.01), np.log(100)), method="bounded",
                          options={"xatol": 1e-10})
    return float(np.exp(res.x))


def test_temperature_is_fitted_on_logits_not_on_clamped_log_probabilities():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(400, 5)) * 20   # most rows span more than 27.6 nats
    y = np.where(rng.random(400) < 0.7, logits.argmax(1), rng.integers(0, 5, 400))
    direct = _direct_temperature(logits, y)
    ts = TemperatureScaling().fit_logits(logits, y)
    assert ts.temperature_ == pytest.approx(direct, rel=1e-5) and ts.fitted_on_ == "logits"
    np.testing.assert_allclose(ts.transform_logits(logits), softmax(logits / direct),
                               atol=1e-5)
    # log of probabilities clamped at 1e-12 is not the logits: another temperature (8.8)
    clamped = TemperatureScaling().fit(softmax(logits), y)
    assert abs(clamped.temperature_ / direct - 1) > 0.2
    # the estimators use the logits when they are given
    res = estimate_accuracies(None, y, None, source_logits=[logits], target_logits=[logits],
                              methods=["ATC-MC+TS"])
    assert res.temperatures[0] == pytest.approx(direct, rel=1e-5)
    atc = ATC("maxconf", temperature_scaling=True).fit(None, y, source_logits=logits)
    assert atc.calibrator_.temperature_ == pytest.approx(direct, rel=1e-5)


def test_one_temperature_per_model_serves_both_atc_variants(monkeypatch):
    fits = []
    real = calibration_module.TemperatureScaling._fit

    def counting(self, *args, **kwargs):
        fits.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(calibration_module.TemperatureScaling, "_fit", counting)
    rng = np.random.default_rng(4)
    y, src = _logit_models(rng, m=5)
    _, tgt = _logit_models(rng, m=5, scale=2.0)
    res = estimate_accuracies(None, y, None, source_logits=src, target_logits=tgt,
                              methods=["ATC-MC+TS", "ATC-NE+TS", "AC"])
    assert len(fits) == 5   # was 10: one fit per ATC variant
    for i in range(5):
        ts = TemperatureScaling().fit_logits(src[i], y)
        assert res.temperatures[i] == ts.temperature_
        for score, name in (("maxconf", "ATC-MC+TS"), ("entropy", "ATC-NE+TS")):
            want = ATC(score).fit(ts.transform_logits(src[i]), y).estimate(
                ts.transform_logits(tgt[i]))
            assert res.table[name].iloc[i] == want
    assert estimate_accuracies(None, y, None, source_logits=src, target_logits=tgt,
                               methods=["AC"]).temperatures is None


def test_a_fitted_temperature_scaling_is_reused_not_refitted():
    rng = np.random.default_rng(5)
    y, (src, tgt) = _logit_models(rng, m=2)
    ts = TemperatureScaling().fit_logits(src, y)
    atc = ATC("entropy", temperature_scaling=ts).fit(softmax(src), y, source_logits=src)
    assert atc.calibrator_ is ts
    assert atc.estimate(None, target_logits=tgt) == ATC("entropy").fit(
        ts.transform_logits(src), y).estimate(ts.transform_logits(tgt))
    with pytest.raises(NotFittedError, match="fitted TemperatureScaling"):
        ATC(temperature_scaling=TemperatureScaling())
    with pytest.raises(EstimatorError, match="one shape"):
        ATC().fit(softmax(src), y, source_logits=src[:, :3])


def test_separable_source_gives_nan_and_one_note_per_variant():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 4, 100)
    src = [np.eye(4)[y] * 5 + rng.normal(0, 0.1, (100, 4)) for _ in range(3)]  # T -> 0
    res = estimate_accuracies(None, y, None, source_logits=src, target_logits=src,
                              methods=["ATC-MC+TS", "ATC-NE+TS", "AC"])
    assert res.table[["ATC-MC+TS", "ATC-NE+TS"]].isna().all().all()
    assert np.isnan(res.temperatures).all() and res.table["AC"].notna().all()
    assert sorted(n.split(":")[0] for n in res.notes) == ["ATC-MC+TS", "ATC-NE+TS"]
    assert all("(3 models)" in n for n in res.notes)


# --- GDE with more than two seeds ---------------------------------------------------------

def test_gde_averages_the_agreement_over_every_partner():
    rng = np.random.default_rng(7)
    y, models = _logit_models(rng, m=7)
    probs = [softmax(z) for z in models]
    groups = ["a", "a", "a", "b", "b", "b", "b"]
    partners = partners_from_groups(groups)
    assert partners[0] == [1, 2] and partners[3] == [4, 5, 6]
    res = estimate_accuracies(probs, y, probs, partners=partners, methods=["GDE"])
    for i in range(7):
        others = [j for j in range(7) if groups[j] == groups[i] and j != i]
        want = np.mean([np.mean(probs[i].argmax(1) == probs[j].argmax(1)) for j in others])
        assert res.table["GDE"].iloc[i] == pytest.approx(want, abs=1e-15)
        assert GDE().estimate(probs[i], *[probs[j] for j in others]) == \
            pytest.approx(want, abs=1e-15)
    # one partner given as an int is the old behaviour
    single = estimate_accuracies(probs, y, probs, partners=[1, 0, None, 4, 3, None, None],
                                 methods=["GDE"])
    assert single.table["GDE"].iloc[0] == GDE().estimate(probs[0], probs[1])
    with pytest.raises(EstimatorError, match=r"partners\[2\]"):
        estimate_accuracies(probs, y, probs, partners=[[1], [0], [2], [], [], [], []],
                            methods=["GDE"])
    with pytest.raises(EstimatorError, match="at least one independent run"):
        GDE().estimate(probs[0])


THREE_SEEDS = {
    "name": "three-seeds", "dataset": "digits", "seed": 5, "configs": 2, "seeds_per_config": 3,
    "shard_size": 8, "checkpoints": ["final"], "shifts": ["contrast"], "severities": [4],
    "store_logits": True, "architecture": {"family": "mlp", "hidden": [8]},
    "hparams": {"optimizer": ["adam"], "lr": [0.01], "epochs": [2], "batch_size": [64],
                "train_fraction": [0.5]},
}


@pytest.fixture(scope="module")
def three_seed_zoo(tmp_path_factory):
    from gensight.zoo import ZooSpec, build_zoo

    return build_zoo(ZooSpec.from_dict(THREE_SEEDS), tmp_path_factory.mktemp("z3") / "zoo")


def test_zoo_gde_uses_all_seeds_and_truth_is_the_stored_logits(three_seed_zoo):
    from gensight.data import load_dataset

    zoo = three_seed_zoo
    res = zoo_estimates(zoo, "contrast-4")
    rows = zoo.table.query("is_final and finite").reset_index(drop=True)
    y = load_dataset("digits").y_test.numpy()
    pred = zoo.logits(rows, "contrast-4").numpy().argmax(-1)
    for i, config in enumerate(rows["config_id"]):
        others = [j for j in range(len(rows)) if rows["config_id"][j] == config and j != i]
        assert len(others) == 2
        want = np.mean([np.mean(pred[i] == pred[j]) for j in others])
        assert res.table["GDE"].iloc[i] == pytest.approx(want, abs=1e-15)
    # the truth is the accuracy of the stored (float16) logits, exactly
    np.testing.assert_array_equal(res.table["true_acc"], (pred == y).mean(1))
    table_acc = rows["shift:contrast-4_acc"].to_numpy()
    off = int((np.abs(res.table["true_acc"] - table_acc) * len(y) > 0.5).sum())
    assert any("float16" in n for n in res.notes) == (off > 0)
    assert np.abs(res.table["true_acc"] - table_acc).max() <= 2 / len(y)


# --- ALine note ---------------------------------------------------------------------------

def test_off_the_line_note_names_both_aline_variants():
    rng = np.random.default_rng(8)
    y, src = _logit_models(rng, m=6, scale=2.0)
    tgt = [rng.normal(size=z.shape) for z in src]   # random predictions: no line
    res = estimate_accuracies(None, y, None, source_logits=src, target_logits=tgt,
                              methods=["ALine-D"])
    assert res.line.r2 < 0.95
    note = [n for n in res.notes if "not on a line" in n]
    assert len(note) == 1 and "ALine-S and ALine-D" in note[0]
    for cls in (ALineS, ALineD):
        est = cls().fit([softmax(z) for z in src], y)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", AgreementWarning)
            est.estimate([softmax(z) for z in tgt])
        assert "ALine-S and ALine-D" in str(caught[0].message)
