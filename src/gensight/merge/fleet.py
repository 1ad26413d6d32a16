"""FLEET-MERGE's distributed loop: local training, align-and-average rounds, broadcast.

FLEET-MERGE (Wang et al., "Robot Fleet Learning via Policy Merging", arXiv 2310.01362):
each of N members trains on its own data only; every round the members' weights are sent to a
server, aligned to a common reference (hidden-unit permutations, recurrent weights
permuted on both axes), averaged, and the merged weights are broadcast back as every member's
starting point for the next round. Only weights travel, never data. Naive averaging
(FedAvg-style, no alignment) is the same loop with ``align=False``.

Here a member's "task" is a labelled dataset (:class:`Task`), the CPU-sized stand-in for the
paper's Meta-World tasks. :func:`train_members` trains all members at once as one population:
their parameters are stacked ``(N, ...)`` and one ``torch.func.vmap`` of
``torch.func.functional_call`` computes every member's loss on its own minibatch; Adam is
elementwise, so one ``torch.optim.Adam`` over the stacked tensors is N independent Adams (the
same updates as training each member alone, tested). With ``ray=True`` each member trains in
its own Ray task instead (local mode unless Ray is already connected to a cluster).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from gensight.errors import GensightError
from gensight.merge.align import check_models
from gensight.merge.merge import _check_merge_args, _load, average, evaluate, merge


@dataclass(frozen=True)
class Task:
    """One member's data: ``x_*: (n, *input)``, ``y_*: (n,)`` int64. ``classes``: the task's
    label set; accuracy on the task is measured with the logits restricted to it (None: all
    classes)."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if len(x) == 0 or len(x) != len(y):
                raise GensightError(f"task {self.name!r}: x_{split} has {len(x)} examples and "
                                    f"y_{split} {len(y)}; expected the same positive number")
        if self.classes is not None:
            if not self.classes:
                raise GensightError(f"task {self.name!r}: classes is empty; give its labels "
                                    "or None for all classes")
            for split in ("train", "test"):
                y = getattr(self, f"y_{split}")
                outside = sorted(set(y.unique().tolist()) - set(self.classes))
                if outside:
                    raise GensightError(f"task {self.name!r} has {split} labels {outside} "
                                        f"outside its classes {tuple(self.classes)}")


def label_subset_tasks(dataset, subsets: Sequence[Sequence[int]]) -> list[Task]:
    """One task per label subset of a :class:`~gensight.data.Dataset`: its train and test
    examples with those labels (test split), named ``"labels 0,1,2"``."""
    tasks = []
    for subset in subsets:
        labels = tuple(int(c) for c in subset)
        bad = [c for c in labels if not 0 <= c < dataset.n_classes]
        if not labels or bad:
            raise GensightError(f"label subset {list(subset)} is empty or has labels outside "
                                f"0..{dataset.n_classes - 1}")
        lab = torch.tensor(labels)
        tr = torch.isin(dataset.y_train, lab)
        te = torch.isin(dataset.y_test, lab)
        tasks.append(Task("labels " + ",".join(map(str, labels)), dataset.x_train[tr],
                          dataset.y_train[tr], dataset.x_test[te], dataset.y_test[te], labels))
    return tasks


def pooled_task(tasks: Sequence[Task], name: str = "pooled") -> Task:
    """All tasks' training data in one task (the joint-training baseline); its test set is
    the union of theirs, its classes the union of their classes (None if any is None)."""
    if not tasks:
        raise GensightError("no tasks to pool")
    classes = None if any(t.classes is None for t in tasks) else \
        tuple(sorted({c for t in tasks for c in t.classes}))
    return Task(name, torch.cat([t.x_train for t in tasks]), torch.cat([t.y_train for t in tasks]),
                torch.cat([t.x_test for t in tasks]), torch.cat([t.y_test for t in tasks]),
                classes)


def alignment_inputs(pooled: Task, n: int = 256, seed: int = 0) -> Tensor:
    """``n`` training inputs drawn without replacement (seeded) from the pooled task, so
    activation matching sees every task's inputs (``pooled_task`` concatenates the tasks in
    order; its first ``n`` rows would be the first task's only). All of them if fewer."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(pooled.x_train), generator=g)[:n]
    return pooled.x_train[idx.to(pooled.x_train.device)]


def _index_stream(n: int, count: int, seed: Sequence[int]) -> Tensor:
    """``count`` example indices: seeded random permutations of ``range(n)``, one after
    another (epochs)."""
    rng = np.random.default_rng(list(seed))
    parts, total = [], 0
    while total < count:
        parts.append(rng.permutation(n))
        total += n
    return torch.from_numpy(np.concatenate(parts)[:count])


def _class_masks(models: Sequence[nn.Module], tasks: Sequence[Task]) -> Tensor:
    """``(N, C)`` additive logit masks: 0 on member i's task classes, -inf elsewhere (0
    everywhere for a task without ``classes``), in the logits' dtype and device. ``C`` is
    read from one forward pass of a copy of ``models[0]`` in eval mode (no running statistics
    move, no random numbers are drawn)."""
    with torch.no_grad():
        out = copy.deepcopy(models[0]).eval()(tasks[0].x_train[:1])
    n_out = out.shape[-1]
    masks = torch.zeros(len(tasks), n_out, dtype=out.dtype, device=out.device)
    for i, t in enumerate(tasks):
        if t.classes is not None:
            bad = [c for c in t.classes if not 0 <= c < n_out]
            if bad:
                raise GensightError(f"task {t.name!r} has classes {bad} outside the network's "
                                    f"{n_out} outputs")
            masks[i] = float("-inf")
            masks[i, list(t.classes)] = 0.0
    return masks


def _train_stack(models: Sequence[nn.Module], tasks: Sequence[Task], steps: int, lr: float,
                 batch_size: int, seeds: Sequence[Sequence[int]],
                 masks: Tensor | None = None) -> list[nn.Module]:
    """``masks``: the members' :func:`_class_masks` rows (restricted loss), or None."""
    base = copy.deepcopy(models[0])
    base.train()
    names = [k for k, _ in base.named_parameters()]
    member_params = [dict(m.named_parameters()) for m in models]
    stacked = {k: torch.stack([p[k].detach() for p in member_params]).clone().requires_grad_()
               for k in names}
    opt = torch.optim.Adam(list(stacked.values()), lr=lr)
    streams = [_index_stream(len(t.y_train), steps * batch_size, s)
               for t, s in zip(tasks, seeds, strict=True)]

    if masks is not None:
        extra = (masks,)

        def member_loss(p: dict[str, Tensor], xb: Tensor, yb: Tensor, mask: Tensor) -> Tensor:
            return F.cross_entropy(functional_call(base, p, (xb,)) + mask, yb)
    else:  # no mask operand at all: the plain loss stays exactly what it was
        extra = ()

        def member_loss(p: dict[str, Tensor], xb: Tensor, yb: Tensor) -> Tensor:
            return F.cross_entropy(functional_call(base, p, (xb,)), yb)

    losses = vmap(member_loss, randomness="different")
    for s in range(steps):
        sl = slice(s * batch_size, (s + 1) * batch_size)
        xb = torch.stack([t.x_train[ix[sl]] for t, ix in zip(tasks, streams, strict=True)])
        yb = torch.stack([t.y_train[ix[sl]] for t, ix in zip(tasks, streams, strict=True)])
        opt.zero_grad()
        losses(stacked, xb, yb, *extra).sum().backward()  # members' grads are independent
        opt.step()
    return [_load(models[0], {k: v[i].detach() for k, v in stacked.items()}).eval()
            for i in range(len(models))]


def _ray_train_one(model: nn.Module, task: Task, steps: int, lr: float, batch_size: int,
                   seed: Sequence[int], mask: Tensor | None) -> nn.Module:
    torch.set_num_threads(1)
    return _train_stack([model], [task], steps, lr, batch_size, [seed], mask)[0]


def train_members(models: Sequence[nn.Module], tasks: Sequence[Task], *, steps: int,
                  lr: float = 1e-2, batch_size: int = 32, seed: int = 0,
                  ray: bool = False, restrict: bool = False) -> list[nn.Module]:
    """Train member i on ``tasks[i]`` for ``steps`` Adam steps of ``batch_size`` examples
    (cross-entropy; data order from ``seed`` and i), all members together (see the module
    docstring); returns trained copies in eval mode. ``ray=True``: one Ray task per member.
    ``restrict=True``: each member's cross-entropy is over its own task's ``classes`` only
    (the other logits are masked out), the way its accuracy is measured; a member then
    never pushes down the outputs of classes it has not seen, which other members need.

    Raises:
        GensightError: unequal numbers of models and tasks, non-positive sizes, or (with
            ``restrict``) a task's classes outside the network's outputs; all before any
            training.
    """
    models = list(models)
    check_models(models, "member")
    if len(tasks) != len(models):
        raise GensightError(f"{len(models)} members but {len(tasks)} tasks; expected one task "
                            "per member")
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        if not isinstance(v, int | np.integer) or v < 1:
            raise GensightError(f"{name} must be a positive integer; got {v!r}")
    if not lr > 0:
        raise GensightError(f"lr must be positive; got {lr!r}")
    # built (and every task's classes checked) here, before any work and not in Ray workers
    masks = _class_masks(models, tasks) if restrict else None
    seeds = [(seed, i) for i in range(len(models))]
    if not ray:
        return _train_stack(models, tasks, steps, lr, batch_size, seeds, masks)
    try:
        import ray as ray_mod
    except ImportError:
        raise GensightError("ray=True needs Ray: pip install 'gensight[ray]'") from None
    started = not ray_mod.is_initialized()
    if started:
        ray_mod.init(include_dashboard=False, log_to_driver=False)
    try:
        remote = ray_mod.remote(num_cpus=1)(_ray_train_one)
        refs = [remote.remote(m, t, steps, lr, batch_size, s,
                              None if masks is None else masks[i:i + 1])
                for i, (m, t, s) in enumerate(zip(models, tasks, seeds, strict=True))]
        return ray_mod.get(refs)
    finally:
        if started:
            ray_mod.shutdown()


def task_accuracy(model: nn.Module, task: Task) -> float:
    """Accuracy on the task's test set, logits restricted to its classes."""
    return evaluate(model, task.x_test, task.y_test, task.classes)[1]


@dataclass
class FleetResult:
    """``merged``: the final merged network; ``members``: the members after their last local
    training (before the last merge); ``history``: per round, the merged network's accuracy
    on each task and their mean (columns ``round``, ``task``, ``acc``)."""

    merged: nn.Module
    members: list[nn.Module]
    history: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def fleet_merge(models: Sequence[nn.Module], tasks: Sequence[Task], *, rounds: int = 3,
                local_steps: int = 100, lr: float = 1e-2, batch_size: int = 32,
                method: str = "weight", align: bool = True, reference: int | str = 0,
                x: Tensor | None = None, seed: int = 0, ray: bool = False,
                common_init: bool = False, restrict: bool = False) -> FleetResult:
    """Run FLEET-MERGE (arXiv 2310.01362) for ``rounds`` rounds.

    Each round: every member trains ``local_steps`` steps on its own task
    (:func:`train_members`, starting from its own initialization in round 1 and from the
    broadcast merged weights later); then the members are aligned to a common reference by
    ``method`` (``"weight"``, or ``"activation"`` on the shared inputs ``x``) and averaged
    (:func:`~gensight.merge.merge`). The reference is the members' common starting point:
    the merged network broadcast at the start of the round, and in round 1 the common
    initialization (``common_init=True``, which broadcasts ``models[0]`` before round 1).
    When every member starts from its own initialization (the default), round 1 has no
    common start and aligns to ``reference`` (a member index or ``"average"``; checked, but
    not used, with ``common_init=True``). With ``align=False`` the members are averaged as
    they are (naive averaging, FedAvg). The merged weights are broadcast to all members.
    ``restrict``: local training over each task's own classes (:func:`train_members`).

    Raises:
        GensightError: bad ``method``, ``reference`` or ``x`` (as :func:`merge`), checked
            before any local training; and as :func:`train_members`.
    """
    models = list(models)
    if len(tasks) != len(models):
        raise GensightError(f"{len(models)} members but {len(tasks)} tasks; expected one task "
                            "per member")
    if not isinstance(rounds, int) or rounds < 1:
        raise GensightError(f"rounds must be a positive integer; got {rounds!r}")
    _check_merge_args(len(models), method, x, reference)  # before any local training
    if isinstance(reference, nn.Module):
        check_models([*models, reference], "member")
    rows = []
    members = [copy.deepcopy(models[0]) for _ in models] if common_init else models
    merged = models[0]
    for r in range(1, rounds + 1):
        members = train_members(members, tasks, steps=local_steps, lr=lr,
                                batch_size=batch_size, seed=seed * 1000 + r, ray=ray,
                                restrict=restrict)
        if align:  # to the members' common starting point; round 1 from own inits: reference
            ref = reference if r == 1 and not common_init else merged
            merged = merge(members, method=method, x=x, reference=ref, seed=seed).model
        else:
            merged = average(members)
        for t in tasks:
            rows.append({"round": r, "task": t.name, "acc": task_accuracy(merged, t)})
        if r < rounds:
            members = [copy.deepcopy(merged) for _ in models]
    return FleetResult(merged.eval(), members, pd.DataFrame(rows))


def ensemble_accuracy(models: Sequence[nn.Module], task: Task) -> float:
    """Accuracy of the mean of the models' softmax outputs (restricted to the task's
    classes)."""
    with torch.no_grad():
        probs = torch.stack([F.softmax(m.eval()(task.x_test), 1) for m in models]).mean(0)
    y = task.y_test
    if task.classes is not None:
        cls = torch.as_tensor(task.classes)
        probs = probs[:, cls]
        y = (y[:, None] == cls[None]).int().argmax(1)
    return float((probs.argmax(1) == y).float().mean())


def compare_merges(members: Sequence[nn.Module], tasks: Sequence[Task],
                   merged: Mapping[str, nn.Module], *, joint: nn.Module | None = None
                   ) -> pd.DataFrame:
    """Accuracy on each member's task (rows; last row ``"mean"``): ``member alone`` (member i
    on task i), every network in ``merged`` (e.g. ``{"fleet-merge": ..., "naive average":
    ...}``), the ensemble of all members and, if given, the ``joint`` network trained on the
    pooled data. Accuracy is on each task's test set with the logits restricted to its
    classes."""
    if len(members) != len(tasks):
        raise GensightError(f"{len(members)} members but {len(tasks)} tasks")
    rows = []
    for m, t in zip(members, tasks, strict=True):
        row = {"task": t.name, "member alone": task_accuracy(m, t)}
        for name, net in merged.items():
            row[name] = task_accuracy(net, t)
        row["ensemble"] = ensemble_accuracy(members, t)
        if joint is not None:
            row["joint training"] = task_accuracy(joint, t)
        rows.append(row)
    table = pd.DataFrame(rows)
    mean = table.drop(columns="task").mean().to_dict()
    return pd.concat([table, pd.DataFrame([{"task": "mean", **mean}])], ignore_index=True)


__all__ = [
    "FleetResult",
    "Task",
    "alignment_inputs",
    "compare_merges",
    "ensemble_accuracy",
    "fleet_merge",
    "label_subset_tasks",
    "pooled_task",
    "task_accuracy",
    "train_members",
]
