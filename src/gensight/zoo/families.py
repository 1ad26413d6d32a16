"""Zoo families beyond MLPs and CNNs: character-level GRUs and residual CNNs (issue #16).

Their weight spaces are not :class:`~gensight.weightspace.WeightSpace`\\ s (recurrent weights
carry one permutation on both axes, GRU rows are gate blocks, residual additions tie channel
permutations), so a zoo of them stores a :class:`~gensight.weightspace.ParamSpace`: the
state-dict shapes and the permutation spec that :func:`gensight.nf.perm_spec` derives from
the template module. UNF (arXiv 2402.05232) and Deep Sets read that space; StatNN reads any.

- ``family = "gru"`` on ``dataset = "arith"``: the UNF paper's Tiny RNN Zoo task, scaled to a
  CPU (arXiv 2402.05232, Sec. 5.1: RNNs "trained to do arithmetic by completing given
  questions character-by-character", e.g. ``15+20=`` -> ``35<EOS>``; the paper's zoo has
  10^4 encoder-decoder GRUs of width 128 on numbers of up to five digits, varying the
  learning rate and batch size). Here: one decoder-only :class:`CharGRU` (one-hot
  characters -> ``nn.GRU`` -> linear readout) reads ``"a+b="`` and is trained with
  next-character cross-entropy on the answer ``"c."`` (``"."`` ends it), with a and b in
  0..99 and b in 0..9 (:func:`gensight.data.arith.load_arith`). A member's *accuracy* columns
  (``train_acc``, ``val_acc``, ``test_acc``) are its **success rate**: the fraction of
  questions whose every answer character, the end mark included, is the argmax (teacher
  forcing; greedy decoding writes the same answer exactly when this holds).
  (``b`` runs over 0..9 only: a width-32 GRU learns this table on a CPU in tens of epochs.)
- ``family = "rescnn"``: a stem convolution, ``blocks`` residual blocks
  ``h <- act(h + conv2(act(conv1(h))))`` at constant width, global average pooling and a
  linear head (:class:`ResidualCNN`); the case NF-Layers cannot express (the residual
  addition ties the channel permutations of every block).

Members are trained as one population (:func:`train_param_population`): all members'
parameters in one ``(M, P)`` buffer updated by the zoo's
:class:`~gensight.zoo.train.BatchedOptimizer`, each member with its own data order and subset
(:func:`~gensight.zoo.train.member_states`), so that training a member in the population
gives the weights of :func:`train_param_reference` (the member alone, ``torch.optim``).
The GRU's batched forward is PyTorch's GRU equations with a leading member axis
(:func:`gru_logits`); residual CNNs run under ``torch.func.vmap``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensight.data import Dataset
from gensight.data.arith import IGNORE
from gensight.zoo.spec import Architecture, Member
from gensight.zoo.train import (
    _ACT_FUNCS,
    BatchedOptimizer,
    _flat_views,
    epoch_batches,
    gather,
    member_states,
    torch_optimizer,
)

PARAM_FAMILIES = ("gru", "rescnn")



# --- the template modules ----------------------------------------------------------------------

class CharGRU(nn.Module):
    """``nn.GRU(vocab -> hidden, layers)`` on one-hot characters, then a linear readout to
    next-character logits. ``forward``: one-hot ``(N, T, vocab)`` -> ``(N, T, vocab)``."""

    def __init__(self, vocab: int, hidden: int, layers: int = 1):
        super().__init__()
        self.rnn = nn.GRU(vocab, hidden, num_layers=layers, batch_first=True)
        self.readout = nn.Linear(hidden, vocab)

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.rnn(x)[0])


class _Act(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        return _ACT_FUNCS[self.name](x)


class ResidualCNN(nn.Module):
    """Stem ``Conv2d(in, C, k, stride)`` + act, ``blocks`` x ``h <- act(h + conv2(act(
    conv1(h))))`` (``Conv2d(C, C, k)``, same padding), global average pool, ``Linear(C,
    classes)``. ``forward``: ``(N, in, H, W)`` -> ``(N, classes)``."""

    def __init__(self, in_channels: int, channels: int, blocks: int, n_classes: int,
                 kernel_size: int = 3, stride: int = 2, activation: str = "relu"):
        super().__init__()
        pad = kernel_size // 2
        self.stem = nn.Conv2d(in_channels, channels, kernel_size, stride=stride, padding=pad)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "conv1": nn.Conv2d(channels, channels, kernel_size, padding=pad),
            "conv2": nn.Conv2d(channels, channels, kernel_size, padding=pad)})
            for _ in range(blocks))
        self.act = _Act(activation)
        self.head = nn.Linear(channels, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.stem(x))
        for block in self.blocks:
            h = self.act(h + block["conv2"](self.act(block["conv1"](h))))
        return self.head(h.mean((2, 3)))


def build_template(arch: Architecture, input_shape: Sequence[int], n_classes: int,
                   activation: str = "relu") -> nn.Module:
    """The module a member of a ``gru`` / ``rescnn`` zoo is (``n_classes``: the vocabulary
    for ``gru``)."""
    if arch.family == "gru":
        return CharGRU(n_classes, arch.hidden[0], len(arch.hidden))
    if arch.family == "rescnn":
        return ResidualCNN(input_shape[0], arch.channels[0], arch.blocks, n_classes,
                           arch.kernel_size, arch.stride, activation)
    raise ValueError(f"family {arch.family!r} is not one of {PARAM_FAMILIES}")


def init_member_params(member: Member, arch: Architecture, input_shape: Sequence[int],
                       n_classes: int) -> dict[str, Tensor]:
    """The member's initial parameters: PyTorch's default init under the member's seed, every
    weight matrix / kernel (not the biases) times its ``init_scale``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(member.seed)
        model = build_template(arch, input_shape, n_classes, member.hparams["activation"])
    scale = float(member.hparams["init_scale"])
    return {k: (p.detach() * scale if p.dim() >= 2 else p.detach().clone())
            for k, p in model.named_parameters()}


# --- batched forward passes --------------------------------------------------------------------

def gru_logits(params: dict[str, Tensor], tokens: Tensor, layers: int) -> Tensor:
    """Logits ``(M, B, T, V)`` of M :class:`CharGRU` members ``params[key]: (M, *shape)`` on
    token ids ``tokens: (M, B, T)`` (one-hot inputs, read as a column gather of
    ``weight_ih_l0``): PyTorch's GRU equations (``r, z, n`` gate order) with a member axis."""
    m, b, t_len = tokens.shape
    w_ih = params["rnn.weight_ih_l0"]                                   # (M, 3H, V)
    h_size = params["rnn.weight_hh_l0"].shape[-1]
    # x_t W_ih^T for one-hot x_t: the token's column of W_ih
    cols = w_ih.transpose(1, 2)                                         # (M, V, 3H)
    x = torch.gather(cols, 1, tokens.reshape(m, -1, 1).expand(-1, -1, cols.shape[-1]))
    x = x.view(m, b, t_len, -1)                                         # (M, B, T, 3H)
    for layer in range(layers):
        if layer > 0:
            x = torch.einsum("mbth,mgh->mbtg", x, params[f"rnn.weight_ih_l{layer}"])
        x = x + params[f"rnn.bias_ih_l{layer}"][:, None, None]
        w_hh = params[f"rnn.weight_hh_l{layer}"].transpose(1, 2)          # (M, H, 3H)
        b_hh = params[f"rnn.bias_hh_l{layer}"][:, None]                   # (M, 1, 3H)
        h = x.new_zeros(m, b, h_size)
        outs = []
        for step in range(t_len):
            gi = x[:, :, step]
            gh = torch.baddbmm(b_hh, h, w_hh)
            r = torch.sigmoid(gi[..., :h_size] + gh[..., :h_size])
            z = torch.sigmoid(gi[..., h_size:2 * h_size] + gh[..., h_size:2 * h_size])
            n = torch.tanh(gi[..., 2 * h_size:] + r * gh[..., 2 * h_size:])
            h = n + z * (h - n)                                             # (1 - z) n + z h
            outs.append(h)
        x = torch.stack(outs, 2)                                           # (M, B, T, H)
    return torch.einsum("mbth,mvh->mbtv", x, params["readout.weight"]) + \
        params["readout.bias"][:, None, None]


def module_logits(template: nn.Module) -> Callable[[dict[str, Tensor], Tensor], Tensor]:
    """``f(params (M, ...), x (M, B, ...)) -> (M, B, classes)``: ``template``'s forward,
    vmapped over the members with ``torch.func.functional_call``."""
    from torch.func import functional_call, vmap

    meta = template.to("meta")

    def one(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(meta, p, (x,))

    return vmap(one)


def population_logits(arch: Architecture, template: nn.Module
                      ) -> Callable[[dict[str, Tensor], Tensor], Tensor]:
    """The batched forward of a population of ``arch`` members."""
    if arch.family == "gru":
        layers = len(arch.hidden)
        return lambda params, x: gru_logits(params, x, layers)
    return module_logits(template)


# --- loss and evaluation -----------------------------------------------------------------------

def member_losses(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy per member ``(M,)`` over the scored targets of ``y: (M, B, ...)``
    (``IGNORE`` = not scored): what ``F.cross_entropy(..., ignore_index=IGNORE)`` gives for
    each member alone."""
    m = logits.shape[0]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                         ignore_index=IGNORE, reduction="none").view(m, -1)
    scored = (y.reshape(m, -1) != IGNORE).sum(1).clamp_min(1)
    return ce.sum(1) / scored


@dataclass
class ParamEvaluation:
    loss: Tensor      # (M,) mean cross-entropy over scored targets
    accuracy: Tensor  # (M,) classifiers: accuracy; sequences: success rate (exact answers)
    logits: Tensor | None = None


@torch.no_grad()
def evaluate_params(forward: Callable[[dict[str, Tensor], Tensor], Tensor],
                    params: dict[str, Tensor], x: Tensor, y: Tensor, *,
                    per_member: bool = False, keep_logits: bool = False,
                    chunk: int = 512) -> ParamEvaluation:
    """Loss and accuracy of every member on ``(x, y)``: shared ``(N, ...)``, or one set per
    member ``(M, N, ...)`` with ``per_member``. Sequence targets ``(N, T)``: accuracy is the
    success rate (every scored position of an example correct)."""
    m = next(iter(params.values())).shape[0]
    n = y.shape[1] if per_member else y.shape[0]
    ce_sum = torch.zeros(m, dtype=torch.float64)
    scored = torch.zeros(m, dtype=torch.float64)
    correct = torch.zeros(m, dtype=torch.float64)
    kept = []
    for start in range(0, n, chunk):
        if per_member:
            xb, yb = x[:, start:start + chunk], y[:, start:start + chunk]
        else:
            xs, ys = x[start:start + chunk], y[start:start + chunk]
            xb, yb = xs.expand(m, *xs.shape), ys.expand(m, *ys.shape)
        logits = forward(params, xb)
        k = yb.shape[1]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1),
                             ignore_index=IGNORE, reduction="none").view(m, k, -1)
        mask = (yb != IGNORE).reshape(m, k, -1)
        ce_sum += ce.sum((1, 2)).double()
        scored += mask.sum((1, 2)).double()
        hit = (logits.argmax(-1).reshape(m, k, -1) == yb.reshape(m, k, -1)) | ~mask
        correct += hit.all(-1).sum(1).double()
        if keep_logits:
            kept.append(logits)
    return ParamEvaluation((ce_sum / scored.clamp_min(1)).float(), (correct / n).float(),
                           torch.cat(kept, 1) if keep_logits else None)


# --- training ----------------------------------------------------------------------------------

def train_param_population(
    members: Sequence[Member],
    arch: Architecture,
    dataset: Dataset,
    checkpoint_epochs: Sequence[int],
    on_checkpoint: Callable[[int, dict[str, Tensor]], None],
    on_step: Callable[[], None] | None = None,
) -> dict[str, Tensor]:
    """Train members that share their structural hyperparameters together; returns the final
    parameters ``{key: (M, *shape)}``.

    Calls ``on_checkpoint(epoch, params)`` at each epoch in ``checkpoint_epochs`` (0 = the
    initialization) with the members' parameters at that point, and ``on_step()`` after every
    optimizer step. Each member's training is that of :func:`train_param_reference`.
    """
    hp0 = members[0].hparams
    for key in ("optimizer", "activation", "batch_size", "epochs", "train_fraction"):
        if any(m.hparams[key] != hp0[key] for m in members):
            raise ValueError(f"members of one population must share {key!r}")
    template = build_template(arch, dataset.input_shape, dataset.n_classes, hp0["activation"])
    forward = population_logits(arch, template)
    inits = [init_member_params(m, arch, dataset.input_shape, dataset.n_classes)
             for m in members]
    keys = list(inits[0])
    flat, views = _flat_views([torch.stack([p[k] for p in inits]) for k in keys])
    for v in views:
        v.requires_grad_(True)
    params = dict(zip(keys, views, strict=True))

    def vec(name: str) -> Tensor:
        return torch.tensor([float(m.hparams[name]) for m in members])

    opt = BatchedOptimizer(hp0["optimizer"], flat, vec("lr"), vec("l2"), vec("momentum"))
    grad = torch.empty_like(flat)
    states = member_states(members, len(dataset.y_train))
    checkpoints = set(checkpoint_epochs)
    if 0 in checkpoints:
        on_checkpoint(0, {k: v.detach() for k, v in params.items()})
    for epoch in range(1, hp0["epochs"] + 1):
        for idx in epoch_batches(states, hp0["batch_size"]):
            xb, yb = gather(dataset.x_train, idx), gather(dataset.y_train, idx)
            loss = member_losses(forward(params, xb), yb).sum()
            grads = torch.autograd.grad(loss, views)
            opt.step(torch.cat([g.reshape(len(members), -1) for g in grads], 1, out=grad))
            if on_step is not None:
                on_step()
        if epoch in checkpoints:
            on_checkpoint(epoch, {k: v.detach() for k, v in params.items()})
    return {k: v.detach() for k, v in params.items()}


def train_param_reference(member: Member, arch: Architecture, dataset: Dataset) -> nn.Module:
    """Train one member alone: its module (:func:`build_template`, initialized as
    :func:`init_member_params`), ``torch.optim`` and its own data order, as
    :func:`train_param_population` draws it. The reference of the equivalence test."""
    hp = member.hparams
    model = build_template(arch, dataset.input_shape, dataset.n_classes, hp["activation"])
    model.load_state_dict(init_member_params(member, arch, dataset.input_shape,
                                             dataset.n_classes))
    opt = torch_optimizer(hp["optimizer"], model.parameters(), hp["lr"], hp["l2"],
                          hp["momentum"])
    (state,) = member_states([member], len(dataset.y_train))
    vocab = dataset.n_classes
    for _ in range(hp["epochs"]):
        for idx in epoch_batches([state], hp["batch_size"]):
            xb, yb = dataset.x_train[idx[0]], dataset.y_train[idx[0]]
            if arch.family == "gru":
                xb = F.one_hot(xb, vocab).to(torch.get_default_dtype())
            logits = model(xb)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1),
                                   ignore_index=IGNORE)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def member_module(arch: Architecture, input_shape: Sequence[int], n_classes: int,
                  state: dict[str, Tensor], activation: str = "relu") -> nn.Module:
    """A member as an ``nn.Module`` loaded with ``state`` (eval mode)."""
    model = build_template(arch, input_shape, n_classes, activation)
    model.load_state_dict(state)
    return model.eval()


def n_params(arch: Architecture, input_shape: Sequence[int], n_classes: int) -> int:
    """Parameters of a member (without building it)."""
    if arch.family == "gru":
        h, layers, v = arch.hidden[0], len(arch.hidden), n_classes
        first = 3 * h * (v + h) + 6 * h
        return first + (layers - 1) * (3 * h * 2 * h + 6 * h) + h * v + v
    c, k = arch.channels[0], arch.kernel_size ** 2
    return (input_shape[0] * c * k + c) + arch.blocks * 2 * (c * c * k + c) + c * n_classes + \
        n_classes


def forward_macs(arch: Architecture, input_shape: Sequence[int], n_classes: int) -> int:
    """Multiply-accumulates of one example's forward pass (a whole sequence for ``gru``)."""
    if arch.family == "gru":
        h, layers, v = arch.hidden[0], len(arch.hidden), n_classes
        t = input_shape[0]
        # per step: W_hh of every layer, W_ih of the upper layers, the one-hot gather, readout
        return t * (3 * h * h * layers + 3 * h * h * (layers - 1) + 3 * h + h * v)
    c, k, s = arch.channels[0], arch.kernel_size ** 2, arch.stride
    side = [(n + 2 * (arch.kernel_size // 2) - arch.kernel_size) // s + 1
            for n in input_shape[1:]]
    pos = math.prod(side)
    return pos * (input_shape[0] * c * k + arch.blocks * 2 * c * c * k) + c * n_classes
