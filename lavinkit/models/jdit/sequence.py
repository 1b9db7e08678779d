"""Joint token sequence of the J-DiT: position ids, key-padding masks, CFG batching.

The joint sequence is the context tokens (``Tc`` frames, t-major then row then column) followed by
the target tokens (``Tx`` frames). 3-D RoPE positions come from one ``(Tc + Tx, H', W')`` grid, so
target frame ``f`` sits at temporal index ``Tc + f``. With ``context_lengths`` (valid context frames
per row) the target of row ``b`` starts at ``context_lengths[b]`` instead, and context frames past it
are padding that no query may attend to. In-context pairs are thus told apart by positions only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lavinkit.nn.rope import grid_positions


def joint_positions(
    context_frames: int,
    target_frames: int,
    height: int,
    width: int,
    context_lengths: torch.Tensor | None = None,
    device=None,
) -> torch.Tensor:
    """(t, h, w) position ids of the joint sequence.

    Args:
        context_frames, target_frames: ``Tc`` and ``Tx``.
        height, width: token grid ``H' x W'``.
        context_lengths: optional ``[B]`` valid context frames per row.

    Returns:
        ``[L, 3]`` long (``L = (Tc + Tx) * H' * W'``), or ``[B, L, 3]`` when ``context_lengths`` is given.
    """
    if context_lengths is None:
        return grid_positions(context_frames + target_frames, height, width, device=device)
    ctx = grid_positions(context_frames, height, width, device=device)  # [Lc, 3]
    tgt = grid_positions(target_frames, height, width, device=device)  # [Lx, 3], t from 0
    b = context_lengths.shape[0]
    tgt = tgt.unsqueeze(0).repeat(b, 1, 1)  # [B, Lx, 3]
    tgt[..., 0] += context_lengths.to(tgt.device, torch.long)[:, None]
    return torch.cat([ctx.unsqueeze(0).expand(b, -1, -1), tgt], dim=1)


def pair_partners(
    context: torch.Tensor, query_frames: int, context_lengths: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent at the same place in each frame's partner (see ``JDiTConfig.pair_embedding``).

    The context ``[in_1, tgt_1, ..., in_k, tgt_k, query]`` holds items of ``query_frames`` frames each.
    Frame ``f`` of an example input is partnered with frame ``f`` of that example's target and vice
    versa; the query, padding, and rows whose examples are not whole items (the null context
    ``[zeros, query]`` of classifier-free guidance) get zeros. The target's partner is the query.

    Args:
        context: ``[B, C, Tc, H, W]`` context latents, the query in the last ``query_frames`` valid frames.
        query_frames: ``Tx``, frames per item.
        context_lengths: optional ``[B]`` valid context frames per row (default: all ``Tc``).

    Returns:
        ``(partners [B, C, Tc, H, W], query [B, C, Tx, H, W])``.
    """
    b, _, tc = context.shape[:3]
    device = context.device
    lengths = (
        torch.full((b,), tc, dtype=torch.long, device=device)
        if context_lengths is None
        else context_lengths.to(device=device, dtype=torch.long)
    )
    frame = torch.arange(tc, device=device)[None, :]  # [1, Tc]
    examples = (lengths - query_frames)[:, None]  # [B, 1] frames before the query
    item, offset = frame // query_frames, frame % query_frames
    partner = (item ^ 1) * query_frames + offset  # [1, Tc]: the other item of the same pair
    whole = (examples % (2 * query_frames) == 0) & (examples > 0)  # [B, 1]: the examples are whole pairs
    valid = whole & (frame < examples)  # [B, Tc]
    index = torch.where(valid, partner, 0).clamp_(max=tc - 1)  # [B, Tc]
    gather = index[:, None, :, None, None].expand(-1, context.shape[1], -1, *context.shape[3:])
    partners = torch.gather(context, 2, gather) * valid[:, None, :, None, None].to(context.dtype)
    query_index = (lengths[:, None] - query_frames + torch.arange(query_frames, device=device)[None, :])  # [B, Tx]
    query = torch.gather(
        context, 2, query_index[:, None, :, None, None].expand(-1, context.shape[1], -1, *context.shape[3:])
    )
    return partners, query


def key_padding_mask(
    context_lengths: torch.Tensor, context_frames: int, target_frames: int, tokens_per_frame: int
) -> torch.Tensor:
    """Boolean ``[B, 1, 1, L]`` mask, ``True`` for keys that may be attended (valid context and all targets)."""
    device = context_lengths.device
    frame = torch.arange(context_frames, device=device).repeat_interleave(tokens_per_frame)  # [Lc]
    ctx_valid = frame[None, :] < context_lengths[:, None]  # [B, Lc]
    tgt_valid = torch.ones(
        context_lengths.shape[0], target_frames * tokens_per_frame, dtype=torch.bool, device=device
    )
    return torch.cat([ctx_valid, tgt_valid], dim=1)[:, None, None, :]


def null_context(context: torch.Tensor) -> torch.Tensor:
    """The official unconditional context: ``[zeros frame, query frame]`` (``[B, C, 2, H, W]``).

    ``context`` is ``[B, C, Tc, H, W]`` with the query latent last.
    """
    return torch.cat([torch.zeros_like(context[:, :, :1]), context[:, :, -1:]], dim=2)


def pad_frames(context: torch.Tensor, frames: int) -> torch.Tensor:
    """Zero-pad ``[B, C, T, H, W]`` along time to ``frames`` frames."""
    extra = frames - context.shape[2]
    if extra < 0:
        raise ValueError(f"cannot pad {context.shape[2]} frames down to {frames}")
    return F.pad(context, (0, 0, 0, 0, 0, extra)) if extra else context


def cfg_batch(
    x: torch.Tensor, t: torch.Tensor, context: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs for classifier-free guidance in ONE batched forward.

    Rows ``[:B]`` carry the full context, rows ``[B:]`` the null context ``[zeros, query]``, zero-padded
    to a common length and described by ``context_lengths``; with them,
    ``c, u = model(*cfg_batch(x, t, context)).chunk(2)`` equals the two official forward passes.

    Args:
        x: ``[B, C, Tx, H, W]`` noisy target, t: ``[B]``, context: ``[B, C, Tc, H, W]``.

    Returns:
        ``(x2 [2B, ...], t2 [2B], context2 [2B, C, max(Tc, 2), H, W], context_lengths [2B])``.
    """
    b, tc = context.shape[0], context.shape[2]
    frames = max(tc, 2)
    context2 = torch.cat([pad_frames(context, frames), pad_frames(null_context(context), frames)], dim=0)
    lengths = torch.tensor([tc] * b + [2] * b, dtype=torch.long, device=context.device)
    return torch.cat([x, x], dim=0), torch.cat([t, t], dim=0), context2, lengths
