"""Classifying implicit neural representations (INRs) by their weights (issue #14).

A SIREN zoo (``family = "siren"``, :mod:`gensight.zoo`) holds one or more SIRENs fitted to
every image of a labeled dataset. The task is to predict an image's label from the weights of
a SIREN that represents it (the NFN paper's INR classification, Zhou et al. 2023, arXiv
2302.14040, Sec. 5; research note 03 §2).

Methods (:data:`METHODS`), each a small class with ``fit(train, val)`` / ``predict(weights)``
/ ``score(data)`` and its fitted state in attributes ending in ``_``:

- ``nfn-hnp``, ``nfn-np``: :func:`gensight.nf.inr_blocks.make_inr_classifier` (Gaussian
  Fourier features, three NF-Layers, HNP pooling, MLP head), here at CPU widths: channels
  ``(32, 32, 32)``, 16 Fourier features of scale 3, head 256, dropout 0.1 (the paper: 512
  channels, 128 features, heads of 1000). Invariant to hidden-neuron permutations.
- ``statnn``: the StatNN features of :func:`gensight.predict.predictors.statnn_features`
  (mean, variance and 5 quantiles of every weight and bias tensor) standardized with train
  statistics, then an MLP (one hidden layer of 256, ReLU). Invariant too.
- ``nft``: an :class:`~gensight.nf.InvariantNFT` (arXiv 2305.13546): Gaussian Fourier
  features (16 frequencies of scale 3), learned layer/IO position embedding, 2 NFT blocks of
  32 channels and 4 heads, HNP mean pool, head 256. Invariant.
- ``inr2array``: Inr2Array (arXiv 2305.13546, Sec. 4, :mod:`gensight.inr.inr2array`): an NFT
  autoencoder trained on the train SIRENs to reconstruct their renderings, then a small
  Transformer (:class:`~gensight.inr.inr2array.LatentTransformer`) on the frozen latent
  arrays. Invariant.
- ``mlp``: an MLP (2 hidden layers of 256, ReLU) on the flattened weights; not invariant.
- ``mlp-aug``: the same with a fresh random hidden-neuron permutation
  (:func:`~gensight.weightspace.random_permutation` + :func:`~gensight.weightspace.permute`)
  of every training minibatch.

Training (every method, one shared loop): Adam (lr ``1e-3``), cross-entropy, minibatches of
32 networks drawn from *every fit of every train image* (the fits are the papers'
augmentation copies), ``steps`` updates; every ``eval_every`` steps the validation accuracy
(every fit of every val image) is measured and the best checkpoint kept (ties: the later
one); the test accuracy is that checkpoint's. Only rows with ``split == "train"`` are trained
on, rows with ``split == "val"`` select the checkpoint and rows with ``split == "test"`` are
scored: an image (and so all of its fits) lies in exactly one split (:func:`split_rows`).

Standardization: every weight and bias tensor of the input SIRENs is shifted and scaled by
*one* mean and *one* standard deviation computed over all entries of that tensor in all
train networks (:class:`TensorStandardizer`). Scalars per tensor commute with every neuron
permutation, so the NFNs stay exactly invariant and ``mlp-aug``'s permutations act on the
standardized weights as on the raw ones.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from gensight.errors import GensightError
from gensight.weightspace import WeightBatch, permute, random_permutation

__all__ = [
    "DEFAULTS",
    "METHODS",
    "ClassifyResult",
    "FlatMLPClassifier",
    "INRClassifier",
    "INRClassifyError",
    "INRData",
    "Inr2ArrayClassifier",
    "NFNClassifier",
    "NFTClassifier",
    "StatNNClassifier",
    "TensorStandardizer",
    "check_methods",
    "check_positive_int",
    "classify_zoo",
    "load_inr_data",
    "make_classifier",
    "split_rows",
    "summarize",
]

METHODS = ("inr2array", "nft", "nfn-hnp", "nfn-np", "statnn", "mlp", "mlp-aug")
"""The method names, in the order the table lists them."""

SPLITS = ("train", "val", "test")

DEFAULTS = {"steps": 1000, "batch_size": 32, "lr": 1e-3, "eval_every": 100,
            "channels": (32, 32, 32)}
"""CPU defaults of the training loop and the NFN widths."""


class INRClassifyError(GensightError, ValueError):
    """A zoo, method name or setting that INR classification cannot use."""


# ----------------------------------------------------------------------------- arguments

def check_methods(methods: str | Sequence[str]) -> list[str]:
    """Method names from a list or a comma-separated string; unknown names raise
    :class:`INRClassifyError` naming the known ones. Duplicates are dropped."""
    if isinstance(methods, str):
        methods = methods.split(",")
    names = [m.strip() for m in methods if m and m.strip()]
    if not names:
        raise INRClassifyError(f"no method given; known methods: {', '.join(METHODS)}")
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise INRClassifyError(f"unknown method{'s' if len(unknown) > 1 else ''} "
                               f"{', '.join(map(repr, unknown))}; known methods: "
                               f"{', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def check_positive_int(name: str, value) -> int:
    """``value`` (an int or a string of one) as an int >= 1, or :class:`INRClassifyError`
    naming ``name`` (e.g. ``--seeds``)."""
    if isinstance(value, bool):
        raise INRClassifyError(f"{name} must be a positive integer; got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise INRClassifyError(f"{name} must be a positive integer; got {value!r}") from None
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise INRClassifyError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------- data

def _as_zoo(zoo):
    """A :class:`~gensight.zoo.Zoo`, opening it if given its directory."""
    if isinstance(zoo, str | Path):
        from gensight.zoo.store import Zoo

        return Zoo.open(zoo)
    return zoo


def split_rows(zoo) -> dict[str, pd.DataFrame]:
    """The rows of a SIREN zoo each split uses: ``{"train", "val", "test"}`` -> the final,
    finite rows whose ``split`` column has that value (all fits of each image).

    Raises :class:`INRClassifyError` for a zoo that is not a SIREN zoo (naming it and its
    family), a split with no rows, or an image listed under two splits.
    """
    zoo = _as_zoo(zoo)
    family = zoo.family
    name = zoo.manifest.get("name", str(zoo.root))
    if family != "siren":
        raise INRClassifyError(f"zoo {name!r} ({zoo.root}) is a {family!r} zoo; INR "
                               f"classification needs a SIREN zoo (family 'siren')")
    table = zoo.table
    if "is_final" in table.columns:
        table = table[table["is_final"].astype(bool)]
    if "finite" in table.columns:
        table = table[table["finite"].astype(bool)]
    out = {s: table[table["split"] == s] for s in SPLITS}
    for s, rows in out.items():
        if len(rows) == 0:
            raise INRClassifyError(f"zoo {name!r} has no finite SIREN in its {s!r} split "
                                   f"(build more images)")
    images = {s: set(rows["image_id"]) for s, rows in out.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = images[a] & images[b]
        if shared:
            raise INRClassifyError(f"zoo {name!r}: image(s) {sorted(shared)[:5]} lie in both "
                                   f"the {a} and the {b} split")
    return out


@dataclass
class INRData:
    """Weights of SIRENs with their labels: ``weights`` (B members), ``labels`` ``(B,)``
    int64, ``image`` ``(B,)`` (which image each member fits; -1 if unknown)."""

    weights: WeightBatch
    labels: np.ndarray
    image: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.labels) != len(self.weights):
            raise INRClassifyError(f"{len(self.weights)} networks but {len(self.labels)} "
                                   f"labels")
        if self.image is None:
            self.image = np.full(len(self.labels), -1, dtype=np.int64)
        self.image = np.asarray(self.image)

    def __len__(self) -> int:
        return len(self.labels)


def load_inr_data(zoo) -> tuple[dict[str, INRData], int]:
    """The train/val/test :class:`INRData` of a SIREN zoo (see :func:`split_rows`) and the
    number of classes (largest label in the zoo + 1). ``zoo``: a Zoo or its directory."""
    zoo = _as_zoo(zoo)
    rows = split_rows(zoo)
    n_classes = int(zoo.table["label"].max()) + 1
    data = {s: INRData(zoo.weights(r), r["label"].to_numpy(), r["image_id"].to_numpy())
            for s, r in rows.items()}
    return data, n_classes


class TensorStandardizer:
    """``(t - mean) / std`` per weight or bias tensor, with one scalar mean and std per
    tensor computed over all train networks and entries (so it commutes with every neuron
    permutation). ``fit(batch)`` then ``transform(batch)``."""

    def fit(self, batch: WeightBatch) -> TensorStandardizer:
        tensors = batch.tensors()
        self.mean_ = [float(t.double().mean()) for t in tensors]
        self.std_ = [max(float(t.double().std()), 1e-8) if t.numel() > 1 else 1.0
                     for t in tensors]
        return self

    def transform(self, batch: WeightBatch) -> WeightBatch:
        tensors = [(t - m) / s for t, m, s in zip(batch.tensors(), self.mean_, self.std_,
                                                  strict=True)]
        n = batch.space.n_layers
        return WeightBatch(batch.space, tensors[:n], tensors[n:], check_finite=False)


# ----------------------------------------------------------------------------- classifiers

Progress = Callable[[int, int], None]


class INRClassifier:
    """Base class: one training loop (Adam, cross-entropy, minibatches, best-val checkpoint).

    Subclasses say how a (standardized) :class:`WeightBatch` becomes the model's input
    (:meth:`_encode`) and build the model (:meth:`_build`); ``augment`` draws a fresh random
    hidden-neuron permutation for every minibatch.

    Fitted attributes: ``model_`` (eval mode), ``standardizer_``, ``history_`` (``(step,
    train loss, val accuracy)`` per evaluation), ``best_step_``, ``best_val_acc_``,
    ``n_classes_``.
    """

    name = "inr-classifier"
    augment = False

    def __init__(self, *, n_classes: int | None = None, steps: int = DEFAULTS["steps"],
                 batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"],
                 eval_every: int = DEFAULTS["eval_every"], seed: int = 0,
                 dtype: torch.dtype = torch.float32):
        self.n_classes = n_classes
        self.steps = check_positive_int("steps", steps)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.eval_every = check_positive_int("eval_every", eval_every)
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise INRClassifyError(f"lr must be a positive number; got {lr!r}")
        self.lr, self.seed, self.dtype = float(lr), int(seed), dtype

    # -- what subclasses define
    def _build(self, space, n_classes: int, example: WeightBatch) -> nn.Module:
        raise NotImplementedError

    def _encode(self, batch: WeightBatch):
        """Standardized weights -> the model's input."""
        return batch

    def _prepare(self, train: WeightBatch) -> None:
        """Fit any input statistics beyond the tensor standardization (on train only)."""

    # -- the shared loop
    def _standardized(self, weights: WeightBatch) -> WeightBatch:
        return self.standardizer_.transform(weights.to(self.dtype))

    def augment_batch(self, batch: WeightBatch, generator: torch.Generator) -> WeightBatch:
        """``batch`` with one random hidden-neuron permutation per member (a no-op unless
        the method augments)."""
        if not self.augment:
            return batch
        perm = random_permutation(batch.space, "hnp", batch_size=len(batch),
                                  generator=generator)
        return permute(batch, perm)

    def _logits(self, batch: WeightBatch, chunk: int = 512) -> Tensor:
        out = []
        with torch.no_grad():
            for start in range(0, len(batch), chunk):
                out.append(self.model_(self._encode(batch[start:start + chunk])))
        return torch.cat(out)

    def fit(self, train: INRData, val: INRData | None = None,
            progress: Progress | None = None) -> INRClassifier:
        """Train on ``train``; keep the checkpoint with the best accuracy on ``val`` (or the
        last one without ``val``). ``progress(step, steps)`` is called at every
        evaluation."""
        if len(train) == 0:
            raise INRClassifyError(f"{self.name}: no training networks")
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        n_classes = self.n_classes or int(max(train.labels.max(), -1 if val is None else
                                              val.labels.max())) + 1
        self.n_classes_ = n_classes
        self.standardizer_ = TensorStandardizer().fit(train.weights.to(self.dtype))
        xtrain = self._standardized(train.weights)
        self._prepare(xtrain)
        xval = None if val is None else self._standardized(val.weights)
        ytrain = torch.tensor(np.array(train.labels), dtype=torch.long)
        model = self._build(train.weights.space, n_classes, xtrain).to(self.dtype)
        self.model_ = model
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        loss_fn = nn.CrossEntropyLoss()
        n = len(ytrain)
        order = torch.randperm(n, generator=gen)
        pos = 0
        best_acc, best_state, best_step = -1.0, None, 0
        self.history_ = []
        running = []
        for step in range(1, self.steps + 1):
            model.train()
            if pos + self.batch_size > n and pos > 0:
                order, pos = torch.randperm(n, generator=gen), 0
            idx = order[pos:pos + self.batch_size]
            pos += self.batch_size
            xb = self.augment_batch(xtrain[idx], gen)
            loss = loss_fn(model(self._encode(xb)), ytrain[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            running.append(float(loss.detach()))
            if step % self.eval_every == 0 or step == self.steps:
                model.eval()
                acc = float("nan") if xval is None else self._accuracy(xval, val.labels)
                self.history_.append((step, float(np.mean(running)), acc))
                running = []
                if xval is None or acc >= best_acc:
                    best_acc, best_step = acc, step
                    best_state = copy.deepcopy(model.state_dict())
                if progress is not None:
                    progress(step, self.steps)
        model.load_state_dict(best_state)
        self.model_ = model.eval()
        self.best_step_, self.best_val_acc_ = best_step, best_acc
        return self

    def _accuracy(self, standardized: WeightBatch, labels: np.ndarray) -> float:
        pred = self._logits(standardized).argmax(1).numpy()
        return float((pred == labels).mean())

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise INRClassifyError(f"{self.name} is not fitted; call fit(train, val) first")

    def decision_function(self, weights: WeightBatch) -> Tensor:
        """Logits ``(B, n_classes)`` of raw (unstandardized) SIREN weights."""
        self._check_fitted()
        return self._logits(self._standardized(weights))

    def predict(self, weights: WeightBatch) -> np.ndarray:
        """Predicted labels ``(B,)`` of raw SIREN weights."""
        return self.decision_function(weights).argmax(1).numpy()

    def score(self, data: INRData) -> float:
        """Accuracy on ``data``."""
        return float((self.predict(data.weights) == data.labels).mean())


class NFNClassifier(INRClassifier):
    """``nfn-hnp`` / ``nfn-np``: :func:`~gensight.nf.inr_blocks.make_inr_classifier` with
    ``channels`` NF-Layer widths (default ``(32, 32, 32)``) and its CPU defaults (16
    Gaussian Fourier features, scale 3; NP: IO encoding (3, 3); head 256; dropout 0.1)."""

    def __init__(self, symmetry: str = "hnp", *, channels: Sequence[int] = DEFAULTS["channels"],
                 fourier: int | None = 16, fourier_scale: float = 3.0, head: int = 256,
                 dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.fourier_scale = float(fourier_scale)
        if symmetry not in ("hnp", "np"):
            raise INRClassifyError(f"symmetry must be 'hnp' or 'np'; got {symmetry!r}")
        self.symmetry, self.channels = symmetry, tuple(int(c) for c in channels)
        self.fourier, self.head, self.dropout = fourier, head, dropout
        self.name = f"nfn-{symmetry}"

    def _build(self, space, n_classes, example):
        from gensight.nf.inr_blocks import make_inr_classifier

        return make_inr_classifier(space, symmetry=self.symmetry, channels=self.channels,
                                   fourier=self.fourier, fourier_scale=self.fourier_scale,
                                   fourier_seed=self.seed,
                                   head=self.head, dropout=self.dropout, n_classes=n_classes)


def _check_nft_width(name: str, channels: int, heads: int) -> None:
    """An NFT width must be even (sine and cosine Fourier features) and split into heads;
    checked when a classifier is made, before any data is loaded or anything trained."""
    if channels < 2 or channels % 2 or channels % heads:
        raise INRClassifyError(f"{name} needs a width (the first of --channels) that is even "
                               f"and divisible by its {heads} attention heads; got "
                               f"{channels}")


class NFTClassifier(INRClassifier):
    """``nft``: an :class:`~gensight.nf.InvariantNFT` classifier (arXiv 2305.13546) with
    Gaussian Fourier features (``channels / 2`` frequencies of scale ``fourier_scale``), the
    learned layer/IO position embedding, ``blocks`` NFT blocks, HNP mean pool and a head of
    ``head`` units. The authors' direct NFT classifier is not in their public code; this is
    the composition of the paper's layers described in :class:`~gensight.nf.InvariantNFT`."""

    name = "nft"

    def __init__(self, *, channels: int = 32, blocks: int = 2, heads: int = 4,
                 fourier_scale: float = 3.0, head: int = 256, dropout: float = 0.1,
                 **kwargs):
        super().__init__(**kwargs)
        self.channels, self.blocks, self.heads = int(channels), int(blocks), int(heads)
        self.fourier_scale, self.head, self.dropout = float(fourier_scale), head, dropout
        _check_nft_width(self.name, self.channels, self.heads)

    def _build(self, space, n_classes, example):
        from gensight.nf import InvariantNFT

        torch.manual_seed(self.seed)
        return InvariantNFT(space, channels=self.channels, blocks=self.blocks,
                            heads=self.heads, dropout=self.dropout,
                            fourier_scale=self.fourier_scale, out_features=n_classes,
                            head_hidden=(self.head,))


class Inr2ArrayClassifier(INRClassifier):
    """``inr2array``: the Inr2Array pipeline of arXiv 2305.13546 (Sec. 4).

    ``fit`` first trains an :class:`~gensight.inr.inr2array.Inr2Array` autoencoder on the
    *train* SIRENs (``ae_steps`` AdamW steps, reconstruction of each SIREN's own rendering
    at ``size x size`` pixels, best checkpoint on the val SIRENs), freezes it, and then
    trains a :class:`~gensight.inr.inr2array.LatentTransformer` on the latent arrays with
    the shared loop (its ``steps``, ``lr``, best val accuracy). ``size`` and ``omega_0`` are
    the zoo's (``classify_zoo`` passes them).

    Extra fitted attributes: ``autoencoder_``, ``ae_history_`` (``(step, train MSE, val
    MSE)``), ``ae_val_mse_`` (the kept checkpoint's).
    """

    name = "inr2array"

    def __init__(self, *, size: int = 8, omega_0: float = 30.0, channels: int = 32,
                 blocks: int = 2, grid: int = 2, ae_steps: int | None = None,
                 ae_lr: float = 1e-3, d_model: int = 64, depth: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.size = check_positive_int("size", size)
        self.omega_0 = float(omega_0)
        self.channels, self.blocks = int(channels), int(blocks)
        self.grid = check_positive_int("grid", grid)
        self.ae_steps = self.steps if ae_steps is None else check_positive_int("ae_steps",
                                                                               ae_steps)
        self.ae_lr, self.d_model, self.depth = float(ae_lr), int(d_model), int(depth)
        _check_nft_width(self.name, self.channels, 4)

    def fit(self, train: INRData, val: INRData | None = None,
            progress: Progress | None = None) -> Inr2ArrayClassifier:
        from gensight.inr.inr2array import Inr2Array, fit_inr2array, reconstruction_mse
        from gensight.zoo.siren import render

        if len(train) == 0:
            raise INRClassifyError(f"{self.name}: no training networks")
        self.standardizer_ = TensorStandardizer().fit(train.weights.to(self.dtype))

        def prepared(data: INRData) -> tuple[WeightBatch, Tensor]:
            raw = data.weights.to(self.dtype)
            with torch.no_grad():
                target = render(raw, self.size, self.omega_0)
            return self.standardizer_.transform(raw), target

        torch.manual_seed(self.seed)
        ae = Inr2Array(train.weights.space, channels=self.channels, blocks=self.blocks,
                       grid=self.grid, omega_0=self.omega_0, seed=self.seed).to(self.dtype)
        xt = prepared(train)
        xv = None if val is None else prepared(val)
        # progress over both phases: autoencoder steps, then classifier steps
        total = self.ae_steps + self.steps
        ae_progress = None if progress is None else \
            (lambda step, steps, val_mse: progress(step, total))
        self.ae_history_ = fit_inr2array(
            ae, *xt, steps=self.ae_steps, batch_size=self.batch_size, lr=self.ae_lr,
            seed=self.seed, val=xv, eval_every=max(1, self.ae_steps // 10),
            progress=ae_progress)
        self.autoencoder_ = ae
        self.ae_val_mse_ = float("nan") if xv is None else reconstruction_mse(ae, *xv)
        cls_progress = None if progress is None else \
            (lambda step, steps: progress(self.ae_steps + step, total))
        return super().fit(train, val, cls_progress)

    def _standardized(self, weights: WeightBatch):
        """Raw SIREN weights -> their latent arrays ``(B, M, D)`` (the classifier's input)."""
        from gensight.inr.inr2array import embed

        return embed(self.autoencoder_, self.standardizer_.transform(weights.to(self.dtype)))

    def _build(self, space, n_classes, example):
        from gensight.inr.inr2array import LatentTransformer

        torch.manual_seed(self.seed)
        return LatentTransformer(example.shape[1], example.shape[2], n_classes,
                                 d_model=self.d_model, depth=self.depth)


def _mlp(d_in: int, hidden: Sequence[int], n_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(d_in, h), nn.ReLU()]
        d_in = h
    layers.append(nn.Linear(d_in, n_classes))
    return nn.Sequential(*layers)


class FlatMLPClassifier(INRClassifier):
    """``mlp`` / ``mlp-aug``: an MLP (``hidden``, default two layers of 256) on the
    flattened standardized weights (:meth:`WeightBatch.flatten`); ``augment=True``
    permutes the hidden neurons of every training minibatch at random first."""

    def __init__(self, augment: bool = False, *, hidden: Sequence[int] = (256, 256), **kwargs):
        super().__init__(**kwargs)
        self.augment, self.hidden = bool(augment), tuple(hidden)
        self.name = "mlp-aug" if augment else "mlp"

    def _encode(self, batch):
        return batch.flatten()

    def _build(self, space, n_classes, example):
        return _mlp(example.flatten().shape[1], self.hidden, n_classes)


class StatNNClassifier(INRClassifier):
    """``statnn``: StatNN features of the standardized weights
    (:func:`gensight.predict.predictors.statnn_features`), each feature standardized with
    train mean and std, then an MLP (``hidden``, default one layer of 256)."""

    name = "statnn"

    def __init__(self, *, hidden: Sequence[int] = (256,), **kwargs):
        super().__init__(**kwargs)
        self.hidden = tuple(hidden)

    def _features(self, batch: WeightBatch) -> Tensor:
        from gensight.predict.predictors import statnn_features

        # the variance of a 1-entry tensor (a 1-output SIREN's last bias) is NaN: zeroed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            feats = statnn_features(batch)
        return torch.as_tensor(np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0),
                               dtype=self.dtype)

    def _prepare(self, train):
        f = self._features(train)
        self.feature_mean_ = f.mean(0)
        self.feature_std_ = f.std(0).clamp_min(1e-8) if len(f) > 1 else torch.ones_like(f[0])

    def _encode(self, batch):
        return (self._features(batch) - self.feature_mean_) / self.feature_std_

    def _build(self, space, n_classes, example):
        return _mlp(self._encode(example[:1]).shape[1], self.hidden, n_classes)


def make_classifier(method: str, *, seed: int = 0, n_classes: int | None = None,
                    steps: int = DEFAULTS["steps"], batch_size: int = DEFAULTS["batch_size"],
                    lr: float = DEFAULTS["lr"], eval_every: int = DEFAULTS["eval_every"],
                    channels: Sequence[int] = DEFAULTS["channels"],
                    dtype: torch.dtype = torch.float32, size: int = 8,
                    omega_0: float = 30.0) -> INRClassifier:
    """A fresh classifier for one of :data:`METHODS` (``channels``: NFN widths, and the
    first one the NFT/Inr2Array width; ``size``, ``omega_0``: the zoo's SIRENs, for
    Inr2Array's renderings)."""
    (method,) = check_methods([method])
    common = {"seed": seed, "n_classes": n_classes, "steps": steps, "batch_size": batch_size,
              "lr": lr, "eval_every": eval_every, "dtype": dtype}
    if method.startswith("nfn-"):
        return NFNClassifier(method[4:], channels=channels, **common)
    if method == "nft":
        return NFTClassifier(channels=channels[0], **common)
    if method == "inr2array":
        return Inr2ArrayClassifier(size=size, omega_0=omega_0, channels=channels[0], **common)
    if method == "statnn":
        return StatNNClassifier(**common)
    return FlatMLPClassifier(augment=method == "mlp-aug", **common)


# ------------------------------------------------------------------------------ evaluation

def _invariance_gap(clf: INRClassifier, weights: WeightBatch, seed: int, limit: int = 256
                    ) -> float:
    """Max |logit change| of ``clf`` under one random hidden-neuron permutation per member,
    over the first ``limit`` members."""
    batch = weights[:limit]
    gen = torch.Generator().manual_seed(10_000 + seed)
    perm = random_permutation(batch.space, "hnp", batch_size=len(batch), generator=gen)
    a = clf.decision_function(batch)
    b = clf.decision_function(permute(batch, perm))
    return float((a - b).abs().max())


@dataclass
class ClassifyResult:
    """``runs``: one row per (method, seed): train/val/test accuracy, best step, invariance
    gap, seconds; ``summary``: one row per method (:func:`summarize`); ``sizes``: networks
    (and images) per split; ``settings``: the training settings used."""

    runs: pd.DataFrame
    summary: pd.DataFrame
    sizes: dict[str, tuple[int, int]]
    settings: dict = field(default_factory=dict)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per method (in :data:`METHODS` order): ``test_acc_mean``, ``test_acc_std`` (over seeds,
    ``ddof=0``), mean ``val_acc`` and ``train_acc``, ``seeds``, mean ``seconds`` per seed and
    the largest ``invariance_gap``."""
    rows = []
    for method, g in runs.groupby("method", sort=False):
        rows.append({"method": method, "test_acc_mean": float(g["test_acc"].mean()),
                     "test_acc_std": float(g["test_acc"].std(ddof=0)),
                     "val_acc": float(g["val_acc"].mean()),
                     "train_acc": float(g["train_acc"].mean()), "seeds": len(g),
                     "seconds": float(g["seconds"].mean()),
                     "invariance_gap": float(g["invariance_gap"].max())})
    out = pd.DataFrame(rows)
    if len(out):
        order = {m: i for i, m in enumerate(METHODS)}
        out = out.sort_values("method", key=lambda s: s.map(order)).reset_index(drop=True)
    return out


def classify_zoo(zoo, methods: Sequence[str] | str = METHODS, *, seeds: int = 3,
                 steps: int = DEFAULTS["steps"], batch_size: int = DEFAULTS["batch_size"],
                 lr: float = DEFAULTS["lr"], eval_every: int | None = None,
                 channels: Sequence[int] = DEFAULTS["channels"],
                 progress: Callable[[str, int, int, int], None] | None = None
                 ) -> ClassifyResult:
    """Train every method with seeds ``0 .. seeds-1`` on the zoo's train split, select the
    checkpoint on val, score on test.

    ``eval_every`` defaults to ``max(1, steps // 10)``. ``progress(method, seed, step,
    steps)`` is called at every evaluation. Errors (non-SIREN zoo, unknown method, a
    non-positive count) are raised before any training.
    """
    methods = check_methods(methods)
    seeds = check_positive_int("seeds", seeds)
    steps = check_positive_int("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size)
    eval_every = max(1, steps // 10) if eval_every is None else \
        check_positive_int("eval_every", eval_every)
    channels = tuple(check_positive_int("channels", c) for c in channels)
    for m in methods:  # bad settings fail before the data is loaded
        make_classifier(m, steps=steps, batch_size=batch_size, lr=lr, eval_every=eval_every,
                        channels=channels)
    zoo = _as_zoo(zoo)
    data, n_classes = load_inr_data(zoo)
    siren = zoo.manifest.get("siren", {})
    drawing = {"size": int(siren.get("size", 8)), "omega_0": float(siren.get("omega_0", 30))}
    records = []
    for method in methods:
        for seed in range(seeds):
            clf = make_classifier(method, seed=seed, n_classes=n_classes, steps=steps,
                                  batch_size=batch_size, lr=lr, eval_every=eval_every,
                                  channels=channels, **drawing)
            start = time.perf_counter()
            cb = None if progress is None else \
                (lambda step, total, m=method, s=seed: progress(m, s, step, total))
            clf.fit(data["train"], data["val"], progress=cb)
            records.append({
                "method": method, "seed": seed, "test_acc": clf.score(data["test"]),
                "val_acc": clf.best_val_acc_, "train_acc": clf.score(data["train"]),
                "best_step": clf.best_step_, "steps": steps,
                "invariance_gap": _invariance_gap(clf, data["test"].weights, seed),
                "seconds": time.perf_counter() - start})
    runs = pd.DataFrame(records)
    sizes = {s: (len(d), len(set(d.image.tolist()))) for s, d in data.items()}
    settings = {"steps": steps, "batch_size": batch_size, "lr": lr, "eval_every": eval_every,
                "channels": channels, "seeds": seeds, "n_classes": n_classes}
    return ClassifyResult(runs, summarize(runs), sizes, settings)
