"""Benchmark: NFN / UNF learned optimizers vs per-parameter MLP and Deep Sets learned
optimizers at the same meta-training budget, against Adam and SGD+momentum tuned on a
learning-rate grid (issue #19; UNF paper arXiv 2402.05232, Sec. 4).

Every learned optimizer is meta-trained on ``digits-mlp`` (MLP 64-32-10 on digits; or
``--train-task``, e.g. the byte-level RNN LM ``python-rnn``, where NFN does not apply) with the
same estimator, meta-steps, truncation, horizon and population, then evaluated on held-out
seeds of the training task and on transfer tasks (``digits-mlp-wide``: hidden width 64;
``mnist8-mlp``: the same MLP on MNIST-5k resized to 8x8; ``mnist5k-mlp``: MNIST-5k at 28x28,
784 inputs). Reported per optimizer: final training-split loss after
``--eval-steps`` inner steps and test accuracy (mean +- std over held-out seeds). One torch
thread. Checkpoints are kept in ``--out`` so an interrupted run resumes.

Meta-training with one seed is noisy: two runs of the same optimizer can differ by more than
two architectures do. ``--meta-seeds 0,1,2`` meta-trains every optimizer once per seed (same
budget each) and adds a table of the mean over meta-seeds of each run's held-out mean, so
rankings are read across meta-training runs, not from one. Besides the training-split loss
after the last step, every optimizer's whole curve is summarized, as the UNF paper compares
curves (Fig. 2): the minibatch loss averaged over all steps and over the last tenth.

    python benchmarks/bench_lopt.py                      # 300 meta-steps per optimizer
    python benchmarks/bench_lopt.py --meta-steps 30 --seeds 2 --quick   # smoke run
    python benchmarks/bench_lopt.py --train-task python-rnn --tasks python-rnn \
        --kinds mlp,deepsets,unf --meta-steps 150 --hidden 16 --out runs/bench_lopt_rnn
    python benchmarks/bench_lopt.py --estimator pes --kinds unf --out runs/bench_lopt_pes
    python benchmarks/bench_lopt.py --meta-steps 1000 --meta-seeds 0,1,2 --layers 4 \
        --backbone deepsets --kinds mlp,deepsets,nfn,unf --objective log \
        --out runs/bench_lopt_paper
    python benchmarks/bench_lopt.py --meta-steps 1000 --meta-seeds 0,1,2 --layers 4 \
        --backbone deepsets --kinds mlp,deepsets,nfn,unf --features paper \
        --out runs/bench_lopt_paper          # the paper's f and 19 input channels
    python benchmarks/bench_lopt.py --meta-steps 1000 --meta-seeds 0,1,2 \
        --kinds mlp,deepsets,nfn,unf
    python benchmarks/bench_lopt.py --meta-steps 1000 --meta-seeds 0,1,2 --layers 4 \
        --backbone deepsets --kinds deepsets,nfn,unf --out runs/bench_lopt_paper
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_lopt")
    ap.add_argument("--kinds", default="none,mlp,deepsets,nfn,unf")
    ap.add_argument("--train-task", default="digits-mlp")
    ap.add_argument("--hidden", type=int, default=32, help="width of f")
    ap.add_argument("--layers", type=int, default=3, help="linear layers of f")
    ap.add_argument("--backbone", default="own", choices=("own", "deepsets"),
                    help="deepsets: NFN/UNF as --layers - 1 Deep Sets layers, then one NF/UNF "
                    "layer (with --layers 4: the UNF paper's App. C.2 f); other kinds as is")
    ap.add_argument("--estimator", default="tbptt")
    ap.add_argument("--features", default="ours", choices=("ours", "paper"),
                    help="paper: the UNF paper's 19 input channels (six momenta, step "
                    "encoding; LOptConfig.paper_features)")
    ap.add_argument("--paper-init", action="store_true",
                    help="the UNF paper's initial scalars: alpha 0.1, gamma 0.9, beta 1e-3 "
                    "(default: ours, alpha 0.03, gamma 1, beta 0.1)")
    ap.add_argument("--objective", default="mean",
                    help="mean | log | final: the meta-loss (see gensight.lopt.meta)")
    ap.add_argument("--meta-steps", type=int, default=300)
    ap.add_argument("--unroll", type=int, default=10)
    ap.add_argument("--horizon", type=int, default=200)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--eval-steps", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--tasks", default="digits-mlp,digits-mlp-wide,mnist8-mlp,mnist5k-mlp")
    ap.add_argument("--meta-seeds", default="0",
                    help="comma-separated meta-training seeds; each optimizer is meta-trained "
                    "once per seed (default: 0)")
    ap.add_argument("--quick", action="store_true", help="small lr grid")
    args = ap.parse_args()
    try:
        meta_seeds = sorted({int(s) for s in args.meta_seeds.split(",") if s.strip()})
    except ValueError:
        ap.error(f"--meta-seeds must be comma-separated integers; got {args.meta_seeds!r}")
    if not meta_seeds or min(meta_seeds) < 0:
        ap.error(f"--meta-seeds must name non-negative seeds; got {args.meta_seeds!r}")

    import torch

    torch.set_num_threads(1)
    from gensight.lopt import LOptConfig, LoptError, make_task
    from gensight.lopt.evaluate import LR_GRID, compare
    from gensight.lopt.meta import MetaConfig, MetaTrainer, load_lopt
    from gensight.lopt.report import write_report

    out = Path(args.out)
    kinds = [k for k in args.kinds.split(",") if k]
    train_time = {}

    def backbone(kind: str) -> str:
        return args.backbone if kind in ("nfn", "unf") else "own"

    def run_dir(kind: str, seed: int) -> Path:
        # default settings and seed 0 keep the single-seed benchmark's directory names, so an
        # earlier run resumes there; other widths and depths get their own directories
        size = ((f"-h{args.hidden}" if args.hidden != 32 else "")
                + (f"-L{args.layers}" if args.layers != 3 else ""))
        trunk = "-ds" if backbone(kind) == "deepsets" else ""
        obj = f"-{args.objective}" if args.objective != "mean" else ""
        obj += "-pf" if args.features == "paper" else ""
        obj += "-pi" if args.paper_init else ""
        return out / (f"{kind}-{args.estimator}{obj}{size}{trunk}"
                      + (f"-s{seed}" if seed else ""))

    def name(kind: str) -> str:
        return f"learned {kind}" + (" (DS trunk)" if backbone(kind) == "deepsets" else "")

    def label(kind: str, seed: int) -> str:
        return name(kind) + (f" (meta-seed {seed})" if len(meta_seeds) > 1 else "")

    def configs(kind: str, seed: int) -> tuple[LOptConfig, MetaConfig]:
        make = LOptConfig.paper_features if args.features == "paper" else LOptConfig
        init = ({"init_alpha": 0.1, "init_gamma": 0.9, "init_beta": 1e-3} if args.paper_init
                else {})
        return (make(f=kind, hidden=args.hidden, layers=args.layers, backbone=backbone(kind),
                     **init),
                MetaConfig(task=args.train_task, estimator=args.estimator,
                           population=args.population, unroll=args.unroll,
                           horizon=args.horizon, meta_steps=args.meta_steps,
                           checkpoint_every=50, seed=seed, objective=args.objective))

    if args.backbone == "deepsets" and not {"nfn", "unf"} & set(kinds):
        ap.error("--backbone deepsets applies to nfn and unf, and --kinds has neither")
    try:  # every setting is checked before the first meta-training starts
        for seed in meta_seeds:
            for kind in kinds:
                lcfg, mcfg = configs(kind, seed)
                lcfg.check(), mcfg.check()
        for tname in [t for t in args.tasks.split(",") if t]:
            make_task(tname)
    except LoptError as exc:
        ap.error(str(exc))

    for seed in meta_seeds:
        for kind in kinds:
            t0 = time.perf_counter()
            trainer = MetaTrainer(*configs(kind, seed), run_dir(kind, seed))
            res = trainer.run()
            run = label(kind, seed)
            train_time[run] = time.perf_counter() - t0
            tail = [r["meta_loss"] for r in res["history"]
                    if r["meta_loss"] is not None][-20:]
            print(f"meta-trained {run:28s} {args.meta_steps} steps in "
                  f"{train_time[run]:7.1f}s (this call); meta-loss (last {len(tail)}) "
                  f"{sum(tail) / max(1, len(tail)):.4f}; {res['scalars']}", flush=True)
    grid = (1e-3, 1e-2, 1e-1) if args.quick else LR_GRID
    results = {}
    for tname in [t for t in args.tasks.split(",") if t]:
        task = make_task(tname)
        lopts = {}
        for seed in meta_seeds:
            for kind in kinds:
                lopt, _ = load_lopt(run_dir(kind, seed), task)
                lopts[label(kind, seed)] = lopt
        t0 = time.perf_counter()
        results[tname] = compare(task, lopts, args.eval_steps, args.seeds, 3, grid)
        print(f"\n{tname}: {args.eval_steps} inner steps, {args.seeds} held-out seeds "
              f"({time.perf_counter() - t0:.0f}s)")
        print("| optimizer | final train loss | mean loss over the curve | last tenth | "
              "test accuracy | eval s |")
        print("|---|---|---|---|---|---|")
        for c in results[tname]:
            s = c.summary()
            div = f" ({s['diverged']}/{s['seeds']} seeds diverged)" if s["diverged"] else ""
            print(f"| {c.name}{div} | {s['train_loss']:.4f} ± {s['train_loss_std']:.4f} | "
                  f"{s['mean_loss']:.4f} ± {s['mean_loss_std']:.4f} | "
                  f"{s['late_loss']:.4f} ± {s['late_loss_std']:.4f} | "
                  f"{s['test_acc']:.4f} ± {s['test_acc_std']:.4f} | {s['seconds']:.1f} |",
                  flush=True)
        if len(meta_seeds) > 1:
            by_name = {c.name: c.summary() for c in results[tname]}
            print(f"\n{tname}, over {len(meta_seeds)} meta-training seeds (each value: one "
                  "meta-trained optimizer's mean over the held-out seeds; then mean over "
                  "meta-seeds, and the per-seed values)")
            print("| optimizer | final train loss | per meta-seed | mean loss over the curve | "
                  "per meta-seed | last tenth | test accuracy | diverged seeds |")
            print("|---|---|---|---|---|---|---|---|")
            for kind in kinds:
                runs = [by_name[label(kind, seed)] for seed in meta_seeds]
                col = {key: torch.tensor([r[key] for r in runs], dtype=torch.float64)
                       for key in ("train_loss", "mean_loss", "late_loss", "test_acc")}
                per = {key: ", ".join(f"{v:.4f}" for v in col[key].tolist())
                       for key in ("train_loss", "mean_loss")}
                print(f"| {name(kind)} | {col['train_loss'].nanmean():.4f} | "
                      f"{per['train_loss']} | {col['mean_loss'].nanmean():.4f} | "
                      f"{per['mean_loss']} | {col['late_loss'].nanmean():.4f} | "
                      f"{col['test_acc'].nanmean():.4f} | "
                      f"{sum(r['diverged'] for r in runs)}/{sum(r['seeds'] for r in runs)} |",
                      flush=True)
    page = write_report(results, out / "report.html",
                        title="gensight learned optimizers: benchmark",
                        notes=[f"meta-training: {args.estimator}, objective {args.objective}, "
                               f"features {args.features}"
                               + (" (paper's initial scalars)" if args.paper_init else "")
                               + ", "
                               f"{args.meta_steps} meta-steps "
                               f"x {args.unroll} inner steps x {args.population} inner runs "
                               f"on {args.train_task}, horizon {args.horizon}, meta-seeds "
                               f"{meta_seeds}",
                               "meta-training seconds (this call; about 0 when resumed "
                               f"from a finished checkpoint): {json.dumps(train_time)}"])
    print(f"\nreport: {page}")


if __name__ == "__main__":
    main()
