"""Tiny RNN Zoo: predict recurrent networks' arithmetic success rate from their weights.

UNF (Zhou, Finn, Harrison, arXiv 2402.05232, Sec. 5) trains a zoo of small recurrent networks
to complete arithmetic questions character by character and predicts each network's success
rate from its weights; UNF beats StatNN and Deep Sets in Kendall tau. This benchmark builds a
small offline version of that experiment (issue #16):

* task: ``"a+b="`` with digits ``a, b`` in 0..9, the network must write the answer's digits
  and an end mark ``"."`` (e.g. ``"7+5=12."``). Vocabulary: 10 digits, ``+``, ``=``, ``.``,
  read as one-hot vectors. 20 of the 100 questions are held out from every member; each
  member trains on its own random 30-100% of the other 80. A member's *success rate* (the
  target) is the fraction of all 100 questions whose greedily decoded answer is exactly
  right (with teacher forcing this is "every answer position, end mark included, is the
  argmax": greedy decoding feeds back the same characters as long as it is right). The
  held-out-only rate (20 questions, a GRU of this size barely generalizes to them) is
  printed too;
* zoo: N one-layer GRUs (hidden H, fixed, so all share one weight space) with a linear
  readout, trained with next-character cross-entropy on the answer positions. Every member
  has its own learning rate, number of steps, weight decay, init scale, label noise, data
  fraction and seed.
  All members are trained at once: the GRU equations are written out with a leading member
  axis (one batched matmul per time step; per-member Adam);
* spec: :func:`gensight.nf.perm_spec` of a ``GRU -> Linear`` module with the same
  parameter keys (``"hnp"``: GRU rows get ``Gated(3, h)``, the one-hot input and the readout
  rows are not permuted);
* predictors (75/25 split of the members, a validation part of the training split for early
  stopping, BCE on the success rate): (a) ``InvariantUNF``; (b) StatNN: 7 statistics per
  tensor -> MLP; (c) Deep Sets: per-tensor ``phi`` on every scalar entry, mean, concat ->
  head. Every tensor is standardised by one scalar mean/std from the training members.

Prints the success-rate distribution, Kendall tau / R^2 of each predictor on the test
members, and the UNF predictor's change under a random hnp permutation of the test members'
weights (and, as a check of the spec, the permuted members' own success rates).

Run:  python benchmarks/bench_unf_rnn.py [--quick] [--members N] [--seed S]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gensight.metrics import kendall_tau
from gensight.nf import InvariantUNF, perm_spec
from gensight.nf.unf import permute, random_permutation

VOCAB = "0123456789+=."
V = len(VOCAB)
SEQ = 7  # "a+b=" + up to two answer digits + "."


# --- task -------------------------------------------------------------------------------------

def make_task(seed: int, test_frac: float = 0.2):
    """All 100 questions: one-hot inputs ``(Q, SEQ, V)``, next-char targets ``(Q, SEQ)``, the
    answer mask, and the indices of ``test_frac`` of them that no member is trained on."""
    xs, ys, ms = [], [], []
    for a in range(10):
        for b in range(10):
            s = f"{a}+{b}={a + b}."
            ids = [VOCAB.index(c) for c in s] + [VOCAB.index(".")] * (SEQ + 1 - len(s))
            xs.append(F.one_hot(torch.tensor(ids[:SEQ]), V).float())
            ys.append(torch.tensor(ids[1:SEQ + 1]))
            m = torch.zeros(SEQ, dtype=torch.bool)
            m[3:len(s) - 1] = True  # positions whose next char is an answer char or the "."
            ms.append(m)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(100, generator=g)
    n_te = int(round(test_frac * 100))
    return (torch.stack(xs), torch.stack(ys), torch.stack(ms)), order[:n_te], order[n_te:]


# --- the zoo ----------------------------------------------------------------------------------

class TinyRNN(nn.Module):
    """``GRU(V -> H) -> Linear(H -> V)`` on one-hot characters: the spec template."""

    def __init__(self, hidden: int):
        super().__init__()
        self.rnn = nn.GRU(V, hidden, batch_first=True)
        self.readout = nn.Linear(hidden, V)

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.rnn(x)[0])


def zoo_logits(p: dict[str, Tensor], x: Tensor) -> Tensor:
    """Logits ``(N, Q, SEQ, V)`` of N members ``p[key]: (N, *shape)`` on ``x: (Q, SEQ, V)``:
    PyTorch's GRU equations with a leading member axis."""
    w_ih, w_hh = p["rnn.weight_ih_l0"], p["rnn.weight_hh_l0"]
    b_ih, b_hh = p["rnn.bias_ih_l0"], p["rnn.bias_hh_l0"]
    n_mem, n = w_ih.shape[0], w_hh.shape[-1]
    gi_all = torch.einsum("qtv,ngv->nqtg", x, w_ih) + b_ih[:, None, None]
    h = x.new_zeros(n_mem, x.shape[0], n)
    out = []
    for t in range(x.shape[1]):
        gi = gi_all[:, :, t]
        gh = torch.baddbmm(b_hh[:, None], h, w_hh.transpose(1, 2))
        r = torch.sigmoid(gi[..., :n] + gh[..., :n])
        z = torch.sigmoid(gi[..., n:2 * n] + gh[..., n:2 * n])
        cand = torch.tanh(gi[..., 2 * n:] + r * gh[..., 2 * n:])
        h = (1 - z) * cand + z * h
        out.append(h)
    hs = torch.stack(out, 2)  # (N, Q, SEQ, H)
    return torch.einsum("nqth,nvh->nqtv", hs, p["readout.weight"]) + \
        p["readout.bias"][:, None, None]


@torch.no_grad()
def success_rate(p: dict[str, Tensor], data, idx: Tensor | None = None,
                 chunk: int = 256) -> Tensor:
    """Fraction of questions ``idx`` (default all) answered exactly (greedy decoding ==
    teacher-forced argmax)."""
    x, y, m = data if idx is None else (t[idx] for t in data)
    rates = []
    for i in range(0, next(iter(p.values())).shape[0], chunk):
        logits = zoo_logits({k: v[i:i + chunk] for k, v in p.items()}, x)
        ok = (logits.argmax(-1) == y) | ~m  # (n, Q, SEQ)
        rates.append(ok.all(-1).float().mean(-1))
    return torch.cat(rates)


def train_zoo(n_mem: int, hidden: int, max_steps: int, data, pool: Tensor, seed: int):
    """Train ``n_mem`` members at once, each on its own random part of the questions ``pool``;
    returns stacked params, the hyperparameters, the spec template and the shapes."""
    g = torch.Generator().manual_seed(seed)

    def u(lo, hi, log=False):
        r = torch.rand(n_mem, generator=g)
        return torch.exp(math.log(lo) + r * (math.log(hi) - math.log(lo))) if log else \
            lo + r * (hi - lo)

    hp = {"lr": u(1e-3, 3e-2, log=True), "steps": u(30, max_steps, log=True).round(),
          "wd": u(1e-5, 3e-2, log=True), "init": u(0.3, 2.5, log=True),
          "noise": u(0.0, 0.4) * (torch.rand(n_mem, generator=g) < 0.5),
          "data": u(0.3, 1.0)}
    order = hp["steps"].argsort(descending=True)  # active members are always a prefix
    hp = {k: v[order] for k, v in hp.items()}
    x, y, m = data
    # member n trains on the first data[n] fraction of its own shuffle of the pool
    rank = torch.rand(n_mem, len(pool), generator=g).argsort(1).argsort(1).float()
    use = torch.zeros(n_mem, len(y))
    use[:, pool] = (rank < (hp["data"] * len(pool)).round().view(-1, 1)).float()
    weight = use[:, :, None] * m  # (N, Q, SEQ)
    weight = weight / weight.sum((1, 2), keepdim=True)
    template = TinyRNN(hidden)
    shapes = {k: tuple(v.shape) for k, v in template.named_parameters()}
    bound = 1 / math.sqrt(hidden)
    p = {}
    for k, s in shapes.items():
        w = (torch.rand(n_mem, *s, generator=g) * 2 - 1) * bound
        p[k] = w * hp["init"].view(-1, *[1] * len(s))
    m1 = {k: torch.zeros_like(v) for k, v in p.items()}
    m2 = {k: torch.zeros_like(v) for k, v in p.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    steps = int(hp["steps"].max())
    for s in range(steps):
        na = int((hp["steps"] > s).sum())  # members still training: the first na
        # label noise: a member-specific fraction of answer targets is replaced at random
        flip = torch.rand(na, *y.shape, generator=g) < hp["noise"][:na].view(-1, 1, 1)
        yt = torch.where(flip, torch.randint(0, V, (na, *y.shape), generator=g), y)
        pa = {k: v[:na].detach().requires_grad_() for k, v in p.items()}
        logits = zoo_logits(pa, x)
        ce = F.cross_entropy(logits.reshape(-1, V), yt.reshape(-1), reduction="none")
        loss = (ce.view(na, *y.shape) * weight[:na]).sum()
        grads = torch.autograd.grad(loss, list(pa.values()))
        with torch.no_grad():
            for (k, w), gr in zip(p.items(), grads, strict=True):
                w, a1, a2 = w[:na], m1[k][:na], m2[k][:na]
                view = (-1, *[1] * (w.dim() - 1))
                gr = gr + hp["wd"][:na].view(view) * w
                a1.mul_(b1).add_((1 - b1) * gr)
                a2.mul_(b2).add_((1 - b2) * gr * gr)
                c1, c2 = 1 - b1 ** (s + 1), 1 - b2 ** (s + 1)
                w.sub_(hp["lr"][:na].view(view) * (a1 / c1) / ((a2 / c2).sqrt() + eps))
    return p, hp, template, shapes


# --- predictors -------------------------------------------------------------------------------

class StatNN(nn.Module):
    """7 statistics (mean, var, min, q25, q50, q75, max) of every tensor -> MLP."""

    def __init__(self, keys, hidden: int = 64):
        super().__init__()
        self.keys = list(keys)
        self.head = nn.Sequential(nn.Linear(7 * len(self.keys), hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.register_buffer("mu", torch.zeros(7 * len(self.keys)))
        self.register_buffer("sd", torch.ones(7 * len(self.keys)))

    @staticmethod
    def features(params: dict[str, Tensor], keys) -> Tensor:
        feats = []
        for k in keys:
            t = params[k].flatten(1)
            q = torch.quantile(t, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]), dim=1).T
            feats += [t.mean(1, keepdim=True), t.var(1, keepdim=True), q]
        return torch.cat(feats, 1)

    def fit_norm(self, params: dict[str, Tensor]) -> None:
        f = self.features(params, self.keys)
        self.mu.copy_(f.mean(0))
        self.sd.copy_(f.std(0).clamp_min(1e-6))

    def forward(self, params: dict[str, Tensor]) -> Tensor:
        return self.head((self.features(params, self.keys) - self.mu) / self.sd)


class DeepSets(nn.Module):
    """Per-tensor ``phi`` on every scalar entry, mean over the tensor, concat -> head."""

    def __init__(self, keys, width: int = 32, hidden: int = 64):
        super().__init__()
        self.keys = list(keys)
        self.phi = nn.ModuleDict({k.replace(".", "_"): nn.Sequential(
            nn.Linear(1, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
            for k in self.keys})
        self.head = nn.Sequential(nn.Linear(width * len(self.keys), hidden), nn.ReLU(),
                                  nn.Linear(hidden, 1))

    def forward(self, params: dict[str, Tensor]) -> Tensor:
        feats = [self.phi[k.replace(".", "_")](params[k].flatten(1)[..., None]).mean(1)
                 for k in self.keys]
        return self.head(torch.cat(feats, 1))


def take(params: dict[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
    return {k: v[idx] for k, v in params.items()}


def fit(model: nn.Module, params, target, tr: Tensor, va: Tensor, *, lr: float, epochs: int,
        batch: int, patience: int, seed: int, budget_s: float):
    """Adam + BCE on the rate; early stopping on the validation BCE; returns the best copy."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best, best_state, bad, t0, ep = float("inf"), copy.deepcopy(model.state_dict()), 0, \
        time.perf_counter(), 0
    for ep in range(epochs):  # noqa: B007 - reported below
        model.train()
        order = tr[torch.randperm(len(tr), generator=g)]
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            out = model(take(params, idx)).squeeze(-1)
            loss = F.binary_cross_entropy_with_logits(out, target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            vl = F.binary_cross_entropy_with_logits(
                predict(model, params, va, logits=True), target[va]).item()
        if vl < best - 1e-5:
            best, best_state, bad = vl, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
        if bad >= patience or time.perf_counter() - t0 > budget_s:
            break
    model.load_state_dict(best_state)
    model.eval()
    return model, ep + 1, best


@torch.no_grad()
def predict(model: nn.Module, params, idx: Tensor, logits: bool = False,
            batch: int = 128) -> Tensor:
    outs = [model(take(params, idx[i:i + batch])).squeeze(-1)
            for i in range(0, len(idx), batch)]
    out = torch.cat(outs)
    return out if logits else torch.sigmoid(out)


def r2(pred: Tensor, y: Tensor) -> float:
    return float(1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())


# --- main -------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="about 1 minute")
    ap.add_argument("--members", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    n_mem = args.members or (160 if args.quick else 500)
    max_steps = args.max_steps or (300 if args.quick else 1000)
    epochs, fit_budget = (60, 12.0) if args.quick else (300, 75.0)
    t_all = time.perf_counter()
    print("command: python " + " ".join(sys.argv))
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, members={n_mem}, "
          f"hidden={args.hidden}, max_steps={max_steps}, seed={args.seed}")

    data, held, pool = make_task(args.seed)
    t0 = time.perf_counter()
    params, hp, template, shapes = train_zoo(n_mem, args.hidden, max_steps, data, pool,
                                             args.seed)
    rate = success_rate(params, data)  # the target: all 100 questions
    held_rate = success_rate(params, data, held)
    t_zoo = time.perf_counter() - t0
    print(f"zoo trained in {t_zoo:.1f}s (100 questions; each member trains on 30-100% of "
          f"{len(pool)}, {len(held)} held out from all)")
    for what, r in (("success rate (all 100 questions, the target)", rate),
                    (f"held-out success rate ({len(held)} unseen questions)", held_rate)):
        qs = np.quantile(r.numpy(), [0, 0.1, 0.25, 0.5, 0.75, 0.9, 1])
        hist = np.histogram(r.numpy(), bins=10, range=(0, 1))[0]
        print(f"{what}: quantiles (0,10,25,50,75,90,100%) " +
              " ".join(f"{q:.2f}" for q in qs) + f"; mean {r.mean():.3f} std {r.std():.3f}; "
              "histogram (10 bins on [0,1]) " + " ".join(str(int(c)) for c in hist))
    print("tau(target, hyperparameter): " + " ".join(
        f"{k}={kendall_tau(v, rate):.3f}" for k, v in hp.items()) +
        f" held-out rate={kendall_tau(held_rate, rate):.3f}")

    spec = perm_spec(template, "hnp")
    print(f"perm_spec(hnp): {dict(spec)}")

    # split members 75/25, and 20% of the training part for validation
    g = torch.Generator().manual_seed(args.seed + 1)
    order = torch.randperm(n_mem, generator=g)
    n_tr = int(0.75 * n_mem)
    n_va = int(0.2 * n_tr)
    va, tr, te = order[:n_va], order[n_va:n_tr], order[n_tr:]
    fit_idx = order[:n_tr]
    norm = {k: (v[fit_idx].mean().item(), v[fit_idx].std().item()) for k, v in params.items()}
    std = {k: (v - norm[k][0]) / norm[k][1] for k, v in params.items()}
    unf_in = {k: v[:, None] for k, v in std.items()}  # (N, 1, *shape)
    print(f"split: {len(tr)} train / {len(va)} val / {len(te)} test members")

    results = {}
    torch.manual_seed(args.seed)
    unf = InvariantUNF(spec, shapes, channels=(16, 16), head_hidden=(64,))
    stat = StatNN(list(shapes))
    stat.fit_norm(take(std, fit_idx))
    dsets = DeepSets(list(shapes))
    for name, model, inputs, lr in [("UNF", unf, unf_in, 1e-3), ("StatNN", stat, std, 1e-3),
                                    ("DeepSets", dsets, std, 1e-3)]:
        n_par = sum(p.numel() for p in model.parameters())
        t0 = time.perf_counter()
        model, ep, vl = fit(model, inputs, rate, tr, va, lr=lr, epochs=epochs, batch=32,
                            patience=25, seed=args.seed, budget_s=fit_budget)
        pred = predict(model, inputs, te)
        dt = time.perf_counter() - t0
        results[name] = (kendall_tau(pred, rate[te]), r2(pred, rate[te]))
        print(f"{name:<9} params={n_par:>7} epochs={ep:>3} val_bce={vl:.4f} "
              f"tau={results[name][0]:.3f} R2={results[name][1]:.3f} fit {dt:.1f}s")

    # invariance: a random hnp permutation per test member
    gp = torch.Generator().manual_seed(args.seed + 2)
    perms = random_permutation(spec, shapes, gp, batch_size=len(te))
    te_in = take(unf_in, te)
    perm_in = permute(te_in, spec, perms)
    with torch.no_grad():
        a = unf(te_in).squeeze(-1)
        b = unf(perm_in).squeeze(-1)
    moved = max((perm_in[k] - te_in[k]).abs().max().item() for k in te_in)
    print(f"UNF invariance: max |f(P w) - f(w)| = {(a - b).abs().max().item():.2e} "
          f"(logits; the weights moved by up to {moved:.2f})")
    raw_perm = permute({k: v[te][:, None] for k, v in params.items()}, spec, perms)
    rate_perm = success_rate({k: v[:, 0] for k, v in raw_perm.items()}, data)
    print(f"spec check: permuted members' success rates change by at most "
          f"{(rate_perm - rate[te]).abs().max().item():.2e}")

    print("\nsummary (Kendall tau on test members; paper: UNF > Deep Sets, StatNN)")
    for name, (tau, rsq) in results.items():
        print(f"  {name:<9} tau={tau:.3f}  R2={rsq:.3f}")
    print(f"total time {time.perf_counter() - t_all:.1f}s")


if __name__ == "__main__":
    main()
