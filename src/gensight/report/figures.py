"""Figures (matplotlib, Agg backend): agreement on the line, predicted vs actual, estimated vs
true accuracy, and the accuracy histogram of a zoo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gensight.estimate.base import probit
from gensight.estimate.run import METHODS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _probit_ticks(ax, lo: float, hi: float) -> None:
    ticks = np.array([0.001, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999])
    pos = probit(ticks)
    keep = (pos >= lo) & (pos <= hi)
    for setter in (ax.set_xticks, ax.set_yticks):
        setter(pos[keep])
    ax.set_xticklabels([f"{t:g}" for t in ticks[keep]])
    ax.set_yticklabels([f"{t:g}" for t in ticks[keep]])


def aline_figure(table: pd.DataFrame, pairs: tuple[np.ndarray, np.ndarray], line, path,
                 title: str = "", n_id: int | None = None, n_ood: int | None = None) -> Path:
    """Agreement-on-the-line (arXiv 2206.13089, Fig. 1): probit-scaled ID vs OOD agreement of
    every pair of models, ID vs OOD accuracy of every model (when ``table`` has ``true_acc``),
    the fitted agreement line and the y = x diagonal. Saved to ``path`` (PNG or SVG)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=110)
    x, y = pairs
    if x.size > 4000:  # keep the figure light: a fixed random subset of pairs
        keep = np.random.default_rng(0).choice(x.size, 4000, replace=False)
        x, y = x[keep], y[keep]
    ax.scatter(x, y, s=4, alpha=0.25, color="tab:blue", label="agreement (pairs)",
               rasterized=True)
    pts = [x, y]
    if "true_acc" in table:
        ax_id, ax_ood = probit(table["source_acc"], n_id), probit(table["true_acc"], n_ood)
        ax.scatter(ax_id, ax_ood, s=10, color="tab:red", label="accuracy (models)")
        pts += [ax_id, ax_ood]
    lo = float(min(np.min(p) for p in pts)) - 0.2
    hi = float(max(np.max(p) for p in pts)) + 0.2
    grid = np.linspace(lo, hi, 50)
    ax.plot(grid, line.slope * grid + line.bias, color="black",
            label=f"agreement fit (R$^2$={line.r2:.3f})")
    ax.plot(grid, grid, color="gray", linestyle=":", label="y = x")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    _probit_ticks(ax, lo, hi)
    ax.set_xlabel("in-distribution (probit scale)")
    ax.set_ylabel("shifted (probit scale)")
    ax.set_title(title or "agreement on the line", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def predicted_vs_actual(actual, predicted, path, title: str = "",
                        xlabel: str = "actual test accuracy",
                        ylabel: str = "predicted") -> Path:
    """Scatter of predictions against the truth, with the diagonal when on one scale."""
    plt = _pyplot()
    actual, predicted = np.asarray(actual, float), np.asarray(predicted, float)
    fig, ax = plt.subplots(figsize=(4.2, 4.0), dpi=110)
    ax.scatter(actual, predicted, s=6, alpha=0.5)
    if ylabel == "predicted":
        lo = float(np.nanmin([actual.min(), np.nanmin(predicted)]))
        hi = float(np.nanmax([actual.max(), np.nanmax(predicted)]))
        ax.plot([lo, hi], [lo, hi], color="gray", linestyle=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def accuracy_histogram(rows: pd.DataFrame, path) -> Path:
    """Histogram of the test accuracy of a zoo's members, with train accuracy for reference."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.2), dpi=110)
    bins = np.linspace(0, 1, 41)
    ax.hist(rows["train_acc"], bins=bins, alpha=0.5, label="train accuracy", color="tab:gray")
    ax.hist(rows["test_acc"], bins=bins, alpha=0.7, label="test accuracy", color="tab:blue")
    ax.set_xlabel("accuracy")
    ax.set_ylabel("networks")
    ax.set_title(f"{len(rows)} networks of the zoo", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def predictions_grid(actual, predictions: dict[str, np.ndarray], scores: pd.DataFrame, path,
                     xlabel: str = "actual test accuracy", ncols: int = 4) -> Path:
    """Predicted against actual values, one panel per method, titled with its Kendall's tau;
    the diagonal y = x in each panel."""
    plt = _pyplot()
    actual = np.asarray(actual, float)
    names = list(predictions)
    ncols = max(1, min(ncols, len(names)))
    nrows = max(1, -(-len(names) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 2.8 * nrows), dpi=100,
                             squeeze=False)
    tau = dict(zip(scores["method"], scores["tau"], strict=True))
    for ax, name in zip(axes.flat, names, strict=False):
        pred = np.asarray(predictions[name], float)
        ax.scatter(actual, pred, s=8, alpha=0.6)
        both = np.concatenate([actual, pred[np.isfinite(pred)]])
        lo, hi = float(both.min()), float(both.max())
        ax.plot([lo, hi], [lo, hi], color="gray", linestyle=":", linewidth=1)
        ax.set_title(f"{name}\ntau = {tau.get(name, np.nan):.3f}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("predicted", fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def estimates_scatter(table: pd.DataFrame, path, title: str = "") -> Path:
    """Each label-free estimator's estimate against the true shifted accuracy, one colour per
    method, with the diagonal."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.4), dpi=110)
    true = table["true_acc"].to_numpy(float)
    methods = [m for m in METHODS if m in table]
    markers = "o^sv<>Dpxh"   # one per method of METHODS
    for i, m in enumerate(methods):
        ax.scatter(true, table[m].to_numpy(float), s=10, alpha=0.6, label=m,
                   marker=markers[i % len(markers)])
    values = np.concatenate([true, *[table[m].to_numpy(float) for m in methods]])
    values = values[np.isfinite(values)]
    lo, hi = float(values.min()), float(values.max())
    ax.plot([lo, hi], [lo, hi], color="gray", linestyle=":", label="y = x")
    ax.set_xlabel("true accuracy on the shifted set")
    ax.set_ylabel("estimated accuracy (no labels)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
