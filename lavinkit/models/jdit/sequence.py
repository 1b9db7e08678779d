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
