"""Cost of the PAC-Bayes sigma search: ours vs the reference recipe, same networks and data.

    python benchmarks/bench_sharpness.py runs/mnist-cnn-grid [--members 6] [--examples 1000]

Reference recipe (the public PGDL/"fantastic measures" code): bisection of sigma over a fixed
interval for 15 steps; at each step 10 Monte Carlo draws of Gaussian weight noise, each a full
pass over the data, fresh draws at every step. Ours (`gensight.measures.pacbayes_sigma`): the
same 10 draws reused across the search (common random numbers), all draws evaluated per data
chunk, bracketing + bisection in log sigma to 1% relative precision, and passes that stop as
soon as the accept/reject decision is certain. Both look for the largest sigma whose expected
accuracy drop is <= 0.1. Prints per network the two sigmas, the reference's own spread over
two seeds (its Monte Carlo error), and the time ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from gensight.measures import pacbayes_sigma
from gensight.measures.core import accuracy, noise_scale
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoo")
    parser.add_argument("--members", type=int, default=6)
    parser.add_argument("--examples", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    zoo = Zoo.open(args.zoo)
    rows = zoo.table.query("is_final and finite and train_acc > 0.5")
    rows = rows.sample(args.members, random_state=0)
    total_ref = total_ours = 0.0
    print(f"{'member':10s} {'mag':>4s} {'sigma ref (2 seeds)':>22s} {'sigma ours':>11s} "
          f"{'ours/ref-1':>10s} {'ref spread':>10s} {'t ref':>7s} {'t ours':>7s} {'ratio':>6s}")
    for row, data in member_data(zoo, rows, args.examples):
        for magnitude in (False, True):
            upper = 10.0 if magnitude else 1.0
            t0 = time.perf_counter()
            ref = [reference_sigma(data.model, data.x, data.y, magnitude=magnitude, seed=s,
                                   upper=upper) for s in (0, 1)]
            t_ref = (time.perf_counter() - t0) / 2
            t0 = time.perf_counter()
            ours, info = pacbayes_sigma(data.model, data.x, data.y, magnitude=magnitude)
            t_ours = time.perf_counter() - t0
            total_ref += t_ref
            total_ours += t_ours
            mean_ref = float(np.mean(ref))
            print(f"{row.member_id:10s} {str(magnitude)[0]:>4s} {ref[0]:10.4g} {ref[1]:10.4g}  "
                  f"{ours:11.4g} {ours / mean_ref - 1:+10.3f} "
                  f"{abs(ref[0] - ref[1]) / mean_ref:10.3f} {t_ref:7.2f} {t_ours:7.2f} "
                  f"{t_ref / t_ours:6.1f}x")
    print(f"\ntotal: reference {total_ref:.1f}s, ours {total_ours:.1f}s -> "
          f"{total_ref / total_ours:.1f}x cheaper")


if __name__ == "__main__":
    main()
