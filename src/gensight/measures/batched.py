"""The sharpness search of :func:`~gensight.measures.core.sharpness_alpha`, for many networks
at once.

One network's alpha' search is a log-scale bisection whose every step is a batched attack
(``restarts`` projected sign-gradient descents). Here the searches of M networks of a zoo run
in lockstep: each network keeps its own bisection (:func:`~gensight.measures.core.
log_bisect_steps`), its own random starts, its own carried perturbations and best breaking
perturbation, and at every attack step all networks still searching, times their restarts,
go through one :class:`~gensight.zoo.train.Population` forward and backward (batched matrix
products for MLPs, one grouped convolution for CNNs). Each network's search is the one
:func:`sharpness_alpha` runs on it alone, with the same seed, so the results agree up to
floating-point rounding (``tests/measures/test_batched.py`` checks it in float64); the
cost per network falls because the small per-network products become large batched ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from gensight.measures.core import _BAND as BAND
from gensight.measures.core import (
    EPSILON,
    NOISE_BOUND,
    SHARPNESS_RESTARTS,
    SHARPNESS_STEPS,
    MeasureError,
    NotApplicable,
    _step_sizes,
    check_reachable,
    log_bisect_steps,
)

__all__ = ["SharpnessSearch", "sharpness_alpha_batch"]


@dataclass
class SharpnessSearch:
    """The outcome of :func:`sharpness_alpha_batch` for one network: ``alpha`` (None where
    the search has no solution, and then ``reason`` says why), the work done in
    single-network forward passes (a backward counted as two), the bisection's evaluations,
    and the network's accuracy on the examples."""

    alpha: float | None
    passes: float
    evaluations: int
    base_accuracy: float
    reason: str | None = None


@dataclass
class _Member:
    """The state of one network's search between attack rounds."""

    params: list[Tensor]           # per tensor (layer-major: weight, bias), detached
    target: float
    lo: int
    hi: int
    gen: torch.Generator
    share: list[Tensor]            # (restarts, *shape): the carried perturbations / radius
    steps: Generator[float, bool, tuple[float, int]] | None = None
    alpha: float = 0.0             # the radius under attack this round
    seen: set[float] = field(default_factory=set)
    best: list[Tensor] | None = None
    best_radius: float = math.inf
    passes: float = 1.0


def _layer_major(pop) -> list[int]:
    """Order of ``pop.parameters()`` (all weights, then all biases) as an ``nn.Module``
    lists them (per layer, weight then bias): the order the random starts are drawn in."""
    k = len(pop.weights)
    return [j for i in range(k) for j in (i, k + i)]


def sharpness_alpha_batch(pop, x: Tensor, y: Tensor, *, magnitude: bool = False,
                          target_drop: float = 0.1, restarts: int = SHARPNESS_RESTARTS,
                          steps: int = SHARPNESS_STEPS, rtol: float = 0.01, seed: int = 0,
                          progress: Callable[[int, int], None] | None = None
                          ) -> list[SharpnessSearch]:
    """alpha' (arXiv 1912.02178, App. C.5; magnitude-aware: App. C.6) of every member of a
    population, searched together; see :func:`~gensight.measures.core.sharpness_alpha` for
    the search, which this runs per network in lockstep.

    ``pop``: a :class:`~gensight.zoo.train.Population` of M networks (weights ``(M, ...)``;
    evaluated without dropout). ``x``: ``(n, *input)`` examples shared by all networks, or
    ``(M, n, *input)`` one set per network; ``y``: ``(n,)`` or ``(M, n)`` labels. Returns one
    :class:`SharpnessSearch` per member, in order. ``progress(done, M)`` is called as
    searches finish.
    """
    from gensight.zoo.train import Population

    if restarts < 1 or steps < 1 or not rtol > 0:
        raise MeasureError(f"the alpha search needs restarts >= 1, steps >= 1 and rtol > 0, "
                           f"got {restarts}, {steps}, {rtol}")
    m = pop.size
    shared = y.dim() == 1
    if y.dim() not in (1, 2) or (not shared and (y.shape[0] != m or x.shape[0] != m)):
        raise MeasureError(f"x/y must hold one set shared by the {m} networks or one per "
                           f"network, got x {tuple(x.shape)} and y {tuple(y.shape)}")
    order = _layer_major(pop)
    flat = [t.detach() for t in pop.parameters()]
    n = int(y.shape[-1])
    with torch.no_grad():
        logits = pop.logits_cm(x, shared=shared) if shared else pop.logits_cm(x)
        base = (logits.argmax(1) == (y if not shared else y.expand(m, -1))).float().mean(1)
    results: list[SharpnessSearch | None] = [None] * m
    members: dict[int, _Member] = {}
    band = max(2, round(BAND * n))
    for k in range(m):
        yk = y if shared else y[k]
        try:
            target = check_reachable(float(base[k]), yk, target_drop, "alpha")
        except NotApplicable as exc:
            results[k] = SharpnessSearch(None, 1.0, 0, float(base[k]), str(exc))
            continue
        c = max(math.ceil(target * n - 1e-9), 1)
        params = [flat[j][k] for j in range(len(flat))]
        gen = torch.Generator().manual_seed(seed)
        share: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
        for j in order:
            # float32 draws, as sharpness_alpha's (the same numbers in any dtype)
            share[j] = torch.rand((restarts, *params[j].shape), generator=gen) * 2 - 1
        if magnitude:
            upper = NOISE_BOUND
        else:
            rms = torch.cat([p.reshape(-1) for p in params]).double().pow(2).mean().sqrt()
            upper = NOISE_BOUND * max(float(rms), 1e-12)
        mem = _Member(params, target, max(c - 1 - band, 0), min(c + band, n), gen, share)
        mem.steps = log_bisect_steps(0.1 if magnitude else 0.01, rtol, upper=upper,
                                     recheck=True)
        mem.alpha = next(mem.steps)
        members[k] = mem
    evals = dict.fromkeys(members, 0)
    sizes = _step_sizes(steps)
    done = m - len(members)
    if progress is not None and done:
        progress(done, m)
    while members:
        ids = list(members)
        verdicts = _attack(pop, [members[k] for k in ids], ids, x, y, shared, magnitude,
                           restarts, steps, sizes, order, Population)
        for k, ok in zip(ids, verdicts, strict=True):
            mem = members[k]
            evals[k] += 1
            try:
                mem.alpha = mem.steps.send(ok)
                continue
            except StopIteration as stop:
                alpha, count = stop.value
                results[k] = SharpnessSearch(alpha, mem.passes, count, float(base[k]))
            except NotApplicable as exc:
                results[k] = SharpnessSearch(
                    None, mem.passes, evals[k], float(base[k]),
                    f"the alpha search has no solution (train accuracy {float(base[k]):.2f}): "
                    f"{exc}; a box that large leaves a random network")
            del members[k]
            done += 1
            if progress is not None:
                progress(done, m)
    return results  # type: ignore[return-value]


def _attack(pop, mems: Sequence[_Member], ids: Sequence[int], x: Tensor, y: Tensor,
            shared: bool, magnitude: bool, restarts: int, steps: int, sizes: list[float],
            order: list[int], population) -> list[bool]:
    """One attack round: member ``mems[a]`` (network ``ids[a]``) attacked at its radius
    ``mems[a].alpha``; whether each survived (no perturbation broke the criterion)."""
    a_count, r = len(mems), restarts
    n_t = len(mems[0].params)
    for mem in mems:
        if mem.alpha in mem.seen:  # a recheck (see log_bisect): from fresh random starts
            for j in order:
                mem.share[j] = torch.rand(mem.share[j].shape, generator=mem.gen) * 2 - 1
        mem.seen.add(mem.alpha)
        if mem.best is not None:  # the first restart resumes from the smallest broken box
            for j in range(n_t):
                mem.share[j][0] = mem.best[j]
    base = [torch.stack([mem.params[j] for mem in mems]).unsqueeze(1) for j in range(n_t)]
    alphas = torch.tensor([mem.alpha for mem in mems], dtype=base[0].dtype)
    radius = []
    for j in range(n_t):
        a = alphas.view(-1, *([1] * (base[j].dim() - 1)))
        radius.append(a * base[j].abs() + EPSILON if magnitude
                      else a.expand_as(base[j]).clone())
    delta = [torch.stack([mem.share[j] for mem in mems]) * radius[j] for j in range(n_t)]
    # float64: the criterion compares float32 accuracies with a target in double, as
    # sharpness_alpha does with Python floats
    target = torch.tensor([mem.target for mem in mems], dtype=torch.float64)
    n = int(y.shape[-1])
    labels = y if shared else y[list(ids)]  # (n,) | (A, n), indexed by position in ``mems``
    xs = x if shared else x[list(ids)]
    verdict: list[bool | None] = [None] * a_count
    live = torch.arange(a_count)
    n_w = len(pop.weights)
    for t in range(steps + 1):
        d = [v[live].detach().requires_grad_(True) for v in delta]
        k = len(live)
        with torch.no_grad():  # every example, to check the criterion
            out = _logits(pop, population, base, d, live, n_w, xs if shared else xs[live],
                          shared, r)
        yy = labels.expand(k * r, -1) if shared else labels[live].repeat_interleave(r, 0)
        for idx in live.tolist():
            mems[idx].passes += r
        accs = (out.argmax(1) == yy).float().mean(1).view(k, r)
        worst, arg = accs.min(1)
        broke = worst.double() < target[live]
        finish = broke | (t == steps)
        with torch.no_grad():
            for q in finish.nonzero().flatten().tolist():
                a = int(live[q])
                mem = mems[a]
                for j in range(n_t):
                    mem.share[j] = (d[j][q].detach() / radius[j][a])
                if bool(broke[q]) and mem.alpha < mem.best_radius:
                    mem.best = [d[j][q, int(arg[q])].detach() / radius[j][a, 0]
                                for j in range(n_t)]
                    mem.best_radius = mem.alpha
                verdict[a] = not bool(broke[q])
        keep = ~finish
        if not bool(keep.any()):
            break
        # The descent's objective is the mean of the margins ranked in each network's band;
        # its gradient comes from those examples alone, so only they go through the
        # differentiated forward (about 4% of them at the default band).
        rows = live[keep]
        kr = keep.repeat_interleave(r)
        true = out.gather(1, yy.unsqueeze(1)).squeeze(1)[kr]              # (kk R, n)
        other = out.scatter(1, yy.unsqueeze(1), float("-inf")).amax(1)[kr]
        ranked = (true - other).sort(dim=1, descending=True).indices
        lo = torch.tensor([mems[int(a)].lo for a in rows]).repeat_interleave(r)
        hi = torch.tensor([mems[int(a)].hi for a in rows]).repeat_interleave(r)
        width = int((hi - lo).max())
        slot = lo[:, None] + torch.arange(width)                          # (kk R, B)
        weight = (slot < hi[:, None]).to(base[0].dtype)
        pick = ranked.gather(1, slot.clamp(max=n - 1))                    # example indices
        if shared:
            xb, yb = xs[pick], labels[pick]
        else:
            owner = rows.repeat_interleave(r)[:, None]
            xb, yb = xs[owner, pick], labels[owner, pick]
        sub = [dj[keep] for dj in d]
        band_out = _logits(pop, population, base, sub, rows, n_w, xb, False, r)
        margin = (band_out.gather(1, yb.unsqueeze(1)).squeeze(1)
                  - band_out.scatter(1, yb.unsqueeze(1), float("-inf")).amax(1))
        critical = (margin * weight).sum(1) / weight.sum(1)
        grads = torch.autograd.grad(critical.sum(), d)
        for idx in rows.tolist():
            mems[idx].passes += 3 * r * width / n
        with torch.no_grad():
            step = sizes[t]
            for j in range(n_t):
                g = grads[j][keep]
                rad = radius[j][rows]
                delta[j][rows] = torch.clamp(d[j].detach()[keep] - step * rad * g.sign(),
                                             -rad, rad)
        live = rows
    return [bool(v) for v in verdict]


def _logits(pop, population, base: list[Tensor], d: list[Tensor], rows: Tensor, n_w: int,
            x: Tensor, shared: bool, r: int) -> Tensor:
    """Class-major logits ``(len(rows) R, C, n)`` of the networks ``base[rows] + d`` (each
    member's ``R`` perturbed copies): ``x`` shared ``(n, *input)``, one set per member
    ``(len(rows), n, *input)`` (``shared=False``, repeated for its copies), or already one
    per copy ``(len(rows) R, n, *input)``."""
    tensors = [(base[j][rows] + d[j]).reshape(-1, *base[j].shape[2:]) for j in range(len(d))]
    net = population(pop.space, pop.arch, tensors[:n_w], tensors[n_w:], pop.activation,
                     pop.conv_chunk)
    if shared:
        return net.logits_cm(x, shared=True)
    if x.shape[0] != tensors[0].shape[0]:
        x = x.repeat_interleave(r, 0)
    return net.logits_cm(x)
