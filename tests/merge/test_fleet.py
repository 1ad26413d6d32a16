"""Fleet training: the population equals training alone, FLEET-MERGE rounds, the table."""

import time

import pytest
import torch
from torch import nn

from gensight.data import load_dataset
from gensight.errors import GensightError
from gensight.merge import (
    RecurrentClassifier,
    Task,
    activation_matching,
    apply_permutation,
    average,
    compare_merges,
    fleet_merge,
    label_subset_tasks,
    pooled_task,
    train_members,
)
from gensight.weightspace import permuted_copy

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tasks():
    return label_subset_tasks(load_dataset("digits"), [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]])


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))


def _gru(seed):
    torch.manual_seed(seed)
    return RecurrentClassifier(8, 6, 10, "gru")


@pytest.mark.parametrize("factory", [_mlp, _gru])
def test_population_training_equals_training_each_member_alone(tasks, factory):
    models = [factory(s) for s in range(3)]
    together = train_members(models, tasks, steps=5, lr=1e-2, batch_size=16, seed=3)
    # member i alone sees the same data order: seed (3, i) -> pass it through a population of 1
    from gensight.merge.fleet import _train_stack

    for i, (m, t) in enumerate(zip(models, tasks, strict=True)):
        (alone,) = _train_stack([m], [t], 5, 1e-2, 16, [(3, i)])
        for p, q in zip(together[i].parameters(), alone.parameters(), strict=True):
            assert torch.allclose(p, q, atol=1e-6)
    assert not torch.equal(next(together[0].parameters()), next(models[0].parameters()))


@pytest.mark.parametrize("factory", [_mlp, _gru])
def test_restricted_training_equals_a_loop_over_each_tasks_own_logits(tasks, factory):
    """restrict=True: member i's loss is the cross-entropy of the logits of its task's classes
    alone (labels renumbered within the subset), checked against a plain torch.optim loop;
    a task without classes trains on all logits, as without restrict."""
    from gensight.merge.fleet import _index_stream

    digits = load_dataset("digits")
    everything = Task("all", digits.x_train, digits.y_train, digits.x_test, digits.y_test)
    fleet = [*tasks, everything]
    models = [factory(s) for s in range(4)]
    steps, bs, lr = 6, 16, 1e-2
    together = train_members(models, fleet, steps=steps, lr=lr, batch_size=bs, seed=2,
                             restrict=True)
    plain = train_members(models, fleet, steps=steps, lr=lr, batch_size=bs, seed=2)
    for p, q in zip(together[3].parameters(), plain[3].parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)  # classes=None: the plain loss
    for i, (m, t) in enumerate(zip(models[:3], tasks, strict=True)):
        ref = factory(i)
        ref.load_state_dict(m.state_dict())
        opt = torch.optim.Adam(ref.parameters(), lr=lr)
        cols = torch.tensor(t.classes)
        relabel = {c: j for j, c in enumerate(t.classes)}
        order = _index_stream(len(t.y_train), steps * bs, (2, i))
        for s in range(steps):
            ix = order[s * bs:(s + 1) * bs]
            y = torch.tensor([relabel[int(c)] for c in t.y_train[ix]])
            opt.zero_grad()
            nn.functional.cross_entropy(ref(t.x_train[ix])[:, cols], y).backward()
            opt.step()
        for p, q in zip(together[i].parameters(), ref.parameters(), strict=True):
            assert torch.allclose(p, q, atol=1e-6)
        # the other classes' output weights never move; with the plain loss they do
        head = "3.weight" if factory is _mlp else "readout.weight"
        others = torch.tensor([c for c in range(10) if c not in t.classes])
        before = m.state_dict()[head][others]
        assert torch.equal(together[i].state_dict()[head][others], before)
        assert not torch.equal(plain[i].state_dict()[head][others], before)


def test_restricted_training_refuses_classes_the_network_lacks_before_any_work(tasks,
                                                                              monkeypatch):
    import gensight.merge.fleet as fleet_mod

    bad = Task("labels 0,12", tasks[0].x_train, tasks[0].y_train, tasks[0].x_test,
               tasks[0].y_test, (0, 1, 2, 12))
    calls = []
    monkeypatch.setattr(fleet_mod, "_train_stack", lambda *a, **k: calls.append(1))
    for ray in (False, True):  # checked in the driver, before Ray is even imported
        with pytest.raises(GensightError, match=r"labels 0,12.*\[12\].*10 outputs"):
            train_members([_mlp(0)], [bad], steps=1, restrict=True, ray=ray)
    assert calls == []


@pytest.mark.parametrize("classes,match", [
    ((), "classes is empty"),
    ((0, 1), r"train labels \[2\] outside its classes \(0, 1\)"),
])
def test_task_classes_must_cover_its_labels(tasks, classes, match):
    t = tasks[0]
    with pytest.raises(GensightError, match=match):
        Task("t", t.x_train, t.y_train, t.x_test, t.y_test, classes)


def test_label_subset_tasks_and_pooling(tasks):
    assert tasks[0].classes == (0, 1, 2) and set(tasks[0].y_train.tolist()) == {0, 1, 2}
    pooled = pooled_task(tasks)
    assert len(pooled.y_train) == sum(len(t.y_train) for t in tasks)
    assert pooled.classes == tuple(range(10))
    with pytest.raises(GensightError, match=r"label subset \[3, 11\]"):
        label_subset_tasks(load_dataset("digits"), [[3, 11]])
    with pytest.raises(GensightError, match="task 'empty'"):
        Task("empty", torch.zeros(0, 4), torch.zeros(0), torch.zeros(1, 4), torch.zeros(1))


def test_fleet_merge_rounds_and_table(tasks):
    models = [_mlp(s) for s in range(3)]
    fm = fleet_merge(models, tasks, rounds=2, local_steps=20, lr=1e-2)
    naive = fleet_merge(models, tasks, rounds=2, local_steps=20, lr=1e-2, align=False)
    assert list(fm.history["round"]) == [1, 1, 1, 2, 2, 2]
    assert fm.history["acc"].between(0, 1).all()
    table = compare_merges(fm.members, tasks, {"fleet-merge": fm.merged,
                                               "naive average": naive.merged})
    assert list(table.columns) == ["task", "member alone", "fleet-merge", "naive average",
                                   "ensemble"]
    assert table["task"].iloc[-1] == "mean"
    assert table["member alone"].iloc[-1] == pytest.approx(table["member alone"][:3].mean())
    assert table["member alone"].iloc[-1] > 0.8  # each member learned its own task
    with pytest.raises(GensightError, match="3 members but 2 tasks"):
        fleet_merge(models, tasks[:2])
    with pytest.raises(GensightError, match="steps must be a positive integer"):
        train_members(models, tasks, steps=0)


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "wieght"}, "unknown alignment method 'wieght'"),
    ({"method": "activation"}, "method 'activation' needs inputs x"),
    ({"method": "activation", "x": torch.zeros(1, 64)}, "a batch of at least 2 inputs"),
    ({"reference": "mean"}, "reference must be a member index or 'average'"),
    ({"reference": 3}, r"reference 3 is not a member index 0..2"),
    ({"reference": nn.Sequential(nn.Flatten(), nn.Linear(64, 7), nn.ReLU(),
                                 nn.Linear(7, 10))}, "member 3 has another architecture"),
])
def test_fleet_merge_refuses_bad_arguments_before_training(tasks, monkeypatch, kwargs,
                                                           message):
    import gensight.merge.fleet as fleet_mod

    calls = []
    monkeypatch.setattr(fleet_mod, "train_members",
                        lambda members, *a, **k: calls.append(1) or list(members))
    with pytest.raises(GensightError, match=message):
        fleet_merge([_mlp(s) for s in range(3)], tasks, rounds=1, local_steps=1, **kwargs)
    assert calls == []  # no local training ran


def test_common_init_starts_every_member_from_member_0(tasks):
    models = [_mlp(s) for s in range(3)]
    out = fleet_merge(models, tasks, rounds=1, local_steps=3, align=False, common_init=True)
    by_hand = average(train_members([models[0]] * 3, tasks, steps=3, seed=1))  # round 1
    for p, q in zip(out.merged.parameters(), by_hand.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-7)


def test_common_init_aligns_every_round_to_the_common_starting_point(tasks, monkeypatch):
    """From one initialization, round 1 aligns to that initialization (the members' common
    starting point, as the broadcast merge is in later rounds), not to member 0 after its
    local training; ``reference`` only picks round 1's reference for independent inits."""
    import gensight.merge.fleet as fleet_mod

    seen = []
    real = fleet_mod.merge

    def spy(members, **kw):
        seen.append(kw["reference"])
        return real(members, **kw)
    monkeypatch.setattr(fleet_mod, "merge", spy)
    models = [_mlp(s) for s in range(3)]
    start = [p.detach().clone() for p in models[0].parameters()]
    out = fleet_merge(models, tasks, rounds=2, local_steps=3, common_init=True, reference=1)
    assert len(seen) == 2 and all(isinstance(r, nn.Module) for r in seen)
    assert all(torch.equal(p, q) for p, q in zip(seen[0].parameters(), start, strict=True))
    want = real(train_members([models[0]] * 3, tasks, steps=3, seed=1), reference=models[0])
    assert all(torch.equal(p, q) for p, q in zip(seen[1].parameters(),
                                                 want.model.parameters(), strict=True))
    assert out.history["round"].max() == 2
    seen.clear()
    fleet_merge(models, tasks, rounds=1, local_steps=3, reference=1)  # independent inits
    assert seen == [1]


def test_shared_activation_module_is_not_mixed_up():
    torch.manual_seed(4)
    act = nn.Tanh()
    a = nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 5), act, nn.Linear(5, 3)).double()
    b = permuted_copy(a, torch.Generator().manual_seed(5))
    x = torch.randn(64, 4, dtype=torch.float64)
    back = apply_permutation(b, activation_matching(a, b, x))
    assert all(torch.equal(p, q) for p, q in zip(back.parameters(), a.parameters(), strict=True))


def test_ray_training_equals_local_training(tasks):
    ray = pytest.importorskip("ray")
    models = [_mlp(s) for s in range(2)]
    start = time.monotonic()
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"Ray does not start here: {exc}")
    try:
        if time.monotonic() - start > 20:  # pragma: no cover
            pytest.skip("Ray took over 20 s to start")
        remote = train_members(models, tasks[:2], steps=3, seed=1, ray=True)
        remote_r = train_members(models, tasks[:2], steps=3, seed=1, ray=True, restrict=True)
    finally:
        ray.shutdown()
    local_r = train_members(models, tasks[:2], steps=3, seed=1, restrict=True)
    for a, b in zip(remote_r, local_r, strict=True):
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.allclose(p, q, atol=1e-6)
    local = train_members(models, tasks[:2], steps=3, seed=1)
    for a, b in zip(remote, local, strict=True):
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.allclose(p, q, atol=1e-6)
