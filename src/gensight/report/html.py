"""The report page: one self-contained HTML file (inline CSS, figures as embedded PNG data,
no scripts, nothing fetched from the network)."""

from __future__ import annotations

import base64
import html
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from gensight import __version__

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; } h3 { margin-bottom: 0.3rem; }
.meta { color: #666; font-size: 0.9rem; }
table.t { border-collapse: collapse; font-size: 0.88rem; margin: 0.6rem 0 1rem; }
table.t th, table.t td { padding: 0.25rem 0.7rem; border-bottom: 1px solid #e4e4e4;
                         text-align: right; }
table.t th { background: #f4f6f8; } table.t td:first-child, table.t th:first-child
{ text-align: left; }
figure { margin: 0.8rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85rem; color: #555; max-width: 60rem; }
.notes li { font-size: 0.85rem; color: #555; } .row { display: flex; flex-wrap: wrap;
gap: 1.2rem; } .row figure { flex: 0 1 34rem; } code { background: #f4f4f4; padding: 0 0.25rem; }
"""


def _table(frame: pd.DataFrame, digits: int = 3) -> str:
    return frame.to_html(index=False, border=0, classes="t", na_rep="n/a",
                         float_format=lambda v: f"{v:.{digits}f}")


def png_bytes(fig, **savefig_kwargs) -> bytes:
    """A matplotlib figure as PNG bytes (for pages that embed their figures); closes it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_kwargs)
    plt.close(fig)
    return buf.getvalue()


def _figure(path: Path, caption: str, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def render_page(*, zoo, summary: pd.DataFrame, scores: pd.DataFrame, n_train: int,
                n_test: int, target: str, estimate_mae: pd.DataFrame,
                estimates: dict[str, pd.DataFrame], figures: dict[str, Path],
                notes: list[str], seconds: float, command: str) -> str:
    """The page's HTML text (see :func:`gensight.report.build_report`)."""
    spec = zoo.manifest["spec"]
    arch = spec.get("architecture", {})
    esc = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>gensight report: {esc(zoo.manifest['name'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>gensight report: {esc(zoo.manifest['name'])}</h1>",
        f'<p class="meta">zoo <code>{esc(str(zoo.root))}</code> &middot; dataset '
        f"{esc(str(spec.get('dataset')))} &middot; architecture {esc(str(arch.get('family')))}"
        f" &middot; {zoo.manifest['n_members']} members &middot; built with gensight "
        f"{esc(__version__)} on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in "
        f"{seconds:.0f} s</p>",
        "<h2>The zoo</h2>",
        "<p>Test accuracy of the members at their final checkpoint, by optimizer and "
        "activation (<code>zoo_summary.csv</code>).</p>",
        _table(summary),
        _figure(figures["zoo"], "Train and test accuracy of every member.",
                "histogram of accuracies"),
        "<h2>Predicting generalization</h2>",
        f"<p>Each method is fitted on {n_train} networks and predicts <code>{esc(target)}"
        f"</code> of {n_test} held-out networks. Kendall's tau (tau-b, over distinct pairs) and "
        "granulated tau (arXiv 1912.02178, Eq. 3-5) score the ranking, CMI is the PGDL "
        "conditional mutual information "
        "(arXiv 2012.07976; 0 to 1, PGDL reports 100x), R<sup>2</sup> and MAE score the "
        "values. StatNN: weight statistics + gradient boosting (arXiv 2002.11448); nfn-hnp, "
        "nfn-np: invariant neural functionals (arXiv 2302.14040); measure:NAME: a complexity "
        "measure mapped to accuracy by a line fitted on the training networks "
        "(<code>scores.csv</code>, <code>predictions.csv</code>).</p>",
        _table(scores),
        _figure(figures["predict"], "Predicted against actual value on the held-out "
                "networks, one panel per method; dotted: y = x.", "predicted vs actual"),
        "<h2>Label-free accuracy estimation under distribution shift</h2>",
    ]
    if estimates:
        parts += [
            "<p>Each network's accuracy on a shifted test set, estimated without its labels "
            "from its outputs on labeled validation data and unlabeled shifted data: AC "
            "(average confidence), DoC, CBPE (confidence calibrated by isotonic regression, "
            "as NannyML), ATC (arXiv 2201.04234) with and without temperature scaling, GDE "
            "(arXiv 2106.13799), ALine-S and ALine-D (arXiv 2206.13089). Mean "
            "absolute error, in accuracy points (<code>estimate_mae.csv</code>):</p>",
            _table((estimate_mae * 100).reset_index(), digits=2),
        ]
        from gensight.report.run import unique_file_stems

        stems = unique_file_stems(list(estimates))   # the CSV names build_report wrote
        for name in estimates:
            row = [_figure(figures[f"estimates-{name}"],
                           f"{name}: every estimator's estimate against the true accuracy "
                           f"(estimates-{stems[name]}.csv).", f"estimates on {name}")]
            if f"aline-{name}" in figures:
                row.append(_figure(figures[f"aline-{name}"],
                                   f"{name}: agreement (pairs of networks) and accuracy "
                                   "(networks), in- vs out-of-distribution on a probit scale.",
                                   f"agreement on the line, {name}"))
            parts += [f"<h3>{esc(name)}</h3>", '<div class="row">', *row, "</div>"]
    else:
        parts.append("<p>No shifted test sets with stored logits in this zoo.</p>")
    if notes:
        parts += ["<h2>Notes</h2>", '<ul class="notes">',
                  *[f"<li>{esc(n)}</li>" for n in notes], "</ul>"]
    parts += ["<h2>Reproduce</h2>",
              f"<p><code>{esc(command)}</code> rebuilds this page; the tables are next to it "
              "as CSV files.</p>", "</body></html>"]
    return "\n".join(parts)
