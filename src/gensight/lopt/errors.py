"""Errors of :mod:`gensight.lopt`."""

from __future__ import annotations

from gensight.errors import GensightError


class LoptError(GensightError, ValueError):
    """A bad learned-optimizer setting, task name, checkpoint or argument; the message names
    the field or value at fault."""
