"""Small synthetic inner tasks for the learned-optimizer tests (no dataset loading)."""

from __future__ import annotations

import torch

from gensight.lopt.tasks import Batch, MLPTask


class TinyMLPTask(MLPTask):
    """MLP ``widths`` on a fixed random classification set of 64 examples."""

    def __init__(self, widths=(6, 5, 3), batch_size=8, dtype=torch.float64):
        super().__init__("tiny-mlp", "none", widths, batch_size)
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(64, widths[0], generator=g, dtype=dtype)
        self.y = torch.randint(0, widths[-1], (64,), generator=g)

    def sample(self, n, generator, dtype=torch.float32):
        idx = torch.randint(0, 64, (n, self.batch_size), generator=generator)
        return Batch(self.x[idx].to(dtype), self.y[idx])

    def split(self, name, limit=None):
        return self.x, self.y
