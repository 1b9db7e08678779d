"""Causal video convolutions with an explicit cache, and per-frame spatial/temporal resampling.

Every function here is stateless: a causal convolution takes the cache of the previous chunk as an argument
and returns the cache for the next one, so streaming a clip chunk by chunk is a pure function of its inputs
(no ``conv_cache`` attribute on the module, unlike diffusers' CogVideoX VAE).

Cache protocol (used by the ST-VAE blocks):

* ``cache=None``: whole-clip mode. Temporal padding replicates the first frame ``k_t - 1`` times in front of
  the clip (as the official LaVin-DiT ST-VAE does); no cache is produced.
* ``cache`` is a ``dict``: streaming mode. The padding is ``cache[key]`` (the last ``k_t - 1`` input frames of
  the previous chunk) or, when the key is absent (first chunk), the replicated first frame. The conv returns
  ``{key: last k_t - 1 frames of its padded input}`` for the next chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Cache = dict[str, torch.Tensor]


def merge_caches(*caches: Cache | None) -> Cache | None:
    """Union of cache updates; ``None`` when every part is ``None`` (whole-clip mode)."""
    out: Cache | None = None
    for c in caches:
        if c is not None:
            out = {} if out is None else out
            out.update(c)
    return out


def causal_time_pad(x: torch.Tensor, pad: int, past: torch.Tensor | None) -> torch.Tensor:
    """Prepend ``pad`` past frames to ``x`` ``[B, C, T, H, W]``: ``past`` or the replicated first frame.

    Returns ``[B, C, T + pad, H, W]``.
    """
    if pad == 0:
        return x
    if past is None:
        past = x[:, :, :1].expand(-1, -1, pad, -1, -1)
    elif past.shape[2] != pad:
        raise ValueError(f"causal cache holds {past.shape[2]} frames, the conv needs {pad}")
    return torch.cat([past, x], dim=2)


def _single_clip_on_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`conv3d` calls oneDNN itself: one float32 clip on CPU, a spatial kernel larger than 1x1,
    oneDNN built and enabled, no autocast.

    torch picks a CPU convolution backend per call (``use_mkldnn`` in ``aten/src/ATen/native/Convolution.cpp``):
    float32 inputs go to oneDNN when the batch is larger than 1, the kernel is larger than 3x3, or
    ``N * C * T * H > 20480``. Below that size a batch-1 3-D conv falls to ``slow_conv3d`` (an im2col copy of the
    whole input, then one GEMM): measured on one core, a 3x3x3 conv over ``[1, 32, 19, 32, 32]`` took 71 ms there
    and 9.8 ms in oneDNN. That size is the tiny ST-VAE's second level and every chunk of a chunked decode.
    Larger batches and bf16 inputs already reach oneDNN; 1x1 kernels stay with torch's choice (its native
    kernel is faster on small ones); under autocast ``F.conv3d`` must run so that autocast chooses the dtype.
    """
    return (
        x.shape[0] == 1
        and (weight.shape[-1] > 1 or weight.shape[-2] > 1)
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
    )


def conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: tuple[int, int, int] = (1, 1, 1),
    padding: tuple[int, int, int] = (0, 0, 0),
) -> torch.Tensor:
    """``F.conv3d`` (no groups, no dilation) that runs a single float32 CPU clip on oneDNN.

    ``x [B, C_in, T, H, W]``, ``weight [C_out, C_in, kt, kh, kw]``, ``bias [C_out]`` ->
    ``[B, C_out, T', H', W']``. The result equals ``F.conv3d`` up to float rounding (oneDNN sums in another
    order) and is differentiable; see ``_single_clip_on_onednn`` for when oneDNN is called directly.
    """
    if _single_clip_on_onednn(x, weight):
        return torch.mkldnn_convolution(x, weight, bias, list(padding), list(stride), [1, 1, 1], 1)
    return F.conv3d(x, weight, bias, stride, padding)


class CausalConv3d(nn.Conv3d):
    """3-D convolution, causal in time, "same" zero padding in space, stride 1.

    Parameters are stored exactly like ``nn.Conv3d`` (``weight [out, in, kt, kh, kw]``, ``bias [out]``).
    ``cache_key`` names this conv inside a streaming cache dict; the ST-VAE assigns it from the module path.

    Args:
        x: ``[B, C_in, T, H, W]``.
        cache: see the module docstring.

    Returns:
        ``(y, update)``: ``y [B, C_out, T, H, W]``; ``update`` is ``None`` in whole-clip mode, else
        ``{cache_key: [B, C_in, kt - 1, H, W]}``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int] = 3,
                 *, bias: bool = True, device=None, dtype=None) -> None:
        k = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        if k[1] % 2 == 0 or k[2] % 2 == 0:
            raise ValueError(f"CausalConv3d: spatial kernel sizes must be odd, got {k}")
        super().__init__(in_channels, out_channels, k, padding=(0, k[1] // 2, k[2] // 2), bias=bias,
                         device=device, dtype=dtype)
        self.time_pad = k[0] - 1
        self.cache_key = ""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return conv3d(input, weight, bias, self.stride, self.padding)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> tuple[torch.Tensor, Cache | None]:  # type: ignore[override]
        if self.time_pad == 0:
            return self._conv_forward(x, self.weight, self.bias), ({} if cache is not None else None)
        if cache is None and x.shape[2] == 1:
            # A single frame padded with copies of itself: every temporal tap sees the same frame, so the
            # conv equals a 1-frame conv with the taps summed (kt x fewer FLOPs for images).
            w = self.weight.sum(dim=2, keepdim=True)
            return self._conv_forward(x, w, self.bias), None
        past = None if cache is None else cache.get(self.cache_key)
        xp = causal_time_pad(x, self.time_pad, past)
        y = self._conv_forward(xp, self.weight, self.bias)
        if cache is None:
            return y, None
        return y, {self.cache_key: xp[:, :, -self.time_pad:].clone()}


class FrameConv2d(nn.Conv2d):
    """A 2-D convolution applied to every frame of ``[B, C, T, H, W]`` (weights stored as ``nn.Conv2d``).

    Runs as a ``(1, k, k)`` 3-D convolution (:func:`conv3d`), which avoids folding time into the batch (two
    copies).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return conv3d(x, self.weight.unsqueeze(2), self.bias, stride=(1, *self.stride), padding=(0, *self.padding))


def temporal_avg_pool(x: torch.Tensor, keep_first: bool) -> torch.Tensor:
    """Halve time by averaging consecutive frame pairs of ``x`` ``[B, C, T, H, W]``.

    ``keep_first``: frame 0 is kept as is and frames ``1..T-1`` are paired (``T -> 1 + (T-1)/2``), the
    official rule for an odd-length clip that starts a video. With ``keep_first=False`` all frames are paired
    (``T -> T/2``; T must be even). ``T == 1`` with ``keep_first`` is returned unchanged.
    """
    b, c, t, h, w = x.shape
    if keep_first:
        if t == 1:
            return x
        if t % 2 == 0:
            raise ValueError(f"temporal downsampling of a clip start needs an odd frame count, got {t}")
        rest = x[:, :, 1:].unflatten(2, ((t - 1) // 2, 2)).mean(dim=3)  # [B, C, (T-1)/2, H, W]
        return torch.cat([x[:, :, :1], rest], dim=2)
    if t % 2 == 1:
        raise ValueError(f"temporal downsampling of a continuation chunk needs an even frame count, got {t}")
    return x.unflatten(2, (t // 2, 2)).mean(dim=3)  # [B, C, T/2, H, W]


def temporal_nearest_up(x: torch.Tensor, keep_first: bool) -> torch.Tensor:
    """Double time (nearest) and space (nearest) of ``x`` ``[B, C, T, H, W]``.

    ``keep_first``: frame 0 is only upsampled in space and frames ``1..T-1`` are duplicated in time
    (``T -> 1 + 2(T-1)``); otherwise every frame is duplicated (``T -> 2T``).
    """
    if not keep_first:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    if x.shape[2] == 1:
        return F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
    first = F.interpolate(x[:, :, :1], scale_factor=(1.0, 2.0, 2.0), mode="nearest")
    rest = F.interpolate(x[:, :, 1:], scale_factor=2.0, mode="nearest")
    return torch.cat([first, rest], dim=2)


class Downsample(nn.Module):
    """Encoder downsampler: optional temporal pair-averaging, then a stride-2 3x3 conv per frame.

    Spatial padding is one zero column on the right and one zero row at the bottom (official).
    ``x [B, C, T, H, W] -> [B, C, T', H/2, W/2]``.
    """

    def __init__(self, channels: int, compress_time: bool, *, device=None, dtype=None) -> None:
        super().__init__()
        self.compress_time = compress_time
        self.conv = FrameConv2d(channels, channels, 3, stride=2, padding=0, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, first: bool = True) -> torch.Tensor:
        if self.compress_time:
            x = temporal_avg_pool(x, keep_first=first)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Decoder upsampler: nearest 2x (space, and time when ``compress_time``), then a 3x3 conv per frame.

    ``x [B, C, T, H, W] -> [B, C, T', 2H, 2W]``.
    """

    def __init__(self, channels: int, compress_time: bool, *, device=None, dtype=None) -> None:
        super().__init__()
        self.compress_time = compress_time
        self.conv = FrameConv2d(channels, channels, 3, stride=1, padding=1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, first: bool = True) -> torch.Tensor:
        if self.compress_time:
            x = temporal_nearest_up(x, keep_first=first)
        else:
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        return self.conv(x)
