"""Compute measures for the members of a zoo."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from gensight.errors import NonFiniteWeightsError
from gensight.measures.core import ConvergenceWarning, MeasureError, MemberData
from gensight.measures.registry import MEASURES, compute, get_measure


def _check_n_examples(n_examples) -> None:
    if n_examples is not None and (isinstance(n_examples, bool)
                                   or not isinstance(n_examples, (int, np.integer))
                                   or n_examples < 1):
        raise MeasureError(f"n_examples must be a positive number of examples or None (all), "
                           f"got {n_examples!r}")


def member_data(zoo, rows: pd.DataFrame, n_examples: int | None = 1000):
    """Yield ``(row, MemberData)`` for ``rows`` of a zoo's table: the trained network, the
    network at initialization (when the zoo stores checkpoint 0), and up to ``n_examples`` of
    the member's own training examples."""
    from gensight.data import load_dataset
    from gensight.zoo.spec import ZooSpec
    from gensight.zoo.train import member_states

    _check_n_examples(n_examples)
    if hasattr(zoo, "require_training_data"):
        zoo.require_training_data("computing complexity measures")
        zoo.require_feedforward("computing complexity measures")
    spec = ZooSpec.from_dict(zoo.manifest["spec"])
    members = {m.member_id: m for m in spec.members()}
    if "member_id" not in rows.columns:
        raise MeasureError("rows lack the member_id column of a zoo table")
    unknown = [m for m in rows["member_id"] if m not in members]
    if unknown:
        raise MeasureError(f"{len(unknown)} row(s) name members that are not in the zoo "
                           f"{zoo.manifest.get('name', '')!r}: {unknown[:5]}")
    data = load_dataset(spec.dataset)
    n_train = len(data.y_train)
    init_rows = zoo.table[zoo.table["epoch"] == 0].set_index("member_id")
    for start in range(0, len(rows), 64):
        chunk = rows.iloc[start:start + 64]
        try:
            trained = zoo.modules(chunk)
        except NonFiniteWeightsError as exc:
            members = getattr(exc, "members", None)
            if not members:
                raise
            bad = [chunk["member_id"].iloc[m] for m in members]
            raise MeasureError(f"{len(bad)} network(s) have NaN/inf weights: {bad[:5]}; leave "
                               "them out (rows = table.query('finite'))") from None
        has_init = chunk["member_id"].isin(init_rows.index)
        inits = iter(zoo.modules(init_rows.loc[chunk.loc[has_init, "member_id"]]
                                 .reset_index())) if has_init.any() else None
        for i, (_, row) in enumerate(chunk.iterrows()):
            mem = members[row["member_id"]]
            model = trained[i]
            init = next(inits) if has_init.iloc[i] else None
            subset = member_states([mem], n_train)[0].subset
            idx = measure_examples(mem, subset, n_examples)
            yield row, MemberData(model, data.x_train[idx], data.y_train[idx], init,
                                  n_train=len(subset))


def measure_examples(member, subset: torch.Tensor, n_examples: int | None) -> torch.Tensor:
    """The indices of the training examples the measures use for ``member``: all of its
    training subset, or ``n_examples`` of them drawn at random (seeded by the member's seed,
    in index order). Not the first ``n_examples``: a split stored class by class (MNIST-5k's
    is) would give examples of one or two classes only."""
    if n_examples is None or n_examples >= len(subset):
        return subset
    g = torch.Generator().manual_seed(member.seed + 2)  # + 1 draws the subset and data order
    return subset[torch.randperm(len(subset), generator=g)[:n_examples]].sort().values


def zoo_measures(zoo, names: Sequence[str], rows: pd.DataFrame | None = None, *,
                 n_examples: int | None = 1000,
                 progress: Callable[[int, int], None] | None = None,
                 alpha_batch: int | None = 32,
                 alpha_progress: Callable[[int, int], None] | None = None
                 ) -> tuple[pd.DataFrame, dict[str, str]]:
    """Measures ``names`` for every row (default: finite members at their final checkpoint).

    The sharpness measures' alpha' searches run first, ``alpha_batch`` networks at a time in
    lockstep (:func:`gensight.measures.batched.sharpness_alpha_batch`: the same search as
    :func:`~gensight.measures.core.sharpness_alpha` per network, batched over members as the
    population trainer batches training); ``alpha_batch=None`` runs ``sharpness_alpha`` on
    each network alone instead. ``alpha_progress(done, total)`` follows those searches
    (``total`` = networks x kinds of alpha'), ``progress(done, total)`` the networks after.

    Returns a table (``member_id`` plus one column per measure, a name given twice counted
    once; NaN where a measure does not apply) and, per measure that did not apply somewhere,
    the reason and how often. Power iterations that stop short of their tolerance do not
    warn once per layer and member: one :class:`ConvergenceWarning` at the end counts the
    members and quotes the first case.

    Raises:
        MeasureError: an unknown measure name (with the closest known one), no names, a
            measure that needs the initialization checkpoint the zoo lacks, ``n_examples``
            not a positive integer, rows naming members not in the zoo.
    """
    names = [names] if isinstance(names, str) else list(dict.fromkeys(names))
    if not names:
        raise MeasureError(f"no measures named; known: {', '.join(MEASURES)}")
    _check_n_examples(n_examples)
    if alpha_batch is not None and (isinstance(alpha_batch, bool)
                                    or not isinstance(alpha_batch, int) or alpha_batch < 1):
        raise MeasureError(f"alpha_batch must be a positive number of networks or None, got "
                           f"{alpha_batch!r}")
    for n in names:
        m = get_measure(n)
        if m.needs_init and not (zoo.table["epoch"] == 0).any():
            raise MeasureError(f"measure {n!r} needs the initialization checkpoint; this zoo "
                               "stores none (add 0 to the spec's checkpoints)")
    if rows is None:
        rows = zoo.table.query("is_final and finite")
    caches = ({} if alpha_batch is None
              else _batched_alphas(zoo, rows, names, n_examples, batch_size=alpha_batch,
                                   progress=alpha_progress))
    records, notes = [], {}
    unconverged: list[str] = []  # per member with a ConvergenceWarning: its first message
    for done, (row, data) in enumerate(member_data(zoo, rows, n_examples), start=1):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = compute(data, names, caches.get(row["member_id"]))
        first = None
        for w in caught:
            if issubclass(w.category, ConvergenceWarning):
                first = first or str(w.message)
            else:  # anything else goes on as raised
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if first is not None:
            unconverged.append(f"{row['member_id']}: {first}")
        records.append({"member_id": row["member_id"], **result.values})
        for name, why in result.notes.items():
            reason, count = notes.get(name, (why, 0))
            notes[name] = (reason, count + 1)
        if progress is not None:
            progress(done, len(rows))
    if unconverged:
        warnings.warn(f"power iteration stopped short of its tolerance for {len(unconverged)} "
                      f"of {len(rows)} members; those values are lower bounds (first: "
                      f"{unconverged[0]})", ConvergenceWarning, stacklevel=2)
    table = pd.DataFrame.from_records(records, columns=["member_id", *names])
    summary = {n: f"{why} ({count} of {len(rows)} members)" for n, (why, count) in
               notes.items()}
    table[names] = table[names].astype(np.float64)
    return table, summary


def _batched_alphas(zoo, rows: pd.DataFrame, names: Sequence[str], n_examples: int | None,
                    batch_size: int, progress: Callable[[int, int], None] | None = None
                    ) -> dict:
    """Per member id, the cache entries ``("alpha", magnitude)`` of the sharpness measures
    among ``names``, found by the batched search over up to ``batch_size`` members of one
    activation at a time (on each member's own first ``n_examples`` training examples)."""
    from gensight.measures.batched import sharpness_alpha_batch
    from gensight.measures.core import NotApplicable
    from gensight.measures.registry import SEARCH

    kinds = sorted({n.startswith("sharpness.mag.") for n in names
                    if n.startswith("sharpness.")})
    if "finite" in rows.columns:  # the per-member pass says what is wrong with the others
        rows = rows[rows["finite"].astype(bool)]
    if not kinds or rows.empty:
        return {}
    from gensight.data import load_dataset
    from gensight.zoo.spec import ZooSpec
    from gensight.zoo.train import Population, member_states

    if hasattr(zoo, "require_training_data"):
        zoo.require_training_data("computing complexity measures")
        zoo.require_feedforward("computing complexity measures")
    spec = ZooSpec.from_dict(zoo.manifest["spec"])
    members = {m.member_id: m for m in spec.members()}
    data = load_dataset(spec.dataset)
    out: dict = {}
    total, finished = len(rows) * len(kinds), 0
    # one population per activation; one example count per train fraction
    keys = ["activation", *(["train_fraction"] if "train_fraction" in rows.columns else [])]
    for key, group in rows.groupby(keys, sort=False):
        activation = key[0]
        for start in range(0, len(group), batch_size):
            chunk = group.iloc[start:start + batch_size]
            batch = zoo.weights(chunk)
            pop = Population(batch.space, spec.architecture, [w[:, 0] for w in batch.weights],
                             [b[:, 0] for b in batch.biases], str(activation))
            chosen = [members[i] for i in chunk["member_id"]]
            states = member_states(chosen, len(data.y_train))
            idx = torch.stack([measure_examples(m, s.subset, n_examples)
                               for m, s in zip(chosen, states, strict=True)])
            shared = bool((idx == idx[:1]).all())
            x = data.x_train[idx[0]] if shared else data.x_train[idx]
            y = data.y_train[idx[0]] if shared else data.y_train[idx]
            for magnitude in kinds:
                def step(done: int, _m: int, base: int = finished) -> None:
                    if progress is not None:
                        progress(base + done, total)

                found = sharpness_alpha_batch(
                    pop, x, y, magnitude=magnitude, target_drop=SEARCH["target_drop"],
                    restarts=SEARCH["restarts"], steps=SEARCH["steps"], rtol=SEARCH["rtol"],
                    progress=step)
                finished += len(chunk)
                for member_id, res in zip(chunk["member_id"], found, strict=True):
                    value = res.alpha if res.alpha is not None else NotApplicable(res.reason)
                    out.setdefault(member_id, {})[("alpha", magnitude)] = value
    return out
