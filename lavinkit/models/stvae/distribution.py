"""Diagonal Gaussian posterior of the ST-VAE."""

from __future__ import annotations

import math

import torch

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class DiagonalGaussian:
    """``N(mean, diag(exp(logvar)))`` over latents ``[B, C, t, h, w]``.

    Build it from the encoder moments ``[B, 2C, t, h, w]`` (mean = first half of the channels, logvar = second
    half, clamped to ``[-30, 20]``) or from ``mean`` and ``logvar`` directly.

    Unlike the official implementation (which sums over dims 1..3 only and so returns ``[B, W]`` for video
    latents), :meth:`kl` and :meth:`nll` sum over ALL non-batch dims and return ``[B]``.
    """

    def __init__(self, moments: torch.Tensor | None = None, *, mean: torch.Tensor | None = None,
                 logvar: torch.Tensor | None = None) -> None:
        if moments is not None:
            if mean is not None or logvar is not None:
                raise ValueError("DiagonalGaussian: pass either moments or mean/logvar, not both")
            if moments.shape[1] % 2:
                raise ValueError(f"DiagonalGaussian: moments need an even channel count, got {tuple(moments.shape)}")
            mean, logvar = moments.chunk(2, dim=1)
        if mean is None or logvar is None:
            raise ValueError("DiagonalGaussian: need moments or both mean and logvar")
        if mean.shape != logvar.shape:
            raise ValueError(f"DiagonalGaussian: mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ")
        self.mean = mean
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> torch.Tensor:
        return torch.exp(self.logvar)

    @property
    def shape(self) -> torch.Size:
        return self.mean.shape

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """``mean + std * eps``, ``eps ~ N(0, I)`` drawn from ``generator`` (global RNG when ``None``)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).sum(dim=1)

    def kl(self, other: DiagonalGaussian | None = None) -> torch.Tensor:
        """``KL(self || other)`` (``other`` = standard normal when ``None``), summed per sample -> ``[B]``."""
        if other is None:
            return 0.5 * self._reduce(self.mean.pow(2) + self.var - 1.0 - self.logvar)
        return 0.5 * self._reduce(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar
        )

    def nll(self, sample: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of ``sample`` ``[B, C, t, h, w]``, summed per sample -> ``[B]``."""
        return 0.5 * self._reduce(math.log(2.0 * math.pi) + self.logvar + (sample - self.mean).pow(2) / self.var)

    def __repr__(self) -> str:
        return f"DiagonalGaussian(shape={tuple(self.mean.shape)}, dtype={self.mean.dtype})"
