"""Masked population training and IMP with rewinding to the initialization.

All networks of a round train together as one population (``gensight.zoo.train``: one
``(M, P)`` parameter buffer, batched matmuls, :class:`~gensight.zoo.train.BatchedOptimizer`
with ``torch.optim``'s update formulas). A mask is applied by setting the pruned entries of
the initial weights and of every gradient to exactly 0 (``masked_fill``, so a nan or inf
from a diverging run never reaches them) before the optimizer step, so a pruned weight, its
gradient and its optimizer state (momentum buffer, Adam moments, RMSprop's square average)
are exactly zero for the whole run; the pruned weights are set to 0 after every step as well
(a no-op for SGD, Adam and RMSprop without L2, kept as a guard).

Member j's data order comes from a generator seeded with ``seeds[j] + 1`` and restarted at
every training run, so every round of IMP sees the same order and each IMP mask is a
deterministic function of the initialization (research note 04, "pitfalls").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensight.data import Dataset
from gensight.tickets.config import TicketsConfig, TrainConfig
from gensight.tickets.masks import (
    flat_masks,
    magnitude_masks,
    magnitude_prune,
    pruning_schedule,
    random_masks,
)
from gensight.weightspace import WeightSpace
from gensight.zoo.spec import Architecture
from gensight.zoo.train import (
    BatchedOptimizer,
    Population,
    evaluate,
    gather,
    population_grad_,
    torch_optimizer,
)


def layer_sizes(dataset: Dataset, hidden: Sequence[int]) -> list[int]:
    """Neurons per layer ``(n_0, ..., n_L)`` of the MLP on ``dataset``."""
    return [math.prod(dataset.input_shape), *hidden, dataset.n_classes]


def mlp_space(widths: Sequence[int]) -> WeightSpace:
    """The weight space of ``Flatten -> Linear -> act -> ... -> Linear`` with ``widths``."""
    layers: list[nn.Module] = [nn.Flatten()]
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return WeightSpace.from_module(nn.Sequential(*layers))


def init_weights(seeds: Sequence[int], widths: Sequence[int],
                 dtype: torch.dtype = torch.float32) -> tuple[list[Tensor], list[Tensor]]:
    """Initial weights ``(M, n_i, n_{i-1})`` and biases ``(M, n_i)`` of M MLPs: PyTorch's
    ``nn.Linear`` default initialization drawn, layer by layer (weight, then bias), from a
    generator seeded with the member's seed (the order of :func:`gensight.zoo.train.
    init_population`, so the same seed gives the same network as a zoo member)."""
    m = len(seeds)
    weights = [torch.empty(m, widths[i + 1], widths[i], dtype=dtype)
               for i in range(len(widths) - 1)]
    biases = [torch.empty(m, widths[i + 1], dtype=dtype) for i in range(len(widths) - 1)]
    for k, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(int(seed))
        for w, b in zip(weights, biases, strict=True):
            nn.init.kaiming_uniform_(w[k], a=math.sqrt(5), generator=g)
            bound = 1 / math.sqrt(w.shape[2])
            nn.init.uniform_(b[k], -bound, bound, generator=g)
    return weights, biases


@dataclass
class MaskedRun:
    """The result of :func:`train_masked`: trained ``weights[i]: (M, n_out, n_in)``,
    ``biases[i]: (M, n_out)``, test and validation accuracy ``(M,)``, and the optimizer state
    (each ``(M, P)``, laid out weights then biases)."""

    weights: list[Tensor]
    biases: list[Tensor]
    test_acc: Tensor
    val_acc: Tensor
    opt_state: dict[str, Tensor] = field(default_factory=dict)


def _orders(generators: Sequence[torch.Generator], n: int) -> Tensor:
    return torch.stack([torch.randperm(n, generator=g) for g in generators])


def train_masked(init_w: Sequence[Tensor], init_b: Sequence[Tensor],
                 masks: Sequence[Tensor] | None, seeds: Sequence[int], dataset: Dataset,
                 train: TrainConfig, activation: str = "relu",
                 on_step: Callable[[], None] | None = None) -> MaskedRun:
    """Train M masked MLPs ``theta_0 * m`` together with the recipe ``train``.

    ``init_w[i]: (M, n_out, n_in)``, ``init_b[i]: (M, n_out)``, ``masks[i]``: bool or 0/1
    ``(M, n_out, n_in)`` (None: dense), ``seeds``: M data-order seeds (the init seeds).
    Each epoch, member j visits all training examples in the order of
    ``torch.randperm(n, generator=g_j)``, ``g_j`` seeded with ``seeds[j] + 1``, in batches
    of ``train.batch_size`` (the last one smaller).
    """
    m = init_w[0].shape[0]
    dtype = init_w[0].dtype
    widths = [init_w[0].shape[2], *(w.shape[1] for w in init_w)]
    pop = Population(mlp_space(widths), Architecture("mlp", tuple(widths[1:-1])),
                     [w.detach().clone() for w in init_w], [b.detach().clone() for b in init_b],
                     activation)
    flat = pop.flatten_()
    pruned = None
    if masks is not None:
        # masked_fill (not a multiplication by the mask): 0 * nan is nan, so a diverging run
        # would otherwise leave nan in pruned weights and their optimizer state
        pruned = flat_masks(masks, [b.shape[1] for b in init_b], dtype) == 0
        flat.masked_fill_(pruned, 0)
    params = pop.parameters()
    for p in params:
        p.requires_grad_(True)
    opt = BatchedOptimizer(train.optimizer, flat, torch.full((m,), train.lr, dtype=dtype),
                           torch.zeros(m, dtype=dtype),
                           torch.full((m,), train.momentum, dtype=dtype))
    grad = torch.empty_like(flat)
    x, y = dataset.x_train.to(dtype), dataset.y_train
    gens = [torch.Generator().manual_seed(int(s) + 1) for s in seeds]
    for _ in range(train.epochs):
        for idx in _orders(gens, len(y)).split(train.batch_size, dim=1):
            population_grad_(pop, gather(x, idx), gather(y, idx), grad)
            if pruned is not None:
                grad.masked_fill_(pruned, 0)
                opt.step(grad)
                with torch.no_grad():
                    flat.masked_fill_(pruned, 0)
            else:
                opt.step(grad)
            if on_step is not None:
                on_step()
    with torch.no_grad():
        test = evaluate(pop, dataset.x_test.to(dtype), dataset.y_test)
        val = evaluate(pop, dataset.x_val.to(dtype), dataset.y_val)
    n = len(init_w)
    state = {k: v for k, v in opt.state.items() if k != "tmp"}
    return MaskedRun([w.detach() for w in pop.weights[:n]],
                     [b.detach() for b in pop.biases], test.accuracy, val.accuracy, state)


def train_masked_reference(init_w: Sequence[Tensor], init_b: Sequence[Tensor],
                           mask: Sequence[Tensor] | None, seed: int, dataset: Dataset,
                           train: TrainConfig, activation: str = "relu"
                           ) -> tuple[nn.Sequential, torch.optim.Optimizer]:
    """One masked MLP trained alone with ``torch.optim`` (the reference of the population
    trainer): ``init_w[i]: (n_out, n_in)``, ``mask[i]`` likewise; gradients of pruned weights
    are zeroed before each step and the weights re-masked after it."""
    from gensight.zoo.train import _ACT_MODULES

    dtype = init_w[0].dtype
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (w, b) in enumerate(zip(init_w, init_b, strict=True)):
        lin = nn.Linear(w.shape[1], w.shape[0]).to(dtype)
        with torch.no_grad():
            lin.weight.copy_(w if mask is None else w * mask[i].to(dtype))
            lin.bias.copy_(b)
        layers.append(lin)
        if i < len(init_w) - 1:
            layers.append(_ACT_MODULES[activation]())
    net = nn.Sequential(*layers)
    lins = [mod for mod in net if isinstance(mod, nn.Linear)]
    opt = torch_optimizer(train.optimizer, net.parameters(), train.lr, 0.0, train.momentum)
    g = torch.Generator().manual_seed(int(seed) + 1)
    x, y = dataset.x_train.to(dtype), dataset.y_train
    for _ in range(train.epochs):
        for idx in torch.randperm(len(y), generator=g).split(train.batch_size):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            if mask is not None:
                for lin, mk in zip(lins, mask, strict=True):
                    lin.weight.grad.mul_(mk.to(dtype))
            opt.step()
            if mask is not None:
                with torch.no_grad():
                    for lin, mk in zip(lins, mask, strict=True):
                        lin.weight.mul_(mk.to(dtype))
    return net, opt


TrainFn = Callable[[list[Tensor], list[Tensor], list[Tensor] | None, Sequence[int]],
                   MaskedRun]


@dataclass
class IMPResult:
    """IMP with rewinding for M inits over R rounds.

    ``masks[k - 1][i]``: bool ``(M, n_out, n_in)``, the mask after round k (k = 1..R);
    ``counts[k][i]``: weights of layer i kept after round k (``counts[0]`` dense);
    ``test_acc[k], val_acc[k]``: ``(M,)`` accuracy of the ticket ``theta_0 * m_k`` after
    training (k = 0: the dense network); ``random_masks[k]`` / ``random_test_acc[k]`` /
    ``random_val_acc[k]``: the same for random masks with the per-layer counts of round k.
    """

    counts: list[list[int]]
    masks: list[list[Tensor]]
    test_acc: list[Tensor]
    val_acc: list[Tensor]
    random_masks: dict[int, list[Tensor]] = field(default_factory=dict)
    random_test_acc: dict[int, Tensor] = field(default_factory=dict)
    random_val_acc: dict[int, Tensor] = field(default_factory=dict)


def random_mask_seed(init_seed: int, round_: int) -> int:
    """The seed of the random mask of init ``init_seed`` at IMP round ``round_``."""
    return (int(init_seed) * 1_000_003 + 7919 * int(round_) + 17) % (2 ** 62)


def run_imp(init_w: Sequence[Tensor], init_b: Sequence[Tensor], seeds: Sequence[int],
            counts: Sequence[Sequence[int]], train_fn: TrainFn,
            random_rounds: Sequence[int] = (),
            on_round: Callable[[int], None] | None = None) -> IMPResult:
    """Iterative magnitude pruning with rewinding to the initialization, as a population.

    Frankle & Carbin 2019 (arXiv 1803.03635), Sec. 2 / Algorithm "iterative pruning": for
    k = 0..R-1 train ``theta_0 * m_k`` (``m_0 = 1``), keep the ``counts[k+1][i]`` surviving
    weights of largest trained magnitude in each layer i (:func:`magnitude_prune`), rewind
    the survivors to ``theta_0``; finally train the last ticket ``theta_0 * m_R``. Every
    training is ``train_fn(init_w, init_b, masks, seeds)`` over all M inits at once (the
    rewound weights passed are ``theta_0`` itself; ``train_fn`` applies the mask). Random
    masks with the per-layer counts of each round in ``random_rounds`` are trained too,
    all such rounds in one population.
    """
    m = init_w[0].shape[0]
    rounds = len(counts) - 1
    run = train_fn(list(init_w), list(init_b), None, seeds)
    masks: list[list[Tensor]] = []
    test_acc, val_acc = [run.test_acc], [run.val_acc]
    current = [torch.ones(w.shape, dtype=torch.bool) for w in init_w]
    if on_round is not None:
        on_round(0)
    for k in range(1, rounds + 1):
        current = magnitude_prune(run.weights, current, counts[k])
        masks.append(current)
        run = train_fn(list(init_w), list(init_b), current, seeds)
        test_acc.append(run.test_acc)
        val_acc.append(run.val_acc)
        if on_round is not None:
            on_round(k)
    result = IMPResult([list(c) for c in counts], masks, test_acc, val_acc)
    rr = sorted(set(random_rounds))
    if rr:
        shapes = [tuple(w.shape[1:]) for w in init_w]
        per_round = {k: random_masks(shapes, counts[k],
                                     [random_mask_seed(s, k) for s in seeds]) for k in rr}
        stacked = [torch.cat([per_round[k][i] for k in rr]) for i in range(len(init_w))]
        rep = len(rr)
        run = train_fn([w.repeat(rep, 1, 1) for w in init_w], [b.repeat(rep, 1) for b in init_b],
                       stacked, list(seeds) * rep)
        for j, k in enumerate(rr):
            result.random_masks[k] = per_round[k]
            result.random_test_acc[k] = run.test_acc[j * m:(j + 1) * m]
            result.random_val_acc[k] = run.val_acc[j * m:(j + 1) * m]
    return result


def oneshot_imp(init_w: Sequence[Tensor], init_b: Sequence[Tensor], seeds: Sequence[int],
                counts: Sequence[Sequence[int]], train_fn: TrainFn) -> list[list[Tensor]]:
    """One-shot magnitude pruning with rewinding: train the dense network once, then for each
    entry of ``counts`` keep the ``counts[j][i]`` weights of layer i of largest trained
    magnitude (the rewound ticket is ``theta_0 * m``).

    This is "one step of IMP" straight to the target density, the protocol of the NFN paper's
    winning-ticket experiment (arXiv 2302.14040, App. D.2: one IMP step to 95% sparsity) and
    Frankle & Carbin's one-shot pruning (arXiv 1803.03635, Sec. 2), where :func:`run_imp`
    reaches the same density over many rounds. The dense training is ``train_fn(init_w,
    init_b, None, seeds)``, the one :func:`run_imp` starts with, so the one-shot mask at
    IMP's round-1 counts is IMP's round-1 mask (up to float rounding of nearly tied weights
    when the dense run is repeated in another population). Returns one list of bool
    ``(M, n_out, n_in)`` masks per entry of ``counts``.
    """
    run = train_fn(list(init_w), list(init_b), None, seeds)
    return [magnitude_masks(run.weights, c) for c in counts]


def imp_schedule(config: TicketsConfig, widths: Sequence[int]) -> list[list[int]]:
    """The per-layer counts of ``config`` for an MLP of ``widths``."""
    sizes = [widths[i] * widths[i + 1] for i in range(len(widths) - 1)]
    return pruning_schedule(sizes, config.rounds, config.rate, config.output_rate)
