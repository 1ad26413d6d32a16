"""Building blocks of the NFN paper's INR models (arXiv 2302.14040), on `WeightBatch`.

The paper's INR classifiers and editing models (its experiments on SIRENs of MNIST,
FashionMNIST and CIFAR-10 images) put three modules around the NF-Layers, and its editing
models one after them:

- :class:`GaussianFourierFeatures`: random Fourier features of every weight and bias entry,
  so that the first NF-Layer sees ``sin``/``cos`` of each scalar rather than the scalar;
- :class:`IOSinusoidalEncoding`: for NP models, a fixed sinusoidal encoding of the input and
  output neurons' indices (which an NP layer could not otherwise tell apart);
- :class:`ChannelDropout`: dropout of whole feature channels of one network;
- :class:`LearnedScale`: one learned scalar per weight and per bias tensor (the editing
  models' output ``delta`` is scaled by it).

:func:`make_inr_classifier` composes them with NF-Layers, :class:`~gensight.nf.HNPPool` and
an MLP head into the paper's invariant INR classifier. The semantics follow the authors'
public code (github:AllanYangZhou/nfn, ``nfn/layers/encoding.py``, ``misc_layers.py``,
``regularize.py``); differences are stated in each docstring.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gensight.errors import GensightError, IncompatibleSpaceError, ShapeMismatchError
from gensight.nf.layers import HNPLinear, NPLinear
from gensight.nf.pointwise import Elementwise
from gensight.nf.pooling import HNPPool
from gensight.weightspace import Symmetry, WeightBatch, WeightSpace


def _rebuild(batch: WeightBatch, tensors: Sequence[Tensor]) -> WeightBatch:
    """A batch of ``batch.space`` from tensors ordered like ``batch.tensors()``."""
    n = batch.space.n_layers
    return WeightBatch(batch.space, tensors[:n], tensors[n:], check_finite=False)


def _check_space(module: nn.Module, space: WeightSpace, batch: WeightBatch) -> None:
    if batch.space != space:
        raise IncompatibleSpaceError(
            f"{type(module).__name__} built for {space!r} got a batch of {batch.space!r}"
        )


class GaussianFourierFeatures(nn.Module):
    """Random Fourier features of every weight and bias entry (Tancik et al., 2020).

    Each entry of each tensor is mapped independently: its ``C = in_channels`` channel
    values ``x`` (a row vector) become ``[sin(2 pi x B), cos(2 pi x B)]`` with a fixed
    random matrix ``B ~ N(0, scale^2)`` of shape ``(in_channels, mapping_size)``: sines in
    channels ``0..m-1``, cosines in ``m..2m-1``. ``B`` is a buffer (saved in the state dict,
    moved by ``.to``), drawn at construction from ``generator``, or from
    ``torch.Generator().manual_seed(seed)``, or else from the global RNG.

    The map acts on the channel axis only, so it commutes with every neuron permutation
    (NP and HNP equivariant) and works for any filter shape. The NFN INR classifier uses
    ``in_channels=1, mapping_size=128, scale=10`` (MNIST configs: ``scale=3``), as in the
    authors' ``GaussianFourierFeatureTransform``.

    Shapes: ``WeightBatch`` with ``in_channels`` channels (weights ``(B, C, n_out, n_in,
    *filter)``, biases ``(B, C, n_out)``) -> the same with ``2 * mapping_size`` channels.
    """

    def __init__(self, in_channels: int = 1, mapping_size: int = 128, scale: float = 10.0,
                 *, generator: torch.Generator | None = None, seed: int | None = None):
        super().__init__()
        if in_channels < 1 or mapping_size < 1:
            raise GensightError(
                f"in_channels and mapping_size must be positive; got {in_channels} and "
                f"{mapping_size}"
            )
        if generator is not None and seed is not None:
            raise GensightError("pass either generator or seed, not both")
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        self.in_channels = in_channels
        self.mapping_size = mapping_size
        self.scale = float(scale)
        self.register_buffer(
            "frequencies",
            torch.randn(in_channels, mapping_size, generator=generator) * self.scale,
        )

    @property
    def out_channels(self) -> int:
        return 2 * self.mapping_size

    def encode(self, x: Tensor) -> Tensor:
        """``(B, in_channels, *rest)`` -> ``(B, 2 * mapping_size, *rest)``."""
        freq = self.frequencies.to(dtype=x.dtype)
        proj = (2 * math.pi) * (x.movedim(1, -1) @ freq)
        return torch.cat([proj.sin(), proj.cos()], dim=-1).movedim(-1, 1)

    def forward(self, batch: WeightBatch) -> WeightBatch:
        if batch.channels != self.in_channels:
            raise ShapeMismatchError(
                f"GaussianFourierFeatures expects {self.in_channels} channels; the batch has "
                f"{batch.channels}"
            )
        return batch.map(self.encode)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, mapping_size={self.mapping_size}, "
                f"scale={self.scale}")


def _sinusoidal_positions(n: int, max_freq: float, num_bands: int, dtype: torch.dtype,
                          device: torch.device) -> Tensor:
    """Encoding ``(2 * num_bands + 1, n)`` of ``n`` positions ``linspace(-1, 1, n)``."""
    pos = torch.linspace(-1.0, 1.0, n, dtype=dtype, device=device)
    freqs = torch.linspace(1.0, max_freq / 2, num_bands, dtype=dtype, device=device)
    angle = math.pi * pos[:, None] * freqs  # (n, num_bands)
    return torch.cat([angle.sin(), angle.cos(), pos[:, None]], dim=1).t()


class IOSinusoidalEncoding(nn.Module):
    """Fixed sinusoidal encodings of the input and output neurons, appended as channels.

    An NP NF-Layer is equivariant to permutations of the input and output neurons too, so on
    its own it cannot tell which input coordinate or output channel of an INR a weight
    belongs to. This module (the NFN paper's NP-with-IO-encoding INR models; the authors'
    ``IOSinusoidalEncoding`` with ``enc_layers=False``, as in all their INR configs) appends
    ``d = 2 * num_bands + 1`` channels to every tensor:

    - neuron ``k`` of ``n`` neurons gets position ``p_k = linspace(-1, 1, n)[k]`` (``-1`` when
      ``n == 1``) and encoding ``[sin(pi f_1 p_k) .. sin(pi f_K p_k), cos(pi f_1 p_k) ..
      cos(pi f_K p_k), p_k]`` with ``K = num_bands`` frequencies ``f = linspace(1,
      max_freq / 2, K)``;
    - the first weight ``W(1)[j, k, *filter]`` gets the encoding of input neuron ``k``
      (the same for every row ``j`` and filter position);
    - the last weight ``W(L)[j, k, *filter]`` gets the encoding of output neuron ``j``, and
      the last bias ``v(L)[j]`` the same;
    - every other tensor gets zeros (so all tensors keep one channel count). For a
      single-layer network ``W(1)`` gets the *sum* of both encodings, as in the authors'
      code.

    With ``enc_layers=True`` (the authors' class default, unused in their INR configs) the
    encoding of position ``linspace(-1, 1, L)[i]`` of layer ``i`` is added to every entry of
    ``W(i)`` and ``v(i)``. One deliberate difference from the authors' code: for
    convolutional weights the output encoding is broadcast over the filter positions (their
    code has a slip there that only matters for CNN spaces).

    After this module the features are equivariant to hidden-neuron permutations (HNP) only.

    Shapes: ``WeightBatch`` with ``C`` channels -> the same with ``C + d`` channels
    (:meth:`out_channels`); the input channels come first, unchanged.
    """

    def __init__(self, space: WeightSpace, max_freq: float = 10.0, num_bands: int = 6, *,
                 enc_layers: bool = False):
        super().__init__()
        if num_bands < 1:
            raise GensightError(f"num_bands must be positive; got {num_bands}")
        self.space = space
        self.max_freq = float(max_freq)
        self.num_bands = num_bands
        self.enc_layers = enc_layers

    @property
    def encoding_channels(self) -> int:
        return 2 * self.num_bands + 1

    def out_channels(self, in_channels: int) -> int:
        return in_channels + self.encoding_channels

    def encodings(self, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> list[Tensor]:
        """The appended channels of each tensor, without the batch axis, ordered like
        ``WeightBatch.tensors()``: ``(d, n_out, n_in, *filter)`` per weight, then
        ``(d, n_out)`` per bias."""
        space, d = self.space, self.encoding_channels
        L = space.n_layers

        def enc(n: int) -> Tensor:
            return _sinusoidal_positions(n, self.max_freq, self.num_bands, dtype, device)

        inputs, outputs = enc(space.neurons[0]), enc(space.neurons[-1])
        layer_enc = enc(L) if self.enc_layers else None  # (d, L)
        weights, biases = [], []
        for i, layer in enumerate(space.layers):
            nf = len(layer.filter_shape)
            w = torch.zeros(d, *layer.weight_shape, dtype=dtype, device=device)
            b = torch.zeros(d, *layer.bias_shape, dtype=dtype, device=device)
            if layer_enc is not None:
                w = w + layer_enc[:, i].view(d, 1, 1, *[1] * nf)
                b = b + layer_enc[:, i].view(d, 1)
            if i == 0:
                w = w + inputs.view(d, 1, layer.n_in, *[1] * nf)
            if i == L - 1:
                w = w + outputs.view(d, layer.n_out, 1, *[1] * nf)
                b = b + outputs
            weights.append(w)
            biases.append(b)
        return weights + biases

    def forward(self, batch: WeightBatch) -> WeightBatch:
        _check_space(self, self.space, batch)
        encs = self.encodings(batch.dtype, batch.device)
        out = [torch.cat([t, e.expand(t.shape[0], *e.shape)], dim=1)
               for t, e in zip(batch.tensors(), encs, strict=True)]
        return _rebuild(batch, out)

    def extra_repr(self) -> str:
        return (f"neurons={self.space.neurons}, max_freq={self.max_freq}, "
                f"num_bands={self.num_bands}, enc_layers={self.enc_layers}")


class ChannelDropout(nn.Module):
    """Dropout of whole channels of a network's weight-space features.

    In training mode each channel ``c`` of each member ``b`` is kept with probability
    ``1 - p`` (and then scaled by ``1 / (1 - p)``) or zeroed in *every* entry of *every*
    weight and bias tensor of that member; members draw independently. In eval mode, or
    with ``p == 0``, the batch is returned unchanged.

    The mask depends only on (member, channel), so for one random draw (same ``generator``
    state or global seed) a permuted input gives the permuted output: the module is
    equivariant to every neuron permutation. This follows the brief for gensight, and is
    stricter than the authors' ``ChannelDropout`` (their mask is drawn per tensor, and per
    entry for biases). Used after each ReLU of the NFN INR classifier (``p = 0.1``).

    Args:
        p: probability of zeroing a channel, in ``[0, 1]``.
        generator: optional RNG for the masks (must live on the batch's device).
    """

    def __init__(self, p: float = 0.1, *, generator: torch.Generator | None = None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise GensightError(f"dropout probability must be in [0, 1]; got {p}")
        self.p = float(p)
        self.generator = generator

    def mask(self, batch_size: int, channels: int, dtype: torch.dtype,
             device: torch.device) -> Tensor:
        """The scaled keep mask ``(B, C)``: ``0`` or ``1 / (1 - p)``."""
        keep = torch.empty(batch_size, channels, dtype=dtype, device=device)
        keep.bernoulli_(1.0 - self.p, generator=self.generator)
        return keep / (1.0 - self.p) if self.p < 1.0 else keep

    def forward(self, batch: WeightBatch) -> WeightBatch:
        if not self.training or self.p == 0.0:
            return batch
        m = self.mask(batch.batch_size, batch.channels, batch.dtype, batch.device)
        return batch.map(lambda t: t * m.view(*m.shape, *[1] * (t.dim() - 2)))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LearnedScale(nn.Module):
    """One learned scalar per weight tensor and per bias tensor, multiplying that tensor.

    The NFN editing models (``TransferNet``) end with it: the predicted weight delta is
    scaled per tensor, initialised small (``init=0.01``) so that editing starts near the
    identity. Each scalar multiplies all channels and entries of its tensor, so the module
    is equivariant to every neuron permutation.

    ``scale`` is a parameter of shape ``(2 L,)`` ordered like ``WeightBatch.tensors()``:
    ``scale[i]`` multiplies ``W(i+1)`` and ``scale[L + i]`` multiplies ``v(i+1)``.

    Args:
        space: the weight space, or the number of tensors ``2 L`` (weights and biases).
        init: initial value of every scalar.

    Shapes: ``WeightBatch`` -> ``WeightBatch`` with the same shapes.
    """

    def __init__(self, space: WeightSpace | int, init: float = 0.01):
        super().__init__()
        n_tensors = 2 * space.n_layers if isinstance(space, WeightSpace) else int(space)
        if n_tensors < 2 or n_tensors % 2:
            raise GensightError(
                f"LearnedScale needs an even, positive number of tensors (2 per layer); got "
                f"{n_tensors}"
            )
        self.n_tensors = n_tensors
        self.scale = nn.Parameter(torch.full((n_tensors,), float(init)))

    @property
    def weight_scales(self) -> Tensor:
        return self.scale[: self.n_tensors // 2]

    @property
    def bias_scales(self) -> Tensor:
        return self.scale[self.n_tensors // 2:]

    def forward(self, batch: WeightBatch) -> WeightBatch:
        tensors = batch.tensors()
        if len(tensors) != self.n_tensors:
            raise ShapeMismatchError(
                f"LearnedScale has {self.n_tensors} scales; the batch has {len(tensors)} "
                "tensors"
            )
        scale = self.scale.to(batch.dtype)
        return _rebuild(batch, [t * scale[k] for k, t in enumerate(tensors)])

    def extra_repr(self) -> str:
        return f"n_tensors={self.n_tensors}"


def make_inr_classifier(
    space: WeightSpace,
    *,
    symmetry: Symmetry = "hnp",
    channels: Sequence[int] = (32, 32, 32),
    in_channels: int = 1,
    fourier: int | None = 16,
    fourier_scale: float = 3.0,
    fourier_seed: int | None = None,
    io_freq: float = 3.0,
    io_bands: int = 3,
    dropout: float = 0.1,
    head: int = 256,
    n_classes: int = 10,
) -> nn.Sequential:
    """The NFN paper's invariant INR classifier, at CPU-friendly default sizes.

    ``fourier`` (:class:`GaussianFourierFeatures` with ``mapping_size=fourier``, omitted if
    ``None``) -> ``io_encoding`` (NP only: :class:`IOSinusoidalEncoding(io_freq,
    io_bands)`) -> ``encoder``: for each width in ``channels``, an NF-Layer
    (:class:`~gensight.nf.HNPLinear` or :class:`~gensight.nf.NPLinear`), ReLU
    (:class:`~gensight.nf.Elementwise`) and :class:`ChannelDropout` (if ``dropout > 0``)
    -> ``pool`` (:class:`~gensight.nf.HNPPool`, for both symmetries, as the authors do)
    -> ``head``: Linear(pooled, head), ReLU, Dropout(dropout), Linear(head, n_classes).

    The authors' configs use ``channels=(512,) * 3``, ``fourier=128`` with scale 10 (MNIST: 3),
    IO encoding ``(10, 6)`` (MNIST: ``(3, 3)``), channel dropout 0.1 on MNIST, and a head
    of two hidden layers of 1000.

    ``forward``: ``WeightBatch (B, in_channels, ...)`` -> logits ``(B, n_classes)``; invariant
    to hidden-neuron permutations (exactly so in eval mode).

    Example:
        >>> siren = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
        ...                       nn.Linear(32, 1))
        >>> batch = WeightBatch.from_modules([siren, siren])
        >>> model = make_inr_classifier(batch.space, symmetry="np", channels=(8, 8))
        >>> model.eval()(batch).shape
        torch.Size([2, 10])
    """
    if symmetry not in ("hnp", "np"):
        raise GensightError(f"unknown symmetry {symmetry!r}; expected 'hnp' or 'np'")
    if not channels:
        raise GensightError("make_inr_classifier needs at least one NF-Layer (channels is "
                            "empty)")
    parts: OrderedDict[str, nn.Module] = OrderedDict()
    c = in_channels
    if fourier is not None:
        parts["fourier"] = GaussianFourierFeatures(c, fourier, fourier_scale,
                                                   seed=fourier_seed)
        c = parts["fourier"].out_channels
    if symmetry == "np":
        parts["io_encoding"] = IOSinusoidalEncoding(space, io_freq, io_bands)
        c = parts["io_encoding"].out_channels(c)
    layers: list[nn.Module] = []
    for width in channels:
        layers.append(HNPLinear(space, c, width) if symmetry == "hnp"
                      else NPLinear(space, c, width))
        layers.append(Elementwise(nn.ReLU()))
        if dropout > 0:
            layers.append(ChannelDropout(dropout))
        c = width
    parts["encoder"] = nn.Sequential(*layers)
    parts["pool"] = HNPPool(space)
    head_layers: list[nn.Module] = [nn.Linear(parts["pool"].out_features(c), head), nn.ReLU()]
    if dropout > 0:
        head_layers.append(nn.Dropout(dropout))
    head_layers.append(nn.Linear(head, n_classes))
    parts["head"] = nn.Sequential(*head_layers)
    return nn.Sequential(parts)
