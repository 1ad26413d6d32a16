"""`WeightBatch`: the weights of B networks of one `WeightSpace`, with a channel axis.

Weights are tensors of shape ``(B, C, n_out, n_in, *filter)`` and biases ``(B, C, n_out)``,
one of each per parametrized layer. Raw networks have ``C == 1``; the hidden features of
neural functionals have ``C > 1``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from gensight.errors import (
    GensightError,
    IncompatibleSpaceError,
    KeyMismatchError,
    NonFiniteWeightsError,
    ShapeMismatchError,
)
from gensight.weightspace.space import WeightSpace


class WeightBatch:
    """Batched weight-space tensors ``weights[i]: (B, C, n_out, n_in, *filter)``,
    ``biases[i]: (B, C, n_out)``.

    Immutable in structure; operations return new batches. Build one with
    :meth:`from_modules` or :meth:`from_state_dicts`, go back with :meth:`to_state_dicts`
    or :meth:`to_modules`.

    The constructor checks shapes and, unless ``check_finite=False``, that every value is
    finite (:class:`~gensight.errors.NonFiniteWeightsError` names the key and the members).
    Batches derived from checked ones (:meth:`map`, arithmetic, indexing, the layers of
    :mod:`gensight.nf`) skip the finiteness scan.
    """

    __slots__ = ("space", "weights", "biases")

    def __init__(self, space: WeightSpace, weights: Sequence[Tensor], biases: Sequence[Tensor],
                 *, check_finite: bool = True):
        weights, biases = tuple(weights), tuple(biases)
        if len(weights) != space.n_layers or len(biases) != space.n_layers:
            raise ShapeMismatchError(
                f"expected {space.n_layers} weight and bias tensors, got {len(weights)} weights "
                f"and {len(biases)} biases"
            )
        lead = weights[0].shape[:2]
        if weights[0].dim() < 4:
            raise ShapeMismatchError(
                f"weight {space.layers[0].weight_key!r} has shape {tuple(weights[0].shape)}; "
                "expected (B, C, n_out, n_in, *filter)"
            )
        for layer, w, b in zip(space.layers, weights, biases, strict=True):
            if tuple(w.shape) != (*lead, *layer.weight_shape):
                raise ShapeMismatchError(
                    f"weight {layer.weight_key!r} has shape {tuple(w.shape)}; expected "
                    f"{(*lead, *layer.weight_shape)} (B, C, n_out, n_in, *filter)"
                )
            bias_name = layer.bias_key or f"{layer.weight_key} (bias)"
            if tuple(b.shape) != (*lead, *layer.bias_shape):
                raise ShapeMismatchError(
                    f"bias {bias_name!r} has shape {tuple(b.shape)}; expected "
                    f"{(*lead, *layer.bias_shape)} (B, C, n_out)"
                )
        if check_finite:
            _check_finite(space, weights, biases)
        self.space = space
        self.weights = weights
        self.biases = biases

    # --- basic properties -----------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.weights[0].shape[0]

    @property
    def channels(self) -> int:
        return self.weights[0].shape[1]

    @property
    def device(self) -> torch.device:
        return self.weights[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.weights[0].dtype

    def __len__(self) -> int:
        return self.batch_size

    def __repr__(self) -> str:
        return (
            f"WeightBatch(batch_size={self.batch_size}, channels={self.channels}, "
            f"space={self.space!r})"
        )

    def tensors(self) -> tuple[Tensor, ...]:
        """All tensors, weights then biases, in layer order."""
        return self.weights + self.biases

    # --- functional helpers ---------------------------------------------------------------
    def map(self, fn: Callable[[Tensor], Tensor]) -> WeightBatch:
        """Apply ``fn`` to every weight and bias tensor (no finiteness check of the result)."""
        return WeightBatch(
            self.space, [fn(w) for w in self.weights], [fn(b) for b in self.biases],
            check_finite=False,
        )

    def zip_map(self, other: WeightBatch, fn: Callable[[Tensor, Tensor], Tensor]) -> WeightBatch:
        self._check_same_space(other)
        return WeightBatch(
            self.space,
            [fn(a, b) for a, b in zip(self.weights, other.weights, strict=True)],
            [fn(a, b) for a, b in zip(self.biases, other.biases, strict=True)],
            check_finite=False,
        )

    def __add__(self, other: WeightBatch) -> WeightBatch:
        return self.zip_map(other, torch.add)

    def __sub__(self, other: WeightBatch) -> WeightBatch:
        return self.zip_map(other, torch.sub)

    def __mul__(self, other: WeightBatch | float) -> WeightBatch:
        if isinstance(other, WeightBatch):
            return self.zip_map(other, torch.mul)
        return self.map(lambda t: t * other)

    __rmul__ = __mul__

    def detach(self) -> WeightBatch:
        return self.map(Tensor.detach)

    def to(self, *args, **kwargs) -> WeightBatch:
        return self.map(lambda t: t.to(*args, **kwargs))

    def __getitem__(self, index: int | slice | Tensor | Sequence[int]) -> WeightBatch:
        """Select members (the batch axis). An int keeps the batch axis (size 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return self.map(lambda t: t[index])

    @classmethod
    def cat(cls, batches: Sequence[WeightBatch]) -> WeightBatch:
        """Concatenate batches of one space along the batch axis."""
        if not batches:
            raise GensightError("WeightBatch.cat needs at least one batch")
        first = batches[0]
        for other in batches[1:]:
            first._check_same_space(other)
        return cls(
            first.space,
            [torch.cat(ts, 0) for ts in zip(*(b.weights for b in batches), strict=True)],
            [torch.cat(ts, 0) for ts in zip(*(b.biases for b in batches), strict=True)],
            check_finite=False,
        )

    def flatten(self) -> Tensor:
        """All parameters of each member as one vector: ``(B, C * P)`` where P counts every
        weight and bias entry (zero biases of bias-free layers included)."""
        return torch.cat([t.flatten(1) for t in self.tensors()], dim=1)

    @classmethod
    def unflatten(cls, space: WeightSpace, flat: Tensor, channels: int = 1, *,
                  check_finite: bool = True) -> WeightBatch:
        """Inverse of :meth:`flatten`: ``(B, channels * P)`` -> batch.

        Raises:
            ShapeMismatchError: ``flat`` is not ``(B, channels * P)``.
            NonFiniteWeightsError: NaN or infinite values (unless ``check_finite=False``);
                names the key and the members.
        """
        shapes = [(channels, *layer.weight_shape) for layer in space.layers]
        shapes += [(channels, *layer.bias_shape) for layer in space.layers]
        sizes = [math.prod(s) for s in shapes]
        if flat.dim() != 2 or flat.shape[1] != sum(sizes):
            raise ShapeMismatchError(
                f"flat weights have shape {tuple(flat.shape)}; expected (B, {sum(sizes)}) for "
                f"{channels} channel(s) of {space!r}"
            )
        parts = [p.reshape(flat.shape[0], *s)
                 for p, s in zip(flat.split(sizes, dim=1), shapes, strict=True)]
        n = space.n_layers
        return cls(space, parts[:n], parts[n:], check_finite=check_finite)

    def allclose(self, other: WeightBatch, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
        self._check_same_space(other)
        return all(
            torch.allclose(a, b, rtol=rtol, atol=atol)
            for a, b in zip(self.tensors(), other.tensors(), strict=True)
        )

    def _check_same_space(self, other: WeightBatch) -> None:
        if self.space != other.space:
            raise IncompatibleSpaceError(
                f"weight batches of different spaces: {self.space!r} vs {other.space!r}"
            )

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_state_dicts(
        cls,
        space: WeightSpace,
        state_dicts: Iterable[Mapping[str, Tensor]],
        *,
        check_finite: bool = True,
        dtype: torch.dtype | None = torch.float32,
    ) -> WeightBatch:
        """Stack state dicts (keys matched by name, not by order) into a batch with C = 1.

        Raises:
            KeyMismatchError: a state dict lacks a key of ``space`` or has an extra one.
            ShapeMismatchError: a tensor's shape differs from ``space``; names the key and
                both shapes.
            NonFiniteWeightsError: NaN or infinite values (unless ``check_finite=False``).
        """
        state_dicts = list(state_dicts)
        if not state_dicts:
            raise GensightError("from_state_dicts needs at least one state dict")
        expected = set(space.state_dict_keys())
        weights: list[list[Tensor]] = [[] for _ in space.layers]
        biases: list[list[Tensor]] = [[] for _ in space.layers]
        bad: dict[int, str] = {}  # member -> its first non-finite key
        for m, sd in enumerate(state_dicts):
            got = set(sd.keys())
            if got != expected:
                missing, extra = sorted(expected - got), sorted(got - expected)
                parts = []
                if missing:
                    parts.append(f"missing keys {missing}")
                if extra:
                    parts.append(f"unexpected keys {extra}")
                raise KeyMismatchError(f"state dict {m}: " + "; ".join(parts))
            for i, layer in enumerate(space.layers):
                w = _checked(sd, layer.weight_key, layer.weight_shape, m)
                weights[i].append(w)
                if check_finite and m not in bad and not _all_finite(w):
                    bad[m] = layer.weight_key
                if layer.bias_key is None:
                    biases[i].append(torch.zeros(layer.n_out, dtype=w.dtype, device=w.device))
                else:
                    b = _checked(sd, layer.bias_key, layer.bias_shape, m)
                    biases[i].append(b)
                    if check_finite and m not in bad and not _all_finite(b):
                        bad[m] = layer.bias_key
        if bad:
            _raise_nonfinite_state_dicts(bad, len(state_dicts), "")
        convert = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
        stacked_w = [torch.stack(ws).unsqueeze(1) for ws in weights]
        stacked_b = [torch.stack(bs).unsqueeze(1) for bs in biases]
        batch = cls(space, [convert(w) for w in stacked_w], [convert(b) for b in stacked_b],
                    check_finite=False)  # checked above, per state dict
        narrowed = dtype is not None and dtype.is_floating_point and any(
            t.is_floating_point() and torch.finfo(t.dtype).max > torch.finfo(dtype).max
            for t in (*stacked_w, *stacked_b))
        if check_finite and narrowed:  # e.g. 1e39 in float64 is inf in float32
            overflow = nonfinite_members(batch)
            if overflow:
                keys = {m: "a weight" for m in overflow}
                _raise_nonfinite_state_dicts(keys, len(state_dicts),
                                             f" after conversion to {dtype}")
        return batch

    @classmethod
    def from_modules(
        cls, modules: Iterable[nn.Module], space: WeightSpace | None = None, **kwargs
    ) -> WeightBatch:
        """Stack the parameters of modules that share one weight space (C = 1)."""
        modules = list(modules)
        if not modules:
            raise GensightError("from_modules needs at least one module")
        if space is None:
            space = WeightSpace.from_module(modules[0])
        return cls.from_state_dicts(
            space, (_param_state_dict(m) for m in modules), **kwargs
        )

    def to_state_dicts(self) -> list[dict[str, Tensor]]:
        """One state dict per member (requires C == 1); bias-free layers get no bias key."""
        if self.channels != 1:
            raise ShapeMismatchError(
                f"to_state_dicts needs a batch with 1 channel; this one has {self.channels}"
            )
        out: list[dict[str, Tensor]] = []
        for m in range(self.batch_size):
            sd: dict[str, Tensor] = {}
            for layer, w, b in zip(self.space.layers, self.weights, self.biases, strict=True):
                sd[layer.weight_key] = w[m, 0]
                if layer.bias_key is not None:
                    sd[layer.bias_key] = b[m, 0]
            out.append(sd)
        return out

    def to_modules(self, template: nn.Module) -> list[nn.Module]:
        """Deep copies of ``template`` loaded with each member's weights."""
        space = WeightSpace.from_module(template)
        if space != self.space:
            raise IncompatibleSpaceError(
                f"template module has {space!r}; this batch has {self.space!r}"
            )
        modules = []
        for sd in self.to_state_dicts():
            module = copy.deepcopy(template)
            with torch.no_grad():
                params = dict(module.named_parameters())
                for key, value in sd.items():
                    params[key].copy_(value)
            modules.append(module)
        return modules


def _param_state_dict(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in module.named_parameters()}


def _all_finite(t: Tensor) -> bool:
    return not t.is_floating_point() or bool(torch.isfinite(t).all())


def _few(items: Sequence, limit: int = 5) -> str:
    """``[a, b, c]`` or ``[a, b, c, ...]`` (the first ``limit`` items)."""
    shown = ", ".join(str(i) for i in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}]"


def nonfinite_members(batch: WeightBatch) -> list[int]:
    """Indices (batch axis) of the members with a NaN or infinite weight or bias."""
    ok = None
    for t in batch.tensors():
        if t.is_floating_point():
            f = torch.isfinite(t.reshape(t.shape[0], -1)).all(1)
            ok = f if ok is None else ok & f
    return [] if ok is None else torch.nonzero(~ok).flatten().tolist()


def _raise_nonfinite_state_dicts(bad: dict[int, str], total: int, how: str) -> None:
    members = sorted(bad)
    first = members[0]
    key = bad[first] if bad[first].startswith("a ") else f"key {bad[first]!r}"
    err = NonFiniteWeightsError(
        f"state dict {first}: {key} contains NaN or infinite values{how} ({len(members)} of "
        f"{total} state dicts do: {_few(members)})")
    err.members = members  # indices into the state dicts, for callers that name them
    raise err


def _check_finite(space: WeightSpace, weights: tuple[Tensor, ...],
                  biases: tuple[Tensor, ...]) -> None:
    for layer, w, b in zip(space.layers, weights, biases, strict=True):
        for t, name in ((w, f"weight {layer.weight_key!r}"),
                        (b, f"bias {layer.bias_key or layer.weight_key + ' (bias)'!r}")):
            if not _all_finite(t):
                members = torch.nonzero(
                    ~torch.isfinite(t.reshape(t.shape[0], -1)).all(1)).flatten().tolist()
                err = NonFiniteWeightsError(
                    f"{name} contains NaN or infinite values in {len(members)} of "
                    f"{t.shape[0]} members {_few(members)} (pass check_finite=False to "
                    "allow them)")
                err.members = members
                raise err


def _checked(sd: Mapping[str, Tensor], key: str, shape: tuple[int, ...], member: int) -> Tensor:
    value = sd[key]
    if not isinstance(value, Tensor):
        value = torch.as_tensor(value)
    if tuple(value.shape) != shape:
        raise ShapeMismatchError(
            f"state dict {member}: key {key!r} has shape {tuple(value.shape)}; the weight "
            f"space expects {shape}"
        )
    return value
