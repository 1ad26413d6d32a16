"""Meta-test: diverged seeds are masked (not stopping the others), the report plots only the
finite part of each curve, progress advances per finished unit."""

import math

import torch
from torch import nn

from gensight.lopt import LOpt, LOptConfig
from gensight.lopt.evaluate import compare, train_members
from gensight.lopt.report import _table
from gensight.lopt.tasks import Batch, Task

from .helpers import TinyMLPTask


class _Quartic(Task):
    """``loss = w^4`` per member; odd seeds start at ``w = 10`` (GD with lr 0.1 diverges),
    even seeds at ``w = 0.5`` (converges)."""

    name = "quartic"

    def template(self):
        return nn.Linear(1, 1, bias=False)

    def init(self, seeds, dtype=torch.float32):
        w = torch.tensor([10.0 if s % 2 else 0.5 for s in seeds], dtype=dtype)
        return {"weight": w.view(-1, 1, 1)}

    def loss(self, params, batch):
        return params["weight"].reshape(-1) ** 4

    def sample(self, n, generator, dtype=torch.float32):
        return Batch(torch.zeros(n, 1, dtype=dtype), torch.zeros(n, 1, dtype=torch.long))

    def evaluate(self, params, split="train", limit=None):
        loss = params["weight"].reshape(-1) ** 4
        return loss, (loss < 1).to(loss.dtype)


def test_a_diverged_seed_is_masked_and_the_others_keep_training():
    c = train_members(_Quartic(), [0, 1], 20, "sgdm", 0.1)
    assert torch.isfinite(c.losses[0]).all()  # seed 0 trained all 20 steps
    assert not torch.isfinite(c.losses[1, -1])
    assert math.isfinite(c.train_loss[0]) and math.isnan(c.train_loss[1])
    assert c.test_acc[0] == 1 and math.isnan(c.test_acc[1])  # no accuracy for diverged
    s = c.summary()
    assert s["diverged"] == 1 and s["seeds"] == 2
    assert s["train_loss"] == float(c.train_loss[0])
    html = _table([c])
    assert "1/2 seeds diverged" in html and "(best)" not in html


def test_curve_summaries_golden_values_and_diverged_members():
    """mean_loss averages a member's whole minibatch-loss curve, late_loss its last tenth
    (at least one step); a diverged member counts in neither, as in train_loss."""
    from gensight.lopt.evaluate import Curve

    losses = torch.stack([torch.arange(20.0), 2 * torch.arange(20.0),
                          torch.full((20,), math.nan)])
    c = Curve("x", losses, torch.tensor([1.0, 3.0, math.nan]), torch.zeros(3),
              torch.tensor([0.5, 0.7, math.nan]), None, 0.0)
    mean, late = c.curve_losses()
    assert torch.equal(mean[:2], torch.tensor([9.5, 19.0]))
    assert torch.equal(late[:2], torch.tensor([18.5, 37.0]))  # steps 18 and 19
    assert math.isnan(mean[2]) and math.isnan(late[2])
    s = c.summary()
    assert s["mean_loss"] == 14.25 and s["late_loss"] == 27.75 and s["train_loss"] == 2.0
    assert math.isclose(s["mean_loss_std"], float(torch.tensor([9.5, 19.0]).std()))
    short = Curve("y", torch.tensor([[4.0, 2.0]]), torch.tensor([1.0]), torch.zeros(1),
                  torch.ones(1), None, 0.0)
    assert short.curve_losses()[1].item() == 2.0  # the last tenth of 2 steps is one step
    html = _table([c])
    assert "mean loss over the curve" in html and "14.2500" in html and "27.7500" in html


def test_band_uses_only_finite_points():
    from gensight.lopt.report import band

    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                      [10.0, 20.0, math.inf, math.nan, math.nan, math.nan]])
    mean, std = band(x, 1)
    assert torch.allclose(mean[:2], torch.tensor([5.5, 11.0], dtype=torch.float64))
    assert torch.equal(mean[2:], torch.tensor([3.0, 4.0, 5.0, 6.0], dtype=torch.float64))
    assert (std[2:] == 0).all()
    mean3, _ = band(x, 3)  # smoothing never mixes in filled values (edges replicate)
    assert torch.allclose(mean3[2:], torch.tensor([3.0, 4.0, 5.0, 17 / 3],
                                                  dtype=torch.float64))
    assert torch.allclose(mean3[1], torch.tensor((2.0 + (10 + 20) / 2) / 2,
                                                 dtype=torch.float64))
    all_nan, _ = band(torch.full((2, 3), math.nan), 2)
    assert torch.isnan(all_nan).all()


def test_compare_reports_progress_when_each_unit_finishes():
    task = TinyMLPTask()
    torch.manual_seed(0)
    lopt = LOpt(LOptConfig(f="mlp", hidden=4), task.template()).double()
    for baselines in ((), ("adam",)):
        events = []
        compare(task, {"a": lopt, "b": lopt}, 2, 1, 1, (0.1,), baselines=baselines,
                progress=lambda what, done, ev=events: ev.append((what, done)))
        assert [d for _, d in events] == [False, True] * (2 + len(baselines))
        assert sum(d for _, d in events) == 2 + len(baselines)
