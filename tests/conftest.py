"""Shared fixtures: one tiny grid zoo (digits MLPs, stored logits, a shift), built once."""

import pytest

GRID_SPEC = {
    "name": "tiny-grid", "dataset": "digits", "seed": 11, "mode": "grid",
    "seeds_per_config": 2, "shard_size": 16, "checkpoints": [0, "final"],
    "shifts": ["gaussian_noise"], "severities": [2, 4], "store_logits": True,
    "architecture": {"family": "mlp", "hidden": [12]},
    "hparams": {"optimizer": ["sgd", "adam"], "lr": [0.01, 0.05], "l2": [1e-5, 1e-3],
                "epochs": [3], "batch_size": [64], "train_fraction": [0.5]},
}


@pytest.fixture(scope="session")
def grid_zoo(tmp_path_factory):
    """16 members: 8 grid configurations (optimizer x lr x l2) x 2 seeds."""
    from gensight.zoo import ZooSpec, build_zoo

    return build_zoo(ZooSpec.from_dict(GRID_SPEC), tmp_path_factory.mktemp("grid") / "zoo")
