"""SIREN populations: batched fit == torch.optim.Adam per network, init, rendering, symmetries."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gensight.weightspace import WeightBatch, permute, permute_module, random_permutation
from gensight.zoo.siren import (
    Sine,
    SirenPopulation,
    coordinate_grid,
    fit_siren_reference,
    fit_sirens,
    init_siren_module,
    psnr,
    render,
    siren_init,
    siren_module,
    siren_space,
)


def digits(n: int, start: int = 0) -> torch.Tensor:
    """sklearn digits 8x8 scaled from [0, 16] to [-1, 1]: (n, 8, 8)."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images[start:start + n], dtype=torch.float32)
    return images / 8 - 1


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def assert_member_equals_module(pop: SirenPopulation, k: int, model: nn.Module,
                                atol: float) -> None:
    for layer, lin in enumerate(linears(model)):
        torch.testing.assert_close(pop.weights[layer][k], lin.weight.detach(), atol=atol, rtol=0)
        torch.testing.assert_close(pop.biases[layer][k], lin.bias.detach(), atol=atol, rtol=0)


def psnr_trajectory(image: torch.Tensor, seed: int, steps: int, lr: float = 1e-3) -> list[float]:
    """PSNR of the weights before each torch.optim.Adam update (index t: after t updates)."""
    model = init_siren_module(seed)
    coords, target = coordinate_grid(image.shape[-1]), image.reshape(-1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    out = []
    for _ in range(steps + 1):
        loss = F.mse_loss(model(coords), target)
        out.append(psnr(loss.item()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return out


# --- 1. population fit == torch.optim.Adam per network ----------------------------------------
def test_population_fit_matches_torch_adam_per_member():
    images, seeds = digits(3), [0, 1, 2]
    fit = fit_sirens(images, seeds, steps=10, lr=1e-3)
    assert fit.steps_used.tolist() == [10, 10, 10]
    init = siren_init(seeds)
    for k, (image, seed) in enumerate(zip(images, seeds, strict=True)):
        ref = fit_siren_reference(image, seed, steps=10, lr=1e-3)
        assert ref.steps_used == 10
        assert_member_equals_module(fit.population, k, ref, atol=2e-6)
        # training moved the weights far more than the tolerance
        assert (fit.population.weights[1][k] - init.weights[1][k]).abs().max() > 5e-3
        mse = F.mse_loss(ref(coordinate_grid(8)), image.reshape(-1, 1)).item()
        assert fit.mse[k].item() == pytest.approx(mse, rel=1e-5)
        assert fit.psnr[k].item() == pytest.approx(psnr(mse), abs=1e-4)


def test_population_fit_matches_reference_with_early_stop():
    # PSNR before each update (from the trajectories): member 0 goes 9.95 -> 10.19 dB at
    # 5 updates; members 1 and 2 stay below 8.6 dB for 10 updates. Target 10 dB: member 0
    # stops after 5 updates, the others run all 10.
    images, seeds = digits(3), [0, 1, 2]
    fit = fit_sirens(images, seeds, steps=10, lr=1e-3, target_psnr=10.0)
    refs = [fit_siren_reference(im, s, steps=10, lr=1e-3, target_psnr=10.0)
            for im, s in zip(images, seeds, strict=True)]
    assert fit.steps_used.tolist() == [r.steps_used for r in refs] == [5, 10, 10]
    for k, ref in enumerate(refs):
        assert_member_equals_module(fit.population, k, ref, atol=2e-6)
    assert fit.psnr[0] >= 10.0 > fit.psnr[1]


@pytest.mark.parametrize("grid_min_side", [None, 1])
def test_population_fit_matches_reference_rgb_three_hidden_layers(grid_min_side, monkeypatch):
    # grid_min_side 1: the first layer by angle addition on the pixel grid (in fit_sirens)
    from gensight.zoo.siren import _FlatSirens

    calls = []
    if grid_min_side is not None:
        monkeypatch.setattr(_FlatSirens, "GRID_MIN_SIDE", grid_min_side)
        real = _FlatSirens._first_layer_on_grid
        monkeypatch.setattr(_FlatSirens, "_first_layer_on_grid",
                            lambda self, *a: calls.append(1) or real(self, *a))
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 6, 6, generator=g) * 2 - 1  # channel order matters here
    kw = {"hidden": (8, 6, 5), "omega_0": 10.0, "steps": 6, "lr": 2e-3}
    fit = fit_sirens(images, [4, 5], **kw)
    for k, (image, seed) in enumerate(zip(images, [4, 5], strict=True)):
        assert_member_equals_module(fit.population, k, fit_siren_reference(image, seed, **kw),
                                    atol=2e-6)
    assert render(fit.population, 6).shape == (2, 3, 6, 6)
    assert len(calls) == (0 if grid_min_side is None else kw["steps"])


# --- 2. initialization -------------------------------------------------------------------------
def test_siren_init_equals_per_member_module_init_and_ranges():
    seeds = [0, 7, 123456]
    for hidden, omega in [((32, 32), 30.0), ((16,), 10.0)]:
        pop = siren_init(seeds, hidden, omega)
        for k, seed in enumerate(seeds):
            assert_member_equals_module(pop, k, init_siren_module(seed, hidden, omega), atol=0)
        assert not torch.equal(pop.weights[0][0], pop.weights[0][1])  # seeds differ
        for layer, (w, b) in enumerate(zip(pop.weights, pop.biases, strict=True)):
            n_in = w.shape[2]
            bound = 1 / n_in if layer == 0 else math.sqrt(6 / n_in) / omega
            assert w.abs().max() <= bound
            assert w.abs().max() > 0.8 * bound  # the bound is the bound, not a smaller one
            assert b.abs().max() <= 1 / math.sqrt(n_in)
            if b.numel() >= 32:
                assert b.abs().max() > 0.8 / math.sqrt(n_in)
    # same seed, same draw, whatever the other members
    assert torch.equal(siren_init([5, 9]).weights[1][1], siren_init([9]).weights[1][0])


def test_siren_module_is_a_weight_space_module():
    model = init_siren_module(0)
    assert [type(m) for m in model] == [nn.Linear, Sine, nn.Linear, Sine, nn.Linear]
    assert siren_space().neurons == (2, 32, 32, 1)
    assert siren_space().num_params == 1185  # the NFN SIRENs' count
    batch = WeightBatch.from_modules([model, init_siren_module(1)])
    pop = SirenPopulation.from_weight_batch(batch)
    assert batch.allclose(pop.to_weight_batch(), atol=0, rtol=0)
    (back,) = pop.to_weight_batch()[[0]].to_modules(siren_module())
    coords = coordinate_grid(5)
    torch.testing.assert_close(back(coords), model(coords))
    # the module computes sin(omega_0 (W x + b)) per hidden layer, a linear last layer
    x = coords
    for i, lin in enumerate(linears(model)):
        x = lin(x) if i == 2 else torch.sin(30.0 * lin(x))
    torch.testing.assert_close(model(coords), x)
    torch.testing.assert_close(pop.forward(coords)[0], x)


# --- 3. rendering ----------------------------------------------------------------------------
def test_coordinate_grid_order_and_range():
    grid = coordinate_grid(3)
    assert grid.tolist() == [[-1, -1], [-1, 0], [-1, 1], [0, -1], [0, 0], [0, 1],
                             [1, -1], [1, 0], [1, 1]]
    big = coordinate_grid(28)
    assert big.shape == (784, 2)
    assert big.min() == -1 and big.max() == 1
    lin = torch.linspace(-1, 1, 28)
    rows, cols = torch.meshgrid(lin, lin, indexing="ij")
    assert torch.equal(big, torch.stack([rows.flatten(), cols.flatten()], 1))


def test_golden_constant_render():
    omega = 30.0
    # hidden (2, 2): W1 = 0 and b1 = pi / (2 omega) make every first-layer sine 1
    w1, b1 = torch.zeros(2, 2), torch.full((2,), math.pi / (2 * omega))
    w2, b2 = torch.tensor([[0.01, -0.02], [0.03, 0.005]]), torch.tensor([0.002, -0.01])
    w3, b3 = torch.tensor([[0.5, -0.25]]), torch.tensor([0.1])
    s1 = math.sin(omega * (0.01 - 0.02 + 0.002))
    s2 = math.sin(omega * (0.03 + 0.005 - 0.01))
    expected = 0.5 * s1 - 0.25 * s2 + 0.1
    pop = SirenPopulation([w1[None], w2[None], w3[None]], [b1[None], b2[None], b3[None]], omega)
    for size in (4, 9):
        img = render(pop, size)
        assert img.shape == (1, 1, size, size)
        torch.testing.assert_close(img, torch.full_like(img, expected), atol=1e-6, rtol=0)
    # the same weights as a WeightBatch (omega_0 given explicitly)
    torch.testing.assert_close(render(pop.to_weight_batch(), 4, omega_0=omega),
                               torch.full((1, 1, 4, 4), expected), atol=1e-6, rtol=0)


def test_render_orientation_and_channel_layout():
    # one hidden layer of 2 sines: neuron 0 reads the first coordinate (row), neuron 1 the
    # second (column); output 0 = neuron 0, output 1 = neuron 1. a = 1 / (2 omega) keeps
    # sin(omega a t) = sin(t / 2) monotone on [-1, 1].
    omega = 30.0
    a = 1 / (2 * omega)
    w1 = torch.tensor([[a, 0.0], [0.0, a]])
    pop = SirenPopulation([w1[None], torch.eye(2)[None]], [torch.zeros(1, 2)] * 2, omega)
    size = 5
    img = render(pop, size)
    assert img.shape == (1, 2, size, size)
    lin = torch.linspace(-1, 1, size)
    by_row = torch.sin(lin / 2)[:, None].expand(size, size)
    torch.testing.assert_close(img[0, 0], by_row)  # varies down the rows (i), not across
    torch.testing.assert_close(img[0, 1], by_row.t())  # varies across the columns (j)
    assert img[0, 0, 0, 0] < img[0, 0, size - 1, 0]


def test_render_matches_modules_and_any_resolution():
    pop = siren_init([3, 4, 5])
    modules = pop.to_modules()
    for size in (7, 16):
        img = render(pop, size)
        assert img.shape == (3, 1, size, size)
        for k, model in enumerate(modules):
            expected = model(coordinate_grid(size)).reshape(size, size)
            torch.testing.assert_close(img[k, 0], expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(render(pop.to_weight_batch(), 7), render(pop, 7))


def test_render_is_differentiable_in_the_weights():
    batch = siren_init([0]).to_weight_batch().map(lambda t: t.clone().requires_grad_(True))
    render(batch, 4).square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in batch.tensors())


# --- 4. PSNR -------------------------------------------------------------------------------
def test_psnr_golden():
    assert psnr(0.04) == pytest.approx(20.0, abs=1e-12)
    assert psnr(0) == math.inf
    out = psnr(torch.tensor([0.04, 0.4, 4.0], dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor([20.0, 10.0, 0.0], dtype=torch.float64))


# --- 5. function preservation --------------------------------------------------------------
def test_hidden_permutation_and_sign_flip_preserve_the_rendering():
    pop = siren_init([11, 12])
    batch = pop.to_weight_batch().map(lambda t: t.double())
    before = render(batch, 12)
    g = torch.Generator().manual_seed(0)
    perm = random_permutation(batch.space, "hnp", batch_size=2, generator=g)
    permuted = permute(batch, perm)
    assert not torch.equal(permuted.weights[1], batch.weights[1])
    torch.testing.assert_close(render(permuted, 12), before, atol=1e-12, rtol=0)
    # the nn.Module path (permute_module reads the Sine module as a parameter-free activation)
    model = init_siren_module(11).double()
    coords = coordinate_grid(12, dtype=torch.float64)
    moved = permute_module(model, random_permutation(batch.space, "hnp", generator=g))
    assert not torch.equal(moved[2].weight, model[2].weight)
    torch.testing.assert_close(moved(coords), model(coords), atol=1e-12, rtol=0)
    # sine is odd: negate neuron j's incoming weights and bias and its outgoing weights
    for layer, j in [(0, 5), (1, 17)]:
        w = [t.clone() for t in batch.weights]
        b = [t.clone() for t in batch.biases]
        w[layer][:, :, j] *= -1
        b[layer][:, :, j] *= -1
        w[layer + 1][:, :, :, j] *= -1
        flipped = WeightBatch(batch.space, w, b)
        torch.testing.assert_close(render(flipped, 12), before, atol=1e-12, rtol=0)
        # without the outgoing flip the function changes (the check can fail)
        w[layer + 1][:, :, :, j] *= -1
        assert (render(WeightBatch(batch.space, w, b), 12) - before).abs().max() > 1e-3


# --- 6. early stop -------------------------------------------------------------------------
def test_early_stop_freezes_members_at_their_first_target_step():
    # A constant image and a noise image reach 25 dB after about 13 and 21 updates, the
    # digit after about 35 (from their PSNR trajectories), so with 30 steps two members stop,
    # at different steps, and one runs to the end.
    g = torch.Generator().manual_seed(1)
    images = torch.stack([torch.full((8, 8), 0.3), digits(1, start=5)[0],
                          torch.rand(8, 8, generator=g) * 2 - 1])
    seeds, target, steps = [0, 1, 2], 25.0, 30
    first = []
    for image, seed in zip(images, seeds, strict=True):
        traj = psnr_trajectory(image, seed, steps)
        hits = [t for t, p in enumerate(traj[:steps]) if p >= target]
        first.append(hits[0] if hits else steps)
        if hits:  # not a borderline case
            assert hits[0] > 0
            assert traj[hits[0]] - target > 1e-3 and target - traj[hits[0] - 1] > 1e-3
    assert 0 < first[0] < first[2] < first[1] == steps, first
    fit = fit_sirens(images, seeds, steps=steps, target_psnr=target)
    assert fit.steps_used.tolist() == first
    assert (fit.psnr[[0, 2]] >= target).all() and fit.psnr[1] < target
    # frozen members do not change when the fit runs longer; the active one does
    longer = fit_sirens(images, seeds, steps=steps + 15, target_psnr=target)
    assert longer.steps_used[[0, 2]].tolist() == [first[0], first[2]]
    assert longer.steps_used[1] > steps
    for a, b in zip(fit.population.parameters(), longer.population.parameters(), strict=True):
        assert torch.equal(a[[0, 2]], b[[0, 2]])
    assert not torch.equal(fit.population.weights[1][1], longer.population.weights[1][1])
    # one update fewer had not reached the target
    for k in (0, 2):
        short = fit_sirens(images[k:k + 1], seeds[k:k + 1], steps=first[k] - 1)
        assert short.psnr[0] < target


# --- 7. errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("call, name", [
    (lambda: fit_sirens(torch.zeros(2, 8, 7), [0, 1]), "images"),
    (lambda: fit_sirens(torch.zeros(2, 8, 8) + 1.01, [0, 1]), "images"),
    (lambda: fit_sirens(torch.zeros(2, 8, 8) - 1.0001, [0, 1]), "images"),
    (lambda: fit_sirens(torch.zeros(8, 8), [0]), "images"),
    (lambda: fit_sirens(torch.zeros(2, 8, 8), [0]), "seeds"),
    (lambda: fit_sirens(torch.zeros(2, 8, 8), [0, 1], steps=0), "steps"),
    (lambda: fit_sirens(torch.zeros(2, 8, 8), [0, 1], lr=-1.0), "lr"),
    (lambda: fit_sirens(torch.zeros(2, 8, 8), [0, 1], hidden=()), "hidden"),
    (lambda: fit_sirens(torch.zeros(2, 8, 8), [0, 1], target_psnr="x"), "target_psnr"),
    (lambda: fit_siren_reference(torch.zeros(8, 9), 0), "image"),
    (lambda: fit_siren_reference(torch.full((8, 8), 2.0), 0), "image"),
    (lambda: fit_siren_reference(torch.zeros(8, 8), 0, steps=0), "steps"),
    (lambda: render(siren_init([0]), 0), "size"),
    (lambda: render(WeightBatch.from_modules([init_siren_module(0)]).map(
        lambda t: t.expand(-1, 2, *t.shape[2:])), 4), "batch"),
    (lambda: siren_module(omega_0=0.0), "omega_0"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}\b") as info:
        call()
    assert "\n" not in str(info.value)


def test_values_within_slack_of_the_range_are_accepted():
    fit = fit_sirens(torch.full((1, 4, 4), 1 + 5e-7), [0], steps=1)
    assert fit.steps_used.tolist() == [1]


# --- 8. quality ------------------------------------------------------------------------------
def test_digits_fit_reaches_high_psnr():
    fit = fit_sirens(digits(6, start=10), list(range(6)), steps=200, lr=1e-3)
    assert fit.psnr.median() > 30.0  # the research pilot measured ~100 dB after 200 steps
    torch.testing.assert_close(psnr(fit.mse), fit.psnr)


def test_member_chunks_do_not_change_the_fit(monkeypatch):
    from gensight.zoo import siren

    images, seeds = digits(4, start=20), [5, 6, 7, 8]
    whole = fit_sirens(images, seeds, steps=5)
    monkeypatch.setattr(siren._FlatSirens, "CHUNK_BYTES", 1)  # one member per chunk
    assert siren._FlatSirens([(32, 2), (1, 32)], 30.0).cpu_chunk(64) == 1
    chunked = fit_sirens(images, seeds, steps=5)
    for a, b in zip(whole.population.parameters(), chunked.population.parameters(),
                    strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_non_square_list_input_is_a_one_line_siren_error():
    from gensight.zoo.siren import SirenError

    with pytest.raises(SirenError, match=r"must be square \(H == W\); got shape \(1, 1, 1, 2\)"):
        fit_sirens([[[0.0, 0.1]]], [0], steps=1)


@pytest.mark.parametrize(("hidden", "channels", "size"), [((32, 32), 1, 7), ((8, 6, 5), 3, 5),
                                                          ((4,), 2, 6)])
def test_grid_first_layer_by_angle_addition_equals_the_direct_pass(hidden, channels, size):
    """On a coordinate grid the first layer's sines and cosines come from per-axis factors
    (sin(r + c) = sin r cos c + cos r sin c); loss and gradient equal the direct pass in
    float64, also when the members run in several chunks."""
    from gensight.zoo.siren import _FlatSirens, _layer_sizes

    flat = _FlatSirens(_layer_sizes(hidden, 2, channels), 30.0)
    g = torch.Generator().manual_seed(7)
    theta = (torch.rand(5, flat.dim, generator=g, dtype=torch.float64) - 0.5) * 0.4
    targets = torch.rand(5, channels, size * size, generator=g, dtype=torch.float64) * 2 - 1
    coords = coordinate_grid(size, dtype=torch.float64)
    lin = torch.linspace(-1, 1, size, dtype=torch.float64)
    mse, grad = (t.clone() for t in flat.loss_and_grad(theta, coords, targets))
    flat.chunk = 2
    flat.GRID_MIN_SIDE = 1  # the angle-addition path at every size
    real, calls = flat._first_layer_on_grid, []
    flat._first_layer_on_grid = lambda *a: calls.append(1) or real(*a)
    mse_g, grad_g = flat.loss_and_grad(theta, coords, targets, lin)
    torch.testing.assert_close(mse_g, mse, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_g, grad, rtol=1e-9, atol=1e-9)
    assert grad.abs().max() > 1e-2  # a gradient that could differ
    assert len(calls) == 3  # one call per chunk of 2 members: the grid path ran
