"""Every zoo spec in examples/ parses as written, with the member count its comments state."""

from pathlib import Path

import pytest

from gensight.zoo import ZooSpec

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_spec_parses(path):
    spec = ZooSpec.from_toml(path)
    assert spec.n_members > 0


def test_mnist_siren_example_is_a_5000_member_28x28_zoo():
    spec = ZooSpec.from_toml(Path(__file__).parents[2] / "examples" / "mnist-siren.toml")
    assert spec.is_siren and spec.dataset == "mnist5k" and spec.n_members == 5000


def test_mnist14_siren_aug_example_is_5000_images_times_10_fits_at_14x14():
    spec = ZooSpec.from_toml(Path(__file__).parents[2] / "examples" / "mnist14-siren-aug.toml")
    assert spec.is_siren and spec.dataset == "mnist5k@14" and spec.n_members == 50_000
