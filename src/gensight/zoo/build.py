"""Build a zoo from a spec into a directory, shard by shard, resumably.

Classifier zoos (``mlp``, ``cnn``) train each shard as one population
(:func:`~gensight.zoo.train.train_population`). SIREN zoos (``family = "siren"``) fit each
shard's members with one :func:`~gensight.zoo.siren.fit_sirens` call; a shard stores their
final weights under ``e{steps}/{state-dict key}`` (``steps`` = the spec's step budget, one
checkpoint, ``is_final`` true) and one row per member: ``member_id``, ``image_id`` (position
in the zoo's image order), ``split``, ``image_index`` (index within that split), ``label``,
``fit_index``, ``seed``, ``epoch``, ``is_final``, ``finite``, ``shard``, ``shard_pos``,
``steps_used``, ``mse`` and ``psnr`` (dB, of the stored weights on the image in [-1, 1]).
GRU and residual-CNN zoos (``family = "gru"`` / ``"rescnn"``, :mod:`gensight.zoo.families`)
train each shard with :func:`~gensight.zoo.families.train_param_population` and store a
:class:`~gensight.weightspace.ParamSpace` in the manifest; their rows are a classifier zoo's
(a GRU's ``*_acc`` columns are success rates: exact answers).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

import gensight
from gensight.data import Dataset, apply_shift, load_dataset
from gensight.errors import GensightError
from gensight.weightspace import ParamSpace, WeightSpace
from gensight.zoo.siren import fit_sirens, siren_space
from gensight.zoo.spec import (
    PARAM_FAMILIES,
    SIREN_DATASETS,
    SPLITS,
    STRUCTURAL,
    Member,
    ZooSpec,
    dataset_shape,
)
from gensight.zoo.store import (
    FORMAT,
    FORMAT_VERSION,
    ShardRows,
    Zoo,
    ZooStoreError,
    atomic_write_bytes,
    check_shards,
    is_leftover,
    quarantine_shard,
    read_index,
    read_manifest,
    read_shard_rows,
    remove_temporaries,
    write_shard,
    write_shard_index,
    zoo_lock,
)
from gensight.zoo.train import (
    Population,
    evaluate,
    init_member,
    member_states,
    train_population,
)


@dataclass(frozen=True)
class ShardPlan:
    index: int
    members: tuple[Member, ...]


def plan_shards(spec: ZooSpec) -> list[ShardPlan]:
    """Members grouped by their structural hyperparameters, then cut into shards of at most
    ``spec.shard_size``; the plan depends on the spec only."""
    groups: dict[tuple, list[Member]] = {}
    for member in spec.members():
        groups.setdefault(member.group_key(), []).append(member)
    plans = []
    for key in sorted(groups, key=repr):
        members = groups[key]
        for start in range(0, len(members), spec.shard_size):
            plans.append(ShardPlan(len(plans), tuple(members[start:start + spec.shard_size])))
    return plans


def eval_sets(spec: ZooSpec, dataset: Dataset) -> dict[str, tuple[Tensor, Tensor]]:
    """The shared labeled sets every checkpoint is evaluated on: val, test, and each
    requested shift and severity of the test set (training metrics use each member's own
    training subset)."""
    sets = {"val": (dataset.x_val, dataset.y_val), "test": (dataset.x_test, dataset.y_test)}
    for shift in spec.shifts:
        for severity in spec.severities:
            x = apply_shift(dataset.x_test, shift, severity, seed=spec.seed,
                            value_range=dataset.value_range)
            sets[f"{shift}-{severity}"] = (x, dataset.y_test)
    return sets


@dataclass(frozen=True)
class SirenImages:
    """The images of a SIREN zoo, in the zoo's image order (``x[image_id]``).

    ``x``: ``(N, 1, H, W)`` float32 in [-1, 1] (the dataset's [0, 1] values, average-pooled
    for ``"mnist5k@14"``, then ``2 x - 1``); ``labels``, ``splits`` and ``indices`` (index
    within the split) per image.
    """

    x: Tensor
    labels: Tensor
    splits: tuple[str, ...]
    indices: tuple[int, ...]


def siren_images(spec: ZooSpec) -> SirenImages:
    """The images the members of SIREN zoo ``spec`` fit (``x[member.config_id]``)."""
    order = spec.image_order()
    base, factor = SIREN_DATASETS[spec.dataset]
    data = load_dataset(base)
    per_split = {}
    for split in SPLITS:
        x, y = data.split(split)
        if factor != 1:
            x = F.avg_pool2d(x, factor)
        per_split[split] = (x, y)
    x = torch.stack([per_split[s][0][i] for s, i in order]) * 2 - 1
    labels = torch.stack([per_split[s][1][i] for s, i in order])
    return SirenImages(x.contiguous(), labels, tuple(s for s, _ in order),
                       tuple(i for _, i in order))


BACKENDS = ("local", "ray")


def build_zoo(
    spec: ZooSpec,
    out: str | Path,
    *,
    progress: Callable[[int, int, int], None] | None = None,
    max_shards: int | None = None,
    backend: str = "local",
    ray_address: str | None = None,
    allow_large: bool = False,
    log: Callable[[str], None] | None = None,
) -> Zoo:
    """Build (or resume building) the zoo of ``spec`` in ``out``.

    ``progress(members_done, members_total, steps_done_in_shard)`` is called after every
    optimizer step (local backend) and after every shard. ``max_shards`` stops after that
    many new shards (for tests and incremental builds). ``log`` receives one line per thing a
    resume repaired (a stale index rebuilt, a damaged shard moved to ``ZOO/damaged/``).

    Everything is checked before anything is written: the spec (and its size, unless
    ``allow_large``), the architecture on the dataset, and ``out`` (new, empty, or a zoo of
    this spec). The build holds the zoo's lock; completed shards are verified against their
    content hashes and kept, damaged ones are moved aside and trained again, and the index is
    rewritten from the shards whenever it is stale. A resumed build gives the same zoo, byte
    for byte, as an uninterrupted one.

    ``backend="ray"`` trains the shards as Ray tasks (a local Ray instance, or the cluster at
    ``ray_address``); they write the same store, so ``out`` must be on a filesystem that
    every Ray worker sees.

    Raises:
        SpecError: the spec is too large (pass ``allow_large``).
        ZooStoreError: ``out`` exists and is not a zoo, or is a zoo of another spec.
        ZooLockedError: another process is building into ``out``.
        GensightError: an unknown backend, or Ray is not installed.
    """
    if backend not in BACKENDS:
        raise GensightError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    spec.check_size(allow_large)
    root = Path(out)
    space, build_shard = _shard_builder(root, spec)
    plans = plan_shards(spec)
    _check_root(root, spec)
    root.mkdir(parents=True, exist_ok=True)
    say = log or (lambda line: None)
    with zoo_lock(root):
        _check_root(root, spec)  # again: another build may have started meanwhile
        remove_temporaries(root)  # what a killed build left, the manifest's included
        if not (root / "manifest.json").exists():
            _write_manifest(root, spec, space, len(plans))
        shards = _resume(root, spec, space, plans, say)
        total = sum(len(p.members) for p in plans)
        pending = [p for p in plans if p.index not in shards]
        done = total - sum(len(p.members) for p in pending)
        todo = pending if max_shards is None else pending[:max_shards]
        if backend == "ray":
            _build_with_ray(root, spec, todo, shards, done, total, progress, ray_address)
        else:
            for plan in todo:
                steps = [0]

                def on_step(steps=steps, done=done):
                    steps[0] += 1
                    if progress is not None:
                        progress(done, total, steps[0])

                shards[plan.index] = build_shard(plan, on_step)
                done += len(plan.members)
                write_shard_index(root, shards)
                if progress is not None:
                    progress(done, total, 0)
    return Zoo.open(root)


ShardBuilder = Callable[[ShardPlan, Callable[[], None]], ShardRows]


def _shard_builder(root: Path, spec: ZooSpec
                   ) -> tuple[WeightSpace | ParamSpace, ShardBuilder]:
    """The zoo's weight space and a function that builds one shard (loads the data once)."""
    if spec.is_siren:
        images = siren_images(spec)
        return siren_space(spec.architecture.hidden), (
            lambda plan, on_step: _build_siren_shard(root, spec, plan, images, on_step))
    dataset = load_dataset(spec.dataset)
    sets: list[dict[str, tuple[Tensor, Tensor]]] = []  # computed once, when first needed
    if spec.architecture.family in PARAM_FAMILIES:
        from gensight.zoo.families import build_template

        act = spec.members()[0].hparams["activation"]
        space = ParamSpace.from_module(build_template(spec.architecture, dataset.input_shape,
                                                      dataset.n_classes, act))

        def build_param(plan: ShardPlan, on_step: Callable[[], None]) -> ShardRows:
            if not sets:
                sets.append(eval_sets(spec, dataset))
            return _build_param_shard(root, spec, plan, dataset, sets[0], on_step)

        return space, build_param
    template = init_member(spec.members()[0], spec.architecture, dataset)

    def build(plan: ShardPlan, on_step: Callable[[], None]) -> ShardRows:
        if not sets:
            sets.append(eval_sets(spec, dataset))
        return _build_shard(root, spec, plan, dataset, sets[0], on_step)

    return WeightSpace.from_module(template), build


def _check_root(root: Path, spec: ZooSpec) -> None:
    """Refuse ``root`` unless it is absent, empty (but for what a killed build leaves) or a
    zoo of ``spec``; writes nothing."""
    if not root.exists():
        return
    if not root.is_dir():
        raise ZooStoreError(f"{str(root)!r} exists and is not a directory")
    names = sorted(n for n in os.listdir(root) if not is_leftover(n))
    if "manifest.json" in names:
        existing = read_manifest(root)
        if existing["spec_hash"] != spec.content_hash():
            raise ZooStoreError(
                f"{str(root)!r} holds a zoo of another spec (hash {existing['spec_hash']} vs "
                f"{spec.content_hash()}); choose another --out directory or delete it")
        if existing.get("shift_fingerprint") != spec.shift_fingerprint():
            raise ZooStoreError(
                f"{str(root)!r} was started with shifts that this gensight computes "
                "differently (shift_fingerprint differs): resuming would mix two versions of "
                "its shifted test sets; build into another --out directory")
    elif names:
        raise ZooStoreError(f"{str(root)!r} is not a gensight zoo: it has no manifest.json and "
                            f"holds {len(names)} other file(s), e.g. {names[0]!r}; choose a new "
                            "or empty --out directory")


def _resume(root: Path, spec: ZooSpec, space: WeightSpace | ParamSpace, plans: list[ShardPlan],
            say: Callable[[str], None]) -> dict[int, ShardRows]:
    """Verify the completed shards (moving damaged ones aside) and bring the index up to
    date with them. Returns the intact shards."""
    shards, damaged, _ = check_shards(root, spec, space, plans)
    for i, why in damaged.items():
        moved = quarantine_shard(root, i)
        say(f"{why}; moved to {moved[0].parent if moved else '?'} and training it again")
    index = read_index(root, len(plans))
    if index.rebuilt is not None or index.shard_hashes != {
            i: s.rows_sha256 for i, s in shards.items()}:
        if index.rebuilt is not None and shards:
            say(f"{index.rebuilt}: rebuilt from the {len(shards)} complete shard(s)")
        write_shard_index(root, shards)
    return shards


def _build_with_ray(root: Path, spec: ZooSpec, todo: list[ShardPlan],
                    shards: dict[int, ShardRows], done: int, total: int,
                    progress: Callable[[int, int, int], None] | None,
                    address: str | None) -> None:
    try:
        import ray
    except ImportError:
        raise GensightError("the ray backend needs Ray: pip install 'gensight[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1)(_ray_shard_task)
        source = spec.to_dict()
        pending = {task.remote(str(root), source, plan.index): plan for plan in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                index = ray.get(ref)  # re-raises a task's error here
                done += len(pending.pop(ref).members)
                shards[index] = read_shard_rows(root, index)
                write_shard_index(root, shards)
                if progress is not None:
                    progress(done, total, 0)
    finally:
        if started:
            ray.shutdown()


def _ray_shard_task(root: str, source: dict, index: int) -> int:
    """One shard, in a Ray worker: rebuild the plan from the spec and train it."""
    torch.set_num_threads(1)
    spec = ZooSpec.from_dict(source)
    plan = plan_shards(spec)[index]
    _, build_shard = _shard_builder(Path(root), spec)
    build_shard(plan, lambda: None)
    return index


def _write_manifest(root: Path, spec: ZooSpec, space: WeightSpace | ParamSpace,
                    n_shards: int) -> None:
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": spec.name,
        "spec": spec.to_dict(),
        "spec_hash": spec.content_hash(),
        "space": space.to_dict(),
        "n_shards": n_shards,
        "n_members": spec.n_members,
        "shift_fingerprint": spec.shift_fingerprint(),
        **({"siren": {"omega_0": spec.architecture.omega_0,
                      "size": dataset_shape(spec.dataset).spatial[-1]}}
           if spec.is_siren else {}),
        "versions": {"gensight": gensight.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }
    atomic_write_bytes(root / "manifest.json", json.dumps(manifest, indent=2).encode())


def _build_shard(root: Path, spec: ZooSpec, plan: ShardPlan, dataset: Dataset,
                 sets: dict[str, tuple[Tensor, Tensor]], on_step: Callable[[], None]
                 ) -> ShardRows:
    members = plan.members
    epochs = members[0].hparams["epochs"]
    checkpoints = spec.checkpoint_epochs(epochs)
    tensors: dict[str, Tensor] = {}
    rows: list[dict] = []

    # Training metrics are taken on each member's own training subset (train_fraction).
    subsets = torch.stack([s.subset for s in member_states(members, len(dataset.y_train))])
    own_train = (dataset.x_train[subsets], dataset.y_train[subsets])

    def on_checkpoint(epoch: int, pop: Population) -> None:
        batch = pop.to_weight_batch()
        for key, values in zip(batch.space.state_dict_keys(), _state_tensors(batch),
                               strict=True):
            tensors[f"e{epoch}/{key}"] = values.clone()
        results = {"train": evaluate(pop, *own_train)}
        results.update({name: evaluate(pop, x, y, keep_logits=spec.store_logits)
                        for name, (x, y) in sets.items()})
        _record_checkpoint(tensors, rows, plan, epoch, epochs, results, batch.tensors())

    stopped: dict[int, int] = {}  # position -> epoch its training loss reached stop_loss

    def on_stop(epoch: int, positions: list[int]) -> None:
        stopped.update(dict.fromkeys(positions, epoch))

    train_population(members, spec.architecture, dataset, checkpoints, on_checkpoint, on_step,
                     stop_loss=spec.stop_loss, on_stop=on_stop)
    if spec.stop_loss is not None:  # arXiv 1912.02178's rule: record who got there, and when
        for row in rows:
            pos = row["shard_pos"]
            row["converged"] = pos in stopped
            row["epochs_used"] = stopped.get(pos, epochs)
    metadata = {"member_ids": [m.member_id for m in members],
                "checkpoints": list(checkpoints),
                "structural": {k: members[0].hparams[k] for k in STRUCTURAL}}
    return write_shard(root, plan.index, tensors, pd.DataFrame(rows), metadata)


def _record_checkpoint(tensors: dict[str, Tensor], rows: list[dict], plan: ShardPlan,
                       epoch: int, epochs: int, results: dict, params) -> None:
    """A checkpoint of a classifier shard: the evaluations' logits (those kept) into
    ``tensors`` and one row per member into ``rows``: ids, ``finite`` (false: training
    diverged to NaN/inf), the hyperparameters, ``{set}_loss`` / ``{set}_acc`` per evaluated
    set (shifted ones as ``shift:{name}``) and ``gen_gap``."""
    for name, ev in results.items():
        if ev.logits is not None:
            tensors[f"logits/e{epoch}/{name}"] = ev.logits.half()
    finite = torch.stack([torch.isfinite(t.flatten(1)).all(1) for t in params]).all(0)
    for pos, member in enumerate(plan.members):
        row = {
            "member_id": member.member_id, "config_id": member.config_id,
            "seed_index": member.seed_index, "seed": member.seed,
            "epoch": epoch, "is_final": epoch == epochs, "finite": bool(finite[pos]),
            "shard": plan.index, "shard_pos": pos, **member.hparams,
        }
        for name, ev in results.items():
            key = name if name in ("train", "val", "test") else f"shift:{name}"
            row[f"{key}_loss"] = float(ev.loss[pos])
            row[f"{key}_acc"] = float(ev.accuracy[pos])
        row["gen_gap"] = row["train_acc"] - row["test_acc"]
        rows.append(row)


def _build_param_shard(root: Path, spec: ZooSpec, plan: ShardPlan, dataset: Dataset,
                       sets: dict[str, tuple[Tensor, Tensor]], on_step: Callable[[], None]
                       ) -> ShardRows:
    """A shard of a ``gru`` / ``rescnn`` zoo: one population, the classifier zoo's rows (a
    GRU's accuracies are success rates) and tensors ``e{epoch}/{state-dict key}``."""
    from gensight.zoo.families import (
        build_template,
        evaluate_params,
        population_logits,
        train_param_population,
    )

    members = plan.members
    hp0 = members[0].hparams
    epochs = hp0["epochs"]
    checkpoints = spec.checkpoint_epochs(epochs)
    tensors: dict[str, Tensor] = {}
    rows: list[dict] = []
    subsets = torch.stack([s.subset for s in member_states(members, len(dataset.y_train))])
    own_train = (dataset.x_train[subsets], dataset.y_train[subsets])
    forward = population_logits(spec.architecture, build_template(
        spec.architecture, dataset.input_shape, dataset.n_classes, hp0["activation"]))

    def on_checkpoint(epoch: int, params: dict[str, Tensor]) -> None:
        for key, values in params.items():
            tensors[f"e{epoch}/{key}"] = values.clone()
        results = {"train": evaluate_params(forward, params, *own_train, per_member=True)}
        results.update({name: evaluate_params(forward, params, x, y,
                                              keep_logits=spec.store_logits)
                        for name, (x, y) in sets.items()})
        _record_checkpoint(tensors, rows, plan, epoch, epochs, results, params.values())

    train_param_population(members, spec.architecture, dataset, checkpoints, on_checkpoint,
                           on_step)
    metadata = {"member_ids": [m.member_id for m in members],
                "checkpoints": list(checkpoints), "family": spec.architecture.family,
                "structural": {k: hp0[k] for k in STRUCTURAL}}
    return write_shard(root, plan.index, tensors, pd.DataFrame(rows), metadata)


def _build_siren_shard(root: Path, spec: ZooSpec, plan: ShardPlan, images: SirenImages,
                       on_step: Callable[[], None]) -> ShardRows:
    """Fit the shard's SIRENs in one :func:`fit_sirens` call and write their final weights
    (``e{steps}/...``) and one row per member."""
    recipe = spec.siren
    assert recipe is not None
    members = plan.members
    ids = [m.config_id for m in members]
    fit = fit_sirens(images.x[ids], [m.seed for m in members],
                     hidden=spec.architecture.hidden, omega_0=spec.architecture.omega_0,
                     steps=recipe.steps, lr=recipe.lr, target_psnr=recipe.target_psnr,
                     on_step=on_step)
    (epoch,) = spec.member_checkpoints(members[0])
    batch = fit.population.to_weight_batch()
    tensors = {f"e{epoch}/{key}": values.clone() for key, values in
               zip(batch.space.state_dict_keys(), _state_tensors(batch), strict=True)}
    finite = torch.stack([torch.isfinite(t.flatten(1)).all(1)
                          for t in batch.tensors()]).all(0)
    rows = []
    for pos, member in enumerate(members):
        image = member.config_id
        rows.append({
            "member_id": member.member_id, "image_id": image, "split": member.split,
            "image_index": member.image_index, "label": int(images.labels[image]),
            "fit_index": member.seed_index, "seed": member.seed,
            "epoch": epoch, "is_final": True, "finite": bool(finite[pos]),
            "shard": plan.index, "shard_pos": pos,
            "steps_used": int(fit.steps_used[pos]), "mse": float(fit.mse[pos]),
            "psnr": float(fit.psnr[pos]),
        })
    metadata = {"member_ids": [m.member_id for m in members], "checkpoints": [epoch],
                "family": "siren"}
    return write_shard(root, plan.index, tensors, pd.DataFrame(rows), metadata)


def _state_tensors(batch) -> list[Tensor]:
    """Stacked ``(members, *shape)`` tensors in state-dict key order (bias-free layers give
    no bias)."""
    out = []
    for layer, w, b in zip(batch.space.layers, batch.weights, batch.biases, strict=True):
        out.append(w[:, 0])
        if layer.has_bias:
            out.append(b[:, 0])
    return out
