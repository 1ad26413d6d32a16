"""Inr2Array (arXiv 2305.13546, Sec. 4): tiling, invariance of the latent array, decoding and
rendering against a direct computation, training, errors."""

import pytest
import torch
from torch import nn

from gensight.inr import (
    Inr2Array,
    Inr2ArrayError,
    LatentTransformer,
    fit_inr2array,
    reconstruction_mse,
    tile_index,
)
from gensight.weightspace import WeightBatch, WeightSpace, permute, random_permutation
from gensight.zoo.siren import fit_sirens, render, siren_space


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_sirens(space: WeightSpace, n: int, seed: int, dtype=torch.float64) -> WeightBatch:
    g = torch.Generator().manual_seed(seed)
    return WeightBatch(
        space, [torch.randn(n, 1, *lay.weight_shape, generator=g, dtype=dtype)
                for lay in space.layers],
        [torch.randn(n, 1, *lay.bias_shape, generator=g, dtype=dtype) for lay in space.layers])


def test_tile_index_golden():
    """linspace(-1, 1, 4) = [-1, -1/3, 1/3, 1] -> tiles [0, 0, 1, 1] per axis (grid 2)."""
    expected = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    assert torch.equal(tile_index(4, 2).view(4, 4), expected)
    # grid 3 on 7 points: x = -1 + k/3 -> round(x + 1) = [0, 0, 1, 1, 1, 2, 2]
    rows = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    assert torch.equal(tile_index(7, 3).view(7, 7), rows[:, None] * 3 + rows[None, :])
    assert torch.equal(tile_index(5, 1), torch.zeros(25, dtype=torch.long))


def test_latents_are_invariant_to_hidden_permutations():
    space = siren_space((6, 5))
    torch.manual_seed(0)
    ae = Inr2Array(space, channels=8, heads=2, grid=2, decoder_hidden=8).double().eval()
    x = random_sirens(space, 3, seed=1)
    perm = random_permutation(space, "hnp", batch_size=3, generator=torch.Generator()
                              .manual_seed(2))
    z = ae.encode(x)
    assert z.shape == (3, 4, 8)
    assert torch.allclose(ae.encode(permute(x, perm)), z, atol=1e-10)
    assert torch.allclose(ae(permute(x, perm), 6), ae(x, 6), atol=1e-10)
    # but not to a permutation of the input coordinates (input neurons are told apart)
    inputs = random_permutation(space, "np", layers=[0], generator=torch.Generator()
                                .manual_seed(3))
    inputs.perms[0][:] = torch.tensor([1, 0])
    assert not torch.allclose(ae.encode(permute(x, inputs)), z, atol=1e-6)


def test_decode_and_tiled_render_against_a_direct_computation():
    space = siren_space((4, 4))
    torch.manual_seed(1)
    ae = Inr2Array(space, channels=8, heads=2, grid=2, decoder_hidden=8, omega_0=20.0).double()
    z = torch.randn(2, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        weights, biases = ae.decode(z)
        out = ae.render(z, 6)
        single = ae.decoders[2](z[1, 3])
    assert [tuple(w.shape) for w in weights] == [(8, 4, 2), (8, 4, 4), (8, 1, 4)]
    assert [tuple(b.shape) for b in biases] == [(8, 4), (8, 4), (8, 1)]
    # latent m of image b is decoded by the same MLPs, alone
    assert torch.allclose(weights[1][1 * 4 + 3].flatten(), single)
    assert out.shape == (2, 1, 6, 6)
    # each decoded SIREN drawn on the whole grid, then each pixel taken from its tile
    decoded = WeightBatch(space, [w.unsqueeze(1) for w in weights],
                          [b.unsqueeze(1) for b in biases])
    full = render(decoded, 6, 20.0).view(2, 4, 6, 6)
    tiles = tile_index(6, 2).view(6, 6)
    for b in range(2):
        for i in range(6):
            for j in range(6):
                assert out[b, 0, i, j] == pytest.approx(float(full[b, tiles[i, j], i, j]),
                                                        abs=1e-12)


def test_decoder_last_layer_initialisation():
    """Sitzmann's hypernetwork init: tiny weights (Kaiming / 100); bias U(+-1/n_in) for a
    decoded weight tensor (n_in: its layer's fan-in), U(+-1/H) for a decoded bias tensor."""
    space = siren_space((32, 32))
    torch.manual_seed(2)
    ae = Inr2Array(space, channels=8, heads=2, decoder_hidden=64)
    bounds = [1 / 2, 1 / 64, 1 / 32, 1 / 64, 1 / 32, 1 / 64]     # W1, v1, W2, v2, W3, v3
    for dec, bound in zip(ae.decoders, bounds, strict=True):
        last = dec[-1]
        assert last.bias.abs().max() <= bound
        assert last.bias.abs().max() > 0.8 * bound if last.bias.numel() > 16 else True
        assert last.weight.std().item() == pytest.approx((2 / 64) ** 0.5 / 100, rel=0.2)


def test_training_reconstructs_the_training_sirens_and_keeps_the_best_val_checkpoint():
    images = torch.linspace(-0.8, 0.8, 12).view(12, 1, 1).expand(12, 6, 6).contiguous()
    images = images + 0.2 * torch.linspace(-1, 1, 6).view(1, 1, 6)    # a ramp per image
    fit = fit_sirens(images, list(range(12)), hidden=(8, 8), steps=80, lr=1e-2)
    raw = fit.population.to_weight_batch()
    x = WeightBatch(raw.space, [w / w.std() for w in raw.weights],
                    [b / b.std() for b in raw.biases])
    target = render(raw, 6)
    torch.manual_seed(3)
    ae = Inr2Array(raw.space, channels=8, heads=2, decoder_hidden=16)
    before = reconstruction_mse(ae, x, target)
    calls = []
    hist = fit_inr2array(ae, x, target, steps=60, batch_size=6, lr=3e-3, eval_every=20,
                         val=(x[:4], target[:4]), progress=lambda *a: calls.append(a))
    assert [h[0] for h in hist] == [20, 40, 60] and [c[0] for c in calls] == [20, 40, 60]
    assert hist[-1][1] < hist[0][1]                          # train MSE falls
    assert reconstruction_mse(ae, x[:4], target[:4]) == pytest.approx(min(h[2] for h in hist))
    assert reconstruction_mse(ae, x, target) < before
    assert not ae.training


def test_latent_transformer_shapes():
    torch.manual_seed(4)
    model = LatentTransformer(4, 8, 3, d_model=16, depth=1, heads=2).eval()
    assert model(torch.randn(5, 4, 8)).shape == (5, 3)


def test_errors():
    space = siren_space((4, 4))
    with pytest.raises(Inr2ArrayError, match="channels must be even"):
        Inr2Array(space, channels=7)
    with pytest.raises(Inr2ArrayError, match="grid must be a positive integer"):
        Inr2Array(space, channels=8, heads=2, grid=0)
    with pytest.raises(Inr2ArrayError, match=r"2-D SIRENs.*\(3, 4, 1\)"):
        Inr2Array(WeightSpace.from_module(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))),
                  channels=8)
    ae = Inr2Array(space, channels=8, heads=2)
    with pytest.raises(Inr2ArrayError, match="built for"):
        ae.encode(random_sirens(siren_space((4, 5)), 1, seed=0, dtype=torch.float32))
    with pytest.raises(Inr2ArrayError, match=r"expected latents \(B, 4, 8\)"):
        ae.decode(torch.zeros(2, 3, 8))
    x = random_sirens(space, 2, seed=0, dtype=torch.float32)
    with pytest.raises(Inr2ArrayError, match="targets must be"):
        fit_inr2array(ae, x, torch.zeros(3, 1, 4, 4), steps=1)
