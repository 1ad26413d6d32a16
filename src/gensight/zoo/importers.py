"""Import populations of trained networks that gensight did not train into the zoo store.

- :func:`import_checkpoints`: a directory of checkpoints (``*.safetensors``, or ``*.pt`` /
  ``*.pth`` read with ``torch.load(weights_only=True)``; nothing else is ever unpickled) and a
  CSV with one row per checkpoint (a column naming the file, numeric metrics such as
  ``test_acc``, optional hyperparameter columns).
- :func:`import_small_cnn_zoo`: the Small CNN Zoo of Unterthiner et al. (arXiv 2002.11448,
  google-research ``dnn_predict_accuracy``): one 2-D NumPy array (rows = network x checkpoint,
  columns = the flattened parameters), ``layout.csv`` (which columns hold which TensorFlow
  variable, and its shape) and ``metrics.csv(.gz)`` (one row per array row).

The result is an ordinary zoo directory (:class:`~gensight.zoo.Zoo` opens it,
:func:`~gensight.zoo.verify_zoo` checks it, ``gensight predict`` runs on it). It is written into
a temporary sibling directory and renamed into place at the end, so a failed import leaves
nothing behind.

The store's manifest requires a training spec (``read_manifest`` validates it and
``verify_zoo`` plans the shards from it), which an imported zoo does not have. Importers write
a *placeholder* spec: ``configs`` = the number of networks, one seed each, every
hyperparameter at its default, ``checkpoints = ["final"]`` with ``epochs = [1]`` (so every
member's one checkpoint is stored as epoch 1), the family and widths of the imported networks,
and a placeholder dataset. The manifest's ``"imported"`` field records the real origin
(``format``, ``source`` files, the column mapping) and ``"placeholder_spec": true``:
:meth:`Zoo.modules` and commands that load the spec's dataset do not apply to imported zoos.
Members are named ``c00000-s0``, ``c00001-s0``, ... in import order (the names
``plan_shards`` gives the placeholder spec); the table's ``source`` column says which file
(or Small CNN Zoo ``modeldir``) each came from.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from gensight.errors import GensightError
from gensight.weightspace import WeightSpace
from gensight.weightspace.space import LayerSpec
from gensight.zoo.store import (
    FORMAT,
    FORMAT_VERSION,
    TMP_PREFIX,
    ZooStoreError,
    atomic_write_bytes,
    write_shard,
    write_shard_index,
)

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")
IMPORT_EPOCH = 1  # the epoch label of an imported member's one checkpoint
# Columns the importer writes; an input table may not bring its own.
RESERVED = ("member_id", "shard", "shard_pos", "epoch", "is_final", "finite", "source")

Progress = Callable[[int, int], None]


class ZooImportError(ZooStoreError):
    """Input an importer cannot turn into a zoo; the message names the file, row or key."""


# --- writing an imported zoo ------------------------------------------------------------------
def _placeholder_spec(name: str, n: int, shard_size: int, space: WeightSpace):
    """A valid spec whose ``plan_shards`` gives ``n`` members in one structural group, cut
    into shards of ``shard_size`` in order (see the module docstring)."""
    from gensight.zoo.spec import SpecError, ZooSpec

    base = {"name": name, "seed": 0, "configs": n, "seeds_per_config": 1, "mode": "random",
            "shard_size": shard_size, "checkpoints": ["final"], "shifts": [],
            "hparams": {"epochs": [IMPORT_EPOCH]}}
    convs = [layer for layer in space.layers if layer.kind != "linear"]
    hidden = [layer.n_out for layer in space.layers[:-1]]
    candidates = [{**base, "dataset": "digits",
                   "architecture": {"family": "mlp", "hidden": hidden}}]
    if convs:
        k = convs[0].filter_shape[0]
        candidates.insert(0, {**base, "dataset": "mnist5k", "architecture": {
            "family": "cnn", "channels": [c.n_out for c in convs], "kernel_size": k}})
    for data in candidates:
        try:
            return ZooSpec.from_dict(data)
        except SpecError:
            continue
    return ZooSpec.from_dict({**candidates[-1], "architecture": {"family": "mlp", "hidden": []}})


def _zoo_name(out: Path) -> str:
    name = " ".join(out.name.split())[:200]
    return name or "imported"


class _ZooWriter:
    """Writes the shards of an imported zoo into a temporary directory next to ``out`` and
    renames it into place on :meth:`finish`; :meth:`abort` removes it."""

    def __init__(self, out: str | Path, n: int, space: WeightSpace, shard_size: int):
        from gensight.zoo.build import plan_shards

        self.out = Path(out)
        if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise ZooImportError(f"{str(self.out)!r} already exists and is not an empty "
                                 "directory; choose a new --out")
        if shard_size < 1:
            raise ZooImportError(f"shard_size must be at least 1, got {shard_size}")
        parent = self.out.parent
        if not parent.is_dir():
            raise ZooImportError(f"the parent directory of {str(self.out)!r} does not exist")
        self.space = space
        self.spec = _placeholder_spec(_zoo_name(self.out), n, shard_size, space)
        self.plans = plan_shards(self.spec)
        assert sum(len(p.members) for p in self.plans) == n
        self.tmp = parent / f"{TMP_PREFIX}import-{self.out.name}-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        (self.tmp / "shards").mkdir(parents=True)
        self.shards = {}

    def write(self, index: int, states: list[dict[str, Tensor]], rows: pd.DataFrame) -> None:
        """Shard ``index``: its members' state dicts (in plan order) and their table rows."""
        plan = self.plans[index]
        ids = [m.member_id for m in plan.members]
        assert len(states) == len(ids) == len(rows)
        tensors = {f"e{IMPORT_EPOCH}/{key}": torch.stack([sd[key] for sd in states])
                   for key in self.space.state_dict_keys()}
        table = rows.reset_index(drop=True).copy()
        fixed = pd.DataFrame({
            "member_id": ids,
            "epoch": IMPORT_EPOCH,
            "is_final": True,
            "finite": True,
            "shard": index,
            "shard_pos": range(len(ids)),
        })
        for col in fixed.columns:
            table[col] = fixed[col].to_numpy()
        front = ["member_id", "config_id", "seed_index", "source", "epoch", "is_final", "finite",
                 "shard", "shard_pos"]
        table = table[[c for c in front if c in table.columns] +
                      [c for c in table.columns if c not in front]]
        meta = {"member_ids": ids, "checkpoints": [IMPORT_EPOCH], "imported": True}
        self.shards[index] = write_shard(self.tmp, index, tensors, table, meta)

    def finish(self, imported: dict) -> Path:
        import gensight

        write_shard_index(self.tmp, self.shards)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.spec.name,
            "spec": self.spec.to_dict(),
            "spec_hash": self.spec.content_hash(),
            "space": self.space.to_dict(),
            "n_shards": len(self.plans),
            "n_members": self.spec.n_members,
            "shift_fingerprint": None,
            "imported": {**imported, "placeholder_spec": True},
            "versions": {"gensight": gensight.__version__, "torch": torch.__version__,
                         "python": platform.python_version()},
        }
        atomic_write_bytes(self.tmp / "manifest.json",
                           json.dumps(manifest, indent=2, default=str).encode())
        if self.out.exists():
            self.out.rmdir()  # empty (checked in __init__)
        os.rename(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _write_zoo(out, space: WeightSpace, table: pd.DataFrame, shard_size: int,
               load: Callable[[Sequence[int]], list[dict[str, Tensor]]], imported: dict,
               progress: Progress | None):
    """Write the networks ``0 .. len(table)-1`` (``load(positions)`` gives their state dicts)
    with their rows of ``table`` as a zoo at ``out``; returns the opened zoo."""
    from gensight.zoo.store import Zoo

    writer = _ZooWriter(out, len(table), space, shard_size)
    try:
        done = 0
        for plan in writer.plans:
            pos = [m.config_id for m in plan.members]  # config c{i} is network i
            writer.write(plan.index, load(pos), table.iloc[pos])
            done += len(pos)
            if progress is not None:
                progress(done, len(table))
        root = writer.finish(imported)
    except BaseException:
        writer.abort()
        raise
    return Zoo.open(root)


def _finish_table(table: pd.DataFrame, where: str) -> pd.DataFrame:
    """Common columns: ``config_id`` / ``seed_index`` (from the input, or one configuration
    per network), ``gen_gap`` (train_acc - test_acc when both exist), ``optimizer`` and
    ``activation`` ("unknown" when not given; ``zoo info`` groups by them)."""
    table = table.reset_index(drop=True).copy()
    n = len(table)
    for col, default in (("config_id", np.arange(n)), ("seed_index", np.zeros(n, int))):
        if col in table.columns:
            values = pd.to_numeric(table[col], errors="coerce")
            if values.isna().any() or (values != values.round()).any():
                raise ZooImportError(f"{where}: column {col!r} must hold integers")
            table[col] = values.astype("int64")
        else:
            table[col] = default
    if "gen_gap" not in table.columns and {"train_acc", "test_acc"} <= set(table.columns):
        with contextlib.suppress(TypeError, ValueError):
            table["gen_gap"] = (pd.to_numeric(table["train_acc"])
                                - pd.to_numeric(table["test_acc"]))
    if "gen_gap" not in table.columns:
        table["gen_gap"] = np.nan
    for col in ("optimizer", "activation"):
        if col not in table.columns:
            table[col] = "unknown"
    return table


def _check_reserved(columns, where: str) -> None:
    clash = [c for c in columns if c in RESERVED]
    if clash:
        raise ZooImportError(f"{where}: column(s) {clash} are written by the importer; rename "
                             "them")


# --- checkpoints + CSV ------------------------------------------------------------------------
def load_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The state dict in ``path``: ``*.safetensors`` through ``safetensors``, ``*.pt`` /
    ``*.pth`` through ``torch.load(weights_only=True)`` (a pickle that is not weights-only is
    refused; ``{"state_dict": {...}}`` and ``{"model_state_dict": {...}}`` are unwrapped).
    Tensors only, on the CPU."""
    path = Path(path)
    where = f"checkpoint {str(path)!r}"
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ZooImportError(f"{where} is not a readable safetensors file: "
                                 f"{_first_line(exc)}") from None
    elif path.suffix.lower() in (".pt", ".pth"):
        import pickle

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ZooImportError(f"{where} refused: it is not a weights-only checkpoint "
                                 f"(torch.load(weights_only=True): {_first_line(exc)})") from None
        except Exception as exc:  # truncated or not a torch file: several types
            raise ZooImportError(f"{where} cannot be read by torch.load(weights_only=True): "
                                 f"{type(exc).__name__}: {_first_line(exc)}") from None
    else:
        raise ZooImportError(f"{where}: unknown suffix; expected one of {CHECKPOINT_SUFFIXES}")
    for wrapper in ("state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not obj:
        raise ZooImportError(f"{where} does not hold a state dict (a non-empty dict of tensors), "
                             f"got {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise ZooImportError(f"{where}: entry {key!r} is a {type(value).__name__}, not a "
                                 "tensor (save the model's state_dict())")
    return dict(obj)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


_SEQ_KEY = re.compile(r"^(\d+)\.(weight|bias)$")
_KINDS = {2: "linear", 3: "conv1d", 4: "conv2d"}


def infer_space(state_dict: dict[str, Tensor], where: str = "the state dict") -> WeightSpace:
    """The weight space of a plain ``nn.Sequential`` MLP or CNN from its state dict alone:
    keys ``"{index}.weight"`` / ``"{index}.bias"``; a weight of rank 2 is a Linear, 3 a Conv1d,
    4 a Conv2d; convs come first and reach the dense head through global pooling (a dense
    layer's inputs = the last conv's channels). Anything else needs a template module."""
    hint = "; pass a template module (--template) that describes the network"
    layers: dict[int, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        match = _SEQ_KEY.match(key)
        if not match:
            raise ZooImportError(f"{where}: cannot infer the architecture from key {key!r} "
                                 f"(expected plain nn.Sequential keys such as '0.weight'){hint}")
        layers.setdefault(int(match[1]), {})[match[2]] = value
    specs = []
    for idx in sorted(layers):
        parts = layers[idx]
        if "weight" not in parts:
            raise ZooImportError(f"{where}: key '{idx}.bias' has no '{idx}.weight'{hint}")
        w = parts["weight"]
        kind = _KINDS.get(w.dim())
        if kind is None:
            raise ZooImportError(f"{where}: key '{idx}.weight' has shape {tuple(w.shape)}, which "
                                 f"is not a Linear or Conv1d/Conv2d weight{hint}")
        if kind != "linear" and specs and specs[-1].kind == "linear":
            raise ZooImportError(f"{where}: key '{idx}.weight' is a conv after a dense layer"
                                 f"{hint}")
        bias = parts.get("bias")
        if bias is not None and tuple(bias.shape) != (w.shape[0],):
            raise ZooImportError(f"{where}: key '{idx}.bias' has shape {tuple(bias.shape)}, "
                                 f"expected ({w.shape[0]},)")
        try:
            specs.append(LayerSpec(f"{idx}.weight", None if bias is None else f"{idx}.bias",
                                   kind, int(w.shape[0]), int(w.shape[1]),
                                   tuple(int(k) for k in w.shape[2:])))
        except GensightError as exc:
            raise ZooImportError(f"{where}: {exc}{hint}") from None
    try:
        return WeightSpace(tuple(specs))
    except GensightError as exc:
        raise ZooImportError(f"{where}: {exc}{hint}") from None


def _checked_state(sd: dict[str, Tensor], space: WeightSpace, where: str) -> dict[str, Tensor]:
    """``sd`` as float32 tensors in ``space``'s keys; one-line errors naming ``where`` and the
    key for a missing or extra key, a wrong shape, a non-float dtype or NaN/inf values."""
    shapes = {}
    for layer in space.layers:
        shapes[layer.weight_key] = layer.weight_shape
        if layer.bias_key is not None:
            shapes[layer.bias_key] = layer.bias_shape
    missing = [k for k in shapes if k not in sd]
    if missing:
        raise ZooImportError(f"{where}: missing key {missing[0]!r} (expected keys "
                             f"{list(shapes)})")
    extra = [k for k in sd if k not in shapes]
    if extra:
        raise ZooImportError(f"{where}: unexpected key {extra[0]!r} (expected keys "
                             f"{list(shapes)})")
    out = {}
    for key, shape in shapes.items():
        t = sd[key]
        if tuple(t.shape) != shape:
            raise ZooImportError(f"{where}: key {key!r} has shape {tuple(t.shape)}, expected "
                                 f"{shape}")
        if not t.is_floating_point():
            raise ZooImportError(f"{where}: key {key!r} has dtype {t.dtype}, expected floats")
        t = t.detach().to(torch.float32).contiguous()
        if not torch.isfinite(t).all():
            raise ZooImportError(f"{where}: key {key!r} holds NaN or infinite values")
        out[key] = t
    return out


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise ZooImportError(f"{what} {str(path)!r} does not exist") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
            OSError, ValueError, EOFError) as exc:
        raise ZooImportError(f"{what} {str(path)!r} is not a readable CSV: "
                             f"{_first_line(exc)}") from None


def import_checkpoints(ckpt_dir: str | Path, csv_path: str | Path, out: str | Path, *,
                       architecture: nn.Module | None = None, file_column: str = "file",
                       shard_size: int = 256, progress: Progress | None = None):
    """Import a directory of checkpoints with a CSV of their metrics as a zoo at ``out``.

    Args:
        ckpt_dir: holds ``*.safetensors``, ``*.pt`` and ``*.pth`` files (not searched
            recursively); every one needs a CSV row.
        csv_path: one row per checkpoint: ``file_column`` names the file (relative to
            ``ckpt_dir``); every other column is kept in the zoo's table (``test_acc`` for
            ``gensight predict``'s default target; optional integer ``config_id`` /
            ``seed_index`` group seeds of one configuration).
        out: the new zoo directory (must not exist, or be empty).
        architecture: a template module whose :meth:`WeightSpace.from_module` describes the
            checkpoints; default: inferred from the first checkpoint's keys and shapes
            (plain ``nn.Sequential`` MLP/CNN, see :func:`infer_space`).
        shard_size: members per shard.
        progress: called with ``(done, total)`` after each shard.

    Weights are stored as float32 (float32 checkpoints round-trip exactly).

    Raises:
        ZooImportError: a CSV row naming no checkpoint, a checkpoint without a row, a key or
            shape that differs from the first checkpoint's (or the template's), NaN weights, a
            pickle that is not weights-only; one line naming the file and key.
    """
    ckpt_dir, csv_path = Path(ckpt_dir), Path(csv_path)
    if not ckpt_dir.is_dir():
        raise ZooImportError(f"checkpoint directory {str(ckpt_dir)!r} is not a directory")
    files = sorted(p.name for p in ckpt_dir.iterdir()
                   if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES)
    if not files:
        raise ZooImportError(f"{str(ckpt_dir)!r} holds no checkpoints "
                             f"({', '.join('*' + s for s in CHECKPOINT_SUFFIXES)})")
    table = _read_csv(csv_path, "CSV")
    where = f"CSV {str(csv_path)!r}"
    if file_column not in table.columns:
        raise ZooImportError(f"{where} has no column {file_column!r} naming the checkpoint "
                             f"files (columns: {list(table.columns)})")
    if table.empty:
        raise ZooImportError(f"{where} has no rows")
    _check_reserved([c for c in table.columns if c != file_column], where)
    names: list[str] = []
    first_row: dict[str, int] = {}
    file_set = set(files)
    for i, value in enumerate(table[file_column]):
        row = f"{where} row {i + 2}"  # row 1 is the header
        if not isinstance(value, str) or not value.strip():
            raise ZooImportError(f"{row}: column {file_column!r} is empty")
        name = value.strip()
        if name not in file_set:
            raise ZooImportError(f"{row} names {name!r}, which is not a checkpoint in "
                                 f"{str(ckpt_dir)!r}")
        if name in first_row:
            raise ZooImportError(f"{row} names {name!r} a second time (first in row "
                                 f"{first_row[name] + 2})")
        first_row[name] = i
        names.append(name)
    unlisted = sorted(set(files) - set(names))
    if unlisted:
        raise ZooImportError(f"checkpoint {str(ckpt_dir / unlisted[0])!r} has no row in {where}"
                             + (f" ({len(unlisted) - 1} more without one)"
                                if len(unlisted) > 1 else ""))
    if architecture is not None:
        try:
            space = WeightSpace.from_module(architecture)
        except GensightError as exc:
            raise ZooImportError(f"template module: {exc}") from None
        described = "template module"
    else:
        first = ckpt_dir / names[0]
        space = infer_space(load_checkpoint(first), f"checkpoint {str(first)!r}")
        described = "inferred from the state dict (plain nn.Sequential)"
    table = table.drop(columns=[file_column])
    table.insert(0, "source", names)
    table = _finish_table(table, where)

    def load(positions: Sequence[int]) -> list[dict[str, Tensor]]:
        out_states = []
        for p in positions:
            path = ckpt_dir / names[p]
            out_states.append(_checked_state(load_checkpoint(path), space,
                                             f"checkpoint {str(path)!r}"))
        return out_states

    imported = {"format": "checkpoints",
                "source": {"dir": str(ckpt_dir.resolve()), "csv": str(csv_path.resolve()),
                           "file_column": file_column},
                "space_from": described}
    return _write_zoo(out, space, table, shard_size, load, imported, progress)


# --- the Small CNN Zoo ------------------------------------------------------------------------
@dataclass(frozen=True)
class LayoutColumns:
    """Column names of the Small CNN Zoo's ``layout.csv``: the TensorFlow variable's name, its
    shape (e.g. ``"(3, 3, 1, 16)"``) and its ``[start, end)`` columns in the weight matrix.

    The README of ``dnn_predict_accuracy`` documents the file (it "maps the individual columns
    of the matrices to the corresponding layers") but not its column names; these defaults are
    the names the file is known to use, and can be changed if a copy differs."""

    name: str = "varname"
    shape: str = "shape"
    start: str = "start_idx"
    end: str = "end_idx"


# metrics.csv(.gz) column -> zoo table column; "config.X" becomes "X".
METRIC_COLUMNS = {"test_accuracy": "test_acc", "train_accuracy": "train_acc"}


@dataclass(frozen=True)
class _Variable:
    name: str
    shape: tuple[int, ...]
    start: int
    end: int


def _parse_layout(path: Path, cols: LayoutColumns, n_columns: int) -> list[_Variable]:
    layout = _read_csv(path, "layout")
    where = f"layout {str(path)!r}"
    missing = [c for c in (cols.name, cols.shape, cols.start, cols.end)
               if c not in layout.columns]
    if missing:
        raise ZooImportError(f"{where} lacks the column(s) {missing} (columns: "
                             f"{list(layout.columns)}; set the layout column names)")
    variables = []
    for i, row in enumerate(layout.itertuples(index=False)):
        rec = dict(zip(layout.columns, row, strict=True))
        name, text = str(rec[cols.name]), str(rec[cols.shape])
        try:
            shape = tuple(int(d) for d in re.findall(r"-?\d+", text))
            start, end = int(rec[cols.start]), int(rec[cols.end])
        except (TypeError, ValueError):
            raise ZooImportError(f"{where} row {i + 2} ({name!r}): shape {text!r} and "
                                 f"start/end must be integers") from None
        if not shape or any(d < 1 for d in shape) or end - start != math.prod(shape):
            raise ZooImportError(f"{where} row {i + 2} ({name!r}): shape {text!r} has "
                                 f"{math.prod(shape) if shape else 0} values but columns "
                                 f"{start}:{end} hold {end - start}")
        variables.append(_Variable(name, shape, start, end))
    variables.sort(key=lambda v: v.start)
    pos = 0
    for v in variables:
        if v.start != pos:
            raise ZooImportError(f"{where}: variable {v.name!r} starts at column {v.start}, "
                                 f"expected {pos} (the layout must cover the columns without "
                                 "gaps or overlaps)")
        pos = v.end
    if pos != n_columns:
        raise ZooImportError(f"{where} covers {pos} columns; the weight matrix has {n_columns}")
    return variables


def small_cnn_module(space: WeightSpace, activation: str = "relu", *, stride: int = 2,
                     padding: int | str = 1) -> nn.Sequential:
    """A torch network of ``space`` (convs, each followed by ``activation``, global average
    pooling, flatten, dense layers with ``activation`` between them) whose state-dict keys are
    ``space``'s, for loading imported Small CNN Zoo members (``WeightBatch.to_modules``).

    The Small CNN Zoo's convs use stride 2 and TensorFlow 'same' padding, which pads
    asymmetrically on even inputs; give ``padding`` accordingly if you evaluate them on data."""
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "elu": nn.ELU,
            "gelu": nn.GELU, "silu": nn.SiLU, "linear": nn.Identity, "identity": nn.Identity}
    if activation not in acts:
        raise ZooImportError(f"unknown activation {activation!r}; known: {sorted(acts)}")
    return _sequential(space, acts[activation], stride, padding)


def _sequential(space: WeightSpace, act, stride: int, padding) -> nn.Sequential:
    modules: list[nn.Module] = []
    convs = [layer for layer in space.layers if layer.kind != "linear"]
    dense = [layer for layer in space.layers if layer.kind == "linear"]
    for layer in convs:
        conv = nn.Conv2d if layer.kind == "conv2d" else nn.Conv1d
        modules += [conv(layer.n_in, layer.n_out, layer.filter_shape, stride=stride,
                         padding=padding, bias=layer.has_bias), act()]
    if convs:
        pool = nn.AdaptiveAvgPool2d(1) if convs[-1].kind == "conv2d" else nn.AdaptiveAvgPool1d(1)
        modules += [pool, nn.Flatten()]
    for i, layer in enumerate(dense):
        modules.append(nn.Linear(layer.n_in, layer.n_out, bias=layer.has_bias))
        if i < len(dense) - 1:
            modules.append(act())
    return nn.Sequential(*modules)


def _small_cnn_space(variables: list[_Variable], where: str
                     ) -> tuple[WeightSpace, list[tuple[str, _Variable, str]]]:
    """The torch weight space of the TF variables and, per variable, ``(torch key, variable,
    kind)`` with kind "conv" (HWIO kernel), "dense" ((in, out) kernel) or "bias"."""
    layers: list[tuple[_Variable, _Variable | None]] = []
    for v in variables:
        if len(v.shape) == 1:
            if not layers or layers[-1][1] is not None:
                raise ZooImportError(f"{where}: bias {v.name!r} follows no kernel")
            kernel = layers[-1][0]
            if v.shape[0] != kernel.shape[-1]:
                raise ZooImportError(f"{where}: bias {v.name!r} has {v.shape[0]} values; kernel "
                                     f"{kernel.name!r} has {kernel.shape[-1]} outputs")
            layers[-1] = (kernel, v)
        elif len(v.shape) in (2, 4):
            if len(v.shape) == 4 and layers and len(layers[-1][0].shape) == 2:
                raise ZooImportError(f"{where}: conv kernel {v.name!r} follows a dense layer")
            layers.append((v, None))
        else:
            raise ZooImportError(f"{where}: variable {v.name!r} has shape {v.shape}; expected a "
                                 "conv kernel (H, W, in, out), a dense kernel (in, out) or a "
                                 "bias")
    if not layers:
        raise ZooImportError(f"{where} describes no layers")
    specs, mapping = [], []
    # keys of _sequential: conv i at 2 i; then pool, flatten; dense layers every 2 after that
    n_conv = sum(1 for k, _ in layers if len(k.shape) == 4)
    dense_start = 2 * n_conv + (2 if n_conv else 0)
    for i, (kernel, bias) in enumerate(layers):
        if len(kernel.shape) == 4:
            h, w, c_in, c_out = kernel.shape
            idx, kind, filt = 2 * i, "conv", (h, w)
        else:
            (c_in, c_out), filt = kernel.shape, ()
            idx, kind = dense_start + 2 * (i - n_conv), "dense"
        spec = LayerSpec(f"{idx}.weight", None if bias is None else f"{idx}.bias",
                         "conv2d" if kind == "conv" else "linear", c_out, c_in, filt)
        specs.append(spec)
        mapping.append((spec.weight_key, kernel, kind))
        if bias is not None:
            mapping.append((f"{idx}.bias", bias, "bias"))
    try:
        space = WeightSpace(tuple(specs))
    except GensightError as exc:
        raise ZooImportError(f"{where}: the layers do not chain: {exc}") from None
    return space, mapping


def tf_to_torch(values: np.ndarray, variable_shape: tuple[int, ...], kind: str) -> np.ndarray:
    """Values of one TF variable (a batch of flattened rows, ``(n, size)``, C order) in torch
    layout: conv kernels HWIO -> OIHW, dense kernels (in, out) -> (out, in), biases as is."""
    n = values.shape[0]
    arr = values.reshape(n, *variable_shape)
    if kind == "conv":
        return arr.transpose(0, 4, 3, 1, 2)
    if kind == "dense":
        return arr.transpose(0, 2, 1)
    return arr


def import_small_cnn_zoo(weights_npy: str | Path, layout_csv: str | Path,
                         metrics_csv: str | Path, out: str | Path, *,
                         checkpoint: str | int = "final",
                         layout_columns: LayoutColumns = LayoutColumns(),
                         shard_size: int = 1024, progress: Progress | None = None):
    """Import (one checkpoint of each network of) a Small CNN Zoo collection as a zoo.

    Args:
        weights_npy: ``weights.npy``: ``(rows, parameters)`` floats, one row per network and
            checkpoint (memory-mapped; object arrays are refused, nothing is unpickled).
        layout_csv: ``layout.csv``: one row per TF variable (see :class:`LayoutColumns`).
        metrics_csv: ``metrics.csv(.gz)``: one row per weight row; ``test_accuracy`` /
            ``train_accuracy`` become ``test_acc`` / ``train_acc``, ``config.X`` becomes
            ``X``, ``modeldir`` (the network) becomes ``source``; others are kept.
        checkpoint: ``"final"``: each network's row with the largest ``step`` (or every row
            when the table has no ``modeldir``); an int: the rows whose ``step`` equals it.
        shard_size: members per shard.

    The TF variables map onto :func:`small_cnn_module` (convs at keys ``0``, ``2``, ...,
    global pooling, dense layers): conv kernels HWIO -> OIHW, dense kernels transposed.

    Raises:
        ZooImportError: a layout that does not cover the matrix or does not chain, a metrics
            table of another length, NaN/inf weights (naming the row and ``modeldir``).
    """
    weights_npy, layout_csv, metrics_csv = map(Path, (weights_npy, layout_csv, metrics_csv))
    try:
        weights = np.load(weights_npy, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise ZooImportError(f"weights {str(weights_npy)!r} do not exist") from None
    except (ValueError, OSError, EOFError) as exc:
        raise ZooImportError(f"weights {str(weights_npy)!r} refused: not a plain NumPy array "
                             f"file ({_first_line(exc)})") from None
    if not isinstance(weights, np.ndarray) or weights.ndim != 2 or \
            weights.dtype.kind != "f":
        raise ZooImportError(f"weights {str(weights_npy)!r}: expected a 2-D float array "
                             f"(networks x parameters), got {getattr(weights, 'shape', '?')} "
                             f"{getattr(weights, 'dtype', '')}")
    where = f"layout {str(layout_csv)!r}"
    variables = _parse_layout(layout_csv, layout_columns, weights.shape[1])
    space, mapping = _small_cnn_space(variables, where)
    metrics = _read_csv(metrics_csv, "metrics")
    mwhere = f"metrics {str(metrics_csv)!r}"
    if len(metrics) != weights.shape[0]:
        raise ZooImportError(f"{mwhere} has {len(metrics)} rows; the weight matrix has "
                             f"{weights.shape[0]} (one metrics row per weight row)")
    if isinstance(checkpoint, str) and checkpoint != "final":
        try:
            checkpoint = int(checkpoint)
        except ValueError:
            raise ZooImportError(f"checkpoint must be 'final' or a step (an integer), got "
                                 f"{checkpoint!r}") from None
    rows = _select_checkpoints(metrics, checkpoint, mwhere)
    if not len(rows):
        raise ZooImportError(f"{mwhere}: no row is checkpoint {checkpoint!r}")
    table = metrics.iloc[rows].rename(columns=METRIC_COLUMNS)
    table = table.rename(columns={c: c[len("config."):] for c in table.columns
                                  if c.startswith("config.")})
    if "modeldir" in table.columns:
        table = table.rename(columns={"modeldir": "source"})
    else:
        table["source"] = [f"row {r}" for r in rows]
    dup = table.columns[table.columns.duplicated()].tolist()
    if dup:
        raise ZooImportError(f"{mwhere}: column(s) {dup} appear twice after renaming")
    _check_reserved([c for c in table.columns if c != "source"], mwhere)
    table.insert(1, "npy_row", np.asarray(rows, dtype=np.int64))
    table = _finish_table(table, mwhere)
    sources = table["source"].tolist()

    def load(positions: Sequence[int]) -> list[dict[str, Tensor]]:
        block = np.asarray(weights[[rows[p] for p in positions]], dtype=np.float32)
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ZooImportError(f"weights {str(weights_npy)!r} row {rows[positions[k]]} "
                                 f"({sources[positions[k]]}) holds NaN or infinite values")
        per_key = {key: torch.from_numpy(np.ascontiguousarray(
                       tf_to_torch(block[:, v.start:v.end], v.shape, kind)))
                   for key, v, kind in mapping}
        return [{key: t[j] for key, t in per_key.items()} for j in range(len(positions))]

    imported = {"format": "small-cnn-zoo",
                "source": {"weights": str(weights_npy.resolve()),
                           "layout": str(layout_csv.resolve()),
                           "metrics": str(metrics_csv.resolve())},
                "checkpoint": checkpoint,
                "layout_columns": vars(layout_columns),
                "variables": {key: {"tf_name": v.name, "tf_shape": list(v.shape), "kind": kind}
                              for key, v, kind in mapping},
                "module": "gensight.zoo.importers.small_cnn_module"}
    return _write_zoo(out, space, table, shard_size, load, imported, progress)


def _select_checkpoints(metrics: pd.DataFrame, checkpoint: str | int, where: str) -> list[int]:
    """Positions of the weight rows to import, in file order."""
    has_step = "step" in metrics.columns
    if checkpoint == "final":
        if "modeldir" not in metrics.columns:
            return list(range(len(metrics)))
        if not has_step:
            if metrics["modeldir"].duplicated().any():
                raise ZooImportError(f"{where}: networks ('modeldir') have several rows but "
                                     "there is no 'step' column to find the final one")
            return list(range(len(metrics)))
        steps = pd.to_numeric(metrics["step"], errors="coerce")
        if steps.isna().any():
            raise ZooImportError(f"{where}: column 'step' must hold numbers")
        last = steps.groupby(metrics["modeldir"], sort=False).transform("max")
        chosen = np.flatnonzero((steps == last).to_numpy())
        picked = metrics.iloc[chosen]
        if picked["modeldir"].duplicated().any():
            name = picked.loc[picked["modeldir"].duplicated(), "modeldir"].iloc[0]
            raise ZooImportError(f"{where}: network {name!r} has its final step twice")
        return chosen.tolist()
    if not has_step:
        raise ZooImportError(f"{where} has no 'step' column to select checkpoint {checkpoint}")
    steps = pd.to_numeric(metrics["step"], errors="coerce")
    chosen = np.flatnonzero((steps == int(checkpoint)).to_numpy()).tolist()
    if "modeldir" in metrics.columns and metrics.iloc[chosen]["modeldir"].duplicated().any():
        raise ZooImportError(f"{where}: a network has step {checkpoint} twice")
    return chosen
