"""Softmax attention cores: ``full`` (official), ``pair_local`` (structured in-context) and ``factorized``.

All take un-rotated ``q [B, Hq, Lq, hd]``, ``k, v [B, Hkv, L, hd]`` and a
:class:`~lavinkit.nn.attention.layout.JointLayout`, and return ``[B, Hq, Lq, hd]``.
"""

from __future__ import annotations

import torch

from lavinkit.nn.attention.layout import JointLayout
from lavinkit.nn.attention.plugins import AttentionCore, Capabilities, register_core
from lavinkit.nn.attention.rules import pair_local


@register_core("full")
class FullAttention(AttentionCore):
    """Full bidirectional joint attention (LaVin-DiT, arXiv 2411.11505): RoPE on q and k, then the softmax
    backend over the whole sequence with the key-padding mask. The default core; bit-identical to the
    official block."""

    capabilities = Capabilities(exact=True)
    rule = "full"

    def attend(self, q, k, v, layout: JointLayout):
        q, k = layout.rotate(q, k)
        return self.backend(q, k, v, attn_mask=layout.key_mask, scale=layout.scale)


def _split_pairs(x: torch.Tensor, pairs: int) -> torch.Tensor:
    """``[B, H, P*n, hd]`` -> ``[B*P, H, n, hd]`` (each example pair becomes a batch row)."""
    b, h, length, d = x.shape
    return x.reshape(b, h, pairs, length // pairs, d).transpose(1, 2).reshape(b * pairs, h, length // pairs, d)


def _merge_pairs(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Inverse of :func:`_split_pairs`: ``[B*P, H, n, hd]`` -> ``[B, H, P*n, hd]``."""
    bp, h, n, d = x.shape
    return x.reshape(batch, bp // batch, h, n, d).transpose(1, 2).reshape(batch, h, -1, d)


@register_core("pair_local")
class PairLocalAttention(AttentionCore):
    """Structured in-context attention: each example pair attends within itself, the query and the noisy target
    attend everything (rule ``pair_local`` of :mod:`lavinkit.nn.attention.rules`).

    Mask-free decomposition (docs/reference/perf-and-variants.md s.5.3): (a) context queries against their own
    pair's keys, with pairs reshaped into the batch; (b) query and target queries against all keys, one dense
    call. Both run on any softmax backend (FlashAttention/cuDNN/SDPA) and train on CPU. Rows with different
    valid context lengths fall back to the backend with the dense rule mask. Context cost drops from
    ``(P n)^2`` to ``P n^2`` for ``P`` pairs of ``n`` tokens.
    """

    capabilities = Capabilities(needs_segments=True)
    rule = "pair_local"

    def attend(self, q, k, v, layout: JointLayout):
        q, k = layout.rotate(q, k)
        if not layout.uniform:
            return self.backend(q, k, v, attn_mask=layout.dense_mask(pair_local, q.device), scale=layout.scale)
        pairs = layout.num_pairs
        ctx_end = layout.segments[-2].start  # the query item starts after the example pairs
        qs, outs = layout.query_start, []
        if qs < ctx_end and pairs:
            qc = _split_pairs(q[:, :, : ctx_end - qs], pairs)  # [B*P, H, 2n, hd]
            kc, vc = _split_pairs(k[:, :, :ctx_end], pairs), _split_pairs(v[:, :, :ctx_end], pairs)
            outs.append(_merge_pairs(self.backend(qc, kc, vc, scale=layout.scale), q.shape[0]))
        rest = q[:, :, max(ctx_end - qs, 0) :]  # query item and target: dense over all keys
        outs.append(self.backend(rest, k, v, attn_mask=layout.key_mask, scale=layout.scale))
        return torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]


@register_core("factorized")
class FactorizedAttention(AttentionCore):
    """Factorised spatial / temporal attention over the joint clip (Latte, arXiv 2401.03048, variant 4: heads
    split between a spatial and a temporal attention inside one block).

    The joint sequence is ``F = Tc + Tx`` frames of ``H' W'`` tokens. Spatial heads attend within their own
    frame (batch ``B*F``, length ``H' W'``); temporal heads attend the same spatial location across all frames
    of the joint sequence, context and target (batch ``B*H'W'``, length ``F``). Cost
    ``F (H'W')^2 + H'W' F^2`` instead of ``(F H'W')^2``; no masks, trains on CPU.

    Args:
        temporal_heads: query heads doing temporal attention (default: half, rounded down; 0 = all spatial,
            ``num_heads`` = all temporal).
    """

    capabilities = Capabilities()
    rule = None

    def __init__(self, num_heads, num_kv_heads, head_dim, backend="sdpa", temporal_heads: int | None = None):
        super().__init__(num_heads, num_kv_heads, head_dim, backend)
        self.temporal_heads = num_heads // 2 if temporal_heads is None else int(temporal_heads)
        if not 0 <= self.temporal_heads <= num_heads:
            raise ValueError(f"factorized: temporal_heads must be in [0, {num_heads}], got {temporal_heads}")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temporal_heads={self.temporal_heads}"

    def _kv_heads(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The kv heads read by query heads ``[start, stop)`` (kept grouped when the range aligns with groups)."""
        group = self.num_heads // x.shape[1]
        if start % group == 0 and stop % group == 0:
            return x[:, start // group : stop // group]
        return x.repeat_interleave(group, dim=1)[:, start:stop]

    def attend(self, q, k, v, layout: JointLayout):
        q, k = layout.rotate(q, k)
        b, hq, lq, d = q.shape
        hw, frames = layout.tokens_per_frame, layout.num_frames
        fq = lq // hw  # query frames (all frames, or the target frames in the last block)
        n_spatial = hq - self.temporal_heads
        outs = []
        if n_spatial:
            qs = q[:, :n_spatial].reshape(b, n_spatial, fq, hw, d).transpose(1, 2).reshape(b * fq, n_spatial, hw, d)
            ks, vs = (
                self._kv_heads(x, 0, n_spatial)[:, :, layout.query_start :]  # key frames = query frames
                .reshape(b, -1, fq, hw, d).transpose(1, 2).reshape(b * fq, -1, hw, d)
                for x in (k, v)
            )
            o = self.backend(qs, ks, vs, scale=layout.scale)  # [B*Fq, Hs, HW, hd]
            outs.append(o.reshape(b, fq, n_spatial, hw, d).transpose(1, 2).reshape(b, n_spatial, lq, d))
        if self.temporal_heads:
            nt = self.temporal_heads
            # [B, Ht, Fq*HW, hd] -> [B, HW, Ht, Fq, hd] -> [B*HW, Ht, Fq, hd]
            qt = q[:, n_spatial:].reshape(b, nt, fq, hw, d).permute(0, 3, 1, 2, 4).reshape(b * hw, nt, fq, d)
            kt, vt = (
                self._kv_heads(x, n_spatial, hq).reshape(b, -1, frames, hw, d).permute(0, 3, 1, 2, 4)
                .reshape(b * hw, -1, frames, d)
                for x in (k, v)
            )
            mask = None
            if layout.key_mask is not None:
                frame_valid = layout.key_mask.reshape(b, frames, hw)[:, :, 0]  # [B, F]
                mask = frame_valid[:, None, :].expand(b, hw, frames).reshape(b * hw, 1, 1, frames)
            o = self.backend(qt, kt, vt, attn_mask=mask, scale=layout.scale)  # [B*HW, Ht, Fq, hd]
            outs.append(o.reshape(b, hw, nt, fq, d).permute(0, 2, 3, 1, 4).reshape(b, nt, lq, d))
        return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]

    def reference(self, q, k, v, layout: JointLayout):
        """``naive`` softmax with a per-head dense mask: same frame (spatial heads) or same (h, w) (temporal)."""
        from lavinkit.nn.attention.backends import naive_attention

        q, k = layout.rotate(q, k)
        hw = layout.tokens_per_frame
        qi = torch.arange(layout.query_start, layout.length, device=q.device)[:, None]  # [Lq, 1]
        ki = torch.arange(layout.length, device=q.device)[None, :]  # [1, L]
        spatial = (qi // hw) == (ki // hw)
        temporal = (qi % hw) == (ki % hw)
        if layout.key_mask is not None:  # spatial heads never cross frames, so only temporal heads see padding
            temporal = temporal & layout.key_mask  # [B, 1, Lq, L]
        n_spatial, b = q.shape[1] - self.temporal_heads, q.shape[0]
        spatial = spatial.expand(b, 1, -1, -1)
        temporal = temporal.expand(b, 1, -1, -1)
        mask = torch.cat([spatial] * n_spatial + [temporal] * self.temporal_heads, dim=1)  # [B, H, Lq, L]
        return naive_attention(q, k, v, attn_mask=mask, scale=layout.scale)
