"""Granulated tau and CMI on a zoo whose hyperparameters are sampled, not a grid."""

import numpy as np
import pandas as pd

from gensight.predict import score_predictions


def _rows(n=12, seed=0, sampled=False):
    rng = np.random.default_rng(seed)
    lr = rng.uniform(1e-3, 1e-1, n) if sampled else np.repeat([0.1, 0.01, 0.001], n // 3)
    wd = np.tile([0.0, 1e-4], n // 2)
    test = rng.uniform(0.5, 0.9, n)
    return pd.DataFrame({"lr": lr, "wd": wd, "test_acc": test,
                         "train_acc": test + rng.uniform(0, 0.1, n)})


def test_sampled_hyperparameters_give_one_short_note():
    rows = _rows(sampled=True)
    pred = rows["test_acc"].to_numpy() + 0.01
    scores, notes = score_predictions(rows, pred, "test_acc", ["lr", "wd"], grid=False)
    assert abs(scores["tau"] - 1.0) < 1e-12
    assert np.isnan(scores["granulated_tau"]) and np.isnan(scores["cmi"])
    assert len(notes) == 1 and notes[0].startswith("granulated_tau, cmi: ")
    assert "mode 'random'" in notes[0] and len(notes[0]) < 200
    # a grid zoo keeps the full message, which names a missing combination
    _, grid_notes = score_predictions(rows, pred, "test_acc", ["lr", "wd"])
    assert len(grid_notes) == 2 and all("incomplete hyperparameter grid" in n
                                        for n in grid_notes)


def test_a_sampled_zoo_that_covers_a_grid_is_scored():
    rows = _rows()
    pred = rows["test_acc"].to_numpy()
    for grid in (True, False):
        scores, notes = score_predictions(rows, pred, "test_acc", ["lr", "wd"], grid=grid)
        assert abs(scores["granulated_tau"] - 1.0) < 1e-12 and np.isfinite(scores["cmi"])
        assert not notes
