"""One registry of complexity measures (arXiv 1912.02178, App. C), each citing its definition.

Notation: ``d`` weighted layers ``W_1..W_d`` (Linear/Conv; biases are not part of the norms),
``w`` all parameters as one vector (``omega`` of them), ``w0`` at initialization, ``gamma`` the
10th percentile of the training output margins, ``m`` training-set size, ``delta = 0.1``,
``sigma'``/``alpha'`` the noise scale / box radius found by search (see
:func:`gensight.measures.core.pacbayes_sigma`, :func:`~gensight.measures.core.sharpness_alpha`).
Larger values predict worse generalization for every measure.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from gensight.measures.core import (
    EPSILON,
    SHARPNESS_RESTARTS,
    SHARPNESS_STEPS,
    MeasureError,
    MemberData,
    NotApplicable,
    flat_params,
    layer_input_shapes,
    margin_percentile,
    operator_norm,
    pacbayes_sigma,
    sharpness_alpha,
    weight_layers,
)

DELTA = 0.1


@dataclass(frozen=True)
class Measure:
    name: str
    fn: Callable[[MemberData, dict], float]
    needs_data: bool
    needs_init: bool
    cites: str
    cost: str = "cheap"


MEASURES: dict[str, Measure] = {}


def register(name: str, cites: str, *, data: bool = False, init: bool = False,
             cost: str = "cheap"):
    def wrap(fn):
        MEASURES[name] = Measure(name, fn, data, init, cites, cost)
        return fn
    return wrap


def available_measures(cheap_only: bool = False) -> list[str]:
    return [n for n, m in MEASURES.items() if not cheap_only or m.cost == "cheap"]


def get_measure(name: str) -> Measure:
    if not isinstance(name, str) or name not in MEASURES:
        import difflib

        close = difflib.get_close_matches(name, list(MEASURES), n=1) \
            if isinstance(name, str) else []
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise MeasureError(f"unknown measure {name!r}; {hint}known: {', '.join(MEASURES)}")
    return MEASURES[name]


# ---------------------------------------------------------------- shared, cached quantities

def _cached(cache: dict, key, make):
    """``make()`` once per member and key; a :class:`NotApplicable` it raises is cached too (the
    searches of several measures share one sigma' / alpha')."""
    if key not in cache:
        try:
            cache[key] = make()
        except NotApplicable as exc:
            cache[key] = exc
    if isinstance(cache[key], NotApplicable):
        raise cache[key]
    return cache[key]


def _operator_norms(model: nn.Module, d: MemberData) -> list[float]:
    """Spectral norms of ``model``'s weighted layers; conv layers need ``d.x`` for shapes."""
    layers = weight_layers(model)
    shapes = {}
    if any(not isinstance(layer, nn.Linear) for layer in layers):
        x, _ = d.need_data("spectral norms of conv layers")
        shapes = layer_input_shapes(model, x)
    return [operator_norm(layer, shapes.get(layer)) for layer in layers]


def _spec_norms(d: MemberData, cache: dict) -> list[float]:
    return _cached(cache, "spec", lambda: _operator_norms(d.model, d))


def _difference(d: MemberData, cache: dict, name: str) -> nn.Module:
    """The network with parameters ``w - w0`` (built once per member)."""
    init = d.need_init(name)

    def make():
        diff = copy.deepcopy(d.model)
        with torch.no_grad():
            for p, p0 in zip(diff.parameters(), init.parameters(), strict=True):
                p.sub_(p0)
        return diff
    return _cached(cache, "difference", make)


def _dist_spec_norms(d: MemberData, cache: dict) -> list[float]:
    return _cached(cache, "dist_spec",
                   lambda: _operator_norms(_difference(d, cache, "dist.spec.init"), d))


def _fro(model: nn.Module) -> list[float]:
    return [float(layer.weight.detach().double().norm()) for layer in weight_layers(model)]


def _margin(d: MemberData, cache: dict, name: str) -> float:
    x, y = d.need_data(name)
    gamma = _cached(cache, "margin", lambda: margin_percentile(d.model, x, y))
    if gamma <= 0:
        raise NotApplicable(f"{name}: the 10th-percentile output margin is {gamma:.3g} <= 0 "
                            "(more than 10% of the training examples are misclassified)")
    return gamma


def _m(d: MemberData) -> int:
    return d.n_train or (int(d.y.shape[0]) if d.y is not None else 1)


# ------------------------------------------------------------------ VC-dimension / size

@register("params", "arXiv 1912.02178 App. C.1: the number of parameters omega")
def _params(d, cache):
    return float(sum(p.numel() for p in d.model.parameters()))


# ------------------------------------------------------------------------- norm based

@register("log.prod.of.spec", "App. C.4: log prod_i ||W_i||_2^2 (exact operator norms)")
def _log_prod_spec(d, cache):
    return float(sum(2 * math.log(s) for s in _spec_norms(d, cache)))


@register("log.sum.of.spec", "App. C.4: log(d (prod_i ||W_i||_2^2)^(1/d))")
def _log_sum_spec(d, cache):
    norms = _spec_norms(d, cache)
    return math.log(len(norms)) + _log_prod_spec(d, cache) / len(norms)


@register("log.prod.of.fro", "App. C.4: log prod_i ||W_i||_F^2")
def _log_prod_fro(d, cache):
    return float(sum(2 * math.log(f) for f in _fro(d.model)))


@register("log.sum.of.fro", "App. C.4: log(d (prod_i ||W_i||_F^2)^(1/d))")
def _log_sum_fro(d, cache):
    f = _fro(d.model)
    return math.log(len(f)) + _log_prod_fro(d, cache) / len(f)


@register("param.norm", "App. C.4: sum_i ||W_i||_F^2")
def _param_norm(d, cache):
    return float(sum(f ** 2 for f in _fro(d.model)))


@register("fro.dist", "App. C.4: sum_i ||W_i - W_i^0||_F^2 (distance from initialization)",
          init=True)
def _fro_dist(d, cache):
    return float(sum(f ** 2 for f in _fro(_difference(d, cache, "fro.dist"))))


@register("dist.spec.init", "App. C.4: sum_i ||W_i - W_i^0||_2^2", init=True)
def _dist_spec(d, cache):
    return float(sum(s ** 2 for s in _dist_spec_norms(d, cache)))


@register("path.norm", "App. C.4: sum over outputs of f_{w^2}(1), the network with every "
          "parameter squared applied to an all-ones input (ReLU networks)")
def _path_norm(d, cache):
    acts = [m for m in d.model.modules() if isinstance(m, (nn.Tanh, nn.Sigmoid, nn.GELU,
                                                            nn.ELU, nn.SiLU))]
    if acts:
        raise NotApplicable(f"path.norm applies to ReLU networks only; this one uses "
                            f"{type(acts[0]).__name__}")
    sq = copy.deepcopy(d.model).eval()
    with torch.no_grad():
        for p in sq.parameters():
            p.pow_(2)
    x = d.x
    if x is None:
        first = weight_layers(d.model)[0]
        if not isinstance(first, nn.Linear):
            raise MeasureError("path.norm of a CNN needs an example input for its shape")
        shape = (first.in_features,)
    else:
        shape = tuple(x.shape[1:])
    with torch.no_grad():
        return float(sq(torch.ones(1, *shape)).sum())


MIN_TAIL = 10
"""Fewest eigenvalues a power-law tail may have (see :func:`power_law_fit`)."""


@register("alpha", "Martin & Mahoney (arXiv 1901.08276): mean over layers of the power-law "
          "exponent of the eigenvalues of W^T W (continuous MLE, Clauset et al. 2009 Eq. 3.1, "
          f"on the tail above the KS-chosen x_min, tails of >= {MIN_TAIL} eigenvalues; layers "
          f"with fewer than {MIN_TAIL} nonzero eigenvalues are left out); data-free")
def _alpha(d, cache):
    alphas, small = [], []
    for layer in weight_layers(d.model):
        w = layer.weight.detach().double().reshape(layer.weight.shape[0], -1)
        eig = torch.linalg.svdvals(w).pow(2).numpy()
        if np.count_nonzero(eig > 1e-12 * eig.max()) < MIN_TAIL:
            small.append(f"{type(layer).__name__}{tuple(layer.weight.shape)}")
            continue
        alphas.append(power_law_alpha(eig))
    if not alphas:
        raise NotApplicable(f"alpha: no layer has {MIN_TAIL} nonzero eigenvalues to fit a power "
                            f"law to ({', '.join(small)})")
    return float(np.mean(alphas))


class PowerLawFit(NamedTuple):
    """A power-law fit of a tail: exponent ``alpha``, ``xmin``, tail length ``n_tail`` and the
    Kolmogorov-Smirnov distance ``ks`` between the tail and the fitted law."""

    alpha: float
    xmin: float
    n_tail: int
    ks: float


def power_law_fit(eigenvalues: np.ndarray, min_tail: int = MIN_TAIL) -> PowerLawFit:
    """Continuous power-law fit of the largest values (Clauset, Shalizi & Newman 2009): for
    each candidate ``x_min`` (a value with at least ``min_tail`` values at or above it), the
    maximum-likelihood exponent ``1 + n / sum log(l_i / x_min)`` of the tail ``l >= x_min``
    (their Eq. 3.1); the ``x_min`` whose tail is closest to its fitted law in Kolmogorov-
    Smirnov distance wins. Values <= 1e-12 of the largest are dropped.

    ``min_tail`` (default :data:`MIN_TAIL` = 10): the MLE's standard error is ``(alpha - 1) /
    sqrt(n)`` (Clauset et al. Eq. 3.2) and its bias ``(alpha - 1) / (n - 1)``, about 58% and
    50% of ``alpha - 1`` for a 3-value tail but 32% and 11% for 10 values. Without a minimum,
    the KS distance, which cannot resolve a handful of points, picks 3-5-value tails on small
    layers (on 3 of 8 digits MLPs' 10-eigenvalue output layers: alpha 3.8-10.6, where all 10
    eigenvalues give 1.4-1.7). The ``powerlaw`` package has no minimum (tails down to 2
    values) and by default keeps alpha in (0, 3) instead, which would cap the heavy-tail
    exponents (2-6 in Martin & Mahoney) this measure is about; given the same ``x_min``
    candidates and no alpha range, its ``Fit(..., discrete=False)`` finds the same ``x_min``
    and alpha (tested).

    Raises :class:`NotApplicable` with fewer than ``min_tail`` nonzero values."""
    if min_tail < 2:
        raise MeasureError(f"a power-law tail needs min_tail >= 2, got {min_tail}")
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    lam = np.sort(eigenvalues[eigenvalues > 1e-12 * eigenvalues.max()])
    if lam.size < min_tail:
        raise NotApplicable(f"alpha needs at least {min_tail} nonzero eigenvalues per layer, "
                            f"got {lam.size}")
    best = PowerLawFit(np.nan, np.nan, 0, np.inf)
    for i in range(lam.size - min_tail + 1):
        if i and lam[i] == lam[i - 1]:
            continue            # the tail of a repeated value starts at its first copy
        tail = lam[i:]
        logs = np.log(tail / tail[0])
        if logs.sum() <= 0:
            continue
        a = 1 + tail.size / logs.sum()
        values, first = np.unique(tail, return_index=True)   # empirical CDF: share below
        ks = float(np.max(np.abs(first / tail.size - (1 - (values / tail[0]) ** (1 - a)))))
        if ks < best.ks:
            best = PowerLawFit(float(a), float(tail[0]), int(tail.size), ks)
    if not np.isfinite(best.alpha):
        raise NotApplicable("alpha: the eigenvalue tail is degenerate")
    return best


def power_law_alpha(eigenvalues: np.ndarray, min_tail: int = MIN_TAIL) -> float:
    """The exponent of :func:`power_law_fit` (see there for ``min_tail`` and the method)."""
    return power_law_fit(eigenvalues, min_tail).alpha


# ---------------------------------------------------------------------- margin based

@register("inverse.margin", "App. C.3: 1 / gamma^2, gamma the 10th-percentile output margin",
          data=True)
def _inverse_margin(d, cache):
    return 1.0 / _margin(d, cache, "inverse.margin") ** 2


@register("log.prod.of.spec.over.margin", "App. C.4: log(prod_i ||W_i||_2^2 / gamma^2) "
          "(spectral-margin)", data=True)
def _spec_margin(d, cache):
    return _log_prod_spec(d, cache) - 2 * math.log(_margin(d, cache, "spec-margin"))


@register("log.sum.of.spec.over.margin", "App. C.4: log(d (prod_i ||W_i||_2^2 / gamma^2)^"
          "(1/d))", data=True)
def _sum_spec_margin(d, cache):
    n = len(weight_layers(d.model))
    return math.log(n) + _spec_margin(d, cache) / n


@register("log.prod.of.fro.over.margin", "App. C.4: log(prod_i ||W_i||_F^2 / gamma^2) "
          "(Frobenius-margin)", data=True)
def _fro_margin(d, cache):
    return _log_prod_fro(d, cache) - 2 * math.log(_margin(d, cache, "fro-margin"))


@register("log.sum.of.fro.over.margin", "App. C.4: log(d (prod_i ||W_i||_F^2 / gamma^2)^(1/d))",
          data=True)
def _sum_fro_margin(d, cache):
    n = len(weight_layers(d.model))
    return math.log(n) + _fro_margin(d, cache) / n


@register("path.norm.over.margin", "App. C.4: path.norm / gamma^2", data=True)
def _path_margin(d, cache):
    return _path_norm(d, cache) / _margin(d, cache, "path.norm.over.margin") ** 2


@register("log.spec.orig", "App. C.4 (Bartlett et al. 2017): log(prod_i ||W_i||_2^2 "
          "sum_i ||W_i||_F^2 / ||W_i||_2^2 / gamma^2)", data=True)
def _spec_orig(d, cache):
    spec, fro = _spec_norms(d, cache), _fro(d.model)
    ratio = sum(f ** 2 / s ** 2 for f, s in zip(fro, spec, strict=True))
    return _spec_margin(d, cache) + math.log(ratio)


@register("log.spec.init", "App. C.4: log(prod_i ||W_i||_2^2 sum_i ||W_i - W_i^0||_F^2 / "
          "||W_i||_2^2 / gamma^2)", data=True, init=True)
def _spec_init(d, cache):
    spec = _spec_norms(d, cache)
    dist = _fro(_difference(d, cache, "log.spec.init"))
    ratio = sum(f ** 2 / s ** 2 for f, s in zip(dist, spec, strict=True))
    return _spec_margin(d, cache) + math.log(ratio)


# ------------------------------------------------------------- flatness / PAC-Bayes

SEARCH = {"draws": 10, "points": 8, "rtol": 0.01, "target_drop": 0.1,
          "restarts": SHARPNESS_RESTARTS, "steps": SHARPNESS_STEPS}
"""Settings of the sigma / alpha searches (change before computing to trade cost for
precision); ``rtol``, ``restarts`` and ``steps`` are the alpha' search's (see
:func:`~gensight.measures.core.sharpness_alpha` for what the defaults were chosen by)."""


def _sigma(d: MemberData, cache: dict, magnitude: bool) -> float:
    x, y = d.need_data("pacbayes")
    return _cached(cache, ("sigma", magnitude), lambda: pacbayes_sigma(
        d.model, x, y, magnitude=magnitude, target_drop=SEARCH["target_drop"],
        draws=SEARCH["draws"], points=SEARCH["points"])[0])


def _alpha_box(d: MemberData, cache: dict, magnitude: bool) -> float:
    x, y = d.need_data("sharpness")
    return _cached(cache, ("alpha", magnitude), lambda: sharpness_alpha(
        d.model, x, y, magnitude=magnitude, target_drop=SEARCH["target_drop"],
        restarts=SEARCH["restarts"], steps=SEARCH["steps"], rtol=SEARCH["rtol"])[0])


def _w(d: MemberData, origin: str) -> torch.Tensor:
    w = flat_params(d.model).double()
    if origin == "init":
        w = w - flat_params(d.need_init("init-based measure")).double()
    return w


def _plain_bound(d, scale: float, origin: str, sharp: bool) -> float:
    w = _w(d, origin)
    norm2 = float(w.pow(2).sum())
    factor = math.log(2 * w.numel()) if sharp else 1.0
    return norm2 * factor / (4 * scale ** 2) + math.log(_m(d) / DELTA) + 10


def _mag_bound(d, scale: float, origin: str, sharp: bool) -> float:
    """App. C.6, Eq. 56-59: ``1/4 sum_i log((eps^2 + (s^2 + c) ||v||^2 / omega) / (eps^2 + s^2
    (w_i - w0_i)^2)) + log(m/delta) + 10`` with ``v = w - w0`` (init) or ``w`` (orig), ``s =
    sigma'`` and ``c = 1`` (pac-bayes) or ``s = alpha'`` and ``c = 4 log(2 omega / delta)``
    (sharpness). The denominator is ``w - w0`` for both origins, as the paper prints it."""
    v = _w(d, origin)
    u = _w(d, "init") if origin == "orig" else v
    omega = v.numel()
    c = 4 * math.log(2 * omega / DELTA) if sharp else 1.0
    num = EPSILON ** 2 + (scale ** 2 + c) * float(v.pow(2).sum()) / omega
    den = EPSILON ** 2 + scale ** 2 * u.pow(2)
    return 0.25 * float(torch.log(num / den).sum()) + math.log(_m(d) / DELTA) + 10


_MAG_WHY = ("the denominator is |w_i - w0_i|^2 for both origins, as Eq. 56-59 print it (and "
            "the reference code, robust-generalization-measures, computes Eq. 56-57), so the "
            ".orig form needs the initialization too; a KL with a prior at 0 would give "
            "|w_i|^2 there instead, which on 8 digits MLPs was 18-44% lower and put .orig "
            "below .init")

for _origin in ("init", "orig"):
    def _pb(d, cache, origin=_origin):
        return _plain_bound(d, _sigma(d, cache, False), origin, sharp=False)

    def _pbm(d, cache, origin=_origin):
        d.need_init(f"pacbayes.mag.{origin}")
        return _mag_bound(d, _sigma(d, cache, True), origin, sharp=False)

    def _sh(d, cache, origin=_origin):
        return _plain_bound(d, _alpha_box(d, cache, False), origin, sharp=True)

    def _shm(d, cache, origin=_origin):
        d.need_init(f"sharpness.mag.{origin}")
        return _mag_bound(d, _alpha_box(d, cache, True), origin, sharp=True)

    w_of = "w - w0" if _origin == "init" else "w"
    eq_pbm, eq_shm = ("56", "58") if _origin == "init" else ("57", "59")
    register(f"pacbayes.{_origin}", f"App. C.5: ||{w_of}||^2 / (4 sigma'^2) + log(m/delta) "
             "+ 10", data=True, init=_origin == "init", cost="search")(_pb)
    register(f"pacbayes.mag.{_origin}", f"App. C.6, Eq. {eq_pbm}: 1/4 sum_i log((eps^2 + "
             f"(sigma'^2 + 1) ||{w_of}||^2/omega) / (eps^2 + sigma'^2 |w_i - w0_i|^2)) + "
             f"log(m/delta) + 10, eps = 1e-3; {_MAG_WHY}", data=True, init=True,
             cost="search")(_pbm)
    register(f"sharpness.{_origin}", f"App. C.5: ||{w_of}||^2 log(2 omega) / (4 alpha'^2) + "
             "log(m/delta) + 10", data=True, init=_origin == "init", cost="search")(_sh)
    register(f"sharpness.mag.{_origin}", f"App. C.6, Eq. {eq_shm}: 1/4 sum_i log((eps^2 + "
             f"(alpha'^2 + 4 log(2 omega/delta)) ||{w_of}||^2/omega) / (eps^2 + alpha'^2 "
             "|w_i - w0_i|^2)) + log(m/delta) + 10: the sharpness form, not pacbayes.mag's "
             f"(sigma'^2 + 1) with alpha' for sigma'; {_MAG_WHY}", data=True, init=True,
             cost="search")(_shm)


@register("pacbayes.flatness", "App. C.5: 1 / sigma'^2", data=True, cost="search")
def _pb_flat(d, cache):
    return 1.0 / _sigma(d, cache, False) ** 2


@register("pacbayes.mag.flatness", "App. C.5: 1 / sigma'^2, magnitude-aware noise", data=True,
          cost="search")
def _pbm_flat(d, cache):
    return 1.0 / _sigma(d, cache, True) ** 2


@register("sharpness.flatness", "App. C.5: 1 / alpha'^2", data=True, cost="search")
def _sh_flat(d, cache):
    return 1.0 / _alpha_box(d, cache, False) ** 2


@register("sharpness.mag.flatness", "App. C.5: 1 / alpha'^2, magnitude-aware box", data=True,
          cost="search")
def _shm_flat(d, cache):
    return 1.0 / _alpha_box(d, cache, True) ** 2


@dataclass
class MeasureResult:
    values: dict[str, float]
    notes: dict[str, str] = field(default_factory=dict)


def compute(data: MemberData, names: list[str], cache: dict | None = None) -> MeasureResult:
    """Compute ``names`` for one network; a measure that does not apply gives NaN and a note
    saying why (raised errors for missing inputs are not swallowed). ``cache`` may hold
    search results found elsewhere for this network (``("alpha", magnitude)``: alpha', or
    the :class:`NotApplicable` saying why there is none), as :func:`~gensight.measures.zoo.
    zoo_measures` does with the batched alpha' search."""
    measures = [get_measure(n) for n in names]
    cache = {} if cache is None else dict(cache)
    values, notes = {}, {}
    for m in measures:
        try:
            values[m.name] = float(m.fn(data, cache))
        except NotApplicable as exc:
            values[m.name] = float("nan")
            notes[m.name] = str(exc)
    return MeasureResult(values, notes)
