"""Patch discriminators: shapes and image/clip routing."""

from __future__ import annotations

import pytest
import torch

from lavinkit.models.stvae.discriminator import NLayerDiscriminator, PatchDiscriminator


def test_patch_discriminator_routes_images_and_clips():
    torch.manual_seed(0)
    d = PatchDiscriminator(
        image=NLayerDiscriminator(dims=2, base_channels=8, num_layers=2),
        video=NLayerDiscriminator(dims=3, base_channels=8, num_layers=2),
    )
    img = d(torch.randn(2, 3, 1, 32, 32))
    clip = d(torch.randn(2, 3, 9, 32, 32))
    assert img.dim() == 4 and img.shape[:2] == (2, 1)
    assert clip.dim() == 5 and clip.shape[:2] == (2, 1) and clip.shape[2] >= 1
    img.mean().backward()
    assert all(p.grad is not None for p in d.image.parameters())
    assert all(p.grad is None for p in d.video.parameters())


def test_missing_branch_errors_name_the_option():
    d = PatchDiscriminator(image=NLayerDiscriminator(dims=2, base_channels=8, num_layers=1))
    with pytest.raises(ValueError, match="video"):
        d(torch.randn(1, 3, 5, 16, 16))
    with pytest.raises(ValueError, match="dims=2"):
        PatchDiscriminator(image=NLayerDiscriminator(dims=3, base_channels=8, num_layers=1))
