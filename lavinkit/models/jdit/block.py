"""Dual-stream J-DiT block: per-stream weights, one joint full-sequence attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, SwiGLU
from torch import nn

from lavinkit.models.jdit.config import JDiTConfig
from lavinkit.nn.attention import get_attention
from lavinkit.nn.rope import apply_rope


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` whose weight follows the input dtype, so bf16 activations under autocast with
    float32 parameters keep torch's fused kernel (a dtype mismatch falls back to the composite path)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(x.dtype)
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)


class StreamLayers(nn.Module):
    """The weights of one stream (context or target) in one block.

    ``q/k/v/out`` projections without bias, RMSNorm over the whole projected q (``H*hd``) and k
    (``Hkv*hd``) widths (official QK-norm, not per head), a bias-free SwiGLU and the modulation
    ``Linear(D -> 4D)`` giving ``scale_attn, gate_attn, scale_mlp, gate_mlp``.
    """

    def __init__(self, config: JDiTConfig, device=None, dtype=None):
        super().__init__()
        d, hd = config.hidden_size, config.head_dim
        q_dim, kv_dim = config.num_heads * hd, config.num_kv_heads * hd
        kw = dict(device=device, dtype=dtype)
        self.q = nn.Linear(d, q_dim, bias=False, **kw)
        self.k = nn.Linear(d, kv_dim, bias=False, **kw)
        self.v = nn.Linear(d, kv_dim, bias=False, **kw)
        self.q_norm = RMSNorm(q_dim, eps=config.norm_eps, **kw)
        self.k_norm = RMSNorm(kv_dim, eps=config.norm_eps, **kw)
        self.out = nn.Linear(q_dim, d, bias=False, **kw)
        # timm's SwiGLU has the official layout: fc1_g = gate_proj, fc1_x = up_proj, fc2 = down_proj.
        self.mlp = SwiGLU(d, config.mlp_width, d, bias=False, **kw)
        self.modulation = nn.Linear(d, 4 * d, **kw)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, L, heads*hd]`` -> ``[B, heads, L, hd]`` (channel ``h*hd + d`` is head h, dim d)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


class JointBlock(nn.Module):
    """Sandwich-norm, scale + tanh-gate modulated dual-stream block with joint attention.

    Per stream s: ``a = (1 + scale_attn) * norm(h)``; joint attention over ``[context; target]``;
    ``h += tanh(gate_attn) * norm(out(o))``; ``h += tanh(gate_mlp) * norm(mlp((1 + scale_mlp) * norm(h)))``.
    ``norm`` is RMSNorm without affine. In the last block (``last=True``) only the target stream is
    computed: context tokens contribute keys and values only (their other outputs are never used).
    """

    def __init__(self, config: JDiTConfig, last: bool = False, device=None, dtype=None):
        super().__init__()
        self.last = last
        self.hidden_size = config.hidden_size
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.axes_dims = config.axes_dims
        self.scale = config.head_dim**-0.5
        self.context = StreamLayers(config, device=device, dtype=dtype)
        self.target = StreamLayers(config, device=device, dtype=dtype)
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps, elementwise_affine=False)
        self.drop_path = DropPath(config.drop_path) if config.drop_path > 0 else nn.Identity()
        self.attention = get_attention(config.attention)

    def dead_parameters(self) -> list[nn.Parameter]:
        """Parameters that cannot affect the model output (the last block's context q, q-norm, out, MLP)."""
        if not self.last:
            return []
        ctx = self.context
        return [*ctx.q.parameters(), *ctx.q_norm.parameters(), *ctx.out.parameters(), *ctx.mlp.parameters()]

    def _kv(self, stream: StreamLayers, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = _heads(stream.k_norm(stream.k(a)), self.num_kv_heads)
        return k, _heads(stream.v(a), self.num_kv_heads)

    def _q(self, stream: StreamLayers, a: torch.Tensor) -> torch.Tensor:
        return _heads(stream.q_norm(stream.q(a)), self.num_heads)

    def _residual(self, stream: StreamLayers, h, o, gate_attn, scale_mlp, gate_mlp) -> torch.Tensor:
        h = h + self.drop_path(torch.tanh(gate_attn) * self.norm(stream.out(o)))
        f = stream.mlp((1 + scale_mlp) * self.norm(h))
        return h + self.drop_path(torch.tanh(gate_mlp) * self.norm(f))

    def forward(
        self,
        h_ctx: torch.Tensor,
        h_tgt: torch.Tensor,
        c_ctx: torch.Tensor,
        c_tgt: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Args:
            h_ctx: ``[B, Lc, D]`` context tokens; h_tgt: ``[B, Lx, D]`` target tokens.
            c_ctx, c_tgt: ``[B, D]`` SiLU-activated conditioning vectors of the two streams.
            cos, sin: RoPE tables ``[1 | B, 1, Lc + Lx, hd]``.
            attn_mask: optional boolean key mask ``[B, 1, 1, Lc + Lx]``.

        Returns:
            ``(h_ctx, h_tgt)``; ``h_ctx`` is ``None`` in the last block.
        """
        lc, d = h_ctx.shape[1], self.hidden_size
        # [B, 4D] -> four [B, 1, D] chunks: scale_attn, gate_attn, scale_mlp, gate_mlp
        mod_tgt = self.target.modulation(c_tgt).unsqueeze(1).chunk(4, dim=-1)
        a_tgt = (1 + mod_tgt[0]) * self.norm(h_tgt)
        k_tgt, v_tgt = self._kv(self.target, a_tgt)
        q_tgt = self._q(self.target, a_tgt)
        if self.last:
            m = self.context.modulation
            scale_ctx = F.linear(c_ctx, m.weight[:d], m.bias[:d]).unsqueeze(1)  # only scale_attn is live
            k_ctx, v_ctx = self._kv(self.context, (1 + scale_ctx) * self.norm(h_ctx))
            q, q_cos, q_sin = q_tgt, cos[:, :, lc:], sin[:, :, lc:]
        else:
            mod_ctx = self.context.modulation(c_ctx).unsqueeze(1).chunk(4, dim=-1)
            a_ctx = (1 + mod_ctx[0]) * self.norm(h_ctx)
            k_ctx, v_ctx = self._kv(self.context, a_ctx)
            q, q_cos, q_sin = torch.cat([self._q(self.context, a_ctx), q_tgt], dim=2), cos, sin
        k = torch.cat([k_ctx, k_tgt], dim=2)  # [B, Hkv, Lc + Lx, hd]
        v = torch.cat([v_ctx, v_tgt], dim=2)
        q = apply_rope(q, q_cos.to(q.dtype), q_sin.to(q.dtype), self.axes_dims)
        k = apply_rope(k, cos.to(k.dtype), sin.to(k.dtype), self.axes_dims)
        o = self.attention(q, k, v, attn_mask=attn_mask, scale=self.scale)  # [B, H, Lq, hd]
        o = o.transpose(1, 2).flatten(2)  # [B, Lq, H*hd]
        if self.last:
            return None, self._residual(self.target, h_tgt, o, *mod_tgt[1:])
        o_ctx, o_tgt = o[:, :lc], o[:, lc:]
        h_ctx = self._residual(self.context, h_ctx, o_ctx, *mod_ctx[1:])
        h_tgt = self._residual(self.target, h_tgt, o_tgt, *mod_tgt[1:])
        return h_ctx, h_tgt


class FinalLayer(nn.Module):
    """Scale-only adaLN and the output projection: ``linear((1 + scale) * norm(h))`` -> ``[B, Lx, pH*pW*C]``."""

    def __init__(self, config: JDiTConfig, device=None, dtype=None):
        super().__init__()
        d = config.hidden_size
        self.norm = nn.RMSNorm(d, eps=config.norm_eps, elementwise_affine=False)
        self.modulation = nn.Linear(d, d, device=device, dtype=dtype)
        self.linear = nn.Linear(d, config.patch_dim, device=device, dtype=dtype)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """h ``[B, Lx, D]``, c ``[B, D]`` (SiLU-activated) -> ``[B, Lx, pH*pW*C]``."""
        scale = self.modulation(c).unsqueeze(1)
        return self.linear((1 + scale) * self.norm(h))
