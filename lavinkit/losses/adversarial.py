"""Adversarial loss for VAE-GAN training: hinge / non-saturating losses, warm-up and the adaptive weight.

The discriminator switches on at ``disc_start`` (a global optimisation step): before it the generator
sees no adversarial term and the discriminator is neither run nor stepped. The generator's adversarial term
is scaled by the adaptive weight of Esser et al. (taming-transformers):

    w = ||grad_W L_rec|| / (||grad_W L_adv|| + eps),   W = last layer of the decoder,

computed in fp32 (bf16/fp16 gradient norms overflow or underflow and are the classic source of NaN at
``disc_start``) and clamped to ``[0, max_adaptive_weight]``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """``0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))``; logits of any shape."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def non_saturating_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """``0.5 * (mean softplus(-D(x)) + mean softplus(D(x_hat)))`` (binary cross-entropy on logits)."""
    return 0.5 * (F.softplus(-logits_real.float()).mean() + F.softplus(logits_fake.float()).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """``-mean D(x_hat)``."""
    return -logits_fake.float().mean()


def non_saturating_g_loss(logits_fake: Tensor) -> Tensor:
    """``mean softplus(-D(x_hat))`` = ``-mean log sigmoid(D(x_hat))``."""
    return F.softplus(-logits_fake.float()).mean()


_D_LOSSES = {"hinge": hinge_d_loss, "non_saturating": non_saturating_d_loss}
_G_LOSSES = {"hinge": hinge_g_loss, "non_saturating": non_saturating_g_loss}


def adaptive_weight(
    rec_loss: Tensor,
    g_loss: Tensor,
    last_layer: Tensor,
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> Tensor:
    """Adaptive generator weight ``clamp(||dL_rec/dW|| / (||dL_g/dW|| + eps), 0, max_weight)``.

    Args:
        rec_loss: scalar reconstruction (+ perceptual) loss that depends on ``last_layer``.
        g_loss: scalar generator adversarial loss that depends on ``last_layer``.
        last_layer: the decoder's last weight (e.g. ``STVAE.last_decoder_weight``).
        max_weight: upper clamp.
        eps: added to the denominator.

    Returns:
        detached fp32 scalar. Gradients are taken with ``retain_graph=True`` and do not touch ``.grad``.
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    with torch.autocast(device_type=rec_grad.device.type, enabled=False):
        weight = torch.linalg.vector_norm(rec_grad.float()) / (torch.linalg.vector_norm(g_grad.float()) + eps)
        weight = torch.nan_to_num(weight, nan=0.0, posinf=max_weight).clamp(0.0, max_weight)
    return weight.detach()


class AdversarialLoss(nn.Module):
    """Owns the discriminator and turns logits into weighted generator / discriminator terms.

    Args:
        discriminator: maps ``[B, 3, T, H, W]`` in [-1, 1] to patch logits (e.g.
            ``lavinkit.models.stvae.discriminator.PatchDiscriminator``).
        disc_start: first global step at which the adversarial terms are on.
        loss: ``"hinge"`` or ``"non_saturating"`` (for both the generator and the discriminator).
        generator_weight: multiplier of the generator term (on top of the adaptive weight).
        discriminator_weight: multiplier of the discriminator loss.
        adaptive: scale the generator term by :func:`adaptive_weight`; otherwise the weight is 1.
        max_adaptive_weight: clamp of the adaptive weight.
    """

    def __init__(
        self,
        discriminator: nn.Module,
        disc_start: int = 0,
        loss: Literal["hinge", "non_saturating"] = "hinge",
        generator_weight: float = 0.5,
        discriminator_weight: float = 1.0,
        adaptive: bool = True,
        max_adaptive_weight: float = 1e4,
    ) -> None:
        super().__init__()
        if loss not in _D_LOSSES:
            raise ValueError(f"AdversarialLoss: loss={loss!r}, expected one of {sorted(_D_LOSSES)}")
        if disc_start < 0:
            raise ValueError(f"AdversarialLoss: disc_start={disc_start} must be >= 0")
        if max_adaptive_weight <= 0:
            raise ValueError(f"AdversarialLoss: max_adaptive_weight={max_adaptive_weight} must be > 0")
        self.discriminator = discriminator
        self.disc_start = int(disc_start)
        self.loss = loss
        self.generator_weight = float(generator_weight)
        self.discriminator_weight = float(discriminator_weight)
        self.adaptive = adaptive
        self.max_adaptive_weight = float(max_adaptive_weight)

    def active(self, step: int) -> bool:
        """Whether the adversarial terms are on at global step ``step`` (the discriminator warm-up)."""
        return step >= self.disc_start

    def _frozen_logits(self, x: Tensor) -> Tensor:
        # The generator's view of D: gradients flow into x but not into D's parameters, so one backward
        # of (generator loss + discriminator loss) gives each model only its own gradient.
        params = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        return torch.func.functional_call(self.discriminator, params, (x,))

    def generator_terms(
        self, x_hat: Tensor, rec_loss: Tensor, last_layer: Tensor | None, step: int
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Generator adversarial term.

        Args:
            x_hat: reconstruction ``[B, 3, T, H, W]`` (with grad).
            rec_loss: scalar the adaptive weight balances against (reconstruction + perceptual).
            last_layer: decoder's last weight; required when ``adaptive``.
            step: global step (for the warm-up).

        Returns:
            ``(terms, stats)``: ``terms = {"g_adv": weighted loss}`` (empty before ``disc_start``) and
            ``stats = {"g_adv_raw", "adaptive_weight"}`` for logging.
        """
        if not self.active(step):
            return {}, {}
        g_loss = _G_LOSSES[self.loss](self._frozen_logits(x_hat))
        if self.adaptive:
            if last_layer is None:
                raise ValueError("AdversarialLoss(adaptive=True) needs the decoder's last layer weight")
            if torch.is_grad_enabled() and rec_loss.requires_grad:
                weight = adaptive_weight(rec_loss, g_loss, last_layer, self.max_adaptive_weight)
            else:  # validation / no-grad evaluation: no gradients to balance
                weight = torch.ones((), device=g_loss.device)
        else:
            weight = torch.ones((), device=g_loss.device)
        terms = {"g_adv": self.generator_weight * weight * g_loss}
        return terms, {"g_adv_raw": g_loss.detach(), "adaptive_weight": weight}

    def discriminator_terms(self, x: Tensor, x_hat: Tensor, step: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Discriminator loss on real ``x`` and detached ``x_hat`` (both ``[B, 3, T, H, W]``).

        Returns:
            ``(terms, stats)``: ``{"d_loss": weighted loss}`` (empty before ``disc_start``) and
            ``{"logits_real", "logits_fake"}`` means.
        """
        if not self.active(step):
            return {}, {}
        logits_real = self.discriminator(x.detach())
        logits_fake = self.discriminator(x_hat.detach())
        d_loss = _D_LOSSES[self.loss](logits_real, logits_fake)
        stats = {"logits_real": logits_real.detach().float().mean(), "logits_fake": logits_fake.detach().float().mean()}
        return {"d_loss": self.discriminator_weight * d_loss}, stats


__all__ = [
    "AdversarialLoss",
    "adaptive_weight",
    "hinge_d_loss",
    "hinge_g_loss",
    "non_saturating_d_loss",
    "non_saturating_g_loss",
]
