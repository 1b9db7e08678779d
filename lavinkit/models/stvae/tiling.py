"""Bounded-memory ST-VAE inference: temporal chunking and spatial tiling (pure functions).

Two temporal strategies, both stepping ``chunk_frames`` pixel frames (``chunk_frames / 4`` latent frames):

* ``"cache"`` (default): the clip is streamed in consecutive chunks (the first one ``1 + chunk_frames`` frames,
  then ``chunk_frames`` each) and every causal conv receives the last frames of the previous chunk through an
  explicit cache. Convolutions and temporal resampling then see exactly what they see on the whole clip, so
  with ``causal_norm=True`` the result equals whole-clip encoding/decoding to float tolerance. With the
  official all-frames GroupNorm each chunk normalises with its own statistics (see "Differences" below).
* ``"overlap"``: the official LaVin-DiT algorithm: chunks of ``chunk_frames + 1`` frames overlapping by one
  frame, each processed independently (no cache, first frame replicated); the first output frame of every
  chunk but the first is dropped.

Spatial tiling (official algorithm): tiles of ``tile_size`` pixels start every ``tile_size - overlap`` pixels
(``range(0, size, stride)``); each tile is processed alone; in row-major order a tile is blended with the tile
above over its first ``e`` rows and then with the tile on its left over its first ``e`` columns (weights
``y / e`` for the tile, ``1 - y / e`` for the neighbour's last ``e`` rows/cols, neighbours already blended),
``e = min(overlap in output units, both tile sizes)``; tiles are then cropped to their first
``tile - overlap`` output rows/cols and concatenated. ``LaVin-DiT``'s ``tile_sample_min_size = S`` equals
``tile_size = S, overlap = S - int(0.75 * S)`` (``S`` a multiple of 32).

Differences from whole-clip results (README section):

* Temporal chunks with ``"cache"`` and ``causal_norm=True``: identical up to float rounding (~1e-6).
* Temporal chunks with ``"cache"`` and the official GroupNorm (``causal_norm=False``): the norm statistics
  of every chunk come from that chunk only, so every frame differs slightly from the whole-clip output (the
  first chunk too, because the whole-clip statistics also include later frames).
* ``"overlap"`` chunks: each chunk restarts the causal padding (replicated first frame) and its own norm
  statistics, and its first frame is computed as if it started a video (no temporal pairing); the overlap
  frame hides the seam, but frames near chunk starts differ the most.
* Spatial tiles: every tile sees zero padding at its own borders and its own norm statistics; the linear
  blend over the overlap hides seams but does not make the result equal to the untiled one, for any norm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

TemporalMode = Literal["cache", "overlap"]


@dataclass(frozen=True)
class TilingOptions:
    """Spatial tile size and overlap, in pixels (both multiples of the VAE's spatial factor, 8)."""

    tile_size: int = 256
    overlap: int = 64

    def __post_init__(self) -> None:
        if self.tile_size <= 0 or self.tile_size % 8:
            raise ValueError(f"tiling: tile_size must be a positive multiple of 8 pixels, got {self.tile_size}")
        if self.overlap < 0 or self.overlap % 8:
            raise ValueError(f"tiling: overlap must be a non-negative multiple of 8 pixels, got {self.overlap}")
        if self.tile_size <= self.overlap:
            raise ValueError(
                f"tiling: tile_size ({self.tile_size}) must be larger than overlap ({self.overlap}); tiles would "
                "not advance"
            )

    @classmethod
    def official(cls, tile_sample_min_size: int) -> TilingOptions:
        """The tiles of LaVin-DiT's ``tile_sample_min_size`` with its fixed 0.25 overlap factor."""
        s = int(tile_sample_min_size)
        return cls(tile_size=s, overlap=s - int(0.75 * s))


@dataclass(frozen=True)
class ChunkingOptions:
    """Temporal chunking: ``chunk_frames`` pixel frames per step (a multiple of the temporal compression)."""

    chunk_frames: int = 16
    mode: TemporalMode = "cache"

    def __post_init__(self) -> None:
        if self.chunk_frames <= 0 or self.chunk_frames % 4:
            raise ValueError(f"chunking: chunk_frames must be a positive multiple of 4, got {self.chunk_frames}")
        if self.mode not in ("cache", "overlap"):
            raise ValueError(f"chunking: mode must be 'cache' or 'overlap', got {self.mode!r}")


def cache_chunks(t: int, stride: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, end)`` chunks of ``t`` frames: ``[0, 1 + stride)``, then ``stride`` each."""
    bounds, start = [], 0
    end = min(t, 1 + stride)
    while start < t:
        bounds.append((start, end))
        start, end = end, min(t, end + stride)
    return bounds


def overlap_chunks(t: int, stride: int) -> list[tuple[int, int]]:
    """Official chunks: starts every ``stride`` frames, each runs one frame into the next chunk."""
    starts = list(range(0, t, stride))
    if len(starts) == 1:
        return [(0, t)]
    bounds = [[starts[i], starts[i + 1] + 1] for i in range(len(starts) - 1)]
    if bounds[-1][1] > t:
        bounds[-1][1] = t
    elif bounds[-1][1] < t:
        bounds.append([starts[-1], t])
    return [(s, e) for s, e in bounds]


def _ramp(e: int, like: torch.Tensor) -> torch.Tensor:
    return torch.arange(e, device=like.device, dtype=like.dtype) / e


def blend_v(above: torch.Tensor, tile: torch.Tensor, extent: int) -> torch.Tensor:
    """Blend the last rows of ``above`` into the first rows of ``tile`` (``[B, C, T, H, W]``); new tensor."""
    e = min(above.shape[3], tile.shape[3], extent)
    if e == 0:
        return tile
    w = _ramp(e, tile).view(e, 1)
    mixed = above[:, :, :, -e:, :] * (1 - w) + tile[:, :, :, :e, :] * w
    return torch.cat([mixed, tile[:, :, :, e:, :]], dim=3)


def blend_h(left: torch.Tensor, tile: torch.Tensor, extent: int) -> torch.Tensor:
    """Blend the last columns of ``left`` into the first columns of ``tile``; new tensor."""
    e = min(left.shape[4], tile.shape[4], extent)
    if e == 0:
        return tile
    w = _ramp(e, tile)
    mixed = left[:, :, :, :, -e:] * (1 - w) + tile[:, :, :, :, :e] * w
    return torch.cat([mixed, tile[:, :, :, :, e:]], dim=4)


def tiled_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, tile_in: int, stride_in: int,
                blend_out: int, crop_out: int) -> torch.Tensor:
    """Run ``fn`` on overlapping spatial tiles of ``x`` ``[B, C, T, H, W]`` and blend the outputs.

    Args:
        fn: per-tile function ``[B, C, T, h, w] -> [B, C', T', h * r, w * r]``.
        tile_in / stride_in: tile size and step in input units.
        blend_out / crop_out: blend extent and kept size per tile in output units.

    Returns:
        ``[B, C', T', H * r, W * r]``.
    """
    h, w = x.shape[-2:]
    rows = [[fn(x[:, :, :, i:i + tile_in, j:j + tile_in]) for j in range(0, w, stride_in)]
            for i in range(0, h, stride_in)]
    for i, row in enumerate(rows):
        for j in range(len(row)):
            if i > 0:
                row[j] = blend_v(rows[i - 1][j], row[j], blend_out)
            if j > 0:
                row[j] = blend_h(row[j - 1], row[j], blend_out)
    return torch.cat([torch.cat([t[:, :, :, :crop_out, :crop_out] for t in row], dim=4) for row in rows], dim=3)
