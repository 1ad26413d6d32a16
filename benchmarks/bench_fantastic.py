"""Generalization measures in the regime of arXiv 1912.02178 ("Fantastic generalization
measures"): networks trained to a fixed training cross-entropy, hyperparameters on a full
grid, the generalization *gap* as the target.

    python benchmarks/bench_fantastic.py build   [--root runs/fantastic]   # the zoos
    python benchmarks/bench_fantastic.py measure [--root runs/fantastic]   # every measure
    python benchmarks/bench_fantastic.py predict [--root runs/fantastic]   # predictors
    python benchmarks/bench_fantastic.py score   [--root runs/fantastic]   # tau, Psi, CMI

The zoo: MNIST-5k MLPs, 7 hyperparameters with 2 values each on a full grid (the paper's
axes: depth, width, batch size, dropout, weight decay, learning rate, optimizer; the paper
has 3 values each on CIFAR-10 NiN CNNs), 2 seeds per configuration: 256 networks. Depth and
width change the weight space, so each (depth, width) is its own zoo in the store; the score
step joins them. Every member trains until its cross-entropy on its training set is <= 0.01
(the paper's stopping rule, ``stop_loss`` in the zoo spec) or for at most ``--cap`` epochs;
the rows say which members converged and after how many epochs.

``measure`` computes every measure of ``gensight.measures`` on each member (``--examples``
training examples each) and caches one Parquet table per zoo; ``score`` prints, for each
measure, Kendall's tau with the gap over all networks, the granulated tau Psi (arXiv
1912.02178, Eq. 4-5) and the conditional mutual information (PGDL's, the minimum over pairs
of hyperparameters), over the converged networks' complete grid cells, next to the paper's
numbers where we have them.

``predict`` scores the weight-based predictors on the same target: within each zoo, each is
fitted on the networks of one seed and predicts the gap of the other seed's (two folds,
so every network gets an out-of-fold prediction; ``--methods``), and ``score`` ranks those
predictions (``predict:NAME``) next to the measures.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import pandas as pd

DEPTHS = (1, 2)
WIDTHS = (64, 128)
HPARAMS = {
    "optimizer": ["sgd", "adam"],
    "lr": [0.003, 0.01],
    "batch_size": [32, 64],
    "dropout": [0.0, 0.2],
    "l2": [0.0, 1e-4],
}
AXES = ["depth", "width", *HPARAMS]


def spec_dict(depth: int, width: int, cap: int, seeds: int) -> dict:
    return {
        "name": f"fantastic-mnist5k-mlp-d{depth}-w{width}", "dataset": "mnist5k",
        "seed": 100 * depth + width, "mode": "grid", "seeds_per_config": seeds,
        "shard_size": 64, "checkpoints": [0, "final"], "stop_loss": 0.01,
        "architecture": {"family": "mlp", "hidden": [width] * depth},
        "hparams": {**HPARAMS, "epochs": [cap]},
    }


def zoo_dirs(root: Path) -> dict[tuple[int, int], Path]:
    return {(d, w): root / f"d{d}-w{w}" for d, w in itertools.product(DEPTHS, WIDTHS)}


def build(args) -> None:
    from gensight.zoo import ZooSpec, build_zoo

    for (d, w), path in zoo_dirs(args.root).items():
        t = time.perf_counter()
        zoo = build_zoo(ZooSpec.from_dict(spec_dict(d, w, args.cap, args.seeds)), path)
        final = zoo.table[zoo.table["is_final"]]
        print(f"depth {d} width {w}: {len(final)} networks, {final['converged'].mean():.0%} "
              f"converged (median {final['epochs_used'].median():.0f} epochs), test acc "
              f"{final['test_acc'].mean():.3f}, gap {final['gen_gap'].mean():.3f} "
              f"[{time.perf_counter() - t:.0f} s]", flush=True)


def measure(args) -> None:
    from gensight.measures import MEASURES, zoo_measures
    from gensight.zoo import Zoo

    names = args.measures.split(",") if args.measures else list(MEASURES)
    for (d, w), path in zoo_dirs(args.root).items():
        out = path / f"measures-{args.examples}.parquet"
        done = pd.read_parquet(out) if out.exists() else None
        todo = [n for n in names if done is None or n not in done.columns]
        if not todo:
            continue
        zoo = Zoo.open(path)
        t = time.perf_counter()
        table, notes = zoo_measures(zoo, todo, n_examples=args.examples)
        if done is not None:
            table = done.merge(table, on="member_id")
        table.to_parquet(out)
        print(f"depth {d} width {w}: {len(todo)} measures in {time.perf_counter() - t:.0f} s",
              flush=True)
        for name, why in notes.items():
            print(f"  {name}: n/a: {why}")


# No HNP models by default: on 784-input MLPs an HNP NF-Layer's parameters grow as
# (L + n_0 + n_L)^2 (arXiv 2302.14040, Table 1): 450 M for the paper's 16-16-5 stack here.
PREDICTORS = "statnn,statnn-paper,nfn-np,nfn-np-paper"


def predict(args) -> None:
    from gensight.predict import ZooSplit, make_predictors
    from gensight.zoo import Zoo

    methods = args.methods.split(",")
    for (d, w), path in zoo_dirs(args.root).items():
        zoo = Zoo.open(path)
        rows = zoo.table.query("is_final and finite")
        parts = []
        for fold in sorted(rows["seed_index"].unique()):
            train = ZooSplit(zoo, rows[rows["seed_index"] != fold], "gen_gap")
            test = ZooSplit(zoo, rows[rows["seed_index"] == fold], "gen_gap")
            for predictor in make_predictors(methods, zoo, rows, seed=0):
                t = time.perf_counter()
                predictor.fit(train)
                parts.append(pd.DataFrame({"member_id": test.rows["member_id"].to_numpy(),
                                           "method": f"predict:{predictor.name}",
                                           "value": predictor.predict(test)}))
                print(f"depth {d} width {w} fold {fold}: {predictor.name} "
                      f"[{time.perf_counter() - t:.0f} s]", flush=True)
        table = pd.concat(parts).pivot(index="member_id", columns="method", values="value")
        table.reset_index().to_parquet(path / "predictions.parquet")


def joined(root: Path, examples: int) -> pd.DataFrame:
    from gensight.zoo import Zoo

    parts = []
    for (d, w), path in zoo_dirs(root).items():
        zoo = Zoo.open(path)
        rows = zoo.table.query("is_final").assign(depth=d, width=w)
        m = path / f"measures-{examples}.parquet"
        if m.exists():
            rows = rows.merge(pd.read_parquet(m), on="member_id", how="left")
        if (path / "predictions.parquet").exists():
            rows = rows.merge(pd.read_parquet(path / "predictions.parquet"), on="member_id",
                              how="left")
        parts.append(rows)
    return pd.concat(parts, ignore_index=True)


def complete_cells(table: pd.DataFrame) -> pd.DataFrame:
    """The networks of configurations whose every seed converged (a complete grid needs
    every configuration: the caller checks)."""
    ok = table.groupby(AXES)["converged"].transform("all")
    return table[ok]


def score(args) -> None:
    from gensight.measures import MEASURES
    from gensight.metrics import (
        conditional_mutual_information,
        granulated_kendall_tau,
        kendall_tau,
    )

    table = joined(args.root, args.examples)
    final = table.copy()
    print(f"{len(final)} networks; converged {final['converged'].mean():.1%}; "
          f"test acc {final['test_acc'].mean():.3f} +- {final['test_acc'].std():.3f}; "
          f"gap {final['gen_gap'].mean():.3f} +- {final['gen_gap'].std():.3f}")
    if args.converged_only:
        final = complete_cells(final)
    # A magnitude-aware box |u_i| <= alpha |w_i| + eps always has the eps = 1e-3 floor: on
    # some wide networks even the floor alone breaks the accuracy criterion, so alpha' has no
    # solution (NaN, "no noise scale ..."). Such a network is as sharp as the search can see:
    # it is ranked as the sharpest (the column's maximum), so that the grid stays complete.
    for name in [c for c in final.columns if c.startswith("sharpness.")]:
        missing = final[name].isna()
        if missing.any():
            print(f"{name}: {int(missing.sum())} network(s) without alpha' ranked sharpest")
            final[name] = final[name].fillna(final[name].max())
    axes = [a for a in AXES if final[a].nunique() > 1]
    rows = []
    measures = [m for m in MEASURES if m in final.columns] + ["train_loss"] + \
        sorted(c for c in final.columns if c.startswith("predict:"))
    for name in measures:
        sub = final.dropna(subset=[name])
        row = {"measure": name, "n": len(sub)}
        try:
            row["tau"] = kendall_tau(sub[name], sub["gen_gap"])
        except ValueError:
            row["tau"] = np.nan
        try:
            g = granulated_kendall_tau(sub, name, "gen_gap", axes)
            row["Psi"] = g.psi
            row.update({f"psi:{h}": v for h, v in g.terms.items()})
        except ValueError:
            row["Psi"] = np.nan
        try:
            row["CMI"] = conditional_mutual_information(sub, name, "gen_gap", axes)
        except ValueError:
            row["CMI"] = np.nan
        rows.append(row)
    out = pd.DataFrame(rows).sort_values("CMI", ascending=False)
    pd.set_option("display.width", 250)
    print(out.round(3).to_string(index=False))
    out.to_csv(args.root / f"scores-{args.examples}.csv", index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["build", "measure", "predict", "score"])
    parser.add_argument("--root", type=Path, default=Path("runs/fantastic"))
    parser.add_argument("--cap", type=int, default=100, help="max epochs (default 100)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--measures", default=None, help="comma-separated (default: all)")
    parser.add_argument("--methods", default=PREDICTORS,
                        help=f"predictors of the predict step (default {PREDICTORS})")
    parser.add_argument("--converged-only", action="store_true",
                        help="score only configurations whose seeds all converged")
    args = parser.parse_args()
    {"build": build, "measure": measure, "predict": predict, "score": score}[args.step](args)


if __name__ == "__main__":
    main()
