"""Dual-stream J-DiT block: per-stream weights, one joint attention sub-layer (a pluggable attention core or
token mixer, :mod:`lavinkit.nn.attention.plugins`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, SwiGLU
from torch import nn

from lavinkit.models.jdit.config import JDiTConfig
from lavinkit.nn.attention import get_attention
from lavinkit.nn.attention.layout import JointLayout
from lavinkit.nn.attention.plugins import AttentionCore, TokenMixer, build_core, build_mixer


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
    ``Linear(D -> 4D)`` giving ``scale_attn, gate_attn, scale_mlp, gate_mlp``. With a token mixer
    (``attention=False``) the projections and QK norms are left out: the mixer owns its own weights.
    """

    def __init__(self, config: JDiTConfig, device=None, dtype=None, attention: bool = True):
        super().__init__()
        d, hd = config.hidden_size, config.head_dim
        q_dim, kv_dim = config.num_heads * hd, config.num_kv_heads * hd
        kw = dict(device=device, dtype=dtype)
        if attention:
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

    The attention sub-layer is either an attention core (``config.attention_core``, default ``full``: RoPE then
    the ``config.attention`` backend, the official math) called on ``q, k, v`` of the joint sequence, or a token
    mixer (``config.token_mixer``) that replaces the projections and the core.
    """

    def __init__(self, config: JDiTConfig, last: bool = False, device=None, dtype=None):
        super().__init__()
        self.last = last
        self.hidden_size = config.hidden_size
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.axes_dims = config.axes_dims
        self.scale = config.head_dim**-0.5
        uses_attention = config.token_mixer is None
        self.context = StreamLayers(config, device=device, dtype=dtype, attention=uses_attention)
        self.target = StreamLayers(config, device=device, dtype=dtype, attention=uses_attention)
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps, elementwise_affine=False)
        self.drop_path = DropPath(config.drop_path) if config.drop_path > 0 else nn.Identity()
        self.attention = get_attention(config.attention)
        self._backend = config.attention
        self.core: AttentionCore | None = None
        self.mixer: TokenMixer | None = None
        if uses_attention:
            self.core = self._build_core(config.attention_core or "full", config.attention_core_options, device)
        else:
            self.mixer = build_mixer(
                config.token_mixer, config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim,
                last=last, options=config.token_mixer_options, device=device, dtype=dtype,
            )

    def _build_core(self, spec, options, device) -> AttentionCore:
        core = build_core(spec, self.num_heads, self.num_kv_heads, self.head_dim, backend=self._backend, options=options)
        return core.to(device=device) if device is not None else core

    def set_core(self, core: str | type | AttentionCore, **options) -> AttentionCore:
        """Replace the attention core (a registered name, import path, class or instance); returns the old one."""
        if self.mixer is not None:
            raise ValueError(
                f"this block uses the token mixer {self.mixer.name!r}, which replaces the attention sub-layer; "
                "an attention core cannot be set on it"
            )
        if not isinstance(core, AttentionCore):
            core = self._build_core(core, options, self.target.modulation.weight.device)
        elif options:
            raise TypeError("set_core: options only apply when the core is given by name or class")
        old, self.core = self.core, core
        return old

    def dead_parameters(self) -> list[nn.Parameter]:
        """Parameters that cannot affect the model output (the last block's context q, q-norm, out, MLP, or
        the mixer's context-output weights)."""
        if not self.last:
            return []
        ctx = self.context
        if self.mixer is not None:
            return [*ctx.mlp.parameters(), *self.mixer.dead_parameters()]
        return [*ctx.q.parameters(), *ctx.q_norm.parameters(), *ctx.out.parameters(), *ctx.mlp.parameters()]

    def _kv(self, stream: StreamLayers, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = _heads(stream.k_norm(stream.k(a)), self.num_kv_heads)
        return k, _heads(stream.v(a), self.num_kv_heads)

    def _q(self, stream: StreamLayers, a: torch.Tensor) -> torch.Tensor:
        return _heads(stream.q_norm(stream.q(a)), self.num_heads)

    def _residual(self, stream: StreamLayers, h, o, gate_attn, scale_mlp, gate_mlp) -> torch.Tensor:
        o = o if self.mixer is not None else stream.out(o)
        h = h + self.drop_path(torch.tanh(gate_attn) * self.norm(o))
        f = stream.mlp((1 + scale_mlp) * self.norm(h))
        return h + self.drop_path(torch.tanh(gate_mlp) * self.norm(f))

    def forward(
        self,
        h_ctx: torch.Tensor,
        h_tgt: torch.Tensor,
        c_ctx: torch.Tensor,
        c_tgt: torch.Tensor,
        layout: JointLayout,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Args:
            h_ctx: ``[B, Lc, D]`` context tokens; h_tgt: ``[B, Lx, D]`` target tokens.
            c_ctx, c_tgt: ``[B, D]`` SiLU-activated conditioning vectors of the two streams.
            layout: the joint sequence (RoPE tables, key mask, segments), built once per forward by the model.

        Returns:
            ``(h_ctx, h_tgt)``; ``h_ctx`` is ``None`` in the last block.
        """
        lc, d = h_ctx.shape[1], self.hidden_size
        # [B, 4D] -> four [B, 1, D] chunks: scale_attn, gate_attn, scale_mlp, gate_mlp
        mod_tgt = self.target.modulation(c_tgt).unsqueeze(1).chunk(4, dim=-1)
        a_tgt = (1 + mod_tgt[0]) * self.norm(h_tgt)
        if self.last:
            m = self.context.modulation
            scale_ctx = F.linear(c_ctx, m.weight[:d], m.bias[:d]).unsqueeze(1)  # only scale_attn is live
            a_ctx = (1 + scale_ctx) * self.norm(h_ctx)
        else:
            mod_ctx = self.context.modulation(c_ctx).unsqueeze(1).chunk(4, dim=-1)
            a_ctx = (1 + mod_ctx[0]) * self.norm(h_ctx)

        if self.mixer is not None:
            o_ctx, o_tgt = self.mixer(a_ctx, a_tgt, c_ctx, c_tgt, layout)  # [B, Lc, D] | None, [B, Lx, D]
        else:
            k_tgt, v_tgt = self._kv(self.target, a_tgt)
            q_tgt = self._q(self.target, a_tgt)
            k_ctx, v_ctx = self._kv(self.context, a_ctx)
            if self.last:
                q, layout = q_tgt, layout.for_queries(lc)
            else:
                q = torch.cat([self._q(self.context, a_ctx), q_tgt], dim=2)
            k = torch.cat([k_ctx, k_tgt], dim=2)  # [B, Hkv, Lc + Lx, hd]
            v = torch.cat([v_ctx, v_tgt], dim=2)
            o = self.core(q, k, v, layout)  # [B, H, Lq, hd]; the core applies RoPE
            o = o.transpose(1, 2).flatten(2)  # [B, Lq, H*hd]
            o_ctx, o_tgt = (None, o) if self.last else (o[:, :lc], o[:, lc:])
        if self.last:
            return None, self._residual(self.target, h_tgt, o_tgt, *mod_tgt[1:])
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
