"""The progress bar every long ``gensight`` command shows (rich, on stderr): a label, the
bar, done/total, time elapsed and time remaining. rich is imported when a bar is made."""

from __future__ import annotations


def progress_bar(console, quiet: bool = False, label: str = "{task.description}"):
    """A ``rich.progress.Progress`` on ``console`` (hidden with ``quiet``); ``label`` is the
    text column's format (default: each task's description)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, disable=quiet)
