"""Fit and score predictors side by side on one split."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from gensight.metrics import (
    MetricError,
    conditional_mutual_information,
    granulated_kendall_tau,
    kendall_tau,
    mean_absolute_error,
    r2_score,
)
from gensight.predict.predictors import PredictError, Predictor, ZooSplit, grid_hparams

COLUMNS = ["method", "tau", "granulated_tau", "cmi", "r2", "mae", "seconds"]


RANDOM_MODE_NOTE = ("the zoo samples its hyperparameters at random (mode 'random') and they do "
                    "not form a complete grid (build the zoo with mode 'grid')")


def score_predictions(rows: pd.DataFrame, predicted, target: str, hparams: Sequence[str],
                      grid: bool = True) -> tuple[dict, list[str]]:
    """Tau, granulated tau and R^2/MAE of ``predicted`` against ``rows[target]``, and the
    PGDL CMI of ``-predicted`` (a complexity measure grows with the gap) against
    ``train_acc - test_acc``. A metric that is undefined here is NaN, with a note; with
    ``grid=False`` (a zoo whose hyperparameters are sampled, not a grid) an incomplete grid
    gets one short note instead of the list of missing combinations."""
    pred = np.asarray(predicted, dtype=np.float64)
    actual = rows[target].to_numpy(np.float64)
    out, notes = {}, []

    def attempt(name: str, fn: Callable[[], float]) -> None:
        try:
            out[name] = fn()
        except MetricError as exc:
            out[name] = np.nan
            notes.append(f"{name}: {exc}")

    if pred.shape != actual.shape:
        raise PredictError(f"{pred.size} predictions for {actual.size} networks")
    have_gap = {"train_acc", "test_acc"} <= set(rows.columns)
    table = rows.assign(_pred=pred, _neg=-pred, _gap=(
        rows["train_acc"].to_numpy(np.float64) - rows["test_acc"].to_numpy(np.float64)
        if have_gap else np.nan))
    attempt("tau", lambda: kendall_tau(pred, actual))
    attempt("granulated_tau", lambda: granulated_kendall_tau(table, "_pred", target,
                                                             hparams).psi)
    if have_gap:
        attempt("cmi", lambda: conditional_mutual_information(table, "_neg", "_gap", hparams))
    else:
        out["cmi"] = np.nan
        notes.append("cmi: the rows have no train_acc and test_acc to take the gap from")
    if not grid:  # sampled hyperparameters rarely cover a grid: say why in one short note
        long = [n for n in notes if "incomplete hyperparameter grid" in n]
        if long:
            notes = [n for n in notes if n not in long]
            notes.append(f"{', '.join(n.split(':')[0] for n in long)}: {RANDOM_MODE_NOTE}")
    attempt("r2", lambda: r2_score(pred, actual))
    attempt("mae", lambda: mean_absolute_error(pred, actual))
    return out, notes


def evaluate_predictors(train: ZooSplit, test: ZooSplit, predictors: Sequence[Predictor],
                        progress: Callable[[str], None] | None = None
                        ) -> tuple[pd.DataFrame, dict[str, np.ndarray], list[str]]:
    """Fit every predictor on ``train`` and score it on ``test``. Returns the score table
    (one row per method: tau, granulated tau, CMI, R^2, MAE, seconds of fit + predict), the
    predictions per method, and notes (e.g. networks the split left out, a metric undefined
    on this split), each ``"who: what"``. Every predictor's ``check_split(train)`` runs
    before any is fitted, so a predictor that cannot work fails fast."""
    if train.target != test.target:
        raise PredictError(f"the training split predicts {train.target!r} but the test split "
                           f"{test.target!r}")
    for p in predictors:  # e.g. too few networks: fail before any time is spent
        check = getattr(p, "check_split", None)   # duck-typed predictors may lack it
        if check is not None:
            check(train)
    hparams = grid_hparams(test.zoo)
    manifest = getattr(test.zoo, "manifest", None) or {}
    grid = manifest.get("spec", {}).get("mode") != "random"
    records, predictions = [], {}
    notes = list(dict.fromkeys([*train.notes, *test.notes]))
    for p in predictors:
        if progress is not None:
            progress(p.name)
        start = time.perf_counter()
        p.fit(train)
        pred = p.predict(test)
        seconds = time.perf_counter() - start
        scores, why = score_predictions(test.rows, pred, test.target, hparams, grid)
        records.append({"method": p.name, **scores, "seconds": seconds})
        predictions[p.name] = pred
        notes += [f"{p.name}: {w}" for w in why]
    return pd.DataFrame.from_records(records, columns=COLUMNS), predictions, notes
