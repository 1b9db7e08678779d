"""Official J-DiT parity: strict key mapping and forward / CFG reproduction of the reference tensors."""

from __future__ import annotations

import json

import pytest
import torch

from lavinkit.interop.jdit_official import (
    jdit_from_official,
    jdit_to_official,
    lavinkit_key_to_official,
    official_key_to_lavinkit,
)
from lavinkit.models.jdit import JDiT, JDiTConfig, cfg_batch, null_context
from lavinkit.nn.embed import unpatchify
from tests.conftest import PARITY, load_parity

ATOL = RTOL = 1e-4


@pytest.fixture(scope="module")
def official_kwargs():
    manifest = json.loads((PARITY / "manifest.json").read_text())
    return manifest["files"]["jdit_weights.safetensors"]["constructor_kwargs"]


@pytest.fixture(scope="module")
def model(official_kwargs):
    return jdit_from_official(load_parity("jdit_weights"), **official_kwargs).eval()


def _latents(tokens: torch.Tensor, channels: int) -> torch.Tensor:
    """Official patchified ``[B, T, H', W', pH*pW*C]`` -> ``[B, C, T, H, W]``."""
    return unpatchify(tokens, (2, 2), channels)


def test_forward_matches_official(model, official_kwargs):
    ref = load_parity("jdit_forward")
    c = official_kwargs["in_channels"]
    with torch.no_grad():
        out = model(_latents(ref["x"], c), ref["t"], _latents(ref["cond"], c))
    assert out.shape == ref["out"].shape
    torch.testing.assert_close(out, ref["out"], atol=ATOL, rtol=RTOL)


def test_forward_with_cfg_two_passes(model):
    ref = load_parity("jdit_forward_with_cfg")
    b = ref["cond"].shape[0]
    torch.testing.assert_close(null_context(ref["cond"]), ref["cond_null"], atol=0, rtol=0)
    with torch.no_grad():
        c = model(ref["x"][:b], ref["t"][:b], ref["cond"])
        u = model(ref["x"][b:], ref["t"][b:], ref["cond_null"])
    torch.testing.assert_close(c, ref["out_cond_branch"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(u, ref["out_uncond_branch"], atol=ATOL, rtol=RTOL)
    g = u + 1.5 * (c - u)
    torch.testing.assert_close(torch.cat([g, g]), ref["out"], atol=ATOL, rtol=RTOL)


def test_forward_with_cfg_one_batched_pass(model):
    ref = load_parity("jdit_forward_with_cfg")
    b = ref["cond"].shape[0]
    x2, t2, ctx2, lengths = cfg_batch(ref["x"][:b], ref["t"][:b], ref["cond"])
    assert ctx2.shape[2] == ref["cond"].shape[2] and lengths.tolist() == [3, 2]
    with torch.no_grad():
        c, u = model(x2, t2, ctx2, context_lengths=lengths).chunk(2)
    torch.testing.assert_close(c, ref["out_cond_branch"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(u, ref["out_uncond_branch"], atol=ATOL, rtol=RTOL)
    g = u + 1.5 * (c - u)
    torch.testing.assert_close(torch.cat([g, g]), ref["out"], atol=ATOL, rtol=RTOL)


def test_parity_is_sensitive(model, official_kwargs):
    """A small change to one weight moves the output far beyond the tolerance (the test can fail)."""
    ref = load_parity("jdit_forward")
    c = official_kwargs["in_channels"]
    state = load_parity("jdit_weights")
    state["blocks.0.joint_attn.x_k.weight"] = state["blocks.0.joint_attn.x_k.weight"].flip(0)
    broken = jdit_from_official(state, **official_kwargs).eval()
    with torch.no_grad():
        out = broken(_latents(ref["x"], c), ref["t"], _latents(ref["cond"], c))
    assert (out - ref["out"]).abs().max() > 1e-2


def test_round_trip(model):
    official = jdit_to_official(model)
    ref = load_parity("jdit_weights")
    assert set(official) == set(ref)
    for k, v in ref.items():
        torch.testing.assert_close(official[k], v.float(), atol=0, rtol=0)


def test_weights_are_upcast(model):
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_strict_loading_lists_keys(official_kwargs):
    state = load_parity("jdit_weights")
    state.pop("blocks.1.x_mlp.up_proj.weight")
    state["blocks.0.extra.weight"] = torch.zeros(1)
    state["final_layer.linear.bias"] = torch.zeros(5)
    with pytest.raises(KeyError) as err:
        jdit_from_official(state, **official_kwargs)
    msg = str(err.value)
    assert "missing (1): blocks.1.x_mlp.up_proj.weight" in msg
    assert "unexpected (1): blocks.0.extra.weight" in msg
    assert "final_layer.linear.bias: checkpoint (5,)" in msg


def test_wrong_constructor_kwargs(official_kwargs):
    with pytest.raises(TypeError, match="num_layers"):
        jdit_from_official(load_parity("jdit_weights"), num_layers=3)
    with pytest.raises(KeyError, match="shape mismatch"):
        jdit_from_official(load_parity("jdit_weights"), **{**official_kwargs, "kv_group": 1})


def test_full_size_key_map_on_meta(parity_dir):
    listing = json.loads((parity_dir / "official_full_size_keys.json").read_text())["jdit_LaVinDiT_3B_2"]
    official = {k: tuple(s) for k, s in listing["keys"]}
    assert len(official) == 502
    model = JDiT(JDiTConfig.from_name("official-3b"), device="meta")
    exported = {k: tuple(v.shape) for k, v in jdit_to_official(model).items()}
    assert exported == official
    assert sum(v.numel() for v in model.state_dict().values()) == listing["num_parameters"] == 3_398_976_064
    for key in official:
        assert lavinkit_key_to_official(official_key_to_lavinkit(key)) == key
    meta_state = {k: torch.empty(s, device="meta", dtype=torch.float16) for k, s in official.items()}
    loaded = jdit_from_official(meta_state, dtype=None)
    assert loaded.config == JDiTConfig.from_name("official-3b")
    assert {k: tuple(v.shape) for k, v in jdit_to_official(loaded).items()} == official


@pytest.mark.parametrize("option", ["pair_embedding", "query_residual", "spatial_position_embedding"])
def test_options_outside_the_official_model_are_refused_on_export(option):
    from lavinkit.interop.jdit_official import official_kwargs_from_config

    official_kwargs_from_config(JDiTConfig.from_name("tiny"))  # the preset has an official equivalent
    with pytest.raises(ValueError, match=f"{option}=True has no official equivalent"):
        official_kwargs_from_config(JDiTConfig.from_name("tiny", **{option: True}))
