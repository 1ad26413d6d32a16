"""Figures and the self-contained HTML page of one or more ``gensight mix train`` runs: the
mixture over time, ADO's fitted scaling laws against the observed losses, and each domain's
validation loss per policy."""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from gensight.mixing.scaling import MixingError, PowerLaw, smooth_losses
from gensight.report.figures import _pyplot


def load_run(run_dir) -> tuple[pd.DataFrame, dict, dict | None]:
    """``(log, config, results or None)`` of a run directory."""
    from gensight.zoo.store import _read_parquet_bytes

    run = Path(run_dir)
    path = run / "log.parquet"
    if not path.exists():
        raise MixingError(f"{run}: no log.parquet; is this a `gensight mix train` output?")
    log, meta = _read_parquet_bytes(path.read_bytes())
    res = run / "results.json"
    return log, meta.get("config", {}), json.loads(res.read_text()) if res.exists() else None


def _domains(log: pd.DataFrame) -> list[str]:
    return [c[3:] for c in log.columns if c.startswith("pi_")]


def _label(cfg: dict) -> str:
    return f"{run_label(cfg)} (seed {cfg.get('seed', '?')})"


def run_label(cfg: dict, with_steps: bool = False) -> str:
    """What a run is, short of its seed: the policy, its ``policy_kwargs`` (if any) and, with
    ``with_steps``, its number of steps; e.g. ``"ado (count=total)"``. Runs with the same label
    are seeds of one variant."""
    label = str(cfg.get("policy", "?"))
    kwargs = cfg.get("policy_kwargs") or {}
    if kwargs:
        label += " (" + ", ".join(f"{k}={kwargs[k]}" for k in sorted(kwargs)) + ")"
    if with_steps:
        label += f", {cfg.get('steps', '?')} steps"
    return label


def _labels(items: list[tuple[dict, dict | None]]) -> list[str]:
    """One label per run ``(config, results or None)``: the results' ``label`` where given,
    else :func:`run_label` (with the steps where the runs differ in them)."""
    with_steps = len({json.dumps(c.get("steps")) for c, _ in items}) > 1
    return [str(r["label"]) if r is not None and r.get("label") else run_label(c, with_steps)
            for c, r in items]


def mixture_figure(runs: list[tuple[pd.DataFrame, dict]], path) -> Path:
    """The mixture (stacked) over training steps, one panel per run."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.4), dpi=100,
                             squeeze=False, sharey=True)
    for ax, (log, cfg) in zip(axes[0], runs, strict=True):
        doms = _domains(log)
        ax.stackplot(log["step"], *[log[f"pi_{d}"] for d in doms], labels=doms, alpha=0.85)
        ax.set_title(_label(cfg), fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        ax.set_xlim(log["step"].min(), log["step"].max())
    axes[0][0].set_ylabel("share of the batch (policy)")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def scaling_figure(log: pd.DataFrame, cfg: dict, path) -> Path:
    """ADO's last fitted scaling law of each domain (ADO's law (1)) against the observed per-step
    training loss (dots) and its Savitzky-Golay smoothing (what the fit sees), over the sample
    count the laws use (the domain's own samples, or all samples with ``count='total'``);
    dotted: the law extrapolated to the steps the fit ignores."""
    plt = _pyplot()
    doms = _domains(log)
    fig, axes = plt.subplots(1, len(doms), figsize=(3.3 * len(doms), 3.2), dpi=100,
                             squeeze=False)
    last = log.iloc[-1]
    steps = int(cfg.get("steps", len(log)))
    ignore = int((cfg.get("policy_kwargs") or {}).get("ignore", max(2, steps // 20)))
    count = (cfg.get("policy_kwargs") or {}).get("count", "domain")
    xlabel = ("samples seen in total (all domains)" if count == "total"
              else "samples seen from the domain")
    for ax, d in zip(axes[0], doms, strict=True):
        n = log[f"n_{d}"].to_numpy()
        loss = log[f"train_loss_{d}"].ffill().bfill().to_numpy()
        ax.scatter(n, loss, s=2, alpha=0.25, color="tab:gray", label="observed",
                   rasterized=True)
        ax.plot(n, smooth_losses(loss), color="tab:blue", lw=1.2, label="smoothed")
        if np.isfinite(last.get(f"eps_{d}", np.nan)):
            law = PowerLaw(last[f"eps_{d}"], last[f"beta_{d}"], last[f"alpha_{d}"])
            n0 = n[min(ignore, n.size - 1)]  # the fit sees the losses from here on
            grid = np.geomspace(max(1.0, n0), n.max(), 100)
            ax.plot(grid, law(grid), color="tab:red", lw=1.5,
                    label=f"fit: {law.eps:.2f}+{law.beta:.2g}n^-{law.alpha:.2f}")
            early = np.geomspace(max(1.0, n[n > 0].min()), max(1.0, n0), 50)
            ax.plot(early, law(early), color="tab:red", lw=1, ls=":")
        ax.set_xscale("log")
        ax.set_ylim(0.95 * np.min(loss), 1.05 * np.max(loss))
        ax.set_title(d, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("training loss (nats/byte)")
    fig.suptitle(f"ADO scaling laws, {_label(cfg)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def validation_figure(summary: pd.DataFrame, curves: list[tuple[pd.DataFrame, dict]],
                      path, labels: list[str] | None = None) -> Path:
    """Left: final validation loss of each domain per policy (mean over seeds, bars with the
    std). Right: the mean validation loss over the domains during training, per run
    (``labels``: one per curve, the policy of :func:`summarize`; default :func:`run_label`)."""
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.6), dpi=100)
    doms = [c for c in summary.columns if c not in ("policy", "seeds", "uniform mix (test)",
                                                    "policy time %")]
    doms = [d for d in doms if not d.endswith("_std")]
    pols = list(summary["policy"])
    width = 0.8 / max(1, len(pols))
    x = np.arange(len(doms))
    for i, p in enumerate(pols):
        row = summary[summary["policy"] == p].iloc[0]
        ax.bar(x + i * width, [row[d] for d in doms], width,
               yerr=[row.get(f"{d}_std", 0.0) for d in doms], label=p)
    ax.set_xticks(x + width * (len(pols) - 1) / 2)
    ax.set_xticklabels(doms, rotation=20, fontsize=8)
    ax.set_ylabel("validation loss (nats/byte)")
    lo = np.nanmin(summary[doms].to_numpy())
    ax.set_ylim(max(0, lo - 0.3), None)
    ax.legend(fontsize=7)
    colors = {p: f"C{i}" for i, p in enumerate(pols)}
    labelled = set()
    if labels is None:
        labels = _labels([(cfg, None) for _, cfg in curves])
    for (log, _), p in zip(curves, labels, strict=True):
        if "val_loss_mean" in log:
            v = log.dropna(subset=["val_loss_mean"])
            bx.plot(v["step"], v["val_loss_mean"], lw=1, color=colors.get(p, "gray"),
                    label=None if p in labelled else p)
            labelled.add(p)
    bx.set_xlabel("step")
    bx.set_ylabel("mean validation loss over domains")
    bx.set_title("one line per run", fontsize=9)
    bx.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def summarize(results: list[dict], labels: list[str] | None = None) -> pd.DataFrame:
    """One row per variant: mean (and ``*_std``) over seeds of each domain's final validation
    loss, their mean, the uniform-mix test loss and the policy's share of step time.

    A variant (column ``policy``) is the result's ``label`` where it has one, else the policy
    with its ``policy_kwargs`` (and its steps where the runs differ in them), so that e.g. ADO
    with ``count='total'`` is not counted as another seed of ADO (:func:`run_label`).
    ``labels`` (one per result) overrides this."""
    rows = []
    if labels is None:
        labels = _labels([(r["config"], r) for r in results])
    for r, label in zip(results, labels, strict=True):
        row = {"policy": label, "seed": r["config"]["seed"], **r["val"],
               "mean": r["val_mean"], "uniform mix (test)": r["test_uniform_mix"],
               "policy time %": 100 * r["policy_time_share"]}
        rows.append(row)
    frame = pd.DataFrame(rows)
    cols = [c for c in frame.columns if c not in ("policy", "seed")]
    g = frame.groupby("policy", sort=False)
    out = g[cols].mean()
    std = g[cols].std(ddof=0).add_suffix("_std")
    out = pd.concat([out, std], axis=1).reset_index()
    out.insert(1, "seeds", g.size().to_numpy())
    return out


def write_report(run_dirs, out_path) -> Path:
    """Write one self-contained HTML page (figures embedded) for the runs ``run_dirs``."""
    import tempfile

    from gensight.report.html import _CSS, _figure, _table
    from gensight.zoo.store import atomic_write_bytes

    runs = [load_run(r) for r in run_dirs]
    if not runs:
        raise MixingError("mix report: no run directories given")
    labels = _labels([(cfg, r) for _, cfg, r in runs])
    results = [r for _, _, r in runs if r is not None]
    result_labels = [lab for (_, _, r), lab in zip(runs, labels, strict=True) if r is not None]
    parts = [f"<h1>gensight mix: data mixtures</h1><p class='meta'>{len(runs)} run(s); "
             f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}</p>"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if results:
            summary = summarize(results, result_labels)
            show = summary[[c for c in summary.columns if not c.endswith("_std")]]
            parts.append("<h2>Final validation loss per domain (nats/byte)</h2>" + _table(show))
            validation_figure(summary, [(log, cfg) for log, cfg, _ in runs], tmp / "val.png",
                              labels)
            parts.append(_figure(tmp / "val.png", "Left: each domain's final validation loss "
                                 "per policy (mean over seeds; bars: std). Right: the mean "
                                 "validation loss over domains during training.",
                                 "validation loss per policy"))
        mixture_figure([(log, cfg) for log, cfg, _ in runs[:6]], tmp / "mix.png")
        parts.append("<h2>The mixture over time</h2>" + _figure(
            tmp / "mix.png", "Share of each domain in the policy at every step.",
            "mixture over time"))
        ado = [(log, cfg) for log, cfg, _ in runs if cfg.get("policy") == "ado"]
        if ado:
            scaling_figure(*ado[0], tmp / "laws.png")
            parts.append("<h2>ADO's scaling laws</h2>" + _figure(
                tmp / "laws.png", "The last fit of L(n) = eps + beta n^-alpha (arXiv "
                "2410.11820, Sec. 3.1) of each domain against its per-step training loss "
                "(gray) and the smoothed loss the fit sees (blue); dotted: extrapolated to "
                "the first steps, which the fit ignores.", "scaling-law fits"))
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>gensight mix "
                f"report</title><style>{_CSS}</style></head><body>{''.join(parts)}"
                f"<p class='meta'>{html.escape(', '.join(str(r) for r in run_dirs))}</p>"
                "</body></html>")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, page.encode("utf-8"))
    return out
