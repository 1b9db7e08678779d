"""Joint token sequence of the J-DiT: position ids and key-padding masks.

The joint sequence is the context tokens (``Tc`` frames, t-major then row then column) followed by
the target tokens (``Tx`` frames). 3-D RoPE positions come from one ``(Tc + Tx, H', W')`` grid, so
target frame ``f`` sits at temporal index ``Tc + f``. With ``context_lengths`` (valid context frames
per row) the target of row ``b`` starts at ``context_lengths[b]`` instead, and context frames past it
are padding that no query may attend to. In-context pairs are thus told apart by positions only.

The null context and the batched CFG inputs are defined once, in :mod:`lavinkit.flow.guidance`; ``null_context``,
``cfg_batch`` (= ``build_cfg_batch``) and ``pad_frames`` (= ``pad_context``) are re-exported here under their
earlier names.
"""

from __future__ import annotations

import torch

from lavinkit.flow.guidance import build_cfg_batch as cfg_batch  # noqa: F401 - earlier name, re-exported
from lavinkit.flow.guidance import null_context  # noqa: F401 - re-exported
from lavinkit.flow.guidance import pad_context as pad_frames  # noqa: F401 - earlier name, re-exported
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
