"""Building blocks of the measures: layers, exact operator norms, margins, the sigma search."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Generator
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
               max_evals: int = 60, upper: float = math.inf, recheck: bool = False
               ) -> tuple[float, int]:
    """The largest ``s`` with ``accept(s)`` (``accept`` true for small ``s``, false for large),
    to relative precision ``rtol``: bracket by factors of 4 from ``start``, then bisect in
    ``log s``. Returns ``(s, evaluations)``.

    With ``recheck``, for an ``accept`` that can wrongly say true (an attack that missed),
    the final lower end is evaluated once more; if it is now rejected, the bisection goes on
    below it, down to the largest ``s`` accepted before it, until a recheck confirms.

    Raises :class:`NotApplicable` when no rejected ``s`` is found up to ``upper`` (the
    bracket would have to grow past it) or no bracket within ``max_evals`` evaluations.

    The search itself is :func:`log_bisect_steps`, which many searches can share in lockstep
    (:func:`gensight.measures.batched.sharpness_alpha_batch`)."""
    steps = log_bisect_steps(start, rtol, max_evals, upper, recheck)
    s = next(steps)
    while True:
        try:
            s = steps.send(accept(s))
        except StopIteration as done:
            return done.value


def log_bisect_steps(start: float, rtol: float, max_evals: int = 60,
                     upper: float = math.inf, recheck: bool = False
                     ) -> Generator[float, bool, tuple[float, int]]:
    """:func:`log_bisect` as a generator: it yields each ``s`` to evaluate, is sent whether
    ``s`` was accepted, and returns ``(s, evaluations)`` (or raises :class:`NotApplicable`)."""
    evals = 0
    s = start
    ok = yield s
    evals += 1
    lo, hi = (s, None) if ok else (None, s)
    accepted = [s] if ok else []
    while (lo is None or hi is None) and evals < max_evals:
        if hi is None and s * 4 > upper:
            raise NotApplicable(f"every scale up to {s:.3g} was accepted, and the next one "
                                f"({s * 4:.3g}) is past the bound {upper:.3g}")
        s = s * 4 if hi is None else s / 4
        if (yield s):
            lo = s
            accepted.append(s)
        else:
            hi = s
        evals += 1
    if lo is None or hi is None:
        raise NotApplicable("the search found no noise scale that drops the accuracy by the "
                            "target (a network near chance level cannot lose that much)")
    while evals < max_evals:
        while hi / lo > 1 + rtol and evals < max_evals:
            mid = math.sqrt(lo * hi)
            if (yield mid):
                lo = mid
                accepted.append(mid)
            else:
                hi = mid
            evals += 1
        if not recheck or evals >= max_evals:
            break
        evals += 1
        if (yield lo):
            break
        below = [a for a in accepted if a < lo]
        if not below:   # every accepted scale was rejected on a second look: bracket down
            hi, lo = lo, lo / 4
            while not (yield lo) and evals < max_evals:
                hi, lo = lo, lo / 4
                evals += 1
            evals += 1
            accepted.append(lo)
        else:
            hi, lo = lo, max(below)
    return math.sqrt(lo * hi), evals


NOISE_BOUND = 100.0
"""How far the searches for sigma' and alpha' may go: a perturbation ``NOISE_BOUND`` times the
weights (the rms of all parameters for plain noise, each parameter's magnitude for the
magnitude-aware kind) replaces the network by a random one, so a target drop not reached by
then has no solution (only a search that keeps expanding)."""


def chance_accuracy(y: Tensor) -> float:
    """The accuracy of the best constant prediction on labels ``y`` (majority-class share)."""
    return float(torch.bincount(y).max()) / max(int(y.shape[0]), 1)


def check_reachable(base: float, y: Tensor, target_drop: float, search: str) -> float:
    """``base - target_drop``, the accuracy a perturbation must fall below; raises
    :class:`NotApplicable` when that is at or below chance (the majority-class share of ``y``).

    The PAC-Bayes and sharpness searches look for the perturbation scale that costs
    ``target_drop`` of the training accuracy. Weight noise takes a network at most to a
    random one, whose expected accuracy is about chance; a network whose accuracy is within
    ``target_drop`` of chance has no such scale, and without this check the search keeps
    growing its bracket (458 s for the whole set of search measures on one chance-level CNN)
    before giving up."""
    chance = chance_accuracy(y)
    target = base - target_drop
    if target <= chance:
        raise NotApplicable(
            f"network at chance level (train accuracy {base:.2f}, majority class "
            f"{chance:.2f}): the {search} search has no solution (the perturbed accuracy would "
            f"have to fall below {max(target, 0.0):.2f}, which a constant prediction beats)")
    return target


def _bound(params: dict[str, Tensor], magnitude: bool) -> float:
    """:data:`NOISE_BOUND` in the search's own units (see there)."""
    if magnitude:
        return NOISE_BOUND
    flat = torch.cat([v.reshape(-1) for v in params.values()])
    return NOISE_BOUND * max(float(flat.double().pow(2).mean().sqrt()), 1e-12)


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

    A network whose training accuracy is within ``target_drop`` of chance (the majority-class
    share) has no solution, and neither has one that keeps the target accuracy up to noise
    :data:`NOISE_BOUND` times its weights: both raise :class:`NotApplicable` (the first
    before any noise is drawn).
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
    target = check_reachable(base, y, target_drop, "sigma")
    bracket_draws = max(draws // 2, 2)
    batch = n // draws

    def accept(sigma: float) -> bool:
        return float(sampler.sample(sigma, bracket_draws, batch).mean()) >= target

    try:
        center, evals = log_bisect(accept, 0.1 if magnitude else 0.01, rtol=width ** 2 - 1,
                                   upper=_bound(sampler.params, magnitude))
    except NotApplicable as exc:
        raise NotApplicable(f"the sigma search has no solution (train accuracy {base:.2f}): "
                            f"{exc}; noise that large leaves a random network") from None
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


SHARPNESS_RESTARTS = 8
SHARPNESS_STEPS = 20
"""Default effort of the alpha' search (restarts x steps per radius); chosen by measurement
(``benchmarks/bench_sharpness.py --compare-attacks``, numbers in ``benchmarks/README.md``)."""

_BAND = 0.02    # half-width of the band of critical margins the attack descends (share of n)
_STEP = (0.5, 0.05)  # sign-step size, as a share of the box radius: first and last step


def _step_sizes(steps: int) -> list[float]:
    """Cosine decay of the step (share of the radius) from ``_STEP[0]`` to ``_STEP[1]``."""
    first, last = _STEP
    if steps <= 1:
        return [first] * steps
    return [last + (first - last) * 0.5 * (1 + math.cos(math.pi * t / (steps - 1)))
            for t in range(steps)]


def sharpness_alpha(model: nn.Module, x: Tensor, y: Tensor, *, magnitude: bool = False,
                    target_drop: float = 0.1, restarts: int = SHARPNESS_RESTARTS,
                    steps: int = SHARPNESS_STEPS, rtol: float = 0.01, seed: int = 0
                    ) -> tuple[float, dict]:
    """alpha': the largest box radius for which no perturbation in the box drops the accuracy
    on ``(x, y)`` by more than ``target_drop`` (arXiv 1912.02178, App. C.5). The box is
    ``|u_i| <= alpha`` or, magnitude-aware (App. C.6), ``|u_i| <= alpha |w_i| + eps``.

    The worst case in the box is searched for, at each radius of a log-scale bisection (to
    relative precision ``rtol``), by ``restarts`` projected sign-gradient descents of
    ``steps`` steps each, batched as in :func:`batched_forward`:

    - *objective*: the accuracy falls below ``base - target_drop`` exactly when the ``c``-th
      largest output margin (true logit minus the largest other one), ``c = ceil((base -
      target_drop) n)``, is <= 0. The attack descends the mean of the margins ranked within
      ``2% n`` of ``c``: this order statistic is what decides the criterion, where the
      cross-entropy spends its gradient on examples already misclassified or far from the
      boundary (on our digits MLPs the cross-entropy attack's alpha' was up to 2x larger at
      the same effort);
    - every iterate is checked, not only the last, and a radius is rejected at the first
      iterate that breaks the criterion;
    - each restart carries its perturbation (as a share of the box) from one radius to the
      next, and the first restart resumes from the breaking perturbation of the smallest box
      broken so far, so the search's later radii, all close to alpha', start from the worst
      perturbations found so far;
    - the step (a share of the radius) decays from 0.5 to 0.05 along each descent;
    - the largest radius the attack failed to break is attacked once more from fresh random
      starts when the bisection ends (``log_bisect(recheck=True)``); if it breaks now, the
      bisection goes on below it.

    Any breaking perturbation found at radius ``a`` proves alpha' <= ``a``; a stronger attack
    can only lower the estimate. The default effort (8 restarts x 20 steps) is the cheapest
    whose alpha' was within 2% of that of an attack with 8x the effort (16 x 80) on 8 trained
    digits MLPs, plain and magnitude-aware (at most 1.1% above it; on 4 digits CNNs at most
    3.3%); it costs about 11x (MLPs) to 21x (CNNs) the time of the previous attack (cross-
    entropy, 2 x 4), whose alpha' was 6% to 4.4x larger. See ``benchmarks/README.md``.

    A network within ``target_drop`` of chance accuracy, or one not broken by a box
    :data:`NOISE_BOUND` times its weights, raises :class:`NotApplicable`. Returns ``(alpha',
    info)`` with ``info["passes"]`` (work in single-network forward passes, a backward pass
    counted as two), ``info["evaluations"]`` and ``info["base_accuracy"]``.
    """
    if restarts < 1 or steps < 1 or not rtol > 0:
        raise MeasureError(f"the alpha search needs restarts >= 1, steps >= 1 and rtol > 0, "
                           f"got {restarts}, {steps}, {rtol}")
    params = {k: v.detach() for k, v in model.named_parameters()}
    base = accuracy(model, x, y)
    target = check_reachable(base, y, target_drop, "alpha")
    n = int(y.shape[0])
    c = max(math.ceil(target * n - 1e-9), 1)
    band = max(2, round(_BAND * n))
    lo_i, hi_i = max(c - 1 - band, 0), min(c + band, n)
    gen = torch.Generator().manual_seed(seed)
    share = {k: torch.rand((restarts, *v.shape), generator=gen) * 2 - 1
             for k, v in params.items()}
    forward = batched_forward(model, x)
    labels = y[None, :, None].expand(restarts, -1, 1)
    sizes = _step_sizes(steps)
    passes = [1.0]
    seen: set[float] = set()
    best: dict[str, Tensor] = {}   # share of the breaking perturbation of the smallest box
    best_radius = [math.inf]

    def accept(alpha: float) -> bool:
        if alpha in seen:   # a recheck (see log_bisect): from fresh random starts
            for name, v in params.items():
                share[name] = torch.rand((restarts, *v.shape), generator=gen) * 2 - 1
        seen.add(alpha)
        radius = {name: (alpha * v.abs() + EPSILON) if magnitude else torch.full_like(v, alpha)
                  for name, v in params.items()}
        if best:   # the first restart resumes from the breaking perturbation of the smallest
            for name in params:   # box broken so far, shrunk to this one
                share[name][0] = best[name]
        delta = {name: share[name] * radius[name] for name in params}
        for t in range(steps + 1):
            delta = {name: v.requires_grad_(True) for name, v in delta.items()}
            out = forward({name: params[name] + delta[name] for name in params}, x)
            passes[0] += restarts
            accs = (out.argmax(-1) == y).float().mean(dim=1)
            worst = float(accs.min())
            if worst < target or t == steps:
                with torch.no_grad():
                    for name in params:
                        share[name] = delta[name].detach() / radius[name]
                    if worst < target and alpha < best_radius[0]:
                        j = int(accs.argmin())
                        best.update({name: delta[name][j].detach() / radius[name]
                                     for name in params})
                        best_radius[0] = alpha
                return worst >= target
            true = out.gather(2, labels).squeeze(2)
            other = out.scatter(2, labels, float("-inf")).amax(2)
            ordered = (true - other).sort(dim=1, descending=True).values
            critical = ordered[:, lo_i:hi_i].mean(dim=1)
            grads = torch.autograd.grad(critical.sum(), list(delta.values()))
            passes[0] += 2 * restarts
            with torch.no_grad():
                delta = {name: torch.clamp(delta[name] - sizes[t] * radius[name] * g.sign(),
                                           -radius[name], radius[name])
                         for name, g in zip(delta, grads, strict=True)}
        raise AssertionError("unreachable")

    try:
        alpha, evals = log_bisect(accept, 0.1 if magnitude else 0.01, rtol,
                                  upper=_bound(params, magnitude), recheck=True)
    except NotApplicable as exc:
        raise NotApplicable(f"the alpha search has no solution (train accuracy {base:.2f}): "
                            f"{exc}; a box that large leaves a random network") from None
    return alpha, {"passes": passes[0], "evaluations": evals, "base_accuracy": base}
