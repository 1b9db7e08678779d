"""``lavinkit bench attention``: cost of each attention variant as the in-context sequence grows.

One J-DiT block (both streams, projections, MLP and the variant's attention sub-layer) runs forward + backward
on joint sequences of ``1, 2, 4, 8`` example pairs of ``--latent`` x ``--latent`` image latents (plus the query
and a 1-frame target) and of ``--clip_pairs`` pairs of 5- and 17-frame clips (2 and 5 latent frames per item).
Reported per variant and sequence: median time (CPU time of the process on CPU, where the wall clock depends on
other load; CUDA-synchronised wall time on GPU), peak memory (CUDA: ``max_memory_allocated``; CPU: bytes saved for
backward, the activation memory that grows with the sequence) and the ratio to ``sdpa`` (the ``full`` core).
The crossover is the shortest sequence where a variant is faster than ``sdpa``. Variants that cannot train on
the device (FlexAttention on CPU) are timed forward only, against a forward-only ``sdpa``. Writes a Markdown table, JSON and a PNG
plot. Example::

    lavinkit bench attention --out runs/bench_attention --device cpu
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

VARIANTS: dict[str, dict] = {
    "sdpa": {},
    "pair_local": {"attention_core": "pair_local"},
    "factorized": {"attention_core": "factorized"},
    "infini": {"attention_core": "infini"},
    "infini_delta": {"attention_core": "infini", "attention_core_options": {"update": "delta"}},
    "flex_pair_local": {"attention_core": "flex", "attention_core_options": {"rule": "pair_local"}},
    "diffussm": {"token_mixer": "diffussm"},
}


def sequences(latent: int, patch: int, pairs: Sequence[int], clip_pairs: int) -> list[dict]:
    """Benchmark layouts: ``name``, item frames, pairs, tokens ``L``."""
    hw = (latent // patch) ** 2
    out = [dict(name=f"{p} pair{'s' if p > 1 else ''} (image)", item_frames=1, pairs=p) for p in pairs]
    for frames in (5, 17):
        out.append(dict(name=f"{clip_pairs} pairs, {frames}-frame clips", item_frames=1 + (frames - 1) // 4,
                        pairs=clip_pairs))
    for s in out:
        s["tokens"] = ((2 * s["pairs"] + 1) * s["item_frames"] + s["item_frames"]) * hw
    return sorted(out, key=lambda s: s["tokens"])


class _SavedBytes:
    """Sum of the bytes of distinct storages saved for backward (CPU activation-memory proxy)."""

    def __init__(self):
        self.seen: dict[int, int] = {}

    def pack(self, t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            self.seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def _block_inputs(block, seq: dict, latent: int, patch: int, batch: int, device, dtype):
    from lavinkit.models.jdit.sequence import joint_positions
    from lavinkit.nn.attention.layout import build_layout
    from lavinkit.nn.rope import rope_cos_sin

    hp = latent // patch
    f = seq["item_frames"]
    tc, tx = (2 * seq["pairs"] + 1) * f, f
    cfg_axes, d = block.axes_dims, block.hidden_size
    cos, sin = rope_cos_sin(joint_positions(tc, tx, hp, hp, device=device), cfg_axes)
    layout = build_layout(tc, tx, hp, hp, cos[None, None], sin[None, None], cfg_axes, block.scale)
    g = torch.Generator(device="cpu").manual_seed(0)
    h_ctx = torch.randn(batch, tc * hp * hp, d, generator=g).to(device, dtype).requires_grad_()
    h_tgt = torch.randn(batch, tx * hp * hp, d, generator=g).to(device, dtype).requires_grad_()
    c = torch.randn(2, batch, d, generator=g).to(device, dtype)
    return h_ctx, h_tgt, c[0], c[1], layout


def time_variant(name: str, seq: dict, hidden: int, heads: int, kv_group: int, latent: int, batch: int,
                 steps: int, warmup: int, device: str, dtype: torch.dtype, forward_only: bool = False) -> dict:
    from lavinkit.models.jdit import JDiTConfig
    from lavinkit.models.jdit.block import JointBlock

    head_dim = hidden // heads
    axes = (head_dim - 2 * (head_dim * 3 // 8 // 2 * 2),) + (head_dim * 3 // 8 // 2 * 2,) * 2
    config = JDiTConfig.from_name("tiny", hidden_size=hidden, num_heads=heads, kv_group=kv_group, depth=2,
                                  rope_axes_dims=axes, **VARIANTS[name])
    torch.manual_seed(0)
    block = JointBlock(config, last=False, device=device, dtype=dtype)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.02)
    trains = block.core is None or block.core.capabilities.trains_on_cpu or str(device).startswith("cuda")
    trains = trains and not forward_only
    inputs = _block_inputs(block, seq, latent, config.patch_size[0], batch, device, dtype)
    is_cuda = str(device).startswith("cuda")

    def step() -> int:
        saved = _SavedBytes()
        if trains:
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
                h_ctx, h_tgt = block(*inputs)
            (h_ctx.float().square().mean() + h_tgt.float().square().mean()).backward()
            block.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                block(*inputs)
        return saved.total

    for _ in range(warmup):
        step()
    times, saved = [], 0
    if is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        if is_cuda:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            saved = step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        else:
            t0 = time.process_time()
            saved = step()
            times.append(time.process_time() - t0)
    memory = torch.cuda.max_memory_allocated() if is_cuda else saved
    return dict(variant=name, sequence=seq["name"], tokens=seq["tokens"], time_s=statistics.median(times),
                memory_bytes=int(memory), mode="fwd+bwd" if trains else "fwd only")


def _baseline(rows: list[dict]) -> dict[tuple[str, int], float]:
    """``(mode, tokens) -> sdpa time``."""
    return {(r["mode"], r["tokens"]): r["time_s"] for r in rows if r["variant"] == "sdpa"}


def crossovers(rows: list[dict]) -> dict[str, str]:
    """Per variant: the shortest sequence from which on it beats ``sdpa`` in the same mode (fwd+bwd, or forward
    only where the variant cannot train on the device), or 'never at these sizes'."""
    base = _baseline(rows)
    out = {}
    for name in dict.fromkeys(r["variant"] for r in rows):
        if name == "sdpa":
            continue
        mine = sorted((r for r in rows if r["variant"] == name), key=lambda r: r["tokens"])
        if any((r["mode"], r["tokens"]) not in base for r in mine):
            out[name] = "not comparable (no sdpa timing in the same mode)"
            continue
        faster = [r["time_s"] < base[(r["mode"], r["tokens"])] for r in mine]
        first = next((i for i in range(len(faster)) if all(faster[i:])), None)
        note = "" if mine[0]["mode"] == "fwd+bwd" else " (forward only)"
        out[name] = ("never at these sizes" if first is None
                     else f"from {mine[first]['tokens']} tokens ({mine[first]['sequence']})") + note
    return out


def table(rows: list[dict]) -> str:
    base = _baseline(rows)
    lines = ["| variant | sequence | tokens | mode | time (ms) | vs sdpa | memory (MiB) |",
             "|---|---|---:|---|---:|---:|---:|"]
    for r in rows:
        key = (r["mode"], r["tokens"])
        ratio = r["time_s"] / base[key] if key in base else float("nan")
        lines.append(f"| {r['variant']} | {r['sequence']} | {r['tokens']} | {r['mode']} | {r['time_s'] * 1e3:.1f} | "
                     f"{ratio:.2f} | {r['memory_bytes'] / 2**20:.1f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, mode in dict.fromkeys((r["variant"], r["mode"]) for r in rows):
        mine = sorted((r for r in rows if r["variant"] == name and r["mode"] == mode), key=lambda r: r["tokens"])
        style = "--" if mode != "fwd+bwd" else "-"
        label = name + (" (fwd only)" if style == "--" else "")
        axes[0].plot([r["tokens"] for r in mine], [r["time_s"] * 1e3 for r in mine], style, marker="o", label=label)
        axes[1].plot([r["tokens"] for r in mine], [r["memory_bytes"] / 2**20 for r in mine], style, marker="o", label=label)
    axes[0].set(xlabel="joint sequence tokens", ylabel="block fwd+bwd time (ms)", xscale="log", yscale="log",
                title=f"time per block step ({device})")
    axes[1].set(xlabel="joint sequence tokens", ylabel="MiB", xscale="log", yscale="log",
                title="peak memory" if device.startswith("cuda") else "activations saved for backward")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="lavinkit bench attention", description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=list[str], default=list(VARIANTS), help=f"subset of {list(VARIANTS)}")
    parser.add_argument("--pairs", type=list[int], default=[1, 2, 4, 8], help="example pairs of image latents")
    parser.add_argument("--clip-pairs", "--clip_pairs", type=int, default=2, help="example pairs for the 5- and 17-frame clips")
    parser.add_argument("--latent", type=int, default=16, help="latent height = width (patch 2)")
    parser.add_argument("--hidden", type=int, default=192, help="block width")
    parser.add_argument("--heads", type=int, default=4, help="query heads")
    parser.add_argument("--kv-group", "--kv_group", type=int, default=2, help="query heads per kv head")
    parser.add_argument("--batch", type=int, default=1, help="samples per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--device", type=str, default="cpu", help="cpu, cuda, ...")
    parser.add_argument("--dtype", type=str, default="float32", help="float32 or bfloat16")
    parser.add_argument("--threads", type=int | None, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--out", type=str | None, default=None, help="folder for attention.{md,json,png}")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        print(f"lavinkit bench attention: unknown variant(s) {unknown}; choose from {list(VARIANTS)}", file=sys.stderr)
        return 2
    if args.dtype not in ("float32", "bfloat16"):
        print(f"lavinkit bench attention: --dtype must be float32 or bfloat16, got {args.dtype!r}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    variants = ["sdpa"] + [v for v in args.variants if v != "sdpa"]
    rows = []
    for seq in sequences(args.latent, 2, args.pairs, args.clip_pairs):
        for name in variants:
            rows.append(time_variant(name, seq, args.hidden, args.heads, args.kv_group, args.latent, args.batch,
                                     args.steps, args.warmup, args.device, dtype))
            print(f"  {name:<16} {seq['name']:<26} {rows[-1]['mode']:<8} {rows[-1]['time_s'] * 1e3:8.1f} ms", file=sys.stderr)
        if any(r["mode"] != "fwd+bwd" for r in rows) and not any(
                r["variant"] == "sdpa" and r["mode"] != "fwd+bwd" and r["tokens"] == seq["tokens"] for r in rows):
            rows.append(time_variant("sdpa", seq, args.hidden, args.heads, args.kv_group, args.latent, args.batch,
                                     args.steps, args.warmup, args.device, dtype, forward_only=True))
    rows.sort(key=lambda r: (variants.index(r["variant"]), r["mode"] != "fwd+bwd", r["tokens"]))
    cross = crossovers(rows)
    timing = "CPU time" if args.device == "cpu" else "wall time"
    text = [f"# lavinkit bench attention ({args.device}, {args.dtype}, {timing}; hidden {args.hidden}, {args.heads} heads, "
            f"kv_group {args.kv_group}, batch {args.batch}; one block, forward + backward)", "", table(rows), "",
            "Crossover vs sdpa:"] + [f"- {k}: {v}" for k, v in cross.items()]
    print("\n".join(text))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "attention.md").write_text("\n".join(text) + "\n")
        (out / "attention.json").write_text(json.dumps({"args": vars(args) | {"variants": variants}, "rows": rows,
                                                        "crossover": cross}, indent=1, default=str))
        plot(rows, out / "attention.png", args.device)
        print(f"wrote {out / 'attention.md'}, attention.json, attention.png")
    return 0
