"""The tickets zoo: round trip, resumption after a kill, verification, refusals."""

import pytest
import torch

import gensight.zoo.store as zoo_store
from gensight.tickets.config import TicketsConfig, TicketsConfigError
from gensight.tickets.store import TicketsStoreError, TicketZoo, build_tickets, verify_tickets
from gensight.tickets.train import init_weights

torch.set_num_threads(1)

TINY = {"name": "tiny", "inits": 5, "shard_size": 2, "rounds": 2, "random_rounds": [2],
        "architecture": {"hidden": [6]}, "train": {"epochs": 1, "batch_size": 128}}


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    return build_tickets(TicketsConfig.from_dict(TINY), tmp_path_factory.mktemp("t") / "zoo")


def test_round_trip(tiny_zoo):
    zoo = TicketZoo.open(tiny_zoo.root)
    assert zoo.complete and zoo.init_ids == [0, 1, 2, 3, 4]
    w, b = zoo.inits([1, 4])
    ref_w, ref_b = init_weights([1, 4], [64, 6, 10])
    assert all(torch.equal(x, y) for x, y in zip(w + b, ref_w + ref_b, strict=True))
    for k in (1, 2):
        masks = zoo.masks(k)
        assert [m.flatten(1).sum(1).tolist() for m in masks] == [[c] * 5 for c in zoo.counts[k]]
    assert bool((zoo.masks(2)[0] <= zoo.masks(1)[0]).all())  # nested rounds
    rnd = zoo.masks(2, "random")
    assert [m.flatten(1).sum(1).tolist() for m in rnd] == [[c] * 5 for c in zoo.counts[2]]
    t = zoo.table
    assert len(t) == 5 * (3 + 1)
    assert set(t[t.kind == "random"]["round"]) == {2}
    assert t["test_acc"].between(0, 1).all()
    assert verify_tickets(zoo.root) == []
    with pytest.raises(TicketsStoreError,
                       match=r"no random masks at round 1; stored rounds: \[2\]"):
        zoo.masks(1, "random")


def test_killed_build_resumes_to_the_same_bytes(tiny_zoo, tmp_path, monkeypatch):
    real = zoo_store.write_shard
    calls = []

    def dying(root, index, *args, **kwargs):
        calls.append(index)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(root, index, *args, **kwargs)

    monkeypatch.setattr(zoo_store, "write_shard", dying)
    out = tmp_path / "zoo"
    with pytest.raises(KeyboardInterrupt):
        build_tickets(TicketsConfig.from_dict(TINY), out)
    partial = TicketZoo.open(out)
    assert partial.init_ids == [0, 1] and not partial.complete
    assert verify_tickets(out) == ["shard 1: not built (rerun gensight tickets build)",
                                   "shard 2: not built (rerun gensight tickets build)"]
    monkeypatch.setattr(zoo_store, "write_shard", real)
    calls.clear()
    seen = []
    monkeypatch.setattr(zoo_store, "write_shard",
                        lambda root, index, *a, **k: (seen.append(index), real(root, index,
                                                                              *a, **k))[1])
    build_tickets(TicketsConfig.from_dict(TINY), out)
    assert seen == [1, 2]  # only the missing shards were trained
    for i in range(3):
        for a, b in zip(zoo_store.shard_paths(out, i), zoo_store.shard_paths(tiny_zoo.root, i),
                        strict=True):
            assert a.read_bytes() == b.read_bytes()


def test_damage_and_refusals(tiny_zoo, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_zoo.root, copy)
    path, _ = zoo_store.shard_paths(copy, 1)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    problems = verify_tickets(copy)
    assert len(problems) == 1 and "damaged shard" in problems[0]
    other = dict(TINY, rounds=3)
    with pytest.raises(TicketsStoreError, match="holds a tickets zoo of another config"):
        build_tickets(TicketsConfig.from_dict(other), tiny_zoo.root)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(TicketsStoreError, match="is not empty and not a tickets zoo"):
        build_tickets(TicketsConfig.from_dict(TINY), tmp_path / "busy")
    with pytest.raises(TicketsStoreError, match="has no manifest.json"):
        TicketZoo.open(tmp_path / "busy")


@pytest.mark.parametrize(("change", "message"), [
    ({"rate": 1.5}, "field 'rate' must be in (0, 1); got 1.5"),
    ({"inits": "many"}, "field 'inits' must be an integer; got 'many'"),
    ({"random_rounds": [0]}, "field 'random_rounds' must be rounds in 1..2; got (0,)"),
    ({"colour": 1}, "unknown field 'colour'"),
    ({"architecture": {"family": "cnn"}}, "architecture.family must be 'mlp'"),
    ({"train": {"optimizer": "lbfgs"}}, "field 'train.optimizer' must be one of sgd, adam"),
    ({"architecture": {"hidden": [0]}}, "field 'architecture.hidden' must be a non-empty"),
])
def test_config_errors_name_the_field(change, message):
    with pytest.raises(TicketsConfigError) as err:
        TicketsConfig.from_dict({**TINY, **change})
    assert message in str(err.value) and "\n" not in str(err.value)
