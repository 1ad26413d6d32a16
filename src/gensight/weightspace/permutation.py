"""Neuron permutations acting on weight spaces.

A :class:`NeuronPermutation` holds one permutation per neuron layer 0..L. It acts on weights
as ``W(i)[j, k] -> W(i)[p_i[j], p_{i-1}[k]]`` and on biases as ``v(i)[j] -> v(i)[p_i[j]]``,
i.e. ``W(i) -> P_i W(i) P_{i-1}^T`` with ``(P x)[j] = x[p[j]]``. Permuting only hidden layers
(:func:`random_permutation` with ``symmetry="hnp"``) leaves the network's function unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gensight.errors import GensightError, IncompatibleSpaceError, ShapeMismatchError
from gensight.weightspace.batch import WeightBatch
from gensight.weightspace.space import Symmetry, WeightSpace


@dataclass(frozen=True)
class NeuronPermutation:
    """Permutations of every neuron layer of a weight space.

    ``perms[l]`` has shape ``(n_l,)`` (the same permutation for every member) or
    ``(B, n_l)`` (one per member); identity for layers that are not permuted.
    """

    space: WeightSpace
    perms: tuple[Tensor, ...]

    def __post_init__(self) -> None:
        neurons = self.space.neurons
        if len(self.perms) != len(neurons):
            raise ShapeMismatchError(
                f"expected {len(neurons)} permutations (neuron layers 0..L), got {len(self.perms)}"
            )
        for layer, (p, n) in enumerate(zip(self.perms, neurons, strict=True)):
            if p.shape[-1] != n or p.dim() not in (1, 2):
                raise ShapeMismatchError(
                    f"permutation of neuron layer {layer} has shape {tuple(p.shape)}; expected "
                    f"({n},) or (B, {n})"
                )
            sorted_p = p.sort(dim=-1).values
            if not torch.equal(sorted_p, torch.arange(n, device=p.device).expand_as(p)):
                raise GensightError(f"entry {layer} is not a permutation of range({n})")

    @property
    def batched(self) -> bool:
        return self.perms[0].dim() == 2

    def inverse(self) -> NeuronPermutation:
        return NeuronPermutation(self.space, tuple(p.argsort(dim=-1) for p in self.perms))

    def apply(self, batch: WeightBatch) -> WeightBatch:
        """Permute a :class:`WeightBatch` (any number of channels)."""
        return permute(batch, self)


def identity_permutation(space: WeightSpace) -> NeuronPermutation:
    return NeuronPermutation(space, tuple(torch.arange(n) for n in space.neurons))


def random_permutation(
    space: WeightSpace,
    symmetry: Symmetry = "hnp",
    *,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    layers: Sequence[int] | None = None,
) -> NeuronPermutation:
    """Draw uniformly random permutations of the layers that ``symmetry`` permutes.

    Args:
        symmetry: ``"hnp"`` permutes hidden layers only (function preserving); ``"np"`` also
            the input and output neurons.
        batch_size: ``None`` for one permutation shared by all members, or B for one per
            member.
        layers: permute only these neuron layers (overrides ``symmetry``).
    """
    chosen = set(space.permuted_layers(symmetry) if layers is None else layers)
    bad = [layer for layer in chosen if not 0 <= layer <= space.n_layers]
    if bad:
        raise GensightError(f"neuron layers {bad} out of range 0..{space.n_layers}")
    perms = []
    for layer, n in enumerate(space.neurons):
        shape = (n,) if batch_size is None else (batch_size, n)
        if layer in chosen:
            perms.append(torch.rand(shape, generator=generator).argsort(dim=-1))
        else:
            perms.append(torch.arange(n).expand(shape).clone())
    return NeuronPermutation(space, tuple(perms))


def permute(batch: WeightBatch, perm: NeuronPermutation) -> WeightBatch:
    """Apply ``perm`` to every member of ``batch``: ``W(i) -> P_i W(i) P_{i-1}^T``."""
    if perm.space != batch.space:
        raise IncompatibleSpaceError(
            f"permutation for {perm.space!r} applied to a batch of {batch.space!r}"
        )
    device = batch.device
    perms = [p.to(device) for p in perm.perms]
    if perm.batched and perms[0].shape[0] != batch.batch_size:
        raise ShapeMismatchError(
            f"permutation batch {perms[0].shape[0]} differs from batch size {batch.batch_size}"
        )
    weights, biases = [], []
    for i, (w, b) in enumerate(zip(batch.weights, batch.biases, strict=True)):
        rows, cols = perms[i + 1], perms[i]
        if perm.batched:
            bidx = torch.arange(batch.batch_size, device=device)
            cidx = torch.arange(batch.channels, device=device)
            w = w[bidx[:, None, None, None], cidx[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]
            b = b[bidx[:, None, None], cidx[None, :, None], rows[:, None, :]]
        else:
            w = w[:, :, rows][:, :, :, cols]
            b = b[:, :, rows]
        weights.append(w)
        biases.append(b)
    return WeightBatch(batch.space, weights, biases, check_finite=False)


def permute_module(module: nn.Module, perm: NeuronPermutation) -> nn.Module:
    """A deep copy of ``module`` with its neurons permuted by ``perm`` (unbatched)."""
    if perm.batched:
        raise GensightError("permute_module takes an unbatched permutation (one per layer)")
    batch = WeightBatch.from_modules([module], perm.space, dtype=None)
    (out,) = permute(batch, perm).to_modules(module)
    return out


def permuted_copy(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """A copy of ``module`` with randomly permuted hidden neurons (same function)."""
    space = WeightSpace.from_module(module)
    return permute_module(module, random_permutation(space, "hnp", generator=generator))


__all__ = [
    "NeuronPermutation",
    "identity_permutation",
    "permute",
    "permute_module",
    "permuted_copy",
    "random_permutation",
]
