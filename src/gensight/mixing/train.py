"""Train the byte-level LM on a mixture of text domains chosen online by a mixing policy.

:func:`train_mixture` is resumable: every ``checkpoint_every`` steps it writes, atomically,
``checkpoint.safetensors`` (model, AdamW state, policy state; the sampler's generator state,
the config and the domain names in order in its metadata) and ``log.parquet`` (one row per step:
the mixture, each domain's samples and training loss, validation losses at evaluation steps,
ADO's current fits, timings). A killed run started again with the same config continues from its
last checkpoint and writes the same log as an uninterrupted run (timing columns aside). Resuming
is refused (:class:`MixingError`) for another config, other domains or another order of them,
changed domain data, a missing ``log.parquet``, or a file that is not such a checkpoint.
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gensight.mixing.data import DOMAINS, TextDomain, load_domains
from gensight.mixing.policies import ADO, ODM, POLICIES, MixingPolicy, make_policy
from gensight.mixing.sampler import MixtureSampler, domain_losses
from gensight.mixing.scaling import MixingError

CHECKPOINT, LOG, RESULTS = "checkpoint.safetensors", "log.parquet", "results.json"
TIMING_COLUMNS = ("step_time_s", "policy_time_s")


@dataclass
class MixTrainConfig:
    """One run. ``steps`` x ``batch_size`` x ``context`` is the token budget."""

    policy: str = "ado"
    steps: int = 1000
    batch_size: int = 16
    context: int = 64
    d: int = 64
    layers: int = 2
    heads: int = 4
    lr: float = 3e-3
    weight_decay: float = 0.01
    seed: int = 0
    eval_every: int = 100
    eval_windows: int = 64  # fixed validation windows per domain
    checkpoint_every: int = 100
    domains: tuple[str, ...] = DOMAINS
    max_bytes: int | None = None
    policy_kwargs: dict = field(default_factory=dict)

    def check(self) -> MixTrainConfig:
        """Validate every field (a one-line :class:`MixingError` naming it); return self."""
        if self.policy not in POLICIES:
            raise MixingError(f"unknown mixing policy {self.policy!r}; choose from "
                              f"{', '.join(POLICIES)}")
        for name in ("steps", "batch_size", "context", "d", "layers", "heads", "eval_every",
                     "eval_windows", "checkpoint_every", "seed"):
            v = getattr(self, name)
            lo = 0 if name == "seed" else 1
            if not _is_int(v) or v < lo:
                kind = "a non-negative" if lo == 0 else "a positive"
                raise MixingError(f"config field {name} must be {kind} integer; got {v!r}")
        if self.d % self.heads:
            raise MixingError(f"config field heads ({self.heads}) must divide d ({self.d})")
        for name, lo_ok in (("lr", False), ("weight_decay", True)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) \
                    or v < 0 or (v == 0 and not lo_ok):
                kind = "a non-negative" if lo_ok else "a positive"
                raise MixingError(f"config field {name} must be {kind} number; got {v!r}")
        mb = self.max_bytes
        if mb is not None and not (_is_int(mb) and mb > 0) and not (
                isinstance(mb, dict) and all(_is_int(v) and v > 0 for v in mb.values())):
            raise MixingError(f"config field max_bytes must be a positive integer or None; "
                              f"got {mb!r}")
        if isinstance(self.domains, str) or not self.domains:
            raise MixingError(f"config field domains must be a non-empty sequence of domain "
                              f"names; got {self.domains!r}")
        self.domains = tuple(self.domains)
        if not isinstance(self.policy_kwargs, dict):
            raise MixingError(f"config field policy_kwargs must be a dict; got "
                              f"{self.policy_kwargs!r}")
        allowed = _policy_keys(self.policy)
        unknown = sorted(set(self.policy_kwargs) - allowed)
        if unknown:
            raise MixingError(f"config field policy_kwargs: unknown key(s) {', '.join(unknown)} "
                              f"for policy {self.policy!r}; allowed: "
                              f"{', '.join(sorted(allowed)) or 'none'}")
        try:  # the values, checked by the policy itself on stand-in sizes (no data needed)
            kwargs = dict(self.policy_kwargs)
            if self.policy == "ado":
                kwargs["fitter"] = _no_fit  # do not import scipy just to check
            make_policy(self.policy, [str(i) for i in range(len(self.domains))],
                        [1.0] * len(self.domains), **kwargs)
        except MixingError as exc:
            raise MixingError(f"config field policy_kwargs: {exc}") from None
        return self

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


def _is_int(v) -> bool:
    """An integer, but not a bool."""
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def _policy_keys(policy: str) -> set[str]:
    """The keyword arguments a policy accepts in ``policy_kwargs`` (JSON values only, so not
    ADO's ``fitter``)."""
    cls = {"ado": ADO, "odm": ODM}.get(policy)
    if cls is None:
        return set()
    params = inspect.signature(cls.__init__).parameters
    return {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY
            or (p.kind is p.POSITIONAL_OR_KEYWORD and n not in ("self", "domains", "sizes"))} \
        - {"fitter"}


def _no_fit(n, loss):  # stands in for the fitter while a config is checked
    raise AssertionError("not called")


def _mix_chunk(cfg: MixTrainConfig) -> int:
    """The piece length of the uniform mix of held-out text (:func:`uniform_mix`)."""
    return min(512, 4 * cfg.context)


def _lr(cfg: MixTrainConfig, step: int) -> float:
    """Linear warm-up over 5% of the steps, then cosine decay to 10% of ``lr``."""
    warm = max(1, cfg.steps // 20)
    if step <= warm:
        return cfg.lr * step / warm
    frac = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def eval_windows(arr: np.ndarray, context: int, count: int) -> np.ndarray:
    """``count`` fixed windows (count, context + 1), evenly spaced over ``arr``."""
    starts = np.linspace(0, arr.size - context - 1, count).astype(np.int64)
    return arr[starts[:, None] + np.arange(context + 1)[None, :]]


def evaluate(model, domains: dict[str, TextDomain], split: str, context: int,
             count: int) -> dict[str, float]:
    """Mean next-byte loss (nats/byte) of ``model`` on ``count`` fixed windows of each domain's
    ``split`` ('val' or 'test')."""
    import torch

    out = {}
    with torch.no_grad():
        for name, dom in domains.items():
            w = torch.from_numpy(eval_windows(getattr(dom, split), context, count)
                                 .astype(np.int64))
            out[name] = float(model.sample_losses(w[:, :-1], w[:, 1:]).mean())
    return out


def uniform_mix(domains: dict[str, TextDomain], split: str = "test",
                chunk: int = 512) -> np.ndarray:
    """A held-out stream mixing the domains uniformly: ``chunk``-byte pieces of each domain's
    ``split``, taken in turn (round robin) until the shortest split runs out (1-D uint8)."""
    arrs = [getattr(d, split) for d in domains.values()]
    pieces = min(a.size for a in arrs) // chunk
    if pieces < 1:
        raise MixingError(f"the {split} splits are too short for a uniform mix of {chunk}-byte "
                          f"pieces (shortest {min(a.size for a in arrs)} bytes)")
    return np.concatenate([a[i * chunk:(i + 1) * chunk] for i in range(pieces) for a in arrs])


def _policy(cfg: MixTrainConfig, domains: dict[str, TextDomain]) -> MixingPolicy:
    sizes = [d.train.size for d in domains.values()]
    kwargs = dict(cfg.policy_kwargs)
    if cfg.policy == "ado":  # defaults scaled to the run's length
        kwargs.setdefault("warmup", max(10, cfg.steps // 10))
        kwargs.setdefault("ignore", max(2, cfg.steps // 20))  # past the LR warm-up
        kwargs.setdefault("refit_every", max(5, cfg.steps // 20))
    return make_policy(cfg.policy, list(domains), sizes, **kwargs)


# --- checkpoints ------------------------------------------------------------------------------
def _save_checkpoint(path: Path, step: int, cfg, model, opt, policy, sampler, shas) -> None:
    from safetensors.numpy import save

    from gensight.zoo.store import atomic_write_bytes

    tensors = {f"model.{k}": v.detach().cpu().numpy().copy()
               for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    for idx, st in osd["state"].items():
        for key, v in st.items():
            tensors[f"optim.{idx}.{key}"] = np.atleast_1d(v.detach().cpu().numpy()).copy()
    for key, v in policy.state_dict().items():
        v = np.atleast_1d(np.asarray(v))
        tensors[f"policy.{key}"] = v.reshape(1, -1) if v.size == 0 else v  # no empty tensors
        tensors[f"policy_shape.{key}"] = np.array(v.shape, dtype=np.int64)
    meta = {"step": step, "config": cfg.to_json(), "param_groups": osd["param_groups"],
            "sampler": sampler.state_dict(), "domains": list(shas), "domains_sha256": shas}
    atomic_write_bytes(path, save(tensors, metadata={"gensight": json.dumps(meta)}))


_META_KEYS = ("step", "config", "param_groups", "sampler", "domains_sha256")


def _not_ours(path: Path, why: str) -> MixingError:
    return MixingError(f"{path}: not a gensight mix checkpoint ({why}); delete it or use "
                       "another --out")


def _load_checkpoint(path: Path):
    """``(meta, tensors)`` of a checkpoint; a :class:`MixingError` for a file that is not one
    written by :func:`train_mixture` (corrupt, truncated, or another program's)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = json.loads((fh.metadata() or {})["gensight"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except OSError:
        raise
    except KeyError:
        raise _not_ours(path, "no gensight metadata") from None
    except Exception as exc:  # SafetensorError, bad JSON, ...
        raise _not_ours(path, f"{type(exc).__name__}: {' '.join(str(exc).split())}") from None
    if not isinstance(meta, dict) or any(k not in meta for k in _META_KEYS):
        raise _not_ours(path, "its metadata lacks " + ", ".join(
            k for k in _META_KEYS if not isinstance(meta, dict) or k not in meta))
    return meta, tensors


def _restore(meta, tensors, model, opt, policy, sampler) -> None:
    import torch

    model.load_state_dict({k[6:]: torch.from_numpy(v.copy()) for k, v in tensors.items()
                           if k.startswith("model.")})
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            t = torch.from_numpy(v.copy())
            state.setdefault(int(idx), {})[key] = t.reshape(()) if key == "step" else t
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    pstate = {}
    for k, v in tensors.items():
        if k.startswith("policy."):
            key = k[7:]
            shape = tuple(int(s) for s in tensors[f"policy_shape.{key}"])
            pstate[key] = v.reshape(shape)
    policy.load_state_dict(pstate)
    sampler.load_state_dict(meta["sampler"])


# --- training ---------------------------------------------------------------------------------
def train_mixture(cfg: MixTrainConfig, out_dir, *, domains: dict[str, TextDomain] | None = None,
                  progress: Callable[[int, int, dict], None] | None = None,
                  resume: bool = True) -> dict:
    """Train (or resume) one run into ``out_dir``; return the results (also written to
    ``results.json``): final per-domain validation and test losses, their means, the loss on a
    uniform mix of held-out (test) text, and the policy's share of step time.

    ``domains`` defaults to :func:`load_domains` ``(cfg.domains, cfg.max_bytes)``. ``progress``
    is called after every step with ``(step, steps, row)``."""
    import torch

    from gensight.mixing.model import ByteLM
    from gensight.zoo.store import atomic_write_bytes, atomic_write_parquet

    cfg.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if domains is None:
        domains = load_domains(cfg.domains, cfg.max_bytes)
    names = list(domains)
    k = len(names)
    chunk = _mix_chunk(cfg)
    for n, d in domains.items():
        if d.train.size == 0:
            raise MixingError(f"domain {n!r} has no data: its training split is empty")
        for split in ("val", "test"):
            if getattr(d, split).size < cfg.context + 1:
                raise MixingError(f"domain {n!r} has too little {split} data: "
                                  f"{getattr(d, split).size} bytes, needs at least context + 1 "
                                  f"= {cfg.context + 1} (raise max_bytes or lower context)")
        # checked now, not after training: the final uniform mix of test text needs one piece
        if d.test.size < chunk:
            raise MixingError(f"domain {n!r} has too little test data: {d.test.size} bytes, "
                              f"the uniform mix of held-out text needs at least "
                              f"min(512, 4 x context) = {chunk} (raise max_bytes or lower "
                              "context)")
    shas = {n: d.sha256 for n, d in domains.items()}
    torch.manual_seed(cfg.seed)
    model = ByteLM(cfg.context, cfg.d, cfg.layers, cfg.heads)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            betas=(0.9, 0.95))
    policy = _policy(cfg, domains)
    sampler = MixtureSampler([d.train for d in domains.values()], names, cfg.context,
                             cfg.batch_size, seed=cfg.seed)
    ckpt, log_path = out / CHECKPOINT, out / LOG
    rows: list[dict] = []
    start = 0
    if resume and ckpt.exists():
        meta, tensors = _load_checkpoint(ckpt)
        if meta["config"] != cfg.to_json():
            diff = [f for f in meta["config"] if meta["config"][f] != cfg.to_json().get(f)]
            raise MixingError(f"{ckpt}: the checkpoint was written with a different config "
                              f"(fields {', '.join(diff)}); use another output directory")
        saved = meta.get("domains", list(meta["domains_sha256"]))  # older: the dict's order
        if list(saved) != names:
            raise MixingError(f"{ckpt}: the checkpoint was written for the domains "
                              f"{', '.join(map(str, saved))} (in this order), not "
                              f"{', '.join(names)}; use the same domains or another output "
                              "directory")
        if meta["domains_sha256"] != shas:
            raise MixingError(f"{ckpt}: the text domains changed since the checkpoint "
                              "(SHA-256 differs); use another output directory")
        if not log_path.exists():
            raise MixingError(f"{ckpt}: the checkpoint has no {LOG} beside it (deleted?), so "
                              "the run cannot be resumed with its log; delete the checkpoint or "
                              "use another output directory")
        try:
            _restore(meta, tensors, model, opt, policy, sampler)
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as exc:
            raise _not_ours(ckpt, f"cannot restore it: {type(exc).__name__}: "
                                  f"{' '.join(str(exc).split())[:200]}") from None
        start = int(meta["step"])
        rows = pd.read_parquet(log_path).query("step <= @start").to_dict("records")
    for step in range(start + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        pi = policy.policy()
        t_pol = time.perf_counter() - t0
        x, y, ids, counts = sampler.torch_batch(pi)
        lr = _lr(cfg, step)
        for g in opt.param_groups:
            g["lr"] = lr
        losses = model.sample_losses(x, y)
        loss = losses.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        dl, _ = domain_losses(losses.detach().numpy(), ids.numpy(), k)
        t1 = time.perf_counter()
        policy.update(dl, counts)
        t_pol += time.perf_counter() - t1
        row = {"step": step, "tokens": step * cfg.batch_size * cfg.context, "lr": lr,
               "train_loss": float(loss.detach())}
        for i, n in enumerate(names):
            row[f"pi_{n}"] = float(pi[i])
            row[f"count_{n}"] = int(counts[i])
            row[f"train_loss_{n}"] = float(dl[i])
        if isinstance(policy, ADO):
            row["ado_fits"] = policy.n_fits
            for i, n in enumerate(names):
                for j, p in enumerate(("eps", "beta", "alpha")):
                    row[f"{p}_{n}"] = float(policy.params[i, j])
                row[f"n_{n}"] = float(policy.n_hist[-1, i])
        row["step_time_s"] = time.perf_counter() - t0
        row["policy_time_s"] = t_pol
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            val = evaluate(model, domains, "val", cfg.context, cfg.eval_windows)
            model.train()
            for n in names:
                row[f"val_loss_{n}"] = val[n]
            row["val_loss_mean"] = float(np.mean(list(val.values())))
        if not np.isfinite(row["train_loss"]):
            raise MixingError(f"training diverged at step {step} (loss {row['train_loss']}); "
                              "lower --lr")
        rows.append(row)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            atomic_write_parquet(log_path, pd.DataFrame(rows), {"config": cfg.to_json()})
            _save_checkpoint(ckpt, step, cfg, model, opt, policy, sampler, shas)
        if progress is not None:
            progress(step, cfg.steps, row)
    log = pd.DataFrame(rows)
    model.eval()
    val = evaluate(model, domains, "val", cfg.context, cfg.eval_windows)
    test = evaluate(model, domains, "test", cfg.context, cfg.eval_windows)
    mix = TextDomain("uniform_mix", np.zeros(1, np.uint8), np.zeros(1, np.uint8),
                     uniform_mix(domains, "test", chunk=chunk))
    mix_loss = evaluate(model, {"mix": mix}, "test", cfg.context, cfg.eval_windows * k)["mix"]
    results = {
        "config": cfg.to_json(), "domains": names, "val": val, "test": test,
        "val_mean": float(np.mean(list(val.values()))),
        "test_mean": float(np.mean(list(test.values()))),
        # windows over a round-robin stream of every domain's test split (they may straddle two
        # domains): the loss on a uniform mix of held-out text
        "test_uniform_mix": mix_loss,
        "policy_time_share": float(log["policy_time_s"].sum() / log["step_time_s"].sum()),
        "step_time_s": float(log["step_time_s"].mean()),
        "final_mixture": {n: float(v) for n, v in zip(names, policy.policy(), strict=True)},
    }
    atomic_write_bytes(out / RESULTS, json.dumps(results, indent=2).encode())
    return results
