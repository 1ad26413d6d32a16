"""Layer-wise masks: pruning schedules, exact per-layer top-k, IMP's pruning step, the random,
magnitude-at-init and SNIP baselines, and the straight-through top-k.

Masks are lists with one tensor per parametrized layer, ``masks[i]: (M, n_out, n_in)``
(bool while computing, uint8 on disk); biases are never pruned. Every mask method keeps
exactly ``counts[i]`` weights of layer i in every member, so methods differ only in *which*
weights they keep, never in how many per layer (Frankle et al. 2021, arXiv 2009.08576,
show that per-layer allocation alone explains much of pruning-at-init's accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from gensight.errors import GensightError


class MaskError(GensightError):
    """Masks or counts that do not fit the weights they are applied to."""


def round_half_up(x: float) -> int:
    """``floor(x + 0.5)``: the rounding of every pruning count (Python's ``round`` rounds
    half to even, which would make counts depend on parity)."""
    return int(math.floor(x + 0.5))


def pruning_schedule(sizes: Sequence[int], rounds: int, rate: float,
                     output_rate: float) -> list[list[int]]:
    """Weights kept per layer after each IMP round: ``counts[k][i]`` for k = 0..rounds.

    Round k prunes ``round_half_up(r_i * remaining)`` of layer i's remaining weights, with
    ``r_i = rate`` for every layer but the last, whose rate is ``output_rate`` (Frankle &
    Carbin 2019, arXiv 1803.03635, Sec. 2: "connections to output are pruned at half the rate
    of the rest of the network"; we default ``output_rate = rate / 2``). ``counts[0]`` is
    ``sizes`` (dense). At least one weight per layer is always kept.
    """
    counts = [list(sizes)]
    for _ in range(rounds):
        prev = counts[-1]
        nxt = []
        for i, n in enumerate(prev):
            r = output_rate if i == len(prev) - 1 else rate
            nxt.append(max(1, n - round_half_up(r * n)))
        counts.append(nxt)
    return counts


def topk_mask(scores: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest scores of each row: ``scores: (M, n)`` -> bool ``(M, n)``.

    Ties are broken by index, lower index first (a stable descending sort), so the mask is a
    deterministic function of the scores and has exactly ``k`` ones per row. ``-inf`` scores
    are kept only if fewer than ``k`` finite ones exist.
    """
    if not 0 <= k <= scores.shape[-1]:
        raise MaskError(f"cannot keep k={k} of {scores.shape[-1]} entries")
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    mask.scatter_(-1, order[..., :k], True)
    return mask


def layer_topk(scores: Sequence[Tensor], counts: Sequence[int]) -> list[Tensor]:
    """Per-layer :func:`topk_mask`: ``scores[i]: (M, n_out, n_in)`` -> bool masks of the
    same shapes with exactly ``counts[i]`` ones per member."""
    if len(scores) != len(counts):
        raise MaskError(f"{len(scores)} score tensors for {len(counts)} layer counts")
    return [topk_mask(s.reshape(s.shape[0], -1), k).view(s.shape)
            for s, k in zip(scores, counts, strict=True)]


def _topk_preferring(scores: Tensor, prefer: Tensor, k: int) -> Tensor:
    """Keep ``k`` entries of each row of ``scores: (M, n)``: the preferred ones (``prefer``,
    bool ``(M, n)``) first, by score, then the others by score; ties by index. A ``-inf``
    score is never preferred (kept only when nothing else is left, as in
    :func:`topk_mask`)."""
    prefer = prefer & (scores > -math.inf)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    first = torch.sort((~prefer).gather(-1, order).to(torch.uint8), dim=-1,
                       stable=True).indices
    keep = order.gather(-1, first)[..., :k]
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    mask.scatter_(-1, keep, True)
    return mask


def connected_topk(scores: Sequence[Tensor], counts: Sequence[int],
                   max_sweeps: int = 50) -> list[Tensor]:
    """Per-layer top-k that avoids dead ends: ``scores[i]: (M, n_out, n_in)`` (an MLP's
    layers, in order) -> bool masks with exactly ``counts[i]`` ones per member.

    A kept weight into a hidden unit that keeps no outgoing weight, or out of one that keeps
    no incoming weight, is a dead end: it carries no signal (biases are never pruned, so
    the second kind only adds a constant). The result avoids dead ends where its sweeps can;
    it is a greedy fixed point, not a search, so a few may remain when the counts are
    tight. Starting from :func:`layer_topk`, each sweep
    re-selects the layers in order, each given the current masks of its neighbours: layer
    i keeps first, by score, the weights whose hidden output unit has an outgoing weight
    in layer i+1 and whose hidden input unit has an incoming weight in layer i-1 (inputs
    and outputs always qualify), then fills any remaining count with the best other
    weights. Sweeps repeat until the masks stop changing (at most ``max_sweeps``). When
    the plain top-k has no dead end it is returned unchanged. Equivariant to hidden-neuron
    permutations (ties aside: they are broken by index, as in :func:`topk_mask`).
    """
    if any(s.dim() != 3 for s in scores) or len({s.shape[0] for s in scores}) > 1:
        raise MaskError(f"connected_topk needs (M, n_out, n_in) scores with the same M in every "
                        f"layer; got shapes {[tuple(s.shape) for s in scores]}")
    for i in range(len(scores) - 1):
        if scores[i].shape[1] != scores[i + 1].shape[2]:
            raise MaskError(f"layer {i} has {scores[i].shape[1]} outputs but layer {i + 1} "
                            f"has {scores[i + 1].shape[2]} inputs; connected_topk needs an "
                            "MLP's layers in order")
    masks = layer_topk(scores, counts)
    n = len(masks)
    if n < 2:
        return masks
    for _ in range(max_sweeps):
        changed = False
        for i, (s, k) in enumerate(zip(scores, counts, strict=True)):
            ok = torch.ones(s.shape, dtype=torch.bool, device=s.device)
            if i > 0:
                ok = ok & masks[i - 1].any(2)[:, None, :]
            if i < n - 1:
                ok = ok & masks[i + 1].any(1)[:, :, None]
            new = _topk_preferring(s.reshape(s.shape[0], -1), ok.reshape(s.shape[0], -1),
                                   k).view(s.shape)
            if not torch.equal(new, masks[i]):
                masks[i], changed = new, True
        if not changed:
            break
    return masks


def magnitude_prune(trained: Sequence[Tensor], masks: Sequence[Tensor],
                    counts: Sequence[int]) -> list[Tensor]:
    """IMP's pruning step: among the surviving weights of each layer keep the ``counts[i]``
    of largest magnitude after training (Frankle & Carbin 2019, Sec. 2, step 3).

    ``trained[i], masks[i]: (M, n_out, n_in)``; already pruned weights are never revived.
    """
    scores = [torch.where(m.bool(), w.abs(), torch.full_like(w, -math.inf))
              for w, m in zip(trained, masks, strict=True)]
    for m, k in zip(masks, counts, strict=True):
        alive = m.reshape(m.shape[0], -1).sum(1)
        if bool((alive < k).any()):
            raise MaskError(f"cannot keep {k} weights of a layer with {int(alive.min())} "
                            "surviving")
    return layer_topk(scores, counts)


def magnitude_masks(init: Sequence[Tensor], counts: Sequence[int]) -> list[Tensor]:
    """Magnitude at initialization: keep the ``counts[i]`` largest ``|theta_0|`` per layer."""
    return layer_topk([w.abs() for w in init], counts)


def snip_scores(init_w: Sequence[Tensor], init_b: Sequence[Tensor], x: Tensor, y: Tensor,
                activation: str = "relu", chunk: int = 64) -> list[Tensor]:
    """SNIP's connection sensitivities (Lee et al. 2019, arXiv 1810.02340, Eq. 6, before
    its normalization): ``|theta_0 * dL/dtheta_0|`` per weight, ``(M, n_out, n_in)`` per
    layer, L the mean cross-entropy of each member's dense network on ``x: (N, *input)``,
    ``y: (N,)`` (the paper uses one minibatch; pass any batch, e.g. a whole training split).

    ``init_w[i]: (M, n_out, n_in)``, ``init_b[i]: (M, n_out)``; ``activation`` between
    the layers (the zoo's). Each member's gradient is its own; members are processed
    ``chunk`` at a time to bound the memory of the activations.
    """
    from gensight.tickets.predictor import mlp_forward

    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise MaskError(f"SNIP needs a non-empty batch with one label per input; got "
                        f"{x.shape[0]} inputs and {y.shape[0]} labels")
    if torch.is_inference_mode_enabled():
        raise MaskError("SNIP needs gradients; call it outside torch.inference_mode()")
    y = y.long()
    out: list[list[Tensor]] = [[] for _ in init_w]
    for lo in range(0, init_w[0].shape[0], chunk):
        with torch.enable_grad():
            w = [t[lo:lo + chunk].detach().clone().requires_grad_(True) for t in init_w]
            b = [t[lo:lo + chunk].detach() for t in init_b]
            logits = mlp_forward(w, b, x.to(w[0].dtype), activation)  # (m, N, classes)
            loss = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), y.expand(logits.shape[0], -1), reduction="none"
            ).mean(1).sum()
            grads = torch.autograd.grad(loss, w)
        for i, (t, g) in enumerate(zip(w, grads, strict=True)):
            out[i].append((t.detach() * g).abs())
    return [torch.cat(parts) for parts in out]


def snip_masks(init_w: Sequence[Tensor], init_b: Sequence[Tensor], counts: Sequence[int],
               x: Tensor, y: Tensor, activation: str = "relu") -> list[Tensor]:
    """SNIP at initialization (Lee et al. 2019, arXiv 1810.02340): keep the ``counts[i]``
    weights of each layer with the largest connection sensitivity (:func:`snip_scores` on
    the batch ``x``, ``y``). SNIP keeps a global top-k of the normalized sensitivities;
    here every layer keeps a given count, so the normalization drops out. A data-dependent
    baseline: one forward and backward pass per member, no training."""
    return layer_topk(snip_scores(init_w, init_b, x, y, activation), counts)


def random_masks(shapes: Sequence[Sequence[int]], counts: Sequence[int],
                 seeds: Sequence[int]) -> list[Tensor]:
    """Uniformly random masks with exactly ``counts[i]`` weights per layer; member j's mask is
    drawn from a generator seeded with ``seeds[j]`` (layers in order)."""
    out = [torch.zeros(len(seeds), *s, dtype=torch.bool) for s in shapes]
    for j, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(int(seed))
        for layer, (shape, k) in enumerate(zip(shapes, counts, strict=True)):
            n = math.prod(shape)
            keep = torch.randperm(n, generator=g)[:k]
            out[layer][j].view(-1)[keep] = True
    return out


def densities(counts: Sequence[int], sizes: Sequence[int]) -> tuple[list[float], float]:
    """Per-layer densities and the overall density of the weights (biases not counted)."""
    per = [c / n for c, n in zip(counts, sizes, strict=True)]
    return per, sum(counts) / sum(sizes)


class StraightThroughTopK(torch.autograd.Function):
    """Binary top-k in the forward pass, the sigmoid's derivative in the backward pass.

    ``forward(logits: (M, n), k) -> (M, n)`` of 0/1 values (dtype of ``logits``), exactly
    ``k`` ones per row, ties broken by index (:func:`topk_mask`). ``backward``: ``dL/dlogit =
    dL/dmask * sigmoid(logit) * (1 - sigmoid(logit))`` -- the straight-through estimator
    (Bengio et al. 2013, arXiv 1308.3432) with the sigmoid as the surrogate of the step, so
    that the mask can be trained through the masked network's training (the second objective
    of ``gensight.tickets``; the NFN paper's exact estimator could not be checked here).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, k: int) -> Tensor:
        ctx.save_for_backward(logits)
        return topk_mask(logits.detach(), k).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (logits,) = ctx.saved_tensors
        s = torch.sigmoid(logits)
        return grad * s * (1 - s), None


def straight_through_topk(logits: Tensor, k: int) -> Tensor:
    """:class:`StraightThroughTopK` applied to ``logits: (M, n)``."""
    return StraightThroughTopK.apply(logits, k)


def flat_masks(masks: Sequence[Tensor], bias_sizes: Sequence[int],
               dtype: torch.dtype = torch.float32) -> Tensor:
    """Weight masks and all-ones bias masks as one ``(M, P)`` float tensor laid out like
    :meth:`gensight.zoo.train.Population.flatten_` (weights then biases)."""
    m = masks[0].shape[0]
    parts = [mk.reshape(m, -1).to(dtype) for mk in masks]
    parts += [torch.ones(m, n, dtype=dtype) for n in bias_sizes]
    return torch.cat(parts, 1)
