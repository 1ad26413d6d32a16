"""Cost of the zoo store's integrity checks: loading weights with and without verification.

    python benchmarks/bench_store.py [--members 1024] [--shard-size 64] [--repeats 5]

Writes a synthetic zoo of Small-CNN-Zoo-shaped members (Conv 1->16->16->16, Linear 16->10,
4,970 parameters; two checkpoints; float16 logits on three 1,000-example sets, as
``store_logits`` keeps them) with the store's own ``write_shard``, then times, in one process
and alternating:

- ``safetensors.torch.load_file`` of every shard (the raw read, for scale);
- baseline: ``Zoo.open(verify=False).weights`` of every member's final checkpoint (reads each
  shard once, checks each row's member id, stacks a ``WeightBatch``);
- gensight's default: the same with ``verify=True``, which also checks each shard's SHA-256
  and its table's hash;
- ``verify_zoo``: every shard, the index and the manifest.

Prints the medians and their ratios to the baseline.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from gensight.weightspace import WeightSpace
from gensight.zoo import ZooSpec, plan_shards, verify_zoo
from gensight.zoo.build import _write_manifest
from gensight.zoo.store import Zoo, shard_paths, write_shard, write_shard_index
from gensight.zoo.train import init_member


def synthetic_zoo(root: Path, members: int, shard_size: int) -> None:
    from gensight.data import load_dataset

    spec = ZooSpec.from_dict({
        "name": "bench-store", "dataset": "mnist1d", "seed": 0, "mode": "grid",
        "seeds_per_config": members, "shard_size": shard_size, "checkpoints": [0, "final"],
        "architecture": {"family": "cnn", "channels": [16, 16, 16]},
        "hparams": {"epochs": [1]},
    })
    data = load_dataset(spec.dataset)
    space = WeightSpace.from_module(init_member(spec.members()[0], spec.architecture, data))
    plans = plan_shards(spec)
    root.mkdir(parents=True)
    _write_manifest(root, spec, space, len(plans))
    gen = torch.Generator().manual_seed(0)
    shards = {}
    for plan in plans:
        n = len(plan.members)
        tensors = {}
        for epoch in (0, 1):
            for layer in space.layers:
                tensors[f"e{epoch}/{layer.weight_key}"] = torch.randn(
                    n, *layer.weight_shape, generator=gen)
                tensors[f"e{epoch}/{layer.bias_key}"] = torch.randn(n, layer.n_out,
                                                                    generator=gen)
            for name in ("val", "test", "shift-3"):
                tensors[f"logits/e{epoch}/{name}"] = torch.randn(
                    n, 1000, 10, generator=gen).half()
        rows = pd.DataFrame([{"member_id": m.member_id, "epoch": e, "is_final": e == 1,
                              "finite": True, "shard": plan.index, "shard_pos": pos,
                              "test_acc": 0.5}
                             for e in (0, 1) for pos, m in enumerate(plan.members)])
        meta = {"member_ids": [m.member_id for m in plan.members], "checkpoints": [0, 1]}
        shards[plan.index] = write_shard(root, plan.index, tensors, rows, meta)
    write_shard_index(root, shards)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1024)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from safetensors.torch import load_file

    tmp = Path(tempfile.mkdtemp())
    try:
        root = tmp / "zoo"
        synthetic_zoo(root, args.members, args.shard_size)
        zoo = Zoo.open(root)
        final = zoo.table.query("is_final")
        n_shards = zoo.manifest["n_shards"]
        size = sum(shard_paths(root, i)[0].stat().st_size for i in range(n_shards))
        times: dict[str, list[float]] = {"load_file": [], "weights, no verify": [],
                                         "weights, verify": [], "verify_zoo": []}
        for _ in range(args.repeats + 1):  # the first round warms the page cache
            start = time.perf_counter()
            for i in range(n_shards):
                load_file(shard_paths(root, i)[0])
            times["load_file"].append(time.perf_counter() - start)
            for verify in (False, True):
                start = time.perf_counter()
                Zoo.open(root, verify=verify).weights(final)
                times[f"weights, {'' if verify else 'no '}verify"].append(
                    time.perf_counter() - start)
            start = time.perf_counter()
            assert verify_zoo(root).ok
            times["verify_zoo"].append(time.perf_counter() - start)
        med = {k: statistics.median(v[1:]) for k, v in times.items()}
        print(f"{args.members} members in {n_shards} shards, {size / 1e6:.1f} MB of tensors "
              f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
        base = med["weights, no verify"]
        for k, v in med.items():
            print(f"  {k:20s} {1000 * v:8.1f} ms   {size / v / 1e9:5.2f} GB/s   "
                  f"{v / base:5.2f}x baseline")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
