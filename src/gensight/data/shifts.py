"""Distribution shifts (corruptions) at severities 1-5, made locally with NumPy/SciPy.

The corruptions follow the spirit of CIFAR-10-C / MNIST-C (Hendrycks & Dietterich 2019; Mu &
Gilmer 2019). Spatial magnitudes (blur width, translation, elastic displacement and smoothness,
fog smoothness) are fractions of the input's side length, so that an 8x8 digit and a 28x28
MNIST digit are shifted comparably, with a floor in pixels where a fraction of a small side
would fall below what the pixel grid can show: a Gaussian blur of sigma 0.018 x 8 = 0.14 px
weighs each neighbour by exp(-1 / (2 sigma^2)) ~ 1e-11 and leaves an 8x8 image unchanged, so
blur widths are at least 0.45-1.1 px (severities 1-5). Photometric magnitudes (noise,
contrast, brightness, dropout) and rotation angles do not depend on the size.

Every severity changes the data measurably, and more than the severity before: on each
dataset a shift applies to, the mean absolute change ``mean|shift(x) - x|`` is at least 3% of
the clean data's ``mean|x|`` at severity 1 and grows by at least 5% from one severity to the
next (translation: the displacement in pixels grows instead; the pixel change saturates once
a stroke no longer overlaps its shifted copy). ``tests/data/test_shifts.py`` checks this, and
that the mean accuracy of small trained zoos falls with severity.

Each shift takes inputs ``(N, C, *spatial)`` and returns an array of the same shape and dtype.
Randomness comes from the ``seed`` argument only.

The registry lists the shifts by name (:data:`SHIFTS`); :func:`get_shift` errors on an
unknown name with the list of known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from gensight.errors import GensightError

SEVERITIES = (1, 2, 3, 4, 5)

ShiftFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Shift:
    """A named corruption; ``dims`` are the spatial dimensionalities it applies to."""

    name: str
    fn: ShiftFn
    dims: frozenset[int]
    description: str
    bounded_only: bool = False  # needs inputs in a known [lo, hi] range (e.g. shot noise)


def _level(values: tuple[float, ...], severity: int) -> float:
    return values[severity - 1]


def _side(x: np.ndarray) -> int:
    return max(x.shape[2:])


def _pixels(fractions: tuple[float, ...], floors: tuple[float, ...], severity: int,
            x: np.ndarray) -> float:
    """A spatial scale in pixels: ``fraction x side``, but at least ``floor`` pixels."""
    return max(_level(fractions, severity) * _side(x), _level(floors, severity))


def _spatial_axes(x: np.ndarray) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


def gaussian_noise(x, severity, rng):
    sigma = _level((0.08, 0.12, 0.18, 0.26, 0.38), severity)
    return x + rng.normal(0.0, sigma, x.shape)


def shot_noise(x, severity, rng):
    photons = _level((60.0, 25.0, 12.0, 5.0, 3.0), severity)
    return rng.poisson(np.clip(x, 0, None) * photons) / photons


def gaussian_blur(x, severity, rng):
    # 28x28: sigma 0.50-2.0 px; 8x8: the floors, 0.45-1.1 px (a 14-63% change of mean|x|)
    sigma = _pixels((0.018, 0.027, 0.036, 0.054, 0.072), (0.45, 0.55, 0.65, 0.85, 1.1),
                    severity, x)
    sigmas = (0, 0) + (sigma,) * (x.ndim - 2)
    return ndimage.gaussian_filter(x, sigmas, mode="constant")


def rotation(x, severity, rng):
    degrees = _level((10.0, 20.0, 30.0, 45.0, 60.0), severity)
    out = np.empty_like(x)
    signs = rng.choice((-1.0, 1.0), size=len(x))
    for i in range(len(x)):
        out[i] = ndimage.rotate(x[i], signs[i] * degrees, axes=(-2, -1), reshape=False,
                                order=1, mode="constant")
    return out


def translation(x, severity, rng):
    # 2-10% of the side: 0.16-0.8 px on 8x8, 0.56-2.8 px on 28x28, 0.8-4 px on length 40.
    # Larger shifts take MLPs to chance (25% of 28 px: 4% accuracy), where accuracy no
    # longer falls with severity, and the pixel change saturates.
    frac = _level((0.02, 0.04, 0.06, 0.08, 0.1), severity)
    out = np.empty_like(x)
    offsets = rng.choice((-1.0, 1.0), size=(len(x), x.ndim - 2)) * frac * _side(x)
    for i in range(len(x)):
        out[i] = ndimage.shift(x[i], (0, *offsets[i]), order=1, mode="constant")
    return out


def contrast(x, severity, rng):
    factor = _level((0.75, 0.6, 0.45, 0.3, 0.2), severity)
    mean = x.mean(axis=_spatial_axes(x), keepdims=True)
    return (x - mean) * factor + mean


def brightness(x, severity, rng):
    return x + _level((0.1, 0.2, 0.3, 0.4, 0.5), severity)


def elastic(x, severity, rng):
    """Elastic deformation (Simard et al. 2003): a smoothed random displacement field."""
    alpha = _level((0.04, 0.07, 0.1, 0.13, 0.16), severity) * _side(x)
    smooth = 0.12 * _side(x)
    spatial = x.shape[2:]
    grid = np.meshgrid(*(np.arange(s, dtype=np.float64) for s in spatial), indexing="ij")
    out = np.empty_like(x)
    for i in range(len(x)):
        coords = []
        for g in grid:
            field = ndimage.gaussian_filter(rng.uniform(-1, 1, spatial), smooth, mode="constant")
            field *= alpha / max(np.abs(field).max(), 1e-12)
            coords.append(g + field)
        for c in range(x.shape[1]):
            out[i, c] = ndimage.map_coordinates(x[i, c], coords, order=1, mode="constant")
    return out


def fog(x, severity, rng):
    """Fog-like haze: blend towards a smooth, bright random field."""
    amount = _level((0.2, 0.3, 0.4, 0.5, 0.6), severity)
    spatial = x.shape[2:]
    haze = ndimage.gaussian_filter(rng.uniform(0, 1, (len(x), 1, *spatial)),
                                   (0, 0) + (0.15 * _side(x),) * len(spatial))
    lo = haze.min(axis=_spatial_axes(x), keepdims=True)
    hi = haze.max(axis=_spatial_axes(x), keepdims=True)
    haze = 0.5 + 0.5 * (haze - lo) / np.maximum(hi - lo, 1e-12)
    return x * (1 - amount) + amount * haze


def pixel_dropout(x, severity, rng):
    p = _level((0.05, 0.1, 0.2, 0.3, 0.45), severity)
    keep = rng.random((x.shape[0], 1, *x.shape[2:])) >= p
    return x * keep


SHIFTS: dict[str, Shift] = {
    s.name: s
    for s in (
        Shift("gaussian_noise", gaussian_noise, frozenset({1, 2}), "additive Gaussian noise"),
        Shift("shot_noise", shot_noise, frozenset({1, 2}), "Poisson (photon) noise",
              bounded_only=True),
        Shift("gaussian_blur", gaussian_blur, frozenset({1, 2}), "Gaussian blur"),
        Shift("rotation", rotation, frozenset({2}), "rotation by +-10..60 degrees"),
        Shift("translation", translation, frozenset({1, 2}), "shift by 2..10% of the side"),
        Shift("contrast", contrast, frozenset({1, 2}), "contrast reduction around the mean"),
        Shift("elastic", elastic, frozenset({1, 2}), "elastic deformation"),
        Shift("brightness", brightness, frozenset({1, 2}), "brightness increase"),
        Shift("fog", fog, frozenset({1, 2}), "fog-like haze", bounded_only=True),
        Shift("pixel_dropout", pixel_dropout, frozenset({1, 2}), "random pixels set to zero"),
    )
}


def get_shift(name: str) -> Shift:
    try:
        return SHIFTS[name]
    except KeyError:
        raise GensightError(
            f"unknown shift {name!r}; known shifts: {', '.join(SHIFTS)}") from None


def apply_shift(
    x: Tensor | np.ndarray,
    name: str,
    severity: int,
    *,
    seed: int = 0,
    value_range: tuple[float, float] | None = (0.0, 1.0),
) -> Tensor:
    """Corrupt ``x: (N, C, *spatial)`` with shift ``name`` at ``severity`` (1-5).

    Outputs are clipped to ``value_range`` when it is given (images in [0, 1]); pass
    ``None`` for unbounded inputs such as standardized sequences.
    """
    shift = get_shift(name)
    if severity not in SEVERITIES:
        raise GensightError(f"severity must be one of {SEVERITIES}; got {severity!r}")
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if arr.ndim < 3:
        raise GensightError(
            f"shift inputs must be (N, C, *spatial); got shape {tuple(arr.shape)}")
    dims = arr.ndim - 2
    if dims not in shift.dims:
        raise GensightError(
            f"shift {name!r} applies to {sorted(shift.dims)}-D inputs; got {dims}-D inputs")
    if shift.bounded_only and value_range is None:
        raise GensightError(f"shift {name!r} needs inputs with a known value range")
    rng = np.random.default_rng([seed, severity, _name_key(name)])
    out = shift.fn(arr.astype(np.float64), severity, rng)
    if value_range is not None:
        out = np.clip(out, *value_range)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=arr.dtype))


def _name_key(name: str) -> int:
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little")


def available_shifts(spatial_dims: int, bounded: bool = True) -> tuple[str, ...]:
    """Names of the shifts that apply to inputs of ``spatial_dims`` dimensions."""
    return tuple(
        s.name for s in SHIFTS.values()
        if spatial_dims in s.dims and (bounded or not s.bounded_only)
    )


def shift_fingerprint(input_shape: tuple[int, ...], sets: list[tuple[str, int]], *,
                      seed: int = 0, bounded: bool = True) -> str:
    """A hash of what :func:`apply_shift` does to a fixed probe batch of 4 inputs of
    ``input_shape`` for each ``(shift, severity)`` in ``sets``: it changes when a shift's
    definition changes, so a zoo can tell that its shifted test sets were made differently.
    Outputs are rounded to 1e-6 before hashing (the same on any CPU)."""
    import hashlib

    probe_rng = np.random.default_rng(20261123)
    probe = probe_rng.uniform(0.0, 1.0, (4, *input_shape)) if bounded else \
        probe_rng.normal(size=(4, *input_shape))
    h = hashlib.sha256()
    for name, severity in sets:
        out = apply_shift(probe.astype(np.float32), name, severity, seed=seed,
                          value_range=(0.0, 1.0) if bounded else None)
        h.update(f"{name}-{severity}".encode())
        h.update((np.round(out.numpy().astype(np.float64), 6) + 0.0).tobytes())  # no -0.0
    return h.hexdigest()[:16]
