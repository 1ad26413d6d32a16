"""Permutation specs: which axis of which parameter a hidden-unit permutation acts on.

A :class:`PermSpec` names the free permutations of a network (one per hidden layer, per
residual stream, per recurrent hidden state) and, for every parameter, which permutation acts
on each of its axes. This is the "permutation spec" of Git Re-Basin (arXiv 2209.04836,
Sec. 3): weight matching and activation matching only need it, not the architecture.

Conventions (the same as :mod:`gensight.weightspace`): a permutation ``p`` of ``n`` units acts
on an axis of size ``n`` as ``t'[j] = t[p[j]]``. A gated recurrent layer stacks its gates along
the rows (PyTorch: GRU ``r, z, n``; LSTM ``i, f, g, o``), so its rows form ``blocks`` gate
blocks of ``n`` rows each and the permutation acts inside every block alike (an
:class:`Axis` with ``blocks=3`` or ``4``). The recurrent matrix ``weight_hh`` carries the
hidden-state permutation on both axes: ``W_hh -> P W_hh P^T`` per gate block.

Specs come from :func:`perm_spec` for

- ``nn.Sequential`` MLPs and CNNs that :class:`~gensight.weightspace.WeightSpace` describes
  (one permutation ``"layer{l}"`` per hidden neuron layer l = 1..L-1);
- :class:`RecurrentClassifier` (a one-layer GRU or LSTM and a linear readout of the last
  hidden state; one permutation ``"hidden"``);
- :class:`ResidualMLP` (a residual stream ``"stream"`` tied across the input projection,
  every block's output and the readout, and one ``"block{k}"`` per block's inner layer).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gensight.errors import GensightError
from gensight.weightspace import WeightSpace


@dataclass(frozen=True)
class Axis:
    """A permutation named ``perm`` acting on one tensor axis of ``blocks * n`` entries, in
    each of ``blocks`` contiguous blocks (gates) alike."""

    perm: str
    blocks: int = 1


@dataclass(frozen=True)
class PermSpec:
    """The free hidden-unit permutations of a network and where they act.

    ``axes[key]`` has one entry per axis of parameter ``key``: an :class:`Axis` or ``None``
    (not permuted). ``sizes[name]`` is the number of units permutation ``name`` permutes.
    """

    axes: Mapping[str, tuple[Axis | None, ...]]
    sizes: Mapping[str, int]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.sizes)

    def keys(self) -> tuple[str, ...]:
        return tuple(self.axes)

    def users(self, name: str) -> list[tuple[str, int, int]]:
        """``(key, axis, blocks)`` for every axis permutation ``name`` acts on."""
        return [(key, d, ax.blocks) for key, axs in self.axes.items()
                for d, ax in enumerate(axs) if ax is not None and ax.perm == name]

    def check(self, state: Mapping[str, Tensor], what: str = "state dict") -> None:
        """Raise :class:`~gensight.errors.GensightError` naming the key if ``state`` does not
        have this spec's keys and shapes."""
        missing = sorted(set(self.axes) - set(state))
        extra = sorted(set(state) - set(self.axes))
        if missing or extra:
            raise GensightError(f"{what}: missing keys {missing}, unexpected keys {extra}")
        for key, axs in self.axes.items():
            t = state[key]
            if t.dim() != len(axs):
                raise GensightError(f"{what}: {key!r} has {t.dim()} axes; expected {len(axs)}")
            for d, ax in enumerate(axs):
                if ax is not None and t.shape[d] != ax.blocks * self.sizes[ax.perm]:
                    raise GensightError(
                        f"{what}: {key!r} axis {d} has size {t.shape[d]}; expected "
                        f"{ax.blocks} x {self.sizes[ax.perm]} ({ax.perm!r})")


def block_index(p: Tensor, blocks: int) -> Tensor:
    """The index that applies ``p`` (``(n,)``) inside each of ``blocks`` blocks of ``n``."""
    n = p.numel()
    return torch.cat([p + g * n for g in range(blocks)]) if blocks > 1 else p


def permute_state(spec: PermSpec, state: Mapping[str, Tensor], perms: Mapping[str, Tensor],
                  *, skip: tuple[str, int] | None = None) -> dict[str, Tensor]:
    """``state`` with every permutation in ``perms`` applied (``t'[j] = t[p[j]]`` on each
    axis it acts on); axes of permutations absent from ``perms``, and ``skip = (key, axis)``,
    are left as they are."""
    out = {}
    for key, t in state.items():
        for d, ax in enumerate(spec.axes.get(key, ())):
            if ax is None or ax.perm not in perms or skip == (key, d):
                continue
            t = t.index_select(d, block_index(perms[ax.perm].to(t.device), ax.blocks))
        out[key] = t
    return out


# --- models that WeightSpace does not describe ---------------------------------------------
class RecurrentClassifier(nn.Module):
    """A one-layer GRU or LSTM over a sequence and a linear readout of the last hidden state.

    Input ``(batch, steps, features)``; images ``(batch, 1, H, W)`` are read row by row
    (H steps of W features) and sequences ``(batch, 1, L)`` as L steps of one feature (see
    :func:`as_sequence`). Output: logits ``(batch, n_classes)``.

    The parameters are those of ``nn.GRU``/``nn.LSTM`` (``rnn.weight_ih_l0`` ``(G*H, F)``,
    ``rnn.weight_hh_l0`` ``(G*H, H)``, ``rnn.bias_ih_l0``, ``rnn.bias_hh_l0`` ``(G*H,)`` with
    G = 3 gates ``r, z, n`` or 4 gates ``i, f, g, o``) and ``readout.weight`` ``(C, H)``,
    ``readout.bias`` ``(C,)``. The forward pass writes out PyTorch's gate equations (the same
    numbers as ``nn.GRU``/``nn.LSTM``, tested) so that members can be trained together with
    ``torch.func.vmap``, which has no batching rule for the fused kernels.
    """

    def __init__(self, input_size: int, hidden_size: int, n_classes: int, cell: str = "gru"):
        super().__init__()
        if cell not in ("gru", "lstm"):
            raise GensightError(f"cell must be 'gru' or 'lstm'; got {cell!r}")
        self.cell = cell
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(input_size, hidden_size, batch_first=True)
        self.readout = nn.Linear(hidden_size, n_classes)

    @property
    def hidden_size(self) -> int:
        return self.rnn.hidden_size

    def hidden_states(self, x: Tensor) -> Tensor:
        """Hidden states ``(batch, steps, hidden)`` at every step."""
        x = as_sequence(x)
        w_ih, w_hh = self.rnn.weight_ih_l0, self.rnn.weight_hh_l0
        b_ih, b_hh = self.rnn.bias_ih_l0, self.rnn.bias_hh_l0
        n = self.hidden_size
        h = x.new_zeros(x.shape[0], n)
        c = x.new_zeros(x.shape[0], n)
        gi_all = x @ w_ih.T + b_ih  # (batch, steps, G*H)
        out = []
        for t in range(x.shape[1]):
            gi, gh = gi_all[:, t], h @ w_hh.T + b_hh
            if self.cell == "gru":
                r = torch.sigmoid(gi[:, :n] + gh[:, :n])
                z = torch.sigmoid(gi[:, n:2 * n] + gh[:, n:2 * n])
                cand = torch.tanh(gi[:, 2 * n:] + r * gh[:, 2 * n:])
                h = (1 - z) * cand + z * h
            else:
                g = gi + gh
                i, f = torch.sigmoid(g[:, :n]), torch.sigmoid(g[:, n:2 * n])
                cand, o = torch.tanh(g[:, 2 * n:3 * n]), torch.sigmoid(g[:, 3 * n:])
                c = f * c + i * cand
                h = o * torch.tanh(c)
            out.append(h)
        return torch.stack(out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.hidden_states(x)[:, -1])


def as_sequence(x: Tensor) -> Tensor:
    """``(batch, steps, features)``: images ``(B, 1, H, W)`` -> ``(B, H, W)``, sequences
    ``(B, 1, L)`` -> ``(B, L, 1)``; a 3-D tensor with more than one channel is taken as
    already ``(batch, steps, features)``."""
    if x.dim() == 4 and x.shape[1] == 1:
        return x[:, 0]
    if x.dim() == 3 and x.shape[1] == 1:
        return x.transpose(1, 2)
    if x.dim() == 3:
        return x
    raise GensightError(f"input of shape {tuple(x.shape)} is not (batch, steps, features), "
                        "(batch, 1, H, W) or (batch, 1, L)")


class ResidualMLP(nn.Module):
    """A residual MLP: ``h = inp(flatten(x))``, then ``h = h + fc2_k(relu(fc1_k(h)))`` for each
    block k, and logits ``out(relu(h))``. The residual stream's units are tied: one
    permutation acts on the rows of ``inp`` and of every ``fc2_k``, and on the columns of every
    ``fc1_k`` and of ``out`` (as Git Re-Basin, arXiv 2209.04836, does for ResNets)."""

    def __init__(self, in_features: int, width: int, hidden: int, n_blocks: int,
                 n_classes: int):
        super().__init__()
        self.inp = nn.Linear(in_features, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))
            for _ in range(n_blocks))
        self.out = nn.Linear(width, n_classes)

    def streams(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """The residual stream after the input layer and after each block, and each block's
        inner activations (all ``(batch, units)``)."""
        h = self.inp(x.flatten(1))
        streams, inner = [h], []
        for block in self.blocks:
            a = torch.relu(block[0](h))
            inner.append(a)
            h = h + block[2](a)
            streams.append(h)
        return streams, inner

    def forward(self, x: Tensor) -> Tensor:
        streams, _ = self.streams(x)
        return self.out(torch.relu(streams[-1]))


# --- specs -------------------------------------------------------------------------------------
def perm_spec(model: nn.Module) -> PermSpec:
    """The :class:`PermSpec` of ``model`` (see the module docstring for what is supported).

    Raises:
        UnsupportedModuleError: a model gensight cannot describe, naming its type.
    """
    if isinstance(model, RecurrentClassifier):
        return _recurrent_spec(model)
    if isinstance(model, ResidualMLP):
        return _residual_spec(model)
    return spec_from_space(WeightSpace.from_module(model))


def spec_from_space(space: WeightSpace) -> PermSpec:
    """Hidden neuron layer l = 1..L-1 of a WeightSpace is permutation ``"layer{l}"``: rows of
    layer l's weight and bias, columns of layer l+1's weight (filters are not permuted)."""
    axes: dict[str, tuple[Axis | None, ...]] = {}
    sizes = {f"layer{i}": n for i, n in enumerate(space.neurons) if 0 < i < space.n_layers}
    for i, layer in enumerate(space.layers, start=1):
        row = Axis(f"layer{i}") if i < space.n_layers else None
        col = Axis(f"layer{i - 1}") if i > 1 else None
        axes[layer.weight_key] = (row, col) + (None,) * len(layer.filter_shape)
        if layer.bias_key is not None:
            axes[layer.bias_key] = (row,)
    return PermSpec(axes, sizes)


def _recurrent_spec(model: RecurrentClassifier) -> PermSpec:
    g = 3 if model.cell == "gru" else 4
    h = Axis("hidden", g)
    return PermSpec({
        "rnn.weight_ih_l0": (h, None),
        "rnn.weight_hh_l0": (h, Axis("hidden")),
        "rnn.bias_ih_l0": (h,),
        "rnn.bias_hh_l0": (h,),
        "readout.weight": (None, Axis("hidden")),
        "readout.bias": (None,),
    }, {"hidden": model.hidden_size})


def _residual_spec(model: ResidualMLP) -> PermSpec:
    s = Axis("stream")
    axes: dict[str, tuple[Axis | None, ...]] = {"inp.weight": (s, None), "inp.bias": (s,)}
    sizes = {"stream": model.inp.out_features}
    for k, block in enumerate(model.blocks):
        b = Axis(f"block{k}")
        sizes[f"block{k}"] = block[0].out_features
        axes[f"blocks.{k}.0.weight"] = (b, s)
        axes[f"blocks.{k}.0.bias"] = (b,)
        axes[f"blocks.{k}.2.weight"] = (s, b)
        axes[f"blocks.{k}.2.bias"] = (s,)
    axes["out.weight"] = (None, s)
    axes["out.bias"] = (None,)
    return PermSpec(axes, sizes)


def describe(model: nn.Module) -> str:
    """A short description of ``model``'s parameter shapes, for error messages."""
    shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in model.named_parameters())
    return f"{type(model).__name__}({shapes})"


__all__ = [
    "Axis",
    "PermSpec",
    "RecurrentClassifier",
    "ResidualMLP",
    "as_sequence",
    "block_index",
    "perm_spec",
    "permute_state",
    "spec_from_space",
]
