"""Contract tests over every registered attention core and token mixer, plus the bad-input refusals.

A newly registered variant is covered by the parametrised tests without a new test.
"""

from __future__ import annotations

import pytest
import torch

from lavinkit.models.jdit import JDiT, JDiTConfig
from lavinkit.nn.attention import (
    AttentionCore,
    Capabilities,
    available_cores,
    available_mixers,
    build_core,
    get_core,
    get_mixer,
    register_core,
    use_attention,
)
from lavinkit.nn.attention.contract import Unsupported, check_core, check_in_jdit, make_layout
from lavinkit.nn.attention.plugins import CORES

CORE_OPTIONS = {  # extra option sets checked besides the defaults
    "flex": [{"rule": "pair_local"}, {"rule": "segment_local"}],
    "infini": [{"update": "delta"}],
    "factorized": [{"temporal_heads": 1}],
}
CORE_CASES = [(n, None) for n in available_cores()] + [(n, o) for n, opts in CORE_OPTIONS.items() for o in opts]


@pytest.mark.parametrize(("name", "options"), CORE_CASES, ids=[f"{n}-{o}" if o else n for n, o in CORE_CASES])
def test_core_contract(name, options):
    report = check_core(name, options)
    assert report["checked"]


@pytest.mark.parametrize("name", available_cores())
def test_core_trains_in_tiny_jdit(name):
    try:
        report = check_in_jdit("core", name)
    except Unsupported as reason:
        pytest.skip(str(reason))
    assert report["variant"] == name


@pytest.mark.parametrize("name", available_mixers())
def test_mixer_trains_in_tiny_jdit(name):
    try:
        check_in_jdit("mixer", name)
    except Unsupported as reason:
        pytest.skip(str(reason))


def test_infini_gates_are_per_head_fp32_and_receive_gradients():
    model = JDiT(JDiTConfig.from_name("tiny", attention_core="infini", attention_core_options={"gate_init": -2.0}))
    core = model.blocks[0].core
    assert core.beta.dtype == torch.float32 and core.beta.shape == (model.config.num_heads,)
    torch.testing.assert_close(core.gates(), torch.sigmoid(torch.tensor(-2.0)).expand(model.config.num_heads))
    assert "blocks.0.core.beta" in model.state_dict()
    metrics = model.attention_metrics()
    assert len(metrics) == model.config.depth * model.config.num_heads
    assert metrics["blocks.1.gate/h0"] == pytest.approx(float(torch.sigmoid(torch.tensor(-2.0))))
    assert JDiT(JDiTConfig.from_name("tiny")).attention_metrics() == {}


def test_flex_refuses_cpu_backward():
    layout = make_layout(pairs=1)
    core = build_core("flex", 4, 2, 12)
    q = torch.randn(2, 4, layout.length, 12, requires_grad=True)
    k, v = torch.randn(2, 2, layout.length, 12), torch.randn(2, 2, layout.length, 12)
    with pytest.raises(NotImplementedError, match="cannot run backward on cpu.*FlexAttention"):
        core(q, k, v, layout)
    with torch.no_grad():  # the forward is fine
        assert core(q, k, v, layout).shape == q.shape


def test_flex_block_mask_is_cached_per_layout():
    layout = make_layout(pairs=2)
    core = build_core("flex", 2, 2, 12, options={"rule": "pair_local"})
    assert core.block_mask(layout, 2, "cpu") is core.block_mask(layout, 2, "cpu")
    assert core.block_mask(make_layout(pairs=1), 2, "cpu") is not core.block_mask(layout, 2, "cpu")


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(KeyError, match="registered: .*factorized.*full.*infini"):
        get_core("nope")
    with pytest.raises(KeyError, match="registered: .*diffussm"):
        get_mixer("nope")
    with pytest.raises(ValueError, match="attention_core: unknown attention core 'nope'; registered: .*full"):
        JDiTConfig.from_name("tiny", attention_core="nope")
    with pytest.raises(ValueError, match="token_mixer: unknown token mixer"):
        JDiTConfig.from_name("tiny", token_mixer="nope")
    with pytest.raises(TypeError, match="infini.*bad options.*'updat'"):
        JDiT(JDiTConfig.from_name("tiny", attention_core="infini", attention_core_options={"updat": "delta"}))


def test_import_path_selection():
    assert get_core("lavinkit.nn.attention.cores:PairLocalAttention") is get_core("pair_local")
    assert get_mixer("lavinkit.nn.attention.diffussm.DiffuSSMMixer") is get_mixer("diffussm")
    with pytest.raises(KeyError, match="cannot import"):
        get_core("lavinkit.nn.attention.cores:Nope")


def test_mixer_with_core_is_refused():
    with pytest.raises(ValueError, match="replaces the whole attention sub-layer"):
        JDiTConfig.from_name("tiny", token_mixer="diffussm", attention_core="infini")
    model = JDiT(JDiTConfig.from_name("tiny", token_mixer="diffussm"))
    with pytest.raises(ValueError, match="token mixer 'diffussm'.*cannot be set"):
        with use_attention(model, "full"):
            pass
    assert not hasattr(model.blocks[0].target, "q")  # the mixer owns the projections


def test_bad_gqa_heads_are_refused():
    layout = make_layout(pairs=1)
    for name in available_cores():
        core = build_core(name, 4, 3, 12)
        q = torch.randn(1, 4, layout.length, 12)
        k = v = torch.randn(1, 3, layout.length, 12)
        with torch.no_grad(), pytest.raises(ValueError, match="multiple of key/value heads"):
            core(q, k, v, layout)


def test_segments_that_do_not_divide_are_refused():
    for name in ("pair_local", "infini"):
        core = build_core(name, 2, 2, 12)
        even = make_layout(pairs=1).__class__  # a context of 4 items is not [in, tgt, ..., query]
        layout = make_layout(pairs=1)
        bad = even(4, 1, 2, 2, layout.cos[:, :, :20], layout.sin[:, :, :20], layout.axes_dims, layout.scale)
        q = k = v = torch.randn(1, 2, 20, 12)
        with pytest.raises(ValueError, match="odd number of items"):
            core(q, k, v, bad)
        clip = even(3, 2, 2, 2, layout.cos[:, :, :20], layout.sin[:, :, :20], layout.axes_dims, layout.scale)
        with pytest.raises(ValueError, match="not a whole number of in-context items"):
            core(q, k, v, clip)
    model = JDiT(JDiTConfig.from_name("tiny", attention_core="pair_local"))
    with pytest.raises(ValueError, match="odd number of items"):
        model(torch.randn(1, 16, 1, 4, 4), torch.rand(1), torch.randn(1, 16, 4, 4, 4))


def test_declared_limits_are_refused():
    @register_core("_test_no_mask_no_gqa")
    class Plain(AttentionCore):
        capabilities = Capabilities(supports_key_mask=False, supports_gqa=False)

        def attend(self, q, k, v, layout):
            q, k = layout.rotate(q, k)
            return self.backend(q, k, v, scale=layout.scale)

    try:
        core = build_core("_test_no_mask_no_gqa", 2, 2, 12)
        padded = make_layout(pairs=2, context_lengths=[5, 3])
        q = k = v = torch.randn(2, 2, padded.length, 12)
        with pytest.raises(ValueError, match="does not support key masks"):
            core(q, k, v, padded)
        gqa = build_core("_test_no_mask_no_gqa", 2, 1, 12)
        layout = make_layout(pairs=2)
        with pytest.raises(ValueError, match="does not support grouped-query attention"):
            gqa(torch.randn(1, 2, layout.length, 12), torch.randn(1, 1, layout.length, 12),
                torch.randn(1, 1, layout.length, 12), layout)
        check_core("_test_no_mask_no_gqa")  # a new registration is checkable right away
    finally:
        CORES.unregister("_test_no_mask_no_gqa")


def test_use_attention_swaps_and_restores():
    torch.manual_seed(0)
    model = JDiT(JDiTConfig.from_name("tiny")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, ctx, t = torch.randn(1, 16, 1, 4, 4), torch.randn(1, 16, 5, 4, 4), torch.rand(1)
    with torch.no_grad():
        base = model(x, t, ctx)
        with use_attention(model, "pair_local") as m:
            assert m.blocks[0].core.name == "pair_local"
            local = model(x, t, ctx)
        with use_attention(model, "flex"):  # flex with the full rule equals full attention
            torch.testing.assert_close(model(x, t, ctx), base, atol=1e-5, rtol=1e-5)
        assert model.blocks[0].core.name == "full"
        assert torch.equal(model(x, t, ctx), base)
    assert not torch.allclose(local, base)


def test_config_round_trip_by_name_and_class():
    cfg = JDiTConfig.from_name("tiny", attention_core=get_core("infini"), attention_core_options={"update": "delta"})
    data = cfg.to_dict()
    assert data["attention_core"] == "infini" and data["attention_core_options"] == {"update": "delta"}
    assert JDiTConfig.from_dict(data).attention_core == "infini"
    mixer = JDiTConfig.from_name("tiny", token_mixer="diffussm", token_mixer_options={"d_state": 8}).to_dict()
    assert JDiT(JDiTConfig.from_dict(mixer)).blocks[0].mixer.ssm.ssm.a_imag.shape == (96, 4)


def test_weights_file_keeps_the_variant(tmp_path):
    model = JDiT(JDiTConfig.from_name("tiny", attention_core="infini"))
    with torch.no_grad():
        model.blocks[1].core.beta.fill_(1.5)
    path = model.save_pretrained(tmp_path / "m.safetensors")
    loaded = JDiT.from_pretrained(path)
    assert loaded.config.attention_core == "infini"
    assert float(loaded.blocks[1].core.beta.detach()[0]) == 1.5


@pytest.mark.gpu
@pytest.mark.parametrize("rule", ["full", "pair_local", "segment_local"])
def test_flex_matches_reference_on_cuda(rule):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    layout = make_layout(pairs=2, height=8, width=8, device="cuda", context_lengths=[5, 3])
    core = build_core("flex", 4, 2, 12, options={"rule": rule}).cuda()
    q, k, v = (torch.randn(2, h, layout.length, 12, device="cuda", requires_grad=True) for h in (4, 2, 2))
    out, ref = core(q, k, v, layout), core.reference(q, k, v, layout)
    valid = layout.key_mask.reshape(2, 1, -1, 1)
    torch.testing.assert_close(out * valid, ref * valid, atol=2e-3, rtol=2e-3)
    grads = torch.autograd.grad((out * valid).square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * valid).square().sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
