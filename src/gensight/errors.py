"""Exceptions raised by gensight.

Every error a user can cause derives from :class:`GensightError`, and its message names the
file, key, field or shape at fault and what was expected.
"""

from __future__ import annotations


class GensightError(Exception):
    """Base class of all errors raised by gensight for bad input."""


class UnsupportedModuleError(GensightError, TypeError):
    """A module that has no weight-space description in gensight."""


class ShapeMismatchError(GensightError, ValueError):
    """A tensor's shape differs from the shape its weight space expects."""


class KeyMismatchError(GensightError, KeyError):
    """State-dict keys differ from the keys a weight space expects."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class NonFiniteWeightsError(GensightError, ValueError):
    """Weights that contain NaN or infinity."""


class IncompatibleSpaceError(GensightError, ValueError):
    """Two objects that must share a weight space do not."""
