"""The batched inner tasks compute what their template modules compute, member by member."""

import pytest
import torch

from gensight.lopt import make_task
from gensight.lopt.errors import LoptError
from gensight.nf import perm_spec


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn", "python-rnn"])
def test_batched_forward_matches_template(name):
    task = make_task(name)
    seeds = [3, 4, 5]
    params = task.init(seeds, torch.float64)
    batch = task.sample(3, torch.Generator().manual_seed(0), torch.float64)
    logits = task.forward(params, batch.x)
    for i, s in enumerate(seeds):
        torch.manual_seed(s)
        module = task.template().double()
        # init(seed) draws exactly the template's default initialisation
        for k, v in module.state_dict().items():
            assert torch.equal(v, params[k][i])
        x = batch.x[i]
        if name == "digits-mlp":
            x = x.flatten(1)
        if name == "python-rnn":
            x = torch.nn.functional.one_hot(x, 256).double()
        assert torch.allclose(module(x), logits[i], atol=1e-10)


def test_member_loss_is_per_member():
    task = make_task("digits-mlp")
    params = task.init([0, 1], torch.float64)
    batch = task.sample(2, torch.Generator().manual_seed(1), torch.float64)
    loss = task.loss(params, batch)
    one = task.loss({k: v[1:] for k, v in params.items()},
                    type(batch)(batch.x[1:], batch.y[1:]))
    assert torch.allclose(loss[1:], one, atol=1e-12)


def test_rnn_perm_spec_ties_recurrent_axes():
    spec = perm_spec(make_task("python-rnn").template(), "hnp")
    assert spec["rnn.weight_hh_l0"][0] == spec["rnn.weight_hh_l0"][1] is not None
    assert spec["head.weight"][0] is None


def test_unknown_task():
    with pytest.raises(LoptError, match="unknown task 'nope'"):
        make_task("nope")


def test_split_limit_is_a_seeded_sample_of_every_class():
    """MNIST-5k's training split is stored class by class; a limited split must still hold
    every class (the first 2,000 examples would hold digits 0-6 only)."""
    from gensight.lopt import make_task

    task = make_task("mnist5k-mlp")
    x, y = task.split("train", 2000)
    assert len(y) == 2000 and y.unique().numel() == 10
    x2, y2 = task.split("train", 2000)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    full_x, full_y = task.split("train")
    assert len(full_y) == 3000


def test_mnist8_is_mnist5k_area_averaged_to_8x8():
    """``mnist8-mlp``: the same 64-32-10 MLP as ``digits-mlp`` on MNIST-5k resized to 8x8;
    pixel (i, j) averages rows floor(3.5 i)..ceil(3.5 (i + 1)) of the 28x28 image."""
    small, big = make_task("mnist8-mlp"), make_task("mnist5k-mlp")
    assert small.shapes == make_task("digits-mlp").shapes
    for split in ("train", "test"):
        (xs, ys), (xb, yb) = small.split(split), big.split(split)
        assert xs.shape == (len(yb), 1, 8, 8) and torch.equal(ys, yb)
        for i, j in ((0, 0), (3, 5), (7, 7)):
            rows = slice(7 * i // 2, -(-7 * (i + 1) // 2))
            cols = slice(7 * j // 2, -(-7 * (j + 1) // 2))
            torch.testing.assert_close(xs[:, 0, i, j], xb[:, 0, rows, cols].mean((1, 2)))
