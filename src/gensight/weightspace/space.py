"""`WeightSpace`: the shapes and permutation symmetries of a feedforward network's parameters.

A feedforward network with L parametrized layers has neuron layers 0..L: layer 0 holds the
input neurons (input features or input channels), layer L the output neurons, and layers
1..L-1 the hidden neurons. Parametrized layer i (1-based, as in arXiv 2302.14040) has a weight
``W(i)`` of shape ``(n_i, n_{i-1}, *filter)`` and a bias ``v(i)`` of shape ``(n_i,)``.

Permuting the neurons of a layer l with a permutation P acts on the weights as
``W(l) -> P W(l)`` (rows), ``W(l+1) -> W(l+1) P^T`` (columns) and ``v(l) -> P v(l)``. For a
hidden layer this leaves the network's function unchanged (the hidden-neuron permutation
group, HNP); the neuron permutation group (NP) also permutes the input and output neurons.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from gensight.errors import GensightError, ShapeMismatchError, UnsupportedModuleError

Symmetry = Literal["hnp", "np"]
LayerKind = Literal["linear", "conv1d", "conv2d"]



class Sine(nn.Module):
    """``sin(omega_0 * x)``: the activation of SIRENs (Sitzmann et al. 2020, arXiv
    2006.09661), applied after each hidden ``nn.Linear``. Sine is odd, so besides neuron
    permutations a SIREN's function is preserved by flipping the sign of a hidden neuron's
    incoming weights and bias together with its outgoing weights; the NF-Layers are
    equivariant to the permutations only."""

    def __init__(self, omega_0: float = 30.0):
        super().__init__()
        self.omega_0 = float(omega_0)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.omega_0 * x)

    def extra_repr(self) -> str:
        return f"omega_0={self.omega_0}"


_PARAMETRIZED = {nn.Linear: "linear", nn.Conv1d: "conv1d", nn.Conv2d: "conv2d"}
_ACTIVATIONS = (
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus,
    nn.Hardtanh, nn.ReLU6, nn.Mish, nn.Identity, Sine,
)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
_LOCAL_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
_GLOBAL_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d,
                 nn.AdaptiveMaxPool2d)

SUPPORTED_MODULES = (
    "Linear, Conv1d, Conv2d (groups=1, with or without bias); activations "
    "(ReLU, LeakyReLU, ELU, GELU, SiLU, Tanh, Sigmoid, Softplus, Hardtanh, ReLU6, Mish, "
    "Identity, gensight's Sine); Dropout; MaxPool/AvgPool; global pooling "
    "(AdaptiveAvgPool/AdaptiveMaxPool with output size 1) followed by Flatten before the "
    "dense head; nested nn.Sequential"
)


@dataclass(frozen=True)
class LayerSpec:
    """One parametrized layer: weight ``(n_out, n_in, *filter_shape)``, bias ``(n_out,)``.

    ``bias_key`` is ``None`` for a layer built with ``bias=False``; its bias is carried as
    zeros in a :class:`~gensight.weightspace.WeightBatch` (zeros are permutation invariant,
    so the network's function and symmetries are unchanged) and left out of state dicts.
    """

    weight_key: str
    bias_key: str | None
    kind: LayerKind
    n_out: int
    n_in: int
    filter_shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.n_out < 1 or self.n_in < 1 or any(k < 1 for k in self.filter_shape):
            raise ShapeMismatchError(
                f"layer {self.weight_key!r}: weight shape {self.weight_shape} must be positive"
            )

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.n_out, self.n_in, *self.filter_shape)

    @property
    def bias_shape(self) -> tuple[int, ...]:
        return (self.n_out,)

    @property
    def filter_size(self) -> int:
        return math.prod(self.filter_shape)

    @property
    def has_bias(self) -> bool:
        return self.bias_key is not None


@dataclass(frozen=True)
class WeightSpace:
    """Immutable description of the parameters of a feedforward MLP or CNN.

    Build it from a model with :meth:`from_module`. ``layers[i-1]`` describes the paper's
    layer i. Two spaces are equal when their layers (keys, kinds, shapes) are equal.

    Example:
        >>> from torch import nn
        >>> space = WeightSpace.from_module(nn.Sequential(nn.Linear(4, 8), nn.ReLU(),
        ...                                               nn.Linear(8, 3)))
        >>> space.neurons
        (4, 8, 3)
        >>> space.permuted_layers("hnp")
        (1,)
    """

    layers: tuple[LayerSpec, ...]

    def __post_init__(self) -> None:
        if not self.layers:
            raise GensightError("a WeightSpace needs at least one parametrized layer")
        for prev, cur in zip(self.layers, self.layers[1:], strict=False):
            if cur.n_in != prev.n_out:
                raise ShapeMismatchError(
                    f"layer {cur.weight_key!r} takes {cur.n_in} inputs but the previous layer "
                    f"{prev.weight_key!r} has {prev.n_out} outputs"
                )

    # --- structure -------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        """Number of parametrized layers L."""
        return len(self.layers)

    @property
    def neurons(self) -> tuple[int, ...]:
        """Neuron counts ``(n_0, n_1, ..., n_L)``."""
        return (self.layers[0].n_in, *(layer.n_out for layer in self.layers))

    @property
    def num_params(self) -> int:
        """Number of parameters of the network (layers without bias count no bias)."""
        return sum(
            math.prod(layer.weight_shape) + (layer.n_out if layer.has_bias else 0)
            for layer in self.layers
        )

    def permuted_layers(self, symmetry: Symmetry) -> tuple[int, ...]:
        """Indices of the neuron layers that ``symmetry`` permutes.

        ``"hnp"``: the hidden layers 1..L-1. ``"np"``: all layers 0..L.
        """
        if symmetry == "hnp":
            return tuple(range(1, self.n_layers))
        if symmetry == "np":
            return tuple(range(0, self.n_layers + 1))
        raise GensightError(f"unknown symmetry {symmetry!r}; expected 'hnp' or 'np'")

    def state_dict_keys(self) -> tuple[str, ...]:
        keys: list[str] = []
        for layer in self.layers:
            keys.append(layer.weight_key)
            if layer.bias_key is not None:
                keys.append(layer.bias_key)
        return tuple(keys)

    def __repr__(self) -> str:
        shapes = ", ".join(
            f"{layer.kind}{tuple(layer.weight_shape)}{'' if layer.has_bias else ' no-bias'}"
            for layer in self.layers
        )
        return f"WeightSpace(neurons={self.neurons}, layers=[{shapes}])"

    # --- serialization ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        """A JSON-serializable description (used in zoo manifests)."""
        return {
            "layers": [
                {
                    "weight_key": layer.weight_key,
                    "bias_key": layer.bias_key,
                    "kind": layer.kind,
                    "n_out": layer.n_out,
                    "n_in": layer.n_in,
                    "filter_shape": list(layer.filter_shape),
                }
                for layer in self.layers
            ]
        }

    @classmethod
    def from_dict(cls, data: dict) -> WeightSpace:
        try:
            layers = tuple(
                LayerSpec(
                    weight_key=str(d["weight_key"]),
                    bias_key=None if d["bias_key"] is None else str(d["bias_key"]),
                    kind=d["kind"],
                    n_out=int(d["n_out"]),
                    n_in=int(d["n_in"]),
                    filter_shape=tuple(int(k) for k in d["filter_shape"]),
                )
                for d in data["layers"]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GensightError(f"not a WeightSpace description: missing or bad field {exc}")\
                from exc
        for layer in layers:
            if layer.kind not in ("linear", "conv1d", "conv2d"):
                raise GensightError(f"layer {layer.weight_key!r}: unknown kind {layer.kind!r}")
        return cls(layers)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WeightSpace:
        return cls.from_dict(json.loads(text))

    # --- construction from modules ---------------------------------------------------------
    @classmethod
    def from_module(cls, model: nn.Module) -> WeightSpace:
        """Describe the parameters of an ``nn.Sequential``-style MLP or CNN.

        Modules are read in the order of the (possibly nested) ``nn.Sequential``. A conv stack
        must reach the dense head through global pooling (e.g. ``nn.AdaptiveAvgPool2d(1)``)
        and ``nn.Flatten``, so that each dense input neuron is one conv channel.

        Raises:
            UnsupportedModuleError: a module without a weight-space description, naming the
                module's path and type and listing what is supported.
            ShapeMismatchError: consecutive layers whose sizes do not chain.
        """
        layers: list[LayerSpec] = []
        spatial = False  # are activations currently feature maps (conv output)?
        pooled = False  # were feature maps globally pooled to size 1?
        for name, module in _leaf_modules(model, ""):
            kind = _PARAMETRIZED.get(type(module))
            if kind is not None:
                if kind == "linear":
                    if spatial and not pooled:
                        raise UnsupportedModuleError(
                            f"module {name!r} (Linear) follows conv feature maps that were not "
                            "globally pooled; put nn.AdaptiveAvgPool2d(1) (or 1d) and "
                            "nn.Flatten() before the dense head"
                        )
                    n_out, n_in = module.out_features, module.in_features
                    filt: tuple[int, ...] = ()
                    spatial = False
                else:
                    if module.groups != 1:
                        raise UnsupportedModuleError(
                            f"module {name!r} ({type(module).__name__}) has groups="
                            f"{module.groups}; only groups=1 is supported"
                        )
                    if layers and not spatial:
                        raise UnsupportedModuleError(
                            f"module {name!r} ({type(module).__name__}) follows a dense layer; "
                            "only conv layers followed by a dense head are supported"
                        )
                    n_out, n_in = module.out_channels, module.in_channels
                    filt = tuple(int(k) for k in module.kernel_size)
                    spatial, pooled = True, False
                prefix = f"{name}." if name else ""
                layers.append(
                    LayerSpec(
                        weight_key=f"{prefix}weight",
                        bias_key=f"{prefix}bias" if module.bias is not None else None,
                        kind=kind,
                        n_out=n_out,
                        n_in=n_in,
                        filter_shape=filt,
                    )
                )
                continue
            if any(True for _ in module.parameters(recurse=False)) or any(
                True for _ in module.buffers(recurse=False)
            ):
                raise UnsupportedModuleError(
                    f"module {name!r} ({type(module).__name__}) has parameters or buffers that "
                    f"gensight cannot place in a weight space. Supported: {SUPPORTED_MODULES}"
                )
            if isinstance(module, _GLOBAL_POOLS):
                size = module.output_size
                sizes = size if isinstance(size, tuple) else (size,)
                if any(s != 1 for s in sizes):
                    raise UnsupportedModuleError(
                        f"module {name!r} ({type(module).__name__}) has output_size={size}; "
                        "only global pooling (output size 1) is supported"
                    )
                pooled = True
            elif isinstance(module, nn.Flatten):
                if spatial and not pooled:
                    raise UnsupportedModuleError(
                        f"module {name!r} (Flatten) flattens conv feature maps that were not "
                        "globally pooled; put nn.AdaptiveAvgPool2d(1) (or 1d) before it"
                    )
            elif not isinstance(module, _ACTIVATIONS + _DROPOUTS + _LOCAL_POOLS):
                raise UnsupportedModuleError(
                    f"module {name!r} ({type(module).__name__}) is not supported. "
                    f"Supported: {SUPPORTED_MODULES}"
                )
        if not layers:
            raise UnsupportedModuleError(
                f"{type(model).__name__} has no Linear or Conv layer. Supported: "
                f"{SUPPORTED_MODULES}"
            )
        return cls(tuple(layers))


def _leaf_modules(module: nn.Module, name: str) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(path, module)`` for the leaves of nested ``nn.Sequential`` containers.

    A non-Sequential module with children is only accepted when it wraps exactly one child
    (a common ``self.net = nn.Sequential(...)`` pattern); otherwise its forward order is
    unknown and it is rejected.
    """
    children = list(module.named_children())
    if isinstance(module, nn.Sequential):
        for child_name, child in children:
            yield from _leaf_modules(child, f"{name}.{child_name}" if name else child_name)
        return
    if not children:
        yield name, module
        return
    if len(children) == 1 and not any(True for _ in module.parameters(recurse=False)):
        child_name, child = children[0]
        yield from _leaf_modules(child, f"{name}.{child_name}" if name else child_name)
        return
    raise UnsupportedModuleError(
        f"module {name or '<root>'!r} ({type(module).__name__}) has {len(children)} child "
        "modules and a custom forward, so their order is unknown; express the network as an "
        f"nn.Sequential. Supported: {SUPPORTED_MODULES}"
    )
