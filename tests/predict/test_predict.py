import numpy as np
import pandas as pd
import pytest
import torch

from gensight.cli import main
from gensight.predict import (
    MeasurePredictor,
    NFNPredictor,
    PredictError,
    StatNN,
    ZooSplit,
    evaluate_predictors,
    make_predictor,
    split_zoo,
    statnn_features,
)
from gensight.weightspace import permute, random_permutation


def test_split_by_seed_keeps_a_complete_grid(grid_zoo):
    train, test = split_zoo(grid_zoo)
    assert set(test.rows.seed_index) == {1} and set(train.rows.seed_index) == {0}
    assert len(test) == 8 and test.rows.config_id.nunique() == 8
    train_c, test_c = split_zoo(grid_zoo, by="config", test_fraction=0.25, seed=1)
    assert not set(train_c.rows.config_id) & set(test_c.rows.config_id)
    assert test_c.rows.config_id.nunique() == 2
    with pytest.raises(PredictError, match="test_fraction"):
        split_zoo(grid_zoo, test_fraction=1.5)
    with pytest.raises(PredictError, match="no column 'nope'"):
        split_zoo(grid_zoo, target="nope")


def test_statnn_features_by_hand(grid_zoo):
    rows = grid_zoo.table.query("is_final").head(2)
    batch = grid_zoo.weights(rows)
    feats = statnn_features(batch)
    w = batch.weights[0][1].flatten().double()
    assert feats.shape == (2, 7 * 4)
    expected = [w.mean(), w.var(), w.min(), torch.quantile(w, 0.25), torch.quantile(w, 0.5),
                torch.quantile(w, 0.75), w.max()]
    np.testing.assert_allclose(feats[1, :7], [float(v) for v in expected], rtol=1e-6)


@pytest.mark.parametrize("symmetry", ["hnp", "np"])
def test_nfn_predictions_are_invariant_to_neuron_permutations(grid_zoo, symmetry):
    train, test = split_zoo(grid_zoo)
    model = NFNPredictor(symmetry, channels=(4, 4), epochs=2, seed=0).fit(train)
    before = model.predict(test)
    perm = random_permutation(test.weights.space, symmetry, batch_size=len(test),
                              generator=torch.Generator().manual_seed(1))
    permuted = ZooSplit(test.zoo, test.rows)
    permuted.weights = permute(test.weights, perm)     # override the cached weights
    after = model.predict(permuted)
    np.testing.assert_allclose(before, after, atol=1e-5)
    assert ((before > 0) & (before < 1)).all()
    assert not np.allclose(before, before[0])          # it depends on the weights


def test_nfn_learns_on_the_zoo(grid_zoo):
    train, _ = split_zoo(grid_zoo)
    model = NFNPredictor("hnp", channels=(8, 8), epochs=40, patience=40, val_fraction=0.25,
                         lr=3e-3, seed=0).fit(train)
    # the validation BCE falls below its value after the first epoch
    assert min(model.history_) < model.history_[0]


def test_measure_predictor_is_a_linear_map_of_the_measure(grid_zoo):
    train, test = split_zoo(grid_zoo)
    p = MeasurePredictor("log.prod.of.fro").fit(train)
    m_train, m_test = p._values(train), p._values(test)
    if p.transform_ == "log":
        m_train, m_test = np.log(m_train), np.log(m_test)
    slope, bias = np.polyfit(m_train, train.y, 1)
    np.testing.assert_allclose(p.predict(test), slope * m_test + bias)
    with pytest.raises(Exception, match="unknown measure"):
        MeasurePredictor("nope")


def test_measure_predictor_fits_heavy_tailed_measures_on_a_log_scale(grid_zoo):
    train, test = split_zoo(grid_zoo)
    rows = pd.concat([train.rows, test.rows])
    # a measure exponential in the error (like a path norm): a line in log(measure)
    heavy = np.exp(12 * (1 - rows["test_acc"].to_numpy()))
    values = pd.DataFrame({"member_id": rows["member_id"], "params": heavy})
    p = MeasurePredictor("params", values=values).fit(train)
    assert p.transform_ == "log"
    v = p._values(test)
    np.testing.assert_allclose(p.predict(test), p.slope_ * np.log(v) + p.bias_)
    np.testing.assert_allclose(p.predict(test), test.y, atol=1e-9)   # exact on this measure
    # a measure that can be negative stays on its own scale
    values["params"] = 1 - 2 * rows["test_acc"].to_numpy()
    assert MeasurePredictor("params", values=values).fit(train).transform_ == "identity"


def test_evaluate_predictors_scores_with_the_metrics(grid_zoo):
    from gensight.metrics import granulated_kendall_tau, kendall_tau

    train, test = split_zoo(grid_zoo)
    scores, preds, notes = evaluate_predictors(train, test, [StatNN("gbt")])
    row = scores.iloc[0]
    assert row["method"] == "statnn"
    assert row["tau"] == pytest.approx(kendall_tau(preds["statnn"], test.y))
    g = granulated_kendall_tau(test.rows.assign(p=preds["statnn"]), "p", "test_acc",
                               ["optimizer", "lr", "l2"])
    assert row["granulated_tau"] == pytest.approx(g.psi)
    assert 0 <= row["cmi"] <= 1


def test_unknown_method():
    with pytest.raises(PredictError, match="unknown method 'magic'"):
        make_predictor("magic")


def test_predict_cli(grid_zoo, tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["predict", str(grid_zoo.root), "--methods",
                 "statnn,nfn-hnp,measure:log.prod.of.spec", "--epochs", "2",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "granulated_tau" in text and "nfn-hnp" in text
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores.method) == ["statnn", "nfn-hnp", "measure:log.prod.of.spec"]
    assert scores[["tau", "r2", "mae", "seconds"]].notna().all().all()
    assert pd.read_parquet(out / "scores.parquet").shape == scores.shape
    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == 8 and "nfn-hnp" in preds
    assert (out / "predicted-measure-log.prod.of.spec.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["predict", str(grid_zoo.root), "--methods", "statnn,oracle"]) == 2
    assert "unknown method 'oracle'" in capsys.readouterr().err


def test_measures_cli(grid_zoo, tmp_path, capsys):
    out = tmp_path / "m.csv"
    assert main(["measures", str(grid_zoo.root), "--measures",
                 "params,log.prod.of.spec,path.norm,fro.dist", "--out", str(out),
                 "--quiet"]) == 0
    table = pd.read_csv(out)
    final = grid_zoo.table.query("is_final and finite")
    assert list(table.member_id) == list(final.member_id)
    assert (table["params"] == 64 * 12 + 12 + 12 * 10 + 10).all()
    assert (table["fro.dist"] > 0).all()
    assert main(["measures", "--list"]) == 0
    assert "pacbayes.mag.flatness" in capsys.readouterr().out
    assert main(["measures", str(grid_zoo.root), "--measures", "nope"]) == 2
    assert "unknown measure 'nope'" in capsys.readouterr().err
