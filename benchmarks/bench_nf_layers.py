"""NF-Layer speed and memory: gensight vs the reference `nfn` package (0.1.2).

Both libraries get the same stacks (3 NF-Layers with ReLU between them, on the same weight
space, batch and channels) and run forward + backward on the same inputs. Time is measured
in this process, alternating implementations. Peak memory is measured in a fresh child
process per implementation: the kernel's peak-RSS counter is reset just before one step and
read after it, with glibc set to return freed large blocks to the OS at once (the profiler
cannot give CPU peaks). On CUDA it uses
torch.cuda.max_memory_allocated.

Needs the reference package:  pip install -c constraints/ci.txt -e '.[bench-nfn]'
Run:                          python benchmarks/bench_nf_layers.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from gensight.nf import HNPLinear, NPLinear
from gensight.weightspace import WeightBatch, WeightSpace


def small_cnn_zoo_net() -> nn.Module:
    """The Small CNN Zoo architecture (arXiv 2002.11448): 3 conv layers of 16 channels, 3x3,
    global average pooling, dense 10."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(),
        nn.Conv2d(16, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 10),
    )


def mnist_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


# name -> (network factory, symmetry, channels)
CASES = {
    "cnn-hnp": (small_cnn_zoo_net, "hnp", 16),
    "cnn-np": (small_cnn_zoo_net, "np", 16),
    "mlp-hnp": (mnist_mlp, "hnp", 4),
    "mlp-np": (mnist_mlp, "np", 16),
}


def make_inputs(case: str, batch: int, device: str):
    factory, _, _ = CASES[case]
    torch.manual_seed(0)
    space = WeightSpace.from_module(factory())
    wb = WeightBatch.from_modules([factory() for _ in range(batch)], space).to(device)
    return space, wb


def make_step(layers: nn.ModuleList, inputs, tensors_of):
    """Forward through the stack (ReLU between layers), mean-square loss, backward. Works
    for both libraries: their feature objects both have ``.map``."""

    def step():
        x = inputs
        for k, layer in enumerate(layers):
            x = layer(x)
            if k < len(layers) - 1:
                x = x.map(torch.relu)
        sum(t.square().mean() for t in tensors_of(x)).backward()

    return step


def build(impl: str, case: str, space: WeightSpace, wb: WeightBatch, device: str):
    """A 3-layer stack and a function running forward + backward once."""
    _, symmetry, c = CASES[case]
    widths = [(1, c), (c, c), (c, c)]
    if impl == "gensight":
        cls = HNPLinear if symmetry == "hnp" else NPLinear
        layers = nn.ModuleList([cls(space, a, b) for a, b in widths]).to(device)
        step = make_step(layers, wb, lambda out: out.tensors())
    else:
        from nfn.common import WeightSpaceFeatures, network_spec_from_wsfeat
        from nfn.layers import HNPLinear as RefHNP
        from nfn.layers import NPLinear as RefNP

        feats = WeightSpaceFeatures(list(wb.weights), list(wb.biases))
        spec = network_spec_from_wsfeat(feats)
        cls = RefHNP if symmetry == "hnp" else RefNP
        layers = nn.ModuleList([cls(spec, a, b) for a, b in widths]).to(device)
        step = make_step(layers, feats, lambda out: (*out.weights, *out.biases))
    n_params = sum(p.numel() for p in layers.parameters())
    return layers, step, n_params


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_case(case: str, batch: int, device: str, repeats: int) -> dict:
    space, wb = make_inputs(case, batch, device)
    runs = {impl: build(impl, case, space, wb, device) for impl in ("nfn", "gensight")}
    times: dict[str, list[float]] = {impl: [] for impl in runs}
    for _, step, _ in runs.values():  # warm-up
        step()
        step()
    for _ in range(repeats):
        for impl, (layers, step, _) in runs.items():
            layers.zero_grad(set_to_none=True)
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            times[impl].append(time.perf_counter() - t0)
    return {
        impl: {"seconds": statistics.median(ts), "params": runs[impl][2]}
        for impl, ts in times.items()
    }


def peak_memory_child(impl: str, case: str, batch: int, device: str) -> int:
    """Runs in a child process: bytes of peak memory of forward + backward above the state
    before it (parameters and inputs excluded)."""
    space, wb = make_inputs(case, batch, device)
    layers, step, _ = build(impl, case, space, wb, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    import gc

    gc.collect()
    _reset_peak_rss()
    rss_before = _status_kib("VmRSS")
    step()
    return max(0, _status_kib("VmHWM") - rss_before) * 1024


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(impl: str, case: str, batch: int, device: str) -> int:
    # A fixed mmap threshold makes glibc return freed large blocks to the OS at once, so
    # resident memory follows live tensors instead of the allocator's cache.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(
        [sys.executable, __file__, "--child-memory", impl, case, "--batch", str(batch),
         "--device", device],
        capture_output=True, text=True, check=True, env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--child-memory", nargs=2, metavar=("IMPL", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        impl, case = args.child_memory
        print(json.dumps({"bytes": peak_memory_child(impl, case, args.batch, args.device)}))
        return
    try:
        import nfn  # noqa: F401
    except ImportError:
        sys.exit("the reference package is missing: pip install -c constraints/ci.txt "
                 "-e '.[bench-nfn]'")

    print(f"device={args.device} threads={torch.get_num_threads()} batch={args.batch} "
          f"torch={torch.__version__}")
    header = (f"{'case':<9} {'C':>3} {'nfn ms':>9} {'ours ms':>9} {'speedup':>8} "
              f"{'nfn MiB':>9} {'ours MiB':>9} {'mem ratio':>9} {'nfn params':>11} "
              f"{'our params':>11}")
    print(header)
    print("-" * len(header))
    for case in args.cases.split(","):
        t = time_case(case, args.batch, args.device, args.repeats)
        mem = {impl: measure_memory(impl, case, args.batch, args.device)
               for impl in ("nfn", "gensight")}
        ref_ms, our_ms = 1e3 * t["nfn"]["seconds"], 1e3 * t["gensight"]["seconds"]
        print(f"{case:<9} {CASES[case][2]:>3} {ref_ms:>9.2f} {our_ms:>9.2f} "
              f"{ref_ms / our_ms:>7.2f}x {mem['nfn'] / 2**20:>9.1f} "
              f"{mem['gensight'] / 2**20:>9.1f} {mem['gensight'] / max(mem['nfn'], 1):>9.2f} "
              f"{t['nfn']['params']:>11,} {t['gensight']['params']:>11,}")
    print("speedup = nfn time / ours (forward + backward, median); mem ratio = ours / nfn "
          "peak memory of one step above the state before it")


if __name__ == "__main__":
    main()
