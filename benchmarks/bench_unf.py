"""UNFLinear vs NPLinear: forward + backward time of one layer on the same weight space.

UNF (arXiv 2402.05232) builds the maximal equivariant layer for any permutation spec from the
paper's partition basis; on an MLP's NP spec it spans exactly NPLinear's maps (tested), so the
two layers compute the same function class and this compares the cost of the generality. The
issue's target: UNF within 1.5x of NPLinear's time.

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_unf.py [--batch 32] [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from gensight.nf import NPLinear, UNFLinear
from gensight.weightspace import WeightBatch, WeightSpace


def digits_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def mnist_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(),
                         nn.Conv2d(16, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10))


CASES = {"digits-mlp": (digits_mlp, 32), "mnist-mlp": (mnist_mlp, 16),
         "small-cnn": (small_cnn, 16)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(f"threads={torch.get_num_threads()} batch={args.batch} torch={torch.__version__}")
    print(f"{'case':<11} {'C':>3} {'NPLinear ms':>12} {'UNFLinear ms':>13} {'ratio':>6} "
          f"{'params NP':>10} {'params UNF':>11}")
    for case, (factory, c) in CASES.items():
        space = WeightSpace.from_module(factory())
        g = torch.Generator().manual_seed(0)
        wb = WeightBatch(space, [torch.randn(args.batch, c, *lay.weight_shape, generator=g)
                                 for lay in space.layers],
                         [torch.randn(args.batch, c, *lay.bias_shape, generator=g)
                          for lay in space.layers])
        torch.manual_seed(0)
        layers = {"np": NPLinear(space, c, c),
                  "unf": UNFLinear.from_weight_space(space, c, c, bias="reference")}
        times: dict[str, list[float]] = {k: [] for k in layers}

        def step(layer, wb=wb):
            out = layer(wb)
            sum(t.sum() for t in out.tensors()).backward()

        for layer in layers.values():
            step(layer)
            step(layer)
        for _ in range(args.repeats):
            for name, layer in layers.items():
                layer.zero_grad(set_to_none=True)
                t0 = time.perf_counter()
                step(layer)
                times[name].append(time.perf_counter() - t0)
        np_ms, unf_ms = (1e3 * statistics.median(times[k]) for k in ("np", "unf"))
        counts = [sum(p.numel() for p in layers[k].parameters()) for k in ("np", "unf")]
        print(f"{case:<11} {c:>3} {np_ms:>12.2f} {unf_ms:>13.2f} {unf_ms / np_ms:>5.2f}x "
              f"{counts[0]:>10,} {counts[1]:>11,}")
    print("ratio = UNFLinear time / NPLinear time (median, forward + backward of one layer)")


if __name__ == "__main__":
    main()
