"""Cost and precision of the PAC-Bayes sigma search (ours vs the reference recipe), and of
the sharpness alpha' attack (``--compare-attacks``).

    python benchmarks/bench_sharpness.py runs/mnist-cnn-small [--members 8] [--seeds 4]
    python benchmarks/bench_sharpness.py ZOO --compare-attacks [--attacks 2x4,4x10,8x20]
        [--strong 16x80] [--members 8] [--examples 1000]

``--compare-attacks`` runs ``gensight.measures.sharpness_alpha`` on each network with every
``RESTARTSxSTEPS`` setting of ``--attacks`` and with the strong ``--strong`` one, plain and
magnitude-aware, and prints alpha' per setting relative to the strong attack's and the
seconds each took (one thread). The previous attack (cross-entropy ascent from 2 random
starts x 4 steps, last iterate only, rtol 0.05) is run as ``legacy`` for comparison.

Reference recipe (the public PGDL/"fantastic measures" code): bisection of sigma over a fixed
interval for 15 steps; at each step 10 Monte Carlo draws of Gaussian weight noise, each a full
pass over the data, fresh draws at every step: 150 passes (+1 for the clean accuracy).
Ours (`gensight.measures.pacbayes_sigma`): a cheap bracket on half passes, then 8 noise
levels around it, each 10 fresh draws on disjoint tenths of the data (one pass per level),
and a quadratic fit of accuracy on log sigma over all 80 draws, solved for the target.
Both look for the largest sigma whose expected accuracy drop is <= 0.1, with noise of
standard deviation sigma (plain) or sigma |w| + eps (magnitude-aware).

Precision is the seed-to-seed spread (std / mean over --seeds runs with different noise), for
each method on the same network; cost is in full single-network passes over the data (and
seconds, both in this process).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from gensight.measures import pacbayes_sigma, sharpness_alpha
from gensight.measures.core import EPSILON, accuracy, batched_forward, log_bisect, noise_scale
from gensight.measures.zoo import member_data
from gensight.zoo import Zoo


def reference_sigma(model, x, y, *, magnitude: bool, seed: int, steps: int = 15,
                    samples: int = 10, upper: float = 1.0, target: float = 0.1) -> float:
    """Bisection over [0, upper], fresh noise at every step, one full pass per draw."""
    gen = torch.Generator().manual_seed(seed)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    base = accuracy(model, x, y)
    lo, hi = 0.0, upper
    for _ in range(steps):
        mid = (lo + hi) / 2
        scale = noise_scale(params, mid, magnitude)
        accs = []
        for _ in range(samples):
            with torch.no_grad():
                for k, p in model.named_parameters():
                    p.copy_(params[k] + torch.randn(p.shape, generator=gen) * scale[k])
            accs.append(accuracy(model, x, y))
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(params[k])
        if base - np.mean(accs) > target:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def legacy_alpha(model, x, y, *, magnitude: bool, restarts: int = 2, steps: int = 4,
                 rtol: float = 0.05, seed: int = 0, target_drop: float = 0.1) -> float:
    """The attack gensight used before: sign-gradient ascent of the mean cross-entropy from
    uniform random starts in the box, step half the radius, only the last iterate checked."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    base = accuracy(model, x, y)
    gen = torch.Generator().manual_seed(seed)
    start_u = {k: torch.rand((restarts, *v.shape), generator=gen) * 2 - 1
               for k, v in params.items()}
    forward = batched_forward(model, x)

    def accept(alpha: float) -> bool:
        radius = {k: (alpha * v.abs() + EPSILON) if magnitude else torch.full_like(v, alpha)
                  for k, v in params.items()}
        delta = {k: start_u[k] * radius[k] for k in params}
        for _ in range(steps):
            delta = {k: v.requires_grad_(True) for k, v in delta.items()}
            out = forward({k: params[k] + delta[k] for k in params}, x)
            loss = torch.nn.functional.cross_entropy(out.flatten(0, 1), y.repeat(restarts))
            grads = torch.autograd.grad(loss, list(delta.values()))
            with torch.no_grad():
                delta = {k: torch.clamp(delta[k] + 0.5 * radius[k] * g.sign(), -radius[k],
                                        radius[k]) for k, g in zip(delta, grads, strict=True)}
        with torch.no_grad():
            out = forward({k: params[k] + delta[k] for k in params}, x)
        worst = float((out.argmax(-1) == y).float().mean(dim=1).min())
        return worst >= base - target_drop

    return log_bisect(accept, 0.1 if magnitude else 0.01, rtol)[0]


def _effort(text: str) -> tuple[int, int]:
    restarts, steps = text.lower().split("x")
    return int(restarts), int(steps)


def compare_attacks(zoo: Zoo, rows, args) -> None:
    """alpha' of every --attacks setting (and the legacy attack) relative to --strong."""
    torch.set_num_threads(1)
    attacks = [_effort(a) for a in args.attacks.split(",")]
    strong = _effort(args.strong)
    names = ["legacy", *[f"{r}x{s}" for r, s in attacks], f"{strong[0]}x{strong[1]}"]
    rel: dict[str, list[float]] = {n: [] for n in names}
    secs: dict[str, list[float]] = {n: [] for n in names}
    print("| member | train acc | magnitude-aware | " + " | ".join(
        f"{n}{' (strong)' if i == len(names) - 1 else ''}" for i, n in enumerate(names)) + " |")
    print("|---" * (3 + len(names)) + "|")
    for row, data in member_data(zoo, rows, args.examples):
        for magnitude in (False, True):
            values, times = [], []
            for name in names:
                t0 = time.perf_counter()
                if name == "legacy":
                    a = legacy_alpha(data.model, data.x, data.y, magnitude=magnitude)
                else:
                    restarts, steps = _effort(name)
                    a, _ = sharpness_alpha(data.model, data.x, data.y, magnitude=magnitude,
                                           restarts=restarts, steps=steps)
                times.append(time.perf_counter() - t0)
                values.append(a)
            ref = values[-1]
            for name, a, t in zip(names, values, times, strict=True):
                rel[name].append(a / ref - 1)
                secs[name].append(t)
            cells = [f"{a:.4g} ({a / ref - 1:+.1%}, {t:.2f} s)" for a, t in
                     zip(values[:-1], times[:-1], strict=True)] + [f"{ref:.4g} ({times[-1]:.2f} s)"]
            print(f"| {row.member_id} | {row.train_acc:.3f} | {'yes' if magnitude else 'no'} | "
                  + " | ".join(cells) + " |", flush=True)
    print("\n| attack | max alpha'/strong - 1 | min alpha'/strong - 1 | mean seconds |")
    print("|---|---|---|---|")
    for name in names:
        print(f"| {name} | {max(rel[name]):+.1%} | {min(rel[name]):+.1%} | "
              f"{np.mean(secs[name]):.2f} |")


def compare_batched(zoo, args) -> None:
    """``gensight.measures.sharpness_alpha`` on each of ``--members`` networks alone, against
    ``sharpness_alpha_batch`` on all of them at once (default effort, one thread, both in
    this process): seconds per network, and how far the alpha' values are apart (float32:
    the batched products round differently, which can flip a sign step)."""
    from gensight.measures.batched import sharpness_alpha_batch
    from gensight.zoo import ZooSpec
    from gensight.zoo.train import Population

    torch.set_num_threads(1)
    rows = zoo.table.query("is_final and finite and train_acc > 0.5")
    rows = rows.sample(min(args.members, len(rows)), random_state=0)
    rows = rows[rows["activation"] == rows["activation"].iloc[0]]
    data = list(member_data(zoo, rows, args.examples))
    spec = ZooSpec.from_dict(zoo.manifest["spec"])
    batch = zoo.weights(rows)
    pop = Population(batch.space, spec.architecture, [w[:, 0] for w in batch.weights],
                     [b[:, 0] for b in batch.biases], str(rows["activation"].iloc[0]))
    same_x = all(torch.equal(d.x, data[0][1].x) for _, d in data)
    x = data[0][1].x if same_x else torch.stack([d.x for _, d in data])
    y = data[0][1].y if same_x else torch.stack([d.y for _, d in data])
    print(f"{len(rows)} networks, {args.examples} examples each"
          f"{' (shared)' if same_x else ''}")
    for magnitude in (False, True):
        t0 = time.perf_counter()
        alone = [sharpness_alpha(d.model, d.x, d.y, magnitude=magnitude) for _, d in data]
        t_alone = time.perf_counter() - t0
        t0 = time.perf_counter()
        together = sharpness_alpha_batch(pop, x, y, magnitude=magnitude)
        t_batch = time.perf_counter() - t0
        rel = [abs(b.alpha / a[0] - 1) for a, b in zip(alone, together, strict=True)
               if b.alpha is not None]
        print(f"magnitude={magnitude}: per network {t_alone / len(data):.2f} s alone, "
              f"{t_batch / len(data):.2f} s batched ({t_alone / t_batch:.2f}x); passes "
              f"{np.mean([a[1]['passes'] for a in alone]):.0f} vs "
              f"{np.mean([b.passes for b in together]):.0f}; |alpha' batched / alone - 1| "
              f"median {np.median(rel):.4f}, max {np.max(rel):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoo")
    parser.add_argument("--members", type=int, default=6)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3, help="runs of each method per network")
    parser.add_argument("--compare-attacks", action="store_true",
                        help="compare the efforts of the sharpness alpha' attack instead")
    parser.add_argument("--attacks", default="2x4,4x10,4x20,8x20,8x40",
                        help="RESTARTSxSTEPS settings to compare (--compare-attacks)")
    parser.add_argument("--strong", default="16x80",
                        help="the strong attack the others are compared with")
    parser.add_argument("--compare-batched", action="store_true",
                        help="time the batched alpha' search against the per-network one")
    args = parser.parse_args()
    zoo = Zoo.open(args.zoo)
    if args.compare_batched:
        compare_batched(zoo, args)
        return
    if args.compare_attacks:
        rows = zoo.table.query("is_final and finite and train_acc > 0.5")
        rows = rows.sample(min(args.members, len(rows)), random_state=0)
        compare_attacks(zoo, rows, args)
        return
    rows = zoo.table.query("is_final and finite and train_acc > 0.5")
    rows = rows.sample(min(args.members, len(rows)), random_state=0)
    seeds = range(args.seeds)
    total = {"ref": 0.0, "ours": 0.0}
    passes = {"ref": 0.0, "ours": 0.0}
    spreads = {"ref": [], "ours": []}
    gaps = []
    print(f"{'member':10s} {'mag':>3s} {'sigma ref':>10s} {'spread':>7s} {'sigma ours':>10s} "
          f"{'spread':>7s} {'se':>6s} {'ours/ref-1':>10s} {'t ref':>6s} {'t ours':>6s} "
          f"{'ratio':>6s}")
    for row, data in member_data(zoo, rows, args.examples):
        for magnitude in (False, True):
            upper = 10.0 if magnitude else 1.0
            t0 = time.perf_counter()
            ref = [reference_sigma(data.model, data.x, data.y, magnitude=magnitude, seed=s,
                                   upper=upper) for s in seeds]
            t_ref = (time.perf_counter() - t0) / len(ref)
            t0 = time.perf_counter()
            runs = [pacbayes_sigma(data.model, data.x, data.y, magnitude=magnitude, seed=s)
                    for s in seeds]
            t_ours = (time.perf_counter() - t0) / len(runs)
            ours = [r[0] for r in runs]
            total["ref"] += t_ref
            total["ours"] += t_ours
            passes["ref"] += 15 * 10 + 1
            passes["ours"] += float(np.mean([r[1]["passes"] for r in runs]))
            # relative spread: standard deviation over seeds / mean (the Monte Carlo error)
            spread = {k: float(np.std(v, ddof=1) / np.mean(v)) if len(v) > 1 else float("nan")
                      for k, v in (("ref", ref), ("ours", ours))}
            for k in spread:
                spreads[k].append(spread[k])
            gap = float(np.mean(ours) / np.mean(ref) - 1)
            gaps.append(abs(gap))
            se = float(np.mean([r[1]["log_sigma_se"] for r in runs]))
            print(f"{row.member_id:10s} {str(magnitude)[0]:>3s} {np.mean(ref):10.4g} "
                  f"{spread['ref']:7.3f} {np.mean(ours):10.4g} {spread['ours']:7.3f} "
                  f"{se:6.3f} {gap:+10.3f} {t_ref:6.2f} {t_ours:6.2f} "
                  f"{t_ref / t_ours:5.1f}x")
    rms = {k: float(np.sqrt(np.nanmean(np.square(v)))) for k, v in spreads.items()}
    print(f"\nseed-to-seed spread of sigma (rms of std/mean over {args.seeds} seeds): "
          f"reference {rms['ref']:.3f}, ours {rms['ours']:.3f}")
    print(f"|mean ours / mean reference - 1|: median {np.median(gaps):.3f}, "
          f"max {np.max(gaps):.3f}")
    print(f"cost: reference {passes['ref']:.0f} passes, {total['ref']:.1f}s; ours "
          f"{passes['ours']:.0f} passes, {total['ours']:.1f}s -> "
          f"{passes['ref'] / passes['ours']:.1f}x fewer passes, "
          f"{total['ref'] / total['ours']:.1f}x less time")


if __name__ == "__main__":
    main()
