"""Inr2Array (arXiv 2305.13546, Sec. 4): an NFT autoencoder that turns a SIREN's weights into
a permutation-invariant array of latent vectors and decodes it back into SIRENs.

- **Encoder** (:meth:`Inr2Array.encode`): Gaussian Fourier features of every weight entry ->
  :class:`~gensight.nf.LearnedPositionEmbedding` (layers, input and output neurons) -> NFT
  blocks -> :class:`~gensight.nf.WeightTokens` -> :class:`~gensight.nf.CrossAttentionPool`
  to ``M = grid**2`` latents of D channels. Invariant to hidden-neuron permutations of the
  input SIREN (attention over the flattened set of entries ignores their order).
- **Decoder** (:meth:`Inr2Array.decode`): every latent is decoded *separately* into a whole
  SIREN of the input's architecture, one MLP ``D -> H -> ReLU -> H -> ReLU -> numel`` per
  weight and bias tensor (Sitzmann et al.'s hypernetwork init, the authors' ``sitzmann``
  decoder: the last layer's weights are Kaiming-normal / 100; its bias is
  ``U(-1/n_in, 1/n_in)`` with ``n_in`` the decoded layer's fan-in for weight tensors and
  ``U(-1/H, 1/H)`` with H the decoder's own last fan-in for bias tensors).
- **Spatial rendering** (:meth:`Inr2Array.render`): the M decoded SIRENs tile the image as a
  ``grid x grid`` array: a pixel at coordinates ``(r, c)`` in [-1, 1]^2 is drawn by SIREN
  ``round((grid-1)(r+1)/2) * grid + round((grid-1)(c+1)/2)``.
- **Objective** (:func:`fit_inr2array`): MSE between the rendering of the decoded SIRENs and
  the input SIREN's *own* rendering on the zoo's pixel grid (not the dataset image), AdamW
  with a linear warm-up and a cosine decay, as the authors train it.

The latent array is ordered (latent m is always the m-th learned query), so a downstream
model may use positions over the latents: :class:`LatentTransformer` (a small pre-norm
Transformer encoder with a learned position embedding per latent, reading out latent 0, as
the authors' latent classifier).

Shapes: input ``WeightBatch (B, 1, ...)`` of standardized SIREN weights; latents
``(B, M, D)``; rendering ``(B, out, size, size)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensight.errors import GensightError
from gensight.weightspace import WeightBatch, WeightSpace


class Inr2ArrayError(GensightError, ValueError):
    """A setting or input Inr2Array cannot use."""


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Inr2ArrayError(f"{name} must be a positive integer; got {value!r}")
    return value


def tile_index(size: int, grid: int) -> Tensor:
    """Which of the ``grid * grid`` decoded SIRENs draws each pixel of a ``size x size``
    coordinate grid (:func:`gensight.zoo.siren.coordinate_grid`, row-major): ``(size**2,)``.

    Per axis, coordinate ``x`` in [-1, 1] goes to tile ``round((grid - 1) * (x + 1) / 2)``
    (the outer tiles cover half the width of the inner ones, as in the authors' code).
    """
    from gensight.zoo.siren import coordinate_grid

    coords = coordinate_grid(size, dtype=torch.float64)
    t = torch.round((grid - 1) * (coords + 1) / 2).long()
    return t[:, 0] * grid + t[:, 1]


class Inr2Array(nn.Module):
    """The Inr2Array autoencoder for SIRENs of weight space ``space`` (see the module
    docstring).

    Args:
        space: the SIRENs' weight space (an MLP: ``2 -> hidden... -> out``).
        channels: C of the NFT encoder (even; Fourier features give ``C`` channels).
        blocks, heads, ff_factor, dropout: the NFT blocks.
        fourier_scale: standard deviation of the Gaussian Fourier frequencies.
        grid: latents form a ``grid x grid`` array (M = grid**2), each decoded into the
            SIREN drawing one tile of the image.
        latent_dim: D (default C).
        decoder_hidden: H, width of the per-tensor decoder MLPs.
        omega_0: the SIRENs' frequency factor (the zoo's).
        seed: seeds the (fixed) Fourier frequencies.

    The authors' MNIST configuration: C = D = H = 256, 6 blocks (4 heads, ff 4, no dropout),
    scale 3, a 4x4 grid, 200k AdamW steps. The defaults here are CPU sized.
    """

    def __init__(self, space: WeightSpace, *, channels: int = 32, blocks: int = 2,
                 heads: int = 4, ff_factor: int = 2, dropout: float = 0.0,
                 fourier_scale: float = 3.0, grid: int = 2, latent_dim: int | None = None,
                 decoder_hidden: int = 64, omega_0: float = 30.0, seed: int = 0):
        from gensight.nf import (
            ChannelLayerNorm,
            CrossAttentionPool,
            GaussianFourierFeatures,
            LearnedPositionEmbedding,
            NFTBlock,
            WeightTokens,
        )

        super().__init__()
        _positive_int("channels", channels)
        _positive_int("blocks", blocks)
        _positive_int("grid", grid)
        _positive_int("decoder_hidden", decoder_hidden)
        if channels % 2:
            raise Inr2ArrayError(f"channels must be even (sine and cosine Fourier features); "
                                 f"got {channels}")
        if any(layer.filter_size != 1 for layer in space.layers) or space.neurons[0] != 2:
            raise Inr2ArrayError(f"Inr2Array decodes 2-D SIRENs (an MLP taking 2 "
                                 f"coordinates); got a space with neurons {space.neurons}")
        if not (isinstance(omega_0, (int, float)) and math.isfinite(omega_0) and omega_0 > 0):
            raise Inr2ArrayError(f"omega_0 must be a positive number; got {omega_0!r}")
        self.space, self.grid, self.omega_0 = space, grid, float(omega_0)
        d = latent_dim or channels
        _positive_int("latent_dim", d)
        self.num_latents, self.latent_dim = grid * grid, d
        self.encoder = nn.Sequential(
            GaussianFourierFeatures(1, channels // 2, fourier_scale, seed=seed),
            LearnedPositionEmbedding(space, channels),
            *(NFTBlock(space, channels, ff_factor=ff_factor, heads=heads, dropout=dropout)
              for _ in range(blocks)),
            ChannelLayerNorm(space, channels),
            WeightTokens(space),
        )
        self.pool = CrossAttentionPool(channels, self.num_latents, d)
        self.shapes = [s for layer in space.layers for s in (layer.weight_shape,
                                                             layer.bias_shape)]
        self.decoders = nn.ModuleList()
        for layer in space.layers:
            for shape, fan_in in ((layer.weight_shape, layer.n_in),
                                  (layer.bias_shape, decoder_hidden)):
                mlp = nn.Sequential(nn.Linear(d, decoder_hidden), nn.ReLU(),
                                    nn.Linear(decoder_hidden, decoder_hidden), nn.ReLU(),
                                    nn.Linear(decoder_hidden, math.prod(shape)))
                last = mlp[-1]
                nn.init.kaiming_normal_(last.weight, nonlinearity="relu")
                with torch.no_grad():
                    last.weight.div_(100.0)
                    last.bias.uniform_(-1.0 / fan_in, 1.0 / fan_in)
                self.decoders.append(mlp)

    def encode(self, batch: WeightBatch) -> Tensor:
        """Standardized SIREN weights ``(B, 1, ...)`` -> latents ``(B, M, D)``."""
        if batch.space != self.space:
            raise Inr2ArrayError(f"Inr2Array built for {self.space!r} got SIRENs of "
                                 f"{batch.space!r}")
        return self.pool(self.encoder(batch))

    def decode(self, latents: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Latents ``(B, M, D)`` -> the decoded SIRENs' weights ``[(B*M, out_i, in_i)]``
        and biases ``[(B*M, out_i)]``."""
        if latents.dim() != 3 or latents.shape[1:] != (self.num_latents, self.latent_dim):
            raise Inr2ArrayError(f"expected latents (B, {self.num_latents}, "
                                 f"{self.latent_dim}); got {tuple(latents.shape)}")
        flat = latents.reshape(-1, self.latent_dim)
        tensors = [dec(flat).view(-1, *shape) for dec, shape in zip(self.decoders, self.shapes,
                                                                     strict=True)]
        return tensors[0::2], tensors[1::2]

    def render(self, latents: Tensor, size: int) -> Tensor:
        """Latents ``(B, M, D)`` -> the tiled rendering ``(B, out, size, size)``."""
        from gensight.zoo.siren import _sine_forward, coordinate_grid

        weights, biases = self.decode(latents)
        b = latents.shape[0]
        coords = coordinate_grid(size, dtype=latents.dtype, device=latents.device)
        out = _sine_forward(weights, biases, self.omega_0, coords)    # (B*M, out, P)
        out = out.view(b, self.num_latents, out.shape[1], -1)
        idx = tile_index(size, self.grid).to(latents.device)          # (P,)
        picked = out.gather(1, idx.view(1, 1, 1, -1).expand(b, 1, out.shape[2], -1))
        return picked.view(b, out.shape[2], size, size)

    def forward(self, batch: WeightBatch, size: int) -> Tensor:
        return self.render(self.encode(batch), size)


class LatentTransformer(nn.Module):
    """A classifier of Inr2Array latent arrays (the authors' latent classifier, CPU sized):
    ``Linear(D, d_model)`` + a learned embedding per latent position -> ``depth`` pre-norm
    Transformer encoder layers (GELU, feed-forward ``2 * d_model``) -> latent 0 -> ``Linear,
    ReLU, Linear(n_classes)``.

    ``forward``: ``(B, M, D) -> (B, n_classes)``.
    """

    def __init__(self, num_latents: int, latent_dim: int, n_classes: int, *,
                 d_model: int = 64, depth: int = 2, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.inp = nn.Linear(latent_dim, d_model)
        self.pos = nn.Parameter(torch.zeros(num_latents, d_model))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, 2 * d_model, dropout,
                                           activation="gelu", batch_first=True,
                                           norm_first=True)
        self.body = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, d_model),
                                  nn.ReLU(), nn.Linear(d_model, n_classes))

    def forward(self, latents: Tensor) -> Tensor:
        return self.head(self.body(self.inp(latents) + self.pos)[:, 0])


def fit_inr2array(model: Inr2Array, weights: WeightBatch, targets: Tensor, *,
                  steps: int = 1000, batch_size: int = 32, lr: float = 1e-3,
                  weight_decay: float = 0.01, warmup: int | None = None, seed: int = 0,
                  val: tuple[WeightBatch, Tensor] | None = None, eval_every: int = 100,
                  progress: Callable[[int, int, float], None] | None = None
                  ) -> list[tuple[int, float, float]]:
    """Train ``model`` to reconstruct the renderings ``targets (B, out, size, size)`` of the
    SIRENs ``weights`` (standardized, ``(B, 1, ...)``): AdamW, linear warm-up over
    ``warmup`` steps (default ``steps // 20``), cosine decay to 0, minibatches drawn without
    replacement per epoch. With ``val = (weights, targets)`` the checkpoint with the lowest
    validation MSE is kept (evaluated every ``eval_every`` steps); ``progress(step, steps,
    val_mse)`` is called then.

    Returns ``[(step, mean train MSE since the last evaluation, val MSE or NaN)]``; ``model``
    ends in eval mode.
    """
    import copy

    _positive_int("steps", steps)
    _positive_int("batch_size", batch_size)
    _positive_int("eval_every", eval_every)
    if targets.dim() != 4 or targets.shape[0] != len(weights) or \
            targets.shape[-1] != targets.shape[-2]:
        raise Inr2ArrayError(f"targets must be (B, out, size, size) renderings of the "
                             f"{len(weights)} SIRENs; got {tuple(targets.shape)}")
    size = targets.shape[-1]
    warmup = max(1, steps // 20) if warmup is None else warmup
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    n = len(weights)
    order, pos = torch.randperm(n, generator=gen), 0
    history, running = [], []
    best, best_state = math.inf, None
    for step in range(1, steps + 1):
        model.train()
        if pos + batch_size > n and pos > 0:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        loss = F.mse_loss(model(weights[idx], size), targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running.append(float(loss.detach()))
        if step % eval_every == 0 or step == steps:
            v = float("nan")
            if val is not None:
                v = reconstruction_mse(model, *val)
                if v <= best:
                    best, best_state = v, copy.deepcopy(model.state_dict())
            history.append((step, float(sum(running) / len(running)), v))
            running = []
            if progress is not None:
                progress(step, steps, v)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


def reconstruction_mse(model: Inr2Array, weights: WeightBatch, targets: Tensor,
                       chunk: int = 256) -> float:
    """Mean squared error of ``model``'s reconstructions of ``targets`` (eval mode, no grad)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for lo in range(0, len(weights), chunk):
            out = model(weights[lo:lo + chunk], targets.shape[-1])
            total += float(F.mse_loss(out, targets[lo:lo + chunk], reduction="sum"))
            count += out.numel()
    model.train(was)
    return total / max(count, 1)


def embed(model: Inr2Array, weights: WeightBatch, chunk: int = 256) -> Tensor:
    """Latent arrays ``(B, M, D)`` of standardized SIREN weights (eval mode, no grad)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = torch.cat([model.encode(weights[lo:lo + chunk])
                         for lo in range(0, len(weights), chunk)])
    model.train(was)
    return out
