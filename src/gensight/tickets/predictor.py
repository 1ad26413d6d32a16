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
  "task" objective of research note 04, Sec. 3 (B); whether it is the NFN paper's exact
  objective could not be checked (see the README section "Winning-ticket masks from the
  initialization").
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
from gensight.tickets.masks import layer_topk, straight_through_topk
from gensight.weightspace import WeightBatch, WeightSpace, permute, random_permutation

KINDS = ("hnp", "np", "mlp")
OBJECTIVES = ("bce", "bce+unroll")
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
        widths = [IN_CHANNELS, *channels, 1]
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            if symmetry == "hnp":
                layers.append(HNPLinear(space, widths[i], widths[i + 1]))
            else:
                layers.append(NPLinear(space, widths[i], widths[i + 1],
                                       io_embed=io_embed and i == 0))
            if i < len(widths) - 2:
                layers.append(Elementwise(nn.ReLU()))
        self.net = nn.Sequential(*layers)

    def forward(self, feats: WeightBatch) -> list[Tensor]:
        return [w[:, 0] for w in self.net(feats).weights]


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
        objective: ``"bce"`` or ``"bce+unroll"`` (module docstring).
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
                 augment: bool | None = None, seed: int = 0):
        if kind not in KINDS:
            raise PredictorError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
        if objective not in OBJECTIVES:
            raise PredictorError(f"objective must be one of {', '.join(OBJECTIVES)}; got "
                                 f"{objective!r}")
        if epochs < 0 or batch_size < 1 or lr <= 0 or unroll_steps < 1 or unroll_every < 1:
            raise PredictorError("epochs must be >= 0, batch_size, unroll_steps and "
                                 "unroll_every >= 1, lr > 0")
        if channels is None:
            channels = DEFAULT_CHANNELS.get(kind, ())
        self.kind, self.channels, self.hidden, self.io_embed = kind, tuple(channels), hidden, \
            io_embed
        self.objective, self.epochs, self.lr, self.batch_size = objective, epochs, lr, \
            batch_size
        self.unroll_steps, self.unroll_lr, self.unroll_batch = unroll_steps, unroll_lr, \
            unroll_batch
        self.unroll_weight, self.unroll_every = unroll_weight, unroll_every
        self.augment = (kind == "mlp") if augment is None else augment
        self.seed = seed

    # --- model --------------------------------------------------------------------------
    def _make_model(self, space: WeightSpace) -> nn.Module:
        if self.kind == "mlp":
            return MaskMLP(space, self.hidden)
        return MaskNFN(space, self.kind, self.channels, self.io_embed)

    def get_params(self) -> dict:
        return {"kind": self.kind, "channels": list(self.channels), "hidden": self.hidden,
                "io_embed": self.io_embed, "objective": self.objective,
                "epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                "unroll_steps": self.unroll_steps, "unroll_lr": self.unroll_lr,
                "unroll_batch": self.unroll_batch, "unroll_weight": self.unroll_weight,
                "unroll_every": self.unroll_every, "augment": self.augment,
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
                logits = model(weight_features(space, w, b, dens))
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
                          counts: Sequence[int]) -> list[Tensor]:
        """Logits ``(M, n_out, n_in)`` per layer for the per-layer ``counts`` (the density
        channel of the features)."""
        self._check_fitted()
        sizes = [math.prod(ly.weight_shape) for ly in self.space_.layers]
        if len(counts) != len(sizes) or any(not 1 <= c <= n for c, n in zip(counts, sizes,
                                                                            strict=True)):
            raise PredictorError(f"counts {list(counts)} do not fit layers of {sizes} weights")
        dtype = next(self.model_.parameters()).dtype
        m = init_w[0].shape[0]
        dens = torch.tensor([c / n for c, n in zip(counts, sizes, strict=True)]).expand(m, -1)
        with torch.no_grad():
            return self.model_(weight_features(self.space_, [w.to(dtype) for w in init_w],
                                               [b.to(dtype) for b in init_b], dens))

    def predict(self, init_w: Sequence[Tensor], init_b: Sequence[Tensor],
                counts: Sequence[int]) -> list[Tensor]:
        """Bool masks ``(M, n_out, n_in)`` keeping exactly ``counts[i]`` weights of layer i
        (per-layer top-k of :meth:`decision_function`, ties by index)."""
        return layer_topk(self.decision_function(init_w, init_b, counts), counts)

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
