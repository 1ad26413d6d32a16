"""Learned optimizers on weight space: features, update rule, and a ``torch.optim`` wrapper.

Update rule (the SGD-with-momentum-plus-learned-term form that the UNF paper, Zhou, Finn,
Harrison, arXiv 2402.05232, Sec. 4 "learned optimizers", Eq. 15, substitutes its functionals
into; our default feature list follows Metz et al.'s per-parameter learned optimizers, and the
paper's own list, App. C.2, is an option below)::

    m_d  <- d * m_d + g                    for every decay d in ``decays``   (torch SGD form)
    v    <- beta2 * v + (1 - beta2) * g^2
    t    <- t + 1
    feats = [normalize(theta, g, m_d..., sqrt(v), m_mu / (sqrt(v) + eps)), enc(t)]  (C channels)
    theta <- theta - alpha * (gamma * m_mu + beta * f(feats))

with ``mu = momentum`` one of ``decays`` and ``alpha, beta, gamma > 0`` meta-learned scalars
stored as logarithms. ``normalize`` divides every feature of every tensor by its RMS over the
tensor (per optimizee), ``x / sqrt(mean(x^2) + eps^2)``, so ``f`` sees scale-free inputs and a
learned optimizer transfers across tensor scales. With ``f = 0``, ``alpha = lr`` and
``gamma = 1`` this is exactly ``torch.optim.SGD(lr, momentum=mu)`` (dampening 0, no
Nesterov), because torch also starts the buffer at ``g``.

``moments=False`` drops the two second-moment channels, and ``time_features = T > 0`` adds
``enc(t)``: the inner step ``t`` as ``T`` sinusoids, channel ``j`` is ``sin(t w_j)`` (even
``j``) or ``cos(t w_j)`` (odd ``j``) with ``w_j = 10000^(-2 floor(j/2) / T)`` (the Transformer
encoding; the same value at every entry, so it keeps every symmetry of ``f``). The UNF paper's
inputs (App. C.2) are ``theta``, ``g``, six momenta with decays 0.1, 0.5, 0.9, 0.99, 0.999,
0.9999 and an 11-dimensional sinusoidal encoding of ``t``: 19 channels,
:meth:`LOptConfig.paper_features` (its exact encoding is not given; the above is our choice).
The paper initializes ``alpha = 0.1``, ``gamma = 0.9``, ``beta = 1e-3`` and meta-trains for
50,000 steps; ``paper_features`` keeps our initial scalars (pass ``init_alpha`` etc. for the
paper's), because ``beta`` cannot grow from ``1e-3`` within a CPU-sized meta-training. An
optimizer with ``time_features`` has only seen steps up to its meta-training horizon; run
longer, it meets step encodings it never saw.

Shapes: a population of ``P`` optimizees is ``{key: (P, *shape)}``; features are
``{key: (P, C, *shape)}``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from gensight.lopt.errors import LoptError
from gensight.lopt.nets import BACKBONES, KINDS, make_f

State = dict[str, Tensor]


@dataclass(frozen=True)
class LOptConfig:
    """Architecture of a learned optimizer.

    Attributes:
        f: ``none | mlp | deepsets | nfn | unf`` (see :mod:`gensight.lopt.nets`).
        hidden, layers: width and number of linear layers of ``f``.
        symmetry: ``np`` (default; width-independent, transfers) or ``hnp`` (NFN/UNF only).
        backbone: ``own`` (default: ``f`` is a stack of its own layers) or ``deepsets``
            (NFN/UNF: ``layers - 1`` Deep Sets layers, then one NF/UNF layer; with
            ``layers=4, hidden=32`` the UNF paper's App. C.2 architecture).
        decays: momentum decays fed as features.
        momentum: the decay of the momentum in the update (must be in ``decays``).
        beta2: second-moment decay.
        init_alpha, init_beta, init_gamma: initial meta-learned scalars.
    """

    f: str = "unf"
    hidden: int = 32
    layers: int = 3
    symmetry: str = "np"
    backbone: str = "own"
    decays: tuple[float, ...] = (0.5, 0.9, 0.99)
    momentum: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    init_alpha: float = 0.03
    init_beta: float = 0.1
    init_gamma: float = 1.0
    moments: bool = True
    time_features: int = 0

    @classmethod
    def paper_features(cls, **kwargs) -> LOptConfig:
        """The UNF paper's 19 input channels (arXiv 2402.05232, App. C.2): weights, gradient,
        six momenta (0.1 ... 0.9999) and an 11-dimensional encoding of the step; no
        second-moment channels. Other fields (``f``, ``init_*``, ...) from ``kwargs``."""
        return cls(**{"decays": (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999), "momentum": 0.9,
                      "moments": False, "time_features": 11, **kwargs})

    def check(self) -> LOptConfig:
        if self.f not in KINDS:
            raise LoptError(f"f must be one of {', '.join(KINDS)}; got {self.f!r}")
        if self.backbone not in BACKBONES:
            raise LoptError(f"backbone must be one of {', '.join(BACKBONES)}; got "
                            f"{self.backbone!r}")
        if self.backbone == "deepsets" and (self.f not in ("nfn", "unf") or self.layers < 2):
            raise LoptError(f"backbone='deepsets' is for f='nfn' or 'unf' with layers >= 2; "
                            f"got f={self.f!r}, layers={self.layers}")
        if self.momentum not in self.decays:
            raise LoptError(f"momentum {self.momentum} must be one of decays {self.decays}")
        for name in ("init_alpha", "init_beta", "init_gamma", "eps"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0 < v < math.inf):
                raise LoptError(f"{name} must be a positive number; got {v!r}")
        for d in (*self.decays, self.beta2):
            if not 0 <= d < 1:
                raise LoptError(f"decays and beta2 must lie in [0, 1); got {d!r}")
        if not isinstance(self.moments, bool):
            raise LoptError(f"moments must be True or False; got {self.moments!r}")
        if (not isinstance(self.time_features, int) or isinstance(self.time_features, bool)
                or self.time_features < 0):
            raise LoptError(f"time_features must be a non-negative integer; got "
                            f"{self.time_features!r}")
        return self

    @property
    def channels(self) -> int:
        """Feature channels ``C = 2 + len(decays) (+ 2 with moments) + time_features``."""
        return 2 + len(self.decays) + (2 if self.moments else 0) + self.time_features

    def to_dict(self) -> dict:
        d = asdict(self)
        d["decays"] = list(self.decays)
        # written only when set: older checkpoints still match
        for key, default in (("backbone", "own"), ("moments", True), ("time_features", 0)):
            if d[key] == default:
                del d[key]
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
    """``x / sqrt(mean(x^2) + eps^2)`` over all axes but the first (per optimizee).

    A ``(P,)`` tensor (a 0-dim parameter per optimizee) is normalized entry by entry; never
    over the optimizee axis (``mean(dim=())`` would average over everything)."""
    if x.dim() < 2:
        return x * torch.rsqrt(x.pow(2) + eps * eps)
    dims = tuple(range(1, x.dim()))
    return x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps * eps)


def _f_dtype(module: nn.Module, fparams: Mapping[str, Tensor] | None) -> torch.dtype | None:
    """The floating dtype of ``f``'s parameters (``None`` for a parameter-free ``f``)."""
    vals = list(fparams.values()) if fparams is not None else list(module.parameters())
    return vals[0].dtype if vals else None


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
                        config.symmetry, config.backbone)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(config.init_alpha)))
        self.log_beta = nn.Parameter(torch.tensor(math.log(config.init_beta)))
        self.log_gamma = nn.Parameter(torch.tensor(math.log(config.init_gamma)))
        self._mu = config.decays.index(config.momentum)

    # --- state --------------------------------------------------------------------------
    def init_state(self, params: Mapping[str, Tensor]) -> State:
        """Zero momenta ``m{i}:{key}`` and (with ``moments``) second moments ``v:{key}``,
        shaped like params; with ``time_features``, a float64 step counter ``step:{key}``
        ``(P,)`` (the step count of that tensor, so a frozen tensor's clock stops too)."""
        st: State = {}
        for k, p in params.items():
            z = torch.zeros_like(p.detach())
            for i in range(len(self.config.decays)):
                st[f"m{i}:{k}"] = z.clone()
            if self.config.moments:
                st[f"v:{k}"] = z.clone()
            if self.config.time_features:
                # float64 whatever the parameters' dtype: bfloat16 would stop at 256
                st[f"step:{k}"] = torch.zeros(p.shape[0], dtype=torch.float64,
                                              device=p.device)
        return st

    def _state_keys(self, k: str) -> list[str]:
        c = self.config
        return ([f"m{i}:{k}" for i in range(len(c.decays))]
                + ([f"v:{k}"] if c.moments else [])
                + ([f"step:{k}"] if c.time_features else []))

    def time_encoding(self, t: Tensor) -> Tensor:
        """``(P,)`` step counts -> ``(P, T)`` sinusoids (see the module docstring)."""
        n = self.config.time_features
        j = torch.arange(n, dtype=t.dtype, device=t.device)
        w = torch.pow(torch.tensor(10000.0, dtype=t.dtype, device=t.device),
                      -2 * torch.div(j, 2, rounding_mode="floor") / n)
        x = t.unsqueeze(-1) * w
        return torch.where(j % 2 == 0, torch.sin(x), torch.cos(x))

    def features(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
                 state: State) -> dict[str, Tensor]:
        """Features ``{key: (P, C, *shape)}`` from params, grads and an already updated
        state: RMS-normalized tensors, then the step encoding (``time_features``)."""
        c = self.config
        out = {}
        for k, p in params.items():
            ms = [state[f"m{i}:{k}"] for i in range(len(c.decays))]
            chans = [p, grads[k], *ms]
            if c.moments:
                sv = torch.sqrt(state[f"v:{k}"] + c.eps * c.eps)
                chans += [sv, ms[self._mu] / (sv + c.eps)]
            x = torch.stack([_rms_normalize(x, c.eps) for x in chans], 1)
            if c.time_features:
                enc = self.time_encoding(state[f"step:{k}"]).to(p.dtype)  # (P, T)
                enc = enc.view(*enc.shape, *([1] * (p.dim() - 1))).expand(
                    -1, -1, *p.shape[1:])
                x = torch.cat([x, enc], 1)
            out[k] = x
        return out

    def direction(self, feats: Mapping[str, Tensor],
                  fparams: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """``f(feats)``; with ``fparams`` (``f``'s parameters stacked ``(P, ...)``, one set
        per optimizee, as evolution strategies need) ``f`` is vmapped over optimizees.

        The features are cast to ``f``'s dtype and the directions back to the features'
        dtype, so a float64 optimizer drives float32 optimizees and vice versa."""
        fdt = _f_dtype(self.f, fparams)
        in_dt = {k: v.dtype for k, v in feats.items()}
        if fdt is not None:
            feats = {k: v.to(fdt) for k, v in feats.items()}
        out = self._direction(feats, fparams)
        return {k: v.to(in_dt[k]) for k, v in out.items()}

    def _direction(self, feats: Mapping[str, Tensor],
                   fparams: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
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

    def update(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor | None],
               state: State, phi: Mapping[str, Tensor] | None = None
               ) -> tuple[dict[str, Tensor], State]:
        """One step for all ``P`` optimizees; returns ``(new params, new state)``.

        ``phi``: optional per-optimizee meta-parameters, ``{name: (P, *shape)}`` for every
        name of ``self.named_parameters()`` (used by ES/PES); default: this module's own.

        A parameter whose gradient is missing from ``grads`` (or ``None``) has no gradient,
        as in ``torch.optim``: it and its state are returned unchanged. ``f`` still sees it
        (with zero gradient features and its unchanged state), because NFN/UNF update all
        tensors jointly. 0-dim parameters (``(P,)`` stacked) are handled as ``(P, 1)``.
        """
        c = self.config
        scalar = {k for k, p in params.items() if p.dim() == 1}

        def up(k: str, t: Tensor) -> Tensor:
            return t.unsqueeze(-1) if k in scalar else t

        has = {k for k in params if grads.get(k) is not None}
        ps = {k: up(k, p) for k, p in params.items()}
        gs = {k: up(k, grads[k]) if k in has else torch.zeros_like(ps[k]) for k in params}
        new_state: State = {}
        feat_state: State = {}
        for k in params:
            keys = self._state_keys(k)
            if k not in has:
                for key in keys:
                    new_state[key] = state[key]
                    feat_state[key] = (state[key] if key.startswith("step:")
                                       else up(k, state[key]))
                continue
            g = grads[k]
            for i, d in enumerate(c.decays):
                new_state[f"m{i}:{k}"] = d * state[f"m{i}:{k}"] + g
            if c.moments:
                new_state[f"v:{k}"] = c.beta2 * state[f"v:{k}"] + (1 - c.beta2) * g * g
            if c.time_features:
                new_state[f"step:{k}"] = state[f"step:{k}"] + 1
            for key in keys:
                feat_state[key] = (new_state[key] if key.startswith("step:")
                                   else up(k, new_state[key]))
        if phi is None:
            la, lb, lg = self.log_alpha, self.log_beta, self.log_gamma
            fparams = None
        else:
            la, lb, lg = phi["log_alpha"], phi["log_beta"], phi["log_gamma"]
            fparams = {n[2:]: v for n, v in phi.items() if n.startswith("f.")}
        alpha, beta, gamma = la.exp(), lb.exp(), lg.exp()
        if c.f == "none" or not has:
            dirs = None
        else:
            dirs = self.direction(self.features(ps, gs, feat_state), fparams)
        out = {}
        for k, p in params.items():
            if k not in has:
                out[k] = p
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            a, b_, g_ = (s.to(p.dtype).view(shape) if s.dim() else s.to(p.dtype)
                         for s in (alpha, beta, gamma))
            step = g_ * new_state[f"m{self._mu}:{k}"]
            if dirs is not None:
                d = dirs[k].squeeze(-1) if k in scalar else dirs[k]
                step = step + b_ * d.to(p.dtype)
            out[k] = p - a * step
        return out, new_state

    def scalars(self) -> dict[str, float]:
        return {"alpha": float(self.log_alpha.detach().exp()),
                "beta": float(self.log_beta.detach().exp()),
                "gamma": float(self.log_gamma.detach().exp())}


def _phi_hash(lopt: LOpt) -> str:
    """SHA-256 of a learned optimizer's meta-parameters (as float64, so a dtype cast of the
    same optimizer keeps its hash)."""
    h = hashlib.sha256()
    for n, p in lopt.named_parameters():
        h.update(n.encode())
        h.update(p.detach().to(torch.float64).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class LearnedOptimizer(torch.optim.Optimizer):
    """Use a (meta-trained) :class:`LOpt` like any ``torch.optim`` optimizer.

    Args:
        named_params: ``model.named_parameters()``; for ``nfn``/``unf`` the names must be the
            state-dict keys of the template the ``LOpt`` was built for.
        lopt: the learned optimizer (its parameters are not changed).

    ``step()`` reads ``p.grad`` and applies the update of :meth:`LOpt.update` to every
    parameter in place, as one optimizee (``P = 1``). As in ``torch.optim``, a parameter with
    ``p.grad is None`` (e.g. frozen, ``requires_grad=False``) is neither changed nor given
    state; NFN/UNF still see it, with zero gradient features. The momenta, second moments and
    (``time_features``) float64 step counter live in ``self.state[p]`` (``{"m0": ..., "v":
    ..., "step": ...}``; torch keeps a ``"step"`` entry's dtype on load), so ``state_dict()`` /
    ``load_state_dict()`` save and restore them like any torch optimizer; the state dict also
    records the learned optimizer's config and a hash of its meta-parameters, and loading it
    into an optimizer around a different learned optimizer is refused. There is one parameter
    group (the update has no per-group hyperparameters); ``add_param_group`` is refused.
    """

    def __init__(self, named_params: Iterable[tuple[str, Tensor]], lopt: LOpt):
        named = list(named_params)
        if not named or not all(isinstance(n, str) for n, _ in named):
            raise LoptError("LearnedOptimizer needs model.named_parameters() (name, tensor) "
                            "pairs")
        super().__init__([p for _, p in named], {})
        self.names = [n for n, _ in named]
        self.lopt = lopt

    def add_param_group(self, param_group: dict) -> None:
        if self.param_groups:
            raise LoptError("LearnedOptimizer has a single parameter group; build it with "
                            "all of model.named_parameters()")
        super().add_param_group(param_group)

    def _lopt_info(self) -> dict:
        return {"config": json.dumps(self.lopt.config.to_dict(), sort_keys=True),
                "phi_sha256": _phi_hash(self.lopt)}

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["lopt"] = self._lopt_info()
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        saved = state_dict.pop("lopt", None)
        if saved is not None:
            mine = self._lopt_info()
            if saved.get("config") != mine["config"]:
                raise LoptError("optimizer state was saved with a different learned-optimizer "
                                f"config ({saved.get('config')}), not {mine['config']}")
            if saved.get("phi_sha256") != mine["phi_sha256"]:
                raise LoptError("optimizer state was saved with different learned-optimizer "
                                "meta-parameters (phi hash differs)")
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401 - torch API
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ps = self.param_groups[0]["params"]
        params = {n: p.detach().unsqueeze(0) for n, p in zip(self.names, ps, strict=True)}
        grads = {n: p.grad.unsqueeze(0) for n, p in zip(self.names, ps, strict=True)
                 if p.grad is not None}
        fresh = self.lopt.init_state(params)
        state = {}
        for n, p in zip(self.names, ps, strict=True):
            for key in fresh:
                kind, name = key.split(":", 1)
                if name == n:
                    own = self.state[p].get(kind) if p in self.state else None
                    state[key] = fresh[key] if own is None else own.unsqueeze(0)
        new, state = self.lopt.update(params, grads, state)
        for n, p in zip(self.names, ps, strict=True):
            if n in grads:
                p.copy_(new[n][0])
        for key, v in state.items():
            kind, name = key.split(":", 1)
            if name in grads:
                self.state[ps[self.names.index(name)]][kind] = v[0]
        return loss
