"""Loss components of the ST-VAE (and other pixel-space models); each returns named, weighted terms.

* :class:`ReconstructionLoss` — L1 / L2 (``rec_l1``, ``rec_l2``)
* :class:`KLLoss` — KL summed over all latent dims, batch mean (``kl``)
* :class:`PerceptualLoss` — LPIPS-style distance on a timm backbone, local weights only (``perceptual``)
* :class:`AdversarialLoss` — hinge / non-saturating GAN terms with warm-up (``disc_start``) and the fp32,
  clamped adaptive generator weight (``g_adv``, ``d_loss``)
"""

from lavinkit.losses.adversarial import (
    AdversarialLoss,
    adaptive_weight,
    hinge_d_loss,
    hinge_g_loss,
    non_saturating_d_loss,
    non_saturating_g_loss,
)
from lavinkit.losses.kl import KLLoss, gaussian_kl
from lavinkit.losses.perceptual import PerceptualLoss, load_state_dict_file
from lavinkit.losses.reconstruction import ReconstructionLoss, total

__all__ = [
    "AdversarialLoss",
    "KLLoss",
    "PerceptualLoss",
    "ReconstructionLoss",
    "adaptive_weight",
    "gaussian_kl",
    "hinge_d_loss",
    "hinge_g_loss",
    "load_state_dict_file",
    "non_saturating_d_loss",
    "non_saturating_g_loss",
    "total",
]
