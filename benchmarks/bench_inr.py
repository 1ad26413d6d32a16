r"""INR classification on a SIREN zoo: test accuracy of every method, next to the NFN paper's.

    gensight zoo build examples/digits-siren.toml --out /tmp/digits-siren-zoo   # ~15 s
    python benchmarks/bench_inr.py /tmp/digits-siren-zoo --seeds 2 --steps 1500 [--out DIR]

    # or let it build the zoo (reused when it is already there):
    python benchmarks/bench_inr.py --build examples/digits-siren.toml --zoo /tmp/digits-siren-zoo

    # MNIST-5k at 14x14 with 10 fits per image (50,000 SIRENs, 9 min to build):
    python benchmarks/bench_inr.py --build examples/mnist14-siren-aug.toml \
        --zoo runs/mnist14-siren-aug --methods nfn-np,nfn-hnp,statnn,mlp,mlp-aug --seeds 2 \
        --steps 10000

Runs :func:`gensight.inr.classify_zoo` (train split: every fit of every train image; best-val
checkpoint; test accuracy) for each method and seed and prints mean ± std over seeds, val and
train accuracy, seconds per seed and the invariance gap, with the NFN paper's MNIST numbers
beside them. Those are NOT comparable: the paper classifies SIRENs of 28x28 MNIST digits
(60k images, 512-channel NFNs, 200k steps); gensight's digits zoo holds SIRENs of the 1,797
8x8 scikit-learn digits (about 1,078 train images x 5 fits) and its NFNs are CPU-sized (32
channels, a few thousand steps). The reference numbers are marked unverified in
``research/03-inr-zoo-classification-editing.md`` §2.3.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from gensight.inr.classify import DEFAULTS, METHODS, check_methods, classify_zoo
from gensight.zoo import Zoo, ZooSpec, build_zoo

# NFN paper (Zhou et al. 2023, arXiv 2302.14040), INR classification table, MNIST SIRENs;
# [unverified] per the research note (03 §2.3).
REFERENCE = {"nfn-np": "≈92.9*", "nfn-hnp": "≈92.5*",
             # NFT paper (arXiv 2305.13546): Inr2Array(NFT) MNIST [unverified, note 01 §5]
             "inr2array": "≈98.5*"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoo", nargs="?", help="SIREN zoo directory")
    parser.add_argument("--build", metavar="SPEC", help="build (or resume) this SIREN zoo spec "
                        "into --zoo first")
    parser.add_argument("--zoo", dest="zoo_dir", help="where --build puts the zoo")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    parser.add_argument("--channels", default=",".join(map(str, DEFAULTS["channels"])))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: the models are small)")
    parser.add_argument("--out", help="directory for scores.csv and runs.csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    if args.build:
        if not args.zoo_dir:
            parser.error("--build needs --zoo DIR")
        start = time.perf_counter()
        build_zoo(ZooSpec.from_toml(args.build), args.zoo_dir)
        console.print(f"zoo built in {time.perf_counter() - start:.1f} s", markup=False)
    path = args.zoo_dir if args.build else args.zoo
    if not path:
        parser.error("give a ZOO directory, or --build SPEC --zoo DIR")
    zoo = Zoo.open(path)
    methods = check_methods(args.methods)
    channels = tuple(int(c) for c in args.channels.split(","))
    last = {}

    def progress(method: str, seed: int, step: int, steps: int) -> None:
        now = time.perf_counter()
        if now - last.get("t", 0.0) > 30 or step == steps:
            last["t"] = now
            console.print(f"  {method} seed {seed}: step {step}/{steps}", markup=False,
                          style="dim")

    start = time.perf_counter()
    result = classify_zoo(zoo, methods, seeds=args.seeds, steps=args.steps,
                          batch_size=args.batch_size, lr=args.lr, channels=channels,
                          progress=progress)
    total = time.perf_counter() - start
    sizes = result.sizes
    table = Table(title=f"INR classification, {zoo.manifest['name']}: test accuracy (%) on "
                  f"{sizes['test'][0]} test SIRENs of {sizes['test'][1]} images")
    for col in ("method", "test acc", "val acc", "train acc", "s/seed", "perm. gap",
                "paper*"):
        table.add_column(col, justify="left" if col in ("method",) else "right")
    for _, r in result.summary.iterrows():
        table.add_row(r["method"], f"{100 * r['test_acc_mean']:.1f} ± "
                      f"{100 * r['test_acc_std']:.1f}", f"{100 * r['val_acc']:.1f}",
                      f"{100 * r['train_acc']:.1f}", f"{r['seconds']:.0f}",
                      f"{r['invariance_gap']:.1e}", REFERENCE.get(r["method"], "—"))
    table.caption = (
        f"{args.seeds} seed(s), {args.steps} Adam steps (lr {args.lr:g}, batch "
        f"{args.batch_size}), best-val checkpoint, NFN channels {args.channels}, "
        f"{args.threads} thread(s); train {sizes['train'][0]} SIRENs ({sizes['train'][1]} "
        f"images), val {sizes['val'][0]} ({sizes['val'][1]}). *NFN paper, MNIST SIRENs "
        "(unverified, research note 03 §2.3). Ours: SIRENs of "
        f"{zoo.manifest['spec']['dataset']}, CPU widths and steps: not comparable. "
        f"Total {total:.0f} s.")
    console.print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        result.summary.to_csv(out / "scores.csv", index=False)
        result.runs.to_csv(out / "runs.csv", index=False)
        console.print(f"tables: {out}/scores.csv, {out}/runs.csv", markup=False)


if __name__ == "__main__":
    main()
