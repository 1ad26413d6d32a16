"""Population training equals training each member alone with torch.optim."""

import pytest
import torch

from gensight.data import load_dataset
from gensight.weightspace import WeightBatch
from gensight.zoo import ZooSpec
from gensight.zoo.train import (
    Population,
    build_model,
    evaluate,
    gather,
    init_member,
    init_population,
    population_grad_,
    population_loss,
    train_population,
    train_single_reference,
)

# RMSprop and Adam take steps of about lr * sign(g) when |g| is tiny, so float rounding in
# near-zero gradients can flip a step at large learning rates; moderate rates keep the
# comparison about batching, not about chaos.
CASES = [
    ("mlp", {"family": "mlp", "hidden": [12, 10]}, "sgd", 0.05),
    ("mlp", {"family": "mlp", "hidden": [12]}, "adam", 0.005),
    ("mlp", {"family": "mlp", "hidden": [12]}, "rmsprop", 0.002),
    ("cnn", {"family": "cnn", "channels": [3, 4], "kernel_size": 3}, "sgd", 0.05),
    ("cnn", {"family": "cnn", "channels": [3], "kernel_size": 3}, "adam", 0.005),
]


@pytest.mark.parametrize("family, arch, optimizer, lr", CASES)
def test_population_matches_per_network_loop(family, arch, optimizer, lr):
    spec = ZooSpec.from_dict({
        "dataset": "digits", "architecture": arch, "configs": 3,
        "hparams": {"optimizer": [optimizer], "lr": {"low": lr / 2, "high": lr},
                    "dropout": [0.0, 0.25], "l2": [0.0, 1e-3], "init_scale": [0.7, 1.3],
                    "momentum": [0.0, 0.9], "epochs": [2], "batch_size": [50],
                    "train_fraction": [0.3]},
    })
    ds = load_dataset("digits")
    members = spec.members()
    pop = train_population(members, spec.architecture, ds, [], lambda e, p: None)
    batch = pop.to_weight_batch()
    for k, member in enumerate(members):
        alone = WeightBatch.from_modules([train_single_reference(member, spec.architecture, ds)])
        for a, b in zip(batch.tensors(), alone.tensors(), strict=True):
            assert torch.allclose(a[k], b[0], atol=2e-5, rtol=1e-4), member.hparams
        # and training changed the weights
        init = WeightBatch.from_modules([init_member(member, spec.architecture, ds)])
        assert not batch[k].allclose(init, atol=1e-3)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "gelu"])
def test_population_grad_equals_autograd(activation):
    """The hand-written MLP backward (relu, tanh, sigmoid; gelu falls back to autograd)
    gives autograd's gradient of the population loss, with and without dropout masks,
    in float64, laid out like the flat parameter buffer."""
    spec = ZooSpec.from_dict({"dataset": "digits", "architecture": {"family": "mlp",
                                                                     "hidden": [9, 7]},
                              "configs": 3, "hparams": {"activation": [activation]}})
    ds = load_dataset("digits")
    pop = init_population(spec.members(), spec.architecture, ds)
    pop.weights = [w.double() for w in pop.weights]
    pop.biases = [b.double() for b in pop.biases]
    flat = pop.flatten_()
    params = pop.parameters()
    for p in params:
        p.requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(len(ds.y_train), (3, 11), generator=g)
    xb, yb = ds.x_train[idx].double(), ds.y_train[idx]
    drop = [(torch.rand(3, 11, n, generator=g) > 0.3).double() / 0.7 for n in (9, 7)]
    for masks in (None, drop, [None, drop[1]]):
        want = torch.cat([t.reshape(3, -1) for t in torch.autograd.grad(
            population_loss(pop, xb, yb, masks), params)], 1)
        got = population_grad_(pop, xb, yb, torch.full_like(flat, float("nan")), masks)
        assert torch.allclose(got, want, atol=1e-12, rtol=1e-10)
        assert got.abs().sum() > 0


@pytest.mark.parametrize("arch", [{"family": "mlp", "hidden": [7, 5]},
                                  {"family": "cnn", "channels": [3, 2], "kernel_size": 3},
                                  {"family": "cnn", "channels": [2, 3], "kernel_size": 3,
                                   "stride": 1}])
@pytest.mark.parametrize("dataset", ["digits", "mnist1d"])
def test_population_forward_equals_each_module(arch, dataset):
    spec = ZooSpec.from_dict({"dataset": dataset, "architecture": arch, "configs": 3,
                              "hparams": {"activation": ["tanh"]}})
    ds = load_dataset(dataset)
    modules = [init_member(m, spec.architecture, ds).eval() for m in spec.members()]
    pop = Population.from_modules(modules, spec.architecture, "tanh")
    x = ds.x_test[:20]
    with torch.no_grad():
        shared = pop.forward(x, shared=True)
        per_member = pop.forward(x.unsqueeze(0).expand(3, *x.shape))
    for k, module in enumerate(modules):
        with torch.no_grad():
            expected = module(x)
        assert torch.allclose(shared[k], expected, atol=1e-5)
        assert torch.allclose(per_member[k], expected, atol=1e-5)
    ev = evaluate(pop, x, ds.y_test[:20], keep_logits=True, chunk=7)
    assert torch.allclose(ev.logits, shared, atol=1e-6)
    expected_acc = (shared.argmax(-1) == ds.y_test[:20]).float().mean(1)
    assert torch.allclose(ev.accuracy, expected_acc)
    # one set per member: member k sees its own examples
    idx = torch.stack([torch.arange(k, k + 10) for k in range(3)])
    own = evaluate(pop, ds.x_test[idx], ds.y_test[idx], chunk=4)
    for k, module in enumerate(modules):
        with torch.no_grad():
            acc = (module(ds.x_test[idx[k]]).argmax(1) == ds.y_test[idx[k]]).float().mean()
        assert own.accuracy[k] == pytest.approx(acc.item())


def test_init_is_seeded_and_scaled():
    spec = ZooSpec.from_dict({"dataset": "digits", "architecture": {"family": "mlp",
                              "hidden": [6]}, "configs": 2,
                              "hparams": {"init_scale": [2.0]}})
    ds = load_dataset("digits")
    m = spec.members()[0]
    a, b = init_member(m, spec.architecture, ds), init_member(m, spec.architecture, ds)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    torch.manual_seed(m.seed)
    plain = build_model(spec.architecture, ds.input_shape, 10)
    assert torch.allclose(a[1].weight, 2.0 * plain[1].weight)
    assert torch.allclose(a[1].bias, plain[1].bias)
    other = init_member(spec.members()[1], spec.architecture, ds)
    assert not torch.equal(other[1].weight, a[1].weight)


@pytest.mark.parametrize("arch", [{"family": "mlp", "hidden": [7, 5]},
                                  {"family": "cnn", "channels": [3, 2], "kernel_size": 3}])
def test_init_population_draws_what_init_member_draws(arch):
    spec = ZooSpec.from_dict({"dataset": "digits", "architecture": arch, "configs": 4,
                              "hparams": {"init_scale": [0.5, 1.0, 2.0]}})
    ds = load_dataset("digits")
    members = spec.members()
    pop = init_population(members, spec.architecture, ds)
    alone = WeightBatch.from_modules([init_member(m, spec.architecture, ds) for m in members])
    for a, b in zip(pop.to_weight_batch().tensors(), alone.tensors(), strict=True):
        assert torch.equal(a, b)
    # flatten_ moves every parameter into one (M, P) buffer without changing a value
    flat = pop.flatten_()
    assert flat.shape == (4, alone.space.num_params)
    for a, b in zip(pop.to_weight_batch().tensors(), alone.tensors(), strict=True):
        assert torch.equal(a, b)
    flat[1].zero_()
    assert all(float(t[1].abs().sum()) == 0 for t in pop.to_weight_batch().tensors())
    assert all(float(t[0].abs().sum()) > 0 for t in pop.to_weight_batch().tensors())


def test_gather_is_advanced_indexing():
    data = torch.arange(60.0).view(10, 2, 3)
    idx = torch.tensor([[3, 1, 4], [1, 5, 9]])
    assert torch.equal(gather(data, idx), data[idx])
    assert torch.equal(gather(torch.arange(10), idx), idx)


def test_population_rejects_mixed_structure():
    spec = ZooSpec.from_dict({"dataset": "digits", "architecture": {"family": "mlp",
                              "hidden": [4]}, "mode": "grid",
                              "hparams": {"epochs": [1, 2]}})
    with pytest.raises(ValueError, match="share 'epochs'"):
        train_population(spec.members(), spec.architecture, load_dataset("digits"), [],
                         lambda e, p: None)


@pytest.mark.parametrize("shapes", [[(5,), (3,)], [(2, 3, 3)]])
def test_epoch_dropout_masks_equal_per_step_draws(shapes):
    from gensight.zoo.train import dropout_masks, epoch_dropout_masks, member_states
    spec = ZooSpec.from_dict({"dataset": "digits", "architecture": {"family": "mlp",
                              "hidden": [4]}, "configs": 4})
    members = spec.members()
    rates = [0.0, 0.1, 0.5, 0.3]
    sizes = [7, 7, 7, 3]
    per_step = member_states(members, 50)
    # a small block_bytes forces several blocks per epoch
    blocked = member_states(members, 50)
    stream = list(epoch_dropout_masks(blocked, rates, sizes, shapes, block_bytes=2000))
    assert len(stream) == len(sizes)
    for b, got in zip(sizes, stream, strict=True):
        want = dropout_masks(per_step, rates, b, shapes)
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)
    assert torch.equal(stream[0][0][0], torch.ones_like(stream[0][0][0]))  # rate 0
    # both leave every generator at the same point
    for a, b in zip(per_step, blocked, strict=True):
        assert torch.equal(torch.rand(3, generator=a.generator),
                           torch.rand(3, generator=b.generator))
    no_dropout = list(epoch_dropout_masks(blocked, [0.0] * 4, sizes, shapes))
    assert no_dropout == [[None] * len(shapes)] * 4



@pytest.mark.parametrize("optimizer, lr, fraction, stop",
                         [("adam", 0.04, 0.3, 0.45), ("sgd", 0.1, 1.0, 0.3)])
def test_stop_loss_members_stop_as_if_trained_alone(optimizer, lr, fraction, stop):
    """arXiv 1912.02178's stopping rule, per member in the population: members stop at
    different epochs, each exactly as the per-network reference with the same rule, and a
    stopped member's weights are stored unchanged at later checkpoints."""
    spec = ZooSpec.from_dict({
        "dataset": "digits", "architecture": {"family": "mlp", "hidden": [16]}, "configs": 4,
        "stop_loss": stop,
        "hparams": {"optimizer": [optimizer], "lr": {"low": lr / 4, "high": lr},
                    "init_scale": [0.5, 1.5], "dropout": [0.0, 0.2], "epochs": [8],
                    "batch_size": [64], "train_fraction": [fraction]},
    })
    ds = load_dataset("digits")
    members = spec.members()
    stopped: dict[int, int] = {}
    saved: dict[int, WeightBatch] = {}

    def on_stop(epoch, positions):
        for pos in positions:
            stopped[pos] = epoch

    pop = train_population(members, spec.architecture, ds, [4, 6, 8],
                           lambda e, p: saved.__setitem__(e, p.to_weight_batch().map(torch.clone)),
                           stop_loss=spec.stop_loss, on_stop=on_stop)
    # the rule acts per member: stops at different epochs, and one member never stops
    assert len(set(stopped.values())) >= 2 and len(stopped) == len(members) - 1, stopped
    batch = pop.to_weight_batch()
    for k, member in enumerate(members):
        epochs: list[int] = []
        alone = train_single_reference(member, spec.architecture, ds,
                                       stop_loss=spec.stop_loss, on_stop=epochs.append)
        assert (epochs[0] if epochs else None) == stopped.get(k)
        ref = WeightBatch.from_modules([alone])
        for a, b in zip(batch.tensors(), ref.tensors(), strict=True):
            assert torch.allclose(a[k], b[0], atol=2e-5, rtol=1e-4), member.hparams
        if k in stopped:  # frozen from its stop on
            for e in (e for e in (4, 6, 8) if e >= stopped[k]):
                for a, b in zip(saved[e].tensors(), batch.tensors(), strict=True):
                    assert torch.equal(a[k], b[k])


def test_stop_loss_spec_field():
    base = {"dataset": "digits", "architecture": {"family": "mlp", "hidden": [4]}}
    plain = ZooSpec.from_dict(base)
    assert plain.stop_loss is None and "stop_loss" not in plain.to_dict()
    spec = ZooSpec.from_dict({**base, "stop_loss": 0.01})
    assert spec.stop_loss == 0.01 and ZooSpec.from_dict(spec.to_dict()) == spec
    assert spec.content_hash() != plain.content_hash()
    from gensight.zoo.spec import SpecError
    for bad in (0, -1.0, "0.01", True, float("nan")):
        with pytest.raises(SpecError, match="stop_loss"):
            ZooSpec.from_dict({**base, "stop_loss": bad})
    siren = {"dataset": "digits", "architecture": {"family": "siren"}, "siren": {},
             "stop_loss": 0.01}
    with pytest.raises(SpecError, match="stop_loss: does not apply to family 'siren'"):
        ZooSpec.from_dict(siren)


def test_stop_loss_everyone_stopped_still_checkpoints():
    spec = ZooSpec.from_dict({"dataset": "digits", "configs": 3, "stop_loss": 50.0,
                              "architecture": {"family": "mlp", "hidden": [5]},
                              "hparams": {"epochs": [4], "lr": [0.01, 0.02, 0.03]},
                              "mode": "grid"})
    ds = load_dataset("digits")
    saved, stops = {}, []
    pop = train_population(spec.members(), spec.architecture, ds, [0, 1, 3, 4],
                           lambda e, p: saved.__setitem__(e, p.to_weight_batch().map(torch.clone)),
                           stop_loss=50.0, on_stop=lambda e, pos: stops.append((e, pos)))
    assert stops == [(1, [0, 1, 2])] and sorted(saved) == [0, 1, 3, 4]
    assert not torch.equal(saved[0].weights[0], saved[1].weights[0])
    for e in (3, 4):
        assert all(torch.equal(a, b) for a, b in zip(saved[1].tensors(), saved[e].tensors(),
                                                     strict=True))
    assert all(torch.equal(a, b) for a, b in zip(pop.to_weight_batch().tensors(),
                                                 saved[4].tensors(), strict=True))
