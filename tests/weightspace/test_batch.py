import pytest
import torch

from gensight.errors import (
    IncompatibleSpaceError,
    KeyMismatchError,
    NonFiniteWeightsError,
    ShapeMismatchError,
)
from gensight.weightspace import WeightBatch, WeightSpace
from tests.factories import make_cnn, make_mlp


def test_from_modules_shapes_and_values():
    nets = [make_cnn([2, 3, 4], 5, bias=False) for _ in range(3)]
    batch = WeightBatch.from_modules(nets)
    assert batch.batch_size == 3 and batch.channels == 1
    assert batch.weights[0].shape == (3, 1, 3, 2, 3, 3)
    assert batch.biases[0].shape == (3, 1, 3)
    assert torch.equal(batch.weights[1][2, 0], nets[2][2].weight)
    assert torch.count_nonzero(torch.cat([b.flatten() for b in batch.biases])) == 0


def test_state_dict_keys_matched_by_name_not_order():
    net = make_mlp([4, 5, 3])
    space = WeightSpace.from_module(net)
    sd = dict(net.state_dict())
    reversed_sd = dict(reversed(list(sd.items())))
    a = WeightBatch.from_state_dicts(space, [sd])
    b = WeightBatch.from_state_dicts(space, [reversed_sd])
    assert a.allclose(b, rtol=0, atol=0)


def test_round_trip_to_state_dicts_and_modules_preserves_function():
    nets = [make_cnn([1, 3, 2], 4) for _ in range(2)]
    batch = WeightBatch.from_modules(nets)
    back = batch.to_modules(make_cnn([1, 3, 2], 4))
    x = torch.randn(5, 1, 6, 6)
    for a, b in zip(nets, back, strict=True):
        assert torch.equal(a(x), b(x))
    sds = batch.to_state_dicts()
    assert set(sds[0]) == set(nets[0].state_dict())


def test_missing_and_extra_keys_are_named():
    net = make_mlp([4, 5, 3])
    space = WeightSpace.from_module(net)
    sd = dict(net.state_dict())
    del sd["2.bias"]
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(KeyMismatchError) as info:
        WeightBatch.from_state_dicts(space, [dict(net.state_dict()), sd])
    msg = str(info.value)
    assert "state dict 1" in msg and "'2.bias'" in msg and "'extra.weight'" in msg


def test_shape_mismatch_names_key_and_both_shapes():
    space = WeightSpace.from_module(make_mlp([4, 5, 3]))
    sd = dict(make_mlp([4, 6, 3]).state_dict())
    with pytest.raises(ShapeMismatchError) as info:
        WeightBatch.from_state_dicts(space, [sd])
    msg = str(info.value)
    assert "'0.weight'" in msg and "(6, 4)" in msg and "(5, 4)" in msg


def test_nan_weights_rejected_unless_allowed():
    net = make_mlp([4, 5, 3])
    space = WeightSpace.from_module(net)
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    sd["2.weight"][0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="'2.weight'"):
        WeightBatch.from_state_dicts(space, [sd])
    batch = WeightBatch.from_state_dicts(space, [sd], check_finite=False)
    assert torch.isnan(batch.weights[1]).any()


def test_constructor_validates_shapes():
    batch = WeightBatch.from_modules([make_mlp([4, 5, 3])])
    bad = list(batch.weights)
    bad[1] = bad[1][:, :, :2]
    with pytest.raises(ShapeMismatchError, match="'2.weight'"):
        WeightBatch(batch.space, bad, batch.biases)


def test_flatten_unflatten_cat_and_index():
    nets = [make_mlp([3, 4, 2]) for _ in range(4)]
    batch = WeightBatch.from_modules(nets)
    flat = batch.flatten()
    assert flat.shape == (4, batch.space.num_params)
    again = WeightBatch.unflatten(batch.space, flat)
    assert again.allclose(batch, rtol=0, atol=0)
    joined = WeightBatch.cat([batch[0], batch[1:]])
    assert joined.allclose(batch, rtol=0, atol=0)
    assert batch[-1].allclose(batch[3], rtol=0, atol=0)
    assert torch.equal(batch[torch.tensor([2, 0])].weights[0][1], batch.weights[0][0])
    with pytest.raises(ShapeMismatchError, match=r"expected \(B, 26\)"):
        WeightBatch.unflatten(batch.space, flat[:, :-1])


def test_arithmetic_and_space_checks():
    a = WeightBatch.from_modules([make_mlp([3, 4, 2])])
    b = WeightBatch.from_modules([make_mlp([3, 4, 2])])
    s = a + b
    assert torch.equal(s.weights[0], a.weights[0] + b.weights[0])
    assert (2 * a).allclose(a + a)
    other = WeightBatch.from_modules([make_mlp([3, 5, 2])])
    with pytest.raises(IncompatibleSpaceError):
        _ = a + other


def test_to_state_dicts_needs_one_channel_and_template_space():
    batch = WeightBatch.from_modules([make_mlp([3, 4, 2])])
    with pytest.raises(ShapeMismatchError, match="1 channel"):
        (batch.map(lambda t: t.repeat(1, 2, *([1] * (t.dim() - 2))))).to_state_dicts()
    with pytest.raises(IncompatibleSpaceError):
        batch.to_modules(make_mlp([3, 5, 2]))


def test_constructor_and_unflatten_reject_nonfinite_weights_by_key_and_member():
    batch = WeightBatch.from_modules([make_mlp([4, 5, 3]) for _ in range(3)])
    weights = [w.clone() for w in batch.weights]
    weights[1][2, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match=r"weight '2.weight'.* 1 of 3 members \[2\]"):
        WeightBatch(batch.space, weights, batch.biases)
    biases = [b.clone() for b in batch.biases]
    biases[0][0, 0, 1] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match=r"bias '0.bias'.*\[0\]"):
        WeightBatch(batch.space, batch.weights, biases)
    allowed = WeightBatch(batch.space, weights, batch.biases, check_finite=False)
    assert torch.isinf(allowed.weights[1]).any()
    flat = batch.flatten()
    flat[1, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match=r"weight '0.weight'.*\[1\]"):
        WeightBatch.unflatten(batch.space, flat)
    assert torch.isnan(WeightBatch.unflatten(batch.space, flat, check_finite=False)
                       .weights[0]).any()
    # derived batches (arithmetic, map, indexing, cat) are not rescanned
    assert torch.isinf((allowed * 2.0).weights[1]).any()
    assert len(WeightBatch.cat([allowed[0], allowed[2]])) == 2


def test_from_state_dicts_names_every_nonfinite_state_dict():
    net = make_mlp([4, 5, 3])
    space = WeightSpace.from_module(net)
    sds = [{k: v.clone() for k, v in net.state_dict().items()} for _ in range(4)]
    sds[1]["0.bias"][0] = float("nan")
    sds[3]["2.weight"][0, 0] = float("-inf")
    with pytest.raises(NonFiniteWeightsError) as info:
        WeightBatch.from_state_dicts(space, sds)
    assert "state dict 1: key '0.bias'" in str(info.value) and "[1, 3]" in str(info.value)
    assert info.value.members == [1, 3]
    # a float64 value that overflows float32 is caught too
    big = [{k: v.double().clone() for k, v in net.state_dict().items()}]
    big[0]["0.weight"][0, 0] = 1e300
    with pytest.raises(NonFiniteWeightsError, match="after conversion to torch.float32"):
        WeightBatch.from_state_dicts(space, big)
