"""The merge report: which inputs activation matching sees, and fewer than 2 networks."""

import pytest
import torch

import gensight.merge.report as report_mod
from gensight.errors import GensightError
from gensight.merge import Task, alignment_inputs, merge, pooled_task
from gensight.merge.report import merge_report
from tests.factories import make_mlp

torch.set_num_threads(1)


def _tasks(sizes):
    """Task k's inputs are all equal to k, so an input tells which task it came from."""
    g = torch.Generator().manual_seed(0)
    return [Task(f"task {k}", torch.full((n, 4), float(k)),
                 torch.randint(0, 3, (n,), generator=g), torch.full((20, 4), float(k)),
                 torch.randint(0, 3, (20,), generator=g), (0, 1, 2))
            for k, n in enumerate(sizes)]


def test_alignment_inputs_are_a_seeded_subset_of_every_task():
    pooled = pooled_task(_tasks([300, 300, 300]))
    x = alignment_inputs(pooled, seed=4)
    assert x.shape == (256, 4)
    assert set(x[:, 0].tolist()) == {0.0, 1.0, 2.0}  # not the first task's only
    assert torch.equal(x, alignment_inputs(pooled, seed=4))
    assert not torch.equal(x, alignment_inputs(pooled, seed=5))
    small = pooled_task(_tasks([3, 2]))
    assert sorted(alignment_inputs(small)[:, 0].tolist()) == [0, 0, 0, 1, 1]


def test_merge_report_aligns_on_inputs_of_every_task(tmp_path, monkeypatch):
    seen = []

    def spy(models, **kwargs):
        seen.append(kwargs["x"])
        return merge(models, **kwargs)

    monkeypatch.setattr(report_mod, "merge", spy)
    torch.manual_seed(0)
    models = [make_mlp([4, 6, 3]) for _ in range(3)]
    merge_report(models, _tasks([300, 300, 300]), tmp_path, method="activation",
                 joint_steps=0, points=2)
    (x,) = seen
    assert len(x) == 256 and set(x[:, 0].tolist()) == {0.0, 1.0, 2.0}


def test_merge_report_of_one_network_is_refused_in_one_line(tmp_path):
    with pytest.raises(GensightError, match=r"^merge_report needs at least 2 networks to "
                                            r"merge; got 1$"):
        merge_report([make_mlp([4, 6, 3])], _tasks([30]), tmp_path / "o", joint_steps=0)
    assert not (tmp_path / "o").exists()
