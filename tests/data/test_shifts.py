import numpy as np
import pytest
import torch
from scipy import ndimage

from gensight.data import (
    DATASETS,
    SEVERITIES,
    SHIFTS,
    apply_shift,
    available_shifts,
    load_dataset,
)
from gensight.errors import GensightError


@pytest.fixture(scope="module")
def images():
    return load_dataset("digits").x_test[:64]


@pytest.mark.parametrize("name", list(SHIFTS))
def test_shift_shape_range_determinism_and_effect(images, name):
    outs = [apply_shift(images, name, s, seed=3) for s in SEVERITIES]
    for out in outs:
        assert out.shape == images.shape and out.dtype == images.dtype
        assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(apply_shift(images, name, 2, seed=3), outs[1])
    assert not torch.equal(outs[0], images)
    if name not in ("brightness", "contrast", "gaussian_blur"):  # deterministic ones
        assert not torch.equal(apply_shift(images, name, 2, seed=4), outs[1])


def _pairs():
    """(dataset, shift) for every shift that applies to each dataset."""
    out = []
    for name in DATASETS:
        ds = load_dataset(name)
        out += [(name, s) for s in available_shifts(ds.spatial_dims,
                                                    bounded=ds.value_range is not None)]
    return out


PAIRS = _pairs()
MIN_CHANGE = 0.03   # severity 1 changes mean|x| by at least 3%
MIN_STEP = 1.05     # and each severity changes it at least 5% more than the one before


@pytest.mark.parametrize("dataset, name", PAIRS)
def test_every_severity_changes_the_data_measurably_and_more_than_the_last(dataset, name):
    """On 8x8 digits, gaussian_blur at severities 1-3 used to change mean|x| by 0, 1e-5
    and 2e-3 (sigma 0.14-0.29 px): the "shifted" sets were the test set."""
    ds = load_dataset(dataset)
    x = ds.x_test[:150]
    scale = float(x.abs().mean())
    change = [float((apply_shift(x, name, s, seed=0, value_range=ds.value_range) - x)
                    .abs().mean()) / scale for s in SEVERITIES]
    assert change[0] >= MIN_CHANGE, change
    assert all(b >= MIN_STEP * a for a, b in zip(change, change[1:], strict=False)), change


def test_blur_width_has_a_pixel_floor_and_scales_with_the_side():
    from gensight.data.shifts import gaussian_blur

    rng = np.random.default_rng(0)
    for side, sigmas in ((8, (0.45, 0.55, 0.65, 0.85, 1.1)),
                         (28, (0.504, 0.756, 1.008, 1.512, 2.016))):
        x = np.zeros((1, 1, side, side))
        x[0, 0, side // 2, side // 2] = 1.0
        for severity, sigma in zip(SEVERITIES, sigmas, strict=True):
            want = ndimage.gaussian_filter(x, (0, 0, sigma, sigma), mode="constant")
            np.testing.assert_allclose(gaussian_blur(x, severity, rng), want, atol=1e-12)


def test_translation_moves_centre_of_mass_further_with_severity():
    x = load_dataset("mnist5k").x_test[:32]

    def com(t):
        return np.array([ndimage.center_of_mass(img[0]) for img in t.numpy()])

    base = com(x)
    moved = [np.linalg.norm(com(apply_shift(x, "translation", s)) - base, axis=1).mean()
             for s in SEVERITIES]
    assert all(a < b for a, b in zip(moved, moved[1:], strict=False)), moved
    # 2% and 10% of a 28-pixel side: 0.56 and 2.8 pixels along each axis -> x sqrt(2)
    assert 0.6 < moved[0] < 1.0 and 3.4 < moved[-1] < 4.4, moved


def test_golden_values_for_simple_shifts():
    x = torch.tensor([[[[0.0, 0.2], [0.4, 0.6]]]])
    assert torch.allclose(apply_shift(x, "brightness", 3), torch.tensor(
        [[[[0.3, 0.5], [0.7, 0.9]]]]))
    # contrast severity 1: factor 0.75 around the image mean 0.3
    assert torch.allclose(apply_shift(x, "contrast", 1), torch.tensor(
        [[[[0.075, 0.225], [0.375, 0.525]]]]))
    big = torch.ones(1, 1, 100, 100)
    dropped = apply_shift(big, "pixel_dropout", 4)  # p = 0.3
    assert abs(float((dropped == 0).float().mean()) - 0.3) < 0.03


def test_one_dimensional_inputs():
    x = load_dataset("mnist1d").x_test[:16]
    names = available_shifts(1, bounded=False)
    assert "rotation" not in names and "shot_noise" not in names and "fog" not in names
    for name in names:
        out = apply_shift(x, name, 3, value_range=None)
        assert out.shape == x.shape and not torch.equal(out, x)
    with pytest.raises(GensightError, match=r"applies to \[2\]-D inputs; got 1-D"):
        apply_shift(x, "rotation", 1, value_range=None)
    with pytest.raises(GensightError, match="known value range"):
        apply_shift(x, "shot_noise", 1, value_range=None)


def test_bad_names_and_severities(images):
    with pytest.raises(GensightError, match="known shifts: gaussian_noise, shot_noise"):
        apply_shift(images, "snow", 1)
    with pytest.raises(GensightError, match="severity must be one of"):
        apply_shift(images, "fog", 6)
    with pytest.raises(GensightError, match=r"\(N, C, \*spatial\)"):
        apply_shift(images[0, 0], "fog", 1)


def test_shift_fingerprint_is_stable_and_tells_shifts_apart():
    from gensight.data.shifts import shift_fingerprint

    sets = [("gaussian_blur", 1), ("fog", 3)]
    a = shift_fingerprint((1, 8, 8), sets, seed=0)
    assert a == shift_fingerprint((1, 8, 8), list(sets), seed=0)  # deterministic
    assert len({a, shift_fingerprint((1, 8, 8), [("gaussian_blur", 2), ("fog", 3)]),
                shift_fingerprint((1, 8, 8), sets, seed=1),
                shift_fingerprint((1, 28, 28), sets)}) == 4
    assert shift_fingerprint((1, 40), [("gaussian_noise", 2)], bounded=False) != \
        shift_fingerprint((1, 40), [("gaussian_noise", 3)], bounded=False)
