"""Accuracy falls with severity: small trained zoos on every dataset, every shift that applies.

Each dataset gets a zoo of 3 small MLPs (seconds to train); their mean accuracy is taken on
the clean test set (severity 0) and on every shift at severities 1-5. Accuracy may not rise
from one severity to the next by more than ``TOLERANCE`` (0.5 points: under 2 of the 360
digits test examples, 5 of the 1,000 of mnist5k and mnist1d; noise shifts draw new noise at
each severity), and severity 5 must lie below the clean accuracy by more than that.
"""

import pytest

from gensight.data import SEVERITIES, available_shifts, load_dataset

TOLERANCE = 0.005

ZOOS = {  # dataset: (hidden widths, epochs)
    "digits": ([32], 6),
    "mnist5k": ([32], 2),
    "mnist1d": ([64], 10),
}


def _shifts(dataset: str) -> list[str]:
    ds = load_dataset(dataset)
    return list(available_shifts(ds.spatial_dims, bounded=ds.value_range is not None))


@pytest.fixture(scope="module", params=list(ZOOS))
def zoo_accuracy(request, tmp_path_factory):
    """(dataset, shifts, {level: mean accuracy}) per shift, level 0 = the clean test set."""
    from gensight.zoo import ZooSpec, build_zoo

    dataset = request.param
    hidden, epochs = ZOOS[dataset]
    shifts = _shifts(dataset)
    spec = ZooSpec.from_dict({
        "name": f"shift-accuracy-{dataset}", "dataset": dataset, "seed": 0, "configs": 3,
        "shard_size": 8, "checkpoints": ["final"], "shifts": shifts,
        "severities": list(SEVERITIES), "architecture": {"family": "mlp", "hidden": hidden},
        "hparams": {"optimizer": ["adam"], "lr": {"low": 0.003, "high": 0.01, "log": True},
                    "epochs": [epochs], "batch_size": [64]},
    })
    table = build_zoo(spec, tmp_path_factory.mktemp(dataset) / "zoo").table.query("is_final")
    clean = float(table["test_acc"].mean())
    return dataset, {s: [clean] + [float(table[f"shift:{s}-{v}_acc"].mean())
                                   for v in SEVERITIES] for s in shifts}


def test_accuracy_falls_with_severity_for_every_shift(zoo_accuracy):
    dataset, accuracy = zoo_accuracy
    assert set(accuracy) == set(_shifts(dataset))
    bad = {}
    for shift, acc in accuracy.items():
        rises = [b - a for a, b in zip(acc, acc[1:], strict=False)]
        if max(rises) > TOLERANCE or acc[-1] >= acc[0] - TOLERANCE:
            bad[shift] = [round(a, 3) for a in acc]
    assert not bad, f"{dataset}: accuracy at severities 0-5 does not fall: {bad}"
