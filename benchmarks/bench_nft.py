"""NFT block speed and memory: gensight's NFTBlock vs the same block built from the reference
`nfn` package's layers (0.1.2: NPAttention, SimpleLayerNorm, Pointwise), arXiv 2305.13546.

The reference block is the authors' pre-norm composition (their experiments' ``Block``, not in
the pip package): ``x + Dropout(NPAttention(LN(x)))``, then ``x + FF(LN(x))`` with
``FF = Pointwise(C, ff*C) -> GELU -> Pointwise(ff*C, C) -> Dropout``. Both get the same
space, batch, channels and random inputs and run forward + backward of one block; time is
the median over repeats, alternating implementations, in this process. Peak memory is
measured in a fresh child process per implementation as in ``bench_nf_layers.py``. Before
timing, the attention layers are checked to compute the same function: the reference's
state dict is loaded into ``NFTAttention`` (with the output maps' biases zeroed on conv
spaces, where the reference adds that bias once per term) and outputs are compared.

Needs the reference package:  pip install -c constraints/ci.txt -e '.[bench-nfn]'
Run:                          python benchmarks/bench_nft.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from bench_nf_layers import _reset_peak_rss, _status_kib, small_cnn_zoo_net
from torch import nn

from gensight.nf import NFTAttention, NFTBlock
from gensight.weightspace import WeightBatch, WeightSpace


def siren() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 1))


def digits_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def mnist_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 10))


# name -> (network factory, channels, heads, ff_factor)
CASES = {
    "siren-c64": (siren, 64, 4, 2),
    "siren-c256": (siren, 256, 4, 4),
    "digits-mlp": (digits_mlp, 32, 4, 2),
    "mnist-mlp": (mnist_mlp, 16, 4, 2),
    "small-cnn": (small_cnn_zoo_net, 16, 4, 2),
}


def make_inputs(case: str, batch: int) -> tuple[WeightSpace, WeightBatch]:
    factory, c, _, _ = CASES[case]
    space = WeightSpace.from_module(factory())
    g = torch.Generator().manual_seed(0)
    return space, WeightBatch(
        space, [torch.randn(batch, c, *lay.weight_shape, generator=g) for lay in space.layers],
        [torch.randn(batch, c, *lay.bias_shape, generator=g) for lay in space.layers])


class ReferenceBlock(nn.Module):
    def __init__(self, spec, channels: int, ff: int, heads: int, shared: bool):
        from nfn.layers import NPAttention, Pointwise, SimpleLayerNorm, TupleOp

        super().__init__()
        self.ln1 = SimpleLayerNorm(spec, channels)
        self.attn = NPAttention(spec, channels, heads, 0.0, share_projections=shared)
        self.drop = TupleOp(nn.Dropout(0.0))
        self.ln2 = SimpleLayerNorm(spec, channels)
        self.ff = nn.Sequential(Pointwise(spec, channels, ff * channels), TupleOp(nn.GELU()),
                                Pointwise(spec, ff * channels, channels),
                                TupleOp(nn.Dropout(0.0)))

    def forward(self, x):
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.ff(self.ln2(x))


def build(impl: str, case: str, space: WeightSpace, wb: WeightBatch):
    _, c, heads, ff = CASES[case]
    shared = all(layer.filter_size == 1 for layer in space.layers)
    torch.manual_seed(0)
    if impl == "gensight":
        block = NFTBlock(space, c, ff_factor=ff, heads=heads, dropout=0.0)
        inputs, tensors = wb, lambda out: out.tensors()
    else:
        from nfn.common import WeightSpaceFeatures, network_spec_from_wsfeat

        inputs = WeightSpaceFeatures(list(wb.weights), list(wb.biases))
        block = ReferenceBlock(network_spec_from_wsfeat(inputs), c, ff, heads, shared)
        tensors = lambda out: (*out.weights, *out.biases)  # noqa: E731

    def step():
        sum(t.square().mean() for t in tensors(block(inputs))).backward()

    return block, step, sum(p.numel() for p in block.parameters())


def check_same_function(case: str, space: WeightSpace, wb: WeightBatch) -> float:
    """Max abs difference between the reference NPAttention and NFTAttention carrying its
    weights, on the benchmark's inputs."""
    from nfn.common import WeightSpaceFeatures, network_spec_from_wsfeat
    from nfn.layers import NPAttention

    _, c, heads, _ = CASES[case]
    feats = WeightSpaceFeatures(list(wb.weights), list(wb.biases))
    shared = all(layer.filter_size == 1 for layer in space.layers)
    torch.manual_seed(1)
    ref = NPAttention(network_spec_from_wsfeat(feats), c, heads, 0.0, share_projections=shared)
    ours = NFTAttention(space, c, heads)
    renamed = {}
    for key, value in ref.state_dict().items():
        key = key.replace(".linear.", ".").replace("weight_to_qkv", "weight_qkv")
        key = key.replace("bias_to_qkv", "bias_qkv").replace("unproject_weight", "unproject")
        renamed[key] = value
    ours.load_state_dict(renamed)
    if not shared:
        with torch.no_grad():
            for a, b in zip(ref.unproject_weight, ours.unproject, strict=True):
                a.linear.bias.zero_()
                b.bias.zero_()
    with torch.no_grad():
        r, o = ref(feats), ours(wb)
    return max(float((a - b).abs().max()) for a, b in
               zip((*r.weights, *r.biases), o.tensors(), strict=True))


def time_case(case: str, batch: int, repeats: int) -> dict:
    space, wb = make_inputs(case, batch)
    runs = {impl: build(impl, case, space, wb) for impl in ("nfn", "gensight")}
    times: dict[str, list[float]] = {impl: [] for impl in runs}
    for _, step, _ in runs.values():
        step()
        step()
    for _ in range(repeats):
        for impl, (block, step, _) in runs.items():
            block.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            step()
            times[impl].append(time.perf_counter() - t0)
    return {impl: {"seconds": statistics.median(ts), "params": runs[impl][2]}
            for impl, ts in times.items()}


def peak_memory_child(impl: str, case: str, batch: int) -> int:
    import gc

    space, wb = make_inputs(case, batch)
    _, step, _ = build(impl, case, space, wb)
    gc.collect()
    _reset_peak_rss()
    before = _status_kib("VmRSS")
    step()
    return max(0, _status_kib("VmHWM") - before) * 1024


def measure_memory(impl: str, case: str, batch: int) -> int:
    import os
    import subprocess

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, __file__, "--child-memory", impl, case, "--batch",
                          str(batch)], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--child-memory", nargs=2, metavar=("IMPL", "CASE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        impl, case = args.child_memory
        print(json.dumps({"bytes": peak_memory_child(impl, case, args.batch)}))
        return
    try:
        import nfn  # noqa: F401
    except ImportError:
        sys.exit("the reference package is missing: pip install -c constraints/ci.txt "
                 "-e '.[bench-nfn]'")
    print(f"threads={torch.get_num_threads()} batch={args.batch} torch={torch.__version__}")
    header = (f"{'case':<11} {'C':>4} {'nfn ms':>9} {'ours ms':>9} {'speedup':>8} "
              f"{'nfn MiB':>8} {'ours MiB':>9} {'mem ratio':>9} {'params':>10} "
              f"{'max |diff|':>10}")
    print(header)
    print("-" * len(header))
    for case in args.cases.split(","):
        space, wb = make_inputs(case, min(args.batch, 4))
        diff = check_same_function(case, space, wb)
        t = time_case(case, args.batch, args.repeats)
        mem = {impl: measure_memory(impl, case, args.batch) for impl in ("nfn", "gensight")}
        ref_ms, our_ms = 1e3 * t["nfn"]["seconds"], 1e3 * t["gensight"]["seconds"]
        assert t["nfn"]["params"] == t["gensight"]["params"], t
        print(f"{case:<11} {CASES[case][1]:>4} {ref_ms:>9.2f} {our_ms:>9.2f} "
              f"{ref_ms / our_ms:>7.2f}x {mem['nfn'] / 2**20:>8.1f} "
              f"{mem['gensight'] / 2**20:>9.1f} {mem['gensight'] / max(mem['nfn'], 1):>9.2f} "
              f"{t['gensight']['params']:>10,} {diff:>10.1e}")
    print("speedup = nfn time / ours (one block, forward + backward, median); mem ratio = ours "
          "/ nfn peak memory of one step above the state before it; max |diff| = attention "
          "outputs of the two implementations with the same weights")


if __name__ == "__main__":
    main()
