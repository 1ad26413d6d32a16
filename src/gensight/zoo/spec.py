"""`ZooSpec`: a validated description of a model zoo (TOML file or Python dict).

Example TOML::

    name = "digits-mlp"
    dataset = "digits"
    seed = 0
    configs = 32              # sampled configurations (mode = "random")
    seeds_per_config = 2      # independent runs of each configuration
    mode = "random"           # or "grid": every combination of the listed values
    shard_size = 64           # members trained together and written as one shard
    checkpoints = [0, "final"]
    shifts = ["gaussian_noise", "rotation"]
    severities = [1, 3, 5]
    store_logits = false

    [architecture]
    family = "mlp"            # or "cnn"
    hidden = [32, 32]         # mlp: hidden widths
                              # cnn: channels = [16, 16, 16], kernel_size = 3, stride = 2

    [hparams]                 # a list is a set of choices; a table is a range
    lr = { low = 0.001, high = 0.1, log = true }
    optimizer = ["sgd", "adam", "rmsprop"]
    init_scale = { low = 0.5, high = 1.5 }
    l2 = { low = 1e-6, high = 1e-3, log = true }
    dropout = [0.0, 0.1]
    train_fraction = [0.5, 1.0]
    batch_size = [32]
    epochs = [10]
    activation = ["relu", "tanh"]

Every error names the field at fault and what was expected, and is raised before any
training.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gensight.errors import GensightError


class SpecError(GensightError, ValueError):
    """An invalid zoo spec; the message names the field."""


OPTIMIZERS = ("sgd", "adam", "rmsprop")
ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid", "elu", "leaky_relu", "silu")
FAMILIES = ("mlp", "cnn")

# name -> (type, default choices, validator)
HPARAMS: dict[str, tuple[type, list[Any]]] = {
    "lr": (float, [0.05]),
    "optimizer": (str, ["sgd"]),
    "momentum": (float, [0.9]),
    "init_scale": (float, [1.0]),
    "l2": (float, [0.0]),
    "dropout": (float, [0.0]),
    "train_fraction": (float, [1.0]),
    "batch_size": (int, [32]),
    "epochs": (int, [5]),
    "activation": (str, ["relu"]),
}
# Hyperparameters that change the computation's structure or length: members sharing them
# are trained together in one batched population.
STRUCTURAL = ("optimizer", "activation", "batch_size", "epochs", "train_fraction")

_TOP_KEYS = {"name", "dataset", "seed", "configs", "seeds_per_config", "mode", "shard_size",
             "checkpoints", "shifts", "severities", "store_logits", "architecture", "hparams"}


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def sample(self, rng: np.random.Generator) -> float:
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return int(round(value)) if self.integer else float(value)


@dataclass(frozen=True)
class Architecture:
    family: str
    hidden: tuple[int, ...] = ()
    channels: tuple[int, ...] = ()
    kernel_size: int = 3
    stride: int = 2  # cnn: stride of every conv (the Small CNN Zoo uses 2)

    @property
    def padding(self) -> int:
        """cnn: zero padding of every conv ('same' size at stride 1)."""
        return self.kernel_size // 2

    def conv_output_sizes(self, spatial: tuple[int, ...]) -> list[tuple[int, ...]]:
        """cnn: spatial size after each conv layer, for inputs of size ``spatial``."""
        k, s, p = self.kernel_size, self.stride, self.padding
        sizes = []
        for _ in self.channels:
            spatial = tuple((n + 2 * p - k) // s + 1 for n in spatial)
            sizes.append(spatial)
        return sizes


@dataclass(frozen=True)
class Member:
    """One network of the zoo: a configuration and one of its seeds."""

    member_id: str
    config_id: int
    seed_index: int
    seed: int
    hparams: dict[str, Any] = field(hash=False)

    def group_key(self) -> tuple:
        return tuple(self.hparams[k] for k in STRUCTURAL)


@dataclass(frozen=True)
class ZooSpec:
    name: str
    dataset: str
    architecture: Architecture
    hparams: dict[str, list[Any] | Range] = field(hash=False)
    seed: int = 0
    configs: int = 16
    seeds_per_config: int = 1
    mode: str = "random"
    shard_size: int = 64
    checkpoints: tuple[int | str, ...] = (0, "final")
    shifts: tuple[str, ...] = ()
    severities: tuple[int, ...] = (1, 3, 5)
    store_logits: bool = False
    source: dict = field(default_factory=dict, hash=False, compare=False, repr=False)

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_toml(cls, path: str | Path) -> ZooSpec:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise SpecError(f"spec file {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"spec file {str(path)!r} is not valid TOML: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict) -> ZooSpec:
        """Validate ``data`` (as read from TOML) and build the spec."""
        from gensight.data import DATASETS, SHIFTS

        if not isinstance(data, dict):
            raise SpecError("a zoo spec must be a table (dict)")
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise SpecError(f"unknown field(s) {unknown}; known fields: {sorted(_TOP_KEYS)}")
        for required in ("dataset", "architecture"):
            if required not in data:
                raise SpecError(f"missing required field {required!r}")
        dataset = data["dataset"]
        if dataset not in DATASETS:
            raise SpecError(f"dataset: unknown dataset {dataset!r}; known: {list(DATASETS)}")
        arch = _architecture(data["architecture"], dataset)
        hparams = _hparams(data.get("hparams", {}))
        mode = _choice("mode", data.get("mode", "random"), ("random", "grid"))
        if mode == "grid":
            ranged = [k for k, v in hparams.items() if isinstance(v, Range)]
            if ranged:
                raise SpecError(f"hparams.{ranged[0]}: mode 'grid' needs a list of values, "
                                "not a range")
        shifts = tuple(data.get("shifts", ()))
        for s in shifts:
            if s not in SHIFTS:
                raise SpecError(f"shifts: unknown shift {s!r}; known: {list(SHIFTS)}")
        severities = tuple(data.get("severities", (1, 3, 5)))
        if not severities or any(s not in (1, 2, 3, 4, 5) for s in severities):
            raise SpecError(f"severities: expected values in 1..5, got {list(severities)}")
        checkpoints = tuple(data.get("checkpoints", (0, "final")))
        if not checkpoints or any(
            not (c == "final" or (isinstance(c, int) and not isinstance(c, bool) and c >= 0))
            for c in checkpoints
        ):
            raise SpecError(f"checkpoints: expected epochs >= 0 or 'final', got "
                            f"{list(checkpoints)}")
        spec = cls(
            name=str(data.get("name", f"{dataset}-{arch.family}")),
            dataset=dataset,
            architecture=arch,
            hparams=hparams,
            seed=_int("seed", data.get("seed", 0), 0),
            configs=_int("configs", data.get("configs", 16), 1),
            seeds_per_config=_int("seeds_per_config", data.get("seeds_per_config", 1), 1),
            mode=mode,
            shard_size=_int("shard_size", data.get("shard_size", 64), 1),
            checkpoints=checkpoints,
            shifts=shifts,
            severities=severities,
            store_logits=_bool("store_logits", data.get("store_logits", False)),
            source=data,
        )
        spec.members()  # validates that sampling works
        return spec

    # --- derived --------------------------------------------------------------------------
    def to_json(self) -> str:
        """Canonical JSON of the spec (the zoo manifest stores it)."""
        return json.dumps(self.source, sort_keys=True, default=str)

    def content_hash(self) -> str:
        """Hash of everything that determines the zoo's members and their training."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def members(self) -> list[Member]:
        """All members, in a fixed order (the same for the same spec and seed)."""
        rng = np.random.default_rng([self.seed, 0x5EED])
        if self.mode == "grid":
            names = list(self.hparams)
            configs = [dict(zip(names, combo, strict=True))
                       for combo in itertools.product(*(self.hparams[n] for n in names))]
        else:
            configs = []
            for _ in range(self.configs):
                configs.append({
                    name: (v.sample(rng) if isinstance(v, Range)
                           else v[int(rng.integers(len(v)))])
                    for name, v in self.hparams.items()
                })
        members = []
        for cid, config in enumerate(configs):
            for s in range(self.seeds_per_config):
                seed = int(np.random.default_rng([self.seed, cid, s]).integers(2**31 - 1))
                members.append(Member(f"c{cid:05d}-s{s}", cid, s, seed, config))
        return members

    def checkpoint_epochs(self, epochs: int) -> tuple[int, ...]:
        out = sorted({epochs if c == "final" else int(c) for c in self.checkpoints
                      if c == "final" or int(c) <= epochs})
        return tuple(out)


def _architecture(data: Any, dataset: str) -> Architecture:
    if not isinstance(data, dict):
        raise SpecError("architecture: expected a table with 'family'")
    family = _choice("architecture.family", data.get("family"), FAMILIES)
    allowed = {"family", "hidden"} if family == "mlp" else {
        "family", "channels", "kernel_size", "stride"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise SpecError(f"architecture: unknown field(s) {unknown} for family {family!r}; "
                        f"allowed: {sorted(allowed)}")
    if family == "mlp":
        hidden = data.get("hidden", [32])
        if not isinstance(hidden, list) or any(
                not isinstance(h, int) or h < 1 for h in hidden):
            raise SpecError(f"architecture.hidden: expected a list of positive ints, got "
                            f"{hidden!r}")
        return Architecture("mlp", hidden=tuple(hidden))
    channels = data.get("channels", [16, 16, 16])
    if not isinstance(channels, list) or not channels or any(
            not isinstance(c, int) or c < 1 for c in channels):
        raise SpecError(f"architecture.channels: expected a non-empty list of positive ints, "
                        f"got {channels!r}")
    kernel = _int("architecture.kernel_size", data.get("kernel_size", 3), 1)
    stride = _int("architecture.stride", data.get("stride", 2), 1)
    return Architecture("cnn", channels=tuple(channels), kernel_size=kernel, stride=stride)


def _hparams(data: Any) -> dict[str, list[Any] | Range]:
    if not isinstance(data, dict):
        raise SpecError("hparams: expected a table")
    unknown = sorted(set(data) - set(HPARAMS))
    if unknown:
        raise SpecError(f"hparams: unknown hyperparameter(s) {unknown}; known: "
                        f"{sorted(HPARAMS)}")
    out: dict[str, list[Any] | Range] = {}
    for name, (typ, default) in HPARAMS.items():
        value = data.get(name, default)
        where = f"hparams.{name}"
        if isinstance(value, dict):
            if typ is str:
                raise SpecError(f"{where}: expected a list of choices, not a range")
            extra = sorted(set(value) - {"low", "high", "log"})
            if extra or "low" not in value or "high" not in value:
                raise SpecError(f"{where}: a range needs 'low' and 'high' (and optional 'log')")
            low, high = value["low"], value["high"]
            if not all(isinstance(v, int | float) and not isinstance(v, bool)
                       for v in (low, high)) or low > high:
                raise SpecError(f"{where}: expected numbers with low <= high, got {value!r}")
            if value.get("log") and low <= 0:
                raise SpecError(f"{where}: a log range needs low > 0, got {low!r}")
            rng = Range(float(low), float(high), bool(value.get("log", False)), typ is int)
            for v in (low, high):
                _check_value(name, typ(v))
            out[name] = rng
            continue
        if not isinstance(value, list) or not value:
            raise SpecError(f"{where}: expected a non-empty list of values or a range table, "
                            f"got {value!r}")
        values = []
        for v in value:
            if typ in (int, float) and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise SpecError(f"{where}: expected numbers, got {v!r}")
            if typ is int and float(v) != int(v):
                raise SpecError(f"{where}: expected integers, got {v!r}")
            if typ is str and not isinstance(v, str):
                raise SpecError(f"{where}: expected strings, got {v!r}")
            values.append(_check_value(name, typ(v)))
        out[name] = values
    return out


# hyperparameter -> (valid?, what is expected). Types are checked before these run.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": (lambda v: v > 0, "> 0"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {OPTIMIZERS}"),
    "activation": (lambda v: v in ACTIVATIONS, f"one of {ACTIVATIONS}"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "init_scale": (lambda v: v > 0, "> 0"),
    "l2": (lambda v: v >= 0, ">= 0"),
    "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "epochs": (lambda v: v >= 1, ">= 1"),
}


def _check_value(name: str, v: Any) -> Any:
    valid, expected = _RULES[name]
    if not valid(v):
        raise SpecError(f"hparams.{name}: value {v!r} is invalid; expected {expected}")
    return v


def _choice(where: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SpecError(f"{where}: expected one of {list(choices)}, got {value!r}")
    return value


def _int(where: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{where}: expected true or false, got {value!r}")
    return value
