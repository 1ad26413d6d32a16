"""Offline datasets and distribution shifts.

- :func:`load_dataset`: ``digits``, ``mnist5k``, ``mnist1d`` with fixed, seeded splits.
- :func:`apply_shift`: corruptions by name (:data:`SHIFTS`) at severities 1-5.
"""

from gensight.data.datasets import DATASETS, Dataset, load_dataset
from gensight.data.shifts import (
    SEVERITIES,
    SHIFTS,
    Shift,
    apply_shift,
    available_shifts,
    get_shift,
)

__all__ = [
    "DATASETS",
    "SEVERITIES",
    "SHIFTS",
    "Dataset",
    "Shift",
    "apply_shift",
    "available_shifts",
    "get_shift",
    "load_dataset",
]
