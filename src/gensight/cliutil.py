"""Helpers shared by the ``gensight`` subcommands that read a classifier zoo (``estimate``,
``measures``, ``predict``, ``report``): opening the zoo, printing tables, common options."""

from __future__ import annotations

import argparse
import sys


def escape(text: str) -> str:
    """``text`` with rich markup escaped (zoo names, paths and methods are user strings)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def open_classifier_zoo(path: str, command: str):
    """Open a classifier zoo for ``gensight COMMAND`` and say on stderr what opening it
    worked around (a rebuilt index, damaged shards left out)."""
    from gensight.errors import GensightError
    from gensight.zoo import Zoo

    zoo = Zoo.open(path)
    if zoo.family == "siren":
        raise GensightError(f"{path} is a SIREN zoo (one INR per image, no accuracies); "
                            f"'gensight {command}' needs a classifier zoo (family mlp or cnn)")
    for note in zoo.notes:
        print(f"gensight: note: {note}", file=sys.stderr)
    return zoo


def print_frame(console, frame, title: str, digits: int = 3, max_rows: int | None = None):
    import pandas as pd
    from rich.table import Table

    table = Table(title=escape(title))
    for col in frame.columns:
        table.add_column(escape(str(col)), justify="right" if pd.api.types.is_numeric_dtype(
            frame[col]) else "left")
    shown = frame if max_rows is None else frame.head(max_rows)
    for _, row in shown.iterrows():
        table.add_row(*(f"{v:.{digits}f}" if isinstance(v, float) else escape(str(v))
                        for v in row))
    if max_rows is not None and len(frame) > max_rows:
        table.caption = f"first {max_rows} of {len(frame)} rows (all rows are in the CSV)"
    console.print(table)


def add_fit_options(parser: argparse.ArgumentParser) -> None:
    """The split and fitting options shared by ``predict`` and ``report``."""
    parser.add_argument("--target", default="test_acc", help="column to predict")
    parser.add_argument("--split", default="auto", choices=("auto", "seed", "config"),
                        help="hold out the last seed of every configuration (complete grid) "
                        "or a random part of the configurations (default: auto)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=60, help="NFN training epochs (max)")
    parser.add_argument("--examples", type=int, default=1000,
                        help="training examples per member for measures")
