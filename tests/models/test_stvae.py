"""ST-VAE: config validation, shapes, posterior math, causality option, checkpointing, input checks, files."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lavinkit.models.stvae import STVAE, DiagonalGaussian, STVAEConfig


def tiny(**overrides) -> STVAE:
    torch.manual_seed(0)
    return STVAE(STVAEConfig.from_name("tiny", **overrides)).eval()


def clip(t: int, h: int = 16, w: int = 16, b: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


# ---------------------------------------------------------------- config
def test_presets():
    off = STVAEConfig.from_name("official")
    assert off.block_out_channels == (128, 256, 256, 512) and off.layers_per_block == 3
    assert off.latent_channels == 16 and off.norm_num_groups == 32 and off.norm_eps == 1e-6
    assert off.latent_shift == 0.032470703125 and off.latent_scale == 1.08936170213
    for name in ("tiny", "small"):
        cfg = STVAEConfig.from_name(name)
        assert cfg.latent_channels == 16 and cfg.spatial_compression == 8 and cfg.temporal_compression == 4
    assert STVAEConfig.from_name("tiny", causal_norm=True).causal_norm


@pytest.mark.parametrize(("overrides", "field"), [
    (dict(block_out_channels=(32, 48, 64, 64), norm_num_groups=16), "spatial_norm_groups"),
    (dict(block_out_channels=(32, 64)), "block_out_channels"),
    (dict(block_out_channels=(32, 32, 64, 64, 64)), "block_out_channels"),
    (dict(norm_num_groups=8, block_out_channels=(36, 32, 64, 64)), "norm_num_groups"),
    (dict(temporal_compression=2), "temporal_compression"),
    (dict(latent_channels=0), "latent_channels"),
    (dict(latent_scale=0.0), "latent_scale"),
    (dict(dropout=1.0), "dropout"),
    (dict(block_out_chanels=(32,)), "unknown option"),
])
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        STVAEConfig.from_name("tiny", **overrides)


@pytest.mark.parametrize("t", [1, 5])
def test_demo_preset_compresses_4x_spatially(t):
    cfg = STVAEConfig.from_name("demo")
    assert cfg.spatial_compression == 4 and cfg.temporal_compression == 4 and cfg.latent_channels == 16
    assert cfg.latent_shape(t, 64, 32) == (16, 1 + (t - 1) // 4, 16, 8)
    torch.manual_seed(0)
    vae = STVAE(STVAEConfig.from_name("demo", block_out_channels=(32, 32, 32))).eval()
    x = clip(t, 16, 8, b=2)
    with torch.no_grad():
        post = vae.encode(x)
        assert post.mean.shape == (2, 16, 1 + (t - 1) // 4, 4, 2)
        assert vae.decode(post.mean).shape == x.shape
    with pytest.raises(ValueError, match="multiples of 4"):
        vae.encode(clip(1, 18, 8))


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown STVAE preset 'huge'"):
        STVAEConfig.from_name("huge")


# ---------------------------------------------------------------- shapes
@pytest.mark.parametrize("t", [1, 5, 9])
def test_shapes(t):
    vae = tiny()
    x = clip(t, 16, 24, b=2)
    with torch.no_grad():
        post = vae.encode(x)
        assert post.mean.shape == (2, 16, 1 + (t - 1) // 4, 2, 3)
        x_hat, post2 = vae(x, sample_posterior=False)
    assert x_hat.shape == x.shape
    torch.testing.assert_close(post2.mean, post.mean)


def test_temporal_compression_one():
    vae = tiny(temporal_compression=1)
    with torch.no_grad():
        post = vae.encode(clip(3))
        assert post.mean.shape == (1, 16, 3, 2, 2)
        assert vae.decode(post.mean).shape == (1, 3, 3, 16, 16)


def test_meta_device_official_size():
    vae = STVAE("official", device="meta")
    assert sum(p.numel() for p in vae.parameters()) == 215_583_907


# ---------------------------------------------------------------- posterior
def test_kl_sums_all_dims_closed_form():
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(2, 4, 3, 2, 5, generator=g)
    logvar = torch.randn(2, 4, 3, 2, 5, generator=g)
    post = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    expected = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).flatten(1).sum(1)
    assert post.kl().shape == (2,)
    torch.testing.assert_close(post.kl(), expected)
    # KL against itself is zero; against N(0, I) given explicitly equals kl()
    torch.testing.assert_close(post.kl(post), torch.zeros(2), atol=1e-5, rtol=0)
    std = DiagonalGaussian(mean=torch.zeros_like(mean), logvar=torch.zeros_like(mean))
    torch.testing.assert_close(post.kl(std), expected)
    # NLL of the mean: 0.5 * sum(log 2 pi + logvar)
    nll = post.nll(mean)
    torch.testing.assert_close(nll, 0.5 * (math.log(2 * math.pi) + logvar).flatten(1).sum(1))


def test_posterior_clamp_sample_mode():
    moments = torch.cat([torch.zeros(1, 2, 1, 2, 2), torch.full((1, 2, 1, 2, 2), 50.0)], dim=1)
    post = DiagonalGaussian(moments)
    assert post.logvar.max() == 20.0
    post = DiagonalGaussian(mean=torch.ones(1, 2, 1, 2, 2), logvar=torch.full((1, 2, 1, 2, 2), -100.0))
    assert post.logvar.min() == -30.0
    torch.testing.assert_close(post.std, torch.exp(torch.tensor(-15.0)).expand(1, 2, 1, 2, 2))
    assert torch.equal(post.mode(), post.mean)
    a = post.sample(torch.Generator().manual_seed(3))
    b = post.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_forward_sampling_uses_generator():
    vae = tiny()
    x = clip(5)
    with torch.no_grad():
        a, _ = vae(x, generator=torch.Generator().manual_seed(0))
        b, _ = vae(x, generator=torch.Generator().manual_seed(0))
        c, _ = vae(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_latent_normalisation_round_trip():
    vae = tiny(latent_shift=0.5, latent_scale=2.0)
    z = torch.randn(1, 16, 2, 2, 2)
    torch.testing.assert_close(vae.normalize_latents(z), (z - 0.5) * 2.0)
    torch.testing.assert_close(vae.denormalize_latents(vae.normalize_latents(z)), z)


# ---------------------------------------------------------------- causality
def test_causal_norm_first_frame_independent_of_later_frames():
    vae = tiny(causal_norm=True)
    x = clip(9)
    y = x.clone()
    y[:, :, 1:] = clip(8, seed=5)
    with torch.no_grad():
        mx, my = vae.encode(x).mean, vae.encode(y).mean
        alone = vae.encode(x[:, :, :1]).mean
        torch.testing.assert_close(mx[:, :, :1], my[:, :, :1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mx[:, :, :1], alone, atol=1e-5, rtol=1e-5)
        dx = vae.decode(mx)
        d_alone = vae.decode(mx[:, :, :1])
    torch.testing.assert_close(dx[:, :, :1], d_alone, atol=1e-5, rtol=1e-5)


def test_official_norm_is_not_causal():
    vae = tiny(causal_norm=False)
    x = clip(9)
    with torch.no_grad():
        whole, alone = vae.encode(x).mean, vae.encode(x[:, :, :1]).mean
    assert (whole[:, :, :1] - alone).abs().max() > 1e-3


def test_causal_norm_equals_official_for_images():
    a, b = tiny(causal_norm=False), tiny(causal_norm=True)
    x = clip(1)
    with torch.no_grad():
        torch.testing.assert_close(a.encode(x).mean, b.encode(x).mean)


# ---------------------------------------------------------------- training
def test_gradient_checkpointing_equivalence():
    vae = tiny()
    vae.train()
    x = clip(5)

    def run():
        vae.zero_grad()
        x_hat, post = vae(x, sample_posterior=True, generator=torch.Generator().manual_seed(0))
        loss = (x_hat - x).abs().mean() + 1e-3 * post.kl().mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in vae.named_parameters()}

    loss_a, grads_a = run()
    vae.set_gradient_checkpointing(True)
    assert vae.config.gradient_checkpointing
    loss_b, grads_b = run()
    torch.testing.assert_close(loss_a, loss_b)
    for n in grads_a:
        torch.testing.assert_close(grads_a[n], grads_b[n], atol=1e-5, rtol=1e-4, msg=n)
    # every parameter gets a gradient
    assert all(g.abs().sum() > 0 for g in grads_a.values())


def test_last_decoder_weight():
    vae = tiny()
    assert vae.last_decoder_weight is vae.decoder.conv_out.weight
    assert vae.last_decoder_weight.shape == (3, 32, 3, 3, 3)


# ---------------------------------------------------------------- input checks
@pytest.mark.parametrize(("x", "message"), [
    (torch.zeros(1, 3, 16, 16), r"\[B, C, T, H, W\].*unsqueeze\(2\)"),
    (torch.zeros(1, 3, 4, 16, 16), "frame count T=4 is not 1 \\+ 4k"),
    (torch.zeros(1, 3, 1, 12, 16), "H=12 and W=16 must be multiples of 8"),
    (torch.zeros(1, 4, 1, 16, 16), "4 channels .* in_channels=3"),
    (torch.full((1, 3, 1, 16, 16), 200.0), "looks like uint8 0..255 passed as float"),
    (torch.full((1, 3, 1, 16, 16), -3.0), "far outside \\[-1, 1\\]"),
    (torch.zeros(1, 3, 1, 16, 16, dtype=torch.uint8), "dtype torch.uint8"),
])
def test_bad_pixels(x, message):
    with pytest.raises(ValueError, match=message):
        tiny().encode(x)


def test_bad_latents():
    vae = tiny()
    with pytest.raises(ValueError, match="latents have 8 channels but the VAE has latent_channels=16"):
        vae.decode(torch.zeros(1, 8, 1, 2, 2))
    with pytest.raises(ValueError, match=r"\[B, C, t, h, w\]"):
        vae.decode(torch.zeros(1, 16, 2, 2))


# ---------------------------------------------------------------- files
def test_save_load_pretrained(tmp_path):
    vae = tiny(latent_shift=0.1)
    path = vae.save_pretrained(tmp_path / "vae.safetensors")
    loaded = STVAE.from_pretrained(path)
    assert dataclasses.asdict(loaded.config) == dataclasses.asdict(vae.config)
    for (k1, v1), (k2, v2) in zip(vae.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    x = clip(5)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval().encode(x).mean, vae.encode(x).mean)
    causal = STVAE.from_pretrained(path, causal_norm=True)
    assert causal.config.causal_norm


def test_from_pretrained_wrong_kind(tmp_path):
    from lavinkit.models.io import save_pretrained

    path = save_pretrained(tmp_path / "dit.safetensors", "jdit", {}, {"w": torch.zeros(1)})
    with pytest.raises(ValueError, match="'jdit' model, not an 'stvae'"):
        STVAE.from_pretrained(path)
