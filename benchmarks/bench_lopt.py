"""Benchmark: NFN / UNF learned optimizers vs per-parameter MLP and Deep Sets learned
optimizers at the same meta-training budget, against Adam and SGD+momentum tuned on a
learning-rate grid (issue #19; UNF paper arXiv 2402.05232, Sec. 4).

Every learned optimizer is meta-trained on ``digits-mlp`` (MLP 64-32-10 on digits; or
``--train-task``, e.g. the byte-level RNN LM ``python-rnn``, where NFN does not apply) with the
same estimator, meta-steps, truncation, horizon and population, then evaluated on held-out
seeds of the training task and on transfer tasks (``digits-mlp-wide``: hidden width 64;
``mnist5k-mlp``: MNIST-5k, 784 inputs). Reported per optimizer: final training-split loss after
``--eval-steps`` inner steps and test accuracy (mean +- std over held-out seeds). One torch
thread. Checkpoints are kept in ``--out`` so an interrupted run resumes.

    python benchmarks/bench_lopt.py                      # 300 meta-steps per optimizer
    python benchmarks/bench_lopt.py --meta-steps 30 --seeds 2 --quick   # smoke run
    python benchmarks/bench_lopt.py --train-task python-rnn --tasks python-rnn \
        --kinds mlp,deepsets,unf --meta-steps 150 --hidden 16 --out runs/bench_lopt_rnn
    python benchmarks/bench_lopt.py --estimator pes --kinds unf --out runs/bench_lopt_pes
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
    ap.add_argument("--estimator", default="tbptt")
    ap.add_argument("--meta-steps", type=int, default=300)
    ap.add_argument("--unroll", type=int, default=10)
    ap.add_argument("--horizon", type=int, default=200)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--eval-steps", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--tasks", default="digits-mlp,digits-mlp-wide,mnist5k-mlp")
    ap.add_argument("--quick", action="store_true", help="small lr grid")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from gensight.lopt import LOptConfig, make_task
    from gensight.lopt.evaluate import LR_GRID, compare
    from gensight.lopt.meta import MetaConfig, MetaTrainer, load_lopt
    from gensight.lopt.report import write_report

    out = Path(args.out)
    kinds = [k for k in args.kinds.split(",") if k]
    train_time = {}
    for kind in kinds:
        mcfg = MetaConfig(task=args.train_task, estimator=args.estimator,
                          population=args.population, unroll=args.unroll,
                          horizon=args.horizon, meta_steps=args.meta_steps,
                          checkpoint_every=50)
        t0 = time.perf_counter()
        trainer = MetaTrainer(LOptConfig(f=kind, hidden=args.hidden), mcfg,
                              out / f"{kind}-{args.estimator}")
        res = trainer.run()
        train_time[kind] = time.perf_counter() - t0
        tail = res["history"][-20:]
        print(f"meta-trained {kind:9s} {args.meta_steps} steps in {train_time[kind]:7.1f}s "
              f"(this call); meta-loss (last 20) "
              f"{sum(r['meta_loss'] for r in tail) / len(tail):.4f}; {res['scalars']}",
              flush=True)
    grid = (1e-3, 1e-2, 1e-1) if args.quick else LR_GRID
    results = {}
    for tname in [t for t in args.tasks.split(",") if t]:
        task = make_task(tname)
        lopts = {}
        for kind in kinds:
            lopt, _ = load_lopt(out / f"{kind}-{args.estimator}", task)
            lopts[f"learned {kind}"] = lopt
        t0 = time.perf_counter()
        results[tname] = compare(task, lopts, args.eval_steps, args.seeds, 3, grid)
        print(f"\n{tname}: {args.eval_steps} inner steps, {args.seeds} held-out seeds "
              f"({time.perf_counter() - t0:.0f}s)")
        print("| optimizer | final train loss | test accuracy | eval s |")
        print("|---|---|---|---|")
        for c in results[tname]:
            s = c.summary()
            div = f" ({s['diverged']}/{s['seeds']} seeds diverged)" if s["diverged"] else ""
            print(f"| {c.name}{div} | {s['train_loss']:.4f} ± {s['train_loss_std']:.4f} | "
                  f"{s['test_acc']:.4f} ± {s['test_acc_std']:.4f} | {s['seconds']:.1f} |",
                  flush=True)
    page = write_report(results, out / "report.html",
                        title="gensight learned optimizers: benchmark",
                        notes=[f"meta-training: {args.estimator}, {args.meta_steps} meta-steps "
                               f"x {args.unroll} inner steps x {args.population} inner runs "
                               f"on {args.train_task}, horizon {args.horizon}",
                               "meta-training seconds (this call; about 0 when resumed "
                               f"from a finished checkpoint): {json.dumps(train_time)}"])
    print(f"\nreport: {page}")


if __name__ == "__main__":
    main()
