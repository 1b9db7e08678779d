"""``lavinkit bench jdit``: J-DiT step time side by side with diffusers' SD3 MM-DiT, CFG modes, MFU.

Both models are built at the same width, depth, head count and token count (context tokens = SD3's
``encoder_hidden_states`` length, target tokens = its image tokens), with matched FFN parameter
counts (SwiGLU ~8/3 D vs GELU 4 D) and QK RMSNorm on both. ``--kv_group 1`` (default) matches SD3's
multi-head attention; the official model uses GQA (``--kv_group 4``).

Reported (medians over ``--steps``): forward+backward train step of each model and the ratio
lavinkit/diffusers; a guided sampling step in each guidance mode (one batched pass with ``context_lengths``,
two passes, ``auto``) for a few context lengths (``--cfg_context_frames``, each with median, p10 and p90);
FLOPs per step and, on CUDA, MFU (design.md s.6). ``--compile blocks|model`` compiles both models the same
way (every transformer block, or the whole model) before timing, so the ratio stays like for like. Example::

    lavinkit bench jdit --hidden 384 --depth 4 --heads 8 --latent 16 --context_frames 3 --batch 2
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence

import torch

from lavinkit.bench.flops import jdit_flops, jdit_model_flops, per_token_params  # noqa: F401 (re-exported)
from lavinkit.bench.peaks import PEAK_BF16_FLOPS, mfu, peak_flops  # noqa: F401 (re-exported)
from lavinkit.bench.stats import spread
from lavinkit.flow.guidance import guided_velocity, padding_fraction, resolve_mode
from lavinkit.lit.parallel import compile_in_place, compile_mode
from lavinkit.models.jdit import JDiT, JDiTConfig


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
    """Median wall and process-CPU time of each function, with their 10th and 90th percentiles
    (``wall_s``, ``wall_p10_s``, ``wall_p90_s``, ``cpu_s``, ``cpu_p10_s``, ``cpu_p90_s``), called in alternation
    so that all see the same machine load. CPU time is the steadier figure on a shared CPU machine (it excludes
    time spent waiting for cores); wall time is what a user sees."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for i in range(warmup + steps):
        for name, fn in fns.items():
            sample = _timed(fn, device)
            if i >= warmup:
                times[name].append(sample)
    out = {}
    for name, v in times.items():
        wall, cpu = spread([w for w, _ in v]), spread([c for _, c in v])
        out[name] = {"wall_s": wall["median"], "wall_p10_s": wall["p10"], "wall_p90_s": wall["p90"],
                     "cpu_s": cpu["median"], "cpu_p10_s": cpu["p10"], "cpu_p90_s": cpu["p90"]}
    return out


def cfg_rows(
    model: JDiT, batch: int, latent: int, context_frames: Sequence[int], steps: int, warmup: int,
    device: torch.device, dtype: torch.dtype, scale: float = 1.5,
) -> list[dict]:
    """One guided velocity evaluation (what a sampling step costs) in each guidance mode, per context length.

    For each ``Tc`` in ``context_frames`` (image query and answer: ``Tc = 2 k + 1`` for ``k`` pairs) the modes
    ``batched``, ``two_pass`` and ``auto`` run :func:`lavinkit.flow.guidance.guided_velocity` on the same
    ``x [batch, 16, 1, latent, latent]``, interleaved. Each row holds the padding share of the batched pass,
    the mode ``auto`` chose, every mode's timing (median, p10, p90; wall and process CPU) and the ratios of the
    medians to two passes."""
    rows = []
    for tc in context_frames:
        g = torch.Generator().manual_seed(tc)
        x = torch.randn(batch, 16, 1, latent, latent, generator=g).to(device, dtype)
        ctx = torch.randn(batch, 16, tc, latent, latent, generator=g).to(device, dtype)
        t = torch.rand(batch, generator=g).to(device, dtype)

        def step(mode: str) -> Callable[[], torch.Tensor]:
            @torch.no_grad()
            def fn():
                return guided_velocity(model, x, t, ctx, scale=scale, mode=mode)

            return fn

        timings = interleaved_medians({mode: step(mode) for mode in ("batched", "two_pass", "auto")}, steps, warmup,
                                      device)
        two = timings["two_pass"]
        rows.append({
            "context_frames": tc, "pairs": max(tc - 1, 0) // 2, "padding_fraction": padding_fraction(tc),
            "auto_runs": resolve_mode("auto", tc), **{mode: timings[mode] for mode in timings},
            "ratio_batched_over_two_pass": timings["batched"]["wall_s"] / two["wall_s"],
            "ratio_auto_over_two_pass": timings["auto"]["wall_s"] / two["wall_s"],
            "ratio_batched_over_two_pass_cpu": timings["batched"]["cpu_s"] / two["cpu_s"],
            "ratio_auto_over_two_pass_cpu": timings["auto"]["cpu_s"] / two["cpu_s"],
        })
    return rows


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
    cfg_context_frames: Sequence[int] = (3, 9, 17), train: bool = True, compile: str = "none",
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
                   "device": str(dev), "dtype": dtype, "threads": torch.get_num_threads(), "compile": compile},
        "params": {"lavinkit": sum(p.numel() for p in ours.parameters())},
    }
    flops = jdit_model_flops(cfg, context_frames * tokens_per_frame, tokens_per_frame, batch)
    result["train_flops_per_step"] = flops
    if train:
        compile_in_place(ours, ours.blocks, compile)
        steps_to_time = {"lavinkit": _train_step(ours, lambda: ours(x, t, ctx))}
        if compare:
            sd3 = build_diffusers_sd3(hidden, depth, heads, latent, dev, torch_dtype).train()
            compile_in_place(sd3, sd3.transformer_blocks, compile)
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
    result["cfg"] = cfg_rows(ours, batch, latent, cfg_context_frames, steps, warmup, dev, torch_dtype)
    if dev.type == "cuda" and train:
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
    parser.add_argument("--compile", type=str, default="none",
                        help="torch.compile both models' blocks (blocks) or whole models (model) for the train rows")
    parser.add_argument("--train", type=bool, default=True, help="time the train step (false: only the CFG rows)")
    parser.add_argument("--compare", type=bool, default=True, help="also time diffusers' SD3Transformer2DModel")
    parser.add_argument("--cfg-context-frames", "--cfg_context_frames", type=list[int], default=[3, 9, 17],
                        help="context frames of the CFG rows (2k + 1 for k pairs); [] skips them")
    parser.add_argument("--json", type=str | None, default=None, help="also write the figures to this JSON file")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    try:
        compile_mode(args.compile)
    except ValueError as err:
        print(f"lavinkit bench jdit: --compile: {err}", file=sys.stderr)
        return 2
    if args.dtype not in ("float32", "bfloat16"):
        print(f"lavinkit bench jdit: --dtype must be float32 or bfloat16, got {args.dtype!r}", file=sys.stderr)
        return 2
    result = run(
        hidden=args.hidden, depth=args.depth, heads=args.heads, kv_group=args.kv_group, latent=args.latent,
        context_frames=args.context_frames, batch=args.batch, steps=args.steps, warmup=args.warmup,
        device=args.device, dtype=args.dtype, compare=args.compare, attention=args.attention,
        threads=args.threads, cfg_context_frames=args.cfg_context_frames, train=args.train, compile=args.compile,
    )
    def ms(key: str) -> str:
        return f"{result[key] * 1e3:.1f} ms wall, {result[key[:-2] + '_cpu_s'] * 1e3:.1f} ms CPU"

    lines = [f"config: {result['config']}", f"params: {result['params']}",
             f"train FLOPs/step: {result['train_flops_per_step']:.3e}"]
    if "lavinkit_train_step_s" in result:
        lines += [f"train step (fwd+bwd) lavinkit: {ms('lavinkit_train_step_s')}",
                  f"train tokens/s lavinkit: {result['lavinkit_train_tokens_per_s']:.0f}"]
    if "diffusers_train_step_s" in result:
        lines += [f"train step (fwd+bwd) diffusers SD3: {ms('diffusers_train_step_s')}",
                  f"ratio lavinkit / diffusers: {result['ratio_lavinkit_over_diffusers']:.3f} wall, "
                  f"{result['ratio_lavinkit_over_diffusers_cpu']:.3f} CPU"]
    if result["cfg"]:
        def spread(row: dict, mode: str) -> str:
            m = row[mode]
            return f"{m['wall_s'] * 1e3:.1f} [{m['wall_p10_s'] * 1e3:.1f}-{m['wall_p90_s'] * 1e3:.1f}]"

        lines.append("CFG step (scale 1.5), wall ms median [p10-p90]; ratios to two passes (wall / CPU):")
        for row in result["cfg"]:
            lines.append(
                f"  context {row['context_frames']} frames ({row['pairs']} pairs, {row['padding_fraction']:.0%} padded): "
                f"batched {spread(row, 'batched')}, two passes {spread(row, 'two_pass')}, "
                f"auto ({row['auto_runs']}) {spread(row, 'auto')}; batched/two {row['ratio_batched_over_two_pass']:.2f}"
                f" / {row['ratio_batched_over_two_pass_cpu']:.2f}, auto/two {row['ratio_auto_over_two_pass']:.2f}"
                f" / {row['ratio_auto_over_two_pass_cpu']:.2f}")
    if "mfu_train" in result:
        lines.append(f"MFU (train, bf16 peak {result['peak_flops']:.3e}): {result['mfu_train']:.3f}")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0
