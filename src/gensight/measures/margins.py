"""Margin-distribution signatures (Jiang et al., arXiv 1810.00113).

For a layer ``l`` with representation ``h^l`` (the network input, then the input of every
later Linear/Conv layer), the first-order distance of example ``x`` to the decision boundary
between its true class ``i`` and the strongest other class ``j`` is

    d^l(x) = (f_i(x) - f_j(x)) / ||grad_{h^l} (f_i(x) - f_j(x))||_2        (Eq. 1-2)

normalized by the total variation of the layer, ``nu^l = sqrt(E ||h^l - E h^l||^2)``. Over the
correctly classified training examples (positive margins) the distribution of
``log(d^l / nu^l)`` is summarized per layer by a signature: the quartile signature
``(Q1 - 1.5 IQR, Q1, Q2, Q3, Q3 + 1.5 IQR)`` or the moment signature (mean, standard deviation,
skewness, kurtosis). A linear regression from the concatenated signatures to the
generalization gap is the paper's predictor (:class:`gensight.predict.MarginSignature`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats
from torch import Tensor, nn

from gensight.measures.core import NotApplicable, weight_layers

SIGNATURES = ("quartile", "moment")


def normalized_margins(model: nn.Module, x: Tensor, y: Tensor) -> list[np.ndarray]:
    """Per layer (input first, then the input of each weighted layer after the first), the
    normalized margins ``d^l / nu^l`` of the correctly classified examples."""
    model.eval()
    layers = weight_layers(model)[1:]
    captured: list[Tensor] = []

    def hook(_module, inputs):
        h = inputs[0]
        h.retain_grad()
        captured.append(h)

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    try:
        x = x.clone().requires_grad_(True)
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    correct = out.argmax(1) == y
    if int(correct.sum()) < 4:
        raise NotApplicable("margin signatures need at least 4 correctly classified examples")
    true = out.gather(1, y[:, None]).squeeze(1)
    other = out.detach().scatter(1, y[:, None], float("-inf")).argmax(1)
    diff = true - out.gather(1, other[:, None]).squeeze(1)
    reps = [x, *captured]
    grads = torch.autograd.grad(diff.sum(), reps)
    result = []
    for h, g in zip(reps, grads, strict=True):
        h, g = h.detach().flatten(1), g.flatten(1)
        nu = torch.sqrt(((h - h.mean(0)) ** 2).sum(1).mean()).clamp_min(1e-12)
        d = diff.detach() / g.norm(dim=1).clamp_min(1e-12)
        result.append((d[correct] / nu).numpy().astype(np.float64))
    return result


def signature(margins: list[np.ndarray], kind: str = "quartile") -> np.ndarray:
    """Concatenated per-layer signatures of the log normalized margins."""
    if kind not in SIGNATURES:
        raise ValueError(f"signature kind must be one of {SIGNATURES}, got {kind!r}")
    feats = []
    for m in margins:
        logm = np.log(m[m > 0])
        if kind == "quartile":
            q1, q2, q3 = np.percentile(logm, [25, 50, 75])
            iqr = q3 - q1
            feats += [q1 - 1.5 * iqr, q1, q2, q3, q3 + 1.5 * iqr]
        else:
            feats += [logm.mean(), logm.std(), stats.skew(logm), stats.kurtosis(logm)]
    return np.asarray(feats)
