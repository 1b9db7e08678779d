"""``lavinkit bench jdit``: J-DiT step time side by side with diffusers' SD3 MM-DiT, CFG modes, MFU.

Both models are built at the same width, depth, head count and token count (context tokens = SD3's
``encoder_hidden_states`` length, target tokens = its image tokens), with matched FFN parameter
counts (SwiGLU ~8/3 D vs GELU 4 D) and QK RMSNorm on both. ``--kv_group 1`` (default) matches SD3's
multi-head attention; the official model uses GQA (``--kv_group 4``).

Reported (medians over ``--steps``): forward+backward train step of each model and the ratio
lavinkit/diffusers; guided sampling step with one batched pass (``context_lengths``) vs two passes;
FLOPs per step and, on CUDA, MFU (design.md s.6). Example::

    lavinkit bench jdit --hidden 384 --depth 4 --heads 8 --latent 16 --context_frames 3 --batch 2
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch

from lavinkit.bench.peaks import PEAK_BF16_FLOPS, mfu, peak_flops  # noqa: F401 (re-exported)
from lavinkit.models.jdit import JDiT, JDiTConfig, cfg_batch, null_context



def per_token_params(config: JDiTConfig) -> int:
    """Matmul parameters one token passes through (design.md s.6): one stream's q/k/v/out and SwiGLU
    per block, plus the patch embedding and the output projection. Excludes modulation, timestep MLP,
    type embeddings, norms and biases (they act per sample or are not matmuls)."""
    d, hd, f = config.hidden_size, config.head_dim, config.mlp_width
    attn = d * config.num_heads * hd * 2 + d * config.num_kv_heads * hd * 2  # q, out + k, v
    mlp = 3 * d * f
    return config.depth * (attn + mlp) + 2 * config.patch_dim * d


def jdit_flops(config: JDiTConfig, seq_lens: Sequence[int], training: bool = True) -> float:
    """FLOPs of one step over samples with joint sequence lengths ``seq_lens`` (context + target tokens), counting
    every block as a full dual-stream block (an upper bound: :func:`lavinkit.bench.train.jdit_model_flops` counts
    the last block as it runs and is what the benchmarks report).

    ``6 * N_tok * sum(S) + 12 * depth * d * sum(S^2)`` for training (forward + backward, no
    recomputation counted); ``2 * ... + 4 * ...`` for a forward pass. ``d = num_heads * head_dim``.
    """
    dense, attn = (6, 12) if training else (2, 4)
    d = config.num_heads * config.head_dim
    return float(dense * per_token_params(config) * sum(seq_lens) + attn * config.depth * d * sum(s * s for s in seq_lens))


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call (CUDA synchronised)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved_medians(
    fns: dict[str, Callable[[], object]], steps: int, warmup: int, device: torch.device
) -> dict[str, dict[str, float]]:
    """Median wall and process-CPU time of each function, called in alternation so that all see the
    same machine load. CPU time is the steadier figure on a shared CPU machine (it excludes time spent
    waiting for cores); wall time is what a user sees."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for i in range(warmup + steps):
        for name, fn in fns.items():
            sample = _timed(fn, device)
            if i >= warmup:
                times[name].append(sample)
    return {
        name: {"wall_s": statistics.median(w for w, _ in v), "cpu_s": statistics.median(c for _, c in v)}
        for name, v in times.items()
    }


def _train_step(model: torch.nn.Module, forward: Callable[[], torch.Tensor]) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        for p in params:
            p.grad = None
        forward().float().square().mean().backward()

    return step


def build_diffusers_sd3(hidden: int, depth: int, heads: int, latent: int, device, dtype):
    """SD3 MM-DiT at the given width/depth/heads with QK RMSNorm (lazy import: the ``bench`` extra)."""
    try:
        from diffusers import SD3Transformer2DModel
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise SystemExit("lavinkit bench jdit: diffusers is not installed (pip install 'lavinkit[bench]')") from err
    return SD3Transformer2DModel(
        sample_size=latent, patch_size=2, in_channels=16, num_layers=depth, attention_head_dim=hidden // heads,
        num_attention_heads=heads, joint_attention_dim=hidden, caption_projection_dim=hidden,
        pooled_projection_dim=hidden, out_channels=16, pos_embed_max_size=max(latent // 2, 8), qk_norm="rms_norm",
    ).to(device=device, dtype=dtype)


def run(
    hidden: int = 384, depth: int = 4, heads: int = 8, kv_group: int = 1, latent: int = 16,
    context_frames: int = 3, batch: int = 2, steps: int = 10, warmup: int = 2, device: str = "cpu",
    dtype: str = "float32", compare: bool = True, attention: str = "sdpa", threads: int | None = None,
) -> dict:
    """Run the benchmark and return the figures (see module docstring)."""
    dev = torch.device(device)
    if threads:
        torch.set_num_threads(threads)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    torch.manual_seed(0)
    hd = hidden // heads
    rope = None if hd % 6 == 0 else ((hd - 2 * ((hd * 3 // 8) // 2 * 2)), (hd * 3 // 8) // 2 * 2, (hd * 3 // 8) // 2 * 2)
    cfg = JDiTConfig(
        patch_size=(2, 2), in_channels=16, hidden_size=hidden, depth=depth, num_heads=heads, kv_group=kv_group,
        rope_axes_dims=rope, attention=attention,
    )
    ours = JDiT(cfg, device=dev, dtype=torch_dtype).train()
    x = torch.randn(batch, 16, 1, latent, latent, device=dev, dtype=torch_dtype)
    ctx = torch.randn(batch, 16, context_frames, latent, latent, device=dev, dtype=torch_dtype)
    t = torch.rand(batch, device=dev, dtype=torch_dtype)
    tokens_per_frame = (latent // 2) ** 2
    seq = (context_frames + 1) * tokens_per_frame
    result: dict = {
        "config": {"hidden": hidden, "depth": depth, "heads": heads, "kv_group": kv_group, "latent": latent,
                   "context_frames": context_frames, "batch": batch, "tokens_per_sample": seq,
                   "device": str(dev), "dtype": dtype, "threads": torch.get_num_threads()},
        "params": {"lavinkit": sum(p.numel() for p in ours.parameters())},
    }
    from lavinkit.bench.train import jdit_model_flops

    # the last block computes only keys/values for context tokens (jdit_flops would count it as a full block)
    flops = jdit_model_flops(cfg, context_frames * tokens_per_frame, tokens_per_frame, batch)
    result["train_flops_per_step"] = flops
    steps_to_time = {"lavinkit": _train_step(ours, lambda: ours(x, t, ctx))}
    if compare:
        sd3 = build_diffusers_sd3(hidden, depth, heads, latent, dev, torch_dtype).train()
        result["params"]["diffusers_sd3"] = sum(p.numel() for p in sd3.parameters())
        enc = torch.randn(batch, context_frames * tokens_per_frame, hidden, device=dev, dtype=torch_dtype)
        pooled = torch.randn(batch, hidden, device=dev, dtype=torch_dtype)
        img = x[:, :, 0]

        def sd3_forward():
            return sd3(hidden_states=img, encoder_hidden_states=enc, pooled_projections=pooled,
                       timestep=t * 1000, return_dict=False)[0]

        steps_to_time["diffusers"] = _train_step(sd3, sd3_forward)
    medians = interleaved_medians(steps_to_time, steps, warmup, dev)
    result["lavinkit_train_step_s"] = medians["lavinkit"]["wall_s"]
    result["lavinkit_train_tokens_per_s"] = batch * seq / result["lavinkit_train_step_s"]
    result["lavinkit_train_step_cpu_s"] = medians["lavinkit"]["cpu_s"]
    if compare:
        result["diffusers_train_step_s"] = medians["diffusers"]["wall_s"]
        result["diffusers_train_step_cpu_s"] = medians["diffusers"]["cpu_s"]
        result["ratio_lavinkit_over_diffusers"] = medians["lavinkit"]["wall_s"] / medians["diffusers"]["wall_s"]
        result["ratio_lavinkit_over_diffusers_cpu"] = medians["lavinkit"]["cpu_s"] / medians["diffusers"]["cpu_s"]
        del sd3, steps_to_time

    ours.eval()
    batched_inputs = cfg_batch(x, t, ctx)
    null = null_context(ctx)

    @torch.no_grad()
    def one_pass():
        c, u = ours(*batched_inputs).chunk(2)
        return u + 1.5 * (c - u)

    @torch.no_grad()
    def two_passes():
        c, u = ours(x, t, ctx), ours(x, t, null)
        return u + 1.5 * (c - u)

    cfg_medians = interleaved_medians({"one": one_pass, "two": two_passes}, steps, warmup, dev)
    result["cfg_step_one_batched_pass_s"] = cfg_medians["one"]["wall_s"]
    result["cfg_step_two_passes_s"] = cfg_medians["two"]["wall_s"]
    result["cfg_step_one_batched_pass_cpu_s"] = cfg_medians["one"]["cpu_s"]
    result["cfg_step_two_passes_cpu_s"] = cfg_medians["two"]["cpu_s"]
    if dev.type == "cuda":
        peak = peak_flops(torch.cuda.get_device_name(dev))
        if peak is not None:
            result["mfu_train"] = mfu(flops, result["lavinkit_train_step_s"], peak)
            result["peak_flops"] = peak
    return result


def build_parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="lavinkit bench jdit", description=__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with any of the options below")
    parser.add_argument("--hidden", type=int, default=384, help="transformer width")
    parser.add_argument("--depth", type=int, default=4, help="blocks")
    parser.add_argument("--heads", type=int, default=8, help="query heads (same for both models)")
    parser.add_argument("--kv-group", "--kv_group", type=int, default=1, help="query heads per kv head in lavinkit (1 = like SD3)")
    parser.add_argument("--latent", type=int, default=16, help="latent height = width (tokens per frame = (latent/2)^2)")
    parser.add_argument("--context-frames", "--context_frames", type=int, default=3, help="context frames (SD3: context tokens)")
    parser.add_argument("--batch", type=int, default=2, help="samples per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--device", type=str, default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", type=str, default="float32", help="float32 or bfloat16")
    parser.add_argument("--attention", type=str, default="sdpa", help="lavinkit attention backend name")
    parser.add_argument("--threads", type=int | None, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--compare", type=bool, default=True, help="also time diffusers' SD3Transformer2DModel")
    parser.add_argument("--json", type=str | None, default=None, help="also write the figures to this JSON file")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    if args.dtype not in ("float32", "bfloat16"):
        print(f"lavinkit bench jdit: --dtype must be float32 or bfloat16, got {args.dtype!r}", file=sys.stderr)
        return 2
    result = run(
        hidden=args.hidden, depth=args.depth, heads=args.heads, kv_group=args.kv_group, latent=args.latent,
        context_frames=args.context_frames, batch=args.batch, steps=args.steps, warmup=args.warmup,
        device=args.device, dtype=args.dtype, compare=args.compare, attention=args.attention,
        threads=args.threads,
    )
    def ms(key: str) -> str:
        return f"{result[key] * 1e3:.1f} ms wall, {result[key[:-2] + '_cpu_s'] * 1e3:.1f} ms CPU"

    lines = [f"config: {result['config']}", f"params: {result['params']}",
             f"train step (fwd+bwd) lavinkit: {ms('lavinkit_train_step_s')}"]
    if "diffusers_train_step_s" in result:
        lines += [f"train step (fwd+bwd) diffusers SD3: {ms('diffusers_train_step_s')}",
                  f"ratio lavinkit / diffusers: {result['ratio_lavinkit_over_diffusers']:.3f} wall, "
                  f"{result['ratio_lavinkit_over_diffusers_cpu']:.3f} CPU"]
    lines += [f"CFG step, one batched pass: {ms('cfg_step_one_batched_pass_s')}",
              f"CFG step, two passes: {ms('cfg_step_two_passes_s')}",
              f"train FLOPs/step: {result['train_flops_per_step']:.3e}",
              f"train tokens/s lavinkit: {result['lavinkit_train_tokens_per_s']:.0f}"]
    if "mfu_train" in result:
        lines.append(f"MFU (train, bf16 peak {result['peak_flops']:.3e}): {result['mfu_train']:.3f}")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0
