"""``gensight demo``: the whole program on a small zoo, in a few minutes on a laptop CPU.

1. builds (or reuses) a zoo of digits MLPs on a hyperparameter grid, with their
   initialization checkpoints and logits on two shifted test sets;
2. fits the weight-based predictors (StatNN, NFN-HNP, NFN-NP) and a few complexity measures,
   and scores how well each predicts test accuracy on held-out networks;
3. estimates every network's accuracy on the two shifted sets without labels;
4. writes the report (``index.html`` + CSV tables) with :func:`gensight.report.build_report`.

The zoo is kept in ``DIR/zoo`` (``DIR/zoo-quick`` for ``quick``) and reused by later runs: a
second demo skips the training, and ``gensight report DIR/zoo`` rebuilds the page alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

DEMO_SPEC = {
    "name": "demo-digits-mlp",
    "dataset": "digits",
    "seed": 7,
    "mode": "grid",
    "seeds_per_config": 4,
    "shard_size": 48,
    "checkpoints": [0, "final"],
    "shifts": ["gaussian_noise", "rotation"],
    "severities": [2],
    "store_logits": True,
    "architecture": {"family": "mlp", "hidden": [32, 32]},
    "hparams": {
        "optimizer": ["sgd", "adam"],
        "lr": [0.01, 0.03, 0.1],
        "l2": [1e-5, 1e-3],
        "train_fraction": [0.25, 1.0],
        "epochs": [3, 12],
        "batch_size": [32],
    },
}
"""The demo zoo: 2 x 3 x 2 x 2 x 2 = 48 configurations x 4 seeds = 192 digits MLPs
(64-32-32-10), trained on the digits that ship with scikit-learn."""

QUICK_CHANGES = {
    "name": "demo-digits-mlp-quick",
    "seeds_per_config": 2,
    "architecture": {"family": "mlp", "hidden": [16]},
    "hparams": {"optimizer": ["sgd", "adam"], "lr": [0.01, 0.1], "train_fraction": [0.3],
                "epochs": [1, 4], "batch_size": [64]},
}
"""``--quick`` (the test suite's demo): 8 configurations x 2 seeds = 16 small MLPs."""

DEMO_METHODS = ("statnn", "nfn-hnp", "nfn-np", "measure:log.prod.of.spec",
                "measure:log.sum.of.fro", "measure:fro.dist", "measure:path.norm",
                "measure:pacbayes.mag.flatness")


def demo_spec(quick: bool = False) -> dict:
    """The demo's zoo spec as a dict (a copy; see :data:`DEMO_SPEC`)."""
    spec = copy.deepcopy(DEMO_SPEC)
    if quick:
        spec.update(copy.deepcopy(QUICK_CHANGES))
    return spec


def run_demo(directory: str | Path = "gensight-demo", *, quick: bool = False,
             epochs: int | None = None,
             build_progress: Callable[[int, int, int], None] | None = None,
             progress: Callable[[str], None] | None = None):
    """Build (or reuse) the demo zoo under ``directory`` and write its report to
    ``directory/report``. Returns the :class:`gensight.report.Report`."""
    from gensight.report import build_report
    from gensight.zoo import ZooSpec, build_zoo

    directory = Path(directory)
    spec = ZooSpec.from_dict(demo_spec(quick))
    zoo = build_zoo(spec, directory / ("zoo-quick" if quick else "zoo"),
                    progress=build_progress)
    return build_report(zoo, directory / ("report-quick" if quick else "report"),
                        methods=DEMO_METHODS, epochs=epochs or (10 if quick else 60),
                        n_examples=300 if quick else 1000, progress=progress,
                        command=f"gensight demo --dir {directory}" + (" --quick" if quick
                                                                       else ""))
