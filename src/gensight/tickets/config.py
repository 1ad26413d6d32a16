"""The configuration of a tickets zoo (IMP with rewinding, run as a population).

A TOML file (or dict) such as ``examples/tickets/digits.toml``::

    name = "digits-tickets"
    dataset = "digits"
    seed = 0            # init i has seed seed + i
    inits = 640
    shard_size = 128    # inits per shard (the unit of resumption)
    rounds = 15         # IMP rounds: masks m_1 .. m_15
    rate = 0.2          # fraction of the remaining weights pruned per round, per layer
    output_rate = 0.1   # the output layer's rate (default: rate / 2, as Frankle & Carbin)
    random_rounds = [3, 8, 11, 15]   # rounds whose random masks are trained and stored

    [architecture]
    hidden = [32]
    activation = "relu"

    [train]
    optimizer = "adam"
    lr = 0.003
    epochs = 15
    batch_size = 64

Every field has a default; the defaults are the values above (``output_rate`` defaults to
half of ``rate``), except ``name = "tickets"``. ``train.momentum`` (default 0) is SGD's
momentum and must be 0 for Adam and RMSprop; ``random_rounds`` must not repeat a round.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gensight.errors import GensightError


class TicketsConfigError(GensightError):
    """A tickets configuration with a missing, unknown or invalid field."""


_ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid", "elu", "leaky_relu", "silu")
_OPTIMIZERS = ("sgd", "adam", "rmsprop")


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe shared by every IMP round, every baseline and every evaluation."""

    optimizer: str = "adam"
    lr: float = 0.003
    momentum: float = 0.0
    epochs: int = 15
    batch_size: int = 64


@dataclass(frozen=True)
class TicketsConfig:
    """A validated tickets configuration; see the module docstring for the fields."""

    name: str = "tickets"
    dataset: str = "digits"
    seed: int = 0
    inits: int = 640
    shard_size: int = 128
    rounds: int = 15
    rate: float = 0.2
    output_rate: float | None = None  # None: rate / 2 (resolved on construction)
    random_rounds: tuple[int, ...] = (3, 8, 11, 15)
    hidden: tuple[int, ...] = (32,)
    activation: str = "relu"
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.output_rate is None:
            rate = self.rate
            resolved = rate / 2 if isinstance(rate, (int, float)) and not isinstance(
                rate, bool) else None
            object.__setattr__(self, "output_rate", resolved)

    @classmethod
    def from_dict(cls, data: dict) -> TicketsConfig:
        """Validate ``data``; every error names the field at fault in one line."""
        if not isinstance(data, dict):
            raise TicketsConfigError(f"a tickets config is a table; got {type(data).__name__}")
        data = dict(data)
        arch = data.pop("architecture", {})
        train = data.pop("train", {})
        if not isinstance(arch, dict) or not isinstance(train, dict):
            raise TicketsConfigError("'architecture' and 'train' must be tables")
        top = {f for f in cls.__dataclass_fields__ if f not in ("hidden", "activation",
                                                                  "train")}
        for key in data:
            if key not in top:
                raise TicketsConfigError(f"unknown field {key!r}; known fields: "
                                         f"{', '.join(sorted(top | {'architecture', 'train'}))}")
        for key in arch:
            if key not in ("hidden", "activation", "family"):
                raise TicketsConfigError(f"unknown field 'architecture.{key}'; known: family, "
                                         "hidden, activation")
        if arch.get("family", "mlp") != "mlp":
            raise TicketsConfigError(f"architecture.family must be 'mlp' (tickets supports "
                                     f"MLPs); got {arch.get('family')!r}")
        for key in train:
            if key not in TrainConfig.__dataclass_fields__:
                raise TicketsConfigError(f"unknown field 'train.{key}'; known: "
                                         f"{', '.join(TrainConfig.__dataclass_fields__)}")
        d = cls()
        t = TrainConfig()
        cfg = cls(
            name=_typed(data, "name", str, d.name),
            dataset=_typed(data, "dataset", str, d.dataset),
            seed=_typed(data, "seed", int, d.seed),
            inits=_typed(data, "inits", int, d.inits),
            shard_size=_typed(data, "shard_size", int, d.shard_size),
            rounds=_typed(data, "rounds", int, d.rounds),
            rate=_typed(data, "rate", float, d.rate),
            output_rate=_typed(data, "output_rate", float, None),
            random_rounds=tuple(_int_list(data, "random_rounds", d.random_rounds)),
            hidden=tuple(_int_list(arch, "hidden", d.hidden, "architecture.")),
            activation=_typed(arch, "activation", str, d.activation, "architecture."),
            train=TrainConfig(
                optimizer=_typed(train, "optimizer", str, t.optimizer, "train."),
                lr=_typed(train, "lr", float, t.lr, "train."),
                momentum=_typed(train, "momentum", float, t.momentum, "train."),
                epochs=_typed(train, "epochs", int, t.epochs, "train."),
                batch_size=_typed(train, "batch_size", int, t.batch_size, "train."),
            ),
        )
        cfg.validate()
        return cfg

    @classmethod
    def from_toml(cls, path: str | Path) -> TicketsConfig:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise TicketsConfigError(f"cannot read config {str(path)!r}: "
                                     f"{exc.strerror or exc}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TicketsConfigError(f"{str(path)!r} is not valid TOML: {exc}") from None
        return cls.from_dict(data)

    def validate(self) -> None:
        from gensight.data.datasets import DATASETS, SEQUENCE_DATASETS

        images = [d for d in DATASETS if d not in SEQUENCE_DATASETS]
        checks = [
            (self.dataset in images, "dataset", f"one of {', '.join(images)}"),
            (self.inits >= 1, "inits", ">= 1"),
            (self.shard_size >= 1, "shard_size", ">= 1"),
            (self.rounds >= 1, "rounds", ">= 1"),
            (0 < self.rate < 1, "rate", "in (0, 1)"),
            (self.output_rate is not None and 0 <= self.output_rate < 1, "output_rate",
             "in [0, 1)"),
            (all(1 <= r <= self.rounds for r in self.random_rounds), "random_rounds",
             f"rounds in 1..{self.rounds}"),
            (len(set(self.random_rounds)) == len(self.random_rounds), "random_rounds",
             "distinct rounds (no round twice)"),
            (len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden), "architecture.hidden",
             "a non-empty list of positive widths"),
            (self.activation in _ACTIVATIONS, "architecture.activation",
             f"one of {', '.join(_ACTIVATIONS)}"),
            (self.train.optimizer in _OPTIMIZERS, "train.optimizer",
             f"one of {', '.join(_OPTIMIZERS)}"),
            (self.train.lr > 0 and math.isfinite(self.train.lr), "train.lr", "> 0"),
            (0 <= self.train.momentum < 1, "train.momentum", "in [0, 1)"),
            (self.train.momentum == 0 or self.train.optimizer == "sgd", "train.momentum",
             f"0 with train.optimizer {self.train.optimizer!r} (momentum is SGD's only)"),
            (self.train.epochs >= 1, "train.epochs", ">= 1"),
            (self.train.batch_size >= 1, "train.batch_size", ">= 1"),
        ]
        for ok, name, expected in checks:
            if not ok:
                value = _get(self, name)
                raise TicketsConfigError(f"field {name!r} must be {expected}; got {value!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["random_rounds"] = list(self.random_rounds)
        d["architecture"] = {"family": "mlp", "hidden": list(d.pop("hidden")),
                             "activation": d.pop("activation")}
        return d

    def content_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @property
    def seeds(self) -> list[int]:
        """The init seeds, in member order."""
        return [self.seed + i for i in range(self.inits)]


def _get(cfg: TicketsConfig, name: str):
    obj = cfg
    for part in name.replace("architecture.", "").split("."):
        obj = getattr(obj, part)
    return obj


def _typed(data: dict, key: str, typ: type, default, prefix: str = ""):
    if key not in data:
        return default
    value = data[key]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or isinstance(value, bool):
        kind = {int: "an integer", float: "a number", str: "a string"}[typ]
        raise TicketsConfigError(f"field '{prefix}{key}' must be {kind}; got "
                                 f"{value!r:.60}")
    return value


def _int_list(data: dict, key: str, default, prefix: str = "") -> list[int]:
    if key not in data:
        return list(default)
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                              for v in value):
        raise TicketsConfigError(f"field '{prefix}{key}' must be a list of integers; got "
                                 f"{value!r:.60}")
    return value
