"""Run every estimator on many models at once, from arrays, logits files or a zoo."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gensight.estimate.agreement import GDE, AgreementLine, AgreementWarning, ALineD, ALineS
from gensight.estimate.base import (
    EstimatorError,
    as_class_indices,
    check_labels,
    check_prob_list,
    softmax,
)
from gensight.estimate.confidence import ATC, AverageConfidence, DifferenceOfConfidences

METHODS = ("AC", "DoC", "ATC-MC", "ATC-NE", "ATC-MC+TS", "ATC-NE+TS", "GDE", "ALine-S",
           "ALine-D")
"""Estimator names understood by :func:`estimate_accuracies` (and ``gensight estimate``)."""

_SINGLE = {
    "AC": lambda: AverageConfidence(),
    "DoC": lambda: DifferenceOfConfidences(),
    "ATC-MC": lambda: ATC("maxconf"),
    "ATC-NE": lambda: ATC("entropy"),
    "ATC-MC+TS": lambda: ATC("maxconf", temperature_scaling=True),
    "ATC-NE+TS": lambda: ATC("entropy", temperature_scaling=True),
}


@dataclass
class EstimateResult:
    """Per-model estimates (``table``: one row per model, one column per method, plus
    ``source_acc`` and, when target labels are known, ``true_acc``), the mean absolute error
    per method (``mae``, empty without target labels; computed over the models that every
    method could estimate, so the methods are compared on the same models), the agreement
    line and its pair points, and notes (e.g. models a calibrator could not be fitted to)."""

    table: pd.DataFrame
    mae: pd.Series
    line: AgreementLine | None = None
    pairs: tuple[np.ndarray, np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)


def check_methods(methods: Sequence[str]) -> list[str]:
    methods = [methods] if isinstance(methods, str) else list(methods)
    if not methods:
        raise EstimatorError(f"no estimators named; known: {', '.join(METHODS)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise EstimatorError(f"unknown estimator(s) {unknown}; known: {', '.join(METHODS)}")
    return list(methods)


def estimate_accuracies(source_probs, source_labels, target_probs, *,
                        target_labels=None, model_ids: Sequence[str] | None = None,
                        partners: Sequence[int | None] | None = None,
                        methods: Sequence[str] = METHODS) -> EstimateResult:
    """Estimate each model's target accuracy with every method in ``methods``.

    ``source_probs``/``target_probs``: one ``(n_examples, n_classes)`` probability array per
    model; ``source_labels``: labels of the source examples. ``partners[i]``, for GDE, is the
    index of an independent run of model ``i``'s configuration (``None``: no partner, GDE is
    NaN). ``target_labels``, if given, are used only to report the true accuracy and the
    error of each method.
    """
    methods = check_methods(methods)
    src = check_prob_list(source_probs, "source_probs")
    tgt = check_prob_list(target_probs, "target_probs")
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
    for name in methods:
        if name in _SINGLE:
            values = []
            for s, t in zip(src, tgt, strict=True):
                try:
                    values.append(_SINGLE[name]().fit(s, labels).estimate(t))
                except EstimatorError as exc:  # e.g. temperature scaling on separable data
                    values.append(np.nan)
                    notes.append(f"{name}: {exc}")
            table[name] = values
    if "GDE" in methods:
        if partners is None:
            table["GDE"] = np.nan
            notes.append("GDE: no independent runs of the same configuration were given")
        else:
            gde = GDE()
            table["GDE"] = [gde.estimate(tgt[i], tgt[j]) if j is not None else np.nan
                            for i, j in enumerate(partners)]
    line = pairs = None
    aline = [m for m in ("ALine-S", "ALine-D") if m in methods]
    if aline:
        if n < 3:
            raise EstimatorError(f"ALine needs at least 3 models, got {n}")
        for name in aline:
            est = (ALineS() if name == "ALine-S" else ALineD()).fit(src, labels)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", AgreementWarning)
                table[name] = est.estimate(tgt)
            line, pairs = est.line_, est.pairs_
        if caught:
            notes.append(str(caught[0].message))
    mae = pd.Series(dtype=float, name="mae")
    if target_labels is not None:
        y = check_labels(target_labels, tgt[0], "target_labels")
        table["true_acc"] = [float(np.mean(p.argmax(1) == y)) for p in tgt]
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
    counts = pd.Series(notes, dtype=object).value_counts()
    notes = [f"{msg} ({k} models)" if k > 1 else msg for msg, k in counts.items()]
    return EstimateResult(table, mae, line, pairs, notes)


def _check_partners(partners, n: int) -> list[int | None]:
    partners = list(partners)
    if len(partners) != n:
        raise EstimatorError(f"partners has {len(partners)} entries for {n} models")
    out: list[int | None] = []
    for i, j in enumerate(partners):
        if j is None or (isinstance(j, float) and np.isnan(j)):
            out.append(None)
            continue
        if isinstance(j, (bool, np.bool_)) or not float(j).is_integer() \
                or not 0 <= int(j) < n or int(j) == i:
            raise EstimatorError(f"partners[{i}] must be the index of another model in "
                                 f"[0, {n - 1}] or None, got {j!r}")
        out.append(int(j))
    return out


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
    checkpoint; GDE pairs each member with another seed of its configuration."""
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
    src = probs_from_logits(zoo.logits(rows, "val").double().numpy())
    tgt = probs_from_logits(zoo.logits(rows, name).double().numpy())
    partners: list[int | None] = []
    by_config = rows.groupby("config_id").indices
    for i, config in enumerate(rows["config_id"]):
        group = list(by_config[config])
        partners.append(group[(group.index(i) + 1) % len(group)] if len(group) > 1 else None)
    return estimate_accuracies(src, data.y_val.numpy(), tgt, target_labels=data.y_test.numpy(),
                               model_ids=rows["member_id"].tolist(), partners=partners,
                               methods=methods)
