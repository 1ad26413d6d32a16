import pytest
import torch
from torch import nn

from gensight.errors import GensightError, ShapeMismatchError, UnsupportedModuleError
from gensight.weightspace import LayerSpec, WeightSpace
from tests.factories import make_cnn, make_mlp


def test_mlp_space_shapes_and_keys():
    space = WeightSpace.from_module(make_mlp([5, 7, 3]))
    assert space.neurons == (5, 7, 3)
    assert space.n_layers == 2
    assert [lay.weight_shape for lay in space.layers] == [(7, 5), (3, 7)]
    assert space.state_dict_keys() == ("0.weight", "0.bias", "2.weight", "2.bias")
    assert space.num_params == 7 * 5 + 7 + 3 * 7 + 3
    assert space.permuted_layers("hnp") == (1,)
    assert space.permuted_layers("np") == (0, 1, 2)


def test_cnn_space_filters_and_missing_bias():
    model = make_cnn([1, 4, 6], 10, bias=False)
    space = WeightSpace.from_module(model)
    assert space.neurons == (1, 4, 6, 10)
    assert [lay.weight_shape for lay in space.layers] == [(4, 1, 3, 3), (6, 4, 3, 3), (10, 6)]
    assert [lay.kind for lay in space.layers] == ["conv2d", "conv2d", "linear"]
    assert all(not lay.has_bias for lay in space.layers)
    assert space.num_params == sum(p.numel() for p in model.parameters())


def test_nested_sequential_and_single_child_wrapper():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.GELU()), nn.Linear(4, 2))

        def forward(self, x):
            return self.net(x)

    space = WeightSpace.from_module(Wrapper())
    assert space.state_dict_keys() == (
        "net.0.0.weight", "net.0.0.bias", "net.1.weight", "net.1.bias")
    assert set(space.state_dict_keys()) == set(dict(Wrapper().named_parameters()))


@pytest.mark.parametrize(
    "model, fragment",
    [
        (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)), "'1' (BatchNorm1d)"),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2)), "'1' (Flatten)"),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                       nn.Linear(16, 2)), "output_size=2"),
        (nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                       nn.Linear(4, 2)), "groups=2"),
        (nn.Sequential(nn.Linear(3, 4), nn.Conv1d(4, 2, 1)), "follows a dense layer"),
        (nn.Sequential(nn.ReLU()), "has no Linear or Conv layer"),
        (nn.Sequential(nn.Linear(3, 4), nn.PReLU(), nn.Linear(4, 2)), "'1' (PReLU)"),
    ],
)
def test_unsupported_modules_are_named(model, fragment):
    with pytest.raises(UnsupportedModuleError) as info:
        WeightSpace.from_module(model)
    assert fragment in str(info.value)


def test_custom_multichild_module_rejected_with_advice():
    class TwoTower(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 2)

    with pytest.raises(UnsupportedModuleError, match="nn.Sequential"):
        WeightSpace.from_module(TwoTower())


def test_layers_must_chain():
    with pytest.raises(ShapeMismatchError, match="takes 5 inputs .* has 4 outputs"):
        WeightSpace((LayerSpec("a.weight", "a.bias", "linear", 4, 3),
                     LayerSpec("b.weight", "b.bias", "linear", 2, 5)))
    with pytest.raises(ShapeMismatchError):  # Linear(4, 2) after Linear(3, 5) in a model
        WeightSpace.from_module(nn.Sequential(nn.Linear(3, 5), nn.Linear(4, 2)))


def test_json_round_trip_and_equality():
    space = WeightSpace.from_module(make_cnn([2, 3, 4], 5, bias=False))
    again = WeightSpace.from_json(space.to_json())
    assert again == space and hash(again) == hash(space)
    assert WeightSpace.from_module(make_mlp([4, 3])) != space


def test_from_dict_names_missing_field():
    data = WeightSpace.from_module(make_mlp([4, 3])).to_dict()
    del data["layers"][0]["n_in"]
    with pytest.raises(GensightError, match="n_in"):
        WeightSpace.from_dict(data)


def test_unknown_symmetry():
    with pytest.raises(GensightError, match="unknown symmetry"):
        WeightSpace.from_module(make_mlp([4, 3])).permuted_layers("xyz")


def test_space_is_immutable():
    space = WeightSpace.from_module(make_mlp([4, 3]))
    with pytest.raises(AttributeError):
        space.layers = ()  # type: ignore[misc]
    assert torch.Size(space.layers[0].weight_shape) == torch.Size([3, 4])
