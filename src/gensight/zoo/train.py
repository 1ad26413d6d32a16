"""Population training: many networks of one architecture trained together.

Members that share an architecture and the structural hyperparameters (optimizer, activation,
batch size, epochs, train fraction) are stacked: dense layers run as batched matmuls
``(M, batch, in) @ (M, in, out)`` and conv layers as one grouped convolution with the members
side by side along the channel axis. Each member keeps its own learning rate, L2, momentum,
init scale and dropout rate, and its own data order and dropout masks drawn from its own
generator. The optimizers (SGD with momentum, Adam, RMSprop) follow ``torch.optim``'s update
formulas exactly. Training a population therefore gives the same weights as training each
member alone with ``torch.optim`` (see ``tests/zoo/test_train.py``), only faster.

On the CPU, conv members are stacked a few at a time (``Population.conv_chunk``, sized so
activations stay near 5 MB): larger stacks leave the caches and run slower per member.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensight.data import Dataset
from gensight.weightspace import WeightBatch, WeightSpace
from gensight.zoo.spec import Architecture, Member

_ACT_MODULES: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU, "silu": nn.SiLU,
}
_ACT_FUNCS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu, "tanh": torch.tanh, "gelu": F.gelu, "sigmoid": torch.sigmoid,
    "elu": F.elu, "leaky_relu": F.leaky_relu, "silu": F.silu,
}


def build_model(arch: Architecture, input_shape: Sequence[int], n_classes: int,
                activation: str = "relu", dropout: float = 0.0) -> nn.Sequential:
    """The ``nn.Sequential`` a zoo member is (MLP, or CNN with global average pooling)."""
    act = _ACT_MODULES[activation]
    layers: list[nn.Module] = []
    if arch.family == "mlp":
        layers.append(nn.Flatten())
        width = math.prod(input_shape)
        for h in arch.hidden:
            # Dropout is always present (p = 0 is the identity) so that every member of a zoo
            # has the same state-dict keys and weight space.
            layers += [nn.Linear(width, h), act(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, n_classes))
        return nn.Sequential(*layers)
    dims = len(input_shape) - 1
    conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}[dims]
    c_prev = input_shape[0]
    for c in arch.channels:
        layers += [conv(c_prev, c, arch.kernel_size, stride=arch.stride,
                        padding=arch.padding), act(), nn.Dropout(dropout)]
        c_prev = c
    layers += [pool(1), nn.Flatten(), nn.Linear(c_prev, n_classes)]
    return nn.Sequential(*layers)


def init_member(member: Member, arch: Architecture, dataset: Dataset) -> nn.Sequential:
    """The member's initial network: PyTorch's default init under the member's seed, weights
    multiplied by its ``init_scale``."""
    hp = member.hparams
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(member.seed)
        model = build_model(arch, dataset.input_shape, dataset.n_classes, hp["activation"],
                            hp["dropout"])
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
                module.weight.mul_(hp["init_scale"])
    return model


@dataclass
class Population:
    """Stacked parameters of M members.

    ``weights[i]: (M, out, in, *kernel)`` and ``biases[i]: (M, out)``.
    """

    space: WeightSpace
    arch: Architecture
    weights: list[Tensor]
    biases: list[Tensor]
    activation: str
    # Members per grouped convolution; None: all on a GPU, and on the CPU as many as keep
    # the first layer's activations near CONV_CHUNK_BYTES. Stacking many members makes
    # activations too large for the CPU caches, and oneDNN's grouped convolution then runs
    # several times slower per member (benchmarks/README.md).
    conv_chunk: int | None = None
    CONV_CHUNK_BYTES = 5 * 2**20

    def _cpu_conv_chunk(self, x: Tensor, shared: bool) -> int:
        batch = x.shape[0] if shared else x.shape[1]
        spatial = tuple(x.shape[2:] if shared else x.shape[3:])  # (N, C, *sp) | (M, N, C, *sp)
        positions = math.prod(self.arch.conv_output_sizes(spatial)[0])
        per_member = batch * self.weights[0].shape[1] * positions * x.element_size()
        return max(1, round(self.CONV_CHUNK_BYTES / per_member))

    @property
    def size(self) -> int:
        return self.weights[0].shape[0]

    @classmethod
    def from_modules(cls, modules: Sequence[nn.Module], arch: Architecture,
                     activation: str) -> Population:
        batch = WeightBatch.from_modules(modules)
        return cls(batch.space, arch, [w[:, 0].clone() for w in batch.weights],
                   [b[:, 0].clone() for b in batch.biases], activation)

    def to_weight_batch(self) -> WeightBatch:
        """The members' current weights; diverged (non-finite) members are kept, and flagged
        in the zoo's ``finite`` column."""
        return WeightBatch(self.space, [w.detach().unsqueeze(1) for w in self.weights],
                           [b.detach().unsqueeze(1) for b in self.biases], check_finite=False)

    def parameters(self) -> list[Tensor]:
        return [*self.weights, *self.biases]

    def forward(self, x: Tensor, masks: Sequence[Tensor | None] | None = None, *,
                shared: bool = False) -> Tensor:
        """Logits ``(M, batch, classes)``.

        ``x`` is ``(M, batch, *input)`` (one batch per member) or, with ``shared=True``,
        ``(batch, *input)`` (the same batch for every member). ``masks[i]``, of shape
        ``(M, batch, *hidden_shape)``, multiplies the activations after hidden layer i
        (inverted dropout), or is ``None``.
        """
        m = self.size
        act = _ACT_FUNCS[self.activation]
        n_hidden = len(self.weights) - 1
        if self.arch.family == "mlp":
            if shared:
                h = x.reshape(1, x.shape[0], -1).expand(m, -1, -1)
            else:
                h = x.reshape(m, x.shape[1], -1)
            for i in range(n_hidden):
                h = act(torch.baddbmm(self.biases[i].unsqueeze(1), h,
                                      self.weights[i].transpose(1, 2)))
                if masks is not None and masks[i] is not None:
                    h = h * masks[i]
        else:
            chunk = self.conv_chunk or (m if x.is_cuda else self._cpu_conv_chunk(x, shared))
            if m > chunk:  # keep each chunk's activations cache-sized (see conv_chunk)
                parts = []
                for lo in range(0, m, chunk):
                    sub = Population(self.space, self.arch,
                                     [w[lo:lo + chunk] for w in self.weights],
                                     [b[lo:lo + chunk] for b in self.biases],
                                     self.activation, chunk)
                    sub_x = x if shared else x[lo:lo + chunk]
                    sub_masks = None if masks is None else [
                        None if mk is None else mk[lo:lo + chunk] for mk in masks]
                    parts.append(sub.forward(sub_x, sub_masks, shared=shared))
                return torch.cat(parts, 0)
            # Members side by side along channels: one grouped convolution per layer.
            dims = self.weights[0].dim() - 3
            conv = F.conv2d if dims == 2 else F.conv1d
            if shared:
                b = x.shape[0]
                h = x.repeat(1, m, *([1] * dims))
            else:
                b = x.shape[1]
                h = x.transpose(0, 1).reshape(b, m * x.shape[2], *x.shape[3:])
            for i in range(n_hidden):
                w = self.weights[i]
                h = act(conv(h, w.reshape(-1, *w.shape[2:]), self.biases[i].reshape(-1),
                         stride=self.arch.stride, padding=self.arch.padding, groups=m))
                if masks is not None and masks[i] is not None:
                    h = h * masks[i].transpose(0, 1).reshape(h.shape)
            h = h.mean(dim=tuple(range(2, h.dim()))).view(b, m, -1).transpose(0, 1)
        return torch.baddbmm(self.biases[-1].unsqueeze(1), h, self.weights[-1].transpose(1, 2))

    def hidden_shapes(self, input_shape: Sequence[int]) -> list[tuple[int, ...]]:
        """Per-example activation shapes after each hidden layer (for dropout masks)."""
        if self.arch.family == "mlp":
            return [(w.shape[1],) for w in self.weights[:-1]]
        sizes = self.arch.conv_output_sizes(tuple(input_shape[1:]))
        return [(w.shape[1], *sp) for w, sp in zip(self.weights[:-1], sizes, strict=True)]


class BatchedOptimizer:
    """SGD (momentum, no dampening), Adam or RMSprop for M members at once, each with its own
    learning rate, L2 (``torch.optim``'s ``weight_decay``) and momentum; the update formulas
    follow ``torch.optim`` exactly (default betas/alpha/eps)."""

    def __init__(self, kind: str, params: list[Tensor], lr: Tensor, l2: Tensor,
                 momentum: Tensor):
        self.kind = kind
        self.params = params
        self.lr, self.l2, self.momentum = lr, l2, momentum
        self.step_count = 0
        self.state: list[dict[str, Tensor]] = [{} for _ in params]

    @staticmethod
    def _per_member(v: Tensor, p: Tensor) -> Tensor:
        return v.view(-1, *([1] * (p.dim() - 1)))

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        t = self.step_count
        for p, st in zip(self.params, self.state, strict=True):
            g = p.grad
            lr = self._per_member(self.lr, p)
            g = g + self._per_member(self.l2, p) * p
            if self.kind == "sgd":
                mom = self._per_member(self.momentum, p)
                buf = st.get("buf")
                buf = g.clone() if buf is None else buf.mul_(mom).add_(g)
                st["buf"] = buf
                # momentum 0 members: buf == g on every step
                p.sub_(lr * buf)
            elif self.kind == "adam":
                b1, b2, eps = 0.9, 0.999, 1e-8
                m = st.setdefault("m", torch.zeros_like(p))
                v = st.setdefault("v", torch.zeros_like(p))
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
                denom = (v.sqrt() / math.sqrt(bc2)).add_(eps)
                p.sub_((lr / bc1) * m / denom)
            elif self.kind == "rmsprop":
                alpha, eps = 0.99, 1e-8
                sq = st.setdefault("sq", torch.zeros_like(p))
                sq.mul_(alpha).addcmul_(g, g, value=1 - alpha)
                p.sub_(lr * g / sq.sqrt().add_(eps))
            else:  # pragma: no cover - validated by the spec
                raise ValueError(self.kind)


def torch_optimizer(kind: str, params, lr: float, l2: float, momentum: float):
    """The single-network ``torch.optim`` optimizer that :class:`BatchedOptimizer` matches."""
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=l2)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=l2)
    return torch.optim.RMSprop(params, lr=lr, weight_decay=l2)


@dataclass
class MemberState:
    """Per-member randomness: its training subset and generator for order and dropout."""

    generator: torch.Generator
    subset: Tensor


def member_states(members: Sequence[Member], n_train: int) -> list[MemberState]:
    out = []
    for mem in members:
        g = torch.Generator().manual_seed(mem.seed + 1)
        k = max(1, int(round(mem.hparams["train_fraction"] * n_train)))
        out.append(MemberState(g, torch.randperm(n_train, generator=g)[:k].sort().values))
    return out


def epoch_batches(states: Sequence[MemberState], batch_size: int) -> list[Tensor]:
    """Index batches ``(M, batch)`` for one epoch; the last, smaller batch is kept."""
    orders = torch.stack([s.subset[torch.randperm(len(s.subset), generator=s.generator)]
                          for s in states])
    return list(orders.split(batch_size, dim=1))


def dropout_masks(states: Sequence[MemberState], rates: Sequence[float], batch: int,
                  shapes: Sequence[tuple[int, ...]]) -> list[Tensor | None]:
    """Inverted-dropout masks ``(M, batch, *shape)`` per hidden layer, or None if no member
    drops out. Each member's mask comes from its own generator."""
    if not any(rates):
        return [None] * len(shapes)
    masks = []
    for shape in shapes:
        per_member = []
        for s, p in zip(states, rates, strict=True):
            if p:
                keep = torch.rand((batch, *shape), generator=s.generator) >= p
                per_member.append(keep.float() / (1 - p))
            else:
                per_member.append(torch.ones((batch, *shape)))
        masks.append(torch.stack(per_member))
    return masks


@dataclass
class Evaluation:
    loss: Tensor  # (M,)
    accuracy: Tensor  # (M,)
    logits: Tensor | None  # (M, N, classes)


@torch.no_grad()
def evaluate(pop: Population, x: Tensor, y: Tensor, keep_logits: bool = False,
             chunk: int | None = None) -> Evaluation:
    """Loss and accuracy of every member on a labeled set.

    ``x: (N, *input)``, ``y: (N,)``: one set shared by all members. Or ``x: (M, N, *input)``,
    ``y: (M, N)``: one set per member (e.g. each member's own training subset). Examples go
    ``chunk`` at a time (default: 64 for CNNs, whose activations must stay cache-sized on
    the CPU, where 64 runs 3.5x faster than 1024; 1024 for MLPs).
    """
    if chunk is None:
        chunk = 64 if pop.arch.family == "cnn" else 1024
    shared = y.dim() == 1
    n = y.shape[-1]
    losses, correct, logits = torch.zeros(pop.size), torch.zeros(pop.size), []
    for start in range(0, n, chunk):
        if shared:
            out = pop.forward(x[start:start + chunk], shared=True)
            yy = y[start:start + chunk].expand(pop.size, -1)
        else:
            out = pop.forward(x[:, start:start + chunk])
            yy = y[:, start:start + chunk]
        losses += F.cross_entropy(out.flatten(0, 1), yy.flatten(),
                                  reduction="none").view(pop.size, -1).sum(1)
        correct += (out.argmax(-1) == yy).sum(1)
        if keep_logits:
            logits.append(out)
    return Evaluation(losses / n, correct / n, torch.cat(logits, 1) if keep_logits else None)


def train_population(
    members: Sequence[Member],
    arch: Architecture,
    dataset: Dataset,
    checkpoint_epochs: Sequence[int],
    on_checkpoint: Callable[[int, Population], None],
    on_step: Callable[[], None] | None = None,
) -> Population:
    """Train members that share their structural hyperparameters, together.

    Calls ``on_checkpoint(epoch, population)`` at each epoch in ``checkpoint_epochs``
    (0 = initialization) and ``on_step()`` after every optimizer step.
    """
    hp0 = members[0].hparams
    for key in ("optimizer", "activation", "batch_size", "epochs", "train_fraction"):
        if any(m.hparams[key] != hp0[key] for m in members):
            raise ValueError(f"members of one population must share {key!r}")
    pop = Population.from_modules([init_member(m, arch, dataset) for m in members], arch,
                                  hp0["activation"])
    for p in pop.parameters():
        p.requires_grad_(True)

    def vec(name: str) -> Tensor:
        return torch.tensor([float(m.hparams[name]) for m in members])

    opt = BatchedOptimizer(hp0["optimizer"], pop.parameters(), vec("lr"), vec("l2"),
                           vec("momentum"))
    states = member_states(members, len(dataset.y_train))
    rates = [float(m.hparams["dropout"]) for m in members]
    shapes = pop.hidden_shapes(dataset.input_shape)
    checkpoints = set(checkpoint_epochs)
    if 0 in checkpoints:
        on_checkpoint(0, pop)
    for epoch in range(1, hp0["epochs"] + 1):
        for idx in epoch_batches(states, hp0["batch_size"]):
            xb, yb = dataset.x_train[idx], dataset.y_train[idx]  # (M, b, ...), (M, b)
            masks = dropout_masks(states, rates, idx.shape[1], shapes)
            logits = pop.forward(xb, masks)
            # Sum of the members' mean losses: each member's gradient is its own.
            loss = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none")
            loss = loss.view(len(members), -1).mean(1).sum()
            for p in pop.parameters():
                p.grad = None
            loss.backward()
            opt.step()
            if on_step is not None:
                on_step()
        if epoch in checkpoints:
            on_checkpoint(epoch, pop)
    return pop


def train_single_reference(member: Member, arch: Architecture, dataset: Dataset) -> nn.Module:
    """Train one member alone with ``torch.optim``, drawing its data order and dropout masks
    from its own generator in the same order as :func:`train_population`. The reference for
    the equivalence test and the baseline of the benchmark."""
    hp = member.hparams
    model = init_member(member, arch, dataset)
    pop = Population.from_modules([model], arch, hp["activation"])
    params = pop.parameters()
    for p in params:
        p.requires_grad_(True)
    opt = torch_optimizer(hp["optimizer"], params, hp["lr"], hp["l2"], hp["momentum"])
    (state,) = member_states([member], len(dataset.y_train))
    shapes = pop.hidden_shapes(dataset.input_shape)
    for _ in range(hp["epochs"]):
        for idx in epoch_batches([state], hp["batch_size"]):
            masks = dropout_masks([state], [hp["dropout"]], idx.shape[1], shapes)
            logits = pop.forward(dataset.x_train[idx], masks)
            loss = F.cross_entropy(logits[0], dataset.y_train[idx[0]])
            opt.zero_grad()
            loss.backward()
            opt.step()
    (trained,) = pop.to_weight_batch().to_modules(model)
    return trained
