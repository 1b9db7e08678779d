"""Closed-form checks of the S4D layer and the DiffuSSM mixer."""

from __future__ import annotations

import torch

from lavinkit.nn.attention.diffussm import fold, unfold
from lavinkit.nn.ssm import S4D, BidirectionalS4D, fft_conv, s4d_recurrence


def test_s4d_fft_convolution_equals_recurrence():
    torch.manual_seed(0)
    layer = S4D(3, d_state=8)
    with torch.no_grad():
        layer.log_dt.uniform_(-3, -0.5)  # larger steps: long kernels with visible memory
    u = torch.randn(2, 3, 37)
    conv = layer(u)
    loop = s4d_recurrence(u, layer.log_dt, layer.a_log_real, layer.a_imag, layer.c, layer.d)
    torch.testing.assert_close(conv, loop, atol=1e-4, rtol=1e-4)


def test_fft_conv_is_causal_convolution():
    u, k = torch.randn(1, 2, 9), torch.randn(2, 9)
    direct = torch.stack([torch.stack([sum(k[c, i - j] * u[0, c, j] for j in range(i + 1)) for i in range(9)])
                          for c in range(2)])[None]
    torch.testing.assert_close(fft_conv(u, k), direct, atol=1e-5, rtol=1e-5)


def test_bidirectional_s4d_backward_half_is_anticausal():
    torch.manual_seed(0)
    layer = BidirectionalS4D(2, d_state=4)
    u = torch.randn(1, 10, 2)
    y = layer(u)  # [1, 10, 4]
    u2 = u.clone()
    u2[:, 6:] += 1.0  # change the future only
    y2 = layer(u2)
    torch.testing.assert_close(y[:, :6, :2], y2[:, :6, :2])  # forward channels ignore the future
    assert not torch.allclose(y[:, :6, 2:], y2[:, :6, 2:])  # backward channels see it


def test_fold_unfold_round_trip():
    x = torch.randn(2, 7, 3)
    f = fold(x, 2)
    assert f.shape == (2, 4, 6)
    torch.testing.assert_close(unfold(f, 2, 7), x)
    torch.testing.assert_close(f[0, 0], torch.cat([x[0, 0], x[0, 1]]))
