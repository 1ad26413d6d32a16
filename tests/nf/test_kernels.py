"""The hand-written autograd pieces of the NF-Layers against autograd references."""

import pytest
import torch

from gensight.nf.layers import PointwiseBroadcast, channel_mix
from gensight.nf.layout import RowColMean


def test_row_col_mean_values_and_gradients():
    x = torch.randn(2, 3, 4, 5, dtype=torch.double, requires_grad=True)
    rows, cols, alias = RowColMean.apply(x)
    assert torch.allclose(rows, x.mean(-1)) and torch.allclose(cols, x.mean(-2))
    assert torch.equal(alias, x)
    for pick in ((0,), (1,), (2,), (0, 1), (0, 1, 2)):
        def f(t, pick=pick):
            outs = RowColMean.apply(t)
            return tuple(outs[k].sin() for k in pick)
        assert torch.autograd.gradcheck(f, (x,))


def test_pointwise_broadcast_matches_reference_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.double, generator=g, requires_grad=True)
    w = torch.randn(6, 3, dtype=torch.double, generator=g, requires_grad=True)
    r = torch.randn(2, 6, 4, dtype=torch.double, generator=g, requires_grad=True)
    c = torch.randn(2, 6, 5, dtype=torch.double, generator=g, requires_grad=True)
    ref = torch.einsum("oi,bijk->bojk", w, x) + r[..., None] + c[..., None, :]
    assert torch.allclose(PointwiseBroadcast.apply(x, w, r, c), ref)
    assert torch.autograd.gradcheck(PointwiseBroadcast.apply, (x, w, r, c))


@pytest.mark.parametrize("f_in, f_out, n", [(3, 4, 50), (40, 50, 2)])  # bmm path, fold path
def test_channel_mix_both_paths(f_in, f_out, n):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, f_in, n, dtype=torch.double, generator=g, requires_grad=True)
    w = torch.randn(f_out, f_in, dtype=torch.double, generator=g, requires_grad=True)
    assert torch.allclose(channel_mix(w, x), torch.einsum("oi,bin->bon", w, x))
    assert torch.autograd.gradcheck(channel_mix, (w, x))
