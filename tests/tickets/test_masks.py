"""Pruning schedules, exact per-layer top-k with deterministic ties, IMP's pruning step on a
hand-set network, and the straight-through top-k's values."""

import math

import pytest
import torch

from gensight.tickets.masks import (
    MaskError,
    connected_topk,
    layer_topk,
    magnitude_masks,
    magnitude_prune,
    pruning_schedule,
    random_masks,
    snip_masks,
    snip_scores,
    straight_through_topk,
    topk_mask,
)
from gensight.tickets.train import MaskedRun, oneshot_imp, run_imp


def test_schedule_counts_round_half_up_and_output_rate():
    assert pruning_schedule([12, 6], 2, 0.25, 0.125) == [[12, 6], [9, 5], [7, 4]]
    # 0.25 * 10 = 2.5 prunes 3 (half up), not 2 (Python's round gives 2)
    assert pruning_schedule([10, 10], 1, 0.25, 0.25) == [[10, 10], [7, 7]]
    # never below one weight
    assert pruning_schedule([2, 2], 3, 0.9, 0.9)[-1] == [1, 1]


def test_topk_ties_keep_lowest_index_and_exact_counts():
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.5], [1.0, 3.0, 3.0, 2.0, 3.0]])
    mask = topk_mask(scores, 2)
    assert mask.tolist() == [[True, True, False, False, False],
                             [False, True, True, False, False]]
    g = torch.Generator().manual_seed(0)
    scores = [torch.randint(0, 3, (4, 5, 7), generator=g).double(),
              torch.randn(4, 2, 5, generator=g)]
    masks = layer_topk(scores, [11, 3])
    assert masks[0].flatten(1).sum(1).tolist() == [11] * 4
    assert masks[1].flatten(1).sum(1).tolist() == [3] * 4
    assert all(torch.equal(a, b) for a, b in zip(masks, layer_topk(scores, [11, 3]),
                                                 strict=True))
    # every kept score >= every dropped one, and among equal scores the lower index is kept
    flat, keep = scores[0].flatten(1), masks[0].flatten(1)
    for row, k in zip(flat, keep, strict=True):
        assert row[k].min() >= row[~k].max()
        border = row[k].min()
        ties = (row == border).nonzero().flatten()
        kept = keep_ties = [int(i) for i in ties if k[i]]
        assert keep_ties == [int(i) for i in ties[:len(kept)]]
    with pytest.raises(MaskError, match="k=6 of 5"):
        topk_mask(torch.zeros(1, 5), 6)


def _dead_ends(masks):
    """Kept weights into a unit with no kept outgoing weight, or out of one with no kept
    incoming weight."""
    n = 0
    for i in range(len(masks) - 1):
        has_in, has_out = masks[i].any(2), masks[i + 1].any(1)
        n += int((masks[i] & ~has_out[:, :, None]).sum())
        n += int((masks[i + 1] & ~has_in[:, None, :]).sum())
    return n


def test_connected_topk_moves_dead_end_weights_to_live_units_by_hand():
    # 2 inputs -> 3 hidden -> 1 output; keep 3 first-layer and 2 second-layer weights
    s1 = torch.tensor([[[9.0, 8.0],    # unit 0
                        [7.0, 1.0],    # unit 1
                        [2.0, 3.0]]])  # unit 2
    s2 = torch.tensor([[[5.0, 0.5, 4.0]]])
    plain = layer_topk([s1, s2], [3, 2])
    # plain top-k keeps 9, 8, 7 (units 0, 0, 1) and outputs of units 0 and 2: unit 1 gets
    # input but sends nothing, unit 2 sends but gets nothing
    assert plain[0][0].tolist() == [[True, True], [True, False], [False, False]]
    assert plain[1][0].tolist() == [[True, False, True]]
    assert _dead_ends(plain) == 2
    # layer 1 given layer 2: only units 0 and 2 send, so its third weight moves from unit 1
    # (7) to unit 2 (3); layer 2 given the new layer 1: units 0 and 2 receive, keep both
    masks = connected_topk([s1, s2], [3, 2])
    assert masks[0][0].tolist() == [[True, True], [False, False], [False, True]]
    assert masks[1][0].tolist() == [[True, False, True]]
    assert _dead_ends(masks) == 0
    # no dead end in the plain top-k: returned unchanged
    two = connected_topk([s1, s2], [2, 1])
    assert two[0][0].tolist() == [[True, True], [False, False], [False, False]]
    assert two[1][0].tolist() == [[True, False, False]]
    assert _dead_ends(two) == 0


def test_connected_topk_counts_no_dead_ends_and_equivariance():
    g = torch.Generator().manual_seed(3)
    scores = [torch.randn(6, 12, 8, generator=g, dtype=torch.float64),
              torch.randn(6, 10, 12, generator=g, dtype=torch.float64),
              torch.randn(6, 4, 10, generator=g, dtype=torch.float64)]
    counts = [9, 8, 6]
    plain = layer_topk(scores, counts)
    masks = connected_topk(scores, counts)
    assert _dead_ends(plain) > 0 and _dead_ends(masks) == 0
    for m, k in zip(masks, counts, strict=True):
        assert m.flatten(1).sum(1).tolist() == [k] * 6
    # permuting the hidden units of the scores permutes the masks
    p1, p2 = torch.randperm(12, generator=g), torch.randperm(10, generator=g)
    perm = [scores[0][:, p1], scores[1][:, p2][:, :, p1], scores[2][:, :, p2]]
    got = connected_topk(perm, counts)
    assert torch.equal(got[0], masks[0][:, p1])
    assert torch.equal(got[1], masks[1][:, p2][:, :, p1])
    assert torch.equal(got[2], masks[2][:, :, p2])
    # with generous counts the plain top-k has no dead end and is returned unchanged
    big = [80, 100, 32]
    assert _dead_ends(layer_topk(scores, big)) == 0
    assert all(torch.equal(a, b) for a, b in zip(connected_topk(scores, big),
                                                 layer_topk(scores, big), strict=True))
    # a single layer has no hidden units
    assert torch.equal(connected_topk(scores[:1], [5])[0], layer_topk(scores[:1], [5])[0])
    with pytest.raises(MaskError, match="layer 0 has 12 outputs but layer 1 has 10 inputs"):
        connected_topk([scores[0], scores[2]], [5, 5])
    with pytest.raises(MaskError, match="same M in every layer"):
        connected_topk([scores[0], scores[1][:3]], [5, 5])
    with pytest.raises(MaskError, match=r"\(M, n_out, n_in\) scores"):
        connected_topk([scores[0][0], scores[1][0]], [5, 5])
    # a -inf score is kept only when nothing finite is left, even between connected units
    # (unit 0's second input is -inf; unit 2 sends nothing, so its input is a dead end, yet a
    # finite dead end beats a -inf connected weight)
    s1 = torch.tensor([[[5.0, -math.inf], [4.0, 3.0], [1.0, 0.5]]])
    s2 = torch.tensor([[[9.0, 8.0, -5.0]]])
    got = connected_topk([s1, s2], [4, 2])
    assert got[0][0].tolist() == [[True, False], [True, True], [True, False]]
    assert got[1][0].tolist() == [[True, True, False]]


def test_baselines_have_exact_per_layer_counts():
    g = torch.Generator().manual_seed(1)
    init = [torch.randn(3, 4, 6, generator=g), torch.randn(3, 2, 4, generator=g)]
    mag = magnitude_masks(init, [5, 3])
    for w, m in zip(init, mag, strict=True):
        flat, keep = w.abs().flatten(1), m.flatten(1)
        for row, k in zip(flat, keep, strict=True):
            assert row[k].min() > row[~k].max()
    rnd = random_masks([(4, 6), (2, 4)], [5, 3], [7, 8, 7])
    assert [m.flatten(1).sum(1).tolist() for m in rnd] == [[5, 5, 5], [3, 3, 3]]
    assert torch.equal(rnd[0][0], rnd[0][2]) and not torch.equal(rnd[0][0], rnd[0][1])


def test_imp_rounds_on_a_hand_set_network():
    """A 3-4-2 MLP whose 'trained' weights are set by hand: each round keeps exactly the
    largest surviving trained magnitudes per layer (output layer at its own rate), and each
    training starts from theta_0 (the stub records what it was given)."""
    theta0_w = [torch.arange(1.0, 13.0).view(1, 4, 3), -torch.arange(1.0, 9.0).view(1, 2, 4)]
    theta0_b = [torch.ones(1, 4), torch.zeros(1, 2)]
    # trained magnitudes: layer 1 reversed order of theta_0, layer 2 a hand-chosen order
    trained = [torch.arange(12.0, 0.0, -1).view(1, 4, 3),
               torch.tensor([[[5.0, -1.0, 7.0, 2.0], [-8.0, 3.0, 6.0, 4.0]]])]
    calls = []

    def stub(w, b, masks, seeds):
        calls.append(([t.clone() for t in w], masks))
        out = trained if masks is None else [t * m for t, m in zip(trained, masks,
                                                                    strict=True)]
        return MaskedRun(out, b, torch.ones(1), torch.ones(1))

    counts = pruning_schedule([12, 8], 2, 0.25, 0.125)
    assert counts == [[12, 8], [9, 7], [7, 6]]
    result = run_imp(theta0_w, theta0_b, [0], counts, stub)
    m1, m2 = result.masks
    # round 1: layer 1 keeps trained 12..4 (the first 9 entries), layer 2 drops |-1|
    assert m1[0].flatten().tolist() == [True] * 9 + [False] * 3
    assert m1[1].flatten().tolist() == [True, False, True, True, True, True, True, True]
    # round 2: layer 1 keeps 12..6 (first 7), layer 2 also drops |2|
    assert m2[0].flatten().tolist() == [True] * 7 + [False] * 5
    assert m2[1].flatten().tolist() == [True, False, True, False, True, True, True, True]
    # every training starts from theta_0 itself with the current mask (rewinding)
    assert len(calls) == 3 and calls[0][1] is None
    for (w, masks), expected in zip(calls[1:], result.masks, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(w, theta0_w, strict=True))
        assert masks is expected


def test_oneshot_imp_on_a_hand_set_network():
    """One-shot IMP prunes the dense network's trained weights straight to each count set:
    at IMP's round-1 counts it equals IMP's round-1 mask; at round 2 it differs from IMP's,
    whose second pruning ranks the weights of the retrained ticket instead."""
    theta0_w = [torch.randn(1, 4, 3), torch.randn(1, 2, 4)]
    theta0_b = [torch.zeros(1, 4), torch.zeros(1, 2)]
    dense = [torch.arange(12.0, 0.0, -1).view(1, 4, 3),
             torch.tensor([[[5.0, -1.0, 7.0, 2.0], [-8.0, 3.0, 6.0, 4.0]]])]
    # a retrained ticket ranks layer 1 the other way round
    ticket = [torch.arange(1.0, 13.0).view(1, 4, 3), dense[1]]
    calls = []

    def stub(w, b, masks, seeds):
        calls.append(masks)
        out = dense if masks is None else [t * m for t, m in zip(ticket, masks, strict=True)]
        return MaskedRun(out, b, torch.ones(1), torch.ones(1))

    counts = [[12, 8], [9, 7], [7, 6]]
    one1, one2 = oneshot_imp(theta0_w, theta0_b, [0], counts[1:], stub)
    assert calls == [None]  # one dense training, nothing else
    imp = run_imp(theta0_w, theta0_b, [0], counts, stub)
    assert all(torch.equal(a, b) for a, b in zip(one1, imp.masks[0], strict=True))
    # one-shot at (7, 6): the 7 largest dense magnitudes of layer 1 are its first 7 entries
    assert one2[0].flatten().tolist() == [True] * 7 + [False] * 5
    assert one2[1].flatten().tolist() == [True, False, True, False, True, True, True, True]
    # IMP's round 2 keeps the 7 largest of the ticket's survivors (entries 3..9 of 1..9)
    assert imp.masks[1][0].flatten().tolist() == [False] * 2 + [True] * 7 + [False] * 3
    assert [int(m.sum()) for m in one2] == counts[2]


def test_magnitude_prune_never_revives_pruned_weights():
    trained = [torch.tensor([[[9.0, 0.1, 5.0, 4.0]]])]
    alive = [torch.tensor([[[False, True, True, True]]])]
    assert magnitude_prune(trained, alive, [2])[0].tolist() == [[[False, False, True, True]]]
    with pytest.raises(MaskError, match="cannot keep 4 weights"):
        magnitude_prune(trained, alive, [4])


def test_straight_through_forward_and_backward_values():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.5]], dtype=torch.float64, requires_grad=True)
    mask = straight_through_topk(logits, 2)
    assert mask.tolist() == [[1.0, 0.0, 1.0, 0.0]]  # the tie at 0.5: lower index kept
    mask.backward(torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64))

    def dsig(z):  # sigma'(z) = e^-z / (1 + e^-z)^2, written out by hand
        return math.exp(-z) / (1 + math.exp(-z)) ** 2

    expected = [1 * dsig(2.0), 2 * dsig(-1.0), 3 * dsig(0.5), 4 * dsig(0.5)]
    assert logits.grad.tolist()[0] == pytest.approx(expected, abs=1e-12)
    assert logits.grad[0, 0].item() == pytest.approx(0.104993585403507, abs=1e-12)


def test_snip_masks_agree_with_a_per_network_reference():
    """SNIP keeps, per layer, the largest |w * dL/dw| of each member's own dense network
    (float64): checked against nn.Sequential + autograd one member at a time."""
    from torch import nn

    g = torch.Generator().manual_seed(3)
    widths = [5, 4, 3]
    w = [torch.randn(2, widths[i + 1], widths[i], generator=g, dtype=torch.float64)
         for i in range(2)]
    b = [torch.randn(2, widths[i + 1], generator=g, dtype=torch.float64) for i in range(2)]
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    for act, module in (("relu", nn.ReLU()), ("tanh", nn.Tanh())):
        got = snip_masks(w, b, [6, 5], x, y, act)
        one, two = snip_scores(w, b, x, y, act, chunk=1), snip_scores(w, b, x, y, act)
        assert all(torch.allclose(s1, s2, rtol=1e-12, atol=0)
                   for s1, s2 in zip(one, two, strict=True))
        assert [m.flatten(1).sum(1).tolist() for m in got] == [[6, 6], [5, 5]]
        for j in range(2):
            net = nn.Sequential(nn.Linear(5, 4), module, nn.Linear(4, 3)).double()
            with torch.no_grad():
                for lin, wi, bi in zip((net[0], net[2]), w, b, strict=True):
                    lin.weight.copy_(wi[j])
                    lin.bias.copy_(bi[j])
            nn.functional.cross_entropy(net(x), y).backward()
            for lin, m, k in zip((net[0], net[2]), got, (6, 5), strict=True):
                sal = (lin.weight * lin.weight.grad).abs().flatten()
                assert set(m[j].flatten().nonzero().flatten().tolist()) == set(
                    sal.topk(k).indices.tolist())


def test_snip_masks_by_hand():
    """A 1-2-2 ReLU network on one input, sensitivities computed by hand; in both layers
    SNIP keeps a weight that magnitude at init would not."""
    # hidden h = relu(W1 x) with x = 1: h = (1, 0) (unit 1 is off); logits = W2 h = (1, 3)
    w1 = torch.tensor([[[1.0], [-3.0]]])
    w2 = torch.tensor([[[1.0, 5.0], [3.0, 4.0]]])
    b = [torch.zeros(1, 2), torch.zeros(1, 2)]
    x, y = torch.ones(1, 1), torch.tensor([0], dtype=torch.int32)
    # dL/dlogit = p - e_y = (p0 - 1, p1) = (-p1, p1), p1 = 1 / (1 + e^-2)
    got = snip_masks([w1, w2], b, [1, 1], x, y)
    # layer 2: dL/dW2[c, i] = (p - e_y)[c] * h[i]; h1 = 0 so column 1 (|5|, |4|, the largest
    # weights) has zero sensitivity; |W2[1, 0] * p1 * 1| = 3 p1 > |W2[0, 0] * (-p1) * 1| = p1
    assert got[1][0].tolist() == [[False, False], [True, False]]
    # layer 1: unit 1 is off (relu'(-3) = 0), so only W1[0] (the smaller weight) has a nonzero
    # sensitivity: |1 * (1 * (-p1) + 3 * p1)| = 2 p1
    assert got[0][0].tolist() == [[True], [False]]
    assert magnitude_masks([w1, w2], [1, 1])[0][0].tolist() == [[False], [True]]
    with pytest.raises(MaskError, match="one label per input"):
        snip_masks([w1, w2], b, [1, 1], x, torch.tensor([0, 1]))
    with torch.inference_mode(), pytest.raises(MaskError, match="outside torch.inference_mode"):
        snip_masks([w1, w2], b, [1, 1], x, y)
