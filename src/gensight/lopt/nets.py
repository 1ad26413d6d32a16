"""The learned part ``f`` of a learned optimizer: weight-space features -> update direction.

Every ``f`` maps per-entry features ``{key: (P, C, *shape)}`` (``P`` optimizees, ``C``
feature channels, one tensor per parameter of the optimizee) to a direction
``{key: (P, *shape)}``. The variants differ in which permutations of the optimizee's entries
they commute with, as compared in the UNF paper (Zhou, Finn, Harrison, arXiv 2402.05232,
Sec. 4, "learned optimizers": per-parameter, Deep Sets, NFN, UNF):

* ``mlp`` -- per-parameter MLP (Metz et al. style, the paper's per-parameter baseline): the
  same MLP ``C -> h -> h -> 1`` on every entry, no interaction between entries.
* ``deepsets`` -- Deep Sets (Zaheer et al. 2017) per tensor: each layer is
  ``relu(A x_e + B mean_{e' in tensor} x_e')``; equivariant to *any* permutation of a tensor's
  entries (ignores the row/column structure). This is our reading of the paper's Deep Sets
  baseline (a documented choice).
* ``nfn`` -- NF-Layers (arXiv 2302.14040, Sec. 2): ``NPLinear``/``HNPLinear`` stack on the
  optimizee's :class:`~gensight.weightspace.WeightSpace` (MLPs and CNNs only).
* ``unf`` -- UNF layers (arXiv 2402.05232, Algorithm 1): ``UNFLinear`` stack on the
  :class:`~gensight.nf.PermSpec` that :func:`gensight.nf.perm_spec` derives from the
  optimizee module (MLP, CNN, RNN). On MLPs it spans the same function class as ``nfn``
  (the paper: "UNF and NFN optimizers are equivalent in the MLP task").
* ``none`` -- ``f = 0``: the optimizer reduces to SGD with momentum (with meta-learned step).

All stacks are ``in -> hidden -> hidden -> 1`` with ReLU between layers (``layers`` linear
layers in all). ``backbone="deepsets"`` builds ``nfn``/``unf`` as the UNF paper does (App.
C.2: ``DS[32] -> ReLU -> DS[32] -> ReLU -> DS[32] -> ReLU -> UNF[1]``, likewise ``NFN[1]``):
``layers - 1`` Deep Sets layers, then one NF-Layer / UNF layer to one channel, so the
equivariant layer only mixes entries at the end (:class:`DeepSetsThen`).

Default symmetry is ``"np"`` (all neurons permutable, including input and
output neurons): the layer's parameters then do not depend on the widths, so an optimizer
meta-trained on one MLP applies to another width or input size.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from gensight.lopt.errors import LoptError

KINDS = ("none", "mlp", "deepsets", "nfn", "unf")


class ZeroF(nn.Module):
    """``f = 0`` (no parameters)."""

    def forward(self, feats: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: torch.zeros_like(v[:, 0]) for k, v in feats.items()}


def _concat(feats: Mapping[str, Tensor]) -> tuple[Tensor, list[tuple[str, tuple[int, ...]]]]:
    p, c = next(iter(feats.values())).shape[:2]
    meta = [(k, tuple(v.shape[2:])) for k, v in feats.items()]
    return torch.cat([v.reshape(p, c, -1) for v in feats.values()], 2), meta


def _split(y: Tensor, meta: list[tuple[str, tuple[int, ...]]]) -> dict[str, Tensor]:
    out, start = {}, 0
    p = y.shape[0]
    for k, shape in meta:
        n = 1
        for s in shape:
            n *= s
        out[k] = y[:, start:start + n].reshape(p, *shape)
        start += n
    return out


class PerParamMLP(nn.Module):
    """Per-entry MLP ``(P, C, N) -> (P, N)`` applied to every entry of every tensor."""

    def __init__(self, in_channels: int, hidden: int = 32, layers: int = 3):
        super().__init__()
        dims = [in_channels] + [hidden] * (layers - 1) + [1]
        self.lins = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:], strict=False))

    def forward(self, feats: Mapping[str, Tensor]) -> dict[str, Tensor]:
        x, meta = _concat(feats)
        h = x.transpose(1, 2)  # (P, N, C)
        for i, lin in enumerate(self.lins):
            h = lin(h)
            if i < len(self.lins) - 1:
                h = torch.relu(h)
        return _split(h[..., 0], meta)


class DeepSetsF(nn.Module):
    """Deep Sets per tensor: layer ``h_e <- A h_e + B mean_{tensor}(h) + b`` (shared over
    tensors), ReLU between layers; ``(P, C, *shape) -> (P, *shape)``. ``out=None`` (the
    trunk of :class:`DeepSetsThen`): the last layer has ``hidden`` outputs, is followed by a
    ReLU too, and the channels are kept, ``(P, C, *shape) -> (P, hidden, *shape)``."""

    def __init__(self, in_channels: int, hidden: int = 32, layers: int = 3,
                 out: int | None = 1):
        super().__init__()
        if out not in (1, None):
            raise LoptError(f"DeepSetsF out must be 1 or None (the trunk); got {out!r}")
        dims = [in_channels] + [hidden] * (layers - 1) + ([hidden] if out is None else [1])
        self.out = out
        self.point = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:], strict=False))
        self.pool = nn.ModuleList(nn.Linear(a, b, bias=False)
                                  for a, b in zip(dims, dims[1:], strict=False))

    def forward(self, feats: Mapping[str, Tensor]) -> dict[str, Tensor]:
        hs = {k: v.flatten(2).transpose(1, 2) for k, v in feats.items()}  # (P, N_k, C)
        for i, (pt, pl) in enumerate(zip(self.point, self.pool, strict=True)):
            hs = {k: pt(h) + pl(h.mean(1, keepdim=True)) for k, h in hs.items()}
            if i < len(self.point) - 1 or self.out is None:
                hs = {k: torch.relu(h) for k, h in hs.items()}
        if self.out is None:
            return {k: h.transpose(1, 2).reshape(feats[k].shape[0], -1, *feats[k].shape[2:])
                    for k, h in hs.items()}
        return {k: h[..., 0].reshape(feats[k].shape[0], *feats[k].shape[2:])
                for k, h in hs.items()}


class DeepSetsThen(nn.Module):
    """The UNF paper's NFN/UNF optimizer ``f`` (arXiv 2402.05232, App. C.2): a Deep Sets
    trunk of ``layers - 1`` layers to ``hidden`` channels (ReLU after each), then one
    equivariant layer (NF-Layer or UNF) to one channel; ``(P, C, *shape) -> (P, *shape)``."""

    def __init__(self, trunk: DeepSetsF, head: nn.Module):
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, feats: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.head(self.trunk(feats))


class NFNF(nn.Module):
    """NF-Layer stack (``NPLinear`` or ``HNPLinear``, arXiv 2302.14040) on a WeightSpace."""

    def __init__(self, template: nn.Module, in_channels: int, hidden: int = 32,
                 layers: int = 3, symmetry: str = "np"):
        super().__init__()
        from gensight.errors import UnsupportedModuleError
        from gensight.nf import HNPLinear, NPLinear
        from gensight.weightspace import WeightSpace

        try:
            self.space = WeightSpace.from_module(template)
        except UnsupportedModuleError as exc:
            raise LoptError(f"f='nfn' needs an MLP/CNN optimizee ({exc}); use f='unf' for "
                            "recurrent networks") from None
        cls = {"np": NPLinear, "hnp": HNPLinear}[symmetry]
        dims = [in_channels] + [hidden] * (layers - 1) + [1]
        self.lins = nn.ModuleList(cls(self.space, a, b)
                                  for a, b in zip(dims, dims[1:], strict=False))

    def forward(self, feats: Mapping[str, Tensor]) -> dict[str, Tensor]:
        from gensight.nf.unf import dict_to_weight_batch, weight_batch_to_dict

        wb = dict_to_weight_batch(self.space, feats)
        for i, lin in enumerate(self.lins):
            wb = lin(wb)
            if i < len(self.lins) - 1:
                wb = wb.map(torch.relu)
        return {k: v[:, 0] for k, v in weight_batch_to_dict(wb).items()}


class UNFF(nn.Module):
    """UNF stack (``UNFLinear``, arXiv 2402.05232 Algorithm 1) on ``perm_spec(template)``."""

    def __init__(self, template: nn.Module, in_channels: int, hidden: int = 32,
                 layers: int = 3, symmetry: str = "np"):
        super().__init__()
        from gensight.nf import UNFLinear, perm_spec

        self.spec = perm_spec(template, symmetry)
        shapes = {k: tuple(v.shape) for k, v in template.state_dict().items()}
        dims = [in_channels] + [hidden] * (layers - 1) + [1]
        self.lins = nn.ModuleList(UNFLinear(self.spec, shapes, a, b)
                                  for a, b in zip(dims, dims[1:], strict=False))

    def forward(self, feats: Mapping[str, Tensor]) -> dict[str, Tensor]:
        h = dict(feats)
        for i, lin in enumerate(self.lins):
            h = lin(h)
            if i < len(self.lins) - 1:
                h = {k: torch.relu(v) for k, v in h.items()}
        return {k: v[:, 0] for k, v in h.items()}


BACKBONES = ("own", "deepsets")


def make_f(kind: str, template: nn.Module, in_channels: int, hidden: int = 32,
           layers: int = 3, symmetry: str = "np", backbone: str = "own") -> nn.Module:
    """Build ``f`` of kind ``kind`` (:data:`KINDS`) for optimizees shaped like ``template``.
    ``backbone="deepsets"`` (``nfn``/``unf`` only, ``layers >= 2``): the paper's Deep Sets
    trunk with one equivariant layer at the end (:class:`DeepSetsThen`)."""
    if kind not in KINDS:
        raise LoptError(f"unknown learned-optimizer f {kind!r}; choose from {', '.join(KINDS)}")
    if backbone not in BACKBONES:
        raise LoptError(f"backbone must be one of {', '.join(BACKBONES)}; got {backbone!r}")
    if backbone == "deepsets" and (kind not in ("nfn", "unf") or layers < 2):
        raise LoptError(f"backbone='deepsets' is for f='nfn' or 'unf' with layers >= 2; got "
                        f"f={kind!r}, layers={layers}")
    if symmetry not in ("np", "hnp"):
        raise LoptError(f"symmetry must be 'np' or 'hnp'; got {symmetry!r}")
    if hidden < 1 or layers < 1:
        raise LoptError(f"hidden and layers must be positive; got hidden={hidden}, "
                        f"layers={layers}")
    if kind == "none":
        return ZeroF()
    if kind == "mlp":
        return PerParamMLP(in_channels, hidden, layers)
    if kind == "deepsets":
        return DeepSetsF(in_channels, hidden, layers)
    if backbone == "deepsets":
        head_cls = NFNF if kind == "nfn" else UNFF
        return DeepSetsThen(DeepSetsF(in_channels, hidden, layers - 1, out=None),
                            head_cls(template, hidden, hidden, 1, symmetry))
    if kind == "nfn":
        return NFNF(template, in_channels, hidden, layers, symmetry)
    return UNFF(template, in_channels, hidden, layers, symmetry)
