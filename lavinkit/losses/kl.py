"""KL regulariser of the ST-VAE posterior against N(0, I)."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn


class _HasKL(Protocol):
    def kl(self) -> Tensor: ...


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over ALL non-batch dims.

    Args:
        mean, logvar: ``[B, ...]`` (4-D image or 5-D video latents alike).

    Returns:
        ``[B]`` per-sample KL in fp32.
    """
    mean, logvar = mean.float(), logvar.float()
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(dim=1)


class KLLoss(nn.Module):
    """Weighted KL term ``weight * mean_b KL_b`` where ``KL_b`` sums over all latent dims.

    The posterior is any object with ``.kl() -> [B]`` (``lavinkit.models.stvae.DiagonalGaussian``);
    the per-sample KL already sums over channels, time, height and width, so the batch mean is the only
    reduction left (a mean over latent elements would silently rescale the weight with the latent size).

    Args:
        weight: multiplier of the KL term (``taming``/LDM VAEs use ~1e-6 with a per-element L1).
    """

    def __init__(self, weight: float = 1e-6) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"KLLoss: weight={weight} must be >= 0")
        self.weight = float(weight)

    def forward(self, posterior: _HasKL) -> dict[str, Tensor]:
        """Returns ``{"kl": weight * mean over the batch of posterior.kl()}`` (fp32 scalar)."""
        kl = posterior.kl()
        if kl.dim() != 1:
            raise ValueError(f"KLLoss: posterior.kl() must return [B], got shape {tuple(kl.shape)}")
        return {"kl": self.weight * kl.float().mean()}


__all__ = ["KLLoss", "gaussian_kl"]
