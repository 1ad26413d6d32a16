"""The on-disk zoo format: safetensors shards + Parquet tables + a JSON manifest.

::

    ZOO/
      manifest.json                  format, versions, the spec, its hash, the weight space
      index.parquet                  one row per member and checkpoint (all shards)
      shards/shard-00000.safetensors weights stacked per key: "e{epoch}/{state-dict key}"
                                     -> (members, *shape); optional logits "logits/e{epoch}/{set}"
      shards/shard-00000.parquet     the rows of that shard (written last: marks it complete)

Everything is readable with pandas/pyarrow and safetensors alone; nothing is pickled. Files
are written to a temporary name and renamed into place, so an interrupted write leaves the
store as it was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from gensight.errors import GensightError
from gensight.weightspace import WeightBatch, WeightSpace

FORMAT = "gensight-zoo"
FORMAT_VERSION = 1


class ZooStoreError(GensightError):
    """A directory that is not a zoo, a corrupt file, or a zoo that does not match."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_parquet(path: Path, table: pd.DataFrame) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def read_manifest(root: Path) -> dict:
    path = root / "manifest.json"
    if not path.exists():
        raise ZooStoreError(f"{str(root)!r} is not a gensight zoo: it has no manifest.json")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ZooStoreError(f"{str(path)!r} is corrupt: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise ZooStoreError(f"{str(path)!r} is not a gensight zoo manifest "
                            f"(format={manifest.get('format')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ZooStoreError(f"{str(path)!r} has format version "
                            f"{manifest.get('format_version')}; this gensight reads "
                            f"{FORMAT_VERSION}")
    return manifest


def write_shard(root: Path, index: int, tensors: dict[str, Tensor], rows: pd.DataFrame,
                metadata: dict[str, str]) -> None:
    """Write one shard: the safetensors file first, then the Parquet rows that mark it done."""
    from safetensors.torch import save

    shards = root / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    name = shard_name(index)
    blob = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(shards / f"{name}.safetensors", blob)
    atomic_write_parquet(shards / f"{name}.parquet", rows)


def shard_complete(root: Path, index: int) -> bool:
    name = shard_name(index)
    return (root / "shards" / f"{name}.parquet").exists() and \
        (root / "shards" / f"{name}.safetensors").exists()


def load_shard_tensors(root: Path, index: int) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = root / "shards" / f"{shard_name(index)}.safetensors"
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ZooStoreError(f"corrupt shard {str(path)!r}: {exc}") from None


def read_shard_rows(root: Path, index: int) -> pd.DataFrame:
    path = root / "shards" / f"{shard_name(index)}.parquet"
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise ZooStoreError(f"corrupt shard table {str(path)!r}: {exc}") from None


def remove_temporaries(root: Path) -> None:
    for tmp in list(root.glob(".tmp-*")) + list((root / "shards").glob(".tmp-*")):
        tmp.unlink()


@dataclass
class Zoo:
    """A zoo on disk: its manifest, its table and its weights.

    Example::

        zoo = Zoo.open("runs/digits-mlp")
        good = zoo.table.query("is_final and test_acc > 0.8")
        batch = zoo.weights(good)            # WeightBatch, one member per row
    """

    root: Path
    manifest: dict
    table: pd.DataFrame

    @classmethod
    def open(cls, root: str | Path) -> Zoo:
        root = Path(root)
        if not root.is_dir():
            raise ZooStoreError(f"{str(root)!r} is not a directory")
        manifest = read_manifest(root)
        index = root / "index.parquet"
        if index.exists():
            try:
                table = pd.read_parquet(index)
            except Exception as exc:
                raise ZooStoreError(f"corrupt index {str(index)!r}: {exc}") from None
        else:
            table = pd.DataFrame()
        return cls(root, manifest, table)

    @property
    def space(self) -> WeightSpace:
        return WeightSpace.from_dict(self.manifest["space"])

    @property
    def complete(self) -> bool:
        return len(self.table) > 0 and \
            self.table["shard"].nunique() == self.manifest["n_shards"]

    def weights(self, rows: pd.DataFrame | None = None) -> WeightBatch:
        """The weights of ``rows`` (a subset of :attr:`table`, one row per member and
        checkpoint; default: every row) as a :class:`WeightBatch` in the rows' order."""
        rows = self.table if rows is None else rows
        if len(rows) == 0:
            raise ZooStoreError("no rows selected: nothing to load")
        missing = {"shard", "shard_pos", "epoch"} - set(rows.columns)
        if missing:
            raise ZooStoreError(f"rows lack the columns {sorted(missing)} of a zoo table")
        if "finite" in rows.columns and not rows["finite"].all():
            bad = rows.loc[~rows["finite"], "member_id"].tolist()
            raise ZooStoreError(
                f"{len(bad)} selected row(s) have NaN/inf weights (training diverged), e.g. "
                f"{bad[:3]}; select finite ones with table.query('finite')")
        space = self.space
        out: list[list[Tensor]] = [[] for _ in space.state_dict_keys()]
        for tensors, pos, epoch in self._rows_in_shards(rows):
            for k, key in enumerate(space.state_dict_keys()):
                name = f"e{epoch}/{key}"
                if name not in tensors:
                    raise ZooStoreError(f"the zoo stores no tensor {name!r}")
                out[k].append(tensors[name][pos])
        state_dicts = [dict(zip(space.state_dict_keys(), vals, strict=True))
                       for vals in zip(*out, strict=True)]
        return WeightBatch.from_state_dicts(space, state_dicts)

    def modules(self, rows: pd.DataFrame) -> list[nn.Module]:
        """The networks of ``rows`` as ``torch.nn`` modules (eval mode), each built with its
        own activation and dropout and loaded with its stored weights."""
        from gensight.data import load_dataset
        from gensight.zoo.spec import ZooSpec
        from gensight.zoo.train import build_model

        spec = ZooSpec.from_dict(self.manifest["spec"])
        members = {m.member_id: m for m in spec.members()}
        data = load_dataset(spec.dataset)
        batch = self.weights(rows)
        out = []
        for i, member_id in enumerate(rows["member_id"]):
            hp = members[member_id].hparams
            template = build_model(spec.architecture, data.input_shape, data.n_classes,
                                   hp["activation"], hp["dropout"])
            out.append(batch[i:i + 1].to_modules(template)[0].eval())
        return out

    def logits(self, rows: pd.DataFrame, name: str) -> Tensor:
        """Stored logits ``(rows, N, classes)`` of the evaluation set ``name`` ("test" or
        "{shift}-{severity}"); needs a zoo built with ``store_logits = true``."""
        out = []
        for tensors, pos, epoch in self._rows_in_shards(rows):
            key = f"logits/e{epoch}/{name}"
            if key not in tensors:
                raise ZooStoreError(f"the zoo stores no logits {key!r} (build it with "
                                    "store_logits = true)")
            out.append(tensors[key][pos].float())
        return torch.stack(out)

    def _rows_in_shards(self, rows: pd.DataFrame):
        """Yield ``(shard tensors, position, epoch)`` per row, loading each shard once."""
        cache: dict[int, dict[str, Tensor]] = {}
        for shard, pos, epoch in zip(rows["shard"], rows["shard_pos"], rows["epoch"],
                                     strict=True):
            if int(shard) not in cache:
                cache[int(shard)] = load_shard_tensors(self.root, int(shard))
            yield cache[int(shard)], int(pos), int(epoch)

    @property
    def shifted_sets(self) -> list[str]:
        """Names (``"{shift}-{severity}"``) of the shifted test sets the members were
        evaluated on, in the table's column order (columns ``shift:NAME_acc``)."""
        return [c[len("shift:"):-len("_acc")] for c in self.table.columns
                if c.startswith("shift:") and c.endswith("_acc")]

    def summary(self, epoch: int | None = None) -> pd.DataFrame:
        """Test accuracy per (optimizer, activation) at the final checkpoint (or ``epoch``):
        members, mean, std, min, median, max, and the mean generalization gap."""
        table = self.table
        if table.empty:
            return pd.DataFrame()
        table = table[table["is_final"]] if epoch is None else table[table["epoch"] == epoch]
        groups = table.groupby(["optimizer", "activation"])
        out = groups["test_acc"].agg(["count", "mean", "std", "min", "median", "max"])
        out["mean_gap"] = groups["gen_gap"].mean()
        return out.rename(columns={"count": "members"})


def collect_index(root: Path, shards: Sequence[int]) -> pd.DataFrame:
    tables = [read_shard_rows(root, i) for i in shards if shard_complete(root, i)]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
