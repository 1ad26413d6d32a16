"""The CLI as a hostile user drives it: every case ends in a one-line error that names what is
at fault (exit 2), or in a correct result (exit 0); never a traceback or an internal error.

Each case prepares its inputs in a fresh directory (``prepare(tmp, zoo) -> argv``), runs
``gensight.cli.main`` in-process and checks the outcome. Kill points, concurrent builders and
Ctrl-C run as real processes in ``tests/zoo/test_faults.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gensight.cli import main

TOML = """
name = "hostile"
dataset = "digits"
mode = "grid"
seeds_per_config = 1
checkpoints = ["final"]
[architecture]
family = "mlp"
hidden = [4]
[hparams]
lr = [0.05]
epochs = [1]
batch_size = [256]
"""


def spec_file(tmp: Path, text: str = TOML, name: str = "s.toml") -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


def edited(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


def zoo_copy(tmp: Path, zoo) -> Path:
    root = tmp / "zoo"
    shutil.copytree(zoo.root, root)
    return root


def edit_manifest(root: Path, fn) -> Path:
    path = root / "manifest.json"
    path.write_text(json.dumps(fn(json.loads(path.read_text()))))
    return root


def flip_shard_byte(root: Path) -> Path:
    path = root / "shards" / "shard-00000.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    return root


def edit_index(root: Path, fn) -> Path:
    path = root / "index.parquet"
    fn(pd.read_parquet(path)).to_parquet(path, index=False)
    return root


def logits_files(tmp: Path, src_classes: int = 10, tgt_classes: int = 10, obj: bool = False):
    rng = np.random.default_rng(0)
    np.save(tmp / "src.npy", rng.normal(size=(3, 50, src_classes)))
    np.save(tmp / "y.npy", rng.integers(0, src_classes, 50))
    if obj:
        np.save(tmp / "tgt.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        np.save(tmp / "tgt.npy", rng.normal(size=(3, 40, tgt_classes)))
    return ["estimate", "--source-logits", str(tmp / "src.npy"), "--source-labels",
            str(tmp / "y.npy"), "--target-logits", str(tmp / "tgt.npy"), "--out",
            str(tmp / "est")]


ERROR = 2
# (case, prepare(tmp, zoo) -> argv, expected exit status, fragment of the one-line error, or
# of the output for a correct result)
CASES = [
    # --- zoo build: the spec file and its fields
    ("spec is a directory", lambda t, z: ["zoo", "build", str(t), "--out", str(t / "o")],
     ERROR, "is a directory"),
    ("spec not UTF-8", lambda t, z: ["zoo", "build", str(_latin1(t)), "--out", str(t / "o")],
     ERROR, "is not UTF-8"),
    ("spec missing", lambda t, z: ["zoo", "build", str(t / "no.toml"), "--out", str(t / "o")],
     ERROR, "does not exist"),
    ("spec not TOML", lambda t, z: ["zoo", "build", spec_file(t, "x = [1,"), "--out",
                                    str(t / "o")], ERROR, "is not valid TOML"),
    ("scalar shifts", lambda t, z: _build(t, edited(TOML, 'mode = "grid"',
                                                    'mode = "grid"\nshifts = "fog"')),
     ERROR, "shifts: expected a list"),
    ("float severities", lambda t, z: _build(t, edited(
        TOML, 'mode = "grid"', 'mode = "grid"\nshifts = ["fog"]\nseverities = [2.0]')),
     ERROR, "severities"),
    ("infinite range", lambda t, z: _build(t, edited(
        TOML, "lr = [0.05]", "lr = { low = 0.01, high = inf }").replace(
        'mode = "grid"', 'mode = "random"\nconfigs = 2')), ERROR, "finite"),
    ("infinite value", lambda t, z: _build(t, edited(TOML, "lr = [0.05]", "lr = [inf]")),
     ERROR, "hparams.lr"),
    ("10^9 members", lambda t, z: _build(t, edited(TOML, "seeds_per_config = 1",
                                                   "seeds_per_config = 1000000000")),
     ERROR, "--allow-large"),
    ("10^9 epochs", lambda t, z: _build(t, edited(TOML, "epochs = [1]",
                                                  "epochs = [1000000000]")),
     ERROR, "--allow-large"),
    ("10^9 units", lambda t, z: _build(t, edited(TOML, "hidden = [4]",
                                                 "hidden = [1000000000]")),
     ERROR, "--allow-large"),
    ("newline in name", lambda t, z: _build(t, edited(TOML, 'name = "hostile"',
                                                      'name = "a\\nb"')), ERROR, "name"),
    ("batch larger than data", lambda t, z: _build(t, edited(TOML, "batch_size = [256]",
                                                             "batch_size = [100000]")),
     ERROR, "batch_size"),
    ("checkpoint after the end", lambda t, z: _build(t, edited(TOML, 'checkpoints = ["final"]',
                                                               "checkpoints = [100]")),
     ERROR, "checkpoints"),
    ("rotation on 1-D data", lambda t, z: _build(t, edited(
        TOML, 'dataset = "digits"', 'dataset = "mnist1d"\nshifts = ["rotation"]')),
     ERROR, "rotation"),
    ("unknown field", lambda t, z: _build(t, TOML + "\nepochz = 3\n"), ERROR, "epochz"),
    # --- zoo build: the output directory
    ("out is a file", lambda t, z: _build(t, TOML, out=_touch(t / "file")), ERROR,
     "not a directory"),
    ("out holds other files", lambda t, z: _build(t, TOML, out=_dir_with_file(t)), ERROR,
     "is not a gensight zoo"),
    ("out is a zoo of another spec", lambda t, z: _build(t, TOML, out=zoo_copy(t, z)), ERROR,
     "zoo of another spec"),
    ("markup in name and path", lambda t, z: _build(
        t, edited(TOML, 'name = "hostile"', 'name = "a[/]b"'), out=t / "o[/]x"), 0,
     "done in"),
    # --- zoo info / verify on damaged zoos
    ("manifest is a list", lambda t, z: ["zoo", "info", str(edit_manifest(
        zoo_copy(t, z), lambda m: [m]))], ERROR, "expected a JSON object"),
    ("manifest lacks space", lambda t, z: ["zoo", "info", str(edit_manifest(
        zoo_copy(t, z), lambda m: {k: v for k, v in m.items() if k != "space"}))],
     ERROR, "field 'space'"),
    ("manifest spec edited", lambda t, z: ["zoo", "info", str(edit_manifest(
        zoo_copy(t, z), lambda m: dict(m, spec=dict(m["spec"], hparams=dict(
            m["spec"]["hparams"], activation=["tanh"])))))], ERROR, "spec_hash"),
    ("index bad shard_pos", lambda t, z: ["zoo", "info", str(edit_index(
        zoo_copy(t, z), lambda df: df.assign(shard_pos=df.shard_pos + 100)))], 0,
     "16 members, 16 built, complete, verified"),
    ("index lacks a column", lambda t, z: ["zoo", "info", str(edit_index(
        zoo_copy(t, z), lambda df: df.drop(columns=["shard"])))], 0, "complete, verified"),
    ("index positions reversed", lambda t, z: ["zoo", "info", str(edit_index(
        zoo_copy(t, z), lambda df: df.assign(shard_pos=df.shard_pos[::-1].to_numpy())))], 0,
     "complete, verified"),
    ("index shard ids swapped", lambda t, z: ["zoo", "info", str(edit_index(
        zoo_copy(t, z), lambda df: df.assign(shard=1 - df.shard)))], 0, "complete, verified"),
    ("index deleted", lambda t, z: ["zoo", "info", str(_unlink(zoo_copy(t, z) /
                                                               "index.parquet"))], 0,
     "complete, verified"),
    ("flipped byte: info", lambda t, z: ["zoo", "info", str(flip_shard_byte(zoo_copy(t, z)))],
     0, "damaged: 1 shard(s)"),
    ("flipped byte: verify", lambda t, z: ["zoo", "verify", str(flip_shard_byte(
        zoo_copy(t, z)))], 1, "damaged shard 0"),
    ("flipped byte: predict", lambda t, z: ["predict", str(flip_shard_byte(zoo_copy(t, z))),
                                            "--methods", "statnn"], ERROR, "damaged shard"),
    ("info on a missing path", lambda t, z: ["zoo", "info", str(t / "none")], ERROR,
     "is not a directory"),
    ("verify a non-zoo", lambda t, z: ["zoo", "verify", str(t)], ERROR,
     "is not a gensight zoo"),
    # --- predict / measures / report / estimate
    ("non-numeric target", lambda t, z: ["predict", str(z.root), "--methods", "statnn",
                                         "--target", "optimizer", "--out", str(t / "p")],
     ERROR, "not numeric"),
    ("missing target", lambda t, z: ["predict", str(z.root), "--methods", "statnn",
                                     "--target", "nope", "--out", str(t / "p")],
     ERROR, "no column 'nope'"),
    ("unknown method", lambda t, z: ["predict", str(z.root), "--methods", "statnnn",
                                     "--out", str(t / "p")], ERROR, "statnnn"),
    ("statnn-mlp on a tiny zoo", lambda t, z: ["predict", str(z.root), "--methods",
                                               "statnn-mlp", "--out", str(t / "p")],
     ERROR, "needs at least 11 training networks"),
    ("unknown measure", lambda t, z: ["measures", str(z.root), "--measures", "path_norm",
                                      "--out", str(t / "m.csv"), "--quiet"], ERROR,
     "did you mean 'path.norm'"),
    ("zero examples", lambda t, z: ["measures", str(z.root), "--measures", "path.norm",
                                    "--examples", "0", "--quiet"], ERROR, "n_examples"),
    ("shift with ../", lambda t, z: ["report", str(z.root), "--shifts", "../x-1", "--methods",
                                     "statnn", "--out", str(t / "r"), "--quiet"], ERROR,
     "'../x-1'"),
    ("shift with a slash", lambda t, z: ["report", str(z.root), "--shifts", "a/b-2",
                                         "--methods", "statnn", "--out", str(t / "r"),
                                         "--quiet"], ERROR, "'a/b-2'"),
    ("report out is a file", lambda t, z: ["report", str(z.root), "--methods", "statnn",
                                           "--out", str(_touch(t / "f")), "--quiet"],
     ERROR, "exists and is not a directory"),
    ("estimate unknown shift", lambda t, z: ["estimate", str(z.root), "--shift", "../x",
                                             "--out", str(t / "e")], ERROR, "no shifted set"),
    ("object array logits", lambda t, z: logits_files(t, obj=True), ERROR,
     "allow_pickle=False"),
    ("class count mismatch", lambda t, z: logits_files(t, tgt_classes=3), ERROR, "classes"),
    ("labels out of range", lambda t, z: logits_files(t, src_classes=10)[:4] + [
        str(_save(t / "bad_y.npy", np.full(50, 12)))] + logits_files(t)[5:], ERROR, "label"),
]


def _latin1(tmp: Path) -> Path:
    path = tmp / "latin1.toml"
    path.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    return path


def _touch(path: Path) -> Path:
    path.write_text("x")
    return path


def _unlink(path: Path) -> Path:
    path.unlink()
    return path.parent


def _save(path: Path, arr) -> Path:
    np.save(path, arr)
    return path


def _dir_with_file(tmp: Path) -> Path:
    root = tmp / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    return root


def _build(tmp: Path, text: str, out: Path | None = None) -> list[str]:
    return ["zoo", "build", spec_file(tmp, text), "--out", str(out or tmp / "o"), "--quiet"]


@pytest.mark.parametrize("case, prepare, status, fragment", CASES, ids=[c[0] for c in CASES])
def test_hostile_input(grid_zoo, tmp_path, capsys, monkeypatch, case, prepare, status,
                       fragment):
    monkeypatch.delenv("GENSIGHT_DEBUG", raising=False)
    argv = prepare(tmp_path, grid_zoo)
    before = {p: p.stat().st_mtime_ns for p in Path(grid_zoo.root).rglob("*") if p.is_file()}
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "internal error" not in err, err
    assert rc == status, (rc, out, err)
    if status == ERROR:
        line = err.strip().splitlines()[-1]
        assert line.startswith("gensight: error: ") and fragment in line, err
    else:
        assert fragment in out + err
    # The shared zoo is never touched by a failing or reading command.
    assert {p: p.stat().st_mtime_ns for p in before} == before
