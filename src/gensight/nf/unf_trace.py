"""Derive a UNF permutation spec from an ``nn.Module`` by tracing it (issue #16).

Universal Neural Functionals (Zhou, Finn, Harrison, arXiv 2402.05232) act on any weight space
whose permutation symmetry is written as a :class:`~gensight.nf.unf.PermSpec`: one label per
axis of every parameter, equal labels permuted together. :func:`perm_spec` writes that spec
for you: it traces the module with :func:`torch.fx.symbolic_trace`, runs the graph once on a
small example input (:class:`torch.fx.passes.shape_prop.ShapeProp`, eval mode, no grad) to
learn every activation's shape, and then propagates **neuron-axis labels** through the graph:

* every activation tensor carries one *feature axis* and a label for it; labels live in a
  union-find, so that two labels that must be permuted together become one class;
* a graph input gets a fresh label; its feature axis is fixed by the first layer that reads
  it (last axis for ``Linear``/``RNN``, the channel axis for convolutions);
* ``Linear``/``ConvNd`` (``groups=1``) make a fresh label ``o``: ``weight -> (o, i, None per
  filter axis)``, ``bias -> (o,)``; a module called twice reuses its labels (and ties the
  input labels of both calls);
* elementwise activations (ReLU, GELU, Tanh, Sigmoid, SiLU, sine-like modules traced through,
  ...), Dropout, Identity, Softmax, pooling, reductions over non-feature axes, ``Flatten``
  that only merges the feature axis with size-1 axes (global pooling) and indexing that
  leaves the feature axis whole keep the label;
* ``BatchNorm``/``InstanceNorm``/``LayerNorm``/``GroupNorm`` (1 group or one per channel)
  label their affine weight/bias (and, with ``buffers=True``, running statistics) with the
  channel label; a LayerNorm over several trailing axes labels only the feature axis;
* elementwise binary ops between two activations (a residual ``x + f(x)``, ``torch.add``,
  ``*``) **tie** (union) the labels of both operands;
* ``nn.RNN``/``nn.GRU``/``nn.LSTM`` (any depth, unidirectional, no initial state passed):
  layer ``k`` gets a hidden label ``h_k``: ``weight_ih_l{k} -> (h_k, h_{k-1})``,
  ``weight_hh_l{k} -> (h_k, h_k)``, biases ``(h_k,)``; for GRU (3 gates) and LSTM (4 gates)
  the ``(gates * hidden)`` rows are ``Gated(gates, h_k)``: the hidden permutation acts inside
  every gate block;
* ``nn.MultiheadAttention`` (``E = H * d``): ``in_proj_weight -> (Split((None, head, dim),
  (3, H, d)), x)``, ``in_proj_bias`` likewise, ``out_proj.weight -> (o, Split((head, dim),
  (H, d)))``, ``out_proj.bias -> (o,)``: heads, and the dimensions within every head (alike
  in q, k and v), are permuted; query, key and value are tied. Masks are read as forward
  inputs; a per-head (3-D) ``attn_mask`` pins the heads (only the dimensions move). A mask
  kept as a buffer or built inside ``forward`` is refused like any other direct tensor.

At the end the input and output classes become ``None`` under ``"hnp"`` (their neurons are
not permuted) and keep a label under ``"np"``. Labels are the integers ``0, 1, ...`` in order
of creation, so a plain MLP gets exactly :meth:`PermSpec.from_weight_space`'s spec.

Not derivable (raises :class:`PermSpecTraceError`, one line naming the module path and the
operation): untraceable (data-dependent) control flow; ``view``/``reshape``/``permute``/
``cat``, indexing the feature axis and any unknown function or module; parameters read
directly (``get_attr``); ``nn.MultiheadAttention`` with kdim/vdim of their own or
``add_bias_kv``; bidirectional RNNs and ``GroupNorm`` with ``1 < groups < channels``.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

from gensight.errors import KeyMismatchError, ShapeMismatchError, UnsupportedModuleError
from gensight.nf.unf import Gated, Label, PermSpec, Split

__all__ = ["PermSpecTraceError", "apply_params", "module_params", "perm_spec"]


class PermSpecTraceError(UnsupportedModuleError):
    """A permutation spec cannot be derived from a module (message: module path and op)."""


# --- op tables --------------------------------------------------------------------------------

_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.Mish, nn.LeakyReLU, nn.ELU,
    nn.SELU, nn.CELU, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Tanhshrink, nn.LogSigmoid, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.Softmax, nn.LogSoftmax,
)
_ELEMENTWISE_FUNCS = {
    torch.relu, F.relu, F.relu6, torch.tanh, F.tanh, torch.sigmoid, F.sigmoid, F.gelu, F.silu,
    F.mish, F.leaky_relu, F.elu, F.selu, F.celu, F.softplus, F.softsign, F.hardtanh,
    F.hardswish, F.hardsigmoid, F.logsigmoid, torch.sin, torch.cos, torch.exp, torch.abs,
    torch.square, torch.sqrt, torch.erf, operator.neg, operator.pos, F.dropout, F.softmax,
    F.log_softmax, torch.softmax, torch.log_softmax,
}
_ELEMENTWISE_METHODS = {
    "relu", "tanh", "sigmoid", "sin", "cos", "exp", "abs", "neg", "square", "sqrt", "erf",
    "contiguous", "clone", "detach", "float", "double", "to", "softmax", "log_softmax",
}
_BINARY_FUNCS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
    operator.imul, torch.add, torch.sub, torch.mul, torch.div,
}
_BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_"}
_REDUCE_FUNCS = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_POOL_MODULES: dict[type[nn.Module], int] = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2,
    nn.AvgPool3d: 3, nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3,
    nn.LPPool1d: 1, nn.LPPool2d: 2,
}
_POOL_FUNCS = {
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2,
    F.avg_pool3d: 3, F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2,
    F.adaptive_avg_pool3d: 3, F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2,
    F.adaptive_max_pool3d: 3,
}
_META_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda"}
_CONV: dict[type[nn.Module], int] = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_CHANNEL_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d,
                  nn.InstanceNorm2d, nn.InstanceNorm3d)
_GATES: dict[type[nn.Module], int] = {nn.RNN: 1, nn.GRU: 3, nn.LSTM: 4}
_WHY_NOT: dict[type[nn.Module], str] = {}


# --- propagation state ------------------------------------------------------------------------

@dataclass
class _Act:
    """An activation: its feature axis (``None``: a graph input whose first consumer has not
    fixed it yet), its rank and its label (a union-find element)."""

    axis: int | None
    ndim: int
    label: int


@dataclass(frozen=True)
class _Poison:
    """A value that cannot carry one label (e.g. ``h_n`` of a multi-layer RNN)."""

    why: str


class _Derivation:
    def __init__(self, gm: fx.GraphModule, buffers: bool):
        self.gm = gm
        self.buffers = buffers
        self.parent: list[int] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self.spec: dict[str, tuple[int | None, ...]] = {}
        self.seen: dict[int, tuple] = {}  # id(module) -> labels of its first call
        self.pinned: list[int] = []  # labels no permutation may act on (per-head masks)
        self.env: dict[fx.Node, object] = {}
        self.node: fx.Node | None = None

    # union-find; the root of a class is its smallest element (the first created label)
    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    # errors
    def where(self) -> str:
        node = self.node
        if node is None:
            return "<root>"
        if node.op == "call_module":
            return f"{node.target} ({type(self.gm.get_submodule(node.target)).__name__})"
        stack = node.meta.get("nn_module_stack") or {}
        path = next(reversed(stack)) if stack else ""
        op = getattr(node.target, "__name__", str(node.target))
        return f"{path or '<root>'} ({node.op} {op})"

    def fail(self, reason: str) -> PermSpecTraceError:
        return PermSpecTraceError(f"perm_spec: {self.where()}: {reason}")

    # helpers
    def act(self, value: object, what: str = "input") -> _Act:
        if isinstance(value, _Poison):
            raise self.fail(value.why)
        if not isinstance(value, _Act):
            raise self.fail(f"{what} is not a traced activation ({type(value).__name__})")
        return value

    def need(self, a: _Act, axis: int) -> None:
        if a.axis is None:
            a.axis = axis
        elif a.axis != axis:
            raise self.fail(f"expects the feature axis at dim {axis} but it is at dim {a.axis}")

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise self.fail("output is not a tensor")
        return tuple(meta.shape)

    def add(self, key: str, labels: Sequence[int | None]) -> None:
        self.spec[key] = tuple(labels)

    # main loop
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            self.node = node
            if node.op == "placeholder":
                meta = node.meta.get("tensor_meta")
                if meta is None or not hasattr(meta, "shape"):
                    self.env[node] = None  # a non-tensor argument
                    continue
                label = self.new()
                self.inputs.append(label)
                self.env[node] = _Act(None, len(meta.shape), label)
            elif node.op == "get_attr":
                raise self.fail(f"reads the parameter/buffer {node.target!r} directly; only "
                                "parameters of supported modules can be labelled")
            elif node.op == "call_module":
                self.env[node] = self.call_module(node, self.gm.get_submodule(node.target))
            elif node.op in ("call_function", "call_method"):
                self.env[node] = self.call_function(node)
            elif node.op == "output":
                for v in _flatten(self.lookup(node.args)):
                    if isinstance(v, _Act):
                        self.outputs.append(v.label)
                    elif isinstance(v, _Poison):
                        raise self.fail(v.why)
        self.node = None

    def lookup(self, arg: object) -> object:
        return fx.node.map_aggregate(arg, lambda a: self.env[a] if isinstance(a, fx.Node) else a)

    def _args(self, node: fx.Node) -> tuple[list, dict]:
        return list(self.lookup(node.args)), dict(self.lookup(node.kwargs))

    # modules
    def call_module(self, node: fx.Node, mod: nn.Module) -> object:
        args, kwargs = self._args(node)
        kind = type(mod)
        if kind in _WHY_NOT:
            raise self.fail(f"{kind.__name__} is not supported: {_WHY_NOT[kind]}")
        if kind is nn.MultiheadAttention:
            return self.attention(node, mod, args, kwargs, f"{node.target}.")
        if not args:
            raise self.fail("called without an input")
        if len(args) > 1 or kwargs:
            raise self.fail("extra arguments (e.g. an initial hidden state) are not supported")
        x = self.act(args[0])
        out_shape = self.shape(node) if kind not in _GATES else None
        prefix = f"{node.target}."
        if kind is nn.Linear:
            self.need(x, x.ndim - 1)
            out = self.layer(mod, x)
            self.add(prefix + "weight", (out, x.label))
            if mod.bias is not None:
                self.add(prefix + "bias", (out,))
            return _Act(len(out_shape) - 1, len(out_shape), out)
        if kind in _CONV:
            n = _CONV[kind]
            if mod.groups != 1:
                raise self.fail(f"grouped convolution (groups={mod.groups}) mixes channel "
                                "blocks, which a whole-axis label cannot express")
            self.need(x, x.ndim - n - 1)
            out = self.layer(mod, x)
            self.add(prefix + "weight", (out, x.label, *[None] * n))
            if mod.bias is not None:
                self.add(prefix + "bias", (out,))
            return _Act(x.axis, len(out_shape), out)
        if isinstance(mod, _CHANNEL_NORMS):
            self.need(x, 1 if x.ndim > 1 else 0)
            self.norm_params(prefix, mod, x.label)
            return x
        if kind is nn.GroupNorm:
            if mod.num_groups not in (1, mod.num_channels):
                raise self.fail(f"GroupNorm with {mod.num_groups} groups of "
                                f"{mod.num_channels} channels normalises channel blocks; only "
                                "1 group or one group per channel is supported")
            self.need(x, 1)
            self.norm_params(prefix, mod, x.label)
            return x
        if kind is nn.LayerNorm:
            if x.axis is None:
                raise self.fail("cannot tell the feature axis of a graph input read first by "
                                "LayerNorm")
            k = len(mod.normalized_shape)
            pos = x.axis - (x.ndim - k)  # feature axis inside normalized_shape, if there
            labels = [x.label if j == pos else None for j in range(k)]
            if mod.weight is not None:
                self.add(prefix + "weight", labels)
            if mod.bias is not None:
                self.add(prefix + "bias", labels)
            return x
        if isinstance(mod, _ELEMENTWISE_MODULES):
            return x
        if kind in _POOL_MODULES:
            if getattr(mod, "return_indices", False):
                raise self.fail("pooling with return_indices is not supported")
            return self.pool(x, _POOL_MODULES[kind], out_shape)
        if kind is nn.Flatten:
            return self.flatten(x, mod.start_dim, mod.end_dim, node)
        if kind in _GATES:
            return self.rnn(node, mod, x, prefix)
        raise self.fail(f"unsupported module type {kind.__name__}")

    def layer(self, mod: nn.Module, x: _Act) -> int:
        """The output label of a parametrized layer; a second call ties its input labels."""
        if id(mod) in self.seen:
            in_label, out = self.seen[id(mod)]
            self.union(in_label, x.label)
            return out
        out = self.new()
        self.seen[id(mod)] = (x.label, out)
        return out

    def norm_params(self, prefix: str, mod: nn.Module, label: int) -> None:
        for name in ("weight", "bias"):
            if getattr(mod, name, None) is not None:
                self.add(prefix + name, (label,))
        if self.buffers:
            for name in ("running_mean", "running_var"):
                if getattr(mod, name, None) is not None:
                    self.add(prefix + name, (label,))

    def pool(self, x: _Act, n: int, out_shape: tuple[int, ...]) -> _Act:
        self.need(x, x.ndim - n - 1)
        return _Act(x.axis, len(out_shape), x.label)

    def flatten(self, x: _Act, start: int, end: int, node: fx.Node) -> _Act:
        in_shape = self.shape(node.args[0])
        nd = len(in_shape)
        start, end = start % nd if nd else 0, end % nd if nd else 0
        if x.axis is None:
            raise self.fail("cannot tell the feature axis of a graph input that is flattened")
        out_nd = len(self.shape(node))
        if x.axis < start:
            return _Act(x.axis, out_nd, x.label)
        if x.axis > end:
            return _Act(x.axis - (end - start), out_nd, x.label)
        others = [in_shape[d] for d in range(start, end + 1) if d != x.axis]
        if any(s != 1 for s in others):
            raise self.fail(f"flattens the feature axis (dim {x.axis}) with axes of sizes "
                            f"{others}; pool them to size 1 first")
        return _Act(start, out_nd, x.label)

    def rnn(self, node: fx.Node, mod: nn.RNN, x: _Act, prefix: str) -> object:
        if mod.bidirectional:
            raise self.fail("a bidirectional RNN concatenates two hidden labels on one axis")
        if getattr(mod, "proj_size", 0):
            raise self.fail("RNN with proj_size is not supported")
        self.need(x, x.ndim - 1)
        if id(mod) in self.seen:
            in_label, hidden = self.seen[id(mod)]
            self.union(in_label, x.label)
        else:
            hidden = tuple(self.new() for _ in range(mod.num_layers))
            self.seen[id(mod)] = (x.label, hidden)
            prev = x.label
            gates = _GATES[type(mod)]
            for k, h in enumerate(hidden):
                rows = h if gates == 1 else ("gated", gates, h)
                self.add(f"{prefix}weight_ih_l{k}", (rows, prev))
                self.add(f"{prefix}weight_hh_l{k}", (rows, h))
                if mod.bias:
                    self.add(f"{prefix}bias_ih_l{k}", (rows,))
                    self.add(f"{prefix}bias_hh_l{k}", (rows,))
                prev = h
        metas = node.meta.get("tensor_meta")
        hn_meta = metas[1][0] if isinstance(mod, nn.LSTM) else metas[1]   # LSTM: (h_n, c_n)
        out_nd, hn_nd = len(metas[0].shape), len(hn_meta.shape)
        out = _Act(out_nd - 1, out_nd, hidden[-1])
        hn = (_Act(hn_nd - 1, hn_nd, hidden[0]) if mod.num_layers == 1 else
              _Poison("h_n of a multi-layer RNN stacks several hidden labels on one axis"))
        if isinstance(mod, nn.LSTM):
            return (out, (hn, hn))       # c_n carries the same labels as h_n
        return (out, hn)

    def attention(self, node: fx.Node, mod: nn.MultiheadAttention, args: list, kwargs: dict,
                  prefix: str) -> object:
        """``nn.MultiheadAttention``: the fused ``in_proj_weight (3E, E)`` rows are
        ``Split((None, head, dim), (3, H, E / H))`` (the q/k/v blocks, the heads, the
        dimensions within a head), its columns the input's label; ``out_proj.weight``'s
        columns are ``Split((head, dim), (H, E / H))`` and its rows a fresh label. Permuting
        the heads, or the dimensions within every head alike in q, k and v (with the same
        permutation of ``out_proj``'s columns), leaves the output unchanged: ``q . k`` keeps
        its value and the values reach ``out_proj`` in matching order. (Permuting the q/k
        dimensions and the v dimensions separately, or each head's own way, is a symmetry
        too; one label per sub-axis cannot express it, so the spec keeps this subgroup.)
        Query, key and value share the input label, since one weight's columns read all
        three. A 3-D ``attn_mask`` (one mask per head) pins the head sub-axis: permuting
        heads would pair a head's weights with another head's mask."""
        if not mod._qkv_same_embed_dim:
            raise self.fail("MultiheadAttention with kdim/vdim other than embed_dim (separate "
                            "q/k/v projections) is not supported")
        if mod.bias_k is not None:
            raise self.fail("MultiheadAttention with add_bias_kv is not supported")
        names = ("query", "key", "value")
        qkv = [*args[:3], *(kwargs[n] for n in names[len(args[:3]):] if n in kwargs)]
        if len(qkv) != 3:
            raise self.fail("called without query, key and value")
        acts = [self.act(a, n) for a, n in zip(qkv, names, strict=True)]
        for a in acts:
            self.need(a, a.ndim - 1)
        for a in acts[1:]:
            self.union(acts[0].label, a.label)
        if id(mod) in self.seen:
            in_label, (out, head, dim) = self.seen[id(mod)]
            self.union(in_label, acts[0].label)
        else:
            out, head, dim = self.new(), self.new(), self.new()
            self.seen[id(mod)] = (acts[0].label, (out, head, dim))
            h = mod.num_heads
            rows = ("split", (None, head, dim), (3, h, -1))
            self.add(prefix + "in_proj_weight", (rows, acts[0].label))
            if mod.in_proj_bias is not None:
                self.add(prefix + "in_proj_bias", (rows,))
            self.add(prefix + "out_proj.weight", (out, ("split", (head, dim), (h, -1))))
            if mod.out_proj.bias is not None:
                self.add(prefix + "out_proj.bias", (out,))
        mask = args[5] if len(args) > 5 else kwargs.get("attn_mask")
        if isinstance(mask, _Act) and mask.ndim == 3:
            self.pinned.append(head)
        metas = node.meta.get("tensor_meta")
        out_nd = len(metas[0].shape)
        return (_Act(out_nd - 1, out_nd, out),
                _Poison("the attention weights carry no feature label"))

    # functions and methods
    def call_function(self, node: fx.Node) -> object:
        args, kwargs = self._args(node)
        t = node.target
        method = node.op == "call_method"
        if not method and t is getattr and args[1] in _META_ATTRS:
            return None  # x.shape etc.: metadata, not an activation
        if method and t in ("size", "dim"):
            return None
        if t is operator.getitem and not method:
            if args[0] is None or not isinstance(args[0], _Act | _Poison | tuple):
                return None  # indexing metadata (x.shape[0])
            return self.getitem(node, args[0], args[1])
        if (method and t in _ELEMENTWISE_METHODS) or (not method and t in _ELEMENTWISE_FUNCS):
            x = self.act(args[0])
            for a in [*args[1:], *kwargs.values()]:
                if isinstance(a, _Act | _Poison):
                    raise self.fail("a second activation operand is not supported here")
            return x
        if (method and t in _BINARY_METHODS) or (not method and t in _BINARY_FUNCS):
            return self.binary(node, args, kwargs)
        if (method and t in _REDUCE_METHODS) or (not method and t in _REDUCE_FUNCS):
            return self.reduce(node, args, kwargs)
        if not method and t in _POOL_FUNCS:
            if kwargs.get("return_indices"):
                raise self.fail("pooling with return_indices is not supported")
            return self.pool(self.act(args[0]), _POOL_FUNCS[t], self.shape(node))
        if (method and t == "flatten") or (not method and t is torch.flatten):
            start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
            return self.flatten(self.act(args[0]), start, end, node)
        raise self.fail("unsupported operation (it may mix or reorder the feature axis)")

    def binary(self, node: fx.Node, args: list, kwargs: dict) -> object:
        operands = [a for a in [*args, *kwargs.values()] if isinstance(a, _Act | _Poison)]
        if not operands:
            raise self.fail("no activation operand")
        acts = [self.act(a) for a in operands]
        for a in [*args, *kwargs.values()]:
            if isinstance(a, Tensor):
                raise self.fail("a constant tensor operand is not supported")
        out_shape = self.shape(node)
        if len(acts) == 1:  # an activation and python scalars: shape and label unchanged
            return acts[0]
        nd = len(out_shape)
        known = [a for a in acts if a.axis is not None]
        if not known:
            raise self.fail("cannot tell the feature axis of graph inputs combined directly")
        from_end = known[0].ndim - known[0].axis
        for a in acts:
            if a.axis is None:
                a.axis = a.ndim - from_end
            if a.ndim - a.axis != from_end:
                raise self.fail("operands have their feature axes at different positions")
            if self.shape_of(node, a) is not None and \
                    self.shape_of(node, a)[a.axis] != out_shape[nd - from_end]:
                raise self.fail("broadcasts an operand along the feature axis")
            self.union(acts[0].label, a.label)
        return _Act(nd - from_end, nd, acts[0].label)

    def shape_of(self, node: fx.Node, a: _Act) -> tuple[int, ...] | None:
        for arg in [*node.args, *node.kwargs.values()]:
            if isinstance(arg, fx.Node) and self.env.get(arg) is a:
                return self.shape(arg)
        return None

    def reduce(self, node: fx.Node, args: list, kwargs: dict) -> _Act:
        x = self.act(args[0])
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
        if dim is None or x.axis is None:
            raise self.fail("reduces over the feature axis (or over all axes)")
        dims = {d % x.ndim for d in (dim if isinstance(dim, Sequence) else [dim])}
        if x.axis in dims:
            raise self.fail(f"reduces over the feature axis (dim {x.axis})")
        axis = x.axis if keepdim else x.axis - sum(d < x.axis for d in dims)
        return _Act(axis, len(self.shape(node)), x.label)

    def getitem(self, node: fx.Node, value: object, index: object) -> object:
        if isinstance(value, tuple):
            if not isinstance(index, int):
                raise self.fail(f"indexes a tuple with {index!r}")
            return value[index]
        x = self.act(value)
        if x.axis is None:
            raise self.fail("cannot tell the feature axis of an indexed graph input")
        idx = index if isinstance(index, tuple) else (index,)
        n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
        expanded: list = []
        for i in idx:
            if i is Ellipsis:
                expanded += [slice(None)] * (x.ndim - n_real)
            else:
                expanded.append(i)
        expanded += [slice(None)] * (x.ndim - sum(1 for i in expanded if i is not None))
        in_dim, out_dim, axis = 0, 0, None
        for i in expanded:
            if i is None:
                out_dim += 1
                continue
            if in_dim == x.axis:
                if not (isinstance(i, slice) and i == slice(None)):
                    raise self.fail(f"indexes the feature axis (dim {x.axis}) with {i!r}")
                axis = out_dim
            if isinstance(i, slice):
                out_dim += 1
            elif not isinstance(i, int):
                raise self.fail(f"advanced indexing with {type(i).__name__} is not supported")
            in_dim += 1
        return _Act(axis, len(self.shape(node)), x.label)


def _flatten(value: object) -> list:
    if isinstance(value, tuple | list):
        return [v for item in value for v in _flatten(item)]
    if isinstance(value, dict):
        return [v for item in value.values() for v in _flatten(item)]
    return [value]


# --- tracing ----------------------------------------------------------------------------------

def _trace(module: nn.Module) -> fx.GraphModule:
    paths = {id(m): name for name, m in module.named_modules()}
    try:
        return fx.symbolic_trace(module)
    except Exception as exc:  # noqa: BLE001 - fx raises many types; report one line
        where = f"<root> ({type(module).__name__})"
        tb = exc.__traceback__
        while tb is not None:  # the innermost module frame of the failure
            owner = tb.tb_frame.f_locals.get("self")
            if isinstance(owner, nn.Module) and id(owner) in paths:
                where = f"{paths[id(owner)] or '<root>'} ({type(owner).__name__})"
            tb = tb.tb_next
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PermSpecTraceError(f"perm_spec: {where}: cannot trace with torch.fx: "
                                 f"{msg}") from exc


def _example_inputs(gm: fx.GraphModule, dtype: torch.dtype) -> tuple[Tensor, ...]:
    inputs = []
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        shape = None
        queue, seen = list(node.users), set()
        while queue:  # the nearest module downstream of the input decides its shape
            user = queue.pop(0)
            if user in seen:
                continue
            seen.add(user)
            if user.op != "call_module":
                queue.extend(user.users)
                continue
            mod = gm.get_submodule(user.target)
            if isinstance(mod, nn.Linear):
                shape = (2, mod.in_features)
            elif type(mod) in _CONV:
                n = _CONV[type(mod)]
                shape = (2, mod.in_channels, *[32 if n < 3 else 8] * n)
            elif isinstance(mod, nn.RNNBase):
                shape = (2, 3, mod.input_size) if mod.batch_first else (3, 2, mod.input_size)
            elif isinstance(mod, nn.MultiheadAttention):
                shape = (2, 3, mod.embed_dim) if mod.batch_first else (3, 2, mod.embed_dim)
            elif isinstance(mod, nn.BatchNorm1d):
                shape = (2, mod.num_features)
            elif isinstance(mod, nn.BatchNorm2d):
                shape = (2, mod.num_features, 8, 8)
            elif isinstance(mod, nn.LayerNorm):
                shape = (2, *mod.normalized_shape)
            if shape is not None:
                break
        if shape is None:
            raise PermSpecTraceError(
                f"perm_spec: <root> (placeholder {node.target}): cannot guess an example input; "
                "pass example_inputs"
            )
        inputs.append(torch.randn(shape, dtype=dtype))
    return tuple(inputs)


def perm_spec(module: nn.Module, symmetry: str = "hnp",
              example_inputs: Sequence[Tensor] | None = None,
              buffers: bool = False) -> PermSpec:
    """Derive the :class:`PermSpec` of ``module``'s neuron-permutation symmetry by tracing it.

    Args:
        module: the network. Traced with :func:`torch.fx.symbolic_trace`; torch.nn modules
            are leaves, custom modules are traced through.
        symmetry: ``"hnp"`` (input and output neurons not permuted: their labels become
            ``None``) or ``"np"`` (they keep labels).
        example_inputs: inputs for one shape-propagation run (eval mode, no grad; training
            flags are restored). Guessed from the first layer when omitted (batch 2, 32 pixels
            per spatial axis, 3 time steps).
        buffers: also label floating-point buffers that follow a neuron axis (BatchNorm
            running mean/var), so that permuting them preserves the eval-mode function.

    Returns:
        A spec keyed by state-dict key (torch layout), labels ``0, 1, ...`` in order of
        creation (see the module docstring for the propagation rules).

    Raises:
        PermSpecTraceError: anything that cannot be derived; the one-line message names the
            module path and operation.
    """
    if symmetry not in ("np", "hnp"):
        raise PermSpecTraceError(f"perm_spec: unknown symmetry {symmetry!r}; expected 'np' or "
                                 "'hnp'")
    root = module
    wrapped = type(module).__module__.startswith("torch.nn.modules") and not isinstance(
        module, nn.Sequential | nn.ModuleList | nn.ModuleDict)
    if wrapped and isinstance(module, nn.MultiheadAttention):
        raise PermSpecTraceError(
            "perm_spec: <root> (MultiheadAttention): a bare attention layer takes query, key "
            "and value, and which of them share a stream decides its symmetry; pass a module "
            "whose forward calls it, e.g. self-attention attn(x, x, x)")
    if wrapped:  # a bare torch.nn layer: trace it as a leaf inside a container
        root = nn.Sequential(module)
    gm = _trace(root)
    first = next(iter(module.parameters()), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    if example_inputs is None:
        example_inputs = _example_inputs(gm, dtype)
    flags = {m: m.training for m in root.modules()}
    try:
        root.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
    except Exception as exc:  # noqa: BLE001
        cause = exc
        while cause.__cause__ is not None:  # ShapeProp wraps the real error
            cause = cause.__cause__
        msg = str(cause).strip().splitlines()[0] if str(cause).strip() else \
            type(cause).__name__
        raise PermSpecTraceError(f"perm_spec: <root> ({type(module).__name__}): the example "
                                 f"input does not run: {msg}") from exc
    finally:
        for m, flag in flags.items():
            m.train(flag)
    d = _Derivation(gm, buffers)
    d.run()

    raw = {(k[2:] if wrapped else k): v for k, v in d.spec.items()}
    params = [k for k, _ in module.named_parameters()]
    missing = [k for k in params if k not in raw]
    if missing:
        raise PermSpecTraceError(f"perm_spec: parameters {missing} are not used by any "
                                 "supported module")
    fixed = {d.find(a) for a in (*d.inputs, *d.outputs)} if symmetry == "hnp" else set()
    fixed |= {d.find(a) for a in d.pinned}
    roots = sorted({d.find(a) for a in range(len(d.parent))})
    rank = {r: i for i, r in enumerate(roots)}

    def canon(label) -> Label:
        if label is None:
            return None
        if isinstance(label, tuple) and label[0] == "split":  # ("split", labels, sizes)
            inner = tuple(canon(a) for a in label[1])
            return None if all(a is None for a in inner) else Split(inner, label[2])
        if isinstance(label, tuple):                  # ("gated", gates, hidden label)
            inner = canon(label[2])
            return None if inner is None else Gated(label[1], inner)
        r = d.find(label)
        return None if r in fixed else rank[r]

    keys = params + ([k for k, b in module.named_buffers() if k in raw and
                      b.is_floating_point()] if buffers else [])
    return PermSpec({k: tuple(canon(a) for a in raw[k]) for k in keys})


# --- parameter helpers ------------------------------------------------------------------------

def module_params(module: nn.Module, buffers: bool = False) -> dict[str, Tensor]:
    """``{state-dict key: (1, 1, *shape)}`` copies of the parameters (and floating-point
    buffers with ``buffers=True``), the layout :func:`~gensight.nf.unf.permute` acts on."""
    out = {k: p.detach().clone()[None, None] for k, p in module.named_parameters()}
    if buffers:
        out.update({k: b.detach().clone()[None, None] for k, b in module.named_buffers()
                    if b.is_floating_point()})
    return out


def apply_params(module: nn.Module, params: Mapping[str, Tensor]) -> nn.Module:
    """Copy ``{key: (1, 1, *shape)}`` (or ``(*shape)``) tensors into a copy of ``module``
    (the original is left unchanged) and return the copy."""
    out = copy.deepcopy(module)
    state = dict(out.named_parameters())
    state.update(dict(out.named_buffers()))
    unknown = [k for k in params if k not in state]
    if unknown:
        raise KeyMismatchError(f"apply_params: keys {unknown} are not in the module")
    with torch.no_grad():
        for key, value in params.items():
            target = state[key]
            if value.shape == (1, 1, *target.shape):
                value = value[0, 0]
            if value.shape != target.shape:
                raise ShapeMismatchError(f"apply_params: {key!r} has shape "
                                         f"{tuple(value.shape)}; expected (1, 1, "
                                         f"*{tuple(target.shape)})")
            target.copy_(value)
    return out
