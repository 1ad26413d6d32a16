"""A small byte-level Transformer language model (GPT-style, pre-LayerNorm, causal)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class _Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class ByteLM(nn.Module):
    """Next-byte prediction over a 256-symbol vocabulary.

    ``forward(x)``: ``x`` (B, T) long in [0, 256), T <= ``context`` -> logits (B, T, 256).
    :meth:`sample_losses` gives each sequence's mean cross-entropy (nats per byte), (B,)."""

    def __init__(self, context: int = 64, d: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        if d % heads:
            raise ValueError(f"ByteLM: d={d} must be divisible by heads={heads}")
        self.context = context
        self.embed = nn.Embedding(256, d)
        self.pos = nn.Parameter(torch.zeros(context, d))
        self.blocks = nn.ModuleList(_Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, 256, bias=False)
        self.apply(self._init)
        nn.init.normal_(self.pos, std=0.02)
        for blk in self.blocks:  # scaled residual init (GPT-2)
            nn.init.normal_(blk.proj.weight, std=0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos[: x.shape[1]]
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.ln(h))

    def sample_losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self(x)
        ce = F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1), reduction="none")
        return ce.view(y.shape).mean(1)
