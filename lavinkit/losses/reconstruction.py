"""Pixel reconstruction loss (L1 / L2) for images and clips ``[B, C, T, H, W]``."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn


class ReconstructionLoss(nn.Module):
    """Weighted L1 and/or L2 distance between a reconstruction and its target.

    Args:
        l1_weight: weight of the mean absolute error (term ``"rec_l1"``); 0 switches it off.
        l2_weight: weight of the mean squared error (term ``"rec_l2"``); 0 switches it off.
        reduction: ``"mean"`` averages over every element; ``"sum_per_sample"`` sums over all non-batch
            dims and averages over the batch (the scale the KL term of ``taming``-style VAEs is tuned for).
    """

    def __init__(
        self,
        l1_weight: float = 1.0,
        l2_weight: float = 0.0,
        reduction: Literal["mean", "sum_per_sample"] = "mean",
    ) -> None:
        super().__init__()
        if l1_weight < 0 or l2_weight < 0 or (l1_weight == 0 and l2_weight == 0):
            raise ValueError(
                f"ReconstructionLoss: l1_weight={l1_weight}, l2_weight={l2_weight}; both must be >= 0 and one > 0"
            )
        if reduction not in ("mean", "sum_per_sample"):
            raise ValueError(f"ReconstructionLoss: reduction={reduction!r}, expected 'mean' or 'sum_per_sample'")
        self.l1_weight = float(l1_weight)
        self.l2_weight = float(l2_weight)
        self.reduction = reduction

    def _reduce(self, err: Tensor) -> Tensor:
        if self.reduction == "mean":
            return err.mean()
        return err.flatten(1).sum(dim=1).mean()

    def forward(self, x_hat: Tensor, x: Tensor) -> dict[str, Tensor]:
        """Args: ``x_hat``, ``x``: ``[B, C, T, H, W]`` (any shape with a leading batch dim).

        Returns:
            weighted terms ``{"rec_l1": scalar, "rec_l2": scalar}`` (only the enabled ones), computed in fp32.
        """
        if x_hat.shape != x.shape:
            raise ValueError(f"ReconstructionLoss: shape mismatch {tuple(x_hat.shape)} vs {tuple(x.shape)}")
        diff = x_hat.float() - x.float()
        terms: dict[str, Tensor] = {}
        if self.l1_weight > 0:
            terms["rec_l1"] = self.l1_weight * self._reduce(diff.abs())
        if self.l2_weight > 0:
            terms["rec_l2"] = self.l2_weight * self._reduce(diff.square())
        return terms


def total(terms: dict[str, Tensor]) -> Tensor:
    """Sum of the values of a dict of weighted scalar loss terms."""
    values = list(terms.values())
    if not values:
        raise ValueError("total(): no loss terms")
    out = values[0]
    for v in values[1:]:
        out = out + v
    return out


__all__ = ["ReconstructionLoss", "total"]
