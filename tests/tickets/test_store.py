"""The tickets zoo: round trip, resumption after a kill, verification, refusals."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import gensight.zoo.store as zoo_store
from gensight.errors import GensightError
from gensight.tickets.config import TicketsConfig, TicketsConfigError
from gensight.tickets.report import evaluate_methods, mask_methods
from gensight.tickets.store import TicketsStoreError, TicketZoo, build_tickets, verify_tickets
from gensight.tickets.train import imp_schedule, init_weights

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tickets" / "digits.toml"

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
    ({"random_rounds": [2, 2]}, "field 'random_rounds' must be distinct rounds"),
    ({"train": {"momentum": 0.9}},
     "field 'train.momentum' must be 0 with train.optimizer 'adam'"),
    ({"train": {"optimizer": "rmsprop", "momentum": 0.5}},
     "field 'train.momentum' must be 0 with train.optimizer 'rmsprop'"),
    ({"output_rate": "half"}, "field 'output_rate' must be a number; got 'half'"),
])
def test_config_errors_name_the_field(change, message):
    with pytest.raises(TicketsConfigError) as err:
        TicketsConfig.from_dict({**TINY, **change})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_output_rate_defaults_to_half_the_rate():
    cfg = TicketsConfig.from_dict({**TINY, "rate": 0.4})
    assert cfg.output_rate == 0.2
    # the output layer (10 x 6 = 60 weights) loses round_half_up(0.2 * 60) = 12 in round 1
    assert imp_schedule(cfg, [64, 6, 10])[1] == [230, 48]
    assert TicketsConfig(rate=0.3).output_rate == 0.15
    explicit = TicketsConfig.from_dict({**TINY, "rate": 0.4, "output_rate": 0.1})
    assert explicit.output_rate == 0.1
    for c in (cfg, explicit):  # to_dict round-trips, so the hash of a built zoo is stable
        again = TicketsConfig.from_dict(c.to_dict())
        assert again == c and again.content_hash() == c.content_hash()
    assert cfg.content_hash() != explicit.content_hash()


def test_defaults_match_the_example():
    example = TicketsConfig.from_toml(EXAMPLE)
    assert example.output_rate == 0.1 == example.rate / 2
    default = TicketsConfig()
    for name in ("inits", "shard_size", "rounds", "rate", "output_rate", "random_rounds",
                 "hidden", "activation", "train", "dataset", "seed"):
        assert getattr(default, name) == getattr(example, name), name


def test_sgd_momentum_is_accepted():
    cfg = TicketsConfig.from_dict({**TINY, "train": {"optimizer": "sgd", "momentum": 0.9}})
    assert cfg.train.momentum == 0.9


def test_truncated_shard_is_reported_and_rebuilt(tiny_zoo, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_zoo.root, copy)
    rows_file = zoo_store.shard_paths(copy, 1)[1]
    data = rows_file.read_bytes()
    rows_file.write_bytes(data[:len(data) // 2])
    problems = verify_tickets(copy)  # reports instead of raising
    assert len(problems) == 1 and problems[0].startswith("shard 1: ")
    assert "shard-00001.parquet" in problems[0] and "\n" not in problems[0]
    with pytest.raises(TicketsStoreError):
        TicketZoo.open(copy)
    assert TicketZoo.open(copy, strict=False).init_ids == [0, 1, 4]
    real = zoo_store.write_shard
    seen = []
    monkeypatch.setattr(zoo_store, "write_shard",
                        lambda root, index, *a, **k: (seen.append(index), real(root, index,
                                                                              *a, **k))[1])
    zoo = build_tickets(TicketsConfig.from_dict(TINY), copy)
    assert seen == [1] and zoo.complete
    moved = sorted(p.name for p in (copy / "damaged").iterdir())  # kept, not deleted
    assert len(moved) == 2 and moved[0].endswith("-shard-00001.parquet")
    assert moved[1].endswith("-shard-00001.safetensors")
    assert verify_tickets(copy) == []
    for i in range(3):  # the same bytes as the uninterrupted build
        for a, b in zip(zoo_store.shard_paths(copy, i), zoo_store.shard_paths(tiny_zoo.root, i),
                        strict=True):
            assert a.read_bytes() == b.read_bytes()


def test_resume_refuses_other_counts(tiny_zoo, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_zoo.root, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["counts"][2][0] -= 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TicketsStoreError, match="per-layer counts differ") as err:
        build_tickets(TicketsConfig.from_dict(TINY), copy)
    assert "\n" not in str(err.value)


def test_masks_of_an_unknown_kind(tiny_zoo):
    with pytest.raises(TicketsStoreError, match="mask kind must be 'imp' or 'random'; got "
                                                "'other'"):
        tiny_zoo.masks(2, kind="other")


def test_mask_methods_use_the_ids_they_are_called_with(tiny_zoo):
    zoo = TicketZoo.open(tiny_zoo.root)
    w, b = zoo.inits([3])
    methods = mask_methods(zoo, {})
    for kind in ("imp", "random"):
        got = methods[kind](w, b, zoo.counts[2], 2, [3])
        assert all(torch.equal(x, y) for x, y in zip(got, zoo.masks(2, kind, [3]),
                                                     strict=True))
    pinned = mask_methods(zoo, {}, [4])
    with pytest.raises(GensightError, match="made for inits"):
        pinned["imp"](w, b, zoo.counts[2], 2, [3])
    with pytest.raises(GensightError, match="made for inits"):
        evaluate_methods(zoo, pinned, [3], [2])
    results = evaluate_methods(zoo, methods, [3, 0], [2])
    assert (results[results.method == "imp"]["iou"] == 1.0).all()
    stored = zoo.table[(zoo.table.kind == "random") & (zoo.table["round"] == 2)]
    for i in (3, 0):
        got = results[(results.method == "random") & (results.init_id == i)]["test_acc"]
        want = stored[stored.init_id == i]["test_acc"]
        assert float(got.iloc[0]) == pytest.approx(float(want.iloc[0]), abs=1 / 360 + 1e-9)


def test_evaluate_methods_with_other_data_orders(tiny_zoo):
    """seed_offset trains with the data order of seed + offset: equal to a direct
    train_masked with shifted seeds, and different from IMP's own order."""
    from gensight.data import load_dataset
    from gensight.tickets.train import train_masked

    zoo = TicketZoo.open(tiny_zoo.root)
    ids = [1, 4]
    methods = mask_methods(zoo, {}, ids, baselines=("imp",))
    same = evaluate_methods(zoo, methods, ids, [2])
    other = evaluate_methods(zoo, methods, ids, [2], seed_offset=1000)
    w, b = zoo.inits(ids)
    run = train_masked(w, b, zoo.masks(2, "imp", ids), [s + 1000 for s in zoo.seeds(ids)],
                       load_dataset(zoo.config.dataset), zoo.config.train,
                       zoo.config.activation)
    assert other["test_acc"].tolist() == [float(a) for a in run.test_acc]
    assert other["iou"].tolist() == [1.0, 1.0]
    stored = zoo.table[(zoo.table.kind == "imp") & (zoo.table["round"] == 2)]
    want = [float(stored[stored.init_id == i]["test_acc"].iloc[0]) for i in ids]
    assert same["test_acc"].tolist() == pytest.approx(want, abs=1 / 360 + 1e-9)
    assert other["val_acc"].tolist() != same["val_acc"].tolist()
    with pytest.raises(GensightError, match="seed_offset must be a non-negative integer; "
                                            "got -1"):
        evaluate_methods(zoo, methods, ids, [2], seed_offset=-1)


def test_oneshot_baseline_is_one_imp_step_with_the_inits_own_order(tiny_zoo):
    """``imp-oneshot``: the dense network trained with the init's own data order, pruned by
    trained magnitude straight to the round's counts. At round 1 it is IMP's own round-1
    mask; at round 2 it equals a direct dense training plus the top-k, also when the
    evaluation trains with other data orders; ``oneshot_masks`` gives the same targets."""
    from gensight.data import load_dataset
    from gensight.tickets.masks import magnitude_masks
    from gensight.tickets.report import oneshot_masks
    from gensight.tickets.train import train_masked

    zoo = TicketZoo.open(tiny_zoo.root)
    ids = [0, 1]  # the build's first shard: the same population as the build's dense run
    w, b = zoo.inits(ids)
    fn = mask_methods(zoo, {}, ids, baselines=("imp-oneshot",))["imp-oneshot"]
    got1 = fn(w, b, zoo.counts[1], 1, ids)
    assert all(torch.equal(x, y) for x, y in zip(got1, zoo.masks(1, "imp", ids), strict=True))
    dense = train_masked(w, b, None, zoo.seeds(ids), load_dataset(zoo.config.dataset),
                         zoo.config.train, zoo.config.activation)
    want2 = magnitude_masks(dense.weights, zoo.counts[2])
    got2 = fn(w, b, zoo.counts[2], 2, ids)
    assert all(torch.equal(x, y) for x, y in zip(got2, want2, strict=True))
    # not IMP's iterative round-2 mask
    assert not all(torch.equal(x, y) for x, y in zip(got2, zoo.masks(2, "imp", ids),
                                                     strict=True))
    # the dense run is cached per ids and weights: other inits get their own
    w3, b3 = zoo.inits([2, 3])
    other = train_masked(w3, b3, None, zoo.seeds([2, 3]), load_dataset(zoo.config.dataset),
                         zoo.config.train, zoo.config.activation)
    free = mask_methods(zoo, {}, baselines=("imp-oneshot",))["imp-oneshot"]
    assert all(torch.equal(x, y) for x, y in zip(free(w, b, zoo.counts[2], 2, ids), want2,
                                                 strict=True))
    got3 = free(w3, b3, zoo.counts[2], 2, [2, 3])
    assert all(torch.equal(x, y) for x, y in zip(
        got3, magnitude_masks(other.weights, zoo.counts[2]), strict=True))
    scaled = free([2 * x for x in w3], b3, zoo.counts[2], 2, [2, 3])  # same ids, new weights
    assert not all(torch.equal(x, y) for x, y in zip(scaled, got3, strict=True))
    with pytest.raises(GensightError, match="'imp-oneshot' was made for inits"):
        fn(w3, b3, zoo.counts[2], 2, [2, 3])
    targets = oneshot_masks(zoo, ids, [1, 2])
    assert all(torch.equal(x, y) for x, y in zip(targets[2], want2, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(targets[1], got1, strict=True))
    res = evaluate_methods(zoo, {"imp-oneshot": fn}, ids, [1, 2], seed_offset=1000)
    assert res[res["round"] == 1]["iou"].tolist() == [1.0, 1.0]
    with pytest.raises(GensightError, match="unknown baseline 'oneshot'; known: imp, "
                                            "imp-oneshot"):
        mask_methods(zoo, {}, ids, baselines=("oneshot",))


def test_both_decodings_of_a_predictor_share_one_forward_pass(tiny_zoo, monkeypatch):
    """``connected=True``: the plain and connected masks equal ``predict``'s, from one
    ``decision_function`` call per round (counts) and set of inits."""
    from gensight.data import load_dataset
    from gensight.tickets.predictor import MaskPredictor

    zoo = TicketZoo.open(tiny_zoo.root)
    w, b = zoo.inits([0, 1, 2])
    pred = MaskPredictor("hnp", epochs=1).fit(
        zoo.space, w, b, {k: zoo.masks(k, "imp", [0, 1, 2]) for k in (1, 2)}, zoo.counts,
        dataset=load_dataset(zoo.config.dataset), activation=zoo.config.activation)
    ids = [3, 4]
    w, b = zoo.inits(ids)
    want = {(k, conn): pred.predict(w, b, zoo.counts[k], connected=conn)
            for k in (1, 2) for conn in (False, True)}
    calls = []
    real = MaskPredictor.decision_function

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(MaskPredictor, "decision_function", counting)
    methods = mask_methods(zoo, {"p": pred}, ids, baselines=(), connected=True)
    for k in (1, 2):
        for name, conn in (("p", False), ("p+connected", True)):
            got = methods[name](w, b, zoo.counts[k], k, ids)
            assert all(torch.equal(x, y) for x, y in zip(got, want[k, conn], strict=True))
    assert len(calls) == 2
    # other weights under the same ids are not served from the cache
    methods["p"]([2 * x for x in w], b, zoo.counts[2], 2, ids)
    assert len(calls) == 3
