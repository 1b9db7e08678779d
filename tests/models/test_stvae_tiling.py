"""Bounded-memory ST-VAE inference: temporal chunks (causal cache / official overlap) and spatial tiles."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lavinkit.models.stvae import STVAE, ChunkingOptions, STVAEConfig, TilingOptions
from lavinkit.models.stvae.tiling import cache_chunks, overlap_chunks, tiled_apply


def tiny(**overrides) -> STVAE:
    torch.manual_seed(0)
    return STVAE(STVAEConfig.from_name("tiny", **overrides)).eval()


def noise(*shape, seed=0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_chunk_bounds():
    assert cache_chunks(13, 4) == [(0, 5), (5, 9), (9, 13)]
    assert cache_chunks(4, 1) == [(0, 2), (2, 3), (3, 4)]
    assert cache_chunks(1, 4) == [(0, 1)]
    assert overlap_chunks(9, 4) == [(0, 5), (4, 9)]
    assert overlap_chunks(3, 1) == [(0, 2), (1, 3)]
    assert overlap_chunks(5, 8) == [(0, 5)]


@pytest.mark.parametrize("chunk_frames", [4, 8])
def test_chunked_equals_whole_with_causal_norm(chunk_frames):
    vae = tiny(causal_norm=True)
    x = noise(1, 3, 13, 16, 16)
    with torch.no_grad():
        whole = vae.encode(x)
        chunked = vae.encode_chunked(x, chunk_frames)
        torch.testing.assert_close(chunked.mean, whole.mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(chunked.logvar, whole.logvar, atol=1e-5, rtol=1e-5)
        dec_whole = vae.decode(whole.mean)
        dec_chunked = vae.decode_chunked(whole.mean, chunk_frames)
    torch.testing.assert_close(dec_chunked, dec_whole, atol=1e-5, rtol=1e-5)


def test_chunking_switch_and_official_norm_difference():
    """With the official all-frames GroupNorm chunks differ from the whole clip (documented), but stay close."""
    vae = tiny(causal_norm=False)
    x = noise(1, 3, 13, 16, 16)
    with torch.no_grad():
        whole = vae.encode(x).mean
        vae.enable_chunking(4)
        chunked = vae.encode(x).mean
        assert vae.encode(x, chunking=False).mean.equal(whole)
    assert chunked.shape == whole.shape
    assert 1e-4 < (chunked - whole).abs().max()


def test_short_clip_is_not_chunked():
    vae = tiny()
    x = noise(1, 3, 5, 16, 16)
    with torch.no_grad():
        whole = vae.encode(x).mean
        vae.enable_chunking(4)
        assert vae.encode(x).mean.equal(whole)


def test_overlap_mode_shapes():
    vae = tiny()
    vae.enable_chunking(4, mode="overlap")
    x = noise(1, 3, 9, 16, 16)
    with torch.no_grad():
        z = vae.encode(x).mean
        assert z.shape == (1, 16, 3, 2, 2)
        assert vae.decode(z).shape == x.shape


def test_tiled_apply_is_exact_for_pointwise_maps():
    x = torch.randn(1, 2, 3, 5, 7)
    up = F.interpolate(x, scale_factor=(1, 8, 8))
    for overlap in (0, 8, 16):
        out = tiled_apply(lambda t: F.interpolate(t, scale_factor=(1, 8, 8)), x, tile_in=3,
                          stride_in=3 - overlap // 8, blend_out=overlap, crop_out=24 - overlap)
        torch.testing.assert_close(out, up, atol=1e-6, rtol=0)


def test_tiled_vs_untiled_error_bound():
    """Random-weight tiny VAE: tiles see their own GroupNorm statistics and zero borders, so results differ;
    the blended overlap must reduce the error of independent tiles and keep it bounded."""
    vae = tiny()
    x = noise(1, 3, 1, 64, 64)
    with torch.no_grad():
        z = vae.encode(x).mean
        full = vae.decode(z)
        errors = {ov: rel(vae.tiled_decode(z, 32, ov), full) for ov in (0, 16)}
        enc = vae.tiled_encode(x, 32, 16).mean
        tiled = vae.tiled_decode(z, 32, 16)
        top_left = vae.decode(z[:, :, :, :4, :4])
    assert enc.shape == z.shape and tiled.shape == full.shape
    assert errors[16] < errors[0] < 0.7
    assert rel(enc, z) < 1.0
    # the first tile is never blended: its kept region is that tile decoded on its own
    torch.testing.assert_close(tiled[..., :16, :16], top_left[..., :16, :16])


def test_tiling_thresholds():
    vae = tiny()
    x = noise(1, 3, 1, 32, 32)
    with torch.no_grad():
        ref = vae.encode(x).mean
        vae.enable_tiling(32, 8)
        assert vae.encode(x).mean.equal(ref)  # fits in one tile: untouched
        vae.enable_tiling(16, 8)
        assert not vae.encode(x).mean.equal(ref)


def test_tiling_with_cache_chunks_shapes():
    vae = tiny(causal_norm=True)
    x = noise(1, 3, 9, 24, 16)
    with torch.no_grad():
        z = vae.tiled_encode(x, 16, 8, chunk_frames=4).mean
        assert z.shape == (1, 16, 3, 3, 2)
        assert vae.tiled_decode(z, 16, 8, chunk_frames=4).shape == x.shape


@pytest.mark.parametrize(("tile", "overlap", "message"), [
    (32, 32, "tile_size \\(32\\) must be larger than overlap \\(32\\)"),
    (16, 24, "must be larger than overlap"),
    (30, 8, "multiple of 8"),
    (32, 4, "overlap must be a non-negative multiple of 8"),
])
def test_bad_tiling_options(tile, overlap, message):
    with pytest.raises(ValueError, match=message):
        tiny().enable_tiling(tile, overlap)


def test_bad_chunking_options():
    with pytest.raises(ValueError, match="chunk_frames must be a positive multiple of 4"):
        ChunkingOptions(6)
    with pytest.raises(ValueError, match="mode must be 'cache' or 'overlap'"):
        ChunkingOptions(4, "sliding")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="larger than overlap"):
        TilingOptions(8, 8)


def test_slicing_matches_batch():
    vae = tiny()
    x = noise(2, 3, 5, 16, 16)
    with torch.no_grad():
        ref = vae.encode(x).mean
        vae.enable_slicing()
        torch.testing.assert_close(vae.encode(x).mean, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(vae.decode(ref), (vae.disable_slicing(), vae.decode(ref))[1], atol=1e-5, rtol=1e-5)


def test_cache_is_not_module_state():
    vae = tiny(causal_norm=True)
    x = noise(1, 3, 9, 16, 16)
    with torch.no_grad():
        a = vae.encode_chunked(x, 4).mean
        b = vae.encode_chunked(x, 4).mean  # a stale cache would change the second run
    assert torch.equal(a, b)
    assert not any(isinstance(v, torch.Tensor) for m in vae.modules() for k, v in vars(m).items()
                   if "cache" in k)
