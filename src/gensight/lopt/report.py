"""One self-contained HTML page for a learned-optimizer comparison: per task, training loss
against inner steps for every optimizer (mean over seeds, shaded +- one standard deviation,
minibatch losses smoothed with a centred moving average) as an embedded PNG, and a table of
final training-split loss and test accuracy (mean +- std over held-out seeds)."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from gensight import __version__
from gensight.lopt.evaluate import Curve


def _smooth(x: torch.Tensor, window: int) -> torch.Tensor:
    """Moving average over the last axis, ``(S, T) -> (S, T)`` (edges use fewer points)."""
    if window <= 1 or x.shape[1] < 2:
        return x
    k = torch.ones(1, 1, window, dtype=x.dtype) / window
    pad = window // 2
    xp = torch.nn.functional.pad(x.unsqueeze(1), (pad, window - 1 - pad), mode="replicate")
    return torch.nn.functional.conv1d(xp, k).squeeze(1)


def curves_png(title: str, curves: Sequence[Curve]) -> bytes:
    """Training loss vs inner step, mean +- std over seeds, one line per optimizer."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for c in curves:
        x = c.losses.clone()
        x[~torch.isfinite(x)] = float("nan")
        steps = torch.arange(1, x.shape[1] + 1)
        sm = _smooth(torch.nan_to_num(x, nan=float(torch.nanmean(x))), max(1, x.shape[1] // 25))
        mean, std = sm.mean(0), sm.std(0) if sm.shape[0] > 1 else torch.zeros(sm.shape[1])
        (line,) = ax.plot(steps, mean, label=c.name, lw=1.4)
        ax.fill_between(steps, (mean - std).clamp_min(1e-4), mean + std, alpha=0.18,
                        color=line.get_color(), lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("inner step")
    ax.set_ylabel("training loss (minibatch, smoothed)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _table(curves: Sequence[Curve]) -> str:
    esc = html.escape
    rows = ["<tr><th>optimizer</th><th>final train loss</th><th>test accuracy</th>"
            "<th>seconds</th></tr>"]
    best = min((float(c.train_loss.mean()) for c in curves), default=0.0)
    for c in curves:
        s = c.summary()
        mark = " <b>(best)</b>" if s["train_loss"] == best else ""
        rows.append(f"<tr><td>{esc(c.name)}{mark}</td><td>{s['train_loss']:.4f} &plusmn; "
                    f"{s['train_loss_std']:.4f}</td><td>{s['test_acc']:.4f} &plusmn; "
                    f"{s['test_acc_std']:.4f}</td><td>{s['seconds']:.1f}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def write_report(results: Mapping[str, Sequence[Curve]], out: str | Path, *,
                 title: str = "gensight learned optimizers", notes: Sequence[str] = ()) -> Path:
    """Write ``out`` (HTML) and ``out`` with suffix ``.json`` (the summaries); atomic."""
    esc = html.escape
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(title)}</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
             "padding:0 1rem;color:#222} table{border-collapse:collapse;font-size:.9rem}"
             "td,th{padding:.25rem .7rem;border-bottom:1px solid #e4e4e4;text-align:right}"
             "td:first-child,th:first-child{text-align:left} th{background:#f4f6f8}"
             "img{max-width:100%}</style></head><body>", f"<h1>{esc(title)}</h1>",
             f"<p>gensight {esc(__version__)}. Learned optimizers: update "
             "-alpha (gamma m + beta f(features)) with f a per-parameter MLP, Deep Sets, NFN "
             "(arXiv 2302.14040) or UNF (arXiv 2402.05232, Sec. 4). Baselines tuned on a "
             "learning-rate grid on separate seeds. Curves: mean &plusmn; std over held-out "
             "seeds.</p>"]
    summary = {}
    for task, curves in results.items():
        png = base64.b64encode(curves_png(task, curves)).decode("ascii")
        parts += [f"<h2>{esc(task)}</h2>", _table(curves),
                  f'<figure><img src="data:image/png;base64,{png}" alt="training loss vs '
                  f'inner step on {esc(task)}"></figure>']
        summary[task] = [c.summary() for c in curves]
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes)
                     + "</ul>")
    parts.append("</body></html>")
    for path, text in ((out, "\n".join(parts)),
                       (out.with_suffix(".json"), json.dumps(summary, indent=1))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return out
