"""Alignment: the hidden-unit permutation that best matches network B to network A.

Two methods from Git Re-Basin (Ainsworth, Hayase & Srinivasa, arXiv 2209.04836, Sec. 3):

- **Weight matching** (Sec. 3.2, Alg. 1) maximizes ``sum_params <theta_A, pi(theta_B)>`` over
  the permutations ``pi`` of B's hidden units. The objective couples neighbouring layers, so
  it is maximized one permutation at a time (coordinate descent): for permutation ``p`` with
  the others fixed, the objective is linear in ``p``, ``<C, P>`` with
  ``C = sum_{params using p} A_(axis) pi'(B)_(axis)^T``, a linear assignment problem solved
  exactly with ``scipy.optimize.linear_sum_assignment``; the permutations are visited in a
  seeded random order until no assignment improves.
- **Activation matching** (Sec. 3.1) matches units by the correlation of their activations on
  a batch of inputs: one linear assignment per permutation, no iteration.

Recurrent networks (FLEET-MERGE, Wang et al., arXiv 2310.01362): the hidden state's
permutation acts on the rows of every gate block of ``weight_ih``, on both axes of
``weight_hh`` (``W_hh -> P W_hh P^T``), on the biases and on the readout's columns. The
``W_hh`` term makes weight matching quadratic in ``P`` (a quadratic assignment problem).
gensight solves a linearization of it (its own choice; FLEET-MERGE describes the alignment as
a projection onto permutations, which this does not reproduce exactly): the other axis of
``W_hh`` carries the current estimate of ``P``, and the coordinate descent repeats until
``P`` stops changing. The permutation with the best exact objective seen is returned.
Activation matching needs no such step: it matches hidden states over all time steps.

Results: for networks that :class:`~gensight.weightspace.WeightSpace` describes (MLPs, CNNs)
a :class:`~gensight.weightspace.NeuronPermutation` (apply it with
:func:`~gensight.weightspace.permute` or :func:`apply_permutation`); for the others an
:class:`Alignment` of named permutations. Either way ``apply_permutation(b, perm)`` computes
the same function as ``b``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from gensight.errors import GensightError, IncompatibleSpaceError, NonFiniteWeightsError
from gensight.merge.spec import (
    PermSpec,
    RecurrentClassifier,
    ResidualMLP,
    describe,
    perm_spec,
    permute_state,
)
from gensight.weightspace import NeuronPermutation, WeightSpace, permute_module

_NONPARAM_HIDDEN = (nn.Dropout, nn.Flatten, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class Alignment:
    """Named hidden-unit permutations ``perms[name]: (n,)`` of a :class:`PermSpec`; a tensor
    axis that permutation ``name`` acts on becomes ``t'[j] = t[p[j]]``."""

    spec: PermSpec
    perms: Mapping[str, Tensor]

    def __post_init__(self) -> None:
        for name, n in self.spec.sizes.items():
            p = self.perms.get(name)
            if p is None:
                raise GensightError(f"alignment lacks the permutation {name!r}")
            if p.shape != (n,) or not torch.equal(p.sort().values,
                                                  torch.arange(n, device=p.device)):
                raise GensightError(f"alignment entry {name!r} is not a permutation of "
                                    f"range({n})")

    def inverse(self) -> Alignment:
        return Alignment(self.spec, {k: p.argsort() for k, p in self.perms.items()})

    def apply(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A permuted copy of a state dict of this spec."""
        return permute_state(self.spec, state, self.perms)


Permutation = NeuronPermutation | Alignment


def params(model: nn.Module) -> dict[str, Tensor]:
    """``model``'s parameters by name, detached."""
    return {k: v.detach() for k, v in model.named_parameters()}


def _load(template: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    """A copy of ``template`` with its parameters replaced by ``state[name]``."""
    out = copy.deepcopy(template)
    with torch.no_grad():
        for key, p in out.named_parameters():
            p.copy_(state[key])
    return out


def check_models(models: list[nn.Module], what: str = "network") -> PermSpec:
    """The shared :class:`PermSpec` of ``models``.

    Raises:
        GensightError: no models.
        IncompatibleSpaceError: a model of another architecture, naming it and both shapes.
        NonFiniteWeightsError: NaN or infinite weights, naming the model and the key.
        UnsupportedModuleError: a model gensight cannot describe.
    """
    if not models:
        raise GensightError(f"no {what}s given: at least one is needed")
    spec = perm_spec(models[0])
    ref = describe(models[0])
    shapes0 = {k: tuple(v.shape) for k, v in models[0].named_parameters()}
    for i, m in enumerate(models):
        if i and (type(m) is not type(models[0]) or
                  {k: tuple(v.shape) for k, v in m.named_parameters()} != shapes0 or
                  perm_spec(m) != spec):
            raise IncompatibleSpaceError(
                f"{what} {i} has another architecture than {what} 0: {describe(m)} vs {ref}")
        for key, t in m.named_parameters():
            if not bool(torch.isfinite(t).all()):
                raise NonFiniteWeightsError(
                    f"{what} {i}: parameter {key!r} contains NaN or infinite values")
    return spec


def _to_result(model: nn.Module, spec: PermSpec, perms: dict[str, Tensor]) -> Permutation:
    if isinstance(model, RecurrentClassifier | ResidualMLP):
        return Alignment(spec, perms)
    space = WeightSpace.from_module(model)
    return NeuronPermutation(space, tuple(
        perms[f"layer{i}"] if 0 < i < space.n_layers else torch.arange(n)
        for i, n in enumerate(space.neurons)))


def _named(perm: Permutation) -> dict[str, Tensor]:
    if isinstance(perm, Alignment):
        return dict(perm.perms)
    if perm.batched:
        raise GensightError("expected an unbatched NeuronPermutation (one per layer)")
    return {f"layer{i}": p for i, p in enumerate(perm.perms) if 0 < i < perm.space.n_layers}


def apply_permutation(model: nn.Module, perm: Permutation) -> nn.Module:
    """A copy of ``model`` with its hidden units permuted by ``perm`` (same function)."""
    if isinstance(perm, NeuronPermutation):
        return permute_module(model, perm)
    check_models([model])
    perm.spec.check(params(model), "model")
    return _load(model, perm.apply(params(model)))


def _objective(spec: PermSpec, a: Mapping[str, Tensor], b: Mapping[str, Tensor],
               perms: Mapping[str, Tensor]) -> float:
    pb = permute_state(spec, b, perms)
    return float(sum((a[k].double() * pb[k].double()).sum() for k in spec.axes))


def _rows(t: Tensor, axis: int, blocks: int, n: int) -> Tensor:
    """``t`` with ``axis`` first, split into ``(blocks, n, rest)``."""
    return t.movedim(axis, 0).reshape(blocks, n, -1).double()


def weight_matching(a: nn.Module, b: nn.Module, *, max_iter: int = 100,
                    seed: int = 0) -> Permutation:
    """The permutation of ``b``'s hidden units that maximizes ``<theta_a, pi(theta_b)>``
    (Git Re-Basin, arXiv 2209.04836, Alg. 1; see the module docstring for recurrent weights).

    Args:
        a, b: networks of one architecture (MLP/CNN ``nn.Sequential``,
            :class:`RecurrentClassifier` or :class:`ResidualMLP`).
        max_iter: sweeps over all permutations at most.
        seed: seeds the order in which permutations are visited.

    Returns:
        A :class:`~gensight.weightspace.NeuronPermutation` (MLP/CNN) or an
        :class:`Alignment`; ``apply_permutation(b, result)`` is B aligned to A.
    """
    spec = check_models([a, b])
    sa, sb = params(a), params(b)
    return _to_result(a, spec, _weight_matching(spec, sa, sb, max_iter, seed))


def _weight_matching(spec: PermSpec, sa: Mapping[str, Tensor], sb: Mapping[str, Tensor],
                     max_iter: int, seed: int,
                     init: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    if max_iter < 1:
        raise GensightError(f"max_iter must be a positive integer; got {max_iter!r}")
    perms = {k: torch.arange(n) for k, n in spec.sizes.items()} if init is None else \
        {k: v.detach().cpu().clone() for k, v in init.items()}
    names = list(spec.sizes)
    rng = np.random.default_rng(seed)
    best, best_perms = _objective(spec, sa, sb, perms), dict(perms)
    for _ in range(max_iter):
        progress = False
        for i in rng.permutation(len(names)):
            name, n = names[i], spec.sizes[names[i]]
            cost = None  # on the parameters' device; the assignment runs on the CPU
            for key, axis, blocks in spec.users(name):
                wb = permute_state(spec, {key: sb[key]}, perms, skip=(key, axis))[key]
                term = torch.einsum("gik,gjk->ij", _rows(sa[key], axis, blocks, n),
                                    _rows(wb.to(sa[key].device), axis, blocks, n))
                cost = term if cost is None else cost + term
            c = cost.cpu().numpy() if cost is not None else np.zeros((n, n))
            _, col = linear_sum_assignment(c, maximize=True)
            old = c[np.arange(n), perms[name].cpu().numpy()].sum()
            if c[np.arange(n), col].sum() > old + 1e-12 * max(1.0, abs(old)):
                progress = True
                perms[name] = torch.as_tensor(col, dtype=torch.long)
        score = _objective(spec, sa, sb, perms)
        if score > best:
            best, best_perms = score, dict(perms)
        if not progress:
            break
    return best_perms


def unit_activations(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Each permutation's units' activations on ``x``, as ``(samples, units)``.

    MLP/CNN: the output of the activation that follows each hidden layer (conv positions
    count as samples); recurrent: the hidden state at every step (steps count as samples);
    residual MLP: the stream after the input layer and after every block (stacked) and each
    block's inner ReLU. The model runs in eval mode without gradients.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(model, RecurrentClassifier):
                h = model.hidden_states(x)
                return {"hidden": h.reshape(-1, h.shape[-1])}
            if isinstance(model, ResidualMLP):
                streams, inner = model.streams(x)
                out = {"stream": torch.cat(streams, 0)}
                out.update({f"block{k}": a for k, a in enumerate(inner)})
                return out
            return _sequential_activations(model, x)
    finally:
        model.train(was_training)


def _sequential_activations(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    space = WeightSpace.from_module(model)
    leaves = [m for _, m in model.named_modules(remove_duplicate=False)
              if not list(m.children())]
    param_pos = [i for i, m in enumerate(leaves) if isinstance(m, nn.Linear | nn.Conv1d |
                                                                 nn.Conv2d)]
    taps: dict[int, nn.Module] = {}
    for layer, pos in enumerate(param_pos[:-1], start=1):
        tap = leaves[pos]
        nxt = leaves[pos + 1] if pos + 1 < len(leaves) else None
        if nxt is not None and not isinstance(nxt, _NONPARAM_HIDDEN) and \
                not any(True for _ in nxt.parameters()):
            tap = nxt  # the activation function after the layer
        if any(t is tap for t in taps.values()):  # one module used twice: its outputs mix
            tap = leaves[pos]
        taps[layer] = tap
    seen: dict[int, Tensor] = {}

    def keep(layer: int):
        def hook(_module: nn.Module, _inputs, output: Tensor) -> None:  # None: output kept
            seen.setdefault(layer, output)  # the first call (a shared module runs again)
        return hook

    hooks = [m.register_forward_hook(keep(layer)) for layer, m in taps.items()]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for layer in range(1, space.n_layers):
        z = seen[layer]
        out[f"layer{layer}"] = z.movedim(1, -1).reshape(-1, z.shape[1])
    return out


def _correlation(za: Tensor, zb: Tensor) -> Tensor:
    za, zb = za.double(), zb.double()
    za = (za - za.mean(0)) / (za.std(0, unbiased=False) + 1e-8)
    zb = (zb - zb.mean(0)) / (zb.std(0, unbiased=False) + 1e-8)
    return za.T @ zb / za.shape[0]


def activation_matching(a: nn.Module, b: nn.Module, x: Tensor) -> Permutation:
    """The permutation of ``b``'s hidden units that maximizes the summed correlation of
    matched units' activations on the inputs ``x`` (Git Re-Basin, arXiv 2209.04836,
    Sec. 3.1): one linear assignment per permutation, on ``(units, units)`` correlation
    matrices of the activations of :func:`unit_activations`.

    Args:
        a, b: networks of one architecture.
        x: a batch of inputs ``(batch, *input)``, e.g. training examples.
    """
    spec = check_models([a, b])
    if not isinstance(x, Tensor) or x.shape[0] < 2:
        raise GensightError("activation matching needs a batch of at least 2 inputs; got "
                            f"{getattr(x, 'shape', type(x).__name__)}")
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteWeightsError("the inputs for activation matching contain NaN or "
                                    "infinite values")
    za, zb = unit_activations(a, x), unit_activations(b, x)
    perms = {}
    for name in spec.sizes:
        corr = _correlation(za[name], zb[name].to(za[name].device)).cpu().numpy()
        _, col = linear_sum_assignment(corr, maximize=True)
        perms[name] = torch.as_tensor(col, dtype=torch.long)
    return _to_result(a, spec, perms)


def align(a: nn.Module, b: nn.Module, *, method: str = "weight", x: Tensor | None = None,
          max_iter: int = 100, seed: int = 0) -> nn.Module:
    """A copy of ``b`` with its hidden units permuted to match ``a`` (same function as
    ``b``). ``method``: ``"weight"`` (:func:`weight_matching`) or ``"activation"``
    (:func:`activation_matching` on ``x``)."""
    return apply_permutation(b, find_permutation(a, b, method=method, x=x, max_iter=max_iter,
                                                 seed=seed))


def find_permutation(a: nn.Module, b: nn.Module, *, method: str = "weight",
                     x: Tensor | None = None, max_iter: int = 100,
                     seed: int = 0) -> Permutation:
    """:func:`weight_matching` or :func:`activation_matching`, by ``method``."""
    if method == "weight":
        return weight_matching(a, b, max_iter=max_iter, seed=seed)
    if method == "activation":
        if x is None:
            raise GensightError("method 'activation' needs inputs x (a batch of examples)")
        return activation_matching(a, b, x)
    raise GensightError(f"unknown alignment method {method!r}; expected 'weight' or "
                        "'activation'")


def named_permutations(perm: Permutation) -> dict[str, Tensor]:
    """``{name: (n,)}`` for either kind of permutation (MLP/CNN hidden layer l is
    ``"layer{l}"``)."""
    return _named(perm)


__all__ = [
    "Alignment",
    "Permutation",
    "activation_matching",
    "align",
    "apply_permutation",
    "check_models",
    "find_permutation",
    "named_permutations",
    "unit_activations",
    "weight_matching",
]
