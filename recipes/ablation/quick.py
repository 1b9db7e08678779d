"""In-process attention ablation on the demo latents, for machines where `lavinkit fit` start-up dominates.

Every variant trains the recipe's J-DiT (hidden 192, depth 4, 4 heads, 2 kv heads) from the same initial seed on
the SAME list of training batches (two example pairs + query, batch 4, read once from the latent shards) with
AdamW, and is scored by the flow-matching loss (MSE + 0.1 L1, logit-normal times with mean -1, as the recipe) on
the same validation batches with fixed noise and times. Run from the repository root after the quickstart's
stages 1-3 (demo data, ST-VAE, latents):

    python recipes/ablation/quick.py --steps 300 --val-batches 16 --seed 0 --out runs/ablation_attention/quick_s0.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

VARIANTS = {
    "sdpa": {},
    "pair_local": {"attention_core": "pair_local"},
    "factorized": {"attention_core": "factorized"},
    "infini": {"attention_core": "infini"},
    "infini_delta": {"attention_core": "infini", "attention_core_options": {"update": "delta"}},
    "diffussm": {"token_mixer": "diffussm"},
}
BASE = dict(hidden_size=192, depth=4, num_heads=4, kv_group=2)


def batches(urls: str, vae: str, count: int, seed: int, train: bool) -> list[dict]:
    from lavinkit.data import LatentPairDataModule

    dm = LatentPairDataModule(train_urls=urls if train else None, val_urls=None if train else urls, batch_size=4,
                              num_context=2, val_num_context=2, steps_per_epoch=count, val_batches=count, vae=vae,
                              seed=seed, shuffle_buffer=200)
    dm.setup("fit" if train else "validate")
    loader = dm.train_dataloader() if train else dm.val_dataloader()
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == count:
            break
    return out


def run(name: str, train: list[dict], val: list[dict], lr: float, seed: int = 0) -> dict:
    from lavinkit.flow import FlowMatchingObjective, LogitNormalTimeSampler
    from lavinkit.lit import JDiTModule

    torch.manual_seed(seed)
    objective = FlowMatchingObjective(time_sampler=LogitNormalTimeSampler(mean=-1.0, std=1.0, per_sample_draws=False))
    module = JDiTModule(dit="tiny", dit_overrides={**BASE, **VARIANTS[name]}, objective=objective, context_dropout=0.1)
    module.configure_model()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses, cpu = [], []
    module.train()
    for i, batch in enumerate(train):
        module._batch_idx = i  # a different time/noise/dropout draw per step
        t0 = time.process_time()
        loss = module.flow_loss(batch, dropout=module.context_dropout)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        cpu.append(time.process_time() - t0)
        losses.append(float(loss.detach()))
    module.eval()
    with torch.no_grad():
        val_losses = []
        for i, batch in enumerate(val):
            module._batch_idx = i
            val_losses.append(float(module.flow_loss(batch, dropout=0.0)["loss"]))
    tail = losses[-max(len(losses) // 5, 1):]
    return dict(variant=name, val_loss=statistics.mean(val_losses), train_loss=statistics.mean(tail),
                cpu_s_per_step=statistics.median(cpu))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default="runs/quickstart_latents/train/latents-*.tar")
    parser.add_argument("--val", default="runs/quickstart_latents/val/latents-*.tar")
    parser.add_argument("--vae", default="runs/quickstart_stvae/checkpoints/last.ckpt")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--val-batches", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="initial weights and training batch order")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = batches(args.train, args.vae, args.steps, seed=args.seed, train=True)
    val = batches(args.val, args.vae, args.val_batches, seed=0, train=False)
    lines = [f"| variant | val flow loss ({len(val)} batches) | train loss (last 20% of {len(train)} steps) | CPU s/step |",
             "|---|---:|---:|---:|"]
    for name in args.variants.split(","):
        r = run(name, train, val, args.lr, seed=args.seed)
        lines.append(f"| {name} | {r['val_loss']:.4f} | {r['train_loss']:.4f} | {r['cpu_s_per_step']:.3f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
