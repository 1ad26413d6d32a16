"""Draw training batches by a mixing policy's current mixture (numpy; torch only in
:meth:`MixtureSampler.torch_batch`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gensight.mixing.scaling import MixingError


class MixtureSampler:
    """Batches of byte windows whose domains follow a mixture.

    ``data``: one 1-D uint8 array per domain (its training split), ``names``: the K domain
    names, ``context``: the model's context length (each window has ``context + 1`` bytes: the
    input and the next-byte targets), ``batch_size``: B, ``seed``: seeds a
    ``numpy.random.Generator`` (PCG64) whose state is saved by :meth:`state_dict`.

    :meth:`sample` ``(pi)`` draws the B domain ids i.i.d. from ``pi`` (K,) and a uniformly random
    window of each sample's domain; it returns ``windows`` (B, context + 1) uint8, ``domain_ids``
    (B,) int64 and ``counts`` (K,) int64. Raises :class:`MixingError` for a domain with fewer than
    ``context + 1`` bytes, or a ``pi`` that is not a distribution over the K domains."""

    def __init__(self, data: Sequence[np.ndarray], names: Sequence[str], context: int,
                 batch_size: int, seed: int = 0):
        self.names = [str(n) for n in names]
        if len(data) != len(self.names):
            raise MixingError(f"sampler: {len(data)} data arrays for {len(self.names)} domains")
        if int(context) != context or context < 1 or int(batch_size) != batch_size \
                or batch_size < 1:
            raise MixingError(f"sampler: context and batch_size must be positive integers; got "
                              f"{context!r}, {batch_size!r}")
        self.data = []
        for name, arr in zip(self.names, data, strict=True):
            arr = np.ascontiguousarray(np.asarray(arr, dtype=np.uint8).ravel())
            if arr.size < context + 1:
                raise MixingError(f"domain {name!r} has no data to sample: {arr.size} bytes, "
                                  f"needs at least context + 1 = {context + 1}")
            self.data.append(arr)
        self.k, self.context, self.batch_size = len(self.data), int(context), int(batch_size)
        self.rng = np.random.default_rng(seed)
        self._offsets = np.arange(self.context + 1)

    def _check_pi(self, pi) -> np.ndarray:
        pi = np.asarray(pi, dtype=np.float64).ravel()
        if pi.size != self.k or np.any(pi < 0) or not np.all(np.isfinite(pi)) \
                or abs(pi.sum() - 1.0) > 1e-6:
            raise MixingError(f"sampler: the mixture must be a distribution over {self.k} "
                              f"domains; got {pi}")
        return pi / pi.sum()

    def sample(self, pi) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pi = self._check_pi(pi)
        ids = self.rng.choice(self.k, size=self.batch_size, p=pi)
        windows = np.empty((self.batch_size, self.context + 1), dtype=np.uint8)
        for k in np.unique(ids):
            rows = np.flatnonzero(ids == k)
            arr = self.data[k]
            starts = self.rng.integers(0, arr.size - self.context, size=rows.size)
            windows[rows] = arr[starts[:, None] + self._offsets[None, :]]
        return windows, ids.astype(np.int64), np.bincount(ids, minlength=self.k).astype(np.int64)

    def torch_batch(self, pi):
        """:meth:`sample` as torch tensors: inputs (B, context) long, targets (B, context) long,
        domain ids (B,) long, counts (K,) numpy."""
        import torch

        windows, ids, counts = self.sample(pi)
        w = torch.from_numpy(windows.astype(np.int64))
        return w[:, :-1], w[:, 1:], torch.from_numpy(ids), counts

    def state_dict(self) -> dict:
        """The generator's state (JSON-serialisable)."""
        return self.rng.bit_generator.state

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def domain_losses(sample_losses, domain_ids, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss of each domain's samples in a batch: ``sample_losses`` (B,), ``domain_ids``
    (B,) in [0, K) -> (losses (K,) with NaN where a domain has no sample, counts (K,))."""
    x = np.asarray(sample_losses, dtype=np.float64).ravel()
    ids = np.asarray(domain_ids, dtype=np.int64).ravel()
    counts = np.bincount(ids, minlength=k).astype(np.float64)
    sums = np.bincount(ids, weights=x, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan), counts
