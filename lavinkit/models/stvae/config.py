"""``STVAEConfig``: the validated ST-VAE configuration and its named presets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

OFFICIAL_LATENT_SHIFT = 0.032470703125
OFFICIAL_LATENT_SCALE = 1.08936170213


@dataclass
class STVAEConfig:
    """Architecture and latent normalisation of the spatial-temporal VAE.

    Symmetric stages; every stage but the last halves the spatial size (four stages: 8x, the official
    layout; three stages: 4x, for small images where 8x leaves too few latent pixels), the first
    ``log2(temporal_compression)`` encoder stages (and the two lowest-resolution decoder stages) change time.
    Clips have ``1 + temporal_compression * k`` frames; latents are ``[B, latent_channels, 1 + k, H/s, W/s]``
    with ``s = spatial_compression``.

    Attributes:
        name: preset name (informational).
        in_channels / out_channels: pixel channels.
        latent_channels: channels of the posterior mean (the encoder outputs twice as many: mean, logvar).
        block_out_channels: channels of the encoder stages (the decoder uses them reversed); 4 entries give
            8x spatial compression (official), 3 entries 4x.
        layers_per_block: resnets per encoder stage (decoder stages have one more).
        norm_num_groups: GroupNorm groups in the encoder.
        spatial_norm_groups: GroupNorm groups inside the decoder's SpatialNorms (hard-coded 32 officially).
        norm_eps: epsilon of every GroupNorm.
        temporal_compression: 4 (official) or 1 (image-only / frame-wise VAE).
        causal_norm: ``False`` = official GroupNorm over all frames of the clip. ``True`` = statistics per frame,
            which makes the encoder and decoder strictly causal: the first latent frame does not depend on
            later frames, and chunked (streamed) encode/decode equals whole-clip encode/decode to float
            tolerance. Not compatible with official weights' numerics for clips (identical for images).
        use_quant_conv / use_post_quant_conv: 1x1x1 convs on the moments / latents (off officially).
        dropout: dropout between the two convs of every resnet.
        latent_shift / latent_scale: ``normalize_latents(z) = (z - shift) * scale`` (official values default).
        gradient_checkpointing: recompute every resnet block in backward.
    """

    name: str = "custom"
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = (128, 256, 256, 512)
    layers_per_block: int = 3
    norm_num_groups: int = 32
    spatial_norm_groups: int = 32
    norm_eps: float = 1e-6
    temporal_compression: int = 4
    causal_norm: bool = False
    use_quant_conv: bool = False
    use_post_quant_conv: bool = False
    dropout: float = 0.0
    latent_shift: float = OFFICIAL_LATENT_SHIFT
    latent_scale: float = OFFICIAL_LATENT_SCALE
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        where = f"STVAEConfig({self.name!r})"
        for fname in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups",
                      "spatial_norm_groups"):
            v = getattr(self, fname)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{where}: {fname} must be a positive int, got {v!r}")
        if len(self.block_out_channels) not in (3, 4):
            raise ValueError(
                f"{where}: block_out_channels must have 4 entries (8x spatial compression, official) or 3 "
                f"(4x), got {self.block_out_channels}"
            )
        for i, c in enumerate(self.block_out_channels):
            if c % self.norm_num_groups:
                raise ValueError(
                    f"{where}: block_out_channels[{i}]={c} is not a multiple of norm_num_groups={self.norm_num_groups}"
                )
            if c % self.spatial_norm_groups:
                raise ValueError(
                    f"{where}: decoder channels must be multiples of spatial_norm_groups={self.spatial_norm_groups} "
                    f"(the decoder's SpatialNorm group norm), block_out_channels[{i}]={c} is not"
                )
        if self.temporal_compression not in (1, 4):
            raise ValueError(f"{where}: temporal_compression must be 4 or 1, got {self.temporal_compression!r}")
        if not (0.0 < self.norm_eps < 1.0):
            raise ValueError(f"{where}: norm_eps must be in (0, 1), got {self.norm_eps!r}")
        if not (0.0 <= self.dropout < 1.0):
            raise ValueError(f"{where}: dropout must be in [0, 1), got {self.dropout!r}")
        if not math.isfinite(self.latent_scale) or self.latent_scale == 0.0:
            raise ValueError(f"{where}: latent_scale must be finite and non-zero, got {self.latent_scale!r}")
        if not math.isfinite(self.latent_shift):
            raise ValueError(f"{where}: latent_shift must be finite, got {self.latent_shift!r}")

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent along H and W (8 with four stages, 4 with three)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def temporal_down_stages(self) -> int:
        """Number of encoder (and decoder) stages that halve (double) time."""
        return int(math.log2(self.temporal_compression))

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, t, h, w)`` of the latent of a ``frames x height x width`` clip."""
        s, tc = self.spatial_compression, self.temporal_compression
        return self.latent_channels, 1 + (frames - 1) // tc, height // s, width // s

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> STVAEConfig:
        """A named preset (``official``, ``small``, ``tiny``) with field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown STVAE preset {name!r}; choose from {', '.join(sorted(PRESETS))}")
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(overrides) - fields)
        if bad:
            raise ValueError(f"STVAEConfig.from_name({name!r}): unknown option(s) {bad}; valid: {sorted(fields)}")
        return cls(**{**PRESETS[name], "name": name, **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> STVAEConfig:
        """Inverse of ``dataclasses.asdict`` (unknown keys are an error naming them)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(data) - fields)
        if bad:
            raise ValueError(f"STVAEConfig: unknown option(s) {bad} in saved config")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # The released LaVin-DiT ST-VAE (215.6 M parameters).
    "official": dict(block_out_channels=(128, 256, 256, 512), layers_per_block=3, latent_channels=16),
    # A mid-size VAE for single-GPU experiments (~20 M parameters).
    "small": dict(block_out_channels=(64, 128, 128, 256), layers_per_block=2, latent_channels=16),
    # Tests and CPU demo recipes (~1.3 M parameters).
    "tiny": dict(block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=16),
    # CPU demo recipes on 64 px images: 4x spatial compression keeps 16 x 16 latents (8x leaves 8 x 8,
    # too coarse to reconstruct the demo photos above ~20 dB PSNR).
    "demo": dict(block_out_channels=(64, 64, 64), layers_per_block=1, latent_channels=16),
}
