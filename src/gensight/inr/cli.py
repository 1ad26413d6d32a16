"""``gensight inr classify`` and ``gensight inr edit``: registered by :func:`register` on the
main parser."""

from __future__ import annotations

import argparse
import sys


def _cmd_classify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table

    from gensight.inr.classify import (
        INRClassifyError,
        check_methods,
        check_positive_int,
        classify_zoo,
        split_rows,
    )
    from gensight.zoo import Zoo

    # every argument is checked before the zoo is opened or anything is trained
    methods = check_methods(args.methods)
    seeds = check_positive_int("--seeds", args.seeds)
    steps = check_positive_int("--steps", args.steps)
    batch_size = check_positive_int("--batch-size", args.batch_size)
    eval_every = None if args.eval_every is None else \
        check_positive_int("--eval-every", args.eval_every)
    try:
        channels = tuple(check_positive_int("--channels", c) for c in args.channels.split(","))
    except INRClassifyError:
        raise INRClassifyError(f"--channels must be comma-separated positive integers (NF-Layer "
                               f"widths, e.g. 32,32,32); got {args.channels!r}") from None
    try:
        lr = float(args.lr)
    except ValueError:
        lr = float("nan")
    if not lr > 0 or lr == float("inf"):
        raise INRClassifyError(f"--lr must be a positive number; got {args.lr!r}")

    zoo = Zoo.open(args.zoo)
    rows = split_rows(zoo)  # refuses a non-SIREN zoo in one line
    for note in zoo.notes:
        print(f"gensight: note: {note}", file=sys.stderr)
    err = Console(stderr=True)
    out = Console()
    name = zoo.manifest.get("name", args.zoo)
    err.print(f"zoo {name}: " + ", ".join(
        f"{s} {len(r)} SIRENs ({r['image_id'].nunique()} images)" for s, r in rows.items())
        + f"; methods {', '.join(methods)}; {seeds} seed(s), {steps} steps, batch {batch_size}"
        f", lr {lr:g}, NFN channels {','.join(map(str, channels))}", markup=False)
    # inr2array trains its autoencoder for --steps steps before its classifier
    total = seeds * steps * sum(2 if m == "inr2array" else 1 for m in methods)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, disable=args.quiet) as bar:
        task = bar.add_task("training", total=total)
        done: dict[tuple[str, int], int] = {}

        def progress(method: str, seed: int, step: int, steps_: int) -> None:
            done[(method, seed)] = step
            bar.update(task, completed=sum(done.values()),
                       description=f"{escape(method)} seed {seed}")

        result = classify_zoo(zoo, methods, seeds=seeds, steps=steps, batch_size=batch_size,
                              lr=lr, eval_every=eval_every, channels=channels,
                              progress=progress)
    sizes = result.sizes
    table = Table(title=escape(f"INR classification of {name}: accuracy on {sizes['test'][0]} "
                               f"test SIRENs ({sizes['test'][1]} images)"))
    for col in ("method", "test acc (mean ± std)", "val acc", "train acc", "seconds",
                "perm. gap"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for _, r in result.summary.iterrows():
        table.add_row(escape(r["method"]), f"{r['test_acc_mean']:.3f} ± {r['test_acc_std']:.3f}",
                      f"{r['val_acc']:.3f}", f"{r['train_acc']:.3f}", f"{r['seconds']:.1f}",
                      f"{r['invariance_gap']:.1e}")
    table.caption = (f"{seeds} seed(s) each (std over seeds, ddof 0); checkpoint with the best "
                     f"val accuracy of {steps} steps; seconds per seed; perm. gap: max |logit "
                     f"change| under random hidden-neuron permutations of test SIRENs")
    out.print(table)
    if args.out:
        from gensight.zoo.store import atomic_write_bytes

        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / "scores.csv",
                           result.summary.to_csv(index=False).encode())
        atomic_write_bytes(folder / "runs.csv", result.runs.to_csv(index=False).encode())
        out.print(f"scores: {folder / 'scores.csv'} (per seed: {folder / 'runs.csv'})",
                  markup=False)
    if args.report:
        from gensight.inr.report import write_inr_report

        page = write_inr_report(args.report, zoo, task="classification", scores=result.summary,
                                notes=[table.caption], command=_command_line())
        out.print(f"report: {page}", markup=False)
    return 0


def _command_line() -> str:
    import shlex

    return "gensight " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _cmd_edit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from gensight.inr.edit import edit_kwargs, figure_edits, load_edit_data, run_edit
    from gensight.zoo import Zoo

    zoo = Zoo.open(args.zoo)
    for note in zoo.notes:
        print(f"gensight: note: {note}", file=sys.stderr)
    kwargs = edit_kwargs(args)
    data = load_edit_data(zoo, kwargs["edit"], max_train=kwargs.get("max_train"),
                          max_val=kwargs.get("max_val"), max_test=kwargs.get("max_test"))
    err = Console(stderr=True)
    fits: dict = {}
    table_df = run_edit(zoo, data=data, fits=fits, log=None if args.quiet else (
        lambda line: err.print(line, markup=False)), **kwargs)
    name = zoo.manifest.get("name", args.zoo)
    table = Table(title=escape(f"INR editing ({kwargs['edit']}) of {name}: pixel MSE of the "
                               "edited rendering against the edited image, [-1, 1] units"))
    for col in ("method", "test MSE (mean ± std)", "val MSE", "seconds", "params"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for _, r in table_df.iterrows():
        table.add_row(escape(str(r["method"])),
                      f"{r['test_mse_mean']:.4f} ± {r['test_mse_std']:.4f}",
                      f"{r['val_mse_mean']:.4f}", f"{r['seconds']:.1f}", f"{int(r['params']):,}")
    table.caption = "none: the SIREN unedited (delta = 0); std over seeds"
    Console().print(table)
    best = {m: fit.model for (m, seed), fit in fits.items() if seed == kwargs["seeds"][0]}
    if args.figure:
        path = figure_edits(data, best, Path(args.figure), edit=kwargs["edit"])
        Console().print(f"figure: {path}", markup=False)
    if args.report:
        from gensight.inr.report import write_inr_report

        folder = Path(args.report)
        folder.mkdir(parents=True, exist_ok=True)
        png = figure_edits(data, best, folder / "edits.png", edit=kwargs["edit"]).read_bytes()
        page = write_inr_report(
            folder, zoo, task="editing", scores=table_df, notes=[table.caption], figure=png,
            figure_caption=f"Test SIRENs: original rendering, the {kwargs['edit']} target, "
            "and each method's edited SIREN (first seed's model).", command=_command_line())
        Console().print(f"report: {page}", markup=False)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``inr classify`` and ``inr edit`` to the main parser's subcommands."""
    from gensight.inr.classify import DEFAULTS, METHODS

    inr = sub.add_parser("inr", help="learn on implicit neural representations (SIREN zoos)",
                         description="Tasks on the weights of a SIREN zoo's INRs.")
    inr_sub = inr.add_subparsers(dest="inr_command", metavar="INR_COMMAND", required=True)
    cls = inr_sub.add_parser(
        "classify", help="classify SIRENs by their weights (Inr2Array, NFT, NFN, StatNN, "
        "MLP baselines)",
        description="Train INR classifiers on the train split of a SIREN zoo (every fit of "
        "every train image), keep the checkpoint with the best val accuracy, and report the "
        "test accuracy, mean ± std over seeds. NFN widths are CPU-sized (channels 32,32,32 "
        "by default; the NFN paper uses 512). Each weight/bias tensor is standardized by one "
        "mean and std from the train SIRENs. inr2array first trains its autoencoder for "
        "--steps steps on the train SIRENs' renderings, then its latent classifier.")
    cls.add_argument("zoo", help="SIREN zoo directory (family 'siren')")
    cls.add_argument("--methods", default=",".join(METHODS),
                     help="comma-separated subset of: " + ", ".join(METHODS)
                     + " (default: all)")
    cls.add_argument("--seeds", default="3", help="training seeds per method (default 3)")
    cls.add_argument("--steps", default=str(DEFAULTS["steps"]),
                     help="Adam steps per model (default %(default)s)")
    cls.add_argument("--batch-size", default=str(DEFAULTS["batch_size"]),
                     help="networks per minibatch (default %(default)s)")
    cls.add_argument("--lr", default=str(DEFAULTS["lr"]), help="Adam learning rate "
                     "(default %(default)s)")
    cls.add_argument("--eval-every", default=None,
                     help="steps between val evaluations (default: steps / 10)")
    cls.add_argument("--channels", default=",".join(map(str, DEFAULTS["channels"])),
                     help="NFN NF-Layer widths; nft and inr2array use the first as their "
                     "width (default %(default)s)")
    cls.add_argument("--out", help="directory for scores.csv (per method) and runs.csv "
                     "(per seed)")
    cls.add_argument("--report", metavar="DIR", help="write DIR/index.html: the zoo's PSNR, "
                     "renderings of test SIRENs and the score table (and CSVs)")
    cls.add_argument("--quiet", action="store_true", help="no progress bar")
    cls.set_defaults(func=_cmd_classify)
    from gensight.inr.edit import add_edit_arguments

    edit = inr_sub.add_parser(
        "edit", help="learn weight-space edits of SIRENs (dilation, contrast)",
        description="Train models that map a SIREN's weights to a weight delta so that the "
        "edited SIREN draws the edited image (NFN paper's INR editing), on the train split of "
        "a SIREN zoo; model selection on val; test MSE in [-1, 1] units, mean ± std over "
        "seeds, next to the unedited SIRENs.")
    edit.add_argument("zoo", help="SIREN zoo directory (family 'siren')")
    add_edit_arguments(edit)
    edit.add_argument("--report", metavar="DIR", help="write DIR/index.html: the zoo's PSNR, "
                      "renderings, the score table and the originals/edits/targets figure")
    edit.add_argument("--quiet", action="store_true", help="no progress lines")
    edit.set_defaults(func=_cmd_edit)
