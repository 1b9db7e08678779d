"""The LaVin-DiT spatial-temporal VAE: config presets, model, posterior, bounded-memory inference options."""

from lavinkit.models.stvae.config import PRESETS, STVAEConfig
from lavinkit.models.stvae.distribution import DiagonalGaussian
from lavinkit.models.stvae.model import STVAE
from lavinkit.models.stvae.tiling import ChunkingOptions, TilingOptions

__all__ = ["PRESETS", "STVAE", "ChunkingOptions", "DiagonalGaussian", "STVAEConfig", "TilingOptions"]
