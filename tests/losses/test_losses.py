"""Closed-form checks of the reconstruction, KL and adversarial losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lavinkit.losses import (
    AdversarialLoss,
    KLLoss,
    ReconstructionLoss,
    adaptive_weight,
    gaussian_kl,
    hinge_d_loss,
    hinge_g_loss,
    non_saturating_d_loss,
    non_saturating_g_loss,
    total,
)
from lavinkit.models.stvae.discriminator import NLayerDiscriminator, PatchDiscriminator
from lavinkit.models.stvae.distribution import DiagonalGaussian


def test_reconstruction_closed_form():
    x = torch.zeros(2, 3, 1, 4, 4)
    x_hat = torch.full_like(x, 0.5)
    terms = ReconstructionLoss(l1_weight=2.0, l2_weight=3.0)(x_hat, x)
    assert set(terms) == {"rec_l1", "rec_l2"}
    assert terms["rec_l1"].item() == pytest.approx(2.0 * 0.5)
    assert terms["rec_l2"].item() == pytest.approx(3.0 * 0.25)
    per_sample = ReconstructionLoss(reduction="sum_per_sample")(x_hat, x)["rec_l1"]
    assert per_sample.item() == pytest.approx(0.5 * 3 * 16)
    assert total(terms).item() == pytest.approx(2.0 * 0.5 + 3.0 * 0.25)


def test_reconstruction_rejects_bad_config_and_shapes():
    with pytest.raises(ValueError, match="l1_weight"):
        ReconstructionLoss(l1_weight=0.0, l2_weight=0.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        ReconstructionLoss()(torch.zeros(1, 3, 1, 4, 4), torch.zeros(1, 3, 1, 4, 8))


@pytest.mark.parametrize("shape", [(2, 4, 3, 3), (2, 4, 2, 3, 3)])
def test_kl_standard_normal_is_zero_and_sums_over_all_dims(shape):
    post = DiagonalGaussian(mean=torch.zeros(shape), logvar=torch.zeros(shape))
    assert KLLoss(weight=1.0)(post)["kl"].item() == 0.0
    # mean = 1, logvar = 0: KL = 0.5 per element, summed over every non-batch element
    mean = torch.ones(shape, requires_grad=True)
    post = DiagonalGaussian(mean=mean, logvar=torch.zeros(shape))
    numel = torch.tensor(shape[1:]).prod().item()
    kl = KLLoss(weight=0.1)(post)["kl"]
    assert kl.item() == pytest.approx(0.1 * 0.5 * numel)
    kl.backward()  # d/dmean (0.1 * mean_b sum 0.5 m^2) = 0.1 * m / B
    torch.testing.assert_close(mean.grad, torch.full(shape, 0.1 / shape[0]))
    torch.testing.assert_close(gaussian_kl(torch.ones(shape), torch.zeros(shape)), torch.full((shape[0],), 0.5 * numel))


def test_hinge_and_non_saturating_values():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, .5, 2] -> mean 5/6; relu(1 + fake) = [0, 1, 2] -> mean 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1.0))
    assert hinge_g_loss(fake).item() == pytest.approx(1 / 3)
    zeros = torch.zeros(4)
    log2 = torch.log(torch.tensor(2.0)).item()
    assert non_saturating_d_loss(zeros, zeros).item() == pytest.approx(log2)
    assert non_saturating_g_loss(zeros).item() == pytest.approx(log2)


def test_adaptive_weight_formula_and_clamp():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    rec = (3.0 * w).sum()  # grad (3, 3) -> norm 3*sqrt2
    g = (w * torch.tensor([1.0, 0.0])).sum()  # grad (1, 0) -> norm 1
    out = adaptive_weight(rec, g, w, max_weight=1e4, eps=0.0)
    assert out.item() == pytest.approx(3.0 * 2**0.5)
    assert not out.requires_grad and w.grad is None
    g_tiny = (1e-12 * w).sum()
    assert adaptive_weight(rec, g_tiny, w, max_weight=10.0, eps=0.0).item() == 10.0


def test_adaptive_weight_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 3, 3, padding=1)
    x = torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        assert y.dtype == torch.bfloat16
        rec = (y - 1.0).abs().mean()
        g = -(y * 1e3).mean()
        out = adaptive_weight(rec, g, conv.weight)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    rg = torch.autograd.grad(rec, conv.weight, retain_graph=True)[0].float()
    gg = torch.autograd.grad(g, conv.weight)[0].float()
    assert out.item() == pytest.approx((rg.norm() / (gg.norm() + 1e-4)).item(), rel=1e-5)


def test_adversarial_warmup_and_gradient_routing():
    torch.manual_seed(0)
    disc = PatchDiscriminator(image=NLayerDiscriminator(dims=2, base_channels=8, num_layers=2))
    adv = AdversarialLoss(disc, disc_start=5, loss="hinge", generator_weight=0.5)
    last = nn.Parameter(torch.randn(3, 3, 1, 1, 1))
    x = torch.rand(2, 3, 1, 16, 16) * 2 - 1
    x_hat = torch.nn.functional.conv3d(x, last)
    rec = (x_hat - x).abs().mean()
    assert adv.generator_terms(x_hat, rec, last, step=4) == ({}, {})
    assert adv.discriminator_terms(x, x_hat, step=4) == ({}, {})
    g_terms, g_stats = adv.generator_terms(x_hat, rec, last, step=5)
    d_terms, d_stats = adv.discriminator_terms(x, x_hat, step=5)
    assert set(g_terms) == {"g_adv"} and set(d_terms) == {"d_loss"}
    assert {"adaptive_weight", "g_adv_raw"} <= set(g_stats) and {"logits_real", "logits_fake"} <= set(d_stats)
    torch.testing.assert_close(g_terms["g_adv"], 0.5 * g_stats["adaptive_weight"] * g_stats["g_adv_raw"])
    # the generator term reaches the generator only, the discriminator loss the discriminator only
    g_terms["g_adv"].backward(retain_graph=True)
    assert all(p.grad is None for p in disc.parameters()) and last.grad is not None
    last.grad = None
    d_terms["d_loss"].backward()
    assert last.grad is None and all(p.grad is not None for p in disc.parameters())


def test_adversarial_config_errors():
    disc = PatchDiscriminator(image=NLayerDiscriminator(dims=2, base_channels=8, num_layers=1))
    with pytest.raises(ValueError, match="loss="):
        AdversarialLoss(disc, loss="wasserstein")
    with pytest.raises(ValueError, match="disc_start"):
        AdversarialLoss(disc, disc_start=-1)
