"""Run every estimator on many models at once, from arrays, logits files or a zoo."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gensight.estimate.agreement import (
    MIN_R2,
    AgreementLine,
    agreement_matrix,
    aline_from_rates,
    off_the_line_message,
)
from gensight.estimate.base import (
    EstimatorError,
    as_class_indices,
    check_labels,
    check_logits,
    check_prob_list,
    softmax,
)
from gensight.estimate.calibration import TemperatureScaling
from gensight.estimate.confidence import ATC, CBPE, AverageConfidence, DifferenceOfConfidences

METHODS = ("AC", "DoC", "CBPE", "ATC-MC", "ATC-NE", "ATC-MC+TS", "ATC-NE+TS", "GDE", "ALine-S",
           "ALine-D")
"""Estimator names understood by :func:`estimate_accuracies` (and ``gensight estimate``)."""

_SINGLE = {  # name: estimator, given the model's fitted TemperatureScaling (or None)
    "AC": lambda ts: AverageConfidence(),
    "DoC": lambda ts: DifferenceOfConfidences(),
    "CBPE": lambda ts: CBPE(),
    "ATC-MC": lambda ts: ATC("maxconf"),
    "ATC-NE": lambda ts: ATC("entropy"),
    "ATC-MC+TS": lambda ts: ATC("maxconf", temperature_scaling=ts),
    "ATC-NE+TS": lambda ts: ATC("entropy", temperature_scaling=ts),
}
_WITH_TS = ("ATC-MC+TS", "ATC-NE+TS")


@dataclass
class EstimateResult:
    """Per-model estimates (``table``: one row per model, one column per method, plus
    ``source_acc`` and, when target labels are known, ``true_acc``), the mean absolute error
    per method (``mae``, empty without target labels; computed over the models that every
    method could estimate, so the methods are compared on the same models), the agreement
    line and its pair points, notes (e.g. models a calibrator could not be fitted to), and
    ``temperatures``: each model's fitted temperature (NaN where the fit failed; None when
    no +TS method ran), fitted once per model and shared by ATC-MC+TS and ATC-NE+TS.

    ``true_acc`` is the accuracy of the argmax of the target probabilities (or logits) given,
    the same predictions every estimator sees."""

    table: pd.DataFrame
    mae: pd.Series
    line: AgreementLine | None = None
    pairs: tuple[np.ndarray, np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)
    temperatures: np.ndarray | None = None


def check_methods(methods: Sequence[str]) -> list[str]:
    methods = [methods] if isinstance(methods, str) else list(methods)
    if not methods:
        raise EstimatorError(f"no estimators named; known: {', '.join(METHODS)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise EstimatorError(f"unknown estimator(s) {unknown}; known: {', '.join(METHODS)}")
    return list(methods)


def _logit_list(logits, probs: list[np.ndarray] | None, name: str) -> list[np.ndarray]:
    items = check_prob_list(logits, name, check_logits)
    if probs is not None and (len(items) != len(probs) or items[0].shape != probs[0].shape):
        raise EstimatorError(f"{name} ({len(items)} x {items[0].shape}) must match the "
                             f"probabilities ({len(probs)} x {probs[0].shape})")
    return items


def estimate_accuracies(source_probs, source_labels, target_probs, *,
                        target_labels=None, model_ids: Sequence[str] | None = None,
                        partners: Sequence | None = None,
                        methods: Sequence[str] = METHODS,
                        source_logits=None, target_logits=None) -> EstimateResult:
    """Estimate each model's target accuracy with every method in ``methods``.

    ``source_probs``/``target_probs``: one ``(n_examples, n_classes)`` probability array per
    model (a list, or a ``(models, n_examples, n_classes)`` array); ``source_labels``: labels
    of the source examples. ``source_logits``/``target_logits``, optional, in the same
    layout: temperature scaling (ATC-MC+TS, ATC-NE+TS) is then fitted and applied on the
    logits instead of on ``log p``; with logits given, the probabilities may be ``None``
    (they are the softmax of the logits).

    ``partners[i]``, for GDE, names the independent runs of model ``i``'s configuration: a
    list of model indices (GDE averages the agreement with all of them), one index, or
    ``None`` (no partner: GDE is NaN). ``target_labels``, if given, are used only to report
    the true accuracy (``true_acc``: accuracy of the argmax of the target probabilities or
    logits given, the predictions the estimators see) and the error of each method.
    """
    methods = check_methods(methods)
    src_z = _logit_list(source_logits, None, "source_logits") \
        if source_logits is not None else None
    tgt_z = _logit_list(target_logits, None, "target_logits") \
        if target_logits is not None else None
    if source_probs is None and src_z is not None:
        source_probs = [softmax(z) for z in src_z]
    if target_probs is None and tgt_z is not None:
        target_probs = [softmax(z) for z in tgt_z]
    src = check_prob_list(source_probs, "source_probs")
    tgt = check_prob_list(target_probs, "target_probs")
    if src_z is not None:
        _logit_list(src_z, src, "source_logits")
    if tgt_z is not None:
        _logit_list(tgt_z, tgt, "target_logits")
    if len(src) != len(tgt):
        raise EstimatorError(f"source_probs has {len(src)} models but target_probs has "
                             f"{len(tgt)}")
    if src[0].shape[1] != tgt[0].shape[1]:
        raise EstimatorError(f"source_probs have {src[0].shape[1]} classes but target_probs "
                             f"have {tgt[0].shape[1]}: the models must score the same classes")
    labels = check_labels(source_labels, src[0], "source_labels")
    n = len(src)
    ids = list(model_ids) if model_ids is not None else [f"model-{i}" for i in range(n)]
    if len(ids) != n:
        raise EstimatorError(f"{len(ids)} model ids for {n} models")
    if partners is not None:
        partners = _check_partners(partners, n)
    table = pd.DataFrame({"model": ids})
    table["source_acc"] = [float(np.mean(p.argmax(1) == labels)) for p in src]
    notes: list[str] = []
    temperatures = None
    calibrators: list[TemperatureScaling | None] = [None] * n
    if any(m in methods for m in _WITH_TS):
        # one temperature per model, shared by ATC-MC+TS and ATC-NE+TS
        temperatures = np.full(n, np.nan)
        for i in range(n):
            try:
                ts = TemperatureScaling()
                calibrators[i] = ts.fit_logits(src_z[i], labels) if src_z is not None \
                    else ts.fit(src[i], labels)
                temperatures[i] = calibrators[i].temperature_
            except EstimatorError as exc:  # e.g. separable source data
                notes += [f"{name}: {exc}" for name in _WITH_TS if name in methods]
    for name in methods:
        if name not in _SINGLE:
            continue
        with_ts = name in _WITH_TS
        values = []
        for i, (s, t) in enumerate(zip(src, tgt, strict=True)):
            if with_ts and calibrators[i] is None:
                values.append(np.nan)  # noted above
                continue
            logits = {"source_logits": src_z[i] if src_z is not None else None,
                      "target_logits": tgt_z[i] if tgt_z is not None else None} \
                if with_ts else {"source_logits": None, "target_logits": None}
            try:
                est = _SINGLE[name](calibrators[i]).fit(
                    s, labels, source_logits=logits["source_logits"])
                values.append(est.estimate(t, target_logits=logits["target_logits"]))
            except EstimatorError as exc:
                values.append(np.nan)
                notes.append(f"{name}: {exc}")
        table[name] = values
    predictions = np.stack([p.argmax(axis=1) for p in tgt])
    if "GDE" in methods:
        if partners is None:
            table["GDE"] = np.nan
            notes.append("GDE: no independent runs of the same configuration were given")
        else:
            # GDE (arXiv 2106.13799, Def. 4.1): 1 - disagreement, averaged over every
            # independent run of the model's configuration
            table["GDE"] = [float(np.mean([np.mean(predictions[i] == predictions[j])
                                           for j in group])) if group else np.nan
                            for i, group in enumerate(partners)]
    line = pairs = None
    aline = [m for m in ("ALine-S", "ALine-D") if m in methods]
    if aline:
        if n < 3:
            raise EstimatorError(f"ALine needs at least 3 models, got {n}")
        # one agreement line serves both variants (arXiv 2206.13089, Alg. 1)
        src_pred = np.stack([p.argmax(axis=1) for p in src])
        n_classes = src[0].shape[1]
        result = aline_from_rates((src_pred == labels).mean(axis=1),
                                  agreement_matrix(src_pred, n_classes),
                                  agreement_matrix(predictions, n_classes),
                                  src_pred.shape[1], predictions.shape[1])
        for name in aline:
            table[name] = result["aline_s" if name == "ALine-S" else "aline_d"]
        line, pairs = result["line"], (result["x"], result["y"])
        if line.r2 < MIN_R2:
            notes.append(off_the_line_message(line, MIN_R2))
    mae = pd.Series(dtype=float, name="mae")
    if target_labels is not None:
        y = check_labels(target_labels, tgt[0], "target_labels")
        table["true_acc"] = (predictions == y).mean(axis=1).astype(float)
        scored = [m for m in methods if table[m].notna().any()]
        common = table[scored].notna().all(axis=1)
        if (~common).any():
            notes.append(f"MAE is over the {int(common.sum())} of {n} models that every "
                         f"method could estimate")
        mae = pd.Series({m: float(np.mean(np.abs(table.loc[common, m]
                                                 - table.loc[common, "true_acc"])))
                         if m in scored and common.any() else np.nan for m in methods},
                        name="mae")
    # a message repeated for many models is reported once, with a count
    counts = pd.Series(notes, dtype=object).value_counts(sort=False)
    notes = [f"{msg} ({k} models)" if k > 1 else msg for msg, k in counts.items()]
    return EstimateResult(table, mae, line, pairs, notes, temperatures)


def _check_partners(partners, n: int) -> list[list[int]]:
    """``partners`` as one list of partner indices per model (empty: none)."""
    if isinstance(partners, (str, bytes)) or not hasattr(partners, "__len__"):
        raise EstimatorError(f"partners must be one entry per model, got "
                             f"{type(partners).__name__}")
    partners = list(partners)
    if len(partners) != n:
        raise EstimatorError(f"partners has {len(partners)} entries for {n} models")
    out: list[list[int]] = []
    for i, entry in enumerate(partners):
        if entry is None or (isinstance(entry, float) and np.isnan(entry)):
            out.append([])
            continue
        items = list(entry) if isinstance(entry, (list, tuple, np.ndarray, range)) \
            else [entry]
        group = []
        for j in items:
            if isinstance(j, (bool, np.bool_)) or not isinstance(j, (int, float, np.number)) \
                    or not float(j).is_integer() or not 0 <= int(j) < n or int(j) == i:
                raise EstimatorError(f"partners[{i}] must be the index of another model in "
                                     f"[0, {n - 1}], a list of them, or None; got {entry!r}")
            if int(j) not in group:
                group.append(int(j))
        out.append(group)
    return out


def partners_from_groups(groups: Sequence) -> list[list[int]]:
    """GDE partners from a configuration label per model: each model's partners are all
    other models with its label (``None`` labels: no partners).

    >>> partners_from_groups(["a", "a", "b", "a", None])
    [[1, 3], [0, 3], [], [0, 1], []]
    """
    groups = list(groups)
    return [[j for j, h in enumerate(groups) if j != i and h is not None and h == g]
            if g is not None else [] for i, g in enumerate(groups)]


def load_logits(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read logits for one or many models: ``.npy`` of shape ``(n_examples, n_classes)`` or
    ``(models, n_examples, n_classes)``, or ``.safetensors`` with one ``(n_examples,
    n_classes)`` tensor per model (the keys name the models, in sorted order). Returns the
    model names and a ``(models, n_examples, n_classes)`` float64 array. Nothing is
    unpickled."""
    path = Path(path)
    if not path.exists():
        raise EstimatorError(f"logits file {str(path)!r} does not exist")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            arr = arr[None] if arr.ndim == 2 else arr
            names = [f"model-{i}" for i in range(arr.shape[0])] if arr.ndim == 3 else []
        elif path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
            names = sorted(tensors)
            shapes = {tensors[k].shape for k in names}
            if len(shapes) != 1:
                raise EstimatorError(f"{str(path)!r}: every model's logits must have one "
                                     f"shape, got {sorted(shapes)}")
            arr = np.stack([tensors[k] for k in names]) if names else np.zeros((0,))
        else:
            raise EstimatorError(f"{str(path)!r}: logits must be .npy or .safetensors")
    except EstimatorError:
        raise
    except Exception as exc:  # corrupt file, object array (needs pickle), directory, ...
        raise EstimatorError(f"cannot read logits from {str(path)!r}: "
                             f"{' '.join(str(exc).split())}") from None
    if arr.dtype.kind not in "iuf":
        raise EstimatorError(f"{str(path)!r}: logits must be real numbers (float or int), got "
                             f"dtype {arr.dtype}")
    if arr.ndim != 3 or 0 in arr.shape:
        raise EstimatorError(f"{str(path)!r}: logits must be (n_examples, n_classes) or "
                             f"(models, n_examples, n_classes), got shape {arr.shape}")
    if arr.shape[2] < 2:
        raise EstimatorError(f"{str(path)!r}: logits need at least 2 classes, got shape "
                             f"{arr.shape}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr).reshape(arr.shape[0], -1).all(axis=1)
    if bad.any():
        which = [names[i] for i in np.flatnonzero(bad)]
        raise EstimatorError(f"{str(path)!r}: the logits of {len(which)} of {arr.shape[0]} "
                             f"model(s) contain NaN or infinity: {_few(which)}")
    return names, arr


def _few(items: Sequence, limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}]"


def load_labels(path: str | Path) -> np.ndarray:
    """Read class labels from a ``.npy`` file: a 1-D array of non-negative integers (or
    integer-valued floats), one per example. Nothing is unpickled. Returns int64."""
    path = Path(path)
    if not path.exists():
        raise EstimatorError(f"labels file {str(path)!r} does not exist")
    if path.suffix != ".npy":
        raise EstimatorError(f"{str(path)!r}: labels must be a .npy file")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise EstimatorError(f"cannot read labels from {str(path)!r}: "
                             f"{' '.join(str(exc).split())}") from None
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise EstimatorError(f"{str(path)!r}: labels must be 1-D (one class index per "
                             f"example), got shape {arr.shape}")
    return as_class_indices(arr, f"labels in {str(path)!r}")


def probs_from_logits(logits: np.ndarray) -> list[np.ndarray]:
    return [softmax(x) for x in logits]


def zoo_estimates(zoo, shift: str, *, methods: Sequence[str] = METHODS,
                  rows: pd.DataFrame | None = None) -> EstimateResult:
    """Estimate the accuracy of a zoo's members on the shifted test set ``shift``
    (``"{name}-{severity}"``) from its stored logits: source = the labeled validation split,
    target = the shifted test set. Rows default to every finite member at its final
    checkpoint. GDE averages each member's agreement over every other seed of its
    configuration among ``rows``; temperature scaling is fitted on the stored logits.

    The truth (``true_acc``) is the accuracy of the stored logits' argmax, the predictions
    every estimator sees. Zoos store logits as float16, whose rounding can move a top logit
    below (or tie it with) the runner-up; the zoo table's ``shift:{shift}_acc`` comes from
    the float32 forward pass, so the two can differ by an example (a note counts the models
    where they do)."""
    from gensight.data import load_dataset

    name = shift
    available = zoo.shifted_sets
    if name not in available:
        raise EstimatorError(f"the zoo has no shifted test set {name!r}; it has "
                             f"{available or 'none (add shifts to the spec)'}")
    if rows is None:
        rows = zoo.table.query("is_final and finite")
    rows = rows.reset_index(drop=True)
    data = load_dataset(zoo.manifest["spec"]["dataset"])
    src = zoo.logits(rows, "val").double().numpy()
    tgt = zoo.logits(rows, name).double().numpy()
    res = estimate_accuracies(None, data.y_val.numpy(), None, source_logits=src,
                              target_logits=tgt, target_labels=data.y_test.numpy(),
                              model_ids=rows["member_id"].tolist(),
                              partners=partners_from_groups(rows["config_id"]),
                              methods=methods)
    column = f"shift:{name}_acc"
    if column in rows:
        n_test = len(data.y_test)
        diff = np.abs(res.table["true_acc"].to_numpy() - rows[column].to_numpy()) * n_test
        off = int((diff > 0.5).sum())
        if off:
            res.notes.append(f"true_acc is the accuracy of the stored float16 logits (what "
                             f"the estimators see); it differs from the zoo table's {column} "
                             f"(float32) on {off} of {len(rows)} models, by at most "
                             f"{int(round(diff.max()))} of {n_test} examples")
    return res
