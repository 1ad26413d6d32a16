"""The progress bar every long ``gensight`` command shows (rich, on stderr): a label, the
bar, done/total, time elapsed and time remaining. rich is imported when a bar is made."""

from __future__ import annotations


def progress_bar(console, quiet: bool = False, label: str = "{task.description}",
                 extra: str | None = None):
    """A ``rich.progress.Progress`` on ``console`` (hidden with ``quiet``); ``label`` is the
    text column's format (default: each task's description); ``extra`` is the format of a
    text column after done/total (e.g. ``"{task.fields[rate]}"``)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(),
               *([TextColumn(extra)] if extra is not None else []), TimeElapsedColumn(),
               TimeRemainingColumn()]
    return Progress(*columns, console=console, disable=quiet)
