"""Per-domain scaling laws for ADO (arXiv 2410.11820, Sec. 3.1).

The labels (1) and (2) are ours (in the order of the paper's Sec. 3.1).

Each domain's loss is modelled as a power law of the number of samples ``n`` seen from it,

    L(n) = eps + beta * n^(-alpha)                                        (1)

and its learning speed is the derivative

    dL/dn = -(alpha / n) * (L(n) - eps)                                   (2)

The fit is done in log space, ``log L = logsumexp(log beta - alpha log n, log eps)``, with a
robust (Huber) loss on the residuals, from many starting points, on losses smoothed over time
(Savitzky-Golay, window 101, order 3), as in the paper and its authors' reference code.
numpy and scipy only, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gensight.errors import GensightError


class MixingError(GensightError, ValueError):
    """Bad input to a data-mixing policy, sampler or training run."""


@dataclass(frozen=True)
class PowerLaw:
    """``L(n) = eps + beta * n^(-alpha)`` (law (1))."""

    eps: float
    beta: float
    alpha: float

    def __call__(self, n) -> np.ndarray:
        n = np.asarray(n, dtype=np.float64)
        return self.eps + self.beta * n ** (-self.alpha)

    def slope(self, n) -> np.ndarray:
        """``dL/dn = -(alpha/n) (L(n) - eps)`` (law (2)); negative while the loss falls."""
        n = np.asarray(n, dtype=np.float64)
        return -(self.alpha / n) * (self(n) - self.eps)

    def as_array(self) -> np.ndarray:
        return np.array([self.eps, self.beta, self.alpha], dtype=np.float64)


# bounds of (log beta, log eps, alpha); the paper keeps alpha in [0, 0.8] with a penalty; we use
# box bounds, with alpha up to 1.5 because byte-level curves of tiny models fall faster
_LO = np.array([-20.0, math.log(1e-4), 0.0])
_HI = np.array([30.0, math.log(1e3), 1.5])
_DELTA = 1e-3  # Huber threshold on log-loss residuals, as in the paper's fit


def _predict_log(theta: np.ndarray, logn: np.ndarray) -> np.ndarray:
    """log L for parameters ``theta`` (S, 3) = (log beta, log eps, alpha) at ``logn`` (T,):
    (S, T)."""
    a = theta[:, :1] - theta[:, 2:3] * logn[None, :]
    e = np.broadcast_to(theta[:, 1:2], a.shape)
    return np.logaddexp(a, e)


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


def _start_grid(loss: np.ndarray) -> np.ndarray:
    """The grid of starting points (S, 3): 8 x 8 x 8 = 512 starts as in the paper, with
    ``log eps`` spread below the smallest observed loss."""
    lmin = float(np.min(loss))
    log_beta = np.linspace(-2.0, 6.0, 8)
    log_eps = np.log(lmin) + np.log(np.linspace(0.05, 0.98, 8))
    alpha = np.linspace(0.05, 1.2, 8)
    g = np.stack(np.meshgrid(log_beta, log_eps, alpha, indexing="ij"), -1).reshape(-1, 3)
    return np.clip(g, _LO + 1e-9, _HI - 1e-9)


def fit_power_law(n, loss, *, polish: int = 2, max_nfev: int = 50, delta: float = _DELTA,
                  init: PowerLaw | None = None) -> PowerLaw:
    """Fit law (1) to losses ``loss`` (T,) observed after ``n`` (T,) samples.

    The objective is the Huber loss (threshold ``delta``) of ``log L_hat(n) - log loss``. All
    512 grid starts (:func:`_start_grid`) are scored at once; the ``polish`` best (and ``init``,
    e.g. the previous fit, when given) are refined with ``scipy.optimize.least_squares``
    (``loss='huber'``, box bounds, at most ``max_nfev`` evaluations each, which bounds the cost
    of a refit), and the best result is kept.
    The paper runs L-BFGS from every start; screening the grid first gives the same minimum at a
    fraction of the cost. Raises :class:`MixingError` on fewer than 3 points, non-positive ``n``,
    or non-finite/non-positive losses."""
    from scipy.optimize import least_squares

    n = np.asarray(n, dtype=np.float64).ravel()
    loss = np.asarray(loss, dtype=np.float64).ravel()
    if n.shape != loss.shape:
        raise MixingError(f"fit_power_law: n has {n.size} points but loss has {loss.size}")
    if n.size < 3:
        raise MixingError(f"fit_power_law: needs at least 3 points; got {n.size}")
    if not np.all(np.isfinite(loss)) or np.any(loss <= 0):
        raise MixingError("fit_power_law: losses must be finite and positive; got "
                          f"min {np.nanmin(loss):g}, {int(np.sum(~np.isfinite(loss)))} non-finite")
    if np.any(n <= 0):
        raise MixingError(f"fit_power_law: sample counts must be positive; got min {n.min():g}")
    logn, logl = np.log(n), np.log(loss)
    starts = _start_grid(loss)
    if init is not None and np.all(np.isfinite(init.as_array())) and init.beta > 0 \
            and init.eps > 0:
        x0 = np.array([math.log(init.beta), math.log(init.eps), init.alpha])
        starts = np.vstack([starts, np.clip(x0, _LO + 1e-9, _HI - 1e-9)[None]])
    score = _huber(_predict_log(starts, logn) - logl[None, :], delta).sum(1)
    best_x, best_cost = None, np.inf

    def resid(th):
        return _predict_log(th[None, :], logn)[0] - logl

    def jac(th):
        a = th[0] - th[2] * logn
        w = 1.0 / (1.0 + np.exp(th[1] - a))  # share of the power-law term, d/d(log beta)
        return np.stack([w, 1.0 - w, -w * logn], axis=1)

    chosen = list(np.argsort(score)[:polish])
    if init is not None and len(starts) > 512 and len(starts) - 1 not in chosen:
        chosen.append(len(starts) - 1)
    for i in chosen:
        res = least_squares(resid, starts[i], jac=jac, bounds=(_LO, _HI), loss="huber",
                            f_scale=delta, x_scale="jac", max_nfev=max_nfev)
        cost = float(_huber(res.fun, delta).sum())
        if cost < best_cost:
            best_x, best_cost = res.x, cost
    return PowerLaw(eps=float(np.exp(best_x[1])), beta=float(np.exp(best_x[0])),
                    alpha=float(best_x[2]))


def smooth_losses(loss: np.ndarray, window: int = 101, order: int = 3) -> np.ndarray:
    """Savitzky-Golay smoothing of a training-loss curve along its last axis (T,) or (K, T),
    as the paper smooths the noisy per-step losses before fitting (window 101, order 3). The
    window shrinks to the largest odd length <= T for short curves; below ``order + 2`` points
    the curve is returned unchanged. Smoothed values are floored at 1e-6 (the fit takes logs)."""
    from scipy.signal import savgol_filter

    loss = np.asarray(loss, dtype=np.float64)
    t = loss.shape[-1]
    w = min(window, t if t % 2 else t - 1)
    if w < order + 2:
        return loss.copy()
    return np.maximum(savgol_filter(loss, w, order, axis=-1), 1e-6)
