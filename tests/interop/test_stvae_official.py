"""Official ST-VAE interop: parity with the reference tensors, key map coverage, strict loading, export."""

from __future__ import annotations

import json

import pytest
import torch

from lavinkit.interop.stvae_official import (
    load_official_stvae_file,
    official_key_to_ours,
    our_key_to_official,
    stvae_from_official,
    stvae_to_official,
)
from lavinkit.models.stvae import STVAE, STVAEConfig
from tests.conftest import PARITY, load_parity

ATOL, RTOL = 2e-4, 1e-4


@pytest.fixture(scope="module")
def kwargs(parity_manifest) -> dict:
    return dict(parity_manifest["files"]["vae_weights.safetensors"]["constructor_kwargs"])


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return load_parity("vae_weights")


@pytest.fixture(scope="module")
def vae(weights, kwargs) -> STVAE:
    return stvae_from_official(weights, **kwargs).eval()


@pytest.mark.parametrize("name", ["vae_image", "vae_video"])
def test_parity_untiled(vae, name):
    ref = load_parity(name)
    with torch.no_grad():
        post = vae.encode(ref["x"])
        decoded = vae.decode(ref["mean"])
    torch.testing.assert_close(post.mean, ref["mean"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(post.logvar, ref["logvar"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(decoded, ref["decoded"], atol=ATOL, rtol=RTOL)


def test_parity_first_frame_non_causality(vae):
    """The official GroupNorm spans all frames: frame 0 alone encodes differently, and we reproduce both."""
    ref = load_parity("vae_video")
    with torch.no_grad():
        alone = vae.encode(ref["x"][:, :, :1]).mean
    torch.testing.assert_close(alone, ref["mean_first_frame_alone"], atol=ATOL, rtol=RTOL)
    assert (ref["mean_first_frame_alone"] - ref["mean"][:, :, :1]).abs().max() > 1e-2


def test_parity_tiled(weights, kwargs, parity_manifest):
    params = parity_manifest["files"]["vae_tiled.safetensors"]["tiling_parameters"]
    vae = stvae_from_official(weights, **kwargs).eval()
    vae.enable_official_tiling(params["tile_sample_min_size"], params["tile_sample_min_size_t"])
    video, ref = load_parity("vae_video"), load_parity("vae_tiled")
    with torch.no_grad():
        post = vae.encode(video["x"])
        decoded = vae.decode(video["mean"])
    torch.testing.assert_close(post.mean, ref["mean"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(post.logvar, ref["logvar"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(decoded, ref["decoded"], atol=ATOL, rtol=RTOL)
    # tiling really changed the result
    assert (ref["decoded"] - video["decoded"]).abs().max() > 1e-2


def test_full_size_key_map_covers_every_official_key():
    listing = json.loads((PARITY / "official_full_size_keys.json").read_text())["stvae_AutoencoderKLSTVAE_default"]
    official = {k: tuple(s) for k, s in listing["keys"]}
    assert len(official) == listing["num_tensors"] == 436
    model = STVAE(STVAEConfig.from_name("official"), device="meta")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped = {official_key_to_ours(k): s for k, s in official.items()}
    assert mapped == ours
    assert sum(v.numel() for v in model.parameters()) == listing["num_parameters"]
    assert {our_key_to_official(k) for k in ours} == set(official)


def test_full_size_load_on_meta():
    listing = json.loads((PARITY / "official_full_size_keys.json").read_text())["stvae_AutoencoderKLSTVAE_default"]
    state = {k: torch.empty(s, device="meta") for k, s in listing["keys"]}
    vae = stvae_from_official(state, device="meta", tile_sample_min_size=512, tile_sample_min_size_t=129)
    assert vae.config.block_out_channels == (128, 256, 256, 512)
    assert vae.config.latent_shift == 0.032470703125 and vae.config.latent_scale == 1.08936170213


def test_export_round_trip(vae, weights, kwargs):
    exported = stvae_to_official(vae)
    assert set(exported) == set(weights)
    for k, v in weights.items():
        torch.testing.assert_close(exported[k], v, atol=0, rtol=0)
    again = stvae_from_official(exported, **kwargs)
    for (k1, v1), (k2, v2) in zip(vae.state_dict().items(), again.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_strict_load_lists_missing_unexpected_and_misshaped(weights, kwargs):
    bad = dict(weights)
    del bad["decoder.conv_out.conv.bias"]
    bad["encoder.extra.weight"] = torch.zeros(1)
    bad["encoder.conv_in.conv.weight"] = torch.zeros(64, 3, 1, 3, 3)
    with pytest.raises(ValueError) as err:
        stvae_from_official(bad, **kwargs)
    msg = str(err.value)
    assert "missing keys (1): ['decoder.conv_out.conv.bias']" in msg
    assert "unexpected keys (1): ['encoder.extra.weight']" in msg
    assert "encoder.conv_in.conv.weight: checkpoint (64, 3, 1, 3, 3) vs model (64, 3, 3, 3, 3)" in msg


def test_wrong_constructor_arguments(weights):
    with pytest.raises(ValueError, match="missing keys"):
        stvae_from_official(weights)  # defaults: full-size architecture
    with pytest.raises(ValueError, match="unknown constructor argument"):
        stvae_from_official(weights, block_out_channelz=(64, 32, 32, 32))


def test_load_official_files(tmp_path, weights, kwargs):
    from safetensors.torch import save_file

    pt = tmp_path / "stvae.pt"
    torch.save({"state_dict": weights, "epoch": 3}, pt)
    st = tmp_path / "stvae.safetensors"
    save_file(weights, str(st))
    for path in (pt, st):
        loaded = load_official_stvae_file(path)
        assert set(loaded) == set(weights)
        vae = stvae_from_official(loaded, **kwargs)
        assert vae.decoder.conv_out.weight.dtype == torch.float32
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_official_stvae_file(tmp_path / "nope.pt")
