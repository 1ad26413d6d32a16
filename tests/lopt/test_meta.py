"""Meta-training: TBPTT gradient vs finite differences, ES mean on a quadratic, resume."""

import pytest
import torch
from torch import nn

from gensight.lopt import LOpt, LOptConfig, LoptError
from gensight.lopt.meta import (
    CHECKPOINT,
    MetaConfig,
    MetaTrainer,
    antithetic_es_gradient,
    load_lopt,
    unroll,
)
from gensight.lopt.tasks import Batch, Task

from .helpers import TinyMLPTask


@pytest.mark.parametrize("kind", ["mlp", "deepsets", "nfn", "unf", "none"])
def test_tbptt_meta_gradient_matches_finite_differences(kind):
    """Second-order TBPTT is the exact gradient of the truncated meta-loss (float64)."""
    task = TinyMLPTask()
    torch.manual_seed(0)
    lopt = LOpt(LOptConfig(f=kind, hidden=4, init_alpha=0.1, init_beta=0.3),
                task.template()).double()
    params = task.init([0, 1], torch.float64)
    state = lopt.init_state(params)
    gen = torch.Generator().manual_seed(5)
    batches = [task.sample(2, gen, torch.float64) for _ in range(4)]  # 3 inner steps

    def meta_loss():
        losses, _, _ = unroll(lopt, task, params, state, batches, second_order=True)
        return losses.mean()

    named = dict(lopt.named_parameters())
    grads = dict(zip(named, torch.autograd.grad(meta_loss(), list(named.values()),
                                                allow_unused=True), strict=True))
    coords = [("log_alpha", ()), ("log_gamma", ())]
    if kind != "none":
        coords += [("log_beta", ())]
        first = next(n for n in named if n.startswith("f.") and named[n].dim() == 2)
        coords += [(first, (0, 0)), (first, (1, 2))]
    h = 1e-6
    for name, idx in coords:
        p = named[name]
        with torch.no_grad():
            old = p[idx].item()
            p[idx] = old + h
            up = meta_loss().item()
            p[idx] = old - h
            down = meta_loss().item()
            p[idx] = old
        fd = (up - down) / (2 * h)
        got = grads[name][idx].item()
        assert abs(got - fd) <= 1e-6 + 1e-5 * abs(fd), (name, idx, got, fd)
        assert abs(fd) > 1e-8, (name, idx)  # the coordinate matters


def test_first_order_tbptt_differs_from_second_order_but_agrees_in_sign_on_alpha():
    task = TinyMLPTask()
    torch.manual_seed(0)
    lopt = LOpt(LOptConfig(f="mlp", hidden=4), task.template()).double()
    params = task.init([0, 1], torch.float64)
    state = lopt.init_state(params)
    gen = torch.Generator().manual_seed(5)
    batches = [task.sample(2, gen, torch.float64) for _ in range(4)]
    out = []
    for second in (False, True):
        losses, _, _ = unroll(lopt, task, params, state, batches, second_order=second)
        out.append(torch.autograd.grad(losses.mean(), lopt.log_alpha)[0])
    assert not torch.allclose(out[0], out[1])
    assert torch.sign(out[0]) == torch.sign(out[1])


def test_antithetic_es_mean_on_quadratic():
    """For L = 1/2 (t - c)^T A (t - c) the antithetic estimate's mean is A (t - c)."""
    g = torch.Generator().manual_seed(0)
    d = 5
    m = torch.randn(d, d, generator=g, dtype=torch.float64)
    a = m @ m.T + torch.eye(d, dtype=torch.float64)
    c = torch.randn(d, generator=g, dtype=torch.float64)
    theta = torch.randn(d, generator=g, dtype=torch.float64)

    def fn(rows):
        r = rows - c
        return 0.5 * ((r @ a) * r).sum(1)

    true = a @ (theta - c)
    ests = torch.stack([antithetic_es_gradient(fn, theta, 0.1, 50, g)[0] for _ in range(400)])
    mean, sem = ests.mean(0), ests.std(0) / 400 ** 0.5
    assert ((mean - true).abs() <= 4 * sem + 1e-12).all(), (mean, true, sem)
    assert (mean - true).norm() < 0.05 * true.norm()
    # sigma does not bias it (the quadratic terms cancel between the two antithetic halves)
    big = torch.stack([antithetic_es_gradient(fn, theta, 3.0, 50, g)[0] for _ in range(400)])
    assert (big.mean(0) - true).norm() < 0.05 * true.norm()


def _trainer(tmp, estimator, steps, every, backbone="own", objective="mean", paper=False):
    cfg = MetaConfig(task="tiny-mlp", estimator=estimator, population=4, unroll=3, horizon=6,
                     meta_steps=steps, checkpoint_every=every, dtype="float64", seed=2,
                     objective=objective)
    lcfg = (LOptConfig.paper_features if paper else LOptConfig)(
        f="unf", hidden=4, layers=3 if backbone == "own" else 4, backbone=backbone)
    return MetaTrainer(lcfg, cfg, tmp, task=TinyMLPTask())


@pytest.mark.parametrize("estimator,backbone,paper", [
    ("tbptt", "own", False), ("es", "own", False), ("pes", "own", False),
    ("tbptt", "deepsets", False), ("tbptt", "deepsets", True), ("pes", "own", True)])
def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path, estimator, backbone,
                                                              paper):
    """``paper``: the paper's features, whose step counters restart with their runs."""
    full = _trainer(tmp_path / "a", estimator, 5, 5, backbone, paper=paper)
    full.run()
    first = _trainer(tmp_path / "b", estimator, 2, 1, backbone, paper=paper)
    first.run()
    assert (tmp_path / "b" / CHECKPOINT).exists()
    second = _trainer(tmp_path / "b", estimator, 5, 1, backbone, paper=paper)
    second.run()
    for (n, p), q in zip(full.lopt.named_parameters(), second.lopt.parameters(), strict=True):
        assert torch.equal(p, q), n
    assert [r["meta_loss"] for r in full.history] == [r["meta_loss"] for r in second.history]
    for k in full.params:
        assert torch.equal(full.params[k], second.params[k])
    if paper:  # every run has restarted within 5 meta-steps (horizon 6 = 2 unrolls), so
        # its counter is the number of steps since its restart
        t = second.state["step:0.weight"]
        steps = second.inner_steps.repeat(2) if estimator == "pes" else second.inner_steps
        assert t.tolist() == steps.double().tolist()
        assert torch.equal(t, full.state["step:0.weight"])
    # meta-training changed phi
    fresh = _trainer(None, estimator, 5, 5, backbone, paper=paper)
    assert not torch.equal(fresh.lopt.log_alpha, full.lopt.log_alpha)


def test_resume_with_other_settings_is_refused(tmp_path):
    _trainer(tmp_path, "tbptt", 1, 1).run()
    cfg = MetaConfig(task="tiny-mlp", estimator="tbptt", population=4, unroll=3, horizon=6,
                     meta_steps=2, dtype="float64", seed=3)
    other = MetaTrainer(LOptConfig(f="unf", hidden=4), cfg, tmp_path, task=TinyMLPTask())
    with pytest.raises(LoptError, match="written with seed=2, not 3"):
        other.run()


def test_load_lopt_transfers_np_across_widths_and_refuses_hnp(tmp_path):
    cfg = MetaConfig(task="tiny-mlp", population=2, unroll=2, horizon=4, meta_steps=1,
                     dtype="float64")
    MetaTrainer(LOptConfig(f="unf", hidden=4), cfg, tmp_path / "np", task=TinyMLPTask()).run()
    wide = TinyMLPTask(widths=(6, 11, 3))
    lopt, info = load_lopt(tmp_path / "np", wide)
    assert info["step"] == 1 and lopt.config.f == "unf"
    MetaTrainer(LOptConfig(f="nfn", hidden=4, symmetry="hnp"), cfg, tmp_path / "hnp",
                task=TinyMLPTask()).run()
    with pytest.raises(LoptError, match="symmetry 'np' to transfer"):
        load_lopt(tmp_path / "hnp", TinyMLPTask(widths=(9, 5, 3)))


@pytest.mark.parametrize("kwargs,match", [
    ({"estimator": "adam"}, "estimator must be one of"),
    ({"estimator": "es", "population": 3}, "population must be even"),
    ({"horizon": 7}, "horizon \\(7\\) must be a multiple of unroll"),
    ({"unroll": 0}, "unroll must be a positive integer"),
    ({"dtype": "half"}, "dtype must be"),
    ({"objective": "median"}, "objective must be one of mean, log, final"),
])
def test_meta_config_errors(kwargs, match):
    with pytest.raises(LoptError, match=match):
        MetaConfig(**kwargs).check()


class _Quadratic(Task):
    """Deterministic inner problem ``1/2 (w_0^2 + 3 w_1^2)`` from ``w = (1, -2)``."""

    name = "quadratic"

    def template(self):
        return nn.Linear(2, 1, bias=False)

    def init(self, seeds, dtype=torch.float32):
        w = torch.tensor([[1.0, -2.0]], dtype=dtype)
        return {"weight": w.expand(len(seeds), 1, 2).clone()}

    def loss(self, params, batch):
        w = params["weight"][:, 0]
        return 0.5 * (w[:, 0] ** 2 + 3 * w[:, 1] ** 2)

    def sample(self, n, generator, dtype=torch.float32):
        return Batch(torch.zeros(n, 1, dtype=dtype), torch.zeros(n, 1, dtype=torch.long))


def test_pes_is_unbiased_across_truncations_where_truncated_es_is_not():
    """Summed over the two truncations of an episode, PES estimates the gradient of the whole
    episode's meta-loss (Vicol et al. 2021); truncated ES misses how phi moved the state."""
    k, pairs, reps = 3, 250, 100
    task = _Quadratic()
    est = {}
    for estimator in ("pes", "es"):
        cfg = MetaConfig(task="quadratic", estimator=estimator, population=2 * pairs,
                         unroll=k, horizon=2 * k, sigma=0.01, dtype="float64")
        tr = MetaTrainer(LOptConfig(f="none", init_alpha=0.1), cfg, task=task)
        rows = []
        for _ in range(reps):
            tr._reset_inner()
            rows.append(tr._es_step()[1] + tr._es_step()[1])  # phi fixed: no Adam step
        est[estimator] = torch.stack(rows)[:, [0, 2]]  # log_alpha, log_gamma
    lopt = tr.lopt
    params = task.init([0], torch.float64)
    batches = [task.sample(1, None, torch.float64)] * (2 * k + 1)
    losses, _, _ = unroll(lopt, task, params, lopt.init_state(params), batches,
                          second_order=True)
    # meta-loss of the episode = sum over truncations of each truncation's mean loss
    true = torch.stack(torch.autograd.grad(2 * losses.mean(), [lopt.log_alpha,
                                                                lopt.log_gamma]))
    for name, rows in est.items():
        mean, sem = rows.mean(0), rows.std(0) / reps ** 0.5
        if name == "pes":
            assert ((mean - true).abs() < 4 * sem).all(), (mean, true, sem)
        else:
            assert ((mean - true).abs() > 10 * sem).all(), (mean, true, sem)


@pytest.mark.parametrize("estimator,objective", [
    ("tbptt", "mean"), ("es", "mean"), ("pes", "mean"), ("tbptt", "log"), ("pes", "log"),
    ("tbptt", "final"), ("es", "final"), ("pes", "final")])
def test_resume_mid_episode_gives_the_same_result(tmp_path, estimator, objective):
    """Stop after 1 meta-step (inside every inner run's episode) and resume."""
    full = _trainer(tmp_path / "a", estimator, 5, 5, objective=objective)
    full.run()
    first = _trainer(tmp_path / "b", estimator, 1, 1, objective=objective)
    first.run()
    assert first.step == 1 and (first.inner_steps % 6 != 0).any()  # mid-episode
    second = _trainer(tmp_path / "b", estimator, 5, 1, objective=objective)
    second.run()
    for (n, p), q in zip(full.lopt.named_parameters(), second.lopt.parameters(), strict=True):
        assert torch.equal(p, q), n
    assert [r["meta_loss"] for r in full.history] == [r["meta_loss"] for r in second.history]
    for k in full.params:
        assert torch.equal(full.params[k], second.params[k])
    assert torch.equal(full.inner_steps, second.inner_steps)
    assert torch.equal(full.full_episode, second.full_episode)
    assert full.adam_step == second.adam_step == (5 if objective != "final" else 4)
    if objective == "final":  # the first step had no signal (staggered first episodes)
        assert full.history[0]["meta_loss"] is None


@pytest.mark.parametrize("estimator", ["tbptt", "pes"])
def test_inner_runs_restart_staggered_with_their_own_seeds(estimator):
    cfg = MetaConfig(task="tiny-mlp", estimator=estimator, population=4, unroll=2,
                     horizon=4, meta_steps=6, dtype="float64", seed=1)
    task = TinyMLPTask()
    tr = MetaTrainer(LOptConfig(f="mlp", hidden=4), cfg, task=task)
    n = tr._n_runs
    assert tr.inner_steps.tolist() == [(j * 2 // n) * 2 for j in range(n)]
    used = set(range(1_000_003, 1_000_003 + n))
    for _ in range(6):
        before = tr.inner_steps.clone()
        inits = tr.n_inits
        if estimator == "pes":
            xi_before = tr.xi.clone()
        tr.meta_step()
        reset = [j for j in range(n) if tr.inner_steps[j] == 0]
        assert reset == [j for j in range(n) if before[j] + 2 >= 4]
        assert 0 < len(reset) < n  # some, never all at once
        fresh = task.init([1_000_003 + inits + i for i in range(len(reset))], torch.float64)
        for i, j in enumerate(reset):
            rows = [j, j + n] if estimator == "pes" else [j]
            for r in rows:
                for k in fresh:
                    assert torch.equal(tr.params[k][r], fresh[k][i])
            if estimator == "pes":
                assert (tr.xi[j] == 0).all()
        if estimator == "pes":
            kept = [j for j in range(n) if j not in reset]
            assert (tr.xi[kept] != xi_before[kept]).any()
        used |= {1_000_003 + inits + i for i in range(len(reset))}
    assert tr.n_inits == len(used)  # a new seed for every restart


def test_adam_bias_correction_ignores_skipped_steps():
    def trainer():
        cfg = MetaConfig(task="tiny-mlp", population=2, unroll=2, horizon=4, meta_steps=3,
                         dtype="float64")
        return MetaTrainer(LOptConfig(f="mlp", hidden=4), cfg, task=TinyMLPTask())

    g = torch.randn(sum(p.numel() for p in trainer().lopt.parameters()),
                    generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1e-3
    a, b = trainer(), trainer()
    calls = iter([(float("nan"), g), (1.0, g)])
    a._tbptt = lambda: next(calls)
    b._tbptt = lambda: (1.0, g)
    a.meta_step()
    a.meta_step()  # one skipped, one applied
    b.meta_step()  # one applied
    assert a.history[0]["skipped"] and a.adam_step == b.adam_step == 1
    for (n, p), q in zip(a.lopt.named_parameters(), b.lopt.parameters(), strict=True):
        assert torch.equal(p, q), n


def test_seeds_overlapping_held_out_seeds_are_refused():
    from gensight.lopt.evaluate import EVAL_SEED0, MAX_SEEDS, TUNE_SEED0
    from gensight.lopt.meta import HELD_OUT_SEEDS, meta_seed_range

    assert HELD_OUT_SEEDS[0] <= EVAL_SEED0 < TUNE_SEED0 + MAX_SEEDS <= HELD_OUT_SEEDS[1]
    MetaConfig(seed=9, meta_steps=1000).check()
    for seed in (10, 15, 20):  # seed * 1_000_003 + j would reach the held-out seeds
        with pytest.raises(LoptError, match="overlap the held-out evaluation seeds"):
            MetaConfig(seed=seed).check()
    with pytest.raises(LoptError, match="overlap"):  # long runs are caught too
        MetaConfig(seed=9, meta_steps=200_000).check()
    lo, hi = meta_seed_range(21, 200, 8)
    assert lo >= HELD_OUT_SEEDS[1]
    MetaConfig(seed=21).check()


def test_checkpoint_write_is_fsynced_through_a_unique_temp_file(tmp_path, monkeypatch):
    import os

    tr = _trainer(tmp_path, "tbptt", 1, 1)
    (tmp_path / (CHECKPOINT + ".tmp")).mkdir()  # a fixed temp name is taken
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    tr.run()
    assert len(synced) >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT, CHECKPOINT + ".tmp"]
    assert load_lopt(tmp_path, TinyMLPTask())[1]["step"] == 1


def test_load_lopt_names_a_depth_mismatch():
    import tempfile

    cfg = MetaConfig(task="tiny-mlp", population=2, unroll=2, horizon=4, meta_steps=1,
                     dtype="float64")
    with tempfile.TemporaryDirectory() as d:
        MetaTrainer(LOptConfig(f="unf", hidden=4), cfg, d, task=TinyMLPTask()).run()
        with pytest.raises(LoptError, match="differs in depth or layer kinds") as exc:
            load_lopt(d, TinyMLPTask(widths=(6, 7, 5, 3)))
        assert "symmetry 'np' to transfer" not in str(exc.value)


def test_last_unroll_pass_computes_only_the_loss(monkeypatch):
    import gensight.lopt.meta as meta

    task = TinyMLPTask()
    torch.manual_seed(0)
    lopt = LOpt(LOptConfig(f="mlp", hidden=4), task.template()).double()
    params = task.init([0, 1], torch.float64)
    gen = torch.Generator().manual_seed(5)
    batches = [task.sample(2, gen, torch.float64) for _ in range(4)]
    calls = []
    real = meta.inner_grads
    monkeypatch.setattr(meta, "inner_grads", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    for track in (True, False):
        calls.clear()
        losses, _, _ = unroll(lopt, task, params, lopt.init_state(params), batches, track=track)
        assert len(calls) == 3  # 3 inner steps, no gradient after the last one
        # the same losses as evaluating every step explicitly
        p, s, ref = params, lopt.init_state(params), []
        for b_prev, b in zip(batches[:-1], batches[1:], strict=True):
            q = {k: v.detach().requires_grad_(True) for k, v in p.items()}
            _, g = real(task, q, b_prev, create_graph=False)
            with torch.no_grad():
                p, s = lopt.update({k: v.detach() for k, v in q.items()}, g, s)
                ref.append(task.loss(p, b))
        assert torch.equal(losses.detach(), torch.stack(ref))


def _expected_tbptt(tr, objective):
    """The meta-loss and first-order meta-gradient of ``tr``'s next TBPTT step, computed
    directly from a copy of its state and random generator."""
    state = tr.gen.get_state()
    batches = tr._batches(tr.cfg.population)
    tr.gen.set_state(state)
    losses, _, _ = unroll(tr.lopt, tr.task, tr.params, tr.state, batches)
    if objective == "log":
        meta = losses.log().mean()
    else:
        ends = (tr.inner_steps + tr.cfg.unroll >= tr.cfg.horizon) & tr.full_episode
        meta = losses[-1][ends].mean()
    grads = torch.autograd.grad(meta, list(tr.lopt.parameters()), allow_unused=True)
    return meta.detach(), torch.cat([torch.zeros_like(p).reshape(-1) if g is None
                                     else g.reshape(-1)
                                     for g, p in zip(grads, tr.lopt.parameters(),
                                                     strict=True)])


@pytest.mark.parametrize("objective", ["log", "final"])
def test_tbptt_objectives_match_a_direct_unroll(objective):
    cfg = MetaConfig(task="tiny-mlp", population=4, unroll=3, horizon=6, meta_steps=3,
                     dtype="float64", seed=4, objective=objective)
    tr = MetaTrainer(LOptConfig(f="mlp", hidden=4), cfg, task=TinyMLPTask())
    assert tr.inner_steps.tolist() == [0, 0, 3, 3]
    if objective == "final":
        # runs 2 and 3 end in the first unroll, but after 3 steps, not a whole horizon
        assert tr.meta_step()["meta_loss"] is None
        assert tr.inner_steps.tolist() == [3, 3, 0, 0]  # runs 0 and 1 end next, at step 6
    want_meta, want_grad = _expected_tbptt(tr, objective)
    meta, grad = tr._tbptt()
    assert meta == pytest.approx(float(want_meta), rel=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)
    assert grad.abs().sum() > 0
    if objective == "final":  # only the two ending runs: not the mean over every step
        mean_cfg = MetaTrainer(LOptConfig(f="mlp", hidden=4),
                               MetaConfig(**{**cfg.__dict__, "objective": "mean"}),
                               task=TinyMLPTask())
        assert mean_cfg._tbptt()[0] != pytest.approx(meta)


def test_final_objective_skips_meta_steps_where_no_run_ends():
    """Population 2, unroll 3, horizon 12: counters start at 0 and 6; nobody ends in the first
    unroll (no phi update, inner runs still advance), run 1 ends in the second."""
    cfg = MetaConfig(task="tiny-mlp", population=2, unroll=3, horizon=12, meta_steps=2,
                     dtype="float64", seed=4, objective="final")
    tr = MetaTrainer(LOptConfig(f="mlp", hidden=4), cfg, task=TinyMLPTask())
    phi0 = [p.detach().clone() for p in tr.lopt.parameters()]
    w0 = {k: v.clone() for k, v in tr.params.items()}
    row = tr.meta_step()
    assert row["meta_loss"] is None and row["skipped"] and tr.adam_step == 0
    assert all(torch.equal(a, b) for a, b in zip(phi0, tr.lopt.parameters(), strict=True))
    assert not torch.equal(w0["0.weight"], tr.params["0.weight"])
    assert tr.inner_steps.tolist() == [3, 9]
    row = tr.meta_step()  # run 1 ends its staggered first episode (6 steps): no signal
    assert row["meta_loss"] is None and tr.adam_step == 0
    assert tr.inner_steps.tolist() == [6, 0] and tr.full_episode.tolist() == [True, True]
    tr.meta_step(), tr.meta_step()  # 9, 3 then 12 -> run 0 ends a whole horizon
    assert tr.history[-1]["meta_loss"] is not None and tr.adam_step == 1
    assert tr.inner_steps.tolist() == [0, 6]


def test_es_and_pes_rows_map_to_their_pairs():
    """ES/PES rows ``j`` and ``j + pairs`` are pair ``j``: only the rows of pairs that end a
    whole horizon carry the final loss."""
    for estimator in ("es", "pes"):
        cfg = MetaConfig(task="tiny-mlp", estimator=estimator, population=8, unroll=3,
                         horizon=6, dtype="float64", objective="final")
        tr = MetaTrainer(LOptConfig(f="none"), cfg, task=TinyMLPTask())
        tr.inner_steps = torch.tensor([3, 0, 3, 3])
        tr.full_episode = torch.tensor([True, True, False, True])
        losses = torch.arange(1.0, 17.0, dtype=torch.float64).reshape(2, 8)
        per, live = tr._objective(losses)
        assert live.tolist() == [True, False, False, True] * 2
        assert per.tolist() == [9.0, 0.0, 0.0, 12.0, 13.0, 0.0, 0.0, 16.0]

def test_pes_final_objective_is_unbiased_for_the_loss_at_the_horizon():
    """Objective 'final' with PES: summed over an episode's two truncations, the estimate's
    mean is the gradient of the loss after the last step (the UNF paper's objective); the
    first truncation has no signal but still accumulates the perturbations."""
    k, pairs, reps = 3, 250, 100
    task = _Quadratic()
    cfg = MetaConfig(task="quadratic", estimator="pes", population=2 * pairs, unroll=k,
                     horizon=2 * k, sigma=0.01, dtype="float64", objective="final")
    tr = MetaTrainer(LOptConfig(f="none", init_alpha=0.1), cfg, task=task)
    rows = []
    for _ in range(reps):
        tr._reset_inner()
        tr.inner_steps = torch.zeros_like(tr.inner_steps)
        tr.full_episode = torch.ones_like(tr.full_episode)
        assert tr._es_step() == (None, None)
        tr.inner_steps[::2] += k  # half the pairs end here; the mean is over those
        rows.append(tr._es_step()[1])
    rows = torch.stack(rows)[:, [0, 2]]  # log_alpha, log_gamma
    lopt = tr.lopt
    params = task.init([0], torch.float64)
    batches = [task.sample(1, None, torch.float64)] * (2 * k + 1)
    losses, _, _ = unroll(lopt, task, params, lopt.init_state(params), batches,
                          second_order=True)
    true = torch.stack(torch.autograd.grad(losses[-1].sum(), [lopt.log_alpha,
                                                              lopt.log_gamma]))
    mean, sem = rows.mean(0), rows.std(0) / reps ** 0.5
    assert ((mean - true).abs() < 4 * sem).all(), (mean, true, sem)
    assert (true.abs() > 4 * sem).all()  # the test can tell a wrong mean from the right one


def test_checkpoint_without_objective_resumes_as_mean(tmp_path):
    """Checkpoints written before ``objective`` existed were meta-trained on the mean."""
    import json

    from safetensors.torch import load_file, save_file

    from gensight.lopt.meta import read_checkpoint

    _trainer(tmp_path, "tbptt", 1, 1).run()
    path = tmp_path / CHECKPOINT
    tensors, meta = read_checkpoint(path)
    cfg = json.loads(meta["meta_config"])
    del cfg["objective"]
    save_file(load_file(str(path)), str(path), metadata={**meta, "meta_config": json.dumps(cfg)})
    tr = _trainer(tmp_path, "tbptt", 2, 1)
    tr.run()
    assert tr.step == 2
    log = MetaTrainer(tr.lcfg, MetaConfig(**{**tr.cfg.__dict__, "objective": "log"}), tmp_path,
                      task=TinyMLPTask())
    with pytest.raises(LoptError, match="written with objective='mean', not 'log'"):
        log.run()
