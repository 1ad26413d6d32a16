"""``gensight mix train`` and ``gensight mix report``: registered by :func:`register` on the
main parser. Only argparse is imported here; torch loads when a command runs."""

from __future__ import annotations

import argparse

from gensight.progress import progress_bar


def _positive_int(name: str, value: str, minimum: int = 1) -> int:
    from gensight.mixing.scaling import MixingError

    try:
        v = int(value)
    except ValueError:
        v = minimum - 1
    if v < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative"
        raise MixingError(f"{name} must be {kind} integer; got {value!r}")
    return v


def _cmd_train(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from gensight.mixing.data import DOMAINS, load_domains
    from gensight.mixing.policies import POLICIES
    from gensight.mixing.report import write_report
    from gensight.mixing.scaling import MixingError
    from gensight.mixing.train import CHECKPOINT, MixTrainConfig, train_mixture

    if args.policy not in POLICIES:  # checked before anything is built
        raise MixingError(f"--policy: unknown mixing policy {args.policy!r}; choose from "
                          f"{', '.join(POLICIES)}")
    domains = tuple(d.strip() for d in args.domains.split(",") if d.strip())
    if not domains:
        raise MixingError(f"--domains must name at least one domain of {', '.join(DOMAINS)}; "
                          f"got {args.domains!r}")
    for d in domains:
        if d not in DOMAINS:
            raise MixingError(f"--domains: unknown text domain {d!r}; choose from "
                              f"{', '.join(DOMAINS)}")
    ints = {k: _positive_int(f"--{k.replace('_', '-')}", getattr(args, k))
            for k in ("steps", "batch_size", "context", "d", "layers", "heads",
                      "eval_every", "checkpoint_every")}
    max_bytes = None if args.max_bytes is None else _positive_int("--max-bytes", args.max_bytes)
    try:
        lr = float(args.lr)
    except ValueError:
        lr = float("nan")
    if not 0 < lr < float("inf"):
        raise MixingError(f"--lr must be a positive number; got {args.lr!r}")
    if ints["d"] % ints["heads"]:
        raise MixingError(f"--d ({ints['d']}) must be divisible by --heads ({ints['heads']})")
    cfg = MixTrainConfig(policy=args.policy, steps=ints["steps"],
                         batch_size=ints["batch_size"], context=ints["context"], d=ints["d"],
                         layers=ints["layers"], heads=ints["heads"], lr=lr,
                         seed=_positive_int("--seed", args.seed, 0), eval_every=ints["eval_every"],
                         checkpoint_every=ints["checkpoint_every"], domains=domains,
                         max_bytes=max_bytes).check()
    if args.threads:
        import torch

        torch.set_num_threads(_positive_int("--threads", args.threads))
    out = Path(args.out)
    err = Console(stderr=True)
    data = load_domains(cfg.domains, cfg.max_bytes)
    resumed = (out / CHECKPOINT).exists()
    err.print(f"mix train: policy {cfg.policy}, {cfg.steps} steps x {cfg.batch_size} x "
              f"{cfg.context} bytes = {cfg.steps * cfg.batch_size * cfg.context:,} tokens; "
              f"domains " + ", ".join(f"{n} ({d.train.size:,} B)" for n, d in data.items())
              + (f"; resuming from {out / CHECKPOINT}" if resumed else ""), markup=False)
    with progress_bar(err, args.quiet) as bar:
        task = bar.add_task(f"{cfg.policy}", total=cfg.steps)

        def progress(step: int, steps: int, row: dict) -> None:
            bar.update(task, completed=step,
                       description=f"{cfg.policy} loss {row['train_loss']:.3f}")

        res = train_mixture(cfg, out, domains=data, progress=progress)
    table = Table(title=f"{cfg.policy}: final losses (nats/byte)")
    for col in ("domain", "mixture", "val", "test"):
        table.add_column(col, justify="left" if col == "domain" else "right")
    for n in res["domains"]:
        table.add_row(n, f"{res['final_mixture'][n]:.3f}", f"{res['val'][n]:.4f}",
                      f"{res['test'][n]:.4f}")
    table.add_row("mean", "", f"{res['val_mean']:.4f}", f"{res['test_mean']:.4f}")
    Console().print(table)
    print(f"uniform mix of held-out text: {res['test_uniform_mix']:.4f}; policy time "
          f"{100 * res['policy_time_share']:.2f}% of step time")
    if not args.no_report:
        page = write_report([out], out / "report.html")
        print(f"report: {page}", file=sys.stderr)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from gensight.mixing.report import write_report

    page = write_report(args.runs, args.out)
    print(page)
    return 0


def register(sub) -> None:
    """Add ``mix`` (``train``, ``report``) to the main parser's subcommands ``sub``."""
    mix = sub.add_parser("mix", help="choose the training-data mixture online (ADO and "
                         "baselines) while training a byte-level LM")
    msub = mix.add_subparsers(dest="mix_command", required=True)
    t = msub.add_parser("train", help="train a byte-level LM with a mixing policy (resumable)")
    t.add_argument("--policy", default="ado", help="ado | natural | uniform | odm")
    t.add_argument("--out", required=True, help="output directory (a checkpoint there is "
                   "resumed)")
    t.add_argument("--steps", default="1500")
    t.add_argument("--batch-size", default="16")
    t.add_argument("--context", default="64")
    t.add_argument("--d", default="64", help="model width")
    t.add_argument("--layers", default="2")
    t.add_argument("--heads", default="4")
    t.add_argument("--lr", default="3e-3")
    t.add_argument("--seed", default="0")
    t.add_argument("--eval-every", default="100")
    t.add_argument("--checkpoint-every", default="100")
    t.add_argument("--domains", default="python,pydoc,docstrings,arithmetic,hex")
    t.add_argument("--max-bytes", default=None, help="cap on each domain's bytes")
    t.add_argument("--threads", default=None, help="torch threads")
    t.add_argument("--no-report", action="store_true", help="do not write report.html")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)
    r = msub.add_parser("report", help="one HTML page for one or more `mix train` runs")
    r.add_argument("runs", nargs="+", help="run directories")
    r.add_argument("--out", default="mix-report.html")
    r.set_defaults(func=_cmd_report)
