"""Mask predictors: from the initial weights ``theta_0`` alone, a logit per weight; the mask
at a density is the per-layer top-k of the logits (exact per-layer counts, ties by index).

- :class:`MaskNFN`: an equivariant neural functional (arXiv 2302.14040, Sec. 2: NF-Layers
  ``HNPLinear`` or ``NPLinear`` with pointwise ReLUs, no pooling) from a 3-channel
  weight-space feature map of ``theta_0`` to a 1-channel one: the logits. Permuting the
  hidden neurons of ``theta_0`` permutes the logits, hence the mask, the same way.
- :class:`MaskMLP`: the non-equivariant baseline, an MLP on the flattened features with one
  output per weight (trained with random hidden-neuron permutations as augmentation).

:class:`MaskPredictor` fits either on IMP masks (:mod:`gensight.tickets.store`):

- ``objective="bce"``: class-balanced binary cross-entropy against the IMP mask of each
  stored round (positives weighted ``1 / (2 d_i)``, negatives ``1 / (2 (1 - d_i))`` with
  ``d_i`` the layer's density; the mean over each layer, then over layers).
- ``objective="bce+unroll"``: the same plus ``unroll_weight`` times the training loss of
  the masked network after ``unroll_steps`` unrolled SGD steps from ``theta_0 * m``, where
  ``m`` is the straight-through top-k of the logits (:class:`~gensight.tickets.masks.
  StraightThroughTopK`); gradients flow through the whole unrolled training (second order).
  The masked network uses the zoo's activation (``fit(..., activation=...)``). This is the
  "task" objective of research note 04, Sec. 3 (B); the NFN paper trains the cVAE below
  instead (see the README section "Winning-ticket masks from the initialization").
- ``objective="cvae"``: the NFN paper's own objective (arXiv 2302.14040, Sec. 3.3 and
  App. D.2): a conditional VAE (:class:`MaskCVAE`) whose encoder ``q(Z | theta_0, M)`` and
  decoder ``p(M | theta_0, Z)`` are both NF-Layer stacks, with a latent ``Z`` of ``latent``
  channels over the whole weight space and an isotropic Gaussian prior, trained on the ELBO
  ``E_q[ln p(M | theta_0, z)] - KL(q || p)``. The paper does not state the mask likelihood;
  here it is Bernoulli (binary cross-entropy with the decoder's logits, not class-balanced).
  The loss is a per-layer reweighted negative ELBO: the reconstruction term is the mean over
  each layer's weights, the KL term the sum over latent channels of the mean over each
  layer's entries (weights and biases), each then averaged over layers with equal weight
  (proportional to the ELBO only when all layers have the same size), the KL times
  ``kl_weight``. At prediction the latent is the prior's mean ``z = 0`` (the paper reads its
  masks "for a fixed latent value"), or a draw from the prior (``z_seed``), which samples
  different tickets for one initialization.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensight.errors import GensightError
from gensight.nf import Elementwise, HNPLinear, NPLinear
from gensight.tickets.masks import connected_topk, layer_topk, straight_through_topk
from gensight.weightspace import WeightBatch, WeightSpace, permute, random_permutation

KINDS = ("hnp", "np", "mlp")
OBJECTIVES = ("bce", "bce+unroll", "cvae")
IN_CHANNELS = 3
DEFAULT_CHANNELS = {"hnp": (16,), "np": (32, 32)}


class PredictorError(GensightError):
    """Bad arguments to a mask predictor, or a predictor used before it is fitted."""


def weight_features(space: WeightSpace, init_w: Sequence[Tensor], init_b: Sequence[Tensor],
                    densities: Tensor) -> WeightBatch:
    """The predictors' input: a 3-channel :class:`WeightBatch` of ``theta_0``.

    ``init_w[i]: (M, n_out, n_in)``, ``init_b[i]: (M, n_out)``, ``densities: (M, L)`` the
    target density of each layer. Channels: ``theta * sqrt(n_in)`` (PyTorch's default init
    draws ``U(-1/sqrt(n_in), 1/sqrt(n_in))``-scaled weights, so every layer has unit scale),
    ``|theta| * sqrt(n_in)``, and ``log d_i`` constant over layer i's blocks. Each channel is
    an elementwise map or a per-block constant, so the map is permutation equivariant.
    """
    weights, biases = [], []
    for i, (w, b) in enumerate(zip(init_w, init_b, strict=True)):
        s = math.sqrt(w.shape[2])
        ld = densities[:, i].log().to(w.dtype)
        weights.append(torch.stack([w * s, w.abs() * s,
                                    ld.view(-1, 1, 1).expand_as(w)], 1))
        biases.append(torch.stack([b * s, b.abs() * s, ld.view(-1, 1).expand_as(b)], 1))
    return WeightBatch(space, weights, biases, check_finite=False)


def _nf_stack(space: WeightSpace, symmetry: str, widths: Sequence[int],
              io_embed: bool) -> nn.Sequential:
    """NF-Layers ``widths[0] -> ... -> widths[-1]`` with ReLUs between them."""
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        if symmetry == "hnp":
            layers.append(HNPLinear(space, widths[i], widths[i + 1]))
        else:
            layers.append(NPLinear(space, widths[i], widths[i + 1],
                                   io_embed=io_embed and i == 0))
        if i < len(widths) - 2:
            layers.append(Elementwise(nn.ReLU()))
    return nn.Sequential(*layers)


def _cat_channels(a: WeightBatch, b: WeightBatch) -> WeightBatch:
    """Concatenate two weight-space feature maps ``(B, C_a, ...)``, ``(B, C_b, ...)`` along
    the channels."""
    return a.zip_map(b, lambda x, y: torch.cat([x, y], 1))


class MaskNFN(nn.Module):
    """NF-Layers ``3 -> channels[0] -> ... -> 1`` with ReLUs between them (no pooling).

    ``forward(WeightBatch (B, 3, ...)) -> list of logits (B, n_out, n_in)`` per layer; bias
    outputs are discarded (biases are never pruned). ``symmetry="hnp"`` uses
    :class:`~gensight.nf.HNPLinear`; ``"np"`` :class:`~gensight.nf.NPLinear` (equivariant to
    input and output neuron permutations as well unless ``io_embed``).
    """

    def __init__(self, space: WeightSpace, symmetry: str = "hnp",
                 channels: Sequence[int] = (32, 32), io_embed: bool = False):
        super().__init__()
        self.net = _nf_stack(space, symmetry, [IN_CHANNELS, *channels, 1], io_embed)

    def forward(self, feats: WeightBatch) -> list[Tensor]:
        return [w[:, 0] for w in self.net(feats).weights]


class MaskCVAE(nn.Module):
    """The NFN paper's conditional VAE of winning tickets (arXiv 2302.14040, Sec. 3.3 and
    App. D.2), both halves NF-Layer stacks (``symmetry``, ``channels`` as in
    :class:`MaskNFN`).

    - :meth:`encode`: ``q(Z | theta_0, M)`` from the 3 feature channels of ``theta_0`` and
      the mask (1 channel; biases, never pruned, read 1) to ``2 * latent`` channels over the
      whole weight space: the mean and log-variance of ``Z``.
    - :meth:`decode`: ``p(M | theta_0, Z)`` from the features and ``Z`` (``3 + latent``
      channels) to one logit per weight ``(B, n_out, n_in)`` per layer.
    - :meth:`elbo`: the two terms of the training loss, with one reparameterized draw.
    - ``forward(feats)`` decodes at the prior's mean ``Z = 0``: the predictor's logits.

    Both halves are equivariant, so a hidden-neuron permutation of ``theta_0`` and ``M``
    permutes ``Z``'s posterior, and one of ``theta_0`` permutes the logits at ``Z = 0``.
    """

    def __init__(self, space: WeightSpace, symmetry: str = "hnp",
                 channels: Sequence[int] = (32, 32), latent: int = 5,
                 io_embed: bool = False):
        super().__init__()
        self.latent = latent
        self.encoder = _nf_stack(space, symmetry, [IN_CHANNELS + 1, *channels, 2 * latent],
                                 io_embed)
        self.decoder = _nf_stack(space, symmetry, [IN_CHANNELS + latent, *channels, 1],
                                 io_embed)

    def encode(self, feats: WeightBatch, masks: Sequence[Tensor]) -> tuple[WeightBatch,
                                                                           WeightBatch]:
        """``(mean, log-variance)`` of ``q(Z | theta_0, M)``, each ``(B, latent, ...)``;
        ``masks[i]: (B, n_out, n_in)`` (bool or 0/1)."""
        dtype = feats.weights[0].dtype
        m = WeightBatch(feats.space, [t.unsqueeze(1).to(dtype) for t in masks],
                        [torch.ones_like(b[:, :1]) for b in feats.biases], check_finite=False)
        out = self.encoder(_cat_channels(feats, m))
        c = self.latent
        return out.map(lambda t: t[:, :c]), out.map(lambda t: t[:, c:])

    def decode(self, feats: WeightBatch, z: WeightBatch) -> list[Tensor]:
        """Logits ``(B, n_out, n_in)`` per layer of ``p(M | theta_0, Z)``; ``z: (B or 1,
        latent, ...)`` (one latent broadcast over the batch)."""
        if z.batch_size != feats.batch_size:
            z = z.map(lambda t: t.expand(feats.batch_size, *t.shape[1:]))
        return [w[:, 0] for w in self.decoder(_cat_channels(feats, z)).weights]

    def prior_sample(self, feats: WeightBatch, generator: torch.Generator | None = None,
                     scale: float = 1.0, batch_size: int | None = None) -> WeightBatch:
        """``Z ~ N(0, scale^2 I)`` with ``latent`` channels over ``feats``' weight space,
        ``batch_size`` draws (default: ``feats``' batch size; ``scale = 0`` gives the prior's
        mean). Drawn on the CPU (``generator``'s device) and moved to ``feats``' device."""
        n = feats.batch_size if batch_size is None else batch_size

        def draw(t: Tensor) -> Tensor:
            shape = (n, self.latent, *t.shape[2:])
            if scale == 0:
                return t.new_zeros(shape)
            gen_device = generator.device if generator is not None else t.device
            return (scale * torch.randn(shape, generator=generator, dtype=t.dtype,
                                        device=gen_device)).to(t.device)
        return feats.map(draw)

    def elbo(self, feats: WeightBatch, masks: Sequence[Tensor],
             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The two terms of the negative ELBO with one reparameterized draw ``z = mean +
        exp(logvar / 2) * eps``: ``(bernoulli_nll(decode(feats, z), masks), gaussian_kl(
        mean, logvar))`` (see those functions for the per-layer averaging)."""
        mean, logvar = self.encode(feats, masks)
        eps = self.prior_sample(feats, generator)
        z = mean + logvar.map(lambda t: (0.5 * t).exp()) * eps
        return bernoulli_nll(self.decode(feats, z), masks), gaussian_kl(mean, logvar)

    def forward(self, feats: WeightBatch) -> list[Tensor]:
        return self.decode(feats, self.prior_sample(feats, scale=0.0))


def gaussian_kl(mean: WeightBatch, logvar: WeightBatch) -> Tensor:
    """``KL(N(mean, exp(logvar)) || N(0, I))`` per entry: summed over the latent channels,
    averaged over each layer's entries (weights and biases), then over layers."""
    total = 0.0
    for mw, mb, lw, lb in zip(mean.weights, mean.biases, logvar.weights, logvar.biases,
                              strict=True):
        kw = 0.5 * (mw ** 2 + lw.exp() - 1 - lw).sum(1)
        kb = 0.5 * (mb ** 2 + lb.exp() - 1 - lb).sum(1)
        total = total + (kw.flatten(1).sum(1) + kb.sum(1)) / (kw[0].numel() + kb[0].numel())
    return (total / len(mean.weights)).mean()


def bernoulli_nll(logits: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
    """``-ln p(M | logits)`` of a Bernoulli mask, the mean over each layer's weights, then
    over layers; ``logits[i], targets[i]: (B, n_out, n_in)``."""
    return sum(F.binary_cross_entropy_with_logits(z, t.to(z.dtype))
               for z, t in zip(logits, targets, strict=True)) / len(logits)


class MaskMLP(nn.Module):
    """The non-equivariant baseline: ``[flattened channels 0-1 of the features, per-layer log
    densities] -> Linear -> ReLU -> Linear -> ReLU -> Linear`` with one output per weight.

    ``forward(WeightBatch (B, 3, ...)) -> list of logits (B, n_out, n_in)`` per layer.
    """

    def __init__(self, space: WeightSpace, hidden: int = 256):
        super().__init__()
        self.space = space
        n_in = 2 * space.num_params + space.n_layers
        self.n_weights = [math.prod(ly.weight_shape) for ly in space.layers]
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, sum(self.n_weights)))

    def forward(self, feats: WeightBatch) -> list[Tensor]:
        b = feats.batch_size
        x = torch.cat([t[:, :2].reshape(b, -1) for t in feats.tensors()]
                      + [torch.stack([w[:, 2, 0, 0] for w in feats.weights], 1)], 1)
        out = self.net(x).split(self.n_weights, 1)
        return [o.view(b, *ly.weight_shape) for o, ly in zip(out, self.space.layers,
                                                              strict=True)]


def balanced_bce(logits: Sequence[Tensor], targets: Sequence[Tensor],
                 layer_density: Tensor) -> Tensor:
    """Class-balanced BCE: ``logits[i], targets[i]: (B, n_out, n_in)``, ``layer_density:
    (B, L)``; positives weighted ``1/(2 d)``, negatives ``1/(2 (1 - d))``; mean per layer,
    then over layers."""
    total = 0.0
    for i, (z, t) in enumerate(zip(logits, targets, strict=True)):
        d = layer_density[:, i].view(-1, 1, 1).to(z.dtype)
        t = t.to(z.dtype)
        weight = t / (2 * d) + (1 - t) / (2 * (1 - d).clamp_min(1e-6))
        total = total + F.binary_cross_entropy_with_logits(z, t, weight=weight)
    return total / len(logits)


def _activation(activation: str | Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    from gensight.zoo.train import _ACT_FUNCS

    if callable(activation):
        return activation
    if activation not in _ACT_FUNCS:
        raise PredictorError(f"activation must be one of {', '.join(_ACT_FUNCS)}; got "
                             f"{activation!r}")
    return _ACT_FUNCS[activation]


def mlp_forward(weights: Sequence[Tensor], biases: Sequence[Tensor], x: Tensor,
                activation: str | Callable[[Tensor], Tensor] = F.relu) -> Tensor:
    """Logits ``(B, N, classes)`` of B MLPs on a shared batch ``x: (N, *input)``, with
    ``activation`` (a function, or a name such as ``"tanh"``) between the layers."""
    activation = _activation(activation)
    h = x.reshape(1, x.shape[0], -1).expand(weights[0].shape[0], -1, -1)
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if i < len(weights) - 1:
            h = activation(h)
    return h


def unrolled_loss(masks: Sequence[Tensor], init_w: Sequence[Tensor], init_b: Sequence[Tensor],
                  batches: Sequence[tuple[Tensor, Tensor]], final: tuple[Tensor, Tensor],
                  lr: float, activation: str | Callable[[Tensor], Tensor] = "relu"
                  ) -> Tensor:
    """Mean training loss of B masked MLPs (``activation`` between the layers) after
    ``len(batches)`` SGD steps.

    Weights ``u`` start at ``theta_0``; each step uses the effective weights ``m * u`` and
    updates ``u <- u - lr * dL/du`` and the biases; the graph is kept (``create_graph``) so
    the returned loss on ``final`` is differentiable in the masks ``masks[i]: (B, n_out,
    n_in)``."""
    act = _activation(activation)
    u = [w.detach() for w in init_w]
    b = [v.detach().clone().requires_grad_(True) for v in init_b]
    u = [w.clone().requires_grad_(True) for w in u]
    for x, y in batches:
        eff = [m * w for m, w in zip(masks, u, strict=True)]
        logits = mlp_forward(eff, b, x, act)
        loss = F.cross_entropy(logits.transpose(1, 2), y.expand(logits.shape[0], -1),
                               reduction="none").mean(1).sum()
        grads = torch.autograd.grad(loss, [*u, *b], create_graph=True)
        n = len(u)
        u = [w - lr * g for w, g in zip(u, grads[:n], strict=True)]
        b = [v - lr * g for v, g in zip(b, grads[n:], strict=True)]
    x, y = final
    logits = mlp_forward([m * w for m, w in zip(masks, u, strict=True)], b, x, act)
    return F.cross_entropy(logits.transpose(1, 2), y.expand(logits.shape[0], -1))


class MaskPredictor:
    """Predict winning-ticket masks from initializations (scikit-learn style).

    Args:
        kind: ``"hnp"`` | ``"np"`` (:class:`MaskNFN`) or ``"mlp"`` (:class:`MaskMLP`).
        channels: NF-Layer widths (NFN; default ``DEFAULT_CHANNELS[kind]``: HNP layers on
            a 64-input MLP have ~13M parameters at 32 -> 32 channels, so HNP defaults to one
            hidden layer of 16 channels, NP to 32, 32); ``hidden``: MLP width.
        objective: ``"bce"``, ``"bce+unroll"`` or ``"cvae"`` (module docstring; ``"cvae"``
            needs an NFN kind).
        latent, kl_weight: the CVAE's latent channels (the paper's 5) and the KL term's
            weight in the ELBO (``objective="cvae"``).
        epochs, lr, batch_size: Adam on the predictor's parameters.
        unroll_steps, unroll_lr, unroll_batch, unroll_weight, unroll_every: the unrolled
            objective: SGD steps of the masked network, its learning rate, examples per step,
            the loss weight, and one unrolled batch every ``unroll_every`` batches.
        augment: random hidden-neuron permutations of each training example (default: only
            for the MLP, which is not equivariant).
        seed: seeds the initialization, the example order and the augmentations.

    Fitted attributes: ``space_``, ``model_``, ``rounds_`` (the rounds trained on),
    ``counts_`` (the per-layer counts of every round, as given to :meth:`fit`),
    ``history_`` (mean loss per epoch), ``activation_`` (the masked networks' activation).
    """

    def __init__(self, kind: str = "hnp", *, channels: Sequence[int] | None = None,
                 hidden: int = 256, io_embed: bool = False, objective: str = "bce",
                 epochs: int = 30, lr: float = 1e-3, batch_size: int = 32,
                 unroll_steps: int = 10, unroll_lr: float = 0.5, unroll_batch: int = 128,
                 unroll_weight: float = 1.0, unroll_every: int = 4,
                 latent: int = 5, kl_weight: float = 1.0,
                 augment: bool | None = None, seed: int = 0):
        if kind not in KINDS:
            raise PredictorError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
        if objective not in OBJECTIVES:
            raise PredictorError(f"objective must be one of {', '.join(OBJECTIVES)}; got "
                                 f"{objective!r}")
        if objective == "cvae" and kind == "mlp":
            raise PredictorError("objective 'cvae' needs an NFN kind (hnp or np); got 'mlp'")
        if epochs < 0 or batch_size < 1 or lr <= 0 or unroll_steps < 1 or unroll_every < 1:
            raise PredictorError("epochs must be >= 0, batch_size, unroll_steps and "
                                 "unroll_every >= 1, lr > 0")
        if (not isinstance(latent, int) or isinstance(latent, bool) or latent < 1
                or not isinstance(kl_weight, (int, float)) or not math.isfinite(kl_weight)
                or kl_weight < 0):
            raise PredictorError(f"latent must be an integer >= 1 and kl_weight a finite "
                                 f"number >= 0; got latent {latent!r}, kl_weight "
                                 f"{kl_weight!r}")
        if channels is None:
            channels = DEFAULT_CHANNELS.get(kind, ())
        self.kind, self.channels, self.hidden, self.io_embed = kind, tuple(channels), hidden, \
            io_embed
        self.objective, self.epochs, self.lr, self.batch_size = objective, epochs, lr, \
            batch_size
        self.unroll_steps, self.unroll_lr, self.unroll_batch = unroll_steps, unroll_lr, \
            unroll_batch
        self.unroll_weight, self.unroll_every = unroll_weight, unroll_every
        self.latent, self.kl_weight = latent, kl_weight
        self.augment = (kind == "mlp") if augment is None else augment
        self.seed = seed

    # --- model --------------------------------------------------------------------------
    def _make_model(self, space: WeightSpace) -> nn.Module:
        if self.kind == "mlp":
            return MaskMLP(space, self.hidden)
        if self.objective == "cvae":
            return MaskCVAE(space, self.kind, self.channels, self.latent, self.io_embed)
        return MaskNFN(space, self.kind, self.channels, self.io_embed)

    def get_params(self) -> dict:
        return {"kind": self.kind, "channels": list(self.channels), "hidden": self.hidden,
                "io_embed": self.io_embed, "objective": self.objective,
                "epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                "unroll_steps": self.unroll_steps, "unroll_lr": self.unroll_lr,
                "unroll_batch": self.unroll_batch, "unroll_weight": self.unroll_weight,
                "unroll_every": self.unroll_every, "latent": self.latent,
                "kl_weight": self.kl_weight, "augment": self.augment,
                "seed": self.seed}

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise PredictorError("this MaskPredictor is not fitted; call fit() or load() first")

    # --- fit ----------------------------------------------------------------------------
    def fit(self, space: WeightSpace, init_w: Sequence[Tensor], init_b: Sequence[Tensor],
            masks: Mapping[int, Sequence[Tensor]], counts: Sequence[Sequence[int]], *,
            dataset=None, activation: str = "relu",
            progress: Callable[[int, int, float], None] | None = None) -> MaskPredictor:
        """Fit on M initializations and their IMP masks.

        ``init_w[i]: (M, n_out, n_in)``, ``init_b[i]: (M, n_out)``; ``masks[k][i]``: bool
        ``(M, n_out, n_in)``, the IMP mask of round k; ``counts[k][i]``: weights kept in
        layer i at round k. ``dataset`` (a :class:`gensight.data.Dataset`) is needed for
        ``objective="bce+unroll"``; ``activation`` is the zoo's (``config.activation``),
        that of the masked networks the unrolled objective trains. ``progress(epoch,
        epochs, loss)`` after each epoch.
        """
        if not isinstance(activation, str):
            raise PredictorError(f"activation must be a name such as 'relu'; got "
                                 f"{activation!r:.60}")
        act = _activation(activation)
        if not masks:
            raise PredictorError("fit needs the masks of at least one round")
        if self.objective == "bce+unroll" and dataset is None:
            raise PredictorError("objective 'bce+unroll' needs the dataset to unroll training on")
        m = init_w[0].shape[0]
        for k, mk in masks.items():
            if len(mk) != space.n_layers or mk[0].shape[0] != m:
                raise PredictorError(f"masks of round {k} do not match the {m} inits and "
                                     f"{space.n_layers} layers")
        g = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = self._make_model(space).to(init_w[0].dtype)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        sizes = [math.prod(ly.weight_shape) for ly in space.layers]
        rounds = sorted(masks)
        history = []
        x_train = y_train = None
        if dataset is not None:
            x_train, y_train = dataset.x_train.to(init_w[0].dtype), dataset.y_train
        for epoch in range(self.epochs):
            batches = []
            for k in rounds:
                for idx in torch.randperm(m, generator=g).split(self.batch_size):
                    batches.append((k, idx))
            order = torch.randperm(len(batches), generator=g).tolist()
            total, n_batches = 0.0, 0
            for step, j in enumerate(order):
                k, idx = batches[j]
                w = [t[idx] for t in init_w]
                b = [t[idx] for t in init_b]
                target = [t[idx] for t in masks[k]]
                if self.augment:
                    w, b, target = _augment(space, w, b, target, g)
                dens = torch.tensor([c / n for c, n in zip(counts[k], sizes, strict=True)])
                dens = dens.expand(len(idx), -1)
                feats = weight_features(space, w, b, dens)
                if self.objective == "cvae":
                    nll, kl = model.elbo(feats, target, g)
                    loss = nll + self.kl_weight * kl
                else:
                    logits = model(feats)
                    loss = balanced_bce(logits, target, dens)
                if self.objective == "bce+unroll" and step % self.unroll_every == 0:
                    st = [straight_through_topk(z.reshape(len(idx), -1), c).view(z.shape)
                          for z, c in zip(logits, counts[k], strict=True)]
                    n = len(y_train)
                    picks = [torch.randint(n, (self.unroll_batch,), generator=g)
                             for _ in range(self.unroll_steps + 1)]
                    data = [(x_train[p], y_train[p]) for p in picks]
                    loss = loss + self.unroll_weight * unrolled_loss(
                        st, w, b, data[:-1], data[-1], self.unroll_lr, act)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item()
                n_batches += 1
            history.append(total / max(1, n_batches))
            if progress is not None:
                progress(epoch + 1, self.epochs, history[-1])
        self.space_ = space
        self.model_ = model.eval()
        self.rounds_ = rounds
        self.counts_ = [list(map(int, c)) for c in counts]
        self.history_ = history
        self.activation_ = activation
        return self

    # --- predict ------------------------------------------------------------------------
    def decision_function(self, init_w: Sequence[Tensor], init_b: Sequence[Tensor],
                          counts: Sequence[int], *, z_seed: int | None = None
                          ) -> list[Tensor]:
        """Logits ``(M, n_out, n_in)`` per layer for the per-layer ``counts`` (the density
        channel of the features). A CVAE decodes at ``Z = 0``, or at one draw from the
        prior seeded by ``z_seed``, shared by all M inits (a different ticket per seed; an
        init's mask does not depend on the other inits)."""
        self._check_fitted()
        sizes = [math.prod(ly.weight_shape) for ly in self.space_.layers]
        if len(counts) != len(sizes) or any(not 1 <= c <= n for c, n in zip(counts, sizes,
                                                                            strict=True)):
            raise PredictorError(f"counts {list(counts)} do not fit layers of {sizes} weights")
        dtype = next(self.model_.parameters()).dtype
        m = init_w[0].shape[0]
        if z_seed is not None and not isinstance(self.model_, MaskCVAE):
            raise PredictorError(f"z_seed needs a predictor fitted with objective 'cvae'; "
                                 f"this one has {self.objective!r}")
        if z_seed is not None and (not isinstance(z_seed, int) or isinstance(z_seed, bool)
                                   or not 0 <= z_seed < 2**63):
            raise PredictorError(f"z_seed must be an integer in 0..2^63-1; got {z_seed!r}")
        dens = torch.tensor([c / n for c, n in zip(counts, sizes, strict=True)]).expand(m, -1)
        with torch.no_grad():
            feats = weight_features(self.space_, [w.to(dtype) for w in init_w],
                                    [b.to(dtype) for b in init_b], dens)
            if z_seed is None:
                return self.model_(feats)
            # one latent draw shared by every init: a mask depends on (init, z_seed) only
            g = torch.Generator().manual_seed(z_seed)
            return self.model_.decode(feats, self.model_.prior_sample(feats, g, batch_size=1))

    def predict(self, init_w: Sequence[Tensor], init_b: Sequence[Tensor],
                counts: Sequence[int], *, z_seed: int | None = None,
                connected: bool = False) -> list[Tensor]:
        """Bool masks ``(M, n_out, n_in)`` keeping exactly ``counts[i]`` weights of layer i
        (per-layer top-k of :meth:`decision_function`, ties by index); ``z_seed`` as
        there. ``connected=True`` decodes with :func:`~gensight.tickets.masks.connected_topk`
        instead, which moves the budget of weights into hidden units without kept outgoing
        weights, or out of units without kept incoming weights, to connected units where
        it can (our addition, not the paper's; it matters at the lowest densities)."""
        logits = self.decision_function(init_w, init_b, counts, z_seed=z_seed)
        return connected_topk(logits, counts) if connected else layer_topk(logits, counts)

    # --- persistence --------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the fitted model to ``path`` (safetensors; parameters and settings as
        metadata), atomically."""
        from safetensors.torch import save

        from gensight.zoo.store import atomic_write_bytes

        self._check_fitted()
        meta = {"params": json.dumps(self.get_params()),
                "space": json.dumps(self.space_.to_dict()),
                "rounds": json.dumps(self.rounds_), "counts": json.dumps(self.counts_),
                "history": json.dumps(self.history_),
                "activation": json.dumps(self.activation_)}
        state = {k: v.detach().contiguous() for k, v in self.model_.state_dict().items()}
        from pathlib import Path

        atomic_write_bytes(Path(path), save(state, metadata=meta))

    @classmethod
    def load(cls, path) -> MaskPredictor:
        """Read a predictor written by :meth:`save`."""
        from pathlib import Path

        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise PredictorError(f"no predictor file {str(path)!r}")
        try:
            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata() or {}
            state = load_file(str(path))
            params = json.loads(meta["params"])
            space = WeightSpace.from_dict(json.loads(meta["space"]))
        except (SafetensorError, KeyError, ValueError, TypeError, AttributeError,
                OSError) as exc:
            raise PredictorError(f"{str(path)!r} is not a gensight mask predictor: "
                                 f"{exc}") from None
        try:
            if not isinstance(params, dict):
                raise TypeError(f"its params are a {type(params).__name__}, not a table")
            if not state:
                raise ValueError("it holds no tensors")
            params["channels"] = tuple(params["channels"])
            est = cls(**params)
            model = est._make_model(space).to(next(iter(state.values())).dtype)
            model.load_state_dict(state)
            est.space_, est.model_ = space, model.eval()
            est.rounds_ = json.loads(meta.get("rounds", "[]"))
            est.counts_ = json.loads(meta.get("counts", "[]"))
            est.history_ = json.loads(meta.get("history", "[]"))
            est.activation_ = json.loads(meta.get("activation", '"relu"'))
        except (RuntimeError, TypeError, ValueError, KeyError, AttributeError, StopIteration,
                PredictorError) as exc:
            why = " ".join(str(exc).split())  # load_state_dict's message spans lines
            raise PredictorError(f"{str(path)!r} is not a valid gensight mask predictor: "
                                 f"{why[:300]}") from None
        return est


def _augment(space: WeightSpace, w: list[Tensor], b: list[Tensor], target: list[Tensor],
             g: torch.Generator) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """The same random hidden-neuron permutation of each example's weights and mask."""
    perm = random_permutation(space, "hnp", batch_size=w[0].shape[0], generator=g)
    wb = permute(WeightBatch(space, [t.unsqueeze(1) for t in w], [t.unsqueeze(1) for t in b],
                             check_finite=False), perm)
    mb = permute(WeightBatch(space, [t.unsqueeze(1).to(w[0].dtype) for t in target],
                             [torch.zeros_like(t).unsqueeze(1) for t in b],
                             check_finite=False), perm)
    return ([t[:, 0] for t in wb.weights], [t[:, 0] for t in wb.biases],
            [t[:, 0] > 0.5 for t in mb.weights])
