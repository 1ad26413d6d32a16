"""One self-contained HTML page for a learned-optimizer comparison: per task, training loss
against inner steps for every optimizer (mean over seeds, shaded +- one standard deviation,
minibatch losses smoothed with a centred moving average) as an embedded PNG, and a table of
final training-split loss and test accuracy (mean +- std over held-out seeds)."""

from __future__ import annotations

import base64
import html
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


def _nan_smooth(x: torch.Tensor, window: int) -> torch.Tensor:
    """Moving average over the last axis using only finite points; entries that are not
    finite stay NaN (a diverged seed's curve ends where it diverged)."""
    ok = torch.isfinite(x)
    if window <= 1 or x.shape[1] < 2:
        return torch.where(ok, x, float("nan"))
    vals = _smooth(torch.where(ok, x, 0.0), window)
    cnt = _smooth(ok.to(x.dtype), window)
    out = vals / cnt.clamp_min(1e-12)
    return torch.where(ok, out, float("nan"))


def band(losses: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per step mean and std over seeds of the smoothed curves, using only the seeds that are
    finite at that step (NaN where none is): nothing is filled in for diverged seeds."""
    sm = _nan_smooth(losses.double(), window)
    ok = torch.isfinite(sm)
    n = ok.sum(0)
    z = torch.where(ok, sm, 0.0)
    mean = z.sum(0) / n.clamp_min(1)
    var = (torch.where(ok, sm - mean, 0.0) ** 2).sum(0) / (n - 1).clamp_min(1)
    std = torch.where(n > 1, var.sqrt(), 0.0)
    nan = torch.full_like(mean, float("nan"))
    return torch.where(n > 0, mean, nan), torch.where(n > 0, std, nan)


def curves_png(title: str, curves: Sequence[Curve]) -> bytes:
    """Training loss vs inner step, mean +- std over seeds, one line per optimizer; a
    diverged seed contributes only up to where it diverged (:func:`band`)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for c in curves:
        x = c.losses
        steps = torch.arange(1, x.shape[1] + 1)
        mean, std = band(x, max(1, x.shape[1] // 25))
        label = c.name + (f" ({c.diverged}/{x.shape[0]} diverged)" if c.diverged else "")
        (line,) = ax.plot(steps, mean, label=label, lw=1.4)
        ax.fill_between(steps, (mean - std).clamp_min(1e-4), mean + std, alpha=0.18,
                        color=line.get_color(), lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("inner step")
    ax.set_ylabel("training loss (minibatch, smoothed)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from gensight.report.html import png_bytes

    return png_bytes(fig)


def _table(curves: Sequence[Curve]) -> str:
    esc = html.escape
    rows = ["<tr><th>optimizer</th><th>final train loss</th><th>mean loss over the curve</th>"
            "<th>loss over the last tenth</th><th>test accuracy</th><th>seconds</th></tr>"]
    # only optimizers with no diverged seed can be marked best
    best = min((float(c.train_loss.mean()) for c in curves if not c.diverged), default=None)
    for c in curves:
        s = c.summary()
        mark = " <b>(best)</b>" if not c.diverged and s["train_loss"] == best else ""
        div = (f" <b>({s['diverged']}/{s['seeds']} seeds diverged; mean over the rest)</b>"
               if s["diverged"] else "")
        rows.append(f"<tr><td>{esc(c.name)}{mark}{div}</td><td>{s['train_loss']:.4f} &plusmn; "
                    f"{s['train_loss_std']:.4f}</td><td>{s['mean_loss']:.4f} &plusmn; "
                    f"{s['mean_loss_std']:.4f}</td><td>{s['late_loss']:.4f} &plusmn; "
                    f"{s['late_loss_std']:.4f}</td><td>{s['test_acc']:.4f} &plusmn; "
                    f"{s['test_acc_std']:.4f}</td><td>{s['seconds']:.1f}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def write_report(results: Mapping[str, Sequence[Curve]], out: str | Path, *,
                 title: str = "gensight learned optimizers", notes: Sequence[str] = ()) -> Path:
    """Write ``out`` (HTML) and ``out`` with suffix ``.json`` (the summaries); atomic.
    ``out`` must not end in ``.json`` (the summary would overwrite the page)."""
    from gensight.lopt.errors import LoptError

    esc = html.escape
    out = Path(out)
    if out.suffix.lower() == ".json":
        raise LoptError(f"report {out} ends in .json; name the HTML page (e.g. "
                        f"{out.with_suffix('.html')}), the JSON summary is written next to it")
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
