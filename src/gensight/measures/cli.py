"""``gensight measures``: complexity measures of every member of a zoo; registered by
:func:`register`."""

from __future__ import annotations

import argparse

from gensight.cliutil import open_classifier_zoo, print_frame
from gensight.errors import GensightError
from gensight.progress import progress_bar


def _cmd_measures(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from gensight.measures import MEASURES, available_measures, get_measure, zoo_measures

    console = Console(stderr=True)
    if args.list:
        for m in MEASURES.values():
            needs = ", ".join(k for k, v in (("data", m.needs_data), ("init", m.needs_init))
                              if v) or "weights only"
            print(f"{m.name:32s} [{m.cost}; {needs}] {m.cites}")
        return 0
    if args.zoo is None:
        raise GensightError("give a ZOO directory (or --list)")
    zoo = open_classifier_zoo(args.zoo, "measures")
    names = available_measures(cheap_only=True) if args.measures in (None, "cheap") else \
        list(MEASURES) if args.measures == "all" else args.measures.split(",")
    for name in names:  # unknown names fail before the progress bar
        get_measure(name)
    rows = zoo.table.query("is_final and finite")
    if args.limit:
        rows = rows.head(args.limit)
    with progress_bar(console, args.quiet) as bar:
        searches = None
        if any(n.startswith("sharpness.") for n in names):  # the batched alpha' searches
            searches = bar.add_task("alpha' searches", total=None)
        task = bar.add_task("measures", total=len(rows))
        table, notes = zoo_measures(
            zoo, names, rows, n_examples=args.examples,
            progress=lambda done, total: bar.update(task, completed=done),
            alpha_progress=None if searches is None else (
                lambda done, total: bar.update(searches, completed=done, total=total)))
    out = Path(args.out) if args.out else Path(args.zoo) / "measures.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    from gensight.zoo.store import atomic_write_bytes, parquet_bytes

    atomic_write_bytes(out, table.to_csv(index=False).encode() if out.suffix == ".csv"
                       else parquet_bytes(table))
    for name, why in notes.items():
        console.print(f"{name} does not apply: {why}", markup=False)
    summary = table[names].describe().T[["count", "mean", "min", "max"]]
    print_frame(Console(), summary.reset_index().rename(columns={"index": "measure"}),
                 f"measures of {len(rows)} networks")
    console.print(f"table: {out}", markup=False)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``gensight measures`` to the main parser's subcommands."""
    mea = sub.add_parser(
        "measures", help="complexity measures of every member of a zoo",
        description="Compute complexity measures (arXiv 1912.02178) for the final checkpoint of "
        "every member of ZOO and write them as a table (Parquet, or CSV by suffix).")
    mea.add_argument("zoo", nargs="?", help="zoo directory")
    mea.add_argument("--measures", help="comma-separated names, 'cheap' (default: every "
                     "measure without a search) or 'all'; see --list")
    mea.add_argument("--list", action="store_true", help="list the measures and what they cite")
    mea.add_argument("--examples", type=int, default=1000,
                     help="training examples per member for data-dependent measures")
    mea.add_argument("--limit", type=int, help="only the first N members")
    mea.add_argument("--out", help="output table (default: ZOO/measures.parquet)")
    mea.add_argument("--quiet", action="store_true", help="no progress bar")
    mea.set_defaults(func=_cmd_measures)
