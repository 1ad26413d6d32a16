"""The merge report: merge N networks, compare with the baselines, measure the barrier, and
write the merged weights (safetensors), the tables (CSV) and one self-contained HTML page.

The accuracy table has one row per member's task and the columns ``member alone`` (member i
on task i), ``fleet-merge`` (aligned to the reference, then averaged), ``naive average``,
``ensemble`` (mean of the members' softmax outputs) and ``joint training`` (one network of
the same architecture trained with Adam on the pooled training data of all tasks). The
barrier table is the loss along the linear path between members 0 and 1, before and after
aligning member 1 to member 0 (Git Re-Basin, arXiv 2209.04836, Sec. 2).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from gensight import __version__
from gensight.errors import GensightError
from gensight.merge.align import align, check_models
from gensight.merge.fleet import (
    Task,
    alignment_inputs,
    compare_merges,
    pooled_task,
    train_members,
)
from gensight.merge.merge import average, linear_path, merge


@dataclass
class MergeReport:
    """What :func:`merge_report` computed (also written to ``out``)."""

    merged: nn.Module
    accuracy: pd.DataFrame
    barrier: pd.DataFrame
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def merge_report(models: Sequence[nn.Module], tasks: Sequence[Task], out: str | Path, *,
                 method: str = "weight", reference: int | str = 0,
                 weights: Sequence[float] | None = None, joint_steps: int = 300,
                 joint_lr: float = 3e-3, points: int = 11, seed: int = 0,
                 sources: Sequence[str] = (), title: str = "gensight merge") -> MergeReport:
    """Merge ``models`` (member i's task is ``tasks[i]``), compare and write the report.

    Writes ``out/merged.safetensors`` (the merged network's parameters by name),
    ``out/accuracy.csv``, ``out/barrier.csv``, ``out/barrier.png`` and ``out/index.html``;
    every file is written atomically. ``joint_steps=0`` leaves out joint training.
    Activation matching (``method="activation"``) uses :func:`alignment_inputs`: a seeded
    random subset of the pooled training inputs of all tasks.

    Raises:
        GensightError: fewer than 2 models (nothing to merge, no path between members 0
            and 1), and as :func:`~gensight.merge.merge`.
    """
    from safetensors.torch import save

    from gensight.zoo.store import atomic_write_bytes

    models = list(models)
    check_models(models)
    if len(models) < 2:
        raise GensightError(f"merge_report needs at least 2 networks to merge; got "
                            f"{len(models)}")
    pooled = pooled_task(tasks)
    x_align = alignment_inputs(pooled, seed=seed)
    result = merge(models, method=method, x=x_align, reference=reference, weights=weights,
                   seed=seed)
    naive = average(models, weights)
    joint = None
    notes = []
    if joint_steps > 0:
        torch.manual_seed(seed)
        fresh = _reinitialized(models[0])
        joint = train_members([fresh], [pooled], steps=joint_steps, lr=joint_lr,
                              seed=seed)[0]
        notes.append(f"joint training: one network of the members' architecture, fresh "
                     f"PyTorch init, {joint_steps} Adam steps (lr {joint_lr}, batch 32) on the "
                     "pooled training data of all tasks")
    accuracy = compare_merges(models, tasks, {"fleet-merge": result.model,
                                              "naive average": naive}, joint=joint)
    b_aligned = align(models[0], models[1], method=method, x=x_align, seed=seed)
    before = linear_path(models[0], models[1], pooled.x_test, pooled.y_test, points=points)
    after = linear_path(models[0], b_aligned, pooled.x_test, pooled.y_test, points=points)
    barrier = pd.concat([before.assign(path="before alignment"),
                         after.assign(path="after alignment")], ignore_index=True)
    barrier = barrier[["path", "alpha", "loss", "acc", "barrier"]]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"merged": out / "merged.safetensors", "accuracy": out / "accuracy.csv",
             "barrier": out / "barrier.csv", "figure": out / "barrier.png",
             "page": out / "index.html"}
    state = {k: v.detach().contiguous() for k, v in result.model.named_parameters()}
    atomic_write_bytes(files["merged"], save(state, metadata={
        "gensight": __version__, "method": method, "reference": str(reference),
        "members": str(len(models))}))
    atomic_write_bytes(files["accuracy"], accuracy.to_csv(index=False).encode())
    atomic_write_bytes(files["barrier"], barrier.to_csv(index=False).encode())
    png = _barrier_png(barrier)
    atomic_write_bytes(files["figure"], png)
    page = _page(title, accuracy, barrier, png, method, reference, sources, notes)
    atomic_write_bytes(files["page"], page.encode())
    return MergeReport(result.model, accuracy, barrier, files, notes)


def _reinitialized(model: nn.Module) -> nn.Module:
    import copy

    fresh = copy.deepcopy(model)
    for m in fresh.modules():
        if m is not fresh and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return fresh


def barrier_summary(barrier: pd.DataFrame) -> dict[str, float]:
    """``{path: max barrier}`` of a barrier table."""
    if barrier.empty:
        return {}
    return barrier.groupby("path", sort=False)["barrier"].max().to_dict()


def _barrier_png(barrier: pd.DataFrame) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=110)
    for name, part in barrier.groupby("path", sort=False):
        ax.plot(part["alpha"], part["loss"], marker="o", ms=3, label=name)
    ax.set_xlabel("alpha: (1 - alpha) member 0 + alpha member 1")
    ax.set_ylabel("test loss (pooled tasks)")
    ax.set_title("loss along the linear path")
    if not barrier.empty:
        ax.legend()
    fig.tight_layout()
    from gensight.report.html import png_bytes

    return png_bytes(fig)


def _page(title: str, accuracy: pd.DataFrame, barrier: pd.DataFrame, png: bytes, method: str,
          reference: int | str, sources: Sequence[str], notes: list[str]) -> str:
    esc = html.escape

    def table(frame: pd.DataFrame) -> str:
        return frame.to_html(index=False, border=0, float_format=lambda v: f"{v:.3f}")

    summary = pd.DataFrame([{"path": k, "barrier (max loss above the line)": v}
                            for k, v in barrier_summary(barrier).items()])
    img = base64.b64encode(png).decode("ascii")
    src = "".join(f"<li><code>{esc(s)}</code></li>" for s in sources)
    note = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
        "padding:0 1rem;color:#222} table{border-collapse:collapse;font-size:.9rem}"
        "td,th{padding:.25rem .7rem;border-bottom:1px solid #e4e4e4;text-align:right}"
        "td:first-child,th:first-child{text-align:left} th{background:#f4f6f8}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>gensight {esc(__version__)}; alignment by {esc(method)} matching to reference "
        f"{esc(str(reference))} (FLEET-MERGE, arXiv 2310.01362; Git Re-Basin, arXiv "
        "2209.04836).</p>",
        f"<h2>Sources</h2><ol start=\"0\">{src}</ol>" if sources else "",
        "<h2>Accuracy on each member's task</h2>",
        "<p>Test accuracy with the logits restricted to the task's classes; the last row is "
        "the mean over tasks.</p>", table(accuracy),
        "<h2>Loss barrier between members 0 and 1</h2>",
        table(summary) if not summary.empty else "<p>Needs two members.</p>",
        f'<figure><img src="data:image/png;base64,{img}" alt="loss along the linear path '
        'before and after alignment"></figure>',
        f"<h2>Notes</h2><ul>{note}</ul>" if notes else "",
        "</body></html>"])


__all__ = ["MergeReport", "barrier_summary", "merge_report"]
