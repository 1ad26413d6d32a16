"""The batched alpha' search equals the per-network one (float64), and zoo_measures uses it."""

import pytest
import torch

from gensight.data import load_dataset
from gensight.measures import sharpness_alpha, zoo_measures
from gensight.measures.batched import sharpness_alpha_batch
from gensight.zoo import ZooSpec
from gensight.zoo.train import Population, init_member, train_population


def _trained(arch: dict, n: int, epochs: int):
    spec = ZooSpec.from_dict({"dataset": "digits", "architecture": arch, "configs": n,
                              "hparams": {"optimizer": ["adam"], "epochs": [epochs],
                                          "lr": {"low": 0.01, "high": 0.03},
                                          "batch_size": [32]}})
    ds = load_dataset("digits")
    members = spec.members()
    pop = train_population(members, spec.architecture, ds, [], lambda e, p: None)
    double = Population(pop.space, pop.arch, [w.detach().double() for w in pop.weights],
                        [b.detach().double() for b in pop.biases], pop.activation)
    modules = [m.double().eval() for m in pop.to_weight_batch().to_modules(
        init_member(members[0], spec.architecture, ds))]
    return double, modules, ds


@pytest.mark.parametrize("arch, n, x_per_member", [
    ({"family": "mlp", "hidden": [16]}, 4, False),
    ({"family": "mlp", "hidden": [16]}, 4, True),
    ({"family": "cnn", "channels": [8, 16], "kernel_size": 3, "stride": 2}, 2, False),
])
@pytest.mark.parametrize("magnitude", [False, True])
def test_batched_search_equals_per_network_search(arch, n, x_per_member, magnitude):
    pop, modules, ds = _trained(arch, n, epochs=10 if arch["family"] == "mlp" else 15)
    x, y = ds.x_train[:200].double(), ds.y_train[:200]
    if x_per_member:  # one (here: the same) set per network, in the (M, n, ...) layout
        x = x.unsqueeze(0).expand(n, *x.shape).contiguous()
        y = y.unsqueeze(0).expand(n, -1).contiguous()
    found = sharpness_alpha_batch(pop, x, y, magnitude=magnitude, restarts=4, steps=6)
    for k, (module, res) in enumerate(zip(modules, found, strict=True)):
        alpha, info = sharpness_alpha(module, ds.x_train[:200].double(), ds.y_train[:200],
                                      magnitude=magnitude, restarts=4, steps=6)
        assert res.alpha == pytest.approx(alpha, rel=1e-9), k
        assert res.evaluations == info["evaluations"]
        assert res.base_accuracy == pytest.approx(info["base_accuracy"])
        # the descent differentiates only the band's examples: less work than the full pass
        assert res.passes < info["passes"]


def test_chance_level_networks_have_no_alpha_and_say_why():
    pop, _, ds = _trained({"family": "mlp", "hidden": [8]}, 3, epochs=10)
    untrained = Population(pop.space, pop.arch, [w * 0 for w in pop.weights],
                           [b * 0 for b in pop.biases], pop.activation)
    found = sharpness_alpha_batch(untrained, ds.x_train[:100].double(), ds.y_train[:100],
                                  restarts=2, steps=2)
    assert all(r.alpha is None and "chance level" in r.reason for r in found)


def test_zoo_measures_batched_alphas_equal_per_network_ones(grid_zoo, monkeypatch):
    from gensight.measures import registry

    monkeypatch.setitem(registry.SEARCH, "restarts", 2)
    monkeypatch.setitem(registry.SEARCH, "steps", 3)
    monkeypatch.setitem(registry.SEARCH, "rtol", 0.05)
    rows = grid_zoo.table.query("is_final and finite").head(6)
    names = ["sharpness.flatness", "sharpness.mag.flatness"]
    calls = []
    batched, _ = zoo_measures(grid_zoo, names, rows, n_examples=200, alpha_batch=4,
                              alpha_progress=lambda done, total: calls.append((done, total)))
    # 6 networks x 2 kinds of alpha', in batches of 4 and 2: every search reported, in order
    assert calls[-1] == (12, 12) and all(t == 12 for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    single, _ = zoo_measures(grid_zoo, names, rows, n_examples=200, alpha_batch=None)
    both = batched.merge(single, on="member_id", suffixes=("_b", "_s"))
    for name in names:  # float32: the batched products round differently, rarely flipping
        a, b = both[f"{name}_b"], both[f"{name}_s"]  # a sign step; the values stay close
        assert a.isna().equals(b.isna()) and a.notna().sum() >= 3
        assert ((a - b).abs() <= 0.05 * b.abs()).all(), both


def test_zoo_measures_rejects_a_bad_alpha_batch(grid_zoo):
    from gensight.measures import MeasureError

    with pytest.raises(MeasureError, match="alpha_batch must be a positive number"):
        zoo_measures(grid_zoo, ["sharpness.flatness"], alpha_batch=0)


def test_zoo_measures_batched_alphas_with_mixed_train_fractions(tmp_path, monkeypatch):
    """Members with different training subsets (sizes) are searched in separate batches."""
    from gensight.measures import registry
    from gensight.zoo import build_zoo

    monkeypatch.setitem(registry.SEARCH, "restarts", 2)
    monkeypatch.setitem(registry.SEARCH, "steps", 2)
    monkeypatch.setitem(registry.SEARCH, "rtol", 0.1)
    spec = ZooSpec.from_dict({
        "dataset": "digits", "mode": "grid", "seed": 5, "shard_size": 8,
        "architecture": {"family": "mlp", "hidden": [8]},
        "hparams": {"optimizer": ["adam"], "lr": [0.02], "epochs": [4], "batch_size": [32],
                    "train_fraction": [0.2, 0.4], "activation": ["relu", "tanh"]}})
    zoo = build_zoo(spec, tmp_path / "z")
    names = ["sharpness.flatness"]
    batched, _ = zoo_measures(zoo, names, n_examples=None, alpha_batch=8)
    single, _ = zoo_measures(zoo, names, n_examples=None, alpha_batch=None)
    both = batched.merge(single, on="member_id", suffixes=("_b", "_s"))
    a, b = both["sharpness.flatness_b"], both["sharpness.flatness_s"]
    assert len(both) == 4 and a.isna().equals(b.isna()) and a.notna().sum() >= 2
    assert ((a - b).abs() <= 0.05 * b.abs()).all(), both


def test_measure_examples_are_a_seeded_sample_not_the_first_ones():
    """MNIST-5k's training split is stored class by class: the first 500 examples hold two
    classes. The measures' examples are a seeded random sample of the member's subset."""
    from gensight.measures.zoo import measure_examples
    from gensight.zoo.train import member_states

    ds = load_dataset("mnist5k")
    assert ds.y_train[:500].unique().numel() <= 2  # why the first ones would be wrong
    spec = ZooSpec.from_dict({"dataset": "mnist5k", "configs": 2,
                              "architecture": {"family": "mlp", "hidden": [4]}})
    members = spec.members()
    states = member_states(members, len(ds.y_train))
    idx = [measure_examples(m, s.subset, 500) for m, s in zip(members, states, strict=True)]
    for i, s in zip(idx, states, strict=True):
        assert len(i) == 500 and bool(torch.isin(i, s.subset).all())
        assert bool((i[1:] > i[:-1]).all())  # distinct, in index order
        assert ds.y_train[i].unique().numel() == 10
    assert not torch.equal(idx[0], idx[1])  # each member its own sample ...
    again = measure_examples(members[0], states[0].subset, 500)
    assert torch.equal(again, idx[0])  # ... the same on every call
    assert torch.equal(measure_examples(members[0], states[0].subset, None), states[0].subset)
