"""Universal Neural Functionals (UNF): equivariant linear layers for any weight space.

Zhou, Finn, Harrison, "Universal Neural Functionals", arXiv 2402.05232. A weight space is
described by a :class:`PermSpec`: one label per axis of every parameter tensor; axes that share
a label are permuted by the same permutation (e.g. a recurrent weight ``(h, h)`` is acted on
by ``P W P^T``). :class:`UNFLinear` is the maximal linear layer equivariant to all these
permutations, built by the paper's Algorithm 1 ("basis for an equivariant W(m) -> W(l)
layer"):

for every (output tensor, input tensor) pair, put the output axes and the input axes in one
list, group them by label, and take every *valid partition* (one set partition per label
group, the product over groups; ``prod_p Bell(m_p)`` partitions). Each partition is one basis
term: take the input's diagonal over input axes in the same block, the **mean** over input
axes whose block has no output axis, and write the result onto the output axes (broadcast
along output axes whose block has no input axis, diagonal-embedded where a block holds
several output axes); each term then mixes channels with its own ``(c_in, c_out)`` matrix.

Axes labelled ``None`` are not permuted (e.g. conv filter taps, or the input/output neurons
under HNP). They are folded into the channel axis (``C -> C * prod(unlabelled sizes)``) on
input and output, as gensight's NF-Layers do, so the layer mixes them freely.

Tensors are channels-first and batch-first: ``{key: (B, C, *shape)}``.
"""

from __future__ import annotations

import itertools
import math
import string
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from gensight.errors import GensightError, KeyMismatchError, ShapeMismatchError
from gensight.weightspace import WeightBatch, WeightSpace

Label = int | str | None

_SMALL = 64
"""Reductions with at most this many positions per channel are mixed with one GEMM over the
batch (``UNFLinear.forward``); larger ones with a batched GEMM."""
BiasMode = Literal["maximal", "reference"]

__all__ = [
    "Gated",
    "PermSpec",
    "Split",
    "UNFLinear",
    "UNFPool",
    "bell_number",
    "permute",
    "random_permutation",
    "unf_bias_counts",
    "unf_term_counts",
]


# --- permutation specs ----------------------------------------------------------------------

def _bias_key(weight_key: str, bias_key: str | None) -> str:
    """The key of a layer's bias; for a layer without bias, the key it would have."""
    if bias_key is not None:
        return bias_key
    if weight_key.endswith("weight"):
        return weight_key[: -len("weight")] + "bias"
    return weight_key + ".bias"


@dataclass(frozen=True)
class Gated:
    """An axis made of ``blocks`` equal consecutive blocks, each permuted by the same
    permutation of ``label``: the ``(gates * hidden, ...)`` rows of a GRU (3 gates) or LSTM
    (4 gates) weight. Inside the layers the axis is viewed as ``(blocks, n)`` with the block
    axis not permuted (folded into channels) and the second labelled ``label``."""

    blocks: int
    label: int | str

    def __post_init__(self) -> None:
        if isinstance(self.blocks, bool) or not isinstance(self.blocks, int) or self.blocks < 1:
            raise GensightError(f"Gated blocks must be a positive int; got {self.blocks!r}")
        if isinstance(self.label, bool) or not isinstance(self.label, int | str):
            raise GensightError(f"Gated label {self.label!r} must be int or str")


@dataclass(frozen=True)
class Split:
    """An axis that is the flattening of several sub-axes, ``sizes`` long (one size may be
    ``-1``: whatever is left), each with its own label (``None``: not permuted). A
    multi-head attention's fused ``in_proj_weight`` rows are ``Split((None, "head", "dim"),
    (3, heads, -1))``: the q/k/v blocks (not permuted), then the heads, then the dimensions
    within a head. ``Gated(g, h)`` acts as ``Split((None, h), (g, -1))`` would (the two
    compare unequal). Inside the layers the axis is viewed as its sub-axes."""

    labels: tuple[Label, ...]
    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        labels, sizes = tuple(self.labels), tuple(self.sizes)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "sizes", sizes)
        if not labels or len(labels) != len(sizes):
            raise GensightError(f"Split needs one size per label; got labels {labels} and "
                                f"sizes {sizes}")
        for label in labels:
            if label is not None and (isinstance(label, bool) or
                                      not isinstance(label, int | str)):
                raise GensightError(f"Split label {label!r} must be int, str or None")
        if any(isinstance(n, bool) or not isinstance(n, int) or (n < 1 and n != -1)
               for n in sizes) or sizes.count(-1) > 1:
            raise GensightError(f"Split sizes {sizes} must be positive ints, with at most one "
                                "-1")

    def shape(self, n: int) -> tuple[int, ...]:
        """The sub-axis sizes of an axis of size ``n`` (``ValueError`` if they do not fit)."""
        known = 1
        for m in self.sizes:
            known *= m if m != -1 else 1
        if n % known or (-1 not in self.sizes and n != known):
            raise ValueError(f"an axis of size {n} does not split into sizes {self.sizes}")
        return tuple(n // known if m == -1 else m for m in self.sizes)


def _sub_axes(label: object) -> tuple[Label, ...] | None:
    """The labels of a composite axis (:class:`Gated` or :class:`Split`), else ``None``."""
    if isinstance(label, Gated):
        return (None, label.label)
    if isinstance(label, Split):
        return label.labels
    return None


class PermSpec(Mapping[str, tuple[Label, ...]]):
    """Immutable map from parameter name (state-dict key, torch layout) to axis labels.

    ``spec[key]`` has one entry per axis of the tensor ``key`` (without batch and channel
    axes): an ``int``/``str`` label, ``None`` for an axis that no permutation acts on, a
    :class:`Gated` label for an axis of equal blocks permuted alike (GRU/LSTM gates), or a
    :class:`Split` for an axis made of several labelled sub-axes (attention heads and the
    dimensions within a head). Axes with equal labels are permuted by the same permutation,
    also within one tensor.

    Example (one RNN layer, torch layout ``(out, in)``)::

        PermSpec({"W_ff": ("h", "x"), "W_rec": ("h", "h"), "b": ("h",)})

    A GRU layer: ``{"weight_ih_l0": (Gated(3, "h"), "x"), "weight_hh_l0": (Gated(3, "h"),
    "h"), "bias_ih_l0": (Gated(3, "h"),), "bias_hh_l0": (Gated(3, "h"),)}``.
    """

    __slots__ = ("_data",)

    def __init__(self, spec: Mapping[str, Sequence[Label]]):
        data: dict[str, tuple[Label, ...]] = {}
        for key, labels in spec.items():
            if not isinstance(key, str):
                raise GensightError(f"PermSpec key {key!r} must be a str (a state-dict key)")
            if isinstance(labels, str) or not isinstance(labels, Sequence):
                raise GensightError(
                    f"PermSpec[{key!r}] = {labels!r} must be a tuple with one label per axis"
                )
            for axis, label in enumerate(labels):
                if label is not None and not isinstance(label, Gated | Split) and (
                        isinstance(label, bool) or not isinstance(label, int | str)):
                    raise GensightError(
                        f"PermSpec[{key!r}] axis {axis}: label {label!r} must be int, str, "
                        f"Gated, Split or None"
                    )
            data[key] = tuple(labels)
        if not data:
            raise GensightError("a PermSpec needs at least one parameter")
        self._data = data

    @property
    def gated_keys(self) -> tuple[str, ...]:
        """Keys with at least one composite (:class:`Gated` or :class:`Split`) axis."""
        return tuple(k for k, v in self._data.items()
                     if any(_sub_axes(a) is not None for a in v))

    @property
    def flat(self) -> PermSpec:
        """The spec with every ``Gated(g, label)`` axis split into ``(None, label)`` and every
        :class:`Split` into its sub-axes' labels."""
        if not self.gated_keys:
            return self
        return PermSpec({k: tuple(x for a in v for x in (_sub_axes(a) or (a,)))
                         for k, v in self._data.items()})

    def flat_shape(self, key: str, shape: Sequence[int]) -> tuple[int, ...]:
        """``shape`` of tensor ``key`` with every gated axis ``g * n`` split into ``(g, n)``
        and every :class:`Split` axis into its sub-axes."""
        labels = self._data[key]
        shape = tuple(int(n) for n in shape)
        if len(shape) != len(labels):
            raise ShapeMismatchError(
                f"{key!r} has shape {shape} (rank {len(shape)}) but its PermSpec entry "
                f"{labels} has rank {len(labels)}")
        out: list[int] = []
        for axis, (label, n) in enumerate(zip(labels, shape, strict=True)):
            if isinstance(label, Gated):
                if n % label.blocks:
                    raise ShapeMismatchError(
                        f"{key!r} axis {axis} has size {n}, not a multiple of its "
                        f"{label.blocks} gate blocks")
                out += [label.blocks, n // label.blocks]
            elif isinstance(label, Split):
                try:
                    out += label.shape(n)
                except ValueError:
                    raise ShapeMismatchError(f"{key!r} axis {axis} has size {n}, which does "
                                             f"not split into sizes {label.sizes}") from None
            else:
                out.append(n)
        return tuple(out)

    def flat_shapes(self, shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
        """:meth:`flat_shape` of every key of ``shapes``."""
        return {k: (self.flat_shape(k, v) if k in self._data else tuple(v))
                for k, v in shapes.items()}

    def __getitem__(self, key: str) -> tuple[Label, ...]:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(self._data.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PermSpec):
            return self._data == other._data
        return NotImplemented

    def __repr__(self) -> str:
        return f"PermSpec({self._data!r})"

    @property
    def labels(self) -> tuple[Hashable, ...]:
        """Distinct labels in order of first appearance."""
        seen: dict[Hashable, None] = {}
        for labels in self._data.values():
            for axis in labels:
                for label in _sub_axes(axis) or (axis,):
                    if label is not None:
                        seen.setdefault(label, None)
        return tuple(seen)

    def validate(self, shapes: Mapping[str, Sequence[int]]) -> dict[Hashable, int]:
        """Check ``shapes`` (key -> tensor shape without batch/channel) against the spec.

        Returns the size of every label. Raises :class:`KeyMismatchError` for missing or
        unknown keys and :class:`ShapeMismatchError` for a rank mismatch or a label whose
        axes differ in size.
        """
        unknown = [k for k in shapes if k not in self._data]
        if unknown:
            raise KeyMismatchError(f"shapes has keys {unknown} that are not in the PermSpec")
        missing = [k for k in self._data if k not in shapes]
        if missing:
            raise KeyMismatchError(f"shapes lacks the PermSpec keys {missing}")
        if self.gated_keys:
            try:
                return self.flat.validate(self.flat_shapes(shapes))
            except ShapeMismatchError as exc:
                raise ShapeMismatchError(f"{exc} (axes and sizes of gated tensors counted "
                                         f"with every Gated/Split axis split into its "
                                         f"sub-axes)") from None
        sizes: dict[Hashable, tuple[int, str, int]] = {}
        for key, labels in self._data.items():
            shape = tuple(int(s) for s in shapes[key])
            if len(shape) != len(labels):
                raise ShapeMismatchError(
                    f"{key!r} has shape {shape} (rank {len(shape)}) but its PermSpec entry "
                    f"{labels} has rank {len(labels)}"
                )
            for axis, (label, n) in enumerate(zip(labels, shape, strict=True)):
                if n < 1:
                    raise ShapeMismatchError(f"{key!r} axis {axis} has size {n}; must be >= 1")
                if label is None:
                    continue
                if label in sizes and sizes[label][0] != n:
                    m, k0, a0 = sizes[label]
                    raise ShapeMismatchError(
                        f"label {label!r}: {key!r} axis {axis} has size {n} but {k0!r} axis "
                        f"{a0} has size {m}"
                    )
                sizes.setdefault(label, (n, key, axis))
        return {label: v[0] for label, v in sizes.items()}

    @classmethod
    def from_weight_space(cls, space: WeightSpace, symmetry: str = "np") -> PermSpec:
        """The spec of an MLP/CNN :class:`~gensight.weightspace.WeightSpace`.

        Neuron layer ``l`` gets label ``l``: ``W(i)`` is ``(i, i-1, None per filter axis)``,
        ``v(i)`` is ``(i,)``. Under ``"hnp"`` the input (0) and output (L) neuron axes are
        ``None``. A layer without bias is keyed by the bias key it would have
        (``"<prefix>bias"``), since a :class:`WeightBatch` carries its zero bias.
        """
        if symmetry not in ("np", "hnp"):
            raise GensightError(f"unknown symmetry {symmetry!r}; expected 'np' or 'hnp'")
        L = space.n_layers

        def lab(layer: int) -> Label:
            return None if symmetry == "hnp" and layer in (0, L) else layer

        spec: dict[str, tuple[Label, ...]] = {}
        for i, layer in enumerate(space.layers, start=1):
            spec[layer.weight_key] = (lab(i), lab(i - 1), *([None] * len(layer.filter_shape)))
            spec[_bias_key(layer.weight_key, layer.bias_key)] = (lab(i),)
        return cls(spec)


def weight_space_shapes(space: WeightSpace) -> dict[str, tuple[int, ...]]:
    """Shapes keyed as in :meth:`PermSpec.from_weight_space`."""
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in space.layers:
        shapes[layer.weight_key] = layer.weight_shape
        shapes[_bias_key(layer.weight_key, layer.bias_key)] = layer.bias_shape
    return shapes


def weight_batch_to_dict(batch: WeightBatch) -> dict[str, Tensor]:
    """``WeightBatch`` -> ``{key: (B, C, *shape)}`` keyed as in
    :meth:`PermSpec.from_weight_space`."""
    out: dict[str, Tensor] = {}
    for layer, w, b in zip(batch.space.layers, batch.weights, batch.biases, strict=True):
        out[layer.weight_key] = w
        out[_bias_key(layer.weight_key, layer.bias_key)] = b
    return out


def dict_to_weight_batch(space: WeightSpace, tensors: Mapping[str, Tensor]) -> WeightBatch:
    """Inverse of :func:`weight_batch_to_dict`."""
    weights = [tensors[layer.weight_key] for layer in space.layers]
    biases = [tensors[_bias_key(layer.weight_key, layer.bias_key)] for layer in space.layers]
    return WeightBatch(space, weights, biases, check_finite=False)


def random_permutation(spec: PermSpec, shapes: Mapping[str, Sequence[int]],
                       generator: torch.Generator | None = None,
                       batch_size: int | None = None) -> dict[Hashable, Tensor]:
    """A uniformly random permutation per label: ``{label: (n,)}``, or ``(B, n)`` (one per
    batch member) when ``batch_size`` is given."""
    sizes = spec.validate(shapes)
    out = {}
    for label in spec.labels:
        shape = (sizes[label],) if batch_size is None else (batch_size, sizes[label])
        out[label] = torch.rand(shape, generator=generator).argsort(dim=-1)
    return out


def permute(params: Mapping[str, Tensor], spec: PermSpec,
            perms: Mapping[Hashable, Tensor]) -> dict[str, Tensor]:
    """Permute every labelled axis of ``params[key]: (B, C, *shape)`` by its label's
    permutation: ``out[..., i, ...] = x[..., perm[i], ...]`` on that axis (a ``(h, h)``
    tensor becomes ``P X P^T``). A ``(B, n)`` permutation acts per batch member."""
    out: dict[str, Tensor] = {}
    for key, x in params.items():
        if key not in spec:
            raise KeyMismatchError(f"permute got key {key!r} that is not in the PermSpec")
        if key in spec.gated_keys:     # permute the sub-axes view, then restore the shape
            flat = spec.flat
            y = x.reshape(*x.shape[:2], *spec.flat_shape(key, x.shape[2:]))
            out[key] = permute({key: y}, PermSpec({key: flat[key]}), perms)[key].reshape(
                x.shape)
            continue
        for axis, label in enumerate(spec[key]):
            if label is None:
                continue
            p = perms[label].to(x.device)
            dim = axis + 2
            if p.dim() == 1:
                x = x.index_select(dim, p)
            else:
                if p.shape[0] != x.shape[0]:
                    raise ShapeMismatchError(
                        f"permutation of label {label!r} has batch {p.shape[0]} but {key!r} "
                        f"has batch {x.shape[0]}"
                    )
                view = [1] * x.dim()
                view[0], view[dim] = x.shape[0], x.shape[dim]
                x = x.gather(dim, p.view(view).expand(x.shape))
        out[key] = x
    return out


# --- partitions ---------------------------------------------------------------------------

def _set_partitions(items: Sequence[int]) -> Iterator[list[list[int]]]:
    """Every set partition of ``items`` (Bell(len(items)) of them), blocks in order of their
    first element."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _set_partitions(rest):
        yield [[first], *part]
        for j in range(len(part)):
            yield [*part[:j], [first, *part[j]], *part[j + 1:]]


def bell_number(n: int) -> int:
    """Number of set partitions of an n-element set (1, 1, 2, 5, 15, 52, 203, ...)."""
    row = [1]
    for _ in range(n):
        nxt = [row[-1]]
        for v in row:
            nxt.append(nxt[-1] + v)
        row = nxt
    return row[0]


def _pair_count(out_labels: Sequence[Label], in_labels: Sequence[Label]) -> int:
    counts: dict[Hashable, int] = {}
    for label in (*out_labels, *in_labels):
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    return math.prod(bell_number(m) for m in counts.values())


def unf_term_counts(spec: PermSpec) -> dict[tuple[str, str], int]:
    """Number of basis terms of the maximal equivariant linear map for every
    ``(output key, input key)`` pair: ``prod_p Bell(m_p)`` with ``m_p`` the number of output
    and input axes labelled ``p`` (Algorithm 1 of arXiv 2402.05232)."""
    spec = spec.flat
    return {(o, i): _pair_count(spec[o], spec[i]) for o in spec for i in spec}


def unf_bias_counts(spec: PermSpec) -> dict[str, int]:
    """Number of ``bias="maximal"`` vectors per tensor: the equivariant constants of a
    tensor, ``prod_p Bell(m_p)`` over its own labelled axes (2 for a ``(h, h)`` tensor)."""
    spec = spec.flat
    return {k: _pair_count(spec[k], ()) for k in spec}


def _valid_partitions(labels: Sequence[Label]) -> Iterator[list[list[int]]]:
    """Valid partitions of the labelled axes ``labels`` (indices into it): one set partition
    per label group, product over groups. Unlabelled (None) entries are skipped."""
    groups: dict[Hashable, list[int]] = {}
    for idx, label in enumerate(labels):
        if label is not None:
            groups.setdefault(label, []).append(idx)
    per_group = [list(_set_partitions(g)) for g in groups.values()]
    for choice in itertools.product(*per_group):
        yield [block for part in choice for block in part]


# --- compiled plans -----------------------------------------------------------------------

_LETTERS = "".join(c for c in string.ascii_letters if c not in "bc")


@dataclass(frozen=True)
class _Embed:
    """How a tensor ``(B, C, *block axes)`` (one axis per output block, canonical order; size
    1 for a broadcast block) becomes the folded output ``(B, C, *labelled output axes)``."""

    blocks: tuple[tuple[int, int, bool], ...]  # (number of output axes m, size n, has input)
    perm: tuple[int, ...]  # permutation of the embedded axes into output axis order

    def apply(self, t: Tensor) -> Tensor:
        for m, n, has_input in self.blocks:
            t = t.movedim(2, -1)
            if m >= 2:
                if not has_input:
                    t = t.expand(*t.shape[:-1], n)
                for _ in range(m - 1):
                    t = torch.diag_embed(t)
        return t.permute(0, 1, *(2 + p for p in self.perm))


def _make_embed(out_blocks: Sequence[tuple[list[int], bool]], sizes: Sequence[int]) -> _Embed:
    """``out_blocks``: (output axes, has input) per block in canonical order."""
    order = [a for axes, _ in out_blocks for a in axes]
    inv = [0] * len(order)
    for pos, a in enumerate(order):
        inv[a] = pos
    return _Embed(tuple((len(axes), sizes[axes[0]], has) for axes, has in out_blocks),
                  tuple(inv))


@dataclass(frozen=True)
class _Term:
    """One basis term: ``einsum`` reduces the folded input to ``(B, C_in, *kept blocks)``;
    ``scale`` turns the sums over input-only blocks into means."""

    out_key: str
    in_key: str
    partition: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]  # (out axes, in axes)
    equation: str
    scale: float


@dataclass(frozen=True)
class _Group:
    """Terms writing to the same output key with the same embedding: their reductions are
    concatenated over channels and mixed by one ``(sum C_in_t, C_out)`` matrix."""

    out_key: str
    terms: tuple[_Term, ...]
    kept_axes: tuple[int, ...]  # where the kept blocks sit among the canonical block axes
    n_blocks: int
    embed: _Embed


@dataclass(frozen=True)
class _Fold:
    """Moves unlabelled axes of ``(B, C, *shape)`` into channels: ``(B, C*F, *labelled)``."""

    shape: tuple[int, ...]
    labelled: tuple[int, ...]
    unlabelled: tuple[int, ...]

    @property
    def factor(self) -> int:
        return math.prod(self.shape[a] for a in self.unlabelled)

    @property
    def labelled_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.labelled)

    def fold(self, x: Tensor) -> Tensor:
        order = (0, 1, *(2 + a for a in self.unlabelled), *(2 + a for a in self.labelled))
        return x.permute(order).reshape(x.shape[0], -1, *self.labelled_shape)

    def unfold(self, y: Tensor, channels: int) -> Tensor:
        y = y.reshape(y.shape[0], channels, *(self.shape[a] for a in self.unlabelled),
                      *self.labelled_shape)
        order = (*self.unlabelled, *self.labelled)
        inv = [0] * len(order)
        for pos, a in enumerate(order):
            inv[a] = pos
        return y.permute(0, 1, *(2 + p for p in inv))


def _fold_of(labels: Sequence[Label], shape: Sequence[int]) -> _Fold:
    return _Fold(tuple(shape), tuple(a for a, lab in enumerate(labels) if lab is not None),
                 tuple(a for a, lab in enumerate(labels) if lab is None))


def _compile_pair(out_key: str, in_key: str, out_labels: Sequence[Label],
                  in_labels: Sequence[Label], sizes: Sequence[int]) -> list[tuple[tuple, _Term]]:
    """All terms of one pair; labels/sizes are of the labelled axes only, ``sizes`` of the
    output axes then the input axes. Returns ``(embedding signature, term)`` pairs."""
    k1 = len(out_labels)
    result = []
    for blocks in _valid_partitions((*out_labels, *in_labels)):
        split = [([a for a in b if a < k1], [a - k1 for a in b if a >= k1]) for b in blocks]
        out_blocks = sorted((s for s in split if s[0]), key=lambda s: s[0][0])
        in_only = [s for s in split if not s[0]]
        letter = {}
        for j, (_, ins) in enumerate((*out_blocks, *in_only)):
            for a in ins:
                letter[a] = _LETTERS[j]
        in_str = "".join(letter[a] for a in range(len(in_labels)))
        kept = "".join(_LETTERS[j] for j, (_, ins) in enumerate(out_blocks) if ins)
        scale = 1.0 / math.prod(sizes[k1 + ins[0]] for _, ins in in_only) if in_only else 1.0
        term = _Term(out_key, in_key,
                     tuple((tuple(o), tuple(i)) for o, i in sorted(split)),
                     f"bc{in_str}->bc{kept}", scale)
        signature = tuple((tuple(o), bool(i)) for o, i in out_blocks)
        result.append((signature, term))
    return result


class UNFLinear(nn.Module):
    """Maximal permutation-equivariant linear layer on the weight space of ``spec``
    (arXiv 2402.05232, Algorithm 1), ``{key: (B, c_in, *shape)} -> {key: (B, c_out, *shape)}``.

    Args:
        spec: axis labels per parameter (see :class:`PermSpec`).
        shapes: ``{key: shape}`` of every parameter (no batch/channel axes).
        in_channels, out_channels: ``c_in``, ``c_out``.
        bias: ``"maximal"`` adds one ``c_out`` vector per valid partition of each output's own
            labelled axes (2 for a ``(h, h)`` tensor: diagonal and off-diagonal), which spans
            all equivariant constants; ``"reference"`` one vector per output tensor as in the
            authors' code. The two agree when no tensor repeats a label.
        max_terms: refuse a (output, input) pair with more basis terms than this (Bell
            numbers grow fast: three axes sharing a label against themselves give 203).

    Unlabelled axes are folded into channels, so ``c_in``/``c_out`` become
    ``c * prod(unlabelled sizes)`` inside the layer, and the bias also varies over them.
    Weights are drawn from ``N(0, 1 / fan)`` with ``fan`` the folded input channels summed
    over all terms feeding that output (``c_in * n_terms`` without unlabelled axes); biases
    start at zero.

    ``forward`` also accepts a :class:`~gensight.weightspace.WeightBatch` (and returns one) when
    the layer is built with :meth:`from_weight_space`.
    """

    def __init__(self, spec: PermSpec | Mapping[str, Sequence[Label]],
                 shapes: Mapping[str, Sequence[int]], in_channels: int, out_channels: int,
                 bias: BiasMode = "maximal", max_terms: int = 1000):
        super().__init__()
        spec = spec if isinstance(spec, PermSpec) else PermSpec(spec)
        if bias not in ("maximal", "reference"):
            raise GensightError(f"unknown bias {bias!r}; expected 'maximal' or 'reference'")
        if in_channels < 1 or out_channels < 1:
            raise GensightError(
                f"channels must be positive, got in_channels={in_channels}, "
                f"out_channels={out_channels}"
            )
        spec.validate(shapes)
        self.shapes = {k: tuple(int(n) for n in v) for k, v in shapes.items()}
        # gated axes (GRU/LSTM gates) are split into (None, label) for the layer
        self.spec = spec                 # as given (what permute and users see)
        self.outer_shapes = {k: tuple(int(n) for n in shapes[k]) for k in spec.gated_keys}
        spec, shapes = spec.flat, spec.flat_shapes(shapes)
        self.flat_spec = spec            # gated axes split: what the layer computes on
        self.in_channels, self.out_channels = in_channels, out_channels
        self.bias_mode = bias
        self.max_terms = max_terms
        self.space: WeightSpace | None = None
        self.folds = {k: _fold_of(spec[k], shapes[k]) for k in spec}
        counts = unf_term_counts(spec)
        for (o, i), n in counts.items():
            if n > max_terms:
                raise GensightError(
                    f"UNFLinear: pair (output {o!r} {spec[o]}, input {i!r} {spec[i]}) has {n} "
                    f"basis terms, more than max_terms={max_terms}"
                )
        self.term_counts = counts

        grouped: dict[tuple[str, tuple], list[_Term]] = {}
        for o in spec:
            fo = self.folds[o]
            out_lab = [spec[o][a] for a in fo.labelled]
            for i in spec:
                fi = self.folds[i]
                in_lab = [spec[i][a] for a in fi.labelled]
                sizes = (*fo.labelled_shape, *fi.labelled_shape)
                for sig, term in _compile_pair(o, i, out_lab, in_lab, sizes):
                    grouped.setdefault((o, sig), []).append(term)
        self.groups: list[_Group] = []
        self.weights = nn.ParameterList()
        fan: dict[str, int] = {k: 0 for k in spec}
        for (o, sig), terms in grouped.items():
            fo = self.folds[o]
            out_blocks = [(list(axes), has) for axes, has in sig]
            kept = tuple(j for j, (_, has) in enumerate(sig) if has)
            group = _Group(o, tuple(terms), kept, len(sig),
                           _make_embed(out_blocks, fo.labelled_shape))
            self.groups.append(group)
            rows = sum(in_channels * self.folds[t.in_key].factor for t in terms)
            fan[o] += rows
            self.weights.append(nn.Parameter(torch.empty(rows, out_channels * fo.factor)))
        self._fan = fan

        self.bias_embeds: list[tuple[str, _Embed]] = []
        self.biases = nn.ParameterList()
        for o in spec:
            fo = self.folds[o]
            out_lab = [spec[o][a] for a in fo.labelled]
            if bias == "reference":
                parts: list[list[list[int]]] = [[[a] for a in range(len(out_lab))]]
            else:
                parts = list(_valid_partitions(out_lab))
            for blocks in parts:
                blocks = sorted(blocks, key=lambda b: b[0])
                self.bias_embeds.append(
                    (o, _make_embed([(b, False) for b in blocks], fo.labelled_shape)))
                self.biases.append(nn.Parameter(torch.zeros(out_channels * fo.factor)))
        self.reset_parameters()

    @classmethod
    def from_weight_space(cls, space: WeightSpace, in_channels: int, out_channels: int,
                          symmetry: str = "np", bias: BiasMode = "maximal",
                          max_terms: int = 1000) -> UNFLinear:
        """UNFLinear on an MLP/CNN weight space; ``forward`` then accepts a WeightBatch."""
        layer = cls(PermSpec.from_weight_space(space, symmetry), weight_space_shapes(space),
                    in_channels, out_channels, bias=bias, max_terms=max_terms)
        layer.space = space
        return layer

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for group, w in zip(self.groups, self.weights, strict=True):
                w.normal_(0.0, self._fan[group.out_key] ** -0.5)
            for b in self.biases:
                b.zero_()

    @property
    def num_terms(self) -> int:
        """Number of basis terms (channel-mixing matrices), over all pairs."""
        return sum(self.term_counts.values())

    @property
    def num_bias_terms(self) -> int:
        return len(self.biases)

    @property
    def terms(self) -> list[_Term]:
        """All terms, in the order of their rows in the weight matrices."""
        return [t for g in self.groups for t in g.terms]

    def extra_repr(self) -> str:
        return (f"keys={len(self.spec)}, in_channels={self.in_channels}, "
                f"out_channels={self.out_channels}, terms={self.num_terms}, "
                f"bias={self.bias_mode!r}")

    def forward(self, params: Mapping[str, Tensor] | WeightBatch
                ) -> dict[str, Tensor] | WeightBatch:
        """``{key: (B, c_in, *shape)} -> {key: (B, c_out, *shape)}`` (or WeightBatch ->
        WeightBatch for a layer built with :meth:`from_weight_space`)."""
        from gensight.weightspace import ParamBatch

        if isinstance(params, ParamBatch):
            params = _param_batch_tensors(params, self.shapes, "UNFLinear")
        if isinstance(params, WeightBatch):
            if self.space is None or params.space != self.space:
                raise ShapeMismatchError(
                    f"UNFLinear got a WeightBatch of {params.space!r}; build the layer with "
                    "UNFLinear.from_weight_space(space, ...) for that space"
                )
            out = self._forward(weight_batch_to_dict(params))
            return dict_to_weight_batch(self.space, out)
        return self._forward(params)

    def _forward(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if self.outer_shapes:
            params = _split_gated(params, self.spec, self.outer_shapes,
                                  self.in_channels)
            out = self._forward_flat(params)
            return {k: (y.reshape(*y.shape[:2], *self.outer_shapes[k])
                        if k in self.outer_shapes else y) for k, y in out.items()}
        return self._forward_flat(params)

    def _forward_flat(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if set(params) != set(self.flat_spec):
            raise KeyMismatchError(
                f"UNFLinear expects keys {sorted(self.flat_spec)}, got {sorted(params)}"
            )
        batch = None
        folded: dict[str, Tensor] = {}
        for key, x in params.items():
            fold = self.folds[key]
            if x.dim() != 2 + len(fold.shape) or tuple(x.shape[2:]) != fold.shape \
                    or x.shape[1] != self.in_channels:
                raise ShapeMismatchError(
                    f"{key!r} has shape {tuple(x.shape)}; expected "
                    f"(B, {self.in_channels}, *{fold.shape})"
                )
            if batch is None:
                batch = x.shape[0]
            elif x.shape[0] != batch:
                raise ShapeMismatchError(f"{key!r} has batch {x.shape[0]}, others {batch}")
            folded[key] = fold.fold(x)
        cache: dict[tuple[str, str], Tensor] = {}
        acc: dict[str, dict[tuple[int, ...], Tensor]] = {}
        for group, w in zip(self.groups, self.weights, strict=True):
            parts = []
            for t in group.terms:
                ck = (t.in_key, t.equation)
                if ck not in cache:
                    r = torch.einsum(t.equation, folded[t.in_key])
                    cache[ck] = r * t.scale if t.scale != 1.0 else r
                parts.append(cache[ck])
            r = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
            # channel mixing (D, C) x (B, C, N) -> (B, D, N)
            r3 = r.reshape(r.shape[0], r.shape[1], -1)
            if r3.shape[2] <= _SMALL:
                # few positions: one GEMM over (C, B*N) instead of B tiny ones, and a plain
                # weight gradient instead of a per-member one summed over the batch
                b_, c_, n_ = r3.shape
                y = (w.t() @ r3.transpose(0, 1).reshape(c_, b_ * n_))
                y = y.view(-1, b_, n_).transpose(0, 1)
            else:
                y = torch.bmm(w.t().expand(r.shape[0], -1, -1), r3)
            shape = [y.shape[0], y.shape[1]] + [1] * group.n_blocks
            for j, size in zip(group.kept_axes, r.shape[2:], strict=True):
                shape[2 + j] = size
            _accumulate(acc.setdefault(group.out_key, {}), group.embed.apply(y.view(shape)))
        for (key, embed), b in zip(self.bias_embeds, self.biases, strict=True):
            y = embed.apply(b.view(1, -1, *([1] * len(embed.blocks))))
            _accumulate(acc.setdefault(key, {}), y)
        out = {}
        for key in self.flat_spec:
            fold = self.folds[key]
            full = (batch, self.out_channels * fold.factor, *fold.labelled_shape)
            out[key] = fold.unfold(_sum_broadcast(list(acc[key].values()), full),
                                   self.out_channels)
        return out


def _param_batch_tensors(batch, shapes: Mapping[str, tuple[int, ...]], who: str
                         ) -> dict[str, Tensor]:
    """The tensors of a :class:`~gensight.weightspace.ParamBatch`, checked against the
    model's ``shapes``."""
    got = batch.space.shape_dict
    if set(got) != set(shapes) or any(shapes[k] != tuple(s) for k, s in got.items()):
        raise ShapeMismatchError(f"{who} got a ParamBatch of {batch.space!r} whose keys or "
                                 "shapes are not the model's")
    return batch.params


def _sum_broadcast(parts: list[Tensor], full: tuple[int, ...]) -> Tensor:
    """The broadcast sum of ``parts`` with shape ``full``: the smaller parts are summed among
    themselves while that stays below full size, then added to the largest part with one
    fresh full-size result and in-place additions into it (fresh full-size buffers are
    costly on CPU; in-place adds into views of other results are costly for autograd)."""
    parts = sorted(parts, key=lambda t: t.numel())
    target = math.prod(full)
    merged: list[Tensor] = []
    for t in parts[:-1]:
        if merged:
            shape = torch.broadcast_shapes(merged[-1].shape, t.shape)
            if math.prod(shape) < target:
                merged[-1] = merged[-1] + t
                continue
        merged.append(t)
    y, fresh = parts[-1], False
    for t in merged:
        if fresh and torch.broadcast_shapes(y.shape, t.shape) == y.shape:
            y = y.add_(t)                        # y is this function's own result
        else:
            y, fresh = y + t, True
    return y.expand(full)


def _split_gated(params: Mapping[str, Tensor], spec: PermSpec,
                 shapes: Mapping[str, tuple[int, ...]], channels: int) -> dict[str, Tensor]:
    """Gated tensors ``(B, C, g * n, ...)`` viewed as ``(B, C, g, n, ...)``; a tensor of the
    wrong shape is named."""
    out = dict(params)
    for key, shape in shapes.items():
        x = params.get(key)
        if x is None:
            continue
        if tuple(x.shape[2:]) != shape or x.dim() != 2 + len(shape):
            raise ShapeMismatchError(f"{key!r} has shape {tuple(x.shape)}; expected (B, "
                                     f"{channels}, *{shape})")
        out[key] = x.reshape(*x.shape[:2], *spec.flat_shape(key, shape))
    return out


def _accumulate(bucket: dict[tuple[int, ...], Tensor], y: Tensor) -> None:
    """Sum terms of equal (broadcast) shape first."""
    shape = tuple(y.shape)
    bucket[shape] = bucket[shape] + y if shape in bucket else y


class UNFPool(nn.Module):
    """Invariant pooling for a :class:`PermSpec`: the mean of every tensor over all its
    labelled axes, unlabelled axes kept as features, concatenated in spec order.

    ``{key: (B, C, *shape)} -> (B, C * sum_key prod(unlabelled sizes of key))``.
    """

    def __init__(self, spec: PermSpec | Mapping[str, Sequence[Label]],
                 shapes: Mapping[str, Sequence[int]]):
        super().__init__()
        spec = spec if isinstance(spec, PermSpec) else PermSpec(spec)
        spec.validate(shapes)
        self.spec = spec                 # as given (what permute and users see)
        self.outer_shapes = {k: tuple(int(n) for n in shapes[k]) for k in spec.gated_keys}
        spec, shapes = spec.flat, spec.flat_shapes(shapes)
        self.flat_spec = spec            # gated axes split: what the layer computes on
        self.folds = {k: _fold_of(spec[k], shapes[k]) for k in spec}

    def out_features(self, channels: int) -> int:
        """Width of the pooled vector for inputs with ``channels`` channels."""
        return channels * sum(f.factor for f in self.folds.values())

    def forward(self, params: Mapping[str, Tensor] | WeightBatch) -> Tensor:
        if isinstance(params, WeightBatch):
            params = weight_batch_to_dict(params)
        if set(params) != set(self.flat_spec):
            raise KeyMismatchError(f"UNFPool expects keys {sorted(self.flat_spec)}, got "
                                   f"{sorted(params)}")
        if self.outer_shapes:
            channels = next(iter(params.values())).shape[1]
            params = _split_gated(params, self.spec, self.outer_shapes, channels)
        feats = []
        for key in self.flat_spec:
            fold = self.folds[key]
            x = params[key]
            if tuple(x.shape[2:]) != fold.shape:
                raise ShapeMismatchError(
                    f"{key!r} has shape {tuple(x.shape)}; expected (B, C, *{fold.shape})"
                )
            y = fold.fold(x)
            feats.append(y.mean(dim=tuple(range(2, y.dim()))) if y.dim() > 2 else y)
        return torch.cat(feats, 1)


class InvariantUNF(nn.Module):
    """An invariant universal neural functional: :class:`UNFLinear` layers with ReLU between
    them, :class:`UNFPool`, an MLP head (arXiv 2402.05232, the generalization predictor of
    its Sec. 5: UNF layers, invariant pooling, a fully connected head).

    ``forward``: ``{key: (B, in_channels, *shape)}`` (or a ``WeightBatch`` for a model built
    with :meth:`from_weight_space`) -> ``(B, out_features)``, invariant to every permutation
    the spec allows.
    """

    def __init__(self, spec: PermSpec | Mapping[str, Sequence[Label]],
                 shapes: Mapping[str, Sequence[int]], *, channels: Sequence[int] = (16, 16, 16),
                 in_channels: int = 1, out_features: int = 1,
                 head_hidden: Sequence[int] = (256,), dropout: float = 0.0,
                 bias: BiasMode = "maximal"):
        from gensight.nf.models import mlp_head

        super().__init__()
        if not channels:
            raise GensightError("InvariantUNF needs at least one UNF layer (channels is empty)")
        spec = spec if isinstance(spec, PermSpec) else PermSpec(spec)
        self.spec, self.space = spec, None
        self.shapes = {k: tuple(int(n) for n in v) for k, v in shapes.items()}
        widths = (in_channels, *channels)
        self.layers = nn.ModuleList(UNFLinear(spec, shapes, a, b, bias=bias)
                                    for a, b in zip(widths, widths[1:], strict=False))
        self.pool = UNFPool(spec, shapes)
        self.head = mlp_head(self.pool.out_features(widths[-1]), head_hidden, out_features,
                             nn.ReLU, dropout)

    @classmethod
    def from_weight_space(cls, space: WeightSpace, symmetry: str = "hnp",
                          **kwargs) -> InvariantUNF:
        """The model on an MLP/CNN weight space (HNP by default: the networks' own
        symmetry); ``forward`` then takes a ``WeightBatch``."""
        model = cls(PermSpec.from_weight_space(space, symmetry), weight_space_shapes(space),
                    **kwargs)
        model.space = space
        return model

    def embed(self, params: Mapping[str, Tensor] | WeightBatch) -> Tensor:
        """The pooled invariant representation ``(B, pool.out_features(channels[-1]))``."""
        from gensight.weightspace import ParamBatch

        if isinstance(params, ParamBatch):
            params = _param_batch_tensors(params, self.shapes, "InvariantUNF")
        if isinstance(params, WeightBatch):
            if self.space is None or params.space != self.space:
                raise ShapeMismatchError(
                    f"InvariantUNF got a WeightBatch of {params.space!r}; build it with "
                    "InvariantUNF.from_weight_space(space, ...) for that space")
            params = weight_batch_to_dict(params)
        x = dict(params)
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k < len(self.layers) - 1:
                x = {key: torch.relu(t) for key, t in x.items()}
        return self.pool({key: torch.relu(t) for key, t in x.items()})

    def forward(self, params: Mapping[str, Tensor] | WeightBatch) -> Tensor:
        return self.head(self.embed(params))
