"""Evaluate mask methods on held-out inits and write the tickets report.

For each round k (density) and each method, the masks of the held-out inits are trained with
the zoo's own recipe (the one IMP used, same data order per init) and their test accuracy is
recorded. Methods: ``imp`` (the stored IMP mask), ``random`` (the stored random mask with
IMP's per-layer counts), ``magnitude`` (largest ``|theta_0|`` per layer, same counts),
``snip`` (largest ``|theta_0 * dL/dtheta_0|`` on the training split, same counts),
``imp-oneshot`` (one IMP step straight to the round's counts: train the dense network once
with the zoo's recipe and data order, keep the largest trained weights; the NFN paper's
protocol) and any fitted :class:`~gensight.tickets.predictor.MaskPredictor`. Everything
that is trained is trained as one population (chunked), so all methods see exactly the same
training.
"""

from __future__ import annotations

import base64
import html
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from gensight import __version__
from gensight.errors import GensightError
from gensight.tickets.masks import connected_topk, layer_topk, magnitude_masks, snip_scores
from gensight.tickets.predictor import MaskPredictor
from gensight.tickets.store import TicketZoo

MaskFn = Callable[[list[Tensor], list[Tensor], list[int], int, list[int]], list[Tensor]]


def mask_methods(zoo: TicketZoo, predictors: Mapping[str, MaskPredictor],
                 init_ids: Sequence[int] | None = None,
                 baselines: Sequence[str] = ("imp", "imp-oneshot", "magnitude", "snip", "random"),
                 connected: bool = False) -> dict[str, MaskFn]:
    """``{name: fn(init_w, init_b, counts, round, init_ids) -> masks}`` for the baselines
    and the predictors; :func:`evaluate_methods` passes the ids of the inits it evaluates
    (``init_w``, ``init_b`` are theirs), and the stored masks (imp, random) are read for
    those ids. ``init_ids`` (optional): the only inits the baselines that depend on the
    ids (imp, random, snip, imp-oneshot) may be called with; a call with others raises
    :class:`GensightError` instead of pairing masks and inits that do not belong together
    (magnitude and the predictors read only the weights they are given). ``connected``:
    every predictor also as ``NAME+connected``, its logits decoded with
    :func:`~gensight.tickets.masks.connected_topk`."""
    allowed = None if init_ids is None else [int(i) for i in init_ids]

    def pinned(kind: str, inner: MaskFn) -> MaskFn:
        # baselines that depend on the init ids (stored masks, the zoo's seeds) refuse
        # other inits
        def fn(w, b, c, k, ids):
            ids = [int(i) for i in ids]
            if allowed is not None and ids != allowed:
                raise GensightError(f"mask method {kind!r} was made for inits "
                                    f"{allowed[:5]}... but called with {ids[:5]}...; "
                                    "pass the same init_ids to mask_methods and "
                                    "evaluate_methods")
            return inner(w, b, c, k, ids)
        return fn

    methods: dict[str, MaskFn] = {}
    for name in baselines:
        if name in ("imp", "random"):
            methods[name] = pinned(name, lambda w, b, c, k, ids, kind=name:
                                   zoo.masks(k, kind, ids))
        elif name == "magnitude":
            methods[name] = lambda w, b, c, k, ids: magnitude_masks(w, c)
        elif name == "snip":
            methods[name] = pinned(name, _snip(zoo))
        elif name == "imp-oneshot":
            methods[name] = pinned(name, _oneshot(zoo))
        else:
            raise GensightError(f"unknown baseline {name!r}; known: imp, imp-oneshot, "
                                "magnitude, random, snip")
    for name, pred in predictors.items():
        # both decodings of one predictor share its logits (computed once per inits, counts)
        logits = _cached_logits(pred)
        methods[name] = lambda w, b, c, k, ids, f=logits: layer_topk(f(w, b, c, ids), c)
        if connected:
            methods[f"{name}+connected"] = (lambda w, b, c, k, ids, f=logits:
                                            connected_topk(f(w, b, c, ids), c))
    return methods


def _cached_logits(pred: MaskPredictor) -> Callable[..., list[Tensor]]:
    """``fn(w, b, counts, ids)``: ``pred.decision_function(w, b, counts)``, kept for the last
    inits (ids and weights) and counts asked for; :meth:`MaskPredictor.predict` is the
    per-layer top-k (or :func:`~gensight.tickets.masks.connected_topk`) of these logits."""
    cache: dict = {}

    def fn(w, b, c, ids):
        key = (tuple(int(i) for i in ids), tuple(int(n) for n in c))
        if not _cache_hit(cache, key, w, b):
            cache.clear()
            cache.update(key=key, w=[x.clone() for x in w], b=[x.clone() for x in b],
                         logits=pred.decision_function(w, b, c))
        return cache["logits"]
    return fn


def _cache_hit(cache: dict, key: tuple, w: Sequence[Tensor], b: Sequence[Tensor]) -> bool:
    """Whether ``cache`` holds the results for exactly these init ids and weights."""
    return cache.get("key") == key and all(
        x.shape == y.shape and torch.equal(x, y)
        for x, y in zip([*cache["w"], *cache["b"]], [*w, *b], strict=True))


def _cached_topk(zoo: TicketZoo, scores_fn: Callable[..., list[Tensor]]) -> MaskFn:
    """Per-layer top-k of ``scores_fn(w, b, ids, dataset)``; the scores of the last inits
    asked for (ids and weights) are kept, since only the counts change from round to round."""
    cache: dict = {}

    def fn(w, b, c, k, ids):
        key = tuple(int(i) for i in ids)
        if not _cache_hit(cache, key, w, b):
            from gensight.data import load_dataset

            data = load_dataset(zoo.config.dataset)
            cache.clear()
            cache.update(key=key, w=[x.clone() for x in w], b=[x.clone() for x in b],
                         scores=scores_fn(w, b, list(key), data))
        return layer_topk(cache["scores"], c)
    return fn


def _snip(zoo: TicketZoo) -> MaskFn:
    """SNIP masks (:func:`~gensight.tickets.masks.snip_scores`) on the zoo's whole training
    split, with the zoo's activation."""
    return _cached_topk(zoo, lambda w, b, ids, data: snip_scores(
        w, b, data.x_train, data.y_train, zoo.config.activation))


def _oneshot(zoo: TicketZoo) -> MaskFn:
    """One-shot IMP masks (:func:`~gensight.tickets.train.oneshot_imp`): the largest
    trained weights of the dense networks, trained with the zoo's recipe and each init's own
    data order (the one its IMP masks were found with, whatever order the evaluation then
    trains with)."""
    from gensight.tickets.train import train_masked

    return _cached_topk(zoo, lambda w, b, ids, data: [x.abs() for x in train_masked(
        w, b, None, zoo.seeds(ids), data, zoo.config.train, zoo.config.activation).weights])


def oneshot_masks(zoo: TicketZoo, init_ids: Sequence[int],
                  rounds: Sequence[int]) -> dict[int, list[Tensor]]:
    """``{round: masks}``: one-shot IMP masks of ``init_ids`` at the per-layer counts of each
    round, with the zoo's recipe and data orders (targets for a
    :class:`~gensight.tickets.predictor.MaskPredictor` that follows the paper's protocol)."""
    from gensight.data import load_dataset
    from gensight.tickets.train import oneshot_imp, train_masked

    data = load_dataset(zoo.config.dataset)
    w, b = zoo.inits(init_ids)
    masks = oneshot_imp(w, b, zoo.seeds(init_ids), [zoo.counts[k] for k in rounds],
                        lambda w_, b_, m_, s_: train_masked(w_, b_, m_, s_, data,
                                                            zoo.config.train,
                                                            zoo.config.activation))
    return dict(zip(rounds, masks, strict=True))


def evaluate_methods(zoo: TicketZoo, methods: Mapping[str, MaskFn], init_ids: Sequence[int],
                     rounds: Sequence[int], *, chunk: int = 1024,
                     progress: Callable[[int, int], None] | None = None,
                     seed_offset: int = 0) -> pd.DataFrame:
    """Train every method's masks of ``init_ids`` at every round in ``rounds``; one row per
    method, round and init: ``method, round, density, init_id, test_acc, val_acc, iou``
    (``iou``: intersection over union of the method's mask with IMP's, all layers).

    ``seed_offset``: train with the data order of seed ``init seed + seed_offset`` instead of
    IMP's own (offset 0). An offset that moves every seed off the zoo's seeds (with the
    zoo's consecutive seeds: at least its number of inits) gives data orders that no stored
    mask was found with, so IMP's masks get no advantage from having been pruned under the
    same order."""
    from gensight.data import load_dataset
    from gensight.tickets.train import train_masked

    if isinstance(seed_offset, bool) or not isinstance(seed_offset, numbers.Integral) or \
            seed_offset < 0:
        raise GensightError(f"seed_offset must be a non-negative integer; got {seed_offset!r}")
    dataset = load_dataset(zoo.config.dataset)
    init_w, init_b = zoo.inits(init_ids)
    seeds = [s + int(seed_offset) for s in zoo.seeds(init_ids)]
    sizes = [w.shape[1] * w.shape[2] for w in init_w]
    jobs = []  # (method, round, masks)
    for k in rounds:
        counts = zoo.counts[k]
        imp = zoo.masks(k, "imp", init_ids)
        for name, fn in methods.items():
            masks = fn(init_w, init_b, list(counts), k, [int(i) for i in init_ids])
            inter = sum((a & b).flatten(1).sum(1) for a, b in zip(masks, imp, strict=True))
            union = sum((a | b).flatten(1).sum(1) for a, b in zip(masks, imp, strict=True))
            jobs.append((name, k, masks, (inter / union).tolist()))
    m = len(init_ids)
    per_chunk = max(1, chunk // m)
    rows = []
    for start in range(0, len(jobs), per_chunk):
        part = jobs[start:start + per_chunk]
        rep = len(part)
        masks = [torch.cat([j[2][i] for j in part]) for i in range(len(init_w))]
        run = train_masked([w.repeat(rep, 1, 1) for w in init_w],
                           [b.repeat(rep, 1) for b in init_b], masks, seeds * rep, dataset,
                           zoo.config.train, zoo.config.activation)
        for j, (name, k, _, iou) in enumerate(part):
            density = sum(zoo.counts[k]) / sum(sizes)
            for t, i in enumerate(init_ids):
                rows.append({"method": name, "round": k, "density": density, "init_id": i,
                             "test_acc": float(run.test_acc[j * m + t]),
                             "val_acc": float(run.val_acc[j * m + t]), "iou": iou[t]})
        if progress is not None:
            progress(min(start + per_chunk, len(jobs)), len(jobs))
    return pd.DataFrame(rows)


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of test accuracy (and mean IoU with IMP) per method and round."""
    g = results.groupby(["round", "method"], sort=False)
    out = g.agg(density=("density", "first"), test_acc_mean=("test_acc", "mean"),
                test_acc_std=("test_acc", "std"), iou_mean=("iou", "mean"),
                inits=("init_id", "count")).reset_index()
    return out.sort_values(["round", "test_acc_mean"], ascending=[True, False],
                           ignore_index=True)


@dataclass
class TicketsReport:
    results: pd.DataFrame
    summary: pd.DataFrame
    files: dict[str, Path] = field(default_factory=dict)


def write_report(results: pd.DataFrame, out: str | Path, *, cost: pd.DataFrame | None = None,
                 notes: Sequence[str] = (), title: str = "gensight tickets") -> TicketsReport:
    """Write ``results.csv``, ``summary.csv``, (``cost.csv``), ``accuracy.png`` and a
    self-contained ``index.html`` (accuracy vs density per method, mean +- std) to ``out``,
    each atomically."""
    from gensight.zoo.store import atomic_write_bytes

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    files = {"results": out / "results.csv", "summary": out / "summary.csv",
             "figure": out / "accuracy.png", "page": out / "index.html"}
    atomic_write_bytes(files["results"], results.to_csv(index=False).encode())
    atomic_write_bytes(files["summary"], summary.to_csv(index=False).encode())
    if cost is not None:
        files["cost"] = out / "cost.csv"
        atomic_write_bytes(files["cost"], cost.to_csv(index=False).encode())
    png = _figure(summary)
    atomic_write_bytes(files["figure"], png)
    atomic_write_bytes(files["page"], _page(title, summary, cost, png, notes).encode())
    return TicketsReport(results, summary, files)


def _figure(summary: pd.DataFrame) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for name, part in summary.groupby("method", sort=False):
        part = part.sort_values("density")
        ax.errorbar(part["density"] * 100, part["test_acc_mean"], yerr=part["test_acc_std"],
                    marker="o", ms=4, capsize=3, label=name)
    ax.set_xscale("log")
    ticks = sorted(set((summary["density"] * 100).round(1)))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.set_xlabel("weights kept (%)")
    ax.set_ylabel("test accuracy after training")
    ax.set_title("sparse networks trained from their initialization")
    ax.legend(fontsize=8)
    fig.tight_layout()
    from gensight.report.html import png_bytes

    return png_bytes(fig)


def _page(title: str, summary: pd.DataFrame, cost: pd.DataFrame | None, png: bytes,
          notes: Sequence[str]) -> str:
    esc = html.escape
    wide = summary.assign(cell=[f"{m:.3f} ± {s:.3f}" for m, s in zip(
        summary["test_acc_mean"], summary["test_acc_std"].fillna(0.0), strict=True)])
    wide = wide.assign(density=(wide["density"] * 100).round(1)).pivot_table(
        index=["round", "density"], columns="method", values="cell", aggfunc="first",
        sort=False).reset_index()
    wide.columns = [str(c) if c != "density" else "weights kept (%)" for c in wide.columns]
    img = base64.b64encode(png).decode("ascii")
    note = "".join(f"<li>{esc(n)}</li>" for n in notes)

    def table(frame: pd.DataFrame) -> str:
        return frame.to_html(index=False, border=0, float_format=lambda v: f"{v:.4g}")

    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:64rem;margin:2rem auto;"
        "padding:0 1rem;color:#222} table{border-collapse:collapse;font-size:.9rem}"
        "td,th{padding:.25rem .7rem;border-bottom:1px solid #e4e4e4;text-align:right}"
        "th{background:#f4f6f8} img{max-width:100%}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>gensight {esc(__version__)}. Winning-ticket masks from the initialization "
        "(NFN paper, arXiv 2302.14040; IMP with rewinding, Frankle &amp; Carbin, arXiv "
        "1803.03635). Test accuracy after training the masked initialization, mean ± std "
        "over held-out inits; every method keeps the same number of weights per layer.</p>",
        f'<figure><img src="data:image/png;base64,{img}" alt="test accuracy versus weights '
        'kept, per mask method"></figure>',
        "<h2>Test accuracy</h2>", table(wide),
        "<h2>Per method and round</h2>", table(summary),
        "<h2>Cost</h2>" + table(cost) if cost is not None else "",
        f"<h2>Notes</h2><ul>{note}</ul>" if notes else "",
        "</body></html>"])


__all__ = ["TicketsReport", "evaluate_methods", "mask_methods", "summarize", "write_report"]
