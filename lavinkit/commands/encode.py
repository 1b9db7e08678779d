"""``lavinkit encode``: pre-encode pair shards into latent shards with a frozen ST-VAE (a latent cache).

Reads pair shards (``<key>.input.<ext>``, ``<key>.target.<ext>``, ``<key>.json``; decoded by
``lavinkit.data.schema.decode_pair``), encodes input and target with the VAE (images one frame at a time as
1-frame clips, clips whole), normalises with the VAE's own shift/scale, and writes latent shards::

    <key>.input.npy    float16 [C, t, h, w] normalised latents
    <key>.target.npy   float16 [C, t, h, w]
    <key>.json         the pair's json + {"latents": true, "latent_shape": [C, t, h, w], "source_url": ...,
                       "vae": {"path", "sha256", "config", "latent_channels", "shift", "scale",
                               "normalized": true, "dtype", "mode", "seed"}}

plus ``index.json`` (the pair-shard index format with ``"format": "lavinkit-latents"`` and the VAE record).
Shards are renamed to their final names only when complete, and ``index.json`` is written last: a failed run
(full disk, an unreadable input shard, Ctrl-C) leaves no partial shard under a final name and no index.
Training on these shards (the latent DataModule) takes the VAE out of the J-DiT step.

Example::

    lavinkit encode --data runs/demo/train --vae runs/quickstart/stvae_stage2/vae.safetensors \\
        --out runs/demo_latents/train --mode mean
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch

LATENT_FORMAT = "lavinkit-latents"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def vae_record(vae, path: str | Path, *, dtype: str, mode: str, seed: int) -> dict:
    """The VAE description stored in every latent sample's json and in ``index.json``."""
    cfg = vae.config
    return {
        "path": str(path),
        "sha256": sha256_file(path),
        "config": cfg.name,
        "latent_channels": int(cfg.latent_channels),
        "shift": float(cfg.latent_shift),
        "scale": float(cfg.latent_scale),
        "normalized": True,
        "dtype": dtype,
        "mode": mode,
        "seed": int(seed),
    }


def _sample_seed(seed: int, key: str, member: str) -> int:
    digest = hashlib.sha256(f"{seed}:{key}:{member}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFFFFFFFFFFFFFF


@torch.no_grad()
def encode_group(vae, pixels: torch.Tensor, keys: list[str], member: str, *, mode: str, seed: int,
                 dtype: torch.dtype) -> torch.Tensor:
    """Encode ``pixels [M, 3, T, H, W]`` (uint8) to normalised float32 latents ``[M, C, t, h, w]``.

    ``mode="sample"`` draws each sample's noise from its own generator seeded by ``(seed, key, member)``, so the
    result does not depend on the batch size or the order of the shards.
    """
    device = next(vae.parameters()).device
    x = pixels.to(device=device, dtype=torch.float32) / 127.5 - 1.0  # uint8 -> [-1, 1]
    post = vae.encode(x.to(dtype))
    if mode == "mean":
        z = post.mean.float()
    else:
        noise = torch.stack([
            torch.randn(post.mean.shape[1:], generator=torch.Generator().manual_seed(_sample_seed(seed, k, member)))
            for k in keys
        ]).to(device)  # fmt: skip
        z = post.mean.float() + post.std.float() * noise
    return vae.normalize_latents(z).float()


def _latent_sample(key: str, lat_in: torch.Tensor, lat_tgt: torch.Tensor, pair: dict, vae_info: dict) -> dict:
    meta = dict(pair["meta"])
    meta.update(
        task=pair["task"], key=key, source_url=pair.get("url"), latents=True,
        latent_shape=list(lat_in.shape), vae=vae_info,
    )
    _, frames, height, width = pair["input"].shape
    meta.setdefault("modality", "image" if frames == 1 else "video")
    meta.setdefault("frames", int(frames))
    meta.setdefault("height", int(height))
    meta.setdefault("width", int(width))
    return {
        "__key__": key,
        "input.npy": lat_in.cpu().numpy().astype(np.float16),
        "target.npy": lat_tgt.cpu().numpy().astype(np.float16),
        "json": json.dumps(meta, sort_keys=True).encode(),
    }


def encode_shards(
    data: list[str],
    out: str | Path,
    vae_path: str | Path,
    *,
    mode: Literal["mean", "sample"] = "mean",
    seed: int = 0,
    dtype: str = "float32",
    batch_size: int = 16,
    device: str = "auto",
    maxcount: int = 1000,
    use_ema: bool = True,
    log_every: int = 0,
    progress: bool = True,
) -> Path:
    """Encode pair shards into latent shards; returns the path of the written ``index.json``.

    Shards are read with the shared reader and every sample is checked by the shared checker
    (``lavinkit.data.schema.decode_pair``); ``progress`` shows a bar with an ETA (total from the ``index.json``
    next to the shards when there is one)."""
    from tqdm.auto import tqdm

    from lavinkit.data.schema import decode_pair
    from lavinkit.data.shards import (
        PairShardWriter,
        find_index,
        open_shard,
        resolve_urls,
        shard_samples,
        task_counts_from_index,
        write_index,
    )
    from lavinkit.models.stvae import STVAE

    if mode not in ("mean", "sample"):
        raise ValueError(f"--mode must be 'mean' or 'sample', got {mode!r}")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if not Path(vae_path).is_file():
        raise FileNotFoundError(f"--vae {vae_path}: no such ST-VAE weights file")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    urls = resolve_urls(data, what="--data")
    vae = STVAE.from_pretrained(vae_path, use_ema=use_ema).eval().requires_grad_(False)
    vae.to(device=device, dtype=DTYPES[dtype])
    info = vae_record(vae, vae_path, dtype=dtype, mode=mode, seed=seed)

    out = Path(out)
    writer = PairShardWriter(out, "latents", maxcount=maxcount)
    pending: list[dict] = []
    count, start = 0, time.time()

    def flush() -> None:
        nonlocal count
        if not pending:
            return
        keys = [p["key"] for p in pending]
        lat_in = encode_group(vae, torch.stack([p["input"] for p in pending]), keys, "input",
                              mode=mode, seed=seed, dtype=DTYPES[dtype])
        lat_tgt = encode_group(vae, torch.stack([p["target"] for p in pending]), keys, "target",
                               mode=mode, seed=seed, dtype=DTYPES[dtype])
        for i, pair in enumerate(pending):
            writer.write(_latent_sample(pair["key"], lat_in[i], lat_tgt[i], pair, info))
        count += len(pending)
        bar.update(len(pending))
        if log_every and count // log_every != (count - len(pending)) // log_every:
            print(f"encoded {count} pairs ({count / max(time.time() - start, 1e-9):.1f} pairs/s)", file=sys.stderr)
        pending.clear()

    total = sum(task_counts_from_index(find_index(urls), urls).values()) or None
    bar = tqdm(total=total, desc="lavinkit encode", unit="pair", disable=not progress)
    with writer, bar:
        for url in urls:
            with open_shard(url) as stream:
                for raw in shard_samples(url, stream):
                    pair = decode_pair(raw)
                    if pending and pending[0]["input"].shape != pair["input"].shape:
                        flush()  # one encoder call per shape
                    pending.append(pair)
                    if len(pending) >= batch_size:
                        flush()
        flush()
    if count == 0:
        raise ValueError(f"--data {data}: the shards hold no samples")
    index_path = write_index(out, writer.shards.values(),
                             extra={"format": LATENT_FORMAT, "vae": info, "source": [str(u) for u in urls]})
    print(f"wrote {count} latent pairs to {out} ({time.time() - start:.1f} s)", file=sys.stderr)
    return index_path


def build_parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="lavinkit encode",
        description="Encode pair shards into float16 latent shards (normalised with the VAE's shift/scale).",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with any of the options below")
    parser.add_argument("--data", type=str, nargs="+", required=True,
                        help="pair shards: folders (all *.tar), globs, shard paths or brace patterns (as the DataModules)")
    parser.add_argument("--out", type=str, required=True, help="output folder for latents-%%06d.tar and index.json")
    parser.add_argument("--vae", type=str, required=True, help="ST-VAE weights (.safetensors) or lavinkit .ckpt")
    parser.add_argument("--mode", type=Literal["mean", "sample"], default="mean",
                        help="posterior mean (deterministic) or a seeded sample per pair member")
    parser.add_argument("--seed", type=int, default=0, help="seed of --mode sample")
    parser.add_argument("--dtype", type=Literal["float32", "bfloat16", "float16"], default="float32",
                        help="VAE compute dtype (latents are stored as float16 either way)")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=16, help="pairs per encoder call")
    parser.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per output shard")
    parser.add_argument("--use-ema", "--use_ema", type=bool, default=True, help="use the VAE's EMA weights when present")
    parser.add_argument("--progress", type=bool, default=True, help="show a progress bar with an ETA")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    encode_shards(
        args.data, args.out, args.vae, mode=args.mode, seed=args.seed, dtype=args.dtype,
        batch_size=args.batch_size, device=args.device, maxcount=args.maxcount, use_ema=args.use_ema,
        progress=args.progress,
    )  # fmt: skip
    return 0
