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

What a step costs beyond its matrix products is kept small (``benchmarks/README.md`` has the
profile): all members' parameters live in one ``(M, P)`` buffer, as do their gradients and
optimizer state, so an optimizer step is a handful of elementwise passes over one tensor;
a minibatch is one ``index_select`` per step; logits are computed class-major
``(M, classes, batch)``, where log-softmax runs about 15x faster on this CPU than over a last
axis of 10 classes; initial weights are drawn straight into the stacked buffer from each
member's own generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
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


def _init_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]


def init_population(members: Sequence[Member], arch: Architecture,
                    dataset: Dataset) -> Population:
    """The members' initial networks, stacked: the same numbers as :func:`init_member` for
    each member (PyTorch's default init, drawn in the same order from a generator seeded with
    the member's seed), drawn straight into the population's buffer."""
    hp0 = members[0].hparams
    template = build_model(arch, dataset.input_shape, dataset.n_classes, hp0["activation"],
                           hp0["dropout"])
    space = WeightSpace.from_module(template)
    layers = _init_layers(template)
    m = len(members)
    weights = [torch.empty(m, *layer.weight.shape) for layer in layers]
    biases = [torch.empty(m, *layer.bias.shape) for layer in layers]
    for k, member in enumerate(members):
        g = torch.Generator().manual_seed(member.seed)
        scale = member.hparams["init_scale"]
        for w, b in zip(weights, biases, strict=True):
            # nn.Linear / nn.ConvNd.reset_parameters, with the member's generator
            nn.init.kaiming_uniform_(w[k], a=math.sqrt(5), generator=g)
            fan_in = w[k][0].numel()
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(b[k], -bound, bound, generator=g)
            w[k].mul_(scale)
    return Population(space, arch, weights, biases, hp0["activation"])


def _flat_views(tensors: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """One ``(M, P)`` buffer holding ``tensors`` (each ``(M, ...)``) side by side, and views
    of it shaped like them."""
    m = tensors[0].shape[0]
    flat = torch.cat([t.detach().reshape(m, -1) for t in tensors], 1)
    views, start = [], 0
    for t in tensors:
        n = t[0].numel()
        views.append(flat[:, start:start + n].view(t.shape))
        start += n
    return flat, views


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

    def flatten_(self) -> Tensor:
        """Move the parameters into one ``(M, P)`` buffer (returned); ``weights`` and
        ``biases`` become views of it. The optimizer updates that buffer in one pass."""
        flat, views = _flat_views([*self.weights, *self.biases])
        n = len(self.weights)
        self.weights, self.biases = views[:n], views[n:]
        return flat

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
        """Logits ``(M, batch, classes)`` (a transposed view of :meth:`logits_cm`); arguments
        as there."""
        return self.logits_cm(x, masks, shared=shared).transpose(1, 2)

    def logits_cm(self, x: Tensor, masks: Sequence[Tensor | None] | None = None, *,
                  shared: bool = False) -> Tensor:
        """Logits, class-major: ``(M, classes, batch)``.

        ``x`` is ``(M, batch, *input)`` (one batch per member) or, with ``shared=True``,
        ``(batch, *input)`` (the same batch for every member). ``masks[i]``, of shape
        ``(M, batch, *hidden_shape)``, multiplies the activations after hidden layer i
        (inverted dropout), or is ``None``.
        """
        m = self.size
        act = _ACT_FUNCS[self.activation]
        n_hidden = len(self.weights) - 1
        if self.arch.family == "mlp":
            # Feature-major activations (M, features, batch): every product is W @ h, and
            # the gradients flowing back stay contiguous.
            if shared:
                h = x.reshape(1, x.shape[0], -1).expand(m, -1, -1).transpose(1, 2)
            else:
                h = x.reshape(m, x.shape[1], -1).transpose(1, 2)
            for i in range(n_hidden):
                h = act(torch.baddbmm(self.biases[i].unsqueeze(2), self.weights[i], h))
                if masks is not None and masks[i] is not None:
                    h = h * masks[i].transpose(1, 2)
            return torch.baddbmm(self.biases[-1].unsqueeze(2), self.weights[-1], h)
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
                    parts.append(sub.logits_cm(sub_x, sub_masks, shared=shared))
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
        # class-major: log-softmax over a middle axis is far faster than over 10 last ones
        return torch.baddbmm(self.biases[-1].unsqueeze(2), self.weights[-1], h.transpose(1, 2))

    def hidden_shapes(self, input_shape: Sequence[int]) -> list[tuple[int, ...]]:
        """Per-example activation shapes after each hidden layer (for dropout masks)."""
        if self.arch.family == "mlp":
            return [(w.shape[1],) for w in self.weights[:-1]]
        sizes = self.arch.conv_output_sizes(tuple(input_shape[1:]))
        return [(w.shape[1], *sp) for w, sp in zip(self.weights[:-1], sizes, strict=True)]


class BatchedOptimizer:
    """SGD (momentum, no dampening), Adam or RMSprop for M members at once, each with its own
    learning rate, L2 (``torch.optim``'s ``weight_decay``) and momentum; the update formulas
    follow ``torch.optim`` exactly (default betas/alpha/eps).

    ``param`` is the population's ``(M, P)`` parameter buffer (:meth:`Population.flatten_`),
    ``lr``, ``l2`` and ``momentum`` are ``(M,)``, and :meth:`step` takes the gradient as one
    ``(M, P)`` tensor. A step is a few elementwise passes over the whole buffer, in place.
    """

    def __init__(self, kind: str, param: Tensor, lr: Tensor, l2: Tensor, momentum: Tensor):
        if kind not in ("sgd", "adam", "rmsprop"):
            raise ValueError(f"unknown optimizer {kind!r}")
        self.kind = kind
        self.param = param
        self.lr, self.l2, self.momentum = lr.view(-1, 1), l2.view(-1, 1), momentum.view(-1, 1)
        self.any_l2 = bool((l2 != 0).any())
        self.step_count = 0
        self.state: dict[str, Tensor] = {}

    def select_(self, keep: Tensor, param: Tensor) -> None:
        """Keep only members ``keep`` (indices), whose parameters are now ``param``
        ``(len(keep), P)``; their state (moments, step count) carries on unchanged."""
        self.param = param
        self.lr, self.l2, self.momentum = self.lr[keep], self.l2[keep], self.momentum[keep]
        self.state = {k: v[keep].clone() for k, v in self.state.items()}

    @torch.no_grad()
    def step(self, grad: Tensor) -> None:
        """One update of every member from ``grad: (M, P)`` (used as scratch: overwritten).

        Everything happens in place in buffers kept from step to step: on this CPU a fresh
        multi-megabyte temporary costs more in page faults than the arithmetic on it.
        """
        self.step_count += 1
        t = self.step_count
        p, st = self.param, self.state
        g = grad.addcmul_(self.l2, p) if self.any_l2 else grad  # torch: grad + wd * p
        if self.kind == "sgd":
            buf = st.get("buf")
            if buf is None:
                buf = st["buf"] = g.clone()
            else:  # momentum 0 members: buf == g on every step
                buf.mul_(self.momentum).add_(g)
            p.addcmul_(self.lr, buf, value=-1)
            return
        tmp = st.get("tmp")
        if tmp is None:
            tmp = st["tmp"] = torch.empty_like(p)
        if self.kind == "adam":
            b1, b2, eps = 0.9, 0.999, 1e-8
            m = st.setdefault("m", torch.zeros_like(p))
            v = st.setdefault("v", torch.zeros_like(p))
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
            torch.sqrt(v, out=tmp).div_(math.sqrt(bc2)).add_(eps)  # denom
            torch.div(m, tmp, out=tmp)
            p.addcmul_(tmp, self.lr / bc1, value=-1)  # torch: p - lr / bc1 * (m / denom)
        else:
            alpha, eps = 0.99, 1e-8
            sq = st.setdefault("sq", torch.zeros_like(p))
            sq.mul_(alpha).addcmul_(g, g, value=1 - alpha)
            torch.sqrt(sq, out=tmp).add_(eps)
            torch.div(g, tmp, out=tmp)
            p.addcmul_(tmp, self.lr, value=-1)  # torch: p - lr * (g / (sqrt(sq) + eps))


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


def epoch_dropout_masks(states: Sequence[MemberState], rates: Sequence[float],
                        batch_sizes: Sequence[int], shapes: Sequence[tuple[int, ...]],
                        block_bytes: int = 64 * 2**20) -> Iterator[list[Tensor | None]]:
    """The masks :func:`dropout_masks` gives at each step of an epoch (steps of
    ``batch_sizes`` examples), equal to the last bit, but drawn a block of steps at a time.

    A generator's uniform stream does not depend on how it is cut into calls, so one draw of
    a whole block equals the per-step, per-layer draws laid end to end; that turns
    M x layers small calls per step into M calls per block (``block_bytes`` bounds the
    block's uniforms).
    """
    if not any(rates):
        for _ in batch_sizes:
            yield [None] * len(shapes)
        return
    m = len(states)
    sizes = [math.prod(sh) for sh in shapes]
    per_example = sum(sizes)
    drop = [k for k, p in enumerate(rates) if p]
    # float32 rate and 1 - rate, as dropout_masks compares and divides
    p = torch.tensor([float(rates[k]) for k in drop])
    q = torch.tensor([1 - float(rates[k]) for k in drop])
    start = 0
    while start < len(batch_sizes):
        stop, n = start, 0
        while stop < len(batch_sizes) and (stop == start or
                                           (n + batch_sizes[stop]) * per_example * 4 * m
                                           <= block_bytes):
            n += batch_sizes[stop]
            stop += 1
        u = torch.stack([torch.rand(n * per_example, generator=states[k].generator)
                         for k in drop])  # (dropping members, block uniforms)
        offset = 0
        for b in batch_sizes[start:stop]:
            masks = []
            for size, shape in zip(sizes, shapes, strict=True):
                part = u[:, offset:offset + b * size].view(len(drop), b, *shape)
                offset += b * size
                mask = torch.ones(m, b, *shape)
                per_member = (-1, *([1] * (part.dim() - 1)))
                mask[drop] = (part >= p.view(per_member)).float() / q.view(per_member)
                masks.append(mask)
            yield masks
        start = stop


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
            out = pop.logits_cm(x[start:start + chunk], shared=True)  # (M, classes, chunk)
            yy = y[start:start + chunk].expand(pop.size, -1)
        else:
            out = pop.logits_cm(x[:, start:start + chunk])
            yy = y[:, start:start + chunk]
        losses += F.cross_entropy(out, yy, reduction="none").sum(1)
        correct += (out.argmax(1) == yy).sum(1)
        if keep_logits:
            logits.append(out.transpose(1, 2))
    return Evaluation(losses / n, correct / n, torch.cat(logits, 1) if keep_logits else None)


def gather(data: Tensor, idx: Tensor) -> Tensor:
    """``data[idx]`` for an index batch ``idx: (M, b)``: ``(M, b, *data.shape[1:])``, as one
    ``index_select`` (several times faster than advanced indexing here)."""
    return data.index_select(0, idx.reshape(-1)).view(*idx.shape, *data.shape[1:])


def population_loss(pop: Population, xb: Tensor, yb: Tensor,
                    masks: Sequence[Tensor | None] | None = None) -> Tensor:
    """The sum over members of each member's mean cross-entropy on its own batch (so each
    member's gradient is its own): ``xb: (M, b, *input)``, ``yb: (M, b)``."""
    return F.cross_entropy(pop.logits_cm(xb, masks), yb, reduction="none").mean(1).sum()


# d act(z) / dz from the activation's output a = act(z), for the hand-written MLP backward
_ACT_GRADS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": lambda a: (a > 0).to(a.dtype),
    "tanh": lambda a: 1 - a * a,
    "sigmoid": lambda a: a * (1 - a),
}


def population_grad_(pop: Population, xb: Tensor, yb: Tensor, out: Tensor,
                     masks: Sequence[Tensor | None] | None = None) -> Tensor:
    """Each member's gradient of its own mean cross-entropy (:func:`population_loss`),
    written into ``out: (M, P)`` laid out like :meth:`Population.flatten_` (weights, then
    biases); returns ``out``.

    MLPs with a ReLU, tanh or sigmoid activation take a hand-written backward pass: the
    same batched products autograd would run, without its graph bookkeeping. For the digits
    MLP population its forward and backward take about two thirds of autograd's time, and
    training runs about 1.3 times faster (``benchmarks/README.md``). Other networks use
    autograd.
    """
    m = pop.size
    if pop.arch.family != "mlp" or pop.activation not in _ACT_GRADS:
        params = pop.parameters()
        grads = torch.autograd.grad(population_loss(pop, xb, yb, masks), params)
        return torch.cat([g.reshape(m, -1) for g in grads], 1, out=out)
    d_act = _ACT_GRADS[pop.activation]
    act = _ACT_FUNCS[pop.activation]
    weights = [w.detach() for w in pop.weights]
    biases = [b.detach() for b in pop.biases]
    with torch.no_grad():
        hs = [xb.reshape(m, xb.shape[1], -1).transpose(1, 2)]  # (M, features, batch)
        acts = []
        for i in range(len(weights) - 1):
            a = act(torch.baddbmm(biases[i].unsqueeze(2), weights[i], hs[-1]))
            acts.append(a)
            if masks is not None and masks[i] is not None:
                a = a * masks[i].transpose(1, 2)
            hs.append(a)
        z = torch.baddbmm(biases[-1].unsqueeze(2), weights[-1], hs[-1])  # (M, classes, b)
        # d(mean cross-entropy)/dz = (softmax - one-hot) / b
        dz = torch.softmax(z, 1)
        dz.scatter_add_(1, yb.unsqueeze(1), torch.full((m, 1, yb.shape[1]), -1.0,
                                                        dtype=dz.dtype, device=dz.device))
        dz.mul_(1.0 / yb.shape[1])
        start = sum(w[0].numel() for w in weights)
        offsets, o = [], 0
        for w in weights:
            offsets.append(o)
            o += w[0].numel()
        for i in range(len(weights) - 1, -1, -1):
            w = weights[i]
            n = w[0].numel()
            out[:, offsets[i]:offsets[i] + n].view(w.shape).copy_(
                torch.bmm(dz, hs[i].transpose(1, 2)))
            b0 = start + sum(b[0].numel() for b in biases[:i])
            torch.sum(dz, 2, out=out[:, b0:b0 + biases[i].shape[1]])
            if i > 0:
                dz = torch.bmm(w.transpose(1, 2), dz)
                if masks is not None and masks[i - 1] is not None:
                    dz.mul_(masks[i - 1].transpose(1, 2))
                dz.mul_(d_act(acts[i - 1]))
    return out


@torch.no_grad()
def member_train_loss(pop: Population, dataset: Dataset, subsets: Tensor,
                      chunk: int | None = None) -> Tensor:
    """Each member's mean cross-entropy on its own training subset, without dropout:
    ``(M,)``. ``subsets: (M, n)`` indexes ``dataset.x_train``; examples are gathered
    ``chunk`` at a time, so the members' copies of the data are never all in memory."""
    if chunk is None:
        chunk = 64 if pop.arch.family == "cnn" else 1024
    n = subsets.shape[1]
    shared = bool((subsets == subsets[:1]).all())  # e.g. train_fraction 1: one set for all
    total = torch.zeros(pop.size)
    for start in range(0, n, chunk):
        idx = subsets[:, start:start + chunk]
        if shared:
            out = pop.logits_cm(dataset.x_train[idx[0]], shared=True)
        else:
            out = pop.logits_cm(gather(dataset.x_train, idx))
        total += F.cross_entropy(out, gather(dataset.y_train, idx), reduction="none").sum(1)
    return total / n


def train_population(
    members: Sequence[Member],
    arch: Architecture,
    dataset: Dataset,
    checkpoint_epochs: Sequence[int],
    on_checkpoint: Callable[[int, Population], None],
    on_step: Callable[[], None] | None = None,
    *,
    stop_loss: float | None = None,
    on_stop: Callable[[int, list[int]], None] | None = None,
) -> Population:
    """Train members that share their structural hyperparameters, together.

    Calls ``on_checkpoint(epoch, population)`` at each epoch in ``checkpoint_epochs``
    (0 = initialization) and ``on_step()`` after every optimizer step.

    ``stop_loss``: the stopping rule of arXiv 1912.02178 (Sec. 2): at the end of every epoch
    each member's cross-entropy on its own training subset (no dropout) is measured, and a
    member whose loss is ``<= stop_loss`` stops there; ``epochs`` is the cap. A stopped
    member's weights no longer change (later checkpoints store them as they were) and it
    leaves the population, so it costs nothing more. ``on_stop(epoch, positions)`` names the
    members (positions in ``members``) that stopped at ``epoch``. Each member's training is
    exactly that of :func:`train_single_reference` with the same rule.
    """
    hp0 = members[0].hparams
    for key in ("optimizer", "activation", "batch_size", "epochs", "train_fraction"):
        if any(m.hparams[key] != hp0[key] for m in members):
            raise ValueError(f"members of one population must share {key!r}")
    pop = init_population(members, arch, dataset)
    flat = pop.flatten_()
    params = pop.parameters()
    for p in params:
        p.requires_grad_(True)

    def vec(name: str) -> Tensor:
        return torch.tensor([float(m.hparams[name]) for m in members])

    opt = BatchedOptimizer(hp0["optimizer"], flat, vec("lr"), vec("l2"), vec("momentum"))
    grad = torch.empty_like(flat)  # reused: a fresh buffer per step costs page faults
    states = member_states(members, len(dataset.y_train))
    rates = [float(m.hparams["dropout"]) for m in members]
    shapes = pop.hidden_shapes(dataset.input_shape)
    checkpoints = set(checkpoint_epochs)
    # Once members stop, the training population holds only the running ones (positions
    # ``running`` of the full population ``full``, whose buffer keeps everyone's weights).
    full, full_flat, running = pop, flat, list(range(len(members)))
    if 0 in checkpoints:
        on_checkpoint(0, full)
    for epoch in range(1, hp0["epochs"] + 1):
        batches = epoch_batches(states, hp0["batch_size"])
        mask_stream = epoch_dropout_masks(states, rates, [i.shape[1] for i in batches], shapes)
        for idx, masks in zip(batches, mask_stream, strict=True):
            xb, yb = gather(dataset.x_train, idx), gather(dataset.y_train, idx)
            opt.step(population_grad_(pop, xb, yb, grad, masks))
            if on_step is not None:
                on_step()
        if stop_loss is not None:
            subsets = torch.stack([s.subset for s in states])
            done = member_train_loss(pop, dataset, subsets) <= stop_loss
            if full is not pop:
                full_flat[running] = flat.detach()
            if bool(done.any()):
                if on_stop is not None:
                    on_stop(epoch, [running[k] for k in done.nonzero().flatten().tolist()])
                if full is pop:  # first stop: the full population gets its own buffer
                    full_flat = flat.detach().clone()
                    full = _population_on(pop, full_flat)
                keep = (~done).nonzero().flatten()
                running = [running[k] for k in keep.tolist()]
                if running:
                    flat = flat.detach()[keep].clone()
                    pop = _population_on(pop, flat)
                    params = pop.parameters()
                    for p in params:
                        p.requires_grad_(True)
                    opt.select_(keep, flat)
                    grad = torch.empty_like(flat)
                    states = [states[k] for k in keep.tolist()]
                    rates = [rates[k] for k in keep.tolist()]
        if epoch in checkpoints:
            on_checkpoint(epoch, full)
        if not running:
            for e in sorted(c for c in checkpoints if c > epoch):  # all stopped before these
                on_checkpoint(e, full)
            break
    return full


def _population_on(pop: Population, flat: Tensor) -> Population:
    """A population like ``pop`` whose parameters are views of ``flat: (M', P)``."""
    views, start = [], 0
    for t in pop.parameters():
        n = t[0].numel()
        views.append(flat[:, start:start + n].view(flat.shape[0], *t.shape[1:]))
        start += n
    k = len(pop.weights)
    return Population(pop.space, pop.arch, views[:k], views[k:], pop.activation,
                      pop.conv_chunk)


def train_single_reference(member: Member, arch: Architecture, dataset: Dataset, *,
                           stop_loss: float | None = None,
                           on_stop: Callable[[int], None] | None = None) -> nn.Module:
    """Train one member alone with ``torch.optim``, drawing its data order and dropout masks
    from its own generator in the same order as :func:`train_population`. The reference for
    the equivalence test and the baseline of the benchmark.

    ``stop_loss``: after each epoch, the plain module (eval mode, no dropout) is scored on the
    member's training subset, and training ends at the first epoch whose mean cross-entropy
    is ``<= stop_loss`` (``on_stop(epoch)`` is called then)."""
    hp = member.hparams
    model = init_member(member, arch, dataset)
    pop = Population.from_modules([model], arch, hp["activation"])
    params = pop.parameters()
    for p in params:
        p.requires_grad_(True)
    opt = torch_optimizer(hp["optimizer"], params, hp["lr"], hp["l2"], hp["momentum"])
    (state,) = member_states([member], len(dataset.y_train))
    shapes = pop.hidden_shapes(dataset.input_shape)
    for epoch in range(1, hp["epochs"] + 1):
        for idx in epoch_batches([state], hp["batch_size"]):
            masks = dropout_masks([state], [hp["dropout"]], idx.shape[1], shapes)
            logits = pop.forward(dataset.x_train[idx], masks)
            loss = F.cross_entropy(logits[0], dataset.y_train[idx[0]])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if stop_loss is not None:
            (now,) = pop.to_weight_batch().to_modules(model)
            now.eval()
            with torch.no_grad():
                train_loss = F.cross_entropy(now(dataset.x_train[state.subset]),
                                             dataset.y_train[state.subset])
            if float(train_loss) <= stop_loss:
                if on_stop is not None:
                    on_stop(epoch)
                break
    (trained,) = pop.to_weight_batch().to_modules(model)
    return trained
