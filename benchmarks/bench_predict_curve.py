"""Kendall's tau of weight-based predictors against the number of training networks.

    python benchmarks/bench_predict_curve.py runs/mnist-cnn-grid [--sizes 96,192,384,768]
        [--methods statnn,nfn-hnp,nfn-np] [--draws 2]

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

from gensight.predict import ZooSplit, evaluate_predictors, make_predictors, split_zoo
from gensight.zoo import Zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoo")
    parser.add_argument("--sizes", default="96,192,384,768")
    parser.add_argument("--methods", default="statnn,nfn-hnp,nfn-np")
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=60)
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
            predictors = make_predictors(args.methods.split(","), zoo,
                                         pd.concat([rows, test.rows]), epochs=args.epochs,
                                         seed=draw)
            t = time.perf_counter()
            scores, _, _ = evaluate_predictors(sub, test, predictors)
            for _, s in scores.iterrows():
                records.append({"method": s["method"], "size": size, "draw": draw,
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
    summary.to_csv(Path(args.zoo) / "bench-predict-curve.csv", index=False)


if __name__ == "__main__":
    main()
