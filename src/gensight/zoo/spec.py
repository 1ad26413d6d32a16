"""`ZooSpec`: a validated description of a model zoo (TOML file or Python dict).

Example TOML::

    name = "digits-mlp"       # default: "{dataset}-{family}"; renaming keeps the hash
    dataset = "digits"        # "digits", "mnist5k" or "mnist1d"
    seed = 0
    configs = 32              # sampled configurations (mode = "random"); in mode "grid" it
                              # is the number of combinations and may be left out
    seeds_per_config = 2      # independent runs of each configuration
    mode = "random"           # or "grid": every combination of the listed values
    shard_size = 64           # members trained together and written as one shard
    checkpoints = [0, "final"]  # epochs whose weights are stored (0 = initialization)
    shifts = ["gaussian_noise", "rotation"]  # shifted test sets, in this order
    severities = [1, 3, 5]    # of every shift, in this order
    store_logits = false
    stop_loss = 0.01          # optional: a member stops once its training cross-entropy is
                              # <= this at the end of an epoch (arXiv 1912.02178's stopping
                              # rule); hparams.epochs is then the cap. Default: no stop

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

A SIREN zoo (``family = "siren"``) holds one implicit neural representation per image and
fit instead of trained classifiers (see :mod:`gensight.zoo.siren`)::

    name = "digits-siren"
    dataset = "digits"        # images: "digits" (8x8), "mnist5k" (28x28), "mnist5k@14"
                              # (mnist5k 2x2-average-pooled to 14x14)
    seed = 0
    shard_size = 512          # members fitted together (one fit_sirens call) per shard

    [architecture]
    family = "siren"
    hidden = [32, 32]         # 2 -> 32 -> 32 -> 1, sin(omega_0 (W x + b)) after each hidden layer
    omega_0 = 30.0

    [siren]                   # required for family "siren" (an empty table takes the defaults)
    fits_per_image = 5        # default 1: 1 + augmentation copies (re-fits from other inits)
    steps = 300               # default 300: at most this many full-batch Adam steps per member
    lr = 0.001                # default 0.001
    target_psnr = 40.0        # optional per-member early stop (dB); default: none
    images = 0                # default 0 = every image of the dataset (all splits); n > 0 =
                              # the first n of the zoo's image order (for tiny zoos)

Members are ``images x fits_per_image``. The dataset's own train/val/test split is kept: every
member records its image's ``split`` and ``image_index`` (the index within that split), so all
fits of an image share its split. The zoo's image order interleaves the three splits in
proportion to their sizes (image ``p`` of a split of ``n`` images sorts at ``(p + 1/2) / n``;
ties: train, val, test), so the first ``images`` images of a tiny zoo come from every split
in the dataset's 60/20/20 proportion. ``configs``, ``seeds_per_config``, ``mode``,
``hparams``, ``checkpoints``, ``shifts``, ``severities`` and ``store_logits`` do not apply to a
SIREN zoo and are errors there; ``[siren]`` is an error for ``mlp`` and ``cnn``.

Two more families (:mod:`gensight.zoo.families`) take the classifier fields above; their
weight space is stored as a :class:`~gensight.weightspace.ParamSpace`::

    dataset = "arith"         # the sequence task of gensight.data.arith ("a+b=" -> "c.")
    [architecture]
    family = "gru"            # one-hot characters -> nn.GRU -> linear readout
    hidden = [32]             # one entry per GRU layer (the layers share one width)

    dataset = "digits"        # any 2-D image set
    [architecture]
    family = "rescnn"         # stem conv, residual blocks, global pooling, linear head
    channels = 16             # width of the stem and of every block
    blocks = 2                # residual blocks h <- act(h + conv2(act(conv1(h))))
    kernel_size = 3
    stride = 2                # of the stem

Neither has dropout or ``stop_loss``; a GRU's activation is its own (``tanh``) and it has no
shifted test sets or stored logits (its accuracies are success rates: exact answers).

Rules, all checked by :meth:`ZooSpec.from_dict` before anything is trained or written:

- every field has its type: ``name`` a non-empty one-line string; ``dataset`` and ``mode``
  strings; ``seed``, ``configs``, ``seeds_per_config``, ``shard_size``, severities, widths,
  ``kernel_size``, ``stride``, ``batch_size`` and ``epochs`` integers (not booleans, not
  floats, at most 2**63 - 1); lists are lists (``shifts = "fog"`` is an error, write
  ``["fog"]``); numbers are finite.
- no list of choices (hparams, shifts, severities, checkpoints) names a value twice.
- the spec fits its dataset: a shift must apply to the dataset's inputs (``rotation`` needs
  images; ``fog`` and ``shot_noise`` need a known value range, which ``mnist1d`` lacks); a CNN's
  ``kernel_size`` and ``stride`` are at most the input's side; ``batch_size`` is at most the
  number of training examples; every member stores at least one checkpoint, and every listed
  checkpoint epoch is reached by some member.

Every error is one line that names the field (or file) at fault, the value and what was
expected.

:meth:`ZooSpec.to_dict` is the normalized spec (every default filled in, checkpoints sorted,
integer hyperparameters as ints, float ones as floats); :meth:`ZooSpec.content_hash` hashes it
without the name. :meth:`ZooSpec.size_estimate` and :meth:`ZooSpec.check_size` judge the cost
of a spec without listing its members.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from gensight.errors import GensightError


class SpecError(GensightError, ValueError):
    """An invalid zoo spec; the message names the field."""


OPTIMIZERS = ("sgd", "adam", "rmsprop")
ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid", "elu", "leaky_relu", "silu")
FAMILIES = ("mlp", "cnn", "siren", "gru", "rescnn")
# Families whose weight space is a ParamSpace (gensight.zoo.families), not a WeightSpace.
PARAM_FAMILIES = ("gru", "rescnn")
SPLITS = ("train", "val", "test")

# name -> (type, default choices). The order is the sampling order of ``members()``: keep it.
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
             "checkpoints", "shifts", "severities", "store_logits", "architecture", "hparams",
             "siren", "stop_loss"}
# Fields of classifier zoos that a SIREN zoo has no use for (an error there), with a hint.
_NOT_SIREN = {
    "configs": "one member per image and fit: use siren.images and siren.fits_per_image",
    "seeds_per_config": "use siren.fits_per_image for re-fits of an image",
    "mode": "members are the images x fits, nothing is sampled",
    "hparams": "the fitting recipe is the [siren] table",
    "checkpoints": "the final weights are stored",
    "shifts": "SIRENs are not evaluated on shifted test sets",
    "severities": "SIRENs are not evaluated on shifted test sets",
    "store_logits": "SIRENs have no logits",
    "stop_loss": "a SIREN fit stops at siren.target_psnr",
}
_SIREN_KEYS = ("fits_per_image", "steps", "lr", "target_psnr", "images")
_SIREN_DEFAULTS: dict[str, Any] = {"fits_per_image": 1, "steps": 300, "lr": 1e-3,
                                   "target_psnr": None, "images": 0}
_DEFAULTS: dict[str, Any] = {"seed": 0, "configs": 16, "seeds_per_config": 1,
                             "mode": "random", "shard_size": 64,
                             "checkpoints": [0, "final"], "shifts": [],
                             "severities": [1, 3, 5], "store_logits": False}

INT_MAX = 2**63 - 1  # what TOML can write; larger ints overflow NumPy and PyTorch
MAX_NAME = 200
MAX_EXPANDED = 10_000_000  # members() refuses specs with more members than this

# check_size: a spec is "very large" beyond any of these.
LARGE_MEMBERS = 100_000
LARGE_EPOCHS = 10_000
LARGE_WIDTH = 100_000
LARGE_SECONDS = 30 * 86_400
LARGE_DISK_BYTES = 10**12
ASSUMED_FLOPS = 2e10  # FLOP/s of population training on a 2-core CPU (benchmarks/README.md)
# Families that reach less: a GRU population runs T small matmuls per step (measured:
# benchmarks/specs/arith-gru.toml at 1,600 width-32 GRUs, 30 epochs, batch 16-64, one thread:
# 703 s, ~7e9 FLOP/s as counted here). Residual CNNs under vmap reach about ASSUMED_FLOPS
# (benchmarks/specs/digits-rescnn.toml: 384 members in 25 s).
FAMILY_FLOPS = {"gru": 7e9}
# SIREN fits (fit_sirens) on the 2-core dev CPU: a member-step costs SIREN_STEP_SECONDS plus
# pixels x (6 x forward MACs + 2 x hidden units x SINE_FLOPS) / SIREN_ASSUMED_FLOPS. The two
# constants fit two measurements of a 2-32-32-1 SIREN (9,280 FLOPs per pixel): the pilot's
# ~47 us per member-step at 14x14 (no early stop) and examples/digits-siren.toml's 27.5 us at
# 8x8 (11.4 s for 414,827 member-steps, 18 shards of 512, early stop at 40 dB).
SIREN_ASSUMED_FLOPS = 6.3e10
SIREN_STEP_SECONDS = 18e-6
SINE_FLOPS = 20
LARGE_SIREN_STEPS = 100_000


# --- datasets, without loading them -----------------------------------------------------------
@dataclass(frozen=True)
class DatasetShape:
    """What validation and size estimates need to know of a dataset."""

    input_shape: tuple[int, ...]  # one example, e.g. (1, 8, 8)
    n_classes: int
    n_train: int
    n_val: int
    n_test: int
    bounded: bool  # inputs have a known value range (images in [0, 1])

    @property
    def spatial(self) -> tuple[int, ...]:
        return self.input_shape[1:]

    def describe(self) -> str:
        """The input's spatial size, e.g. "8x8" or "length-40"."""
        if len(self.spatial) == 1:
            return f"length-{self.spatial[0]}"
        return "x".join(map(str, self.spatial))


# The fixed splits of gensight.data (tests/zoo/test_spec.py checks them against
# load_dataset), so that a spec is validated without loading its data.
_DATASET_SHAPES = {
    "digits": DatasetShape((1, 8, 8), 10, 1078, 359, 360, True),
    "mnist5k": DatasetShape((1, 28, 28), 10, 3000, 1000, 1000, True),
    "mnist1d": DatasetShape((1, 40), 10, 3000, 1000, 1000, False),
    "arith": DatasetShape((8,), 13, 600, 200, 200, False),
}


# Image sets of SIREN zoos: name -> (gensight dataset, average-pooling factor).
SIREN_DATASETS: dict[str, tuple[str, int]] = {
    "digits": ("digits", 1), "mnist5k": ("mnist5k", 1), "mnist5k@14": ("mnist5k", 2)}


@functools.cache
def dataset_shape(name: str) -> DatasetShape:
    """Input shape, classes and split sizes of dataset ``name``, from a table (a dataset not
    in it is loaded once). Pooled SIREN image sets (``"mnist5k@14"``) have their base
    dataset's splits and the pooled side."""
    if name in SIREN_DATASETS and SIREN_DATASETS[name][1] != 1:
        base, factor = SIREN_DATASETS[name]
        info = dataset_shape(base)
        pooled = (info.input_shape[0], *(n // factor for n in info.spatial))
        return DatasetShape(pooled, info.n_classes, info.n_train, info.n_val, info.n_test,
                            info.bounded)
    if name in _DATASET_SHAPES:
        return _DATASET_SHAPES[name]
    from gensight.data import load_dataset

    ds = load_dataset(name)
    return DatasetShape(ds.input_shape, ds.n_classes, len(ds.y_train), len(ds.y_val),
                        len(ds.y_test), ds.value_range is not None)


# --- the spec -----------------------------------------------------------------------------
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

    def mean(self) -> float:
        """Expected value of a sample (ignoring the rounding of integer ranges)."""
        if self.log and self.high > self.low:
            return (self.high - self.low) / math.log(self.high / self.low)
        return (self.low + self.high) / 2

    def to_dict(self) -> dict[str, Any]:
        if self.integer:
            return {"low": int(self.low), "high": int(self.high), "log": self.log}
        return {"low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class Architecture:
    family: str
    hidden: tuple[int, ...] = ()
    channels: tuple[int, ...] = ()
    kernel_size: int = 3
    stride: int = 2  # cnn: stride of every conv (the Small CNN Zoo uses 2)
    omega_0: float = 30.0  # siren: sin(omega_0 * (W x + b)) after every hidden layer
    blocks: int = 0  # rescnn: residual blocks after the stem

    @property
    def padding(self) -> int:
        """cnn: zero padding of every conv ('same' size at stride 1)."""
        return self.kernel_size // 2

    @property
    def widths(self) -> tuple[int, ...]:
        """Hidden widths (mlp, siren, gru) or channel counts (cnn, rescnn)."""
        return self.channels if self.family in ("cnn", "rescnn") else self.hidden

    def conv_output_sizes(self, spatial: tuple[int, ...]) -> list[tuple[int, ...]]:
        """cnn: spatial size after each conv layer, for inputs of size ``spatial``."""
        k, s, p = self.kernel_size, self.stride, self.padding
        sizes = []
        for _ in self.channels:
            spatial = tuple((n + 2 * p - k) // s + 1 for n in spatial)
            sizes.append(spatial)
        return sizes

    def n_params(self, input_shape: tuple[int, ...], n_classes: int) -> int:
        """Parameters (weights and biases) of the network ``build_model`` makes (siren: of
        the 2 -> hidden -> 1 SIREN; ``input_shape`` and ``n_classes`` are not used)."""
        if self.family in PARAM_FAMILIES:
            from gensight.zoo.families import n_params

            return n_params(self, input_shape, n_classes)
        if self.family == "siren":
            widths = [2, *self.hidden, 1]
            return sum(a * b + b for a, b in itertools.pairwise(widths))
        if self.family == "mlp":
            widths = [math.prod(input_shape), *self.hidden, n_classes]
            return sum(a * b + b for a, b in itertools.pairwise(widths))
        k = self.kernel_size ** (len(input_shape) - 1)
        chans = [input_shape[0], *self.channels]
        conv = sum(a * b * k + b for a, b in itertools.pairwise(chans))
        return conv + chans[-1] * n_classes + n_classes

    def forward_macs(self, input_shape: tuple[int, ...], n_classes: int) -> int:
        """Multiply-accumulates of one example's forward pass (siren: of one pixel; gru: of
        a whole sequence)."""
        if self.family in PARAM_FAMILIES:
            from gensight.zoo.families import forward_macs

            return forward_macs(self, input_shape, n_classes)
        if self.family == "siren":
            widths = [2, *self.hidden, 1]
            return sum(a * b for a, b in itertools.pairwise(widths))
        if self.family == "mlp":
            widths = [math.prod(input_shape), *self.hidden, n_classes]
            return sum(a * b for a, b in itertools.pairwise(widths))
        k = self.kernel_size ** (len(input_shape) - 1)
        chans = [input_shape[0], *self.channels]
        sizes = self.conv_output_sizes(tuple(input_shape[1:]))
        conv = sum(a * b * k * math.prod(sp)
                   for (a, b), sp in zip(itertools.pairwise(chans), sizes, strict=True))
        return conv + chans[-1] * n_classes

    def to_dict(self) -> dict[str, Any]:
        if self.family == "mlp":
            return {"family": "mlp", "hidden": list(self.hidden)}
        if self.family == "siren":
            return {"family": "siren", "hidden": list(self.hidden), "omega_0": self.omega_0}
        if self.family == "gru":
            return {"family": "gru", "hidden": list(self.hidden)}
        if self.family == "rescnn":
            return {"family": "rescnn", "channels": self.channels[0], "blocks": self.blocks,
                    "kernel_size": self.kernel_size, "stride": self.stride}
        return {"family": "cnn", "channels": list(self.channels),
                "kernel_size": self.kernel_size, "stride": self.stride}


@dataclass(frozen=True)
class Member:
    """One network of the zoo: a configuration and one of its seeds.

    In a SIREN zoo a member is one fit of one image: ``config_id`` is the image's position in
    the zoo's image order (the table's ``image_id``), ``seed_index`` the fit (``fit_index``),
    ``split`` and ``image_index`` say which image (``load_dataset(...).split(split)[0]
    [image_index]``), and ``hparams`` holds the fitting recipe (steps, lr, target_psnr).
    """

    member_id: str
    config_id: int
    seed_index: int
    seed: int
    hparams: dict[str, Any] = field(hash=False)
    split: str | None = None  # siren: the image's split, "train", "val" or "test"
    image_index: int | None = None  # siren: the image's index within its split

    def group_key(self) -> tuple:
        if self.split is not None:  # SIRENs of a zoo all share their structure
            return ("siren",)
        return tuple(self.hparams[k] for k in STRUCTURAL)


@dataclass(frozen=True)
class SirenRecipe:
    """How a SIREN zoo fits its members: the ``[siren]`` table, passed to
    :func:`~gensight.zoo.siren.fit_sirens`. ``images = 0``: every image of the dataset."""

    fits_per_image: int = 1
    steps: int = 300
    lr: float = 1e-3
    target_psnr: float | None = None
    images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"fits_per_image": self.fits_per_image, "steps": self.steps, "lr": self.lr,
                "target_psnr": self.target_psnr, "images": self.images}


@dataclass(frozen=True)
class SizeEstimate:
    """A rough cost of building a zoo, computed without listing its members.

    - ``members``: exact.
    - ``epochs_total``: training epochs summed over members (exact for lists in mode grid;
      the expected value for random sampling).
    - ``seconds``: CPU time at :data:`ASSUMED_FLOPS` = 2e10 FLOP/s (what population training
      reaches on the 2-core dev CPU, ``benchmarks/README.md``). Training costs
      6 x forward multiply-accumulates (MACs) per example (forward + backward, 2 FLOPs per
      MAC) x training examples x train_fraction x epochs; every checkpoint evaluates its
      member (2 x MACs per example) on its training subset, val, test and each shifted test
      set. For an MLP the MACs are about its parameter count.
    - ``disk_bytes``: float32 weights at every checkpoint, plus, with ``store_logits``,
      float16 logits (examples x classes x 2 bytes) of val, test and every shifted set at
      every checkpoint. Checkpoints per member are counted as listed (an upper bound).

    A SIREN zoo (one full-batch step is one epoch over the image's pixels): ``epochs_total`` =
    members x steps; ``seconds`` = members x steps x (:data:`SIREN_STEP_SECONDS` + pixels x
    (6 x forward MACs per pixel + 2 x hidden units x :data:`SINE_FLOPS`: a sin forward and a
    cos backward per hidden unit) / :data:`SIREN_ASSUMED_FLOPS`): 47 us per member-step of
    a 2-32-32-1 SIREN at 14x14 and 27 us at 8x8, as measured on the 2-core dev CPU. Every
    member is counted with all its steps: members that stop early at ``target_psnr`` cost
    less (the digits example's members stop after ~46 of 300 steps). ``disk_bytes``: float32
    final weights.
    """

    members: int
    epochs_total: int
    seconds: float
    disk_bytes: int

    def __str__(self) -> str:
        return (f"{self.members:,} members, ~{_duration(self.seconds)} of CPU time, "
                f"~{_size(self.disk_bytes)} on disk")


@dataclass(frozen=True)
class ZooSpec:
    name: str
    dataset: str
    architecture: Architecture
    hparams: dict[str, list[Any] | Range] = field(hash=False)
    seed: int = 0
    configs: int = 16  # mode "grid": the number of combinations
    seeds_per_config: int = 1
    mode: str = "random"
    shard_size: int = 64
    checkpoints: tuple[int | str, ...] = (0, "final")  # sorted: epochs, then "final"
    shifts: tuple[str, ...] = ()
    severities: tuple[int, ...] = (1, 3, 5)
    store_logits: bool = False
    siren: SirenRecipe | None = None  # family "siren" only: the fitting recipe
    # Training cross-entropy at which a member stops (arXiv 1912.02178, Sec. 2: 0.01); the
    # ``epochs`` hyperparameter is then the cap. None: every member trains all its epochs.
    stop_loss: float | None = None

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_toml(cls, path: str | Path) -> ZooSpec:
        """Read and validate a TOML spec; every error names the file."""
        path = Path(path)
        where = f"spec file {str(path)!r}"
        if path.is_dir():
            raise SpecError(f"{where} is a directory, not a TOML file")
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise SpecError(f"{where} does not exist") from None
        except UnicodeDecodeError as exc:
            raise SpecError(f"{where} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                            f"offset {exc.start})") from None
        except OSError as exc:
            raise SpecError(f"{where} cannot be read: {exc.strerror or exc}") from None
        except ValueError as exc:  # e.g. a NUL byte in the path
            raise SpecError(f"{where} cannot be read: {exc}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{where} is not valid TOML: {_line(str(exc))}") from None
        try:
            return cls.from_dict(data)
        except SpecError as exc:
            raise SpecError(f"{where}: {exc}") from None

    @classmethod
    def from_dict(cls, data: dict) -> ZooSpec:
        """Validate ``data`` (as read from TOML, or :meth:`to_dict`) fully and build the spec.

        Cheap whatever the spec's size: members are never listed here.
        """
        from gensight.data import DATASETS

        if not isinstance(data, dict):
            raise SpecError(f"a zoo spec must be a table (dict), got {type(data).__name__}")
        unknown = sorted((k for k in data if k not in _TOP_KEYS), key=str)
        if unknown:
            raise SpecError(f"unknown field(s) {unknown}; known fields: {sorted(_TOP_KEYS)}")
        for required in ("dataset", "architecture"):
            if required not in data:
                raise SpecError(f"missing required field {required!r}")
        arch_data = data["architecture"]
        if isinstance(arch_data, dict) and arch_data.get("family") == "siren":
            return cls._from_siren_dict(data)
        dataset = data["dataset"]
        if not isinstance(dataset, str) or dataset not in DATASETS:
            only = (f" ({dataset!r} is an image set of family 'siren' only)"
                    if isinstance(dataset, str) and dataset in SIREN_DATASETS else "")
            raise SpecError(f"dataset: unknown dataset {_show(dataset)}; known: "
                            f"{list(DATASETS)}{only}")
        info = dataset_shape(dataset)
        arch = _architecture(arch_data, dataset, info)
        if "siren" in data:
            raise SpecError(f"siren: applies only to family 'siren' (architecture.family is "
                            f"{arch.family!r}); remove the [siren] table")
        name = _name(data.get("name", f"{dataset}-{arch.family}"))
        get = functools.partial(_get, data)
        mode = _choice("mode", get("mode"), ("random", "grid"))
        hparams = _hparams(data.get("hparams", {}), mode)
        _check_batch_size(hparams["batch_size"], dataset, info)
        if arch.family in PARAM_FAMILIES:
            _check_param_family(arch.family, data, hparams)
        if mode == "grid":
            configs = math.prod(len(v) for v in hparams.values())  # type: ignore[arg-type]
            given = data.get("configs", configs)
            if isinstance(given, bool) or not isinstance(given, int) or given != configs:
                raise SpecError(f"configs: mode 'grid' makes {configs:,} configuration(s) (every "
                                f"combination of the hparams lists), got {_show(given)}; "
                                "leave configs out")
        else:
            configs = _int("configs", get("configs"), 1)
        return cls(
            name=name,
            dataset=dataset,
            architecture=arch,
            hparams=hparams,
            seed=_int("seed", get("seed"), 0),
            configs=configs,
            seeds_per_config=_int("seeds_per_config", get("seeds_per_config"), 1),
            mode=mode,
            shard_size=_int("shard_size", get("shard_size"), 1),
            checkpoints=_checkpoints(get("checkpoints"), hparams["epochs"]),
            shifts=_shifts(get("shifts"), dataset, info),
            severities=_severities(get("severities")),
            store_logits=_bool("store_logits", get("store_logits")),
            stop_loss=(None if data.get("stop_loss") is None
                       else _positive_float("stop_loss", data["stop_loss"])),
        )

    @classmethod
    def _from_siren_dict(cls, data: dict) -> ZooSpec:
        """:meth:`from_dict` for ``architecture.family = "siren"``."""
        dataset = data["dataset"]
        if not isinstance(dataset, str) or dataset not in SIREN_DATASETS:
            raise SpecError(f"dataset: family 'siren' fits images; expected one of "
                            f"{list(SIREN_DATASETS)}, got {_show(dataset)}")
        info = dataset_shape(dataset)
        arch = _siren_architecture(data["architecture"])
        for key in _NOT_SIREN:
            if key in data:
                raise SpecError(f"{key}: does not apply to family 'siren' "
                                f"({_NOT_SIREN[key]}); remove it")
        name = _name(data.get("name", f"{dataset}-siren"))
        if "siren" not in data:
            raise SpecError("siren: missing; family 'siren' needs a [siren] table (fits_per_image,"
                            " steps, lr, target_psnr, images; an empty table takes the defaults)")
        recipe = _siren_recipe(data["siren"], dataset, info)
        n_images = recipe.images or _n_images(info)
        return cls(
            name=name,
            dataset=dataset,
            architecture=arch,
            hparams={},
            seed=_int("seed", _get(data, "seed"), 0),
            configs=n_images,  # a SIREN zoo's "configurations" are its images ...
            seeds_per_config=recipe.fits_per_image,  # ... and its "seeds" their fits
            mode="images",
            shard_size=_int("shard_size", _get(data, "shard_size"), 1),
            checkpoints=("final",),
            shifts=(),
            severities=(),
            store_logits=False,
            siren=recipe,
        )

    @property
    def is_siren(self) -> bool:
        return self.architecture.family == "siren"

    # --- normalized form and hash ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The normalized spec: every field with its default filled in, the architecture's
        fields for its family, every hyperparameter (a list, or ``{low, high, log}``), and
        in mode "grid" ``configs`` = the number of combinations. ``from_dict`` of it gives
        this spec back.

        A SIREN spec: ``name``, ``dataset``, ``seed``, ``shard_size``, ``architecture``
        (``family``, ``hidden``, ``omega_0``) and ``siren`` (every recipe field; ``target_psnr``
        ``None`` without early stop, ``images`` 0 for every image, also when the spec named
        them all)."""
        if self.siren is not None:
            return {"name": self.name, "dataset": self.dataset, "seed": self.seed,
                    "shard_size": self.shard_size, "architecture": self.architecture.to_dict(),
                    "siren": self.siren.to_dict()}
        out = {
            "name": self.name,
            "dataset": self.dataset,
            "seed": self.seed,
            "configs": self._n_configs(),
            "seeds_per_config": self.seeds_per_config,
            "mode": self.mode,
            "shard_size": self.shard_size,
            "checkpoints": list(self.checkpoints),
            "shifts": list(self.shifts),
            "severities": list(self.severities),
            "store_logits": self.store_logits,
            "architecture": self.architecture.to_dict(),
            "hparams": {name: v.to_dict() if isinstance(v, Range) else list(v)
                        for name, v in self.hparams.items()},
        }
        if self.stop_loss is not None:  # absent otherwise: older specs keep their hash
            out["stop_loss"] = self.stop_loss
        return out

    def to_json(self) -> str:
        """Canonical JSON of :meth:`to_dict` (sorted keys; the zoo manifest stores it)."""
        return _canonical(self.to_dict())

    def content_hash(self) -> str:
        """Hash of everything that determines the zoo's members and their training: the
        normalized spec without its name (16 hex digits of a SHA-256)."""
        data = self.to_dict()
        del data["name"]
        return hashlib.sha256(_canonical(data).encode()).hexdigest()[:16]

    def shift_fingerprint(self) -> str | None:
        """What this gensight's shifts do to the spec's shifted test sets, as a hash
        (:func:`gensight.data.shifts.shift_fingerprint`); ``None`` without shifts. A zoo
        records it, so that a change in a shift's definition is noticed."""
        if not self.shifts:
            return None
        from gensight.data.shifts import shift_fingerprint

        info = dataset_shape(self.dataset)
        return shift_fingerprint(info.input_shape, [(s, v) for s in self.shifts
                                                    for v in self.severities],
                                 seed=self.seed, bounded=info.bounded)

    # --- size -----------------------------------------------------------------------------
    def _n_configs(self) -> int:
        if self.siren is not None:
            return self.configs  # the number of images
        if self.mode == "grid":
            return math.prod(len(v) for v in self.hparams.values())  # type: ignore[arg-type]
        return self.configs

    @property
    def n_members(self) -> int:
        """Number of members (configurations x seeds; siren: images x fits), without
        listing them."""
        return self._n_configs() * self.seeds_per_config

    def _hparam(self, name: str) -> list[Any] | Range:
        return self.hparams.get(name, HPARAMS[name][1])

    def size_estimate(self) -> SizeEstimate:
        """Rough cost of building this zoo (see :class:`SizeEstimate` for how it is
        counted); takes microseconds whatever the number of members."""
        info = dataset_shape(self.dataset)
        n = self.n_members
        if self.siren is not None:
            arch = self.architecture
            pixels = math.prod(info.spatial)
            per_pixel = (6 * arch.forward_macs(info.input_shape, 1)
                         + 2 * sum(arch.hidden) * SINE_FLOPS)
            steps = self.siren.steps
            step = SIREN_STEP_SECONDS + pixels * per_pixel / SIREN_ASSUMED_FLOPS
            seconds = _float(n) * steps * step
            disk = n * arch.n_params(info.input_shape, 1) * 4
            return SizeEstimate(n, n * steps, seconds, disk)
        epochs, fraction = self._hparam("epochs"), self._hparam("train_fraction")
        if isinstance(epochs, Range):
            mean_epochs = epochs.mean()
            epochs_total = int(_float(n) * mean_epochs)
        else:
            mean_epochs = sum(epochs) / len(epochs)
            epochs_total = n * sum(epochs) // len(epochs)
        mean_fraction = (fraction.mean() if isinstance(fraction, Range)
                         else sum(fraction) / len(fraction))
        macs = _float(self.architecture.forward_macs(info.input_shape, info.n_classes))
        params = self.architecture.n_params(info.input_shape, info.n_classes)
        n_ckpt = len(self.checkpoints)
        shifted = len(self.shifts) * len(self.severities)
        train_examples = info.n_train * mean_fraction
        train = 6 * macs * train_examples * mean_epochs
        evals = n_ckpt * 2 * macs * (train_examples + info.n_val + info.n_test * (1 + shifted))
        flops = FAMILY_FLOPS.get(self.architecture.family, ASSUMED_FLOPS)
        seconds = _float(n) * (train + evals) / flops
        logits = info.n_classes * 2 * (info.n_val + info.n_test * (1 + shifted))
        disk = n * n_ckpt * (params * 4 + (logits if self.store_logits else 0))
        return SizeEstimate(n, epochs_total, seconds, disk)

    def check_size(self, allow_large: bool = False) -> SizeEstimate:
        """The size estimate; raises :class:`SpecError` if the spec is very large (more than
        100,000 members, an epochs value above 10,000, a layer wider than 100,000, more than
        30 days of CPU time or more than 1 TB on disk), unless ``allow_large``."""
        est = self.size_estimate()
        width = max(self.architecture.widths, default=0)
        reasons = []
        if est.members > LARGE_MEMBERS:
            reasons.append(f"more than {LARGE_MEMBERS:,} members")
        if self.siren is not None:
            if self.siren.steps > LARGE_SIREN_STEPS:
                reasons.append(f"{self.siren.steps:,} steps, more than {LARGE_SIREN_STEPS:,}")
        else:
            epochs = self._hparam("epochs")
            max_epochs = int(epochs.high) if isinstance(epochs, Range) else max(epochs)
            if max_epochs > LARGE_EPOCHS:
                reasons.append(f"epochs up to {max_epochs:,}, more than {LARGE_EPOCHS:,}")
        if width > LARGE_WIDTH:
            reasons.append(f"a layer of width {width:,}, more than {LARGE_WIDTH:,}")
        if est.seconds > LARGE_SECONDS:
            reasons.append("more than 30 days of CPU time")
        if est.disk_bytes > LARGE_DISK_BYTES:
            reasons.append("more than 1 TB on disk")
        if reasons and not allow_large:
            raise SpecError(f"spec {self.name!r} is very large ({', '.join(reasons)}): {est}; "
                            "pass --allow-large to build it anyway")
        return est

    # --- members --------------------------------------------------------------------------
    def members(self) -> list[Member]:
        """All members, in a fixed order (the same for the same spec and seed).

        Raises:
            SpecError: the spec has more than 10,000,000 members (use :attr:`n_members`).
        """
        if self.n_members > MAX_EXPANDED:
            raise SpecError(f"spec {self.name!r} has {self.n_members:,} members; at most "
                            f"{MAX_EXPANDED:,} can be listed")
        if self.siren is not None:
            return self._siren_members()
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

    def image_order(self) -> list[tuple[str, int]]:
        """SIREN zoo: its images as ``(split, index within the split)``, in the zoo's image
        order (position = ``image_id``): the dataset's splits interleaved in proportion to
        their sizes (see the module docstring), cut to ``siren.images``. Loads no data."""
        if self.siren is None:
            raise SpecError(f"spec {self.name!r} is not a SIREN zoo (family "
                            f"{self.architecture.family!r})")
        return _image_order(dataset_shape(self.dataset))[:self.configs]

    def _siren_members(self) -> list[Member]:
        """Image-major: fits 0 .. F-1 of image 0, then of image 1, ...; member ``seed`` =
        ``default_rng([spec seed, split (0 train, 1 val, 2 test), image_index, fit])
        .integers(2**31 - 1)``, so an image's fits keep their seeds whatever ``images``."""
        assert self.siren is not None
        recipe = {"steps": self.siren.steps, "lr": self.siren.lr,
                  "target_psnr": self.siren.target_psnr}
        members = []
        for image_id, (split, index) in enumerate(self.image_order()):
            code = SPLITS.index(split)
            for fit in range(self.siren.fits_per_image):
                seed = int(np.random.default_rng([self.seed, code, index, fit])
                           .integers(2**31 - 1))
                members.append(Member(f"{split}-{index:05d}-f{fit}", image_id, fit, seed,
                                      dict(recipe), split, index))
        return members

    def member_checkpoints(self, member: Member) -> tuple[int, ...]:
        """The epochs stored for ``member``: a SIREN stores one checkpoint, its final weights,
        labelled ``epoch = siren.steps`` (the step budget: one full-batch step is one epoch;
        the member's ``steps_used`` says how many it took)."""
        if self.siren is not None:
            return (self.siren.steps,)
        return self.checkpoint_epochs(member.hparams["epochs"])

    def checkpoint_epochs(self, epochs: int) -> tuple[int, ...]:
        out = sorted({epochs if c == "final" else int(c) for c in self.checkpoints
                      if c == "final" or int(c) <= epochs})
        return tuple(out)


# --- validation helpers -----------------------------------------------------------------------
def _get(data: dict, key: str) -> Any:
    return data.get(key, _DEFAULTS[key])


def _show(value: Any, limit: int = 80) -> str:
    """``repr(value)``, shortened to one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _line(text: str) -> str:
    return " ".join(text.split())


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _scalar_hint(value: Any) -> str:
    return f" (write [{_show(value)}] for a single value)" if not _is_list(value) and \
        isinstance(value, int | float | str) else ""


def _duplicate(where: str, values: list[Any]) -> None:
    seen: set[Any] = set()  # values are validated str/int/float: hashable
    for v in values:
        if v in seen:
            raise SpecError(f"{where}: {_show(v)} is listed twice")
        seen.add(v)


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"name: expected a non-empty string, got {_show(value)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value) or len(value) > MAX_NAME:
        raise SpecError(f"name: expected one line of at most {MAX_NAME} printable "
                        f"characters, got {_show(value)}")
    return value


def _positive_ints(where: str, value: Any, *, non_empty: bool) -> tuple[int, ...]:
    if not _is_list(value) or (non_empty and not value) or any(
            not _is_int(v) or not 1 <= v <= INT_MAX for v in value):
        what = "a non-empty list" if non_empty else "a list"
        raise SpecError(f"{where}: expected {what} of positive ints, got {_show(value)}"
                        f"{_scalar_hint(value)}")
    return tuple(value)


def _architecture(data: Any, dataset: str, info: DatasetShape) -> Architecture:
    if not isinstance(data, dict):
        raise SpecError(f"architecture: expected a table with 'family', got {_show(data)}")
    from gensight.data.datasets import SEQUENCE_DATASETS

    family = _choice("architecture.family", data.get("family"), FAMILIES)
    allowed = {"mlp": {"family", "hidden"}, "gru": {"family", "hidden"},
               "rescnn": {"family", "channels", "blocks", "kernel_size", "stride"}}.get(
        family, {"family", "channels", "kernel_size", "stride"})
    unknown = sorted((k for k in data if k not in allowed), key=str)
    if unknown:
        raise SpecError(f"architecture: unknown field(s) {unknown} for family {family!r}; "
                        f"allowed: {sorted(allowed)}")
    if (family == "gru") != (dataset in SEQUENCE_DATASETS):
        if family == "gru":
            raise SpecError(f"dataset: family 'gru' trains on a sequence task "
                            f"{list(SEQUENCE_DATASETS)}, got {dataset!r}")
        raise SpecError(f"dataset: {dataset!r} is a sequence task (token ids); it needs "
                        f"architecture.family 'gru', got {family!r}")
    if family == "gru":
        hidden = _positive_ints("architecture.hidden", data.get("hidden", [32]),
                                non_empty=True)
        if len(set(hidden)) != 1:
            raise SpecError(f"architecture.hidden: the layers of one nn.GRU share their width; "
                            f"got {list(hidden)}")
        return Architecture("gru", hidden=hidden)
    if family == "rescnn":
        channels = _int("architecture.channels", data.get("channels", 16), 1)
        blocks = _int("architecture.blocks", data.get("blocks", 2), 0)
        kernel = _int("architecture.kernel_size", data.get("kernel_size", 3), 1)
        stride = _int("architecture.stride", data.get("stride", 2), 1)
        if len(info.spatial) != 2:
            raise SpecError(f"architecture.family: 'rescnn' needs 2-D images; {dataset!r} has "
                            f"{len(info.spatial)}-D inputs")
        if kernel % 2 == 0:
            raise SpecError(f"architecture.kernel_size: 'rescnn' needs an odd kernel (its "
                            f"'same' padding keeps the residual shapes equal), got {kernel}")
        _check_conv(kernel, stride, dataset, info)
        return Architecture("rescnn", channels=(channels,), kernel_size=kernel, stride=stride,
                            blocks=blocks)
    if family == "mlp":
        hidden = _positive_ints("architecture.hidden", data.get("hidden", [32]),
                                non_empty=False)
        return Architecture("mlp", hidden=hidden)
    channels = _positive_ints("architecture.channels", data.get("channels", [16, 16, 16]),
                              non_empty=True)
    kernel = _int("architecture.kernel_size", data.get("kernel_size", 3), 1)
    stride = _int("architecture.stride", data.get("stride", 2), 1)
    arch = Architecture("cnn", channels=channels, kernel_size=kernel, stride=stride)
    if len(info.spatial) not in (1, 2):
        raise SpecError(f"architecture.family: 'cnn' needs 1-D or 2-D inputs; {dataset!r} has "
                        f"{len(info.spatial)}-D inputs")
    _check_conv(kernel, stride, dataset, info)
    for i, size in enumerate(arch.conv_output_sizes(info.spatial)):
        if min(size) < 1:  # cannot happen with 'same' padding; kept as a guard
            raise SpecError(f"architecture: conv layer {i + 1} would output "
                            f"{'x'.join(map(str, size))} positions on the {info.describe()} "
                            f"input of {dataset!r}")
    return arch


def _check_conv(kernel: int, stride: int, dataset: str, info: DatasetShape) -> None:
    side = min(info.spatial)
    for key, value in (("kernel_size", kernel), ("stride", stride)):
        if value > side:
            raise SpecError(f"architecture.{key}: {value} is larger than the "
                            f"{info.describe()} input of {dataset!r}")


def _check_param_family(family: str, data: dict, hparams: dict) -> None:
    """What families ``gru`` and ``rescnn`` (:mod:`gensight.zoo.families`) do not support,
    as one-line errors; a GRU's activation is its own (``tanh``, set here)."""
    drop = hparams["dropout"]
    if isinstance(drop, Range) or any(v != 0 for v in drop):
        raise SpecError(f"hparams.dropout: family {family!r} has no dropout; leave it out")
    if family == "gru":
        act = hparams["activation"]
        if "activation" in data.get("hparams", {}) and list(act) != ["tanh"]:
            raise SpecError(f"hparams.activation: a GRU's gates use sigmoid and tanh; leave "
                            f"activation out (got {_show(act)})")
        hparams["activation"] = ["tanh"]
        for key in ("shifts", "store_logits"):
            if data.get(key):
                raise SpecError(f"{key}: family 'gru' is evaluated on its own questions only; "
                                f"remove {key}")
    if data.get("stop_loss") is not None:
        raise SpecError(f"stop_loss: not supported for family {family!r}; remove it")


def _n_images(info: DatasetShape) -> int:
    return info.n_train + info.n_val + info.n_test


@functools.cache
def _image_order(info: DatasetShape) -> list[tuple[str, int]]:
    sizes = dict(zip(SPLITS, (info.n_train, info.n_val, info.n_test), strict=True))
    keys = [(Fraction(2 * p + 1, 2 * n), SPLITS.index(split), split, p)
            for split, n in sizes.items() for p in range(n)]
    return [(split, p) for _, _, split, p in sorted(keys)]


def _siren_architecture(data: dict) -> Architecture:
    allowed = {"family", "hidden", "omega_0"}
    unknown = sorted((k for k in data if k not in allowed), key=str)
    if unknown:
        raise SpecError(f"architecture: unknown field(s) {unknown} for family 'siren'; "
                        f"allowed: {sorted(allowed)}")
    hidden = _positive_ints("architecture.hidden", data.get("hidden", [32, 32]),
                            non_empty=True)
    omega_0 = _positive_float("architecture.omega_0", data.get("omega_0", 30.0))
    return Architecture("siren", hidden=hidden, omega_0=omega_0)


def _positive_float(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{where}: expected a finite number > 0, got {_show(value)}")
    try:
        out = float(value)
    except OverflowError:
        out = math.inf
    if not (math.isfinite(out) and out > 0):
        raise SpecError(f"{where}: expected a finite number > 0, got {_show(value)}")
    return out


def _siren_recipe(data: Any, dataset: str, info: DatasetShape) -> SirenRecipe:
    if not isinstance(data, dict):
        raise SpecError(f"siren: expected a table ({', '.join(_SIREN_KEYS)}), got "
                        f"{_show(data)}")
    unknown = sorted((k for k in data if k not in _SIREN_KEYS), key=str)
    if unknown:
        raise SpecError(f"siren: unknown field(s) {unknown}; known: {sorted(_SIREN_KEYS)}")
    get = {k: data.get(k, _SIREN_DEFAULTS[k]) for k in _SIREN_KEYS}
    fits = _int("siren.fits_per_image", get["fits_per_image"], 1)
    steps = _int("siren.steps", get["steps"], 1)
    lr = _positive_float("siren.lr", get["lr"])
    target = get["target_psnr"]
    if target is not None:
        target = _positive_float("siren.target_psnr", target)
    images = _int("siren.images", get["images"], 0)
    total = _n_images(info)
    if images > total:
        raise SpecError(f"siren.images: {images:,} is more than the {total:,} images of "
                        f"{dataset!r} (0 takes every image)")
    return SirenRecipe(fits, steps, lr, target, 0 if images == total else images)


def _number(where: str, v: Any, typ: type) -> Any:
    """``v`` as a value of hyperparameter type ``typ`` (int or float), or a SpecError."""
    if typ is int:
        if not _is_int(v):
            raise SpecError(f"{where}: expected integers, got {_show(v)}")
        if abs(v) > INT_MAX:
            raise SpecError(f"{where}: {v} is too large (at most {INT_MAX})")
        return v
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SpecError(f"{where}: expected numbers, got {_show(v)}")
    try:
        out = float(v)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        raise SpecError(f"{where}: expected finite numbers, got {_show(v)}")
    return out


def _hparams(data: Any, mode: str) -> dict[str, list[Any] | Range]:
    if not isinstance(data, dict):
        raise SpecError(f"hparams: expected a table, got {_show(data)}")
    unknown = sorted((k for k in data if k not in HPARAMS), key=str)
    if unknown:
        raise SpecError(f"hparams: unknown hyperparameter(s) {unknown}; known: "
                        f"{sorted(HPARAMS)}")
    out: dict[str, list[Any] | Range] = {}
    for name, (typ, default) in HPARAMS.items():
        value = data.get(name, default)
        where = f"hparams.{name}"
        if isinstance(value, dict):
            if mode == "grid":
                raise SpecError(f"{where}: mode 'grid' needs a list of values, not a range")
            if typ is str:
                raise SpecError(f"{where}: expected a list of choices, not a range")
            extra = sorted((k for k in value if k not in ("low", "high", "log")), key=str)
            if extra or "low" not in value or "high" not in value:
                raise SpecError(f"{where}: a range needs 'low' and 'high' (and optional 'log'), "
                                f"got {_show(value)}")
            log = value.get("log", False)
            if not isinstance(log, bool):
                raise SpecError(f"{where}: 'log' must be true or false, got {_show(log)}")
            low, high = (_number(where, value[k], typ) for k in ("low", "high"))
            if low > high:
                raise SpecError(f"{where}: expected numbers with low <= high, got "
                                f"{_show(value)}")
            if log and low <= 0:
                raise SpecError(f"{where}: a log range needs low > 0, got {low!r}")
            for v in (low, high):
                _check_value(name, v)
            out[name] = Range(float(low), float(high), log, typ is int)
            continue
        if not _is_list(value) or not value:
            raise SpecError(f"{where}: expected a non-empty list of values or a range table, "
                            f"got {_show(value)}{_scalar_hint(value)}")
        values = []
        for v in value:
            if typ is str:
                if not isinstance(v, str):
                    raise SpecError(f"{where}: expected strings, got {_show(v)}")
            else:
                v = _number(where, v, typ)
            values.append(_check_value(name, v))
        _duplicate(where, values)
        out[name] = values
    return out


def _check_batch_size(value: list[int] | Range, dataset: str, info: DatasetShape) -> None:
    largest = int(value.high) if isinstance(value, Range) else max(value)
    if largest > info.n_train:
        raise SpecError(f"hparams.batch_size: {largest:,} is more than the {info.n_train:,} "
                        f"training examples of {dataset!r}")


def _shifts(value: Any, dataset: str, info: DatasetShape) -> tuple[str, ...]:
    from gensight.data import SHIFTS

    if not _is_list(value):
        raise SpecError(f"shifts: expected a list of shift names, got {_show(value)}"
                        f"{_scalar_hint(value)}")
    dims = len(info.spatial)
    for s in value:
        if not isinstance(s, str) or s not in SHIFTS:
            raise SpecError(f"shifts: unknown shift {_show(s)}; known: {list(SHIFTS)}")
        shift = SHIFTS[s]
        if dims not in shift.dims:
            raise SpecError(f"shifts: {s!r} applies to {'/'.join(map(str, sorted(shift.dims)))}"
                            f"-D inputs; {dataset!r} has {dims}-D inputs")
        if shift.bounded_only and not info.bounded:
            raise SpecError(f"shifts: {s!r} needs inputs with a known value range; "
                            f"{dataset!r} has none (it is standardized)")
    _duplicate("shifts", list(value))
    return tuple(value)


def _severities(value: Any) -> tuple[int, ...]:
    if not _is_list(value) or not value or not all(_is_int(v) for v in value):
        raise SpecError(f"severities: expected a non-empty list of integers in 1..5, got "
                        f"{_show(value)}{_scalar_hint(value)}")
    if any(not 1 <= v <= 5 for v in value):
        raise SpecError(f"severities: expected values in 1..5, got {_show(list(value))}")
    _duplicate("severities", list(value))
    return tuple(value)


def _checkpoints(value: Any, epochs: list[int] | Range) -> tuple[int | str, ...]:
    if not _is_list(value) or not value or any(
            not (c == "final" or (_is_int(c) and 0 <= c <= INT_MAX)) for c in value):
        raise SpecError(f"checkpoints: expected epochs >= 0 or 'final', got {_show(value)}"
                        f"{_scalar_hint(value)}")
    _duplicate("checkpoints", list(value))
    ints = sorted(c for c in value if c != "final")
    fewest, most = ((int(epochs.low), int(epochs.high)) if isinstance(epochs, Range)
                    else (min(epochs), max(epochs)))
    if ints and ints[-1] > most:
        raise SpecError(f"checkpoints: epoch {ints[-1]} is after the last epoch of every "
                        f"member (hparams.epochs is at most {most})")
    if "final" not in value and ints[0] > fewest:
        raise SpecError(f"checkpoints: members trained for {fewest} epoch(s) would store no "
                        f"checkpoint (the first is epoch {ints[0]}); add 'final'")
    return (*ints, "final") if "final" in value else tuple(ints)


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
        raise SpecError(f"hparams.{name}: value {_show(v)} is invalid; expected {expected}")
    return v


def _choice(where: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise SpecError(f"{where}: expected one of {list(choices)}, got {_show(value)}")
    return value


def _int(where: str, value: Any, minimum: int) -> int:
    if not _is_int(value) or value < minimum:
        raise SpecError(f"{where}: expected an integer >= {minimum}, got {_show(value)}")
    if value > INT_MAX:
        raise SpecError(f"{where}: {value} is too large (at most {INT_MAX})")
    return value


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{where}: expected true or false, got {_show(value)}")
    return value


# --- formatting -------------------------------------------------------------------------------
def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _float(n: int) -> float:
    try:
        return float(n)
    except OverflowError:
        return math.inf


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:,.0f} {unit}" if unit == "days" else \
                f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _size(n_bytes: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= size:
            return f"{n_bytes / size:,.1f} {unit}"
    return f"{n_bytes:.0f} B"
