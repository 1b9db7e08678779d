"""``STVAE``: the LaVin-DiT spatial-temporal VAE (4x8x8 compression, causal 3-D convs, SpatialNorm decoder).

Images are 1-frame clips. Plain PyTorch; no Lightning import.

    vae = STVAE(STVAEConfig.from_name("tiny"))
    post = vae.encode(x)                 # x [B, 3, 1 + 4k, H, W] in [-1, 1] -> DiagonalGaussian
    x_hat = vae.decode(post.sample())    # [B, latent, 1 + k, H/8, W/8] -> [B, 3, 1 + 4k, H, W]

Bounded-memory inference (diffusers-style switches, also usable per call through the explicit methods):

    vae.enable_chunking(chunk_frames=16)          # temporal chunks carrying the causal conv cache
    vae.enable_tiling(tile_size=256, overlap=64)  # spatial tiles blended over the overlap
    vae.enable_slicing()                          # one sample of the batch at a time
    vae.enable_official_tiling(512, 129)          # exactly the official tiled_encode / tiled_decode

See :mod:`lavinkit.models.stvae.tiling` for where chunked/tiled results differ from whole-clip ones.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from lavinkit.models.stvae.blocks import Decoder, Encoder
from lavinkit.models.stvae.config import STVAEConfig
from lavinkit.models.stvae.distribution import DiagonalGaussian
from lavinkit.models.stvae.tiling import (
    ChunkingOptions,
    TemporalMode,
    TilingOptions,
    cache_chunks,
    overlap_chunks,
    tiled_apply,
)
from lavinkit.nn.conv3d import CausalConv3d

KIND = "stvae"


class STVAE(nn.Module):
    """Spatial-temporal KL autoencoder.

    Args:
        config: an :class:`STVAEConfig` (or a preset name).
        device / dtype: where to build the parameters (``"meta"`` works for shape-only construction).
    """

    def __init__(self, config: STVAEConfig | str = "official", device=None, dtype=None) -> None:
        super().__init__()
        if isinstance(config, str):
            config = STVAEConfig.from_name(config)
        self.config = config
        self.encoder = Encoder(config, device=device, dtype=dtype)
        self.decoder = Decoder(config, device=device, dtype=dtype)
        lat = config.latent_channels
        self.quant_conv = nn.Conv3d(2 * lat, 2 * lat, 1, device=device, dtype=dtype) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv3d(lat, lat, 1, device=device, dtype=dtype) if config.use_post_quant_conv else None
        for name, module in self.named_modules():
            if isinstance(module, CausalConv3d):
                module.cache_key = name
        self.tiling: TilingOptions | None = None
        self.chunking: ChunkingOptions | None = None
        self.use_slicing = False
        self.check_inputs = True
        self.set_gradient_checkpointing(config.gradient_checkpointing)

    # ------------------------------------------------------------------ switches
    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute every resnet block during backward (saves activation memory in training)."""
        self.encoder.gradient_checkpointing = bool(enabled)
        self.decoder.gradient_checkpointing = bool(enabled)
        self.config.gradient_checkpointing = bool(enabled)

    def enable_tiling(self, tile_size: int = 256, overlap: int | None = None) -> None:
        """Spatial tiling for inputs larger than ``tile_size`` pixels (overlap defaults to ``tile_size // 4``)."""
        self.tiling = TilingOptions(tile_size, tile_size // 4 if overlap is None else overlap)

    def disable_tiling(self) -> None:
        self.tiling = None

    def enable_chunking(self, chunk_frames: int = 16, mode: TemporalMode = "cache") -> None:
        """Temporal chunking for clips longer than ``1 + chunk_frames`` frames (see ``tiling`` module doc)."""
        if chunk_frames % self.config.temporal_compression:
            raise ValueError(f"chunk_frames={chunk_frames} must be a multiple of temporal_compression="
                             f"{self.config.temporal_compression}")
        self.chunking = ChunkingOptions(chunk_frames, mode)

    def disable_chunking(self) -> None:
        self.chunking = None

    def enable_slicing(self) -> None:
        """Encode/decode one batch element at a time."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_official_tiling(self, tile_sample_min_size: int = 512, tile_sample_min_size_t: int = 129) -> None:
        """The official ``enable_tiling()`` with ``_init_tiling_params(S, S_t)``: overlapping temporal chunks
        of ``S_t`` frames and spatial tiles of ``S`` pixels, triggered when any size exceeds its limit."""
        self.tiling = TilingOptions.official(tile_sample_min_size)
        self.chunking = ChunkingOptions(int(tile_sample_min_size_t) - 1, "overlap")

    # ------------------------------------------------------------------ checks
    def _check_pixels(self, x: torch.Tensor) -> None:
        cfg = self.config
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"STVAE.encode: expected a tensor, got {type(x).__name__}")
        if x.ndim != 5:
            hint = " (an image batch [B, C, H, W] is x.unsqueeze(2))" if x.ndim == 4 else ""
            raise ValueError(f"STVAE.encode: expected x of shape [B, C, T, H, W], got {tuple(x.shape)}{hint}")
        if not x.is_floating_point():
            raise ValueError(f"STVAE.encode: expected float pixels in [-1, 1], got dtype {x.dtype} "
                             "(convert uint8 with x.float() / 127.5 - 1)")
        b, c, t, h, w = x.shape
        if c != cfg.in_channels:
            raise ValueError(f"STVAE.encode: x has {c} channels (dim 1) but the VAE expects in_channels="
                             f"{cfg.in_channels}; layout is [B, C, T, H, W]")
        tc = cfg.temporal_compression
        if t < 1 or (t - 1) % tc:
            raise ValueError(f"STVAE.encode: frame count T={t} is not 1 + {tc}k (e.g. 1, {1 + tc}, {1 + 2 * tc}); "
                             "pad or trim the clip")
        s = cfg.spatial_compression
        if h % s or w % s:
            raise ValueError(f"STVAE.encode: H={h} and W={w} must be multiples of {s}")
        if self.check_inputs and x.numel() and not torch.compiler.is_compiling():
            lo, hi = torch.aminmax(x.detach())
            lo, hi = float(lo), float(hi)
            if hi > 1.5 or lo < -1.5:
                if hi > 2.0 and lo >= 0.0:
                    raise ValueError(f"STVAE.encode: pixel values span [{lo:.3g}, {hi:.3g}]; this looks like uint8 "
                                     "0..255 passed as float; scale with x / 127.5 - 1")
                raise ValueError(f"STVAE.encode: pixel values span [{lo:.3g}, {hi:.3g}], far outside [-1, 1]")

    def _check_latents(self, z: torch.Tensor) -> None:
        cfg = self.config
        if not isinstance(z, torch.Tensor) or z.ndim != 5:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"STVAE.decode: expected latents of shape [B, C, t, h, w], got {shape}")
        if z.shape[1] != cfg.latent_channels:
            raise ValueError(f"STVAE.decode: latents have {z.shape[1]} channels but the VAE has latent_channels="
                             f"{cfg.latent_channels}")
        if not z.is_floating_point():
            raise ValueError(f"STVAE.decode: expected float latents, got {z.dtype}")

    # ------------------------------------------------------------------ core paths
    def _moments(self, x: torch.Tensor, cache=None):
        h, cache = self.encoder(x, cache)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        return h, cache

    def _pixels(self, z: torch.Tensor, cache=None):
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z, cache)

    def _encode_time(self, x: torch.Tensor, chunking: ChunkingOptions | None) -> torch.Tensor:
        """Moments of ``x`` ``[B, C, T, H, W]`` along time: whole, streamed with cache, or official overlap."""
        t = x.shape[2]
        if chunking is None:
            return self._moments(x)[0]
        if chunking.mode == "overlap":
            out = [self._moments(x[:, :, s:e])[0][:, :, (1 if k else 0):]
                   for k, (s, e) in enumerate(overlap_chunks(t, chunking.chunk_frames))]
            return torch.cat(out, dim=2)
        cache: dict = {}
        out = []
        for s, e in cache_chunks(t, chunking.chunk_frames):
            m, cache = self._moments(x[:, :, s:e], cache)
            out.append(m)
        return torch.cat(out, dim=2)

    def _decode_time(self, z: torch.Tensor, chunking: ChunkingOptions | None) -> torch.Tensor:
        t = z.shape[2]
        if chunking is None:
            return self._pixels(z)[0]
        stride = chunking.chunk_frames // self.config.temporal_compression
        if chunking.mode == "overlap":
            out = [self._pixels(z[:, :, s:e])[0][:, :, (1 if k else 0):]
                   for k, (s, e) in enumerate(overlap_chunks(t, stride))]
            return torch.cat(out, dim=2)
        cache: dict = {}
        out = []
        for s, e in cache_chunks(t, stride):
            y, cache = self._pixels(z[:, :, s:e], cache)
            out.append(y)
        return torch.cat(out, dim=2)

    def _plan(self, t: int, h: int, w: int, tile: int | None, frames: int | None,
              tiling: TilingOptions | None, chunking: ChunkingOptions | None):
        """Which of tiling / chunking apply to an input of ``t x h x w`` (in the units ``tile`` and ``frames``
        are given in). Official semantics in overlap mode: any trigger runs both loops."""
        spatial = tiling is not None and (h > tile or w > tile)
        temporal = chunking is not None and t > 1 + frames
        if chunking is not None and chunking.mode == "overlap" and (spatial or temporal):
            spatial, temporal = tiling is not None, True
        return (tiling if spatial else None), (chunking if temporal else None)

    def moments(self, x: torch.Tensor, *, tiling: TilingOptions | None = None,
                chunking: ChunkingOptions | None = None) -> torch.Tensor:
        """Encoder moments ``[B, 2 * latent, t, h, w]`` with explicit tiling/chunking (``None`` = off)."""
        s = self.config.spatial_compression
        t, h, w = x.shape[2:]
        tiling, chunking = self._plan(t, h, w, tiling.tile_size if tiling else None,
                                      chunking.chunk_frames if chunking else None, tiling, chunking)
        if tiling is None:
            return self._encode_time(x, chunking)
        return tiled_apply(lambda tile: self._encode_time(tile, chunking), x, tile_in=tiling.tile_size,
                           stride_in=tiling.tile_size - tiling.overlap, blend_out=tiling.overlap // s,
                           crop_out=(tiling.tile_size - tiling.overlap) // s)

    def pixels(self, z: torch.Tensor, *, tiling: TilingOptions | None = None,
               chunking: ChunkingOptions | None = None) -> torch.Tensor:
        """Decoder output ``[B, C_out, T, H, W]`` with explicit tiling/chunking (``None`` = off)."""
        tc, s = self.config.temporal_compression, self.config.spatial_compression
        t, h, w = z.shape[2:]
        tiling, chunking = self._plan(t, h, w, tiling.tile_size // s if tiling else None,
                                      chunking.chunk_frames // tc if chunking else None, tiling, chunking)
        if tiling is None:
            return self._decode_time(z, chunking)
        return tiled_apply(lambda tile: self._decode_time(tile, chunking), z, tile_in=tiling.tile_size // s,
                           stride_in=(tiling.tile_size - tiling.overlap) // s, blend_out=tiling.overlap,
                           crop_out=tiling.tile_size - tiling.overlap)

    # ------------------------------------------------------------------ public API
    def encode(self, x: torch.Tensor, *, tiling: TilingOptions | None | bool = True,
               chunking: ChunkingOptions | None | bool = True) -> DiagonalGaussian:
        """Posterior of ``x`` ``[B, C_in, 1 + 4k, H, W]`` in [-1, 1] -> latents ``[B, latent, 1 + k, H/8, W/8]``.

        ``tiling`` / ``chunking``: ``True`` = use the switches set by ``enable_tiling`` / ``enable_chunking``
        (off by default), ``False``/``None`` = off for this call, or explicit options.
        """
        self._check_pixels(x)
        tiling = self.tiling if tiling is True else (tiling or None)
        chunking = self.chunking if chunking is True else (chunking or None)
        if self.use_slicing and x.shape[0] > 1:
            m = torch.cat([self.moments(xi, tiling=tiling, chunking=chunking) for xi in x.split(1)], dim=0)
        else:
            m = self.moments(x, tiling=tiling, chunking=chunking)
        return DiagonalGaussian(m)

    def decode(self, z: torch.Tensor, *, tiling: TilingOptions | None | bool = True,
               chunking: ChunkingOptions | None | bool = True) -> torch.Tensor:
        """Pixels ``[B, C_out, 1 + 4(t-1), 8h, 8w]`` (not clamped) of latents ``z`` ``[B, latent, t, h, w]``."""
        self._check_latents(z)
        tiling = self.tiling if tiling is True else (tiling or None)
        chunking = self.chunking if chunking is True else (chunking or None)
        if self.use_slicing and z.shape[0] > 1:
            return torch.cat([self.pixels(zi, tiling=tiling, chunking=chunking) for zi in z.split(1)], dim=0)
        return self.pixels(z, tiling=tiling, chunking=chunking)

    def encode_chunked(self, x: torch.Tensor, chunk_frames: int = 16) -> DiagonalGaussian:
        """Stream ``x`` through the encoder ``chunk_frames`` frames at a time, carrying the causal cache."""
        return self.encode(x, tiling=None, chunking=ChunkingOptions(chunk_frames, "cache"))

    def decode_chunked(self, z: torch.Tensor, chunk_frames: int = 16) -> torch.Tensor:
        """Stream ``z`` through the decoder ``chunk_frames // 4`` latent frames at a time (causal cache)."""
        return self.decode(z, tiling=None, chunking=ChunkingOptions(chunk_frames, "cache"))

    def tiled_encode(self, x: torch.Tensor, tile_size: int = 256, overlap: int = 64,
                     chunk_frames: int | None = None) -> DiagonalGaussian:
        """Encode ``x`` in spatial tiles (and cache-carrying temporal chunks when ``chunk_frames`` is set)."""
        chunking = ChunkingOptions(chunk_frames, "cache") if chunk_frames else None
        return self.encode(x, tiling=TilingOptions(tile_size, overlap), chunking=chunking)

    def tiled_decode(self, z: torch.Tensor, tile_size: int = 256, overlap: int = 64,
                     chunk_frames: int | None = None) -> torch.Tensor:
        """Decode ``z`` in spatial tiles of ``tile_size`` output pixels (and temporal chunks when set)."""
        chunking = ChunkingOptions(chunk_frames, "cache") if chunk_frames else None
        return self.decode(z, tiling=TilingOptions(tile_size, overlap), chunking=chunking)

    def forward(self, x: torch.Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Reconstruction ``(x_hat [B, C_out, T, H, W], posterior)``; ``z`` sampled or the posterior mean."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """``(z - latent_shift) * latent_scale`` (what the J-DiT sees)."""
        return (z - self.config.latent_shift) * self.config.latent_scale

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize_latents`."""
        return z / self.config.latent_scale + self.config.latent_shift

    @property
    def last_decoder_weight(self) -> nn.Parameter:
        """Weight of the decoder's output conv (for the adaptive GAN loss weight)."""
        return self.decoder.conv_out.weight

    # ------------------------------------------------------------------ files
    def save_pretrained(self, path: str | Path) -> Path:
        """Write a safetensors weights file with the config in its metadata."""
        from lavinkit.models.io import save_pretrained

        return save_pretrained(path, KIND, dataclasses.asdict(self.config), self.state_dict())

    @classmethod
    def from_pretrained(cls, path: str | Path, use_ema: bool = True, device=None, dtype=None,
                        **overrides) -> STVAE:
        """Load a weights file or lavinkit training checkpoint (strict); ``overrides`` change config fields
        that do not affect parameters (e.g. ``causal_norm``, ``gradient_checkpointing``)."""
        from lavinkit.models.io import load_pretrained

        kind, config, state = load_pretrained(path, use_ema=use_ema)
        if kind != KIND:
            raise ValueError(f"{path}: holds a {kind!r} model, not an {KIND!r}")
        cfg = STVAEConfig.from_dict({**config, **overrides})
        model = cls(cfg, device=device, dtype=dtype)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: weights do not match the saved config: missing {sorted(missing)}, "
                             f"unexpected {sorted(unexpected)}")
        return model
