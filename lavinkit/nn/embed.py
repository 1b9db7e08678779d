"""Embeddings: latent patchify/unpatchify, token patch embedding, absolute spatial positions, sinusoidal
timestep embedding."""

from __future__ import annotations

import math

import torch
from timm.layers import build_fourier_pos_embed
from torch import nn


def patchify(x: torch.Tensor, patch_size: tuple[int, int]) -> torch.Tensor:
    """Latents ``[B, C, T, H, W]`` -> tokens ``[B, T, H/pH, W/pW, pH*pW*C]``, features ordered (pH, pW, C).

    Token ``[b, f, i, j]`` feature ``(a*pW + c)*C + ch`` holds ``x[b, ch, f, i*pH + a, j*pW + c]`` (official layout).
    """
    b, c, t, h, w = x.shape
    ph, pw = patch_size
    if h % ph or w % pw:
        raise ValueError(f"latent height/width {h}x{w} must be multiples of the patch size {ph}x{pw}")
    x = x.reshape(b, c, t, h // ph, ph, w // pw, pw)  # [B, C, T, H', pH, W', pW]
    return x.permute(0, 2, 3, 5, 4, 6, 1).reshape(b, t, h // ph, w // pw, ph * pw * c)


def unpatchify(tokens: torch.Tensor, patch_size: tuple[int, int], channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, T, H', W', pH*pW*C]`` -> ``[B, C, T, H'*pH, W'*pW]``."""
    b, t, hp, wp, _ = tokens.shape
    ph, pw = patch_size
    x = tokens.reshape(b, t, hp, wp, ph, pw, channels)  # [B, T, H', W', pH, pW, C]
    return x.permute(0, 6, 1, 2, 4, 3, 5).reshape(b, channels, t, hp * ph, wp * pw)


class PatchEmbed(nn.Module):
    """``Linear(pH*pW*C -> D)`` then ``LayerNorm(D)`` on patchified latents.

    Input ``[B, C, T, H, W]`` latents; output ``[B, T*H'*W', D]`` tokens (frame, row, column order).
    A Linear (not a strided conv) keeps the official ``(pH, pW, C)`` weight layout.
    """

    def __init__(self, patch_size: tuple[int, int], in_channels: int, hidden_size: int, device=None, dtype=None):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Linear(patch_size[0] * patch_size[1] * in_channels, hidden_size, device=device, dtype=dtype)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-5, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = patchify(x, self.patch_size).flatten(1, 3)  # [B, T*H'*W', pH*pW*C]
        return self.norm(self.proj(tokens))


class SpatialPositionEmbed(nn.Module):
    """Absolute (row, column) position of every token of a frame, as an additive embedding.

    Fourier features (timm's ``build_fourier_pos_embed``: sines and cosines) of coordinates spread evenly over
    [-1, 1] on each axis, at ``num_bands`` log-spaced frequencies from ``pi / 2`` (one monotonic quarter wave
    across the frame, so the left and right borders differ) to ``pi / 2 * max_res``, then
    ``Linear(4 * num_bands -> D)``. The coordinates are relative to the grid, so a token keeps its place (centre,
    left border ...) at every resolution, and a left-right mirror is ``x -> -x``: the sine features of the column
    change sign and the cosines stay, one fixed linear map. Rotary embeddings only see offsets between tokens,
    which cannot express such a map.

    Args:
        hidden_size: token width D.
        num_bands: frequencies per axis.
        max_res: ratio of the highest frequency to the lowest.
    """

    def __init__(self, hidden_size: int, num_bands: int = 16, max_res: int = 64, device=None, dtype=None):
        super().__init__()
        self.num_bands = int(num_bands)
        self.max_res = int(max_res)
        self.proj = nn.Linear(4 * self.num_bands, hidden_size, device=device, dtype=dtype)

    def features(self, height: int, width: int, device=None) -> torch.Tensor:
        """``[height * width, 4 * num_bands]`` float32 features, row-major: sines then cosines, row axis first."""
        bands = math.pi / 2 * torch.logspace(0, math.log2(self.max_res), self.num_bands, base=2, device=device)
        sin, cos = build_fourier_pos_embed([height, width], bands=bands, in_pixels=True)  # each [H, W, 2, bands]
        return torch.cat([sin, cos], dim=-2).reshape(height * width, 4 * self.num_bands)

    def forward(self, height: int, width: int) -> torch.Tensor:
        """``[height * width, D]`` embedding of a ``height x width`` token grid (add it to every frame)."""
        feats = self.features(height, width, device=self.proj.weight.device)
        return self.proj(feats.to(self.proj.weight.dtype))


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of flow time ``t`` (``[B]``, used as is, no x1000): ``[B, dim]``, cos first.

    ``freq_k = exp(-ln(max_period) * k / (dim/2))``; features ``[cos(t*freq), sin(t*freq)]``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """``timestep_embedding`` -> ``Linear -> SiLU -> Linear``: ``t [B]`` -> ``[B, D]``."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256, device=None, dtype=None):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size, device=device, dtype=dtype),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, device=device, dtype=dtype),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.frequency_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(emb)
