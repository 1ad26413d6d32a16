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
    finally:
        ray.shutdown()
    local = train_members(models, tasks[:2], steps=3, seed=1)
    for a, b in zip(remote, local, strict=True):
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.allclose(p, q, atol=1e-6)
