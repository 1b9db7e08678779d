"""Built-in attention backends: ``sdpa`` (default) and ``naive`` (explicit softmax reference)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lavinkit.nn.attention.registry import register_attention


def _check_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects 4-D q/k/v [B, H, L, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[1] != v.shape[1] or q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]}, {v.shape[1]})")
    return q.shape[1] // k.shape[1]


@register_attention("sdpa")
def sdpa_attention(q, k, v, *, attn_mask=None, scale=None):
    """``F.scaled_dot_product_attention``; query head h reads kv head h // group.

    GQA uses ``enable_gqa`` except for masked CUDA inputs: there the memory-efficient kernel (the one
    that takes masks) does not support ``enable_gqa`` and SDPA would fall back to the math kernel, so
    the kv heads are repeated instead.
    """
    group = _check_heads(q, k, v)
    if group > 1 and attn_mask is not None and q.is_cuda:
        k = k.repeat_interleave(group, dim=1)  # [B, Hkv, L, D] -> [B, H, L, D]
        v = v.repeat_interleave(group, dim=1)
        group = 1
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale, enable_gqa=group > 1)


@register_attention("naive")
def naive_attention(q, k, v, *, attn_mask=None, scale=None):
    """Reference: ``softmax(q k^T * scale + mask) v`` in float32 with explicitly repeated kv heads."""
    group = _check_heads(q, k, v)
    if group > 1:
        k = k.repeat_interleave(group, dim=1)  # [B, Hkv, L, D] -> [B, H, L, D]
        v = v.repeat_interleave(group, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * scale
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.float()
    out = torch.einsum("bhqk,bhkd->bhqd", scores.softmax(dim=-1), v.float())
    return out.to(q.dtype)
