"""ST-VAE building blocks: video group norm, SpatialNorm, causal resnet block, encoder and decoder.

All blocks take an optional streaming ``cache`` (see :mod:`lavinkit.nn.conv3d`) and return
``(output, cache_update)``. ``first`` tells the temporal resamplers and SpatialNorm whether the input starts
the clip (frame 0 is special: it is never paired in time) or continues it (a streamed chunk after the first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lavinkit.models.stvae.config import STVAEConfig
from lavinkit.nn.conv3d import Cache, CausalConv3d, Downsample, Upsample, merge_caches


def per_frame_group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None,
                         bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """GroupNorm of ``x`` ``[B, C, T, H, W]`` with statistics per (sample, group, frame) -> same shape."""
    b, c, t, h, w = x.shape
    xg = x.view(b, num_groups, c // num_groups, t, h, w)
    if xg.dtype in (torch.float16, torch.bfloat16):
        xg = xg.float()  # statistics in float32, like F.group_norm under autocast
    var, mean = torch.var_mean(xg, dim=(2, 4, 5), keepdim=True, correction=0)  # [B, G, 1, T, 1, 1]
    y = ((xg - mean) * torch.rsqrt(var + eps)).view(b, c, t, h, w).to(x.dtype)
    if weight is not None:
        y = torch.addcmul(bias.view(1, c, 1, 1, 1), y, weight.view(1, c, 1, 1, 1))
    return y


class VideoGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` over ``[B, C, T, H, W]``: statistics over all frames (official) or per frame.

    ``per_frame=True`` makes the norm causal in time (frame ``t`` only depends on frame ``t``); it equals the
    official norm for single frames.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-6, per_frame: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__(num_groups, num_channels, eps=eps, affine=True, device=device, dtype=dtype)
        self.per_frame = per_frame

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.per_frame and x.shape[2] > 1:
            return per_frame_group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def resize_latent(z: torch.Tensor, size: tuple[int, int, int], first: bool) -> torch.Tensor:
    """Nearest-resize latent-rate features ``z`` ``[B, C, t, h, w]`` to ``size`` = ``(T, H, W)``.

    Official SpatialNorm rule: when the target clip starts the video and has an odd ``T > 1``, frame 0 maps to
    frame 0 and frames ``1..`` to frames ``1..`` (so later latent frames never leak into the first frame);
    otherwise the whole tensor is resized at once. PyTorch's legacy nearest (``floor(dst * in / out)``).
    """
    if tuple(z.shape[-3:]) == tuple(size):
        return z
    t = size[0]
    if first and t > 1 and t % 2 == 1:
        head = F.interpolate(z[:, :, :1], size=(1, size[1], size[2]), mode="nearest")
        tail = F.interpolate(z[:, :, 1:], size=(t - 1, size[1], size[2]), mode="nearest")
        return torch.cat([head, tail], dim=2)
    return F.interpolate(z, size=tuple(size), mode="nearest")


def resize_time(z: torch.Tensor, t: int, first: bool) -> torch.Tensor:
    """Nearest-resize ``z`` ``[B, C, tz, h, w]`` along time only, with the rule of :func:`resize_latent`."""
    if z.shape[2] == t:
        return z
    h, w = z.shape[-2:]
    return resize_latent(z, (t, h, w), first)


class SpatialNorm(nn.Module):
    """Decoder norm conditioned on the decoder's input latent ``z``: ``GroupNorm(f) * scale(z') + shift(z')``.

    ``scale``/``shift`` are 1x1x1 convs of ``z`` resized (nearest) to ``f``'s size. Nearest resizing commutes
    with pointwise ops, so the convs and the GroupNorm affine run at latent resolution and the spatial
    upsampling is a broadcast over ``f`` viewed as ``[B, C, T, h, r, w, r]``: no full-resolution copy of the
    modulation is ever materialised (same values as the official resize-then-conv order).

    Args:
        f: ``[B, C, T, H, W]`` features; z: ``[B, C_lat, t, h, w]`` latent; first: clip start (see module doc).
    """

    def __init__(self, channels: int, latent_channels: int, groups: int = 32, eps: float = 1e-6,
                 per_frame: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        self.norm = VideoGroupNorm(groups, channels, eps=eps, per_frame=per_frame, device=device, dtype=dtype)
        self.to_scale = nn.Conv3d(latent_channels, channels, 1, device=device, dtype=dtype)
        self.to_shift = nn.Conv3d(latent_channels, channels, 1, device=device, dtype=dtype)

    def _normalize(self, f: torch.Tensor) -> torch.Tensor:
        n = self.norm
        if n.per_frame and f.shape[2] > 1:
            return per_frame_group_norm(f, n.num_groups, None, None, n.eps)
        return F.group_norm(f, n.num_groups, None, None, n.eps)

    def forward(self, f: torch.Tensor, z: torch.Tensor, first: bool = True) -> torch.Tensor:
        b, c, t, h, w = f.shape
        zh, zw = z.shape[-2:]
        weight = torch.cat([self.to_scale.weight, self.to_shift.weight], dim=0)  # [2C, C_lat, 1, 1, 1]
        bias = torch.cat([self.to_scale.bias, self.to_shift.bias], dim=0)
        mod = F.conv3d(z, weight, bias)  # [B, 2C, t, h, w] at latent resolution
        rh, rw = h // zh, w // zw
        if h != rh * zh or w != rw * zw or (rh & (rh - 1)) or (rw & (rw - 1)):
            scale, shift = resize_latent(mod, (t, h, w), first).chunk(2, dim=1)
            return torch.addcmul(shift, self.norm(f), scale)
        scale, shift = resize_time(mod, t, first).chunk(2, dim=1)  # [B, C, T, zh, zw] each
        gamma = self.norm.weight.view(1, c, 1, 1, 1)
        beta = self.norm.bias.view(1, c, 1, 1, 1)
        # (n * gamma + beta) * scale + shift == n * (gamma * scale) + (beta * scale + shift)
        mul = (scale * gamma).view(b, c, t, zh, 1, zw, 1)
        add = torch.addcmul(shift, scale, beta).view(b, c, t, zh, 1, zw, 1)
        n = self._normalize(f).view(b, c, t, zh, rh, zw, rw)
        return torch.addcmul(add, n, mul).view(b, c, t, h, w)


class ResnetBlock3d(nn.Module):
    """``x + conv2(act(norm2(conv1(act(norm1(x))))))`` with causal 3x3x3 convs.

    ``shortcut`` is a 1x1x1 conv when channels change. Norms are :class:`VideoGroupNorm` (encoder) or
    :class:`SpatialNorm` (decoder, when ``latent_channels`` is given).
    ``x [B, C_in, T, H, W] -> [B, C_out, T, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, groups: int, eps: float, dropout: float = 0.0,
                 latent_channels: int | None = None, spatial_norm_groups: int = 32, per_frame: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        if latent_channels is None:
            self.norm1 = VideoGroupNorm(groups, in_channels, eps=eps, per_frame=per_frame, **kw)
            self.norm2 = VideoGroupNorm(groups, out_channels, eps=eps, per_frame=per_frame, **kw)
        else:
            self.norm1 = SpatialNorm(in_channels, latent_channels, spatial_norm_groups, eps, per_frame, **kw)
            self.norm2 = SpatialNorm(out_channels, latent_channels, spatial_norm_groups, eps, per_frame, **kw)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, **kw)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, **kw)
        self.shortcut = nn.Conv3d(in_channels, out_channels, 1, **kw) if in_channels != out_channels else None

    def _norm(self, norm: nn.Module, x: torch.Tensor, z: torch.Tensor | None, first: bool) -> torch.Tensor:
        return norm(x) if z is None else norm(x, z, first)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None, first: bool = True,
                cache: Cache | None = None) -> tuple[torch.Tensor, Cache | None]:
        h = F.silu(self._norm(self.norm1, x, z, first), inplace=True)
        h, c1 = self.conv1(h, cache)
        h = F.silu(self._norm(self.norm2, h, z, first), inplace=True)
        h, c2 = self.conv2(self.dropout(h), cache)
        skip = x if self.shortcut is None else self.shortcut(x)
        return h.add_(skip), merge_caches(c1, c2)


class _Stage(nn.Module):
    """``blocks`` (resnets) followed by an optional ``downsample`` / ``upsample``."""

    def __init__(self, blocks: list[ResnetBlock3d]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class _Trunk(nn.Module):
    """Shared resnet runner with optional gradient checkpointing."""

    gradient_checkpointing: bool = False

    def _block(self, block: ResnetBlock3d, x: torch.Tensor, z: torch.Tensor | None, first: bool,
               cache: Cache | None, updates: list) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            x, c = checkpoint(block, x, z, first, cache, use_reentrant=False)
        else:
            x, c = block(x, z, first, cache)
        updates.append(c)
        return x


class Encoder(_Trunk):
    """``x [B, C_in, T, H, W] -> moments [B, 2 * latent, 1 + (T-1)/4, H/8, W/8]``."""

    def __init__(self, cfg: STVAEConfig, device=None, dtype=None) -> None:
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        ch = cfg.block_out_channels
        res = dict(groups=cfg.norm_num_groups, eps=cfg.norm_eps, dropout=cfg.dropout, per_frame=cfg.causal_norm)
        self.conv_in = CausalConv3d(cfg.in_channels, ch[0], 3, **kw)
        self.stages = nn.ModuleList()
        prev = ch[0]
        for i, c in enumerate(ch):
            stage = _Stage([ResnetBlock3d(prev if j == 0 else c, c, **res, **kw) for j in range(cfg.layers_per_block)])
            stage.downsample = Downsample(c, i < cfg.temporal_down_stages, **kw) if i < len(ch) - 1 else None
            self.stages.append(stage)
            prev = c
        self.mid = nn.ModuleList([ResnetBlock3d(ch[-1], ch[-1], **res, **kw) for _ in range(2)])
        self.norm_out = VideoGroupNorm(cfg.norm_num_groups, ch[-1], eps=cfg.norm_eps, per_frame=cfg.causal_norm, **kw)
        self.conv_out = CausalConv3d(ch[-1], 2 * cfg.latent_channels, 3, **kw)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> tuple[torch.Tensor, Cache | None]:
        first = not cache
        h, c = self.conv_in(x, cache)
        updates = [c]
        for stage in self.stages:
            for block in stage.blocks:
                h = self._block(block, h, None, first, cache, updates)
            if stage.downsample is not None:
                h = stage.downsample(h, first)
        for block in self.mid:
            h = self._block(block, h, None, first, cache, updates)
        h, c = self.conv_out(F.silu(self.norm_out(h), inplace=True), cache)
        updates.append(c)
        return h, merge_caches(*updates)


class Decoder(_Trunk):
    """``z [B, latent, t, h, w] -> x [B, C_out, 1 + 4(t-1), 8h, 8w]`` (SpatialNorm conditioned on ``z``)."""

    def __init__(self, cfg: STVAEConfig, device=None, dtype=None) -> None:
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        ch = list(reversed(cfg.block_out_channels))
        lat = cfg.latent_channels
        res = dict(groups=cfg.norm_num_groups, eps=cfg.norm_eps, dropout=cfg.dropout, latent_channels=lat,
                   spatial_norm_groups=cfg.spatial_norm_groups, per_frame=cfg.causal_norm)
        self.conv_in = CausalConv3d(lat, ch[0], 3, **kw)
        self.mid = nn.ModuleList([ResnetBlock3d(ch[0], ch[0], **res, **kw) for _ in range(2)])
        self.stages = nn.ModuleList()
        prev = ch[0]
        for i, c in enumerate(ch):
            stage = _Stage([ResnetBlock3d(prev if j == 0 else c, c, **res, **kw)
                            for j in range(cfg.layers_per_block + 1)])
            stage.upsample = Upsample(c, i < cfg.temporal_down_stages, **kw) if i < len(ch) - 1 else None
            self.stages.append(stage)
            prev = c
        self.norm_out = SpatialNorm(ch[-1], lat, cfg.spatial_norm_groups, cfg.norm_eps, cfg.causal_norm, **kw)
        self.conv_out = CausalConv3d(ch[-1], cfg.out_channels, 3, **kw)

    def forward(self, z: torch.Tensor, cache: Cache | None = None) -> tuple[torch.Tensor, Cache | None]:
        first = not cache
        h, c = self.conv_in(z, cache)
        updates = [c]
        for block in self.mid:
            h = self._block(block, h, z, first, cache, updates)
        for stage in self.stages:
            for block in stage.blocks:
                h = self._block(block, h, z, first, cache, updates)
            if stage.upsample is not None:
                h = stage.upsample(h, first)
        h, c = self.conv_out(F.silu(self.norm_out(h, z, first), inplace=True), cache)
        updates.append(c)
        return h, merge_caches(*updates)
