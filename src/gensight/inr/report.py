"""The INR report: one self-contained HTML page for ``gensight inr classify|edit --report``.

The page shows the SIREN zoo (PSNR of the fits per split, a strip of the test SIRENs'
renderings at the image size and at twice it, which shows what the weights draw between the
pixels), the task's score table, and for editing the figure of originals, edits and targets
side by side (:func:`gensight.inr.edit.figure_edits`). Figures are embedded as PNG, tables
also written as CSV next to the page.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from gensight import __version__
from gensight.report.html import png_bytes


def renderings_png(zoo, count: int = 8) -> bytes:
    """The first test SIREN of each of the first ``count`` labels of ``zoo``, rendered at
    the image size (top) and at twice it (bottom), as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from gensight.zoo.siren import render

    rows = zoo.table[zoo.table["split"] == "test"]
    if rows.empty:
        rows = zoo.table
    rows = rows.groupby("label", sort=True).head(1).head(count)  # one SIREN per label
    batch = zoo.weights(rows)
    info = zoo.manifest["siren"]
    size, omega = int(info["size"]), float(info["omega_0"])
    images = [render(batch, s, omega_0=omega) for s in (size, 2 * size)]
    fig, axes = plt.subplots(2, len(rows), figsize=(1.2 * len(rows), 2.6), dpi=100,
                             squeeze=False)
    for r, (img, s) in enumerate(zip(images, (size, 2 * size), strict=True)):
        for c in range(len(rows)):
            ax = axes[r][c]
            ax.imshow(img[c, 0].detach().numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{s}x{s}", fontsize=8)
            if r == 0 and "label" in rows:
                ax.set_title(f"label {int(rows['label'].iloc[c])}", fontsize=8)
    fig.tight_layout()
    png = png_bytes(fig, bbox_inches="tight")
    return png


def _table(frame: pd.DataFrame, digits: int = 4) -> str:
    return frame.round(digits).to_html(index=False, border=0, classes="t", escape=True)


def _img(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode()
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def write_inr_report(out: str | Path, zoo, *, task: str, scores: pd.DataFrame,
                     notes: Sequence[str] = (), figure: bytes | None = None,
                     figure_caption: str = "", command: str = "") -> Path:
    """Write ``out/index.html`` (and ``out/scores.csv``, ``out/zoo.csv``) for ``task``
    (``"classification"`` or ``"editing"``) on SIREN ``zoo``; returns the page's path.
    Every file is written atomically."""
    from gensight.zoo.store import atomic_write_bytes

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = zoo.summary().reset_index()
    atomic_write_bytes(out / "scores.csv", scores.to_csv(index=False).encode())
    atomic_write_bytes(out / "zoo.csv", summary.to_csv(index=False).encode())
    name = str(zoo.manifest.get("name", zoo.root))
    parts = [
        f"<h1>INR {html.escape(task)}: {html.escape(name)}</h1>",
        f"<p class=m>gensight {html.escape(__version__)}"
        + (f" &middot; <code>{html.escape(command)}</code>" if command else "") + "</p>",
        "<h2>The SIREN zoo</h2>",
        "<p>PSNR (dB) of the fits per split; <code>median_steps</code>: Adam steps used "
        "(early stop at the target PSNR).</p>",
        _table(summary, 2),
        _img(renderings_png(zoo), "test SIRENs rendered",
             "Test SIRENs rendered at the image size (top) and at twice it (bottom)."),
        f"<h2>{html.escape(task.capitalize())}</h2>",
        _table(scores),
    ]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    if figure is not None:
        parts.append(_img(figure, "edits", figure_caption))
    page = ("<!doctype html><html><head><meta charset=utf-8><title>"
            + html.escape(f"gensight inr {task}: {name}") + "</title><style>"
            "body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}"
            "table.t{border-collapse:collapse;font-size:13px}"
            "table.t td,table.t th{padding:3px 8px;border-bottom:1px solid #ddd;"
            "text-align:right}figure{margin:1em 0}img{max-width:100%}.m{color:#666}"
            "</style></head><body>" + "\n".join(parts) + "</body></html>")
    path = out / "index.html"
    atomic_write_bytes(path, page.encode())
    return path
