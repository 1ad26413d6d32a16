"""Winning-ticket masks from the initialization (NFN paper, arXiv 2302.14040), CPU-scaled.

    python benchmarks/bench_tickets.py [--zoo runs/tickets-bench] [--epochs 30] [--quick]
        [--connected] [--fresh-order]

(``--quick`` defaults to ``runs/tickets-bench-quick``, a zoo of its own.)

1. A tickets zoo (``examples/tickets/digits.toml``): 640 digits MLPs 64-32-10, IMP with
   rewinding for 15 rounds (20% of the remaining weights per layer and round, output layer
   10%), Adam 3e-3, batch 64, 15 epochs per round, data order tied to the init seed. Built
   (or resumed) in ``--zoo``; its build time is the population cost of IMP.
2. Mask predictors fitted on the IMP masks of the first 512 inits at rounds 3, 8, 11, 15:
   NFN-HNP and NFN-NP (class-balanced BCE), NFN-HNP with BCE + the unrolled straight-through
   objective, and the MLP baseline (BCE, hidden-permutation augmentation); on request
   (``--predictors``) the paper's own conditional VAE of NF-Layers (``nfn-np+cvae``,
   ``nfn-hnp+cvae``).
3. The last 128 inits are held out: their masks from IMP, each predictor, magnitude at init,
   SNIP (``|theta_0 * dL/dtheta_0|`` on the training split) and random (same per-layer counts
   as IMP) are trained with the IMP recipe; test accuracy mean +- std per method at 54%,
   20%, 12% and 5.9% of the weights kept.
4. Cost: one IMP run for one init alone (16 trainings of one network) against one NFN mask
   for one init (a forward pass and the top-k), both on one thread.

5. ``--fresh-order``: is IMP's edge that its masks were found with the same data order the
   evaluation trains with? IMP is run again on the held-out inits with other data orders
   (seed + 500,000), and every method, this second IMP included, is trained once more with
   data orders that no mask saw (seed + 900,000).
6. ``imp-oneshot`` is the NFN paper's IMP (App. D.2: one IMP step to the target sparsity):
   the dense network trained once, its largest trained weights kept at each round's counts.
   ``--target imp-oneshot`` fits the predictors on those masks instead of the iterative ones.

Everything runs on one thread. Writes the report (index.html, summary.csv, results.csv) to
``--out`` and the numbers to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from gensight.data import load_dataset
from gensight.tickets.config import TicketsConfig
from gensight.tickets.predictor import MaskPredictor
from gensight.tickets.report import (
    evaluate_methods,
    mask_methods,
    oneshot_masks,
    summarize,
    write_report,
)
from gensight.tickets.store import build_tickets
from gensight.tickets.train import init_weights, layer_sizes, run_imp, train_masked

ROOT = Path(__file__).resolve().parent.parent
PREDICTORS = {"nfn-hnp": dict(kind="hnp"), "nfn-np": dict(kind="np"),
              "mlp": dict(kind="mlp"),
              "nfn-hnp+unroll": dict(kind="hnp", objective="bce+unroll"),
              "nfn-np+cvae": dict(kind="np", objective="cvae"),
              "nfn-hnp+cvae": dict(kind="hnp", objective="cvae")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default=None, help="tickets zoo directory (default "
                    "runs/tickets-bench, or runs/tickets-bench-quick with --quick)")
    ap.add_argument("--config", default=str(ROOT / "examples" / "tickets" / "digits.toml"))
    ap.add_argument("--test-inits", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=30, help="predictor epochs")
    ap.add_argument("--rounds", default="3,8,11,15")
    ap.add_argument("--train-rounds", default=None,
                    help="IMP rounds the predictors learn from: comma-separated, or 'all' "
                    "(default: the evaluated rounds)")
    ap.add_argument("--target", choices=("imp", "imp-oneshot"), default="imp",
                    help="what the predictors learn: the stored (iterative) IMP masks, or "
                    "one-shot IMP masks at the same counts (the NFN paper's protocol)")
    ap.add_argument("--predictors", default="nfn-hnp,nfn-np,mlp,nfn-hnp+unroll",
                    help=f"comma-separated, among {', '.join(PREDICTORS)}")
    ap.add_argument("--no-unroll", action="store_true", help="skip NFN-HNP (BCE + unroll)")
    ap.add_argument("--quick", action="store_true", help="128 inits, 32 held out, 5 epochs")
    ap.add_argument("--out", default=None, help="report directory (default "
                    "runs/tickets-bench-report, or runs/tickets-bench-quick-report)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--fresh-order", action="store_true",
                    help="also rerun IMP on the held-out inits with other data orders, and "
                    "train every method's masks with data orders no mask was found with")
    ap.add_argument("--connected", action="store_true",
                    help="also decode every predictor's logits avoiding dead ends "
                    "(METHOD+connected, gensight.tickets.connected_topk)")
    a = ap.parse_args()
    names = [n for n in a.predictors.split(",") if n]
    if not names or any(n not in PREDICTORS for n in names):
        raise SystemExit(f"--predictors must be among {', '.join(PREDICTORS)}; got "
                         f"{a.predictors!r}")
    names = [n for n in names if not (a.no_unroll and n == "nfn-hnp+unroll")]
    if not names:
        raise SystemExit("no predictor left to fit after --no-unroll")
    # --quick builds a smaller config, which the full run's zoo would refuse (another config)
    suffix = "-quick" if a.quick else ""
    if a.zoo is None:
        a.zoo = str(ROOT / "runs" / f"tickets-bench{suffix}")
    if a.out is None:
        a.out = str(ROOT / "runs" / f"tickets-bench{suffix}-report")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = TicketsConfig.from_toml(a.config)
    if a.quick:
        config = TicketsConfig.from_dict({**config.to_dict(), "inits": 128, "shard_size": 64})
        a.test_inits, a.epochs = 32, 5
    rounds = [int(k) for k in a.rounds.split(",")]

    t0 = time.perf_counter()
    zoo = build_tickets(config, a.zoo)
    build_s = time.perf_counter() - t0
    ids = zoo.init_ids
    train_ids, test_ids = ids[:-a.test_inits], ids[-a.test_inits:]
    print(f"zoo {a.zoo}: {len(ids)} inits ({build_s:.1f}s to build or open); fit on "
          f"{len(train_ids)}, test on {len(test_ids)}", flush=True)

    dataset = load_dataset(config.dataset)
    w, b = zoo.inits(train_ids)
    if a.train_rounds == "all":
        fit_rounds = list(range(1, config.rounds + 1))
    elif a.train_rounds:
        fit_rounds = [int(k) for k in a.train_rounds.split(",")]
    else:
        fit_rounds = rounds
    if a.target == "imp":
        masks = {k: zoo.masks(k, "imp", train_ids) for k in fit_rounds}
    else:
        t = time.perf_counter()
        masks = oneshot_masks(zoo, train_ids, fit_rounds)
        print(f"one-shot IMP targets for {len(train_ids)} inits: "
              f"{time.perf_counter() - t:.1f}s", flush=True)
    specs = {n: PREDICTORS[n] for n in names}
    predictors, fit_s = {}, {}
    for name, kw in specs.items():
        t = time.perf_counter()
        est = MaskPredictor(epochs=a.epochs, **kw).fit(zoo.space, w, b, masks, zoo.counts,
                                                       dataset=dataset,
                                                       activation=config.activation)
        fit_s[name] = time.perf_counter() - t
        predictors[name] = est
        print(f"fit {name}: {fit_s[name]:.1f}s, loss {est.history_[0]:.3f} -> "
              f"{est.history_[-1]:.3f}", flush=True)

    t = time.perf_counter()
    methods = mask_methods(zoo, predictors, test_ids, connected=a.connected)
    results = evaluate_methods(zoo, methods, test_ids, rounds)
    eval_s = time.perf_counter() - t
    summary = summarize(results)

    # cost of one mask for one init: IMP alone vs one NFN forward pass
    widths = layer_sizes(dataset, config.hidden)
    w1, b1 = init_weights([10**6], widths)
    t = time.perf_counter()
    run = train_masked(w1, b1, None, [10**6], dataset, config.train, config.activation)
    from gensight.tickets.masks import magnitude_masks, magnitude_prune

    alive = [torch.ones_like(x, dtype=torch.bool) for x in w1]
    for k in range(1, config.rounds + 1):
        alive = magnitude_prune(run.weights, alive, zoo.counts[k])
        run = train_masked(w1, b1, alive, [10**6], dataset, config.train, config.activation)
    imp_one_s = time.perf_counter() - t
    # one one-step IMP mask (the paper's IMP): one dense training and the top-k, median of 3
    times = []
    for _ in range(3):
        t = time.perf_counter()
        dense = train_masked(w1, b1, None, [10**6], dataset, config.train, config.activation)
        magnitude_masks(dense.weights, zoo.counts[rounds[-1]])
        times.append(time.perf_counter() - t)
    oneshot_one_s = sorted(times)[1]
    nfn_name = next((n for n in predictors if n.startswith("nfn")), names[0])
    nfn = predictors[nfn_name]
    nfn.predict(w1, b1, zoo.counts[rounds[-1]])
    reps = 20
    t = time.perf_counter()
    for _ in range(reps):
        nfn.predict(w1, b1, zoo.counts[rounds[-1]])
    nfn_one_s = (time.perf_counter() - t) / reps
    cost = pd.DataFrame([
        {"what": f"one IMP run, one init alone ({config.rounds + 1} trainings)",
         "seconds": imp_one_s},
        {"what": "one one-step IMP mask, one init alone (1 dense training + top-k)",
         "seconds": oneshot_one_s},
        {"what": f"one {nfn_name} mask, one init (forward + top-k)", "seconds": nfn_one_s},
        {"what": f"tickets zoo build ({len(ids)} inits, population; ~0 if already built)",
         "seconds": build_s},
        *({"what": f"fit {n} ({a.epochs} epochs, {len(train_ids)} inits)", "seconds": s}
          for n, s in fit_s.items()),
        {"what": "evaluation (all methods, rounds, held-out inits)", "seconds": eval_s},
    ])
    notes = [f"config {a.config}; predictors fitted on inits {train_ids[0]}..{train_ids[-1]}"
             f", IMP rounds {fit_rounds}",
             f"one IMP run / one {nfn_name} mask = {imp_one_s / nfn_one_s:,.0f}x",
             f"one one-step IMP mask / one {nfn_name} mask = {oneshot_one_s / nfn_one_s:,.0f}x"]
    write_report(results, a.out, cost=cost, notes=notes,
                 title="gensight tickets benchmark (digits MLP 64-32-10)")

    table = summary.assign(cell=[f"{m * 100:.1f} ± {s * 100:.1f}" for m, s in zip(
        summary["test_acc_mean"], summary["test_acc_std"], strict=True)])
    wide = table.pivot_table(index=["round", "density"], columns="method", values="cell",
                             aggfunc="first").reset_index()
    wide["density"] = (wide["density"] * 100).round(1)
    order = ["round", "density", "imp", "imp-oneshot", "nfn-hnp", "nfn-hnp+unroll", "nfn-hnp+cvae",
             "nfn-np", "nfn-np+cvae", "mlp", "magnitude", "snip", "random"]
    order = [c for o in order for c in (o, f"{o}+connected")]
    wide = wide[[c for c in order if c in wide.columns]]
    print("\ntest accuracy (%) after training, mean ± std over held-out inits")
    print(wide.to_string(index=False))
    iou = summary.pivot_table(index="round", columns="method", values="iou_mean")
    t = zoo.table
    dense = t[(t.kind == "imp") & (t["round"] == 0) & t.init_id.isin(test_ids)]["test_acc"]
    print(f"dense (100% kept): {dense.mean() * 100:.1f} ± {dense.std() * 100:.1f}")
    print("\nmean IoU with the IMP mask")
    print(iou.round(3).to_string())
    print("\nmean IoU with the one-shot IMP mask")
    iou_oneshot = oneshot_iou(methods, zoo, test_ids, rounds)
    print(iou_oneshot.round(3).to_string())
    print("\ncost")
    print(cost.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if a.fresh_order:
        fresh_order(zoo, mask_methods(zoo, predictors, test_ids, connected=a.connected),
                    test_ids, rounds, dataset, config)
    if a.json:
        Path(a.json).write_text(json.dumps({
            "summary": summary.to_dict(orient="records"),
            "iou_with_oneshot": {str(k): row.to_dict() for k, row in iou_oneshot.iterrows()},
            "cost": cost.to_dict(orient="records")}, indent=1))


def oneshot_iou(methods, zoo, test_ids, rounds) -> pd.DataFrame:
    """Mean IoU of every method's masks with the one-shot IMP masks, per round."""
    w, b = zoo.inits(test_ids)
    ids = [int(i) for i in test_ids]
    rows = []
    for k in rounds:
        c = list(zoo.counts[k])
        ref = methods["imp-oneshot"](w, b, c, k, ids)
        for name, fn in methods.items():
            got = fn(w, b, c, k, ids)
            inter = sum((x & y).flatten(1).sum(1) for x, y in zip(got, ref, strict=True))
            union = sum((x | y).flatten(1).sum(1) for x, y in zip(got, ref, strict=True))
            rows.append({"round": k, "method": name,
                         "iou": float((inter / union).mean())})
    return pd.DataFrame(rows).pivot_table(index="round", columns="method", values="iou")


OTHER_IMP_OFFSET, FRESH_OFFSET = 500_000, 900_000


def fresh_order(zoo, methods, test_ids, rounds, dataset, config) -> None:
    """IMP rerun with other data orders on ``test_ids``, its agreement with the stored IMP
    masks, and every method trained with data orders that no mask was found with."""
    w, b = zoo.inits(test_ids)
    seeds = [s + OTHER_IMP_OFFSET for s in zoo.seeds(test_ids)]
    t = time.perf_counter()
    other = run_imp(w, b, seeds, zoo.counts, lambda w_, b_, m_, s_: train_masked(
        w_, b_, m_, s_, dataset, config.train, config.activation))
    print(f"\nIMP on the {len(test_ids)} held-out inits with other data orders (seed + "
          f"{OTHER_IMP_OFFSET:,}): {time.perf_counter() - t:.0f} s")

    def other_imp(w_, b_, c, k, ids):
        assert list(ids) == [int(i) for i in test_ids], "IMP rerun for other inits"
        return other.masks[k - 1]
    methods = {**methods, "imp, other order": other_imp}
    t = time.perf_counter()
    same = evaluate_methods(zoo, {"imp, other order": methods["imp, other order"]}, test_ids,
                            rounds)
    fresh = evaluate_methods(zoo, methods, test_ids, rounds, seed_offset=FRESH_OFFSET)
    print(f"trained in {time.perf_counter() - t:.0f} s")
    for label, res in (("trained with IMP's own data orders", same),
                       (f"trained with fresh data orders (seed + {FRESH_OFFSET:,})", fresh)):
        summ = summarize(res)
        cells = summ.assign(cell=[f"{m * 100:.1f} ± {s * 100:.1f}" for m, s in zip(
            summ["test_acc_mean"], summ["test_acc_std"], strict=True)])
        print(f"\ntest accuracy (%), {label}")
        print(cells.pivot_table(index="round", columns="method", values="cell",
                                aggfunc="first").to_string())
    print("\nmean IoU with the stored IMP mask")
    print(summarize(fresh).pivot_table(index="round", columns="method",
                                       values="iou_mean").round(3).to_string())


if __name__ == "__main__":
    main()
