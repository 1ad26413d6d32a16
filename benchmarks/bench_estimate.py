"""Label-free accuracy estimation on a zoo: MAE of every estimator per shift and severity.

    gensight zoo build benchmarks/specs/digits-mlp-shifts.toml --out runs/digits-mlp-shifts
    python benchmarks/bench_estimate.py runs/digits-mlp-shifts [--out runs/bench-estimate]

Source = the zoo's labeled validation split; target = each shifted test set (labels used only
to score; the truth is the accuracy of the stored float16 logits, the predictions the
estimators see, see :func:`gensight.estimate.zoo_estimates`). Methods: every one of
``gensight.estimate.METHODS`` (CBPE included); GDE averages each member's agreement over all
other seeds of its configuration; temperature scaling is fitted once per member and set, on
its logits. Prints the mean absolute error (in accuracy points x 100) per method and shift
(mean over severities), the mean over all sets, the agreement line's R^2 per shift, and
writes the full per-set table as CSV (with each set's median temperature).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from gensight.estimate import METHODS, zoo_estimates
from gensight.zoo import Zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoo")
    parser.add_argument("--out", default=None, help="directory for the CSV (default: ZOO)")
    args = parser.parse_args()
    zoo = Zoo.open(args.zoo)
    sets = sorted(c[len("shift:"):-len("_acc")] for c in zoo.table.columns
                  if c.startswith("shift:") and c.endswith("_acc"))
    rows = zoo.table.query("is_final and finite")
    print(f"zoo {zoo.manifest['name']}: {len(rows)} models, {len(sets)} shifted sets")
    records = []
    start = time.perf_counter()
    for name in sets:
        res = zoo_estimates(zoo, name, rows=rows)   # R^2 < 0.95 is a note, not a warning
        shift, severity = name.rsplit("-", 1)
        rec = {"shift": shift, "severity": int(severity), "r2": res.line.r2,
               "median_temperature": float(np.nanmedian(res.temperatures)),
               "mean_true_acc": res.table["true_acc"].mean(),
               "models_scored": int(res.table[list(METHODS)].notna().all(axis=1).sum())}
        rec.update({m: 100 * res.mae[m] for m in METHODS})
        records.append(rec)
    frame = pd.DataFrame(records)
    out = Path(args.out or args.zoo)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "bench-estimate.csv", index=False)
    per_shift = frame.groupby("shift")[["mean_true_acc", "r2", *METHODS]].mean()
    per_shift.loc["ALL"] = frame[["mean_true_acc", "r2", *METHODS]].mean()
    pd.set_option("display.width", 200)
    print(f"\nMAE x 100 per shift (mean over severities); {time.perf_counter() - start:.0f}s")
    print(per_shift.round(2).to_string())
    on_line = frame[frame.r2 >= 0.95]
    if len(on_line):
        print(f"\nsets where agreement is on the line (R^2 >= 0.95): {len(on_line)} of "
              f"{len(frame)}; MAE x 100 there:")
        print(on_line[list(METHODS)].mean().round(2).to_string())
    best = per_shift.loc["ALL", list(METHODS)].astype(float).idxmin()
    print(f"\nlowest mean MAE over all sets: {best}")


if __name__ == "__main__":
    main()
