"""Data-mixing policies with one interface: ``policy()`` (the current mixture, a distribution
over K domains, shape (K,)) and ``update(domain_losses, counts)`` after every training step.

- :class:`ADO`: Adaptive Data Optimization (Jiang, Zhou, Feng, Malladi, Kolter, ICLR 2025,
  arXiv 2410.11820): per-domain scaling laws, learning-speed forecast, credit assignment, prior,
  time smoothing and an exploration floor.
- :class:`ODM`: Online Data Mixing (Albalak et al., arXiv 2312.02406), an EXP3 bandit whose
  reward is the (importance-weighted) training loss of a domain.
- :class:`Natural` (proportional to each domain's size) and :class:`Uniform` (1/K).

numpy and scipy only; no torch. Every policy has ``state_dict()`` / ``load_state_dict()``
(numpy arrays only) so that a training run can checkpoint it to safetensors and resume exactly.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np

from gensight.mixing.scaling import MixingError, PowerLaw, fit_power_law, smooth_losses


def floor_distribution(p, floor: float) -> np.ndarray:
    """The distribution ``q`` closest in shape to ``p`` (K,) with every ``q_k >= floor``:
    ``q_k = max(floor, c p_k)`` with ``c`` chosen so that ``sum q = 1`` (water-filling).

    ADO's minimum sampling probability (arXiv 2410.11820, Sec. 3; 0.01 in the authors' code).
    The authors clip at the floor and renormalise, which can leave a domain slightly below the
    floor; this exact version keeps the proportions of the unclipped domains and the floor.
    Needs ``0 <= floor <= 1/K``."""
    p = np.asarray(p, dtype=np.float64)
    k = p.size
    if not 0.0 <= floor <= 1.0 / k + 1e-12:
        raise MixingError(f"floor must be in [0, 1/K] = [0, {1.0 / k:g}]; got {floor!r}")
    if np.any(p < 0) or not np.all(np.isfinite(p)) or p.sum() <= 0:
        raise MixingError(f"floor_distribution: p must be finite, >= 0 and not all 0; got {p}")
    clipped = np.zeros(k, dtype=bool)
    for _ in range(k + 1):
        free = p[~clipped].sum()
        c = (1.0 - floor * clipped.sum()) / free if free > 0 else 0.0
        new = clipped | (c * p < floor)
        if np.array_equal(new, clipped):
            break
        clipped = new
    q = np.where(clipped, floor, c * p)
    return q / q.sum()


def _check_domains(domains: Sequence[str]) -> list[str]:
    domains = [str(d) for d in domains]
    if not domains:
        raise MixingError("a mixing policy needs at least one domain; got none")
    if len(set(domains)) != len(domains):
        raise MixingError(f"domain names must be unique; got {domains}")
    return domains


def _check_sizes(domains: list[str], sizes) -> np.ndarray:
    sizes = np.asarray(sizes, dtype=np.float64).ravel()
    if sizes.size != len(domains):
        raise MixingError(f"sizes has {sizes.size} entries for {len(domains)} domains")
    for d, s in zip(domains, sizes, strict=True):
        if not np.isfinite(s) or s <= 0:
            raise MixingError(f"domain {d!r} has no data (size {s:g}); every domain needs "
                              "training data")
    return sizes


class MixingPolicy:
    """Base class. ``domains``: K names. Subclasses set ``name``."""

    name = "base"

    def __init__(self, domains: Sequence[str]):
        self.domains = _check_domains(domains)
        self.k = len(self.domains)
        self.t = 0  # number of updates so far

    def policy(self) -> np.ndarray:
        """The current mixture, (K,), non-negative, summing to 1."""
        raise NotImplementedError

    def _check_update(self, domain_losses, counts) -> tuple[np.ndarray, np.ndarray]:
        """Validate one step's feedback: ``domain_losses`` (K,) mean training loss of each
        domain's samples in the batch (NaN allowed only where that domain's count is 0),
        ``counts`` (K,) number of samples of each domain in the batch."""
        losses = np.asarray(domain_losses, dtype=np.float64).ravel()
        counts = np.asarray(counts, dtype=np.float64).ravel()
        if losses.size != self.k or counts.size != self.k:
            raise MixingError(f"update: expected {self.k} domain losses and counts (domains "
                              f"{self.domains}); got {losses.size} and {counts.size}")
        if np.any(counts < 0) or not np.all(np.isfinite(counts)) or counts.sum() <= 0:
            raise MixingError(f"update: counts must be finite, >= 0, not all 0; got {counts}")
        bad = (counts > 0) & ~np.isfinite(losses)
        if np.any(bad):
            d = self.domains[int(np.flatnonzero(bad)[0])]
            raise MixingError(f"update: domain {d!r} has a non-finite loss "
                              f"({losses[self.domains.index(d)]}) at update {self.t + 1}; "
                              "training diverged or the loss is wrong")
        return losses, counts

    def update(self, domain_losses, counts) -> np.ndarray:
        """Record one training step and return the new mixture (K,)."""
        self._check_update(domain_losses, counts)
        self.t += 1
        return self.policy()

    # --- checkpointing: numpy arrays only --------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        return {"t": np.array([self.t], dtype=np.int64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.t = int(state["t"][0])


class Uniform(MixingPolicy):
    """``pi_k = 1/K`` at every step."""

    name = "uniform"

    def policy(self) -> np.ndarray:
        return np.full(self.k, 1.0 / self.k)


class Natural(MixingPolicy):
    """``pi_k = size_k / sum size`` (the natural proportions of the training data) at every
    step. ``sizes``: (K,) positive, e.g. the bytes of each domain's training split."""

    name = "natural"

    def __init__(self, domains: Sequence[str], sizes):
        super().__init__(domains)
        s = _check_sizes(self.domains, sizes)
        self.prior = s / s.sum()

    def policy(self) -> np.ndarray:
        return self.prior.copy()


class ODM(MixingPolicy):
    """Online Data Mixing (arXiv 2312.02406, Alg. 1): EXP3 with the training loss as reward.

    With ``eps_t = min(1/K, sqrt(ln K / (K t)))``, the mixture is

        pi_k(t) = (1 - K eps_t) exp(eps_{t-1} R_k) / sum_j exp(eps_{t-1} R_j) + eps_t

    and after a step the reward of each domain ``k`` that was in the batch is updated with its
    importance-weighted loss, smoothed: ``R_k <- a R_k + (1 - a) L_k / pi_k`` (``a = 0.9``).
    The paper draws one domain per batch; our batches mix domains, so every domain present in
    the batch is updated with the mean loss of its samples (a documented adaptation). At t = 0
    (no update yet) ``eps_t = 1/K``, i.e. the uniform mixture."""

    name = "odm"

    def __init__(self, domains: Sequence[str], smoothing: float = 0.9):
        super().__init__(domains)
        if not 0.0 <= smoothing < 1.0:
            raise MixingError(f"ODM smoothing must be in [0, 1); got {smoothing!r}")
        self.smoothing = float(smoothing)
        self.reward = np.zeros(self.k)
        self._pi = np.full(self.k, 1.0 / self.k)

    def _eps(self, t: int) -> float:
        if t <= 0:
            return 1.0 / self.k
        return min(1.0 / self.k, math.sqrt(math.log(self.k) / (self.k * t))) if self.k > 1 \
            else 1.0

    def policy(self) -> np.ndarray:
        return self._pi.copy()

    def update(self, domain_losses, counts) -> np.ndarray:
        losses, counts = self._check_update(domain_losses, counts)
        seen = counts > 0
        a = self.smoothing
        self.reward[seen] = a * self.reward[seen] + (1 - a) * losses[seen] / self._pi[seen]
        self.t += 1
        eps_prev, eps = self._eps(self.t - 1), self._eps(self.t)
        z = eps_prev * self.reward
        w = np.exp(z - z.max())
        self._pi = (1 - self.k * eps) * w / w.sum() + eps
        return self.policy()

    def state_dict(self) -> dict[str, np.ndarray]:
        return {**super().state_dict(), "reward": self.reward.copy(), "pi": self._pi.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        super().load_state_dict(state)
        self.reward = np.array(state["reward"], dtype=np.float64)
        self._pi = np.array(state["pi"], dtype=np.float64)


class ADO(MixingPolicy):
    """Adaptive Data Optimization (arXiv 2410.11820, Sec. 3).

    Numbers (1)-(4) label the formulas below and in :mod:`gensight.mixing.scaling`; they follow
    the order of the paper's Sec. 3 but could not be matched to its printed equation numbers
    offline. The formulas and hyperparameters follow the paper's Sec. 3, cross-checked with the
    authors' public reference code (github.com/yidingjiang/ado) where the text was unclear.

    State after ``t`` updates: ``n_k`` samples seen from each domain, the per-step loss history
    (T, K), a fitted power law per domain (law (1) of :mod:`gensight.mixing.scaling`), the
    credit ``h`` (K,), the running mean ``pi_bar`` (K,) and the mixture ``pi`` (K,). At each
    update:

    1. Credit assignment: ``h <- g1 h + (1 - g1) c`` where ``c = counts / sum
       counts`` is the share of each domain in the step's batch (``g1 = 0.9``), and
       ``lambda_k = h_k^s`` (``s = 0.5``). We follow the authors' reference code in using the
       realised batch shares for ``c``.
    2. Learning-speed forecast (law (2)): ``-dL_k/dn = alpha_k (L_k(n_k) - eps_k) / n_k`` from the
       current fit, with ``alpha_k`` floored at 0.05 as in the authors' code.
    3. Preference (3): ``rho_k proportional to mu_k lambda_k (-dL_k/dn)(n_k)`` with prior
       ``mu`` (the natural proportions), normalised, then floored at ``min_prob``
       (:func:`floor_distribution`; 0.01 as in the authors' code).
    4. Time smoothing (4): ``pi(t) = g2 pi_bar(t-1) + (1 - g2) rho(t)`` with ``g2 = 0.9``
       and ``pi_bar(t) = mean of rho(1..t)``, where ``rho = mu_floor`` during the warm-up.

    ``mu_floor`` is the prior floored at ``min_prob`` (:func:`floor_distribution`); the
    preference (3) uses the raw prior ``mu``. Before ``warmup`` updates, and until a fit
    exists, ``pi = mu_floor``; ``pi_bar`` starts at ``mu_floor``. The scaling laws are
    (re)fitted when ``t >= warmup`` and ``(t - warmup) % refit_every == 0``, on the per-step
    training losses of each domain from step ``ignore + 1`` on, smoothed (Savitzky-Golay, window
    101, order 3), subsampled to at most ``max_fit_points`` points, against the cumulative
    samples of that domain. A domain absent from a batch keeps its previous loss (or the batch
    mean at step 1), as in the authors' code. Every ``pi`` is a distribution with all entries
    >= ``min_prob`` (a convex combination of floored distributions). ``max_fit_points`` must
    be at least 3 (a fit needs 3 points).

    ``count='domain'`` (default) uses each domain's own sample count ``n_k`` as the ``n`` of
    the scaling laws, as the paper's law (1) is stated. The authors' reference code defaults
    to the total number of samples seen (all domains together) instead; ``count='total'``
    reproduces that default.
    A refit starts from the 2 best of 512 grid points (first fit) or from the previous fit and
    the best grid point (later fits); see :func:`fit_power_law`.
    ``fitter(n (T,), loss (T,)) -> PowerLaw`` replaces the fit (for tests)."""

    name = "ado"

    def __init__(self, domains: Sequence[str], sizes, *, warmup: int = 100, ignore: int = 20,
                 refit_every: int = 50, min_prob: float = 0.01, gamma1: float = 0.9,
                 gamma2: float = 0.9, s: float = 0.5, alpha_floor: float = 0.05,
                 smooth_window: int = 101, max_fit_points: int = 100, count: str = "domain",
                 fitter: Callable[[np.ndarray, np.ndarray], PowerLaw] | None = None):
        super().__init__(domains)
        sz = _check_sizes(self.domains, sizes)
        self.prior = sz / sz.sum()
        for name, v, lo, hi in (("gamma1", gamma1, 0, 1), ("gamma2", gamma2, 0, 1),
                                ("s", s, 0, 10), ("alpha_floor", alpha_floor, 0, 10)):
            if not lo <= v <= hi:
                raise MixingError(f"ADO {name} must be in [{lo}, {hi}]; got {v!r}")
        if not 0.0 <= min_prob <= 1.0 / self.k:
            raise MixingError(f"ADO min_prob must be in [0, 1/K] = [0, {1 / self.k:g}]; "
                              f"got {min_prob!r}")
        for name, v, lo in (("warmup", warmup, 0), ("ignore", ignore, 0),
                            ("refit_every", refit_every, 1), ("max_fit_points", max_fit_points, 3),
                            ("smooth_window", smooth_window, 1)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) \
                    or int(v) != v or v < lo:
                raise MixingError(f"ADO {name} must be an integer >= {lo}; got {v!r}")
        if count not in ("domain", "total"):
            raise MixingError(f"ADO count must be 'domain' or 'total'; got {count!r}")
        self.warmup, self.ignore, self.refit_every = int(warmup), int(ignore), int(refit_every)
        self.min_prob, self.gamma1, self.gamma2, self.s = float(min_prob), gamma1, gamma2, s
        self.alpha_floor, self.smooth_window = float(alpha_floor), int(smooth_window)
        self.max_fit_points, self.count = int(max_fit_points), count
        self.fitter = fitter or fit_power_law
        if fitter is None:  # import scipy now, not inside the first refit of a training loop
            import scipy.optimize  # noqa: F401
            import scipy.signal  # noqa: F401
        # the prior floored at min_prob: the mixture during the warm-up, so that every pi is
        # >= min_prob even for a domain whose natural share is below it
        self.prior_floored = floor_distribution(self.prior, self.min_prob)
        self.n = np.zeros(self.k)
        self._set_history(np.zeros((0, self.k)), np.zeros((0, self.k)))
        self.h = self.prior.copy()
        self.pi_bar = self.prior_floored.copy()
        self.pi = self.prior_floored.copy()
        self.rho = self.prior_floored.copy()
        self.params = np.full((self.k, 3), np.nan)  # (eps, beta, alpha) per domain
        self.n_fits = 0

    def policy(self) -> np.ndarray:
        return self.pi.copy()

    # --- history: (T, K) buffers that double in size (amortised O(1) per update) ----------
    def _set_history(self, loss_hist: np.ndarray, n_hist: np.ndarray) -> None:
        t = loss_hist.shape[0]
        cap = max(64, 1 << max(0, t - 1).bit_length())
        self._loss_buf = np.zeros((cap, self.k))
        self._n_buf = np.zeros((cap, self.k))
        self._loss_buf[:t] = loss_hist
        self._n_buf[:t] = n_hist
        self._len = t

    def _append_history(self, loss: np.ndarray, n: np.ndarray) -> None:
        if self._len == self._loss_buf.shape[0]:
            self._loss_buf = np.concatenate([self._loss_buf, np.zeros_like(self._loss_buf)])
            self._n_buf = np.concatenate([self._n_buf, np.zeros_like(self._n_buf)])
        self._loss_buf[self._len] = loss
        self._n_buf[self._len] = n
        self._len += 1

    @property
    def loss_hist(self) -> np.ndarray:
        """Per-step training loss of each domain (T, K) (a view; do not modify)."""
        return self._loss_buf[:self._len]

    @property
    def n_hist(self) -> np.ndarray:
        """The sample count the laws use after each step (T, K) (a view; do not modify)."""
        return self._n_buf[:self._len]

    @property
    def fitted(self) -> bool:
        return bool(np.all(np.isfinite(self.params)))

    def laws(self) -> list[PowerLaw | None]:
        """The current fit of every domain (None before the first fit)."""
        return [PowerLaw(*map(float, p)) if np.all(np.isfinite(p)) else None
                for p in self.params]

    def fit_data(self) -> tuple[np.ndarray, np.ndarray]:
        """What the scaling laws are fitted to: sample counts (K, T') and smoothed losses
        (K, T'), from step ``ignore + 1`` on, at most ``max_fit_points`` points."""
        n = self.n_hist[self.ignore:].T
        loss = smooth_losses(self.loss_hist.T, self.smooth_window)[:, self.ignore:]
        stride = max(1, math.ceil(n.shape[1] / self.max_fit_points))
        idx = np.arange(n.shape[1] - 1, -1, -stride)[::-1]  # always keep the latest point
        return n[:, idx], loss[:, idx]

    def refit(self) -> None:
        n, loss = self.fit_data()
        if n.shape[1] < 3:  # too early to fit (fewer than 3 points after ``ignore``)
            return
        if self.fitter is fit_power_law:  # warm start from the previous fit
            laws = self.laws()
            fits = [fit_power_law(np.maximum(n[k], 1.0), loss[k], init=laws[k],
                                  polish=2 if laws[k] is None else 1)
                    for k in range(self.k)]
        else:
            fits = [self.fitter(np.maximum(n[k], 1.0), loss[k]) for k in range(self.k)]
        params = np.array([f.as_array() for f in fits])
        if np.all(np.isfinite(params)):  # keep the previous fit otherwise (as the authors do)
            self.params = params
            self.n_fits += 1

    def preference(self) -> np.ndarray:
        """``rho`` (K,) from the current fit, credit and prior (steps 2-3), floored."""
        eps, beta, alpha = self.params.T
        n = self.n_total() if self.count == "total" else self.n
        n = np.maximum(n, 1.0)
        pred = eps + beta * n ** (-alpha)
        speed = np.maximum(alpha, self.alpha_floor) * np.maximum(pred - eps, 0.0) / n
        raw = self.prior * self.h ** self.s * speed
        if not np.all(np.isfinite(raw)) or raw.sum() <= 0:
            raw = self.prior.copy()
        return floor_distribution(raw / raw.sum(), self.min_prob)

    def n_total(self) -> np.ndarray:
        return np.full(self.k, self.n.sum())

    def update(self, domain_losses, counts) -> np.ndarray:
        losses, counts = self._check_update(domain_losses, counts)
        seen = counts > 0
        if self._len:
            prev = self._loss_buf[self._len - 1]
        else:
            prev = np.full(self.k, float(np.sum(losses[seen] * counts[seen]) / counts.sum()))
        filled = np.where(seen, losses, prev)
        self.n = self.n + counts
        self._append_history(filled, self.n_total() if self.count == "total" else self.n)
        self.h = self.gamma1 * self.h + (1 - self.gamma1) * counts / counts.sum()
        self.t += 1
        if self.t >= self.warmup and (self.t - self.warmup) % self.refit_every == 0:
            self.refit()
        if self.t >= self.warmup and self.fitted:
            self.rho = self.preference()
        else:
            self.rho = self.prior_floored.copy()
        self.pi = self.gamma2 * self.pi_bar + (1 - self.gamma2) * self.rho
        if self.t < self.warmup or not self.fitted:
            self.pi = self.prior_floored.copy()
        self.pi_bar = self.pi_bar + (self.rho - self.pi_bar) / self.t
        return self.policy()

    def state_dict(self) -> dict[str, np.ndarray]:
        return {**super().state_dict(), "n": self.n.copy(), "loss_hist": self.loss_hist.copy(),
                "n_hist": self.n_hist.copy(), "h": self.h.copy(), "pi_bar": self.pi_bar.copy(),
                "pi": self.pi.copy(), "rho": self.rho.copy(), "params": self.params.copy(),
                "n_fits": np.array([self.n_fits], dtype=np.int64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        super().load_state_dict(state)
        for key in ("n", "h", "pi_bar", "pi", "rho", "params"):
            setattr(self, key, np.array(state[key], dtype=np.float64))
        self._set_history(np.array(state["loss_hist"], dtype=np.float64).reshape(-1, self.k),
                          np.array(state["n_hist"], dtype=np.float64).reshape(-1, self.k))
        self.n_fits = int(state["n_fits"][0])


POLICIES = ("ado", "natural", "uniform", "odm")


def make_policy(name: str, domains: Sequence[str], sizes, **kwargs) -> MixingPolicy:
    """A policy by name (:data:`POLICIES`); ``sizes`` (K,) are the domains' training sizes
    (the prior of ADO, the mixture of ``natural``); ``kwargs`` go to the policy."""
    if name == "ado":
        return ADO(domains, sizes, **kwargs)
    _check_sizes(_check_domains(domains), sizes)  # every policy refuses an empty domain
    if name == "natural":
        return Natural(domains, sizes, **kwargs)
    if name == "uniform":
        return Uniform(domains, **kwargs)
    if name == "odm":
        return ODM(domains, **kwargs)
    raise MixingError(f"unknown mixing policy {name!r}; choose from {', '.join(POLICIES)}")
