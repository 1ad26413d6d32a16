"""Predicting generalization on a zoo: every method side by side on one seeded split.

    gensight zoo build benchmarks/specs/mnist-cnn-grid.toml --out runs/mnist-cnn-grid
    python benchmarks/bench_predict.py runs/mnist-cnn-grid [--methods ...] [--examples 500]

Holds out the last seed of every configuration (a complete grid, so granulated tau and CMI
are defined), fits each method on the rest, and prints the score table (Kendall's tau,
granulated tau, CMI, R^2, MAE, seconds). Expectations from the papers: NFN-HNP ranks better
than StatNN (tau 0.934 vs 0.915 on Small CNN Zoo CIFAR-10-GS, arXiv 2302.14040); among
measures the magnitude-aware sharpness/PAC-Bayes ones are best and spectral-norm products
poor (arXiv 1912.02178).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from gensight.predict import ZooSplit, evaluate_predictors, make_predictors, split_zoo
from gensight.zoo import Zoo

DEFAULT = ("statnn,statnn-mlp,nfn-hnp,nfn-np,margin-signature,measure:params,"
           "measure:log.prod.of.spec,measure:log.sum.of.fro,measure:param.norm,"
           "measure:fro.dist,measure:path.norm,measure:alpha,"
           "measure:pacbayes.flatness,measure:pacbayes.mag.flatness,"
           "measure:sharpness.mag.flatness")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoo")
    parser.add_argument("--methods", default=DEFAULT)
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--out", default=None)
    parser.add_argument("--train-seeds", default=None,
                        help="fit on these seed indices of the training split only (e.g. 0, "
                        "for the costly sharpness searches); the test split is unchanged")
    args = parser.parse_args()
    zoo = Zoo.open(args.zoo)
    train, test = split_zoo(zoo)
    if args.train_seeds is not None:
        seeds = [int(s) for s in args.train_seeds.split(",")]
        train = ZooSplit(zoo, train.rows[train.rows["seed_index"].isin(seeds)], train.target)
    print(f"{zoo.manifest['name']}: {len(train)} train / {len(test)} test networks")
    predictors = make_predictors(args.methods.split(","), zoo,
                                 pd.concat([train.rows, test.rows]), epochs=args.epochs,
                                 n_examples=args.examples)
    scores, _, notes = evaluate_predictors(train, test, predictors,
                                           progress=lambda n: print(f"  {n} ...", flush=True))
    pd.set_option("display.width", 200)
    print(scores.round(3).to_string(index=False))
    for note in dict.fromkeys(notes):
        print("note:", note)
    out = Path(args.out or args.zoo)
    scores.to_csv(out / f"bench-predict{'-seeds' + args.train_seeds if args.train_seeds else ''}"
                        ".csv", index=False)


if __name__ == "__main__":
    main()
