"""Embeddings: official patch layout, absolute spatial positions, sinusoidal timestep features."""

from __future__ import annotations

import math

import pytest
import torch

from lavinkit.nn.embed import (
    PatchEmbed,
    SpatialPositionEmbed,
    TimestepEmbedder,
    patchify,
    timestep_embedding,
    unpatchify,
)


def test_patchify_layout_and_round_trip():
    x = torch.randn(2, 3, 2, 4, 6)
    tok = patchify(x, (2, 2))
    assert tok.shape == (2, 2, 2, 3, 12)
    b, f, i, j, a, c, ch = 1, 1, 1, 2, 1, 0, 2
    assert tok[b, f, i, j, (a * 2 + c) * 3 + ch] == x[b, ch, f, i * 2 + a, j * 2 + c]
    torch.testing.assert_close(unpatchify(tok, (2, 2), 3), x, atol=0, rtol=0)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        patchify(torch.randn(1, 3, 1, 5, 4), (2, 2))


def test_timestep_embedding_cos_first_unscaled():
    t = torch.tensor([0.0, 0.5])
    emb = timestep_embedding(t, 8)
    freqs = [math.exp(-math.log(10000) * k / 4) for k in range(4)]
    expected = [math.cos(0.5 * f) for f in freqs] + [math.sin(0.5 * f) for f in freqs]
    torch.testing.assert_close(emb[1], torch.tensor(expected))
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))


def test_modules_shapes_and_meta():
    pe = PatchEmbed((2, 2), 4, 16)
    assert pe(torch.randn(2, 4, 3, 4, 4)).shape == (2, 3 * 2 * 2, 16)
    te = TimestepEmbedder(16, 32)
    assert te(torch.rand(3)).shape == (3, 16)
    assert PatchEmbed((2, 2), 4, 16, device="meta").proj.weight.is_meta


@pytest.mark.parametrize("height, width", [(8, 8), (4, 6), (16, 16)])
def test_spatial_positions_mirror_is_a_sign_flip_of_the_column_sines(height, width):
    """Coordinates span [-1, 1] on every grid: mirroring the columns negates the column sines, keeps the rest."""
    embed = SpatialPositionEmbed(32, num_bands=4, max_res=16)
    feats = embed.features(height, width).reshape(height, width, 2, 2, 4)  # [row, col, sin|cos, axis, band]
    mirrored = feats.flip(1)
    torch.testing.assert_close(mirrored[:, :, 0, 1], -feats[:, :, 0, 1], atol=1e-5, rtol=0)  # column sines
    torch.testing.assert_close(mirrored[:, :, 1, 1], feats[:, :, 1, 1], atol=1e-5, rtol=0)  # column cosines
    torch.testing.assert_close(mirrored[:, :, :, 0], feats[:, :, :, 0], atol=0, rtol=0)  # the row axis
    # every token of the grid has its own features (the embedding tells places apart)
    flat = embed.features(height, width)
    assert torch.cdist(flat, flat).add(torch.eye(height * width) * 1e3).min() > 1e-3
    assert embed(height, width).shape == (height * width, 32)
