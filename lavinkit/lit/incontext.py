"""The in-context latent sequence of a J-DiT training step, built from a DataModule batch.

A batch holds ``N = k + 1`` pairs of one task per row, the query pair last (``lavinkit.data``)::

    batch["input"], batch["target"]: [B, N, 3, T, H, W] pixels in [-1, 1]      (pair DataModules)
                                     [B, N, C, t, h, w] normalised latents     (latent DataModule, "latents": True)

The J-DiT sees (official ``inference.py`` layout, section 1 of ``docs/official-arch.md``)::

    context = [in_1, tgt_1, ..., in_k, tgt_k, query_in]    # [B, C, (2k + 1) t, h, w], time order
    x1      = query_target                                  # [B, C, t, h, w]

Images are encoded one frame at a time (each a 1-frame clip, as the official code does), clips one clip at a
time; latents are normalised with the VAE's own shift/scale (``STVAE.normalize_latents``).

Classifier-free guidance needs a "null" context. It keeps the query and replaces all examples by one
all-zero latent frame: ``[zeros(1 frame), query_in]`` (official ``forward_with_cfg``). Training drops the
context of a row to exactly that sequence, left-aligned and zero-padded to the batch's context length, with
``context_lengths[b]`` marking the valid frames (the J-DiT masks the padding and starts the target's temporal
position at ``context_lengths[b]``), built with the same functions (``lavinkit.flow.guidance.null_context`` and
``pad_context``) that batched CFG uses for its unconditional rows at inference.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lavinkit.flow.guidance import null_context, pad_context

__all__ = [
    "encode_pixels",
    "encode_pairs",
    "build_context",
    "drop_context",
]

EncodeMode = Literal["mean", "sample"]


@torch.no_grad()
def encode_pixels(
    vae,
    pixels: Tensor,
    *,
    mode: EncodeMode = "mean",
    generator: torch.Generator | None = None,
    max_batch: int = 16,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Encode images/clips with a frozen ST-VAE and normalise the latents.

    Args:
        vae: an ``STVAE`` (``encode`` -> diagonal Gaussian, ``normalize_latents``).
        pixels: ``[M, 3, T, H, W]`` in [-1, 1]. ``T == 1`` images are encoded as independent 1-frame clips.
        mode: ``"mean"`` (posterior mean, deterministic) or ``"sample"`` (reparameterised draw).
        generator: RNG of the ``"sample"`` draws.
        max_batch: at most this many images/clips per encoder call (bounds activation memory).
        dtype: dtype the pixels are cast to before encoding (``None``: the VAE's parameter dtype).

    Returns:
        ``[M, C, 1 + (T - 1) // 4, H / 8, W / 8]`` float32 normalised latents.
    """
    if pixels.ndim != 5 or pixels.shape[1] != 3:
        raise ValueError(f"encode_pixels expects pixels [M, 3, T, H, W], got shape {tuple(pixels.shape)}")
    if mode not in ("mean", "sample"):
        raise ValueError(f"encode mode must be 'mean' or 'sample', got {mode!r}")
    if dtype is None:
        dtype = next(vae.parameters()).dtype
    out = []
    for start in range(0, pixels.shape[0], max(1, int(max_batch))):
        chunk = pixels[start : start + max_batch].to(dtype)
        post = vae.encode(chunk)
        z = post.mean if mode == "mean" else post.sample(generator=generator)
        out.append(vae.normalize_latents(z.float()))
    return torch.cat(out, dim=0)


def encode_pairs(
    vae,
    inputs: Tensor,
    targets: Tensor,
    *,
    mode: EncodeMode = "mean",
    generator: torch.Generator | None = None,
    max_batch: int = 16,
) -> tuple[Tensor, Tensor]:
    """Encode every input and target of an in-context batch.

    Args:
        inputs, targets: ``[B, N, 3, T, H, W]`` pixels in [-1, 1].

    Returns:
        ``(inputs, targets)`` as ``[B, N, C, t, h, w]`` normalised float32 latents.
    """
    if inputs.shape != targets.shape or inputs.ndim != 6:
        raise ValueError(
            f"batch 'input' and 'target' must both be [B, N, 3, T, H, W]; got {tuple(inputs.shape)} and "
            f"{tuple(targets.shape)}"
        )
    b, n = inputs.shape[:2]
    flat = torch.cat([inputs.flatten(0, 1), targets.flatten(0, 1)], dim=0)  # [2 B N, 3, T, H, W]
    lat = encode_pixels(vae, flat, mode=mode, generator=generator, max_batch=max_batch)
    lat_in, lat_tgt = lat.chunk(2, dim=0)  # each [B N, C, t, h, w]
    return lat_in.unflatten(0, (b, n)), lat_tgt.unflatten(0, (b, n))


def build_context(inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenate example pairs and the query along time.

    Args:
        inputs, targets: ``[B, N, C, t, h, w]`` latents, ``N = k + 1`` with the query pair last.

    Returns:
        ``(context, x1)``: ``context [B, C, (2k + 1) t, h, w]`` ordered ``[in_1, tgt_1, ..., in_k, tgt_k,
        query_in]`` and ``x1 = query_target [B, C, t, h, w]``.

    Raises:
        ValueError: shapes differ between inputs and targets, or between the examples and the query (the
            message gives both shapes).
    """
    if inputs.ndim != 6 or targets.ndim != 6:
        raise ValueError(
            f"in-context latents must be [B, N, C, t, h, w]; got input {tuple(inputs.shape)}, "
            f"target {tuple(targets.shape)}"
        )
    if inputs.shape != targets.shape:
        raise ValueError(
            "context/target mismatch: every input and target of a batch must share [C, t, h, w]; got input "
            f"{tuple(inputs.shape)} and target {tuple(targets.shape)} ([B, N, C, t, h, w])"
        )
    b, n, c, t, h, w = inputs.shape
    examples = torch.stack([inputs[:, :-1], targets[:, :-1]], dim=2)  # [B, k, 2, C, t, h, w]
    examples = examples.permute(0, 3, 1, 2, 4, 5, 6).reshape(b, c, 2 * (n - 1) * t, h, w)  # [B, C, 2 k t, h, w]
    context = torch.cat([examples, inputs[:, -1]], dim=2)  # [B, C, (2k + 1) t, h, w]
    return context, targets[:, -1]


def drop_context(context: Tensor, query_frames: int, drop: Tensor) -> tuple[Tensor, Tensor]:
    """Replace the context of the rows in ``drop`` by the (padded) null context.

    Args:
        context: ``[B, C, Tc, h, w]`` full contexts whose last ``query_frames`` frames are the query.
        query_frames: latent frames of the query (``t``).
        drop: ``[B]`` bool, rows whose examples are dropped.

    Returns:
        ``(context, context_lengths)``: ``context [B, C, Tc, h, w]`` where dropped rows hold
        ``[zeros, query, 0 ... 0]`` and ``context_lengths [B]`` long with ``Tc`` for kept rows and
        ``1 + query_frames`` for dropped rows.
    """
    tc = context.shape[2]
    if 1 + query_frames > tc:
        raise ValueError(
            f"context dropout needs at least one example pair: the null context has {1 + query_frames} frames "
            f"but the full context only {tc} (num_context must be >= 1)"
        )
    # the very tensors batched CFG feeds its unconditional rows (lavinkit.flow.guidance.build_cfg_batch)
    null = pad_context(null_context(context, query_frames), tc)  # [B, C, Tc, h, w]
    drop = drop.to(device=context.device, dtype=torch.bool)
    out = torch.where(drop.view(-1, 1, 1, 1, 1), null, context)
    lengths = torch.where(
        drop,
        torch.full_like(drop, 1 + query_frames, dtype=torch.long),
        torch.full_like(drop, tc, dtype=torch.long),
    )
    return out, lengths
