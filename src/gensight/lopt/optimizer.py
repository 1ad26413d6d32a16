"""Learned optimizers on weight space: features, update rule, and a ``torch.optim`` wrapper.

Update rule (the SGD-with-momentum-plus-learned-term form that the UNF paper, Zhou, Finn,
Harrison, arXiv 2402.05232, Sec. 4 "learned optimizers", substitutes its functionals into; the
paper's exact feature list was not available to us, so the list below is a documented, standard
choice following Metz et al.'s per-parameter learned optimizers)::

    m_d  <- d * m_d + g                    for every decay d in ``decays``   (torch SGD form)
    v    <- beta2 * v + (1 - beta2) * g^2
    feats = normalize([theta, g, m_d..., sqrt(v), m_mu / (sqrt(v) + eps)])   (C channels)
    theta <- theta - alpha * (gamma * m_mu + beta * f(feats))

with ``mu = momentum`` one of ``decays`` and ``alpha, beta, gamma > 0`` meta-learned scalars
stored as logarithms. ``normalize`` divides every feature of every tensor by its RMS over the
tensor (per optimizee), ``x / sqrt(mean(x^2) + eps^2)``, so ``f`` sees scale-free inputs and a
learned optimizer transfers across tensor scales. With ``f = 0``, ``alpha = lr`` and
``gamma = 1`` this is exactly ``torch.optim.SGD(lr, momentum=mu)`` (dampening 0, no
Nesterov), because torch also starts the buffer at ``g``.

Shapes: a population of ``P`` optimizees is ``{key: (P, *shape)}``; features are
``{key: (P, C, *shape)}``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from gensight.lopt.errors import LoptError
from gensight.lopt.nets import KINDS, make_f

State = dict[str, Tensor]


@dataclass(frozen=True)
class LOptConfig:
    """Architecture of a learned optimizer.

    Attributes:
        f: ``none | mlp | deepsets | nfn | unf`` (see :mod:`gensight.lopt.nets`).
        hidden, layers: width and number of linear layers of ``f``.
        symmetry: ``np`` (default; width-independent, transfers) or ``hnp`` (NFN/UNF only).
        decays: momentum decays fed as features.
        momentum: the decay of the momentum in the update (must be in ``decays``).
        beta2: second-moment decay.
        init_alpha, init_beta, init_gamma: initial meta-learned scalars.
    """

    f: str = "unf"
    hidden: int = 32
    layers: int = 3
    symmetry: str = "np"
    decays: tuple[float, ...] = (0.5, 0.9, 0.99)
    momentum: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    init_alpha: float = 0.03
    init_beta: float = 0.1
    init_gamma: float = 1.0

    def check(self) -> LOptConfig:
        if self.f not in KINDS:
            raise LoptError(f"f must be one of {', '.join(KINDS)}; got {self.f!r}")
        if self.momentum not in self.decays:
            raise LoptError(f"momentum {self.momentum} must be one of decays {self.decays}")
        for name in ("init_alpha", "init_beta", "init_gamma", "eps"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0 < v < math.inf):
                raise LoptError(f"{name} must be a positive number; got {v!r}")
        for d in (*self.decays, self.beta2):
            if not 0 <= d < 1:
                raise LoptError(f"decays and beta2 must lie in [0, 1); got {d!r}")
        return self

    @property
    def channels(self) -> int:
        """Feature channels ``C = 4 + len(decays)``."""
        return 4 + len(self.decays)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["decays"] = list(self.decays)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> LOptConfig:
        d = dict(d)
        d["decays"] = tuple(d.get("decays", cls.decays))
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(d) - known)
        if bad:
            raise LoptError(f"unknown learned-optimizer config field(s) {bad}")
        return cls(**d).check()


def _rms_normalize(x: Tensor, eps: float) -> Tensor:
    """``x / sqrt(mean(x^2) + eps^2)`` over all axes but the first (per optimizee)."""
    dims = tuple(range(1, x.dim()))
    return x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps * eps)


class LOpt(nn.Module):
    """A learned optimizer: ``f`` plus the meta-learned scalars ``log_alpha``, ``log_beta``,
    ``log_gamma``. Its parameters are the meta-parameters ``phi``.

    Args:
        config: :class:`LOptConfig`.
        template: a module shaped like the optimizee (needed by ``nfn``/``unf`` to know the
            weight space; any module for the others).
    """

    def __init__(self, config: LOptConfig, template: nn.Module):
        super().__init__()
        self.config = config.check()
        self.f = make_f(config.f, template, config.channels, config.hidden, config.layers,
                        config.symmetry)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(config.init_alpha)))
        self.log_beta = nn.Parameter(torch.tensor(math.log(config.init_beta)))
        self.log_gamma = nn.Parameter(torch.tensor(math.log(config.init_gamma)))
        self._mu = config.decays.index(config.momentum)

    # --- state --------------------------------------------------------------------------
    def init_state(self, params: Mapping[str, Tensor]) -> State:
        """Zero momenta ``m{i}:{key}`` and second moments ``v:{key}``, shaped like params."""
        st: State = {}
        for k, p in params.items():
            z = torch.zeros_like(p.detach())
            for i in range(len(self.config.decays)):
                st[f"m{i}:{k}"] = z.clone()
            st[f"v:{k}"] = z.clone()
        return st

    def features(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
                 state: State) -> dict[str, Tensor]:
        """Normalized features ``{key: (P, C, *shape)}`` from params, grads and an already
        updated state."""
        c = self.config
        out = {}
        for k, p in params.items():
            v = state[f"v:{k}"]
            sv = torch.sqrt(v + c.eps * c.eps)
            ms = [state[f"m{i}:{k}"] for i in range(len(c.decays))]
            chans = [p, grads[k], *ms, sv, ms[self._mu] / (sv + c.eps)]
            out[k] = torch.stack([_rms_normalize(x, c.eps) for x in chans], 1)
        return out

    def direction(self, feats: Mapping[str, Tensor],
                  fparams: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """``f(feats)``; with ``fparams`` (``f``'s parameters stacked ``(P, ...)``, one set
        per optimizee, as evolution strategies need) ``f`` is vmapped over optimizees."""
        if fparams is None:
            return self.f(feats)
        from torch.func import functional_call, vmap

        if self.config.f == "nfn":  # NF-Layers use custom autograd Functions: no vmap, loop
            rows = []
            for i in range(next(iter(feats.values())).shape[0]):
                fp = {n: v[i] for n, v in fparams.items()}
                rows.append(functional_call(self.f, fp, ({k: v[i:i + 1]
                                                          for k, v in feats.items()},)))
            return {k: torch.cat([r[k] for r in rows]) for k in feats}

        def one(fp, x):
            y = functional_call(self.f, fp, ({k: v.unsqueeze(0) for k, v in x.items()},))
            return {k: v.squeeze(0) for k, v in y.items()}

        return vmap(one)(dict(fparams), dict(feats))

    def update(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor], state: State,
               phi: Mapping[str, Tensor] | None = None) -> tuple[dict[str, Tensor], State]:
        """One step for all ``P`` optimizees; returns ``(new params, new state)``.

        ``phi``: optional per-optimizee meta-parameters, ``{name: (P, *shape)}`` for every
        name of ``self.named_parameters()`` (used by ES/PES); default: this module's own.
        """
        c = self.config
        new_state: State = {}
        for k in params:
            g = grads[k]
            for i, d in enumerate(c.decays):
                new_state[f"m{i}:{k}"] = d * state[f"m{i}:{k}"] + g
            new_state[f"v:{k}"] = c.beta2 * state[f"v:{k}"] + (1 - c.beta2) * g * g
        if phi is None:
            la, lb, lg = self.log_alpha, self.log_beta, self.log_gamma
            fparams = None
        else:
            la, lb, lg = phi["log_alpha"], phi["log_beta"], phi["log_gamma"]
            fparams = {n[2:]: v for n, v in phi.items() if n.startswith("f.")}
        alpha, beta, gamma = la.exp(), lb.exp(), lg.exp()
        if c.f == "none":
            dirs = None
        else:
            dirs = self.direction(self.features(params, grads, new_state), fparams)
        out = {}
        for k, p in params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)
            a, b_, g_ = (s.view(shape) if s.dim() else s for s in (alpha, beta, gamma))
            step = g_ * new_state[f"m{self._mu}:{k}"]
            if dirs is not None:
                step = step + b_ * dirs[k]
            out[k] = p - a * step
        return out, new_state

    def scalars(self) -> dict[str, float]:
        return {"alpha": float(self.log_alpha.detach().exp()),
                "beta": float(self.log_beta.detach().exp()),
                "gamma": float(self.log_gamma.detach().exp())}


class LearnedOptimizer(torch.optim.Optimizer):
    """Use a (meta-trained) :class:`LOpt` like any ``torch.optim`` optimizer.

    Args:
        named_params: ``model.named_parameters()``; for ``nfn``/``unf`` the names must be the
            state-dict keys of the template the ``LOpt`` was built for.
        lopt: the learned optimizer (its parameters are not changed).

    ``step()`` reads ``p.grad`` (``None`` counts as zero) and applies the update of
    :meth:`LOpt.update` to every parameter in place, as one optimizee (``P = 1``). The
    momenta and second moments live in ``self.state[p]`` (``{"m0": ..., "v": ...}``), so
    ``state_dict()`` / ``load_state_dict()`` save and restore them like any torch optimizer.
    """

    def __init__(self, named_params: Iterable[tuple[str, Tensor]], lopt: LOpt):
        named = list(named_params)
        if not named or not all(isinstance(n, str) for n, _ in named):
            raise LoptError("LearnedOptimizer needs model.named_parameters() (name, tensor) "
                            "pairs")
        super().__init__([p for _, p in named], {})
        self.names = [n for n, _ in named]
        self.lopt = lopt

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401 - torch API
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ps = self.param_groups[0]["params"]
        params = {n: p.detach().unsqueeze(0) for n, p in zip(self.names, ps, strict=True)}
        grads = {n: (torch.zeros_like(p) if p.grad is None else p.grad).unsqueeze(0)
                 for n, p in zip(self.names, ps, strict=True)}
        fresh = self.lopt.init_state(params)
        state = {}
        for n, p in zip(self.names, ps, strict=True):
            for key in fresh:
                kind, name = key.split(":", 1)
                if name == n:
                    own = self.state[p].get(kind)
                    state[key] = fresh[key] if own is None else own.unsqueeze(0)
        new, state = self.lopt.update(params, grads, state)
        for n, p in zip(self.names, ps, strict=True):
            p.copy_(new[n][0])
        for key, v in state.items():
            kind, name = key.split(":", 1)
            self.state[ps[self.names.index(name)]][kind] = v[0]
        return loss
