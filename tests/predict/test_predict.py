import numpy as np
import pandas as pd
import pytest
import torch

from gensight.cli import main
from gensight.predict import (
    MeasurePredictor,
    NFNPredictor,
    NFTPredictor,
    PredictError,
    StatNetPredictor,
    StatNN,
    ZooSplit,
    evaluate_predictors,
    make_predictor,
    split_zoo,
    statnn_features,
)
from gensight.predict.predictors import StatFeatures, _val_tau
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


def test_paper_recipe_is_the_papers_configuration(grid_zoo):
    from gensight.nf import HNPLinear, HNPPool, NPLinear

    for symmetry, layer in (("hnp", HNPLinear), ("np", NPLinear)):
        p = make_predictor(f"nfn-{symmetry}-paper")
        assert p.name == f"nfn-{symmetry}-paper"
        assert (p.channels, p.head_hidden, p.batch_size, p.lr, p.epochs) == \
            ((16, 16, 5), (1000, 1000), 8, 1e-3, 50)
        assert (p.select, p.patience, p.augment, p.val_fraction) == ("tau", None, False, 0.2)
        model = p._make_model(grid_zoo.space)
        layers = [m for m in model.encoder if isinstance(m, layer)]
        assert [m.out_channels for m in layers] == [16, 16, 5]
        assert isinstance(model.pool, HNPPool)               # both pool with HNP
        widths = [(m.in_features, m.out_features) for m in model.head
                  if isinstance(m, torch.nn.Linear)]
        assert [w[1] for w in widths] == [1000, 1000, 1]
        # the authors' NP model: IO-encoding in every layer, per-position standardization
        assert [getattr(m, "io_embed", False) for m in layers] == [symmetry == "np"] * 3
        assert p.scale == (False if symmetry == "hnp" else "position")
    # HNP: no rescaling of the inputs, the batch goes in as it is
    batch = grid_zoo.weights(grid_zoo.table.query("is_final").head(2))
    assert make_predictor("nfn-hnp-paper")._scaled(batch) is batch


def test_position_scaling_standardizes_every_entry_over_the_training_networks(grid_zoo):
    train, test = split_zoo(grid_zoo)
    p = NFNPredictor("np", channels=(4,), epochs=1, scale="position", seed=0).fit(train)
    w = train.weights.weights[0]
    scaled = p._scaled(train.weights)
    np.testing.assert_allclose(scaled.weights[0], (w - w.mean(0)) / w.std(0, correction=0),
                               rtol=1e-5, atol=1e-5)
    for t in (*scaled.weights, *scaled.biases):   # mean 0, std 1 (or the entry is constant)
        np.testing.assert_allclose(t.mean(0), 0, atol=1e-5)
        std = t.std(0, correction=0)
        assert torch.all((std - 1).abs() < 1e-4) or torch.all(std < 1e-4)
    # test networks use the training networks' statistics
    np.testing.assert_allclose(p._scaled(test.weights).weights[0],
                               (test.weights.weights[0] - w.mean(0)) / w.std(0, correction=0),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(PredictError, match="scale must be"):
        NFNPredictor(scale="layer")


def test_select_tau_keeps_the_epoch_with_the_best_validation_tau(grid_zoo):
    from gensight.metrics import kendall_tau

    train, _ = split_zoo(grid_zoo)
    model = NFNPredictor("hnp", channels=(4, 4), epochs=8, patience=None, val_fraction=0.5,
                         lr=3e-2, seed=3, select="tau", scale=False).fit(train)
    assert len(model.history_) == 8                     # no early stop with patience=None
    taus = [-h for h in model.history_]
    assert model.best_epoch_ == int(np.argmax(taus)) + 1
    # the validation networks are the first half of the seeded order; the kept weights
    # score the best epoch's tau on them
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(3))
    n_val = int(round(len(train) * 0.5))
    val = ZooSplit(grid_zoo, train.rows.iloc[order[:n_val].numpy()])
    assert kendall_tau(model.predict(val), val.y) == pytest.approx(max(taus), abs=1e-6)
    with pytest.raises(PredictError, match="select must be"):
        NFNPredictor(select="r2")
    assert _val_tau(torch.ones(4), torch.arange(4.0)) == 0.0    # constant predictions
    # tau on fewer than 3 validation networks means nothing: refused before training
    small = ZooSplit(grid_zoo, train.rows.head(6))
    with pytest.raises(PredictError, match="at least 3 validation networks"):
        NFNPredictor(select="tau", val_fraction=0.2).fit(small)


def test_statnet_predictor_is_the_papers_statnn(grid_zoo):
    train, test = split_zoo(grid_zoo)
    batch = test.weights
    np.testing.assert_allclose(StatFeatures()(batch).double().numpy(), statnn_features(batch),
                               rtol=1e-5, atol=1e-6)
    p = make_predictor("statnn-paper")
    assert isinstance(p, StatNetPredictor) and p.name == "statnn-paper"
    features, head = p._make_model(grid_zoo.space)
    widths = [(m.in_features, m.out_features) for m in head if isinstance(m, torch.nn.Linear)]
    assert widths == [(7 * 4, 1000), (1000, 1000), (1000, 1)]     # 2 layers: 4 tensors
    p.epochs, p.val_fraction = 2, 0.5     # 8 training networks: 4 to validate on
    p.fit(train)
    before = p.predict(test)
    perm = random_permutation(batch.space, "hnp", batch_size=len(test),
                              generator=torch.Generator().manual_seed(2))
    permuted = ZooSplit(test.zoo, test.rows)
    permuted.weights = permute(batch, perm)
    np.testing.assert_allclose(before, p.predict(permuted), atol=1e-6)
    assert not np.allclose(before, before[0])
    # the fitted model also takes the networks themselves
    direct = torch.sigmoid(p.model_(batch).squeeze(-1)).detach().double().numpy()
    np.testing.assert_allclose(direct, before, rtol=1e-5)


@pytest.mark.parametrize("symmetry", ["hnp", "np"])
def test_nft_predictions_are_invariant_to_neuron_permutations(grid_zoo, symmetry):
    train, test = split_zoo(grid_zoo)
    model = NFTPredictor(symmetry, channels=8, blocks=1, heads=2, epochs=2, seed=0).fit(train)
    assert model.name == ("nft" if symmetry == "hnp" else "nft-np")
    before = model.predict(test)
    perm = random_permutation(test.weights.space, symmetry, batch_size=len(test),
                              generator=torch.Generator().manual_seed(1))
    permuted = ZooSplit(test.zoo, test.rows)
    permuted.weights = permute(test.weights, perm)
    np.testing.assert_allclose(before, model.predict(permuted), atol=1e-5)
    assert not np.allclose(before, before[0])


@pytest.mark.parametrize("method", ["unf", "deepsets"])
def test_unf_and_deepsets_predictors_are_invariant(grid_zoo, method):
    train, test = split_zoo(grid_zoo)
    model = make_predictor(method, epochs=2).fit(train)
    assert model.name == method
    before = model.predict(test)
    perm = random_permutation(test.weights.space, "hnp", batch_size=len(test),
                              generator=torch.Generator().manual_seed(1))
    permuted = ZooSplit(test.zoo, test.rows)
    permuted.weights = permute(test.weights, perm)
    np.testing.assert_allclose(before, model.predict(permuted), atol=1e-5)
    assert not np.allclose(before, before[0])


def test_nft_learns_on_the_zoo(grid_zoo):
    train, _ = split_zoo(grid_zoo)
    model = NFTPredictor(channels=8, blocks=1, heads=2, dropout=0.0, epochs=12, patience=12,
                         val_fraction=0.25, lr=3e-3, seed=0).fit(train)
    assert min(model.history_) < model.history_[0]
    assert isinstance(make_predictor("nft"), NFTPredictor)
    assert make_predictor("nft-np").symmetry == "np"


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
                 "statnn,nfn-hnp,nft,measure:log.prod.of.spec", "--epochs", "2",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "granulated_tau" in text and "nfn-hnp" in text
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores.method) == ["statnn", "nfn-hnp", "nft", "measure:log.prod.of.spec"]
    assert scores[["tau", "r2", "mae", "seconds"]].notna().all().all()
    assert pd.read_parquet(out / "scores.parquet").shape == scores.shape
    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == 8 and "nfn-hnp" in preds and "nft" in preds
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


class EditedZoo:
    """``zoo`` with an edited table, and NaN written into the weights of ``nan_members``
    (as a zoo whose ``finite`` column is wrong would give them)."""

    def __init__(self, zoo, table, nan_members=()):
        self._zoo, self.table, self._nan = zoo, table, set(nan_members)

    def __getattr__(self, name):
        return getattr(self._zoo, name)

    def weights(self, rows):
        from gensight.weightspace import WeightBatch

        batch = self._zoo.weights(rows)
        weights = [w.clone() for w in batch.weights]
        for i, member in enumerate(rows["member_id"]):
            if member in self._nan:
                weights[0][i].view(-1)[0] = float("nan")
        return WeightBatch(batch.space, weights, batch.biases, check_finite=False)


def test_target_must_be_a_numeric_column_named_with_the_candidates(grid_zoo, capsys):
    with pytest.raises(PredictError, match=r"no column 'nope' to predict; numeric columns: "
                                           r".*test_acc"):
        split_zoo(grid_zoo, target="nope")
    with pytest.raises(PredictError, match=r"target column 'optimizer' is not numeric "
                                           r"\(dtype .*e\.g\. '(sgd|adam)'\); numeric "
                                           r"columns: lr, .*test_acc") as info:
        split_zoo(grid_zoo, target="optimizer")
    assert "member_id" not in str(info.value) and "shard_pos" not in str(info.value)
    with pytest.raises(PredictError, match="'finite' is not numeric"):
        split_zoo(grid_zoo, target="finite")
    with pytest.raises(PredictError, match="'activation' is not numeric"):
        ZooSplit(grid_zoo, grid_zoo.table.head(4), "activation")
    rc = main(["predict", str(grid_zoo.root), "--methods", "statnn", "--target", "optimizer"])
    err = capsys.readouterr().err
    assert rc == 2 and "'optimizer' is not numeric" in err and err.count("\n") == 1


def test_nan_targets_are_left_out_by_split_zoo_with_a_note_and_refused_by_zoosplit(grid_zoo):
    table = grid_zoo.table.copy()
    final = table.query("is_final and finite")
    dropped = list(final["member_id"].iloc[[0, 5]])
    table.loc[table["member_id"].isin(dropped) & table["is_final"], "test_acc"] = np.nan
    zoo = EditedZoo(grid_zoo, table)
    train, test = split_zoo(zoo, by="config", seed=0)
    assert len(train) + len(test) == len(final) - 2
    assert not set(dropped) & set(pd.concat([train.rows, test.rows])["member_id"])
    note = f"split: left out 2 of {len(final)} networks whose 'test_acc' is NaN or infinite"
    assert train.notes[0].startswith(note) and all(d in train.notes[0] for d in dropped)
    _, _, notes = evaluate_predictors(train, test, [StatNN("gbt")])
    assert notes[0] == train.notes[0]
    with pytest.raises(PredictError, match=r"'test_acc' is NaN or infinite for 2 of the .*"
                                           + dropped[0]):
        ZooSplit(zoo, table.query("is_final and finite"))
    # too few finite targets left
    table.loc[table["is_final"], "test_acc"] = np.nan
    table.loc[table.index[table["is_final"]][:3], "test_acc"] = 0.5
    with pytest.raises(PredictError, match="3 networks with a finite 'test_acc' are too few"):
        split_zoo(EditedZoo(grid_zoo, table))


def test_predictors_name_networks_with_nonfinite_weights(grid_zoo):
    final = grid_zoo.table.query("is_final and finite")
    table = grid_zoo.table.copy()
    bad_id = final["member_id"].iloc[2]
    table.loc[table["member_id"].eq(bad_id), "finite"] = False
    with pytest.raises(PredictError, match=f"1 of the 16 networks have NaN/inf weights "
                                           rf"\(training diverged\): \[{bad_id}\]"):
        split_zoo(EditedZoo(grid_zoo, table), rows=table.query("is_final"))
    with pytest.raises(PredictError, match=bad_id):
        ZooSplit(grid_zoo, table.query("is_final"))
    # weights that are NaN although the table says finite
    zoo = EditedZoo(grid_zoo, grid_zoo.table, nan_members=[bad_id])
    train, test = split_zoo(zoo, by="config", seed=0)
    split = train if bad_id in set(train.rows["member_id"]) else test
    for predictor in (StatNN("gbt"), StatNN("mlp"), NFNPredictor(epochs=1)):
        with pytest.raises(PredictError, match=rf"NaN/inf weights: \[{bad_id}\]"):
            predictor.fit(split)


def test_predictors_that_need_more_networks_say_how_many(grid_zoo):
    train, test = split_zoo(grid_zoo)            # 8 training networks
    with pytest.raises(PredictError, match="statnn-mlp needs at least 11 training networks "
                                           r".*the training split has 8"):
        StatNN("mlp").fit(train)
    with pytest.raises(PredictError, match="statnn-mlp needs at least 11"):
        evaluate_predictors(train, test, [StatNN("gbt"), StatNN("mlp")])  # before any fit
    big, _ = split_zoo(grid_zoo, by="config", test_fraction=0.2, seed=0)   # 12 of 16
    assert len(big) >= 11
    StatNN("mlp").fit(big)
    one = ZooSplit(grid_zoo, train.rows.head(1))
    with pytest.raises(PredictError, match="nfn-hnp needs at least 2 training networks"):
        NFNPredictor(epochs=1).fit(one)
    with pytest.raises(PredictError, match=r"nfn-np predicts values in \[0, 1\].*'test_loss' "
                                           r"ranges over"):
        NFNPredictor("np", epochs=1).fit(ZooSplit(grid_zoo, train.rows, "test_loss"))
    # StatNN predicts any numeric target, unclipped when it is not an accuracy
    loss_train, loss_test = split_zoo(grid_zoo, target="test_loss")
    pred = StatNN("gbt").fit(loss_train).predict(loss_test)
    assert (pred > 1).any()
    with pytest.raises(PredictError, match="by='config' needs at least 2 configurations"):
        split_zoo(grid_zoo, by="config", rows=grid_zoo.table.query("is_final").assign(
            config_id=0))
    with pytest.raises(PredictError, match="leaves no training networks"):
        split_zoo(grid_zoo, by="seed", test_fraction=0.75)
