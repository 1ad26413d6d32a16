"""Meta-test: train held-out optimizees with learned and hand-designed optimizers.

Every optimizer trains the same ``S`` members (one per seed, same initialisations, same
minibatch sequence: common random numbers) for ``steps`` inner steps, batched over seeds. Recorded
per member: the minibatch training loss after every step (the curve), and at the end the loss
on the training split and the accuracy on the test split (at most ``limit`` examples each).

Baselines: Adam (``torch.optim.Adam`` defaults, eps 1e-8) and SGD with momentum 0.9 (torch
form), each tuned on a learning-rate grid by the mean final training-split loss on *tuning*
seeds that differ from the evaluation seeds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gensight.lopt.errors import LoptError
from gensight.lopt.meta import HELD_OUT_SEEDS, inner_grads
from gensight.lopt.optimizer import LOpt
from gensight.lopt.tasks import Task

LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
EVAL_SEED0 = 10_000_000
"""Evaluation members use seeds from here on; with :data:`TUNE_SEED0` they lie in
:data:`gensight.lopt.meta.HELD_OUT_SEEDS`, a range meta-training is not allowed to use
(:meth:`~gensight.lopt.meta.MetaConfig.check`), so they are held out."""
TUNE_SEED0 = 20_000_000
MAX_SEEDS = 1_000_000
"""At most this many evaluation (and tuning) seeds, so both stay inside the held-out range."""
assert HELD_OUT_SEEDS[0] <= EVAL_SEED0 and EVAL_SEED0 + MAX_SEEDS <= TUNE_SEED0
assert TUNE_SEED0 + MAX_SEEDS <= HELD_OUT_SEEDS[1]


@dataclass
class Curve:
    """One optimizer on one task: ``losses (S, steps)`` minibatch losses after each step;
    ``train_loss``, ``test_loss``, ``test_acc`` ``(S,)`` at the end. A member that
    diverged (non-finite loss or parameters) stops there: its later losses and its final
    ``train_loss``, ``test_loss`` and ``test_acc`` are NaN; the other members go on."""

    name: str
    losses: Tensor
    train_loss: Tensor
    test_loss: Tensor
    test_acc: Tensor
    lr: float | None
    seconds: float

    @property
    def diverged(self) -> int:
        """Number of members that diverged."""
        return int((~torch.isfinite(self.train_loss)).sum())

    def curve_losses(self) -> tuple[Tensor, Tensor]:
        """Per member, two summaries of the whole training-loss curve (the UNF paper,
        arXiv 2402.05232, Fig. 2, compares optimizers by their curves, not by one point):
        ``mean_loss (S,)``, the minibatch training loss averaged over all ``steps`` (the
        area under the curve over its length), and ``late_loss (S,)``, averaged over the
        last tenth of the steps (at least one), a smoothed final loss. NaN for a member
        that diverged."""
        steps = self.losses.shape[1]
        late = max(1, steps // 10)
        ok = torch.isfinite(self.train_loss)
        nan = torch.full_like(self.train_loss, math.nan)
        mean = torch.where(ok, self.losses.double().mean(1).to(nan.dtype), nan)
        tail = torch.where(ok, self.losses[:, -late:].double().mean(1).to(nan.dtype), nan)
        return mean, tail

    def summary(self) -> dict:
        """Mean and std over the members that did not diverge (NaN if all did), and the
        number that diverged. ``train_loss`` is the training-split loss after the last
        step; ``mean_loss`` and ``late_loss`` summarize the curve (:meth:`curve_losses`)."""
        def ms(t: Tensor) -> tuple[float, float]:
            t = t[torch.isfinite(t)]
            if not t.numel():
                return math.nan, math.nan
            return float(t.mean()), float(t.std()) if t.numel() > 1 else 0.0

        tl, tls = ms(self.train_loss)
        ta, tas = ms(self.test_acc)
        mean, late = self.curve_losses()
        ml, mls = ms(mean)
        ll, lls = ms(late)
        return {"optimizer": self.name, "lr": self.lr, "train_loss": tl, "train_loss_std": tls,
                "test_acc": ta, "test_acc_std": tas, "mean_loss": ml, "mean_loss_std": mls,
                "late_loss": ll, "late_loss_std": lls, "diverged": self.diverged,
                "seeds": int(self.train_loss.numel()), "seconds": self.seconds}


def _adam_step(lr: float) -> Callable:
    def step(params, grads, state, t):
        out = {}
        for k, p in params.items():
            g = grads[k]
            m = state.setdefault(f"m:{k}", torch.zeros_like(p))
            v = state.setdefault(f"v:{k}", torch.zeros_like(p))
            m.mul_(0.9).add_(g, alpha=0.1)
            v.mul_(0.999).addcmul_(g, g, value=0.001)
            mh = m / (1 - 0.9 ** t)
            vh = v / (1 - 0.999 ** t)
            out[k] = p - lr * mh / (vh.sqrt() + 1e-8)
        return out
    return step


def _sgdm_step(lr: float, momentum: float = 0.9) -> Callable:
    def step(params, grads, state, t):
        out = {}
        for k, p in params.items():
            buf = state.get(f"m:{k}")
            buf = grads[k].clone() if buf is None else buf.mul_(momentum).add_(grads[k])
            state[f"m:{k}"] = buf
            out[k] = p - lr * buf
        return out
    return step


def train_members(task: Task, seeds: Sequence[int], steps: int, optimizer: str | LOpt,
                  lr: float | None = None, *, batch_seed: int = 0, name: str | None = None,
                  limit: int = 2000, dtype: torch.dtype = torch.float32) -> Curve:
    """Train ``len(seeds)`` members of ``task`` for ``steps`` steps with ``optimizer``
    (``"adam"``, ``"sgdm"`` with ``lr``, or a :class:`LOpt`)."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(batch_seed)
    params = task.init(list(seeds), dtype)
    if isinstance(optimizer, LOpt):
        lopt = optimizer
        state = lopt.init_state(params)

        def step(p, g, _s, _t):
            nonlocal state
            new, state = lopt.update(p, g, state)
            return new
    else:
        step = {"adam": _adam_step, "sgdm": _sgdm_step}[optimizer](float(lr))
    opt_state: dict = {}
    losses = torch.full((len(seeds), steps), math.nan)
    alive = torch.ones(len(seeds), dtype=torch.bool)
    batch = task.sample(len(seeds), gen, dtype)
    for t in range(1, steps + 1):
        p = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        with torch.enable_grad():
            _, grads = inner_grads(task, p, batch, create_graph=False)
        with torch.no_grad():
            new = step({k: v.detach() for k, v in p.items()}, grads, opt_state, t)
            # diverged members keep their last parameters (members are independent)
            params = {k: torch.where(alive.view(-1, *([1] * (v.dim() - 1))), v, params[k])
                      for k, v in new.items()}
            batch = task.sample(len(seeds), gen, dtype)
            loss = task.loss(params, batch)
        losses[:, t - 1] = torch.where(alive, loss.float(), math.nan)
        finite = torch.isfinite(loss)
        for v in params.values():
            finite &= torch.isfinite(v.flatten(1)).all(1)
        alive &= finite
        if not bool(alive.any()):
            break
    train_loss, _ = task.evaluate(params, "train", limit)
    test_loss, test_acc = task.evaluate(params, "test", limit)
    ok = alive & torch.isfinite(train_loss)

    def mask(x: Tensor) -> Tensor:
        return torch.where(ok, x.float(), math.nan)

    return Curve(name or (optimizer if isinstance(optimizer, str) else optimizer.config.f),
                 losses, mask(train_loss), mask(test_loss), mask(test_acc), lr,
                 time.perf_counter() - t0)


def tune_lr(task: Task, optimizer: str, steps: int, seeds: Sequence[int],
            grid: Sequence[float] = LR_GRID, batch_seed: int = 1) -> tuple[float, dict]:
    """The grid learning rate with the lowest mean final training-split loss on ``seeds``
    (diverged runs count as infinite). Returns ``(lr, {lr: loss})``."""
    scores = {}
    for lr in grid:
        c = train_members(task, seeds, steps, optimizer, lr, batch_seed=batch_seed)
        v = float(c.train_loss.mean())
        scores[lr] = v if math.isfinite(v) else math.inf
    best = min(scores, key=scores.get)
    return best, scores


def compare(task: Task, lopts: Mapping[str, LOpt], steps: int, n_seeds: int = 5,
            tune_seeds: int = 3, grid: Sequence[float] = LR_GRID, batch_seed: int = 0,
            baselines: Sequence[str] = ("adam", "sgdm"),
            progress: Callable[[str, bool], None] | None = None) -> list[Curve]:
    """All learned optimizers ``lopts`` and the tuned baselines on held-out seeds.

    ``progress(what, done)`` is called when each of the ``len(lopts) + len(baselines)``
    units starts (``done=False``) and when it has finished (``done=True``)."""
    if baselines and not grid:
        raise LoptError("the learning-rate grid is empty")
    if not 0 < n_seeds <= MAX_SEEDS or not 0 < tune_seeds <= MAX_SEEDS:
        raise LoptError(f"n_seeds and tune_seeds must lie in [1, {MAX_SEEDS}]")
    seeds = [EVAL_SEED0 + i for i in range(n_seeds)]
    tune = [TUNE_SEED0 + i for i in range(tune_seeds)]
    curves = []
    for name, lopt in lopts.items():
        if progress:
            progress(name, False)
        with torch.no_grad():
            curves.append(train_members(task, seeds, steps, lopt, batch_seed=batch_seed,
                                        name=name))
        if progress:
            progress(name, True)
    for base in baselines:
        if progress:
            progress(f"{base} (tuning lr)", False)
        lr, _ = tune_lr(task, base, steps, tune, grid)
        curves.append(train_members(task, seeds, steps, base, lr, batch_seed=batch_seed,
                                    name=f"{base} (lr {lr:g})"))
        if progress:
            progress(base, True)
    return curves
