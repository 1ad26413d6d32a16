"""Population training vs a plain per-network PyTorch loop, in one process.

The same members (same architecture, hyperparameters and epochs) are trained twice:

- baseline: for each member, an ``nn.Sequential``, ``torch.optim`` and a shuffled minibatch
  loop, the way one trains a single network. It runs on ``--baseline-members`` members (a
  subset), since its rate per member does not depend on how many there are;
- ours: ``gensight.zoo.train.train_population`` on all members at once.

It prints members/second for both and their ratio, and our achieved FLOP/s (forward +
backward, counted analytically as 3x the forward multiply-adds x 2) as a fraction of the
FLOP/s of a dense fp32 matmul measured in the same run.

Run:  python benchmarks/bench_population.py [--cases digits-mlp,...] [--repeat 3]

MLP and CNN cases report the median of ``--repeat`` interleaved timed runs of each path.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from gensight.data import load_dataset
from gensight.zoo import ZooSpec
from gensight.zoo.train import init_member, torch_optimizer, train_population

CASES = {
    "digits-mlp": {
        "dataset": "digits", "members": 256, "baseline": 8,
        "architecture": {"family": "mlp", "hidden": [32, 32]},
        "hparams": {"optimizer": ["sgd"], "lr": {"low": 0.01, "high": 0.1}, "epochs": [2],
                    "batch_size": [32], "momentum": [0.9]},
    },
    "digits-mlp-dropout": {
        "dataset": "digits", "members": 256, "baseline": 8,
        "architecture": {"family": "mlp", "hidden": [32, 32]},
        "hparams": {"optimizer": ["sgd"], "lr": {"low": 0.01, "high": 0.1}, "epochs": [2],
                    "batch_size": [32], "momentum": [0.9], "dropout": [0.25]},
    },
    "mnist5k-mlp": {
        "dataset": "mnist5k", "members": 128, "baseline": 4,
        "architecture": {"family": "mlp", "hidden": [64, 64]},
        "hparams": {"optimizer": ["adam"], "lr": {"low": 0.0005, "high": 0.005},
                    "epochs": [1], "batch_size": [64]},
    },
    # SIRENs 2-32-32-1 fitted to MNIST-5k digits (full-batch Adam, lr 1e-3, no early stop),
    # on the 14x14 (2x2-average-pooled) and the 28x28 images.
    "siren14": {"siren": 14, "members": 512, "baseline": 4, "steps": 100},
    "siren28": {"siren": 28, "members": 256, "baseline": 4, "steps": 100},
    "mnist5k-cnn": {
        "dataset": "mnist5k", "members": 32, "baseline": 4,
        "architecture": {"family": "cnn", "channels": [16, 16, 16], "kernel_size": 3},
        "hparams": {"optimizer": ["adam"], "lr": {"low": 0.001, "high": 0.01},
                    "epochs": [1], "batch_size": [64]},
    },
}


def spec_for(case: dict) -> ZooSpec:
    return ZooSpec.from_dict({"dataset": case["dataset"], "architecture": case["architecture"],
                              "configs": case["members"], "hparams": case["hparams"]})


def baseline_loop(members, spec, ds) -> float:
    """Seconds to train ``members`` one at a time with a plain PyTorch loop."""
    start = time.perf_counter()
    for member in members:
        hp = member.hparams
        model = init_member(member, spec.architecture, ds)
        opt = torch_optimizer(hp["optimizer"], model.parameters(), hp["lr"], hp["l2"],
                              hp["momentum"])
        g = torch.Generator().manual_seed(member.seed)
        n = len(ds.y_train)
        for _ in range(hp["epochs"]):
            order = torch.randperm(n, generator=g)
            for idx in order.split(hp["batch_size"]):
                loss = F.cross_entropy(model(ds.x_train[idx]), ds.y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return time.perf_counter() - start


def forward_flops_per_example(spec: ZooSpec, input_shape) -> int:
    arch = spec.architecture
    if arch.family == "mlp":
        widths = [math.prod(input_shape), *arch.hidden, 10]
        return 2 * sum(a * b for a, b in zip(widths, widths[1:], strict=False))
    chans = [input_shape[0], *arch.channels]
    sizes = arch.conv_output_sizes(tuple(input_shape[1:]))  # output positions per layer
    k = arch.kernel_size ** (len(input_shape) - 1)
    conv = sum(a * b * k * math.prod(sp)
               for a, b, sp in zip(chans, chans[1:], sizes, strict=False))
    return 2 * (conv + chans[-1] * 10)


def matmul_flops() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    start = time.perf_counter()
    reps = 5
    for _ in range(reps):
        a @ b
    return reps * 2 * 2048 ** 3 / (time.perf_counter() - start)


def siren_images(size: int, n: int) -> torch.Tensor:
    """The first ``n`` MNIST-5k training images at ``size`` (28 or 14), in [-1, 1]."""
    x = load_dataset("mnist5k").x_train[:n, 0]
    if size == 14:
        x = F.avg_pool2d(x.unsqueeze(1), 2).squeeze(1)
    return x * 2 - 1


def siren_case(name: str, case: dict, peak: float) -> str:
    from gensight.zoo.siren import fit_siren_reference, fit_sirens

    size, steps, n = case["siren"], case["steps"], case["members"]
    images = siren_images(size, n)
    seeds = list(range(n))
    fit_siren_reference(images[0], 0, steps=2)  # untimed warm-up of both paths
    fit_sirens(images[:2], seeds[:2], steps=2)
    start = time.perf_counter()
    for k in range(case["baseline"]):
        fit_siren_reference(images[k], seeds[k], steps=steps)
    base_rate = case["baseline"] / (time.perf_counter() - start)
    start = time.perf_counter()
    fit = fit_sirens(images, seeds, steps=steps)
    ours_s = time.perf_counter() - start
    ours_rate = n / ours_s
    # multiply-adds per pixel of a 2-32-32-1 SIREN, forward; x 3 for forward + backward
    flops = 3 * 2 * (2 * 32 + 32 * 32 + 32) * size * size * steps * n
    return (f"{name:<18} {n:>7} {base_rate:>11.2f} {ours_rate:>11.2f} "
            f"{ours_rate / base_rate:>7.1f}x {flops / ours_s / 1e9:>13.2f} "
            f"{flops / ours_s / peak:>10.1%}   median PSNR {fit.psnr.median():.1f} dB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed runs of each path per MLP/CNN case; the median is "
                        "reported (default 3: a digits population trains in a fraction of "
                        "a second, so one run is noisy)")

    args = parser.parse_args()
    peak = matmul_flops()
    print(f"threads={torch.get_num_threads()} torch={torch.__version__} "
          f"dense fp32 matmul: {peak / 1e9:.1f} GFLOP/s")
    header = (f"{'case':<18} {'members':>7} {'loop mem/s':>11} {'ours mem/s':>11} "
              f"{'speedup':>8} {'ours GFLOP/s':>13} {'of matmul':>10}")
    print(header)
    print("-" * len(header))
    for name in args.cases.split(","):
        case = CASES[name]
        if "siren" in case:
            print(siren_case(name, case, peak), flush=True)
            continue
        spec = spec_for(case)
        ds = load_dataset(spec.dataset)
        members = spec.members()
        # Untimed warm-up of both paths (oneDNN primitive creation, allocator).
        baseline_loop(members[:1], spec, ds)
        train_population(members[:2], spec.architecture, ds, [], lambda e, p: None)
        base_runs, our_runs = [], []
        for _ in range(max(1, args.repeat)):  # interleaved, so drift hits both paths alike
            base_runs.append(baseline_loop(members[:case["baseline"]], spec, ds))
            start = time.perf_counter()
            train_population(members, spec.architecture, ds, [], lambda e, p: None)
            our_runs.append(time.perf_counter() - start)
        base_s, ours_s = statistics.median(base_runs), statistics.median(our_runs)
        base_rate = case["baseline"] / base_s
        ours_rate = len(members) / ours_s
        hp = members[0].hparams
        examples = hp["epochs"] * len(ds.y_train) * len(members)
        flops = 3 * forward_flops_per_example(spec, ds.input_shape) * examples
        print(f"{name:<18} {len(members):>7} {base_rate:>11.2f} {ours_rate:>11.2f} "
              f"{ours_rate / base_rate:>7.1f}x {flops / ours_s / 1e9:>13.2f} "
              f"{flops / ours_s / peak:>10.1%}", flush=True)
    print("speedup = our members/s / baseline members/s (same hyperparameters and epochs)")


if __name__ == "__main__":
    main()
