"""``lavinkit.nn.conv3d.conv3d``: a single CPU clip runs on oneDNN, with ``F.conv3d``'s results and gradients."""

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from lavinkit.nn.conv3d import CausalConv3d, FrameConv2d, conv3d

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def _conv_kernels(fn) -> set[str]:
    """The aten convolution kernels ``fn()`` runs."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages() if "conv" in e.key and e.key.startswith("aten::")}


@pytest.mark.parametrize(
    "kernel, stride, padding",
    [((3, 3, 3), (1, 1, 1), (0, 1, 1)), ((1, 3, 3), (1, 2, 2), (0, 0, 0)), ((1, 1, 1), (1, 1, 1), (0, 0, 0))],
)
@pytest.mark.parametrize("batch", [1, 2])
def test_conv3d_equals_torch_forward_and_backward(kernel, stride, padding, batch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 8, 5, 9, 9, generator=g, requires_grad=True)
    w = torch.randn(6, 8, *kernel, generator=g, requires_grad=True)
    b = torch.randn(6, generator=g, requires_grad=True)
    ours, ref = conv3d(x, w, b, stride, padding), F.conv3d(x, w, b, stride, padding)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn(ref.shape, generator=g)
    for a, r in zip(torch.autograd.grad(ours, (x, w, b), grad), torch.autograd.grad(ref, (x, w, b), grad)):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-5)


@needs_onednn
def test_single_clip_runs_on_onednn_not_im2col(monkeypatch):
    """torch sends a small batch-1 float32 conv to ``slow_conv3d`` (im2col); the kit's convs call oneDNN."""
    x = torch.randn(1, 16, 5, 8, 8)  # N * C * T * H = 640, far below torch's oneDNN threshold
    causal, frame = CausalConv3d(16, 16, 3), FrameConv2d(16, 16, 3, padding=1)
    with torch.no_grad():
        assert "aten::slow_conv3d_forward" in _conv_kernels(lambda: F.conv3d(x, causal.weight, causal.bias))
        for fn in (lambda: causal(x), lambda: causal(x[:, :, :1]), lambda: frame(x)):
            kernels = _conv_kernels(fn)
            assert "aten::mkldnn_convolution" in kernels and "aten::slow_conv3d_forward" not in kernels, kernels
        # 1x1 kernels keep torch's choice
        assert "aten::mkldnn_convolution" not in _conv_kernels(lambda: conv3d(x, torch.randn(8, 16, 1, 1, 1)))
        # the user's switch is honoured
        monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
        assert "aten::mkldnn_convolution" not in _conv_kernels(lambda: causal(x))


def test_autocast_still_chooses_the_dtype():
    conv = CausalConv3d(4, 4, 3)
    x = torch.randn(1, 4, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x)[0].dtype == torch.bfloat16
    assert conv(x)[0].dtype == torch.float32
