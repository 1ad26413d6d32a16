"""FLEET-MERGE on a CPU-sized fleet, and the loss barrier before/after alignment.

    python benchmarks/bench_merge.py [--members 10] [--rounds 5] [--steps 40] [--quick]
        [--plain-loss]

1. Fleet experiment (the CPU-sized stand-in for FLEET-MERGE's 50 Meta-World tasks, arXiv
   2310.01362): K members, each trained only on its own task, a random subset of 3 of
   the 10 digit classes (``digits``, seeded). Two architectures: an MLP 64-128-128-10 and a
   GRU sequence classifier (the 8x8 image read row by row: 8 steps of 8 features, 64 hidden
   units, linear readout). Every member trains ``rounds * steps`` Adam steps (lr 3e-3,
   batch 32) in total, on the cross-entropy of its own task's 3 logits (``restrict=True``:
   a member never pushes down the outputs of classes it has not seen, as a policy trained
   on its own task knows nothing of the others' actions; ``--plain-loss``: 10-way
   cross-entropy, as before). Accuracy on each member's task (test split, logits restricted
   to the task's 3 classes, so chance is 1/3), averaged over the K tasks, of:

   - each member alone on its own task (no communication);
   - one-shot merging of the members (no communication during training): FLEET-MERGE's
     alignment by weight matching to member 0, to the others' average (MergeMany),
     activation matching on 256 random pooled training inputs (shares inputs, which a fleet
     would not), and naive averaging;
   - the ensemble of all members (mean softmax; K times the compute);
   - ``rounds`` rounds of ``steps`` local steps with align-and-average + broadcast after each
     (FLEET-MERGE) vs the same loop with naive averaging (FedAvg), from independent inits;
   - the same two loops from one common initialization (member 0's, broadcast first);
   - one network trained on the pooled data of all tasks for the same number of steps.

   For the MLP it also prints the share of dead hidden units (ReLU output 0 on every pooled
   training input) of the members, of the round-1 merges and of the final fleet merges.

2. Loss barrier (Git Re-Basin, arXiv 2209.04836): two members of a gensight zoo that
   differ only in their seed (digits MLPs 64-128-128-10 and CNNs 16-32 channels, Adam, built
   with ``build_zoo``), the max test loss above the straight line between the endpoints along
   the linear path, before and after weight matching and activation matching.

Everything runs on one thread; the default run takes a few minutes.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from gensight.data import load_dataset
from gensight.merge import (
    RecurrentClassifier,
    align,
    alignment_inputs,
    average,
    compare_merges,
    fleet_merge,
    label_subset_tasks,
    linear_path,
    merge,
    pooled_task,
    train_members,
)


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128),
                         nn.ReLU(), nn.Linear(128, 10))


def _gru(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return RecurrentClassifier(8, 64, 10, "gru")


def dead_units(model: nn.Module, x: Tensor) -> list[float]:
    """Per ReLU layer of ``model``, the share of hidden units whose output is 0 on every
    input of ``x`` (units that no longer receive a gradient from these inputs)."""
    outs: list[Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: outs.append(o))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return [float((o.flatten(1).amax(0) <= 0).float().mean()) for o in outs]


def fleet(name: str, factory, k: int, rounds: int, steps: int, lr: float,
          restrict: bool = True) -> pd.DataFrame:
    data = load_dataset("digits")
    rng = np.random.default_rng(0)
    subsets = [sorted(rng.choice(10, 3, replace=False).tolist()) for _ in range(k)]
    tasks = label_subset_tasks(data, subsets)
    pooled = pooled_task(tasks)
    inits = [factory(s) for s in range(k)]
    t0 = time.perf_counter()
    members = train_members(inits, tasks, steps=rounds * steps, lr=lr, restrict=restrict)
    x = alignment_inputs(pooled)  # 256 seeded random pooled inputs, every task's
    one_shot = {
        "one-shot FLEET-MERGE (weight, ref 0)": merge(members).model,
        "one-shot weight, ref average": merge(members, reference="average").model,
        "one-shot activation, ref 0": merge(members, method="activation", x=x).model,
        "one-shot naive average": average(members),
    }
    fm = fleet_merge(inits, tasks, rounds=rounds, local_steps=steps, lr=lr,
                     restrict=restrict)
    naive = fleet_merge(inits, tasks, rounds=rounds, local_steps=steps, lr=lr, align=False,
                        restrict=restrict)
    fm_common = fleet_merge(inits, tasks, rounds=rounds, local_steps=steps, lr=lr,
                            common_init=True, restrict=restrict)
    naive_common = fleet_merge(inits, tasks, rounds=rounds, local_steps=steps, lr=lr,
                               align=False, common_init=True, restrict=restrict)
    joint = train_members([factory(10_000)], [pooled], steps=rounds * steps, lr=lr,
                          restrict=restrict)[0]
    table = compare_merges(members, tasks, {
        **one_shot, f"{rounds} rounds FLEET-MERGE": fm.merged,
        f"{rounds} rounds naive average": naive.merged,
        f"{rounds} rounds FLEET-MERGE, common init": fm_common.merged,
        f"{rounds} rounds naive average, common init": naive_common.merged}, joint=joint)
    mean = table.iloc[-1].drop("task")
    curves = pd.DataFrame({
        "FLEET-MERGE": fm.history.groupby("round")["acc"].mean(),
        "naive average": naive.history.groupby("round")["acc"].mean()})
    loss = "own-logit loss" if restrict else "10-way loss"
    print(f"\n## Fleet: {k} {name}s on digits label subsets ({rounds} x {steps} steps, {loss}, "
          f"{time.perf_counter() - t0:.0f} s)\n")
    print("| method | mean accuracy over tasks |\n|---|---|")
    for method, acc in mean.items():
        print(f"| {method} | {acc:.3f} |")
    if any(isinstance(m, nn.ReLU) for m in inits[0].modules()):
        # a round-1 merge is the starting point of every later round: units dead on all
        # tasks' inputs there get no gradient in any member's local training
        first = train_members(inits, tasks, steps=steps, lr=lr, seed=1, restrict=restrict)
        dead = {"members after one local phase (mean)":
                np.mean([dead_units(m, pooled.x_train) for m in first], axis=0).tolist(),
                "round-1 FLEET-MERGE": dead_units(merge(first).model, pooled.x_train),
                "round-1 naive average": dead_units(average(first), pooled.x_train),
                f"{rounds} rounds FLEET-MERGE": dead_units(fm.merged, pooled.x_train),
                f"{rounds} rounds naive average": dead_units(naive.merged, pooled.x_train)}
        print("\nshare of dead hidden units (ReLU output 0 on every pooled training input), "
              "per hidden layer:\n")
        print("| network | " + " | ".join(f"layer {i + 1}" for i in
                                         range(len(dead["round-1 naive average"]))) +
              " |\n|---|" + "---|" * len(dead["round-1 naive average"]))
        for label, shares in dead.items():
            print(f"| {label} | " + " | ".join(f"{v:.2f}" for v in shares) + " |")
    print("\nmerged accuracy after each round (mean over tasks):\n")
    print("| round | FLEET-MERGE | naive average |\n|---|---|---|")
    for r, row in curves.iterrows():
        print(f"| {r} | {row['FLEET-MERGE']:.3f} | {row['naive average']:.3f} |")
    return mean.rename(name)


def barrier(family: str, arch: dict, epochs: int) -> dict:
    from gensight.zoo import ZooSpec, build_zoo

    spec = ZooSpec.from_dict({
        "name": f"bench-merge-{family}", "dataset": "digits", "seed": 0, "mode": "grid",
        "seeds_per_config": 2, "checkpoints": ["final"], "architecture": arch,
        "hparams": {"optimizer": ["adam"], "lr": [3e-3], "epochs": [epochs],
                    "batch_size": [32]}})
    with tempfile.TemporaryDirectory() as tmp:
        zoo = build_zoo(spec, f"{tmp}/zoo")
        rows = zoo.table.query("is_final")
        a, b = zoo.modules(rows)
    data = load_dataset("digits")
    x, y = data.x_test, data.y_test
    out = {"network": family}
    for label, other in (("before", b), ("weight matching", align(a, b)),
                         ("activation matching", align(a, b, method="activation",
                                                       x=data.x_train[:512]))):
        path = linear_path(a, other, x, y, points=11)
        out[f"barrier {label}"] = path["barrier"].max()
        out[f"acc at alpha=0.5, {label}"] = path["acc"].iloc[5]
    out["endpoint acc"] = f"{path['acc'].iloc[0]:.3f} / {path['acc'].iloc[-1]:.3f}"
    return out


def markdown(frame: pd.DataFrame, index: bool = True) -> str:
    """A Markdown table (floats with 3 decimals), without the optional tabulate package."""
    frame = frame.reset_index() if index else frame
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |",
             "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(
        index=False)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--quick", action="store_true", help="4 members, 2 x 20 steps")
    parser.add_argument("--plain-loss", action="store_true",
                        help="members train on 10-way cross-entropy, not their own classes'")
    args = parser.parse_args()
    if args.quick:
        args.members, args.rounds, args.steps = 4, 2, 20
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    restrict = not args.plain_loss
    means = [fleet("MLP", _mlp, args.members, args.rounds, args.steps, args.lr, restrict),
             fleet("GRU", _gru, args.members, args.rounds, args.steps, args.lr, restrict)]
    print("\n## Summary: mean accuracy over tasks\n")
    print(markdown(pd.concat(means, axis=1).rename_axis("method")))
    epochs = 3 if args.quick else 20
    rows = [barrier("MLP 64-128-128-10", {"family": "mlp", "hidden": [128, 128]}, epochs),
            barrier("CNN 16-32 (3x3, GAP)", {"family": "cnn", "channels": [16, 32],
                                            "kernel_size": 3}, epochs)]
    print(f"\n## Loss barrier between two zoo members (seeds 0, 1; {epochs} epochs)\n")
    print(markdown(pd.DataFrame(rows), index=False))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
