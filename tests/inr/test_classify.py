"""INR classification (gensight.inr.classify, ``gensight inr classify``): invariance,
augmentation, split discipline, tiny end-to-end runs, the CLI and its one-line errors."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from gensight.cli import main
from gensight.errors import GensightError
from gensight.inr import (
    METHODS,
    FlatMLPClassifier,
    Inr2ArrayClassifier,
    INRClassifier,
    INRClassifyError,
    INRData,
    NFNClassifier,
    classify_zoo,
    load_inr_data,
    make_classifier,
    split_rows,
)
from gensight.weightspace import permute, random_permutation
from gensight.zoo import ZooSpec, build_zoo
from gensight.zoo.siren import fit_sirens, render

# 24 digits images (14 train, 5 val, 5 test) x 2 fits, 2-8-8-1 SIRENs, 10 steps: ~1 s.
TINY = {"name": "tiny-inr", "dataset": "digits", "seed": 3, "shard_size": 48,
        "architecture": {"family": "siren", "hidden": [8, 8], "omega_0": 30.0},
        "siren": {"fits_per_image": 2, "steps": 10, "lr": 0.001, "images": 24}}
# the smallest classifier zoo: one digits MLP, one epoch
MLP_ZOO = {"name": "tiny-mlp", "dataset": "digits", "seed": 1, "mode": "grid",
           "seeds_per_config": 1, "shard_size": 1,
           "architecture": {"family": "mlp", "hidden": [4]},
           "hparams": {"optimizer": ["sgd"], "lr": [0.01], "epochs": [1],
                       "batch_size": [256], "train_fraction": [0.2]}}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these models are tiny, and on a busy 2-core machine two spinning
    threads make a step up to 50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo(ZooSpec.from_dict(TINY), tmp_path_factory.mktemp("inr") / "zoo")


@pytest.fixture(scope="module")
def mlp_zoo(tmp_path_factory):
    return build_zoo(ZooSpec.from_dict(MLP_ZOO), tmp_path_factory.mktemp("mlp") / "zoo")


@pytest.fixture(scope="module")
def data(zoo):
    return load_inr_data(zoo)


@pytest.fixture(scope="module")
def black_white():
    """The easy case: 2-8-8-1 SIRENs fitted to constant dark (level in [-1, -0.5], class 0)
    or bright (level in [0.5, 1], class 1) 8x8 images, each from one of 4 inits (so the
    classes differ by what fitting did to the same starting points); 24 train, 8 val, 8
    test. (Dark vs bright from 40 *different* inits is not easy for 24 training SIRENs.)"""
    n = 40
    labels = np.arange(n) % 2
    gen = torch.Generator().manual_seed(0)
    level = (torch.rand(n, generator=gen) * 0.5 + 0.5) * torch.tensor(labels * 2.0 - 1.0)
    images = level.float().view(n, 1, 1).expand(n, 8, 8).contiguous()
    fit = fit_sirens(images, [100 + (i // 2) % 4 for i in range(n)], hidden=(8, 8), steps=60,
                     lr=1e-2)
    assert fit.psnr.min() > 30
    weights = fit.population.to_weight_batch()
    parts = {"train": slice(0, 24), "val": slice(24, 32), "test": slice(32, 40)}
    return {s: INRData(weights[torch.arange(n)[sl]], labels[sl], np.arange(n)[sl])
            for s, sl in parts.items()}


def _fitted(method, data, **kw):
    d, n_classes = data
    return make_classifier(method, steps=3, eval_every=3, n_classes=n_classes,
                           channels=(4, 4), **kw).fit(d["train"], d["val"])


# --- invariance and augmentation ---------------------------------------------------------------
@pytest.mark.parametrize("method", ["inr2array", "nft", "nfn-hnp", "nfn-np", "statnn"])
def test_invariant_methods_ignore_hidden_neuron_permutations(method, data):
    clf = _fitted(method, data, dtype=torch.float64)
    x = data[0]["test"].weights.to(torch.float64)
    perm = random_permutation(x.space, "hnp", batch_size=len(x),
                              generator=torch.Generator().manual_seed(0))
    moved = permute(x, perm)
    assert not torch.allclose(x.flatten(), moved.flatten())
    a, b = clf.decision_function(x), clf.decision_function(moved)
    assert a.dtype == torch.float64
    torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    assert (clf.predict(x) == clf.predict(moved)).all()


def test_flat_mlp_is_not_invariant(data):
    clf = _fitted("mlp", data)
    x = data[0]["test"].weights
    perm = random_permutation(x.space, "hnp", batch_size=len(x),
                              generator=torch.Generator().manual_seed(0))
    assert (clf.decision_function(x) - clf.decision_function(permute(x, perm))).abs().max() > 1e-3


def test_mlp_aug_permutes_each_minibatch_and_keeps_what_the_siren_draws(data):
    x = data[0]["train"].weights[:8]
    aug = make_classifier("mlp-aug")
    assert isinstance(aug, FlatMLPClassifier) and aug.augment
    moved = aug.augment_batch(x, torch.Generator().manual_seed(1))
    # the flattened input changes, for every member ...
    assert (moved.flatten() - x.flatten()).abs().amax(1).min() > 1e-4
    # ... the same seed gives the same permutation, another seed another one ...
    again = aug.augment_batch(x, torch.Generator().manual_seed(1))
    other = aug.augment_batch(x, torch.Generator().manual_seed(2))
    assert torch.equal(again.flatten(), moved.flatten())
    assert not torch.equal(other.flatten(), moved.flatten())
    # ... but each SIREN draws the same image, so its label is still right
    omega = 30.0
    torch.testing.assert_close(render(moved, 8, omega), render(x, 8, omega), rtol=0, atol=1e-5)
    # plain mlp leaves the minibatch alone
    plain = make_classifier("mlp")
    assert plain.augment_batch(x, torch.Generator().manual_seed(1)) is x


def test_mlp_aug_training_sees_permuted_inputs_with_unchanged_labels(data, monkeypatch):
    d, n_classes = data
    seen = []
    real = FlatMLPClassifier._encode

    def spy(self, batch):
        seen.append(batch)
        return real(self, batch)

    monkeypatch.setattr(FlatMLPClassifier, "_encode", spy)
    losses = []
    real_loss = torch.nn.CrossEntropyLoss.forward

    def loss_spy(self, logits, target):
        losses.append(target.clone())
        return real_loss(self, logits, target)

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", loss_spy)
    clf = make_classifier("mlp-aug", steps=1, eval_every=1, batch_size=len(d["train"]),
                          n_classes=n_classes)
    clf.fit(d["train"], None)
    train = clf.standardizer_.transform(d["train"].weights)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    xb = train[order]
    assert not torch.allclose(seen[0].flatten(), xb.flatten())       # permuted input
    assert torch.equal(losses[0], torch.tensor(np.array(d["train"].labels))[order])  # same labels


# --- split discipline -------------------------------------------------------------------------
def test_split_rows_keep_every_image_and_all_its_fits_in_one_split(zoo):
    rows = split_rows(zoo)
    for s, r in rows.items():
        assert (r["split"] == s).all() and r["is_final"].all() and r["finite"].all()
    images = {s: set(r["image_id"]) for s, r in rows.items()}
    assert not images["train"] & images["test"] and not images["val"] & images["test"]
    assert not images["train"] & images["val"]
    assert sum(len(r) for r in rows.values()) == len(zoo.table)
    assert (rows["train"].groupby("image_id").size() == 2).all()   # every fit is used


def test_no_test_image_reaches_training(zoo, monkeypatch):
    got = []
    real = INRClassifier.fit

    def spy(self, train, val=None, progress=None):
        got.append((set(train.image.tolist()), set(val.image.tolist())))
        return real(self, train, val, progress)

    monkeypatch.setattr(INRClassifier, "fit", spy)
    classify_zoo(zoo, ["mlp", "statnn"], seeds=1, steps=2, channels=(4,))
    table = zoo.table
    test_images = set(table.loc[table["split"] == "test", "image_id"])
    train_images = set(table.loc[table["split"] == "train", "image_id"])
    val_images = set(table.loc[table["split"] == "val", "image_id"])
    assert len(got) == 2
    for train, val in got:
        assert train == train_images and val == val_images
        assert not (train | val) & test_images


def test_an_image_in_two_splits_is_refused(zoo):
    table = zoo.table.copy()
    i = table.index[table["split"] == "train"][0]
    table.loc[i, "split"] = "test"
    fake = SimpleNamespace(family="siren", manifest={"name": "forged"}, root="forged",
                           table=table)
    with pytest.raises(INRClassifyError, match="both the train and the test split"):
        split_rows(fake)


# --- end to end -------------------------------------------------------------------------------
def test_every_method_runs_end_to_end_on_a_tiny_zoo(zoo):
    calls = []
    result = classify_zoo(zoo, METHODS, seeds=2, steps=4, eval_every=2, channels=(4, 4),
                          progress=lambda m, s, step, total: calls.append((m, s, step)))
    runs, summary = result.runs, result.summary
    assert len(runs) == 2 * len(METHODS) and list(summary["method"]) == list(METHODS)
    for col in ("test_acc", "val_acc", "train_acc"):
        assert runs[col].between(0, 1).all()
    assert summary["test_acc_std"].ge(0).all() and (summary["seeds"] == 2).all()
    assert result.sizes["train"] == (28, 14) and result.sizes["test"] == (10, 5)
    assert ("nfn-np", 1, 4) in calls and ("mlp", 0, 2) in calls
    # inr2array reports its autoencoder steps, then its classifier steps, out of 4 + 4
    assert [c[2] for c in calls if c[:2] == ("inr2array", 0)] == [1, 2, 3, 4, 6, 8]
    gaps = summary.set_index("method")["invariance_gap"]
    assert gaps["nfn-hnp"] < 1e-4 and gaps["nfn-np"] < 1e-4 and gaps["mlp"] > 1e-3
    assert gaps["nft"] < 1e-4 and gaps["inr2array"] < 1e-4


@pytest.mark.parametrize("method", METHODS)
def test_black_and_white_sirens_are_separated(method, black_white):
    if method == "inr2array":   # 8 channels overfit 24 SIRENs: val reconstruction MSE 0.9
        clf = Inr2ArrayClassifier(steps=60, eval_every=20, n_classes=2, channels=16,
                                  ae_steps=100, lr=3e-3)
    else:
        clf = make_classifier(method, steps=60, eval_every=20, n_classes=2, channels=(8, 8))
    clf.fit(black_white["train"], black_white["val"])
    assert clf.score(black_white["test"]) >= 0.75   # chance: 0.5
    assert clf.history_[-1][0] == 60 and clf.best_step_ in (20, 40, 60)


def test_nfn_classifier_uses_the_cpu_widths_and_checks_its_arguments():
    assert make_classifier("nfn-hnp").channels == (32, 32, 32)
    assert isinstance(make_classifier("nfn-np"), NFNClassifier)
    with pytest.raises(INRClassifyError, match="steps must be a positive integer"):
        make_classifier("mlp", steps=0)
    with pytest.raises(INRClassifyError, match="lr must be a positive number"):
        make_classifier("mlp", lr=-1.0)
    with pytest.raises(INRClassifyError, match="not fitted"):
        make_classifier("mlp").predict(None)
    # NFT widths are checked when the classifier is made, before any data or training
    with pytest.raises(INRClassifyError, match="nft needs a width .* 4 attention heads; got 30"):
        make_classifier("nft", channels=(30, 30))
    with pytest.raises(INRClassifyError, match="inr2array needs a width .*; got 7"):
        make_classifier("inr2array", channels=(7,))


# --- the CLI ----------------------------------------------------------------------------------
def test_cli_prints_the_table_and_writes_scores(zoo, tmp_path, capsys):
    out = tmp_path / "scores"
    code = main(["inr", "classify", str(zoo.root), "--methods", "statnn,mlp-aug", "--seeds", "2",
                 "--steps", "3", "--channels", "4,4", "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for text in ("INR classification of tiny-inr", "statnn", "mlp-aug", "±", "test acc",
                 "val acc", "train acc", "seconds"):
        assert text in captured.out
    assert "train 28 SIRENs (14 images)" in captured.err
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores["method"]) == ["statnn", "mlp-aug"]
    assert {"test_acc_mean", "test_acc_std", "val_acc", "train_acc", "seconds"} <= set(
        scores.columns)
    assert scores["test_acc_mean"].between(0, 1).all()
    assert len(pd.read_csv(out / "runs.csv")) == 4
    assert sorted(p.name for p in out.iterdir()) == ["runs.csv", "scores.csv"]  # no temporaries


def test_cli_report_page(zoo, tmp_path, capsys):
    report = tmp_path / "report"
    assert main(["inr", "classify", str(zoo.root), "--methods", "statnn", "--seeds", "1",
                 "--steps", "2", "--report", str(report), "--quiet"]) == 0
    assert f"report: {report / 'index.html'}" in capsys.readouterr().out
    page = (report / "index.html").read_text()
    assert "INR classification: tiny-inr" in page and "<td>statnn</td>" in page
    assert page.count("data:image/png;base64,") == 1  # the renderings strip
    zoo_table = pd.read_csv(report / "zoo.csv")
    assert list(zoo_table["split"]) == ["train", "val", "test", "all"]


@pytest.mark.parametrize("args, fragments", [
    (["--methods", "nfn-hnp,bogus"], ["unknown method 'bogus'", "known methods: inr2array, "
                                      "nft, nfn-hnp, nfn-np, statnn, mlp, mlp-aug"]),
    (["--seeds", "0"], ["--seeds must be a positive integer; got 0"]),
    (["--seeds", "three"], ["--seeds must be a positive integer; got 'three'"]),
    (["--steps", "-5"], ["--steps must be a positive integer; got -5"]),
    (["--steps", "1.5"], ["--steps must be a positive integer"]),
    (["--channels", "4,x"], ["--channels must be comma-separated positive integers"]),
    (["--lr", "nan"], ["--lr must be a positive number"]),
])
def test_cli_bad_arguments_fail_in_one_line(zoo, capsys, args, fragments):
    code = main(["inr", "classify", str(zoo.root), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("gensight: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err


def test_cli_refuses_a_classifier_zoo_in_one_line(mlp_zoo, capsys):
    code = main(["inr", "classify", str(mlp_zoo.root), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "tiny-mlp" in err and "'mlp' zoo" in err and "SIREN zoo" in err
    with pytest.raises(GensightError):
        classify_zoo(mlp_zoo, ["mlp"], seeds=1, steps=1)


def test_cli_needs_a_subcommand_and_a_zoo(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["inr"])
    assert "INR_COMMAND" in capsys.readouterr().err
    code = main(["inr", "classify", str(tmp_path / "missing"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "missing" in err
