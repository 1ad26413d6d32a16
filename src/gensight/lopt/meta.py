"""Meta-training learned optimizers: truncated backprop and antithetic (persistent) ES.

A population of ``P`` inner runs (optimizees of one :class:`~gensight.lopt.tasks.Task`) is
trained at once, batched on a leading axis. Each meta-step unrolls ``K = unroll`` inner steps
from the current inner state and forms the **meta-loss** (``objective``):

* ``mean`` (default) -- the mean over the ``K`` steps and the population of the inner training
  (minibatch) loss after each update, ``L(phi) = 1/K sum_{k=1..K} mean_P loss(theta_k)``. It
  is dominated by the early, large losses of training, so it rewards fast early progress more
  than a low final loss.
* ``log`` -- the same mean of ``log loss(theta_k)``: every phase of training counts by its
  relative progress, so the late phase (losses of 0.01, not 1) is not drowned out (our
  choice, not the paper's; it also makes the meta-loss free of the loss's scale).
* ``final`` -- the UNF paper's objective (arXiv 2402.05232, App. C.2: "training loss at the
  end of the inner training horizon"): a run contributes only in the unroll that ends at its
  horizon, with its loss after the last step; ``L`` is the mean over the runs that end there
  (for ES/PES: over the pairs that end). The short first episode of a staggered run (below)
  does not count. A meta-step in which no run ends has no signal and is skipped (no ``phi``
  update; its history row has ``meta_loss`` ``None``): only about ``runs * unroll / horizon``
  runs end per meta-step, so ``final`` needs many more meta-steps than ``mean`` or ``log``
  (the paper: 50,000 meta-steps of PES over 16 runs). With TBPTT the gradient sees only the
  last ``K`` steps; PES (below) gives the unbiased gradient of the final loss, as the paper
  uses.

Every inner run (for ES/PES: every
antithetic pair) has its own step counter and restarts from a fresh initialisation (a new
seed) after ``horizon`` inner steps; the counters start staggered (run ``j`` of ``n`` as if
``floor(j * (horizon / unroll) / n) * unroll`` steps in), so restarts are spread over the
horizon rather than all at once, and the meta-loss mixes early and late phases of training.
A run whose parameters become non-finite restarts at once (all runs, re-staggered, if the
meta-gradient is non-finite while every run is finite).

Estimators of ``dL/dphi`` (``estimator``):

* ``tbptt`` -- truncated backpropagation through the ``K`` unrolled steps. With
  ``second_order=False`` (default, standard in learned-optimizer training) the inner gradients
  ``g_k`` are treated as data (no backprop through ``d theta_k / d phi`` inside ``g``); with
  ``second_order=True`` the inner gradients are built with ``create_graph=True`` and the
  estimate is the exact gradient of the truncated meta-loss (checked against finite
  differences in the tests).
* ``es`` -- antithetic evolution strategies (Salimans et al. 2017): ``N = P / 2`` pairs of
  perturbations ``phi +- eps_j``, ``eps_j ~ N(0, sigma^2 I)``; pair ``j``'s two particles start
  from the same inner state and see the same minibatches;
  ``g = 1/(2 N sigma^2) sum_j (L(phi + eps_j) - L(phi - eps_j)) eps_j``, an unbiased estimate
  of the gradient of the Gaussian-smoothed meta-loss. After the unroll both particles of a pair
  continue from the ``+`` particle's state (a documented choice; the truncation bias of
  non-persistent ES remains).
* ``pes`` -- persistent ES (Vicol, Metz, Sohl-Dickstein 2021, "Unbiased gradient estimation in
  unrolled computation graphs with persistent evolution strategies", Eq. 5, antithetic form):
  every particle keeps its own inner state (the two particles of a pair start from the same
  initialisation and see the same minibatches); the perturbations are accumulated,
  ``xi_j += eps_j``, and ``g = 1/(2 N sigma^2) sum_j (L_j^+ - L_j^-) xi_j``; ``xi_j`` resets
  when pair ``j``'s inner runs restart. This removes the truncation bias.

With ``objective='final'``, ``N`` is the number of pairs whose horizon ends in the unroll.

The UNF paper (arXiv 2402.05232, App. C.2) meta-trains with PES (16 runs, truncation 50,
sigma 0.01) on the final loss (``objective='final'``) for 50,000 steps. That budget does not
fit a CPU, so TBPTT with ``objective='mean'`` is the default here, and PES and the paper's
objective are offered (documented choice).

``phi`` is updated with Adam (our own, so its state is checkpointed exactly; its bias
correction counts only the updates applied, not meta-steps skipped for a non-finite estimate
or for no signal)
and global-norm gradient clipping. Checkpoints (``lopt.safetensors``) hold ``phi``, Adam's
moments and step, the inner population (parameters, optimizer state, step counters, which
runs are in a whole episode, PES noise), the random generator and the history;
they are written atomically (``tempfile.mkstemp`` in the same directory, fsync,
``os.replace``) and a rerun with the same
configuration resumes from them, giving the same result as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from gensight.lopt.errors import LoptError
from gensight.lopt.optimizer import LOpt, LOptConfig
from gensight.lopt.tasks import Task, make_task

CHECKPOINT = "lopt.safetensors"
ESTIMATORS = ("tbptt", "es", "pes")
OBJECTIVES = ("mean", "log", "final")
_LOG_FLOOR = 1e-12  # objective 'log': losses are clamped here before the logarithm
_DTYPES = {"float32": torch.float32, "float64": torch.float64}

HELD_OUT_SEEDS = (10_000_000, 21_000_000)
"""Initialisation seeds reserved for meta-testing (``[lo, hi)``; evaluation and
learning-rate tuning seeds of :mod:`gensight.lopt.evaluate` lie here). Meta-training never
initialises an inner run from one of them: :meth:`MetaConfig.check` refuses a configuration
whose seeds ``seed * 1_000_003 + j`` (``j < (meta_steps + 1) * population``) could reach
this range."""
SEED_STRIDE = 1_000_003


def meta_seed_range(seed: int, meta_steps: int, population: int) -> tuple[int, int]:
    """``[lo, hi)`` holding every initialisation seed a meta-training run can use (at most one
    restart per meta-step, at most ``population`` seeds per restart)."""
    lo = seed * SEED_STRIDE
    return lo, lo + (meta_steps + 1) * population


@dataclass(frozen=True)
class MetaConfig:
    """Meta-training settings (see module docstring). ``population`` is ``P`` (for ES/PES
    ``2 x pairs``, so it must be even)."""

    task: str = "digits-mlp"
    estimator: str = "tbptt"
    population: int = 8
    unroll: int = 10
    horizon: int = 200
    meta_steps: int = 200
    meta_lr: float = 3e-3
    clip: float = 1.0
    sigma: float = 0.01
    second_order: bool = False
    seed: int = 0
    checkpoint_every: int = 25
    dtype: str = "float32"
    objective: str = "mean"

    def check(self) -> MetaConfig:
        if self.objective not in OBJECTIVES:
            raise LoptError(f"objective must be one of {', '.join(OBJECTIVES)}; got "
                            f"{self.objective!r}")
        if self.estimator not in ESTIMATORS:
            raise LoptError(f"estimator must be one of {', '.join(ESTIMATORS)}; got "
                            f"{self.estimator!r}")
        for name in ("population", "unroll", "horizon", "meta_steps", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise LoptError(f"{name} must be a positive integer; got {v!r}")
        if self.estimator != "tbptt" and self.population % 2:
            raise LoptError(f"population must be even for estimator {self.estimator!r} "
                            f"(antithetic pairs); got {self.population}")
        if self.horizon % self.unroll:
            raise LoptError(f"horizon ({self.horizon}) must be a multiple of unroll "
                            f"({self.unroll})")
        for name in ("meta_lr", "clip", "sigma"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0 < v < math.inf):
                raise LoptError(f"{name} must be a positive number; got {v!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise LoptError(f"seed must be a non-negative integer; got {self.seed!r}")
        lo, hi = meta_seed_range(self.seed, self.meta_steps, self.population)
        if lo < HELD_OUT_SEEDS[1] and hi > HELD_OUT_SEEDS[0]:
            raise LoptError(f"seed {self.seed} would initialise inner runs from seeds "
                            f"[{lo}, {hi}), which overlap the held-out evaluation seeds "
                            f"[{HELD_OUT_SEEDS[0]}, {HELD_OUT_SEEDS[1]}); choose another seed")
        if self.dtype not in _DTYPES:
            raise LoptError(f"dtype must be 'float32' or 'float64'; got {self.dtype!r}")
        return self


# --- the unroll -----------------------------------------------------------------------------

def inner_grads(task: Task, params: dict[str, Tensor], batch, create_graph: bool
                ) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-member loss ``(P,)`` and gradients ``{key: (P, *shape)}`` (members are
    independent, so the gradient of the summed loss is every member's own gradient)."""
    loss = task.loss(params, batch)
    grads = torch.autograd.grad(loss.sum(), list(params.values()), create_graph=create_graph,
                                retain_graph=True)
    g = dict(zip(params, grads, strict=True))
    if not create_graph:
        g = {k: v.detach() for k, v in g.items()}
    return loss, g


def unroll(lopt: LOpt, task: Task, params: dict[str, Tensor], state: dict[str, Tensor],
           batches: list, *, phi: dict[str, Tensor] | None = None, second_order: bool = False,
           track: bool = True) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Run ``len(batches) - 1`` inner steps; returns ``(losses (K, P), params, state)`` where
    ``losses[k]`` is the minibatch loss on ``batches[k + 1]`` after ``k + 1`` updates.

    ``track``: keep the autograd graph to ``lopt``'s parameters (TBPTT); otherwise the
    learned optimizer runs without graph (ES)."""
    params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    state = {k: v.detach() for k, v in state.items()}
    losses = []
    last = len(batches) - 1
    for i, batch in enumerate(batches):
        if i == last:  # only the loss after the final update: no inner gradient needed
            with torch.enable_grad() if track else torch.no_grad():
                loss = task.loss(params, batch)
            losses.append(loss if track else loss.detach())
            break
        with torch.enable_grad():
            loss, grads = inner_grads(task, params, batch, create_graph=second_order and track)
        if i:
            losses.append(loss if track else loss.detach())
        if track:
            params, state = lopt.update(params, grads, state, phi)
            # under torch.no_grad (e.g. finite differences) the new params are plain tensors
            params = {k: v if v.requires_grad else v.requires_grad_(True)
                      for k, v in params.items()}
        else:
            with torch.no_grad():
                new, state = lopt.update({k: v.detach() for k, v in params.items()}, grads,
                                         state, phi)
            params = {k: v.requires_grad_(True) for k, v in new.items()}
    return torch.stack(losses), params, state


def antithetic_es_gradient(fn: Callable[[Tensor], Tensor], theta: Tensor, sigma: float,
                           pairs: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Antithetic ES estimate of ``grad E[fn]`` at ``theta (D,)``.

    ``fn`` maps ``(2 * pairs, D)`` parameter rows (rows ``0..pairs-1`` are ``theta + eps_j``,
    rows ``pairs..`` are ``theta - eps_j``) to losses ``(2 * pairs,)``. Returns
    ``(gradient (D,), eps (pairs, D))``;
    ``g = sum_j (L_j^+ - L_j^-) eps_j / (2 * pairs * sigma^2)`` (Salimans et al. 2017, with
    antithetic sampling). For a quadratic its mean is exactly the gradient."""
    eps = sigma * torch.randn(pairs, theta.numel(), generator=generator, dtype=theta.dtype)
    losses = fn(torch.cat([theta + eps, theta - eps]))
    diff = losses[:pairs] - losses[pairs:]
    return (diff.unsqueeze(1) * eps).sum(0) / (2 * pairs * sigma * sigma), eps


# --- meta-trainer -------------------------------------------------------------------------

def _flat(lopt: LOpt) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in lopt.parameters()])


def _unflat_stacked(lopt: LOpt, rows: Tensor) -> dict[str, Tensor]:
    out, start = {}, 0
    for n, p in lopt.named_parameters():
        out[n] = rows[:, start:start + p.numel()].reshape(rows.shape[0], *p.shape)
        start += p.numel()
    return out


class MetaTrainer:
    """Meta-trains one :class:`LOpt` on one task; :meth:`run` resumes from ``out``.

    Args:
        lopt_config: the learned optimizer's architecture.
        config: :class:`MetaConfig`.
        out: directory of the checkpoint (created); ``None`` keeps nothing on disk.
    """

    def __init__(self, lopt_config: LOptConfig, config: MetaConfig,
                 out: str | Path | None = None, task: Task | None = None):
        self.cfg = config.check()
        self.lcfg = lopt_config.check()
        self.dtype = _DTYPES[config.dtype]
        self.task = task if task is not None else make_task(config.task)
        self.out = None if out is None else Path(out)
        self.gen = torch.Generator().manual_seed(config.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.lopt = LOpt(self.lcfg, self.task.template()).to(self.dtype)
        self.adam_m = [torch.zeros_like(p) for p in self.lopt.parameters()]
        self.adam_v = [torch.zeros_like(p) for p in self.lopt.parameters()]
        self.step = 0
        self.adam_step = 0  # Adam updates actually applied (skipped steps do not count)
        self.episode = 0  # number of restarts (of any run) so far
        self.n_inits = 0  # initialisation seeds used so far
        self.history: list[dict] = []
        self.xi: Tensor | None = None
        self._reset_inner()

    # -- inner population --
    @property
    def _n_states(self) -> int:
        return self.cfg.population // 2 if self.cfg.estimator == "es" else self.cfg.population

    @property
    def _n_runs(self) -> int:
        """Independent inner runs: members (TBPTT) or antithetic pairs (ES, PES)."""
        return self.cfg.population if self.cfg.estimator == "tbptt" else self.cfg.population // 2

    def _stagger(self) -> Tensor:
        n, k = self._n_runs, self.cfg.horizon // self.cfg.unroll
        return torch.tensor([(j * k // n) * self.cfg.unroll for j in range(n)])

    def _reset_inner(self, runs: list[int] | None = None) -> None:
        """Fresh initialisations (new seeds) for ``runs`` (default: all, step counters
        staggered); a reset run's counter is 0 and, for PES, its pair's ``xi`` is zeroed."""
        n = self._n_runs
        if runs is None:
            seeds = [self.cfg.seed * SEED_STRIDE + self.n_inits + j for j in range(n)]
            self.n_inits += n
            fresh = self.task.init(seeds, self.dtype)
            if self.cfg.estimator == "pes":  # both particles of a pair start from one init
                fresh = {k: torch.cat([v, v]) for k, v in fresh.items()}
            self.params = fresh
            self.state = self.lopt.init_state(self.params)
            self.inner_steps = self._stagger()
            # a staggered run's first episode is shorter than the horizon: under objective
            # 'final' its end is not "the end of the horizon" and carries no signal
            self.full_episode = self.inner_steps == 0
            if self.cfg.estimator == "pes":
                self.xi = torch.zeros(n, _flat(self.lopt).numel(), dtype=self.dtype)
            return
        seeds = [self.cfg.seed * SEED_STRIDE + self.n_inits + j for j in range(len(runs))]
        self.n_inits += len(runs)
        fresh = self.task.init(seeds, self.dtype)
        rows = torch.tensor(runs)
        if self.cfg.estimator == "pes":
            rows = torch.cat([rows, rows + n])
            fresh = {k: torch.cat([v, v]) for k, v in fresh.items()}
        zero = self.lopt.init_state(fresh)
        self.params = {k: v.index_copy(0, rows, fresh[k]) for k, v in self.params.items()}
        self.state = {k: v.index_copy(0, rows, zero[k]) for k, v in self.state.items()}
        self.inner_steps = self.inner_steps.index_fill(0, torch.tensor(runs), 0)
        self.full_episode = self.full_episode.index_fill(0, torch.tensor(runs), True)
        if self.cfg.estimator == "pes":
            self.xi = self.xi.index_fill(0, torch.tensor(runs), 0.0)

    def _restart_due(self, finite: bool) -> None:
        """Restart the runs that reached the horizon or whose parameters are not finite."""
        n = self._n_runs
        ok = torch.ones(n, dtype=torch.bool)
        for v in self.params.values():
            row = torch.isfinite(v.flatten(1)).all(1)
            ok &= row[:n] & row[n:] if self.cfg.estimator == "pes" else row
        if not finite and bool(ok.all()):
            self.episode += 1
            self._reset_inner()
            return
        due = [j for j in range(n)
               if int(self.inner_steps[j]) >= self.cfg.horizon or not bool(ok[j])]
        if due:
            self.episode += 1
            self._reset_inner(due)

    def _batches(self, n: int, repeat: int = 1) -> list:
        out = []
        for _ in range(self.cfg.unroll + 1):
            b = self.task.sample(n, self.gen, self.dtype)
            if repeat > 1:
                b = type(b)(b.x.repeat(repeat, *([1] * (b.x.dim() - 1))),
                            b.y.repeat(repeat, *([1] * (b.y.dim() - 1))))
            out.append(b)
        return out

    # -- one meta-step per estimator --
    def _ending(self, rows: int) -> Tensor:
        """``(rows,)`` bool: the particle row's inner run reaches the end of a whole horizon
        in this unroll (not the short first episode of a staggered run); row ``r`` belongs to
        run ``r % n_runs`` (ES/PES rows ``j`` and ``j + pairs`` are pair ``j``)."""
        ends = (self.inner_steps + self.cfg.unroll >= self.cfg.horizon) & self.full_episode
        return ends[torch.arange(rows) % self._n_runs]

    def _objective(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        """Per-row meta-loss ``(R,)`` of an unroll's losses ``(K, R)``, and the rows that
        carry signal ``(R,)`` bool (all rows, except for ``objective='final'``)."""
        obj = self.cfg.objective
        if obj == "mean":
            return losses.mean(0), torch.ones(losses.shape[1], dtype=torch.bool)
        if obj == "log":
            return (losses.clamp_min(_LOG_FLOOR).log().mean(0),
                    torch.ones(losses.shape[1], dtype=torch.bool))
        ending = self._ending(losses.shape[1])
        return torch.where(ending, losses[-1], torch.zeros_like(losses[-1])), ending

    def _tbptt(self) -> tuple[float | None, Tensor | None]:
        batches = self._batches(self.cfg.population)
        # objective 'final' with no run ending here: advance the runs without a graph
        track = self.cfg.objective != "final" or bool(self._ending(self.cfg.population).any())
        losses, params, state = unroll(self.lopt, self.task, self.params, self.state, batches,
                                       second_order=self.cfg.second_order, track=track)
        per, live = self._objective(losses)
        self.params = {k: v.detach() for k, v in params.items()}
        self.state = {k: v.detach() for k, v in state.items()}
        if not bool(live.any()):  # objective 'final': no run ends in this unroll
            return None, None
        meta = per.sum() / live.sum()
        grads = torch.autograd.grad(meta, list(self.lopt.parameters()), allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g
                 for g, p in zip(grads, self.lopt.parameters(), strict=True)]
        return float(meta.detach()), torch.cat([g.reshape(-1) for g in grads])

    def meta_step(self) -> dict:
        """One meta-step: estimate, clip, Adam-update ``phi``; returns the history row."""
        if self.cfg.estimator == "tbptt":
            meta, grad = self._tbptt()
        else:
            meta, grad = self._es_step()
        if meta is None:  # objective 'final' and no inner run ended: nothing to learn from
            self.step += 1
            self.inner_steps = self.inner_steps + self.cfg.unroll
            self._restart_due(True)
            row = {"step": self.step, "meta_loss": None, "grad_norm": None, "skipped": True,
                   **self.lopt.scalars()}
            self.history.append(row)
            return row
        finite = bool(torch.isfinite(grad).all()) and math.isfinite(meta)
        gnorm = float(grad.norm()) if finite else float("nan")
        if finite:
            if gnorm > self.cfg.clip:
                grad = grad * (self.cfg.clip / gnorm)
            self._adam(grad)
        self.step += 1
        self.inner_steps = self.inner_steps + self.cfg.unroll
        self._restart_due(finite)
        row = {"step": self.step, "meta_loss": meta, "grad_norm": gnorm, "skipped": not finite,
               **self.lopt.scalars()}
        self.history.append(row)
        return row

    def _es_step(self) -> tuple[float | None, Tensor | None]:
        pairs = self.cfg.population // 2
        persistent = self.cfg.estimator == "pes"
        batches = self._batches(pairs, repeat=2)
        if persistent:
            params, state = self.params, self.state
        else:
            params = {k: torch.cat([v, v]) for k, v in self.params.items()}
            state = {k: torch.cat([v, v]) for k, v in self.state.items()}
        out: dict = {}

        def fn(rows: Tensor) -> Tensor:
            phi = _unflat_stacked(self.lopt, rows)
            losses, p2, s2 = unroll(self.lopt, self.task, params, state, batches, phi=phi,
                                    track=False)
            out["params"], out["state"] = p2, s2
            per, live = self._objective(losses)
            out["live"] = bool(live.any())
            out["n_live"] = max(1, int(live[:pairs].sum()))
            out["meta"] = float(per.sum() / live.sum()) if out["live"] else None
            return per

        theta = _flat(self.lopt)
        if persistent:
            eps = self.cfg.sigma * torch.randn(pairs, theta.numel(), generator=self.gen,
                                               dtype=theta.dtype)
            self.xi = self.xi + eps
            per = fn(torch.cat([theta + eps, theta - eps]))
            grad = ((per[:pairs] - per[pairs:]).unsqueeze(1) * self.xi).sum(0) / (
                2 * out["n_live"] * self.cfg.sigma ** 2)
            self.params = {k: v.detach() for k, v in out["params"].items()}
            self.state = {k: v.detach() for k, v in out["state"].items()}
        else:
            grad, _ = antithetic_es_gradient(fn, theta, self.cfg.sigma, pairs, self.gen)
            grad = grad * (pairs / out["n_live"])  # the mean over the pairs with signal
            self.params = {k: v[:pairs].detach() for k, v in out["params"].items()}
            self.state = {k: v[:pairs].detach() for k, v in out["state"].items()}
        if not out["live"]:  # objective 'final': no pair ends in this unroll
            return None, None
        return out["meta"], grad

    def _adam(self, grad: Tensor, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
              ) -> None:
        self.adam_step += 1
        t = self.adam_step
        start = 0
        with torch.no_grad():
            for p, m, v in zip(self.lopt.parameters(), self.adam_m, self.adam_v, strict=True):
                g = grad[start:start + p.numel()].view_as(p)
                start += p.numel()
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                mh = m / (1 - b1 ** t)
                vh = v / (1 - b2 ** t)
                p.sub_(self.cfg.meta_lr * mh / (vh.sqrt() + eps))

    # -- loop and checkpoints --
    def run(self, progress: Callable[[int, int, dict], None] | None = None) -> dict:
        """Meta-train up to ``meta_steps`` (resuming from ``out``'s checkpoint if any)."""
        if self.out is not None and (self.out / CHECKPOINT).exists():
            self.load(self.out / CHECKPOINT)
        while self.step < self.cfg.meta_steps:
            row = self.meta_step()
            if progress is not None:
                progress(self.step, self.cfg.meta_steps, row)
            if self.out is not None and (self.step % self.cfg.checkpoint_every == 0
                                         or self.step == self.cfg.meta_steps):
                self.save(self.out / CHECKPOINT)
        return {"history": self.history, "scalars": self.lopt.scalars(), "step": self.step}

    def _tensors(self) -> dict[str, Tensor]:
        t: dict[str, Tensor] = {}
        for (n, p), m, v in zip(self.lopt.named_parameters(), self.adam_m, self.adam_v,
                                strict=True):
            t[f"phi/{n}"] = p.detach()
            t[f"adam_m/{n}"] = m
            t[f"adam_v/{n}"] = v
        for k, v in self.params.items():
            t[f"inner_params/{k}"] = v
        for k, v in self.state.items():
            t[f"inner_state/{k}"] = v
        if self.xi is not None:
            t["pes_xi"] = self.xi
        t["inner_steps"] = self.inner_steps
        t["full_episode"] = self.full_episode.to(torch.uint8)
        t["rng"] = self.gen.get_state()
        return {k: v.contiguous() for k, v in t.items()}

    def save(self, path: str | Path) -> Path:
        """Write the checkpoint atomically: a unique temp file in the same directory
        (``tempfile.mkstemp``), fsynced, then ``os.replace``d over ``path``."""
        import tempfile

        from safetensors.torch import save

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": "gensight-lopt/1", "lopt_config": json.dumps(self.lcfg.to_dict()),
                "meta_config": json.dumps(asdict(self.cfg)), "step": str(self.step),
                "adam_step": str(self.adam_step),
                "episode": str(self.episode), "n_inits": str(self.n_inits),
                "history": json.dumps(self.history)}
        data = save(self._tensors(), metadata=meta)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        try:  # make the rename durable
            dfd = os.open(path.parent, os.O_RDONLY)
        except OSError:
            return path
        try:
            os.fsync(dfd)
        except OSError:
            pass
        finally:
            os.close(dfd)
        return path

    def load(self, path: str | Path) -> None:
        """Restore everything from a checkpoint written by :meth:`save` with the same
        configuration (except ``meta_steps`` and ``checkpoint_every``, which may grow)."""
        tensors, meta = read_checkpoint(path)
        saved = json.loads(meta["meta_config"])
        mine = asdict(self.cfg)
        for k in mine:
            if k in ("meta_steps", "checkpoint_every"):
                continue
            was = saved.get(k, "mean" if k == "objective" else None)  # before objectives
            if was != mine[k]:
                raise LoptError(f"checkpoint {path} was written with {k}={was!r}, not "
                                f"{mine[k]!r}; use another --out or the same settings")
        if json.loads(meta["lopt_config"]) != self.lcfg.to_dict():
            raise LoptError(f"checkpoint {path} holds a different learned optimizer "
                            f"({meta['lopt_config']}); use another --out or the same settings")
        if "inner_steps" not in tensors:
            raise LoptError(f"checkpoint {path} was written by an older gensight (all inner "
                            "runs restarting together); it cannot be resumed, use another "
                            "--out")
        with torch.no_grad():
            for (n, p), m, v in zip(self.lopt.named_parameters(), self.adam_m, self.adam_v,
                                    strict=True):
                p.copy_(tensors[f"phi/{n}"])
                m.copy_(tensors[f"adam_m/{n}"])
                v.copy_(tensors[f"adam_v/{n}"])
        self.params = {k: tensors[f"inner_params/{k}"] for k in self.task.shapes}
        self.state = {k[len("inner_state/"):]: v for k, v in tensors.items()
                      if k.startswith("inner_state/")}
        self.xi = tensors.get("pes_xi")
        self.gen.set_state(tensors["rng"])
        self.step = int(meta["step"])
        self.adam_step = int(meta.get("adam_step", meta["step"]))
        self.episode = int(meta["episode"])
        self.n_inits = int(meta["n_inits"])
        self.inner_steps = tensors["inner_steps"]
        full = tensors.get("full_episode")  # absent before objectives: only 'mean' ran then
        self.full_episode = (torch.ones_like(self.inner_steps, dtype=torch.bool) if full is None
                             else full.bool())
        self.history = json.loads(meta["history"])


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a ``lopt.safetensors`` checkpoint; a clear error if the file
    is missing or is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise LoptError(f"checkpoint {path} does not exist")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise LoptError(f"{path} is not a readable safetensors checkpoint ({exc})") from None
    if meta.get("format") != "gensight-lopt/1":
        raise LoptError(f"{path} is not a gensight learned-optimizer checkpoint (format "
                        f"{meta.get('format')!r})")
    return tensors, meta


def load_lopt(path: str | Path, task: Task | None = None) -> tuple[LOpt, dict]:
    """The meta-trained :class:`LOpt` of a checkpoint, rebuilt for ``task`` (default: the task
    it was trained on; another task works when ``f``'s parameters do not depend on the widths,
    e.g. ``np`` symmetry, otherwise a :class:`LoptError` names the mismatch). Returns
    ``(lopt, info)`` with the configs and history."""
    tensors, meta = read_checkpoint(path)
    lcfg = LOptConfig.from_dict(json.loads(meta["lopt_config"]))
    mcfg = json.loads(meta["meta_config"])
    task = task if task is not None else make_task(mcfg["task"])
    lopt = LOpt(lcfg, task.template()).to(_DTYPES[mcfg.get("dtype", "float32")])
    state = {k[len("phi/"):]: v for k, v in tensors.items() if k.startswith("phi/")}
    own = dict(lopt.named_parameters())
    bad = [n for n, p in own.items()
           if n not in state or tuple(state[n].shape) != tuple(p.shape)]
    if bad or set(state) != set(own):
        trained = mcfg.get("task")
        n = bad[0] if bad else sorted(set(state) ^ set(own))[0]
        got = tuple(state[n].shape) if n in state else "missing"
        need = tuple(own[n].shape) if n in own else "absent"
        same_names = set(state) == set(own)
        if lcfg.symmetry == "hnp" and same_names:
            why = (f"with symmetry 'hnp' f={lcfg.f!r} depends on the optimizee's layer "
                   f"widths, which differ between {trained!r} and {task.name!r}; train with "
                   "symmetry 'np' to transfer across widths")
        else:
            why = (f"the optimizee of task {task.name!r} differs in depth or layer kinds "
                   f"from the one f was trained on (task {trained!r}); f={lcfg.f!r} with "
                   f"symmetry {lcfg.symmetry!r} depends on the number and kind of layers and "
                   "transfers only across widths")
        raise LoptError(f"checkpoint {path}: parameter {n!r} is {got}, but task "
                        f"{task.name!r} needs {need}: {why}")
    with torch.no_grad():
        for n, p in own.items():
            p.copy_(state[n])
    return lopt, {"lopt_config": lcfg, "meta_config": mcfg,
                  "history": json.loads(meta["history"]), "step": int(meta["step"])}
