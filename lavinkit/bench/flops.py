"""FLOP counts for the benchmarks: the J-DiT by the design brief's formula (s.6), counted as the model runs,
and the CPU SDPA kernels that ``torch.utils.flop_counter.FlopCounterMode`` counts as zero.

Every FLOP/s and MFU figure of ``lavinkit bench jdit`` and ``lavinkit bench train`` comes from
:func:`jdit_flops` (or its uniform-batch form :func:`jdit_model_flops`). Matmul FLOPs only, 2 per
multiply-add; modulation, timestep MLP, norms and biases are left out (they act per sample or are not
matmuls). Training counts 3x the forward (``6 N T + 12 L d S^2``, no recomputation), as the design brief does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "per_token_params",
    "jdit_flops",
    "jdit_model_flops",
    "sample_model_flops",
    "flop_counter_mapping",
]


def per_token_params(config) -> int:
    """Matmul parameters one token passes through in a full block stack (design.md s.6): one stream's q/k/v/out
    and SwiGLU per block, plus the patch embedding and the output projection. The last block runs less for
    context tokens (:func:`jdit_flops` counts that); modulation, timestep MLP, type embeddings, norms and biases
    are excluded."""
    d, hd, f = config.hidden_size, config.head_dim, config.mlp_width
    attn = d * config.num_heads * hd * 2 + d * config.num_kv_heads * hd * 2  # q, out + k, v
    mlp = 3 * d * f
    return config.depth * (attn + mlp) + 2 * config.patch_dim * d


def jdit_flops(
    config, context_tokens: Sequence[int], target_tokens: Sequence[int], training: bool = True
) -> float:
    """FLOPs of one J-DiT step over samples with ``context_tokens[i]`` context and ``target_tokens[i]`` target
    tokens, counted as the model runs.

    Per sample (``Lc`` context, ``Lx`` target tokens, ``S = Lc + Lx``): every block but the last runs each token
    through its stream's q/k/v/out projections and SwiGLU and attends over ``S^2`` query-key pairs; the last block
    computes only keys and values for context tokens (their outputs are never used) and ``Lx * S`` attention
    pairs; the patch embedding (and the pair embedding when enabled) touches every token, the output projection
    only target tokens. The attention width is ``num_heads * head_dim`` (grouped keys/values are shared, not
    smaller, in ``Q K^T`` and ``P V``). Padded tokens count: they are computed.

    Returns:
        forward FLOPs, or 3x that for ``training`` (forward + backward).
    """
    if len(context_tokens) != len(target_tokens):
        raise ValueError(f"jdit_flops: {len(context_tokens)} context and {len(target_tokens)} target token counts")
    d, hd, f = config.hidden_size, config.head_dim, config.mlp_width
    qo = 2 * d * config.num_heads * hd
    kv = 2 * d * config.num_kv_heads * hd
    mlp = 3 * d * f
    attn_width = config.num_heads * hd
    embeds = 2 if getattr(config, "pair_embedding", False) else 1
    macs = 0
    for lc, lx in zip(context_tokens, target_tokens):
        s = lc + lx
        macs += (config.depth - 1) * (qo + kv + mlp) * s  # full blocks
        macs += (qo + kv + mlp) * lx + kv * lc  # last block
        macs += embeds * config.patch_dim * d * s + d * config.patch_dim * lx  # patch (+ pair) embed, final projection
        macs += 2 * attn_width * ((config.depth - 1) * s * s + lx * s)  # Q K^T and P V
    forward = 2.0 * macs
    return 3.0 * forward if training else forward


def jdit_model_flops(config, context_tokens: int, target_tokens: int, samples: int, training: bool = True) -> float:
    """:func:`jdit_flops` of ``samples`` samples of equal shape (``context_tokens`` + ``target_tokens`` each)."""
    return jdit_flops(config, [context_tokens] * samples, [target_tokens] * samples, training)


def sample_model_flops(config, context_tokens: int, target_tokens: int, samples: int, ode_steps: int, *,
                       guided: bool, mode: str | None, query_frames: int, tokens_per_frame: int) -> float:
    """FLOPs of one guided sampling call as it runs: per ODE step a conditional forward and, with guidance, an
    unconditional one whose null context (a zeros frame + the query) is padded to the full context length in
    ``"batched"`` mode and kept at its own length in ``"two_pass"`` mode (``"auto"`` is resolved from the frame
    counts as the sampler resolves it)."""
    from lavinkit.flow.guidance import resolve_mode

    cond = jdit_model_flops(config, context_tokens, target_tokens, samples, training=False)
    if not guided:
        return ode_steps * cond
    null_frames = 1 + query_frames
    if mode == "auto":
        mode = resolve_mode("auto", context_tokens // tokens_per_frame, target_tokens // tokens_per_frame, query_frames)
    null_tokens = max(context_tokens, null_frames * tokens_per_frame) if mode == "batched" else null_frames * tokens_per_frame
    return ode_steps * (cond + jdit_model_flops(config, null_tokens, target_tokens, samples, training=False))


def _cpu_sdpa_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    """Forward FLOPs of ``aten._scaled_dot_product_flash_attention_for_cpu`` (shapes ``[B, H, S, d]``): two
    matmuls (``Q K^T`` and ``P V``) of 2 FLOPs per multiply-add."""
    b, h, s_q, d = query
    s_k, d_v = key[-2], value[-1]
    return 2 * b * h * s_q * s_k * d + 2 * b * h * s_q * s_k * d_v


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    """Backward FLOPs of the CPU flash-attention kernel: four matmuls (dV, dP, dQ, dK), no recomputation counted."""
    return 2 * _cpu_sdpa_flops(query, key, value)


def flop_counter_mapping() -> dict:
    """Extra ``FlopCounterMode`` formulas for the CPU SDPA kernels (counted as zero by torch otherwise)."""
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_sdpa_backward_flops
    return mapping
