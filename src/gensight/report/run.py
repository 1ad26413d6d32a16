"""One report for one zoo: predictors of generalization, complexity measures and label-free
accuracy estimates side by side, written as a self-contained HTML page plus CSV tables.

``build_report(zoo, out)`` is what ``gensight report ZOO`` and ``gensight demo`` run::

    from gensight.report import build_report
    from gensight.zoo import Zoo

    report = build_report(Zoo.open("runs/my-zoo"), "runs/my-zoo/report")
    print(report.html)            # runs/my-zoo/report/index.html
    report.scores                 # one row per predictor: tau, granulated tau, CMI, R^2, MAE
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gensight.errors import GensightError

DEFAULT_METHODS = (
    "statnn", "nfn-hnp", "nfn-np",
    "measure:log.prod.of.spec", "measure:log.sum.of.fro", "measure:fro.dist",
    "measure:path.norm", "measure:pacbayes.mag.flatness",
)
"""Predictors a report compares when none are named: the weight-based predictors and a few
measures from each family of arXiv 1912.02178 (norms, distance, path norm, flatness)."""
PARAM_SPACE_METHODS = ("statnn", "unf", "unf-np", "deepsets")
"""The default on a zoo of GRUs or residual CNNs (a ParamSpace): what reads any weight
space."""


class ReportError(GensightError, ValueError):
    """A report cannot be built from these inputs."""


@dataclass
class Report:
    """What :func:`build_report` wrote and found.

    ``scores``: one row per predictor (``method, tau, granulated_tau, cmi, r2, mae,
    seconds``); ``predictions``: one row per held-out network with the target and every
    method's prediction; ``estimate_mae``: mean absolute error of each label-free estimator
    (rows) on each shifted set (columns); ``estimates``: per shifted set, one row per network;
    ``notes``: what was skipped and why; ``html``: the page; ``files``: every file written.
    """

    out: Path
    html: Path
    scores: pd.DataFrame
    predictions: pd.DataFrame
    estimate_mae: pd.DataFrame
    estimates: dict[str, pd.DataFrame]
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def default_shifts(zoo, limit: int = 2) -> list[str]:
    """Up to ``limit`` shifted test sets of ``zoo`` with stored logits (``"name-severity"``):
    the first ``limit`` shift kinds, each at its middle severity."""
    if not zoo.manifest["spec"].get("store_logits"):
        return []
    by_kind: dict[str, list[int]] = {}
    for name in zoo.shifted_sets:
        kind, _, sev = name.rpartition("-")
        by_kind.setdefault(kind, []).append(int(sev))
    return [f"{kind}-{sorted(sevs)[(len(sevs) - 1) // 2]}"
            for kind, sevs in list(by_kind.items())[:limit]]


def check_shifts(zoo, shifts: Sequence[str] | str) -> list[str]:
    """``shifts`` as shifted-set names of ``zoo`` with stored logits (``NAME-SEVERITY``;
    ``NAME:SEVERITY`` is accepted too), each once, in the order given. Anything else -- a
    name the zoo does not have, a path such as ``../x-1`` -- raises :class:`ReportError`
    listing the sets the zoo has."""
    names = [shifts] if isinstance(shifts, str) else list(shifts)
    wanted = []
    for s in names:
        if not isinstance(s, str):
            raise ReportError(f"shifted set names must be strings, got {s!r}")
        s = s.strip().replace(":", "-")
        if s and s not in wanted:
            wanted.append(s)
    with_logits = list(zoo.shifted_sets) if zoo.manifest["spec"].get("store_logits") else []
    missing = [s for s in wanted if s not in with_logits]
    if missing:
        has = ", ".join(with_logits) if with_logits else \
            "none (build it with shifts and store_logits = true in the spec)"
        raise ReportError(f"the zoo has no stored logits for shifted set(s) "
                          f"{', '.join(map(repr, missing))}; it has: {has} (use NAME-SEVERITY)")
    return wanted


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_file_stem(name: str) -> str:
    """``name`` as a file-name stem that stays in its directory on every OS: characters other
    than letters, digits, ``. _ + -`` become ``_`` (``/``, ``\\``, ``:`` included), and it
    never starts with a dot (no ``..``, no hidden files).

    >>> safe_file_stem("../x-1"), safe_file_stem("a/b-2"), safe_file_stem("measure:fro.dist")
    ('_.._x-1', 'a_b-2', 'measure_fro.dist')
    """
    stem = _UNSAFE.sub("_", str(name))[:120]
    return "_" + stem if not stem or stem.startswith(".") else stem


def unique_file_stems(names: Sequence[str]) -> dict[str, str]:
    """:func:`safe_file_stem` of each name, made unique (``-2``, ``-3``, ... appended) when
    two names map to one stem."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in names:
        stem = base = safe_file_stem(name)
        k = 2
        while stem.lower() in used:   # case-insensitive file systems
            stem, k = f"{base}-{k}", k + 1
        used.add(stem.lower())
        out[name] = stem
    return out


def _usable_methods(zoo, methods: Sequence[str], notes: list[str]) -> list[str]:
    from gensight.measures import get_measure

    has_init = bool((zoo.table["epoch"] == 0).any())
    keep = []
    for m in methods:
        if m.startswith("measure:") and get_measure(m[len("measure:"):]).needs_init \
                and not has_init:
            notes.append(f"{m} left out: it needs the initialization checkpoint, and this zoo "
                         "does not store one (checkpoints = [0, \"final\"] in the spec)")
            continue
        keep.append(m)
    return keep


def build_report(zoo, out: str | Path, *, methods: Sequence[str] | None = None,
                 shifts: Sequence[str] | None = None, target: str = "test_acc",
                 split: str = "auto", seed: int = 0, epochs: int = 60,
                 n_examples: int = 1000, command: str | None = None,
                 progress: Callable[[str], None] | None = None) -> Report:
    """Fit and score the predictors ``methods`` (default :data:`DEFAULT_METHODS`) on a seeded
    split of ``zoo``, run every label-free estimator on ``shifts`` (default
    :func:`default_shifts`), and write to ``out``:

    - ``index.html``: one page with every table and figure (figures embedded as PNG data, so
      the page can be mailed or moved alone);
    - ``scores.csv``, ``predictions.csv``, ``estimate_mae.csv``, ``estimates-SHIFT.csv``,
      ``zoo_summary.csv`` (file names built from a name go through :func:`safe_file_stem`);
    - ``figures/*.png``: the same figures as files.

    The directory is written in a temporary place and moved into ``out`` at the end, so an
    error leaves no half-written report (an existing ``out`` is replaced only on success).
    ``progress(message)`` is called before each stage; ``command`` is the command line the
    page gives for rebuilding it (default: the ``gensight report`` call with these options).
    """
    from gensight.estimate import zoo_estimates
    from gensight.predict import (
        check_target,
        evaluate_predictors,
        make_predictor,
        make_predictors,
        split_zoo,
    )
    from gensight.report import figures
    from gensight.report.html import render_page

    start = time.perf_counter()
    say = progress or (lambda message: None)
    notes: list[str] = []
    final = zoo.table.query("is_final and finite") if len(zoo.table) else zoo.table
    if len(final) < 8:
        raise ReportError(f"a report needs at least 8 trained members with finite weights; "
                          f"{zoo.root} has {len(final)}")
    from gensight.weightspace import ParamSpace

    param_space = isinstance(zoo.space, ParamSpace)
    methods = list(methods) if methods else list(PARAM_SPACE_METHODS if param_space
                                                 else DEFAULT_METHODS)
    for m in methods:  # unknown names fail before any work
        make_predictor(m, seed=seed, epochs=epochs)
    methods = _usable_methods(zoo, methods, notes)
    if shifts is None:
        shifts = default_shifts(zoo)
        if not shifts:
            notes.append("no label-free estimates: this zoo stores no logits of shifted test "
                         "sets (set shifts and store_logits = true in the spec)")
    else:
        shifts = check_shifts(zoo, shifts)
    check_target(zoo.table, target)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReportError(f"{out} exists and is not a directory; choose another --out")

    if command is None:
        command = _command(zoo, methods, shifts, target, split, seed, epochs, n_examples)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        figdir = work / "figures"
        figdir.mkdir()
        figs: dict[str, Path] = {}

        summary = zoo.summary().reset_index()
        summary.to_csv(work / "zoo_summary.csv", index=False)
        figs["zoo"] = figures.accuracy_histogram(final, figdir / "zoo.png")

        # --- predicting generalization
        train, test = split_zoo(zoo, by=split, seed=seed, target=target)
        say(f"measures of {len(final)} networks")
        predictors = make_predictors(methods, zoo, pd.concat([train.rows, test.rows]),
                                     seed=seed, epochs=epochs, n_examples=n_examples)
        scores, predictions, why = evaluate_predictors(
            train, test, predictors, progress=lambda name: say(f"fitting {name}"))
        notes += list(dict.fromkeys(why))
        scores.to_csv(work / "scores.csv", index=False)
        preds = test.rows[["member_id", "config_id", "seed_index", target]].copy()
        for name, values in predictions.items():
            preds[name] = values
        preds.to_csv(work / "predictions.csv", index=False)
        figs["predict"] = figures.predictions_grid(test.y, predictions, scores,
                                                   figdir / "predict.png",
                                                   xlabel=f"actual {target}")

        # --- label-free estimation
        estimates: dict[str, pd.DataFrame] = {}
        maes = {}
        safe_names = unique_file_stems(shifts)
        for name in shifts:
            say(f"label-free estimates on {name}")
            res = zoo_estimates(zoo, name)
            estimates[name] = res.table
            maes[name] = res.mae
            notes += [f"{name}: {n}" for n in res.notes]
            safe = safe_names[name]
            res.table.to_csv(work / f"estimates-{safe}.csv", index=False)
            figs[f"estimates-{name}"] = figures.estimates_scatter(
                res.table, figdir / f"estimates-{safe}.png", title=f"estimated vs true: {name}")
            if res.line is not None:
                figs[f"aline-{name}"] = figures.aline_figure(
                    res.table, res.pairs, res.line, figdir / f"aline-{safe}.png",
                    title=f"agreement on the line: {name}")
        estimate_mae = pd.DataFrame(maes)
        estimate_mae.index.name = "method"
        estimate_mae.to_csv(work / "estimate_mae.csv")

        seconds = time.perf_counter() - start
        say("writing the page")
        page = render_page(zoo=zoo, summary=summary, scores=scores, n_train=len(train),
                           n_test=len(test), target=target, estimate_mae=estimate_mae,
                           estimates=estimates, figures=figs, notes=notes, seconds=seconds,
                           command=command)
        (work / "index.html").write_text(page, encoding="utf-8")
        if out.exists():
            if not (out / "index.html").exists() and any(out.iterdir()):
                raise ReportError(f"{out} exists and is not a gensight report directory; "
                                  "choose another --out")
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return Report(out=out, html=out / "index.html", scores=scores, predictions=preds,
                  estimate_mae=estimate_mae, estimates=estimates, notes=notes, files=files,
                  seconds=seconds)


def _command(zoo, methods, shifts, target, split, seed, epochs, n_examples) -> str:
    """The ``gensight report`` command line that rebuilds a report with these options."""
    import shlex

    args = ["gensight", "report", str(zoo.root)]
    from gensight.weightspace import ParamSpace

    default = PARAM_SPACE_METHODS if isinstance(zoo.space, ParamSpace) else DEFAULT_METHODS
    if list(methods) != list(default):
        args += ["--methods", ",".join(methods)]
    if list(shifts) != default_shifts(zoo):
        args += ["--shifts", ",".join(shifts)]
    for flag, value, default in (("--target", target, "test_acc"), ("--split", split, "auto"),
                                 ("--seed", seed, 0), ("--epochs", epochs, 60),
                                 ("--examples", n_examples, 1000)):
        if value != default:
            args += [flag, str(value)]
    return shlex.join(args)


def summary_tables(report: Report) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two short tables printed in the terminal: predictors (method, tau, granulated tau,
    R^2, MAE) and estimators (MAE x 100 on each shifted set)."""
    pred = report.scores[["method", "tau", "granulated_tau", "r2", "mae"]].copy()
    est = (report.estimate_mae * 100).round(2).reset_index() if len(report.estimate_mae) \
        else pd.DataFrame()
    if len(est):
        est.columns = ["method", *[f"MAE x100 {c}" for c in est.columns[1:]]]
    return pred, est


def best(frame: pd.DataFrame, column: str, largest: bool = True) -> str | None:
    """The method with the best finite ``column`` (None when none is finite)."""
    values = frame[column].to_numpy(np.float64)
    if not np.isfinite(values).any():
        return None
    i = int(np.nanargmax(values) if largest else np.nanargmin(values))
    return str(frame["method"].iloc[i])
