"""Learned optimizer: reduction to SGD with momentum, equivariance, config errors."""

import copy
import math

import pytest
import torch
from torch import nn

from gensight.lopt import LearnedOptimizer, LOpt, LOptConfig, LoptError, make_task
from gensight.lopt.evaluate import train_members
from gensight.lopt.optimizer import _rms_normalize
from gensight.nf import perm_spec
from gensight.nf.unf import permute, random_permutation

from .helpers import TinyMLPTask


def _sgd_lopt(template, lr, momentum=0.9):
    cfg = LOptConfig(f="none", momentum=momentum, decays=(0.5, momentum, 0.99))
    lopt = LOpt(cfg, template).double()
    with torch.no_grad():
        lopt.log_alpha.fill_(math.log(lr))
        lopt.log_gamma.fill_(0.0)
    return lopt


def test_f_zero_is_sgd_momentum_golden_trajectory():
    """f = 0, gamma = 1, alpha = lr: the torch.optim wrapper follows torch.optim.SGD."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    ref = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    ref.load_state_dict(model.state_dict())
    w0 = model[0].weight.detach().clone()
    lr = 0.05
    ours = LearnedOptimizer(model.named_parameters(), _sgd_lopt(model, lr))
    theirs = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        x = torch.randn(16, 6, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (16,), generator=g)
        for m, opt in ((model, ours), (ref, theirs)):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-13), k
    assert (model[0].weight - w0).abs().max() > 1e-3  # the trajectory is not trivial


def test_f_zero_batched_update_is_sgd_per_member():
    task = TinyMLPTask()
    lopt = _sgd_lopt(task.template(), 0.1, momentum=0.5)
    params = task.init([0, 1, 2], torch.float64)
    state = lopt.init_state(params)
    bufs = {k: torch.zeros_like(v) for k, v in params.items()}
    ref = {k: v.clone() for k, v in params.items()}
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        b = task.sample(3, gen, torch.float64)
        p = {k: v.requires_grad_(True) for k, v in params.items()}
        grads = torch.autograd.grad(task.loss(p, b).sum(), list(p.values()))
        with torch.no_grad():
            params, state = lopt.update({k: v.detach() for k, v in p.items()},
                                        dict(zip(p, grads, strict=True)), state)
        for k, g in zip(ref, grads, strict=True):
            bufs[k] = 0.5 * bufs[k] + g
            ref[k] = ref[k] - 0.1 * bufs[k]
    for k in ref:
        assert torch.allclose(params[k], ref[k], atol=1e-13)


def _hidden_perm(template, n, seed):
    """Random permutations (one per member) of the hidden labels of ``template``."""
    hnp = perm_spec(template, "hnp")  # hidden neurons are the labelled axes under HNP
    shapes = {k: tuple(v.shape) for k, v in template.state_dict().items()}
    perms = random_permutation(hnp, shapes, torch.Generator().manual_seed(seed), batch_size=n)
    return hnp, perms


def _perm(tensors, spec, perms):
    out = permute({k: v.unsqueeze(1) for k, v in tensors.items()}, spec, perms)
    return {k: v.squeeze(1) for k, v in out.items()}


@pytest.mark.parametrize("task_name,kind", [
    ("tiny", "nfn"), ("tiny", "unf"), ("tiny", "mlp"), ("tiny", "deepsets"),
    ("digits-cnn", "unf"), ("digits-cnn", "nfn"), ("python-rnn", "unf"),
    ("tiny", "nfn-ds"), ("tiny", "unf-ds"), ("digits-cnn", "unf-ds"), ("python-rnn", "unf-ds"),
    ("tiny", "nfn-ds+paper"), ("tiny", "deepsets+paper"), ("python-rnn", "unf-ds+paper"),
    ("digits-cnn", "unf-ds+paper"),
])
def test_update_is_equivariant_to_hidden_permutations(task_name, kind):
    """``-ds``: the UNF paper's App. C.2 f (Deep Sets trunk, one NF/UNF layer at the end);
    ``+paper``: its 19 input channels (six momenta and the step encoding)."""
    task = TinyMLPTask(widths=(6, 7, 5, 3)) if task_name == "tiny" else make_task(task_name)
    template = task.template()
    kind, _, paper = kind.partition("+")
    kind, _, trunk = kind.partition("-")
    hidden = 6 if kind in ("nfn", "unf") and task_name != "tiny" else 16
    torch.manual_seed(0)  # f's initialisation draws from the global RNG
    cfg = (LOptConfig.paper_features if paper else LOptConfig)(
        f=kind, hidden=hidden, layers=4 if trunk else 3, backbone="deepsets" if trunk else "own")
    lopt = LOpt(cfg, template).double()
    with torch.no_grad():
        lopt.log_beta.fill_(0.0)  # make f dominate the update
    g = torch.Generator().manual_seed(7)
    n = 2
    params = {k: torch.randn(n, *s, generator=g, dtype=torch.float64)
              for k, s in task.shapes.items()}
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    state = {k: torch.randn(n, *v.shape[1:], generator=g, dtype=torch.float64)
             for k, v in lopt.init_state(params).items()}
    state = {k: v.abs() if k.startswith("v:") else v for k, v in state.items()}
    state.update({k: torch.tensor([3.0, 17.0], dtype=torch.float64)
                  for k in state if k.startswith("step:")})
    assert any(k.startswith("step:") for k in state) == bool(paper)
    spec, perms = _hidden_perm(template, n, seed=3)
    assert any(p.shape[1] > 1 for p in perms.values())
    new, _ = lopt.update(params, grads, state)
    pstate = {}
    for k, v in state.items():
        key = k.split(":", 1)[1]
        pstate[k] = v if k.startswith("step:") else _perm({key: v}, spec, perms)[key]
    new_p, _ = lopt.update(_perm(params, spec, perms), _perm(grads, spec, perms), pstate)
    expect = _perm(new, spec, perms)
    for k in new:
        assert torch.allclose(new_p[k], expect[k], atol=1e-10), k
    # negative control: the permutation really moves entries of the update
    assert any(not torch.allclose(new_p[k], new[k], atol=1e-6) for k in new)
    # and the learned term is not trivial: f contributes to the update
    f_out = lopt.direction(lopt.features(params, grads, lopt.init_state(params)))
    assert max(float(v.detach().abs().max()) for v in f_out.values()) > 1e-6


def test_nfn_and_unf_have_the_same_number_of_parameters_on_mlps():
    """UNF on an MLP's NP spec spans NPLinear's function class (arXiv 2402.05232, Sec. 4:
    "UNF and NFN optimizers are equivalent in the MLP task")."""
    t = TinyMLPTask(widths=(6, 7, 5, 3)).template()
    n = {k: sum(p.numel() for p in LOpt(LOptConfig(f=k), t).f.parameters())
         for k in ("nfn", "unf")}
    assert n["nfn"] == n["unf"]


def test_deepsets_backbone_is_a_deepsets_trunk_then_one_equivariant_layer():
    """backbone='deepsets' (App. C.2 of arXiv 2402.05232): the trunk's output, fed to a lone
    UNF layer, is the whole f; the trunk alone is a Deep Sets f without its last layer; the
    default config dict is unchanged, so older checkpoints still match."""
    from gensight.lopt.nets import DeepSetsF, DeepSetsThen

    task = TinyMLPTask(widths=(6, 7, 5, 3))
    t = task.template()
    torch.manual_seed(0)
    lopt = LOpt(LOptConfig(f="unf", layers=4, hidden=8, backbone="deepsets"), t).double()
    f = lopt.f
    assert isinstance(f, DeepSetsThen) and len(f.trunk.point) == 3 and len(f.head.lins) == 1
    g = torch.Generator().manual_seed(1)
    feats = {k: torch.randn(2, lopt.config.channels, *s, generator=g, dtype=torch.float64)
             for k, s in task.shapes.items()}
    hidden = f.trunk(feats)
    assert all(v.shape == (2, 8, *task.shapes[k]) for k, v in hidden.items())
    assert min(float(v.detach().min()) for v in hidden.values()) >= 0  # ReLU after last DS
    out = f(feats)
    ref = {k: v[:, 0] for k, v in f.head.lins[0](hidden).items()}
    for k in out:
        assert torch.allclose(out[k], ref[k], atol=1e-12)
    # the trunk is the Deep Sets stack: the same weights in a DeepSetsF give its features
    ds = DeepSetsF(lopt.config.channels, 8, 4).double()
    ds.point[:3].load_state_dict(f.trunk.point.state_dict())
    ds.pool[:3].load_state_dict(f.trunk.pool.state_dict())
    h = {k: v.flatten(2).transpose(1, 2) for k, v in feats.items()}
    for i in range(3):
        h = {k: torch.relu(ds.point[i](x) + ds.pool[i](x.mean(1, keepdim=True)))
             for k, x in h.items()}
    for k in h:
        assert torch.allclose(h[k].transpose(1, 2).reshape(hidden[k].shape), hidden[k])
    assert "backbone" not in LOptConfig(f="unf").to_dict()
    assert LOptConfig.from_dict(lopt.config.to_dict()) == lopt.config


def test_nfn_rejects_recurrent_optimizee():
    with pytest.raises(LoptError, match="f='nfn' needs an MLP/CNN"):
        LOpt(LOptConfig(f="nfn"), make_task("python-rnn").template())


@pytest.mark.parametrize("kwargs,match", [
    ({"f": "lstm"}, "f must be one of"),
    ({"momentum": 0.7}, "momentum 0.7 must be one of decays"),
    ({"init_alpha": -1.0}, "init_alpha must be a positive number"),
    ({"decays": (0.5, 0.9, 1.5)}, "decays and beta2 must lie in"),
    ({"f": "unf", "backbone": "gnn"}, "backbone must be one of own, deepsets"),
    ({"f": "mlp", "backbone": "deepsets"}, "for f='nfn' or 'unf'"),
    ({"f": "unf", "backbone": "deepsets", "layers": 1}, "layers >= 2; got f='unf', layers=1"),
    ({"time_features": -1}, "time_features must be a non-negative integer"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(LoptError, match=match):
        LOptConfig(**kwargs).check()


def _train(model, opt, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _functional_steps(task, lopt, start, steps, seed=0):
    """``steps`` updates of :meth:`LOpt.update` (``P = 1``) from the state dict ``start``, on
    the minibatches :func:`_train` draws with ``seed``; returns the stacked parameters."""
    params = {k: v.unsqueeze(0) for k, v in start.items()}
    state = lopt.init_state(params)
    g = torch.Generator().manual_seed(seed)
    ref = task.template().double()
    for _ in range(steps):
        x = torch.randn(16, 6, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (16,), generator=g)
        ref.load_state_dict({k: v[0] for k, v in params.items()})
        ref.zero_grad()
        nn.functional.cross_entropy(ref(x), y).backward()
        grads = {k: p.grad.unsqueeze(0) for k, p in ref.named_parameters()}
        with torch.no_grad():
            params, state = lopt.update(params, grads, state)
    return params


def test_torch_optimizer_wrapper_matches_functional_update_and_restores_state():
    task = TinyMLPTask()
    torch.manual_seed(0)
    lopt = LOpt(LOptConfig(f="unf", hidden=8), task.template()).double()
    with torch.no_grad():
        lopt.log_beta.fill_(-1.0)
    model = task.template().double()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model, LearnedOptimizer(model.named_parameters(), lopt), 4)
    params = _functional_steps(task, lopt, start, 4)  # the same 4 steps, batched form
    for k, v in model.state_dict().items():
        assert torch.allclose(v, params[k][0], atol=1e-12), k
    # state_dict round trip: 2 steps + save/load + 2 steps == 4 steps
    a = task.template().double()
    a.load_state_dict(start)
    opt_a = LearnedOptimizer(a.named_parameters(), lopt)
    _train(a, opt_a, 2)
    saved = opt_a.state_dict()
    assert set(saved["state"][0]) == {"m0", "m1", "m2", "v"}
    b = task.template().double()
    b.load_state_dict(a.state_dict())
    opt_b = LearnedOptimizer(b.named_parameters(), lopt)
    opt_b.load_state_dict(saved)
    _train(b, opt_b, 2, seed=1)
    _train(a, opt_a, 2, seed=1)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_f_zero_is_sgd_momentum_with_a_frozen_layer():
    """A parameter without gradient (frozen mid-training, p.grad None) is skipped like
    torch.optim.SGD skips it: not moved, its momentum kept as it was."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    ref = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    ref.load_state_dict(model.state_dict())
    lr = 0.05
    ours = LearnedOptimizer(model.named_parameters(), _sgd_lopt(model, lr))
    theirs = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for it in range(10):
        if it == 4:  # freeze the first layer after it has built up momentum
            for m in (model, ref):
                m[0].requires_grad_(False)
        x = torch.randn(16, 6, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (16,), generator=g)
        for m, opt in ((model, ours), (ref, theirs)):
            opt.zero_grad()  # set_to_none: the frozen layer's grads become None
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
        if it == 4:
            frozen = model[0].weight.detach().clone()
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-13), k
    assert torch.equal(model[0].weight, frozen)


@pytest.mark.parametrize("kind", ["unf", "nfn", "deepsets"])
def test_learned_f_leaves_parameters_without_gradient_unchanged(kind):
    task = TinyMLPTask()
    torch.manual_seed(0)
    lopt = LOpt(LOptConfig(f=kind, hidden=8), task.template()).double()
    with torch.no_grad():
        lopt.log_beta.fill_(0.0)
    model = task.template().double()
    frozen = model[0].weight
    frozen.requires_grad_(False)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt = LearnedOptimizer(model.named_parameters(), lopt)
    _train(model, opt, 3)
    moved = [k for k, v in model.state_dict().items() if not torch.equal(v, start[k])]
    assert moved == [k for k in start if k != "0.weight"]  # everything else trains
    assert frozen not in opt.state and len(opt.state) == len(start) - 1


def test_float64_optimizer_drives_float32_and_float32_drives_float64():
    task = TinyMLPTask(dtype=torch.float32)
    torch.manual_seed(0)
    lopt = LOpt(LOptConfig(f="unf", hidden=8), task.template()).double()
    # meta-trained in float64, evaluated in float32 (what gensight lopt eval does)
    with torch.no_grad():
        c32 = train_members(task, [0, 1], 5, lopt, dtype=torch.float32)
        c64 = train_members(task, [0, 1], 5, lopt, dtype=torch.float64)
    assert c32.losses.isfinite().all()
    assert torch.allclose(c32.losses, c64.losses.float(), atol=1e-4)
    # a float32 optimizer around a float64 model
    model = task.template().double()
    _train(model, LearnedOptimizer(model.named_parameters(), lopt.float()), 3)
    assert all(v.dtype == torch.float64 and v.isfinite().all()
               for v in model.state_dict().values())


def test_zero_dim_parameters_are_normalized_per_optimizee():
    x = torch.tensor([1e-3, 1e3], dtype=torch.float64)  # one 0-dim parameter, P = 2
    assert torch.allclose(_rms_normalize(x, 1e-8), torch.ones(2, dtype=torch.float64))

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 3)
            self.scale = nn.Parameter(torch.tensor(1.5))

        def forward(self, x):
            return self.scale * self.lin(x)

    for kind in ("deepsets", "mlp"):
        torch.manual_seed(0)
        model = Scaled().double()
        lopt = LOpt(LOptConfig(f=kind, hidden=8), model).double()
        opt = LearnedOptimizer(model.named_parameters(), lopt)
        _train(model, opt, 3)
        assert model.scale.dim() == 0 and model.scale.item() != 1.5
        assert opt.state[model.scale]["m0"].dim() == 0


def test_one_param_group_and_state_dict_checks_the_learned_optimizer():
    task = TinyMLPTask()
    torch.manual_seed(0)
    lopt = LOpt(LOptConfig(f="mlp", hidden=8), task.template()).double()
    model = task.template().double()
    opt = LearnedOptimizer(model.named_parameters(), lopt)
    with pytest.raises(LoptError, match="single parameter group"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)]})
    _train(model, opt, 2)
    saved = opt.state_dict()
    assert "config" in saved["lopt"] and len(saved["lopt"]["phi_sha256"]) == 64
    # the same learned optimizer (a copy) loads fine
    LearnedOptimizer(model.named_parameters(), copy.deepcopy(lopt)).load_state_dict(saved)
    other = LOpt(LOptConfig(f="mlp", hidden=8), task.template()).double()  # other phi
    with pytest.raises(LoptError, match="different learned-optimizer meta-parameters"):
        LearnedOptimizer(model.named_parameters(), other).load_state_dict(saved)
    wider = LOpt(LOptConfig(f="mlp", hidden=9), task.template()).double()
    with pytest.raises(LoptError, match="different learned-optimizer config"):
        LearnedOptimizer(model.named_parameters(), wider).load_state_dict(saved)


def test_paper_features_are_19_channels_with_a_step_encoding():
    """App. C.2 of the UNF paper: weights, gradient, six momenta, 11 sinusoids of the step."""
    cfg = LOptConfig.paper_features(f="deepsets")
    assert cfg.channels == 19 and cfg.decays == (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
    task = TinyMLPTask()
    lopt = LOpt(cfg, task.template()).double()
    enc = lopt.time_encoding(torch.tensor([0.0, 1.0, 250.0], dtype=torch.float64))
    assert enc.shape == (3, 11)
    torch.testing.assert_close(enc[0], torch.tensor([0.0, 1.0] * 5 + [0.0],
                                                    dtype=torch.float64))
    w1 = 10000.0 ** (-2 / 11)
    expect = [math.sin(250 * w1), math.cos(250 * w1)]
    torch.testing.assert_close(enc[2, 2:4], torch.tensor(expect, dtype=torch.float64))
    torch.testing.assert_close(enc[1, :2], torch.tensor([math.sin(1), math.cos(1)],
                                                        dtype=torch.float64))
    # the counter advances once per update, per optimizee, and feeds the last 11 channels
    params = task.init([0, 1], torch.float64)
    state = lopt.init_state(params)
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    for _ in range(3):
        params, state = lopt.update(params, grads, state)
    assert state["step:0.weight"].tolist() == [3.0, 3.0]
    feats = lopt.features(params, grads, state)["0.weight"]
    torch.testing.assert_close(feats[:, 8:, 2, 1], lopt.time_encoding(state["step:0.weight"]))
    # no second moments with the paper's features
    assert not any(k.startswith("v:") for k in state)
    # older configs (no time features, with moments) keep their dict, so checkpoints match
    assert LOptConfig().to_dict() == {
        "f": "unf", "hidden": 32, "layers": 3, "symmetry": "np", "decays": [0.5, 0.9, 0.99],
        "momentum": 0.9, "beta2": 0.999, "eps": 1e-8, "init_alpha": 0.03, "init_beta": 0.1,
        "init_gamma": 1.0}
    assert LOptConfig.from_dict(cfg.to_dict()) == cfg


def test_step_counter_lives_on_the_parameters_device():
    """The counter and its encoding follow the parameters' device (``meta`` stands in for
    an accelerator here)."""
    task = TinyMLPTask()
    lopt = LOpt(LOptConfig.paper_features(f="deepsets", hidden=4), task.template()).to("meta")
    params = {k: v.to("meta") for k, v in task.init([0, 1]).items()}
    state = lopt.init_state(params)
    assert state["step:0.weight"].device.type == "meta"
    new, state = lopt.update(params, {k: torch.ones_like(v) for k, v in params.items()}, state)
    assert all(v.device.type == "meta" for v in (*new.values(), *state.values()))


def test_torch_optimizer_wrapper_keeps_the_step_counter():
    task = TinyMLPTask()
    torch.manual_seed(0)
    lopt = LOpt(LOptConfig.paper_features(f="unf", hidden=8), task.template()).double()
    with torch.no_grad():
        lopt.log_beta.fill_(-1.0)
    model = task.template().double()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt = LearnedOptimizer(model.named_parameters(), lopt)
    _train(model, opt, 3)
    assert {float(st["step"]) for st in opt.state.values()} == {3.0}
    params = _functional_steps(task, lopt, start, 3)
    for k, v in model.state_dict().items():
        assert torch.allclose(v, params[k][0], atol=1e-12), k


def test_step_counter_keeps_counting_for_bfloat16_models_and_across_state_dicts():
    """bfloat16 counts exactly only to 256: the counter is float64, and torch keeps a
    ``"step"`` entry's dtype when an optimizer state is loaded."""
    task = TinyMLPTask()
    torch.manual_seed(0)
    lopt = LOpt(LOptConfig.paper_features(f="mlp", hidden=4), task.template()).bfloat16()
    model = task.template().bfloat16()
    opt = LearnedOptimizer(model.named_parameters(), lopt)
    x, y = torch.randn(8, 6).bfloat16(), torch.randint(0, 3, (8,))
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x).float(), y).backward()
        opt.step()
    steps = {(float(st["step"]), st["step"].dtype) for st in opt.state.values()}
    assert steps == {(300.0, torch.float64)}
    other = LearnedOptimizer(model.named_parameters(), lopt)
    other.load_state_dict(opt.state_dict())
    assert {st["step"].dtype for st in other.state.values()} == {torch.float64}
