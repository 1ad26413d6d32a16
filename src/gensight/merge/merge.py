"""Merging N networks: align them all to a reference, then average their weights.

Naive averaging of independently trained networks mixes unrelated hidden units. Aligning each
network to a common reference first (FLEET-MERGE, arXiv 2310.01362; Git Re-Basin,
arXiv 2209.04836) makes the average a network whose units each combine matching
units. The reference is one member (``reference=0``, FLEET-MERGE's common reference) or the
other members' average (``reference="average"``: Git Re-Basin's MergeMany, arXiv 2209.04836,
Alg. 3: in a seeded random order, each member in turn is aligned to the mean of the other
N-1 aligned members and replaced by its aligned self at once; full passes repeat until one
changes no permutation).

The loss barrier along the linear path between two networks (arXiv 2209.04836, Sec. 2, and
Frankle et al. 2020) is ``max_alpha L((1-alpha) theta_a + alpha theta_b) -
((1-alpha) L(theta_a) + alpha L(theta_b))``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensight.errors import GensightError
from gensight.merge.align import (
    Permutation,
    _load,
    _objective,
    _to_result,
    _weight_matching,
    activation_matching,
    apply_permutation,
    check_models,
    named_permutations,
    params,
)
from gensight.merge.spec import permute_state


def _normalized(weights: Sequence[float] | None, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(list(weights), dtype=np.float64)
    if w.shape != (n,):
        raise GensightError(f"weights has {w.size} entries; expected one per network ({n})")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise GensightError(f"weights must be finite, non-negative and not all zero; got "
                            f"{w.tolist()}")
    return w / w.sum()


def average_state(states: Sequence[Mapping[str, Tensor]], w: np.ndarray) -> dict[str, Tensor]:
    """``sum_i w_i * states[i]`` key by key (``w`` already normalized)."""
    return {k: sum(float(wi) * s[k] for wi, s in zip(w, states, strict=True))
            for k in states[0]}


def average(models: Sequence[nn.Module], weights: Sequence[float] | None = None) -> nn.Module:
    """Naive (unaligned) weight average ``sum_i w_i theta_i`` with ``w`` normalized to sum to
    1 (uniform by default), as a copy of ``models[0]``.

    Raises:
        GensightError: no models, or bad ``weights`` (wrong length, negative, all zero).
        IncompatibleSpaceError / NonFiniteWeightsError: as :func:`check_models`.
    """
    models = list(models)
    check_models(models)
    w = _normalized(weights, len(models))
    return _load(models[0], average_state([params(m) for m in models], w))


@dataclass
class MergeResult:
    """``model``: the merged network; ``aligned``: each member permuted to the reference
    frame (same functions as the members); ``permutations[i]`` takes member i there;
    ``iterations``: MergeMany's passes over the members (``reference="average"``; 1
    otherwise)."""

    model: nn.Module
    aligned: list[nn.Module]
    permutations: list[Permutation]
    iterations: int = 1
    notes: list[str] = field(default_factory=list)


def _check_merge_args(n: int, method: str, x: Tensor | None,
                     reference: int | str | nn.Module) -> None:
    """Raise :class:`~gensight.errors.GensightError` for a bad ``method``, ``x`` or
    ``reference`` of :func:`merge` with ``n`` networks (before any work is done)."""
    if method not in ("weight", "activation"):
        raise GensightError(f"unknown alignment method {method!r}; expected 'weight' or "
                            "'activation'")
    if method == "activation":
        if x is None:
            raise GensightError("method 'activation' needs inputs x (a batch of examples)")
        if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] < 2:
            raise GensightError("activation matching needs a batch of at least 2 inputs; got "
                                f"{getattr(x, 'shape', type(x).__name__)}")
    if isinstance(reference, nn.Module):
        return
    if isinstance(reference, str):
        if reference != "average":
            raise GensightError(f"reference must be a member index or 'average'; got "
                                f"{reference!r}")
        return
    if not isinstance(reference, int | np.integer) or not 0 <= reference < n:
        raise GensightError(f"reference {reference!r} is not a member index 0..{n - 1}")


def merge(models: Sequence[nn.Module], *, method: str = "weight", x: Tensor | None = None,
          reference: int | str | nn.Module = 0, weights: Sequence[float] | None = None,
          max_iter: int = 100, max_rounds: int = 10, seed: int = 0) -> MergeResult:
    """Align every network to a reference and average (optionally weighted).

    Args:
        models: N >= 1 networks of one architecture (see :func:`~gensight.merge.perm_spec`).
        method: ``"weight"`` (weight matching) or ``"activation"`` (activation matching on
            ``x``, a batch of inputs ``(batch, *input)``).
        reference: index of the member the others are aligned to (FLEET-MERGE), a network
            of the same architecture to align every member to (e.g. the weights a fleet
            broadcast before local training), or ``"average"``: Git Re-Basin's MergeMany
            (arXiv 2209.04836, Alg. 3). Starting from the members aligned to member 0 (a warm
            start; Alg. 3 starts from the members as they are), each pass visits the members
            in a random order (seeded by ``seed``) and aligns member i to the average of the
            other N-1 aligned members (with ``weights`` renormalized over them; a member whose
            others all have weight 0 is left as it is), replacing it by its aligned self
            before the next member is visited. Passes repeat until one changes no
            permutation, at most ``max_rounds``. With weight matching every step can only
            lower ``sum_i w_i ||aligned_i - merged||^2``, so the result is never further
            apart than with ``reference=0``.
        weights: per-network averaging weights (normalized to sum to 1); uniform if None.
        max_iter, seed: weight matching's sweeps and visiting order.
    """
    models = list(models)
    spec = check_models(models)
    w = _normalized(weights, len(models))
    _check_merge_args(len(models), method, x, reference)
    external = isinstance(reference, nn.Module)
    if external:
        check_models([*models, reference])
    ref_index = int(reference) if isinstance(reference, int | np.integer) else 0
    states = [params(m) for m in models]

    def match(target: Mapping[str, Tensor], i: int, init: dict[str, Tensor] | None
              ) -> dict[str, Tensor]:
        """Member i's permutation onto the network with parameters ``target``."""
        if method == "weight":
            return _weight_matching(spec, target, states[i], max_iter, seed, init)
        return named_permutations(activation_matching(_load(models[0], target), models[i], x))

    target = params(reference) if external else states[ref_index]
    perms = [match(target, i, None) for i in range(len(models))]
    if not external:  # the reference stays as it is
        perms[ref_index] = {k: torch.arange(n) for k, n in spec.sizes.items()}
    rounds = 1
    if isinstance(reference, str):  # MergeMany, sequential updates
        rng = np.random.default_rng(seed)
        aligned = [permute_state(spec, s, p) for s, p in zip(states, perms, strict=True)]
        rounds = 0
        for _ in range(max_rounds):
            rounds += 1
            changed = False
            for i in rng.permutation(len(models)):
                others = [j for j in range(len(models)) if j != i]
                w_others = w[others]
                if w_others.sum() <= 0:  # also N = 1: nothing to align to
                    continue
                new = match(average_state([aligned[j] for j in others],
                                          w_others / w_others.sum()), i, perms[i])
                if not all(torch.equal(new[k], perms[i][k]) for k in perms[i]):
                    changed = True
                    perms[i] = new
                    aligned[i] = permute_state(spec, states[i], new)
            if not changed:
                break
    merged_state = average_state([permute_state(spec, s, p) for s, p in
                                  zip(states, perms, strict=True)], w)
    results = [_to_result(models[0], spec, p) for p in perms]
    aligned_models = [apply_permutation(m, r) for m, r in zip(models, results, strict=True)]
    return MergeResult(_load(models[0], merged_state), aligned_models, results, rounds)


def interpolate(a: nn.Module, b: nn.Module, alpha: float) -> nn.Module:
    """``(1 - alpha) * theta_a + alpha * theta_b`` as a copy of ``a``."""
    check_models([a, b])
    return _load(a, average_state([params(a), params(b)], np.array([1 - alpha, alpha])))


def evaluate(model: nn.Module, x: Tensor, y: Tensor,
             classes: Sequence[int] | None = None) -> tuple[float, float]:
    """``(mean cross-entropy, accuracy)`` of ``model`` on ``(x, y)``; with ``classes`` the
    logits are restricted to those classes (a task's label set) before both."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
        if classes is not None:
            cls = torch.as_tensor(list(classes))
            logits = logits[:, cls]
            y = (y[:, None] == cls[None]).int().argmax(1)
        loss = F.cross_entropy(logits, y).item()
        acc = (logits.argmax(1) == y).float().mean().item()
    return loss, acc


def linear_path(a: nn.Module, b: nn.Module, x: Tensor, y: Tensor, *, points: int = 11,
                loss: Callable[[nn.Module, Tensor, Tensor], tuple[float, float]] = evaluate
                ) -> pd.DataFrame:
    """Loss and accuracy of ``interpolate(a, b, alpha)`` for ``points`` alphas in [0, 1]:
    columns ``alpha``, ``loss``, ``acc``, ``barrier`` (the loss above the straight line
    between the endpoints' losses)."""
    if points < 2:
        raise GensightError(f"points must be at least 2; got {points!r}")
    rows = []
    for alpha in np.linspace(0.0, 1.0, points):
        ls, acc = loss(interpolate(a, b, float(alpha)), x, y)
        rows.append({"alpha": float(alpha), "loss": ls, "acc": acc})
    frame = pd.DataFrame(rows)
    l0, l1 = frame["loss"].iloc[0], frame["loss"].iloc[-1]
    frame["barrier"] = frame["loss"] - ((1 - frame["alpha"]) * l0 + frame["alpha"] * l1)
    return frame


def loss_barrier(a: nn.Module, b: nn.Module, x: Tensor, y: Tensor, *,
                 points: int = 11) -> float:
    """``max_alpha`` of the loss above the straight line between the endpoints (arXiv
    2209.04836, Sec. 2): 0 for linearly mode-connected networks."""
    return float(linear_path(a, b, x, y, points=points)["barrier"].max())


def alignment_objective(a: nn.Module, b: nn.Module, perm: Permutation) -> float:
    """``<theta_a, pi(theta_b)>``: the quantity weight matching maximizes."""
    spec = check_models([a, b])
    return _objective(spec, params(a), params(b), named_permutations(perm))


__all__ = [
    "MergeResult",
    "alignment_objective",
    "average",
    "average_state",
    "evaluate",
    "interpolate",
    "linear_path",
    "loss_barrier",
    "merge",
]
