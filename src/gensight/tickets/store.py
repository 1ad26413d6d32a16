"""The tickets zoo: IMP masks, initializations and accuracies on disk.

::

    TICKETS/
      manifest.json                   format "gensight-tickets", the config and its hash, the
                                      weight space, the per-layer counts of every round
      shards/shard-00000.safetensors  "init/{key}": (n, *shape) float32 initial weights and
                                      biases; "imp/r{k:02d}/{weight key}": (n, n_out, n_in)
                                      uint8 IMP mask after round k (k = 1..R);
                                      "random/r{k:02d}/{weight key}": random masks (same
                                      per-layer counts) of the rounds in random_rounds
      shards/shard-00000.parquet      one row per init, round and kind ("imp" | "random"):
                                      init_id, seed, round, kind, density, test_acc, val_acc;
                                      carries the SHA-256 of both files (written last)
      damaged/                        shards that failed their hash check on resume, moved
                                      aside (never deleted) and trained again
      .lock                           held while building

Shards are written with :func:`gensight.zoo.store.write_shard` (atomic: temporary file,
fsync, rename; the Parquet table marks a shard complete), so a killed build resumes at the
first shard that is not complete; on resume every complete shard is checked against its
hashes and a damaged one is moved to ``damaged/`` and trained again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from gensight.errors import GensightError
from gensight.tickets.config import TicketsConfig
from gensight.weightspace import WeightSpace

FORMAT = "gensight-tickets"
FORMAT_VERSION = 1


class TicketsStoreError(GensightError):
    """A directory that is not a tickets zoo, a damaged file, or a config that differs."""


def _mask_key(kind: str, round_: int, key: str) -> str:
    return f"{kind}/r{round_:02d}/{key}"


def _manifest(config: TicketsConfig, space: WeightSpace, counts: list[list[int]]) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict(),
            "config_hash": config.content_hash(), "space": space.to_dict(), "counts": counts,
            "n_shards": -(-config.inits // config.shard_size)}


def _read_manifest(root: Path) -> dict:
    path = root / "manifest.json"
    if not path.exists():
        raise TicketsStoreError(f"{str(root)!r} is not a tickets zoo: it has no manifest.json")
    try:
        manifest = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TicketsStoreError(f"{str(path)!r} is corrupt: {exc}") from None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt != FORMAT:
        raise TicketsStoreError(f"{str(path)!r} is not a tickets zoo manifest (format="
                                f"{fmt!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise TicketsStoreError(f"{str(path)!r} has format version "
                                f"{manifest.get('format_version')!r}; this gensight reads "
                                f"{FORMAT_VERSION}")
    try:
        config = TicketsConfig.from_dict(manifest["config"])
    except (GensightError, KeyError) as exc:
        raise TicketsStoreError(f"{str(path)!r}: its config is invalid: {exc}") from None
    if config.content_hash() != manifest.get("config_hash"):
        raise TicketsStoreError(f"{str(path)!r}: the config does not match its config_hash "
                                "(the manifest was edited); restore it or rebuild")
    return manifest


def build_tickets(config: TicketsConfig, out: str | Path, *,
                  progress: Callable[[int, int], None] | None = None,
                  dtype: torch.dtype = torch.float32) -> TicketZoo:
    """Run IMP with rewinding (:func:`gensight.tickets.train.run_imp`) for every init of
    ``config`` and store it in ``out``, shard by shard; resumes a killed build.

    ``progress(done, total)`` is called after every training run (a round of a shard).

    Raises:
        TicketsStoreError: ``out`` holds something else, or a tickets zoo of another config.
        ZooLockedError: another process is building ``out``.
    """
    from gensight.data import load_dataset
    from gensight.tickets.train import (
        imp_schedule,
        init_weights,
        layer_sizes,
        mlp_space,
        run_imp,
        train_masked,
    )
    from gensight.zoo.store import (
        atomic_write_bytes,
        complete_shards,
        is_leftover,
        quarantine_shard,
        remove_temporaries,
        write_shard,
        zoo_lock,
    )

    root = Path(out)
    dataset = load_dataset(config.dataset)
    widths = layer_sizes(dataset, config.hidden)
    space = mlp_space(widths)
    counts = imp_schedule(config, widths)
    manifest = _manifest(config, space, counts)
    if root.exists() and not root.is_dir():
        raise TicketsStoreError(f"--out {str(root)!r} is a file, not a directory")
    root.mkdir(parents=True, exist_ok=True)
    with zoo_lock(root, "tickets build"):
        remove_temporaries(root)
        path = root / "manifest.json"
        if path.exists():
            old = _read_manifest(root)
            if old["config_hash"] != manifest["config_hash"]:
                raise TicketsStoreError(f"{str(root)!r} holds a tickets zoo of another config "
                                        f"({old['config']['name']!r}); use a new --out")
            if old.get("counts") != manifest["counts"]:
                raise TicketsStoreError(f"{str(root)!r}: its manifest's per-layer counts "
                                        "differ from this config's pruning schedule (edited, "
                                        "or built by another gensight); use a new --out")
        else:
            others = [n for n in os.listdir(root) if not is_leftover(n)]
            if others:
                raise TicketsStoreError(f"--out {str(root)!r} is not empty and not a tickets "
                                        f"zoo (it holds {sorted(others)[:3]})")
            atomic_write_bytes(path, json.dumps(manifest, indent=1, sort_keys=True).encode())
        n_shards = manifest["n_shards"]
        done_shards = set()
        for index in complete_shards(root, n_shards):
            if _shard_problem(root, index) is None:
                done_shards.add(index)
            else:  # damaged: move it to damaged/ (never deleted) and train it again
                quarantine_shard(root, index)
        per_shard = config.rounds + 1 + (1 if config.random_rounds else 0)
        total = n_shards * per_shard
        done = len(done_shards) * per_shard
        if progress is not None:
            progress(done, total)
        seeds_all = config.seeds

        def train_fn(w, b, masks, seeds):
            return train_masked(w, b, masks, seeds, dataset, config.train, config.activation)

        for index in range(n_shards):
            if index in done_shards:
                continue
            lo = index * config.shard_size
            ids = list(range(lo, min(lo + config.shard_size, config.inits)))
            seeds = [seeds_all[i] for i in ids]
            init_w, init_b = init_weights(seeds, widths, dtype)

            def on_round(_k: int) -> None:
                nonlocal done
                done += 1
                if progress is not None:
                    progress(done, total)

            result = run_imp(init_w, init_b, seeds, counts, train_fn, config.random_rounds,
                             on_round)
            tensors, rows = _shard_content(space, ids, seeds, init_w, init_b, result, counts)
            write_shard(root, index, tensors, rows, {"shard": index, "inits": len(ids)})
            if config.random_rounds:
                done += 1
                if progress is not None:
                    progress(done, total)
    return TicketZoo.open(root)


def _shard_problem(root: Path, index: int) -> str | None:
    """Why shard ``index`` cannot be read back (its table or tensors unreadable, or not
    matching their content hashes), or None if it is intact."""
    from gensight.zoo.store import ZooStoreError, load_shard_tensors, read_shard_rows

    try:
        load_shard_tensors(root, index, read_shard_rows(root, index).tensors_sha256)
    except ZooStoreError as exc:
        return str(exc)
    return None


def _shard_content(space: WeightSpace, ids: Sequence[int], seeds: Sequence[int],
                   init_w: Sequence[Tensor], init_b: Sequence[Tensor], result,
                   counts: list[list[int]]) -> tuple[dict[str, Tensor], pd.DataFrame]:
    sizes = [w.shape[1] * w.shape[2] for w in init_w]
    tensors: dict[str, Tensor] = {}
    for layer, w, b in zip(space.layers, init_w, init_b, strict=True):
        tensors[f"init/{layer.weight_key}"] = w.float().contiguous()
        tensors[f"init/{layer.bias_key}"] = b.float().contiguous()
    rows = []

    def add_rows(kind: str, k: int, test: Tensor, val: Tensor) -> None:
        density = sum(counts[k]) / sum(sizes)
        for j, (i, s) in enumerate(zip(ids, seeds, strict=True)):
            rows.append({"init_id": i, "seed": s, "round": k, "kind": kind,
                         "density": density, "test_acc": float(test[j]),
                         "val_acc": float(val[j])})

    for k in range(len(counts)):
        add_rows("imp", k, result.test_acc[k], result.val_acc[k])
        if k >= 1:
            for layer, mk in zip(space.layers, result.masks[k - 1], strict=True):
                tensors[_mask_key("imp", k, layer.weight_key)] = mk.to(torch.uint8)
    for k in sorted(result.random_masks):
        add_rows("random", k, result.random_test_acc[k], result.random_val_acc[k])
        for layer, mk in zip(space.layers, result.random_masks[k], strict=True):
            tensors[_mask_key("random", k, layer.weight_key)] = mk.to(torch.uint8)
    return tensors, pd.DataFrame(rows)


@dataclass
class TicketZoo:
    """A built (possibly partial) tickets zoo, read back.

    ``table``: one row per init, round and kind; ``counts[k][i]``: weights of layer i kept
    after round k; ``space``: the MLPs' weight space.
    """

    root: Path
    manifest: dict
    config: TicketsConfig
    space: WeightSpace
    counts: list[list[int]]
    table: pd.DataFrame
    damaged: dict[int, str] = field(default_factory=dict)
    _tensors: dict[int, dict[str, Tensor]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, root: str | Path, *, strict: bool = True) -> TicketZoo:
        """Open and check (content hashes of every complete shard's table) a tickets zoo.

        A shard table that cannot be read or fails its hash raises
        :class:`TicketsStoreError`; with ``strict=False`` it is left out of ``table`` and
        listed in ``damaged`` (shard index -> why) instead."""
        from gensight.zoo.store import ZooStoreError, complete_shards, read_shard_rows

        root = Path(root)
        if not root.is_dir():
            raise TicketsStoreError(f"{str(root)!r} is not a directory")
        manifest = _read_manifest(root)
        config = TicketsConfig.from_dict(manifest["config"])
        space = WeightSpace.from_dict(manifest["space"])
        tables = []
        damaged: dict[int, str] = {}
        for index in complete_shards(root, manifest["n_shards"]):
            try:
                shard = read_shard_rows(root, index)
            except ZooStoreError as exc:
                if strict:
                    raise TicketsStoreError(str(exc)) from None
                damaged[index] = str(exc)
                continue
            tables.append(shard.rows.assign(shard=index))
        table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
            columns=["init_id", "seed", "round", "kind", "density", "test_acc", "val_acc",
                     "shard"])
        return cls(root, manifest, config, space, manifest["counts"], table, damaged)

    @property
    def init_ids(self) -> list[int]:
        """The inits stored so far, in order."""
        return sorted(set(int(i) for i in self.table["init_id"]))

    @property
    def complete(self) -> bool:
        return len(self.init_ids) == self.config.inits

    def _shard(self, index: int) -> dict[str, Tensor]:
        from gensight.zoo.store import ZooStoreError, load_shard_tensors

        if index not in self._tensors:
            try:
                self._tensors[index], _ = load_shard_tensors(self.root, index)
            except ZooStoreError as exc:
                raise TicketsStoreError(str(exc)) from None
        return self._tensors[index]

    def _gather(self, key: str, init_ids: Sequence[int] | None) -> Tensor:
        ids = self.init_ids if init_ids is None else [int(i) for i in init_ids]
        stored = set(self.init_ids)
        missing = [i for i in ids if i not in stored]
        if missing:
            raise TicketsStoreError(f"inits {missing[:5]} are not in {str(self.root)!r} "
                                    f"(it holds {len(stored)} of {self.config.inits})")
        size = self.config.shard_size
        parts = [self._shard(i // size)[key][i % size] for i in ids]
        return torch.stack(parts)

    def inits(self, init_ids: Sequence[int] | None = None) -> tuple[list[Tensor], list[Tensor]]:
        """Initial weights ``(M, n_out, n_in)`` and biases ``(M, n_out)``, float32."""
        w = [self._gather(f"init/{ly.weight_key}", init_ids) for ly in self.space.layers]
        b = [self._gather(f"init/{ly.bias_key}", init_ids) for ly in self.space.layers]
        return w, b

    def masks(self, round_: int, kind: str = "imp",
              init_ids: Sequence[int] | None = None) -> list[Tensor]:
        """Bool masks ``(M, n_out, n_in)`` per layer of ``kind`` ("imp" | "random") at
        ``round_``."""
        if kind not in ("imp", "random"):
            raise TicketsStoreError(f"mask kind must be 'imp' or 'random'; got {kind!r}")
        rounds = (range(1, self.config.rounds + 1) if kind == "imp"
                  else self.config.random_rounds)
        if round_ not in rounds:
            raise TicketsStoreError(f"no {kind} masks at round {round_}; stored rounds: "
                                    f"{list(rounds)}")
        return [self._gather(_mask_key(kind, round_, ly.weight_key), init_ids).bool()
                for ly in self.space.layers]

    def seeds(self, init_ids: Sequence[int] | None = None) -> list[int]:
        ids = self.init_ids if init_ids is None else list(init_ids)
        return [self.config.seed + int(i) for i in ids]

    def summary(self) -> pd.DataFrame:
        """Mean and std of test accuracy per round and kind."""
        if self.table.empty:
            return pd.DataFrame()
        g = self.table.groupby(["round", "kind"])
        return g.agg(density=("density", "first"), test_acc_mean=("test_acc", "mean"),
                     test_acc_std=("test_acc", "std"), inits=("init_id", "count")
                     ).reset_index()


def verify_tickets(root: str | Path) -> list[str]:
    """Check every shard of a tickets zoo: content hashes, tensor keys and shapes, exact
    per-layer mask counts, nested IMP masks (each round's mask inside the previous one) and
    the rows. Returns the problems found (empty: the zoo is sound); missing shards are
    reported as not built, damaged ones (unreadable, or not matching their hashes) as one
    problem each (rerun ``gensight tickets build`` to move them to ``damaged/`` and redo
    them). Raises :class:`TicketsStoreError` only when ``root`` is not a tickets zoo."""
    from gensight.zoo.store import complete_shards

    zoo = TicketZoo.open(root, strict=False)
    problems: list[str] = []
    n_shards = zoo.manifest["n_shards"]
    built = set(complete_shards(zoo.root, n_shards))
    cfg = zoo.config
    for index in range(n_shards):
        if index not in built:
            problems.append(f"shard {index}: not built (rerun gensight tickets build)")
            continue
        if index in zoo.damaged:
            problems.append(f"shard {index}: {zoo.damaged[index]} (rerun gensight tickets "
                            "build to redo it)")
            continue
        try:
            tensors = zoo._shard(index)
        except TicketsStoreError as exc:
            problems.append(f"shard {index}: {exc} (rerun gensight tickets build to redo it)")
            continue
        n = min(cfg.shard_size, cfg.inits - index * cfg.shard_size)
        rows = zoo.table[zoo.table["shard"] == index]
        expected_rows = n * (cfg.rounds + 1 + len(cfg.random_rounds))
        if len(rows) != expected_rows:
            problems.append(f"shard {index}: {len(rows)} rows, expected {expected_rows}")
        for ly in zoo.space.layers:
            for key, shape in ((ly.weight_key, ly.weight_shape), (ly.bias_key, ly.bias_shape)):
                t = tensors.get(f"init/{key}")
                if t is None or tuple(t.shape) != (n, *shape):
                    problems.append(f"shard {index}: init/{key} missing or of wrong shape")
        for kind, rounds in (("imp", range(1, cfg.rounds + 1)), ("random", cfg.random_rounds)):
            for k in rounds:
                for i, ly in enumerate(zoo.space.layers):
                    key = _mask_key(kind, k, ly.weight_key)
                    t = tensors.get(key)
                    if t is None or t.dtype != torch.uint8 or tuple(t.shape) != (
                            n, *ly.weight_shape):
                        problems.append(f"shard {index}: {key} missing or not uint8 {n}x"
                                        f"{ly.weight_shape}")
                        continue
                    kept = t.reshape(n, -1).sum(1)
                    if not bool((kept == zoo.counts[k][i]).all()) or int(t.max()) > 1:
                        problems.append(f"shard {index}: {key} keeps {kept.tolist()[:4]} "
                                        f"weights, expected {zoo.counts[k][i]}")
                    if kind == "imp" and k > 1:
                        prev = tensors.get(_mask_key("imp", k - 1, ly.weight_key))
                        if prev is not None and bool((t > prev).any()):
                            problems.append(f"shard {index}: {key} revives weights pruned "
                                            "in an earlier round")
    return problems
