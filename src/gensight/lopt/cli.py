"""``gensight lopt train`` and ``gensight lopt eval``: registered by :func:`register` on the
main parser. Only argparse is imported here; torch loads when a command runs."""

from __future__ import annotations

import argparse

from gensight.progress import progress_bar


def _int(name: str, value: str, minimum: int = 1) -> int:
    from gensight.lopt.errors import LoptError

    try:
        v = int(value)
    except (TypeError, ValueError):
        v = minimum - 1
    if v < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative"
        raise LoptError(f"{name} must be {kind} integer; got {value!r}")
    return v


def _float(name: str, value: str) -> float:
    from gensight.lopt.errors import LoptError

    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not 0 < v < float("inf"):
        raise LoptError(f"{name} must be a positive number; got {value!r}")
    return v


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from gensight.lopt.errors import LoptError
    from gensight.lopt.meta import CHECKPOINT, ESTIMATORS, OBJECTIVES, MetaConfig, MetaTrainer
    from gensight.lopt.nets import BACKBONES, KINDS
    from gensight.lopt.optimizer import LOptConfig
    from gensight.lopt.tasks import TASKS

    if args.f not in KINDS:
        raise LoptError(f"--f: unknown learned optimizer {args.f!r}; choose from "
                        f"{', '.join(KINDS)}")
    if args.task not in TASKS:
        raise LoptError(f"--task: unknown task {args.task!r}; choose from {', '.join(TASKS)}")
    if args.estimator not in ESTIMATORS:
        raise LoptError(f"--estimator: unknown estimator {args.estimator!r}; choose from "
                        f"{', '.join(ESTIMATORS)}")
    if args.objective not in OBJECTIVES:
        raise LoptError(f"--objective: unknown meta-objective {args.objective!r}; choose "
                        f"from {', '.join(OBJECTIVES)}")
    if args.features not in ("ours", "paper"):
        raise LoptError(f"--features must be 'ours' or 'paper'; got {args.features!r}")
    if args.symmetry not in ("np", "hnp"):
        raise LoptError(f"--symmetry must be 'np' or 'hnp'; got {args.symmetry!r}")
    if args.backbone not in BACKBONES:
        raise LoptError(f"--backbone must be one of {', '.join(BACKBONES)}; got "
                        f"{args.backbone!r}")
    ints = {k: _int(f"--{k.replace('_', '-')}", getattr(args, k))
            for k in ("population", "unroll", "horizon", "meta_steps", "hidden", "layers",
                      "checkpoint_every")}
    if args.backbone == "deepsets" and (args.f not in ("nfn", "unf") or ints["layers"] < 2):
        raise LoptError(f"--backbone deepsets needs --f nfn or unf and --layers >= 2; got "
                        f"--f {args.f} --layers {ints['layers']}")
    if args.estimator != "tbptt" and ints["population"] % 2:
        raise LoptError(f"--population must be even for --estimator {args.estimator} "
                        f"(antithetic pairs); got {ints['population']}")
    if ints["horizon"] % ints["unroll"]:
        raise LoptError(f"--horizon ({ints['horizon']}) must be a multiple of --unroll "
                        f"({ints['unroll']})")
    if args.threads is not None:
        import torch

        torch.set_num_threads(_int("--threads", args.threads))
    make = LOptConfig.paper_features if args.features == "paper" else LOptConfig
    lcfg = make(f=args.f, hidden=ints["hidden"], layers=ints["layers"],
                symmetry=args.symmetry, backbone=args.backbone)
    mcfg = MetaConfig(task=args.task, estimator=args.estimator,
                      population=ints["population"], unroll=ints["unroll"],
                      horizon=ints["horizon"], meta_steps=ints["meta_steps"],
                      meta_lr=_float("--meta-lr", args.meta_lr), sigma=_float("--sigma",
                                                                               args.sigma),
                      second_order=args.second_order, seed=_int("--seed", args.seed, 0),
                      checkpoint_every=ints["checkpoint_every"], objective=args.objective)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LoptError(f"--out {out} is an existing file; it must name a run directory")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise LoptError(f"--out {out}: {parent} is a file, not a directory")
    err = Console(stderr=True)
    trainer = MetaTrainer(lcfg, mcfg, out)
    resumed = (out / CHECKPOINT).exists()
    n_phi = sum(p.numel() for p in trainer.lopt.parameters())
    err.print(f"lopt train: f={lcfg.f} ({n_phi:,} meta-parameters) on {mcfg.task}, "
              f"{mcfg.estimator}, {mcfg.meta_steps} meta-steps x {mcfg.unroll} inner steps x "
              f"{mcfg.population} inner runs, objective {mcfg.objective}"
              + (f"; resuming from {out / CHECKPOINT}" if resumed else ""), markup=False)
    with progress_bar(err, args.quiet) as bar:
        task = bar.add_task(f"{lcfg.f}", total=mcfg.meta_steps)

        def progress(step: int, total: int, row: dict) -> None:
            if row["meta_loss"] is None:  # objective 'final': no run ended this meta-step
                bar.update(task, completed=step)
            else:
                bar.update(task, completed=step,
                           description=f"{lcfg.f} meta-loss {row['meta_loss']:.3f}")

        res = trainer.run(progress)
    hist = res["history"]
    tail = [r["meta_loss"] for r in hist if r["meta_loss"] is not None][-10:]
    mean = sum(tail) / len(tail) if tail else float("nan")
    s = res["scalars"]
    print(f"{out / CHECKPOINT}: meta-step {res['step']}, meta-loss (last {len(tail)} with "
          f"signal, objective {mcfg.objective}) {mean:.4f}, alpha {s['alpha']:.4g} "
          f"beta {s['beta']:.4g} gamma {s['gamma']:.4g}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from gensight.lopt.errors import LoptError
    from gensight.lopt.evaluate import LR_GRID, compare
    from gensight.lopt.meta import load_lopt
    from gensight.lopt.report import write_report
    from gensight.lopt.tasks import TASKS, make_task

    tasks = [t.strip() for t in args.task.split(",") if t.strip()] if args.task else []
    for t in tasks:
        if t not in TASKS:
            raise LoptError(f"--task: unknown task {t!r}; choose from {', '.join(TASKS)}")
    steps = _int("--steps", args.steps)
    seeds = _int("--seeds", args.seeds)
    tune = _int("--tune-seeds", args.tune_seeds)
    grid = LR_GRID
    if args.lr_grid is not None:
        grid = tuple(_float("--lr-grid", v) for v in args.lr_grid.split(",") if v.strip())
        if not grid:
            raise LoptError(f"--lr-grid needs at least one learning rate; got "
                            f"{args.lr_grid!r}")
    out = Path(args.out)
    if out.suffix.lower() == ".json":
        raise LoptError(f"--out {out} ends in .json; name the HTML page (e.g. "
                        f"{out.with_suffix('.html')}), the JSON summary is written next to it")
    if out.is_dir():
        raise LoptError(f"--out {out} is a directory; name the HTML page to write")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise LoptError(f"--out {out}: {parent} is a file, not a directory")
    if args.threads is not None:
        import torch

        torch.set_num_threads(_int("--threads", args.threads))
    names = []
    for ck in args.checkpoints:
        p = Path(ck)
        names.append(p.name if p.is_dir() else p.parent.name or p.stem)
    if len(set(names)) != len(names):
        names = [f"{n} #{i}" for i, n in enumerate(names)]
    if not tasks:
        _, info = load_lopt(args.checkpoints[0])
        tasks = [info["meta_config"]["task"]]
    # every (task, checkpoint) pair is loaded before any training, so a checkpoint that does
    # not fit one of the tasks fails at once
    per_task = {}
    for t in tasks:
        task = make_task(t)
        lopts = {}
        for ck, name in zip(args.checkpoints, names, strict=True):
            lopt, info = load_lopt(ck, task)
            lopts[f"{info['lopt_config'].f}: {name}"] = lopt
        per_task[t] = (task, lopts)
    baselines = () if args.no_baselines else ("adam", "sgdm")
    err = Console(stderr=True)
    results = {}
    with progress_bar(err, args.quiet) as bar:
        job = bar.add_task("eval", total=len(tasks) * (len(args.checkpoints) + len(baselines)))
        for t, (task, lopts) in per_task.items():
            def progress(what: str, done: bool, t=t) -> None:
                if done:
                    bar.update(job, advance=1, description=f"{t}: {what} done")
                else:
                    bar.update(job, description=f"{t}: {what}")

            results[t] = compare(task, lopts, steps, seeds, tune, grid, baselines=baselines,
                                 progress=progress)
        bar.update(job, description="eval done")
    for t, curves in results.items():
        table = Table(title=f"{t}: after {steps} inner steps, {seeds} held-out seeds")
        for col in ("optimizer", "train loss", "mean over curve", "last tenth", "test acc",
                    "s"):
            table.add_column(col, justify="left" if col == "optimizer" else "right")
        for c in curves:
            s = c.summary()
            div = f" ({s['diverged']}/{s['seeds']} diverged)" if s["diverged"] else ""
            table.add_row(c.name + div, f"{s['train_loss']:.4f} ± {s['train_loss_std']:.4f}",
                          f"{s['mean_loss']:.4f} ± {s['mean_loss_std']:.4f}",
                          f"{s['late_loss']:.4f} ± {s['late_loss_std']:.4f}",
                          f"{s['test_acc']:.4f} ± {s['test_acc_std']:.4f}",
                          f"{s['seconds']:.1f}")
        Console().print(table)
    page = write_report(results, out)
    print(f"report: {page}", file=sys.stderr)
    return 0


def register(sub) -> None:
    """Add ``lopt`` (``train``, ``eval``) to the main parser's subcommands ``sub``."""
    lo = sub.add_parser("lopt", help="learned optimizers on weight space (per-parameter, "
                        "Deep Sets, NFN, UNF): meta-train and evaluate")
    lsub = lo.add_subparsers(dest="lopt_command", required=True)
    t = lsub.add_parser("train", help="meta-train a learned optimizer (resumable)")
    t.add_argument("--f", default="unf", help="none | mlp | deepsets | nfn | unf")
    t.add_argument("--task", default="digits-mlp", help="digits-mlp | digits-mlp-wide | "
                   "mnist8-mlp | mnist5k-mlp | digits-cnn | python-rnn")
    t.add_argument("--out", required=True, help="output directory (a checkpoint there is "
                   "resumed)")
    t.add_argument("--estimator", default="tbptt", help="tbptt | es | pes")
    t.add_argument("--objective", default="mean", help="mean | log | final (meta-loss: mean "
                   "or mean log of the inner losses over each unroll, or the loss at the end "
                   "of the horizon as in the UNF paper)")
    t.add_argument("--population", default="8", help="inner runs trained at once")
    t.add_argument("--unroll", default="10", help="inner steps per meta-step (truncation)")
    t.add_argument("--horizon", default="200", help="inner steps before inner runs restart")
    t.add_argument("--meta-steps", default="200")
    t.add_argument("--meta-lr", default="3e-3")
    t.add_argument("--sigma", default="0.01", help="ES perturbation scale")
    t.add_argument("--hidden", default="32", help="width of f")
    t.add_argument("--layers", default="3", help="linear layers of f")
    t.add_argument("--symmetry", default="np", help="np | hnp (nfn/unf)")
    t.add_argument("--backbone", default="own", help="own | deepsets (nfn/unf: --layers - 1 "
                   "Deep Sets layers, then one NF/UNF layer; the UNF paper's App. C.2 f is "
                   "--backbone deepsets --layers 4 --hidden 32)")
    t.add_argument("--features", default="ours", help="ours (weights, gradient, 3 momenta, "
                   "second moment, Adam-like ratio) | paper (the UNF paper's 19 channels: "
                   "weights, gradient, 6 momenta, 11-dim step encoding)")
    t.add_argument("--second-order", action="store_true",
                   help="TBPTT through the inner gradients too (slower, exact)")
    t.add_argument("--seed", default="0")
    t.add_argument("--checkpoint-every", default="25")
    t.add_argument("--threads", default=None, help="torch threads")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)
    e = lsub.add_parser("eval", help="compare learned optimizers with tuned Adam and SGD+"
                        "momentum on held-out seeds; writes an HTML report")
    e.add_argument("checkpoints", nargs="+", help="run directories or lopt.safetensors files")
    e.add_argument("--task", default=None, help="task(s), comma-separated (default: the "
                   "first checkpoint's training task)")
    e.add_argument("--steps", default="300", help="inner steps")
    e.add_argument("--seeds", default="5", help="held-out seeds")
    e.add_argument("--tune-seeds", default="3", help="seeds for the learning-rate grid")
    e.add_argument("--lr-grid", default=None, help="comma-separated learning rates")
    e.add_argument("--no-baselines", action="store_true", help="skip Adam and SGD+momentum")
    e.add_argument("--out", default="lopt-report.html")
    e.add_argument("--threads", default=None, help="torch threads")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_eval)
