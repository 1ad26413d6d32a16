"""``gensight report`` and ``gensight demo``: the HTML report of a zoo, and a small zoo built
and reported end to end; registered by :func:`register`."""

from __future__ import annotations

import argparse

from gensight.cliutil import add_fit_options, escape, open_classifier_zoo, print_frame


def _print_report_summary(console, report) -> None:
    from gensight.report.run import best, summary_tables

    pred, est = summary_tables(report)
    print_frame(console, pred, "predicting test accuracy of held-out networks")
    if len(est):
        print_frame(console, est, "label-free accuracy estimates: mean absolute error",
                     digits=2)
    top = best(report.scores, "tau")
    if top is not None:
        console.print(f"best ranking: {top} (Kendall's tau "
                      f"{report.scores.set_index('method').loc[top, 'tau']:.3f})", markup=False)
    if len(report.estimate_mae):
        mean = report.estimate_mae.mean(axis=1)
        console.print(f"best label-free estimator: {mean.idxmin()} (mean absolute error "
                      f"{100 * mean.min():.2f} accuracy points)")
    for note in report.notes:
        console.print(f"note: {note}", markup=False, style="dim")
    console.print(f"report: [bold]{escape(str(report.html))}[/] (tables: "
                  f"{escape(str(report.out))}/*.csv), "
                  f"{report.seconds:.0f} s")


def _report_status(console, quiet: bool):
    import contextlib

    if quiet:
        return contextlib.nullcontext(None)
    return console.status("")


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from gensight.report import build_report

    console = Console()
    zoo = open_classifier_zoo(args.zoo, "report")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods \
        else None
    shifts = [s.strip().replace(":", "-") for s in args.shifts.split(",") if s.strip()] \
        if args.shifts is not None else None
    out = Path(args.out) if args.out else Path(args.zoo) / "report"
    with _report_status(console, args.quiet) as status:
        report = build_report(
            zoo, out, methods=methods, shifts=shifts, target=args.target, split=args.split,
            seed=args.seed, epochs=args.epochs, n_examples=args.examples,
            progress=(lambda m: status.update(escape(m))) if status is not None else None)
    _print_report_summary(console, report)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from rich.console import Console

    from gensight.demo import run_demo

    console = Console()
    start = time.perf_counter()
    with _report_status(console, args.quiet) as status:
        def build_progress(done: int, total: int, steps: int) -> None:
            if status is not None:
                status.update(f"training the demo zoo: {done}/{total} networks")

        report = run_demo(args.dir, quick=args.quick, epochs=args.epochs,
                          build_progress=build_progress,
                          progress=(lambda m: status.update(escape(m))) if status is not None
                          else None)
    console.print(f"demo zoo: {report.out.parent / ('zoo-quick' if args.quick else 'zoo')} "
                  f"(reused by the next run; `gensight report` works on it too)", markup=False)
    _print_report_summary(console, report)
    console.print(f"demo done in {time.perf_counter() - start:.0f} s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``gensight report`` and ``gensight demo`` to the main parser's subcommands."""
    rep = sub.add_parser(
        "report", help="one HTML page + CSV tables: predictors, measures, label-free estimates",
        description="Fit and score the predictors of generalization on a seeded split of ZOO, "
        "run the label-free estimators on its shifted test sets, and write a self-contained "
        "HTML page (figures embedded) plus the tables as CSV.")
    rep.add_argument("zoo", help="zoo directory")
    rep.add_argument("--out", help="report directory (default: ZOO/report)")
    rep.add_argument("--methods", help="comma-separated predictors (default: statnn, nfn-hnp, "
                     "nfn-np and five measures; see gensight predict --help)")
    rep.add_argument("--shifts", help="comma-separated NAME-SEVERITY shifted sets with stored "
                     "logits (default: the first two kinds at their middle severity; '' for "
                     "none)")
    add_fit_options(rep)
    rep.add_argument("--quiet", action="store_true", help="no progress display")
    rep.set_defaults(func=_cmd_report)

    demo = sub.add_parser(
        "demo", help="build a small zoo and write its report (a few minutes on a CPU)",
        description="Train 192 small digits MLPs (cached in DIR/zoo and reused next time), "
        "fit StatNN and NFN predictors and five complexity measures, estimate accuracy on two "
        "shifted test sets without labels, and write DIR/report/index.html.")
    demo.add_argument("--dir", default="gensight-demo",
                      help="working directory for the zoo and the report (default: "
                      "%(default)s)")
    demo.add_argument("--quick", action="store_true",
                      help="16 tiny networks instead of 192 (about 20 s; for tests)")
    demo.add_argument("--epochs", type=int, help="NFN training epochs (default 60; 10 quick)")
    demo.add_argument("--quiet", action="store_true", help="no progress display")
    demo.set_defaults(func=_cmd_demo)
