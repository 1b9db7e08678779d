"""``lavinkit bench train``: FLOP formulas, the CPU SDPA count, and the command on tiny recipes."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from lavinkit.bench.flops import flop_counter_mapping, jdit_flops, jdit_model_flops
from lavinkit.bench.train import load_recipe, summarize
from lavinkit.cli import main
from lavinkit.models.jdit import JDiT, JDiTConfig
from tests.conftest import ROOT


def test_cpu_sdpa_counted_forward_and_backward():
    b, h, s, d = 2, 3, 40, 16
    q = torch.randn(b, h, s, d, requires_grad=True)
    k, v = torch.randn(b, h, s, d), torch.randn(b, h, s, d)
    with FlopCounterMode(display=False, custom_mapping=flop_counter_mapping()) as counter:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    # forward 4 b h s^2 d (QK^T, PV); backward twice that
    assert counter.get_total_flops() == 3 * 4 * b * h * s * s * d


def _counted_jdit(model, inputs, backend, train: bool) -> tuple[int, dict[str, int]]:
    """Total FLOPs torch counts for one forward (or forward + backward) and the forward FLOPs per module."""
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(backend), FlopCounterMode(display=False, custom_mapping=flop_counter_mapping()) as counter:
        if train:
            model(*inputs).square().mean().backward()
        else:
            with torch.no_grad():
                model(*inputs)
    return counter.get_total_flops(), {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}


@pytest.mark.parametrize("overrides", [dict(kv_group=1), dict(kv_group=2, pair_embedding=True)])
def test_jdit_flops_equal_torchs_count_with_math_attention(overrides):
    """The formula is exact: with the math SDPA backend (attention as plain matmuls, which torch counts) the
    count equals the formula plus the per-sample matmuls the formula leaves out (modulation, timestep MLP); the
    CPU flash kernel, counted by ``flop_counter_mapping``, gives the same total, forward and backward."""
    from torch.nn.attention import SDPBackend

    cfg = JDiTConfig.from_name("tiny", hidden_size=96, depth=3, num_heads=2, **overrides)
    model = JDiT(cfg)
    b, lat, tc = 2, 8, 3
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(b, 16, 1, lat, lat, generator=g), torch.rand(b, generator=g),
              torch.randn(b, 16, tc, lat, lat, generator=g))
    per_frame = (lat // 2) ** 2
    forward = jdit_flops(cfg, [tc * per_frame] * b, [per_frame] * b, training=False)
    assert jdit_model_flops(cfg, tc * per_frame, per_frame, b) == 3 * forward

    total, modules = _counted_jdit(model, inputs, SDPBackend.MATH, train=False)
    d = cfg.hidden_size
    # per-sample matmuls: every modulation, the timestep MLP and the last block's context scale (a d x d slice)
    left_out = sum(v for k, v in modules.items() if k.endswith(".modulation") or k.endswith(".time_embed"))
    left_out += 2 * b * d * d
    assert total == forward + left_out
    assert _counted_jdit(model, inputs, SDPBackend.FLASH_ATTENTION, train=False)[0] == total

    # training = 3x forward by convention; torch also skips the input gradients nobody needs: those of the patch
    # (and pair) embeddings, whose inputs are the latents, and of the timestep MLP's first layer
    no_input_grad = sum(v for k, v in modules.items() if k.endswith("_embed.proj") or k.endswith(".time_embed.mlp.0"))
    train_total, _ = _counted_jdit(model, inputs, SDPBackend.MATH, train=True)
    assert train_total == 3 * (forward + left_out) - no_input_grad
    assert _counted_jdit(model, inputs, SDPBackend.FLASH_ATTENTION, train=True)[0] == train_total
    # counting the last block as a full block overstates the FLOPs (what ``jdit_flops`` once did)
    full = jdit_flops(JDiTConfig.from_name("tiny", hidden_size=96, depth=4, num_heads=2, **overrides),
                      [tc * per_frame] * b, [per_frame] * b, training=False)
    assert full > forward


def test_summarize_spread():
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["median_s"] == 3.0 and s["min_s"] == 1.0 and s["max_s"] == 100.0 and s["n"] == 5
    assert s["p10_s"] <= s["median_s"] <= s["p90_s"]


def test_recipes_merge_in_order(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("model: {class_path: X, init_args: {p: 1, q: 2}}\ntrainer: {precision: 32-true}\n")
    b.write_text("trainer: {precision: bf16-mixed}\nmodel: {init_args: {q: 3}}\n")
    merged = load_recipe([a, b])
    assert merged["model"] == {"class_path": "X", "init_args": {"p": 1, "q": 3}}
    assert merged["trainer"]["precision"] == "bf16-mixed"
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_recipe([tmp_path / "nope.yaml"])


def test_recipe_precision_is_what_fit_trains_with(monkeypatch, capsys):
    from lavinkit.bench import train as bench_train

    cpu = torch.device("cpu")
    monkeypatch.setattr("lavinkit.lit.precision.cpu_bf16_slowdown", lambda: 30.0)  # bfloat16 emulated
    assert bench_train._precision({"trainer": {"precision": "bf16-mixed"}}, None, cpu) == "32-true"
    assert "bf16-mixed on a CPU without native bfloat16" in capsys.readouterr().err
    assert bench_train._precision({"trainer": {"precision": "bf16-mixed"}}, "bf16-mixed", cpu) == "bf16-mixed"
    monkeypatch.setattr("lavinkit.lit.precision.cpu_bf16_slowdown", lambda: 0.5)  # native bfloat16
    assert bench_train._precision({"trainer": {"precision": "16-mixed"}}, None, cpu) == "bf16-mixed"


def test_bench_train_jdit_recipe_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "train", "--config", str(ROOT / "recipes/jdit/tiny.yaml"), "--steps", "2", "--warmup", "1",
               "--latent", "8", "--num_context", "2", "--batch", "2", "--matmul_peak", "false", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "jdit" and result["step"]["n"] == 2
    assert result["shape"]["context_tokens"] == 5 * 16 and result["shape"]["target_tokens"] == 16
    for key in ("samples_per_s", "tokens_per_s", "peak_memory_bytes", "model_flops", "counted_flops",
                "achieved_flops_per_s"):
        assert result[key] > 0, key
    assert 0.9 < result["counted_flops"] / result["model_flops"] < 1.3
    assert "tokens/s" in capsys.readouterr().out


def test_bench_train_stvae_sample_mode(tmp_path):
    out = tmp_path / "bench.json"
    rc = main(["bench", "train", "--config", str(ROOT / "recipes/stvae/tiny_stage1.yaml"), "--mode", "sample",
               "--steps", "2", "--warmup", "0", "--size", "32", "--batch", "1", "--matmul_peak", "false",
               "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "stvae" and result["mode"] == "sample"
    assert result["pixels_per_s"] > 0 and result["counted_flops"] > 0


def test_bench_train_bad_recipe_names_it(tmp_path, capsys):
    assert main(["bench", "train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_bench_train_jdit_sample_mode(tmp_path):
    out = tmp_path / "bench.json"
    rc = main(["bench", "train", "--config", str(ROOT / "recipes/jdit/tiny.yaml"), "--mode", "sample", "--steps", "1",
               "--warmup", "0", "--latent", "4", "--num_context", "1", "--batch", "1", "--matmul_peak", "false",
               "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["mode"] == "sample" and result["ode_steps"] > 0 and result["per_ode_step_s"] > 0
    # the formula counts the guided passes as they run (null context padded when batched)
    assert 0.9 < result["counted_flops"] / result["model_flops"] < 1.3
