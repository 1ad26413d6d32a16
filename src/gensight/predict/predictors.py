"""The predictors: StatNN, NFN (HNP/NP), NFT, UNF, Deep Sets, measure-based and margin
signatures."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import torch
from torch import nn

from gensight.errors import GensightError, NonFiniteWeightsError
from gensight.weightspace import (
    ParamBatch,
    ParamSpace,
    WeightBatch,
    nonfinite_members,
    nonfinite_param_members,
)


class PredictError(GensightError, ValueError):
    """A split or predictor that cannot be used as asked."""


BOOKKEEPING = ("config_id", "seed_index", "seed", "epoch", "shard", "shard_pos")
"""Numeric columns of a zoo table that identify a network rather than describe it."""


def numeric_columns(table: pd.DataFrame) -> list[str]:
    """Columns of ``table`` that can be a target: numeric, not boolean, not bookkeeping."""
    return [c for c in table.columns
            if pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(
                table[c]) and c not in BOOKKEEPING]


def check_target(table: pd.DataFrame, target: str) -> None:
    """Raise :class:`PredictError` unless ``target`` is a numeric column of ``table``; the
    message lists the numeric columns."""
    candidates = ", ".join(numeric_columns(table)) or "none"
    if not isinstance(target, str) or target not in table.columns:
        raise PredictError(f"the zoo table has no column {target!r} to predict; numeric "
                           f"columns: {candidates}")
    column = table[target]
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        example = next((v for v in column if v is not None), None)
        raise PredictError(f"the target column {target!r} is not numeric (dtype "
                           f"{column.dtype}, e.g. {example!r}); numeric columns: "
                           f"{candidates}")


def _ids(rows: pd.DataFrame, mask) -> list:
    ids = rows.loc[mask, "member_id"] if "member_id" in rows.columns else rows.index[mask]
    return list(ids)


def _few(items, limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}]"


@dataclass
class ZooSplit:
    """A zoo and a subset of its table's rows (one row per network); ``target`` names the
    column predicted (default ``test_acc``).

    The rows must be networks with finite weights and a finite target: a non-numeric or
    missing target column, NaN/inf target values or NaN/inf weights raise
    :class:`PredictError` naming the column and the member ids (:func:`split_zoo` leaves
    out rows with a NaN/inf target instead, with a note). ``notes`` says what was left out.
    """

    zoo: object
    rows: pd.DataFrame
    target: str = "test_acc"
    notes: list[str] = field(default_factory=list)
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if len(self.rows) == 0:
            raise PredictError("an empty split")
        check_target(self.rows, self.target)
        self.rows = self.rows.reset_index(drop=True)
        if "finite" in self.rows.columns and not self.rows["finite"].all():
            bad = _ids(self.rows, ~self.rows["finite"].astype(bool))
            raise PredictError(f"{len(bad)} of the {len(self.rows)} networks have NaN/inf "
                               f"weights (training diverged): {_few(bad)}; leave them out "
                               f"(rows = table.query('finite'))")
        y = self.rows[self.target].to_numpy(np.float64)
        bad_y = ~np.isfinite(y)
        if bad_y.any():
            bad = _ids(self.rows, bad_y)
            raise PredictError(f"the target column {self.target!r} is NaN or infinite for "
                               f"{len(bad)} of the {len(self.rows)} networks: {_few(bad)}; "
                               f"leave them out (split_zoo does)")

    def __len__(self) -> int:
        return len(self.rows)

    @cached_property
    def weights(self) -> WeightBatch | ParamBatch:
        try:
            batch = self.zoo.weights(self.rows)
        except NonFiniteWeightsError as exc:
            members = getattr(exc, "members", None)
            if not members:
                raise
            bad = [self.rows["member_id"].iloc[m] for m in members]
            raise PredictError(f"{len(bad)} of the {len(self.rows)} networks have NaN/inf "
                               f"weights: {_few(bad)} ({exc})") from None
        bad = nonfinite_param_members(batch) if isinstance(batch, ParamBatch) else \
            nonfinite_members(batch)
        if bad:
            ids = [self.rows["member_id"].iloc[m] for m in bad]
            raise PredictError(f"{len(ids)} of the {len(self.rows)} networks have NaN/inf "
                               f"weights: {_few(ids)}; leave them out")
        return batch

    @property
    def y(self) -> np.ndarray:
        return self.rows[self.target].to_numpy(np.float64)


def grid_hparams(zoo) -> list[str]:
    """The hyperparameters that vary in the zoo's spec (its grid axes in ``mode = "grid"``)."""
    table = zoo.table
    names = list(zoo.manifest["spec"].get("hparams", {}))
    return [h for h in names if h in table.columns and table[h].nunique() > 1]


def split_zoo(zoo, *, by: str = "auto", test_fraction: float = 0.25, seed: int = 0,
              target: str = "test_acc", rows: pd.DataFrame | None = None
              ) -> tuple[ZooSplit, ZooSplit]:
    """A seeded train/test split of a zoo's finite final networks.

    ``by="seed"`` holds out the last seed(s) of every configuration, so the test split is a
    complete hyperparameter grid (granulated tau and CMI need one) and no configuration is in
    both; ``by="config"`` holds out a random ``test_fraction`` of configurations. ``"auto"``
    picks ``"seed"`` when every configuration has at least 2 seeds.

    ``target`` must be a numeric column of the table (a missing or non-numeric one raises
    :class:`PredictError` listing the numeric columns). Networks whose target is NaN or
    infinite are left out of both splits, and both splits' ``notes`` say how many and which
    (:func:`evaluate_predictors` passes the note on). Networks with NaN/inf weights
    (``finite`` false) in explicitly given ``rows`` are refused by member id.
    """
    if not 0 < test_fraction < 1:
        raise PredictError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if by not in ("auto", "seed", "config"):
        raise PredictError(f"by must be 'auto', 'seed' or 'config', got {by!r}")
    table = zoo.table
    check_target(table, target)
    rows = table.query("is_final and finite") if rows is None else rows
    missing = [c for c in ("member_id", "config_id", "seed_index", target)
               if c not in rows.columns]
    if missing:
        raise PredictError(f"rows lack the column(s) {missing} of a zoo table")
    check_target(rows, target)
    if "finite" in rows.columns and not rows["finite"].all():
        bad = _ids(rows, ~rows["finite"].astype(bool))
        raise PredictError(f"{len(bad)} of the {len(rows)} networks have NaN/inf weights "
                           f"(training diverged): {_few(bad)}; leave them out "
                           f"(rows = table.query('is_final and finite'))")
    notes = []
    y = rows[target].to_numpy(np.float64)
    if not np.isfinite(y).all():
        bad = _ids(rows, ~np.isfinite(y))
        notes.append(f"split: left out {len(bad)} of {len(rows)} networks whose {target!r} is "
                     f"NaN or infinite: {_few(bad)}")
        rows = rows[np.isfinite(y)]
    if len(rows) < 4:
        why = f" with a finite {target!r}" if notes else ""
        raise PredictError(f"{len(rows)} networks{why} are too few to split (need at least 4)")
    seeds = rows.groupby("config_id")["seed_index"].nunique()
    if by == "auto":
        by = "seed" if seeds.min() >= 2 else "config"
    if by == "seed":
        if seeds.min() < 2:
            single = list(seeds.index[seeds < 2])
            raise PredictError(f"by='seed' needs at least 2 seeds per configuration; "
                               f"{len(single)} configuration(s) have 1: {_few(single)} (use "
                               f"by='config')")
        n_seeds = int(rows["seed_index"].max()) + 1
        held = max(1, int(round(n_seeds * test_fraction)))
        test_mask = rows["seed_index"] >= n_seeds - held
    else:
        configs = np.sort(rows["config_id"].unique())
        if len(configs) < 2:
            raise PredictError(f"by='config' needs at least 2 configurations; the "
                               f"{len(rows)} networks share 1 (use by='seed')")
        rng = np.random.default_rng(seed)
        n_test = min(len(configs) - 1, max(1, int(round(len(configs) * test_fraction))))
        test_configs = rng.choice(configs, n_test, replace=False)
        test_mask = rows["config_id"].isin(test_configs)
    if test_mask.all() or not test_mask.any():
        raise PredictError(f"by={by!r} with test_fraction={test_fraction} leaves "
                           f"{'no training' if test_mask.all() else 'no test'} networks")
    return (ZooSplit(zoo, rows[~test_mask], target, list(notes)),
            ZooSplit(zoo, rows[test_mask], target, list(notes)))


class Predictor:
    """Base class: ``fit(split)`` then ``predict(split)`` (predicted test accuracy)."""

    name = "predictor"

    def fit(self, split: ZooSplit) -> Predictor:
        raise NotImplementedError

    def check_split(self, split: ZooSplit) -> None:
        """Raise :class:`PredictError` if ``fit(split)`` cannot work (e.g. too few networks),
        before any time is spent; :func:`evaluate_predictors` checks every predictor first."""

    def predict(self, split: ZooSplit) -> np.ndarray:
        raise NotImplementedError

    def _check_fitted(self, attr: str) -> None:
        if not hasattr(self, attr):
            raise PredictError(f"{self.name} is not fitted; call fit(split) first")


# ------------------------------------------------------------------------------- StatNN

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def statnn_features(batch: WeightBatch | ParamBatch) -> np.ndarray:
    """StatNN features (arXiv 2002.11448, Sec. 4): for every weight and bias tensor, its mean,
    variance and the 0/25/50/75/100% quantiles; ``(networks, 7 * tensors)``."""
    return _stat_tensor(batch, torch.float64).numpy()


def _stat_tensor(batch: WeightBatch | ParamBatch, dtype: torch.dtype) -> torch.Tensor:
    feats = []
    tensors = batch.tensors() if isinstance(batch, ParamBatch) else \
        [*batch.weights, *(b for b in batch.biases if b is not None)]
    for t in tensors:
        flat = t.detach().to(dtype).flatten(1)
        q = torch.quantile(flat, torch.tensor(QUANTILES, dtype=flat.dtype), dim=1).T
        feats.append(torch.cat([flat.mean(1, keepdim=True), flat.var(1, keepdim=True), q], 1))
    return torch.cat(feats, 1)


class StatFeatures(nn.Module):
    """:func:`statnn_features` as a module: ``WeightBatch``/``ParamBatch`` (B networks) ->
    ``(B, 7 * tensors)`` float32 (invariant to every neuron permutation). A tensor passes
    through unchanged: it is taken to be these features, computed once beforehand."""

    def forward(self, batch: WeightBatch | ParamBatch | torch.Tensor) -> torch.Tensor:
        if isinstance(batch, torch.Tensor):
            return batch
        return _stat_tensor(batch, torch.float32)


MLP_VALIDATION_FRACTION = 0.1


def _min_for_holdout(fraction: float, held: int) -> int:
    """The fewest networks ``n`` for which scikit-learn's ``ceil(fraction * n)`` hold-out
    has at least ``held`` networks and at least one is left to train on."""
    n = 1
    while math.ceil(fraction * n) < held or n - math.ceil(fraction * n) < 1:
        n += 1
    return n


class StatNN(Predictor):
    """Weight statistics -> ``"gbt"`` (scikit-learn gradient boosting) or ``"mlp"`` head."""

    def __init__(self, regressor: str = "gbt", seed: int = 0):
        if regressor not in ("gbt", "mlp"):
            raise PredictError(f"StatNN regressor must be 'gbt' or 'mlp', got {regressor!r}")
        self.regressor, self.seed = regressor, seed
        self.name = "statnn" if regressor == "gbt" else "statnn-mlp"

    def _model(self, n: int):
        from sklearn.ensemble import HistGradientBoostingRegressor
        from sklearn.neural_network import MLPRegressor
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if self.regressor == "gbt":
            # leaves of 20 networks (the default) need hundreds of networks; fewer get less
            return HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05,
                                                 min_samples_leaf=min(20, max(2, n // 10)),
                                                 random_state=self.seed)
        return make_pipeline(StandardScaler(), MLPRegressor(
            hidden_layer_sizes=(256, 256), alpha=1e-3, max_iter=500, early_stopping=True,
            validation_fraction=MLP_VALIDATION_FRACTION, random_state=self.seed))

    def min_networks(self) -> int:
        """Training networks ``fit`` needs: 1 for ``"gbt"``; for ``"mlp"``, enough that its
        early-stopping hold-out (``ceil(0.1 n)``) has the 2 networks scikit-learn needs."""
        return 1 if self.regressor == "gbt" else _min_for_holdout(MLP_VALIDATION_FRACTION, 2)

    def check_split(self, split: ZooSplit) -> None:
        need = self.min_networks()
        if len(split) < need:
            raise PredictError(
                f"{self.name} needs at least {need} training networks (its MLP holds out "
                f"{MLP_VALIDATION_FRACTION:.0%} of them, at least 2, for early stopping); the "
                f"training split has {len(split)}: use a larger zoo or statnn")

    def fit(self, split: ZooSplit) -> StatNN:
        self.check_split(split)
        y = split.y
        self.clip_ = bool(y.min() >= 0.0 and y.max() <= 1.0)   # an accuracy-like target
        self.model_ = self._model(len(split)).fit(statnn_features(split.weights), y)
        return self

    def predict(self, split: ZooSplit) -> np.ndarray:
        self._check_fitted("model_")
        pred = self.model_.predict(statnn_features(split.weights))
        return np.clip(pred, 0.0, 1.0) if self.clip_ else pred


# -------------------------------------------------------------------------- NFN (HNP/NP)

class NFNPredictor(Predictor):
    """An invariant NFN (``symmetry="hnp"`` or ``"np"``) predicting test accuracy.

    Recipe of arXiv 2302.14040 (Sec. 3.1): sigmoid output trained with binary cross-entropy on
    accuracy in [0, 1], Adam. The default is our own setting of it: early stopping on a
    ``val_fraction`` of the training split by validation BCE (the best epoch's weights are
    kept), a one-layer head of 256, and each weight/bias tensor divided by its standard
    deviation over the training networks (``scale``; a scalar per tensor, so equivariance is
    kept). :meth:`paper` gives the paper's own setting (App. D.1, Table 12).
    ``augment=True`` applies a fresh random hidden-neuron permutation to every batch (a
    no-op up to the random stream for a model that is exactly invariant to them).

    ``scale``: ``True`` (or ``"tensor"``) divides each tensor by one standard deviation;
    ``"position"`` standardizes every entry by its own mean and standard deviation over the
    training networks (the authors' ``normalize`` option; it is not permutation invariant,
    as neurons are not aligned across networks); ``False`` leaves the weights as they are.
    ``select``: the epoch whose weights are kept, by the lowest validation BCE (``"loss"``)
    or the highest validation Kendall tau (``"tau"``, the paper's model selection; needs at
    least 3 validation networks). ``patience``: epochs without improvement before stopping
    (``None``: run all epochs). ``model_kwargs`` go to the model (e.g.
    :class:`~gensight.nf.InvariantNFN`'s ``io_embed`` and ``pool``).

    Fitted state: ``model_``; ``history_`` (per epoch: the validation BCE, or minus the
    validation tau with ``select="tau"``; lower is better) and ``best_epoch_`` (1-based).
    """

    def __init__(self, symmetry: str = "hnp", channels=(16, 16, 16), epochs: int = 60,
                 batch_size: int = 32, lr: float = 1e-3, patience: int | None = 10,
                 val_fraction: float = 0.15, augment: bool = False, seed: int = 0,
                 verbose: bool = False, *, head_hidden=(256,), scale: bool | str = True,
                 select: str = "loss", model_kwargs: dict | None = None):
        if symmetry not in ("hnp", "np"):
            raise PredictError(f"symmetry must be 'hnp' or 'np', got {symmetry!r}")
        if select not in ("loss", "tau"):
            raise PredictError(f"select must be 'loss' or 'tau', got {select!r}")
        if scale not in (True, False, "tensor", "position"):
            raise PredictError(f"scale must be True, False, 'tensor' or 'position', got "
                               f"{scale!r}")
        self.model_kwargs = dict(model_kwargs or {})
        self.symmetry, self.channels, self.epochs = symmetry, tuple(channels), epochs
        self.batch_size, self.lr, self.patience = batch_size, lr, patience
        self.val_fraction, self.augment, self.seed = val_fraction, augment, seed
        self.verbose, self.head_hidden, self.scale = verbose, tuple(head_hidden), scale
        self.select = select
        self.name = f"nfn-{symmetry}"

    @classmethod
    def paper(cls, symmetry: str = "hnp", *, epochs: int = 50, seed: int = 0,
              verbose: bool = False) -> NFNPredictor:
        """The generalization predictor of arXiv 2302.14040 as its App. D.1 and Table 12
        define it, with the details of the authors' configuration files: NF-Layers of 16, 16
        and 5 channels with ReLU, mean pooling, a head ``Linear -> 1000 -> ReLU -> 1000 ->
        ReLU -> 1``, sigmoid and binary cross-entropy, Adam at 1e-3, batch size 8, 50 epochs,
        and the epoch with the best validation tau kept (no early stop); the validation
        split is a fifth of the training networks, and nothing is augmented.
        ``symmetry="hnp"``: HNP layers and pool, weights not rescaled. ``"np"``: NP layers
        with learned IO-encoding in every layer, the HNP pool, and every weight standardized
        by its position's mean and standard deviation (``scale="position"``). Named
        ``nfn-hnp-paper`` / ``nfn-np-paper``."""
        np_ = symmetry == "np"
        model = cls(symmetry, channels=(16, 16, 5), epochs=epochs, batch_size=8, lr=1e-3,
                    patience=None, val_fraction=0.2, seed=seed, verbose=verbose,
                    head_hidden=(1000, 1000), scale="position" if np_ else False,
                    select="tau",
                    model_kwargs={"io_embed": "all", "pool": "hnp"} if np_ else None)
        model.name = f"nfn-{symmetry}-paper"
        return model

    # Whether the model takes any ParamSpace (GRUs, residual CNNs): UNF and Deep Sets do; the
    # NF-Layers and NFT need an MLP/CNN WeightSpace.
    any_space = False

    def _scale_fit(self, batch: WeightBatch | ParamBatch) -> None:
        """Per-tensor (or per-entry) scales from the training networks."""
        tensors = batch.tensors() if isinstance(batch, ParamBatch) else \
            [*batch.weights, *batch.biases]
        if self.scale == "position":
            self.mean_ = [t.mean(0) for t in tensors]
            std = [t.std(0, correction=0) for t in tensors]
            self.std_ = [torch.where(v < 1e-5, torch.ones_like(v), v) for v in std]
        elif isinstance(batch, ParamBatch):
            self.w_scale_ = [t.std().clamp_min(1e-8) for t in tensors]
            self.b_scale_ = []
        else:
            self.w_scale_ = [w.std().clamp_min(1e-8) for w in batch.weights]
            self.b_scale_ = [None if b is None else b.std().clamp_min(1e-8)
                             for b in batch.biases]

    def _scaled(self, batch: WeightBatch | ParamBatch) -> WeightBatch | ParamBatch:
        if not self.scale:
            return batch
        if self.scale == "position":
            norm = [(t - m) / s for t, m, s in zip(
                batch.tensors() if isinstance(batch, ParamBatch) else
                [*batch.weights, *batch.biases], self.mean_, self.std_, strict=True)]
            if isinstance(batch, ParamBatch):
                return ParamBatch(batch.space, dict(zip(batch.params, norm, strict=True)))
            n = len(batch.weights)
            return WeightBatch(batch.space, norm[:n], norm[n:], check_finite=False)
        if isinstance(batch, ParamBatch):
            return ParamBatch(batch.space, {k: t / s for (k, t), s in
                                            zip(batch.params.items(), self.w_scale_,
                                                strict=True)})
        return WeightBatch(batch.space, [w / s for w, s in zip(batch.weights, self.w_scale_,
                                                               strict=True)],
                           [None if b is None else b / s for b, s in
                            zip(batch.biases, self.b_scale_, strict=True)],
                           check_finite=False)

    def check_split(self, split: ZooSplit) -> None:
        space = split.zoo.space if hasattr(split.zoo, "space") else None
        if isinstance(space, ParamSpace) and not self.any_space:
            raise PredictError(f"{self.name} needs an MLP or CNN zoo; this zoo holds family "
                               f"{split.zoo.family!r} networks: use unf, unf-np, deepsets, "
                               f"statnn or statnn-mlp")
        if len(split) < 2:
            raise PredictError(f"{self.name} needs at least 2 training networks (one to train "
                               f"on, one to stop early on); the training split has "
                               f"{len(split)}")
        n_val = max(1, int(round(len(split) * self.val_fraction)))
        if self.select == "tau" and n_val < 3:
            raise PredictError(f"{self.name} keeps the epoch with the best validation tau, "
                               f"which needs at least 3 validation networks; "
                               f"{self.val_fraction:.0%} of the {len(split)} training "
                               f"networks is {n_val}: use a larger training split")
        y = split.y
        if y.min() < 0 or y.max() > 1:
            raise PredictError(f"{self.name} predicts values in [0, 1] (a sigmoid trained "
                               f"with cross-entropy on accuracies); the target "
                               f"{split.target!r} ranges over [{y.min():.4g}, {y.max():.4g}]: "
                               f"predict an accuracy column, or use statnn")

    def _make_model(self, space) -> nn.Module:
        from gensight.nf import InvariantNFN

        return InvariantNFN(space, symmetry=self.symmetry, channels=self.channels,
                            head_hidden=self.head_hidden, **self.model_kwargs)

    def fit(self, split: ZooSplit) -> NFNPredictor:
        from gensight.weightspace import permute, random_permutation

        self.check_split(split)

        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        batch = split.weights
        if self.scale:
            self._scale_fit(batch)
        batch = self._scaled(batch)
        y = torch.tensor(split.y, dtype=torch.float32)
        n = len(y)
        order = torch.randperm(n, generator=gen)
        n_val = max(1, int(round(n * self.val_fraction)))
        val_idx, train_idx = order[:n_val], order[n_val:]
        model = self._make_model(split.weights.space)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        loss_fn = nn.BCEWithLogitsLoss()
        best, best_state, bad = float("inf"), None, 0
        self.history_ = []
        for epoch in range(self.epochs):
            model.train()
            perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
            for start in range(0, len(perm), self.batch_size):
                idx = perm[start:start + self.batch_size]
                xb = batch[idx]
                if self.augment and isinstance(xb, ParamBatch):
                    from gensight.nf import unf

                    spec = xb.space.spec_for(self.symmetry)
                    perms = unf.random_permutation(spec, xb.space.shape_dict, gen, len(idx))
                    xb = ParamBatch(xb.space, unf.permute(xb.params, spec, perms))
                elif self.augment:
                    xb = permute(xb, random_permutation(batch.space, self.symmetry,
                                                        batch_size=len(idx), generator=gen))
                loss = loss_fn(model(xb).squeeze(-1), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                logits = torch.cat([model(batch[val_idx[i:i + 256]]).squeeze(-1)
                                    for i in range(0, len(val_idx), 256)])
            if self.select == "tau":
                val = -_val_tau(logits, y[val_idx])
            else:
                val = float(loss_fn(logits, y[val_idx]))
            self.history_.append(val)
            if self.verbose:
                what = f"val tau {-val:.4f}" if self.select == "tau" else f"val BCE {val:.4f}"
                print(f"{self.name} epoch {epoch + 1}: {what}")
            if best_state is None or val < best - 1e-5:
                best, best_state, bad = val, copy.deepcopy(model.state_dict()), 0
                self.best_epoch_ = epoch + 1
            else:
                bad += 1
                if self.patience is not None and bad >= self.patience:
                    break
        model.load_state_dict(best_state)
        self.model_ = model.eval()
        return self

    def predict(self, split: ZooSplit) -> np.ndarray:
        self._check_fitted("model_")
        batch = self._scaled(split.weights)
        out = []
        with torch.no_grad():
            for start in range(0, len(batch), 256):
                out.append(torch.sigmoid(self.model_(batch[start:start + 256]).squeeze(-1)))
        return torch.cat(out).numpy().astype(np.float64)


def _val_tau(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Kendall's tau-b of validation predictions (distinct pairs, as ``scipy.stats``); 0 when
    undefined (constant predictions), so a collapsed model scores as no ranking at all."""
    from gensight.metrics import MetricError, kendall_tau

    try:
        tau = kendall_tau(pred.double().numpy(), y.double().numpy())
    except MetricError:
        return 0.0
    return 0.0 if not np.isfinite(tau) else float(tau)


class NFTPredictor(NFNPredictor):
    """An invariant NFT (:class:`~gensight.nf.InvariantNFT`, arXiv 2305.13546) predicting
    test accuracy, trained exactly as :class:`NFNPredictor` (sigmoid + BCE, Adam, early
    stopping on a held-out part of the training split, per-tensor weight scaling).

    Defaults: HNP (learned input/output position embedding), C = 16, 2 NFT blocks of 4 heads,
    feed-forward factor 2, dropout 0.1, mean pool, one hidden head layer of 256.
    """

    def __init__(self, symmetry: str = "hnp", channels: int = 16, blocks: int = 2,
                 heads: int = 4, dropout: float = 0.1, epochs: int = 60, batch_size: int = 32,
                 lr: float = 1e-3, patience: int = 10, val_fraction: float = 0.15,
                 augment: bool = False, seed: int = 0, verbose: bool = False):
        super().__init__(symmetry, (channels,), epochs, batch_size, lr, patience,
                         val_fraction, augment, seed, verbose)
        self.blocks, self.heads, self.dropout = blocks, heads, dropout
        self.name = "nft" if symmetry == "hnp" else "nft-np"

    def _make_model(self, space) -> nn.Module:
        from gensight.nf import InvariantNFT

        return InvariantNFT(space, symmetry=self.symmetry, channels=self.channels[0],
                            blocks=self.blocks, heads=self.heads, dropout=self.dropout)


class UNFPredictor(NFNPredictor):
    """An :class:`~gensight.nf.InvariantUNF` (arXiv 2402.05232) on the zoo's weight space
    (HNP spec by default), trained as :class:`NFNPredictor`. On MLP/CNN spaces its layers span
    the NF-Layers' maps; the class exists so that any :class:`~gensight.nf.PermSpec` space
    (GRUs, residual CNNs: a :class:`~gensight.weightspace.ParamSpace`) gets the same
    predictor. The default architecture is the paper's generalization predictor (Sec. 5.1):
    3 UNF layers of 16 channels, invariant pooling, an MLP head with 2 hidden layers of 512."""

    any_space = True

    def __init__(self, symmetry: str = "hnp", channels=(16, 16, 16),
                 head_hidden=(512, 512), **kwargs):
        super().__init__(symmetry, channels, **kwargs)
        self.head_hidden = tuple(head_hidden)
        self.name = "unf" if symmetry == "hnp" else "unf-np"

    def _make_model(self, space) -> nn.Module:
        from gensight.nf import InvariantUNF

        if isinstance(space, ParamSpace):
            return InvariantUNF(space.spec_for(self.symmetry), space.shape_dict,
                                channels=self.channels, head_hidden=self.head_hidden)
        return InvariantUNF.from_weight_space(space, self.symmetry, channels=self.channels,
                                              head_hidden=self.head_hidden)


class DeepSetsPredictor(NFNPredictor):
    """The Deep Sets baseline of arXiv 2402.05232 (:class:`~gensight.nf.InvariantDeepSets`:
    every tensor a set of scalars), trained as :class:`NFNPredictor`."""

    any_space = True

    def __init__(self, channels=(32, 32), **kwargs):
        super().__init__("hnp", channels, **kwargs)
        self.name = "deepsets"

    def _make_model(self, space) -> nn.Module:
        from gensight.nf import InvariantDeepSets

        return InvariantDeepSets(space, channels=self.channels)


class StatNetPredictor(NFNPredictor):
    """StatNN as the NFN paper runs it (arXiv 2302.14040, Table 2; the authors' ``StatNet``):
    the 7 statistics of every weight and bias tensor (:class:`StatFeatures`, unscaled) ->
    ``Linear -> 1000 -> ReLU -> 1000 -> ReLU -> 1`` -> sigmoid, trained exactly as
    :meth:`NFNPredictor.paper` (BCE, Adam 1e-3, batch 8, 50 epochs, best validation tau).
    Named ``statnn-paper``; ``statnn`` is gradient boosting on the same statistics, the best
    regressor of arXiv 2002.11448."""

    any_space = True

    def __init__(self, *, epochs: int = 50, seed: int = 0, verbose: bool = False):
        super().__init__("hnp", (), epochs, 8, 1e-3, None, 0.2, False, seed, verbose,
                         head_hidden=(1000, 1000), scale=False, select="tau")
        self.name = "statnn-paper"

    def _make_model(self, space) -> nn.Module:
        from gensight.nf.models import mlp_head

        # a WeightBatch carries every layer's bias (zeros for a layer without one)
        n_tensors = len(space.shape_dict) if isinstance(space, ParamSpace) else \
            2 * space.n_layers
        return nn.Sequential(StatFeatures(), mlp_head(7 * n_tensors, self.head_hidden, 1))

    def _scaled(self, batch: WeightBatch | ParamBatch) -> torch.Tensor:
        # the statistics never change: computed once, not per batch and epoch
        return StatFeatures()(batch)


# ------------------------------------------------------------------------ measure based

class MeasurePredictor(Predictor):
    """One complexity measure mapped to accuracy by a least-squares line fitted on the training
    split, on the measure's own scale or, for a positive measure whose line fits better that
    way (heavy-tailed ones such as the path norm), on its log (``transform_``). Both maps are
    monotone, so the ranking scores (tau, granulated tau, CMI) are those of the measure
    itself, in the direction (sign of the slope) learned on the training split.
    Values that are NaN (the measure does not apply to that network) are ranked as the most
    complex (set to the largest finite training value). ``values`` may hold precomputed
    measures (``member_id`` + the measure's column); otherwise they are computed."""

    def __init__(self, measure: str, values: pd.DataFrame | None = None,
                 n_examples: int | None = 1000):
        from gensight.measures import get_measure

        get_measure(measure)
        self.measure, self.values, self.n_examples = measure, values, n_examples
        self.name = f"measure:{measure}"

    def _values(self, split: ZooSplit) -> np.ndarray:
        from gensight.measures import zoo_measures

        have = self.values
        if have is None or not split.rows["member_id"].isin(have["member_id"]).all():
            computed, _ = zoo_measures(split.zoo, [self.measure], split.rows,
                                       n_examples=self.n_examples)
            have = computed if have is None else pd.concat([have, computed])
            self.values = have
        lookup = have.drop_duplicates("member_id").set_index("member_id")[self.measure]
        return lookup.loc[split.rows["member_id"]].to_numpy(np.float64)

    def _mapped(self, v: np.ndarray) -> np.ndarray:
        v = np.where(np.isfinite(v), v, self.fill_)
        return np.log(np.maximum(v, 1e-6 * self.floor_)) if self.transform_ == "log" else v

    def fit(self, split: ZooSplit) -> MeasurePredictor:
        v = self._values(split)
        finite = np.isfinite(v)
        if finite.sum() < 2:
            raise PredictError(f"measure {self.measure!r} applies to fewer than 2 training "
                               f"networks")
        self.fill_ = float(v[finite].max())
        self.floor_ = float(v[finite].min())
        y = split.y
        best = None
        for transform in ("identity", "log"):
            if transform == "log" and self.floor_ <= 0:
                continue
            self.transform_ = transform
            x = self._mapped(v)
            if np.ptp(x) == 0:
                fit = (0.0, float(y.mean()))
            else:
                fit = tuple(float(c) for c in np.polyfit(x, y, 1))
            sse = float(((fit[0] * x + fit[1] - y) ** 2).sum())
            if best is None or sse < best[0] - 1e-12:
                best = (sse, transform, fit)
        _, self.transform_, (self.slope_, self.bias_) = best
        return self

    def predict(self, split: ZooSplit) -> np.ndarray:
        self._check_fitted("slope_")
        return self.slope_ * self._mapped(self._values(split)) + self.bias_


# ----------------------------------------------------------------------- margin signatures

class MarginSignature(Predictor):
    """arXiv 1810.00113: signatures of the normalized margin distributions at the input and
    hidden layers (see :mod:`gensight.measures.margins`), linear regression to the gap
    ``train_acc - test_acc``; the predicted accuracy is ``train_acc - predicted gap``."""

    def __init__(self, kind: str = "quartile", n_examples: int = 500):
        self.kind, self.n_examples = kind, n_examples
        self.name = "margin-signature"

    def check_split(self, split: ZooSplit) -> None:
        if hasattr(split.zoo, "require_feedforward"):
            split.zoo.require_feedforward(f"{self.name}")

    def _features(self, split: ZooSplit) -> np.ndarray:
        from gensight.measures import NotApplicable
        from gensight.measures.margins import normalized_margins, signature
        from gensight.measures.zoo import member_data

        key = ("sig", self.kind, self.n_examples)
        if key not in split._cache:
            rows = []
            for _, data in member_data(split.zoo, split.rows, self.n_examples):
                try:
                    rows.append(signature(normalized_margins(data.model, data.x, data.y),
                                          self.kind))
                except NotApplicable:
                    rows.append(None)
            width = max((len(r) for r in rows if r is not None), default=0)
            split._cache[key] = np.stack([r if r is not None else np.full(width, np.nan)
                                          for r in rows])
        return split._cache[key]

    def fit(self, split: ZooSplit) -> MarginSignature:
        from sklearn.linear_model import LinearRegression

        if "train_acc" not in split.rows.columns:
            raise PredictError("margin-signature predicts train_acc minus the gap; the rows "
                               "have no train_acc column")
        x = self._features(split)
        gap = split.rows["train_acc"].to_numpy(np.float64) - split.y
        ok = np.isfinite(x).all(axis=1) & np.isfinite(gap)
        if ok.sum() < x.shape[1] + 2:
            raise PredictError(f"margin-signature needs at least {x.shape[1] + 2} training "
                               f"networks with margin signatures (one more than its "
                               f"{x.shape[1]} features and the intercept); "
                               f"{int(ok.sum())} of {len(split)} have one")
        y = split.y
        self.clip_ = bool(y.min() >= 0.0 and y.max() <= 1.0)
        self.fill_ = x[ok].mean(axis=0)
        self.model_ = LinearRegression().fit(x[ok], gap[ok])
        return self

    def predict(self, split: ZooSplit) -> np.ndarray:
        self._check_fitted("model_")
        x = self._features(split)
        x = np.where(np.isfinite(x), x, self.fill_)
        pred = split.rows["train_acc"].to_numpy(np.float64) - self.model_.predict(x)
        return np.clip(pred, 0, 1) if self.clip_ else pred


METHOD_HELP = ("statnn, statnn-mlp, statnn-paper, nfn-hnp, nfn-np, nfn-hnp-paper, nfn-np-paper, "
               "nft, nft-np, unf, unf-np, deepsets, margin-signature, "
               "measure:NAME (any registered measure)")


def make_predictors(methods: list[str], zoo, rows: pd.DataFrame, *, seed: int = 0,
                    epochs: int = 60, n_examples: int | None = 1000) -> list[Predictor]:
    """Predictors by CLI name. The ``measure:NAME`` methods share one pass over ``rows``
    (every measure computed per network in one go) instead of one pass per measure."""
    names = [m[len("measure:"):] for m in methods if m.startswith("measure:")]
    values = None
    if names:
        from gensight.measures import get_measure, zoo_measures

        for n in names:
            get_measure(n)
        values, _ = zoo_measures(zoo, names, rows, n_examples=n_examples)
    return [make_predictor(m, seed=seed, epochs=epochs, measure_values=values,
                           n_examples=n_examples) for m in methods]


def make_predictor(method: str, *, seed: int = 0, epochs: int = 60,
                   measure_values: pd.DataFrame | None = None,
                   n_examples: int | None = 1000) -> Predictor:
    """A predictor by its CLI name (see ``METHOD_HELP``). ``epochs`` applies to the NFN, NFT,
    UNF and Deep Sets predictors of our own recipe; the ``-paper`` ones train the paper's 50."""
    if method == "statnn":
        return StatNN("gbt", seed)
    if method == "statnn-mlp":
        return StatNN("mlp", seed)
    if method in ("nfn-hnp", "nfn-np"):
        return NFNPredictor(method.split("-")[1], epochs=epochs, seed=seed)
    if method in ("nfn-hnp-paper", "nfn-np-paper"):
        return NFNPredictor.paper(method.split("-")[1], seed=seed)
    if method == "statnn-paper":
        return StatNetPredictor(seed=seed)
    if method in ("unf", "unf-np"):
        return UNFPredictor("np" if method == "unf-np" else "hnp", epochs=epochs, seed=seed)
    if method == "deepsets":
        return DeepSetsPredictor(epochs=epochs, seed=seed)
    if method in ("nft", "nft-np"):
        return NFTPredictor("np" if method == "nft-np" else "hnp", epochs=epochs, seed=seed)
    if method == "margin-signature":
        return MarginSignature(n_examples=min(n_examples or 500, 500))
    if method.startswith("measure:"):
        return MeasurePredictor(method[len("measure:"):], measure_values, n_examples)
    raise PredictError(f"unknown method {method!r}; known: {METHOD_HELP}")
