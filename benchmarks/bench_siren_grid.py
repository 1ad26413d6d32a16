"""SIREN population step: the first layer's sines directly vs by angle addition on the grid.

    python benchmarks/bench_siren_grid.py [--sizes 8,14,16,20,24,28,32,64] [--repeat 11]

For SIRENs 2-32-32-1 on an S x S coordinate grid, one ``loss_and_grad`` step of
``gensight.zoo.siren._FlatSirens`` (the population fit's forward and backward pass) is timed
two ways in the same process, interleaved: ``direct`` evaluates sin and cos of the first
layer at all S^2 pixels; ``grid`` builds them from 4 S per-axis values per unit by angle
addition (``sin(r_i + c_j) = sin r_i cos c_j + cos r_i sin c_j``). It prints the median time
per step of each and their ratio; ``fit_sirens`` uses the grid path from
``_FlatSirens.GRID_MIN_SIDE`` up.
"""

from __future__ import annotations

import argparse
import time

import torch

from gensight.zoo.siren import _FlatSirens, _layer_sizes, coordinate_grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="8,14,16,20,24,28,32,64")
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"threads={a.threads} torch={torch.__version__}; grid path used from side "
          f"{_FlatSirens.GRID_MIN_SIDE}")
    print(f"{'side':>4} {'members':>7} {'direct ms':>10} {'grid ms':>8} {'ratio':>6}")
    for size in (int(v) for v in a.sizes.split(",")):
        members = max(32, min(512, 2 ** 17 // (size * size)))
        flat = _FlatSirens(_layer_sizes((32, 32), 2, 1), 30.0)
        g = torch.Generator().manual_seed(0)
        theta = (torch.rand(members, flat.dim, generator=g) - 0.5) * 0.2
        targets = torch.rand(members, 1, size * size, generator=g) * 2 - 1
        coords, lin = coordinate_grid(size), torch.linspace(-1, 1, size)
        flat.GRID_MIN_SIDE = 1
        times: dict[str, list[float]] = {"direct": [], "grid": []}
        for grid in (None, lin):  # warm-up
            flat.loss_and_grad(theta, coords, targets, grid)
        for _ in range(a.repeat):
            for name, grid in (("direct", None), ("grid", lin)):
                t = time.perf_counter()
                for _ in range(3):
                    flat.loss_and_grad(theta, coords, targets, grid)
                times[name].append((time.perf_counter() - t) / 3)
        med = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in times.items()}
        print(f"{size:>4} {members:>7} {med['direct']:>10.2f} {med['grid']:>8.2f} "
              f"{med['direct'] / med['grid']:>5.2f}x", flush=True)


if __name__ == "__main__":
    main()
