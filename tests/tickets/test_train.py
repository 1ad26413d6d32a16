"""Masked population training: pruned weights and their optimizer state stay exactly zero,
rewinding starts from theta_0 * m, and population IMP equals IMP run network by network
with torch.optim."""

import pytest
import torch

from gensight.data import load_dataset
from gensight.tickets.config import TrainConfig
from gensight.tickets.masks import magnitude_prune, pruning_schedule, random_masks
from gensight.tickets.train import (
    init_weights,
    layer_sizes,
    run_imp,
    train_masked,
    train_masked_reference,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _setup(digits, seeds, hidden=(6,)):
    widths = layer_sizes(digits, hidden)
    w, b = init_weights(seeds, widths, torch.float64)
    return widths, w, b


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop"])
def test_pruned_weights_and_optimizer_state_stay_zero(digits, optimizer):
    seeds = [3, 4]
    widths, w, b = _setup(digits, seeds)
    masks = random_masks([tuple(t.shape[1:]) for t in w], [100, 30], [11, 12])
    train = TrainConfig(optimizer=optimizer, lr=0.01, momentum=0.9, epochs=2, batch_size=64)
    run = train_masked(w, b, masks, seeds, digits, train)
    for trained, init, m in zip(run.weights, w, masks, strict=True):
        assert bool((trained[~m] == 0).all())
        # survivors did train (but the weights of always-zero border pixels get no gradient)
        assert float((trained[m] != init[m]).double().mean()) > 0.5
    n = sum(t[0].numel() for t in w)
    state = run.opt_state[{"adam": "m", "sgd": "buf", "rmsprop": "sq"}[optimizer]]
    flat_mask = torch.cat([m.flatten(1) for m in masks], 1)
    assert bool((state[:, :n][~flat_mask] == 0).all())
    assert bool((state[:, :n][flat_mask] != 0).any())
    if optimizer == "adam":
        assert bool((run.opt_state["v"][:, :n][~flat_mask] == 0).all())


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
def test_pruned_entries_stay_exactly_zero_when_training_diverges(digits, optimizer):
    """A learning rate of 1e30 overflows the survivors to inf / nan; 0 * nan is nan, so the
    pruned weights and their optimizer state must be set to 0, not multiplied by the mask."""
    seeds = [3, 4]
    _, w, b = _setup(digits, seeds)
    w, b = [t.float() for t in w], [t.float() for t in b]
    masks = random_masks([tuple(t.shape[1:]) for t in w], [100, 30], [11, 12])
    train = TrainConfig(optimizer=optimizer, lr=1e30, epochs=1, batch_size=64)
    run = train_masked(w, b, masks, seeds, digits, train)
    assert not all(bool(t.isfinite().all()) for t in run.weights)  # it did diverge
    for trained, m in zip(run.weights, masks, strict=True):
        assert bool((trained[~m] == 0).all())
    n = sum(t[0].numel() for t in w)
    flat_mask = torch.cat([m.flatten(1) for m in masks], 1)
    for name, state in run.opt_state.items():
        assert bool((state[:, :n][~flat_mask] == 0).all()), name


def test_zero_epochs_returns_the_rewound_ticket(digits):
    seeds = [5]
    _, w, b = _setup(digits, seeds)
    masks = random_masks([tuple(t.shape[1:]) for t in w], [50, 20], [1])
    run = train_masked(w, b, masks, seeds, digits, TrainConfig(epochs=0))
    for trained, init, m in zip(run.weights, w, masks, strict=True):
        assert torch.equal(trained, init * m)  # theta_0 on survivors, exactly 0 elsewhere
    assert all(torch.equal(x, y) for x, y in zip(run.biases, b, strict=True))


def test_population_imp_equals_per_network_imp_with_torch_optim(digits):
    seeds = [21, 22, 23]
    widths, w, b = _setup(digits, seeds)
    train = TrainConfig(optimizer="adam", lr=0.01, epochs=2, batch_size=128)
    counts = pruning_schedule([t[0].numel() for t in w], 2, 0.2, 0.1)

    def pop_train(ww, bb, masks, ss):
        return train_masked(ww, bb, masks, ss, digits, train)

    result = run_imp(w, b, seeds, counts, pop_train)
    for j, seed in enumerate(seeds):
        wj, bj = [t[j] for t in w], [t[j] for t in b]
        mask = None
        for k in range(len(counts)):
            net, _ = train_masked_reference(wj, bj, mask, seed, digits, train)
            trained = [net[1].weight.detach(), net[3].weight.detach()]
            if k == len(counts) - 1:
                break
            alive = [torch.ones_like(t, dtype=torch.bool) for t in wj] if mask is None \
                else mask
            mask = [m[0] for m in magnitude_prune([t.unsqueeze(0) for t in trained],
                                                  [a.unsqueeze(0) for a in alive],
                                                  counts[k + 1])]
            assert all(torch.equal(a, r[j]) for a, r in zip(mask, result.masks[k],
                                                              strict=True)), (seed, k)
        # the last ticket trains to the same weights and accuracy
        pop_last = train_masked([t[j:j + 1] for t in w], [t[j:j + 1] for t in b],
                                [m[j:j + 1] for m in result.masks[-1]], [seed], digits, train)
        for a, r in zip(trained, pop_last.weights, strict=True):
            assert torch.allclose(a, r[0], atol=1e-10, rtol=0)
        logits = net(digits.x_test.double())
        acc = (logits.argmax(1) == digits.y_test).double().mean()
        assert float(acc) == pytest.approx(float(result.test_acc[-1][j]), abs=1e-6)


def test_random_masks_of_imp_match_round_counts(digits):
    seeds = [1, 2]
    _, w, b = _setup(digits, seeds, hidden=(4,))
    counts = pruning_schedule([t[0].numel() for t in w], 2, 0.5, 0.25)
    train = TrainConfig(epochs=1, batch_size=256)
    result = run_imp(w, b, seeds, counts,
                     lambda ww, bb, mm, ss: train_masked(ww, bb, mm, ss, digits, train),
                     random_rounds=[1, 2])
    for k in (1, 2):
        got = [m.flatten(1).sum(1).tolist() for m in result.random_masks[k]]
        assert got == [[c] * 2 for c in counts[k]]
        imp = [m.flatten(1).sum(1).tolist() for m in result.masks[k - 1]]
        assert imp == got
    # data order tied to the seed: the same seeds give the same masks and accuracies
    again = run_imp(w, b, seeds, counts,
                    lambda ww, bb, mm, ss: train_masked(ww, bb, mm, ss, digits, train))
    assert all(torch.equal(x, y) for x, y in zip(again.masks[-1], result.masks[-1],
                                                 strict=True))
    assert torch.equal(again.test_acc[-1], result.test_acc[-1])
