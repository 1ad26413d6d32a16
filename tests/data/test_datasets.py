import numpy as np
import pytest
import torch

from gensight.data import DATASETS, load_dataset
from gensight.errors import GensightError

EXPECTED = {"digits": ((1, 8, 8), 1797), "mnist5k": ((1, 28, 28), 5000),
            "mnist1d": ((1, 40), 5000)}  # the sequence task arith: tests/zoo/test_families.py


def test_every_dataset_is_covered():
    assert set(DATASETS) == {*EXPECTED, "arith"}


@pytest.mark.parametrize("name", [d for d in DATASETS if d in EXPECTED])
def test_dataset_shapes_splits_and_determinism(name):
    d = load_dataset(name)
    shape, total = EXPECTED[name]
    assert d.input_shape == shape and d.n_classes == 10
    sizes = [len(d.y_train), len(d.y_val), len(d.y_test)]
    assert sum(sizes) == total
    assert abs(sizes[0] / total - 0.6) < 0.01 and abs(sizes[2] / total - 0.2) < 0.01
    # Stratified: every class in every split, in proportion.
    for y in (d.y_train, d.y_val, d.y_test):
        counts = torch.bincount(y, minlength=10).float()
        assert counts.min() > 0 and counts.max() / counts.min() < 1.6
    # Splits are disjoint: no example appears in two splits.
    rows = [set(map(bytes, x.numpy().reshape(len(x), -1).view(np.uint8)))
            for x in (d.x_train, d.x_val, d.x_test)]
    assert not (rows[0] & rows[2]) and not (rows[0] & rows[1])
    load_dataset.cache_clear()
    again = load_dataset(name)
    assert torch.equal(again.x_test, d.x_test) and torch.equal(again.y_train, d.y_train)


def test_image_datasets_are_scaled_to_unit_range():
    for name in ("digits", "mnist5k"):
        d = load_dataset(name)
        assert d.value_range == (0.0, 1.0)
        assert d.x_train.min() >= 0 and d.x_train.max() == 1.0
    assert load_dataset("mnist1d").value_range is None


def test_mnist1d_leaves_global_numpy_rng_alone():
    # The legacy global generator is what mnist1d touches, so it is what we check.
    load_dataset.cache_clear()
    np.random.seed(123)  # noqa: NPY002
    expected = np.random.rand()  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    load_dataset("mnist1d")
    assert np.random.rand() == expected  # noqa: NPY002


def test_unknown_dataset_and_split():
    with pytest.raises(GensightError, match="known datasets: digits, mnist5k, mnist1d"):
        load_dataset("cifar10")
    with pytest.raises(GensightError, match="unknown split 'dev'"):
        load_dataset("digits").split("dev")
