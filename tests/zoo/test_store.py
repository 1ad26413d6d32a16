"""The zoo store: round trips, determinism, resume after interruption, corrupt stores."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from gensight.data import load_dataset
from gensight.zoo import Zoo, ZooSpec, ZooStoreError, build_zoo, plan_shards
from gensight.zoo.train import init_member

SPEC = {
    "name": "tiny", "dataset": "digits", "seed": 7, "configs": 6, "seeds_per_config": 2,
    "shard_size": 4, "checkpoints": [0, 1, "final"], "shifts": ["contrast"], "severities": [2],
    "store_logits": True,
    "architecture": {"family": "mlp", "hidden": [8]},
    "hparams": {"optimizer": ["sgd", "adam"], "lr": {"low": 0.005, "high": 0.05},
                "epochs": [2], "batch_size": [64], "train_fraction": [0.5]},
}

TOML = """
name = "tiny"
dataset = "digits"
seed = 7
configs = 6
seeds_per_config = 2
shard_size = 4
checkpoints = [0, 1, "final"]
shifts = ["contrast"]
severities = [2]
store_logits = true

[architecture]
family = "mlp"
hidden = [8]

[hparams]
optimizer = ["sgd", "adam"]
lr = { low = 0.005, high = 0.05 }
epochs = [2]
batch_size = [64]
train_fraction = [0.5]
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo") / "full"
    return build_zoo(ZooSpec.from_dict(SPEC), root)


def sorted_table(zoo: Zoo) -> pd.DataFrame:
    return zoo.table.sort_values(["member_id", "epoch"]).reset_index(drop=True)


def assert_same_zoo(a: Zoo, b: Zoo) -> None:
    ta, tb = sorted_table(a), sorted_table(b)
    pd.testing.assert_frame_equal(ta, tb)
    assert a.weights(ta).allclose(b.weights(tb), rtol=0, atol=0)


def test_layout_and_readable_without_gensight(built):
    root = built.root
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format"] == "gensight-zoo" and manifest["n_members"] == 12
    assert manifest["spec"]["seed"] == 7 and len(manifest["spec_hash"]) == 16
    table = pq.read_table(root / "index.parquet").to_pandas()
    assert len(table) == 12 * 3  # members x checkpoints
    assert set(table["epoch"]) == {0, 1, 2}
    assert {"test_acc", "val_acc", "train_acc", "gen_gap", "shift:contrast-2_acc", "lr",
            "optimizer"} <= set(table.columns)
    raw = load_file(root / "shards" / "shard-00000.safetensors")
    assert raw["e2/1.weight"].shape == (4, 8, 64)
    assert raw["logits/e2/test"].shape == (4, 360, 10)
    assert "logits/e2/train" not in raw


def test_stored_weights_and_metrics_are_those_of_the_members(built):
    ds = load_dataset("digits")
    spec = ZooSpec.from_dict(SPEC)
    by_id = {m.member_id: m for m in spec.members()}
    init_rows = built.table[built.table["epoch"] == 0].head(3)
    batch = built.weights(init_rows)
    for k, member_id in enumerate(init_rows["member_id"]):
        model = init_member(by_id[member_id], spec.architecture, ds)
        assert torch.equal(batch.weights[0][k, 0], model[1].weight)
    final = built.table[built.table["is_final"]].head(4)
    (model,) = built.weights(final.head(1)).to_modules(
        init_member(by_id[final["member_id"].iloc[0]], spec.architecture, ds))
    with torch.no_grad():
        acc = (model(ds.x_test).argmax(1) == ds.y_test).float().mean().item()
    assert acc == pytest.approx(final["test_acc"].iloc[0], abs=1e-6)
    logits = built.logits(final.head(1), "test")
    with torch.no_grad():
        assert torch.allclose(logits[0], model(ds.x_test), atol=2e-2)  # stored as float16
    # train_acc is on the member's own training subset (train_fraction = 0.5 here).
    from gensight.zoo.train import member_states

    member = by_id[final["member_id"].iloc[0]]
    (state,) = member_states([member], len(ds.y_train))
    assert len(state.subset) == round(0.5 * len(ds.y_train))
    with torch.no_grad():
        own = (model(ds.x_train[state.subset]).argmax(1) == ds.y_train[state.subset])
    assert own.float().mean().item() == pytest.approx(final["train_acc"].iloc[0], abs=1e-6)
    gap = final["train_acc"] - final["test_acc"]
    assert (final["gen_gap"] - gap).abs().max() < 1e-12


def test_same_spec_same_zoo(built, tmp_path):
    again = build_zoo(ZooSpec.from_dict(SPEC), tmp_path / "again")
    assert_same_zoo(built, again)


def test_partial_build_then_resume_equals_uninterrupted(built, tmp_path):
    spec = ZooSpec.from_dict(SPEC)
    root = tmp_path / "partial"
    first = build_zoo(spec, root, max_shards=1)
    assert not first.complete and first.table["shard"].nunique() == 1
    resumed = build_zoo(spec, root)
    assert resumed.complete
    assert_same_zoo(built, resumed)


def test_half_written_shard_and_temporaries_are_redone(built, tmp_path):
    spec = ZooSpec.from_dict(SPEC)
    root = tmp_path / "crash"
    build_zoo(spec, root, max_shards=2)
    # A crash after the weights but before the rows of shard 1, and a stray temporary file.
    (root / "shards" / "shard-00001.parquet").unlink()
    (root / "shards" / ".tmp-shard-00002.safetensors").write_bytes(b"partial")
    resumed = build_zoo(spec, root)
    assert not list((root / "shards").glob(".tmp-*"))
    assert_same_zoo(built, resumed)


def test_cli_build_killed_then_resumed(built, tmp_path):
    spec_file = tmp_path / "tiny.toml"
    spec_file.write_text(TOML)
    root = tmp_path / "killed"
    cmd = [sys.executable, "-m", "gensight.cli", "zoo", "build", str(spec_file), "--out",
           str(root), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (root / "shards" / "shard-00000.parquet").exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (root / "manifest.json").exists()
    n_done = len(list((root / "shards").glob("shard-*.parquet")))
    assert 1 <= n_done <= len(plan_shards(ZooSpec.from_dict(SPEC)))
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert_same_zoo(built, Zoo.open(root))
    info = subprocess.run([sys.executable, "-m", "gensight.cli", "zoo", "info", str(root)],
                          capture_output=True, text=True)
    assert info.returncode == 0 and "12 members, 12 built, complete, verified" in info.stdout


def test_other_spec_or_non_zoo_directory_is_refused(built, tmp_path):
    other = dict(SPEC, seed=8)
    with pytest.raises(ZooStoreError, match="zoo of another spec"):
        build_zoo(ZooSpec.from_dict(other), built.root)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine")
    with pytest.raises(ZooStoreError, match="is not a gensight zoo"):
        build_zoo(ZooSpec.from_dict(SPEC), plain)
    assert (plain / "notes.txt").read_text() == "mine" and len(os.listdir(plain)) == 1
    with pytest.raises(ZooStoreError, match="is not a gensight zoo"):
        Zoo.open(plain)


def test_corrupt_files_give_clear_errors(built, tmp_path):
    import shutil

    root = tmp_path / "corrupt"
    shutil.copytree(built.root, root)
    shard = root / "shards" / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    zoo = Zoo.open(root)
    rows = zoo.table[zoo.table["shard"] == 1]
    with pytest.raises(ZooStoreError, match="damaged shard .*shard-00001.safetensors"):
        zoo.weights(rows)
    (root / "index.parquet").write_bytes(b"not parquet")
    reopened = Zoo.open(root)  # the index is derived from the shards again
    assert reopened.notes[0].startswith("index.parquet is corrupt")
    pd.testing.assert_frame_equal(reopened.table, zoo.table)
    (root / "manifest.json").write_text("{")
    with pytest.raises(ZooStoreError, match="manifest.json' is corrupt"):
        Zoo.open(root)
    with pytest.raises(ZooStoreError, match="not a directory"):
        Zoo.open(tmp_path / "missing")


def test_selecting_rows_by_metadata(built):
    adam = built.table.query("optimizer == 'adam' and is_final")
    batch = built.weights(adam)
    assert len(batch) == len(adam) > 0
    with pytest.raises(ZooStoreError, match="no rows selected"):
        built.weights(adam.iloc[0:0])
    with pytest.raises(ZooStoreError, match="lack the columns"):
        built.weights(adam[["member_id"]])


def test_ray_backend_builds_the_same_zoo(built, tmp_path):
    pytest.importorskip("ray")
    spec = ZooSpec.from_dict(SPEC)
    root = tmp_path / "ray"
    build_zoo(spec, root, max_shards=1)  # a resumed build, finished by Ray
    seen = []
    zoo = build_zoo(spec, root, backend="ray", progress=lambda d, t, s: seen.append((d, t)))
    assert zoo.complete and seen[-1] == (12, 12)
    a, b = sorted_table(built), sorted_table(zoo)
    numeric = [c for c in a.columns if c.endswith(("_acc", "_loss")) or c == "gen_gap"]
    pd.testing.assert_frame_equal(a.drop(columns=numeric), b.drop(columns=numeric))
    assert (a[numeric] - b[numeric]).abs().max().max() < 1e-4
    # Ray workers run single-threaded: GEMM rounding may differ, nothing else.
    assert built.weights(a).allclose(zoo.weights(b), atol=1e-5)


def test_unknown_backend(tmp_path):
    from gensight.errors import GensightError

    with pytest.raises(GensightError, match="unknown backend 'spark'"):
        build_zoo(ZooSpec.from_dict(SPEC), tmp_path / "x", backend="spark")


def test_diverged_members_are_flagged_and_refused_by_name(tmp_path):
    spec = ZooSpec.from_dict({
        "dataset": "digits", "architecture": {"family": "mlp", "hidden": [4]},
        "mode": "grid", "checkpoints": ["final"],
        "hparams": {"lr": [0.05, 1e30], "epochs": [1], "batch_size": [256]},
    })
    zoo = build_zoo(spec, tmp_path / "div")
    by_lr = zoo.table.set_index("lr")
    assert bool(by_lr.loc[0.05, "finite"]) and not bool(by_lr.loc[1e30, "finite"])
    with pytest.raises(ZooStoreError, match=r"NaN/inf weights .*c00001-s0.*query\('finite'\)"):
        zoo.weights()
    assert len(zoo.weights(zoo.table.query("finite"))) == 1


def test_stop_loss_zoo_records_convergence(tmp_path):
    """A zoo in the regime of arXiv 1912.02178: members stop at a training cross-entropy;
    each row says whether the member got there and after how many epochs."""
    spec = ZooSpec.from_dict({
        "dataset": "digits", "seed": 3, "mode": "grid", "stop_loss": 0.3, "shard_size": 3,
        "architecture": {"family": "mlp", "hidden": [16]},
        "hparams": {"optimizer": ["sgd"], "lr": [0.02, 0.1, 0.2], "epochs": [6],
                    "batch_size": [64]},
    })
    zoo = build_zoo(spec, tmp_path / "z")
    final = zoo.table[zoo.table["is_final"]].set_index("member_id").sort_index()
    assert final["converged"].dtype == bool and final["epochs_used"].dtype.kind == "i"
    assert 0 < final["converged"].sum() < len(final)  # the low lr misses it within 6 epochs
    assert (final.loc[final["converged"], "train_loss"] <= 0.3).all()
    assert (final.loc[~final["converged"], "train_loss"] > 0.3).all()
    assert (final.loc[~final["converged"], "epochs_used"] == 6).all()
    assert (final.loc[final["converged"], "epochs_used"] < 6).all()
    assert {"converged", "median_epochs"} <= set(zoo.summary().columns)
    assert Zoo.open(zoo.root).table.equals(zoo.table)
