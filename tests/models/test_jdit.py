"""J-DiT model contract: shapes, determinism, gradients, checkpointing, padding, presets, errors."""

from __future__ import annotations

import pytest
import torch

from lavinkit.models.io import save_pretrained
from lavinkit.models.jdit import JDiT, JDiTConfig, JointBlock, cfg_batch, null_context
from lavinkit.nn.attention import naive_attention


def _randomise(model: JDiT, seed: int = 0) -> JDiT:
    """Non-trivial weights (the official init zeroes the gates, which hides most of the computation)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = p.shape[-1] ** -0.5 if p.ndim > 1 else 0.1  # ~unit-variance activations
            p.copy_(torch.randn(p.shape, generator=g) * scale + (1.0 if p.ndim == 1 else 0.0))
    return model


def _tiny(**overrides) -> JDiT:
    torch.manual_seed(0)
    return _randomise(JDiT(JDiTConfig.from_name("tiny", **overrides)))


def _inputs(b=2, tc=3, tx=1, h=8, w=8, c=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, tx, h, w, generator=g), torch.rand(b, generator=g), torch.randn(b, c, tc, h, w, generator=g)


@pytest.mark.parametrize("tc,tx,h,w", [(3, 1, 8, 8), (1, 2, 4, 6), (5, 1, 2, 2)])
def test_shapes_and_determinism(tc, tx, h, w):
    model = _tiny().eval()
    x, t, ctx = _inputs(tc=tc, tx=tx, h=h, w=w)
    with torch.no_grad():
        out = model(x, t, ctx)
        assert out.shape == x.shape and out.dtype == x.dtype
        torch.testing.assert_close(model(x, t, ctx), out, atol=0, rtol=0)


def test_official_init_outputs_zero():
    model = JDiT(JDiTConfig.from_name("tiny"))
    x, t, ctx = _inputs()
    assert model(x, t, ctx).abs().max() == 0
    assert model.prompt_embed.std() > 0


@pytest.mark.parametrize("pair_embedding", [False, True])
def test_every_trainable_parameter_gets_a_gradient(pair_embedding):
    model = _tiny(pair_embedding=pair_embedding).train()
    x, t, ctx = _inputs()
    model(x, t, ctx).square().mean().backward()
    dead = {id(p) for p in model.dead_parameters()}
    assert dead, "the last block's context q/out/mlp are dead"
    for name, p in model.named_parameters():
        if id(p) in dead:
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name


def test_dead_parameters_do_not_affect_output():
    model = _tiny().eval()
    x, t, ctx = _inputs()
    with torch.no_grad():
        ref = model(x, t, ctx)
        for p in model.dead_parameters():
            p.add_(1.0)
        torch.testing.assert_close(model(x, t, ctx), ref, atol=0, rtol=0)
    assert all(p.requires_grad for p in JDiT(JDiTConfig.from_name("tiny", freeze_dead_params=False)).parameters())


def test_activation_checkpointing_equivalence():
    x, t, ctx = _inputs()
    results = []
    for flag in (False, True):
        model = _tiny(activation_checkpointing=flag)
        out = model(x, t, ctx)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[0][0], results[1][0], atol=0, rtol=0)
    assert results[0][1].keys() == results[1][1].keys()
    for name in results[0][1]:
        torch.testing.assert_close(results[0][1][name], results[1][1][name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("pair_embedding", [False, True])
def test_padded_context_equals_unpadded_calls(pair_embedding):
    model = _tiny(pair_embedding=pair_embedding).eval()
    x, t, ctx = _inputs(b=2, tc=4)
    null = null_context(ctx[1:])  # [1, C, 2, H, W]
    padded = torch.cat([ctx[:1], torch.cat([null, torch.randn_like(null)], dim=2)], dim=0)  # garbage padding
    lengths = torch.tensor([4, 2])
    with torch.no_grad():
        out = model(x, t, padded, context_lengths=lengths)
        full = model(x[:1], t[:1], ctx[:1])
        short = model(x[1:], t[1:], null)
        torch.testing.assert_close(out[:1], full, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[1:], short, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(x, t, ctx, context_lengths=torch.tensor([4, 4])), model(x, t, ctx), atol=1e-5, rtol=1e-5)
        # cfg_batch: one pass == the two official passes
        c, u = model(*cfg_batch(x, t, ctx)).chunk(2)
        torch.testing.assert_close(u, model(x, t, null_context(ctx)), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c, model(x, t, ctx), atol=1e-5, rtol=1e-5)


def test_pair_partners_closed_form():
    """Frames labelled 1..Tc: each example frame gets its partner's label, the query/padding/null rows zeros."""
    from lavinkit.models.jdit.sequence import pair_partners

    def labelled(b, tc):
        return torch.arange(1, tc + 1, dtype=torch.float32).view(1, 1, tc, 1, 1).expand(b, 2, tc, 3, 3).clone()

    partners, query = pair_partners(labelled(2, 5), 1, torch.tensor([5, 2]))  # [in1, tgt1, in2, tgt2, q]; [0, q]
    assert partners[0, 0, :, 0, 0].tolist() == [2, 1, 4, 3, 0]
    assert partners[1].abs().sum() == 0  # the null context [zeros, query] has no example pair
    assert query[:, 0, :, 0, 0].tolist() == [[5], [2]]
    partners, query = pair_partners(labelled(1, 7), 2, torch.tensor([6]))  # clips of 2 frames, one padded frame
    assert partners[0, 0, :, 0, 0].tolist() == [3, 4, 1, 2, 0, 0, 0]
    assert query[0, 0, :, 0, 0].tolist() == [5, 6]
    torch.testing.assert_close(pair_partners(labelled(1, 5), 1)[0], pair_partners(labelled(1, 5), 1, torch.tensor([5]))[0])


def test_pair_embedding_is_off_in_the_presets():
    for name in ("tiny", "official-3b"):
        model = JDiT(JDiTConfig.from_name(name), device="meta")
        assert not any(n.startswith("pair_embed") for n, _ in model.named_parameters()), name
    assert any(n.startswith("pair_embed") for n, _ in _tiny(pair_embedding=True).named_parameters())


def test_attention_backends_give_the_same_model_output():
    x, t, ctx = _inputs()
    outs = [_tiny(attention=a).eval()(x, t, ctx).detach() for a in ("sdpa", "naive", naive_attention)]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[1], outs[2], atol=0, rtol=0)


def test_drop_path_trains():
    model = _tiny(drop_path=0.5).train()
    x, t, ctx = _inputs()
    model(x, t, ctx).mean().backward()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, ctx), model(x, t, ctx))


def test_meta_official_3b_and_materialise():
    model = JDiT(JDiTConfig.from_name("official-3b"), device="meta")
    assert sum(p.numel() for p in model.parameters()) == 3_398_976_064
    assert all(p.is_meta for p in model.parameters())
    assert model.block_class is JointBlock and isinstance(model.blocks[0], model.block_class)
    assert not any(p.requires_grad for p in model.dead_parameters())
    tiny = JDiT(JDiTConfig.from_name("tiny"), device="meta")
    tiny.to_empty(device="cpu")
    tiny.init_weights()
    x, t, ctx = _inputs()
    assert torch.isfinite(tiny(x, t, ctx)).all()


def test_presets():
    counts = {n: sum(p.numel() for p in JDiT(JDiTConfig.from_name(n), device="meta").parameters()) for n in ("0.1b", "1b")}
    assert 0.08e9 < counts["0.1b"] < 0.12e9 and 0.9e9 < counts["1b"] < 1.2e9
    assert JDiTConfig.from_name("0.1b").head_dim == 64 and JDiTConfig.from_name("1b").head_dim == 128
    cfg = JDiTConfig.from_name("official-3b")
    assert (cfg.head_dim, cfg.num_kv_heads, cfg.mlp_width, cfg.axes_dims) == (72, 8, 6144, (24, 24, 24))


def test_save_and_load_pretrained(tmp_path):
    model = _tiny().eval()
    path = model.save_pretrained(tmp_path / "dit.safetensors")
    loaded = JDiT.from_pretrained(path, attention="naive")
    assert loaded.config.attention == "naive" and loaded.config.hidden_size == 96
    assert not any(p.requires_grad for p in loaded.dead_parameters())
    x, t, ctx = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, ctx), model(x, t, ctx), atol=1e-5, rtol=1e-5)
    other = save_pretrained(tmp_path / "vae.safetensors", "stvae", {}, {})
    with pytest.raises(ValueError, match="'stvae' model"):
        JDiT.from_pretrained(other)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(hidden_size=128, num_heads=2), r"rope_axes_dims.*\(16, 24, 24\)"),
        (dict(num_heads=4, hidden_size=96, kv_group=3), "divisible by kv_group"),
        (dict(hidden_size=97), "divisible by num_heads"),
        (dict(rope_axes_dims=(16, 16, 18)), "sum to head_dim 48"),
        (dict(rope_axes_dims=(15, 15, 18)), "even"),
        (dict(attention="nope"), "unknown backend 'nope'"),
        (dict(depth=0), "depth"),
        (dict(drop_path=1.0), "drop_path"),
    ],
)
def test_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        JDiTConfig.from_name("tiny", **overrides)


def test_config_name_errors():
    with pytest.raises(ValueError, match="unknown J-DiT preset 'huge'"):
        JDiTConfig.from_name("huge")
    with pytest.raises(TypeError, match="widht"):
        JDiTConfig.from_name("tiny", widht=3)
    cfg = JDiTConfig.from_name("tiny", rope_axes_dims=(8, 20, 20), patch_size=1)
    assert cfg.patch_size == (1, 1) and JDiTConfig.from_dict(cfg.to_dict()) == cfg


def test_forward_errors():
    model = JDiT(JDiTConfig.from_name("tiny"))
    x, t, ctx = _inputs()
    with pytest.raises(ValueError, match="in_channels is 16 but x has 8"):
        model(x[:, :8], t, ctx)
    with pytest.raises(ValueError, match="spatial size"):
        model(x, t, ctx[..., :4])
    with pytest.raises(ValueError, match="batch size"):
        model(x, t, ctx[:1])
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        model(x[:, :, 0], t, ctx)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        model(x[..., :7, :7], t, ctx[..., :7, :7])
    with pytest.raises(ValueError, match=r"t must have shape \[B\]"):
        model(x, t[:1], ctx)
    with pytest.raises(ValueError, match=r"context_lengths must lie in \[1, 3\]"):
        model(x, t, ctx, context_lengths=torch.tensor([3, 4]))
    with pytest.raises(ValueError, match="integer tensor"):
        model(x, t, ctx, context_lengths=torch.tensor([3.0, 2.0]))


def test_flop_counter_by_hand():
    from lavinkit.bench.jdit import jdit_flops, mfu, peak_flops, per_token_params

    cfg = JDiTConfig.from_name("tiny")  # D 96, 2 heads of 48, 1 kv head, SwiGLU 256, patch dim 2*2*16 = 64, depth 2
    attn = 96 * 96 + 96 * 96 + 96 * 48 + 96 * 48  # q, out, k, v = 27,648
    mlp = 3 * 96 * 256  # gate, up, down = 73,728
    n_tok = 2 * (attn + mlp) + 64 * 96 + 96 * 64  # blocks + patch embed + output projection = 215,040
    assert n_tok == 215_040 == per_token_params(cfg)
    model = JDiT(cfg, device="meta")
    stream = model.blocks[0].target
    one_stream = sum(p.numel() for m in (stream.q, stream.k, stream.v, stream.out, stream.mlp) for p in m.parameters())
    assert n_tok == cfg.depth * one_stream + model.target_embed.proj.weight.numel() + model.final.linear.weight.numel()
    # two samples: 3 context frames + 1 target frame of 10 tokens, 2 + 1 frames of 8 tokens
    ctx, tgt = [30, 16], [10, 8]
    qo, kv, mlp = 2 * 96 * 96, 2 * 96 * 48, 3 * 96 * 256
    macs = 0
    for lc, lx in zip(ctx, tgt):
        s = lc + lx
        macs += (qo + kv + mlp) * s + 2 * 96 * s * s  # block 0: both streams, S^2 attention pairs
        macs += (qo + kv + mlp) * lx + kv * lc + 2 * 96 * lx * s  # last block: context keys/values only
        macs += 64 * 96 * s + 96 * 64 * lx  # patch embedding, output projection (target only)
    assert macs == 9_772_032
    expected = 6 * macs
    assert jdit_flops(cfg, ctx, tgt) == expected and jdit_flops(cfg, ctx, tgt, training=False) == 2 * macs
    # the full-block upper bound (6 N T + 12 L d S^2) overstates it
    assert 6 * 215_040 * 64 + 12 * 2 * 96 * (40**2 + 24**2) > expected
    with pytest.raises(ValueError, match="target token counts"):
        jdit_flops(cfg, ctx, tgt[:1])
    assert mfu(expected, 0.5, 1e9) == pytest.approx(expected / 5e8)
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("Some CPU") is None


def test_official_3b_per_token_params():
    from lavinkit.bench.jdit import per_token_params

    assert abs(per_token_params(JDiTConfig.from_name("official-3b")) - 1.226e9) < 0.005e9  # perf notes s.2.2


def test_bench_runs_tiny_without_comparison():
    from lavinkit.bench.jdit import run

    result = run(hidden=48, depth=1, heads=1, latent=4, context_frames=1, batch=1, steps=3, warmup=0, compare=False,
                 cfg_context_frames=[2, 5])
    assert result["lavinkit_train_step_s"] > 0 and "diffusers_train_step_s" not in result
    rows = {row["context_frames"]: row for row in result["cfg"]}
    assert rows[2]["auto_runs"] == "batched" and rows[2]["padding_fraction"] == 0.0  # the null context fits
    assert rows[5]["auto_runs"] == "two_pass" and rows[5]["padding_fraction"] == 0.25 and rows[5]["pairs"] == 2
    for row in rows.values():
        for mode in ("batched", "two_pass", "auto"):
            assert 0 < row[mode]["wall_p10_s"] <= row[mode]["wall_s"] <= row[mode]["wall_p90_s"]
        assert row["ratio_auto_over_two_pass"] == row["auto"]["wall_s"] / row["two_pass"]["wall_s"]
    assert "lavinkit_train_step_s" not in run(hidden=48, depth=1, heads=1, latent=4, context_frames=1, batch=1, steps=1,
                                              warmup=0, train=False, cfg_context_frames=[])


@pytest.mark.slow
def test_bench_runs_tiny():
    pytest.importorskip("diffusers")
    from lavinkit.bench.jdit import run

    result = run(hidden=48, depth=1, heads=1, latent=4, context_frames=1, batch=1, steps=1, warmup=0)
    for key in ("lavinkit_train_step_s", "diffusers_train_step_s", "ratio_lavinkit_over_diffusers",
                "train_flops_per_step"):
        assert result[key] > 0, key
    assert len(result["cfg"]) == 3


def test_bench_compiles_both_models_the_same_way():
    from lavinkit.bench.jdit import compile_in_place

    model = JDiT(JDiTConfig.from_name("tiny"))
    assert compile_in_place(model, model.blocks, "none") is model and model._compiled_call_impl is None
    assert compile_in_place(model, model.blocks, "blocks") is model  # in place, lazily (on first call)
    assert all(block._compiled_call_impl is not None for block in model.blocks) and model._compiled_call_impl is None
    whole = JDiT(JDiTConfig.from_name("tiny"))
    compile_in_place(whole, whole.blocks, "model")
    assert whole._compiled_call_impl is not None and all(b._compiled_call_impl is None for b in whole.blocks)
    assert list(whole.state_dict()) == list(model.state_dict())  # names unchanged
    with pytest.raises(ValueError, match="compile='graph'"):
        compile_in_place(model, model.blocks, "graph")


def test_bf16_autocast_and_bf16_weights():
    model = _tiny()
    x, t, ctx = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, ctx, context_lengths=torch.tensor([3, 2]))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.mean().backward()
    ref = model.eval()(x, t, ctx, context_lengths=torch.tensor([3, 2])).detach()
    assert (out.detach() - ref).abs().max() < 0.1 * ref.abs().max()
    bf16 = _tiny().to(torch.bfloat16)
    assert bf16(x.bfloat16(), t, ctx.bfloat16()).dtype == torch.bfloat16


def test_sequence_positions_and_mask():
    from lavinkit.models.jdit import joint_positions, key_padding_mask

    pos = joint_positions(2, 1, 2, 3)
    assert pos.shape == (18, 3) and pos[12].tolist() == [2, 0, 0]
    per_row = joint_positions(2, 1, 2, 3, context_lengths=torch.tensor([2, 1]))
    assert per_row.shape == (2, 18, 3)
    torch.testing.assert_close(per_row[0], pos)
    assert per_row[1, 12:, 0].tolist() == [1] * 6 and per_row[1, :12].tolist() == pos[:12].tolist()
    mask = key_padding_mask(torch.tensor([2, 1]), 2, 1, 6)
    assert mask.shape == (2, 1, 1, 18)
    assert mask[0].all() and mask[1, 0, 0, :6].all() and not mask[1, 0, 0, 6:12].any() and mask[1, 0, 0, 12:].all()


def test_cfg_batch_with_single_context_frame():
    """Tc = 1: the null context (2 frames) is the longer one, so the conditional row gets padded."""
    model = _tiny().eval()
    x, t, ctx = _inputs(tc=1)
    x2, t2, ctx2, lengths = cfg_batch(x, t, ctx)
    assert ctx2.shape[2] == 2 and lengths.tolist() == [1, 1, 2, 2]
    with torch.no_grad():
        c, u = model(x2, t2, ctx2, context_lengths=lengths).chunk(2)
        torch.testing.assert_close(c, model(x, t, ctx), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(u, model(x, t, null_context(ctx)), atol=1e-5, rtol=1e-5)


def test_query_residual_untrained_model_answers_with_the_query():
    """Zero-initialised output layer: the derived velocity carries any x_t to the query by t = 1 (Euler)."""
    from lavinkit.flow import EulerSampler

    model = JDiT(JDiTConfig.from_name("tiny", query_residual=True)).eval()
    x, _, ctx = _inputs(b=2, tc=3)
    query = ctx[:, :, -1:]
    with torch.no_grad():
        sample = EulerSampler(num_steps=20, grid="official")(lambda z, t: model(z, t, ctx), x).sample
        torch.testing.assert_close(sample, query, atol=1e-5, rtol=1e-5)
    off = JDiT(JDiTConfig.from_name("tiny")).eval()
    assert off(x, torch.rand(2), ctx).abs().max() == 0  # the official parametrisation starts at velocity 0


def test_query_residual_velocity_is_that_of_the_query_plus_the_output():
    """With trained-like weights: x_t + (1 - t) v = query + the plain model's output, wherever 1 - t >= 0.05."""
    from lavinkit.flow.path import data_from_velocity

    plain, residual = _tiny(), _tiny(query_residual=True)
    residual.load_state_dict(plain.state_dict())
    x, _, ctx = _inputs(b=3, tc=5, tx=1)
    t = torch.tensor([0.0, 0.5, 0.9])
    with torch.no_grad():
        v = residual(x, t, ctx)
        torch.testing.assert_close(data_from_velocity(x, v, t), ctx[:, :, -1:] + plain(x, t, ctx), atol=1e-4, rtol=1e-4)
        near_data = residual(x, torch.ones(3), ctx)  # bounded at t = 1: (answer - x_t) / 0.05
        assert torch.isfinite(near_data).all()


def test_spatial_position_embedding_starts_at_zero_and_breaks_translation_symmetry():
    """Untrained: the same function as without it. Trained-like: outputs depend on where content sits."""
    plain = _tiny()
    placed = JDiT(JDiTConfig.from_name("tiny", spatial_position_embedding=True))
    missing, unexpected = placed.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["position_embed.proj.bias", "position_embed.proj.weight"] and not unexpected
    x, t, ctx = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(placed(x, t, ctx), plain(x, t, ctx), atol=0, rtol=0)
        torch.nn.init.normal_(placed.position_embed.proj.weight, std=0.5)
        assert (placed(x, t, ctx) - plain(x, t, ctx)).abs().max() > 1e-3
    with pytest.raises(RuntimeError, match="position_embed"):
        plain.load_state_dict(placed.state_dict())  # a checkpoint with it needs a config with it
