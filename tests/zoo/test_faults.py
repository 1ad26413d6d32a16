"""Fault injection for the zoo store: kill points, corrupt bytes, concurrent builders, edited
manifests and indexes. Every case must end in a named one-line error or a correct result, and
a killed or corrupted build must be recoverable with nothing lost."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load, save

import gensight.zoo.build as build_module
import gensight.zoo.store as store
from gensight.cli import main
from gensight.zoo import (
    Zoo,
    ZooLockedError,
    ZooSpec,
    ZooStoreError,
    build_zoo,
    plan_shards,
    verify_zoo,
)

SPEC = {
    "name": "faults", "dataset": "digits", "seed": 3, "mode": "grid", "seeds_per_config": 2,
    "shard_size": 4, "checkpoints": [0, "final"], "shifts": ["contrast"], "severities": [2],
    "store_logits": True, "architecture": {"family": "mlp", "hidden": [6]},
    "hparams": {"optimizer": ["sgd", "adam"], "lr": [0.05], "epochs": [1],
                "batch_size": [128], "train_fraction": [0.5]},
}  # 4 members in 2 shards of 2 (sgd, adam)

TOML = """
name = "faults"
dataset = "digits"
seed = 3
mode = "grid"
seeds_per_config = 2
shard_size = 4
checkpoints = [0, "final"]
shifts = ["contrast"]
severities = [2]
store_logits = true
[architecture]
family = "mlp"
hidden = [6]
[hparams]
optimizer = ["sgd", "adam"]
lr = [0.05]
epochs = [1]
batch_size = [128]
train_fraction = [0.5]
"""


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def file_hashes(root: Path) -> dict[str, str]:
    """Content hash of every file of a zoo (the lock file only says who held it)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != store.LOCK_NAME
            and store.DAMAGED_DIR not in p.parts}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref") / "zoo"
    build_zoo(ZooSpec.from_dict(SPEC), root)
    return root


@pytest.fixture
def copy(reference, tmp_path):
    root = tmp_path / "zoo"
    shutil.copytree(reference, root)
    return root


def assert_recovered(root: Path, reference: Path) -> None:
    """Rerunning the build gives the reference zoo, byte for byte, and it verifies."""
    build_zoo(ZooSpec.from_dict(SPEC), root)
    assert file_hashes(root) == file_hashes(reference)
    assert verify_zoo(root).ok and Zoo.open(root).complete


def test_identical_specs_give_byte_identical_zoos(reference, tmp_path):
    assert len(plan_shards(ZooSpec.from_dict(SPEC))) == 2
    build_zoo(ZooSpec.from_dict(SPEC), tmp_path / "again")
    assert file_hashes(tmp_path / "again") == file_hashes(reference)


# --- kill points ------------------------------------------------------------------------------
class Killed(BaseException):
    """Stands for the process dying (not an Exception: nothing may catch it)."""


@pytest.mark.parametrize("stage", ["before-rename", "after-rename"])
def test_a_build_killed_at_every_write_resumes_to_the_same_zoo(reference, tmp_path, monkeypatch,
                                                               stage):
    # Count the durable writes of a full build, then kill a build at each of them in turn:
    # before its rename (the temporary is left behind) or right after it.
    writes = []
    real_replace = os.replace
    monkeypatch.setattr(store.os, "replace",
                        lambda a, b: (writes.append(Path(b).name), real_replace(a, b))[1])
    build_zoo(ZooSpec.from_dict(SPEC), tmp_path / "count")
    monkeypatch.setattr(store.os, "replace", real_replace)
    assert writes[0] == "manifest.json" and writes.count("index.parquet") >= 2

    for k in range(len(writes)):
        calls = [0]

        def replace(a, b, k=k, calls=calls):
            calls[0] += 1
            if calls[0] == k + 1:
                if stage == "after-rename":
                    real_replace(a, b)
                raise Killed(f"killed at write {k} ({Path(b).name})")
            return real_replace(a, b)

        root = tmp_path / f"{stage}-{k}"
        monkeypatch.setattr(store.os, "replace", replace)
        with pytest.raises(Killed):
            build_zoo(ZooSpec.from_dict(SPEC), root)
        monkeypatch.setattr(store.os, "replace", real_replace)
        assert_recovered(root, reference)


def test_killed_between_last_shard_and_index_completes_on_rerun(copy, reference):
    # The index as it was before the last shard: the shard is on disk, the index stale.
    zoo = Zoo.open(copy)
    first = zoo.table[zoo.table["shard"] == 0].reset_index(drop=True)
    store.write_index(copy, store.Index(first, {0: store.read_shard_rows(copy, 0).rows_sha256}))
    opened = Zoo.open(copy)
    assert opened.complete and len(opened.table) == len(zoo.table)
    assert any("stale" in n for n in opened.notes)
    assert main(["zoo", "info", str(copy)]) == 0
    assert_recovered(copy, reference)


def test_deleted_index_is_derived_from_the_shards(copy, reference, capsys):
    (copy / "index.parquet").unlink()
    zoo = Zoo.open(copy)
    assert zoo.complete and len(zoo.table) == 4 * 2
    assert main(["zoo", "verify", str(copy)]) == 1
    assert "index.parquet: index.parquet is missing" in capsys.readouterr().out
    assert main(["zoo", "verify", str(copy), "--repair"]) == 0
    assert file_hashes(copy) == file_hashes(reference)


def test_killed_while_writing_the_manifest_resumes(reference, tmp_path):
    root = tmp_path / "zoo"
    root.mkdir()
    (root / ".tmp-manifest.json.4242").write_bytes(b'{"format": "gensight-zo')
    (root / store.LOCK_NAME).write_text('{"pid": 4242}')
    assert_recovered(root, reference)
    assert not list(root.glob(".tmp-*"))


# --- locks and interrupts ---------------------------------------------------------------------
def test_a_second_builder_is_refused_and_told_who_holds_the_lock(reference, tmp_path, capsys):
    root = tmp_path / "zoo"
    root.mkdir()
    with store.zoo_lock(root):
        with pytest.raises(ZooLockedError, match=rf"locked \(build by pid {os.getpid()} on "):
            build_zoo(ZooSpec.from_dict(SPEC), root)
        spec_file = tmp_path / "s.toml"
        spec_file.write_text(TOML)
        assert main(["zoo", "build", str(spec_file), "--out", str(root), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert last_line(err).startswith("gensight: error: ") and "Traceback" not in err
        assert "is locked (build by pid" in last_line(err)
    assert_recovered(root, reference)  # the lock is free once its holder is gone


def _cli(*args):
    return [sys.executable, "-m", "gensight.cli", *args]


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline:
        time.sleep(0.01)
    assert path.exists(), path


def test_ctrl_c_prints_one_line_exits_130_and_resumes(reference, tmp_path):
    spec_file = tmp_path / "s.toml"
    spec_file.write_text(TOML)
    root = tmp_path / "zoo"
    proc = subprocess.Popen(_cli("zoo", "build", str(spec_file), "--out", str(root), "--quiet"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(root / "manifest.json")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:  # finished before the signal arrived: nothing to check
        pytest.skip("the build finished before the interrupt")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted; rerun the same command to resume" in err
    assert_recovered(root, reference)


def test_a_killed_builders_lock_is_not_stale(reference, tmp_path):
    spec_file = tmp_path / "s.toml"
    spec_file.write_text(TOML)
    root = tmp_path / "zoo"
    proc = subprocess.Popen(_cli("zoo", "build", str(spec_file), "--out", str(root), "--quiet"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(root / "manifest.json")
    proc.kill()
    proc.wait()
    assert (root / store.LOCK_NAME).exists()
    assert_recovered(root, reference)


# --- corrupt bytes ----------------------------------------------------------------------------
def _rewrite_tensor(path: Path, key: str, fn) -> None:
    """Rewrite one tensor of a safetensors file, keeping its metadata: a valid file whose
    content changed."""
    data = path.read_bytes()
    tensors = load(data)
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    tensors[key] = fn(tensors[key].clone())
    path.write_bytes(save(tensors, metadata=header["__metadata__"]))


@pytest.mark.parametrize("damage", ["flipped-byte", "weight-1e6", "truncated", "rows-edited",
                                    "rows-flipped-byte", "shards-swapped"])
def test_damaged_shards_are_named_and_rebuilt_with_nothing_lost(copy, reference, damage,
                                                                 capsys):
    tensors_file, rows_file = store.shard_paths(copy, 1)
    if damage == "flipped-byte":
        data = bytearray(tensors_file.read_bytes())
        data[-5] ^= 0x01
        tensors_file.write_bytes(bytes(data))
    elif damage == "weight-1e6":
        _rewrite_tensor(tensors_file, "e1/1.weight",
                        lambda t: t.index_fill_(0, torch.tensor([0]), 1e6))
    elif damage == "truncated":
        tensors_file.write_bytes(tensors_file.read_bytes()[:100])
    elif damage == "shards-swapped":  # each shard self-consistent, but under the other's name
        for a, b in zip(store.shard_paths(copy, 0), store.shard_paths(copy, 1), strict=True):
            a.rename(a.with_name("x"))
            b.rename(a)
            a.with_name("x").rename(b)
    elif damage == "rows-edited":
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrow = pq.read_table(rows_file)
        rows = arrow.to_pandas()
        rows["test_acc"] = 1.0
        pq.write_table(pa.Table.from_pandas(rows, preserve_index=False)
                       .replace_schema_metadata(arrow.schema.metadata), rows_file)
    else:
        data = bytearray(rows_file.read_bytes())
        data[len(data) // 3] ^= 0xFF
        rows_file.write_bytes(bytes(data))
    damaged = [0, 1] if damage == "shards-swapped" else [1]
    damaged_bytes = sorted(p.read_bytes() for i in damaged for p in store.shard_paths(copy, i))

    # Named everywhere: loading, info, verify.
    zoo = Zoo.open(copy)
    with pytest.raises(ZooStoreError,
                       match=r"((damaged|corrupt) shard (table )?.*shard-00001|holds 'c0000)"):
        zoo.weights(zoo.table[zoo.table["shard"] == 1])
    report = verify_zoo(copy)
    assert not report.ok and sorted(report.damaged_shards) == damaged
    capsys.readouterr()
    assert main(["zoo", "info", str(copy)]) == 0
    out = capsys.readouterr().out
    assert f"damaged: {len(damaged)} shard(s)" in out and "complete" not in out
    assert main(["zoo", "verify", str(copy)]) == 1

    # Rerunning the build moves the damaged shards aside (kept) and trains them again.
    assert_recovered(copy, reference)
    assert sorted(p.read_bytes() for p in (copy / "damaged").iterdir()) == damaged_bytes


def test_verify_repair_moves_damaged_shards_aside_then_build_completes(copy, reference,
                                                                       capsys):
    tensors_file, _ = store.shard_paths(copy, 0)
    data = bytearray(tensors_file.read_bytes())
    data[-1] ^= 0x80
    tensors_file.write_bytes(bytes(data))
    assert main(["zoo", "verify", str(copy), "--repair"]) == 0
    out = capsys.readouterr().out
    assert "repaired: shard 0 moved to" in out and "rerun zoo build to train 1 shard" in out
    zoo = Zoo.open(copy)
    assert set(zoo.table["shard"]) == {1} and not zoo.complete and not zoo.notes
    assert_recovered(copy, reference)


def test_swapped_shard_ids_in_the_index_are_caught(copy):
    zoo = Zoo.open(copy)
    table = zoo.table.copy()
    table["shard"] = 1 - table["shard"]
    # Written as a user's tool would: plain pandas, the old metadata dropped.
    table.to_parquet(copy / "index.parquet", index=False)
    opened = Zoo.open(copy)
    assert any("does not match its recorded content" in n for n in opened.notes)
    pd.testing.assert_frame_equal(opened.table, zoo.table)
    # Rows that point at the wrong shard are refused by name, never loaded silently.
    with pytest.raises(ZooStoreError, match=r"member 'c00000-s0'.* holds 'c00001-s0'"):
        opened.weights(table[table["member_id"] == "c00000-s0"].head(1))


def test_bad_rows_given_to_weights_are_named(copy):
    zoo = Zoo.open(copy)
    rows = zoo.table.head(2).copy()
    rows.loc[rows.index[0], "shard_pos"] = 99
    with pytest.raises(ZooStoreError, match="shard 0 position 99 holds 'nothing'"):
        zoo.weights(rows)
    rows = zoo.table.head(2).copy()
    rows["shard"] = 7
    with pytest.raises(ZooStoreError, match="shard 7 is not one of this zoo's 2 shards"):
        zoo.weights(rows)
    with pytest.raises(ZooStoreError, match=r"lack the columns \['shard_pos'\]"):
        zoo.weights(zoo.table.drop(columns=["shard_pos"]))
    rows = zoo.table.head(1).astype({"shard_pos": object})
    rows["shard_pos"] = "x"
    with pytest.raises(ZooStoreError, match="must be integers"):
        zoo.weights(rows)


# --- the manifest -----------------------------------------------------------------------------
def _edit_manifest(root: Path, fn) -> None:
    path = root / "manifest.json"
    path.write_text(json.dumps(fn(json.loads(path.read_text()))))


@pytest.mark.parametrize("edit, message", [
    (lambda m: [m], "expected a JSON object, got list"),
    (lambda m: {k: v for k, v in m.items() if k != "space"}, "field 'space' should be a dict"),
    (lambda m: dict(m, n_shards="2"), "field 'n_shards' should be a int"),
    (lambda m: dict(m, format_version=1), "format version 1; this gensight reads 2"),
    (lambda m: dict(m, space={"layers": [{"n_out": 3}]}), "field 'space' is not a weight space"),
    (lambda m: dict(m, spec=dict(m["spec"], hparams=dict(m["spec"]["hparams"],
                                                         activation=["tanh"]))),
     "the spec does not match its spec_hash"),
    (lambda m: dict(m, spec=dict(m["spec"], mode="sideways")), "its spec is invalid: mode"),
])
def test_damaged_or_edited_manifests_are_named(copy, edit, message, capsys):
    _edit_manifest(copy, edit)
    with pytest.raises(ZooStoreError, match=message):
        Zoo.open(copy)
    with pytest.raises(ZooStoreError, match=message):
        build_zoo(ZooSpec.from_dict(SPEC), copy)
    assert main(["zoo", "info", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "manifest.json" in err


def test_a_default_written_explicitly_resumes_the_same_zoo(copy, reference):
    explicit = dict(SPEC, hparams=dict(SPEC["hparams"], momentum=[0.9], dropout=[0.0],
                                       init_scale=[1.0]))
    assert ZooSpec.from_dict(explicit).content_hash() == ZooSpec.from_dict(SPEC).content_hash()
    build_zoo(ZooSpec.from_dict(explicit), copy)
    assert file_hashes(copy) == file_hashes(reference)


# --- refusals before any work -----------------------------------------------------------------
def test_a_non_zoo_directory_is_never_touched(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine")
    with pytest.raises(ZooStoreError, match=r"is not a gensight zoo: .* e\.g\. 'notes\.txt'"):
        build_zoo(ZooSpec.from_dict(SPEC), plain)
    assert os.listdir(plain) == ["notes.txt"]


def test_bad_specs_write_nothing(tmp_path, capsys):
    cases = {
        "severities": TOML.replace("severities = [2]", "severities = [2.0]"),
        "shifts": TOML.replace('shifts = ["contrast"]', 'shifts = "contrast"'),
        "infinite": TOML.replace("lr = [0.05]", "lr = [inf]"),
        "huge": TOML.replace("seeds_per_config = 2", "seeds_per_config = 1000000000"),
    }
    for name, text in cases.items():
        spec_file = tmp_path / f"{name}.toml"
        spec_file.write_text(text)
        out = tmp_path / f"out-{name}"
        assert main(["zoo", "build", str(spec_file), "--out", str(out)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("gensight: error: ") and err.count("\n") == 1, (name, err)
        assert not out.exists(), name
    assert "--allow-large" in err and "2,000,000,000 members" in err  # the last case: "huge"


def test_spec_paths_that_are_not_files_are_named(tmp_path, capsys):
    (tmp_path / "latin1.toml").write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    for path in (tmp_path, tmp_path / "latin1.toml", tmp_path / "missing.toml"):
        assert main(["zoo", "build", str(path), "--out", str(tmp_path / "z")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(path) in err
    assert not (tmp_path / "z").exists()


def test_names_with_rich_markup_are_printed_as_they_are(tmp_path, capsys):
    spec_file = tmp_path / "s.toml"
    spec_file.write_text(TOML.replace('name = "faults"', 'name = "a[/]b[bold]"'))
    root = tmp_path / "out[/]x"
    assert main(["zoo", "build", str(spec_file), "--out", str(root), "--quiet"]) == 0
    assert main(["zoo", "info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "a[/]b[bold]" in out and "out[/]x" in out


def test_internal_errors_are_one_line(monkeypatch, tmp_path, capsys):
    def boom(*args, **kwargs):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(build_module, "load_dataset", boom)
    spec_file = tmp_path / "s.toml"
    spec_file.write_text(TOML)
    monkeypatch.delenv("GENSIGHT_DEBUG", raising=False)
    assert main(["zoo", "build", str(spec_file), "--out", str(tmp_path / "z")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and last_line(err) == (
        "gensight: internal error: RuntimeError: something broke (rerun with GENSIGHT_DEBUG=1 "
        "for the traceback, and please report it)")


def test_a_changed_shift_definition_is_noticed(copy, monkeypatch):
    import dataclasses

    import gensight.data.shifts as shifts

    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["shift_fingerprint"] == ZooSpec.from_dict(SPEC).shift_fingerprint()
    assert not Zoo.open(copy).notes
    old = shifts.SHIFTS["contrast"]
    monkeypatch.setitem(shifts.SHIFTS, "contrast", dataclasses.replace(
        old, fn=lambda x, severity, rng: old.fn(x, severity, rng) * 0.9))
    assert ZooSpec.from_dict(SPEC).shift_fingerprint() != manifest["shift_fingerprint"]
    assert any("another version of gensight's shifts" in n for n in Zoo.open(copy).notes)
    before = file_hashes(copy)
    with pytest.raises(ZooStoreError, match="would mix two versions of its shifted test sets"):
        build_zoo(ZooSpec.from_dict(SPEC), copy)
    assert file_hashes(copy) == before
