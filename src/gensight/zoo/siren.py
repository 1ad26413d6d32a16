"""SIREN populations: one implicit neural representation (INR) per image, fitted together.

A SIREN (Sitzmann et al. 2020, "Implicit Neural Representations with Periodic Activation
Functions", arXiv 2006.09661) maps a pixel coordinate ``x in [-1, 1]^2`` to the pixel value.
Every hidden layer computes ``sin(omega_0 * (W x + b))`` and the last layer is a plain linear
map (the authors' ``outermost_linear=True``, with ``first_omega_0 = hidden_omega_0 =
omega_0``). This is the set-up of the SIREN datasets of the NFN paper (Zhou et al. 2023,
"Permutation Equivariant Neural Functionals", arXiv 2302.14040, Sec. 5): 2-32-32-1 networks
with omega_0 = 30 (CIFAR-10: 3 outputs), images scaled to [-1, 1], coordinates
``linspace(-1, 1, side)`` per axis combined with ``torch.meshgrid(indexing="ij")``.

- :func:`coordinate_grid`, :func:`siren_module`, :func:`init_siren_module`: one SIREN.
- :class:`SirenPopulation`, :func:`siren_init`: M SIRENs stacked, ``weights[i]: (M, out,
  in)``, ``biases[i]: (M, out)``; :meth:`SirenPopulation.forward` runs all of them at once.
- :func:`fit_sirens`: full-batch Adam on every member's pixel MSE, batched, with the update
  formulas of ``torch.optim.Adam`` and a per-member early stop at a target PSNR.
- :func:`fit_siren_reference`: the same fit for one network with ``torch.optim.Adam`` (the
  baseline and the reference of the equivalence tests).
- :func:`render`: draw SIRENs (a :class:`~gensight.weightspace.WeightBatch` or a population)
  on a grid of any resolution; differentiable with respect to the weights.

Initialization (Sitzmann et al. 2020, Sec. 3.2 and their reference code): the first layer's
weights are ``U(-1/in, 1/in)``, all later weights, the final linear layer's included,
``U(-sqrt(6/in)/omega_0, sqrt(6/in)/omega_0)``; biases keep PyTorch's default
``U(-1/sqrt(in), 1/sqrt(in))``. Each member draws from its own
``torch.Generator().manual_seed(seed)`` in the order layer 1 weight, layer 1 bias, layer 2
weight, layer 2 bias, ..., each tensor filled row-major by ``Tensor.uniform_``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensight.errors import GensightError
from gensight.weightspace import Sine, WeightBatch, WeightSpace

__all__ = [
    "Sine",
    "SirenError",
    "SirenFit",
    "SirenPopulation",
    "coordinate_grid",
    "fit_siren_reference",
    "fit_sirens",
    "init_siren_module",
    "psnr",
    "render",
    "siren_init",
    "siren_module",
    "siren_space",
]

# Adam's defaults in torch.optim.Adam.
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8
# Values of the data range [-1, 1]: peak-to-peak 2, so PSNR = 10 log10(2^2 / MSE).
_PEAK_SQUARED = 4.0
_RANGE_SLACK = 1e-6
# Activations kept per render chunk (elements): bounds render's memory at any resolution.
_RENDER_CHUNK_ELEMENTS = 1 << 23


class SirenError(GensightError, ValueError):
    """Bad input to the SIREN functions; the message names the argument and its value."""


# --- validation -----------------------------------------------------------------------------
def _check_hidden(hidden: Sequence[int]) -> tuple[int, ...]:
    try:
        items = tuple(hidden)
    except TypeError:
        items = None
    if (not items or any(isinstance(h, bool) or not isinstance(h, numbers.Integral)
                         or h < 1 for h in items)):
        raise SirenError(f"hidden must be a non-empty sequence of positive ints; got {hidden!r}")
    return tuple(int(h) for h in items)


def _check_positive(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SirenError(f"{name} must be a positive number; got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise SirenError(f"{name} must be a positive finite number; got {value!r}")
    return v


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise SirenError(f"{name} must be an int >= 1; got {value!r}")
    return int(value)


def _check_target(target_psnr: float | None) -> float | None:
    if target_psnr is None:
        return None
    try:
        value = float(target_psnr)
    except (TypeError, ValueError):
        value = math.nan
    if math.isnan(value):
        raise SirenError(f"target_psnr must be a number (dB) or None; got {target_psnr!r}")
    return value


def _check_size(size: int) -> int:
    return _check_count("size", size)


def _check_images(images, batched: bool) -> Tensor:
    """``images`` as float ``(M, C, H, W)`` (batched) or ``(1, C, H, W)`` (one image)."""
    name = "images" if batched else "image"
    x = images if isinstance(images, Tensor) else torch.as_tensor(images)
    lo_dim = 3 if batched else 2
    if x.dim() not in (lo_dim, lo_dim + 1):
        want = "(M, H, W) or (M, C, H, W)" if batched else "(H, W) or (C, H, W)"
        raise SirenError(f"{name} must have shape {want}; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise SirenError(f"{name} must be a floating-point tensor in [-1, 1]; got dtype {x.dtype}")
    if x.dim() == lo_dim:
        x = x.unsqueeze(-3)
    if not batched:
        x = x.unsqueeze(0)
    if x.shape[-1] != x.shape[-2]:
        raise SirenError(f"{name} must be square (H == W); got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise SirenError(f"{name} is empty; got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise SirenError(f"{name} contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - _RANGE_SLACK or hi > 1 + _RANGE_SLACK:
        raise SirenError(f"{name} values must lie in [-1, 1]; got min {lo:g}, max {hi:g}")
    return x


# --- one SIREN --------------------------------------------------------------------------------
def coordinate_grid(size: int, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> Tensor:
    """Pixel coordinates ``(size * size, 2)`` in [-1, 1], as the NFN authors build them.

    ``linspace(-1, 1, size)`` per axis, ``torch.meshgrid(..., indexing="ij")``, flattened
    row-major: entry ``p = i * size + j`` is ``(lin[i], lin[j])``, i.e. the first coordinate
    is the row index (it varies slowest) and the second the column index.

    >>> coordinate_grid(2).tolist()
    [[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]]
    """
    size = _check_size(size)
    lin = torch.linspace(-1, 1, size, dtype=dtype, device=device)
    rows, cols = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)


def _layer_sizes(hidden: Sequence[int], in_features: int, out_features: int
                 ) -> list[tuple[int, int]]:
    """``(out, in)`` per parametrized layer."""
    widths = [in_features, *hidden, out_features]
    return list(zip(widths[1:], widths[:-1], strict=True))


def siren_module(hidden: Sequence[int] = (32, 32), omega_0: float = 30.0,
                 in_features: int = 2, out_features: int = 1) -> nn.Sequential:
    """One SIREN as ``nn.Sequential(Linear, Sine, ..., Linear, Sine, Linear)``.

    Every hidden layer computes ``sin(omega_0 * (W x + b))`` and the last layer ``W x + b``
    (Sitzmann et al. 2020 with ``outermost_linear=True``). Parameters are PyTorch's default
    initialization; :func:`init_siren_module` gives the SIREN initialization. Its parameters
    are plain ``nn.Linear`` s, so ``WeightSpace.from_module`` and ``WeightBatch.from_modules``
    / ``to_modules`` read and write it (state-dict keys ``0.weight``, ``0.bias``,
    ``2.weight``, ...).
    """
    hidden = _check_hidden(hidden)
    omega_0 = _check_positive("omega_0", omega_0)
    in_features = _check_count("in_features", in_features)
    out_features = _check_count("out_features", out_features)
    layers: list[nn.Module] = []
    sizes = _layer_sizes(hidden, in_features, out_features)
    for k, (n_out, n_in) in enumerate(sizes):
        layers.append(nn.Linear(n_in, n_out))
        if k < len(sizes) - 1:
            layers.append(Sine(omega_0))
    return nn.Sequential(*layers)


def siren_space(hidden: Sequence[int] = (32, 32), in_features: int = 2,
                out_features: int = 1) -> WeightSpace:
    """The :class:`WeightSpace` of :func:`siren_module` (Linear layers ``0, 2, 4, ...``)."""
    with torch.device("meta"):
        return WeightSpace.from_module(siren_module(hidden, 30.0, in_features, out_features))


def _draw_member(seed: int, sizes: Sequence[tuple[int, int]], omega_0: float
                 ) -> list[Tensor]:
    """One member's SIREN init: ``[W1, b1, W2, b2, ...]`` in that drawing order."""
    g = torch.Generator().manual_seed(int(seed))
    out = []
    for k, (n_out, n_in) in enumerate(sizes):
        bound = 1.0 / n_in if k == 0 else math.sqrt(6.0 / n_in) / omega_0
        out.append(torch.empty(n_out, n_in).uniform_(-bound, bound, generator=g))
        bias_bound = 1.0 / math.sqrt(n_in)
        out.append(torch.empty(n_out).uniform_(-bias_bound, bias_bound, generator=g))
    return out


def init_siren_module(seed: int, hidden: Sequence[int] = (32, 32), omega_0: float = 30.0,
                      in_features: int = 2, out_features: int = 1) -> nn.Sequential:
    """:func:`siren_module` with the SIREN initialization drawn from
    ``torch.Generator().manual_seed(seed)`` (order and bounds: see the module docstring)."""
    model = siren_module(hidden, omega_0, in_features, out_features)
    omega_0 = float(omega_0)
    tensors = _draw_member(seed, _layer_sizes(_check_hidden(hidden), in_features,
                                              out_features), omega_0)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for k, lin in enumerate(linears):
            lin.weight.copy_(tensors[2 * k])
            lin.bias.copy_(tensors[2 * k + 1])
    return model


def psnr(mse: Tensor | float) -> Tensor | float:
    """Peak signal-to-noise ratio in dB for data in [-1, 1] (peak-to-peak 2):
    ``10 * log10(4 / mse)``. Tensors map elementwise; MSE 0 gives ``inf``.

    >>> psnr(0.04)
    20.0
    """
    if isinstance(mse, Tensor):
        return 10 * torch.log10(_PEAK_SQUARED / mse)
    mse = float(mse)
    return math.inf if mse == 0 else 10 * math.log10(_PEAK_SQUARED / mse)


# --- populations --------------------------------------------------------------------------
def _sine_forward(weights: Sequence[Tensor], biases: Sequence[Tensor], omega_0: float,
                  coords: Tensor) -> Tensor:
    """Outputs ``(M, out, P)`` of M SIRENs at shared coordinates ``(P, in)`` (autograd-ready).

    Activations are kept feature-major, ``(M, hidden, P)``. Layer 1 is ONE matmul for all
    members, ``W1_all @ coords.T`` with ``W1_all: (M * hidden, in)`` (the transpose of
    ``coords @ W1_all.T``), whose ``(M * hidden, P)`` result is already the ``(M, hidden, P)``
    batch that later layers take in ``torch.baddbmm``.
    """
    m, h1, n_in = weights[0].shape
    z = torch.addmm(biases[0].reshape(m * h1, 1), weights[0].reshape(m * h1, n_in), coords.t())
    x = torch.sin(z.mul_(omega_0)).view(m, h1, -1)
    for w, b in zip(weights[1:-1], biases[1:-1], strict=True):
        x = torch.sin(torch.baddbmm(b.unsqueeze(2), w, x).mul_(omega_0))
    return torch.baddbmm(biases[-1].unsqueeze(2), weights[-1], x)


@dataclass
class SirenPopulation:
    """M SIRENs of one architecture, stacked.

    ``weights[i]: (M, out_i, in_i)``, ``biases[i]: (M, out_i)`` for the parametrized layers
    in order; every layer but the last is followed by ``sin(omega_0 * .)``.
    """

    weights: list[Tensor]
    biases: list[Tensor]
    omega_0: float = 30.0

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.biases) or len(self.weights) < 2:
            raise SirenError(
                f"weights and biases must list the same number (>= 2) of layers; got "
                f"{len(self.weights)} weights and {len(self.biases)} biases")
        self.omega_0 = _check_positive("omega_0", self.omega_0)
        m = self.weights[0].shape[0]
        prev = self.weights[0].shape[2] if self.weights[0].dim() == 3 else None
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if (w.dim() != 3 or w.shape[0] != m or w.shape[2] != prev
                    or tuple(b.shape) != (m, w.shape[1])):
                raise SirenError(
                    f"layer {i}: weight shape {tuple(w.shape)} and bias shape "
                    f"{tuple(b.shape)} do not chain as (M, out, in) and (M, out) with M = {m}")
            prev = w.shape[1]

    @property
    def size(self) -> int:
        """Number of members M."""
        return self.weights[0].shape[0]

    @property
    def hidden(self) -> tuple[int, ...]:
        return tuple(w.shape[1] for w in self.weights[:-1])

    @property
    def in_features(self) -> int:
        return self.weights[0].shape[2]

    @property
    def out_features(self) -> int:
        return self.weights[-1].shape[1]

    @property
    def space(self) -> WeightSpace:
        return siren_space(self.hidden, self.in_features, self.out_features)

    def parameters(self) -> list[Tensor]:
        return [*self.weights, *self.biases]

    def forward(self, coords: Tensor) -> Tensor:
        """Outputs ``(M, P, out)`` at coordinates ``(P, in)`` shared by all members.

        Differentiable with respect to the weights (e.g. for INR editing losses).
        """
        if coords.dim() != 2 or coords.shape[1] != self.in_features:
            raise SirenError(f"coords must have shape (P, {self.in_features}); got shape "
                             f"{tuple(coords.shape)}")
        w0 = self.weights[0]
        return _sine_forward(self.weights, self.biases, self.omega_0,
                             coords.to(dtype=w0.dtype, device=w0.device)).transpose(1, 2)

    __call__ = forward

    def to_weight_batch(self) -> WeightBatch:
        """The members as a :class:`WeightBatch` of :func:`siren_space` (C = 1)."""
        return WeightBatch(self.space, [w.detach().unsqueeze(1) for w in self.weights],
                           [b.detach().unsqueeze(1) for b in self.biases], check_finite=False)

    @classmethod
    def from_weight_batch(cls, batch: WeightBatch, omega_0: float = 30.0) -> SirenPopulation:
        """A population from a one-channel :class:`WeightBatch` of Linear layers (the weight
        space of :func:`siren_module`). Keeps the batch's tensors (and autograd graph)."""
        if batch.channels != 1:
            raise SirenError(f"batch must have 1 channel to be rendered as SIRENs; got "
                             f"{batch.channels}")
        kinds = {layer.kind for layer in batch.space.layers}
        if kinds != {"linear"} or batch.space.n_layers < 2:
            raise SirenError(f"batch must hold >= 2 Linear layers (a SIREN); got "
                             f"{batch.space!r}")
        return cls([w[:, 0] for w in batch.weights], [b[:, 0] for b in batch.biases],
                   omega_0)

    def to_modules(self) -> list[nn.Sequential]:
        """One :func:`siren_module` per member, holding its weights."""
        template = siren_module(self.hidden, self.omega_0, self.in_features, self.out_features)
        return self.to_weight_batch().to_modules(template)  # type: ignore[return-value]

    @classmethod
    def from_modules(cls, modules: Sequence[nn.Module], omega_0: float = 30.0
                     ) -> SirenPopulation:
        return cls.from_weight_batch(WeightBatch.from_modules(modules, dtype=None), omega_0)


def siren_init(seeds: Sequence[int], hidden: Sequence[int] = (32, 32), omega_0: float = 30.0,
               in_features: int = 2, out_features: int = 1) -> SirenPopulation:
    """The SIREN initialization of ``len(seeds)`` members, member k drawn from
    ``torch.Generator().manual_seed(seeds[k])``: the same numbers as
    ``init_siren_module(seeds[k], ...)`` (see the module docstring for bounds and order)."""
    hidden = _check_hidden(hidden)
    omega_0 = _check_positive("omega_0", omega_0)
    in_features = _check_count("in_features", in_features)
    out_features = _check_count("out_features", out_features)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise SirenError("seeds must not be empty; got []")
    sizes = _layer_sizes(hidden, in_features, out_features)
    weights = [torch.empty(len(seeds), o, i) for o, i in sizes]
    biases = [torch.empty(len(seeds), o) for o, _ in sizes]
    for k, seed in enumerate(seeds):
        tensors = _draw_member(seed, sizes, omega_0)
        for layer in range(len(sizes)):
            weights[layer][k] = tensors[2 * layer]
            biases[layer][k] = tensors[2 * layer + 1]
    return SirenPopulation(weights, biases, omega_0)


def render(weights: WeightBatch | SirenPopulation, size: int, omega_0: float | None = None
           ) -> Tensor:
    """Draw every SIREN on :func:`coordinate_grid` ``(size)``: ``(M, C, size, size)``.

    ``out[m, c, i, j]`` is member m's output c at coordinates ``(lin[i], lin[j])``. Any
    resolution works (pixels are evaluated in chunks); differentiable with respect to the
    weights. ``omega_0``: a population's own by default; 30 (the NFN SIRENs') for a
    :class:`WeightBatch`. A population given a different ``omega_0`` is an error.
    """
    size = _check_size(size)
    if isinstance(weights, SirenPopulation):
        if omega_0 is not None and float(omega_0) != weights.omega_0:
            raise SirenError(f"omega_0 is {omega_0!r} but the population's omega_0 is "
                             f"{weights.omega_0!r}")
        pop = weights
    elif isinstance(weights, WeightBatch):
        pop = SirenPopulation.from_weight_batch(weights, 30.0 if omega_0 is None else omega_0)
    else:
        raise SirenError(f"weights must be a WeightBatch or a SirenPopulation; got "
                         f"{type(weights).__name__}")
    w0 = pop.weights[0]
    coords = coordinate_grid(size, dtype=w0.dtype, device=w0.device)
    chunk = max(1, _RENDER_CHUNK_ELEMENTS // (pop.size * max(pop.hidden)))
    out = torch.cat([_sine_forward(pop.weights, pop.biases, pop.omega_0, coords[lo:lo + chunk])
                     for lo in range(0, coords.shape[0], chunk)], dim=2)  # (M, C, P)
    return out.reshape(pop.size, pop.out_features, size, size)


# --- fitting ------------------------------------------------------------------------------
@dataclass
class SirenFit:
    """Result of :func:`fit_sirens`.

    ``population``: the fitted members; ``steps_used (M,)``: Adam updates each member took;
    ``mse (M,)`` and ``psnr (M,)``: from a final forward pass of the returned weights (MSE
    over all pixels and channels, PSNR in dB for data in [-1, 1]).
    """

    population: SirenPopulation
    steps_used: Tensor
    mse: Tensor
    psnr: Tensor


class _FlatSirens:
    """Parameters of A members as one flat ``(A, D)`` tensor, each member's row laid out
    ``[W1, b1, W2, b2, ...]`` (row-major), with a hand-written forward and backward pass of
    the members' pixel MSE.

    The backward pass is autograd's chain rule for :func:`_sine_forward` with the big
    elementwise passes done in place in reused buffers: for a hidden layer
    ``x = sin(omega_0 * (W x_prev + b))``, ``dL/d(Wx_prev + b) = omega_0 * cos(.) * dL/dx`` is
    computed by writing ``cos`` over the saved ``omega_0 * (W x_prev + b)`` and one in-place
    multiply; the factors ``omega_0`` are collected in a scalar applied to the (small) weight
    gradients, never to the activations. Activations are feature-major ``(A, hidden, P)``.
    Members run in chunks whose buffers stay cache-sized (:attr:`CHUNK_BYTES`).
    """

    # Members per chunk on the CPU (``chunk=None``): as many as keep one hidden layer's
    # activations near CHUNK_BYTES, so that a chunk's five such buffers stay in the cache.
    # Measured on a 2-core machine, 256 members at 14x14: chunks of 64-128 members took
    # 12-14 ms per step with 2 threads (17 ms with 1 thread) against 15-17 ms (21 ms) for
    # all 256 at once, whose 6 MB buffers stream from memory. On a GPU all members run at once.
    CHUNK_BYTES = 3 << 19  # 1.5 MiB: 62 members of 2-32-32-1 at 14x14, 15 at 28x28
    chunk: int | None = None
    # Smallest image side for which the first layer uses angle addition on the grid
    # (``loss_and_grad(..., grid)``). Its broadcast products run along rows of S values,
    # which are slower than one ``torch.sin`` pass for short rows: measured on a 2-core CPU
    # (``benchmarks/bench_siren_grid.py``), 0.80x at S = 8, 0.95-1.04x at 14, 1.11-1.29x
    # from 16 up.
    GRID_MIN_SIDE = 16

    def __init__(self, sizes: Sequence[tuple[int, int]], omega_0: float):
        self.sizes = list(sizes)
        self.omega_0 = omega_0
        self.offsets = []
        off = 0
        for o, i in self.sizes:
            self.offsets.append((off, off + o * i, off + o * i + o))
            off += o * i + o
        self.dim = off
        self._buffers: dict[str, Tensor] = {}

    def flatten(self, pop: SirenPopulation) -> Tensor:
        parts = []
        for w, b in zip(pop.weights, pop.biases, strict=True):
            parts += [w.reshape(w.shape[0], -1), b]
        return torch.cat(parts, dim=1)

    def layers(self, theta: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        a = theta.shape[0]
        ws, bs = [], []
        for (o, i), (w0, b0, b1) in zip(self.sizes, self.offsets, strict=True):
            ws.append(theta[:, w0:b0].view(a, o, i))
            bs.append(theta[:, b0:b1])
        return ws, bs

    def unflatten(self, theta: Tensor) -> SirenPopulation:
        ws, bs = self.layers(theta)
        return SirenPopulation([w.clone() for w in ws], [b.clone() for b in bs], self.omega_0)

    def _buffer(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A reused ``shape`` buffer (its first rows once the active set shrinks): fresh
        multi-MB tensors every step cost page faults on the CPU."""
        buf = self._buffers.get(name)
        if (buf is None or buf.shape[0] < shape[0] or tuple(buf.shape[1:]) != shape[1:]
                or buf.dtype != like.dtype or buf.device != like.device):
            buf = like.new_empty(shape)
            self._buffers[name] = buf
        return buf[:shape[0]]

    def loss_and_grad(self, theta: Tensor, coords: Tensor, targets: Tensor,
                      grid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-member MSE ``(A,)`` of the current weights ``theta (A, D)`` on ``targets (A,
        C, P)`` at ``coords (P, in)``, and ``d(sum of the MSEs)/d theta`` ``(A, D)``.

        ``grid``: the ``(S,)`` axis values when ``coords`` is :func:`coordinate_grid`
        ``(S)`` (``coords[i * S + j] == (grid[i], grid[j])``). The first layer's sines and
        cosines are then built by angle addition from ``2 S`` values per unit instead of
        ``S^2`` (same function; see :meth:`_first_layer_on_grid`), for ``S >=``
        :attr:`GRID_MIN_SIDE`.

        Members are independent, so they run ``chunk`` at a time (see :attr:`chunk`)."""
        a = theta.shape[0]
        chunk = self.chunk if self.chunk is not None else (
            a if theta.device.type != "cpu" else self.cpu_chunk(coords.shape[0]))
        grad = self._buffer("grad", (a, self.dim), theta)
        mse = theta.new_empty(a)
        for lo in range(0, a, chunk):
            hi = min(a, lo + chunk)
            self._loss_and_grad(theta[lo:hi], coords, targets[lo:hi], mse[lo:hi],
                                grad[lo:hi], grid)
        return mse, grad

    def _first_layer_on_grid(self, w: Tensor, b: Tensor, grid: Tensor, x_out: Tensor
                             ) -> tuple[Tensor, ...]:
        """The first hidden layer's output ``sin(omega_0 (W x + b))`` on the pixel grid,
        written into ``x_out (A, h, S * S)``, and the per-axis factors for its cosine.

        With ``x = (grid[i], grid[j])``, ``omega_0 (W x + b) = r_i + c_j`` for
        ``r_i = omega_0 (W[:, 0] grid[i] + b)`` and ``c_j = omega_0 W[:, 1] grid[j]``, so
        ``sin(r_i + c_j) = sin r_i cos c_j + cos r_i sin c_j`` (and ``cos(r_i + c_j) = cos r_i
        cos c_j - sin r_i sin c_j`` in the backward pass): 4 S transcendentals per unit
        instead of S^2. Equal to the direct evaluation up to float rounding."""
        om = self.omega_0
        rows = torch.addcmul(b.unsqueeze(2), w[:, :, :1], grid).mul_(om)  # (A, h, S)
        cols = (w[:, :, 1:] * grid).mul_(om)
        sr, cr, sc, cc = rows.sin(), rows.cos(), cols.sin(), cols.cos()
        s = grid.shape[0]
        out = x_out.view(*x_out.shape[:2], s, s)
        torch.mul(sr.unsqueeze(3), cc.unsqueeze(2), out=out)
        out.addcmul_(cr.unsqueeze(3), sc.unsqueeze(2))
        return sr, cr, sc, cc

    def cpu_chunk(self, n_pix: int) -> int:
        per_member = max(o for o, _ in self.sizes[:-1]) * n_pix * 4
        return max(1, self.CHUNK_BYTES // per_member)

    def _loss_and_grad(self, theta: Tensor, coords: Tensor, targets: Tensor, mse_out: Tensor,
                       grad_out: Tensor, grid: Tensor | None = None) -> None:
        om = self.omega_0
        ws, bs = self.layers(theta)
        n_layers = len(ws)
        a, h1, n_in = ws[0].shape
        n_pix = coords.shape[0]
        on_grid = (grid is not None and n_in == 2 and n_layers > 1
                   and grid.shape[0] >= self.GRID_MIN_SIDE)
        # forward; zs[k] keeps omega_0 * (W x_prev + b) of hidden layer k, xs[k] its sine
        # (on a grid, layer 0 keeps its per-axis sines and cosines instead)
        zs, xs = [], []
        first = ()
        for k in range(n_layers - 1):
            h = ws[k].shape[1]
            z = self._buffer(f"z{k}", (a, h, n_pix), theta)
            if k == 0 and on_grid:
                x0 = self._buffer("x0", (a, h, n_pix), theta)
                first = self._first_layer_on_grid(ws[0], bs[0], grid, x0)
                zs.append(z)  # filled with the cosine in the backward pass
                xs.append(x0)
                continue
            if k == 0:  # one matmul for all members: (A * h1, in) @ (in, P)
                torch.mm(ws[0].reshape(a * h1, n_in), coords.t(), out=z.view(a * h1, n_pix))
            else:
                torch.bmm(ws[k], xs[-1], out=z)
            z.add_(bs[k].unsqueeze(2)).mul_(om)
            zs.append(z)
            xs.append(torch.sin(z, out=self._buffer(f"x{k}", (a, h, n_pix), theta)))
        diff = torch.baddbmm(bs[-1].unsqueeze(2), ws[-1], xs[-1]).sub_(targets)  # (A, C, P)
        n = diff.shape[1] * diff.shape[2]
        torch.mean(diff.square().reshape(a, n), 1, out=mse_out)
        # backward of sum_m mean((out_m - y_m)^2)
        grad = diff.mul_(2.0 / n)  # dL/d out
        gw: list[Tensor] = [grad] * n_layers
        gb: list[Tensor] = [grad] * n_layers
        gw[-1] = torch.bmm(grad, xs[-1].transpose(1, 2))
        gb[-1] = grad.sum(2)
        scale = 1.0
        for k in range(n_layers - 1, 0, -1):
            # hidden layer k - 1: dL/du = scale * g for u = W x_prev + b, where
            # g = cos(omega_0 u) * (W_k^T grad) and scale = omega_0 ** (layers above it)
            scale *= om
            if k == 1 and first:  # cos(r_i + c_j) = cos r_i cos c_j - sin r_i sin c_j
                sr, cr, sc, cc = first
                g = zs[0]
                g4 = g.view(a, h1, grid.shape[0], grid.shape[0])
                torch.mul(cr.unsqueeze(3), cc.unsqueeze(2), out=g4)
                g4.addcmul_(sr.unsqueeze(3), sc.unsqueeze(2), value=-1)
            else:
                g = torch.cos(zs[k - 1], out=zs[k - 1])
            if ws[k].shape[1] == 1:  # one output: W_k^T grad is an outer product
                g.mul_(grad).mul_(ws[k].transpose(1, 2))
            else:
                w_t = ws[k].transpose(1, 2)
                da = self._buffer("da", (a, w_t.shape[1], n_pix), theta)
                g.mul_(torch.bmm(w_t, grad, out=da))
            grad = g
            if k == 1:  # (in, P) @ (P, A * h1): reads g once, row-major
                gw[0] = (coords.t() @ g.view(a * h1, n_pix).t()).t().mul_(scale)
            else:
                gw[k - 1] = torch.bmm(g, xs[k - 2].transpose(1, 2)).mul_(scale)
            gb[k - 1] = g.sum(2).mul_(scale)
        parts = []
        for w_, b_ in zip(gw, gb, strict=True):
            parts += [w_.reshape(a, -1), b_]
        torch.cat(parts, dim=1, out=grad_out)


def fit_sirens(images: Tensor, seeds: Sequence[int], *, hidden: Sequence[int] = (32, 32),
               omega_0: float = 30.0, steps: int = 300, lr: float = 1e-3,
               target_psnr: float | None = None,
               on_step: Callable[[], None] | None = None) -> SirenFit:
    """Fit one SIREN per image, all members at once, with full-batch Adam on pixel MSE.

    Args:
        images: ``(M, H, W)`` or ``(M, C, H, W)`` floats in [-1, 1], square (``H == W``);
            member m fits image m on :func:`coordinate_grid` ``(H)`` (output c is channel c).
        seeds: M seeds; member m starts from ``init_siren_module(seeds[m], ...)``.
        hidden, omega_0: the architecture (default: the NFN SIRENs, 2-32-32-C, omega_0 30).
        steps: at most this many Adam updates per member (>= 1).
        lr: Adam learning rate (betas (0.9, 0.999), eps 1e-8, no weight decay: the defaults
            of ``torch.optim.Adam``, whose update formulas the batched update follows
            exactly, applied to all members' parameters stacked in one flat tensor).
        target_psnr: per-member early stop (dB). Iteration t's forward pass gives each
            member's MSE of its current weights (after t - 1 updates); a member whose PSNR
            is >= ``target_psnr`` there is frozen before update t (its weights and Adam state
            never change again). So ``steps_used[m]`` is the number of updates member m took
            and its weights are the first iterate that reached the target.
            :func:`fit_siren_reference` applies the same rule.
        on_step: called with no arguments after every iteration (as in
            :func:`gensight.zoo.train.train_population`).

    Returns:
        :class:`SirenFit` with the population, ``steps_used``, and MSE / PSNR of a final
        forward pass.

    Each member's gradient is its own (the loss is the sum of the members' MSEs), so the
    fit equals :func:`fit_siren_reference` per member up to float rounding. Frozen members
    are dropped from the working set, so they cost nothing afterwards. Gradients come from a
    hand-written backward pass (see ``_FlatSirens``); NFN, Zhou et al. 2023 (arXiv
    2302.14040, Sec. 5) fit their SIREN datasets the same way, one network per image.
    """
    x = _check_images(images, batched=True)
    m = x.shape[0]
    seeds = list(seeds)
    if len(seeds) != m:
        raise SirenError(f"seeds has {len(seeds)} entries; expected one per image (M = {m})")
    steps = _check_count("steps", steps)
    lr = _check_positive("lr", lr)
    hidden = _check_hidden(hidden)
    omega_0 = _check_positive("omega_0", omega_0)
    target_psnr = _check_target(target_psnr)
    channels, side = x.shape[1], x.shape[-1]
    dtype, device = x.dtype, x.device
    flat = _FlatSirens(_layer_sizes(hidden, 2, channels), omega_0)
    init = siren_init(seeds, hidden, omega_0, 2, channels)
    theta = flat.flatten(init).to(dtype=dtype, device=device)
    coords = coordinate_grid(side, dtype=dtype, device=device)
    grid = torch.linspace(-1, 1, side, dtype=dtype, device=device)  # coords' axis values
    targets = x.reshape(m, channels, side * side)  # (M, C, P), coordinate_grid order
    final = theta.clone()  # rows of frozen members are written here when they stop
    active = torch.arange(m, device=device)
    steps_used = torch.full((m,), steps, dtype=torch.long)
    exp_avg = torch.zeros_like(theta)
    exp_avg_sq = torch.zeros_like(theta)
    denom = torch.empty_like(theta)
    t = 0  # updates taken by every active member
    with torch.no_grad():
        for _ in range(steps):
            mse, grad = flat.loss_and_grad(theta, coords, targets, grid)
            if target_psnr is not None:
                done = psnr(mse.double()) >= target_psnr
                if bool(done.any()):
                    stopped = active[done]
                    final[stopped] = theta[done]
                    steps_used[stopped.cpu()] = t
                    keep = ~done
                    active, theta, grad = active[keep], theta[keep], grad[keep]
                    exp_avg, exp_avg_sq = exp_avg[keep], exp_avg_sq[keep]
                    targets, denom = targets[keep], torch.empty_like(theta)
                    if active.numel() == 0:
                        if on_step is not None:
                            on_step()
                        break
            t += 1
            # torch.optim.Adam (single-tensor path), weight_decay 0, amsgrad False
            exp_avg.lerp_(grad, 1 - _BETA1)
            exp_avg_sq.mul_(_BETA2).addcmul_(grad, grad, value=1 - _BETA2)
            step_size = lr / (1 - _BETA1 ** t)
            bias_correction2_sqrt = (1 - _BETA2 ** t) ** 0.5
            torch.sqrt(exp_avg_sq, out=denom).div_(bias_correction2_sqrt).add_(_EPS)
            theta.addcdiv_(exp_avg, denom, value=-step_size)
            if on_step is not None:
                on_step()
        final[active] = theta
        pop = flat.unflatten(final)
        mse = (render(pop, side) - x).square().reshape(m, -1).mean(1)
    return SirenFit(pop, steps_used, mse.cpu(), psnr(mse).cpu())


def fit_siren_reference(image: Tensor, seed: int, *, hidden: Sequence[int] = (32, 32),
                        omega_0: float = 30.0, steps: int = 300, lr: float = 1e-3,
                        target_psnr: float | None = None) -> nn.Sequential:
    """Fit one SIREN to one image with ``torch.optim.Adam`` and a plain loop.

    ``image``: ``(H, W)`` or ``(C, H, W)`` in [-1, 1], square. Same initialization
    (:func:`init_siren_module` ``(seed)``), loss (MSE over all pixels and channels) and
    stopping rule as :func:`fit_sirens`: at each iteration the MSE of the current weights is
    computed first, and if its PSNR is >= ``target_psnr`` the loop stops before updating.
    Returns the :func:`siren_module`; its attribute ``steps_used`` (int) counts the updates.
    The per-network baseline of the population fit, and its reference in the tests.
    """
    x = _check_images(image, batched=False)
    steps = _check_count("steps", steps)
    lr = _check_positive("lr", lr)
    target_psnr = _check_target(target_psnr)
    channels, side = x.shape[1], x.shape[-1]
    model = init_siren_module(seed, hidden, omega_0, 2, channels).to(x.device, x.dtype)
    coords = coordinate_grid(side, dtype=x.dtype, device=x.device)
    target = x[0].reshape(channels, side * side).t()  # (P, C), coordinate_grid order
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    used = 0
    for _ in range(steps):
        loss = F.mse_loss(model(coords), target)
        if target_psnr is not None and psnr(loss.detach().item()) >= target_psnr:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        used += 1
    model.steps_used = used
    return model
