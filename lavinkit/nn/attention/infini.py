"""``infini``: Infini-attention (Munkhdalai et al., "Leave No Context Behind", arXiv 2404.07143) adapted to the
non-causal J-DiT.

Segments are the in-context structure: every example pair is one segment, the query and the noisy target form
the last one. Per head, with ``sigma(x) = ELU(x) + 1`` on the **un-rotated** (QK-normed) q/k:

* memory of segment ``s``: ``M_s = sigma(K_s)^T V_s`` (``[d, d]``), normaliser ``z_s = sum_t sigma(k_t)`` (``[d]``);
* retrieval: ``A_mem = sigma(Q) M / (sigma(Q) z + eps)`` (row-wise), from the memory a segment may read:

  - ``update="linear"`` (order-free, all segments exist at once): a context pair reads the other pairs,
    ``M_ctx - M_s``; the query + target segment reads ``M_ctx = sum_p M_p``;
  - ``update="delta"`` (ordered pairs, e.g. video pairs in time): a scan over pairs,
    ``M_p = M_{p-1} + sigma(K_p)^T (V_p - sigma(K_p) M_{p-1} / (sigma(K_p) z_{p-1} + eps))``; pair ``p`` reads
    ``M_{p-1}`` (causal over pairs, bidirectional within), the query + target segment reads ``M_P``;

* local path: softmax attention within the segment, with RoPE (positions enter only here);
* gate: ``A = sigmoid(beta_h) A_mem + (1 - sigmoid(beta_h)) A_local``, one learned ``beta`` per query head.

Memories and normalisers are accumulated in float32 and ``beta`` stays float32. Under GQA there is one memory
per kv head; the query heads of a group read the same memory. Cost per head: ``sum_s n_s^2`` for the local
path plus ``O(L d^2)`` for the memory, instead of ``L^2``. Field notes (docs/reference/perf-and-variants.md
s.6): retrieval quality degrades as the number of compressions grows and the gate is decisive, so
:meth:`InfiniAttention.gates` exposes ``sigmoid(beta)`` for logging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lavinkit.nn.attention.cores import _merge_pairs, _split_pairs
from lavinkit.nn.attention.layout import ROLE_IDS, JointLayout
from lavinkit.nn.attention.plugins import AttentionCore, Capabilities, register_core
from lavinkit.nn.attention.rules import merged_segments, segment_local

_QUERY = ROLE_IDS["query"]


def elu_feature(x: torch.Tensor) -> torch.Tensor:
    """``ELU(x) + 1`` in float32 (positive feature map of linear attention)."""
    return F.elu(x.float()) + 1.0


def segment_memories(
    sk: torch.Tensor, v: torch.Tensor, onehot: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-segment memories ``M_s = sigma(K_s)^T V_s`` and normalisers ``z_s``.

    Args:
        sk: ``[B, Hkv, L, d]`` features ``sigma(k)`` (float32); v: ``[B, Hkv, L, e]``.
        onehot: ``[B | 1, L, S]`` float32 segment membership (padding rows all zero).

    Returns:
        ``(M [B, Hkv, S, d, e], z [B, Hkv, S, d])``.
    """
    onehot = onehot.expand(sk.shape[0], -1, -1)
    keys = torch.einsum("bhld,bls->bhsld", sk, onehot)  # [B, Hkv, S, L, d]: keys of segment s, zeros elsewhere
    memory = torch.einsum("bhsld,bhle->bhsde", keys, v.float())
    return memory, keys.sum(dim=3)


def read_memories(
    sk: torch.Tensor, v: torch.Tensor, onehot: torch.Tensor, is_ctx: torch.Tensor, update: str, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The memory each segment reads: ``(M_read [B, Hkv, S, d, e], z_read [B, Hkv, S, d])``.

    ``is_ctx`` ``[B | 1, S]`` marks the context segments (the others read all context memory).
    """
    b = sk.shape[0]
    is_ctx = is_ctx.expand(b, -1).float()  # [B, S]
    if update == "linear":
        memory, norm = segment_memories(sk, v, onehot)
        s_count = is_ctx.shape[1]
        # weights[b, s, j]: segment s reads context segment j, except itself (a sum, never a difference)
        others = 1.0 - torch.eye(s_count, device=sk.device, dtype=torch.float32)
        weights = is_ctx[:, None, :] * (others[None] * is_ctx[:, :, None] + (1 - is_ctx[:, :, None]))  # [B, S, S]
        return torch.einsum("bhjde,bsj->bhsde", memory, weights), torch.einsum("bhjd,bsj->bhsd", norm, weights)
    # delta rule: scan over the context segments in sequence order
    onehot = onehot.expand(b, -1, -1)
    s_count = onehot.shape[-1]
    h, d, e = sk.shape[1], sk.shape[-1], v.shape[-1]
    mem = sk.new_zeros(b, h, d, e)
    norm = sk.new_zeros(b, h, d)
    reads_m, reads_z = [], []
    for s in range(s_count):
        reads_m.append(mem)
        reads_z.append(norm)
        w = onehot[:, :, s] * is_ctx[:, s : s + 1]  # [B, L] tokens of segment s if it is context
        ks = sk * w[:, None, :, None]  # [B, Hkv, L, d]
        retrieved = torch.einsum("bhld,bhde->bhle", sk, mem) / (torch.einsum("bhld,bhd->bhl", sk, norm)[..., None] + eps)
        mem = mem + torch.einsum("bhld,bhle->bhde", ks, v.float() - retrieved)
        norm = norm + ks.sum(dim=2)
    final_m, final_z = mem, norm
    reads_m = torch.stack(reads_m, dim=2)  # [B, Hkv, S, d, e]
    reads_z = torch.stack(reads_z, dim=2)
    last = (1 - is_ctx)[:, None, :, None]  # non-context segments read the final memory
    return (reads_m * (1 - last[..., None]) + final_m[:, :, None] * last[..., None],
            reads_z * (1 - last) + final_z[:, :, None] * last)


def retrieve(sq: torch.Tensor, memory: torch.Tensor, norm: torch.Tensor, onehot_q: torch.Tensor, eps: float) -> torch.Tensor:
    """``A_mem = sigma(Q) M_{s(i)} / (sigma(Q) z_{s(i)} + eps)`` per query token.

    Args:
        sq: ``[B, Hq, Lq, d]`` query features; memory ``[B, Hkv, S, d, e]``; norm ``[B, Hkv, S, d]``;
        onehot_q: ``[B | 1, Lq, S]`` segment of each query token.

    Returns:
        ``[B, Hq, Lq, e]`` float32 (query head ``h`` reads kv head ``h // group``).
    """
    b, hq, lq, d = sq.shape
    hkv = memory.shape[1]
    sq = sq.reshape(b, hkv, hq // hkv, lq, d)  # [B, Hkv, G, Lq, d]
    onehot_q = onehot_q.expand(b, -1, -1)
    num = torch.einsum("bhgld,bhsde->bhgsle", sq, memory)  # every segment's read, [B, Hkv, G, S, Lq, e]
    num = torch.einsum("bhgsle,bls->bhgle", num, onehot_q)  # keep the token's own segment
    den = torch.einsum("bhgls,bls->bhgl", torch.einsum("bhgld,bhsd->bhgls", sq, norm), onehot_q)
    return (num / (den[..., None] + eps)).reshape(b, hq, lq, -1)


@register_core("infini")
class InfiniAttention(AttentionCore):
    """Infini-attention over in-context segments (module docstring for the math).

    Args:
        update: ``"linear"`` or ``"delta"`` memory update.
        gate_init: initial ``beta`` (``sigmoid(beta)`` weights the memory; negative favours local attention,
            e.g. when adapting a pretrained full-attention model).
        eps: denominator epsilon of the retrieval.
    """

    capabilities = Capabilities(needs_segments=True)
    rule = None

    def __init__(self, num_heads, num_kv_heads, head_dim, backend="sdpa", update: str = "linear",
                 gate_init: float = 0.0, eps: float = 1e-6):
        super().__init__(num_heads, num_kv_heads, head_dim, backend)
        if update not in ("linear", "delta"):
            raise ValueError(f"infini: update must be 'linear' or 'delta', got {update!r}")
        self.update, self.gate_init, self.eps = update, float(gate_init), float(eps)
        self.beta = nn.Parameter(torch.full((num_heads,), self.gate_init, dtype=torch.float32))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, update={self.update!r}"

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.beta.fill_(self.gate_init)

    def gates(self) -> torch.Tensor:
        """``sigmoid(beta)`` per query head (weight of the memory path), detached float32 ``[H]``."""
        beta = self.beta.detach()
        if hasattr(beta, "full_tensor"):  # sharded (FSDP2 DTensor): every rank gathers the H values
            beta = beta.full_tensor()
        return torch.sigmoid(beta.float())

    def metrics(self) -> dict[str, float]:
        """``gate/h<i>``: ``sigmoid(beta)`` of every query head."""
        return {f"gate/h{i}": float(g) for i, g in enumerate(self.gates().tolist())}

    def _segments(self, layout: JointLayout, device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(onehot [R, L, S] float32, is_ctx [R, S] bool)`` of the Infini segments (query + target merged)."""
        seg, role = layout.segment_ids(device), layout.roles(device)
        merged = merged_segments(seg, role)  # [R, L], -1 = padding
        s_count = int(merged.max()) + 1
        onehot = F.one_hot(merged.clamp(min=0), s_count).float() * (merged >= 0)[..., None].float()
        ctx_tok = ((role >= 0) & (role < _QUERY)).float()  # [R, L]
        is_ctx = torch.einsum("rls,rl->rs", onehot, ctx_tok) > 0
        return onehot, is_ctx

    def _local(self, q, k, v, layout: JointLayout) -> torch.Tensor:
        """Softmax attention within segments (RoPE applied): ``[B, Hq, Lq, hd]``."""
        q, k = layout.rotate(q, k)
        if not layout.uniform:
            return self.backend(q, k, v, attn_mask=layout.dense_mask(segment_local, q.device), scale=layout.scale)
        pairs, qs = layout.num_pairs, layout.query_start
        ctx_end = layout.segments[-2].start
        outs = []
        if qs < ctx_end and pairs:
            qc = _split_pairs(q[:, :, : ctx_end - qs], pairs)  # [B*P, H, 2n, hd]
            kc, vc = _split_pairs(k[:, :, :ctx_end], pairs), _split_pairs(v[:, :, :ctx_end], pairs)
            outs.append(_merge_pairs(self.backend(qc, kc, vc, scale=layout.scale), q.shape[0]))
        rest = q[:, :, max(ctx_end - qs, 0) :]  # query + target: local over query + target keys
        outs.append(self.backend(rest, k[:, :, ctx_end:], v[:, :, ctx_end:], scale=layout.scale))
        return torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]

    def _memory(self, q, k, v, layout: JointLayout) -> torch.Tensor:
        onehot, is_ctx = self._segments(layout, q.device)
        sk = elu_feature(k)
        memory, norm = read_memories(sk, v, onehot, is_ctx, self.update, self.eps)
        return retrieve(elu_feature(q), memory, norm, onehot[:, layout.query_start :], self.eps)

    def attend(self, q, k, v, layout: JointLayout):
        local = self._local(q, k, v, layout)
        mem = self._memory(q, k, v, layout)
        gate = torch.sigmoid(self.beta.float())[None, :, None, None]  # [1, H, 1, 1]
        return (gate * mem + (1 - gate) * local.float()).to(q.dtype)

    def reference(self, q, k, v, layout: JointLayout) -> torch.Tensor:
        """Explicit per-row, per-segment loop of the same math (slow; for tests)."""
        seg, role = layout.segment_ids(q.device), layout.roles(q.device)
        merged = merged_segments(seg, role)
        qr, kr = layout.rotate(q, k)
        b, hq, lq, d = q.shape
        group = hq // k.shape[1]
        out = torch.zeros(b, hq, layout.length, v.shape[-1], dtype=torch.float32, device=q.device)
        gate = torch.sigmoid(self.beta.float())
        qs = layout.query_start
        for i in range(b):
            ids = merged[i if merged.shape[0] > 1 else 0]
            roles = role[i if role.shape[0] > 1 else 0]
            order = [int(s) for s in torch.unique(ids[ids >= 0])]
            ctx_ids = [s for s in order if bool(((roles[ids == s] >= 0) & (roles[ids == s] < _QUERY)).any())]
            for h in range(hq):
                kh = h // group
                feats_k = elu_feature(k[i, kh])  # [L, d]
                mem = {s: (feats_k[ids == s].T @ v[i, kh][ids == s].float(), feats_k[ids == s].sum(0)) for s in order}
                prefix = {}
                m_run = torch.zeros(d, v.shape[-1], device=q.device)
                z_run = torch.zeros(d, device=q.device)
                for s in ctx_ids:
                    prefix[s] = (m_run, z_run)
                    fk, vs = feats_k[ids == s], v[i, kh][ids == s].float()
                    if self.update == "delta":
                        m_run = m_run + fk.T @ (vs - (fk @ m_run) / (fk @ z_run + self.eps)[:, None])
                    else:
                        m_run = m_run + fk.T @ vs
                    z_run = z_run + fk.sum(0)
                for s in order:
                    idx = torch.nonzero(ids == s).flatten()
                    if s in ctx_ids:
                        if self.update == "delta":
                            m_read, z_read = prefix[s]
                        else:
                            m_read = sum(mem[j][0] for j in ctx_ids if j != s) if len(ctx_ids) > 1 else torch.zeros_like(m_run)
                            z_read = sum(mem[j][1] for j in ctx_ids if j != s) if len(ctx_ids) > 1 else torch.zeros_like(z_run)
                    else:
                        m_read, z_read = m_run, z_run
                    idx_q = idx[idx >= qs]
                    if idx_q.numel() == 0:
                        continue
                    fq = elu_feature(q[i, h, idx_q - qs])
                    a_mem = (fq @ m_read) / (fq @ z_read + self.eps)[:, None]
                    scores = (qr[i, h, idx_q - qs].float() @ kr[i, kh, idx].float().T) * layout.scale
                    a_loc = scores.softmax(-1) @ v[i, kh, idx].float()
                    out[i, h, idx_q] = gate[h] * a_mem + (1 - gate[h]) * a_loc
        return out[:, :, qs:].to(q.dtype)
