"""Small random networks of several shapes for tests."""

from __future__ import annotations

import torch
from torch import nn


def make_mlp(widths: list[int], bias: bool | list[bool] = True, act=nn.ReLU) -> nn.Sequential:
    biases = bias if isinstance(bias, list) else [bias] * (len(widths) - 1)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False)):
        layers.append(nn.Linear(a, b, bias=biases[i]))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def make_cnn(channels: list[int], n_classes: int, kernel: int = 3, bias: bool = True,
             dims: int = 2) -> nn.Sequential:
    conv = nn.Conv2d if dims == 2 else nn.Conv1d
    pool = nn.AdaptiveAvgPool2d if dims == 2 else nn.AdaptiveAvgPool1d
    layers: list[nn.Module] = []
    for a, b in zip(channels, channels[1:], strict=False):
        layers += [conv(a, b, kernel, padding=1, bias=bias), nn.ReLU()]
    layers += [pool(1), nn.Flatten(), nn.Linear(channels[-1], n_classes, bias=bias)]
    return nn.Sequential(*layers)


# (name, factory, input shape) -- the architectures the symmetry tests loop over.
ARCHITECTURES = [
    ("mlp-1layer", lambda: make_mlp([5, 3]), (5,)),
    ("mlp-2layer", lambda: make_mlp([6, 4, 3]), (6,)),
    ("mlp-3layer-nobias", lambda: make_mlp([5, 7, 4, 3], bias=False), (5,)),
    ("mlp-4layer-mixedbias", lambda: make_mlp([4, 6, 5, 3, 2], bias=[True, False, True, True],
                                              act=nn.Tanh), (4,)),
    ("cnn2d-2conv", lambda: make_cnn([2, 4, 3], 3), (2, 6, 6)),
    ("cnn2d-3conv-nobias", lambda: make_cnn([1, 3, 4, 3], 4, bias=False), (1, 7, 7)),
    ("cnn1d-2conv", lambda: make_cnn([2, 3, 4], 3, dims=1), (2, 9)),
]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
