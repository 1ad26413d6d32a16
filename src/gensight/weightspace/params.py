"""`ParamSpace` and `ParamBatch`: any network's parameters, with the permutation spec of UNF.

:class:`~gensight.weightspace.WeightSpace` describes feedforward MLPs and CNNs only (the
spaces of the NF-Layers, arXiv 2302.14040). A :class:`ParamSpace` describes the parameters of
*any* module (a GRU, a residual CNN, ...) as what UNF (arXiv 2402.05232, Sec. 2-3) needs: the
state-dict keys with their shapes (torch layout) and a :class:`~gensight.nf.PermSpec` that
says which axes one hidden-neuron permutation acts on together (derived from the module by
:func:`~gensight.nf.perm_spec`). A :class:`ParamBatch` holds B networks of one such space as
``{key: (B, C, *shape)}``, the layout :class:`~gensight.nf.UNFLinear` takes.

Both are plain data: :meth:`ParamSpace.to_dict` is JSON (the zoo manifest stores it), with
:class:`~gensight.nf.unf.Gated` axes written as ``{"gated": blocks, "label": label}``,
:class:`~gensight.nf.unf.Split` axes as ``{"split": sizes, "labels": labels}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from gensight.errors import GensightError, KeyMismatchError, ShapeMismatchError

if TYPE_CHECKING:
    from gensight.nf.unf import PermSpec


def _label_to_json(label: Any) -> Any:
    from gensight.nf.unf import Gated, Split

    if isinstance(label, Gated):
        return {"gated": label.blocks, "label": label.label}
    if isinstance(label, Split):
        return {"split": list(label.sizes), "labels": list(label.labels)}
    return label


def _label_from_json(value: Any) -> Any:
    from gensight.nf.unf import Gated, Split

    if isinstance(value, dict):
        if set(value) == {"split", "labels"}:
            if not (isinstance(value["split"], list) and isinstance(value["labels"], list)):
                raise GensightError(f"axis label {value!r}: 'split' and 'labels' must be lists")
            return Split(tuple(value["labels"]), tuple(value["split"]))
        if set(value) != {"gated", "label"}:
            raise GensightError(f"axis label {value!r}: expected {{'gated': blocks, 'label': "
                                "label} or {'split': sizes, 'labels': labels}")
        return Gated(value["gated"], value["label"])
    if value is None or (isinstance(value, int | str) and not isinstance(value, bool)):
        return value
    raise GensightError(f"axis label {value!r} must be an int, a str, null or a gated table")


@dataclass(frozen=True, eq=False)
class ParamSpace:
    """The parameters of one network architecture: ``shapes`` (state-dict key -> shape, in
    the module's order) and the permutation ``spec`` of its symmetry (HNP: hidden neurons).

    Build it from a module with :meth:`from_module`. Two spaces are equal when their keys,
    shapes and specs are equal.
    """

    shapes: tuple[tuple[str, tuple[int, ...]], ...]
    spec: PermSpec
    np_spec: PermSpec | None = None  # the spec with input/output neurons permuted too

    def __post_init__(self) -> None:
        keys = [k for k, _ in self.shapes]
        if not keys:
            raise GensightError("a ParamSpace needs at least one parameter")
        if len(set(keys)) != len(keys):
            raise KeyMismatchError(f"ParamSpace: a key is listed twice in {keys}")
        if set(keys) != set(self.spec):
            raise KeyMismatchError(
                f"ParamSpace: the spec's keys {sorted(self.spec)} are not the parameters' "
                f"keys {sorted(keys)}")
        self.spec.validate(self.shape_dict)
        if self.np_spec is not None:
            if set(self.np_spec) != set(keys):
                raise KeyMismatchError("ParamSpace: np_spec has other keys than the spec")
            self.np_spec.validate(self.shape_dict)

    @classmethod
    def from_module(cls, module: nn.Module) -> ParamSpace:
        """The space of ``module``'s parameters, its HNP and NP specs derived by tracing
        (:func:`gensight.nf.perm_spec`; an untraceable module raises one line naming it)."""
        from gensight.nf import perm_spec

        shapes = tuple((k, tuple(p.shape)) for k, p in module.named_parameters())
        return cls(shapes, perm_spec(module, "hnp"), perm_spec(module, "np"))

    def spec_for(self, symmetry: str) -> PermSpec:
        """The spec of ``symmetry``: ``"hnp"`` (the networks' own symmetry) or ``"np"``."""
        if symmetry == "hnp":
            return self.spec
        if symmetry == "np" and self.np_spec is not None:
            return self.np_spec
        raise GensightError(f"this ParamSpace has no {symmetry!r} spec (known: hnp"
                            f"{', np' if self.np_spec is not None else ''})")

    @property
    def shape_dict(self) -> dict[str, tuple[int, ...]]:
        return dict(self.shapes)

    def state_dict_keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.shapes)

    def state_dict_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        return list(self.shapes)

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for _, s in self.shapes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParamSpace) and self.shapes == other.shapes and \
            dict(self.spec) == dict(other.spec) and \
            (None if self.np_spec is None else dict(self.np_spec)) == \
            (None if other.np_spec is None else dict(other.np_spec))

    def __hash__(self) -> int:
        return hash(self.shapes)

    def __repr__(self) -> str:
        return f"ParamSpace({len(self.shapes)} tensors, {self.n_params:,} parameters)"

    def to_dict(self) -> dict:
        """JSON-serializable description (the zoo manifest's ``space``)."""
        out = {"kind": "params", "shapes": [[k, list(s)] for k, s in self.shapes],
               "spec": _spec_to_json(self.spec, self.shapes)}
        if self.np_spec is not None:
            out["np_spec"] = _spec_to_json(self.np_spec, self.shapes)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ParamSpace:
        from gensight.nf.unf import PermSpec

        if not isinstance(data, dict) or data.get("kind") != "params":
            raise GensightError("not a ParamSpace description (kind 'params')")
        def spec(value: dict) -> PermSpec:
            return PermSpec({str(k): tuple(_label_from_json(a) for a in v)
                             for k, v in value.items()})

        def size(n: Any) -> int:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"shape entry {n!r} is not a positive int")
            return n

        try:
            shapes = tuple((str(k), tuple(size(n) for n in s)) for k, s in data["shapes"])
            hnp = spec(data["spec"])
            np_spec = spec(data["np_spec"]) if data.get("np_spec") is not None else None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise GensightError(f"corrupt ParamSpace description: {exc!r}") from None
        return cls(shapes, hnp, np_spec)


def _spec_to_json(spec: PermSpec, shapes) -> dict:
    return {k: [_label_to_json(a) for a in spec[k]] for k, _ in shapes}


def space_from_dict(data: dict):
    """A :class:`~gensight.weightspace.WeightSpace` or a :class:`ParamSpace` from its
    ``to_dict`` (``kind = "params"`` marks the latter)."""
    from gensight.weightspace.space import WeightSpace

    if isinstance(data, dict) and data.get("kind") == "params":
        return ParamSpace.from_dict(data)
    return WeightSpace.from_dict(data)


class ParamBatch:
    """B networks of one :class:`ParamSpace`: ``params[key]`` is ``(B, C, *shape)``.

    Indexing (an int, slice, index tensor or list) selects networks; :meth:`map` applies a
    function to every tensor; :meth:`state_dicts` / :meth:`from_state_dicts` convert to and
    from per-network state dicts (channel 0).
    """

    def __init__(self, space: ParamSpace, params: Mapping[str, Tensor]):
        shapes = space.shape_dict
        if set(params) != set(shapes):
            raise KeyMismatchError(f"ParamBatch: keys {sorted(params)} are not the space's "
                                   f"{sorted(shapes)}")
        first = next(iter(params.values()))
        for key, shape in shapes.items():
            t = params[key]
            if t.dim() != len(shape) + 2 or tuple(t.shape[2:]) != shape or \
                    t.shape[:2] != first.shape[:2]:
                raise ShapeMismatchError(
                    f"ParamBatch[{key!r}] is {tuple(t.shape)}, expected (B, C, *{shape}) with "
                    f"(B, C) = {tuple(first.shape[:2])}")
        self.space = space
        self.params = {k: params[k] for k in shapes}

    @classmethod
    def from_state_dicts(cls, space: ParamSpace,
                         state_dicts: Sequence[Mapping[str, Tensor]]) -> ParamBatch:
        if not state_dicts:
            raise GensightError("ParamBatch.from_state_dicts: no state dicts")
        params = {}
        for key, shape in space.shapes:
            for i, sd in enumerate(state_dicts):
                if key not in sd:
                    raise KeyMismatchError(f"state dict {i} has no parameter {key!r}")
                if tuple(sd[key].shape) != shape:
                    raise ShapeMismatchError(f"state dict {i}: {key!r} is "
                                             f"{tuple(sd[key].shape)}, expected {shape}")
            params[key] = torch.stack([sd[key] for sd in state_dicts])[:, None]
        return cls(space, params)

    def state_dicts(self) -> list[dict[str, Tensor]]:
        """Channel 0 of every network as a state dict."""
        return [{k: v[i, 0] for k, v in self.params.items()} for i in range(len(self))]

    @classmethod
    def from_modules(cls, space: ParamSpace, modules: Sequence[nn.Module]) -> ParamBatch:
        """The parameters of ``modules`` (each of ``space``), stacked."""
        return cls.from_state_dicts(space, [{k: p.detach() for k, p in m.named_parameters()}
                                            for m in modules])

    def to_modules(self, template: nn.Module) -> list[nn.Module]:
        """Copies of ``template`` loaded with each network's parameters (channel 0); buffers
        are the template's."""
        import copy

        out = []
        for sd in self.state_dicts():
            module = copy.deepcopy(template)
            with torch.no_grad():
                for key, p in module.named_parameters():
                    p.copy_(sd[key])
            out.append(module)
        return out

    @classmethod
    def cat(cls, batches: Sequence[ParamBatch]) -> ParamBatch:
        """Networks of several batches of one space, in order."""
        if not batches:
            raise GensightError("ParamBatch.cat: no batches")
        space = batches[0].space
        if any(b.space != space for b in batches):
            raise ShapeMismatchError("ParamBatch.cat: the batches hold different spaces")
        return cls(space, {k: torch.cat([b.params[k] for b in batches]) for k in space.shape_dict})

    def __len__(self) -> int:
        return next(iter(self.params.values())).shape[0]

    @property
    def batch_size(self) -> int:
        return len(self)

    @property
    def channels(self) -> int:
        return next(iter(self.params.values())).shape[1]

    def tensors(self) -> tuple[Tensor, ...]:
        return tuple(self.params.values())

    def map(self, fn) -> ParamBatch:
        return ParamBatch(self.space, {k: fn(v) for k, v in self.params.items()})

    def __getitem__(self, index) -> ParamBatch:
        """Networks ``index`` (an int keeps the batch axis, as ``WeightBatch`` does)."""
        if isinstance(index, Tensor) and index.dim() == 0:
            index = int(index)
        elif not isinstance(index, slice | Tensor | list) and hasattr(index, "__index__"):
            index = int(index)  # NumPy integers
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        if isinstance(index, list):
            index = torch.as_tensor(index, dtype=torch.long)
        return ParamBatch(self.space, {k: v[index] for k, v in self.params.items()})

    def __repr__(self) -> str:
        return f"ParamBatch({len(self)} networks, {self.channels} channel(s), {self.space!r})"


def nonfinite_param_members(batch: ParamBatch) -> list[int]:
    """Networks of ``batch`` with a NaN/inf entry."""
    bad = torch.zeros(len(batch), dtype=torch.bool)
    for t in batch.tensors():
        bad |= ~torch.isfinite(t.flatten(1)).all(1)
    return bad.nonzero().flatten().tolist()
