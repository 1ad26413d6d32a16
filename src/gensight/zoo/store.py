"""The on-disk zoo format: safetensors shards + Parquet tables + a JSON manifest.

::

    ZOO/
      manifest.json                  format, versions, the normalized spec, its hash, the space,
                                     the fingerprint of its shifted test sets
      index.parquet                  one row per member and checkpoint (all shards); derived
                                     from the shard tables, rebuilt whenever it is stale
      shards/shard-00000.safetensors weights stacked per key: "e{epoch}/{state-dict key}"
                                     -> (members, *shape); optional logits "logits/e{epoch}/{set}"
      shards/shard-00000.parquet     the rows of that shard, with the SHA-256 of the
                                     safetensors file and of the rows in its schema metadata
                                     (written last: marks the shard complete)
      .lock                          held (flock) by the process building the zoo
      damaged/                       shards that failed verification, moved aside, never deleted

Everything is readable with pandas/pyarrow and safetensors alone; nothing is pickled. Files
are written to a temporary name, fsynced, renamed into place and the directory fsynced, so an
interrupted write leaves the store as it was. Every shard is checked against its content hash
when it is loaded; :func:`verify_zoo` checks a whole zoo.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from gensight.errors import GensightError
from gensight.weightspace import ParamBatch, ParamSpace, WeightBatch, WeightSpace
from gensight.weightspace.params import space_from_dict

FORMAT = "gensight-zoo"
FORMAT_VERSION = 2
META_KEY = "gensight"  # the one metadata key of shards and tables (one key: a fixed byte order)
LOCK_NAME = ".lock"
TMP_PREFIX = ".tmp-"
DAMAGED_DIR = "damaged"


class ZooStoreError(GensightError):
    """A directory that is not a zoo, a corrupt file, or a zoo that does not match."""


class ZooLockedError(ZooStoreError):
    """Another process is building (or repairing) the zoo."""


# --- durable writes ---------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either its old or its new content:
    a temporary file, fsynced, renamed into place, then the directory fsynced."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def parquet_bytes(table: pd.DataFrame, meta: dict | None = None) -> bytes:
    """``table`` as Parquet bytes, with ``meta`` (JSON) under the schema metadata key
    ``gensight``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    if meta is not None:
        schema_meta = dict(arrow.schema.metadata or {})
        schema_meta[META_KEY.encode()] = json.dumps(meta, sort_keys=True).encode()
        arrow = arrow.replace_schema_metadata(schema_meta)
    buf = io.BytesIO()
    pq.write_table(arrow, buf)
    return buf.getvalue()


def atomic_write_parquet(path: Path, table: pd.DataFrame, meta: dict | None = None) -> None:
    atomic_write_bytes(path, parquet_bytes(table, meta))


def rows_hash(rows: pd.DataFrame) -> str:
    """SHA-256 of a table's columns, dtypes and values (as read back from Parquet)."""
    h = hashlib.sha256()
    h.update(json.dumps([[str(c), str(t)] for c, t in rows.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes())
    return h.hexdigest()


def _read_parquet_bytes(data: bytes) -> tuple[pd.DataFrame, dict]:
    """The table and its ``gensight`` metadata (``{}`` if none) from Parquet bytes."""
    import pyarrow.parquet as pq

    arrow = pq.read_table(io.BytesIO(data))
    raw = (arrow.schema.metadata or {}).get(META_KEY.encode())
    return arrow.to_pandas(), (json.loads(raw) if raw else {})


# --- names ------------------------------------------------------------------------------------
def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def shard_paths(root: Path, index: int) -> tuple[Path, Path]:
    """``(safetensors, parquet)`` paths of shard ``index``."""
    base = root / "shards" / shard_name(index)
    return base.with_suffix(".safetensors"), base.with_suffix(".parquet")


def shard_complete(root: Path, index: int) -> bool:
    return all(p.exists() for p in shard_paths(root, index))


def complete_shards(root: Path, n_shards: int) -> list[int]:
    """Indices of the shards whose two files are both present."""
    folder = root / "shards"
    if not folder.is_dir():
        return []
    names = set(os.listdir(folder))
    return [i for i in range(n_shards)
            if f"{shard_name(i)}.parquet" in names and f"{shard_name(i)}.safetensors" in names]


def remove_temporaries(root: Path) -> None:
    for folder in (root, root / "shards"):
        if folder.is_dir():
            for tmp in folder.glob(f"{TMP_PREFIX}*"):
                tmp.unlink()


def is_leftover(name: str) -> bool:
    """Files a killed build may leave in an otherwise empty zoo directory."""
    return name == LOCK_NAME or name.startswith(TMP_PREFIX)


# --- the manifest -----------------------------------------------------------------------------
_MANIFEST_FIELDS = {"format": str, "format_version": int, "name": str, "spec": dict,
                    "spec_hash": str, "space": dict, "n_shards": int, "n_members": int}


def read_manifest(root: Path) -> dict:
    """The validated manifest of the zoo at ``root``: its fields have their types, and its
    spec hashes to its ``spec_hash`` (an edited spec is refused)."""
    from gensight.zoo.spec import SpecError, ZooSpec

    path = root / "manifest.json"
    if not path.exists():
        raise ZooStoreError(f"{str(root)!r} is not a gensight zoo: it has no manifest.json")
    try:
        manifest = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ZooStoreError(f"{str(path)!r} is corrupt: {exc}") from None
    except OSError as exc:
        raise ZooStoreError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    if not isinstance(manifest, dict):
        raise ZooStoreError(f"{str(path)!r} is corrupt: expected a JSON object, got "
                            f"{type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise ZooStoreError(f"{str(path)!r} is not a gensight zoo manifest "
                            f"(format={manifest.get('format')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ZooStoreError(f"{str(path)!r} has format version "
                            f"{manifest.get('format_version')!r}; this gensight reads "
                            f"{FORMAT_VERSION} (rebuild the zoo with this version)")
    for name, typ in _MANIFEST_FIELDS.items():
        value = manifest.get(name)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise ZooStoreError(f"{str(path)!r} is corrupt: field {name!r} should be a "
                                f"{typ.__name__}, got {value!r:.60}")
    try:
        spec = ZooSpec.from_dict(manifest["spec"])
    except SpecError as exc:
        raise ZooStoreError(f"{str(path)!r}: its spec is invalid: {exc}") from None
    if spec.content_hash() != manifest["spec_hash"]:
        raise ZooStoreError(
            f"{str(path)!r}: the spec does not match its spec_hash ({spec.content_hash()} vs "
            f"{manifest['spec_hash']}): the manifest was edited; restore it or rebuild the zoo")
    try:
        space_from_dict(manifest["space"])
    except (GensightError, KeyError, TypeError, ValueError) as exc:
        raise ZooStoreError(f"{str(path)!r} is corrupt: field 'space' is not a weight "
                            f"space ({exc})") from None
    return manifest


# --- the lock ---------------------------------------------------------------------------------
@contextlib.contextmanager
def zoo_lock(root: Path, what: str = "build") -> Iterator[None]:
    """Hold the zoo's lock (``ZOO/.lock``, an advisory ``flock``) for the block.

    The kernel releases the lock when its process dies, so a killed build never leaves a
    stale lock; the file only says who held it last.

    Raises:
        ZooLockedError: another process holds it; the message says which.
    """
    path = root / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace")
            try:
                info = json.loads(holder)
                who = (f"{info['what']} by pid {info['pid']} on {info['host']} since "
                       f"{info['since']}: {info['command']}")
            except (json.JSONDecodeError, KeyError, TypeError):
                who = "another process"
            raise ZooLockedError(f"{str(root)!r} is locked ({who}); wait for it to finish or "
                                 "stop it, then rerun") from None
        info = {"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


# --- shards -----------------------------------------------------------------------------------
@dataclass
class ShardRows:
    """A shard's table and the hashes recorded with it."""

    rows: pd.DataFrame
    rows_sha256: str
    tensors_sha256: str


def write_shard(root: Path, index: int, tensors: dict[str, Tensor], rows: pd.DataFrame,
                metadata: dict) -> ShardRows:
    """Write one shard: the safetensors file first, then the Parquet rows that mark it done
    and carry both content hashes. Identical content gives identical bytes. Returns the rows
    as stored, with their hashes."""
    from safetensors.torch import save

    tensor_path, rows_path = shard_paths(root, index)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    blob = save({k: v.contiguous() for k, v in sorted(tensors.items())},
                metadata={META_KEY: json.dumps(metadata, sort_keys=True)})
    data = parquet_bytes(rows)
    read_back, _ = _read_parquet_bytes(data)
    digest = rows_hash(read_back)
    meta = {"tensors_sha256": hashlib.sha256(blob).hexdigest(), "rows_sha256": digest}
    atomic_write_bytes(tensor_path, blob)
    atomic_write_parquet(rows_path, read_back, meta)
    return ShardRows(read_back, digest, meta["tensors_sha256"])


def read_shard_rows(root: Path, index: int) -> ShardRows:
    """The rows of shard ``index``, checked against their recorded hash."""
    _, path = shard_paths(root, index)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ZooStoreError(f"cannot read shard table {str(path)!r}: {exc.strerror}") from None
    try:
        rows, meta = _read_parquet_bytes(data)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise ZooStoreError(f"corrupt shard table {str(path)!r}: {exc}") from None
    if not {"rows_sha256", "tensors_sha256"} <= set(meta):
        raise ZooStoreError(f"corrupt shard table {str(path)!r}: it has no content hashes")
    if rows_hash(rows) != meta["rows_sha256"]:
        raise ZooStoreError(f"damaged shard table {str(path)!r}: its rows do not match their "
                            "content hash")
    return ShardRows(rows, meta["rows_sha256"], meta["tensors_sha256"])


def load_shard_tensors(root: Path, index: int, tensors_sha256: str | None = None, *,
                       verify: bool = True) -> tuple[dict[str, Tensor], dict]:
    """The tensors and metadata of shard ``index``, checked against ``tensors_sha256`` (read
    from the shard's table when not given) unless ``verify`` is false."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if verify and tensors_sha256 is None:
        tensors_sha256 = read_shard_rows(root, index).tensors_sha256
    path, _ = shard_paths(root, index)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ZooStoreError(f"cannot read shard {str(path)!r}: {exc.strerror}") from None
    if verify and hashlib.sha256(data).hexdigest() != tensors_sha256:
        raise ZooStoreError(f"damaged shard {str(path)!r}: its bytes do not match their content "
                            "hash (run gensight zoo verify)")
    try:
        tensors = load(data)
        # The safetensors header: an 8-byte little-endian length, then JSON.
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        meta = json.loads(header.get("__metadata__", {}).get(META_KEY, "{}"))
    except (SafetensorError, OSError, ValueError, AttributeError) as exc:
        raise ZooStoreError(f"corrupt shard {str(path)!r}: {exc}") from None
    return tensors, meta


# --- the index --------------------------------------------------------------------------------
@dataclass
class Index:
    """The zoo's table, the shards it holds and why it was (re)derived, if it was."""

    table: pd.DataFrame
    shard_hashes: dict[int, str]
    problems: dict[int, str] = field(default_factory=dict)  # damaged shard -> why
    rebuilt: str | None = None  # why the index file was not used


def derive_index(root: Path, n_shards: int) -> Index:
    """The index from the shard tables alone; damaged shards are left out and listed."""
    tables, hashes, problems = [], {}, {}
    for i in complete_shards(root, n_shards):
        try:
            shard = read_shard_rows(root, i)
        except ZooStoreError as exc:
            problems[i] = str(exc)
            continue
        tables.append(shard.rows)
        hashes[i] = shard.rows_sha256
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return Index(table, hashes, problems)


def write_index(root: Path, index: Index) -> None:
    atomic_write_parquet(root / "index.parquet", index.table,
                         {"shards": {str(k): v for k, v in sorted(index.shard_hashes.items())}})


def _index_shard_hashes(table: pd.DataFrame) -> dict[int, str]:
    if table.empty:
        return {}
    return {int(s): rows_hash(part.reset_index(drop=True))
            for s, part in table.groupby("shard", sort=True)}


def read_index(root: Path, n_shards: int) -> Index:
    """The index file if it is intact and up to date with the complete shards on disk;
    otherwise the index derived from the shards, with ``rebuilt`` saying why."""
    path = root / "index.parquet"
    if not path.exists():
        why = "index.parquet is missing"
    else:
        try:
            table, meta = _read_parquet_bytes(path.read_bytes())
        except Exception as exc:
            why = f"index.parquet is corrupt ({str(exc)[:80]})"
        else:
            on_disk = complete_shards(root, n_shards)
            try:
                recorded = {int(k): v for k, v in meta["shards"].items()}
                actual = _index_shard_hashes(table)
            except (KeyError, TypeError, ValueError, AttributeError):
                recorded, actual = {}, None
            if actual is None or actual != recorded:
                why = "index.parquet does not match its recorded content (edited or damaged)"
            elif sorted(recorded) != on_disk:
                why = (f"index.parquet is stale ({len(recorded)} shards indexed, {len(on_disk)} "
                       "on disk)")
            else:
                return Index(table, recorded)
    index = derive_index(root, n_shards)
    index.rebuilt = why
    return index


# --- the zoo ----------------------------------------------------------------------------------
@dataclass
class Zoo:
    """A zoo on disk: its manifest, its table and its weights.

    Example::

        zoo = Zoo.open("runs/digits-mlp")
        good = zoo.table.query("is_final and test_acc > 0.8")
        batch = zoo.weights(good)            # WeightBatch, one member per row

    ``notes`` says what :meth:`open` found and worked around (a stale index it rebuilt in
    memory, damaged shards it left out of ``table``). With ``verify`` (the default) every
    shard is checked against its SHA-256 when it is loaded: +57% on the time to load 1,024
    Small-CNN-Zoo members with their logits (110 ms for 138 MB, ``benchmarks/bench_store.py``).
    """

    root: Path
    manifest: dict
    table: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    damaged: dict[int, str] = field(default_factory=dict)
    verify: bool = True

    @classmethod
    def open(cls, root: str | Path, *, verify: bool = True) -> Zoo:
        """Open the zoo at ``root``. The manifest is validated (an edited spec is refused);
        the index is used if it matches the shards, and derived from them otherwise.
        ``verify=False`` skips the content hash check when shards are loaded."""
        root = Path(root)
        if not root.is_dir():
            raise ZooStoreError(f"{str(root)!r} is not a directory")
        manifest = read_manifest(root)
        index = read_index(root, manifest["n_shards"])
        notes = []
        from gensight.zoo.spec import ZooSpec

        recorded = manifest.get("shift_fingerprint")
        if recorded is not None and recorded != ZooSpec.from_dict(
                manifest["spec"]).shift_fingerprint():
            notes.append("this zoo's shifted test sets were made by another version of "
                         "gensight's shifts: its shift:* columns and logits are not what "
                         "apply_shift gives now")
        if index.rebuilt:
            notes.append(f"{index.rebuilt}; using the table rebuilt from the shards (gensight "
                         "zoo verify --repair saves it)")
        for i, why in index.problems.items():
            notes.append(f"shard {i} is left out: {why}")
        return cls(root, manifest, index.table, notes, dict(index.problems), verify)

    @property
    def space(self) -> WeightSpace | ParamSpace:
        """The members' weight space: a :class:`WeightSpace` (MLP, CNN, SIREN) or, for the
        families of :mod:`gensight.zoo.families` (GRU, residual CNN), a :class:`ParamSpace`."""
        return space_from_dict(self.manifest["space"])

    def require_feedforward(self, what: str) -> None:
        """Refuse, in one line, work that needs an MLP/CNN weight space (NF-Layers, the
        complexity measures, ...) on a zoo of GRUs or residual CNNs."""
        if isinstance(self.space, ParamSpace):
            name = self.manifest.get("name", str(self.root))
            raise ZooStoreError(
                f"zoo {name!r} holds family {self.family!r} networks; {what} needs an MLP or "
                f"CNN zoo (unf, unf-np, deepsets, statnn and statnn-mlp predict on any zoo)")

    @property
    def complete(self) -> bool:
        """Every shard is present and its table intact (weights are checked on load and by
        :func:`verify_zoo`)."""
        return len(self.table) > 0 and not self.damaged and \
            self.table["shard"].nunique() == self.manifest["n_shards"]

    def weights(self, rows: pd.DataFrame | None = None) -> WeightBatch | ParamBatch:
        """The weights of ``rows`` (a subset of :attr:`table`, one row per member and
        checkpoint; default: every row) as a :class:`WeightBatch` in the rows' order (a
        :class:`ParamBatch` for a zoo whose :attr:`space` is a :class:`ParamSpace`)."""
        rows = self.table if rows is None else rows
        if len(rows) == 0:
            raise ZooStoreError("no rows selected: nothing to load")
        if "finite" in rows.columns and not rows["finite"].all():
            bad = rows.loc[~rows["finite"].astype(bool), "member_id"].tolist()
            raise ZooStoreError(
                f"{len(bad)} selected row(s) have NaN/inf weights (training diverged), e.g. "
                f"{bad[:3]}; select finite ones with table.query('finite')")
        space = self.space
        keys = space.state_dict_keys()
        out: list[list[Tensor]] = [[] for _ in keys]
        for tensors, pos, epoch in self._rows_in_shards(rows):
            for k, key in enumerate(keys):
                name = f"e{epoch}/{key}"
                if name not in tensors:
                    raise ZooStoreError(f"the zoo stores no tensor {name!r}")
                out[k].append(tensors[name][pos])
        state_dicts = [dict(zip(keys, vals, strict=True)) for vals in zip(*out, strict=True)]
        if isinstance(space, ParamSpace):
            return ParamBatch.from_state_dicts(space, state_dicts)
        return WeightBatch.from_state_dicts(space, state_dicts)

    @property
    def family(self) -> str:
        """The members' architecture family: "mlp", "cnn", "siren", "gru" or "rescnn"."""
        return self.manifest["spec"]["architecture"]["family"]

    def require_training_data(self, what: str) -> None:
        """Refuse, in one line, work that needs the members' training data or architecture
        details on a zoo imported by :mod:`gensight.zoo.importers` (its spec is a stand-in
        that only describes the weight space)."""
        imported = self.manifest.get("imported")
        if imported:
            name = self.manifest.get("name", str(self.root))
            raise ZooStoreError(
                f"zoo {name!r} was imported ({imported.get('format', 'unknown format')}); "
                f"{what} needs its members' training data and architecture, which an imported "
                f"zoo does not have (weight-based predictors such as statnn, nfn-hnp and unf "
                f"work)")

    def modules(self, rows: pd.DataFrame) -> list[nn.Module]:
        """The networks of ``rows`` as ``torch.nn`` modules (eval mode), each built with its
        own activation and dropout and loaded with its stored weights (SIRENs:
        :func:`~gensight.zoo.siren.siren_module` with the zoo's ``omega_0``)."""
        from gensight.data import load_dataset
        from gensight.zoo.spec import ZooSpec
        from gensight.zoo.train import build_model

        self.require_training_data("rebuilding its networks as modules")

        spec = ZooSpec.from_dict(self.manifest["spec"])
        if isinstance(self.space, ParamSpace):
            from gensight.zoo.families import member_module

            data = load_dataset(spec.dataset)
            batch = self.weights(rows)
            return [member_module(spec.architecture, data.input_shape, data.n_classes, sd,
                                  str(act))
                    for sd, act in zip(batch.state_dicts(), rows["activation"], strict=True)]
        if spec.is_siren:
            from gensight.zoo.siren import siren_module

            template = siren_module(spec.architecture.hidden, spec.architecture.omega_0)
            return [m.eval() for m in self.weights(rows).to_modules(template)]
        members = {m.member_id: m for m in spec.members()}
        data = load_dataset(spec.dataset)
        batch = self.weights(rows)
        out = []
        for i, member_id in enumerate(rows["member_id"]):
            if member_id not in members:
                raise ZooStoreError(f"member {member_id!r} is not a member of this zoo's spec")
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
        if not out:
            raise ZooStoreError("no rows selected: nothing to load")
        return torch.stack(out)

    def _rows_in_shards(self, rows: pd.DataFrame):
        """Yield ``(shard tensors, position, epoch)`` per row, loading and verifying each
        shard once; a row whose shard position holds another member is refused."""
        missing = {"member_id", "shard", "shard_pos", "epoch"} - set(rows.columns)
        if missing:
            raise ZooStoreError(f"rows lack the columns {sorted(missing)} of a zoo table")
        n_shards = self.manifest["n_shards"]
        cache: dict[int, tuple[dict[str, Tensor], list[str]]] = {}
        for member_id, shard, pos, epoch in zip(rows["member_id"], rows["shard"],
                                                rows["shard_pos"], rows["epoch"], strict=True):
            try:
                shard, pos, epoch = int(shard), int(pos), int(epoch)
            except (TypeError, ValueError):
                raise ZooStoreError(f"row of member {member_id!r}: shard {shard!r}, shard_pos "
                                    f"{pos!r} and epoch {epoch!r} must be integers") from None
            if not 0 <= shard < n_shards:
                raise ZooStoreError(f"row of member {member_id!r}: shard {shard} is not one of "
                                    f"this zoo's {n_shards} shards")
            if shard in self.damaged:
                raise ZooStoreError(self.damaged[shard])
            if shard not in cache:
                tensors, meta = load_shard_tensors(self.root, shard, verify=self.verify)
                cache[shard] = (tensors, list(meta.get("member_ids", [])))
            tensors, ids = cache[shard]
            if not 0 <= pos < len(ids) or ids[pos] != member_id:
                held = ids[pos] if 0 <= pos < len(ids) else "nothing"
                raise ZooStoreError(
                    f"row of member {member_id!r}: shard {shard} position {pos} holds {held!r}; "
                    "the table does not match the shards (run gensight zoo verify)")
            yield tensors, pos, epoch

    @property
    def shifted_sets(self) -> list[str]:
        """Names (``"{shift}-{severity}"``) of the shifted test sets the members were
        evaluated on, in the table's column order (columns ``shift:NAME_acc``)."""
        return [c[len("shift:"):-len("_acc")] for c in self.table.columns
                if c.startswith("shift:") and c.endswith("_acc")]

    def summary(self, epoch: int | None = None) -> pd.DataFrame:
        """Test accuracy per (optimizer, activation) at the final checkpoint (or ``epoch``):
        members, mean, std, min, median, max, and the mean generalization gap; with
        ``stop_loss``, also the share of members that reached it and their median epochs.

        A SIREN zoo: PSNR (dB) of the fits per split ("train", "val", "test", then "all"):
        members, mean, std, min, median, max, and the median of ``steps_used``."""
        table = self.table
        if table.empty:
            return pd.DataFrame()
        if self.family == "siren":
            parts = [(s, table[table["split"] == s]) for s in ("train", "val", "test")]
            rows = {}
            for name, part in [*parts, ("all", table)]:
                if len(part):
                    stats = part["psnr"].agg(["mean", "std", "min", "median", "max"])
                    rows[name] = {"members": len(part), **stats.to_dict(),
                                  "median_steps": float(part["steps_used"].median())}
            out = pd.DataFrame.from_dict(rows, orient="index")
            out.index.name = "split"
            return out
        table = table[table["is_final"]] if epoch is None else table[table["epoch"] == epoch]
        groups = table.groupby(["optimizer", "activation"])
        out = groups["test_acc"].agg(["count", "mean", "std", "min", "median", "max"])
        out["mean_gap"] = groups["gen_gap"].mean()
        if "converged" in table:  # built with stop_loss: share that reached it, epochs used
            out["converged"] = groups["converged"].mean()
            out["median_epochs"] = groups["epochs_used"].median()
        return out.rename(columns={"count": "members"})


# --- verification -----------------------------------------------------------------------------
@dataclass
class VerifyReport:
    """What :func:`verify_zoo` found: ``problems`` maps a path to what is wrong with it."""

    root: Path
    n_shards: int = 0
    ok_shards: list[int] = field(default_factory=list)
    missing_shards: list[int] = field(default_factory=list)
    damaged_shards: dict[int, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    repaired: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.damaged_shards


def check_shard(root: Path, index: int, member_ids: Sequence[str],
                space: WeightSpace | ParamSpace,
                checkpoints: Sequence[int] | None = None) -> ShardRows:
    """Check shard ``index`` through: both content hashes, its members (``member_ids``, in
    order), and every weight tensor's shape. Raises :class:`ZooStoreError` on the first
    problem."""
    rows_file = shard_paths(root, index)[1]
    shard = read_shard_rows(root, index)
    tensors, meta = load_shard_tensors(root, index, shard.tensors_sha256)
    where = str(rows_file.with_suffix(""))
    if list(meta.get("member_ids", [])) != list(member_ids):
        raise ZooStoreError(f"{where!r}: holds other members than the spec plans for it")
    rows = shard.rows
    need = {"member_id", "shard", "shard_pos", "epoch"}
    if not need <= set(rows.columns):
        raise ZooStoreError(f"{where!r}: its table lacks {sorted(need - set(rows.columns))}")
    expected_pos = rows["member_id"].map({m: i for i, m in enumerate(member_ids)})
    if expected_pos.isna().any() or not (rows["shard"] == index).all() or \
            not (rows["shard_pos"] == expected_pos).all():
        raise ZooStoreError(f"{where!r}: its table's member/shard/position columns do not "
                            "match its tensors")
    epochs = sorted(set(rows["epoch"].astype(int))) if checkpoints is None else checkpoints
    for epoch in epochs:
        for key, shape in _state_dict_shapes(space):
            name = f"e{epoch}/{key}"
            want = (len(member_ids), *shape)
            if name not in tensors or tuple(tensors[name].shape) != want:
                got = tuple(tensors[name].shape) if name in tensors else "nothing"
                raise ZooStoreError(f"{where!r}: tensor {name!r} is {got}, expected {want}")
    return shard


def _state_dict_shapes(space: WeightSpace | ParamSpace) -> list[tuple[str, tuple[int, ...]]]:
    if isinstance(space, ParamSpace):
        return space.state_dict_shapes()
    out = []
    for layer in space.layers:
        out.append((layer.weight_key, layer.weight_shape))
        if layer.has_bias:
            out.append((layer.bias_key, layer.bias_shape))
    return out


def quarantine_shard(root: Path, index: int) -> list[Path]:
    """Move shard ``index``'s files to ``ZOO/damaged/`` (never deleted), so that a rerun of
    ``zoo build`` trains it again. Returns the new paths."""
    folder = root / DAMAGED_DIR
    folder.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for path in shard_paths(root, index):
        if path.exists():
            target = folder / f"{stamp}-{path.name}"
            os.replace(path, target)
            moved.append(target)
    _fsync_dir(root / "shards")
    return moved


def check_shards(root: Path, spec, space: WeightSpace | ParamSpace, plans
                 ) -> tuple[dict[int, ShardRows], dict[int, str], list[int]]:
    """:func:`check_shard` on every planned shard: ``(intact shards, damaged shard -> why,
    shards not built)``."""
    on_disk = set(complete_shards(root, len(plans)))
    good: dict[int, ShardRows] = {}
    damaged: dict[int, str] = {}
    missing: list[int] = []
    for plan in plans:
        if plan.index not in on_disk:
            missing.append(plan.index)
            continue
        checkpoints = spec.member_checkpoints(plan.members[0])
        try:
            good[plan.index] = check_shard(root, plan.index,
                                           [m.member_id for m in plan.members], space,
                                           checkpoints)
        except ZooStoreError as exc:
            damaged[plan.index] = str(exc)
    return good, damaged, missing


def write_shard_index(root: Path, shards: dict[int, ShardRows]) -> None:
    """Write ``index.parquet`` from the tables of ``shards``."""
    tables = [shards[i].rows for i in sorted(shards)]
    write_index(root, Index(pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(),
                            {i: shards[i].rows_sha256 for i in sorted(shards)}))


def verify_zoo(root: str | Path, *, repair: bool = False) -> VerifyReport:
    """Check a whole zoo: the manifest (and its spec against ``spec_hash``), every shard
    (content hashes, members, tensor shapes) and the index against the shards.

    With ``repair``, damaged shards are moved to ``ZOO/damaged/`` (rerun ``zoo build`` to
    train them again) and the index is rewritten from the intact shards, under the zoo's lock.
    """
    from gensight.zoo.build import plan_shards
    from gensight.zoo.spec import ZooSpec

    start = time.perf_counter()
    root = Path(root)
    report = VerifyReport(root)
    if not root.is_dir():
        raise ZooStoreError(f"{str(root)!r} is not a directory")
    manifest = read_manifest(root)
    spec = ZooSpec.from_dict(manifest["spec"])
    space = space_from_dict(manifest["space"])
    plans = plan_shards(spec)
    report.n_shards = len(plans)
    if manifest["n_shards"] != len(plans) or manifest["n_members"] != spec.n_members:
        report.problems["manifest.json"] = (
            f"says {manifest['n_shards']} shards / {manifest['n_members']} members; its spec "
            f"plans {len(plans)} / {spec.n_members}")
        report.seconds = time.perf_counter() - start
        return report
    with zoo_lock(root, "repair") if repair else contextlib.nullcontext():
        good, report.damaged_shards, report.missing_shards = check_shards(root, spec, space,
                                                                          plans)
        report.ok_shards = sorted(good)
        index = read_index(root, len(plans))
        recorded = index.shard_hashes if index.rebuilt is None else {}
        current = {i: s.rows_sha256 for i, s in good.items()}
        if index.rebuilt is not None or recorded != current:
            report.problems["index.parquet"] = index.rebuilt or \
                "does not match the intact shards"
        temporaries = [p.name for folder in (root, root / "shards") if folder.is_dir()
                       for p in folder.glob(f"{TMP_PREFIX}*")]
        if temporaries and not repair:
            report.problems["temporaries"] = f"{len(temporaries)} left by an interrupted write"
        if repair:
            for i in sorted(report.damaged_shards):
                moved = quarantine_shard(root, i)
                report.repaired.append(f"shard {i} moved to {moved[0].parent}" if moved else
                                       f"shard {i} had no files to move")
            if "index.parquet" in report.problems or report.damaged_shards:
                write_shard_index(root, good)
                report.repaired.append("index.parquet rewritten from the intact shards")
            if temporaries:
                remove_temporaries(root)
                report.repaired.append(f"{len(temporaries)} temporary file(s) removed")
    report.seconds = time.perf_counter() - start
    return report
