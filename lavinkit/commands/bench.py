"""``lavinkit bench data|stvae|jdit ...``: benchmarks that print medians and side-by-side ratios."""

from __future__ import annotations

import importlib
import sys

TARGETS = {
    "data": "in-context batches/s and pairs/s over image and clip shards, grouped vs plain reading",
    "stvae": "ST-VAE encode/decode throughput and peak memory (vs diffusers AutoencoderKLCogVideoX), chunked decode memory",
    "jdit": "J-DiT train step time (vs diffusers SD3Transformer2DModel), batched vs two-pass CFG, MFU on GPU",
    "train": "a recipe's model (J-DiT or ST-VAE) as it trains or samples: step time, samples/s, tokens/s, memory, FLOP/s, MFU",
    "attention": "attention variants (cores, mixers): block fwd+bwd time and memory vs in-context length, crossover vs sdpa",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: lavinkit bench <target> [options]\n\ntargets:")
        for name, desc in TARGETS.items():
            print(f"  {name:<7} {desc}")
        return 0
    if argv[0] not in TARGETS:
        print(f"lavinkit bench: unknown target {argv[0]!r}; choose from {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"lavinkit.bench.{argv[0]}")
    return int(module.main(argv[1:]) or 0)
