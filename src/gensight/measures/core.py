"""Building blocks of the measures: layers, exact operator norms, margins, the sigma search."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from gensight.errors import GensightError

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
RELU_LIKE = (nn.ReLU, nn.LeakyReLU)


class MeasureError(GensightError, ValueError):
    """A measure that cannot be computed for this input (unknown name, missing data)."""


class NotApplicable(GensightError):
    """A measure that does not apply to this architecture or member; the message says why."""


@dataclass
class MemberData:
    """Everything a measure may use for one network.

    ``model``: the trained network (put in eval mode); ``init``: the same network at
    initialization (``None`` when unknown); ``x``/``y``: training examples the data-dependent
    measures use; ``n_train``: the size ``m`` of the training set (for the bounds' log terms).
    """

    model: nn.Module
    x: Tensor | None = None
    y: Tensor | None = None
    init: nn.Module | None = None
    n_train: int | None = None

    def __post_init__(self) -> None:
        self.model.eval()
        if self.init is not None:
            self.init.eval()

    def need_data(self, name: str) -> tuple[Tensor, Tensor]:
        if self.x is None or self.y is None:
            raise MeasureError(f"measure {name!r} needs training data (x, y)")
        return self.x, self.y

    def need_init(self, name: str) -> nn.Module:
        if self.init is None:
            raise MeasureError(f"measure {name!r} needs the network at initialization (a zoo "
                               "with checkpoint 0)")
        return self.init


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """The Linear/Conv layers of ``model`` in forward order."""
    layers = [m for m in model.modules() if isinstance(m, WEIGHTED)]
    if not layers:
        raise NotApplicable(f"{type(model).__name__} has no Linear or Conv layer")
    return layers


def flat_params(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def layer_input_shapes(model: nn.Module, example: Tensor) -> dict[nn.Module, tuple[int, ...]]:
    """Per weighted layer, the shape of one example's input to it (found with hooks)."""
    shapes: dict[nn.Module, tuple[int, ...]] = {}
    hooks = [m.register_forward_hook(
        lambda mod, inp, out: shapes.__setitem__(mod, tuple(inp[0].shape[1:])))
        for m in weight_layers(model)]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return shapes


def conv_operator(layer: nn.Module, shape: tuple[int, ...],
                  dtype: torch.dtype = torch.float64) -> tuple[Callable, Callable]:
    """The linear map of a conv layer (bias excluded) on inputs of ``shape`` and its adjoint."""
    dims = layer.weight.dim() - 2
    conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d)[dims - 1]
    conv_t = (torch.nn.functional.conv_transpose1d,
              torch.nn.functional.conv_transpose2d)[dims - 1]
    kw = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
              groups=layer.groups)
    w = layer.weight.detach().to(dtype)
    out_shape = conv(torch.zeros(1, *shape, dtype=dtype), w, **kw).shape[1:]
    # output_padding makes the transpose return exactly the input shape
    extra = [s - ((o - 1) * st - 2 * p + d * (k - 1) + 1) for s, o, st, p, d, k in zip(
        shape[1:], out_shape[1:], layer.stride, layer.padding, layer.dilation,
        w.shape[2:], strict=True)]

    def forward(v: Tensor) -> Tensor:
        return conv(v, w, **kw)

    def adjoint(v: Tensor) -> Tensor:
        return conv_t(v, w, output_padding=tuple(extra), **kw)

    return forward, adjoint


class ConvergenceWarning(UserWarning):
    """An iterative computation stopped at its iteration limit before reaching its tolerance;
    the result is less accurate than asked (the message says by how much at most)."""


class PowerIteration(NamedTuple):
    """Result of :func:`power_iteration_norm`: the estimate ``norm`` of ``||A||_2``, the
    relative Rayleigh-quotient residual ``||A^T A v - s^2 v|| / s^2`` at the returned vector
    (``s^2`` then lies within this relative distance of an eigenvalue of ``A^T A``), the
    number of ``A^T A`` products used, and whether ``residual <= tol``."""

    norm: float
    residual: float
    iterations: int
    converged: bool


def power_iteration_norm(forward: Callable[[Tensor], Tensor], adjoint: Callable[[Tensor], Tensor],
                         shape: tuple[int, ...], *, tol: float = 1e-6, max_iter: int = 2000,
                         seed: int = 0, dtype: torch.dtype = torch.float64) -> PowerIteration:
    """Spectral norm of the linear map ``forward`` (with adjoint ``adjoint``) on inputs of
    ``shape`` (without the batch axis), by power iteration on ``A^T A`` from a seeded random
    start.

    It stops when the Rayleigh-quotient residual bounds the error: with ``v`` a unit vector,
    ``s^2 = v^T A^T A v`` and ``r = A^T A v - s^2 v``, a symmetric matrix has an eigenvalue
    within ``||r||`` of ``s^2``; iteration stops once ``||r|| <= tol * s^2``, so ``s^2`` is
    within relative error ``tol`` of an eigenvalue of ``A^T A`` (and ``s`` within about
    ``tol / 2`` of a singular value of ``A``; from a random start, the largest one). The
    estimate never exceeds the true norm. Unlike a stop on the step-to-step change of the
    estimate, which can fire early while the iterate is still turning, this is a bound.
    """
    if not tol > 0 or max_iter < 1:
        raise MeasureError(f"power iteration needs tol > 0 and max_iter >= 1, got tol={tol}, "
                           f"max_iter={max_iter}")
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn((1, *shape), generator=gen, dtype=dtype)
    v /= v.norm()
    rho, residual, it = 0.0, math.inf, 0
    with torch.no_grad():
        for it in range(1, max_iter + 1):
            u = adjoint(forward(v))
            rho = float((u * v).sum())  # ||A v||^2 >= 0
            if rho <= 0.0:
                if float(u.norm()) == 0.0:  # A v = 0 for a random v: A = 0 (almost surely)
                    return PowerIteration(0.0, 0.0, it, True)
                rho = 0.0
            residual = float((u - rho * v).norm()) / rho if rho > 0 else math.inf
            if residual <= tol:
                break
            v = u / u.norm()
    return PowerIteration(math.sqrt(rho), residual, it, residual <= tol)


def operator_norm(layer: nn.Module, shape: tuple[int, ...] | None = None, *,
                  tol: float = 1e-6, max_iter: int = 2000) -> float:
    """Spectral norm (largest singular value) of a layer's linear map, bias excluded.

    Linear layers: of the weight matrix (``torch.linalg.matrix_norm(W, 2)``, exact). Conv
    layers: of the convolution as an operator on inputs of ``shape`` (padding and stride
    included), by :func:`power_iteration_norm`, to relative error ``tol`` in the squared norm
    (about ``tol / 2`` in the norm): the exact operator norm, not the norm of the reshaped
    kernel, which can be far from it. If ``max_iter`` products are used up first, the
    estimate so far is returned (a lower bound) and a :class:`ConvergenceWarning` says how far
    from converged it is.
    """
    if isinstance(layer, nn.Linear):
        return float(torch.linalg.matrix_norm(layer.weight.detach().double(), ord=2))
    if shape is None:
        raise MeasureError("the spectral norm of a conv layer needs its input shape")
    fwd, adj = conv_operator(layer, shape)
    result = power_iteration_norm(fwd, adj, shape, tol=tol, max_iter=max_iter)
    if not result.converged:
        warnings.warn(
            f"operator norm of {layer} on inputs {tuple(shape)}: power iteration stopped at "
            f"max_iter={max_iter} with relative residual {result.residual:.3g} > tol={tol:g}; "
            f"the returned norm {result.norm:.6g} is a lower bound, accurate only to about "
            f"{min(result.residual, 1.0) / 2:.2g} (relative) if it has found the top singular "
            "value", ConvergenceWarning, stacklevel=2)
    return result.norm


def output_margins(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Output margins ``f(x)[y] - max_{j != y} f(x)[j]`` (negative when misclassified)."""
    with torch.no_grad():
        out = model(x)
    true = out.gather(1, y[:, None]).squeeze(1)
    other = out.scatter(1, y[:, None], float("-inf")).max(dim=1).values
    return true - other


def margin_percentile(model: nn.Module, x: Tensor, y: Tensor, q: float = 10.0) -> float:
    """The ``q``-th percentile of the output margins on ``(x, y)`` (arXiv 1912.02178 uses the
    10th percentile as a margin robust to outliers)."""
    return float(torch.quantile(output_margins(model, x, y), q / 100))


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def batched_forward(model: nn.Module, x: Tensor, *, split_inputs: bool = False
                    ) -> Callable[[dict[str, Tensor], Tensor], Tensor]:
    """``f(params, xb) -> (k, batch, classes)``: ``model`` with ``k`` stacked parameter sets.

    ``xb`` is one batch shared by the ``k`` copies, or with ``split_inputs`` a ``(k, batch,
    ...)`` stack with one batch per copy. ``torch.func.vmap`` over the parameter sets, except
    for conv networks on the CPU, where a loop over the sets is used: vmap turns k convolutions
    into one grouped convolution, which measured 3.6x slower per network than k plain ones on a
    2-core CPU (the same effect as in the population trainer's CPU path). On a GPU the vmap
    path is used for every network.
    """

    def single(params, xb):
        return functional_call(model, params, (xb,))

    has_conv = any(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in model.modules())
    if has_conv and not x.is_cuda:
        def looped(params, xb):
            k = next(iter(params.values())).shape[0]
            return torch.stack([single({n: v[i] for n, v in params.items()},
                                       xb[i] if split_inputs else xb) for i in range(k)])
        return looped
    return vmap(single, in_dims=(0, 0 if split_inputs else None))


def log_bisect(accept: Callable[[float], bool], start: float, rtol: float,
               max_evals: int = 60) -> tuple[float, int]:
    """The largest ``s`` with ``accept(s)`` (``accept`` true for small ``s``, false for large),
    to relative precision ``rtol``: bracket by factors of 4 from ``start``, then bisect in
    ``log s``. Returns ``(s, evaluations)``."""
    evals = 0
    s = start
    ok = accept(s)
    evals += 1
    lo, hi = (s, None) if ok else (None, s)
    while (lo is None or hi is None) and evals < max_evals:
        s = s * 4 if hi is None else s / 4
        if accept(s):
            lo = s
        else:
            hi = s
        evals += 1
    if lo is None or hi is None:
        raise NotApplicable("the search found no noise scale that drops the accuracy by the "
                            "target (a network near chance level cannot lose that much)")
    while hi / lo > 1 + rtol and evals < max_evals:
        mid = math.sqrt(lo * hi)
        if accept(mid):
            lo = mid
        else:
            hi = mid
        evals += 1
    return math.sqrt(lo * hi), evals


EPSILON = 1e-3  # the magnitude-aware perturbation's additive term (arXiv 1912.02178)


def noise_scale(params: dict[str, Tensor], sigma: float, magnitude: bool) -> dict[str, Tensor]:
    """Per-parameter standard deviation of the perturbation: ``sigma`` (plain) or
    ``sqrt(sigma^2 w_i^2 + eps^2)`` (magnitude-aware)."""
    if not magnitude:
        return {k: torch.full_like(v, sigma) for k, v in params.items()}
    return {k: torch.sqrt(sigma ** 2 * v ** 2 + EPSILON ** 2) for k, v in params.items()}


class _NoiseSampler:
    """Accuracy of a network under Gaussian weight noise, one fresh draw per example batch.

    ``sample(sigma, m, batch)`` draws ``m`` perturbed copies and evaluates copy ``j`` on the
    ``j``-th of ``m`` disjoint random batches of ``batch`` examples, so the mean of the ``m``
    returned accuracies is an unbiased estimate of the expected accuracy over noise *and*
    examples for the cost of ``m * batch`` examples through one network. ``passes`` counts
    the work done in full single-network passes over the data.
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, magnitude: bool,
                 gen: torch.Generator):
        self.x, self.y, self.magnitude, self.gen = x, y, magnitude, gen
        self.params = {k: v.detach() for k, v in model.named_parameters()}
        self.forward = batched_forward(model, x, split_inputs=True)
        self.passes = 0.0

    def sample(self, sigma: float, m: int, batch: int) -> np.ndarray:
        n = self.y.shape[0]
        idx = torch.randperm(n, generator=self.gen)[: m * batch].view(m, batch)
        scale = noise_scale(self.params, sigma, self.magnitude)
        copies = {k: v + torch.randn((m, *v.shape), generator=self.gen) * scale[k]
                  for k, v in self.params.items()}
        with torch.no_grad():
            out = self.forward(copies, self.x[idx])
        self.passes += idx.numel() / n
        return (out.argmax(-1) == self.y[idx]).float().mean(dim=1).numpy()


def _root(logs: np.ndarray, accs: np.ndarray, target: float, center: float
          ) -> tuple[float, float]:
    """Where a quadratic least-squares fit of accuracy on ``log sigma`` crosses ``target``,
    nearest to ``center``, with its standard error by the delta method. Falls back to a
    straight line where the quadratic has no decreasing crossing near ``center``."""
    t = logs - center
    for degree in (2, 1):
        design = np.vander(t, degree + 1, increasing=True)          # 1, t, t^2
        coef, *_ = np.linalg.lstsq(design, accs, rcond=None)
        resid = accs - design @ coef
        dof = max(len(accs) - degree - 1, 1)
        cov = np.linalg.pinv(design.T @ design) * float(resid @ resid) / dof
        poly = np.polynomial.Polynomial(coef)
        roots = [r.real for r in (poly - target).roots() if abs(r.imag) < 1e-12]
        roots = [r for r in roots if poly.deriv()(r) < 0 and abs(r) < 1.5]
        if not roots:
            continue
        r = min(roots, key=abs)
        grad = np.array([r ** i for i in range(degree + 1)])        # d poly / d coef
        slope = poly.deriv()(r)
        se = math.sqrt(max(float(grad @ cov @ grad), 0.0)) / abs(slope)
        return center + r, se
    raise NotApplicable("the sigma search could not locate the accuracy drop: the accuracy "
                        "does not decrease with the noise near the bracket (too few examples?)")


_OFFSETS = (-1.0, 1.0, 0.0, -0.5, 0.5, -1.0, 1.0, 0.0, -0.5, 0.5)  # levels around the centre


def pacbayes_sigma(model: nn.Module, x: Tensor, y: Tensor, *, magnitude: bool = False,
                   target_drop: float = 0.1, draws: int = 10, points: int = 8,
                   width: float = 1.3, seed: int = 0) -> tuple[float, dict]:
    """sigma': the largest standard deviation of Gaussian weight noise for which the expected
    accuracy drop on ``(x, y)`` stays within ``target_drop`` (arXiv 1912.02178, App. C.5).

    The noise ``u ~ N(0, sigma^2 I)`` (or ``N(0, sigma^2 w_i^2 + eps^2)`` magnitude-aware) has
    standard deviation sigma: not variance. The paper's recipe bisects sigma with a fixed number
    of Monte Carlo draws, each a full pass over the data, at every step; most of those passes
    only confirm what is already known far from the answer. Here:

    1. *bracket*: a cheap log-scale bisection (each evaluation ``draws // 2`` copies on
       ``n // draws`` examples each, half a pass) finds sigma within a factor ``width^2``;
    2. *regress*: ``points`` noise levels at ``c * width^u`` (``u`` cycling through -1, 1, 0,
       -1/2, 1/2) around a centre ``c`` that starts at the bracket's and, from the fourth level
       on, follows the current estimate; each level is ``draws`` fresh copies on disjoint
       example batches (one pass). A quadratic least-squares fit of accuracy on ``log sigma``
       over all ``points * draws`` draws is solved for the target accuracy: every draw informs
       the answer, instead of only those of the last bisection steps.

    Each copy sees a fresh noise draw and its own batch, so the fitted curve estimates the
    expected accuracy over noise and examples, as in the paper. Returns ``(sigma', info)``
    with ``info["passes"]`` (work in full single-network passes), ``info["log_sigma_se"]``
    (the standard error of ``log sigma'`` from the fit, i.e. its relative precision) and
    ``info["base_accuracy"]``.
    """
    n = y.shape[0]
    if n < 2 * draws:
        raise MeasureError(f"the sigma search needs at least {2 * draws} examples "
                           f"({draws} draws x 2), got {n}")
    if not 0 < target_drop < 1:
        raise MeasureError(f"target_drop must be in (0, 1), got {target_drop}")
    gen = torch.Generator().manual_seed(seed)
    sampler = _NoiseSampler(model, x, y, magnitude, gen)
    base = accuracy(model, x, y)
    sampler.passes += 1
    target = base - target_drop
    bracket_draws = max(draws // 2, 2)
    batch = n // draws

    def accept(sigma: float) -> bool:
        return float(sampler.sample(sigma, bracket_draws, batch).mean()) >= target

    center, evals = log_bisect(accept, 0.1 if magnitude else 0.01, rtol=width ** 2 - 1)
    center = math.log(center)
    h = math.log(width)
    logs, accs = [], []
    for i in range(points):
        if i >= 3:  # follow the current estimate, at most a factor `width` a step
            try:
                root, _ = _root(np.concatenate(logs), np.concatenate(accs), target, center)
                center = min(max(root, center - h), center + h)
            except NotApplicable:
                pass
        level = center + _OFFSETS[i % len(_OFFSETS)] * h
        accs.append(sampler.sample(math.exp(level), draws, batch))
        logs.append(np.full(draws, level))
    root, se = _root(np.concatenate(logs), np.concatenate(accs), target, center)
    return math.exp(root), {"passes": sampler.passes, "evaluations": evals + points,
                            "base_accuracy": base, "log_sigma_se": se}


def sharpness_alpha(model: nn.Module, x: Tensor, y: Tensor, *, magnitude: bool = False,
                    target_drop: float = 0.1, restarts: int = 4, steps: int = 5,
                    rtol: float = 0.02, seed: int = 0) -> tuple[float, dict]:
    """alpha': the largest box radius for which the worst perturbation in the box, found by
    projected sign-gradient ascent on the loss from ``restarts`` random starts (batched as in
    :func:`batched_forward`),
    drops the accuracy on ``(x, y)`` by at most ``target_drop`` (arXiv 1912.02178, App. C.5).
    The box is ``|u_i| <= alpha`` or, magnitude-aware, ``|u_i| <= alpha |w_i| + eps``."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    base = accuracy(model, x, y)
    gen = torch.Generator().manual_seed(seed)
    start_u = {k: torch.rand((restarts, *v.shape), generator=gen) * 2 - 1
               for k, v in params.items()}
    passes = [1.0]

    forward = batched_forward(model, x)

    def losses(delta):
        out = forward({k: params[k] + delta[k] for k in params}, x)
        per_copy = torch.nn.functional.cross_entropy(
            out.flatten(0, 1), y.repeat(out.shape[0]), reduction="none").view(out.shape[0], -1)
        return per_copy.mean(dim=1), out

    def accept(alpha: float) -> bool:
        radius = {k: (alpha * v.abs() + EPSILON) if magnitude else torch.full_like(v, alpha)
                  for k, v in params.items()}
        delta = {k: start_u[k] * radius[k] for k in params}
        for _ in range(steps):
            delta = {k: v.requires_grad_(True) for k, v in delta.items()}
            loss, _ = losses(delta)
            grads = torch.autograd.grad(loss.sum(), list(delta.values()))
            with torch.no_grad():
                delta = {k: torch.clamp(delta[k] + 0.5 * radius[k] * g.sign(), -radius[k],
                                        radius[k]) for k, g in zip(delta, grads, strict=True)}
        passes[0] += restarts * steps * 3  # forward + backward ~ 3 forward passes
        with torch.no_grad():
            _, out = losses(delta)
        passes[0] += restarts
        worst = float((out.argmax(-1) == y).float().mean(dim=1).min())
        return worst >= base - target_drop

    alpha, evals = log_bisect(accept, 0.1 if magnitude else 0.01, rtol)
    return alpha, {"passes": passes[0], "evaluations": evals, "base_accuracy": base}
