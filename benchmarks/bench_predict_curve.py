"""Kendall's tau of weight-based predictors against the number of training networks.

    python benchmarks/bench_predict_curve.py runs/mnist-cnn-grid [--sizes 96,192,384,768]
        [--methods statnn,nfn-hnp,nfn-np] [--draws 2] [--out curve.csv]

Methods are the ``gensight predict`` names (``nfn-hnp-paper``, ``nfn-np-paper`` and
``statnn-paper`` are the NFN paper's own recipe, App. D.1); on the NFN methods a ``+scale``
suffix adds our per-tensor standard-deviation scaling of the inputs, ``+position`` the
authors' per-entry standardization, ``+noscale`` removes either (e.g.
``nfn-hnp-paper+scale``), to measure which of the paper's choices matter. (Permutation
augmentation is left out: the NFNs are exactly invariant to the permutations it draws.)

The NFN paper (arXiv 2302.14040) reports NFN-HNP above StatNN on the Small CNN Zoo (tens of
thousands of networks); on our 1,024-network grid zoo StatNN is ahead. This asks whether
the curves cross as the training set grows: the test split is fixed (the held-out seed of
every configuration, as ``bench_predict.py``), and each method is fitted on seeded random
subsets of the training networks of each size (``--draws`` subsets per size below the full
set). Prints one row per (method, size): mean and spread of tau and granulated tau over
the draws, and the fit time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from gensight.predict import (
    NFNPredictor,
    StatNetPredictor,
    ZooSplit,
    evaluate_predictors,
    make_predictors,
    split_zoo,
)
from gensight.zoo import Zoo

SCALES = {"scale": True, "position": "position", "noscale": False}


def variants(methods: list[str], zoo, rows, epochs: int, seed: int) -> list:
    """``make_predictors`` by name (one shared pass for ``measure:`` methods), with the
    ``+scale`` / ``+position`` / ``+noscale`` suffixes applied."""
    bases = [m.split("+")[0] for m in methods]
    predictors = make_predictors(bases, zoo, rows, epochs=epochs, seed=seed)
    for method, predictor in zip(methods, predictors, strict=True):
        for flag in method.split("+")[1:]:
            if flag not in SCALES or not isinstance(predictor, NFNPredictor) \
                    or isinstance(predictor, StatNetPredictor):
                raise SystemExit(f"--methods: {method!r}: the suffixes +scale, +position and "
                                 f"+noscale apply to nfn-* methods only")
            predictor.scale = SCALES[flag]
        predictor.name = method
    return predictors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoo")
    parser.add_argument("--sizes", default="96,192,384,768")
    parser.add_argument("--methods", default="statnn,nfn-hnp,nfn-np")
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=60,
                        help="epochs of nfn-hnp/nfn-np (the -paper recipes train 50)")
    parser.add_argument("--seed", type=int, default=0,
                        help="added to the draw index to seed the predictors (the subsets "
                        "depend on the draw only)")
    parser.add_argument("--out", default="bench-predict-curve.csv",
                        help="CSV written into the zoo directory")
    args = parser.parse_args()
    zoo = Zoo.open(args.zoo)
    train, test = split_zoo(zoo)
    print(f"{zoo.manifest['name']}: {len(train)} train / {len(test)} test networks", flush=True)
    records = []
    for size in (int(s) for s in args.sizes.split(",")):
        if size > len(train):
            raise SystemExit(f"--sizes: {size} is more than the {len(train)} training networks")
        draws = 1 if size == len(train) else args.draws
        for draw in range(draws):
            rows = train.rows.sample(n=size, random_state=draw) if size < len(train) \
                else train.rows
            sub = ZooSplit(zoo, rows, train.target)
            predictors = variants(args.methods.split(","), zoo, pd.concat([rows, test.rows]),
                                  args.epochs, args.seed + draw)
            t = time.perf_counter()
            scores, _, _ = evaluate_predictors(sub, test, predictors)
            for _, s in scores.iterrows():
                records.append({"method": s["method"], "size": size, "draw": draw,
                                "seed": args.seed + draw,
                                "tau": s["tau"], "granulated_tau": s["granulated_tau"],
                                "seconds": s.get("seconds", np.nan)})
            print(f"size {size} draw {draw}: "
                  + ", ".join(f"{s['method']} {s['tau']:.3f}" for _, s in scores.iterrows())
                  + f" [{time.perf_counter() - t:.0f} s]", flush=True)
    table = pd.DataFrame(records)
    summary = table.groupby(["method", "size"]).agg(
        tau=("tau", "mean"), tau_spread=("tau", lambda v: v.max() - v.min()),
        granulated=("granulated_tau", "mean"), draws=("tau", "size"),
        seconds=("seconds", "mean")).reset_index()
    print(summary.round(3).to_string(index=False))
    summary.to_csv(Path(args.zoo) / args.out, index=False)


if __name__ == "__main__":
    main()
