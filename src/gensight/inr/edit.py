"""INR editing: learn a weight-space map that edits what a SIREN draws (issue #14).

The "stylize" experiments of the NFN paper (Zhou et al. 2023, "Permutation Equivariant Neural
Functionals", arXiv 2302.14040, Sec. 5; authors' ``TransferNet`` / ``MLPTransferNet``): a model
reads a SIREN's weights ``theta`` and outputs a weight delta of the same shapes; the edited
INR is ``theta + delta`` and the loss is the pixel MSE between its rendering and the *edited
image*, both in [-1, 1].

Target: the edit of the image the SIREN was fitted to (``siren_images(spec).x[image_id]``),
not the edit of the SIREN's own rendering. This is what the authors' code does (their
dataset applies the transform to the torchvision image, then ``Normalize(0.5, 0.5)``) and
what the research note (Spec 3, Sec. 3 and Sec. 6) prescribes. The do-nothing baseline
(``delta = 0``) therefore also pays the SIREN's own fitting error.

- Edits of images ``(..., H, W)`` in [-1, 1]: :func:`dilate` (3x3 grayscale dilation, the
  paper's MNIST task) and :func:`contrast` (linear contrast stretch about the image mean, a
  documented grayscale substitute for the paper's CIFAR-10 CLAHE task; *not* CLAHE).
- Editing models: :class:`EditNFN` (``nfn-hnp``, ``nfn-np``), :class:`EditNFT` (``nft``,
  weight-space attention, arXiv 2305.13546) and :class:`EditMLP` (``mlp``),
  built by :func:`make_edit_model`; all end in a ``LearnedScale`` initialised small, so the
  delta starts near zero.
- :func:`load_edit_data`, :func:`train_edit_model`, :func:`run_edit` (the experiment: one row
  per method, test MSE mean and std over seeds), :func:`figure_edits` (a PNG) and
  :func:`add_edit_arguments` / :func:`edit_kwargs` for a CLI.

The metric (the papers'): per test SIREN, the MSE over its pixels in [-1, 1] units; then the
mean over test SIRENs.
"""

from __future__ import annotations

import copy
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensight.errors import GensightError
from gensight.nf import (
    Elementwise,
    GaussianFourierFeatures,
    HNPLinear,
    IOSinusoidalEncoding,
    LearnedScale,
    NPLinear,
)
from gensight.weightspace import WeightBatch, WeightSpace

__all__ = [
    "EDITS",
    "METHODS",
    "EditData",
    "EditError",
    "EditFit",
    "EditNFT",
    "EditMLP",
    "EditNFN",
    "EditSplit",
    "add_edit_arguments",
    "contrast",
    "dilate",
    "edit_images",
    "edit_kwargs",
    "edit_mse",
    "figure_edits",
    "load_edit_data",
    "make_edit_model",
    "run_edit",
    "train_edit_model",
]

METHODS = ("nft", "nfn-hnp", "nfn-np", "mlp")
SPLITS = ("train", "val", "test")


class EditError(GensightError, ValueError):
    """Bad input to the INR editing functions; the message names the argument and value."""


# --- edits ------------------------------------------------------------------------------------
def _as_images(x: Tensor, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if x.dim() < 2 or x.shape[-1] == 0 or x.shape[-2] == 0:
        raise EditError(f"{name} must be images of shape (..., H, W); got shape "
                        f"{tuple(x.shape)}")
    if not x.is_floating_point():
        raise EditError(f"{name} must be a floating-point tensor in [-1, 1]; got dtype "
                        f"{x.dtype}")
    return x


def dilate(x: Tensor) -> Tensor:
    """Grayscale dilation with a 3x3 square: ``y[i, j] = max of x over the 3x3 window at
    (i, j)`` that lies inside the image, for every image and channel of ``x (..., H, W)``.

    Equal to ``cv2.dilate(img, np.ones((3, 3)), iterations=1)`` (the NFN paper's MNIST
    transform, applied there to the uint8 image; dilation commutes with the increasing map
    ``u -> 2 u - 1``, so it may be applied to the [-1, 1] image) and to
    ``scipy.ndimage.grey_dilation(img, size=(3, 3))``: at the border both take the max over
    the part of the window inside the image (cv2 pads with -inf for dilation; scipy's default
    mode "reflect" repeats the edge pixel, which cannot change a max). Computed as
    ``F.max_pool2d(x, 3, stride=1, padding=1)`` (implicit -inf padding).
    """
    x = _as_images(x)
    h, w = x.shape[-2:]
    y = F.max_pool2d(x.reshape(-1, 1, h, w), 3, stride=1, padding=1)
    return y.reshape(x.shape)


def contrast(x: Tensor, factor: float = 2.0) -> Tensor:
    """Linear contrast stretch about each image's mean, clipped to [-1, 1]:
    ``y = clip(m + factor * (x - m), -1, 1)`` with ``m`` the mean of ``x`` over the image's
    ``H x W`` pixels (per image and channel of ``x (..., H, W)``).

    A grayscale stand-in for the NFN paper's CIFAR-10 "contrast" task (CLAHE on the L channel,
    which is not reproduced here). ``factor > 1`` raises contrast, ``factor = 1`` is the
    identity on images in [-1, 1].
    """
    x = _as_images(x)
    try:
        factor = float(factor)
    except (TypeError, ValueError):
        factor = math.nan
    if not (math.isfinite(factor) and factor > 0):
        raise EditError(f"contrast factor must be a positive finite number; got {factor!r}")
    m = x.mean(dim=(-2, -1), keepdim=True)
    return (m + factor * (x - m)).clamp(-1.0, 1.0)


EDITS: dict[str, Callable[[Tensor], Tensor]] = {"dilate": dilate, "contrast": contrast}


def _check_edit(edit: str) -> str:
    if edit not in EDITS:
        raise EditError(f"unknown edit {edit!r}; known edits: {', '.join(EDITS)}")
    return edit


def edit_images(x: Tensor, edit: str) -> Tensor:
    """``EDITS[edit](x)`` with the edit's name checked."""
    return EDITS[_check_edit(edit)](x)


# --- models -----------------------------------------------------------------------------------
def _delta_size(space: WeightSpace) -> int:
    return sum(math.prod(layer.weight_shape) + math.prod(layer.bias_shape)
               for layer in space.layers)


class EditNFN(nn.Module):
    """The NFN paper's ``TransferNet`` at CPU sizes: equivariant weights -> weight delta.

    ``GaussianFourierFeatures(1, fourier, fourier_scale)`` -> (``symmetry="np"``:
    ``IOSinusoidalEncoding(io_freq, io_bands)``) -> for each width in ``channels``:
    NF-Layer (:class:`~gensight.nf.HNPLinear` or :class:`~gensight.nf.NPLinear`) and ReLU
    -> an NF-Layer to 1 channel -> :class:`~gensight.nf.LearnedScale` (``scale_init``).
    The authors use ``fourier=128`` (scale 3), IO encoding ``(3, 3)``, ``channels=(128,) *
    3`` and scale init 0.01.

    ``forward``: ``WeightBatch (B, 1, ...)`` -> delta ``WeightBatch (B, 1, ...)``; equivariant
    to hidden-neuron permutations (both symmetries, because of the IO encoding for NP).
    """

    def __init__(self, space: WeightSpace, symmetry: str = "hnp", *,
                 channels: Sequence[int] = (32, 32, 32), fourier: int | None = 16,
                 fourier_scale: float = 3.0, fourier_seed: int | None = 0,
                 io_freq: float = 3.0, io_bands: int = 3, scale_init: float = 1e-2):
        super().__init__()
        if symmetry not in ("hnp", "np"):
            raise EditError(f"unknown symmetry {symmetry!r}; expected 'hnp' or 'np'")
        self.space = space
        self.symmetry = symmetry
        parts: OrderedDict[str, nn.Module] = OrderedDict()
        c = 1
        if fourier is not None:
            parts["fourier"] = GaussianFourierFeatures(1, fourier, fourier_scale,
                                                       seed=fourier_seed)
            c = parts["fourier"].out_channels
        if symmetry == "np":
            parts["io_encoding"] = IOSinusoidalEncoding(space, io_freq, io_bands)
            c = parts["io_encoding"].out_channels(c)
        layer = HNPLinear if symmetry == "hnp" else NPLinear
        for k, width in enumerate(channels):
            parts[f"nf{k}"] = layer(space, c, int(width))
            parts[f"relu{k}"] = Elementwise(nn.ReLU())
            c = int(width)
        parts["out"] = layer(space, c, 1)
        parts["scale"] = LearnedScale(space, scale_init)
        self.net = nn.Sequential(parts)

    def forward(self, batch: WeightBatch) -> WeightBatch:
        return self.net(batch)


class EditNFT(nn.Module):
    """An NFT editing model (arXiv 2305.13546, INR editing): equivariant weights -> delta.

    ``GaussianFourierFeatures(1, channels / 2, fourier_scale)`` ->
    :class:`~gensight.nf.LearnedPositionEmbedding` -> ``blocks``
    :class:`~gensight.nf.NFTBlock` s (``heads`` heads, feed-forward factor 2, no dropout) ->
    :class:`~gensight.nf.ChannelLayerNorm` -> :class:`~gensight.nf.BlockPointwise` to 1
    channel -> :class:`~gensight.nf.LearnedScale` (``scale_init``). The NFT paper reports
    editing results but the research notes do not give its editing architecture; this is the
    NFN editing model's structure with NFT blocks in place of the NF-Layers, CPU sized.

    ``forward``: ``WeightBatch (B, 1, ...)`` -> delta ``WeightBatch (B, 1, ...)``; equivariant
    to hidden-neuron permutations (HNP: the position embedding tells input and output neurons
    apart).
    """

    def __init__(self, space: WeightSpace, *, channels: int = 32, blocks: int = 2,
                 heads: int = 4, fourier_scale: float = 3.0, fourier_seed: int | None = 0,
                 scale_init: float = 1e-2):
        from gensight.nf import (
            BlockPointwise,
            ChannelLayerNorm,
            LearnedPositionEmbedding,
            NFTBlock,
        )

        super().__init__()
        if channels < 2 or channels % 2 or channels % heads:
            raise EditError(f"the NFT width must be an even number >= 2 (sine and cosine "
                            f"Fourier features) divisible by heads={heads}; got {channels}")
        self.space = space
        self.net = nn.Sequential(
            GaussianFourierFeatures(1, channels // 2, fourier_scale, seed=fourier_seed),
            LearnedPositionEmbedding(space, channels),
            *(NFTBlock(space, channels, heads=heads, dropout=0.0) for _ in range(blocks)),
            ChannelLayerNorm(space, channels),
            BlockPointwise(space, channels, 1),
            LearnedScale(space, scale_init))

    def forward(self, batch: WeightBatch) -> WeightBatch:
        return self.net(batch)


class EditMLP(nn.Module):
    """The NFN paper's ``MLPTransferNet`` baseline at CPU sizes: flatten the weights, an MLP
    (``hidden`` widths, ReLU) to a vector of the same size, unflatten, and
    :class:`~gensight.nf.LearnedScale` (``scale_init``). Not permutation equivariant. The
    authors use ``hidden=(1000, 1000, 1000)`` and scale init 0.01."""

    def __init__(self, space: WeightSpace, *, hidden: Sequence[int] = (256, 256),
                 scale_init: float = 1e-2):
        super().__init__()
        self.space = space
        n = _delta_size(space)
        layers: list[nn.Module] = []
        prev = n
        for width in hidden:
            layers += [nn.Linear(prev, int(width)), nn.ReLU()]
            prev = int(width)
        layers.append(nn.Linear(prev, n))
        self.mlp = nn.Sequential(*layers)
        self.scale = LearnedScale(space, scale_init)

    def forward(self, batch: WeightBatch) -> WeightBatch:
        out = self.mlp(batch.flatten())
        return self.scale(WeightBatch.unflatten(self.space, out, check_finite=False))


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise EditError(f"unknown method {method!r}; known methods: {', '.join(METHODS)}")
    return method


def make_edit_model(method: str, space: WeightSpace, *, width: int = 32, depth: int = 3,
                    mlp_width: int = 256, seed: int = 0, scale_init: float = 1e-2,
                    fourier: int | None = 16, fourier_scale: float = 3.0) -> nn.Module:
    """The editing model ``method`` (one of :data:`METHODS`) for SIRENs of ``space``.

    ``nfn-hnp`` / ``nfn-np``: :class:`EditNFN` with ``depth`` hidden NF-Layers of ``width``
    channels and ``fourier`` Gaussian Fourier features of scale ``fourier_scale``; ``nft``:
    :class:`EditNFT` with ``max(1, depth - 1)`` NFT blocks of ``width`` channels (rounded up
    to even; 4 heads, or 2 when 4 do not divide it); ``mlp``:
    :class:`EditMLP` with ``depth - 1`` hidden layers of ``mlp_width``. Parameters (and the
    Fourier frequencies) are drawn from ``seed``.
    """
    _check_method(method)
    if depth < 1 or width < 1 or mlp_width < 1:
        raise EditError(f"depth, width and mlp_width must be >= 1; got {depth}, {width}, "
                        f"{mlp_width}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if method == "mlp":
            return EditMLP(space, hidden=(mlp_width,) * max(depth - 1, 1),
                           scale_init=scale_init)
        if method == "nft":
            channels = width + width % 2
            return EditNFT(space, channels=channels, blocks=max(depth - 1, 1),
                           heads=4 if channels % 4 == 0 else 2, fourier_scale=fourier_scale,
                           fourier_seed=seed, scale_init=scale_init)
        return EditNFN(space, "hnp" if method == "nfn-hnp" else "np",
                       channels=(width,) * depth, fourier=fourier, fourier_scale=fourier_scale,
                       fourier_seed=seed, scale_init=scale_init)


# --- data -------------------------------------------------------------------------------------
@dataclass
class EditSplit:
    """SIRENs of one split: ``weights (N, 1, ...)``, the images they fit ``images (N, 1, H,
    W)`` in [-1, 1], the edited images ``targets`` and the zoo ``rows``."""

    weights: WeightBatch
    images: Tensor
    targets: Tensor
    rows: pd.DataFrame

    def __len__(self) -> int:
        return self.weights.batch_size


@dataclass
class EditData:
    """An editing task on a SIREN zoo: ``splits["train" | "val" | "test"]``, the SIRENs'
    ``omega_0`` and rendering ``size``."""

    space: WeightSpace
    omega_0: float
    size: int
    edit: str
    splits: dict[str, EditSplit]


def _check_positive_float(name: str, value) -> float:
    """``value`` as a positive finite float, or a one-line :class:`EditError`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise EditError(f"{name} must be a positive finite number; got {value!r}")
    return number


def _open_siren_zoo(zoo):
    from gensight.zoo.store import Zoo

    if isinstance(zoo, (str, Path)):
        zoo = Zoo.open(zoo)
    if not isinstance(zoo, Zoo):
        raise EditError(f"zoo must be a gensight Zoo or a zoo directory; got "
                        f"{type(zoo).__name__}")
    if zoo.family != "siren" or "siren" not in zoo.manifest:
        raise EditError(f"INR editing needs a SIREN zoo (architecture family 'siren'); "
                        f"{str(zoo.root)!r} is a {zoo.family!r} zoo")
    return zoo


def _limit(rows: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    rows = rows.sort_values("member_id", kind="stable")
    if limit is not None and len(rows) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), limit, replace=False))
        rows = rows.iloc[keep]
    return rows.reset_index(drop=True)


def load_edit_data(zoo, edit: str = "dilate", *, max_train: int | None = None,
                   max_val: int | None = None, max_test: int | None = None,
                   dtype: torch.dtype = torch.float32) -> EditData:
    """The SIRENs of a SIREN zoo (a :class:`~gensight.zoo.Zoo` or its directory) with the
    images they fit and the edited targets, per split (all fits of every image; final,
    finite rows only). ``max_*`` keep a fixed random subset of that many SIRENs (seeds 0, 1, 2
    for train, val, test)."""
    from gensight.zoo import siren_images
    from gensight.zoo.spec import ZooSpec

    _check_edit(edit)
    zoo = _open_siren_zoo(zoo)
    spec = ZooSpec.from_dict(zoo.manifest["spec"])
    images = siren_images(spec).x
    table = zoo.table
    if "is_final" in table.columns:
        table = table[table["is_final"].astype(bool)]
    if "finite" in table.columns:
        table = table[table["finite"].astype(bool)]
    splits = {}
    for k, (split, limit) in enumerate(zip(SPLITS, (max_train, max_val, max_test),
                                           strict=True)):
        rows = _limit(table[table["split"] == split], limit, k)
        if len(rows) == 0:
            raise EditError(f"the zoo at {str(zoo.root)!r} has no usable SIRENs in split "
                            f"{split!r}")
        x = images[torch.tensor(rows["image_id"].to_numpy(dtype=np.int64))].to(dtype)
        splits[split] = EditSplit(zoo.weights(rows).to(dtype), x, edit_images(x, edit), rows)
    siren = zoo.manifest["siren"]
    return EditData(zoo.space, float(siren["omega_0"]), int(siren["size"]), edit, splits)


# --- training ---------------------------------------------------------------------------------
def edit_mse(model: nn.Module | None, weights: WeightBatch, targets: Tensor, *, size: int,
             omega_0: float) -> Tensor:
    """Per-SIREN pixel MSE ``(N,)`` of ``render(weights + model(weights))`` against
    ``targets (N, 1, H, W)``; ``model=None`` is the do-nothing baseline (``delta = 0``)."""
    from gensight.zoo.siren import render

    edited = weights if model is None else weights + model(weights)
    out = render(edited, size, omega_0)
    return (out - targets).pow(2).flatten(1).mean(1)


@torch.no_grad()
def _evaluate(model: nn.Module | None, split: EditSplit, size: int, omega_0: float,
              chunk: int = 256) -> Tensor:
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    out = torch.cat([edit_mse(model, split.weights[lo:lo + chunk],
                              split.targets[lo:lo + chunk], size=size, omega_0=omega_0)
                     for lo in range(0, len(split), chunk)])
    if model is not None:
        model.train(was_training)
    return out


@dataclass
class EditFit:
    """One trained editing model: the best-on-val ``model`` (restored), its ``val_mse`` and
    ``test_mse`` (means over SIRENs), the step it was taken at (0: the initial model),
    wall ``seconds`` of training and evaluation, and ``history`` rows ``(step, train
    loss, val MSE)``."""

    method: str
    seed: int
    model: nn.Module
    val_mse: float
    test_mse: float
    best_step: int
    seconds: float
    history: list[tuple[int, float, float]] = field(default_factory=list)


def train_edit_model(model: nn.Module, data: EditData, *, steps: int = 500,
                     batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
                     eval_every: int = 100, warmup: int = 0, method: str = "",
                     log: Callable[[str], None] | None = None) -> EditFit:
    """Adam on minibatches of training SIRENs (drawn with replacement from a generator seeded
    by ``seed``), loss :func:`edit_mse` averaged over the batch, the learning rate ramped
    linearly from ``lr / warmup`` to ``lr`` over the first ``warmup`` steps; every
    ``eval_every`` steps (and at the end) the val MSE is measured and the best model so far
    kept (model selection on val, the initial model included); the kept model's test MSE is
    reported."""
    for name, value in (("steps", steps), ("batch_size", batch_size),
                        ("eval_every", eval_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EditError(f"{name} must be an int >= 1; got {value!r}")
    t0 = time.perf_counter()
    train, val, test = (data.splits[s] for s in SPLITS)
    render_kw = {"size": data.size, "omega_0": data.omega_0}
    gen = torch.Generator().manual_seed(seed)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise EditError(f"warmup must be an int >= 0; got {warmup!r}")
    _check_positive_float("lr", lr)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warmup) if warmup else 1.0)
    best_val = float(_evaluate(model, val, **render_kw).mean())
    best_state, best_step = copy.deepcopy(model.state_dict()), 0
    history = [(0, math.nan, best_val)]
    model.train()
    running = []
    for step in range(1, steps + 1):
        idx = torch.randint(len(train), (batch_size,), generator=gen)
        loss = edit_mse(model, train.weights[idx], train.targets[idx], **render_kw).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append(loss.item())
        if step % eval_every == 0 or step == steps:
            v = float(_evaluate(model, val, **render_kw).mean())
            history.append((step, float(np.mean(running)), v))
            running = []
            if v < best_val:
                best_val, best_step = v, step
                best_state = copy.deepcopy(model.state_dict())
            if log is not None:
                log(f"{method or type(model).__name__} seed {seed} step {step}: train "
                    f"{history[-1][1]:.4f} val {v:.4f}")
    model.load_state_dict(best_state)
    model.eval()
    test_mse = float(_evaluate(model, test, **render_kw).mean())
    return EditFit(method, seed, model, best_val, test_mse, best_step,
                   time.perf_counter() - t0, history)


def run_edit(zoo, *, edit: str = "dilate", methods: Sequence[str] = METHODS,
             seeds: Sequence[int] = (0,), steps: int = 500, batch_size: int = 32,
             lr: float = 1e-3, width: int = 32, depth: int = 3, mlp_width: int = 256,
             scale_init: float = 1e-2, eval_every: int = 100, warmup: int = 0,
             fourier_scale: float = 3.0, max_train: int | None = None,
             max_val: int | None = 512, max_test: int | None = None, baseline: bool = True,
             fits: dict | None = None, data: EditData | None = None,
             log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Train every method with every seed on the editing task ``edit`` of a SIREN zoo.

    Returns one row per method (and, with ``baseline``, a first row ``"none"``: delta = 0,
    the SIRENs' renderings scored against the edited images) with columns ``method``,
    ``edit``, ``test_mse_mean``, ``test_mse_std`` (over seeds, ddof 1; 0 for one seed),
    ``val_mse_mean``, ``seconds`` (mean wall time per seed), ``n_seeds``, ``steps``,
    ``params``, ``n_train``, ``n_test``. ``fits``, if a dict, receives every
    :class:`EditFit` keyed ``(method, seed)`` (e.g. for :func:`figure_edits`). ``data``
    reuses loaded data (``zoo`` and the ``max_*`` are then ignored).
    """
    _check_edit(edit)
    methods = [_check_method(m) for m in methods]
    for name, value in (("lr", lr), ("scale_init", scale_init)):
        _check_positive_float(name, value)
    if not methods:
        raise EditError(f"methods is empty; known methods: {', '.join(METHODS)}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise EditError("seeds is empty; give at least one seed")
    if data is None:
        data = load_edit_data(zoo, edit, max_train=max_train, max_val=max_val,
                              max_test=max_test)
    elif data.edit != edit:
        raise EditError(f"data was loaded for edit {data.edit!r}, not {edit!r}")
    common = {"edit": edit, "steps": steps, "n_train": len(data.splits["train"]),
              "n_test": len(data.splits["test"])}
    rows = []
    if baseline:
        kw = {"size": data.size, "omega_0": data.omega_0}
        rows.append({"method": "none", **common, "steps": 0,
                     "test_mse_mean": float(_evaluate(None, data.splits["test"], **kw).mean()),
                     "test_mse_std": 0.0,
                     "val_mse_mean": float(_evaluate(None, data.splits["val"], **kw).mean()),
                     "seconds": 0.0, "n_seeds": 1, "params": 0})
    for method in methods:
        results = []
        for seed in seeds:
            model = make_edit_model(method, data.space, width=width, depth=depth,
                                    mlp_width=mlp_width, seed=seed, scale_init=scale_init,
                                    fourier_scale=fourier_scale)
            fit = train_edit_model(model, data, steps=steps, batch_size=batch_size, lr=lr,
                                   seed=seed, eval_every=eval_every, warmup=warmup,
                                   method=method, log=log)
            results.append(fit)
            if fits is not None:
                fits[(method, seed)] = fit
        tests = np.array([f.test_mse for f in results])
        rows.append({"method": method, **common,
                     "test_mse_mean": float(tests.mean()),
                     "test_mse_std": float(tests.std(ddof=1)) if len(tests) > 1 else 0.0,
                     "val_mse_mean": float(np.mean([f.val_mse for f in results])),
                     "seconds": float(np.mean([f.seconds for f in results])),
                     "n_seeds": len(results),
                     "params": sum(p.numel() for p in results[0].model.parameters())})
    columns = ["method", "edit", "test_mse_mean", "test_mse_std", "val_mse_mean", "seconds",
               "n_seeds", "steps", "params", "n_train", "n_test"]
    return pd.DataFrame(rows, columns=columns)


# --- figure -----------------------------------------------------------------------------------
def _figure_order(rows: pd.DataFrame, n: int) -> np.ndarray:
    """Positions of the ``n`` SIRENs a figure shows: one per label first (a zoo's split may
    be sorted by class), then one per further image (a zoo lists the fits of an image
    together), then the rest, each group in table order."""
    new_label = (~rows["label"].duplicated()).to_numpy() if "label" in rows.columns else \
        np.zeros(len(rows), dtype=bool)
    new_image = (~rows["image_id"].duplicated()).to_numpy() & ~new_label
    rest = ~(new_label | new_image)
    return np.concatenate([np.flatnonzero(new_label), np.flatnonzero(new_image),
                           np.flatnonzero(rest)])[:n]


@torch.no_grad()
def figure_edits(data, models: Mapping[str, nn.Module], path: str | Path, *,
                 edit: str = "dilate", n: int = 4, size: int | None = None) -> Path:
    """Save a PNG: one row per test SIREN (``n`` of them: one per label first, then one per
    further image, then the rest), columns the image it fit, its rendering, the edited
    rendering of each model in ``models`` (name -> editing model), and the target (the
    edited image). ``data``: an :class:`EditData` or a
    SIREN zoo (then ``n`` of its test SIRENs are loaded for ``edit``). ``size``: rendering
    resolution (default: the images'). Returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from gensight.zoo.siren import render

    if not isinstance(data, EditData):
        data = load_edit_data(data, edit, max_train=1, max_val=1, max_test=n)
    if n < 1:
        raise EditError(f"n must be >= 1; got {n!r}")
    test = data.splits["test"]
    order = _figure_order(test.rows, n)
    n = len(order)
    pick = torch.tensor(order, dtype=torch.long)
    w = test.weights[pick]
    size = data.size if size is None else int(size)
    columns = [("image", test.images[pick]), ("SIREN", render(w, size, data.omega_0))]
    for name, model in models.items():
        model.eval()
        columns.append((f"edited: {name}", render(w + model(w), size, data.omega_0)))
    columns.append((f"target ({data.edit})", test.targets[pick]))
    fig, axes = plt.subplots(n, len(columns), figsize=(1.6 * len(columns), 1.6 * n + 0.3),
                             squeeze=False)
    for j, (title, imgs) in enumerate(columns):
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(imgs[i, 0].float().clamp(-1, 1).cpu().numpy(), cmap="gray",
                      vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- CLI helpers ------------------------------------------------------------------------------
def _method_list(text: str) -> list[str]:
    import argparse

    items = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in items if m not in METHODS]
    if not items or bad:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(bad) or repr(text)}; known methods: "
            f"{', '.join(METHODS)}")
    return items


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1; got {text!r}")
    return value


def add_edit_arguments(parser) -> None:
    """Add the INR-editing options to an ``argparse`` parser (see :func:`edit_kwargs`)."""
    parser.add_argument("--edit", choices=tuple(EDITS), default="dilate",
                        help="image edit the models learn (default: dilate)")
    parser.add_argument("--methods", type=_method_list, default=list(METHODS),
                        help=f"comma-separated methods (default: {','.join(METHODS)})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="training seeds (default: 0)")
    parser.add_argument("--steps", type=_positive_int, default=500,
                        help="Adam steps per model (default: 500, a quick look; on the "
                        "14x14 MNIST zoo the NFNs' val MSE sits on a plateau for the first "
                        "1,500-3,500 steps, so use --steps 6000 there, as benchmarks/README.md "
                        "does)")
    parser.add_argument("--batch-size", type=_positive_int, default=32,
                        help="SIRENs per step (default: 32)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam lr (default: 1e-3)")
    parser.add_argument("--width", type=_positive_int, default=32,
                        help="NF-Layer channels (default: 32)")
    parser.add_argument("--depth", type=_positive_int, default=3,
                        help="hidden NF-Layers / MLP layers (default: 3)")
    parser.add_argument("--mlp-width", type=_positive_int, default=256,
                        help="MLP hidden width (default: 256)")
    parser.add_argument("--eval-every", type=_positive_int, default=100,
                        help="steps between val evaluations (default: 100)")
    parser.add_argument("--warmup", type=int, default=0,
                        help="linear learning-rate warm-up steps (default: 0)")
    parser.add_argument("--scale-init", type=float, default=1e-2,
                        help="initial LearnedScale of the delta (default: 0.01)")
    parser.add_argument("--max-train", type=_positive_int, default=None,
                        help="use at most this many training SIRENs (default: all)")
    parser.add_argument("--max-val", type=_positive_int, default=512,
                        help="val SIRENs for model selection (default: 512)")
    parser.add_argument("--max-test", type=_positive_int, default=None,
                        help="test SIRENs (default: all)")
    parser.add_argument("--figure", default=None,
                        help="save a PNG of originals / edited renderings / targets here")


def edit_kwargs(args) -> dict:
    """The :func:`run_edit` keyword arguments from options added by
    :func:`add_edit_arguments` (``--figure`` is not one; read ``args.figure``)."""
    return {"edit": args.edit, "methods": list(args.methods), "seeds": list(args.seeds),
            "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
            "width": args.width, "depth": args.depth, "mlp_width": args.mlp_width,
            "eval_every": args.eval_every, "warmup": args.warmup,
            "scale_init": args.scale_init, "max_train": args.max_train,
            "max_val": args.max_val, "max_test": args.max_test}
