"""Classifier-free guidance for in-context J-DiT sampling.

The official null condition keeps the query: ``null = [zeros frame, query latent]`` (no examples, query
only), so guidance contrasts "examples + query" with "query only":
``g = u + scale * (c - u)`` with ``c = v(x, t | context)``, ``u = v(x, t | null)``.

The two branches have different context lengths. Three modes run them:

* ``"two_pass"``: two forward calls, each at its own length (the official code).
* ``"batched"``: ONE forward over ``[cond rows; uncond rows]``; the null context is zero-padded along time to the
  full context length and ``context_lengths`` tells the J-DiT how many context frames of each row are valid
  (padding is masked out as attention keys and the target's temporal RoPE index starts at the valid length;
  see the J-DiT contract).
* ``"auto"`` (default): ``"batched"`` only when padding is at most ``max_padding`` of the batched tokens
  (:func:`padding_fraction`), else ``"two_pass"``. The padded tokens are computed like real ones, so a batched
  pass costs about ``batched tokens / two-pass tokens`` times two passes: on a 2-core CPU (width 384, depth 4,
  8x8 tokens per frame, one thread) 1.17x at 1 pair (12.5 % padding), 1.37x at 2 pairs and 1.58x at 4 pairs
  (41 %). Batching only saves per-call overhead, so the default ``max_padding = 0`` batches only when nothing
  is padded (``lavinkit bench jdit`` prints the three modes side by side).

The modes agree up to float rounding. Only one ODE state is evolved (the official code evolves two identical
rows).

Model contract: ``model(x [B, C, Tx, H, W], t [B], context [B, C, Tc, H, W], context_lengths [B] | None)
-> v [B, C, Tx, H, W]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "null_context",
    "pad_context",
    "build_cfg_batch",
    "padding_fraction",
    "resolve_mode",
    "guided_velocity",
    "ClassifierFreeGuidance",
]

ContextModel = Callable[..., Tensor]
GuidanceMode = Literal["auto", "batched", "two_pass"]
GUIDANCE_MODES = ("auto", "batched", "two_pass")


def _valid_lengths(context: Tensor, context_lengths: Tensor | None) -> Tensor:
    batch, frames = context.shape[0], context.shape[2]
    if context_lengths is None:
        return torch.full((batch,), frames, dtype=torch.long, device=context.device)
    lengths = torch.as_tensor(context_lengths, dtype=torch.long, device=context.device)
    if lengths.shape != (batch,):
        raise ValueError(f"context_lengths must have shape [{batch}], got {tuple(lengths.shape)}")
    if bool((lengths < 1).any()) or bool((lengths > frames).any()):
        raise ValueError(f"context_lengths must lie in [1, {frames}] (the context has {frames} frames), got {lengths.tolist()}")
    return lengths


def null_context(context: Tensor, query_frames: int = 1, context_lengths: Tensor | None = None) -> Tensor:
    """The official null condition ``[zeros frame, query latent]``.

    Args:
        context: ``[B, C, Tc, H, W]`` context latents ``[in_1, tgt_1, ..., query]`` (time order).
        query_frames: latent frames of the query at the end of the valid context (1 for images).
        context_lengths: optional ``[B]`` valid frames per row (the query ends at ``context_lengths[b]``).

    Returns:
        ``[B, C, 1 + query_frames, H, W]``.
    """
    lengths = _valid_lengths(context, context_lengths)
    if bool((lengths < query_frames).any()):
        raise ValueError(f"context rows shorter than the query ({query_frames} frames): lengths {lengths.tolist()}")
    if context_lengths is None:
        query = context[:, :, context.shape[2] - query_frames :]
    else:
        # per-row gather of frames [L_b - q, L_b): index [B, 1, q, 1, 1] expanded over C, H, W
        idx = lengths[:, None] - query_frames + torch.arange(query_frames, device=context.device)[None]
        b, c, _, h, w = context.shape
        query = torch.gather(context, 2, idx[:, None, :, None, None].expand(b, c, query_frames, h, w))
    return torch.cat([torch.zeros_like(context[:, :, :1]), query], dim=2)


def pad_context(context: Tensor, frames: int) -> Tensor:
    """Zero-pad ``[B, C, T, H, W]`` along time to ``frames`` (``>= T``)."""
    if frames < context.shape[2]:
        raise ValueError(f"cannot pad a {context.shape[2]}-frame context to {frames} frames")
    return F.pad(context, (0, 0, 0, 0, 0, frames - context.shape[2]))


def build_cfg_batch(
    x: Tensor, t: Tensor, context: Tensor, *, query_frames: int = 1, context_lengths: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stack the conditional and unconditional rows for one forward pass.

    Args:
        x: ``[B, C, Tx, H, W]`` state; t: ``[B]``; context: ``[B, C, Tc, H, W]``.

    Returns:
        ``(x2 [2B, ...], t2 [2B], context2 [2B, C, T, H, W], lengths2 [2B])`` with rows ``[:B]`` conditional
        (valid length ``context_lengths`` or ``Tc``) and rows ``[B:]`` the null context (valid length
        ``1 + query_frames``), zero-padded to ``T = max(Tc, 1 + query_frames)``.
    """
    lengths = _valid_lengths(context, context_lengths)
    null = null_context(context, query_frames, context_lengths)
    frames = max(context.shape[2], null.shape[2])
    context2 = torch.cat([pad_context(context, frames), pad_context(null, frames)], dim=0)
    lengths2 = torch.cat([lengths, torch.full_like(lengths, null.shape[2])])
    return torch.cat([x, x], dim=0), torch.cat([t, t], dim=0), context2, lengths2


def padding_fraction(context_frames: int, target_frames: int = 1, query_frames: int = 1) -> float:
    """Share of the tokens of a batched CFG pass that are padding (the tokens two passes would not compute).

    Per conditional/unconditional row pair, a batched pass computes ``2 * (T + Tx)`` frames with
    ``T = max(Tc, 1 + query_frames)``; two passes compute ``(Tc + Tx) + (1 + query_frames + Tx)``. The
    J-DiT's tokens per frame cancel. Rows already padded by the caller's ``context_lengths`` count as
    valid here: both modes compute them.

    Args:
        context_frames: ``Tc``, context latent frames (pairs then query).
        target_frames: ``Tx``, latent frames of the answer.
        query_frames: latent frames of the query.
    """
    null = 1 + query_frames
    batched = 2 * (max(context_frames, null) + target_frames)
    two_pass = context_frames + null + 2 * target_frames
    return 1.0 - two_pass / batched


def resolve_mode(
    mode: GuidanceMode, context_frames: int, target_frames: int = 1, query_frames: int = 1, max_padding: float = 0.0
) -> Literal["batched", "two_pass"]:
    """The mode that runs: ``"auto"`` becomes ``"batched"`` when :func:`padding_fraction` ``<= max_padding``,
    else ``"two_pass"``; ``"batched"`` and ``"two_pass"`` are returned as they are."""
    if mode not in GUIDANCE_MODES:
        raise ValueError(f"unknown guidance mode {mode!r}; choose one of {', '.join(map(repr, GUIDANCE_MODES))}")
    if mode != "auto":
        return mode
    return "batched" if padding_fraction(context_frames, target_frames, query_frames) <= max_padding else "two_pass"


def guided_velocity(
    model: ContextModel,
    x: Tensor,
    t: Tensor,
    context: Tensor,
    *,
    scale: float,
    query_frames: int = 1,
    context_lengths: Tensor | None = None,
    mode: GuidanceMode = "auto",
    max_padding: float = 0.0,
) -> Tensor:
    """Guided velocity ``u + scale * (c - u)`` (float32 ``[B, C, Tx, H, W]``).

    ``scale == 1`` returns the conditional velocity with a single conditional forward (no null rows).
    ``mode="batched"``: one forward over ``2B`` rows; ``mode="two_pass"``: the official two calls (the null
    branch unpadded, without ``context_lengths``); ``mode="auto"``: :func:`resolve_mode` with ``max_padding``.
    """
    if scale == 1.0:
        return model(x, t, context, context_lengths).float()
    mode = resolve_mode(mode, context.shape[2], x.shape[2], query_frames, max_padding)
    if mode == "batched":
        x2, t2, ctx2, len2 = build_cfg_batch(x, t, context, query_frames=query_frames, context_lengths=context_lengths)
        cond, uncond = model(x2, t2, ctx2, len2).float().chunk(2, dim=0)
    else:
        cond = model(x, t, context, context_lengths).float()
        uncond = model(x, t, null_context(context, query_frames, context_lengths), None).float()
    return uncond + scale * (cond - uncond)


class ClassifierFreeGuidance:
    """Guidance settings; :meth:`velocity_fn` binds a model and a context into an ODE velocity function.

    Args:
        scale: guidance scale (official default 1.5; 1.0 disables guidance).
        mode: ``"auto"`` (batched when at most ``max_padding`` of its tokens would be padding, else two passes),
            ``"batched"`` (one forward of ``2B`` rows) or ``"two_pass"`` (two forwards, official).
        max_padding: padding share (0 to 1) up to which ``"auto"`` batches; see :func:`padding_fraction`.
    """

    def __init__(self, scale: float = 1.5, mode: GuidanceMode = "auto", max_padding: float = 0.0) -> None:
        if mode not in GUIDANCE_MODES:
            raise ValueError(f"unknown guidance mode {mode!r}; choose one of {', '.join(map(repr, GUIDANCE_MODES))}")
        if not 0.0 <= max_padding <= 1.0:
            raise ValueError(f"max_padding must lie in [0, 1], got {max_padding}")
        self.scale = float(scale)
        self.mode = mode
        self.max_padding = float(max_padding)

    def resolve(self, context_frames: int, target_frames: int = 1, query_frames: int = 1) -> str:
        """The mode run for these latent frame counts (``"batched"`` or ``"two_pass"``)."""
        return resolve_mode(self.mode, context_frames, target_frames, query_frames, self.max_padding)

    def forwards_per_eval(self, context_frames: int | None = None, target_frames: int = 1, query_frames: int = 1) -> int:
        """Model forward calls per velocity evaluation (1 when batched or unguided, 2 for two passes).

        ``"auto"`` depends on the shapes: pass ``context_frames`` (and the target/query frames) for it."""
        if self.scale == 1.0:
            return 1
        if self.mode == "auto" and context_frames is None:
            raise ValueError("forwards_per_eval: mode 'auto' needs context_frames (the mode depends on the shapes)")
        mode = self.mode if self.mode != "auto" else self.resolve(context_frames, target_frames, query_frames)
        return 1 if mode == "batched" else 2

    def velocity_fn(
        self,
        model: ContextModel,
        context: Tensor,
        *,
        query_frames: int = 1,
        context_lengths: Tensor | None = None,
    ) -> Callable[[Tensor, Tensor], Tensor]:
        """``fn(x [B, C, Tx, H, W], t [B]) -> guided v`` for ``lavinkit.flow.samplers``."""

        def fn(x: Tensor, t: Tensor) -> Tensor:
            return guided_velocity(
                model, x, t, context, scale=self.scale, query_frames=query_frames,
                context_lengths=context_lengths, mode=self.mode, max_padding=self.max_padding,
            )  # fmt: skip

        return fn

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance(scale={self.scale}, mode={self.mode!r}, max_padding={self.max_padding})"
